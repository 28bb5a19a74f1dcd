/* The DiT on the GPU (see dit_cuda.h): the device memory layout, the 16-bit
 * copies of the weights the GEMMs read, copies between host and device, and the
 * AdamW step. Forward and backward are the one DiT graph (dit_graph.c) on the
 * CUDA backend (dit_backend_cuda.c), which says where it differs from the CPU's
 * at rounding level. */
#ifdef LDM_HAVE_CUDA

#include "dit_cuda.h"

#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "dit_backend_cuda.h"
#include "dit_cuda_kernels.h"
#include "dit_graph.h"
#include "fatal.h"

/* ---- set-up ---- */

/* to = a copy of from's entries (names, shapes, offsets), unbound. */
static void copy_table(param_table *to, const param_table *from) {
    param_table_init(to);
    for (int i = 0; i < from->count; i++) {
        const param_entry *e = &from->entries[i];
        int j = param_table_add(to, e->trainable, e->ndim, e->shape, "%s", e->name);
        if (to->entries[j].offset != e->offset)
            fatal_internal("GPU DiT: %s lands at offset %zu, the CPU model's is %zu", e->name, to->entries[j].offset,
                           e->offset);
    }
}

/* Every trainable 1-D entry is a bias: the place of its rounded copy in
 * bias_rounded, each from a multiple of 16 floats (64 bytes: cuBLASLt's bias
 * epilogue takes 16-byte aligned vectors only). Returns the segments for
 * dit_cuda_round_segments (host, 3 long longs a bias). */
static long long *plan_biases(dit_cuda_model *m) {
    dit_cuda_state *a = m->state;
    long long *segments = xcalloc(3 * (size_t)m->table.count, sizeof(long long));
    for (int i = 0; i < m->table.count; i++) {
        const param_entry *e = &m->table.entries[i];
        a->bias_offset[i] = -1;
        if (!e->trainable || e->ndim != 1) continue;
        long long *s = segments + 3 * (size_t)a->bias_count++;
        s[0] = (long long)e->offset;
        s[1] = a->bias_floats;
        s[2] = (long long)e->numel;
        a->bias_offset[i] = a->bias_floats;
        a->bias_floats += ((long long)e->numel + 15) / 16 * 16;
    }
    return segments;
}

/* Places every buffer; called once measuring and once placing (see arena.h). */
static void layout(dit_cuda_model *m, arena *ar, int with_optimizer) {
    dit_cuda_state *a = m->state;
    const size_t N = m->table.trainable_numel;
    m->params = arena_floats(ar, N);
    m->grads = arena_floats(ar, N);
    m->fixed = arena_floats(ar, m->table.fixed_numel);
    if (with_optimizer) {
        m->adam_m = arena_floats(ar, N);
        m->adam_v = arena_floats(ar, N);
    }
    if (m->precision != PRECISION_FP32) {
        a->weight_bits = arena_halves(ar, N);
        a->bias_rounded = arena_floats(ar, (size_t)a->bias_floats);
        /* long longs from a float-aligned (64-byte) start */
        a->bias_segments = (long long *)(void *)arena_floats(ar, 2 * 3 * (size_t)a->bias_count);
    }
    m->activation_bytes = dit_graph_layout(&a->graph, ar);
}

void dit_cuda_create(dit_cuda_model *m, const dit_shape *shape, int max_batch, ldm_precision precision,
                     int with_optimizer) {
    memset(m, 0, sizeof(*m));
    if (precision != PRECISION_FP32 && precision != PRECISION_BF16 && precision != PRECISION_FP16)
        fatal_internal("dit_cuda_create: unknown precision %d", (int)precision);
    /* The CPU model checks the shape (fatal_input) and has the table and
     * pos_embed; one sample of activations is all it needs to lay out for that
     * (an impossible max_batch is passed on for its message). */
    dit_model host;
    dit_create(&host, shape, max_batch < 1 ? max_batch : 1);
    m->shape = *shape;
    m->precision = precision;
    m->max_batch = max_batch;
    m->tokens = host.tokens;
    copy_table(&m->table, &host.table);
    m->state = xcalloc(1, sizeof(*m->state));
    dit_graph_init(&m->state->graph, shape, max_batch, precision, &m->table, &dit_backend_cuda);
    m->state->bias_offset = xcalloc((size_t)m->table.count, sizeof(long long));
    long long *segments = plan_biases(m);

    arena ar;
    arena_begin_measure(&ar);
    layout(m, &ar, with_optimizer);
    const size_t bytes = (ar.used + ARENA_ALIGNMENT - 1) / ARENA_ALIGNMENT * ARENA_ALIGNMENT;
    m->memory = cuda_model_memory_alloc(bytes, "the DiT", max_batch, precision);
    m->memory_bytes = bytes;
    /* Placing into the device block: the arena only does address arithmetic on
     * its base (cudaMalloc's 256-byte alignment keeps the 64-byte offsets aligned). */
    ar.base = m->memory;
    ar.used = 0;
    ar.capacity = bytes;
    layout(m, &ar, with_optimizer);
    dit_graph_bind(&m->state->graph, m->params, m->grads, m->fixed, m->state);
    cuda_copy_to_device(m->fixed, host.fixed, sizeof(float) * m->table.fixed_numel);
    if (precision != PRECISION_FP32)
        cuda_copy_to_device(m->state->bias_segments, segments, 3 * sizeof(long long) * (size_t)m->state->bias_count);
    free(segments);
    dit_destroy(&host);
    m->gemm = gemm_cuda_context_create();
    m->stream = dit_cuda_stream_create();
    m->state->gemm = m->gemm;
    m->state->stream = m->stream;
}

void dit_cuda_destroy(dit_cuda_model *m) {
    if (m->stream) {
        dit_cuda_stream_synchronize(m->stream);
        if (!m->stream_borrowed) dit_cuda_stream_destroy(m->stream);
    }
    gemm_cuda_context_destroy(m->gemm);
    cuda_buffer_free(m->memory);
    if (m->state) {
        dit_graph_free(&m->state->graph);
        free(m->state->bias_offset);
        free(m->state);
    }
    param_table_free(&m->table);
    memset(m, 0, sizeof(*m));
}

void dit_cuda_use_stream(dit_cuda_model *m, ldm_stream stream) {
    dit_cuda_stream_synchronize(m->stream);
    if (!m->stream_borrowed) dit_cuda_stream_destroy(m->stream);
    m->stream = stream;
    m->state->stream = stream;
    m->stream_borrowed = 1;
}

/* ---- copies, zeroing, the optimizer ---- */

void dit_cuda_synchronize(dit_cuda_model *m) { dit_cuda_stream_synchronize(m->stream); }

void dit_cuda_upload_params(dit_cuda_model *m, const float *host_params) {
    dit_cuda_synchronize(m); /* nothing queued may still read the old values */
    cuda_copy_to_device(m->params, host_params, sizeof(float) * m->table.trainable_numel);
}

void dit_cuda_download_params(dit_cuda_model *m, float *host_params) {
    dit_cuda_synchronize(m);
    cuda_copy_to_host(host_params, m->params, sizeof(float) * m->table.trainable_numel);
}

void dit_cuda_download_grads(dit_cuda_model *m, float *host_grads) {
    dit_cuda_synchronize(m);
    cuda_copy_to_host(host_grads, m->grads, sizeof(float) * m->table.trainable_numel);
}

static void need_optimizer(const dit_cuda_model *m, const char *what) {
    if (!m->adam_m) fatal_internal("%s: the GPU DiT was made without optimizer state", what);
}

void dit_cuda_upload_moments(dit_cuda_model *m, const float *host_m, const float *host_v, int64_t step) {
    need_optimizer(m, "dit_cuda_upload_moments");
    dit_cuda_synchronize(m);
    cuda_copy_to_device(m->adam_m, host_m, sizeof(float) * m->table.trainable_numel);
    cuda_copy_to_device(m->adam_v, host_v, sizeof(float) * m->table.trainable_numel);
    m->adam_step = step;
}

void dit_cuda_download_moments(dit_cuda_model *m, float *host_m, float *host_v, int64_t *step) {
    need_optimizer(m, "dit_cuda_download_moments");
    dit_cuda_synchronize(m);
    cuda_copy_to_host(host_m, m->adam_m, sizeof(float) * m->table.trainable_numel);
    cuda_copy_to_host(host_v, m->adam_v, sizeof(float) * m->table.trainable_numel);
    *step = m->adam_step;
}

void dit_cuda_zero_grad(dit_cuda_model *m) {
    dit_cuda_zero_async(m->grads, sizeof(float) * m->table.trainable_numel, m->stream);
}

void dit_cuda_adamw_step(dit_cuda_model *m, float lr, float beta1, float beta2, float eps, float weight_decay) {
    need_optimizer(m, "dit_cuda_adamw_step");
    m->adam_step++;
    adamw_step_cuda(m->params, m->grads, m->adam_m, m->adam_v, m->table.trainable_numel, lr, beta1, beta2, eps,
                    weight_decay, m->adam_step, m->stream);
}

/* ---- forward and backward: the one DiT graph ---- */

void dit_cuda_forward(dit_cuda_model *m, const float *x, const float *t, const int *y, const float *guidance,
                      int batch, float *out) {
    dit_graph_forward(&m->state->graph, "dit_cuda_forward", x, t, y, guidance, batch, out);
}

void dit_cuda_backward(dit_cuda_model *m, const float *d_out, float *d_x, int batch) {
    dit_graph_backward(&m->state->graph, "dit_cuda_backward", d_out, d_x, batch, m->gradients_ready,
                       m->gradients_ready_context);
}

#endif /* LDM_HAVE_CUDA */

/* The DiT on the GPU (see dit_cuda.h): the device memory layout, the parameters
 * by table index, and forward/backward composed from ops_cuda.h in the op order
 * of dit.c's 16-bit path (dit_forward_16bit / dit_backward_16bit), which in fp32
 * is dit_forward / dit_backward with every rounding a no-op.
 *
 * One code path serves every precision through kept tensors: an activation that
 * backward needs is computed into an fp32 `work` buffer and kept in `kept`. In
 * fp32, kept IS work (a buffer per block, nothing is copied); in bf16/fp16 kept
 * is a 16-bit buffer that keep() fills, rounding work in place as
 * precision_store does, and work is one of a block's fp32 buffers shared by all
 * blocks. GEMMs read kept directly (linear_*_cuda take 16-bit operands); the
 * fp32 ops of backward read load()'s fp32 copy. The same holds for activation
 * gradients: grad_operand() rounds one in place and gives the GEMM its bits.
 *
 * Where this differs from dit.c (at rounding level only; the math is the same):
 * - LayerNorm and modulate run fused (layernorm_modulate_forward_cuda), so in
 *   16 bits modulate reads the fp32 LayerNorm output where dit.c reads it
 *   rounded (what is kept is rounded in both);
 * - LayerNorm backward always starts from the kept normalized output
 *   (layernorm_backward_normalized), as dit.c's 16-bit path does; dit.c's fp32
 *   path recomputes the same xhat from the kept input, which fp32 here does not
 *   keep (no residual copies per block).
 *
 * Notation as in dit.c: B batch, T tokens, D hidden, F mlp hidden, H heads,
 * P patch, C channels, S input size, E = 256 the frequency embedding, PPC = P*P*C. */
#ifdef LDM_HAVE_CUDA

#include "dit_cuda.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "dit_cuda_kernels.h"
#include "fatal.h"

/* An activation backward needs (see the top of the file). */
typedef struct {
    void *kept;  /* fp32: float, the same buffer as work; bf16/fp16: uint16_t bits */
    float *work; /* the fp32 buffer it is computed in and loaded back into */
} kept_tensor;

/* Indices into the parameter table of one block's tensors. */
typedef struct {
    int qkv_weight, qkv_bias, proj_weight, proj_bias;
    int fc1_weight, fc1_bias, fc2_weight, fc2_bias;
    int ada_weight, ada_bias;
} block_params;

typedef struct {
    float *ln1_mean, *ln1_rstd, *ln2_mean, *ln2_rstd; /* (B*T) each */
    float *ada;                 /* (B, 6D): shift, scale, gate (msa), shift, scale, gate (mlp) */
    kept_tensor ln1, mod1;      /* (B*T, D) LN(x), modulate(LN(x)) */
    kept_tensor qkv;            /* (B*T, 3D) */
    kept_tensor probs;          /* (B, H, T, T) */
    kept_tensor attn, attn_proj; /* (B*T, D) heads concatenated, after proj */
    kept_tensor ln2, mod2;      /* (B*T, D) */
    kept_tensor fc1, gelu;      /* (B*T, F) before and after GELU */
    kept_tensor fc2;            /* (B*T, D) */
} block_activations;

/* The MLP of a scalar per sample: the timestep, the guidance scale. */
typedef struct {
    kept_tensor freq;       /* (B, E) sinusoidal embedding */
    float *hidden;          /* (B, D) before SiLU (rounded in 16 bits) */
    kept_tensor hidden_act; /* (B, D) */
    int w0, b0, w2, b2;     /* parameter indices of mlp.0 and mlp.2 */
} scalar_embedder;

struct dit_cuda_activations {
    int *labels;            /* (B) the forward pass's copy of y */
    kept_tensor patches;    /* (B*T, PPC) */
    float *x_run;           /* (B*T, D) the residual stream, fp32 */
    scalar_embedder t_embedder;
    scalar_embedder w_embedder; /* guidance input only, as the next two */
    float *w_scaled;        /* (B) DIT_GUIDANCE_EMBEDDING_SCALE * w */
    float *w_emb;           /* (B, D) */
    float *cond;            /* (B, D) t_emb + y_emb (+ w_emb), before SiLU */
    float *y_emb;           /* (B, D) */
    kept_tensor cond_act;   /* (B, D) SiLU(cond), the input of every adaLN linear */
    block_activations *blocks; /* (depth) */
    float *final_ada;       /* (B, 2D) shift, scale */
    float *final_mean, *final_rstd; /* (B*T) */
    kept_tensor final_ln, final_mod; /* (B*T, D) */
    float *final_tokens;    /* (B*T, PPC) */
    /* bf16/fp16: one block's fp32 working buffers, shared by all blocks */
    float *w_d0, *w_d1;     /* (B*T, D) */
    float *w_3d;            /* (B*T, 3D) */
    float *w_probs;         /* (B, H, T, T) */
    float *w_f0, *w_f1;     /* (B*T, F) */
    /* backward scratch */
    float *d_residual, *d_a, *d_b; /* (B*T, D) */
    float *d_qkv;           /* (B*T, 3D) */
    float *d_scores;        /* (B, H, T, T) */
    float *d_hidden;        /* (B*T, F) */
    float *d_ada;           /* (B, 6D) */
    float *d_cond_act, *d_cond, *d_t_hidden; /* (B, D) */
    float *d_tokens, *d_patches; /* (B*T, PPC) */
    /* bf16/fp16: the bits of the activation gradient a GEMM reads next (one at a
     * time, so one buffer of the largest), and of d_cond, which two embedders read */
    uint16_t *d_bits;       /* (max(B*T*max(3D, F, PPC), B*6D)) */
    uint16_t *d_cond_bits;  /* (B, D) */
    /* bf16/fp16: the parameters the GEMMs read, made from params at every forward */
    uint16_t *weight_bits;  /* (trainable_numel) every parameter in the format */
    float *bias_rounded;    /* (bias_floats) every bias rounded, each from a 16-float boundary */
    long long *bias_segments; /* (3 * bias_count): offset in params, offset in bias_rounded, length */
    /* host */
    long long *bias_offset; /* (table.count) where an entry's bias lies in bias_rounded, -1 if not a bias */
    long long bias_floats;
    int bias_count;
    int x_weight, x_bias, y_table, pos_embed;
    int final_weight, final_bias, final_ada_weight, final_ada_bias;
    block_params *block_params; /* (depth) */
};

/* ---- set-up ---- */

/* The table entry of the name (printf-style); the table is dit.c's, so a missing
 * name is a mistake here. */
__attribute__((format(printf, 2, 3))) static int param_index(const dit_cuda_model *m, const char *fmt, ...) {
    char name[PARAM_NAME_MAX];
    va_list args;
    va_start(args, fmt);
    vsnprintf(name, sizeof(name), fmt, args);
    va_end(args);
    const param_entry *e = param_table_find(&m->table, name);
    if (!e) fatal_internal("GPU DiT: the parameter table has no '%s'", name);
    return (int)(e - m->table.entries);
}

static scalar_embedder embedder_params(const dit_cuda_model *m, const char *prefix) {
    scalar_embedder e;
    memset(&e, 0, sizeof(e));
    e.w0 = param_index(m, "%s.mlp.0.weight", prefix);
    e.b0 = param_index(m, "%s.mlp.0.bias", prefix);
    e.w2 = param_index(m, "%s.mlp.2.weight", prefix);
    e.b2 = param_index(m, "%s.mlp.2.bias", prefix);
    return e;
}

static void find_params(dit_cuda_model *m) {
    struct dit_cuda_activations *a = m->act;
    a->pos_embed = param_index(m, "pos_embed");
    a->x_weight = param_index(m, "x_embedder.proj.weight");
    a->x_bias = param_index(m, "x_embedder.proj.bias");
    a->y_table = param_index(m, "y_embedder.embedding_table.weight");
    a->t_embedder = embedder_params(m, "t_embedder");
    if (m->shape.guidance_input) a->w_embedder = embedder_params(m, "w_embedder");
    for (int l = 0; l < m->shape.depth; l++) {
        block_params *b = &a->block_params[l];
        b->qkv_weight = param_index(m, "blocks.%d.attn.qkv.weight", l);
        b->qkv_bias = param_index(m, "blocks.%d.attn.qkv.bias", l);
        b->proj_weight = param_index(m, "blocks.%d.attn.proj.weight", l);
        b->proj_bias = param_index(m, "blocks.%d.attn.proj.bias", l);
        b->fc1_weight = param_index(m, "blocks.%d.mlp.fc1.weight", l);
        b->fc1_bias = param_index(m, "blocks.%d.mlp.fc1.bias", l);
        b->fc2_weight = param_index(m, "blocks.%d.mlp.fc2.weight", l);
        b->fc2_bias = param_index(m, "blocks.%d.mlp.fc2.bias", l);
        b->ada_weight = param_index(m, "blocks.%d.adaLN_modulation.1.weight", l);
        b->ada_bias = param_index(m, "blocks.%d.adaLN_modulation.1.bias", l);
    }
    a->final_weight = param_index(m, "final_layer.linear.weight");
    a->final_bias = param_index(m, "final_layer.linear.bias");
    a->final_ada_weight = param_index(m, "final_layer.adaLN_modulation.1.weight");
    a->final_ada_bias = param_index(m, "final_layer.adaLN_modulation.1.bias");
}

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
    struct dit_cuda_activations *a = m->act;
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

/* A kept tensor of n values whose fp32 work buffer is `work` in bf16/fp16 (one
 * block's shared buffer); in fp32 the kept buffer is its own work buffer. */
static kept_tensor kept_shared(const dit_cuda_model *m, arena *ar, size_t n, float *work) {
    if (m->precision == PRECISION_FP32) {
        float *own = arena_floats(ar, n);
        return (kept_tensor){own, own};
    }
    return (kept_tensor){arena_halves(ar, n), work};
}

/* The same with a work buffer of its own (the small conditioning tensors and the
 * patches, which backward reads while the shared buffers are in other use). */
static kept_tensor kept_own(const dit_cuda_model *m, arena *ar, size_t n) {
    if (m->precision == PRECISION_FP32) return kept_shared(m, ar, n, NULL);
    uint16_t *kept = arena_halves(ar, n);
    return (kept_tensor){kept, arena_floats(ar, n)};
}

static void layout_embedder(const dit_cuda_model *m, arena *ar, scalar_embedder *e) {
    const size_t B = (size_t)m->max_batch, D = (size_t)m->shape.hidden_size;
    e->freq = kept_own(m, ar, B * DIT_FREQUENCY_EMBEDDING_SIZE);
    e->hidden = arena_floats(ar, B * D);
    e->hidden_act = kept_own(m, ar, B * D);
}

static size_t max_size(size_t a, size_t b) { return a > b ? a : b; }

/* The activations kept for backward and all scratch, for max_batch samples. */
static void layout_activations(dit_cuda_model *m, arena *ar) {
    const dit_shape *s = &m->shape;
    struct dit_cuda_activations *a = m->act;
    const size_t B = (size_t)m->max_batch, T = (size_t)m->tokens, D = (size_t)s->hidden_size;
    const size_t F = (size_t)s->mlp_hidden, H = (size_t)s->num_heads;
    const size_t PPC = (size_t)s->patch_size * s->patch_size * s->in_channels;
    const size_t BT = B * T, nD = BT * D, nF = BT * F, nP = B * H * T * T;
    const int half = m->precision != PRECISION_FP32;
    if (half) { /* first, so that the kept tensors below can point at them */
        a->w_d0 = arena_floats(ar, nD);
        a->w_d1 = arena_floats(ar, nD);
        a->w_3d = arena_floats(ar, 3 * nD);
        a->w_probs = arena_floats(ar, nP);
        a->w_f0 = arena_floats(ar, nF);
        a->w_f1 = arena_floats(ar, nF);
    }
    a->labels = arena_ints(ar, B);
    a->patches = kept_own(m, ar, BT * PPC);
    a->x_run = arena_floats(ar, nD);
    layout_embedder(m, ar, &a->t_embedder);
    if (s->guidance_input) {
        layout_embedder(m, ar, &a->w_embedder);
        a->w_scaled = arena_floats(ar, B);
        a->w_emb = arena_floats(ar, B * D);
    }
    a->cond = arena_floats(ar, B * D);
    a->y_emb = arena_floats(ar, B * D);
    a->cond_act = kept_own(m, ar, B * D);
    for (int l = 0; l < s->depth; l++) {
        block_activations *k = &a->blocks[l];
        k->ln1_mean = arena_floats(ar, BT);
        k->ln1_rstd = arena_floats(ar, BT);
        k->ln2_mean = arena_floats(ar, BT);
        k->ln2_rstd = arena_floats(ar, BT);
        k->ada = arena_floats(ar, B * 6 * D);
        /* the work buffers as dit_forward_16bit uses them */
        k->ln1 = kept_shared(m, ar, nD, a->w_d0);
        k->mod1 = kept_shared(m, ar, nD, a->w_d1);
        k->qkv = kept_shared(m, ar, 3 * nD, a->w_3d);
        k->probs = kept_shared(m, ar, nP, a->w_probs);
        k->attn = kept_shared(m, ar, nD, a->w_d0);
        k->attn_proj = kept_shared(m, ar, nD, a->w_d1);
        k->ln2 = kept_shared(m, ar, nD, a->w_d0);
        k->mod2 = kept_shared(m, ar, nD, a->w_d1);
        k->fc1 = kept_shared(m, ar, nF, a->w_f0);
        k->gelu = kept_shared(m, ar, nF, a->w_f1);
        k->fc2 = kept_shared(m, ar, nD, a->w_d0);
    }
    a->final_ada = arena_floats(ar, B * 2 * D);
    a->final_mean = arena_floats(ar, BT);
    a->final_rstd = arena_floats(ar, BT);
    a->final_ln = kept_shared(m, ar, nD, a->w_d0);
    a->final_mod = kept_shared(m, ar, nD, a->w_d1);
    a->final_tokens = arena_floats(ar, BT * PPC);

    a->d_residual = arena_floats(ar, nD);
    a->d_a = arena_floats(ar, nD);
    a->d_b = arena_floats(ar, nD);
    a->d_qkv = arena_floats(ar, 3 * nD);
    a->d_scores = arena_floats(ar, nP);
    a->d_hidden = arena_floats(ar, nF);
    a->d_ada = arena_floats(ar, B * 6 * D);
    a->d_cond_act = arena_floats(ar, B * D);
    a->d_cond = arena_floats(ar, B * D);
    a->d_t_hidden = arena_floats(ar, B * D);
    a->d_tokens = arena_floats(ar, BT * PPC);
    a->d_patches = arena_floats(ar, BT * PPC);
    if (half) {
        a->d_bits = arena_halves(ar, max_size(BT * max_size(max_size(3 * D, F), PPC), B * 6 * D));
        a->d_cond_bits = arena_halves(ar, B * D);
    }
}

/* Places every buffer; called once measuring and once placing (see arena.h). */
static void layout(dit_cuda_model *m, arena *ar, int with_optimizer) {
    struct dit_cuda_activations *a = m->act;
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
    size_t activations_start = ar->used;
    layout_activations(m, ar);
    m->activation_bytes = ar->used - activations_start;
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
    m->act = xcalloc(1, sizeof(*m->act));
    m->act->blocks = xcalloc((size_t)shape->depth, sizeof(block_activations));
    m->act->block_params = xcalloc((size_t)shape->depth, sizeof(block_params));
    m->act->bias_offset = xcalloc((size_t)m->table.count, sizeof(long long));
    find_params(m);
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
    cuda_copy_to_device(m->fixed, host.fixed, sizeof(float) * m->table.fixed_numel);
    if (precision != PRECISION_FP32)
        cuda_copy_to_device(m->act->bias_segments, segments, 3 * sizeof(long long) * (size_t)m->act->bias_count);
    free(segments);
    dit_destroy(&host);
    m->gemm = gemm_cuda_context_create();
    m->stream = dit_cuda_stream_create();
}

void dit_cuda_destroy(dit_cuda_model *m) {
    if (m->stream) {
        dit_cuda_stream_synchronize(m->stream);
        dit_cuda_stream_destroy(m->stream);
    }
    gemm_cuda_context_destroy(m->gemm);
    cuda_buffer_free(m->memory);
    if (m->act) {
        free(m->act->blocks);
        free(m->act->block_params);
        free(m->act->bias_offset);
        free(m->act);
    }
    param_table_free(&m->table);
    memset(m, 0, sizeof(*m));
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

/* ---- parameters and precision helpers ---- */

static size_t offset_of(const dit_cuda_model *m, int index) { return m->table.entries[index].offset; }
/* The fp32 master value and the gradient. */
static const float *P(const dit_cuda_model *m, int index) { return m->params + offset_of(m, index); }
static float *G(const dit_cuda_model *m, int index) { return m->grads + offset_of(m, index); }

/* The weight a GEMM reads: the master in fp32, its 16-bit bits in bf16/fp16. */
static const void *W(const dit_cuda_model *m, int index) {
    if (m->precision == PRECISION_FP32) return P(m, index);
    return m->act->weight_bits + offset_of(m, index);
}

/* The bias a GEMM adds: the master in fp32, the rounded copy in bf16/fp16 (as
 * dit.c's 16-bit path adds compute_params' rounded bias). */
static const float *Bias(const dit_cuda_model *m, int index) {
    if (m->precision == PRECISION_FP32) return P(m, index);
    return m->act->bias_rounded + m->act->bias_offset[index];
}

/* bf16/fp16: the weights and biases in the format from the current master
 * weights, at the start of every forward pass (dit.c's compute_params). */
static void round_weights(dit_cuda_model *m) {
    struct dit_cuda_activations *a = m->act;
    precision_to_bits_cuda(m->precision, a->weight_bits, m->params, m->table.trainable_numel, m->stream);
    dit_cuda_round_segments(m->precision, a->bias_rounded, m->params, a->bias_segments, a->bias_count, m->stream);
}

/* x (n) rounded in place to the format (nothing in fp32). */
static void round_in_place(const dit_cuda_model *m, float *x, size_t n) {
    precision_round_cuda(m->precision, x, n, m->stream);
}

/* k.work (n) just computed: in bf16/fp16 its bits into k.kept and work rounded
 * to them (precision_store). Returns what a GEMM reads: k.kept. */
static const void *keep(const dit_cuda_model *m, kept_tensor k, size_t n) {
    if (m->precision != PRECISION_FP32) precision_store_cuda(m->precision, k.kept, k.work, n, m->stream);
    return k.kept;
}

/* Backward: the kept values (n) as fp32, in k.work. */
static const float *load(const dit_cuda_model *m, kept_tensor k, size_t n) {
    if (m->precision != PRECISION_FP32) precision_from_bits_cuda(m->precision, k.work, k.kept, n, m->stream);
    return k.work;
}

/* An activation gradient g (n) that a GEMM reads next: in bf16/fp16 rounded in
 * place and its bits into `bits`, which is returned; g itself in fp32. */
static const void *grad_operand(const dit_cuda_model *m, float *g, uint16_t *bits, size_t n) {
    if (m->precision == PRECISION_FP32) return g;
    precision_store_cuda(m->precision, bits, g, n, m->stream);
    return bits;
}

/* out (rows, out_features) = in @ W^T + bias with the model's parameters `weight`, `bias`. */
static void linear(const dit_cuda_model *m, float *out, const void *in, int weight, int bias, int rows,
                   int in_features, int out_features) {
    linear_forward_cuda(m->gemm, out, in, W(m, weight), Bias(m, bias), rows, in_features, out_features, m->precision,
                        m->stream);
}

/* Its backward: d_in (or NULL) = d_in_beta d_in + d_out @ W; the parameter gradients accumulate. */
static void linear_back(const dit_cuda_model *m, float *d_in, float d_in_beta, int weight, int bias,
                        const void *d_out, const void *in, int rows, int in_features, int out_features) {
    linear_backward_cuda(m->gemm, d_in, d_in_beta, G(m, weight), G(m, bias), d_out, in, W(m, weight), rows,
                         in_features, out_features, m->precision, m->stream);
}

/* ---- the scalar embedders: MLP(freq(value)) ---- */

/* out (B, D) = MLP(freq(values (B))), every GEMM input and output rounded. */
static void scalar_embedder_forward(const dit_cuda_model *m, const scalar_embedder *e, const float *values,
                                    float *out, int B) {
    const int D = m->shape.hidden_size, E = DIT_FREQUENCY_EMBEDDING_SIZE;
    timestep_embedding_forward_cuda(e->freq.work, values, B, E, m->stream);
    const void *freq = keep(m, e->freq, (size_t)B * E);
    linear(m, e->hidden, freq, e->w0, e->b0, B, E, D);
    round_in_place(m, e->hidden, (size_t)B * D);
    silu_forward_cuda(e->hidden_act.work, e->hidden, (size_t)B * D, m->stream);
    const void *hidden_act = keep(m, e->hidden_act, (size_t)B * D);
    linear(m, out, hidden_act, e->w2, e->b2, B, D, D);
    round_in_place(m, out, (size_t)B * D);
}

/* The MLP's gradients from d_out (B, D), the GEMM operand of an already rounded
 * gradient, with d_hidden (B, D) as scratch. */
static void scalar_embedder_backward(const dit_cuda_model *m, const scalar_embedder *e, const void *d_out,
                                     float *d_hidden, int B) {
    const int D = m->shape.hidden_size, E = DIT_FREQUENCY_EMBEDDING_SIZE;
    linear_back(m, d_hidden, 0.0f, e->w2, e->b2, d_out, e->hidden_act.kept, B, D, D);
    silu_backward_cuda(d_hidden, d_hidden, e->hidden, (size_t)B * D, m->stream);
    const void *d_hidden_operand = grad_operand(m, d_hidden, m->act->d_bits, (size_t)B * D);
    linear_back(m, NULL, 0.0f, e->w0, e->b0, d_hidden_operand, e->freq.kept, B, E, D);
}

/* ---- forward and backward ---- */

void dit_cuda_forward(dit_cuda_model *m, const float *x, const float *t, const int *y, const float *guidance,
                      int batch, float *out) {
    const dit_shape *s = &m->shape;
    struct dit_cuda_activations *a = m->act;
    if (batch < 1 || batch > m->max_batch)
        fatal_internal("dit_cuda_forward: batch %d outside [1, %d]", batch, m->max_batch);
    if (!s->guidance_input != !guidance)
        fatal_internal("dit_cuda_forward: a model %s a guidance input was given %s",
                       s->guidance_input ? "with" : "without", guidance ? "guidance scales" : "none");
    const int B = batch, T = m->tokens, D = s->hidden_size, F = s->mlp_hidden, H = s->num_heads;
    const int C = s->in_channels, Pz = s->patch_size, PPC = Pz * Pz * C, BT = B * T, S6 = 6 * D;
    const size_t nD = (size_t)BT * D, nF = (size_t)BT * F, nP = (size_t)B * H * T * T;
    ldm_stream stream = m->stream;
    dit_cuda_copy_async(a->labels, y, sizeof(int) * (size_t)B, stream);
    if (m->precision != PRECISION_FP32) round_weights(m);

    /* patch embedding (rounded like every linear output) + fixed position embedding, in fp32 */
    patchify_forward_cuda(a->patches.work, x, B, C, s->input_size, Pz, stream);
    const void *patches = keep(m, a->patches, (size_t)BT * PPC);
    linear(m, a->x_run, patches, a->x_weight, a->x_bias, BT, PPC, D);
    round_in_place(m, a->x_run, nD);
    add_row_broadcast_cuda(a->x_run, m->fixed + offset_of(m, a->pos_embed), B, T * D, stream);

    /* conditioning: c = MLP(freq(t)) + table[y] (+ MLP(freq(1000 w))); every adaLN sees SiLU(c) */
    scalar_embedder_forward(m, &a->t_embedder, t, a->cond, B);
    embedding_forward_cuda(a->y_emb, P(m, a->y_table), a->labels, B, D, stream); /* a lookup: the fp32 table */
    add_forward_cuda(a->cond, a->cond, a->y_emb, (size_t)B * D, stream);
    if (guidance) {
        dit_cuda_scale(a->w_scaled, guidance, DIT_GUIDANCE_EMBEDDING_SCALE, (size_t)B, stream);
        scalar_embedder_forward(m, &a->w_embedder, a->w_scaled, a->w_emb, B);
        add_forward_cuda(a->cond, a->cond, a->w_emb, (size_t)B * D, stream);
    }
    silu_forward_cuda(a->cond_act.work, a->cond, (size_t)B * D, stream);
    const void *cond_act = keep(m, a->cond_act, (size_t)B * D);

    for (int l = 0; l < s->depth; l++) {
        block_activations *k = &a->blocks[l];
        const block_params *bp = &a->block_params[l];
        linear(m, k->ada, cond_act, bp->ada_weight, bp->ada_bias, B, D, S6);
        round_in_place(m, k->ada, (size_t)B * S6);
        /* attention branch: x += gate_msa * proj(attn(modulate(LN(x)))) */
        layernorm_modulate_forward_cuda(k->mod1.work, k->ln1.work, k->ln1_mean, k->ln1_rstd, a->x_run,
                                        k->ada + 0 * D, k->ada + 1 * D, S6, B, T, D, DIT_LAYERNORM_EPS, stream);
        keep(m, k->ln1, nD);
        const void *mod1 = keep(m, k->mod1, nD);
        linear(m, k->qkv.work, mod1, bp->qkv_weight, bp->qkv_bias, BT, D, 3 * D);
        keep(m, k->qkv, 3 * nD);
        attention_forward_cuda(m->gemm, k->attn.work, k->probs.work, k->qkv.work, B, T, H, D / H, m->precision,
                               stream);
        keep(m, k->probs, nP);
        const void *attn = keep(m, k->attn, nD);
        linear(m, k->attn_proj.work, attn, bp->proj_weight, bp->proj_bias, BT, D, D);
        keep(m, k->attn_proj, nD);
        gated_residual_forward_cuda(a->x_run, k->attn_proj.work, k->ada + 2 * D, S6, B, T, D, stream);
        /* MLP branch: x += gate_mlp * fc2(GELU(fc1(modulate(LN(x))))) */
        layernorm_modulate_forward_cuda(k->mod2.work, k->ln2.work, k->ln2_mean, k->ln2_rstd, a->x_run,
                                        k->ada + 3 * D, k->ada + 4 * D, S6, B, T, D, DIT_LAYERNORM_EPS, stream);
        keep(m, k->ln2, nD);
        const void *mod2 = keep(m, k->mod2, nD);
        linear(m, k->fc1.work, mod2, bp->fc1_weight, bp->fc1_bias, BT, D, F);
        keep(m, k->fc1, nF);
        gelu_tanh_forward_cuda(k->gelu.work, k->fc1.work, nF, stream);
        const void *gelu = keep(m, k->gelu, nF);
        linear(m, k->fc2.work, gelu, bp->fc2_weight, bp->fc2_bias, BT, F, D);
        keep(m, k->fc2, nD);
        gated_residual_forward_cuda(a->x_run, k->fc2.work, k->ada + 5 * D, S6, B, T, D, stream);
    }

    /* final layer: linear(modulate(LN(x), shift, scale)), then back to an image */
    linear(m, a->final_ada, cond_act, a->final_ada_weight, a->final_ada_bias, B, D, 2 * D);
    round_in_place(m, a->final_ada, (size_t)B * 2 * D);
    layernorm_modulate_forward_cuda(a->final_mod.work, a->final_ln.work, a->final_mean, a->final_rstd, a->x_run,
                                    a->final_ada, a->final_ada + D, 2 * D, B, T, D, DIT_LAYERNORM_EPS, stream);
    keep(m, a->final_ln, nD);
    const void *final_mod = keep(m, a->final_mod, nD);
    linear(m, a->final_tokens, final_mod, a->final_weight, a->final_bias, BT, D, PPC);
    round_in_place(m, a->final_tokens, (size_t)BT * PPC);
    unpatchify_forward_cuda(out, a->final_tokens, B, C, s->input_size, Pz, stream);
}

/* Activation gradients are rounded where a GEMM reads them (in fp16 a scaled
 * gradient beyond 65504 becomes infinite there: the overflow loss scaling looks for). */
void dit_cuda_backward(dit_cuda_model *m, const float *d_out, float *d_x, int batch) {
    const dit_shape *s = &m->shape;
    struct dit_cuda_activations *a = m->act;
    if (batch < 1 || batch > m->max_batch)
        fatal_internal("dit_cuda_backward: batch %d outside [1, %d]", batch, m->max_batch);
    const int B = batch, T = m->tokens, D = s->hidden_size, F = s->mlp_hidden, H = s->num_heads;
    const int C = s->in_channels, Pz = s->patch_size, PPC = Pz * Pz * C, BT = B * T, S6 = 6 * D;
    const size_t nD = (size_t)BT * D, nF = (size_t)BT * F, nP = (size_t)B * H * T * T;
    ldm_stream stream = m->stream;
    const void *operand; /* the rounded gradient the next GEMM reads */

    /* final layer */
    unpatchify_backward_cuda(a->d_tokens, d_out, B, C, s->input_size, Pz, stream);
    operand = grad_operand(m, a->d_tokens, a->d_bits, (size_t)BT * PPC);
    linear_back(m, a->d_a, 0.0f, a->final_weight, a->final_bias, operand, a->final_mod.kept, BT, D, PPC);
    dit_cuda_zero_async(a->d_ada, sizeof(float) * (size_t)B * 2 * D, stream);
    const float *final_ln = load(m, a->final_ln, nD);
    modulate_backward_cuda(a->d_b, a->d_ada, a->d_ada + D, a->d_a, final_ln, a->final_ada + D, 2 * D, B, T, D, stream);
    layernorm_backward_normalized_cuda(a->d_residual, 0.0f, a->d_b, final_ln, a->final_rstd, BT, D, stream);
    operand = grad_operand(m, a->d_ada, a->d_bits, (size_t)B * 2 * D);
    linear_back(m, a->d_cond_act, 0.0f, a->final_ada_weight, a->final_ada_bias, operand, a->cond_act.kept, B, D,
                2 * D);
    if (m->gradients_ready) m->gradients_ready(m->gradients_ready_context, s->depth);

    for (int l = s->depth - 1; l >= 0; l--) {
        const block_activations *k = &a->blocks[l];
        const block_params *bp = &a->block_params[l];
        dit_cuda_zero_async(a->d_ada, sizeof(float) * (size_t)B * S6, stream);
        /* MLP branch; d_residual carries dL/dx_out and, after the LN, dL/dx_mid */
        gated_residual_backward_cuda(a->d_a, a->d_ada + 5 * D, a->d_residual, load(m, k->fc2, nD), k->ada + 5 * D,
                                     S6, B, T, D, stream);
        operand = grad_operand(m, a->d_a, a->d_bits, nD);
        linear_back(m, a->d_hidden, 0.0f, bp->fc2_weight, bp->fc2_bias, operand, k->gelu.kept, BT, F, D);
        gelu_tanh_backward_cuda(a->d_hidden, a->d_hidden, load(m, k->fc1, nF), nF, stream);
        operand = grad_operand(m, a->d_hidden, a->d_bits, nF);
        linear_back(m, a->d_b, 0.0f, bp->fc1_weight, bp->fc1_bias, operand, k->mod2.kept, BT, D, F);
        const float *ln2 = load(m, k->ln2, nD);
        modulate_backward_cuda(a->d_a, a->d_ada + 3 * D, a->d_ada + 4 * D, a->d_b, ln2, k->ada + 4 * D, S6, B, T, D,
                               stream);
        layernorm_backward_normalized_cuda(a->d_residual, 1.0f, a->d_a, ln2, k->ln2_rstd, BT, D, stream);
        /* attention branch; afterwards d_residual is dL/dx_in */
        gated_residual_backward_cuda(a->d_a, a->d_ada + 2 * D, a->d_residual, load(m, k->attn_proj, nD),
                                     k->ada + 2 * D, S6, B, T, D, stream);
        operand = grad_operand(m, a->d_a, a->d_bits, nD);
        linear_back(m, a->d_b, 0.0f, bp->proj_weight, bp->proj_bias, operand, k->attn.kept, BT, D, D);
        round_in_place(m, a->d_b, nD); /* attention's backward GEMMs read it (as fp32 holding format values) */
        const float *qkv = load(m, k->qkv, 3 * nD);
        const float *probs = load(m, k->probs, nP);
        attention_backward_cuda(m->gemm, a->d_qkv, a->d_scores, a->d_b, qkv, probs, B, T, H, D / H, m->precision,
                                stream);
        operand = grad_operand(m, a->d_qkv, a->d_bits, 3 * nD);
        linear_back(m, a->d_a, 0.0f, bp->qkv_weight, bp->qkv_bias, operand, k->mod1.kept, BT, D, 3 * D);
        const float *ln1 = load(m, k->ln1, nD);
        modulate_backward_cuda(a->d_b, a->d_ada + 0 * D, a->d_ada + 1 * D, a->d_a, ln1, k->ada + 1 * D, S6, B, T, D,
                               stream);
        layernorm_backward_normalized_cuda(a->d_residual, 1.0f, a->d_b, ln1, k->ln1_rstd, BT, D, stream);
        operand = grad_operand(m, a->d_ada, a->d_bits, (size_t)B * S6);
        linear_back(m, a->d_cond_act, 1.0f, bp->ada_weight, bp->ada_bias, operand, a->cond_act.kept, B, D, S6);
        if (m->gradients_ready) m->gradients_ready(m->gradients_ready_context, l);
    }

    /* conditioning (d_cond is rounded once and read by the label table's gradient
     * in fp32 and by both embedders' GEMMs through its own bits) */
    silu_backward_cuda(a->d_cond, a->d_cond_act, a->cond, (size_t)B * D, stream);
    const void *d_cond = grad_operand(m, a->d_cond, a->d_cond_bits, (size_t)B * D);
    embedding_backward_cuda(G(m, a->y_table), a->d_cond, a->labels, B, D, s->num_classes + 1, stream);
    if (s->guidance_input) scalar_embedder_backward(m, &a->w_embedder, d_cond, a->d_t_hidden, B);
    scalar_embedder_backward(m, &a->t_embedder, d_cond, a->d_t_hidden, B);

    /* patch embedding (the position embedding is fixed) */
    operand = grad_operand(m, a->d_residual, a->d_bits, nD);
    linear_back(m, d_x ? a->d_patches : NULL, 0.0f, a->x_weight, a->x_bias, operand, a->patches.kept, BT, PPC, D);
    if (d_x) patchify_backward_cuda(d_x, a->d_patches, B, C, s->input_size, Pz, stream);
    if (m->gradients_ready) m->gradients_ready(m->gradients_ready_context, -1);
}

#endif /* LDM_HAVE_CUDA */

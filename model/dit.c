/* The DiT denoiser on the CPU (see dit.h): the parameter table with the public
 * DiT names, the one-time memory layout, DiT's initialisation. Forward and
 * backward are the one DiT graph (dit_graph.c) on the CPU backend
 * (dit_backend_cpu.c).
 *
 * Notation in the shape comments: D hidden, F mlp hidden, P patch, C channels,
 * E = 256 the frequency embedding. */
#include "dit.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "dit_graph.h"
#include "fatal.h"
#include "ops.h"
#include "precision.h"
#include "rng.h"

static void check_shape(const dit_shape *s, int max_batch) {
    if (s->input_size < 1 || s->in_channels < 1 || s->patch_size < 1 || s->hidden_size < 4 ||
        s->depth < 1 || s->num_heads < 1 || s->mlp_hidden < 1 || s->num_classes < 1 || max_batch < 1)
        fatal_input("DiT shape: every size must be positive (input_size %d, in_channels %d, patch_size %d, "
                    "hidden_size %d, depth %d, num_heads %d, mlp hidden %d, num_classes %d, batch %d)",
                    s->input_size, s->in_channels, s->patch_size, s->hidden_size, s->depth,
                    s->num_heads, s->mlp_hidden, s->num_classes, max_batch);
    if (s->input_size % s->patch_size)
        fatal_input("DiT shape: model.input_size %d is not a multiple of model.patch_size %d",
                    s->input_size, s->patch_size);
    if (s->hidden_size % s->num_heads)
        fatal_input("DiT shape: model.hidden_size %d is not a multiple of model.num_heads %d",
                    s->hidden_size, s->num_heads);
    if (s->hidden_size % 4)
        fatal_input("DiT shape: model.hidden_size %d must be a multiple of 4 (2-D sin-cos embedding)",
                    s->hidden_size);
}

/* The parameter table with the public DiT names (dit_graph_init finds its indices by name). */
static void build_table(dit_model *m) {
    const dit_shape *s = &m->shape;
    param_table *t = &m->table;
    const int64_t D = s->hidden_size, C = s->in_channels, P = s->patch_size, F = s->mlp_hidden;
    const int64_t E = DIT_FREQUENCY_EMBEDDING_SIZE;
#define ADD(trainable, ...) param_table_add(t, trainable, __VA_ARGS__)
    ADD(false, 3, (int64_t[]){1, m->tokens, D}, "pos_embed");
    ADD(true, 4, (int64_t[]){D, C, P, P}, "x_embedder.proj.weight");
    ADD(true, 1, (int64_t[]){D}, "x_embedder.proj.bias");
    ADD(true, 2, (int64_t[]){D, E}, "t_embedder.mlp.0.weight");
    ADD(true, 1, (int64_t[]){D}, "t_embedder.mlp.0.bias");
    ADD(true, 2, (int64_t[]){D, D}, "t_embedder.mlp.2.weight");
    ADD(true, 1, (int64_t[]){D}, "t_embedder.mlp.2.bias");
    ADD(true, 2, (int64_t[]){s->num_classes + 1, D}, "y_embedder.embedding_table.weight");
    for (int l = 0; l < s->depth; l++) {
        ADD(true, 2, (int64_t[]){3 * D, D}, "blocks.%d.attn.qkv.weight", l);
        ADD(true, 1, (int64_t[]){3 * D}, "blocks.%d.attn.qkv.bias", l);
        ADD(true, 2, (int64_t[]){D, D}, "blocks.%d.attn.proj.weight", l);
        ADD(true, 1, (int64_t[]){D}, "blocks.%d.attn.proj.bias", l);
        ADD(true, 2, (int64_t[]){F, D}, "blocks.%d.mlp.fc1.weight", l);
        ADD(true, 1, (int64_t[]){F}, "blocks.%d.mlp.fc1.bias", l);
        ADD(true, 2, (int64_t[]){D, F}, "blocks.%d.mlp.fc2.weight", l);
        ADD(true, 1, (int64_t[]){D}, "blocks.%d.mlp.fc2.bias", l);
        ADD(true, 2, (int64_t[]){6 * D, D}, "blocks.%d.adaLN_modulation.1.weight", l);
        ADD(true, 1, (int64_t[]){6 * D}, "blocks.%d.adaLN_modulation.1.bias", l);
    }
    ADD(true, 2, (int64_t[]){P * P * C, D}, "final_layer.linear.weight");
    ADD(true, 1, (int64_t[]){P * P * C}, "final_layer.linear.bias");
    ADD(true, 2, (int64_t[]){2 * D, D}, "final_layer.adaLN_modulation.1.weight");
    ADD(true, 1, (int64_t[]){2 * D}, "final_layer.adaLN_modulation.1.bias");
    if (s->guidance_input) {
        ADD(true, 2, (int64_t[]){D, E}, "w_embedder.mlp.0.weight");
        ADD(true, 1, (int64_t[]){D}, "w_embedder.mlp.0.bias");
        ADD(true, 2, (int64_t[]){D, D}, "w_embedder.mlp.2.weight");
        ADD(true, 1, (int64_t[]){D}, "w_embedder.mlp.2.bias");
    }
#undef ADD
}

/* Places every buffer; called once measuring and once placing (see arena.h). */
static void layout(dit_model *m, arena *ar) {
    m->params = arena_floats(ar, m->table.trainable_numel);
    m->grads = arena_floats(ar, m->table.trainable_numel);
    m->fixed = arena_floats(ar, m->table.fixed_numel);
    m->compute_params = m->precision != PRECISION_FP32 ? arena_floats(ar, m->table.trainable_numel) : m->params;
    m->cpu_state->compute_params = m->compute_params;
    m->cpu_state->weight_bits = NULL;
    m->cpu_state->attention_memory = NULL;
    size_t attention_bytes = 0; /* scratch for max_batch: counted with the activations */
    const int bits = m->graph->ops->gemm_reads_bits, onednn_f32 = m->graph->ops == &dit_backend_cpu_fp32_onednn;
    if (bits) m->cpu_state->weight_bits = arena_halves(ar, m->table.trainable_numel); /* dit_backend_cpu_bf16_bits */
    if (bits || onednn_f32) { /* attention's scratch on oneDNN */
        const int heads = m->shape.num_heads, head_dim = m->shape.hidden_size / heads;
        const size_t needed = bits ? attention_bits_scratch_bytes(m->max_batch, m->tokens, heads, head_dim)
                                   : attention_onednn_scratch_bytes(m->max_batch, m->tokens, heads, head_dim);
        const size_t d_hidden_bytes = sizeof(float) * (size_t)m->max_batch * m->tokens * m->shape.mlp_hidden;
        if (needed > d_hidden_bytes) { /* else in the graph's d_hidden (dit_backend_cpu_plan) */
            m->cpu_state->attention_memory = arena_floats(ar, (needed + sizeof(float) - 1) / sizeof(float));
            attention_bytes = needed;
        }
    }
    m->activation_bytes = dit_graph_layout(m->graph, ar) + attention_bytes;
}

void dit_create(dit_model *m, const dit_shape *shape, int max_batch) {
    dit_create_precision(m, shape, max_batch, PRECISION_FP32);
}

void dit_create_precision(dit_model *m, const dit_shape *shape, int max_batch, ldm_precision precision) {
    memset(m, 0, sizeof(*m));
    check_shape(shape, max_batch);
    m->shape = *shape;
    m->precision = precision;
    m->max_batch = max_batch;
    int grid = shape->input_size / shape->patch_size;
    m->tokens = grid * grid;
    param_table_init(&m->table);
    build_table(m);
    m->graph = xcalloc(1, sizeof(*m->graph));
    m->cpu_state = xcalloc(1, sizeof(*m->cpu_state));
    dit_graph_init(m->graph, shape, max_batch, precision, &m->table, dit_backend_cpu_for(precision));

    arena ar;
    arena_begin_measure(&ar);
    layout(m, &ar);
    arena_begin_place(&ar, ar.used);
    layout(m, &ar);
    m->memory = ar.base;
    m->memory_bytes = ar.capacity;
    param_table_bind(&m->table, m->params, m->grads, m->fixed);
    dit_graph_bind(m->graph, m->params, m->grads, m->fixed, m->cpu_state);
    dit_backend_cpu_plan(m->graph);
    pos_embed_2d_sincos(m->table.entries[m->graph->pos_embed].data, shape->hidden_size, grid);
}

void dit_destroy(dit_model *m) {
    if (m->graph) {
        dit_graph_free(m->graph);
        free(m->graph);
    }
    param_table_free(&m->table);
    free(m->cpu_state);
    free(m->memory);
    memset(m, 0, sizeof(*m));
}

/* In parallel chunks: 130 MB for DiT-S, one core's memset took 1% of a 2-thread step. */
void dit_zero_grad(dit_model *m) {
    const size_t n = m->table.trainable_numel, chunk = (size_t)1 << 18;
    const size_t chunks = (n + chunk - 1) / chunk;
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < chunks; c++) {
        const size_t start = c * chunk;
        memset(m->grads + start, 0, sizeof(float) * (n - start < chunk ? n - start : chunk));
    }
}

void dit_init_weights(dit_model *m, uint64_t seed) {
    const dit_graph *g = m->graph;
    memset(m->params, 0, sizeof(float) * m->table.trainable_numel);
    for (int i = 0; i < m->table.count; i++) {
        param_entry *e = &m->table.entries[i];
        if (!e->trainable || e->ndim < 2) continue; /* biases start at zero */
        /* Each tensor's values depend only on (seed, its index), not on the others. */
        rng_stream rng = rng_stream_for(seed, 0x696e6974 /* "init" */, (uint64_t)i);
        const bool guidance = m->shape.guidance_input;
        bool label_or_time = i == g->y_table || i == g->t_embedder.w0 || i == g->t_embedder.w2 ||
                             (guidance && i == g->w_embedder.w0);
        bool zero_init = i == g->final_weight || i == g->final_ada_weight || (guidance && i == g->w_embedder.w2);
        for (int l = 0; l < m->shape.depth; l++) zero_init |= i == g->block_params[l].ada_weight;
        if (zero_init) continue;
        if (label_or_time) {
            for (size_t k = 0; k < e->numel; k++) e->data[k] = 0.02f * rng_normal(&rng);
        } else { /* Xavier uniform over (out, everything else), as for the conv viewed 2-D */
            double fan_out = (double)e->shape[0], fan_in = (double)e->numel / fan_out;
            float bound = (float)sqrt(6.0 / (fan_in + fan_out));
            for (size_t k = 0; k < e->numel; k++) e->data[k] = bound * (2.0f * rng_uniform(&rng) - 1.0f);
        }
    }
}

void dit_forward(dit_model *m, const float *x, const float *t, const int *y, int batch, float *out) {
    dit_forward_guided(m, x, t, y, NULL, batch, out);
}

void dit_forward_guided(dit_model *m, const float *x, const float *t, const int *y, const float *guidance, int batch,
                        float *out) {
    const dit_shape *s = &m->shape;
    for (int b = 0; b < batch && b < m->max_batch; b++)
        if (y[b] < 0 || y[b] > s->num_classes)
            fatal_input("class label %d outside [0, %d] (%d is the null class)", y[b], s->num_classes,
                        s->num_classes);
    dit_graph_forward(m->graph, "dit_forward", x, t, y, guidance, batch, out);
}

void dit_backward(dit_model *m, const float *d_out, float *d_x, int batch) {
    dit_graph_backward(m->graph, "dit_backward", d_out, d_x, batch, NULL, NULL);
}

double dit_forward_flops_per_sample(const dit_shape *s) {
    const double Pz = s->patch_size, T = (double)(s->input_size / s->patch_size) * (s->input_size / s->patch_size);
    const double D = s->hidden_size, F = s->mlp_hidden, C = s->in_channels, E = DIT_FREQUENCY_EMBEDDING_SIZE;
    double macs = T * C * Pz * Pz * D;              /* x_embedder */
    macs += E * D + D * D;                          /* timestep MLP */
    macs += s->depth * (6 * D * D                   /* adaLN */
                        + T * (3 * D * D + D * D + 2 * D * F) /* qkv, proj, fc1, fc2 */
                        + 2 * T * T * D);           /* q k^T and p v */
    macs += 2 * D * D + T * D * Pz * Pz * C;        /* final layer */
    if (s->guidance_input) macs += E * D + D * D;   /* guidance MLP */
    return 2.0 * macs;
}

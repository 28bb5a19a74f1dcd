/* The DiT denoiser (see dit.h): parameter table with the public DiT names, the
 * one-time memory layout, DiT's initialisation, and forward/backward composed
 * from the op set in ops.h.
 *
 * Notation in the shape comments: B batch, T tokens, D hidden, F mlp hidden,
 * H heads, P patch, C channels, S input size, E = 256 the frequency embedding. */
#include "dit.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "fatal.h"
#include "ops.h"
#include "precision.h"
#include "rng.h"

/* Indices into the parameter table of one block's tensors. */
typedef struct {
    int qkv_weight, qkv_bias, proj_weight, proj_bias;
    int fc1_weight, fc1_bias, fc2_weight, fc2_bias;
    int ada_weight, ada_bias;
} dit_block_params;

typedef struct {
    float *ln1, *ln1_mean, *ln1_rstd; /* (B*T, D), (B*T), (B*T) */
    float *mod1;                      /* (B*T, D) modulate(ln1) */
    float *qkv;                       /* (B*T, 3D) */
    float *probs;                     /* (B, H, T, T) */
    float *attn;                      /* (B*T, D) heads concatenated */
    float *attn_proj;                 /* (B*T, D) */
    float *x_mid;                     /* (B*T, D) residual after attention */
    float *ln2, *ln2_mean, *ln2_rstd;
    float *mod2;                      /* (B*T, D) */
    float *fc1;                       /* (B*T, F) before GELU */
    float *gelu;                      /* (B*T, F) */
    float *fc2;                       /* (B*T, D) */
    float *ada;                       /* (B, 6D): shift, scale, gate (msa), shift, scale, gate (mlp) */
} dit_block_activations;

/* bf16/fp16: what a block keeps for backward, as 16-bit values (shapes as above). */
typedef struct {
    uint16_t *ln1, *mod1, *qkv, *probs, *attn, *attn_proj, *ln2, *mod2, *fc1, *gelu, *fc2;
} dit_block_stored;

struct dit_activations {
    int *labels;            /* (B) */
    float *patches;         /* (B*T, C*P*P) */
    float **residual;       /* depth + 1 buffers of (B*T, D): block inputs, then the last output */
    float *t_freq;          /* (B, E) */
    float *t_hidden;        /* (B, D) before SiLU */
    float *t_hidden_act;    /* (B, D) */
    float *cond;            /* (B, D) t_emb + y_emb, before adaLN's SiLU */
    float *y_emb;           /* (B, D) */
    float *cond_act;        /* (B, D) SiLU(cond), the input of every adaLN linear */
    /* guidance input only (dit_shape.guidance_input) */
    float *w_scaled;        /* (B) DIT_GUIDANCE_EMBEDDING_SCALE * w */
    float *w_freq;          /* (B, E) */
    float *w_hidden;        /* (B, D) before SiLU */
    float *w_hidden_act;    /* (B, D) */
    float *w_emb;           /* (B, D) */
    dit_block_activations *blocks;
    float *final_ada;       /* (B, 2D) shift, scale */
    float *final_ln, *final_mean, *final_rstd;
    float *final_mod;       /* (B*T, D) */
    float *final_tokens;    /* (B*T, P*P*C) */
    /* backward scratch */
    float *d_residual;      /* (B*T, D) */
    float *d_a, *d_b;       /* (B*T, D) each */
    float *d_qkv;           /* (B*T, 3D) */
    float *d_scores;        /* (B, H, T, T) attention backward scratch */
    float *d_hidden;        /* (B*T, F) */
    float *d_ada;           /* (B, 6D) */
    float *d_cond_act;      /* (B, D) */
    float *d_cond;          /* (B, D) */
    float *d_t_hidden;      /* (B, D) */
    float *d_tokens;        /* (B*T, P*P*C) */
    float *d_patches;       /* (B*T, C*P*P) */
    /* parameter indices */
    int x_weight, x_bias, t0_weight, t0_bias, t2_weight, t2_bias, y_table, pos_embed;
    int final_weight, final_bias, final_ada_weight, final_ada_bias;
    int w0_weight, w0_bias, w2_weight, w2_bias; /* guidance input only */
    dit_block_params *block_params;
    /* bf16/fp16 only. blocks[l] then holds only ln*_mean, ln*_rstd and ada (fp32);
     * residual, x_mid and the other fp32 block buffers are not laid out. */
    float *x_run;                  /* (B*T, D) the residual stream, fp32 */
    dit_block_stored *stored;      /* (depth) */
    uint16_t *final_ln_h, *final_mod_h; /* (B*T, D) */
    /* One block's fp32 working buffers: forward computes into them before
     * storing, backward loads the stored values back into them. */
    float *w_d0, *w_d1;            /* (B*T, D) */
    float *w_3d;                   /* (B*T, 3D) */
    float *w_probs;                /* (B, H, T, T) */
    float *w_f0, *w_f1;            /* (B*T, F) */
};

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

static void build_table(dit_model *m) {
    const dit_shape *s = &m->shape;
    struct dit_activations *a = m->act;
    param_table *t = &m->table;
    const int64_t D = s->hidden_size, C = s->in_channels, P = s->patch_size, F = s->mlp_hidden;
    const int64_t E = DIT_FREQUENCY_EMBEDDING_SIZE;
#define ADD(trainable, ...) param_table_add(t, trainable, __VA_ARGS__)
    a->pos_embed = ADD(false, 3, (int64_t[]){1, m->tokens, D}, "pos_embed");
    a->x_weight = ADD(true, 4, (int64_t[]){D, C, P, P}, "x_embedder.proj.weight");
    a->x_bias = ADD(true, 1, (int64_t[]){D}, "x_embedder.proj.bias");
    a->t0_weight = ADD(true, 2, (int64_t[]){D, E}, "t_embedder.mlp.0.weight");
    a->t0_bias = ADD(true, 1, (int64_t[]){D}, "t_embedder.mlp.0.bias");
    a->t2_weight = ADD(true, 2, (int64_t[]){D, D}, "t_embedder.mlp.2.weight");
    a->t2_bias = ADD(true, 1, (int64_t[]){D}, "t_embedder.mlp.2.bias");
    a->y_table = ADD(true, 2, (int64_t[]){s->num_classes + 1, D}, "y_embedder.embedding_table.weight");
    for (int l = 0; l < s->depth; l++) {
        dit_block_params *b = &a->block_params[l];
        b->qkv_weight = ADD(true, 2, (int64_t[]){3 * D, D}, "blocks.%d.attn.qkv.weight", l);
        b->qkv_bias = ADD(true, 1, (int64_t[]){3 * D}, "blocks.%d.attn.qkv.bias", l);
        b->proj_weight = ADD(true, 2, (int64_t[]){D, D}, "blocks.%d.attn.proj.weight", l);
        b->proj_bias = ADD(true, 1, (int64_t[]){D}, "blocks.%d.attn.proj.bias", l);
        b->fc1_weight = ADD(true, 2, (int64_t[]){F, D}, "blocks.%d.mlp.fc1.weight", l);
        b->fc1_bias = ADD(true, 1, (int64_t[]){F}, "blocks.%d.mlp.fc1.bias", l);
        b->fc2_weight = ADD(true, 2, (int64_t[]){D, F}, "blocks.%d.mlp.fc2.weight", l);
        b->fc2_bias = ADD(true, 1, (int64_t[]){D}, "blocks.%d.mlp.fc2.bias", l);
        b->ada_weight = ADD(true, 2, (int64_t[]){6 * D, D}, "blocks.%d.adaLN_modulation.1.weight", l);
        b->ada_bias = ADD(true, 1, (int64_t[]){6 * D}, "blocks.%d.adaLN_modulation.1.bias", l);
    }
    a->final_weight = ADD(true, 2, (int64_t[]){P * P * C, D}, "final_layer.linear.weight");
    a->final_bias = ADD(true, 1, (int64_t[]){P * P * C}, "final_layer.linear.bias");
    a->final_ada_weight = ADD(true, 2, (int64_t[]){2 * D, D}, "final_layer.adaLN_modulation.1.weight");
    a->final_ada_bias = ADD(true, 1, (int64_t[]){2 * D}, "final_layer.adaLN_modulation.1.bias");
    if (s->guidance_input) {
        a->w0_weight = ADD(true, 2, (int64_t[]){D, E}, "w_embedder.mlp.0.weight");
        a->w0_bias = ADD(true, 1, (int64_t[]){D}, "w_embedder.mlp.0.bias");
        a->w2_weight = ADD(true, 2, (int64_t[]){D, D}, "w_embedder.mlp.2.weight");
        a->w2_bias = ADD(true, 1, (int64_t[]){D}, "w_embedder.mlp.2.bias");
    }
#undef ADD
}

/* The guidance input's buffers, the same in every precision (none without one). */
static void layout_guidance(dit_model *m, arena *ar) {
    struct dit_activations *a = m->act;
    if (!m->shape.guidance_input) return;
    const size_t B = (size_t)m->max_batch, D = (size_t)m->shape.hidden_size;
    a->w_scaled = arena_floats(ar, B);
    a->w_freq = arena_floats(ar, B * DIT_FREQUENCY_EMBEDDING_SIZE);
    a->w_hidden = arena_floats(ar, B * D);
    a->w_hidden_act = arena_floats(ar, B * D);
    a->w_emb = arena_floats(ar, B * D);
}

/* The backward scratch, the same in every precision. */
static void layout_backward_scratch(dit_model *m, arena *ar) {
    struct dit_activations *a = m->act;
    const size_t B = (size_t)m->max_batch, T = (size_t)m->tokens, D = (size_t)m->shape.hidden_size;
    const size_t F = (size_t)m->shape.mlp_hidden, H = (size_t)m->shape.num_heads;
    const size_t PPC = (size_t)m->shape.patch_size * m->shape.patch_size * m->shape.in_channels;
    const size_t BT = B * T;
    a->d_residual = arena_floats(ar, BT * D);
    a->d_a = arena_floats(ar, BT * D);
    a->d_b = arena_floats(ar, BT * D);
    a->d_qkv = arena_floats(ar, BT * 3 * D);
    a->d_scores = arena_floats(ar, B * H * T * T);
    a->d_hidden = arena_floats(ar, BT * F);
    a->d_ada = arena_floats(ar, B * 6 * D);
    a->d_cond_act = arena_floats(ar, B * D);
    a->d_cond = arena_floats(ar, B * D);
    a->d_t_hidden = arena_floats(ar, B * D);
    a->d_tokens = arena_floats(ar, BT * PPC);
    a->d_patches = arena_floats(ar, BT * PPC);
    layout_guidance(m, ar);
}

/* The activations of bf16/fp16 (after the parameters). */
static void layout_16bit(dit_model *m, arena *ar) {
    const dit_shape *s = &m->shape;
    struct dit_activations *a = m->act;
    const size_t B = (size_t)m->max_batch, T = (size_t)m->tokens, D = (size_t)s->hidden_size;
    const size_t F = (size_t)s->mlp_hidden, H = (size_t)s->num_heads;
    const size_t PPC = (size_t)s->patch_size * s->patch_size * s->in_channels;
    const size_t BT = B * T;
    size_t activations_start = ar->used;
    a->labels = arena_ints(ar, B);
    a->patches = arena_floats(ar, BT * PPC);
    a->x_run = arena_floats(ar, BT * D);
    a->t_freq = arena_floats(ar, B * DIT_FREQUENCY_EMBEDDING_SIZE);
    a->t_hidden = arena_floats(ar, B * D);
    a->t_hidden_act = arena_floats(ar, B * D);
    a->cond = arena_floats(ar, B * D);
    a->y_emb = arena_floats(ar, B * D);
    a->cond_act = arena_floats(ar, B * D);
    for (int l = 0; l < s->depth; l++) {
        dit_block_activations *k = &a->blocks[l];
        dit_block_stored *h = &a->stored[l];
        k->ln1_mean = arena_floats(ar, BT);
        k->ln1_rstd = arena_floats(ar, BT);
        k->ln2_mean = arena_floats(ar, BT);
        k->ln2_rstd = arena_floats(ar, BT);
        k->ada = arena_floats(ar, B * 6 * D);
        h->ln1 = arena_halves(ar, BT * D);
        h->mod1 = arena_halves(ar, BT * D);
        h->qkv = arena_halves(ar, BT * 3 * D);
        h->probs = arena_halves(ar, B * H * T * T);
        h->attn = arena_halves(ar, BT * D);
        h->attn_proj = arena_halves(ar, BT * D);
        h->ln2 = arena_halves(ar, BT * D);
        h->mod2 = arena_halves(ar, BT * D);
        h->fc1 = arena_halves(ar, BT * F);
        h->gelu = arena_halves(ar, BT * F);
        h->fc2 = arena_halves(ar, BT * D);
    }
    a->final_ada = arena_floats(ar, B * 2 * D);
    a->final_mean = arena_floats(ar, BT);
    a->final_rstd = arena_floats(ar, BT);
    a->final_ln_h = arena_halves(ar, BT * D);
    a->final_mod_h = arena_halves(ar, BT * D);
    a->final_tokens = arena_floats(ar, BT * PPC);
    a->w_d0 = arena_floats(ar, BT * D);
    a->w_d1 = arena_floats(ar, BT * D);
    a->w_3d = arena_floats(ar, BT * 3 * D);
    a->w_probs = arena_floats(ar, B * H * T * T);
    a->w_f0 = arena_floats(ar, BT * F);
    a->w_f1 = arena_floats(ar, BT * F);
    layout_backward_scratch(m, ar);
    m->activation_bytes = ar->used - activations_start;
}

/* Places every buffer; called once measuring and once placing (see arena.h). */
static void layout(dit_model *m, arena *ar) {
    const dit_shape *s = &m->shape;
    struct dit_activations *a = m->act;
    const size_t B = (size_t)m->max_batch, T = (size_t)m->tokens, D = (size_t)s->hidden_size;
    const size_t F = (size_t)s->mlp_hidden, H = (size_t)s->num_heads;
    const size_t PPC = (size_t)s->patch_size * s->patch_size * s->in_channels;
    const size_t BT = B * T;
    m->params = arena_floats(ar, m->table.trainable_numel);
    m->grads = arena_floats(ar, m->table.trainable_numel);
    m->fixed = arena_floats(ar, m->table.fixed_numel);
    if (m->precision != PRECISION_FP32) {
        m->compute_params = arena_floats(ar, m->table.trainable_numel);
        layout_16bit(m, ar);
        return;
    }
    size_t activations_start = ar->used;
    a->labels = arena_ints(ar, B);
    a->patches = arena_floats(ar, BT * PPC);
    for (int l = 0; l <= s->depth; l++) a->residual[l] = arena_floats(ar, BT * D);
    a->t_freq = arena_floats(ar, B * DIT_FREQUENCY_EMBEDDING_SIZE);
    a->t_hidden = arena_floats(ar, B * D);
    a->t_hidden_act = arena_floats(ar, B * D);
    a->cond = arena_floats(ar, B * D);
    a->y_emb = arena_floats(ar, B * D);
    a->cond_act = arena_floats(ar, B * D);
    for (int l = 0; l < s->depth; l++) {
        dit_block_activations *k = &a->blocks[l];
        k->ln1 = arena_floats(ar, BT * D);
        k->ln1_mean = arena_floats(ar, BT);
        k->ln1_rstd = arena_floats(ar, BT);
        k->mod1 = arena_floats(ar, BT * D);
        k->qkv = arena_floats(ar, BT * 3 * D);
        k->probs = arena_floats(ar, B * H * T * T);
        k->attn = arena_floats(ar, BT * D);
        k->attn_proj = arena_floats(ar, BT * D);
        k->x_mid = arena_floats(ar, BT * D);
        k->ln2 = arena_floats(ar, BT * D);
        k->ln2_mean = arena_floats(ar, BT);
        k->ln2_rstd = arena_floats(ar, BT);
        k->mod2 = arena_floats(ar, BT * D);
        k->fc1 = arena_floats(ar, BT * F);
        k->gelu = arena_floats(ar, BT * F);
        k->fc2 = arena_floats(ar, BT * D);
        k->ada = arena_floats(ar, B * 6 * D);
    }
    a->final_ada = arena_floats(ar, B * 2 * D);
    a->final_ln = arena_floats(ar, BT * D);
    a->final_mean = arena_floats(ar, BT);
    a->final_rstd = arena_floats(ar, BT);
    a->final_mod = arena_floats(ar, BT * D);
    a->final_tokens = arena_floats(ar, BT * PPC);
    layout_backward_scratch(m, ar);
    m->activation_bytes = ar->used - activations_start;
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
    m->act = xcalloc(1, sizeof(*m->act));
    m->act->blocks = xcalloc((size_t)shape->depth, sizeof(dit_block_activations));
    m->act->block_params = xcalloc((size_t)shape->depth, sizeof(dit_block_params));
    m->act->residual = xcalloc((size_t)shape->depth + 1, sizeof(float *));
    m->act->stored = xcalloc((size_t)shape->depth, sizeof(dit_block_stored));
    param_table_init(&m->table);
    build_table(m);

    arena ar;
    arena_begin_measure(&ar);
    layout(m, &ar);
    arena_begin_place(&ar, ar.used);
    layout(m, &ar);
    m->memory = ar.base;
    m->memory_bytes = ar.capacity;
    if (precision == PRECISION_FP32) m->compute_params = m->params;
    param_table_bind(&m->table, m->params, m->grads, m->fixed);
    pos_embed_2d_sincos(m->table.entries[m->act->pos_embed].data, shape->hidden_size, grid);
}

void dit_destroy(dit_model *m) {
    if (m->act) {
        free(m->act->blocks);
        free(m->act->block_params);
        free(m->act->residual);
        free(m->act->stored);
        free(m->act);
    }
    param_table_free(&m->table);
    free(m->memory);
    memset(m, 0, sizeof(*m));
}

void dit_zero_grad(dit_model *m) { memset(m->grads, 0, sizeof(float) * m->table.trainable_numel); }

static float *P(dit_model *m, int index) { return m->table.entries[index].data; }
static float *G(dit_model *m, int index) { return m->table.entries[index].grad; }

void dit_init_weights(dit_model *m, uint64_t seed) {
    struct dit_activations *a = m->act;
    memset(m->params, 0, sizeof(float) * m->table.trainable_numel);
    for (int i = 0; i < m->table.count; i++) {
        param_entry *e = &m->table.entries[i];
        if (!e->trainable || e->ndim < 2) continue; /* biases start at zero */
        /* Each tensor's values depend only on (seed, its index), not on the others. */
        rng_stream rng = rng_stream_for(seed, 0x696e6974 /* "init" */, (uint64_t)i);
        const bool guidance = m->shape.guidance_input;
        bool label_or_time = i == a->y_table || i == a->t0_weight || i == a->t2_weight || (guidance && i == a->w0_weight);
        bool zero_init = i == a->final_weight || i == a->final_ada_weight || (guidance && i == a->w2_weight);
        for (int l = 0; l < m->shape.depth; l++) zero_init |= i == a->block_params[l].ada_weight;
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

/* ---- bf16 / fp16 (see dit.h) ---- */

/* The rounded parameter a GEMM reads. */
static float *W(dit_model *m, int index) { return m->compute_params + m->table.entries[index].offset; }

/* An activation that is a GEMM input or kept: rounded in place (and stored, when kept). */
static void round_in_place(const dit_model *m, float *x, size_t n) { precision_round_array(m->precision, x, n); }
static void store(const dit_model *m, uint16_t *kept, float *x, size_t n) { precision_store(m->precision, kept, x, n); }
static const float *load(const dit_model *m, float *x, const uint16_t *kept, size_t n) {
    precision_load(m->precision, x, kept, n);
    return x;
}

/* ---- embedders of a scalar per sample: the timestep, and the guidance input
 * (dit_shape.guidance_input): MLP(freq(value)), in the model's precision ---- */

typedef struct {
    float *freq, *hidden, *hidden_act; /* (B, E), (B, D) before and after SiLU */
    int w0, b0, w2, b2;                /* parameter indices of mlp.0 and mlp.2 */
} scalar_embedder;

static scalar_embedder timestep_embedder(const struct dit_activations *a) {
    return (scalar_embedder){a->t_freq, a->t_hidden, a->t_hidden_act, a->t0_weight, a->t0_bias, a->t2_weight, a->t2_bias};
}

static scalar_embedder guidance_embedder(const struct dit_activations *a) {
    return (scalar_embedder){a->w_freq, a->w_hidden, a->w_hidden_act, a->w0_weight, a->w0_bias, a->w2_weight, a->w2_bias};
}

/* out (B, D) = MLP(freq(values (B))), every GEMM input and output rounded. */
static void scalar_embedder_forward(dit_model *m, scalar_embedder e, const float *values, float *out, int B) {
    const int D = m->shape.hidden_size, E = DIT_FREQUENCY_EMBEDDING_SIZE;
    timestep_embedding_forward(e.freq, values, B, E);
    round_in_place(m, e.freq, (size_t)B * E);
    linear_forward_precision(e.hidden, e.freq, W(m, e.w0), W(m, e.b0), B, E, D, m->precision);
    round_in_place(m, e.hidden, (size_t)B * D);
    silu_forward(e.hidden_act, e.hidden, (size_t)B * D);
    round_in_place(m, e.hidden_act, (size_t)B * D);
    linear_forward_precision(out, e.hidden_act, W(m, e.w2), W(m, e.b2), B, D, D, m->precision);
    round_in_place(m, out, (size_t)B * D);
}

/* The MLP's gradients from d_out (B, D), already rounded where 16-bit, with
 * d_hidden (B, D) as scratch. */
static void scalar_embedder_backward(dit_model *m, scalar_embedder e, const float *d_out, float *d_hidden, int B) {
    const int D = m->shape.hidden_size, E = DIT_FREQUENCY_EMBEDDING_SIZE;
    linear_backward_precision(d_hidden, 0.0f, G(m, e.w2), G(m, e.b2), d_out, e.hidden_act, W(m, e.w2), B, D, D,
                              m->precision);
    silu_backward(d_hidden, d_hidden, e.hidden, (size_t)B * D);
    round_in_place(m, d_hidden, (size_t)B * D);
    linear_backward_precision(NULL, 0.0f, G(m, e.w0), G(m, e.b0), d_hidden, e.freq, W(m, e.w0), B, E, D, m->precision);
}

/* cond (B, D) += the guidance embedding of DIT_GUIDANCE_EMBEDDING_SCALE * w, w (B). */
static void guidance_forward(dit_model *m, const float *guidance, int B) {
    struct dit_activations *a = m->act;
    for (int b = 0; b < B; b++) a->w_scaled[b] = DIT_GUIDANCE_EMBEDDING_SCALE * guidance[b];
    scalar_embedder_forward(m, guidance_embedder(a), a->w_scaled, a->w_emb, B);
    add_forward(a->cond, a->cond, a->w_emb, (size_t)B * m->shape.hidden_size);
}

static void dit_forward_16bit(dit_model *m, const float *x, const float *t, const float *guidance, int batch,
                              float *out) {
    const dit_shape *s = &m->shape;
    struct dit_activations *a = m->act;
    const int B = batch, T = m->tokens, D = s->hidden_size, F = s->mlp_hidden, H = s->num_heads;
    const int C = s->in_channels, Pz = s->patch_size, PPC = Pz * Pz * C, BT = B * T;
    const size_t nD = (size_t)BT * D, nF = (size_t)BT * F, nP = (size_t)B * H * T * T;
    /* The weights in the format, from the current master weights. */
    memcpy(m->compute_params, m->params, sizeof(float) * m->table.trainable_numel);
    round_in_place(m, m->compute_params, m->table.trainable_numel);

    /* patch embedding (rounded like every linear output) + fixed position embedding, in fp32 */
    patchify_forward(a->patches, x, B, C, s->input_size, Pz);
    round_in_place(m, a->patches, (size_t)BT * PPC);
    linear_forward_precision(a->x_run, a->patches, W(m, a->x_weight), W(m, a->x_bias), BT, PPC, D, m->precision);
    round_in_place(m, a->x_run, nD);
    for (int b = 0; b < B; b++)
        add_forward(a->x_run + (size_t)b * T * D, a->x_run + (size_t)b * T * D, P(m, a->pos_embed), (size_t)T * D);

    /* conditioning (B rows: kept in fp32 buffers, rounded where a GEMM reads them) */
    scalar_embedder_forward(m, timestep_embedder(a), t, a->cond, B);
    embedding_forward(a->y_emb, P(m, a->y_table), a->labels, B, D); /* a lookup, not a GEMM: fp32 table */
    add_forward(a->cond, a->cond, a->y_emb, (size_t)B * D);
    if (guidance) guidance_forward(m, guidance, B);
    silu_forward(a->cond_act, a->cond, (size_t)B * D);
    round_in_place(m, a->cond_act, (size_t)B * D);

    for (int l = 0; l < s->depth; l++) {
        dit_block_activations *k = &a->blocks[l];
        dit_block_stored *h = &a->stored[l];
        const dit_block_params *bp = &a->block_params[l];
        const int S6 = 6 * D;
        linear_forward_precision(k->ada, a->cond_act, W(m, bp->ada_weight), W(m, bp->ada_bias), B, D, S6, m->precision);
        round_in_place(m, k->ada, (size_t)B * S6);
        /* attention branch */
        layernorm_forward(a->w_d0, k->ln1_mean, k->ln1_rstd, a->x_run, BT, D, DIT_LAYERNORM_EPS);
        store(m, h->ln1, a->w_d0, nD);
        modulate_forward(a->w_d1, a->w_d0, k->ada + 0 * D, k->ada + 1 * D, S6, B, T, D);
        store(m, h->mod1, a->w_d1, nD);
        linear_forward_precision(a->w_3d, a->w_d1, W(m, bp->qkv_weight), W(m, bp->qkv_bias), BT, D, 3 * D,
                                 m->precision);
        store(m, h->qkv, a->w_3d, 3 * nD);
        attention_forward_precision(a->w_d0, a->w_probs, a->w_3d, B, T, H, D / H, m->precision);
        store(m, h->probs, a->w_probs, nP);
        store(m, h->attn, a->w_d0, nD);
        linear_forward_precision(a->w_d1, a->w_d0, W(m, bp->proj_weight), W(m, bp->proj_bias), BT, D, D, m->precision);
        store(m, h->attn_proj, a->w_d1, nD);
        gated_residual_forward(a->x_run, a->w_d1, k->ada + 2 * D, S6, B, T, D);
        /* MLP branch */
        layernorm_forward(a->w_d0, k->ln2_mean, k->ln2_rstd, a->x_run, BT, D, DIT_LAYERNORM_EPS);
        store(m, h->ln2, a->w_d0, nD);
        modulate_forward(a->w_d1, a->w_d0, k->ada + 3 * D, k->ada + 4 * D, S6, B, T, D);
        store(m, h->mod2, a->w_d1, nD);
        linear_forward_precision(a->w_f0, a->w_d1, W(m, bp->fc1_weight), W(m, bp->fc1_bias), BT, D, F, m->precision);
        store(m, h->fc1, a->w_f0, nF);
        gelu_tanh_forward(a->w_f1, a->w_f0, nF);
        store(m, h->gelu, a->w_f1, nF);
        linear_forward_precision(a->w_d0, a->w_f1, W(m, bp->fc2_weight), W(m, bp->fc2_bias), BT, F, D, m->precision);
        store(m, h->fc2, a->w_d0, nD);
        gated_residual_forward(a->x_run, a->w_d0, k->ada + 5 * D, S6, B, T, D);
    }

    /* final layer */
    linear_forward_precision(a->final_ada, a->cond_act, W(m, a->final_ada_weight), W(m, a->final_ada_bias), B, D,
                             2 * D, m->precision);
    round_in_place(m, a->final_ada, (size_t)B * 2 * D);
    layernorm_forward(a->w_d0, a->final_mean, a->final_rstd, a->x_run, BT, D, DIT_LAYERNORM_EPS);
    store(m, a->final_ln_h, a->w_d0, nD);
    modulate_forward(a->w_d1, a->w_d0, a->final_ada, a->final_ada + D, 2 * D, B, T, D);
    store(m, a->final_mod_h, a->w_d1, nD);
    linear_forward_precision(a->final_tokens, a->w_d1, W(m, a->final_weight), W(m, a->final_bias), BT, D, PPC,
                             m->precision);
    round_in_place(m, a->final_tokens, (size_t)BT * PPC);
    unpatchify_forward(out, a->final_tokens, B, C, s->input_size, Pz);
}

/* Activation gradients are rounded where a GEMM reads them (in fp16 a scaled
 * gradient beyond 65504 becomes infinite there: the overflow loss scaling looks for). */
static void dit_backward_16bit(dit_model *m, const float *d_out, float *d_x, int batch) {
    const dit_shape *s = &m->shape;
    struct dit_activations *a = m->act;
    const int B = batch, T = m->tokens, D = s->hidden_size, F = s->mlp_hidden, H = s->num_heads;
    const int C = s->in_channels, Pz = s->patch_size, PPC = Pz * Pz * C, BT = B * T;
    const size_t nD = (size_t)BT * D, nF = (size_t)BT * F, nP = (size_t)B * H * T * T;

    /* final layer */
    unpatchify_backward(a->d_tokens, d_out, B, C, s->input_size, Pz);
    round_in_place(m, a->d_tokens, (size_t)BT * PPC);
    linear_backward_precision(a->d_a, 0.0f, G(m, a->final_weight), G(m, a->final_bias), a->d_tokens,
                              load(m, a->w_d1, a->final_mod_h, nD), W(m, a->final_weight), BT, D, PPC, m->precision);
    memset(a->d_ada, 0, sizeof(float) * (size_t)B * 2 * D);
    const float *final_ln = load(m, a->w_d0, a->final_ln_h, nD);
    modulate_backward(a->d_b, a->d_ada, a->d_ada + D, a->d_a, final_ln, a->final_ada + D, 2 * D, B, T, D);
    layernorm_backward_normalized(a->d_residual, 0.0f, a->d_b, final_ln, a->final_rstd, BT, D);
    round_in_place(m, a->d_ada, (size_t)B * 2 * D);
    linear_backward_precision(a->d_cond_act, 0.0f, G(m, a->final_ada_weight), G(m, a->final_ada_bias), a->d_ada,
                              a->cond_act, W(m, a->final_ada_weight), B, D, 2 * D, m->precision);

    for (int l = s->depth - 1; l >= 0; l--) {
        dit_block_activations *k = &a->blocks[l];
        const dit_block_stored *h = &a->stored[l];
        const dit_block_params *bp = &a->block_params[l];
        const int S6 = 6 * D;
        memset(a->d_ada, 0, sizeof(float) * (size_t)B * S6);
        /* MLP branch */
        gated_residual_backward(a->d_a, a->d_ada + 5 * D, a->d_residual, load(m, a->w_d0, h->fc2, nD),
                                k->ada + 5 * D, S6, B, T, D);
        round_in_place(m, a->d_a, nD);
        linear_backward_precision(a->d_hidden, 0.0f, G(m, bp->fc2_weight), G(m, bp->fc2_bias), a->d_a,
                                  load(m, a->w_f1, h->gelu, nF), W(m, bp->fc2_weight), BT, F, D, m->precision);
        gelu_tanh_backward(a->d_hidden, a->d_hidden, load(m, a->w_f0, h->fc1, nF), nF);
        round_in_place(m, a->d_hidden, nF);
        linear_backward_precision(a->d_b, 0.0f, G(m, bp->fc1_weight), G(m, bp->fc1_bias), a->d_hidden,
                                  load(m, a->w_d0, h->mod2, nD), W(m, bp->fc1_weight), BT, D, F, m->precision);
        const float *ln2 = load(m, a->w_d1, h->ln2, nD);
        modulate_backward(a->d_a, a->d_ada + 3 * D, a->d_ada + 4 * D, a->d_b, ln2, k->ada + 4 * D, S6, B, T, D);
        layernorm_backward_normalized(a->d_residual, 1.0f, a->d_a, ln2, k->ln2_rstd, BT, D);
        /* attention branch */
        gated_residual_backward(a->d_a, a->d_ada + 2 * D, a->d_residual, load(m, a->w_d0, h->attn_proj, nD),
                                k->ada + 2 * D, S6, B, T, D);
        round_in_place(m, a->d_a, nD);
        linear_backward_precision(a->d_b, 0.0f, G(m, bp->proj_weight), G(m, bp->proj_bias), a->d_a,
                                  load(m, a->w_d1, h->attn, nD), W(m, bp->proj_weight), BT, D, D, m->precision);
        round_in_place(m, a->d_b, nD);
        attention_backward_precision(a->d_qkv, a->d_scores, a->d_b, load(m, a->w_3d, h->qkv, 3 * nD),
                                     load(m, a->w_probs, h->probs, nP), B, T, H, D / H, m->precision);
        round_in_place(m, a->d_qkv, 3 * nD);
        linear_backward_precision(a->d_a, 0.0f, G(m, bp->qkv_weight), G(m, bp->qkv_bias), a->d_qkv,
                                  load(m, a->w_d0, h->mod1, nD), W(m, bp->qkv_weight), BT, D, 3 * D, m->precision);
        const float *ln1 = load(m, a->w_d1, h->ln1, nD);
        modulate_backward(a->d_b, a->d_ada + 0 * D, a->d_ada + 1 * D, a->d_a, ln1, k->ada + 1 * D, S6, B, T, D);
        layernorm_backward_normalized(a->d_residual, 1.0f, a->d_b, ln1, k->ln1_rstd, BT, D);
        round_in_place(m, a->d_ada, (size_t)B * S6);
        linear_backward_precision(a->d_cond_act, 1.0f, G(m, bp->ada_weight), G(m, bp->ada_bias), a->d_ada, a->cond_act,
                                  W(m, bp->ada_weight), B, D, S6, m->precision);
    }

    /* conditioning */
    silu_backward(a->d_cond, a->d_cond_act, a->cond, (size_t)B * D);
    round_in_place(m, a->d_cond, (size_t)B * D);
    embedding_backward(G(m, a->y_table), a->d_cond, a->labels, B, D);
    if (s->guidance_input) scalar_embedder_backward(m, guidance_embedder(a), a->d_cond, a->d_t_hidden, B);
    scalar_embedder_backward(m, timestep_embedder(a), a->d_cond, a->d_t_hidden, B);

    /* patch embedding */
    round_in_place(m, a->d_residual, nD);
    linear_backward_precision(d_x ? a->d_patches : NULL, 0.0f, G(m, a->x_weight), G(m, a->x_bias), a->d_residual,
                              a->patches, W(m, a->x_weight), BT, PPC, D, m->precision);
    if (d_x) patchify_backward(d_x, a->d_patches, B, C, s->input_size, Pz);
}

void dit_forward(dit_model *m, const float *x, const float *t, const int *y, int batch, float *out) {
    dit_forward_guided(m, x, t, y, NULL, batch, out);
}

void dit_forward_guided(dit_model *m, const float *x, const float *t, const int *y, const float *guidance, int batch,
                        float *out) {
    const dit_shape *s = &m->shape;
    struct dit_activations *a = m->act;
    if (batch < 1 || batch > m->max_batch)
        fatal_internal("dit_forward: batch %d outside [1, %d]", batch, m->max_batch);
    if (!s->guidance_input != !guidance)
        fatal_internal("dit_forward: a model %s a guidance input was given %s", s->guidance_input ? "with" : "without",
                       guidance ? "guidance scales" : "none");
    const int B = batch, T = m->tokens, D = s->hidden_size, F = s->mlp_hidden, H = s->num_heads;
    const int C = s->in_channels, Pz = s->patch_size, PPC = Pz * Pz * C, BT = B * T;
    const int E = DIT_FREQUENCY_EMBEDDING_SIZE;
    for (int b = 0; b < B; b++) {
        if (y[b] < 0 || y[b] > s->num_classes)
            fatal_input("class label %d outside [0, %d] (%d is the null class)", y[b], s->num_classes,
                        s->num_classes);
        a->labels[b] = y[b];
    }
    if (m->precision != PRECISION_FP32) {
        dit_forward_16bit(m, x, t, guidance, batch, out);
        return;
    }

    /* patch embedding + fixed position embedding */
    patchify_forward(a->patches, x, B, C, s->input_size, Pz);
    linear_forward(a->residual[0], a->patches, P(m, a->x_weight), P(m, a->x_bias), BT, PPC, D);
    for (int b = 0; b < B; b++) add_forward(a->residual[0] + (size_t)b * T * D, a->residual[0] + (size_t)b * T * D,
                                            P(m, a->pos_embed), (size_t)T * D);

    /* conditioning: c = MLP(freq(t)) + table[y]; every adaLN sees SiLU(c) */
    timestep_embedding_forward(a->t_freq, t, B, E);
    linear_forward(a->t_hidden, a->t_freq, P(m, a->t0_weight), P(m, a->t0_bias), B, E, D);
    silu_forward(a->t_hidden_act, a->t_hidden, (size_t)B * D);
    linear_forward(a->cond, a->t_hidden_act, P(m, a->t2_weight), P(m, a->t2_bias), B, D, D);
    embedding_forward(a->y_emb, P(m, a->y_table), a->labels, B, D);
    add_forward(a->cond, a->cond, a->y_emb, (size_t)B * D);
    if (guidance) guidance_forward(m, guidance, B);
    silu_forward(a->cond_act, a->cond, (size_t)B * D);

    for (int l = 0; l < s->depth; l++) {
        dit_block_activations *k = &a->blocks[l];
        const dit_block_params *bp = &a->block_params[l];
        const float *x_in = a->residual[l];
        float *x_out = a->residual[l + 1];
        const int S6 = 6 * D;
        linear_forward(k->ada, a->cond_act, P(m, bp->ada_weight), P(m, bp->ada_bias), B, D, S6);
        /* attention branch: x_mid = x + gate_msa * proj(attn(modulate(LN(x)))) */
        layernorm_forward(k->ln1, k->ln1_mean, k->ln1_rstd, x_in, BT, D, DIT_LAYERNORM_EPS);
        modulate_forward(k->mod1, k->ln1, k->ada + 0 * D, k->ada + 1 * D, S6, B, T, D);
        linear_forward(k->qkv, k->mod1, P(m, bp->qkv_weight), P(m, bp->qkv_bias), BT, D, 3 * D);
        attention_forward(k->attn, k->probs, k->qkv, B, T, H, D / H);
        linear_forward(k->attn_proj, k->attn, P(m, bp->proj_weight), P(m, bp->proj_bias), BT, D, D);
        memcpy(k->x_mid, x_in, sizeof(float) * (size_t)BT * D);
        gated_residual_forward(k->x_mid, k->attn_proj, k->ada + 2 * D, S6, B, T, D);
        /* MLP branch: x_out = x_mid + gate_mlp * fc2(GELU(fc1(modulate(LN(x_mid))))) */
        layernorm_forward(k->ln2, k->ln2_mean, k->ln2_rstd, k->x_mid, BT, D, DIT_LAYERNORM_EPS);
        modulate_forward(k->mod2, k->ln2, k->ada + 3 * D, k->ada + 4 * D, S6, B, T, D);
        linear_forward(k->fc1, k->mod2, P(m, bp->fc1_weight), P(m, bp->fc1_bias), BT, D, F);
        gelu_tanh_forward(k->gelu, k->fc1, (size_t)BT * F);
        linear_forward(k->fc2, k->gelu, P(m, bp->fc2_weight), P(m, bp->fc2_bias), BT, F, D);
        memcpy(x_out, k->x_mid, sizeof(float) * (size_t)BT * D);
        gated_residual_forward(x_out, k->fc2, k->ada + 5 * D, S6, B, T, D);
    }

    /* final layer: linear(modulate(LN(x), shift, scale)), then back to an image */
    linear_forward(a->final_ada, a->cond_act, P(m, a->final_ada_weight), P(m, a->final_ada_bias), B, D, 2 * D);
    layernorm_forward(a->final_ln, a->final_mean, a->final_rstd, a->residual[s->depth], BT, D, DIT_LAYERNORM_EPS);
    modulate_forward(a->final_mod, a->final_ln, a->final_ada, a->final_ada + D, 2 * D, B, T, D);
    linear_forward(a->final_tokens, a->final_mod, P(m, a->final_weight), P(m, a->final_bias), BT, D, PPC);
    unpatchify_forward(out, a->final_tokens, B, C, s->input_size, Pz);
}

void dit_backward(dit_model *m, const float *d_out, float *d_x, int batch) {
    const dit_shape *s = &m->shape;
    struct dit_activations *a = m->act;
    const int B = batch, T = m->tokens, D = s->hidden_size, F = s->mlp_hidden, H = s->num_heads;
    const int C = s->in_channels, Pz = s->patch_size, PPC = Pz * Pz * C, BT = B * T;
    const int E = DIT_FREQUENCY_EMBEDDING_SIZE;
    if (m->precision != PRECISION_FP32) {
        dit_backward_16bit(m, d_out, d_x, batch);
        return;
    }

    /* final layer */
    unpatchify_backward(a->d_tokens, d_out, B, C, s->input_size, Pz);
    linear_backward(a->d_a, 0.0f, G(m, a->final_weight), G(m, a->final_bias), a->d_tokens, a->final_mod,
                    P(m, a->final_weight), BT, D, PPC);
    memset(a->d_ada, 0, sizeof(float) * (size_t)B * 2 * D);
    modulate_backward(a->d_b, a->d_ada, a->d_ada + D, a->d_a, a->final_ln, a->final_ada + D, 2 * D, B, T, D);
    layernorm_backward(a->d_residual, 0.0f, a->d_b, a->residual[s->depth], a->final_mean, a->final_rstd, BT, D);
    linear_backward(a->d_cond_act, 0.0f, G(m, a->final_ada_weight), G(m, a->final_ada_bias), a->d_ada,
                    a->cond_act, P(m, a->final_ada_weight), B, D, 2 * D);

    for (int l = s->depth - 1; l >= 0; l--) {
        dit_block_activations *k = &a->blocks[l];
        const dit_block_params *bp = &a->block_params[l];
        const int S6 = 6 * D;
        memset(a->d_ada, 0, sizeof(float) * (size_t)B * S6);
        /* MLP branch; d_residual carries dL/dx_out and, after the LN, dL/dx_mid */
        gated_residual_backward(a->d_a, a->d_ada + 5 * D, a->d_residual, k->fc2, k->ada + 5 * D, S6, B, T, D);
        linear_backward(a->d_hidden, 0.0f, G(m, bp->fc2_weight), G(m, bp->fc2_bias), a->d_a, k->gelu,
                        P(m, bp->fc2_weight), BT, F, D);
        gelu_tanh_backward(a->d_hidden, a->d_hidden, k->fc1, (size_t)BT * F);
        linear_backward(a->d_b, 0.0f, G(m, bp->fc1_weight), G(m, bp->fc1_bias), a->d_hidden, k->mod2,
                        P(m, bp->fc1_weight), BT, D, F);
        modulate_backward(a->d_a, a->d_ada + 3 * D, a->d_ada + 4 * D, a->d_b, k->ln2, k->ada + 4 * D, S6, B, T, D);
        layernorm_backward(a->d_residual, 1.0f, a->d_a, k->x_mid, k->ln2_mean, k->ln2_rstd, BT, D);
        /* attention branch; afterwards d_residual is dL/dx_in */
        gated_residual_backward(a->d_a, a->d_ada + 2 * D, a->d_residual, k->attn_proj, k->ada + 2 * D, S6, B, T, D);
        linear_backward(a->d_b, 0.0f, G(m, bp->proj_weight), G(m, bp->proj_bias), a->d_a, k->attn,
                        P(m, bp->proj_weight), BT, D, D);
        attention_backward(a->d_qkv, a->d_scores, a->d_b, k->qkv, k->probs, B, T, H, D / H);
        linear_backward(a->d_a, 0.0f, G(m, bp->qkv_weight), G(m, bp->qkv_bias), a->d_qkv, k->mod1,
                        P(m, bp->qkv_weight), BT, D, 3 * D);
        modulate_backward(a->d_b, a->d_ada + 0 * D, a->d_ada + 1 * D, a->d_a, k->ln1, k->ada + 1 * D, S6, B, T, D);
        layernorm_backward(a->d_residual, 1.0f, a->d_b, a->residual[l], k->ln1_mean, k->ln1_rstd, BT, D);
        linear_backward(a->d_cond_act, 1.0f, G(m, bp->ada_weight), G(m, bp->ada_bias), a->d_ada, a->cond_act,
                        P(m, bp->ada_weight), B, D, S6);
    }

    /* conditioning */
    silu_backward(a->d_cond, a->d_cond_act, a->cond, (size_t)B * D);
    embedding_backward(G(m, a->y_table), a->d_cond, a->labels, B, D);
    if (s->guidance_input) scalar_embedder_backward(m, guidance_embedder(a), a->d_cond, a->d_t_hidden, B);
    linear_backward(a->d_t_hidden, 0.0f, G(m, a->t2_weight), G(m, a->t2_bias), a->d_cond, a->t_hidden_act,
                    P(m, a->t2_weight), B, D, D);
    silu_backward(a->d_t_hidden, a->d_t_hidden, a->t_hidden, (size_t)B * D);
    linear_backward(NULL, 0.0f, G(m, a->t0_weight), G(m, a->t0_bias), a->d_t_hidden, a->t_freq,
                    P(m, a->t0_weight), B, E, D);

    /* patch embedding (the position embedding is fixed) */
    linear_backward(d_x ? a->d_patches : NULL, 0.0f, G(m, a->x_weight), G(m, a->x_bias), a->d_residual,
                    a->patches, P(m, a->x_weight), BT, PPC, D);
    if (d_x) patchify_backward(d_x, a->d_patches, B, C, s->input_size, Pz);
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

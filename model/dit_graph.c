/* The DiT's compute graph (see dit_graph.h): parameter indices, the one layout of
 * activations and scratch, and forward/backward as the paper draws them, every op
 * through the backend's table. In fp32 every rounding is a no-op.
 *
 * Precision: GEMM inputs in the format (activations rounded where they are made,
 * weights and biases from the backend's rounded copy), fp32 accumulation;
 * LayerNorm statistics, softmax, SiLU/GELU arithmetic and the residual stream in
 * fp32; the activations kept for backward in the format. LayerNorm backward
 * starts from the kept normalized output (layernorm_backward_normalized), so no
 * block keeps its input: in fp32 this gives the bits of recomputing xhat from the
 * input, as (x - mean) * rstd is computed the same way in forward and backward.
 *
 * Notation: B batch, T tokens, D hidden, F mlp hidden, H heads, P patch,
 * C channels, S input size, E = 256 the frequency embedding, PPC = P*P*C. */
#include "dit_graph.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fatal.h"

/* ---- set-up ---- */

/* The table entry of the name (printf-style); the table is dit.c's, so a missing
 * name is a mistake here. */
__attribute__((format(printf, 2, 3))) static int param_index(const param_table *table, const char *fmt, ...) {
    char name[PARAM_NAME_MAX];
    va_list args;
    va_start(args, fmt);
    vsnprintf(name, sizeof(name), fmt, args);
    va_end(args);
    const param_entry *e = param_table_find(table, name);
    if (!e) fatal_internal("DiT: the parameter table has no '%s'", name);
    return (int)(e - table->entries);
}

static dit_scalar_embedder embedder_params(const param_table *table, const char *prefix) {
    dit_scalar_embedder e;
    memset(&e, 0, sizeof(e));
    e.w0 = param_index(table, "%s.mlp.0.weight", prefix);
    e.b0 = param_index(table, "%s.mlp.0.bias", prefix);
    e.w2 = param_index(table, "%s.mlp.2.weight", prefix);
    e.b2 = param_index(table, "%s.mlp.2.bias", prefix);
    return e;
}

void dit_graph_init(dit_graph *g, const dit_shape *shape, int max_batch, ldm_precision precision,
                    const param_table *table, const dit_backend *ops) {
    memset(g, 0, sizeof(*g));
    g->shape = *shape;
    const int grid = shape->input_size / shape->patch_size;
    g->tokens = grid * grid;
    g->max_batch = max_batch;
    g->precision = precision;
    g->ops = ops;
    g->entries = table->entries;
    g->trainable_numel = table->trainable_numel;
    g->blocks = xcalloc((size_t)shape->depth, sizeof(dit_block_activations));
    g->block_params = xcalloc((size_t)shape->depth, sizeof(dit_block_params));
    g->pos_embed = param_index(table, "pos_embed");
    g->x_weight = param_index(table, "x_embedder.proj.weight");
    g->x_bias = param_index(table, "x_embedder.proj.bias");
    g->y_table = param_index(table, "y_embedder.embedding_table.weight");
    g->t_embedder = embedder_params(table, "t_embedder");
    if (shape->guidance_input) g->w_embedder = embedder_params(table, "w_embedder");
    for (int l = 0; l < shape->depth; l++) {
        dit_block_params *b = &g->block_params[l];
        b->qkv_weight = param_index(table, "blocks.%d.attn.qkv.weight", l);
        b->qkv_bias = param_index(table, "blocks.%d.attn.qkv.bias", l);
        b->proj_weight = param_index(table, "blocks.%d.attn.proj.weight", l);
        b->proj_bias = param_index(table, "blocks.%d.attn.proj.bias", l);
        b->fc1_weight = param_index(table, "blocks.%d.mlp.fc1.weight", l);
        b->fc1_bias = param_index(table, "blocks.%d.mlp.fc1.bias", l);
        b->fc2_weight = param_index(table, "blocks.%d.mlp.fc2.weight", l);
        b->fc2_bias = param_index(table, "blocks.%d.mlp.fc2.bias", l);
        b->ada_weight = param_index(table, "blocks.%d.adaLN_modulation.1.weight", l);
        b->ada_bias = param_index(table, "blocks.%d.adaLN_modulation.1.bias", l);
    }
    g->final_weight = param_index(table, "final_layer.linear.weight");
    g->final_bias = param_index(table, "final_layer.linear.bias");
    g->final_ada_weight = param_index(table, "final_layer.adaLN_modulation.1.weight");
    g->final_ada_bias = param_index(table, "final_layer.adaLN_modulation.1.bias");
}

void dit_graph_bind(dit_graph *g, float *params, float *grads, float *fixed, void *backend_state) {
    g->params = params;
    g->grads = grads;
    g->fixed = fixed;
    g->backend_state = backend_state;
}

void dit_graph_free(dit_graph *g) {
    free(g->blocks);
    free(g->block_params);
    memset(g, 0, sizeof(*g));
}

/* ---- layout ---- */

/* A kept tensor of n values whose fp32 work buffer is `work` in bf16/fp16 (one
 * block's shared buffer); in fp32 the kept buffer is its own work buffer. */
static kept_tensor kept_shared(const dit_graph *g, arena *ar, size_t n, float *work) {
    if (g->precision == PRECISION_FP32) {
        float *own = arena_floats(ar, n);
        return (kept_tensor){own, own};
    }
    return (kept_tensor){arena_halves(ar, n), work};
}

/* The same with a work buffer of its own (the small conditioning tensors and the
 * patches, which backward reads while the shared buffers are in other use). */
static kept_tensor kept_own(const dit_graph *g, arena *ar, size_t n) {
    if (g->precision == PRECISION_FP32) return kept_shared(g, ar, n, NULL);
    uint16_t *kept = arena_halves(ar, n);
    return (kept_tensor){kept, arena_floats(ar, n)};
}

static void layout_embedder(const dit_graph *g, arena *ar, dit_scalar_embedder *e) {
    const size_t B = (size_t)g->max_batch, D = (size_t)g->shape.hidden_size;
    e->freq = kept_own(g, ar, B * DIT_FREQUENCY_EMBEDDING_SIZE);
    e->hidden = arena_floats(ar, B * D);
    e->hidden_act = kept_own(g, ar, B * D);
}

static size_t max_size(size_t a, size_t b) { return a > b ? a : b; }

size_t dit_graph_layout(dit_graph *g, arena *ar) {
    const dit_shape *s = &g->shape;
    const size_t start = ar->used;
    const size_t B = (size_t)g->max_batch, T = (size_t)g->tokens, D = (size_t)s->hidden_size;
    const size_t F = (size_t)s->mlp_hidden, H = (size_t)s->num_heads;
    const size_t PPC = (size_t)s->patch_size * s->patch_size * s->in_channels;
    const int fused_attention = g->ops->fused_attention_forward != NULL;
    /* per (sample, head): the probabilities (T, T), or with fused attention a row statistic (T) */
    const size_t nP = B * H * T * (fused_attention ? 1 : T);
    const size_t BT = B * T, nD = BT * D, nF = BT * F;
    const int half = g->precision != PRECISION_FP32;
    if (half) { /* first, so that the kept tensors below can point at them */
        g->w_d0 = arena_floats(ar, nD);
        g->w_d1 = arena_floats(ar, nD);
        g->w_3d = arena_floats(ar, 3 * nD);
        if (!fused_attention) g->w_probs = arena_floats(ar, nP);
        g->w_f0 = arena_floats(ar, nF);
        g->w_f1 = arena_floats(ar, nF);
    }
    g->labels = arena_ints(ar, B);
    g->patches = kept_own(g, ar, BT * PPC);
    g->x_run = arena_floats(ar, nD);
    layout_embedder(g, ar, &g->t_embedder);
    if (s->guidance_input) {
        layout_embedder(g, ar, &g->w_embedder);
        g->w_scaled = arena_floats(ar, B);
        g->w_emb = arena_floats(ar, B * D);
    }
    g->cond = arena_floats(ar, B * D);
    g->y_emb = arena_floats(ar, B * D);
    g->cond_act = kept_own(g, ar, B * D);
    for (int l = 0; l < s->depth; l++) {
        dit_block_activations *k = &g->blocks[l];
        k->ln1_mean = arena_floats(ar, BT);
        k->ln1_rstd = arena_floats(ar, BT);
        k->ln2_mean = arena_floats(ar, BT);
        k->ln2_rstd = arena_floats(ar, BT);
        k->ada = arena_floats(ar, B * 6 * D);
        /* bf16/fp16: which shared buffer each is computed in, as forward uses them */
        k->ln1 = kept_shared(g, ar, nD, g->w_d0);
        k->mod1 = kept_shared(g, ar, nD, g->w_d1);
        k->qkv = kept_shared(g, ar, 3 * nD, g->w_3d);
        if (fused_attention) { /* the log-sum-exp stays fp32 in every precision */
            float *row_lse = arena_floats(ar, nP);
            k->probs = (kept_tensor){row_lse, row_lse};
        } else {
            k->probs = kept_shared(g, ar, nP, g->w_probs);
        }
        k->attn = kept_shared(g, ar, nD, g->w_d0);
        k->attn_proj = kept_shared(g, ar, nD, g->w_d1);
        k->ln2 = kept_shared(g, ar, nD, g->w_d0);
        k->mod2 = kept_shared(g, ar, nD, g->w_d1);
        k->fc1 = kept_shared(g, ar, nF, g->w_f0);
        k->gelu = kept_shared(g, ar, nF, g->w_f1);
        k->fc2 = kept_shared(g, ar, nD, g->w_d0);
    }
    g->final_ada = arena_floats(ar, B * 2 * D);
    g->final_mean = arena_floats(ar, BT);
    g->final_rstd = arena_floats(ar, BT);
    g->final_ln = kept_shared(g, ar, nD, g->w_d0);
    g->final_mod = kept_shared(g, ar, nD, g->w_d1);
    g->final_tokens = arena_floats(ar, BT * PPC);

    g->d_residual = arena_floats(ar, nD);
    g->d_a = arena_floats(ar, nD);
    g->d_b = arena_floats(ar, nD);
    g->d_qkv = arena_floats(ar, 3 * nD);
    g->d_scores = arena_floats(ar, nP);
    g->d_hidden = arena_floats(ar, nF);
    g->d_ada = arena_floats(ar, B * 6 * D);
    g->d_cond_act = arena_floats(ar, B * D);
    g->d_cond = arena_floats(ar, B * D);
    g->d_t_hidden = arena_floats(ar, B * D);
    g->d_tokens = arena_floats(ar, BT * PPC);
    g->d_patches = arena_floats(ar, BT * PPC);
    if (half && g->ops->gemm_reads_bits) {
        g->d_bits = arena_halves(ar, max_size(BT * max_size(max_size(3 * D, F), PPC), B * 6 * D));
        g->d_cond_bits = arena_halves(ar, B * D);
    }
    return ar->used - start;
}

/* ---- parameters and the linear layer ---- */

static size_t offset_of(const dit_graph *g, int index) { return g->entries[index].offset; }
/* The fp32 master value and the gradient. */
static const float *P(const dit_graph *g, int index) { return g->params + offset_of(g, index); }
static float *G(const dit_graph *g, int index) { return g->grads + offset_of(g, index); }

/* out (rows, out_features) = in @ W^T + bias with the model's parameters `weight`, `bias`;
 * rows = samples x sample_rows (1 for the conditioning, the tokens for the rest). */
static void linear(const dit_graph *g, float *out, const void *in, int weight, int bias, int rows, int sample_rows,
                   int in_features, int out_features) {
    g->ops->linear(g, out, in, g->ops->weight(g, weight), g->ops->bias(g, bias), rows, sample_rows, in_features,
                   out_features);
}

/* Its backward: d_in (or NULL) = d_in_beta d_in + d_out @ W; the parameter gradients accumulate. */
static void linear_back(const dit_graph *g, float *d_in, float d_in_beta, int weight, int bias, const void *d_out,
                        const void *in, int rows, int in_features, int out_features) {
    g->ops->linear_backward(g, d_in, d_in_beta, G(g, weight), G(g, bias), d_out, in, g->ops->weight(g, weight), rows,
                            in_features, out_features);
}

/* The backward of modulate (its output's gradient d_out, its input the kept
 * LayerNorm output `normalized`) and then of that LayerNorm, into d_in with
 * d_in_beta; d_shift, d_scale accumulate; d_modulated (rows, dim) is scratch. */
static void modulate_layernorm_back(const dit_graph *g, float *d_in, float d_in_beta, float *d_shift, float *d_scale,
                                    const float *d_out, const float *normalized, const float *rstd,
                                    const float *scale, int mod_stride, int batch, float *d_modulated) {
    const int T = g->tokens, D = g->shape.hidden_size;
    if (g->ops->modulate_layernorm_backward) {
        g->ops->modulate_layernorm_backward(g, d_in, d_in_beta, d_shift, d_scale, d_out, normalized, rstd, scale,
                                            mod_stride, batch, T, D, d_modulated);
        return;
    }
    g->ops->modulate_backward(g, d_modulated, d_shift, d_scale, d_out, normalized, scale, mod_stride, batch, T, D);
    g->ops->layernorm_backward_normalized(g, d_in, d_in_beta, d_modulated, normalized, rstd, batch * T, D);
}

/* Storage in the graph's precision, through the backend. */
static void round_in_place(const dit_graph *g, float *x, size_t n) { g->ops->round(g, x, n); }
static const void *keep(const dit_graph *g, kept_tensor k, size_t n) { return g->ops->keep(g, k, n); }
static const float *load(const dit_graph *g, kept_tensor k, size_t n) { return g->ops->load(g, k, n); }
static const void *kept_operand(const dit_graph *g, kept_tensor k, size_t n) { return g->ops->kept_operand(g, k, n); }
static const void *grad_operand(const dit_graph *g, float *grad, uint16_t *bits, size_t n) {
    return g->ops->grad_operand(g, grad, bits, n);
}

/* ---- the scalar embedders: MLP(freq(value)) ---- */

/* out (B, D) = MLP(freq(values (B))), every GEMM input and output rounded. */
static void scalar_embedder_forward(const dit_graph *g, const dit_scalar_embedder *e, const float *values,
                                    float *out, int B) {
    const int D = g->shape.hidden_size, E = DIT_FREQUENCY_EMBEDDING_SIZE;
    g->ops->timestep_embedding_forward(g, e->freq.work, values, B, E);
    const void *freq = keep(g, e->freq, (size_t)B * E);
    linear(g, e->hidden, freq, e->w0, e->b0, B, 1, E, D);
    round_in_place(g, e->hidden, (size_t)B * D);
    g->ops->silu_forward(g, e->hidden_act.work, e->hidden, (size_t)B * D);
    const void *hidden_act = keep(g, e->hidden_act, (size_t)B * D);
    linear(g, out, hidden_act, e->w2, e->b2, B, 1, D, D);
    round_in_place(g, out, (size_t)B * D);
}

/* The MLP's gradients from d_out (B, D), the GEMM operand of an already rounded
 * gradient, with d_hidden (B, D) as scratch. */
static void scalar_embedder_backward(const dit_graph *g, const dit_scalar_embedder *e, const void *d_out,
                                     float *d_hidden, int B) {
    const int D = g->shape.hidden_size, E = DIT_FREQUENCY_EMBEDDING_SIZE;
    linear_back(g, d_hidden, 0.0f, e->w2, e->b2, d_out, kept_operand(g, e->hidden_act, (size_t)B * D), B, D, D);
    g->ops->silu_backward(g, d_hidden, d_hidden, e->hidden, (size_t)B * D);
    const void *d_hidden_operand = grad_operand(g, d_hidden, g->d_bits, (size_t)B * D);
    linear_back(g, NULL, 0.0f, e->w0, e->b0, d_hidden_operand, kept_operand(g, e->freq, (size_t)B * E), B, E, D);
}

/* ---- forward and backward ---- */

/* Whether the blocks' GELU keeps its slope in the fc1 buffer (dit_graph.h). */
static int gelu_keeps_slope(const dit_graph *g) {
    return g->precision == PRECISION_FP32 && g->ops->gelu_tanh_forward_keep_slope != NULL;
}

static void check_batch(const dit_graph *g, const char *caller, int batch) {
    if (batch < 1 || batch > g->max_batch)
        fatal_internal("%s: batch %d outside [1, %d]", caller, batch, g->max_batch);
}

void dit_graph_forward(dit_graph *g, const char *caller, const float *x, const float *t, const int *y,
                       const float *guidance, int batch, float *out) {
    const dit_shape *s = &g->shape;
    const dit_backend *ops = g->ops;
    check_batch(g, caller, batch);
    if (!s->guidance_input != !guidance)
        fatal_internal("%s: a model %s a guidance input was given %s", caller, s->guidance_input ? "with" : "without",
                       guidance ? "guidance scales" : "none");
    const int B = batch, T = g->tokens, D = s->hidden_size, F = s->mlp_hidden, H = s->num_heads;
    const int C = s->in_channels, Pz = s->patch_size, PPC = Pz * Pz * C, BT = B * T, S6 = 6 * D;
    const size_t nD = (size_t)BT * D, nF = (size_t)BT * F, nP = (size_t)B * H * T * T;
    ops->copy(g, g->labels, y, sizeof(int) * (size_t)B);
    ops->prepare_weights(g);

    /* patch embedding (rounded like every linear output) + fixed position embedding, in fp32 */
    ops->patchify_forward(g, g->patches.work, x, B, C, s->input_size, Pz);
    const void *patches = keep(g, g->patches, (size_t)BT * PPC);
    linear(g, g->x_run, patches, g->x_weight, g->x_bias, BT, T, PPC, D);
    round_in_place(g, g->x_run, nD);
    ops->add_row_broadcast(g, g->x_run, g->fixed + offset_of(g, g->pos_embed), B, T * D);

    /* conditioning: c = MLP(freq(t)) + table[y] (+ MLP(freq(1000 w))); every adaLN sees SiLU(c) */
    scalar_embedder_forward(g, &g->t_embedder, t, g->cond, B);
    ops->embedding_forward(g, g->y_emb, P(g, g->y_table), g->labels, B, D); /* a lookup: the fp32 table */
    ops->add(g, g->cond, g->cond, g->y_emb, (size_t)B * D);
    if (guidance) {
        ops->scale(g, g->w_scaled, guidance, DIT_GUIDANCE_EMBEDDING_SCALE, (size_t)B);
        scalar_embedder_forward(g, &g->w_embedder, g->w_scaled, g->w_emb, B);
        ops->add(g, g->cond, g->cond, g->w_emb, (size_t)B * D);
    }
    ops->silu_forward(g, g->cond_act.work, g->cond, (size_t)B * D);
    const void *cond_act = keep(g, g->cond_act, (size_t)B * D);

    for (int l = 0; l < s->depth; l++) {
        dit_block_activations *k = &g->blocks[l];
        const dit_block_params *bp = &g->block_params[l];
        linear(g, k->ada, cond_act, bp->ada_weight, bp->ada_bias, B, 1, D, S6);
        round_in_place(g, k->ada, (size_t)B * S6);
        /* attention branch: x += gate_msa * proj(attn(modulate(LN(x)))) */
        ops->layernorm_modulate(g, k->mod1.work, k->ln1, k->ln1_mean, k->ln1_rstd, g->x_run, k->ada + 0 * D,
                                k->ada + 1 * D, S6, B, T, D);
        const void *mod1 = keep(g, k->mod1, nD);
        linear(g, k->qkv.work, mod1, bp->qkv_weight, bp->qkv_bias, BT, T, D, 3 * D);
        const void *qkv = keep(g, k->qkv, 3 * nD);
        if (ops->fused_attention_forward) {
            ops->fused_attention_forward(g, k->attn.work, k->probs.work, qkv, B, T, H, D / H);
        } else {
            ops->attention_forward(g, k->attn.work, k->probs.work, k->qkv.work, B, T, H, D / H);
            keep(g, k->probs, nP);
        }
        const void *attn = keep(g, k->attn, nD);
        linear(g, k->attn_proj.work, attn, bp->proj_weight, bp->proj_bias, BT, T, D, D);
        keep(g, k->attn_proj, nD);
        ops->gated_residual_forward(g, g->x_run, k->attn_proj.work, k->ada + 2 * D, S6, B, T, D);
        /* MLP branch: x += gate_mlp * fc2(GELU(fc1(modulate(LN(x))))) */
        ops->layernorm_modulate(g, k->mod2.work, k->ln2, k->ln2_mean, k->ln2_rstd, g->x_run, k->ada + 3 * D,
                                k->ada + 4 * D, S6, B, T, D);
        const void *mod2 = keep(g, k->mod2, nD);
        linear(g, k->fc1.work, mod2, bp->fc1_weight, bp->fc1_bias, BT, T, D, F);
        keep(g, k->fc1, nF);
        if (gelu_keeps_slope(g))
            ops->gelu_tanh_forward_keep_slope(g, k->gelu.work, k->fc1.work, nF); /* fc1 now holds GELU's slope */
        else
            ops->gelu_tanh_forward(g, k->gelu.work, k->fc1.work, nF);
        const void *gelu = keep(g, k->gelu, nF);
        linear(g, k->fc2.work, gelu, bp->fc2_weight, bp->fc2_bias, BT, T, F, D);
        keep(g, k->fc2, nD);
        ops->gated_residual_forward(g, g->x_run, k->fc2.work, k->ada + 5 * D, S6, B, T, D);
    }

    /* final layer: linear(modulate(LN(x), shift, scale)), then back to an image */
    linear(g, g->final_ada, cond_act, g->final_ada_weight, g->final_ada_bias, B, 1, D, 2 * D);
    round_in_place(g, g->final_ada, (size_t)B * 2 * D);
    ops->layernorm_modulate(g, g->final_mod.work, g->final_ln, g->final_mean, g->final_rstd, g->x_run, g->final_ada,
                            g->final_ada + D, 2 * D, B, T, D);
    const void *final_mod = keep(g, g->final_mod, nD);
    linear(g, g->final_tokens, final_mod, g->final_weight, g->final_bias, BT, T, D, PPC);
    round_in_place(g, g->final_tokens, (size_t)BT * PPC);
    ops->unpatchify_forward(g, out, g->final_tokens, B, C, s->input_size, Pz);
}

/* Activation gradients are rounded where a GEMM reads them (in fp16 a scaled
 * gradient beyond 65504 becomes infinite there: the overflow loss scaling looks for). */
void dit_graph_backward(dit_graph *g, const char *caller, const float *d_out, float *d_x, int batch,
                        void (*gradients_ready)(void *context, int stage), void *gradients_ready_context) {
    const dit_shape *s = &g->shape;
    const dit_backend *ops = g->ops;
    check_batch(g, caller, batch);
    const int B = batch, T = g->tokens, D = s->hidden_size, F = s->mlp_hidden, H = s->num_heads;
    const int C = s->in_channels, Pz = s->patch_size, PPC = Pz * Pz * C, BT = B * T, S6 = 6 * D;
    const size_t nD = (size_t)BT * D, nF = (size_t)BT * F, nP = (size_t)B * H * T * T;
    const void *operand; /* the rounded gradient the next GEMM reads */

    /* final layer */
    ops->unpatchify_backward(g, g->d_tokens, d_out, B, C, s->input_size, Pz);
    operand = grad_operand(g, g->d_tokens, g->d_bits, (size_t)BT * PPC);
    linear_back(g, g->d_a, 0.0f, g->final_weight, g->final_bias, operand, kept_operand(g, g->final_mod, nD), BT, D,
                PPC);
    ops->zero(g, g->d_ada, sizeof(float) * (size_t)B * 2 * D);
    const float *final_ln = load(g, g->final_ln, nD);
    modulate_layernorm_back(g, g->d_residual, 0.0f, g->d_ada, g->d_ada + D, g->d_a, final_ln, g->final_rstd,
                            g->final_ada + D, 2 * D, B, g->d_b);
    operand = grad_operand(g, g->d_ada, g->d_bits, (size_t)B * 2 * D);
    linear_back(g, g->d_cond_act, 0.0f, g->final_ada_weight, g->final_ada_bias, operand,
                kept_operand(g, g->cond_act, (size_t)B * D), B, D, 2 * D);
    if (gradients_ready) gradients_ready(gradients_ready_context, s->depth);

    for (int l = s->depth - 1; l >= 0; l--) {
        const dit_block_activations *k = &g->blocks[l];
        const dit_block_params *bp = &g->block_params[l];
        ops->zero(g, g->d_ada, sizeof(float) * (size_t)B * S6);
        /* MLP branch; d_residual carries dL/dx_out and, after the LN, dL/dx_mid */
        ops->gated_residual_backward(g, g->d_a, g->d_ada + 5 * D, g->d_residual, load(g, k->fc2, nD), k->ada + 5 * D,
                                     S6, B, T, D);
        operand = grad_operand(g, g->d_a, g->d_bits, nD);
        if (gelu_keeps_slope(g) && ops->linear_backward_times_slope) {
            ops->linear_backward_times_slope(g, g->d_hidden, load(g, k->fc1, nF), G(g, bp->fc2_weight),
                                             G(g, bp->fc2_bias), operand, kept_operand(g, k->gelu, nF),
                                             ops->weight(g, bp->fc2_weight), BT, F, D);
        } else {
            linear_back(g, g->d_hidden, 0.0f, bp->fc2_weight, bp->fc2_bias, operand, kept_operand(g, k->gelu, nF), BT,
                        F, D);
            if (gelu_keeps_slope(g))
                ops->gelu_tanh_backward_from_slope(g, g->d_hidden, g->d_hidden, load(g, k->fc1, nF), nF);
            else
                ops->gelu_tanh_backward(g, g->d_hidden, g->d_hidden, load(g, k->fc1, nF), nF);
        }
        operand = grad_operand(g, g->d_hidden, g->d_bits, nF);
        linear_back(g, g->d_b, 0.0f, bp->fc1_weight, bp->fc1_bias, operand, kept_operand(g, k->mod2, nD), BT, D, F);
        const float *ln2 = load(g, k->ln2, nD);
        modulate_layernorm_back(g, g->d_residual, 1.0f, g->d_ada + 3 * D, g->d_ada + 4 * D, g->d_b, ln2, k->ln2_rstd,
                                k->ada + 4 * D, S6, B, g->d_a);
        /* attention branch; afterwards d_residual is dL/dx_in */
        ops->gated_residual_backward(g, g->d_a, g->d_ada + 2 * D, g->d_residual, load(g, k->attn_proj, nD),
                                     k->ada + 2 * D, S6, B, T, D);
        operand = grad_operand(g, g->d_a, g->d_bits, nD);
        linear_back(g, g->d_b, 0.0f, bp->proj_weight, bp->proj_bias, operand, kept_operand(g, k->attn, nD), BT, D, D);
        round_in_place(g, g->d_b, nD); /* attention's backward GEMMs read it (as fp32 holding format values) */
        if (ops->fused_attention_backward) {
            ops->fused_attention_backward(g, g->d_qkv, g->d_scores, g->d_b, kept_operand(g, k->qkv, 3 * nD),
                                          kept_operand(g, k->attn, nD), k->probs.work, B, T, H, D / H);
        } else {
            const float *qkv = load(g, k->qkv, 3 * nD);
            const float *probs = load(g, k->probs, nP);
            ops->attention_backward(g, g->d_qkv, g->d_scores, g->d_b, qkv, probs, B, T, H, D / H);
        }
        operand = grad_operand(g, g->d_qkv, g->d_bits, 3 * nD);
        linear_back(g, g->d_a, 0.0f, bp->qkv_weight, bp->qkv_bias, operand, kept_operand(g, k->mod1, nD), BT, D,
                    3 * D);
        const float *ln1 = load(g, k->ln1, nD);
        modulate_layernorm_back(g, g->d_residual, 1.0f, g->d_ada + 0 * D, g->d_ada + 1 * D, g->d_a, ln1, k->ln1_rstd,
                                k->ada + 1 * D, S6, B, g->d_b);
        operand = grad_operand(g, g->d_ada, g->d_bits, (size_t)B * S6);
        linear_back(g, g->d_cond_act, 1.0f, bp->ada_weight, bp->ada_bias, operand,
                    kept_operand(g, g->cond_act, (size_t)B * D), B, D, S6);
        if (gradients_ready) gradients_ready(gradients_ready_context, l);
    }

    /* conditioning (d_cond is rounded once and read by the label table's gradient
     * in fp32 and by both embedders' GEMMs through its operand) */
    ops->silu_backward(g, g->d_cond, g->d_cond_act, g->cond, (size_t)B * D);
    const void *d_cond = grad_operand(g, g->d_cond, g->d_cond_bits, (size_t)B * D);
    ops->embedding_backward(g, G(g, g->y_table), g->d_cond, g->labels, B, D, s->num_classes + 1);
    if (s->guidance_input) scalar_embedder_backward(g, &g->w_embedder, d_cond, g->d_t_hidden, B);
    scalar_embedder_backward(g, &g->t_embedder, d_cond, g->d_t_hidden, B);

    /* patch embedding (the position embedding is fixed) */
    operand = grad_operand(g, g->d_residual, g->d_bits, nD);
    linear_back(g, d_x ? g->d_patches : NULL, 0.0f, g->x_weight, g->x_bias, operand,
                kept_operand(g, g->patches, (size_t)BT * PPC), BT, PPC, D);
    if (d_x) ops->patchify_backward(g, d_x, g->d_patches, B, C, s->input_size, Pz);
    if (gradients_ready) gradients_ready(gradients_ready_context, -1);
}

/* The KL autoencoder's network for every device (see autoencoder_graph.h): the
 * parameter table, the unit list and its layout, the units' forward and backward
 * through the backend's ops, and the training step's bodies.
 *
 * Where the devices' arithmetic differs (each backend's ops, not this file): the
 * CPU sums the loss and the KL in double one value after another, the GPU in one
 * block's fixed tree (same values to double rounding); convolutions, linears and
 * GroupNorm statistics sum in each backend's own order (float rounding); the GPU's
 * expf may differ in the last bit. The order of the ops, and where values are
 * rounded to bf16/fp16, is this file's and so the same on both. */
#include "autoencoder_graph.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fatal.h"

/* ---- the parameter table ---- */

#define ADD(...) param_table_add(t, true, __VA_ARGS__)

static void table_conv(param_table *t, int in, int out, int kernel, const char *prefix, const char *leaf) {
    ADD(4, (int64_t[]){out, in, kernel, kernel}, "%s%s.weight", prefix, leaf);
    ADD(1, (int64_t[]){out}, "%s%s.bias", prefix, leaf);
}

static void table_norm(param_table *t, int channels, const char *prefix, const char *leaf) {
    ADD(1, (int64_t[]){channels}, "%s%s.weight", prefix, leaf);
    ADD(1, (int64_t[]){channels}, "%s%s.bias", prefix, leaf);
}

static void table_resnet(param_table *t, int in, int out, const char *prefix) {
    table_norm(t, in, prefix, ".norm1");
    table_conv(t, in, out, 3, prefix, ".conv1");
    table_norm(t, out, prefix, ".norm2");
    table_conv(t, out, out, 3, prefix, ".conv2");
    if (in != out) table_conv(t, in, out, 1, prefix, ".conv_shortcut");
}

/* diffusers' Attention of the mid block: GroupNorm, to_q/k/v (grouped), to_out.0. */
static void table_attention(param_table *t, int channels, const char *name) {
    const int64_t C = channels;
    table_norm(t, channels, name, ".group_norm");
    ADD(2, (int64_t[]){C, C}, "%s.to_q.weight", name);
    ADD(2, (int64_t[]){C, C}, "%s.to_k.weight", name);
    ADD(2, (int64_t[]){C, C}, "%s.to_v.weight", name);
    ADD(1, (int64_t[]){C}, "%s.to_q.bias", name);
    ADD(1, (int64_t[]){C}, "%s.to_k.bias", name);
    ADD(1, (int64_t[]){C}, "%s.to_v.bias", name);
    ADD(2, (int64_t[]){C, C}, "%s.to_out.0.weight", name);
    ADD(1, (int64_t[]){C}, "%s.to_out.0.bias", name);
}

static void table_mid_block(param_table *t, int channels, const char *half, bool attention) {
    char name[PARAM_NAME_MAX];
    snprintf(name, sizeof name, "%s.mid_block.resnets.0", half);
    table_resnet(t, channels, channels, name);
    if (attention) {
        snprintf(name, sizeof name, "%s.mid_block.attentions.0", half);
        table_attention(t, channels, name);
    }
    snprintf(name, sizeof name, "%s.mid_block.resnets.1", half);
    table_resnet(t, channels, channels, name);
}
#undef ADD

void ae_graph_build_table(param_table *t, const autoencoder_shape *s) {
    char name[PARAM_NAME_MAX];
    const int L = s->latent_channels, last = s->levels - 1;
    const int *widths = s->block_out_channels;
    param_table_init(t);

    table_conv(t, s->in_channels, widths[0], 3, "encoder.conv_in", "");
    int previous = widths[0];
    for (int i = 0; i < s->levels; i++) {
        for (int j = 0; j < s->layers_per_block; j++) {
            snprintf(name, sizeof name, "encoder.down_blocks.%d.resnets.%d", i, j);
            table_resnet(t, previous, widths[i], name);
            previous = widths[i];
        }
        if (i == last) continue;
        snprintf(name, sizeof name, "encoder.down_blocks.%d.downsamplers.0", i);
        table_conv(t, widths[i], widths[i], 3, name, ".conv");
    }
    table_mid_block(t, widths[last], "encoder", !s->without_mid_attention);
    table_norm(t, widths[last], "encoder", ".conv_norm_out");
    table_conv(t, widths[last], 2 * L, 3, "encoder", ".conv_out");

    table_conv(t, L, widths[last], 3, "decoder", ".conv_in");
    table_mid_block(t, widths[last], "decoder", !s->without_mid_attention);
    previous = widths[last];
    for (int i = 0; i < s->levels; i++) {
        const int width = widths[last - i]; /* the widths reversed */
        for (int j = 0; j <= s->layers_per_block; j++) {
            snprintf(name, sizeof name, "decoder.up_blocks.%d.resnets.%d", i, j);
            table_resnet(t, previous, width, name);
            previous = width;
        }
        if (i == last) continue;
        snprintf(name, sizeof name, "decoder.up_blocks.%d.upsamplers.0", i);
        table_conv(t, width, width, 3, name, ".conv");
    }
    table_norm(t, widths[0], "decoder", ".conv_norm_out");
    table_conv(t, widths[0], s->in_channels, 3, "decoder", ".conv_out");

    table_conv(t, 2 * L, 2 * L, 1, "quant_conv", "");
    table_conv(t, L, L, 1, "post_quant_conv", "");
}

/* ---- the unit list and its layout ---- */

/* Units in a model of `levels` levels with `layers` ResNet blocks per down block and
 * `mid` units in each mid block: the encoder's and the decoder's (one block more per
 * level in the decoder). */
static int encoder_units(int levels, int layers, int mid) { return 1 + levels * layers + (levels - 1) + mid + 1 + 1; }
static int decoder_units(int levels, int layers, int mid) { return 2 + mid + levels * (layers + 1) + (levels - 1) + 1; }

void ae_graph_init(ae_graph *g) {
    const int levels = g->shape.levels, layers = g->shape.layers_per_block;
    const int mid = g->shape.without_mid_attention ? 2 : 3;
    g->encoder_count = g->parts.encoder ? encoder_units(levels, layers, mid) : 0;
    g->unit_count = g->encoder_count + (g->parts.decoder ? decoder_units(levels, layers, mid) : 0);
    g->units = xcalloc((size_t)g->unit_count, sizeof(ae_unit));
}

void ae_graph_free(ae_graph *g) {
    free(g->units);
    g->units = NULL;
}

/* One layout pass: where each buffer goes, the units' shapes and parameters. */
typedef struct {
    ae_graph *g;
    arena *ar;
    const param_table *table;
    int next;         /* units placed */
    int channels, size; /* of the last unit's output (B, channels, size, size) */
    int stream;       /* the stream slot the last unit's output went to (pooled) */
    size_t largest;   /* floats of the largest feature map: a slot */
    size_t scratch;   /* floats of convolution (and attention) scratch */
    size_t attention_channels, attention_tokens;
} builder;

/* A feature map: in its own buffer, or in `slot` when pooled. */
static float *feature(builder *b, size_t count, int slot) {
    if (count > b->largest) b->largest = count;
    return b->g->parts.pooled ? b->g->slot[slot] : arena_floats(b->ar, count);
}

/* A unit's output: alternates between the two stream slots when pooled. */
static float *unit_output(builder *b, size_t count) {
    b->stream ^= 1;
    return feature(b, count, AE_SLOT_STREAM0 + b->stream);
}

static size_t map_floats(const builder *b, int channels, int size) {
    return (size_t)b->g->max_batch * (size_t)channels * (size_t)size * (size_t)size;
}

/* The offset of the tensor named prefix + leaf + suffix, e.g.
 * "decoder.up_blocks.0.resnets.1" ".conv1" ".weight". */
static size_t param_offset(const builder *b, const char *prefix, const char *leaf, const char *suffix) {
    char name[PARAM_NAME_MAX];
    const int length = snprintf(name, sizeof name, "%s%s%s", prefix, leaf, suffix);
    const param_entry *e = length > 0 && (size_t)length < sizeof name ? param_table_find(b->table, name) : NULL;
    if (!e) fatal_internal("autoencoder: the parameter table has no '%s%s%s'", prefix, leaf, suffix);
    return e->offset;
}

static ae_unit *next_unit(builder *b, ae_unit_kind kind) {
    if (b->next >= b->g->unit_count) fatal_internal("autoencoder: more units than planned");
    ae_unit *u = &b->g->units[b->next++];
    memset(u, 0, sizeof(*u));
    u->kind = kind;
    return u;
}

static void set_conv(builder *b, ae_conv *c, const char *prefix, const char *leaf, int in_channels, int out_channels,
                     int size, int kernel, int stride, int pad_before, int pad_after) {
    c->weight = param_offset(b, prefix, leaf, ".weight");
    c->bias = param_offset(b, prefix, leaf, ".bias");
    c->shape = (conv2d_dims){b->g->max_batch, in_channels, out_channels, size, size, kernel, stride,
                             pad_before, pad_after, pad_before, pad_after};
    const size_t scratch = b->g->ops->conv_scratch_floats(&c->shape);
    if (b->g->ops->conv_plan) b->g->ops->conv_plan(b->g, &c->shape);
    if (scratch > b->scratch) b->scratch = scratch;
}

static void set_norm(builder *b, ae_norm *n, const char *prefix, const char *leaf, int channels, int spatial) {
    const size_t statistics = (size_t)b->g->max_batch * (size_t)b->g->shape.norm_groups;
    n->gamma = param_offset(b, prefix, leaf, ".weight");
    n->beta = param_offset(b, prefix, leaf, ".bias");
    n->channels = channels;
    n->spatial = spatial;
    n->mean = arena_floats(b->ar, statistics);
    n->rstd = arena_floats(b->ar, statistics);
}

/* A convolution of the current map to out_channels (stride 2 halves the size). */
static void add_conv(builder *b, const char *prefix, const char *leaf, int out_channels, int kernel, int stride,
                     int pad_before, int pad_after) {
    ae_unit *u = next_unit(b, AE_UNIT_CONV);
    set_conv(b, &u->conv, prefix, leaf, b->channels, out_channels, b->size, kernel, stride, pad_before, pad_after);
    b->channels = out_channels;
    b->size = conv2d_out_height(&u->conv.shape);
    u->out = unit_output(b, map_floats(b, b->channels, b->size));
}

/* GroupNorm, SiLU, 3x3 conv to out_channels. Pooled, its intermediates take the
 * temp slots starting at first_temp, alternating so that no op reads and writes
 * one buffer; its output is the unit's (out NULL) or the other temp slot. */
static void set_stage(builder *b, ae_stage *h, const char *prefix, const char *norm_leaf, const char *conv_leaf,
                      int out_channels, int first_temp, bool unit_out) {
    const int second_temp = first_temp == AE_SLOT_TEMP0 ? AE_SLOT_TEMP1 : AE_SLOT_TEMP0;
    set_norm(b, &h->norm, prefix, norm_leaf, b->channels, b->size * b->size);
    set_conv(b, &h->conv, prefix, conv_leaf, b->channels, out_channels, b->size, 3, 1, 1, 1);
    h->normed = feature(b, map_floats(b, b->channels, b->size), first_temp);
    h->act = feature(b, map_floats(b, b->channels, b->size), second_temp);
    b->channels = out_channels;
    const size_t out = map_floats(b, b->channels, b->size);
    h->out = unit_out ? unit_output(b, out) : feature(b, out, first_temp);
}

static void add_head(builder *b, const char *half, int out_channels) {
    ae_unit *u = next_unit(b, AE_UNIT_HEAD);
    set_stage(b, &u->stage[0], half, ".conv_norm_out", ".conv_out", out_channels, AE_SLOT_TEMP0, true);
    u->out = u->stage[0].out;
}

/* diffusers' ResnetBlock2D without time embedding. */
static void add_resnet(builder *b, const char *name, int out_channels) {
    ae_unit *u = next_unit(b, AE_UNIT_RESNET);
    const int in_channels = b->channels;
    set_stage(b, &u->stage[0], name, ".norm1", ".conv1", out_channels, AE_SLOT_TEMP0, false);
    set_stage(b, &u->stage[1], name, ".norm2", ".conv2", out_channels, AE_SLOT_TEMP1, true);
    u->has_shortcut = in_channels != out_channels;
    if (u->has_shortcut)
        set_conv(b, &u->conv, name, ".conv_shortcut", in_channels, out_channels, b->size, 1, 1, 0, 0);
    u->out = u->stage[1].out;
}

static void add_attention(builder *b, const char *name) {
    ae_unit *u = next_unit(b, AE_UNIT_ATTENTION);
    ae_attention *a = &u->attention;
    const size_t B = (size_t)b->g->max_batch, C = (size_t)b->channels, T = (size_t)b->size * (size_t)b->size;
    a->channels = (int)C;
    a->tokens = (int)T;
    set_norm(b, &a->norm, name, ".group_norm", a->channels, a->tokens);
    a->qkv_weight = param_offset(b, name, ".to_q", ".weight");
    a->qkv_bias = param_offset(b, name, ".to_q", ".bias");
    if (param_offset(b, name, ".to_k", ".weight") != a->qkv_weight + C * C ||
        param_offset(b, name, ".to_v", ".weight") != a->qkv_weight + 2 * C * C ||
        param_offset(b, name, ".to_k", ".bias") != a->qkv_bias + C ||
        param_offset(b, name, ".to_v", ".bias") != a->qkv_bias + 2 * C)
        fatal_internal("autoencoder: %s's q, k, v parameters are not contiguous", name);
    a->out_weight = param_offset(b, name, ".to_out.0", ".weight");
    a->out_bias = param_offset(b, name, ".to_out.0", ".bias");
    a->normed = feature(b, B * C * T, AE_SLOT_TEMP0);
    a->tokens_in = feature(b, B * T * C, AE_SLOT_TEMP1);
    a->qkv = arena_floats(b->ar, B * T * 3 * C);
    a->probs = arena_floats(b->ar, B * T * T);
    a->attn = feature(b, B * T * C, AE_SLOT_TEMP0);
    a->proj = feature(b, B * T * C, AE_SLOT_TEMP1);
    u->out = unit_output(b, B * C * T);
    if (C > b->attention_channels) b->attention_channels = C;
    if (T > b->attention_tokens) b->attention_tokens = T;
    if (b->g->ops->attention_plan) {
        const size_t scratch = b->g->ops->attention_plan(b->g, (int)B, (int)T, (int)C);
        if (scratch > b->scratch) b->scratch = scratch;
    }
}

/* Nearest 2x, then a 3x3 convolution at the new size. */
static void add_upsample(builder *b, const char *name) {
    ae_unit *u = next_unit(b, AE_UNIT_UPSAMPLE);
    b->size *= 2;
    u->upsampled = feature(b, map_floats(b, b->channels, b->size), AE_SLOT_TEMP0);
    set_conv(b, &u->conv, name, ".conv", b->channels, b->channels, b->size, 3, 1, 1, 1);
    u->out = unit_output(b, map_floats(b, b->channels, b->size));
}

static void add_mid_block(builder *b, const char *half) {
    char name[PARAM_NAME_MAX];
    snprintf(name, sizeof name, "%s.mid_block.resnets.0", half);
    add_resnet(b, name, b->channels);
    if (!b->g->shape.without_mid_attention) {
        snprintf(name, sizeof name, "%s.mid_block.attentions.0", half);
        add_attention(b, name);
    }
    snprintf(name, sizeof name, "%s.mid_block.resnets.1", half);
    add_resnet(b, name, b->channels);
}

/* images (B, C, H, W) -> the moments (B, 2L, h, w). */
static void build_encoder(builder *b) {
    const autoencoder_shape *s = &b->g->shape;
    const int last = s->levels - 1;
    char name[PARAM_NAME_MAX];
    b->channels = s->in_channels;
    b->size = s->input_size;
    add_conv(b, "encoder.conv_in", "", s->block_out_channels[0], 3, 1, 1, 1);
    for (int i = 0; i < s->levels; i++) {
        for (int j = 0; j < s->layers_per_block; j++) {
            snprintf(name, sizeof name, "encoder.down_blocks.%d.resnets.%d", i, j);
            add_resnet(b, name, s->block_out_channels[i]);
        }
        if (i == last) continue;
        /* diffusers' Downsample2D: F.pad(x, (0, 1, 0, 1)), then 3x3 stride 2 unpadded */
        snprintf(name, sizeof name, "encoder.down_blocks.%d.downsamplers.0", i);
        add_conv(b, name, ".conv", s->block_out_channels[i], 3, 2, 0, 1);
    }
    add_mid_block(b, "encoder");
    add_head(b, "encoder", 2 * s->latent_channels);
    add_conv(b, "quant_conv", "", 2 * s->latent_channels, 1, 1, 0, 0);
}

/* z (B, L, h, w) -> the reconstruction (B, C, H, W). */
static void build_decoder(builder *b) {
    const autoencoder_shape *s = &b->g->shape;
    const int last = s->levels - 1;
    char name[PARAM_NAME_MAX];
    b->channels = s->latent_channels;
    b->size = b->g->latent_size;
    add_conv(b, "post_quant_conv", "", s->latent_channels, 1, 1, 0, 0);
    add_conv(b, "decoder.conv_in", "", s->block_out_channels[last], 3, 1, 1, 1);
    add_mid_block(b, "decoder");
    for (int i = 0; i < s->levels; i++) {
        for (int j = 0; j <= s->layers_per_block; j++) {
            snprintf(name, sizeof name, "decoder.up_blocks.%d.resnets.%d", i, j);
            add_resnet(b, name, s->block_out_channels[last - i]); /* the widths reversed */
        }
        if (i == last) continue;
        snprintf(name, sizeof name, "decoder.up_blocks.%d.upsamplers.0", i);
        add_upsample(b, name);
    }
    add_head(b, "decoder", s->in_channels);
}

/* One layout pass; returns the largest feature map's floats (the slot size). */
static size_t layout(ae_graph *g, arena *ar, const param_table *table) {
    const size_t N = g->param_count, B = (size_t)g->max_batch;
    const size_t latent = B * (size_t)g->shape.latent_channels * (size_t)g->latent_size * (size_t)g->latent_size;
    const size_t image = B * (size_t)g->shape.in_channels * (size_t)g->shape.input_size * g->shape.input_size;
    const bool training = g->parts.training;
    g->params = arena_floats(ar, N);
    g->grads = training ? arena_floats(ar, N) : NULL;
    g->compute_params = g->precision != PRECISION_FP32 ? arena_floats(ar, N) : g->params;
    for (int k = 0; k < AE_SLOT_COUNT; k++) g->slot[k] = arena_floats(ar, g->slot_floats);

    builder b = {.g = g, .ar = ar, .table = table};
    if (g->parts.encoder) build_encoder(&b);
    if (b.next != g->encoder_count) fatal_internal("autoencoder: %d encoder units, %d planned", b.next, g->encoder_count);
    if (g->parts.decoder) build_decoder(&b);
    if (b.next != g->unit_count) fatal_internal("autoencoder: %d units laid out, %d planned", b.next, g->unit_count);

    if (training) {
        g->images = arena_floats(ar, image);
        g->noise = arena_floats(ar, latent);
        g->mean = arena_floats(ar, latent);
        g->logvar = arena_floats(ar, latent);
        g->z = arena_floats(ar, latent);
        g->d_latent = arena_floats(ar, latent);
        g->sums = (double *)(void *)arena_floats(ar, 2 * 2); /* two doubles from a 64-byte boundary */
        /* The gradients of the reconstruction and of the moments pass through the
         * stream slots: both are feature maps of the forward, so the slots are large enough. */
        const size_t C = b.attention_channels, T = b.attention_tokens;
        g->d_tokens_a = arena_floats(ar, B * T * C);
        g->d_tokens_b = arena_floats(ar, B * T * C);
        g->d_qkv = arena_floats(ar, B * T * 3 * C);
        g->d_scores = arena_floats(ar, B * T * T);
    }
    g->conv_scratch = arena_floats(ar, b.scratch);
    g->conv_scratch_floats = b.scratch;
    return b.largest;
}

size_t ae_graph_measure(ae_graph *g, const param_table *table) {
    arena ar;
    arena_begin_measure(&ar);
    g->slot_floats = 0; /* the slots' size is what this first pass learns */
    g->slot_floats = layout(g, &ar, table);
    arena_begin_measure(&ar);
    layout(g, &ar, table); /* the total, slots included */
    return ar.used;
}

void ae_graph_place(ae_graph *g, arena *ar, const param_table *table) {
    if (layout(g, ar, table) != g->slot_floats) fatal_internal("autoencoder: layout passes disagree");
}

const float *ae_graph_moments(const ae_graph *g) { return g->units[g->encoder_count - 1].out; }
const float *ae_graph_decoded(const ae_graph *g) { return g->units[g->unit_count - 1].out; }

/* ---- the ops with the model's parameters, each output rounded where it is made ---- */

/* The fp32 master value (GroupNorm's affine parameters are read so), the
 * gradient, and a conv or linear parameter as the GEMM reads it (rounded in bf16/fp16). */
static const float *P(const ae_graph *g, size_t offset) { return g->params + offset; }
static float *G(const ae_graph *g, size_t offset) { return g->grads + offset; }
static const float *W(const ae_graph *g, size_t offset) { return g->compute_params + offset; }

static void round_act(const ae_graph *g, float *x, size_t n) { g->ops->round(g, x, n); }

static size_t map_numel(int batch, int channels, int height, int width) {
    return (size_t)batch * (size_t)channels * (size_t)height * (size_t)width;
}

void ae_graph_refresh_weights(const ae_graph *g) {
    if (g->precision == PRECISION_FP32) return;
    g->ops->copy(g, g->compute_params, g->params, g->param_count);
    round_act(g, g->compute_params, g->param_count);
}

static void conv_forward(const ae_graph *g, const ae_conv *c, const float *in, float *out, int batch) {
    conv2d_dims shape = c->shape;
    shape.batch = batch;
    g->ops->conv_forward(g, out, in, W(g, c->weight), W(g, c->bias), &shape);
    round_act(g, out, map_numel(batch, shape.out_channels, conv2d_out_height(&shape), conv2d_out_width(&shape)));
}

/* d_in (or NULL) = d_in_beta d_in + dL/din; the parameter gradients accumulate. */
static void conv_backward(const ae_graph *g, const ae_conv *c, float *d_in, float d_in_beta, const float *d_out,
                          const float *in, int batch) {
    conv2d_dims shape = c->shape;
    shape.batch = batch;
    g->ops->conv_backward(g, d_in, d_in_beta, G(g, c->weight), G(g, c->bias), d_out, in, W(g, c->weight), &shape);
    if (d_in) round_act(g, d_in, map_numel(batch, shape.in_channels, shape.height, shape.width));
}

static size_t norm_numel(const ae_norm *n, int batch) { return (size_t)batch * n->channels * n->spatial; }

static void norm_forward(const ae_graph *g, const ae_norm *n, const float *in, float *out, int batch) {
    g->ops->groupnorm_forward(g, out, n->mean, n->rstd, in, P(g, n->gamma), P(g, n->beta), batch, n->channels,
                              n->spatial);
    round_act(g, out, norm_numel(n, batch));
}

static void norm_backward(const ae_graph *g, const ae_norm *n, float *d_in, float d_in_beta, const float *d_out,
                          const float *in, int batch) {
    g->ops->groupnorm_backward(g, d_in, d_in_beta, G(g, n->gamma), G(g, n->beta), d_out, in, n->mean, n->rstd,
                               P(g, n->gamma), batch, n->channels, n->spatial);
    round_act(g, d_in, norm_numel(n, batch));
}

static void stage_forward(const ae_graph *g, const ae_stage *h, const float *in, int batch) {
    const size_t n = norm_numel(&h->norm, batch);
    norm_forward(g, &h->norm, in, h->normed, batch);
    if (g->parts.training && g->ops->silu_forward_keep_slope)
        g->ops->silu_forward_keep_slope(g, h->act, h->normed, n); /* normed now holds SiLU's slope */
    else
        g->ops->silu_forward(g, h->act, h->normed, n);
    round_act(g, h->act, n);
    conv_forward(g, &h->conv, h->act, h->out, batch);
}

/* d_in = d_in_beta d_in + the gradient through the stage of d_out; scratch holds
 * the gradient between the ops. */
static void stage_backward(const ae_graph *g, const ae_stage *h, const float *in, const float *d_out, float *d_in,
                           float d_in_beta, float *scratch, int batch) {
    const size_t n = norm_numel(&h->norm, batch);
    conv_backward(g, &h->conv, scratch, 0.0f, d_out, h->act, batch);
    if (g->ops->silu_backward_from_slope)
        g->ops->silu_backward_from_slope(g, scratch, scratch, h->normed, n);
    else
        g->ops->silu_backward(g, scratch, scratch, h->normed, n);
    round_act(g, scratch, n);
    norm_backward(g, &h->norm, d_in, d_in_beta, scratch, in, batch);
}

/* ---- the units ---- */

static void attention_forward(const ae_graph *g, const ae_unit *u, const float *in, int batch) {
    const ae_attention *a = &u->attention;
    const int B = batch, T = a->tokens, C = a->channels;
    const size_t n = (size_t)B * T * C;
    norm_forward(g, &a->norm, in, a->normed, batch);
    g->ops->channels_to_tokens(g, a->tokens_in, a->normed, B, C, T);
    g->ops->linear_forward(g, a->qkv, a->tokens_in, W(g, a->qkv_weight), W(g, a->qkv_bias), B * T, T, C, 3 * C);
    round_act(g, a->qkv, 3 * n);
    /* scale 1/sqrt(C): one head of width C */
    g->ops->attention_forward(g, a->attn, a->probs, a->qkv, B, T, C);
    round_act(g, a->attn, n);
    g->ops->linear_forward(g, a->proj, a->attn, W(g, a->out_weight), W(g, a->out_bias), B * T, T, C, C);
    round_act(g, a->proj, n);
    g->ops->tokens_to_channels(g, u->out, a->proj, B, C, T);
    g->ops->add(g, u->out, u->out, in, n);
    round_act(g, u->out, n);
}

static void attention_backward(const ae_graph *g, const ae_unit *u, const float *in, const float *d_out, float *d_in,
                               int batch) {
    const ae_attention *a = &u->attention;
    const int B = batch, T = a->tokens, C = a->channels;
    const size_t n = (size_t)B * T * C;
    g->ops->channels_to_tokens(g, g->d_tokens_a, d_out, B, C, T);
    g->ops->linear_backward(g, g->d_tokens_b, G(g, a->out_weight), G(g, a->out_bias), g->d_tokens_a, a->attn,
                            W(g, a->out_weight), B * T, C, C);
    round_act(g, g->d_tokens_b, n);
    g->ops->attention_backward(g, g->d_qkv, g->d_scores, g->d_tokens_b, a->qkv, a->probs, B, T, C);
    round_act(g, g->d_qkv, 3 * n);
    g->ops->linear_backward(g, g->d_tokens_a, G(g, a->qkv_weight), G(g, a->qkv_bias), g->d_qkv, a->tokens_in,
                            W(g, a->qkv_weight), B * T, C, 3 * C);
    round_act(g, g->d_tokens_a, n);
    float *t0 = g->slot[AE_SLOT_TEMP0];
    g->ops->tokens_to_channels(g, t0, g->d_tokens_a, B, C, T);
    g->ops->copy(g, d_in, d_out, n); /* the residual */
    norm_backward(g, &a->norm, d_in, 1.0f, t0, in, batch);
}

static void unit_forward(const ae_graph *g, const ae_unit *u, const float *in, int batch) {
    switch (u->kind) {
    case AE_UNIT_CONV:
        conv_forward(g, &u->conv, in, u->out, batch);
        break;
    case AE_UNIT_UPSAMPLE: {
        const conv2d_dims *s = &u->conv.shape; /* at the upsampled size */
        g->ops->upsample_forward(g, u->upsampled, in, batch, s->in_channels, s->height / 2, s->width / 2);
        conv_forward(g, &u->conv, u->upsampled, u->out, batch);
        break;
    }
    case AE_UNIT_HEAD:
        stage_forward(g, &u->stage[0], in, batch);
        break;
    case AE_UNIT_RESNET: {
        const size_t n = norm_numel(&u->stage[1].norm, batch);
        stage_forward(g, &u->stage[0], in, batch);
        stage_forward(g, &u->stage[1], u->stage[0].out, batch);
        const float *residual = in;
        if (u->has_shortcut) {
            /* TEMP1 is free here: pooled, the stage's last intermediate is in TEMP0;
             * in training the slots hold only backward temporaries. */
            float *shortcut = g->slot[AE_SLOT_TEMP1];
            conv_forward(g, &u->conv, in, shortcut, batch);
            residual = shortcut;
        }
        g->ops->add(g, u->out, u->out, residual, n);
        round_act(g, u->out, n);
        break;
    }
    case AE_UNIT_ATTENTION:
        attention_forward(g, u, in, batch);
        break;
    }
}

/* d_out (the gradient of u->out) -> d_in (of the unit's input in) overwritten, or
 * NULL where no one needs it; uses the temp slots. */
static void unit_backward(const ae_graph *g, const ae_unit *u, const float *in, const float *d_out, float *d_in,
                          int batch) {
    float *t0 = g->slot[AE_SLOT_TEMP0], *t1 = g->slot[AE_SLOT_TEMP1];
    switch (u->kind) {
    case AE_UNIT_CONV:
        conv_backward(g, &u->conv, d_in, 0.0f, d_out, in, batch);
        break;
    case AE_UNIT_UPSAMPLE: {
        const conv2d_dims *s = &u->conv.shape;
        conv_backward(g, &u->conv, t0, 0.0f, d_out, u->upsampled, batch);
        g->ops->upsample_backward(g, d_in, t0, batch, s->in_channels, s->height / 2, s->width / 2);
        round_act(g, d_in, map_numel(batch, s->in_channels, s->height / 2, s->width / 2));
        break;
    }
    case AE_UNIT_HEAD:
        stage_backward(g, &u->stage[0], in, d_out, d_in, 0.0f, t0, batch);
        break;
    case AE_UNIT_RESNET:
        stage_backward(g, &u->stage[1], u->stage[0].out, d_out, t1, 0.0f, t0, batch);
        if (u->has_shortcut)
            conv_backward(g, &u->conv, d_in, 0.0f, d_out, in, batch);
        else
            g->ops->copy(g, d_in, d_out, norm_numel(&u->stage[1].norm, batch));
        stage_backward(g, &u->stage[0], in, t1, d_in, 1.0f, t0, batch);
        break;
    case AE_UNIT_ATTENTION:
        attention_backward(g, u, in, d_out, d_in, batch);
        break;
    }
}

/* ---- the halves and the training step ---- */

/* Unit k's input: the previous unit's output, or the half's input for its first unit. */
static const float *unit_input(const ae_graph *g, int k, int first, const float *half_input) {
    return k == first ? half_input : g->units[k - 1].out;
}

void ae_graph_encode(const ae_graph *g, const float *images, int batch) {
    for (int k = 0; k < g->encoder_count; k++) unit_forward(g, &g->units[k], unit_input(g, k, 0, images), batch);
}

void ae_graph_decode(const ae_graph *g, const float *z, int batch) {
    const int first = g->encoder_count;
    for (int k = first; k < g->unit_count; k++) unit_forward(g, &g->units[k], unit_input(g, k, first, z), batch);
}

static size_t latent_per_sample(const ae_graph *g) {
    return (size_t)g->shape.latent_channels * (size_t)g->latent_size * (size_t)g->latent_size;
}

static size_t image_numel(const ae_graph *g, int batch) {
    return map_numel(batch, g->shape.in_channels, g->shape.input_size, g->shape.input_size);
}

void ae_graph_train_forward(ae_graph *g, int batch, bool sampled, float kl_beta, autoencoder_reconstruction_loss kind) {
    if (!g->parts.training) fatal_internal("autoencoder: the model was not laid out for training");
    if (batch < 1 || batch > g->max_batch) fatal_internal("autoencoder: batch %d outside [1, %d]", batch, g->max_batch);
    g->batch = batch;
    g->sampled = sampled;
    g->kl_beta = kl_beta;
    g->kind = kind;
    ae_graph_refresh_weights(g); /* (the images stay fp32: they are also the loss's target) */
    ae_graph_encode(g, g->images, batch);
    /* KL's sum = sum(mean^2 + var - 1 - logvar); z rounded: post_quant_conv's input */
    g->ops->posterior_forward(g, g->mean, g->logvar, g->z, &g->sums[1], ae_graph_moments(g), sampled ? g->noise : NULL,
                              batch, (int)latent_per_sample(g));
    ae_graph_decode(g, g->z, batch);
    g->ops->reconstruction_sum(g, &g->sums[0], ae_graph_decoded(g), g->images, image_numel(g, batch),
                               kind == AE_LOSS_L2);
}

/* The gradient flowing back alternates between the two stream slots: each unit
 * reads *d and leaves its result in the other one. */
static void swap(float **d, float **other) {
    float *t = *d;
    *d = *other;
    *other = t;
}

void ae_graph_train_backward(const ae_graph *g, float d_loss, float *d_images) {
    if (g->batch < 1) fatal_internal("autoencoder: backward without a forward pass");
    const int B = g->batch, first = g->encoder_count;
    float *d = g->slot[AE_SLOT_STREAM0], *other = g->slot[AE_SLOT_STREAM1];
    /* the reconstruction loss: d/d rec of mean |rec - x| (sign, 0 at 0 as torch) or mean (rec - x)^2 */
    g->ops->reconstruction_backward(g, d, ae_graph_decoded(g), g->images, image_numel(g, B), g->kind == AE_LOSS_L2,
                                    d_loss);
    /* the decoder, down to the latent's gradient */
    for (int k = g->unit_count - 1; k >= first; k--) {
        unit_backward(g, &g->units[k], unit_input(g, k, first, g->z), d, k > first ? other : g->d_latent, B);
        swap(&d, &other);
    }
    swap(&d, &other); /* post_quant_conv wrote d_latent: d is free again */
    /* the posterior: z = mean + std * noise (or mean), and kl_beta * KL; the clamp
     * passes the gradient only where the raw log-variance lies within its bounds */
    const float kl_scale = d_loss * g->kl_beta / (float)B;
    g->ops->posterior_backward(g, d, g->d_latent, ae_graph_moments(g), g->mean, g->logvar,
                               g->sampled ? g->noise : NULL, kl_scale, B, (int)latent_per_sample(g));
    /* the encoder */
    for (int k = first - 1; k >= 0; k--) {
        unit_backward(g, &g->units[k], unit_input(g, k, 0, g->images), d, k > 0 ? other : d_images, B);
        swap(&d, &other);
    }
}

autoencoder_loss ae_graph_loss(const ae_graph *g, const double sums[2]) {
    /* KL = 0.5 sum / batch; the reconstruction the mean over every value */
    const double n = (double)image_numel(g, g->batch), kl = 0.5 * sums[1] / g->batch;
    autoencoder_loss loss = {.reconstruction = (float)(sums[0] / n), .kl = (float)kl};
    loss.total = (float)(sums[0] / n + (double)g->kl_beta * kl);
    return loss;
}

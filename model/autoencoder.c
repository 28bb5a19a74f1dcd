/* The KL autoencoder (see autoencoder.h): the parameter table with diffusers'
 * AutoencoderKL names, the one-time memory layout for training or for inference,
 * torch's default initialisation, and encode / decode / the training step composed
 * from the ops in ops.h and ops_conv.h.
 *
 * Notation in the shape comments: B batch, C channels, S = H * W pixels, T tokens
 * (= S in the attention), L latent channels, G GroupNorm groups.
 *
 * Memory. Every unit (conv, ResNet block, attention, sampler, output head) holds
 * pointers to its input and output and to what its backward reads. Four "pool"
 * buffers, each as large as the largest feature map, serve two purposes: in a
 * model laid out for inference they hold the forward pass itself (unit outputs
 * alternate between the two stream buffers, a unit's intermediates between the two
 * temp buffers), so encoding needs no per-layer activations; in training every
 * forward activation has its own buffer and the pool holds the gradient flowing
 * back (the two stream buffers) and the backward's temporaries. */
#include "autoencoder.h"

#include <math.h>
#include <omp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "fatal.h"
#include "ops.h"
#include "ops_conv.h"
#include "precision.h"
#include "rng.h"

enum { POOL_STREAM0, POOL_STREAM1, POOL_TEMP0, POOL_TEMP1, POOL_SLOTS };

typedef struct {
    int weight, bias;  /* table indices */
    conv2d_dims shape; /* batch = max_batch; the call's batch is set per call */
} ae_conv;

typedef struct {
    int gamma, beta; /* table indices */
    int channels, spatial;
    float *mean, *rstd; /* (B, G) */
} ae_norm;

/* diffusers' ResnetBlock2D without time embedding. */
typedef struct {
    int in_channels, out_channels;
    ae_norm norm1, norm2;
    ae_conv conv1, conv2;
    bool has_shortcut; /* a 1x1 conv when in_channels != out_channels, else identity */
    ae_conv shortcut;
    const float *in;                      /* (B, Cin, S): the previous unit's output */
    float *norm1_out, *act1;              /* (B, Cin, S) */
    float *conv1_out, *norm2_out, *act2;  /* (B, Cout, S) */
    float *out;                           /* (B, Cout, S) */
} ae_resnet;

/* diffusers' Attention as the VAE's mid block uses it: one head of width C. */
typedef struct {
    int channels, tokens;
    ae_norm norm;
    /* to_q.weight, to_k.weight, to_v.weight are added one after the other, so in the
     * flat buffers they are one (3C, C) matrix; likewise the three biases (3C). */
    int qkv_weight, qkv_bias;
    int out_weight, out_bias; /* to_out.0 */
    const float *in;          /* (B, C, T) */
    float *normed;            /* (B, C, T) */
    float *tokens_in;         /* (B, T, C) */
    float *qkv;               /* (B, T, 3C): (B, T, 3, heads 1, C) as attention_forward reads it */
    float *probs;             /* (B, 1, T, T) */
    float *attn;              /* (B, T, C) */
    float *proj;              /* (B, T, C) */
    float *out;               /* (B, C, T) */
} ae_attention;

typedef struct {
    ae_resnet first, second;
    ae_attention attention;
} ae_mid_block;

/* One down block (encoder) or up block (decoder). */
typedef struct {
    int resnet_count;
    ae_resnet *resnets;
    bool has_sampler;    /* all levels but the last */
    ae_conv sampler;     /* down: 3x3 stride 2 on the input padded (0, 1, 0, 1); up: 3x3 after nearest 2x */
    const float *sampler_in; /* (B, C, s, s): the last resnet's output */
    float *upsampled;    /* (B, C, 2s, 2s), decoder only */
    float *out;          /* the level's output: the sampler's, else the last resnet's */
} ae_level;

/* conv_norm_out, conv_act (SiLU), conv_out at the end of each half. */
typedef struct {
    ae_norm norm;
    ae_conv conv;
    const float *in;
    float *normed, *act; /* (B, Cin, S) */
    float *out;          /* (B, Cout, S) */
} ae_head;

typedef struct {
    ae_conv conv_in;
    float *conv_in_out;
    ae_level levels[AE_MAX_LEVELS];
    ae_mid_block mid;
    ae_head head; /* out (B, 2L, h, w) */
} ae_encoder;

typedef struct {
    ae_conv conv_in;
    float *conv_in_out;
    ae_mid_block mid;
    ae_level levels[AE_MAX_LEVELS];
    ae_head head; /* out (B, C, H, W): the reconstruction */
} ae_decoder;

struct autoencoder_activations {
    ae_encoder enc;
    ae_conv quant_conv;
    float *moments; /* (B, 2L, h, w): per sample L mean channels, then L log-variance channels (unclamped) */
    ae_conv post_quant_conv;
    float *post_quant_out; /* (B, L, h, w) */
    ae_decoder dec;
    /* training only */
    float *images;              /* (B, C, H, W) the step's input, kept for conv_in's backward and the loss */
    float *mean, *logvar, *std; /* (B, L, h, w); logvar clamped, std = exp(logvar / 2) */
    float *noise, *z;           /* (B, L, h, w) */
    float *d_latent;            /* (B, L, h, w) */
    float *d_tokens_a, *d_tokens_b; /* (B, T, C) attention backward */
    float *d_qkv;               /* (B, T, 3C) */
    float *d_scores;            /* (B, 1, T, T) */
    float *pool[POOL_SLOTS];    /* (pool_floats) each; see the top of this file */
    size_t pool_floats;
    float *conv_scratch;        /* (conv_scratch_floats) */
    size_t conv_scratch_floats;
    /* the step kept for backward */
    int batch;
    bool sampled; /* z = mean + std * noise (else z = mean) */
    float kl_beta;
    autoencoder_reconstruction_loss kind;
};

/* ---- shape ---- */

static void check_shape(const autoencoder_shape *s, int max_batch) {
    if (s->in_channels < 1 || s->input_size < 1 || s->levels < 1 || s->levels > AE_MAX_LEVELS ||
        s->layers_per_block < 1 || s->latent_channels < 1 || s->norm_groups < 1 || max_batch < 1)
        fatal_input("autoencoder shape: every size must be positive and 1 to %d levels (in_channels %d, "
                    "input_size %d, levels %d, layers_per_block %d, latent_channels %d, norm_groups %d, batch %d)",
                    AE_MAX_LEVELS, s->in_channels, s->input_size, s->levels, s->layers_per_block,
                    s->latent_channels, s->norm_groups, max_batch);
    for (int i = 0; i < s->levels; i++)
        if (s->block_out_channels[i] < 1 || s->block_out_channels[i] % s->norm_groups)
            fatal_input("autoencoder shape: autoencoder.block_out_channels[%d] = %d is not a positive multiple of "
                        "autoencoder.norm_groups %d",
                        i, s->block_out_channels[i], s->norm_groups);
    int reduction = 1 << (s->levels - 1);
    if (s->input_size % reduction)
        fatal_input("autoencoder shape: autoencoder.input_size %d is not a multiple of %d (2^(levels - 1))",
                    s->input_size, reduction);
}

/* ---- the parameter table ---- */

#define ADD(trainable, ...) param_table_add(t, trainable, __VA_ARGS__)

static void add_conv(param_table *t, ae_conv *c, int in, int out, int kernel, const char *prefix) {
    c->weight = ADD(true, 4, (int64_t[]){out, in, kernel, kernel}, "%s.weight", prefix);
    c->bias = ADD(true, 1, (int64_t[]){out}, "%s.bias", prefix);
}

static void add_norm(param_table *t, ae_norm *n, int channels, const char *prefix) {
    n->gamma = ADD(true, 1, (int64_t[]){channels}, "%s.weight", prefix);
    n->beta = ADD(true, 1, (int64_t[]){channels}, "%s.bias", prefix);
}

static void add_resnet(param_table *t, ae_resnet *r, int in, int out, const char *prefix) {
    char name[PARAM_NAME_MAX];
    r->in_channels = in;
    r->out_channels = out;
    snprintf(name, sizeof name, "%s.norm1", prefix);
    add_norm(t, &r->norm1, in, name);
    snprintf(name, sizeof name, "%s.conv1", prefix);
    add_conv(t, &r->conv1, in, out, 3, name);
    snprintf(name, sizeof name, "%s.norm2", prefix);
    add_norm(t, &r->norm2, out, name);
    snprintf(name, sizeof name, "%s.conv2", prefix);
    add_conv(t, &r->conv2, out, out, 3, name);
    r->has_shortcut = in != out;
    if (r->has_shortcut) {
        snprintf(name, sizeof name, "%s.conv_shortcut", prefix);
        add_conv(t, &r->shortcut, in, out, 1, name);
    }
}

static void add_mid_block(param_table *t, ae_mid_block *m, int channels, const char *half) {
    char name[PARAM_NAME_MAX];
    snprintf(name, sizeof name, "%s.mid_block.resnets.0", half);
    add_resnet(t, &m->first, channels, channels, name);
    ae_attention *a = &m->attention;
    const int64_t C = channels;
    a->channels = channels;
    snprintf(name, sizeof name, "%s.mid_block.attentions.0.group_norm", half);
    add_norm(t, &a->norm, channels, name);
    a->qkv_weight = ADD(true, 2, (int64_t[]){C, C}, "%s.mid_block.attentions.0.to_q.weight", half);
    ADD(true, 2, (int64_t[]){C, C}, "%s.mid_block.attentions.0.to_k.weight", half);
    ADD(true, 2, (int64_t[]){C, C}, "%s.mid_block.attentions.0.to_v.weight", half);
    a->qkv_bias = ADD(true, 1, (int64_t[]){C}, "%s.mid_block.attentions.0.to_q.bias", half);
    ADD(true, 1, (int64_t[]){C}, "%s.mid_block.attentions.0.to_k.bias", half);
    ADD(true, 1, (int64_t[]){C}, "%s.mid_block.attentions.0.to_v.bias", half);
    a->out_weight = ADD(true, 2, (int64_t[]){C, C}, "%s.mid_block.attentions.0.to_out.0.weight", half);
    a->out_bias = ADD(true, 1, (int64_t[]){C}, "%s.mid_block.attentions.0.to_out.0.bias", half);
    snprintf(name, sizeof name, "%s.mid_block.resnets.1", half);
    add_resnet(t, &m->second, channels, channels, name);
}

/* The tensors in diffusers' state_dict order (encoder, decoder, quant_conv,
 * post_quant_conv), the attention's q, k, v weights and biases grouped (see
 * ae_attention). Fills the indices in a. */
static void build_table(param_table *t, const autoencoder_shape *s, struct autoencoder_activations *a) {
    char name[PARAM_NAME_MAX];
    const int L = s->latent_channels, last = s->levels - 1;
    const int *widths = s->block_out_channels;

    add_conv(t, &a->enc.conv_in, s->in_channels, widths[0], 3, "encoder.conv_in");
    int previous = widths[0];
    for (int i = 0; i < s->levels; i++) {
        ae_level *level = &a->enc.levels[i];
        for (int j = 0; j < level->resnet_count; j++) {
            snprintf(name, sizeof name, "encoder.down_blocks.%d.resnets.%d", i, j);
            add_resnet(t, &level->resnets[j], previous, widths[i], name);
            previous = widths[i];
        }
        level->has_sampler = i != last;
        if (level->has_sampler) {
            snprintf(name, sizeof name, "encoder.down_blocks.%d.downsamplers.0.conv", i);
            add_conv(t, &level->sampler, widths[i], widths[i], 3, name);
        }
    }
    add_mid_block(t, &a->enc.mid, widths[last], "encoder");
    add_norm(t, &a->enc.head.norm, widths[last], "encoder.conv_norm_out");
    add_conv(t, &a->enc.head.conv, widths[last], 2 * L, 3, "encoder.conv_out");

    add_conv(t, &a->dec.conv_in, L, widths[last], 3, "decoder.conv_in");
    add_mid_block(t, &a->dec.mid, widths[last], "decoder");
    previous = widths[last];
    for (int i = 0; i < s->levels; i++) {
        ae_level *level = &a->dec.levels[i];
        const int width = widths[last - i]; /* the widths reversed */
        for (int j = 0; j < level->resnet_count; j++) {
            snprintf(name, sizeof name, "decoder.up_blocks.%d.resnets.%d", i, j);
            add_resnet(t, &level->resnets[j], previous, width, name);
            previous = width;
        }
        level->has_sampler = i != last;
        if (level->has_sampler) {
            snprintf(name, sizeof name, "decoder.up_blocks.%d.upsamplers.0.conv", i);
            add_conv(t, &level->sampler, width, width, 3, name);
        }
    }
    add_norm(t, &a->dec.head.norm, widths[0], "decoder.conv_norm_out");
    add_conv(t, &a->dec.head.conv, widths[0], s->in_channels, 3, "decoder.conv_out");

    add_conv(t, &a->quant_conv, 2 * L, 2 * L, 1, "quant_conv");
    add_conv(t, &a->post_quant_conv, L, L, 1, "post_quant_conv");
}
#undef ADD

/* The per-level resnet arrays (encoder: layers_per_block, decoder: one more). */
static void allocate_levels(struct autoencoder_activations *a, const autoencoder_shape *s) {
    for (int i = 0; i < s->levels; i++) {
        a->enc.levels[i].resnet_count = s->layers_per_block;
        a->enc.levels[i].resnets = xcalloc((size_t)s->layers_per_block, sizeof(ae_resnet));
        a->dec.levels[i].resnet_count = s->layers_per_block + 1;
        a->dec.levels[i].resnets = xcalloc((size_t)s->layers_per_block + 1, sizeof(ae_resnet));
    }
}

static void free_levels(struct autoencoder_activations *a) {
    for (int i = 0; i < AE_MAX_LEVELS; i++) {
        free(a->enc.levels[i].resnets);
        free(a->dec.levels[i].resnets);
    }
}

void autoencoder_build_table(param_table *table, const autoencoder_shape *shape) {
    check_shape(shape, 1);
    struct autoencoder_activations *a = xcalloc(1, sizeof(*a));
    allocate_levels(a, shape);
    param_table_init(table);
    build_table(table, shape, a);
    free_levels(a);
    free(a);
}

/* ---- memory layout ---- */

/* Where the layout puts forward activations: each its own buffer (training) or
 * the pool (inference); see the top of this file. Run three times: measuring
 * the largest feature map (the pool's size), measuring the total, placing. */
typedef struct {
    arena *ar;
    bool pooled;
    size_t largest_feature; /* floats, learned while laying out */
    float *const *pool;
    int stream; /* the pool stream buffer the last unit output went to */
    size_t conv_scratch_floats;
    int threads;
} layout_ctx;

static float *feature(layout_ctx *c, size_t count, int slot) {
    if (count > c->largest_feature) c->largest_feature = count;
    return c->pooled ? c->pool[slot] : arena_floats(c->ar, count);
}
/* A unit's output: alternates between the two stream buffers when pooled. */
static float *stream_out(layout_ctx *c, size_t count) {
    c->stream ^= 1;
    return feature(c, count, POOL_STREAM0 + c->stream);
}
static float *dedicated(layout_ctx *c, size_t count) { return arena_floats(c->ar, count); }

static void layout_conv(layout_ctx *c, ae_conv *conv, int batch, int in, int out, int size, int kernel,
                        int stride, int pad_before, int pad_after) {
    conv->shape = (conv2d_dims){batch, in, out, size, size, kernel, stride,
                                pad_before, pad_after, pad_before, pad_after};
    size_t scratch = conv2d_scratch_floats(&conv->shape, c->threads);
    if (scratch > c->conv_scratch_floats) c->conv_scratch_floats = scratch;
}

static void layout_norm(layout_ctx *c, ae_norm *n, int batch, int channels, int spatial, int groups) {
    n->channels = channels;
    n->spatial = spatial;
    n->mean = dedicated(c, (size_t)batch * groups);
    n->rstd = dedicated(c, (size_t)batch * groups);
}

/* Temps alternate T0, T1 so that no op reads and writes the same buffer. */
static void layout_resnet(layout_ctx *c, ae_resnet *r, const float *in, int batch, int size, int groups) {
    const size_t B = (size_t)batch, S = (size_t)size * size;
    const int Ci = r->in_channels, Co = r->out_channels;
    r->in = in;
    layout_norm(c, &r->norm1, batch, Ci, (int)S, groups);
    layout_norm(c, &r->norm2, batch, Co, (int)S, groups);
    layout_conv(c, &r->conv1, batch, Ci, Co, size, 3, 1, 1, 1);
    layout_conv(c, &r->conv2, batch, Co, Co, size, 3, 1, 1, 1);
    if (r->has_shortcut) layout_conv(c, &r->shortcut, batch, Ci, Co, size, 1, 1, 0, 0);
    r->norm1_out = feature(c, B * Ci * S, POOL_TEMP0);
    r->act1 = feature(c, B * Ci * S, POOL_TEMP1);
    r->conv1_out = feature(c, B * Co * S, POOL_TEMP0);
    r->norm2_out = feature(c, B * Co * S, POOL_TEMP1);
    r->act2 = feature(c, B * Co * S, POOL_TEMP0);
    r->out = stream_out(c, B * Co * S);
}

static void layout_attention(layout_ctx *c, ae_attention *a, const float *in, int batch, int size, int groups) {
    const size_t B = (size_t)batch, T = (size_t)size * size, C = (size_t)a->channels;
    a->tokens = (int)T;
    a->in = in;
    layout_norm(c, &a->norm, batch, (int)C, (int)T, groups);
    a->normed = feature(c, B * C * T, POOL_TEMP0);
    a->tokens_in = feature(c, B * T * C, POOL_TEMP1);
    a->qkv = dedicated(c, B * T * 3 * C);
    a->probs = dedicated(c, B * T * T);
    a->attn = feature(c, B * T * C, POOL_TEMP0);
    a->proj = feature(c, B * T * C, POOL_TEMP1);
    a->out = stream_out(c, B * C * T);
}

static const float *layout_mid(layout_ctx *c, ae_mid_block *m, const float *in, int batch, int size, int groups) {
    layout_resnet(c, &m->first, in, batch, size, groups);
    layout_attention(c, &m->attention, m->first.out, batch, size, groups);
    layout_resnet(c, &m->second, m->attention.out, batch, size, groups);
    return m->second.out;
}

static void layout_head(layout_ctx *c, ae_head *h, const float *in, int batch, int in_channels, int out_channels,
                        int size, int groups) {
    const size_t B = (size_t)batch, S = (size_t)size * size;
    h->in = in;
    layout_norm(c, &h->norm, batch, in_channels, (int)S, groups);
    layout_conv(c, &h->conv, batch, in_channels, out_channels, size, 3, 1, 1, 1);
    h->normed = feature(c, B * in_channels * S, POOL_TEMP0);
    h->act = feature(c, B * in_channels * S, POOL_TEMP1);
    h->out = stream_out(c, B * out_channels * S);
}

static void layout_encoder(layout_ctx *c, autoencoder_model *m) {
    const autoencoder_shape *s = &m->shape;
    struct autoencoder_activations *a = m->act;
    ae_encoder *e = &a->enc;
    const int B = m->max_batch, G = s->norm_groups, L = s->latent_channels, last = s->levels - 1;
    int size = s->input_size;
    layout_conv(c, &e->conv_in, B, s->in_channels, s->block_out_channels[0], size, 3, 1, 1, 1);
    e->conv_in_out = stream_out(c, (size_t)B * s->block_out_channels[0] * size * size);
    const float *x = e->conv_in_out;
    for (int i = 0; i < s->levels; i++) {
        ae_level *level = &e->levels[i];
        const int width = s->block_out_channels[i];
        for (int j = 0; j < level->resnet_count; j++) {
            layout_resnet(c, &level->resnets[j], x, B, size, G);
            x = level->resnets[j].out;
        }
        if (level->has_sampler) {
            /* diffusers' Downsample2D: F.pad(x, (0, 1, 0, 1)), then 3x3 stride 2 unpadded */
            layout_conv(c, &level->sampler, B, width, width, size, 3, 2, 0, 1);
            level->sampler_in = x;
            size /= 2;
            level->out = stream_out(c, (size_t)B * width * size * size);
            x = level->out;
        } else {
            level->out = (float *)x;
        }
    }
    x = layout_mid(c, &e->mid, x, B, size, G);
    layout_head(c, &e->head, x, B, s->block_out_channels[last], 2 * L, size, G);
    layout_conv(c, &a->quant_conv, B, 2 * L, 2 * L, size, 1, 1, 0, 0);
    a->moments = stream_out(c, (size_t)B * 2 * L * size * size);
}

/* in: the latent the decoder reads (training: a->z; inference: the caller's, set per call). */
static void layout_decoder(layout_ctx *c, autoencoder_model *m) {
    const autoencoder_shape *s = &m->shape;
    struct autoencoder_activations *a = m->act;
    ae_decoder *d = &a->dec;
    const int B = m->max_batch, G = s->norm_groups, L = s->latent_channels, last = s->levels - 1;
    int size = m->latent_size;
    layout_conv(c, &a->post_quant_conv, B, L, L, size, 1, 1, 0, 0);
    a->post_quant_out = stream_out(c, (size_t)B * L * size * size);
    layout_conv(c, &d->conv_in, B, L, s->block_out_channels[last], size, 3, 1, 1, 1);
    d->conv_in_out = stream_out(c, (size_t)B * s->block_out_channels[last] * size * size);
    const float *x = layout_mid(c, &d->mid, d->conv_in_out, B, size, G);
    for (int i = 0; i < s->levels; i++) {
        ae_level *level = &d->levels[i];
        const int width = s->block_out_channels[last - i];
        for (int j = 0; j < level->resnet_count; j++) {
            layout_resnet(c, &level->resnets[j], x, B, size, G);
            x = level->resnets[j].out;
        }
        if (level->has_sampler) {
            level->sampler_in = x;
            level->upsampled = feature(c, (size_t)B * width * 4 * size * size, POOL_TEMP0);
            size *= 2;
            layout_conv(c, &level->sampler, B, width, width, size, 3, 1, 1, 1);
            level->out = stream_out(c, (size_t)B * width * size * size);
            x = level->out;
        } else {
            level->out = (float *)x;
        }
    }
    layout_head(c, &d->head, x, B, s->block_out_channels[0], s->in_channels, size, G);
}

static void layout(autoencoder_model *m, layout_ctx *c) {
    struct autoencoder_activations *a = m->act;
    const bool training = m->purpose == AE_FOR_TRAINING;
    const size_t B = (size_t)m->max_batch, L = (size_t)m->shape.latent_channels;
    const size_t hw = (size_t)m->latent_size * m->latent_size;
    const size_t image = (size_t)m->shape.in_channels * m->shape.input_size * m->shape.input_size;
    m->params = dedicated(c, m->table.trainable_numel);
    m->grads = training ? dedicated(c, m->table.trainable_numel) : NULL;
    m->compute_params = m->precision != PRECISION_FP32 ? dedicated(c, m->table.trainable_numel) : m->params;
    for (int k = 0; k < POOL_SLOTS; k++) a->pool[k] = dedicated(c, c->largest_feature);
    a->pool_floats = c->largest_feature;
    c->stream = 0;
    if (m->purpose != AE_FOR_DECODING) layout_encoder(c, m);
    if (m->purpose != AE_FOR_ENCODING) layout_decoder(c, m);
    if (training) {
        a->images = dedicated(c, B * image);
        a->mean = dedicated(c, B * L * hw);
        a->logvar = dedicated(c, B * L * hw);
        a->std = dedicated(c, B * L * hw);
        a->noise = dedicated(c, B * L * hw);
        a->z = dedicated(c, B * L * hw);
        a->d_latent = dedicated(c, B * L * hw);
        /* The gradients of the reconstruction and of the moments pass through the pool:
         * both are feature maps of the forward, so the pool is large enough. */
        const size_t C = (size_t)m->shape.block_out_channels[m->shape.levels - 1];
        a->d_tokens_a = dedicated(c, B * hw * C);
        a->d_tokens_b = dedicated(c, B * hw * C);
        a->d_qkv = dedicated(c, B * hw * 3 * C);
        a->d_scores = dedicated(c, B * hw * hw);
    }
    a->conv_scratch = dedicated(c, c->conv_scratch_floats);
    a->conv_scratch_floats = c->conv_scratch_floats;
}

void autoencoder_create(autoencoder_model *m, const autoencoder_shape *shape, int max_batch,
                        autoencoder_purpose purpose) {
    autoencoder_create_precision(m, shape, max_batch, purpose, PRECISION_FP32);
}

void autoencoder_create_precision(autoencoder_model *m, const autoencoder_shape *shape, int max_batch,
                                  autoencoder_purpose purpose, ldm_precision precision) {
    memset(m, 0, sizeof(*m));
    check_shape(shape, max_batch);
    m->shape = *shape;
    m->precision = precision;
    m->purpose = purpose;
    m->max_batch = max_batch;
    m->latent_size = shape->input_size >> (shape->levels - 1);
    m->act = xcalloc(1, sizeof(*m->act));
    allocate_levels(m->act, shape);
    param_table_init(&m->table);
    build_table(&m->table, shape, m->act);
    /* The attention's q, k, v must be one (3C, C) matrix and one (3C) bias. */
    const ae_attention *attentions[2] = {&m->act->enc.mid.attention, &m->act->dec.mid.attention};
    for (int k = 0; k < 2; k++) {
        const param_entry *e = m->table.entries;
        const ae_attention *at = attentions[k];
        for (int j = 1; j < 3; j++)
            if (e[at->qkv_weight + j].offset != e[at->qkv_weight].offset + (size_t)j * e[at->qkv_weight].numel ||
                e[at->qkv_bias + j].offset != e[at->qkv_bias].offset + (size_t)j * e[at->qkv_bias].numel)
                fatal_internal("autoencoder: attention q, k, v parameters are not contiguous");
    }

    layout_ctx c = {.pooled = purpose != AE_FOR_TRAINING, .threads = omp_get_max_threads()};
    arena ar;
    c.ar = &ar;
    float *no_pool[POOL_SLOTS] = {NULL};
    c.pool = no_pool;
    arena_begin_measure(&ar);
    layout(m, &c); /* learns the largest feature map: the pool's size */
    const size_t pool_size = c.largest_feature;
    arena_begin_measure(&ar);
    layout(m, &c); /* the total, pools included */
    arena_begin_place(&ar, ar.used);
    c.pool = m->act->pool;
    layout(m, &c);
    if (c.largest_feature != pool_size) fatal_internal("autoencoder: layout passes disagree");
    m->memory = ar.base;
    m->memory_bytes = ar.capacity;
    if (precision == PRECISION_FP32) m->compute_params = m->params;
    param_table_bind(&m->table, m->params, m->grads, NULL);
}

void autoencoder_destroy(autoencoder_model *m) {
    if (m->act) {
        free_levels(m->act);
        free(m->act);
    }
    param_table_free(&m->table);
    free(m->memory);
    memset(m, 0, sizeof(*m));
}

void autoencoder_zero_grad(autoencoder_model *m) {
    if (!m->grads) fatal_internal("autoencoder_zero_grad: the model was not laid out for training");
    memset(m->grads, 0, sizeof(float) * m->table.trainable_numel);
}

void autoencoder_init_weights(autoencoder_model *m, uint64_t seed) {
    for (int i = 0; i < m->table.count; i++) {
        param_entry *e = &m->table.entries[i];
        size_t len = strlen(e->name);
        bool is_bias = len > 5 && strcmp(e->name + len - 5, ".bias") == 0;
        /* The tensor whose fan-in sets the bound: a bias's own weight. */
        const param_entry *w = e;
        if (is_bias) {
            char weight_name[PARAM_NAME_MAX];
            snprintf(weight_name, sizeof weight_name, "%.*s.weight", (int)(len - 5), e->name);
            w = param_table_find(&m->table, weight_name);
            if (!w) fatal_internal("autoencoder: %s has no weight", e->name);
        }
        if (w->ndim == 1) { /* GroupNorm: gamma 1, beta 0 */
            for (size_t k = 0; k < e->numel; k++) e->data[k] = is_bias ? 0.0f : 1.0f;
            continue;
        }
        /* torch's Conv2d / Linear reset_parameters: kaiming_uniform(a = sqrt(5)) for the
         * weight, which is uniform in +-1/sqrt(fan_in), and the bias in the same bound. */
        double fan_in = (double)w->numel / (double)w->shape[0];
        float bound = (float)(1.0 / sqrt(fan_in));
        rng_stream rng = rng_stream_for(seed, 0x61652d696e6974 /* "ae-init" */, (uint64_t)i);
        for (size_t k = 0; k < e->numel; k++) e->data[k] = bound * (2.0f * rng_uniform(&rng) - 1.0f);
    }
}

/* diffusers' deprecated attention names (AttentionBlock, before 0.14) -> today's. */
static const char *current_attention_name(const char *file_name, char *buf, size_t buf_size) {
    static const char *const renames[][2] = {
        {"query", "to_q"}, {"key", "to_k"}, {"value", "to_v"}, {"proj_attn", "to_out.0"}};
    const char *at = strstr(file_name, "mid_block.attentions.0.");
    if (!at) return file_name;
    const char *leaf = at + strlen("mid_block.attentions.0.");
    for (size_t i = 0; i < sizeof renames / sizeof renames[0]; i++) {
        size_t n = strlen(renames[i][0]);
        if (strncmp(leaf, renames[i][0], n) == 0 && (strcmp(leaf + n, ".weight") == 0 || strcmp(leaf + n, ".bias") == 0)) {
            int w = snprintf(buf, buf_size, "%.*s%s%s", (int)(leaf - file_name), file_name, renames[i][1], leaf + n);
            return w > 0 && (size_t)w < buf_size ? buf : file_name;
        }
    }
    return file_name;
}

void autoencoder_load_safetensors(autoencoder_model *m, const char *path) {
    param_table_load_safetensors_renamed(&m->table, path, current_attention_name);
}

/* ---- forward and backward of the units ---- */

static float *P(autoencoder_model *m, int index) { return m->table.entries[index].data; }
static float *G(autoencoder_model *m, int index) { return m->table.entries[index].grad; }
/* A conv or linear parameter as the GEMM reads it (rounded in bf16/fp16). */
static float *W(autoencoder_model *m, int index) { return m->compute_params + m->table.entries[index].offset; }

/* bf16/fp16: an activation or activation gradient rounded where it is made. */
static void round_act(const autoencoder_model *m, float *x, size_t n) {
    if (m->precision != PRECISION_FP32) precision_round_array(m->precision, x, n);
}

/* bf16/fp16: the rounded weights, from the current master weights. */
static void refresh_compute_params(autoencoder_model *m) {
    if (m->precision == PRECISION_FP32) return;
    memcpy(m->compute_params, m->params, sizeof(float) * m->table.trainable_numel);
    precision_round_array(m->precision, m->compute_params, m->table.trainable_numel);
}

static size_t conv_out_numel(const conv2d_dims *s) {
    return (size_t)s->batch * s->out_channels * conv2d_out_height(s) * conv2d_out_width(s);
}

static void conv_forward(autoencoder_model *m, const ae_conv *c, const float *in, float *out, int batch) {
    conv2d_dims shape = c->shape;
    shape.batch = batch;
    conv2d_forward(out, in, W(m, c->weight), W(m, c->bias), &shape, m->act->conv_scratch,
                   m->act->conv_scratch_floats);
    round_act(m, out, conv_out_numel(&shape));
}

static void conv_backward(autoencoder_model *m, const ae_conv *c, float *d_in, float d_in_beta, const float *d_out,
                          const float *in, int batch) {
    conv2d_dims shape = c->shape;
    shape.batch = batch;
    conv2d_backward(d_in, d_in_beta, G(m, c->weight), G(m, c->bias), d_out, in, W(m, c->weight), &shape,
                    m->act->conv_scratch, m->act->conv_scratch_floats);
    if (d_in) round_act(m, d_in, (size_t)batch * shape.in_channels * shape.height * shape.width);
}

static void norm_forward(autoencoder_model *m, const ae_norm *n, const float *in, float *out, int batch) {
    groupnorm_forward(out, n->mean, n->rstd, in, P(m, n->gamma), P(m, n->beta), batch, n->channels, n->spatial,
                      m->shape.norm_groups, AE_GROUPNORM_EPS);
    round_act(m, out, (size_t)batch * n->channels * n->spatial);
}

static void norm_backward(autoencoder_model *m, const ae_norm *n, float *d_in, float d_in_beta, const float *d_out,
                          const float *in, int batch) {
    groupnorm_backward(d_in, d_in_beta, G(m, n->gamma), G(m, n->beta), d_out, in, n->mean, n->rstd,
                       P(m, n->gamma), batch, n->channels, n->spatial, m->shape.norm_groups);
    round_act(m, d_in, (size_t)batch * n->channels * n->spatial);
}

static size_t numel(const ae_norm *n, int batch) { return (size_t)batch * n->channels * n->spatial; }

static void resnet_forward(autoencoder_model *m, const ae_resnet *r, int batch) {
    const size_t n_in = numel(&r->norm1, batch), n_out = numel(&r->norm2, batch);
    norm_forward(m, &r->norm1, r->in, r->norm1_out, batch);
    silu_forward(r->act1, r->norm1_out, n_in);
    round_act(m, r->act1, n_in);
    conv_forward(m, &r->conv1, r->act1, r->conv1_out, batch);
    norm_forward(m, &r->norm2, r->conv1_out, r->norm2_out, batch);
    silu_forward(r->act2, r->norm2_out, n_out);
    round_act(m, r->act2, n_out);
    conv_forward(m, &r->conv2, r->act2, r->out, batch);
    if (r->has_shortcut) {
        /* TEMP1 is free here: the inference layout has act2 in TEMP0, and in training
         * the pool holds only backward temporaries. */
        float *shortcut = m->act->pool[POOL_TEMP1];
        conv_forward(m, &r->shortcut, r->in, shortcut, batch);
        add_forward(r->out, r->out, shortcut, n_out);
    } else {
        add_forward(r->out, r->out, r->in, n_out);
    }
    round_act(m, r->out, n_out);
}

/* d_out (B, Cout, S) -> d_in (B, Cin, S) overwritten; uses TEMP0 and TEMP1. */
static void resnet_backward(autoencoder_model *m, const ae_resnet *r, const float *d_out, float *d_in, int batch) {
    float *t0 = m->act->pool[POOL_TEMP0], *t1 = m->act->pool[POOL_TEMP1];
    const size_t n_in = numel(&r->norm1, batch), n_out = numel(&r->norm2, batch);
    conv_backward(m, &r->conv2, t0, 0.0f, d_out, r->act2, batch);
    silu_backward(t0, t0, r->norm2_out, n_out);
    round_act(m, t0, n_out);
    norm_backward(m, &r->norm2, t1, 0.0f, t0, r->conv1_out, batch);
    conv_backward(m, &r->conv1, t0, 0.0f, t1, r->act1, batch);
    silu_backward(t0, t0, r->norm1_out, n_in);
    round_act(m, t0, n_in);
    if (r->has_shortcut)
        conv_backward(m, &r->shortcut, d_in, 0.0f, d_out, r->in, batch);
    else
        memcpy(d_in, d_out, sizeof(float) * n_out);
    norm_backward(m, &r->norm1, d_in, 1.0f, t0, r->in, batch);
}

static void attention_unit_forward(autoencoder_model *m, const ae_attention *a, int batch) {
    const int B = batch, T = a->tokens, C = a->channels;
    norm_forward(m, &a->norm, a->in, a->normed, batch);
    transpose_channels_tokens_forward(a->tokens_in, a->normed, B, C, T);
    linear_forward(a->qkv, a->tokens_in, W(m, a->qkv_weight), W(m, a->qkv_bias), B * T, C, 3 * C);
    round_act(m, a->qkv, (size_t)B * T * 3 * C);
    /* scale 1/sqrt(C): one head of width C */
    attention_forward_precision(a->attn, a->probs, a->qkv, B, T, 1, C, m->precision);
    round_act(m, a->attn, (size_t)B * T * C);
    linear_forward(a->proj, a->attn, W(m, a->out_weight), W(m, a->out_bias), B * T, C, C);
    round_act(m, a->proj, (size_t)B * T * C);
    transpose_channels_tokens_backward(a->out, a->proj, B, C, T); /* (B, T, C) -> (B, C, T) */
    add_forward(a->out, a->out, a->in, (size_t)B * C * T);
    round_act(m, a->out, (size_t)B * C * T);
}

static void attention_unit_backward(autoencoder_model *m, const ae_attention *a, const float *d_out, float *d_in,
                                    int batch) {
    struct autoencoder_activations *x = m->act;
    const int B = batch, T = a->tokens, C = a->channels;
    float *t0 = x->pool[POOL_TEMP0];
    transpose_channels_tokens_forward(x->d_tokens_a, d_out, B, C, T);
    linear_backward(x->d_tokens_b, 0.0f, G(m, a->out_weight), G(m, a->out_bias), x->d_tokens_a, a->attn,
                    W(m, a->out_weight), B * T, C, C);
    round_act(m, x->d_tokens_b, (size_t)B * T * C);
    attention_backward_precision(x->d_qkv, x->d_scores, x->d_tokens_b, a->qkv, a->probs, B, T, 1, C, m->precision);
    round_act(m, x->d_qkv, (size_t)B * T * 3 * C);
    linear_backward(x->d_tokens_a, 0.0f, G(m, a->qkv_weight), G(m, a->qkv_bias), x->d_qkv, a->tokens_in,
                    W(m, a->qkv_weight), B * T, C, 3 * C);
    round_act(m, x->d_tokens_a, (size_t)B * T * C);
    transpose_channels_tokens_backward(t0, x->d_tokens_a, B, C, T);
    memcpy(d_in, d_out, sizeof(float) * (size_t)B * C * T); /* the residual */
    norm_backward(m, &a->norm, d_in, 1.0f, t0, a->in, batch);
}

static void mid_forward(autoencoder_model *m, const ae_mid_block *mid, int batch) {
    resnet_forward(m, &mid->first, batch);
    attention_unit_forward(m, &mid->attention, batch);
    resnet_forward(m, &mid->second, batch);
}

/* The gradient flowing back alternates between the two stream buffers of the pool:
 * each backward step reads *d and leaves its result in the other one. */
static void swap(float **d, float **other) {
    float *t = *d;
    *d = *other;
    *other = t;
}

static void mid_backward(autoencoder_model *m, const ae_mid_block *mid, float **d, float **other, int batch) {
    resnet_backward(m, &mid->second, *d, *other, batch);
    swap(d, other);
    attention_unit_backward(m, &mid->attention, *d, *other, batch);
    swap(d, other);
    resnet_backward(m, &mid->first, *d, *other, batch);
    swap(d, other);
}

static void head_forward(autoencoder_model *m, const ae_head *h, int batch) {
    norm_forward(m, &h->norm, h->in, h->normed, batch);
    silu_forward(h->act, h->normed, numel(&h->norm, batch));
    round_act(m, h->act, numel(&h->norm, batch));
    conv_forward(m, &h->conv, h->act, h->out, batch);
}

static void head_backward(autoencoder_model *m, const ae_head *h, const float *d_out, float *d_in, int batch) {
    float *t0 = m->act->pool[POOL_TEMP0];
    conv_backward(m, &h->conv, t0, 0.0f, d_out, h->act, batch);
    silu_backward(t0, t0, h->normed, numel(&h->norm, batch));
    round_act(m, t0, numel(&h->norm, batch));
    norm_backward(m, &h->norm, d_in, 0.0f, t0, h->in, batch);
}

static void level_forward(autoencoder_model *m, const ae_level *level, bool up, int batch) {
    for (int j = 0; j < level->resnet_count; j++) resnet_forward(m, &level->resnets[j], batch);
    if (!level->has_sampler) return;
    if (up) {
        const conv2d_dims *s = &level->sampler.shape; /* the conv runs at the upsampled size */
        upsample_nearest2x_forward(level->upsampled, level->sampler_in, batch, s->in_channels, s->height / 2,
                                   s->width / 2);
        conv_forward(m, &level->sampler, level->upsampled, level->out, batch);
    } else {
        conv_forward(m, &level->sampler, level->sampler_in, level->out, batch);
    }
}

static void level_backward(autoencoder_model *m, const ae_level *level, bool up, float **d, float **other,
                           int batch) {
    if (level->has_sampler) {
        if (up) {
            const conv2d_dims *s = &level->sampler.shape;
            float *t0 = m->act->pool[POOL_TEMP0];
            conv_backward(m, &level->sampler, t0, 0.0f, *d, level->upsampled, batch);
            upsample_nearest2x_backward(*other, t0, batch, s->in_channels, s->height / 2, s->width / 2);
            round_act(m, *other, (size_t)batch * s->in_channels * (s->height / 2) * (s->width / 2));
        } else {
            conv_backward(m, &level->sampler, *other, 0.0f, *d, level->sampler_in, batch);
        }
        swap(d, other);
    }
    for (int j = level->resnet_count - 1; j >= 0; j--) {
        resnet_backward(m, &level->resnets[j], *d, *other, batch);
        swap(d, other);
    }
}

/* ---- the halves ---- */

static void check_batch(const autoencoder_model *m, int batch, const char *what) {
    if (batch < 1 || batch > m->max_batch)
        fatal_internal("%s: batch %d outside [1, %d]", what, batch, m->max_batch);
}

/* images (B, C, H, W) -> a->moments (B, 2L, h, w), unclamped. */
static void encoder_forward(autoencoder_model *m, const float *images, int batch) {
    struct autoencoder_activations *a = m->act;
    conv_forward(m, &a->enc.conv_in, images, a->enc.conv_in_out, batch);
    for (int i = 0; i < m->shape.levels; i++) level_forward(m, &a->enc.levels[i], false, batch);
    mid_forward(m, &a->enc.mid, batch);
    head_forward(m, &a->enc.head, batch);
    conv_forward(m, &a->quant_conv, a->enc.head.out, a->moments, batch);
}

/* z (B, L, h, w) -> a->dec.head.out (B, C, H, W). */
static void decoder_forward(autoencoder_model *m, const float *z, int batch) {
    struct autoencoder_activations *a = m->act;
    conv_forward(m, &a->post_quant_conv, z, a->post_quant_out, batch);
    conv_forward(m, &a->dec.conv_in, a->post_quant_out, a->dec.conv_in_out, batch);
    mid_forward(m, &a->dec.mid, batch);
    for (int i = 0; i < m->shape.levels; i++) level_forward(m, &a->dec.levels[i], true, batch);
    head_forward(m, &a->dec.head, batch);
}

static float clamp_logvar(float v) { return v < AE_LOGVAR_MIN ? AE_LOGVAR_MIN : v > AE_LOGVAR_MAX ? AE_LOGVAR_MAX : v; }

/* Splits the moments (B, 2L, h, w) into mean and clamped logvar (B, L, h, w); either may be NULL. */
static void split_moments(const autoencoder_model *m, int batch, float *mean, float *logvar) {
    const size_t per = (size_t)m->shape.latent_channels * m->latent_size * m->latent_size;
    for (int b = 0; b < batch; b++) {
        const float *moments = m->act->moments + (size_t)b * 2 * per;
        if (mean) memcpy(mean + (size_t)b * per, moments, sizeof(float) * per);
        if (logvar)
            for (size_t k = 0; k < per; k++) logvar[(size_t)b * per + k] = clamp_logvar(moments[per + k]);
    }
}

void autoencoder_encode(autoencoder_model *m, const float *images, int batch, float *mean, float *logvar) {
    if (m->purpose == AE_FOR_DECODING) fatal_internal("autoencoder_encode: the model was laid out for decoding only");
    check_batch(m, batch, "autoencoder_encode");
    refresh_compute_params(m);
    encoder_forward(m, images, batch);
    split_moments(m, batch, mean, logvar);
}

void autoencoder_decode(autoencoder_model *m, const float *z, int batch, float *images) {
    if (m->purpose == AE_FOR_ENCODING) fatal_internal("autoencoder_decode: the model was laid out for encoding only");
    check_batch(m, batch, "autoencoder_decode");
    refresh_compute_params(m);
    decoder_forward(m, z, batch);
    const size_t image = (size_t)m->shape.in_channels * m->shape.input_size * m->shape.input_size;
    memcpy(images, m->act->dec.head.out, sizeof(float) * (size_t)batch * image);
}

/* ---- the training step ---- */

autoencoder_loss autoencoder_train_forward(autoencoder_model *m, const float *images, const float *noise, int batch,
                                           float kl_beta, autoencoder_reconstruction_loss kind) {
    struct autoencoder_activations *a = m->act;
    if (m->purpose != AE_FOR_TRAINING)
        fatal_internal("autoencoder_train_forward: the model was not laid out for training");
    check_batch(m, batch, "autoencoder_train_forward");
    const size_t image = (size_t)m->shape.in_channels * m->shape.input_size * m->shape.input_size;
    const size_t latent = (size_t)batch * m->shape.latent_channels * m->latent_size * m->latent_size;
    a->batch = batch;
    a->sampled = noise != NULL;
    a->kl_beta = kl_beta;
    a->kind = kind;
    memcpy(a->images, images, sizeof(float) * (size_t)batch * image);
    refresh_compute_params(m); /* (the images stay fp32: they are also the loss's target) */

    encoder_forward(m, a->images, batch);
    split_moments(m, batch, a->mean, a->logvar);
    /* KL = 0.5 * sum(mean^2 + var - 1 - logvar) / batch, summed in double in a fixed order */
    double kl = 0;
    for (size_t k = 0; k < latent; k++) {
        float lv = a->logvar[k];
        a->std[k] = expf(0.5f * lv);
        a->noise[k] = a->sampled ? noise[k] : 0.0f;
        a->z[k] = a->sampled ? a->mean[k] + a->std[k] * noise[k] : a->mean[k];
        kl += (double)a->mean[k] * a->mean[k] + exp((double)lv) - 1.0 - lv;
    }
    kl = 0.5 * kl / batch;
    round_act(m, a->z, latent); /* post_quant_conv's input */

    decoder_forward(m, a->z, batch);
    const float *rec = a->dec.head.out;
    const size_t n = (size_t)batch * image;
    double sum = 0;
    for (size_t k = 0; k < n; k++) {
        double diff = (double)rec[k] - a->images[k];
        sum += kind == AE_LOSS_L1 ? fabs(diff) : diff * diff;
    }
    m->posterior_mean = a->mean;
    m->posterior_logvar = a->logvar;
    m->latent = a->z;
    m->reconstruction = rec;
    autoencoder_loss loss = {.reconstruction = (float)(sum / (double)n), .kl = (float)kl};
    loss.total = (float)(sum / (double)n + (double)kl_beta * kl);
    return loss;
}

void autoencoder_train_backward(autoencoder_model *m, float d_loss, float *d_images) {
    struct autoencoder_activations *a = m->act;
    if (m->purpose != AE_FOR_TRAINING)
        fatal_internal("autoencoder_train_backward: the model was not laid out for training");
    const int B = a->batch, L = m->shape.latent_channels, last = m->shape.levels - 1;
    const size_t image = (size_t)m->shape.in_channels * m->shape.input_size * m->shape.input_size;
    const size_t per = (size_t)L * m->latent_size * m->latent_size; /* one sample's latent */
    float *d = a->pool[POOL_STREAM0], *other = a->pool[POOL_STREAM1];

    /* the reconstruction loss: d/d rec of mean |rec - x| (sign, 0 at 0 as torch) or mean (rec - x)^2 */
    const float *rec = a->dec.head.out;
    const size_t n = (size_t)B * image;
    const float scale = d_loss / (float)n;
    for (size_t k = 0; k < n; k++) {
        float diff = rec[k] - a->images[k];
        d[k] = a->kind == AE_LOSS_L1 ? scale * (float)((diff > 0) - (diff < 0)) : 2.0f * scale * diff;
    }
    round_act(m, d, n);

    /* decoder */
    head_backward(m, &a->dec.head, d, other, B);
    swap(&d, &other);
    for (int i = last; i >= 0; i--) level_backward(m, &a->dec.levels[i], true, &d, &other, B);
    mid_backward(m, &a->dec.mid, &d, &other, B);
    conv_backward(m, &a->dec.conv_in, other, 0.0f, d, a->post_quant_out, B);
    swap(&d, &other);
    conv_backward(m, &a->post_quant_conv, a->d_latent, 0.0f, d, a->z, B);

    /* the posterior: z = mean + std * noise (or mean), and kl_beta * KL; the clamp
     * passes the gradient only where the raw log-variance lies within its bounds
     * (inclusive, as torch.clamp) */
    const float kl_scale = d_loss * a->kl_beta / (float)B;
    for (int b = 0; b < B; b++) {
        const float *raw = a->moments + (size_t)b * 2 * per;
        float *d_mean = d + (size_t)b * 2 * per, *d_logvar = d_mean + per;
        for (size_t k = 0; k < per; k++) {
            size_t i = (size_t)b * per + k;
            float d_z = a->d_latent[i];
            d_mean[k] = d_z + kl_scale * a->mean[i];
            float g = 0.5f * kl_scale * (expf(a->logvar[i]) - 1.0f);
            if (a->sampled) g += d_z * 0.5f * a->std[i] * a->noise[i];
            bool inside = raw[per + k] >= AE_LOGVAR_MIN && raw[per + k] <= AE_LOGVAR_MAX;
            d_logvar[k] = inside ? g : 0.0f;
        }
    }

    round_act(m, d, (size_t)B * 2 * per);

    /* encoder */
    conv_backward(m, &a->quant_conv, other, 0.0f, d, a->enc.head.out, B);
    swap(&d, &other);
    head_backward(m, &a->enc.head, d, other, B);
    swap(&d, &other);
    mid_backward(m, &a->enc.mid, &d, &other, B);
    for (int i = last; i >= 0; i--) level_backward(m, &a->enc.levels[i], false, &d, &other, B);
    conv_backward(m, &a->enc.conv_in, d_images, 0.0f, d, a->images, B);
    /* the images are also the reconstruction's target: d/dx = -d/d rec of the loss */
    if (d_images)
        for (size_t k = 0; k < n; k++) {
            float diff = rec[k] - a->images[k];
            d_images[k] -= a->kind == AE_LOSS_L1 ? scale * (float)((diff > 0) - (diff < 0)) : 2.0f * scale * diff;
        }
}

/* The KL autoencoder on the GPU (see autoencoder_cuda.h): the network as a list
 * of units laid out once in device memory, their forward and backward composed
 * from the CUDA ops, and the training step around them, in the op order of
 * autoencoder.c's training step (so in fp32 the same math to float rounding,
 * and in bf16/fp16 the same roundings at the same places).
 *
 * The network is a chain: each unit reads the previous unit's output and
 * writes its own, so the encoder (conv_in ... quant_conv, giving the moments)
 * and the decoder (post_quant_conv ... conv_out, from the latent z) are each a
 * run of units, walked forward in order and backward in reverse. A unit is a
 * convolution (conv_in, the downsamplers, quant_conv, post_quant_conv), an
 * upsampler (nearest 2x, then a 3x3 convolution), an output head (GroupNorm,
 * SiLU, 3x3 convolution), a ResNet block (two such GroupNorm-SiLU-conv stages
 * and a residual, through a 1x1 convolution where the width changes) or the
 * mid block's one-head self-attention.
 *
 * Memory. Every forward activation a backward step reads has its own buffer.
 * The gradient flowing back alternates between two slots (each as large as the
 * largest feature map), two more serve as the units' backward temporaries (and
 * in the forward pass the shortcut's output), as in autoencoder.c.
 *
 * Notation in the shape comments: B batch, C channels, S = H * W pixels, T tokens
 * (= S in the attention), L latent channels, G GroupNorm groups. */
#ifdef LDM_HAVE_CUDA

#include "autoencoder_cuda.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "autoencoder_cuda_kernels.h"
#include "dit_cuda_kernels.h"
#include "fatal.h"
#include "ops_cuda_conv.h"

/* The feature-map slots of the backward pass (see the top of the file). */
enum { SLOT_GRAD0, SLOT_GRAD1, SLOT_TEMP0, SLOT_TEMP1, SLOT_COUNT };

typedef struct {
    int weight, bias;  /* table indices */
    conv2d_dims shape; /* batch = max_batch; each call sets its own */
} conv_op;

typedef struct {
    int gamma, beta; /* table indices */
    int channels, spatial;
    float *mean, *rstd; /* (B, G) */
} norm_op;

/* GroupNorm, SiLU, 3x3 convolution: each half of a ResNet block, and the output heads. */
typedef struct {
    norm_op norm;
    conv_op conv;
    const float *in;     /* (B, Cin, S) */
    float *normed, *act; /* (B, Cin, S) */
    float *out;          /* (B, Cout, S) */
} norm_act_conv;

/* diffusers' Attention as the VAE's mid block uses it: one head of width C. */
typedef struct {
    int channels, tokens;
    norm_op norm;
    int qkv_weight, qkv_bias; /* to_q, to_k, to_v follow each other in the table: one (3C, C) matrix, one (3C) bias */
    int out_weight, out_bias; /* to_out.0 */
    float *normed;            /* (B, C, T) */
    float *tokens_in;         /* (B, T, C) */
    float *qkv;               /* (B, T, 3C) */
    float *probs;             /* (B, 1, T, T) */
    float *attn, *proj;       /* (B, T, C) */
} attention_op;

typedef enum { UNIT_CONV, UNIT_UPSAMPLE, UNIT_HEAD, UNIT_RESNET, UNIT_ATTENTION } unit_kind;

typedef struct {
    unit_kind kind;
    const float *in; /* (B, Cin, S): the previous unit's output (the images, z for the first units) */
    float *out;      /* (B, Cout, S') */
    /* CONV and UPSAMPLE: the convolution (at the upsampled size); RESNET: the 1x1
     * shortcut where has_shortcut */
    conv_op conv;
    float *upsampled;         /* UPSAMPLE: (B, C, 2s, 2s) */
    norm_act_conv stage[2];   /* HEAD: stage[0] (out = its out); RESNET: both (out = stage[1].out + residual) */
    bool has_shortcut;        /* RESNET: in and out widths differ */
    attention_op attention;   /* ATTENTION: out = in + attention */
} unit;

struct autoencoder_cuda_units {
    unit *list;
    int count;
    int encoder_count;        /* list[0, encoder_count) the encoder, the rest the decoder */
    const float *moments;     /* (B, 2L, h, w): the encoder's last output (unclamped log-variance) */
    float *mean, *logvar, *z; /* (B, L, h, w) */
    float *d_latent;          /* (B, L, h, w) */
    /* the attention's backward (sized for the mid block, the only attention) */
    float *d_tokens_a, *d_tokens_b; /* (B, T, C) */
    float *d_qkv;                   /* (B, T, 3C) */
    float *d_scores;                /* (B, 1, T, T) */
    float *slot[SLOT_COUNT];        /* (slot_floats) each */
    size_t slot_floats;
    float *conv_scratch;            /* (conv_scratch_floats) */
    size_t conv_scratch_floats;
    double *sums;                   /* device (2): the reconstruction's sum, the KL's sum */
    double *host_sums;              /* page-locked (2) */
    /* the step, for backward and the loss */
    int batch;
    bool sampled;
    float kl_beta;
    autoencoder_reconstruction_loss kind;
};

/* ---- the parameters ---- */

/* The table index of the tensor named prefix + leaf + suffix, e.g.
 * "decoder.up_blocks.0.resnets.1" ".conv1" ".weight"; the table is
 * autoencoder.c's, so a missing name is a mistake here. */
static int param_index(const autoencoder_cuda_model *m, const char *prefix, const char *leaf, const char *suffix) {
    char name[PARAM_NAME_MAX];
    const int length = snprintf(name, sizeof name, "%s%s%s", prefix, leaf, suffix);
    const param_entry *e = length > 0 && (size_t)length < sizeof name ? param_table_find(&m->table, name) : NULL;
    if (!e) fatal_internal("GPU autoencoder: the parameter table has no '%s%s%s'", prefix, leaf, suffix);
    return (int)(e - m->table.entries);
}

static size_t offset_of(const autoencoder_cuda_model *m, int index) { return m->table.entries[index].offset; }
/* The fp32 master value (GroupNorm's affine parameters are read so) and the gradient. */
static const float *P(const autoencoder_cuda_model *m, int index) { return m->params + offset_of(m, index); }
static float *G(const autoencoder_cuda_model *m, int index) { return m->grads + offset_of(m, index); }
/* A conv or linear parameter as the GEMM reads it (rounded in bf16/fp16). */
static const float *W(const autoencoder_cuda_model *m, int index) { return m->compute_params + offset_of(m, index); }

/* ---- layout: the units, placed once measuring and once for real (arena.h) ---- */

typedef struct {
    autoencoder_cuda_model *m;
    arena *ar;
    int next;         /* units placed */
    const float *x;   /* (B, channels, size, size): the last unit's output */
    int channels, size;
    size_t largest;   /* floats of the largest feature map: a slot */
    size_t scratch;   /* floats of convolution scratch */
    size_t attention_channels, attention_tokens;
} builder;

static float *feature(builder *b, size_t count) {
    if (count > b->largest) b->largest = count;
    return arena_floats(b->ar, count);
}

static size_t map_floats(const builder *b, int channels, int size) {
    return (size_t)b->m->max_batch * (size_t)channels * (size_t)size * (size_t)size;
}

static unit *next_unit(builder *b, unit_kind kind) {
    if (b->next >= b->m->units->count) fatal_internal("GPU autoencoder: more units than planned");
    unit *u = &b->m->units->list[b->next++];
    memset(u, 0, sizeof(*u));
    u->kind = kind;
    u->in = b->x;
    return u;
}

/* The parameters `prefix``leaf`.weight and .bias. */
static void set_conv(builder *b, conv_op *c, const char *prefix, const char *leaf, int in_channels, int out_channels,
                     int size, int kernel, int stride, int pad_before, int pad_after) {
    c->weight = param_index(b->m, prefix, leaf, ".weight");
    c->bias = param_index(b->m, prefix, leaf, ".bias");
    c->shape = (conv2d_dims){b->m->max_batch, in_channels, out_channels, size, size, kernel, stride,
                             pad_before, pad_after, pad_before, pad_after};
    size_t scratch = conv2d_scratch_floats_cuda(&c->shape);
    if (scratch > b->scratch) b->scratch = scratch;
}

static void set_norm(builder *b, norm_op *n, const char *prefix, const char *leaf, int channels, int spatial) {
    const size_t statistics = (size_t)b->m->max_batch * (size_t)b->m->shape.norm_groups;
    n->gamma = param_index(b->m, prefix, leaf, ".weight");
    n->beta = param_index(b->m, prefix, leaf, ".bias");
    n->channels = channels;
    n->spatial = spatial;
    n->mean = arena_floats(b->ar, statistics);
    n->rstd = arena_floats(b->ar, statistics);
}

/* A convolution of the current map to out_channels (stride 2 halves the size). */
static void add_conv(builder *b, const char *name, int out_channels, int kernel, int stride, int pad_before,
                     int pad_after) {
    unit *u = next_unit(b, UNIT_CONV);
    set_conv(b, &u->conv, name, "", b->channels, out_channels, b->size, kernel, stride, pad_before, pad_after);
    b->channels = out_channels;
    b->size = conv2d_out_height(&u->conv.shape);
    u->out = feature(b, map_floats(b, b->channels, b->size));
    b->x = u->out;
}

static void set_stage(builder *b, norm_act_conv *h, const char *prefix, const char *norm_leaf, const char *conv_leaf,
                      int out_channels) {
    h->in = b->x;
    set_norm(b, &h->norm, prefix, norm_leaf, b->channels, b->size * b->size);
    set_conv(b, &h->conv, prefix, conv_leaf, b->channels, out_channels, b->size, 3, 1, 1, 1);
    h->normed = feature(b, map_floats(b, b->channels, b->size));
    h->act = feature(b, map_floats(b, b->channels, b->size));
    b->channels = out_channels;
    h->out = feature(b, map_floats(b, b->channels, b->size));
    b->x = h->out;
}

static void add_head(builder *b, const char *half, int out_channels) {
    unit *u = next_unit(b, UNIT_HEAD);
    set_stage(b, &u->stage[0], half, ".conv_norm_out", ".conv_out", out_channels);
    u->out = u->stage[0].out;
}

/* diffusers' ResnetBlock2D without time embedding. */
static void add_resnet(builder *b, const char *name, int out_channels) {
    unit *u = next_unit(b, UNIT_RESNET);
    const int in_channels = b->channels;
    set_stage(b, &u->stage[0], name, ".norm1", ".conv1", out_channels);
    set_stage(b, &u->stage[1], name, ".norm2", ".conv2", out_channels);
    u->has_shortcut = in_channels != out_channels;
    if (u->has_shortcut)
        set_conv(b, &u->conv, name, ".conv_shortcut", in_channels, out_channels, b->size, 1, 1, 0, 0);
    u->out = u->stage[1].out;
}

static void add_attention(builder *b, const char *name) {
    unit *u = next_unit(b, UNIT_ATTENTION);
    attention_op *a = &u->attention;
    autoencoder_cuda_model *m = b->m;
    const size_t B = (size_t)m->max_batch, C = (size_t)b->channels, T = (size_t)b->size * (size_t)b->size;
    a->channels = (int)C;
    a->tokens = (int)T;
    set_norm(b, &a->norm, name, ".group_norm", a->channels, a->tokens);
    a->qkv_weight = param_index(m, name, ".to_q", ".weight");
    a->qkv_bias = param_index(m, name, ".to_q", ".bias");
    if (offset_of(m, param_index(m, name, ".to_v", ".weight")) != offset_of(m, a->qkv_weight) + 2 * C * C ||
        offset_of(m, param_index(m, name, ".to_v", ".bias")) != offset_of(m, a->qkv_bias) + 2 * C)
        fatal_internal("GPU autoencoder: %s's q, k, v parameters are not contiguous", name);
    a->out_weight = param_index(m, name, ".to_out.0", ".weight");
    a->out_bias = param_index(m, name, ".to_out.0", ".bias");
    a->normed = feature(b, B * C * T);
    a->tokens_in = feature(b, B * T * C);
    a->qkv = arena_floats(b->ar, B * T * 3 * C);
    a->probs = arena_floats(b->ar, B * T * T);
    a->attn = feature(b, B * T * C);
    a->proj = feature(b, B * T * C);
    u->out = feature(b, B * C * T);
    b->x = u->out;
    if (C > b->attention_channels) b->attention_channels = C;
    if (T > b->attention_tokens) b->attention_tokens = T;
}

/* Nearest 2x, then a 3x3 convolution at the new size. */
static void add_upsample(builder *b, const char *name) {
    unit *u = next_unit(b, UNIT_UPSAMPLE);
    b->size *= 2;
    u->upsampled = feature(b, map_floats(b, b->channels, b->size));
    set_conv(b, &u->conv, name, ".conv", b->channels, b->channels, b->size, 3, 1, 1, 1);
    u->out = feature(b, map_floats(b, b->channels, b->size));
    b->x = u->out;
}

static void add_mid_block(builder *b, const char *half) {
    char name[PARAM_NAME_MAX];
    snprintf(name, sizeof name, "%s.mid_block.resnets.0", half);
    add_resnet(b, name, b->channels);
    snprintf(name, sizeof name, "%s.mid_block.attentions.0", half);
    add_attention(b, name);
    snprintf(name, sizeof name, "%s.mid_block.resnets.1", half);
    add_resnet(b, name, b->channels);
}

/* Units in a model of `levels` levels with `layers` ResNet blocks per down block:
 * the encoder's and the decoder's (one block more per level in the decoder). */
static int encoder_units(int levels, int layers) { return 1 + levels * layers + (levels - 1) + 3 + 1 + 1; }
static int decoder_units(int levels, int layers) { return 2 + 3 + levels * (layers + 1) + (levels - 1) + 1; }

/* images (B, C, H, W) -> the moments (B, 2L, h, w). */
static void build_encoder(builder *b) {
    const autoencoder_shape *s = &b->m->shape;
    const int last = s->levels - 1;
    char name[PARAM_NAME_MAX];
    b->x = b->m->images;
    b->channels = s->in_channels;
    b->size = s->input_size;
    add_conv(b, "encoder.conv_in", s->block_out_channels[0], 3, 1, 1, 1);
    for (int i = 0; i < s->levels; i++) {
        for (int j = 0; j < s->layers_per_block; j++) {
            snprintf(name, sizeof name, "encoder.down_blocks.%d.resnets.%d", i, j);
            add_resnet(b, name, s->block_out_channels[i]);
        }
        if (i == last) continue;
        /* diffusers' Downsample2D: F.pad(x, (0, 1, 0, 1)), then 3x3 stride 2 unpadded */
        snprintf(name, sizeof name, "encoder.down_blocks.%d.downsamplers.0.conv", i);
        add_conv(b, name, s->block_out_channels[i], 3, 2, 0, 1);
    }
    add_mid_block(b, "encoder");
    add_head(b, "encoder", 2 * s->latent_channels);
    add_conv(b, "quant_conv", 2 * s->latent_channels, 1, 1, 0, 0);
}

/* z (B, L, h, w) -> the reconstruction (B, C, H, W). */
static void build_decoder(builder *b) {
    const autoencoder_shape *s = &b->m->shape;
    const int last = s->levels - 1;
    char name[PARAM_NAME_MAX];
    b->x = b->m->units->z;
    b->channels = s->latent_channels;
    b->size = b->m->latent_size;
    add_conv(b, "post_quant_conv", s->latent_channels, 1, 1, 0, 0);
    add_conv(b, "decoder.conv_in", s->block_out_channels[last], 3, 1, 1, 1);
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

static void layout(autoencoder_cuda_model *m, arena *ar) {
    autoencoder_cuda_units *u = m->units;
    const size_t N = m->table.trainable_numel, B = (size_t)m->max_batch;
    const size_t latent = B * (size_t)m->shape.latent_channels * (size_t)m->latent_size * (size_t)m->latent_size;
    m->params = arena_floats(ar, N);
    m->grads = arena_floats(ar, N);
    m->compute_params = m->precision != PRECISION_FP32 ? arena_floats(ar, N) : m->params;
    m->images = arena_floats(ar, B * (size_t)m->shape.in_channels * (size_t)m->shape.input_size * m->shape.input_size);
    m->noise = arena_floats(ar, latent);
    u->mean = arena_floats(ar, latent);
    u->logvar = arena_floats(ar, latent);
    u->z = arena_floats(ar, latent);
    u->d_latent = arena_floats(ar, latent);
    u->sums = (double *)(void *)arena_floats(ar, 2 * 2); /* two doubles from a 64-byte boundary */

    builder b = {.m = m, .ar = ar};
    build_encoder(&b);
    u->encoder_count = b.next;
    u->moments = b.x;
    build_decoder(&b);
    if (b.next != u->count) fatal_internal("GPU autoencoder: %d units laid out, %d planned", b.next, u->count);

    for (int k = 0; k < SLOT_COUNT; k++) u->slot[k] = arena_floats(ar, b.largest);
    u->slot_floats = b.largest;
    const size_t C = b.attention_channels, T = b.attention_tokens;
    u->d_tokens_a = arena_floats(ar, B * T * C);
    u->d_tokens_b = arena_floats(ar, B * T * C);
    u->d_qkv = arena_floats(ar, B * T * 3 * C);
    u->d_scores = arena_floats(ar, B * T * T);
    u->conv_scratch = arena_floats(ar, b.scratch);
    u->conv_scratch_floats = b.scratch;
}

void autoencoder_cuda_create(autoencoder_cuda_model *m, const autoencoder_shape *shape, int max_batch,
                             ldm_precision precision) {
    memset(m, 0, sizeof(*m));
    if (precision != PRECISION_FP32 && precision != PRECISION_BF16 && precision != PRECISION_FP16)
        fatal_internal("autoencoder_cuda_create: unknown precision %d", (int)precision);
    if (max_batch < 1) fatal_internal("autoencoder_cuda_create: batch %d", max_batch);
    autoencoder_build_table(&m->table, shape); /* checks the shape (fatal_input) */
    m->shape = *shape;
    m->precision = precision;
    m->max_batch = max_batch;
    m->latent_size = shape->input_size >> (shape->levels - 1);
    m->units = xcalloc(1, sizeof(*m->units));
    m->units->count = encoder_units(shape->levels, shape->layers_per_block) +
                      decoder_units(shape->levels, shape->layers_per_block);
    m->units->list = xcalloc((size_t)m->units->count, sizeof(unit));

    arena ar;
    arena_begin_measure(&ar);
    layout(m, &ar);
    m->memory_bytes = (ar.used + ARENA_ALIGNMENT - 1) / ARENA_ALIGNMENT * ARENA_ALIGNMENT;
    /* parameters and gradients start zero */
    m->memory = cuda_model_memory_alloc(m->memory_bytes, "the autoencoder", max_batch, precision);
    /* Placing into the device block: the arena only does address arithmetic on
     * its base (cudaMalloc's 256-byte alignment keeps the 64-byte offsets aligned). */
    ar = (arena){.base = m->memory, .capacity = m->memory_bytes};
    layout(m, &ar);
    m->units->host_sums = cuda_pinned_alloc(2 * sizeof(double));
    m->gemm = gemm_cuda_context_create();
    m->stream = dit_cuda_stream_create();
}

void autoencoder_cuda_destroy(autoencoder_cuda_model *m) {
    if (m->stream) {
        dit_cuda_stream_synchronize(m->stream);
        dit_cuda_stream_destroy(m->stream);
    }
    if (m->gemm) gemm_cuda_context_destroy(m->gemm);
    cuda_buffer_free(m->memory);
    if (m->units) {
        cuda_pinned_free(m->units->host_sums);
        free(m->units->list);
        free(m->units);
    }
    param_table_free(&m->table);
    memset(m, 0, sizeof(*m));
}

/* ---- copies ---- */

void autoencoder_cuda_upload_params(autoencoder_cuda_model *m, const float *host_params) {
    dit_cuda_stream_synchronize(m->stream); /* nothing queued may still read the old values */
    cuda_copy_to_device(m->params, host_params, sizeof(float) * m->table.trainable_numel);
}

void autoencoder_cuda_download_grads(autoencoder_cuda_model *m, float *host_grads) {
    dit_cuda_stream_synchronize(m->stream);
    cuda_copy_to_host(host_grads, m->grads, sizeof(float) * m->table.trainable_numel);
}

void autoencoder_cuda_zero_grad(autoencoder_cuda_model *m) {
    dit_cuda_zero_async(m->grads, sizeof(float) * m->table.trainable_numel, m->stream);
}

/* ---- the ops with the model's parameters, each output rounded where autoencoder.c rounds it ---- */

/* bf16/fp16: x (n) rounded in place to the format (nothing in fp32). */
static void round_act(const autoencoder_cuda_model *m, float *x, size_t n) {
    precision_round_cuda(m->precision, x, n, m->stream);
}

static size_t map_numel(int batch, int channels, int height, int width) {
    return (size_t)batch * (size_t)channels * (size_t)height * (size_t)width;
}

static void conv_forward(const autoencoder_cuda_model *m, const conv_op *c, const float *in, float *out, int batch) {
    conv2d_dims shape = c->shape;
    shape.batch = batch;
    conv2d_forward_cuda(m->gemm, out, in, W(m, c->weight), W(m, c->bias), &shape, m->units->conv_scratch,
                        m->units->conv_scratch_floats, m->stream);
    round_act(m, out, map_numel(batch, shape.out_channels, conv2d_out_height(&shape), conv2d_out_width(&shape)));
}

/* d_in (or NULL) = d_in_beta d_in + dL/din; the parameter gradients accumulate. */
static void conv_backward(const autoencoder_cuda_model *m, const conv_op *c, float *d_in, float d_in_beta,
                          const float *d_out, const float *in, int batch) {
    conv2d_dims shape = c->shape;
    shape.batch = batch;
    conv2d_backward_cuda(m->gemm, d_in, d_in_beta, G(m, c->weight), G(m, c->bias), d_out, in, W(m, c->weight), &shape,
                         m->units->conv_scratch, m->units->conv_scratch_floats, m->stream);
    if (d_in) round_act(m, d_in, map_numel(batch, shape.in_channels, shape.height, shape.width));
}

static size_t norm_numel(const norm_op *n, int batch) { return (size_t)batch * n->channels * n->spatial; }

static void norm_forward(const autoencoder_cuda_model *m, const norm_op *n, const float *in, float *out, int batch) {
    groupnorm_forward_cuda(out, n->mean, n->rstd, in, P(m, n->gamma), P(m, n->beta), batch, n->channels, n->spatial,
                           m->shape.norm_groups, AE_GROUPNORM_EPS, m->stream);
    round_act(m, out, norm_numel(n, batch));
}

static void norm_backward(const autoencoder_cuda_model *m, const norm_op *n, float *d_in, float d_in_beta,
                          const float *d_out, const float *in, int batch) {
    groupnorm_backward_cuda(d_in, d_in_beta, G(m, n->gamma), G(m, n->beta), d_out, in, n->mean, n->rstd,
                            P(m, n->gamma), batch, n->channels, n->spatial, m->shape.norm_groups, m->stream);
    round_act(m, d_in, norm_numel(n, batch));
}

static void stage_forward(const autoencoder_cuda_model *m, const norm_act_conv *h, int batch) {
    const size_t n = norm_numel(&h->norm, batch);
    norm_forward(m, &h->norm, h->in, h->normed, batch);
    silu_forward_cuda(h->act, h->normed, n, m->stream);
    round_act(m, h->act, n);
    conv_forward(m, &h->conv, h->act, h->out, batch);
}

/* d_in = d_in_beta d_in + the gradient through the stage of d_out; scratch holds
 * the gradient between the ops. */
static void stage_backward(const autoencoder_cuda_model *m, const norm_act_conv *h, const float *d_out, float *d_in,
                           float d_in_beta, float *scratch, int batch) {
    const size_t n = norm_numel(&h->norm, batch);
    conv_backward(m, &h->conv, scratch, 0.0f, d_out, h->act, batch);
    silu_backward_cuda(scratch, scratch, h->normed, n, m->stream);
    round_act(m, scratch, n);
    norm_backward(m, &h->norm, d_in, d_in_beta, scratch, h->in, batch);
}

/* The linear layers of the attention (the rounded weights, fp32 GEMMs: the
 * values are the format's already). */
static void linear(const autoencoder_cuda_model *m, float *out, const float *in, int weight, int bias, int rows,
                   int in_features, int out_features) {
    linear_forward_cuda(m->gemm, out, in, W(m, weight), W(m, bias), rows, in_features, out_features, PRECISION_FP32,
                        m->stream);
}

static void linear_back(const autoencoder_cuda_model *m, float *d_in, int weight, int bias, const float *d_out,
                        const float *in, int rows, int in_features, int out_features) {
    linear_backward_cuda(m->gemm, d_in, 0.0f, G(m, weight), G(m, bias), d_out, in, W(m, weight), rows, in_features,
                         out_features, PRECISION_FP32, m->stream);
    round_act(m, d_in, (size_t)rows * in_features);
}

/* ---- the units ---- */

static void attention_forward(const autoencoder_cuda_model *m, const unit *u, int batch) {
    const attention_op *a = &u->attention;
    const int B = batch, T = a->tokens, C = a->channels;
    const size_t n = (size_t)B * T * C;
    norm_forward(m, &a->norm, u->in, a->normed, batch);
    transpose_channels_tokens_forward_cuda(a->tokens_in, a->normed, B, C, T, m->stream);
    linear(m, a->qkv, a->tokens_in, a->qkv_weight, a->qkv_bias, B * T, C, 3 * C);
    round_act(m, a->qkv, 3 * n);
    /* scale 1/sqrt(C): one head of width C */
    attention_forward_cuda(m->gemm, a->attn, a->probs, a->qkv, B, T, 1, C, m->precision, m->stream);
    round_act(m, a->attn, n);
    linear(m, a->proj, a->attn, a->out_weight, a->out_bias, B * T, C, C);
    round_act(m, a->proj, n);
    transpose_channels_tokens_backward_cuda(u->out, a->proj, B, C, T, m->stream); /* (B, T, C) -> (B, C, T) */
    add_forward_cuda(u->out, u->out, u->in, n, m->stream);
    round_act(m, u->out, n);
}

static void attention_backward(const autoencoder_cuda_model *m, const unit *u, const float *d_out, float *d_in,
                               int batch) {
    const attention_op *a = &u->attention;
    const autoencoder_cuda_units *x = m->units;
    const int B = batch, T = a->tokens, C = a->channels;
    const size_t n = (size_t)B * T * C;
    float *t0 = x->slot[SLOT_TEMP0];
    transpose_channels_tokens_forward_cuda(x->d_tokens_a, d_out, B, C, T, m->stream);
    linear_back(m, x->d_tokens_b, a->out_weight, a->out_bias, x->d_tokens_a, a->attn, B * T, C, C);
    attention_backward_cuda(m->gemm, x->d_qkv, x->d_scores, x->d_tokens_b, a->qkv, a->probs, B, T, 1, C, m->precision,
                            m->stream);
    round_act(m, x->d_qkv, 3 * n);
    linear_back(m, x->d_tokens_a, a->qkv_weight, a->qkv_bias, x->d_qkv, a->tokens_in, B * T, C, 3 * C);
    transpose_channels_tokens_backward_cuda(t0, x->d_tokens_a, B, C, T, m->stream);
    dit_cuda_copy_async(d_in, d_out, sizeof(float) * n, m->stream); /* the residual */
    norm_backward(m, &a->norm, d_in, 1.0f, t0, u->in, batch);
}

static void unit_forward(const autoencoder_cuda_model *m, const unit *u, int batch) {
    switch (u->kind) {
    case UNIT_CONV:
        conv_forward(m, &u->conv, u->in, u->out, batch);
        break;
    case UNIT_UPSAMPLE: {
        const conv2d_dims *s = &u->conv.shape; /* at the upsampled size */
        upsample_nearest2x_forward_cuda(u->upsampled, u->in, batch, s->in_channels, s->height / 2, s->width / 2,
                                        m->stream);
        conv_forward(m, &u->conv, u->upsampled, u->out, batch);
        break;
    }
    case UNIT_HEAD:
        stage_forward(m, &u->stage[0], batch);
        break;
    case UNIT_RESNET: {
        const size_t n = norm_numel(&u->stage[1].norm, batch);
        stage_forward(m, &u->stage[0], batch);
        stage_forward(m, &u->stage[1], batch);
        const float *residual = u->in;
        if (u->has_shortcut) { /* a temporary slot: the backward pass is not running */
            float *shortcut = m->units->slot[SLOT_TEMP1];
            conv_forward(m, &u->conv, u->in, shortcut, batch);
            residual = shortcut;
        }
        add_forward_cuda(u->out, u->out, residual, n, m->stream);
        round_act(m, u->out, n);
        break;
    }
    case UNIT_ATTENTION:
        attention_forward(m, u, batch);
        break;
    }
}

/* d_out (the gradient of u->out) -> d_in (of u->in) overwritten, or NULL (the
 * encoder's first convolution: the images need none); uses the temporary slots. */
static void unit_backward(const autoencoder_cuda_model *m, const unit *u, const float *d_out, float *d_in,
                          int batch) {
    float *t0 = m->units->slot[SLOT_TEMP0], *t1 = m->units->slot[SLOT_TEMP1];
    switch (u->kind) {
    case UNIT_CONV:
        conv_backward(m, &u->conv, d_in, 0.0f, d_out, u->in, batch);
        break;
    case UNIT_UPSAMPLE: {
        const conv2d_dims *s = &u->conv.shape;
        conv_backward(m, &u->conv, t0, 0.0f, d_out, u->upsampled, batch);
        upsample_nearest2x_backward_cuda(d_in, t0, batch, s->in_channels, s->height / 2, s->width / 2, m->stream);
        round_act(m, d_in, map_numel(batch, s->in_channels, s->height / 2, s->width / 2));
        break;
    }
    case UNIT_HEAD:
        stage_backward(m, &u->stage[0], d_out, d_in, 0.0f, t0, batch);
        break;
    case UNIT_RESNET:
        stage_backward(m, &u->stage[1], d_out, t1, 0.0f, t0, batch);
        if (u->has_shortcut)
            conv_backward(m, &u->conv, d_in, 0.0f, d_out, u->in, batch);
        else
            dit_cuda_copy_async(d_in, d_out, sizeof(float) * norm_numel(&u->stage[1].norm, batch), m->stream);
        stage_backward(m, &u->stage[0], t1, d_in, 1.0f, t0, batch);
        break;
    case UNIT_ATTENTION:
        attention_backward(m, u, d_out, d_in, batch);
        break;
    }
}

/* ---- the training step ---- */

static size_t image_numel(const autoencoder_cuda_model *m, int batch) {
    return map_numel(batch, m->shape.in_channels, m->shape.input_size, m->shape.input_size);
}

static size_t latent_per_sample(const autoencoder_cuda_model *m) {
    return (size_t)m->shape.latent_channels * (size_t)m->latent_size * (size_t)m->latent_size;
}

void autoencoder_cuda_train_forward(autoencoder_cuda_model *m, int batch, int sample_posterior, float kl_beta,
                                    autoencoder_reconstruction_loss kind) {
    autoencoder_cuda_units *u = m->units;
    if (batch < 1 || batch > m->max_batch)
        fatal_internal("autoencoder_cuda_train_forward: batch %d outside [1, %d]", batch, m->max_batch);
    u->batch = batch;
    u->sampled = sample_posterior != 0;
    u->kl_beta = kl_beta;
    u->kind = kind;
    if (m->precision != PRECISION_FP32) { /* the weights the GEMMs read, from the current master weights */
        dit_cuda_copy_async(m->compute_params, m->params, sizeof(float) * m->table.trainable_numel, m->stream);
        round_act(m, m->compute_params, m->table.trainable_numel);
    }
    for (int k = 0; k < u->encoder_count; k++) unit_forward(m, &u->list[k], batch);
    autoencoder_posterior_forward_cuda(u->mean, u->logvar, u->z, &u->sums[1], u->moments,
                                       u->sampled ? m->noise : NULL, batch, (int)latent_per_sample(m), m->precision,
                                       m->stream);
    for (int k = u->encoder_count; k < u->count; k++) unit_forward(m, &u->list[k], batch);
    m->reconstruction = u->list[u->count - 1].out;
    autoencoder_reconstruction_sum_cuda(&u->sums[0], m->reconstruction, m->images, image_numel(m, batch),
                                        kind == AE_LOSS_L2, m->stream);
    m->posterior_mean = u->mean;
    m->posterior_logvar = u->logvar;
    m->latent = u->z;
}

/* The gradient flowing back alternates between the two gradient slots: each
 * unit reads *d and leaves its result in the other one. */
static void swap(float **d, float **other) {
    float *t = *d;
    *d = *other;
    *other = t;
}

static void need_forward(const autoencoder_cuda_model *m, const char *what) {
    if (m->units->batch < 1) fatal_internal("%s: no forward pass was queued", what);
}

void autoencoder_cuda_train_backward(autoencoder_cuda_model *m, float d_loss) {
    autoencoder_cuda_units *u = m->units;
    need_forward(m, "autoencoder_cuda_train_backward");
    const int B = u->batch;
    float *d = u->slot[SLOT_GRAD0], *other = u->slot[SLOT_GRAD1];
    autoencoder_reconstruction_backward_cuda(d, m->reconstruction, m->images, image_numel(m, B),
                                             u->kind == AE_LOSS_L2, d_loss, m->precision, m->stream);
    /* the decoder, down to the latent's gradient */
    for (int k = u->count - 1; k > u->encoder_count; k--) {
        unit_backward(m, &u->list[k], d, other, B);
        swap(&d, &other);
    }
    unit_backward(m, &u->list[u->encoder_count], d, u->d_latent, B);
    /* the posterior and kl_beta * KL: the moments' gradient (B, 2L, h, w) */
    const float kl_scale = d_loss * u->kl_beta / (float)B;
    autoencoder_posterior_backward_cuda(d, u->d_latent, u->moments, u->mean, u->logvar, u->sampled ? m->noise : NULL,
                                        kl_scale, B, (int)latent_per_sample(m), m->precision, m->stream);
    /* the encoder */
    for (int k = u->encoder_count - 1; k >= 0; k--) {
        unit_backward(m, &u->list[k], d, k > 0 ? other : NULL, B);
        swap(&d, &other);
    }
}

autoencoder_loss autoencoder_cuda_loss(autoencoder_cuda_model *m) {
    autoencoder_cuda_units *u = m->units;
    need_forward(m, "autoencoder_cuda_loss");
    cuda_copy_to_host_async(u->host_sums, u->sums, 2 * sizeof(double), m->stream);
    dit_cuda_stream_synchronize(m->stream);
    /* as autoencoder_train_forward: KL = 0.5 sum / batch; the mean over every value */
    const double n = (double)image_numel(m, u->batch), kl = 0.5 * u->host_sums[1] / u->batch;
    autoencoder_loss loss = {.reconstruction = (float)(u->host_sums[0] / n), .kl = (float)kl};
    loss.total = (float)(u->host_sums[0] / n + (double)u->kl_beta * kl);
    return loss;
}

#endif /* LDM_HAVE_CUDA */

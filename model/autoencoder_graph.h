/* The KL autoencoder's network, written once for every device and precision:
 * the parameter table (diffusers' AutoencoderKL names), the encoder and the
 * decoder as one list of units, their memory layout, their forward and backward,
 * and the training step's forward and backward bodies. The CPU model
 * (autoencoder.c) and the GPU model (autoencoder_cuda.c) each own an ae_graph
 * and differ only in the backend it calls through: a small table of ops
 * (ae_backend) over host memory (autoencoder_backend_cpu.c: ops.h, ops_conv.h)
 * or device memory (autoencoder_cuda.c: ops_cuda.h, ops_cuda_conv.h,
 * autoencoder_cuda_kernels.h). Adding a layer is one edit here that both devices
 * get.
 *
 * The network is a chain: each unit reads the previous unit's output (the first
 * unit of each half reads the half's input: the images, or the latent z) and
 * writes its own. The encoder (conv_in ... quant_conv, giving the moments) and the
 * decoder (post_quant_conv ... conv_out) are each a run of units, walked forward
 * in order and backward in reverse. A unit is a convolution (conv_in, the
 * downsamplers, quant_conv, post_quant_conv), an upsampler (nearest 2x, then a
 * 3x3 convolution), an output head (GroupNorm, SiLU, 3x3 convolution), a ResNet
 * block (two such GroupNorm-SiLU-conv stages and a residual, through a 1x1
 * convolution where the width changes) or the mid block's one-head
 * self-attention.
 *
 * Precision is the graph's parameter (precision.h): in bf16 or fp16 every
 * activation and activation gradient is rounded to the format where it is made,
 * convolutions and linears read a rounded copy of the weights made at each
 * forward pass and multiply in fp32; GroupNorm statistics and affine parameters,
 * softmax, the posterior and the loss stay fp32.
 *
 * Memory. Four slots, each as large as the largest feature map, serve two
 * purposes: laid out "pooled" (inference) they hold the forward pass itself (unit
 * outputs alternate between the two stream slots, a unit's intermediates between
 * the two temp slots), so encoding needs no per-layer activations; in training
 * every forward activation has its own buffer and the slots hold the gradient
 * flowing back (the stream slots) and the backward's temporaries (and in the
 * forward pass a ResNet shortcut's output). The layout runs over an arena
 * (arena.h) three times: learning the slot size, measuring the total, placing;
 * the owner allocates the block in between (host or device memory). Nothing here
 * allocates during a step.
 *
 * Notation in the shape comments: B batch, C channels, S = H * W pixels, T tokens
 * (= S in the attention), L latent channels, G GroupNorm groups. */
#ifndef LDM_AUTOENCODER_GRAPH_H
#define LDM_AUTOENCODER_GRAPH_H

#include <stdbool.h>
#include <stddef.h>

#include "arena.h"
#include "autoencoder.h"
#include "ops_conv.h"
#include "params.h"
#include "precision.h"

typedef struct ae_graph ae_graph;

/* The ops the graph is composed of, on one device. Every pointer is in that
 * device's memory; conventions as ops.h and ops_conv.h (parameter gradients
 * accumulate, activation gradients are overwritten or d_in = d_in_beta d_in +
 * ...). An op reads what it needs of the device (a stream, a GEMM context,
 * the convolution scratch, the precision) from the graph. */
typedef struct {
    /* Floats of scratch a convolution of this shape needs (sized once, at layout). */
    size_t (*conv_scratch_floats)(const conv2d_dims *shape);
    /* Prepares what convolutions of this shape will run (at layout; NULL: nothing to prepare). */
    void (*conv_plan)(const ae_graph *g, const conv2d_dims *shape);
    void (*conv_forward)(const ae_graph *g, float *out, const float *in, const float *weight, const float *bias,
                         const conv2d_dims *shape);
    void (*conv_backward)(const ae_graph *g, float *d_in, float d_in_beta, float *d_weight, float *d_bias,
                          const float *d_out, const float *in, const float *weight, const conv2d_dims *shape);
    /* eps AE_GROUPNORM_EPS, groups the shape's norm_groups */
    void (*groupnorm_forward)(const ae_graph *g, float *out, float *mean, float *rstd, const float *in,
                              const float *gamma, const float *beta, int batch, int channels, int spatial);
    void (*groupnorm_backward)(const ae_graph *g, float *d_in, float d_in_beta, float *d_gamma, float *d_beta,
                               const float *d_out, const float *in, const float *mean, const float *rstd,
                               const float *gamma, int batch, int channels, int spatial);
    void (*silu_forward)(const ae_graph *g, float *out, const float *in, size_t n);
    void (*silu_backward)(const ae_graph *g, float *d_in, const float *d_out, const float *in, size_t n);
    /* Optional, both or neither (NULL: silu_forward and silu_backward): SiLU in
     * training with its derivative kept in place of its input (ops.h's
     * silu_forward_keep_slope), and the backward from it. */
    void (*silu_forward_keep_slope)(const ae_graph *g, float *out, float *x_then_slope, size_t n);
    void (*silu_backward_from_slope)(const ae_graph *g, float *d_in, const float *d_out, const float *slope, size_t n);
    void (*add)(const ae_graph *g, float *out, const float *a, const float *b, size_t n);
    void (*copy)(const ae_graph *g, float *dst, const float *src, size_t n);
    void (*upsample_forward)(const ae_graph *g, float *out, const float *in, int batch, int channels, int height,
                             int width);
    void (*upsample_backward)(const ae_graph *g, float *d_in, const float *d_out, int batch, int channels, int height,
                              int width);
    /* (B, C, T) -> (B, T, C), and (B, T, C) -> (B, C, T) */
    void (*channels_to_tokens)(const ae_graph *g, float *out, const float *in, int batch, int channels, int tokens);
    void (*tokens_to_channels)(const ae_graph *g, float *out, const float *in, int batch, int channels, int tokens);
    /* fp32 GEMMs: the operands hold the format's values already */
    void (*linear_forward)(const ae_graph *g, float *out, const float *in, const float *weight, const float *bias,
                           int rows, int sample_rows, int in_features, int out_features);
    void (*linear_backward)(const ae_graph *g, float *d_in, float *d_weight, float *d_bias, const float *d_out,
                            const float *in, const float *weight, int rows, int in_features, int out_features);
    /* Prepares the attention unit's linears (q, k, v together; the output) and its
     * two products at this largest shape, at layout, and returns the floats of
     * scratch its ops need, which they find in conv_scratch (NULL: nothing to
     * prepare, no scratch). */
    size_t (*attention_plan)(const ae_graph *g, int batch, int tokens, int width);
    /* one head of width `width`, in the graph's precision */
    void (*attention_forward)(const ae_graph *g, float *out, float *probs, const float *qkv, int batch, int tokens,
                              int width);
    void (*attention_backward)(const ae_graph *g, float *d_qkv, float *d_scores, const float *d_out,
                               const float *qkv, const float *probs, int batch, int tokens, int width);
    /* x (n) rounded in place to the graph's precision (nothing in fp32) */
    void (*round)(const ae_graph *g, float *x, size_t n);
    /* The posterior and the loss, as autoencoder_cuda_kernels.h describes them
     * (moments (B, 2 per_sample); noise NULL: z is the mean; sums in double). */
    void (*posterior_forward)(const ae_graph *g, float *mean, float *logvar, float *z, double *kl_sum,
                              const float *moments, const float *noise, int batch, int per_sample);
    void (*posterior_backward)(const ae_graph *g, float *d_moments, const float *d_z, const float *moments,
                               const float *mean, const float *logvar, const float *noise, float kl_scale, int batch,
                               int per_sample);
    void (*reconstruction_sum)(const ae_graph *g, double *sum, const float *rec, const float *target, size_t n,
                               bool l2);
    void (*reconstruction_backward)(const ae_graph *g, float *d_rec, const float *rec, const float *target, size_t n,
                                    bool l2, float d_loss);
} ae_backend;

/* The CPU's ops (autoencoder_backend_cpu.c). */
extern const ae_backend ae_backend_cpu;

enum { AE_SLOT_STREAM0, AE_SLOT_STREAM1, AE_SLOT_TEMP0, AE_SLOT_TEMP1, AE_SLOT_COUNT };

typedef struct {
    size_t weight, bias; /* offsets into the flat parameter vector */
    conv2d_dims shape;   /* batch = max_batch; each call sets its own */
} ae_conv;

typedef struct {
    size_t gamma, beta; /* offsets */
    int channels, spatial;
    float *mean, *rstd; /* (B, G) */
} ae_norm;

/* GroupNorm, SiLU, 3x3 convolution: each half of a ResNet block, and the output heads. */
typedef struct {
    ae_norm norm;
    ae_conv conv;
    float *normed, *act; /* (B, Cin, S); in training with silu_forward_keep_slope, normed holds SiLU's slope after the forward */
    float *out;          /* (B, Cout, S) */
} ae_stage;

/* diffusers' Attention as the VAE's mid block uses it: one head of width C. */
typedef struct {
    int channels, tokens;
    ae_norm norm;
    /* to_q, to_k, to_v follow each other in the table: one (3C, C) matrix, one (3C) bias */
    size_t qkv_weight, qkv_bias;
    size_t out_weight, out_bias; /* to_out.0 */
    float *normed;               /* (B, C, T) */
    float *tokens_in;            /* (B, T, C) */
    float *qkv;                  /* (B, T, 3C): (B, T, 3, heads 1, C) as the attention op reads it */
    float *probs;                /* (B, 1, T, T) */
    float *attn, *proj;          /* (B, T, C) */
} ae_attention;

typedef enum { AE_UNIT_CONV, AE_UNIT_UPSAMPLE, AE_UNIT_HEAD, AE_UNIT_RESNET, AE_UNIT_ATTENTION } ae_unit_kind;

typedef struct {
    ae_unit_kind kind;
    float *out; /* (B, Cout, S') */
    /* CONV and UPSAMPLE: the convolution (at the upsampled size); RESNET: the 1x1
     * shortcut where has_shortcut */
    ae_conv conv;
    float *upsampled;       /* UPSAMPLE: (B, C, 2s, 2s) */
    ae_stage stage[2];      /* HEAD: stage[0] (out = its out); RESNET: both (out = stage[1].out + residual) */
    bool has_shortcut;      /* RESNET: in and out widths differ */
    ae_attention attention; /* ATTENTION: out = in + attention */
} ae_unit;

/* What the layout holds. */
typedef struct {
    bool encoder, decoder; /* which halves' units */
    bool training;         /* gradients, every activation kept, the step's buffers */
    bool pooled;           /* forward activations in the slots (inference only) */
} ae_graph_parts;

struct ae_graph {
    /* Set by the owner before laying out. */
    const ae_backend *ops;
    void *device; /* the backend's own state (the GPU model), or NULL */
    autoencoder_shape shape;
    ldm_precision precision;
    int max_batch;
    int latent_size; /* input_size / 2^(levels - 1) */
    ae_graph_parts parts;
    size_t param_count; /* the table's trainable_numel */

    /* Laid out by ae_graph_layout. */
    float *params;         /* (param_count) fp32 master */
    float *grads;          /* (param_count); NULL unless training */
    float *compute_params; /* (param_count) what convs and linears read: params in fp32, else a rounded copy */
    ae_unit *units;        /* host array, made by ae_graph_init */
    int unit_count;
    int encoder_count;      /* units[0, encoder_count) the encoder, the rest the decoder */
    float *slot[AE_SLOT_COUNT]; /* (slot_floats) each; see the top of this file */
    size_t slot_floats;
    float *conv_scratch; /* (conv_scratch_floats) the convolutions' scratch, and the attention's */
    size_t conv_scratch_floats;
    /* training only */
    float *images;                  /* (B, C, H, W) the step's input, the loss's target */
    float *noise;                   /* (B, L, h, w) the posterior's standard normal draws */
    float *mean, *logvar, *z;       /* (B, L, h, w); logvar clamped */
    float *d_latent;                /* (B, L, h, w) */
    double *sums;                   /* (2): the reconstruction's sum, the KL's sum */
    float *d_tokens_a, *d_tokens_b; /* (B, T, C) the attention's backward */
    float *d_qkv;                   /* (B, T, 3C) */
    float *d_scores;                /* (B, 1, T, T) */

    /* The training step, kept for backward and the loss. */
    int batch;
    bool sampled; /* z = mean + exp(logvar / 2) noise (else z = mean) */
    float kl_beta;
    autoencoder_reconstruction_loss kind;
};

/* The tensors in diffusers' state_dict order (encoder, decoder, quant_conv,
 * post_quant_conv), the attention's q, k, v weights and biases grouped. The shape
 * must be checked already. */
void ae_graph_build_table(param_table *table, const autoencoder_shape *shape);

/* Makes the unit list for the fields set above (host memory, once). */
void ae_graph_init(ae_graph *g);
void ae_graph_free(ae_graph *g);
/* The bytes the layout needs (two measuring passes: the first learns the slot
 * size, the second the total), parameters named through `table`. */
size_t ae_graph_measure(ae_graph *g, const param_table *table);
/* Places every buffer into `ar`, a placing arena of at least the measured bytes
 * (host or device memory: the arena only does address arithmetic on its base). */
void ae_graph_place(ae_graph *g, arena *ar, const param_table *table);

/* The moments (B, 2L, h, w), the encoder's last output (log-variance unclamped),
 * and the decoder's output (B, C, H, W). */
const float *ae_graph_moments(const ae_graph *g);
const float *ae_graph_decoded(const ae_graph *g);

/* bf16/fp16: compute_params = params rounded (nothing in fp32). */
void ae_graph_refresh_weights(const ae_graph *g);
/* images (B, C, H, W) through the encoder; z (B, L, h, w) through the decoder. */
void ae_graph_encode(const ae_graph *g, const float *images, int batch);
void ae_graph_decode(const ae_graph *g, const float *z, int batch);

/* The training step from g->images and (when sampled) g->noise: encode, the
 * posterior (z = mean + exp(logvar / 2) noise, or the mean), decode, the loss's
 * sums into g->sums. Keeps what backward needs. */
void ae_graph_train_forward(ae_graph *g, int batch, bool sampled, float kl_beta, autoencoder_reconstruction_loss kind);
/* Accumulates d_loss * d total / d param into g->grads; d_images (B, C, H, W) the
 * gradient through the encoder (overwritten), or NULL. */
void ae_graph_train_backward(const ae_graph *g, float d_loss, float *d_images);
/* The loss's parts from the sums of the step (host doubles). */
autoencoder_loss ae_graph_loss(const ae_graph *g, const double sums[2]);

/* The CPU's d loss / d rec of one value (scale = d_loss / values): 2 scale (rec -
 * target), or scale sign(rec - target) with 0 at 0 as torch. */
float ae_reconstruction_gradient(float rec, float target, float scale, bool l2);

#endif

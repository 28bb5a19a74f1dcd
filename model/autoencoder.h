/* The KL autoencoder of the latent diffusion first stage (Rombach et al. 2022), with
 * the parameter names and shapes of diffusers' AutoencoderKL, on the CPU in fp32.
 *
 * encoder: conv_in; per level i a down block of layers_per_block ResNet blocks
 * (GroupNorm, SiLU, 3x3 conv, twice, 1x1 conv shortcut when the width changes) and,
 * except on the last level, a stride-2 3x3 conv on the input padded (0, 1, 0, 1);
 * mid block (ResNet, one-head spatial self-attention with GroupNorm, ResNet; the
 * attention left out when the shape says without_mid_attention);
 * GroupNorm, SiLU, conv_out to 2 x latent channels; quant_conv (1x1) gives the
 * posterior's mean and log-variance (clamped to [-30, 20]).
 * decoder: post_quant_conv (1x1), conv_in, mid block, up blocks over the reversed
 * widths with layers_per_block + 1 ResNet blocks and, except on the last, nearest 2x
 * upsampling and a 3x3 conv; GroupNorm, SiLU, conv_out. GroupNorm eps is 1e-6.
 * The same code builds a tiny test model and the Stable Diffusion VAE
 * (block_out_channels [128, 256, 512, 512], layers_per_block 2, 4 latent channels,
 * 32 groups), whose diffusers safetensors file loads by name.
 *
 * The training loss, LDM's convention: reconstruction (mean |x - x'| or mean (x - x')^2
 * over every value) + kl_beta * KL, KL = 0.5 * sum(mean^2 + var - 1 - logvar) / batch.
 *
 * All memory (parameters, gradients, activations kept for backward, scratch) is laid
 * out once by autoencoder_create for batches of up to max_batch; nothing here
 * allocates afterwards. A model made for inference only holds ping-pong buffers for
 * the part it runs and no gradients.
 *
 * Mixed precision (precision.h): a model created in bf16 or fp16 rounds every
 * activation and activation gradient to the format where it is made, and its
 * convolutions and linears read weights through a copy rounded at the start of
 * each forward pass; GroupNorm statistics and affine parameters, softmax, the
 * posterior and the loss stay fp32, as do the master weights and gradients. The
 * activations are rounded, not stored in 16 bits (the DiT stores them so). */
#ifndef LDM_AUTOENCODER_H
#define LDM_AUTOENCODER_H

#include <stdint.h>

#include "params.h"
#include "precision.h"

#define AE_MAX_LEVELS 8 /* = CONFIG_INT_LIST_MAX, the config's longest block_out_channels */
#define AE_GROUPNORM_EPS 1e-6f
#define AE_LOGVAR_MIN -30.0f
#define AE_LOGVAR_MAX 20.0f

typedef struct {
    int in_channels;                         /* image channels (= output channels) */
    int input_size;                          /* image H = W; a multiple of 2^(levels - 1) */
    int levels;                              /* number of widths in block_out_channels */
    int block_out_channels[AE_MAX_LEVELS];   /* each a multiple of norm_groups */
    int layers_per_block;
    int latent_channels;
    int norm_groups;
    int without_mid_attention;               /* 1: mid blocks of two ResNet blocks only (diffusers'
                                                mid_block_add_attention false); 0: with the attention */
} autoencoder_shape;

/* What the memory is laid out for. */
typedef enum {
    AE_FOR_TRAINING, /* everything: gradients, every activation of encoder and decoder */
    AE_FOR_ENCODING, /* parameters and the encoder's forward buffers only (ldm encode) */
    AE_FOR_DECODING, /* parameters and the decoder's forward buffers only (sampling) */
    AE_FOR_INFERENCE /* parameters and both forward passes, no gradients */
} autoencoder_purpose;

typedef enum { AE_LOSS_L1, AE_LOSS_L2 } autoencoder_reconstruction_loss;

/* The parts of one training step's loss. */
typedef struct {
    float total;          /* reconstruction + kl_beta * kl */
    float reconstruction; /* mean over batch, channels and pixels */
    float kl;             /* summed over (C, h, w), averaged over the batch */
} autoencoder_loss;

typedef struct autoencoder_activations autoencoder_activations;

typedef struct {
    autoencoder_shape shape;
    autoencoder_purpose purpose;
    ldm_precision precision;
    int max_batch;
    int latent_size;   /* input_size / 2^(levels - 1) */
    param_table table; /* trainable only; diffusers AutoencoderKL names */
    float *params;     /* (table.trainable_numel) */
    float *grads;      /* (table.trainable_numel); NULL unless AE_FOR_TRAINING */
    float *compute_params; /* (table.trainable_numel) what convs and linears read: params in fp32, else a rounded copy */
    /* After autoencoder_train_forward: (batch, L, h, w) the posterior's mean, its clamped
     * log-variance and the latent decoded; (batch, C, H, W) the reconstruction. */
    const float *posterior_mean, *posterior_logvar, *latent, *reconstruction;
    autoencoder_activations *act;
    void *memory; /* the one allocation behind every buffer */
    size_t memory_bytes;
} autoencoder_model;

/* Checks the shape (fatal_input on an impossible one), builds the table and lays out
 * the memory that purpose needs for batches of up to max_batch. Parameters start zero. */
void autoencoder_create(autoencoder_model *model, const autoencoder_shape *shape, int max_batch,
                        autoencoder_purpose purpose);
/* The same in a precision (autoencoder_create is PRECISION_FP32). */
void autoencoder_create_precision(autoencoder_model *model, const autoencoder_shape *shape, int max_batch,
                                  autoencoder_purpose purpose, ldm_precision precision);
void autoencoder_destroy(autoencoder_model *model);

/* The parameter table alone (names, shapes, offsets; no memory bound), for listing or
 * checking a weights file without laying out a model. Free with param_table_free. */
void autoencoder_build_table(param_table *table, const autoencoder_shape *shape);

/* Loads weights by name from a diffusers AutoencoderKL safetensors file (F32, F16 or BF16;
 * fatal_input on a missing, unknown or misshapen tensor). Files saved by diffusers
 * before 0.14 name the mid-block attention query, key, value and proj_attn (same
 * shapes): those names are read as to_q, to_k, to_v and to_out.0. */
void autoencoder_load_safetensors(autoencoder_model *model, const char *path);
/* That renaming as a param_rename_fn (params.h): a file's tensor name -> the table's. */
const char *autoencoder_current_tensor_name(const char *file_name, char *buf, size_t buf_size);

/* torch's default initialisation: every conv and linear weight and bias uniform in
 * +-1/sqrt(fan_in) (kaiming_uniform with a = sqrt(5)), GroupNorm gamma 1 and beta 0.
 * Deterministic in seed: each tensor's values depend only on (seed, its index). */
void autoencoder_init_weights(autoencoder_model *model, uint64_t seed);
void autoencoder_zero_grad(autoencoder_model *model);

/* images (batch, C, H, W), nominally in [-1, 1] -> mean, logvar (batch, L, h, w),
 * logvar clamped; either output may be NULL. Needs AE_FOR_ENCODING, _INFERENCE or
 * _TRAINING. In a model laid out for training, encode and decode reuse the buffers the
 * training step keeps: call them between steps, not between train_forward and
 * train_backward. */
void autoencoder_encode(autoencoder_model *model, const float *images, int batch, float *mean, float *logvar);
/* z (batch, L, h, w) -> images (batch, C, H, W). Needs AE_FOR_DECODING, _INFERENCE or
 * _TRAINING. */
void autoencoder_decode(autoencoder_model *model, const float *z, int batch, float *images);

/* One training step's forward: encode images (batch, C, H, W); z = mean +
 * exp(logvar / 2) * noise with noise (batch, L, h, w), or z = mean when noise is NULL
 * (sample_posterior false); decode; the loss. Keeps everything autoencoder_train_backward
 * needs (noise is copied). Needs AE_FOR_TRAINING. */
autoencoder_loss autoencoder_train_forward(autoencoder_model *model, const float *images, const float *noise,
                                           int batch, float kl_beta, autoencoder_reconstruction_loss kind);
/* Accumulates d_loss * d total / d param into model->grads (d_loss: 1, or a loss scale
 * or 1 / accumulation steps). d_images (batch, C, H, W) overwritten with d_loss * d total
 * / d images (through the encoder and as the reconstruction's target), or NULL. */
void autoencoder_train_backward(autoencoder_model *model, float d_loss, float *d_images);

#endif

/* The KL autoencoder on one GPU, laid out for training: the model of
 * autoencoder.h (same shape, same parameter table, and the same network:
 * autoencoder_graph.h's units and training step, in fp32, bf16 or fp16) with
 * every buffer in device memory, run on the CUDA op set (ops_cuda.h,
 * ops_cuda_conv.h) and the posterior and loss kernels of
 * autoencoder_cuda_kernels.h.
 *
 * Memory: autoencoder_cuda_create lays out ONE device allocation for the fp32
 * master parameters, their gradients, in bf16/fp16 the rounded copy of the
 * weights that convolutions and linears read, the step's input (images and
 * posterior noise), every activation kept for backward, the four feature-map
 * slots the backward pass flows through, and the convolution scratch; a
 * training step allocates nothing. The flat parameter and gradient vectors
 * have the CPU model's layout (its param_table: same order, same offsets), so
 * uploads, downloads and checkpoints are plain copies of table.trainable_numel
 * floats.
 *
 * Precision follows autoencoder.c: activations and activation gradients are
 * rounded to the format where they are made (held in fp32 buffers, not stored
 * in 16 bits), convolutions and linears read a rounded copy of the weights made
 * at every forward pass and multiply in fp32; GroupNorm statistics and affine
 * parameters, softmax, the posterior and the loss stay fp32. So bf16/fp16 give
 * the CPU model's numbers, not a 16-bit GEMM's speed.
 *
 * Laid out for inference (AE_FOR_ENCODING, AE_FOR_DECODING, AE_FOR_INFERENCE:
 * ldm encode, ldm decode, sampling) the forward pass runs in the graph's pooled
 * slots with no gradients, as the CPU model's does, from an input buffer of the
 * model (encode_input, decode_input) that the caller fills. d_images (the
 * images' gradient) is not computed on the GPU.
 *
 * All tensor pointers in the struct are DEVICE pointers. Work is queued on the
 * model's stream, a blocking stream (ordered with the legacy default stream
 * that the synchronous copies of ops_cuda.h use); nothing waits for it except
 * the functions that say so.
 *
 * Status: not yet run on a GPU. tests/test_autoencoder_cuda.c (against the CPU
 * model) passes on the CPU emulation of CUDA (tests/cuda_emulation/, in CI).
 * Plain C; only meaningful in a CUDA build (LDM_HAVE_CUDA). */
#ifndef LDM_AUTOENCODER_CUDA_H
#define LDM_AUTOENCODER_CUDA_H

#ifdef LDM_HAVE_CUDA

#include <stddef.h>

#include "autoencoder.h"
#include "ops_cuda.h"
#include "params.h"
#include "precision.h"

typedef struct autoencoder_cuda_units autoencoder_cuda_units;

typedef struct {
    autoencoder_shape shape;
    autoencoder_purpose purpose;
    ldm_precision precision;
    int max_batch;
    int latent_size;     /* input_size / 2^(levels - 1) */
    /* The CPU model's table (names, shapes, offsets), a host copy, unbound: the
     * values live on the device, below. */
    param_table table;
    float *params;         /* (table.trainable_numel) fp32 master */
    float *grads;          /* (table.trainable_numel) */
    float *compute_params; /* (table.trainable_numel) what convs and linears read: params in fp32, else a rounded copy */
    /* The step's input, written by the caller (e.g. cuda_copy_to_device_async on
     * the model's stream) before autoencoder_cuda_train_forward, and kept for
     * backward: images (max_batch, C, H, W) nominally in [-1, 1], the loss's
     * target too; noise (max_batch, L, h, w) the posterior's standard normal draws. */
    float *images, *noise;
    /* After autoencoder_cuda_train_forward: (batch, L, h, w) the posterior's mean,
     * its clamped log-variance and the latent decoded (z = mean + exp(logvar / 2)
     * noise, or the mean); (batch, C, H, W) the reconstruction. */
    const float *posterior_mean, *posterior_logvar, *latent, *reconstruction;
    /* Inference layouts only (else NULL), written by the caller before
     * autoencoder_cuda_encode / _decode: encode_input (max_batch, C, H, W)
     * images, decode_input (max_batch, L, h, w) latents. */
    float *encode_input, *decode_input;
    autoencoder_cuda_units *units; /* host struct: the graph (its units, device pointers), GEMM context, stream */
    void *memory; /* the one device allocation behind every buffer above but encode_input and decode_input */
    size_t memory_bytes;
    gemm_cuda_context *gemm;
    ldm_stream stream;
} autoencoder_cuda_model;

/* Checks the shape as autoencoder_create does (fatal_input on an impossible
 * one), takes the CPU model's parameter table and lays out all device memory for
 * training on batches of up to max_batch in `precision`. Parameters and
 * gradients start zero. Uses the current CUDA device. */
void autoencoder_cuda_create(autoencoder_cuda_model *model, const autoencoder_shape *shape, int max_batch,
                             ldm_precision precision);
/* The same laid out for purpose (autoencoder_cuda_create is AE_FOR_TRAINING). */
void autoencoder_cuda_create_purpose(autoencoder_cuda_model *model, const autoencoder_shape *shape, int max_batch,
                                     ldm_precision precision, autoencoder_purpose purpose);
/* Waits for the model's stream, then frees everything. */
void autoencoder_cuda_destroy(autoencoder_cuda_model *model);

/* Host <-> device copies of the flat vectors (table.trainable_numel floats, in the
 * CPU model's layout); each waits for the model's stream. */
void autoencoder_cuda_upload_params(autoencoder_cuda_model *model, const float *host_params);
void autoencoder_cuda_download_grads(autoencoder_cuda_model *model, float *host_grads);
/* Queued on the model's stream. */
void autoencoder_cuda_zero_grad(autoencoder_cuda_model *model);

/* Inference (a model laid out for encoding, decoding or both), queued on the
 * model's stream: the first batch rows of encode_input through the encoder,
 * returning the moments (batch, 2L, h, w) (device; the log-variance not yet
 * clamped), or of decode_input through the decoder, returning the images
 * (batch, C, H, W) (device). The returned buffers are the graph's slots: valid
 * until the next call. */
const float *autoencoder_cuda_encode(autoencoder_cuda_model *model, int batch);
const float *autoencoder_cuda_decode(autoencoder_cuda_model *model, int batch);
/* autoencoder_encode and autoencoder_decode of autoencoder.h on the device,
 * host buffers in and out (mean or logvar may be NULL); they wait for the
 * stream. */
void autoencoder_cuda_encode_host(autoencoder_cuda_model *model, const float *images, int batch, float *mean,
                                  float *logvar);
void autoencoder_cuda_decode_host(autoencoder_cuda_model *model, const float *z, int batch, float *images);

/* autoencoder_train_forward on the device, from model->images and (when
 * sample_posterior) model->noise: encode, z = mean + exp(logvar / 2) noise or z =
 * mean, decode, the loss's sums (in double, a fixed order). Queued; keeps what
 * backward needs. */
void autoencoder_cuda_train_forward(autoencoder_cuda_model *model, int batch, int sample_posterior, float kl_beta,
                                    autoencoder_reconstruction_loss kind);
/* autoencoder_train_backward without d_images: accumulates d_loss * d total /
 * d param into model->grads (d_loss: 1, a loss scale or a micro-batch's weight).
 * Queued; for the forward pass just queued. */
void autoencoder_cuda_train_backward(autoencoder_cuda_model *model, float d_loss);
/* The parts of the loss of the forward pass just queued, as autoencoder_train_forward
 * returns them (the same double arithmetic on the sums); waits for the model's stream. */
autoencoder_loss autoencoder_cuda_loss(autoencoder_cuda_model *model);

#endif /* LDM_HAVE_CUDA */

#endif

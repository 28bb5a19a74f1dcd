/* The DiT denoiser on one GPU: the model of dit.h (same shapes, same parameter
 * table, same math and op order, in fp32, bf16 or fp16) with every buffer in
 * device memory, composed from the CUDA op set (ops_cuda.h, gemm_cublaslt.h).
 *
 * Memory: dit_cuda_create lays out ONE device allocation for the fp32 master
 * parameters, their gradients, pos_embed, the AdamW moments (when asked for),
 * in bf16/fp16 the 16-bit copy of the weights the GEMMs read (made at every
 * forward pass), the activations of up to max_batch samples kept for backward
 * and the backward scratch; forward, backward and the optimizer step allocate
 * nothing. The flat parameter and gradient vectors have the CPU model's layout
 * (its param_table: same order, same offsets), so uploads, downloads and
 * checkpoints are plain copies of table.trainable_numel floats.
 *
 * Forward and backward are the one DiT graph (dit_graph.h) that the CPU model
 * runs too, here on CUDA ops (dit_backend_cuda.c). Precision is the graph's:
 * GEMM inputs in 16 bits (activations rounded where they are made, weights and
 * biases from the rounded copy),
 * fp32 accumulation; LayerNorm statistics, softmax, SiLU/GELU arithmetic and the
 * residual stream in fp32; the activations kept for backward as 16-bit values
 * (the LayerNorm outputs standing in for its inputs). fp32 keeps the same set
 * of activations in fp32.
 *
 * All tensor arguments are DEVICE pointers. Work is queued on the model's
 * stream and nothing waits for it except the functions that say so (uploads,
 * downloads, dit_cuda_synchronize). The stream is non-blocking: nothing orders
 * it with the legacy default stream, so the uploads and downloads wait for it
 * on the host before their synchronous copies (cuda_copy_to_device and
 * cuda_copy_to_host of ops_cuda.h, which return once done).
 *
 * Status: not yet run on a GPU. tests/test_dit_cuda.c (the PyTorch fixtures and
 * the CPU model) passes on the CPU emulation of CUDA (tests/cuda_emulation/,
 * in CI).
 * Plain C; only meaningful in a CUDA build (LDM_HAVE_CUDA). */
#ifndef LDM_DIT_CUDA_H
#define LDM_DIT_CUDA_H

#ifdef LDM_HAVE_CUDA

#include <stddef.h>
#include <stdint.h>

#include "dit.h"
#include "ops_cuda.h"
#include "params.h"
#include "precision.h"

typedef struct dit_cuda_state dit_cuda_state;

typedef struct {
    dit_shape shape;
    ldm_precision precision;
    int max_batch;
    int tokens;          /* (input_size / patch_size)^2 */
    /* The CPU model's table (names, shapes, offsets), a host copy. Its data and
     * grad pointers are NULL: the values live on the device, below. */
    param_table table;
    float *params;       /* device (table.trainable_numel) fp32 master */
    float *grads;        /* device (table.trainable_numel) */
    float *fixed;        /* device (table.fixed_numel): pos_embed */
    /* AdamW (dit_cuda_create with_optimizer; else NULL and 0) */
    float *adam_m, *adam_v; /* device (table.trainable_numel) first and second moments */
    int64_t adam_step;      /* steps taken */
    size_t activation_bytes; /* of memory_bytes: activations and scratch for max_batch */
    dit_cuda_state *state; /* host struct of device pointers: the graph and its weight copies (dit_backend_cuda.h) */
    void *memory;        /* the one device allocation behind everything above */
    size_t memory_bytes;
    gemm_cuda_context *gemm;
    ldm_stream stream;
    int stream_borrowed; /* dit_cuda_use_stream: the stream is another model's, not destroyed with this one */
    /* Optional (NULL: none): called by dit_cuda_backward right after the kernels
     * that finish a stage's parameter gradients are queued, so that their
     * all-reduce can start while backward goes on: stage = depth for the final
     * layer, then l for block l (depth - 1 down to 0), then -1 for the rest (the
     * embedders), in that order. A stage's gradients are not written after its call. */
    void (*gradients_ready)(void *context, int stage);
    void *gradients_ready_context;
} dit_cuda_model;

/* Checks the shape as dit_create does (fatal_input on an impossible one), takes
 * the CPU model's parameter table, and lays out all device memory for batches of
 * up to max_batch in `precision`; with_optimizer also lays out the AdamW moments
 * (a model that is only evaluated, a teacher or a sampler, needs none).
 * Parameters, gradients and moments start zero; pos_embed is set. Uses the
 * current CUDA device. */
void dit_cuda_create(dit_cuda_model *model, const dit_shape *shape, int max_batch, ldm_precision precision,
                     int with_optimizer);
void dit_cuda_destroy(dit_cuda_model *model);

/* Makes the model queue its work on `stream`, another model's (which must
 * outlive this one), in place of its own, which is destroyed: models that feed
 * each other's inputs and outputs (distillation's teacher, target network and
 * student) then run in order on one stream without events. */
void dit_cuda_use_stream(dit_cuda_model *model, ldm_stream stream);

/* Host <-> device copies of the flat vectors (table.trainable_numel floats, in
 * the CPU model's layout); each waits for the model's stream. */
void dit_cuda_upload_params(dit_cuda_model *model, const float *host_params);
void dit_cuda_download_params(dit_cuda_model *model, float *host_params);
void dit_cuda_download_grads(dit_cuda_model *model, float *host_grads);
/* The AdamW moments and step count (a model made with_optimizer), e.g. for checkpoints. */
void dit_cuda_upload_moments(dit_cuda_model *model, const float *host_m, const float *host_v, int64_t step);
void dit_cuda_download_moments(dit_cuda_model *model, float *host_m, float *host_v, int64_t *step);
/* Waits for the model's stream. */
void dit_cuda_synchronize(dit_cuda_model *model);

/* dit_forward_guided on the device: x (batch, C, H, W); t (batch) the timestep as
 * the embedder sees it; y (batch) device ints in [0, num_classes] (num_classes is
 * the null class); guidance (batch) the scale w of each sample for a model with a
 * guidance input, else NULL; out (batch, C, H, W). Keeps what backward needs
 * (also its own copy of y). Unlike dit_forward the labels are not checked here:
 * that would need them on the host (a wait on the stream); the caller passes
 * labels it has checked where it made them. */
void dit_cuda_forward(dit_cuda_model *model, const float *x, const float *t, const int *y, const float *guidance,
                      int batch, float *out);
/* d_out (batch, C, H, W): accumulates into model->grads. d_x (batch, C, H, W) or
 * NULL. batch is the forward pass's. */
void dit_cuda_backward(dit_cuda_model *model, const float *d_out, float *d_x, int batch);
void dit_cuda_zero_grad(dit_cuda_model *model);

/* One AdamW step (train/optimizer.c's adamw_step, bit for bit) of the parameters
 * from model->grads with learning rate lr; the step count advances first. The
 * model must have been made with_optimizer. */
void dit_cuda_adamw_step(dit_cuda_model *model, float lr, float beta1, float beta2, float eps, float weight_decay);

#endif /* LDM_HAVE_CUDA */

#endif

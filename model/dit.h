/* The DiT denoiser with adaLN-Zero (Peebles & Xie 2023), with the parameter
 * names and shapes of the public DiT code, on the CPU in fp32, bf16 or fp16.
 * Forward and backward are the one DiT graph (dit_graph.h) on the CPU's ops; the
 * GPU model (dit_cuda.h) runs the same graph on CUDA ops.
 *
 * All memory (parameters, gradients, fixed buffers, the activations of a batch of
 * up to max_batch samples, backward scratch) is laid out once by dit_create; forward
 * and backward allocate nothing. Output channels equal input channels (EDM
 * predicts the denoised sample; no learned sigma).
 *
 * Mixed precision (precision.h): a model created in bf16 or fp16 keeps fp32
 * master parameters and gradients, but every GEMM reads 16-bit-rounded inputs
 * (the weights through a rounded copy made at each forward pass, activations and
 * activation gradients rounded where they are made) and accumulates in fp32;
 * LayerNorm statistics, softmax, SiLU/GELU arithmetic and the residual stream are
 * fp32. The activations kept for backward are stored as 16-bit values (the
 * LayerNorm outputs stand in for the LayerNorm inputs, whose backward needs only
 * the normalized values), with one block's fp32 working buffers shared by all
 * blocks: about 60% of the activation memory of fp32, less the deeper the model
 * (the shared buffers are a fixed cost). In fp32 every rounding is a no-op. */
#ifndef LDM_DIT_H
#define LDM_DIT_H

#include <stdint.h>

#include "params.h"
#include "precision.h"

#define DIT_FREQUENCY_EMBEDDING_SIZE 256
#define DIT_LAYERNORM_EPS 1e-6f
#define DIT_GUIDANCE_EMBEDDING_SCALE 1000.0f

typedef struct {
    int input_size;  /* H = W of the input */
    int in_channels; /* = out channels */
    int patch_size;
    int hidden_size;
    int depth;
    int num_heads;
    int mlp_hidden;  /* int(hidden_size * mlp_ratio) */
    int num_classes; /* label table has num_classes + 1 rows; row num_classes is the null class */
    /* 1: a guidance-scale input w (as in Latent Consistency Models): an MLP of
     * the sinusoidal embedding of DIT_GUIDANCE_EMBEDDING_SCALE * w, like the
     * timestep's, added to the conditioning. Its tensors (w_embedder.mlp.*) come
     * last in the table, so a model without it is a prefix of one with it. */
    int guidance_input;
} dit_shape;

typedef struct dit_graph dit_graph;
typedef struct dit_cpu_state dit_cpu_state;

typedef struct {
    dit_shape shape;
    ldm_precision precision;
    int max_batch;
    int tokens;    /* (input_size / patch_size)^2 */
    param_table table;
    float *params; /* (table.trainable_numel) */
    float *grads;  /* (table.trainable_numel) */
    float *fixed;  /* (table.fixed_numel): pos_embed */
    /* (table.trainable_numel) the parameters the GEMMs read: params itself in fp32,
     * in bf16/fp16 a copy rounded to the format at the start of every forward pass. */
    float *compute_params;
    size_t activation_bytes; /* of memory_bytes: activations kept for backward and all scratch, for max_batch */
    dit_graph *graph; /* the compute graph, its parameter indices and activations (dit_graph.h) */
    dit_cpu_state *cpu_state; /* what the CPU backend's GEMMs read (dit_graph.h) */
    void *memory;  /* the one allocation behind everything above */
    size_t memory_bytes;
} dit_model;

/* Checks the shape (fatal_input on an impossible one), builds the table and lays out
 * all memory for batches of up to max_batch. Parameters start zero; pos_embed is set. */
void dit_create(dit_model *model, const dit_shape *shape, int max_batch);
/* The same in a precision (dit_create is PRECISION_FP32). */
void dit_create_precision(dit_model *model, const dit_shape *shape, int max_batch, ldm_precision precision);
void dit_destroy(dit_model *model);

/* DiT's initialisation (Xavier uniform linears, zero adaLN and final layer, N(0, 0.02)
 * label table and timestep MLP), deterministic in seed. The guidance MLP's first
 * layer is N(0, 0.02) and its last zero, so that it adds nothing at first. */
void dit_init_weights(dit_model *model, uint64_t seed);

/* x (batch, C, H, W); t (batch) the timestep as the embedder sees it; y (batch) labels in
 * [0, num_classes]; out (batch, C, H, W). Keeps the activations for dit_backward. */
void dit_forward(dit_model *model, const float *x, const float *t, const int *y, int batch, float *out);
/* The same for a model with a guidance input: guidance (batch) the scale w of each
 * sample. A model without one takes NULL (dit_forward). */
void dit_forward_guided(dit_model *model, const float *x, const float *t, const int *y, const float *guidance,
                        int batch, float *out);
/* d_out (batch, C, H, W): accumulates into model->grads. d_x (batch, C, H, W) or NULL. */
void dit_backward(dit_model *model, const float *d_out, float *d_x, int batch);
void dit_zero_grad(dit_model *model);

/* Multiply-add counts of one forward pass of one sample, for FLOP reporting. */
double dit_forward_flops_per_sample(const dit_shape *shape);

#endif

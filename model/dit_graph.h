/* The DiT's compute graph, written once for every device and precision: the
 * parameter indices of the table dit.c builds, the one layout of the activations
 * kept for backward and the backward scratch, and one forward and one backward
 * body (dit_graph.c). What differs between devices is reached through a
 * dit_backend (a table of function pointers: dit_backend_cpu.c, and in CUDA
 * builds dit_backend_cuda.c); what differs between precisions is how a kept
 * activation is stored, behind keep() / load() / kept_operand() / grad_operand().
 *
 * Kept tensors: an activation backward needs is computed into an fp32 `work`
 * buffer and kept in `kept`. In fp32 kept IS work (a buffer per block, nothing is
 * copied); in bf16/fp16 kept is a 16-bit buffer that keep() fills, rounding work
 * in place (precision_store), and work is one of a block's fp32 buffers shared by
 * all blocks. A GEMM reads the operand the backend hands it: the CPU's GEMMs read
 * fp32 buffers holding rounded values (work), the GPU's and the CPU's bf16 GEMMs on
 * oneDNN read the 16-bit bits (kept). The same holds for activation gradients
 * through grad_operand().
 *
 * Every pointer in a graph (parameters, gradients, activations) is in the memory
 * of its backend's device; the graph only passes them to the backend. Internal to
 * the DiT models (dit.c, dit_cuda.c). */
#ifndef LDM_DIT_GRAPH_H
#define LDM_DIT_GRAPH_H

#include <stddef.h>
#include <stdint.h>

#include "arena.h"
#include "dit.h"
#include "ops.h"
#include "params.h"
#include "precision.h"

/* An activation backward needs (see the top of the file). */
typedef struct {
    void *kept;  /* fp32: float, the same buffer as work; bf16/fp16: uint16_t bits */
    float *work; /* the fp32 buffer it is computed in and loaded back into */
} kept_tensor;

/* Indices into the parameter table of one block's tensors. */
typedef struct {
    int qkv_weight, qkv_bias, proj_weight, proj_bias;
    int fc1_weight, fc1_bias, fc2_weight, fc2_bias;
    int ada_weight, ada_bias;
} dit_block_params;

typedef struct {
    float *ln1_mean, *ln1_rstd, *ln2_mean, *ln2_rstd; /* (B*T) each */
    float *ada;                  /* (B, 6D): shift, scale, gate (msa), shift, scale, gate (mlp) */
    kept_tensor ln1, mod1;       /* (B*T, D) LN(x), modulate(LN(x)) */
    kept_tensor qkv;             /* (B*T, 3D) */
    kept_tensor probs;           /* (B, H, T, T); with fused attention (B, H, T) fp32, the row log-sum-exp */
    kept_tensor attn, attn_proj; /* (B*T, D) heads concatenated, after proj */
    kept_tensor ln2, mod2;       /* (B*T, D) */
    kept_tensor fc1, gelu;       /* (B*T, F) before and after GELU */
    kept_tensor fc2;             /* (B*T, D) */
} dit_block_activations;

/* The MLP of a scalar per sample: the timestep, the guidance scale. */
typedef struct {
    kept_tensor freq;       /* (B, E) sinusoidal embedding */
    float *hidden;          /* (B, D) before SiLU (rounded in 16 bits) */
    kept_tensor hidden_act; /* (B, D) */
    int w0, b0, w2, b2;     /* parameter indices of mlp.0 and mlp.2 */
} dit_scalar_embedder;

typedef struct dit_backend dit_backend;

typedef struct dit_graph {
    dit_shape shape;
    int tokens, max_batch;
    ldm_precision precision;
    const dit_backend *ops;
    /* What the backend's functions need besides the graph (the CPU's: the rounded
     * weight copy; the GPU's: its dit_cuda_state). Nothing in a graph points into
     * the model struct, so that a model may be moved after it is made. */
    void *backend_state;
    const param_entry *entries; /* the model's parameter table: offsets into the flat vectors */
    size_t trainable_numel;
    float *params, *grads, *fixed; /* the model's flat vectors, on the backend's device */

    /* parameter indices */
    int x_weight, x_bias, y_table, pos_embed;
    int final_weight, final_bias, final_ada_weight, final_ada_bias;
    dit_block_params *block_params; /* (depth) */

    /* activations (B = max_batch when laid out, the forward pass's batch in use) */
    int *labels;            /* (B) the forward pass's copy of y */
    kept_tensor patches;    /* (B*T, PPC) */
    float *x_run;           /* (B*T, D) the residual stream, fp32 */
    dit_scalar_embedder t_embedder;
    dit_scalar_embedder w_embedder; /* guidance input only, as the next two */
    float *w_scaled;        /* (B) DIT_GUIDANCE_EMBEDDING_SCALE * w */
    float *w_emb;           /* (B, D) */
    float *cond;            /* (B, D) t_emb + y_emb (+ w_emb), before SiLU */
    float *y_emb;           /* (B, D) */
    kept_tensor cond_act;   /* (B, D) SiLU(cond), the input of every adaLN linear */
    dit_block_activations *blocks; /* (depth) */
    float *final_ada;       /* (B, 2D) shift, scale */
    float *final_mean, *final_rstd; /* (B*T) */
    kept_tensor final_ln, final_mod; /* (B*T, D) */
    float *final_tokens;    /* (B*T, PPC) */
    /* bf16/fp16: one block's fp32 working buffers, shared by all blocks */
    float *w_d0, *w_d1;     /* (B*T, D) */
    float *w_3d;            /* (B*T, 3D) */
    float *w_probs;         /* (B, H, T, T); NULL with fused attention */
    float *w_f0, *w_f1;     /* (B*T, F) */
    /* backward scratch */
    float *d_residual, *d_a, *d_b; /* (B*T, D) */
    float *d_qkv;           /* (B*T, 3D) */
    float *d_scores;        /* (B, H, T, T); with fused attention (B, H, T) */
    float *d_hidden;        /* (B*T, F); also the CPU bf16-bits backend's attention scratch (dit_cpu_state) */
    float *d_ada;           /* (B, 6D) */
    float *d_cond_act, *d_cond, *d_t_hidden; /* (B, D) */
    float *d_tokens, *d_patches; /* (B*T, PPC) */
    /* bf16/fp16 on a backend whose GEMMs read bits: the bits of the activation
     * gradient a GEMM reads next (one at a time, so one buffer of the largest),
     * and of d_cond, which two embedders read; NULL elsewhere */
    uint16_t *d_bits;       /* (max(B*T*max(3D, F, PPC), B*6D)) */
    uint16_t *d_cond_bits;  /* (B, D) */
} dit_graph;

/* What a device provides: the storage of kept tensors and parameters in the
 * graph's precision, and the ops. Pointers are the device's; sizes n are counts of
 * values. Shapes and semantics of the ops are those of ops.h. */
struct dit_backend {
    /* 1: GEMMs read 16-bit bits in bf16/fp16 (so the layout has d_bits); 0: they
     * read fp32 buffers holding rounded values. */
    int gemm_reads_bits;
    /* The weights and biases the GEMMs read, made from the master parameters at
     * the start of every forward pass (nothing in fp32). */
    void (*prepare_weights)(const dit_graph *g);
    const void *(*weight)(const dit_graph *g, int index);  /* the GEMM operand of a weight */
    const float *(*bias)(const dit_graph *g, int index);   /* the bias a GEMM adds */
    /* x (n) rounded in place to the format (nothing in fp32). */
    void (*round)(const dit_graph *g, float *x, size_t n);
    /* k.work (n) just computed: kept (and rounded to what is kept). Returns the GEMM operand. */
    const void *(*keep)(const dit_graph *g, kept_tensor k, size_t n);
    /* Backward: the kept values (n) as fp32, in k.work. */
    const float *(*load)(const dit_graph *g, kept_tensor k, size_t n);
    /* Backward: the kept values (n) as a GEMM operand. */
    const void *(*kept_operand)(const dit_graph *g, kept_tensor k, size_t n);
    /* An activation gradient g (n) that a GEMM reads next: rounded in place; returns
     * the GEMM operand (bits may receive its 16-bit bits). */
    const void *(*grad_operand)(const dit_graph *g, float *grad, uint16_t *bits, size_t n);

    void (*zero)(const dit_graph *g, void *x, size_t bytes);
    void (*copy)(const dit_graph *g, void *to, const void *from, size_t bytes); /* both on the device */
    void (*scale)(const dit_graph *g, float *out, const float *in, float factor, size_t n);
    void (*add)(const dit_graph *g, float *out, const float *a, const float *b, size_t n);
    void (*add_row_broadcast)(const dit_graph *g, float *out, const float *row, int rows, int dim);

    /* rows = samples x sample_rows (see linear_forward in ops.h) */
    void (*linear)(const dit_graph *g, float *out, const void *in, const void *weight, const float *bias, int rows,
                   int sample_rows, int in_features, int out_features);
    void (*linear_backward)(const dit_graph *g, float *d_in, float d_in_beta, float *d_weight, float *d_bias,
                            const void *d_out, const void *in, const void *weight, int rows, int in_features,
                            int out_features);
    /* LN(in) into ln.work (and mean, rstd), kept in ln; out = modulate(LN(in)). */
    void (*layernorm_modulate)(const dit_graph *g, float *out, kept_tensor ln, float *mean, float *rstd,
                               const float *in, const float *shift, const float *scale, int mod_stride, int batch,
                               int tokens, int dim);
    void (*layernorm_backward_normalized)(const dit_graph *g, float *d_in, float d_in_beta, const float *d_out,
                                          const float *normalized, const float *rstd, int rows, int dim);
    void (*modulate_backward)(const dit_graph *g, float *d_in, float *d_shift, float *d_scale, const float *d_out,
                              const float *in, const float *scale, int mod_stride, int batch, int tokens, int dim);
    void (*gated_residual_forward)(const dit_graph *g, float *x, const float *y, const float *gate, int mod_stride,
                                   int batch, int tokens, int dim);
    void (*gated_residual_backward)(const dit_graph *g, float *d_y, float *d_gate, const float *d_x, const float *y,
                                    const float *gate, int mod_stride, int batch, int tokens, int dim);
    void (*attention_forward)(const dit_graph *g, float *out, float *probs, const float *qkv, int batch, int tokens,
                              int heads, int head_dim);
    void (*attention_backward)(const dit_graph *g, float *d_qkv, float *d_scores, const float *d_out,
                               const float *qkv, const float *probs, int batch, int tokens, int heads, int head_dim);
    void (*gelu_tanh_forward)(const dit_graph *g, float *out, const float *in, size_t n);
    void (*gelu_tanh_backward)(const dit_graph *g, float *d_in, const float *d_out, const float *in, size_t n);
    void (*silu_forward)(const dit_graph *g, float *out, const float *in, size_t n);
    void (*silu_backward)(const dit_graph *g, float *d_in, const float *d_out, const float *in, size_t n);
    void (*patchify_forward)(const dit_graph *g, float *patches, const float *image, int batch, int channels,
                             int size, int patch);
    void (*patchify_backward)(const dit_graph *g, float *d_image, const float *d_patches, int batch, int channels,
                              int size, int patch);
    void (*unpatchify_forward)(const dit_graph *g, float *image, const float *tokens, int batch, int channels,
                               int size, int patch);
    void (*unpatchify_backward)(const dit_graph *g, float *d_tokens, const float *d_image, int batch, int channels,
                                int size, int patch);
    void (*timestep_embedding_forward)(const dit_graph *g, float *out, const float *t, int batch, int dim);
    void (*embedding_forward)(const dit_graph *g, float *out, const float *table, const int *labels, int batch,
                              int dim);
    void (*embedding_backward)(const dit_graph *g, float *d_table, const float *d_out, const int *labels, int batch,
                               int dim, int table_rows);

    /* Optional, outside DIT_BACKEND_FUNCTIONS (NULL: attention_forward/backward
     * above, with the probabilities kept): attention fused flash-attention style,
     * which keeps per row only the log-sum-exp of the scaled scores, row_lse
     * (B, H, T) fp32 in the probs buffer (not rounded, not 16-bit), and
     * recomputes the probabilities in backward. qkv and out are kept operands
     * (what keep / kept_operand return); row_dot (B, H, T) is backward scratch
     * (the d_scores buffer); out and d_qkv fp32 as in attention_forward/backward. */
    void (*fused_attention_forward)(const dit_graph *g, float *out, float *row_lse, const void *qkv, int batch,
                                    int tokens, int heads, int head_dim);
    void (*fused_attention_backward)(const dit_graph *g, float *d_qkv, float *row_dot, const float *d_out,
                                     const void *qkv, const void *out, const float *row_lse, int batch, int tokens,
                                     int heads, int head_dim);

    /* Optional (NULL: gelu_tanh_forward/backward above), used in fp32 only: GELU
     * whose forward overwrites its input (the kept fc1 output) with its
     * derivative, and whose backward multiplies by it (ops.h,
     * gelu_tanh_forward_keep_slope); the same bits as the pair above. Not in
     * 16 bits, where the kept fc1 output is rounded: rounding the derivative
     * instead would change the numerics. */
    void (*gelu_tanh_forward_keep_slope)(const dit_graph *g, float *out, float *x_then_slope, size_t n);
    void (*gelu_tanh_backward_from_slope)(const dit_graph *g, float *d_in, const float *d_out, const float *slope,
                                          size_t n);
    /* Optional (NULL: linear_backward, then gelu_tanh_backward_from_slope), used
     * where GELU keeps its slope: fc2's backward with its input gradient times
     * the slope, d_in = (d_out @ W) * slope (beta 0), in one pass over d_in
     * instead of two; the same bits. */
    void (*linear_backward_times_slope)(const dit_graph *g, float *d_in, const float *slope, float *d_weight,
                                        float *d_bias, const void *d_out, const void *in, const void *w, int rows,
                                        int in_features, int out_features);
    /* Optional (NULL: modulate_backward into d_modulated, then
     * layernorm_backward_normalized from it): the two in one pass, the gradient
     * between them not written out (ops.h, modulate_layernorm_backward); the
     * same bits. d_modulated is scratch of (batch, tokens, dim). */
    void (*modulate_layernorm_backward)(const dit_graph *g, float *d_in, float d_in_beta, float *d_shift,
                                        float *d_scale, const float *d_out, const float *normalized,
                                        const float *rstd, const float *scale, int mod_stride, int batch, int tokens,
                                        int dim, float *d_modulated);
};

/* A backend's table: the function of each field above is the static function
 * named prefix ## field (cpu_linear, cuda_linear, ...), so that a field added to
 * dit_backend is added here once and each backend writes only its function. */
#define DIT_BACKEND_FUNCTIONS(prefix) .prepare_weights = prefix##prepare_weights, \
    .weight = prefix##weight, .bias = prefix##bias, .round = prefix##round, .keep = prefix##keep, \
    .load = prefix##load, .kept_operand = prefix##kept_operand, .grad_operand = prefix##grad_operand, \
    .zero = prefix##zero, .copy = prefix##copy, .scale = prefix##scale, .add = prefix##add, \
    .add_row_broadcast = prefix##add_row_broadcast, .linear = prefix##linear, \
    .linear_backward = prefix##linear_backward, .layernorm_modulate = prefix##layernorm_modulate, \
    .layernorm_backward_normalized = prefix##layernorm_backward_normalized, \
    .modulate_backward = prefix##modulate_backward, .gated_residual_forward = prefix##gated_residual_forward, \
    .gated_residual_backward = prefix##gated_residual_backward, .attention_forward = prefix##attention_forward, \
    .attention_backward = prefix##attention_backward, .gelu_tanh_forward = prefix##gelu_tanh_forward, \
    .gelu_tanh_backward = prefix##gelu_tanh_backward, .silu_forward = prefix##silu_forward, \
    .silu_backward = prefix##silu_backward, .patchify_forward = prefix##patchify_forward, \
    .patchify_backward = prefix##patchify_backward, .unpatchify_forward = prefix##unpatchify_forward, \
    .unpatchify_backward = prefix##unpatchify_backward, \
    .timestep_embedding_forward = prefix##timestep_embedding_forward, \
    .embedding_forward = prefix##embedding_forward, .embedding_backward = prefix##embedding_backward

/* The CPU backends' backend_state: what their GEMMs read of the parameters. */
typedef struct dit_cpu_state {
    float *compute_params; /* (trainable_numel) params in fp32, else the copy rounded at every forward */
    uint16_t *weight_bits; /* (trainable_numel) bf16: its bits, which oneDNN's GEMMs read; else NULL */
    /* bf16 with oneDNN: attention's scratch at max_batch, in attention_memory where
     * the graph's d_hidden is too small for it, else in d_hidden (free in forward and
     * in the attention branch of backward); else NULLs */
    attention_bits_scratch attention;
    void *attention_memory;
    /* fp32 GEMMs on oneDNN (dit_backend_cpu_fp32_onednn): attention's scratch
     * (attention_onednn_scratch_bytes) at max_batch, where the above says; else NULL */
    float *attention_f32;
} dit_cpu_state;

/* The CPU's ops (dit_backend_cpu.c). dit_backend_cpu: GEMMs read fp32 buffers
 * holding rounded values (OpenBLAS, or in bf16 the own bf16 GEMM). In bf16 where
 * oneDNN is the CPU's bf16 GEMM (gemm_onednn.h) dit_backend_cpu_bf16_bits: GEMMs
 * read the bf16 bits themselves, the kept activations, the gradients' bits
 * (d_bits) and weight_bits, so nothing is converted again for a GEMM. */
extern const dit_backend dit_backend_cpu;
extern const dit_backend dit_backend_cpu_bf16_bits;
/* fp32 and fp16 where oneDNN is the CPU's fp32 GEMM, bf16 where its bf16 kind is
 * onednn-f32 (gemm_onednn.h): dit_backend_cpu with the linear layers on oneDNN's
 * fp32 matmul (reading the rounded values in bf16/fp16). */
extern const dit_backend dit_backend_cpu_fp32_onednn;
/* The CPU backend of a model in this precision. */
const dit_backend *dit_backend_cpu_for(ldm_precision precision);
/* Makes the oneDNN primitives of every GEMM of a training step at max_batch
 * (nothing on dit_backend_cpu), once the graph is laid out. */
void dit_backend_cpu_plan(const dit_graph *g);

/* Sets up g for a model of `shape` on `ops`: finds the parameter indices in table
 * (dit.c's, by name) and allocates the host arrays of per-block structs. The
 * buffers come from dit_graph_layout, the rest from dit_graph_bind. */
void dit_graph_init(dit_graph *g, const dit_shape *shape, int max_batch, ldm_precision precision,
                    const param_table *table, const dit_backend *ops);
void dit_graph_free(dit_graph *g);
/* The model's flat vectors (on the backend's device) and the backend's state,
 * once the model's memory is placed. */
void dit_graph_bind(dit_graph *g, float *params, float *grads, float *fixed, void *backend_state);
/* Places the activations and backward scratch for max_batch samples (called once
 * measuring and once placing, see arena.h); returns their bytes. */
size_t dit_graph_layout(dit_graph *g, arena *ar);

/* The model of dit.h. caller names the public function in messages. y (batch)
 * are labels the caller has checked; guidance (batch) or NULL as dit.h says. */
void dit_graph_forward(dit_graph *g, const char *caller, const float *x, const float *t, const int *y,
                       const float *guidance, int batch, float *out);
/* gradients_ready (or NULL) is called as dit_cuda.h describes. */
void dit_graph_backward(dit_graph *g, const char *caller, const float *d_out, float *d_x, int batch,
                        void (*gradients_ready)(void *context, int stage), void *gradients_ready_context);

#endif

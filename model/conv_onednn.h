/* The autoencoder's 2-D convolutions on the CPU through oneDNN's convolution
 * primitives (forward, backward data, backward weights; fp32, and bf16 operands
 * with fp32 accumulation and outputs), and the run-time choice between them and
 * the own im2col + OpenBLAS convolution of ops_conv.h.
 *
 * Choice (cpu_conv_kind): oneDNN where this build has it (fp32) and, for bf16,
 * where the CPU has AVX512_BF16; else the own convolution (which multiplies bf16
 * values in fp32). LDM_CPU_CONV=onednn or own forces one (onednn where it cannot
 * run is an error naming why).
 *
 * Same conventions as conv2d_forward / conv2d_backward (ops_conv.h): fp32 NCHW
 * buffers, weights (Cout, Cin, k, k); d_weight and d_bias accumulate, d_in =
 * d_in_beta d_in + dL/din (d_in_beta 0 or 1). In bf16 the inputs, weights and
 * output gradients are rounded to bf16 (to nearest even: exact for the values
 * the autoencoder's bf16 graph holds, which are rounded already) and the
 * products accumulate in fp32.
 *
 * How the work is cut, so that results are bit-identical whatever the number of
 * OpenMP threads and each sample's forward does not depend on the batch: every
 * convolution runs one sample at a time through primitives made for one
 * sample and one thread (oneDNN fixes its blocking and summation order when a
 * primitive is made, from the thread count then), the samples spread over the
 * OpenMP threads; each thread has its own stream, memory objects, scratchpad
 * (user mode) and blocked-layout buffers. The weight gradient of each sample goes
 * to its own buffer and the samples' gradients are summed in sample order; so is
 * the bias gradient (each sample's sum over the pixels in double, in 8 lanes).
 *
 * Primitives are made once per shape (conv_onednn_plan, called when a model is
 * laid out: the batch there sizes the per-sample weight gradients) and kept in a
 * table shared by every model; a call with an unplanned shape or a larger batch
 * makes or grows what it needs first (counted: tests check that a training step
 * makes nothing). Call from outside parallel regions, one thread at a time. */
#ifndef LDM_CONV_ONEDNN_H
#define LDM_CONV_ONEDNN_H

#include "ops_conv.h"

typedef enum { CPU_CONV_OWN, CPU_CONV_ONEDNN } cpu_conv_kind;

/* The convolution the CPU runs with fp32 kernels (bf16 0) or oneDNN's bf16 kernels
 * (bf16 1), from the build, the CPU and LDM_CPU_CONV (read at each call; a bad
 * value ends the program with one line). */
cpu_conv_kind cpu_conv_kind_for(int bf16);

/* Whether the autoencoder's bf16 graph runs oneDNN's bf16 kernels (1), or its fp32
 * kernels on the values the graph has rounded to bf16 already (0, the default):
 * the products of bf16 values are exact in fp32, so both compute the same
 * products and sum them in fp32 (in other orders), and 0 is what the own path
 * computes too. 0 because it measured faster: oneDNN 2.6's bf16 direct kernels
 * (jit_bf16:avx512_core_bf16), one sample at a time at the autoencoder's widths
 * (32 to 64 channels), ran about 1.5x slower than its fp32 ones on Zen 4, and the
 * bf16 operands need a conversion each. LDM_CPU_CONV_BF16=bf16 or fp32 forces
 * one (read at each call). */
int cpu_conv_bf16_kernels(void);
const char *cpu_conv_kind_name(cpu_conv_kind kind); /* "onednn", "own" */

/* 1 where this build has oneDNN (the functions below run), else 0. */
int conv_onednn_built(void);

/* Makes the primitives and buffers of this shape (shape->batch: the largest batch
 * it will run). */
void conv_onednn_plan(const conv2d_dims *shape, int bf16);
/* As conv2d_forward / conv2d_backward (ops_conv.h), without caller scratch. */
void conv_onednn_forward(float *out, const float *in, const float *weight, const float *bias,
                         const conv2d_dims *shape, int bf16);
void conv_onednn_backward(float *d_in, float d_in_beta, float *d_weight, float *d_bias, const float *d_out,
                          const float *in, const float *weight, const conv2d_dims *shape, int bf16);

/* How many shapes have been planned (primitives made or buffers grown), for the tests. */
long conv_onednn_plans_made(void);
/* Destroys every primitive and buffer (tests: to plan again under another thread count). */
void conv_onednn_release_all(void);
/* The oneDNN implementations chosen for a planned shape ("fwd / bwd_data /
 * bwd_weights"), for the benchmark's log; "" when not planned. */
const char *conv_onednn_describe(const conv2d_dims *shape, int bf16);

#endif

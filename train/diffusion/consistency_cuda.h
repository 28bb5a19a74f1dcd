/* Consistency distillation's arithmetic around the networks on the GPU (the
 * twin of the host code of distill_trainable.c and consistency.c, for the GPU
 * distiller distill_cuda_trainable.c): the networks' inputs, the teacher's
 * guided Heun step from s_{n+1} to s_n, the consistency function's output, and
 * the pseudo-Huber / L2 loss with its gradient with respect to the student
 * network's output.
 *
 * Only per-sample values cross from the host: each sample's coefficients
 * (distill_sample_coefficients, computed in double by the host from the sigmas
 * it drew, with edm.c's and consistency.c's functions) and its guidance scale.
 * The per-element arithmetic is the host's, operation for operation, in double
 * rounded once to float where the host rounds (no fused multiply-adds: the
 * _rn intrinsics), so that given the same inputs an element is the host's
 * bits; the loss sums each sample in a fixed order of its own (deterministic,
 * not the host's order).
 *
 * Shapes: batch samples of per_sample values; the teacher's rows are `passes`
 * copies of the batch (the conditional rows, then under guidance the null
 * class's). All pointers are DEVICE pointers; work is queued on `stream`. CUDA
 * builds only (LDM_HAVE_CUDA). */
#ifndef LDM_CONSISTENCY_CUDA_H
#define LDM_CONSISTENCY_CUDA_H

#ifdef LDM_HAVE_CUDA

#include "ops_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One sample's noise levels and coefficients, in double. Index 0: at
 * s_{n+1} (sigma_next), 1: at s_n (sigma_now). */
typedef struct {
    double sigma[2];
    double c_in[2];            /* EDM's network input scale (edm_preconditioning) */
    double edm_skip[2], edm_out[2];        /* EDM's c_skip, c_out: the teacher's denoiser D */
    double consistency_skip[2], consistency_out[2]; /* consistency_scalings: f = c_skip x + c_out F */
    double guidance;           /* the scale w of the teacher's guidance (1 row set without guidance) */
} distill_sample_coefficients;

/* net_in (copies batch, per_sample): copy k, sample b = (float)(c_in[at] x_b)
 * (edm_network_input's arithmetic). */
void distill_network_input_cuda(float *net_in, const float *x, const distill_sample_coefficients *coefficients, int at,
                                int batch, int copies, int per_sample, ldm_stream stream);
/* The Heun step's Euler half: D the guided teacher's denoiser from its output
 * F (passes batch, per_sample) at x_next and s_{n+1}; slope = (x_next - D) / s_{n+1}
 * (rounded to float) and x_now = x_next + (s_n - s_{n+1}) slope (double slope). */
void distill_heun_euler_cuda(float *slope, float *x_now, const float *x_next, const float *F,
                             const distill_sample_coefficients *coefficients, int batch, int passes, int per_sample,
                             ldm_stream stream);
/* The correction: D from F (passes batch, per_sample) at x_now and s_n;
 * x_now = x_next + (s_n - s_{n+1}) 0.5 (slope + (x_now - D) / s_n). */
void distill_heun_correct_cuda(float *x_now, const float *x_next, const float *slope, const float *F,
                               const distill_sample_coefficients *coefficients, int batch, int passes, int per_sample,
                               ldm_stream stream);
/* f (batch, per_sample) = (float)(c_skip[at] x + c_out[at] F) (consistency_output). */
void distill_consistency_output_cuda(float *f, const float *x, const float *F,
                                     const distill_sample_coefficients *coefficients, int at, int batch,
                                     int per_sample, ldm_stream stream);
/* sample_loss (batch, double) = d(student_f, target_f) per sample: l2 the mean
 * square of the difference, else pseudo-Huber sqrt(|diff|^2 + c^2) - c; d_F
 * (batch, per_sample) = loss_weight times the gradient of the batch's mean
 * loss with respect to the student network's output (through c_out at s_{n+1}). */
void distill_loss_cuda(double *sample_loss, float *d_F, const float *student_f, const float *target_f,
                       const distill_sample_coefficients *coefficients, int l2, double huber_c, float loss_weight,
                       int batch, int per_sample, ldm_stream stream);

#ifdef __cplusplus
}
#endif

#endif /* LDM_HAVE_CUDA */

#endif

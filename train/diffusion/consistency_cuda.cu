/* Consistency distillation's arithmetic around the networks on the GPU (see
 * consistency_cuda.h). Every double operation that the host does unfused is
 * written with an _rn intrinsic here, so that nvcc does not contract it into a
 * fused multiply-add with another rounding. */
#include <math.h>

#include "cuda_device.cuh"

extern "C" {
#include "consistency_cuda.h"
}

#define DISTILL_LOSS_THREADS 256

__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
network_input_kernel(float *net_in, const float *x, const distill_sample_coefficients *coefficients, int at,
                     int batch, int per_sample, size_t n) {
    const size_t used = (size_t)batch * per_sample;
    CUDA_FOR_EACH_INDEX(i, n) {
        const size_t within = i % used, b = within / (size_t)per_sample;
        net_in[i] = (float)__dmul_rn(coefficients[b].c_in[at], (double)x[within]);
    }
}

extern "C" void distill_network_input_cuda(float *net_in, const float *x,
                                           const distill_sample_coefficients *coefficients, int at, int batch,
                                           int copies, int per_sample, ldm_stream stream) {
    if (batch <= 0 || per_sample <= 0 || copies <= 0) return;
    CUDA_LAUNCH_ELEMENTWISE(network_input_kernel, (size_t)copies * batch * per_sample, stream, net_in, x,
                            coefficients, at, batch, per_sample);
}

/* The guided teacher's denoiser at element (b, j) from its rows' outputs:
 * D = (float)(c_skip x + c_out F) per row (edm_denoised), then under guidance
 * uncond + w (cond - uncond) in float (distill_trainable.c's teacher_denoise). */
__device__ __forceinline__ float guided_denoised(const distill_sample_coefficients &c, int at, float x, const float *F,
                                                 size_t i, size_t used, int passes) {
    const float cond = (float)__dadd_rn(__dmul_rn(c.edm_skip[at], (double)x), __dmul_rn(c.edm_out[at], (double)F[i]));
    if (passes == 1) return cond;
    const float uncond =
        (float)__dadd_rn(__dmul_rn(c.edm_skip[at], (double)x), __dmul_rn(c.edm_out[at], (double)F[used + i]));
    return __fadd_rn(uncond, __fmul_rn((float)c.guidance, __fsub_rn(cond, uncond)));
}

__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
heun_euler_kernel(float *slope, float *x_now, const float *x_next, const float *F,
                  const distill_sample_coefficients *coefficients, int passes, int per_sample, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) {
        const distill_sample_coefficients c = coefficients[i / (size_t)per_sample];
        const double s = c.sigma[0], h = __dsub_rn(c.sigma[1], s);
        const float denoised = guided_denoised(c, 0, x_next[i], F, i, n, passes);
        const double dx = __dsub_rn((double)x_next[i], (double)denoised) / s;
        slope[i] = (float)dx;
        x_now[i] = (float)__dadd_rn((double)x_next[i], __dmul_rn(h, dx));
    }
}

extern "C" void distill_heun_euler_cuda(float *slope, float *x_now, const float *x_next, const float *F,
                                        const distill_sample_coefficients *coefficients, int batch, int passes,
                                        int per_sample, ldm_stream stream) {
    if (batch <= 0 || per_sample <= 0) return;
    CUDA_LAUNCH_ELEMENTWISE(heun_euler_kernel, (size_t)batch * per_sample, stream, slope, x_now, x_next, F,
                            coefficients, passes, per_sample);
}

__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
heun_correct_kernel(float *x_now, const float *x_next, const float *slope, const float *F,
                    const distill_sample_coefficients *coefficients, int passes, int per_sample, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) {
        const distill_sample_coefficients c = coefficients[i / (size_t)per_sample];
        const double s = c.sigma[1], h = __dsub_rn(s, c.sigma[0]);
        const float denoised = guided_denoised(c, 1, x_now[i], F, i, n, passes);
        const double slope_now = __dsub_rn((double)x_now[i], (double)denoised) / s;
        const double mean_slope = __dadd_rn((double)slope[i], slope_now);
        x_now[i] = (float)__dadd_rn((double)x_next[i], __dmul_rn(__dmul_rn(h, 0.5), mean_slope));
    }
}

extern "C" void distill_heun_correct_cuda(float *x_now, const float *x_next, const float *slope, const float *F,
                                          const distill_sample_coefficients *coefficients, int batch, int passes,
                                          int per_sample, ldm_stream stream) {
    if (batch <= 0 || per_sample <= 0) return;
    CUDA_LAUNCH_ELEMENTWISE(heun_correct_kernel, (size_t)batch * per_sample, stream, x_now, x_next, slope, F,
                            coefficients, passes, per_sample);
}

__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
consistency_output_kernel(float *f, const float *x, const float *F, const distill_sample_coefficients *coefficients,
                          int at, int per_sample, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) {
        const distill_sample_coefficients &c = coefficients[i / (size_t)per_sample];
        f[i] = (float)__dadd_rn(__dmul_rn(c.consistency_skip[at], (double)x[i]),
                                __dmul_rn(c.consistency_out[at], (double)F[i]));
    }
}

extern "C" void distill_consistency_output_cuda(float *f, const float *x, const float *F,
                                                const distill_sample_coefficients *coefficients, int at, int batch,
                                                int per_sample, ldm_stream stream) {
    if (batch <= 0 || per_sample <= 0) return;
    CUDA_LAUNCH_ELEMENTWISE(consistency_output_kernel, (size_t)batch * per_sample, stream, f, x, F, coefficients, at,
                            per_sample);
}

/* One block per sample: the squared distance (each thread its strided
 * elements in order, then block_sum's fixed order), then d_F with the
 * sample's coefficient. */
__global__ static void __launch_bounds__(DISTILL_LOSS_THREADS)
distill_loss_kernel(double *sample_loss, float *d_F, const float *student_f, const float *target_f,
                    const distill_sample_coefficients *coefficients, int l2, double huber_c, float loss_weight,
                    int batch, int per_sample) {
    const int b = blockIdx.x;
    const size_t offset = (size_t)b * per_sample;
    double squares = 0.0;
    for (int j = threadIdx.x; j < per_sample; j += DISTILL_LOSS_THREADS) {
        const double diff = __dsub_rn((double)student_f[offset + j], (double)target_f[offset + j]);
        squares = __dadd_rn(squares, __dmul_rn(diff, diff));
    }
    squares = block_sum(squares);
    /* L2: mean_j diff^2, d/dfs_j = 2 diff / P. Pseudo-Huber: sqrt(S + c^2) - c,
     * d/dfs_j = diff / sqrt(S + c^2). Both over the batch's mean. */
    const double root = sqrt(__dadd_rn(squares, __dmul_rn(huber_c, huber_c)));
    const double per_diff = l2 ? 2.0 / (double)per_sample : (root > 0 ? 1.0 / root : 0.0);
    const double coeff = (double)loss_weight * per_diff * coefficients[b].consistency_out[0] / batch;
    for (int j = threadIdx.x; j < per_sample; j += DISTILL_LOSS_THREADS)
        d_F[offset + j] =
            (float)__dmul_rn(coeff, __dsub_rn((double)student_f[offset + j], (double)target_f[offset + j]));
    if (threadIdx.x == 0) sample_loss[b] = l2 ? squares / (double)per_sample : __dsub_rn(root, huber_c);
}

extern "C" void distill_loss_cuda(double *sample_loss, float *d_F, const float *student_f, const float *target_f,
                                  const distill_sample_coefficients *coefficients, int l2, double huber_c,
                                  float loss_weight, int batch, int per_sample, ldm_stream stream) {
    if (batch <= 0 || per_sample <= 0) return;
    CUDA_LAUNCH_KERNEL(distill_loss_kernel, (unsigned int)batch, DISTILL_LOSS_THREADS, stream, sample_loss, d_F,
                       student_f, target_f, coefficients, l2, huber_c, loss_weight, batch, per_sample);
    CUDA_CHECK_LAUNCH("distill_loss_kernel");
}

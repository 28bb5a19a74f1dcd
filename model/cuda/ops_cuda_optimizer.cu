/* The AdamW step on the GPU in one kernel, bit for bit train/optimizer.c's
 * adamw_step: the bias corrections are computed on the host exactly as there
 * (double pow, sqrt), and the kernel does the same float operations in the same
 * order with explicitly rounded intrinsics (__fmul_rn, __fadd_rn, ...), which
 * nvcc never fuses into multiply-adds -- the CPU build compiles C11 with
 * -ffp-contract=off (GCC's default for ISO C), so it does not fuse them either. */
#include <math.h>

#include "cuda_device.cuh"

extern "C" {
#include "ops_cuda.h"
}

__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
adamw_kernel(float *params, const float *grads, float *m, float *v, float lr, float beta1,
             float beta2, float eps, float weight_decay, float step_size, float sqrt_bc2,
             size_t n) {
    const float decay = __fsub_rn(1.0f, __fmul_rn(lr, weight_decay));
    const float one_minus_b1 = __fsub_rn(1.0f, beta1), one_minus_b2 = __fsub_rn(1.0f, beta2);
    CUDA_FOR_EACH_INDEX(i, n) {
        float g = grads[i];
        float p = __fmul_rn(params[i], decay);
        /* m = b1 * m + (1 - b1) * g; v = b2 * v + (1 - b2) * g * g */
        float mi = __fadd_rn(__fmul_rn(beta1, m[i]), __fmul_rn(one_minus_b1, g));
        float vi = __fadd_rn(__fmul_rn(beta2, v[i]), __fmul_rn(__fmul_rn(one_minus_b2, g), g));
        /* denom = sqrt(v) / sqrt_bc2 + eps; p -= step_size * m / denom */
        float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), sqrt_bc2), eps);
        p = __fsub_rn(p, __fdiv_rn(__fmul_rn(step_size, mi), denom));
        m[i] = mi;
        v[i] = vi;
        params[i] = p;
    }
}

extern "C" void adamw_step_cuda(float *params, const float *grads, float *m, float *v, size_t count, float lr,
                                float beta1, float beta2, float eps, float weight_decay, int64_t step,
                                ldm_stream stream) {
    const double bias_correction1 = 1.0 - pow(beta1, (double)step);
    const double bias_correction2 = 1.0 - pow(beta2, (double)step);
    const float step_size = (float)(lr / bias_correction1);
    const float sqrt_bc2 = (float)sqrt(bias_correction2);
    CUDA_LAUNCH_ELEMENTWISE(adamw_kernel, count, stream, params, grads, m, v, lr, beta1, beta2, eps, weight_decay,
                            step_size, sqrt_bc2);
}

/* ---- the rest of the optimizer step: EMA, scaling, the gradient norm ---- */

__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
ema_kernel(float *ema, const float *params, float step, size_t n) {
    /* ema += step (w - ema), as train/ema.c writes it */
    CUDA_FOR_EACH_INDEX(i, n) ema[i] = __fadd_rn(ema[i], __fmul_rn(step, __fsub_rn(params[i], ema[i])));
}

extern "C" void ema_update_cuda(float *ema, const float *params, size_t count, double decay, ldm_stream stream) {
    if (count == 0) return;
    if (decay == 0.0) { /* a copy, exactly, as on the CPU */
        CUDA_CHECK(cudaMemcpyAsync(ema, params, count * sizeof(float), cudaMemcpyDeviceToDevice, stream));
        return;
    }
    CUDA_LAUNCH_ELEMENTWISE(ema_kernel, count, stream, ema, params, (float)(1.0 - decay));
}

__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS) scale_kernel(float *x, float factor, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) x[i] = __fmul_rn(x[i], factor);
}

extern "C" void scale_cuda(float *x, size_t n, float factor, ldm_stream stream) {
    CUDA_LAUNCH_ELEMENTWISE(scale_kernel, n, stream, x, factor);
}

#define SQUARED_NORM_THREADS 256
/* The total is one warp (one thread of it adds). */
#define SQUARED_NORM_TOTAL_THREADS 32

/* Block k sums the squares of its fixed slice [k * slice, (k + 1) * slice) in
 * double: thread j takes every SQUARED_NORM_THREADS-th element from j, in
 * order, then block_sum adds the threads in its fixed order. */
__global__ static void __launch_bounds__(SQUARED_NORM_THREADS)
squared_norm_partials_kernel(double *partials, const float *x, size_t n, size_t slice) {
    const size_t begin = (size_t)blockIdx.x * slice;
    const size_t end = begin + slice < n ? begin + slice : n;
    double sum = 0.0;
    for (size_t i = begin + threadIdx.x; i < end; i += SQUARED_NORM_THREADS) sum += (double)x[i] * (double)x[i];
    sum = block_sum(sum);
    if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

/* One thread adds the partial sums in block order. */
__global__ static void __launch_bounds__(SQUARED_NORM_TOTAL_THREADS)
squared_norm_total_kernel(double *result, const double *partials, int count) {
    double total = 0.0;
    for (int k = 0; k < count; k++) total += partials[k];
    *result = total;
}

extern "C" void squared_norm_cuda(double *result, double *partials, const float *x, size_t n, ldm_stream stream) {
    const size_t slice = (n + SQUARED_NORM_PARTIALS - 1) / SQUARED_NORM_PARTIALS;
    if (n == 0) {
        CUDA_CHECK(cudaMemsetAsync(result, 0, sizeof(double), stream));
        return;
    }
    CUDA_LAUNCH_KERNEL(squared_norm_partials_kernel, SQUARED_NORM_PARTIALS, SQUARED_NORM_THREADS, stream, partials, x,
                       n, slice);
    CUDA_CHECK_LAUNCH("squared_norm_partials_kernel");
    CUDA_LAUNCH_KERNEL(squared_norm_total_kernel, 1, SQUARED_NORM_TOTAL_THREADS, stream, result, partials,
                       SQUARED_NORM_PARTIALS);
    CUDA_CHECK_LAUNCH("squared_norm_total_kernel");
}

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

__global__ static void adamw_kernel(float *params, const float *grads, float *m, float *v, float lr, float beta1,
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

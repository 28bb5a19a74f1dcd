/* Elementwise activations on the GPU, the CUDA side of ops_activation.c:
 * tanh-approximated GELU (DiT's MLP) and SiLU, forward and backward, with CUDA's
 * full-precision tanhf/expf (the CPU's fast_math.h versions are within a few ulp
 * of them). */
#include "cuda_device.cuh"

extern "C" {
#include "ops_cuda.h"
}

#define GELU_SQRT_2_OVER_PI 0.7978845608028654f
#define GELU_COEFF 0.044715f

__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
gelu_forward_kernel(float *out, const float *in, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) {
        float x = in[i];
        float u = GELU_SQRT_2_OVER_PI * (x + GELU_COEFF * x * x * x);
        out[i] = 0.5f * x * (1.0f + tanhf(u));
    }
}

__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
gelu_backward_kernel(float *d_in, const float *d_out, const float *in, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) {
        float x = in[i];
        float u = GELU_SQRT_2_OVER_PI * (x + GELU_COEFF * x * x * x);
        float th = tanhf(u);
        float du = GELU_SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_COEFF * x * x);
        d_in[i] = d_out[i] * (0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du);
    }
}

__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
silu_forward_kernel(float *out, const float *in, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) out[i] = in[i] / (1.0f + expf(-in[i]));
}

__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
silu_backward_kernel(float *d_in, const float *d_out, const float *in, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) {
        float x = in[i];
        float s = 1.0f / (1.0f + expf(-x));
        d_in[i] = d_out[i] * s * (1.0f + x * (1.0f - s));
    }
}

extern "C" void gelu_tanh_forward_cuda(float *out, const float *in, size_t n, ldm_stream stream) {
    CUDA_LAUNCH_ELEMENTWISE(gelu_forward_kernel, n, stream, out, in);
}

extern "C" void gelu_tanh_backward_cuda(float *d_in, const float *d_out, const float *in, size_t n,
                                        ldm_stream stream) {
    CUDA_LAUNCH_ELEMENTWISE(gelu_backward_kernel, n, stream, d_in, d_out, in);
}

extern "C" void silu_forward_cuda(float *out, const float *in, size_t n, ldm_stream stream) {
    CUDA_LAUNCH_ELEMENTWISE(silu_forward_kernel, n, stream, out, in);
}

extern "C" void silu_backward_cuda(float *d_in, const float *d_out, const float *in, size_t n, ldm_stream stream) {
    CUDA_LAUNCH_ELEMENTWISE(silu_backward_kernel, n, stream, d_in, d_out, in);
}

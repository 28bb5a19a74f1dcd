/* The samplers' elementwise kernels on the GPU (see sampler_cuda_kernels.h). */
#include "cuda_device.cuh"

extern "C" {
#include "sampler_cuda_kernels.h"
}

__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS) fill_kernel(float *out, float value, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) out[i] = value;
}

extern "C" void sampler_fill_cuda(float *out, float value, size_t n, ldm_stream stream) {
    CUDA_LAUNCH_ELEMENTWISE(fill_kernel, n, stream, out, value);
}

__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
network_input_kernel(float *net_in, const float *x, double c_in, int batch, int rows, int per_sample, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) {
        const size_t row = i / (size_t)per_sample, j = i % (size_t)per_sample;
        const size_t b = row % (size_t)rows;
        net_in[i] = b < (size_t)batch ? (float)(c_in * (double)x[b * per_sample + j]) : 0.0f;
    }
}

extern "C" void sampler_network_input_cuda(float *net_in, const float *x, double c_in, int batch, int rows,
                                           int passes, int per_sample, ldm_stream stream) {
    CUDA_LAUNCH_ELEMENTWISE(network_input_kernel, (size_t)passes * rows * per_sample, stream, net_in, x, c_in, batch,
                            rows, per_sample);
}

__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
edm_step_kernel(float *x_next, float *d, const float *x, const float *F, size_t block, double c_skip, double c_out,
                int guided, float guidance, float inv_sigma, float h, int second, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) {
        const float noisy = second ? x_next[i] : x[i];
        float denoised = (float)(c_skip * (double)noisy + c_out * (double)F[i]);
        if (guided) {
            const float uncond = (float)(c_skip * (double)noisy + c_out * (double)F[block + i]);
            denoised = __fadd_rn(uncond, __fmul_rn(guidance, __fsub_rn(denoised, uncond)));
        }
        const float slope = __fmul_rn(__fsub_rn(noisy, denoised), inv_sigma);
        if (!second) {
            d[i] = slope;
            x_next[i] = __fadd_rn(x[i], __fmul_rn(h, slope));
        } else {
            x_next[i] = __fadd_rn(x[i], __fmul_rn(h, __fadd_rn(__fmul_rn(0.5f, d[i]), __fmul_rn(0.5f, slope))));
        }
    }
}

extern "C" void sampler_edm_step_cuda(float *x_next, float *d, const float *x, const float *F, size_t block,
                                      double c_skip, double c_out, int guided, float guidance, float inv_sigma,
                                      float h, int second, size_t used, ldm_stream stream) {
    CUDA_LAUNCH_ELEMENTWISE(edm_step_kernel, used, stream, x_next, d, x, F, block, c_skip, c_out, guided, guidance,
                            inv_sigma, h, second);
}

__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
consistency_output_kernel(float *f, const float *x, const float *F, double c_skip, double c_out, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) f[i] = (float)(c_skip * (double)x[i] + c_out * (double)F[i]);
}

extern "C" void sampler_consistency_output_cuda(float *f, const float *x, const float *F, double c_skip,
                                                double c_out, size_t used, ldm_stream stream) {
    CUDA_LAUNCH_ELEMENTWISE(consistency_output_kernel, used, stream, f, x, F, c_skip, c_out);
}

__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
add_kernel(float *x, const float *noise, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) x[i] = __fadd_rn(x[i], noise[i]);
}

extern "C" void sampler_add_cuda(float *x, const float *noise, size_t used, ldm_stream stream) {
    CUDA_LAUNCH_ELEMENTWISE(add_kernel, used, stream, x, noise);
}

__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
unnormalize_kernel(float *z, const float *x, const float *scale, const float *shift, int channels, size_t plane,
                   size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) {
        const size_t c = (i / plane) % (size_t)channels;
        z[i] = __fadd_rn(__fmul_rn(x[i], scale[c]), shift[c]);
    }
}

extern "C" void sampler_unnormalize_cuda(float *z, const float *x, const float *scale, const float *shift,
                                         int channels, size_t plane, size_t used, ldm_stream stream) {
    CUDA_LAUNCH_ELEMENTWISE(unnormalize_kernel, used, stream, z, x, scale, shift, channels, plane);
}

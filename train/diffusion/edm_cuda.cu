/* The EDM training step around the network on the GPU (see edm_cuda.h). */
#include <math.h>

#include "cuda_device.cuh"

extern "C" {
#include "edm_cuda.h"
}

#define GOLDEN_GAMMA 0x9e3779b97f4a7c15ull /* splitmix64's increment (base/rng.c) */
#define LOSS_THREADS 256

__device__ __forceinline__ uint64_t splitmix64_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* rng_normal on draws k and k + 1 of a stream whose state is `state`. */
__device__ __forceinline__ float stream_normal(uint64_t state, uint64_t k) {
    const double u1 = ((double)(splitmix64_mix(state + k * GOLDEN_GAMMA) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    const double u2 = (double)(splitmix64_mix(state + (k + 1) * GOLDEN_GAMMA) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
training_input_kernel(float *net_in, float *noise, const float *x, const uint64_t *streams,
                      const edm_sample_coefficients *coefficients, int per_sample, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) {
        const size_t b = i / (size_t)per_sample, j = i % (size_t)per_sample;
        const edm_sample_coefficients c = coefficients[b];
        const float e = stream_normal(streams[b], 2 * (uint64_t)j + 1);
        noise[i] = e;
        net_in[i] = (float)(c.c_in * ((double)x[i] + c.sigma * (double)e));
    }
}

extern "C" void edm_training_input_cuda(float *net_in, float *noise, const float *x, const uint64_t *noise_streams,
                                        const edm_sample_coefficients *coefficients, int batch, int per_sample,
                                        ldm_stream stream) {
    if (batch <= 0 || per_sample <= 0) return;
    CUDA_LAUNCH_ELEMENTWISE(training_input_kernel, (size_t)batch * per_sample, stream, net_in, noise, x, noise_streams,
                            coefficients, per_sample);
}

/* One block per sample: each thread its strided elements in order, then
 * block_sum's fixed order. */
__global__ static void __launch_bounds__(LOSS_THREADS)
training_loss_kernel(double *sample_loss, float *d_F, float d_loss, const float *x,
                     const float *noise, const float *F,
                     const edm_sample_coefficients *coefficients, int batch, int per_sample) {
    const int b = blockIdx.x;
    const edm_sample_coefficients c = coefficients[b];
    /* dloss/dF_bj = 2 lambda c_out (D - x) / (batch per_sample), as edm.c */
    const double grad_coeff = 2.0 * (double)d_loss * c.loss_weight * c.c_out / ((double)batch * per_sample);
    const size_t offset = (size_t)b * per_sample;
    double squares = 0.0;
    for (int j = threadIdx.x; j < per_sample; j += LOSS_THREADS) {
        const double clean = x[offset + j];
        const double noisy = clean + c.sigma * (double)noise[offset + j];
        const double residual = c.c_skip * noisy + c.c_out * (double)F[offset + j] - clean; /* D - x */
        squares += residual * residual;
        if (d_F) d_F[offset + j] = (float)(grad_coeff * residual);
    }
    squares = block_sum(squares);
    if (threadIdx.x == 0) sample_loss[b] = c.loss_weight * squares / per_sample;
}

extern "C" void edm_training_loss_cuda(double *sample_loss, float *d_F, float d_loss, const float *x,
                                       const float *noise, const float *F,
                                       const edm_sample_coefficients *coefficients, int batch, int per_sample,
                                       ldm_stream stream) {
    if (batch <= 0 || per_sample <= 0) return;
    CUDA_LAUNCH_KERNEL(training_loss_kernel, (unsigned int)batch, LOSS_THREADS, stream, sample_loss, d_F, d_loss, x,
                       noise, F, coefficients, batch, per_sample);
    CUDA_CHECK_LAUNCH("training_loss_kernel");
}

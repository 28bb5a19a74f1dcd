/* Planted for tests/launch_resources/planted_kernels.sh: 64 KB of static shared
 * memory (more than 48 KB needs the opt-in attribute), which
 * check_launch_resources.py must refuse. */
#include "cuda_device.cuh"

#define PLANTED_THREADS 256
#define PLANTED_SHARED_FLOATS (16 * 1024)

__global__ static void __launch_bounds__(PLANTED_THREADS) planted_shared_kernel(float *out, const float *x) {
    __shared__ float staged[PLANTED_SHARED_FLOATS];
    for (int i = threadIdx.x; i < PLANTED_SHARED_FLOATS; i += PLANTED_THREADS) staged[i] = x[i];
    __syncthreads();
    out[threadIdx.x] = staged[PLANTED_SHARED_FLOATS - 1 - threadIdx.x];
}

void launch_planted_shared(float *out, const float *x) {
    CUDA_LAUNCH_KERNEL(planted_shared_kernel, 1, PLANTED_THREADS, NULL, out, x);
}

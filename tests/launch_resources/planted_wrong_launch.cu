/* Planted for tests/launch_resources/planted_kernels.sh: a kernel bounded by
 * 256 threads but launched with 1024 (the launch would fail on a GPU), which
 * check_launch_resources.py must refuse. */
#include "cuda_device.cuh"

#define PLANTED_THREADS 256
#define PLANTED_BIG_BLOCK 1024

__global__ static void __launch_bounds__(PLANTED_THREADS) planted_sum_kernel(double *out, const float *x, int n) {
    double s = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += x[i];
    s = block_sum(s);
    if (threadIdx.x == 0) *out = s;
}

void launch_planted_sum(double *out, const float *x, int n) {
    CUDA_LAUNCH_KERNEL(planted_sum_kernel, 1, PLANTED_BIG_BLOCK, NULL, out, x, n);
}

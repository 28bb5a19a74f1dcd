/* Planted for tests/launch_resources/planted_kernels.sh: a kernel without
 * __launch_bounds__, which check_launch_resources.py must refuse. */
#include "cuda_device.cuh"

__global__ static void unbounded_kernel(float *x, size_t n) { CUDA_FOR_EACH_INDEX(i, n) x[i] *= 2.0f; }

void launch_unbounded(float *x, size_t n) { CUDA_LAUNCH_ELEMENTWISE(unbounded_kernel, n, NULL, x); }

/* The CUDA side of device discovery (see device.h): device count and names,
 * and the first kernel (SiLU) with its host wrapper, checked against the CPU op
 * by tests/test_device.c when a GPU is present. */
#include <cuda_runtime.h>
#include <stdio.h>

#include "cuda_check.h"

extern "C" {
#include "device.h"
}

/* "CUDA error: TEXT" of the last count query that failed otherwise than with
 * "no device"; empty when it worked. */
static char count_error[256];

extern "C" int device_cuda_count_impl(void) {
    int count = 0;
    const cudaError_t result = cudaGetDeviceCount(&count);
    count_error[0] = '\0';
    if (result == cudaSuccess) return count;
    cudaGetLastError(); /* not sticky: clear it for the calls that follow */
    /* No device is a machine without a GPU; anything else (a driver too old
     * for this runtime, none loaded, a device in a bad state) is a GPU machine
     * that cannot be used, and says why. */
    if (result != cudaErrorNoDevice) snprintf(count_error, sizeof count_error, "CUDA error: %s", cudaGetErrorString(result));
    return 0;
}

extern "C" const char *device_cuda_error_impl(void) { return count_error[0] ? count_error : NULL; }

extern "C" void device_cuda_name(int device, char *out, size_t size) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
        snprintf(out, size, "(unknown)");
        return;
    }
    snprintf(out, size, "%s (sm_%d%d, %.0f GiB)", prop.name, prop.major, prop.minor,
             prop.totalGlobalMem / 1073741824.0);
}

#define SILU_THREADS 256

__global__ static void __launch_bounds__(SILU_THREADS) silu_kernel(float *out, const float *in, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float x = in[i];
        out[i] = x / (1.0f + expf(-x));
    }
}

extern "C" int device_cuda_silu(float *out, const float *in, size_t n) {
    float *d_in = NULL, *d_out = NULL;
    int rc = -1;
    if (cudaMalloc(&d_in, n * sizeof(float)) != cudaSuccess) goto done;
    if (cudaMalloc(&d_out, n * sizeof(float)) != cudaSuccess) goto done;
    if (cudaMemcpy(d_in, in, n * sizeof(float), cudaMemcpyHostToDevice) != cudaSuccess) goto done;
    CUDA_LAUNCH_KERNEL(silu_kernel, (unsigned)((n + SILU_THREADS - 1) / SILU_THREADS), SILU_THREADS, NULL, d_out,
                       d_in, n);
    if (cudaGetLastError() != cudaSuccess) goto done;
    if (cudaMemcpy(out, d_out, n * sizeof(float), cudaMemcpyDeviceToHost) != cudaSuccess) goto done;
    rc = 0;
done:
    cudaFree(d_in);
    cudaFree(d_out);
    return rc;
}

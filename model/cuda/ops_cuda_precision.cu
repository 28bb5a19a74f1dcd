/* The 16-bit formats on the GPU, the CUDA side of precision.c: float to bf16 /
 * fp16 bits (round to nearest even, overflow to infinity, fp16 subnormals kept,
 * NaN made quiet) and back, rounding in place, and the store of precision_store.
 * The conversions are cuda_device.cuh's copies of precision.h's, bit for bit
 * (also for NaN payloads, where the CPU's F16C array path may differ from its
 * own scalar functions). PRECISION_FP32 does nothing. */
#include "cuda_device.cuh"

extern "C" {
#include "ops_cuda.h"
}

template <int PRECISION> __device__ __forceinline__ uint16_t to_bits(float f) {
    return PRECISION == PRECISION_BF16 ? device_bf16_from_float(f) : device_fp16_from_float(f);
}

template <int PRECISION> __device__ __forceinline__ float from_bits(uint16_t h) {
    return PRECISION == PRECISION_BF16 ? device_bf16_to_float(h) : device_fp16_to_float(h);
}

/* stored (or NULL) = bits of x; x (when write_back) = the value of those bits. */
template <int PRECISION>
__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
store_kernel(uint16_t *stored, float *x, int write_back, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) {
        uint16_t h = to_bits<PRECISION>(x[i]);
        if (stored) stored[i] = h;
        if (write_back) x[i] = from_bits<PRECISION>(h);
    }
}

template <int PRECISION> __global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
load_kernel(float *x, const uint16_t *stored, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) x[i] = from_bits<PRECISION>(stored[i]);
}

/* The const cast: with write_back 0 the kernel only reads x. */
static void store(ldm_precision precision, uint16_t *stored, const float *x, int write_back, size_t n,
                  cudaStream_t stream) {
    if (precision == PRECISION_BF16)
        CUDA_LAUNCH_ELEMENTWISE(store_kernel<PRECISION_BF16>, n, stream, stored, (float *)x, write_back);
    else if (precision == PRECISION_FP16)
        CUDA_LAUNCH_ELEMENTWISE(store_kernel<PRECISION_FP16>, n, stream, stored, (float *)x, write_back);
}

extern "C" void precision_to_bits_cuda(ldm_precision precision, uint16_t *stored, const float *x, size_t n,
                                       ldm_stream stream) {
    store(precision, stored, x, 0, n, stream);
}

extern "C" void precision_round_cuda(ldm_precision precision, float *x, size_t n, ldm_stream stream) {
    store(precision, NULL, x, 1, n, stream);
}

extern "C" void precision_store_cuda(ldm_precision precision, uint16_t *stored, float *x, size_t n,
                                     ldm_stream stream) {
    store(precision, stored, x, 1, n, stream);
}

extern "C" void precision_from_bits_cuda(ldm_precision precision, float *x, const uint16_t *stored, size_t n,
                                         ldm_stream stream) {
    if (precision == PRECISION_BF16)
        CUDA_LAUNCH_ELEMENTWISE(load_kernel<PRECISION_BF16>, n, stream, x, stored);
    else if (precision == PRECISION_FP16)
        CUDA_LAUNCH_ELEMENTWISE(load_kernel<PRECISION_FP16>, n, stream, x, stored);
}

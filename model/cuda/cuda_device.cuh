/* Internal to the CUDA sources (C++, included by .cu files only): device helpers
 * shared by the kernels -- block reductions in a fixed order (deterministic: the
 * same shuffle pattern and the same shared-memory order on every run), the
 * 16-bit formats of precision.h written for the device bit for bit, loads of a
 * tensor element of any storage precision as float -- and the deterministic
 * column sums used for bias, shift, scale and gate gradients. */
#ifndef LDM_CUDA_DEVICE_CUH
#define LDM_CUDA_DEVICE_CUH

#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "cuda_check.h"

extern "C" {
#include "precision.h"
}

/* ---- reductions: blockDim.x must be a multiple of 32 (at most 1024) ---- */

template <typename T> __device__ __forceinline__ T warp_sum(T v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, offset));
    return v;
}

/* The sum over the block of every thread's v, returned to every thread. Each warp
 * sums by shuffles, then warp 0 sums the warps' results: a fixed order. Every
 * thread of the block must call it (it synchronises). */
template <typename T> __device__ T block_sum(T v) {
    __shared__ T partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads(); /* an earlier call may still be reading partial[0] */
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        T w = lane < warps ? partial[lane] : (T)0;
        w = warp_sum(w);
        if (lane == 0) partial[0] = w;
    }
    __syncthreads();
    return partial[0];
}

/* The maximum over the block (same pattern as block_sum). */
__device__ __forceinline__ float block_max(float v) {
    __shared__ float partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float w = lane < warps ? partial[lane] : -INFINITY;
        w = warp_max(w);
        if (lane == 0) partial[0] = w;
    }
    __syncthreads();
    return partial[0];
}

/* ---- the 16-bit formats: the same integer and float operations as precision.h ---- */

__device__ __forceinline__ uint16_t device_bf16_from_float(float f) {
    uint32_t x = __float_as_uint(f);
    uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
    uint32_t nan = (x >> 16) | 0x40u;
    return (uint16_t)((x & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

__device__ __forceinline__ float device_bf16_to_float(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }

__device__ __forceinline__ uint16_t device_fp16_from_float(float f) {
    uint32_t x = __float_as_uint(f);
    uint32_t sign = x & 0x80000000u, a = x ^ sign;
    uint32_t normal = (a + 0xc8000fffu + ((a >> 13) & 1u)) >> 13;
    /* round-to-nearest-even float addition (denormals are kept: no -ftz) */
    uint32_t subnormal = __float_as_uint(__fadd_rn(__uint_as_float(a), 0.5f)) - 0x3f000000u;
    uint32_t r = a < 0x38800000u ? subnormal : normal;
    r = a >= 0x47800000u ? 0x7c00u : r;
    r = a > 0x7f800000u ? 0x7e00u : r;
    return (uint16_t)(r | (sign >> 16));
}

__device__ __forceinline__ float device_fp16_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
    uint32_t normal = ((exponent + 112u) << 23) | (mantissa << 13);
    uint32_t special = 0x7f800000u | (mantissa << 13);
    float subnormal = __fmul_rn(__uint2float_rn(mantissa), 5.9604644775390625e-08f); /* mantissa * 2^-24, exact */
    uint32_t bits = exponent == 31 ? special : normal;
    bits = exponent == 0 ? __float_as_uint(subnormal) : bits;
    return __uint_as_float(bits | sign);
}

/* The float nearest to f that the format holds (f itself in fp32): precision_round. */
__device__ __forceinline__ float device_precision_round(int precision, float f) {
    if (precision == PRECISION_BF16) return device_bf16_to_float(device_bf16_from_float(f));
    if (precision == PRECISION_FP16) return device_fp16_to_float(device_fp16_from_float(f));
    return f;
}

/* Element i of a tensor stored in PRECISION (float, or 16-bit bits), as float. */
template <int PRECISION> __device__ __forceinline__ float load_as_float(const void *data, size_t i);
template <> __device__ __forceinline__ float load_as_float<PRECISION_FP32>(const void *data, size_t i) {
    return ((const float *)data)[i];
}
template <> __device__ __forceinline__ float load_as_float<PRECISION_BF16>(const void *data, size_t i) {
    return device_bf16_to_float(((const uint16_t *)data)[i]);
}
template <> __device__ __forceinline__ float load_as_float<PRECISION_FP16>(const void *data, size_t i) {
    return device_fp16_to_float(((const uint16_t *)data)[i]);
}

/* ---- column sums (ops_cuda_elementwise.cu) ----
 * dst[b * dst_stride + j] += sum over t < tokens of a[(b * tokens + t) * dim + j]
 *                            (times factor[same index] when factor is not NULL),
 * for b < batch, j < dim; a is stored in a_precision, factor is float. Every
 * column is summed by one block in a fixed order: deterministic, no atomics.
 * The bias gradient is batch 1, tokens = rows. */
void column_sums_accumulate_cuda(float *dst, long long dst_stride, const void *a, ldm_precision a_precision,
                                 const float *factor, int batch, int tokens, int dim, cudaStream_t stream);

#endif

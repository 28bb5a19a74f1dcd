/* The device pieces of dit_cuda_kernels.h: the model's stream, asynchronous
 * zeroing and copies, the scaled copy and the rounding of bias segments. */
#include "cuda_device.cuh"

extern "C" {
#include "dit_cuda_kernels.h"
}

#define SEGMENT_THREADS 256

extern "C" ldm_stream dit_cuda_stream_create(void) {
    cudaStream_t stream;
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    return stream;
}

extern "C" void dit_cuda_stream_destroy(ldm_stream stream) {
    if (stream) CUDA_CHECK(cudaStreamDestroy(stream));
}

extern "C" void dit_cuda_stream_synchronize(ldm_stream stream) { CUDA_CHECK(cudaStreamSynchronize(stream)); }

extern "C" void dit_cuda_zero_async(void *device, size_t bytes, ldm_stream stream) {
    if (bytes) CUDA_CHECK(cudaMemsetAsync(device, 0, bytes, stream));
}

extern "C" void dit_cuda_copy_async(void *dst, const void *src, size_t bytes, ldm_stream stream) {
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream));
}

__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
scale_kernel(float *out, const float *in, float factor, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) out[i] = __fmul_rn(factor, in[i]);
}

extern "C" void dit_cuda_scale(float *out, const float *in, float factor, size_t n, ldm_stream stream) {
    CUDA_LAUNCH_ELEMENTWISE(scale_kernel, n, stream, out, in, factor);
}

/* Block s rounds segment s. */
__global__ static void __launch_bounds__(SEGMENT_THREADS)
round_segments_kernel(float *out, const float *src, const long long *segments,
                      int precision) {
    const long long *segment = segments + 3 * (size_t)blockIdx.x;
    const float *from = src + segment[0];
    float *to = out + segment[1];
    for (long long i = threadIdx.x; i < segment[2]; i += blockDim.x)
        to[i] = device_precision_round(precision, from[i]);
}

extern "C" void dit_cuda_round_segments(ldm_precision precision, float *out, const float *src,
                                        const long long *segments, int count, ldm_stream stream) {
    if (count <= 0) return;
    CUDA_LAUNCH_KERNEL(round_segments_kernel, (unsigned int)count, SEGMENT_THREADS, stream, out, src, segments,
                       (int)precision);
    CUDA_CHECK_LAUNCH("round_segments_kernel");
}

/* The input embeddings of DiT on the GPU, the CUDA side of ops_embedding.c: the
 * sinusoidal timestep embedding (arguments, sines and cosines in double, as on
 * the CPU) and the class-label table lookup. The table gradient is
 * deterministic without atomics: one thread per (table row, column) scans the
 * labels in batch order and adds the rows that carry its label, the CPU's order. */
#include "cuda_device.cuh"

extern "C" {
#include "ops_cuda.h"
}

#define SINCOS_MAX_PERIOD 10000.0

__device__ __forceinline__ double timestep_frequency(int k, int half) {
    return exp(-log(SINCOS_MAX_PERIOD) * k / half);
}

/* Element i = b * half + k: out[b, k] = cos(t f_k), out[b, half + k] = sin(t f_k). */
__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
timestep_embedding_forward_kernel(float *out, const float *t, int dim, int half, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) {
        size_t b = i / half;
        int k = (int)(i % half);
        double arg = (double)t[b] * timestep_frequency(k, half);
        out[b * dim + k] = (float)cos(arg);
        out[b * dim + half + k] = (float)sin(arg);
    }
}

/* One thread per sample: d_t[b] = sum_k in order, in double. */
__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
timestep_embedding_backward_kernel(float *d_t, const float *d_out, const float *t, int dim,
                                   int half, size_t n) {
    CUDA_FOR_EACH_INDEX(b, n) {
        const float *g = d_out + b * dim;
        double sum = 0.0;
        for (int k = 0; k < half; k++) {
            double f = timestep_frequency(k, half);
            double arg = (double)t[b] * f;
            sum += g[k] * (-f * sin(arg)) + g[half + k] * (f * cos(arg));
        }
        d_t[b] = (float)sum;
    }
}

__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
embedding_forward_kernel(float *out, const float *table, const int *labels, int dim, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) {
        size_t b = i / dim, j = i % dim;
        out[i] = table[(size_t)labels[b] * dim + j];
    }
}

/* Element i = row * dim + j of d_table. */
__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
embedding_backward_kernel(float *d_table, const float *d_out, const int *labels, int batch,
                          int dim, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) {
        const int row = (int)(i / dim);
        const size_t j = i % dim;
        float acc = d_table[i];
        for (int b = 0; b < batch; b++)
            if (labels[b] == row) acc += d_out[(size_t)b * dim + j];
        d_table[i] = acc;
    }
}

extern "C" void timestep_embedding_forward_cuda(float *out, const float *t, int batch, int dim, ldm_stream stream) {
    const int half = dim / 2;
    if (batch <= 0 || half <= 0) return;
    CUDA_LAUNCH_ELEMENTWISE(timestep_embedding_forward_kernel, (size_t)batch * half, stream, out, t, dim, half);
}

extern "C" void timestep_embedding_backward_cuda(float *d_t, const float *d_out, const float *t, int batch, int dim,
                                                 ldm_stream stream) {
    if (batch <= 0) return;
    CUDA_LAUNCH_ELEMENTWISE(timestep_embedding_backward_kernel, (size_t)batch, stream, d_t, d_out, t, dim, dim / 2);
}

extern "C" void embedding_forward_cuda(float *out, const float *table, const int *labels, int batch, int dim,
                                       ldm_stream stream) {
    if (batch <= 0 || dim <= 0) return;
    CUDA_LAUNCH_ELEMENTWISE(embedding_forward_kernel, (size_t)batch * dim, stream, out, table, labels, dim);
}

extern "C" void embedding_backward_cuda(float *d_table, const float *d_out, const int *labels, int batch, int dim,
                                        int table_rows, ldm_stream stream) {
    if (batch <= 0 || dim <= 0 || table_rows <= 0) return;
    CUDA_LAUNCH_ELEMENTWISE(embedding_backward_kernel, (size_t)table_rows * dim, stream, d_table, d_out, labels, batch,
                            dim);
}

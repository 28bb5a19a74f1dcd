/* The small elementwise helpers of ops.h on the GPU (add, add_row_broadcast) and
 * the deterministic column sums (cuda_device.cuh) behind every gradient that is
 * a sum over rows or tokens: the linear bias gradient and the adaLN shift, scale
 * and gate gradients. A column sum is computed by one block: COLUMN_SUM_ROWS
 * threads per column each sum a fixed, strided subset of the rows in order, and
 * thread 0 of the column adds their partial sums in order; nothing depends on
 * scheduling. */
#include "cuda_device.cuh"

extern "C" {
#include "ops_cuda.h"
}

#define COLUMN_SUM_COLS 32
#define COLUMN_SUM_ROWS 16

__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
add_kernel(float *out, const float *a, const float *b, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) out[i] = a[i] + b[i];
}

__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
add_row_broadcast_kernel(float *out, const float *row, int dim, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) out[i] += row[i % (size_t)dim];
}

extern "C" void add_forward_cuda(float *out, const float *a, const float *b, size_t n, ldm_stream stream) {
    CUDA_LAUNCH_ELEMENTWISE(add_kernel, n, stream, out, a, b);
}

extern "C" void add_row_broadcast_cuda(float *out, const float *row, int rows, int dim, ldm_stream stream) {
    if (rows <= 0 || dim <= 0) return;
    CUDA_LAUNCH_ELEMENTWISE(add_row_broadcast_kernel, (size_t)rows * dim, stream, out, row, dim);
}

/* Block (COLUMN_SUM_COLS, COLUMN_SUM_ROWS) sums COLUMN_SUM_COLS columns of one
 * sample; blockIdx.x = sample * column_blocks + column block. */
template <int PRECISION>
__global__ static void __launch_bounds__(COLUMN_SUM_COLS * COLUMN_SUM_ROWS)
column_sums_kernel(float *dst, long long dst_stride, const void *a, const float *factor,
                   int tokens, int dim, int column_blocks) {
    __shared__ float partial[COLUMN_SUM_ROWS][COLUMN_SUM_COLS + 1];
    const int b = blockIdx.x / column_blocks, column_block = blockIdx.x % column_blocks;
    const int j = column_block * COLUMN_SUM_COLS + threadIdx.x;
    float acc = 0.0f;
    if (j < dim) {
        for (int t = threadIdx.y; t < tokens; t += COLUMN_SUM_ROWS) {
            size_t i = ((size_t)b * tokens + t) * dim + j;
            float value = load_as_float<PRECISION>(a, i);
            acc += factor ? value * factor[i] : value;
        }
    }
    partial[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && j < dim) {
        float sum = partial[0][threadIdx.x];
        for (int y = 1; y < COLUMN_SUM_ROWS; y++) sum += partial[y][threadIdx.x];
        dst[(size_t)b * dst_stride + j] += sum;
    }
}

void column_sums_accumulate_cuda(float *dst, long long dst_stride, const void *a, ldm_precision a_precision,
                                 const float *factor, int batch, int tokens, int dim, cudaStream_t stream) {
    if (batch <= 0 || dim <= 0 || tokens <= 0) return; /* tokens 0: sums of nothing, nothing to add */
    const int column_blocks = (dim + COLUMN_SUM_COLS - 1) / COLUMN_SUM_COLS;
    const dim3 block(COLUMN_SUM_COLS, COLUMN_SUM_ROWS);
    const unsigned int grid = (unsigned int)((size_t)batch * column_blocks);
    switch (a_precision) {
    case PRECISION_BF16:
        CUDA_LAUNCH_KERNEL(column_sums_kernel<PRECISION_BF16>, grid, block, stream, dst, dst_stride, a, factor, tokens,
                           dim, column_blocks);
        break;
    case PRECISION_FP16:
        CUDA_LAUNCH_KERNEL(column_sums_kernel<PRECISION_FP16>, grid, block, stream, dst, dst_stride, a, factor, tokens,
                           dim, column_blocks);
        break;
    default:
        CUDA_LAUNCH_KERNEL(column_sums_kernel<PRECISION_FP32>, grid, block, stream, dst, dst_stride, a, factor, tokens,
                           dim, column_blocks);
        break;
    }
    CUDA_CHECK_LAUNCH("column_sums_kernel");
}

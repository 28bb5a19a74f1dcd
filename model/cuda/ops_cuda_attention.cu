/* The multi-head self-attention core on the GPU, the CUDA side of
 * ops_attention.c, on the same fused qkv layout (batch, tokens, 3, heads,
 * head_dim). The GEMMs are the CPU's sgemm calls, made strided-batched over the
 * samples (one call per head: a head's q, k, v, out and probability blocks sit
 * at a constant stride from one sample to the next). Between them one fused
 * kernel per pass works on whole score rows: scale + softmax in forward, the
 * softmax backward (with the scale folded in) in backward, each also rounding
 * its result to the 16-bit format when the precision asks for it, as
 * attention_forward_precision / attention_backward_precision do. */
#include "cuda_device.cuh"

extern "C" {
#include "ops_cuda.h"
}

#define SOFTMAX_THREADS 256

/* Row r of scores (rows, tokens), in place: p = softmax(scale * s), rounded to the format. */
__global__ static void __launch_bounds__(SOFTMAX_THREADS)
scaled_softmax_kernel(float *scores, int tokens, float scale, int precision) {
    float *row = scores + (size_t)blockIdx.x * tokens;
    float max = -INFINITY;
    for (int j = threadIdx.x; j < tokens; j += blockDim.x) max = fmaxf(max, scale * row[j]);
    max = block_max(max);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < tokens; j += blockDim.x) {
        float e = expf(scale * row[j] - max);
        row[j] = e; /* read back below by the same thread */
        sum += e;
    }
    sum = block_sum(sum);
    const float inv = 1.0f / sum;
    for (int j = threadIdx.x; j < tokens; j += blockDim.x) row[j] = device_precision_round(precision, row[j] * inv);
}

/* Row r, in place in d_scores (which holds d_probs): d_score = scale * p * (d_p - sum_j p d_p), rounded. */
__global__ static void __launch_bounds__(SOFTMAX_THREADS)
softmax_backward_kernel(float *d_scores, const float *probs, int tokens, float scale,
                        int precision) {
    float *ds = d_scores + (size_t)blockIdx.x * tokens;
    const float *p = probs + (size_t)blockIdx.x * tokens;
    float weighted = 0.0f;
    for (int j = threadIdx.x; j < tokens; j += blockDim.x) weighted += p[j] * ds[j];
    weighted = block_sum(weighted);
    for (int j = threadIdx.x; j < tokens; j += blockDim.x)
        ds[j] = device_precision_round(precision, scale * p[j] * (ds[j] - weighted));
}

/* The shapes every GEMM of one head uses: strides between samples in elements. */
typedef struct {
    int tokens, head_dim, dim, ld; /* ld = 3 * dim, the row stride of qkv */
    long long qkv_stride, out_stride, probs_stride;
    size_t probs_block; /* tokens * tokens: one (sample, head) block of probs */
} attention_shape;

static attention_shape attention_shape_of(int tokens, int heads, int head_dim) {
    attention_shape s;
    s.tokens = tokens;
    s.head_dim = head_dim;
    s.dim = heads * head_dim;
    s.ld = 3 * s.dim;
    s.qkv_stride = (long long)tokens * s.ld;
    s.out_stride = (long long)tokens * s.dim;
    s.probs_block = (size_t)tokens * tokens;
    s.probs_stride = (long long)heads * s.probs_block;
    return s;
}

extern "C" void attention_forward_cuda(gemm_cuda_context *ctx, float *out, float *probs, const float *qkv, int batch,
                                       int tokens, int heads, int head_dim, ldm_precision precision,
                                       ldm_stream stream) {
    if (batch <= 0 || tokens <= 0 || heads <= 0) return;
    const attention_shape s = attention_shape_of(tokens, heads, head_dim);
    const int T = tokens, hd = head_dim;
    /* scores = q k^T for every (sample, head), into probs */
    for (int h = 0; h < heads; h++) {
        const float *q = qkv + (size_t)h * hd, *k = q + s.dim;
        float *p = probs + h * s.probs_block;
        gemm_cuda_strided_batched(ctx, 0, 1, T, T, hd, 1.0f, q, s.ld, s.qkv_stride, k, s.ld, s.qkv_stride, 0.0f, p, T,
                                  s.probs_stride, batch, stream);
    }
    const float scale = 1.0f / sqrtf((float)head_dim);
    CUDA_LAUNCH_KERNEL(scaled_softmax_kernel, (unsigned int)batch * heads * T, SOFTMAX_THREADS, stream, probs, T, scale,
                       (int)precision);
    CUDA_CHECK_LAUNCH("scaled_softmax_kernel");
    /* out = p v */
    for (int h = 0; h < heads; h++) {
        const float *v = qkv + (size_t)h * hd + 2 * s.dim;
        const float *p = probs + h * s.probs_block;
        float *o = out + (size_t)h * hd;
        gemm_cuda_strided_batched(ctx, 0, 0, T, hd, T, 1.0f, p, T, s.probs_stride, v, s.ld, s.qkv_stride, 0.0f, o,
                                  s.dim, s.out_stride, batch, stream);
    }
}

extern "C" void attention_backward_cuda(gemm_cuda_context *ctx, float *d_qkv, float *d_scores, const float *d_out,
                                        const float *qkv, const float *probs, int batch, int tokens, int heads,
                                        int head_dim, ldm_precision precision, ldm_stream stream) {
    if (batch <= 0 || tokens <= 0 || heads <= 0) return;
    const attention_shape s = attention_shape_of(tokens, heads, head_dim);
    const int T = tokens, hd = head_dim;
    /* dv = p^T d_o; d_probs = d_o v^T (into d_scores) */
    for (int h = 0; h < heads; h++) {
        const size_t head_offset = (size_t)h * hd;
        const float *v = qkv + head_offset + 2 * s.dim, *d_o = d_out + head_offset;
        const float *p = probs + h * s.probs_block;
        float *dv = d_qkv + head_offset + 2 * s.dim, *ds = d_scores + h * s.probs_block;
        gemm_cuda_strided_batched(ctx, 1, 0, T, hd, T, 1.0f, p, T, s.probs_stride, d_o, s.dim, s.out_stride, 0.0f, dv,
                                  s.ld, s.qkv_stride, batch, stream);
        gemm_cuda_strided_batched(ctx, 0, 1, T, T, hd, 1.0f, d_o, s.dim, s.out_stride, v, s.ld, s.qkv_stride, 0.0f, ds,
                                  T, s.probs_stride, batch, stream);
    }
    const float scale = 1.0f / sqrtf((float)head_dim);
    CUDA_LAUNCH_KERNEL(softmax_backward_kernel, (unsigned int)batch * heads * T, SOFTMAX_THREADS, stream, d_scores,
                       probs, T, scale, (int)precision);
    CUDA_CHECK_LAUNCH("softmax_backward_kernel");
    /* dq = d_score k; dk = d_score^T q */
    for (int h = 0; h < heads; h++) {
        const size_t head_offset = (size_t)h * hd;
        const float *q = qkv + head_offset, *k = q + s.dim;
        const float *ds = d_scores + h * s.probs_block;
        float *dq = d_qkv + head_offset, *dk = dq + s.dim;
        gemm_cuda_strided_batched(ctx, 0, 0, T, hd, T, 1.0f, ds, T, s.probs_stride, k, s.ld, s.qkv_stride, 0.0f, dq,
                                  s.ld, s.qkv_stride, batch, stream);
        gemm_cuda_strided_batched(ctx, 1, 0, T, hd, T, 1.0f, ds, T, s.probs_stride, q, s.ld, s.qkv_stride, 0.0f, dk,
                                  s.ld, s.qkv_stride, batch, stream);
    }
}

/* The multi-head self-attention core on the GPU, the CUDA side of
 * ops_attention.c, on the same fused qkv layout (batch, tokens, 3, heads,
 * head_dim). The GEMMs are the CPU's sgemm calls, made strided-batched over the
 * samples (one call per head: a head's q, k, v, out and probability blocks sit
 * at a constant stride from one sample to the next). Between them one fused
 * kernel per pass works on whole score rows: scale + softmax in forward, the
 * softmax backward (with the scale folded in) in backward, each also rounding
 * its result to the 16-bit format when the precision asks for it, as
 * attention_forward_precision / attention_backward_precision do.
 *
 * The fused attention (flash_attention_*_cuda, the DiT's) is below the GEMM
 * path: one kernel per pass, the probabilities never written out. */
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

/* ---- fused attention, flash-attention style ----
 * Forward: a block takes flash_shape::ROWS query rows of one (sample, head),
 * one thread a row, its q staged in shared memory; the keys and values stream
 * through shared memory in tiles of flash_shape::TILE rows, and each thread keeps
 * an online softmax (running maximum m, running sum l, the unnormalised output
 * in registers, rescaled when the maximum grows): out = acc / l and the row's
 * log-sum-exp m + log l are all that is written. Backward recomputes each
 * probability p = exp(scale q.k - lse) from the same dot product (fmaf in the
 * same order, so the same bits as forward's score) and needs no (T, T) buffer:
 * - row_dot[i] = d_out[i] . out[i] (= sum_j p_ij dp_ij), one thread a row;
 * - dk, dv: a block owns flash_shape::ROWS key rows (one thread each, its k and
 *   v in shared memory, dk and dv in registers) and streams the query rows;
 * - dq: a block owns query rows and streams the keys and values;
 * each gradient row is written by the one thread that summed it, in a fixed
 * order: deterministic, no atomics. As the CPU's 16-bit attention rounds the
 * probabilities and the score gradients to the format, backward rounds p (for
 * dv and the score gradient) and ds = scale p (dp - row_dot) to PRECISION.
 * Rows are padded with zeros to MAXD (32, 64 or 128, the next above head_dim)
 * so that every loop over a row is unrolled and acc, dk, dv, dq stay in
 * registers. Static shared memory: at most 42 KB (MAXD 64 backward). */

template <int MAXD> struct flash_shape {
    static const int ROWS = MAXD <= 64 ? 64 : 32; /* threads of a block: one owned row each */
    static const int TILE = MAXD <= 32 ? 32 : MAXD <= 64 ? 16 : 8; /* streamed rows per shared tile */
};

#define FLASH_MAX_HEAD_DIM 128

/* Loops over a padded row are unrolled on the GPU (register arrays need constant
 * indices); the emulation's compiler has no such pragma and needs none. */
#ifdef LDM_CUDA_EMULATION
#define FLASH_UNROLL
#else
#define FLASH_UNROLL _Pragma("unroll")
#endif

/* The offset of element 0 of row t, part (0 q, 1 k, 2 v), of head h of sample b in qkv. */
__device__ __forceinline__ size_t qkv_row(int b, int t, int part, int h, int tokens, int heads, int head_dim) {
    return (((size_t)b * tokens + t) * 3 + part) * (size_t)heads * head_dim + (size_t)h * head_dim;
}

/* rows[r][d] = part `part` of tokens first + r (r < count), zero beyond count and head_dim. */
template <int PRECISION, int MAXD, int COUNT, int STRIDE, int THREADS>
__device__ __forceinline__ void stage_rows(float (*rows)[STRIDE], const void *qkv, int b, int first, int count,
                                           int part, int h, int tokens, int heads, int head_dim) {
    for (int i = threadIdx.x; i < COUNT * MAXD; i += THREADS) {
        const int r = i / MAXD, d = i % MAXD;
        rows[r][d] = r < count && d < head_dim
                         ? load_as_float<PRECISION>(qkv, qkv_row(b, first + r, part, h, tokens, heads, head_dim) + d)
                         : 0.0f;
    }
}

/* The same for a (tokens, heads * head_dim) tensor (out, d_out) stored in PRECISION. */
template <int PRECISION, int MAXD, int COUNT, int STRIDE, int THREADS>
__device__ __forceinline__ void stage_out_rows(float (*rows)[STRIDE], const void *x, int b, int first, int count,
                                               int h, int tokens, int heads, int head_dim) {
    for (int i = threadIdx.x; i < COUNT * MAXD; i += THREADS) {
        const int r = i / MAXD, d = i % MAXD;
        const size_t at = ((size_t)b * tokens + first + r) * (size_t)heads * head_dim + (size_t)h * head_dim + d;
        rows[r][d] = r < count && d < head_dim ? load_as_float<PRECISION>(x, at) : 0.0f;
    }
}

/* a . b over MAXD values in order (both padded with zeros). */
template <int MAXD> __device__ __forceinline__ float dot_padded(const float *a, const float *b) {
    float dot = 0.0f;
FLASH_UNROLL
    for (int d = 0; d < MAXD; d++) dot = fmaf(a[d], b[d], dot);
    return dot;
}

template <int PRECISION, int MAXD>
__global__ static void __launch_bounds__(flash_shape<MAXD>::ROWS)
flash_forward_kernel(float *out, float *row_lse, const void *qkv, int tokens, int heads, int head_dim, float scale) {
    typedef flash_shape<MAXD> shape;
    __shared__ float q_rows[shape::ROWS][MAXD + 1]; /* +1: a thread's own row, no bank conflicts */
    __shared__ float k_tile[shape::TILE][MAXD];
    __shared__ float v_tile[shape::TILE][MAXD];
    const int bh = blockIdx.x, b = bh / heads, h = bh % heads;
    const int first = blockIdx.y * shape::ROWS, row = first + threadIdx.x;
    const bool active = row < tokens;
    const int own = tokens - first < shape::ROWS ? tokens - first : shape::ROWS;
    stage_rows<PRECISION, MAXD, shape::ROWS, MAXD + 1, shape::ROWS>(q_rows, qkv, b, first, own, 0, h, tokens, heads,
                                                                     head_dim);
    float acc[MAXD];
FLASH_UNROLL
    for (int d = 0; d < MAXD; d++) acc[d] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int k0 = 0; k0 < tokens; k0 += shape::TILE) {
        const int count = tokens - k0 < shape::TILE ? tokens - k0 : shape::TILE;
        __syncthreads(); /* the previous tile is used up (and q_rows is written) */
        stage_rows<PRECISION, MAXD, shape::TILE, MAXD, shape::ROWS>(k_tile, qkv, b, k0, count, 1, h, tokens, heads,
                                                                    head_dim);
        stage_rows<PRECISION, MAXD, shape::TILE, MAXD, shape::ROWS>(v_tile, qkv, b, k0, count, 2, h, tokens, heads,
                                                                    head_dim);
        __syncthreads();
        if (!active) continue;
        for (int j = 0; j < count; j++) {
            const float s = scale * dot_padded<MAXD>(q_rows[threadIdx.x], k_tile[j]);
            if (s > m) { /* a new maximum: rescale what is summed so far (nothing when m was -inf) */
                const float c = expf(m - s);
                l *= c;
FLASH_UNROLL
                for (int d = 0; d < MAXD; d++) acc[d] *= c;
                m = s;
            }
            const float p = expf(s - m);
            l += p;
FLASH_UNROLL
            for (int d = 0; d < MAXD; d++) acc[d] = fmaf(p, v_tile[j][d], acc[d]);
        }
    }
    if (!active) return;
    const float inv = 1.0f / l;
    float *o = out + ((size_t)b * tokens + row) * (size_t)heads * head_dim + (size_t)h * head_dim;
FLASH_UNROLL
    for (int d = 0; d < MAXD; d++)
        if (d < head_dim) o[d] = acc[d] * inv;
    row_lse[(size_t)bh * tokens + row] = m + logf(l);
}

/* Row i = (b h, t): row_dot[i] = d_out[b, t, h] . out[b, t, h]. */
template <int PRECISION>
__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
flash_row_dot_kernel(float *row_dot, const float *d_out, const void *out, int tokens, int heads, int head_dim,
                     size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) {
        const size_t bh = i / (size_t)tokens, t = i % (size_t)tokens;
        const size_t b = bh / (size_t)heads, h = bh % (size_t)heads;
        const size_t at = (b * tokens + t) * (size_t)heads * head_dim + h * head_dim;
        float dot = 0.0f;
        for (int d = 0; d < head_dim; d++) dot = fmaf(d_out[at + d], load_as_float<PRECISION>(out, at + d), dot);
        row_dot[i] = dot;
    }
}

/* Score gradient of one (query, key) pair from its recomputed probability p
 * (rounded) and dp = d_out_i . v_j: scale p (dp - row_dot_i), rounded, as the CPU. */
template <int PRECISION> __device__ __forceinline__ float score_gradient(float scale, float p, float dp, float dot) {
    return device_precision_round(PRECISION, __fmul_rn(__fmul_rn(scale, p), __fsub_rn(dp, dot)));
}

template <int PRECISION, int MAXD>
__global__ static void __launch_bounds__(flash_shape<MAXD>::ROWS)
flash_backward_kv_kernel(float *d_qkv, const void *qkv, const float *d_out, const float *row_lse,
                         const float *row_dot, int tokens, int heads, int head_dim, float scale) {
    typedef flash_shape<MAXD> shape;
    __shared__ float k_rows[shape::ROWS][MAXD + 1];
    __shared__ float v_rows[shape::ROWS][MAXD + 1];
    __shared__ float q_tile[shape::TILE][MAXD];
    __shared__ float do_tile[shape::TILE][MAXD];
    __shared__ float lse_tile[shape::TILE];
    __shared__ float dot_tile[shape::TILE];
    const int bh = blockIdx.x, b = bh / heads, h = bh % heads;
    const int first = blockIdx.y * shape::ROWS, row = first + threadIdx.x;
    const bool active = row < tokens;
    const int own = tokens - first < shape::ROWS ? tokens - first : shape::ROWS;
    stage_rows<PRECISION, MAXD, shape::ROWS, MAXD + 1, shape::ROWS>(k_rows, qkv, b, first, own, 1, h, tokens, heads,
                                                                     head_dim);
    stage_rows<PRECISION, MAXD, shape::ROWS, MAXD + 1, shape::ROWS>(v_rows, qkv, b, first, own, 2, h, tokens, heads,
                                                                     head_dim);
    float dk[MAXD], dv[MAXD];
FLASH_UNROLL
    for (int d = 0; d < MAXD; d++) dk[d] = dv[d] = 0.0f;
    for (int i0 = 0; i0 < tokens; i0 += shape::TILE) {
        const int count = tokens - i0 < shape::TILE ? tokens - i0 : shape::TILE;
        __syncthreads();
        stage_rows<PRECISION, MAXD, shape::TILE, MAXD, shape::ROWS>(q_tile, qkv, b, i0, count, 0, h, tokens, heads,
                                                                    head_dim);
        stage_out_rows<PRECISION_FP32, MAXD, shape::TILE, MAXD, shape::ROWS>(do_tile, d_out, b, i0, count, h, tokens,
                                                                             heads, head_dim);
        for (int i = threadIdx.x; i < count; i += shape::ROWS) {
            lse_tile[i] = row_lse[(size_t)bh * tokens + i0 + i];
            dot_tile[i] = row_dot[(size_t)bh * tokens + i0 + i];
        }
        __syncthreads();
        if (!active) continue;
        for (int i = 0; i < count; i++) {
            const float s = scale * dot_padded<MAXD>(q_tile[i], k_rows[threadIdx.x]);
            const float p = device_precision_round(PRECISION, expf(s - lse_tile[i]));
            const float dp = dot_padded<MAXD>(do_tile[i], v_rows[threadIdx.x]);
            const float ds = score_gradient<PRECISION>(scale, p, dp, dot_tile[i]);
FLASH_UNROLL
            for (int d = 0; d < MAXD; d++) {
                dv[d] = fmaf(p, do_tile[i][d], dv[d]);
                dk[d] = fmaf(ds, q_tile[i][d], dk[d]);
            }
        }
    }
    if (!active) return;
    float *dk_row = d_qkv + qkv_row(b, row, 1, h, tokens, heads, head_dim);
    float *dv_row = d_qkv + qkv_row(b, row, 2, h, tokens, heads, head_dim);
FLASH_UNROLL
    for (int d = 0; d < MAXD; d++)
        if (d < head_dim) {
            dk_row[d] = dk[d];
            dv_row[d] = dv[d];
        }
}

template <int PRECISION, int MAXD>
__global__ static void __launch_bounds__(flash_shape<MAXD>::ROWS)
flash_backward_q_kernel(float *d_qkv, const void *qkv, const float *d_out, const float *row_lse,
                        const float *row_dot, int tokens, int heads, int head_dim, float scale) {
    typedef flash_shape<MAXD> shape;
    __shared__ float q_rows[shape::ROWS][MAXD + 1];
    __shared__ float do_rows[shape::ROWS][MAXD + 1];
    __shared__ float k_tile[shape::TILE][MAXD];
    __shared__ float v_tile[shape::TILE][MAXD];
    const int bh = blockIdx.x, b = bh / heads, h = bh % heads;
    const int first = blockIdx.y * shape::ROWS, row = first + threadIdx.x;
    const bool active = row < tokens;
    const int own = tokens - first < shape::ROWS ? tokens - first : shape::ROWS;
    stage_rows<PRECISION, MAXD, shape::ROWS, MAXD + 1, shape::ROWS>(q_rows, qkv, b, first, own, 0, h, tokens, heads,
                                                                     head_dim);
    stage_out_rows<PRECISION_FP32, MAXD, shape::ROWS, MAXD + 1, shape::ROWS>(do_rows, d_out, b, first, own, h, tokens,
                                                                             heads, head_dim);
    const float lse = active ? row_lse[(size_t)bh * tokens + row] : 0.0f;
    const float dot = active ? row_dot[(size_t)bh * tokens + row] : 0.0f;
    float dq[MAXD];
FLASH_UNROLL
    for (int d = 0; d < MAXD; d++) dq[d] = 0.0f;
    for (int j0 = 0; j0 < tokens; j0 += shape::TILE) {
        const int count = tokens - j0 < shape::TILE ? tokens - j0 : shape::TILE;
        __syncthreads();
        stage_rows<PRECISION, MAXD, shape::TILE, MAXD, shape::ROWS>(k_tile, qkv, b, j0, count, 1, h, tokens, heads,
                                                                    head_dim);
        stage_rows<PRECISION, MAXD, shape::TILE, MAXD, shape::ROWS>(v_tile, qkv, b, j0, count, 2, h, tokens, heads,
                                                                    head_dim);
        __syncthreads();
        if (!active) continue;
        for (int j = 0; j < count; j++) {
            const float s = scale * dot_padded<MAXD>(q_rows[threadIdx.x], k_tile[j]);
            const float p = device_precision_round(PRECISION, expf(s - lse));
            const float dp = dot_padded<MAXD>(do_rows[threadIdx.x], v_tile[j]);
            const float ds = score_gradient<PRECISION>(scale, p, dp, dot);
FLASH_UNROLL
            for (int d = 0; d < MAXD; d++) dq[d] = fmaf(ds, k_tile[j][d], dq[d]);
        }
    }
    if (!active) return;
    float *dq_row = d_qkv + qkv_row(b, row, 0, h, tokens, heads, head_dim);
FLASH_UNROLL
    for (int d = 0; d < MAXD; d++)
        if (d < head_dim) dq_row[d] = dq[d];
}

/* The launches of one (PRECISION, MAXD): grid.x = (sample, head), grid.y = row blocks. */
template <int PRECISION, int MAXD> struct flash_launch {
    static dim3 grid(int batch, int tokens, int heads) {
        const int row_blocks = (tokens + flash_shape<MAXD>::ROWS - 1) / flash_shape<MAXD>::ROWS;
        return dim3((unsigned int)batch * heads, (unsigned int)row_blocks);
    }
    static void forward(float *out, float *row_lse, const void *qkv, int batch, int tokens, int heads, int head_dim,
                        float scale, cudaStream_t stream) {
        CUDA_LAUNCH_KERNEL((flash_forward_kernel<PRECISION, MAXD>), grid(batch, tokens, heads),
                           flash_shape<MAXD>::ROWS, stream, out, row_lse, qkv, tokens, heads, head_dim, scale);
        CUDA_CHECK_LAUNCH("flash_forward_kernel");
    }
    static void backward(float *d_qkv, const void *qkv, const float *d_out, const float *row_lse,
                         const float *row_dot, int batch, int tokens, int heads, int head_dim, float scale,
                         cudaStream_t stream) {
        CUDA_LAUNCH_KERNEL((flash_backward_kv_kernel<PRECISION, MAXD>), grid(batch, tokens, heads),
                           flash_shape<MAXD>::ROWS, stream, d_qkv, qkv, d_out, row_lse, row_dot, tokens, heads,
                           head_dim, scale);
        CUDA_CHECK_LAUNCH("flash_backward_kv_kernel");
        CUDA_LAUNCH_KERNEL((flash_backward_q_kernel<PRECISION, MAXD>), grid(batch, tokens, heads),
                           flash_shape<MAXD>::ROWS, stream, d_qkv, qkv, d_out, row_lse, row_dot, tokens, heads,
                           head_dim, scale);
        CUDA_CHECK_LAUNCH("flash_backward_q_kernel");
    }
};

/* Calls flash_launch<PRECISION, MAXD>::forward/backward for the precision and head_dim. */
template <int PRECISION> struct flash_dispatch {
    template <typename Call> static void by_head_dim(int head_dim, Call call) {
        if (head_dim <= 32)
            call(flash_launch<PRECISION, 32>());
        else if (head_dim <= 64)
            call(flash_launch<PRECISION, 64>());
        else
            call(flash_launch<PRECISION, FLASH_MAX_HEAD_DIM>());
    }
};

template <typename Call> static void flash_by_precision(ldm_precision precision, int head_dim, Call call) {
    if (head_dim < 1 || head_dim > FLASH_MAX_HEAD_DIM)
        fatal_internal("fused attention: head_dim %d outside 1..%d", head_dim, FLASH_MAX_HEAD_DIM);
    if (precision == PRECISION_BF16)
        flash_dispatch<PRECISION_BF16>::by_head_dim(head_dim, call);
    else if (precision == PRECISION_FP16)
        flash_dispatch<PRECISION_FP16>::by_head_dim(head_dim, call);
    else
        flash_dispatch<PRECISION_FP32>::by_head_dim(head_dim, call);
}

extern "C" void flash_attention_forward_cuda(float *out, float *row_lse, const void *qkv, int batch, int tokens,
                                             int heads, int head_dim, ldm_precision precision, ldm_stream stream) {
    if (batch <= 0 || tokens <= 0 || heads <= 0) return;
    const float scale = 1.0f / sqrtf((float)head_dim);
    flash_by_precision(precision, head_dim, [&](auto launch) {
        launch.forward(out, row_lse, qkv, batch, tokens, heads, head_dim, scale, stream);
    });
}

extern "C" void flash_attention_backward_cuda(float *d_qkv, float *row_dot, const float *d_out, const void *qkv,
                                              const void *out, const float *row_lse, int batch, int tokens,
                                              int heads, int head_dim, ldm_precision precision, ldm_stream stream) {
    if (batch <= 0 || tokens <= 0 || heads <= 0) return;
    const float scale = 1.0f / sqrtf((float)head_dim);
    const size_t rows = (size_t)batch * heads * tokens;
    if (precision == PRECISION_BF16)
        CUDA_LAUNCH_ELEMENTWISE(flash_row_dot_kernel<PRECISION_BF16>, rows, stream, row_dot, d_out, out, tokens, heads,
                                head_dim);
    else if (precision == PRECISION_FP16)
        CUDA_LAUNCH_ELEMENTWISE(flash_row_dot_kernel<PRECISION_FP16>, rows, stream, row_dot, d_out, out, tokens, heads,
                                head_dim);
    else
        CUDA_LAUNCH_ELEMENTWISE(flash_row_dot_kernel<PRECISION_FP32>, rows, stream, row_dot, d_out, out, tokens, heads,
                                head_dim);
    flash_by_precision(precision, head_dim, [&](auto launch) {
        launch.backward(d_qkv, qkv, d_out, row_lse, row_dot, batch, tokens, heads, head_dim, scale, stream);
    });
}

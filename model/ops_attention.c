/* The core of multi-head self-attention, softmax(q k^T / sqrt(head_dim)) v, on
 * the fused qkv layout of timm's Attention: (batch, tokens, 3, heads, head_dim).
 * One (sample, head) pair is handled by one thread from start to end, so results
 * do not depend on the thread count. The small per-head products are written as
 * loops the compiler vectorises: dot products with eight explicit partial sums,
 * and row updates (axpy) along contiguous memory. */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "fast_math.h"
#include "ops.h"

size_t attention_scratch_floats(int tokens) {
    return (size_t)omp_get_max_threads() * (size_t)tokens * (size_t)tokens;
}

static inline float dot_product(const float *a, const float *b, int n) {
    float lanes[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) lanes[l] += a[i + l] * b[i + l];
    float sum = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) +
                ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
    for (; i < n; i++) sum += a[i] * b[i];
    return sum;
}

static inline void axpy(float *y, float a, const float *x, int n) {
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

void attention_forward(float *out, float *probs, const float *qkv,
                       int batch, int tokens, int heads, int head_dim) {
    const int dim = heads * head_dim;
    const size_t qkv_stride = 3 * (size_t)dim;
    const float scale = 1.0f / sqrtf((float)head_dim);
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < batch; b++)
        for (int h = 0; h < heads; h++) {
            const float *q = qkv + (size_t)b * tokens * qkv_stride + (size_t)h * head_dim;
            const float *k = q + dim;
            const float *v = q + 2 * dim;
            float *p = probs + ((size_t)b * heads + h) * tokens * tokens;  /* (tokens, tokens) */
            float *o = out + (size_t)b * tokens * dim + (size_t)h * head_dim;
            for (int i = 0; i < tokens; i++) {
                float *row = p + (size_t)i * tokens;
                float max = -INFINITY;
                for (int j = 0; j < tokens; j++) {
                    row[j] = scale * dot_product(q + i * qkv_stride, k + j * qkv_stride, head_dim);
                    if (row[j] > max) max = row[j];
                }
                float sum = 0.0f;
                for (int j = 0; j < tokens; j++) {
                    row[j] = fast_expf(row[j] - max);
                    sum += row[j];
                }
                float inv = 1.0f / sum;
                float *orow = o + (size_t)i * dim;
                memset(orow, 0, sizeof(float) * head_dim);
                for (int j = 0; j < tokens; j++) {
                    row[j] *= inv;
                    axpy(orow, row[j], v + j * qkv_stride, head_dim);
                }
            }
        }
}

void attention_backward(float *d_qkv, const float *d_out, const float *qkv, const float *probs,
                        float *scratch, int batch, int tokens, int heads, int head_dim) {
    const int dim = heads * head_dim;
    const size_t qkv_stride = 3 * (size_t)dim;
    const float scale = 1.0f / sqrtf((float)head_dim);
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < batch; b++)
        for (int h = 0; h < heads; h++) {
            float *d_score = scratch + (size_t)omp_get_thread_num() * tokens * tokens; /* (tokens, tokens) */
            size_t head_offset = (size_t)b * tokens * qkv_stride + (size_t)h * head_dim;
            const float *q = qkv + head_offset, *k = q + dim, *v = q + 2 * dim;
            float *dq = d_qkv + head_offset, *dk = dq + dim, *dv = dq + 2 * dim;
            const float *p = probs + ((size_t)b * heads + h) * tokens * tokens;
            const float *d_o = d_out + (size_t)b * tokens * dim + (size_t)h * head_dim;
            for (int i = 0; i < tokens; i++) {
                memset(dq + i * qkv_stride, 0, sizeof(float) * head_dim);
                memset(dk + i * qkv_stride, 0, sizeof(float) * head_dim);
                memset(dv + i * qkv_stride, 0, sizeof(float) * head_dim);
            }
            /* d_probs = d_o v^T, then the softmax backward in place:
             * d_score = p * (d_probs - sum_j p d_probs), with the 1/sqrt(d) scale folded in. */
            for (int i = 0; i < tokens; i++) {
                const float *prow = p + (size_t)i * tokens;
                const float *gi = d_o + (size_t)i * dim;
                float *srow = d_score + (size_t)i * tokens;
                float weighted = 0.0f;
                for (int j = 0; j < tokens; j++) {
                    srow[j] = dot_product(gi, v + j * qkv_stride, head_dim);
                    weighted += prow[j] * srow[j];
                }
                for (int j = 0; j < tokens; j++) srow[j] = scale * prow[j] * (srow[j] - weighted);
                /* dv_j += p_ij d_o_i */
                for (int j = 0; j < tokens; j++) axpy(dv + j * qkv_stride, prow[j], gi, head_dim);
            }
            for (int i = 0; i < tokens; i++) {
                const float *srow = d_score + (size_t)i * tokens;
                float *dqi = dq + i * qkv_stride;
                const float *qi = q + i * qkv_stride;
                for (int j = 0; j < tokens; j++) {
                    axpy(dqi, srow[j], k + j * qkv_stride, head_dim);
                    axpy(dk + j * qkv_stride, srow[j], qi, head_dim);
                }
            }
        }
}

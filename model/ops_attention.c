/* The core of multi-head self-attention, softmax(q k^T / sqrt(head_dim)) v, on
 * the fused qkv layout of timm's Attention: (batch, tokens, 3, heads, head_dim).
 * One (sample, head) pair is handled by one thread from start to end, with
 * single-threaded sgemm calls on strided views of qkv (leading dimension 3 * dim),
 * so results do not depend on the thread count. */
#include <cblas.h>
#include <math.h>

#include "fast_math.h"
#include "ops.h"

/* Short names for the sgemm arguments, so each call fits on one line. */
static const enum CBLAS_ORDER ROW_MAJOR = CblasRowMajor;
static const enum CBLAS_TRANSPOSE NO_TRANS = CblasNoTrans, TRANS = CblasTrans;

void attention_forward(float *out, float *probs, const float *qkv,
                       int batch, int tokens, int heads, int head_dim) {
    attention_forward_precision(out, probs, qkv, batch, tokens, heads, head_dim, PRECISION_FP32);
}

void attention_backward(float *d_qkv, float *d_scores, const float *d_out, const float *qkv, const float *probs,
                        int batch, int tokens, int heads, int head_dim) {
    attention_backward_precision(d_qkv, d_scores, d_out, qkv, probs, batch, tokens, heads, head_dim,
                                 PRECISION_FP32);
}

/* A (sample, head)'s (tokens, tokens) block rounded to the 16-bit format (by
 * the thread that owns the pair). */
static void round_block(float *block, int tokens, ldm_precision precision) {
    if (precision != PRECISION_FP32) precision_round_serial(precision, block, (size_t)tokens * tokens);
}

void attention_forward_precision(float *out, float *probs, const float *qkv, int batch, int tokens, int heads,
                                 int head_dim, ldm_precision precision) {
    const int dim = heads * head_dim, ld = 3 * dim;
    const float scale = 1.0f / sqrtf((float)head_dim);
    ops_blas_single_threaded();
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < batch; b++)
        for (int h = 0; h < heads; h++) {
            const float *q = qkv + (size_t)b * tokens * ld + (size_t)h * head_dim; /* (tokens, head_dim), ld */
            const float *k = q + dim, *v = q + 2 * dim;
            float *p = probs + ((size_t)b * heads + h) * tokens * tokens; /* (tokens, tokens) */
            float *o = out + (size_t)b * tokens * dim + (size_t)h * head_dim; /* (tokens, head_dim), ld dim */
            cblas_sgemm(ROW_MAJOR, NO_TRANS, TRANS, tokens, tokens, head_dim, scale, q, ld, k, ld, 0.0f, p, tokens);
            for (int i = 0; i < tokens; i++) {
                float *row = p + (size_t)i * tokens;
                float max = -INFINITY;
                for (int j = 0; j < tokens; j++) max = row[j] > max ? row[j] : max;
                float sum = 0.0f;
                for (int j = 0; j < tokens; j++) {
                    row[j] = fast_expf(row[j] - max);
                    sum += row[j];
                }
                float inv = 1.0f / sum;
                for (int j = 0; j < tokens; j++) row[j] *= inv;
            }
            round_block(p, tokens, precision);
            cblas_sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, tokens, head_dim, tokens, 1.0f, p, tokens, v, ld, 0.0f, o, dim);
        }
}

void attention_backward_precision(float *d_qkv, float *d_scores, const float *d_out, const float *qkv,
                                  const float *probs, int batch, int tokens, int heads, int head_dim,
                                  ldm_precision precision) {
    const int dim = heads * head_dim, ld = 3 * dim;
    const float scale = 1.0f / sqrtf((float)head_dim);
    ops_blas_single_threaded();
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < batch; b++)
        for (int h = 0; h < heads; h++) {
            size_t head_offset = (size_t)b * tokens * ld + (size_t)h * head_dim;
            const float *q = qkv + head_offset, *k = q + dim, *v = q + 2 * dim;
            float *dq = d_qkv + head_offset, *dk = dq + dim, *dv = dq + 2 * dim;
            const float *p = probs + ((size_t)b * heads + h) * tokens * tokens;
            float *ds = d_scores + ((size_t)b * heads + h) * tokens * tokens; /* (tokens, tokens) */
            const float *d_o = d_out + (size_t)b * tokens * dim + (size_t)h * head_dim;
            /* dv = p^T d_o; d_probs = d_o v^T */
            cblas_sgemm(ROW_MAJOR, TRANS, NO_TRANS, tokens, head_dim, tokens, 1.0f, p, tokens, d_o, dim, 0.0f, dv, ld);
            cblas_sgemm(ROW_MAJOR, NO_TRANS, TRANS, tokens, tokens, head_dim, 1.0f, d_o, dim, v, ld, 0.0f, ds, tokens);
            /* softmax backward: d_score = p * (d_probs - sum_j p d_probs), scale folded in */
            for (int i = 0; i < tokens; i++) {
                const float *prow = p + (size_t)i * tokens;
                float *srow = ds + (size_t)i * tokens;
                float weighted = 0.0f;
                for (int j = 0; j < tokens; j++) weighted += prow[j] * srow[j];
                for (int j = 0; j < tokens; j++) srow[j] = scale * prow[j] * (srow[j] - weighted);
            }
            round_block(ds, tokens, precision);
            /* dq = d_score k; dk = d_score^T q */
            cblas_sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, tokens, head_dim, tokens, 1.0f, ds, tokens, k, ld, 0.0f, dq, ld);
            cblas_sgemm(ROW_MAJOR, TRANS, NO_TRANS, tokens, head_dim, tokens, 1.0f, ds, tokens, q, ld, 0.0f, dk, ld);
        }
}

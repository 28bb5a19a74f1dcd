/* The core of multi-head self-attention, softmax(q k^T / sqrt(head_dim)) v, on
 * the fused qkv layout of timm's Attention: (batch, tokens, 3, heads, head_dim).
 * One (sample, head) pair is handled by one thread from start to end, with
 * single-threaded sgemm calls on strided views of qkv (leading dimension 3 * dim),
 * so results do not depend on the thread count.
 *
 * The bf16-bits variant (bf16 with oneDNN) computes q k^T, p v and the four
 * backward products of all (sample, head) pairs as one batched oneDNN matmul each,
 * on head-major bf16 copies of q, k, v (oneDNN's brgemm kernels take plain
 * layouts, not qkv's interleaved one), with the scale fused into q k^T. Softmax
 * and its backward stay fp32, one row per iteration.
 *
 * The fused fp32 variant (AVX-512 CPUs, fp32 training, tokens and head_dim
 * multiples of 64) does a (sample, head) pair's products, softmax and their
 * backward in one pass on one thread, reading q, k, v and d_out where they lie
 * and writing out and d_qkv there: no head-major copies, and the pair's scores
 * stay in L2 between its products. Out of cache a pair is bound by its memory
 * traffic: the next pair's rows are prefetched while one computes, and each
 * thread reuses its own scratch. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#include "fast_math.h"
#include "gemm_onednn.h"
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

/* The unnormalised softmax of row (n) in place: exp(x - max), the max subtracted
 * for range. Returns 1 / the row's sum, which the caller applies as it stores. */
static float exp_row(float *row, int n) {
    float max = -INFINITY;
    for (int j = 0; j < n; j++) max = row[j] > max ? row[j] : max;
    float sum = 0.0f;
    for (int j = 0; j < n; j++) {
        row[j] = fast_expf(row[j] - max);
        sum += row[j];
    }
    return 1.0f / sum;
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
                const float inv = exp_row(row, tokens);
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

/* ---- the bf16-bits attention (ops.h) ---- */

/* The batched product of a (batch, heads) grid with the given operand strides. */
static batched_product grid_product(int batch, int heads, int m, int n, int k, const int64_t a[4], const int64_t b[4],
                                    const int64_t c[4]) {
    batched_product p = {{batch, heads}, m, n, k, {a[0], a[1], a[2], a[3]}, {b[0], b[1], b[2], b[3]},
                         {c[0], c[1], c[2], c[3]}};
    return p;
}

/* Strides of the operands, for (batch, heads, tokens T, head_dim E): */
typedef struct {
    int64_t heads_te[4];    /* a head-major (B, H, T, E) buffer */
    int64_t heads_te_t[4];  /* its transpose (B, H, E, T) */
    int64_t scores[4];      /* (B, H, T, T) */
    int64_t scores_t[4];    /* its transpose */
    int64_t token_major[4]; /* (B, H, T, E) in a (B, T, H, E) = (B * T, dim) buffer */
} attention_strides;

static attention_strides strides_of(int tokens, int heads, int head_dim) {
    const int64_t T = tokens, H = heads, E = head_dim;
    attention_strides s = {{H * T * E, T * E, E, 1},
                           {H * T * E, T * E, 1, E},
                           {H * T * T, T * T, T, 1},
                           {H * T * T, T * T, 1, T},
                           {T * H * E, E, H * E, 1}};
    return s;
}

/* The six products: q k^T, p v (forward); p^T d_out, d_out v^T, d_scores k, d_scores^T q. */
enum { QK, PV, DV, DP, DQ, DK, PRODUCTS };

static batched_product attention_product(int which, int batch, int tokens, int heads, int head_dim) {
    const attention_strides s = strides_of(tokens, heads, head_dim);
    const int T = tokens, E = head_dim;
    switch (which) {
    case QK: return grid_product(batch, heads, T, T, E, s.heads_te, s.heads_te_t, s.scores);
    case PV: return grid_product(batch, heads, T, E, T, s.scores, s.heads_te, s.token_major);
    case DV: return grid_product(batch, heads, T, E, T, s.scores_t, s.heads_te, s.token_major);
    case DP: return grid_product(batch, heads, T, T, E, s.heads_te, s.heads_te_t, s.scores);
    case DQ: return grid_product(batch, heads, T, E, T, s.scores, s.heads_te, s.token_major);
    default: return grid_product(batch, heads, T, E, T, s.scores_t, s.heads_te, s.token_major);
    }
}

void attention_plan_bf16_bits(int batch, int tokens, int heads, int head_dim) {
    const float scale = 1.0f / sqrtf((float)head_dim);
    for (int which = 0; which < PRODUCTS; which++) {
        const batched_product p = attention_product(which, batch, tokens, heads, head_dim);
        batched_gemm_onednn_plan(&p, which == QK ? scale : 1.0f);
    }
}

/* The parts of the scratch, each rounded up to 64 bytes: q, k, v, d_out, probs, d_part. */
static void scratch_part_bytes(size_t bytes[6], int batch, int tokens, int heads, int head_dim) {
    const size_t n_heads = (size_t)batch * tokens * heads * head_dim, n_scores = (size_t)batch * heads * tokens * tokens;
    for (int i = 0; i < 4; i++) bytes[i] = n_heads * sizeof(uint16_t);
    bytes[4] = n_scores * sizeof(uint16_t);
    bytes[5] = n_scores >= n_heads ? 0 : n_heads * sizeof(float); /* else d_part is d_scores */
    for (int i = 0; i < 6; i++) bytes[i] = (bytes[i] + 63) / 64 * 64;
}

size_t attention_bits_scratch_bytes(int batch, int tokens, int heads, int head_dim) {
    size_t bytes[6], total = 0;
    scratch_part_bytes(bytes, batch, tokens, heads, head_dim);
    for (int i = 0; i < 6; i++) total += bytes[i];
    return total;
}

attention_bits_scratch attention_bits_scratch_place(void *memory, int batch, int tokens, int heads, int head_dim) {
    size_t bytes[6];
    scratch_part_bytes(bytes, batch, tokens, heads, head_dim);
    char *at = memory;
    void *parts[6];
    for (int i = 0; i < 6; i++) {
        parts[i] = bytes[i] ? at : NULL;
        at += bytes[i];
    }
    attention_bits_scratch s = {parts[0], parts[1], parts[2], parts[3], parts[4], parts[5]};
    return s;
}

/* heads (B, H, T, E) = the bf16 bits of part `part` (0 q, 1 k, 2 v) of rows whose
 * parts are laid out (T, 3 or 1, H, E) per sample (row length `row` values); the
 * values hold bf16 values already, so this is exact. */
static void to_heads(uint16_t *heads_out, const float *rows, int row, int part, int batch, int tokens, int heads,
                     int head_dim) {
    const int dim = heads * head_dim;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < batch; b++)
        for (int t = 0; t < tokens; t++) {
            const float *from = rows + ((size_t)b * tokens + t) * row + (size_t)part * dim;
            for (int h = 0; h < heads; h++) {
                uint16_t *to = heads_out + (((size_t)b * heads + h) * tokens + t) * head_dim;
                for (int e = 0; e < head_dim; e++) to[e] = bf16_from_float(from[h * head_dim + e]);
            }
        }
}

/* part `part` of d_qkv (B * T, 3 * dim) = from (B * T, dim). */
static void into_qkv(float *d_qkv, const float *from, int part, int rows, int dim) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++)
        memcpy(d_qkv + (size_t)r * 3 * dim + (size_t)part * dim, from + (size_t)r * dim, sizeof(float) * dim);
}

void attention_forward_bf16_bits(float *out, float *probs, const float *qkv, const attention_bits_scratch *s,
                                 int batch, int tokens, int heads, int head_dim) {
    const int dim = heads * head_dim;
    const float scale = 1.0f / sqrtf((float)head_dim);
    for (int part = 0; part < 3; part++)
        to_heads(part == 0 ? s->q : part == 1 ? s->k : s->v, qkv, 3 * dim, part, batch, tokens, heads, head_dim);
    batched_product p = attention_product(QK, batch, tokens, heads, head_dim);
    batched_gemm_onednn(&p, s->q, s->k, scale, probs);
    const size_t rows = (size_t)batch * heads * tokens;
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        float *row = probs + r * tokens;
        uint16_t *bits = s->probs + r * tokens;
        const float inv = exp_row(row, tokens);
        for (int j = 0; j < tokens; j++) {
            bits[j] = bf16_from_float(row[j] * inv);
            row[j] = bf16_to_float(bits[j]);
        }
    }
    p = attention_product(PV, batch, tokens, heads, head_dim);
    batched_gemm_onednn(&p, s->probs, s->v, 1.0f, out);
}

void attention_backward_bf16_bits(float *d_qkv, float *d_scores, const float *d_out, const float *qkv,
                                  const float *probs, const attention_bits_scratch *s, int batch, int tokens,
                                  int heads, int head_dim) {
    const int dim = heads * head_dim, rows_bt = batch * tokens;
    const float scale = 1.0f / sqrtf((float)head_dim);
    const size_t score_rows = (size_t)batch * heads * tokens;
    float *d_part = s->d_part ? s->d_part : d_scores; /* d_scores is free but between d_probs and d_scores' bits */
    uint16_t *d_score_bits = s->probs;                /* p's bits are last read by dv */
    for (int part = 0; part < 3; part++)
        to_heads(part == 0 ? s->q : part == 1 ? s->k : s->v, qkv, 3 * dim, part, batch, tokens, heads, head_dim);
    to_heads(s->d_out, d_out, dim, 0, batch, tokens, heads, head_dim);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < score_rows * tokens; i++) s->probs[i] = bf16_from_float(probs[i]);
    /* dv = p^T d_out */
    batched_product p = attention_product(DV, batch, tokens, heads, head_dim);
    batched_gemm_onednn(&p, s->probs, s->d_out, 1.0f, d_part);
    into_qkv(d_qkv, d_part, 2, rows_bt, dim);
    /* d_probs = d_out v^T, then the softmax backward with the scale folded in */
    p = attention_product(DP, batch, tokens, heads, head_dim);
    batched_gemm_onednn(&p, s->d_out, s->v, 1.0f, d_scores);
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < score_rows; r++) {
        const float *prow = probs + r * tokens;
        float *srow = d_scores + r * tokens;
        uint16_t *bits = d_score_bits + r * tokens;
        float weighted = 0.0f;
        for (int j = 0; j < tokens; j++) weighted += prow[j] * srow[j];
        for (int j = 0; j < tokens; j++) bits[j] = bf16_from_float(scale * prow[j] * (srow[j] - weighted));
    }
    /* dq = d_scores k; dk = d_scores^T q */
    p = attention_product(DQ, batch, tokens, heads, head_dim);
    batched_gemm_onednn(&p, d_score_bits, s->k, 1.0f, d_part);
    into_qkv(d_qkv, d_part, 0, rows_bt, dim);
    p = attention_product(DK, batch, tokens, heads, head_dim);
    batched_gemm_onednn(&p, d_score_bits, s->q, 1.0f, d_part);
    into_qkv(d_qkv, d_part, 1, rows_bt, dim);
}

/* ---- the oneDNN fp32 attention (ops.h) ---- */

void attention_plan_onednn(int batch, int tokens, int heads, int head_dim) {
    const float scale = 1.0f / sqrtf((float)head_dim);
    for (int which = 0; which < PRODUCTS; which++) {
        const batched_product p = attention_product(which, batch, tokens, heads, head_dim);
        batched_gemm_onednn_f32_plan(&p, which == QK ? scale : 1.0f);
    }
}

size_t attention_onednn_scratch_bytes(int batch, int tokens, int heads, int head_dim) {
    return 4 * sizeof(float) * (size_t)batch * tokens * heads * head_dim;
}

/* heads_out[p] (B, H, T, E) = part p of rows laid out (T, parts, H, E) per sample (row
 * length parts * H * E values), for p < parts: q, k, v of qkv (3), or d_out (1). One
 * parallel region for all parts: a region is a barrier, costly when a thread waits
 * for another that a busy machine has descheduled. */
static void to_heads_f32(float *const heads_out[3], const float *rows, int parts, int batch, int tokens, int heads,
                         int head_dim) {
    const int dim = heads * head_dim, row = parts * dim;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < batch; b++)
        for (int t = 0; t < tokens; t++)
            for (int part = 0; part < parts; part++) {
                const float *from = rows + ((size_t)b * tokens + t) * row + (size_t)part * dim;
                for (int h = 0; h < heads; h++)
                    memcpy(heads_out[part] + (((size_t)b * heads + h) * tokens + t) * head_dim, from + h * head_dim,
                           sizeof(float) * head_dim);
            }
}

/* The four (B, H, T, E) parts of the scratch: q, k, v, d_out. */
static float *scratch_part(float *scratch, int part, int batch, int tokens, int heads, int head_dim) {
    return scratch + (size_t)part * batch * tokens * heads * head_dim;
}

void attention_forward_onednn(float *out, float *probs, const float *qkv, float *scratch, int batch, int tokens,
                              int heads, int head_dim, ldm_precision precision) {
    if (precision == PRECISION_FP32 && attention_fused_f32_usable(tokens, head_dim)) {
        attention_forward_fused_f32(out, probs, qkv, scratch, batch, tokens, heads, head_dim);
        return;
    }
    const float scale = 1.0f / sqrtf((float)head_dim);
    float *q = scratch_part(scratch, 0, batch, tokens, heads, head_dim);
    float *k = scratch_part(scratch, 1, batch, tokens, heads, head_dim);
    float *v = scratch_part(scratch, 2, batch, tokens, heads, head_dim);
    float *const qkv_heads[3] = {q, k, v};
    to_heads_f32(qkv_heads, qkv, 3, batch, tokens, heads, head_dim);
    batched_product p = attention_product(QK, batch, tokens, heads, head_dim);
    batched_gemm_onednn_f32(&p, q, k, scale, probs);
    const size_t rows = (size_t)batch * heads * tokens;
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        float *row = probs + r * tokens;
        const float inv = exp_row(row, tokens);
        for (int j = 0; j < tokens; j++) row[j] *= inv;
        if (precision != PRECISION_FP32) precision_round_serial(precision, row, (size_t)tokens);
    }
    p = attention_product(PV, batch, tokens, heads, head_dim);
    batched_gemm_onednn_f32(&p, probs, v, 1.0f, out);
}

void attention_backward_onednn(float *d_qkv, float *d_scores, const float *d_out, const float *qkv,
                               const float *probs, float *scratch, int batch, int tokens, int heads, int head_dim,
                               ldm_precision precision) {
    if (precision == PRECISION_FP32 && attention_fused_f32_usable(tokens, head_dim)) {
        attention_backward_fused_f32(d_qkv, d_scores, d_out, qkv, probs, scratch, batch, tokens, heads, head_dim);
        return;
    }
    const int dim = heads * head_dim, rows_bt = batch * tokens;
    const float scale = 1.0f / sqrtf((float)head_dim);
    const size_t score_rows = (size_t)batch * heads * tokens;
    float *q = scratch_part(scratch, 0, batch, tokens, heads, head_dim);
    float *k = scratch_part(scratch, 1, batch, tokens, heads, head_dim);
    float *v = scratch_part(scratch, 2, batch, tokens, heads, head_dim);
    float *d_o = scratch_part(scratch, 3, batch, tokens, heads, head_dim);
    float *const qkv_heads[3] = {q, k, v}, *const d_out_heads[3] = {d_o, NULL, NULL};
    to_heads_f32(qkv_heads, qkv, 3, batch, tokens, heads, head_dim);
    to_heads_f32(d_out_heads, d_out, 1, batch, tokens, heads, head_dim);
    /* d_probs = d_out v^T, then the softmax backward with the scale folded in */
    batched_product p = attention_product(DP, batch, tokens, heads, head_dim);
    batched_gemm_onednn_f32(&p, d_o, v, 1.0f, d_scores);
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < score_rows; r++) {
        const float *prow = probs + r * tokens;
        float *srow = d_scores + r * tokens;
        float weighted = 0.0f;
        for (int j = 0; j < tokens; j++) weighted += prow[j] * srow[j];
        for (int j = 0; j < tokens; j++) srow[j] = scale * prow[j] * (srow[j] - weighted);
        if (precision != PRECISION_FP32) precision_round_serial(precision, srow, (size_t)tokens);
    }
    /* dv = p^T d_out into v's place (v is read no more), token-major, then into d_qkv */
    p = attention_product(DV, batch, tokens, heads, head_dim);
    batched_gemm_onednn_f32(&p, probs, d_o, 1.0f, v);
    into_qkv(d_qkv, v, 2, rows_bt, dim);
    /* dq = d_scores k into d_out's place; dk = d_scores^T q into v's */
    p = attention_product(DQ, batch, tokens, heads, head_dim);
    batched_gemm_onednn_f32(&p, d_scores, k, 1.0f, d_o);
    into_qkv(d_qkv, d_o, 0, rows_bt, dim);
    p = attention_product(DK, batch, tokens, heads, head_dim);
    batched_gemm_onednn_f32(&p, d_scores, q, 1.0f, v);
    into_qkv(d_qkv, v, 1, rows_bt, dim);
}

/* ---- the fused fp32 attention (ops.h) ---- */

#define FUSED_ROWS 4          /* rows of C a micro-kernel holds */
#define FUSED_COLUMNS 64      /* columns: four registers of 16 floats */

int attention_fused_f32_usable(int tokens, int head_dim) {
#if defined(__x86_64__) && defined(__GNUC__)
    static int avx512 = -1;
    if (avx512 < 0) {
        __builtin_cpu_init();
        avx512 = __builtin_cpu_supports("avx512f");
    }
    return avx512 && tokens > 0 && head_dim > 0 && tokens % FUSED_COLUMNS == 0 && head_dim % FUSED_COLUMNS == 0;
#else
    (void)tokens, (void)head_dim;
    return 0;
#endif
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* C (m, n) = alpha A (m, k) B (k, n), with A's element (r, p) at
 * a[r * a_row + p * a_column] (a transposed view when a_row is 1), B's rows ldb
 * apart, C's rows ldc apart; m a multiple of FUSED_ROWS, n of FUSED_COLUMNS.
 * Each element is summed over p in order. */
__attribute__((target("avx512f"))) static void fused_product(int m, int n, int k, float alpha, const float *a,
                                                              ptrdiff_t a_row, ptrdiff_t a_column, const float *b,
                                                              ptrdiff_t ldb, float *c, ptrdiff_t ldc) {
    const __m512 scale = _mm512_set1_ps(alpha);
    for (int c0 = 0; c0 < n; c0 += FUSED_COLUMNS)
        for (int r0 = 0; r0 < m; r0 += FUSED_ROWS) {
            __m512 acc[FUSED_ROWS][4];
            for (int r = 0; r < FUSED_ROWS; r++)
                for (int v = 0; v < 4; v++) acc[r][v] = _mm512_setzero_ps();
            const float *a_rows[FUSED_ROWS];
            for (int r = 0; r < FUSED_ROWS; r++) a_rows[r] = a + (ptrdiff_t)(r0 + r) * a_row;
            const float *bp = b + c0;
            for (int p = 0; p < k; p++, bp += ldb) {
                const __m512 b0 = _mm512_loadu_ps(bp), b1 = _mm512_loadu_ps(bp + 16);
                const __m512 b2 = _mm512_loadu_ps(bp + 32), b3 = _mm512_loadu_ps(bp + 48);
                for (int r = 0; r < FUSED_ROWS; r++) {
                    const __m512 ar = _mm512_set1_ps(a_rows[r][(ptrdiff_t)p * a_column]);
                    acc[r][0] = _mm512_fmadd_ps(ar, b0, acc[r][0]);
                    acc[r][1] = _mm512_fmadd_ps(ar, b1, acc[r][1]);
                    acc[r][2] = _mm512_fmadd_ps(ar, b2, acc[r][2]);
                    acc[r][3] = _mm512_fmadd_ps(ar, b3, acc[r][3]);
                }
            }
            for (int r = 0; r < FUSED_ROWS; r++) {
                float *cr = c + (ptrdiff_t)(r0 + r) * ldc + c0;
                for (int v = 0; v < 4; v++) _mm512_storeu_ps(cr + 16 * v, _mm512_mul_ps(acc[r][v], scale));
            }
        }
}

/* Softmax of each of rows rows of n values (a multiple of 16) in place. The max
 * and the sum run over 16 lanes and are then reduced, so no sum is one long
 * chain of dependent additions (exp_row's, which the compiler may not reorder). */
__attribute__((target("avx512f"))) static void fused_softmax_rows(float *p, int rows, int n) {
    for (int i = 0; i < rows; i++) {
        float *row = p + (size_t)i * n;
        __m512 lanes = _mm512_loadu_ps(row);
        for (int j = 16; j < n; j += 16) lanes = _mm512_max_ps(lanes, _mm512_loadu_ps(row + j));
        const float max = _mm512_reduce_max_ps(lanes);
        for (int j = 0; j < n; j++) row[j] = fast_expf(row[j] - max);
        lanes = _mm512_setzero_ps();
        for (int j = 0; j < n; j += 16) lanes = _mm512_add_ps(lanes, _mm512_loadu_ps(row + j));
        const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(lanes));
        for (int j = 0; j < n; j += 16) _mm512_storeu_ps(row + j, _mm512_mul_ps(_mm512_loadu_ps(row + j), inv));
    }
}

/* The softmax backward of rows rows in place: d_s = scale p (d_s - sum_j p d_s),
 * the sum over 16 lanes as above. */
__attribute__((target("avx512f"))) static void fused_softmax_backward_rows(float *d_s, const float *p, int rows,
                                                                            int n, float scale) {
    const __m512 scale_lanes = _mm512_set1_ps(scale);
    for (int i = 0; i < rows; i++) {
        const float *prow = p + (size_t)i * n;
        float *srow = d_s + (size_t)i * n;
        __m512 lanes = _mm512_setzero_ps();
        for (int j = 0; j < n; j += 16)
            lanes = _mm512_fmadd_ps(_mm512_loadu_ps(prow + j), _mm512_loadu_ps(srow + j), lanes);
        const __m512 weighted = _mm512_set1_ps(_mm512_reduce_add_ps(lanes));
        for (int j = 0; j < n; j += 16) {
            const __m512 scaled_p = _mm512_mul_ps(scale_lanes, _mm512_loadu_ps(prow + j));
            _mm512_storeu_ps(srow + j, _mm512_mul_ps(scaled_p, _mm512_sub_ps(_mm512_loadu_ps(srow + j), weighted)));
        }
    }
}

/* to (cols, rows) = from (rows, cols)^T, from's rows ld apart; rows and cols
 * multiples of 16. In 16 x 16 blocks held in registers: element by element, the
 * strided stores cost as much as a product of the pair (a fifth of the step's
 * attention). */
__attribute__((target("avx512f"))) static void transpose_into(float *to, const float *from, int rows, int cols,
                                                              ptrdiff_t ld) {
    for (int r0 = 0; r0 < rows; r0 += 16)
        for (int c0 = 0; c0 < cols; c0 += 16) {
            __m512 x[16], y[16];
            for (int i = 0; i < 16; i++) x[i] = _mm512_loadu_ps(from + (ptrdiff_t)(r0 + i) * ld + c0);
            /* Interleave 32-bit, then 64-bit pairs within 128-bit lanes, then the
             * 128-bit lanes: afterwards y[j] holds column j of the block. */
            for (int i = 0; i < 16; i += 2) {
                y[i] = _mm512_unpacklo_ps(x[i], x[i + 1]);
                y[i + 1] = _mm512_unpackhi_ps(x[i], x[i + 1]);
            }
            for (int i = 0; i < 16; i += 4)
                for (int j = 0; j < 2; j++) {
                    const __m512d a = _mm512_castps_pd(y[i + j]), b = _mm512_castps_pd(y[i + j + 2]);
                    x[i + 2 * j] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
                    x[i + 2 * j + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
                }
            for (int i = 0; i < 16; i += 8)
                for (int j = 0; j < 4; j++) {
                    y[i + j] = _mm512_shuffle_f32x4(x[i + j], x[i + j + 4], 0x88);
                    y[i + j + 4] = _mm512_shuffle_f32x4(x[i + j], x[i + j + 4], 0xdd);
                }
            for (int j = 0; j < 8; j++) {
                x[j] = _mm512_shuffle_f32x4(y[j], y[j + 8], 0x88);
                x[j + 8] = _mm512_shuffle_f32x4(y[j], y[j + 8], 0xdd);
            }
            for (int i = 0; i < 16; i++) _mm512_storeu_ps(to + (size_t)(c0 + i) * rows + r0, x[i]);
        }
}

/* Asks for the rows of a (sample, head) pair's matrix (tokens rows of head_dim
 * floats, ld apart) to be brought into the L2 cache. A head's rows are a few
 * hundred bytes each, kilobytes apart, which the hardware's stream prefetchers
 * do not follow: fetched on demand they cost the products about 40% (measured
 * with data in cache and not). Called for the next pair while this one computes. */
static void prefetch_rows(const float *rows, int tokens, int head_dim, ptrdiff_t ld) {
    for (int t = 0; t < tokens; t++)
        for (int c = 0; c < head_dim; c += 16) _mm_prefetch((const char *)(rows + (ptrdiff_t)t * ld + c), _MM_HINT_T1);
}

/* Which of the scratch's per-pair parts a pair uses: its thread's (a thread of
 * a static schedule over the pairs has a number below their count), so that a
 * thread reuses one part that stays in its cache instead of walking through
 * megabytes of scratch, each new line read from memory before it is written. */
static int scratch_slot(int pair) {
    const int thread = omp_get_thread_num();
    return thread <= pair ? thread : pair;
}

/* Where pair's head starts in a (batch, tokens, ..., heads, head_dim) buffer
 * whose token rows are ld apart. */
static ptrdiff_t pair_offset(int pair, int heads, int tokens, ptrdiff_t ld, int head_dim) {
    return (ptrdiff_t)(pair / heads) * tokens * ld + (ptrdiff_t)(pair % heads) * head_dim;
}

void attention_forward_fused_f32(float *out, float *probs, const float *qkv, float *scratch, int batch, int tokens,
                                 int heads, int head_dim) {
    const int T = tokens, E = head_dim, pairs = batch * heads;
    const ptrdiff_t dim = (ptrdiff_t)heads * E, ld = 3 * dim;
    const float scale = 1.0f / sqrtf((float)E);
#pragma omp parallel for schedule(static)
    for (int pair = 0; pair < pairs; pair++) {
        const float *q = qkv + pair_offset(pair, heads, T, ld, E), *k = q + dim, *v = q + 2 * dim;
        /* The next pair's q, k, v, asked for a third at a time between the steps. */
        const float *next = pair + 1 < pairs ? qkv + pair_offset(pair + 1, heads, T, ld, E) : NULL;
        float *p = probs + (size_t)pair * T * T;
        float *k_transposed = scratch + (size_t)scratch_slot(pair) * T * E;
        if (next) prefetch_rows(next + dim, T, E, ld);
        transpose_into(k_transposed, k, T, E, ld);
        if (next) prefetch_rows(next, T, E, ld);
        fused_product(T, T, E, scale, q, ld, 1, k_transposed, T, p, T); /* scores */
        if (next) prefetch_rows(next + 2 * dim, T, E, ld);
        fused_softmax_rows(p, T, T);
        fused_product(T, E, T, 1.0f, p, T, 1, v, ld, out + pair_offset(pair, heads, T, dim, E), dim);
    }
}

void attention_backward_fused_f32(float *d_qkv, float *d_scores, const float *d_out, const float *qkv,
                                  const float *probs, float *scratch, int batch, int tokens, int heads,
                                  int head_dim) {
    const int T = tokens, E = head_dim, pairs = batch * heads;
    const ptrdiff_t dim = (ptrdiff_t)heads * E, ld = 3 * dim;
    const float scale = 1.0f / sqrtf((float)E);
#pragma omp parallel for schedule(static)
    for (int pair = 0; pair < pairs; pair++) {
        const ptrdiff_t head = pair_offset(pair, heads, T, ld, E);
        const float *q = qkv + head, *k = q + dim, *v = q + 2 * dim;
        const float *d_o = d_out + pair_offset(pair, heads, T, dim, E);
        float *d_q = d_qkv + head, *d_k = d_q + dim, *d_v = d_q + 2 * dim;
        const float *p = probs + (size_t)pair * T * T;
        float *d_s = d_scores + (size_t)scratch_slot(pair) * T * T;
        float *v_transposed = scratch + (size_t)scratch_slot(pair) * T * E;
        if (pair + 1 < pairs) { /* the next pair's inputs and the rows of d_qkv it writes */
            const ptrdiff_t next = pair_offset(pair + 1, heads, T, ld, E);
            for (int part = 0; part < 3; part++) {
                prefetch_rows(qkv + next + part * dim, T, E, ld);
                prefetch_rows(d_qkv + next + part * dim, T, E, ld);
            }
            prefetch_rows(d_out + pair_offset(pair + 1, heads, T, dim, E), T, E, dim);
        }
        transpose_into(v_transposed, v, T, E, ld);
        fused_product(T, T, E, 1.0f, d_o, dim, 1, v_transposed, T, d_s, T); /* d_probs = d_out v^T */
        fused_softmax_backward_rows(d_s, p, T, T, scale); /* the scale folded in */
        fused_product(T, E, T, 1.0f, d_s, T, 1, k, ld, d_q, ld);  /* dq = d_scores k */
        fused_product(T, E, T, 1.0f, d_s, 1, T, q, ld, d_k, ld);  /* dk = d_scores^T q */
        fused_product(T, E, T, 1.0f, p, 1, T, d_o, dim, d_v, ld); /* dv = p^T d_out */
    }
}

#else

#include "fatal.h"

void attention_forward_fused_f32(float *out, float *probs, const float *qkv, float *scratch, int batch, int tokens,
                                 int heads, int head_dim) {
    (void)out, (void)probs, (void)qkv, (void)batch, (void)tokens, (void)heads, (void)head_dim;
    fatal_internal("attention_forward_fused_f32: not built for this CPU");
}

void attention_backward_fused_f32(float *d_qkv, float *d_scores, const float *d_out, const float *qkv,
                                  const float *probs, float *scratch, int batch, int tokens, int heads,
                                  int head_dim) {
    (void)d_qkv, (void)d_scores, (void)d_out, (void)qkv, (void)probs, (void)batch, (void)tokens, (void)heads;
    (void)head_dim;
    fatal_internal("attention_backward_fused_f32: not built for this CPU");
}

#endif

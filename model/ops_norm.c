/* LayerNorm without affine parameters (DiT's norm1, norm2, norm_final), and the
 * adaLN pieces that act on its output: modulate (x * (1 + scale) + shift) and the
 * gated residual (x += gate * y), with shift, scale and gate per sample; and the
 * two fused for the DiT (LayerNorm then modulate forward, their backward in one
 * pass), the same bits as the separate ops. Row statistics are accumulated in
 * double so that rows with a large mean lose nothing, the forward's in lanes
 * (lane_sums.h: its one chain of dependent additions was most of its time); the
 * backward's float sums in float lanes likewise. */
#include <math.h>
#include <string.h>

#include "lane_sums.h"
#include "ops.h"
#include "widest_vectors.h"

/* One row: y = (x - mean) * rstd. */
static void layernorm_row(float *y, float *mean, float *rstd, const float *x, int dim, float eps) {
    double sum[LANES] = {0}, squares[LANES] = {0};
    add_values(sum, x, (size_t)dim);
    float mu = (float)(lanes_total(sum) / dim);
    add_squares(squares, x, (size_t)dim, mu);
    const double var = lanes_total(squares);
    float rs = (float)(1.0 / sqrt(var / dim + eps));
    for (int j = 0; j < dim; j++) y[j] = (x[j] - mu) * rs;
    *mean = mu;
    *rstd = rs;
}

void layernorm_forward(float *out, float *mean, float *rstd, const float *in,
                       int rows, int dim, float eps) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++)
        layernorm_row(out + (size_t)r * dim, mean + r, rstd + r, in + (size_t)r * dim, dim, eps);
}

/* The modulation of one row y into out. */
static void modulate_row(float *out, const float *y, const float *shift, const float *scale, int dim) {
    for (int j = 0; j < dim; j++) out[j] = y[j] * (1.0f + scale[j]) + shift[j];
}

void layernorm_modulate_forward(float *out, float *normalized, float *mean, float *rstd, const float *in,
                                const float *shift, const float *scale, int mod_stride, int batch, int tokens,
                                int dim, float eps) {
    const int rows = batch * tokens;
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        const size_t at = (size_t)r * dim, b = (size_t)(r / tokens);
        layernorm_row(normalized + at, mean + r, rstd + r, in + at, dim, eps);
        modulate_row(out + at, normalized + at, shift + b * mod_stride, scale + b * mod_stride, dim);
    }
}

void layernorm_backward(float *d_in, float d_in_beta, const float *d_out, const float *in,
                        const float *mean, const float *rstd, int rows, int dim) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        const float *x = in + (size_t)r * dim;
        const float *g = d_out + (size_t)r * dim;
        float *dx = d_in + (size_t)r * dim;
        float mu = mean[r], rs = rstd[r];
        /* dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) */
        float sum_g = 0.0f, sum_gx = 0.0f;
        for (int j = 0; j < dim; j++) {
            float xhat = (x[j] - mu) * rs;
            sum_g += g[j];
            sum_gx += g[j] * xhat;
        }
        float mean_g = sum_g / dim, mean_gx = sum_gx / dim;
        if (d_in_beta == 0.0f) {
            for (int j = 0; j < dim; j++) dx[j] = rs * (g[j] - mean_g - (x[j] - mu) * rs * mean_gx);
        } else {
            for (int j = 0; j < dim; j++)
                dx[j] = d_in_beta * dx[j] + rs * (g[j] - mean_g - (x[j] - mu) * rs * mean_gx);
        }
    }
}

/* The two sums of one row's backward, sum_j g[j] and sum_j g[j] xhat[j], in
 * float lanes (lane_sums.h): as two chains of dependent additions they bound the
 * backward (DiT-S's 24 calls a step: 11.5 -> 8.6 ms on 2 threads). Built for
 * AVX-512 beside the baseline, in a function of its own (a loop that is the body
 * of an OpenMP construct is not vectorised). */
WIDEST_VECTORS static void layernorm_backward_row(float *dx, float d_in_beta, const float *g, const float *xhat,
                                                  float rs, int dim) {
    float_lanes lanes_g = {0}, lanes_gx = {0};
    int j = 0;
    for (; j + FLOAT_LANES <= dim; j += FLOAT_LANES) {
        float_lanes gv, xv;
        memcpy(&gv, g + j, sizeof gv);
        memcpy(&xv, xhat + j, sizeof xv);
        lanes_g += gv;
        lanes_gx += gv * xv;
    }
    for (int l = 0; j < dim; j++, l++) {
        lanes_g[l] += g[j];
        lanes_gx[l] += g[j] * xhat[j];
    }
    const float mean_g = float_lanes_total(&lanes_g) / dim, mean_gx = float_lanes_total(&lanes_gx) / dim;
    /* beta 0 must not read d_in: it may hold anything, also NaN */
    if (d_in_beta == 0.0f) {
        for (j = 0; j < dim; j++) dx[j] = rs * (g[j] - mean_g - xhat[j] * mean_gx);
    } else {
        for (j = 0; j < dim; j++) dx[j] = d_in_beta * dx[j] + rs * (g[j] - mean_g - xhat[j] * mean_gx);
    }
}

void layernorm_backward_normalized(float *d_in, float d_in_beta, const float *d_out, const float *normalized,
                                   const float *rstd, int rows, int dim) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++)
        layernorm_backward_row(d_in + (size_t)r * dim, d_in_beta, d_out + (size_t)r * dim,
                               normalized + (size_t)r * dim, rstd[r], dim);
}

void modulate_forward(float *out, const float *in, const float *shift, const float *scale,
                      int mod_stride, int batch, int tokens, int dim) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < batch; b++)
        for (int t = 0; t < tokens; t++) {
            const size_t base = ((size_t)b * tokens + t) * dim;
            modulate_row(out + base, in + base, shift + (size_t)b * mod_stride, scale + (size_t)b * mod_stride, dim);
        }
}

/* The pieces of the adaLN backward passes below, on one sample's row of width
 * columns: f = factor (+ 1), the per-sample multiplier of the output; one token's
 * row a (and y): plain += a, weighted += a * y (each where not NULL), out = a * f
 * (where out is not NULL), each element of a read before out's is written; and
 * the token sums added into the sample's sum and product_sum. */
static void adaln_factor(float *f, const float *factor, int plus_one, int width) {
    for (int j = 0; j < width; j++) f[j] = plus_one ? 1.0f + factor[j] : factor[j];
}

static void adaln_backward_row(float *out, const float *f, float *plain, float *weighted, const float *a,
                               const float *y, int width) {
    if (plain)
        for (int j = 0; j < width; j++) plain[j] += a[j];
    if (weighted)
        for (int j = 0; j < width; j++) weighted[j] += a[j] * y[j];
    if (out)
        for (int j = 0; j < width; j++) out[j] = a[j] * f[j];
}

static void adaln_add_sums(float *sum, float *product_sum, const float *plain, const float *weighted, int width) {
    for (int j = 0; j < width; j++) {
        if (sum) sum[j] += plain[j];
        if (product_sum) product_sum[j] += weighted[j];
    }
}

/* The adaLN backward passes: per sample b and chunk of up to 512 columns (all of
 * a row at DiT-S's 384: 30% faster than 64-column stripes, measured), over its
 * tokens in order, an optional per-element output and up to two token sums,
 *   out[b, t, j] = a[b, t, j] * (out_plus_one ? 1 + factor[b, j] : factor[b, j]),
 *   sum[b * mod_stride + j] += sum over t of a[b, t, j],
 *   product_sum[b * mod_stride + j] += sum over t of a[b, t, j] * y[b, t, j],
 * in one pass over a. One thread per (sample, column chunk) sums the tokens in
 * order, so the result does not depend on the thread count. */
static void adaln_backward_pass(float *out, const float *factor, int out_plus_one, float *sum, float *product_sum,
                                const float *y, const float *a, int mod_stride, int batch, int tokens, int dim) {
    enum { BLOCK = 512 };
    const int blocks = (dim + BLOCK - 1) / BLOCK;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < batch; b++)
        for (int blk = 0; blk < blocks; blk++) {
            const int j0 = blk * BLOCK, width = j0 + BLOCK < dim ? BLOCK : dim - j0;
            const size_t per_sample = (size_t)b * mod_stride + j0;
            float plain[BLOCK] = {0}, weighted[BLOCK] = {0}, f[BLOCK];
            if (out) adaln_factor(f, factor + per_sample, out_plus_one, width);
            for (int t = 0; t < tokens; t++) {
                const size_t base = ((size_t)b * tokens + t) * dim + j0;
                adaln_backward_row(out ? out + base : NULL, f, sum ? plain : NULL, product_sum ? weighted : NULL,
                                   a + base, y ? y + base : NULL, width);
            }
            adaln_add_sums(sum ? sum + per_sample : NULL, product_sum ? product_sum + per_sample : NULL, plain,
                           weighted, width);
        }
}

void modulate_backward(float *d_in, float *d_shift, float *d_scale, const float *d_out,
                       const float *in, const float *scale, int mod_stride,
                       int batch, int tokens, int dim) {
    adaln_backward_pass(d_in, scale, 1, d_shift, d_scale, in, d_out, mod_stride, batch, tokens, dim);
}

/* Up to this width the fused backward below keeps a row's sums and gradient on
 * the stack (4 x 8 KiB); wider rows take the two ops. */
enum { FUSED_BACKWARD_MAX_DIM = 2048 };

void modulate_layernorm_backward(float *d_in, float d_in_beta, float *d_shift, float *d_scale, const float *d_out,
                                 const float *normalized, const float *rstd, const float *scale, int mod_stride,
                                 int batch, int tokens, int dim, float *d_modulated) {
    if (dim > FUSED_BACKWARD_MAX_DIM) {
        modulate_backward(d_modulated, d_shift, d_scale, d_out, normalized, scale, mod_stride, batch, tokens, dim);
        layernorm_backward_normalized(d_in, d_in_beta, d_modulated, normalized, rstd, batch * tokens, dim);
        return;
    }
#pragma omp parallel for schedule(static)
    for (int b = 0; b < batch; b++) {
        const size_t per_sample = (size_t)b * mod_stride;
        float plain[FUSED_BACKWARD_MAX_DIM] = {0}, weighted[FUSED_BACKWARD_MAX_DIM] = {0};
        float f[FUSED_BACKWARD_MAX_DIM], g[FUSED_BACKWARD_MAX_DIM]; /* g: modulate's input gradient, one row */
        adaln_factor(f, scale + per_sample, 1, dim);
        for (int t = 0; t < tokens; t++) {
            const size_t at = ((size_t)b * tokens + t) * dim;
            adaln_backward_row(g, f, d_shift ? plain : NULL, d_scale ? weighted : NULL, d_out + at, normalized + at,
                               dim);
            layernorm_backward_row(d_in + at, d_in_beta, g, normalized + at, rstd[(size_t)b * tokens + t], dim);
        }
        adaln_add_sums(d_shift ? d_shift + per_sample : NULL, d_scale ? d_scale + per_sample : NULL, plain, weighted,
                       dim);
    }
}

void gated_residual_forward(float *x, const float *y, const float *gate, int mod_stride,
                            int batch, int tokens, int dim) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < batch; b++)
        for (int t = 0; t < tokens; t++) {
            const float *g = gate + (size_t)b * mod_stride;
            size_t base = ((size_t)b * tokens + t) * dim;
            for (int j = 0; j < dim; j++) x[base + j] += g[j] * y[base + j];
        }
}

void gated_residual_backward(float *d_y, float *d_gate, const float *d_x, const float *y,
                             const float *gate, int mod_stride, int batch, int tokens, int dim) {
    adaln_backward_pass(d_y, gate, 0, NULL, d_gate, y, d_x, mod_stride, batch, tokens, dim);
}

/* Elementwise activations: tanh-approximated GELU (DiT's MLP) and SiLU (the
 * adaLN and timestep-embedder inputs), with the vectorisable exp/tanh of
 * fast_math.h. Each op runs over chunks in parallel; the loop over one chunk is a
 * plain function the compiler vectorises (it does not vectorise the loop when it
 * is the body of the OpenMP construct itself). */
#include <math.h>

#include "fast_math.h"
#include "ops.h"
#include "widest_vectors.h"

#define GELU_SQRT_2_OVER_PI 0.7978845608028654f
#define GELU_COEFF 0.044715f
#define ELEMENTWISE_CHUNK 4096

/* GELU's and SiLU's loops are built for AVX-512 beside the baseline
 * (widest_vectors.h): the keep-slope GELU ran 0.9 ns an element with AVX-512
 * against 2-7 with AVX2 on the development machine. */

/* Runs body(offset, count) over [0, n) in chunks, in parallel. */
#define FOR_EACH_CHUNK(n, body)                                                        \
    do {                                                                               \
        size_t chunks_ = ((n) + ELEMENTWISE_CHUNK - 1) / ELEMENTWISE_CHUNK;            \
        _Pragma("omp parallel for schedule(static)")                                   \
        for (size_t c_ = 0; c_ < chunks_; c_++) {                                      \
            size_t offset = c_ * ELEMENTWISE_CHUNK;                                    \
            int count = (int)((n) - offset < ELEMENTWISE_CHUNK ? (n) - offset : ELEMENTWISE_CHUNK); \
            body;                                                                      \
        }                                                                              \
    } while (0)

/* GELU's pieces at x: with u = sqrt(2/pi) (x + 0.044715 x^3) and
 * s = 1 / (1 + e^{2u}) = (1 - tanh u) / 2, q = 1 - s = (1 + tanh u) / 2,
 *   gelu(x) = x q,   gelu'(x) = q + 2 x s q u'(x) = q (1 + 2 x s u'(x)),
 * one exp and one division (tanh's) with the multiply-adds as fmaf: 1.16 -> 0.73 ns
 * an element in the keep-slope loop (one thread, AVX-512), within 2e-6 of the
 * double formula like the tanh form it replaced. 2u is clamped to [-40, 40], where
 * s is 1 or 0 to float precision, so that no lane meets a subnormal. */
static inline float gelu_s(float x, float x2) {
    float two_u = 2.0f * x * fmaf(GELU_SQRT_2_OVER_PI * GELU_COEFF, x2, GELU_SQRT_2_OVER_PI);
    two_u = two_u > 40.0f ? 40.0f : two_u;
    two_u = two_u < -40.0f ? -40.0f : two_u;
    return 1.0f / (1.0f + fast_expf(two_u));
}

static inline float gelu_slope(float x, float x2, float s) {
    const float du = fmaf(3.0f * GELU_SQRT_2_OVER_PI * GELU_COEFF, x2, GELU_SQRT_2_OVER_PI);
    return (1.0f - s) * fmaf(2.0f * x * s, du, 1.0f);
}

WIDEST_VECTORS static void gelu_forward_chunk(float *out, const float *in, int n) {
    for (int i = 0; i < n; i++) {
        const float x = in[i];
        out[i] = x * (1.0f - gelu_s(x, x * x));
    }
}

WIDEST_VECTORS static void gelu_backward_chunk(float *d_in, const float *d_out, const float *in, int n) {
    for (int i = 0; i < n; i++) {
        const float x = in[i], x2 = x * x;
        d_in[i] = d_out[i] * gelu_slope(x, x2, gelu_s(x, x2));
    }
}

/* gelu_forward_chunk and the slope gelu_backward_chunk multiplies by, from one exp. */
WIDEST_VECTORS static void gelu_keep_slope_chunk(float *out, float *x_then_slope, int n) {
    for (int i = 0; i < n; i++) {
        const float x = x_then_slope[i], x2 = x * x, s = gelu_s(x, x2);
        out[i] = x * (1.0f - s);
        x_then_slope[i] = gelu_slope(x, x2, s);
    }
}

/* The denominators first, then the quotients: written as one expression, GCC
 * specialises the lanes where fast_expf clamps its argument into x / constant
 * computed for every lane, and for ordinary x that quotient is subnormal, which
 * costs a microcode assist per vector (about 3x the whole loop on Zen 4). The
 * same operations in the same order: the same bits. */
WIDEST_VECTORS static void silu_forward_chunk(float *out, const float *in, int n) {
    float denominator[ELEMENTWISE_CHUNK];
    for (int i = 0; i < n; i++) denominator[i] = 1.0f + fast_expf(-in[i]);
    for (int i = 0; i < n; i++) out[i] = in[i] / denominator[i];
}

WIDEST_VECTORS static void silu_backward_chunk(float *d_in, const float *d_out, const float *in, int n) {
    for (int i = 0; i < n; i++) {
        float x = in[i];
        float s = 1.0f / (1.0f + fast_expf(-x));
        d_in[i] = d_out[i] * s * (1.0f + x * (1.0f - s));
    }
}

/* As silu_forward_chunk (denominators first, the same quotient), and the slope. */
WIDEST_VECTORS static void silu_keep_slope_chunk(float *out, float *x_then_slope, int n) {
    float denominator[ELEMENTWISE_CHUNK];
    for (int i = 0; i < n; i++) denominator[i] = 1.0f + fast_expf(-x_then_slope[i]);
    for (int i = 0; i < n; i++) {
        const float x = x_then_slope[i], s = 1.0f / denominator[i];
        out[i] = x / denominator[i];
        x_then_slope[i] = s * (1.0f + x * (1.0f - s));
    }
}

static void multiply_chunk(float *out, const float *a, const float *b, int n) {
    for (int i = 0; i < n; i++) out[i] = a[i] * b[i];
}

void silu_forward_keep_slope(float *out, float *x_then_slope, size_t n) {
    FOR_EACH_CHUNK(n, silu_keep_slope_chunk(out + offset, x_then_slope + offset, count));
}

/* d_in = d_out * slope: the backward of any activation that kept its slope */
static void backward_from_slope(float *d_in, const float *d_out, const float *slope, size_t n) {
    FOR_EACH_CHUNK(n, multiply_chunk(d_in + offset, d_out + offset, slope + offset, count));
}

void silu_backward_from_slope(float *d_in, const float *d_out, const float *slope, size_t n) {
    backward_from_slope(d_in, d_out, slope, n);
}

void gelu_tanh_forward(float *out, const float *in, size_t n) {
    FOR_EACH_CHUNK(n, gelu_forward_chunk(out + offset, in + offset, count));
}

void gelu_tanh_backward(float *d_in, const float *d_out, const float *in, size_t n) {
    FOR_EACH_CHUNK(n, gelu_backward_chunk(d_in + offset, d_out + offset, in + offset, count));
}

void gelu_tanh_forward_keep_slope(float *out, float *x_then_slope, size_t n) {
    FOR_EACH_CHUNK(n, gelu_keep_slope_chunk(out + offset, x_then_slope + offset, count));
}

void gelu_tanh_backward_from_slope(float *d_in, const float *d_out, const float *slope, size_t n) {
    backward_from_slope(d_in, d_out, slope, n);
}

void silu_forward(float *out, const float *in, size_t n) {
    FOR_EACH_CHUNK(n, silu_forward_chunk(out + offset, in + offset, count));
}

void silu_backward(float *d_in, const float *d_out, const float *in, size_t n) {
    FOR_EACH_CHUNK(n, silu_backward_chunk(d_in + offset, d_out + offset, in + offset, count));
}

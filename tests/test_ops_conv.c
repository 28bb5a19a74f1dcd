/* Tests of the autoencoder's CPU ops (model/ops_conv.h): conv2d, GroupNorm,
 * nearest 2x upsampling and the (channels, tokens) transpose.
 *
 * Gradients are checked two ways:
 * - against central finite differences of L = sum(r * out) (r random, the sum in
 *   double), for EVERY element of every input and parameter of the small shapes:
 *   dL/dx_i = (L(x_i + h) - L(x_i - h)) / ((x_i + h) - (x_i - h)), the denominator
 *   being the perturbation actually stored in float. Per element
 *   |num - ana| <= GRAD_TOL * max(1, |num|) and in aggregate
 *   ||num - ana|| <= AGG_TOL ||num||; each check also proves it can fail (the
 *   analytic gradient scaled by 1.01 or 0.99 must be rejected). conv2d, upsample
 *   and transpose are linear in each argument, so the finite difference is exact
 *   but for float rounding of the outputs, and h = 0.5 keeps that rounding (about
 *   1e-6 in L) far below the tolerance; GroupNorm is not, h = 1e-2 as for
 *   LayerNorm in test_ops.c (truncation error h^2/6 L''' ~ 1e-5).
 * - conv2d also against a direct double-precision backward (scatter of each
 *   output gradient through each kernel tap), on shapes large enough to span
 *   several pixel tiles and channel blocks, where finite differences over every
 *   element would be slow.
 * Forwards are checked against a naive 7-loop convolution in double, the GroupNorm
 * formula in double, and index arithmetic (upsample, transpose: exact).
 * Also: the accumulate/overwrite contract (d_in_beta, NULL gradients), scratch for
 * fewer threads than run, and bit-identical results with 1, 2 and 3 threads.
 *
 * `test_ops_conv --bench` instead times one 3x3 conv (8,128,32,32)->(8,128,32,32)
 * forward and backward and prints GFLOP/s (not part of the test). */
#include "conv_onednn.h"
#include "ops_conv.h"
#include "test_util.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <omp.h>

#define GRAD_TOL 1e-3
#define AGG_TOL 2e-3
#define H_LINEAR 0.5f
#define H_SMOOTH 1e-2f

static int verbose;

/* ---------------------------------------------------------------- RNG ---- */

static uint64_t rng_state = 0xc0417e57ull;

static uint64_t splitmix64(void) {
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double uniform(void) { return (double)(splitmix64() >> 11) * (1.0 / 9007199254740992.0); }

static double normal(void) {
    double u1 = uniform(), u2 = uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * 3.14159265358979323846 * u2);
}

static void fill_normal(float *x, size_t n, double mean, double sd) {
    for (size_t i = 0; i < n; i++) x[i] = (float)(mean + sd * normal());
}

static void fill_const(float *x, size_t n, float v) {
    for (size_t i = 0; i < n; i++) x[i] = v;
}

static float *falloc(size_t n) {
    float *p = malloc((n ? n : 1) * sizeof *p);
    if (!p) {
        fprintf(stderr, "test_ops_conv: out of memory\n");
        exit(1);
    }
    return p;
}

static double *dalloc(size_t n) {
    double *p = calloc(n ? n : 1, sizeof *p);
    if (!p) {
        fprintf(stderr, "test_ops_conv: out of memory\n");
        exit(1);
    }
    return p;
}

static float *fdup(const float *x, size_t n) {
    float *p = falloc(n);
    memcpy(p, x, n * sizeof *p);
    return p;
}

static double dot_fd(const float *a, const float *b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * (double)b[i];
    return s;
}

static void set_threads(int n) { omp_set_num_threads(n); }

/* ------------------------------------------------------ array checks ---- */

static void expect_close_arr(const char *label, const float *got, const double *want, size_t n, double atol,
                             double rtol) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        double g = got[i], w = want[i];
        if (!(fabs(g - w) <= atol + rtol * fabs(w))) {
            if (bad < 5) fprintf(stderr, "  %s[%zu]: got %.9g want %.9g\n", label, i, g, w);
            bad++;
        }
    }
    CHECK_MSG(bad == 0, "%s: %zu of %zu values off (atol %g, rtol %g)", label, bad, n, atol, rtol);
}

static void expect_identical(const char *label, const float *a, const float *b, size_t n) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof(float)) != 0) {
            if (bad < 5) fprintf(stderr, "  %s[%zu]: %.9g vs %.9g\n", label, i, a[i], b[i]);
            bad++;
        }
    CHECK_MSG(bad == 0, "%s: %zu of %zu values not bit-identical", label, bad, n);
}

/* ------------------------------------------------ gradient checking ---- */

typedef double (*loss_fn)(void *ctx);

static void numeric_grad(double *num, float *x, size_t n, float h, loss_fn f, void *ctx) {
    for (size_t i = 0; i < n; i++) {
        float x0 = x[i], xp = x0 + h, xm = x0 - h;
        x[i] = xp;
        double lp = f(ctx);
        x[i] = xm;
        double lm = f(ctx);
        x[i] = x0;
        num[i] = (lp - lm) / ((double)xp - (double)xm);
    }
}

/* Failed criteria (bad elements, plus 1 if the aggregate bound fails) comparing
 * num with scale * ana. */
static size_t compare_grad(const char *label, const double *num, const float *ana, size_t n, double scale,
                           int report, double *max_err) {
    size_t bad = 0;
    double enorm = 0.0, nnorm = 0.0, worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        double a = scale * (double)ana[i], err = fabs(num[i] - a);
        if (!(err <= GRAD_TOL * fmax(1.0, fabs(num[i])))) {
            if (report && bad < 8) fprintf(stderr, "  %s[%zu]: numeric %.9g analytic %.9g\n", label, i, num[i], a);
            bad++;
        }
        if (!(err <= worst)) worst = err;
        enorm += err * err;
        nnorm += num[i] * num[i];
    }
    if (!(sqrt(enorm) <= AGG_TOL * sqrt(nnorm) + 1e-12)) {
        if (report) fprintf(stderr, "  %s: ||num - ana|| = %.3g, ||num|| = %.3g\n", label, sqrt(enorm), sqrt(nnorm));
        bad++;
    }
    if (max_err) *max_err = worst;
    return bad;
}

static void check_grad(const char *label, float *x, size_t n, const float *ana, loss_fn f, void *ctx, float h) {
    double *num = dalloc(n);
    /* Thousands of tiny forwards: on one thread, as a parallel region per call costs
     * milliseconds on a loaded machine (results do not depend on the thread count,
     * which test_determinism checks; the analytic side ran on all threads). */
    const int max_threads = omp_get_max_threads();
    set_threads(1);
    numeric_grad(num, x, n, h, f, ctx);
    set_threads(max_threads);
    double max_err = 0.0, nnorm = 0.0;
    size_t bad = compare_grad(label, num, ana, n, 1.0, 1, &max_err);
    CHECK_MSG(bad == 0, "%s: gradient does not match finite differences (%zu bad, max err %.3g)", label, bad,
              max_err);
    for (size_t i = 0; i < n; i++) nnorm += num[i] * num[i];
    CHECK_MSG(nnorm > 0.0, "%s: numeric gradient is identically zero", label);
    CHECK_MSG(compare_grad(label, num, ana, n, 1.01, 0, NULL) > 0, "%s: a 1.01 error would not be detected", label);
    CHECK_MSG(compare_grad(label, num, ana, n, 0.99, 0, NULL) > 0, "%s: a 0.99 error would not be detected", label);
    if (verbose) printf("  %-44s n=%5zu max |num-ana| = %.3g\n", label, n, max_err);
    free(num);
}

/* ============================================================ conv2d ==== */

static size_t conv_in_count(const conv2d_dims *s) {
    return (size_t)s->batch * s->in_channels * s->height * s->width;
}
static size_t conv_out_count(const conv2d_dims *s) {
    return (size_t)s->batch * s->out_channels * conv2d_out_height(s) * conv2d_out_width(s);
}
static size_t conv_weight_count(const conv2d_dims *s) {
    return (size_t)s->out_channels * s->in_channels * s->kernel * s->kernel;
}

/* Calls f(b, co, oy, ox, ci, ky, kx, iy, ix) for every product of the
 * convolution whose input position lies inside the image: the definition of
 * Conv2d with zero padding, written out once for the references below. */
#define FOR_EACH_CONV_TAP(s, BODY)                                                                        \
    do {                                                                                                  \
        const int ho_ = conv2d_out_height(s), wo_ = conv2d_out_width(s);                                  \
        for (int b = 0; b < (s)->batch; b++)                                                              \
            for (int co = 0; co < (s)->out_channels; co++)                                                \
                for (int oy = 0; oy < ho_; oy++)                                                          \
                    for (int ox = 0; ox < wo_; ox++)                                                      \
                        for (int ci = 0; ci < (s)->in_channels; ci++)                                     \
                            for (int ky = 0; ky < (s)->kernel; ky++)                                      \
                                for (int kx = 0; kx < (s)->kernel; kx++) {                                \
                                    int iy = oy * (s)->stride - (s)->pad_top + ky;                        \
                                    int ix = ox * (s)->stride - (s)->pad_left + kx;                       \
                                    if (iy < 0 || iy >= (s)->height || ix < 0 || ix >= (s)->width)        \
                                        continue;                                                         \
                                    size_t o_ = (((size_t)b * (s)->out_channels + co) * ho_ + oy) * wo_ + \
                                                ox;                                                       \
                                    size_t i_ = (((size_t)b * (s)->in_channels + ci) * (s)->height + iy) * \
                                                    (s)->width +                                          \
                                                ix;                                                       \
                                    size_t w_ = (((size_t)co * (s)->in_channels + ci) * (s)->kernel + ky) * \
                                                    (s)->kernel +                                         \
                                                kx;                                                       \
                                    BODY;                                                                 \
                                }                                                                         \
    } while (0)

/* out (double) = the convolution, directly. */
static void conv_forward_ref(double *out, const float *in, const float *w, const float *bias, const conv2d_dims *s) {
    const size_t plane = (size_t)conv2d_out_height(s) * conv2d_out_width(s);
    for (size_t i = 0; i < conv_out_count(s); i++)
        out[i] = bias ? (double)bias[(i / plane) % (size_t)s->out_channels] : 0.0;
    FOR_EACH_CONV_TAP(s, out[o_] += (double)w[w_] * (double)in[i_]);
}

/* d_in, d_w, d_b (double) of L = sum(d_out * out), directly. */
static void conv_backward_ref(double *d_in, double *d_w, double *d_b, const float *d_out, const float *in,
                              const float *w, const conv2d_dims *s) {
    const size_t plane = (size_t)conv2d_out_height(s) * conv2d_out_width(s);
    memset(d_in, 0, conv_in_count(s) * sizeof *d_in);
    memset(d_w, 0, conv_weight_count(s) * sizeof *d_w);
    memset(d_b, 0, (size_t)s->out_channels * sizeof *d_b);
    for (size_t i = 0; i < conv_out_count(s); i++) d_b[(i / plane) % (size_t)s->out_channels] += d_out[i];
    FOR_EACH_CONV_TAP(s, {
        d_in[i_] += (double)w[w_] * (double)d_out[o_];
        d_w[w_] += (double)in[i_] * (double)d_out[o_];
    });
}

struct conv_ctx {
    const conv2d_dims *s;
    float *in, *w, *b, *out, *scratch;
    size_t scratch_floats;
    const float *r;
};

static double conv_loss(void *p) {
    struct conv_ctx *c = p;
    conv2d_forward(c->out, c->in, c->w, c->b, c->s, c->scratch, c->scratch_floats);
    return dot_fd(c->r, c->out, conv_out_count(c->s));
}

/* Forward vs the naive convolution, backward vs the direct double backward, vs
 * finite differences when fd is set, and the accumulate/overwrite contract. */
static void test_conv_shape(const char *name, conv2d_dims s, int with_bias, int fd) {
    char label[160];
    const size_t nin = conv_in_count(&s), nout = conv_out_count(&s), nw = conv_weight_count(&s);
    const size_t nb = (size_t)s.out_channels;
    const size_t scratch_floats = conv2d_scratch_floats(&s, omp_get_max_threads());
    float *in = falloc(nin), *w = falloc(nw), *b = with_bias ? falloc(nb) : NULL, *out = falloc(nout);
    float *r = falloc(nout), *scratch = scratch_floats ? falloc(scratch_floats) : NULL;
    fill_normal(in, nin, 0.2, 1.0);
    fill_normal(w, nw, 0.0, 1.0 / sqrt((double)s.in_channels * s.kernel * s.kernel));
    if (b) fill_normal(b, nb, 0.0, 0.5);
    fill_normal(r, nout, 0.0, 1.0);

    /* forward */
    double *want = dalloc(nout);
    conv_forward_ref(want, in, w, b, &s);
    fill_const(out, nout, NAN); /* every output must be written */
    conv2d_forward(out, in, w, b, &s, scratch, scratch_floats);
    snprintf(label, sizeof label, "%s forward", name);
    expect_close_arr(label, out, want, nout, 2e-5, 2e-5);

    /* backward vs the direct reference; d_weight and d_bias accumulate onto 0.25,
     * d_in (beta 0) overwrites a NaN */
    double *ref_in = dalloc(nin), *ref_w = dalloc(nw), *ref_b = dalloc(nb);
    conv_backward_ref(ref_in, ref_w, ref_b, r, in, w, &s);
    float *d_in = falloc(nin), *d_w = falloc(nw), *d_b = falloc(nb);
    fill_const(d_in, nin, NAN);
    fill_const(d_w, nw, 0.25f);
    fill_const(d_b, nb, 0.25f);
    conv2d_backward(d_in, 0.0f, d_w, with_bias ? d_b : NULL, r, in, w, &s, scratch, scratch_floats);
    double *shifted = dalloc(nw > nb ? nw : nb);
    snprintf(label, sizeof label, "%s d_in vs direct", name);
    expect_close_arr(label, d_in, ref_in, nin, 2e-5, 2e-5);
    for (size_t i = 0; i < nw; i++) shifted[i] = ref_w[i] + 0.25;
    snprintf(label, sizeof label, "%s d_weight (accumulated) vs direct", name);
    expect_close_arr(label, d_w, shifted, nw, 1e-4, 2e-5);
    if (with_bias) {
        for (size_t i = 0; i < nb; i++) shifted[i] = ref_b[i] + 0.25;
        snprintf(label, sizeof label, "%s d_bias (accumulated) vs direct", name);
        expect_close_arr(label, d_b, shifted, nb, 1e-4, 2e-5);
    }

    /* d_in_beta = 1 adds onto what is there; 0.5 scales it */
    float *d_in_sum = falloc(nin);
    fill_const(d_in_sum, nin, 1.5f);
    conv2d_backward(d_in_sum, 1.0f, NULL, NULL, r, in, w, &s, scratch, scratch_floats);
    for (size_t i = 0; i < nin; i++) ref_in[i] += 1.5;
    snprintf(label, sizeof label, "%s d_in with d_in_beta 1", name);
    expect_close_arr(label, d_in_sum, ref_in, nin, 2e-5, 2e-5);
    fill_const(d_in_sum, nin, 3.0f);
    conv2d_backward(d_in_sum, 0.5f, NULL, NULL, r, in, w, &s, scratch, scratch_floats);
    snprintf(label, sizeof label, "%s d_in with d_in_beta 0.5", name);
    expect_close_arr(label, d_in_sum, ref_in, nin, 2e-5, 2e-5); /* 0.5 * 3 = 1.5 again */

    /* only d_weight: the others NULL, d_weight the same bits as before */
    float *d_w_only = falloc(nw);
    fill_const(d_w_only, nw, 0.25f);
    conv2d_backward(NULL, 0.0f, d_w_only, NULL, r, in, w, &s, scratch, scratch_floats);
    snprintf(label, sizeof label, "%s d_weight alone", name);
    expect_identical(label, d_w_only, d_w, nw);

    if (fd) {
        /* fresh gradients (zero start) against finite differences */
        fill_const(d_w, nw, 0.0f);
        fill_const(d_b, nb, 0.0f);
        conv2d_backward(d_in, 0.0f, d_w, with_bias ? d_b : NULL, r, in, w, &s, scratch, scratch_floats);
        struct conv_ctx ctx = {&s, in, w, b, out, scratch, scratch_floats, r};
        snprintf(label, sizeof label, "%s d_in vs finite differences", name);
        check_grad(label, in, nin, d_in, conv_loss, &ctx, H_LINEAR);
        snprintf(label, sizeof label, "%s d_weight vs finite differences", name);
        check_grad(label, w, nw, d_w, conv_loss, &ctx, H_LINEAR);
        if (with_bias) {
            snprintf(label, sizeof label, "%s d_bias vs finite differences", name);
            check_grad(label, b, nb, d_b, conv_loss, &ctx, H_LINEAR);
        }
    }
    free(in), free(w), free(b), free(out), free(r), free(scratch), free(want);
    free(ref_in), free(ref_w), free(ref_b), free(d_in), free(d_w), free(d_b), free(shifted);
    free(d_in_sum), free(d_w_only);
}

static conv2d_dims downsample_shape(int batch, int in_channels, int out_channels, int height, int width) {
    conv2d_dims s = conv2d_shape(batch, in_channels, out_channels, height, width, 3, 2, 0);
    s.pad_bottom = s.pad_right = 1; /* diffusers Downsample2D: F.pad(x, (0, 1, 0, 1)) */
    return s;
}

static void test_conv2d(void) {
    /* small shapes: finite differences over every element */
    test_conv_shape("conv 3x3 s1 p1 b1 3->4 5x7", conv2d_shape(1, 3, 4, 5, 7, 3, 1, 1), 1, 1);
    test_conv_shape("conv 3x3 s1 p1 b3 4->2 6x5 no bias", conv2d_shape(3, 4, 2, 6, 5, 3, 1, 1), 0, 1);
    test_conv_shape("conv downsample b3 4->4 6x5", downsample_shape(3, 4, 4, 6, 5), 1, 1);
    test_conv_shape("conv downsample b1 2->3 7x8", downsample_shape(1, 2, 3, 7, 8), 1, 1);
    test_conv_shape("conv 1x1 b3 5->3 4x3", conv2d_shape(3, 5, 3, 4, 3, 1, 1, 0), 1, 1);
    test_conv_shape("conv 1x1 b1 3->6 5x7", conv2d_shape(1, 3, 6, 5, 7, 1, 1, 0), 1, 1);
    test_conv_shape("conv 3x3 s2 p1 b2 3->2 9x8", conv2d_shape(2, 3, 2, 9, 8, 3, 2, 1), 1, 1);
    test_conv_shape("conv 1x1 s2 b2 3->2 5x5 (im2col path)", conv2d_shape(2, 3, 2, 5, 5, 1, 2, 0), 1, 1);
    test_conv_shape("conv 3x3 s1 p0 b2 2->3 5x6", conv2d_shape(2, 2, 3, 5, 6, 3, 1, 0), 1, 1);
    {
        conv2d_dims s = conv2d_shape(2, 2, 2, 6, 7, 3, 1, 0); /* lopsided padding on every side */
        s.pad_top = 2, s.pad_bottom = 0, s.pad_left = 1, s.pad_right = 2;
        test_conv_shape("conv 3x3 pad (2,0,1,2) b2 2->2 6x7", s, 1, 1);
    }
    /* several pixel tiles (> 256 output pixels) and channel blocks (> 8 channels of
     * 3x3, > 72 of 1x1): against the direct backward */
    test_conv_shape("conv 3x3 s1 p1 b2 10->3 17x19", conv2d_shape(2, 10, 3, 17, 19, 3, 1, 1), 1, 0);
    test_conv_shape("conv downsample b2 9->4 34x33", downsample_shape(2, 9, 4, 34, 33), 1, 0);
    test_conv_shape("conv 1x1 b2 80->5 17x19", conv2d_shape(2, 80, 5, 17, 19, 1, 1, 0), 1, 0);
    test_conv_shape("conv 3x3 s1 p1 b3 16->16 16x16", conv2d_shape(3, 16, 16, 16, 16, 3, 1, 1), 1, 0);

    /* output sizes */
    conv2d_dims d = downsample_shape(1, 1, 1, 32, 32);
    CHECK(conv2d_out_height(&d) == 16 && conv2d_out_width(&d) == 16);
    conv2d_dims same = conv2d_shape(1, 1, 1, 7, 9, 3, 1, 1);
    CHECK(conv2d_out_height(&same) == 7 && conv2d_out_width(&same) == 9);
    CHECK(conv2d_scratch_floats(&(conv2d_dims){1, 8, 8, 4, 4, 1, 1, 0, 0, 0, 0}, 4) == 0);
    CHECK(conv2d_scratch_floats(&same, 2) == 2 * conv2d_scratch_floats(&same, 1));
    CHECK(conv2d_scratch_floats(&same, 1) >= (size_t)9 * 7 * 9);
}

/* Scratch for one thread while several run: the same bits as with full scratch. */
static void test_conv_small_scratch(void) {
    conv2d_dims s = conv2d_shape(3, 10, 6, 17, 19, 3, 1, 1);
    const size_t nin = conv_in_count(&s), nout = conv_out_count(&s), nw = conv_weight_count(&s);
    float *in = falloc(nin), *w = falloc(nw), *r = falloc(nout);
    fill_normal(in, nin, 0.0, 1.0);
    fill_normal(w, nw, 0.0, 0.1);
    fill_normal(r, nout, 0.0, 1.0);
    const int max_threads = omp_get_max_threads();
    set_threads(3);
    size_t full = conv2d_scratch_floats(&s, 3), one = conv2d_scratch_floats(&s, 1);
    float *scratch = falloc(full);
    float *out[2], *d_in[2], *d_w[2];
    for (int k = 0; k < 2; k++) {
        size_t given = k == 0 ? full : one;
        out[k] = falloc(nout), d_in[k] = falloc(nin), d_w[k] = falloc(nw);
        fill_const(d_w[k], nw, 0.0f);
        conv2d_forward(out[k], in, w, NULL, &s, scratch, given);
        conv2d_backward(d_in[k], 0.0f, d_w[k], NULL, r, in, w, &s, scratch, given);
    }
    expect_identical("conv forward, scratch for 1 of 3 threads", out[1], out[0], nout);
    expect_identical("conv d_in, scratch for 1 of 3 threads", d_in[1], d_in[0], nin);
    expect_identical("conv d_weight, scratch for 1 of 3 threads", d_w[1], d_w[0], nw);
    for (int k = 0; k < 2; k++) free(out[k]), free(d_in[k]), free(d_w[k]);
    free(in), free(w), free(r), free(scratch);
    set_threads(max_threads);
}

/* ========================================================= GroupNorm ==== */

struct gn_ctx {
    float *in, *gamma, *beta, *out, *mean, *rstd;
    const float *r;
    int batch, channels, spatial, groups;
    float eps;
};

static double gn_loss(void *p) {
    struct gn_ctx *c = p;
    groupnorm_forward(c->out, c->mean, c->rstd, c->in, c->gamma, c->beta, c->batch, c->channels, c->spatial,
                      c->groups, c->eps);
    return dot_fd(c->r, c->out, (size_t)c->batch * c->channels * c->spatial);
}

static void test_groupnorm_shape(int batch, int channels, int spatial, int groups) {
    char name[96], label[160];
    snprintf(name, sizeof name, "groupnorm b%d c%d s%d g%d", batch, channels, spatial, groups);
    const float eps = 1e-6f;
    const size_t n = (size_t)batch * channels * spatial, nstat = (size_t)batch * groups;
    float *in = falloc(n), *gamma = falloc(channels), *beta = falloc(channels), *out = falloc(n);
    float *mean = falloc(nstat), *rstd = falloc(nstat), *r = falloc(n);
    /* a mean far from 0 and a different scale per channel, so a wrong grouping shows */
    for (int b = 0; b < batch; b++)
        for (int c = 0; c < channels; c++)
            fill_normal(in + ((size_t)b * channels + c) * spatial, spatial, 3.0 + 0.5 * c, 1.0 + 0.25 * c);
    fill_normal(gamma, channels, 1.0, 0.3);
    fill_normal(beta, channels, 0.0, 0.5);
    fill_normal(r, n, 0.0, 1.0);

    /* forward vs the formula in double */
    const int per_group = channels / groups;
    double *want = dalloc(n), *want_mean = dalloc(nstat), *want_rstd = dalloc(nstat);
    for (int b = 0; b < batch; b++)
        for (int g = 0; g < groups; g++) {
            const float *x = in + ((size_t)b * channels + (size_t)g * per_group) * spatial;
            size_t m = (size_t)per_group * spatial;
            double mu = 0.0, var = 0.0;
            for (size_t i = 0; i < m; i++) mu += x[i];
            mu /= (double)m;
            for (size_t i = 0; i < m; i++) var += (x[i] - mu) * (x[i] - mu);
            var /= (double)m;
            want_mean[b * groups + g] = mu;
            want_rstd[b * groups + g] = 1.0 / sqrt(var + eps);
            for (int c = 0; c < per_group; c++) {
                int channel = g * per_group + c;
                for (int i = 0; i < spatial; i++) {
                    size_t at = ((size_t)b * channels + channel) * spatial + i;
                    want[at] = (in[at] - mu) / sqrt(var + eps) * gamma[channel] + beta[channel];
                }
            }
        }
    groupnorm_forward(out, mean, rstd, in, gamma, beta, batch, channels, spatial, groups, eps);
    snprintf(label, sizeof label, "%s forward", name);
    expect_close_arr(label, out, want, n, 2e-5, 2e-5);
    snprintf(label, sizeof label, "%s mean", name);
    expect_close_arr(label, mean, want_mean, nstat, 1e-6, 1e-6);
    snprintf(label, sizeof label, "%s rstd", name);
    expect_close_arr(label, rstd, want_rstd, nstat, 1e-6, 1e-5);

    /* backward vs finite differences, from a NaN d_in (beta 0 overwrites) and zero
     * parameter gradients */
    float *d_in = falloc(n), *d_gamma = falloc(channels), *d_beta = falloc(channels);
    fill_const(d_in, n, NAN);
    fill_const(d_gamma, channels, 0.0f);
    fill_const(d_beta, channels, 0.0f);
    groupnorm_backward(d_in, 0.0f, d_gamma, d_beta, r, in, mean, rstd, gamma, batch, channels, spatial, groups);
    struct gn_ctx ctx = {in, gamma, beta, out, mean, rstd, r, batch, channels, spatial, groups, eps};
    snprintf(label, sizeof label, "%s d_in vs finite differences", name);
    check_grad(label, in, n, d_in, gn_loss, &ctx, H_SMOOTH);
    snprintf(label, sizeof label, "%s d_gamma vs finite differences", name);
    check_grad(label, gamma, (size_t)channels, d_gamma, gn_loss, &ctx, H_SMOOTH);
    snprintf(label, sizeof label, "%s d_beta vs finite differences", name);
    check_grad(label, beta, (size_t)channels, d_beta, gn_loss, &ctx, H_SMOOTH);

    /* accumulation: d_gamma, d_beta add; d_in_beta 1 adds; NULLs are skipped */
    gn_loss(&ctx); /* mean, rstd of the unperturbed input again */
    float *d_in2 = falloc(n), *d_gamma2 = fdup(d_gamma, channels), *d_beta2 = fdup(d_beta, channels);
    fill_const(d_in2, n, 2.0f);
    groupnorm_backward(d_in2, 1.0f, d_gamma2, d_beta2, r, in, mean, rstd, gamma, batch, channels, spatial, groups);
    double *twice = dalloc(n);
    for (int c = 0; c < channels; c++) twice[c] = 2.0 * d_gamma[c];
    snprintf(label, sizeof label, "%s d_gamma accumulates", name);
    expect_close_arr(label, d_gamma2, twice, (size_t)channels, 1e-6, 1e-6);
    for (int c = 0; c < channels; c++) twice[c] = 2.0 * d_beta[c];
    snprintf(label, sizeof label, "%s d_beta accumulates", name);
    expect_close_arr(label, d_beta2, twice, (size_t)channels, 1e-6, 1e-6);
    for (size_t i = 0; i < n; i++) twice[i] = 2.0 + d_in[i];
    snprintf(label, sizeof label, "%s d_in with d_in_beta 1", name);
    expect_close_arr(label, d_in2, twice, n, 1e-6, 1e-6);
    float *d_in3 = falloc(n);
    groupnorm_backward(d_in3, 0.0f, NULL, NULL, r, in, mean, rstd, gamma, batch, channels, spatial, groups);
    snprintf(label, sizeof label, "%s d_in alone", name);
    expect_identical(label, d_in3, d_in, n);

    free(in), free(gamma), free(beta), free(out), free(mean), free(rstd), free(r), free(want);
    free(want_mean), free(want_rstd), free(d_in), free(d_gamma), free(d_beta), free(d_in2), free(d_gamma2);
    free(d_beta2), free(twice), free(d_in3);
}

static void test_groupnorm(void) {
    test_groupnorm_shape(1, 4, 35, 4); /* groups = channels */
    test_groupnorm_shape(3, 6, 12, 1); /* one group */
    test_groupnorm_shape(3, 8, 20, 4); /* 2 channels per group */
    test_groupnorm_shape(2, 6, 15, 3);
    test_groupnorm_shape(2, 66, 5, 1); /* more channels per group than the fused backward takes */
}

/* ========================================================== upsample ==== */

struct up_ctx {
    float *in, *out;
    const float *r;
    int batch, channels, height, width;
};

static double up_loss(void *p) {
    struct up_ctx *c = p;
    upsample_nearest2x_forward(c->out, c->in, c->batch, c->channels, c->height, c->width);
    return dot_fd(c->r, c->out, (size_t)c->batch * c->channels * 4 * c->height * c->width);
}

static void test_upsample(void) {
    const int batch = 2, channels = 3, height = 3, width = 5;
    const size_t nin = (size_t)batch * channels * height * width, nout = 4 * nin;
    float *in = falloc(nin), *out = falloc(nout), *r = falloc(nout), *d_in = falloc(nin);
    fill_normal(in, nin, 0.0, 1.0);
    fill_normal(r, nout, 0.0, 1.0);
    fill_const(out, nout, NAN);
    upsample_nearest2x_forward(out, in, batch, channels, height, width);
    size_t bad = 0;
    for (int p = 0; p < batch * channels; p++)
        for (int y = 0; y < 2 * height; y++)
            for (int x = 0; x < 2 * width; x++) {
                float got = out[((size_t)p * 2 * height + y) * 2 * width + x];
                float want = in[((size_t)p * height + y / 2) * width + x / 2];
                if (memcmp(&got, &want, sizeof got) != 0) bad++;
            }
    CHECK_MSG(bad == 0, "upsample forward: %zu values not from in[y/2, x/2]", bad);

    fill_const(d_in, nin, NAN);
    upsample_nearest2x_backward(d_in, r, batch, channels, height, width);
    double *want = dalloc(nin);
    for (int p = 0; p < batch * channels; p++)
        for (int y = 0; y < 2 * height; y++)
            for (int x = 0; x < 2 * width; x++)
                want[((size_t)p * height + y / 2) * width + x / 2] += r[((size_t)p * 2 * height + y) * 2 * width + x];
    expect_close_arr("upsample backward vs block sums", d_in, want, nin, 1e-6, 1e-6);
    struct up_ctx ctx = {in, out, r, batch, channels, height, width};
    check_grad("upsample d_in vs finite differences", in, nin, d_in, up_loss, &ctx, H_LINEAR);
    free(in), free(out), free(r), free(d_in), free(want);
}

/* ========================================================= transpose ==== */

static void test_transpose(void) {
    const int batch = 3, channels = 37, tokens = 45; /* not multiples of the 32-block */
    const size_t n = (size_t)batch * channels * tokens;
    float *in = falloc(n), *out = falloc(n), *back = falloc(n);
    fill_normal(in, n, 0.0, 1.0);
    fill_const(out, n, NAN);
    transpose_channels_tokens_forward(out, in, batch, channels, tokens);
    size_t bad = 0;
    for (int b = 0; b < batch; b++)
        for (int c = 0; c < channels; c++)
            for (int t = 0; t < tokens; t++) {
                float got = out[((size_t)b * tokens + t) * channels + c];
                float want = in[((size_t)b * channels + c) * tokens + t];
                if (memcmp(&got, &want, sizeof got) != 0) bad++;
            }
    CHECK_MSG(bad == 0, "transpose forward: %zu values misplaced", bad);
    /* backward is the inverse map (and the adjoint of a permutation) */
    fill_const(back, n, NAN);
    transpose_channels_tokens_backward(back, out, batch, channels, tokens);
    expect_identical("transpose backward undoes forward", back, in, n);
    free(in), free(out), free(back);
}

/* ======================================================= determinism ==== */

/* conv2d and GroupNorm give the same bits with 1, 2 and 3 threads. */
static void test_determinism(void) {
    const int max_threads = omp_get_max_threads();
    const int counts[3] = {1, 2, 3};
    /* a conv with several tiles and channel blocks per sample */
    conv2d_dims shapes[3] = {conv2d_shape(3, 20, 12, 18, 17, 3, 1, 1), downsample_shape(3, 10, 6, 34, 32),
                             conv2d_shape(3, 80, 12, 18, 17, 1, 1, 0)};
    for (int sh = 0; sh < 3; sh++) {
        const conv2d_dims *s = &shapes[sh];
        const size_t nin = conv_in_count(s), nout = conv_out_count(s), nw = conv_weight_count(s);
        const size_t nb = (size_t)s->out_channels, scratch_floats = conv2d_scratch_floats(s, 3);
        float *in = falloc(nin), *w = falloc(nw), *bias = falloc(nb), *r = falloc(nout);
        float *scratch = scratch_floats ? falloc(scratch_floats) : NULL;
        fill_normal(in, nin, 0.0, 1.0);
        fill_normal(w, nw, 0.0, 0.1);
        fill_normal(bias, nb, 0.0, 0.1);
        fill_normal(r, nout, 0.0, 1.0);
        float *out[3], *d_in[3], *d_w[3], *d_b[3];
        for (int k = 0; k < 3; k++) {
            set_threads(counts[k]);
            out[k] = falloc(nout), d_in[k] = falloc(nin), d_w[k] = falloc(nw), d_b[k] = falloc(nb);
            fill_const(d_w[k], nw, 0.125f);
            fill_const(d_b[k], nb, 0.125f);
            conv2d_forward(out[k], in, w, bias, s, scratch, scratch_floats);
            conv2d_backward(d_in[k], 0.0f, d_w[k], d_b[k], r, in, w, s, scratch, scratch_floats);
        }
        for (int k = 1; k < 3; k++) {
            char label[96];
            snprintf(label, sizeof label, "conv shape %d forward, %d vs 1 threads", sh, counts[k]);
            expect_identical(label, out[k], out[0], nout);
            snprintf(label, sizeof label, "conv shape %d d_in, %d vs 1 threads", sh, counts[k]);
            expect_identical(label, d_in[k], d_in[0], nin);
            snprintf(label, sizeof label, "conv shape %d d_weight, %d vs 1 threads", sh, counts[k]);
            expect_identical(label, d_w[k], d_w[0], nw);
            snprintf(label, sizeof label, "conv shape %d d_bias, %d vs 1 threads", sh, counts[k]);
            expect_identical(label, d_b[k], d_b[0], nb);
        }
        for (int k = 0; k < 3; k++) free(out[k]), free(d_in[k]), free(d_w[k]), free(d_b[k]);
        free(in), free(w), free(bias), free(r), free(scratch);
    }
    {
        const int batch = 5, channels = 16, spatial = 200, groups = 8;
        const size_t n = (size_t)batch * channels * spatial, nstat = (size_t)batch * groups;
        float *in = falloc(n), *gamma = falloc(channels), *beta = falloc(channels), *r = falloc(n);
        fill_normal(in, n, 1.0, 2.0);
        fill_normal(gamma, channels, 1.0, 0.2);
        fill_normal(beta, channels, 0.0, 0.2);
        fill_normal(r, n, 0.0, 1.0);
        float *out[3], *mean[3], *rstd[3], *d_in[3], *d_gamma[3], *d_beta[3];
        for (int k = 0; k < 3; k++) {
            set_threads(counts[k]);
            out[k] = falloc(n), mean[k] = falloc(nstat), rstd[k] = falloc(nstat), d_in[k] = falloc(n);
            d_gamma[k] = falloc(channels), d_beta[k] = falloc(channels);
            fill_const(d_gamma[k], channels, 0.5f);
            fill_const(d_beta[k], channels, 0.5f);
            groupnorm_forward(out[k], mean[k], rstd[k], in, gamma, beta, batch, channels, spatial, groups, 1e-6f);
            groupnorm_backward(d_in[k], 0.0f, d_gamma[k], d_beta[k], r, in, mean[k], rstd[k], gamma, batch,
                               channels, spatial, groups);
        }
        for (int k = 1; k < 3; k++) {
            expect_identical("groupnorm forward across threads", out[k], out[0], n);
            expect_identical("groupnorm d_in across threads", d_in[k], d_in[0], n);
            expect_identical("groupnorm d_gamma across threads", d_gamma[k], d_gamma[0], channels);
            expect_identical("groupnorm d_beta across threads", d_beta[k], d_beta[0], channels);
        }
        for (int k = 0; k < 3; k++)
            free(out[k]), free(mean[k]), free(rstd[k]), free(d_in[k]), free(d_gamma[k]), free(d_beta[k]);
        free(in), free(gamma), free(beta), free(r);
    }
    set_threads(max_threads);
}

/* ============================================== the oneDNN convolution ==== */

/* max |a - b| over n values, relative to max(1e-30, max |b|) */
static double max_rel_diff(const float *a, const float *b, size_t n) {
    double d = 0, m = 1e-30;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - (double)b[i]);
        if (!(e <= d)) d = e; /* NaN wins */
        if (fabs((double)b[i]) > m) m = fabs((double)b[i]);
    }
    return d / m;
}

static void round_bf16(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
        memcpy(&x[i], &u, 4);
    }
}

/* One shape: conv_onednn (fp32, and bf16 when bf16) against the own conv2d and the
 * double reference, all three passes, d_in overwritten and accumulated, the weight
 * and bias gradients accumulated onto values already there; and bit-identical
 * with 1 and 2 threads and with the primitives made again under 1 thread. In bf16
 * the comparison is with the own conv2d and the reference on the bf16-rounded
 * operands (products of bf16 values are exact in fp32: only the order of the fp32
 * sums differs) and loosely with the fp32 reference on the unrounded ones. */
static void test_onednn_shape(const char *name, conv2d_dims s, int bf16) {
    const size_t nin = conv_in_count(&s), nout = conv_out_count(&s), nw = conv_weight_count(&s);
    const size_t nb = (size_t)s.out_channels, scratch_floats = conv2d_scratch_floats(&s, omp_get_max_threads());
    float *in = falloc(nin), *w = falloc(nw), *bias = falloc(nb), *d_out = falloc(nout);
    float *scratch = scratch_floats ? falloc(scratch_floats) : NULL;
    fill_normal(in, nin, 0.0, 1.0);
    fill_normal(w, nw, 0.0, 0.2);
    fill_normal(bias, nb, 0.0, 0.1);
    fill_normal(d_out, nout, 0.0, 1.0);
    /* the operands as the own path and the references see them */
    float *rin = fdup(in, nin), *rw = fdup(w, nw), *rd_out = fdup(d_out, nout);
    if (bf16) round_bf16(rin, nin), round_bf16(rw, nw), round_bf16(rd_out, nout);
    double *ref_out = dalloc(nout), *ref_d_in = dalloc(nin), *ref_d_w = dalloc(nw), *ref_d_b = dalloc(nb);
    conv_forward_ref(ref_out, rin, rw, bias, &s);
    conv_backward_ref(ref_d_in, ref_d_w, ref_d_b, rd_out, rin, rw, &s);
    /* own path, on the operands as rounded */
    float *own_out = falloc(nout), *own_d_in = falloc(nin), *own_d_w = falloc(nw), *own_d_b = falloc(nb);
    fill_const(own_d_w, nw, 0.25f);
    fill_const(own_d_b, nb, 0.25f);
    conv2d_forward(own_out, rin, rw, bias, &s, scratch, scratch_floats);
    conv2d_backward(own_d_in, 0.0f, own_d_w, own_d_b, rd_out, rin, rw, &s, scratch, scratch_floats);

    float *out = falloc(nout), *d_in = falloc(nin), *d_in_acc = falloc(nin), *d_w = falloc(nw), *d_b = falloc(nb);
    fill_const(d_in, nin, 1e30f); /* overwritten whatever was there */
    fill_const(d_in_acc, nin, 0.5f);
    fill_const(d_w, nw, 0.25f);
    fill_const(d_b, nb, 0.25f);
    conv_onednn_forward(out, in, w, bias, &s, bf16);
    conv_onednn_backward(d_in, 0.0f, d_w, d_b, d_out, in, w, &s, bf16);
    conv_onednn_backward(d_in_acc, 1.0f, NULL, NULL, d_out, in, w, &s, bf16);
    char label[200];
    const double tol = 2e-6; /* fp32 sums of at most a few thousand terms, relative to the largest value */
    snprintf(label, sizeof label, "onednn %s %s forward vs own", bf16 ? "bf16" : "fp32", name);
    CHECK_MSG(max_rel_diff(out, own_out, nout) <= tol, "%s: %.3g", label, max_rel_diff(out, own_out, nout));
    snprintf(label, sizeof label, "onednn %s %s forward vs reference", bf16 ? "bf16" : "fp32", name);
    expect_close_arr(label, out, ref_out, nout, 1e-5, 1e-5);
    snprintf(label, sizeof label, "onednn %s %s d_in vs own", bf16 ? "bf16" : "fp32", name);
    CHECK_MSG(max_rel_diff(d_in, own_d_in, nin) <= tol, "%s: %.3g", label, max_rel_diff(d_in, own_d_in, nin));
    snprintf(label, sizeof label, "onednn %s %s d_in vs reference", bf16 ? "bf16" : "fp32", name);
    expect_close_arr(label, d_in, ref_d_in, nin, 1e-5, 1e-5);
    for (size_t i = 0; i < nin; i++) ref_d_in[i] += 0.5;
    snprintf(label, sizeof label, "onednn %s %s d_in accumulated vs reference", bf16 ? "bf16" : "fp32", name);
    expect_close_arr(label, d_in_acc, ref_d_in, nin, 1e-5, 1e-5);
    snprintf(label, sizeof label, "onednn %s %s d_weight vs own", bf16 ? "bf16" : "fp32", name);
    CHECK_MSG(max_rel_diff(d_w, own_d_w, nw) <= tol, "%s: %.3g", label, max_rel_diff(d_w, own_d_w, nw));
    for (size_t i = 0; i < nw; i++) ref_d_w[i] += 0.25;
    snprintf(label, sizeof label, "onednn %s %s d_weight vs reference", bf16 ? "bf16" : "fp32", name);
    expect_close_arr(label, d_w, ref_d_w, nw, 1e-4, 1e-5);
    /* the bias gradient: sums in double of d_out as given (not rounded) */
    {
        double *bias_ref = dalloc(nb);
        const size_t plane = (size_t)conv2d_out_height(&s) * conv2d_out_width(&s);
        for (size_t c = 0; c < nb; c++) bias_ref[c] = 0.25;
        for (size_t i = 0; i < nout; i++) bias_ref[(i / plane) % nb] += d_out[i];
        snprintf(label, sizeof label, "onednn %s %s d_bias vs reference", bf16 ? "bf16" : "fp32", name);
        expect_close_arr(label, d_b, bias_ref, nb, 1e-5, 1e-6);
        free(bias_ref);
    }
    if (bf16) {
        /* loosely against fp32 on the unrounded operands: bf16 keeps 8 bits */
        double *f_out = dalloc(nout), *f_d_in = dalloc(nin), *f_d_w = dalloc(nw), *f_d_b = dalloc(nb);
        conv_forward_ref(f_out, in, w, bias, &s);
        conv_backward_ref(f_d_in, f_d_w, f_d_b, d_out, in, w, &s);
        for (size_t i = 0; i < nw; i++) f_d_w[i] += 0.25;
        double scale = 0;
        for (size_t i = 0; i < nout; i++) scale = fmax(scale, fabs(f_out[i]));
        snprintf(label, sizeof label, "onednn bf16 %s forward vs fp32", name);
        expect_close_arr(label, out, f_out, nout, 2e-2 * scale, 2e-2);
        scale = 0;
        for (size_t i = 0; i < nin; i++) scale = fmax(scale, fabs(f_d_in[i]));
        snprintf(label, sizeof label, "onednn bf16 %s d_in vs fp32", name);
        expect_close_arr(label, d_in, f_d_in, nin, 2e-2 * scale, 2e-2);
        scale = 0;
        for (size_t i = 0; i < nw; i++) scale = fmax(scale, fabs(f_d_w[i]));
        snprintf(label, sizeof label, "onednn bf16 %s d_weight vs fp32", name);
        expect_close_arr(label, d_w, f_d_w, nw, 2e-2 * scale, 2e-2);
        free(f_out), free(f_d_in), free(f_d_w), free(f_d_b);
    }

    /* threads: 1 and 2 on the same primitives, then primitives made again under 1 thread */
    const int max_threads = omp_get_max_threads();
    float *t_out = falloc(nout), *t_d_in = falloc(nin), *t_d_w = falloc(nw), *t_d_b = falloc(nb);
    for (int k = 0; k < 3; k++) {
        if (k == 2) conv_onednn_release_all();
        set_threads(k == 0 ? 2 : 1);
        fill_const(t_d_w, nw, 0.25f);
        fill_const(t_d_b, nb, 0.25f);
        conv_onednn_forward(t_out, in, w, bias, &s, bf16);
        conv_onednn_backward(t_d_in, 0.0f, t_d_w, t_d_b, d_out, in, w, &s, bf16);
        snprintf(label, sizeof label, "onednn %s %s, %s", bf16 ? "bf16" : "fp32", name,
                 k == 0 ? "2 threads" : k == 1 ? "1 thread" : "made again under 1 thread");
        expect_identical(label, t_out, out, nout);
        expect_identical(label, t_d_in, d_in, nin);
        expect_identical(label, t_d_w, d_w, nw);
        expect_identical(label, t_d_b, d_b, nb);
    }
    set_threads(max_threads);
    conv_onednn_release_all();
    conv_onednn_plan(&s, bf16);

    /* each sample's forward and d_in do not depend on the rest of the batch */
    if (s.batch > 1) {
        conv2d_dims one = s;
        one.batch = 1;
        const size_t in1 = nin / s.batch, out1 = nout / s.batch;
        float *o1 = falloc(out1), *d1 = falloc(in1);
        conv_onednn_forward(o1, in + in1 * (s.batch - 1), w, bias, &one, bf16);
        conv_onednn_backward(d1, 0.0f, NULL, NULL, d_out + out1 * (s.batch - 1), in, w, &one, bf16);
        snprintf(label, sizeof label, "onednn %s %s last sample alone", bf16 ? "bf16" : "fp32", name);
        expect_identical(label, o1, out + out1 * (s.batch - 1), out1);
        expect_identical(label, d1, d_in + in1 * (s.batch - 1), in1);
        free(o1), free(d1);
    }

    /* planned once: calls make nothing more */
    const long plans = conv_onednn_plans_made();
    conv_onednn_forward(out, in, w, bias, &s, bf16);
    conv_onednn_backward(d_in, 0.0f, d_w, d_b, d_out, in, w, &s, bf16);
    snprintf(label, sizeof label, "onednn %s %s: a planned shape makes nothing", bf16 ? "bf16" : "fp32", name);
    CHECK_MSG(conv_onednn_plans_made() == plans, "%s (%ld plans, then %ld)", label, plans, conv_onednn_plans_made());
    if (verbose) printf("  onednn %s %-28s %s\n", bf16 ? "bf16" : "fp32", name, conv_onednn_describe(&s, bf16));

    free(in), free(w), free(bias), free(d_out), free(scratch), free(rin), free(rw), free(rd_out);
    free(ref_out), free(ref_d_in), free(ref_d_w), free(ref_d_b);
    free(own_out), free(own_d_in), free(own_d_w), free(own_d_b);
    free(out), free(d_in), free(d_in_acc), free(d_w), free(d_b);
    free(t_out), free(t_d_in), free(t_d_w), free(t_d_b);
}

static void test_onednn(void) {
    if (!conv_onednn_built()) {
        printf("test_ops_conv: this build has no oneDNN: the oneDNN convolution is not tested\n");
        return;
    }
    struct {
        const char *name;
        conv2d_dims s;
    } shapes[] = {
        {"3x3 (3,16,32,12,12)", conv2d_shape(3, 16, 32, 12, 12, 3, 1, 1)},
        {"3x3 (2,8,12,9,7) odd widths", conv2d_shape(2, 8, 12, 9, 7, 3, 1, 1)},
        {"conv_in 3x3 (2,1,32,16,16)", conv2d_shape(2, 1, 32, 16, 16, 3, 1, 1)},
        {"conv_out 3x3 (2,32,1,16,16)", conv2d_shape(2, 32, 1, 16, 16, 3, 1, 1)},
        {"down 3x3 s2 pad 0,1 (3,16,16,16,16)", downsample_shape(3, 16, 16, 16, 16)},
        {"1x1 (3,32,16,8,8)", conv2d_shape(3, 32, 16, 8, 8, 1, 1, 0)},
        {"1x1 (2,8,8,4,4)", conv2d_shape(2, 8, 8, 4, 4, 1, 1, 0)},
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (int bf16 = 0; bf16 < 2; bf16++) test_onednn_shape(shapes[i].name, shapes[i].s, bf16);
}

/* ========================================================= benchmark ==== */

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int bench(void) {
    conv2d_dims s = conv2d_shape(8, 128, 128, 32, 32, 3, 1, 1);
    const size_t nin = conv_in_count(&s), nout = conv_out_count(&s), nw = conv_weight_count(&s);
    const size_t scratch_floats = conv2d_scratch_floats(&s, omp_get_max_threads());
    float *in = falloc(nin), *w = falloc(nw), *b = falloc(128), *out = falloc(nout), *d_out = falloc(nout);
    float *d_in = falloc(nin), *d_w = falloc(nw), *d_b = falloc(128), *scratch = falloc(scratch_floats);
    fill_normal(in, nin, 0.0, 1.0);
    fill_normal(w, nw, 0.0, 0.03);
    fill_normal(b, 128, 0.0, 0.1);
    fill_normal(d_out, nout, 0.0, 1.0);
    fill_const(d_w, nw, 0.0f);
    fill_const(d_b, 128, 0.0f);
    /* one GEMM of (Cout, Cin k k) x (Cin k k, pixels) per sample: 2 m n k flops; backward two of them */
    const double flops = 2.0 * s.batch * s.out_channels * (double)nout / s.batch / s.out_channels *
                         s.in_channels * 9;
    conv2d_forward(out, in, w, b, &s, scratch, scratch_floats); /* warm-up */
    conv2d_backward(d_in, 0.0f, d_w, d_b, d_out, in, w, &s, scratch, scratch_floats);
    const int reps = 5;
    double t_fwd = 1e30, t_bwd = 1e30;
    for (int i = 0; i < reps; i++) {
        double t0 = now_seconds();
        conv2d_forward(out, in, w, b, &s, scratch, scratch_floats);
        double t1 = now_seconds();
        conv2d_backward(d_in, 0.0f, d_w, d_b, d_out, in, w, &s, scratch, scratch_floats);
        double t2 = now_seconds();
        if (t1 - t0 < t_fwd) t_fwd = t1 - t0;
        if (t2 - t1 < t_bwd) t_bwd = t2 - t1;
    }
    printf("conv2d 3x3 (8,128,32,32)->(8,128,32,32), %d threads, best of %d:\n", omp_get_max_threads(), reps);
    printf("  forward  %.2f ms  %.1f GFLOP/s\n", t_fwd * 1e3, flops / t_fwd * 1e-9);
    printf("  backward %.2f ms  %.1f GFLOP/s (d_in + d_weight + d_bias)\n", t_bwd * 1e3, 2 * flops / t_bwd * 1e-9);
    printf("  total    %.2f ms  %.1f GFLOP/s\n", (t_fwd + t_bwd) * 1e3, 3 * flops / (t_fwd + t_bwd) * 1e-9);
    free(in), free(w), free(b), free(out), free(d_out), free(d_in), free(d_w), free(d_b), free(scratch);
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--bench") == 0) return bench();
    const char *v = getenv("TEST_OPS_VERBOSE");
    verbose = v && *v && strcmp(v, "0") != 0;
    test_conv2d();
    test_conv_small_scratch();
    test_groupnorm();
    test_upsample();
    test_transpose();
    test_determinism();
    test_onednn();
    return test_finish("test_ops_conv");
}

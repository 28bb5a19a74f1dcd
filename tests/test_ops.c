/* Tests of the CPU op set (model/ops.h) against its documented contract.
 *
 * Gradients: every backward is checked against central finite differences of a
 * scalar L = sum(r * out), with r a random projection of the output and the sum
 * taken in double; the analytic gradient is the backward with d_out = r, and the
 * numeric one, for EVERY element of every input and parameter, is
 *     dL/dx_i = (L(x_i + h) - L(x_i - h)) / ((x_i + h) - (x_i - h))
 * where the denominator is the perturbation actually stored in float.
 *
 * Tolerances (the ops run in float32, the finite differences in double):
 * - per element: |num - ana| <= GRAD_TOL * max(1, |num|), GRAD_TOL = 1e-3. The
 *   noise of the numeric gradient is the float rounding of the outputs, about
 *   sqrt(n) * 6e-8 * |r| * |out| in L, divided by 2h; with h = 1e-2 and n <= 200 that
 *   is ~1e-5, and the truncation error h^2 / 6 * L''' is ~2e-5 for these smooth ops
 *   (and exactly 0 for the ops that are linear or quadratic in the perturbed value).
 *   The measured worst case (printed with TEST_OPS_VERBOSE=1) is 4e-5 with the
 *   default seed and 3e-4 over 200 other seeds (TEST_OPS_SEED=n; layernorm, whose
 *   rows with small variance have the largest curvature), so the bound has a
 *   margin of 3x to 25x, while a 1% error in any gradient of magnitude >= 0.1
 *   fails it.
 * - aggregate: ||num - ana||_2 <= AGG_TOL * ||num||_2, AGG_TOL = 2e-3 (measured:
 *   at most 1.2e-4). The per-element bound alone, being absolute for gradients
 *   below 1, would let a uniform 1% scale error of small gradients through; the
 *   aggregate bound does not.
 * Each check also proves it can fail: the same comparison with the analytic
 * gradient scaled by 1.01 and by 0.99 must be rejected.
 *
 * h = 1e-2 everywhere except the timestep embedding (1e-3: its t has no other
 * scale). None of these ops has a kink (GELU-tanh and SiLU are smooth), and the
 * layernorm rows have a variance far above eps, so no input sits near one.
 *
 * Also checked: forward values against straightforward double references, the
 * accumulate/overwrite contract (and d_in_beta), NULL gradient pointers, exact
 * index maps and adjointness of patchify/unpatchify, the MAE 2-D sin-cos position
 * embedding, and bit-identical reductions across calls and OpenMP thread counts. */
#include "ops.h"
#include "test_util.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define GRAD_TOL 1e-3
#define AGG_TOL 2e-3
#define H_DEFAULT 1e-2f

static const double PI_D = 3.14159265358979323846;
static int verbose;

/* ---------------------------------------------------------------- RNG ---- */

static uint64_t rng_state = 0x5eed0fd17ull;

static uint64_t splitmix64(void) {
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* uniform in [0, 1) with 53 random bits */
static double uniform(void) { return (double)(splitmix64() >> 11) * (1.0 / 9007199254740992.0); }

static double normal(void) {
    double u1 = uniform(), u2 = uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * PI_D * u2);
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
        fprintf(stderr, "test_ops: out of memory\n");
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

/* ------------------------------------------------------ array checks ---- */

/* |got - want| <= atol + rtol * |want| for every element; one CHECK per array. */
static void expect_close_arr(const char *label, const float *got, const double *want, size_t n,
                             double atol, double rtol) {
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

static void expect_close_farr(const char *label, const float *got, const float *want, size_t n,
                              double atol, double rtol) {
    double *w = malloc(n * sizeof *w);
    for (size_t i = 0; i < n; i++) w[i] = want[i];
    expect_close_arr(label, got, w, n, atol, rtol);
    free(w);
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

static void expect_all_finite(const char *label, const float *x, size_t n) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) bad++;
    CHECK_MSG(bad == 0, "%s: %zu of %zu values not finite", label, bad, n);
}

/* ------------------------------------------------ gradient checking ---- */

typedef double (*loss_fn)(void *ctx);

static void numeric_grad(double *num, float *x, size_t n, float h, loss_fn f, void *ctx) {
    for (size_t i = 0; i < n; i++) {
        float x0 = x[i];
        float xp = x0 + h, xm = x0 - h;
        x[i] = xp;
        double lp = f(ctx);
        x[i] = xm;
        double lm = f(ctx);
        x[i] = x0;
        num[i] = (lp - lm) / ((double)xp - (double)xm);
    }
}

/* Number of failed criteria (bad elements, plus 1 if the aggregate bound fails)
 * when comparing num with scale * ana. */
static size_t compare_grad(const char *label, const double *num, const float *ana, size_t n,
                           double scale, double tol, int report, double *max_err,
                           double *rel_norm) {
    size_t bad = 0;
    double enorm = 0.0, nnorm = 0.0, worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        double a = scale * (double)ana[i];
        double err = fabs(num[i] - a);
        if (!(err <= tol * fmax(1.0, fabs(num[i])))) {
            if (report && bad < 8)
                fprintf(stderr, "  %s[%zu]: numeric %.9g analytic %.9g\n", label, i, num[i], a);
            bad++;
        }
        if (!(err <= worst)) worst = err; /* NaN propagates */
        enorm += err * err;
        nnorm += num[i] * num[i];
    }
    enorm = sqrt(enorm);
    nnorm = sqrt(nnorm);
    if (!(enorm <= AGG_TOL * nnorm + 1e-12)) {
        if (report)
            fprintf(stderr, "  %s: ||num - ana|| = %.3g, ||num|| = %.3g\n", label, enorm, nnorm);
        bad++;
    }
    if (max_err) *max_err = worst;
    if (rel_norm) *rel_norm = nnorm > 0.0 ? enorm / nnorm : enorm;
    return bad;
}

/* Checks ana (the analytic dL/dx, n values) against central differences of f
 * perturbing x, and that the comparison rejects a 1% error. */
static void check_grad(const char *label, float *x, size_t n, const float *ana, loss_fn f,
                       void *ctx, float h, double tol) {
    double *num = calloc(n ? n : 1, sizeof *num);
    if (!num) {
        fprintf(stderr, "test_ops: out of memory\n");
        exit(1);
    }
    numeric_grad(num, x, n, h, f, ctx);
    double max_err = 0.0, rel_norm = 0.0, nnorm = 0.0;
    size_t bad = compare_grad(label, num, ana, n, 1.0, tol, 1, &max_err, &rel_norm);
    CHECK_MSG(bad == 0, "%s: gradient does not match finite differences (%zu bad, max err %.3g)",
              label, bad, max_err);
    for (size_t i = 0; i < n; i++) nnorm += num[i] * num[i];
    CHECK_MSG(nnorm > 0.0, "%s: numeric gradient is identically zero", label);
    CHECK_MSG(compare_grad(label, num, ana, n, 1.01, tol, 0, NULL, NULL) > 0,
              "%s: a 1.01 error in the gradient would not be detected", label);
    CHECK_MSG(compare_grad(label, num, ana, n, 0.99, tol, 0, NULL, NULL) > 0,
              "%s: a 0.99 error in the gradient would not be detected", label);
    if (verbose)
        printf("  %-34s n=%4zu max |num-ana| = %.3g, ||num-ana||/||num|| = %.3g\n", label, n, max_err,
               rel_norm);
    free(num);
}

/* ============================================================ linear ==== */

struct linear_ctx {
    float *in, *w, *b, *out;
    const float *r;
    int rows, nin, nout;
};

static double linear_loss(void *p) {
    struct linear_ctx *c = p;
    linear_forward(c->out, c->in, c->w, c->b, c->rows, 0, c->nin, c->nout);
    return dot_fd(c->r, c->out, (size_t)c->rows * c->nout);
}

static void test_linear(void) {
    const int rows = 5, nin = 7, nout = 6;
    const size_t n_in = (size_t)rows * nin, n_w = (size_t)nout * nin, n_out = (size_t)rows * nout;
    float *in = falloc(n_in), *w = falloc(n_w), *b = falloc(nout), *out = falloc(n_out);
    float *r = falloc(n_out);
    fill_normal(in, n_in, 0.0, 1.0);
    fill_normal(w, n_w, 0.0, 0.5);
    fill_normal(b, nout, 0.0, 0.5);
    fill_normal(r, n_out, 0.0, 1.0);

    /* forward against a double reference, with and without bias */
    double *ref = malloc(n_out * sizeof *ref), *ref_nb = malloc(n_out * sizeof *ref_nb);
    for (int i = 0; i < rows; i++)
        for (int o = 0; o < nout; o++) {
            double s = 0.0;
            for (int k = 0; k < nin; k++) s += (double)in[i * nin + k] * w[o * nin + k];
            ref_nb[i * nout + o] = s;
            ref[i * nout + o] = s + b[o];
        }
    linear_forward(out, in, w, b, rows, 0, nin, nout);
    expect_close_arr("linear_forward", out, ref, n_out, 1e-5, 1e-5);
    linear_forward(out, in, w, NULL, rows, 0, nin, nout);
    expect_close_arr("linear_forward(bias NULL)", out, ref_nb, n_out, 1e-5, 1e-5);

    /* analytic gradients: d_in prefilled with NaN and beta 0 (overwrite, never read) */
    float *d_in = falloc(n_in), *d_w = falloc(n_w), *d_b = falloc(nout);
    fill_const(d_in, n_in, NAN);
    fill_const(d_w, n_w, 0.0f);
    fill_const(d_b, nout, 0.0f);
    linear_backward(d_in, 0.0f, d_w, d_b, r, in, w, rows, nin, nout);

    struct linear_ctx c = {in, w, b, out, r, rows, nin, nout};
    check_grad("linear d_in", in, n_in, d_in, linear_loss, &c, H_DEFAULT, GRAD_TOL);
    check_grad("linear d_weight", w, n_w, d_w, linear_loss, &c, H_DEFAULT, GRAD_TOL);
    check_grad("linear d_bias", b, nout, d_b, linear_loss, &c, H_DEFAULT, GRAD_TOL);

    /* accumulate / overwrite: two calls on nonzero buffers */
    float *p_in = falloc(n_in), *p_w = falloc(n_w), *p_b = falloc(nout);
    fill_normal(p_in, n_in, 0.0, 3.0);
    fill_normal(p_w, n_w, 0.0, 3.0);
    fill_normal(p_b, nout, 0.0, 3.0);
    float *a_in = fdup(p_in, n_in), *a_w = fdup(p_w, n_w), *a_b = fdup(p_b, nout);
    linear_backward(a_in, 0.0f, a_w, a_b, r, in, w, rows, nin, nout);
    linear_backward(a_in, 0.0f, a_w, a_b, r, in, w, rows, nin, nout);
    double *want_in = malloc(n_in * sizeof(double)), *want_w = malloc(n_w * sizeof(double));
    double *want_b = malloc(nout * sizeof(double));
    for (size_t i = 0; i < n_w; i++) want_w[i] = (double)p_w[i] + 2.0 * d_w[i];
    for (int i = 0; i < nout; i++) want_b[i] = (double)p_b[i] + 2.0 * d_b[i];
    expect_close_farr("linear d_in beta 0 overwrites", a_in, d_in, n_in, 1e-6, 1e-6);
    expect_close_arr("linear d_weight accumulates", a_w, want_w, n_w, 1e-5, 1e-6);
    expect_close_arr("linear d_bias accumulates", a_b, want_b, nout, 1e-5, 1e-6);
    /* beta 1: d_in = p_in + 2 * grad after two calls */
    memcpy(a_in, p_in, n_in * sizeof(float));
    linear_backward(a_in, 1.0f, NULL, NULL, r, in, w, rows, nin, nout);
    linear_backward(a_in, 1.0f, NULL, NULL, r, in, w, rows, nin, nout);
    for (size_t i = 0; i < n_in; i++) want_in[i] = (double)p_in[i] + 2.0 * d_in[i];
    expect_close_arr("linear d_in beta 1 accumulates", a_in, want_in, n_in, 1e-5, 1e-6);
    /* fractional beta */
    memcpy(a_in, p_in, n_in * sizeof(float));
    linear_backward(a_in, 0.5f, NULL, NULL, r, in, w, rows, nin, nout);
    for (size_t i = 0; i < n_in; i++) want_in[i] = 0.5 * p_in[i] + d_in[i];
    expect_close_arr("linear d_in beta 0.5", a_in, want_in, n_in, 1e-5, 1e-6);

    /* NULL gradient pointers are skipped, the others still computed */
    fill_const(a_in, n_in, NAN);
    fill_const(a_w, n_w, 0.0f);
    fill_const(a_b, nout, 0.0f);
    linear_backward(NULL, 0.0f, a_w, a_b, r, in, w, rows, nin, nout);
    expect_close_farr("linear d_weight (d_in NULL)", a_w, d_w, n_w, 1e-6, 1e-6);
    expect_close_farr("linear d_bias (d_in NULL)", a_b, d_b, nout, 1e-6, 1e-6);
    fill_const(a_w, n_w, 0.0f);
    linear_backward(a_in, 0.0f, a_w, NULL, r, in, w, rows, nin, nout);
    expect_close_farr("linear d_in (d_bias NULL)", a_in, d_in, n_in, 1e-6, 1e-6);
    expect_close_farr("linear d_weight (d_bias NULL)", a_w, d_w, n_w, 1e-6, 1e-6);
    fill_const(a_b, nout, 0.0f);
    fill_const(a_in, n_in, NAN);
    linear_backward(a_in, 0.0f, NULL, a_b, r, in, w, rows, nin, nout);
    expect_close_farr("linear d_in (d_weight NULL)", a_in, d_in, n_in, 1e-6, 1e-6);
    expect_close_farr("linear d_bias (d_weight NULL)", a_b, d_b, nout, 1e-6, 1e-6);
    linear_backward(NULL, 0.0f, NULL, NULL, r, in, w, rows, nin, nout);
    CHECK(1); /* reached: all-NULL call did not crash */

    free(in), free(w), free(b), free(out), free(r), free(ref), free(ref_nb);
    free(d_in), free(d_w), free(d_b), free(p_in), free(p_w), free(p_b);
    free(a_in), free(a_w), free(a_b), free(want_in), free(want_w), free(want_b);
}

/* ========================================================= layernorm ==== */

struct ln_ctx {
    float *in, *out, *mean, *rstd;
    const float *r;
    int rows, dim;
    float eps;
};

static double ln_loss(void *p) {
    struct ln_ctx *c = p;
    layernorm_forward(c->out, c->mean, c->rstd, c->in, c->rows, c->dim, c->eps);
    return dot_fd(c->r, c->out, (size_t)c->rows * c->dim);
}

/* A sample's outputs do not depend on the rest of the batch: each sample of a
 * batch against the same sample alone, bit for bit, for samples shorter and
 * longer than the GEMM's row tile (OpenBLAS's Haswell and Zen kernels round a row
 * differently with its position; ctest runs this also under OPENBLAS_CORETYPE=Haswell). */
static void test_linear_batch_invariance(void) {
    const int nin = 96, nout = 160, max_samples = 5;
    const int sample_rows_cases[] = {1, 19, 300};
    for (int c = 0; c < 3; c++) {
        const int sr = sample_rows_cases[c];
        const size_t n_in = (size_t)max_samples * sr * nin, n_out = (size_t)max_samples * sr * nout;
        float *in = falloc(n_in), *w = falloc((size_t)nout * nin), *b = falloc(nout);
        float *batch = falloc(n_out), *alone = falloc((size_t)sr * nout);
        fill_normal(in, n_in, 0.0, 1.0);
        fill_normal(w, (size_t)nout * nin, 0.0, 0.5);
        fill_normal(b, nout, 0.0, 0.5);
        int differing = 0;
        for (int samples = 1; samples <= max_samples; samples++) {
            linear_forward(batch, in, w, b, samples * sr, sr, nin, nout);
            for (int s = 0; s < samples; s++) {
                linear_forward(alone, in + (size_t)s * sr * nin, w, b, sr, sr, nin, nout);
                differing += memcmp(alone, batch + (size_t)s * sr * nout, sizeof(float) * sr * nout) != 0;
            }
        }
        CHECK_MSG(differing == 0, "linear_forward, %d rows a sample: %d samples differ from the same sample alone",
                  sr, differing);
        free(in), free(w), free(b), free(batch), free(alone);
    }
}

static void test_layernorm(void) {
    const int rows = 4, dim = 12;
    const float eps = 1e-6f;
    const size_t n = (size_t)rows * dim;
    float *in = falloc(n), *out = falloc(n), *mean = falloc(rows), *rstd = falloc(rows);
    float *r = falloc(n);
    /* rows with different offsets and spreads, variance >> eps */
    for (int i = 0; i < rows; i++) fill_normal(in + (size_t)i * dim, dim, 0.7 * i - 1.0, 0.6 + 0.3 * i);
    fill_normal(r, n, 0.0, 1.0);

    layernorm_forward(out, mean, rstd, in, rows, dim, eps);
    double *ref = malloc(n * sizeof *ref), ref_mean[4], ref_rstd[4];
    for (int i = 0; i < rows; i++) {
        double m = 0.0, v = 0.0;
        for (int j = 0; j < dim; j++) m += in[i * dim + j];
        m /= dim;
        for (int j = 0; j < dim; j++) v += (in[i * dim + j] - m) * (in[i * dim + j] - m);
        v /= dim; /* biased variance, as torch */
        double rs = 1.0 / sqrt(v + eps);
        ref_mean[i] = m;
        ref_rstd[i] = rs;
        for (int j = 0; j < dim; j++) ref[i * dim + j] = (in[i * dim + j] - m) * rs;
    }
    expect_close_arr("layernorm_forward out", out, ref, n, 1e-5, 1e-5);
    expect_close_arr("layernorm_forward mean", mean, ref_mean, rows, 1e-6, 1e-5);
    expect_close_arr("layernorm_forward rstd", rstd, ref_rstd, rows, 1e-6, 1e-5);

    float *d_in = falloc(n);
    fill_const(d_in, n, NAN);
    layernorm_backward(d_in, 0.0f, r, in, mean, rstd, rows, dim);
    struct ln_ctx c = {in, out, mean, rstd, r, rows, dim, eps};
    check_grad("layernorm d_in", in, n, d_in, ln_loss, &c, H_DEFAULT, GRAD_TOL);
    layernorm_forward(out, mean, rstd, in, rows, dim, eps); /* restore saved stats */

    /* the gradient of a row is orthogonal to constant shifts and to the row itself */
    for (int i = 0; i < rows; i++) {
        double s = 0.0, sx = 0.0, s_abs = 0.0, sx_abs = 0.0;
        for (int j = 0; j < dim; j++) {
            double g = d_in[i * dim + j], xc = in[i * dim + j] - ref_mean[i];
            s += g;
            sx += g * xc;
            s_abs += fabs(g);
            sx_abs += fabs(g * xc);
        }
        /* up to float rounding (the second one also up to eps / var ~ 1e-6): a bug in
         * either term of the backward gives a ratio of order 1 */
        if (verbose)
            printf("  layernorm row %d: sum %.3g of %.3g, sum*x %.3g of %.3g\n", i, s, s_abs, sx, sx_abs);
        CHECK_CLOSE(s, 0.0, 1e-4 * s_abs, 0.0);
        CHECK_CLOSE(sx, 0.0, 1e-4 * sx_abs, 0.0);
    }

    /* d_in_beta: 0 overwrites, 1 accumulates */
    float *p = falloc(n), *a = falloc(n);
    fill_normal(p, n, 0.0, 3.0);
    memcpy(a, p, n * sizeof *a);
    layernorm_backward(a, 0.0f, r, in, mean, rstd, rows, dim);
    layernorm_backward(a, 0.0f, r, in, mean, rstd, rows, dim);
    expect_close_farr("layernorm d_in beta 0 overwrites", a, d_in, n, 1e-6, 1e-6);
    memcpy(a, p, n * sizeof *a);
    layernorm_backward(a, 1.0f, r, in, mean, rstd, rows, dim);
    layernorm_backward(a, 1.0f, r, in, mean, rstd, rows, dim);
    double *want = malloc(n * sizeof *want);
    for (size_t i = 0; i < n; i++) want[i] = (double)p[i] + 2.0 * d_in[i];
    expect_close_arr("layernorm d_in beta 1 accumulates", a, want, n, 1e-5, 1e-6);
    memcpy(a, p, n * sizeof *a);
    layernorm_backward(a, 0.5f, r, in, mean, rstd, rows, dim);
    for (size_t i = 0; i < n; i++) want[i] = 0.5 * p[i] + d_in[i];
    expect_close_arr("layernorm d_in beta 0.5", a, want, n, 1e-5, 1e-6);

    free(in), free(out), free(mean), free(rstd), free(r), free(ref), free(d_in);
    free(p), free(a), free(want);
}

/* ========================================================== modulate ==== */

/* The modulation buffer mod (batch, stride) holds shift at column 0 and scale at
 * column dim; the third chunk [2 dim, 3 dim) is unused by the op. */
struct mod_ctx {
    float *in, *mod, *out;
    const float *r;
    int stride, batch, tokens, dim;
};

static double mod_loss(void *p) {
    struct mod_ctx *c = p;
    modulate_forward(c->out, c->in, c->mod, c->mod + c->dim, c->stride, c->batch, c->tokens, c->dim);
    return dot_fd(c->r, c->out, (size_t)c->batch * c->tokens * c->dim);
}

static void test_modulate(void) {
    const int batch = 2, tokens = 3, dim = 5, stride = 3 * dim;
    const size_t n = (size_t)batch * tokens * dim, nm = (size_t)batch * stride;
    float *in = falloc(n), *mod = falloc(nm), *out = falloc(n), *r = falloc(n);
    fill_normal(in, n, 0.0, 1.0);
    fill_normal(mod, nm, 0.0, 0.5);
    fill_normal(r, n, 0.0, 1.0);
    const float *shift = mod, *scale = mod + dim;

    modulate_forward(out, in, shift, scale, stride, batch, tokens, dim);
    double *ref = malloc(n * sizeof *ref);
    for (int b = 0; b < batch; b++)
        for (int t = 0; t < tokens; t++)
            for (int j = 0; j < dim; j++) {
                size_t i = ((size_t)b * tokens + t) * dim + j;
                ref[i] = in[i] * (1.0 + scale[b * stride + j]) + shift[b * stride + j];
            }
    expect_close_arr("modulate_forward", out, ref, n, 1e-6, 1e-6);

    float *d_in = falloc(n), *d_mod = falloc(nm);
    fill_const(d_in, n, NAN);
    fill_const(d_mod, nm, 0.0f);
    modulate_backward(d_in, d_mod, d_mod + dim, r, in, scale, stride, batch, tokens, dim);
    struct mod_ctx c = {in, mod, out, r, stride, batch, tokens, dim};
    check_grad("modulate d_in", in, n, d_in, mod_loss, &c, H_DEFAULT, GRAD_TOL);
    /* the whole strided buffer: shift and scale columns, and zero in the unused chunk */
    check_grad("modulate d_shift/d_scale", mod, nm, d_mod, mod_loss, &c, H_DEFAULT, GRAD_TOL);

    /* accumulate / overwrite; a sentinel in the unused chunk must survive */
    float *p_mod = falloc(nm), *a_in = falloc(n), *a_mod;
    fill_normal(p_mod, nm, 0.0, 3.0);
    fill_normal(a_in, n, 0.0, 3.0);
    a_mod = fdup(p_mod, nm);
    modulate_backward(a_in, a_mod, a_mod + dim, r, in, scale, stride, batch, tokens, dim);
    modulate_backward(a_in, a_mod, a_mod + dim, r, in, scale, stride, batch, tokens, dim);
    double *want = malloc(nm * sizeof *want);
    for (size_t i = 0; i < nm; i++) want[i] = (double)p_mod[i] + 2.0 * d_mod[i];
    expect_close_farr("modulate d_in overwrites", a_in, d_in, n, 1e-6, 1e-6);
    expect_close_arr("modulate d_shift/d_scale accumulate", a_mod, want, nm, 1e-5, 1e-6);
    for (int b = 0; b < batch; b++)
        expect_identical("modulate unused chunk untouched", a_mod + b * stride + 2 * dim,
                         p_mod + b * stride + 2 * dim, dim);

    /* NULL gradient pointers */
    float *b_mod = falloc(nm);
    fill_const(b_mod, nm, 0.0f);
    modulate_backward(NULL, b_mod, b_mod + dim, r, in, scale, stride, batch, tokens, dim);
    expect_close_farr("modulate shift/scale (d_in NULL)", b_mod, d_mod, nm, 1e-6, 1e-6);
    fill_const(b_mod, nm, 0.0f);
    fill_const(a_in, n, NAN);
    modulate_backward(a_in, NULL, b_mod + dim, r, in, scale, stride, batch, tokens, dim);
    expect_close_farr("modulate d_in (d_shift NULL)", a_in, d_in, n, 1e-6, 1e-6);
    expect_close_farr("modulate d_scale (d_shift NULL)", b_mod + dim, d_mod + dim, dim, 1e-6, 1e-6);
    fill_const(b_mod, nm, 0.0f);
    modulate_backward(a_in, b_mod, NULL, r, in, scale, stride, batch, tokens, dim);
    expect_close_farr("modulate d_shift (d_scale NULL)", b_mod, d_mod, dim, 1e-6, 1e-6);
    modulate_backward(NULL, NULL, NULL, r, in, scale, stride, batch, tokens, dim);
    CHECK(1);

    free(in), free(mod), free(out), free(r), free(ref), free(d_in), free(d_mod);
    free(p_mod), free(a_in), free(a_mod), free(want), free(b_mod);
}

/* ==================================================== gated residual ==== */

struct gr_ctx {
    const float *x0;
    float *x, *y, *mod;
    const float *r;
    int goff, stride, batch, tokens, dim;
};

static double gr_loss(void *p) {
    struct gr_ctx *c = p;
    size_t n = (size_t)c->batch * c->tokens * c->dim;
    memcpy(c->x, c->x0, n * sizeof(float));
    gated_residual_forward(c->x, c->y, c->mod + c->goff, c->stride, c->batch, c->tokens, c->dim);
    return dot_fd(c->r, c->x, n);
}

/* layernorm_modulate_forward and modulate_layernorm_backward are the two ops
 * they fuse, bit for bit: d_in with beta 0 and 1, d_shift and d_scale
 * accumulating onto values already there, and rows wider than the fused
 * backward keeps on the stack (its fallback through d_modulated). */
static void test_layernorm_modulate_fused(void) {
    const int shapes[][3] = {{3, 5, 40}, {2, 4, 2100}}; /* batch, tokens, dim */
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int B = shapes[s][0], T = shapes[s][1], D = shapes[s][2], stride = 3 * D;
        const size_t n = (size_t)B * T * D, nm = (size_t)B * stride;
        float *in = malloc(n * sizeof *in), *mod = malloc(nm * sizeof *mod), *d_out = malloc(n * sizeof *in);
        float *out_a = malloc(n * sizeof *in), *out_b = malloc(n * sizeof *in), *ln_a = malloc(n * sizeof *in);
        float *ln_b = malloc(n * sizeof *in), *mean_a = malloc(B * T * sizeof *in);
        float *mean_b = malloc(B * T * sizeof *in);
        float *rstd_a = malloc(B * T * sizeof *in), *rstd_b = malloc(B * T * sizeof *in);
        float *d_in_a = malloc(n * sizeof *in), *d_in_b = malloc(n * sizeof *in), *scratch = malloc(n * sizeof *in);
        float *d_mod_a = malloc(nm * sizeof *in), *d_mod_b = malloc(nm * sizeof *in);
        fill_normal(in, n, 0.5, 2.0);
        fill_normal(mod, nm, 0.0, 0.3);
        fill_normal(d_out, n, 0.0, 1.0);
        const float *shift = mod, *scale = mod + D;
        layernorm_forward(ln_a, mean_a, rstd_a, in, B * T, D, 1e-6f);
        modulate_forward(out_a, ln_a, shift, scale, stride, B, T, D);
        layernorm_modulate_forward(out_b, ln_b, mean_b, rstd_b, in, shift, scale, stride, B, T, D, 1e-6f);
        CHECK_MSG(memcmp(out_a, out_b, n * sizeof *in) == 0 && memcmp(ln_a, ln_b, n * sizeof *in) == 0 &&
                      memcmp(rstd_a, rstd_b, B * T * sizeof *in) == 0,
                  "layernorm_modulate_forward differs from layernorm_forward and modulate_forward (dim %d)", D);
        for (int beta = 0; beta <= 1; beta++) {
            fill_normal(d_in_a, n, 0.0, 1.0);
            memcpy(d_in_b, d_in_a, n * sizeof *in);
            fill_normal(d_mod_a, nm, 0.0, 1.0);
            memcpy(d_mod_b, d_mod_a, nm * sizeof *in);
            modulate_backward(scratch, d_mod_a, d_mod_a + D, d_out, ln_a, scale, stride, B, T, D);
            layernorm_backward_normalized(d_in_a, (float)beta, scratch, ln_a, rstd_a, B * T, D);
            modulate_layernorm_backward(d_in_b, (float)beta, d_mod_b, d_mod_b + D, d_out, ln_a, rstd_a, scale, stride,
                                        B, T, D, scratch);
            CHECK_MSG(memcmp(d_in_a, d_in_b, n * sizeof *in) == 0,
                      "modulate_layernorm_backward's d_in differs (dim %d, beta %d)", D, beta);
            CHECK_MSG(memcmp(d_mod_a, d_mod_b, nm * sizeof *in) == 0,
                      "modulate_layernorm_backward's d_shift, d_scale differ (dim %d, beta %d)", D, beta);
        }
        free(in), free(mod), free(d_out), free(out_a), free(out_b), free(ln_a), free(ln_b), free(mean_a);
        free(mean_b), free(rstd_a), free(rstd_b), free(d_in_a), free(d_in_b), free(scratch), free(d_mod_a);
        free(d_mod_b);
    }
}

static void test_gated_residual(void) {
    const int batch = 2, tokens = 3, dim = 5, stride = 3 * dim, goff = 2 * dim;
    const size_t n = (size_t)batch * tokens * dim, nm = (size_t)batch * stride;
    float *x0 = falloc(n), *x = falloc(n), *y = falloc(n), *mod = falloc(nm), *r = falloc(n);
    fill_normal(x0, n, 0.0, 1.0);
    fill_normal(y, n, 0.0, 1.0);
    fill_normal(mod, nm, 0.0, 0.5);
    fill_normal(r, n, 0.0, 1.0);
    const float *gate = mod + goff;

    memcpy(x, x0, n * sizeof *x);
    gated_residual_forward(x, y, gate, stride, batch, tokens, dim);
    double *ref = malloc(n * sizeof *ref);
    for (int b = 0; b < batch; b++)
        for (int t = 0; t < tokens; t++)
            for (int j = 0; j < dim; j++) {
                size_t i = ((size_t)b * tokens + t) * dim + j;
                ref[i] = (double)x0[i] + (double)gate[b * stride + j] * y[i];
            }
    expect_close_arr("gated_residual_forward", x, ref, n, 1e-6, 1e-6);

    float *d_y = falloc(n), *d_mod = falloc(nm);
    fill_const(d_y, n, NAN);
    fill_const(d_mod, nm, 0.0f);
    gated_residual_backward(d_y, d_mod + goff, r, y, gate, stride, batch, tokens, dim);
    struct gr_ctx c = {x0, x, y, mod, r, goff, stride, batch, tokens, dim};
    check_grad("gated_residual d_y", y, n, d_y, gr_loss, &c, H_DEFAULT, GRAD_TOL);
    check_grad("gated_residual d_gate", mod, nm, d_mod, gr_loss, &c, H_DEFAULT, GRAD_TOL);

    float *p_mod = falloc(nm), *a_mod, *a_y = falloc(n);
    fill_normal(p_mod, nm, 0.0, 3.0);
    fill_normal(a_y, n, 0.0, 3.0);
    a_mod = fdup(p_mod, nm);
    gated_residual_backward(a_y, a_mod + goff, r, y, gate, stride, batch, tokens, dim);
    gated_residual_backward(a_y, a_mod + goff, r, y, gate, stride, batch, tokens, dim);
    double *want = malloc(nm * sizeof *want);
    for (size_t i = 0; i < nm; i++) want[i] = (double)p_mod[i] + 2.0 * d_mod[i];
    expect_close_farr("gated_residual d_y overwrites", a_y, d_y, n, 1e-6, 1e-6);
    expect_close_arr("gated_residual d_gate accumulates", a_mod, want, nm, 1e-5, 1e-6);

    fill_const(a_mod, nm, 0.0f);
    gated_residual_backward(NULL, a_mod + goff, r, y, gate, stride, batch, tokens, dim);
    expect_close_farr("gated_residual d_gate (d_y NULL)", a_mod, d_mod, nm, 1e-6, 1e-6);
    fill_const(a_y, n, NAN);
    gated_residual_backward(a_y, NULL, r, y, gate, stride, batch, tokens, dim);
    expect_close_farr("gated_residual d_y (d_gate NULL)", a_y, d_y, n, 1e-6, 1e-6);

    free(x0), free(x), free(y), free(mod), free(r), free(ref), free(d_y), free(d_mod);
    free(p_mod), free(a_mod), free(a_y), free(want);
}

/* ======================================================= activations ==== */

typedef void (*act_fwd)(float *, const float *, size_t);
typedef void (*act_bwd)(float *, const float *, const float *, size_t);

struct act_ctx {
    act_fwd fwd;
    float *in, *out;
    const float *r;
    size_t n;
};

static double act_loss(void *p) {
    struct act_ctx *c = p;
    c->fwd(c->out, c->in, c->n);
    return dot_fd(c->r, c->out, c->n);
}

static double gelu_ref(double x) {
    return 0.5 * x * (1.0 + tanh(sqrt(2.0 / PI_D) * (x + 0.044715 * x * x * x)));
}

static double silu_ref(double x) { return x / (1.0 + exp(-x)); }

static void test_activation(const char *name, act_fwd fwd, act_bwd bwd, double (*ref)(double)) {
    enum { N = 41 };
    float in[N], out[N], r[N], d_in[N], a[N];
    double want[N];
    char label[64];
    /* a grid over [-5, 5] with jitter, plus values near 0 */
    for (int i = 0; i < N; i++) in[i] = (float)(-5.0 + 10.0 * i / (N - 1) + 0.05 * normal());
    fill_normal(r, N, 0.0, 1.0);

    fwd(out, in, N);
    for (int i = 0; i < N; i++) want[i] = ref(in[i]);
    snprintf(label, sizeof label, "%s forward", name);
    expect_close_arr(label, out, want, N, 2e-6, 2e-6);

    fill_const(d_in, N, NAN);
    bwd(d_in, r, in, N);
    struct act_ctx c = {fwd, in, out, r, N};
    snprintf(label, sizeof label, "%s d_in", name);
    check_grad(label, in, N, d_in, act_loss, &c, H_DEFAULT, GRAD_TOL);

    /* overwrite */
    fill_normal(a, N, 0.0, 3.0);
    bwd(a, r, in, N);
    snprintf(label, sizeof label, "%s d_in overwrites", name);
    expect_close_farr(label, a, d_in, N, 0.0, 0.0);

    /* extreme inputs stay finite, with the limits of the function */
    float big[6] = {-80.0f, -30.0f, -12.0f, 12.0f, 30.0f, 80.0f}, bo[6], bd[6], ones[6];
    fill_const(ones, 6, 1.0f);
    fwd(bo, big, 6);
    bwd(bd, ones, big, 6);
    snprintf(label, sizeof label, "%s forward at |x| large", name);
    expect_all_finite(label, bo, 6);
    for (int i = 0; i < 6; i++) want[i] = ref(big[i]);
    expect_close_arr(label, bo, want, 6, 1e-6, 1e-6);
    snprintf(label, sizeof label, "%s backward at |x| large", name);
    expect_all_finite(label, bd, 6);
    double dlim[6] = {0, 0, 0, 1, 1, 1};
    expect_close_arr(label, bd, dlim, 6, 1e-3, 0.0);
}

/* SiLU with its slope kept (the autoencoder's training path) and GELU with its
 * slope kept (the DiT's, in fp32) through test_activation's signatures: the
 * input copied first, as it is overwritten. */
enum { SLOPE_TEST_MAX = 64 };
typedef void (*keep_slope_fn)(float *out, float *x_then_slope, size_t n);
typedef void (*from_slope_fn)(float *d_in, const float *d_out, const float *slope, size_t n);

static void keep_slope_as_forward(keep_slope_fn keep, float *out, const float *in, size_t n) {
    float x[SLOPE_TEST_MAX];
    memcpy(x, in, n * sizeof *x);
    keep(out, x, n);
}

static void from_slope_as_backward(keep_slope_fn keep, from_slope_fn from_slope, float *d_in, const float *d_out,
                                   const float *in, size_t n) {
    float slope[SLOPE_TEST_MAX], out[SLOPE_TEST_MAX];
    memcpy(slope, in, n * sizeof *slope);
    keep(out, slope, n);
    from_slope(d_in, d_out, slope, n);
}

static void silu_keep_slope_as_forward(float *out, const float *in, size_t n) {
    keep_slope_as_forward(silu_forward_keep_slope, out, in, n);
}
static void silu_from_slope_as_backward(float *d_in, const float *d_out, const float *in, size_t n) {
    from_slope_as_backward(silu_forward_keep_slope, silu_backward_from_slope, d_in, d_out, in, n);
}
static void gelu_keep_slope_as_forward(float *out, const float *in, size_t n) {
    keep_slope_as_forward(gelu_tanh_forward_keep_slope, out, in, n);
}
static void gelu_from_slope_as_backward(float *d_in, const float *d_out, const float *in, size_t n) {
    from_slope_as_backward(gelu_tanh_forward_keep_slope, gelu_tanh_backward_from_slope, d_in, d_out, in, n);
}

/* Its forward is the plain forward bit for bit over several chunks; its backward,
 * in place (d_in = d_out), is the plain backward within backward_tolerance (0:
 * bit for bit). */
static void test_keep_slope(const char *name, act_fwd forward, act_bwd backward, keep_slope_fn keep,
                            from_slope_fn from_slope, double backward_tolerance) {
    enum { N = 10007 };
    float *x = malloc(N * sizeof *x), *slope = malloc(N * sizeof *x), *out = malloc(N * sizeof *x),
          *want = malloc(N * sizeof *x), *g = malloc(N * sizeof *x), *d_want = malloc(N * sizeof *x);
    char what[128];
    fill_normal(x, N, 0.0, 4.0);
    fill_normal(g, N, 0.0, 1.0);
    memcpy(slope, x, N * sizeof *x);
    forward(want, x, N);
    keep(out, slope, N);
    snprintf(what, sizeof what, "%s keep-slope forward = its forward", name);
    expect_close_farr(what, out, want, N, 0.0, 0.0);
    backward(d_want, g, x, N);
    from_slope(g, g, slope, N);
    snprintf(what, sizeof what, "%s backward from slope, in place", name);
    expect_close_farr(what, g, d_want, N, backward_tolerance, backward_tolerance);
    free(x), free(slope), free(out), free(want), free(g), free(d_want);
}

/* ========================================================= attention ==== */

static size_t qkv_index(int b, int t, int s, int h, int d, int T, int H, int D) {
    return ((((size_t)b * T + t) * 3 + s) * H + h) * D + d;
}

static void attention_ref(double *out, double *probs, const float *qkv, int B, int T, int H, int D) {
    double *sc = malloc((size_t)T * sizeof *sc);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                double mx = -INFINITY, sum = 0.0;
                for (int j = 0; j < T; j++) {
                    double s = 0.0;
                    for (int d = 0; d < D; d++)
                        s += (double)qkv[qkv_index(b, i, 0, h, d, T, H, D)] *
                             qkv[qkv_index(b, j, 1, h, d, T, H, D)];
                    sc[j] = s / sqrt((double)D);
                    if (sc[j] > mx) mx = sc[j];
                }
                for (int j = 0; j < T; j++) sum += (sc[j] = exp(sc[j] - mx));
                for (int j = 0; j < T; j++) {
                    sc[j] /= sum;
                    probs[(((size_t)b * H + h) * T + i) * T + j] = sc[j];
                }
                for (int d = 0; d < D; d++) {
                    double o = 0.0;
                    for (int j = 0; j < T; j++) o += sc[j] * qkv[qkv_index(b, j, 2, h, d, T, H, D)];
                    out[(((size_t)b * T + i) * H + h) * D + d] = o;
                }
            }
    free(sc);
}

struct attn_ctx {
    float *qkv, *out, *probs;
    const float *r;
    int B, T, H, D;
};

static double attn_loss(void *p) {
    struct attn_ctx *c = p;
    attention_forward(c->out, c->probs, c->qkv, c->B, c->T, c->H, c->D);
    return dot_fd(c->r, c->out, (size_t)c->B * c->T * c->H * c->D);
}

static void test_attention(void) {
    const int B = 2, T = 5, H = 2, D = 3;
    const size_t nq = (size_t)B * T * 3 * H * D, no = (size_t)B * T * H * D, np = (size_t)B * H * T * T;
    float *qkv = falloc(nq), *out = falloc(no), *probs = falloc(np), *r = falloc(no);
    fill_normal(qkv, nq, 0.0, 1.0);
    fill_normal(r, no, 0.0, 1.0);

    double *ref = malloc(no * sizeof *ref), *ref_p = malloc(np * sizeof *ref_p);
    attention_forward(out, probs, qkv, B, T, H, D);
    attention_ref(ref, ref_p, qkv, B, T, H, D);
    expect_close_arr("attention_forward out", out, ref, no, 1e-5, 1e-5);
    expect_close_arr("attention_forward probs", probs, ref_p, np, 1e-6, 1e-5);

    /* softmax must be stable for large scores (exp would overflow without the max) */
    float *big = falloc(nq), *bout = falloc(no), *bprobs = falloc(np);
    for (size_t i = 0; i < nq; i++) big[i] = 40.0f * qkv[i];
    attention_forward(bout, bprobs, big, B, T, H, D);
    attention_ref(ref, ref_p, big, B, T, H, D);
    expect_all_finite("attention_forward large scores", bout, no);
    expect_close_arr("attention_forward large scores out", bout, ref, no, 1e-3, 1e-4);
    expect_close_arr("attention_forward large scores probs", bprobs, ref_p, np, 1e-5, 1e-4);

    float *d_qkv = falloc(nq), *scores_scratch = falloc(np);
    fill_const(d_qkv, nq, NAN);
    fill_const(scores_scratch, np, NAN); /* scratch contents must not matter */
    attention_forward(out, probs, qkv, B, T, H, D);
    attention_backward(d_qkv, scores_scratch, r, qkv, probs, B, T, H, D);
    struct attn_ctx c = {qkv, out, probs, r, B, T, H, D};
    check_grad("attention d_qkv", qkv, nq, d_qkv, attn_loss, &c, H_DEFAULT, GRAD_TOL);

    /* overwrite: second call on a filled buffer gives the same */
    attention_forward(out, probs, qkv, B, T, H, D);
    float *a = falloc(nq);
    fill_normal(a, nq, 0.0, 3.0);
    attention_backward(a, scores_scratch, r, qkv, probs, B, T, H, D);
    attention_backward(a, scores_scratch, r, qkv, probs, B, T, H, D);
    expect_close_farr("attention d_qkv overwrites", a, d_qkv, nq, 1e-6, 1e-6);

    free(qkv), free(out), free(probs), free(r), free(ref), free(ref_p), free(big), free(bout);
    free(bprobs), free(scores_scratch), free(d_qkv), free(a);
}

/* The fused fp32 attention (AVX-512, tokens and head_dim multiples of 64):
 * forward against the double reference, backward against attention_backward
 * (whose gradients the finite differences above check), and the scratch's
 * contents and d_qkv's old values must not matter. Where the CPU has no
 * AVX-512F the fused path is never taken, and this says so. */
static void test_attention_fused(void) {
    const int B = 2, T = 64, H = 2, E = 64;
    if (!attention_fused_f32_usable(T, E)) {
        printf("test_ops: no AVX-512F on this CPU: the fused attention is never used, not tested\n");
        return;
    }
    CHECK(!attention_fused_f32_usable(T, 48) && !attention_fused_f32_usable(32, E)); /* shapes it cannot take */
    const size_t nq = (size_t)B * T * 3 * H * E, no = (size_t)B * T * H * E, np = (size_t)B * H * T * T;
    float *qkv = falloc(nq), *out = falloc(no), *probs = falloc(np), *d_out = falloc(no);
    float *d_qkv = falloc(nq), *d_want = falloc(nq), *scratch = falloc(np), *probs_want = falloc(np);
    float *out_want = falloc(no), *transposed = falloc(no);
    fill_const(transposed, no, NAN);
    double *ref = malloc(no * sizeof *ref), *ref_p = malloc(np * sizeof *ref_p);
    fill_normal(qkv, nq, 0.0, 1.0);
    fill_normal(d_out, no, 0.0, 1.0);
    fill_const(out, no, NAN);
    fill_const(probs, np, NAN);
    attention_forward_fused_f32(out, probs, qkv, transposed, B, T, H, E);
    attention_ref(ref, ref_p, qkv, B, T, H, E);
    expect_close_arr("fused attention out", out, ref, no, 1e-5, 1e-5);
    expect_close_arr("fused attention probs", probs, ref_p, np, 1e-6, 1e-5);

    attention_forward(out_want, probs_want, qkv, B, T, H, E);
    attention_backward(d_want, scratch, d_out, qkv, probs_want, B, T, H, E);
    fill_const(d_qkv, nq, NAN);
    fill_const(scratch, np, NAN);
    attention_backward_fused_f32(d_qkv, scratch, d_out, qkv, probs, transposed, B, T, H, E);
    expect_close_farr("fused attention d_qkv = attention_backward's", d_qkv, d_want, nq, 1e-5, 1e-4);

    /* large scores: the softmax subtracts each row's max */
    for (size_t i = 0; i < nq; i++) qkv[i] *= 8.0f;
    attention_forward_fused_f32(out, probs, qkv, transposed, B, T, H, E);
    attention_ref(ref, ref_p, qkv, B, T, H, E);
    expect_all_finite("fused attention large scores", out, no);
    expect_close_arr("fused attention large scores probs", probs, ref_p, np, 1e-5, 1e-4);

    free(qkv), free(out), free(probs), free(d_out), free(d_qkv), free(d_want), free(scratch), free(probs_want);
    free(out_want), free(transposed), free(ref), free(ref_p);
}

/* ============================================== patchify / unpatchify ==== */

struct patch_ctx {
    int unpatch;
    float *src, *dst;
    const float *r;
    int B, C, S, P;
    size_t n_out;
};

static double patch_loss(void *p) {
    struct patch_ctx *c = p;
    if (c->unpatch)
        unpatchify_forward(c->dst, c->src, c->B, c->C, c->S, c->P);
    else
        patchify_forward(c->dst, c->src, c->B, c->C, c->S, c->P);
    return dot_fd(c->r, c->dst, c->n_out);
}

static void test_patchify(void) {
    const int B = 2, C = 3, S = 4, P = 2, G = S / P;
    const size_t n = (size_t)B * C * S * S; /* = B * G*G * C*P*P */
    float *img = falloc(n), *pat = falloc(n), *tok = falloc(n), *img2 = falloc(n);

    /* exact index map: image value encodes (b, c, y, x) */
    for (int b = 0; b < B; b++)
        for (int ch = 0; ch < C; ch++)
            for (int y = 0; y < S; y++)
                for (int x = 0; x < S; x++)
                    img[(((size_t)b * C + ch) * S + y) * S + x] = (float)(1000 * b + 100 * ch + 10 * y + x);
    fill_const(pat, n, NAN);
    patchify_forward(pat, img, B, C, S, P);
    /* batch 0, token 1 = grid (row 0, col 1): vector in (channel, py, px) order */
    const float tok1[12] = {2, 3, 12, 13, 102, 103, 112, 113, 202, 203, 212, 213};
    expect_close_farr("patchify b0 token1 literal", pat + 1 * C * P * P, tok1, 12, 0.0, 0.0);
    /* batch 1, token 2 = grid (row 1, col 0) */
    const float tok2[12] = {1020, 1021, 1030, 1031, 1120, 1121, 1130, 1131, 1220, 1221, 1230, 1231};
    expect_close_farr("patchify b1 token2 literal", pat + ((size_t)1 * G * G + 2) * C * P * P, tok2, 12,
                      0.0, 0.0);
    double *want = malloc(n * sizeof *want);
    for (int b = 0; b < B; b++)
        for (int gy = 0; gy < G; gy++)
            for (int gx = 0; gx < G; gx++)
                for (int ch = 0; ch < C; ch++)
                    for (int py = 0; py < P; py++)
                        for (int px = 0; px < P; px++) {
                            size_t t = (size_t)b * G * G + (size_t)gy * G + gx;
                            size_t j = ((size_t)ch * P + py) * P + px;
                            want[t * C * P * P + j] =
                                1000 * b + 100 * ch + 10 * (gy * P + py) + (gx * P + px);
                        }
    expect_close_arr("patchify index map", pat, want, n, 0.0, 0.0);

    /* unpatchify: token vector in (py, px, channel) order; token value encodes (b, t, j) */
    for (int b = 0; b < B; b++)
        for (int t = 0; t < G * G; t++)
            for (int j = 0; j < P * P * C; j++)
                tok[((size_t)b * G * G + t) * P * P * C + j] = (float)(1000 * b + 100 * t + j);
    fill_const(img2, n, NAN);
    unpatchify_forward(img2, tok, B, C, S, P);
    /* image[0, c=1, y=1, x=2]: token (gy 0, gx 1) = 1, j = (py 1 * P + px 0) * C + c 1 = 7 */
    CHECK_CLOSE(img2[((0 * C + 1) * S + 1) * S + 2], 107.0, 0.0, 0.0);
    /* image[1, c=2, y=3, x=1]: token (gy 1, gx 0) = 2, j = (1 * 2 + 1) * 3 + 2 = 11 */
    CHECK_CLOSE(img2[((1 * C + 2) * S + 3) * S + 1], 1211.0, 0.0, 0.0);
    for (int b = 0; b < B; b++)
        for (int ch = 0; ch < C; ch++)
            for (int y = 0; y < S; y++)
                for (int x = 0; x < S; x++) {
                    int t = (y / P) * G + x / P, j = ((y % P) * P + x % P) * C + ch;
                    want[(((size_t)b * C + ch) * S + y) * S + x] = 1000 * b + 100 * t + j;
                }
    expect_close_arr("unpatchify index map", img2, want, n, 0.0, 0.0);

    /* backward is the adjoint: <P x, y> = <x, P^T y> (both are permutations, so the
     * inner products agree up to summation order only) */
    float *x = falloc(n), *y = falloc(n), *px = falloc(n), *pty = falloc(n);
    fill_normal(x, n, 0.0, 1.0);
    fill_normal(y, n, 0.0, 1.0);
    patchify_forward(px, x, B, C, S, P);
    fill_const(pty, n, NAN);
    patchify_backward(pty, y, B, C, S, P);
    CHECK_CLOSE(dot_fd(px, y, n), dot_fd(x, pty, n), 1e-9, 1e-12);
    unpatchify_forward(px, x, B, C, S, P);
    fill_const(pty, n, NAN);
    unpatchify_backward(pty, y, B, C, S, P);
    CHECK_CLOSE(dot_fd(px, y, n), dot_fd(x, pty, n), 1e-9, 1e-12);

    /* finite differences, and overwrite of the gradient buffer */
    float *r = falloc(n), *g = falloc(n), *a = falloc(n);
    fill_normal(r, n, 0.0, 1.0);
    struct patch_ctx c = {0, x, px, r, B, C, S, P, n};
    fill_const(g, n, NAN);
    patchify_backward(g, r, B, C, S, P);
    check_grad("patchify d_image", x, n, g, patch_loss, &c, H_DEFAULT, GRAD_TOL);
    fill_normal(a, n, 0.0, 3.0);
    patchify_backward(a, r, B, C, S, P);
    expect_identical("patchify d_image overwrites", a, g, n);
    c.unpatch = 1;
    fill_const(g, n, NAN);
    unpatchify_backward(g, r, B, C, S, P);
    check_grad("unpatchify d_tokens", x, n, g, patch_loss, &c, H_DEFAULT, GRAD_TOL);
    fill_normal(a, n, 0.0, 3.0);
    unpatchify_backward(a, r, B, C, S, P);
    expect_identical("unpatchify d_tokens overwrites", a, g, n);

    free(img), free(pat), free(tok), free(img2), free(want), free(x), free(y), free(px);
    free(pty), free(r), free(g), free(a);
}

/* ======================================================== embeddings ==== */

static void pos_embed_ref(double *out, int dim, int grid) {
    int E = dim / 2, half = E / 2; /* each axis: E values = [sin(pos w_k), cos(pos w_k)] */
    for (int row = 0; row < grid; row++)
        for (int col = 0; col < grid; col++) {
            double *o = out + ((size_t)row * grid + col) * dim;
            for (int k = 0; k < half; k++) {
                double omega = 1.0 / pow(10000.0, (double)k / half);
                o[k] = sin(col * omega); /* first half of dim: column (w) index */
                o[half + k] = cos(col * omega);
                o[E + k] = sin(row * omega); /* second half: row (h) index */
                o[E + half + k] = cos(row * omega);
            }
        }
}

static void test_pos_embed(void) {
    float out8[4 * 8];
    double ref8[4 * 8];
    pos_embed_2d_sincos(out8, 8, 2);
    pos_embed_ref(ref8, 8, 2);
    expect_close_arr("pos_embed dim 8 grid 2", out8, ref8, 32, 1e-6, 0.0);
    /* spelled out: token 1 = (row 0, col 1), omega = {1, 1/100} */
    const double tok1[8] = {sin(1.0), sin(0.01), cos(1.0), cos(0.01), 0, 0, 1, 1};
    expect_close_arr("pos_embed token 1 literal", out8 + 8, tok1, 8, 1e-6, 0.0);
    /* token 2 = (row 1, col 0) */
    const double tok2[8] = {0, 0, 1, 1, sin(1.0), sin(0.01), cos(1.0), cos(0.01)};
    expect_close_arr("pos_embed token 2 literal", out8 + 16, tok2, 8, 1e-6, 0.0);

    enum { DIM = 16, GRID = 5 };
    float out[GRID * GRID * DIM];
    double ref[GRID * GRID * DIM];
    pos_embed_2d_sincos(out, DIM, GRID);
    pos_embed_ref(ref, DIM, GRID);
    expect_close_arr("pos_embed dim 16 grid 5", out, ref, GRID * GRID * DIM, 2e-6, 0.0);
}

struct ts_ctx {
    float *t, *out;
    const float *r;
    int batch, dim;
};

static double ts_loss(void *p) {
    struct ts_ctx *c = p;
    timestep_embedding_forward(c->out, c->t, c->batch, c->dim);
    return dot_fd(c->r, c->out, (size_t)c->batch * c->dim);
}

static void test_timestep_embedding(void) {
    enum { B = 3, DIM = 8, HALF = DIM / 2 };
    float t[B] = {-3.1f, 0.5f, 2.2f}, out[B * DIM], r[B * DIM], d_t[B];
    double ref[B * DIM];
    fill_normal(r, B * DIM, 0.0, 1.0);
    timestep_embedding_forward(out, t, B, DIM);
    for (int b = 0; b < B; b++)
        for (int i = 0; i < HALF; i++) {
            double f = exp(-log(10000.0) * i / HALF);
            ref[b * DIM + i] = cos(t[b] * f);
            ref[b * DIM + HALF + i] = sin(t[b] * f);
        }
    expect_close_arr("timestep_embedding_forward", out, ref, B * DIM, 2e-6, 0.0);

    /* t = 0: cos part exactly 1, sin part exactly 0 */
    float t0 = 0.0f, o0[DIM];
    timestep_embedding_forward(o0, &t0, 1, DIM);
    const double want0[DIM] = {1, 1, 1, 1, 0, 0, 0, 0};
    expect_close_arr("timestep_embedding at t=0", o0, want0, DIM, 0.0, 0.0);

    /* larger t as used in training (t up to 999) */
    float tb[2] = {999.0f, 250.0f}, ob[2 * DIM];
    double rb[2 * DIM];
    timestep_embedding_forward(ob, tb, 2, DIM);
    for (int b = 0; b < 2; b++)
        for (int i = 0; i < HALF; i++) {
            double f = exp(-log(10000.0) * i / HALF);
            rb[b * DIM + i] = cos(tb[b] * f);
            rb[b * DIM + HALF + i] = sin(tb[b] * f);
        }
    /* float32 frequencies: t f has an absolute error of ~1e3 * 6e-8 */
    expect_close_arr("timestep_embedding t=999,250", ob, rb, 2 * DIM, 2e-4, 0.0);

    fill_const(d_t, B, NAN);
    timestep_embedding_backward(d_t, r, t, B, DIM);
    struct ts_ctx c = {t, out, r, B, DIM};
    check_grad("timestep_embedding d_t", t, B, d_t, ts_loss, &c, 1e-3f, GRAD_TOL);
    float a[B] = {5, -7, 9};
    timestep_embedding_backward(a, r, t, B, DIM);
    expect_close_farr("timestep_embedding d_t overwrites", a, d_t, B, 0.0, 0.0);
}

struct emb_ctx {
    float *table, *out;
    const float *r;
    const int *labels;
    int batch, dim;
};

static double emb_loss(void *p) {
    struct emb_ctx *c = p;
    embedding_forward(c->out, c->table, c->labels, c->batch, c->dim);
    return dot_fd(c->r, c->out, (size_t)c->batch * c->dim);
}

static void test_embedding(void) {
    enum { ROWS = 5, DIM = 6, B = 7 };
    /* row 4 is the null class; labels repeat (2 three times, 4 twice), row 3 unused */
    const int labels[B] = {2, 0, 2, 4, 2, 1, 4};
    float table[ROWS * DIM], out[B * DIM], r[B * DIM], d_table[ROWS * DIM];
    fill_normal(table, ROWS * DIM, 0.0, 1.0);
    fill_normal(r, B * DIM, 0.0, 1.0);
    embedding_forward(out, table, labels, B, DIM);
    for (int b = 0; b < B; b++)
        expect_identical("embedding_forward row copy", out + b * DIM, table + labels[b] * DIM, DIM);

    fill_const(d_table, ROWS * DIM, 0.0f);
    embedding_backward(d_table, r, labels, B, DIM);
    struct emb_ctx c = {table, out, r, labels, B, DIM};
    check_grad("embedding d_table", table, ROWS * DIM, d_table, emb_loss, &c, H_DEFAULT, GRAD_TOL);
    float zero[DIM] = {0};
    expect_identical("embedding unused row has zero grad", d_table + 3 * DIM, zero, DIM);

    float p[ROWS * DIM], a[ROWS * DIM];
    double want[ROWS * DIM];
    fill_normal(p, ROWS * DIM, 0.0, 3.0);
    memcpy(a, p, sizeof a);
    embedding_backward(a, r, labels, B, DIM);
    embedding_backward(a, r, labels, B, DIM);
    for (int i = 0; i < ROWS * DIM; i++) want[i] = (double)p[i] + 2.0 * d_table[i];
    expect_close_arr("embedding d_table accumulates", a, want, ROWS * DIM, 1e-5, 1e-6);
}

/* ============================================================== loss ==== */

struct mse_ctx {
    float *pred;
    const float *target, *weight;
    float d_loss;
    int batch, per;
};

static double mse_loss(void *p) {
    struct mse_ctx *c = p;
    return (double)c->d_loss * weighted_mse_forward(NULL, c->pred, c->target, c->weight, c->batch, c->per);
}

static void test_weighted_mse(void) {
    enum { B = 3, PER = 5, N = B * PER };
    float pred[N], target[N], d_pred[N], psl[B], a[N];
    const float weight[B] = {0.5f, 2.0f, 0.0f};
    const float d_loss = 0.7f;
    fill_normal(pred, N, 0.0, 1.0);
    fill_normal(target, N, 0.0, 1.0);

    for (int wi = 0; wi < 2; wi++) {
        const float *w = wi == 0 ? weight : NULL;
        const char *tag = wi == 0 ? "weighted_mse" : "weighted_mse(weight NULL)";
        char label[96];
        double ref_ps[B], ref = 0.0;
        for (int b = 0; b < B; b++) {
            double s = 0.0;
            for (int j = 0; j < PER; j++) {
                double d = (double)pred[b * PER + j] - target[b * PER + j];
                s += d * d;
            }
            ref_ps[b] = (w ? w[b] : 1.0) * s / PER;
            ref += ref_ps[b];
        }
        ref /= B;
        fill_const(psl, B, NAN);
        float loss = weighted_mse_forward(psl, pred, target, w, B, PER);
        snprintf(label, sizeof label, "%s forward", tag);
        CHECK_MSG(fabs(loss - ref) <= 1e-6 * fabs(ref) + 1e-7, "%s: %.9g vs %.9g", label, loss, ref);
        snprintf(label, sizeof label, "%s per_sample_loss", tag);
        expect_close_arr(label, psl, ref_ps, B, 1e-7, 1e-6);
        float loss2 = weighted_mse_forward(NULL, pred, target, w, B, PER);
        CHECK_MSG(memcmp(&loss, &loss2, sizeof loss) == 0, "%s: per_sample_loss NULL changes the loss",
                  tag);

        fill_const(d_pred, N, NAN);
        weighted_mse_backward(d_pred, d_loss, pred, target, w, B, PER);
        struct mse_ctx c = {pred, target, w, d_loss, B, PER};
        snprintf(label, sizeof label, "%s d_pred", tag);
        check_grad(label, pred, N, d_pred, mse_loss, &c, H_DEFAULT, GRAD_TOL);
        fill_normal(a, N, 0.0, 3.0);
        weighted_mse_backward(a, d_loss, pred, target, w, B, PER);
        snprintf(label, sizeof label, "%s d_pred overwrites", tag);
        expect_close_farr(label, a, d_pred, N, 0.0, 0.0);
        if (w) {
            float zero[PER] = {0};
            expect_close_farr("weighted_mse zero weight, zero grad", d_pred + 2 * PER, zero, PER, 0.0, 0.0);
        }
    }
}

/* =========================================================== helpers ==== */

static void test_add(void) {
    enum { N = 13, ROWS = 3, DIM = 4 };
    float a[N], b[N], out[N];
    double want[N];
    fill_normal(a, N, 0.0, 1.0);
    fill_normal(b, N, 0.0, 1.0);
    for (int i = 0; i < N; i++) want[i] = (double)(a[i] + b[i]);
    add_forward(out, a, b, N);
    expect_close_arr("add_forward", out, want, N, 0.0, 0.0);
    add_forward(a, a, b, N); /* out aliases a */
    expect_close_arr("add_forward aliased", a, want, N, 0.0, 0.0);

    float m[ROWS * DIM], row[DIM];
    double wm[ROWS * DIM];
    fill_normal(m, ROWS * DIM, 0.0, 1.0);
    fill_normal(row, DIM, 0.0, 1.0);
    for (int i = 0; i < ROWS; i++)
        for (int j = 0; j < DIM; j++) wm[i * DIM + j] = (double)(m[i * DIM + j] + row[j]);
    add_row_broadcast(m, row, ROWS, DIM);
    expect_close_arr("add_row_broadcast", m, wm, ROWS * DIM, 0.0, 0.0);
}

/* ======================================================= determinism ==== */

static void set_threads(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n);
#else
    (void)n;
#endif
}

/* Reductions give bit-identical results between calls and across thread counts. */
static void test_determinism(void) {
#ifdef _OPENMP
    const int max_threads = omp_get_max_threads();
#else
    const int max_threads = 1;
#endif
    const int counts[3] = {1, 3, 4};

    /* linear_backward: d_bias and d_weight reduce over rows (nout > 128 so that a
     * GEMM split into tiles of the result has more than one tile) */
    {
        const int rows = 777, nin = 19, nout = 300;
        const size_t nw = (size_t)nout * nin;
        float *in = falloc((size_t)rows * nin), *w = falloc(nw);
        float *dout = falloc((size_t)rows * nout);
        fill_normal(in, (size_t)rows * nin, 0.0, 1.0);
        fill_normal(w, nw, 0.0, 1.0);
        fill_normal(dout, (size_t)rows * nout, 0.0, 1.0);
        float *dw[4], *db[4];
        for (int k = 0; k < 4; k++) {
            dw[k] = falloc(nw);
            fill_const(dw[k], nw, 0.25f);
            db[k] = falloc(nout);
            fill_const(db[k], nout, 0.25f);
            if (k >= 2) set_threads(counts[k == 2 ? 0 : 2]);
            linear_backward(NULL, 0.0f, dw[k], db[k], dout, in, w, rows, nin, nout);
            set_threads(max_threads);
        }
        expect_identical("linear d_weight repeat", dw[0], dw[1], nw);
        expect_identical("linear d_bias repeat", db[0], db[1], nout);
        expect_identical("linear d_weight 1 vs 4 threads", dw[2], dw[3], nw);
        expect_identical("linear d_weight vs default threads", dw[0], dw[2], nw);
        expect_identical("linear d_bias 1 vs 4 threads", db[2], db[3], nout);
        expect_identical("linear d_bias vs default threads", db[0], db[2], nout);
        free(in), free(w), free(dout);
        for (int k = 0; k < 4; k++) free(dw[k]), free(db[k]);
    }

    /* modulate_backward: d_shift, d_scale reduce over tokens */
    {
        const int batch = 3, tokens = 257, dim = 33, stride = 6 * dim;
        const size_t n = (size_t)batch * tokens * dim, nm = (size_t)batch * stride;
        float *in = falloc(n), *dout = falloc(n), *mod = falloc(nm), *d_in = falloc(n);
        fill_normal(in, n, 0.0, 1.0);
        fill_normal(dout, n, 0.0, 1.0);
        fill_normal(mod, nm, 0.0, 1.0);
        float *dm[4];
        for (int k = 0; k < 4; k++) {
            dm[k] = falloc(nm);
            fill_const(dm[k], nm, 0.5f);
            if (k >= 2) set_threads(counts[k == 2 ? 0 : 1]);
            modulate_backward(d_in, dm[k] + 3 * dim, dm[k] + 4 * dim, dout, in, mod + 4 * dim, stride,
                              batch, tokens, dim);
            set_threads(max_threads);
        }
        expect_identical("modulate d_shift/d_scale repeat", dm[0], dm[1], nm);
        expect_identical("modulate d_shift/d_scale 1 vs 3 threads", dm[2], dm[3], nm);
        expect_identical("modulate d_shift/d_scale vs default threads", dm[0], dm[2], nm);
        free(in), free(dout), free(mod), free(d_in);
        for (int k = 0; k < 4; k++) free(dm[k]);
    }

    /* gated_residual_backward: d_gate reduces over tokens */
    {
        const int batch = 3, tokens = 257, dim = 33, stride = 6 * dim;
        const size_t n = (size_t)batch * tokens * dim, nm = (size_t)batch * stride;
        float *y = falloc(n), *dx = falloc(n), *mod = falloc(nm), *d_y = falloc(n);
        fill_normal(y, n, 0.0, 1.0);
        fill_normal(dx, n, 0.0, 1.0);
        fill_normal(mod, nm, 0.0, 1.0);
        float *dm[4];
        for (int k = 0; k < 4; k++) {
            dm[k] = falloc(nm);
            fill_const(dm[k], nm, 0.5f);
            if (k >= 2) set_threads(counts[k == 2 ? 0 : 1]);
            gated_residual_backward(d_y, dm[k] + 2 * dim, dx, y, mod + 2 * dim, stride, batch, tokens, dim);
            set_threads(max_threads);
        }
        expect_identical("gated_residual d_gate repeat", dm[0], dm[1], nm);
        expect_identical("gated_residual d_gate 1 vs 3 threads", dm[2], dm[3], nm);
        expect_identical("gated_residual d_gate vs default threads", dm[0], dm[2], nm);
        free(y), free(dx), free(mod), free(d_y);
        for (int k = 0; k < 4; k++) free(dm[k]);
    }

    /* embedding_backward: many repeated labels */
    {
        const int rows = 5, dim = 37, batch = 301;
        int *labels = malloc(batch * sizeof *labels);
        for (int b = 0; b < batch; b++) labels[b] = (int)(splitmix64() % (uint64_t)rows);
        float *dout = falloc((size_t)batch * dim);
        fill_normal(dout, (size_t)batch * dim, 0.0, 1.0);
        float *dt[4];
        for (int k = 0; k < 4; k++) {
            dt[k] = falloc((size_t)rows * dim);
            fill_const(dt[k], (size_t)rows * dim, 0.125f);
            if (k >= 2) set_threads(counts[k == 2 ? 0 : 1]);
            embedding_backward(dt[k], dout, labels, batch, dim);
            set_threads(max_threads);
        }
        expect_identical("embedding d_table repeat", dt[0], dt[1], (size_t)rows * dim);
        expect_identical("embedding d_table 1 vs 3 threads", dt[2], dt[3], (size_t)rows * dim);
        expect_identical("embedding d_table vs default threads", dt[0], dt[2], (size_t)rows * dim);
        /* and the sums are right */
        double *want = malloc((size_t)rows * dim * sizeof *want);
        for (int i = 0; i < rows * dim; i++) want[i] = 0.125;
        for (int b = 0; b < batch; b++)
            for (int j = 0; j < dim; j++) want[labels[b] * dim + j] += dout[(size_t)b * dim + j];
        expect_close_arr("embedding d_table sums", dt[0], want, (size_t)rows * dim, 1e-4, 1e-5);
        free(labels), free(dout), free(want);
        for (int k = 0; k < 4; k++) free(dt[k]);
    }
}

int main(void) {
    const char *v = getenv("TEST_OPS_VERBOSE");
    verbose = v && *v && strcmp(v, "0") != 0;
    const char *seed = getenv("TEST_OPS_SEED"); /* for trying the tolerances on other draws */
    if (seed && *seed) rng_state = strtoull(seed, NULL, 0);

    test_linear();
    test_linear_batch_invariance();
    test_layernorm();
    test_modulate();
    test_layernorm_modulate_fused();
    test_gated_residual();
    test_activation("gelu_tanh", gelu_tanh_forward, gelu_tanh_backward, gelu_ref);
    test_activation("silu", silu_forward, silu_backward, silu_ref);
    test_activation("silu keeping its slope", silu_keep_slope_as_forward, silu_from_slope_as_backward, silu_ref);
    test_activation("gelu_tanh keeping its slope", gelu_keep_slope_as_forward, gelu_from_slope_as_backward, gelu_ref);
    test_keep_slope("silu", silu_forward, silu_backward, silu_forward_keep_slope, silu_backward_from_slope, 1e-6);
    test_keep_slope("gelu_tanh", gelu_tanh_forward, gelu_tanh_backward, gelu_tanh_forward_keep_slope,
                    gelu_tanh_backward_from_slope, 0.0);
    test_attention();
    test_attention_fused();
    test_patchify();
    test_pos_embed();
    test_timestep_embedding();
    test_embedding();
    test_weighted_mse();
    test_add();
    test_determinism();
    return test_finish("test_ops");
}

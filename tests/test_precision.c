/* The 16-bit formats of mixed precision (base/precision.h): bfloat16 and IEEE
 * half conversions against hand-worked bit patterns (ties to even, the largest
 * finite values, overflow to infinity, subnormals, signed zero, NaN), every
 * 16-bit pattern round-tripping, random floats against a reference that picks
 * the nearer neighbour in double (and against the F16C instruction where the
 * build has it), and the array helpers (store, load, round) against the scalar
 * functions. The DiT in bf16 and fp16 against the same DiT in fp32 (output and
 * every gradient within the format's precision), allocation-free and
 * bit-identical for any thread count, with about half the activation memory,
 * and an fp16 gradient that overflows becoming infinite. The AVX-512 BF16 GEMM
 * (where the CPU has it) against a double reference for every transpose, odd
 * sizes, both betas, and bit-identical for any thread count. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__F16C__)
#include <immintrin.h>
#endif

#include <omp.h>

#include "allocation_counter.h"
#include "dit.h"
#include "gemm_bf16.h"
#include "gemm_onednn.h"
#include "ops.h"
#include "precision.h"
#include "rng.h"
#include "test_util.h"

static float from_bits(uint32_t u) { return precision_bits_float(u); }

#define CHECK_BITS(got, want)                                                                     \
    do {                                                                                          \
        unsigned got_ = (unsigned)(got), want_ = (unsigned)(want);                                \
        CHECK_MSG(got_ == want_, "%s = 0x%04x, expected 0x%04x", #got, got_, want_);              \
    } while (0)

static void test_bf16_patterns(void) {
    CHECK_BITS(bf16_from_float(1.0f), 0x3f80);
    CHECK_BITS(bf16_from_float(-2.0f), 0xc000);
    CHECK_BITS(bf16_from_float(3.140625f), 0x4049);
    CHECK_BITS(bf16_from_float(from_bits(0x3f808000)), 0x3f80); /* tie, even below */
    CHECK_BITS(bf16_from_float(from_bits(0x3f818000)), 0x3f82); /* tie, even above */
    CHECK_BITS(bf16_from_float(from_bits(0x3f808001)), 0x3f81); /* just above the tie */
    CHECK_BITS(bf16_from_float(from_bits(0x3f807fff)), 0x3f80); /* just below */
    CHECK_BITS(bf16_from_float(from_bits(0x7f7f7fff)), 0x7f7f); /* largest finite stays */
    CHECK_BITS(bf16_from_float(from_bits(0x7f7fffff)), 0x7f80); /* FLT_MAX rounds to infinity */
    CHECK_BITS(bf16_from_float(INFINITY), 0x7f80);
    CHECK_BITS(bf16_from_float(-INFINITY), 0xff80);
    CHECK_BITS(bf16_from_float(0.0f), 0x0000);
    CHECK_BITS(bf16_from_float(-0.0f), 0x8000);
    CHECK_BITS(bf16_from_float(from_bits(0x00008000)), 0x0000); /* subnormal tie to even (zero) */
    CHECK_BITS(bf16_from_float(from_bits(0x00018000)), 0x0002); /* subnormal tie to even */
    CHECK_BITS(bf16_from_float(from_bits(0x00008001)), 0x0001);
    CHECK_BITS(bf16_from_float(from_bits(0x7f800001)), 0x7fc0); /* signalling NaN made quiet */
    CHECK_BITS(bf16_from_float(from_bits(0xffc00000)), 0xffc0);
    CHECK(bf16_to_float(0x4049) == 3.140625f);
    CHECK(bf16_to_float(0x7f7f) == from_bits(0x7f7f0000));
    CHECK(isinf(bf16_to_float(0xff80)) && bf16_to_float(0xff80) < 0);
    CHECK(isnan(bf16_to_float(0x7fc0)));
    CHECK(precision_round(PRECISION_BF16, 1.00390625f) == 1.0f);
    CHECK(precision_round(PRECISION_BF16, 1.01171875f) == 1.015625f);
}

static void test_fp16_patterns(void) {
    CHECK_BITS(fp16_from_float(1.0f), 0x3c00);
    CHECK_BITS(fp16_from_float(-2.0f), 0xc000);
    CHECK_BITS(fp16_from_float(0.1f), 0x2e66);
    CHECK_BITS(fp16_from_float(0.333333343f), 0x3555);
    CHECK_BITS(fp16_from_float(1.0f + 0x1p-11f), 0x3c00);        /* tie, even below */
    CHECK_BITS(fp16_from_float(1.0f + 3 * 0x1p-11f), 0x3c02);    /* tie, even above */
    CHECK_BITS(fp16_from_float(1.0f + 0x1p-11f + 0x1p-20f), 0x3c01);
    CHECK_BITS(fp16_from_float(65504.0f), 0x7bff);               /* the largest finite half */
    CHECK_BITS(fp16_from_float(65519.996f), 0x7bff);             /* below the midpoint to 2^16 */
    CHECK_BITS(fp16_from_float(65520.0f), 0x7c00);               /* the midpoint: to even, infinity */
    CHECK_BITS(fp16_from_float(-65520.0f), 0xfc00);
    CHECK_BITS(fp16_from_float(1e6f), 0x7c00);
    CHECK_BITS(fp16_from_float(3.4e38f), 0x7c00);
    CHECK_BITS(fp16_from_float(INFINITY), 0x7c00);
    CHECK_BITS(fp16_from_float(-INFINITY), 0xfc00);
    CHECK_BITS(fp16_from_float(0.0f), 0x0000);
    CHECK_BITS(fp16_from_float(-0.0f), 0x8000);
    CHECK_BITS(fp16_from_float(0x1p-14f), 0x0400);               /* the smallest normal */
    CHECK_BITS(fp16_from_float(0x1p-14f - 0x1p-25f), 0x0400);    /* tie between 0x03ff and 0x0400: even */
    CHECK_BITS(fp16_from_float(0x1p-14f - 0x1p-24f), 0x03ff);    /* the largest subnormal */
    CHECK_BITS(fp16_from_float(0x1p-24f), 0x0001);               /* the smallest subnormal */
    CHECK_BITS(fp16_from_float(0x1p-25f), 0x0000);               /* tie between 0 and 2^-24: even, zero */
    CHECK_BITS(fp16_from_float(-0x1p-25f), 0x8000);
    CHECK_BITS(fp16_from_float(0x1.8p-25f), 0x0001);
    CHECK_BITS(fp16_from_float(3 * 0x1p-25f), 0x0002);           /* 1.5 * 2^-24: tie, even above */
    CHECK_BITS(fp16_from_float(5 * 0x1p-25f), 0x0002);           /* 2.5 * 2^-24: tie, even below */
    CHECK_BITS(fp16_from_float(1e-10f), 0x0000);
    CHECK_BITS(fp16_from_float(from_bits(0x00000001)), 0x0000);  /* float subnormal */
    CHECK_BITS(fp16_from_float(from_bits(0x7f800001)), 0x7e00);  /* NaN */
    CHECK_BITS(fp16_from_float(from_bits(0xffc00000)), 0xfe00);
    CHECK(fp16_to_float(0x0001) == 0x1p-24f);
    CHECK(fp16_to_float(0x03ff) == 1023 * 0x1p-24f);
    CHECK(fp16_to_float(0x0400) == 0x1p-14f);
    CHECK(fp16_to_float(0x7bff) == 65504.0f);
    CHECK(fp16_to_float(0x3555) == 0.333251953125f);
    CHECK(fp16_to_float(0xc000) == -2.0f);
    CHECK(isinf(fp16_to_float(0x7c00)) && fp16_to_float(0x7c00) > 0);
    CHECK(isinf(fp16_to_float(0xfc00)) && fp16_to_float(0xfc00) < 0);
    CHECK(isnan(fp16_to_float(0x7e00)) && isnan(fp16_to_float(0x7c01)));
    CHECK(signbit(fp16_to_float(0x8000)) && fp16_to_float(0x8000) == 0.0f);
    CHECK(precision_round(PRECISION_FP16, 70000.0f) == INFINITY);
    CHECK(precision_round(PRECISION_FP32, 70000.0f) == 70000.0f);
}

/* Every 16-bit pattern that is not a NaN converts to a float and back to itself. */
static void test_round_trips(void) {
    int bad_bf16 = 0, bad_fp16 = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float b = bf16_to_float((uint16_t)h), f = fp16_to_float((uint16_t)h);
        if (!isnan(b) && bf16_from_float(b) != h) bad_bf16++;
        if (!isnan(f) && fp16_from_float(f) != h) bad_fp16++;
        if (isnan(b) && !isnan(bf16_to_float(bf16_from_float(b)))) bad_bf16++;
        if (isnan(f) && !isnan(fp16_to_float(fp16_from_float(f)))) bad_fp16++;
    }
    CHECK_MSG(bad_bf16 == 0, "%d bf16 patterns do not round-trip", bad_bf16);
    CHECK_MSG(bad_fp16 == 0, "%d fp16 patterns do not round-trip", bad_fp16);
}

/* The reference: among the two neighbours of f in the format (found by bits),
 * the nearer in double, ties to the even mantissa; beyond the largest finite
 * value the midpoint to the next power of two decides infinity. */
static int reference_fp16(float f) {
    if (isnan(f)) return -1;
    double a = fabs((double)f);
    int sign = signbit(f) ? 0x8000 : 0;
    if (a >= 65520.0) return sign | 0x7c00;
    /* the largest half <= a */
    int lo = 0;
    for (int step = 0x4000; step; step >>= 1)
        if (lo + step <= 0x7bff && (double)fp16_to_float((uint16_t)(lo + step)) <= a) lo += step;
    if ((double)fp16_to_float((uint16_t)lo) == a) return sign | lo;
    double below = fp16_to_float((uint16_t)lo), above = lo == 0x7bff ? 65536.0 : fp16_to_float((uint16_t)(lo + 1));
    double d_lo = a - below, d_hi = above - a;
    int pick = d_lo < d_hi ? lo : d_hi < d_lo ? lo + 1 : (lo % 2 == 0 ? lo : lo + 1);
    return sign | pick;
}

static int reference_bf16(float f) {
    if (isnan(f)) return -1;
    uint32_t bits = precision_float_bits(f);
    uint32_t lo = bits >> 16, hi = lo + 1;
    double v = fabs((double)f), below = fabs((double)precision_bits_float(lo << 16));
    if (v == below) return (int)lo;
    /* above: the next pattern away from zero (for 0x7f7f that is infinity, whose
     * midpoint is 2^128 - 2^119 ... treated as a value 2^128). */
    double above = (hi & 0x7fff) == 0x7f80 ? ldexp(1.0, 128) : fabs((double)precision_bits_float(hi << 16));
    double d_lo = v - below, d_hi = above - v;
    return (int)(d_lo < d_hi ? lo : d_hi < d_lo ? hi : (lo % 2 == 0 ? lo : hi));
}

static void test_random_against_reference(void) {
    rng_stream rng = rng_stream_for(1, 2, 3);
    int bad_bf16 = 0, bad_fp16 = 0, bad_f16c = 0;
    for (int i = 0; i < 400000; i++) {
        /* random bits cover every exponent; scaled normals cover half's range densely */
        uint32_t bits = (uint32_t)rng_next_u64(&rng);
        float f = i % 2 ? precision_bits_float(bits) : rng_normal(&rng) * ldexpf(1.0f, (int)(bits % 48) - 30);
        if (isnan(f)) continue;
        if (bf16_from_float(f) != reference_bf16(f)) bad_bf16++;
        if (fp16_from_float(f) != reference_fp16(f)) bad_fp16++;
#if defined(__F16C__)
        if (fp16_from_float(f) != _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT)) bad_f16c++;
#endif
    }
    CHECK_MSG(bad_bf16 == 0, "%d floats rounded to bf16 differ from the reference", bad_bf16);
    CHECK_MSG(bad_fp16 == 0, "%d floats rounded to fp16 differ from the reference", bad_fp16);
    CHECK_MSG(bad_f16c == 0, "%d floats rounded to fp16 differ from the F16C instruction", bad_f16c);
}

static void test_arrays(void) {
    enum { N = 100003 }; /* several chunks and a partial one */
    float *x = malloc(N * sizeof(float)), *y = malloc(N * sizeof(float)), *z = malloc(N * sizeof(float));
    uint16_t *h = malloc(N * sizeof(uint16_t));
    rng_stream rng = rng_stream_for(4, 5, 6);
    for (int i = 0; i < N; i++) x[i] = rng_normal(&rng) * ldexpf(1.0f, (int)(rng_next_u64(&rng) % 40) - 26);
    x[7] = INFINITY, x[8] = -70000.0f, x[9] = NAN;
    for (int k = PRECISION_BF16; k <= PRECISION_FP16; k++) {
        memcpy(y, x, N * sizeof(float));
        precision_store((ldm_precision)k, h, y, N);
        precision_load((ldm_precision)k, z, h, N);
        int bad = 0;
        for (int i = 0; i < N; i++) {
            uint16_t want = k == PRECISION_BF16 ? bf16_from_float(x[i]) : fp16_from_float(x[i]);
            float value = precision_round((ldm_precision)k, x[i]);
            bad += h[i] != want || memcmp(&y[i], &value, 4) != 0 || memcmp(&z[i], &value, 4) != 0;
        }
        memcpy(z, x, N * sizeof(float));
        precision_round_array((ldm_precision)k, z, N);
        for (int i = 0; i < N; i++) bad += memcmp(&z[i], &y[i], 4) != 0;
        CHECK_MSG(bad == 0, "%s: %d array values differ from the scalar conversion", precision_name((ldm_precision)k),
                  bad);
    }
    memcpy(y, x, N * sizeof(float));
    precision_round_array(PRECISION_FP32, y, N);
    CHECK(memcmp(x, y, N * sizeof(float)) == 0);
    CHECK(y[8] == -70000.0f);
    free(x), free(y), free(z), free(h);
}

static void test_names(void) {
    CHECK(precision_from_name("fp32") == PRECISION_FP32);
    CHECK(precision_from_name("bf16") == PRECISION_BF16);
    CHECK(precision_from_name("fp16") == PRECISION_FP16);
    CHECK(precision_from_name("fp8") == -1);
    CHECK(strcmp(precision_name(PRECISION_BF16), "bf16") == 0);
    CHECK(precision_bytes(PRECISION_FP32) == 4 && precision_bytes(PRECISION_FP16) == 2);
}

enum { DIT_BATCH = 3, DIT_SAMPLE = 4 * 8 * 8 };

static const dit_shape small_shape = {.input_size = 8, .in_channels = 4, .patch_size = 2, .hidden_size = 32,
                                      .depth = 2, .num_heads = 4, .mlp_hidden = 128, .num_classes = 10};

typedef struct {
    float x[DIT_BATCH * DIT_SAMPLE], target[DIT_BATCH * DIT_SAMPLE], out[DIT_BATCH * DIT_SAMPLE];
    float d_out[DIT_BATCH * DIT_SAMPLE], d_x[DIT_BATCH * DIT_SAMPLE];
    float t[DIT_BATCH];
    float w[DIT_BATCH]; /* guidance scales, for a model with a guidance input */
    int y[DIT_BATCH];
    int guided;
} dit_inputs;

static void make_model(dit_model *m, ldm_precision precision, int guided) {
    dit_shape shape = small_shape;
    shape.guidance_input = guided;
    dit_create_precision(m, &shape, DIT_BATCH, precision);
    dit_init_weights(m, 7);
    /* DiT's zero init leaves the gates closed; open them so every path carries gradient. */
    rng_stream rng = rng_stream_for(11, 0, 0);
    for (size_t i = 0; i < m->table.trainable_numel; i++) m->params[i] += 0.05f * rng_normal(&rng);
}

static void make_inputs(dit_inputs *in, int guided) {
    rng_stream rng = rng_stream_for(12, 0, 0);
    in->guided = guided;
    for (int i = 0; i < DIT_BATCH * DIT_SAMPLE; i++) {
        in->x[i] = rng_normal(&rng);
        in->target[i] = rng_normal(&rng);
    }
    for (int b = 0; b < DIT_BATCH; b++) {
        in->t[b] = 100.0f * rng_normal(&rng);
        in->y[b] = 3 * b;
        in->w[b] = 1.0f + 1.5f * b;
    }
    in->y[2] = 10; /* the null class */
}

/* forward, loss, backward (d_loss scales the gradient); returns the loss */
static float dit_pass(dit_model *m, dit_inputs *in, float d_loss) {
    dit_zero_grad(m);
    dit_forward_guided(m, in->x, in->t, in->y, in->guided ? in->w : NULL, DIT_BATCH, in->out);
    float loss = weighted_mse_forward(NULL, in->out, in->target, NULL, DIT_BATCH, DIT_SAMPLE);
    weighted_mse_backward(in->d_out, d_loss, in->out, in->target, NULL, DIT_BATCH, DIT_SAMPLE);
    dit_backward(m, in->d_out, in->d_x, DIT_BATCH);
    return loss;
}


/* guided: the model with a guidance-scale input (dit_shape.guidance_input). */
static void test_dit_16bit(int guided) {
    static dit_inputs ref_in, in, again;
    make_inputs(&ref_in, guided);
    dit_model ref;
    make_model(&ref, PRECISION_FP32, guided);
    printf("DiT%s:\n", guided ? " with a guidance input" : "");
    float ref_loss = dit_pass(&ref, &ref_in, 1.0f);
    /* bf16 keeps 8 significant bits, fp16 11: errors of a few 2^-9 and 2^-12 after some layers */
    const double tolerance[3] = {0, 0.02, 0.003};
    for (int k = PRECISION_BF16; k <= PRECISION_FP16; k++) {
        const char *name = precision_name((ldm_precision)k);
        dit_model m;
        make_model(&m, (ldm_precision)k, guided);
        make_inputs(&in, guided);
        dit_pass(&m, &in, 1.0f); /* warm-up (lazy library set-up) */
        const long primitives = gemm_onednn_primitives_made();
        allocation_counting = 1;
        float loss = dit_pass(&m, &in, 1.0f);
        allocation_counting = 0;
        CHECK_MSG(allocation_count == 0, "%s: %ld allocations in a training pass", name, allocation_count);
        CHECK_MSG(gemm_onednn_primitives_made() == primitives, "%s: a training pass made oneDNN primitives", name);
        double out_error = test_relative_l2(in.out, ref_in.out, DIT_BATCH * DIT_SAMPLE);
        double grad_error = test_relative_l2(m.grads, ref.grads, m.table.trainable_numel);
        double dx_error = test_relative_l2(in.d_x, ref_in.d_x, DIT_BATCH * DIT_SAMPLE);
        printf("%s: loss %.9f (fp32 %.9f), relative L2 error: output %.2e, parameter gradient %.2e, input "
               "gradient %.2e\n", name, loss, ref_loss, out_error, grad_error, dx_error);
        CHECK_MSG(out_error < tolerance[k] && out_error > 0, "%s output error %.3g", name, out_error);
        CHECK_MSG(grad_error < 2 * tolerance[k] && grad_error > 0, "%s gradient error %.3g", name, grad_error);
        CHECK_MSG(dx_error < 2 * tolerance[k], "%s input gradient error %.3g", name, dx_error);
        CHECK_CLOSE(loss, ref_loss, 0, tolerance[k]);
        int bad = 0; /* each tensor's gradient on its own, so that no part is silently broken */
        for (int e = 0; e < m.table.count; e++) {
            const param_entry *p = &m.table.entries[e];
            if (!p->trainable) continue;
            double error = test_relative_l2(p->grad, ref.table.entries[e].grad, p->numel);
            if (!(error < 4 * tolerance[k])) {
                bad++;
                fprintf(stderr, "%s: %s gradient error %.3g\n", name, p->name, error);
            }
        }
        CHECK(bad == 0);
        CHECK(m.compute_params != m.params && ref.compute_params == ref.params);

        /* bit-identical with fewer threads */
        float *grads = malloc(sizeof(float) * m.table.trainable_numel);
        memcpy(grads, m.grads, sizeof(float) * m.table.trainable_numel);
        int threads = omp_get_max_threads();
        omp_set_num_threads(threads > 1 ? threads - 1 : 1);
        make_inputs(&again, guided);
        float loss_again = dit_pass(&m, &again, 1.0f);
        omp_set_num_threads(threads);
        CHECK(memcmp(&loss_again, &loss, sizeof loss) == 0);
        CHECK(memcmp(again.out, in.out, sizeof in.out) == 0);
        CHECK(memcmp(grads, m.grads, sizeof(float) * m.table.trainable_numel) == 0);
        free(grads);

        /* a gradient scaled beyond the format's range: infinite in fp16, finite in bf16 */
        dit_pass(&m, &in, 0x1p24f);
        int finite = 1;
        for (size_t i = 0; i < m.table.trainable_numel; i++) finite &= isfinite(m.grads[i]) != 0;
        CHECK_MSG(finite == (k == PRECISION_BF16), "%s: gradient scaled by 2^24 %s", name,
                  finite ? "stayed finite" : "overflowed");
        dit_destroy(&m);
    }
    dit_destroy(&ref);

    /* The activation memory of a 12-block model: 16-bit storage about halves it. */
    dit_shape deep = {.input_size = 8, .in_channels = 4, .patch_size = 1, .hidden_size = 96, .depth = 12,
                      .num_heads = 6, .mlp_hidden = 384, .num_classes = 10};
    dit_model a32, a16;
    dit_create_precision(&a32, &deep, 2, PRECISION_FP32);
    dit_create_precision(&a16, &deep, 2, PRECISION_BF16);
    double ratio = (double)a16.activation_bytes / (double)a32.activation_bytes;
    printf("activation bytes per image, depth 12: fp32 %zu, 16-bit %zu (%.2f)\n", a32.activation_bytes / 2,
           a16.activation_bytes / 2, ratio);
    CHECK_MSG(ratio < 0.6, "16-bit activation memory is %.2f of fp32's", ratio);
    dit_destroy(&a32);
    dit_destroy(&a16);
}

static void test_gemm_bf16(void) {
    if (!gemm_bf16_available()) {
        printf("gemm_bf16: this CPU has no AVX-512 BF16 (or LDM_CPU_GEMM=openblas, LDM_NO_BF16_GEMM is set): not tested\n");
        return;
    }
    const int shapes[][3] = {{1, 1, 1}, {7, 5, 3}, {37, 70, 129}, {100, 33, 600}, {13, 600, 17}, {64, 1100, 300}};
    rng_stream rng = rng_stream_for(21, 0, 0);
    double worst = 0;
    int threads = omp_get_max_threads();
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int variant = 0; variant < 8; variant++) {
            int ta = variant & 1, tb = (variant >> 1) & 1, accumulate = variant >> 2;
            int m = shapes[s][0], n = shapes[s][1], k = shapes[s][2], lda = ta ? m : k, ldb = tb ? k : n;
            float *a = malloc(sizeof(float) * m * k), *b = malloc(sizeof(float) * k * n);
            float *c = malloc(sizeof(float) * m * n), *c1 = malloc(sizeof(float) * m * n);
            for (int i = 0; i < m * k; i++) a[i] = precision_round(PRECISION_BF16, rng_normal(&rng));
            for (int i = 0; i < k * n; i++) b[i] = precision_round(PRECISION_BF16, rng_normal(&rng));
            for (int i = 0; i < m * n; i++) c[i] = c1[i] = accumulate ? rng_normal(&rng) : NAN; /* beta 0 ignores C */
            double *want = malloc(sizeof(double) * m * n);
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++) {
                    double sum = accumulate ? c[(size_t)i * n + j] : 0;
                    for (int p = 0; p < k; p++)
                        sum += (double)(ta ? a[(size_t)p * lda + i] : a[(size_t)i * lda + p]) *
                               (double)(tb ? b[(size_t)j * ldb + p] : b[(size_t)p * ldb + j]);
                    want[(size_t)i * n + j] = sum;
                }
            CHECK(gemm_bf16(ta, tb, m, n, k, a, lda, b, ldb, accumulate ? 1.0f : 0.0f, c, n) == 1);
            omp_set_num_threads(1);
            gemm_bf16(ta, tb, m, n, k, a, lda, b, ldb, accumulate ? 1.0f : 0.0f, c1, n);
            omp_set_num_threads(threads);
            double error = 0;
            for (int i = 0; i < m * n; i++) error = fmax(error, fabs(c[i] - want[i]) / (1.0 + sqrt((double)k)));
            worst = fmax(worst, error);
            CHECK_MSG(error < 1e-5, "gemm_bf16 m %d n %d k %d ta %d tb %d beta %d: error %.3g", m, n, k, ta, tb,
                      accumulate, error);
            CHECK(memcmp(c, c1, sizeof(float) * m * n) == 0);
            free(a), free(b), free(c), free(c1), free(want);
        }
    printf("gemm_bf16: largest error against double / (1 + sqrt(k)): %.2e\n", worst);
    /* inside a parallel region it declines (its packing buffer is shared) */
    float one = 1.0f;
    int declined = 0, team = 0;
#pragma omp parallel num_threads(2) reduction(+ : declined, team)
    {
        float out = 0.0f;
        declined += gemm_bf16(0, 0, 1, 1, 1, &one, 1, &one, 1, 0.0f, &out, 1) == 0;
        team += 1;
    }
    CHECK(team < 2 || declined == team);
}

int main(void) {
    test_bf16_patterns();
    test_fp16_patterns();
    test_round_trips();
    test_random_against_reference();
    test_arrays();
    test_names();
    test_gemm_bf16();
    test_dit_16bit(0);
    test_dit_16bit(1);
    return test_finish("test_precision");
}

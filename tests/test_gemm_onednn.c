/* The oneDNN GEMMs (model/gemm_onednn.c), bf16 and fp32, and the DiT's bf16 and
 * fp32 paths on them:
 * - every transpose, bias and beta against a double-precision product;
 * - a row of a forward or input-gradient product does not depend on the other
 *   rows (the number of rows, its position): what lets the DiT skip the
 *   per-sample cut of ops_linear.c;
 * - results do not depend on the thread count the primitives are made and run
 *   with, also for weight gradients whose k oneDNN would split over threads;
 * - a planned product makes no primitive when it runs, and a bf16 DiT's training
 *   pass makes none;
 * - a bf16 DiT draws a sample in a batch as the same bits as alone;
 * - the same for fp32 (gemm_onednn_f32, the fp32 DiT on oneDNN);
 * - gemm_onednn_f32_times is the product and then the multiply, bit for bit, and
 *   the fp32 DiT's gradients are the same bits with fc2's backward fused with
 *   GELU's slope and without.
 * The bf16 parts are skipped where the CPU has no AVX512_BF16; the whole test
 * exits 77 (skipped) where this build has no oneDNN. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dit.h"
#include "dit_graph.h"
#include "gemm_onednn.h"
#include "precision.h"
#include "rng.h"
#include "test_util.h"

typedef struct {
    int ta, tb, m, n, k, with_bias;
    float beta;
} product;

typedef struct {
    uint16_t *a, *b;       /* bf16 bits */
    float *a_f32, *b_f32;  /* the same values as fp32 */
    float *bias, *c_start; /* c_start: C before the product (beta 1) */
    size_t a_count, b_count;
} operands;

/* 1: the products below run through gemm_onednn_f32 on a_f32, b_f32. */
static int f32_mode;

static uint16_t *random_bits(rng_stream *rng, size_t count) {
    uint16_t *bits = malloc(sizeof(uint16_t) * count);
    for (size_t i = 0; i < count; i++) bits[i] = bf16_from_float(rng_normal(rng));
    return bits;
}

static operands make_operands(const product *p, uint64_t seed) {
    rng_stream rng = rng_stream_for(seed, 0, 0);
    operands o;
    o.a_count = (size_t)p->m * p->k;
    o.b_count = (size_t)p->k * p->n;
    o.a = random_bits(&rng, o.a_count);
    o.b = random_bits(&rng, o.b_count);
    o.a_f32 = malloc(sizeof(float) * o.a_count);
    o.b_f32 = malloc(sizeof(float) * o.b_count);
    for (size_t i = 0; i < o.a_count; i++) o.a_f32[i] = bf16_to_float(o.a[i]);
    for (size_t i = 0; i < o.b_count; i++) o.b_f32[i] = bf16_to_float(o.b[i]);
    o.bias = malloc(sizeof(float) * p->n);
    for (int j = 0; j < p->n; j++) o.bias[j] = rng_normal(&rng);
    o.c_start = malloc(sizeof(float) * p->m * p->n);
    for (int i = 0; i < p->m * p->n; i++) o.c_start[i] = rng_normal(&rng);
    return o;
}

static void free_operands(operands *o) {
    free(o->a);
    free(o->b);
    free(o->a_f32);
    free(o->b_f32);
    free(o->bias);
    free(o->c_start);
}

static int lda_of(const product *p) { return p->ta ? p->m : p->k; }
static int ldb_of(const product *p) { return p->tb ? p->k : p->n; }

/* c (m, n) = beta c + the product of rows [r0, r0 + m) of A (not transposed when r0 > 0)
 * and B, through gemm_onednn or in f32_mode gemm_onednn_f32. */
static void product_rows(const product *p, const operands *o, int r0, int m, float *c) {
    const float *bias = p->with_bias ? o->bias : NULL;
    const size_t a_at = (size_t)r0 * lda_of(p);
    if (f32_mode)
        gemm_onednn_f32(p->ta, p->tb, m, p->n, p->k, o->a_f32 + a_at, lda_of(p), o->b_f32, ldb_of(p), bias, p->beta,
                        c, p->n);
    else
        gemm_onednn(p->ta, p->tb, m, p->n, p->k, o->a + a_at, lda_of(p), o->b, ldb_of(p), bias, p->beta, c, p->n);
}

/* c (m, n) = the product on o. */
static void run(const product *p, const operands *o, float *c) {
    memcpy(c, o->c_start, sizeof(float) * p->m * p->n);
    product_rows(p, o, 0, p->m, c);
}

static void test_against_double(void) {
    const product products[] = {
        {0, 1, 64, 96, 48, 1, 0}, {0, 0, 37, 70, 129, 0, 1}, {1, 0, 33, 65, 2500, 0, 1}, {1, 0, 4, 384, 2048, 0, 1},
        {0, 1, 13, 5, 3, 1, 0},   {1, 1, 20, 30, 40, 0, 0},  {0, 0, 100, 33, 600, 0, 0}, {0, 1, 7, 1, 1, 1, 1}};
    double worst = 0;
    for (size_t s = 0; s < sizeof products / sizeof products[0]; s++) {
        const product *p = &products[s];
        operands o = make_operands(p, 10 + s);
        float *c = malloc(sizeof(float) * p->m * p->n);
        run(p, &o, c);
        const int lda = lda_of(p), ldb = ldb_of(p);
        for (int i = 0; i < p->m; i++)
            for (int j = 0; j < p->n; j++) {
                double sum = 0, magnitude = 0;
                for (int q = 0; q < p->k; q++) {
                    double a = bf16_to_float(p->ta ? o.a[(size_t)q * lda + i] : o.a[(size_t)i * lda + q]);
                    double b = bf16_to_float(p->tb ? o.b[(size_t)j * ldb + q] : o.b[(size_t)q * ldb + j]);
                    sum += a * b;
                    magnitude += fabs(a * b);
                }
                if (p->with_bias) sum += o.bias[j];
                if (p->beta != 0.0f) sum += o.c_start[(size_t)i * p->n + j];
                /* fp32 accumulation: error within a few ulps of the sum of magnitudes */
                double error = fabs(c[(size_t)i * p->n + j] - sum) / (1.0 + magnitude);
                worst = error > worst ? error : worst;
            }
        free(c);
        free_operands(&o);
    }
    printf("%s against double: largest error / (1 + sum |a b|): %.2e\n", f32_mode ? "fp32" : "bf16", worst);
    CHECK_MSG(worst < 1e-6, "error %.3g", worst);
}

/* Rows [64 r, 64 r + 64) of a product of m rows are the same bits as the product
 * of those 64 rows alone (the forward and input-gradient products: A not transposed). */
static void test_rows_independent(void) {
    const product products[] = {{0, 1, 512, 1152, 384, 1, 0}, {0, 1, 512, 384, 1536, 1, 0},
                                {0, 1, 512, 4, 384, 1, 0},    {0, 1, 512, 384, 4, 1, 0},
                                {0, 0, 512, 384, 1152, 0, 0}, {0, 0, 320, 1536, 384, 0, 1},
                                {0, 1, 200, 2304, 384, 1, 0}};
    const int part = 64;
    int differing = 0;
    for (size_t s = 0; s < sizeof products / sizeof products[0]; s++) {
        const product *p = &products[s];
        operands o = make_operands(p, 30 + s);
        float *whole = malloc(sizeof(float) * p->m * p->n), *alone = malloc(sizeof(float) * part * p->n);
        run(p, &o, whole);
        for (int r0 = 0; r0 + part <= p->m; r0 += part) {
            const size_t at = (size_t)r0 * p->n;
            memcpy(alone, o.c_start + at, sizeof(float) * part * p->n);
            product_rows(p, &o, r0, part, alone);
            if (memcmp(alone, whole + at, sizeof(float) * part * p->n) != 0) {
                differing++;
                fprintf(stderr, "product %zu (%d, %d, %d): rows from %d differ alone\n", s, p->m, p->n, p->k, r0);
            }
        }
        free(whole);
        free(alone);
        free_operands(&o);
    }
    CHECK(differing == 0);
}

/* The same products made and run under 1 to 4 threads: the same bits. The weight
 * gradients of DiT-S at batch 32 (k = 2048 rows) are among them; oneDNN 2.6 splits
 * such a k over threads when n is small, unless gemm_onednn cuts it. */
static void test_thread_count(void) {
    const product products[] = {{1, 0, 384, 4, 2048, 0, 1},    {1, 0, 4, 384, 2048, 0, 1},
                                {1, 0, 1152, 384, 2048, 0, 1}, {1, 0, 96, 64, 4096, 0, 1},
                                {0, 1, 2048, 1536, 384, 1, 0}, {0, 0, 2048, 384, 1536, 0, 0},
                                {0, 0, 32, 384, 2304, 0, 1}};
    const int threads = omp_get_max_threads();
    int differing = 0;
    for (size_t s = 0; s < sizeof products / sizeof products[0]; s++) {
        const product *p = &products[s];
        operands o = make_operands(p, 50 + s);
        float *first = malloc(sizeof(float) * p->m * p->n), *again = malloc(sizeof(float) * p->m * p->n);
        for (int t = 1; t <= 4; t++) {
            gemm_onednn_release_all(); /* made again under t threads */
            omp_set_num_threads(t);
            run(p, &o, t == 1 ? first : again);
            if (t > 1 && memcmp(first, again, sizeof(float) * p->m * p->n) != 0) {
                differing++;
                fprintf(stderr, "product %zu (%d, %d, %d): %d threads differ from 1\n", s, p->m, p->n, p->k, t);
            }
        }
        omp_set_num_threads(threads);
        free(first);
        free(again);
        free_operands(&o);
    }
    gemm_onednn_release_all();
    CHECK(differing == 0);
}

static void test_plan_makes_once(void) {
    const product p = {1, 0, 48, 40, 2500, 0, 1}; /* three k chunks */
    operands o = make_operands(&p, 70);
    float *c = malloc(sizeof(float) * p.m * p.n);
    long before = gemm_onednn_primitives_made();
    (f32_mode ? gemm_onednn_f32_plan : gemm_onednn_plan)(p.ta, p.tb, p.m, p.n, p.k, lda_of(&p), ldb_of(&p), 0, p.beta,
                                                          p.n);
    long planned = gemm_onednn_primitives_made();
    run(&p, &o, c);
    run(&p, &o, c);
    CHECK_MSG(planned - before == 2, "%ld primitives for 3 k chunks (2 shapes)", planned - before);
    CHECK(gemm_onednn_primitives_made() == planned);
    free(c);
    free_operands(&o);
}

enum { DIT_BATCH = 3, DIT_SAMPLE = 4 * 8 * 8 };

/* A DiT of random weights in the precision of f32_mode (fp32 or bf16), made under
 * `threads` threads (its primitives with it), and its inputs. */
static void make_dit(dit_model *m, int mlp_hidden, int threads, float *x, float *t, int *y, float *d_out) {
    const dit_shape shape = {.input_size = 8, .in_channels = 4, .patch_size = 1, .hidden_size = 64, .depth = 2,
                             .num_heads = 4, .mlp_hidden = mlp_hidden, .num_classes = 10};
    gemm_onednn_release_all();
    omp_set_num_threads(threads);
    long before = gemm_onednn_primitives_made();
    dit_create_precision(m, &shape, DIT_BATCH, f32_mode ? PRECISION_FP32 : PRECISION_BF16);
    CHECK_MSG(gemm_onednn_primitives_made() > before, "a DiT made no oneDNN primitive at creation");
    dit_init_weights(m, 5);
    rng_stream rng = rng_stream_for(6, 0, 0);
    /* adaLN-Zero starts with zero gates: perturb every parameter so that every layer counts */
    for (size_t i = 0; i < m->table.trainable_numel; i++) m->params[i] += 0.05f * rng_normal(&rng);
    for (int i = 0; i < DIT_BATCH * DIT_SAMPLE; i++) x[i] = rng_normal(&rng), d_out[i] = rng_normal(&rng);
    for (int b = 0; b < DIT_BATCH; b++) t[b] = 100.0f * (b + 1), y[b] = 3 * b;
}

/* gemm_onednn_f32_times is gemm_onednn_f32 followed by the multiply, bit for bit
 * (and the factor is applied: its product differs from the plain one). */
static void test_times(void) {
    const product products[] = {{0, 0, 96, 160, 48, 0, 0}, {0, 1, 33, 70, 129, 0, 0}};
    for (size_t s = 0; s < sizeof products / sizeof products[0]; s++) {
        const product *p = &products[s];
        operands o = make_operands(p, 40 + s);
        const size_t count = (size_t)p->m * p->n;
        float *plain = malloc(sizeof(float) * count), *times = malloc(sizeof(float) * count);
        float *factor = malloc(sizeof(float) * count);
        rng_stream rng = rng_stream_for(50 + s, 0, 0);
        for (size_t i = 0; i < count; i++) factor[i] = rng_normal(&rng);
        gemm_onednn_f32(0, p->tb, p->m, p->n, p->k, o.a_f32, lda_of(p), o.b_f32, ldb_of(p), NULL, 0.0f, plain, p->n);
        gemm_onednn_f32_times(p->tb, p->m, p->n, p->k, o.a_f32, lda_of(p), o.b_f32, ldb_of(p), factor, times, p->n);
        CHECK_MSG(memcmp(plain, times, sizeof(float) * count) != 0, "the factor was not applied");
        for (size_t i = 0; i < count; i++) plain[i] *= factor[i];
        CHECK_MSG(memcmp(plain, times, sizeof(float) * count) == 0,
                  "product times a factor differs from the product and then the multiply");
        free(plain);
        free(times);
        free(factor);
        free_operands(&o);
    }
}

/* A DiT (bf16, or fp32 in f32_mode): a training pass makes no primitive; its outputs and gradients are
 * the same bits under 1 and 4 threads; a sample is the same bits drawn in a batch
 * of 3 and alone. mlp_hidden 256: attention's scratch (bf16 or fp32) fits in the graph's d_hidden;
 * 64: it has memory of its own. */
static void test_dit(int mlp_hidden) {
    printf("%s DiT with mlp hidden %d\n", f32_mode ? "fp32" : "bf16", mlp_hidden);
    enum { BATCH = DIT_BATCH, SAMPLE = DIT_SAMPLE };
    static float x[BATCH * SAMPLE], out[BATCH * SAMPLE], d_out[BATCH * SAMPLE], d_x[BATCH * SAMPLE];
    static float out_4[BATCH * SAMPLE], d_x_4[BATCH * SAMPLE], alone[SAMPLE];
    float t[BATCH];
    int y[BATCH];
    const int threads = omp_get_max_threads();
    dit_model m;
    make_dit(&m, mlp_hidden, 4, x, t, y, d_out);
    CHECK((m.cpu_state->attention_memory != NULL) == (mlp_hidden < 256));
    dit_zero_grad(&m);
    dit_forward(&m, x, t, y, BATCH, out_4);
    dit_backward(&m, d_out, d_x_4, BATCH);
    float *grads_4 = malloc(sizeof(float) * m.table.trainable_numel);
    memcpy(grads_4, m.grads, sizeof(float) * m.table.trainable_numel);
    dit_destroy(&m);

    make_dit(&m, mlp_hidden, 1, x, t, y, d_out);
    const long planned = gemm_onednn_primitives_made();
    dit_zero_grad(&m);
    dit_forward(&m, x, t, y, BATCH, out);
    dit_backward(&m, d_out, d_x, BATCH);
    CHECK_MSG(gemm_onednn_primitives_made() == planned, "a training pass made %ld primitives",
              gemm_onednn_primitives_made() - planned);
    CHECK_MSG(memcmp(out, out_4, sizeof out) == 0, "outputs differ under 1 and 4 threads");
    CHECK_MSG(memcmp(d_x, d_x_4, sizeof d_x) == 0, "input gradients differ under 1 and 4 threads");
    CHECK_MSG(memcmp(m.grads, grads_4, sizeof(float) * m.table.trainable_numel) == 0,
              "parameter gradients differ under 1 and 4 threads");
    if (f32_mode) { /* fc2's backward times GELU's slope in one GEMM: the same bits as in two passes */
        CHECK(m.graph->ops->linear_backward_times_slope != NULL);
        const dit_backend *fused = m.graph->ops;
        dit_backend unfused = *fused;
        unfused.linear_backward_times_slope = NULL;
        m.graph->ops = &unfused;
        dit_zero_grad(&m);
        dit_forward(&m, x, t, y, BATCH, out);
        dit_backward(&m, d_out, d_x, BATCH);
        CHECK_MSG(memcmp(d_x, d_x_4, sizeof d_x) == 0, "input gradients differ without the fused fc2 backward");
        CHECK_MSG(memcmp(m.grads, grads_4, sizeof(float) * m.table.trainable_numel) == 0,
                  "parameter gradients differ without the fused fc2 backward");
        m.graph->ops = fused;
    }
    free(grads_4);
    omp_set_num_threads(threads);

    int differing = 0;
    for (int b = 0; b < BATCH; b++) {
        dit_forward(&m, x + b * SAMPLE, t + b, y + b, 1, alone);
        differing += memcmp(alone, out + b * SAMPLE, sizeof alone) != 0;
    }
    CHECK_MSG(differing == 0, "%d of %d samples differ drawn alone", differing, BATCH);
    dit_destroy(&m);
}

int main(void) {
    unsetenv("LDM_CPU_GEMM"); /* skipped only where the build or the CPU lacks it */
    unsetenv("LDM_NO_BF16_GEMM");
    if (cpu_gemm_fp32_kind() != CPU_GEMM_ONEDNN) {
        printf("test_gemm_onednn: no oneDNN in this build: skipped\n");
        return 77;
    }
    for (f32_mode = 1; f32_mode >= 0; f32_mode--) {
        if (!f32_mode) {
            __builtin_cpu_init();
            if (!__builtin_cpu_supports("avx512bf16")) {
                printf("test_gemm_onednn: no AVX512_BF16 on this CPU: bf16 skipped\n");
                break;
            }
            /* the bf16 matmul on bits, also where onednn-f32 is the default (decided at the first use, below) */
            setenv("LDM_CPU_GEMM", "onednn", 1);
            CHECK(cpu_gemm_bf16_kind() == CPU_GEMM_ONEDNN);
        }
        test_against_double();
        test_rows_independent();
        test_thread_count();
        test_plan_makes_once();
        if (f32_mode) test_times();
        test_dit(256);
        test_dit(64);
    }
    return test_finish("test_gemm_onednn");
}

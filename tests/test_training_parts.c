/* Tests of the small parts of a training step: the learning-rate schedule
 * (train/lr_schedule.h), the EMA of the weights (train/ema.h), gradient
 * clipping and the finiteness check (train/grad_clip.h), and the config keys
 * they read. Expected values are computed independently in the test: schedule
 * values from the written-out formulas (the cosine as cos^2(pi p / 2)), the EMA
 * after k steps from its closed form (products of decays, not the recursion),
 * norms by a sequential long double sum. */
#include "config.h"
#include "ema.h"
#include "grad_clip.h"
#include "lr_schedule.h"
#include "test_util.h"

#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static const double PI_D = 3.14159265358979323846;

static void test_lr_schedule(void) {
    ldm_config c;
    config_defaults(&c);
    c.train.lr = 1e-3;
    c.train.warmup_steps = 10;
    c.train.steps = 100;
    lr_schedule constant = lr_schedule_from_config(&c.train);
    CHECK(constant.decay == LR_CONSTANT && constant.peak == 1e-3 && constant.warmup_steps == 10 &&
          constant.total_steps == 100);
    CHECK_CLOSE(lr_at_step(&constant, 0), 1e-4, 0, 1e-15);
    CHECK_CLOSE(lr_at_step(&constant, 4), 5e-4, 0, 1e-15);
    CHECK_CLOSE(lr_at_step(&constant, 9), 1e-3, 0, 1e-15);
    for (int64_t s = 10; s < 200; s += 7) CHECK(lr_at_step(&constant, s) == 1e-3);
    /* Warmup is linear and increasing. */
    for (int64_t s = 1; s < 10; s++) CHECK(lr_at_step(&constant, s) > lr_at_step(&constant, s - 1));

    strcpy(c.train.lr_schedule, "cosine");
    lr_schedule cosine = lr_schedule_from_config(&c.train);
    CHECK(cosine.decay == LR_COSINE);
    CHECK_CLOSE(lr_at_step(&cosine, 3), 4e-4, 0, 1e-15); /* the same warmup */
    CHECK_CLOSE(lr_at_step(&cosine, 10), 1e-3, 0, 1e-15);
    CHECK_CLOSE(lr_at_step(&cosine, 55), 0.5e-3, 0, 1e-12); /* half way through the decay */
    for (int64_t s = 10; s <= 100; s++) {
        const double p = (double)(s - 10) / 90.0, half = cos(PI_D * p / 2);
        CHECK_CLOSE(lr_at_step(&cosine, s), 1e-3 * half * half, 1e-18, 1e-12);
        if (s > 10) CHECK(lr_at_step(&cosine, s) < lr_at_step(&cosine, s - 1));
    }
    CHECK(lr_at_step(&cosine, 99) > 0.0); /* the last step taken still moves */
    CHECK(lr_at_step(&cosine, 100) == 0.0);
    CHECK(lr_at_step(&cosine, 150) == 0.0);

    /* No warmup: the peak at once. */
    lr_schedule no_warmup = {2e-4, 0, 50, LR_COSINE};
    CHECK(lr_at_step(&no_warmup, 0) == 2e-4);
    CHECK_CLOSE(lr_at_step(&no_warmup, 25), 1e-4, 0, 1e-12);
    /* A warmup as long as training: the warmup, then 0. */
    lr_schedule all_warmup = {1.0, 20, 20, LR_COSINE};
    CHECK_CLOSE(lr_at_step(&all_warmup, 19), 1.0, 0, 1e-15);
    CHECK(lr_at_step(&all_warmup, 20) == 0.0);
}

static void test_ema_decay(void) {
    ema_schedule warm = {0.9999, 0, 0.05};
    CHECK_CLOSE(ema_decay_at(&warm, 0, 0, 256), 0.1, 0, 1e-15);
    CHECK_CLOSE(ema_decay_at(&warm, 5, 5 * 256, 256), 6.0 / 15.0, 0, 1e-15);
    CHECK(ema_decay_at(&warm, 10000000, 0, 256) == 0.9999);
    ema_schedule low = {0.5, 0, 0.0};
    CHECK(ema_decay_at(&low, 100, 0, 1) == 0.5);
    CHECK_CLOSE(ema_decay_at(&low, 0, 0, 1), 0.1, 0, 1e-15);

    /* The half-life rule: batch 256, half-life 500k images, ramp 0.05. */
    ema_schedule edm = {0.9999, 500000, 0.05};
    CHECK(ema_decay_at(&edm, 0, 0, 256) == 0.0); /* the first step copies */
    CHECK_CLOSE(ema_decay_at(&edm, 3906, 1000000, 256), exp(log(0.5) * 256.0 / 50000.0), 0, 1e-14);
    CHECK_CLOSE(ema_decay_at(&edm, 390625, 100000000, 256), exp(log(0.5) * 256.0 / 500000.0), 0, 1e-14);
    /* A half-life is a half-life: halflife / batch steps halve the old average's share. */
    const double d = ema_decay_at(&edm, 390625, 100000000, 250);
    CHECK_CLOSE(pow(d, 500000.0 / 250.0), 0.5, 0, 1e-12);
    /* No ramp: the full half-life from the start. */
    ema_schedule no_ramp = {0.9999, 1000, 0.0};
    CHECK_CLOSE(ema_decay_at(&no_ramp, 0, 0, 10), exp(log(0.5) * 10.0 / 1000.0), 0, 1e-14);

    ldm_config c;
    config_defaults(&c);
    ema_schedule from_defaults = ema_schedule_from_config(&c.train);
    CHECK(from_defaults.decay == 0.9999 && from_defaults.halflife_images == 0 && from_defaults.rampup == 0.05);
}

/* After k updates with decays d_0..d_{k-1} and weights w_0..w_{k-1}:
 *   ema_k = (prod_s d_s) e_0 + sum_i (1 - d_i) (prod_{s > i} d_s) w_i. */
static void test_ema_update(void) {
    enum { N = 7, K = 40 };
    float ema[N], weights[K][N], initial[N];
    double decays[K];
    ema_schedule warm = {0.95, 0, 0.0};
    for (int j = 0; j < N; j++) initial[j] = ema[j] = (float)(j - 3) * 0.75f;
    for (int s = 0; s < K; s++) {
        decays[s] = ema_decay_at(&warm, s, 0, 1);
        for (int j = 0; j < N; j++) weights[s][j] = (float)sin(0.3 * s + j) * 2.0f;
    }
    for (int s = 0; s < K; s++) ema_update(ema, weights[s], N, decays[s]);
    for (int j = 0; j < N; j++) {
        double all = 1.0;
        for (int s = 0; s < K; s++) all *= decays[s];
        double expected = all * initial[j];
        for (int i = 0; i < K; i++) {
            double later = 1.0;
            for (int s = i + 1; s < K; s++) later *= decays[s];
            expected += (1.0 - decays[i]) * later * weights[i][j];
        }
        CHECK_CLOSE(ema[j], expected, 2e-6, 1e-5);
    }

    /* Constant weights and decay: ema_k = w + d^k (e_0 - w), also for d = 0.9999
     * over many steps, where a float (1 - d) would be 0.02% off. */
    enum { M = 1000 };
    static float big_ema[M], target[M];
    for (int j = 0; j < M; j++) {
        big_ema[j] = 0.0f;
        target[j] = 1.0f + (float)j / M;
    }
    for (int s = 0; s < 5000; s++) ema_update(big_ema, target, M, 0.9999);
    const double share = pow(0.9999, 5000); /* of the initial value */
    for (int j = 0; j < M; j += 37) CHECK_CLOSE(big_ema[j], target[j] * (1.0 - share), 0, 2e-5);

    /* Decay 0 copies exactly. */
    ema_update(ema, weights[3], N, 0.0);
    CHECK(memcmp(ema, weights[3], sizeof ema) == 0);
    /* Decay 1 keeps the average. */
    float kept[N];
    memcpy(kept, ema, sizeof kept);
    ema_update(ema, weights[5], N, 1.0);
    CHECK(memcmp(ema, kept, sizeof ema) == 0);
}

static long double reference_norm(const float *g, size_t n) {
    long double sum = 0.0L;
    for (size_t i = 0; i < n; i++) sum += (long double)g[i] * g[i];
    return sqrtl(sum);
}

static void test_grad_clip(void) {
    float small[2] = {3.0f, -4.0f};
    CHECK(grad_global_norm(small, 2) == 5.0);
    CHECK(grad_global_norm(small, 0) == 0.0);
    CHECK(grad_all_finite(small, 0));

    const size_t n = 1000003;
    float *g = malloc(sizeof(float) * n), *copy = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) g[i] = (float)sin((double)i * 0.001) * (i % 3 ? 0.01f : 1.0f);
    const long double ref = reference_norm(g, n);
    const double norm = grad_global_norm(g, n);
    CHECK_CLOSE(norm, (double)ref, 0, 1e-12);

    /* The same bits whatever the thread count. */
#ifdef _OPENMP
    const int threads = omp_get_max_threads();
    for (int t = 1; t <= 4; t++) {
        omp_set_num_threads(t);
        const double again = grad_global_norm(g, n);
        CHECK_MSG(memcmp(&again, &norm, sizeof norm) == 0, "%d threads: %.17g vs %.17g", t, again, norm);
    }
    omp_set_num_threads(threads);
#endif

    /* Below the limit, or clipping off: untouched, and the norm returned. */
    memcpy(copy, g, sizeof(float) * n);
    CHECK(grad_clip_global_norm(g, n, norm * 1.01) == norm);
    CHECK(memcmp(copy, g, sizeof(float) * n) == 0);
    CHECK(grad_clip_global_norm(g, n, 0.0) == norm);
    CHECK(memcmp(copy, g, sizeof(float) * n) == 0);

    /* Above: scaled to max_norm (less torch's 1e-6 in the denominator), same direction. */
    const double max_norm = 2.5;
    CHECK(norm > max_norm);
    CHECK(grad_clip_global_norm(g, n, max_norm) == norm);
    CHECK_CLOSE((double)reference_norm(g, n), max_norm, 0, 1e-6);
    const double scale = max_norm / norm;
    size_t off = 0;
    for (size_t i = 0; i < n; i++) off += fabs(g[i] - copy[i] * scale) > 1e-6 * fabs(copy[i] * scale) + 1e-30;
    CHECK_MSG(off == 0, "%zu elements not scaled by max_norm / norm", off);

    /* Non-finite values, anywhere. */
    CHECK(grad_all_finite(copy, n));
    float extremes[5] = {3.4e38f, -3.4e38f, 1e-45f, -0.0f, 0.0f};
    CHECK(grad_all_finite(extremes, 5));
    const float bad[3] = {INFINITY, -INFINITY, NAN};
    const size_t where[3] = {n - 1, 0, n / 2};
    for (int k = 0; k < 3; k++) {
        memcpy(g, copy, sizeof(float) * n);
        g[where[k]] = bad[k];
        CHECK_MSG(!grad_all_finite(g, n), "%g at %zu not found", bad[k], where[k]);
        const double bad_norm = grad_clip_global_norm(g, n, 1.0);
        CHECK(!isfinite(bad_norm));
        /* A non-finite gradient is left for the caller to skip. */
        g[where[k]] = copy[where[k]];
        CHECK(memcmp(copy, g, sizeof(float) * n) == 0);
    }
    free(g);
    free(copy);
}

static void test_config_keys(void) {
    ldm_config c;
    config_defaults(&c);
    CHECK(c.train.ema_halflife_images == 0);
    CHECK(c.train.ema_rampup == 0.05);
    char err[512] = "";
    const char *message = err; /* CHECK_STR_CONTAINS tests its pointer for NULL */
    const char *good[] = {"train.ema_halflife_images=500000", "train.ema_rampup=0"};
    CHECK_MSG(config_load(&c, NULL, good, 2, err, sizeof err) == 0, "%s", err);
    CHECK(c.train.ema_halflife_images == 500000 && c.train.ema_rampup == 0.0);
    char *json = config_to_json(&c);
    CHECK_STR_CONTAINS(json, "\"ema_halflife_images\":\t500000");
    CHECK_STR_CONTAINS(json, "\"ema_rampup\":\t0");
    free(json);
    const char *negative_halflife[] = {"train.ema_halflife_images=-1"};
    CHECK(config_load(&c, NULL, negative_halflife, 1, err, sizeof err) == -1);
    CHECK_STR_CONTAINS(message, "train.ema_halflife_images: expected an integer >= 0, got -1");
    const char *negative_rampup[] = {"train.ema_rampup=-0.5"};
    CHECK(config_load(&c, NULL, negative_rampup, 1, err, sizeof err) == -1);
    CHECK_STR_CONTAINS(message, "train.ema_rampup: expected a number >= 0, got -0.5");
}

int main(void) {
    test_lr_schedule();
    test_ema_decay();
    test_ema_update();
    test_grad_clip();
    test_config_keys();
    return test_finish("test_training_parts");
}

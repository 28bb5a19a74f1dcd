/* Tests of the consistency model (train/diffusion/consistency.h, consistency_record.h).
 *
 * - c_skip and c_out against their formulas (in double, with sigma_min taken as
 *   its float), and exactly 1 and 0 at sigma_min.
 * - The boundary condition bit for bit: on a DiT with random weights (so that
 *   F is far from zero), f(x, sigma_min) == x for every element.
 * - The multistep sampler against its closed form on a DiT at initialisation,
 *   whose final layer is zero (F = 0, so f(x, sigma) = c_skip(sigma) x):
 *   x = c_skip(s_0) s_0 z_0, then x = c_skip(s_k) (x + sqrt(s_k^2 - s_min^2) z_k),
 *   with z_0 the EDM sampler's initial noise and z_k keyed by (seed, k, index).
 * - With random weights, a batch equals single samples bit for bit (the network
 *   always runs on max_batch rows) and another seed differs.
 * - The discretisation's ends and order, the default sigma points, and the
 *   record of a student round-tripping its points.
 * - A student with a guidance input (guidance-range distillation) whose
 *   teacher's weights fill the front of its table starts as the teacher, bit
 *   for bit, at any scale (the guidance MLP's last layer starts at zero); once
 *   that layer is not zero, the scale changes the output. */
#include "consistency.h"
#include "consistency_record.h"
#include "edm.h"
#include "rng.h"
#include "sampler.h"
#include "test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SIGMA_DATA 0.5
#define SIGMA_MIN 0.002
#define SAMPLES 3

static const dit_shape shape = {.input_size = 8, .in_channels = 3, .patch_size = 2, .hidden_size = 32,
                                .depth = 2, .num_heads = 4, .mlp_hidden = 128, .num_classes = 5};

static int64_t per_sample(void) { return (int64_t)shape.in_channels * shape.input_size * shape.input_size; }

static void perturb(dit_model *m, uint64_t seed) {
    rng_stream rng = rng_stream_for(seed, 6, 7);
    for (size_t i = 0; i < m->table.trainable_numel; i++) m->params[i] += 0.05f * rng_normal(&rng);
}

static void test_scalings(void) {
    const double smin = (double)(float)SIGMA_MIN, d2 = SIGMA_DATA * SIGMA_DATA;
    const double sigmas[] = {0.01, 0.5, 1.0, 7.3, 80.0};
    for (size_t i = 0; i < sizeof sigmas / sizeof sigmas[0]; i++) {
        const double s = sigmas[i];
        consistency_scaling c = consistency_scalings(s, SIGMA_DATA, SIGMA_MIN);
        CHECK_CLOSE(c.c_skip, d2 / ((s - smin) * (s - smin) + d2), 0, 1e-15);
        CHECK_CLOSE(c.c_out, SIGMA_DATA * (s - smin) / sqrt(s * s + d2), 0, 1e-15);
    }
    consistency_scaling at_min = consistency_scalings((float)SIGMA_MIN, SIGMA_DATA, SIGMA_MIN);
    CHECK(at_min.c_skip == 1.0);
    CHECK(at_min.c_out == 0.0);
    /* At large sigma the model is mostly the network: c_skip -> 0, c_out -> sigma_data. */
    consistency_scaling at_max = consistency_scalings(80.0, SIGMA_DATA, SIGMA_MIN);
    CHECK(at_max.c_skip < 1e-4 && fabs(at_max.c_out - SIGMA_DATA) < 1e-4);
}

static void test_boundary(void) {
    dit_model m;
    dit_create(&m, &shape, SAMPLES);
    dit_init_weights(&m, 3);
    perturb(&m, 1);
    const int64_t ps = per_sample(), n = SAMPLES * ps;
    float *x = malloc(sizeof(float) * n), *f = malloc(sizeof(float) * n), sigma[SAMPLES];
    const int y[SAMPLES] = {0, 4, 5};
    rng_stream rng = rng_stream_for(9, 9, 9);
    for (int64_t i = 0; i < n; i++) x[i] = 3.0f * rng_normal(&rng);
    for (int b = 0; b < SAMPLES; b++) sigma[b] = (float)SIGMA_MIN;
    consistency_buffers buffers;
    consistency_buffers_create(&buffers, &shape, SAMPLES);
    consistency_apply(&m, &buffers, x, sigma, y, NULL, SAMPLES, SIGMA_DATA, SIGMA_MIN, f);
    double f_scale = 0;
    for (int64_t i = 0; i < n; i++) f_scale = fmax(f_scale, fabs(buffers.F[i]));
    CHECK_MSG(f_scale > 0.1, "the network's output is %g: the boundary test needs F far from zero", f_scale);
    CHECK_MSG(memcmp(x, f, sizeof(float) * n) == 0, "f(x, sigma_min) differs from x");
    /* Just above sigma_min the model is no longer the identity. */
    for (int b = 0; b < SAMPLES; b++) sigma[b] = 0.01f;
    consistency_apply(&m, &buffers, x, sigma, y, NULL, SAMPLES, SIGMA_DATA, SIGMA_MIN, f);
    CHECK(memcmp(x, f, sizeof(float) * n) != 0);
    consistency_buffers_destroy(&buffers);
    free(x), free(f);
    dit_destroy(&m);
}

static void run(dit_model *m, const consistency_sampler_options *o, const int *labels, const int64_t *indices,
                int batch, int max_batch, float *out) {
    consistency_sampler s;
    consistency_sampler_create(&s, m, o, SIGMA_DATA, max_batch);
    consistency_sampler_run(&s, labels, indices, batch, out);
    consistency_sampler_destroy(&s);
}

static void test_sampler_closed_form(void) {
    dit_model m;
    dit_create(&m, &shape, SAMPLES);
    dit_init_weights(&m, 7);
    const int64_t ps = per_sample();
    const int labels[SAMPLES] = {0, 2, 5};
    const int64_t indices[SAMPLES] = {0, 5, 1000};
    float *out = malloc(sizeof(float) * SAMPLES * ps), *z = malloc(sizeof(float) * ps);
    double *want = malloc(sizeof(double) * ps);
    const int step_counts[] = {1, 2, 4};
    for (int c = 0; c < 3; c++) {
        consistency_sampler_options o = {.steps = step_counts[c], .sigma_min = SIGMA_MIN, .seed = 13};
        CHECK(consistency_default_points(o.steps, SIGMA_MIN, EDM_SIGMA_MAX, EDM_RHO, o.sigmas));
        run(&m, &o, labels, indices, SAMPLES, SAMPLES, out);
        const double smin = (double)(float)SIGMA_MIN;
        double worst = 0;
        for (int b = 0; b < SAMPLES; b++) {
            for (int k = 0; k < o.steps; k++) {
                const double s = (double)(float)o.sigmas[k];
                const double c_skip = consistency_scalings(s, SIGMA_DATA, SIGMA_MIN).c_skip;
                if (k == 0) {
                    sampler_initial_noise(o.seed, indices[b], o.sigmas[0], ps, z);
                    for (int64_t j = 0; j < ps; j++) want[j] = c_skip * (double)z[j];
                } else {
                    rng_stream rng = rng_stream_for(o.seed, rng_hash(CONSISTENCY_PURPOSE_NOISE, (uint64_t)k),
                                                    (uint64_t)indices[b]);
                    const double scale = sqrt(s * s - smin * smin);
                    for (int64_t j = 0; j < ps; j++) want[j] = c_skip * (want[j] + scale * (double)rng_normal(&rng));
                }
            }
            for (int64_t j = 0; j < ps; j++) {
                const double err = fabs((double)out[b * ps + j] - want[j]) / (1e-5 * fabs(want[j]) + 1e-6);
                if (err > worst) worst = err;
            }
        }
        CHECK_MSG(worst < 1, "%d steps: error %g tolerances from the closed form", o.steps, worst);
    }
    free(out), free(z), free(want);
    dit_destroy(&m);
}

static void test_sampler_batches(void) {
    dit_model m;
    dit_create(&m, &shape, SAMPLES);
    dit_init_weights(&m, 3);
    perturb(&m, 2);
    const int64_t ps = per_sample(), total = SAMPLES * ps;
    const int labels[SAMPLES] = {1, 4, 0};
    const int64_t indices[SAMPLES] = {8, 3, 6};
    float *a = malloc(sizeof(float) * total), *b = malloc(sizeof(float) * total);
    consistency_sampler_options o = {.steps = 4, .sigma_min = SIGMA_MIN, .seed = 21};
    consistency_default_points(4, SIGMA_MIN, EDM_SIGMA_MAX, EDM_RHO, o.sigmas);
    run(&m, &o, labels, indices, SAMPLES, SAMPLES, a);
    for (int i = 0; i < SAMPLES; i++) run(&m, &o, labels + i, indices + i, 1, SAMPLES, b + i * ps);
    CHECK_MSG(memcmp(a, b, sizeof(float) * total) == 0, "a batch differs from single samples");
    int finite = 1;
    for (int64_t i = 0; i < total; i++) finite = finite && isfinite(a[i]);
    CHECK(finite);
    o.seed = 22;
    run(&m, &o, labels, indices, SAMPLES, SAMPLES, b);
    CHECK(memcmp(a, b, sizeof(float) * total) != 0);
    free(a), free(b);
    dit_destroy(&m);
}

static void test_points_and_record(void) {
    const int n = 18;
    CHECK(consistency_point(0, n, SIGMA_MIN, 80, 7) == (double)(float)SIGMA_MIN);
    CHECK(consistency_point(n - 1, n, SIGMA_MIN, 80, 7) == 80.0);
    for (int i = 1; i < n; i++) CHECK(consistency_point(i, n, SIGMA_MIN, 80, 7) > consistency_point(i - 1, n, SIGMA_MIN, 80, 7));
    double s[CONSISTENCY_MAX_STEPS];
    CHECK(consistency_default_points(1, SIGMA_MIN, 80, 7, s) && s[0] == 80.0);
    CHECK(consistency_default_points(2, SIGMA_MIN, 80, 7, s) && s[0] == 80.0 && s[1] == 0.821);
    CHECK(consistency_default_points(4, SIGMA_MIN, 80, 7, s));
    for (int i = 0; i < 4; i++) CHECK(s[i] == edm_schedule_sigma(i, 5, SIGMA_MIN, 80, 7));
    CHECK_CLOSE(s[1], 17.528, 0, 1e-4);
    CHECK_CLOSE(s[3], 0.16975, 0, 1e-4);
    CHECK(!consistency_default_points(3, SIGMA_MIN, 80, 7, s));
    /* 0.821 outside (sigma_min, sigma_max): the middle of the rho schedule. */
    CHECK(consistency_default_points(2, 0.002, 0.5, 7, s) && s[1] == edm_schedule_sigma(1, 3, 0.002, 0.5, 7));

    ldm_config config;
    config_defaults(&config);
    char *json = consistency_record_json(&config, "teacher/checkpoints/step-00000010 (step 10, ema weights)");
    CHECK_STR_CONTAINS(json, "\"teacher\":\"teacher/checkpoints/step-00000010 (step 10, ema weights)\"");
    for (int steps = 1; steps <= 4; steps *= 2) {
        consistency_sampler_options o;
        consistency_record_sampler(json, "student", steps, &o);
        double want[CONSISTENCY_MAX_STEPS];
        consistency_default_points(steps, SIGMA_MIN, 80, 7, want);
        CHECK(o.steps == steps && o.sigma_min == SIGMA_MIN);
        for (int k = 0; k < steps; k++) CHECK(o.sigmas[k] == want[k]);
    }
    free(json);
}

static void test_guidance_input_student(void) {
    dit_model teacher, student;
    dit_shape guided = shape;
    guided.guidance_input = 1;
    dit_create(&teacher, &shape, SAMPLES);
    dit_create(&student, &guided, SAMPLES);
    dit_init_weights(&teacher, 3);
    perturb(&teacher, 4);
    dit_init_weights(&student, 5);
    CHECK(student.table.trainable_numel > teacher.table.trainable_numel);
    memcpy(student.params, teacher.params, sizeof(float) * teacher.table.trainable_numel);
    const int64_t ps = per_sample();
    float *x = malloc(sizeof(float) * (size_t)(SAMPLES * ps)), *a = malloc(sizeof(float) * (size_t)(SAMPLES * ps));
    float *b = malloc(sizeof(float) * (size_t)(SAMPLES * ps));
    rng_stream rng = rng_stream_for(9, 9, 9);
    for (int64_t i = 0; i < SAMPLES * ps; i++) x[i] = rng_normal(&rng);
    const float t[SAMPLES] = {-500.0f, 0.0f, 700.0f}, low[SAMPLES] = {1, 1, 1}, high[SAMPLES] = {4, 2.5f, 7};
    const int y[SAMPLES] = {0, 4, 5};
    dit_forward(&teacher, x, t, y, SAMPLES, a);
    dit_forward_guided(&student, x, t, y, high, SAMPLES, b);
    CHECK(memcmp(a, b, sizeof(float) * (size_t)(SAMPLES * ps)) == 0);
    perturb(&student, 6); /* the guidance MLP's last layer too */
    dit_forward_guided(&student, x, t, y, low, SAMPLES, a);
    dit_forward_guided(&student, x, t, y, high, SAMPLES, b);
    double difference = 0;
    for (int64_t i = 0; i < SAMPLES * ps; i++) difference = fmax(difference, fabs((double)a[i] - b[i]));
    CHECK_MSG(difference > 1e-3, "the guidance scale changed the output by only %g", difference);
    free(x), free(a), free(b);
    dit_destroy(&teacher), dit_destroy(&student);
}

int main(void) {
    test_scalings();
    test_guidance_input_student();
    test_boundary();
    test_sampler_closed_form();
    test_sampler_batches();
    test_points_and_record();
    return test_finish("test_consistency");
}

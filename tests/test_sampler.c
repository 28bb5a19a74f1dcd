/* Tests of the EDM samplers (train/diffusion/sampler.h) on a tiny DiT.
 *
 * Closed form: at DiT's initialisation the final layer is zero, so F = 0 and
 * D(x; sigma) = c_skip x; each step then multiplies x by a factor computed here
 * in double from the schedule: Euler x' = x (1 + h a_i), Heun
 * x' = x (1 + h (a_i + (1 + h a_i) a_{i+1}) / 2) (Euler on the last step), with
 * a_i = sigma_i / (sigma_i^2 + sigma_data^2) and h = sigma_{i+1} - sigma_i; x_0 is
 * sigma_max times the sample's noise (sampler_initial_noise).
 *
 * With random weights (every parameter perturbed, so F depends on x, t and y):
 * a batch of 4 equals 4 batches of 1 (the same sampler, max_batch 4) bit for bit
 * and does not depend on the order within the batch (the noise is keyed by the
 * sample index); guidance w = 0 equals the result with the null class (to float
 * rounding: the guided pass runs on twice the rows); w = 3 differs; another seed
 * differs. w = 1 is the unguided sampler by definition.
 *
 * Churn (EDM Algorithm 2), again with F = 0, where every step is linear: the
 * sample is computed here in double from EDM's formulas (gamma = min(S_churn / N,
 * sqrt 2 - 1) inside [S_tmin, S_tmax], sigma_hat = (1 + gamma) sigma_i, noise
 * sqrt(sigma_hat^2 - sigma_i^2) S_noise eps with eps keyed by (seed, step, index)),
 * including the steps outside [S_tmin, S_tmax] that get no churn.
 *
 * The pipeline of a latents model (train/diffusion/sample_pipeline.h): its pictures equal
 * the decoder applied to z = x / sigma_data * std_c + mean_c of the sampler's x,
 * with distinct statistics per channel; a batch of 1 gives the same picture as
 * within a batch of 3. */
#include "sample_pipeline.h"
#include "sampler.h"
#include "edm.h"
#include "rng.h"
#include "test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SIGMA_DATA 0.5
#define SAMPLES 4

static const dit_shape shape = {.input_size = 8, .in_channels = 3, .patch_size = 2, .hidden_size = 32,
                                .depth = 2, .num_heads = 4, .mlp_hidden = 128, .num_classes = 5};

static int64_t per_sample(void) { return (int64_t)shape.in_channels * shape.input_size * shape.input_size; }

static void run(dit_model *m, const sampler_options *o, const int *labels, const int64_t *indices, int batch,
                int max_batch, float *out) {
    sampler s;
    sampler_create(&s, m, o, SIGMA_DATA, max_batch);
    sampler_run(&s, labels, indices, batch, out);
    sampler_destroy(&s);
}

static void test_closed_form(void) {
    dit_model m;
    dit_create(&m, &shape, 2 * SAMPLES);
    dit_init_weights(&m, 7);
    const int64_t ps = per_sample();
    const int labels[SAMPLES] = {0, 1, 2, 5};
    const int64_t indices[SAMPLES] = {0, 1, 2, 1000};
    float *out = malloc(sizeof(float) * SAMPLES * ps), *noise = malloc(sizeof(float) * ps);
    for (int method = 0; method < 2; method++)
        for (int steps = 1; steps <= 18; steps += 17)
            for (int guided = 0; guided < 2; guided++) {
                sampler_options o = {.steps = steps, .method = method, .guidance = guided ? 2.5 : 1.0, .seed = 11};
                double sig[32];
                sampler_schedule(&o, sig);
                CHECK_CLOSE(sig[0], EDM_SIGMA_MAX, 0, 1e-7);
                CHECK(sig[steps] == 0.0);
                if (steps > 1) CHECK_CLOSE(sig[steps - 1], EDM_SIGMA_MIN, 0, 1e-7);
                CHECK(sampler_network_evaluations(&o) == (method == SAMPLER_HEUN ? 2 * steps - 1 : steps));
                double factor = 1.0;
                for (int i = 0; i < steps; i++) {
                    const double s = sig[i], sn = sig[i + 1], h = sn - s;
                    const double a = s / (s * s + SIGMA_DATA * SIGMA_DATA);
                    if (method == SAMPLER_HEUN && sn > 0) {
                        const double an = sn / (sn * sn + SIGMA_DATA * SIGMA_DATA);
                        factor *= 1.0 + h * (a + (1.0 + h * a) * an) / 2.0;
                    } else {
                        factor *= 1.0 + h * a;
                    }
                }
                run(&m, &o, labels, indices, SAMPLES, SAMPLES, out);
                double worst = 0;
                for (int b = 0; b < SAMPLES; b++) {
                    sampler_initial_noise(o.seed, indices[b], sig[0], ps, noise);
                    for (int64_t j = 0; j < ps; j++) {
                        const double want = factor * (double)noise[j];
                        /* 1e-4 relative, plus a few float roundings of x_0: a 1-step sample is
                         * x_0 - 80 (x_0 - c_skip x_0) / 80, a cancellation to 4e-5 x_0. */
                        const double err =
                            fabs((double)out[b * ps + j] - want) / (1e-4 * fabs(want) + 4e-7 * fabs(noise[j]));
                        if (err > worst) worst = err;
                    }
                }
                CHECK_MSG(worst < 1, "method %d, %d steps, guided %d: error %g tolerances from the closed form",
                          method, steps, guided, worst);
            }
    free(out);
    free(noise);
    dit_destroy(&m);
}

static int same(const float *a, const float *b, int64_t n) { return memcmp(a, b, sizeof(float) * (size_t)n) == 0; }

static void test_random_weights(void) {
    dit_model m;
    dit_create(&m, &shape, 2 * SAMPLES);
    dit_init_weights(&m, 3);
    rng_stream rng = rng_stream_for(5, 6, 7);
    for (size_t i = 0; i < m.table.trainable_numel; i++) m.params[i] += 0.05f * rng_normal(&rng);
    const int64_t ps = per_sample(), total = SAMPLES * ps;
    const int labels[SAMPLES] = {0, 3, 4, 1}, null_labels[SAMPLES] = {5, 5, 5, 5};
    const int64_t indices[SAMPLES] = {4, 9, 2, 7};
    float *a = malloc(sizeof(float) * total), *b = malloc(sizeof(float) * total);
    float *c = malloc(sizeof(float) * total);
    for (int method = 0; method < 2; method++) {
        for (int w = 0; w < 3; w++) {
            const double guidance[3] = {1.0, 0.0, 3.0};
            sampler_options o = {.steps = 6, .method = method, .guidance = guidance[w], .seed = 21};
            run(&m, &o, labels, indices, SAMPLES, SAMPLES, a);
            for (int i = 0; i < SAMPLES; i++) run(&m, &o, labels + i, indices + i, 1, SAMPLES, b + i * ps);
            CHECK_MSG(same(a, b, total), "method %d, w %g: a batch of 4 differs from 4 batches of 1", method,
                      guidance[w]);
            /* Reversed order within the batch: the same samples. */
            int rl[SAMPLES];
            int64_t ri[SAMPLES];
            for (int i = 0; i < SAMPLES; i++) rl[i] = labels[SAMPLES - 1 - i], ri[i] = indices[SAMPLES - 1 - i];
            run(&m, &o, rl, ri, SAMPLES, SAMPLES, c);
            int reversed_ok = 1;
            for (int i = 0; i < SAMPLES; i++) reversed_ok &= same(c + i * ps, a + (SAMPLES - 1 - i) * ps, ps);
            CHECK_MSG(reversed_ok, "method %d, w %g: the batch order changed the samples", method, guidance[w]);
            int finite = 1;
            for (int64_t j = 0; j < total; j++) finite &= isfinite(a[j]) != 0;
            CHECK(finite);
        }
        sampler_options cond = {.steps = 6, .method = method, .guidance = 1.0, .seed = 21};
        sampler_options w0 = cond, w3 = cond, other_seed = cond;
        w0.guidance = 0.0;
        w3.guidance = 3.0;
        other_seed.seed = 22;
        run(&m, &cond, labels, indices, SAMPLES, SAMPLES, a);
        run(&m, &w0, labels, indices, SAMPLES, SAMPLES, b);
        run(&m, &cond, null_labels, indices, SAMPLES, SAMPLES, c);
        /* Guided passes run on 2 max_batch rows, unguided on max_batch: equal up to
         * float rounding (dit_forward is not bit-invariant in its batch size). */
        double worst = 0;
        for (int64_t j = 0; j < total; j++) {
            const double e = fabs((double)b[j] - (double)c[j]);
            if (e > worst) worst = e;
        }
        CHECK_MSG(worst < 1e-4, "method %d: guidance 0 differs from the unconditional result by %g", method, worst);
        CHECK_MSG(!same(a, c, total), "method %d: the labels changed nothing", method);
        run(&m, &w3, labels, indices, SAMPLES, SAMPLES, b);
        CHECK(!same(a, b, total));
        run(&m, &other_seed, labels, indices, SAMPLES, SAMPLES, b);
        CHECK(!same(a, b, total));
        /* A model laid out for more rows than the sampler uses gives the same samples. */
        dit_model small;
        dit_create(&small, &shape, SAMPLES);
        memcpy(small.params, m.params, sizeof(float) * m.table.trainable_numel);
        run(&small, &cond, labels, indices, SAMPLES, SAMPLES, b);
        CHECK_MSG(same(a, b, total), "method %d: guidance 1 differs between models of two batch sizes", method);
        dit_destroy(&small);
    }
    free(a);
    free(b);
    free(c);
    dit_destroy(&m);
}

static void test_churn_closed_form(void) {
    dit_model m;
    dit_create(&m, &shape, SAMPLES);
    dit_init_weights(&m, 7);
    const int64_t ps = per_sample();
    const int labels[SAMPLES] = {0, 1, 2, 3};
    const int64_t indices[SAMPLES] = {0, 5, 2, 77};
    float *out = malloc(sizeof(float) * SAMPLES * ps), *noise = malloc(sizeof(float) * ps);
    double *want = malloc(sizeof(double) * ps);
    for (int method = 0; method < 2; method++)
        for (int c = 0; c < 2; c++) {
            /* 40 / 10 = 4 is capped at sqrt 2 - 1; 2 / 10 = 0.2 is not. The range
             * [0.05, 50] leaves the first steps (sigma 80, ...) without churn. */
            const double churn = c ? 40.0 : 2.0;
            sampler_options o = {.steps = 10, .method = method, .guidance = 1.0, .seed = 3, .churn = churn};
            double sig[16];
            sampler_schedule(&o, sig);
            run(&m, &o, labels, indices, SAMPLES, SAMPLES, out);
            const double gamma = fmin(churn / 10.0, sqrt(2.0) - 1.0);
            int churned_steps = 0;
            double worst = 0;
            for (int b = 0; b < SAMPLES; b++) {
                sampler_initial_noise(o.seed, indices[b], sig[0], ps, noise);
                for (int64_t j = 0; j < ps; j++) want[j] = noise[j];
                for (int i = 0; i < 10; i++) {
                    double s = sig[i];
                    const double sn = sig[i + 1];
                    if (s >= 0.05 && s <= 50.0) {
                        const double hat = s * (1.0 + gamma);
                        rng_stream r = rng_stream_for(o.seed, rng_hash(SAMPLER_PURPOSE_CHURN, (uint64_t)i),
                                                      (uint64_t)indices[b]);
                        for (int64_t j = 0; j < ps; j++)
                            want[j] += sqrt(hat * hat - s * s) * 1.003 * (double)rng_normal(&r);
                        s = hat;
                        churned_steps += b == 0;
                    }
                    const double h = sn - s, a = s / (s * s + SIGMA_DATA * SIGMA_DATA);
                    double factor = 1.0 + h * a;
                    if (method == SAMPLER_HEUN && sn > 0) {
                        const double an = sn / (sn * sn + SIGMA_DATA * SIGMA_DATA);
                        factor = 1.0 + h * (a + (1.0 + h * a) * an) / 2.0;
                    }
                    for (int64_t j = 0; j < ps; j++) want[j] *= factor;
                }
                for (int64_t j = 0; j < ps; j++) {
                    const double err = fabs((double)out[b * ps + j] - want[j]) / (1e-4 * fabs(want[j]) + 1e-5);
                    if (err > worst) worst = err;
                }
            }
            CHECK_MSG(churned_steps > 2 && churned_steps < 10, "%d steps churned", churned_steps);
            CHECK_MSG(worst < 1, "method %d, churn %g: error %g tolerances from the closed form", method, churn, worst);
        }
    free(out);
    free(noise);
    free(want);
    dit_destroy(&m);
}

static void test_latent_pipeline(void) {
    /* A DiT on 2 x 4 x 4 latents and an autoencoder (3 x 8 x 8 pictures) that makes them. */
    const dit_shape ls = {.input_size = 4, .in_channels = 2, .patch_size = 2, .hidden_size = 32,
                          .depth = 1, .num_heads = 4, .mlp_hidden = 64, .num_classes = 3};
    const autoencoder_shape as = {.in_channels = 3, .input_size = 8, .levels = 2, .block_out_channels = {8, 16},
                                  .layers_per_block = 1, .latent_channels = 2, .norm_groups = 4};
    enum { B = 3 };
    dit_model m;
    dit_create(&m, &ls, B);
    dit_init_weights(&m, 3);
    rng_stream rng = rng_stream_for(8, 6, 7);
    for (size_t i = 0; i < m.table.trainable_numel; i++) m.params[i] += 0.05f * rng_normal(&rng);
    autoencoder_model ae;
    autoencoder_create(&ae, &as, B, AE_FOR_DECODING);
    autoencoder_init_weights(&ae, 4);
    const double mean[2] = {0.7, -1.5}, std[2] = {2.0, 0.25};
    sampler_options o = {.steps = 4, .method = SAMPLER_HEUN, .guidance = 1.0, .seed = 9};
    sample_pipeline p;
    sample_pipeline_create(&p, &m, &o, SIGMA_DATA, B, &ae, mean, std);
    CHECK(p.channels == 3 && p.size == 8 && p.per_image == 192);
    const int labels[B] = {0, 2, 1};
    const int64_t indices[B] = {3, 1, 4};
    float pictures[B * 192], one[192], x[B * 32], z[B * 32], want[B * 192];
    sample_pipeline_run(&p, labels, indices, B, pictures);
    /* The reference: the sampler alone, the normalisation undone here, then decode. */
    sampler s;
    sampler_create(&s, &m, &o, SIGMA_DATA, B);
    sampler_run(&s, labels, indices, B, x);
    sampler_destroy(&s);
    for (int b = 0; b < B; b++)
        for (int c = 0; c < 2; c++)
            for (int i = 0; i < 16; i++) {
                const int k = (b * 2 + c) * 16 + i;
                z[k] = (float)((double)x[k] / SIGMA_DATA * std[c] + mean[c]);
            }
    autoencoder_decode(&ae, z, B, want);
    double worst = 0, spread = 0;
    for (int i = 0; i < B * 192; i++) {
        worst = fmax(worst, fabs((double)pictures[i] - (double)want[i]));
        spread = fmax(spread, fabs((double)want[i] - (double)want[0]));
    }
    CHECK_MSG(worst < 1e-5, "latent pipeline: pictures differ from decode(x / sigma_data * std + mean) by %g", worst);
    CHECK_MSG(spread > 1e-3, "latent pipeline: the pictures are constant (%g)", spread);
    sample_pipeline_run(&p, labels + 1, indices + 1, 1, one);
    CHECK_MSG(same(one, pictures + 192, 192), "latent pipeline: a batch of 1 differs from the same sample in a batch");
    sample_pipeline_destroy(&p);
    autoencoder_destroy(&ae);
    dit_destroy(&m);
}

int main(void) {
    test_closed_form();
    test_random_weights();
    test_churn_closed_form();
    test_latent_pipeline();
    return test_finish("test_sampler");
}

/* See sampler.h. */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "edm.h"
#include "fatal.h"
#include "rng.h"

static sampler_options with_defaults(const sampler_options *o) {
    sampler_options r = *o;
    if (r.sigma_min <= 0) r.sigma_min = EDM_SIGMA_MIN;
    if (r.sigma_max <= 0) r.sigma_max = EDM_SIGMA_MAX;
    if (r.rho <= 0) r.rho = EDM_RHO;
    if (r.churn_min <= 0) r.churn_min = 0.05;
    if (r.churn_max <= 0) r.churn_max = 50.0;
    if (r.churn_noise <= 0) r.churn_noise = 1.003;
    return r;
}

void sampler_schedule(const sampler_options *options, double *sigmas) {
    sampler_options o = with_defaults(options);
    /* Rounded to float: the noise levels the network's preconditioning sees (in float
     * batches) are then exactly the ones the steps use. */
    for (int i = 0; i < o.steps; i++)
        sigmas[i] = (double)(float)edm_schedule_sigma(i, o.steps, o.sigma_min, o.sigma_max, o.rho);
    sigmas[o.steps] = 0.0;
}

int sampler_network_evaluations(const sampler_options *options) {
    return options->method == SAMPLER_HEUN ? 2 * options->steps - 1 : options->steps;
}

sampler_options sampler_options_checked(const sampler_options *options) {
    if (options->steps < 1) fatal_input("sampler: steps must be at least 1, got %d", options->steps);
    if (!(options->guidance >= 0) || !isfinite(options->guidance))
        fatal_input("sampler: the guidance scale must be a finite number >= 0, got %g", options->guidance);
    if (!(options->churn >= 0) || !isfinite(options->churn))
        fatal_input("sampler: churn must be a finite number >= 0, got %g", options->churn);
    if (options->method != SAMPLER_HEUN && options->method != SAMPLER_EULER)
        fatal_input("sampler: unknown method %d", (int)options->method);
    return with_defaults(options);
}

void sampler_create(sampler *s, dit_model *model, const sampler_options *options, double sigma_data,
                    int max_batch) {
    memset(s, 0, sizeof *s);
    s->model = model;
    s->options = sampler_options_checked(options);
    s->sigma_data = sigma_data;
    s->max_batch = max_batch;
    s->guided = options->guidance != 1.0;
    const int passes = s->guided ? 2 : 1;
    if (max_batch < 1 || passes * max_batch > model->max_batch)
        fatal_internal("sampler_create: %d samples need a model for batches of %d, it holds %d", max_batch,
                       passes * max_batch, model->max_batch);
    const dit_shape *sh = &model->shape;
    s->per_sample = (int64_t)sh->in_channels * sh->input_size * sh->input_size;
    const size_t b = (size_t)max_batch, nb = (size_t)passes * b, ps = (size_t)s->per_sample;
    const size_t doubles = (size_t)s->options.steps + 1;
    const size_t floats = 4 * b * ps + 3 * nb * ps + 2 * nb;
    s->memory = xmalloc(sizeof(double) * doubles + sizeof(float) * floats + sizeof(int) * nb);
    s->sigmas = s->memory;
    float *f = (float *)(s->sigmas + doubles);
    s->x = f, f += b * ps;
    s->x_next = f, f += b * ps;
    s->d = f, f += b * ps;
    s->denoised = f, f += b * ps;
    s->net_x = f, f += nb * ps;
    s->net_out = f, f += nb * ps;
    s->net_denoised = f, f += nb * ps;
    s->net_t = f, f += nb;
    s->net_sigma = f, f += nb;
    s->net_y = (int *)f;
    sampler_schedule(&s->options, s->sigmas);
}

void sampler_destroy(sampler *s) {
    free(s->memory);
    memset(s, 0, sizeof *s);
}

void sampler_initial_noise(uint64_t seed, int64_t index, double sigma_max, int64_t per_sample, float *out) {
    rng_stream rng = rng_stream_for(seed, SAMPLER_PURPOSE_NOISE, (uint64_t)index);
    const float scale = (float)sigma_max;
    for (int64_t i = 0; i < per_sample; i++) out[i] = scale * rng_normal(&rng);
}

/* denoised (batch, per_sample) = D(x; sigma) with guidance. The network always
 * runs on the same number of rows, max_batch (2 max_batch under guidance:
 * conditional rows first, then unconditional), the rows past batch being zeros:
 * dit_forward's result for a row depends on the number of rows in the call
 * (OpenBLAS takes other paths for small matrices), not on its position, so a
 * sample is the same whatever batch it is part of. */
static void denoise(sampler *s, const float *x, double sigma, const int *labels, int batch, float *denoised) {
    const int passes = s->guided ? 2 : 1, rows = s->max_batch, n = passes * rows;
    const int64_t ps = s->per_sample, block = (int64_t)rows * ps, used = (int64_t)batch * ps;
    for (int p = 0; p < passes; p++) {
        memcpy(s->net_x + p * block, x, sizeof(float) * (size_t)used);
        memset(s->net_x + p * block + used, 0, sizeof(float) * (size_t)(block - used));
        for (int b = 0; b < rows; b++)
            s->net_y[p * rows + b] = p == 0 && b < batch ? labels[b] : s->model->shape.num_classes;
    }
    for (int i = 0; i < n; i++) s->net_sigma[i] = (float)sigma;
    /* net_denoised holds the network input, then (after the pass) the denoised rows. */
    edm_network_input(s->net_denoised, s->net_t, s->net_x, s->net_sigma, n, (int)ps, s->sigma_data);
    dit_forward(s->model, s->net_denoised, s->net_t, s->net_y, n, s->net_out);
    edm_denoised(s->net_denoised, s->net_x, s->net_out, s->net_sigma, n, (int)ps, s->sigma_data);
    if (!s->guided) {
        memcpy(denoised, s->net_denoised, sizeof(float) * (size_t)used);
        return;
    }
    const float w = (float)s->options.guidance;
    const float *cond = s->net_denoised, *uncond = s->net_denoised + block;
    for (int64_t i = 0; i < used; i++) denoised[i] = uncond[i] + w * (cond[i] - uncond[i]);
}

void sampler_run(sampler *s, const int *labels, const int64_t *indices, int batch, float *out) {
    if (batch < 1 || batch > s->max_batch)
        fatal_internal("sampler_run: batch %d outside [1, %d]", batch, s->max_batch);
    const int64_t ps = s->per_sample, n = (int64_t)batch * ps;
    for (int b = 0; b < batch; b++)
        sampler_initial_noise(s->options.seed, indices[b], s->sigmas[0], ps, s->x + b * ps);
    float *x = s->x, *x_next = s->x_next, *d = s->d, *den = s->denoised;
    const sampler_options *o = &s->options;
    const double gamma_max = fmin(o->churn / o->steps, sqrt(2.0) - 1.0);
    for (int i = 0; i < o->steps; i++) {
        double sigma = s->sigmas[i];
        const double sigma_next = s->sigmas[i + 1];
        if (gamma_max > 0 && sigma >= o->churn_min && sigma <= o->churn_max) {
            /* Raise the noise level to sigma_hat (a float, as the network sees it)
             * by adding fresh noise of std sqrt(sigma_hat^2 - sigma^2). */
            const double sigma_hat = (double)(float)(sigma * (1.0 + gamma_max));
            const float scale = (float)(sqrt(sigma_hat * sigma_hat - sigma * sigma) * o->churn_noise);
            for (int b = 0; b < batch; b++) {
                rng_stream rng = rng_stream_for(o->seed, rng_hash(SAMPLER_PURPOSE_CHURN, (uint64_t)i), (uint64_t)indices[b]);
                float *xb = x + b * ps;
                for (int64_t j = 0; j < ps; j++) xb[j] += scale * rng_normal(&rng);
            }
            sigma = sigma_hat;
        }
        const float h = (float)(sigma_next - sigma), inv_sigma = (float)(1.0 / sigma);
        denoise(s, x, sigma, labels, batch, den);
        for (int64_t j = 0; j < n; j++) {
            d[j] = (x[j] - den[j]) * inv_sigma;
            x_next[j] = x[j] + h * d[j];
        }
        if (s->options.method == SAMPLER_HEUN && sigma_next > 0) {
            const float inv_next = (float)(1.0 / sigma_next);
            denoise(s, x_next, sigma_next, labels, batch, den);
            for (int64_t j = 0; j < n; j++) {
                const float d_next = (x_next[j] - den[j]) * inv_next;
                x_next[j] = x[j] + h * (0.5f * d[j] + 0.5f * d_next);
            }
        }
        float *t = x;
        x = x_next;
        x_next = t;
    }
    memcpy(out, x, sizeof(float) * (size_t)n);
}

/* The consistency function, the discretisation and the multistep sampler (see
 * consistency.h). Per-element arithmetic in double, rounded once, as in edm.c. */
#include "consistency.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "edm.h"
#include "fatal.h"
#include "rng.h"
#include "sampler.h"

/* The midpoint of 2-step sampling in the consistency-models paper. */
#define CONSISTENCY_TWO_STEP_MIDPOINT 0.821

consistency_scaling consistency_scalings(double sigma, double sigma_data, double sigma_min) {
    /* The float a batch carries for sigma_min: sigma - smin is then exactly 0 there,
     * c_skip exactly 1 and c_out exactly 0. */
    const double smin = (double)(float)sigma_min, d2 = sigma_data * sigma_data, shifted = sigma - smin;
    consistency_scaling s;
    s.c_skip = d2 / (shifted * shifted + d2);
    s.c_out = sigma_data * shifted / sqrt(sigma * sigma + d2);
    return s;
}

void consistency_output(float *f, const float *x, const float *F, const float *sigma, int batch, int per_sample,
                        double sigma_data, double sigma_min) {
    for (int b = 0; b < batch; b++) {
        const consistency_scaling s = consistency_scalings(sigma[b], sigma_data, sigma_min);
        const size_t offset = (size_t)b * per_sample;
        for (int j = 0; j < per_sample; j++)
            f[offset + j] = (float)(s.c_skip * (double)x[offset + j] + s.c_out * (double)F[offset + j]);
    }
}

void consistency_buffers_create(consistency_buffers *b, const dit_shape *shape, int max_batch) {
    const size_t ps = (size_t)shape->in_channels * shape->input_size * shape->input_size, n = (size_t)max_batch;
    b->memory = xmalloc(sizeof(float) * (2 * n * ps + n));
    b->net_in = b->memory;
    b->F = b->net_in + n * ps;
    b->t = b->F + n * ps;
}

void consistency_buffers_destroy(consistency_buffers *b) {
    free(b->memory);
    memset(b, 0, sizeof *b);
}

void consistency_apply(dit_model *model, consistency_buffers *b, const float *x, const float *sigma, const int *y,
                       const float *guidance, int batch, double sigma_data, double sigma_min, float *f) {
    const dit_shape *sh = &model->shape;
    const int ps = sh->in_channels * sh->input_size * sh->input_size;
    edm_network_input(b->net_in, b->t, x, sigma, batch, ps, sigma_data);
    dit_forward_guided(model, b->net_in, b->t, y, guidance, batch, b->F);
    consistency_output(f, x, b->F, sigma, batch, ps, sigma_data, sigma_min);
}

double consistency_point(int i, int n, double sigma_min, double sigma_max, double rho) {
    return (double)(float)edm_schedule_sigma(n - 1 - i, n, sigma_min, sigma_max, rho);
}

int consistency_default_points(int steps, double sigma_min, double sigma_max, double rho, double *sigmas) {
    switch (steps) {
    case 1: sigmas[0] = sigma_max; return 1;
    case 2:
        sigmas[0] = sigma_max;
        sigmas[1] = CONSISTENCY_TWO_STEP_MIDPOINT > sigma_min && CONSISTENCY_TWO_STEP_MIDPOINT < sigma_max
                        ? CONSISTENCY_TWO_STEP_MIDPOINT
                        : edm_schedule_sigma(1, 3, sigma_min, sigma_max, rho);
        return 1;
    case 4:
        for (int i = 0; i < 4; i++) sigmas[i] = edm_schedule_sigma(i, 5, sigma_min, sigma_max, rho);
        return 1;
    default: return 0;
    }
}

/* ---- the multistep sampler ---- */

void consistency_sampler_check(const consistency_sampler_options *o) {
    if (o->steps < 1 || o->steps > CONSISTENCY_MAX_STEPS)
        fatal_input("consistency sampler: steps must be in [1, %d], got %d", CONSISTENCY_MAX_STEPS, o->steps);
    for (int k = 0; k < o->steps; k++)
        if (!(o->sigmas[k] > (double)(float)o->sigma_min) || !isfinite(o->sigmas[k]) ||
            (k > 0 && !(o->sigmas[k] < o->sigmas[k - 1])))
            fatal_input("consistency sampler: sigma point %d (%g): expected decreasing points above sigma_min (%g)",
                        k, o->sigmas[k], o->sigma_min);
}

void consistency_sampler_create(consistency_sampler *s, dit_model *model, const consistency_sampler_options *options,
                                double sigma_data, int max_batch) {
    memset(s, 0, sizeof *s);
    const consistency_sampler_options *o = options;
    consistency_sampler_check(o);
    if (max_batch < 1 || max_batch > model->max_batch)
        fatal_internal("consistency_sampler_create: %d samples need a model for batches of %d, it holds %d",
                       max_batch, max_batch, model->max_batch);
    s->model = model;
    s->options = *o;
    s->sigma_data = sigma_data;
    s->max_batch = max_batch;
    const dit_shape *sh = &model->shape;
    s->per_sample = (int64_t)sh->in_channels * sh->input_size * sh->input_size;
    const size_t b = (size_t)max_batch, ps = (size_t)s->per_sample;
    if (!sh->guidance_input != !(o->guidance > 0))
        fatal_internal("consistency_sampler_create: a model %s a guidance input, given guidance %g",
                       sh->guidance_input ? "with" : "without", o->guidance);
    s->memory = xcalloc(1, sizeof(float) * (2 * b * ps + 2 * b) + sizeof(int) * b);
    s->x = s->memory;
    s->f = s->x + b * ps;
    s->sigma = s->f + b * ps;
    s->guidance = s->sigma + b;
    for (size_t i = 0; i < b; i++) s->guidance[i] = (float)o->guidance;
    s->y = (int *)(s->guidance + b);
    consistency_buffers_create(&s->buffers, sh, max_batch);
}

void consistency_sampler_destroy(consistency_sampler *s) {
    consistency_buffers_destroy(&s->buffers);
    free(s->memory);
    memset(s, 0, sizeof *s);
}

void consistency_sampler_run(consistency_sampler *s, const int *labels, const int64_t *indices, int batch,
                             float *out) {
    if (batch < 1 || batch > s->max_batch)
        fatal_internal("consistency_sampler_run: batch %d outside [1, %d]", batch, s->max_batch);
    const consistency_sampler_options *o = &s->options;
    const int rows = s->max_batch;
    const int64_t ps = s->per_sample, used = (int64_t)batch * ps;
    const double smin = (double)(float)o->sigma_min;
    /* Rows past batch stay zero with the null class: padding only. */
    memset(s->x, 0, sizeof(float) * (size_t)rows * (size_t)ps);
    for (int b = 0; b < rows; b++) s->y[b] = b < batch ? labels[b] : s->model->shape.num_classes;
    for (int b = 0; b < batch; b++) sampler_initial_noise(o->seed, indices[b], o->sigmas[0], ps, s->x + b * ps);
    for (int k = 0; k < o->steps; k++) {
        const float sigma = (float)o->sigmas[k];
        if (k > 0) {
            const float scale = (float)sqrt((double)sigma * sigma - smin * smin);
            for (int b = 0; b < batch; b++) {
                rng_stream rng =
                    rng_stream_for(o->seed, rng_hash(CONSISTENCY_PURPOSE_NOISE, (uint64_t)k), (uint64_t)indices[b]);
                float *xb = s->x + b * ps;
                for (int64_t j = 0; j < ps; j++) xb[j] += scale * rng_normal(&rng);
            }
        }
        for (int b = 0; b < rows; b++) s->sigma[b] = sigma;
        consistency_apply(s->model, &s->buffers, s->x, s->sigma, s->y, s->model->shape.guidance_input ? s->guidance : NULL,
                          rows, s->sigma_data, o->sigma_min, s->f);
        memcpy(s->x, s->f, sizeof(float) * (size_t)used);
    }
    memcpy(out, s->x, sizeof(float) * (size_t)used);
}

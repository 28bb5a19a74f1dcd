/* The samplers on the GPU (see sampler_cuda.h): the host walks the steps of
 * sampler.c and consistency.c, computing each step's coefficients in double as
 * they do, and queues the network passes and the elementwise kernels
 * (sampler_cuda_kernels.h) on the model's stream. */
#ifdef LDM_HAVE_CUDA

#include "sampler_cuda.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dit_cuda_kernels.h"
#include "edm.h"
#include "fatal.h"
#include "rng.h"
#include "sampler_cuda_kernels.h"

/* The buffers for passes * max_batch network rows. */
static void lay_out(sampler_cuda *s, dit_cuda_model *model, double sigma_data, int max_batch, int passes) {
    if (max_batch < 1 || passes * max_batch > model->max_batch)
        fatal_internal("sampler_cuda_create: %d samples need a model for batches of %d, it holds %d", max_batch,
                       passes * max_batch, model->max_batch);
    s->model = model;
    s->sigma_data = sigma_data;
    s->max_batch = max_batch;
    s->passes = passes;
    const dit_shape *sh = &model->shape;
    s->per_sample = (int64_t)sh->in_channels * sh->input_size * sh->input_size;
    const size_t b = (size_t)max_batch, n = (size_t)passes * b, ps = (size_t)s->per_sample;
    const size_t floats = 4 * b * ps + 2 * n * ps + 2 * n;
    s->device_memory = cuda_buffer_alloc(sizeof(float) * floats + sizeof(int) * n);
    float *f = s->device_memory;
    s->x = f, f += b * ps;
    s->x_next = f, f += b * ps;
    s->d = f, f += b * ps;
    s->noise = f, f += b * ps;
    s->net_in = f, f += n * ps;
    s->net_out = f, f += n * ps;
    s->t = f, f += n;
    s->guidance = f, f += n;
    s->y = (int *)f;
    s->host_noise = cuda_pinned_alloc(sizeof(float) * b * ps);
    s->host_y = cuda_pinned_alloc(sizeof(int) * n);
}

void sampler_cuda_create(sampler_cuda *s, dit_cuda_model *model, const sampler_options *options, double sigma_data,
                         int max_batch) {
    memset(s, 0, sizeof *s);
    s->options = sampler_options_checked(options);
    lay_out(s, model, sigma_data, max_batch, s->options.guidance != 1.0 ? 2 : 1);
    s->sigmas = xmalloc(sizeof(double) * ((size_t)s->options.steps + 1));
    sampler_schedule(&s->options, s->sigmas);
}

void sampler_cuda_create_consistency(sampler_cuda *s, dit_cuda_model *model,
                                     const consistency_sampler_options *options, double sigma_data, int max_batch) {
    memset(s, 0, sizeof *s);
    consistency_sampler_check(options);
    if (!model->shape.guidance_input != !(options->guidance > 0))
        fatal_internal("sampler_cuda_create_consistency: a model %s a guidance input, given guidance %g",
                       model->shape.guidance_input ? "with" : "without", options->guidance);
    s->consistency = 1;
    s->consistency_options = *options;
    lay_out(s, model, sigma_data, max_batch, 1);
    sampler_fill_cuda(s->guidance, (float)options->guidance, (size_t)max_batch, model->stream);
}

void sampler_cuda_destroy(sampler_cuda *s) {
    if (s->model) dit_cuda_synchronize(s->model); /* nothing queued may still use the buffers */
    cuda_buffer_free(s->device_memory);
    cuda_pinned_free(s->host_noise);
    cuda_pinned_free(s->host_y);
    free(s->sigmas);
    memset(s, 0, sizeof *s);
}

/* The labels of the network's rows (host_y, then y): in each pass block the
 * first batch rows take labels (the unconditional block, the null class), the
 * padding rows the null class. */
static void upload_labels(sampler_cuda *s, const int *labels, int batch) {
    const int rows = s->max_batch, null_class = s->model->shape.num_classes;
    for (int p = 0; p < s->passes; p++)
        for (int b = 0; b < rows; b++) s->host_y[p * rows + b] = p == 0 && b < batch ? labels[b] : null_class;
    cuda_copy_to_device_async(s->y, s->host_y, sizeof(int) * (size_t)(s->passes * rows), s->model->stream);
}

/* Queues host_noise (used values) into the device's noise buffer; the host
 * must wait for the stream before it writes host_noise again. */
static void upload_noise(sampler_cuda *s, float *device, size_t used) {
    cuda_copy_to_device_async(device, s->host_noise, sizeof(float) * used, s->model->stream);
}

/* The network at noise level sigma (a float, as the CPU's batches carry it) on
 * the preconditioned x (batch rows, the rest of the max_batch rows of each pass
 * zero): out = F. */
static void network_pass(sampler_cuda *s, const float *x, double sigma, int batch, int rows) {
    dit_cuda_model *m = s->model;
    const double sigma_f = (double)(float)sigma;
    const edm_precond p = edm_preconditioning(sigma_f, s->sigma_data);
    const int n = s->passes * rows;
    sampler_network_input_cuda(s->net_in, x, p.c_in, batch, rows, s->passes, (int)s->per_sample, m->stream);
    sampler_fill_cuda(s->t, (float)edm_time_input(sigma_f), (size_t)n, m->stream);
    dit_cuda_forward(m, s->net_in, s->t, s->y, m->shape.guidance_input ? s->guidance : NULL, n, s->net_out);
}

/* sampler.c's sampler_run, queued. */
static const float *run_edm(sampler_cuda *s, const int *labels, const int64_t *indices, int batch) {
    const sampler_options *o = &s->options;
    const int rows = s->max_batch;
    const int64_t ps = s->per_sample;
    const size_t used = (size_t)batch * (size_t)ps, block = (size_t)rows * (size_t)ps;
    ldm_stream stream = s->model->stream;
    dit_cuda_synchronize(s->model); /* the host buffers are free again */
    for (int b = 0; b < batch; b++) sampler_initial_noise(o->seed, indices[b], s->sigmas[0], ps, s->host_noise + b * ps);
    upload_noise(s, s->x, used);
    upload_labels(s, labels, batch);
    float *x = s->x, *x_next = s->x_next;
    const double gamma_max = fmin(o->churn / o->steps, sqrt(2.0) - 1.0);
    const int guided = s->passes == 2;
    for (int i = 0; i < o->steps; i++) {
        double sigma = s->sigmas[i];
        const double sigma_next = s->sigmas[i + 1];
        if (gamma_max > 0 && sigma >= o->churn_min && sigma <= o->churn_max) {
            const double sigma_hat = (double)(float)(sigma * (1.0 + gamma_max));
            const float scale = (float)(sqrt(sigma_hat * sigma_hat - sigma * sigma) * o->churn_noise);
            dit_cuda_synchronize(s->model); /* the previous noise has been copied */
            for (int b = 0; b < batch; b++) {
                rng_stream rng =
                    rng_stream_for(o->seed, rng_hash(SAMPLER_PURPOSE_CHURN, (uint64_t)i), (uint64_t)indices[b]);
                float *nb = s->host_noise + b * ps;
                for (int64_t j = 0; j < ps; j++) nb[j] = scale * rng_normal(&rng);
            }
            upload_noise(s, s->noise, used);
            sampler_add_cuda(x, s->noise, used, stream);
            sigma = sigma_hat;
        }
        const float h = (float)(sigma_next - sigma), inv_sigma = (float)(1.0 / sigma);
        const float w = (float)o->guidance;
        network_pass(s, x, sigma, batch, rows);
        edm_precond p = edm_preconditioning((double)(float)sigma, s->sigma_data);
        sampler_edm_step_cuda(x_next, s->d, x, s->net_out, block, p.c_skip, p.c_out, guided, w, inv_sigma, h, 0, used,
                              stream);
        if (o->method == SAMPLER_HEUN && sigma_next > 0) {
            const float inv_next = (float)(1.0 / sigma_next);
            network_pass(s, x_next, sigma_next, batch, rows);
            p = edm_preconditioning((double)(float)sigma_next, s->sigma_data);
            sampler_edm_step_cuda(x_next, s->d, x, s->net_out, block, p.c_skip, p.c_out, guided, w, inv_next, h, 1,
                                  used, stream);
        }
        float *t = x;
        x = x_next;
        x_next = t;
    }
    return x;
}

/* consistency.c's consistency_sampler_run, queued. */
static const float *run_consistency(sampler_cuda *s, const int *labels, const int64_t *indices, int batch) {
    const consistency_sampler_options *o = &s->consistency_options;
    const int rows = s->max_batch;
    const int64_t ps = s->per_sample;
    const size_t used = (size_t)batch * (size_t)ps, all = (size_t)rows * (size_t)ps;
    const double smin = (double)(float)o->sigma_min;
    ldm_stream stream = s->model->stream;
    dit_cuda_synchronize(s->model);
    /* Rows past batch stay zero with the null class: padding only. */
    memset(s->host_noise, 0, sizeof(float) * all);
    for (int b = 0; b < batch; b++) sampler_initial_noise(o->seed, indices[b], o->sigmas[0], ps, s->host_noise + b * ps);
    upload_noise(s, s->x, all);
    upload_labels(s, labels, batch);
    for (int k = 0; k < o->steps; k++) {
        const float sigma = (float)o->sigmas[k];
        if (k > 0) {
            const float scale = (float)sqrt((double)sigma * sigma - smin * smin);
            dit_cuda_synchronize(s->model);
            for (int b = 0; b < batch; b++) {
                rng_stream rng =
                    rng_stream_for(o->seed, rng_hash(CONSISTENCY_PURPOSE_NOISE, (uint64_t)k), (uint64_t)indices[b]);
                float *nb = s->host_noise + b * ps;
                for (int64_t j = 0; j < ps; j++) nb[j] = scale * rng_normal(&rng);
            }
            upload_noise(s, s->noise, used);
            sampler_add_cuda(s->x, s->noise, used, stream);
        }
        network_pass(s, s->x, sigma, rows, rows);
        const consistency_scaling c = consistency_scalings((double)sigma, s->sigma_data, o->sigma_min);
        sampler_consistency_output_cuda(s->x, s->x, s->net_out, c.c_skip, c.c_out, used, stream);
    }
    return s->x;
}

const float *sampler_cuda_run(sampler_cuda *s, const int *labels, const int64_t *indices, int batch) {
    if (batch < 1 || batch > s->max_batch)
        fatal_internal("sampler_cuda_run: batch %d outside [1, %d]", batch, s->max_batch);
    return s->consistency ? run_consistency(s, labels, indices, batch) : run_edm(s, labels, indices, batch);
}

#endif /* LDM_HAVE_CUDA */

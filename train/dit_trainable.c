/* The DiT trained as an EDM denoiser: for each sample a noise level, noise and
 * label dropout drawn from its own stream keyed by (seed, step, the sample's
 * row in the data set), so nothing depends on history, on the world size or on
 * which rank holds the sample; the preconditioned network input; the weighted
 * loss and its gradient. Statistics: the loss binned by noise level. All
 * buffers are laid out at creation. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "dit.h"
#include "dit_pictures.h"
#include "edm.h"
#include "fatal.h"
#include "rng.h"
#include "trainable.h"

#define PURPOSE_TRAINING_NOISE 0x747261696e6e6f69ull /* "trainnoi" */

/* Loss bins by sigma: [0, 0.1), [0.1, 0.3), [0.3, 1), [1, 3), [3, 10), [10, inf). */
#define SIGMA_BINS 6
static const double sigma_bin_edges[SIGMA_BINS - 1] = {0.1, 0.3, 1.0, 3.0, 10.0};
/* statistics: per bin the loss sum, then per bin the count */
#define STAT_BIN_LOSS 0
#define STAT_BIN_COUNT SIGMA_BINS

static const char *const dit_settings_keys[] = {"class_dropout", NULL};

typedef struct {
    const ldm_config *config;
    dit_model model;
    int64_t per_sample;  /* P = C * H * W */
    int *y;              /* (B) labels given to the DiT; num_classes = the null class */
    float *sigma;        /* (B) */
    float *noise;        /* (B, P) */
    float *net_in;       /* (B, P) */
    float *t;            /* (B) */
    float *F;            /* (B, P) network output */
    float *d_F;          /* (B, P) */
    float *sample_loss;  /* (B) */
    dit_pictures *pictures; /* rank 0: the pictures of train.sample_every, or NULL */
} dit_trainer;

static int sigma_bin(double sigma) {
    int bin = 0;
    while (bin < SIGMA_BINS - 1 && sigma >= sigma_bin_edges[bin]) bin++;
    return bin;
}

static void dit_zero_grad_entry(trainable *self) { dit_zero_grad(&((dit_trainer *)self->self)->model); }

/* Each sample's noise level, noise and label from its own stream. */
static void draw_step_randomness(dit_trainer *d, const int32_t *labels, const int64_t *index, int batch,
                                 int64_t step) {
    const ldm_config *config = d->config;
    uint64_t base = rng_hash(config->train.seed, PURPOSE_TRAINING_NOISE);
    int null_class = config->model.num_classes;
    int64_t per_sample = d->per_sample;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < batch; i++) {
        rng_stream rng = rng_stream_for(base, (uint64_t)step, (uint64_t)index[i]);
        d->sigma[i] = edm_draw_sigma(&rng, config->diffusion.p_mean, config->diffusion.p_std);
        int dropped = rng_uniform(&rng) < (float)config->model.class_dropout;
        d->y[i] = (labels[i] < 0 || dropped) ? null_class : labels[i];
        float *noise = d->noise + (size_t)i * (size_t)per_sample;
        for (int64_t j = 0; j < per_sample; j++) noise[j] = rng_normal(&rng);
    }
}

static double dit_micro_batch(trainable *self, const float *samples, const int32_t *labels, const int64_t *index,
                              int batch, int64_t step, float loss_weight, double *statistics) {
    dit_trainer *d = self->self;
    double sigma_data = d->config->diffusion.sigma_data;
    draw_step_randomness(d, labels, index, batch, step);
    edm_training_input(d->net_in, d->t, samples, d->sigma, d->noise, batch, (int)d->per_sample, sigma_data);
    dit_forward(&d->model, d->net_in, d->t, d->y, batch, d->F);
    double loss = edm_training_loss(d->sample_loss, d->d_F, loss_weight, samples, d->sigma, d->noise, d->F, batch,
                                    (int)d->per_sample, sigma_data);
    dit_backward(&d->model, d->d_F, NULL, batch);
    for (int i = 0; i < batch; i++) {
        int bin = sigma_bin(d->sigma[i]);
        statistics[STAT_BIN_LOSS + bin] += d->sample_loss[i];
        statistics[STAT_BIN_COUNT + bin] += 1;
    }
    return loss;
}

static void append(char *out, size_t size, size_t *used, const char *fmt, double value, int is_number) {
    if (*used >= size) return;
    int n = is_number && !isfinite(value) ? snprintf(out + *used, size - *used, "null")
                                          : snprintf(out + *used, size - *used, fmt, value);
    if (n > 0) *used += (size_t)n;
}

static void dit_statistics_json(const trainable *self, const double *statistics, char *out, size_t size) {
    (void)self;
    size_t used = 0;
    append(out, size, &used, "\"sigma_bins\": [0", 0, 0);
    for (int b = 0; b < SIGMA_BINS - 1; b++) append(out, size, &used, ", %g", sigma_bin_edges[b], 1);
    append(out, size, &used, "], \"loss_by_sigma\": [", 0, 0);
    for (int b = 0; b < SIGMA_BINS; b++) {
        if (b) append(out, size, &used, ", ", 0, 0);
        double count = statistics[STAT_BIN_COUNT + b];
        append(out, size, &used, "%.9g", count > 0 ? statistics[STAT_BIN_LOSS + b] / count : NAN, 1);
    }
    append(out, size, &used, "], \"count_by_sigma\": [", 0, 0);
    for (int b = 0; b < SIGMA_BINS; b++) append(out, size, &used, b ? ", %.0f" : "%.0f", statistics[STAT_BIN_COUNT + b], 1);
    append(out, size, &used, "]", 0, 0);
}

static void dit_prepare_pictures(trainable *self, const trainable_validation *context) {
    dit_trainer *d = self->self;
    d->pictures = dit_pictures_create(&d->model.shape, d->config->diffusion.sigma_data, context->data,
                                      context->autoencoder, NULL);
}

static void dit_write_pictures(trainable *self, const trainable_validation *context, char *json, size_t json_size,
                               char *line, size_t line_size) {
    dit_trainer *d = self->self;
    dit_pictures_write(d->pictures, context->ema, context->step, context->run_dir, json, json_size, line, line_size);
}

static void dit_destroy_entry(trainable *self) {
    dit_trainer *d = self->self;
    dit_pictures_destroy(d->pictures);
    dit_destroy(&d->model);
    free(d->y), free(d->sigma), free(d->noise), free(d->net_in), free(d->t), free(d->F), free(d->d_F);
    free(d->sample_loss);
    free(d);
    free(self);
}

trainable *dit_trainable_create(const ldm_config *config, int micro_batch) {
    dit_trainer *d = xcalloc(1, sizeof *d);
    d->config = config;
    dit_shape shape = cli_dit_shape(config);
    /* bf16/fp16: the DiT rounds GEMM inputs and keeps 16-bit activations (dit.h);
     * master weights, gradients and the loss stay fp32. */
    dit_create_precision(&d->model, &shape, micro_batch, (ldm_precision)precision_from_name(config->train.precision));
    dit_init_weights(&d->model, config->train.seed);
    d->per_sample = (int64_t)shape.in_channels * shape.input_size * shape.input_size;
    size_t n = (size_t)micro_batch * (size_t)d->per_sample;
    d->y = xmalloc((size_t)micro_batch * sizeof(int));
    d->sigma = xmalloc((size_t)micro_batch * sizeof(float));
    d->noise = xmalloc(n * sizeof(float));
    d->net_in = xmalloc(n * sizeof(float));
    d->t = xmalloc((size_t)micro_batch * sizeof(float));
    d->F = xmalloc(n * sizeof(float));
    d->d_F = xmalloc(n * sizeof(float));
    d->sample_loss = xmalloc((size_t)micro_batch * sizeof(float));

    trainable *t = xcalloc(1, sizeof *t);
    *t = (trainable){
        .kind = "dit",
        .shape_section = "model",
        .settings_keys = dit_settings_keys,
        .table = &d->model.table,
        .params = d->model.params,
        .grads = d->model.grads,
        .fixed = d->model.fixed,
        .count = d->model.table.trainable_numel,
        .expect_channels = shape.in_channels,
        .expect_size = shape.input_size,
        .expect_num_classes = config->model.num_classes,
        .statistic_count = 2 * SIGMA_BINS,
        .zero_grad = dit_zero_grad_entry,
        .micro_batch = dit_micro_batch,
        .statistics_json = dit_statistics_json,
        .validate = dit_write_pictures,
        .validates_without_data = 1,
        .prepare_validation = dit_prepare_pictures,
        .destroy = dit_destroy_entry,
        .self = d,
    };
    return t;
}

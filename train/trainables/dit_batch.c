/* The host side of a DiT training step under EDM (see dit_batch.h): per-sample
 * randomness, network input, loss and its gradient, the loss binned by sigma. */
#include "dit_batch.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "edm.h"
#include "fatal.h"
#include "rng.h"

#define PURPOSE_TRAINING_NOISE 0x747261696e6e6f69ull /* "trainnoi" */

/* Loss bins by sigma: [0, 0.1), [0.1, 0.3), [0.3, 1), [1, 3), [3, 10), [10, inf). */
#define SIGMA_BINS 6
static const double sigma_bin_edges[SIGMA_BINS - 1] = {0.1, 0.3, 1.0, 3.0, 10.0};
/* statistics: per bin the loss sum, then per bin the count */
#define STAT_BIN_LOSS 0
#define STAT_BIN_COUNT SIGMA_BINS

static const char *const dit_settings_keys[] = {"class_dropout", NULL};

static int sigma_bin(double sigma) {
    int bin = 0;
    while (bin < SIGMA_BINS - 1 && sigma >= sigma_bin_edges[bin]) bin++;
    return bin;
}

void dit_batch_create(dit_batch *b, const ldm_config *config, const dit_shape *shape, int micro_batch,
                      int network_on_host) {
    *b = (dit_batch){.config = config, .shape = *shape};
    b->per_sample = (int64_t)shape->in_channels * shape->input_size * shape->input_size;
    b->y = xmalloc((size_t)micro_batch * sizeof(int));
    b->sigma = xmalloc((size_t)micro_batch * sizeof(float));
    b->t = xmalloc((size_t)micro_batch * sizeof(float));
    b->sample_loss = xmalloc((size_t)micro_batch * sizeof(float));
    if (!network_on_host) return;
    size_t n = (size_t)micro_batch * (size_t)b->per_sample;
    b->noise = xmalloc(n * sizeof(float));
    b->net_in = xmalloc(n * sizeof(float));
    b->F = xmalloc(n * sizeof(float));
    b->d_F = xmalloc(n * sizeof(float));
}

void dit_batch_destroy(dit_batch *b) {
    free(b->y), free(b->sigma), free(b->noise), free(b->net_in), free(b->t), free(b->F), free(b->d_F);
    free(b->sample_loss);
}

/* Sample i's noise level and label: the first draws of its own stream, which
 * is left where its noise begins. */
static rng_stream draw_conditions(dit_batch *b, const int32_t *labels, const int64_t *index, int i, int64_t step) {
    const ldm_config *config = b->config;
    rng_stream rng = rng_stream_for(rng_hash(config->train.seed, PURPOSE_TRAINING_NOISE), (uint64_t)step,
                                    (uint64_t)index[i]);
    b->sigma[i] = edm_draw_sigma(&rng, config->diffusion.p_mean, config->diffusion.p_std);
    int dropped = rng_uniform(&rng) < (float)config->model.class_dropout;
    b->y[i] = (labels[i] < 0 || dropped) ? config->model.num_classes : labels[i];
    return rng;
}

/* Each sample's noise level, noise and label from its own stream. */
static void draw_step_randomness(dit_batch *b, const int32_t *labels, const int64_t *index, int batch,
                                 int64_t step) {
    int64_t per_sample = b->per_sample;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < batch; i++) {
        rng_stream rng = draw_conditions(b, labels, index, i, step);
        float *noise = b->noise + (size_t)i * (size_t)per_sample;
        for (int64_t j = 0; j < per_sample; j++) noise[j] = rng_normal(&rng);
    }
}

void dit_batch_draw_conditions(dit_batch *b, const int32_t *labels, const int64_t *index, int batch, int64_t step,
                               uint64_t *noise_streams) {
    for (int i = 0; i < batch; i++) {
        rng_stream rng = draw_conditions(b, labels, index, i, step);
        noise_streams[i] = rng.state;
        b->t[i] = (float)edm_time_input(b->sigma[i]);
    }
}

void dit_batch_prepare(dit_batch *b, const float *samples, const int32_t *labels, const int64_t *index, int batch,
                       int64_t step) {
    draw_step_randomness(b, labels, index, batch, step);
    edm_training_input(b->net_in, b->t, samples, b->sigma, b->noise, batch, (int)b->per_sample,
                       b->config->diffusion.sigma_data);
}

double dit_batch_loss(dit_batch *b, const float *samples, int batch, float loss_weight, double *statistics) {
    double loss = edm_training_loss(b->sample_loss, b->d_F, loss_weight, samples, b->sigma, b->noise, b->F, batch,
                                    (int)b->per_sample, b->config->diffusion.sigma_data);
    dit_batch_add_statistics(b, batch, statistics);
    return loss;
}

void dit_batch_add_statistics(const dit_batch *b, int batch, double *statistics) {
    for (int i = 0; i < batch; i++) {
        int bin = sigma_bin(b->sigma[i]);
        statistics[STAT_BIN_LOSS + bin] += b->sample_loss[i];
        statistics[STAT_BIN_COUNT + bin] += 1;
    }
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

void dit_batch_describe(trainable *t) {
    const dit_batch *b = t->self;
    t->kind = "dit";
    t->shape_section = "model";
    t->settings_keys = dit_settings_keys;
    t->expect_channels = b->shape.in_channels;
    t->expect_size = b->shape.input_size;
    t->expect_num_classes = b->config->model.num_classes;
    t->statistic_count = 2 * SIGMA_BINS;
    t->statistics_json = dit_statistics_json;
}

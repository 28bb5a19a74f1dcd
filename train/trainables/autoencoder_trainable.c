/* The KL autoencoder as a trainable: a micro-batch is encoded, its posterior
 * sampled (noise keyed by seed, step and the sample's row, when
 * autoencoder.sample_posterior) or taken at its mean, decoded, and scored by
 * reconstruction + kl_beta KL. Statistics: the two parts of the loss.
 * Validation: the reconstruction PSNR of held-out images (images in [-1, 1], so
 * the peak-to-peak range is 2) and RUN/samples/step-N.png with originals above
 * their reconstructions.
 * This file holds the CPU trainable and the parts the GPU one
 * (autoencoder_cuda_trainable.c) shares with it (autoencoder_trainable.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "autoencoder_trainable.h"
#include "model_shapes.h"
#include "dataset_file.h"
#include "fatal.h"
#include "png_image.h"
#include "rng.h"
#include "run_directory.h"
#include "trainable.h"
#include "trainables.h"

#define PURPOSE_POSTERIOR_NOISE 0x706f73746e6f6973ull /* "postnois" */
/* statistics: [0] sum of micro-batch reconstruction losses, [1] sum of KLs, [2] micro-batches */
#define STAT_RECONSTRUCTION 0
#define STAT_KL 1
#define STAT_MICRO_BATCHES 2
/* Images in the validation picture: one row of originals, one of reconstructions. */
#define PICTURE_COLUMNS 8

static const char *const autoencoder_settings_keys[] = {"kl_beta", "reconstruction_loss", "sample_posterior", NULL};

/* ---- the parts both trainables share (autoencoder_trainable.h) ---- */

void autoencoder_batch_create(autoencoder_batch *b, const ldm_config *config, int micro_batch,
                              autoencoder_model *validation_model, void *(*alloc_noise)(size_t bytes),
                              void (*free_noise)(void *host)) {
    memset(b, 0, sizeof(*b));
    b->config = config;
    b->shape = config_autoencoder_shape(config);
    b->micro_batch = micro_batch;
    b->validation_model = validation_model;
    const int latent_size = b->shape.input_size >> (b->shape.levels - 1);
    b->latent_per_sample = (int64_t)b->shape.latent_channels * latent_size * latent_size;
    const size_t noise_bytes = (size_t)micro_batch * (size_t)b->latent_per_sample * sizeof(float);
    b->noise = alloc_noise ? alloc_noise(noise_bytes) : xmalloc(noise_bytes);
    b->free_noise = free_noise ? free_noise : free;
    b->reconstruction = xmalloc((size_t)micro_batch * (size_t)b->shape.in_channels * b->shape.input_size *
                                b->shape.input_size * sizeof(float));
}

void autoencoder_batch_destroy(autoencoder_batch *b) {
    b->free_noise(b->noise);
    free(b->reconstruction);
    memset(b, 0, sizeof(*b));
}

const float *autoencoder_batch_noise(autoencoder_batch *b, const int64_t *index, int batch, int64_t step) {
    if (!b->config->autoencoder.sample_posterior) return NULL;
    uint64_t base = rng_hash(b->config->train.seed, PURPOSE_POSTERIOR_NOISE);
    for (int i = 0; i < batch; i++) {
        rng_stream rng = rng_stream_for(base, (uint64_t)step, (uint64_t)index[i]);
        float *z = b->noise + (size_t)i * (size_t)b->latent_per_sample;
        for (int64_t j = 0; j < b->latent_per_sample; j++) z[j] = rng_normal(&rng);
    }
    return b->noise;
}

autoencoder_reconstruction_loss autoencoder_batch_loss_kind(const autoencoder_batch *b) {
    return strcmp(b->config->autoencoder.reconstruction_loss, "l2") == 0 ? AE_LOSS_L2 : AE_LOSS_L1;
}

double autoencoder_batch_add_statistics(autoencoder_loss loss, double *statistics) {
    statistics[STAT_RECONSTRUCTION] += loss.reconstruction;
    statistics[STAT_KL] += loss.kl;
    statistics[STAT_MICRO_BATCHES] += 1;
    return loss.total;
}

static void ae_statistics_json(const trainable *self, const double *statistics, char *out, size_t size) {
    (void)self;
    double n = statistics[STAT_MICRO_BATCHES] > 0 ? statistics[STAT_MICRO_BATCHES] : 1;
    snprintf(out, size, "\"reconstruction\": %.9g, \"kl\": %.9g", statistics[STAT_RECONSTRUCTION] / n,
             statistics[STAT_KL] / n);
}

/* RUN/samples/step-N.png: originals (top row) over reconstructions. */
static void write_picture(const autoencoder_batch *a, const float *originals, int count, int64_t step,
                          const char *run_dir) {
    int columns = count < PICTURE_COLUMNS ? count : PICTURE_COLUMNS;
    int channels = a->shape.in_channels, size = a->shape.input_size;
    int png_channels = channels == 1 ? 1 : 3;
    int width = columns * size, height = 2 * size;
    uint8_t *pixels = xcalloc((size_t)width * (size_t)height * (size_t)png_channels, 1); /* (H, W, C) */
    size_t plane = (size_t)size * (size_t)size;
    for (int row = 0; row < 2; row++)
        for (int i = 0; i < columns; i++) {
            const float *image = (row == 0 ? originals : a->reconstruction) + (size_t)i * (size_t)channels * plane;
            for (int y = 0; y < size; y++)
                for (int x = 0; x < size; x++)
                    for (int c = 0; c < png_channels; c++) {
                        size_t at = ((size_t)(row * size + y) * (size_t)width + (size_t)(i * size + x)) * png_channels;
                        pixels[at + c] = dataset_pixel_from_float(image[(size_t)(c < channels ? c : 0) * plane + (size_t)y * size + x]);
                    }
        }
    char *folder = run_directory_path(run_dir, "samples");
    mkdir(folder, 0777);
    char name[64];
    snprintf(name, sizeof name, "step-%08lld.png", (long long)step);
    char *path = run_directory_path(folder, name);
    png_write_file(path, pixels, height, width, png_channels);
    free(path);
    free(folder);
    free(pixels);
}

/* The validation capability: reconstructions of the held-out images by the
 * batch's validation model. */
typedef struct {
    trainable_validator base; /* first: the loop's calls hand this back as their self */
    autoencoder_batch *batch;
} autoencoder_validation;

static void ae_validate(trainable_validator *self, const validation_context *context, char *json, size_t json_size,
                        char *line, size_t line_size) {
    autoencoder_batch *a = ((autoencoder_validation *)self)->batch;
    autoencoder_model *model = a->validation_model;
    const float *samples = context->samples;
    const int count = context->count;
    const int64_t step = context->step;
    const char *run_dir = context->run_dir;
    int64_t per_sample = (int64_t)a->shape.in_channels * a->shape.input_size * a->shape.input_size;
    double squared_error = 0;
    float *first_reconstructions = NULL;
    for (int start = 0; start < count; start += a->micro_batch) {
        int n = count - start < a->micro_batch ? count - start : a->micro_batch;
        const float *images = samples + (size_t)start * (size_t)per_sample;
        /* The posterior mean, as encode and sampling use it. */
        autoencoder_encode(model, images, n, a->noise, NULL);
        autoencoder_decode(model, a->noise, n, a->reconstruction);
        for (int64_t j = 0; j < n * per_sample; j++) {
            double d = (double)a->reconstruction[j] - (double)images[j];
            squared_error += d * d;
        }
        if (start == 0) {
            first_reconstructions = xmalloc((size_t)n * (size_t)per_sample * sizeof(float));
            memcpy(first_reconstructions, a->reconstruction, (size_t)n * (size_t)per_sample * sizeof(float));
        }
    }
    double mse = squared_error / ((double)count * (double)per_sample);
    double psnr = mse > 0 ? 10.0 * log10(4.0 / mse) : INFINITY;
    /* The picture shows the first micro-batch's images. */
    memcpy(a->reconstruction, first_reconstructions,
           (size_t)(count < a->micro_batch ? count : a->micro_batch) * (size_t)per_sample * sizeof(float));
    free(first_reconstructions);
    write_picture(a, samples, count < a->micro_batch ? count : a->micro_batch, step, run_dir);
    snprintf(json, json_size, "\"validation_psnr_db\": %.4f, \"validation_samples\": %d", psnr, count);
    snprintf(line, line_size, "validation: reconstruction PSNR %.2f dB on %d held-out images; samples/step-%08lld.png",
             psnr, count, (long long)step);
}

static void ae_validation_destroy(trainable_validator *self) { free(self); }

trainable_validator *autoencoder_validation_create(autoencoder_batch *b) {
    autoencoder_validation *v = xcalloc(1, sizeof *v);
    v->base = (trainable_validator){.validate = ae_validate, .destroy = ae_validation_destroy};
    v->batch = b;
    return &v->base;
}

void autoencoder_batch_describe(trainable *t) {
    const autoencoder_batch *a = t->self;
    t->kind = "autoencoder";
    t->shape_section = "autoencoder";
    t->settings_keys = autoencoder_settings_keys;
    t->expect_channels = a->shape.in_channels;
    t->expect_size = a->shape.input_size;
    t->expect_num_classes = 0;
    t->statistic_count = 3;
    t->statistics_json = ae_statistics_json;
}

/* ---- the CPU trainable ---- */

typedef struct {
    autoencoder_batch batch; /* first: autoencoder_batch_describe's entries read self as an autoencoder_batch */
    autoencoder_model model;
} autoencoder_trainer;

static void ae_zero_grad(trainable *self) { autoencoder_zero_grad(&((autoencoder_trainer *)self->self)->model); }

static double ae_micro_batch(trainable *self, const float *samples, const int32_t *labels, const int64_t *index,
                             int batch, int64_t step, float loss_weight, const gradient_handover *handover,
                             double *statistics) {
    (void)labels;
    (void)handover; /* on the host: the store averages the whole gradient after the step */
    autoencoder_trainer *a = self->self;
    const float *noise = autoencoder_batch_noise(&a->batch, index, batch, step);
    autoencoder_loss loss = autoencoder_train_forward(&a->model, samples, noise, batch,
                                                      (float)a->batch.config->autoencoder.kl_beta,
                                                      autoencoder_batch_loss_kind(&a->batch));
    autoencoder_train_backward(&a->model, loss_weight, NULL);
    return autoencoder_batch_add_statistics(loss, statistics);
}

static void ae_destroy(trainable *self) {
    autoencoder_trainer *a = self->self;
    self->validation->destroy(self->validation);
    autoencoder_destroy(&a->model);
    autoencoder_batch_destroy(&a->batch);
    free(a);
    free(self);
}

trainable *autoencoder_trainable_create(const ldm_config *config, int micro_batch) {
    autoencoder_trainer *a = xcalloc(1, sizeof *a);
    autoencoder_batch_create(&a->batch, config, micro_batch, &a->model, NULL, NULL);
    /* bf16/fp16: activations and GEMM inputs rounded to the format (autoencoder.h) */
    autoencoder_create_precision(&a->model, &a->batch.shape, micro_batch, AE_FOR_TRAINING,
                                 (ldm_precision)precision_from_name(config->train.precision));
    autoencoder_init_weights(&a->model, config->train.seed);

    trainable *t = xcalloc(1, sizeof *t);
    *t = (trainable){
        .table = &a->model.table,
        .params = a->model.params,
        .grads = a->model.grads,
        .count = a->model.table.trainable_numel,
        .zero_grad = ae_zero_grad,
        .micro_batch = ae_micro_batch,
        .destroy = ae_destroy,
        .self = a,
        .validation = autoencoder_validation_create(&a->batch),
    };
    autoencoder_batch_describe(t);
    return t;
}

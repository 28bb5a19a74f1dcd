/* The KL autoencoder as a trainable: a micro-batch is encoded, its posterior
 * sampled (noise keyed by seed, step and the sample's row, when
 * autoencoder.sample_posterior) or taken at its mean, decoded, and scored by
 * reconstruction + kl_beta KL. Statistics: the two parts of the loss.
 * Validation: the reconstruction PSNR of held-out images (images in [-1, 1], so
 * the peak-to-peak range is 2) and RUN/samples/step-N.png with originals above
 * their reconstructions. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "autoencoder.h"
#include "cli.h"
#include "dataset_file.h"
#include "fatal.h"
#include "png_image.h"
#include "rng.h"
#include "run_directory.h"
#include "trainable.h"

#define PURPOSE_POSTERIOR_NOISE 0x706f73746e6f6973ull /* "postnois" */
/* statistics: [0] sum of micro-batch reconstruction losses, [1] sum of KLs, [2] micro-batches */
#define STAT_RECONSTRUCTION 0
#define STAT_KL 1
#define STAT_MICRO_BATCHES 2
/* Images in the validation picture: one row of originals, one of reconstructions. */
#define PICTURE_COLUMNS 8

static const char *const autoencoder_settings_keys[] = {"kl_beta", "reconstruction_loss", "sample_posterior", NULL};

typedef struct {
    const ldm_config *config;
    autoencoder_model model;
    int micro_batch;
    int64_t latent_per_sample; /* L * h * w */
    float *noise;              /* (B, L, h, w) posterior noise */
    float *reconstruction;     /* (B, C, H, W) validation output */
} autoencoder_trainer;

static void ae_zero_grad(trainable *self) { autoencoder_zero_grad(&((autoencoder_trainer *)self->self)->model); }

static double ae_micro_batch(trainable *self, const float *samples, const int32_t *labels, const int64_t *index,
                             int batch, int64_t step, float loss_weight, double *statistics) {
    (void)labels;
    autoencoder_trainer *a = self->self;
    const autoencoder_config *c = &a->config->autoencoder;
    const float *noise = NULL;
    if (c->sample_posterior) {
        uint64_t base = rng_hash(a->config->train.seed, PURPOSE_POSTERIOR_NOISE);
        for (int i = 0; i < batch; i++) {
            rng_stream rng = rng_stream_for(base, (uint64_t)step, (uint64_t)index[i]);
            float *z = a->noise + (size_t)i * (size_t)a->latent_per_sample;
            for (int64_t j = 0; j < a->latent_per_sample; j++) z[j] = rng_normal(&rng);
        }
        noise = a->noise;
    }
    autoencoder_loss loss = autoencoder_train_forward(&a->model, samples, noise, batch, (float)c->kl_beta,
                                                      strcmp(c->reconstruction_loss, "l2") == 0 ? AE_LOSS_L2
                                                                                                : AE_LOSS_L1);
    autoencoder_train_backward(&a->model, loss_weight, NULL);
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
static void write_picture(const autoencoder_trainer *a, const float *originals, int count, int64_t step,
                          const char *run_dir) {
    int columns = count < PICTURE_COLUMNS ? count : PICTURE_COLUMNS;
    int channels = a->model.shape.in_channels, size = a->model.shape.input_size;
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

static void ae_validate(trainable *self, const trainable_validation *context, char *json, size_t json_size, char *line,
                        size_t line_size) {
    autoencoder_trainer *a = self->self;
    const float *samples = context->samples;
    const int count = context->count;
    const int64_t step = context->step;
    const char *run_dir = context->run_dir;
    int64_t per_sample = (int64_t)a->model.shape.in_channels * a->model.shape.input_size * a->model.shape.input_size;
    double squared_error = 0;
    float *first_reconstructions = NULL;
    for (int start = 0; start < count; start += a->micro_batch) {
        int n = count - start < a->micro_batch ? count - start : a->micro_batch;
        const float *images = samples + (size_t)start * (size_t)per_sample;
        /* The posterior mean, as encode and sampling use it. */
        autoencoder_encode(&a->model, images, n, a->noise, NULL);
        autoencoder_decode(&a->model, a->noise, n, a->reconstruction);
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

static void ae_destroy(trainable *self) {
    autoencoder_trainer *a = self->self;
    autoencoder_destroy(&a->model);
    free(a->noise);
    free(a->reconstruction);
    free(a);
    free(self);
}

trainable *autoencoder_trainable_create(const ldm_config *config, int micro_batch) {
    autoencoder_trainer *a = xcalloc(1, sizeof *a);
    a->config = config;
    a->micro_batch = micro_batch;
    autoencoder_shape shape = cli_autoencoder_shape(config);
    /* bf16/fp16: activations and GEMM inputs rounded to the format (autoencoder.h) */
    autoencoder_create_precision(&a->model, &shape, micro_batch, AE_FOR_TRAINING,
                                 (ldm_precision)precision_from_name(config->train.precision));
    autoencoder_init_weights(&a->model, config->train.seed);
    a->latent_per_sample = (int64_t)shape.latent_channels * a->model.latent_size * a->model.latent_size;
    a->noise = xmalloc((size_t)micro_batch * (size_t)a->latent_per_sample * sizeof(float));
    a->reconstruction =
        xmalloc((size_t)micro_batch * (size_t)shape.in_channels * shape.input_size * shape.input_size * sizeof(float));

    trainable *t = xcalloc(1, sizeof *t);
    *t = (trainable){
        .kind = "autoencoder",
        .shape_section = "autoencoder",
        .settings_keys = autoencoder_settings_keys,
        .table = &a->model.table,
        .params = a->model.params,
        .grads = a->model.grads,
        .fixed = NULL,
        .count = a->model.table.trainable_numel,
        .expect_channels = shape.in_channels,
        .expect_size = shape.input_size,
        .expect_num_classes = 0,
        .statistic_count = 3,
        .zero_grad = ae_zero_grad,
        .micro_batch = ae_micro_batch,
        .statistics_json = ae_statistics_json,
        .validate = ae_validate,
        .destroy = ae_destroy,
        .self = a,
    };
    return t;
}

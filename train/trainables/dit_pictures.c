/* See dit_pictures.h. */
#include "dit_pictures.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint_model.h"
#include "fatal.h"
#include "png_image.h"
#include "run_directory.h"
#include "sample_runner.h"

#define PICTURES_PER_CLASS 8
#define MOST_CLASS_ROWS 16
#define UNCONDITIONAL_PICTURES 64
#define PICTURE_STEPS 18

struct dit_pictures {
    int enabled;
    int count, rows;           /* pictures, and grid rows by class (0: 8 per row) */
    int has_autoencoder;
    checkpoint_autoencoder ae;
    sample_runner *runner;     /* the DiT for count samples, on the CPU or the GPU */
    int *labels;               /* (count) */
    int64_t *indices;          /* (count) */
    float *images;             /* (count, C, H, W) */
    uint8_t *pixels;           /* (count, H, W, C) */
    char decoded_by[700];      /* ", decoded by ..." or "" */
    char sampler[96];          /* how the pictures are sampled, for the progress line */
};

dit_pictures *dit_pictures_create(const dit_shape *shape, double sigma_data, const dataset_info *data,
                                  const char *autoencoder, const consistency_sampler_options *consistency) {
    return dit_pictures_create_on(shape, sigma_data, data, autoencoder, consistency, 0);
}

dit_pictures *dit_pictures_create_on(const dit_shape *shape, double sigma_data, const dataset_info *data,
                                     const char *autoencoder, const consistency_sampler_options *consistency,
                                     int on_cuda) {
    dit_pictures *p = xcalloc(1, sizeof *p);
    const char *command = consistency ? "distill" : "train"; /* who trains: named in messages */
    char *recorded = NULL;
    if (data->kind == DATASET_LATENTS) {
        if (!autoencoder) {
            recorded = checkpoint_autoencoder_recorded_path(data->autoencoder);
            if (!recorded || access(recorded, F_OK) != 0) {
                printf("%s: no pictures during training: the autoencoder of the latents (made by: %s) is not "
                       "there; name it with --ae\n", command,
                       data->autoencoder[0] ? data->autoencoder : "not recorded");
                fflush(stdout);
                free(recorded);
                return p;
            }
            autoencoder = recorded;
        }
    } else if (autoencoder) {
        fatal_input("ldm %s: option --ae: %s holds images, not latents: its pictures need no autoencoder",
                    command, data->path);
    }
    const int classes = shape->num_classes;
    p->rows = classes > 0 ? (classes < MOST_CLASS_ROWS ? classes : MOST_CLASS_ROWS) : 0;
    p->count = classes > 0 ? p->rows * PICTURES_PER_CLASS : UNCONDITIONAL_PICTURES;
    if (autoencoder) {
        /* On the GPU the runner decodes with a device copy: the host model only holds the weights. */
        checkpoint_autoencoder_load_here_sized(&p->ae, command, autoencoder, "ema", AE_FOR_DECODING,
                                               on_cuda ? 1 : p->count, 0, shape->input_size);
        p->has_autoencoder = 1;
        char model[4200];
        snprintf(model, sizeof model, "trained on %s", data->path);
        checkpoint_autoencoder_check_latents(&p->ae, shape, model);
        snprintf(p->decoded_by, sizeof p->decoded_by, ", decoded by %s", p->ae.description);
    }
    free(recorded);
    autoencoder_model *decoder = p->has_autoencoder ? &p->ae.model : NULL;
    /* the latents' statistics in the units of the autoencoder that decodes them */
    double *latent_mean = NULL, *latent_std = NULL;
    if (decoder) {
        latent_mean = xmalloc(sizeof(double) * (size_t)data->channels);
        latent_std = xmalloc(sizeof(double) * (size_t)data->channels);
        memcpy(latent_mean, data->latent_mean, sizeof(double) * (size_t)data->channels);
        memcpy(latent_std, data->latent_std, sizeof(double) * (size_t)data->channels);
        checkpoint_autoencoder_latent_units(&p->ae, data->latent_scaling_factor, data->latent_shift_factor,
                                            data->channels, latent_mean, latent_std);
    }
    sample_runner_options ro = {.shape = shape, .on_cuda = on_cuda, .max_batch = p->count, .sigma_data = sigma_data,
                                .decoder = decoder,
                                .latent_mean = latent_mean, .latent_std = latent_std};
    consistency_sampler_options consistency_options;
    sampler_options edm_options = {.steps = PICTURE_STEPS, .method = SAMPLER_HEUN, .guidance = 1.0, .seed = 0};
    if (consistency) {
        consistency_options = *consistency;
        consistency_options.seed = 0;
        ro.consistency = &consistency_options;
    } else {
        ro.edm = &edm_options;
    }
    p->runner = sample_runner_create(&ro);
    if (consistency) {
        const consistency_sampler_options options = consistency_options;
        int used = snprintf(p->sampler, sizeof p->sampler, "consistency sampler %d step%s", options.steps,
                            options.steps == 1 ? "" : "s");
        if (options.guidance > 0 && used > 0 && (size_t)used < sizeof p->sampler)
            snprintf(p->sampler + used, sizeof p->sampler - (size_t)used, ", guidance input %g", options.guidance);
    } else {
        snprintf(p->sampler, sizeof p->sampler, "Heun %d steps", PICTURE_STEPS);
    }
    free(latent_mean);
    free(latent_std);
    p->labels = xmalloc(sizeof(int) * (size_t)p->count);
    p->indices = xmalloc(sizeof(int64_t) * (size_t)p->count);
    for (int i = 0; i < p->count; i++) {
        p->labels[i] = p->rows > 0 ? i % p->rows : classes; /* classes 0: the null class */
        p->indices[i] = i;
    }
    p->images = xmalloc(sizeof(float) * (size_t)p->count * (size_t)sample_runner_per_image(p->runner));
    p->pixels = xmalloc((size_t)p->count * (size_t)sample_runner_per_image(p->runner));
    p->enabled = 1;
    return p;
}

void dit_pictures_write(dit_pictures *p, const float *ema, int64_t step, const char *run_dir, char *json,
                        size_t json_size, char *line, size_t line_size) {
    json[0] = line[0] = 0;
    if (!p->enabled) return;
    memcpy(sample_runner_params(p->runner), ema, sizeof(float) * sample_runner_table(p->runner)->trainable_numel);
    sample_runner_params_changed(p->runner);
    sample_runner_run(p->runner, p->labels, p->indices, p->count, p->images);
    const int channels = sample_runner_channels(p->runner), size = sample_runner_size(p->runner);
    dataset_pixels_from_floats(p->images, p->count, channels, size, p->pixels);
    char *folder = run_directory_path(run_dir, "samples");
    mkdir(folder, 0777);
    char name[64];
    snprintf(name, sizeof name, "step-%08lld.png", (long long)step);
    char *path = run_directory_path(folder, name);
    png_write_image_grid(path, p->pixels, p->count, channels, size, p->rows);
    snprintf(json, json_size, "\"samples\": \"samples/%s\"", name);
    snprintf(line, line_size, "samples: %s (EMA weights, %s, %d %s%s)", path, p->sampler,
             p->rows > 0 ? PICTURES_PER_CLASS : p->count, p->rows > 0 ? "per class" : "samples", p->decoded_by);
    free(path);
    free(folder);
}

void dit_pictures_destroy(dit_pictures *p) {
    if (!p) return;
    if (p->enabled) {
        sample_runner_destroy(p->runner);
        free(p->labels), free(p->indices), free(p->images), free(p->pixels);
    }
    if (p->has_autoencoder) checkpoint_autoencoder_free(&p->ae);
    free(p);
}

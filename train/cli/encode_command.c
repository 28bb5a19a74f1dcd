/* `ldm encode` and `ldm decode`: moving a data set between images and latents
 * through a trained autoencoder (a run or checkpoint of `ldm train-ae`).
 *
 *   ldm encode --ae RUN_OR_CKPT --data IMAGES.h5 --out LATENTS.h5
 *   ldm decode --ae RUN_OR_CKPT --data LATENTS.h5 --out IMAGES.h5|GRID.png
 *
 * The autoencoder: rank 0 finds the checkpoint (a checkpoint directory, or a run
 * directory's newest checkpoint that verifies), checks its manifest and that
 * state.json says kind "autoencoder", reads the model's shape from the config
 * state.json holds, and loads the EMA (default) or model weights; the config and
 * the weights are broadcast, so the other ranks need no view of the run.
 *
 * encode: rank r of W encodes the contiguous shard dataset_shard_range(N, r, W)
 * of /images in file order, reading its rows with serial HDF5 in batches of
 * --batch, and every rank writes its rows of the one output file collectively
 * (dataset_writer: OUT.partial, renamed when complete). A latent is the
 * posterior mean, or with --sample a draw mean + exp(logvar / 2) * noise whose
 * noise is a pure function of (seed, row): the file does not depend on the
 * number of ranks or the batch size. Labels, num_classes and class_names are
 * copied; the autoencoder attribute names the checkpoint and its step.
 *
 * The per-channel latent_mean and latent_std attributes are the same for any
 * number of ranks, bit for bit: each rank adds its values x and their squares
 * (exact in double, x being a float) into exact accumulators (a fixed-point
 * number wide enough for any double, exact_sum below), whose digits are summed
 * over the ranks exactly with comm_allreduce_sum_double. The totals are thus
 * the exact sums whatever the grouping; mean = S / n and the population
 * variance Q / n - mean^2 are then formed in long double from them (relative
 * error of the variance about 1e-19 * (mean^2 + var) / var). They are the
 * statistics of the float32 latents the model gave; with --dtype float16 the
 * stored values are those rounded to half precision, whose own statistics differ
 * from these by much less than the rounding (7e-6 relative in the tests). A
 * constant channel (std 0) gets std 1 and a warning: the loader divides by it.
 *
 * decode: /latents rows as stored (raw autoencoder latents: no normalisation)
 * through the decoder, written as /images uint8 (N, H, W, C), pixel =
 * round((x + 1) * 127.5) clamped to [0, 255], labels copied, collectively like
 * encode; or, when OUT ends in .png, a grid of the first --n (default 64)
 * images, 8 per row, written by rank 0 (under a temporary name, renamed). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <hdf5.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "atomic_file.h"
#include "autoencoder.h"
#include "checkpoint.h"
#include "checkpoint_model.h"
#include "cli.h"
#include "comm.h"
#include "exact_sum.h"
#include "commands.h"
#include "dataset_file.h"
#include "fatal.h"
#include "png_image.h"
#include "progress_bar.h"
#include "rng.h"

#define PURPOSE_ENCODE_SAMPLE 0x656e636f64657a7aull /* "encodezz": posterior noise of ldm encode */
#define DEFAULT_GRID_IMAGES 64

/* ---- reading rows of a data set file ---- */

/* Serial HDF5 reads of one rank's rows, in file order. */
typedef struct {
    const dataset_info *info;
    hid_t file, dataset, memory_type;
} row_reader;

static void row_reader_open(row_reader *r, const dataset_info *info, hid_t memory_type) {
    r->info = info;
    r->file = H5Fopen(info->path, H5F_ACC_RDONLY, H5P_DEFAULT);
    r->dataset = r->file >= 0 ? H5Dopen2(r->file, dataset_samples_name(info), H5P_DEFAULT) : -1;
    if (r->dataset < 0) fatal_input("%s: %s: cannot open (damaged file?)", info->path, dataset_samples_name(info));
    r->memory_type = memory_type;
}

/* Rows [start, start + rows) into buffer as memory_type (HDF5 converts the
 * stored float16 or float32 latents to float). */
static void row_reader_read(row_reader *r, int64_t start, int64_t rows, void *buffer) {
    hid_t file_space = H5Dget_space(r->dataset);
    hsize_t dims[4], offset[4] = {(hsize_t)start, 0, 0, 0};
    H5Sget_simple_extent_dims(file_space, dims, NULL);
    dims[0] = (hsize_t)rows;
    H5Sselect_hyperslab(file_space, H5S_SELECT_SET, offset, NULL, dims, NULL);
    hid_t memory_space = H5Screate_simple(4, dims, NULL);
    herr_t status = H5Dread(r->dataset, r->memory_type, memory_space, file_space, H5P_DEFAULT, buffer);
    H5Sclose(memory_space);
    H5Sclose(file_space);
    if (status < 0)
        fatal_input("%s: %s: cannot read rows %lld to %lld (damaged file?)", r->info->path,
                    dataset_samples_name(r->info), (long long)start, (long long)(start + rows - 1));
}

static void row_reader_close(row_reader *r) {
    H5Dclose(r->dataset);
    H5Fclose(r->file);
}

/* The options every command needs to open its input: checks what kind of file it is. */
static void open_input(const char *path, dataset_kind want, const char *command, dataset_info *info) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    dataset_info_open(path, info);
    if (info->kind != want)
        fatal_input("%s: holds %s, but ldm %s takes %s", path, dataset_samples_name(info), command,
                    want == DATASET_IMAGES ? "images (/images uint8 (N, H, W, C))"
                                           : "latents (/latents (N, C, h, w), made by ldm encode)");
}

/* ---- encode ---- */

/* Per channel: the exact sums of the values and of their squares. */
typedef struct {
    int channels;
    int64_t per_channel; /* values per channel per row (h * w) */
    exact_sum *sum, *sum_squares;
} latent_statistics;

static void statistics_add(latent_statistics *st, const float *latents, int64_t rows) {
    for (int64_t r = 0; r < rows; r++)
        for (int c = 0; c < st->channels; c++) {
            const float *x = latents + (r * st->channels + c) * st->per_channel;
            for (int64_t i = 0; i < st->per_channel; i++) {
                double v = (double)x[i];
                exact_sum_add(&st->sum[c], v);
                exact_sum_add(&st->sum_squares[c], v * v); /* exact: a float's square fits a double */
            }
        }
}

/* Collective: the mean and population std over all rows of every rank. */
static void statistics_finish(latent_statistics *st, int64_t rows, double *mean, double *std) {
    exact_sum_allreduce(st->sum, st->channels);
    exact_sum_allreduce(st->sum_squares, st->channels);
    long double n = (long double)rows * (long double)st->per_channel;
    for (int c = 0; c < st->channels; c++) {
        long double m = exact_sum_value(&st->sum[c]) / n;
        long double variance = exact_sum_value(&st->sum_squares[c]) / n - m * m;
        mean[c] = (double)m;
        std[c] = variance > 0 ? (double)sqrtl(variance) : 0.0;
    }
    /* The same values on every rank even on mixed hosts: rank 0's. */
    comm_broadcast(mean, sizeof(double) * (size_t)st->channels, 0);
    comm_broadcast(std, sizeof(double) * (size_t)st->channels, 0);
}

/* uint8 rows (n, H, W, C) -> float (n, C, H, W) in [-1, 1], as the loader converts them. */
static void images_to_floats(const uint8_t *pixels, int64_t rows, int channels, int size, float *out) {
    float value[256];
    for (int v = 0; v < 256; v++) value[v] = (float)v / 127.5f - 1.0f;
    const int64_t plane = (int64_t)size * size;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < plane; i++)
            for (int c = 0; c < channels; c++)
                out[(r * channels + c) * plane + i] = value[pixels[(r * plane + i) * channels + c]];
}


int command_encode(int argc, char **argv) {
    cli_option options[] = {
        {.name = "--ae", .required = 1, .help = "the autoencoder: a run directory of ldm train-ae or a checkpoint"},
        {.name = "--data", .required = 1, .help = "images to encode (an ldm data set with /images)"},
        {.name = "--out", .required = 1, .help = "the latents file to write"},
        {.name = "--weights", .value = "ema", .help = "ema or model (default ema)"},
        {.name = "--sample", .is_flag = 1, .help = "store a sample of the posterior instead of its mean"},
        {.name = "--seed", .value = "0", .help = "seed of the posterior samples (default 0)"},
        {.name = "--batch", .value = "64", .help = "images per forward pass and per read (default 64)"},
        {.name = "--dtype", .value = "float32", .help = "float32 or float16 latents (default float32)"},
        {.name = "--force", .is_flag = 1, .help = "overwrite an existing output"},
        {0},
    };
    if (cli_wants_help(argc, argv)) {
        cli_print_usage("encode",
                        "Encodes a data set of images into latents (the posterior mean, or a sample), with their\n"
                        "per-channel mean and std; under mpirun each rank encodes its shard.",
                        options);
        return 0;
    }
    cli_parse("encode", argc, argv, 2, options);
    const char *out_path = options[2].value;
    const int sample = options[4].value != NULL;
    const uint64_t seed = cli_uint64("encode", &options[5]);
    const int batch_option = (int)cli_int("encode", &options[6], 1, 1 << 16);
    const char *dtype = options[7].value;
    if (strcmp(dtype, "float32") != 0 && strcmp(dtype, "float16") != 0)
        fatal_input("ldm encode: option --dtype: expected float32 or float16, got '%s'", dtype);
    const int rank = comm_rank(), world = comm_world_size();

    dataset_info info;
    open_input(options[1].value, DATASET_IMAGES, "encode", &info);
    int64_t start, rows;
    dataset_shard_range(info.count, rank, world, &start, &rows);
    const int64_t largest_shard = (info.count + world - 1) / world;
    const int batch = (int)(batch_option < largest_shard ? batch_option : largest_shard);

    checkpoint_autoencoder ae;
    checkpoint_autoencoder_load(&ae, "encode", options[0].value, options[3].value, AE_FOR_ENCODING, batch);
    const autoencoder_shape *shape = &ae.shape;
    if (info.channels != shape->in_channels || info.height != shape->input_size || info.width != shape->input_size)
        fatal_input("%s: images are %d x %d x %d (C x H x W), but the autoencoder %s takes %d x %d x %d", info.path,
                    info.channels, info.height, info.width, ae.checkpoint, shape->in_channels, shape->input_size,
                    shape->input_size);
    const int latent_channels = shape->latent_channels, latent_size = ae.model.latent_size;
    const int64_t image_elements = (int64_t)shape->in_channels * shape->input_size * shape->input_size;
    const int64_t latent_elements = (int64_t)latent_channels * latent_size * latent_size;
    int32_t *labels = dataset_read_labels(&info); /* all N, or NULL */

    char description[4400];
    snprintf(description, sizeof description, "%s; %s", ae.description,
             sample ? "posterior samples" : "posterior means");
    if (sample) {
        size_t used = strlen(description);
        snprintf(description + used, sizeof description - used, " (seed %llu)", (unsigned long long)seed);
    }
    dataset_writer_options wo = {
        .path = out_path,
        .force = options[8].value != NULL,
        .kind = DATASET_LATENTS,
        .element = strcmp(dtype, "float16") == 0 ? DATASET_FLOAT16 : DATASET_FLOAT32,
        .count = info.count,
        .channels = latent_channels,
        .height = latent_size,
        .width = latent_size,
        .has_labels = labels != NULL,
        .num_classes = labels ? info.num_classes : 0,
        .class_names = labels ? (const char *const *)info.class_names : NULL,
        .autoencoder = description,
    };
    dataset_writer *writer = dataset_writer_create(&wo);

    row_reader reader;
    row_reader_open(&reader, &info, H5T_NATIVE_UINT8);
    uint8_t *pixels = xmalloc((size_t)batch * (size_t)image_elements);
    float *images = xmalloc(sizeof(float) * (size_t)batch * (size_t)image_elements);
    float *mean = xmalloc(sizeof(float) * (size_t)batch * (size_t)latent_elements);
    float *logvar = sample ? xmalloc(sizeof(float) * (size_t)batch * (size_t)latent_elements) : NULL;
    latent_statistics stats = {latent_channels, (int64_t)latent_size * latent_size,
                               xcalloc((size_t)latent_channels, sizeof(exact_sum)),
                               xcalloc((size_t)latent_channels, sizeof(exact_sum))};
    const uint64_t noise_seed = rng_hash(seed, PURPOSE_ENCODE_SAMPLE);

    /* Every rank makes the same number of (collective) writes; 0 rows once its
     * shard is done. Rank 0 reports its shard, scaled to the whole set. */
    progress_bar bar;
    progress_bar_start(&bar, "encode", info.count, rank == 0 && rows > 0);
    const int64_t batches = (largest_shard + batch - 1) / batch;
    for (int64_t b = 0; b < batches; b++) {
        int64_t first = b * batch, count = dataset_rows_in_batch(rows, batch, b);
        if (count > 0) {
            row_reader_read(&reader, start + first, count, pixels);
            images_to_floats(pixels, count, shape->in_channels, shape->input_size, images);
            autoencoder_encode(&ae.model, images, (int)count, mean, logvar);
            for (int64_t r = 0; r < count; r++) {
                float *z = mean + r * latent_elements;
                if (sample) {
                    const float *lv = logvar + r * latent_elements;
                    rng_stream rng = rng_stream_for(noise_seed, (uint64_t)(start + first + r), 0);
                    for (int64_t i = 0; i < latent_elements; i++) z[i] += expf(0.5f * lv[i]) * rng_normal(&rng);
                }
                for (int64_t i = 0; i < latent_elements; i++)
                    if (!isfinite(z[i]))
                        fatal_input("%s: the autoencoder %s gave a non-finite latent for image %lld (damaged or "
                                    "diverged weights?)", info.path, ae.checkpoint, (long long)(start + first + r));
            }
            statistics_add(&stats, mean, count);
        }
        dataset_writer_write_latents(writer, start + first, count, mean);
        if (labels) dataset_writer_write_labels(writer, start + first, count, labels + start + first);
        progress_bar_update(&bar, (first + count) * info.count / (rows > 0 ? rows : 1));
    }
    progress_bar_finish(&bar);
    row_reader_close(&reader);

    double *latent_mean = xmalloc(sizeof(double) * (size_t)latent_channels);
    double *latent_std = xmalloc(sizeof(double) * (size_t)latent_channels);
    statistics_finish(&stats, info.count, latent_mean, latent_std);
    for (int c = 0; c < latent_channels; c++)
        if (!(latent_std[c] > 0)) {
            /* A constant channel: the loader divides by the std, so it is stored as 1
             * (the normalised channel is then 0, as it should be). */
            if (rank == 0)
                fprintf(stderr, "ldm: warning: latent channel %d is constant (%g) over the whole data set; its std "
                        "is stored as 1\n", c, latent_mean[c]);
            latent_std[c] = 1.0;
        }
    dataset_writer_set_latent_stats(writer, latent_mean, latent_std);
    dataset_writer_finish(writer);

    if (rank == 0) {
        printf("encode: wrote %s: %lld latents %d x %d x %d %s", out_path, (long long)info.count, latent_channels,
               latent_size, latent_size, dtype);
        if (labels) printf(", %d classes", info.num_classes);
        printf(", from %s\nencode: per-channel mean", ae.description);
        for (int c = 0; c < latent_channels; c++) printf(" %.6g", latent_mean[c]);
        printf(", std");
        for (int c = 0; c < latent_channels; c++) printf(" %.6g", latent_std[c]);
        printf("\n");
    }
    free(latent_mean);
    free(latent_std);
    free(stats.sum);
    free(stats.sum_squares);
    free(pixels);
    free(images);
    free(mean);
    free(logvar);
    free(labels);
    checkpoint_autoencoder_free(&ae);
    dataset_info_free(&info);
    return 0;
}

/* ---- decode ---- */


/* Decodes rows [start, start + rows) of the latents into pixels (rows, H, W, C). */
static void decode_rows(checkpoint_autoencoder *ae, row_reader *reader, int64_t start, int64_t rows, int batch,
                        float *latents, float *images, uint8_t *pixels) {
    const autoencoder_shape *s = &ae->shape;
    const int64_t image_elements = (int64_t)s->in_channels * s->input_size * s->input_size;
    for (int64_t first = 0; first < rows; first += batch) {
        int64_t count = rows - first < batch ? rows - first : batch;
        row_reader_read(reader, start + first, count, latents);
        autoencoder_decode(&ae->model, latents, (int)count, images);
        dataset_pixels_from_floats(images, count, s->in_channels, s->input_size, pixels + first * image_elements);
    }
}

int command_decode(int argc, char **argv) {
    cli_option options[] = {
        {.name = "--ae", .required = 1, .help = "the autoencoder: a run directory of ldm train-ae or a checkpoint"},
        {.name = "--data", .required = 1, .help = "latents to decode (an ldm data set with /latents, as stored)"},
        {.name = "--out", .required = 1, .help = "IMAGES.h5 (an ldm data set with /images) or GRID.png"},
        {.name = "--weights", .value = "ema", .help = "ema or model (default ema)"},
        {.name = "--n", .help = "decode the first N rows (default: all for .h5, 64 for .png)"},
        {.name = "--batch", .value = "64", .help = "latents per forward pass and per read (default 64)"},
        {.name = "--force", .is_flag = 1, .help = "overwrite an existing output"},
        {0},
    };
    if (cli_wants_help(argc, argv)) {
        cli_print_usage("decode",
                        "Decodes a latents file into images: an ldm data set (.h5), or a grid of the first N (.png).",
                        options);
        return 0;
    }
    cli_parse("decode", argc, argv, 2, options);
    const char *out_path = options[2].value;
    const int force = options[6].value != NULL;
    const int png = cli_path_ends_with(out_path, ".png");
    const int batch_option = (int)cli_int("decode", &options[5], 1, 1 << 16);
    const long long n_option = options[4].value ? cli_int("decode", &options[4], 1, LLONG_MAX) : 0;
    const int rank = comm_rank(), world = comm_world_size();

    dataset_info info;
    open_input(options[1].value, DATASET_LATENTS, "decode", &info);
    int64_t n = n_option > 0 ? n_option : png ? DEFAULT_GRID_IMAGES : info.count;
    if (n > info.count) n = info.count;
    int64_t start = 0, rows = n;
    if (!png) dataset_shard_range(n, rank, world, &start, &rows);
    const int64_t largest_shard = png ? n : (n + world - 1) / world;
    const int batch = (int)(batch_option < largest_shard ? batch_option : largest_shard);

    /* A PNG is written by rank 0 alone: refuse an existing one before any work. */
    if (png) cli_refuse_existing_output(out_path, force);

    checkpoint_autoencoder ae;
    checkpoint_autoencoder_load(&ae, "decode", options[0].value, options[3].value, AE_FOR_DECODING, batch);
    const autoencoder_shape *shape = &ae.shape;
    const int latent_size = ae.model.latent_size;
    if (info.channels != shape->latent_channels || info.height != latent_size || info.width != latent_size)
        fatal_input("%s: latents are %d x %d x %d (C x h x w), but the autoencoder %s decodes %d x %d x %d",
                    info.path, info.channels, info.height, info.width, ae.checkpoint, shape->latent_channels,
                    latent_size, latent_size);
    const int64_t image_elements = (int64_t)shape->in_channels * shape->input_size * shape->input_size;

    row_reader reader;
    row_reader_open(&reader, &info, H5T_NATIVE_FLOAT);
    float *latents = xmalloc(sizeof(float) * (size_t)batch * (size_t)info.sample_elements);
    float *images = xmalloc(sizeof(float) * (size_t)batch * (size_t)image_elements);

    if (png) {
        if (rank == 0) {
            uint8_t *pixels = xmalloc((size_t)n * (size_t)image_elements);
            decode_rows(&ae, &reader, 0, n, batch, latents, images, pixels);
            png_write_image_grid(out_path, pixels, n, shape->in_channels, shape->input_size, 0);
            free(pixels);
            printf("decode: wrote %s: a grid of the first %lld images (%d per row), from %s\n", out_path,
                   (long long)n, PNG_GRID_COLUMNS, ae.description);
        }
        comm_barrier();
    } else {
        int32_t *labels = dataset_read_labels(&info);
        dataset_writer_options wo = {
            .path = out_path,
            .force = force,
            .kind = DATASET_IMAGES,
            .element = DATASET_UINT8,
            .count = n,
            .channels = shape->in_channels,
            .height = shape->input_size,
            .width = shape->input_size,
            .has_labels = labels != NULL,
            .num_classes = labels ? info.num_classes : 0,
            .class_names = labels ? (const char *const *)info.class_names : NULL,
        };
        dataset_writer *writer = dataset_writer_create(&wo);
        uint8_t *pixels = xmalloc((size_t)batch * (size_t)image_elements);
        progress_bar bar;
        progress_bar_start(&bar, "decode", n, rank == 0 && rows > 0);
        const int64_t batches = (largest_shard + batch - 1) / batch;
        for (int64_t b = 0; b < batches; b++) {
            int64_t first = b * batch, count = dataset_rows_in_batch(rows, batch, b);
            if (count > 0) decode_rows(&ae, &reader, start + first, count, batch, latents, images, pixels);
            dataset_writer_write_images(writer, start + first, count, pixels);
            if (labels) dataset_writer_write_labels(writer, start + first, count, labels + start + first);
            progress_bar_update(&bar, (first + count) * n / (rows > 0 ? rows : 1));
        }
        progress_bar_finish(&bar);
        dataset_writer_finish(writer);
        if (rank == 0) {
            printf("decode: wrote %s: %lld image%s %d x %d x %d", out_path, (long long)n, n == 1 ? "" : "s", shape->input_size,
                   shape->input_size, shape->in_channels);
            if (labels) printf(", %d classes", info.num_classes);
            printf(", from %s\n", ae.description);
        }
        free(pixels);
        free(labels);
    }
    row_reader_close(&reader);
    free(latents);
    free(images);
    checkpoint_autoencoder_free(&ae);
    dataset_info_free(&info);
    return 0;
}

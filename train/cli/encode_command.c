/* `ldm encode` and `ldm decode`: moving a data set between images and latents
 * through a trained autoencoder (a run or checkpoint of `ldm train-ae`, or a
 * diffusers AutoencoderKL folder, laid out for the data's size, whose latents are
 * scaled by its scaling_factor: recorded in the file, see data/FORMAT.md).
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
 * decode: /latents rows as stored (raw autoencoder latents: no normalisation;
 * brought from the file's latent_scaling_factor / latent_shift_factor into the
 * autoencoder's where they differ) through the decoder, written as /images uint8 (N, H, W, C), pixel =
 * round((x + 1) * 127.5) clamped to [0, 255], labels copied, collectively like
 * encode; or, when OUT ends in .png, a grid of the first --n (default 64)
 * images, 8 per row, written by rank 0 (under a temporary name, renamed).
 *
 * --device auto|cpu|cuda (command_device.h): on cuda the autoencoder runs on
 * each rank's GPU (autoencoder_cuda.h laid out for encoding or decoding), on
 * a fixed number of rows, min(--batch, the rows of the whole job), zero padded:
 * a GPU GEMM's sums may depend on its row count, and a fixed count keeps the
 * files the same for any number of ranks. The latents' statistics are the
 * same exact sums, made on the host. The values agree with the CPU's to the
 * network's rounding. */
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
#ifdef LDM_HAVE_CUDA
#include "autoencoder_cuda.h"
#endif
#include "checkpoint.h"
#include "checkpoint_model.h"
#include "cli.h"
#include "command_device.h"
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


/* The command line of ldm encode, parsed. */
typedef struct {
    const char *ae, *data, *out, *weights;
    const char *dtype;  /* float32 or float16 */
    int sample, force;  /* --sample: a draw of the posterior, not its mean */
    uint64_t seed;
    int batch;          /* --batch */
    const char *device; /* --device auto|cpu|cuda (NULL: auto) */
} encode_options;

/* 0 when help was printed. */
static int parse_encode_options(int argc, char **argv, encode_options *o) {
    *o = (encode_options){.weights = "ema", .dtype = "float32"};
    const char *seed = "0", *batch = "64";
    cli_option table[] = {
        {.name = "--ae", .text = &o->ae, .required = 1,
         .help = "the autoencoder: a run directory of ldm train-ae, a checkpoint, or a diffusers AutoencoderKL folder"},
        {.name = "--data", .text = &o->data, .required = 1, .help = "images to encode (an ldm data set with /images)"},
        {.name = "--out", .text = &o->out, .required = 1, .help = "the latents file to write"},
        {.name = "--weights", .text = &o->weights, .help = "ema or model (default ema)"},
        {.name = "--sample", .flag = &o->sample, .help = "store a sample of the posterior instead of its mean"},
        {.name = "--seed", .text = &seed, .help = "seed of the posterior samples (default 0)"},
        {.name = "--batch", .text = &batch, .help = "images per forward pass and per read (default 64)"},
        {.name = "--dtype", .text = &o->dtype, .help = "float32 or float16 latents (default float32)"},
        {.name = "--force", .flag = &o->force, .help = "overwrite an existing output"},
        {.name = "--device", .text = &o->device,
         .help = "auto (cuda where this build and machine have a GPU, else cpu), cpu or cuda (default auto)"},
        {0},
    };
    if (!cli_parse_unless_help("encode",
                               "Encodes a data set of images into latents (the posterior mean, or a sample), with "
                               "their\nper-channel mean and std; under mpirun each rank encodes its shard.",
                               argc, argv, 2, table))
        return 0;
    o->seed = cli_uint64("encode", "--seed", seed);
    o->batch = (int)cli_int("encode", "--batch", batch, 1, 1 << 16);
    if (strcmp(o->dtype, "float32") != 0 && strcmp(o->dtype, "float16") != 0)
        fatal_input("ldm encode: option --dtype: expected float32 or float16, got '%s'", o->dtype);
    return 1;
}

/* The input file, this rank's shard of its rows, and the autoencoder. */
typedef struct {
    dataset_info info;
    int64_t start, rows, largest_shard;
    int batch; /* rows per read and per network pass: --batch, at most the largest shard */
    int on_cuda;
    int network_rows; /* rows of every network pass: batch on the CPU, on the GPU min(--batch, all rows) */
    checkpoint_autoencoder ae; /* on the GPU: the weights, for batches of 1 */
#ifdef LDM_HAVE_CUDA
    autoencoder_cuda_model gpu;
#endif
} autoencoder_job;

static void autoencoder_job_free(autoencoder_job *job) {
#ifdef LDM_HAVE_CUDA
    if (job->on_cuda) autoencoder_cuda_destroy(&job->gpu);
#endif
    checkpoint_autoencoder_free(&job->ae);
    dataset_info_free(&job->info);
}

/* Collective: the autoencoder of --ae for the job's purpose, on its device;
 * all_rows: the rows of the whole job (every rank's). */
static void load_job_autoencoder(autoencoder_job *job, const char *command, const char *where, const char *weights,
                                 autoencoder_purpose purpose, int requested_batch, int64_t all_rows, int image_size,
                                 int latent_size) {
    job->network_rows = job->batch;
    if (job->on_cuda) job->network_rows = (int)(requested_batch < all_rows ? requested_batch : all_rows);
    checkpoint_autoencoder_load_sized(&job->ae, command, where, weights, purpose, job->on_cuda ? 1 : job->batch,
                                      image_size, latent_size);
#ifdef LDM_HAVE_CUDA
    if (job->on_cuda) {
        autoencoder_cuda_create_purpose(&job->gpu, &job->ae.shape, job->network_rows, job->ae.model.precision,
                                        purpose);
        autoencoder_cuda_upload_params(&job->gpu, job->ae.model.params);
    }
#endif
}

#ifdef LDM_HAVE_CUDA
/* The padding rows [rows, network_rows) of a buffer of per_row floats a row, zeroed. */
static void zero_padding(const autoencoder_job *job, float *buffer, int64_t rows, int64_t per_row) {
    memset(buffer + rows * per_row, 0, sizeof(float) * (size_t)((job->network_rows - rows) * per_row));
}
#endif

/* autoencoder_encode on the job's device; images, mean and logvar (may be
 * NULL) hold network_rows rows (on the GPU the rows past `rows` are zeroed and run too). */
static void job_encode(autoencoder_job *job, float *images, int64_t rows, float *mean, float *logvar) {
    if (!job->on_cuda) {
        autoencoder_encode(&job->ae.model, images, (int)rows, mean, logvar);
        return;
    }
#ifdef LDM_HAVE_CUDA
    const autoencoder_shape *s = &job->ae.shape;
    zero_padding(job, images, rows, (int64_t)s->in_channels * s->input_size * s->input_size);
    autoencoder_cuda_encode_host(&job->gpu, images, job->network_rows, mean, logvar);
#endif
}

/* autoencoder_decode on the job's device; latents and images hold network_rows rows. */
static void job_decode(autoencoder_job *job, float *latents, int64_t rows, float *images) {
    if (!job->on_cuda) {
        autoencoder_decode(&job->ae.model, latents, (int)rows, images);
        return;
    }
#ifdef LDM_HAVE_CUDA
    const int latent_size = job->ae.model.latent_size;
    zero_padding(job, latents, rows, (int64_t)job->ae.shape.latent_channels * latent_size * latent_size);
    autoencoder_cuda_decode_host(&job->gpu, latents, job->network_rows, images);
#endif
}

/* Collective: the images of --data, this rank's shard of them, and the autoencoder that takes them. */
static void resolve_encode_inputs(const encode_options *o, autoencoder_job *job) {
    const int rank = comm_rank(), world = comm_world_size();
    const dataset_info *info = &job->info;
    open_input(o->data, DATASET_IMAGES, "encode", &job->info);
    dataset_shard_range(info->count, rank, world, &job->start, &job->rows);
    job->largest_shard = (info->count + world - 1) / world;
    job->batch = (int)(o->batch < job->largest_shard ? o->batch : job->largest_shard);
    load_job_autoencoder(job, "encode", o->ae, o->weights, AE_FOR_ENCODING, o->batch, info->count, info->height, 0);
    const autoencoder_shape *shape = &job->ae.shape;
    if (info->channels != shape->in_channels || info->height != shape->input_size ||
        info->width != shape->input_size)
        fatal_input("%s: images are %d x %d x %d (C x H x W), but the autoencoder %s takes %d x %d x %d", info->path,
                    info->channels, info->height, info->width, job->ae.checkpoint, shape->in_channels,
                    shape->input_size, shape->input_size);
}

/* Collective: the latents file every rank writes its rows of; labels (all N, or NULL) are copied. */
static dataset_writer *create_latents_writer(const encode_options *o, const autoencoder_job *job,
                                             const int32_t *labels) {
    char description[4400];
    snprintf(description, sizeof description, "%s; %s", job->ae.description,
             o->sample ? "posterior samples" : "posterior means");
    if (o->sample) {
        size_t used = strlen(description);
        snprintf(description + used, sizeof description - used, " (seed %llu)", (unsigned long long)o->seed);
    }
    const int latent_size = job->ae.model.latent_size;
    dataset_writer_options wo = {
        .path = o->out,
        .force = o->force,
        .kind = DATASET_LATENTS,
        .element = strcmp(o->dtype, "float16") == 0 ? DATASET_FLOAT16 : DATASET_FLOAT32,
        .count = job->info.count,
        .channels = job->ae.shape.latent_channels,
        .height = latent_size,
        .width = latent_size,
        .has_labels = labels != NULL,
        .num_classes = labels ? job->info.num_classes : 0,
        .class_names = labels ? (const char *const *)job->info.class_names : NULL,
        .autoencoder = description,
        /* a diffusers autoencoder's latents are scaled (its weights apply it): say by how much */
        .latent_scaling_factor = job->ae.diffusers ? job->ae.scaling_factor : 0,
        .latent_shift_factor = job->ae.shift_factor,
    };
    return dataset_writer_create(&wo);
}

/* Rows of latents (rows, C, h, w): posterior means, or with --sample draws
 * mean + exp(logvar / 2) * noise keyed by (seed, row); first_row is the
 * file row of the first. Non-finite latents are refused. */
static void encode_rows(const encode_options *o, autoencoder_job *job, float *images, int64_t first_row,
                        int64_t rows, float *mean, float *logvar) {
    const int latent_size = job->ae.model.latent_size;
    const int64_t latent_elements = (int64_t)job->ae.shape.latent_channels * latent_size * latent_size;
    const uint64_t noise_seed = rng_hash(o->seed, PURPOSE_ENCODE_SAMPLE);
    job_encode(job, images, rows, mean, logvar);
    for (int64_t r = 0; r < rows; r++) {
        float *z = mean + r * latent_elements;
        if (o->sample) {
            const float *lv = logvar + r * latent_elements;
            rng_stream rng = rng_stream_for(noise_seed, (uint64_t)(first_row + r), 0);
            for (int64_t i = 0; i < latent_elements; i++) z[i] += expf(0.5f * lv[i]) * rng_normal(&rng);
        }
        for (int64_t i = 0; i < latent_elements; i++)
            if (!isfinite(z[i]))
                fatal_input("%s: the autoencoder %s gave a non-finite latent for image %lld (damaged or diverged "
                            "weights?)", job->info.path, job->ae.checkpoint, (long long)(first_row + r));
    }
}

/* Collective: encodes this rank's shard in batches and writes it; adds the
 * latents to stats. Every rank makes the same number of (collective) writes;
 * 0 rows once its shard is done. Rank 0 reports its shard, scaled to the whole set. */
static void encode_shard(const encode_options *o, autoencoder_job *job, const int32_t *labels,
                         dataset_writer *writer, latent_statistics *stats) {
    const autoencoder_shape *shape = &job->ae.shape;
    const int64_t image_elements = (int64_t)shape->in_channels * shape->input_size * shape->input_size;
    const int64_t latent_elements = (int64_t)stats->channels * stats->per_channel;
    const int batch = job->batch;
    const int64_t count_all = job->info.count, rows = job->rows;
    row_reader reader;
    row_reader_open(&reader, &job->info, H5T_NATIVE_UINT8);
    const size_t network_rows = (size_t)job->network_rows;                                          /* N >= B */
    uint8_t *pixels = xmalloc((size_t)batch * (size_t)image_elements);                              /* (B, H, W, C) */
    float *images = xmalloc(sizeof(float) * network_rows * (size_t)image_elements);                 /* (N, C, H, W) */
    float *mean = xmalloc(sizeof(float) * network_rows * (size_t)latent_elements);                  /* (N, c, h, w) */
    float *logvar = o->sample ? xmalloc(sizeof(float) * network_rows * (size_t)latent_elements) : NULL;
    progress_bar bar;
    progress_bar_start(&bar, "encode", count_all, comm_rank() == 0 && rows > 0);
    const int64_t batches = (job->largest_shard + batch - 1) / batch;
    for (int64_t b = 0; b < batches; b++) {
        int64_t first = job->start + b * batch, count = dataset_rows_in_batch(rows, batch, b);
        if (count > 0) {
            row_reader_read(&reader, first, count, pixels);
            images_to_floats(pixels, count, shape->in_channels, shape->input_size, images);
            encode_rows(o, job, images, first, count, mean, logvar);
            statistics_add(stats, mean, count);
        }
        dataset_writer_write_latents(writer, first, count, mean);
        if (labels) dataset_writer_write_labels(writer, first, count, labels + first);
        progress_bar_update(&bar, (b * batch + count) * count_all / (rows > 0 ? rows : 1));
    }
    progress_bar_finish(&bar);
    row_reader_close(&reader);
    free(pixels);
    free(images);
    free(mean);
    free(logvar);
}

/* Collective: the latents' per-channel mean and std over the whole set, into
 * the file's attributes (a constant channel's std stored as 1: the loader
 * divides by it, and the normalised channel is then 0, as it should be). */
static void write_latent_statistics(latent_statistics *stats, int64_t count, dataset_writer *writer, double *mean,
                                    double *std) {
    statistics_finish(stats, count, mean, std);
    for (int c = 0; c < stats->channels; c++)
        if (!(std[c] > 0)) {
            if (comm_rank() == 0)
                fprintf(stderr, "ldm: warning: latent channel %d is constant (%g) over the whole data set; its std "
                        "is stored as 1\n", c, mean[c]);
            std[c] = 1.0;
        }
    dataset_writer_set_latent_stats(writer, mean, std);
}

int command_encode(int argc, char **argv) {
    encode_options o;
    if (!parse_encode_options(argc, argv, &o)) return 0;
    autoencoder_job job = {.on_cuda = command_device_on_cuda("encode", o.device)};
    resolve_encode_inputs(&o, &job);
    command_device_print("encode", job.on_cuda);
    const int latent_channels = job.ae.shape.latent_channels, latent_size = job.ae.model.latent_size;
    int32_t *labels = dataset_read_labels(&job.info); /* all N, or NULL */
    dataset_writer *writer = create_latents_writer(&o, &job, labels);
    latent_statistics stats = {latent_channels, (int64_t)latent_size * latent_size,
                               xcalloc((size_t)latent_channels, sizeof(exact_sum)),
                               xcalloc((size_t)latent_channels, sizeof(exact_sum))};
    encode_shard(&o, &job, labels, writer, &stats);
    double *latent_mean = xmalloc(sizeof(double) * (size_t)latent_channels);
    double *latent_std = xmalloc(sizeof(double) * (size_t)latent_channels);
    write_latent_statistics(&stats, job.info.count, writer, latent_mean, latent_std);
    dataset_writer_finish(writer);

    if (comm_rank() == 0) {
        printf("encode: wrote %s: %lld latents %d x %d x %d %s", o.out, (long long)job.info.count, latent_channels,
               latent_size, latent_size, o.dtype);
        if (labels) printf(", %d classes", job.info.num_classes);
        printf(", from %s\nencode: per-channel mean", job.ae.description);
        for (int c = 0; c < latent_channels; c++) printf(" %.6g", latent_mean[c]);
        printf(", std");
        for (int c = 0; c < latent_channels; c++) printf(" %.6g", latent_std[c]);
        printf("\n");
    }
    free(latent_mean);
    free(latent_std);
    free(stats.sum);
    free(stats.sum_squares);
    free(labels);
    autoencoder_job_free(&job);
    return 0;
}

/* ---- decode ---- */


/* Latents (n values) from the file's units (its latent_scaling_factor and
 * latent_shift_factor) into those of the autoencoder that decodes them:
 * z_ae = (z / s_file + shift_file - shift_ae) s_ae; nothing when they agree. */
static void latents_to_autoencoder_units(const dataset_info *info, const checkpoint_autoencoder *ae, float *z,
                                         size_t n) {
    if (info->latent_scaling_factor == ae->scaling_factor && info->latent_shift_factor == ae->shift_factor) return;
    const double scale = ae->scaling_factor / info->latent_scaling_factor;
    const double shift = (info->latent_shift_factor - ae->shift_factor) * ae->scaling_factor;
    for (size_t i = 0; i < n; i++) z[i] = (float)((double)z[i] * scale + shift);
}

/* Decodes rows [start, start + rows) of the latents into pixels (rows, H, W, C). */
static void decode_rows(autoencoder_job *job, row_reader *reader, int64_t start, int64_t rows, int batch,
                        float *latents, float *images, uint8_t *pixels) {
    const autoencoder_shape *s = &job->ae.shape;
    const int64_t image_elements = (int64_t)s->in_channels * s->input_size * s->input_size;
    for (int64_t first = 0; first < rows; first += batch) {
        int64_t count = rows - first < batch ? rows - first : batch;
        row_reader_read(reader, start + first, count, latents);
        latents_to_autoencoder_units(reader->info, &job->ae, latents, (size_t)count * (size_t)reader->info->sample_elements);
        job_decode(job, latents, count, images);
        dataset_pixels_from_floats(images, count, s->in_channels, s->input_size, pixels + first * image_elements);
    }
}

/* The command line of ldm decode, parsed. */
typedef struct {
    const char *ae, *data, *out, *weights;
    int png;           /* --out names a PNG grid, not a data set */
    long long n;       /* --n, or 0: the default */
    int batch;         /* --batch */
    int force;
    const char *device; /* --device auto|cpu|cuda (NULL: auto) */
} decode_options;

/* 0 when help was printed. */
static int parse_decode_options(int argc, char **argv, decode_options *o) {
    *o = (decode_options){.weights = "ema"};
    const char *n = NULL, *batch = "64";
    cli_option table[] = {
        {.name = "--ae", .text = &o->ae, .required = 1,
         .help = "the autoencoder: a run directory of ldm train-ae, a checkpoint, or a diffusers AutoencoderKL folder"},
        {.name = "--data", .text = &o->data, .required = 1,
         .help = "latents to decode (an ldm data set with /latents, as stored)"},
        {.name = "--out", .text = &o->out, .required = 1,
         .help = "IMAGES.h5 (an ldm data set with /images) or GRID.png"},
        {.name = "--weights", .text = &o->weights, .help = "ema or model (default ema)"},
        {.name = "--n", .text = &n, .help = "decode the first N rows (default: all for .h5, 64 for .png)"},
        {.name = "--batch", .text = &batch, .help = "latents per forward pass and per read (default 64)"},
        {.name = "--force", .flag = &o->force, .help = "overwrite an existing output"},
        {.name = "--device", .text = &o->device,
         .help = "auto (cuda where this build and machine have a GPU, else cpu), cpu or cuda (default auto)"},
        {0},
    };
    if (!cli_parse_unless_help("decode",
                               "Decodes a latents file into images: an ldm data set (.h5), or a grid of the first N "
                               "(.png).",
                               argc, argv, 2, table))
        return 0;
    o->png = cli_path_ends_with(o->out, ".png");
    o->batch = (int)cli_int("decode", "--batch", batch, 1, 1 << 16);
    o->n = n ? cli_int("decode", "--n", n, 1, LLONG_MAX) : 0;
    return 1;
}

/* Collective: the latents of --data, the rows to decode (n) and this rank's
 * shard of them (all n on rank 0 for a PNG), and the autoencoder that decodes them. */
static void resolve_decode_inputs(const decode_options *o, autoencoder_job *job, int64_t *n) {
    const int rank = comm_rank(), world = comm_world_size();
    const dataset_info *info = &job->info;
    open_input(o->data, DATASET_LATENTS, "decode", &job->info);
    *n = o->n > 0 ? o->n : o->png ? DEFAULT_GRID_IMAGES : info->count;
    if (*n > info->count) *n = info->count;
    job->start = 0, job->rows = *n;
    if (!o->png) dataset_shard_range(*n, rank, world, &job->start, &job->rows);
    job->largest_shard = o->png ? *n : (*n + world - 1) / world;
    job->batch = (int)(o->batch < job->largest_shard ? o->batch : job->largest_shard);

    /* A PNG is written by rank 0 alone: refuse an existing one before any work. */
    if (o->png) cli_refuse_existing_output(o->out, o->force);

    load_job_autoencoder(job, "decode", o->ae, o->weights, AE_FOR_DECODING, o->batch, *n, 0, info->height);
    const autoencoder_shape *shape = &job->ae.shape;
    const int latent_size = job->ae.model.latent_size;
    if (info->channels != shape->latent_channels || info->height != latent_size || info->width != latent_size)
        fatal_input("%s: latents are %d x %d x %d (C x h x w), but the autoencoder %s decodes %d x %d x %d",
                    info->path, info->channels, info->height, info->width, job->ae.checkpoint,
                    shape->latent_channels, latent_size, latent_size);
}

/* Rank 0 decodes the first n rows into a grid; the others wait. */
static void decode_to_grid(const decode_options *o, autoencoder_job *job, int64_t n, row_reader *reader,
                           float *latents, float *images) {
    const autoencoder_shape *shape = &job->ae.shape;
    const int64_t image_elements = (int64_t)shape->in_channels * shape->input_size * shape->input_size;
    if (comm_rank() == 0) {
        uint8_t *pixels = xmalloc((size_t)n * (size_t)image_elements);
        decode_rows(job, reader, 0, n, job->batch, latents, images, pixels);
        png_write_image_grid(o->out, pixels, n, shape->in_channels, shape->input_size, 0);
        free(pixels);
        printf("decode: wrote %s: a grid of the first %lld images (%d per row), from %s\n", o->out, (long long)n,
               PNG_GRID_COLUMNS, job->ae.description);
    }
    comm_barrier();
}

/* Collective: every rank decodes its shard of the first n rows and writes it
 * into the one images file, labels copied. */
static void decode_to_dataset(const decode_options *o, autoencoder_job *job, int64_t n, row_reader *reader,
                              float *latents, float *images) {
    const autoencoder_shape *shape = &job->ae.shape;
    const int64_t image_elements = (int64_t)shape->in_channels * shape->input_size * shape->input_size;
    const dataset_info *info = &job->info;
    const int batch = job->batch;
    int32_t *labels = dataset_read_labels(info);
    dataset_writer_options wo = {
        .path = o->out,
        .force = o->force,
        .kind = DATASET_IMAGES,
        .element = DATASET_UINT8,
        .count = n,
        .channels = shape->in_channels,
        .height = shape->input_size,
        .width = shape->input_size,
        .has_labels = labels != NULL,
        .num_classes = labels ? info->num_classes : 0,
        .class_names = labels ? (const char *const *)info->class_names : NULL,
    };
    dataset_writer *writer = dataset_writer_create(&wo);
    uint8_t *pixels = xmalloc((size_t)batch * (size_t)image_elements); /* (B, H, W, C) */
    progress_bar bar;
    progress_bar_start(&bar, "decode", n, comm_rank() == 0 && job->rows > 0);
    const int64_t batches = (job->largest_shard + batch - 1) / batch;
    for (int64_t b = 0; b < batches; b++) {
        int64_t first = job->start + b * batch, count = dataset_rows_in_batch(job->rows, batch, b);
        if (count > 0) decode_rows(job, reader, first, count, batch, latents, images, pixels);
        dataset_writer_write_images(writer, first, count, pixels);
        if (labels) dataset_writer_write_labels(writer, first, count, labels + first);
        progress_bar_update(&bar, (b * batch + count) * n / (job->rows > 0 ? job->rows : 1));
    }
    progress_bar_finish(&bar);
    dataset_writer_finish(writer);
    if (comm_rank() == 0) {
        printf("decode: wrote %s: %lld image%s %d x %d x %d", o->out, (long long)n, n == 1 ? "" : "s",
               shape->input_size, shape->input_size, shape->in_channels);
        if (labels) printf(", %d classes", info->num_classes);
        printf(", from %s\n", job->ae.description);
    }
    free(pixels);
    free(labels);
}

int command_decode(int argc, char **argv) {
    decode_options o;
    if (!parse_decode_options(argc, argv, &o)) return 0;
    autoencoder_job job = {.on_cuda = command_device_on_cuda("decode", o.device)};
    int64_t n;
    resolve_decode_inputs(&o, &job, &n);
    command_device_print("decode", job.on_cuda);
    const autoencoder_shape *shape = &job.ae.shape;
    const int64_t image_elements = (int64_t)shape->in_channels * shape->input_size * shape->input_size;
    row_reader reader;
    row_reader_open(&reader, &job.info, H5T_NATIVE_FLOAT);
    const size_t rows = (size_t)job.network_rows; /* N >= B: the network's rows */
    float *latents = xmalloc(sizeof(float) * rows * (size_t)job.info.sample_elements); /* (N, c, h, w) */
    float *images = xmalloc(sizeof(float) * rows * (size_t)image_elements);          /* (N, C, H, W) */
    if (o.png)
        decode_to_grid(&o, &job, n, &reader, latents, images);
    else
        decode_to_dataset(&o, &job, n, &reader, latents, images);
    row_reader_close(&reader);
    free(latents);
    free(images);
    autoencoder_job_free(&job);
    return 0;
}

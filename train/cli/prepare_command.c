/* `ldm prepare KIND`: converts a source of images into one ldm data set file
 * (data/dataset_file.h): Fashion-MNIST idx files, a folder of JPEGs and PNGs
 * in class subfolders (at training resolution with the ADM center crop), or procedural synthetic images (optionally as float latents).
 * Every rank produces the rows of its shard (dataset_shard_range) and all ranks
 * write the one file collectively; every row is a pure function of its index,
 * so the file does not depend on the number of ranks. This file owns the
 * command line and the row loop; the converters live in data/. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "comm.h"
#include "commands.h"
#include "dataset_file.h"
#include "fashion_mnist.h"
#include "fatal.h"
#include "center_crop.h"
#include "image_decode.h"
#include "image_folder.h"
#include "progress_bar.h"
#include "synthetic_images.h"

/* Rows are produced and written in batches of about this many bytes. */
#define PREPARE_BATCH_BYTES (2 << 20)
#define PREPARE_MAX_SIZE 4096
#define PREPARE_MAX_COUNT 1000000000LL

static const char prepare_kinds[] = "fashion-mnist, images, synthetic";

/* Fills one sample (H x W x C uint8) and its label (ignored when the file has
 * none) for global row `index`. */
typedef void (*fill_row_fn)(void *context, int64_t index, uint8_t *image, int32_t *label);

/* Per-channel sums of pixel values and of their squares over this rank's rows:
 * integers, so that the totals, and the latent statistics made from them, are
 * exact whatever the number of ranks. */
typedef struct {
    uint64_t *sum, *sum_squares;
} channel_sums;

/* Latent value of a pixel: [0, 255] mapped to [-1, 1]. */
static float pixel_to_latent(uint8_t p) { return (float)p / 127.5f - 1.0f; }

/* Converts rows of (H, W, C) pixels to (C, H, W) latents and adds to the sums. */
static void pixels_to_latents(const uint8_t *pixels, int64_t rows, int channels, int height, int width,
                              float *latents, channel_sums *sums) {
    const int64_t plane = (int64_t)height * width;
    for (int64_t r = 0; r < rows; r++)
        for (int c = 0; c < channels; c++) {
            const uint8_t *src = pixels + r * plane * channels + c;
            float *dst = latents + (r * channels + c) * plane;
            uint64_t sum = 0, sum_squares = 0;
            for (int64_t i = 0; i < plane; i++) {
                uint8_t p = src[i * channels];
                dst[i] = pixel_to_latent(p);
                sum += p;
                sum_squares += (uint64_t)p * p;
            }
            sums->sum[c] += sum;
            sums->sum_squares[c] += sum_squares;
        }
}

/* Adds integer totals over all ranks exactly, through the double all-reduce:
 * each total is split into 32-bit halves, whose sums over up to 2^20 ranks are
 * exact in double. */
static void allreduce_exact_u64(uint64_t *values, int count) {
    double *halves = xmalloc(sizeof(double) * 2 * (size_t)count);
    for (int i = 0; i < count; i++) {
        halves[2 * i] = (double)(values[i] >> 32);
        halves[2 * i + 1] = (double)(values[i] & 0xffffffffu);
    }
    comm_allreduce_sum_double(halves, 2 * (int64_t)count);
    for (int i = 0; i < count; i++) values[i] = ((uint64_t)halves[2 * i] << 32) + (uint64_t)halves[2 * i + 1];
    free(halves);
}

/* Collective: the latents' per-channel mean and std over the whole set, from
 * every rank's pixel sums. */
static void set_latent_statistics(dataset_writer *writer, const dataset_writer_options *options,
                                  channel_sums *sums) {
    const int channels = options->channels;
    allreduce_exact_u64(sums->sum, channels);
    allreduce_exact_u64(sums->sum_squares, channels);
    double *mean = xmalloc(sizeof(double) * channels), *std = xmalloc(sizeof(double) * channels);
    const double values = (double)options->count * options->height * options->width;
    for (int c = 0; c < channels; c++) {
        /* Pixel statistics (population variance), then the affine map to latents. */
        double pixel_mean = (double)sums->sum[c] / values;
        double pixel_variance = (double)sums->sum_squares[c] / values - pixel_mean * pixel_mean;
        if (pixel_variance < 0) pixel_variance = 0;
        mean[c] = pixel_mean / 127.5 - 1.0;
        std[c] = sqrt(pixel_variance) / 127.5;
    }
    dataset_writer_set_latent_stats(writer, mean, std);
    free(mean);
    free(std);
}

/* Produces this rank's shard of the rows with `fill` and writes it, in batches;
 * every rank makes the same number of (collective) write calls, with 0 rows
 * once its shard is done. For latents, also sets the per-channel statistics
 * over the whole set. Ends with dataset_writer_finish. */
static void write_all_rows(const dataset_writer_options *options, fill_row_fn fill, void *context,
                           const char *progress_label) {
    const int rank = comm_rank(), world = comm_world_size();
    const int channels = options->channels, height = options->height, width = options->width;
    const int latents = options->kind == DATASET_LATENTS;
    const size_t sample_bytes = (size_t)channels * height * width;
    int64_t start, rows;
    dataset_shard_range(options->count, rank, world, &start, &rows);
    const int64_t largest_shard = (options->count + world - 1) / world;
    /* A latent row also takes 4 bytes per value in float. */
    int64_t batch = (int64_t)(PREPARE_BATCH_BYTES / (sample_bytes * (latents ? 1 + sizeof(float) : 1)));
    if (batch < 1) batch = 1;
    if (batch > largest_shard) batch = largest_shard;
    const int64_t batches = (largest_shard + batch - 1) / batch;

    dataset_writer *writer = dataset_writer_create(options);
    uint8_t *pixels = xmalloc(sample_bytes * (size_t)batch);
    int32_t *labels = xmalloc(sizeof(int32_t) * (size_t)batch);
    float *latent_rows = latents ? xmalloc(sizeof(float) * sample_bytes * (size_t)batch) : NULL;
    channel_sums sums = {xcalloc((size_t)channels, sizeof(uint64_t)), xcalloc((size_t)channels, sizeof(uint64_t))};

    /* Rank 0 reports its own shard, scaled to the whole set: the shards differ
     * by at most one row, so its fraction is everyone's. */
    progress_bar bar;
    progress_bar_start(&bar, progress_label, options->count, rank == 0 && rows > 0);
    for (int64_t b = 0; b < batches; b++) {
        int64_t first = b * batch, count = dataset_rows_in_batch(rows, batch, b);
        for (int64_t r = 0; r < count; r++) {
            labels[r] = 0;
            fill(context, start + first + r, pixels + (size_t)r * sample_bytes, &labels[r]);
            progress_bar_update(&bar, (first + r + 1) * options->count / (rows > 0 ? rows : 1));
        }
        if (latents) {
            pixels_to_latents(pixels, count, channels, height, width, latent_rows, &sums);
            dataset_writer_write_latents(writer, start + first, count, latent_rows);
        } else {
            dataset_writer_write_images(writer, start + first, count, pixels);
        }
        if (options->has_labels) dataset_writer_write_labels(writer, start + first, count, labels);
    }
    progress_bar_finish(&bar);

    if (latents) set_latent_statistics(writer, options, &sums);
    dataset_writer_finish(writer);
    free(sums.sum);
    free(sums.sum_squares);
    free(latent_rows);
    free(labels);
    free(pixels);
}

/* The one result line on stdout (rank 0). */
static void print_result(const dataset_writer_options *o) {
    if (comm_rank() != 0) return;
    static const char *const element_names[] = {"uint8", "float16", "float32"};
    char classes[64];
    if (o->has_labels)
        snprintf(classes, sizeof(classes), "%d classes", o->num_classes);
    else
        snprintf(classes, sizeof(classes), "no labels");
    if (o->kind == DATASET_IMAGES)
        printf("prepare: wrote %s: %lld images of %dx%dx%d (H, W, C) uint8, %s\n", o->path, (long long)o->count,
               o->height, o->width, o->channels, classes);
    else
        printf("prepare: wrote %s: %lld latents of %dx%dx%d (C, H, W) %s with per-channel mean and std, %s\n",
               o->path, (long long)o->count, o->channels, o->height, o->width, element_names[o->element], classes);
    fflush(stdout);
}

/* ---- fashion-mnist ---- */

typedef struct {
    fashion_mnist_split split;
    int pad; /* output side, or 0 for the original 28 */
} fashion_mnist_context;

static void fill_fashion_mnist_row(void *context, int64_t index, uint8_t *image, int32_t *label) {
    const fashion_mnist_context *f = context;
    const uint8_t *source = f->split.images + (size_t)index * FASHION_MNIST_SIDE * FASHION_MNIST_SIDE;
    if (f->pad)
        fashion_mnist_pad(source, f->pad, image);
    else
        memcpy(image, source, FASHION_MNIST_SIDE * FASHION_MNIST_SIDE);
    *label = f->split.labels[index];
}

/* The command line of ldm prepare fashion-mnist, parsed. */
typedef struct {
    const char *out, *split, *dir;
    int pad; /* output side, or 0 for the original 28 */
    int force;
} fashion_mnist_options;

/* 0 when help was printed. */
static int parse_fashion_mnist_options(const char *command, int argc, char **argv, fashion_mnist_options *o) {
    *o = (fashion_mnist_options){.split = "train", .dir = FASHION_MNIST_DEFAULT_DIR};
    const char *pad = NULL;
    cli_option table[] = {
        {.name = "--out", .text = &o->out, .required = 1, .help = "the data set file to write"},
        {.name = "--split", .text = &o->split, .help = "train (60000 images) or test (10000); default train"},
        {.name = "--dir", .text = &o->dir, .help = "folder of the gzip idx files (default " FASHION_MNIST_DEFAULT_DIR ")"},
        {.name = "--pad", .text = &pad, .help = "pad the 28x28 images with black, centred, to PxP (P >= 28; default none)"},
        {.name = "--force", .flag = &o->force, .help = "overwrite an existing output file"},
        {0},
    };
    if (!cli_parse_unless_help(command, "Converts Fashion-MNIST (Debian's dataset-fashion-mnist) to an ldm data set.",
                               argc, argv, 3, table))
        return 0;
    if (strcmp(o->split, "train") != 0 && strcmp(o->split, "test") != 0)
        fatal_input("ldm %s: option --split: expected train or test, got '%s'", command, o->split);
    if (pad) o->pad = (int)cli_int(command, "--pad", pad, FASHION_MNIST_SIDE, PREPARE_MAX_SIZE);
    return 1;
}

static int prepare_fashion_mnist(int argc, char **argv) {
    const char *command = "prepare fashion-mnist";
    fashion_mnist_options o;
    if (!parse_fashion_mnist_options(command, argc, argv, &o)) return 0;
    fashion_mnist_context context = {.pad = o.pad};
    fashion_mnist_read(o.dir, o.split, &context.split);
    const int side = context.pad ? context.pad : FASHION_MNIST_SIDE;
    dataset_writer_options out = {
        .path = o.out,
        .force = o.force,
        .kind = DATASET_IMAGES,
        .element = DATASET_UINT8,
        .count = context.split.count,
        .channels = 1,
        .height = side,
        .width = side,
        .has_labels = 1,
        .num_classes = FASHION_MNIST_CLASSES,
        .class_names = fashion_mnist_class_names,
    };
    write_all_rows(&out, fill_fashion_mnist_row, &context, "prepare fashion-mnist");
    print_result(&out);
    fashion_mnist_free(&context.split);
    return 0;
}

/* ---- images ---- */

/* Files are decoded in steps: in each, rank r of W takes the B files after
 * the step's first r B (B: IMAGES_STEP_FILES_PER_RANK, fewer for large S), and
 * the rows it keeps go right after those kept by the earlier steps and ranks.
 * With every file kept (or any bad one fatal) row i is file i; with
 * --skip-bad the rows are the good files in file order. Either way the file
 * does not depend on the number of ranks. */
/* Small, so that ranks finish their steps at about the same time; a step's
 * allgather and collective write cost little beside decoding a few images. */
#define IMAGES_STEP_FILES_PER_RANK 8

typedef struct {
    const char *dir;
    image_folder_listing listing;
    int size, channels, skip_bad;
} image_folder_context;

/* Decodes file `index` and crops it to size x size x channels in `image`: 0,
 * or -1 with the reason in `reason`. */
static int image_folder_row(const image_folder_context *f, int64_t index, uint8_t *image, char *reason,
                            size_t reason_size) {
    decoded_image decoded;
    if (image_decode_file(f->listing.paths[index], f->channels, &decoded, reason, reason_size) != 0) return -1;
    adm_center_crop(decoded.pixels, decoded.height, decoded.width, f->channels, f->size, image);
    decoded_image_free(&decoded);
    return 0;
}

/* Writes every file's row (skipping bad ones with --skip-bad); returns the
 * number of rows written. Collective. */
static int64_t write_image_folder_rows(const dataset_writer_options *options, const image_folder_context *f) {
    const int rank = comm_rank(), world = comm_world_size();
    const int64_t files = f->listing.count;
    const size_t sample_bytes = (size_t)options->channels * options->height * options->width;
    int64_t per_rank = (int64_t)(PREPARE_BATCH_BYTES / sample_bytes);
    if (per_rank < 1) per_rank = 1;
    if (per_rank > IMAGES_STEP_FILES_PER_RANK) per_rank = IMAGES_STEP_FILES_PER_RANK;
    const int64_t step_files = per_rank * world, steps = (files + step_files - 1) / step_files;

    dataset_writer *writer = dataset_writer_create(options);
    uint8_t *pixels = xmalloc(sample_bytes * (size_t)per_rank); /* (per_rank, S, S, C) */
    int32_t *labels = xcalloc((size_t)per_rank, sizeof(int32_t));
    int64_t *kept_by_rank = xmalloc(sizeof(int64_t) * (size_t)world);
    int64_t rows_before = 0, skipped = 0;
    progress_bar bar;
    progress_bar_start(&bar, "prepare images", files, rank == 0);
    progress_bar_report_often(&bar, 20, "images");
    for (int64_t step = 0; step < steps; step++) {
        const int64_t first = step * step_files + rank * per_rank;
        int64_t kept = 0;
        for (int64_t i = first; i < first + per_rank && i < files; i++) {
            char reason[512];
            if (image_folder_row(f, i, pixels + (size_t)kept * sample_bytes, reason, sizeof(reason)) == 0) {
                if (f->listing.labels) labels[kept] = f->listing.labels[i];
                kept++;
            } else if (f->skip_bad) {
                fprintf(stderr, "prepare images: skipped %s: %s\n", f->listing.paths[i], reason);
                skipped++;
            } else {
                fatal_input("%s: %s (--skip-bad skips such files)", f->listing.paths[i], reason);
            }
            /* Rank 0's share scaled to everyone's: the ranks go at about the same pace. */
            int64_t done = step * step_files + (i - first + 1) * world;
            progress_bar_update(&bar, done < files ? done : files);
        }
        comm_allgather(&kept, sizeof(kept), kept_by_rank);
        int64_t start = rows_before, step_rows = 0;
        for (int r = 0; r < world; r++) {
            if (r < rank) start += kept_by_rank[r];
            step_rows += kept_by_rank[r];
        }
        dataset_writer_write_images(writer, start, kept, pixels);
        if (options->has_labels) dataset_writer_write_labels(writer, start, kept, labels);
        rows_before += step_rows;
    }
    progress_bar_finish(&bar);
    uint64_t skipped_total = (uint64_t)skipped;
    allreduce_exact_u64(&skipped_total, 1);
    if (rows_before == 0)
        fatal_input("%s: none of the %lld image files could be read (all skipped by --skip-bad)", f->dir,
                    (long long)files);
    if (skipped_total > 0 && rank == 0)
        fprintf(stderr, "prepare images: skipped %llu of %lld files that could not be read (--skip-bad)\n",
                (unsigned long long)skipped_total, (long long)files);
    dataset_writer_shrink(writer, rows_before);
    dataset_writer_finish(writer);
    free(kept_by_rank);
    free(labels);
    free(pixels);
    return rows_before;
}

/* The command line of ldm prepare images, parsed. */
typedef struct {
    const char *dir, *out;
    int size, channels, force, skip_bad;
} image_folder_options;

/* 0 when help was printed. */
static int parse_image_folder_options(const char *command, int argc, char **argv, image_folder_options *o) {
    *o = (image_folder_options){0};
    const char *size = NULL, *channels = "3";
    cli_option table[] = {
        {.name = "--out", .text = &o->out, .required = 1, .help = "the data set file to write"},
        {.name = "--size", .text = &size, .required = 1, .help = "side S of the square SxS output images"},
        {.name = "--channels", .text = &channels, .help = "1 (gray) or 3 (RGB); default 3"},
        {.name = "--skip-bad", .flag = &o->skip_bad,
         .help = "skip (and count) images that cannot be decoded instead of ending the run"},
        {.name = "--force", .flag = &o->force, .help = "overwrite an existing output file"},
        {0},
    };
    const char *summary =
        "       ldm prepare images DIR --size S --out F.h5 [--channels 1|3] [--skip-bad] [--force]\n"
        "Converts every *.png, *.jpg and *.jpeg under DIR (recursively) to an ldm data set with the ADM center\n"
        "crop of DiT's data pipeline: halved with a box filter while the short side is at least 2S, resized\n"
        "bicubically (as PIL) so that the short side is S, then the central SxS. The class of an image is its\n"
        "first-level subfolder of DIR (class names: those folders, sorted); without subfolders the file has no\n"
        "labels. Alpha is dropped, CMYK converted, 16-bit PNGs reduced to their high byte (docs/cli.md).";
    if (cli_wants_help(argc, argv)) {
        cli_print_usage(command, summary, table);
        return 0;
    }
    if (argc < 4 || argv[3][0] == '-')
        fatal_input("ldm %s: expected the image folder first: ldm prepare images DIR --size S --out F.h5", command);
    o->dir = argv[3];
    cli_parse(command, argc, argv, 4, table);
    o->size = (int)cli_int(command, "--size", size, 1, PREPARE_MAX_SIZE);
    o->channels = (int)cli_int(command, "--channels", channels, 1, 3);
    if (o->channels == 2) fatal_input("ldm %s: option --channels: expected 1 or 3, got '%s'", command, channels);
    return 1;
}

static int prepare_images(int argc, char **argv) {
    const char *command = "prepare images";
    image_folder_options o;
    if (!parse_image_folder_options(command, argc, argv, &o)) return 0;
    image_folder_context context = {.dir = o.dir, .size = o.size, .channels = o.channels, .skip_bad = o.skip_bad};
    image_folder_list(o.dir, &context.listing);
    if (context.listing.num_classes > DATASET_MAX_CLASSES)
        fatal_input("%s: %d class subfolders; at most %d are supported", o.dir, context.listing.num_classes,
                    DATASET_MAX_CLASSES);
    dataset_writer_options out = {
        .path = o.out,
        .force = o.force,
        .kind = DATASET_IMAGES,
        .element = DATASET_UINT8,
        .count = context.listing.count,
        .channels = context.channels,
        .height = context.size,
        .width = context.size,
        .has_labels = context.listing.labels != NULL,
        .num_classes = context.listing.num_classes,
        .class_names = (const char *const *)context.listing.class_names,
    };
    out.count = write_image_folder_rows(&out, &context);
    print_result(&out);
    image_folder_free(&context.listing);
    return 0;
}

/* ---- synthetic ---- */

typedef struct {
    uint64_t seed;
    int num_classes, size, channels;
} synthetic_context;

static void fill_synthetic_row(void *context, int64_t index, uint8_t *image, int32_t *label) {
    const synthetic_context *s = context;
    synthetic_image(s->seed, index, s->num_classes, s->size, s->channels, image);
    *label = synthetic_class(index, s->num_classes);
}

/* The command line of ldm prepare synthetic, parsed. */
typedef struct {
    const char *out;
    int64_t count;
    synthetic_context context;
    dataset_element element; /* uint8 images, or float latents */
    int force;
} synthetic_options;

/* 0 when help was printed. */
static int parse_synthetic_options(const char *command, int argc, char **argv, synthetic_options *o) {
    *o = (synthetic_options){.element = DATASET_UINT8};
    const char *n = NULL, *size = NULL, *classes = NULL, *channels = NULL, *seed = "0", *latents = NULL;
    cli_option table[] = {
        {.name = "--out", .text = &o->out, .required = 1, .help = "the data set file to write"},
        {.name = "--n", .text = &n, .required = 1, .help = "number of samples"},
        {.name = "--size", .text = &size, .required = 1, .help = "side S of the SxS images"},
        {.name = "--classes", .text = &classes, .required = 1,
         .help = "number of classes K (the class of sample i is i % K)"},
        {.name = "--channels", .text = &channels, .required = 1, .help = "channels C (1 is gray, 3 RGB; up to 64)"},
        {.name = "--seed", .text = &seed, .help = "seed of the positions, sizes and colours (default 0)"},
        {.name = "--latents", .text = &latents,
         .help = "float32 or float16: write /latents (N, C, S, S) in [-1, 1] instead of /images"},
        {.name = "--force", .flag = &o->force, .help = "overwrite an existing output file"},
        {0},
    };
    if (!cli_parse_unless_help(command,
                               "Writes procedural images (one shape per class, position, size and colour varying per "
                               "sample);\nsample i is a pure function of (seed, i).",
                               argc, argv, 3, table))
        return 0;
    o->count = cli_int(command, "--n", n, 1, PREPARE_MAX_COUNT);
    o->context.size = (int)cli_int(command, "--size", size, 4, PREPARE_MAX_SIZE);
    o->context.num_classes = (int)cli_int(command, "--classes", classes, 1, DATASET_MAX_CLASSES);
    o->context.channels = (int)cli_int(command, "--channels", channels, 1, SYNTHETIC_MAX_CHANNELS);
    o->context.seed = (uint64_t)cli_int(command, "--seed", seed, 0, INT64_MAX);
    if (latents) {
        if (!strcmp(latents, "float32"))
            o->element = DATASET_FLOAT32;
        else if (!strcmp(latents, "float16"))
            o->element = DATASET_FLOAT16;
        else
            fatal_input("ldm %s: option --latents: expected float32 or float16, got '%s'", command, latents);
    }
    return 1;
}

static int prepare_synthetic(int argc, char **argv) {
    synthetic_options o;
    if (!parse_synthetic_options("prepare synthetic", argc, argv, &o)) return 0;
    const int num_classes = o.context.num_classes;
    char **class_names = xmalloc(sizeof(char *) * (size_t)num_classes);
    for (int k = 0; k < num_classes; k++) {
        char name[64];
        synthetic_class_name(k, name, sizeof(name));
        class_names[k] = xstrdup(name);
    }
    dataset_writer_options out = {
        .path = o.out,
        .force = o.force,
        .kind = o.element == DATASET_UINT8 ? DATASET_IMAGES : DATASET_LATENTS,
        .element = o.element,
        .count = o.count,
        .channels = o.context.channels,
        .height = o.context.size,
        .width = o.context.size,
        .has_labels = 1,
        .num_classes = num_classes,
        .class_names = (const char *const *)class_names,
        .autoencoder = o.element == DATASET_UINT8 ? NULL : "none (synthetic)",
    };
    write_all_rows(&out, fill_synthetic_row, &o.context, "prepare synthetic");
    print_result(&out);
    for (int k = 0; k < num_classes; k++) free(class_names[k]);
    free(class_names);
    return 0;
}

int command_prepare(int argc, char **argv) {
    if (argc < 3)
        fatal_input("ldm prepare: expected a kind: %s (ldm prepare KIND --help for its options)", prepare_kinds);
    const char *kind = argv[2];
    if (!strcmp(kind, "fashion-mnist")) return prepare_fashion_mnist(argc, argv);
    if (!strcmp(kind, "images")) return prepare_images(argc, argv);
    if (!strcmp(kind, "synthetic")) return prepare_synthetic(argc, argv);
    if (!strcmp(kind, "--help") || !strcmp(kind, "-h")) {
        printf("usage: ldm prepare KIND [options]\nConverts images into an ldm data set file (HDF5).\n\nkinds:\n"
               "  fashion-mnist  --out F.h5 [--split train|test] [--dir D] [--pad P] [--force]\n"
               "  images DIR     --size S --out F.h5 [--channels 1|3] [--skip-bad] [--force]\n"
               "  synthetic      --n N --size S --classes K --channels C --out F.h5 [--seed S]\n"
               "                 [--latents float32|float16] [--force]\n"
               "(ldm prepare KIND --help for details)\n");
        return 0;
    }
    fatal_input("ldm prepare: unknown kind '%s'; expected one of: %s", kind, prepare_kinds);
}

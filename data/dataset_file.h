/* The ldm data set file (see data/FORMAT.md): one HDF5 file holding either
 * /images uint8 (N, H, W, C) or /latents float16|float32 (N, C, h, w), optional
 * /labels int32 (N), and attributes on the root group. This file owns reading
 * and validating a file's description (dataset_info_open), reading its labels,
 * and writing a new file collectively under a temporary name (dataset_writer).
 * Reading sample rows for training is the loader's (data/loader.c). */
#ifndef LDM_DATASET_FILE_H
#define LDM_DATASET_FILE_H

#include <hdf5.h>
#include <stdint.h>

#define DATASET_FORMAT_NAME "ldm-dataset"
#define DATASET_FORMAT_VERSION 1
/* Chunks along N of about this many bytes, so that partial reads are cheap. */
#define DATASET_CHUNK_BYTES (1 << 20)
#define DATASET_MAX_CHANNELS 64
#define DATASET_MAX_CLASSES 100000

typedef enum { DATASET_IMAGES, DATASET_LATENTS } dataset_kind;
typedef enum { DATASET_UINT8, DATASET_FLOAT16, DATASET_FLOAT32 } dataset_element;

typedef struct {
    char path[4096];
    dataset_kind kind;
    dataset_element element; /* uint8 for images; float16 or float32 for latents */
    int64_t count;           /* N */
    /* The sample as the model sees it, C x H x W, whatever the storage order:
     * images are stored (N, H, W, C), latents (N, C, H, W). */
    int channels, height, width;
    int64_t sample_elements; /* C * H * W */
    int64_t chunk_rows;      /* the dataset's chunk size along N (1 if not chunked) */
    int has_labels;
    int num_classes;         /* attribute num_classes (0 when the file has no labels) */
    char **class_names;      /* num_classes names, or NULL when the file has none */
    double *latent_mean;     /* latents: per-channel mean and std (channels entries) */
    double *latent_std;
    char autoencoder[512];   /* latents: what made them ("" when unknown) */
    /* latents: their units, (posterior - shift) * scaling (attributes
     * latent_scaling_factor, latent_shift_factor; 1 and 0 when absent) */
    double latent_scaling_factor, latent_shift_factor;
} dataset_info;

/* Opens PATH (serial HDF5, on the calling rank only), checks everything about
 * its layout and attributes, and fills info. Any problem is a fatal_input line
 * naming the file, the data set or attribute, what was expected and what was
 * found. Every rank may call it: they all see the same file and fail alike. */
void dataset_info_open(const char *path, dataset_info *info);
void dataset_info_free(dataset_info *info);

/* The name of the sample data set: "/images" or "/latents". */
const char *dataset_samples_name(const dataset_info *info);

/* Reads all N labels (caller frees); each is checked to be in [0, num_classes),
 * fatal_input naming the first bad index otherwise. NULL if the file has none. */
int32_t *dataset_read_labels(const dataset_info *info);

/* ---- writing ---- */

typedef struct {
    const char *path;       /* the final name; written as PATH.partial, renamed on success */
    int force;              /* overwrite an existing PATH */
    dataset_kind kind;
    dataset_element element;
    int64_t count;          /* N */
    int channels, height, width;
    int has_labels;
    int num_classes;        /* > 0 when has_labels */
    const char *const *class_names; /* num_classes names, or NULL */
    /* latents only */
    const double *latent_mean, *latent_std; /* may be NULL at create; set by dataset_writer_set_latent_stats */
    const char *autoencoder;
    /* > 0: written as latent_scaling_factor and latent_shift_factor (a diffusers
     * autoencoder's); 0: neither is written (the units of ldm's own autoencoders) */
    double latent_scaling_factor, latent_shift_factor;
} dataset_writer_options;

typedef struct dataset_writer dataset_writer;

/* Collective over every rank (MPI_COMM_WORLD, parallel HDF5; one rank without
 * mpirun). Refuses (fatal_input, every rank) an existing PATH unless force.
 * Creates PATH.partial with chunked data sets and the attributes. */
dataset_writer *dataset_writer_create(const dataset_writer_options *options);

/* Collective: every rank calls each of these, with its own rows [start, start +
 * rows) (rows may be 0). Images are given as (rows, H, W, C) uint8; latents as
 * (rows, C, H, W) float32, converted to the stored element type. */
void dataset_writer_write_images(dataset_writer *writer, int64_t start, int64_t rows, const uint8_t *images);
void dataset_writer_write_latents(dataset_writer *writer, int64_t start, int64_t rows, const float *latents);
void dataset_writer_write_labels(dataset_writer *writer, int64_t start, int64_t rows, const int32_t *labels);
/* Collective; the same values on every rank. */
void dataset_writer_set_latent_stats(dataset_writer *writer, const double *mean, const double *std);

/* Collective; the same count on every rank: ends the data sets after row
 * `count` (at most the count given at create), for writers that learn the
 * number of rows only while writing (prepare images --skip-bad). */
void dataset_writer_shrink(dataset_writer *writer, int64_t count);

/* Collective: closes, fsyncs, renames PATH.partial to PATH (rank 0) and waits
 * for it; the writer is freed. */
void dataset_writer_finish(dataset_writer *writer);

/* IEEE binary16, little-endian, as an HDF5 type (HDF5 1.10 has none
 * predefined), built the way h5py builds it; the caller closes it. */
hid_t dataset_float16_type(void);

/* Model images back to pixels, the inverse of the loader's x / 127.5 - 1:
 * round((x + 1) 127.5) clamped to [0, 255]; images (rows, C, H, W) float to
 * pixels (rows, H, W, C) uint8, as /images stores them. */
uint8_t dataset_pixel_from_float(float value);
void dataset_pixels_from_floats(const float *images, int64_t rows, int channels, int size, uint8_t *pixels);

/* Collective writers call the writer the same number of times on every rank
 * (the largest shard's batch count): the rows of a rank's batch b, given its
 * shard's rows and the batch size, are min(batch, rows - b batch), 0 once the
 * shard is done. */
int64_t dataset_rows_in_batch(int64_t rows, int64_t batch, int64_t b);

/* The contiguous range of rows [*start, *start + *rows) that rank r of w owns
 * among n: sizes differ by at most one, the first n % w ranks hold one more. */
void dataset_shard_range(int64_t n, int rank, int world_size, int64_t *start, int64_t *rows);

#endif

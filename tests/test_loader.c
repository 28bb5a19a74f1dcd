/* The loader (data/loader.c), on one rank or under mpirun (1, 2 or 4 ranks).
 * Rank 0 writes small data set files whose sample i carries label i and
 * pixels/latents that are a known function of (i, position), with small chunks
 * so that the streamed mode reads many blocks. Checked: with virtual shards of
 * equal size, each stretch of N global positions (the ranks' samples put
 * together, rank r at positions r, r + W, ...) is the whole set once, and the
 * stretches come in different orders; in memory and streamed give the same
 * sequence; the ranks serve disjoint samples; the order is a pure function of
 * the seed; saving and restoring the state (mid-epoch, across an epoch
 * boundary) continues identically; images map to [-1, 1] in NCHW; latents
 * (float32, and float16 over every finite half) are normalised with the stored
 * statistics; flips are deterministic, do flip, and mirror exactly; each
 * sample comes with its index in the file. Rank 0 writes the global sequences
 * (rows, labels, a hash of the values) to OUTPUT_PREFIX-order.txt: the ctest
 * test_loader_same_order compares the files of 1, 2 and 4 ranks byte for byte.
 * Usage: test_loader OUTPUT_PREFIX (files OUTPUT_PREFIX-* are written). */
#include <hdf5.h>
#include <math.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "comm.h"
#include "dataset_file.h"
#include "loader.h"
#include "test_util.h"

static int rank, world;
static char prefix[1024];

/* ---- the test files ---- */

typedef struct {
    dataset_kind kind;
    dataset_element element;
    int64_t count;
    int channels, height, width;
    int64_t chunk_rows;
    int with_labels; /* labels[i] = i, num_classes = count */
    double mean[8], std[8];
} test_set;

/* Image (N, H, W, C) byte of sample i: every value 0..255 occurs, and no row is
 * its own mirror image, so a flip always shows. */
static uint8_t image_byte(int64_t i, int y, int x, int c) { return (uint8_t)((i * 31 + y * 17 + x * 5 + c * 101) % 256); }
/* Latent (N, C, H, W) value of sample i: multiples of 1/8 in [-3, 3.125], exact in float16. */
static float latent_value(int64_t i, int c, int y, int x) { return (float)((i * 7 + c * 3 + y * 5 + x * 11) % 50) * 0.125f - 3.0f; }

static hid_t half_type(void) {
    hid_t type = H5Tcopy(H5T_IEEE_F32LE);
    H5Tset_fields(type, 15, 10, 5, 0, 10);
    H5Tset_size(type, 2);
    H5Tset_ebias(type, 15);
    return type;
}

/* The exact value of an IEEE half (by its fields, in double). */
static double half_value(uint16_t h) {
    int exponent = (h >> 10) & 31, mantissa = h & 1023;
    double magnitude = exponent == 0 ? ldexp(mantissa, -24) : ldexp(1024 + mantissa, exponent - 25);
    return (h & 0x8000) ? -magnitude : magnitude;
}

static int half_is_finite(uint16_t h) { return ((h >> 10) & 31) != 31; }

/* The half bits of v, which must be exactly representable as a half. */
static uint16_t half_bits(double v) {
    uint16_t sign = v < 0 ? 0x8000 : 0;
    double magnitude = fabs(v);
    if (magnitude == 0) return sign;
    int exponent;
    double fraction = frexp(magnitude, &exponent); /* magnitude = fraction * 2^exponent, fraction in [0.5, 1) */
    int biased = exponent - 1 + 15;
    if (biased <= 0) return (uint16_t)(sign | (uint16_t)ldexp(magnitude, 24)); /* subnormal */
    return (uint16_t)(sign | biased << 10 | (uint16_t)((fraction * 2 - 1) * 1024));
}

/* Float16 file of every finite half: element e of the whole array is bit
 * pattern e; infinities and NaNs are replaced by the sample's index, so that
 * no two samples are alike. */
static uint16_t exhaustive_half(int64_t element) {
    uint16_t h = (uint16_t)element;
    return half_is_finite(h) ? h : half_bits((double)(element / 64));
}

/* Writes a set in the ldm data set format with raw HDF5 calls (rank 0 only),
 * chunked along N by chunk_rows. exhaustive: the float16 pattern file. */
static void write_set(const char *path, const test_set *s, int exhaustive) {
    int64_t elements = s->count * s->channels * s->height * s->width;
    hsize_t dims[4] = {(hsize_t)s->count, 0, 0, 0};
    if (s->kind == DATASET_IMAGES) dims[1] = s->height, dims[2] = s->width, dims[3] = s->channels;
    else dims[1] = s->channels, dims[2] = s->height, dims[3] = s->width;
    hsize_t chunk[4] = {(hsize_t)s->chunk_rows, dims[1], dims[2], dims[3]};
    void *data;
    hid_t type;
    if (s->element == DATASET_UINT8) {
        uint8_t *bytes = malloc((size_t)elements);
        for (int64_t i = 0; i < s->count; i++)
            for (int y = 0; y < s->height; y++)
                for (int x = 0; x < s->width; x++)
                    for (int c = 0; c < s->channels; c++)
                        bytes[((i * s->height + y) * s->width + x) * s->channels + c] = image_byte(i, y, x, c);
        data = bytes;
        type = H5Tcopy(H5T_STD_U8LE);
    } else if (s->element == DATASET_FLOAT32) {
        float *floats = malloc(sizeof(float) * (size_t)elements);
        for (int64_t i = 0; i < s->count; i++)
            for (int c = 0; c < s->channels; c++)
                for (int y = 0; y < s->height; y++)
                    for (int x = 0; x < s->width; x++)
                        floats[((i * s->channels + c) * s->height + y) * s->width + x] = latent_value(i, c, y, x);
        data = floats;
        type = H5Tcopy(H5T_IEEE_F32LE);
    } else {
        uint16_t *halves = malloc(sizeof(uint16_t) * (size_t)elements);
        for (int64_t i = 0; i < s->count; i++)
            for (int c = 0; c < s->channels; c++)
                for (int y = 0; y < s->height; y++)
                    for (int x = 0; x < s->width; x++) {
                        int64_t e = ((i * s->channels + c) * s->height + y) * s->width + x;
                        halves[e] = exhaustive ? exhaustive_half(e) : half_bits(latent_value(i, c, y, x));
                    }
        data = halves;
        type = half_type();
    }
    unlink(path);
    hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hid_t space = H5Screate_simple(4, dims, NULL);
    hid_t create = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(create, 4, chunk);
    hid_t ds = H5Dcreate2(file, s->kind == DATASET_IMAGES ? "images" : "latents", type, space, H5P_DEFAULT, create,
                          H5P_DEFAULT);
    CHECK(H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0);
    H5Dclose(ds);
    H5Pclose(create);
    H5Sclose(space);
    H5Tclose(type);
    free(data);

    hid_t scalar = H5Screate(H5S_SCALAR);
    long long classes = s->with_labels ? s->count : 0;
    hid_t attribute = H5Acreate2(file, "num_classes", H5T_STD_I64LE, scalar, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(attribute, H5T_NATIVE_LLONG, &classes);
    H5Aclose(attribute);
    long long version = DATASET_FORMAT_VERSION;
    attribute = H5Acreate2(file, "format_version", H5T_STD_I64LE, scalar, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(attribute, H5T_NATIVE_LLONG, &version);
    H5Aclose(attribute);
    H5Sclose(scalar);
    if (s->with_labels) {
        hsize_t n = (hsize_t)s->count;
        int32_t *labels = malloc(sizeof(int32_t) * n);
        for (hsize_t i = 0; i < n; i++) labels[i] = (int32_t)i;
        hid_t label_space = H5Screate_simple(1, &n, NULL);
        hid_t label_ds = H5Dcreate2(file, "labels", H5T_STD_I32LE, label_space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        H5Dwrite(label_ds, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, labels);
        H5Dclose(label_ds);
        H5Sclose(label_space);
        free(labels);
    }
    if (s->kind == DATASET_LATENTS) {
        hsize_t c = (hsize_t)s->channels;
        hid_t stats_space = H5Screate_simple(1, &c, NULL);
        attribute = H5Acreate2(file, "latent_mean", H5T_IEEE_F64LE, stats_space, H5P_DEFAULT, H5P_DEFAULT);
        H5Awrite(attribute, H5T_NATIVE_DOUBLE, s->mean);
        H5Aclose(attribute);
        attribute = H5Acreate2(file, "latent_std", H5T_IEEE_F64LE, stats_space, H5P_DEFAULT, H5P_DEFAULT);
        H5Awrite(attribute, H5T_NATIVE_DOUBLE, s->std);
        H5Aclose(attribute);
        H5Sclose(stats_space);
    }
    H5Fclose(file);
}

/* The same float32 latents set through the data set writer (collective). */
static void write_set_with_writer(const char *path, const test_set *s) {
    int64_t start, rows;
    dataset_shard_range(s->count, rank, world, &start, &rows);
    int64_t sample = (int64_t)s->channels * s->height * s->width;
    float *latents = malloc(sizeof(float) * (size_t)(rows * sample + 1));
    int32_t *labels = malloc(sizeof(int32_t) * (size_t)(rows + 1));
    for (int64_t r = 0; r < rows; r++) {
        labels[r] = (int32_t)(start + r);
        for (int c = 0; c < s->channels; c++)
            for (int y = 0; y < s->height; y++)
                for (int x = 0; x < s->width; x++)
                    latents[((r * s->channels + c) * s->height + y) * s->width + x] = latent_value(start + r, c, y, x);
    }
    if (rank == 0) unlink(path);
    MPI_Barrier(MPI_COMM_WORLD);
    dataset_writer_options o = {.path = path, .force = 1, .kind = DATASET_LATENTS, .element = DATASET_FLOAT32,
                                .count = s->count, .channels = s->channels, .height = s->height, .width = s->width,
                                .has_labels = 1, .num_classes = (int)s->count, .latent_mean = s->mean,
                                .latent_std = s->std};
    dataset_writer *w = dataset_writer_create(&o);
    dataset_writer_write_latents(w, start, rows, latents);
    dataset_writer_write_labels(w, start, rows, labels);
    dataset_writer_finish(w);
    free(latents);
    free(labels);
}

/* ---- reading sequences ---- */

typedef struct {
    int64_t samples; /* positions read */
    int64_t sample_elements;
    int32_t *labels;  /* (samples) */
    int64_t *indices; /* (samples) */
    float *values;    /* (samples, C, H, W) */
} sequence;

/* Reads `batches` batches of l into a new sequence. */
static sequence take(loader *l, int batch, int batches) {
    sequence s;
    s.sample_elements = loader_info(l)->sample_elements;
    s.samples = (int64_t)batch * batches;
    s.labels = malloc(sizeof(int32_t) * (size_t)s.samples);
    s.indices = malloc(sizeof(int64_t) * (size_t)s.samples);
    s.values = malloc(sizeof(float) * (size_t)(s.samples * s.sample_elements));
    for (int b = 0; b < batches; b++)
        loader_next(l, s.values + (size_t)b * batch * s.sample_elements, s.labels + (size_t)b * batch,
                    s.indices + (size_t)b * batch);
    return s;
}

static void sequence_free(sequence *s) {
    free(s->labels);
    free(s->indices);
    free(s->values);
}

static int sequences_equal(const sequence *a, int64_t a_from, const sequence *b, int64_t b_from, int64_t samples) {
    return memcmp(a->labels + a_from, b->labels + b_from, sizeof(int32_t) * (size_t)samples) == 0 &&
           memcmp(a->indices + a_from, b->indices + b_from, sizeof(int64_t) * (size_t)samples) == 0 &&
           memcmp(a->values + a_from * a->sample_elements, b->values + b_from * b->sample_elements,
                  sizeof(float) * (size_t)(samples * a->sample_elements)) == 0;
}

/* Virtual shards: 8 unless the check says otherwise (1, 2 and 4 ranks divide it). */
static loader_options options_for(const char *path, int batch, uint64_t seed, int flip, int64_t budget) {
    loader_options o = {.path = path, .batch_size = batch, .seed = seed, .flip = flip,
                        .memory_budget_bytes = budget, .prefetch_batches = 2, .sigma_data = 0.5,
                        .virtual_shards = 8};
    return o;
}

static void set_path(char *out, size_t size, const char *name) { snprintf(out, size, "%s-%s.h5", prefix, name); }

/* ---- the values of one sample ---- */

/* 1 when out (C, H, W) is exactly sample i of the image set (mirrored when
 * flipped), with x / 127.5 - 1. */
static int image_matches(const test_set *s, int64_t i, const float *out, int flipped) {
    for (int c = 0; c < s->channels; c++)
        for (int y = 0; y < s->height; y++)
            for (int x = 0; x < s->width; x++) {
                int source_x = flipped ? s->width - 1 - x : x;
                float expected = (float)image_byte(i, y, source_x, c) / 127.5f - 1.0f;
                if (out[((size_t)c * s->height + y) * s->width + x] != expected) return 0;
            }
    return 1;
}

static int latent_matches(const test_set *s, int64_t i, const float *out, int flipped, double sigma_data) {
    for (int c = 0; c < s->channels; c++)
        for (int y = 0; y < s->height; y++)
            for (int x = 0; x < s->width; x++) {
                int source_x = flipped ? s->width - 1 - x : x;
                double expected = (latent_value(i, c, y, source_x) - s->mean[c]) / s->std[c] * sigma_data;
                double found = out[((size_t)c * s->height + y) * s->width + x];
                if (!(fabs(found - expected) <= 1e-6 + 1e-6 * fabs(expected))) return 0;
            }
    return 1;
}

/* Checks every sample of q against the set: the label names the sample; its
 * values match, unflipped, or (only when flips are on) mirrored. Counts flips. */
static void check_values(const test_set *s, const sequence *q, int flip, int64_t *flipped_count) {
    int64_t bad = 0, wrong_index = 0;
    for (int64_t p = 0; p < q->samples; p++) {
        int64_t i = q->labels[p];
        wrong_index += q->indices[p] != i;
        const float *out = q->values + p * q->sample_elements;
        int plain, mirrored;
        if (s->kind == DATASET_IMAGES) {
            plain = image_matches(s, i, out, 0);
            mirrored = image_matches(s, i, out, 1);
        } else {
            plain = latent_matches(s, i, out, 0, 0.5);
            mirrored = latent_matches(s, i, out, 1, 0.5);
        }
        if (!(plain || (flip && mirrored))) bad++;
        if (mirrored && !plain) (*flipped_count)++;
    }
    CHECK_MSG(bad == 0, "%lld of %lld samples do not match their label's values", (long long)bad,
              (long long)q->samples);
    CHECK_MSG(wrong_index == 0, "%lld of %lld samples come with another index than their label",
              (long long)wrong_index, (long long)q->samples);
}

/* ---- the checks ---- */

/* FNV-1a over a sample's float bits. */
static uint64_t values_hash(const float *values, int64_t count) {
    uint64_t h = 1469598103934665603ULL;
    const unsigned char *bytes = (const unsigned char *)values;
    for (size_t i = 0; i < (size_t)count * sizeof(float); i++) h = (h ^ bytes[i]) * 1099511628211ULL;
    return h;
}

/* The global sequence of `per_rank` samples a rank (world x per_rank in all),
 * on rank 0; NULL elsewhere. rows/labels/hashes (world x per_rank). */
typedef struct {
    int64_t count;
    int64_t *rows;
    int32_t *labels;
    uint64_t *hashes;
} global_sequence;

static global_sequence gather_global(const sequence *q) {
    global_sequence g = {.count = q->samples * world};
    uint64_t *hashes = malloc(sizeof(uint64_t) * (size_t)q->samples);
    for (int64_t i = 0; i < q->samples; i++) hashes[i] = values_hash(q->values + i * q->sample_elements, q->sample_elements);
    int64_t *all_rows = rank == 0 ? malloc(sizeof(int64_t) * (size_t)g.count) : NULL;
    int32_t *all_labels = rank == 0 ? malloc(sizeof(int32_t) * (size_t)g.count) : NULL;
    uint64_t *all_hashes = rank == 0 ? malloc(sizeof(uint64_t) * (size_t)g.count) : NULL;
    MPI_Gather(q->indices, (int)q->samples, MPI_INT64_T, all_rows, (int)q->samples, MPI_INT64_T, 0, MPI_COMM_WORLD);
    MPI_Gather(q->labels, (int)q->samples, MPI_INT32_T, all_labels, (int)q->samples, MPI_INT32_T, 0, MPI_COMM_WORLD);
    MPI_Gather(hashes, (int)q->samples, MPI_UINT64_T, all_hashes, (int)q->samples, MPI_UINT64_T, 0, MPI_COMM_WORLD);
    free(hashes);
    if (rank != 0) return g;
    /* rank r's i-th sample is global position i * world + r */
    g.rows = malloc(sizeof(int64_t) * (size_t)g.count);
    g.labels = malloc(sizeof(int32_t) * (size_t)g.count);
    g.hashes = malloc(sizeof(uint64_t) * (size_t)g.count);
    for (int r = 0; r < world; r++)
        for (int64_t i = 0; i < q->samples; i++) {
            int64_t from = r * q->samples + i, to = i * world + r;
            g.rows[to] = all_rows[from];
            g.labels[to] = all_labels[from];
            g.hashes[to] = all_hashes[from];
        }
    free(all_rows);
    free(all_labels);
    free(all_hashes);
    return g;
}

static void global_free(global_sequence *g) {
    free(g->rows);
    free(g->labels);
    free(g->hashes);
}

static FILE *order_file;

/* `epochs` x N global positions with virtual shards of equal size (the set's
 * blocks split evenly): each stretch of N is the whole set once, the stretches
 * differ, the ranks' rows are disjoint within a stretch, the values are right;
 * in memory and streamed (budget 1 byte) give the same sequence; the sequence
 * goes to the order file. */
static void check_order(const char *name, const char *path, const test_set *s, int batch, int flip) {
    const int epochs = 2;
    int64_t per_rank = epochs * s->count / world;
    int batches = (int)(per_rank / batch);
    CHECK_MSG(batches * batch == per_rank, "%s: the check needs a batch that divides %lld", name, (long long)per_rank);
    loader_options o = options_for(path, batch, 7, flip, 1 << 30);
    loader *memory = loader_open(&o);
    o.memory_budget_bytes = 1;
    loader *streamed = loader_open(&o);
    CHECK(!loader_streams(memory) && loader_streams(streamed));
    /* 8 requested; at least 8 rows a shard: 4 for the sets of 32 */
    CHECK(loader_virtual_shards(memory) == (s->count >= 64 ? 8 : 4) && loader_rank_samples(memory) == s->count / world);
    sequence qm = take(memory, batch, batches), qs = take(streamed, batch, batches);
    CHECK_MSG(sequences_equal(&qm, 0, &qs, 0, qm.samples), "%s: in memory and streamed give different batches", name);
    loader_state state = loader_get_state(memory);
    CHECK(state.position == epochs * s->count && state.epoch == epochs);
    int64_t flipped = 0;
    check_values(s, &qm, flip, &flipped);
    if (flip) {
        int64_t total = flipped;
        MPI_Allreduce(MPI_IN_PLACE, &total, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
        CHECK_MSG(total > 0 && total < qm.samples * world, "%s: %lld of %lld samples flipped", name, (long long)total,
                  (long long)(qm.samples * world));
    } else {
        CHECK(flipped == 0);
    }
    global_sequence g = gather_global(&qm);
    if (rank == 0) {
        for (int e = 0; e < epochs; e++) {
            int *seen = calloc((size_t)s->count, sizeof(int));
            int64_t not_once = 0, wrong = 0;
            for (int64_t p = e * s->count; p < (e + 1) * s->count; p++) {
                wrong += g.rows[p] < 0 || g.rows[p] >= s->count;
                if (g.rows[p] >= 0 && g.rows[p] < s->count) seen[g.rows[p]]++;
            }
            for (int64_t i = 0; i < s->count; i++) not_once += seen[i] != 1;
            CHECK_MSG(wrong == 0 && not_once == 0, "%s: epoch %d: %lld rows outside the set, %lld not seen once",
                      name, e, (long long)wrong, (long long)not_once);
            free(seen);
        }
        CHECK_MSG(memcmp(g.rows, g.rows + s->count, sizeof(int64_t) * (size_t)s->count) != 0,
                  "%s: epochs 0 and 1 come in the same order", name);
        /* Not the file order, nor one virtual shard after another. */
        int64_t ascending = 0;
        for (int64_t p = 1; p < s->count; p++) ascending += g.rows[p] > g.rows[p - 1];
        CHECK_MSG(ascending < s->count - 1 && ascending > 0, "%s: the first epoch is in file order", name);
        fprintf(order_file, "# %s batch %d flip %d\n", name, batch, flip);
        for (int64_t p = 0; p < g.count; p++)
            fprintf(order_file, "%lld %lld %d %016llx\n", (long long)p, (long long)g.rows[p], g.labels[p],
                    (unsigned long long)g.hashes[p]);
    }
    /* The ranks serve disjoint rows. */
    int *mine = calloc((size_t)s->count, sizeof(int));
    for (int64_t i = 0; i < qm.samples; i++) mine[qm.indices[i]] = 1;
    int *owners = calloc((size_t)s->count, sizeof(int));
    MPI_Allreduce(mine, owners, (int)s->count, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    int64_t shared = 0;
    for (int64_t i = 0; i < s->count; i++) shared += owners[i] != 1;
    CHECK_MSG(shared == 0, "%s: %lld rows served by no rank or by several", name, (long long)shared);
    free(mine);
    free(owners);
    global_free(&g);
    sequence_free(&qm);
    sequence_free(&qs);
    loader_close(memory);
    loader_close(streamed);
}

/* The order is a pure function of the seed: same seed, same batches (values
 * and flips included); another seed, another order. */
static void check_seeds(const char *path, int batch, int64_t budget) {
    loader_options o = options_for(path, batch, 11, 1, budget);
    o.prefetch_batches = 3;
    loader *a = loader_open(&o), *b = loader_open(&o);
    o.seed = 12;
    loader *c = loader_open(&o);
    sequence qa = take(a, batch, 6), qb = take(b, batch, 6), qc = take(c, batch, 6);
    CHECK_MSG(sequences_equal(&qa, 0, &qb, 0, qa.samples), "the same seed gave different batches");
    CHECK_MSG(memcmp(qa.labels, qc.labels, sizeof(int32_t) * (size_t)qa.samples) != 0,
              "seeds 11 and 12 gave the same order");
    sequence_free(&qa);
    sequence_free(&qb);
    sequence_free(&qc);
    loader_close(a);
    loader_close(b);
    loader_close(c);
}

/* Saving the state after `before` batches and restoring it (on the same loader,
 * after reading on; and on a fresh one) continues with the same batches. */
static void check_restore(const char *path, int batch, int64_t budget, int before, int after, int virtual_shards) {
    loader_options o = options_for(path, batch, 5, 1, budget);
    o.prefetch_batches = 1;
    o.virtual_shards = virtual_shards;
    loader *l = loader_open(&o);
    sequence head = take(l, batch, before);
    loader_state saved = loader_get_state(l);
    CHECK(saved.position == (int64_t)before * batch * world);
    sequence reference = take(l, batch, after);

    loader_set_state(l, saved); /* batches were prefetched past it: they are dropped */
    CHECK(loader_get_state(l).position == saved.position);
    sequence again = take(l, batch, after);
    CHECK_MSG(sequences_equal(&reference, 0, &again, 0, reference.samples),
              "restoring position %lld on the same loader continued differently", (long long)saved.position);

    loader *fresh = loader_open(&o);
    loader_set_state(fresh, saved);
    sequence resumed = take(fresh, batch, after);
    CHECK_MSG(sequences_equal(&reference, 0, &resumed, 0, reference.samples),
              "restoring position %lld on a new loader continued differently", (long long)saved.position);

    sequence_free(&head);
    sequence_free(&reference);
    sequence_free(&again);
    sequence_free(&resumed);
    loader_close(fresh);
    loader_close(l);
}

/* Float16: every finite half converts exactly (mean 0, std 1, sigma_data 1),
 * and a file without labels gives -1 labels. 64 virtual shards of one
 * 16-row block each: a rank's first rank_samples samples are its rows once. */
static void check_every_half(const char *path, const test_set *s) {
    loader_options o = options_for(path, 16, 3, 0, 1 << 30);
    o.sigma_data = 1.0;
    o.virtual_shards = 64;
    loader *l = loader_open(&o);
    int64_t count = loader_rank_samples(l);
    CHECK(count == s->count / world);
    sequence q = take(l, 16, (int)((count + 15) / 16));
    int64_t wrong = 0, labelled = 0, not_once = 0;
    int *seen = calloc((size_t)s->count, sizeof(int));
    for (int64_t p = 0; p < count; p++) {
        labelled += q.labels[p] != -1;
        const float *out = q.values + p * q.sample_elements;
        int64_t i = q.indices[p];
        if (i < 0 || i >= s->count) {
            wrong++;
            continue;
        }
        seen[i]++;
        for (int64_t e = 0; e < q.sample_elements; e++)
            if ((double)out[e] != half_value(exhaustive_half(i * q.sample_elements + e))) {
                wrong++;
                break;
            }
    }
    int *all = calloc((size_t)s->count, sizeof(int));
    MPI_Allreduce(seen, all, (int)s->count, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    for (int64_t i = 0; i < s->count; i++) not_once += all[i] != 1;
    CHECK_MSG(labelled == 0, "%lld labels are not -1 in a file without labels", (long long)labelled);
    CHECK_MSG(wrong == 0 && not_once == 0, "%lld samples are no exact float16 conversion of their row, %lld rows not "
              "seen once by all ranks together", (long long)wrong, (long long)not_once);
    free(seen);
    free(all);
    sequence_free(&q);
    loader_close(l);
}

/* Images: 0 -> -1 and 255 -> 1 exactly, everything within [-1, 1]. */
static void check_image_range(const char *path, const test_set *s) {
    loader_options o = options_for(path, 4, 1, 0, 1 << 30);
    loader *l = loader_open(&o);
    int64_t count = loader_rank_samples(l);
    sequence q = take(l, 4, (int)((count + 3) / 4));
    int low = 0, high = 0, outside = 0;
    for (int64_t p = 0; p < count; p++)
        for (int c = 0; c < s->channels; c++)
            for (int y = 0; y < s->height; y++)
                for (int x = 0; x < s->width; x++) {
                    float v = q.values[p * q.sample_elements + ((int64_t)c * s->height + y) * s->width + x];
                    uint8_t stored = image_byte(q.labels[p], y, x, c);
                    if (stored == 0) low += v == -1.0f;
                    if (stored == 255) high += v == 1.0f;
                    outside += !(v >= -1.0f && v <= 1.0f);
                }
    int lows = low, highs = high;
    MPI_Allreduce(MPI_IN_PLACE, &lows, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, &highs, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    CHECK_MSG(lows > 0 && highs > 0, "0 -> -1 seen %d times, 255 -> 1 seen %d times", lows, highs);
    CHECK(outside == 0);
    sequence_free(&q);
    loader_close(l);
}

/* A file from the data set writer loads with the same values and order as the
 * same set written by hand with the same chunk size. */
static void check_writer_file(const char *written, const char *by_hand, int batch) {
    loader_options o = options_for(written, batch, 9, 1, 1 << 30);
    loader *a = loader_open(&o);
    o.path = by_hand;
    loader *b = loader_open(&o);
    sequence qa = take(a, batch, 4), qb = take(b, batch, 4);
    CHECK_MSG(sequences_equal(&qa, 0, &qb, 0, qa.samples), "the writer's file loads differently");
    sequence_free(&qa);
    sequence_free(&qb);
    loader_close(a);
    loader_close(b);
}

int main(int argc, char **argv) {
    comm_init(&argc, &argv);
    rank = comm_rank();
    world = comm_world_size();
    if (argc != 2) {
        fprintf(stderr, "usage: test_loader OUTPUT_PREFIX\n");
        return 2;
    }
    snprintf(prefix, sizeof(prefix), "%s", argv[1]);

    /* 64 samples in chunks of 4: 16 blocks dealt evenly to 8 virtual shards; 32
     * in chunks of 8 (the writer's file holds one chunk of 32, cut into the same
     * blocks of 8): 4 blocks, one for each of 4 virtual shards. */
    const test_set images = {.kind = DATASET_IMAGES, .element = DATASET_UINT8, .count = 64, .channels = 2,
                             .height = 3, .width = 5, .chunk_rows = 4, .with_labels = 1};
    test_set latents32 = {.kind = DATASET_LATENTS, .element = DATASET_FLOAT32, .count = 32, .channels = 3,
                          .height = 4, .width = 6, .chunk_rows = 8, .with_labels = 1,
                          .mean = {0.5, -1.0, 2.0}, .std = {2.0, 0.25, 1.0}};
    test_set latents16 = latents32;
    latents16.element = DATASET_FLOAT16;
    /* 41 samples in chunks of 3: 14 blocks (the last of 2 rows) dealt unevenly to 4 virtual shards. */
    const test_set uneven = {.kind = DATASET_IMAGES, .element = DATASET_UINT8, .count = 41, .channels = 2,
                             .height = 3, .width = 5, .chunk_rows = 3, .with_labels = 1};
    const test_set halves = {.kind = DATASET_LATENTS, .element = DATASET_FLOAT16, .count = 1024, .channels = 4,
                             .height = 4, .width = 4, .chunk_rows = 64, .with_labels = 0,
                             .mean = {0, 0, 0, 0}, .std = {1, 1, 1, 1}};
    char images_path[1100], latents32_path[1100], latents16_path[1100], halves_path[1100], writer_path[1100],
        uneven_path[1100], order_path[1100];
    set_path(images_path, sizeof(images_path), "images");
    set_path(latents32_path, sizeof(latents32_path), "latents32");
    set_path(latents16_path, sizeof(latents16_path), "latents16");
    set_path(halves_path, sizeof(halves_path), "halves");
    set_path(writer_path, sizeof(writer_path), "writer");
    set_path(uneven_path, sizeof(uneven_path), "uneven");
    snprintf(order_path, sizeof(order_path), "%s-order.txt", prefix);
    if (rank == 0) {
        H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
        write_set(images_path, &images, 0);
        write_set(latents32_path, &latents32, 0);
        write_set(latents16_path, &latents16, 0);
        write_set(halves_path, &halves, 1);
        write_set(uneven_path, &uneven, 0);
        order_file = fopen(order_path, "w");
        CHECK_MSG(order_file != NULL, "cannot write %s", order_path);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    write_set_with_writer(writer_path, &latents32);

    /* Batches of 1, 2, 4 and 8 (a rank's batch: 4 ranks read 32 of the 128
     * positions of two image epochs each). */
    check_order("images", images_path, &images, 4, 0);
    check_order("images flipped", images_path, &images, 8, 1);
    check_order("latents32", latents32_path, &latents32, 2, 1);
    check_order("latents16", latents16_path, &latents16, 1, 1);

    check_seeds(images_path, 4, 1 << 30);
    check_seeds(images_path, 4, 1);

    /* Mid-epoch (2 batches of 2 in), and across epoch boundaries; uneven
     * virtual shards (41 samples: 4 shards of 3 or 4 blocks of up to 3 rows). */
    check_restore(images_path, 2, 1 << 30, 2, 3, 8);
    check_restore(images_path, 2, 1, 3, 40, 8);
    check_restore(uneven_path, 3, 1 << 30, 2, 30, 4);
    check_restore(uneven_path, 3, 1, 5, 30, 4);
    check_restore(latents16_path, 4, 4 * 3 * 4 * 6 * 2, 1, 6, 8);

    check_every_half(halves_path, &halves);
    check_image_range(images_path, &images);
    check_writer_file(writer_path, latents32_path, 4);

    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) {
        fclose(order_file);
        unlink(images_path);
        unlink(latents32_path);
        unlink(latents16_path);
        unlink(halves_path);
        unlink(writer_path);
        unlink(uneven_path);
    }
    int failures = test_failures;
    MPI_Allreduce(MPI_IN_PLACE, &failures, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    int status = rank == 0 ? test_finish("test_loader") : (test_failures ? 1 : 0);
    if (rank == 0 && failures != test_failures) {
        fprintf(stderr, "test_loader: other ranks failed %d checks\n", failures - test_failures);
        status = 1;
    }
    comm_finalize();
    return status;
}

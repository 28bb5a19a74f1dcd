/* The sharded, prefetching data loader (see loader.h). This file owns checking
 * a data set file against what the model expects, reading this rank's shard
 * (collectively into memory, or streamed window by window on the loader
 * thread), the order of the samples in each epoch, and assembling float batches
 * ahead of training on a background thread. Everything is allocated in
 * loader_open; the thread allocates nothing. */
#include "loader.h"

#include <hdf5.h>
#include <mpi.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "fatal.h"
#include "hdf5_arrays.h"
#include "rng.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the loader's float16 memory type assumes a little-endian host"
#endif

/* Purpose keys mixed into the seed, so that the data order and the flips never
 * share a random stream with each other or with anything else in ldm. */
#define LOADER_PURPOSE_ORDER 0x6c6f616465726f72ULL  /* "loaderor" */
#define LOADER_PURPOSE_WINDOW 0x6c6f616465727769ULL /* "loaderwi" */
#define LOADER_PURPOSE_FLIP 0x6c6f61646572666cULL   /* "loaderfl" */

/* Reads of the shard are split into pieces of at most this many bytes: MPI-IO
 * counts bytes in an int, so a single read of 2 GiB or more fails. */
#define LOADER_MAX_READ_BYTES ((int64_t)1 << 30)

typedef struct {
    float *samples;     /* (batch_size, C, H, W) */
    int32_t *labels;    /* (batch_size) */
    int64_t *indices;   /* (batch_size) the samples' rows in the file */
    loader_state after; /* the loader's state once this batch has been handed out */
} prefetch_slot;

typedef enum { SHARD_IN_MEMORY, SHARD_STREAMED } shard_residence;

struct loader {
    loader_options options; /* options.path is not kept: info.path is the file */
    dataset_info info;
    int rank;
    int64_t shard_start, shard_count; /* rows [shard_start, shard_start + shard_count) of the file */
    size_t sample_bytes;              /* one sample as stored */
    int32_t *labels;                  /* (shard_count), or NULL when the file has none */

    /* Conversion to the model's floats. */
    float image_values[256]; /* stored byte -> [-1, 1] */
    float *channel_shift;    /* (C) latents: mean of channel c */
    float *channel_scale;    /* (C) latents: sigma_data / std of channel c */

    shard_residence residence;
    int64_t order_epoch; /* the epoch shard_order or window_order is drawn for; -1 none */
    /* In memory. */
    unsigned char *shard; /* (shard_count, sample_bytes), as stored */
    int64_t *shard_order; /* (shard_count) shard-relative rows in the order of order_epoch */
    /* Streamed: the windows are the shard cut at the file rows that are multiples
     * of window_rows (a multiple of the chunk size), so each window reads whole
     * chunks; the first and the last may be shorter. Window w (in file order)
     * starts at file row max(shard_start, window_base + w * window_rows). */
    hid_t file, samples_dataset, memory_type;
    int64_t window_rows, window_base, window_count;
    int64_t *window_order;        /* (window_count) the file-order window read k-th in order_epoch */
    int64_t *window_begin;        /* (window_count + 1) the epoch position where the k-th window begins */
    unsigned char *window;        /* (min(window_rows, shard_count), sample_bytes) the loaded window */
    int64_t *window_sample_order; /* (min(window_rows, shard_count)) rows of the loaded window, in order */
    int64_t loaded_window;        /* k (in order_epoch's window order) of the loaded window; -1 none */

    /* Where the loader thread is (only the thread touches it). */
    loader_state cursor;

    /* The prefetch ring and the requests to the thread, guarded by mutex. */
    pthread_mutex_t mutex;
    pthread_cond_t batch_ready, slot_free;
    prefetch_slot *slots; /* (prefetch_batches) */
    int slot_count, first_full, full_count;
    uint64_t generation;  /* bumped by loader_set_state: batches of an older one are dropped */
    loader_state restart; /* where the thread continues from after a new generation */
    int stopping;
    int failed;
    char failure[sizeof(((dataset_info *)0)->path) + 256]; /* the thread's error, for loader_next to report */
    pthread_t thread;

    loader_state consumed; /* main thread: the state after the last batch handed out */
};

/* ---- randomness: pure functions of (seed, epoch, rank, ...) ---- */

/* Uniform in [0, n) without modulo bias (Lemire's multiply-and-reject). */
static uint64_t uniform_below(rng_stream *stream, uint64_t n) {
    unsigned __int128 product = (unsigned __int128)rng_next_u64(stream) * n;
    uint64_t low = (uint64_t)product;
    if (low < n) {
        uint64_t threshold = (0 - n) % n;
        while (low < threshold) {
            product = (unsigned __int128)rng_next_u64(stream) * n;
            low = (uint64_t)product;
        }
    }
    return (uint64_t)(product >> 64);
}

/* items = a uniformly random permutation of 0 .. n-1 (Fisher-Yates). */
static void draw_permutation(int64_t *items, int64_t n, rng_stream stream) {
    for (int64_t i = 0; i < n; i++) items[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)uniform_below(&stream, (uint64_t)i + 1);
        int64_t swap = items[i];
        items[i] = items[j];
        items[j] = swap;
    }
}

static int flip_drawn(const loader *l, loader_state at) {
    rng_stream stream = rng_stream_for(rng_hash(l->options.seed ^ LOADER_PURPOSE_FLIP, (uint64_t)l->rank),
                                       (uint64_t)at.epoch, (uint64_t)at.position);
    return (int)(rng_next_u64(&stream) >> 63);
}

/* ---- reading rows of the sample data set ---- */

static hid_t stored_memory_type(const dataset_info *info) {
    switch (info->element) {
    case DATASET_UINT8: return H5Tcopy(H5T_NATIVE_UINT8);
    case DATASET_FLOAT16: return dataset_float16_type(); /* copies the stored bits as they are */
    case DATASET_FLOAT32: return H5Tcopy(H5T_NATIVE_FLOAT);
    }
    return -1;
}

static size_t element_bytes(dataset_element element) {
    return element == DATASET_UINT8 ? 1 : element == DATASET_FLOAT16 ? 2 : 4;
}

/* Reads file rows [first, first + rows) into buffer (rows may be 0: an empty
 * selection, so that a rank with nothing to read still joins a collective
 * read). The caller holds the HDF5 library lock. Returns 0 or -1. */
static int read_rows(hid_t dataset, hid_t memory_type, hid_t transfer, int64_t first, int64_t rows,
                     void *buffer) {
    hid_t file_space = H5Dget_space(dataset);
    if (file_space < 0) return -1;
    int ndim = H5Sget_simple_extent_ndims(file_space);
    hsize_t dims[H5S_MAX_RANK], start[H5S_MAX_RANK] = {0}, count[H5S_MAX_RANK];
    if (ndim < 1 || H5Sget_simple_extent_dims(file_space, dims, NULL) < 0) {
        H5Sclose(file_space);
        return -1;
    }
    hid_t memory_space;
    herr_t selected;
    if (rows > 0) {
        start[0] = (hsize_t)first;
        count[0] = (hsize_t)rows;
        for (int d = 1; d < ndim; d++) count[d] = dims[d];
        selected = H5Sselect_hyperslab(file_space, H5S_SELECT_SET, start, NULL, count, NULL);
        memory_space = H5Screate_simple(ndim, count, NULL);
    } else {
        hsize_t one = 1;
        selected = H5Sselect_none(file_space);
        memory_space = H5Screate_simple(1, &one, NULL);
        if (memory_space >= 0 && H5Sselect_none(memory_space) < 0) selected = -1;
    }
    int ok = selected >= 0 && memory_space >= 0 &&
             H5Dread(dataset, memory_type, memory_space, file_space, transfer, buffer) >= 0;
    if (memory_space >= 0) H5Sclose(memory_space);
    H5Sclose(file_space);
    return ok ? 0 : -1;
}

/* Collective over every rank: the shard into memory with parallel HDF5 (every
 * rank reads its own hyperslab in the same number of collective calls). */
static void read_shard_into_memory(loader *l, int world_size) {
    const char *path = l->info.path, *name = dataset_samples_name(&l->info);
    int mpi_up = 0;
    MPI_Initialized(&mpi_up);
    hdf5_library_lock();
    hid_t access = H5Pcreate(H5P_FILE_ACCESS), transfer = H5Pcreate(H5P_DATASET_XFER);
    if (mpi_up) {
        H5Pset_fapl_mpio(access, MPI_COMM_WORLD, MPI_INFO_NULL);
        H5Pset_dxpl_mpio(transfer, H5FD_MPIO_COLLECTIVE);
    }
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, access);
    if (file < 0) fatal_input("%s: cannot open the file for a parallel read", path);
    hid_t dataset = H5Dopen2(file, name, H5P_DEFAULT);
    if (dataset < 0) fatal_input("%s: cannot open %s", path, name);
    hid_t memory_type = stored_memory_type(&l->info);

    int64_t largest_shard = (l->info.count + world_size - 1) / world_size;
    int64_t rows_per_read = LOADER_MAX_READ_BYTES / (int64_t)l->sample_bytes;
    if (rows_per_read < 1) rows_per_read = 1;
    int64_t reads = (largest_shard + rows_per_read - 1) / rows_per_read;
    for (int64_t r = 0; r < reads; r++) {
        int64_t first = r * rows_per_read;
        int64_t rows = l->shard_count - first;
        if (rows > rows_per_read) rows = rows_per_read;
        if (rows < 0) rows = 0;
        if (read_rows(dataset, memory_type, transfer, l->shard_start + first, rows,
                      l->shard + (size_t)first * l->sample_bytes) < 0)
            fatal_input("%s: cannot read %s rows %lld to %lld (damaged file?)", path, name,
                        (long long)(l->shard_start + first), (long long)(l->shard_start + first + rows));
    }
    H5Tclose(memory_type);
    H5Dclose(dataset);
    H5Fclose(file);
    H5Pclose(transfer);
    H5Pclose(access);
    hdf5_library_unlock();
}

/* Streaming: the file is opened with the serial driver and read with
 * independent reads, because the loader thread must make no MPI calls. */
static void open_for_streaming(loader *l) {
    const char *path = l->info.path, *name = dataset_samples_name(&l->info);
    hdf5_library_lock();
    hid_t access = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fapl_sec2(access);
    l->file = H5Fopen(path, H5F_ACC_RDONLY, access);
    H5Pclose(access);
    if (l->file < 0) fatal_input("%s: cannot open the file", path);
    l->samples_dataset = H5Dopen2(l->file, name, H5P_DEFAULT);
    if (l->samples_dataset < 0) fatal_input("%s: cannot open %s", path, name);
    l->memory_type = stored_memory_type(&l->info);
    hdf5_library_unlock();
}

/* File-order window w: its first file row and its row count. */
static void window_rows_of(const loader *l, int64_t w, int64_t *first, int64_t *rows) {
    int64_t begin = l->window_base + w * l->window_rows, end = begin + l->window_rows;
    int64_t shard_end = l->shard_start + l->shard_count;
    if (begin < l->shard_start) begin = l->shard_start;
    if (end > shard_end) end = shard_end;
    *first = begin;
    *rows = end - begin;
}

/* ---- the order of an epoch ---- */

static void draw_epoch_order(loader *l, int64_t epoch) {
    rng_stream stream = rng_stream_for(l->options.seed ^ LOADER_PURPOSE_ORDER, (uint64_t)epoch, (uint64_t)l->rank);
    if (l->residence == SHARD_IN_MEMORY) {
        draw_permutation(l->shard_order, l->shard_count, stream);
    } else {
        draw_permutation(l->window_order, l->window_count, stream);
        l->window_begin[0] = 0;
        for (int64_t k = 0; k < l->window_count; k++) {
            int64_t first, rows;
            window_rows_of(l, l->window_order[k], &first, &rows);
            l->window_begin[k + 1] = l->window_begin[k] + rows;
        }
        l->loaded_window = -1;
    }
    l->order_epoch = epoch;
}

/* Makes the window holding epoch position `position` the loaded one: reads it
 * and draws the order of its samples. Returns 0, or -1 with l->failure set. */
static int load_window_for(loader *l, int64_t position) {
    int64_t k = l->loaded_window;
    if (k >= 0 && position >= l->window_begin[k] && position < l->window_begin[k + 1]) return 0;
    if (k >= 0 && k + 1 < l->window_count && position >= l->window_begin[k + 1] &&
        position < l->window_begin[k + 2]) {
        k = k + 1; /* the common case: the next window */
    } else {
        int64_t low = 0, high = l->window_count - 1; /* the last k with window_begin[k] <= position */
        while (low < high) {
            int64_t mid = (low + high + 1) / 2;
            if (l->window_begin[mid] <= position) low = mid;
            else high = mid - 1;
        }
        k = low;
    }
    int64_t w = l->window_order[k], first, rows;
    window_rows_of(l, w, &first, &rows);
    hdf5_library_lock();
    int read = read_rows(l->samples_dataset, l->memory_type, H5P_DEFAULT, first, rows, l->window);
    hdf5_library_unlock();
    if (read < 0) {
        snprintf(l->failure, sizeof(l->failure), "%s: cannot read %s rows %lld to %lld (damaged file?)",
                 l->info.path, dataset_samples_name(&l->info), (long long)first, (long long)(first + rows));
        l->loaded_window = -1;
        return -1;
    }
    rng_stream stream = rng_stream_for(rng_hash(l->options.seed ^ LOADER_PURPOSE_WINDOW, (uint64_t)w),
                                       (uint64_t)l->order_epoch, (uint64_t)l->rank);
    draw_permutation(l->window_sample_order, rows, stream);
    l->loaded_window = k;
    return 0;
}

/* The stored sample at the cursor and its shard-relative row; NULL on a read
 * failure (l->failure says why). Does not move the cursor. */
static const unsigned char *sample_at_cursor(loader *l, int64_t *row) {
    if (l->order_epoch != l->cursor.epoch) draw_epoch_order(l, l->cursor.epoch);
    int64_t position = l->cursor.position;
    if (l->residence == SHARD_IN_MEMORY) {
        *row = l->shard_order[position];
        return l->shard + (size_t)*row * l->sample_bytes;
    }
    if (load_window_for(l, position) < 0) return NULL;
    int64_t first, rows;
    window_rows_of(l, l->window_order[l->loaded_window], &first, &rows);
    int64_t in_window = l->window_sample_order[position - l->window_begin[l->loaded_window]];
    *row = first - l->shard_start + in_window;
    return l->window + (size_t)in_window * l->sample_bytes;
}

static loader_state state_after(loader_state state, int64_t shard_count) {
    if (++state.position == shard_count) {
        state.epoch++;
        state.position = 0;
    }
    return state;
}

/* ---- conversion to the model's floats ---- */

/* IEEE binary16 -> binary32, exact: the magnitude bits shifted into place give
 * the value times 2^-112 (subnormal halves become subnormal floats), the
 * multiply restores it; infinities and NaNs keep their all-ones exponent. */
static inline float half_to_float(uint16_t half) {
    uint32_t magnitude = (uint32_t)(half & 0x7fffu) << 13;
    float scaled;
    memcpy(&scaled, &magnitude, sizeof(scaled));
    scaled *= 0x1p112f;
    uint32_t bits;
    memcpy(&bits, &scaled, sizeof(bits));
    if ((half & 0x7c00u) == 0x7c00u) bits = 0x7f800000u | magnitude;
    bits |= (uint32_t)(half & 0x8000u) << 16;
    float value;
    memcpy(&value, &bits, sizeof(value));
    return value;
}

/* One stored sample to (C, H, W) floats, mirrored left-right when flip. */
static void convert_sample(const loader *l, const unsigned char *stored, int flip, float *chw) {
    const int channels = l->info.channels, height = l->info.height, width = l->info.width;
    const size_t plane = (size_t)height * width;
    if (l->info.kind == DATASET_IMAGES) {
        /* stored (H, W, C) uint8 */
        for (int y = 0; y < height; y++) {
            const unsigned char *row = stored + (size_t)y * width * channels;
            float *out_row = chw + (size_t)y * width;
            for (int x = 0; x < width; x++) {
                float *out = out_row + (flip ? width - 1 - x : x);
                for (int c = 0; c < channels; c++) out[c * plane] = l->image_values[row[x * channels + c]];
            }
        }
        return;
    }
    /* stored (C, H, W) float16 or float32 */
    for (int c = 0; c < channels; c++) {
        const float shift = l->channel_shift[c], scale = l->channel_scale[c];
        for (int y = 0; y < height; y++) {
            size_t offset = c * plane + (size_t)y * width;
            float *out = chw + offset;
            if (l->info.element == DATASET_FLOAT32) {
                const float *in = (const float *)stored + offset;
                if (flip)
                    for (int x = 0; x < width; x++) out[width - 1 - x] = (in[x] - shift) * scale;
                else
                    for (int x = 0; x < width; x++) out[x] = (in[x] - shift) * scale;
            } else {
                const uint16_t *in = (const uint16_t *)stored + offset;
                if (flip)
                    for (int x = 0; x < width; x++) out[width - 1 - x] = (half_to_float(in[x]) - shift) * scale;
                else
                    for (int x = 0; x < width; x++) out[x] = (half_to_float(in[x]) - shift) * scale;
            }
        }
    }
}

/* ---- the loader thread ---- */

/* Fills slot with the batch_size samples from the cursor on, moving the cursor.
 * Returns 0, or -1 with l->failure set. */
static int assemble_batch(loader *l, prefetch_slot *slot) {
    const size_t sample_elements = (size_t)l->info.sample_elements;
    for (int b = 0; b < l->options.batch_size; b++) {
        int64_t row;
        const unsigned char *stored = sample_at_cursor(l, &row);
        if (!stored) return -1;
        int flip = l->options.flip && flip_drawn(l, l->cursor);
        convert_sample(l, stored, flip, slot->samples + b * sample_elements);
        slot->labels[b] = l->labels ? l->labels[row] : -1;
        slot->indices[b] = l->shard_start + row;
        l->cursor = state_after(l->cursor, l->shard_count);
    }
    return 0;
}

static void *loader_thread(void *argument) {
    loader *l = argument;
    /* The generation the cursor belongs to: the one at open, 0, even when
     * loader_set_state ran before this thread got going. */
    uint64_t generation = 0;
    pthread_mutex_lock(&l->mutex);
    for (;;) {
        while (!l->stopping && l->full_count == l->slot_count) pthread_cond_wait(&l->slot_free, &l->mutex);
        if (l->stopping) break;
        if (generation != l->generation) {
            generation = l->generation;
            l->cursor = l->restart;
        }
        /* The slot after the full ones: the main thread reads only full slots. */
        prefetch_slot *slot = &l->slots[(l->first_full + l->full_count) % l->slot_count];
        pthread_mutex_unlock(&l->mutex);
        int assembled = assemble_batch(l, slot);
        pthread_mutex_lock(&l->mutex);
        if (assembled < 0) {
            l->failed = 1;
            pthread_cond_broadcast(&l->batch_ready);
            break;
        }
        if (generation == l->generation) { /* else loader_set_state came in meanwhile: dropped */
            slot->after = l->cursor;
            l->full_count++;
            pthread_cond_signal(&l->batch_ready);
        }
    }
    pthread_mutex_unlock(&l->mutex);
    return NULL;
}

/* ---- opening: what the model expects, then the shard ---- */

static void format_expected(char *out, size_t size, const loader_options *o) {
    char parts[3][16];
    const int values[3] = {o->expect_channels, o->expect_height, o->expect_width};
    for (int i = 0; i < 3; i++) {
        if (values[i] > 0) snprintf(parts[i], sizeof(parts[i]), "%d", values[i]);
        else snprintf(parts[i], sizeof(parts[i]), "any");
    }
    snprintf(out, size, "%sx%sx%s", parts[0], parts[1], parts[2]);
}

/* What dataset_info_open cannot know: the model's shape, and the world size.
 * Every rank sees the same file and options, so every rank fails here alike,
 * before any collective call. */
static void check_expectations(const loader *l, int world_size) {
    const dataset_info *info = &l->info;
    const loader_options *o = &l->options;
    const char *name = dataset_samples_name(info);
    if ((o->expect_channels > 0 && info->channels != o->expect_channels) ||
        (o->expect_height > 0 && info->height != o->expect_height) ||
        (o->expect_width > 0 && info->width != o->expect_width)) {
        char expected[64];
        format_expected(expected, sizeof(expected), o);
        fatal_input("%s: %s: expected samples of %s (channels x height x width, as the model is configured), "
                    "found %dx%dx%d", info->path, name, expected, info->channels, info->height, info->width);
    }
    if (info->count < world_size)
        fatal_input("%s: %s: expected at least one sample per rank (%d ranks), found N = %lld", info->path, name,
                    world_size, (long long)info->count);
}

/* The labels of this rank's shard; all N are checked against the model's
 * classes so that every rank refuses a bad file alike. */
static void read_shard_labels(loader *l) {
    hdf5_library_lock();
    int32_t *all = dataset_read_labels(&l->info);
    hdf5_library_unlock();
    if (!all) return;
    int classes = l->options.expect_num_classes;
    if (classes > 0)
        for (int64_t i = 0; i < l->info.count; i++)
            if (all[i] >= classes)
                fatal_input("%s: /labels: expected labels below the model's %d classes, found %d at sample %lld "
                            "(the file has %d classes)", l->info.path, classes, all[i], (long long)i,
                            l->info.num_classes);
    l->labels = xmalloc(sizeof(int32_t) * (size_t)l->shard_count);
    memcpy(l->labels, all + l->shard_start, sizeof(int32_t) * (size_t)l->shard_count);
    free(all);
}

static void set_up_conversion(loader *l) {
    for (int v = 0; v < 256; v++) l->image_values[v] = (float)v / 127.5f - 1.0f; /* 0 -> -1, 255 -> 1 exactly */
    if (l->info.kind != DATASET_LATENTS) return;
    if (!(l->options.sigma_data > 0)) fatal_internal("loader_open: sigma_data must be > 0 for latents");
    l->channel_shift = xmalloc(sizeof(float) * (size_t)l->info.channels);
    l->channel_scale = xmalloc(sizeof(float) * (size_t)l->info.channels);
    for (int c = 0; c < l->info.channels; c++) {
        l->channel_shift[c] = (float)l->info.latent_mean[c];
        l->channel_scale[c] = (float)(l->options.sigma_data / l->info.latent_std[c]);
    }
}

loader *loader_open(const loader_options *options) {
    if (!options->path || options->batch_size < 1 || options->prefetch_batches < 1)
        fatal_internal("loader_open: needs a path, batch_size >= 1 and prefetch_batches >= 1");
    loader *l = xcalloc(1, sizeof(*l));
    l->options = *options;
    l->options.path = NULL;
    l->rank = comm_rank();
    int world_size = comm_world_size();
    l->file = l->samples_dataset = l->memory_type = -1;
    l->order_epoch = -1;
    l->loaded_window = -1;

    hdf5_library_lock();
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    dataset_info_open(options->path, &l->info);
    hdf5_library_unlock();
    check_expectations(l, world_size);
    dataset_shard_range(l->info.count, l->rank, world_size, &l->shard_start, &l->shard_count);
    read_shard_labels(l);
    set_up_conversion(l);

    /* Every rank decides alike (from the largest shard), since the in-memory
     * read is collective. */
    l->sample_bytes = (size_t)l->info.sample_elements * element_bytes(l->info.element);
    int64_t largest_shard = (l->info.count + world_size - 1) / world_size;
    int64_t budget = options->memory_budget_bytes;
    if (budget >= 0 && largest_shard <= budget / (int64_t)l->sample_bytes) {
        l->residence = SHARD_IN_MEMORY;
        l->shard = xmalloc((size_t)l->shard_count * l->sample_bytes);
        l->shard_order = xmalloc(sizeof(int64_t) * (size_t)l->shard_count);
        read_shard_into_memory(l, world_size);
    } else {
        l->residence = SHARD_STREAMED;
        int64_t chunk_rows = l->info.chunk_rows > 0 ? l->info.chunk_rows : 1;
        int64_t chunks = budget > 0 ? budget / (chunk_rows * (int64_t)l->sample_bytes) : 0;
        l->window_rows = (chunks > 1 ? chunks : 1) * chunk_rows;
        l->window_base = l->shard_start / l->window_rows * l->window_rows;
        l->window_count = (l->shard_start + l->shard_count - l->window_base + l->window_rows - 1) / l->window_rows;
        int64_t buffer_rows = l->window_rows < l->shard_count ? l->window_rows : l->shard_count;
        l->window = xmalloc((size_t)buffer_rows * l->sample_bytes);
        l->window_sample_order = xmalloc(sizeof(int64_t) * (size_t)buffer_rows);
        l->window_order = xmalloc(sizeof(int64_t) * (size_t)l->window_count);
        l->window_begin = xmalloc(sizeof(int64_t) * (size_t)(l->window_count + 1));
        open_for_streaming(l);
    }

    l->slot_count = options->prefetch_batches;
    l->slots = xcalloc((size_t)l->slot_count, sizeof(prefetch_slot));
    for (int s = 0; s < l->slot_count; s++) {
        l->slots[s].samples = xmalloc(sizeof(float) * (size_t)options->batch_size * (size_t)l->info.sample_elements);
        l->slots[s].labels = xmalloc(sizeof(int32_t) * (size_t)options->batch_size);
        l->slots[s].indices = xmalloc(sizeof(int64_t) * (size_t)options->batch_size);
    }
    if (pthread_mutex_init(&l->mutex, NULL) != 0 || pthread_cond_init(&l->batch_ready, NULL) != 0 ||
        pthread_cond_init(&l->slot_free, NULL) != 0)
        fatal_internal("loader_open: cannot create the prefetch lock");
    if (pthread_create(&l->thread, NULL, loader_thread, l) != 0)
        fatal_internal("loader_open: cannot start the prefetch thread");
    return l;
}

const dataset_info *loader_info(const loader *l) { return &l->info; }

void loader_shard(const loader *l, int64_t *start, int64_t *count) {
    *start = l->shard_start;
    *count = l->shard_count;
}

int loader_streams(const loader *l) { return l->residence == SHARD_STREAMED; }

void loader_next(loader *l, float *samples, int32_t *labels, int64_t *indices) {
    pthread_mutex_lock(&l->mutex);
    while (l->full_count == 0 && !l->failed) pthread_cond_wait(&l->batch_ready, &l->mutex);
    if (l->full_count == 0) {
        char failure[sizeof(l->failure)];
        memcpy(failure, l->failure, sizeof(failure));
        pthread_mutex_unlock(&l->mutex);
        fatal_input("%s", failure);
    }
    prefetch_slot *slot = &l->slots[l->first_full];
    pthread_mutex_unlock(&l->mutex);

    /* A full slot is the main thread's until it is handed back below. */
    memcpy(samples, slot->samples, sizeof(float) * (size_t)l->options.batch_size * (size_t)l->info.sample_elements);
    memcpy(labels, slot->labels, sizeof(int32_t) * (size_t)l->options.batch_size);
    if (indices) memcpy(indices, slot->indices, sizeof(int64_t) * (size_t)l->options.batch_size);
    l->consumed = slot->after;

    pthread_mutex_lock(&l->mutex);
    l->first_full = (l->first_full + 1) % l->slot_count;
    l->full_count--;
    pthread_cond_signal(&l->slot_free);
    pthread_mutex_unlock(&l->mutex);
}

loader_state loader_get_state(const loader *l) { return l->consumed; }

void loader_set_state(loader *l, loader_state state) {
    if (state.epoch < 0 || state.position < 0 || state.position > l->shard_count)
        fatal_input("%s: data position (epoch %lld, sample %lld) does not fit this rank's shard of %lld samples "
                    "(saved with another world size or data set?)", l->info.path, (long long)state.epoch,
                    (long long)state.position, (long long)l->shard_count);
    if (state.position == l->shard_count) {
        state.epoch++;
        state.position = 0;
    }
    pthread_mutex_lock(&l->mutex);
    l->generation++;
    l->restart = state;
    l->full_count = 0;
    pthread_cond_signal(&l->slot_free);
    pthread_mutex_unlock(&l->mutex);
    l->consumed = state;
}

int loader_read_first(const loader_options *options, int max_count, float *samples, int32_t *labels) {
    /* A loader that never starts its thread: the checks and conversions of a
     * real one, and one serial read of the file's first rows. */
    loader *l = xcalloc(1, sizeof(*l));
    l->options = *options;
    hdf5_library_lock();
    dataset_info_open(options->path, &l->info);
    hdf5_library_unlock();
    check_expectations(l, 1);
    set_up_conversion(l);
    int count = l->info.count < max_count ? (int)l->info.count : max_count;
    size_t row_bytes = element_bytes(l->info.element) * (size_t)l->info.sample_elements;
    unsigned char *stored = xmalloc(row_bytes * (size_t)count);
    hdf5_library_lock();
    hid_t file = H5Fopen(options->path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t dataset = file >= 0 ? H5Dopen2(file, dataset_samples_name(&l->info), H5P_DEFAULT) : -1;
    hid_t memory_type = stored_memory_type(&l->info);
    int failed = dataset < 0 || read_rows(dataset, memory_type, H5P_DEFAULT, 0, count, stored) != 0;
    H5Tclose(memory_type);
    if (dataset >= 0) H5Dclose(dataset);
    if (file >= 0) H5Fclose(file);
    int32_t *all_labels = failed ? NULL : dataset_read_labels(&l->info);
    hdf5_library_unlock();
    if (failed) fatal_input("%s: %s: cannot read (damaged file?)", options->path, dataset_samples_name(&l->info));
    for (int i = 0; i < count; i++) {
        convert_sample(l, stored + (size_t)i * row_bytes, 0, samples + (size_t)i * (size_t)l->info.sample_elements);
        labels[i] = all_labels ? all_labels[i] : -1;
    }
    free(all_labels);
    free(stored);
    free(l->channel_shift);
    free(l->channel_scale);
    dataset_info_free(&l->info);
    free(l);
    return count;
}

void loader_close(loader *l) {
    if (!l) return;
    pthread_mutex_lock(&l->mutex);
    l->stopping = 1;
    pthread_cond_broadcast(&l->slot_free);
    pthread_mutex_unlock(&l->mutex);
    pthread_join(l->thread, NULL);
    pthread_cond_destroy(&l->batch_ready);
    pthread_cond_destroy(&l->slot_free);
    pthread_mutex_destroy(&l->mutex);
    if (l->residence == SHARD_STREAMED) {
        hdf5_library_lock();
        if (l->memory_type >= 0) H5Tclose(l->memory_type);
        if (l->samples_dataset >= 0) H5Dclose(l->samples_dataset);
        if (l->file >= 0) H5Fclose(l->file);
        hdf5_library_unlock();
    }
    for (int s = 0; s < l->slot_count; s++) {
        free(l->slots[s].samples);
        free(l->slots[s].labels);
        free(l->slots[s].indices);
    }
    free(l->slots);
    free(l->shard);
    free(l->shard_order);
    free(l->window);
    free(l->window_sample_order);
    free(l->window_order);
    free(l->window_begin);
    free(l->labels);
    free(l->channel_shift);
    free(l->channel_scale);
    hdf5_library_lock();
    dataset_info_free(&l->info);
    hdf5_library_unlock();
    free(l);
}

/* The sharded, prefetching data loader (see loader.h). This file owns checking
 * a data set file against what the model expects, dealing the file's blocks to
 * virtual shards and the virtual shards to ranks, the global sample order,
 * reading this rank's blocks (into memory, or streamed block by block on the
 * loader thread), and assembling float batches ahead of training on a
 * background thread. Everything is allocated in loader_open; the thread
 * allocates nothing. */
#include "loader.h"

#include <hdf5.h>
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

/* Purpose keys mixed into the seed, so that the dealing of blocks, the orders
 * and the flips never share a random stream with each other or with anything
 * else in ldm. */
#define LOADER_PURPOSE_DEAL 0x6c6f616465726465ULL  /* "loaderde" */
#define LOADER_PURPOSE_ORDER 0x6c6f616465726f72ULL /* "loaderor" */
#define LOADER_PURPOSE_BLOCK 0x6c6f616465726277ULL /* "loaderbw" */
#define LOADER_PURPOSE_FLIP 0x6c6f61646572666cULL  /* "loaderfl" */

/* Rows a virtual shard should at least hold (see choose_virtual_count). */
#define LOADER_MIN_SHARD_ROWS 8

typedef struct {
    float *samples;     /* (batch_size, C, H, W) */
    int32_t *labels;    /* (batch_size) */
    int64_t *indices;   /* (batch_size) the samples' rows in the file */
    int64_t after;      /* this rank's count of samples handed out once this batch has been */
} prefetch_slot;

typedef enum { BLOCKS_IN_MEMORY, BLOCKS_STREAMED } block_residence;

/* One virtual shard this rank serves, and what is cached of its current epoch. */
typedef struct {
    int virtual_index;      /* v */
    int64_t first_block;    /* its blocks are shard_blocks[first_block .. first_block + block_count) */
    int64_t block_count;
    int64_t rows;           /* samples in its blocks */
    int64_t order_epoch;    /* the shard epoch visit_blocks is drawn for; -1 none */
    int64_t within_block;   /* the block within_order is drawn for (in within_epoch); -1 none */
    int64_t within_epoch;
    int64_t loaded_block;   /* streamed: the block in the shard's buffer; -1 none */
} virtual_shard;

struct loader {
    loader_options options; /* options.path is not kept: info.path is the file */
    dataset_info info;
    int rank, world_size;
    size_t sample_bytes; /* one sample as stored */
    int32_t *labels;     /* (N), or NULL when the file has none */

    /* Conversion to the model's floats. */
    float image_values[256]; /* stored byte -> [-1, 1] */
    float *channel_shift;    /* (C) latents: mean of channel c */
    float *channel_scale;    /* (C) latents: sigma_data / std of channel c */

    /* The blocks: file rows [b * block_rows, min(N, (b + 1) * block_rows)). */
    int64_t block_rows, block_count;
    int virtual_count;        /* V in use */
    int shard_count;          /* virtual shards this rank serves: V / W */
    virtual_shard *shards;    /* (shard_count) shard s is virtual shard rank + s * W */
    int64_t *shard_blocks;    /* (this rank's blocks) each shard's blocks, in dealing order */
    int64_t *visit_blocks;    /* (this rank's blocks) each shard's blocks in its order_epoch's order */
    int64_t *visit_begin;     /* (this rank's blocks + shard_count) per shard: the shard position where each
                                 visited block begins, and the shard's rows at the end */
    int64_t *within_order;    /* (shard_count, block_rows) rows of within_block, in order */
    int64_t rank_rows;        /* samples this rank serves */

    block_residence residence;
    /* In memory: the rank's blocks, one after another in the order of shard_blocks. */
    unsigned char *rows_data;  /* (rank_rows, sample_bytes) */
    int64_t *block_offset;     /* (block_count) the block's first row in rows_data; -1 for other ranks' */
    /* Streamed: one block per shard. */
    hid_t file, samples_dataset, memory_type;
    unsigned char *block_buffers; /* (shard_count, block_rows, sample_bytes) */

    /* Where the loader thread is: this rank's count of samples assembled (only the thread touches it). */
    int64_t cursor;

    /* The prefetch ring and the requests to the thread, guarded by mutex. */
    pthread_mutex_t mutex;
    pthread_cond_t batch_ready, slot_free;
    prefetch_slot *slots; /* (prefetch_batches) */
    int slot_count, first_full, full_count;
    uint64_t generation; /* bumped by loader_set_state: batches of an older one are dropped */
    int64_t restart;     /* where the thread continues from after a new generation */
    int stopping;
    int failed;
    char failure[sizeof(((dataset_info *)0)->path) + 256]; /* the thread's error, for loader_next to report */
    pthread_t thread;

    int64_t consumed; /* main thread: this rank's count of samples handed out */
};

/* ---- randomness: pure functions of the seed and global quantities ---- */

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

static int flip_drawn(const loader *l, int64_t position) {
    rng_stream stream = rng_stream_for(l->options.seed ^ LOADER_PURPOSE_FLIP, (uint64_t)position, 0);
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

/* ---- blocks, virtual shards and ranks ---- */

static int64_t rows_of_block(const loader *l, int64_t block) {
    int64_t first = block * l->block_rows, end = first + l->block_rows;
    return (end > l->info.count ? l->info.count : end) - first;
}

/* Rows per block: the largest divisor of the chunk size (so that blocks tile
 * the chunks and a block read touches one chunk) that leaves every virtual
 * shard at least one block. A function of the file and V only. */
static int64_t choose_block_rows(int64_t chunk_rows, int64_t count, int virtual_count) {
    int64_t most = count / virtual_count;
    if (most < 1) most = 1;
    if (chunk_rows < 1) chunk_rows = 1;
    for (int64_t parts = 1; parts <= chunk_rows; parts++)
        if (chunk_rows % parts == 0 && chunk_rows / parts <= most) return chunk_rows / parts;
    return 1;
}

/* The virtual shards in use: the largest divisor of the requested V that leaves
 * every shard LOADER_MIN_SHARD_ROWS rows, since global batches draw from fixed
 * runs of consecutive shards and a shard of one or two rows would make every
 * epoch's batches the same groups of samples. A function of V and N alone,
 * except on a set too small for the world size (fewer than MIN x W samples):
 * then the smallest divisor of V that W divides, and the order depends on W. */
static int choose_virtual_count(int requested, int64_t count, int world_size) {
    int chosen = 1;
    for (int d = 1; d <= requested; d++)
        if (requested % d == 0 && (int64_t)d * LOADER_MIN_SHARD_ROWS <= count) chosen = d;
    if (chosen % world_size == 0) return chosen;
    for (int d = chosen; d <= requested; d++)
        if (requested % d == 0 && d % world_size == 0) return d;
    return requested; /* not reached: world_size divides requested */
}

/* "1, 2, 4 or 8": the world sizes that divide V. */
static void format_divisors(char *out, size_t size, int virtual_count) {
    size_t used = 0;
    int listed = 0, total = 0;
    for (int d = 1; d <= virtual_count; d++) total += virtual_count % d == 0;
    out[0] = 0;
    for (int d = 1; d <= virtual_count && used + 16 < size; d++) {
        if (virtual_count % d != 0) continue;
        listed++;
        const char *separator = listed == 1 ? "" : listed == total ? " or " : ", ";
        used += (size_t)snprintf(out + used, size - used, "%s%d", separator, d);
    }
}

/* Deals the blocks to the virtual shards (a permutation drawn from the seed,
 * dealt round-robin) and lays out the shards this rank serves. Returns the
 * largest count of samples any rank serves. */
static int64_t lay_out_shards(loader *l) {
    const int world = l->world_size, virtual_count = l->virtual_count;
    int64_t *dealt = xmalloc(sizeof(int64_t) * (size_t)l->block_count); /* (block_count) dealt[j] -> shard j mod V */
    draw_permutation(dealt, l->block_count,
                     rng_stream_for(l->options.seed ^ LOADER_PURPOSE_DEAL, (uint64_t)l->block_count,
                                    (uint64_t)virtual_count));
    int64_t *rank_rows = xcalloc((size_t)world, sizeof(int64_t)); /* (W) */
    l->shard_count = virtual_count / world;
    l->shards = xcalloc((size_t)l->shard_count, sizeof(virtual_shard));
    int64_t mine = 0;
    for (int64_t j = 0; j < l->block_count; j++) {
        int v = (int)(j % virtual_count);
        rank_rows[v % world] += rows_of_block(l, dealt[j]);
        if (v % world == l->rank) {
            l->shards[(v - l->rank) / world].block_count++;
            mine++;
        }
    }
    int64_t first = 0;
    for (int s = 0; s < l->shard_count; s++) {
        virtual_shard *shard = &l->shards[s];
        shard->virtual_index = l->rank + s * world;
        shard->first_block = first;
        first += shard->block_count;
        shard->block_count = 0; /* counted again while filling */
        shard->order_epoch = shard->within_block = shard->within_epoch = shard->loaded_block = -1;
    }
    l->shard_blocks = xmalloc(sizeof(int64_t) * (size_t)(mine > 0 ? mine : 1));
    l->visit_blocks = xmalloc(sizeof(int64_t) * (size_t)(mine > 0 ? mine : 1));
    l->visit_begin = xmalloc(sizeof(int64_t) * (size_t)(mine + l->shard_count));
    for (int64_t j = 0; j < l->block_count; j++) {
        int v = (int)(j % virtual_count);
        if (v % world != l->rank) continue;
        virtual_shard *shard = &l->shards[(v - l->rank) / world];
        l->shard_blocks[shard->first_block + shard->block_count++] = dealt[j];
        shard->rows += rows_of_block(l, dealt[j]);
    }
    l->rank_rows = rank_rows[l->rank];
    int64_t largest = 0;
    for (int r = 0; r < world; r++) largest = rank_rows[r] > largest ? rank_rows[r] : largest;
    free(rank_rows);
    free(dealt);
    return largest;
}

/* ---- the global order ---- */

/* The shard's blocks in the order of its epoch `epoch`. */
static void draw_shard_order(loader *l, virtual_shard *shard, int64_t epoch) {
    int64_t *visit = l->visit_blocks + shard->first_block;
    int64_t *begin = l->visit_begin + shard->first_block + (shard - l->shards);
    draw_permutation(visit, shard->block_count,
                     rng_stream_for(rng_hash(l->options.seed ^ LOADER_PURPOSE_ORDER, (uint64_t)shard->virtual_index),
                                    (uint64_t)epoch, 0));
    begin[0] = 0;
    for (int64_t k = 0; k < shard->block_count; k++) {
        visit[k] = l->shard_blocks[shard->first_block + visit[k]];
        begin[k + 1] = begin[k] + rows_of_block(l, visit[k]);
    }
    shard->order_epoch = epoch;
}

/* Streamed: makes `block` the one in shard s's buffer. Returns 0, or -1 with l->failure set. */
static int load_block(loader *l, int s, int64_t block) {
    virtual_shard *shard = &l->shards[s];
    if (shard->loaded_block == block) return 0;
    int64_t first = block * l->block_rows, rows = rows_of_block(l, block);
    unsigned char *buffer = l->block_buffers + (size_t)s * (size_t)l->block_rows * l->sample_bytes;
    hdf5_library_lock();
    int read = read_rows(l->samples_dataset, l->memory_type, H5P_DEFAULT, first, rows, buffer);
    hdf5_library_unlock();
    if (read < 0) {
        snprintf(l->failure, sizeof(l->failure), "%s: cannot read %s rows %lld to %lld (damaged file?)",
                 l->info.path, dataset_samples_name(&l->info), (long long)first, (long long)(first + rows));
        shard->loaded_block = -1;
        return -1;
    }
    shard->loaded_block = block;
    return 0;
}

/* The stored sample at global position `position` (one of this rank's) and its
 * file row; NULL on a read failure (l->failure says why). */
static const unsigned char *sample_at(loader *l, int64_t position, int64_t *row) {
    const int v = (int)(position % l->virtual_count);
    const int s = (v - l->rank) / l->world_size;
    virtual_shard *shard = &l->shards[s];
    const int64_t draw = position / l->virtual_count; /* the shard's draw, over its epochs */
    const int64_t epoch = draw / shard->rows, at = draw % shard->rows;
    if (shard->order_epoch != epoch) draw_shard_order(l, shard, epoch);
    const int64_t *visit = l->visit_blocks + shard->first_block;
    const int64_t *begin = l->visit_begin + shard->first_block + s;
    int64_t low = 0, high = shard->block_count - 1; /* the last k with begin[k] <= at */
    while (low < high) {
        int64_t mid = (low + high + 1) / 2;
        if (begin[mid] <= at) low = mid;
        else high = mid - 1;
    }
    const int64_t block = visit[low];
    int64_t *within = l->within_order + (size_t)s * (size_t)l->block_rows;
    if (shard->within_block != block || shard->within_epoch != epoch) {
        draw_permutation(within, rows_of_block(l, block),
                         rng_stream_for(rng_hash(l->options.seed ^ LOADER_PURPOSE_BLOCK, (uint64_t)block),
                                        (uint64_t)epoch, 0));
        shard->within_block = block;
        shard->within_epoch = epoch;
    }
    const int64_t in_block = within[at - begin[low]];
    *row = block * l->block_rows + in_block;
    if (l->residence == BLOCKS_IN_MEMORY) return l->rows_data + (size_t)(l->block_offset[block] + in_block) * l->sample_bytes;
    if (load_block(l, s, block) < 0) return NULL;
    return l->block_buffers + ((size_t)s * (size_t)l->block_rows + (size_t)in_block) * l->sample_bytes;
}

/* ---- reading the rank's blocks ---- */

/* The file opened with the serial driver for independent reads: the loader
 * thread must make no MPI calls, and the blocks of a rank lie all over the file. */
static void open_samples(loader *l) {
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

static void close_samples(loader *l) {
    hdf5_library_lock();
    if (l->memory_type >= 0) H5Tclose(l->memory_type);
    if (l->samples_dataset >= 0) H5Dclose(l->samples_dataset);
    if (l->file >= 0) H5Fclose(l->file);
    hdf5_library_unlock();
    l->memory_type = l->samples_dataset = l->file = -1;
}

/* In memory: every block of the rank's shards, one read each. */
static void read_blocks_into_memory(loader *l) {
    l->rows_data = xmalloc((size_t)(l->rank_rows > 0 ? l->rank_rows : 1) * l->sample_bytes);
    l->block_offset = xmalloc(sizeof(int64_t) * (size_t)l->block_count);
    for (int64_t b = 0; b < l->block_count; b++) l->block_offset[b] = -1;
    open_samples(l);
    int64_t offset = 0;
    for (int s = 0; s < l->shard_count; s++)
        for (int64_t k = 0; k < l->shards[s].block_count; k++) {
            int64_t block = l->shard_blocks[l->shards[s].first_block + k];
            int64_t first = block * l->block_rows, rows = rows_of_block(l, block);
            hdf5_library_lock();
            int read = read_rows(l->samples_dataset, l->memory_type, H5P_DEFAULT, first, rows,
                                 l->rows_data + (size_t)offset * l->sample_bytes);
            hdf5_library_unlock();
            if (read < 0)
                fatal_input("%s: cannot read %s rows %lld to %lld (damaged file?)", l->info.path,
                            dataset_samples_name(&l->info), (long long)first, (long long)(first + rows));
            l->block_offset[block] = offset;
            offset += rows;
        }
    close_samples(l);
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

/* Fills slot with this rank's next batch_size samples, moving the cursor.
 * Returns 0, or -1 with l->failure set. */
static int assemble_batch(loader *l, prefetch_slot *slot) {
    const size_t sample_elements = (size_t)l->info.sample_elements;
    for (int b = 0; b < l->options.batch_size; b++) {
        const int64_t position = l->cursor * l->world_size + l->rank;
        int64_t row;
        const unsigned char *stored = sample_at(l, position, &row);
        if (!stored) return -1;
        int flip = l->options.flip && flip_drawn(l, position);
        convert_sample(l, stored, flip, slot->samples + b * sample_elements);
        slot->labels[b] = l->labels ? l->labels[row] : -1;
        slot->indices[b] = row;
        l->cursor++;
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

/* ---- opening: what the model expects, then the blocks ---- */

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
 * Every rank sees the same file and options, so every rank fails here alike. */
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

/* The labels of the whole set (any rank may serve any row); all N are checked
 * against the model's classes so that every rank refuses a bad file alike. */
static void read_labels(loader *l) {
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
    l->labels = all;
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
    l->world_size = comm_world_size();
    l->file = l->samples_dataset = l->memory_type = -1;

    hdf5_library_lock();
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    dataset_info_open(options->path, &l->info);
    hdf5_library_unlock();
    check_expectations(l, l->world_size);
    int requested = options->virtual_shards > 0 ? options->virtual_shards : LOADER_DEFAULT_VIRTUAL_SHARDS;
    if (requested % l->world_size != 0) {
        char divisors[256];
        format_divisors(divisors, sizeof(divisors), requested);
        fatal_input("%s: data.virtual_shards: %d ranks do not divide the %d virtual shards; run on %s ranks, "
                    "or set data.virtual_shards to a multiple of %d (the same for every run that resumes this one)",
                    l->info.path, l->world_size, requested, divisors, l->world_size);
    }
    l->virtual_count = choose_virtual_count(requested, l->info.count, l->world_size);
    read_labels(l);
    set_up_conversion(l);

    l->sample_bytes = (size_t)l->info.sample_elements * element_bytes(l->info.element);
    l->block_rows = choose_block_rows(l->info.chunk_rows, l->info.count, l->virtual_count);
    l->block_count = (l->info.count + l->block_rows - 1) / l->block_rows;
    int64_t largest_rank_rows = lay_out_shards(l);
    l->within_order = xmalloc(sizeof(int64_t) * (size_t)l->shard_count * (size_t)l->block_rows);

    /* Every rank decides alike (from the rank with the most samples). */
    int64_t budget = options->memory_budget_bytes;
    if (budget > 0 && largest_rank_rows <= budget / (int64_t)l->sample_bytes) {
        l->residence = BLOCKS_IN_MEMORY;
        read_blocks_into_memory(l);
    } else {
        l->residence = BLOCKS_STREAMED;
        l->block_buffers = xmalloc((size_t)l->shard_count * (size_t)l->block_rows * l->sample_bytes);
        open_samples(l);
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

int loader_virtual_shards(const loader *l) { return l->virtual_count; }

int64_t loader_rank_samples(const loader *l) { return l->rank_rows; }

int loader_streams(const loader *l) { return l->residence == BLOCKS_STREAMED; }

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

loader_state loader_get_state(const loader *l) {
    int64_t position = l->consumed * l->world_size;
    return (loader_state){.epoch = position / l->info.count, .position = position};
}

void loader_set_state(loader *l, loader_state state) {
    if (state.position < 0 || state.position % l->world_size != 0)
        fatal_input("%s: data position %lld: expected a position >= 0 that is a multiple of the world size (%d ranks)",
                    l->info.path, (long long)state.position, l->world_size);
    pthread_mutex_lock(&l->mutex);
    l->generation++;
    l->restart = state.position / l->world_size;
    l->full_count = 0;
    pthread_cond_signal(&l->slot_free);
    pthread_mutex_unlock(&l->mutex);
    l->consumed = state.position / l->world_size;
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
    if (l->residence == BLOCKS_STREAMED) close_samples(l);
    for (int s = 0; s < l->slot_count; s++) {
        free(l->slots[s].samples);
        free(l->slots[s].labels);
        free(l->slots[s].indices);
    }
    free(l->slots);
    free(l->shards);
    free(l->shard_blocks);
    free(l->visit_blocks);
    free(l->visit_begin);
    free(l->within_order);
    free(l->rows_data);
    free(l->block_offset);
    free(l->block_buffers);
    free(l->labels);
    free(l->channel_shift);
    free(l->channel_scale);
    hdf5_library_lock();
    dataset_info_free(&l->info);
    hdf5_library_unlock();
    free(l);
}

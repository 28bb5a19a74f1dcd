/* The sharded, prefetching data loader. Rank r of W owns the contiguous shard
 * dataset_shard_range(N, r, W) of the file's samples. The shard is read into
 * memory with parallel HDF5 when it fits the memory budget, otherwise streamed
 * in chunk-aligned windows. The order of the samples in each epoch is a pure
 * function of (seed, epoch, rank) (and, when streaming, the window size), and
 * the loader's whole state is (epoch, position): restoring it continues exactly.
 * Batches are assembled on a background thread, prefetch_batches ahead. */
#ifndef LDM_LOADER_H
#define LDM_LOADER_H

#include <stdint.h>

#include "dataset_file.h"

typedef struct {
    int64_t epoch;    /* epochs completed on this rank's shard */
    int64_t position; /* samples of the current epoch already handed out */
} loader_state;

typedef struct {
    const char *path;
    int batch_size;          /* samples per loader_next (the rank's micro-batch) */
    uint64_t seed;
    int flip;                /* random horizontal flips */
    /* The shard is held in memory when the largest shard fits (every rank decides
     * alike); otherwise streamed in windows of whole chunks that fit (at least
     * one chunk). <= 0: always stream, one chunk at a time. */
    int64_t memory_budget_bytes;
    int prefetch_batches;    /* >= 1 */
    /* What the model expects (0 = accept anything): a file of another sample
     * shape is refused with fatal_input naming both shapes. */
    int expect_channels, expect_height, expect_width;
    /* Labels must lie in [0, expect_num_classes) when > 0. */
    int expect_num_classes;
    double sigma_data;       /* latents are normalised per channel to this std */
} loader_options;

typedef struct loader loader;

/* Collective over every rank: validates the file against the expectations
 * (fatal_input on every rank for any problem, including N smaller than the
 * world size, before any collective call), reads the shard with a collective
 * parallel read or opens it for streaming, starts the prefetch thread at state
 * (0, 0). Works without MPI initialised too (one rank, serial reads). */
loader *loader_open(const loader_options *options);

/* The file's description (shape, classes, ...), valid until loader_close. */
const dataset_info *loader_info(const loader *l);
/* This rank's shard: first sample index and count. */
void loader_shard(const loader *l, int64_t *start, int64_t *count);
/* 1 when the shard is streamed in windows (it did not fit the memory budget),
 * 0 when it is held in memory. */
int loader_streams(const loader *l);

/* loader_next, loader_get_state and loader_set_state are called from one
 * thread (the training loop's); they make no MPI calls.
 *
 * Blocks until the next batch is ready and copies it out:
 * samples (batch_size, C, H, W) float32 (images x / 127.5 - 1, in [-1, 1];
 * latents (x - mean_c) / std_c * sigma_data); labels (batch_size) int32, or -1
 * each when the file has none (the trainer's null class). With flip, a sample
 * is mirrored left-right by a draw that is a pure function of (seed, epoch,
 * rank, position in the epoch). indices (batch_size) int64, or NULL: each
 * sample's row in the file (0 .. N-1), a key for per-sample randomness.
 * An epoch that ends mid-batch continues into the next epoch's order. */
void loader_next(loader *l, float *samples, int32_t *labels, int64_t *indices);

/* The state after the last batch loader_next returned (the state the next batch
 * starts from). */
loader_state loader_get_state(const loader *l);
/* Drops whatever was prefetched and continues from state; a position equal to
 * the shard size means the start of the next epoch. A state that does not fit
 * this rank's shard is a fatal_input. */
void loader_set_state(loader *l, loader_state state);

/* Not collective, no thread: reads the file's first min(N, max_count) samples
 * (in file order, unflipped) converted as loader_next converts them, with their
 * labels (-1 without), after the same checks as loader_open (fatal_input).
 * samples (max_count, C, H, W), labels (max_count). Returns the count read.
 * For validation sets. */
int loader_read_first(const loader_options *options, int max_count, float *samples, int32_t *labels);

/* Stops the thread and frees everything (not collective; NULL is ignored). */
void loader_close(loader *l);

#endif

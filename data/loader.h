/* The sharded, prefetching data loader, with one global sample order for every
 * world size. The file's rows are cut into blocks (at most one HDF5 chunk each);
 * a permutation of the blocks drawn from the seed deals them round-robin to V
 * virtual shards (V = data.virtual_shards, fewer on a small set: at least 8
 * rows a shard, see loader.c). Rank r of W serves the
 * virtual shards v with v mod W = r, so W must divide V. Global position p of
 * the run's sample sequence is the (p div V)-th draw of virtual shard p mod V;
 * each virtual shard walks through its own epochs: its blocks in an order drawn
 * from (seed, shard, epoch), and the rows of each block in an order drawn from
 * (seed, block, epoch). Rank r hands out positions r, r + W, r + 2W, ..., so
 * the first k x B positions (k global batches of B) are the same samples with
 * the same flips whatever W is, and a run saved on W ranks continues exactly
 * on any W' dividing V. A rank's blocks are read into memory when they fit the
 * memory budget, otherwise streamed block by block (one block per shard held);
 * the order is the same either way. Batches are assembled on a background
 * thread, prefetch_batches ahead. */
#ifndef LDM_LOADER_H
#define LDM_LOADER_H

#include <stdint.h>

#include "dataset_file.h"

/* Where the global sample sequence stands. Between training steps every rank
 * has handed out the same number of samples, so the state is the same on every
 * rank and means the same on any world size. */
typedef struct {
    int64_t epoch;    /* position / N: passes over the data set, for messages */
    int64_t position; /* samples of the global sequence handed out, over all ranks (W x this rank's count) */
} loader_state;

#define LOADER_DEFAULT_VIRTUAL_SHARDS 64

typedef struct {
    const char *path;
    int batch_size;          /* samples per loader_next (the rank's micro-batch) */
    uint64_t seed;
    int flip;                /* random horizontal flips */
    /* A rank's blocks are held in memory when the largest rank's fit (every rank
     * decides alike); otherwise streamed, one block per virtual shard held.
     * <= 0: always stream. */
    int64_t memory_budget_bytes;
    int prefetch_batches;    /* >= 1 */
    int virtual_shards;      /* V requested; <= 0: LOADER_DEFAULT_VIRTUAL_SHARDS */
    /* What the model expects (0 = accept anything): a file of another sample
     * shape is refused with fatal_input naming both shapes. */
    int expect_channels, expect_height, expect_width;
    /* Labels must lie in [0, expect_num_classes) when > 0. */
    int expect_num_classes;
    double sigma_data;       /* latents are normalised per channel to this std */
} loader_options;

typedef struct loader loader;

/* Validates the file against the expectations (fatal_input on every rank alike
 * for any problem, including a world size that does not divide the virtual
 * shards), reads this rank's blocks or opens the file for streaming (serial
 * reads: no collective call), starts the prefetch thread at position 0. Works
 * without MPI initialised too (one rank). */
loader *loader_open(const loader_options *options);

/* The file's description (shape, classes, ...), valid until loader_close. */
const dataset_info *loader_info(const loader *l);
/* The virtual shards in use (V, or a divisor of it on a small set), and the samples this rank serves
 * (the rows of its virtual shards). */
int loader_virtual_shards(const loader *l);
int64_t loader_rank_samples(const loader *l);
/* 1 when the rank's blocks are streamed (they did not fit the memory budget),
 * 0 when they are held in memory. */
int loader_streams(const loader *l);

/* loader_next, loader_get_state and loader_set_state are called from one
 * thread (the training loop's); they make no MPI calls.
 *
 * Blocks until the next batch is ready and copies it out:
 * samples (batch_size, C, H, W) float32 (images x / 127.5 - 1, in [-1, 1];
 * latents (x - mean_c) / std_c * sigma_data); labels (batch_size) int32, or -1
 * each when the file has none (the trainer's null class). With flip, a sample
 * is mirrored left-right by a draw that is a pure function of (seed, global
 * position). indices (batch_size) int64, or NULL: each sample's row in the file
 * (0 .. N-1), a key for per-sample randomness. */
void loader_next(loader *l, float *samples, int32_t *labels, int64_t *indices);

/* The state after the last batch loader_next returned (the state the next batch
 * starts from). */
loader_state loader_get_state(const loader *l);
/* Drops whatever was prefetched and continues from state.position (epoch is
 * not read). A negative position, or one that is not a multiple of the world
 * size, is a fatal_input. */
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

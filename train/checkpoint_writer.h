/* Checkpoints written beside training. Rank 0 copies what a checkpoint holds
 * (params, EMA, AdamW moments, the extra state, state.json: the vectors are
 * the model's size each) into buffers of its own, and a thread publishes the
 * copy (checkpoint_publish) while the next steps run. Training waits for the
 * copy, and for the previous checkpoint's write only if it is still going when
 * the next is due. The line "checkpoint: DIR (...)" is printed once a write
 * has finished, at the next checkpoint or at checkpoint_writer_finish.
 *
 * A failure to write (disk full) ends the job as before (fatal_internal, from
 * the writing thread); the published checkpoints stay whole either way. */
#ifndef LDM_CHECKPOINT_WRITER_H
#define LDM_CHECKPOINT_WRITER_H

#include <stddef.h>
#include <stdint.h>

#include "checkpoint.h"

typedef struct checkpoint_writer checkpoint_writer;

/* Buffers for checkpoints of `count` trainable values and `fixed_count` fixed
 * ones; with_extra: the checkpoints have an extra state. Laid out once. */
checkpoint_writer *checkpoint_writer_create(size_t count, size_t fixed_count, int with_extra);
/* Waits for the write in progress (printing its line), copies contents
 * (pointers and state_json need not outlive the call) and starts publishing
 * the copy as step `step` of run_dir (keep_last, keep_every as checkpoint_publish). */
void checkpoint_writer_start(checkpoint_writer *writer, const char *run_dir, int64_t step,
                             const checkpoint_contents *contents, int keep_last, int64_t keep_every);
/* Waits for the write in progress, if any, and prints its line. */
void checkpoint_writer_finish(checkpoint_writer *writer);
/* Finishes, then frees. NULL does nothing. */
void checkpoint_writer_destroy(checkpoint_writer *writer);

#endif

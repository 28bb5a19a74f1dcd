/* The training state that a checkpoint's state.json holds beside the tensors:
 * where training stands (step, images seen, skipped steps), every rank's loader
 * state, the loss scale, the world size, the data set it trained on and the
 * resolved config. Written by rank 0, read on resume and by `ldm inspect`.
 * Everything else a step depends on is a function of these (randomness is keyed
 * by seed, step and sample), which is what makes resume exact. */
#ifndef LDM_TRAINING_STATE_H
#define LDM_TRAINING_STATE_H

#include <stdint.h>

#include "config.h"
#include "dataset_file.h"
#include "loader.h"
#include "trainable.h"

#define TRAINING_STATE_FORMAT "ldm-train-state"
/* 2: the loader states are global positions (the same on every rank); 1 (read
 * only): each rank's (epoch, position) in its own contiguous shard. */
#define TRAINING_STATE_VERSION 2

typedef struct {
    int64_t step;          /* steps completed */
    int64_t images_seen;
    int64_t skipped_total;
    int skipped_in_a_row;
    double loss_scale;     /* 1 in fp32 and bf16 */
    int64_t loss_scale_good_steps;
    int world_size;
    int version;           /* of state.json: TRAINING_STATE_VERSION, or 1 */
    loader_state *loader;  /* (world_size) one per rank, in rank order */
} training_state;

/* state.json's text (caller frees). */
char *training_state_to_json(const training_state *state, const char *kind, const ldm_config *config,
                             const char *data_path, const dataset_info *data);

/* json (state.json's text, freed here) with one more member NAME whose value is
 * the JSON object RECORD_JSON (a trainable's extra-state record); returns the new text. */
char *training_state_with_record(char *json, const char *name, const char *record_json);

/* Parses state.json's text (source names it in errors); fatal_input on any
 * missing or malformed field. The loader array is allocated (training_state_free). */
void training_state_parse(const char *json, const char *source, training_state *state);
void training_state_free(training_state *state);

/* Refuses (fatal_input naming the checkpoint) a resume of another kind of
 * model, or whose model shape or data set differs from the checkpoint's: every
 * key of the model's shape section (less its training settings), and the data
 * set's sample count, kind, sample shape and classes. */
void training_state_check_compatible(const char *json, const char *source, const trainable *model,
                                     const ldm_config *config, const dataset_info *data);

/* The loader state to resume from, on any world size: the saved global position
 * (rounded down to a multiple of world_size). From a version 1 checkpoint,
 * whose loader had another order, the count of samples all ranks had read. */
loader_state training_state_loader_for_rank(const training_state *state, int64_t data_count, int rank,
                                            int world_size);

#endif

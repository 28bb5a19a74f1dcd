/* The checkpoints of a training run: when one is due (every
 * train.ckpt_every steps, at the last step, and at a stop), what it holds
 * (weights, EMA, AdamW moments, the model's extra state, and state.json with
 * every rank's loader state; written by rank 0 beside training,
 * checkpoint_writer.h), and resuming from one. */
#ifndef LDM_TRAINING_CHECKPOINTS_H
#define LDM_TRAINING_CHECKPOINTS_H

#include "trainer.h"

/* Collective, after each step (t->progress.step steps done): saves a
 * checkpoint when one is due; stopped: the run stops after this step. */
void training_checkpoint_after_step(trainer *t, int stopped);

/* Collective, after the last step: saves the final state unless the last
 * step's checkpoint already holds it (or the run stopped). */
void training_checkpoint_at_end(trainer *t, int stopped);

/* Collective: where a resume starts (t->job->resume: "auto" or a path). Rank 0
 * finds and loads the checkpoint, checks it fits this run, and sends weights,
 * EMA, moments, extra state and training state to every rank. Returns 0 when
 * there is nothing to resume from (--resume auto on a run without a
 * checkpoint), else 1. */
int training_resume(trainer *t);

#endif

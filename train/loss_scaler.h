/* The loss scale of a training step and the decision to skip it.
 *
 * fp16 trains with dynamic loss scaling: each micro-batch's loss is multiplied
 * by the scale, so that small gradients stay above half's subnormals, and the
 * averaged gradient is divided by it again before clipping and the update. A
 * non-finite gradient with a finite loss is an overflow of the scaled
 * gradient: the step is skipped and the scale halved; growth_interval good
 * steps in a row double it. In fp32 and bf16 the scale stays 1.
 *
 * In every precision a step whose loss or gradient is not finite is skipped,
 * by every rank alike, and max_nonfinite_steps skips in a row end the run as
 * diverged (an overflow that a lower scale cures does not count, unless the
 * scale is below 1 already). The scale, its good steps and the skip counts
 * are training state (training_state.h), saved in checkpoints. */
#ifndef LDM_LOSS_SCALER_H
#define LDM_LOSS_SCALER_H

#include <stdint.h>

#include "config.h"
#include "parameter_store.h"
#include "training_state.h"

typedef struct {
    int dynamic;              /* fp16: the scale moves; else it stays 1 */
    double initial_scale;     /* fp16's scale at step 0 (train.loss_scale_initial) */
    int64_t growth_interval;  /* train.loss_scale_growth_interval */
    int max_nonfinite_steps;  /* train.max_nonfinite_steps */
} loss_scaler;

/* The scaler's verdict on one step's averaged gradient. */
typedef struct {
    int skip;          /* skipped on every rank: no update */
    int overflow;      /* fp16: skipped as an overflow of the scaled gradient */
    double scale;      /* the scale this step's loss was multiplied by */
    double grad_norm;  /* the unscaled gradient's L2 norm before clipping; NaN when skipped */
} loss_scaler_verdict;

loss_scaler loss_scaler_from_config(const train_config *train);

/* The scale a run starts from. */
double loss_scaler_first_scale(const loss_scaler *scaler);

/* Resume: state was restored from a checkpoint whose state.json is
 * saved_state_json. A checkpoint of fp32 or bf16 (whose scale stays 1) resumed
 * in fp16: the scale starts afresh. Between fp16 runs it is kept exactly. */
void loss_scaler_resume(const loss_scaler *scaler, training_state *state, const char *saved_state_json);

/* Each micro-batch's loss weight: its mean loss enters with weight 1 /
 * accumulation (times the scale in fp16), so that the gradient is that of the
 * mean over the rank's samples. */
float loss_scaler_weight(const loss_scaler *scaler, const training_state *state, int accumulation);

/* Collective, after the store has averaged the gradient: whether the step is
 * skipped (agreed by every rank), and in fp16 the scale taken out of the
 * gradient again when it is not. */
loss_scaler_verdict loss_scaler_check(const loss_scaler *scaler, const training_state *state,
                                      parameter_store *store, double loss);

/* The verdict on step (from 0) into state: skip counts, and the scale halved
 * after an overflow or grown after growth_interval good steps. fatal_internal
 * when the run has diverged. */
void loss_scaler_record(const loss_scaler *scaler, training_state *state, const loss_scaler_verdict *verdict,
                        int64_t step);

#endif

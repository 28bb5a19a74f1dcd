/* Validation during a training run, on rank 0: the held-out samples (the
 * first data.validation_samples of the job's validation data), read before
 * anything is written so that a bad file is refused first; the model's
 * validation capability prepared before the first step; and every
 * train.sample_every steps and at the last, the model validated from the EMA
 * weights. A model without the capability, a run with train.sample_every 0,
 * and one without held-out data (unless the model needs none) do not validate. */
#ifndef LDM_TRAINING_VALIDATION_H
#define LDM_TRAINING_VALIDATION_H

#include <stdint.h>

#include "dataset_file.h"
#include "parameter_store.h"
#include "trainable.h"
#include "training_loop.h"

/* What validation returned on a step. */
typedef struct {
    char json[1024]; /* metrics.jsonl members, or "" */
    char line[1024]; /* the progress output's line, or "" */
    char picture[64]; /* the picture it wrote, relative to the run directory, or "" */
} validation_report;

typedef struct {
    trainable_validator *validator; /* NULL: this rank does not validate */
    validation_context context;
    float *samples;                 /* (most, P) held-out samples */
    int32_t *labels;                /* (most) */
    int64_t every, total_steps;
    validation_report report;
} training_validation;

/* data: the training data set; rank: this rank. */
void training_validation_open(training_validation *v, const training_job *job, trainable *model,
                              const dataset_info *data, int rank);

/* After a step (done: steps completed): when validation is due, brings the
 * store's host vectors up to date, validates with the EMA weights ema and
 * returns the report; else NULL. */
const validation_report *training_validation_after_step(training_validation *v, parameter_store *store,
                                                        const float *ema, int64_t done);

void training_validation_close(training_validation *v);

#endif

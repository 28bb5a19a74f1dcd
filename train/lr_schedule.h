/* The learning rate at each step: a linear warmup from 0 over warmup_steps, then
 * either constant or a cosine decay that reaches 0 at the end of training.
 * Steps are counted from 0 (the step about to be taken), so the first step has
 * lr / warmup_steps and the last step a small positive rate. */
#ifndef LDM_LR_SCHEDULE_H
#define LDM_LR_SCHEDULE_H

#include <stdint.h>

#include "config.h"

typedef enum { LR_CONSTANT, LR_COSINE } lr_decay;

typedef struct {
    double peak;          /* train.lr */
    int64_t warmup_steps; /* train.warmup_steps; 0: none */
    int64_t total_steps;  /* train.steps: the cosine reaches 0 there */
    lr_decay decay;       /* train.lr_schedule */
} lr_schedule;

lr_schedule lr_schedule_from_config(const train_config *train);

/* step < warmup_steps: peak (step + 1) / warmup_steps. After: peak (constant),
 * or peak (1 + cos(pi progress)) / 2 with progress = (step - warmup_steps) /
 * (total_steps - warmup_steps) clamped to [0, 1] (cosine; 0 from total_steps on,
 * and right after the warmup when the warmup takes every step). */
double lr_at_step(const lr_schedule *schedule, int64_t step);

#endif

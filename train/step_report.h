/* What rank 0 reports of a training run: the opening line (data, world and
 * batch split, model), and after each step its line of metrics.jsonl and its
 * lines on stdout (metrics_log.h: the JSON line and every log_every steps the
 * progress line; then validation's line, and a line for a skipped step).
 * The JSON members beyond metrics_log's own are composed here, in one place:
 * the model's statistics, fp16's loss scale, validation's members. */
#ifndef LDM_STEP_REPORT_H
#define LDM_STEP_REPORT_H

#include <stdint.h>

#include "dataset_file.h"
#include "loss_scaler.h"
#include "metrics_log.h"
#include "trainable.h"
#include "training_loop.h"
#include "training_validation.h"

typedef struct {
    metrics_log log;
    const trainable *model;
    int records_loss_scale;  /* fp16: each line holds the scale its step used */
    char extra_json[4096];   /* the JSON members of the step being reported */
} step_report;

/* Opens RUN/metrics.jsonl (resumed_step: as metrics_log_open) and prints the
 * opening line. */
void step_report_open(step_report *report, const training_job *job, const dataset_info *data, const trainable *model,
                      int world, int micro_batch, int accumulation, int64_t resumed_step);

/* One step: m without extra_json (filled here), the model's statistics
 * summed over micro-batches and ranks, the scaler's verdict and the state after
 * it (the scale an overflow leaves, the skip count), and validation's report
 * or NULL. */
void step_report_step(step_report *report, metrics_step m, const double *statistics,
                      const loss_scaler_verdict *verdict, const training_state *state,
                      const validation_report *validation);

void step_report_close(step_report *report);

#endif

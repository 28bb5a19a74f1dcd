/* What a training run tells its user: rank 0's progress line every log_every
 * steps (step/total, loss, gradient norm, lr, images/s, ETA) on stdout, and one
 * JSON line per step in RUN/metrics.jsonl with the same numbers and the
 * model's own statistics (the DiT's loss binned by noise level, ...), each line
 * also as TensorBoard events in RUN/tb/ (tensorboard_log.h). Other ranks call
 * nothing here. */
#ifndef LDM_METRICS_LOG_H
#define LDM_METRICS_LOG_H

#include <stdint.h>
#include <stdio.h>

#include "tensorboard_log.h"

typedef struct {
    int64_t step;          /* 1-based: steps completed after this one */
    int64_t total_steps;
    int64_t images_seen;
    double loss;           /* the global batch's mean weighted loss */
    double grad_norm;      /* before clipping */
    double lr;
    double step_seconds;   /* wall time of this step */
    int skipped;           /* this step was skipped (non-finite) */
    int64_t skipped_total;
    const char *extra_json; /* more members for the JSON line ("\"name\": value, ..."), or NULL */
    const char *picture;    /* the step's picture, a PNG relative to the run directory, or NULL */
} metrics_step;

typedef struct {
    FILE *jsonl;
    char *path;
    int64_t log_every;
    int64_t global_batch;
    /* for images/s and ETA: time and step at the last progress line */
    double window_seconds;
    int64_t window_steps;
    double total_seconds;
    int64_t total_logged_steps;
    tensorboard_log tensorboard;
    char line[8192];        /* the JSON line being written (step_report's members fit 4096) */
    size_t line_used;
} metrics_log;

/* Opens RUN/metrics.jsonl. resumed_step 0: a new run, the file starts empty.
 * resumed_step > 0: a resumed run; the lines of steps up to resumed_step are
 * kept and later ones (written after that checkpoint by the run that stopped)
 * dropped, so the file holds each step once. */
void metrics_log_open(metrics_log *log, const char *run_dir, int64_t log_every, int64_t global_batch,
                      int64_t resumed_step);
/* Writes the JSON line (flushed) and, every log_every steps and at the last, the
 * progress line. */
void metrics_log_step(metrics_log *log, const metrics_step *m);
/* Flushes, fsyncs and closes. */
void metrics_log_close(metrics_log *log);

#endif

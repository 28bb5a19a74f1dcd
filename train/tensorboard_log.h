/* RUN/tb/: the TensorBoard view of metrics.jsonl, written by rank 0 beside it.
 * Every metrics.jsonl line becomes one Event at its step, with a scalar per
 * member: a number under the member's name, a boolean as 0 or 1, an array of
 * numbers as NAME/0, NAME/1, ... (the DiT's loss_by_sigma/i is the loss of the
 * σ bin starting at sigma_bins[i]); null (a non-finite value) and strings are
 * left out. The values are the line's own numbers, read back from its text and
 * rounded to float. A step's picture (the sample grid) becomes a second Event
 * with the PNG's bytes as the image "samples". Each step's events are flushed
 * as they are written.
 *
 * One events file per run (events.out.tfevents.<unix time>.<host>): a new run
 * removes the events files the folder held; a resumed run keeps in them only
 * the records of steps up to the checkpoint's (and a crash's torn last
 * record is dropped), and appends to the newest, so each step is there once,
 * like metrics.jsonl. */
#ifndef LDM_TENSORBOARD_LOG_H
#define LDM_TENSORBOARD_LOG_H

#include <stdint.h>
#include <stdio.h>

typedef struct {
    FILE *events;
    char *path;
    char *run_dir;
    uint8_t *summary; /* (summary_size) the scalars' encoded summary */
    size_t summary_size;
} tensorboard_log;

/* Opens (creates) RUN/tb/ and its events file; resumed_step as metrics_log_open. */
void tensorboard_log_open(tensorboard_log *log, const char *run_dir, int64_t resumed_step);
/* One metrics.jsonl line (a flat JSON object whose "step" is the step) and the
 * step's picture, a PNG file relative to the run directory, or NULL. */
void tensorboard_log_step(tensorboard_log *log, const char *json_line, const char *picture);
/* Flushes, fsyncs and closes. */
void tensorboard_log_close(tensorboard_log *log);

#endif

/* A progress bar for long conversions (ldm prepare, later encode): drawn by
 * rank 0 only. On a terminal, one line redrawn in place with "\r": count,
 * percent, rate and ETA. Otherwise (logs, CI) at most one line at each quarter
 * (or finer, with the rate, for long conversions: progress_bar_report_often),
 * and only once the job has run for a couple of seconds, so quick jobs and
 * tests stay silent. Everything goes to stderr; stdout keeps the result line. */
#ifndef LDM_PROGRESS_BAR_H
#define LDM_PROGRESS_BAR_H

#include <stdint.h>

typedef struct {
    char label[64];
    int64_t total;
    int enabled;              /* this rank draws */
    int interactive;          /* stderr is a terminal */
    int reports;              /* non-interactive: one line at each 1/reports of the total (4 unless set) */
    int reports_done;         /* non-interactive: lines already printed (0..reports) */
    char rate_unit[16];       /* non-interactive: "" or the unit of a rate appended to each line */
    int drawn;                /* something is on the current terminal line */
    double start_seconds;
    double last_draw_seconds;
} progress_bar;

/* Starts a bar over `total` units of work (e.g. images); `enabled` says whether
 * this rank draws (rank 0). */
void progress_bar_start(progress_bar *bar, const char *label, int64_t total, int enabled);
/* Non-interactive: a line at each 1/reports of the total, each ending in
 * ", R UNIT/s" (the rate since the start). */
void progress_bar_report_often(progress_bar *bar, int reports, const char *unit);
/* Reports that `done` of the total are finished (monotonic; cheap to call per item). */
void progress_bar_update(progress_bar *bar, int64_t done);
/* Reports completion and ends the terminal line. */
void progress_bar_finish(progress_bar *bar);

#endif

/* Progress bar on stderr, rank 0 only (see progress_bar.h). */
#include "progress_bar.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "monotonic_clock.h"

/* A non-interactive run prints nothing before this many seconds have passed. */
#define PROGRESS_QUIET_SECONDS 2.0
/* A terminal bar is redrawn at most this often. */
#define PROGRESS_REDRAW_SECONDS 0.1

static void format_duration(double seconds, char *out, size_t size) {
    long s = seconds > 0 ? (long)(seconds + 0.5) : 0;
    if (s >= 3600)
        snprintf(out, size, "%ldh%02ldm", s / 3600, (s / 60) % 60);
    else
        snprintf(out, size, "%ldm%02lds", s / 60, s % 60);
}

void progress_bar_start(progress_bar *bar, const char *label, int64_t total, int enabled) {
    memset(bar, 0, sizeof(*bar));
    snprintf(bar->label, sizeof(bar->label), "%s", label);
    bar->total = total;
    bar->enabled = enabled && total > 0;
    bar->interactive = bar->enabled && isatty(STDERR_FILENO);
    bar->start_seconds = monotonic_seconds();
    bar->reports = 4;
}

void progress_bar_report_often(progress_bar *bar, int reports, const char *unit) {
    bar->reports = reports > 0 ? reports : 1;
    snprintf(bar->rate_unit, sizeof(bar->rate_unit), "%s", unit);
}

static void draw_terminal_line(progress_bar *bar, int64_t done, double elapsed) {
    enum { BAR_WIDTH = 30 };
    double fraction = (double)done / (double)bar->total;
    char cells[BAR_WIDTH + 1];
    int filled = (int)(fraction * BAR_WIDTH);
    for (int i = 0; i < BAR_WIDTH; i++) cells[i] = i < filled ? '#' : '.';
    cells[BAR_WIDTH] = '\0';
    double rate = elapsed > 0 ? (double)done / elapsed : 0;
    char eta[32] = "?";
    if (rate > 0) format_duration((double)(bar->total - done) / rate, eta, sizeof(eta));
    fprintf(stderr, "\r%s [%s] %lld/%lld %3.0f%% %.1f/s ETA %s  ", bar->label, cells, (long long)done,
            (long long)bar->total, 100.0 * fraction, rate, eta);
    fflush(stderr);
    bar->drawn = 1;
}

void progress_bar_update(progress_bar *bar, int64_t done) {
    if (!bar->enabled) return;
    if (done > bar->total) done = bar->total;
    double now = monotonic_seconds(), elapsed = now - bar->start_seconds;
    if (bar->interactive) {
        if (done < bar->total && now - bar->last_draw_seconds < PROGRESS_REDRAW_SECONDS) return;
        bar->last_draw_seconds = now;
        draw_terminal_line(bar, done, elapsed);
        return;
    }
    int reports = (int)(bar->reports * done / bar->total);
    if (reports <= bar->reports_done) return;
    bar->reports_done = reports;
    if (elapsed < PROGRESS_QUIET_SECONDS) return;
    char elapsed_text[32], rate[48] = "";
    format_duration(elapsed, elapsed_text, sizeof(elapsed_text));
    if (bar->rate_unit[0]) snprintf(rate, sizeof(rate), ", %.1f %s/s", (double)done / elapsed, bar->rate_unit);
    fprintf(stderr, "%s: %lld/%lld (%d%%) after %s%s\n", bar->label, (long long)done, (long long)bar->total,
            100 * reports / bar->reports, elapsed_text, rate);
    fflush(stderr);
}

void progress_bar_finish(progress_bar *bar) {
    if (!bar->enabled) return;
    if (bar->interactive) {
        draw_terminal_line(bar, bar->total, monotonic_seconds() - bar->start_seconds);
        fputc('\n', stderr);
        fflush(stderr);
        bar->drawn = 0;
    } else {
        progress_bar_update(bar, bar->total);
    }
    bar->enabled = 0;
}

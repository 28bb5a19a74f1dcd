/* Progress lines, metrics.jsonl and its TensorBoard copy (see metrics_log.h).
 * Non-finite numbers are written as null in JSON, which has no NaN or Infinity. */
#include "metrics_log.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "atomic_file.h"
#include "disk_space.h"
#include "fatal.h"

/* A write of the metrics failed: on a full disk one line saying so (exit
 * status 2; the run resumes from its newest checkpoint once there is space). */
static __attribute__((noreturn)) void metrics_write_failed(const char *path, int error_number, const char *err) {
    char full[512];
    if (disk_full_describe(path, error_number, full, sizeof full))
        fatal_input("%s: cannot write: %s; free space, then resume with --resume auto", path, full);
    fatal_internal("%s", err);
}

/* Rewrites the file with only the lines of steps <= last_step. */
static void keep_steps_through(const char *path, int64_t last_step) {
    FILE *in = fopen(path, "r");
    if (!in) return; /* nothing logged yet */
    size_t capacity = 1 << 16, used = 0;
    char *kept = xmalloc(capacity);
    char *line = NULL;
    size_t line_capacity = 0;
    ssize_t length;
    while ((length = getline(&line, &line_capacity, in)) > 0) {
        long long step = -1;
        if (sscanf(line, "{\"step\": %lld", &step) != 1 || step > last_step || line[length - 1] != '\n') continue;
        if (used + (size_t)length > capacity) {
            while (used + (size_t)length > capacity) capacity *= 2;
            char *grown = realloc(kept, capacity);
            if (!grown) fatal_internal("out of memory reading %s", path);
            kept = grown;
        }
        memcpy(kept + used, line, (size_t)length);
        used += (size_t)length;
    }
    free(line);
    fclose(in);
    char err[512];
    if (atomic_write_file(path, kept, used, err, sizeof err) != 0) metrics_write_failed(path, errno, err);
    free(kept);
}

void metrics_log_open(metrics_log *log, const char *run_dir, int64_t log_every, int64_t global_batch,
                      int64_t resumed_step) {
    memset(log, 0, sizeof *log);
    size_t n = strlen(run_dir) + sizeof "/metrics.jsonl";
    log->path = xmalloc(n);
    snprintf(log->path, n, "%s/metrics.jsonl", run_dir);
    if (resumed_step > 0) keep_steps_through(log->path, resumed_step);
    log->jsonl = fopen(log->path, resumed_step > 0 ? "a" : "w");
    if (!log->jsonl) fatal_internal("%s: cannot open for writing: %s", log->path, strerror(errno));
    tensorboard_log_open(&log->tensorboard, run_dir, resumed_step);
    log->log_every = log_every;
    log->global_batch = global_batch;
}

/* Appends to the line being built; a line longer than its buffer is a bug
 * (the members it can hold are bounded by step_report's). */
static void append(metrics_log *log, const char *format, ...) __attribute__((format(printf, 2, 3)));
static void append(metrics_log *log, const char *format, ...) {
    const size_t size = sizeof log->line;
    va_list args;
    va_start(args, format);
    const int n = vsnprintf(log->line + log->line_used, size - log->line_used, format, args);
    va_end(args);
    if (n < 0 || (size_t)n >= size - log->line_used)
        fatal_internal("%s: a metrics line over %zu bytes", log->path, size);
    log->line_used += (size_t)n;
}

static void append_number(metrics_log *log, double value) {
    if (isfinite(value))
        append(log, "%.9g", value);
    else
        append(log, "null");
}

static void format_duration(char *out, size_t size, double seconds) {
    if (!isfinite(seconds) || seconds < 0) seconds = 0;
    long long s = (long long)(seconds + 0.5);
    snprintf(out, size, "%lld:%02lld:%02lld", s / 3600, s / 60 % 60, s % 60);
}

void metrics_log_step(metrics_log *log, const metrics_step *m) {
    log->line_used = 0;
    append(log, "{\"step\": %lld, \"images_seen\": %lld, \"loss\": ", (long long)m->step, (long long)m->images_seen);
    append_number(log, m->loss);
    append(log, ", \"grad_norm\": ");
    append_number(log, m->grad_norm);
    append(log, ", \"lr\": ");
    append_number(log, m->lr);
    append(log, ", \"images_per_s\": ");
    append_number(log, m->step_seconds > 0 ? (double)log->global_batch / m->step_seconds : NAN);
    append(log, ", \"skipped\": %s, \"skipped_total\": %lld", m->skipped ? "true" : "false",
           (long long)m->skipped_total);
    if (m->extra_json && *m->extra_json) append(log, ", %s", m->extra_json);
    append(log, "}\n");
    if (fputs(log->line, log->jsonl) == EOF || fflush(log->jsonl) != 0) {
        int error_number = errno;
        char err[512];
        snprintf(err, sizeof err, "%s: cannot write: %s", log->path, strerror(error_number));
        metrics_write_failed(log->path, error_number, err);
    }
    tensorboard_log_step(&log->tensorboard, log->line, m->picture);

    log->window_seconds += m->step_seconds;
    log->window_steps++;
    log->total_seconds += m->step_seconds;
    log->total_logged_steps++;
    if (m->step % log->log_every != 0 && m->step != m->total_steps) return;
    double images_per_s = log->window_seconds > 0 ? (double)(log->window_steps * log->global_batch) / log->window_seconds : 0;
    double seconds_per_step = log->total_seconds / (double)log->total_logged_steps;
    char eta[32];
    format_duration(eta, sizeof eta, seconds_per_step * (double)(m->total_steps - m->step));
    int width = snprintf(NULL, 0, "%lld", (long long)m->total_steps);
    printf("step %*lld/%lld  loss %.4f  grad_norm %.3g  lr %.2e  %.1f img/s  eta %s", width, (long long)m->step,
           (long long)m->total_steps, m->loss, m->grad_norm, m->lr, images_per_s, eta);
    if (m->skipped_total) printf("  skipped %lld", (long long)m->skipped_total);
    putchar('\n');
    fflush(stdout);
    log->window_seconds = 0;
    log->window_steps = 0;
}

void metrics_log_close(metrics_log *log) {
    if (!log->jsonl) return;
    fflush(log->jsonl);
    fsync(fileno(log->jsonl));
    fclose(log->jsonl);
    tensorboard_log_close(&log->tensorboard);
    free(log->path);
    log->jsonl = NULL;
}

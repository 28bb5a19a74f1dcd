/* See step_report.h. */
#include "step_report.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void step_report_open(step_report *report, const training_job *job, const dataset_info *data, const trainable *model,
                      int world, int micro_batch, int accumulation, int64_t resumed_step) {
    const train_config *train = &job->config->train;
    report->model = model;
    report->records_loss_scale = loss_scaler_from_config(train).dynamic;
    metrics_log_open(&report->log, job->run_dir, train->log_every, train->batch_size, resumed_step);
    printf("train: %s: %lld %s %dx%dx%d%s; %d rank%s x micro-batch %d x %d accumulation = global batch %lld; "
           "%s %.2fM parameters; run %s\n",
           job->data_path, (long long)data->count, data->kind == DATASET_IMAGES ? "images" : "latents",
           data->channels, data->height, data->width, data->has_labels ? "" : " (no labels: unconditional)", world,
           world == 1 ? "" : "s", micro_batch, accumulation, (long long)train->batch_size, model->kind,
           (double)model->count / 1e6, job->run_dir);
    fflush(stdout);
}

/* Appends ", " (unless first) and the formatted members to the step's JSON. */
static void append_members(step_report *report, const char *format, ...) __attribute__((format(printf, 2, 3)));
static void append_members(step_report *report, const char *format, ...) {
    char *json = report->extra_json;
    size_t used = strlen(json), size = sizeof report->extra_json;
    if (used + 2 >= size) return;
    if (used) memcpy(json + used, ", ", 3), used += 2;
    va_list args;
    va_start(args, format);
    vsnprintf(json + used, size - used, format, args);
    va_end(args);
}

void step_report_step(step_report *report, metrics_step m, const double *statistics,
                      const loss_scaler_verdict *verdict, const training_state *state,
                      const validation_report *validation) {
    const trainable *model = report->model;
    report->extra_json[0] = 0;
    if (model->statistics_json)
        model->statistics_json(model, statistics, report->extra_json, sizeof report->extra_json);
    if (report->records_loss_scale) append_members(report, "\"loss_scale\": %.17g", verdict->scale);
    if (validation && validation->json[0]) append_members(report, "%s", validation->json);
    m.extra_json = report->extra_json;
    if (validation && validation->picture[0]) m.picture = validation->picture;
    metrics_log_step(&report->log, &m);
    if (validation && validation->line[0]) printf("%s\n", validation->line);
    if (verdict->overflow)
        printf("step %lld: fp16 gradient overflow at loss scale %g, step skipped, scale halved to %g "
               "(%lld skipped so far)\n", (long long)m.step, verdict->scale, state->loss_scale,
               (long long)state->skipped_total);
    else if (verdict->skip)
        printf("step %lld: non-finite loss or gradient, step skipped (%lld skipped so far)\n", (long long)m.step,
               (long long)state->skipped_total);
    fflush(stdout);
}

void step_report_close(step_report *report) { metrics_log_close(&report->log); }

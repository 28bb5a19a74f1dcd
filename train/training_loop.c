/* The training loop (see training_loop.h). Randomness of a step is a pure
 * function of (seed, step, the sample's index in the data set): its noise level,
 * its noise and whether its label is dropped, so nothing depends on history, on
 * the world size, or on which rank holds the sample. All buffers are laid out
 * before the first step; a step allocates nothing.
 *
 * This file holds the loop and the step; its other parts are the loss scaler
 * (loss_scaler.h), the step report (step_report.h), validation
 * (training_validation.h), checkpoints and resume (training_checkpoints.h) and
 * the export of the final weights (training_export.h). */
#include "training_loop.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "config.h"
#include "ema.h"
#include "fatal.h"
#include "grad_clip.h"
#include "init_weights.h"
#include "lr_schedule.h"
#include "monotonic_clock.h"
#include "run_directory.h"
#include "step_report.h"
#include "trainer.h"
#include "training_checkpoints.h"
#include "training_export.h"
#include "training_validation.h"

/* The summed statistics of a step, reduced over ranks in one call: [0] the sum
 * of micro-batch mean losses, then the trainable's own statistics. */
#define STAT_LOSS 0
#define STAT_MODEL 1
#define STAT_COUNT (1 + TRAINABLE_MAX_STATISTICS)

void training_batch_split(const ldm_config *config, const char *config_path, int world_size, int *micro_batch,
                          int *accumulation_steps) {
    const char *source = config_path ? config_path : "config";
    int batch = config->train.batch_size, micro = config->train.micro_batch;
    if (micro == 0) {
        if (batch % world_size != 0)
            fatal_input("%s: train.batch_size: expected a multiple of the world size (%d ranks), got %d", source,
                        world_size, batch);
        *micro_batch = batch / world_size;
        *accumulation_steps = 1;
        return;
    }
    if (batch % ((long long)world_size * micro) != 0)
        fatal_input("%s: train.batch_size: expected a multiple of world size x train.micro_batch (%d x %d = %lld), "
                    "got %d", source, world_size, micro, (long long)world_size * micro, batch);
    *micro_batch = micro;
    *accumulation_steps = batch / (world_size * micro);
}

/* One micro-batch from the loader, P = C * H * W. */
typedef struct {
    float *x;        /* (B, P) samples: the trainable's host buffer when it has one */
    int32_t *labels; /* (B) -1 without labels */
    int64_t *index;  /* (B) the samples' rows in the data set */
} micro_batch_buffers;

static micro_batch_buffers micro_batch_buffers_create(const trainable *model, int micro, int64_t per_sample) {
    const size_t samples_bytes = (size_t)micro * (size_t)per_sample * sizeof(float);
    const trainable_device *device = model->device;
    return (micro_batch_buffers){
        .x = device && device->host_buffer_alloc ? device->host_buffer_alloc(samples_bytes) : xmalloc(samples_bytes),
        .labels = xmalloc((size_t)micro * sizeof(int32_t)),
        .index = xmalloc((size_t)micro * sizeof(int64_t)),
    };
}

static void micro_batch_buffers_free(const trainable *model, micro_batch_buffers *b) {
    if (model->device && model->device->host_buffer_free) model->device->host_buffer_free(b->x);
    else free(b->x);
    free(b->labels), free(b->index);
}

/* Set by SIGTERM / SIGUSR1 (what Slurm sends before preemption or the time
 * limit); acted on at the next step boundary, agreed by every rank. */
static volatile sig_atomic_t stop_requested;

static void request_stop(int signal_number) {
    (void)signal_number;
    stop_requested = 1;
}

static void install_stop_handlers(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = request_stop;
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGUSR1, &action, NULL);
}

/* The model, and the data it accepts (its shape decides what data that is). */
static void open_model_and_data(trainer *t) {
    const training_job *job = t->job;
    training_batch_split(job->config, job->config_path, t->world, &t->micro_batch, &t->accumulation);
    t->model = job->create_model_with ? job->create_model_with(job->config, t->micro_batch, job->model_context)
                                      : job->create_model(job->config, t->micro_batch);
    loader_options options = training_loader_options(job->config, t->model, job->data_path, t->micro_batch);
    t->data = loader_open(&options);
}

/* The optimizer, EMA, training state, parameter store and (rank 0)
 * checkpoint writer of the model. */
static void lay_out_training_state(trainer *t) {
    const train_config *train = &t->job->config->train;
    const size_t count = t->model->count;
    adamw_create(&t->optimizer, count,
                 (adamw_hyper){.beta1 = (float)train->adam_beta1, .beta2 = (float)train->adam_beta2,
                               .eps = (float)train->adam_eps, .weight_decay = (float)train->weight_decay});
    t->ema = xmalloc(count * sizeof(float));
    t->scaler = loss_scaler_from_config(train);
    t->progress = (training_state){.world_size = t->world, .loss_scale = loss_scaler_first_scale(&t->scaler)};
    t->progress.loader = xcalloc((size_t)t->world, sizeof(loader_state));
    t->saved_step = -1;
    t->store = parameter_store_create(t->model, &t->optimizer, t->ema);
    if (t->rank == 0)
        t->writer = checkpoint_writer_create(count, t->model->table->fixed_numel, t->model->extra != NULL);
}

/* The run directory prepared, and every rank's vectors where they start: a
 * resumed run continues in its own directory (--resume auto without a
 * checkpoint starts over there); a new one from rank 0's weights. */
static void start_run(trainer *t, int resumed) {
    const training_job *job = t->job;
    char *config_json = config_to_json(job->config);
    run_directory_prepare(job->run_dir, job->force || job->resume != NULL, config_json);
    free(config_json);
    if (!resumed) {
        comm_broadcast(t->model->params, t->model->count * sizeof(float), 0);
        memcpy(t->ema, t->model->params, t->model->count * sizeof(float));
    }
    t->store->from_host(t->store);
}

static void trainer_close(trainer *t) {
    if (t->sample_log) fclose(t->sample_log);
    free(t->ema);
    free(t->progress.loader);
    checkpoint_writer_destroy(t->writer);
    t->store->destroy(t->store);
    adamw_destroy(&t->optimizer);
    t->model->destroy(t->model);
    loader_close(t->data);
}

/* The step's micro-batches, each adding its gradient, then the gradient and
 * the statistics averaged over the ranks. Returns the global batch's mean loss. */
static double accumulate_gradient(trainer *t, micro_batch_buffers *b, int64_t step, double *statistics) {
    trainable *model = t->model;
    model->zero_grad(model);
    const float loss_weight = loss_scaler_weight(&t->scaler, &t->progress, t->accumulation);
    for (int a = 0; a < t->accumulation; a++) {
        const int64_t position = loader_get_state(t->data).position;
        loader_next(t->data, b->x, b->labels, b->index);
        if (t->sample_log)
            for (int i = 0; i < t->micro_batch; i++)
                fprintf(t->sample_log, "%lld %lld %lld\n", (long long)step,
                        (long long)(position + (int64_t)i * t->world + t->rank), (long long)b->index[i]);
        const gradient_handover *handover = a == t->accumulation - 1 ? t->store->handover : NULL;
        statistics[STAT_LOSS] += model->micro_batch(model, b->x, b->labels, b->index, t->micro_batch, step,
                                                    loss_weight, handover, statistics + STAT_MODEL);
    }
    t->store->average_gradients(t->store);
    comm_allreduce_sum_double(statistics, 1 + model->statistic_count);
    return statistics[STAT_LOSS] / (double)(t->world * t->accumulation);
}

/* A step that is taken: the gradient clipped, AdamW, the EMA, and the model's
 * extra state following. */
static void update_weights(trainer *t, const ema_schedule *ema_rule, int64_t step, double grad_norm, double lr) {
    const train_config *train = &t->job->config->train;
    const float clip = grad_clip_factor(grad_norm, train->grad_clip);
    if (clip != 1.0f) t->store->scale_gradients(t->store, clip);
    t->store->adamw_step(t->store, (float)lr);
    t->store->ema_update(t->store, ema_decay_at(ema_rule, step, t->progress.images_seen, train->batch_size));
    if (t->model->extra && t->model->extra->after_step) t->model->extra->after_step(t->model);
}

int training_run(const training_job *job) {
    trainer t = {.job = job, .rank = comm_rank(), .world = comm_world_size()};
    comm_set_timeout(job->config->comm.timeout_s); /* every rank has the same config */
    open_model_and_data(&t);
    const char *sample_log = getenv("LDM_TEST_SAMPLE_LOG");
    if (sample_log && *sample_log) {
        char path[4096];
        snprintf(path, sizeof path, "%s.%d", sample_log, t.rank);
        t.sample_log = fopen(path, "a");
        if (!t.sample_log) fatal_input("%s: LDM_TEST_SAMPLE_LOG: cannot append to the file", path);
    }
    const dataset_info *info = loader_info(t.data);
    training_validation validation; /* reads its held-out data before anything is written */
    training_validation_open(&validation, job, t.model, info, t.rank);
    lay_out_training_state(&t);
    const int resumed = job->resume ? training_resume(&t) : 0;
    if (!resumed && job->init_weights && t.rank == 0) {
        init_weights_load(t.model, job->init_weights);
        printf("train: initial weights from %s (optimizer state fresh)\n", job->init_weights);
    }
    start_run(&t, resumed);

    micro_batch_buffers buffers = micro_batch_buffers_create(t.model, t.micro_batch, info->sample_elements);
    const train_config *train = &job->config->train;
    const lr_schedule schedule = lr_schedule_from_config(train);
    const ema_schedule ema_rule = ema_schedule_from_config(train);
    install_stop_handlers();
    step_report report;
    if (t.rank == 0)
        step_report_open(&report, job, info, t.model, t.world, t.micro_batch, t.accumulation, t.progress.step);

    int stopped = 0;
    for (int64_t step = t.progress.step; step < train->steps && !stopped; step++) {
        const double step_start = monotonic_seconds();
        double statistics[STAT_COUNT] = {0};
        const double loss = accumulate_gradient(&t, &buffers, step, statistics);
        const loss_scaler_verdict verdict = loss_scaler_check(&t.scaler, &t.progress, t.store, loss);
        const double lr = lr_at_step(&schedule, step);
        loss_scaler_record(&t.scaler, &t.progress, &verdict, step);
        if (!verdict.skip) update_weights(&t, &ema_rule, step, verdict.grad_norm, lr);
        t.progress.images_seen += train->batch_size;
        t.progress.step = step + 1;
        if (t.rank == 0) {
            const metrics_step m = {.step = step + 1, .total_steps = train->steps,
                                    .images_seen = t.progress.images_seen, .loss = loss,
                                    .grad_norm = verdict.grad_norm, .lr = lr,
                                    .step_seconds = monotonic_seconds() - step_start, .skipped = verdict.skip,
                                    .skipped_total = t.progress.skipped_total};
            const validation_report *shown = training_validation_after_step(&validation, t.store, t.ema, step + 1);
            step_report_step(&report, m, statistics + STAT_MODEL, &verdict, &t.progress, shown);
        }
        stopped = comm_any(stop_requested);
        training_checkpoint_after_step(&t, stopped);
    }
    training_checkpoint_at_end(&t, stopped);

    if (t.rank == 0) {
        checkpoint_writer_finish(t.writer);
        step_report_close(&report);
        t.store->to_host(t.store);
        if (stopped)
            printf("train: stopped by a signal at step %lld; continue with --resume auto\n",
                   (long long)t.progress.step);
        else
            training_export(job->run_dir, t.model, t.ema, &t.progress);
        fflush(stdout);
    }
    /* Nobody leaves before rank 0 has written everything. */
    comm_barrier();
    micro_batch_buffers_free(t.model, &buffers);
    training_validation_close(&validation);
    trainer_close(&t);
    return stopped;
}

loader_options training_loader_options(const ldm_config *config, const trainable *model, const char *data_path,
                                       int micro_batch) {
    return (loader_options){
        .path = data_path,
        .batch_size = micro_batch,
        .seed = config->train.seed,
        .flip = config->data.flip,
        .memory_budget_bytes = (int64_t)config->data.memory_budget_mb << 20,
        .prefetch_batches = config->data.prefetch_batches,
        .virtual_shards = config->data.virtual_shards,
        .expect_channels = model->expect_channels,
        .expect_height = model->expect_size,
        .expect_width = model->expect_size,
        .expect_num_classes = model->expect_num_classes,
        .sigma_data = config->diffusion.sigma_data,
    };
}

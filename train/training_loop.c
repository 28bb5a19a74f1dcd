/* The training loop (see training_loop.h). Randomness of a step is a pure
 * function of (seed, step, the sample's index in the data set): its noise level,
 * its noise and whether its label is dropped, so nothing depends on history, on
 * the world size, or on which rank holds the sample. All buffers are laid out
 * before the first step; a step allocates nothing. */
#include "training_loop.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm.h"
#include "checkpoint.h"
#include "checkpoint_writer.h"
#include "ema.h"
#include "fatal.h"
#include "grad_clip.h"
#include "loader.h"
#include "lr_schedule.h"
#include "metrics_log.h"
#include "optimizer.h"
#include "parameter_store.h"
#include "run_directory.h"
#include "trainable.h"
#include "training_state.h"
#include "config.h"

/* The summed statistics of a step, reduced over ranks in one call: [0] the sum
 * of micro-batch mean losses, then the trainable's own statistics. */
#define STAT_LOSS 0
#define STAT_MODEL 1
#define STAT_COUNT (1 + TRAINABLE_MAX_STATISTICS)

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

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

/* The step whose gradient a test poisons on the last rank (environment
 * LDM_TEST_POISON_GRADIENT_STEPS="FIRST[-LAST]", 1-based), to check that a
 * non-finite gradient on one rank is skipped by all. */
static void poisoned_steps(int64_t *first, int64_t *last) {
    *first = *last = -1;
    const char *text = getenv("LDM_TEST_POISON_GRADIENT_STEPS");
    if (!text || !*text) return;
    long long a = 0, b = 0;
    int n = sscanf(text, "%lld-%lld", &a, &b);
    if (n < 1) fatal_input("LDM_TEST_POISON_GRADIENT_STEPS: expected FIRST or FIRST-LAST, got '%s'", text);
    *first = a;
    *last = n == 2 ? b : a;
}

/* One micro-batch from the loader, P = C * H * W. */
typedef struct {
    float *x;        /* (B, P) samples */
    int32_t *labels; /* (B) -1 without labels */
    int64_t *index;  /* (B) the samples' rows in the data set */
} micro_batch_buffers;

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

/* Everything a step changes, and what a checkpoint saves. */
typedef struct {
    const training_job *job;
    int rank, world;
    loader *data;
    trainable *model;
    adamw_state optimizer;
    float *ema; /* (trainable count) */
    parameter_store *store; /* the step's vectors: host, or the GPU with host mirrors */
    checkpoint_writer *writer; /* rank 0: writes checkpoints beside training */
    training_state progress; /* step, images seen, skipped counts; loader filled in when saving */
} trainer;

static void save_checkpoint(trainer *t) {
    loader_state mine = loader_get_state(t->data);
    comm_gather(&mine, sizeof mine, t->progress.loader, 0);
    if (t->rank != 0) return;
    t->store->to_host(t->store);
    const ldm_config *config = t->job->config;
    char *state_json = training_state_to_json(&t->progress, t->model->kind, config, t->job->data_path,
                                              loader_info(t->data));
    if (t->model->state_record_name)
        state_json = training_state_with_record(state_json, t->model->state_record_name, t->model->state_record_json);
    checkpoint_contents contents = {.table = t->model->table, .params = t->model->params, .ema = t->ema,
                                    .fixed = t->model->fixed, .adam_m = t->optimizer.m, .adam_v = t->optimizer.v,
                                    .adam_step = t->optimizer.step, .state_json = state_json,
                                    .extra = t->model->extra_state, .extra_name = t->model->extra_name};
    checkpoint_writer_start(t->writer, t->job->run_dir, t->progress.step, &contents, config->train.ckpt_keep,
                            config->train.ckpt_keep_every);
    free(state_json);
}

/* Resuming this run from an older checkpoint than its newest would fork it:
 * the newer checkpoints would be mixed with the new ones, and a later --resume
 * auto would pick the wrong branch. Refused, naming what is in the way. */
static void refuse_newer_checkpoints(const char *run_dir, const char *chosen) {
    const char *chosen_name = strrchr(chosen, '/') ? strrchr(chosen, '/') + 1 : chosen;
    long long chosen_step = -1;
    if (sscanf(chosen_name, "step-%lld", &chosen_step) != 1) return; /* a checkpoint from elsewhere */
    char **dirs = NULL;
    int n = checkpoint_list(run_dir, &dirs);
    for (int i = 0; i < n; i++) {
        const char *name = strrchr(dirs[i], '/') ? strrchr(dirs[i], '/') + 1 : dirs[i];
        long long step = -1;
        if (sscanf(name, "step-%lld", &step) == 1 && step > chosen_step)
            fatal_input("%s: holds a newer checkpoint (%s) than %s; move the newer ones away to branch from an older "
                        "step, or use --resume auto", run_dir, dirs[i], chosen);
    }
    checkpoint_list_free(dirs, n);
}

/* Whether state.json's config trained in fp16. */
static int saved_in_fp16(const char *state_json) {
    cJSON *root = cJSON_Parse(state_json);
    const cJSON *train = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "config"), "train");
    const cJSON *precision = cJSON_GetObjectItemCaseSensitive(train, "precision");
    int fp16 = cJSON_IsString(precision) && strcmp(precision->valuestring, "fp16") == 0;
    cJSON_Delete(root);
    return fp16;
}

/* Where a resume starts: rank 0 finds and loads the checkpoint, checks it fits
 * this run, and sends weights, EMA, moments and state to every rank. Returns 0
 * when there is nothing to resume from (--resume auto on a run without a
 * checkpoint), else 1. */
static int resume_from_checkpoint(trainer *t) {
    const training_job *job = t->job;
    const char *where = strcmp(job->resume, "auto") == 0 ? job->run_dir : job->resume;
    size_t count = t->model->count;
    char *found = NULL;
    checkpoint_loaded loaded;
    int64_t state_length = 0;
    char *state_json = NULL;
    if (t->rank == 0) {
        found = checkpoint_find(where);
        if (!found && strcmp(job->resume, "auto") != 0)
            fatal_input("%s: no checkpoint that passes verification (expected a checkpoint directory or a run "
                        "directory with checkpoints/)", where);
        if (found && strcmp(job->resume, "auto") != 0) refuse_newer_checkpoints(job->run_dir, found);
        if (found) {
            checkpoint_load(found, &loaded);
            training_state_check_compatible(loaded.state_json, found, t->model, job->config, loader_info(t->data));
            checkpoint_copy_weights(&loaded, &loaded.model, t->model->table, t->model->params, NULL);
            checkpoint_copy_weights(&loaded, &loaded.ema, t->model->table, t->ema, NULL);
            checkpoint_copy_moments(&loaded, t->model->table, t->optimizer.m, t->optimizer.v);
            if (t->model->extra_state) {
                safetensors_file extra;
                checkpoint_read_extra(found, t->model->extra_name, &extra);
                checkpoint_copy_weights(&loaded, &extra, t->model->table, t->model->extra_state, NULL);
                safetensors_free(&extra);
            }
            t->optimizer.step = loaded.adam_step;
            state_length = (int64_t)strlen(loaded.state_json) + 1;
            state_json = loaded.state_json;
        }
    }
    comm_broadcast(&state_length, sizeof state_length, 0);
    if (state_length == 0) {
        if (t->rank == 0) printf("train: no checkpoint in %s: starting from step 0\n", where);
        return 0;
    }
    if (t->rank != 0) state_json = xmalloc((size_t)state_length);
    comm_broadcast(state_json, (size_t)state_length, 0);
    comm_broadcast(t->model->params, count * sizeof(float), 0);
    comm_broadcast(t->ema, count * sizeof(float), 0);
    comm_broadcast(t->optimizer.m, count * sizeof(float), 0);
    comm_broadcast(t->optimizer.v, count * sizeof(float), 0);
    comm_broadcast(&t->optimizer.step, sizeof t->optimizer.step, 0);
    if (t->model->extra_state) comm_broadcast(t->model->extra_state, count * sizeof(float), 0);

    training_state saved;
    training_state_parse(state_json, found ? found : "state.json", &saved);
    loader_set_state(t->data, training_state_loader_for_rank(&saved, loader_info(t->data)->count, t->rank, t->world));
    t->progress.step = saved.step;
    t->progress.images_seen = saved.images_seen;
    t->progress.skipped_total = saved.skipped_total;
    t->progress.skipped_in_a_row = saved.skipped_in_a_row;
    t->progress.loss_scale = saved.loss_scale;
    t->progress.loss_scale_good_steps = saved.loss_scale_good_steps;
    /* A checkpoint of fp32 or bf16 (whose scale stays 1) resumed in fp16: the
     * scale starts afresh. Between fp16 runs it is restored exactly. */
    if (strcmp(t->job->config->train.precision, "fp16") == 0 && !saved_in_fp16(state_json)) {
        t->progress.loss_scale = t->job->config->train.loss_scale_initial;
        t->progress.loss_scale_good_steps = 0;
    }
    if (t->rank == 0) {
        printf("train: resuming from %s at step %lld (saved by %d rank%s%s)\n", found, (long long)saved.step,
               saved.world_size, saved.world_size == 1 ? "" : "s",
               saved.world_size == t->world ? "" : "; another world size: each rank starts its new shard at the "
                                                   "saved point of the epoch");
        fflush(stdout);
        checkpoint_loaded_free(&loaded);
        free(found);
    } else {
        free(state_json);
    }
    training_state_free(&saved);
    return 1;
}

int training_run(const training_job *job) {
    const ldm_config *config = job->config;
    trainer t = {.job = job, .rank = comm_rank(), .world = comm_world_size()};
    int rank = t.rank, world = t.world;
    int micro, accumulation;
    training_batch_split(config, job->config_path, world, &micro, &accumulation);

    /* The model first: its shape decides what data it accepts. */
    trainable *model = job->create_model_with ? job->create_model_with(config, micro, job->model_context)
                                              : job->create_model(config, micro);
    t.model = model;
    loader_options loader_config = training_loader_options(config, model, job->data_path, micro);
    t.data = loader_open(&loader_config);
    const dataset_info *info = loader_info(t.data);
    int64_t per_sample = info->sample_elements;
    size_t count = model->count;
    /* Held-out samples, validated on by rank 0 (read before anything is written,
     * so that a bad file is refused first). */
    int validation_count = 0;
    float *validation_samples = NULL;  /* (validation_count, P) */
    int32_t *validation_labels = NULL; /* (validation_count) */
    if (rank == 0 && job->validation_path && model->validate) {
        int most = config->data.validation_samples;
        validation_samples = xmalloc((size_t)most * (size_t)per_sample * sizeof(float));
        validation_labels = xmalloc((size_t)most * sizeof(int32_t));
        loader_options validation_options = training_loader_options(config, model, job->validation_path, 1);
        validation_count = loader_read_first(&validation_options, most, validation_samples, validation_labels);
    }
    const int validates = rank == 0 && model->validate && config->train.sample_every > 0 &&
                          (validation_count > 0 || model->validates_without_data);
    trainable_validation validation = {.samples = validation_samples, .labels = validation_labels,
                                       .count = validation_count, .run_dir = job->run_dir, .data = info,
                                       .autoencoder = job->autoencoder_path};
    if (validates && model->prepare_validation) model->prepare_validation(model, &validation);
    adamw_create(&t.optimizer, count,
                 (adamw_hyper){.beta1 = (float)config->train.adam_beta1, .beta2 = (float)config->train.adam_beta2,
                               .eps = (float)config->train.adam_eps, .weight_decay = (float)config->train.weight_decay});
    t.ema = xmalloc(count * sizeof(float));
    /* fp16: dynamic loss scaling (the scale and its count of good steps are
     * training state, saved in checkpoints); 1 in fp32 and bf16. */
    const int fp16 = strcmp(config->train.precision, "fp16") == 0;
    t.progress = (training_state){.world_size = world, .loss_scale = fp16 ? config->train.loss_scale_initial : 1.0};
    t.progress.loader = xcalloc((size_t)world, sizeof(loader_state));

    t.store = parameter_store_create(model, &t.optimizer, t.ema);
    if (rank == 0) t.writer = checkpoint_writer_create(count, model->table->fixed_numel, model->extra_state != NULL);
    parameter_store *store = t.store;
    int resumed = job->resume ? resume_from_checkpoint(&t) : 0;
    char *config_json = config_to_json(config);
    /* A resumed run continues in its own directory; --resume auto without a
     * checkpoint starts over there. */
    run_directory_prepare(job->run_dir, job->force || job->resume != NULL, config_json);
    free(config_json);
    if (!resumed) {
        /* Every rank starts from rank 0's weights. */
        comm_broadcast(model->params, count * sizeof(float), 0);
        memcpy(t.ema, model->params, count * sizeof(float));
    }
    store->from_host(store);

    const size_t samples_bytes = (size_t)micro * (size_t)per_sample * sizeof(float);
    micro_batch_buffers b = {
        .x = model->host_buffer_alloc ? model->host_buffer_alloc(samples_bytes) : xmalloc(samples_bytes),
        .labels = xmalloc((size_t)micro * sizeof(int32_t)),
        .index = xmalloc((size_t)micro * sizeof(int64_t)),
    };
    char statistics_json[4096], validation_json[1024], validation_line[1024];
    lr_schedule schedule = lr_schedule_from_config(&config->train);
    ema_schedule ema_rule = ema_schedule_from_config(&config->train);
    int64_t poison_first, poison_last;
    poisoned_steps(&poison_first, &poison_last);
    install_stop_handlers();

    int64_t global_batch = config->train.batch_size, total_steps = config->train.steps;
    metrics_log log;
    if (rank == 0) {
        metrics_log_open(&log, job->run_dir, config->train.log_every, global_batch, t.progress.step);
        printf("train: %s: %lld %s %dx%dx%d%s; %d rank%s x micro-batch %d x %d accumulation = global batch %lld; "
               "%s %.2fM parameters; run %s\n",
               job->data_path, (long long)info->count, info->kind == DATASET_IMAGES ? "images" : "latents",
               info->channels, info->height, info->width, info->has_labels ? "" : " (no labels: unconditional)",
               world, world == 1 ? "" : "s", micro, accumulation, (long long)global_batch, model->kind, (double)count / 1e6,
               job->run_dir);
        fflush(stdout);
    }

    int stopped = 0;
    int64_t last_saved = resumed ? t.progress.step : -1;
    for (int64_t step = t.progress.step; step < total_steps; step++) {
        double step_start = now_seconds();
        double stats[STAT_COUNT] = {0};
        model->zero_grad(model);
        /* fp16: the loss is multiplied by the loss scale, so that small gradients
         * stay above half's subnormals; the gradient is divided by it again below. */
        const double loss_scale = t.progress.loss_scale;
        const float loss_weight = fp16 ? (float)(loss_scale / (double)accumulation) : 1.0f / (float)accumulation;
        for (int a = 0; a < accumulation; a++) {
            loader_next(t.data, b.x, b.labels, b.index);
            model->final_micro_batch = a == accumulation - 1;
            /* Each micro-batch's mean loss enters with weight 1 / accumulation, so
             * the gradient is that of the mean over the rank's samples. */
            stats[STAT_LOSS] += model->micro_batch(model, b.x, b.labels, b.index, micro, step, loss_weight,
                                                   stats + STAT_MODEL);
        }
        if (step + 1 >= poison_first && step + 1 <= poison_last && rank == world - 1) store->poison_gradient(store);
        store->average_gradients(store);
        comm_allreduce_sum_double(stats, 1 + model->statistic_count);
        double loss = stats[STAT_LOSS] / (double)(world * accumulation);

        /* Every rank holds the same reduced gradient, and comm_any makes the
         * decision one for all in any case. The norm is finite exactly when
         * every value is (squares of floats cannot overflow a double sum). In
         * fp16 a non-finite gradient with a finite loss is an overflow of the
         * scaled gradient: skipped, scale halved. */
        double grad_norm = store->gradient_norm(store);
        int skip = comm_any(!isfinite(loss) || !isfinite(grad_norm));
        int overflow = fp16 && skip && isfinite(loss);
        if (fp16 && !skip) {
            /* fp16's loss scale taken out again before clipping and the update
             * (exact for a power of two, unless a value underflows). */
            store->scale_gradients(store, (float)(1.0 / loss_scale));
            grad_norm = store->gradient_norm(store);
        }
        const float clip = grad_clip_factor(grad_norm, config->train.grad_clip);
        if (!skip && clip != 1.0f) store->scale_gradients(store, clip);
        if (skip) grad_norm = NAN;
        double lr = lr_at_step(&schedule, step);
        if (skip) {
            t.progress.skipped_total++;
            if (fp16) {
                t.progress.loss_scale = loss_scale / 2;
                t.progress.loss_scale_good_steps = 0;
            }
            /* An overflow that a lower scale cures is not divergence; once the
             * scale is below 1, lowering it further is not a cure either. */
            if ((!overflow || t.progress.loss_scale < 1.0) &&
                ++t.progress.skipped_in_a_row >= config->train.max_nonfinite_steps)
                fatal_internal("training diverged: %d steps in a row with a non-finite loss or gradient, the last at "
                               "step %lld (train.max_nonfinite_steps); lower train.lr or raise train.grad_clip",
                               t.progress.skipped_in_a_row, (long long)step + 1);
        } else {
            t.progress.skipped_in_a_row = 0;
            store->adamw_step(store, (float)lr);
            store->ema_update(store, ema_decay_at(&ema_rule, step, t.progress.images_seen, global_batch));
            if (model->after_step) model->after_step(model);
            if (fp16 && ++t.progress.loss_scale_good_steps >= config->train.loss_scale_growth_interval) {
                t.progress.loss_scale = loss_scale * 2;
                t.progress.loss_scale_good_steps = 0;
            }
        }
        t.progress.images_seen += global_batch;
        t.progress.step = step + 1;

        if (rank == 0) {
            metrics_step m = {.step = step + 1, .total_steps = total_steps, .images_seen = t.progress.images_seen,
                              .loss = loss, .grad_norm = grad_norm, .lr = lr,
                              .step_seconds = now_seconds() - step_start, .skipped = skip,
                              .skipped_total = t.progress.skipped_total, .extra_json = statistics_json};
            statistics_json[0] = 0;
            if (model->statistics_json)
                model->statistics_json(model, stats + STAT_MODEL, statistics_json, sizeof statistics_json);
            if (fp16) { /* the scale this step used */
                size_t used = strlen(statistics_json);
                snprintf(statistics_json + used, sizeof statistics_json - used, "%s\"loss_scale\": %.17g",
                         used ? ", " : "", loss_scale);
            }
            int64_t every = config->train.sample_every;
            int validate_now = validates && every > 0 && ((step + 1) % every == 0 || step + 1 == total_steps);
            if (validate_now) {
                store->to_host(store);
                validation.ema = t.ema;
                validation.step = step + 1;
                model->validate(model, &validation, validation_json, sizeof validation_json, validation_line,
                                sizeof validation_line);
                size_t used = strlen(statistics_json);
                if (validation_json[0])
                    snprintf(statistics_json + used, sizeof statistics_json - used, "%s%s", used ? ", " : "",
                             validation_json);
            }
            metrics_log_step(&log, &m);
            if (validate_now && validation_line[0]) {
                printf("%s\n", validation_line);
                fflush(stdout);
            }
            if (overflow) {
                printf("step %lld: fp16 gradient overflow at loss scale %g, step skipped, scale halved to %g "
                       "(%lld skipped so far)\n", (long long)step + 1, loss_scale, t.progress.loss_scale,
                       (long long)t.progress.skipped_total);
                fflush(stdout);
            } else if (skip) {
                printf("step %lld: non-finite loss or gradient, step skipped (%lld skipped so far)\n",
                       (long long)step + 1, (long long)t.progress.skipped_total);
                fflush(stdout);
            }
        }
        stopped = comm_any(stop_requested);
        if (stopped || (step + 1) % config->train.ckpt_every == 0 || step + 1 == total_steps) {
            save_checkpoint(&t);
            last_saved = step + 1;
        }
        if (stopped) break;
    }
    if (!stopped && last_saved != t.progress.step && total_steps > 0) save_checkpoint(&t);

    if (rank == 0) {
        checkpoint_writer_finish(t.writer);
        metrics_log_close(&log);
        store->to_host(store);
        if (stopped) {
            printf("train: stopped by a signal at step %lld; continue with --resume auto\n",
                   (long long)t.progress.step);
        } else {
            char err[512];
            char *model_path = run_directory_path(job->run_dir, "model.safetensors");
            char *ema_path = run_directory_path(job->run_dir, "ema.safetensors");
            if (param_table_save_safetensors(model->table, model_path, 0, err, sizeof err) != 0)
                fatal_internal("%s", err);
            param_table_bind(model->table, t.ema, model->grads, model->fixed);
            if (param_table_save_safetensors(model->table, ema_path, 0, err, sizeof err) != 0)
                fatal_internal("%s", err);
            param_table_bind(model->table, model->params, model->grads, model->fixed);
            printf("train: done: %lld steps, %lld images; weights in %s, EMA in %s\n", (long long)t.progress.step,
                   (long long)t.progress.images_seen, model_path, ema_path);
            free(model_path);
            free(ema_path);
        }
        fflush(stdout);
    }
    /* Nobody leaves before rank 0 has written everything. */
    comm_barrier();
    if (model->host_buffer_free) model->host_buffer_free(b.x);
    else free(b.x);
    free(b.labels), free(b.index);
    free(validation_samples), free(validation_labels);
    free(t.ema);
    free(t.progress.loader);
    checkpoint_writer_destroy(t.writer);
    store->destroy(store);
    adamw_destroy(&t.optimizer);
    model->destroy(model);
    loader_close(t.data);
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
        .expect_channels = model->expect_channels,
        .expect_height = model->expect_size,
        .expect_width = model->expect_size,
        .expect_num_classes = model->expect_num_classes,
        .sigma_data = config->diffusion.sigma_data,
    };
}

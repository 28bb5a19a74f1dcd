/* The training loop (see training_loop.h). Randomness of a step is a pure
 * function of (seed, step, the sample's index in the data set): its noise level,
 * its noise and whether its label is dropped, so nothing depends on history, on
 * the world size, or on which rank holds the sample. All buffers are laid out
 * before the first step; a step allocates nothing. */
#include "training_loop.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm.h"
#include "dit.h"
#include "cli.h"
#include "edm.h"
#include "ema.h"
#include "fatal.h"
#include "grad_clip.h"
#include "loader.h"
#include "lr_schedule.h"
#include "metrics_log.h"
#include "optimizer.h"
#include "rng.h"
#include "run_directory.h"
#include "config.h"

/* Keys that separate the random streams of different purposes. */
#define PURPOSE_TRAINING_NOISE 0x747261696e6e6f69ull /* "trainnoi" */

/* The summed statistics of a step, reduced over ranks in one call:
 * [0] the sum of micro-batch mean losses, then per sigma bin the loss sum and the count. */
#define STAT_LOSS 0
#define STAT_BIN_LOSS 1
#define STAT_BIN_COUNT (1 + METRICS_SIGMA_BINS)
#define STAT_COUNT (1 + 2 * METRICS_SIGMA_BINS)

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

typedef struct {
    /* one micro-batch, P = C * H * W */
    float *x;        /* (B, P) clean samples */
    int32_t *labels; /* (B) from the loader, -1 without labels */
    int64_t *index;  /* (B) the samples' indices in the data set */
    int *y;          /* (B) labels given to the DiT, num_classes = the null class */
    float *sigma;    /* (B) */
    float *noise;    /* (B, P) */
    float *net_in;   /* (B, P) */
    float *t;        /* (B) */
    float *F;        /* (B, P) network output */
    float *d_F;      /* (B, P) */
    float *sample_loss; /* (B) */
} micro_batch_buffers;

static void micro_batch_buffers_create(micro_batch_buffers *b, int batch, int64_t per_sample) {
    size_t n = (size_t)batch * (size_t)per_sample;
    b->x = xmalloc(n * sizeof(float));
    b->labels = xmalloc((size_t)batch * sizeof(int32_t));
    b->index = xmalloc((size_t)batch * sizeof(int64_t));
    b->y = xmalloc((size_t)batch * sizeof(int));
    b->sigma = xmalloc((size_t)batch * sizeof(float));
    b->noise = xmalloc(n * sizeof(float));
    b->net_in = xmalloc(n * sizeof(float));
    b->t = xmalloc((size_t)batch * sizeof(float));
    b->F = xmalloc(n * sizeof(float));
    b->d_F = xmalloc(n * sizeof(float));
    b->sample_loss = xmalloc((size_t)batch * sizeof(float));
}

static void micro_batch_buffers_destroy(micro_batch_buffers *b) {
    free(b->x), free(b->labels), free(b->index), free(b->y), free(b->sigma), free(b->noise);
    free(b->net_in), free(b->t), free(b->F), free(b->d_F), free(b->sample_loss);
}

/* Each sample's noise level, noise and label from its own stream: (seed, step, index). */
static void draw_step_randomness(micro_batch_buffers *b, int batch, int64_t per_sample, const ldm_config *config,
                                 int64_t step) {
    uint64_t base = rng_hash(config->train.seed, PURPOSE_TRAINING_NOISE);
    int null_class = config->model.num_classes;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < batch; i++) {
        rng_stream rng = rng_stream_for(base, (uint64_t)step, (uint64_t)b->index[i]);
        b->sigma[i] = edm_draw_sigma(&rng, config->diffusion.p_mean, config->diffusion.p_std);
        int dropped = rng_uniform(&rng) < (float)config->model.class_dropout;
        b->y[i] = (b->labels[i] < 0 || dropped) ? null_class : b->labels[i];
        float *noise = b->noise + (size_t)i * (size_t)per_sample;
        for (int64_t j = 0; j < per_sample; j++) noise[j] = rng_normal(&rng);
    }
}

void training_run(const training_job *job) {
    const ldm_config *config = job->config;
    int rank = comm_rank(), world = comm_world_size();
    int micro, accumulation;
    training_batch_split(config, job->config_path, world, &micro, &accumulation);

    loader_options loader_config = training_loader_options(config, job->data_path, micro);
    loader *data = loader_open(&loader_config);
    const dataset_info *info = loader_info(data);
    int64_t per_sample = info->sample_elements;

    dit_shape shape = cli_dit_shape(config);
    dit_model model;
    dit_create(&model, &shape, micro);
    dit_init_weights(&model, config->train.seed);
    size_t count = model.table.trainable_numel;
    char *config_json = config_to_json(config);
    run_directory_prepare(job->run_dir, job->force, config_json);
    free(config_json);
    /* Every rank starts from rank 0's weights. */
    comm_broadcast(model.params, count * sizeof(float), 0);

    adamw_state optimizer;
    adamw_create(&optimizer, count,
                 (adamw_hyper){.beta1 = (float)config->train.adam_beta1, .beta2 = (float)config->train.adam_beta2,
                               .eps = (float)config->train.adam_eps, .weight_decay = (float)config->train.weight_decay});
    float *ema = xmalloc(count * sizeof(float)); /* (count) the EMA of the trainable parameters */
    memcpy(ema, model.params, count * sizeof(float));
    micro_batch_buffers b;
    micro_batch_buffers_create(&b, micro, per_sample);
    lr_schedule schedule = lr_schedule_from_config(&config->train);
    ema_schedule ema_rule = ema_schedule_from_config(&config->train);
    int64_t poison_first, poison_last;
    poisoned_steps(&poison_first, &poison_last);

    int64_t global_batch = config->train.batch_size, total_steps = config->train.steps;
    metrics_log log;
    if (rank == 0) {
        metrics_log_open(&log, job->run_dir, config->train.log_every, global_batch, 0);
        printf("train: %s: %lld %s %dx%dx%d%s; %d rank%s x micro-batch %d x %d accumulation = global batch %lld; "
               "DiT %.2fM parameters; run %s\n",
               job->data_path, (long long)info->count, info->kind == DATASET_IMAGES ? "images" : "latents",
               info->channels, info->height, info->width, info->has_labels ? "" : " (no labels: unconditional)",
               world, world == 1 ? "" : "s", micro, accumulation, (long long)global_batch, (double)count / 1e6,
               job->run_dir);
        fflush(stdout);
    }

    int64_t images_seen = 0, skipped_total = 0;
    int skipped_in_a_row = 0;
    for (int64_t step = 0; step < total_steps; step++) {
        double step_start = now_seconds();
        double stats[STAT_COUNT] = {0};
        dit_zero_grad(&model);
        for (int a = 0; a < accumulation; a++) {
            loader_next(data, b.x, b.labels, b.index);
            draw_step_randomness(&b, micro, per_sample, config, step);
            edm_training_input(b.net_in, b.t, b.x, b.sigma, b.noise, micro, (int)per_sample,
                               config->diffusion.sigma_data);
            dit_forward(&model, b.net_in, b.t, b.y, micro, b.F);
            /* Each micro-batch's mean loss enters with weight 1 / accumulation, so
             * the gradient is that of the mean over the rank's samples. */
            double loss = edm_training_loss(b.sample_loss, b.d_F, 1.0f / (float)accumulation, b.x, b.sigma, b.noise,
                                            b.F, micro, (int)per_sample, config->diffusion.sigma_data);
            dit_backward(&model, b.d_F, NULL, micro);
            stats[STAT_LOSS] += loss;
            for (int i = 0; i < micro; i++) {
                int bin = metrics_sigma_bin(b.sigma[i]);
                stats[STAT_BIN_LOSS + bin] += b.sample_loss[i];
                stats[STAT_BIN_COUNT + bin] += 1;
            }
        }
        if (step + 1 >= poison_first && step + 1 <= poison_last && rank == world - 1) model.grads[0] = INFINITY;
        comm_allreduce_mean(model.grads, (int64_t)count);
        comm_allreduce_sum_double(stats, STAT_COUNT);
        double loss = stats[STAT_LOSS] / (double)(world * accumulation);

        int skip = comm_any(!isfinite(loss) || !grad_all_finite(model.grads, count));
        double grad_norm = skip ? NAN : grad_clip_global_norm(model.grads, count, config->train.grad_clip);
        double lr = lr_at_step(&schedule, step);
        if (skip) {
            skipped_total++;
            if (++skipped_in_a_row >= config->train.max_nonfinite_steps)
                fatal_internal("training diverged: %d steps in a row with a non-finite loss or gradient, the last at "
                               "step %lld (train.max_nonfinite_steps); lower train.lr or raise train.grad_clip",
                               skipped_in_a_row, (long long)step + 1);
        } else {
            skipped_in_a_row = 0;
            adamw_step(&optimizer, model.params, model.grads, (float)lr);
            ema_update(ema, model.params, count, ema_decay_at(&ema_rule, step, images_seen, global_batch));
        }
        images_seen += global_batch;

        if (rank == 0) {
            metrics_step m = {.step = step + 1, .total_steps = total_steps, .images_seen = images_seen,
                              .loss = loss, .grad_norm = grad_norm, .lr = lr,
                              .step_seconds = now_seconds() - step_start, .skipped = skip,
                              .skipped_total = skipped_total};
            for (int bin = 0; bin < METRICS_SIGMA_BINS; bin++) {
                m.count_by_sigma[bin] = (int64_t)stats[STAT_BIN_COUNT + bin];
                m.loss_by_sigma[bin] = m.count_by_sigma[bin] ? stats[STAT_BIN_LOSS + bin] / stats[STAT_BIN_COUNT + bin] : 0;
            }
            metrics_log_step(&log, &m);
            if (skip) {
                printf("step %lld: non-finite loss or gradient, step skipped (%lld skipped so far)\n",
                       (long long)step + 1, (long long)skipped_total);
                fflush(stdout);
            }
        }
    }

    if (rank == 0) {
        metrics_log_close(&log);
        char err[512];
        char *model_path = run_directory_path(job->run_dir, "model.safetensors");
        char *ema_path = run_directory_path(job->run_dir, "ema.safetensors");
        if (param_table_save_safetensors(&model.table, model_path, 0, err, sizeof err) != 0) fatal_internal("%s", err);
        param_table_bind(&model.table, ema, model.grads, model.fixed);
        if (param_table_save_safetensors(&model.table, ema_path, 0, err, sizeof err) != 0) fatal_internal("%s", err);
        param_table_bind(&model.table, model.params, model.grads, model.fixed);
        printf("train: done: %lld steps, %lld images; weights in %s, EMA in %s\n", (long long)total_steps,
               (long long)images_seen, model_path, ema_path);
        fflush(stdout);
        free(model_path);
        free(ema_path);
    }
    comm_barrier();
    micro_batch_buffers_destroy(&b);
    free(ema);
    adamw_destroy(&optimizer);
    dit_destroy(&model);
    loader_close(data);
}

loader_options training_loader_options(const ldm_config *config, const char *data_path, int micro_batch) {
    return (loader_options){
        .path = data_path,
        .batch_size = micro_batch,
        .seed = config->train.seed,
        .flip = config->data.flip,
        .memory_budget_bytes = (int64_t)config->data.memory_budget_mb << 20,
        .prefetch_batches = config->data.prefetch_batches,
        .expect_channels = config->model.in_channels,
        .expect_height = config->model.input_size,
        .expect_width = config->model.input_size,
        .expect_num_classes = config->model.num_classes,
        .sigma_data = config->diffusion.sigma_data,
    };
}

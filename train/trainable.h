/* What the training loop trains: a model seen as one flat parameter vector
 * (with names, for checkpoints and the all-reduce) and a micro-batch step that
 * computes its loss on a batch of data and accumulates the gradient. The DiT
 * under EDM (dit_trainable.c), the autoencoder and the consistency
 * distillation of a DiT (distill_trainable.c) are trainables; the loop,
 * the optimizer, EMA, checkpoints and metrics are shared. */
#ifndef LDM_TRAINABLE_H
#define LDM_TRAINABLE_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "dataset_file.h"
#include "params.h"

/* Statistics a micro-batch adds to (summed over micro-batches and ranks). */
#define TRAINABLE_MAX_STATISTICS 32

/* What validation sees besides the model. */
typedef struct {
    const float *ema;              /* (count) the EMA weights */
    const float *samples;          /* (count, C, H, W) held-out samples, or NULL */
    const int32_t *labels;         /* (count) their labels (-1 without) */
    int count;                     /* held-out samples (0: none) */
    int64_t step;                  /* steps done */
    const char *run_dir;
    const dataset_info *data;      /* the training data set (latents: their statistics) */
    const char *autoencoder;       /* ldm train --ae: decodes the pictures of a latents model; NULL: the data's */
} trainable_validation;

typedef struct trainable trainable;
struct trainable {
    const char *kind;          /* "dit", "autoencoder": recorded in state.json */
    const char *shape_section; /* the config section that fixes the model's shape ("model", "autoencoder") */
    /* Keys of that section that are training settings and may change on resume. */
    const char *const *settings_keys;
    param_table *table;        /* names and shapes; bound to params/grads/fixed */
    float *params, *grads;     /* (count) */
    float *fixed;              /* (table->fixed_numel) fixed buffers, or NULL */
    size_t count;              /* trainable parameters */
    /* The data the model expects: sample shape, and labels below num_classes (0 = any). */
    int expect_channels, expect_size, expect_num_classes;
    int statistic_count;       /* <= TRAINABLE_MAX_STATISTICS */

    void (*zero_grad)(trainable *self);
    /* One micro-batch: samples (batch, C, H, W) from the loader, labels (batch)
     * (-1 without), index (batch) the samples' rows in the data set, step the
     * optimizer step (from 0). Returns the micro-batch's mean loss and adds
     * loss_weight times its gradient to grads; adds to statistics
     * (statistic_count). Randomness must be a function of (seed, step, index). */
    double (*micro_batch)(trainable *self, const float *samples, const int32_t *labels, const int64_t *index,
                          int batch, int64_t step, float loss_weight, double *statistics);
    /* The step's statistics, summed over micro-batches and ranks, as JSON
     * members for metrics.jsonl ("\"name\": value, ..."), and a short text for
     * the progress line ("" for none). */
    void (*statistics_json)(const trainable *self, const double *statistics, char *out, size_t out_size);
    /* Optional (NULL: none). On rank 0 between steps, every train.sample_every
     * steps and at the end: evaluates the model (on held-out samples, or by
     * sampling from its EMA weights), writes what it shows under run_dir (e.g.
     * samples/step-N.png), and returns JSON members for metrics.jsonl and a line
     * for the progress output. Runs only with held-out data unless
     * validates_without_data. */
    void (*validate)(trainable *self, const trainable_validation *context, char *json, size_t json_size, char *line,
                     size_t line_size);
    int validates_without_data;
    /* Optional: on rank 0 before the first step, lays out what validate needs
     * beyond the model (e.g. the autoencoder that decodes pictures); bad input
     * (a wrong --ae) is refused here, before training starts. */
    void (*prepare_validation)(trainable *self, const trainable_validation *context);
    void (*destroy)(trainable *self);
    void *self;                /* the implementation's own state */
    /* Optional (NULL: none). On every rank after each optimizer step that was
     * taken (not after a skipped one): distillation's target network follows
     * the new params here. */
    void (*after_step)(trainable *self);
    /* Optional (NULL: none): more weights laid out like params (count values,
     * the same table) that are training state, e.g. distillation's target
     * network: saved as "<extra_name>.safetensors" in every checkpoint and
     * restored on resume, so that resume stays exact. */
    float *extra_state;
    const char *extra_name;
    /* Optional (NULL: none): one more member of state.json, named
     * state_record_name, whose value is the JSON object state_record_json
     * (distillation: that the model is a consistency model, its teacher and
     * its sigma points). */
    const char *state_record_name, *state_record_json;
    /* Optional (NULL: no check): on resume, given the record the checkpoint
     * holds (saved_json) and this run's (state_record_json), fatal_input naming
     * source when the run cannot continue with this one (distillation: another
     * teacher, guidance or discretisation). */
    void (*check_saved_record)(const char *saved_json, const char *current_json, const char *source);
    /* Optional (NULL: on the host): a trainable on the GPU keeps its params and
     * gradients in device memory (count floats each, DEVICE pointers). Its
     * micro_batch and zero_grad work on device_grads and read device_params;
     * params and grads above are then host mirrors that the loop's parameter
     * store (parameter_store.h) refreshes only when it saves or validates. */
    float *device_params, *device_grads;
    /* Optional (NULL: malloc/free): how the loop allocates the host buffers the
     * loader fills for micro_batch (the samples); the GPU trainable gives
     * page-locked memory, from which its copies to the device run asynchronously. */
    void *(*host_buffer_alloc)(size_t bytes);
    void (*host_buffer_free)(void *host);
    /* Optional, for a trainable on the GPU whose backward pass can hand over
     * slices of the gradient as they become final (NULL / 0: it cannot): the
     * stream its backward runs on, and the most slices it hands over per step.
     * The parameter store then sets bucket_ready (with bucket_context), which
     * the trainable calls for each slice [offset, offset + count) of
     * device_grads during the backward pass of the step's final micro-batch
     * (final_micro_batch, set by the loop before each micro_batch), in the same
     * order on every rank; the store starts their all-reduce at once. */
    struct CUstream_st *device_stream;
    int device_buckets;
    void (*bucket_ready)(void *context, size_t offset, size_t count);
    void *bucket_context;
    int final_micro_batch;
};

/* The DiT denoiser trained with EDM (train/dit_trainable.c), for batches of up
 * to micro_batch samples. */
trainable *dit_trainable_create(const ldm_config *config, int micro_batch);
/* The KL autoencoder (train/autoencoder_trainable.c): reconstruction + beta KL,
 * validated by reconstruction PSNR and a picture of originals and reconstructions. */
trainable *autoencoder_trainable_create(const ldm_config *config, int micro_batch);
/* Consistency distillation (train/distill_trainable.c): a student DiT that
 * starts from the teacher's EMA weights, the frozen teacher, and the target
 * network (an EMA of the student); context is a distill_context. */
typedef struct {
    const char *teacher_checkpoint; /* rank 0 reads its ema.safetensors */
    const char *record_json;        /* state.json's "consistency" object */
} distill_context;
trainable *distill_trainable_create(const ldm_config *config, int micro_batch, const void *context);

#endif

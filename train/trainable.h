/* What the training loop trains: a model seen as one flat parameter vector
 * (with names, for checkpoints and the all-reduce) and a micro-batch step that
 * computes its loss on a batch of data and accumulates the gradient. The DiT
 * under EDM (dit_trainable.c), the autoencoder and the consistency
 * distillation of a DiT (distill_trainable.c) are trainables; the loop,
 * the optimizer, EMA, checkpoints and metrics are shared.
 *
 * The core below is what every trainable has. What only some have comes as
 * optional capabilities, NULL when absent: residency on a GPU
 * (trainable_device), training state beyond the weights (trainable_extra_state)
 * and validation (trainable_validator). The loop writes nothing into a
 * trainable: what changes from call to call is an argument. */
#ifndef LDM_TRAINABLE_H
#define LDM_TRAINABLE_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "dataset_file.h"
#include "params.h"

/* Statistics a micro-batch adds to (summed over micro-batches and ranks). */
#define TRAINABLE_MAX_STATISTICS 32

typedef struct trainable trainable;

/* Where a trainable on the GPU hands over slices [offset, offset + count) of
 * its device gradient as its backward pass finishes them, so that their
 * all-reduce starts at once: the parameter store's, given to the step's final
 * micro-batch only (the one whose backward makes the gradient final). The
 * slices come in the same order on every rank. */
typedef struct {
    void (*ready)(void *context, size_t offset, size_t count);
    void *context;
} gradient_handover;

/* Capability: params and gradients in GPU memory. micro_batch and zero_grad
 * work on grads here and read params here; the core's params and grads are
 * then host mirrors that the loop's parameter store (parameter_store.h)
 * refreshes only when it saves or validates. */
typedef struct {
    float *params, *grads; /* DEVICE (count) */
    /* How the loop allocates the host buffers the loader fills for
     * micro_batch (the samples): page-locked memory, from which copies to the
     * device run asynchronously. */
    void *(*host_buffer_alloc)(size_t bytes);
    void (*host_buffer_free)(void *host);
    /* The stream its backward runs on, and the most gradient slices it hands
     * over per step (gradient_handover); 0: it hands over none. */
    struct CUstream_st *stream;
    int gradient_slices;
} trainable_device;

/* Capability: training state beyond the weights (distillation's target
 * network, an EMA of the student). */
typedef struct {
    /* (count) weights laid out like params (the same table), saved as
     * "<name>.safetensors" in every checkpoint and restored on resume, so that
     * resume stays exact. */
    float *weights;
    const char *name;
    /* A trainable on the GPU keeps the live weights there (DEVICE (count), or
     * NULL on the host): weights is then their host mirror, which the GPU
     * parameter store refreshes with the other mirrors (to_host) and sends
     * back after resume (from_host); after_step updates the device's. */
    float *device_weights;
    /* On every rank after each optimizer step that was taken (not after a
     * skipped one): the weights follow the new params. */
    void (*after_step)(trainable *self);
    /* One more member of state.json, named record_name, whose value is the
     * JSON object record_json (distillation: that the model is a consistency
     * model, its teacher and its sigma points). NULL: none. */
    const char *record_name, *record_json;
    /* Optional (NULL: no check): on resume, given the record the checkpoint
     * holds (saved_json) and this run's (record_json), fatal_input naming
     * source when the run cannot continue with this one (distillation:
     * another teacher, guidance or discretisation). */
    void (*check_saved_record)(const char *saved_json, const char *current_json, const char *source);
} trainable_extra_state;

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
} validation_context;

/* Capability: evaluating the model on rank 0 between steps, every
 * train.sample_every steps and at the end. Owned by the trainable (it
 * destroys it); the implementation's state follows this header in memory. */
typedef struct trainable_validator trainable_validator;
struct trainable_validator {
    /* Runs only with held-out data unless set. */
    int without_data;
    /* Optional: before the first step, lays out what validate needs beyond
     * the model (e.g. the autoencoder that decodes pictures); bad input (a
     * wrong --ae) is refused here, before training starts. */
    void (*prepare)(trainable_validator *self, const validation_context *context);
    /* Evaluates the model (on held-out samples, or by sampling from its EMA
     * weights), writes what it shows under run_dir (a picture as
     * samples/step-%08lld.png, which TensorBoard shows too), and returns JSON members for metrics.jsonl and a
     * line for the progress output. */
    void (*validate)(trainable_validator *self, const validation_context *context, char *json, size_t json_size,
                     char *line, size_t line_size);
    void (*destroy)(trainable_validator *self);
};

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
     * (statistic_count). Randomness must be a function of (seed, step, index).
     * handover: where the gradient's finished slices go during this call's
     * backward; given only on the step's final micro-batch, to a trainable
     * whose device capability hands over slices, by a store that averages
     * during backward; else NULL (and ignored by trainables on the host). */
    double (*micro_batch)(trainable *self, const float *samples, const int32_t *labels, const int64_t *index,
                          int batch, int64_t step, float loss_weight, const gradient_handover *handover,
                          double *statistics);
    /* The step's statistics, summed over micro-batches and ranks, as JSON
     * members for metrics.jsonl ("\"name\": value, ..."). */
    void (*statistics_json)(const trainable *self, const double *statistics, char *out, size_t out_size);
    void (*destroy)(trainable *self);
    void *self;                /* the implementation's own state */

    /* Optional capabilities (NULL: absent). */
    const trainable_device *device;
    const trainable_extra_state *extra;
    trainable_validator *validation;
};

#endif

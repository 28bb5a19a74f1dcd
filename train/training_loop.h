/* The data-parallel training loop of `ldm train`: every rank holds the whole
 * DiT, reads its shard through the loader, computes the EDM loss and gradients
 * on its micro-batches (accumulating over accumulation steps), and the ranks
 * average gradients (comm_allreduce_mean) before one AdamW step, clipping, and
 * the EMA update, identical on every rank. Global batch = world size x
 * micro-batch x accumulation steps, and the same global batch gives the same
 * updates (to rounding) whatever the world size. */
#ifndef LDM_TRAINING_LOOP_H
#define LDM_TRAINING_LOOP_H

#include "config.h"
#include "loader.h"
#include "trainable.h"

typedef struct {
    const ldm_config *config;
    const char *config_path; /* for error lines: the --config file (or NULL) */
    const char *data_path;
    const char *validation_path; /* held-out data for the model's validation, or NULL */
    const char *autoencoder_path; /* ldm train --ae (pictures of a latents model), or NULL */
    const char *run_dir;
    int force;               /* start over in a run directory holding another run */
    const char *resume;
    /* A new run's starting weights (ldm train --init, init_weights.h), or NULL;
     * a run that resumes from a checkpoint ignores it. */
    const char *init_weights;
    /* Builds the model to train for a micro-batch size (dit_trainable_create, ...). */
    trainable *(*create_model)(const ldm_config *config, int micro_batch);
    /* Or, when set, with a context the command prepared (ldm distill: the teacher). */
    trainable *(*create_model_with)(const ldm_config *config, int micro_batch, const void *context);
    const void *model_context;      /* NULL, "auto" (the run's newest good checkpoint, if any) or a checkpoint/run path */
} training_job;

/* Micro-batch and accumulation steps for a world size: micro_batch 0 means
 * batch_size / world_size. fatal_input naming the keys when the global batch
 * does not split evenly. */
void training_batch_split(const ldm_config *config, const char *config_path, int world_size, int *micro_batch,
                          int *accumulation_steps);

/* The loader settings a config gives (data section, the model's expected
 * sample shape and classes, the rank's micro-batch). */
loader_options training_loader_options(const ldm_config *config, const trainable *model, const char *data_path,
                                       int micro_batch);

/* Runs the whole job (collective): opens the data set and lays out the model
 * (so that bad input is refused before anything is written), resumes from a
 * checkpoint when asked, prepares the run directory, trains with a checkpoint
 * every train.ckpt_every steps and at the end, and writes RUN/model.safetensors
 * and RUN/ema.safetensors. SIGTERM or SIGUSR1 on any rank: a checkpoint at the
 * next step boundary, and it returns 1 (stopped) on every rank; else 0. */
int training_run(const training_job *job);

#endif

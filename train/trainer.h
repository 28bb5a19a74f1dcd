/* One training run's state, shared by the parts the loop (training_loop.c) is
 * built from: the checkpoints (training_checkpoints.h), the loss scaler, the
 * step report, validation and export. Everything a step changes and a
 * checkpoint saves is here. */
#ifndef LDM_TRAINER_H
#define LDM_TRAINER_H

#include <stdint.h>
#include <stdio.h>

#include "checkpoint_writer.h"
#include "loader.h"
#include "loss_scaler.h"
#include "optimizer.h"
#include "parameter_store.h"
#include "trainable.h"
#include "training_loop.h"
#include "training_state.h"

typedef struct {
    const training_job *job;
    int rank, world;
    int micro_batch, accumulation; /* per rank: global batch = world x micro_batch x accumulation */
    loader *data;
    trainable *model;
    adamw_state optimizer;
    float *ema;                 /* (model->count) */
    parameter_store *store;     /* the step's vectors: host, or the GPU with host mirrors */
    checkpoint_writer *writer;  /* rank 0: writes checkpoints beside training */
    loss_scaler scaler;
    training_state progress;    /* step, images seen, skipped counts, loss scale; loader filled in when saving */
    int64_t saved_step;         /* the step of the newest checkpoint saved or resumed from; -1: none */
    /* Test hook: with LDM_TEST_SAMPLE_LOG=PREFIX each rank appends "step position
     * row" for every sample it trains on to PREFIX.RANK (the elastic-order tests). */
    FILE *sample_log;
} trainer;

#endif

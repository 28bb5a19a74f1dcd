/* What a finished training run leaves beside its checkpoints: the final
 * weights as RUN/model.safetensors and their EMA as RUN/ema.safetensors (the
 * files `ldm sample`, `ldm encode` and `ldm distill` read), and the line that
 * says where they are. */
#ifndef LDM_TRAINING_EXPORT_H
#define LDM_TRAINING_EXPORT_H

#include "trainable.h"
#include "training_state.h"

/* Rank 0, with the model's host params and ema (model->count) up to date. */
void training_export(const char *run_dir, trainable *model, float *ema, const training_state *progress);

#endif

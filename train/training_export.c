/* See training_export.h. */
#include "training_export.h"

#include <stdio.h>
#include <stdlib.h>

#include "fatal.h"
#include "run_directory.h"

void training_export(const char *run_dir, trainable *model, float *ema, const training_state *progress) {
    char err[512];
    char *model_path = run_directory_path(run_dir, "model.safetensors");
    char *ema_path = run_directory_path(run_dir, "ema.safetensors");
    if (param_table_save_safetensors(model->table, model_path, 0, err, sizeof err) != 0) fatal_internal("%s", err);
    /* The table writes what it is bound to: the EMA for a moment. */
    param_table_bind(model->table, ema, model->grads, model->fixed);
    if (param_table_save_safetensors(model->table, ema_path, 0, err, sizeof err) != 0) fatal_internal("%s", err);
    param_table_bind(model->table, model->params, model->grads, model->fixed);
    printf("train: done: %lld steps, %lld images; weights in %s, EMA in %s\n", (long long)progress->step,
           (long long)progress->images_seen, model_path, ema_path);
    free(model_path);
    free(ema_path);
}

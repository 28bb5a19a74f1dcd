/* See training_export.h. */
#include "training_export.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "disk_space.h"
#include "fatal.h"
#include "run_directory.h"

/* On a full disk, one line saying so (exit status 2): the newest checkpoint
 * holds the finished run, and --resume auto writes the exports again. */
static __attribute__((noreturn)) void export_failed(const char *path, int error_number, const char *err) {
    char full[512];
    if (disk_full_describe(path, error_number, full, sizeof full))
        fatal_input("%s: cannot write: %s; free space, then resume with --resume auto", path, full);
    fatal_internal("%s", err);
}

void training_export(const char *run_dir, trainable *model, float *ema, const training_state *progress) {
    char err[512];
    char *model_path = run_directory_path(run_dir, "model.safetensors");
    char *ema_path = run_directory_path(run_dir, "ema.safetensors");
    if (param_table_save_safetensors(model->table, model_path, 0, err, sizeof err) != 0)
        export_failed(model_path, errno, err);
    /* The table writes what it is bound to: the EMA for a moment. */
    param_table_bind(model->table, ema, model->grads, model->fixed);
    if (param_table_save_safetensors(model->table, ema_path, 0, err, sizeof err) != 0)
        export_failed(ema_path, errno, err);
    param_table_bind(model->table, model->params, model->grads, model->fixed);
    printf("train: done: %lld steps, %lld images; weights in %s, EMA in %s\n", (long long)progress->step,
           (long long)progress->images_seen, model_path, ema_path);
    free(model_path);
    free(ema_path);
}

/* See training_checkpoints.h. */
#include "training_checkpoints.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "comm.h"
#include "fatal.h"

static void save_checkpoint(trainer *t) {
    loader_state mine = loader_get_state(t->data);
    comm_gather(&mine, sizeof mine, t->progress.loader, 0);
    t->saved_step = t->progress.step;
    if (t->rank != 0) return;
    t->store->to_host(t->store);
    const ldm_config *config = t->job->config;
    const trainable *model = t->model;
    const trainable_extra_state *extra = model->extra;
    char *state_json = training_state_to_json(&t->progress, model->kind, config, t->job->data_path,
                                              loader_info(t->data));
    if (extra && extra->record_name)
        state_json = training_state_with_record(state_json, extra->record_name, extra->record_json);
    checkpoint_contents contents = {.table = model->table, .params = model->params, .ema = t->ema,
                                    .fixed = model->fixed, .adam_m = t->optimizer.m, .adam_v = t->optimizer.v,
                                    .adam_step = t->optimizer.step, .state_json = state_json,
                                    .extra = extra ? extra->weights : NULL, .extra_name = extra ? extra->name : NULL};
    checkpoint_writer_start(t->writer, t->job->run_dir, t->progress.step, &contents, config->train.ckpt_keep,
                            config->train.ckpt_keep_every);
    free(state_json);
}

void training_checkpoint_after_step(trainer *t, int stopped) {
    const int64_t done = t->progress.step;
    if (stopped || done % t->job->config->train.ckpt_every == 0 || done == t->job->config->train.steps)
        save_checkpoint(t);
}

void training_checkpoint_at_end(trainer *t, int stopped) {
    if (!stopped && t->saved_step != t->progress.step && t->job->config->train.steps > 0) save_checkpoint(t);
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

/* Rank 0: the checkpoint's tensors into this run's buffers. */
static void load_checkpoint(trainer *t, const char *found, checkpoint_loaded *loaded) {
    trainable *model = t->model;
    checkpoint_load(found, loaded);
    training_state_check_compatible(loaded->state_json, found, model, t->job->config, loader_info(t->data));
    checkpoint_copy_weights(loaded, &loaded->model, model->table, model->params, NULL);
    checkpoint_copy_weights(loaded, &loaded->ema, model->table, t->ema, NULL);
    checkpoint_copy_moments(loaded, model->table, t->optimizer.m, t->optimizer.v);
    if (model->extra) {
        safetensors_file extra;
        checkpoint_read_extra(found, model->extra->name, &extra);
        checkpoint_copy_weights(loaded, &extra, model->table, model->extra->weights, NULL);
        safetensors_free(&extra);
    }
    t->optimizer.step = loaded->adam_step;
}

/* Rank 0's vectors and optimizer step to every rank. */
static void broadcast_vectors(trainer *t) {
    const size_t bytes = t->model->count * sizeof(float);
    comm_broadcast(t->model->params, bytes, 0);
    comm_broadcast(t->ema, bytes, 0);
    comm_broadcast(t->optimizer.m, bytes, 0);
    comm_broadcast(t->optimizer.v, bytes, 0);
    comm_broadcast(&t->optimizer.step, sizeof t->optimizer.step, 0);
    if (t->model->extra) comm_broadcast(t->model->extra->weights, bytes, 0);
}

int training_resume(trainer *t) {
    const training_job *job = t->job;
    const char *where = strcmp(job->resume, "auto") == 0 ? job->run_dir : job->resume;
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
            load_checkpoint(t, found, &loaded);
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
    broadcast_vectors(t);

    training_state saved;
    training_state_parse(state_json, found ? found : "state.json", &saved);
    loader_set_state(t->data, training_state_loader_for_rank(&saved, loader_info(t->data)->count, t->rank, t->world));
    t->progress.step = saved.step;
    t->progress.images_seen = saved.images_seen;
    t->progress.skipped_total = saved.skipped_total;
    t->progress.skipped_in_a_row = saved.skipped_in_a_row;
    t->progress.loss_scale = saved.loss_scale;
    t->progress.loss_scale_good_steps = saved.loss_scale_good_steps;
    loss_scaler_resume(&t->scaler, &t->progress, state_json);
    t->saved_step = saved.step;
    if (t->rank == 0) {
        printf("train: resuming from %s at step %lld (saved by %d rank%s%s)\n", found, (long long)saved.step,
               saved.world_size, saved.world_size == 1 ? "" : "s",
               saved.world_size == t->world ? ""
               : saved.version < 2 ? "; another world size, from a checkpoint of the older loader: the data "
                                     "order starts anew after the samples already read"
                                   : "; another world size: the same data order continues");
        fflush(stdout);
        checkpoint_loaded_free(&loaded);
        free(found);
    } else {
        free(state_json);
    }
    training_state_free(&saved);
    return 1;
}

/* `ldm distill`: consistency distillation of a trained DiT (the teacher) into a
 * student that samples in 1, 2 or 4 steps.
 *   ldm distill --teacher RUN_OR_CKPT --config F --data D --run DIR [--set k=v ...]
 *               [--force | --resume auto|PATH]
 * The options, the config and the training loop are ldm train's
 * (train_command.c); this file readies the job from the teacher: rank 0 finds
 * its checkpoint (of kind "dit"), and every rank checks that the config
 * describes the teacher's model (every model key but class_dropout, and
 * diffusion.sigma_data) and that the data set is of the teacher's kind (images
 * or latents; latents normalised by the same statistics). The student's
 * state.json records the consistency model (consistency_record.h). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint_model.h"
#include "commands.h"
#include "comm.h"
#include "consistency_record.h"
#include "dataset_file.h"
#include "fatal.h"
#include "trainable.h"
#include "trainables.h"

typedef struct {
    distill_context context;
    char *checkpoint, *record;
} prepared_teacher;

/* The value of section.key in a config's JSON (printed, caller frees), or NULL. */
static char *config_value(const cJSON *config, const char *section, const char *key) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(config, section), key);
    char *printed = item ? cJSON_PrintUnformatted(item) : NULL;
    char *copy = printed ? xstrdup(printed) : NULL;
    cJSON_free(printed);
    return copy;
}

/* The student is the teacher's network: every model key but class_dropout (not
 * used by distillation), and sigma_data (the preconditioning), must agree. */
static void check_teacher_shape(const ldm_config *config, const char *config_path, const ldm_config *teacher,
                                const char *checkpoint) {
    char *mine_text = config_to_json(config), *theirs_text = config_to_json(teacher);
    cJSON *mine = cJSON_Parse(mine_text), *theirs = cJSON_Parse(theirs_text);
    free(mine_text), free(theirs_text);
    const cJSON *key;
    const char *section = "model";
    for (int pass = 0; pass < 2; pass++, section = "diffusion")
        cJSON_ArrayForEach(key, cJSON_GetObjectItemCaseSensitive(mine, section)) {
            if (pass == 0 && strcmp(key->string, "class_dropout") == 0) continue;
            if (pass == 1 && strcmp(key->string, "sigma_data") != 0) continue;
            char *a = config_value(mine, section, key->string), *b = config_value(theirs, section, key->string);
            if (!a || !b || strcmp(a, b) != 0)
                fatal_input("%s: the teacher has %s.%s = %s, but %s says %s (the student is the teacher's network: "
                            "give the config the teacher's model section)", checkpoint, section, key->string,
                            b ? b : "nothing", config_path ? config_path : "the default config", a ? a : "nothing");
            free(a), free(b);
        }
    cJSON_Delete(mine), cJSON_Delete(theirs);
}

/* state.json holds numbers as text, printed by cJSON with 15 significant digits
 * when that reads back within a rounding of the value: equal to 1e-12 relative. */
static int same_statistic(double a, double b) { return fabs(a - b) <= 1e-12 * fmax(fabs(a), fabs(b)); }

/* The data set holds what the teacher was trained on: the same kind, and for
 * latents the same normalisation (else the teacher would see other inputs). */
static void check_data(const char *data_path, const checkpoint_data *teacher, const char *checkpoint) {
    dataset_info info;
    dataset_info_open(data_path, &info);
    const char *kind = info.kind == DATASET_IMAGES ? "images" : "latents";
    if (teacher->kind[0] && strcmp(teacher->kind, kind) != 0)
        fatal_input("%s: holds %s, but the teacher %s was trained on %s", data_path, kind, checkpoint, teacher->kind);
    if (info.kind == DATASET_LATENTS && teacher->has_latent_statistics)
        for (int c = 0; c < info.channels && c < CHECKPOINT_DATA_MAX_CHANNELS; c++)
            if (!same_statistic(info.latent_mean[c], teacher->latent_mean[c]) ||
                !same_statistic(info.latent_std[c], teacher->latent_std[c]))
                fatal_input("%s: latent_mean / latent_std of channel %d (%g, %g) differ from those the teacher %s "
                            "was trained with (%g, %g): distill on the teacher's latents", data_path, c,
                            info.latent_mean[c], info.latent_std[c], checkpoint, teacher->latent_mean[c],
                            teacher->latent_std[c]);
    dataset_info_free(&info);
}

static void *prepare_teacher(training_job *job, const char *teacher) {
    char *config_text = NULL, *checkpoint = NULL;
    long long step = 0;
    checkpoint_data data;
    const checkpoint_model_request request = {"distill", "teacher", "dit", "train", NULL, NULL};
    if (comm_rank() == 0) config_text = checkpoint_model_find(&request, teacher, &checkpoint, &step, &data);
    config_text = checkpoint_model_broadcast_string(config_text);
    checkpoint = checkpoint_model_broadcast_string(checkpoint);
    comm_broadcast(&step, sizeof step, 0);
    comm_broadcast(&data, sizeof data, 0);
    ldm_config teacher_config;
    char source[4200], err[1024];
    snprintf(source, sizeof source, "%s/state.json: config", checkpoint);
    if (config_load_json_text(&teacher_config, config_text, source, NULL, 0, err, sizeof err) != 0)
        fatal_input("%s", err);
    free(config_text);
    check_teacher_shape(job->config, job->config_path, &teacher_config, checkpoint);
    check_data(job->data_path, &data, checkpoint);

    prepared_teacher *p = xcalloc(1, sizeof *p);
    char *description = checkpoint_model_description(checkpoint, step, "ema");
    p->checkpoint = checkpoint;
    p->record = consistency_record_json(job->config, description);
    free(description);
    p->context = (distill_context){.teacher_checkpoint = p->checkpoint, .record_json = p->record};
    job->create_model_with = distill_trainable_create;
    job->model_context = &p->context;
    if (comm_rank() == 0) {
        const distill_config *dc = &job->config->distill;
        char guidance[96];
        if (dc->guidance_max > 0)
            snprintf(guidance, sizeof guidance, "%g to %g (an input of the student)", dc->guidance, dc->guidance_max);
        else
            snprintf(guidance, sizeof guidance, "%g", dc->guidance);
        printf("distill: teacher %s (step %lld, EMA weights), guidance %s, %d points in [%g, %g], %s loss, target "
               "EMA %g\n", checkpoint, step, guidance, dc->num_points, dc->sigma_min, dc->sigma_max, dc->loss,
               dc->target_ema);
        fflush(stdout);
    }
    return p;
}

static void release_teacher(void *prepared) {
    prepared_teacher *p = prepared;
    free(p->checkpoint);
    free(p->record);
    free(p);
}

int command_distill(int argc, char **argv) {
    const training_command spec = {
        "distill",
        "Consistency distillation (Song et al. 2023) of a DiT trained by ldm train (--teacher, its EMA weights) into "
        "a student that ldm sample runs in 1, 2 or 4 steps; config section distill; data-parallel over the ranks of "
        "mpirun like ldm train.",
        NULL, prepare_teacher, release_teacher};
    return training_command_run(&spec, argc, argv);
}

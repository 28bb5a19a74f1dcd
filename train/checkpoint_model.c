/* See checkpoint_model.h. */
#include "checkpoint_model.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "atomic_file.h"
#include "autoencoder_diffusers.h"
#include "checkpoint.h"
#include "model_shapes.h"
#include "comm.h"
#include "fatal.h"

#define STATE_MAX_BYTES (64 << 20)

/* state.json of DIR as text (caller frees); fatal_input when unreadable. */
static char *read_state_text(const char *dir) {
    char *path = path_join(dir, "state.json");
    FILE *f = fopen(path, "rb");
    struct stat info;
    if (!f || fstat(fileno(f), &info) != 0 || !S_ISREG(info.st_mode) || info.st_size > STATE_MAX_BYTES)
        fatal_input("%s: cannot read: %s", path, f ? "not a file, or too large" : strerror(errno));
    size_t size = (size_t)info.st_size;
    char *text = xmalloc(size + 1);
    size_t got = fread(text, 1, size, f);
    fclose(f);
    if (got != size) fatal_input("%s: cannot read", path);
    text[size] = '\0';
    free(path);
    return text;
}

/* state.json's "data" object (may be missing) into *data. */
static void read_data_record(const cJSON *d, const char *source, checkpoint_data *data) {
    memset(data, 0, sizeof *data);
    data->latent_scaling_factor = 1.0;
    if (!cJSON_IsObject(d)) return;
    const cJSON *scaling = cJSON_GetObjectItemCaseSensitive(d, "latent_scaling_factor");
    const cJSON *shift = cJSON_GetObjectItemCaseSensitive(d, "latent_shift_factor");
    if (scaling && (!cJSON_IsNumber(scaling) || !(scaling->valuedouble > 0) || !isfinite(scaling->valuedouble)))
        fatal_input("%s: data.latent_scaling_factor: expected a finite number > 0", source);
    if (shift && (!cJSON_IsNumber(shift) || !isfinite(shift->valuedouble)))
        fatal_input("%s: data.latent_shift_factor: expected a finite number", source);
    if (scaling) data->latent_scaling_factor = scaling->valuedouble;
    if (shift) data->latent_shift_factor = shift->valuedouble;
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(d, "kind");
    if (cJSON_IsString(kind)) snprintf(data->kind, sizeof data->kind, "%s", kind->valuestring);
    const cJSON *channels = cJSON_GetObjectItemCaseSensitive(d, "channels");
    if (cJSON_IsNumber(channels)) data->channels = channels->valueint;
    const cJSON *autoencoder = cJSON_GetObjectItemCaseSensitive(d, "autoencoder");
    if (cJSON_IsString(autoencoder)) snprintf(data->autoencoder, sizeof data->autoencoder, "%s", autoencoder->valuestring);
    const cJSON *mean = cJSON_GetObjectItemCaseSensitive(d, "latent_mean");
    const cJSON *std = cJSON_GetObjectItemCaseSensitive(d, "latent_std");
    if (!mean && !std) return;
    int n = cJSON_GetArraySize(mean);
    if (!cJSON_IsArray(mean) || !cJSON_IsArray(std) || n != data->channels || cJSON_GetArraySize(std) != n ||
        n < 1 || n > CHECKPOINT_DATA_MAX_CHANNELS)
        fatal_input("%s: data.latent_mean and data.latent_std: expected two arrays of data.channels (%d) numbers",
                    source, data->channels);
    for (int c = 0; c < n; c++) {
        const cJSON *m = cJSON_GetArrayItem(mean, c), *s = cJSON_GetArrayItem(std, c);
        if (!cJSON_IsNumber(m) || !cJSON_IsNumber(s) || !isfinite(m->valuedouble) || !(s->valuedouble > 0) ||
            !isfinite(s->valuedouble))
            fatal_input("%s: data.latent_mean[%d] / data.latent_std[%d]: expected a finite mean and a std > 0",
                        source, c, c);
        data->latent_mean[c] = m->valuedouble;
        data->latent_std[c] = s->valuedouble;
    }
    data->has_latent_statistics = 1;
}

char *checkpoint_model_find(const checkpoint_model_request *request, const char *where, char **dir, long long *step,
                            checkpoint_data *data) {
    struct stat info;
    if (stat(where, &info) != 0)
        fatal_input("%s: cannot read the %s: %s (expected a run directory of ldm %s or one of its checkpoints)", where,
                    request->what, strerror(errno), request->trainer);
    char *found = checkpoint_find(where);
    if (!found)
        fatal_input("%s: no checkpoint that passes verification (expected a run directory of ldm %s with "
                    "checkpoints/, or a checkpoint directory)", where, request->trainer);
    char err[1024];
    if (checkpoint_verify(found, err, sizeof err) != 0) fatal_input("%s", err);
    char *text = read_state_text(found);
    char source[4200];
    snprintf(source, sizeof source, "%s/state.json", found);
    cJSON *state = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(state)) fatal_input("%s: not valid JSON", source);
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(state, "kind");
    const int other = request->other_kind && cJSON_IsString(kind) && strcmp(kind->valuestring, request->other_kind) == 0;
    if (!other && request->other_kind && (!cJSON_IsString(kind) || strcmp(kind->valuestring, request->kind) != 0))
        fatal_input("%s: a checkpoint of kind \"%s\", expected \"%s\" or \"%s\" (ldm %s takes a run or checkpoint "
                    "of ldm %s or ldm %s)", found, cJSON_IsString(kind) ? kind->valuestring : "unknown",
                    request->kind, request->other_kind, request->command, request->trainer, request->other_trainer);
    if (!other && (!cJSON_IsString(kind) || strcmp(kind->valuestring, request->kind) != 0))
        fatal_input("%s: a checkpoint of kind \"%s\", expected \"%s\" (ldm %s takes a run or checkpoint of "
                    "ldm %s)", found, cJSON_IsString(kind) ? kind->valuestring : "unknown", request->kind,
                    request->command, request->trainer);
    const cJSON *step_item = cJSON_GetObjectItemCaseSensitive(state, "step");
    if (!cJSON_IsNumber(step_item) || step_item->valuedouble < 0 ||
        step_item->valuedouble != floor(step_item->valuedouble))
        fatal_input("%s: step: expected a non-negative integer", source);
    const cJSON *config = cJSON_GetObjectItemCaseSensitive(state, "config");
    if (!cJSON_IsObject(config)) fatal_input("%s: config: expected the run's config (an object)", source);
    char *config_text = cJSON_PrintUnformatted(config);
    if (!config_text) fatal_internal("out of memory printing %s", source);
    char *copy = xstrdup(config_text);
    cJSON_free(config_text);
    if (data) read_data_record(cJSON_GetObjectItemCaseSensitive(state, "data"), source, data);
    *step = (long long)step_item->valuedouble;
    *dir = found;
    cJSON_Delete(state);
    return copy;
}

char *checkpoint_model_state_record(const char *dir, const char *name) {
    char *text = read_state_text(dir);
    cJSON *state = cJSON_Parse(text);
    free(text);
    const cJSON *record = cJSON_GetObjectItemCaseSensitive(state, name);
    char *printed = record ? cJSON_PrintUnformatted(record) : NULL;
    char *copy = printed ? xstrdup(printed) : NULL;
    cJSON_free(printed);
    cJSON_Delete(state);
    return copy;
}

char *checkpoint_model_broadcast_string(char *text) {
    int64_t length = comm_rank() == 0 ? (int64_t)strlen(text) + 1 : 0;
    comm_broadcast(&length, sizeof length, 0);
    if (comm_rank() != 0) text = xmalloc((size_t)length);
    comm_broadcast(text, (size_t)length, 0);
    return text;
}

char *checkpoint_model_description(const char *dir, long long step, const char *weights) {
    /* The checkpoint by its absolute path (a "latest" link resolved), so that the
     * description still names it when read from elsewhere. */
    char *absolute = realpath(dir, NULL);
    size_t n = strlen(absolute ? absolute : dir) + strlen(weights) + 96;
    char *description = xmalloc(n);
    snprintf(description, n, "%s (step %lld, %s weights)", absolute ? absolute : dir, step, weights);
    free(absolute);
    return description;
}

/* The input size a diffusers folder is laid out for: the caller's, or sample_size. */
static void diffusers_input_size(autoencoder_shape *shape, const char *dir, const char *command, int image_size,
                                 int latent_size) {
    const int reduction = 1 << (shape->levels - 1);
    if (latent_size > 0) image_size = latent_size * reduction;
    if (image_size <= 0) return;
    if (image_size % reduction)
        fatal_input("ldm %s: images of %d x %d do not fit the autoencoder %s: its encoder halves them %d times (a "
                    "multiple of %d)", command, image_size, image_size, dir, shape->levels - 1, reduction);
    shape->input_size = image_size;
}

static void load_diffusers(checkpoint_autoencoder *ae, const char *command, const char *where,
                           autoencoder_purpose purpose, int max_batch, int collective, int image_size,
                           int latent_size) {
    const int reader = !collective || comm_rank() == 0;
    autoencoder_diffusers_config config;
    if (reader) autoencoder_diffusers_read_config(where, &config);
    if (collective) comm_broadcast(&config, sizeof config, 0); /* a plain struct */
    char *absolute = realpath(where, NULL);
    ae->checkpoint = xstrdup(absolute ? absolute : where);
    free(absolute);
    ae->diffusers = 1;
    ae->scaling_factor = config.scaling_factor;
    ae->shift_factor = config.shift_factor;
    ae->shape = config.shape;
    diffusers_input_size(&ae->shape, ae->checkpoint, command, image_size, latent_size);
    autoencoder_create(&ae->model, &ae->shape, max_batch, purpose);
    if (reader) autoencoder_diffusers_load_weights(&ae->model, ae->checkpoint, &config);
    if (collective) comm_broadcast(ae->model.params, sizeof(float) * ae->model.table.trainable_numel, 0);
    char description[4400];
    int n = snprintf(description, sizeof description, "%s (diffusers AutoencoderKL, scaling_factor %.9g",
                     ae->checkpoint, ae->scaling_factor);
    if (ae->shift_factor != 0 && n > 0 && (size_t)n < sizeof description)
        n += snprintf(description + n, sizeof description - (size_t)n, ", shift_factor %.9g", ae->shift_factor);
    if (n > 0 && (size_t)n < sizeof description) snprintf(description + n, sizeof description - (size_t)n, ")");
    ae->description = xstrdup(description);
}

static void load_autoencoder(checkpoint_autoencoder *ae, const char *command, const char *where, const char *weights,
                             autoencoder_purpose purpose, int max_batch, int collective, int image_size,
                             int latent_size) {
    memset(ae, 0, sizeof *ae);
    if (strcmp(weights, "ema") != 0 && strcmp(weights, "model") != 0)
        fatal_input("ldm %s: option --weights: expected ema or model, got '%s'", command, weights);
    const int reader = !collective || comm_rank() == 0;
    int diffusers = reader ? autoencoder_diffusers_is_folder(where) : 0;
    if (collective) comm_broadcast(&diffusers, sizeof diffusers, 0);
    if (diffusers) { /* one set of weights: --weights has no choice to make */
        load_diffusers(ae, command, where, purpose, max_batch, collective, image_size, latent_size);
        return;
    }
    ae->scaling_factor = 1.0;
    char *config_text = NULL;
    long long step = 0;
    const checkpoint_model_request request = {command, "autoencoder", "autoencoder", "train-ae", NULL, NULL};
    if (reader) config_text = checkpoint_model_find(&request, where, &ae->checkpoint, &step, NULL);
    if (collective) {
        config_text = checkpoint_model_broadcast_string(config_text);
        ae->checkpoint = checkpoint_model_broadcast_string(ae->checkpoint);
        comm_broadcast(&step, sizeof step, 0);
    }
    char source[4200], err[1024];
    snprintf(source, sizeof source, "%s/state.json: config", ae->checkpoint);
    if (config_load_json_text(&ae->config, config_text, source, NULL, 0, err, sizeof err) != 0) fatal_input("%s", err);
    free(config_text);
    ae->shape = config_autoencoder_shape(&ae->config);
    autoencoder_create(&ae->model, &ae->shape, max_batch, purpose);
    if (reader) {
        char *file = path_join(ae->checkpoint, strcmp(weights, "ema") == 0 ? "ema.safetensors" : "model.safetensors");
        autoencoder_load_safetensors(&ae->model, file);
        free(file);
    }
    if (collective) comm_broadcast(ae->model.params, sizeof(float) * ae->model.table.trainable_numel, 0);
    ae->description = checkpoint_model_description(ae->checkpoint, step, weights);
}

void checkpoint_autoencoder_load(checkpoint_autoencoder *ae, const char *command, const char *where,
                                 const char *weights, autoencoder_purpose purpose, int max_batch) {
    load_autoencoder(ae, command, where, weights, purpose, max_batch, 1, 0, 0);
}

void checkpoint_autoencoder_load_here(checkpoint_autoencoder *ae, const char *command, const char *where,
                                      const char *weights, autoencoder_purpose purpose, int max_batch) {
    load_autoencoder(ae, command, where, weights, purpose, max_batch, 0, 0, 0);
}

void checkpoint_autoencoder_load_sized(checkpoint_autoencoder *ae, const char *command, const char *where,
                                       const char *weights, autoencoder_purpose purpose, int max_batch,
                                       int image_size, int latent_size) {
    load_autoencoder(ae, command, where, weights, purpose, max_batch, 1, image_size, latent_size);
}

void checkpoint_autoencoder_load_here_sized(checkpoint_autoencoder *ae, const char *command, const char *where,
                                            const char *weights, autoencoder_purpose purpose, int max_batch,
                                            int image_size, int latent_size) {
    load_autoencoder(ae, command, where, weights, purpose, max_batch, 0, image_size, latent_size);
}

void checkpoint_autoencoder_free(checkpoint_autoencoder *ae) {
    autoencoder_destroy(&ae->model);
    free(ae->checkpoint);
    free(ae->description);
    memset(ae, 0, sizeof *ae);
}

void checkpoint_autoencoder_latent_units(const checkpoint_autoencoder *ae, double scaling, double shift, int channels,
                                         double *mean, double *std) {
    if (scaling == ae->scaling_factor && shift == ae->shift_factor) return;
    for (int c = 0; c < channels; c++) {
        mean[c] = (mean[c] / scaling + shift - ae->shift_factor) * ae->scaling_factor;
        std[c] = std[c] * ae->scaling_factor / scaling;
    }
}

void checkpoint_autoencoder_check_latents(const checkpoint_autoencoder *ae, const dit_shape *shape, const char *model) {
    if (ae->shape.latent_channels != shape->in_channels || ae->model.latent_size != shape->input_size)
        fatal_input("%s: the autoencoder gives latents %dx%dx%d, but the model %s takes %dx%dx%d", ae->checkpoint,
                    ae->shape.latent_channels, ae->model.latent_size, ae->model.latent_size, model, shape->in_channels,
                    shape->input_size, shape->input_size);
}

char *checkpoint_autoencoder_recorded_path(const char *attribute) {
    const char *end = strstr(attribute, " (step ");
    if (!end) end = strstr(attribute, " (diffusers ");
    if (!end || end == attribute) return NULL;
    size_t n = (size_t)(end - attribute);
    char *path = xmalloc(n + 1);
    memcpy(path, attribute, n);
    path[n] = 0;
    return path;
}

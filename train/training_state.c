/* The training state in state.json (see training_state.h). */
#include "training_state.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fatal.h"

static const char *kind_name(const dataset_info *data) { return data->kind == DATASET_IMAGES ? "images" : "latents"; }

char *training_state_to_json(const training_state *state, const char *kind, const ldm_config *config,
                             const char *data_path, const dataset_info *data) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "format", TRAINING_STATE_FORMAT);
    cJSON_AddNumberToObject(root, "version", TRAINING_STATE_VERSION);
    cJSON_AddStringToObject(root, "program_version", LDM_VERSION);
    cJSON_AddStringToObject(root, "kind", kind);
    cJSON_AddNumberToObject(root, "step", (double)state->step);
    cJSON_AddNumberToObject(root, "images_seen", (double)state->images_seen);
    cJSON_AddNumberToObject(root, "skipped_total", (double)state->skipped_total);
    cJSON_AddNumberToObject(root, "skipped_in_a_row", state->skipped_in_a_row);
    cJSON_AddNumberToObject(root, "world_size", state->world_size);
    cJSON *loaders = cJSON_AddArrayToObject(root, "loader");
    for (int r = 0; r < state->world_size; r++) {
        cJSON *entry = cJSON_CreateObject();
        cJSON_AddNumberToObject(entry, "epoch", (double)state->loader[r].epoch);
        cJSON_AddNumberToObject(entry, "position", (double)state->loader[r].position);
        cJSON_AddItemToArray(loaders, entry);
    }
    cJSON *scale = cJSON_AddObjectToObject(root, "loss_scale");
    cJSON_AddNumberToObject(scale, "scale", state->loss_scale);
    cJSON_AddNumberToObject(scale, "good_steps", (double)state->loss_scale_good_steps);
    cJSON *d = cJSON_AddObjectToObject(root, "data");
    cJSON_AddStringToObject(d, "path", data_path);
    cJSON_AddNumberToObject(d, "count", (double)data->count);
    cJSON_AddStringToObject(d, "kind", kind_name(data));
    cJSON_AddNumberToObject(d, "channels", data->channels);
    cJSON_AddNumberToObject(d, "height", data->height);
    cJSON_AddNumberToObject(d, "width", data->width);
    cJSON_AddNumberToObject(d, "num_classes", data->num_classes);
    if (data->kind == DATASET_LATENTS) {
        /* What ldm sample needs to turn the model's normalised latents back
         * into the autoencoder's (x / sigma_data * std + mean) and to name the
         * autoencoder that decodes them. */
        cJSON_AddItemToObject(d, "latent_mean", cJSON_CreateDoubleArray(data->latent_mean, data->channels));
        cJSON_AddItemToObject(d, "latent_std", cJSON_CreateDoubleArray(data->latent_std, data->channels));
        cJSON_AddStringToObject(d, "autoencoder", data->autoencoder);
        if (data->latent_scaling_factor != 1.0 || data->latent_shift_factor != 0.0) { /* a diffusers autoencoder's */
            cJSON_AddNumberToObject(d, "latent_scaling_factor", data->latent_scaling_factor);
            cJSON_AddNumberToObject(d, "latent_shift_factor", data->latent_shift_factor);
        }
    }
    char *config_json = config_to_json(config);
    cJSON_AddItemToObject(root, "config", cJSON_Parse(config_json));
    free(config_json);
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) fatal_internal("cannot format state.json");
    return text;
}

char *training_state_with_record(char *json, const char *name, const char *record_json) {
    cJSON *root = cJSON_Parse(json), *record = cJSON_Parse(record_json);
    if (!cJSON_IsObject(root) || !cJSON_IsObject(record)) fatal_internal("state.json: cannot add the %s record", name);
    cJSON_AddItemToObject(root, name, record);
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) fatal_internal("cannot format state.json");
    free(json);
    return text;
}

/* A non-negative integer field; fatal_input otherwise. */
static int64_t integer_field(const cJSON *object, const char *name, const char *source, const char *where) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, name);
    if (!cJSON_IsNumber(item) || item->valuedouble < 0 || item->valuedouble != floor(item->valuedouble) ||
        item->valuedouble > 9007199254740992.0)
        fatal_input("%s: %s%s: expected a non-negative integer", source, where, name);
    return (int64_t)item->valuedouble;
}

static cJSON *parse_state(const char *json, const char *source) {
    cJSON *root = cJSON_Parse(json);
    if (!cJSON_IsObject(root)) fatal_input("%s: not valid JSON", source);
    const cJSON *format = cJSON_GetObjectItemCaseSensitive(root, "format");
    if (!cJSON_IsString(format) || strcmp(format->valuestring, TRAINING_STATE_FORMAT) != 0)
        fatal_input("%s: format: expected \"%s\"", source, TRAINING_STATE_FORMAT);
    int64_t version = integer_field(root, "version", source, "");
    if (version != TRAINING_STATE_VERSION && version != 1)
        fatal_input("%s: version: expected 1 or %d", source, TRAINING_STATE_VERSION);
    return root;
}

void training_state_parse(const char *json, const char *source, training_state *state) {
    memset(state, 0, sizeof *state);
    cJSON *root = parse_state(json, source);
    state->version = (int)integer_field(root, "version", source, "");
    state->step = integer_field(root, "step", source, "");
    state->images_seen = integer_field(root, "images_seen", source, "");
    state->skipped_total = integer_field(root, "skipped_total", source, "");
    state->skipped_in_a_row = (int)integer_field(root, "skipped_in_a_row", source, "");
    int64_t world = integer_field(root, "world_size", source, "");
    if (world < 1 || world > 1 << 20) fatal_input("%s: world_size: expected at least 1, got %lld", source, (long long)world);
    state->world_size = (int)world;
    const cJSON *loaders = cJSON_GetObjectItemCaseSensitive(root, "loader");
    if (!cJSON_IsArray(loaders) || cJSON_GetArraySize(loaders) != state->world_size)
        fatal_input("%s: loader: expected an array of %d states (one per rank)", source, state->world_size);
    state->loader = xcalloc((size_t)state->world_size, sizeof(loader_state));
    for (int r = 0; r < state->world_size; r++) {
        const cJSON *entry = cJSON_GetArrayItem(loaders, r);
        char where[48];
        snprintf(where, sizeof where, "loader[%d].", r);
        state->loader[r].epoch = integer_field(entry, "epoch", source, where);
        state->loader[r].position = integer_field(entry, "position", source, where);
    }
    const cJSON *scale = cJSON_GetObjectItemCaseSensitive(root, "loss_scale");
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(scale, "scale");
    if (!cJSON_IsNumber(value) || !(value->valuedouble > 0))
        fatal_input("%s: loss_scale.scale: expected a number > 0", source);
    state->loss_scale = value->valuedouble;
    state->loss_scale_good_steps = integer_field(scale, "good_steps", source, "loss_scale.");
    cJSON_Delete(root);
}

void training_state_free(training_state *state) {
    free(state->loader);
    state->loader = NULL;
}

static int is_setting(const trainable *model, const char *key) {
    for (const char *const *k = model->settings_keys; k && *k; k++)
        if (strcmp(*k, key) == 0) return 1;
    return 0;
}

void training_state_check_compatible(const char *json, const char *source, const trainable *model,
                                     const ldm_config *config, const dataset_info *data) {
    cJSON *root = parse_state(json, source);
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(root, "kind");
    if (!cJSON_IsString(kind) || strcmp(kind->valuestring, model->kind) != 0)
        fatal_input("%s: a checkpoint of kind \"%s\", expected \"%s\" (ldm train takes DiT runs, ldm train-ae "
                    "autoencoder runs, ldm distill consistency runs)", source,
                    cJSON_IsString(kind) ? kind->valuestring : "unknown", model->kind);
    const trainable_extra_state *extra = model->extra;
    if (extra && extra->record_name && extra->check_saved_record) {
        char *saved_record = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(root, extra->record_name));
        if (!saved_record) fatal_input("%s: state.json: no member \"%s\"", source, extra->record_name);
        extra->check_saved_record(saved_record, extra->record_json, source);
        cJSON_free(saved_record);
    }
    const char *section = model->shape_section;
    const cJSON *saved_model = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "config"), section);
    if (!cJSON_IsObject(saved_model)) fatal_input("%s: config.%s: missing", source, section);
    char *current_json = config_to_json(config);
    cJSON *current = cJSON_Parse(current_json);
    free(current_json);
    const cJSON *current_model = cJSON_GetObjectItemCaseSensitive(current, section);
    const cJSON *key;
    cJSON_ArrayForEach(key, current_model) {
        if (is_setting(model, key->string)) continue;
        const cJSON *saved = cJSON_GetObjectItemCaseSensitive(saved_model, key->string);
        if (!saved || !cJSON_Compare(saved, key, 1)) {
            char *mine = cJSON_PrintUnformatted(key), *theirs = saved ? cJSON_PrintUnformatted(saved) : NULL;
            fatal_input("%s: %s.%s is %s in the checkpoint but %s in this run's config (the model shape cannot "
                        "change on resume)", source, section, key->string, theirs ? theirs : "missing", mine);
        }
    }
    cJSON_Delete(current);

    const cJSON *d = cJSON_GetObjectItemCaseSensitive(root, "data");
    kind = cJSON_GetObjectItemCaseSensitive(d, "kind");
    int64_t count = integer_field(d, "count", source, "data.");
    int64_t channels = integer_field(d, "channels", source, "data."), height = integer_field(d, "height", source, "data.");
    int64_t width = integer_field(d, "width", source, "data."), classes = integer_field(d, "num_classes", source, "data.");
    if (!cJSON_IsString(kind) || strcmp(kind->valuestring, kind_name(data)) != 0 || count != data->count ||
        channels != data->channels || height != data->height || width != data->width || classes != data->num_classes)
        fatal_input("%s: trained on a data set of %lld %s %lldx%lldx%lld with %lld classes, but %s holds %lld %s "
                    "%dx%dx%d with %d classes (resume needs the same data set)",
                    source, (long long)count, cJSON_IsString(kind) ? kind->valuestring : "?", (long long)channels,
                    (long long)height, (long long)width, (long long)classes, data->path, (long long)data->count,
                    kind_name(data), data->channels, data->height, data->width, data->num_classes);
    cJSON_Delete(root);
}

loader_state training_state_loader_for_rank(const training_state *state, int64_t data_count, int rank,
                                            int world_size) {
    (void)rank;
    int64_t position = state->loader[0].position;
    if (state->version < 2) {
        position = 0;
        for (int r = 0; r < state->world_size; r++) {
            int64_t start, rows;
            dataset_shard_range(data_count, r, state->world_size, &start, &rows);
            position += state->loader[r].epoch * rows + state->loader[r].position;
        }
    }
    position -= position % world_size;
    return (loader_state){.epoch = position / data_count, .position = position};
}

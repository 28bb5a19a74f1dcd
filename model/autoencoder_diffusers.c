/* See autoencoder_diffusers.h: a diffusers AutoencoderKL folder's config.json as an
 * autoencoder_shape, and its weights loaded with the latents' scale folded in. */
#include "autoencoder_diffusers.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "atomic_file.h"
#include "fatal.h"
#include "params.h"

#define CONFIG_MAX_BYTES (1 << 20)

static int is_file(const char *path) {
    struct stat info;
    return stat(path, &info) == 0 && S_ISREG(info.st_mode);
}

static int file_in(const char *dir, const char *name) {
    char *path = path_join(dir, name);
    const int found = is_file(path);
    free(path);
    return found;
}

/* PATH's text (caller frees), or NULL when it cannot be read. */
static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    struct stat info;
    if (!f) return NULL;
    if (fstat(fileno(f), &info) != 0 || !S_ISREG(info.st_mode) || info.st_size > CONFIG_MAX_BYTES) {
        fclose(f);
        return NULL;
    }
    char *text = xmalloc((size_t)info.st_size + 1);
    const size_t got = fread(text, 1, (size_t)info.st_size, f);
    fclose(f);
    text[got] = '\0';
    return text;
}

int autoencoder_diffusers_is_folder(const char *path) {
    struct stat info;
    if (stat(path, &info) != 0 || !S_ISDIR(info.st_mode)) return 0;
    if (file_in(path, AE_DIFFUSERS_WEIGHTS) || file_in(path, AE_DIFFUSERS_WEIGHTS_FP16)) return 1;
    char *config_path = path_join(path, AE_DIFFUSERS_CONFIG);
    char *text = read_text(config_path);
    free(config_path);
    cJSON *config = text ? cJSON_Parse(text) : NULL;
    const int diffusers = cJSON_GetObjectItemCaseSensitive(config, "_class_name") != NULL;
    cJSON_Delete(config);
    free(text);
    return diffusers;
}

char *autoencoder_diffusers_weights_path(const char *dir) {
    char *path = path_join(dir, AE_DIFFUSERS_WEIGHTS);
    if (is_file(path)) return path;
    free(path);
    path = path_join(dir, AE_DIFFUSERS_WEIGHTS_FP16);
    if (is_file(path)) return path;
    free(path);
    fatal_input("%s: no %s (a diffusers AutoencoderKL folder as save_pretrained writes it; .bin weights are not "
                "read: save the model with safe_serialization)", dir, AE_DIFFUSERS_WEIGHTS);
}

/* ---- config.json ---- */

typedef struct {
    const char *path; /* DIR/config.json, for messages */
    const cJSON *root;
} config_reader;

/* The member NAME, or NULL when absent or null (diffusers' default applies). */
static const cJSON *member(const config_reader *r, const char *name) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(r->root, name);
    return item && !cJSON_IsNull(item) ? item : NULL;
}

static int read_int(const config_reader *r, const char *name, int fallback, int min, int max) {
    const cJSON *item = member(r, name);
    if (!item) return fallback;
    if (!cJSON_IsNumber(item) || item->valuedouble != floor(item->valuedouble) || item->valuedouble < min ||
        item->valuedouble > max)
        fatal_input("%s: %s: expected an integer in [%d, %d]", r->path, name, min, max);
    return (int)item->valuedouble;
}

static int read_bool(const config_reader *r, const char *name, int fallback) {
    const cJSON *item = member(r, name);
    if (!item) return fallback;
    if (!cJSON_IsBool(item)) fatal_input("%s: %s: expected true or false", r->path, name);
    return cJSON_IsTrue(item);
}

static double read_number(const config_reader *r, const char *name, double fallback) {
    const cJSON *item = member(r, name);
    if (!item) return fallback;
    if (!cJSON_IsNumber(item) || !isfinite(item->valuedouble))
        fatal_input("%s: %s: expected a finite number", r->path, name);
    return item->valuedouble;
}

/* The list NAME must have `count` entries, each `expected` (absent: diffusers'
 * default, one such block). */
static void check_block_types(const config_reader *r, const char *name, const char *expected, int count) {
    const cJSON *item = member(r, name);
    if (!item) {
        if (count != 1)
            fatal_input("%s: %s: missing (diffusers' default has one block, block_out_channels has %d)", r->path,
                        name, count);
        return;
    }
    if (!cJSON_IsArray(item) || cJSON_GetArraySize(item) != count)
        fatal_input("%s: %s: expected a list of %d block types (one per block_out_channels)", r->path, name, count);
    for (int i = 0; i < count; i++) {
        const cJSON *type = cJSON_GetArrayItem(item, i);
        if (!cJSON_IsString(type) || strcmp(type->valuestring, expected) != 0)
            fatal_input("%s: %s[%d]: \"%s\", but ldm's autoencoder has only %s blocks", r->path, name, i,
                        cJSON_IsString(type) ? type->valuestring : "(not a string)", expected);
    }
}

/* The members ldm reads; any other (but the "_" bookkeeping ones and force_upcast,
 * which only says diffusers runs fp16 models in fp32) is refused rather than
 * ignored, since it may change the network. */
static const char *const known_members[] = {
    "in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
    "layers_per_block", "act_fn", "latent_channels", "norm_num_groups", "sample_size", "scaling_factor",
    "shift_factor", "latents_mean", "latents_std", "force_upcast", "use_quant_conv", "use_post_quant_conv",
    "mid_block_add_attention"};

static void check_members(const config_reader *r) {
    for (const cJSON *item = r->root->child; item; item = item->next) {
        if (item->string[0] == '_') continue;
        int known = 0;
        for (size_t i = 0; i < sizeof known_members / sizeof known_members[0]; i++)
            known |= strcmp(item->string, known_members[i]) == 0;
        if (!known)
            fatal_input("%s: %s: an option of AutoencoderKL that ldm's autoencoder does not know", r->path,
                        item->string);
    }
}

static void read_shape(const config_reader *r, autoencoder_shape *s) {
    memset(s, 0, sizeof *s);
    const cJSON *widths = member(r, "block_out_channels");
    if (!widths) {
        s->levels = 1;
        s->block_out_channels[0] = 64; /* diffusers' default (64,) */
    } else {
        if (!cJSON_IsArray(widths) || cJSON_GetArraySize(widths) < 1 || cJSON_GetArraySize(widths) > AE_MAX_LEVELS)
            fatal_input("%s: block_out_channels: expected a list of 1 to %d widths", r->path, AE_MAX_LEVELS);
        s->levels = cJSON_GetArraySize(widths);
        for (int i = 0; i < s->levels; i++) {
            const cJSON *w = cJSON_GetArrayItem(widths, i);
            if (!cJSON_IsNumber(w) || w->valuedouble != floor(w->valuedouble) || w->valuedouble < 1 ||
                w->valuedouble > 65536)
                fatal_input("%s: block_out_channels[%d]: expected a positive integer", r->path, i);
            s->block_out_channels[i] = (int)w->valuedouble;
        }
    }
    s->in_channels = read_int(r, "in_channels", 3, 1, 4096);
    const int out_channels = read_int(r, "out_channels", 3, 1, 4096);
    if (out_channels != s->in_channels)
        fatal_input("%s: out_channels: %d, but ldm's autoencoder decodes to its in_channels (%d)", r->path,
                    out_channels, s->in_channels);
    s->layers_per_block = read_int(r, "layers_per_block", 1, 1, 64);
    s->latent_channels = read_int(r, "latent_channels", 4, 1, 4096);
    s->norm_groups = read_int(r, "norm_num_groups", 32, 1, 65536);
    for (int i = 0; i < s->levels; i++)
        if (s->block_out_channels[i] % s->norm_groups)
            fatal_input("%s: block_out_channels[%d]: %d is not a multiple of norm_num_groups %d", r->path, i,
                        s->block_out_channels[i], s->norm_groups);
    check_block_types(r, "down_block_types", "DownEncoderBlock2D", s->levels);
    check_block_types(r, "up_block_types", "UpDecoderBlock2D", s->levels);
    const cJSON *act = member(r, "act_fn");
    const int silu = cJSON_IsString(act) && (!strcmp(act->valuestring, "silu") || !strcmp(act->valuestring, "swish"));
    if (act && !silu)
        fatal_input("%s: act_fn: \"%s\", but ldm's autoencoder has only silu", r->path,
                    cJSON_IsString(act) ? act->valuestring : "(not a string)");
    s->without_mid_attention = !read_bool(r, "mid_block_add_attention", 1);

    /* sample_size: an integer, or [height, width] of a square */
    const cJSON *size = member(r, "sample_size");
    if (cJSON_IsArray(size)) {
        const cJSON *h = cJSON_GetArrayItem(size, 0), *w = cJSON_GetArrayItem(size, 1);
        if (cJSON_GetArraySize(size) != 2 || !cJSON_IsNumber(h) || !cJSON_IsNumber(w) ||
            h->valuedouble != w->valuedouble)
            fatal_input("%s: sample_size: expected an integer or [height, width] with height = width (ldm's images "
                        "are square)", r->path);
        size = h;
    }
    if (size && (!cJSON_IsNumber(size) || size->valuedouble != floor(size->valuedouble) || size->valuedouble < 1 ||
                 size->valuedouble > 65536))
        fatal_input("%s: sample_size: expected a positive integer", r->path);
    s->input_size = size ? (int)size->valuedouble : 32;
    const int reduction = 1 << (s->levels - 1);
    if (s->input_size % reduction)
        fatal_input("%s: sample_size: %d is not a multiple of %d (2^(levels - 1)), the encoder's reduction", r->path,
                    s->input_size, reduction);
}

void autoencoder_diffusers_read_config(const char *dir, autoencoder_diffusers_config *config) {
    memset(config, 0, sizeof *config);
    char *path = path_join(dir, AE_DIFFUSERS_CONFIG);
    char *text = read_text(path);
    if (!text)
        fatal_input("%s: cannot read (a diffusers AutoencoderKL folder holds config.json and %s): %s", path,
                    AE_DIFFUSERS_WEIGHTS, is_file(path) ? "unreadable or over 1 MiB" : strerror(ENOENT));
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(root)) fatal_input("%s: not a JSON object", path);
    const config_reader r = {path, root};
    const cJSON *class_name = cJSON_GetObjectItemCaseSensitive(root, "_class_name");
    if (!cJSON_IsString(class_name) || strcmp(class_name->valuestring, "AutoencoderKL") != 0)
        fatal_input("%s: _class_name: %s%s%s, expected \"AutoencoderKL\" (ldm's --ae takes a diffusers "
                    "AutoencoderKL or an ldm train-ae run)", path, cJSON_IsString(class_name) ? "\"" : "",
                    cJSON_IsString(class_name) ? class_name->valuestring : "missing",
                    cJSON_IsString(class_name) ? "\"" : "");
    check_members(&r);
    read_shape(&r, &config->shape);
    config->scaling_factor = read_number(&r, "scaling_factor", 0.18215);
    if (!(config->scaling_factor > 0))
        fatal_input("%s: scaling_factor: %g, expected a number > 0", path, config->scaling_factor);
    config->shift_factor = read_number(&r, "shift_factor", 0.0);
    if (member(&r, "latents_mean") || member(&r, "latents_std"))
        fatal_input("%s: %s: per-channel latent statistics are not supported (ldm normalises latents per channel "
                    "itself); set it to null", path, member(&r, "latents_mean") ? "latents_mean" : "latents_std");
    config->use_quant_conv = read_bool(&r, "use_quant_conv", 1);
    config->use_post_quant_conv = read_bool(&r, "use_post_quant_conv", 1);
    cJSON_Delete(root);
    free(path);
}

/* ---- the weights ---- */

static int starts_with(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

static param_entry *model_entry(autoencoder_model *m, const char *name) {
    param_entry *e = (param_entry *)param_table_find(&m->table, name);
    if (!e) fatal_internal("autoencoder: the parameter table has no '%s'", name);
    return e;
}

/* A 1x1 convolution (n, n, 1, 1) that is the identity. */
static void make_identity(autoencoder_model *m, const char *prefix, int n) {
    char name[PARAM_NAME_MAX];
    snprintf(name, sizeof name, "%s.weight", prefix);
    float *w = model_entry(m, name)->data;
    snprintf(name, sizeof name, "%s.bias", prefix);
    float *b = model_entry(m, name)->data;
    memset(w, 0, sizeof(float) * (size_t)n * (size_t)n);
    for (int i = 0; i < n; i++) w[(size_t)i * n + i] = 1.0f;
    memset(b, 0, sizeof(float) * (size_t)n);
}

/* The latents' scale into quant_conv (2L, 2L, 1, 1) and post_quant_conv (L, L, 1, 1). */
static void fold_scale(autoencoder_model *m, double s, double shift) {
    const int L = m->shape.latent_channels;
    float *qw = model_entry(m, "quant_conv.weight")->data, *qb = model_entry(m, "quant_conv.bias")->data;
    for (int o = 0; o < L; o++) { /* the mean's rows: s (W x + b - shift) */
        for (int i = 0; i < 2 * L; i++) qw[(size_t)o * 2 * L + i] = (float)(s * qw[(size_t)o * 2 * L + i]);
        qb[o] = (float)(s * ((double)qb[o] - shift));
    }
    for (int o = L; o < 2 * L; o++) qb[o] = (float)((double)qb[o] + 2.0 * log(s)); /* log-variance */
    float *pw = model_entry(m, "post_quant_conv.weight")->data, *pb = model_entry(m, "post_quant_conv.bias")->data;
    for (int o = 0; o < L; o++) { /* W (z / s + shift) + b */
        double bias = pb[o];
        for (int i = 0; i < L; i++) {
            bias += (double)pw[(size_t)o * L + i] * shift;
            pw[(size_t)o * L + i] = (float)(pw[(size_t)o * L + i] / s);
        }
        pb[o] = (float)bias;
    }
}

void autoencoder_diffusers_load_weights(autoencoder_model *m, const char *dir,
                                        const autoencoder_diffusers_config *config) {
    /* The file's tensors: the model's, less the convolutions the config leaves out,
     * each read straight into the model's buffer. */
    param_table file_table;
    param_table_init(&file_table);
    for (int i = 0; i < m->table.count; i++) {
        const param_entry *e = &m->table.entries[i];
        if (!config->use_quant_conv && starts_with(e->name, "quant_conv.")) continue;
        if (!config->use_post_quant_conv && starts_with(e->name, "post_quant_conv.")) continue;
        param_table_add(&file_table, true, e->ndim, e->shape, "%s", e->name);
        file_table.entries[file_table.count - 1].data = e->data;
    }
    char *path = autoencoder_diffusers_weights_path(dir);
    param_table_load_safetensors_renamed(&file_table, path, autoencoder_current_tensor_name);
    free(path);
    param_table_free(&file_table);
    const int L = m->shape.latent_channels;
    if (!config->use_quant_conv) make_identity(m, "quant_conv", 2 * L);
    if (!config->use_post_quant_conv) make_identity(m, "post_quant_conv", L);
    fold_scale(m, config->scaling_factor, config->shift_factor);
}

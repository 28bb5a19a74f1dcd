/* The job configuration (see config.h): the schema table of every key with its
 * type, default and range; reading the JSON file; applying "--set" overrides;
 * validating each key and the cross-field rules; writing the resolved config back
 * out as JSON. Every failure is user input, so nothing here exits or asserts on
 * it: config_load returns -1 with one line naming the file (or the override) and
 * the key, "configs/x.json: model.depth: expected an integer >= 1, got -3". */
#include "config.h"

#include "fatal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the schema ---- */

typedef enum { KEY_INT, KEY_INT64, KEY_UINT64, KEY_DOUBLE, KEY_ENUM, KEY_BOOL, KEY_INT_LIST } key_type;

typedef struct {
    const char *section;
    const char *key;
    key_type type;
    size_t offset; /* into ldm_config */
    size_t size;   /* of the field: the capacity of an enum's char array */
    /* Range, also for the integer types (whose own limits are applied on top) and
     * for each element of an integer list.
     * -INFINITY / INFINITY: unbounded; *_open: the bound itself is excluded. */
    double min, max;
    bool min_open, max_open;
    double def;                 /* default of a number or bool */
    const char *def_str;        /* default of an enum */
    const char *const *allowed; /* enum: the allowed strings, NULL-terminated */
    const int *def_list;        /* default of an integer list, def_count values */
    int def_count;
} key_spec;

/* The field's C type is checked against the table's type at compile time: a
 * _Generic with no matching association does not compile, so a key declared
 * "int" in the table but int64_t in config.h is caught by the build. */
#define MEMBER(sec, name) (((ldm_config *)0)->sec.name)
#define FIELD(sec, name, ctype)                                                                  \
    .section = #sec, .key = #name,                                                               \
    .offset = offsetof(ldm_config, sec.name) + 0 * sizeof(_Generic(MEMBER(sec, name), ctype: 1)), \
    .size = sizeof MEMBER(sec, name)

#define NONE_BELOW (-INFINITY)
#define NONE_ABOVE INFINITY

/* Integers: closed range [lo, hi]. */
#define INT_KEY(sec, name, d, lo, hi) \
    {FIELD(sec, name, int), .type = KEY_INT, .def = (d), .min = (lo), .max = (hi)}
#define INT64_KEY(sec, name, d, lo, hi) \
    {FIELD(sec, name, int64_t), .type = KEY_INT64, .def = (d), .min = (lo), .max = (hi)}
#define UINT64_KEY(sec, name, d, lo, hi) \
    {FIELD(sec, name, uint64_t), .type = KEY_UINT64, .def = (d), .min = (lo), .max = (hi)}
/* Doubles: lo_open / hi_open say whether the bound is excluded ("> 0", "< 1"). */
#define DOUBLE_KEY(sec, name, d, lo, lo_open, hi, hi_open)                                    \
    {FIELD(sec, name, double), .type = KEY_DOUBLE, .def = (d), .min = (lo), .min_open = (lo_open), \
     .max = (hi), .max_open = (hi_open)}
#define ENUM_KEY(sec, name, d, ...)                                                                \
    {FIELD(sec, name, char *), .type = KEY_ENUM, .def_str = (d), .min = NONE_BELOW, .max = NONE_ABOVE, \
     .allowed = (const char *const[]){__VA_ARGS__, NULL}}
#define BOOL_KEY(sec, name, d) \
    {FIELD(sec, name, bool), .type = KEY_BOOL, .def = (d), .min = NONE_BELOW, .max = NONE_ABOVE}
/* A list of 1 to CONFIG_INT_LIST_MAX integers, each in [lo, hi]; the default is
 * the values after hi. */
#define INT_LIST_KEY(sec, name, lo, hi, ...)                                                     \
    {FIELD(sec, name, config_int_list), .type = KEY_INT_LIST, .min = (lo), .max = (hi),          \
     .def_list = (const int[]){__VA_ARGS__},                                                      \
     .def_count = (int)(sizeof((const int[]){__VA_ARGS__}) / sizeof(int))}

/* Every key of every section, in the order config_to_json writes them. Adding a
 * key: one field in config.h, one line here. The defaults are those of config.h
 * (docs/cli.md lists them). */
static const key_spec keys[] = {
    ENUM_KEY(model, type, "dit", "dit"),
    INT_KEY(model, input_size, 8, 1, NONE_ABOVE),
    INT_KEY(model, in_channels, 4, 1, NONE_ABOVE),
    INT_KEY(model, patch_size, 1, 1, NONE_ABOVE),
    INT_KEY(model, hidden_size, 384, 1, NONE_ABOVE),
    INT_KEY(model, depth, 12, 1, NONE_ABOVE),
    INT_KEY(model, num_heads, 6, 1, NONE_ABOVE),
    DOUBLE_KEY(model, mlp_ratio, 4.0, 0, true, NONE_ABOVE, false),
    INT_KEY(model, num_classes, 10, 1, NONE_ABOVE),
    DOUBLE_KEY(model, class_dropout, 0.1, 0, false, 1, true),

    DOUBLE_KEY(diffusion, sigma_data, 0.5, 0, true, NONE_ABOVE, false),
    DOUBLE_KEY(diffusion, p_mean, -1.2, NONE_BELOW, false, NONE_ABOVE, false),
    DOUBLE_KEY(diffusion, p_std, 1.2, 0, true, NONE_ABOVE, false),

    INT64_KEY(train, steps, 100000, 1, NONE_ABOVE),
    INT_KEY(train, batch_size, 256, 1, NONE_ABOVE),
    INT_KEY(train, micro_batch, 0, 0, NONE_ABOVE),
    DOUBLE_KEY(train, lr, 1e-4, 0, true, NONE_ABOVE, false),
    INT64_KEY(train, warmup_steps, 1000, 0, NONE_ABOVE),
    ENUM_KEY(train, lr_schedule, "constant", "constant", "cosine"),
    DOUBLE_KEY(train, weight_decay, 0.0, 0, false, NONE_ABOVE, false),
    DOUBLE_KEY(train, grad_clip, 1.0, 0, false, NONE_ABOVE, false),
    DOUBLE_KEY(train, ema_decay, 0.9999, 0, false, 1, true),
    INT64_KEY(train, ema_halflife_images, 0, 0, NONE_ABOVE),
    DOUBLE_KEY(train, ema_rampup, 0.05, 0, false, NONE_ABOVE, false),
    DOUBLE_KEY(train, adam_beta1, 0.9, 0, false, 1, true),
    DOUBLE_KEY(train, adam_beta2, 0.999, 0, false, 1, true),
    DOUBLE_KEY(train, adam_eps, 1e-8, 0, true, NONE_ABOVE, false),
    ENUM_KEY(train, precision, "fp32", "fp32", "bf16", "fp16"),
    DOUBLE_KEY(train, loss_scale_initial, 65536.0, 0, true, NONE_ABOVE, false),
    INT64_KEY(train, loss_scale_growth_interval, 2000, 1, NONE_ABOVE),
    UINT64_KEY(train, seed, 0, 0, NONE_ABOVE),
    INT64_KEY(train, log_every, 10, 1, NONE_ABOVE),
    INT64_KEY(train, ckpt_every, 1000, 1, NONE_ABOVE),
    /* keep-last-K needs K >= 2: the previous checkpoint is deleted only after the
     * new one is published, so there must be room for both. */
    INT_KEY(train, ckpt_keep, 3, 2, NONE_ABOVE),
    INT64_KEY(train, ckpt_keep_every, 0, 0, NONE_ABOVE),
    INT64_KEY(train, sample_every, 5000, 0, NONE_ABOVE),
    INT_KEY(train, max_nonfinite_steps, 5, 1, NONE_ABOVE),
    BOOL_KEY(data, flip, false),
    INT_KEY(data, memory_budget_mb, 4096, 0, NONE_ABOVE),
    INT_KEY(data, prefetch_batches, 2, 1, 64),
    INT_KEY(data, virtual_shards, 64, 1, 65536),
    INT_KEY(data, validation_samples, 256, 1, 1000000),

    INT_KEY(autoencoder, in_channels, 3, 1, NONE_ABOVE),
    INT_KEY(autoencoder, input_size, 32, 1, NONE_ABOVE),
    INT_LIST_KEY(autoencoder, block_out_channels, 1, NONE_ABOVE, 64, 128, 128),
    INT_KEY(autoencoder, layers_per_block, 1, 1, NONE_ABOVE),
    INT_KEY(autoencoder, latent_channels, 4, 1, NONE_ABOVE),
    INT_KEY(autoencoder, norm_groups, 32, 1, NONE_ABOVE),
    DOUBLE_KEY(autoencoder, kl_beta, 1e-6, 0, false, NONE_ABOVE, false),
    ENUM_KEY(autoencoder, reconstruction_loss, "l1", "l1", "l2"),
    BOOL_KEY(autoencoder, sample_posterior, false),

    INT_KEY(distill, num_points, 18, 2, 100000),
    DOUBLE_KEY(distill, sigma_min, 0.002, 0, true, NONE_ABOVE, false),
    DOUBLE_KEY(distill, sigma_max, 80.0, 0, true, NONE_ABOVE, false),
    DOUBLE_KEY(distill, rho, 7.0, 0, true, NONE_ABOVE, false),
    DOUBLE_KEY(distill, target_ema, 0.95, 0, false, 1, true),
    ENUM_KEY(distill, loss, "pseudo_huber", "pseudo_huber", "l2"),
    DOUBLE_KEY(distill, huber_c, 0.0, 0, false, NONE_ABOVE, false),
    DOUBLE_KEY(distill, guidance, 1.0, 0, false, 1e6, false),
    DOUBLE_KEY(distill, guidance_max, 0.0, 0, false, 1e6, false),

    ENUM_KEY(device, type, "auto", "auto", "cpu", "cuda"),

    DOUBLE_KEY(comm, timeout_s, 300.0, 0, true, 1e6, false),
};

#define KEY_COUNT (sizeof keys / sizeof keys[0])

/* cJSON holds every number as a double, so a 64-bit integer above 2^53 could not
 * be read (or written back by config_to_json) exactly: it is refused rather than
 * silently rounded. */
#define JSON_EXACT_INT 9007199254740992.0 /* 2^53 */

/* ---- small helpers ---- */

/* The place a value came from, for the start of an error line: the file's path,
 * or "--set " and the override's text. */
typedef struct {
    const char *prefix;
    const char *text;
} source;

static void set_err(char *err, size_t err_size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t err_size, const char *fmt, ...) {
    if (!err || err_size == 0) return;
    va_list args;
    va_start(args, fmt);
    vsnprintf(err, err_size, fmt, args);
    va_end(args);
}

/* User text (unknown key names, string values) goes into a one-line message:
 * control characters become '?', and long text is cut with "...". */
static void put_text(char *buf, size_t n, const char *text, size_t text_len) {
    const size_t limit = 48;
    size_t shown = text_len < limit ? text_len : limit, j = 0;
    for (size_t i = 0; i < shown && j + 1 < n; i++) {
        unsigned char c = (unsigned char)text[i];
        buf[j++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    if (shown < text_len)
        for (int d = 0; d < 3 && j + 1 < n; d++) buf[j++] = '.';
    if (n) buf[j] = '\0';
}

/* A double as the shortest text that reads back to it (what cJSON writes). */
static void format_number(char *buf, size_t n, double v) {
    snprintf(buf, n, "%1.15g", v);
    if (strtod(buf, NULL) != v) snprintf(buf, n, "%1.17g", v);
}

/* What a JSON value is, for "got ...": the value itself for scalars. */
static void describe_value(char *buf, size_t n, const cJSON *item) {
    if (cJSON_IsNumber(item)) {
        if (isfinite(item->valuedouble))
            format_number(buf, n, item->valuedouble);
        else
            snprintf(buf, n, "a number too large to represent");
    } else if (cJSON_IsString(item)) {
        char text[64];
        put_text(text, sizeof text, item->valuestring, strlen(item->valuestring));
        snprintf(buf, n, "\"%s\"", text);
    } else if (cJSON_IsTrue(item)) {
        snprintf(buf, n, "true");
    } else if (cJSON_IsFalse(item)) {
        snprintf(buf, n, "false");
    } else if (cJSON_IsNull(item)) {
        snprintf(buf, n, "null");
    } else if (cJSON_IsArray(item)) {
        snprintf(buf, n, "an array");
    } else if (cJSON_IsObject(item)) {
        snprintf(buf, n, "an object");
    } else {
        snprintf(buf, n, "an invalid value");
    }
}

/* What a value given for an integer list is: the list itself (cut short when
 * long), so that the bad element can be seen; other values as describe_value. */
static void describe_list_value(char *buf, size_t n, const cJSON *item) {
    char *printed = cJSON_IsArray(item) ? cJSON_PrintUnformatted(item) : NULL;
    if (!printed) {
        describe_value(buf, n, item);
        return;
    }
    put_text(buf, n, printed, strlen(printed));
    cJSON_free(printed);
}

static bool is_integer_type(key_type t) { return t == KEY_INT || t == KEY_INT64 || t == KEY_UINT64; }

/* The range an integer key accepts: the table's, narrowed to what the C type
 * (and, for 64-bit types, a JSON double) holds exactly. */
static void integer_limits(const key_spec *s, double *lo, double *hi) {
    bool is_int = s->type == KEY_INT || s->type == KEY_INT_LIST; /* a list holds ints */
    double type_lo = is_int ? (double)INT_MIN : s->type == KEY_UINT64 ? 0.0 : -JSON_EXACT_INT;
    double type_hi = is_int ? (double)INT_MAX : JSON_EXACT_INT;
    *lo = s->min > type_lo ? s->min : type_lo;
    *hi = s->max < type_hi ? s->max : type_hi;
}

/* "an integer >= 1", "a number in [0, 1)", "one of "constant", "cosine"". The
 * implicit upper limit of an integer type is named only when it was the bound
 * the value broke (show_type_max), so that the usual message stays short. */
static void describe_expected(char *buf, size_t n, const key_spec *s, bool show_type_max) {
    char lo[40], hi[40];
    size_t used = 0;
#define APPEND(...)                                                                         \
    do {                                                                                    \
        if (used < n) {                                                                     \
            int w_ = snprintf(buf + used, n - used, __VA_ARGS__);                           \
            used += w_ > 0 ? (size_t)w_ : 0;                                                \
        }                                                                                   \
    } while (0)
    buf[0] = '\0';
    if (s->type == KEY_ENUM) {
        APPEND("one of ");
        for (int i = 0; s->allowed[i]; i++) APPEND("%s\"%s\"", i ? ", " : "", s->allowed[i]);
        return;
    }
    if (s->type == KEY_BOOL) {
        APPEND("true or false");
        return;
    }
    double min = s->min, max = s->max;
    if (s->type == KEY_INT_LIST) {
        double type_lo, type_hi;
        integer_limits(s, &type_lo, &type_hi);
        min = type_lo > min ? type_lo : min;
        if (show_type_max) max = type_hi;
        APPEND("a list of 1 to %d integers", CONFIG_INT_LIST_MAX);
    } else if (is_integer_type(s->type)) {
        double type_lo, type_hi;
        integer_limits(s, &type_lo, &type_hi);
        min = type_lo > min ? type_lo : min;
        if (show_type_max) max = type_hi;
        APPEND("an integer");
    } else {
        APPEND("a number");
    }
    format_number(lo, sizeof lo, min);
    format_number(hi, sizeof hi, max);
    bool has_lo = isfinite(min), has_hi = isfinite(max);
    if (has_lo && has_hi)
        APPEND(" in %c%s, %s%c", s->min_open ? '(' : '[', lo, hi, s->max_open ? ')' : ']');
    else if (has_lo)
        APPEND(" %s %s", s->min_open ? ">" : ">=", lo);
    else if (has_hi)
        APPEND(" %s %s", s->max_open ? "<" : "<=", hi);
#undef APPEND
}

static bool is_first_of_section(size_t i) {
    for (size_t j = 0; j < i; j++)
        if (strcmp(keys[j].section, keys[i].section) == 0) return false;
    return true;
}

static bool section_known(const char *name, size_t len) {
    for (size_t i = 0; i < KEY_COUNT; i++)
        if (strlen(keys[i].section) == len && memcmp(keys[i].section, name, len) == 0) return true;
    return false;
}

/* The table index of section.key (lengths given: override text is not split
 * into NUL-terminated pieces), or -1. */
static int find_key(const char *section, size_t section_len, const char *key, size_t key_len) {
    for (size_t i = 0; i < KEY_COUNT; i++)
        if (strlen(keys[i].section) == section_len && memcmp(keys[i].section, section, section_len) == 0 &&
            strlen(keys[i].key) == key_len && memcmp(keys[i].key, key, key_len) == 0)
            return (int)i;
    return -1;
}

static void list_sections(char *buf, size_t n) {
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < KEY_COUNT && used < n; i++) {
        if (!is_first_of_section(i)) continue;
        int w = snprintf(buf + used, n - used, "%s%s", used ? ", " : "", keys[i].section);
        used += w > 0 ? (size_t)w : 0;
    }
}

static void list_keys(char *buf, size_t n, const char *section) {
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < KEY_COUNT && used < n; i++) {
        if (strcmp(keys[i].section, section) != 0) continue;
        int w = snprintf(buf + used, n - used, "%s%s", used ? ", " : "", keys[i].key);
        used += w > 0 ? (size_t)w : 0;
    }
}

static void unknown_section_err(char *err, size_t err_size, source src, const char *name, size_t len) {
    char shown[64], known[256];
    put_text(shown, sizeof shown, name, len);
    list_sections(known, sizeof known);
    set_err(err, err_size, "%s%s: %s: unknown section (known sections: %s)", src.prefix, src.text, shown, known);
}

static void unknown_key_err(char *err, size_t err_size, source src, const char *section, const char *name,
                            size_t len) {
    char shown[64], known[512];
    put_text(shown, sizeof shown, name, len);
    list_keys(known, sizeof known, section);
    set_err(err, err_size, "%s%s: %s.%s: unknown key (known keys in %s: %s)", src.prefix, src.text, section, shown,
            section, known);
}

/* Copies an enum string (already one of the allowed ones) into its char array,
 * zero-filling the rest so that two equal configs are equal byte for byte. */
static void store_string(char *field, size_t size, const char *value) {
    size_t len = strlen(value);
    if (len >= size) fatal_internal("config schema: \"%s\" does not fit in a %zu-byte field", value, size);
    memset(field, 0, size);
    memcpy(field, value, len);
}

/* ---- reading the file ---- */

/* Reads the whole file; NULL with err on failure. */
static char *read_file(const char *path, size_t *length, char *err, size_t err_size) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        set_err(err, err_size, "%s: cannot read: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        len += fread(buf + len, 1, cap - len - 1, f);
        if (len < cap - 1) break; /* end of file or an error, told apart below */
        char *grown = realloc(buf, cap * 2);
        if (!grown) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = grown;
        cap *= 2;
    }
    if (!buf) {
        fclose(f);
        set_err(err, err_size, "%s: cannot read: out of memory", path);
        return NULL;
    }
    if (ferror(f)) {
        /* e.g. EISDIR: fopen succeeds on a directory, the read fails. */
        int e = errno;
        fclose(f);
        free(buf);
        set_err(err, err_size, "%s: cannot read: %s", path, strerror(e ? e : EIO));
        return NULL;
    }
    fclose(f);
    buf[len] = '\0';
    *length = len;
    return buf;
}

static int line_of(const char *text, size_t offset) {
    int line = 1;
    for (size_t i = 0; i < offset; i++)
        if (text[i] == '\n') line++;
    return line;
}

/* Parses text (len bytes, NUL-terminated) into *root (an object); -1 with err,
 * naming path, otherwise. */
static int parse_text(const char *text, size_t len, const char *path, cJSON **root, char *err, size_t err_size) {
    /* cJSON stops at a NUL byte, which would silently cut the file short. */
    const char *nul = memchr(text, '\0', len);
    if (nul) {
        set_err(err, err_size, "%s: not valid JSON near line %d (a NUL byte)", path, line_of(text, (size_t)(nul - text)));
        return -1;
    }
    /* require_null_terminated: trailing text after the top-level value is an
     * error too. The error position is the one cJSON_GetErrorPtr reports, taken
     * from return_parse_end, which unlike the global is safe across threads. */
    const char *end = NULL;
    cJSON *json = cJSON_ParseWithLengthOpts(text, len + 1, &end, 1);
    if (!json) {
        size_t offset = end && end >= text && end <= text + len ? (size_t)(end - text) : len;
        set_err(err, err_size, "%s: not valid JSON near line %d", path, line_of(text, offset));
        return -1;
    }
    if (!cJSON_IsObject(json)) {
        char got[80];
        describe_value(got, sizeof got, json);
        set_err(err, err_size, "%s: expected a JSON object at the top level, got %s", path, got);
        cJSON_Delete(json);
        return -1;
    }
    *root = json;
    return 0;
}

/* Parses the file PATH into *root (an object); -1 with err otherwise. */
static int parse_file(const char *path, cJSON **root, char *err, size_t err_size) {
    size_t len = 0;
    char *text = read_file(path, &len, err, err_size);
    if (!text) return -1;
    int status = parse_text(text, len, path, root, err, err_size);
    free(text);
    return status;
}

/* Checks the file's shape before overrides are merged in, so that an unknown or
 * duplicated name is blamed on the file: known sections, each an object, known
 * keys, no name twice (cJSON keeps both copies and would read only the first). */
static int check_structure(const cJSON *root, const char *path, char *err, size_t err_size) {
    source src = {"", path};
    for (const cJSON *sec = root->child; sec; sec = sec->next) {
        const char *name = sec->string;
        if (!section_known(name, strlen(name))) {
            unknown_section_err(err, err_size, src, name, strlen(name));
            return -1;
        }
        for (const cJSON *prev = root->child; prev != sec; prev = prev->next)
            if (strcmp(prev->string, name) == 0) {
                set_err(err, err_size, "%s: %s: section given twice", path, name);
                return -1;
            }
        if (!cJSON_IsObject(sec)) {
            char got[80];
            describe_value(got, sizeof got, sec);
            set_err(err, err_size, "%s: %s: expected an object, got %s", path, name, got);
            return -1;
        }
        for (const cJSON *item = sec->child; item; item = item->next) {
            const char *key = item->string;
            if (find_key(name, strlen(name), key, strlen(key)) < 0) {
                unknown_key_err(err, err_size, src, name, key, strlen(key));
                return -1;
            }
            for (const cJSON *prev = sec->child; prev != item; prev = prev->next)
                if (strcmp(prev->string, key) == 0) {
                    set_err(err, err_size, "%s: %s.%s: key given twice", path, name, key);
                    return -1;
                }
        }
    }
    return 0;
}

/* ---- overrides ---- */

/* Merges "section.key=value" into the tree, replacing what the file said.
 * Records in origin[] which override set the key, for the error messages. */
static int apply_override(cJSON *root, const char *text, int index, int *origin, char *err, size_t err_size) {
    source src = {"--set ", text ? text : "(null)"};
    const char *eq = text ? strchr(text, '=') : NULL;
    const char *dot = eq ? memchr(text, '.', (size_t)(eq - text)) : NULL;
    if (!eq || !dot || dot == text || dot + 1 == eq) {
        set_err(err, err_size, "--set %s: expected section.key=value", src.text);
        return -1;
    }
    size_t section_len = (size_t)(dot - text), key_len = (size_t)(eq - dot - 1);
    if (!section_known(text, section_len)) {
        unknown_section_err(err, err_size, src, text, section_len);
        return -1;
    }
    int k = find_key(text, section_len, dot + 1, key_len);
    if (k < 0) {
        /* The section name, NUL-terminated, is the table's own string. */
        const char *section = NULL;
        for (size_t i = 0; i < KEY_COUNT && !section; i++)
            if (strlen(keys[i].section) == section_len && memcmp(keys[i].section, text, section_len) == 0)
                section = keys[i].section;
        unknown_key_err(err, err_size, src, section, dot + 1, key_len);
        return -1;
    }
    const key_spec *s = &keys[k];

    /* JSON when the value parses as JSON (numbers, true/false, "quoted"), else
     * the bare text as a string, so that lr_schedule=cosine needs no quotes. */
    const char *value = eq + 1;
    cJSON *item = cJSON_ParseWithOpts(value, NULL, 1);
    if (!item) item = cJSON_CreateString(value);
    cJSON *sec = cJSON_GetObjectItemCaseSensitive(root, s->section);
    if (!sec) sec = cJSON_AddObjectToObject(root, s->section);
    if (!item || !sec) {
        cJSON_Delete(item);
        set_err(err, err_size, "--set %s: out of memory", src.text);
        return -1;
    }
    bool ok = cJSON_GetObjectItemCaseSensitive(sec, s->key) ? cJSON_ReplaceItemInObjectCaseSensitive(sec, s->key, item)
                                               : cJSON_AddItemToObject(sec, s->key, item);
    if (!ok) {
        cJSON_Delete(item);
        set_err(err, err_size, "--set %s: out of memory", src.text);
        return -1;
    }
    origin[k] = index;
    return 0;
}

/* ---- one key ---- */

/* Validates ITEM against spec S and stores it into CONFIG. */
static int read_key(ldm_config *config, const key_spec *s, const cJSON *item, source src, char *err,
                    size_t err_size) {
    char *field = (char *)config + s->offset;
    char expected[160], got[80];
    bool ok = false, type_max = false;
    if (s->type == KEY_ENUM) {
        if (cJSON_IsString(item))
            for (int i = 0; s->allowed[i] && !ok; i++)
                if (strcmp(item->valuestring, s->allowed[i]) == 0) {
                    store_string(field, s->size, s->allowed[i]);
                    ok = true;
                }
    } else if (s->type == KEY_BOOL) {
        if (cJSON_IsBool(item)) {
            *(bool *)field = cJSON_IsTrue(item);
            ok = true;
        }
    } else if (s->type == KEY_INT_LIST) {
        int count = cJSON_IsArray(item) ? cJSON_GetArraySize(item) : 0;
        if (count >= 1 && count <= CONFIG_INT_LIST_MAX) {
            /* Zeroed first: entries past count stay zero (memcmp-equal configs). */
            config_int_list list;
            memset(&list, 0, sizeof list);
            double lo, hi;
            integer_limits(s, &lo, &hi);
            ok = true;
            const cJSON *element;
            cJSON_ArrayForEach(element, item) {
                double v = cJSON_IsNumber(element) ? element->valuedouble : NAN;
                bool in_range = (s->min_open ? v > s->min : v >= s->min) && (s->max_open ? v < s->max : v <= s->max);
                if (!(isfinite(v) && v == floor(v) && in_range && v >= lo && v <= hi)) {
                    type_max = isfinite(v) && v == floor(v) && in_range && v > hi;
                    ok = false;
                    break;
                }
                list.values[list.count++] = (int)v;
            }
            if (ok) memcpy(field, &list, sizeof list);
        }
    } else if (cJSON_IsNumber(item) && isfinite(item->valuedouble)) {
        double v = item->valuedouble;
        bool in_range = (s->min_open ? v > s->min : v >= s->min) && (s->max_open ? v < s->max : v <= s->max);
        if (s->type == KEY_DOUBLE) {
            if (in_range) {
                *(double *)field = v;
                ok = true;
            }
        } else if (v == floor(v) && in_range) {
            double lo, hi;
            integer_limits(s, &lo, &hi);
            type_max = v > hi;
            if (v >= lo && v <= hi) {
                /* Exact: v is integral and within the type's range. */
                if (s->type == KEY_INT)
                    *(int *)field = (int)v;
                else if (s->type == KEY_INT64)
                    *(int64_t *)field = (int64_t)v;
                else
                    *(uint64_t *)field = (uint64_t)v;
                ok = true;
            }
        }
    }
    if (ok) return 0;
    describe_expected(expected, sizeof expected, s, type_max);
    if (s->type == KEY_INT_LIST)
        describe_list_value(got, sizeof got, item);
    else
        describe_value(got, sizeof got, item);
    set_err(err, err_size, "%s%s: %s.%s: expected %s, got %s", src.prefix, src.text, s->section, s->key, expected,
            got);
    return -1;
}

/* ---- cross-field rules ---- */

/* The source to blame for a rule over several keys: the last override among
 * them (the likely cause), else the file. */
static source rule_source(const char *path, const char *const *overrides, const int *origin, int n, ...) {
    source src = {"", path ? path : "(defaults)"};
    int latest = -1;
    va_list args;
    va_start(args, n);
    for (int i = 0; i < n; i++) {
        const char *name = va_arg(args, const char *); /* "section.key" */
        const char *dot = strchr(name, '.');
        int k = find_key(name, (size_t)(dot - name), dot + 1, strlen(dot + 1));
        if (k >= 0 && origin[k] > latest) latest = origin[k];
    }
    va_end(args);
    if (latest >= 0) {
        src.prefix = "--set ";
        src.text = overrides[latest];
    }
    return src;
}

/* "[64, 128, 128]" */
static void format_int_list(char *buf, size_t n, const config_int_list *list) {
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < list->count && used < n; i++) {
        int w = snprintf(buf + used, n - used, "%s%d", i ? ", " : "[", list->values[i]);
        used += w > 0 ? (size_t)w : 0;
    }
    if (used < n) snprintf(buf + used, n - used, "]");
}

static int check_rules(const ldm_config *c, const char *path, const char *const *overrides, const int *origin,
                       char *err, size_t err_size) {
    const model_config *m = &c->model;
    const train_config *t = &c->train;
    const autoencoder_config *ae = &c->autoencoder;
    source src;
#define RULE_SOURCE(...) \
    rule_source(path, overrides, origin, (int)(sizeof((const char *[]){__VA_ARGS__}) / sizeof(const char *)), __VA_ARGS__)
#define FAIL(...)                                                                                        \
    do {                                                                                                 \
        char msg_[512];                                                                                  \
        snprintf(msg_, sizeof msg_, __VA_ARGS__);                                                        \
        set_err(err, err_size, "%s%s: %s", src.prefix, src.text, msg_);                                  \
        return -1;                                                                                       \
    } while (0)

    if (m->hidden_size < m->num_heads) {
        /* Each head needs at least one dimension: hidden_size / num_heads >= 1. */
        src = RULE_SOURCE("model.num_heads", "model.hidden_size");
        FAIL("model.num_heads: expected at most model.hidden_size (%d) so that each head has at least one "
             "dimension, got %d",
             m->hidden_size, m->num_heads);
    }
    if (m->hidden_size % m->num_heads != 0) {
        src = RULE_SOURCE("model.hidden_size", "model.num_heads");
        FAIL("model.hidden_size: expected a multiple of model.num_heads (%d), got %d", m->num_heads, m->hidden_size);
    }
    if (m->hidden_size % 4 != 0) {
        /* The 2-D sin-cos position embedding splits the width into 4 equal parts
         * (sin and cos of each of the two axes). */
        src = RULE_SOURCE("model.hidden_size");
        FAIL("model.hidden_size: expected a multiple of 4 (2-D sin-cos position embedding), got %d", m->hidden_size);
    }
    if (m->input_size % m->patch_size != 0) {
        src = RULE_SOURCE("model.input_size", "model.patch_size");
        FAIL("model.input_size: expected a multiple of model.patch_size (%d), got %d", m->patch_size, m->input_size);
    }
    double mlp_width = (double)m->hidden_size * m->mlp_ratio;
    if (!(mlp_width >= 1.0 && mlp_width < (double)INT_MAX + 1.0)) {
        /* The MLP width is (int)(hidden_size * mlp_ratio), as config_dit_shape computes it. */
        src = RULE_SOURCE("model.mlp_ratio", "model.hidden_size");
        char ratio[40];
        format_number(ratio, sizeof ratio, m->mlp_ratio);
        FAIL("model.mlp_ratio: expected an MLP width (int)(model.hidden_size * model.mlp_ratio) in [1, %d] "
             "with model.hidden_size %d, got %s",
             INT_MAX, m->hidden_size, ratio);
    }
    if (t->micro_batch != 0 && t->micro_batch > t->batch_size) {
        src = RULE_SOURCE("train.micro_batch", "train.batch_size");
        FAIL("train.micro_batch: expected 0 or at most train.batch_size (%d), got %d", t->batch_size,
             t->micro_batch);
    }
    if (t->micro_batch != 0 && t->batch_size % t->micro_batch != 0) {
        src = RULE_SOURCE("train.micro_batch", "train.batch_size");
        FAIL("train.micro_batch: expected 0 or a divisor of train.batch_size (%d), got %d", t->batch_size,
             t->micro_batch);
    }
    for (int i = 0; i < ae->block_out_channels.count; i++)
        if (ae->block_out_channels.values[i] % ae->norm_groups != 0) {
            /* GroupNorm splits every level's channels into norm_groups equal groups. */
            char widths[160];
            format_int_list(widths, sizeof widths, &ae->block_out_channels);
            src = RULE_SOURCE("autoencoder.block_out_channels", "autoencoder.norm_groups");
            FAIL("autoencoder.block_out_channels: expected multiples of autoencoder.norm_groups (%d), got %s",
                 ae->norm_groups, widths);
        }
    /* Every level but the last halves the image (stride-2 downsampling). */
    int reduction = 1 << (ae->block_out_channels.count - 1);
    if (ae->input_size % reduction != 0) {
        src = RULE_SOURCE("autoencoder.input_size", "autoencoder.block_out_channels");
        FAIL("autoencoder.input_size: expected a multiple of %d (2^(levels - 1) with %d levels in "
             "autoencoder.block_out_channels), got %d",
             reduction, ae->block_out_channels.count, ae->input_size);
    }
    if (!(c->distill.sigma_max > c->distill.sigma_min)) {
        src = RULE_SOURCE("distill.sigma_max", "distill.sigma_min");
        char lo[40], hi[40];
        format_number(lo, sizeof lo, c->distill.sigma_min);
        format_number(hi, sizeof hi, c->distill.sigma_max);
        FAIL("distill.sigma_max: expected more than distill.sigma_min (%s), got %s", lo, hi);
    }
    if (c->distill.guidance_max != 0 && !(c->distill.guidance_max > c->distill.guidance)) {
        src = RULE_SOURCE("distill.guidance_max", "distill.guidance");
        char lo[40], hi[40];
        format_number(lo, sizeof lo, c->distill.guidance);
        format_number(hi, sizeof hi, c->distill.guidance_max);
        FAIL("distill.guidance_max: expected 0 (a fixed guidance scale) or more than distill.guidance (%s), got %s",
             lo, hi);
    }
#undef FAIL
#undef RULE_SOURCE
    return 0;
}

/* ---- the API ---- */

void config_defaults(ldm_config *config) {
    /* Zero first: padding and the tails of the char arrays are then zero too, so
     * that equal configs compare equal with memcmp. */
    memset(config, 0, sizeof *config);
    for (size_t i = 0; i < KEY_COUNT; i++) {
        const key_spec *s = &keys[i];
        char *field = (char *)config + s->offset;
        switch (s->type) {
        case KEY_INT: *(int *)field = (int)s->def; break;
        case KEY_INT64: *(int64_t *)field = (int64_t)s->def; break;
        case KEY_UINT64: *(uint64_t *)field = (uint64_t)s->def; break;
        case KEY_DOUBLE: *(double *)field = s->def; break;
        case KEY_ENUM: store_string(field, s->size, s->def_str); break;
        case KEY_BOOL: *(bool *)field = s->def != 0; break;
        case KEY_INT_LIST: {
            config_int_list *list = (config_int_list *)field;
            if (s->def_count < 1 || s->def_count > CONFIG_INT_LIST_MAX)
                fatal_internal("config schema: %s.%s has %d default values", s->section, s->key, s->def_count);
            list->count = s->def_count;
            memcpy(list->values, s->def_list, sizeof(int) * (size_t)s->def_count);
            break;
        }
        }
    }
}

/* The part of config_load after reading: root is the parsed file (taken over and
 * freed here), or NULL for defaults only; path names the source in errors. */
static int load_root(ldm_config *config, cJSON *root, const char *path, const char *const *overrides,
                     int override_count, char *err, size_t err_size) {
    /* Work on a copy: *config changes only when the whole config is valid. */
    ldm_config out;
    config_defaults(&out);

    if (root) {
        if (check_structure(root, path, err, err_size) != 0) goto fail;
    } else {
        root = cJSON_CreateObject();
        if (!root) {
            set_err(err, err_size, "config: out of memory");
            return -1;
        }
    }

    int origin[KEY_COUNT]; /* which override last set each key; -1: the file */
    for (size_t i = 0; i < KEY_COUNT; i++) origin[i] = -1;
    for (int i = 0; overrides && i < override_count; i++)
        if (apply_override(root, overrides[i], i, origin, err, err_size) != 0) goto fail;

    for (size_t i = 0; i < KEY_COUNT; i++) {
        const cJSON *sec = cJSON_GetObjectItemCaseSensitive(root, keys[i].section);
        const cJSON *item = sec ? cJSON_GetObjectItemCaseSensitive(sec, keys[i].key) : NULL;
        if (!item) continue; /* left out: the default */
        source src = origin[i] >= 0 ? (source){"--set ", overrides[origin[i]]} : (source){"", path};
        if (read_key(&out, &keys[i], item, src, err, err_size) != 0) goto fail;
    }
    if (check_rules(&out, path, overrides, origin, err, err_size) != 0) goto fail;

    cJSON_Delete(root);
    memcpy(config, &out, sizeof out);
    return 0;
fail:
    cJSON_Delete(root);
    return -1;
}

int config_load(ldm_config *config, const char *path, const char *const *overrides, int override_count, char *err,
                size_t err_size) {
    set_err(err, err_size, "%s", "");
    cJSON *root = NULL;
    if (path && parse_file(path, &root, err, err_size) != 0) return -1;
    return load_root(config, root, path, overrides, override_count, err, err_size);
}

int config_load_json_text(ldm_config *config, const char *text, const char *source, const char *const *overrides,
                          int override_count, char *err, size_t err_size) {
    set_err(err, err_size, "%s", "");
    cJSON *root = NULL;
    if (parse_text(text, strlen(text), source, &root, err, err_size) != 0) return -1;
    return load_root(config, root, source, overrides, override_count, err, err_size);
}

char *config_to_json(const ldm_config *config) {
    cJSON *root = cJSON_CreateObject();
    if (!root) fatal_internal("out of memory writing the config as JSON");
    for (size_t i = 0; i < KEY_COUNT; i++) {
        const key_spec *s = &keys[i];
        const char *field = (const char *)config + s->offset;
        cJSON *sec = cJSON_GetObjectItemCaseSensitive(root, s->section);
        if (!sec) sec = cJSON_AddObjectToObject(root, s->section);
        /* Numbers go in as raw text of our own: cJSON prints a double with 15
         * digits whenever that reads back within an epsilon, which is not exact
         * (0.30000000000000004 would come back as 0.3); format_number is. */
        char number[48];
        switch (s->type) {
        case KEY_INT: snprintf(number, sizeof number, "%d", *(const int *)field); break;
        case KEY_INT64: snprintf(number, sizeof number, "%" PRId64, *(const int64_t *)field); break;
        case KEY_UINT64: snprintf(number, sizeof number, "%" PRIu64, *(const uint64_t *)field); break;
        case KEY_DOUBLE: format_number(number, sizeof number, *(const double *)field); break;
        default: break;
        }
        cJSON *item = NULL;
        if (sec) {
            if (s->type == KEY_ENUM)
                item = cJSON_AddStringToObject(sec, s->key, field);
            else if (s->type == KEY_BOOL)
                item = cJSON_AddBoolToObject(sec, s->key, *(const bool *)field);
            else if (s->type == KEY_INT_LIST) {
                const config_int_list *list = (const config_int_list *)field;
                item = cJSON_CreateIntArray(list->values, list->count);
                if (item && !cJSON_AddItemToObject(sec, s->key, item)) {
                    cJSON_Delete(item);
                    item = NULL;
                }
            } else
                item = cJSON_AddRawToObject(sec, s->key, number);
        }
        if (!item) {
            cJSON_Delete(root);
            fatal_internal("out of memory writing the config as JSON");
        }
    }
    char *printed = cJSON_Print(root);
    cJSON_Delete(root);
    if (!printed) fatal_internal("out of memory writing the config as JSON");
    /* Our own copy, so that the caller frees it with free() whatever allocator
     * hooks cJSON was given. */
    char *copy = xstrdup(printed);
    cJSON_free(printed);
    return copy;
}

/* See tensorboard_log.h. */
#include "tensorboard_log.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "atomic_file.h"
#include "fatal.h"
#include "tensorboard_events.h"

#define EVENTS_PREFIX "events.out.tfevents."
#define SUMMARY_BYTES (64 << 10) /* the scalars of a line: a few hundred bytes each at most */

static double wall_time(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int is_events_file(const char *name) {
    return strncmp(name, EVENTS_PREFIX, strlen(EVENTS_PREFIX)) == 0 && !strstr(name, ".tmp");
}

/* The events files in folder, sorted by name (so by creation time); caller frees. */
static char **events_files(const char *folder, int *count) {
    *count = 0;
    DIR *dir = opendir(folder);
    if (!dir) fatal_internal("%s: cannot list: %s", folder, strerror(errno));
    char **names = NULL;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (!is_events_file(entry->d_name)) continue;
        char **grown = realloc(names, (size_t)(*count + 1) * sizeof *names);
        if (!grown) fatal_internal("out of memory listing %s", folder);
        names = grown;
        names[(*count)++] = xstrdup(entry->d_name);
    }
    closedir(dir);
    for (int i = 1; i < *count; i++) /* insertion sort: a handful of files */
        for (int j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
            char *swap = names[j];
            names[j] = names[j - 1], names[j - 1] = swap;
        }
    return names;
}

static uint8_t *read_whole_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) fatal_internal("%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0) fatal_internal("%s: cannot stat: %s", path, strerror(errno));
    *size = (size_t)st.st_size;
    uint8_t *bytes = xmalloc(*size ? *size : 1);
    if (fread(bytes, 1, *size, f) != *size) fatal_internal("%s: cannot read: %s", path, strerror(errno));
    fclose(f);
    return bytes;
}

typedef struct {
    uint8_t *kept;
    size_t used;
    int64_t last_step;
} kept_records;

static void keep_record(const uint8_t *record, size_t size, int64_t step, void *context) {
    kept_records *k = context;
    if (step > k->last_step) return;
    memmove(k->kept + k->used, record, size); /* kept only moves down within the same bytes */
    k->used += size;
}

/* Rewrites path with only its whole records of steps <= last_step. */
static void keep_steps_through(const char *path, int64_t last_step) {
    size_t size;
    uint8_t *bytes = read_whole_file(path, &size);
    kept_records k = {.kept = bytes, .last_step = last_step};
    tensorboard_records_scan(bytes, size, keep_record, &k);
    char err[512];
    if (k.used != size && atomic_write_file(path, bytes, k.used, err, sizeof err) != 0) fatal_internal("%s", err);
    free(bytes);
}

void tensorboard_log_open(tensorboard_log *log, const char *run_dir, int64_t resumed_step) {
    memset(log, 0, sizeof *log);
    log->run_dir = xstrdup(run_dir);
    char *folder = path_join(run_dir, "tb");
    if (mkdir(folder, 0777) != 0 && errno != EEXIST)
        fatal_internal("%s: cannot create: %s", folder, strerror(errno));
    int count;
    char **names = events_files(folder, &count);
    for (int i = 0; i < count; i++) {
        char *path = path_join(folder, names[i]);
        if (resumed_step > 0)
            keep_steps_through(path, resumed_step);
        else if (unlink(path) != 0)
            fatal_internal("%s: cannot remove the last run's events: %s", path, strerror(errno));
        free(path);
    }
    if (resumed_step > 0 && count > 0) {
        log->path = path_join(folder, names[count - 1]);
        log->events = fopen(log->path, "ab");
    } else {
        char host[256] = "localhost", name[512];
        gethostname(host, sizeof host - 1);
        host[sizeof host - 1] = 0;
        snprintf(name, sizeof name, EVENTS_PREFIX "%010lld.%s", (long long)time(NULL), host);
        log->path = path_join(folder, name);
        log->events = fopen(log->path, "wb");
        if (log->events && tensorboard_event_write(log->events, NULL, wall_time(), 0, "brain.Event:2") != 0)
            fatal_internal("%s: cannot write: %s", log->path, strerror(errno));
    }
    if (!log->events) fatal_internal("%s: cannot open for writing: %s", log->path, strerror(errno));
    if (fflush(log->events) != 0) fatal_internal("%s: cannot write: %s", log->path, strerror(errno));
    for (int i = 0; i < count; i++) free(names[i]);
    free(names);
    free(folder);
    log->summary_size = SUMMARY_BYTES;
    log->summary = xmalloc(log->summary_size);
}

/* ---- the metrics line: a flat JSON object as metrics_log writes it ---- */

static const char *skip_space(const char *p) {
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
    return p;
}

/* Past a JSON string starting at its opening quote; its contents (escapes
 * kept as written) copied into out when out is non-NULL. */
static const char *scan_string(const char *p, char *out, size_t out_size) {
    size_t used = 0;
    for (p++; *p && *p != '"'; p++) {
        if (*p == '\\' && p[1]) {
            if (out && used + 1 < out_size) out[used++] = *p;
            p++;
        }
        if (out && used + 1 < out_size) out[used++] = *p;
    }
    if (out) out[used] = 0;
    return *p ? p + 1 : p;
}

/* Past any JSON value (nested objects and arrays included). */
static const char *skip_value(const char *p) {
    p = skip_space(p);
    if (*p == '"') return scan_string(p, NULL, 0);
    if (*p == '{' || *p == '[') {
        int depth = 0;
        do {
            if (*p == '"') {
                p = scan_string(p, NULL, 0);
                continue;
            }
            if (*p == '{' || *p == '[') depth++;
            if (*p == '}' || *p == ']') depth--;
            p++;
        } while (*p && depth > 0);
        return p;
    }
    while (*p && *p != ',' && *p != '}' && *p != ']') p++;
    return p;
}

/* A number, true or false at p as a float into *value; 0 for null, a string
 * or anything else. */
static int scalar_at(const char *p, float *value) {
    p = skip_space(p);
    if (strncmp(p, "true", 4) == 0) return *value = 1.0f, 1;
    if (strncmp(p, "false", 5) == 0) return *value = 0.0f, 1;
    if (*p == '-' || (*p >= '0' && *p <= '9')) {
        char *end;
        const double number = strtod(p, &end);
        if (end == p) return 0;
        *value = (float)number;
        return 1;
    }
    return 0;
}

void tensorboard_log_step(tensorboard_log *log, const char *json_line, const char *picture) {
    long long step = -1;
    if (sscanf(json_line, "{\"step\": %lld", &step) != 1)
        fatal_internal("%s: a metrics line without its step: %.80s", log->path, json_line);
    tensorboard_event event;
    tensorboard_event_begin(&event, log->summary, log->summary_size);
    const char *p = skip_space(json_line);
    if (*p == '{') p++;
    for (;;) {
        p = skip_space(p);
        if (*p != '"') break;
        char name[128];
        p = skip_space(scan_string(p, name, sizeof name));
        if (*p != ':') break;
        p = skip_space(p + 1);
        float value;
        if (*p == '[') {
            p++;
            for (int i = 0;; i++) {
                p = skip_space(p);
                if (*p == ']') break;
                if (scalar_at(p, &value)) {
                    char tag[160];
                    snprintf(tag, sizeof tag, "%s/%d", name, i);
                    tensorboard_event_add_scalar(&event, tag, value);
                }
                p = skip_space(skip_value(p));
                if (*p == ',') p++;
                else break;
            }
            if (*p == ']') p++;
        } else {
            if (strcmp(name, "step") != 0 && scalar_at(p, &value)) tensorboard_event_add_scalar(&event, name, value);
            p = skip_value(p);
        }
        p = skip_space(p);
        if (*p == ',') p++;
    }
    if (tensorboard_event_write(log->events, &event, wall_time(), step, NULL) != 0)
        fatal_internal("%s: cannot write step %lld (%s)", log->path, step,
                       event.overflow ? "more metrics than an event holds" : strerror(errno));
    if (picture) {
        char *path = path_join(log->run_dir, picture);
        size_t size;
        uint8_t *png = read_whole_file(path, &size);
        static const uint8_t signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
        if (size < 33 || memcmp(png, signature, 8) != 0 || memcmp(png + 12, "IHDR", 4) != 0)
            fatal_internal("%s: not a PNG file", path);
        const int width = (int)((uint32_t)png[16] << 24 | (uint32_t)png[17] << 16 | (uint32_t)png[18] << 8 | png[19]);
        const int height = (int)((uint32_t)png[20] << 24 | (uint32_t)png[21] << 16 | (uint32_t)png[22] << 8 | png[23]);
        /* PNG colour type -> TensorBoard colorspace: grey, grey + alpha, RGB (and palette), RGBA */
        const int color_type = png[25];
        const int colorspace = color_type == 0 ? 1 : color_type == 4 ? 2 : color_type == 6 ? 4 : 3;
        const size_t image_summary_size = size + 512;
        uint8_t *image_summary = xmalloc(image_summary_size);
        tensorboard_event image;
        tensorboard_event_begin(&image, image_summary, image_summary_size);
        tensorboard_event_add_image(&image, "samples", height, width, colorspace, png, size);
        if (tensorboard_event_write(log->events, &image, wall_time(), step, NULL) != 0)
            fatal_internal("%s: cannot write the picture of step %lld: %s", log->path, step, strerror(errno));
        free(image_summary);
        free(png);
        free(path);
    }
    if (fflush(log->events) != 0) fatal_internal("%s: cannot write: %s", log->path, strerror(errno));
}

void tensorboard_log_close(tensorboard_log *log) {
    if (!log->events) return;
    fflush(log->events);
    fsync(fileno(log->events));
    fclose(log->events);
    free(log->path);
    free(log->run_dir);
    free(log->summary);
    log->events = NULL;
}

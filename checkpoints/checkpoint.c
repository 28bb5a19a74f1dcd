/* The checkpoint directory format (see checkpoint.h): publishing a step's
 * checkpoint atomically (partial directory, fsync, rename, then `latest`), the
 * retention rule, verification against manifest.json's sizes and CRC-32s,
 * choosing the checkpoint to resume from, and loading tensors back by name.
 *
 * Test hook: when the environment variable LDM_TEST_SLOW_CHECKPOINT_MS is set,
 * publishing sleeps that many milliseconds after writing each file inside the
 * partial directory, so that a test can kill -9 a process in the middle of
 * writing a checkpoint and check that every published one is still whole. */
#include "checkpoint.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "atomic_file.h"
#include "comm.h"
#include "disk_space.h"
#include "fatal.h"

#define STEP_PREFIX "step-"
#define PARTIAL_PREFIX ".partial-"
#define LATEST_NAME "latest"
#define LATEST_TEMPORARY_PREFIX ".latest.tmp-"
#define MANIFEST_NAME "manifest.json"
#define MANIFEST_MAX_BYTES (1 << 20)
#define STATE_MAX_BYTES (64 << 20)

/* Every file a checkpoint must hold besides manifest.json, in the order written. */
static const char *const checkpoint_files[] = {"model.safetensors", "ema.safetensors", "optimizer.safetensors",
                                               "state.json"};
enum { CHECKPOINT_FILE_COUNT = sizeof(checkpoint_files) / sizeof(checkpoint_files[0]) };

/* ---- small helpers ---- */

static char *step_name(int64_t step) {
    char name[64];
    snprintf(name, sizeof(name), STEP_PREFIX "%08lld", (long long)step);
    return xstrdup(name);
}

/* The step of a "step-<digits>" name; -1 for any other name. */
static int64_t step_of_name(const char *name) {
    if (strncmp(name, STEP_PREFIX, strlen(STEP_PREFIX)) != 0) return -1;
    const char *digits = name + strlen(STEP_PREFIX);
    if (!*digits || strlen(digits) > 18) return -1;
    int64_t step = 0;
    for (const char *c = digits; *c; c++) {
        if (*c < '0' || *c > '9') return -1;
        step = step * 10 + (*c - '0');
    }
    return step;
}

static bool starts_with(const char *text, const char *prefix) { return strncmp(text, prefix, strlen(prefix)) == 0; }

static void shape_text(char *out, size_t size, int ndim, const int64_t *shape) {
    size_t used = (size_t)snprintf(out, size, "[");
    for (int d = 0; d < ndim && used < size; d++)
        used += (size_t)snprintf(out + used, size - used, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (used < size) snprintf(out + used, size - used, "]");
}

/* The whole file as a NUL-terminated string (caller frees); NULL with errno set
 * when it cannot be read, EFBIG when it is longer than max_bytes. */
static char *read_text_file(const char *path, size_t max_bytes, size_t *size_out) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t capacity = 4096, size = 0;
    char *text = xmalloc(capacity + 1);
    size_t got;
    while ((got = fread(text + size, 1, capacity - size, f)) > 0) {
        size += got;
        if (size > max_bytes) {
            fclose(f);
            free(text);
            errno = EFBIG;
            return NULL;
        }
        if (size == capacity) {
            capacity *= 2;
            char *grown = realloc(text, capacity + 1);
            if (!grown) fatal_internal("out of memory reading %s", path);
            text = grown;
        }
    }
    int failed = ferror(f);
    fclose(f);
    if (failed) {
        free(text);
        errno = EIO;
        return NULL;
    }
    text[size] = '\0';
    if (size_out) *size_out = size;
    return text;
}

/* Size and CRC-32 of a file. Returns 0, or -1 with errno set. */
static int file_size_and_crc(const char *path, uint64_t *bytes, uint32_t *crc) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    struct stat info;
    int status = fstat(fd, &info);
    if (status != 0 || !S_ISREG(info.st_mode)) {
        int saved_errno = status != 0 ? errno : EISDIR;
        close(fd);
        errno = saved_errno;
        return -1;
    }
    enum { CHUNK = 1 << 20 };
    unsigned char *buffer = xmalloc(CHUNK);
    uLong sum = crc32(0L, Z_NULL, 0);
    uint64_t total = 0;
    ssize_t got;
    while ((got = read(fd, buffer, CHUNK)) > 0) {
        sum = crc32(sum, buffer, (uInt)got);
        total += (uint64_t)got;
    }
    int saved_errno = errno;
    free(buffer);
    close(fd);
    if (got < 0) {
        errno = saved_errno;
        return -1;
    }
    *bytes = total;
    *crc = (uint32_t)sum;
    return 0;
}

static int remove_entry(const char *path, const struct stat *info, int type, struct FTW *where) {
    (void)info;
    (void)type;
    (void)where;
    return remove(path) == 0 || errno == ENOENT ? 0 : -1;
}

static void slow_down_for_tests(void);

/* remove_entry with LDM_TEST_SLOW_CHECKPOINT_MS after each file: retention's
 * deletions made slow enough for a test to kill -9 a process in the middle. */
static int remove_entry_slowly(const char *path, const struct stat *info, int type, struct FTW *where) {
    const int status = remove_entry(path, info, type, where);
    if (type == FTW_F) slow_down_for_tests();
    return status;
}

/* Removes a directory and everything under it (nothing is followed through a
 * symbolic link); a path that does not exist is already removed. Returns 0 or -1. */
static int remove_tree_by(const char *path, int (*remove_one)(const char *, const struct stat *, int, struct FTW *)) {
    struct stat info;
    if (lstat(path, &info) != 0) return errno == ENOENT ? 0 : -1;
    return nftw(path, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

static int remove_tree(const char *path) { return remove_tree_by(path, remove_entry); }

/* ---- publishing ---- */

/* LDM_TEST_SLOW_CHECKPOINT_MS: a pause after each file written (and deleted by
 * retention), so that a test can kill -9 a process in the middle. */
static void slow_down_for_tests(void) {
    const char *ms = getenv("LDM_TEST_SLOW_CHECKPOINT_MS");
    if (!ms || !*ms) return;
    long milliseconds = strtol(ms, NULL, 10);
    if (milliseconds <= 0) return;
    struct timespec pause = {milliseconds / 1000, (milliseconds % 1000) * 1000000L};
    while (nanosleep(&pause, &pause) != 0 && errno == EINTR) {
    }
}

static char *latest_target(const char *checkpoints);

/* A failed publish removes its partial directory (best effort) and ends every
 * rank; the published checkpoints were not touched. Every caller comes here
 * straight from the failed call, with its errno: on a full disk the line says
 * so, which checkpoint was not kept and which one `latest` still names, and the
 * exit status is 2 (the user frees space and resumes); partial may be NULL. */
static __attribute__((noreturn, format(printf, 2, 3))) void publish_failed(const char *partial, const char *fmt,
                                                                          ...) {
    const int error_number = errno;
    char message[2048];
    va_list args;
    va_start(args, fmt);
    vsnprintf(message, sizeof(message), fmt, args);
    va_end(args);
    char full[512];
    /* Measured before the partial directory is removed and its space freed. */
    const int disk_full = partial && disk_full_describe(partial, error_number, full, sizeof full);
    if (partial) remove_tree(partial);
    if (disk_full) {
        char *checkpoints = disk_folder_of(partial);
        const char *name = strrchr(partial, '/') ? strrchr(partial, '/') + 1 : partial;
        if (strncmp(name, PARTIAL_PREFIX, strlen(PARTIAL_PREFIX)) == 0) name += strlen(PARTIAL_PREFIX);
        char *latest = latest_target(checkpoints);
        char kept[256];
        if (latest)
            snprintf(kept, sizeof kept, "`latest` is still %s: free space, then resume with --resume auto", latest);
        else
            snprintf(kept, sizeof kept, "there is no earlier checkpoint: free space and run again");
        fatal_input("%s: cannot write the checkpoint %s: %s; it was not kept, %s", checkpoints, name, full, kept);
    }
    fatal_internal("%s", message);
}

static void make_folder(const char *path) {
    if (mkdir(path, 0777) != 0 && errno != EEXIST) publish_failed(NULL, "%s: cannot create the folder: %s", path,
                                                                  strerror(errno));
    struct stat info;
    if (stat(path, &info) != 0 || !S_ISDIR(info.st_mode)) fatal_internal("%s: exists and is not a folder", path);
}

/* Model or EMA file: every table entry, trainable ones from values, fixed ones from fixed. */
static void write_weights(const char *path, const char *partial, const param_table *table, const float *values,
                          const float *fixed) {
    safetensors_entry *entries = xcalloc((size_t)(table->count > 0 ? table->count : 1), sizeof(*entries));
    for (int i = 0; i < table->count; i++) {
        const param_entry *e = &table->entries[i];
        entries[i].name = e->name;
        entries[i].dtype = SAFETENSORS_F32;
        entries[i].ndim = e->ndim;
        for (int d = 0; d < e->ndim; d++) entries[i].shape[d] = e->shape[d];
        entries[i].data = (e->trainable ? values : fixed) + e->offset;
    }
    char err[1024];
    int status = safetensors_write(path, entries, table->count, NULL, NULL, 0, err, sizeof(err));
    free(entries);
    if (status != 0) publish_failed(partial, "%s", err);
}

static void write_optimizer(const char *path, const char *partial, const checkpoint_contents *contents) {
    const param_table *table = contents->table;
    safetensors_entry *entries = xcalloc((size_t)(2 * table->count + 1), sizeof(*entries));
    char **names = xcalloc((size_t)(2 * table->count + 1), sizeof(*names));
    int count = 0;
    for (int i = 0; i < table->count; i++) {
        const param_entry *e = &table->entries[i];
        if (!e->trainable) continue;
        for (int moment = 0; moment < 2; moment++) {
            size_t size = strlen(e->name) + 16;
            names[count] = xmalloc(size);
            snprintf(names[count], size, "%s.%s", moment == 0 ? "exp_avg" : "exp_avg_sq", e->name);
            safetensors_entry *s = &entries[count];
            s->name = names[count];
            s->dtype = SAFETENSORS_F32;
            s->ndim = e->ndim;
            for (int d = 0; d < e->ndim; d++) s->shape[d] = e->shape[d];
            s->data = (moment == 0 ? contents->adam_m : contents->adam_v) + e->offset;
            count++;
        }
    }
    char step_text[32];
    snprintf(step_text, sizeof(step_text), "%lld", (long long)contents->adam_step);
    const char *keys[] = {"step"};
    const char *values[] = {step_text};
    char err[1024];
    int status = safetensors_write(path, entries, count, keys, values, 1, err, sizeof(err));
    for (int i = 0; i < count; i++) free(names[i]);
    free(names);
    free(entries);
    if (status != 0) publish_failed(partial, "%s", err);
}

/* The extra weights' file name, "<extra_name>.safetensors" (caller frees). */
static char *extra_file_name(const char *extra_name) {
    size_t n = strlen(extra_name) + sizeof(".safetensors");
    char *name = xmalloc(n);
    snprintf(name, n, "%s.safetensors", extra_name);
    return name;
}

/* Lists the four files, and extra_file when not NULL. */
static void write_manifest(const char *partial, int64_t step, const char *extra_file) {
    cJSON *manifest = cJSON_CreateObject();
    cJSON_AddStringToObject(manifest, "format", CHECKPOINT_FORMAT_NAME);
    cJSON_AddNumberToObject(manifest, "version", CHECKPOINT_FORMAT_VERSION);
    cJSON_AddNumberToObject(manifest, "step", (double)step);
    cJSON *files = cJSON_AddObjectToObject(manifest, "files");
    for (int i = 0; i < CHECKPOINT_FILE_COUNT + (extra_file != NULL); i++) {
        const char *file_name = i < CHECKPOINT_FILE_COUNT ? checkpoint_files[i] : extra_file;
        char *path = path_join(partial, file_name);
        uint64_t bytes;
        uint32_t crc;
        /* Read back from the file system, so the manifest describes what is on disk. */
        if (file_size_and_crc(path, &bytes, &crc) != 0)
            publish_failed(partial, "%s: cannot read back: %s", path, strerror(errno));
        free(path);
        char crc_text[16];
        snprintf(crc_text, sizeof(crc_text), "%08" PRIx32, crc);
        cJSON *entry = cJSON_AddObjectToObject(files, file_name);
        cJSON_AddNumberToObject(entry, "bytes", (double)bytes);
        cJSON_AddStringToObject(entry, "crc32", crc_text);
    }
    char *text = cJSON_Print(manifest);
    cJSON_Delete(manifest);
    if (!text) fatal_internal("out of memory writing the checkpoint manifest");
    size_t length = strlen(text);
    text = realloc(text, length + 2);
    if (!text) fatal_internal("out of memory writing the checkpoint manifest");
    text[length] = '\n';
    text[length + 1] = '\0';
    char *path = path_join(partial, MANIFEST_NAME);
    char err[1024];
    if (atomic_write_file(path, text, length + 1, err, sizeof(err)) != 0) publish_failed(partial, "%s", err);
    free(path);
    free(text);
}

/* Moves the finished partial directory to its step name. When that name exists
 * (a run resumed from an older checkpoint publishes the same step again), the
 * two are exchanged atomically where the file system can, so that the step's
 * name never stops pointing at a whole checkpoint, and the old one is removed. */
static void move_into_place(const char *partial, const char *final_dir, const char *checkpoints) {
    if (rename(partial, final_dir) == 0) return;
    if (errno != ENOTEMPTY && errno != EEXIST)
        publish_failed(partial, "%s: cannot rename into place: %s", final_dir, strerror(errno));
    if (renameat2(AT_FDCWD, partial, AT_FDCWD, final_dir, RENAME_EXCHANGE) == 0) {
        if (remove_tree(partial) != 0)
            fprintf(stderr, "ldm: warning: %s: cannot delete the replaced checkpoint: %s\n", partial,
                    strerror(errno));
        return;
    }
    /* No exchange on this file system: move the old one aside first. */
    char *aside = path_join(checkpoints, PARTIAL_PREFIX "replaced");
    remove_tree(aside);
    if (rename(final_dir, aside) != 0)
        publish_failed(partial, "%s: cannot move the existing checkpoint aside: %s", final_dir, strerror(errno));
    if (rename(partial, final_dir) != 0) {
        int saved_errno = errno;
        rename(aside, final_dir); /* the old one back, so that nothing published is lost */
        publish_failed(partial, "%s: cannot rename into place: %s", final_dir, strerror(saved_errno));
    }
    remove_tree(aside);
    free(aside);
}

static void point_latest_at(const char *checkpoints, const char *name) {
    char temporary_name[64];
    snprintf(temporary_name, sizeof(temporary_name), LATEST_TEMPORARY_PREFIX "%d", (int)getpid());
    char *temporary = path_join(checkpoints, temporary_name);
    char *latest = path_join(checkpoints, LATEST_NAME);
    unlink(temporary);
    if (symlink(name, temporary) != 0)
        fatal_internal("%s: cannot create a symbolic link: %s", temporary, strerror(errno));
    if (rename(temporary, latest) != 0) {
        int saved_errno = errno;
        unlink(temporary);
        fatal_internal("%s: cannot replace: %s", latest, strerror(saved_errno));
    }
    if (fsync_folder_of(checkpoints, 1) != 0)
        fatal_internal("%s: cannot fsync the folder: %s", checkpoints, strerror(errno));
    free(temporary);
    free(latest);
}

/* The name `latest` points to (caller frees), or NULL. */
static char *latest_target(const char *checkpoints) {
    char *latest = path_join(checkpoints, LATEST_NAME);
    char target[4096];
    ssize_t length = readlink(latest, target, sizeof(target) - 1);
    free(latest);
    if (length < 0) return NULL;
    target[length] = '\0';
    return xstrdup(target);
}

typedef struct {
    char *name;
    int64_t step;
} step_folder;

static int newest_first(const void *a, const void *b) {
    int64_t sa = ((const step_folder *)a)->step, sb = ((const step_folder *)b)->step;
    return sa < sb ? 1 : sa > sb ? -1 : 0;
}

/* The step-* entries of a checkpoints folder, newest first. Returns the count, or
 * -1 with errno set when the folder cannot be opened. */
static int list_step_folders(const char *checkpoints, step_folder **out) {
    *out = NULL;
    DIR *folder = opendir(checkpoints);
    if (!folder) return -1;
    int count = 0, capacity = 0;
    step_folder *list = NULL;
    struct dirent *entry;
    while ((entry = readdir(folder)) != NULL) {
        int64_t step = step_of_name(entry->d_name);
        if (step < 0) continue;
        if (count == capacity) {
            capacity = capacity ? 2 * capacity : 16;
            step_folder *grown = realloc(list, sizeof(*list) * (size_t)capacity);
            if (!grown) fatal_internal("out of memory listing %s", checkpoints);
            list = grown;
        }
        list[count].name = xstrdup(entry->d_name);
        list[count].step = step;
        count++;
    }
    closedir(folder);
    if (count > 1) qsort(list, (size_t)count, sizeof(*list), newest_first);
    *out = list;
    return count;
}

static void free_step_folders(step_folder *list, int count) {
    for (int i = 0; i < count; i++) free(list[i].name);
    free(list);
}

/* A step folder leaves its name in one rename before its files go: a process
 * killed while deleting it leaves a leftover of an interrupted publish (swept by
 * the next retention), never a step folder with some of its files. */
static void delete_or_warn(const char *checkpoints, const char *name) {
    char *path = path_join(checkpoints, name);
    char *doomed = path;
    if (!starts_with(name, PARTIAL_PREFIX)) {
        const size_t size = strlen(PARTIAL_PREFIX "deleting-") + strlen(name) + 1;
        char *doomed_name = xmalloc(size);
        snprintf(doomed_name, size, PARTIAL_PREFIX "deleting-%s", name);
        doomed = path_join(checkpoints, doomed_name);
        free(doomed_name);
        remove_tree(doomed); /* a leftover of the same name from an earlier kill */
        if (rename(path, doomed) != 0) {
            fprintf(stderr, "ldm: warning: %s: cannot delete: %s\n", path, strerror(errno));
            free(doomed);
            free(path);
            return;
        }
    }
    if (remove_tree_by(doomed, remove_entry_slowly) != 0)
        fprintf(stderr, "ldm: warning: %s: cannot delete: %s\n", doomed, strerror(errno));
    if (doomed != path) free(doomed);
    free(path);
}

/* Keeps the newest keep_last, the multiples of keep_every, the one just
 * published and the one `latest` names (the same one when called after
 * point_latest_at; checked anyway, as a reader may be following the link);
 * deletes every other step folder and every leftover of an interrupted publish.
 * A folder that cannot be deleted is a warning, not a reason to stop training. */
static void apply_retention(const char *checkpoints, const char *published, int keep_last, int64_t keep_every) {
    char *latest = latest_target(checkpoints);
    step_folder *steps;
    int count = list_step_folders(checkpoints, &steps);
    for (int i = 0; i < count; i++) {
        bool keep = i < keep_last || (keep_every > 0 && steps[i].step % keep_every == 0) ||
                    strcmp(steps[i].name, published) == 0 || (latest && strcmp(steps[i].name, latest) == 0);
        if (!keep) delete_or_warn(checkpoints, steps[i].name);
    }
    free_step_folders(steps, count > 0 ? count : 0);
    free(latest);

    DIR *folder = opendir(checkpoints);
    if (folder) {
        /* Names are collected first: deleting while reading a folder may skip entries. */
        char **leftovers = NULL;
        int leftover_count = 0;
        struct dirent *entry;
        while ((entry = readdir(folder)) != NULL) {
            if (!starts_with(entry->d_name, PARTIAL_PREFIX) && !starts_with(entry->d_name, LATEST_TEMPORARY_PREFIX))
                continue;
            char **grown = realloc(leftovers, sizeof(*leftovers) * (size_t)(leftover_count + 1));
            if (!grown) fatal_internal("out of memory listing %s", checkpoints);
            leftovers = grown;
            leftovers[leftover_count++] = xstrdup(entry->d_name);
        }
        closedir(folder);
        for (int i = 0; i < leftover_count; i++) {
            delete_or_warn(checkpoints, leftovers[i]);
            free(leftovers[i]);
        }
        free(leftovers);
    }
}

char *checkpoint_publish(const char *run_dir, int64_t step, const checkpoint_contents *contents, int keep_last,
                         int64_t keep_every) {
    if (keep_last < 2) fatal_internal("checkpoint_publish: keep_last is %d, it must be at least 2", keep_last);
    if (step < 0) fatal_internal("checkpoint_publish: negative step %lld", (long long)step);
    const param_table *table = contents->table;
    if (table->fixed_numel > 0 && !contents->fixed)
        fatal_internal("checkpoint_publish: the table has fixed tensors but no fixed buffer was given");

    make_folder(run_dir);
    char *checkpoints = path_join(run_dir, "checkpoints");
    make_folder(checkpoints);
    char *name = step_name(step);
    char partial_name[128];
    snprintf(partial_name, sizeof(partial_name), PARTIAL_PREFIX "%s", name);
    char *partial = path_join(checkpoints, partial_name);
    char *final_dir = path_join(checkpoints, name);

    if (remove_tree(partial) != 0)
        fatal_internal("%s: cannot remove the stale partial checkpoint: %s", partial, strerror(errno));
    if (mkdir(partial, 0777) != 0) publish_failed(partial, "%s: cannot create: %s", partial, strerror(errno));

    char *path = path_join(partial, checkpoint_files[0]);
    write_weights(path, partial, table, contents->params, contents->fixed);
    free(path);
    slow_down_for_tests();
    path = path_join(partial, checkpoint_files[1]);
    write_weights(path, partial, table, contents->ema, contents->fixed);
    free(path);
    slow_down_for_tests();
    path = path_join(partial, checkpoint_files[2]);
    write_optimizer(path, partial, contents);
    free(path);
    slow_down_for_tests();
    path = path_join(partial, checkpoint_files[3]);
    char err[1024];
    const char *state = contents->state_json ? contents->state_json : "";
    if (atomic_write_file(path, state, strlen(state), err, sizeof(err)) != 0) publish_failed(partial, "%s", err);
    free(path);
    slow_down_for_tests();
    char *extra_file = contents->extra ? extra_file_name(contents->extra_name) : NULL;
    if (extra_file) {
        path = path_join(partial, extra_file);
        write_weights(path, partial, table, contents->extra, contents->fixed);
        free(path);
        slow_down_for_tests();
    }
    write_manifest(partial, step, extra_file);
    free(extra_file);
    slow_down_for_tests();

    /* The files are fsynced one by one; now their names in the folder, the
     * folder's new name, and only then the pointer to it. */
    if (fsync_folder_of(partial, 1) != 0)
        publish_failed(partial, "%s: cannot fsync the folder: %s", partial, strerror(errno));
    move_into_place(partial, final_dir, checkpoints);
    if (fsync_folder_of(checkpoints, 1) != 0)
        fatal_internal("%s: cannot fsync the folder: %s", checkpoints, strerror(errno));
    point_latest_at(checkpoints, name);
    apply_retention(checkpoints, name, keep_last, keep_every);

    free(checkpoints);
    free(name);
    free(partial);
    return final_dir;
}

/* ---- verification ---- */

typedef struct {
    char *first_failure;
} first_failure_context;

static void keep_first_failure(const char *file_name, const char *failure, void *context) {
    (void)file_name;
    first_failure_context *first = context;
    if (failure && !first->first_failure) first->first_failure = xstrdup(failure);
}

__attribute__((format(printf, 5, 6))) static void report_failure(checkpoint_verify_report report, void *context,
                                                                 const char *file_name, char *line,
                                                                 const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(line, 1024, fmt, args);
    va_end(args);
    report(file_name, line, context);
}

/* A manifest file name must name a file inside the checkpoint directory. */
static bool plain_file_name(const char *name) {
    return *name && !strchr(name, '/') && strcmp(name, ".") != 0 && strcmp(name, "..") != 0;
}

static bool eight_hex_digits(const char *text) {
    for (int i = 0; i < 8; i++)
        if (!isxdigit((unsigned char)text[i])) return false;
    return text[8] == '\0';
}

int checkpoint_verify_files(const char *checkpoint_dir, checkpoint_verify_report report, void *context) {
    char line[1024];
    char *manifest_path = path_join(checkpoint_dir, MANIFEST_NAME);
    int failures = 0;
    cJSON *manifest = NULL;
    size_t size = 0;
    char *text = read_text_file(manifest_path, MANIFEST_MAX_BYTES, &size);
    if (!text) {
        if (errno == ENOENT)
            report_failure(report, context, MANIFEST_NAME, line, "%s: missing", manifest_path);
        else
            report_failure(report, context, MANIFEST_NAME, line, "%s: cannot read: %s", manifest_path,
                           strerror(errno));
        failures = 1;
        goto done;
    }
    manifest = cJSON_ParseWithLength(text, size);
    free(text);
    const cJSON *format = cJSON_GetObjectItemCaseSensitive(manifest, "format");
    const cJSON *version = cJSON_GetObjectItemCaseSensitive(manifest, "version");
    const cJSON *files = cJSON_GetObjectItemCaseSensitive(manifest, "files");
    const char *fault = NULL;
    if (!cJSON_IsObject(manifest))
        fault = "not valid JSON (expected an object)";
    else if (!cJSON_IsString(format) || strcmp(format->valuestring, CHECKPOINT_FORMAT_NAME) != 0)
        fault = "format: expected \"" CHECKPOINT_FORMAT_NAME "\"";
    else if (!cJSON_IsNumber(version) || version->valuedouble != CHECKPOINT_FORMAT_VERSION)
        fault = "version: expected 1 (the checkpoint format this program reads)";
    else if (!cJSON_IsObject(files))
        fault = "files: expected an object";
    if (fault) {
        report_failure(report, context, MANIFEST_NAME, line, "%s: %s", manifest_path, fault);
        failures = 1;
        goto done;
    }
    for (int i = 0; i < CHECKPOINT_FILE_COUNT; i++)
        if (!cJSON_GetObjectItemCaseSensitive(files, checkpoint_files[i])) {
            report_failure(report, context, checkpoint_files[i], line, "%s: does not list %s", manifest_path,
                           checkpoint_files[i]);
            failures++;
        }
    const cJSON *entry;
    cJSON_ArrayForEach(entry, files) {
        const char *name = entry->string;
        if (!plain_file_name(name)) {
            report_failure(report, context, name, line, "%s: lists \"%s\", which is not a file name", manifest_path,
                           name);
            failures++;
            continue;
        }
        const cJSON *bytes = cJSON_GetObjectItemCaseSensitive(entry, "bytes");
        const cJSON *crc = cJSON_GetObjectItemCaseSensitive(entry, "crc32");
        if (!cJSON_IsNumber(bytes) || bytes->valuedouble < 0 || !cJSON_IsString(crc) ||
            !eight_hex_digits(crc->valuestring)) {
            report_failure(report, context, name, line,
                           "%s: files.%s: expected {\"bytes\": N, \"crc32\": \"8 hex digits\"}", manifest_path, name);
            failures++;
            continue;
        }
        char *path = path_join(checkpoint_dir, name);
        uint64_t actual_bytes;
        uint32_t actual_crc;
        if (file_size_and_crc(path, &actual_bytes, &actual_crc) != 0) {
            if (errno == ENOENT)
                report_failure(report, context, name, line, "%s: missing", path);
            else
                report_failure(report, context, name, line, "%s: cannot read: %s", path, strerror(errno));
            failures++;
        } else if ((double)actual_bytes != bytes->valuedouble) {
            report_failure(report, context, name, line, "%s: %llu bytes, manifest says %.0f", path,
                           (unsigned long long)actual_bytes, bytes->valuedouble);
            failures++;
        } else if (actual_crc != (uint32_t)strtoul(crc->valuestring, NULL, 16)) {
            report_failure(report, context, name, line, "%s: checksum mismatch (manifest %s, file %08" PRIx32 ")",
                           path, crc->valuestring, actual_crc);
            failures++;
        } else {
            report(name, NULL, context);
        }
        free(path);
    }
done:
    cJSON_Delete(manifest);
    free(manifest_path);
    return failures;
}

int checkpoint_verify(const char *checkpoint_dir, char *err, size_t err_size) {
    first_failure_context first = {NULL};
    int failures = checkpoint_verify_files(checkpoint_dir, keep_first_failure, &first);
    if (failures == 0) return 0;
    if (err_size > 0) snprintf(err, err_size, "%s", first.first_failure ? first.first_failure : "failed");
    free(first.first_failure);
    return -1;
}

/* ---- finding ---- */

int checkpoint_list(const char *run_dir, char ***dirs) {
    *dirs = NULL;
    char *checkpoints = path_join(run_dir, "checkpoints");
    step_folder *steps;
    int count = list_step_folders(checkpoints, &steps);
    if (count <= 0) {
        free(checkpoints);
        return 0;
    }
    char **paths = xcalloc((size_t)count, sizeof(*paths));
    for (int i = 0; i < count; i++) paths[i] = path_join(checkpoints, steps[i].name);
    free_step_folders(steps, count);
    free(checkpoints);
    *dirs = paths;
    return count;
}

void checkpoint_list_free(char **dirs, int count) {
    for (int i = 0; i < count; i++) free(dirs[i]);
    free(dirs);
}

bool checkpoint_is_checkpoint_dir(const char *path) {
    char *manifest = path_join(path, MANIFEST_NAME);
    struct stat info;
    bool found = stat(manifest, &info) == 0;
    free(manifest);
    return found;
}

char *checkpoint_find(const char *path) {
    if (checkpoint_is_checkpoint_dir(path)) return xstrdup(path);
    char **dirs;
    int count = checkpoint_list(path, &dirs);
    char *found = NULL;
    for (int i = 0; i < count && !found; i++) {
        char err[1024];
        if (checkpoint_verify(dirs[i], err, sizeof(err)) == 0)
            found = xstrdup(dirs[i]);
        else if (comm_rank() == 0)
            fprintf(stderr, "ldm: warning: %s: skipped: %s\n", dirs[i], err);
    }
    checkpoint_list_free(dirs, count);
    return found;
}

/* ---- loading ---- */

static void read_tensor_file(const char *dir, const char *name, safetensors_file *out) {
    char *path = path_join(dir, name);
    char err[1024];
    if (safetensors_read(path, out, err, sizeof(err)) != 0) fatal_input("%s", err);
    free(path);
}

void checkpoint_load(const char *checkpoint_dir, checkpoint_loaded *out) {
    memset(out, 0, sizeof(*out));
    char err[1024];
    if (checkpoint_verify(checkpoint_dir, err, sizeof(err)) != 0) fatal_input("%s", err);
    out->dir = xstrdup(checkpoint_dir);
    read_tensor_file(checkpoint_dir, "model.safetensors", &out->model);
    read_tensor_file(checkpoint_dir, "ema.safetensors", &out->ema);
    read_tensor_file(checkpoint_dir, "optimizer.safetensors", &out->optimizer);
    char *state_path = path_join(checkpoint_dir, "state.json");
    out->state_json = read_text_file(state_path, STATE_MAX_BYTES, NULL);
    if (!out->state_json) fatal_input("%s: cannot read: %s", state_path, strerror(errno));
    free(state_path);

    const char *step = safetensors_metadata(&out->optimizer, "step");
    char *end = NULL;
    errno = 0;
    long long adam_step = step ? strtoll(step, &end, 10) : -1;
    if (!step || errno || end == step || *end || adam_step < 0)
        fatal_input("%s: metadata \"step\": expected the AdamW step count, got %s%s%s", out->optimizer.path,
                    step ? "\"" : "", step ? step : "nothing", step ? "\"" : "");
    out->adam_step = adam_step;
}

void checkpoint_read_extra(const char *checkpoint_dir, const char *extra_name, safetensors_file *out) {
    char *name = extra_file_name(extra_name);
    read_tensor_file(checkpoint_dir, name, out);
    free(name);
}

/* Copies one tensor into dest after checking it against the table entry. */
static void copy_tensor(const safetensors_file *file, const char *name, const param_entry *e, float *dest) {
    const safetensors_tensor *t = safetensors_find(file, name);
    if (!t) fatal_input("%s: tensor %s: missing", file->path, name);
    bool same_shape = t->ndim == e->ndim;
    for (int d = 0; same_shape && d < e->ndim; d++) same_shape = t->shape[d] == e->shape[d];
    if (!same_shape) {
        char want[160], got[160];
        shape_text(want, sizeof(want), e->ndim, e->shape);
        shape_text(got, sizeof(got), t->ndim, t->shape);
        fatal_input("%s: tensor %s: expected shape %s, found %s", file->path, name, want, got);
    }
    if (t->dtype != SAFETENSORS_F32)
        fatal_input("%s: tensor %s: expected dtype F32 (checkpoints are fp32), found %s", file->path, name,
                    safetensors_dtype_name(t->dtype));
    if (dest) memcpy(dest, t->data, sizeof(float) * e->numel);
}

void checkpoint_copy_weights(const checkpoint_loaded *loaded, const safetensors_file *which, const param_table *table,
                             float *params, float *fixed) {
    (void)loaded;
    for (int i = 0; i < which->count; i++)
        if (!param_table_find(table, which->tensors[i].name))
            fatal_input("%s: tensor %s: not a parameter of this model (wrong config or checkpoint?)", which->path,
                        which->tensors[i].name);
    for (int i = 0; i < table->count; i++) {
        const param_entry *e = &table->entries[i];
        float *dest = e->trainable ? params + e->offset : fixed ? fixed + e->offset : NULL;
        copy_tensor(which, e->name, e, dest);
    }
}

/* The trainable entry a moment tensor's name refers to, or NULL. */
static const param_entry *moment_entry(const param_table *table, const char *name) {
    const char *parameter = starts_with(name, "exp_avg.")      ? name + strlen("exp_avg.")
                            : starts_with(name, "exp_avg_sq.") ? name + strlen("exp_avg_sq.")
                                                               : NULL;
    const param_entry *e = parameter ? param_table_find(table, parameter) : NULL;
    return e && e->trainable ? e : NULL;
}

void checkpoint_copy_moments(const checkpoint_loaded *loaded, const param_table *table, float *adam_m,
                             float *adam_v) {
    const safetensors_file *file = &loaded->optimizer;
    for (int i = 0; i < file->count; i++)
        if (!moment_entry(table, file->tensors[i].name))
            fatal_input("%s: tensor %s: not a moment of a parameter of this model (wrong config or checkpoint?)",
                        file->path, file->tensors[i].name);
    for (int i = 0; i < table->count; i++) {
        const param_entry *e = &table->entries[i];
        if (!e->trainable) continue;
        char name[PARAM_NAME_MAX + 16];
        snprintf(name, sizeof(name), "exp_avg.%s", e->name);
        copy_tensor(file, name, e, adam_m + e->offset);
        snprintf(name, sizeof(name), "exp_avg_sq.%s", e->name);
        copy_tensor(file, name, e, adam_v + e->offset);
    }
}

void checkpoint_loaded_free(checkpoint_loaded *loaded) {
    free(loaded->dir);
    safetensors_free(&loaded->model);
    safetensors_free(&loaded->ema);
    safetensors_free(&loaded->optimizer);
    free(loaded->state_json);
    memset(loaded, 0, sizeof(*loaded));
}

/* Tests of the checkpoint directory format (checkpoints/checkpoint.c): retention
 * and `latest`, bit-exact round trips of every buffer, verification of every
 * kind of damage, the choice of checkpoint to resume from, stale partial
 * directories, replacing a step, a process killed mid-publish, the slow-write
 * test hook, and the fatal errors of loading into a table that does not match.
 * Everything is written under a fresh folder in $TMPDIR (or /tmp).
 *
 * `test_checkpoint --write-example RUN [--damage]` only publishes a small DiT's
 * checkpoints at steps 10 and 20 into RUN (with --damage, one byte of step 20's
 * model.safetensors flipped) for the `ldm inspect` command-line tests. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "checkpoint.h"
#include "cli.h"
#include "config.h"
#include "dit.h"
#include "fatal.h"
#include "test_util.h"
#include "model_shapes.h"

/* ---- file helpers ---- */

static char *join(const char *a, const char *b) {
    size_t size = strlen(a) + strlen(b) + 2;
    char *path = malloc(size);
    snprintf(path, size, "%s/%s", a, b);
    return path;
}

static int remove_entry(const char *path, const struct stat *info, int type, struct FTW *where) {
    (void)info;
    (void)type;
    (void)where;
    return remove(path);
}

static void remove_tree(const char *path) {
    struct stat info;
    if (lstat(path, &info) == 0) nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static unsigned char *read_bytes(const char *path, size_t *size) {
    *size = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long length = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *bytes = malloc((size_t)length + 1);
    *size = fread(bytes, 1, (size_t)length, f);
    bytes[*size] = 0;
    fclose(f);
    return bytes;
}

static void write_bytes(const char *path, const void *bytes, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
    fwrite(bytes, 1, size, f);
    fclose(f);
}

/* Copies a folder of plain files (a checkpoint) to a new folder. */
static void copy_folder(const char *from, const char *to) {
    mkdir(to, 0777);
    DIR *folder = opendir(from);
    struct dirent *entry;
    while ((entry = readdir(folder)) != NULL) {
        if (entry->d_name[0] == '.') continue;
        char *source = join(from, entry->d_name), *target = join(to, entry->d_name);
        size_t size;
        unsigned char *bytes = read_bytes(source, &size);
        write_bytes(target, bytes, size);
        free(bytes);
        free(source);
        free(target);
    }
    closedir(folder);
}

static void flip_byte(const char *path, long offset) {
    size_t size;
    unsigned char *bytes = read_bytes(path, &size);
    bytes[offset] ^= 0x5a;
    write_bytes(path, bytes, size);
    free(bytes);
}

static uint32_t file_crc(const char *path) {
    size_t size;
    unsigned char *bytes = read_bytes(path, &size);
    uint32_t crc = (uint32_t)crc32(crc32(0L, Z_NULL, 0), bytes, (uInt)size);
    free(bytes);
    return crc;
}

static long file_size(const char *path) {
    struct stat info;
    return stat(path, &info) == 0 ? (long)info.st_size : -1;
}

/* The names in a folder, sorted, space-separated (caller frees). */
static int compare_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }
static char *folder_listing(const char *path) {
    char *names[256];
    int count = 0;
    DIR *folder = opendir(path);
    if (!folder) return strdup("(no folder)");
    struct dirent *entry;
    while ((entry = readdir(folder)) != NULL && count < 256)
        if (strcmp(entry->d_name, ".") && strcmp(entry->d_name, "..")) names[count++] = strdup(entry->d_name);
    closedir(folder);
    qsort(names, (size_t)count, sizeof(names[0]), compare_names);
    char *listing = calloc(1, 256 * 64);
    for (int i = 0; i < count; i++) {
        if (i) strcat(listing, " ");
        strncat(listing, names[i], 60);
        free(names[i]);
    }
    return listing;
}

static char *link_target(const char *path) {
    static char target[4096];
    ssize_t length = readlink(path, target, sizeof(target) - 1);
    if (length < 0) return "(not a link)";
    target[length] = '\0';
    return target;
}

/* ---- a small model and known contents ---- */

static void small_table(param_table *table) {
    param_table_init(table);
    param_table_add(table, true, 4, (int64_t[]){4, 2, 2, 2}, "x_embedder.proj.weight");
    param_table_add(table, true, 1, (int64_t[]){4}, "x_embedder.proj.bias");
    param_table_add(table, false, 3, (int64_t[]){1, 4, 4}, "pos_embed");
    param_table_add(table, true, 2, (int64_t[]){12, 4}, "blocks.0.attn.qkv.weight");
}

typedef struct {
    float *params, *ema, *fixed, *adam_m, *adam_v;
    int64_t adam_step;
    char state[128];
} buffers;

/* Arbitrary 32-bit patterns (NaNs, infinities, subnormals and signed zeros
 * among them), so that "bit for bit" means what it says. */
static uint32_t pattern(uint64_t step, uint64_t kind, uint64_t index) {
    uint64_t x = step * 0x9E3779B97F4A7C15ull ^ kind * 0xBF58476D1CE4E5B9ull ^ (index + 1) * 0x94D049BB133111EBull;
    x ^= x >> 31;
    x *= 0xD6E8FEB86659FD93ull;
    x ^= x >> 29;
    return (uint32_t)x;
}

static void fill(float *values, size_t count, int64_t step, int kind) {
    for (size_t i = 0; i < count; i++) {
        uint32_t bits = pattern((uint64_t)step, (uint64_t)kind, i);
        memcpy(&values[i], &bits, sizeof(bits));
    }
}

static void buffers_alloc(buffers *b, const param_table *table) {
    b->params = calloc(table->trainable_numel, sizeof(float));
    b->ema = calloc(table->trainable_numel, sizeof(float));
    b->adam_m = calloc(table->trainable_numel, sizeof(float));
    b->adam_v = calloc(table->trainable_numel, sizeof(float));
    b->fixed = calloc(table->fixed_numel, sizeof(float));
}

static void buffers_fill(buffers *b, const param_table *table, int64_t step) {
    fill(b->params, table->trainable_numel, step, 1);
    fill(b->ema, table->trainable_numel, step, 2);
    fill(b->adam_m, table->trainable_numel, step, 3);
    fill(b->adam_v, table->trainable_numel, step, 4);
    fill(b->fixed, table->fixed_numel, step, 5);
    b->adam_step = step * 3 + 1;
    snprintf(b->state, sizeof(b->state), "{\"format\": \"ldm-train-state\", \"step\": %lld}\n", (long long)step);
}

static void buffers_free(buffers *b) {
    free(b->params);
    free(b->ema);
    free(b->adam_m);
    free(b->adam_v);
    free(b->fixed);
}

static checkpoint_contents contents_of(const buffers *b, const param_table *table) {
    return (checkpoint_contents){.table = table, .params = b->params, .ema = b->ema, .fixed = b->fixed,
                                 .adam_m = b->adam_m, .adam_v = b->adam_v, .adam_step = b->adam_step,
                                 .state_json = b->state};
}

/* Publishes step's known contents. */
static char *publish_step(const char *run, const param_table *table, int64_t step, int keep_last,
                          int64_t keep_every) {
    buffers b;
    buffers_alloc(&b, table);
    buffers_fill(&b, table, step);
    checkpoint_contents contents = contents_of(&b, table);
    char *dir = checkpoint_publish(run, step, &contents, keep_last, keep_every);
    buffers_free(&b);
    return dir;
}

/* Loads dir and checks every value against step's known contents, bit for bit. */
static void check_loaded(const char *dir, const param_table *table, int64_t step) {
    buffers want, got;
    buffers_alloc(&want, table);
    buffers_fill(&want, table, step);
    buffers_alloc(&got, table);
    float *ema_fixed = calloc(table->fixed_numel, sizeof(float));
    checkpoint_loaded loaded;
    checkpoint_load(dir, &loaded);
    checkpoint_copy_weights(&loaded, &loaded.model, table, got.params, got.fixed);
    checkpoint_copy_weights(&loaded, &loaded.ema, table, got.ema, ema_fixed);
    checkpoint_copy_moments(&loaded, table, got.adam_m, got.adam_v);
    size_t trainable = sizeof(float) * table->trainable_numel, fixed = sizeof(float) * table->fixed_numel;
    CHECK_MSG(memcmp(got.params, want.params, trainable) == 0, "%s: weights differ", dir);
    CHECK_MSG(memcmp(got.ema, want.ema, trainable) == 0, "%s: EMA differs", dir);
    CHECK_MSG(memcmp(got.fixed, want.fixed, fixed) == 0, "%s: fixed buffer (model) differs", dir);
    CHECK_MSG(memcmp(ema_fixed, want.fixed, fixed) == 0, "%s: fixed buffer (ema) differs", dir);
    CHECK_MSG(memcmp(got.adam_m, want.adam_m, trainable) == 0, "%s: exp_avg differs", dir);
    CHECK_MSG(memcmp(got.adam_v, want.adam_v, trainable) == 0, "%s: exp_avg_sq differs", dir);
    CHECK_MSG(loaded.adam_step == want.adam_step, "%s: adam step %lld, want %lld", dir, (long long)loaded.adam_step,
              (long long)want.adam_step);
    CHECK_MSG(loaded.state_json && strcmp(loaded.state_json, want.state) == 0, "%s: state.json differs: %s", dir,
              loaded.state_json ? loaded.state_json : "(null)");
    CHECK(loaded.model.count == table->count && loaded.ema.count == table->count);
    CHECK(loaded.optimizer.count == 2 * 3);
    checkpoint_loaded_free(&loaded);
    free(ema_fixed);
    buffers_free(&want);
    buffers_free(&got);
}

/* ---- stderr capture and fatal errors in a child process ---- */

typedef struct {
    int saved_fd;
    char path[256];
} stderr_capture;

static void capture_begin(stderr_capture *capture, const char *root) {
    snprintf(capture->path, sizeof(capture->path), "%s/stderr.txt", root);
    fflush(stderr);
    capture->saved_fd = dup(2);
    int fd = open(capture->path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 2);
    close(fd);
}

static char *capture_end(stderr_capture *capture) {
    fflush(stderr);
    dup2(capture->saved_fd, 2);
    close(capture->saved_fd);
    size_t size;
    char *text = (char *)read_bytes(capture->path, &size);
    unlink(capture->path);
    return text ? text : strdup("");
}

/* Runs action(arg) in a child and checks that it exits with status and that
 * its stderr holds needle. */
static void expect_exit(const char *root, void (*action)(void *), void *arg, int status, const char *needle) {
    char path[256];
    snprintf(path, sizeof(path), "%s/child-stderr.txt", root);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 2);
        close(fd);
        action(arg);
        _exit(0);
    }
    int wait_status = 0;
    waitpid(pid, &wait_status, 0);
    int code = WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : -1;
    size_t size;
    char *text = (char *)read_bytes(path, &size);
    CHECK_MSG(code == status, "exit status %d, want %d (stderr: %s)", code, status, text ? text : "");
    CHECK_STR_CONTAINS(text, needle);
    free(text);
    unlink(path);
}

/* ---- the tests ---- */

static void test_retention_and_round_trip(const char *root, const param_table *table) {
    char *run = join(root, "retention");
    char *checkpoints = join(run, "checkpoints");
    /* After publishing step 10, 20, ... with keep_last 2 and keep_every 30. */
    const char *expected[] = {
        "latest step-00000010",
        "latest step-00000010 step-00000020",
        "latest step-00000020 step-00000030",
        "latest step-00000030 step-00000040",
        "latest step-00000030 step-00000040 step-00000050",
        "latest step-00000030 step-00000050 step-00000060",
    };
    for (int i = 0; i < 6; i++) {
        int64_t step = 10 * (i + 1);
        char *dir = publish_step(run, table, step, 2, 30);
        char name[64];
        snprintf(name, sizeof(name), "/checkpoints/step-%08lld", (long long)step);
        CHECK_STR_CONTAINS(dir, name);
        char *listing = folder_listing(checkpoints);
        CHECK_MSG(strcmp(listing, expected[i]) == 0, "after step %lld: \"%s\", want \"%s\"", (long long)step,
                  listing, expected[i]);
        free(listing);
        free(dir);
    }
    char *latest = join(checkpoints, "latest");
    CHECK_MSG(strcmp(link_target(latest), "step-00000060") == 0, "latest -> %s", link_target(latest));

    char *dir60 = join(checkpoints, "step-00000060"), *dir30 = join(checkpoints, "step-00000030");
    char err[1024];
    CHECK_MSG(checkpoint_verify(dir60, err, sizeof(err)) == 0, "%s", err);
    check_loaded(dir60, table, 60);
    check_loaded(dir30, table, 30);
    check_loaded(latest, table, 60);
    /* The comparison can fail: step 50's contents are not step 60's. */
    buffers b50, b60;
    buffers_alloc(&b50, table);
    buffers_alloc(&b60, table);
    buffers_fill(&b50, table, 50);
    buffers_fill(&b60, table, 60);
    CHECK(memcmp(b50.params, b60.params, sizeof(float) * table->trainable_numel) != 0);
    buffers_free(&b50);
    buffers_free(&b60);

    /* A checkpoint directory given directly is returned as it is; a run gives its newest. */
    char *found = checkpoint_find(dir30);
    CHECK_MSG(found && strcmp(found, dir30) == 0, "find(%s) = %s", dir30, found ? found : "NULL");
    free(found);
    found = checkpoint_find(run);
    CHECK_MSG(found && strcmp(found, dir60) == 0, "find(%s) = %s", run, found ? found : "NULL");
    free(found);

    /* The manifest's own fields. */
    size_t size;
    char *manifest_path = join(dir60, "manifest.json");
    char *text = (char *)read_bytes(manifest_path, &size);
    cJSON *manifest = cJSON_Parse(text);
    CHECK(cJSON_IsString(cJSON_GetObjectItem(manifest, "format")) &&
          strcmp(cJSON_GetObjectItem(manifest, "format")->valuestring, "ldm-checkpoint") == 0);
    CHECK(cJSON_GetObjectItem(manifest, "version") && cJSON_GetObjectItem(manifest, "version")->valuedouble == 1);
    CHECK(cJSON_GetObjectItem(manifest, "step") && cJSON_GetObjectItem(manifest, "step")->valuedouble == 60);
    cJSON *files = cJSON_GetObjectItem(manifest, "files");
    CHECK(cJSON_GetArraySize(files) == 4 && !cJSON_GetObjectItem(files, "manifest.json"));
    char *model_path = join(dir60, "model.safetensors");
    char crc_text[16];
    snprintf(crc_text, sizeof(crc_text), "%08x", file_crc(model_path));
    cJSON *model_entry = cJSON_GetObjectItem(files, "model.safetensors");
    CHECK(model_entry && strcmp(cJSON_GetObjectItem(model_entry, "crc32")->valuestring, crc_text) == 0);
    CHECK(model_entry && cJSON_GetObjectItem(model_entry, "bytes")->valuedouble == (double)file_size(model_path));
    cJSON_Delete(manifest);
    free(text);
    free(manifest_path);
    free(model_path);

    free(dir60);
    free(dir30);
    free(latest);
    free(checkpoints);
    free(run);
}

typedef void (*damage_fn)(const char *dir);

static void damage_flip_model(const char *dir) {
    char *path = join(dir, "model.safetensors");
    flip_byte(path, file_size(path) - 5);
    free(path);
}
static void damage_flip_state(const char *dir) {
    char *path = join(dir, "state.json");
    flip_byte(path, 3);
    free(path);
}
static void damage_truncate_ema(const char *dir) {
    char *path = join(dir, "ema.safetensors");
    if (truncate(path, file_size(path) - 1) != 0) perror(path);
    free(path);
}
static void damage_remove_optimizer(const char *dir) {
    char *path = join(dir, "optimizer.safetensors");
    unlink(path);
    free(path);
}
static void damage_remove_manifest(const char *dir) {
    char *path = join(dir, "manifest.json");
    unlink(path);
    free(path);
}
static void damage_garble_manifest(const char *dir) {
    char *path = join(dir, "manifest.json");
    write_bytes(path, "{\"format\": \"ldm-checkpoint\", \"ver", 32);
    free(path);
}
/* Rewrites the manifest through cJSON with one change. */
static void edit_manifest(const char *dir, void (*edit)(cJSON *manifest)) {
    char *path = join(dir, "manifest.json");
    size_t size;
    char *text = (char *)read_bytes(path, &size);
    cJSON *manifest = cJSON_Parse(text);
    edit(manifest);
    char *printed = cJSON_Print(manifest);
    write_bytes(path, printed, strlen(printed));
    free(printed);
    cJSON_Delete(manifest);
    free(text);
    free(path);
}
static void unlist_state(cJSON *manifest) {
    cJSON_DeleteItemFromObject(cJSON_GetObjectItem(manifest, "files"), "state.json");
}
static void damage_unlist_state(const char *dir) { edit_manifest(dir, unlist_state); }
static void version_two(cJSON *manifest) { cJSON_ReplaceItemInObject(manifest, "version", cJSON_CreateNumber(2)); }
static void damage_version(const char *dir) { edit_manifest(dir, version_two); }
static void other_format(cJSON *manifest) {
    cJSON_ReplaceItemInObject(manifest, "format", cJSON_CreateString("something-else"));
}
static void damage_format(const char *dir) { edit_manifest(dir, other_format); }
static void escaping_name(cJSON *manifest) {
    cJSON *entry = cJSON_CreateObject();
    cJSON_AddNumberToObject(entry, "bytes", 1);
    cJSON_AddStringToObject(entry, "crc32", "00000000");
    cJSON_AddItemToObject(cJSON_GetObjectItem(manifest, "files"), "../elsewhere", entry);
}
static void damage_escaping_name(const char *dir) { edit_manifest(dir, escaping_name); }
static void bad_crc_text(cJSON *manifest) {
    cJSON *entry = cJSON_GetObjectItem(cJSON_GetObjectItem(manifest, "files"), "ema.safetensors");
    cJSON_ReplaceItemInObject(entry, "crc32", cJSON_CreateString("0x12345"));
}
static void damage_bad_crc_text(const char *dir) { edit_manifest(dir, bad_crc_text); }

static void test_verify_faults(const char *root, const param_table *table) {
    char *run = join(root, "faults");
    char *good = publish_step(run, table, 5, 2, 0);
    char err[1024];
    CHECK_MSG(checkpoint_verify(good, err, sizeof(err)) == 0, "%s", err);

    /* Exact lines for the checksum and size faults, from the files themselves. */
    char *scratch = join(root, "damaged");
    char *model = join(scratch, "model.safetensors"), *ema = join(scratch, "ema.safetensors");
    char *good_model = join(good, "model.safetensors"), *good_ema = join(good, "ema.safetensors");
    char expected[1024];

    copy_folder(good, scratch);
    CHECK_MSG(checkpoint_verify(scratch, err, sizeof(err)) == 0, "an intact copy fails: %s", err);
    damage_flip_model(scratch);
    snprintf(expected, sizeof(expected), "%s: checksum mismatch (manifest %08x, file %08x)", model,
             file_crc(good_model), file_crc(model));
    CHECK(checkpoint_verify(scratch, err, sizeof(err)) == -1);
    CHECK_MSG(strcmp(err, expected) == 0, "\"%s\", want \"%s\"", err, expected);
    remove_tree(scratch);

    copy_folder(good, scratch);
    damage_truncate_ema(scratch);
    snprintf(expected, sizeof(expected), "%s: %ld bytes, manifest says %ld", ema, file_size(ema), file_size(good_ema));
    CHECK(checkpoint_verify(scratch, err, sizeof(err)) == -1);
    CHECK_MSG(strcmp(err, expected) == 0, "\"%s\", want \"%s\"", err, expected);
    remove_tree(scratch);

    struct {
        damage_fn damage;
        const char *needle;
    } faults[] = {
        {damage_flip_state, "/damaged/state.json: checksum mismatch (manifest "},
        {damage_remove_optimizer, "/damaged/optimizer.safetensors: missing"},
        {damage_remove_manifest, "/damaged/manifest.json: missing"},
        {damage_garble_manifest, "/damaged/manifest.json: not valid JSON"},
        {damage_unlist_state, "/damaged/manifest.json: does not list state.json"},
        {damage_version, "/damaged/manifest.json: version: expected 1"},
        {damage_format, "/damaged/manifest.json: format: expected \"ldm-checkpoint\""},
        {damage_escaping_name, "lists \"../elsewhere\", which is not a file name"},
        {damage_bad_crc_text, "files.ema.safetensors: expected {\"bytes\": N, \"crc32\": \"8 hex digits\"}"},
    };
    for (size_t i = 0; i < sizeof(faults) / sizeof(faults[0]); i++) {
        copy_folder(good, scratch);
        faults[i].damage(scratch);
        err[0] = '\0';
        CHECK_MSG(checkpoint_verify(scratch, err, sizeof(err)) == -1, "damage %zu not detected", i);
        const char *message = err;
        CHECK_STR_CONTAINS(message, faults[i].needle);
        CHECK_MSG(!strchr(err, '\n'), "more than one line: %s", err);
        remove_tree(scratch);
    }
    free(model);
    free(ema);
    free(good_model);
    free(good_ema);
    free(scratch);
    free(good);
    free(run);
}

static void test_find(const char *root, const param_table *table) {
    char *run = join(root, "find");
    for (int step = 10; step <= 30; step += 10) free(publish_step(run, table, step, 3, 0));
    char *checkpoints = join(run, "checkpoints");
    char *dir10 = join(checkpoints, "step-00000010"), *dir20 = join(checkpoints, "step-00000020"),
         *dir30 = join(checkpoints, "step-00000030");

    damage_flip_model(dir30);
    stderr_capture capture;
    capture_begin(&capture, root);
    char *found = checkpoint_find(run);
    char *warnings = capture_end(&capture);
    CHECK_MSG(found && strcmp(found, dir20) == 0, "find = %s, want %s", found ? found : "NULL", dir20);
    char expected[1024];
    snprintf(expected, sizeof(expected), "ldm: warning: %s: skipped: %s/model.safetensors: checksum mismatch", dir30,
             dir30);
    CHECK_STR_CONTAINS(warnings, expected);
    free(warnings);
    free(found);

    damage_remove_manifest(dir20);
    capture_begin(&capture, root);
    found = checkpoint_find(run);
    warnings = capture_end(&capture);
    CHECK_MSG(found && strcmp(found, dir10) == 0, "find = %s, want %s", found ? found : "NULL", dir10);
    CHECK_STR_CONTAINS(warnings, "step-00000020: skipped: ");
    CHECK_STR_CONTAINS(warnings, "step-00000020/manifest.json: missing");
    free(warnings);
    free(found);

    damage_truncate_ema(dir10);
    capture_begin(&capture, root);
    found = checkpoint_find(run);
    warnings = capture_end(&capture);
    CHECK_MSG(!found, "find = %s with every checkpoint damaged", found);
    free(warnings);
    free(found);

    /* A run without checkpoints, and a path that does not exist. */
    char *empty_run = join(root, "no-checkpoints");
    mkdir(empty_run, 0777);
    found = checkpoint_find(empty_run);
    CHECK_MSG(!found, "find = %s in a run without checkpoints", found);
    free(found);
    char *missing = join(root, "does-not-exist");
    found = checkpoint_find(missing);
    CHECK_MSG(!found, "find = %s for a missing path", found);
    free(found);
    char **dirs;
    CHECK(checkpoint_list(missing, &dirs) == 0 && dirs == NULL);

    free(missing);
    free(empty_run);
    free(dir10);
    free(dir20);
    free(dir30);
    free(checkpoints);
    free(run);
}

static void test_stale_partial(const char *root, const param_table *table) {
    char *run = join(root, "partial");
    char *dir10 = publish_step(run, table, 10, 2, 0);
    char *checkpoints = join(run, "checkpoints");
    /* Leftovers of interrupted publishes: one complete enough to verify, with a
     * foreign file in it, one of another step, and a temporary link. */
    char *partial20 = join(checkpoints, ".partial-step-00000020");
    copy_folder(dir10, partial20);
    char *junk = join(partial20, "junk");
    write_bytes(junk, "x", 1);
    char *partial15 = join(checkpoints, ".partial-step-00000015");
    mkdir(partial15, 0777);
    char *temporary_link = join(checkpoints, ".latest.tmp-999999");
    if (symlink("step-00000010", temporary_link) != 0) perror(temporary_link);
    char err[1024];
    CHECK(checkpoint_verify(partial20, err, sizeof(err)) == 0);

    char *found = checkpoint_find(run);
    CHECK_MSG(found && strcmp(found, dir10) == 0, "find = %s, want %s", found ? found : "NULL", dir10);
    free(found);

    char *dir20 = publish_step(run, table, 20, 2, 0);
    char *listing = folder_listing(checkpoints);
    CHECK_MSG(strcmp(listing, "latest step-00000010 step-00000020") == 0, "listing: %s", listing);
    free(listing);
    listing = folder_listing(dir20);
    CHECK_MSG(strcmp(listing, "ema.safetensors manifest.json model.safetensors optimizer.safetensors state.json") == 0,
              "step-20 holds: %s", listing);
    free(listing);
    check_loaded(dir20, table, 20);

    free(dir20);
    free(temporary_link);
    free(partial15);
    free(junk);
    free(partial20);
    free(checkpoints);
    free(dir10);
    free(run);
}

/* A run resumed from an older checkpoint publishes a step that exists again. */
static void test_republish(const char *root, const param_table *table) {
    char *run = join(root, "republish");
    free(publish_step(run, table, 10, 2, 0));
    free(publish_step(run, table, 20, 2, 0));
    buffers b;
    buffers_alloc(&b, table);
    buffers_fill(&b, table, 21);
    checkpoint_contents contents = contents_of(&b, table);
    char *dir = checkpoint_publish(run, 20, &contents, 2, 0);
    buffers_free(&b);
    check_loaded(dir, table, 21);
    char *checkpoints = join(run, "checkpoints");
    char *listing = folder_listing(checkpoints);
    CHECK_MSG(strcmp(listing, "latest step-00000010 step-00000020") == 0, "listing: %s", listing);
    free(listing);
    free(checkpoints);
    free(dir);
    free(run);
}

static double seconds_now(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}

static void test_slow_hook(const char *root, const param_table *table) {
    char *run = join(root, "slow");
    setenv("LDM_TEST_SLOW_CHECKPOINT_MS", "40", 1);
    double start = seconds_now();
    free(publish_step(run, table, 10, 2, 0));
    double elapsed = seconds_now() - start;
    unsetenv("LDM_TEST_SLOW_CHECKPOINT_MS");
    CHECK_MSG(elapsed >= 5 * 0.040, "publishing with the hook took %.3f s, want >= 0.2 (5 files x 40 ms)", elapsed);
    free(run);
}

/* A child process that publishes step slowly (300 ms a file), to be killed. */
static pid_t publish_slowly_in_child(const char *run, const param_table *table, int64_t step) {
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        setenv("LDM_TEST_SLOW_CHECKPOINT_MS", "300", 1);
        free(publish_step(run, table, step, 2, 0));
        _exit(0);
    }
    return pid;
}

/* kill -9 that child; it must not have ended by itself. */
static void kill_publishing_child(pid_t pid) {
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    CHECK_MSG(WIFSIGNALED(status), "the publishing child ended by itself before it was killed");
}

/* kill -9 in the middle of publishing step 20: step 10 stays the whole,
 * verified, latest checkpoint, and the next publish cleans up. */
static void test_killed_mid_publish(const char *root, const param_table *table) {
    char *run = join(root, "killed");
    char *dir10 = publish_step(run, table, 10, 2, 0);
    char *checkpoints = join(run, "checkpoints");
    char *partial = join(checkpoints, ".partial-step-00000020");
    char *manifest = join(partial, "manifest.json");
    pid_t pid = publish_slowly_in_child(run, table, 20);
    /* Wait until the partial folder holds files but no manifest yet. */
    char *model = join(partial, "model.safetensors");
    for (int i = 0; i < 500 && file_size(model) < 0; i++) usleep(2000);
    usleep(50000);
    kill_publishing_child(pid);
    CHECK_MSG(file_size(model) > 0 && file_size(manifest) < 0, "the kill did not land mid-write");

    char *latest = join(checkpoints, "latest");
    CHECK_MSG(strcmp(link_target(latest), "step-00000010") == 0, "latest -> %s", link_target(latest));
    char *found = checkpoint_find(run);
    CHECK_MSG(found && strcmp(found, dir10) == 0, "find = %s, want %s", found ? found : "NULL", dir10);
    free(found);
    check_loaded(dir10, table, 10);

    free(publish_step(run, table, 20, 2, 0));
    char *listing = folder_listing(checkpoints);
    CHECK_MSG(strcmp(listing, "latest step-00000010 step-00000020") == 0, "listing: %s", listing);
    free(listing);
    free(latest);
    free(model);
    free(manifest);
    free(partial);
    free(checkpoints);
    free(dir10);
    free(run);
}

/* kill -9 while retention deletes an old step folder (publishing step 30 with
 * keep_last 2 deletes step 10, each file slowly): every step folder left must be
 * whole (verified), never one with some of its files gone; the leftover is swept
 * by the next publish. */
static void test_killed_mid_retention(const char *root, const param_table *table) {
    char *run = join(root, "killed-retention");
    free(publish_step(run, table, 10, 2, 0));
    free(publish_step(run, table, 20, 2, 0));
    char *checkpoints = join(run, "checkpoints");
    char *step10 = join(checkpoints, "step-00000010");
    char *doomed = join(checkpoints, ".partial-deleting-step-00000010");
    char *step30_manifest = join(checkpoints, "step-00000030/manifest.json");
    pid_t pid = publish_slowly_in_child(run, table, 30);
    /* Wait until step 30 is published and step 10's deletion has begun: its folder
     * renamed aside (or, as it once was, deleted in place: a file of it gone). */
    char *step10_model = join(step10, "model.safetensors"), *step10_manifest = join(step10, "manifest.json");
    for (int i = 0; i < 5000; i++) {
        const int published = file_size(step30_manifest) > 0;
        const int begun = file_size(doomed) >= 0 || file_size(step10_model) < 0 || file_size(step10_manifest) < 0;
        if (published && begun) break;
        usleep(2000);
    }
    usleep(50000);
    kill_publishing_child(pid);

    char **dirs = NULL;
    const int n = checkpoint_list(run, &dirs);
    for (int i = 0; i < n; i++) {
        char err[512];
        CHECK_MSG(checkpoint_verify(dirs[i], err, sizeof err) == 0, "%s after a kill during retention: %s", dirs[i],
                  err);
    }
    checkpoint_list_free(dirs, n);
    CHECK_MSG(file_size(step10) < 0, "step 10 still there, half deleted or not deleted at all");

    free(publish_step(run, table, 40, 2, 0));
    char *listing = folder_listing(checkpoints);
    CHECK_MSG(strcmp(listing, "latest step-00000030 step-00000040") == 0, "listing: %s", listing);
    free(listing);
    free(step10_model);
    free(step10_manifest);
    free(step30_manifest);
    free(doomed);
    free(step10);
    free(checkpoints);
    free(run);
}

/* ---- fatal errors of loading (each in a child process) ---- */

typedef struct {
    const char *dir;
    const param_table *table;
    int moments;
} load_request;

static void load_into(void *arg) {
    const load_request *request = arg;
    const param_table *table = request->table;
    float *params = calloc(table->trainable_numel + 1, sizeof(float));
    float *other = calloc(table->trainable_numel + 1, sizeof(float));
    float *fixed = calloc(table->fixed_numel + 1, sizeof(float));
    checkpoint_loaded loaded;
    checkpoint_load(request->dir, &loaded);
    if (request->moments)
        checkpoint_copy_moments(&loaded, table, params, other);
    else
        checkpoint_copy_weights(&loaded, &loaded.model, table, params, fixed);
    checkpoint_loaded_free(&loaded);
    free(params);
    free(other);
    free(fixed);
}

typedef struct {
    const char *run;
    const param_table *table;
} publish_request;

static void publish_into(void *arg) {
    const publish_request *request = arg;
    free(publish_step(request->run, request->table, 10, 2, 0));
}

static void test_load_errors(const char *root, const param_table *table) {
    char *run = join(root, "load-errors");
    char *dir = publish_step(run, table, 10, 2, 0);
    char expected[1024];

    /* The table itself loads (so the failures below are the table's differences). */
    load_request request = {dir, table, 0};
    expect_exit(root, load_into, &request, 0, "");
    request.moments = 1;
    expect_exit(root, load_into, &request, 0, "");

    param_table other_shape;
    param_table_init(&other_shape);
    param_table_add(&other_shape, true, 4, (int64_t[]){4, 2, 2, 2}, "x_embedder.proj.weight");
    param_table_add(&other_shape, true, 1, (int64_t[]){5}, "x_embedder.proj.bias");
    param_table_add(&other_shape, false, 3, (int64_t[]){1, 4, 4}, "pos_embed");
    param_table_add(&other_shape, true, 2, (int64_t[]){12, 4}, "blocks.0.attn.qkv.weight");
    request = (load_request){dir, &other_shape, 0};
    snprintf(expected, sizeof(expected),
             "ldm: error: %s/model.safetensors: tensor x_embedder.proj.bias: expected shape [5], found [4]\n", dir);
    expect_exit(root, load_into, &request, 2, expected);
    request.moments = 1;
    snprintf(expected, sizeof(expected),
             "ldm: error: %s/optimizer.safetensors: tensor exp_avg.x_embedder.proj.bias: expected shape [5], found [4]",
             dir);
    expect_exit(root, load_into, &request, 2, expected);
    param_table_free(&other_shape);

    param_table fewer;
    param_table_init(&fewer);
    param_table_add(&fewer, true, 4, (int64_t[]){4, 2, 2, 2}, "x_embedder.proj.weight");
    param_table_add(&fewer, true, 1, (int64_t[]){4}, "x_embedder.proj.bias");
    param_table_add(&fewer, false, 3, (int64_t[]){1, 4, 4}, "pos_embed");
    request = (load_request){dir, &fewer, 0};
    expect_exit(root, load_into, &request, 2, "tensor blocks.0.attn.qkv.weight: not a parameter of this model");
    request.moments = 1;
    expect_exit(root, load_into, &request, 2, "tensor exp_avg.blocks.0.attn.qkv.weight: not a moment of a parameter");
    param_table_free(&fewer);

    param_table more;
    small_table(&more);
    param_table_add(&more, true, 1, (int64_t[]){3}, "extra.weight");
    request = (load_request){dir, &more, 0};
    snprintf(expected, sizeof(expected), "ldm: error: %s/model.safetensors: tensor extra.weight: missing\n", dir);
    expect_exit(root, load_into, &request, 2, expected);
    request.moments = 1;
    expect_exit(root, load_into, &request, 2, "optimizer.safetensors: tensor exp_avg.extra.weight: missing");
    param_table_free(&more);

    /* A damaged checkpoint is refused with verification's line. */
    damage_flip_model(dir);
    request = (load_request){dir, table, 0};
    snprintf(expected, sizeof(expected), "ldm: error: %s/model.safetensors: checksum mismatch (manifest ", dir);
    expect_exit(root, load_into, &request, 2, expected);

    /* A publish that cannot write is an internal failure (exit 1). */
    char *blocked = join(root, "blocked");
    mkdir(blocked, 0777);
    char *in_the_way = join(blocked, "checkpoints");
    write_bytes(in_the_way, "not a folder", 12);
    publish_request publish = {blocked, table};
    expect_exit(root, publish_into, &publish, 1, "checkpoints: exists and is not a folder");

    free(in_the_way);
    free(blocked);
    free(dir);
    free(run);
}

/* ---- the example for the command-line tests ---- */

static int write_example(const char *run, int damage) {
    ldm_config config;
    const char *overrides[] = {"model.input_size=8", "model.in_channels=4", "model.patch_size=2",
                               "model.hidden_size=64", "model.depth=2", "model.num_heads=4",
                               "model.num_classes=10", "train.batch_size=8"};
    char err[1024];
    if (config_load(&config, NULL, overrides, 8, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    dit_shape shape = config_dit_shape(&config);
    dit_model model;
    dit_create(&model, &shape, 1);
    dit_init_weights(&model, 7);
    size_t n = model.table.trainable_numel;
    float *ema = malloc(sizeof(float) * n), *m = calloc(n, sizeof(float)), *v = calloc(n, sizeof(float));
    memcpy(ema, model.params, sizeof(float) * n);
    char *config_text = config_to_json(&config);
    char *dir = NULL;
    for (int step = 10; step <= 20; step += 10) {
        cJSON *state = cJSON_CreateObject();
        cJSON_AddStringToObject(state, "format", "ldm-train-state");
        cJSON_AddNumberToObject(state, "version", 1);
        cJSON_AddStringToObject(state, "program_version", LDM_VERSION);
        cJSON_AddStringToObject(state, "kind", "dit");
        cJSON_AddNumberToObject(state, "step", step);
        cJSON_AddNumberToObject(state, "images_seen", 8 * step);
        cJSON_AddNumberToObject(state, "world_size", 2);
        cJSON_AddItemToObject(state, "config", cJSON_Parse(config_text));
        char *state_text = cJSON_Print(state);
        cJSON_Delete(state);
        checkpoint_contents contents = {.table = &model.table, .params = model.params, .ema = ema,
                                        .fixed = model.fixed, .adam_m = m, .adam_v = v, .adam_step = step,
                                        .state_json = state_text};
        free(dir);
        dir = checkpoint_publish(run, step, &contents, 2, 0);
        free(state_text);
    }
    if (damage) damage_flip_model(dir);
    printf("%s\n", dir);
    free(dir);
    free(config_text);
    free(ema);
    free(m);
    free(v);
    dit_destroy(&model);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "--write-example") == 0)
        return write_example(argv[2], argc >= 4 && strcmp(argv[3], "--damage") == 0);

    const char *tmp = getenv("TMPDIR");
    char root[4096];
    snprintf(root, sizeof(root), "%s/ldm-test-checkpoint-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(root)) {
        perror(root);
        return 1;
    }
    param_table table;
    small_table(&table);

    test_retention_and_round_trip(root, &table);
    test_verify_faults(root, &table);
    test_find(root, &table);
    test_stale_partial(root, &table);
    test_republish(root, &table);
    test_slow_hook(root, &table);
    test_killed_mid_publish(root, &table);
    test_killed_mid_retention(root, &table);
    test_load_errors(root, &table);

    param_table_free(&table);
    if (test_failures) fprintf(stderr, "files kept in %s\n", root);
    else remove_tree(root);
    return test_finish("test_checkpoint");
}

/* `ldm inspect CKPT_OR_RUN`: what a checkpoint holds and whether it is whole.
 * Prints the checkpoint directory (for a run directory: the one a resume would
 * use, and every newer one that failed verification), step, images seen, world
 * size and program version from state.json, a summary of the config it was
 * trained with, every tensor of the three tensor files, and each file of the
 * manifest with "ok" or its fault. The report is on stdout; exit status 0 when
 * everything verifies, 2 (a bad checkpoint is bad input) otherwise, with a last
 * line on stderr saying how many files (or checkpoints) failed. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "checkpoint.h"
#include "commands.h"
#include "atomic_file.h"
#include "fatal.h"
#include "safetensors.h"

#define INSPECT_STATE_MAX_BYTES (64 << 20)

static const char *const tensor_files[] = {"model.safetensors", "ema.safetensors", "optimizer.safetensors"};
enum { TENSOR_FILE_COUNT = sizeof(tensor_files) / sizeof(tensor_files[0]) };


static bool exists(const char *path) {
    struct stat info;
    return stat(path, &info) == 0;
}

/* ---- state.json ---- */

/* A JSON value as one short word: "?" when absent (older or foreign state files
 * may lack a field, and inspect is how one looks at them). */
static const char *value_text(const cJSON *item, char *buffer, size_t size) {
    if (cJSON_IsString(item)) return item->valuestring;
    if (cJSON_IsBool(item)) return cJSON_IsTrue(item) ? "true" : "false";
    if (cJSON_IsNumber(item)) {
        double v = item->valuedouble;
        if (v == floor(v) && fabs(v) < 9007199254740992.0)
            snprintf(buffer, size, "%lld", (long long)v);
        else
            snprintf(buffer, size, "%.9g", v);
        return buffer;
    }
    return "?";
}

/* item at a dotted path such as "config.model.depth"; NULL if any part is missing. */
static const cJSON *at(const cJSON *root, const char *dotted) {
    char path[128];
    snprintf(path, sizeof(path), "%s", dotted);
    const cJSON *item = root;
    char *rest = NULL;
    for (char *part = strtok_r(path, ".", &rest); part && item; part = strtok_r(NULL, ".", &rest))
        item = cJSON_IsObject(item) ? cJSON_GetObjectItemCaseSensitive(item, part) : NULL;
    return item;
}

static void print_keys(const cJSON *root, const char *section, const char *const *keys, int count) {
    char buffer[64];
    for (int i = 0; i < count; i++) {
        char dotted[96];
        snprintf(dotted, sizeof(dotted), "config.%s.%s", section, keys[i]);
        printf("%s %s %s", i ? "," : "", keys[i], value_text(at(root, dotted), buffer, sizeof(buffer)));
    }
    printf("\n");
}

/* Prints the state and config summary. Returns 1 when state.json cannot be read
 * or is not JSON (a failure of the checkpoint), 0 otherwise. */
static int print_state(const char *dir) {
    char *path = path_join(dir, "state.json");
    printf("state:\n");
    FILE *f = fopen(path, "rb");
    struct stat info;
    cJSON *state = NULL;
    int failed = 0;
    if (!f || fstat(fileno(f), &info) != 0 || info.st_size > INSPECT_STATE_MAX_BYTES) {
        printf("  %s: cannot read: %s\n", path, f ? "too large or not a file" : strerror(errno));
        failed = 1;
    } else {
        size_t size = (size_t)info.st_size;
        char *text = xmalloc(size + 1);
        size = fread(text, 1, size, f);
        text[size] = '\0';
        state = cJSON_ParseWithLength(text, size);
        free(text);
        if (!cJSON_IsObject(state)) {
            printf("  %s: not valid JSON\n", path);
            failed = 1;
        }
    }
    if (f) fclose(f);
    free(path);
    char buffer[64];
    const char *fields[] = {"step", "images_seen", "world_size", "program_version"};
    for (int i = 0; i < 4; i++)
        printf("  %-16s %s\n", fields[i], value_text(at(state, fields[i]), buffer, sizeof(buffer)));
    printf("config:\n  model:");
    const char *model_keys[] = {"type", "input_size", "in_channels", "patch_size", "hidden_size",
                                "depth", "num_heads", "num_classes"};
    print_keys(state, "model", model_keys, 8);
    printf("  train:");
    const char *train_keys[] = {"batch_size", "lr", "precision"};
    print_keys(state, "train", train_keys, 3);
    cJSON_Delete(state);
    return failed;
}

/* ---- tensors ---- */

/* Prints a tensor file's tensors and total. Returns 1 when it cannot be read as safetensors. */
static int print_tensors(const char *dir, const char *name) {
    char *path = path_join(dir, name);
    safetensors_file file;
    char err[1024];
    if (safetensors_read(path, &file, err, sizeof(err)) != 0) {
        printf("%s: cannot read: %s\n", name, err);
        free(path);
        return 1;
    }
    size_t total = 0;
    for (int i = 0; i < file.count; i++) total += file.tensors[i].numel;
    const char *step = safetensors_metadata(&file, "step");
    printf("%s: %d tensors, %zu %s", name, file.count, total,
           strcmp(name, "optimizer.safetensors") == 0 ? "values" : "parameters");
    if (step) printf(", step %s", step);
    printf("\n");
    for (int i = 0; i < file.count; i++) {
        const safetensors_tensor *t = &file.tensors[i];
        printf("  %-48s %-4s [", t->name, safetensors_dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++) printf("%s%lld", d ? ", " : "", (long long)t->shape[d]);
        printf("]\n");
    }
    safetensors_free(&file);
    free(path);
    return 0;
}

/* ---- verification ---- */

typedef struct {
    char failed_names[16][64]; /* files already counted as failed */
    int failed;
} verify_tally;

static void print_verified(const char *file_name, const char *failure, void *context) {
    verify_tally *tally = context;
    printf("  %-24s %s\n", file_name, failure ? failure : "ok");
    if (failure) {
        if (tally->failed < 16) snprintf(tally->failed_names[tally->failed], 64, "%s", file_name);
        tally->failed++;
    }
}

static bool already_failed(const verify_tally *tally, const char *name) {
    for (int i = 0; i < tally->failed && i < 16; i++)
        if (strcmp(tally->failed_names[i], name) == 0) return true;
    return false;
}

/* The whole report of one checkpoint directory; returns the number of failed files. */
static int inspect_checkpoint(const char *dir) {
    int unreadable_state = print_state(dir);
    bool unreadable[TENSOR_FILE_COUNT];
    for (int i = 0; i < TENSOR_FILE_COUNT; i++) unreadable[i] = print_tensors(dir, tensor_files[i]) != 0;
    printf("files:\n");
    verify_tally tally = {.failed = 0};
    checkpoint_verify_files(dir, print_verified, &tally);
    /* A file may match its manifest and still be unusable (written by something
     * else); it counts once either way. */
    int failed = tally.failed;
    for (int i = 0; i < TENSOR_FILE_COUNT; i++)
        if (unreadable[i] && !already_failed(&tally, tensor_files[i])) failed++;
    if (unreadable_state && !already_failed(&tally, "state.json")) failed++;
    return failed;
}

static void print_usage(void) {
    printf("usage: ldm inspect CKPT_OR_RUN\n"
           "Prints a checkpoint's step, config summary, tensors and checksums. CKPT_OR_RUN is a\n"
           "checkpoint directory (RUN/checkpoints/step-N or RUN/checkpoints/latest) or a run\n"
           "directory, for which it inspects the checkpoint a resume would use and reports the\n"
           "newer ones that fail verification. Exit status 0 when everything verifies, 2 otherwise.\n");
}

/* The one argument, CKPT_OR_RUN, checked to be a directory; NULL when help was printed. */
static const char *parse_inspect_path(int argc, char **argv) {
    const char *path = NULL;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            print_usage();
            return NULL;
        }
        if (argv[i][0] == '-' && argv[i][1])
            fatal_input("ldm inspect: unknown option '%s' (see ldm inspect --help)", argv[i]);
        if (path)
            fatal_input("ldm inspect: expected one checkpoint or run directory, got '%s' and '%s'", path, argv[i]);
        path = argv[i];
    }
    if (!path) fatal_input("ldm inspect: expected a checkpoint or run directory (usage: ldm inspect CKPT_OR_RUN)");
    struct stat info;
    if (stat(path, &info) != 0) fatal_input("%s: cannot inspect: %s", path, strerror(errno));
    if (!S_ISDIR(info.st_mode))
        fatal_input("%s: not a directory (expected a checkpoint or run directory)", path);
    return path;
}

/* Whether path is a checkpoint directory, also one whose manifest is lost (it
 * holds files only a checkpoint has; a run directory holds model.safetensors
 * too): it is inspected and reported as damaged rather than taken for an empty
 * run. checkpoints: how many path holds as a run directory. */
static bool is_checkpoint_directory(const char *path, int checkpoints) {
    bool is_checkpoint = checkpoint_is_checkpoint_dir(path);
    const char *checkpoint_only[] = {"optimizer.safetensors", "state.json"};
    for (int i = 0; i < 2 && !is_checkpoint && checkpoints == 0; i++) {
        char *file = path_join(path, checkpoint_only[i]);
        is_checkpoint = exists(file);
        free(file);
    }
    return is_checkpoint;
}

/* A run directory: the checkpoint a resume would use (the same choice as
 * checkpoint_find), with the newer ones skipped on stdout. Takes dirs. */
static void inspect_run(const char *path, char **dirs, int count) {
    int chosen = -1;
    printf("run: %s (%d checkpoint%s)\n", path, count, count == 1 ? "" : "s");
    for (int i = 0; i < count && chosen < 0; i++) {
        char err[1024];
        if (checkpoint_verify(dirs[i], err, sizeof(err)) == 0)
            chosen = i;
        else
            printf("skipped: %s: %s\n", dirs[i], err);
    }
    int skipped = chosen < 0 ? count : chosen;
    if (chosen < 0) {
        printf("no checkpoint verifies; the newest:\n");
        printf("checkpoint: %s\n", dirs[0]);
    } else {
        printf("checkpoint: %s (the newest that verifies)\n", dirs[chosen]);
    }
    char *shown = xstrdup(dirs[chosen < 0 ? 0 : chosen]);
    checkpoint_list_free(dirs, count);
    int failed = inspect_checkpoint(shown);
    fflush(stdout);
    if (failed) fatal_input("%s: %d file(s) failed verification", shown, failed);
    free(shown);
    if (skipped) fatal_input("%s: %d checkpoint(s) failed verification and were skipped", path, skipped);
}

int command_inspect(int argc, char **argv) {
    const char *path = parse_inspect_path(argc, argv);
    if (!path) return 0;
    char **dirs;
    int count = checkpoint_list(path, &dirs);
    if (is_checkpoint_directory(path, count)) {
        checkpoint_list_free(dirs, count);
        printf("checkpoint: %s\n", path);
        int failed = inspect_checkpoint(path);
        fflush(stdout);
        if (failed) fatal_input("%s: %d file(s) failed verification", path, failed);
        return 0;
    }
    if (count == 0)
        fatal_input("%s: neither a checkpoint directory (no manifest.json) nor a run directory with checkpoints "
                    "(no checkpoints/step-*)",
                    path);
    inspect_run(path, dirs, count);
    return 0;
}

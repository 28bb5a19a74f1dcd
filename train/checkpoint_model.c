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
#include "checkpoint.h"
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

char *checkpoint_model_find(const checkpoint_model_request *request, const char *where, char **dir, long long *step,
                            char **data_kind) {
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
    if (!cJSON_IsString(kind) || strcmp(kind->valuestring, request->kind) != 0)
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
    if (data_kind) {
        const cJSON *data = cJSON_GetObjectItemCaseSensitive(state, "data");
        const cJSON *dk = cJSON_IsObject(data) ? cJSON_GetObjectItemCaseSensitive(data, "kind") : NULL;
        *data_kind = cJSON_IsString(dk) ? xstrdup(dk->valuestring) : NULL;
    }
    *step = (long long)step_item->valuedouble;
    *dir = found;
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

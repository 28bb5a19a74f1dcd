/* libFuzzer target: a config (train/config.c): the JSON text up to the first
 * NUL byte of the input, then each line after it an override as --set takes
 * it (up to 8). A config that loads is written back to JSON and must load again
 * to the same config. */
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "fuzz_common.h"

#define MAX_OVERRIDES 8

typedef struct {
    char *text;
    const char *overrides[MAX_OVERRIDES];
    int override_count;
} config_input;

static void load(void *context) {
    config_input *in = context;
    ldm_config config;
    char err[1024];
    if (config_load_json_text(&config, in->text, "fuzz.json", in->overrides, in->override_count, err, sizeof err) != 0)
        return;
    char *json = config_to_json(&config);
    ldm_config again;
    if (config_load_json_text(&again, json, "round-trip.json", NULL, 0, err, sizeof err) != 0) abort();
    char *json_again = config_to_json(&again);
    if (strcmp(json, json_again) != 0) abort();
    free(json);
    free(json_again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    config_input in = {.text = fuzz_text(data, size)};
    size_t json_length = strlen(in.text);
    /* The overrides: the lines after the first NUL (NULs after it end a line too). */
    char *rest = json_length < size ? fuzz_text(data + json_length + 1, size - json_length - 1) : NULL;
    if (rest) {
        for (size_t i = 0; i < size - json_length - 1; i++)
            if (rest[i] == '\0') rest[i] = '\n';
        for (char *line = strtok(rest, "\n"); line && in.override_count < MAX_OVERRIDES; line = strtok(NULL, "\n"))
            in.overrides[in.override_count++] = line;
    }
    fuzz_run(load, &in);
    free(rest);
    free(in.text);
    return 0;
}

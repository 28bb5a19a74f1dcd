/* libFuzzer target: a checkpoint's manifest.json (checkpoints/checkpoint.c):
 * the input is the manifest of a checkpoint directory whose other files are
 * small and fixed (model, ema and optimizer safetensors, state.json); the
 * verifier checks the manifest's format, step and every file's size and CRC-32. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "checkpoint.h"
#include "fuzz_common.h"

static void verify(void *context) {
    char err[2048];
    (void)checkpoint_verify(context, err, sizeof err);
    (void)checkpoint_is_checkpoint_dir(context);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char dir[256];
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "%s/step-00000002", fuzz_folder());
        mkdir(dir, 0700);
        /* A safetensors file with one 2-element tensor: 8-byte length, header, data. */
        static const char header[] = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
        uint8_t file[8 + sizeof header - 1 + 8];
        memset(file, 0, sizeof file);
        file[0] = (uint8_t)(sizeof header - 1);
        memcpy(file + 8, header, sizeof header - 1);
        const char *names[] = {"model.safetensors", "ema.safetensors", "optimizer.safetensors"};
        char name[300];
        for (int i = 0; i < 3; i++) {
            snprintf(name, sizeof name, "step-00000002/%s", names[i]);
            fuzz_file(name, file, sizeof file);
        }
        fuzz_file("step-00000002/state.json", (const uint8_t *)"{}\n", 3);
    }
    fuzz_file("step-00000002/manifest.json", data, size);
    fuzz_run(verify, dir);
    return 0;
}

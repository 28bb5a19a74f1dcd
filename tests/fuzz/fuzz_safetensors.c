/* libFuzzer target: a safetensors file (checkpoints/tensors/safetensors.c): the
 * header's JSON, dtypes, shapes, data_offsets against the byte buffer, the
 * metadata; every tensor of a file that is accepted is read end to end, so a
 * range that escapes the buffer is an ASan report. */
#include <stdint.h>
#include <stdlib.h>

#include "fuzz_common.h"
#include "safetensors.h"

static void parse(void *context) {
    const char *path = context;
    safetensors_file file;
    char err[1024];
    if (safetensors_read(path, &file, err, sizeof err) != 0) return;
    for (int i = 0; i < file.count; i++) {
        const safetensors_tensor *t = &file.tensors[i];
        const unsigned char *bytes = t->data;
        for (size_t b = 0; b < t->nbytes; b++) fuzz_sink += bytes[b];
        if (safetensors_find(&file, t->name) != t) abort();
    }
    for (int i = 0; i < file.metadata_count; i++) fuzz_sink += (unsigned)safetensors_metadata(&file, file.metadata_keys[i])[0];
    safetensors_free(&file);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_run(parse, (void *)fuzz_file("input.safetensors", data, size));
    return 0;
}

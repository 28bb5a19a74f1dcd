/* libFuzzer target: a PNG as the image-folder converter reads it
 * (data/png_image.c, libpng's simplified API), as gray and as RGB. */
#include <stdint.h>
#include <stdlib.h>

#include "fuzz_common.h"
#include "png_image.h"

typedef struct {
    const char *path;
    int channels;
} png_input;

static void read_png(void *context) {
    png_input *in = context;
    int height, width;
    uint8_t *pixels = png_read_file(in->path, in->channels, &height, &width);
    for (size_t i = 0; i < (size_t)height * (size_t)width * (size_t)in->channels; i++) fuzz_sink += pixels[i];
    free(pixels);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_file("input.png", data, size);
    for (int channels = 1; channels <= 3; channels += 2) {
        png_input in = {.path = path, .channels = channels};
        fuzz_run(read_png, &in);
    }
    fuzz_close_files();
    return 0;
}

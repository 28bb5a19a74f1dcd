/* libFuzzer target: an image file as the image-folder converter decodes it
 * (data/image_decode.c: PNG through libpng, JPEG through TurboJPEG, told apart
 * by their signatures), as gray and as RGB. Errors are returned, not fatal:
 * a damaged file must give -1 and a reason, never a crash or a read out of bounds. */
#include <stdint.h>
#include <stdlib.h>

#include "fuzz_common.h"
#include "image_decode.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    for (int channels = 1; channels <= 3; channels += 2) {
        decoded_image image;
        char reason[256];
        if (image_decode_bytes(data, size, channels, &image, reason, sizeof reason) != 0) continue;
        for (size_t i = 0; i < (size_t)image.height * (size_t)image.width * (size_t)image.channels; i++)
            fuzz_sink += image.pixels[i];
        decoded_image_free(&image);
    }
    return 0;
}

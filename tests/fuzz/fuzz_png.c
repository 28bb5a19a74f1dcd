/* libFuzzer target: an image file as the image-folder converter decodes it
 * (data/image_decode.c: PNG through libpng, JPEG through TurboJPEG, told apart
 * by their signatures), as gray and as RGB. Errors are returned, not fatal:
 * a damaged file must give -1 and a reason, never a crash or a read out of bounds.
 *
 * A header may ask for up to IMAGE_DECODE_MAX_PIXELS (2^28) pixels, which the
 * decoder accepts by design; decoding that many under ASan takes longer than
 * the fuzzer's 10 s limit (found 2026-12-07: a 300-byte JPEG declaring a huge
 * CMYK image). So inputs whose header declares more than 2^22 pixels are not
 * decoded here: their cost is the size they declare, not a bug to find. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>

#include "fuzz_common.h"
#include "image_decode.h"

#define FUZZ_MAX_DECLARED_PIXELS (1LL << 22)

static long long declared_pixels(const uint8_t *data, size_t size) {
    static const uint8_t png_signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (size >= 24 && memcmp(data, png_signature, 8) == 0) {
        uint32_t width = (uint32_t)data[16] << 24 | (uint32_t)data[17] << 16 | (uint32_t)data[18] << 8 | data[19];
        uint32_t height = (uint32_t)data[20] << 24 | (uint32_t)data[21] << 16 | (uint32_t)data[22] << 8 | data[23];
        return (long long)((double)width * (double)height > 9e18 ? 9e18 : (double)width * (double)height);
    }
    if (size >= 2 && data[0] == 0xff && data[1] == 0xd8) {
        tjhandle handle = tjInitDecompress();
        int width = 0, height = 0, subsampling = 0, colorspace = 0;
        int failed = !handle || tjDecompressHeader3(handle, data, (unsigned long)size, &width, &height, &subsampling,
                                                    &colorspace) != 0;
        if (handle) tjDestroy(handle);
        return failed ? 0 : (long long)width * height;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (declared_pixels(data, size) > FUZZ_MAX_DECLARED_PIXELS) return 0;
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

/* PNG reading and writing with libpng's simplified API (see png_image.h). */
#include "png_image.h"

#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fatal.h"

/* Larger images are refused rather than risking a huge allocation from a
 * corrupt header; no data set for this trainer comes close. */
#define PNG_MAX_SIDE 32768

uint8_t *png_read_file(const char *path, int channels, int *height, int *width) {
    if (channels != 1 && channels != 3) fatal_internal("png_read_file: channels must be 1 or 3, got %d", channels);
    png_image image;
    memset(&image, 0, sizeof(image));
    image.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_file(&image, path)) {
        char reason[256];
        snprintf(reason, sizeof(reason), "%s", image.message);
        png_image_free(&image);
        fatal_input("%s: cannot read as PNG: %s", path, reason);
    }
    if (image.width == 0 || image.height == 0 || image.width > PNG_MAX_SIDE || image.height > PNG_MAX_SIDE) {
        unsigned w = image.width, h = image.height;
        png_image_free(&image);
        fatal_input("%s: PNG of %ux%u pixels; expected sides in [1, %d]", path, w, h, PNG_MAX_SIDE);
    }
    image.format = channels == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
    size_t bytes = PNG_IMAGE_SIZE(image);
    uint8_t *pixels = xmalloc(bytes);
    /* Transparent pixels become black: the background the padding and the
     * synthetic images use too. */
    png_color black = {0, 0, 0};
    if (!png_image_finish_read(&image, &black, pixels, 0, NULL)) {
        char reason[256];
        snprintf(reason, sizeof(reason), "%s", image.message);
        png_image_free(&image);
        free(pixels);
        fatal_input("%s: damaged PNG: %s", path, reason);
    }
    *height = (int)image.height;
    *width = (int)image.width;
    return pixels;
}

void png_write_file(const char *path, const uint8_t *pixels, int height, int width, int channels) {
    static const png_uint_32 formats[5] = {0, PNG_FORMAT_GRAY, PNG_FORMAT_GA, PNG_FORMAT_RGB, PNG_FORMAT_RGBA};
    if (channels < 1 || channels > 4 || height < 1 || width < 1)
        fatal_internal("png_write_file: bad image %dx%dx%d", height, width, channels);
    png_image image;
    memset(&image, 0, sizeof(image));
    image.version = PNG_IMAGE_VERSION;
    image.width = (png_uint_32)width;
    image.height = (png_uint_32)height;
    image.format = formats[channels];
    if (!png_image_write_to_file(&image, path, 0, pixels, 0, NULL)) {
        char reason[256];
        snprintf(reason, sizeof(reason), "%s", image.message);
        png_image_free(&image);
        fatal_input("%s: cannot write PNG: %s", path, reason);
    }
}

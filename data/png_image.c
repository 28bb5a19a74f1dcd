/* PNG writing with libpng's simplified API (see png_image.h). */
#include "png_image.h"

#include <errno.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "disk_space.h"
#include "fatal.h"

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
        /* libpng names the failure (its message is strerror's when the close
         * fails), and errno is still that of the failed write or close. */
        int error_number = errno;
        char reason[256];
        snprintf(reason, sizeof(reason), "%s", image.message);
        png_image_free(&image);
        char full[512];
        if (disk_full_describe(path, error_number, full, sizeof full) ||
            (strcmp(reason, strerror(ENOSPC)) == 0 && disk_full_describe(path, ENOSPC, full, sizeof full)))
            fatal_input("%s: cannot write PNG: %s", path, full);
        fatal_input("%s: cannot write PNG: %s", path, reason);
    }
}

void png_write_image_grid(const char *path, const uint8_t *pixels, int64_t n, int channels, int size, int by_class) {
    int columns, grid_rows;
    if (by_class > 0) {
        grid_rows = (int)(n < by_class ? n : by_class);
        columns = (int)((n + by_class - 1) / by_class);
    } else {
        columns = n < PNG_GRID_COLUMNS ? (int)n : PNG_GRID_COLUMNS;
        grid_rows = (int)((n + PNG_GRID_COLUMNS - 1) / PNG_GRID_COLUMNS);
    }
    const int png_channels = channels >= 3 ? 3 : 1;
    const int width = columns * size, height = grid_rows * size;
    uint8_t *grid = xcalloc((size_t)width * (size_t)height * (size_t)png_channels, 1);
    for (int64_t i = 0; i < n; i++) {
        int col = by_class > 0 ? (int)(i / by_class) : (int)(i % PNG_GRID_COLUMNS);
        int row = by_class > 0 ? (int)(i % by_class) : (int)(i / PNG_GRID_COLUMNS);
        int gx = col * size, gy = row * size;
        for (int y = 0; y < size; y++)
            for (int x = 0; x < size; x++)
                for (int c = 0; c < png_channels; c++)
                    grid[((size_t)(gy + y) * (size_t)width + (size_t)(gx + x)) * png_channels + c] =
                        pixels[((i * size + y) * size + x) * channels + c];
    }
    size_t length = strlen(path) + sizeof ".partial";
    char *partial = xmalloc(length);
    snprintf(partial, length, "%s.partial", path);
    fatal_remove_on_failure(partial);
    png_write_file(partial, grid, height, width, png_channels);
    if (rename(partial, path) != 0) fatal_internal("cannot rename %s to %s: %s", partial, path, strerror(errno));
    fatal_forget_removal(partial);
    free(partial);
    free(grid);
}

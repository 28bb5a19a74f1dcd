/* Writing PNG files through libpng's simplified API: 8-bit pixels (sample
 * grids, pictures, test images). Pixels are row-major, H x W x C, channels
 * interleaved. Reading is image_decode.h's. */
#ifndef LDM_PNG_IMAGE_H
#define LDM_PNG_IMAGE_H

#include <stdint.h>

/* Writes H x W x channels pixels to PATH as an 8-bit PNG: channels 1 (gray),
 * 2 (gray + alpha), 3 (RGB) or 4 (RGBA). fatal_input naming PATH if it cannot
 * be written. */
void png_write_file(const char *path, const uint8_t *pixels, int height, int width, int channels);

/* The n images (n, size, size, channels) as one PNG grid at path, written as
 * path.partial and renamed: PNG_GRID_COLUMNS per row in order, or with
 * by_class > 0 one row per class, sample i in row i mod by_class (samples made
 * for classes 0, 1, ..., by_class - 1 in turn). RGB from the first three
 * channels when there are three or more, else gray from the first. */
#define PNG_GRID_COLUMNS 8
void png_write_image_grid(const char *path, const uint8_t *pixels, int64_t n, int channels, int size, int by_class);

#endif

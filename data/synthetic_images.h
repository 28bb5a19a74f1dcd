/* Procedural images for tests and demos without downloads: the class decides
 * the shape (circle, square, triangle, ...), and the position, size, colour
 * and rotation vary per sample. Each image is a pure function of (seed, index),
 * so a data set made on any number of ranks is the same. */
#ifndef LDM_SYNTHETIC_IMAGES_H
#define LDM_SYNTHETIC_IMAGES_H

#include <stdint.h>

/* Distinct shapes; classes beyond these reuse them in order, on a grey
 * background whose level tells the cycles apart. */
#define SYNTHETIC_SHAPE_COUNT 12
#define SYNTHETIC_MAX_CHANNELS 64

/* The class of sample `index`: index % num_classes. */
int synthetic_class(int64_t index, int num_classes);

/* The name of class k: its shape ("circle"), with "-2", "-3", ... for the
 * later cycles when there are more classes than shapes. */
void synthetic_class_name(int class_index, char *out, int out_size);

/* Draws sample `index` as size x size x channels uint8 pixels (row-major,
 * channels interleaved); channels in [1, SYNTHETIC_MAX_CHANNELS] (1 is gray;
 * each channel gets its own random colour component). */
void synthetic_image(uint64_t seed, int64_t index, int num_classes, int size, int channels, uint8_t *out);

#endif

/* The Fashion-MNIST idx files (as Debian's dataset-fashion-mnist ships them,
 * gzip-compressed): reading and validating one split, its 10 class names, and
 * centred zero padding of its 28x28 images. */
#ifndef LDM_FASHION_MNIST_H
#define LDM_FASHION_MNIST_H

#include <stdint.h>

#define FASHION_MNIST_DEFAULT_DIR "/usr/share/datasets/fashion-mnist"
#define FASHION_MNIST_SIDE 28
#define FASHION_MNIST_CLASSES 10
#define FASHION_MNIST_IMAGES_MAGIC 2051 /* idx3: unsigned bytes, 3 dimensions */
#define FASHION_MNIST_LABELS_MAGIC 2049 /* idx1: unsigned bytes, 1 dimension */

extern const char *const fashion_mnist_class_names[FASHION_MNIST_CLASSES];

typedef struct {
    int64_t count;
    uint8_t *images; /* count x 28 x 28, row-major */
    int32_t *labels; /* count, each in [0, 10) */
} fashion_mnist_split;

/* Reads DIR/train-*-ubyte.gz ("train") or DIR/t10k-*-ubyte.gz ("test"). Each
 * problem (missing file, damaged or truncated gzip, wrong magic number, image
 * size, counts that disagree, a label outside [0, 10)) is one fatal_input line
 * naming the file, what was expected and what was found. */
void fashion_mnist_read(const char *dir, const char *split, fashion_mnist_split *out);
void fashion_mnist_free(fashion_mnist_split *split);

/* Copies a 28x28 image into the centre of a side x side black image (side >=
 * 28; an odd margin puts the extra row and column at the bottom and right). */
void fashion_mnist_pad(const uint8_t *image, int side, uint8_t *padded);

#endif

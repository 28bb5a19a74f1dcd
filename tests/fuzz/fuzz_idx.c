/* libFuzzer target: the Fashion-MNIST idx reader (data/fashion_mnist.c). The
 * input is split into the images file and the labels file of the test split:
 * its first 4 bytes (little-endian) are the images file's length (at most the
 * rest), the labels file is what follows. Both are read through zlib, which
 * takes plain and gzip bytes alike. */
#include <stdint.h>
#include <stdlib.h>

#include "fashion_mnist.h"
#include "fuzz_common.h"

static void read_split(void *context) {
    fashion_mnist_split split;
    fashion_mnist_read(context, "test", &split);
    for (int64_t i = 0; i < split.count; i++) fuzz_sink += split.images[i * 28 * 28 + 27 * 28 + 27] + (unsigned)split.labels[i];
    fashion_mnist_free(&split);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 4) return 0;
    size_t images = (size_t)data[0] | (size_t)data[1] << 8 | (size_t)data[2] << 16 | (size_t)data[3] << 24;
    if (images > size - 4) images = size - 4;
    fuzz_file("t10k-images-idx3-ubyte.gz", data + 4, images);
    fuzz_file("t10k-labels-idx1-ubyte.gz", data + 4 + images, size - 4 - images);
    fuzz_run(read_split, (void *)fuzz_folder());
    fuzz_close_files();
    return 0;
}

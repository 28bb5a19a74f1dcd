/* Reading Fashion-MNIST idx files with zlib (see fashion_mnist.h). An idx file
 * is a big-endian header (magic, then one 32-bit size per dimension) followed
 * by the unsigned bytes. gzread also reads an uncompressed file as it is. */
#include "fashion_mnist.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "fatal.h"

const char *const fashion_mnist_class_names[FASHION_MNIST_CLASSES] = {
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
};

/* Fashion-MNIST has 60000 + 10000 images; anything far larger is a damaged header. */
#define FASHION_MNIST_MAX_COUNT 10000000u

typedef struct {
    const char *path;
    gzFile file;
} idx_file;

/* What the reader holds while it reads, released before a refusal. ldm ends
 * there anyway; the fuzz harness (tests/fuzz) returns from fatal_input and reads
 * its next input in the same process, where zlib's ~150 KB of state for each
 * refused input's two files added up to its memory limit. */
static struct {
    idx_file *files[2];
    void *memory[3];
} held;

static void release_held(void) {
    for (int i = 0; i < 2; i++)
        if (held.files[i] && held.files[i]->file) {
            gzclose(held.files[i]->file);
            held.files[i]->file = NULL;
        }
    for (int i = 0; i < 3; i++) free(held.memory[i]);
    memset(&held, 0, sizeof held);
}

/* fatal_input, once the message is written (it may quote zlib's error) and what
 * the reader holds is released. */
__attribute__((noreturn, format(printf, 1, 2))) static void refuse(const char *fmt, ...) {
    char message[8192];
    va_list args;
    va_start(args, fmt);
    vsnprintf(message, sizeof message, fmt, args);
    va_end(args);
    release_held();
    fatal_input("%s", message);
}

static void idx_open(idx_file *f, const char *path) {
    f->path = path;
    errno = 0;
    f->file = gzopen(path, "rb");
    if (!f->file)
        refuse("%s: cannot open: %s (the Debian package dataset-fashion-mnist installs the files to %s; "
                    "--dir names another folder)",
                    path, errno ? strerror(errno) : "out of memory", FASHION_MNIST_DEFAULT_DIR);
}

/* zlib's message for the last error, without the "PATH: " it puts in front. */
static const char *gz_reason(idx_file *f) {
    int code = 0;
    const char *message = gzerror(f->file, &code);
    if (code == Z_ERRNO) return strerror(errno);
    size_t n = strlen(f->path);
    if (strncmp(message, f->path, n) == 0 && strncmp(message + n, ": ", 2) == 0) message += n + 2;
    return message;
}

/* Reads exactly `bytes` bytes into buffer, or with buffer NULL into one grown as
 * they arrive (doubling from 1 MiB), so that a damaged header naming millions of
 * items costs what the file holds, not what the header says; returns the buffer.
 * A short read or a zlib error is refused, saying what part was being read. */
static uint8_t *idx_read(idx_file *f, uint8_t *buffer, size_t bytes, const char *what) {
    uint8_t *grown = NULL; /* the buffer this call allocated, freed before a refusal */
    size_t got = 0, capacity = buffer ? bytes : 0;
    while (got < bytes) {
        if (got == capacity) {
            capacity = capacity ? 2 * capacity : (size_t)1 << 20;
            if (capacity > bytes) capacity = bytes;
            uint8_t *larger = realloc(grown, capacity);
            if (!larger) {
                free(grown);
                fatal_internal("out of memory: %zu bytes for the %s of %s", capacity, what, f->path);
            }
            buffer = grown = larger;
        }
        size_t want = capacity - got;
        if (want > (1u << 30)) want = 1u << 30;
        int n = gzread(f->file, buffer + got, (unsigned)want);
        if (n <= 0) {
            free(grown);
            if (n < 0) refuse("%s: damaged gzip data while reading the %s: %s", f->path, what, gz_reason(f));
            refuse("%s: truncated: expected %zu bytes of %s, found %zu", f->path, bytes, what, got);
        }
        got += (size_t)n;
    }
    return buffer;
}

static uint32_t idx_read_u32(idx_file *f, const char *what) {
    uint8_t b[4];
    idx_read(f, b, 4, what);
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | (uint32_t)b[3];
}

/* After the last expected byte: the file must end there (and its gzip trailer check out). */
static void idx_close_expecting_end(idx_file *f, const char *what) {
    char extra;
    int n = gzread(f->file, &extra, 1);
    if (n < 0) refuse("%s: damaged gzip data after the %s: %s", f->path, what, gz_reason(f));
    if (n > 0) refuse("%s: unexpected bytes after the %s (the header's count is too small?)", f->path, what);
    gzclose(f->file);
    f->file = NULL;
}

static uint32_t read_magic_and_count(idx_file *f, uint32_t expected_magic) {
    uint32_t magic = idx_read_u32(f, "header");
    if (magic != expected_magic)
        refuse("%s: bad magic number: expected %u (idx%u of unsigned bytes), found %u", f->path,
                    expected_magic, expected_magic & 0xff, magic);
    uint32_t count = idx_read_u32(f, "header");
    if (count == 0 || count > FASHION_MNIST_MAX_COUNT)
        refuse("%s: header says %u items; expected between 1 and %u", f->path, count, FASHION_MNIST_MAX_COUNT);
    return count;
}

void fashion_mnist_read(const char *dir, const char *split, fashion_mnist_split *out) {
    const char *prefix = strcmp(split, "train") == 0 ? "train" : strcmp(split, "test") == 0 ? "t10k" : NULL;
    if (!prefix) fatal_internal("fashion_mnist_read: unknown split '%s'", split);
    char images_path[4096], labels_path[4096];
    snprintf(images_path, sizeof(images_path), "%s/%s-images-idx3-ubyte.gz", dir, prefix);
    snprintf(labels_path, sizeof(labels_path), "%s/%s-labels-idx1-ubyte.gz", dir, prefix);

    idx_file images = {0}, labels = {0};
    held.files[0] = &images, held.files[1] = &labels;
    idx_open(&images, images_path);
    idx_open(&labels, labels_path);

    uint32_t image_count = read_magic_and_count(&images, FASHION_MNIST_IMAGES_MAGIC);
    uint32_t rows = idx_read_u32(&images, "header"), cols = idx_read_u32(&images, "header");
    if (rows != FASHION_MNIST_SIDE || cols != FASHION_MNIST_SIDE)
        refuse("%s: images of %ux%u pixels; expected %dx%d", images_path, rows, cols, FASHION_MNIST_SIDE,
                    FASHION_MNIST_SIDE);
    uint32_t label_count = read_magic_and_count(&labels, FASHION_MNIST_LABELS_MAGIC);
    if (label_count != image_count)
        refuse("%s: %u labels, but %s holds %u images; expected the same count", labels_path, label_count,
                    images_path, image_count);

    size_t pixels = (size_t)image_count * FASHION_MNIST_SIDE * FASHION_MNIST_SIDE;
    out->count = image_count;
    out->images = held.memory[0] = idx_read(&images, NULL, pixels, "pixel data");
    idx_close_expecting_end(&images, "pixel data");

    uint8_t *raw_labels = held.memory[1] = idx_read(&labels, NULL, image_count, "labels");
    idx_close_expecting_end(&labels, "labels");
    out->labels = held.memory[2] = xmalloc(sizeof(int32_t) * image_count);
    for (uint32_t i = 0; i < image_count; i++) {
        if (raw_labels[i] >= FASHION_MNIST_CLASSES)
            refuse("%s: label %u is %u; expected a class in [0, %d)", labels_path, i, raw_labels[i],
                        FASHION_MNIST_CLASSES);
        out->labels[i] = raw_labels[i];
    }
    free(raw_labels);
    memset(&held, 0, sizeof held); /* the split's buffers are the caller's now */
}

void fashion_mnist_free(fashion_mnist_split *split) {
    free(split->images);
    free(split->labels);
    memset(split, 0, sizeof(*split));
}

void fashion_mnist_pad(const uint8_t *image, int side, uint8_t *padded) {
    int top = (side - FASHION_MNIST_SIDE) / 2, left = top;
    memset(padded, 0, (size_t)side * side);
    for (int y = 0; y < FASHION_MNIST_SIDE; y++)
        memcpy(padded + (size_t)(top + y) * side + left, image + (size_t)y * FASHION_MNIST_SIDE, FASHION_MNIST_SIDE);
}

/* Unit tests of the converters behind `ldm prepare`: square crop and resize
 * (against direct formulas), PNG write/read round trips (gray, RGB, alpha on
 * black), image folder listing order and labels, Fashion-MNIST padding, and
 * that synthetic images are a pure function of (seed, index). */
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fashion_mnist.h"
#include "image_folder.h"
#include "png_image.h"
#include "synthetic_images.h"
#include "test_util.h"

static uint8_t round_pixel(double v) { return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : lround(v)); }

static void test_resize_copy_and_crop(void) {
    /* 4 rows x 6 columns, 2 channels: the square is columns 1..4, copied as is. */
    uint8_t image[4 * 6 * 2], out[4 * 4 * 2];
    for (int i = 0; i < 4 * 6 * 2; i++) image[i] = (uint8_t)(7 * i + 3);
    image_square_resize(image, 4, 6, 2, 4, out);
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 4; x++)
            for (int c = 0; c < 2; c++) CHECK(out[(y * 4 + x) * 2 + c] == image[(y * 6 + x + 1) * 2 + c]);
    /* 7 rows x 4 columns: rows 1..4 (the odd margin row goes to the bottom). */
    uint8_t tall[7 * 4], square[4 * 4];
    for (int i = 0; i < 7 * 4; i++) tall[i] = (uint8_t)(11 * i);
    image_square_resize(tall, 7, 4, 1, 4, square);
    for (int i = 0; i < 16; i++) CHECK(square[i] == tall[4 + i]);
}

static void test_resize_area_average(void) {
    /* 4x4 -> 2x2: each output is the mean of its 2x2 block. */
    uint8_t image[16], out[4];
    for (int i = 0; i < 16; i++) image[i] = (uint8_t)((i * 37) % 251);
    image_square_resize(image, 4, 4, 1, 2, out);
    for (int y = 0; y < 2; y++)
        for (int x = 0; x < 2; x++) {
            double sum = 0;
            for (int dy = 0; dy < 2; dy++)
                for (int dx = 0; dx < 2; dx++) sum += image[(2 * y + dy) * 4 + 2 * x + dx];
            CHECK(out[y * 2 + x] == round_pixel(sum / 4));
        }
    /* 3x3 -> 2x2: output pixel 0 covers source [0, 1.5): weights 1 and 0.5 (/1.5) per axis. */
    uint8_t three[9], two[4];
    for (int i = 0; i < 9; i++) three[i] = (uint8_t)(20 * i + 5);
    image_square_resize(three, 3, 3, 1, 2, two);
    const double w[2][3] = {{1 / 1.5, 0.5 / 1.5, 0}, {0, 0.5 / 1.5, 1 / 1.5}};
    for (int y = 0; y < 2; y++)
        for (int x = 0; x < 2; x++) {
            double v = 0;
            for (int sy = 0; sy < 3; sy++)
                for (int sx = 0; sx < 3; sx++) v += w[y][sy] * w[x][sx] * three[sy * 3 + sx];
            CHECK_MSG(two[y * 2 + x] == round_pixel(v), "(%d,%d): %d vs %.3f", y, x, two[y * 2 + x], v);
        }
}

static void test_resize_bilinear(void) {
    /* 2x2 -> 4x4 with pixel centres aligned: source positions -0.25 (clamped
     * to 0), 0.25, 0.75, 1.25 (clamped to 1). */
    uint8_t image[4] = {10, 200, 60, 120}, out[16];
    image_square_resize(image, 2, 2, 1, 4, out);
    const double t[4] = {0, 0.25, 0.75, 1};
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 4; x++) {
            double top = image[0] * (1 - t[x]) + image[1] * t[x], bottom = image[2] * (1 - t[x]) + image[3] * t[x];
            CHECK(out[y * 4 + x] == round_pixel(top * (1 - t[y]) + bottom * t[y]));
        }
}

static void test_resize_keeps_constants(void) {
    const int sizes[] = {1, 5, 16, 23, 64};
    uint8_t image[37 * 23 * 3];
    for (int i = 0; i < 37 * 23; i++) {
        image[3 * i] = 17;
        image[3 * i + 1] = 128;
        image[3 * i + 2] = 255;
    }
    for (int s = 0; s < 5; s++) {
        int size = sizes[s];
        uint8_t *out = malloc((size_t)size * size * 3);
        image_square_resize(image, 37, 23, 3, size, out);
        int ok = 1;
        for (int i = 0; i < size * size; i++) ok &= out[3 * i] == 17 && out[3 * i + 1] == 128 && out[3 * i + 2] == 255;
        CHECK_MSG(ok, "a constant image resized to %d is not constant", size);
        free(out);
    }
}

static void test_png_round_trip(const char *dir) {
    char path[4096];
    /* RGB, exact round trip. */
    uint8_t rgb[5 * 7 * 3];
    for (int i = 0; i < 5 * 7 * 3; i++) rgb[i] = (uint8_t)(i * 13 + 1);
    snprintf(path, sizeof(path), "%s/rgb.png", dir);
    png_write_file(path, rgb, 5, 7, 3);
    int h = 0, w = 0;
    uint8_t *back = png_read_file(path, 3, &h, &w);
    CHECK(h == 5 && w == 7);
    CHECK(memcmp(back, rgb, sizeof(rgb)) == 0);
    free(back);
    /* Gray read as RGB: three equal channels; as gray: exact. */
    uint8_t gray[3 * 4];
    for (int i = 0; i < 12; i++) gray[i] = (uint8_t)(i * 21);
    snprintf(path, sizeof(path), "%s/gray.png", dir);
    png_write_file(path, gray, 3, 4, 1);
    back = png_read_file(path, 3, &h, &w);
    CHECK(h == 3 && w == 4);
    for (int i = 0; i < 12; i++)
        CHECK(back[3 * i] == gray[i] && back[3 * i + 1] == gray[i] && back[3 * i + 2] == gray[i]);
    free(back);
    back = png_read_file(path, 1, &h, &w);
    CHECK(memcmp(back, gray, sizeof(gray)) == 0);
    free(back);
    /* RGBA read as RGB: transparent pixels become black, opaque ones keep their colour. */
    uint8_t rgba[2 * 2 * 4] = {200, 100, 50, 255, 200, 100, 50, 0, 9, 99, 199, 255, 255, 255, 255, 0};
    snprintf(path, sizeof(path), "%s/rgba.png", dir);
    png_write_file(path, rgba, 2, 2, 4);
    back = png_read_file(path, 3, &h, &w);
    const uint8_t expected[12] = {200, 100, 50, 0, 0, 0, 9, 99, 199, 0, 0, 0};
    CHECK(memcmp(back, expected, sizeof(expected)) == 0);
    free(back);
}

static void test_image_folder_listing(const char *dir) {
    /* Created in an order unlike the sorted one; "b" sorts after "a". */
    char path[4096];
    const char *folders[] = {"tree", "tree/b", "tree/a", "tree/a/deeper", "tree/empty"};
    for (int i = 0; i < 5; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, folders[i]);
        CHECK(mkdir(path, 0755) == 0);
    }
    const char *files[] = {"tree/b/2.png", "tree/b/1.PNG", "tree/a/deeper/z.png", "tree/a/y.png", "tree/a/notes.txt"};
    uint8_t pixel[3] = {1, 2, 3};
    for (int i = 0; i < 5; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
        png_write_file(path, pixel, 1, 1, 3);
    }
    snprintf(path, sizeof(path), "%s/tree/", dir);
    image_folder_listing listing;
    image_folder_list(path, &listing);
    CHECK(listing.count == 4);
    CHECK(listing.num_classes == 2);
    if (listing.count == 4 && listing.num_classes == 2) {
        CHECK(strcmp(listing.class_names[0], "a") == 0 && strcmp(listing.class_names[1], "b") == 0);
        const char *want[4] = {"tree/a/deeper/z.png", "tree/a/y.png", "tree/b/1.PNG", "tree/b/2.png"};
        const int32_t want_labels[4] = {0, 0, 1, 1};
        for (int i = 0; i < 4; i++) {
            snprintf(path, sizeof(path), "%s/%s", dir, want[i]);
            CHECK_MSG(strcmp(listing.paths[i], path) == 0, "%s vs %s", listing.paths[i], path);
            CHECK(listing.labels[i] == want_labels[i]);
        }
    }
    image_folder_free(&listing);
}

static void test_fashion_mnist_pad(void) {
    uint8_t image[28 * 28], padded[33 * 33];
    for (int i = 0; i < 28 * 28; i++) image[i] = (uint8_t)(1 + i % 250);
    fashion_mnist_pad(image, 33, padded);
    /* Margin 5: 2 above and left, 3 below and right. */
    for (int y = 0; y < 33; y++)
        for (int x = 0; x < 33; x++) {
            int inside = y >= 2 && y < 30 && x >= 2 && x < 30;
            CHECK(padded[y * 33 + x] == (inside ? image[(y - 2) * 28 + x - 2] : 0));
        }
}

static void test_synthetic_is_pure(void) {
    enum { S = 24, C = 3, K = 5 };
    uint8_t a[S * S * C], b[S * S * C];
    synthetic_image(7, 123, K, S, C, a);
    synthetic_image(9, 4, K, S, C, b); /* something else in between */
    synthetic_image(7, 123, K, S, C, b);
    CHECK(memcmp(a, b, sizeof(a)) == 0);
    synthetic_image(8, 123, K, S, C, b);
    CHECK(memcmp(a, b, sizeof(a)) != 0);
    synthetic_image(7, 124, K, S, C, b);
    CHECK(memcmp(a, b, sizeof(a)) != 0);
    CHECK(synthetic_class(123, K) == 3);
    /* Each image holds background and shape: some black, some bright pixels. */
    int dark = 0, bright = 0;
    for (int i = 0; i < S * S * C; i++) {
        dark += a[i] == 0;
        bright += a[i] >= 130;
    }
    CHECK(dark > 0 && bright > 0);
    char name[64];
    synthetic_class_name(0, name, sizeof(name));
    CHECK(strcmp(name, "circle") == 0);
    synthetic_class_name(SYNTHETIC_SHAPE_COUNT + 1, name, sizeof(name));
    CHECK(strcmp(name, "square-2") == 0);
}

int main(void) {
    char dir[] = "/tmp/ldm-test-prepare-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_resize_copy_and_crop();
    test_resize_area_average();
    test_resize_bilinear();
    test_resize_keeps_constants();
    test_png_round_trip(dir);
    test_image_folder_listing(dir);
    test_fashion_mnist_pad();
    test_synthetic_is_pure();
    char command[4200];
    snprintf(command, sizeof(command), "rm -rf '%s'", dir);
    if (system(command) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return test_finish("test_prepare_units");
}

/* Unit tests of the converters behind `ldm prepare`: the ADM center crop
 * (copy at size, box halving, constants; tests/prepare_check_center_crop.py
 * checks it against PIL), PNG decoding (gray, RGB, luma, alpha dropped, a
 * non-image refused), image folder listing order and labels, Fashion-MNIST padding, and
 * that synthetic images are a pure function of (seed, index). */
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "center_crop.h"
#include "fashion_mnist.h"
#include "image_decode.h"
#include "image_folder.h"
#include "png_image.h"
#include "synthetic_images.h"
#include "test_util.h"

static void test_center_crop_copies_at_size(void) {
    /* Short side S already: no resize, the central S columns (the odd margin
     * column goes to the right). 4 rows x 7 columns, 2 channels, S = 4. */
    uint8_t image[4 * 7 * 2], out[4 * 4 * 2];
    for (int i = 0; i < 4 * 7 * 2; i++) image[i] = (uint8_t)(7 * i + 3);
    adm_center_crop(image, 4, 7, 2, 4, out);
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 4; x++)
            for (int c = 0; c < 2; c++) CHECK(out[(y * 4 + x) * 2 + c] == image[(y * 7 + x + 1) * 2 + c]);
}

static void test_center_crop_halves_with_box(void) {
    /* 2S x 2S of constant 2x2 blocks: halved once (short side 2S), each block
     * to its value, and then already S. */
    enum { S = 6 };
    uint8_t image[2 * S * 2 * S], out[S * S];
    for (int y = 0; y < 2 * S; y++)
        for (int x = 0; x < 2 * S; x++) image[y * 2 * S + x] = (uint8_t)(17 * (y / 2) + 29 * (x / 2));
    adm_center_crop(image, 2 * S, 2 * S, 1, S, out);
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++)
            CHECK_MSG(out[y * S + x] == (uint8_t)(17 * y + 29 * x), "(%d, %d): %d", y, x, out[y * S + x]);
    /* A box halving averages each pair, rounding halves up as PIL's fixed point does. */
    uint8_t pair[2] = {10, 13}, half[1];
    pil_resize(pair, 1, 2, 1, RESAMPLE_BOX, 1, 1, half);
    CHECK_MSG(half[0] == 12, "box of 10 and 13: %d", half[0]);
}

static void test_center_crop_keeps_constants(void) {
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
        adm_center_crop(image, 37, 23, 3, size, out);
        int ok = 1;
        for (int i = 0; i < size * size; i++) ok &= out[3 * i] == 17 && out[3 * i + 1] == 128 && out[3 * i + 2] == 255;
        CHECK_MSG(ok, "a constant image cropped to %d is not constant", size);
        free(out);
    }
}

/* Decodes `path` with `channels`, checking the shape; the pixels (caller frees). */
static uint8_t *decode(const char *path, int channels, int height, int width) {
    decoded_image image;
    char reason[256];
    int status = image_decode_file(path, channels, &image, reason, sizeof(reason));
    CHECK_MSG(status == 0, "%s: %s", path, reason);
    if (status != 0) return calloc((size_t)height * width * channels, 1);
    CHECK(image.height == height && image.width == width && image.channels == channels);
    return image.pixels;
}

static void test_png_decode(const char *dir) {
    char path[4096];
    /* RGB, exact round trip; as gray, PIL's luma. */
    uint8_t rgb[5 * 7 * 3];
    for (int i = 0; i < 5 * 7 * 3; i++) rgb[i] = (uint8_t)(i * 13 + 1);
    snprintf(path, sizeof(path), "%s/rgb.png", dir);
    png_write_file(path, rgb, 5, 7, 3);
    uint8_t *back = decode(path, 3, 5, 7);
    CHECK(memcmp(back, rgb, sizeof(rgb)) == 0);
    free(back);
    back = decode(path, 1, 5, 7);
    for (int i = 0; i < 5 * 7; i++) {
        int luma = (rgb[3 * i] * 19595 + rgb[3 * i + 1] * 38470 + rgb[3 * i + 2] * 7471 + 32768) >> 16;
        CHECK_MSG(back[i] == luma, "pixel %d: %d, expected %d", i, back[i], luma);
    }
    free(back);
    /* Gray read as RGB: three equal channels; as gray: exact. */
    uint8_t gray[3 * 4];
    for (int i = 0; i < 12; i++) gray[i] = (uint8_t)(i * 21);
    snprintf(path, sizeof(path), "%s/gray.png", dir);
    png_write_file(path, gray, 3, 4, 1);
    back = decode(path, 3, 3, 4);
    for (int i = 0; i < 12; i++)
        CHECK(back[3 * i] == gray[i] && back[3 * i + 1] == gray[i] && back[3 * i + 2] == gray[i]);
    free(back);
    back = decode(path, 1, 3, 4);
    CHECK(memcmp(back, gray, sizeof(gray)) == 0);
    free(back);
    /* RGBA read as RGB: alpha dropped, every pixel keeps its stored colour. */
    uint8_t rgba[2 * 2 * 4] = {200, 100, 50, 255, 200, 100, 50, 0, 9, 99, 199, 255, 255, 255, 255, 0};
    snprintf(path, sizeof(path), "%s/rgba.png", dir);
    png_write_file(path, rgba, 2, 2, 4);
    back = decode(path, 3, 2, 2);
    const uint8_t expected[12] = {200, 100, 50, 200, 100, 50, 9, 99, 199, 255, 255, 255};
    CHECK(memcmp(back, expected, sizeof(expected)) == 0);
    free(back);
    /* Not an image: refused with a reason. */
    snprintf(path, sizeof(path), "%s/text.png", dir);
    FILE *text = fopen(path, "w");
    CHECK(text != NULL);
    if (text) {
        fputs("not an image\n", text);
        fclose(text);
    }
    decoded_image image;
    char reason[256] = "";
    CHECK(image_decode_file(path, 3, &image, reason, sizeof(reason)) == -1);
    CHECK_MSG(strstr(reason, "neither a JPEG nor a PNG") != NULL, "reason: %s", reason);
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
    test_center_crop_copies_at_size();
    test_center_crop_halves_with_box();
    test_center_crop_keeps_constants();
    test_png_decode(dir);
    test_image_folder_listing(dir);
    test_fashion_mnist_pad();
    test_synthetic_is_pure();
    char command[4200];
    snprintf(command, sizeof(command), "rm -rf '%s'", dir);
    if (system(command) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return test_finish("test_prepare_units");
}

/* Writes the .npz files that tests/check_npz.py reads back with numpy and
 * zipfile: DIR/plain.npz (zip64 only in the local headers, as np.savez) and
 * DIR/zip64.npz (every size and offset in zip64 fields and zip64 end records,
 * the layout of an archive past 4 GiB, here with a limit of 0), each holding
 * arr_0 (3, 4, 5, 3) uint8 = (7 i + 1) mod 256 written in two pieces, arr_1
 * (3) int64 {5, -2, 2^40} and empty (0,) float32.
 * usage: test_npz_writer DIR */
#include <stdint.h>
#include <stdio.h>

#include "npz_writer.h"

static void write_archive(npz_writer *npz) {
    const int64_t image_shape[4] = {3, 4, 5, 3}, label_shape[1] = {3}, empty_shape[1] = {0};
    uint8_t pixels[3 * 4 * 5 * 3];
    for (int i = 0; i < (int)sizeof(pixels); i++) pixels[i] = (uint8_t)((7 * i + 1) % 256);
    npz_writer_begin_array(npz, "arr_0", "|u1", 1, image_shape, 4);
    npz_writer_write(npz, pixels, 100);
    npz_writer_write(npz, pixels + 100, sizeof(pixels) - 100);
    npz_writer_end_array(npz);
    const int64_t labels[3] = {5, -2, (int64_t)1 << 40};
    npz_writer_begin_array(npz, "arr_1", "<i8", 8, label_shape, 1);
    npz_writer_write(npz, labels, sizeof(labels));
    npz_writer_end_array(npz);
    npz_writer_begin_array(npz, "empty", "<f4", 4, empty_shape, 1);
    npz_writer_end_array(npz);
    npz_writer_finish(npz);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: test_npz_writer DIR\n");
        return 2;
    }
    char path[4096];
    snprintf(path, sizeof(path), "%s/plain.npz", argv[1]);
    write_archive(npz_writer_create(path));
    snprintf(path, sizeof(path), "%s/zip64.npz", argv[1]);
    write_archive(npz_writer_create_with_zip32_limit(path, 0));
    return 0;
}

/* The data set file: a file written by dataset_writer reads back through
 * dataset_info_open with the shape, classes, labels and latent statistics given,
 * and through HDF5's own conversion with the values written (float16 rounded to
 * nearest even, checked against values worked out by hand); shard ranges. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "comm.h"
#include "dataset_file.h"
#include "hdf5_arrays.h"
#include "test_util.h"

static void test_shard_ranges(void) {
    for (int64_t n = 1; n <= 40; n++)
        for (int w = 1; w <= 7 && w <= n; w++) {
            int64_t next = 0, smallest = n, largest = 0;
            for (int r = 0; r < w; r++) {
                int64_t start, rows;
                dataset_shard_range(n, r, w, &start, &rows);
                CHECK(start == next);
                next = start + rows;
                if (rows < smallest) smallest = rows;
                if (rows > largest) largest = rows;
            }
            CHECK(next == n);
            CHECK(largest - smallest <= 1);
        }
}

static void test_images_round_trip(const char *path) {
    enum { N = 5, H = 3, W = 4, C = 2 };
    uint8_t images[N * H * W * C]; /* (N, H, W, C) */
    int32_t labels[N] = {2, 0, 1, 2, 1};
    for (int i = 0; i < N * H * W * C; i++) images[i] = (uint8_t)(i * 7 % 256);
    const char *names[3] = {"cat", "dog", "bird"};
    if (comm_rank() == 0) unlink(path);
    comm_barrier();
    dataset_writer_options o = {.path = path, .kind = DATASET_IMAGES, .element = DATASET_UINT8, .count = N,
                                .channels = C, .height = H, .width = W, .has_labels = 1, .num_classes = 3,
                                .class_names = names};
    dataset_writer *w = dataset_writer_create(&o);
    /* Each rank writes its shard, in two collective calls of uneven sizes (one
     * of them empty on some ranks). */
    int64_t start, rows;
    dataset_shard_range(N, comm_rank(), comm_world_size(), &start, &rows);
    int64_t first = rows / 2;
    dataset_writer_write_images(w, start, first, images + start * H * W * C);
    dataset_writer_write_images(w, start + first, rows - first, images + (start + first) * H * W * C);
    dataset_writer_write_labels(w, start, rows, labels + start);
    dataset_writer_finish(w);
    CHECK(access(path, F_OK) == 0);
    char partial[512];
    snprintf(partial, sizeof partial, "%s.partial", path);
    CHECK(access(partial, F_OK) != 0);

    dataset_info info;
    dataset_info_open(path, &info);
    CHECK(info.kind == DATASET_IMAGES && info.element == DATASET_UINT8);
    CHECK(info.count == N && info.channels == C && info.height == H && info.width == W);
    CHECK(info.sample_elements == C * H * W);
    CHECK(info.has_labels && info.num_classes == 3);
    CHECK(info.chunk_rows == N); /* 1 MiB chunks hold the whole tiny set */
    CHECK(info.class_names && strcmp(info.class_names[2], "bird") == 0);
    int32_t *read_labels = dataset_read_labels(&info);
    for (int i = 0; i < N; i++) CHECK(read_labels[i] == labels[i]);
    free(read_labels);
    dataset_info_free(&info);

    hdf5_array_shape shape;
    int *stored = hdf5_read_ints(path, "/images", &shape);
    CHECK(shape.ndim == 4 && shape.dims[0] == N && shape.dims[1] == H && shape.dims[2] == W && shape.dims[3] == C);
    for (int i = 0; i < N * H * W * C; i++) CHECK(stored[i] == images[i]);
    free(stored);
}

/* float16 values and what they must read back as (HDF5's widening conversion
 * is exact): ties to even, subnormals, overflow to infinity. */
static void test_latents_round_trip(const char *path, dataset_element element) {
    enum { N = 3, C = 2, H = 2, W = 2 };
    float latents[N * C * H * W]; /* (N, C, H, W) */
    for (int i = 0; i < N * C * H * W; i++) latents[i] = (float)(i - 11) * 0.37f;
    /* 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even gives 1. */
    latents[0] = 1.0f + ldexpf(1.0f, -11);
    latents[1] = 1.0f + 3 * ldexpf(1.0f, -11); /* halfway, rounds up to 1 + 2^-9 */
    latents[2] = 70000.0f;                     /* beyond half's range */
    latents[3] = ldexpf(1.0f, -24);            /* the smallest half subnormal */
    latents[4] = ldexpf(1.0f, -26);            /* below half of it: zero */
    latents[5] = -65504.0f;                    /* the largest half */
    latents[6] = 1.0f / 3.0f;                  /* 0x3555 = 0.333251953125 */
    double mean[C] = {0.25, -1.5}, std[C] = {2.0, 0.5};
    comm_barrier(); /* every rank has read the previous file */
    if (comm_rank() == 0) unlink(path);
    comm_barrier();
    dataset_writer_options o = {.path = path, .kind = DATASET_LATENTS, .element = element, .count = N,
                                .channels = C, .height = H, .width = W, .autoencoder = "test"};
    dataset_writer *w = dataset_writer_create(&o);
    int64_t start, rows;
    dataset_shard_range(N, comm_rank(), comm_world_size(), &start, &rows);
    dataset_writer_write_latents(w, start, rows, latents + start * C * H * W);
    dataset_writer_set_latent_stats(w, mean, std);
    dataset_writer_finish(w);

    dataset_info info;
    dataset_info_open(path, &info);
    CHECK(info.kind == DATASET_LATENTS && info.element == element);
    CHECK(info.count == N && info.channels == C && info.height == H && info.width == W);
    CHECK(!info.has_labels && info.num_classes == 0 && info.class_names == NULL);
    CHECK(info.latent_mean[1] == -1.5 && info.latent_std[0] == 2.0);
    CHECK(strcmp(info.autoencoder, "test") == 0);
    dataset_info_free(&info);

    hdf5_array_shape shape;
    float *stored = hdf5_read_floats(path, "/latents", &shape);
    CHECK(shape.count == N * C * H * W);
    if (element == DATASET_FLOAT32) {
        for (int i = 0; i < N * C * H * W; i++) CHECK(stored[i] == latents[i]);
    } else {
        CHECK(stored[0] == 1.0f);
        CHECK(stored[1] == 1.0f + ldexpf(1.0f, -9));
        CHECK(isinf(stored[2]) && stored[2] > 0);
        CHECK(stored[3] == ldexpf(1.0f, -24));
        CHECK(stored[4] == 0.0f);
        CHECK(stored[5] == -65504.0f);
        CHECK(stored[6] == 0.333251953125f);
        /* The rest: within half's relative precision. */
        for (int i = 7; i < N * C * H * W; i++) CHECK_CLOSE(stored[i], latents[i], 1e-3, 1e-3);
    }
    free(stored);
}

int main(int argc, char **argv) {
    comm_init(&argc, &argv);
    test_shard_ranges();
    char path[256];
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    /* One name for every rank: the writer is collective. */
    int id = (int)getpid();
    comm_broadcast(&id, sizeof id, 0);
    snprintf(path, sizeof path, "%s/test_dataset_file_%d.h5", tmp, id);
    test_images_round_trip(path);
    test_latents_round_trip(path, DATASET_FLOAT32);
    test_latents_round_trip(path, DATASET_FLOAT16);
    comm_barrier();
    if (comm_rank() == 0) unlink(path);
    comm_finalize();
    return test_finish("test_dataset_file");
}

/* Tests of comm/comm.h, run as one rank without mpirun and as 3 and 4 ranks
 * under mpirun (tests/comm_tests.cmake). Every rank checks its own results and
 * exits 1 on a failure, which fails the mpirun.
 *
 * - Before comm_init every function gives the single-rank answer.
 * - Layout: rank and world size agree with MPI's; all ranks run on this host,
 *   so the local rank and size equal the global ones.
 * - comm_allreduce_mean: rank r's input is a pure function of (r, i), so each
 *   rank computes the expected result of every rank's inputs on its own: the sum
 *   in double in rank order, divided by W, rounded to float. The result must
 *   equal it bit for bit (on every rank), and a hash of the result must be the
 *   same on every rank (checked with raw MPI, not with comm itself). Counts: 0,
 *   1, 2 (fewer elements than ranks), odd ones, and three chunks and a tail
 *   (the reduction works on chunks of 2^20 elements). One case cancels 2^24
 *   against -2^24 across ranks, where a float sum in rank order (or in any order
 *   an MPI algorithm might choose) gives a different mean from the exact one.
 * - comm_allreduce_sum_double: the same against a double sum in rank order.
 * - comm_broadcast from every root, of 0, 1 and ~1 MB bytes.
 * - comm_any / comm_all with a flag set on one rank, on all, on none.
 * - comm_barrier: rank r sleeps 100*r ms, then writes a marker file and enters
 *   the barrier; after it every rank must see every marker, which a barrier that
 *   returned early would not (rank 0 would look before the others had written). */
#include "comm.h"
#include "rng.h"
#include "test_util.h"

#include <mpi.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int rank, world;

static uint64_t fnv1a(const void *data, size_t bytes) {
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < bytes; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

/* Every rank's hash of the same result must be equal (raw MPI, so that a comm
 * bug cannot hide itself). */
static void check_same_on_every_rank(const void *data, size_t bytes, const char *what) {
    uint64_t mine = fnv1a(data, bytes);
    uint64_t *all = malloc(sizeof(uint64_t) * (size_t)world);
    if (world > 1)
        MPI_Allgather(&mine, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, MPI_COMM_WORLD);
    else
        all[0] = mine;
    for (int r = 0; r < world; r++)
        CHECK_MSG(all[r] == mine, "%s: rank %d's result differs from rank %d's", what, r, rank);
    free(all);
}

/* Rank r's input element i: a 24-bit mantissa scaled by 2^-12 .. 2^19, of
 * either sign, so that sums have rounding to get wrong. */
static float mean_input(int r, int64_t i) {
    uint64_t h = rng_hash((uint64_t)r + 1, (uint64_t)i);
    float mantissa = (float)(h >> 40) * (1.0f / 16777216.0f) - 0.5f;
    return ldexpf(mantissa, (int)(h & 31) - 12);
}

static double sum_input(int r, int64_t i) {
    uint64_t h = rng_hash((uint64_t)r + 1000, (uint64_t)i);
    double mantissa = (double)(h >> 11) * (1.0 / 9007199254740992.0) - 0.5;
    return ldexp(mantissa, (int)(h & 127) - 64);
}

static void test_before_init(void) {
    CHECK(comm_rank() == 0 && comm_world_size() == 1);
    CHECK(comm_local_rank() == 0 && comm_local_size() == 1);
    float x[3] = {1.5f, -2.25f, 3.0f};
    comm_allreduce_mean(x, 3);
    CHECK(x[0] == 1.5f && x[1] == -2.25f && x[2] == 3.0f);
    double d[2] = {0.1, -7.0};
    comm_allreduce_sum_double(d, 2);
    CHECK(d[0] == 0.1 && d[1] == -7.0);
    char bytes[4] = "abc";
    comm_broadcast(bytes, sizeof bytes, 0);
    CHECK(strcmp(bytes, "abc") == 0);
    comm_barrier();
    CHECK(comm_any(1) == 1 && comm_any(0) == 0 && comm_all(7) == 1 && comm_all(0) == 0);
}

static void test_layout(void) {
    int mpi_rank = -1, mpi_size = -1;
    MPI_Comm_rank(MPI_COMM_WORLD, &mpi_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &mpi_size);
    CHECK(comm_rank() == mpi_rank && comm_world_size() == mpi_size);
    CHECK(comm_rank() >= 0 && comm_rank() < comm_world_size());
    /* ctest starts every rank on this host. */
    CHECK_MSG(comm_local_size() == comm_world_size(), "local size %d, world %d", comm_local_size(), comm_world_size());
    CHECK_MSG(comm_local_rank() == comm_rank(), "local rank %d, rank %d", comm_local_rank(), comm_rank());
}

static void test_mean_count(int64_t count) {
    float *x = malloc(sizeof(float) * (size_t)(count ? count : 1));
    float *expected = malloc(sizeof(float) * (size_t)(count ? count : 1));
    for (int64_t i = 0; i < count; i++) {
        x[i] = mean_input(rank, i);
        double sum = 0.0;
        for (int r = 0; r < world; r++) sum += (double)mean_input(r, i);
        expected[i] = (float)(sum / world);
    }
    comm_allreduce_mean(x, count);
    int64_t wrong = 0, first_wrong = -1;
    for (int64_t i = 0; i < count; i++)
        if (memcmp(&x[i], &expected[i], sizeof(float)) != 0) {
            if (first_wrong < 0) first_wrong = i;
            wrong++;
        }
    CHECK_MSG(wrong == 0, "count %lld: %lld elements differ from the rank-order double mean, first at %lld",
              (long long)count, (long long)wrong, (long long)first_wrong);
    char what[64];
    snprintf(what, sizeof what, "mean of %lld floats", (long long)count);
    check_same_on_every_rank(x, sizeof(float) * (size_t)count, what);
    free(x);
    free(expected);
}

/* 2^24 on rank 0, -2^24 on the last rank, 1 on the others: in float, 2^24 + 1
 * rounds back to 2^24, so a float sum in rank order gives 0 and other orders
 * other values; the exact mean is (W - 2) / W. */
static void test_mean_cancellation(void) {
    if (world < 3) return;
    enum { N = 5 };
    float x[N];
    float mine = rank == 0 ? 16777216.0f : rank == world - 1 ? -16777216.0f : 1.0f;
    for (int i = 0; i < N; i++) x[i] = mine * (float)(i + 1);
    comm_allreduce_mean(x, N);
    for (int i = 0; i < N; i++)
        CHECK_MSG(x[i] == (float)((double)(world - 2) * (i + 1) / world), "element %d: %.9g, expected %.9g", i,
                  x[i], (double)(world - 2) * (i + 1) / world);
}

static void test_sum_double(int64_t count) {
    double *x = malloc(sizeof(double) * (size_t)(count ? count : 1));
    double *expected = malloc(sizeof(double) * (size_t)(count ? count : 1));
    for (int64_t i = 0; i < count; i++) {
        x[i] = sum_input(rank, i);
        expected[i] = 0.0;
        for (int r = 0; r < world; r++) expected[i] += sum_input(r, i);
    }
    comm_allreduce_sum_double(x, count);
    int64_t wrong = 0;
    for (int64_t i = 0; i < count; i++) wrong += memcmp(&x[i], &expected[i], sizeof(double)) != 0;
    CHECK_MSG(wrong == 0, "count %lld: %lld sums differ from the rank-order sum", (long long)count, (long long)wrong);
    char what[64];
    snprintf(what, sizeof what, "sum of %lld doubles", (long long)count);
    check_same_on_every_rank(x, sizeof(double) * (size_t)count, what);
    free(x);
    free(expected);
}

static unsigned char pattern(int root, size_t i) { return (unsigned char)(rng_hash((uint64_t)root, i) >> 56); }

static void test_broadcast(void) {
    const size_t sizes[] = {0, 1, 1000003};
    for (int root = 0; root < world; root++)
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            size_t n = sizes[s];
            unsigned char *buf = malloc(n + 1);
            for (size_t i = 0; i <= n; i++) buf[i] = rank == root ? pattern(root, i) : (unsigned char)(0xa5 ^ rank);
            comm_broadcast(buf, n, root);
            size_t wrong = 0;
            for (size_t i = 0; i < n; i++) wrong += buf[i] != pattern(root, i);
            CHECK_MSG(wrong == 0, "broadcast of %zu bytes from rank %d: %zu bytes differ on rank %d", n, root, wrong,
                      rank);
            /* Nothing past the end is written. */
            CHECK(buf[n] == (rank == root ? pattern(root, n) : (unsigned char)(0xa5 ^ rank)));
            free(buf);
        }
}

static void test_flags(void) {
    for (int chosen = 0; chosen < world; chosen++) {
        int flag = rank == chosen;
        CHECK(comm_any(flag) == 1);
        CHECK(comm_all(flag) == (world == 1));
        CHECK(comm_any(!flag) == (world > 1));
        CHECK(comm_all(!flag) == 0);
    }
    CHECK(comm_any(0) == 0);
    CHECK(comm_all(rank + 5) == 1); /* any non-zero value is "set"; the answer is 0 or 1 */
    CHECK(comm_any(-3) == 1);
}

static void test_barrier(void) {
    char dir[64] = "/tmp/ldm_test_comm_XXXXXX";
    if (rank == 0 && !mkdtemp(dir)) {
        CHECK_MSG(0, "mkdtemp failed");
        dir[0] = '\0';
    }
    if (world > 1) MPI_Bcast(dir, sizeof dir, MPI_CHAR, 0, MPI_COMM_WORLD);
    if (!dir[0]) return;
    char path[128];
    struct timespec delay = {0, 100000000L * rank};
    nanosleep(&delay, NULL);
    snprintf(path, sizeof path, "%s/arrived.%d", dir, rank);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) fclose(f);
    comm_barrier();
    int missing = 0;
    for (int r = 0; r < world; r++) {
        snprintf(path, sizeof path, "%s/arrived.%d", dir, r);
        struct stat st;
        missing += stat(path, &st) != 0;
    }
    CHECK_MSG(missing == 0, "rank %d left the barrier before %d ranks arrived", rank, missing);
    comm_barrier(); /* everyone has looked before the files go */
    snprintf(path, sizeof path, "%s/arrived.%d", dir, rank);
    unlink(path);
    comm_barrier();
    if (rank == 0) rmdir(dir);
}

/* Each rank's three ints land at root in rank order; other ranks' buffers are untouched. */
static void test_gather(void) {
    for (int root = 0; root < world; root++) {
        int mine[3] = {rank * 10 + 1, rank * 10 + 2, -rank};
        int *all = malloc(sizeof(int) * 3 * (size_t)world);
        for (int i = 0; i < 3 * world; i++) all[i] = 12345;
        comm_gather(mine, sizeof mine, all, root);
        for (int r = 0; r < world; r++) {
            if (rank == root) {
                CHECK(all[3 * r] == r * 10 + 1 && all[3 * r + 1] == r * 10 + 2 && all[3 * r + 2] == -r);
            } else {
                CHECK(all[3 * r] == 12345);
            }
        }
        free(all);
    }
}

int main(int argc, char **argv) {
    test_before_init();
    comm_init(&argc, &argv);
    rank = comm_rank();
    world = comm_world_size();

    test_layout();
    const int64_t chunk = (int64_t)1 << 20;
    const int64_t counts[] = {0, 1, 2, 3, 5, 997, 65536 + 3, chunk, 3 * chunk + 7};
    for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) test_mean_count(counts[c]);
    test_mean_cancellation();
    const int64_t double_counts[] = {0, 1, 2, 17, chunk + 5};
    for (size_t c = 0; c < sizeof double_counts / sizeof double_counts[0]; c++) test_sum_double(double_counts[c]);
    test_broadcast();
    test_flags();
    test_gather();
    test_barrier();

    char name[32];
    snprintf(name, sizeof name, "test_comm rank %d/%d", rank, world);
    int status = test_finish(name);
    comm_finalize();
    return status;
}

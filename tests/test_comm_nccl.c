/* Tests of comm/comm_nccl.h on GPUs: by ctest as one rank, and by hand as two
 * ranks on a host with two GPUs (mpirun -np 2 build/tests/test_comm_nccl).
 *
 * - comm_nccl_allreduce_mean: rank r's element i is an integer in [-1000, 1000];
 *   with W a power of two, NCCL's average (each value times 1/W, then summed in
 *   whatever order) is exact in fp32, so it must equal (sum over r) / W bit for
 *   bit. Counts 1, 1000 and 2^20 + 3, from an aligned start and from buffer + 1
 *   (the element before the start must be left alone), on the default stream.
 * - buckets: an arena of 1000003 floats (W <= 2: random full mantissas, whose
 *   mean is one addition, so exact in any order; else the integers above),
 *   averaged in 5 uneven buckets (7, 249994, 1, 649998 and 99993 floats)
 *   launched last first, as backward does, with a gap of 10 floats in no bucket.
 *   The compute stream (non-blocking) first stalls 50 ms in a host function and
 *   then writes the arena, which held NaN: an all-reduce that did not wait for
 *   the compute stream would read the NaN. The averaged slices must equal the
 *   whole-buffer comm_nccl_allreduce_mean bit for bit and the CPU's expected
 *   mean, the gap its inputs; twice, so that the bucket events are reused.
 *   Both results must be the same bits on every rank (a hash, with MPI).
 * - time limits: rank 0 runs this program again with --timeout-child (one
 *   rank, no MPI), which creates a communicator, stalls its compute stream for
 *   2 s with a host function and launches one bucket behind it, so the
 *   all-reduce cannot complete within a short limit whatever the machine.
 *   Each child must end in well under a minute with exactly one error line and
 *   the status given; the NCCL ones through _exit (an exit() handler the child
 *   registers must not run):
 *   . LDM_NCCL_TIMEOUT_S=0.2, status 1:
 *       ldm: error: rank 0 on HOST: NCCL all-reduce of 1000 floats (gradient bucket 0, at offset 0) did not complete in 0.2 s (...)
 *     Init (about 0.5 s on a GPU; made to take 0.5 s in the emulation) is not
 *     held to that limit but to its own (LDM_NCCL_INIT_TIMEOUT_S).
 *   . LDM_NCCL_INIT_TIMEOUT_S=1e-06, status 1: "NCCL init of 1 rank (GPU 0)
 *     did not complete in 1e-06 s" (no real init is that quick; the emulation
 *     makes init never complete).
 *   . LDM_NCCL_INIT_TIMEOUT_S=soon, status 2: the variable named, and what it takes.
 *   (The CPU emulation, cmake -DLDM_CUDA=EMULATE, runs the stalled stream to
 *   its end before the all-reduce starts, so it stalls the all-reduce itself
 *   instead, LDM_CUDA_EMULATION_STALL_NCCL, and slows init with
 *   LDM_CUDA_EMULATION_NCCL_INIT_S: tests/cuda_emulation/cuda_emulation_nccl.c.)
 * An NCCL error proper (rather than a stuck collective) cannot be caused on
 * purpose here; it goes through the same end_job path as the time limit.
 *
 * Skips (exit 77) in a CPU build, without a GPU, and when this host has more
 * ranks than GPUs; fails instead with LDM_REQUIRE_GPU=1 (test_util.h). */
#include <stdio.h>

#include "device.h"
#include "test_util.h"

#ifdef LDM_HAVE_CUDA
#include <cuda_runtime_api.h>
#include <mpi.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "comm.h"
#include "comm_nccl.h"
#include "ops_cuda.h"
#include "rng.h"

static int rank, world;

/* cudaSuccess or the test ends: the calls the test makes itself. */
static void cuda_must(cudaError_t result, const char *call) {
    if (result != cudaSuccess) {
        fprintf(stderr, "test_comm_nccl: %s failed: %s\n", call, cudaGetErrorString(result));
        exit(1);
    }
}
#define CUDA_MUST(call) cuda_must((call), #call)

/* Every rank's copy of a result must be the same bits (checked with MPI
 * directly, on a hash). */
static void check_same_on_every_rank(const float *data, size_t count, const char *what) {
    uint64_t mine = 0xcbf29ce484222325ull;
    const unsigned char *bytes = (const unsigned char *)data;
    for (size_t i = 0; i < count * sizeof(float); i++) mine = (mine ^ bytes[i]) * 0x100000001b3ull;
    uint64_t *all = malloc(sizeof(uint64_t) * (size_t)world);
    MPI_Allgather(&mine, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, MPI_COMM_WORLD);
    for (int r = 0; r < world; r++) CHECK_MSG(all[r] == mine, "%s: rank %d's result differs from rank %d's", what, r, rank);
    free(all);
}

static int power_of_two(int n) { return n > 0 && (n & (n - 1)) == 0; }

/* An integer in [-1000, 1000]: sums of W of them, and their quotients by a
 * power of two, are exact in fp32. */
static float integer_input(int r, size_t i) {
    return (float)((int)(rng_hash((uint64_t)r + 1, (uint64_t)i) % 2001) - 1000);
}

/* A full 24-bit mantissa of either sign, scaled by 2^-8 .. 2^7: the sum of two
 * is exact in double, so round((x_0 + x_1) / 2) is the one right answer. */
static float random_input(int r, size_t i) {
    uint64_t h = rng_hash((uint64_t)r + 100, (uint64_t)i);
    float mantissa = (float)(h >> 40) * (1.0f / 16777216.0f) - 0.5f;
    return ldexpf(mantissa, (int)(h & 15) - 8);
}

static float bucket_input(int r, size_t i) { return world <= 2 ? random_input(r, i) : integer_input(r, i); }

/* The mean over every rank's input, in double, rounded once. */
static float expected_mean(float (*input)(int, size_t), size_t i) {
    double sum = 0.0;
    for (int r = 0; r < world; r++) sum += (double)input(r, i);
    return (float)(sum / world);
}

/* Exact where the test's inputs make NCCL's average exact, else to rounding. */
static int mean_matches(float got, float expected, int exact) {
    if (exact) return memcmp(&got, &expected, sizeof got) == 0;
    return fabsf(got - expected) <= 1e-6f * fabsf(expected) + 1e-30f;
}

static void test_mean(comm_nccl *c, size_t count, size_t start) {
    const size_t total = start + count, bytes = total * sizeof(float);
    float *host = malloc(bytes), *expected = malloc(bytes);
    for (size_t i = 0; i < total; i++) {
        host[i] = integer_input(rank, i - start);
        expected[i] = i < start ? host[i] : expected_mean(integer_input, i - start);
    }
    float *device = cuda_buffer_alloc(bytes);
    cuda_copy_to_device(device, host, bytes);
    comm_nccl_allreduce_mean(c, device + start, count, NULL);
    cuda_copy_to_host(host, device, bytes);
    size_t wrong = 0, first = 0;
    for (size_t i = 0; i < total; i++)
        if (!mean_matches(host[i], expected[i], power_of_two(world) || i < start) && wrong++ == 0) first = i;
    CHECK_MSG(wrong == 0, "mean of %zu floats from +%zu: %zu wrong, first at %zu: %.9g, expected %.9g", count, start,
              wrong, first, wrong ? host[first] : 0.0f, wrong ? expected[first] : 0.0f);
    cuda_buffer_free(device);
    free(host);
    free(expected);
}

static void CUDART_CB stall(void *milliseconds) {
    const long ms = *(const long *)milliseconds;
    struct timespec nap = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&nap, NULL);
}

enum { ARENA = 1000003, BUCKETS = 5, GAP_START = 900000, GAP_END = 900010 };
/* (offset, count), in launch order: from the end of the arena to its start. */
static const size_t bucket_bounds[BUCKETS][2] = {
    {GAP_END, ARENA - GAP_END}, {250002, GAP_START - 250002}, {250001, 1}, {7, 250001 - 7}, {0, 7}};

static void test_buckets(comm_nccl *c) {
    const size_t bytes = (size_t)ARENA * sizeof(float);
    float *inputs = malloc(bytes), *whole = malloc(bytes), *bucketed = malloc(bytes);
    for (size_t i = 0; i < ARENA; i++) inputs[i] = bucket_input(rank, i);
    float *d_whole = cuda_buffer_alloc(bytes), *d_staging = cuda_buffer_alloc(bytes), *d_arena = cuda_buffer_alloc(bytes);
    cuda_copy_to_device(d_whole, inputs, bytes);
    cuda_copy_to_device(d_staging, inputs, bytes);
    comm_nccl_allreduce_mean(c, d_whole, ARENA, NULL);
    cuda_copy_to_host(whole, d_whole, bytes);
    check_same_on_every_rank(whole, ARENA, "whole-buffer mean");

    cudaStream_t compute;
    CUDA_MUST(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking));
    comm_nccl_buckets_layout(c, d_arena, ARENA, BUCKETS, compute);
    const int exact = power_of_two(world) || world <= 2;
    static long stall_ms = 50;
    for (int step = 0; step < 2; step++) {
        cuda_buffer_fill_bytes(d_arena, 0xff, bytes); /* NaN */
        /* "Backward": the gradients are written late on the compute stream. */
        CUDA_MUST(cudaLaunchHostFunc(compute, stall, &stall_ms));
        CUDA_MUST(cudaMemcpyAsync(d_arena, d_staging, bytes, cudaMemcpyDeviceToDevice, compute));
        for (int b = 0; b < BUCKETS; b++) comm_nccl_bucket_ready(c, bucket_bounds[b][0], bucket_bounds[b][1]);
        comm_nccl_wait_all(c, compute);
        CUDA_MUST(cudaStreamSynchronize(compute));
        cuda_copy_to_host(bucketed, d_arena, bytes);
        /* (the gap holds each rank's own inputs) */
        check_same_on_every_rank(bucketed, GAP_START, "bucketed mean before the gap");
        check_same_on_every_rank(bucketed + GAP_END, ARENA - GAP_END, "bucketed mean after the gap");

        size_t wrong_whole = 0, wrong_mean = 0, wrong_gap = 0, first = 0;
        for (size_t i = 0; i < ARENA; i++) {
            if (i >= GAP_START && i < GAP_END) {
                wrong_gap += memcmp(&bucketed[i], &inputs[i], sizeof(float)) != 0;
                continue;
            }
            if (exact && memcmp(&bucketed[i], &whole[i], sizeof(float)) != 0 && wrong_whole++ == 0) first = i;
            wrong_mean += !mean_matches(bucketed[i], expected_mean(bucket_input, i), exact);
        }
        CHECK_MSG(wrong_whole == 0, "step %d: %zu bucketed means differ from the whole-buffer one, first at %zu: %.9g vs %.9g",
                  step, wrong_whole, first, bucketed[first], whole[first]);
        CHECK_MSG(wrong_mean == 0, "step %d: %zu bucketed means differ from the CPU's", step, wrong_mean);
        CHECK_MSG(wrong_gap == 0, "step %d: %zu floats outside every bucket changed", step, wrong_gap);
    }
    CUDA_MUST(cudaStreamDestroy(compute));
    cuda_buffer_free(d_whole);
    cuda_buffer_free(d_staging);
    cuda_buffer_free(d_arena);
    free(inputs);
    free(whole);
    free(bucketed);
}

#define EXIT_HANDLERS_RAN "test_comm_nccl: the child's exit() handlers ran"

static void report_exit_handlers(void) { fprintf(stderr, EXIT_HANDLERS_RAN "\n"); }

/* The child of test_time_limits: one rank, no MPI; ends through a time limit. */
static int timeout_child(void) {
    atexit(report_exit_handlers);
    comm_nccl *c = comm_nccl_create();
    enum { COUNT = 1000 };
    float *arena = cuda_buffer_alloc(COUNT * sizeof(float));
    cuda_buffer_fill_bytes(arena, 0, COUNT * sizeof(float));
    cudaStream_t compute;
    CUDA_MUST(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking));
    comm_nccl_buckets_layout(c, arena, COUNT, 1, compute);
    static long stall_ms = 2000;
    CUDA_MUST(cudaLaunchHostFunc(compute, stall, &stall_ms));
    comm_nccl_bucket_ready(c, 0, COUNT);
    comm_nccl_wait_all(c, compute);
    fprintf(stderr, "test_comm_nccl: the stalled all-reduce was not stopped by the time limit\n");
    return 3;
}

static double wall_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Runs this program again with --timeout-child under the environment
 * assignments `env`: it must end with `status` in well under a minute, with
 * exactly one error line, which contains each of `expected` (NULL-ended), and
 * (for an NCCL abort) without exit()'s handlers. */
static void expect_child(const char *env, int status, int without_teardown, const char *const *expected) {
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    CHECK(n > 0);
    if (n <= 0) return;
    self[n] = '\0';
    char command[4400];
    snprintf(command, sizeof command, "%s '%s' --timeout-child 2>&1", env, self);
    double started = wall_s();
    FILE *pipe = popen(command, "r");
    CHECK(pipe != NULL);
    if (!pipe) return;
    static char output[65536];
    size_t got = fread(output, 1, sizeof output - 1, pipe);
    output[got] = '\0';
    int child_status = pclose(pipe);
    double elapsed = wall_s() - started;
    fprintf(stderr, "time-limit child (%s; %.1f s):\n%s", env, elapsed, output);
    CHECK_MSG(child_status != -1 && WIFEXITED(child_status) && WEXITSTATUS(child_status) == status,
              "%s: child status %d, expected exit %d", env, child_status, status);
    const char *text = output;
    for (const char *const *e = expected; *e; e++) CHECK_STR_CONTAINS(text, *e);
    int lines = 0;
    for (const char *p = text; (p = strstr(p, "ldm: error:")) != NULL; p++) lines++;
    CHECK_MSG(lines == 1, "%s: %d error lines", env, lines);
    if (without_teardown) CHECK_MSG(strstr(text, EXIT_HANDLERS_RAN) == NULL, "%s: ended through exit()", env);
    CHECK_MSG(elapsed < 60.0, "%s: the child took %.1f s to end", env, elapsed);
}

static void test_time_limits(void) {
#ifdef LDM_CUDA_EMULATION
    /* The emulation runs the stalled stream to its end before the all-reduce
     * starts; it stalls the all-reduce itself instead, and takes a real init's
     * time (tests/cuda_emulation/cuda_emulation_nccl.c). */
    const char *stall = "LDM_CUDA_EMULATION_STALL_NCCL=1 LDM_CUDA_EMULATION_NCCL_INIT_S=0.5 ";
    const char *stall_init = "LDM_CUDA_EMULATION_NCCL_INIT_S=stall ";
#else
    const char *stall = "", *stall_init = "";
#endif
    char env[256];
    snprintf(env, sizeof env, "%sLDM_NCCL_TIMEOUT_S=0.2", stall);
    const char *const in_collective[] = {
        "ldm: error: rank 0 on ",
        ": NCCL all-reduce of 1000 floats (gradient bucket 0, at offset 0) did not complete in 0.2 s", NULL};
    expect_child(env, 1, 1, in_collective);

    snprintf(env, sizeof env, "%sLDM_NCCL_INIT_TIMEOUT_S=1e-06", stall_init);
    const char *const in_init[] = {"ldm: error: rank 0 on ", ": NCCL init of 1 rank (GPU 0) did not complete in 1e-06 s",
                                   "LDM_NCCL_INIT_TIMEOUT_S sets the limit", NULL};
    expect_child(env, 1, 1, in_init);

    const char *const bad_value[] = {
        "ldm: error: LDM_NCCL_INIT_TIMEOUT_S=soon: expected a time limit in seconds, above 0", NULL};
    expect_child("LDM_NCCL_INIT_TIMEOUT_S=soon", 2, 0, bad_value);
}

static int run(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--timeout-child") == 0) return timeout_child();
    comm_init(&argc, &argv);
    rank = comm_rank();
    world = comm_world_size();
    if (comm_local_size() > device_cuda_count()) {
        char why[96];
        snprintf(why, sizeof why, "%d ranks on this host and %d GPUs (one each needed)", comm_local_size(),
                 device_cuda_count());
        /* rank 0 says why; every rank ends with the same status */
        int status = rank == 0 ? test_gpu_unavailable("test_comm_nccl", why) : test_gpu_required() ? 1 : 77;
        comm_finalize();
        return status;
    }
    comm_nccl *c = comm_nccl_create();
    CHECK(comm_nccl_device(c) == comm_local_rank());
    CHECK(comm_nccl_stream(c) != NULL);
    const size_t counts[] = {1, 1000, ((size_t)1 << 20) + 3};
    for (size_t k = 0; k < sizeof counts / sizeof counts[0]; k++) {
        test_mean(c, counts[k], 0);
        test_mean(c, counts[k], 1);
    }
    test_buckets(c);
    comm_nccl_destroy(c);
    if (rank == 0) test_time_limits();

    char name[48];
    snprintf(name, sizeof name, "test_comm_nccl rank %d/%d", rank, world);
    int status = test_finish(name);
    comm_finalize();
    return status;
}
#endif

int main(int argc, char **argv) {
    const char *missing = test_gpu_missing();
    if (missing) return test_gpu_unavailable("test_comm_nccl", missing);
#ifdef LDM_HAVE_CUDA
    return run(argc, argv);
#else
    (void)argc;
    (void)argv;
    return 77;
#endif
}

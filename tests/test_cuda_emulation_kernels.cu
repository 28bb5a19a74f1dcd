/* Tests of the CUDA emulation's kernel scheduler and runtime
 * (tests/cuda_emulation/), built only with cmake -DLDM_CUDA=EMULATE, as C++:
 * - a block reduction through shared memory, __syncthreads and warp shuffles
 *   (cuda_device.cuh's block_sum) gives the exact sum in every block, for
 *   blocks of 32 to 1024 threads;
 * - __shfl_down_sync returns lane + delta's value, or the lane's own past the
 *   warp (or the width's segment);
 * - a kernel launched twice (the second time without coroutines) writes every
 *   element with the right coordinates, and a bad configuration is the
 *   launch's error, not a crash;
 * - what a GPU would punish ends the program with one line naming it: threads
 *   of a block at __syncthreads that others finished without; a kernel that
 *   meets a barrier only in a later launch; a copy whose kind contradicts its
 *   pointers; a copy past the end of an allocation. Each in a child process
 *   (fork), whose exit status 1 and line are checked. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cuda_device.cuh"

static int failures;

#define CHECK(condition, ...)                                                                                     \
    do {                                                                                                          \
        if (!(condition)) {                                                                                       \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                                  \
            fprintf(stderr, __VA_ARGS__);                                                                         \
            fprintf(stderr, "\n");                                                                                \
            failures++;                                                                                           \
        }                                                                                                         \
    } while (0)

/* sums[block] = the block's sum of (block * 100000 + linear thread id). */
__global__ static void block_sum_kernel(long long *sums) {
    const unsigned int linear = threadIdx.x + blockDim.x * threadIdx.y;
    long long mine = (long long)blockIdx.x * 100000 + linear;
    long long total = block_sum(mine);
    if (linear == 0) sums[blockIdx.x] = total;
}

static void test_block_sum(void) {
    const unsigned int shapes[][2] = {{32, 1}, {64, 1}, {256, 1}, {1024, 1}, {96, 1}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const unsigned int blocks = 5, threads = shapes[s][0] * shapes[s][1];
        long long *sums = NULL;
        CUDA_CHECK(cudaMalloc(&sums, blocks * sizeof(long long)));
        CUDA_LAUNCH_KERNEL(block_sum_kernel, blocks, dim3(shapes[s][0], shapes[s][1]), NULL, sums);
        CUDA_CHECK_LAUNCH("block_sum_kernel");
        long long host[5];
        CUDA_CHECK(cudaMemcpy(host, sums, sizeof host, cudaMemcpyDeviceToHost));
        for (unsigned int b = 0; b < blocks; b++) {
            long long expected = (long long)b * 100000 * threads + (long long)threads * (threads - 1) / 2;
            CHECK(host[b] == expected, "block_sum %ux%u block %u: %lld, expected %lld", shapes[s][0], shapes[s][1], b,
                  host[b], expected);
        }
        CUDA_CHECK(cudaFree(sums));
    }
}

/* out[i] = the value of __shfl_down_sync(all, i * 10, delta, width) in thread i. */
__global__ static void shuffle_kernel(int *out, unsigned int delta, int width) {
    out[threadIdx.x] = __shfl_down_sync(0xffffffffu, (int)threadIdx.x * 10, delta, width);
}

static void test_shuffle(void) {
    const unsigned int deltas[] = {1, 5, 16};
    const int widths[] = {32, 8};
    int *out = NULL;
    CUDA_CHECK(cudaMalloc(&out, 64 * sizeof(int)));
    for (int w = 0; w < 2; w++)
        for (int d = 0; d < 3; d++) {
            CUDA_LAUNCH_KERNEL(shuffle_kernel, 1, 64, NULL, out, deltas[d], widths[w]);
            int host[64];
            CUDA_CHECK(cudaMemcpy(host, out, sizeof host, cudaMemcpyDeviceToHost));
            for (int i = 0; i < 64; i++) {
                int lane = i % 32, source = lane + (int)deltas[d];
                int inside = source / widths[w] == lane / widths[w] && source < 32;
                int expected = inside ? (i + (int)deltas[d]) * 10 : i * 10;
                CHECK(host[i] == expected, "shuffle delta %u width %d thread %d: %d, expected %d", deltas[d],
                      widths[w], i, host[i], expected);
            }
        }
    CUDA_CHECK(cudaFree(out));
}

/* out[i] = i * 3 + 1 over a 2-D grid of 1-D blocks, grid-strided as the elementwise kernels are. */
__global__ static void coordinates_kernel(int *out, size_t n) {
    const size_t block = (size_t)blockIdx.y * gridDim.x + blockIdx.x;
    for (size_t i = block * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * gridDim.y * blockDim.x)
        out[i] = (int)i * 3 + 1;
}

static void test_coordinates_and_configuration(void) {
    const size_t n = 10007;
    int *out = NULL;
    CUDA_CHECK(cudaMalloc(&out, n * sizeof(int)));
    for (int launch = 0; launch < 2; launch++) { /* the second runs without coroutines */
        CUDA_CHECK(cudaMemset(out, 0, n * sizeof(int)));
        CUDA_LAUNCH_KERNEL(coordinates_kernel, dim3(7, 3), 96, NULL, out, n);
        CUDA_CHECK_LAUNCH("coordinates_kernel");
        int *host = (int *)malloc(n * sizeof(int));
        CUDA_CHECK(cudaMemcpy(host, out, n * sizeof(int), cudaMemcpyDeviceToHost));
        int wrong = 0;
        for (size_t i = 0; i < n; i++) wrong += host[i] != (int)i * 3 + 1;
        CHECK(wrong == 0, "launch %d: %d elements wrong", launch, wrong);
        free(host);
    }
    CUDA_LAUNCH_KERNEL(coordinates_kernel, 1, 2048, NULL, out, n); /* more threads than a block holds */
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration, "a block of 2048 threads was not refused");
    CHECK(cudaGetLastError() == cudaSuccess, "the launch error is not cleared by reading it");
    CUDA_CHECK(cudaFree(out));
}

/* Half the block returns; the rest waits at __syncthreads. */
__global__ static void divergent_barrier_kernel(int *out) {
    if (threadIdx.x < 16) return;
    __syncthreads();
    out[threadIdx.x] = 1;
}

/* Meets __syncthreads only when asked. */
__global__ static void sometimes_barrier_kernel(int *out, int barrier) {
    if (barrier) __syncthreads();
    out[threadIdx.x] = 1;
}

static void divergent_barrier(void) {
    int *out = NULL;
    CUDA_CHECK(cudaMalloc(&out, 64 * sizeof(int)));
    CUDA_LAUNCH_KERNEL(divergent_barrier_kernel, 1, 64, NULL, out);
    CUDA_CHECK(cudaDeviceSynchronize()); /* the launch is queued: it runs here */
}

static void late_barrier(void) {
    int *out = NULL;
    CUDA_CHECK(cudaMalloc(&out, 64 * sizeof(int)));
    CUDA_LAUNCH_KERNEL(sometimes_barrier_kernel, 1, 64, NULL, out, 0);
    CUDA_LAUNCH_KERNEL(sometimes_barrier_kernel, 1, 64, NULL, out, 1);
    CUDA_CHECK(cudaDeviceSynchronize());
}

static void copy_with_wrong_kind(void) {
    float *device = NULL, host[4] = {0};
    CUDA_CHECK(cudaMalloc(&device, sizeof host));
    CUDA_CHECK(cudaMemcpy(device, host, sizeof host, cudaMemcpyDeviceToHost)); /* backwards */
}

static void copy_past_the_end(void) {
    float *device = NULL, host[5] = {0};
    CUDA_CHECK(cudaMalloc(&device, 4 * sizeof(float)));
    CUDA_CHECK(cudaMemcpy(device, host, sizeof host, cudaMemcpyHostToDevice));
}

/* Runs what in a child whose stderr goes to a pipe; it must exit 1 with a line containing expected. */
static void expect_fatal(void (*what)(void), const char *name, const char *expected) {
    int pipe_ends[2];
    if (pipe(pipe_ends) != 0) abort();
    fflush(stdout), fflush(stderr);
    pid_t child = fork();
    if (child == 0) {
        dup2(pipe_ends[1], 2);
        close(pipe_ends[0]);
        what();
        _exit(0);
    }
    close(pipe_ends[1]);
    char text[4096];
    size_t used = 0;
    ssize_t got;
    while (used < sizeof text - 1 && (got = read(pipe_ends[0], text + used, sizeof text - 1 - used)) > 0)
        used += (size_t)got;
    text[used] = 0;
    close(pipe_ends[0]);
    int status = 0;
    waitpid(child, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 1, "%s: expected exit status 1, got status 0x%x", name, status);
    CHECK(strstr(text, expected) != NULL, "%s: expected a line with \"%s\", got \"%s\"", name, expected, text);
}

int main(void) {
    test_block_sum();
    test_shuffle();
    test_coordinates_and_configuration();
    expect_fatal(divergent_barrier, "divergent __syncthreads",
                 "kernel divergent_barrier_kernel, block 0: 48 threads wait at __syncthreads that 16 threads");
    expect_fatal(late_barrier, "a barrier in a later launch", "kernel sometimes_barrier_kernel met __syncthreads");
    expect_fatal(copy_with_wrong_kind, "a copy of the wrong kind", "is device memory, but the copy's kind says host");
    expect_fatal(copy_past_the_end, "a copy past the end", "run 4 bytes past the end of their device allocation");
    if (failures) {
        fprintf(stderr, "test_cuda_emulation_kernels: %d failure%s\n", failures, failures == 1 ? "" : "s");
        return 1;
    }
    printf("test_cuda_emulation_kernels: all passed\n");
    return 0;
}

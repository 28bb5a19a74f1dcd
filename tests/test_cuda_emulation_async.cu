/* Tests of the CUDA emulation's streams (tests/cuda_emulation/
 * cuda_emulation_streams.c), built only with cmake -DLDM_CUDA=EMULATE, as C++:
 * sequences with an ordering mistake, which a GPU runs right only by luck,
 * must give a detectably wrong answer here, every time, and the same
 * sequences done right the right one:
 * - a missing synchronisation: a kernel writes device memory, an asynchronous
 *   copy takes it to page-locked memory, the host reads without waiting: it
 *   sees the poison (NaN); after cudaStreamSynchronize, cudaEventSynchronize
 *   or cudaDeviceSynchronize it sees the kernel's values; a host function
 *   and an event's time are there only after the wait too;
 * - a missing event wait between two streams: stream 2 reads what stream 1
 *   writes without cudaStreamWaitEvent and gets the old values; with the wait
 *   the new ones. Legacy default stream rules: a blocking stream orders with
 *   the NULL stream both ways, a non-blocking one (and two blocking ones
 *   between themselves) does not; cudaMemcpy to the host waits for the
 *   blocking streams only;
 * - a page-locked source reused while its copy is in flight: the host
 *   overwrites it before the copy has run and the device gets the new value;
 *   waiting on an event recorded after the copy keeps the old one. A pageable
 *   source is taken when the call is made, as CUDA stages it;
 * - cuBLASLt's matmul and NCCL's all-reduce are queued on their streams too:
 *   read from another stream without a wait, their results are not there. */
#include <math.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_check.h"

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

#define N 300

__global__ static void fill_kernel(float *out, float value, int n) {
    const int i = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    if (i < n) out[i] = value + (float)i;
}

__global__ static void scale_kernel(float *out, const float *in, float factor, int n) {
    const int i = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    if (i < n) out[i] = in[i] * factor;
}

static void fill(float *device, float value, cudaStream_t stream) {
    CUDA_LAUNCH_KERNEL(fill_kernel, (N + 127) / 128, 128, stream, device, value, N);
    CUDA_CHECK_LAUNCH("fill_kernel");
}

static void scale(float *out, const float *in, float factor, cudaStream_t stream) {
    CUDA_LAUNCH_KERNEL(scale_kernel, (N + 127) / 128, 128, stream, out, in, factor, N);
    CUDA_CHECK_LAUNCH("scale_kernel");
}

/* Every element of host is value + i (times factor). */
static int holds(const float *host, float value, float factor) {
    for (int i = 0; i < N; i++)
        if (host[i] != (value + (float)i) * factor) return 0;
    return 1;
}

/* Every byte of host is the emulation's poison (as floats: NaN). */
static int poisoned(const float *host) {
    const unsigned char *bytes = (const unsigned char *)host;
    for (size_t i = 0; i < N * sizeof(float); i++)
        if (bytes[i] != 0xff) return 0;
    return isnan(host[0]);
}

/* The device's values, through a synchronous copy (which waits for the
 * device here, so that it reads what every stream has done). */
static void read_back(float *host, const float *device) {
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemcpy(host, device, N * sizeof(float), cudaMemcpyDeviceToHost));
}

static void CUDART_CB count_call(void *calls) { (*(int *)calls)++; }

static void test_missing_synchronisation(float *device, float *pinned) {
    cudaStream_t stream;
    cudaEvent_t copied;
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&copied, cudaEventDisableTiming));

    /* wrong: no wait before the host reads */
    fill(device, 10.0f, stream);
    CUDA_CHECK(cudaMemcpyAsync(pinned, device, N * sizeof(float), cudaMemcpyDeviceToHost, stream));
    CHECK(poisoned(pinned), "a read of page-locked memory before its copy ran: expected the poison, got %g", pinned[0]);
    /* right: each of the host's ways to wait */
    CUDA_CHECK(cudaStreamSynchronize(stream));
    CHECK(holds(pinned, 10.0f, 1.0f), "after cudaStreamSynchronize: %g, expected 10", pinned[0]);

    fill(device, 20.0f, stream);
    CUDA_CHECK(cudaMemcpyAsync(pinned, device, N * sizeof(float), cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaEventRecord(copied, stream));
    CHECK(poisoned(pinned), "before cudaEventSynchronize: expected the poison, got %g", pinned[0]);
    CUDA_CHECK(cudaEventSynchronize(copied));
    CHECK(holds(pinned, 20.0f, 1.0f), "after cudaEventSynchronize: %g, expected 20", pinned[0]);

    fill(device, 30.0f, stream);
    CUDA_CHECK(cudaMemcpyAsync(pinned, device, N * sizeof(float), cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaEventRecord(copied, stream));
    CUDA_CHECK(cudaEventQuery(copied));
    CHECK(holds(pinned, 30.0f, 1.0f), "after cudaEventQuery said done: %g, expected 30", pinned[0]);

    fill(device, 40.0f, stream);
    CUDA_CHECK(cudaMemcpyAsync(pinned, device, N * sizeof(float), cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaDeviceSynchronize());
    CHECK(holds(pinned, 40.0f, 1.0f), "after cudaDeviceSynchronize: %g, expected 40", pinned[0]);

    /* A copy to pageable memory returns once done, as CUDA's does. */
    float pageable[N];
    fill(device, 50.0f, stream);
    CUDA_CHECK(cudaMemcpyAsync(pageable, device, sizeof pageable, cudaMemcpyDeviceToHost, stream));
    CHECK(holds(pageable, 50.0f, 1.0f), "an asynchronous copy to pageable memory: %g, expected 50", pageable[0]);

    /* A host function runs in its place in the stream, at the host's wait;
     * the time between two events is there once both have run. */
    static int calls;
    cudaEvent_t start, end;
    CUDA_CHECK(cudaEventCreate(&start));
    CUDA_CHECK(cudaEventCreate(&end));
    calls = 0;
    CUDA_CHECK(cudaEventRecord(start, stream));
    CUDA_CHECK(cudaLaunchHostFunc(stream, count_call, &calls));
    CUDA_CHECK(cudaEventRecord(end, stream));
    float ms = 0.0f;
    CHECK(cudaEventElapsedTime(&ms, start, end) == cudaErrorNotReady && calls == 0,
          "before the wait: the host function ran %d times, the elapsed time was there", calls);
    (void)cudaGetLastError();
    CUDA_CHECK(cudaEventSynchronize(end));
    CHECK(calls == 1 && cudaEventElapsedTime(&ms, start, end) == cudaSuccess && ms >= 0.0f,
          "after the wait: the host function ran %d times (expected 1), %g ms", calls, ms);
    CUDA_CHECK(cudaEventDestroy(start));
    CUDA_CHECK(cudaEventDestroy(end));

    CUDA_CHECK(cudaEventDestroy(copied));
    CUDA_CHECK(cudaStreamDestroy(stream));
}

/* `second` reads what `first` wrote: with wait, after an event recorded on
 * first. Returns the scaled values as the device ends up with them. */
static void across_streams(cudaStream_t first, cudaStream_t second, int wait, float *x, float *y, float *host) {
    cudaEvent_t written;
    CUDA_CHECK(cudaEventCreateWithFlags(&written, cudaEventDisableTiming));
    fill(x, 1.0f, NULL);
    fill(y, -1.0f, NULL);
    CUDA_CHECK(cudaDeviceSynchronize());
    fill(x, 7.0f, first);
    if (wait) {
        CUDA_CHECK(cudaEventRecord(written, first));
        CUDA_CHECK(cudaStreamWaitEvent(second, written, 0));
    }
    scale(y, x, 2.0f, second);
    CUDA_CHECK(cudaStreamSynchronize(second));
    CUDA_CHECK(cudaMemcpy(host, y, N * sizeof(float), cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaEventDestroy(written));
}

static void test_missing_event_wait(float *x, float *y) {
    cudaStream_t non_blocking[2], blocking[2];
    for (int i = 0; i < 2; i++) {
        CUDA_CHECK(cudaStreamCreateWithFlags(&non_blocking[i], cudaStreamNonBlocking));
        CUDA_CHECK(cudaStreamCreate(&blocking[i]));
    }
    float host[N];
    across_streams(non_blocking[0], non_blocking[1], 0, x, y, host);
    CHECK(holds(host, 1.0f, 2.0f), "stream 2 without a wait on stream 1's event: %g, expected the old 2", host[0]);
    across_streams(non_blocking[0], non_blocking[1], 1, x, y, host);
    CHECK(holds(host, 7.0f, 2.0f), "stream 2 after a wait on stream 1's event: %g, expected 14", host[0]);
    /* Two blocking streams do not order with each other, only with NULL. */
    across_streams(blocking[0], blocking[1], 0, x, y, host);
    CHECK(holds(host, 1.0f, 2.0f), "two blocking streams without a wait: %g, expected the old 2", host[0]);
    /* The legacy default stream and a blocking stream order both ways... */
    across_streams(blocking[0], NULL, 0, x, y, host);
    CHECK(holds(host, 7.0f, 2.0f), "the NULL stream after a blocking stream: %g, expected 14", host[0]);
    across_streams(NULL, blocking[1], 0, x, y, host);
    CHECK(holds(host, 7.0f, 2.0f), "a blocking stream after the NULL stream: %g, expected 14", host[0]);
    /* ... a non-blocking one does not. */
    across_streams(non_blocking[0], NULL, 0, x, y, host);
    CHECK(holds(host, 1.0f, 2.0f), "the NULL stream after a non-blocking stream: %g, expected the old 2", host[0]);
    across_streams(NULL, non_blocking[1], 0, x, y, host);
    CHECK(holds(host, 1.0f, 2.0f), "a non-blocking stream after the NULL stream: %g, expected the old 2", host[0]);

    /* cudaMemcpy to the host is NULL-stream work: it waits for a blocking
     * stream's kernel, not for a non-blocking one's. */
    fill(x, 1.0f, NULL);
    CUDA_CHECK(cudaDeviceSynchronize());
    fill(x, 3.0f, blocking[0]);
    CUDA_CHECK(cudaMemcpy(host, x, N * sizeof(float), cudaMemcpyDeviceToHost));
    CHECK(holds(host, 3.0f, 1.0f), "cudaMemcpy after a blocking stream's kernel: %g, expected 3", host[0]);
    fill(x, 5.0f, non_blocking[0]);
    CUDA_CHECK(cudaMemcpy(host, x, N * sizeof(float), cudaMemcpyDeviceToHost));
    CHECK(holds(host, 3.0f, 1.0f), "cudaMemcpy after a non-blocking stream's kernel: %g, expected the old 3", host[0]);
    CUDA_CHECK(cudaDeviceSynchronize());

    for (int i = 0; i < 2; i++) {
        CUDA_CHECK(cudaStreamDestroy(non_blocking[i]));
        CUDA_CHECK(cudaStreamDestroy(blocking[i]));
    }
}

static void test_pinned_source_reused(float *device, float *pinned) {
    cudaStream_t stream;
    cudaEvent_t copied;
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&copied, cudaEventDisableTiming));
    float host[N];

    /* wrong: the next batch is written into the buffer before the copy ran */
    for (int i = 0; i < N; i++) pinned[i] = 100.0f + (float)i;
    CUDA_CHECK(cudaMemcpyAsync(device, pinned, N * sizeof(float), cudaMemcpyHostToDevice, stream));
    for (int i = 0; i < N; i++) pinned[i] = 200.0f + (float)i;
    read_back(host, device);
    CHECK(holds(host, 200.0f, 1.0f), "a page-locked source changed before its copy ran: the device has %g, expected "
                                     "the new 200",
          host[0]);
    /* right: wait for the copy (an event after it) before reusing the buffer */
    for (int i = 0; i < N; i++) pinned[i] = 100.0f + (float)i;
    CUDA_CHECK(cudaMemcpyAsync(device, pinned, N * sizeof(float), cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaEventRecord(copied, stream));
    CUDA_CHECK(cudaEventSynchronize(copied));
    for (int i = 0; i < N; i++) pinned[i] = 200.0f + (float)i;
    read_back(host, device);
    CHECK(holds(host, 100.0f, 1.0f), "a page-locked source changed after its copy: the device has %g, expected 100",
          host[0]);
    /* a pageable source is staged by the call */
    float pageable[N];
    for (int i = 0; i < N; i++) pageable[i] = 300.0f + (float)i;
    CUDA_CHECK(cudaMemcpyAsync(device, pageable, sizeof pageable, cudaMemcpyHostToDevice, stream));
    for (int i = 0; i < N; i++) pageable[i] = 400.0f + (float)i;
    read_back(host, device);
    CHECK(holds(host, 300.0f, 1.0f), "a pageable source changed after the call: the device has %g, expected 300",
          host[0]);
    /* A copy into page-locked memory that a queued copy still reads leaves it
     * as it is (no poison over a pending source). */
    for (int i = 0; i < N; i++) pinned[i] = 500.0f + (float)i;
    CUDA_CHECK(cudaMemcpyAsync(device, pinned, N * sizeof(float), cudaMemcpyHostToDevice, stream));
    scale(device, device, 2.0f, stream);
    CUDA_CHECK(cudaMemcpyAsync(pinned, device, N * sizeof(float), cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
    CHECK(holds(pinned, 500.0f, 2.0f), "a round trip through one page-locked buffer: %g, expected 1000", pinned[0]);

    CUDA_CHECK(cudaEventDestroy(copied));
    CUDA_CHECK(cudaStreamDestroy(stream));
}

static void test_libraries_queued(float *x, float *y) {
    cudaStream_t first, second;
    float *z = NULL;
    CUDA_CHECK(cudaMalloc(&z, N * sizeof(float)));
    CUDA_CHECK(cudaStreamCreateWithFlags(&first, cudaStreamNonBlocking));
    CUDA_CHECK(cudaStreamCreateWithFlags(&second, cudaStreamNonBlocking));
    float host[N];

    /* cuBLASLt: D (N x 1) = 2 * A (N x 1) * B (1 x 1, = 1), on `first` */
    cublasLtHandle_t handle;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a_layout, b_layout, d_layout;
    CUBLAS_CHECK(cublasLtCreate(&handle));
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&a_layout, CUDA_R_32F, N, 1, N));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&b_layout, CUDA_R_32F, 1, 1, 1));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d_layout, CUDA_R_32F, N, 1, N));
    float *one = NULL;
    CUDA_CHECK(cudaMalloc(&one, sizeof(float)));
    const float one_value = 1.0f, alpha = 2.0f, beta = 0.0f;
    CUDA_CHECK(cudaMemcpy(one, &one_value, sizeof one_value, cudaMemcpyHostToDevice));
    fill(x, 1.0f, NULL);
    fill(y, -1.0f, NULL);
    CUDA_CHECK(cudaDeviceSynchronize());
    CUBLAS_CHECK(cublasLtMatmul(handle, desc, &alpha, x, a_layout, one, b_layout, &beta, y, d_layout, y, d_layout,
                                NULL, NULL, 0, first));
    scale(z, y, 1.0f, second); /* no wait: reads y before the matmul ran */
    CUDA_CHECK(cudaStreamSynchronize(second));
    read_back(host, z);
    CHECK(holds(host, -1.0f, 1.0f), "a matmul read from another stream without a wait: %g, expected the old -1",
          host[0]);
    read_back(host, y);
    CHECK(holds(host, 1.0f, 2.0f), "the matmul once the device is done: %g, expected 2", host[0]);
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(a_layout));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(b_layout));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(d_layout));
    CUBLAS_CHECK(cublasLtMatmulDescDestroy(desc));
    CUBLAS_CHECK(cublasLtDestroy(handle));
    CUDA_CHECK(cudaFree(one));
    CUDA_CHECK(cudaFree(z));

    /* NCCL (one rank): y = sum of x over the ranks = x, on `first` */
    ncclUniqueId id;
    ncclComm_t comm;
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    if (ncclGetUniqueId(&id) != ncclSuccess || ncclCommInitRankConfig(&comm, 1, id, 0, &config) != ncclSuccess) {
        CHECK(0, "a communicator of one rank");
        return;
    }
    fill(x, 4.0f, NULL);
    fill(y, -1.0f, NULL);
    CUDA_CHECK(cudaDeviceSynchronize());
    CHECK(ncclAllReduce(x, y, N, ncclFloat32, ncclSum, comm, first) == ncclSuccess, "ncclAllReduce");
    CUDA_CHECK(cudaMemcpyAsync(host, y, sizeof host, cudaMemcpyDeviceToHost, second)); /* no wait */
    CHECK(holds(host, -1.0f, 1.0f), "an all-reduce read from another stream without a wait: %g, expected the old -1",
          host[0]);
    CUDA_CHECK(cudaStreamSynchronize(first));
    CUDA_CHECK(cudaMemcpyAsync(host, y, sizeof host, cudaMemcpyDeviceToHost, second));
    CHECK(holds(host, 4.0f, 1.0f), "the all-reduce once its stream is done: %g, expected 4", host[0]);
    CHECK(ncclCommFinalize(comm) == ncclSuccess && ncclCommDestroy(comm) == ncclSuccess, "the communicator's end");

    CUDA_CHECK(cudaStreamDestroy(first));
    CUDA_CHECK(cudaStreamDestroy(second));
}

int main(void) {
    float *x = NULL, *y = NULL, *pinned = NULL;
    CUDA_CHECK(cudaMalloc(&x, N * sizeof(float)));
    CUDA_CHECK(cudaMalloc(&y, N * sizeof(float)));
    CUDA_CHECK(cudaMallocHost(&pinned, N * sizeof(float)));
    test_missing_synchronisation(x, pinned);
    test_missing_event_wait(x, y);
    test_pinned_source_reused(x, pinned);
    test_libraries_queued(x, y);
    CUDA_CHECK(cudaFreeHost(pinned));
    CUDA_CHECK(cudaFree(x));
    CUDA_CHECK(cudaFree(y));
    if (failures) {
        fprintf(stderr, "test_cuda_emulation_async: %d failure%s\n", failures, failures == 1 ? "" : "s");
        return 1;
    }
    printf("test_cuda_emulation_async: all passed\n");
    return 0;
}

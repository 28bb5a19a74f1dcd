/* Device memory for the CUDA op set (ops_cuda.h): checked allocation, copies
 * between host and device, filling and waiting, so that C code (tests, set-up)
 * needs no CUDA header. Failures end the program through fatal_internal. */
#include "cuda_check.h"

extern "C" {
#include "ops_cuda.h"
}

extern "C" void *cuda_buffer_alloc(size_t bytes) {
    if (bytes == 0) return NULL;
    void *device = NULL;
    CUDA_CHECK(cudaMalloc(&device, bytes));
    return device;
}

extern "C" void cuda_buffer_free(void *device) {
    if (device) CUDA_CHECK(cudaFree(device));
}

extern "C" void cuda_copy_to_device(void *device, const void *host, size_t bytes) {
    if (bytes) {
        CUDA_CHECK(cudaMemcpy(device, host, bytes, cudaMemcpyHostToDevice));
        /* From pageable memory cudaMemcpy may return before the device has the
         * bytes; work on a non-blocking stream must find them there. */
        CUDA_CHECK(cudaStreamSynchronize(NULL));
    }
}

extern "C" void cuda_copy_to_host(void *host, const void *device, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemcpy(host, device, bytes, cudaMemcpyDeviceToHost));
}

extern "C" void cuda_buffer_fill_bytes(void *device, int value, size_t bytes) {
    if (bytes) {
        CUDA_CHECK(cudaMemset(device, value, bytes));
        CUDA_CHECK(cudaDeviceSynchronize());
    }
}

extern "C" void cuda_device_synchronize(void) { CUDA_CHECK(cudaDeviceSynchronize()); }

extern "C" void *cuda_pinned_alloc(size_t bytes) {
    if (bytes == 0) return NULL;
    void *host = NULL;
    CUDA_CHECK(cudaMallocHost(&host, bytes));
    return host;
}

extern "C" void cuda_pinned_free(void *host) {
    if (host) CUDA_CHECK(cudaFreeHost(host));
}

extern "C" void cuda_copy_to_device_async(void *device, const void *host, size_t bytes, ldm_stream stream) {
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, stream));
}

extern "C" void cuda_copy_to_host_async(void *host, const void *device, size_t bytes, ldm_stream stream) {
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, stream));
}

extern "C" void cuda_stream_synchronize(ldm_stream stream) { CUDA_CHECK(cudaStreamSynchronize(stream)); }

extern "C" void *cuda_model_memory_alloc(size_t bytes, const char *model, int max_batch, ldm_precision precision) {
    /* A micro-batch too large for the GPU is the user's to change: one line
     * that says how much is needed, rather than cudaMalloc's "out of memory". */
    size_t free_bytes = 0, total_bytes = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    if (bytes > free_bytes)
        fatal_input("GPU memory: %s needs %.2f GiB for batches of %d samples in %s, but the GPU has %.2f GiB "
                    "free of %.2f GiB; lower the micro-batch (train.micro_batch)",
                    model, (double)bytes / 1073741824.0, max_batch, precision_name(precision),
                    (double)free_bytes / 1073741824.0, (double)total_bytes / 1073741824.0);
    void *memory = cuda_buffer_alloc(bytes);
    cuda_buffer_fill_bytes(memory, 0, bytes);
    return memory;
}

extern "C" int cuda_use_device_of_local_rank(int local_rank) {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices < 1)
        fatal_internal("cuda_use_device_of_local_rank: no CUDA device"); /* the commands refuse first */
    const int device = local_rank % devices;
    CUDA_CHECK(cudaSetDevice(device));
    return device;
}

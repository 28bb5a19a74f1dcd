/* Internal to the CUDA sources (C++, included by .cu files only): checks on
 * every CUDA runtime and cuBLASLt call, which end the program through
 * fatal_internal with the call, file, line and the library's error string, and
 * the launch-size helpers every kernel launch uses. */
#ifndef LDM_CUDA_CHECK_H
#define LDM_CUDA_CHECK_H

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <stddef.h>

extern "C" {
#include "fatal.h"
}

/* status_type status = call; anything but success ends the program, naming the
 * library, what was called, where, and describe(status). */
#define CHECK_LIBRARY_STATUS(library, status_type, success, describe, what, call)                   \
    do {                                                                                            \
        status_type check_status_ = (call);                                                         \
        if (check_status_ != (success))                                                             \
            fatal_internal("%s %s failed at %s:%d: %s", library, what, __FILE__, __LINE__,          \
                           describe(check_status_));                                                \
    } while (0)

#define CUDA_CHECK(call) CHECK_LIBRARY_STATUS("CUDA", cudaError_t, cudaSuccess, cudaGetErrorString, #call, call)
#define CUBLAS_CHECK(call)                                                                          \
    CHECK_LIBRARY_STATUS("cuBLASLt", cublasStatus_t, CUBLAS_STATUS_SUCCESS, cublasLtGetStatusString, #call, call)
/* After a kernel launch: a bad configuration (or an earlier asynchronous error) is reported here. */
#define CUDA_CHECK_LAUNCH(kernel_name)                                                              \
    CHECK_LIBRARY_STATUS("CUDA kernel", cudaError_t, cudaSuccess, cudaGetErrorString, kernel_name, cudaGetLastError())

/* Threads per block of the elementwise kernels. */
#define CUDA_ELEMENTWISE_THREADS 256
/* Elementwise kernels loop over their range with a grid stride, so the grid is capped. */
#define CUDA_MAX_BLOCKS 65536

/* Blocks for n elements at `threads` per block (n > 0), capped at CUDA_MAX_BLOCKS. */
static inline unsigned int cuda_blocks_for(size_t n, int threads) {
    size_t blocks = (n + (size_t)threads - 1) / (size_t)threads;
    return (unsigned int)(blocks < CUDA_MAX_BLOCKS ? blocks : CUDA_MAX_BLOCKS);
}

/* The grid-stride loop of the elementwise kernels: i runs over [0, n). */
#define CUDA_FOR_EACH_INDEX(i, n)                                                                   \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

/* kernel<<<grid, block, 0, stream>>>(...): every launch goes through this, so
 * that the CPU emulation of the CUDA build (cmake -DLDM_CUDA=EMULATE,
 * tests/cuda_emulation/) can run it. */
#ifdef LDM_CUDA_EMULATION
#define CUDA_LAUNCH_KERNEL(kernel, grid, block, stream, ...)                                        \
    cuda_emulation_launch(#kernel, kernel, (grid), (block), (stream), __VA_ARGS__)
#else
#define CUDA_LAUNCH_KERNEL(kernel, grid, block, stream, ...) kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)
#endif

/* Launches kernel(args..., n) with a grid for n elements and checks the launch;
 * nothing for n == 0. The kernel's last parameter is the element count (size_t). */
#define CUDA_LAUNCH_ELEMENTWISE(kernel, n, stream, ...)                                             \
    do {                                                                                            \
        size_t launch_n_ = (n);                                                                     \
        if (launch_n_ > 0) {                                                                        \
            CUDA_LAUNCH_KERNEL(kernel, cuda_blocks_for(launch_n_, CUDA_ELEMENTWISE_THREADS),        \
                               CUDA_ELEMENTWISE_THREADS, (stream), __VA_ARGS__, launch_n_);         \
            CUDA_CHECK_LAUNCH(#kernel);                                                             \
        }                                                                                           \
    } while (0)

#endif

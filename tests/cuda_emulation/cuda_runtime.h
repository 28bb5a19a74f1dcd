/* CUDA emulation (see cuda_runtime_api.h): what a .cu file sees when it is
 * compiled as C++ for the CPU. The qualifiers (__global__, __device__,
 * __shared__), the thread coordinates, the intrinsics the kernels use, warp
 * shuffles, and the launch: CUDA_LAUNCH_KERNEL (model/cuda/cuda_check.h) calls
 * cuda_emulation_launch here instead of kernel<<<...>>>.
 *
 * A launch is queued on its stream (cuda_emulation_queue.h); when it runs, it
 * runs every thread of every block on the CPU, one block at a time
 * (cuda_emulation_kernels.c). The threads of a block run as coroutines that
 * switch only at __syncthreads and shuffles, so a kernel's shared memory can be
 * a function-static array (blocks never overlap) and its barriers mean what
 * they mean on the GPU. */
#ifndef LDM_CUDA_EMULATION_RUNTIME_H
#define LDM_CUDA_EMULATION_RUNTIME_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cuda_runtime_api.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    unsigned int x, y, z;
} cuda_emulation_coordinates;

/* The running thread's coordinates, set by the scheduler before it runs or
 * resumes a thread. */
extern cuda_emulation_coordinates threadIdx, blockIdx, blockDim, gridDim;

/* Queues a launch on stream (cuda_emulation_queue.h): when the queue runs it,
 * thread_body(closure) runs once for every thread of the grid (see the top),
 * then release(closure). kernel identifies the kernel (its address), name is
 * for messages. A bad configuration (a zero or too large dimension) sets the
 * last error to cudaErrorInvalidConfiguration at once and queues nothing, as a
 * launch does. */
void cuda_emulation_run_kernel(const char *name, const void *kernel, cuda_emulation_coordinates grid,
                               cuda_emulation_coordinates block, cudaStream_t stream, void (*thread_body)(void *),
                               void *closure, void (*release)(void *));
/* __syncthreads: waits until every thread of the block is here. */
void cuda_emulation_sync_block(void);
/* The value (bytes <= 16) of lane (this lane + delta) of this warp, or this
 * lane's own value when that lane is outside the warp segment of width;
 * every lane of mask must take part. */
void cuda_emulation_shuffle_down(unsigned int mask, const void *value, void *out, size_t bytes, unsigned int delta,
                                 int width);

#ifdef __cplusplus
}

#include <tuple>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
/* The most threads per block a kernel is launched with: the real build's
 * register allocation (tests/launch_resources/ checks it); nothing here. */
#define __launch_bounds__(...)
/* Blocks run one at a time, so one static array per kernel serves every block. */
#define __shared__ static

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

/* The device intrinsics the kernels use, as the operations they name (the
 * emulated sources are compiled with -ffp-contract=off: no fused multiply-adds). */
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fsqrt_rn(float a) { return sqrtf(a); }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dsub_rn(double a, double b) { return a - b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline float rsqrtf(float a) { return 1.0f / sqrtf(a); }
static inline float __uint2float_rn(unsigned int a) { return (float)a; }
static inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    memcpy(&u, &f, sizeof u);
    return u;
}
static inline float __uint_as_float(unsigned int u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

template <typename T> static inline T __shfl_down_sync(unsigned int mask, T value, unsigned int delta, int width = 32) {
    static_assert(sizeof(T) <= 16, "shuffled values are at most 16 bytes");
    T out;
    cuda_emulation_shuffle_down(mask, &value, &out, sizeof(T), delta, width);
    return out;
}

static inline void __syncthreads(void) { cuda_emulation_sync_block(); }

/* The runtime's C++ overloads for typed pointers. */
template <typename T> static inline cudaError_t cudaMalloc(T **device, size_t bytes) {
    return cudaMalloc((void **)device, bytes);
}
template <typename T> static inline cudaError_t cudaMallocHost(T **host, size_t bytes) {
    return cudaMallocHost((void **)host, bytes);
}

/* A launch as it waits in its stream's queue: the kernel and its arguments,
 * converted to the kernel's parameter types once, as a launch copies them. */
template <typename... Params> struct cuda_emulation_queued_launch {
    void (*kernel)(Params...);
    std::tuple<Params...> arguments;
};

template <typename Launch> static void cuda_emulation_call_launch(void *closure) {
    Launch *launch = (Launch *)closure;
    std::apply(launch->kernel, launch->arguments);
}

template <typename Launch> static void cuda_emulation_release_launch(void *closure) { delete (Launch *)closure; }

/* kernel<<<grid, block, 0, stream>>>(args...): queued on stream. */
template <typename... Params, typename... Args>
static void cuda_emulation_launch(const char *name, void (*kernel)(Params...), dim3 grid, dim3 block,
                                  cudaStream_t stream, Args &&...args) {
    typedef cuda_emulation_queued_launch<Params...> Launch;
    /* A C-style cast, because NULL arrives here as an integer; the real build
     * (nvcc) checks the argument types. */
    Launch *launch = new Launch{kernel, std::tuple<Params...>(((Params)std::forward<Args>(args))...)};
    cuda_emulation_run_kernel(name, reinterpret_cast<const void *>(kernel), {grid.x, grid.y, grid.z},
                              {block.x, block.y, block.z}, stream, &cuda_emulation_call_launch<Launch>, launch,
                              &cuda_emulation_release_launch<Launch>);
}

#endif /* __cplusplus */

#endif

/* CUDA emulation (cmake -DLDM_CUDA=EMULATE): the subset of the CUDA runtime
 * API that ldm uses, carried out on the CPU, so that the CUDA sources (kernels,
 * cuBLASLt and NCCL calls, the GPU trainable) run in CI, which has no GPU.
 *
 * What it checks: the kernels' arithmetic and indexing, block and warp
 * synchronisation (a kernel whose threads wait at different barriers ends the
 * program naming it), that copies and GEMM operands stay inside device
 * allocations and go the way their kind says, and stream ordering: work is
 * queued on its stream and runs only when CUDA would guarantee it has
 * (cuda_emulation_queue.h), so a missing wait gives old values or poison.
 * What it does not: speed; the GPU's own rounding (fused multiply-adds, its
 * expf). A real GPU run remains the test of record.
 *
 * Device memory is host memory from a registry of allocations; streams are
 * queues and events marks in them (cuda_emulation_streams.c); an event's time
 * is the wall clock when its record ran. The emulated device
 * count is LDM_CUDA_EMULATED_DEVICES (default 1), 0 when CUDA_VISIBLE_DEVICES
 * is -1. Header for C and C++; not the real library's ABI. */
#ifndef LDM_CUDA_EMULATION_RUNTIME_API_H
#define LDM_CUDA_EMULATION_RUNTIME_API_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LDM_CUDA_EMULATION 1

typedef enum {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevicePointer = 17,
    cudaErrorInvalidMemcpyDirection = 21,
    cudaErrorInsufficientDriver = 35,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorNotReady = 600,
} cudaError_t;
typedef cudaError_t cudaError;

typedef enum {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
} cudaMemcpyKind;

/* library_types.h */
typedef enum {
    CUDA_R_32F = 0,
    CUDA_R_64F = 1,
    CUDA_R_16F = 2,
    CUDA_R_32I = 10,
    CUDA_R_16BF = 14,
} cudaDataType_t;
typedef cudaDataType_t cudaDataType;

typedef struct CUstream_st *cudaStream_t;
typedef struct CUevent_st *cudaEvent_t;
typedef void (*cudaHostFn_t)(void *user_data);

#define CUDART_CB
#define cudaStreamDefault 0x00u
#define cudaStreamNonBlocking 0x01u
#define cudaEventDefault 0x00u
#define cudaEventBlockingSync 0x01u
#define cudaEventDisableTiming 0x02u

typedef struct {
    char name[256];
    size_t totalGlobalMem;
    int major, minor;
    int multiProcessorCount;
    int warpSize;
    int maxThreadsPerBlock;
    int clockRate;
} cudaDeviceProp;

const char *cudaGetErrorString(cudaError_t error);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);

cudaError_t cudaGetDeviceCount(int *count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int *device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device);
cudaError_t cudaDeviceGetPCIBusId(char *bus_id, int length, int device);
cudaError_t cudaDeviceGetStreamPriorityRange(int *least, int *greatest);
cudaError_t cudaDeviceSynchronize(void);

cudaError_t cudaMalloc(void **device, size_t bytes);
/* The emulated device holds 16 GiB; free is what cudaMalloc has not handed out. */
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);
cudaError_t cudaFree(void *device);
cudaError_t cudaMallocHost(void **host, size_t bytes);
cudaError_t cudaFreeHost(void *host);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream);
cudaError_t cudaMemset(void *device, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void *device, int value, size_t bytes, cudaStream_t stream);

cudaError_t cudaStreamCreate(cudaStream_t *stream);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned int flags);
cudaError_t cudaStreamCreateWithPriority(cudaStream_t *stream, unsigned int flags, int priority);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags);
cudaError_t cudaLaunchHostFunc(cudaStream_t stream, cudaHostFn_t fn, void *user_data);

cudaError_t cudaEventCreate(cudaEvent_t *event);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream);
cudaError_t cudaEventQuery(cudaEvent_t event);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end);

/* ---- for the emulation's own libraries (cuBLASLt, NCCL) and tests ---- */
/* 1 when [p, p + bytes) lies inside one live device allocation. */
int cuda_emulation_is_device_range(const void *p, size_t bytes);
/* Ends the program (fatal_internal) naming what when [p, p + bytes) is not
 * inside one live device allocation. */
void cuda_emulation_require_device_range(const void *p, size_t bytes, const char *what);
/* A stream handle is valid: NULL (the legacy default stream) or a live stream. */
void cuda_emulation_require_stream(cudaStream_t stream, const char *what);

#ifdef __cplusplus
}
#endif

#endif

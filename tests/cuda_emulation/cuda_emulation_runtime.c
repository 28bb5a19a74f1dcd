/* CUDA emulation (see cuda_runtime_api.h): devices, device memory, copies,
 * streams, events and the last error. Device memory is host memory kept in a
 * registry, so that a copy or a library call can check that a "device"
 * pointer is one (and a host pointer is not) and that the bytes it touches lie
 * inside one allocation. New allocations are filled with 0xff bytes (NaN as
 * floats): code that reads device memory it never wrote sees NaN, as it sees
 * garbage on a GPU. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cuda_runtime_api.h"
#include "fatal.h"

/* The emulated device's memory: cudaMalloc beyond it fails as on a GPU. */
#define EMULATED_DEVICE_BYTES ((size_t)16 << 30)

static cudaError_t last_error = cudaSuccess;
static int current_device = 0;

/* Every call returns through here: an error is also the sticky last error. */
static cudaError_t result(cudaError_t error) {
    if (error != cudaSuccess) last_error = error;
    return error;
}

void cuda_emulation_kernel_error(cudaError_t error) { result(error); }

const char *cudaGetErrorString(cudaError_t error) {
    switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorInsufficientDriver: return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    }
    return "unrecognized error code";
}

cudaError_t cudaGetLastError(void) {
    cudaError_t error = last_error;
    last_error = cudaSuccess;
    return error;
}

cudaError_t cudaPeekAtLastError(void) { return last_error; }

/* ---- devices ---- */

/* LDM_CUDA_EMULATED_DEVICES: how many devices (default 1; 0: none, as on a
 * machine without a GPU), or "insufficient-driver": a GPU machine whose driver
 * is older than the runtime, where every call fails with that error. */
static int driver_too_old(void) {
    const char *text = getenv("LDM_CUDA_EMULATED_DEVICES");
    return text && strcmp(text, "insufficient-driver") == 0;
}

static int device_count(void) {
    const char *visible = getenv("CUDA_VISIBLE_DEVICES");
    if (driver_too_old() || (visible && strcmp(visible, "-1") == 0)) return 0;
    const char *text = getenv("LDM_CUDA_EMULATED_DEVICES");
    int count = text && *text ? atoi(text) : 1;
    return count < 0 ? 0 : count;
}

cudaError_t cudaGetDeviceCount(int *count) {
    *count = device_count();
    if (driver_too_old()) return result(cudaErrorInsufficientDriver);
    return *count ? cudaSuccess : result(cudaErrorNoDevice);
}

cudaError_t cudaSetDevice(int device) {
    if (device < 0 || device >= device_count()) return result(cudaErrorInvalidDevice);
    current_device = device;
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int *device) {
    *device = current_device;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device) {
    if (device < 0 || device >= device_count()) return result(cudaErrorInvalidDevice);
    memset(prop, 0, sizeof *prop);
    snprintf(prop->name, sizeof prop->name, "CUDA emulation on the CPU");
    prop->totalGlobalMem = EMULATED_DEVICE_BYTES;
    prop->major = 9;
    prop->minor = 0;
    prop->multiProcessorCount = 1;
    prop->warpSize = 32;
    prop->maxThreadsPerBlock = 1024;
    prop->clockRate = 1000000;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetPCIBusId(char *bus_id, int length, int device) {
    if (device < 0 || device >= device_count() || length < 13) return result(cudaErrorInvalidValue);
    snprintf(bus_id, (size_t)length, "0000:%02x:00.0", device + 1);
    return cudaSuccess;
}

cudaError_t cudaDeviceGetStreamPriorityRange(int *least, int *greatest) {
    *least = 0;
    *greatest = -5;
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }

/* ---- memory: a sorted registry of allocations ---- */

typedef struct {
    char *base;
    size_t bytes;
    int device; /* 1: cudaMalloc, 0: cudaMallocHost */
} allocation;

static allocation *allocations;
static size_t allocation_count, allocation_capacity;
static size_t device_bytes_in_use;

/* The allocation holding p, or NULL. */
static const allocation *find_allocation(const void *p) {
    const char *c = p;
    size_t lo = 0, hi = allocation_count;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < allocations[mid].base) hi = mid;
        else if (c >= allocations[mid].base + (allocations[mid].bytes ? allocations[mid].bytes : 1)) lo = mid + 1;
        else return &allocations[mid];
    }
    return NULL;
}

static void register_allocation(char *base, size_t bytes, int device) {
    if (allocation_count == allocation_capacity) {
        allocation_capacity = allocation_capacity ? 2 * allocation_capacity : 64;
        allocations = realloc(allocations, allocation_capacity * sizeof *allocations);
        if (!allocations) fatal_internal("CUDA emulation: out of memory for the allocation registry");
    }
    size_t at = allocation_count;
    while (at > 0 && allocations[at - 1].base > base) at--;
    memmove(allocations + at + 1, allocations + at, (allocation_count - at) * sizeof *allocations);
    allocations[at] = (allocation){base, bytes, device};
    allocation_count++;
}

/* Removes the allocation starting exactly at p; 0 when there is none of that kind. */
static int unregister_allocation(void *p, int device) {
    const allocation *found = find_allocation(p);
    if (!found || found->base != p || found->device != device) return 0;
    size_t at = (size_t)(found - allocations);
    memmove(allocations + at, allocations + at + 1, (allocation_count - at - 1) * sizeof *allocations);
    allocation_count--;
    return 1;
}

static int inside(const void *p, size_t bytes, int device) {
    if (bytes == 0) return 1;
    const allocation *a = find_allocation(p);
    return a && a->device == device && (const char *)p + bytes <= a->base + a->bytes;
}

int cuda_emulation_is_device_range(const void *p, size_t bytes) { return p && inside(p, bytes, 1); }

void cuda_emulation_require_device_range(const void *p, size_t bytes, const char *what) {
    if (bytes == 0 || cuda_emulation_is_device_range(p, bytes)) return;
    const allocation *a = p ? find_allocation(p) : NULL;
    if (a && a->device)
        fatal_internal("CUDA emulation: %s: %zu bytes at %p run %zu bytes past the end of their device allocation of "
                       "%zu bytes (at offset %zu)",
                       what, bytes, p, (size_t)((const char *)p + bytes - (a->base + a->bytes)), a->bytes,
                       (size_t)((const char *)p - a->base));
    fatal_internal("CUDA emulation: %s: %p is not device memory (%zu bytes)", what, p, bytes);
}

static cudaError_t allocate(void **out, size_t bytes, int device) {
    *out = NULL;
    if (bytes == 0) return cudaSuccess;
    if (device && bytes > EMULATED_DEVICE_BYTES - device_bytes_in_use) return result(cudaErrorMemoryAllocation);
    /* 256-byte aligned, as cudaMalloc's allocations are. */
    void *p = aligned_alloc(256, (bytes + 255) & ~(size_t)255);
    if (!p) return result(cudaErrorMemoryAllocation);
    if (device) memset(p, 0xff, bytes);
    register_allocation(p, bytes, device);
    if (device) device_bytes_in_use += bytes;
    *out = p;
    return cudaSuccess;
}

cudaError_t cudaMalloc(void **device, size_t bytes) { return allocate(device, bytes, 1); }

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    *total_bytes = EMULATED_DEVICE_BYTES;
    *free_bytes = EMULATED_DEVICE_BYTES - device_bytes_in_use;
    return cudaSuccess;
}
cudaError_t cudaMallocHost(void **host, size_t bytes) { return allocate(host, bytes, 0); }

cudaError_t cudaFree(void *device) {
    if (!device) return cudaSuccess;
    const allocation *found = find_allocation(device);
    const size_t bytes = found ? found->bytes : 0;
    if (!unregister_allocation(device, 1)) return result(cudaErrorInvalidDevicePointer);
    device_bytes_in_use -= bytes;
    free(device);
    return cudaSuccess;
}

cudaError_t cudaFreeHost(void *host) {
    if (!host) return cudaSuccess;
    if (!unregister_allocation(host, 0)) return result(cudaErrorInvalidValue);
    free(host);
    return cudaSuccess;
}

/* A copy's pointers must be where its kind says: a kind that contradicts them
 * is a bug that a real GPU may punish only sometimes. */
static cudaError_t copy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream,
                        const char *what) {
    cuda_emulation_require_stream(stream, what);
    if (bytes == 0) return cudaSuccess;
    if (kind == cudaMemcpyDefault)
        kind = (cudaMemcpyKind)((cuda_emulation_is_device_range(src, 1) ? 2 : 0) +
                                (cuda_emulation_is_device_range(dst, 1) ? 1 : 0));
    const int dst_device = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    const int src_device = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDeviceToDevice) return result(cudaErrorInvalidMemcpyDirection);
    if (dst_device) cuda_emulation_require_device_range(dst, bytes, what);
    else if (cuda_emulation_is_device_range(dst, 1))
        fatal_internal("CUDA emulation: %s: the destination %p is device memory, but the copy's kind says host", what,
                       dst);
    if (src_device) cuda_emulation_require_device_range(src, bytes, what);
    else if (cuda_emulation_is_device_range(src, 1))
        fatal_internal("CUDA emulation: %s: the source %p is device memory, but the copy's kind says host", what, src);
    memmove(dst, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
    return copy(dst, src, bytes, kind, NULL, "cudaMemcpy");
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream) {
    return copy(dst, src, bytes, kind, stream, "cudaMemcpyAsync");
}

cudaError_t cudaMemsetAsync(void *device, int value, size_t bytes, cudaStream_t stream) {
    cuda_emulation_require_stream(stream, "cudaMemsetAsync");
    if (bytes == 0) return cudaSuccess;
    cuda_emulation_require_device_range(device, bytes, "cudaMemset");
    memset(device, value, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemset(void *device, int value, size_t bytes) { return cudaMemsetAsync(device, value, bytes, NULL); }

/* ---- streams and events ---- */

#define STREAM_MAGIC 0x5354524du
#define EVENT_MAGIC 0x45564e54u

struct CUstream_st {
    unsigned int magic;
    unsigned int flags;
};

struct CUevent_st {
    unsigned int magic;
    unsigned int flags;
    int recorded;
    double seconds; /* when it was recorded */
};

void cuda_emulation_require_stream(cudaStream_t stream, const char *what) {
    if (stream && stream->magic != STREAM_MAGIC)
        fatal_internal("CUDA emulation: %s: %p is not a live stream", what, (void *)stream);
}

static cudaError_t require_event(cudaEvent_t event) {
    return event && event->magic == EVENT_MAGIC ? cudaSuccess : result(cudaErrorInvalidResourceHandle);
}

cudaError_t cudaStreamCreateWithPriority(cudaStream_t *stream, unsigned int flags, int priority) {
    (void)priority;
    *stream = malloc(sizeof **stream);
    if (!*stream) return result(cudaErrorMemoryAllocation);
    **stream = (struct CUstream_st){STREAM_MAGIC, flags};
    return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned int flags) {
    return cudaStreamCreateWithPriority(stream, flags, 0);
}

cudaError_t cudaStreamCreate(cudaStream_t *stream) { return cudaStreamCreateWithPriority(stream, 0, 0); }

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    if (!stream || stream->magic != STREAM_MAGIC) return result(cudaErrorInvalidResourceHandle);
    stream->magic = 0;
    free(stream);
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    cuda_emulation_require_stream(stream, "cudaStreamSynchronize");
    return cudaSuccess;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags) {
    (void)flags;
    cuda_emulation_require_stream(stream, "cudaStreamWaitEvent");
    return require_event(event);
}

cudaError_t cudaLaunchHostFunc(cudaStream_t stream, cudaHostFn_t fn, void *user_data) {
    cuda_emulation_require_stream(stream, "cudaLaunchHostFunc");
    fn(user_data);
    return cudaSuccess;
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags) {
    *event = malloc(sizeof **event);
    if (!*event) return result(cudaErrorMemoryAllocation);
    **event = (struct CUevent_st){EVENT_MAGIC, flags, 0, 0.0};
    return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *event) { return cudaEventCreateWithFlags(event, cudaEventDefault); }

cudaError_t cudaEventDestroy(cudaEvent_t event) {
    if (require_event(event) != cudaSuccess) return cudaErrorInvalidResourceHandle;
    event->magic = 0;
    free(event);
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
    cuda_emulation_require_stream(stream, "cudaEventRecord");
    if (require_event(event) != cudaSuccess) return cudaErrorInvalidResourceHandle;
    event->recorded = 1;
    event->seconds = now_seconds();
    return cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t event) { return require_event(event); }

cudaError_t cudaEventSynchronize(cudaEvent_t event) { return require_event(event); }

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end) {
    if (require_event(start) != cudaSuccess || require_event(end) != cudaSuccess)
        return cudaErrorInvalidResourceHandle;
    if (!start->recorded || !end->recorded || (start->flags | end->flags) & cudaEventDisableTiming)
        return result(cudaErrorInvalidResourceHandle);
    *ms = (float)((end->seconds - start->seconds) * 1e3);
    return cudaSuccess;
}

/* CUDA emulation (see cuda_runtime_api.h): devices, device memory, copies
 * and fills (queued on their streams: cuda_emulation_streams.c) and the last
 * error. Device memory is host memory kept in a
 * registry, so that a copy or a library call can check that a "device"
 * pointer is one (and a host pointer is not) and that the bytes it touches lie
 * inside one allocation. New allocations are filled with 0xff bytes (NaN as
 * floats): code that reads device memory it never wrote sees NaN, as it sees
 * garbage on a GPU. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_emulation_queue.h"
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
cudaError_t cuda_emulation_result(cudaError_t error) { return result(error); }

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

cudaError_t cudaDeviceSynchronize(void) {
    cuda_emulation_drain_all();
    return cudaSuccess;
}

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

/* cudaFree and cudaFreeHost wait for the device, as CUDA's do. */
cudaError_t cudaFree(void *device) {
    if (!device) return cudaSuccess;
    cuda_emulation_drain_all();
    const allocation *found = find_allocation(device);
    const size_t bytes = found ? found->bytes : 0;
    if (!unregister_allocation(device, 1)) return result(cudaErrorInvalidDevicePointer);
    device_bytes_in_use -= bytes;
    free(device);
    return cudaSuccess;
}

cudaError_t cudaFreeHost(void *host) {
    if (!host) return cudaSuccess;
    cuda_emulation_drain_all();
    if (!unregister_allocation(host, 0)) return result(cudaErrorInvalidValue);
    free(host);
    return cudaSuccess;
}

/* ---- copies and fills: queued on their stream (cuda_emulation_queue.h) ----
 * As CUDA does (the runtime API's "API synchronization behavior"):
 *  - a copy from pageable host memory to the device takes the source's bytes
 *    when it is called (CUDA stages them) and runs later;
 *  - a copy from page-locked (cudaMallocHost) memory reads it when it runs:
 *    the host must not change it before then;
 *  - a copy to pageable host memory returns once it has run (its stream's
 *    earlier work first); one to page-locked memory runs later, and its
 *    destination holds the poison byte until then, so a host read without a
 *    wait sees NaN;
 *  - cudaMemcpy is a copy on the legacy default stream that returns once it has
 *    run, except device to device and pageable host to device (queued);
 *    cudaMemset is queued on the legacy default stream. */

typedef struct {
    void *dst;
    const void *src;
    size_t bytes;
    void *staged; /* the pageable source's bytes as they were at the call, or NULL */
} copy_work;

static void run_copy(void *data) {
    const copy_work *work = data;
    memmove(work->dst, work->staged ? work->staged : work->src, work->bytes);
}

static void release_copy(void *data) {
    copy_work *work = data;
    free(work->staged);
    free(work);
}

static int is_page_locked(const void *p, size_t bytes) { return inside(p, bytes, 0); }

/* A copy's pointers must be where its kind says: a kind that contradicts them
 * is a bug that a real GPU may punish only sometimes. synchronous: cudaMemcpy. */
static cudaError_t copy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream,
                        const char *what, int synchronous) {
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

    copy_work *work = calloc(1, sizeof *work);
    if (!work) return result(cudaErrorMemoryAllocation);
    *work = (copy_work){dst, src, bytes, NULL};
    cuda_emulation_work_reads reads = {0};
    if (!src_device) {
        if (is_page_locked(src, bytes)) {
            reads = (cuda_emulation_work_reads){src, bytes};
        } else {
            work->staged = malloc(bytes);
            if (!work->staged) {
                free(work);
                return result(cudaErrorMemoryAllocation);
            }
            memcpy(work->staged, src, bytes);
        }
    }
    int wait = !dst_device; /* to host memory: returns once done ... */
    if (!dst_device && !synchronous && is_page_locked(dst, bytes)) {
        wait = 0; /* ... unless asynchronous into page-locked memory */
        if (!cuda_emulation_host_bytes_pending_read(dst, bytes)) memset(dst, CUDA_EMULATION_POISON_BYTE, bytes);
    }
    if (synchronous && !dst_device) wait = 1;
    if (synchronous && kind == cudaMemcpyHostToDevice && !work->staged) wait = 1;
    cuda_emulation_enqueue(stream, what, run_copy, release_copy, work, reads);
    if (wait) cuda_emulation_drain_stream(stream);
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
    return copy(dst, src, bytes, kind, NULL, "cudaMemcpy", 1);
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream) {
    return copy(dst, src, bytes, kind, stream, "cudaMemcpyAsync", 0);
}

typedef struct {
    void *device;
    int value;
    size_t bytes;
} fill_work;

static void run_fill(void *data) {
    const fill_work *work = data;
    memset(work->device, work->value, work->bytes);
}

cudaError_t cudaMemsetAsync(void *device, int value, size_t bytes, cudaStream_t stream) {
    cuda_emulation_require_stream(stream, "cudaMemsetAsync");
    if (bytes == 0) return cudaSuccess;
    cuda_emulation_require_device_range(device, bytes, "cudaMemset");
    fill_work *work = malloc(sizeof *work);
    if (!work) return result(cudaErrorMemoryAllocation);
    *work = (fill_work){device, value, bytes};
    cuda_emulation_enqueue(stream, "cudaMemset", run_fill, free, work, (cuda_emulation_work_reads){0});
    return cudaSuccess;
}

cudaError_t cudaMemset(void *device, int value, size_t bytes) { return cudaMemsetAsync(device, value, bytes, NULL); }

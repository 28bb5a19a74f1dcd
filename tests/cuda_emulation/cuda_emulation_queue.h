/* CUDA emulation, internal (the runtime, kernels, cuBLASLt and NCCL files of
 * tests/cuda_emulation/): the stream queues of cuda_emulation_streams.c.
 *
 * Work given to a stream is not run when the call is made: it waits in the
 * stream's queue until CUDA would guarantee that it has run (a host wait on
 * the stream, on an event recorded after it, or on the device; a synchronous
 * copy; work on another stream that waits on such an event or, by the legacy
 * default stream's rules, on the NULL stream), and then runs, on the host
 * thread that made it necessary. Queued work runs in an order CUDA allows and
 * runs as late as CUDA allows: a missing wait shows as stale or poisoned data.
 * Single-threaded and deterministic. Header for C and C++. */
#ifndef LDM_CUDA_EMULATION_QUEUE_H
#define LDM_CUDA_EMULATION_QUEUE_H

#include <stddef.h>

#include "cuda_runtime_api.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The bytes of host memory a queued operation reads when it runs (a copy from
 * page-locked memory), so that poisoning a destination spares them. */
typedef struct {
    const void *host_read;
    size_t host_read_bytes;
} cuda_emulation_work_reads;

/* Queues run(data) on stream (NULL: the legacy default stream), then
 * release(data) (either may be NULL); what names it in messages. */
void cuda_emulation_enqueue(cudaStream_t stream, const char *what, void (*run)(void *data),
                            void (*release)(void *data), void *data, cuda_emulation_work_reads reads);
/* Runs everything queued on stream so far, and what that waits for: the host
 * waits for the stream (cudaStreamSynchronize, a synchronous copy). */
void cuda_emulation_drain_stream(cudaStream_t stream);
/* Runs everything queued on every stream (cudaDeviceSynchronize). */
void cuda_emulation_drain_all(void);
/* 1 when queued work still reads host bytes that overlap [p, p + bytes). */
int cuda_emulation_host_bytes_pending_read(const void *p, size_t bytes);
/* The byte that host memory which queued work will write holds until then. */
#define CUDA_EMULATION_POISON_BYTE 0xff

#ifdef __cplusplus
}
#endif

#endif

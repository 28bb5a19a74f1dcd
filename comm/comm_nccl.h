/* Gradient all-reduce between GPUs through NCCL: one communicator per job, one
 * GPU per rank, a stream of its own for the collectives, the average of a
 * device buffer over the ranks, and the same average in buckets that overlap
 * with the backward pass. MPI (comm.h) starts the job, names the ranks and
 * hands out NCCL's unique id; NCCL moves the data.
 *
 * Never a hang: the communicator is non-blocking, and every wait here polls
 * (the collective's CUDA event and ncclCommGetAsyncError) with a time limit,
 * 300 s or LDM_NCCL_TIMEOUT_S (seconds, fractions allowed). An NCCL error, or
 * a collective that has not completed in time, aborts the communicator
 * (ncclCommAbort) and ends the job through fatal.h with one line:
 *   ldm: error: rank R on HOST: NCCL all-reduce of N floats: <NCCL's error>
 *   ldm: error: rank R on HOST: NCCL all-reduce of N floats did not complete in 300 s (...)
 *
 * Rank r uses GPU comm_local_rank() (modulo the GPUs it can see, so that one
 * GPU per rank given through CUDA_VISIBLE_DEVICES works too). Two ranks of a
 * host on the same GPU end the job at create with one line naming the host
 * (NCCL needs a GPU of its own for every rank). One rank works (NCCL with a
 * single rank), also without comm_init.
 *
 * Results: the average is NCCL's ncclAvg in fp32, which multiplies each rank's
 * value by (float)(1/W) and sums. NCCL's algorithms reduce each element once
 * and copy the result, so every rank gets the same bits (NCCL does not promise
 * it; the test checks it). Unlike comm_allreduce_mean the summation order is
 * NCCL's (it may depend on the count and the topology); with W <= 2 there is a
 * single addition, so the result is round((x_0 + x_1) / 2) whatever NCCL does.
 *
 * All functions are collective: every rank calls them in the same order with
 * the same counts and offsets (NCCL matches collectives by order only; a rank
 * that skips one makes the others time out). Call them from the thread that
 * created the communicator; its current CUDA device is the communicator's.
 *
 * Only in a CUDA build (LDM_HAVE_CUDA).
 * Status: not yet run on a GPU; tests/test_comm_nccl.c passes on the CPU
 * emulation of NCCL over MPI (tests/cuda_emulation/, in CI). */
#ifndef LDM_COMM_NCCL_H
#define LDM_COMM_NCCL_H

#ifdef LDM_HAVE_CUDA

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A CUDA stream (cudaStream_t), so that C callers need no CUDA header; the same
 * typedef as gemm_cublaslt.h's. */
typedef struct CUstream_st *ldm_stream;

typedef struct comm_nccl comm_nccl;

/* Collective, after comm_init (or without it: one rank). Picks and sets this
 * thread's CUDA device, makes rank 0's ncclUniqueId known to every rank
 * (comm_broadcast), creates the communicator (non-blocking, waited for with
 * the time limit) and the communication stream (non-blocking with respect to
 * the default stream, highest priority, so that its kernels start as soon as
 * the backward pass makes room). */
comm_nccl *comm_nccl_create(void);
/* Collective: finalizes the communicator (waiting, with the time limit, for
 * every collective issued) and frees it, its stream and events. Every launched
 * bucket must have been waited for (comm_nccl_wait_all). NULL does nothing. */
void comm_nccl_destroy(comm_nccl *c);

/* The CUDA device this rank uses, and the communication stream. */
int comm_nccl_device(const comm_nccl *c);
ldm_stream comm_nccl_stream(const comm_nccl *c);

/* In place: buffer[i] = average over ranks of buffer[i] (fp32), buffer a DEVICE
 * pointer. The all-reduce starts after the work queued so far on `stream`
 * (NULL: the legacy default stream), runs on the communication stream, and
 * later work on `stream` waits for it. Returns once it has completed (the host
 * polls for it): for set-up, loss statistics and training without overlap. Any
 * count (0 does nothing). */
void comm_nccl_allreduce_mean(comm_nccl *c, float *buffer, size_t count, ldm_stream stream);

/* ---- buckets: the all-reduce of the gradients, overlapped with backward ----
 *
 * Layout, once at start-up: comm_nccl_buckets_layout(c, gradients, count,
 * max_buckets, compute_stream) names the gradient arena (DEVICE, count
 * floats), the most buckets one step may launch, and the stream the backward
 * pass runs on. Events for max_buckets buckets are made here; a step
 * allocates nothing.
 *
 * Each step:
 *   backward, block by block on compute_stream; after the kernels that finish
 *   the gradients of a slice [offset, offset + count) of the arena are queued:
 *     comm_nccl_bucket_ready(c, offset, count);
 *   then, before anything reads the averaged gradients (clipping, optimizer):
 *     comm_nccl_wait_all(c, compute_stream);
 *
 * bucket_ready records an event on compute_stream, makes the communication
 * stream wait for it, and queues the all-reduce of that slice there: it runs
 * while the backward pass goes on with earlier blocks. It does not wait for
 * the GPU. wait_all waits on the host (polling, with the time limit) for every
 * bucket launched since the last wait_all, then makes `compute_stream` wait
 * for them on the GPU too; the next bucket_ready starts a new step.
 *
 * The caller guarantees: a slice's gradients are final when it is launched
 * (a parameter that later blocks still add to, such as the embedders', goes
 * in the last bucket); the slices of one step do not overlap (checked) and
 * are launched in the same order with the same bounds on every rank; nothing
 * reads or writes a launched slice until wait_all (the all-reduce rewrites it
 * on another stream). Gradients outside every launched slice are left as
 * they are (not averaged). The bucket bounds need not be the same from step
 * to step, only the same on every rank. */
void comm_nccl_buckets_layout(comm_nccl *c, float *gradients, size_t count, int max_buckets,
                              ldm_stream compute_stream);
void comm_nccl_bucket_ready(comm_nccl *c, size_t offset, size_t count);
void comm_nccl_wait_all(comm_nccl *c, ldm_stream compute_stream);

#ifdef __cplusplus
}
#endif

#endif /* LDM_HAVE_CUDA */

#endif

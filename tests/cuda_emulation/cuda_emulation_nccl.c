/* CUDA emulation: NCCL's all-reduce over MPI (see nccl.h), queued on its
 * stream like any other device work (cuda_emulation_queue.h). ncclAvg is computed
 * as comm/comm_nccl.h says NCCL computes it: every rank's value times
 * (float)(1 / W), then summed (MPI_SUM over MPI_COMM_WORLD).
 *
 * A collective that never completes cannot happen here by itself, so a test
 * asks for one: with LDM_CUDA_EMULATION_STALL_NCCL=1 in the environment every
 * all-reduce returns ncclInProgress and the communicator stays in progress
 * until it is aborted, as a real one whose peer has stopped does.
 *
 * Init completes at once unless LDM_CUDA_EMULATION_NCCL_INIT_S is set: a
 * number of seconds that init then takes (a non-blocking communicator reports
 * ncclInProgress until they have passed, a blocking init sleeps them), or
 * `stall` for an init that never completes (a rank that never joins), so that
 * tests can see init's time limit and a collective's apart. */
#include <math.h>
#include <mpi.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cuda_emulation_queue.h"
#include "fatal.h"
#include "nccl.h"

struct ncclComm {
    int nranks, rank;
    float *scaled; /* room for one all-reduce's scaled values, grown as needed */
    size_t scaled_count;
    int stalled;   /* an all-reduce is stuck (LDM_CUDA_EMULATION_STALL_NCCL) */
    double ready_at; /* monotonic seconds when init completes (LDM_CUDA_EMULATION_NCCL_INIT_S) */
    int queued;    /* all-reduces waiting in a stream's queue: they refer to the communicator */
    int released;  /* destroyed or aborted while some were queued: the last of them frees it */
};

static double monotonic_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* How long init takes: 0, LDM_CUDA_EMULATION_NCCL_INIT_S seconds, or forever. */
static double init_seconds(void) {
    const char *text = getenv("LDM_CUDA_EMULATION_NCCL_INIT_S");
    if (!text || !text[0]) return 0.0;
    if (strcmp(text, "stall") == 0) return INFINITY;
    char *end = NULL;
    const double seconds = strtod(text, &end);
    if (end == text || *end != '\0' || !(seconds >= 0.0))
        fatal_internal("CUDA emulation: LDM_CUDA_EMULATION_NCCL_INIT_S=%s: expected seconds (at least 0) or 'stall'",
                       text);
    return seconds;
}

const char *ncclGetErrorString(ncclResult_t result) {
    switch (result) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    }
    return "unknown result code";
}

const char *ncclGetLastError(ncclComm_t comm) {
    (void)comm;
    return "";
}

ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
    memset(id, 0, sizeof *id);
    uint64_t stamp = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    memcpy(id->internal, "ldm-emulated-nccl", 17);
    memcpy(id->internal + 24, &stamp, sizeof stamp);
    return ncclSuccess;
}

/* A communicator of several ranks is MPI_COMM_WORLD: MPI must be up, of that size. */
static int world_matches(int nranks, int rank) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) return nranks == 1 && rank == 0;
    int size = 0, me = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Comm_rank(MPI_COMM_WORLD, &me);
    return size == nranks && me == rank;
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank, ncclConfig_t *config) {
    *comm = NULL;
    if (!config || config->magic != 0xcafebeefu || nranks < 1 || rank < 0 || rank >= nranks ||
        memcmp(id.internal, "ldm-emulated-nccl", 17) != 0 || !world_matches(nranks, rank))
        return ncclInvalidArgument;
    if (nranks > 1) { /* every rank must hold rank 0's id */
        ncclUniqueId root = id;
        MPI_Bcast(&root, (int)sizeof root, MPI_BYTE, 0, MPI_COMM_WORLD);
        int same = memcmp(&root, &id, sizeof id) == 0, all = 0;
        MPI_Allreduce(&same, &all, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
        if (!all) return ncclInvalidArgument;
    }
    struct ncclComm *c = calloc(1, sizeof *c);
    if (!c) return ncclSystemError;
    c->nranks = nranks;
    c->rank = rank;
    *comm = c;
    const double seconds = init_seconds();
    if (seconds == 0.0) return ncclSuccess;
    if (config->blocking) {
        if (isinf(seconds))
            for (;;) pause(); /* as a blocking init whose peer never joins */
        struct timespec nap = {(time_t)seconds, (long)((seconds - floor(seconds)) * 1e9)};
        nanosleep(&nap, NULL);
        return ncclSuccess;
    }
    c->ready_at = monotonic_s() + seconds;
    return ncclInProgress;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *state) {
    if (!comm) return ncclInvalidArgument;
    *state = comm->stalled || monotonic_s() < comm->ready_at ? ncclInProgress : ncclSuccess;
    return ncclSuccess;
}

/* Finalize flushes what was issued: every queued all-reduce runs. */
ncclResult_t ncclCommFinalize(ncclComm_t comm) {
    if (!comm) return ncclInvalidArgument;
    if (comm->queued) cuda_emulation_drain_all();
    return ncclSuccess;
}

static void release_comm(struct ncclComm *comm) {
    free(comm->scaled);
    free(comm);
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
    if (!comm) return ncclInvalidArgument;
    if (comm->queued) comm->released = 1;
    else release_comm(comm);
    return ncclSuccess;
}

/* What is still queued is dropped when it comes to run, as an aborted
 * communicator's collectives are. */
ncclResult_t ncclCommAbort(ncclComm_t comm) { return ncclCommDestroy(comm); }

typedef struct {
    const float *send;
    float *receive;
    size_t count;
    ncclRedOp_t op;
    struct ncclComm *comm;
} queued_allreduce;

/* The reduction itself, when the stream's queue runs it. */
static void run_allreduce(void *data) {
    const queued_allreduce *q = data;
    struct ncclComm *comm = q->comm;
    comm->queued--;
    if (comm->released) {
        if (comm->queued == 0) release_comm(comm);
        return;
    }
    const size_t count = q->count;
    if (comm->scaled_count < count) {
        free(comm->scaled);
        comm->scaled = malloc(count * sizeof(float));
        if (!comm->scaled) fatal_internal("CUDA emulation: ncclAllReduce: out of memory for %zu floats", count);
        comm->scaled_count = count;
    }
    const float factor = q->op == ncclAvg ? (float)(1.0 / comm->nranks) : 1.0f;
    for (size_t i = 0; i < count; i++) comm->scaled[i] = q->send[i] * factor;
    if (comm->nranks == 1) {
        memcpy(q->receive, comm->scaled, count * sizeof(float));
        return;
    }
    for (size_t done = 0; done < count;) { /* MPI counts are ints */
        int part = count - done > (size_t)1 << 30 ? 1 << 30 : (int)(count - done);
        if (MPI_Allreduce(comm->scaled + done, q->receive + done, part, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD) !=
            MPI_SUCCESS)
            fatal_internal("CUDA emulation: ncclAllReduce: MPI_Allreduce failed");
        done += (size_t)part;
    }
}

/* Queued on stream (cuda_emulation_queue.h): the ranks' MPI_Allreduce calls
 * meet when each rank's queue runs its all-reduce, in the order issued. */
ncclResult_t ncclAllReduce(const void *send, void *receive, size_t count, ncclDataType_t type, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t stream) {
    if (!comm || comm->released || type != ncclFloat32 || (op != ncclAvg && op != ncclSum)) return ncclInvalidArgument;
    cuda_emulation_require_stream(stream, "ncclAllReduce");
    if (count == 0) return ncclSuccess;
    const char *stall = getenv("LDM_CUDA_EMULATION_STALL_NCCL");
    if (stall && strcmp(stall, "1") == 0) {
        comm->stalled = 1;
        return ncclInProgress;
    }
    cuda_emulation_require_device_range(send, count * sizeof(float), "ncclAllReduce (send buffer)");
    cuda_emulation_require_device_range(receive, count * sizeof(float), "ncclAllReduce (receive buffer)");
    queued_allreduce *q = malloc(sizeof *q);
    if (!q) return ncclSystemError;
    *q = (queued_allreduce){send, receive, count, op, comm};
    comm->queued++;
    cuda_emulation_enqueue(stream, "ncclAllReduce", run_allreduce, free, q, (cuda_emulation_work_reads){0});
    return ncclSuccess;
}

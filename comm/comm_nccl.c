/* The NCCL communicator (see comm_nccl.h): the choice of this rank's GPU and
 * the check that no two ranks of a host share one, the non-blocking
 * communicator and its stream, the averaging all-reduce whole and in buckets,
 * and the polling with time limits (one for init, one for each collective,
 * counted from when it is queued) that turns every NCCL error or stuck call
 * into ncclCommAbort, one fatal line and _exit instead of a hang.
 * Host C over the CUDA runtime API; built only in a CUDA build. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* gethostname, nanosleep */
#endif
#include "comm_nccl.h"

#include <cuda_runtime_api.h>
#include <math.h>
#include <nccl.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "comm.h"
#include "fatal.h"

#define DEFAULT_TIMEOUT_S 300.0
/* Init connects every rank to the others (about half a second on one host, more
 * across many nodes, and ranks start at different times): a limit of its own,
 * so that a short collective limit does not end a job that is still starting. */
#define DEFAULT_INIT_TIMEOUT_S 120.0
/* ncclCommAbort has been seen to hang when peers do not abort with it; a rank
 * that is ending anyway stops waiting for it after this long. */
#define ABORT_GRACE_S 30
/* A wait yields the core for its first millisecond (a bucket's all-reduce
 * often ends just after the backward pass), then sleeps between polls so that
 * a long wait leaves the core to the data loader. */
#define SPIN_S 1e-3
#define POLL_SLEEP_NS 50000L
/* cudaDeviceGetPCIBusId writes "dddd:bb:dd.f" (13 bytes with the NUL); room to spare. */
#define BUS_ID_BYTES 32

typedef struct {
    size_t offset, count;
    double launched_at; /* host clock when queued: the time limit counts from here */
    cudaEvent_t ready;  /* on the compute stream: the slice's gradients are done */
    cudaEvent_t done;   /* on the communication stream: its all-reduce is done */
} bucket;

struct comm_nccl {
    ncclComm_t comm;     /* NULL once aborted or destroyed */
    ncclConfig_t config; /* kept for the communicator's whole life */
    int rank, world, device;
    double timeout_s;      /* each collective (and finalize), from when it is queued */
    double init_timeout_s; /* ncclCommInitRankConfig */
    cudaStream_t stream;                  /* every collective runs here, in issue order */
    cudaEvent_t whole_ready, whole_done;  /* for comm_nccl_allreduce_mean */
    float *gradients;                     /* the buckets' arena (device) */
    size_t gradient_count;
    cudaStream_t compute;                 /* where the backward pass runs */
    bucket *buckets;
    int max_buckets, launched;            /* launched: since the last wait_all */
};

/* What a failure line names: built only when something went wrong. */
typedef enum { OP_INIT, OP_ALLREDUCE, OP_BUCKET, OP_FINALIZE } op_kind;
typedef struct {
    op_kind kind;
    size_t count, offset;
    int bucket;
} nccl_op;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* This rank's host, also without comm_init (then comm.h knows no names). */
static const char *host_name(void) {
    static char name[64];
    const char *known = comm_host(comm_rank());
    if (known[0]) return known;
    if (gethostname(name, sizeof name - 1) != 0) snprintf(name, sizeof name, "unknown-host");
    name[sizeof name - 1] = '\0';
    return name;
}

static void describe(const comm_nccl *c, const nccl_op *op, char *out, size_t size) {
    switch (op->kind) {
    case OP_INIT:
        snprintf(out, size, "NCCL init of %d rank%s (GPU %d)", c->world, c->world == 1 ? "" : "s", c->device);
        break;
    case OP_ALLREDUCE:
        snprintf(out, size, "NCCL all-reduce of %zu floats", op->count);
        break;
    case OP_BUCKET:
        snprintf(out, size, "NCCL all-reduce of %zu floats (gradient bucket %d, at offset %zu)", op->count,
                 op->bucket, op->offset);
        break;
    case OP_FINALIZE:
        snprintf(out, size, "NCCL finalize");
        break;
    }
}

/* ---- ending the job: abort the communicator, then one line ---- */

static char guard_line[1536];

/* Runs while ncclCommAbort does: if that hangs, this rank still ends, with
 * its line (fatal_report_now names the rank and host), and the launcher ends
 * the others when it exits. */
static void *abort_guard(void *unused) {
    (void)unused;
    sleep(ABORT_GRACE_S);
    fatal_report_now("%s (and ncclCommAbort did not return in %d s)", guard_line, ABORT_GRACE_S);
    fatal_exit_now(LDM_EXIT_INTERNAL);
}

static void abort_communicator(comm_nccl *c, const char *line) {
    if (!c->comm) return;
    snprintf(guard_line, sizeof guard_line, "%s", line);
    pthread_t guard;
    if (pthread_create(&guard, NULL, abort_guard, NULL) == 0) pthread_detach(guard);
    /* Stops this rank's NCCL kernels and proxy threads, so that no GPU work is
     * left spinning on a peer that will never answer. */
    ncclCommAbort(c->comm);
    c->comm = NULL;
}

/* "<operation><problem>", problem starting with ": " or " did not ...". */
static __attribute__((noreturn, format(printf, 3, 4))) void end_job(comm_nccl *c, const nccl_op *op,
                                                                    const char *fmt, ...) {
    char what[256], problem[1024], line[1536];
    describe(c, op, what, sizeof what);
    va_list args;
    va_start(args, fmt);
    vsnprintf(problem, sizeof problem, fmt, args);
    va_end(args);
    snprintf(line, sizeof line, "%s%s", what, problem);
    abort_communicator(c, line);
    /* fatal.h names the rank and host itself for a rank other than 0 of
     * several; every NCCL line names them, so add them where it does not.
     * Without exit()'s teardown: a stream of this rank may still be held by
     * the collective that never ended, and the CUDA runtime's and NCCL's exit
     * handlers would wait on it. */
    if (comm_world_size() > 1 && comm_rank() != 0) fatal_internal_without_teardown("%s", line);
    fatal_internal_without_teardown("rank %d on %s: %s", comm_rank(), host_name(), line);
}

static __attribute__((noreturn)) void end_job_nccl(comm_nccl *c, const nccl_op *op, ncclResult_t result) {
    /* NCCL's own detail of the last error, on one line. */
    char detail[512] = "";
    const char *last = ncclGetLastError(c->comm);
    if (last) snprintf(detail, sizeof detail, "%s", last);
    for (char *p = detail; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    size_t n = strlen(detail);
    while (n > 0 && detail[n - 1] == ' ') detail[--n] = '\0';
    if (n > 0) end_job(c, op, ": %s (%s)", ncclGetErrorString(result), detail);
    end_job(c, op, ": %s", ncclGetErrorString(result));
}

static void cuda_ok(comm_nccl *c, const nccl_op *op, cudaError_t result, const char *call) {
    if (result != cudaSuccess) end_job(c, op, ": %s failed: %s", call, cudaGetErrorString(result));
}
#define CUDA_OK(c, op, call) cuda_ok((c), (op), (call), #call)

/* ---- polling ---- */

static void pause_between_polls(double waited) {
    if (waited < SPIN_S) {
        sched_yield();
        return;
    }
    struct timespec nap = {0, POLL_SLEEP_NS};
    nanosleep(&nap, NULL);
}

static void check_time_limit(comm_nccl *c, const nccl_op *op, double started) {
    if (op->kind == OP_INIT) {
        if (now_s() - started > c->init_timeout_s)
            end_job(c, op,
                    " did not complete in %g s (a rank did not start or cannot reach the others; "
                    "LDM_NCCL_INIT_TIMEOUT_S sets the limit)",
                    c->init_timeout_s);
        return;
    }
    if (now_s() - started > c->timeout_s)
        end_job(c, op,
                " did not complete in %g s (a rank stopped taking part, or the network is stuck; "
                "LDM_NCCL_TIMEOUT_S sets the limit)",
                c->timeout_s);
}

/* The communicator's state: ncclSuccess, or ncclInProgress while a
 * non-blocking call is being carried out; an error ends the job. */
static ncclResult_t comm_state(comm_nccl *c, const nccl_op *op) {
    ncclResult_t state = ncclSuccess;
    ncclResult_t result = ncclCommGetAsyncError(c->comm, &state);
    if (result != ncclSuccess) end_job_nccl(c, op, result);
    if (state != ncclSuccess && state != ncclInProgress) end_job_nccl(c, op, state);
    return state;
}

/* After a call on the non-blocking communicator returned `result`: waits until
 * NCCL has carried it out (ncclInProgress turns into ncclSuccess). Until then
 * NCCL allows no other call on the communicator and no work on its stream. */
static void settle(comm_nccl *c, ncclResult_t result, const nccl_op *op, double started) {
    if (result == ncclSuccess) return;
    if (result != ncclInProgress) end_job_nccl(c, op, result);
    while (comm_state(c, op) == ncclInProgress) {
        check_time_limit(c, op, started);
        pause_between_polls(now_s() - started);
    }
}

/* Waits on the host until `done` (recorded after a collective) has completed,
 * watching the communicator for errors and the clock for the limit. */
static void wait_event(comm_nccl *c, cudaEvent_t done, const nccl_op *op, double started) {
    for (;;) {
        cudaError_t query = cudaEventQuery(done);
        if (query == cudaSuccess) return;
        if (query != cudaErrorNotReady) end_job(c, op, ": CUDA error while waiting for it: %s", cudaGetErrorString(query));
        /* "Not ready" is no error: keep it away from the cudaGetLastError
         * checks that follow kernel launches. */
        if (cudaPeekAtLastError() == cudaErrorNotReady) (void)cudaGetLastError();
        comm_state(c, op);
        check_time_limit(c, op, started);
        pause_between_polls(now_s() - started);
    }
}

/* In place, on the communication stream; returns once NCCL has queued it. */
static void launch_allreduce(comm_nccl *c, float *data, size_t count, const nccl_op *op, double started) {
    settle(c, ncclAllReduce(data, data, count, ncclFloat32, ncclAvg, c->comm, c->stream), op, started);
}

/* ---- set-up ---- */

static double time_limit_from_env(const char *variable, double default_s) {
    const char *text = getenv(variable);
    if (!text || !text[0]) return default_s;
    char *end = NULL;
    double limit = strtod(text, &end);
    if (end == text || *end != '\0' || !isfinite(limit) || !(limit > 0.0))
        fatal_input("%s=%s: expected a time limit in seconds, above 0", variable, text);
    return limit;
}

/* Two ranks on one host with the same GPU (PCI bus id) would make NCCL fail
 * or hang: every rank checks the gathered table, so all agree, and rank 0's
 * line (naming the host) is the one printed. */
static void check_one_gpu_per_rank(const char *bus_ids, int world) {
    for (int r = 1; r < world; r++)
        for (int s = 0; s < r; s++) {
            const char *host = comm_host(r);
            if (strcmp(host, comm_host(s)) != 0 || strcmp(bus_ids + (size_t)r * BUS_ID_BYTES,
                                                         bus_ids + (size_t)s * BUS_ID_BYTES) != 0)
                continue;
            int ranks = 0, gpus = 0;
            for (int q = 0; q < world; q++) {
                if (strcmp(comm_host(q), host) != 0) continue;
                ranks++;
                int seen = 0;
                for (int p = 0; p < q && !seen; p++)
                    seen = strcmp(comm_host(p), host) == 0 &&
                           strcmp(bus_ids + (size_t)p * BUS_ID_BYTES, bus_ids + (size_t)q * BUS_ID_BYTES) == 0;
                gpus += !seen;
            }
            fatal_input("host %s has %d ranks but %d GPU%s for them (ranks %d and %d would share GPU %s); "
                        "NCCL needs a GPU of its own for each rank: start at most %d rank%s on %s",
                        host, ranks, gpus, gpus == 1 ? "" : "s", s, r, bus_ids + (size_t)r * BUS_ID_BYTES, gpus,
                        gpus == 1 ? "" : "s", host);
        }
}

/* GPU comm_local_rank(), modulo the GPUs this rank sees (one each, when the
 * launcher gives every rank its own through CUDA_VISIBLE_DEVICES). */
static int choose_device(comm_nccl *c) {
    int visible = 0;
    cudaError_t result = cudaGetDeviceCount(&visible);
    if (result != cudaSuccess || visible == 0)
        fatal_input("no CUDA device for rank %d on host %s (%s): NCCL needs a GPU for each rank", c->rank,
                    host_name(), result != cudaSuccess ? cudaGetErrorString(result) : "none visible");
    int device = comm_local_rank() % visible;
    char mine[BUS_ID_BYTES];
    memset(mine, 0, sizeof mine);
    const nccl_op op = {OP_INIT, 0, 0, 0};
    CUDA_OK(c, &op, cudaDeviceGetPCIBusId(mine, BUS_ID_BYTES - 1, device));
    char *all = xcalloc((size_t)c->world, BUS_ID_BYTES);
    comm_allgather(mine, BUS_ID_BYTES, all);
    check_one_gpu_per_rank(all, c->world);
    free(all);
    return device;
}

comm_nccl *comm_nccl_create(void) {
    comm_nccl *c = xcalloc(1, sizeof *c);
    c->rank = comm_rank();
    c->world = comm_world_size();
    c->timeout_s = time_limit_from_env("LDM_NCCL_TIMEOUT_S", DEFAULT_TIMEOUT_S);
    c->init_timeout_s = time_limit_from_env("LDM_NCCL_INIT_TIMEOUT_S", DEFAULT_INIT_TIMEOUT_S);
    c->device = choose_device(c);
    const nccl_op op = {OP_INIT, 0, 0, 0};
    CUDA_OK(c, &op, cudaSetDevice(c->device));
    int least = 0, greatest = 0;
    CUDA_OK(c, &op, cudaDeviceGetStreamPriorityRange(&least, &greatest));
    CUDA_OK(c, &op, cudaStreamCreateWithPriority(&c->stream, cudaStreamNonBlocking, greatest));
    CUDA_OK(c, &op, cudaEventCreateWithFlags(&c->whole_ready, cudaEventDisableTiming));
    CUDA_OK(c, &op, cudaEventCreateWithFlags(&c->whole_done, cudaEventDisableTiming));

    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (c->rank == 0) {
        ncclResult_t result = ncclGetUniqueId(&id);
        if (result != ncclSuccess) end_job_nccl(c, &op, result);
    }
    comm_broadcast(&id, sizeof id, 0);

    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0; /* every call returns at once; settle() and wait_event() poll */
    c->config = config;
    /* init's own limit (check_time_limit); each collective's clock starts
     * only when that collective is queued */
    double started = now_s();
    settle(c, ncclCommInitRankConfig(&c->comm, c->world, id, c->rank, &c->config), &op, started);
    return c;
}

void comm_nccl_destroy(comm_nccl *c) {
    if (!c) return;
    if (c->launched > 0)
        fatal_internal("comm_nccl_destroy with %d gradient bucket%s not waited for (comm_nccl_wait_all)", c->launched,
                       c->launched == 1 ? "" : "s");
    const nccl_op op = {OP_FINALIZE, 0, 0, 0};
    double started = now_s();
    /* Finalize flushes every collective issued and waits for the peers; only
     * then does destroy free the rest without blocking. */
    settle(c, ncclCommFinalize(c->comm), &op, started);
    ncclComm_t comm = c->comm;
    c->comm = NULL; /* nothing left to abort, whatever destroy says */
    ncclResult_t result = ncclCommDestroy(comm);
    if (result != ncclSuccess) end_job_nccl(c, &op, result);
    for (int b = 0; b < c->max_buckets; b++) {
        CUDA_OK(c, &op, cudaEventDestroy(c->buckets[b].ready));
        CUDA_OK(c, &op, cudaEventDestroy(c->buckets[b].done));
    }
    CUDA_OK(c, &op, cudaEventDestroy(c->whole_ready));
    CUDA_OK(c, &op, cudaEventDestroy(c->whole_done));
    CUDA_OK(c, &op, cudaStreamDestroy(c->stream));
    free(c->buckets);
    free(c);
}

int comm_nccl_device(const comm_nccl *c) { return c->device; }

ldm_stream comm_nccl_stream(const comm_nccl *c) { return c->stream; }

/* ---- the all-reduces ---- */

void comm_nccl_allreduce_mean(comm_nccl *c, float *buffer, size_t count, ldm_stream stream) {
    if (count == 0) return;
    const nccl_op op = {OP_ALLREDUCE, count, 0, 0};
    double started = now_s();
    CUDA_OK(c, &op, cudaEventRecord(c->whole_ready, stream));
    CUDA_OK(c, &op, cudaStreamWaitEvent(c->stream, c->whole_ready, 0));
    launch_allreduce(c, buffer, count, &op, started);
    CUDA_OK(c, &op, cudaEventRecord(c->whole_done, c->stream));
    wait_event(c, c->whole_done, &op, started);
    CUDA_OK(c, &op, cudaStreamWaitEvent(stream, c->whole_done, 0));
}

void comm_nccl_buckets_layout(comm_nccl *c, float *gradients, size_t count, int max_buckets,
                              ldm_stream compute_stream) {
    if (c->buckets) fatal_internal("comm_nccl_buckets_layout called twice");
    if (max_buckets < 1) fatal_internal("comm_nccl_buckets_layout: max_buckets %d (at least 1)", max_buckets);
    if (!gradients && count > 0) fatal_internal("comm_nccl_buckets_layout: no gradient arena for %zu floats", count);
    const nccl_op op = {OP_BUCKET, 0, 0, 0};
    c->buckets = xcalloc((size_t)max_buckets, sizeof *c->buckets);
    for (int b = 0; b < max_buckets; b++) {
        CUDA_OK(c, &op, cudaEventCreateWithFlags(&c->buckets[b].ready, cudaEventDisableTiming));
        CUDA_OK(c, &op, cudaEventCreateWithFlags(&c->buckets[b].done, cudaEventDisableTiming));
    }
    c->max_buckets = max_buckets;
    c->gradients = gradients;
    c->gradient_count = count;
    c->compute = compute_stream;
    c->launched = 0;
}

void comm_nccl_bucket_ready(comm_nccl *c, size_t offset, size_t count) {
    if (!c->buckets) fatal_internal("comm_nccl_bucket_ready before comm_nccl_buckets_layout");
    if (offset > c->gradient_count || count > c->gradient_count - offset)
        fatal_internal("gradient bucket of %zu floats at offset %zu is outside the %zu gradients", count, offset,
                       c->gradient_count);
    if (count == 0) return;
    if (c->launched == c->max_buckets)
        fatal_internal("more than %d gradient buckets in one step (max_buckets of comm_nccl_buckets_layout)",
                       c->max_buckets);
    for (int b = 0; b < c->launched; b++) {
        const bucket *other = &c->buckets[b];
        if (offset < other->offset + other->count && other->offset < offset + count)
            fatal_internal("gradient buckets [%zu, %zu) and [%zu, %zu) of one step overlap", other->offset,
                           other->offset + other->count, offset, offset + count);
    }
    bucket *b = &c->buckets[c->launched];
    const nccl_op op = {OP_BUCKET, count, offset, c->launched};
    b->offset = offset;
    b->count = count;
    b->launched_at = now_s();
    CUDA_OK(c, &op, cudaEventRecord(b->ready, c->compute));
    CUDA_OK(c, &op, cudaStreamWaitEvent(c->stream, b->ready, 0));
    launch_allreduce(c, c->gradients + offset, count, &op, b->launched_at);
    CUDA_OK(c, &op, cudaEventRecord(b->done, c->stream));
    c->launched++;
}

void comm_nccl_wait_all(comm_nccl *c, ldm_stream compute_stream) {
    for (int i = 0; i < c->launched; i++) {
        const bucket *b = &c->buckets[i];
        const nccl_op op = {OP_BUCKET, b->count, b->offset, i};
        wait_event(c, b->done, &op, b->launched_at);
    }
    if (c->launched > 0) {
        /* Already complete (waited for above), but the order is then CUDA's
         * too. The communication stream runs the buckets in the order
         * launched, so the last one's event covers them all. */
        const nccl_op op = {OP_BUCKET, c->buckets[c->launched - 1].count, c->buckets[c->launched - 1].offset,
                            c->launched - 1};
        CUDA_OK(c, &op, cudaStreamWaitEvent(compute_stream, c->buckets[c->launched - 1].done, 0));
    }
    c->launched = 0;
}

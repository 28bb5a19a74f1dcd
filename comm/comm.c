/* Communication over MPI (see comm.h): init and the rank layout (with every
 * rank's host name), the deterministic all-reduces (a reduce-scatter in rank
 * order and an all-gather), broadcast, gathers, barrier, flag agreement and
 * abort-all. The watch that ends every rank with a clear line when one is lost
 * is peer_watch.c's; comm starts, stops and quiets it. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* gethostname */
#endif
#include "comm.h"

#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fatal.h"
#include "peer_watch.h"

static int initialised;
/* Cached at init; the single-rank values otherwise. */
static int world_rank, world_size = 1, local_rank, local_size = 1;
/* Every rank's host name, HOST_NAME_BYTES each (world_size entries). */
#define HOST_NAME_BYTES 64
static char *host_names;

/* The all-reduces work on chunks of at most this many elements, so that every
 * MPI count is an int whatever the buffer's length, and the scratch is bounded:
 * (REDUCE_CHUNK + W) doubles, 8 MiB and a little. */
#define REDUCE_CHUNK ((int64_t)1 << 20)
/* A broadcast's pieces, in bytes (MPI counts are int). */
#define BROADCAST_PIECE ((size_t)1 << 30)

/* Per rank r, for the chunk being reduced: the slice of it that r owns
 * (slice_count[r] elements from slice_start[r]), and where the W copies of this
 * rank's slice land in the scratch (gather_start[r] = r * own slice length). */
static int *slice_count, *slice_start, *gather_count, *gather_start;
static void *reduce_scratch;

/* MPI_COMM_WORLD returns errors (MPI_ERRORS_RETURN) rather than aborting with
 * Open MPI's own banner, so that a failure ends in one of our lines. When a peer
 * is gone, the watch names it: give it a moment to do so before the generic line. */
static void mpi_check(int rc, const char *what) {
    if (rc == MPI_SUCCESS) return;
    peer_watch_wait_for_verdict();
    char text[MPI_MAX_ERROR_STRING] = "";
    int length = 0;
    if (MPI_Error_string(rc, text, &length) != MPI_SUCCESS) text[0] = '\0';
    fatal_internal("%s failed (MPI error %d: %s)", what, rc, text);
}

static void abort_all(int exit_code) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    int size = 1;
    if (!finalized) MPI_Comm_size(MPI_COMM_WORLD, &size);
    /* A single rank exits normally so that its exit code is exactly what it chose. */
    if (!finalized && size > 1) {
        /* The other ranks are about to be ended by MPI: they must not take that
         * for a lost rank and print lines of their own. */
        peer_watch_quiet();
        MPI_Abort(MPI_COMM_WORLD, exit_code);
    }
    exit(exit_code);
}

/* Every rank's host name (for messages), gathered once. */
static void gather_host_names(void) {
    char mine[HOST_NAME_BYTES];
    memset(mine, 0, sizeof mine);
    if (gethostname(mine, sizeof mine - 1) != 0) snprintf(mine, sizeof mine, "unknown-host");
    mine[HOST_NAME_BYTES - 1] = '\0';
    host_names = xcalloc((size_t)world_size, HOST_NAME_BYTES);
    mpi_check(MPI_Allgather(mine, HOST_NAME_BYTES, MPI_CHAR, host_names, HOST_NAME_BYTES, MPI_CHAR, MPI_COMM_WORLD),
              "MPI_Allgather");
    for (int r = 0; r < world_size; r++) host_names[(size_t)r * HOST_NAME_BYTES + HOST_NAME_BYTES - 1] = '\0';
}

const char *comm_host(int rank) {
    if (rank < 0 || rank >= world_size || !host_names) return "";
    return host_names + (size_t)rank * HOST_NAME_BYTES;
}

/* Whether a launcher started this process (mpirun, srun, MPICH's hydra): each
 * sets one of these in its ranks' environment. */
static int started_by_launcher(void) {
    static const char *const marks[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE", "PMI_FD",
                                        "SLURM_PROCID", "MPI_LOCALNRANKS", "HYDRA_CONTROL_FD"};
    for (size_t i = 0; i < sizeof marks / sizeof marks[0]; i++)
        if (getenv(marks[i])) return 1;
    return 0;
}

void comm_init(int *argc, char ***argv) {
    if (initialised) return;
    /* A single process started without a launcher (the demo's commands, sample,
     * every CLI test): Open MPI's singleton start runs a helper daemon and probes
     * its network transports, 0.4 s of every command (measured with an empty
     * MPI program). One process needs neither: no daemon, ob1 over the self
     * transport, 0.05 s. The user's own settings of these win (overwrite 0);
     * other MPIs ignore the names. */
    const int alone = !started_by_launcher();
    if (alone) {
        setenv("OMPI_MCA_ess_singleton_isolated", "1", 0);
        setenv("OMPI_MCA_pml", "ob1", 0);
    }
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        fatal_internal("MPI_Init_thread failed");
    initialised = 1;
    fatal_set_abort_hook(abort_all);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    mpi_check(MPI_Comm_rank(MPI_COMM_WORLD, &world_rank), "MPI_Comm_rank");
    mpi_check(MPI_Comm_size(MPI_COMM_WORLD, &world_size), "MPI_Comm_size");
    fatal_set_rank(world_rank, world_size);
    gather_host_names();
    fatal_set_host(comm_host(world_rank));

    /* The ranks sharing this host's memory: the local rank picks the GPU. */
    MPI_Comm host;
    mpi_check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world_rank, MPI_INFO_NULL, &host),
              "MPI_Comm_split_type");
    mpi_check(MPI_Comm_rank(host, &local_rank), "MPI_Comm_rank");
    mpi_check(MPI_Comm_size(host, &local_size), "MPI_Comm_size");
    mpi_check(MPI_Comm_free(&host), "MPI_Comm_free");

    slice_count = xcalloc((size_t)world_size, sizeof(int));
    slice_start = xcalloc((size_t)world_size, sizeof(int));
    gather_count = xcalloc((size_t)world_size, sizeof(int));
    gather_start = xcalloc((size_t)world_size, sizeof(int));

    const char *verbose = getenv("LDM_COMM_VERBOSE");
    if (verbose && strcmp(verbose, "0") != 0 && verbose[0]) {
        fprintf(stderr, "comm: rank %d/%d on %s: local rank %d/%d%s\n", world_rank, world_size, comm_host(world_rank),
                local_rank, local_size, alone ? " (started alone: no launcher, no MPI daemon)" : "");
        fflush(stderr);
    }
    peer_watch_world world = {.rank = world_rank, .world_size = world_size, .host = comm_host,
                              .broadcast = comm_broadcast, .allgather = comm_allgather, .all = comm_all};
    peer_watch_start(&world);
}

void comm_finalize(void) {
    if (!initialised) return;
    peer_watch_stop();
    fatal_set_abort_hook(NULL);
    fatal_set_rank(0, 1);
    fatal_set_host(NULL);
    MPI_Finalize();
    free(host_names);
    host_names = NULL;
    free(slice_count);
    free(slice_start);
    free(gather_count);
    free(gather_start);
    free(reduce_scratch);
    slice_count = slice_start = gather_count = gather_start = NULL;
    reduce_scratch = NULL;
    initialised = 0;
    world_rank = local_rank = 0;
    world_size = local_size = 1;
}

int comm_rank(void) { return world_rank; }
int comm_world_size(void) { return world_size; }
int comm_local_rank(void) { return local_rank; }
int comm_local_size(void) { return local_size; }

/* ---- deterministic all-reduce ---- */

typedef enum { REDUCE_MEAN_FLOAT, REDUCE_SUM_DOUBLE } reduce_kind;

/* Reduces one chunk of n <= REDUCE_CHUNK elements in place. Rank r owns a
 * contiguous slice (the first n % W ranks one element more); every rank sends
 * each owner its part of the owner's slice (MPI_Alltoallv), the owner adds the
 * W contributions in rank order in double, and the owners' slices are gathered
 * back to every rank (MPI_Allgatherv). Each element is thus computed once, by a
 * fixed rule, and copied: identical bits everywhere, and the same per-element
 * rule whatever the chunking, so the result does not depend on the count either. */
static void reduce_chunk(void *chunk, int n, reduce_kind kind) {
    const int W = world_size;
    const int base = n / W, extra = n % W;
    for (int r = 0; r < W; r++) {
        slice_count[r] = base + (r < extra);
        slice_start[r] = r * base + (r < extra ? r : extra);
    }
    const int own = slice_count[world_rank];
    for (int r = 0; r < W; r++) {
        gather_count[r] = own;
        gather_start[r] = r * own;
    }
    MPI_Datatype type = kind == REDUCE_MEAN_FLOAT ? MPI_FLOAT : MPI_DOUBLE;
    mpi_check(MPI_Alltoallv(chunk, slice_count, slice_start, type, reduce_scratch, gather_count, gather_start,
                            type, MPI_COMM_WORLD),
              "MPI_Alltoallv");

    const int start = slice_start[world_rank];
    if (kind == REDUCE_MEAN_FLOAT) {
        const float *parts = reduce_scratch;
        float *out = (float *)chunk + start;
#pragma omp parallel for schedule(static) if (own > 65536)
        for (int j = 0; j < own; j++) {
            double sum = 0.0;
            for (int r = 0; r < W; r++) sum += (double)parts[(size_t)r * own + j];
            out[j] = (float)(sum / W);
        }
    } else {
        const double *parts = reduce_scratch;
        double *out = (double *)chunk + start;
#pragma omp parallel for schedule(static) if (own > 65536)
        for (int j = 0; j < own; j++) {
            double sum = 0.0;
            for (int r = 0; r < W; r++) sum += parts[(size_t)r * own + j];
            out[j] = sum;
        }
    }
    mpi_check(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, chunk, slice_count, slice_start, type,
                             MPI_COMM_WORLD),
              "MPI_Allgatherv");
}

static void allreduce(void *buffer, int64_t count, reduce_kind kind) {
    if (count < 0) fatal_internal("all-reduce of a negative count (%lld)", (long long)count);
    if (world_size == 1) return; /* the mean and the sum of one rank are its own values */
    /* Sized for the largest chunk: each rank receives W copies of a slice of at
     * most ceil(REDUCE_CHUNK / W) elements. */
    if (!reduce_scratch) reduce_scratch = xmalloc((size_t)(REDUCE_CHUNK + world_size) * sizeof(double));
    const size_t elem = kind == REDUCE_MEAN_FLOAT ? sizeof(float) : sizeof(double);
    for (int64_t done = 0; done < count; done += REDUCE_CHUNK) {
        int64_t n = count - done < REDUCE_CHUNK ? count - done : REDUCE_CHUNK;
        reduce_chunk((char *)buffer + (size_t)done * elem, (int)n, kind);
    }
}

void comm_allreduce_mean(float *buffer, int64_t count) { allreduce(buffer, count, REDUCE_MEAN_FLOAT); }

void comm_allreduce_sum_double(double *buffer, int64_t count) { allreduce(buffer, count, REDUCE_SUM_DOUBLE); }

/* ---- the rest ---- */

void comm_broadcast(void *data, size_t bytes, int root) {
    if (root < 0 || root >= world_size)
        fatal_internal("broadcast from rank %d, but there are %d ranks", root, world_size);
    if (world_size == 1) return;
    for (size_t done = 0; done < bytes; done += BROADCAST_PIECE) {
        size_t n = bytes - done < BROADCAST_PIECE ? bytes - done : BROADCAST_PIECE;
        mpi_check(MPI_Bcast((char *)data + done, (int)n, MPI_BYTE, root, MPI_COMM_WORLD), "MPI_Bcast");
    }
}

void comm_gather(const void *data, size_t bytes, void *gathered, int root) {
    if (root < 0 || root >= world_size)
        fatal_internal("gather to rank %d, but there are %d ranks", root, world_size);
    if (bytes > INT_MAX) fatal_internal("gather of %zu bytes per rank", bytes);
    if (world_size == 1) {
        memmove(gathered, data, bytes);
        return;
    }
    mpi_check(MPI_Gather(data, (int)bytes, MPI_BYTE, gathered, (int)bytes, MPI_BYTE, root, MPI_COMM_WORLD),
              "MPI_Gather");
}

void comm_allgather(const void *data, size_t bytes, void *gathered) {
    if (bytes > INT_MAX) fatal_internal("all-gather of %zu bytes per rank", bytes);
    if (world_size == 1) {
        memmove(gathered, data, bytes);
        return;
    }
    mpi_check(MPI_Allgather(data, (int)bytes, MPI_BYTE, gathered, (int)bytes, MPI_BYTE, MPI_COMM_WORLD),
              "MPI_Allgather");
}

void comm_barrier(void) {
    if (world_size > 1) mpi_check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
}

static int agree(int flag, MPI_Op op) {
    int mine = flag != 0, agreed = mine;
    if (world_size > 1) mpi_check(MPI_Allreduce(&mine, &agreed, 1, MPI_INT, op, MPI_COMM_WORLD), "MPI_Allreduce");
    return agreed;
}

int comm_any(int flag) { return agree(flag, MPI_LOR); }
int comm_all(int flag) { return agree(flag, MPI_LAND); }

void comm_abort(int exit_code) { abort_all(exit_code); }

void comm_set_timeout(double seconds) { peer_watch_set_timeout(seconds); }

/* Communication over MPI (see comm.h). */
#include "comm.h"

#include <mpi.h>
#include <stdlib.h>

#include "fatal.h"

static int initialised;

static void abort_all(int exit_code) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    int size = 1;
    if (!finalized) MPI_Comm_size(MPI_COMM_WORLD, &size);
    /* A single rank exits normally so that its exit code is exactly what it chose. */
    if (!finalized && size > 1) MPI_Abort(MPI_COMM_WORLD, exit_code);
    exit(exit_code);
}

void comm_init(int *argc, char ***argv) {
    if (initialised) return;
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        fatal_internal("MPI_Init_thread failed");
    initialised = 1;
    fatal_set_abort_hook(abort_all);
}

void comm_finalize(void) {
    if (!initialised) return;
    fatal_set_abort_hook(NULL);
    MPI_Finalize();
    initialised = 0;
}

int comm_rank(void) {
    int rank = 0;
    if (initialised) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    return rank;
}

int comm_world_size(void) {
    int size = 1;
    if (initialised) MPI_Comm_size(MPI_COMM_WORLD, &size);
    return size;
}

void comm_abort(int exit_code) { abort_all(exit_code); }

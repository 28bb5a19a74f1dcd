/* Fatal errors: the one way a failure ends the program.
 * fatal_input() is for bad user input (configs, flags, data files, checkpoints):
 * one line "ldm: error: ..." on stderr and exit status 2 on every rank.
 * fatal_internal() is for failures that are not the user's fault (out of memory,
 * I/O errors, library errors): exit status 1.
 * Once MPI is up, both end every rank (MPI_Abort), never leaving a rank hanging.
 * Under several ranks a line from a rank other than 0 says which rank and host
 * it comes from: "ldm: error: rank 3 on node07: ...". */
#ifndef LDM_FATAL_H
#define LDM_FATAL_H

#include <stddef.h>

#define LDM_EXIT_BAD_INPUT 2
#define LDM_EXIT_INTERNAL 1

__attribute__((noreturn, format(printf, 1, 2))) void fatal_input(const char *fmt, ...);
__attribute__((noreturn, format(printf, 1, 2))) void fatal_internal(const char *fmt, ...);
/* fatal_internal for a rank whose GPU may still hold work that never ends (an
 * aborted NCCL collective): the same line and the same end of every rank, but
 * through _exit, without exit()'s handlers, whose teardown of the CUDA runtime
 * and NCCL would wait on that work. */
__attribute__((noreturn, format(printf, 1, 2))) void fatal_internal_without_teardown(const char *fmt, ...);
/* fatal_input the same way, without exit()'s handlers: for a rank whose HDF5
 * file could not be written (a full disk), which HDF5's own clean-up at exit
 * would try to close again and crash on. */
__attribute__((noreturn, format(printf, 1, 2))) void fatal_input_without_teardown(const char *fmt, ...);

/* Called by comm once MPI is initialised, so that fatal errors abort every rank. */
void fatal_set_abort_hook(void (*abort_all)(int exit_code));
/* Called by comm with this rank's place. A failing rank other than 0 waits a
 * moment before it reports: when every rank meets the same bad input, rank 0's
 * line is the only one printed (its abort ends the others first), and a rank
 * that fails alone is named in its line. */
void fatal_set_rank(int rank, int world_size);
/* Called by comm with this host's name, for the lines above (NULL: none). */
void fatal_set_host(const char *host);

/* For comm's watch of its peers, from any thread, when another rank is gone
 * (no MPI: the job's communication is broken). fatal_report_now() prints one
 * line "ldm: error: rank R on HOST: ..." at once, naming this rank whatever it
 * is; fatal_exit_now() flushes stdout, removes the temporaries and _exits. */
__attribute__((format(printf, 1, 2))) void fatal_report_now(const char *fmt, ...);
__attribute__((noreturn)) void fatal_exit_now(int exit_code);

/* Files being written under a temporary name: removed by this rank if it ends
 * through fatal_input/fatal_internal before they are renamed into place, so a
 * failed run leaves no partial file behind (a rank killed from outside may
 * still leave one, always under its temporary name). */
void fatal_remove_on_failure(const char *path);
void fatal_forget_removal(const char *path);

/* Allocation at start-up (layout of arenas, tables); exits on failure. */
void *xmalloc(size_t bytes);
void *xcalloc(size_t count, size_t size);
char *xstrdup(const char *text);

#endif

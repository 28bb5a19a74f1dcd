/* Communication between ranks: one small API over MPI (and NCCL in the GPU
 * issue). Init (also without mpirun: a single rank), rank, world size, local
 * rank and size on this host, the all-reduces that data-parallel training needs,
 * broadcast, barrier, agreement on flags, and abort-all.
 *
 * Every function also works before comm_init (or in a program that never calls
 * it): there is then one rank, and the collectives return at once with the
 * single-rank result. Collectives must be called by every rank, in the same
 * order, with the same count and root.
 *
 * Abort with a message: fatal_input() and fatal_internal() (fatal.h) print one
 * line "ldm: error: ..." and, once comm_init has run, end every rank through
 * MPI_Abort; comm_abort() ends every rank without a message.
 *
 * A lost rank (its process killed or crashed, its host gone) ends every other
 * rank promptly, each with one line naming the lost rank and its host:
 *   ldm: error: rank 0 on node01: lost rank 2 on node02 (...); ending the job
 * MPI itself names nobody to the survivors (mpirun kills them or a collective
 * fails or hangs), so comm keeps its own watch, started at init (peer_watch.h:
 * TCP connections between the ranks; no step pays anything for it). A host
 * that vanished silently is noticed in ~11 s. Each survivor prints its line at
 * once, leaves the launcher (mpirun, srun --kill-on-bad-exit) 10 s to end the
 * job, and then exits with status 1 itself. LDM_COMM_WATCH=0 turns it off
 * (then mpirun alone ends the job, naming the lost rank in its own output).
 * If the ranks cannot connect to each other for it, rank 0 warns and the job
 * runs without the watch. A rank that is stopped rather than gone (SIGSTOP, a
 * frozen VM: its connections stay open) is noticed by its silence: every
 * rank's watch sends a heartbeat each second, and a rank silent for longer
 * than comm_set_timeout's limit (comm.timeout_s, default 300 s) is named by
 * its neighbours the same way:
 *   ldm: error: rank 0 on node01: rank 2 on node02 gave no sign of life for 300 s (...); ending the job
 *
 * MPI_COMM_WORLD returns its errors (MPI_ERRORS_RETURN) rather than aborting
 * with Open MPI's banner: a failed call in comm ends in one of our lines (the
 * watch's, when a rank was lost). Code that calls MPI itself must check.
 *
 * LDM_COMM_VERBOSE=1: each rank prints its place at init, one line on stderr
 *   comm: rank R/W on HOST: local rank L/S
 *
 * Determinism: the all-reduces give bit-identical results on every rank and on
 * every run, whatever algorithm MPI would choose: each element's sum is taken in
 * double, in rank order 0, 1, ..., W-1, by the one rank that owns the element,
 * and the owner's result is copied to every rank (a reduce-scatter followed by
 * an all-gather, written with MPI_Alltoallv and MPI_Allgatherv). MPI_Allreduce
 * with MPI_SUM makes no such promise: algorithms such as recursive doubling add
 * in a different order on different ranks, so replicas could drift apart bit by
 * bit. */
#ifndef LDM_COMM_H
#define LDM_COMM_H

#include <stddef.h>
#include <stdint.h>

void comm_init(int *argc, char ***argv);
void comm_finalize(void);
int comm_rank(void);
int comm_world_size(void);
/* This rank's index among the ranks on the same host (the GPU it uses) and the
 * number of ranks on this host (MPI_COMM_TYPE_SHARED), computed at init. */
int comm_local_rank(void);
int comm_local_size(void);
/* The host name (gethostname) of a rank, learnt at init; "" for a rank out of
 * range. For messages that name where a rank runs. */
const char *comm_host(int rank);

/* In place: buffer[i] = (float)((sum over ranks r in order of (double)x_r[i]) / W).
 * The double sum of W floats is exact unless their exponents span more than about
 * 29 - log2(W) binary orders, so the result is the true mean to float rounding
 * (no error grows with W as a float sum's would). Any count (also above INT_MAX: it is split into
 * chunks). Scratch memory (a few MiB) is allocated on the first multi-rank call
 * and kept until comm_finalize, so that training steps allocate nothing. */
void comm_allreduce_mean(float *buffer, int64_t count);
/* In place: buffer[i] = sum over ranks r in order of x_r[i] (double; for loss
 * statistics). Same determinism and chunking as comm_allreduce_mean. */
void comm_allreduce_sum_double(double *buffer, int64_t count);
/* Copies `bytes` bytes at data on rank root to data on every rank (any size). */
void comm_broadcast(void *data, size_t bytes, int root);
/* Rank root receives every rank's `bytes` bytes, in rank order, at gathered
 * (world size x bytes; ignored on other ranks). bytes must fit an int. */
void comm_gather(const void *data, size_t bytes, void *gathered, int root);
/* Every rank receives every rank's `bytes` bytes, in rank order, at gathered
 * (world size x bytes). bytes must fit an int. */
void comm_allgather(const void *data, size_t bytes, void *gathered);
void comm_barrier(void);
/* Agreement on flags (stop, skip a step): 1 when flag is non-zero on any rank /
 * on every rank, else 0; every rank gets the same answer. */
int comm_any(int flag);
int comm_all(int flag);
/* Ends every rank with the exit code (no message; see fatal.h for that). */
void comm_abort(int exit_code);
/* The time limit for a stalled rank, in seconds (comm.timeout_s; see above). */
void comm_set_timeout(double seconds);

#endif

/* The watch of lost ranks: ends every other rank promptly, each with one line
 * naming the lost rank and its host, when a rank's process is killed or
 * crashes or its host is gone, or is stopped (comm.h shows the line).
 *
 * It exists because MPI itself names nobody to the survivors (mpirun kills them
 * or a collective fails or hangs). At init each rank opens one TCP connection
 * to the next rank in a ring (rank r to r+1, the last to 0), and a thread of
 * the watch's sleeps in poll() on its two. A rank that ends normally says
 * goodbye first (comm_finalize, or exit), one that ends the job through
 * fatal_* says so too; a connection that closes without either, or fails
 * TCP keepalive (~11 s for a host that vanished silently), means the rank on
 * the other side is gone. The rank that sees it passes the news on round the
 * ring (every survivor hears it), prints its line at once, leaves the launcher
 * (mpirun, srun --kill-on-bad-exit) 10 s to end the job, and then exits with
 * status 1 itself; no step pays anything for this. The connections use
 * whichever of each host's IPv4 addresses answers, checked by a token of the
 * job; if they cannot be made, rank 0 warns and the job runs without the watch.
 *
 * Used by comm only, which hands it what it needs of comm at start: the watch
 * sits below comm and calls nothing of comm's by name. */
#ifndef LDM_PEER_WATCH_H
#define LDM_PEER_WATCH_H

#include <stddef.h>

/* What the watch needs of comm: this rank's place, the host names for its
 * lines, and three collectives over every rank for its set-up. */
typedef struct {
    int rank, world_size;
    const char *(*host)(int rank);
    void (*broadcast)(void *data, size_t bytes, int root);
    void (*allgather)(const void *data, size_t bytes, void *gathered);
    int (*all)(int flag);
} peer_watch_world;

/* Collective, at the end of comm_init: every rank calls it. Does nothing with
 * one rank or with LDM_COMM_WATCH=0 on any rank. */
void peer_watch_start(const peer_watch_world *world);
/* A normal end (comm_finalize; also registered with atexit): goodbye to both
 * neighbours, then the connections close. */
void peer_watch_stop(void);
/* Before MPI_Abort: tells the ranks that MPI is about to end that this is on
 * purpose, so that none takes it for a lost rank. */
void peer_watch_quiet(void);
/* The time limit for a rank's silence (comm.timeout_s; 300 s until set): a
 * rank whose watch thread sends no heartbeat for that long (its process is
 * stopped or frozen) is reported by its neighbours as stalled, and the job
 * ends as for a lost rank. Any thread, any time; every rank should set the same. */
void peer_watch_set_timeout(double seconds);
/* After a failed MPI call: if a rank was lost, waits for the watch to print
 * the line that names it and end this rank. */
void peer_watch_wait_for_verdict(void);

#endif

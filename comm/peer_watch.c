/* The watch of lost ranks (see peer_watch.h): a ring of TCP connections
 * between the ranks, the thread that sleeps in poll() on this rank's two, and
 * the one line that names a lost rank before the job ends. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4, SOCK_CLOEXEC, TCP_USER_TIMEOUT */
#endif
#include "peer_watch.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fatal.h"
#include "monotonic_clock.h"

/* Rank r holds a TCP connection to each of its ring neighbours: "right"
 * (r + 1 mod W), which r connected to, and "left" (r - 1 mod W), which connected
 * to r (for W = 2 both are the other rank, over two connections). A thread
 * sleeps in poll() on the two and on a pipe that stops it. The connections
 * carry only 8-byte notes, each sent at most once: */
enum {
    NOTE_BYE = 'B',   /* the sender ends normally: stop watching it */
    NOTE_ACK = 'A',   /* the answer to a goodbye, from a rank that had not said its own */
    NOTE_QUIET = 'Q', /* the job is being ended on purpose (fatal_*, comm_abort) */
    NOTE_LOST = 'L',  /* rank N is lost (the news, passed on round the ring) */
    NOTE_ALIVE = 'H', /* a heartbeat, every heartbeat_ms until the sender says goodbye */
    NOTE_STALLED = 'S', /* rank N gave no sign of life for the time limit (the news, passed on) */
};
/* A connection ends once each end has sent one of BYE / ACK and received the
 * other's: then neither will send anything more, so the close finds nothing
 * unread (a close with unread data sends a reset, which the other end could
 * not tell from a crash). */
/* The handshake that makes a connection: the job's token (so that a stray
 * process listening on the same port number at a wrong address is never taken
 * for the neighbour) and the ranks at both ends. */
typedef struct {
    uint64_t token;
    int32_t from, to;
} watch_hello;
/* What each rank publishes (gathered to all): a listening port and up to
 * WATCH_ADDRESSES IPv4 addresses of its host, non-loopback ones first. */
#define WATCH_ADDRESSES 8
typedef struct {
    uint32_t address[WATCH_ADDRESSES]; /* network order; 0 = none */
    uint16_t port;                     /* network order */
    uint16_t unused;
} watch_card;
/* Limits of the set-up (a connect to one address; the whole) and keepalive:
 * probes after 5 s idle, every 2 s, 3 unanswered = gone (~11 s for a host that
 * vanished without closing its connections; the peer's kernel answers probes
 * however busy the rank is, so a slow rank is never taken for a lost one). */
#define WATCH_CONNECT_MS 2000
#define WATCH_SETUP_MS 30000
#define WATCH_KEEPIDLE_S 5
#define WATCH_KEEPINTVL_S 2
#define WATCH_KEEPCNT 3
/* After its line, how long a rank waits for the launcher to end it. */
#define WATCH_GRACE_MS 10000
/* A rank whose process is stopped (SIGSTOP, a frozen VM, a debugger) keeps its
 * connections, and its kernel answers keepalive: only its silence tells. Every
 * rank's watch thread sends a heartbeat on both connections every
 * heartbeat_ms; a neighbour silent for longer than the time limit
 * (comm.timeout_s, peer_watch_set_timeout) is reported as stalled. The thread
 * runs beside the rank's work, so a rank that is merely slow (a long step, a
 * long write) still beats. */
#define WATCH_DEFAULT_TIMEOUT_MS 300000
#define WATCH_HEARTBEAT_MAX_MS 1000
#define WATCH_HEARTBEAT_MIN_MS 100

enum { LEFT = 0, RIGHT = 1 };
/* How long a rank that ends waits for its neighbours' answers to its goodbye. */
#define WATCH_BYE_MS 3000

static struct {
    int fd[2];       /* -1 when not (or no longer) watched */
    int peer[2];     /* the rank at the other end */
    int said_bye[2], heard_bye[2]; /* BYE or ACK sent / received on a side (under send_lock) */
    int wake[2];     /* pipe: a byte written to wake[1] tells the thread this rank ends */
    pthread_t thread;
    int running;
    atomic_int quiet; /* the job ends on purpose: report nothing */
    atomic_int verdict; /* set once the thread has decided a rank is lost */
    pthread_mutex_t send_lock; /* notes come from the thread and from the main thread */
    atomic_int timeout_ms; /* silence after which a neighbour is stalled (0: the default) */
    peer_watch_world world; /* what comm told peer_watch_start */
    int bye_pause_ms; /* tests: LDM_TEST_WATCH_BYE_PAUSE_MS, a pause inside say_bye that widens its window */
} watch = {.fd = {-1, -1}, .wake = {-1, -1}, .send_lock = PTHREAD_MUTEX_INITIALIZER};

/* The watch counts in milliseconds, as poll's timeouts do. */
static double monotonic_ms(void) { return 1e3 * monotonic_seconds(); }

/* Sends a note on a side; the caller holds send_lock. */
static void send_note_locked(int side, char kind, int32_t rank) {
    /* Nothing follows a goodbye, not even a heartbeat (see the close below). */
    if (watch.fd[side] >= 0 && !(kind == NOTE_ALIVE && watch.said_bye[side])) {
        unsigned char note[8] = {(unsigned char)kind};
        uint32_t r = htonl((uint32_t)rank);
        memcpy(note + 4, &r, 4);
        /* A peer already gone must not kill us with SIGPIPE. */
        ssize_t sent = send(watch.fd[side], note, sizeof note, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)sent;
    }
}

static void send_note(int side, char kind, int32_t rank) {
    pthread_mutex_lock(&watch.send_lock);
    send_note_locked(side, kind, rank);
    pthread_mutex_unlock(&watch.send_lock);
}

/* Says goodbye on a side (BYE, or ACK when answering one), once. Marked and
 * sent under one hold of the lock: a side marked as said is a side whose note
 * is on its way, so the watch thread, which closes a side once it has heard the
 * other end's goodbye and this end's is said, never closes it before this
 * end's goodbye was sent (the neighbour would read a close with no goodbye
 * and report this rank lost). */
static void say_bye(int side, char kind) {
    pthread_mutex_lock(&watch.send_lock);
    if (!watch.said_bye[side]) {
        watch.said_bye[side] = 1;
        if (watch.bye_pause_ms > 0) usleep((useconds_t)watch.bye_pause_ms * 1000);
        send_note_locked(side, kind, watch.world.rank);
    }
    pthread_mutex_unlock(&watch.send_lock);
}

static int said_bye_on(int side) {
    pthread_mutex_lock(&watch.send_lock);
    int said = watch.said_bye[side];
    pthread_mutex_unlock(&watch.send_lock);
    return said;
}

/* Closes a side whose goodbyes are both done. */
static void close_side(int side) {
    pthread_mutex_lock(&watch.send_lock);
    if (watch.fd[side] >= 0) close(watch.fd[side]);
    watch.fd[side] = -1;
    pthread_mutex_unlock(&watch.send_lock);
}

static __attribute__((noreturn)) void report_lost(int lost, int from_side) {
    atomic_store(&watch.verdict, 1);
    /* First pass the news on, so that the next rank reads it rather than
     * taking this rank's end for its own loss. */
    send_note(1 - from_side, NOTE_LOST, lost);
    fatal_report_now("lost rank %d on %s (its process ended or its host cannot be reached); ending the job", lost,
                     watch.world.host(lost));
    /* The launcher ends the job now (mpirun on a process that died, srun with
     * --kill-on-bad-exit); this rank leaves it the time to, because an exit
     * of its own could make mpirun start its shutdown while a daemon it cannot
     * reach still holds it (a host cut off: Open MPI then waits for its own
     * keepalive, see README). Then it ends anyway. Its connections stay open
     * meanwhile, so no other rank takes it for lost. */
    for (int i = 0; i < WATCH_GRACE_MS / 100; i++) usleep(100000);
    fatal_exit_now(LDM_EXIT_INTERNAL);
}

/* A neighbour silent for longer than the time limit: the same end as a lost
 * rank, with a line that says what was seen. */
static __attribute__((noreturn)) void report_stalled(int stalled, int from_side, double silent_ms) {
    atomic_store(&watch.verdict, 1);
    send_note(1 - from_side, NOTE_STALLED, stalled);
    /* The stalled rank reads it first if it runs again (the launcher wakes it
     * with SIGCONT to end it), before any connection it finds closed. */
    send_note(from_side, NOTE_STALLED, stalled);
    fatal_report_now("rank %d on %s gave no sign of life for %.0f s (comm.timeout_s: its process is stopped or "
                     "frozen); ending the job", stalled, watch.world.host(stalled), silent_ms / 1000.0);
    for (int i = 0; i < WATCH_GRACE_MS / 100; i++) usleep(100000);
    fatal_exit_now(LDM_EXIT_INTERNAL);
}

static double timeout_ms_now(void) {
    int ms = atomic_load(&watch.timeout_ms);
    return ms > 0 ? ms : WATCH_DEFAULT_TIMEOUT_MS;
}

static void *watch_main(void *unused) {
    (void)unused;
    unsigned char note[2][8];
    size_t have[2] = {0, 0};
    double ending_deadline = 0; /* set when this rank ends: wait for the answers until then */
    /* When each side was last heard from, the last heartbeat sent, the last turn of this loop. */
    double heard[2], beat = 0, turn = monotonic_ms();
    heard[LEFT] = heard[RIGHT] = turn;
    for (;;) {
        if (ending_deadline && watch.fd[LEFT] < 0 && watch.fd[RIGHT] < 0) return NULL;
        const double limit_ms = timeout_ms_now();
        double heartbeat_ms = limit_ms / 5;
        if (heartbeat_ms > WATCH_HEARTBEAT_MAX_MS) heartbeat_ms = WATCH_HEARTBEAT_MAX_MS;
        if (heartbeat_ms < WATCH_HEARTBEAT_MIN_MS) heartbeat_ms = WATCH_HEARTBEAT_MIN_MS;
        double now = monotonic_ms();
        /* This thread itself did not run for a long while (this rank was the
         * stopped one, or the machine starved it): the silence it measured is
         * its own, so it starts counting again. */
        if (now - turn > limit_ms / 2) heard[LEFT] = heard[RIGHT] = now;
        turn = now;
        int timeout = (int)heartbeat_ms;
        if (ending_deadline) {
            timeout = (int)(ending_deadline - now);
            if (timeout <= 0) return NULL;
        } else {
            if (now - beat >= heartbeat_ms) {
                send_note(LEFT, NOTE_ALIVE, watch.world.rank);
                send_note(RIGHT, NOTE_ALIVE, watch.world.rank);
                beat = now;
            }
            for (int side = LEFT; side <= RIGHT; side++)
                if (watch.fd[side] >= 0 && !watch.heard_bye[side] && now - heard[side] > limit_ms &&
                    !atomic_load(&watch.quiet))
                    report_stalled(watch.peer[side], side, now - heard[side]);
        }
        struct pollfd p[3] = {{.fd = ending_deadline ? -1 : watch.wake[0], .events = POLLIN},
                              {.fd = watch.fd[LEFT], .events = POLLIN},
                              {.fd = watch.fd[RIGHT], .events = POLLIN}};
        int ready = poll(p, 3, timeout);
        if (ready < 0 && errno != EINTR) return NULL;
        if (ready <= 0) continue;
        if (p[0].revents) ending_deadline = monotonic_ms() + WATCH_BYE_MS;
        for (int side = LEFT; side <= RIGHT; side++) {
            if (!p[1 + side].revents || watch.fd[side] < 0) continue;
            ssize_t n = recv(watch.fd[side], note[side] + have[side], sizeof note[side] - have[side], MSG_DONTWAIT);
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) continue;
            if (n <= 0) { /* closed (0) or broken (reset, keepalive timeout) */
                if (atomic_load(&watch.quiet)) return NULL;
                /* After either end's goodbye a close is the expected end (this
                 * rank's goodbye may be said by the main thread before this
                 * thread has read the byte that wakes it). */
                if (ending_deadline || watch.heard_bye[side] || said_bye_on(side)) {
                    close_side(side);
                    continue;
                }
                report_lost(watch.peer[side], side);
            }
            heard[side] = monotonic_ms();
            have[side] += (size_t)n;
            if (have[side] < sizeof note[side]) continue;
            have[side] = 0;
            uint32_t r;
            memcpy(&r, note[side] + 4, 4);
            int32_t rank = (int32_t)ntohl(r);
            if (note[side][0] == NOTE_BYE || note[side][0] == NOTE_ACK) {
                watch.heard_bye[side] = 1;
                say_bye(side, NOTE_ACK); /* no-op if this rank already said its own */
                close_side(side);
            } else if (note[side][0] == NOTE_QUIET) {
                if (!atomic_exchange(&watch.quiet, 1)) send_note(1 - side, NOTE_QUIET, watch.world.rank);
                return NULL;
            } else if (note[side][0] == NOTE_LOST || note[side][0] == NOTE_STALLED) {
                if (atomic_load(&watch.quiet)) return NULL;
                /* This rank was the stalled one and runs again (a SIGCONT): the
                 * others have said so and are ending; it ends without a line. */
                if (rank == watch.world.rank) {
                    atomic_store(&watch.verdict, 1); /* a failed MPI call of the main thread waits for this */
                    fatal_exit_now(LDM_EXIT_INTERNAL);
                }
                const int named = rank >= 0 && rank < watch.world.world_size ? rank : watch.peer[side];
                if (note[side][0] == NOTE_STALLED) report_stalled(named, side, timeout_ms_now());
                report_lost(named, side);
            }
        }
    }
}

/* This host's IPv4 addresses, non-loopback first (interfaces that are up). */
static void my_addresses(uint32_t *out) {
    memset(out, 0, WATCH_ADDRESSES * sizeof *out);
    struct ifaddrs *list = NULL;
    if (getifaddrs(&list) != 0) return;
    int n = 0;
    for (int loopback = 0; loopback <= 1; loopback++)
        for (struct ifaddrs *a = list; a && n < WATCH_ADDRESSES; a = a->ifa_next) {
            if (!a->ifa_addr || a->ifa_addr->sa_family != AF_INET || !(a->ifa_flags & IFF_UP)) continue;
            if (!!(a->ifa_flags & IFF_LOOPBACK) != loopback) continue;
            out[n++] = ((struct sockaddr_in *)a->ifa_addr)->sin_addr.s_addr;
        }
    freeifaddrs(list);
}

/* Reads or writes exactly `bytes` on a non-blocking socket before the deadline. */
static int exchange(int fd, void *data, size_t bytes, int writing, double deadline) {
    size_t done = 0;
    while (done < bytes) {
        int left_ms = (int)(deadline - monotonic_ms());
        if (left_ms <= 0) return 0;
        struct pollfd p = {.fd = fd, .events = writing ? POLLOUT : POLLIN};
        if (poll(&p, 1, left_ms) <= 0) continue;
        ssize_t n = writing ? send(fd, (char *)data + done, bytes - done, MSG_NOSIGNAL)
                            : recv(fd, (char *)data + done, bytes - done, 0);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) continue;
        if (n <= 0) return 0;
        done += (size_t)n;
    }
    return 1;
}

static void keep_alive(int fd) {
    int on = 1, idle = WATCH_KEEPIDLE_S, interval = WATCH_KEEPINTVL_S, count = WATCH_KEEPCNT;
    unsigned int user_timeout = (WATCH_KEEPIDLE_S + WATCH_KEEPINTVL_S * WATCH_KEEPCNT) * 1000u;
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
    setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof user_timeout);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
}

/* Connects to the right neighbour: each of its addresses in turn until one
 * answers with the job's token and the right rank. Returns the socket or -1. */
static int connect_right(const watch_card *card, int right, uint64_t token, double deadline) {
    for (int i = 0; i < WATCH_ADDRESSES && card->address[i]; i++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) return -1;
        struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = card->port};
        to.sin_addr.s_addr = card->address[i];
        double until = monotonic_ms() + WATCH_CONNECT_MS;
        if (until > deadline) until = deadline;
        int ok = connect(fd, (struct sockaddr *)&to, sizeof to) == 0 || errno == EINPROGRESS;
        if (ok) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            int left_ms = (int)(until - monotonic_ms());
            int err = 0;
            socklen_t len = sizeof err;
            ok = left_ms > 0 && poll(&p, 1, left_ms) == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 &&
                 err == 0;
        }
        watch_hello hello = {.token = token, .from = watch.world.rank, .to = right}, reply;
        ok = ok && exchange(fd, &hello, sizeof hello, 1, until);
        /* The reply comes once the neighbour has accepted, which it does while
         * it waits for its own: give it the whole set-up time. */
        ok = ok && exchange(fd, &reply, sizeof reply, 0, deadline);
        if (ok && reply.token == token && reply.from == right && reply.to == watch.world.rank) return fd;
        close(fd);
    }
    return -1;
}

/* Accepts the left neighbour's connection (skipping strays) and answers it.
 * Runs while connect_right waits, on a thread of its own for the set-up. */
typedef struct {
    int listener, left;
    uint64_t token;
    double deadline;
    int fd; /* the result, -1 on failure */
} accept_job;

static void *accept_left(void *arg) {
    accept_job *job = arg;
    job->fd = -1;
    while (monotonic_ms() < job->deadline) {
        struct pollfd p = {.fd = job->listener, .events = POLLIN};
        int left_ms = (int)(job->deadline - monotonic_ms());
        if (left_ms <= 0 || poll(&p, 1, left_ms) <= 0) continue;
        int fd = accept4(job->listener, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) continue;
        watch_hello hello, reply = {.token = job->token, .from = watch.world.rank, .to = job->left};
        double until = monotonic_ms() + WATCH_CONNECT_MS;
        if (exchange(fd, &hello, sizeof hello, 0, until) && hello.token == job->token && hello.from == job->left &&
            hello.to == watch.world.rank && exchange(fd, &reply, sizeof reply, 1, until)) {
            job->fd = fd;
            return NULL;
        }
        close(fd);
    }
    return NULL;
}

/* Collective: every rank calls it at init. */
void peer_watch_start(const peer_watch_world *world) {
    watch.world = *world;
    const int world_rank = world->rank, world_size = world->world_size;
    if (world_size < 2) return;
    const char *setting = getenv("LDM_COMM_WATCH");
    int wanted = !(setting && strcmp(setting, "0") == 0);
    if (!watch.world.all(wanted)) return;

    /* A listening socket on every address, port chosen by the system. */
    watch_card mine = {0};
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_in any = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_ANY), .sin_port = 0};
    socklen_t len = sizeof any;
    int ok = listener >= 0 && bind(listener, (struct sockaddr *)&any, sizeof any) == 0 && listen(listener, 16) == 0 &&
             getsockname(listener, (struct sockaddr *)&any, &len) == 0;
    if (ok) {
        mine.port = any.sin_port;
        my_addresses(mine.address);
        ok = mine.address[0] != 0;
    }
    uint64_t token = 0;
    if (world_rank == 0) {
        FILE *random = fopen("/dev/urandom", "rb");
        if (!random || fread(&token, sizeof token, 1, random) != 1)
            token = (uint64_t)getpid() * 0x9e3779b97f4a7c15ull ^ (uint64_t)monotonic_ms();
        if (random) fclose(random);
    }
    watch.world.broadcast(&token, sizeof token, 0);
    watch_card *cards = xcalloc((size_t)world_size, sizeof *cards);
    watch.world.allgather(&mine, sizeof mine, cards);
    /* Every rank must be able to listen for its neighbour to connect. */
    ok = watch.world.all(ok);

    const int left = (world_rank + world_size - 1) % world_size, right = (world_rank + 1) % world_size;
    int fd_left = -1, fd_right = -1;
    if (ok) {
        double deadline = monotonic_ms() + WATCH_SETUP_MS;
        accept_job job = {.listener = listener, .left = left, .token = token, .deadline = deadline, .fd = -1};
        pthread_t acceptor;
        int threaded = pthread_create(&acceptor, NULL, accept_left, &job) == 0;
        if (threaded) {
            fd_right = connect_right(&cards[right], right, token, deadline);
            pthread_join(acceptor, NULL);
            fd_left = job.fd;
        }
    }
    if (listener >= 0) close(listener);
    free(cards);
    int connected = fd_left >= 0 && fd_right >= 0;
    /* Every rank or none: a half-watched ring would report ranks that merely
     * have no watch as lost. */
    if (!watch.world.all(connected)) {
        if (fd_left >= 0) close(fd_left);
        if (fd_right >= 0) close(fd_right);
        if (world_rank == 0) {
            fprintf(stderr, "ldm: warning: ranks could not connect to each other for the watch of lost ranks "
                            "(LDM_COMM_WATCH=0 skips it); a lost rank ends the job through mpirun only\n");
            fflush(stderr);
        }
        return;
    }
    keep_alive(fd_left);
    keep_alive(fd_right);
    watch.fd[LEFT] = fd_left;
    watch.fd[RIGHT] = fd_right;
    watch.peer[LEFT] = left;
    watch.peer[RIGHT] = right;
    watch.said_bye[LEFT] = watch.said_bye[RIGHT] = watch.heard_bye[LEFT] = watch.heard_bye[RIGHT] = 0;
    const char *pause = getenv("LDM_TEST_WATCH_BYE_PAUSE_MS");
    watch.bye_pause_ms = pause ? atoi(pause) : 0;
    atomic_store(&watch.quiet, 0);
    atomic_store(&watch.verdict, 0);
    if (pipe(watch.wake) != 0 || pthread_create(&watch.thread, NULL, watch_main, NULL) != 0)
        fatal_internal("cannot start the thread that watches for lost ranks");
    fcntl(watch.wake[0], F_SETFD, FD_CLOEXEC);
    fcntl(watch.wake[1], F_SETFD, FD_CLOEXEC);
    watch.running = 1;
    static int registered;
    if (!registered && atexit(peer_watch_stop) == 0) registered = 1;
}

/* A normal end (comm_finalize, or exit without it): goodbye to both
 * neighbours; the thread waits (a few seconds at most) for their answers, then
 * the connections close. */
void peer_watch_stop(void) {
    if (!watch.running) return;
    watch.running = 0;
    say_bye(LEFT, NOTE_BYE);
    say_bye(RIGHT, NOTE_BYE);
    char stop = 1;
    if (write(watch.wake[1], &stop, 1) == 1) pthread_join(watch.thread, NULL);
    close_side(LEFT);
    close_side(RIGHT);
    close(watch.wake[0]);
    close(watch.wake[1]);
    watch.wake[0] = watch.wake[1] = -1;
}

/* Before MPI_Abort: the ranks that MPI is about to end hear first that this is
 * on purpose (the note goes round the ring faster than mpirun's kill). */
void peer_watch_quiet(void) {
    if (!watch.running) return;
    if (!atomic_exchange(&watch.quiet, 1)) {
        send_note(LEFT, NOTE_QUIET, watch.world.rank);
        send_note(RIGHT, NOTE_QUIET, watch.world.rank);
        usleep(20000);
    }
}

void peer_watch_set_timeout(double seconds) {
    double ms = seconds * 1000.0;
    atomic_store(&watch.timeout_ms, ms >= 1 && ms < 2e9 ? (int)ms : 0);
}

/* After a failed MPI call: if a rank was lost, the watch has printed or is
 * about to print the line that names it, and ends this rank: wait for that
 * (a few seconds for a verdict, then as long as the watch takes). */
void peer_watch_wait_for_verdict(void) {
    if (!watch.running || atomic_load(&watch.quiet)) return;
    for (int i = 0; i < 50 && !atomic_load(&watch.verdict); i++) usleep(100000);
    while (atomic_load(&watch.verdict)) usleep(100000);
}

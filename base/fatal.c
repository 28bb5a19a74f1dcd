/* Fatal errors and start-up allocation helpers (see fatal.h). */
#include "fatal.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void (*abort_hook)(int exit_code);
static int fatal_rank, fatal_world_size = 1;
static char fatal_host[64];

/* Long enough for rank 0's abort to reach the other ranks of a job. */
#define FATAL_OTHER_RANK_DELAY_US 1500000

void fatal_set_rank(int rank, int world_size) {
    fatal_rank = rank;
    fatal_world_size = world_size;
}

void fatal_set_host(const char *host) {
    fatal_host[0] = '\0';
    if (host) snprintf(fatal_host, sizeof fatal_host, "%s", host);
}

/* Writes the whole line "ldm: error: [rank R on HOST: ]MESSAGE\n" with one
 * write: under mpirun, stderr is forwarded in the pieces it was written in, and
 * another process's output (Open MPI's own banners) could land between a
 * prefix and its message. Long messages are cut to the buffer. */
static void write_line(int with_rank, const char *fmt, va_list args) {
    char line[2048];
    int n;
    if (!with_rank)
        n = snprintf(line, sizeof line, "ldm: error: ");
    else if (fatal_host[0])
        n = snprintf(line, sizeof line, "ldm: error: rank %d on %s: ", fatal_rank, fatal_host);
    else
        n = snprintf(line, sizeof line, "ldm: error: rank %d: ", fatal_rank);
    if (n < 0) n = 0;
    if ((size_t)n < sizeof line - 1) {
        int m = vsnprintf(line + n, sizeof line - 1 - (size_t)n, fmt, args);
        if (m > 0) n += m;
    }
    if ((size_t)n > sizeof line - 2) n = (int)sizeof line - 2;
    line[n++] = '\n';
    fflush(stderr);
    for (size_t done = 0; done < (size_t)n;) {
        ssize_t w = write(STDERR_FILENO, line + done, (size_t)n - done);
        if (w <= 0) break;
        done += (size_t)w;
    }
}

#define FATAL_MAX_TEMPORARIES 8
static char *temporaries[FATAL_MAX_TEMPORARIES];
/* Files are written from more than one thread (checkpoints beside training). */
static pthread_mutex_t temporaries_lock = PTHREAD_MUTEX_INITIALIZER;

void fatal_remove_on_failure(const char *path) {
    pthread_mutex_lock(&temporaries_lock);
    for (int i = 0; i < FATAL_MAX_TEMPORARIES; i++)
        if (!temporaries[i]) {
            temporaries[i] = xstrdup(path);
            pthread_mutex_unlock(&temporaries_lock);
            return;
        }
    pthread_mutex_unlock(&temporaries_lock);
    fatal_internal("more than %d temporary files registered at once", FATAL_MAX_TEMPORARIES);
}

void fatal_forget_removal(const char *path) {
    pthread_mutex_lock(&temporaries_lock);
    for (int i = 0; i < FATAL_MAX_TEMPORARIES; i++)
        if (temporaries[i] && strcmp(temporaries[i], path) == 0) {
            free(temporaries[i]);
            temporaries[i] = NULL;
        }
    pthread_mutex_unlock(&temporaries_lock);
}

void fatal_set_abort_hook(void (*abort_all)(int exit_code)) { abort_hook = abort_all; }

/* without_teardown: _exit rather than exit(), and the abort hook (MPI_Abort,
 * which ends the job without MPI's own teardown) only when there are other
 * ranks to end (with one rank it would exit()). */
static __attribute__((noreturn)) void fatal_vexit(int code, int without_teardown, const char *fmt, va_list args) {
    if (fatal_world_size > 1 && fatal_rank != 0) usleep(FATAL_OTHER_RANK_DELAY_US);
    write_line(fatal_world_size > 1 && fatal_rank != 0, fmt, args);
    for (int i = 0; i < FATAL_MAX_TEMPORARIES; i++)
        if (temporaries[i]) unlink(temporaries[i]);
    if (without_teardown) {
        fflush(stdout);
        if (abort_hook && fatal_world_size > 1) abort_hook(code);
        _exit(code);
    }
    if (abort_hook) abort_hook(code);
    exit(code);
}

void fatal_report_now(const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    write_line(1, fmt, args);
    va_end(args);
}

void fatal_exit_now(int exit_code) {
    /* What this rank printed before stays in the output (progress lines). */
    fflush(stdout);
    for (int i = 0; i < FATAL_MAX_TEMPORARIES; i++)
        if (temporaries[i]) unlink(temporaries[i]);
    _exit(exit_code);
}

void fatal_input(const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    fatal_vexit(LDM_EXIT_BAD_INPUT, 0, fmt, args);
}

void fatal_internal(const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    fatal_vexit(LDM_EXIT_INTERNAL, 0, fmt, args);
}

void fatal_input_without_teardown(const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    fatal_vexit(LDM_EXIT_BAD_INPUT, 1, fmt, args);
}

void fatal_internal_without_teardown(const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    fatal_vexit(LDM_EXIT_INTERNAL, 1, fmt, args);
}

void *xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) fatal_internal("out of memory allocating %zu bytes", bytes);
    return p;
}

void *xcalloc(size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) fatal_internal("out of memory allocating %zu x %zu bytes", count, size);
    return p;
}

char *xstrdup(const char *text) {
    size_t n = strlen(text) + 1;
    char *p = xmalloc(n);
    memcpy(p, text, n);
    return p;
}

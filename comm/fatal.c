/* Fatal errors and start-up allocation helpers (see fatal.h). */
#include "fatal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void (*abort_hook)(int exit_code);
static int fatal_rank, fatal_world_size = 1;

/* Long enough for rank 0's abort to reach the other ranks of a job. */
#define FATAL_OTHER_RANK_DELAY_US 1500000

void fatal_set_rank(int rank, int world_size) {
    fatal_rank = rank;
    fatal_world_size = world_size;
}

#define FATAL_MAX_TEMPORARIES 8
static char *temporaries[FATAL_MAX_TEMPORARIES];

void fatal_remove_on_failure(const char *path) {
    for (int i = 0; i < FATAL_MAX_TEMPORARIES; i++)
        if (!temporaries[i]) {
            temporaries[i] = xstrdup(path);
            return;
        }
    fatal_internal("more than %d temporary files registered at once", FATAL_MAX_TEMPORARIES);
}

void fatal_forget_removal(const char *path) {
    for (int i = 0; i < FATAL_MAX_TEMPORARIES; i++)
        if (temporaries[i] && strcmp(temporaries[i], path) == 0) {
            free(temporaries[i]);
            temporaries[i] = NULL;
        }
}

void fatal_set_abort_hook(void (*abort_all)(int exit_code)) { abort_hook = abort_all; }

static __attribute__((noreturn)) void fatal_vexit(int code, const char *fmt, va_list args) {
    if (fatal_world_size > 1 && fatal_rank != 0) usleep(FATAL_OTHER_RANK_DELAY_US);
    if (fatal_world_size > 1 && fatal_rank != 0)
        fprintf(stderr, "ldm: error: rank %d: ", fatal_rank);
    else
        fputs("ldm: error: ", stderr);
    vfprintf(stderr, fmt, args);
    fputc('\n', stderr);
    fflush(stderr);
    for (int i = 0; i < FATAL_MAX_TEMPORARIES; i++)
        if (temporaries[i]) unlink(temporaries[i]);
    if (abort_hook) abort_hook(code);
    exit(code);
}

void fatal_input(const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    fatal_vexit(LDM_EXIT_BAD_INPUT, fmt, args);
}

void fatal_internal(const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    fatal_vexit(LDM_EXIT_INTERNAL, fmt, args);
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

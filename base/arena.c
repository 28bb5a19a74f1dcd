/* Memory arenas (see arena.h). */
#include "arena.h"

#include <stdlib.h>
#include <string.h>

#include "fatal.h"

void arena_begin_measure(arena *a) {
    a->base = NULL;
    a->used = 0;
    a->capacity = 0;
}

void arena_begin_place(arena *a, size_t bytes) {
    size_t rounded = (bytes + ARENA_ALIGNMENT - 1) / ARENA_ALIGNMENT * ARENA_ALIGNMENT;
    a->base = aligned_alloc(ARENA_ALIGNMENT, rounded ? rounded : ARENA_ALIGNMENT);
    if (!a->base) fatal_internal("out of memory: the model needs %.1f MiB", bytes / 1048576.0);
    memset(a->base, 0, rounded);
    a->used = 0;
    a->capacity = rounded;
}

static void *arena_take(arena *a, size_t bytes) {
    size_t start = (a->used + ARENA_ALIGNMENT - 1) / ARENA_ALIGNMENT * ARENA_ALIGNMENT;
    a->used = start + bytes;
    if (!a->base) return NULL;
    if (a->used > a->capacity) fatal_internal("arena layout overflow (%zu > %zu bytes)", a->used, a->capacity);
    return a->base + start;
}

float *arena_floats(arena *a, size_t count) { return arena_take(a, count * sizeof(float)); }
int *arena_ints(arena *a, size_t count) { return arena_take(a, count * sizeof(int)); }
uint16_t *arena_halves(arena *a, size_t count) { return arena_take(a, count * sizeof(uint16_t)); }

void arena_free(arena *a) {
    free(a->base);
    a->base = NULL;
    a->used = a->capacity = 0;
}

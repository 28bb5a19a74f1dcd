/* Memory arenas: every buffer of a model is carved out of one allocation made at
 * start-up. Layout code runs twice over the same arena calls: first with a
 * measuring arena (no memory, it only counts bytes), then on the real block, so the
 * size and the layout can never disagree. */
#ifndef LDM_ARENA_H
#define LDM_ARENA_H

#include <stddef.h>
#include <stdint.h>

#define ARENA_ALIGNMENT 64

typedef struct {
    unsigned char *base; /* NULL while measuring */
    size_t used;
    size_t capacity;
} arena;

/* A measuring arena: arena_floats returns NULL and only counts. */
void arena_begin_measure(arena *a);
/* Allocates a zeroed block of `bytes` (exits on failure) and starts placing into it. */
void arena_begin_place(arena *a, size_t bytes);
/* count floats, 64-byte aligned. */
float *arena_floats(arena *a, size_t count);
int *arena_ints(arena *a, size_t count);
/* count 16-bit values (bf16 or fp16 bits), 64-byte aligned. */
uint16_t *arena_halves(arena *a, size_t count);
void arena_free(arena *a);

#endif

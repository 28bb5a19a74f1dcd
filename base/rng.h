/* Deterministic random numbers. Randomness in ldm is a pure function of where it
 * is used (seed, purpose, step, rank, sample, ...): a stream is seeded by hashing
 * those keys, so no RNG history needs to be saved or replayed. */
#ifndef LDM_RNG_H
#define LDM_RNG_H

#include <stdint.h>

typedef struct {
    uint64_t state;
} rng_stream;

/* Mixes keys into a 64-bit value (splitmix64 finaliser chain). */
uint64_t rng_hash(uint64_t a, uint64_t b);
/* A stream for (seed, key1, key2). */
rng_stream rng_stream_for(uint64_t seed, uint64_t key1, uint64_t key2);
uint64_t rng_next_u64(rng_stream *s);
/* Uniform in [0, 1) with 24 random bits (exactly representable in float). */
float rng_uniform(rng_stream *s);
/* Standard normal (Box-Muller, computed in double). */
float rng_normal(rng_stream *s);

#endif

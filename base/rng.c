/* Deterministic random numbers (see rng.h): splitmix64 streams. */
#include "rng.h"

#include <math.h>

static uint64_t splitmix64_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

uint64_t rng_hash(uint64_t a, uint64_t b) {
    return splitmix64_mix(splitmix64_mix(a + 0x9e3779b97f4a7c15ULL) ^ (b + 0x632be59bd9b4e019ULL));
}

rng_stream rng_stream_for(uint64_t seed, uint64_t key1, uint64_t key2) {
    rng_stream s = {rng_hash(rng_hash(seed, key1), key2)};
    return s;
}

uint64_t rng_next_u64(rng_stream *s) {
    s->state += 0x9e3779b97f4a7c15ULL;
    return splitmix64_mix(s->state);
}

float rng_uniform(rng_stream *s) { return (float)(rng_next_u64(s) >> 40) * (1.0f / 16777216.0f); }

float rng_normal(rng_stream *s) {
    /* u1 in (0, 1] so the log is finite. */
    double u1 = ((double)(rng_next_u64(s) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    double u2 = (double)(rng_next_u64(s) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}

/* Sums of float rows in independent accumulators (value i into lane i % lanes),
 * combined in a fixed order: one chain of dependent additions, which the
 * compiler may not reorder, was the bottleneck of the norms that sum this way;
 * lanes written out vectorise, and their bits do not depend on the vector width
 * or the thread count. In double, LANES of them (GroupNorm, LayerNorm forward);
 * in float, a vector of FLOAT_LANES (LayerNorm backward). */
#ifndef LDM_LANE_SUMS_H
#define LDM_LANE_SUMS_H

#include <stddef.h>
#include <string.h>

enum { LANES = 8 };

/* The lanes' total, in a fixed order. */
static inline double lanes_total(const double acc[LANES]) {
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* acc[i % LANES] += x[i], i < n. (Local accumulators: through the pointers the
 * compiler would keep them in memory and not vectorise.) */
static inline void add_values(double acc[LANES], const float *x, size_t n) {
    double a[LANES];
    memcpy(a, acc, sizeof a);
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) a[l] += x[i + l];
    for (int l = 0; i < n; i++, l++) a[l] += x[i];
    memcpy(acc, a, sizeof a);
}

/* acc[i % LANES] += (x[i] - mu)^2. */
static inline void add_squares(double acc[LANES], const float *x, size_t n, float mu) {
    double a[LANES];
    memcpy(a, acc, sizeof a);
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) {
            double d = (double)x[i + l] - mu;
            a[l] += d * d;
        }
    for (int l = 0; i < n; i++, l++) {
        double d = (double)x[i] - mu;
        a[l] += d * d;
    }
    memcpy(acc, a, sizeof a);
}

/* FLOAT_LANES float lanes as a GCC vector type: one AVX-512 register or two AVX2
 * ones, the same per-lane additions either way. */
enum { FLOAT_LANES = 16 };
typedef float float_lanes __attribute__((vector_size(FLOAT_LANES * sizeof(float))));

/* The lanes' total: halves added pairwise, a fixed order. */
static inline float float_lanes_total(const float_lanes *v) {
    float t[FLOAT_LANES];
    memcpy(t, v, sizeof t);
    for (int width = FLOAT_LANES / 2; width > 0; width /= 2)
        for (int l = 0; l < width; l++) t[l] += t[l + width];
    return t[0];
}

#endif

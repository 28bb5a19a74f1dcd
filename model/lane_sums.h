/* Double sums of float rows in LANES independent accumulators (value i into
 * lane i % LANES), combined in a fixed order: one chain of dependent double
 * additions, which the compiler may not reorder, was the bottleneck of the norms
 * that sum this way (GroupNorm, LayerNorm forward); lanes written out vectorise,
 * and their bits do not depend on the vector width or the thread count. */
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

#endif

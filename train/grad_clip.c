/* Global-norm gradient clipping and the finiteness check (see grad_clip.h). */
#include "grad_clip.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* The sum of squares is split into NORM_BLOCKS contiguous blocks, a function of
 * count only; each block is summed in order by one thread and the blocks are
 * added in order, so the norm's bits do not depend on the thread count. */
#define NORM_BLOCKS 256
/* Below this many values a parallel region costs more than the loop. */
#define PARALLEL_MIN 65536

double grad_global_norm(const float *grad, size_t count) {
    double partial[NORM_BLOCKS];
    const size_t block = (count + NORM_BLOCKS - 1) / NORM_BLOCKS;
#pragma omp parallel for schedule(static) if (count > PARALLEL_MIN)
    for (int k = 0; k < NORM_BLOCKS; k++) {
        size_t begin = (size_t)k * block, end = begin + block;
        if (begin > count) begin = count;
        if (end > count) end = count;
        double sum = 0.0;
        for (size_t i = begin; i < end; i++) sum += (double)grad[i] * (double)grad[i];
        partial[k] = sum;
    }
    double total = 0.0;
    for (int k = 0; k < NORM_BLOCKS; k++) total += partial[k];
    return sqrt(total);
}

float grad_clip_factor(double norm, double max_norm) {
    return max_norm > 0.0 && isfinite(norm) && norm > max_norm ? (float)(max_norm / (norm + 1e-6)) : 1.0f;
}

double grad_clip_global_norm(float *grad, size_t count, double max_norm) {
    const double norm = grad_global_norm(grad, count);
    const float scale = grad_clip_factor(norm, max_norm);
    if (scale != 1.0f) {
#pragma omp parallel for schedule(static) if (count > PARALLEL_MIN)
        for (size_t i = 0; i < count; i++) grad[i] *= scale;
    }
    return norm;
}

bool grad_all_finite(const float *grad, size_t count) {
    /* On the bits: the exponent all ones is an infinity or a NaN. An integer
     * test vectorises and does not depend on the compiler's floating-point mode. */
    int non_finite = 0;
#pragma omp parallel for schedule(static) reduction(| : non_finite) if (count > PARALLEL_MIN)
    for (size_t i = 0; i < count; i++) {
        uint32_t bits;
        memcpy(&bits, &grad[i], sizeof bits);
        non_finite |= (bits & 0x7f800000u) == 0x7f800000u;
    }
    return !non_finite;
}

/* Exact sums (see exact_sum.h). */
#include "exact_sum.h"

#include <math.h>
#include <stdlib.h>

#include "comm.h"
#include "fatal.h"

static void exact_normalise(exact_sum *s) {
    for (int k = 0; k + 1 < EXACT_DIGITS; k++) {
        int64_t low = (int64_t)((uint64_t)s->digit[k] & EXACT_DIGIT_MASK);
        s->digit[k + 1] += (s->digit[k] - low) / (INT64_C(1) << 32); /* exact: a floor division */
        s->digit[k] = low;
    }
    s->pending = 0;
}

void exact_sum_add(exact_sum *s, double value) {
    if (value == 0) return;
    int e;
    double f = frexp(fabs(value), &e);          /* |value| = f * 2^e, f in [0.5, 1) */
    uint64_t m = (uint64_t)ldexp(f, 53);        /* exact: |value| = m * 2^(e - 53) */
    int position = e - 53 + 1074;               /* of m's lowest bit, in units of 2^-1074 */
    if (position < 0) {                         /* a subnormal: its low bits are zero */
        m >>= -position;
        position = 0;
    }
    int k = position / 32, shift = position % 32;
    uint64_t low = (m & EXACT_DIGIT_MASK) << shift, high = (m >> 32) << shift; /* both below 2^64 */
    int64_t pieces[3] = {(int64_t)(low & EXACT_DIGIT_MASK),
                         (int64_t)((low >> 32) + (high & EXACT_DIGIT_MASK)), (int64_t)(high >> 32)};
    for (int i = 0; i < 3; i++) s->digit[k + i] += value < 0 ? -pieces[i] : pieces[i];
    if (++s->pending == EXACT_NORMALISE_EVERY) exact_normalise(s);
}

/* Collective: every rank's sums added exactly; every rank gets the total. The
 * normalised digits (below 2^32, the top one small) are summed in double over
 * the ranks, exactly for up to 2^20 ranks. */
void exact_sum_allreduce(exact_sum *sums, int count) {
    double *digits = xmalloc(sizeof(double) * EXACT_DIGITS * (size_t)count);
    for (int i = 0; i < count; i++) {
        exact_normalise(&sums[i]);
        for (int k = 0; k < EXACT_DIGITS; k++) digits[i * EXACT_DIGITS + k] = (double)sums[i].digit[k];
    }
    comm_allreduce_sum_double(digits, (int64_t)EXACT_DIGITS * count);
    for (int i = 0; i < count; i++) {
        for (int k = 0; k < EXACT_DIGITS; k++) sums[i].digit[k] = (int64_t)digits[i * EXACT_DIGITS + k];
        exact_normalise(&sums[i]);
    }
    free(digits);
}

/* The value, rounded (a function of the digits alone). */
long double exact_sum_value(const exact_sum *s) {
    exact_sum copy = *s;
    exact_normalise(&copy);
    long double v = 0;
    for (int k = EXACT_DIGITS - 1; k >= 0; k--) v = v * 4294967296.0L + (long double)copy.digit[k];
    return ldexpl(v, -1074);
}


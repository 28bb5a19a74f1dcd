/* Exact sums of doubles, the same bits whatever the order or grouping of the
 * additions and whatever the number of ranks: for statistics that must not
 * depend on how a data set is split (ldm encode's latent mean and std). */
#ifndef LDM_EXACT_SUM_H
#define LDM_EXACT_SUM_H

#include <stdint.h>

/* The exact sum of any number of finite doubles: a fixed-point number in units
 * of 2^-1074 (the smallest double), in 32-bit digits held in int64 so that
 * carries can wait. A double m * 2^e (m an integer below 2^53) adds its three
 * 32-bit pieces to three digits; carries are propagated every
 * EXACT_NORMALISE_EVERY additions (each addition grows a digit by less than 2^33,
 * so an int64 digit has room for 2^30 of them). Normalised (every digit but the
 * top one in [0, 2^32)), the digits are unique to the value, so any two ways of
 * adding the same numbers give the same digits. */
#define EXACT_DIGITS 72 /* bits 0 .. 2303: the largest double's top bit is 2097, the rest is room for carries */
#define EXACT_NORMALISE_EVERY (1 << 20)
#define EXACT_DIGIT_MASK UINT64_C(0xffffffff)

typedef struct {
    int64_t digit[EXACT_DIGITS];
    int64_t pending; /* additions since the last normalisation */
} exact_sum;

/* Adds a finite double (a zeroed exact_sum is 0). */
void exact_sum_add(exact_sum *s, double value);
/* Collective: every rank's count sums added exactly; every rank gets the totals. */
void exact_sum_allreduce(exact_sum *sums, int count);
/* The value, rounded (a function of the digits alone). */
long double exact_sum_value(const exact_sum *s);

#endif

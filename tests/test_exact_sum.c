/* Exact sums: cancellations a double sum loses come out exactly; the same
 * numbers added in another order give the same bits; across ranks (under
 * mpirun) the total is the exact total of every rank's values. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "comm.h"
#include "exact_sum.h"
#include "rng.h"
#include "test_util.h"

int main(int argc, char **argv) {
    comm_init(&argc, &argv);
    int rank = comm_rank(), world = comm_world_size();

    /* 2^60 + 1 - 2^60: a double sum gives 0. */
    exact_sum s;
    memset(&s, 0, sizeof s);
    exact_sum_add(&s, ldexp(1.0, 60));
    exact_sum_add(&s, 1.0);
    exact_sum_add(&s, -ldexp(1.0, 60));
    CHECK(exact_sum_value(&s) == 1.0L);

    /* The smallest subnormal, a million times, and the largest double's neighbours. */
    memset(&s, 0, sizeof s);
    for (int i = 0; i < 1000000; i++) exact_sum_add(&s, ldexp(1.0, -1074));
    CHECK(exact_sum_value(&s) == 1000000.0L * ldexpl(1.0L, -1074));
    memset(&s, 0, sizeof s);
    exact_sum_add(&s, 1.7976931348623157e308);
    exact_sum_add(&s, -1.7976931348623157e308);
    exact_sum_add(&s, -0.25);
    CHECK(exact_sum_value(&s) == -0.25L);

    /* Random values of wide range, forwards and backwards: identical digits. */
    enum { N = 5000 };
    static double values[N];
    rng_stream rng = rng_stream_for(7, 1, 2);
    for (int i = 0; i < N; i++) values[i] = ldexp(rng_normal(&rng), (int)(rng_uniform(&rng) * 200) - 100);
    exact_sum forwards, backwards;
    memset(&forwards, 0, sizeof forwards);
    memset(&backwards, 0, sizeof backwards);
    for (int i = 0; i < N; i++) exact_sum_add(&forwards, values[i]);
    for (int i = N - 1; i >= 0; i--) exact_sum_add(&backwards, values[i]);
    CHECK(exact_sum_value(&forwards) == exact_sum_value(&backwards));

    /* Across ranks: rank r adds r + 0.5 and 2^-70; the total is exact. */
    exact_sum mine;
    memset(&mine, 0, sizeof mine);
    exact_sum_add(&mine, rank + 0.5);
    exact_sum_add(&mine, ldexp(1.0, -70));
    exact_sum_allreduce(&mine, 1);
    long double expected = (long double)world * (world - 1) / 2 + 0.5L * world + world * ldexpl(1.0L, -70);
    CHECK(fabsl(exact_sum_value(&mine) - expected) <= fabsl(expected) * 1e-18L);

    int status = test_finish("test_exact_sum");
    comm_finalize();
    return status;
}

/* The one clock ldm measures durations with: CLOCK_MONOTONIC, which no change
 * of the wall clock (NTP, an administrator) moves, in seconds as a double.
 * Step times, progress bars, checkpoint write times, peers' heartbeats. */
#ifndef LDM_MONOTONIC_CLOCK_H
#define LDM_MONOTONIC_CLOCK_H

/* Seconds since an unspecified start; only differences mean anything. */
double monotonic_seconds(void);

#endif

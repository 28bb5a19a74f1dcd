/* Counting the allocations our own code makes, for the tests that a training
 * step allocates nothing: a test linked with allocation_counter.c and
 * -Wl,--wrap=malloc (and calloc, realloc, free, aligned_alloc, posix_memalign)
 * routes every such call of our objects through counters; while
 * allocation_counting is set, each adds one to allocation_count. */
#ifndef LDM_ALLOCATION_COUNTER_H
#define LDM_ALLOCATION_COUNTER_H

extern int allocation_counting;
extern long allocation_count;

#endif

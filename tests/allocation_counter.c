/* The wrapped allocation functions (see allocation_counter.h). */
#include <stddef.h>

#include "allocation_counter.h"

int allocation_counting;
long allocation_count;

void *__real_malloc(size_t size);
void *__real_calloc(size_t count, size_t size);
void *__real_realloc(void *p, size_t size);
void __real_free(void *p);
void *__real_aligned_alloc(size_t alignment, size_t size);
int __real_posix_memalign(void **p, size_t alignment, size_t size);

/* Declared here for -Wmissing-prototypes; the linker calls them. */
void *__wrap_malloc(size_t size);
void *__wrap_calloc(size_t count, size_t size);
void *__wrap_realloc(void *p, size_t size);
void __wrap_free(void *p);
void *__wrap_aligned_alloc(size_t alignment, size_t size);
int __wrap_posix_memalign(void **p, size_t alignment, size_t size);

void *__wrap_malloc(size_t size) {
    allocation_count += allocation_counting;
    return __real_malloc(size);
}
void *__wrap_calloc(size_t count, size_t size) {
    allocation_count += allocation_counting;
    return __real_calloc(count, size);
}
void *__wrap_realloc(void *p, size_t size) {
    allocation_count += allocation_counting;
    return __real_realloc(p, size);
}
void __wrap_free(void *p) {
    allocation_count += allocation_counting && p;
    __real_free(p);
}
void *__wrap_aligned_alloc(size_t alignment, size_t size) {
    allocation_count += allocation_counting;
    return __real_aligned_alloc(alignment, size);
}
int __wrap_posix_memalign(void **p, size_t alignment, size_t size) {
    allocation_count += allocation_counting;
    return __real_posix_memalign(p, alignment, size);
}

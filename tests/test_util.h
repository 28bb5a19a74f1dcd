/* Minimal assertion helpers shared by the C tests: each failed check prints the
 * file, line and values and marks the test failed; test_finish() returns the exit
 * status (0 pass, 1 fail). */
#ifndef LDM_TEST_UTIL_H
#define LDM_TEST_UTIL_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device.h"

static int test_failures;
static int test_checks;

#define CHECK(cond)                                                                     \
    do {                                                                                \
        test_checks++;                                                                  \
        if (!(cond)) {                                                                  \
            test_failures++;                                                            \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);    \
        }                                                                               \
    } while (0)

#define CHECK_MSG(cond, ...)                                                            \
    do {                                                                                \
        test_checks++;                                                                  \
        if (!(cond)) {                                                                  \
            test_failures++;                                                            \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);    \
            fprintf(stderr, __VA_ARGS__);                                               \
            fputc('\n', stderr);                                                        \
        }                                                                               \
    } while (0)

/* |a - b| <= atol + rtol * |b| */
#define CHECK_CLOSE(a, b, atol, rtol)                                                   \
    do {                                                                                \
        double check_a_ = (double)(a), check_b_ = (double)(b);                          \
        test_checks++;                                                                  \
        if (!(fabs(check_a_ - check_b_) <= (atol) + (rtol)*fabs(check_b_))) {           \
            test_failures++;                                                            \
            fprintf(stderr, "%s:%d: CHECK_CLOSE failed: %s = %.9g, %s = %.9g\n",        \
                    __FILE__, __LINE__, #a, check_a_, #b, check_b_);                    \
        }                                                                               \
    } while (0)

#define CHECK_STR_CONTAINS(haystack, needle)                                            \
    do {                                                                                \
        test_checks++;                                                                  \
        if (!(haystack) || !strstr((haystack), (needle))) {                             \
            test_failures++;                                                            \
            fprintf(stderr, "%s:%d: expected \"%s\" in \"%s\"\n", __FILE__, __LINE__,   \
                    (needle), (haystack) ? (haystack) : "(null)");                      \
        }                                                                               \
    } while (0)

/* max |a - ref| / max |ref| over n values (NaN counts as infinitely wrong);
 * *ref_max (when not NULL) = max |ref|. */
static inline double test_relative_max_error(const float *a, const float *ref, size_t n, double *ref_max) {
    double max_diff = 0, max_ref = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - ref[i]);
        if (d > max_diff || isnan(d)) max_diff = isnan(d) ? INFINITY : d;
        if (fabs(ref[i]) > max_ref) max_ref = fabs(ref[i]);
    }
    if (ref_max) *ref_max = max_ref;
    return max_diff / (max_ref > 0 ? max_ref : 1);
}

/* |a - b|_2 / |b|_2 over n values */
static inline double test_relative_l2(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

/* What a GPU test returns when this machine cannot run it (why: a phrase such
 * as "no CUDA device"): 77, which ctest reports as skipped, or, when
 * LDM_REQUIRE_GPU=1 says the machine is meant to run it (a GPU machine, where a
 * skip would turn a broken driver into a green suite), 1 with a line saying so. */
static inline int test_gpu_required(void) {
    const char *required = getenv("LDM_REQUIRE_GPU");
    return required && strcmp(required, "1") == 0;
}

static inline int test_gpu_unavailable(const char *name, const char *why) {
    if (test_gpu_required()) {
        fprintf(stderr, "%s: FAILED: LDM_REQUIRE_GPU=1 but %s\n", name, why);
        return 1;
    }
    printf("%s: skipped (%s)\n", name, why);
    return 77;
}

/* Why this process cannot use a GPU ("this build has no CUDA", "no CUDA
 * device", "CUDA error: TEXT"), or NULL when it can. */
static inline const char *test_gpu_missing(void) {
    if (!device_cuda_compiled()) return "this build has no CUDA";
    if (device_cuda_count() > 0) return NULL;
    const char *error = device_cuda_error();
    return error ? error : "no CUDA device";
}

/* In main of a GPU test: prints the devices, and returns what
 * test_gpu_unavailable() says unless this is a CUDA build on a machine with a
 * usable NVIDIA GPU. */
#define TEST_SKIP_WITHOUT_CUDA(name)                                                    \
    do {                                                                                \
        char devices_[512];                                                             \
        device_describe(devices_, sizeof devices_);                                     \
        printf("devices: %s\n", devices_);                                              \
        const char *missing_ = test_gpu_missing();                                      \
        if (missing_) return test_gpu_unavailable((name), missing_);                    \
    } while (0)

static inline int test_finish(const char *name) {
    if (test_checks == 0) {
        fprintf(stderr, "%s: no checks ran\n", name);
        return 1;
    }
    printf("%s: %d checks, %d failed\n", name, test_checks, test_failures);
    return test_failures ? 1 : 0;
}

#endif

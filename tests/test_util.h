/* Minimal assertion helpers shared by the C tests: each failed check prints the
 * file, line and values and marks the test failed; test_finish() returns the exit
 * status (0 pass, 1 fail). */
#ifndef LDM_TEST_UTIL_H
#define LDM_TEST_UTIL_H

#include <math.h>
#include <stdio.h>
#include <string.h>

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

static inline int test_finish(const char *name) {
    if (test_checks == 0) {
        fprintf(stderr, "%s: no checks ran\n", name);
        return 1;
    }
    printf("%s: %d checks, %d failed\n", name, test_checks, test_failures);
    return test_failures ? 1 : 0;
}

#endif

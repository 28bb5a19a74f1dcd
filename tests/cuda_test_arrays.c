/* The arrays and comparisons of the CUDA op tests: see cuda_test_arrays.h. */
#include "cuda_test_arrays.h"

#ifdef LDM_HAVE_CUDA
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops_cuda.h"

enum { MAX_BUFFERS = 512 };
static void *host_buffers[MAX_BUFFERS], *device_buffers[MAX_BUFFERS];
static int host_count, device_count;
static rng_stream rng;
static const char *program_name;
static int *program_checks, *program_failures;

void cuda_test_arrays_init(const char *program, rng_stream stream, int *checks, int *failures) {
    program_name = program;
    rng = stream;
    program_checks = checks;
    program_failures = failures;
}

rng_stream *cuda_test_rng(void) { return &rng; }

/* One check of the test program; a failure prints the message after its name. */
__attribute__((format(printf, 2, 3))) static void count_check(int passed, const char *format, ...) {
    if (!program_checks) {
        fprintf(stderr, "cuda_test_arrays: a comparison before cuda_test_arrays_init\n");
        exit(1);
    }
    (*program_checks)++;
    if (passed) return;
    (*program_failures)++;
    fprintf(stderr, "%s: CHECK failed: ", program_name);
    va_list args;
    va_start(args, format);
    vfprintf(stderr, format, args);
    va_end(args);
    fputc('\n', stderr);
}

/* ---- buffers ---- */

void *host_alloc(size_t bytes) {
    void *p = calloc(bytes ? bytes : 1, 1);
    if (!p || host_count == MAX_BUFFERS) {
        fprintf(stderr, "%s: out of host buffers\n", program_name);
        exit(1);
    }
    host_buffers[host_count++] = p;
    return p;
}

void *device_alloc(size_t bytes) {
    void *p = cuda_buffer_alloc(bytes);
    if (device_count == MAX_BUFFERS) {
        fprintf(stderr, "%s: out of device buffers\n", program_name);
        exit(1);
    }
    device_buffers[device_count++] = p;
    return p;
}

void release_all(void) {
    for (int i = 0; i < host_count; i++) free(host_buffers[i]);
    for (int i = 0; i < device_count; i++) cuda_buffer_free(device_buffers[i]);
    host_count = device_count = 0;
}

float *host_normal(size_t n, float scale) {
    float *x = host_alloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = scale * rng_normal(&rng);
    return x;
}

float *host_copy(const float *src, size_t n) {
    float *x = host_alloc(n * sizeof(float));
    memcpy(x, src, n * sizeof(float));
    return x;
}

float *host_abs(const float *src, size_t n) {
    if (!src) return NULL;
    float *x = host_alloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = fabsf(src[i]);
    return x;
}

void *to_device(const void *host, size_t bytes) {
    if (!host) return NULL;
    void *d = device_alloc(bytes);
    cuda_copy_to_device(d, host, bytes);
    return d;
}

float *to_device_f(const float *host, size_t n) { return to_device(host, n * sizeof(float)); }

float *device_nan(size_t n) {
    float *d = device_alloc(n * sizeof(float));
    cuda_buffer_fill_bytes(d, 0xff, n * sizeof(float));
    return d;
}

float *fetch(const float *device, size_t n) {
    float *x = host_alloc(n * sizeof(float));
    cuda_device_synchronize();
    cuda_copy_to_host(x, device, n * sizeof(float));
    return x;
}

/* ---- comparisons ---- */

static void close_check(const char *what, const float *gpu, const float *cpu, size_t n, double atol, double rtol,
                        int nan_matches_nan) {
    size_t bad = 0, worst = 0;
    double worst_excess = -1.0;
    for (size_t i = 0; i < n; i++) {
        double a = gpu[i], b = cpu[i], bound = atol + rtol * fabs(b);
        double excess = isnan(a) || isnan(b) ? (nan_matches_nan && isnan(a) && isnan(b) ? 0.0 : INFINITY)
                                             : fabs(a - b) - bound;
        if (excess > 0.0) bad++;
        if (excess > worst_excess) worst_excess = excess, worst = i;
    }
    count_check(bad == 0, "%s: %zu of %zu differ beyond %g + %g|cpu|; worst [%zu] gpu %.9g cpu %.9g", what, bad, n,
                atol, rtol, worst, n ? gpu[worst] : 0.0f, n ? cpu[worst] : 0.0f);
}

void expect_close(const char *what, const float *gpu, const float *cpu, size_t n, double atol, double rtol) {
    close_check(what, gpu, cpu, n, atol, rtol, 0);
}

void expect_close_or_both_nan(const char *what, const float *gpu, const float *cpu, size_t n, double atol,
                              double rtol) {
    close_check(what, gpu, cpu, n, atol, rtol, 1);
}

void expect_close_scaled(const char *what, const float *gpu, const float *cpu, const float *scale, size_t n,
                         double tol) {
    size_t bad = 0, worst = 0;
    double worst_ratio = -1.0;
    for (size_t i = 0; i < n; i++) {
        double ratio = fabs((double)gpu[i] - cpu[i]) / (tol * scale[i] + 1e-30);
        if (!(ratio <= 1.0)) bad++;
        if (!(ratio <= worst_ratio)) worst_ratio = ratio, worst = i;
    }
    count_check(bad == 0, "%s: %zu of %zu differ beyond %g * |.| scale; worst [%zu] gpu %.9g cpu %.9g scale %.6g",
                what, bad, n, tol, worst, n ? gpu[worst] : 0.0f, n ? cpu[worst] : 0.0f, n ? scale[worst] : 0.0f);
}

/* How many of count elements differ in their bytes; *first = the first that does. */
static size_t bytes_differ(const void *gpu, const void *cpu, size_t count, size_t element_bytes, size_t *first) {
    size_t bad = 0;
    *first = 0;
    for (size_t i = count; i-- > 0;)
        if (memcmp((const char *)gpu + i * element_bytes, (const char *)cpu + i * element_bytes, element_bytes)) {
            bad++;
            *first = i;
        }
    return bad;
}

/* The first (up to) 4 bytes of element i, as the messages show it. */
static uint32_t element_bits(const void *array, size_t i, size_t element_bytes) {
    uint32_t bits = 0;
    memcpy(&bits, (const char *)array + i * element_bytes, element_bytes < 4 ? element_bytes : 4);
    return bits;
}

void expect_same_bits(const char *what, const void *gpu, const void *cpu, size_t count, size_t element_bytes) {
    size_t first;
    const size_t bad = bytes_differ(gpu, cpu, count, element_bytes, &first);
    const uint32_t g = bad ? element_bits(gpu, first, element_bytes) : 0;
    const uint32_t c = bad ? element_bits(cpu, first, element_bytes) : 0;
    count_check(bad == 0, "%s: %zu of %zu not bit-identical; first [%zu] gpu 0x%08x cpu 0x%08x", what, bad, count,
                first, g, c);
}

void expect_same_bits_f(const char *what, const float *gpu, const float *cpu, size_t n) {
    size_t first;
    const size_t bad = bytes_differ(gpu, cpu, n, sizeof(float), &first);
    count_check(bad == 0, "%s: %zu of %zu not bit-identical; first [%zu] gpu %.9g (0x%08x) cpu %.9g (0x%08x)", what,
                bad, n, first, bad ? gpu[first] : 0.0f, bad ? element_bits(gpu, first, 4) : 0,
                bad ? cpu[first] : 0.0f, bad ? element_bits(cpu, first, 4) : 0);
}
void report_gemm_paths(struct gemm_cuda_context *ctx) {
    gemm_cuda_path_counts c;
    gemm_cuda_context_path_counts(ctx, &c);
    const char *refuse = getenv("LDM_CUDA_EMULATION_CUBLASLT_REFUSE");
    printf("%s: GEMM paths%s%s: cuBLASLt first %lld, later %lld; cuBLAS strided %lld, per matrix %lld; bias apart "
           "%lld\n",
           program_name, refuse ? " refusing " : "", refuse ? refuse : "", c.lt_first_result, c.lt_later_result,
           c.cublas_strided_batched, c.cublas_gemm, c.bias_epilogue_refused);
#ifdef LDM_CUDA_EMULATION
    if (refuse && refuse[0]) {
        const long long elsewhere = c.lt_later_result + c.cublas_strided_batched + c.cublas_gemm;
        count_check(elsewhere > 0, "refusing '%s', every GEMM still ran on cuBLASLt's first algorithm", refuse);
    }
#endif
}
#endif

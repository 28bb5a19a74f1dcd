/* The arrays of the CUDA op tests (test_ops_cuda.c, test_ops_cuda_conv.c) and
 * their comparisons, in one place:
 * - host and device buffers, each kept in a table until release_all() frees them
 *   all, so a test allocates freely and releases once at its end;
 * - the random stream that fills host_normal() (and that a test may draw from
 *   directly through cuda_test_rng()), seeded by the test;
 * - comparisons of a GPU array with the CPU's: one check per array, the failure
 *   naming the test program, how many elements differ and the worst one.
 * test_util.h's check counters are static to each test's file, so the test hands
 * its own to cuda_test_arrays_init(), with its name and seed, before anything
 * else here. Defined only in a CUDA build (LDM_HAVE_CUDA). */
#ifndef LDM_CUDA_TEST_ARRAYS_H
#define LDM_CUDA_TEST_ARRAYS_H

#include <stddef.h>

#include "rng.h"

/* program names the test in failure messages; checks and failures are its
 * test_checks and test_failures, which every comparison here counts into. */
void cuda_test_arrays_init(const char *program, rng_stream rng, int *checks, int *failures);
rng_stream *cuda_test_rng(void);

/* ---- buffers, all alive until release_all() (exits when the table is full) ---- */

void *host_alloc(size_t bytes); /* zeroed */
void *device_alloc(size_t bytes);
void release_all(void);
/* n values of scale * N(0, 1) from cuda_test_rng(). */
float *host_normal(size_t n, float scale);
float *host_copy(const float *src, size_t n);
/* |src| elementwise; NULL stays NULL (an optional bias's scale). */
float *host_abs(const float *src, size_t n);
/* A device copy of host; NULL stays NULL (an optional bias). */
void *to_device(const void *host, size_t bytes);
float *to_device_f(const float *host, size_t n);
/* A device buffer of n floats, every one NaN (all bits set): an output the GPU
 * should overwrite, so that an element left unwritten, or read first, shows. */
float *device_nan(size_t n);
/* The device buffer's contents, after the queued work. */
float *fetch(const float *device, size_t n);

/* ---- comparisons of gpu with cpu, one check each ---- */

/* |gpu - cpu| <= atol + rtol |cpu|; a NaN on either side fails. */
void expect_close(const char *what, const float *gpu, const float *cpu, size_t n, double atol, double rtol);
/* The same, except that NaN on both sides passes (test_ops_cuda.c's comparisons
 * have always allowed it; kept so that none of its checks changes). */
void expect_close_or_both_nan(const char *what, const float *gpu, const float *cpu, size_t n, double atol,
                              double rtol);
/* |gpu - cpu| <= tol * scale[i] (+ 1e-30 for exact zeros), NaN never passes:
 * scale is the same op on absolute values, the bound of a dot product's rounding. */
void expect_close_scaled(const char *what, const float *gpu, const float *cpu, const float *scale, size_t n,
                         double tol);
/* Prints how ctx's GEMMs were carried out (gemm_cuda_context_path_counts);
 * in the emulation under LDM_CUDA_EMULATION_CUBLASLT_REFUSE, one check that
 * the refusals sent at least one GEMM off cuBLASLt's first algorithm (else the
 * run with refusals tested nothing more than the run without). */
struct gemm_cuda_context;
void report_gemm_paths(struct gemm_cuda_context *ctx);

/* count elements of element_bytes each, the same bytes. */
void expect_same_bits(const char *what, const void *gpu, const void *cpu, size_t count, size_t element_bytes);
/* n floats, the same bits (NaNs with their payloads, the sign of zero). */
void expect_same_bits_f(const char *what, const float *gpu, const float *cpu, size_t n);

#endif

/* The few device pieces the GPU DiT (dit_cuda.c) needs that the CUDA op set
 * (ops_cuda.h) does not have: its stream, zeroing and device-to-device copies
 * queued on a stream, a scaled copy (the guidance scale's embedding input) and
 * the rounded fp32 copy of the biases that the 16-bit GEMMs add. Candidates for
 * ops_cuda.h once something else needs them. Errors end the program through
 * fatal_internal. Plain C; only meaningful in a CUDA build (LDM_HAVE_CUDA). */
#ifndef LDM_DIT_CUDA_KERNELS_H
#define LDM_DIT_CUDA_KERNELS_H

#ifdef LDM_HAVE_CUDA

#ifdef __cplusplus
extern "C" {
#endif

#include <stddef.h>

#include "gemm_cublaslt.h"
#include "precision.h"

/* A non-blocking stream (cudaStreamNonBlocking): not ordered with the legacy
 * default stream, so nothing may count on that; work on other streams is
 * ordered with it by events, and the host waits for it with
 * dit_cuda_stream_synchronize before a synchronous copy of ops_cuda.h touches
 * what it uses. */
ldm_stream dit_cuda_stream_create(void);
void dit_cuda_stream_destroy(ldm_stream stream);
void dit_cuda_stream_synchronize(ldm_stream stream);

/* bytes of device set to zero, queued on stream. */
void dit_cuda_zero_async(void *device, size_t bytes, ldm_stream stream);
/* bytes from device src to device dst (not overlapping), queued on stream. */
void dit_cuda_copy_async(void *dst, const void *src, size_t bytes, ldm_stream stream);

/* out (n) = factor * in (n), one float multiply per element (as the CPU does). */
void dit_cuda_scale(float *out, const float *in, float factor, size_t n, ldm_stream stream);

/* For each of `count` segments (3 device long longs each: source offset,
 * destination offset, length), out[dst + i] = src[source + i] rounded to the
 * format (precision_round, bit for bit; a copy in fp32). */
void dit_cuda_round_segments(ldm_precision precision, float *out, const float *src, const long long *segments,
                             int count, ldm_stream stream);

#ifdef __cplusplus
}
#endif

#endif /* LDM_HAVE_CUDA */

#endif

/* Which compute devices this build and machine have. The CPU is always there;
 * CUDA devices only in a CUDA build on a machine with an NVIDIA GPU (the query
 * is model/cuda/device_cuda.cu; the CUDA op set is model/cuda/ops_cuda.h). */
#ifndef LDM_DEVICE_H
#define LDM_DEVICE_H

#include <stddef.h>

/* 1 when compiled with CUDA. */
int device_cuda_compiled(void);
/* Number of usable CUDA devices (0 in a CPU build or without a GPU). */
int device_cuda_count(void);
/* Why device_cuda_count() is 0 when CUDA failed rather than found no GPU:
 * "CUDA error: TEXT" (a driver too old for the runtime, or not loaded), NULL
 * when the query worked (also when it found no device: cudaErrorNoDevice) and
 * in a CPU build. A GPU machine whose driver is broken must not look like a
 * machine without a GPU (tests skip on the one, and fail on the other when
 * LDM_REQUIRE_GPU=1). */
const char *device_cuda_error(void);
/* One line describing the devices, e.g. "cpu (2 threads); cuda: NVIDIA H100 80GB HBM3". */
void device_describe(char *out, size_t size);

#ifdef LDM_HAVE_CUDA
/* Implemented in device_cuda.cu. */
int device_cuda_count_impl(void);
/* The error of the last device_cuda_count_impl(), or NULL (see device_cuda_error). */
const char *device_cuda_error_impl(void);
void device_cuda_name(int device, char *out, size_t size);
/* out (n) = silu(in (n)), host buffers, computed by a CUDA kernel. Returns 0 or -1. */
int device_cuda_silu(float *out, const float *in, size_t n);
#endif

#endif

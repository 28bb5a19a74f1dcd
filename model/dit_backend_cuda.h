/* The GPU DiT's private state (dit_cuda.c lays it out, dit_backend_cuda.c reads
 * it) and the DiT graph's CUDA backend (dit_graph.h), whose backend_state is this
 * state. Plain C; only meaningful in a CUDA build (LDM_HAVE_CUDA). */
#ifndef LDM_DIT_BACKEND_CUDA_H
#define LDM_DIT_BACKEND_CUDA_H

#ifdef LDM_HAVE_CUDA

#include <stdint.h>

#include "dit_cuda.h"
#include "dit_graph.h"

struct dit_cuda_state {
    dit_graph graph;        /* parameter indices and activations, device pointers */
    /* bf16/fp16: the parameters the GEMMs read, made from params at every forward */
    uint16_t *weight_bits;  /* device (trainable_numel) every parameter in the format */
    float *bias_rounded;    /* device (bias_floats) every bias rounded, each from a 16-float boundary */
    long long *bias_segments; /* device (3 * bias_count): offset in params, offset in bias_rounded, length */
    long long *bias_offset; /* host (table.count) where an entry's bias lies in bias_rounded, -1 if not a bias */
    long long bias_floats;
    int bias_count;
    gemm_cuda_context *gemm; /* the model's (dit_cuda_model.gemm, .stream) */
    ldm_stream stream;
};

extern const dit_backend dit_backend_cuda;

#endif /* LDM_HAVE_CUDA */

#endif

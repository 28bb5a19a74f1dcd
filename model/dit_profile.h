/* Time per phase of a CPU DiT's forward and backward (for `ldm bench`): the
 * model's op table is swapped for one that times every op with the monotonic
 * clock, adds the seconds into the op's phase and calls the real op. Nothing is
 * allocated per call (the clocks cost about a microsecond a call); the results are the same bits as without it. One model of
 * a process can be profiled at a time. */
#ifndef LDM_DIT_PROFILE_H
#define LDM_DIT_PROFILE_H

#include "dit.h"

typedef enum {
    DIT_PHASE_GEMM_FORWARD,       /* linear layers' forward products (bias added by the GEMM) */
    DIT_PHASE_GEMM_BACKWARD,      /* their input and weight gradients, and the bias column sums */
    DIT_PHASE_ATTENTION_FORWARD,  /* q k^T, softmax, p v (and their layout copies) */
    DIT_PHASE_ATTENTION_BACKWARD, /* the four products and the softmax backward */
    DIT_PHASE_NORM,               /* LayerNorm + modulate, forward and backward */
    DIT_PHASE_ELEMENTWISE,        /* gated residual, GELU, SiLU, adds, scales, zeroing, copies */
    DIT_PHASE_CONVERT,            /* precision: the weights' rounded copy and bits, rounding, keep/load */
    DIT_PHASE_EMBED,              /* patchify, unpatchify, timestep and label embeddings */
    DIT_PHASES
} dit_phase;

typedef struct {
    double seconds[DIT_PHASES];     /* wall clock */
    double cpu_seconds[DIT_PHASES]; /* the process's CPU time (all threads, spin-waiting included) */
    double flops[DIT_PHASES]; /* counted from the shapes (GEMM and attention phases; 0 elsewhere) */
    long calls[DIT_PHASES];
} dit_profile;

/* "gemm forward", "attention backward", ... */
const char *dit_phase_name(dit_phase phase);
/* From now on the model's ops add into *profile (which the caller zeroes when it
 * wants to start counting) until dit_profile_stop. */
void dit_profile_start(dit_model *model, dit_profile *profile);
void dit_profile_stop(dit_model *model);

#endif

/* WIDEST_VECTORS: a function built twice, for AVX-512 and for the build's
 * baseline (x86-64-v3), the loader picking one for the CPU it runs on (GCC's
 * target_clones; other compilers build the baseline alone). For loops whose
 * elements see the same operations in the same order at any vector width, so
 * both builds give the same bits (the build has -ffp-contract=off: no multiply
 * and add is fused unless the source says fmaf). */
#ifndef LDM_WIDEST_VECTORS_H
#define LDM_WIDEST_VECTORS_H

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define WIDEST_VECTORS __attribute__((target_clones("avx512f", "default")))
#else
#define WIDEST_VECTORS
#endif

#endif

/* `ldm bench --model gemm`: the DiT's linear-layer products alone (see bench_gemm.c). */
#ifndef LDM_BENCH_GEMM_H
#define LDM_BENCH_GEMM_H

#include "config.h"

/* Times each product of one DiT block's linear layers at the config's shapes
 * (batch rows of tokens) on the CPU's fp32 GEMM and, when print, prints a line
 * each and their total. Returns the total ms of one block's products. */
double bench_gemm_shapes(const ldm_config *config, int batch, int warmup, int steps, int print);

#endif

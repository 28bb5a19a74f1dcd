/* `ldm bench --model ae`: the KL autoencoder's CPU training step timed as
 * train-ae runs it (see bench_ae.c). */
#ifndef LDM_BENCH_AE_H
#define LDM_BENCH_AE_H

#include "config.h"

/* Times `steps` training steps of the config's autoencoder (after `warmup`
 * untimed ones) at micro-batch `batch` on random images in [-1, 1], prints the
 * layout and result lines when print is set; returns the last loss. */
double bench_autoencoder(const ldm_config *config, int batch, int warmup, int steps, int print);

#endif

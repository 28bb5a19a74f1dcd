/* The GPU side of `ldm bench --device cuda` (train/cli/bench.c owns the command,
 * the random batch and the printing): the DiT of dit_cuda.h with its AdamW
 * state on the rank's GPU, the batch uploaded once, training steps timed per
 * phase with CUDA events, and the GPU's dense peak for the MFU.
 * Only in a CUDA build (LDM_HAVE_CUDA); bench.c refuses --device cuda elsewhere. */
#ifndef LDM_BENCH_CUDA_H
#define LDM_BENCH_CUDA_H

#ifdef LDM_HAVE_CUDA

#include <stdint.h>

#include "config.h"
#include "dit_cuda.h"

typedef struct {
    dit_cuda_model model;
    int device;            /* the CUDA device it runs on */
    char device_name[256]; /* device_cuda_name: "NVIDIA H100 80GB HBM3 (sm_90, 79 GiB)" */
    int batch, per_sample; /* per_sample = C * H * W */
    float loss_scale;      /* fp16: the loss gradient's scale, taken out of the parameter gradient; else 1 */
    /* device buffers: the batch (uploaded once) and what a step writes */
    float *x, *t, *target; /* (B, C, H, W), (B), (B, C, H, W) */
    int *y;                /* (B) */
    float *out, *d_out;    /* (B, C, H, W) */
    float *loss;           /* (1) */
} bench_cuda;

/* Seconds summed over the timed steps, per phase as bench.c's CPU loop splits
 * a step, and the last step's loss. */
typedef struct {
    double forward_s;   /* zero_grad, forward, loss */
    double backward_s;  /* loss gradient, backward, fp16's unscale */
    double optimizer_s; /* AdamW */
    double elapsed_s;   /* all timed steps, between one pair of events (the phases add up to it but for gaps) */
    double loss;
} bench_cuda_times;

/* Chooses the rank's GPU (local rank modulo the GPUs, as each CPU rank times
 * its own micro-batch), lays out the model for `batch` in `precision` with its
 * optimizer, sets the weights as dit_init_weights(seed) does on the CPU, and
 * uploads the batch: host x, target (batch * per_sample), t, y (batch). */
void bench_cuda_create(bench_cuda *b, const dit_shape *shape, int batch, ldm_precision precision, float loss_scale,
                       uint64_t seed, const float *x, const float *t, const int *y, const float *target);
/* warmup untimed steps, then steps timed ones (>= 1), with train's AdamW settings. */
void bench_cuda_run(bench_cuda *b, const train_config *train, int warmup, int steps, bench_cuda_times *times);
void bench_cuda_destroy(bench_cuda *b);

/* A consistency distillation step on the rank's GPU (distill_cuda_trainable.h,
 * driven as the training loop drives it: zero_grad, the micro-batch of
 * `batch` samples x (batch * C * H * W) with labels y (batch), the gradient
 * norm, AdamW, the EMA and the target network's update), config's distill
 * section, the teacher as the initialised DiT: warmup untimed steps, then the
 * seconds per step over `steps` (>= 1) timed ones; *loss the last step's. */
double bench_cuda_distill(const ldm_config *config, int batch, const float *x, const int *y, int warmup, int steps,
                          double *loss);

/* Images per second of sampling steps on the bench's model: one Euler step
 * (one network evaluation of the batch, no guidance, the noise drawn on the
 * host: sampler_cuda.h) per run, warmup untimed runs then steps timed ones. */
double bench_cuda_sampling_images_per_s(bench_cuda *b, double sigma_data, int warmup, int steps);

/* The dense peak TFLOP/s of the GPU named device_name for GEMMs in `precision`
 * (bf16/fp16 tensor cores, or fp32 without them: ldm's fp32 GEMMs never use
 * TF32), from LDM_PEAK_TFLOPS when set, else from a table of known GPUs; 0 when
 * unknown. *source says which ("LDM_PEAK_TFLOPS", "table", "unknown"). A bad
 * LDM_PEAK_TFLOPS ends the program (fatal_input). */
double bench_cuda_peak_tflops(const char *device_name, ldm_precision precision, const char **source);

#endif /* LDM_HAVE_CUDA */

#endif

/* The autoencoder's side of `ldm bench` (--model ae): the CPU training step of
 * train-ae (encode, posterior, decode, reconstruction + kl_beta KL, backward,
 * AdamW) on random images, in the config's train.precision, after warm-up
 * steps. Prints the time of each phase, images/s and the achieved GFLOP/s of
 * the convolutions (the step's FLOPs counted from the conv shapes: backward =
 * 2x forward; GroupNorm, attention and elementwise ops are left out). */
#include "bench_ae.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "autoencoder.h"
#include "conv_onednn.h"
#include "device.h"
#include "fatal.h"
#include "model_shapes.h"
#include "monotonic_clock.h"
#include "optimizer.h"
#include "precision.h"
#include "rng.h"

/* CPU time of the process (all threads): on a shared machine, with one thread,
 * a steadier measure of the work than the wall clock. */
static double cpu_seconds_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The forward FLOPs (2 per multiply-add) of every convolution, per image, from
 * the shape walked as autoencoder.h describes the network. */
static double conv_flops_per_image(const autoencoder_shape *s) {
    /* encoder: conv_in at S; level i at S / 2^i: layers_per_block ResNets (2 3x3 convs, 1x1 shortcut
     * when the width changes) and a stride-2 3x3 downsampler (output S / 2^(i+1)) except on the last
     * level; mid: 2 ResNets; conv_out, quant_conv at the latent size. decoder mirrored with
     * layers_per_block + 1 ResNets and upsampler convs at the doubled size. */
    double f = 0;
    const int S = s->input_size, last = s->levels - 1, L = s->latent_channels;
    const int latent = S >> last;
#define CONV(cin, cout, k, size) (f += 2.0 * (double)(cin) * (cout) * (k) * (k) * (double)(size) * (size))
    CONV(s->in_channels, s->block_out_channels[0], 3, S);
    int channels = s->block_out_channels[0], size = S;
    for (int i = 0; i < s->levels; i++) {
        const int out = s->block_out_channels[i];
        for (int r = 0; r < s->layers_per_block; r++) {
            CONV(channels, out, 3, size);
            CONV(out, out, 3, size);
            if (channels != out) CONV(channels, out, 1, size);
            channels = out;
        }
        if (i != last) {
            size /= 2;
            CONV(channels, channels, 3, size);
        }
    }
    for (int r = 0; r < 2; r++) {
        CONV(channels, channels, 3, size);
        CONV(channels, channels, 3, size);
    }
    CONV(channels, 2 * L, 3, latent);
    CONV(2 * L, 2 * L, 1, latent);
    CONV(L, L, 1, latent);
    CONV(L, s->block_out_channels[last], 3, latent);
    channels = s->block_out_channels[last];
    for (int r = 0; r < 2; r++) {
        CONV(channels, channels, 3, size);
        CONV(channels, channels, 3, size);
    }
    for (int i = last; i >= 0; i--) {
        const int out = s->block_out_channels[i];
        for (int r = 0; r < s->layers_per_block + 1; r++) {
            CONV(channels, out, 3, size);
            CONV(out, out, 3, size);
            if (channels != out) CONV(channels, out, 1, size);
            channels = out;
        }
        if (i != 0) {
            size *= 2;
            CONV(channels, channels, 3, size);
        }
    }
    CONV(channels, s->in_channels, 3, S);
#undef CONV
    return f;
}

/* "own", "onednn", or in bf16 "onednn-bf16" / "onednn-fp32" (which kernels) */
static const char *conv_name(ldm_precision precision) {
    const int bf16 = precision == PRECISION_BF16 && cpu_conv_bf16_kernels();
    if (cpu_conv_kind_for(bf16) == CPU_CONV_OWN) return "own";
    if (precision != PRECISION_BF16) return "onednn";
    return bf16 ? "onednn-bf16" : "onednn-fp32";
}

double bench_autoencoder(const ldm_config *config, int batch, int warmup, int steps, int print) {
    const train_config *tc = &config->train;
    const autoencoder_shape shape = config_autoencoder_shape(config);
    const ldm_precision precision = (ldm_precision)precision_from_name(tc->precision);
    if (precision == PRECISION_FP16)
        fatal_input("ldm bench --model ae: train.precision fp16 is not timed here (fp32 or bf16)");
    const float kl_beta = (float)config->autoencoder.kl_beta;
    const autoencoder_reconstruction_loss kind =
        strcmp(config->autoencoder.reconstruction_loss, "l2") == 0 ? AE_LOSS_L2 : AE_LOSS_L1;

    autoencoder_model model;
    autoencoder_create_precision(&model, &shape, batch, AE_FOR_TRAINING, precision);
    autoencoder_init_weights(&model, tc->seed);
    adamw_state optimizer;
    adamw_create(&optimizer, model.table.trainable_numel,
                 (adamw_hyper){(float)tc->adam_beta1, (float)tc->adam_beta2, (float)tc->adam_eps,
                               (float)tc->weight_decay});
    const size_t image = (size_t)shape.in_channels * shape.input_size * shape.input_size;
    const int latent_size = shape.input_size >> (shape.levels - 1);
    const size_t latent = (size_t)shape.latent_channels * latent_size * latent_size;
    float *images = xmalloc(sizeof(float) * batch * image); /* (B, C, H, W) */
    float *noise = xmalloc(sizeof(float) * batch * latent); /* (B, L, h, w) */
    rng_stream rng = rng_stream_for(tc->seed, 0x62656e6368 /* "bench" */, 1);
    for (size_t i = 0; i < batch * image; i++) images[i] = 2.0f * rng_uniform(&rng) - 1.0f;
    for (size_t i = 0; i < batch * latent; i++) noise[i] = rng_normal(&rng);
    const float *step_noise = config->autoencoder.sample_posterior ? noise : NULL;

    if (print) {
        char devices[512];
        device_describe(devices, sizeof(devices));
        printf("bench: autoencoder input %dx%dx%d, %d levels (widths %d..%d), latent %d, batch %d, %zu parameters, "
               "%s, %.1f MiB laid out; %s\n",
               shape.input_size, shape.input_size, shape.in_channels, shape.levels, shape.block_out_channels[0],
               shape.block_out_channels[shape.levels - 1], shape.latent_channels, batch, model.table.trainable_numel,
               precision_name(precision), model.memory_bytes / 1048576.0, devices);
    }
    double forward_s = 0, backward_s = 0, optimizer_s = 0, cpu_s = 0;
    autoencoder_loss loss = {0};
    for (int step = 0; step < warmup + steps; step++) {
        if (step == warmup) cpu_s = cpu_seconds_now();
        const double t0 = monotonic_seconds();
        autoencoder_zero_grad(&model);
        loss = autoencoder_train_forward(&model, images, step_noise, batch, kl_beta, kind);
        const double t1 = monotonic_seconds();
        autoencoder_train_backward(&model, 1.0f, NULL);
        const double t2 = monotonic_seconds();
        adamw_step(&optimizer, model.params, model.grads, (float)tc->lr);
        const double t3 = monotonic_seconds();
        if (step >= warmup) {
            forward_s += t1 - t0;
            backward_s += t2 - t1;
            optimizer_s += t3 - t2;
        }
    }
    const double step_s = (forward_s + backward_s + optimizer_s) / steps;
    cpu_s = (cpu_seconds_now() - cpu_s) / steps;
    const double flops = 3.0 * conv_flops_per_image(&shape) * batch;
    if (print) {
        printf("bench: forward %.2f ms, backward %.2f ms, adamw %.2f ms per step; final loss %.5f "
               "(reconstruction %.5f, kl %.3f)\n",
               1e3 * forward_s / steps, 1e3 * backward_s / steps, 1e3 * optimizer_s / steps, loss.total,
               loss.reconstruction, loss.kl);
        printf("bench: images_per_s=%.2f ms_per_step=%.2f cpu_ms_per_step=%.2f conv_gflops=%.1f batch=%d threads=%d "
               "steps=%d precision=%s model=ae conv=%s\n",
               batch / step_s, 1e3 * step_s, 1e3 * cpu_s, flops / step_s / 1e9, batch, omp_get_max_threads(), steps,
               precision_name(precision), conv_name(precision));
    }
    free(images);
    free(noise);
    adamw_destroy(&optimizer);
    autoencoder_destroy(&model);
    return loss.total;
}

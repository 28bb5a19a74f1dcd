/* `ldm bench`: times DiT training steps (forward, weighted MSE, backward, AdamW)
 * on random inputs after warm-up steps, and prints images/s, ms per step, the
 * time of each phase and the achieved GFLOP/s (FLOPs counted from the shapes:
 * backward = 2x forward). Everything is laid out before the first step. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "cli.h"
#include "commands.h"
#include "device.h"
#include "dit.h"
#include "fatal.h"
#include "ops.h"
#include "optimizer.h"
#include "rng.h"

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int command_bench(int argc, char **argv) {
    cli_option options[] = {
        {.name = "--config", .help = "config file (defaults only when left out)"},
        {.name = "--set", .repeatable = 1, .help = "override a config key: section.key=value (repeatable)"},
        {.name = "--steps", .value = "10", .help = "timed steps (default 10)"},
        {.name = "--warmup", .value = "2", .help = "untimed warm-up steps (default 2)"},
        {.name = "--help", .is_flag = 1, .help = "this help"},
        {0},
    };
    cli_parse("bench", argc, argv, 2, options);
    if (options[4].value) {
        cli_print_usage("bench", "Times DiT training steps (forward + backward + AdamW) on random inputs.", options);
        return 0;
    }
    ldm_config config;
    cli_load_config(&config, &options[0], &options[1]);
    int steps = (int)cli_int("bench", &options[2], 1, 1000000);
    int warmup = (int)cli_int("bench", &options[3], 0, 1000000);
    const train_config *tc = &config.train;
    int batch = tc->micro_batch ? tc->micro_batch : tc->batch_size;

    dit_shape shape = cli_dit_shape(&config);
    dit_model model;
    dit_create(&model, &shape, batch);
    dit_init_weights(&model, tc->seed);
    adamw_state optimizer;
    adamw_create(&optimizer, model.table.trainable_numel,
                 (adamw_hyper){(float)tc->adam_beta1, (float)tc->adam_beta2, (float)tc->adam_eps,
                               (float)tc->weight_decay});

    const size_t sample = (size_t)shape.in_channels * shape.input_size * shape.input_size;
    float *x = xmalloc(sizeof(float) * batch * sample);      /* (B, C, S, S) */
    float *target = xmalloc(sizeof(float) * batch * sample); /* (B, C, S, S) */
    float *out = xmalloc(sizeof(float) * batch * sample);    /* (B, C, S, S) */
    float *d_out = xmalloc(sizeof(float) * batch * sample);  /* (B, C, S, S) */
    float *t = xmalloc(sizeof(float) * batch);               /* (B) */
    int *y = xmalloc(sizeof(int) * batch);                   /* (B) */
    rng_stream rng = rng_stream_for(tc->seed, 0x62656e6368 /* "bench" */, 0);
    for (size_t i = 0; i < batch * sample; i++) {
        x[i] = rng_normal(&rng);
        target[i] = rng_normal(&rng);
    }
    for (int b = 0; b < batch; b++) {
        t[b] = 250.0f * (float)(config.diffusion.p_mean + config.diffusion.p_std * rng_normal(&rng));
        y[b] = (int)(rng_next_u64(&rng) % (uint64_t)(shape.num_classes + 1));
    }

    char devices[512];
    device_describe(devices, sizeof(devices));
    printf("bench: DiT input %dx%dx%d patch %d hidden %d depth %d heads %d, batch %d, %zu parameters, "
           "%.1f MiB laid out; %s\n",
           shape.input_size, shape.input_size, shape.in_channels, shape.patch_size, shape.hidden_size,
           shape.depth, shape.num_heads, batch, model.table.trainable_numel, model.memory_bytes / 1048576.0,
           devices);
    double forward_s = 0, backward_s = 0, optimizer_s = 0, loss = 0;
    for (int step = 0; step < warmup + steps; step++) {
        double t0 = now_seconds();
        dit_zero_grad(&model);
        dit_forward(&model, x, t, y, batch, out);
        loss = weighted_mse_forward(NULL, out, target, NULL, batch, (int)sample);
        double t1 = now_seconds();
        weighted_mse_backward(d_out, 1.0f, out, target, NULL, batch, (int)sample);
        dit_backward(&model, d_out, NULL, batch);
        double t2 = now_seconds();
        adamw_step(&optimizer, model.params, model.grads, (float)tc->lr);
        double t3 = now_seconds();
        if (step >= warmup) {
            forward_s += t1 - t0;
            backward_s += t2 - t1;
            optimizer_s += t3 - t2;
        }
    }
    double step_s = (forward_s + backward_s + optimizer_s) / steps;
    double flops = 3.0 * dit_forward_flops_per_sample(&shape) * batch;
    printf("bench: forward %.2f ms, backward %.2f ms, adamw %.2f ms per step; final loss %.5f\n",
           1e3 * forward_s / steps, 1e3 * backward_s / steps, 1e3 * optimizer_s / steps, loss);
    printf("bench: images_per_s=%.2f ms_per_step=%.2f gflops=%.1f batch=%d threads=%d steps=%d\n",
           batch / step_s, 1e3 * step_s, flops / step_s / 1e9, batch, omp_get_max_threads(), steps);
    if (!isfinite(loss)) fatal_internal("bench: the loss is not finite");
    free(x);
    free(target);
    free(out);
    free(d_out);
    free(t);
    free(y);
    adamw_destroy(&optimizer);
    dit_destroy(&model);
    return 0;
}

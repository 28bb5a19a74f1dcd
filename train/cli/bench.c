/* `ldm bench`: times DiT training steps (forward, weighted MSE, backward, AdamW)
 * on random inputs after warm-up steps, and prints images/s, ms per step, the
 * time of each phase and the achieved GFLOP/s (FLOPs counted from the shapes:
 * backward = 2x forward). Everything is laid out before the first step.
 * With --data it first times the data loader alone on that file, at the
 * config's micro-batch, and reports how many times faster than training it
 * delivers samples (loader_ratio). Numbers are rank 0's.
 * In train.precision bf16 or fp16 the DiT runs as training runs it (dit.h:
 * 16-bit GEMM inputs and stored activations; fp16 with the initial loss scale
 * applied to the loss gradient and taken out of the parameter gradient), and
 * bytes_per_image reports the activation memory laid out per image of the
 * batch (what is kept for backward, plus working and backward scratch).
 * --device cuda (the default where this build and machine have a GPU) times the
 * same steps on the rank's GPU (bench_cuda.c) and adds the model TFLOP/s and
 * the MFU against the GPU's dense peak to the result line. --model ae times the
 * autoencoder's step (bench_ae.c), --model gemm the DiT block's linear-layer
 * products alone (bench_gemm.c). */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_ae.h"
#include "bench_gemm.h"
#include "cli.h"
#include "comm.h"
#include "commands.h"
#include "device.h"
#include "dit.h"
#include "dit_profile.h"
#include "fatal.h"
#include "gemm_onednn.h"
#include "model_shapes.h"
#include "monotonic_clock.h"
#include "loader.h"
#include "ops.h"
#include "optimizer.h"
#include "rng.h"
#include "training_loop.h"
#ifdef LDM_HAVE_CUDA
#include "bench_cuda.h"
#endif

/* How long the loader is timed: long enough for a steady rate, short enough for tests. */
#define LOADER_BENCH_SECONDS 2.0

/* Times loader_next alone (opening, and the first batch, which waits for the
 * shard read and the first prefetch, reported apart); returns samples/s. The
 * loader is closed again so that its thread cannot disturb the training steps. */
static double bench_loader(const char *path, const ldm_config *config, int batch, int print) {
    /* The data the DiT of this config accepts, as training would check it. */
    const trainable dit_expectations = {.expect_channels = config->model.in_channels,
                                        .expect_size = config->model.input_size,
                                        .expect_num_classes = config->model.num_classes};
    loader_options options = training_loader_options(config, &dit_expectations, path, batch);
    double t0 = monotonic_seconds();
    loader *l = loader_open(&options);
    double open_s = monotonic_seconds() - t0;
    const dataset_info *info = loader_info(l);
    float *samples = xmalloc(sizeof(float) * (size_t)batch * (size_t)info->sample_elements); /* (B, C, H, W) */
    int32_t *labels = xmalloc(sizeof(int32_t) * (size_t)batch);                               /* (B) */
    int64_t *indices = xmalloc(sizeof(int64_t) * (size_t)batch);                              /* (B) */
    t0 = monotonic_seconds();
    loader_next(l, samples, labels, indices);
    double first_s = monotonic_seconds() - t0;

    int64_t batches = 0;
    double elapsed = 0;
    t0 = monotonic_seconds();
    do {
        loader_next(l, samples, labels, indices);
        batches++;
        elapsed = monotonic_seconds() - t0;
    } while (elapsed < LOADER_BENCH_SECONDS);
    double samples_per_s = (double)batches * batch / elapsed;
    int64_t rank_samples = loader_rank_samples(l);
    loader_state state = loader_get_state(l);
    if (print) {
        printf("bench: data %s: %s %lld x %dx%dx%d, %d virtual shards, %lld samples on this rank %s; open %.3f s, "
               "first batch %.3f s\n",
               info->path, info->kind == DATASET_IMAGES ? "images" : "latents", (long long)info->count,
               info->channels, info->height, info->width, loader_virtual_shards(l), (long long)rank_samples,
               loader_streams(l) ? "streamed" : "in memory", open_s, first_s);
        printf("bench: loader_samples_per_s=%.0f batch=%d epochs=%.2f seconds=%.2f\n", samples_per_s, batch,
               (double)state.position / (double)info->count, elapsed);
    }
    free(samples);
    free(labels);
    free(indices);
    loader_close(l);
    return samples_per_s;
}

/* Parts of a CPU step outside the model's ops, timed by the bench itself. */
enum { STEP_ZERO_GRAD, STEP_LOSS, STEP_OPTIMIZER, STEP_PARTS };

/* What the timed steps measured, on either device. */
typedef struct {
    double forward_s, backward_s, optimizer_s; /* summed over the timed steps */
    double step_s;                              /* per timed step */
    int profiled;                               /* 1: the CPU's per-phase times below */
    dit_profile phases;                         /* the model's ops, summed over the timed steps */
    double step_parts_s[STEP_PARTS];            /* summed over the timed steps */
    double loss;                                /* the last step's */
    size_t activation_bytes;                    /* laid out for the batch */
    char device_fields[160];                    /* added to the result line ("" on the CPU) */
} bench_result;

/* The random batch every device times on, made once on the host. */
typedef struct {
    float *x, *target; /* (B, C, S, S) */
    float *t;          /* (B) 250 ln sigma */
    int *y;            /* (B) labels, the null class included */
} bench_batch;

static bench_batch make_batch(const ldm_config *config, const dit_shape *shape, int batch) {
    const size_t sample = (size_t)shape->in_channels * shape->input_size * shape->input_size;
    bench_batch in;
    in.x = xmalloc(sizeof(float) * batch * sample);
    in.target = xmalloc(sizeof(float) * batch * sample);
    in.t = xmalloc(sizeof(float) * batch);
    in.y = xmalloc(sizeof(int) * batch);
    rng_stream rng = rng_stream_for(config->train.seed, 0x62656e6368 /* "bench" */, 0);
    for (size_t i = 0; i < batch * sample; i++) {
        in.x[i] = rng_normal(&rng);
        in.target[i] = rng_normal(&rng);
    }
    for (int b = 0; b < batch; b++) {
        in.t[b] = 250.0f * (float)(config->diffusion.p_mean + config->diffusion.p_std * rng_normal(&rng));
        in.y[b] = (int)(rng_next_u64(&rng) % (uint64_t)(shape->num_classes + 1));
    }
    return in;
}

static void free_batch(bench_batch *in) {
    free(in->x);
    free(in->target);
    free(in->t);
    free(in->y);
}

static void print_layout(const dit_shape *shape, int batch, size_t parameters, ldm_precision precision,
                         size_t memory_bytes, size_t activation_bytes, const char *devices) {
    printf("bench: DiT input %dx%dx%d patch %d hidden %d depth %d heads %d, batch %d, %zu parameters, %s, "
           "%.1f MiB laid out (activations %.1f MiB); %s\n",
           shape->input_size, shape->input_size, shape->in_channels, shape->patch_size, shape->hidden_size,
           shape->depth, shape->num_heads, batch, parameters, precision_name(precision), memory_bytes / 1048576.0,
           activation_bytes / 1048576.0, devices);
}

/* --device: 1 for cuda, 0 for cpu; left out, cuda where this build and machine
 * have a GPU. Asking for cuda without one is refused before any work. */
static int bench_on_cuda(const char *device) {
    if (!device) return device_cuda_count() > 0;
    if (strcmp(device, "cpu") == 0) return 0;
    if (strcmp(device, "cuda") != 0) fatal_input("ldm bench: option --device: expected cpu or cuda, got '%s'", device);
    if (!device_cuda_compiled())
        fatal_input("ldm bench: option --device: cuda: this build has no CUDA (cmake -DLDM_CUDA=ON)");
    if (device_cuda_count() == 0) {
        const char *error = device_cuda_error();
        fatal_input("ldm bench: option --device: cuda: %s", error ? error : "no CUDA device on this machine");
    }
    return 1;
}

static bench_result bench_cpu(const ldm_config *config, const dit_shape *shape, int batch, ldm_precision precision,
                              float loss_scale, const bench_batch *in, int warmup, int steps, int print) {
    const train_config *tc = &config->train;
    dit_model model;
    dit_create_precision(&model, shape, batch, precision);
    dit_init_weights(&model, tc->seed);
    adamw_state optimizer;
    adamw_create(&optimizer, model.table.trainable_numel,
                 (adamw_hyper){(float)tc->adam_beta1, (float)tc->adam_beta2, (float)tc->adam_eps,
                               (float)tc->weight_decay});

    const size_t sample = (size_t)shape->in_channels * shape->input_size * shape->input_size;
    float *out = xmalloc(sizeof(float) * batch * sample);   /* (B, C, S, S) */
    float *d_out = xmalloc(sizeof(float) * batch * sample); /* (B, C, S, S) */

    char devices[512];
    device_describe(devices, sizeof(devices));
    const size_t used = strlen(devices); /* and which GEMMs the DiT runs on (gemm_onednn.h) */
    snprintf(devices + used, sizeof(devices) - used, "; GEMMs: %s",
             cpu_gemm_kind_name(precision == PRECISION_BF16 ? cpu_gemm_bf16_kind() : cpu_gemm_fp32_kind()));
    if (print)
        print_layout(shape, batch, model.table.trainable_numel, precision, model.memory_bytes, model.activation_bytes,
                     devices);
    double forward_s = 0, backward_s = 0, optimizer_s = 0, loss = 0;
    double parts_s[STEP_PARTS] = {0};
    dit_profile phases;
    memset(&phases, 0, sizeof(phases));
    for (int step = 0; step < warmup + steps; step++) {
        const int timed = step >= warmup;
        if (step == warmup) dit_profile_start(&model, &phases);
        double t0 = monotonic_seconds();
        dit_zero_grad(&model);
        const double zeroed = monotonic_seconds();
        dit_forward(&model, in->x, in->t, in->y, batch, out);
        const double forward_done = monotonic_seconds();
        loss = weighted_mse_forward(NULL, out, in->target, NULL, batch, (int)sample);
        double t1 = monotonic_seconds();
        weighted_mse_backward(d_out, loss_scale, out, in->target, NULL, batch, (int)sample);
        const double loss_done = monotonic_seconds();
        dit_backward(&model, d_out, NULL, batch);
        if (loss_scale != 1.0f) {
            const float inverse = 1.0f / loss_scale;
            for (size_t i = 0; i < model.table.trainable_numel; i++) model.grads[i] *= inverse;
        }
        double t2 = monotonic_seconds();
        adamw_step(&optimizer, model.params, model.grads, (float)tc->lr);
        double t3 = monotonic_seconds();
        if (timed) {
            forward_s += t1 - t0;
            backward_s += t2 - t1;
            optimizer_s += t3 - t2;
            parts_s[STEP_ZERO_GRAD] += zeroed - t0;
            parts_s[STEP_LOSS] += (t1 - forward_done) + (loss_done - t1);
            parts_s[STEP_OPTIMIZER] += t3 - t2;
        }
    }
    dit_profile_stop(&model);
    bench_result r = {.forward_s = forward_s, .backward_s = backward_s, .optimizer_s = optimizer_s,
                      .step_s = (forward_s + backward_s + optimizer_s) / steps, .loss = loss,
                      .activation_bytes = model.activation_bytes, .device_fields = "", .profiled = 1,
                      .phases = phases};
    memcpy(r.step_parts_s, parts_s, sizeof(parts_s));
    free(out);
    free(d_out);
    adamw_destroy(&optimizer);
    dit_destroy(&model);
    return r;
}

#ifdef LDM_HAVE_CUDA
/* The same steps on the rank's GPU (bench_cuda.c). The result line adds the
 * model TFLOP/s and, where the GPU's dense peak is known, the MFU against it. */
static bench_result bench_gpu(const ldm_config *config, const dit_shape *shape, int batch, ldm_precision precision,
                              float loss_scale, const bench_batch *in, int warmup, int steps, int print,
                              double flops) {
    bench_cuda gpu;
    bench_cuda_create(&gpu, shape, batch, precision, loss_scale, config->train.seed, in->x, in->t, in->y,
                      in->target);
    const char *peak_source;
    const double peak = bench_cuda_peak_tflops(gpu.device_name, precision, &peak_source);
    char devices[512];
    if (peak > 0)
        snprintf(devices, sizeof(devices), "cuda:%d %s, dense %s peak %g TFLOP/s (%s)", gpu.device, gpu.device_name,
                 precision == PRECISION_FP32 ? "fp32" : "16-bit", peak, peak_source);
    else
        snprintf(devices, sizeof(devices), "cuda:%d %s, peak unknown (set LDM_PEAK_TFLOPS for the mfu)", gpu.device,
                 gpu.device_name);
    if (print)
        print_layout(shape, batch, gpu.model.table.trainable_numel, precision, gpu.model.memory_bytes,
                     gpu.model.activation_bytes, devices);
    bench_cuda_times times;
    bench_cuda_run(&gpu, &config->train, warmup, steps, &times);
    /* Per step: all timed steps between one pair of events, gaps included. */
    bench_result r = {.forward_s = times.forward_s, .backward_s = times.backward_s,
                      .optimizer_s = times.optimizer_s, .step_s = times.elapsed_s / steps, .loss = times.loss,
                      .activation_bytes = gpu.model.activation_bytes};
    const double tflops = flops / r.step_s / 1e12;
    int used = snprintf(r.device_fields, sizeof(r.device_fields), " device=cuda tflops=%.3f", tflops);
    if (peak > 0 && used > 0 && (size_t)used < sizeof(r.device_fields))
        used += snprintf(r.device_fields + used, sizeof(r.device_fields) - (size_t)used, " mfu=%.3f peak_tflops=%g",
                         tflops / peak, peak);
    const double sampling = bench_cuda_sampling_images_per_s(&gpu, config->diffusion.sigma_data, warmup, steps);
    if (used > 0 && (size_t)used < sizeof(r.device_fields))
        snprintf(r.device_fields + used, sizeof(r.device_fields) - (size_t)used, " sample_images_per_s=%.1f", sampling);
    bench_cuda_destroy(&gpu);
    return r;
}
#endif

/* The command line of ldm bench, parsed, with the config it names. */
typedef struct {
    const char *config_path; /* NULL: the defaults */
    const char *data;        /* --data, or NULL */
    cli_list overrides;      /* --set */
    ldm_config config;
    int on_cuda, steps, warmup;
    int autoencoder; /* --model ae: the autoencoder's step (bench_ae.c) */
    int gemms;       /* --model gemm: the DiT's linear-layer products alone (bench_gemm.c) */
    int batch, accumulation_steps; /* the rank's micro-batch, as training splits the global batch */
} bench_options;

/* Parses the command line and loads the config into o; 0 when help was printed. */
static int parse_bench_options(int argc, char **argv, bench_options *o) {
    o->config_path = o->data = NULL;
    o->overrides.count = 0;
    const char *steps = "10", *warmup = "2", *device = NULL, *model = "dit";
    int help = 0;
    cli_option table[] = {
        {.name = "--config", .text = &o->config_path, .help = "config file (defaults only when left out)"},
        {.name = "--set", .list = &o->overrides, .help = "override a config key: section.key=value (repeatable)"},
        {.name = "--steps", .text = &steps, .help = "timed steps (default 10)"},
        {.name = "--warmup", .text = &warmup, .help = "untimed warm-up steps (default 2)"},
        {.name = "--data", .text = &o->data, .help = "an ldm data set: first time the data loader alone on it"},
        {.name = "--device", .text = &device,
         .help = "cpu or cuda (default: cuda where this build and machine have a GPU, else cpu)"},
        {.name = "--model", .text = &model,
         .help = "dit (default), ae: the autoencoder's step, or gemm: the DiT block's linear-layer products alone "
                 "(ae and gemm on the CPU)"},
        {.name = "--help", .flag = &help, .help = "this help"},
        {0},
    };
    cli_parse("bench", argc, argv, 2, table);
    if (help) {
        cli_print_usage("bench",
                        "Times DiT training steps (forward + backward + AdamW) on random inputs, and with --data\n"
                        "the data loader on a data set file first. --set train.precision=bf16|fp16 times the\n"
                        "mixed-precision step; bytes_per_image is the activation memory per image of the batch.\n"
                        "On a GPU (--device cuda) the result line adds the model TFLOP/s and the MFU against the\n"
                        "GPU's dense peak (a table by GPU name; LDM_PEAK_TFLOPS=P sets it).",
                        table);
        return 0;
    }
    if (strcmp(model, "dit") != 0 && strcmp(model, "ae") != 0 && strcmp(model, "gemm") != 0)
        fatal_input("ldm bench: option --model: expected dit, ae or gemm, got '%s'", model);
    o->autoencoder = strcmp(model, "ae") == 0;
    o->gemms = strcmp(model, "gemm") == 0;
    if ((o->autoencoder || o->gemms) && o->data)
        fatal_input("ldm bench: option --data: times the DiT's loader, not with --model %s", model);
    if ((o->autoencoder || o->gemms) && device && strcmp(device, "cpu") != 0)
        fatal_input("ldm bench: option --model %s: times the CPU only (--device cpu)", model);
    o->on_cuda = o->autoencoder || o->gemms ? 0 : bench_on_cuda(device);
    cli_load_config(&o->config, o->config_path, &o->overrides);
    o->steps = (int)cli_int("bench", "--steps", steps, 1, 1000000);
    o->warmup = (int)cli_int("bench", "--warmup", warmup, 0, 1000000);
    training_batch_split(&o->config, o->config_path, comm_world_size(), &o->batch, &o->accumulation_steps);
    return 1;
}

/* The CPU step's time per phase: ms per step, its share of the step and, for
 * products, GFLOP/s; "other" is the step less everything timed (the graph's own
 * bookkeeping, the timer itself, fp16's gradient unscaling). */
static void print_phases(const bench_result *r, int steps) {
    static const char *const part_names[STEP_PARTS] = {"zero grad", "loss", "optimizer (adamw)"};
    const double step_ms = 1e3 * r->step_s;
    double timed_ms = 0;
    printf("bench: phase                 ms/step      %%  cpu ms/step   GFLOP/s  calls/step\n");
    for (int p = 0; p < DIT_PHASES; p++) {
        const double ms = 1e3 * r->phases.seconds[p] / steps;
        timed_ms += ms;
        printf("bench:   %-20s %9.2f %6.1f %12.2f", dit_phase_name((dit_phase)p), ms, 100.0 * ms / step_ms,
               1e3 * r->phases.cpu_seconds[p] / steps);
        if (r->phases.flops[p] > 0 && r->phases.seconds[p] > 0)
            printf(" %9.1f", r->phases.flops[p] / r->phases.seconds[p] / 1e9);
        else
            printf(" %9s", "");
        printf(" %11ld\n", r->phases.calls[p] / steps);
    }
    for (int p = 0; p < STEP_PARTS; p++) {
        const double ms = 1e3 * r->step_parts_s[p] / steps;
        timed_ms += ms;
        printf("bench:   %-20s %9.2f %6.1f\n", part_names[p], ms, 100.0 * ms / step_ms);
    }
    printf("bench:   %-20s %9.2f %6.1f\n", "other", step_ms - timed_ms, 100.0 * (step_ms - timed_ms) / step_ms);
    printf("bench:   data: not in this step (random inputs made once; --data times the loader alone)\n");
}

/* Rank 0's closing lines. */
static void print_bench_result(const bench_options *o, const bench_result *r, ldm_precision precision, double flops,
                               double loader_samples_per_s) {
    const int batch = o->batch, steps = o->steps;
    printf("bench: forward %.2f ms, backward %.2f ms, adamw %.2f ms per step; final loss %.5f\n",
           1e3 * r->forward_s / steps, 1e3 * r->backward_s / steps, 1e3 * r->optimizer_s / steps, r->loss);
    if (r->profiled) print_phases(r, steps);
    printf("bench: images_per_s=%.2f ms_per_step=%.2f gflops=%.1f batch=%d threads=%d steps=%d precision=%s "
           "bytes_per_image=%zu%s",
           batch / r->step_s, 1e3 * r->step_s, flops / r->step_s / 1e9, batch, omp_get_max_threads(), steps,
           precision_name(precision), r->activation_bytes / (size_t)batch, r->device_fields);
    /* loader samples/s over training images/s: how far ahead of training the loader is */
    if (o->data) printf(" loader_ratio=%.1f", loader_samples_per_s / (batch / r->step_s));
    printf("\n");
}

int command_bench(int argc, char **argv) {
    bench_options o;
    if (!parse_bench_options(argc, argv, &o)) return 0;
    const ldm_config *config = &o.config;
    const int batch = o.batch, print = comm_rank() == 0;
    if (o.autoencoder) {
        if (!isfinite(bench_autoencoder(config, batch, o.warmup, o.steps, print)))
            fatal_internal("bench: the loss is not finite");
        return 0;
    }
    if (o.gemms) {
        bench_gemm_shapes(config, batch, o.warmup, o.steps, print);
        return 0;
    }
    double loader_samples_per_s = o.data ? bench_loader(o.data, config, batch, print) : 0;

    dit_shape shape = config_dit_shape(config);
    const ldm_precision precision = (ldm_precision)precision_from_name(config->train.precision);
    const float loss_scale = precision == PRECISION_FP16 ? (float)config->train.loss_scale_initial : 1.0f;
    const double flops = 3.0 * dit_forward_flops_per_sample(&shape) * batch;
    bench_batch in = make_batch(config, &shape, batch);
#ifdef LDM_HAVE_CUDA
    const bench_result r =
        o.on_cuda ? bench_gpu(config, &shape, batch, precision, loss_scale, &in, o.warmup, o.steps, print, flops)
                  : bench_cpu(config, &shape, batch, precision, loss_scale, &in, o.warmup, o.steps, print);
#else
    (void)o.on_cuda; /* 0: bench_on_cuda refuses cuda in a CPU build */
    const bench_result r = bench_cpu(config, &shape, batch, precision, loss_scale, &in, o.warmup, o.steps, print);
#endif
    if (print) print_bench_result(&o, &r, precision, flops, loader_samples_per_s);
    if (!isfinite(r.loss)) fatal_internal("bench: the loss is not finite");
#ifdef LDM_HAVE_CUDA
    if (o.on_cuda) { /* and a consistency distillation step (ldm distill's) of the same model and batch */
        double distill_loss = 0;
        const double step_s = bench_cuda_distill(config, batch, in.x, in.y, o.warmup, o.steps, &distill_loss);
        if (print)
            printf("bench: distill images_per_s=%.2f ms_per_step=%.2f batch=%d guidance=%g loss=%.5f device=cuda\n",
                   batch / step_s, 1e3 * step_s, batch, config->distill.guidance, distill_loss);
        if (!isfinite(distill_loss)) fatal_internal("bench: the distillation loss is not finite");
    }
#endif
    free_batch(&in);
    return 0;
}

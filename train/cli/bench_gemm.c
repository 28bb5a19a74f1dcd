/* The DiT's linear-layer products alone (`ldm bench --model gemm`): for each
 * of a block's four linears (qkv, proj, fc1, fc2) at rows = batch x tokens, its
 * forward (with bias), input-gradient and weight-gradient products, through the
 * functions and the fp32 GEMM (oneDNN's where the build has it, else OpenBLAS's)
 * that fp32 training runs, on fixed random operands. Each product runs warmup
 * times, then 3 rounds of steps calls; its line gives the best round's ms per
 * call and GFLOP/s. tests/bench_dit_pytorch.py --gemm-shapes times PyTorch's
 * products of the same shapes the same way, so that tests/bench_vs_pytorch.sh
 * --gemm-shapes can set the two GEMM libraries side by side, product by product,
 * apart from the rest of a training step. */
#include "bench_gemm.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#include "dit.h"
#include "fatal.h"
#include "gemm_onednn.h"
#include "model_shapes.h"
#include "monotonic_clock.h"
#include "ops.h"
#include "rng.h"

enum { PRODUCT_FORWARD, PRODUCT_INPUT_GRADIENT, PRODUCT_WEIGHT_GRADIENT, PRODUCTS };
static const char *const product_names[PRODUCTS] = {"forward", "d_input", "d_weight"};

typedef struct {
    float *in, *d_in;       /* (rows, in_features) */
    float *out, *d_out;     /* (rows, out_features) */
    float *weight, *d_weight; /* (out_features, in_features) */
    float *bias;            /* (out_features) */
} operands;

/* One call of product p of a linear (in_features -> out_features) on rows rows. */
static void run_product(int p, int onednn, const operands *o, int rows, int in_features, int out_features) {
    if (p == PRODUCT_FORWARD) {
        if (onednn)
            linear_forward_onednn(o->out, o->in, o->weight, o->bias, rows, in_features, out_features);
        else
            linear_forward(o->out, o->in, o->weight, o->bias, rows, rows, in_features, out_features);
    } else {
        float *d_in = p == PRODUCT_INPUT_GRADIENT ? o->d_in : NULL;
        float *d_weight = p == PRODUCT_WEIGHT_GRADIENT ? o->d_weight : NULL;
        if (onednn)
            linear_backward_onednn(d_in, 0.0f, d_weight, NULL, o->d_out, o->in, o->weight, rows, in_features,
                                   out_features);
        else
            linear_backward(d_in, 0.0f, d_weight, NULL, o->d_out, o->in, o->weight, rows, in_features, out_features);
    }
}

static float *random_floats(rng_stream *rng, size_t count) {
    float *x = xmalloc(sizeof(float) * count);
    for (size_t i = 0; i < count; i++) x[i] = rng_normal(rng);
    return x;
}

double bench_gemm_shapes(const ldm_config *config, int batch, int warmup, int steps, int print) {
    const dit_shape shape = config_dit_shape(config);
    const int side = shape.input_size / shape.patch_size, rows = batch * side * side;
    const int D = shape.hidden_size, F = shape.mlp_hidden;
    const struct {
        const char *name;
        int in_features, out_features;
    } linears[] = {{"qkv", D, 3 * D}, {"proj", D, D}, {"fc1", D, F}, {"fc2", F, D}};
    const int widest = F > 3 * D ? F : 3 * D;
    const int onednn = cpu_gemm_fp32_kind() == CPU_GEMM_ONEDNN;
    rng_stream rng = rng_stream_for(config->train.seed, 0x67656d6d /* "gemm" */, 0);
    operands o = {.in = random_floats(&rng, (size_t)rows * widest),
                  .d_in = random_floats(&rng, (size_t)rows * widest),
                  .out = random_floats(&rng, (size_t)rows * widest),
                  .d_out = random_floats(&rng, (size_t)rows * widest),
                  .weight = random_floats(&rng, (size_t)widest * widest),
                  .d_weight = random_floats(&rng, (size_t)widest * widest),
                  .bias = random_floats(&rng, (size_t)widest)};
    double total_ms = 0, total_flops = 0;
    for (size_t l = 0; l < sizeof linears / sizeof linears[0]; l++) {
        const int in_features = linears[l].in_features, out_features = linears[l].out_features;
        if (onednn) linear_plan_onednn(rows, in_features, out_features, 1, 0.0f, 1);
        for (int p = 0; p < PRODUCTS; p++) {
            for (int i = 0; i < warmup; i++) run_product(p, onednn, &o, rows, in_features, out_features);
            double best = 0;
            for (int round = 0; round < 3; round++) {
                const double t0 = monotonic_seconds();
                for (int i = 0; i < steps; i++) run_product(p, onednn, &o, rows, in_features, out_features);
                const double seconds = (monotonic_seconds() - t0) / steps;
                if (round == 0 || seconds < best) best = seconds;
            }
            const double flops = 2.0 * rows * in_features * out_features;
            total_ms += 1e3 * best;
            total_flops += flops;
            if (print)
                printf("bench: gemm %s %s rows=%d in=%d out=%d ms=%.3f gflops=%.1f\n", linears[l].name,
                       product_names[p], rows, in_features, out_features, 1e3 * best, flops / best / 1e9);
        }
    }
    if (print)
        printf("bench: gemm_total ms_per_block=%.2f gflops=%.1f gemm=%s threads=%d steps=%d\n", total_ms,
               total_flops / (total_ms / 1e3) / 1e9, onednn ? "onednn" : "openblas", omp_get_max_threads(), steps);
    free(o.in), free(o.d_in), free(o.out), free(o.d_out), free(o.weight), free(o.d_weight), free(o.bias);
    return total_ms;
}

/* The DiT on the GPU (model/dit_cuda.h) against the PyTorch fixtures and against
 * the CPU model (dit.h):
 * 1. fp32 on tests/fixtures/dit_small.safetensors and dit_small_guided.safetensors
 *    (the checks and bounds of test_dit_reference.c): output and every parameter
 *    gradient within max |gpu - ref| <= 1e-5 max |ref| (+ 1e-9 for gradients) per
 *    tensor, the loss and the losses of 10 AdamW steps (dit_cuda_adamw_step)
 *    within 1e-5 relative. The reference is float64 and the CPU model meets these
 *    bounds with errors of about 5e-7; the GPU differs from it only in summation
 *    orders (cuBLASLt tiles, block reductions) and in CUDA's expf/tanhf being a
 *    few ulp from fast_math.h's, errors of the same size, so the bounds are the CPU's.
 * 2. A random model and batch (test_precision.c's shape and set-up) through
 *    dit_forward_guided/dit_backward on the CPU in fp32 and through the GPU in each
 *    precision (a pass: forward, weighted MSE, backward, all on the device):
 *    fp32 output, parameter gradient (whole and per tensor) and input gradient
 *    within 1e-4 relative L2 of the CPU's, loss within 1e-5; bf16 / fp16 within
 *    test_precision.c's bounds against fp32 (output 0.02 / 0.003, gradients twice
 *    that, each tensor's gradient four times, loss the same relative), with a
 *    nonzero output error (the rounding happens), and within the same bounds of
 *    the CPU model in the same precision (the same 16-bit path); a gradient scaled
 *    by 2^24 stays finite in bf16 and overflows in fp16.
 * 3. A second pass gives the same bits (output, loss, gradients, input gradient);
 *    the batch (3) is smaller than the GPU model's max_batch (5); parameters come
 *    back from the device bit for bit, pos_embed is the CPU's; AdamW moments
 *    round-trip; what a block keeps for backward in 16 bits is under 0.55 of
 *    fp32's (a model made without optimizer state has none).
 * Reports itself skipped (exit 77) in a CPU build or without a GPU. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device.h"
#include "dit.h"
#include "ops.h"
#include "precision.h"
#include "rng.h"
#include "safetensors.h"
#include "test_util.h"

#ifdef LDM_HAVE_CUDA
#include "dit_cuda.h"
#include "ops_cuda.h"

#define FIXTURE_TOLERANCE 1e-5
#define FP32_TOLERANCE 1e-4

/* ---- helpers ---- */

/* A device copy of bytes of host (filled with NaN bytes when host is NULL, so
 * that anything left unwritten shows). */
static void *device_copy(const void *host, size_t bytes) {
    void *device = cuda_buffer_alloc(bytes);
    if (host) cuda_copy_to_device(device, host, bytes);
    else cuda_buffer_fill_bytes(device, 0xff, bytes);
    return device;
}



/* One batch on the device: inputs, and what a pass writes. */
typedef struct {
    float *x, *t, *w, *target, *weight; /* w, weight may be NULL */
    int *y;
    float *out, *d_out, *d_x, *loss;
} device_batch;

static device_batch device_batch_make(const float *x, const float *t, const float *w, const int *y,
                                      const float *target, const float *weight, int batch, size_t sample) {
    const size_t values = (size_t)batch * sample * sizeof(float);
    device_batch d;
    d.x = device_copy(x, values);
    d.t = device_copy(t, batch * sizeof(float));
    d.w = w ? device_copy(w, batch * sizeof(float)) : NULL;
    d.y = device_copy(y, batch * sizeof(int));
    d.target = device_copy(target, values);
    d.weight = weight ? device_copy(weight, batch * sizeof(float)) : NULL;
    d.out = device_copy(NULL, values);
    d.d_out = device_copy(NULL, values);
    d.d_x = device_copy(NULL, values);
    d.loss = device_copy(NULL, sizeof(float));
    return d;
}

static void device_batch_free(device_batch *d) {
    float *floats[] = {d->x, d->t, d->w, d->target, d->weight, d->out, d->d_out, d->d_x, d->loss};
    for (size_t i = 0; i < sizeof(floats) / sizeof(floats[0]); i++) cuda_buffer_free(floats[i]);
    cuda_buffer_free(d->y);
    memset(d, 0, sizeof(*d));
}

/* A training pass on the GPU: zero gradients, forward, weighted MSE (d_loss
 * scales its gradient), backward with the input gradient. Returns the loss;
 * out, d_x (batch * sample, or NULL) and grads (or NULL) are filled on the host. */
static float gpu_pass(dit_cuda_model *g, const device_batch *d, int batch, size_t sample, float d_loss, float *out,
                      float *d_x, float *grads) {
    dit_cuda_zero_grad(g);
    dit_cuda_forward(g, d->x, d->t, d->y, d->w, batch, d->out);
    weighted_mse_forward_cuda(d->loss, NULL, d->out, d->target, d->weight, batch, (int)sample, g->stream);
    weighted_mse_backward_cuda(d->d_out, d_loss, d->out, d->target, d->weight, batch, (int)sample, g->stream);
    dit_cuda_backward(g, d->d_out, d->d_x, batch);
    dit_cuda_synchronize(g);
    float loss;
    cuda_copy_to_host(&loss, d->loss, sizeof(float));
    if (out) cuda_copy_to_host(out, d->out, (size_t)batch * sample * sizeof(float));
    if (d_x) cuda_copy_to_host(d_x, d->d_x, (size_t)batch * sample * sizeof(float));
    if (grads) dit_cuda_download_grads(g, grads);
    return loss;
}

/* ---- 1. the PyTorch fixtures ---- */

static const safetensors_tensor *need(const safetensors_file *f, const char *name, size_t numel) {
    const safetensors_tensor *t = safetensors_find(f, name);
    CHECK_MSG(t && t->numel == numel, "fixture tensor %s missing or not of %zu values", name, numel);
    return t && t->numel == numel ? t : NULL;
}

static void check_fixture(const char *fixture, int guided) {
    printf("%s\n", fixture);
    safetensors_file fx;
    char err[512];
    if (safetensors_read(fixture, &fx, err, sizeof(err)) != 0) {
        CHECK_MSG(0, "%s", err);
        return;
    }
    enum { B = 4, SAMPLE = 4 * 8 * 8 };
    dit_shape shape = {.input_size = 8, .in_channels = 4, .patch_size = 2, .hidden_size = 64, .depth = 2,
                       .num_heads = 4, .mlp_hidden = 256, .num_classes = 10, .guidance_input = guided};
    dit_model host; /* the weights by name */
    dit_create(&host, &shape, B);
    int missing = 0;
    for (int i = 0; i < host.table.count; i++) {
        param_entry *e = &host.table.entries[i];
        const safetensors_tensor *t = need(&fx, e->name, e->numel);
        if (t && e->trainable) memcpy(e->data, t->data, sizeof(float) * e->numel);
        missing += !t;
    }
    const safetensors_tensor *x = need(&fx, "input.x", B * SAMPLE), *t = need(&fx, "input.t", B),
                             *y = need(&fx, "input.y", B), *target = need(&fx, "input.target", B * SAMPLE),
                             *weight = need(&fx, "input.weight", B), *output = need(&fx, "output", B * SAMPLE),
                             *loss_ref = need(&fx, "loss", 1), *hyper = need(&fx, "adamw.hparams", 5),
                             *losses_ref = need(&fx, "adamw.losses", 10);
    const safetensors_tensor *w = guided ? need(&fx, "input.w", B) : NULL;
    if (missing || !x || !t || !y || !target || !weight || !output || !loss_ref || !hyper || !losses_ref ||
        (guided && !w)) {
        dit_destroy(&host);
        safetensors_free(&fx);
        return;
    }

    dit_cuda_model g;
    dit_cuda_create(&g, &shape, B, PRECISION_FP32, 1);
    dit_cuda_upload_params(&g, host.params);
    device_batch d = device_batch_make(x->data, t->data, w ? w->data : NULL, y->data, target->data, weight->data, B,
                                       SAMPLE);
    float out[B * SAMPLE];
    float *grads = malloc(sizeof(float) * g.table.trainable_numel);
    float loss = gpu_pass(&g, &d, B, SAMPLE, 1.0f, out, NULL, grads);
    double ref_max;
    double rel = test_relative_max_error(out, output->data, B * SAMPLE, &ref_max);
    printf("output: max error %.3g relative to max |ref| %.3g\n", rel, ref_max);
    CHECK_MSG(rel <= FIXTURE_TOLERANCE, "output error %.3g", rel);
    CHECK_CLOSE(loss, ((const float *)loss_ref->data)[0], 0, FIXTURE_TOLERANCE);

    double worst = 0;
    const char *worst_name = "";
    for (int i = 0; i < g.table.count; i++) {
        const param_entry *e = &g.table.entries[i];
        if (!e->trainable) continue;
        char name[PARAM_NAME_MAX + 8];
        snprintf(name, sizeof(name), "grad.%s", e->name);
        const safetensors_tensor *ref = need(&fx, name, e->numel);
        if (!ref) continue;
        double gmax;
        double grel = test_relative_max_error(grads + e->offset, ref->data, e->numel, &gmax);
        CHECK_MSG(grel <= FIXTURE_TOLERANCE + 1e-9 / (gmax > 0 ? gmax : 1), "%s: gradient error %.3g (max |ref| %.3g)",
                  name, grel, gmax);
        if (grel > worst) worst = grel, worst_name = e->name;
    }
    printf("gradients: worst relative error %.3g (%s)\n", worst, worst_name);

    /* 10 AdamW steps from the same weights on the same batch */
    const float *h = hyper->data, *ref_losses = losses_ref->data;
    dit_cuda_upload_params(&g, host.params);
    double worst_loss = 0;
    for (int step = 0; step < 10; step++) {
        float l = gpu_pass(&g, &d, B, SAMPLE, 1.0f, NULL, NULL, NULL);
        CHECK_CLOSE(l, ref_losses[step], 0, FIXTURE_TOLERANCE);
        worst_loss = fmax(worst_loss, fabs(l - ref_losses[step]) / fabs(ref_losses[step]));
        dit_cuda_adamw_step(&g, h[0], h[1], h[2], h[3], h[4]);
    }
    printf("adamw: 10 losses from %.6f to %.6f, worst relative error %.3g\n", ref_losses[0], ref_losses[9],
           worst_loss);
    CHECK(g.adam_step == 10);

    free(grads);
    device_batch_free(&d);
    dit_cuda_destroy(&g);
    dit_destroy(&host);
    safetensors_free(&fx);
}

/* ---- 2. and 3. the CPU model against the GPU model ---- */

enum { BATCH = 3, GPU_MAX_BATCH = 5, SAMPLE = 4 * 8 * 8 };

static const dit_shape small_shape = {.input_size = 8, .in_channels = 4, .patch_size = 2, .hidden_size = 32,
                                      .depth = 2, .num_heads = 4, .mlp_hidden = 128, .num_classes = 10};

/* A batch and what a pass gives (host). */
typedef struct {
    float x[BATCH * SAMPLE], target[BATCH * SAMPLE], t[BATCH], w[BATCH];
    int y[BATCH];
    float out[BATCH * SAMPLE], d_out[BATCH * SAMPLE], d_x[BATCH * SAMPLE], loss;
    float *grads; /* (trainable_numel), malloc'd */
} pass_result;

/* test_precision.c's model: DiT's initialisation with every gate opened by noise. */
static void make_cpu_model(dit_model *m, ldm_precision precision, int guided) {
    dit_shape shape = small_shape;
    shape.guidance_input = guided;
    dit_create_precision(m, &shape, BATCH, precision);
    dit_init_weights(m, 7);
    rng_stream rng = rng_stream_for(11, 0, 0);
    for (size_t i = 0; i < m->table.trainable_numel; i++) m->params[i] += 0.05f * rng_normal(&rng);
}

static void make_batch(pass_result *r) {
    rng_stream rng = rng_stream_for(12, 0, 0);
    for (int i = 0; i < BATCH * SAMPLE; i++) {
        r->x[i] = rng_normal(&rng);
        r->target[i] = rng_normal(&rng);
    }
    for (int b = 0; b < BATCH; b++) {
        r->t[b] = 100.0f * rng_normal(&rng);
        r->y[b] = 3 * b;
        r->w[b] = 1.0f + 1.5f * b;
    }
    r->y[BATCH - 1] = small_shape.num_classes; /* the null class */
}

static void cpu_pass(dit_model *m, pass_result *r, int guided) {
    dit_zero_grad(m);
    dit_forward_guided(m, r->x, r->t, r->y, guided ? r->w : NULL, BATCH, r->out);
    r->loss = weighted_mse_forward(NULL, r->out, r->target, NULL, BATCH, SAMPLE);
    weighted_mse_backward(r->d_out, 1.0f, r->out, r->target, NULL, BATCH, SAMPLE);
    dit_backward(m, r->d_out, r->d_x, BATCH);
    r->grads = malloc(sizeof(float) * m->table.trainable_numel);
    memcpy(r->grads, m->grads, sizeof(float) * m->table.trainable_numel);
}

/* got against want (relative L2): the output within out_tolerance, the
 * parameter and input gradients within grad_tolerance, each tensor's gradient
 * within tensor_tolerance, the loss within loss_tolerance (relative). */
static void compare(const char *what, const param_table *table, const pass_result *got, const pass_result *want,
                    double out_tolerance, double grad_tolerance, double tensor_tolerance, double loss_tolerance) {
    double out_error = test_relative_l2(got->out, want->out, BATCH * SAMPLE);
    double grad_error = test_relative_l2(got->grads, want->grads, table->trainable_numel);
    double dx_error = test_relative_l2(got->d_x, want->d_x, BATCH * SAMPLE);
    printf("%s: loss %.9f (%.9f), relative L2 error: output %.2e, parameter gradient %.2e, input gradient %.2e\n",
           what, got->loss, want->loss, out_error, grad_error, dx_error);
    CHECK_MSG(out_error <= out_tolerance, "%s: output error %.3g", what, out_error);
    CHECK_MSG(grad_error <= grad_tolerance, "%s: gradient error %.3g", what, grad_error);
    CHECK_MSG(dx_error <= grad_tolerance, "%s: input gradient error %.3g", what, dx_error);
    CHECK_CLOSE(got->loss, want->loss, 0, loss_tolerance);
    int bad = 0; /* each tensor on its own, so that no part is silently broken */
    for (int e = 0; e < table->count; e++) {
        const param_entry *p = &table->entries[e];
        if (!p->trainable) continue;
        double error = test_relative_l2(got->grads + p->offset, want->grads + p->offset, p->numel);
        if (!(error <= tensor_tolerance)) {
            bad++;
            fprintf(stderr, "%s: %s gradient error %.3g\n", what, p->name, error);
        }
    }
    CHECK_MSG(bad == 0, "%s: %d tensors' gradients off", what, bad);
}

/* A GPU pass of the model in precision with params (and a second one, which must
 * give the same bits); returns the first. */
static void gpu_passes(dit_cuda_model *g, const float *params, pass_result *r, int guided) {
    device_batch d = device_batch_make(r->x, r->t, guided ? r->w : NULL, r->y, r->target, NULL, BATCH, SAMPLE);
    dit_cuda_upload_params(g, params);
    r->grads = malloc(sizeof(float) * g->table.trainable_numel);
    r->loss = gpu_pass(g, &d, BATCH, SAMPLE, 1.0f, r->out, r->d_x, r->grads);

    static pass_result again;
    again.grads = malloc(sizeof(float) * g->table.trainable_numel);
    again.loss = gpu_pass(g, &d, BATCH, SAMPLE, 1.0f, again.out, again.d_x, again.grads);
    const char *name = precision_name(g->precision);
    CHECK_MSG(memcmp(&again.loss, &r->loss, sizeof(float)) == 0, "%s: the loss differs in a second pass", name);
    CHECK_MSG(memcmp(again.out, r->out, sizeof(r->out)) == 0, "%s: the output differs in a second pass", name);
    CHECK_MSG(memcmp(again.d_x, r->d_x, sizeof(r->d_x)) == 0, "%s: d_x differs in a second pass", name);
    CHECK_MSG(memcmp(again.grads, r->grads, sizeof(float) * g->table.trainable_numel) == 0,
              "%s: the gradients differ in a second pass", name);

    /* a gradient scaled beyond the format's range: infinite in fp16 only */
    gpu_pass(g, &d, BATCH, SAMPLE, 0x1p24f, NULL, NULL, again.grads);
    int finite = 1;
    for (size_t i = 0; i < g->table.trainable_numel; i++) finite &= isfinite(again.grads[i]) != 0;
    CHECK_MSG(finite == (g->precision != PRECISION_FP16), "%s: gradient scaled by 2^24 %s", name,
              finite ? "stayed finite" : "overflowed");
    free(again.grads);
    device_batch_free(&d);
}

/* The GPU model's table, parameters and pos_embed against the CPU model's. */
static void check_layout(dit_cuda_model *g, const dit_model *cpu) {
    CHECK(g->table.count == cpu->table.count && g->table.trainable_numel == cpu->table.trainable_numel &&
          g->table.fixed_numel == cpu->table.fixed_numel);
    for (int i = 0; i < g->table.count && i < cpu->table.count; i++)
        CHECK_MSG(strcmp(g->table.entries[i].name, cpu->table.entries[i].name) == 0 &&
                      g->table.entries[i].offset == cpu->table.entries[i].offset,
                  "entry %d: %s at %zu, the CPU's %s at %zu", i, g->table.entries[i].name, g->table.entries[i].offset,
                  cpu->table.entries[i].name, cpu->table.entries[i].offset);
    const size_t n = cpu->table.trainable_numel;
    float *back = malloc(sizeof(float) * (n > cpu->table.fixed_numel ? n : cpu->table.fixed_numel));
    dit_cuda_upload_params(g, cpu->params);
    dit_cuda_download_params(g, back);
    CHECK_MSG(memcmp(back, cpu->params, sizeof(float) * n) == 0, "parameters do not come back bit for bit");
    cuda_copy_to_host(back, g->fixed, sizeof(float) * cpu->table.fixed_numel);
    CHECK_MSG(memcmp(back, cpu->fixed, sizeof(float) * cpu->table.fixed_numel) == 0, "pos_embed is not the CPU's");
    free(back);
}

static void test_against_cpu(int guided) {
    printf("DiT%s, batch %d, GPU max_batch %d:\n", guided ? " with a guidance input" : "", BATCH, GPU_MAX_BATCH);
    static pass_result cpu32, cpu16, gpu;
    make_batch(&cpu32);
    dit_model ref;
    make_cpu_model(&ref, PRECISION_FP32, guided);
    cpu_pass(&ref, &cpu32, guided);
    /* bf16 keeps 8 significant bits, fp16 11 (test_precision.c's bounds) */
    const double tolerance[3] = {FP32_TOLERANCE, 0.02, 0.003};
    for (int k = PRECISION_FP32; k <= PRECISION_FP16; k++) {
        const ldm_precision precision = (ldm_precision)k;
        char what[64];
        dit_cuda_model g;
        dit_cuda_create(&g, &ref.shape, GPU_MAX_BATCH, precision, 0);
        check_layout(&g, &ref);
        make_batch(&gpu);
        gpu_passes(&g, ref.params, &gpu, guided);
        snprintf(what, sizeof(what), "gpu %s vs cpu fp32", precision_name(precision));
        const double tol = tolerance[k];
        if (precision == PRECISION_FP32) {
            compare(what, &g.table, &gpu, &cpu32, tol, tol, tol, 1e-5);
        } else {
            compare(what, &g.table, &gpu, &cpu32, tol, 2 * tol, 4 * tol, tol);
            /* the rounding happens */
            CHECK_MSG(test_relative_l2(gpu.out, cpu32.out, BATCH * SAMPLE) > 0, "%s: no rounding in the output", what);
            dit_model cpu_model;
            make_cpu_model(&cpu_model, precision, guided);
            make_batch(&cpu16);
            cpu_pass(&cpu_model, &cpu16, guided);
            snprintf(what, sizeof(what), "gpu %s vs cpu %s", precision_name(precision), precision_name(precision));
            compare(what, &g.table, &gpu, &cpu16, tol, 2 * tol, 4 * tol, tol);
            free(cpu16.grads);
            dit_destroy(&cpu_model);
        }
        free(gpu.grads);
        dit_cuda_destroy(&g);
    }
    free(cpu32.grads);
    dit_destroy(&ref);
}

/* Activation bytes of a block (the difference between depth 12 and depth 6, over
 * 6: what every further block adds, without the fixed scratch). */
static double block_activation_bytes(ldm_precision precision) {
    dit_shape shape = {.input_size = 8, .in_channels = 4, .patch_size = 1, .hidden_size = 96, .depth = 12,
                       .num_heads = 6, .mlp_hidden = 384, .num_classes = 10};
    dit_cuda_model deep, shallow;
    dit_cuda_create(&deep, &shape, 2, precision, 0);
    CHECK(deep.adam_m == NULL && deep.adam_v == NULL);
    shape.depth = 6;
    dit_cuda_create(&shallow, &shape, 2, precision, 0);
    double bytes = ((double)deep.activation_bytes - (double)shallow.activation_bytes) / 6;
    dit_cuda_destroy(&deep);
    dit_cuda_destroy(&shallow);
    return bytes;
}

/* 16 bits about halve what a block keeps; AdamW moments round-trip. */
static void test_memory_and_moments(void) {
    double b32 = block_activation_bytes(PRECISION_FP32), b16 = block_activation_bytes(PRECISION_BF16);
    printf("GPU activation bytes a block keeps, 2 images: fp32 %.0f, 16-bit %.0f (%.2f)\n", b32, b16, b16 / b32);
    CHECK_MSG(b16 / b32 < 0.55, "16-bit blocks keep %.2f of fp32's activation memory", b16 / b32);

    dit_cuda_model a32;
    dit_cuda_create(&a32, &small_shape, 2, PRECISION_FP32, 1);
    CHECK(a32.adam_m != NULL && a32.adam_v != NULL && a32.adam_step == 0);
    const size_t n = a32.table.trainable_numel;
    float *m = malloc(sizeof(float) * n), *v = malloc(sizeof(float) * n);
    float *m_back = malloc(sizeof(float) * n), *v_back = malloc(sizeof(float) * n);
    rng_stream rng = rng_stream_for(13, 0, 0);
    for (size_t i = 0; i < n; i++) m[i] = rng_normal(&rng), v[i] = fabsf(rng_normal(&rng));
    int64_t step = 0;
    dit_cuda_upload_moments(&a32, m, v, 41);
    dit_cuda_download_moments(&a32, m_back, v_back, &step);
    CHECK(step == 41 && memcmp(m, m_back, sizeof(float) * n) == 0 && memcmp(v, v_back, sizeof(float) * n) == 0);
    free(m), free(v), free(m_back), free(v_back);
    dit_cuda_destroy(&a32);
}

static void run_all(void) {
    check_fixture("tests/fixtures/dit_small.safetensors", 0);
    check_fixture("tests/fixtures/dit_small_guided.safetensors", 1);
    test_against_cpu(0);
    test_against_cpu(1);
    test_memory_and_moments();
}
#endif

int main(void) {
    TEST_SKIP_WITHOUT_CUDA("test_dit_cuda");
#ifdef LDM_HAVE_CUDA
    run_all();
#endif
    return test_finish("test_dit_cuda");
}

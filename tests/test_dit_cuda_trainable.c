/* The GPU DiT trainable (train/trainables/dit_cuda_trainable.c) and the GPU parameter
 * store (train/parameter_store_cuda.c) against the CPU trainable
 * (dit_trainable.c) and the host store on the same config, weights and
 * micro-batch, in fp32:
 * 1. both start from the same weights (the same seed, the same table);
 * 2. with random weights (written into the host params and sent to the device
 *    by the store's from_host, as the loop does after resume), one micro-batch
 *    each: the losses within 1e-5 relative, the device gradients within 1e-4
 *    relative L2 of the CPU's, the sigma-binned statistics the same counts
 *    and losses within 1e-5;
 * 3. gradients accumulate over micro-batches on the device: two calls of
 *    weight 1/2 at the same step give the gradient of one call of weight 1
 *    (to 1e-6);
 * 4. a whole optimizer step, as the training loop takes it (norm, clipping
 *    to a max norm below the norm, AdamW, EMA), on each store: the norms
 *    within 1e-5, and the params, EMA and moments brought back by to_host
 *    within 1e-4 relative L2 of the CPU's (the moments carry the gradients'
 *    differences), the step counts equal; the device norm is the same bits
 *    on a second evaluation;
 * 5. the next micro-batch, from the stepped weights, matches the CPU's again.
 * Reports itself skipped (exit 77) in a CPU build or without a GPU. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "device.h"
#include "rng.h"
#include "test_util.h"
#include "trainable.h"

#ifdef LDM_HAVE_CUDA
#include "dit_cuda_trainable.h"
#include "ops_cuda.h"
#include "parameter_store.h"
#include "trainables.h"

#define BATCH 4

/* Both trainables' params = the same random weights (std 0.05 around the
 * initial ones, so that the zero-initialised adaLN and final layers are not
 * zero), sent to the device through the GPU store. */
static void perturb_params(trainable *cpu, trainable *gpu, parameter_store *gpu_store, uint64_t key) {
    rng_stream rng = rng_stream_for(7, key, 0);
    for (size_t i = 0; i < cpu->count; i++) cpu->params[i] += 0.05f * rng_normal(&rng);
    memcpy(gpu->params, cpu->params, cpu->count * sizeof(float));
    gpu_store->from_host(gpu_store);
}

/* The device gradients, into the host mirror. */
static void fetch_grads(trainable *gpu) { cuda_copy_to_host(gpu->grads, gpu->device->grads, gpu->count * sizeof(float)); }

/* One micro-batch on each (grads zeroed first); compares loss, grads, statistics. */
static void compare_micro_batch(trainable *cpu, trainable *gpu, const float *x, const int32_t *labels,
                                const int64_t *index, int64_t step, const char *what) {
    double stats_cpu[TRAINABLE_MAX_STATISTICS] = {0}, stats_gpu[TRAINABLE_MAX_STATISTICS] = {0};
    cpu->zero_grad(cpu);
    gpu->zero_grad(gpu);
    double loss_cpu = cpu->micro_batch(cpu, x, labels, index, BATCH, step, 1.0f, NULL, stats_cpu);
    double loss_gpu = gpu->micro_batch(gpu, x, labels, index, BATCH, step, 1.0f, NULL, stats_gpu);
    fetch_grads(gpu);
    double grad_error = test_relative_l2(gpu->grads, cpu->grads, cpu->count);
    printf("%s: loss cpu %.9g gpu %.9g; grads relative L2 %.3g\n", what, loss_cpu, loss_gpu, grad_error);
    CHECK(isfinite(loss_cpu) && loss_cpu > 0);
    CHECK_CLOSE(loss_gpu, loss_cpu, 0, 1e-5);
    CHECK_MSG(grad_error <= 1e-4, "%s: grads relative L2 %g", what, grad_error);
    double norm = 0;
    for (size_t i = 0; i < cpu->count; i++) norm += (double)cpu->grads[i] * cpu->grads[i];
    CHECK_MSG(norm > 0, "%s: the CPU gradient is zero", what);
    CHECK(gpu->statistic_count == cpu->statistic_count);
    for (int s = 0; s < cpu->statistic_count; s++) CHECK_CLOSE(stats_gpu[s], stats_cpu[s], 1e-12, 1e-5);
}

static void run(void) {
    ldm_config c;
    char err[512];
    const char *sets[] = {"train.micro_batch=4", "model.class_dropout=0.3", "train.precision=fp32"};
    if (config_load(&c, "configs/tiny.json", sets, 3, err, sizeof err) != 0) {
        CHECK_MSG(0, "%s", err);
        return;
    }
    trainable *cpu = dit_trainable_create(&c, BATCH);
    trainable *gpu = dit_cuda_trainable_create(&c, BATCH);
    CHECK(strcmp(gpu->kind, cpu->kind) == 0 && strcmp(gpu->kind, "dit") == 0);
    CHECK(gpu->count == cpu->count && gpu->table->fixed_numel == cpu->table->fixed_numel);
    CHECK(memcmp(gpu->params, cpu->params, cpu->count * sizeof(float)) == 0);
    CHECK(memcmp(gpu->fixed, cpu->fixed, cpu->table->fixed_numel * sizeof(float)) == 0);
    CHECK(gpu->device != NULL && gpu->device->params != NULL && gpu->device->grads != NULL && cpu->device == NULL);

    /* The loop's optimizer state for each, and its stores. */
    const adamw_hyper hyper = {.beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.01f};
    adamw_state cpu_adam, gpu_adam;
    adamw_create(&cpu_adam, cpu->count, hyper);
    adamw_create(&gpu_adam, gpu->count, hyper);
    float *cpu_ema = malloc(cpu->count * sizeof(float)), *gpu_ema = malloc(gpu->count * sizeof(float));
    memcpy(cpu_ema, cpu->params, cpu->count * sizeof(float));
    memcpy(gpu_ema, gpu->params, gpu->count * sizeof(float));
    parameter_store *cpu_store = parameter_store_create(cpu, &cpu_adam, cpu_ema);
    parameter_store *gpu_store = parameter_store_create(gpu, &gpu_adam, gpu_ema);

    const size_t per_sample = (size_t)cpu->expect_channels * cpu->expect_size * cpu->expect_size;
    float *x = malloc(BATCH * per_sample * sizeof(float));
    rng_stream rng = rng_stream_for(3, 0, 0);
    for (size_t i = 0; i < BATCH * per_sample; i++) x[i] = rng_normal(&rng);
    const int32_t labels[BATCH] = {0, 3, -1, 9};
    const int64_t index[BATCH] = {5, 1, 7, 2};

    perturb_params(cpu, gpu, gpu_store, 1);
    compare_micro_batch(cpu, gpu, x, labels, index, 0, "step 0");

    /* Accumulation on the device. */
    float *once = malloc(gpu->count * sizeof(float));
    memcpy(once, gpu->grads, gpu->count * sizeof(float));
    double stats[TRAINABLE_MAX_STATISTICS] = {0};
    gpu->zero_grad(gpu);
    gpu->micro_batch(gpu, x, labels, index, BATCH, 0, 0.5f, NULL, stats);
    gpu->micro_batch(gpu, x, labels, index, BATCH, 0, 0.5f, NULL, stats);
    fetch_grads(gpu);
    double accumulated = test_relative_l2(gpu->grads, once, gpu->count);
    printf("two half-weight micro-batches against one: relative L2 %.3g\n", accumulated);
    CHECK_MSG(accumulated <= 1e-6, "accumulated grads relative L2 %g", accumulated);

    /* One optimizer step, as the loop takes it, clipping to half the norm. */
    parameter_store *stores[2] = {cpu_store, gpu_store};
    double norms[2];
    for (int s = 0; s < 2; s++) {
        parameter_store *store = stores[s];
        store->average_gradients(store);
        norms[s] = store->gradient_norm(store);
        const double max_norm = 0.5 * norms[s];
        store->scale_gradients(store, (float)(max_norm / (norms[s] + 1e-6)));
        store->adamw_step(store, 1e-3f);
        store->ema_update(store, 0.9);
        store->to_host(store);
    }
    printf("gradient norm: cpu %.9g gpu %.9g\n", norms[0], norms[1]);
    CHECK(isfinite(norms[0]) && norms[0] > 0);
    CHECK_CLOSE(norms[1], norms[0], 0, 1e-5);
    CHECK(gpu_store->gradient_norm(gpu_store) == gpu_store->gradient_norm(gpu_store));
    const struct {
        const char *name;
        const float *gpu, *cpu;
    } after[] = {{"params", gpu->params, cpu->params}, {"ema", gpu_ema, cpu_ema}, {"adam m", gpu_adam.m, cpu_adam.m},
                 {"adam v", gpu_adam.v, cpu_adam.v}};
    for (size_t k = 0; k < sizeof after / sizeof after[0]; k++) {
        double error = test_relative_l2(after[k].gpu, after[k].cpu, cpu->count);
        printf("after the step, %s: relative L2 %.3g\n", after[k].name, error);
        CHECK_MSG(error <= 1e-4, "after the step, %s: relative L2 %g", after[k].name, error);
    }
    CHECK(gpu_adam.step == 1 && cpu_adam.step == 1);

    /* The next micro-batch from the stepped weights (the device's own). */
    compare_micro_batch(cpu, gpu, x, labels, index, 1, "step 1");

    free(once);
    free(x);
    gpu_store->destroy(gpu_store);
    cpu_store->destroy(cpu_store);
    adamw_destroy(&cpu_adam);
    adamw_destroy(&gpu_adam);
    free(cpu_ema);
    free(gpu_ema);
    gpu->destroy(gpu);
    cpu->destroy(cpu);
}
#endif

int main(void) {
    TEST_SKIP_WITHOUT_CUDA("test_dit_cuda_trainable");
#ifdef LDM_HAVE_CUDA
    run();
#endif
    return test_finish("test_dit_cuda_trainable");
}

/* The autoencoder on the GPU (model/autoencoder_cuda.h) against the CPU model
 * (autoencoder.h) on the shape of configs/ae-tiny.json with random weights and a
 * batch of 3 (the GPU model laid out for 4), through whole training steps
 * (forward, loss, backward):
 * 1. fp32, the posterior sampled, L1 loss, d_loss 1: the loss and its parts
 *    within 1e-5 relative; the posterior mean, log-variance, latent and the
 *    reconstruction within 1e-5 of their largest value; every parameter's
 *    gradient within 1e-4 relative L2 of the CPU's (absolute where the CPU's is
 *    zero), but for the keys' bias, whose gradient is zero but for rounding (it
 *    shifts a row of scores, which softmax ignores): on both within 1e-6 of the
 *    key weight's gradient's norm. The two differ only in summation orders
 *    (cuBLASLt tiles, block reductions) and CUDA's expf: on the emulation the
 *    errors are about 1e-6 (reconstruction) and 4e-6 (the worst gradient), so
 *    the bounds leave a margin while a wrong index or a missing term is far
 *    outside.
 * 2. fp32, z the posterior mean, L2 loss, d_loss 0.5, gradients ADDED to step
 *    1's (not zeroed), one latent channel's log-variance clamped (quant_conv's
 *    bias pushed below -30, so its gradient stops there): the same bounds.
 * 3. A second pass of step 2's input, from step 1's gradient, gives the same
 *    bits (loss, reconstruction, gradients).
 * 4. bf16 and fp16: step 1 on the GPU against the CPU model in the same
 *    precision (the same roundings at the same places; a value near a rounding
 *    boundary may round the other way, which then spreads): loss within 1e-2
 *    relative, reconstruction within 5e-2 of its largest value, the whole
 *    gradient within 5e-2 relative L2, and not equal to fp32's (the rounding
 *    happens).
 * 5. The trainables (train/trainables/autoencoder_cuda_trainable.c against
 *    autoencoder_trainable_create) on the config with the posterior sampled
 *    (each drawing its own noise from the step's streams): the same kind, count
 *    and initial params; one micro-batch of random images each: the loss and
 *    the statistics within 1e-5 relative, the device gradient within 1e-4
 *    relative L2 of the CPU's; two micro-batches of weight 1/2 on the device
 *    add up to one of weight 1 (1e-6).
 * Reports itself skipped (exit 77) in a CPU build or without a GPU. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autoencoder.h"
#include "cli.h"
#include "config.h"
#include "device.h"
#include "precision.h"
#include "rng.h"
#include "test_util.h"

#ifdef LDM_HAVE_CUDA
#include "autoencoder_cuda.h"
#include "autoencoder_cuda_trainable.h"
#include "ops_cuda.h"
#include "trainable.h"
#include "model_shapes.h"
#include "trainables.h"

#define BATCH 3
#define MAX_BATCH 4

typedef struct {
    autoencoder_model cpu;
    autoencoder_cuda_model gpu;
    float *grads;           /* (count) the GPU's gradient, downloaded */
    float *recon, *latent;  /* (BATCH, C, H, W), (BATCH, L, h, w) GPU outputs, downloaded */
    size_t image, latent_size; /* values per batch */
} pair;

/* Both models with the same random weights: torch's initialisation moved by
 * 0.05 normal, so that GroupNorm's affine parameters are not 1 and 0. */
static void pair_create(pair *p, const autoencoder_shape *shape, ldm_precision precision) {
    autoencoder_create_precision(&p->cpu, shape, MAX_BATCH, AE_FOR_TRAINING, precision);
    autoencoder_cuda_create(&p->gpu, shape, MAX_BATCH, precision);
    CHECK(p->gpu.table.trainable_numel == p->cpu.table.trainable_numel && p->gpu.table.count == p->cpu.table.count);
    autoencoder_init_weights(&p->cpu, 5);
    rng_stream rng = rng_stream_for(7, 1, 0);
    for (size_t i = 0; i < p->cpu.table.trainable_numel; i++) p->cpu.params[i] += 0.05f * rng_normal(&rng);
    autoencoder_cuda_upload_params(&p->gpu, p->cpu.params);
    p->grads = malloc(p->cpu.table.trainable_numel * sizeof(float));
    p->image = (size_t)BATCH * shape->in_channels * shape->input_size * shape->input_size;
    p->latent_size = (size_t)BATCH * shape->latent_channels * p->cpu.latent_size * p->cpu.latent_size;
    p->recon = malloc(p->image * sizeof(float));
    p->latent = malloc(p->latent_size * sizeof(float));
}

static void pair_destroy(pair *p) {
    autoencoder_destroy(&p->cpu);
    autoencoder_cuda_destroy(&p->gpu);
    free(p->grads);
    free(p->recon);
    free(p->latent);
}

/* One training step on the GPU (noise NULL: z the mean), gradients
 * accumulating on what is there; its gradient and reconstruction come back
 * into p. */
static autoencoder_loss gpu_step(pair *p, const float *images, const float *noise, float kl_beta,
                                 autoencoder_reconstruction_loss kind, float d_loss) {
    cuda_copy_to_device(p->gpu.images, images, p->image * sizeof(float));
    if (noise) cuda_copy_to_device(p->gpu.noise, noise, p->latent_size * sizeof(float));
    autoencoder_cuda_train_forward(&p->gpu, BATCH, noise != NULL, kl_beta, kind);
    autoencoder_cuda_train_backward(&p->gpu, d_loss);
    autoencoder_loss loss = autoencoder_cuda_loss(&p->gpu);
    autoencoder_cuda_download_grads(&p->gpu, p->grads);
    cuda_copy_to_host(p->recon, p->gpu.reconstruction, p->image * sizeof(float));
    return loss;
}

/* The same step on each; returns the CPU's loss, the GPU's in *gpu_loss. */
static autoencoder_loss pair_step(pair *p, autoencoder_loss *gpu_loss, const float *images, const float *noise,
                                  float kl_beta, autoencoder_reconstruction_loss kind, float d_loss) {
    autoencoder_loss loss = autoencoder_train_forward(&p->cpu, images, noise, BATCH, kl_beta, kind);
    autoencoder_train_backward(&p->cpu, d_loss, NULL);
    *gpu_loss = gpu_step(p, images, noise, kl_beta, kind, d_loss);
    return loss;
}

/* A GPU buffer (n) downloaded into p->latent against the CPU's, max error relative to the CPU's largest value. */
static void check_latent(pair *p, const char *what, const float *device, const float *cpu, double bound) {
    cuda_copy_to_host(p->latent, device, p->latent_size * sizeof(float));
    double error = test_relative_max_error(p->latent, cpu, p->latent_size, NULL);
    printf("  %s: max error %.3g of the largest value\n", what, error);
    CHECK_MSG(error <= bound, "%s: max error %g", what, error);
}

static double l2_norm(const float *x, size_t n) {
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += (double)x[i] * x[i];
    return sqrt(sum);
}

/* fp32 step against step (sections 1 and 2). */
static void compare_fp32(pair *p, const char *name, autoencoder_loss cpu, autoencoder_loss gpu) {
    printf("%s: loss cpu %.9g (rec %.9g, kl %.9g) gpu %.9g (rec %.9g, kl %.9g)\n", name, cpu.total,
           cpu.reconstruction, cpu.kl, gpu.total, gpu.reconstruction, gpu.kl);
    CHECK(isfinite(cpu.total) && cpu.total > 0 && cpu.kl > 0);
    CHECK_CLOSE(gpu.total, cpu.total, 0, 1e-5);
    CHECK_CLOSE(gpu.reconstruction, cpu.reconstruction, 0, 1e-5);
    CHECK_CLOSE(gpu.kl, cpu.kl, 0, 1e-5);
    check_latent(p, "posterior mean", p->gpu.posterior_mean, p->cpu.posterior_mean, 1e-5);
    check_latent(p, "posterior logvar", p->gpu.posterior_logvar, p->cpu.posterior_logvar, 1e-5);
    check_latent(p, "latent", p->gpu.latent, p->cpu.latent, 1e-5);
    double rec_error = test_relative_max_error(p->recon, p->cpu.reconstruction, p->image, NULL);
    printf("  reconstruction: max error %.3g of the largest value\n", rec_error);
    CHECK_MSG(rec_error <= 1e-5, "%s: reconstruction max error %g", name, rec_error);
    double worst = 0;
    const char *worst_name = "";
    for (int i = 0; i < p->cpu.table.count; i++) {
        const param_entry *e = &p->cpu.table.entries[i];
        if (strstr(e->name, ".to_k.bias")) {
            /* The keys' bias shifts a whole row of scores, which softmax ignores:
             * its gradient is rounding noise on both (about 1e-8 of the key
             * weight's), bounded against the weight's instead. */
            char weight_name[PARAM_NAME_MAX];
            snprintf(weight_name, sizeof weight_name, "%.*sweight", (int)(strlen(e->name) - 4), e->name);
            const param_entry *w = param_table_find(&p->cpu.table, weight_name);
            const double bound = w ? 1e-6 * l2_norm(w->grad, w->numel) : 0;
            CHECK_MSG(bound > 0 && l2_norm(e->grad, e->numel) <= bound && l2_norm(p->grads + e->offset, e->numel) <= bound,
                      "%s: %s gradient is not negligible", name, e->name);
            continue;
        }
        double error = test_relative_l2(p->grads + e->offset, e->grad, e->numel);
        CHECK_MSG(error <= 1e-4, "%s: %s gradient relative L2 %g", name, e->name, error);
        if (error >= worst) worst = error, worst_name = e->name;
    }
    printf("  gradients: worst tensor %s, relative L2 %.3g\n", worst_name, worst);
}

/* Section 5: c is the config, images (BATCH, C, H, W). */
static void compare_trainables(const ldm_config *c, const float *images) {
    trainable *cpu = autoencoder_trainable_create(c, MAX_BATCH);
    trainable *gpu = autoencoder_cuda_trainable_create(c, MAX_BATCH);
    CHECK(strcmp(gpu->kind, cpu->kind) == 0 && strcmp(gpu->kind, "autoencoder") == 0);
    CHECK(gpu->count == cpu->count && gpu->statistic_count == cpu->statistic_count);
    CHECK(memcmp(gpu->params, cpu->params, cpu->count * sizeof(float)) == 0);
    CHECK(gpu->device != NULL && gpu->device->params != NULL && gpu->device->grads != NULL && cpu->device == NULL);
    const int64_t index[BATCH] = {5, 1, 7};
    double stats_cpu[TRAINABLE_MAX_STATISTICS] = {0}, stats_gpu[TRAINABLE_MAX_STATISTICS] = {0};
    cpu->zero_grad(cpu);
    gpu->zero_grad(gpu);
    const double loss_cpu = cpu->micro_batch(cpu, images, NULL, index, BATCH, 3, 1.0f, NULL, stats_cpu);
    const double loss_gpu = gpu->micro_batch(gpu, images, NULL, index, BATCH, 3, 1.0f, NULL, stats_gpu);
    cuda_copy_to_host(gpu->grads, gpu->device->grads, gpu->count * sizeof(float));
    const double grad_error = test_relative_l2(gpu->grads, cpu->grads, cpu->count);
    printf("5. trainables: loss cpu %.9g gpu %.9g; gradient relative L2 %.3g\n", loss_cpu, loss_gpu, grad_error);
    CHECK(isfinite(loss_cpu) && loss_cpu > 0);
    CHECK_CLOSE(loss_gpu, loss_cpu, 0, 1e-5);
    CHECK_MSG(grad_error <= 1e-4, "trainable gradient relative L2 %g", grad_error);
    for (int s = 0; s < cpu->statistic_count; s++) CHECK_CLOSE(stats_gpu[s], stats_cpu[s], 0, 1e-5);
    float *once = malloc(gpu->count * sizeof(float));
    memcpy(once, gpu->grads, gpu->count * sizeof(float));
    gpu->zero_grad(gpu);
    for (int k = 0; k < 2; k++) gpu->micro_batch(gpu, images, NULL, index, BATCH, 3, 0.5f, NULL, stats_gpu);
    cuda_copy_to_host(gpu->grads, gpu->device->grads, gpu->count * sizeof(float));
    const double accumulated = test_relative_l2(gpu->grads, once, gpu->count);
    printf("   two half-weight micro-batches against one: relative L2 %.3g\n", accumulated);
    CHECK_MSG(accumulated <= 1e-6, "accumulated gradient relative L2 %g", accumulated);
    free(once);
    gpu->destroy(gpu);
    cpu->destroy(cpu);
}

static void run(void) {
    ldm_config c;
    char err[512];
    if (config_load(&c, "configs/ae-tiny.json", NULL, 0, err, sizeof err) != 0) {
        CHECK_MSG(0, "%s", err);
        return;
    }
    const autoencoder_shape shape = config_autoencoder_shape(&c);
    pair p;
    pair_create(&p, &shape, PRECISION_FP32);
    const size_t count = p.cpu.table.trainable_numel;
    float *images = malloc(p.image * sizeof(float)), *noise = malloc(p.latent_size * sizeof(float));
    rng_stream rng = rng_stream_for(3, 0, 0);
    for (size_t i = 0; i < p.image; i++) images[i] = 2.0f * rng_uniform(&rng) - 1.0f;
    for (size_t i = 0; i < p.latent_size; i++) noise[i] = rng_normal(&rng);
    autoencoder_loss gpu;

    /* 1. */
    autoencoder_zero_grad(&p.cpu);
    autoencoder_cuda_zero_grad(&p.gpu);
    autoencoder_loss cpu = pair_step(&p, &gpu, images, noise, 0.1f, AE_LOSS_L1, 1.0f);
    compare_fp32(&p, "1. sampled, L1", cpu, gpu);
    float *fp32_grads = malloc(count * sizeof(float)); /* step 1's gradient */
    memcpy(fp32_grads, p.grads, count * sizeof(float));

    /* 2. Latent channel 0's log-variance is quant_conv's output channel L. */
    const param_entry *bias = param_table_find(&p.cpu.table, "quant_conv.bias");
    CHECK(bias != NULL);
    bias->data[shape.latent_channels] = -40.0f;
    autoencoder_cuda_upload_params(&p.gpu, p.cpu.params);
    cpu = pair_step(&p, &gpu, images, NULL, 0.1f, AE_LOSS_L2, 0.5f);
    compare_fp32(&p, "2. mean, L2, accumulated, clamped", cpu, gpu);
    const size_t per_channel = (size_t)p.cpu.latent_size * p.cpu.latent_size;
    CHECK(p.cpu.posterior_logvar[0] == AE_LOGVAR_MIN && p.cpu.posterior_logvar[per_channel - 1] == AE_LOGVAR_MIN);

    /* 3. From step 1's gradient again. */
    float *grads = malloc(count * sizeof(float)), *recon = malloc(p.image * sizeof(float));
    memcpy(grads, p.grads, count * sizeof(float));
    memcpy(recon, p.recon, p.image * sizeof(float));
    cuda_copy_to_device(p.gpu.grads, fp32_grads, count * sizeof(float));
    autoencoder_loss again = gpu_step(&p, images, NULL, 0.1f, AE_LOSS_L2, 0.5f);
    CHECK(again.total == gpu.total && again.reconstruction == gpu.reconstruction && again.kl == gpu.kl);
    CHECK(memcmp(recon, p.recon, p.image * sizeof(float)) == 0);
    CHECK(memcmp(grads, p.grads, count * sizeof(float)) == 0);
    pair_destroy(&p);

    /* 4. Step 1 in 16 bits (the same weights: pair_create's). */
    const ldm_precision halves[] = {PRECISION_BF16, PRECISION_FP16};
    for (int h = 0; h < 2; h++) {
        pair_create(&p, &shape, halves[h]);
        autoencoder_zero_grad(&p.cpu);
        autoencoder_cuda_zero_grad(&p.gpu);
        cpu = pair_step(&p, &gpu, images, noise, 0.1f, AE_LOSS_L1, 1.0f);
        double rec_error = test_relative_max_error(p.recon, p.cpu.reconstruction, p.image, NULL);
        double grad_error = test_relative_l2(p.grads, p.cpu.grads, count);
        double from_fp32 = test_relative_l2(p.grads, fp32_grads, count);
        const char *format = precision_name(halves[h]);
        printf("4. %s: loss cpu %.9g gpu %.9g; reconstruction max error %.3g; gradient relative L2 %.3g "
               "(%.3g from fp32's)\n", format, cpu.total, gpu.total, rec_error, grad_error, from_fp32);
        CHECK(isfinite(gpu.total));
        CHECK_CLOSE(gpu.total, cpu.total, 0, 1e-2);
        CHECK_MSG(rec_error <= 5e-2, "%s reconstruction max error %g", format, rec_error);
        CHECK_MSG(grad_error <= 5e-2, "%s gradient relative L2 %g", format, grad_error);
        CHECK_MSG(from_fp32 > 0, "the %s gradient is fp32's", format);
        pair_destroy(&p);
    }

    /* 5. */
    const char *sampled[] = {"autoencoder.sample_posterior=true", "autoencoder.kl_beta=0.1"};
    if (config_load(&c, "configs/ae-tiny.json", sampled, 2, err, sizeof err) != 0)
        CHECK_MSG(0, "%s", err);
    else
        compare_trainables(&c, images);

    free(fp32_grads);
    free(grads);
    free(recon);
    free(images);
    free(noise);
}
#endif

int main(void) {
    TEST_SKIP_WITHOUT_CUDA("test_autoencoder_cuda");
#ifdef LDM_HAVE_CUDA
    run();
#endif
    return test_finish("test_autoencoder_cuda");
}

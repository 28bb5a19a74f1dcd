/* A diffusers AutoencoderKL folder on the GPU model (model/autoencoder_cuda.h): the
 * committed fixtures of tests/make_diffusers_vae_fixture.py (diffusers_vae_small, and
 * diffusers_vae_switches: no quant convs, no mid-block attention, a shift_factor) are
 * loaded on the CPU (autoencoder_diffusers.c, the latents' scale folded into the
 * weights) and uploaded; a forward pass with z the posterior mean gives
 *   - the posterior mean and clamped log-variance (the pipelines' scaled units), which
 *     must match what diffusers computed (the fixture) within 1e-5 of the largest value;
 *   - the reconstruction decode(mean), which must match the CPU model's within 1e-5.
 * So the switches and the folded scale reach the GPU's graph as they do the CPU's.
 * Reports itself skipped (exit 77) in a CPU build or without a GPU; the CPU side of
 * these fixtures is test_ae_diffusers. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atomic_file.h"
#include "autoencoder.h"
#include "autoencoder_diffusers.h"
#include "device.h"
#include "safetensors.h"
#include "test_util.h"

#ifdef LDM_HAVE_CUDA
#include "autoencoder_cuda.h"
#include "ops_cuda.h"

#define TOLERANCE 1e-5

static const safetensors_tensor *need(const safetensors_file *f, const char *name) {
    const safetensors_tensor *t = safetensors_find(f, name);
    CHECK_MSG(t && t->dtype == SAFETENSORS_F32 && t->ndim == 4, "expected.safetensors: %s: expected 4-d F32", name);
    return t && t->dtype == SAFETENSORS_F32 && t->ndim == 4 ? t : NULL;
}

static void compare(const char *what, const float *ours, const float *ref, size_t n) {
    double ref_max;
    const double rel = test_relative_max_error(ours, ref, n, &ref_max);
    printf("  %-40s max error %.3g relative to max |ref| %.3g\n", what, rel, ref_max);
    CHECK_MSG(rel <= TOLERANCE && ref_max > 0, "%s: error %.3g relative (max |ref| %.3g)", what, rel, ref_max);
}

static void check_folder(const char *folder) {
    printf("%s\n", folder);
    autoencoder_diffusers_config config;
    autoencoder_diffusers_read_config(folder, &config);
    char *path = path_join(folder, "expected.safetensors");
    safetensors_file fx;
    char err[512];
    const int read = safetensors_read(path, &fx, err, sizeof err);
    free(path);
    CHECK_MSG(read == 0, "%s", err);
    if (read != 0) return;
    const safetensors_tensor *images = need(&fx, "images"), *mean = need(&fx, "mean"), *logvar = need(&fx, "logvar");
    if (images && mean && logvar) {
        autoencoder_shape shape = config.shape;
        const int batch = (int)images->shape[0];
        shape.input_size = (int)images->shape[2];
        autoencoder_model cpu;
        autoencoder_create(&cpu, &shape, batch, AE_FOR_INFERENCE);
        autoencoder_diffusers_load_weights(&cpu, folder, &config);
        autoencoder_cuda_model gpu;
        autoencoder_cuda_create(&gpu, &shape, batch, PRECISION_FP32);
        CHECK(gpu.table.trainable_numel == cpu.table.trainable_numel);
        autoencoder_cuda_upload_params(&gpu, cpu.params);
        cuda_copy_to_device(gpu.images, images->data, images->numel * sizeof(float));
        autoencoder_cuda_train_forward(&gpu, batch, 0, 0.0f, AE_LOSS_L1);
        const autoencoder_loss loss = autoencoder_cuda_loss(&gpu); /* waits for the model's stream */
        CHECK(isfinite(loss.total) && loss.reconstruction > 0);
        float *got_mean = malloc(mean->numel * sizeof(float)), *got_logvar = malloc(mean->numel * sizeof(float));
        float *got_rec = malloc(images->numel * sizeof(float)), *cpu_rec = malloc(images->numel * sizeof(float));
        float *cpu_mean = malloc(mean->numel * sizeof(float));
        cuda_copy_to_host(got_mean, gpu.posterior_mean, mean->numel * sizeof(float));
        cuda_copy_to_host(got_logvar, gpu.posterior_logvar, mean->numel * sizeof(float));
        cuda_copy_to_host(got_rec, gpu.reconstruction, images->numel * sizeof(float));
        autoencoder_encode(&cpu, images->data, batch, cpu_mean, NULL);
        autoencoder_decode(&cpu, cpu_mean, batch, cpu_rec);
        compare("GPU posterior mean against diffusers", got_mean, mean->data, mean->numel);
        compare("GPU posterior logvar against diffusers", got_logvar, logvar->data, mean->numel);
        compare("GPU decode(mean) against the CPU model's", got_rec, cpu_rec, images->numel);
        free(got_mean);
        free(got_logvar);
        free(got_rec);
        free(cpu_rec);
        free(cpu_mean);
        autoencoder_cuda_destroy(&gpu);
        autoencoder_destroy(&cpu);
    }
    safetensors_free(&fx);
}
#endif

int main(void) {
    TEST_SKIP_WITHOUT_CUDA("test_ae_diffusers_cuda");
#ifdef LDM_HAVE_CUDA
    check_folder("tests/fixtures/diffusers_vae_small");
    check_folder("tests/fixtures/diffusers_vae_switches");
#endif
    return test_finish("test_ae_diffusers_cuda");
}

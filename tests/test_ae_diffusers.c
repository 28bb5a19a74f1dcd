/* ldm's autoencoder against PyPI's diffusers AutoencoderKL: a folder written by
 * save_pretrained (tests/make_diffusers_vae_fixture.py, random weights) is read by
 * autoencoder_diffusers.c, and our encode (posterior mean and clamped log-variance,
 * in the pipelines' scaled units) and decode must match what diffusers computed in
 * float32 (the folder's expected.safetensors), per tensor:
 *   max |ours - diffusers| <= 1e-5 * max |diffusers|
 * (both float32 with their own summation orders: the differences are rounding).
 *
 *   test_ae_diffusers            the committed fixtures tests/fixtures/diffusers_vae_small
 *                                (3 levels, 2 layers per block, scaling_factor 0.18215) and
 *                                diffusers_vae_switches (no quant convs, no mid-block
 *                                attention, shift_factor), with their config's fields checked
 *   test_ae_diffusers FOLDER...  other folders of that script (the SD-like check) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autoencoder.h"
#include "autoencoder_diffusers.h"
#include "atomic_file.h"
#include "safetensors.h"
#include "test_util.h"

#define TOLERANCE 1e-5

static const safetensors_tensor *need(const safetensors_file *f, const char *name, int ndim) {
    const safetensors_tensor *t = safetensors_find(f, name);
    CHECK_MSG(t && t->dtype == SAFETENSORS_F32 && t->ndim == ndim, "expected.safetensors: %s: expected %d-d F32",
              name, ndim);
    return t && t->dtype == SAFETENSORS_F32 && t->ndim == ndim ? t : NULL;
}

static double compare(const char *folder, const char *what, const float *ours, const safetensors_tensor *ref) {
    double ref_max;
    const double rel = test_relative_max_error(ours, ref->data, ref->numel, &ref_max);
    printf("  %-8s %zu values: max error %.3g relative to max |diffusers| %.3g\n", what, ref->numel, rel, ref_max);
    CHECK_MSG(rel <= TOLERANCE, "%s: %s: error %.3g relative", folder, what, rel);
    CHECK_MSG(ref_max > 0, "%s: %s: the reference is zero, the check would be empty", folder, what);
    return rel;
}

/* Encodes and decodes the folder's expected inputs; returns the worst relative error. */
static double check_folder(const char *folder, autoencoder_diffusers_config *config) {
    printf("%s\n", folder);
    autoencoder_diffusers_read_config(folder, config);
    char *expected_path = path_join(folder, "expected.safetensors");
    safetensors_file fx;
    char err[512];
    if (safetensors_read(expected_path, &fx, err, sizeof err) != 0) {
        CHECK_MSG(0, "%s", err);
        free(expected_path);
        return INFINITY;
    }
    free(expected_path);
    const safetensors_tensor *images = need(&fx, "images", 4), *mean = need(&fx, "mean", 4);
    const safetensors_tensor *logvar = need(&fx, "logvar", 4), *latents = need(&fx, "latents", 4);
    const safetensors_tensor *decoded = need(&fx, "decoded", 4);
    double worst = INFINITY;
    if (images && mean && logvar && latents && decoded) {
        autoencoder_shape shape = config->shape;
        const int batch = (int)images->shape[0];
        shape.input_size = (int)images->shape[2]; /* the network is convolutional: any multiple of 2^(levels-1) */
        autoencoder_model m;
        autoencoder_create(&m, &shape, batch, AE_FOR_INFERENCE);
        autoencoder_diffusers_load_weights(&m, folder, config);
        printf("  %zu parameters, images %d x %d x %d, latents %d x %d x %d\n", m.table.trainable_numel,
               shape.in_channels, shape.input_size, shape.input_size, shape.latent_channels, m.latent_size,
               m.latent_size);
        CHECK(mean->numel == (size_t)batch * shape.latent_channels * m.latent_size * m.latent_size);
        CHECK(decoded->numel == images->numel && latents->numel == mean->numel);
        float *our_mean = malloc(sizeof(float) * mean->numel), *our_logvar = malloc(sizeof(float) * mean->numel);
        float *our_decoded = malloc(sizeof(float) * images->numel);
        autoencoder_encode(&m, images->data, batch, our_mean, our_logvar);
        autoencoder_decode(&m, latents->data, batch, our_decoded);
        worst = compare(folder, "mean", our_mean, mean);
        worst = fmax(worst, compare(folder, "logvar", our_logvar, logvar));
        worst = fmax(worst, compare(folder, "decoded", our_decoded, decoded));
        free(our_mean);
        free(our_logvar);
        free(our_decoded);
        autoencoder_destroy(&m);
    }
    safetensors_free(&fx);
    return worst;
}

static void check_small_config(const autoencoder_diffusers_config *c) {
    const autoencoder_shape *s = &c->shape;
    CHECK(s->in_channels == 3 && s->input_size == 16 && s->levels == 3 && s->block_out_channels[0] == 8 &&
          s->block_out_channels[1] == 16 && s->block_out_channels[2] == 16 && s->layers_per_block == 2 &&
          s->latent_channels == 4 && s->norm_groups == 4 && !s->without_mid_attention);
    CHECK(c->scaling_factor == 0.18215 && c->shift_factor == 0 && c->use_quant_conv && c->use_post_quant_conv);
}

static void check_switches_config(const autoencoder_diffusers_config *c) {
    const autoencoder_shape *s = &c->shape;
    CHECK(s->in_channels == 1 && s->input_size == 8 && s->levels == 2 && s->latent_channels == 3 &&
          s->layers_per_block == 1 && s->without_mid_attention);
    CHECK(c->scaling_factor == 0.3611 && c->shift_factor == 0.1159 && !c->use_quant_conv && !c->use_post_quant_conv);
    /* without the attention, the table has none of its tensors */
    param_table t;
    autoencoder_build_table(&t, s);
    for (int i = 0; i < t.count; i++) CHECK_MSG(!strstr(t.entries[i].name, "attentions"), "%s", t.entries[i].name);
    param_table_free(&t);
}

int main(int argc, char **argv) {
    autoencoder_diffusers_config config;
    double worst = 0;
    if (argc > 1) {
        for (int i = 1; i < argc; i++) worst = fmax(worst, check_folder(argv[i], &config));
    } else {
        worst = fmax(worst, check_folder("tests/fixtures/diffusers_vae_small", &config));
        check_small_config(&config);
        worst = fmax(worst, check_folder("tests/fixtures/diffusers_vae_switches", &config));
        check_switches_config(&config);
    }
    printf("worst relative error %.3g (tolerance %g)\n", worst, TOLERANCE);
    return test_finish("test_ae_diffusers");
}

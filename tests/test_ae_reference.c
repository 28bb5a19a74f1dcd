/* The KL autoencoder against PyTorch: tests/make_ae_fixture.py builds the same tiny
 * AutoencoderKL (3x16x16 images, block_out_channels [8, 16, 16], layers_per_block 1,
 * 2 latent channels, 4 groups; tests/ae_reference.py, diffusers' semantics and names)
 * in float64 and stores the weights, a batch of 2 images, the posterior noise, the
 * posterior's mean and clamped log-variance, the latent, the reconstruction, the loss
 * parts (L1 + kl_beta * KL) and every gradient (parameters and images), plus the loss,
 * reconstruction and the small gradients of the other variant (L2, z = mean), in
 * tests/fixtures/ae_tiny.safetensors. Our float32 model must match, per tensor:
 *   max |ours - ref| <= 1e-4 * max |ref|
 * for mean, logvar, latent, reconstruction and every gradient; the loss parts to 1e-5
 * relative. The one exception: to_k's bias, whose true gradient is zero (softmax
 * ignores a shift shared by a row's scores): ours must be below 1e-4 of the largest
 * to_k weight gradient. The reference is float64, so the bounds measure our float32
 * rounding (PyTorch's own float32 reaches ~4e-6 on the gradients).
 *
 * Also: the fixture's tensor names are exactly our table's, a table written and read
 * back through param_table_load_safetensors gives the same model (also from a file with
 * diffusers' pre-0.14 attention names), the config's shape is the one built, a model laid out for
 * inference (pooled buffers) encodes and decodes bit-identically to the training
 * layout, a sample encodes the same alone as in a batch, and the Stable Diffusion VAE
 * shape gives exactly diffusers' 248 tensor names and shapes (listed by the fixture). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "autoencoder.h"
#include "cli.h"
#include "config.h"
#include "safetensors.h"
#include "test_util.h"
#include "model_shapes.h"

#define FIXTURE "tests/fixtures/ae_tiny.safetensors"
#define TOLERANCE 1e-4
#define LOSS_TOLERANCE 1e-5

enum { B = 2, C = 3, SIZE = 16, L = 2, LATENT_SIZE = 4 };
enum { IMAGE = C * SIZE * SIZE, LATENT = L * LATENT_SIZE * LATENT_SIZE };

static const autoencoder_shape TINY = {.in_channels = C, .input_size = SIZE, .levels = 3,
                                       .block_out_channels = {8, 16, 16}, .layers_per_block = 1,
                                       .latent_channels = L, .norm_groups = 4};

static const safetensors_tensor *need(const safetensors_file *f, const char *name, size_t numel) {
    const safetensors_tensor *t = safetensors_find(f, name);
    CHECK_MSG(t != NULL, "fixture lacks %s", name);
    if (!t) return NULL;
    CHECK_MSG(t->numel == numel && t->dtype == SAFETENSORS_F32, "%s: %zu values, expected %zu F32", name, t->numel,
              numel);
    return t->numel == numel && t->dtype == SAFETENSORS_F32 ? t : NULL;
}


static double worst_output;

static void check_output(const char *what, const float *ours, const safetensors_file *fx, const char *name,
                         size_t n) {
    const safetensors_tensor *t = need(fx, name, n);
    if (!t) return;
    double ref_max;
    double rel = test_relative_max_error(ours, t->data, n, &ref_max);
    printf("  %-28s max error %.3g relative to max |ref| %.3g\n", what, rel, ref_max);
    CHECK_MSG(rel <= TOLERANCE, "%s: error %.3g", what, rel);
    if (rel > worst_output) worst_output = rel;
}

static void check_loss(const char *what, float ours, const safetensors_file *fx, const char *name, int index) {
    const safetensors_tensor *t = need(fx, name, 3);
    if (!t) return;
    float ref = ((const float *)t->data)[index];
    double rel = fabs((double)ours - ref) / fabs(ref);
    printf("  %-28s %.9g vs %.9g (relative error %.3g)\n", what, ours, ref, rel);
    CHECK_MSG(rel <= LOSS_TOLERANCE, "%s: %.9g vs %.9g", what, ours, ref);
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Every parameter gradient with a "PREFIX<name>" tensor in the fixture (all of them
 * when required), and d_images against "PREFIXimages". Returns the worst error. */
static double check_gradients(const autoencoder_model *m, const float *d_images, const safetensors_file *fx,
                              const char *prefix, int required, int *checked) {
    double worst = 0;
    const char *worst_name = "";
    *checked = 0;
    for (int i = 0; i < m->table.count; i++) {
        const param_entry *e = &m->table.entries[i];
        char name[PARAM_NAME_MAX + 16];
        snprintf(name, sizeof name, "%s%s", prefix, e->name);
        if (!required && !safetensors_find(fx, name)) continue;
        const safetensors_tensor *g = need(fx, name, e->numel);
        if (!g) continue;
        (*checked)++;
        if (ends_with(e->name, "to_k.bias")) {
            /* zero in exact arithmetic: ours against the scale of the to_k weight gradient */
            char weight[PARAM_NAME_MAX + 16];
            snprintf(weight, sizeof weight, "%s%.*s.weight", prefix, (int)(strlen(e->name) - 5), e->name);
            const safetensors_tensor *gw = safetensors_find(fx, weight);
            double scale = 0, ours = 0;
            for (size_t k = 0; gw && k < gw->numel; k++) scale = fmax(scale, fabs(((const float *)gw->data)[k]));
            for (size_t k = 0; k < e->numel; k++) ours = fmax(ours, fabs(e->grad[k]));
            CHECK_MSG(gw && ours <= TOLERANCE * scale, "%s: %.3g, expected ~0 (to_k weight gradients up to %.3g)",
                      name, ours, scale);
            continue;
        }
        double gmax;
        double rel = test_relative_max_error(e->grad, g->data, e->numel, &gmax);
        CHECK_MSG(rel <= TOLERANCE, "%s: gradient error %.3g (max |ref| %.3g)", name, rel, gmax);
        CHECK_MSG(gmax > 0, "%s: the reference gradient is zero, the check would be empty", name);
        if (rel > worst) {
            worst = rel;
            worst_name = e->name;
        }
    }
    char name[64];
    snprintf(name, sizeof name, "%simages", prefix);
    const safetensors_tensor *gi = need(fx, name, (size_t)B * IMAGE);
    if (gi) {
        double gmax;
        double rel = test_relative_max_error(d_images, gi->data, (size_t)B * IMAGE, &gmax);
        CHECK_MSG(rel <= TOLERANCE, "%s: error %.3g", name, rel);
        if (rel > worst) {
            worst = rel;
            worst_name = "images";
        }
    }
    printf("  %-28s %d parameter gradients and d_images: worst relative error %.3g (%s)\n", prefix, *checked, worst,
           worst_name);
    return worst;
}

/* Our table against diffusers' names and shapes for the SD VAE, from the fixture's
 * metadata (written by the PyTorch reference). */
static void check_sd_vae_names(const safetensors_file *fx) {
    const char *listing = safetensors_metadata(fx, "sd_vae_tensors");
    CHECK_MSG(listing != NULL, "fixture lacks the sd_vae_tensors metadata");
    if (!listing) return;
    cJSON *list = cJSON_Parse(listing);
    CHECK(cJSON_IsArray(list));
    autoencoder_shape sd = {.in_channels = 3, .input_size = 512, .levels = 4,
                            .block_out_channels = {128, 256, 512, 512}, .layers_per_block = 2,
                            .latent_channels = 4, .norm_groups = 32};
    param_table table;
    autoencoder_build_table(&table, &sd);
    CHECK_MSG(cJSON_GetArraySize(list) == table.count, "SD VAE: %d tensors in diffusers, %d in ours",
              cJSON_GetArraySize(list), table.count);
    size_t total = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, list) {
        const char *name = cJSON_GetArrayItem(item, 0)->valuestring;
        const cJSON *shape = cJSON_GetArrayItem(item, 1);
        const param_entry *e = param_table_find(&table, name);
        CHECK_MSG(e != NULL, "SD VAE: diffusers' %s is not in our table", name);
        if (!e) continue;
        int same = e->ndim == cJSON_GetArraySize(shape);
        for (int d = 0; same && d < e->ndim; d++) same = e->shape[d] == (int64_t)cJSON_GetArrayItem(shape, d)->valuedouble;
        CHECK_MSG(same, "SD VAE: %s has another shape", name);
        total += e->numel;
    }
    CHECK_MSG(total == table.trainable_numel && total == 83653863, "SD VAE: %zu parameters", total);
    printf("SD VAE shape: %d tensors, %zu parameters, names and shapes as diffusers'\n", table.count, total);
    param_table_free(&table);
    cJSON_Delete(list);
}

int main(void) {
    safetensors_file fx;
    char err[512];
    if (safetensors_read(FIXTURE, &fx, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    /* the shape as the config gives it */
    ldm_config config;
    const char *sets[] = {"autoencoder.input_size=16", "autoencoder.block_out_channels=[8, 16, 16]",
                          "autoencoder.latent_channels=2", "autoencoder.norm_groups=4"};
    CHECK(config_load(&config, NULL, sets, 4, err, sizeof err) == 0);
    autoencoder_shape shape = config_autoencoder_shape(&config);
    CHECK(memcmp(&shape, &TINY, sizeof shape) == 0);
    autoencoder_model model;
    autoencoder_create(&model, &shape, B, AE_FOR_TRAINING);
    CHECK(model.latent_size == LATENT_SIZE);

    /* The fixture's weights are exactly our table: same count, every name and shape. */
    int fixture_weights = 0;
    for (int i = 0; i < fx.count; i++) {
        const char *n = fx.tensors[i].name;
        if (strncmp(n, "encoder.", 8) == 0 || strncmp(n, "decoder.", 8) == 0 || strncmp(n, "quant_conv.", 11) == 0 ||
            strncmp(n, "post_quant_conv.", 16) == 0)
            fixture_weights++;
    }
    CHECK_MSG(fixture_weights == model.table.count, "fixture has %d weights, our table %d", fixture_weights,
              model.table.count);
    for (int i = 0; i < model.table.count; i++) {
        param_entry *e = &model.table.entries[i];
        const safetensors_tensor *t = need(&fx, e->name, e->numel);
        if (!t) continue;
        int same = t->ndim == e->ndim;
        for (int d = 0; same && d < e->ndim; d++) same = t->shape[d] == e->shape[d];
        CHECK_MSG(same, "%s: shape differs", e->name);
        memcpy(e->data, t->data, sizeof(float) * e->numel);
    }
    const safetensors_tensor *images = need(&fx, "input.images", (size_t)B * IMAGE),
                             *noise = need(&fx, "input.noise", (size_t)B * LATENT),
                             *beta = need(&fx, "input.kl_beta", 1);
    if (!images || !noise || !beta) return test_finish("test_ae_reference");
    const float kl_beta = ((const float *)beta->data)[0];

    /* encode */
    static float mean[B * LATENT], logvar[B * LATENT], d_images[B * IMAGE], decoded[B * IMAGE];
    printf("encode:\n");
    autoencoder_encode(&model, images->data, B, mean, logvar);
    check_output("posterior mean", mean, &fx, "posterior.mean", (size_t)B * LATENT);
    check_output("posterior logvar (clamped)", logvar, &fx, "posterior.logvar", (size_t)B * LATENT);
    int clamped = 0;
    for (int k = 0; k < B * LATENT; k++) clamped += logvar[k] == AE_LOGVAR_MIN;
    CHECK_MSG(clamped > 0 && clamped < B * LATENT / 2, "%d log-variances at the clamp", clamped);

    /* the training step, L1 + beta KL with noise */
    printf("training step (L1, z = mean + std * noise, kl_beta %g):\n", kl_beta);
    autoencoder_zero_grad(&model);
    autoencoder_loss loss = autoencoder_train_forward(&model, images->data, noise->data, B, kl_beta, AE_LOSS_L1);
    check_loss("loss", loss.total, &fx, "loss", 0);
    check_loss("reconstruction (L1)", loss.reconstruction, &fx, "loss", 1);
    check_loss("KL", loss.kl, &fx, "loss", 2);
    check_output("posterior mean", model.posterior_mean, &fx, "posterior.mean", (size_t)B * LATENT);
    check_output("posterior logvar", model.posterior_logvar, &fx, "posterior.logvar", (size_t)B * LATENT);
    check_output("latent z", model.latent, &fx, "latent", (size_t)B * LATENT);
    check_output("reconstruction", model.reconstruction, &fx, "reconstruction", (size_t)B * IMAGE);
    autoencoder_train_backward(&model, 1.0f, d_images);
    int checked;
    double worst_l1 = check_gradients(&model, d_images, &fx, "grad.", 1, &checked);
    CHECK(checked == model.table.count);

    /* decode alone gives the step's reconstruction */
    static float latent_copy[B * LATENT];
    memcpy(latent_copy, model.latent, sizeof latent_copy);
    autoencoder_decode(&model, latent_copy, B, decoded);
    printf("decode:\n");
    check_output("reconstruction", decoded, &fx, "reconstruction", (size_t)B * IMAGE);

    /* the other variant: L2, z = mean; gradients accumulate onto zeroed ones, and a
     * d_loss of 2 doubles them (checked against the reference at half) */
    printf("training step (L2, z = mean):\n");
    autoencoder_zero_grad(&model);
    loss = autoencoder_train_forward(&model, images->data, NULL, B, kl_beta, AE_LOSS_L2);
    check_loss("loss", loss.total, &fx, "l2_mean.loss", 0);
    check_loss("reconstruction (L2)", loss.reconstruction, &fx, "l2_mean.loss", 1);
    check_loss("KL", loss.kl, &fx, "l2_mean.loss", 2);
    check_output("reconstruction", model.reconstruction, &fx, "l2_mean.reconstruction", (size_t)B * IMAGE);
    autoencoder_train_backward(&model, 2.0f, d_images);
    for (size_t k = 0; k < model.table.trainable_numel; k++) model.grads[k] *= 0.5f;
    for (int k = 0; k < B * IMAGE; k++) d_images[k] *= 0.5f;
    double worst_l2 = check_gradients(&model, d_images, &fx, "l2_mean.grad.", 0, &checked);
    CHECK_MSG(checked > 40, "only %d small gradients in the fixture", checked);
    printf("worst: outputs %.3g, gradients %.3g (L1 step), %.3g (L2 step)\n", worst_output, worst_l1, worst_l2);

    /* Weights through a file: written by name, read back with param_table_load_safetensors
     * into a model laid out for inference, which must encode and decode bit-identically
     * (its forward runs in the pooled buffers). */
    char dir[] = "/tmp/ldm_test_ae_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char path[64];
    snprintf(path, sizeof path, "%s/weights.safetensors", dir);
    CHECK(param_table_save_safetensors(&model.table, path, 0, err, sizeof err) == 0);
    autoencoder_model inference;
    autoencoder_create(&inference, &TINY, B, AE_FOR_INFERENCE);
    param_table_load_safetensors(&inference.table, path);
    CHECK(memcmp(inference.params, model.params, sizeof(float) * model.table.trainable_numel) == 0);
    CHECK(inference.grads == NULL && inference.memory_bytes < model.memory_bytes);
    static float mean2[B * LATENT], logvar2[B * LATENT], decoded2[B * IMAGE];
    autoencoder_encode(&inference, images->data, B, mean2, logvar2);
    CHECK(memcmp(mean2, mean, sizeof mean) == 0 && memcmp(logvar2, logvar, sizeof logvar) == 0);
    autoencoder_decode(&inference, latent_copy, B, decoded2);
    CHECK(memcmp(decoded2, decoded, sizeof decoded) == 0);

    /* A file with diffusers' pre-0.14 attention names (query, key, value, proj_attn),
     * as Stable Diffusion VAE files on the hub often are, loads as well. */
    safetensors_entry *entries = calloc((size_t)model.table.count, sizeof(*entries));
    char(*old_names)[PARAM_NAME_MAX] = calloc((size_t)model.table.count, PARAM_NAME_MAX);
    int renamed = 0;
    static const char *const renames[][2] = {{".to_q.", ".query."}, {".to_k.", ".key."}, {".to_v.", ".value."},
                                             {".to_out.0.", ".proj_attn."}};
    for (int i = 0; i < model.table.count; i++) {
        const param_entry *e = &model.table.entries[i];
        snprintf(old_names[i], PARAM_NAME_MAX, "%s", e->name);
        for (int r = 0; r < 4; r++) {
            const char *at = strstr(e->name, renames[r][0]);
            if (!at) continue;
            snprintf(old_names[i], PARAM_NAME_MAX, "%.*s%s%s", (int)(at - e->name), e->name, renames[r][1],
                     at + strlen(renames[r][0]));
            renamed++;
        }
        entries[i] = (safetensors_entry){.name = old_names[i], .dtype = SAFETENSORS_F32, .ndim = e->ndim,
                                         .data = e->data};
        for (int d = 0; d < e->ndim; d++) entries[i].shape[d] = e->shape[d];
    }
    CHECK(renamed == 16);
    char old_path[64];
    snprintf(old_path, sizeof old_path, "%s/old-names.safetensors", dir);
    CHECK(safetensors_write(old_path, entries, model.table.count, NULL, NULL, 0, err, sizeof err) == 0);
    autoencoder_model from_old;
    autoencoder_create(&from_old, &TINY, 1, AE_FOR_ENCODING);
    autoencoder_load_safetensors(&from_old, old_path);
    CHECK(memcmp(from_old.params, model.params, sizeof(float) * model.table.trainable_numel) == 0);
    autoencoder_load_safetensors(&from_old, path); /* and today's names */
    CHECK(memcmp(from_old.params, model.params, sizeof(float) * model.table.trainable_numel) == 0);
    autoencoder_destroy(&from_old);
    unlink(old_path);
    free(entries);
    free(old_names);

    /* encoding only: no decoder buffers, the same posterior; one sample alone as in the batch */
    autoencoder_model encoder;
    autoencoder_create(&encoder, &TINY, 1, AE_FOR_ENCODING);
    param_table_load_safetensors(&encoder.table, path);
    CHECK(encoder.memory_bytes < inference.memory_bytes);
    float mean1[LATENT], logvar1[LATENT];
    autoencoder_encode(&encoder, (const float *)images->data + IMAGE, 1, mean1, logvar1);
    double rel = test_relative_max_error(mean1, mean + LATENT, LATENT, NULL);
    CHECK_MSG(rel <= 1e-6, "sample 1 alone vs in the batch: %.3g", rel);
    CHECK(test_relative_max_error(logvar1, logvar + LATENT, LATENT, NULL) <= 1e-6);
    printf("memory: training %.2f MiB, inference %.2f MiB, encoding only (batch 1) %.2f MiB\n",
           model.memory_bytes / 1048576.0, inference.memory_bytes / 1048576.0, encoder.memory_bytes / 1048576.0);
    unlink(path);
    rmdir(dir);

    check_sd_vae_names(&fx);

    autoencoder_destroy(&encoder);
    autoencoder_destroy(&inference);
    autoencoder_destroy(&model);
    safetensors_free(&fx);
    return test_finish("test_ae_reference");
}

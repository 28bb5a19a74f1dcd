/* The DiT against PyTorch: tests/make_dit_fixture.py builds the same small DiT
 * (input 8x8x4, patch 2, hidden 64, depth 2, 4 heads, 10 classes) in float64
 * PyTorch from the paper's description and stores weights, a batch, the output,
 * the weighted-MSE loss, every parameter's gradient and the losses of 10 AdamW
 * steps in tests/fixtures/dit_small.safetensors. Our float32 model must match:
 *   output:    max |ours - ref| <= 1e-5 * max |ref|          (per tensor)
 *   gradients: max |ours - ref| <= 1e-5 * max |ref| + 1e-9   (per tensor)
 *   loss and the 10 AdamW losses: relative error <= 1e-5.
 * The reference is float64, so these bounds measure our float32 rounding only.
 * tests/fixtures/dit_small_guided.safetensors (make_dit_fixture.py --guided) is the
 * same check for the model with a guidance-scale input (dit_forward_guided, the
 * student of guidance-range distillation), with the scales in input.w. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dit.h"
#include "ops.h"
#include "optimizer.h"
#include "safetensors.h"
#include "test_util.h"

#define TOLERANCE 1e-5

static const safetensors_tensor *need(const safetensors_file *f, const char *name, size_t numel) {
    const safetensors_tensor *t = safetensors_find(f, name);
    CHECK_MSG(t != NULL, "fixture lacks %s", name);
    if (!t) return NULL;
    CHECK_MSG(t->numel == numel, "%s has %zu values, expected %zu", name, t->numel, numel);
    CHECK_MSG(t->dtype == SAFETENSORS_F32 || t->dtype == SAFETENSORS_I32, "%s dtype", name);
    return t->numel == numel ? t : NULL;
}


static void check_fixture(const char *fixture, int guided) {
    printf("%s\n", fixture);
    safetensors_file fx;
    char err[512];
    if (safetensors_read(fixture, &fx, err, sizeof(err)) != 0) {
        CHECK_MSG(0, "%s", err);
        return;
    }
    enum { B = 4 };
    dit_shape shape = {.input_size = 8, .in_channels = 4, .patch_size = 2, .hidden_size = 64, .depth = 2,
                       .num_heads = 4, .mlp_hidden = 256, .num_classes = 10, .guidance_input = guided};
    dit_model model;
    dit_create(&model, &shape, B);
    const size_t sample = 4 * 8 * 8;

    /* weights, by name; the fixture must hold exactly the model's tensors */
    for (int i = 0; i < model.table.count; i++) {
        param_entry *e = &model.table.entries[i];
        const safetensors_tensor *t = need(&fx, e->name, e->numel);
        if (!t) continue;
        for (int d = 0; d < e->ndim; d++) CHECK_MSG(t->shape[d] == e->shape[d], "%s dim %d", e->name, d);
        if (strcmp(e->name, "pos_embed") == 0) { /* ours is computed; it must equal PyTorch's */
            double ref_max;
            double rel = test_relative_max_error(e->data, t->data, e->numel, &ref_max);
            CHECK_MSG(rel <= 1e-6, "pos_embed differs by %.3g relative", rel);
        }
        memcpy(e->data, t->data, sizeof(float) * e->numel);
    }
    float *initial = malloc(sizeof(float) * model.table.trainable_numel);
    memcpy(initial, model.params, sizeof(float) * model.table.trainable_numel);

    const safetensors_tensor *x = need(&fx, "input.x", B * sample), *t = need(&fx, "input.t", B),
                             *y = need(&fx, "input.y", B), *target = need(&fx, "input.target", B * sample),
                             *weight = need(&fx, "input.weight", B), *output = need(&fx, "output", B * sample),
                             *loss_ref = need(&fx, "loss", 1), *hyper = need(&fx, "adamw.hparams", 5),
                             *losses_ref = need(&fx, "adamw.losses", 10);
    const safetensors_tensor *w = guided ? need(&fx, "input.w", B) : NULL;
    if (!x || !t || !y || !target || !weight || !output || !loss_ref || !hyper || !losses_ref || (guided && !w)) {
        free(initial);
        dit_destroy(&model);
        safetensors_free(&fx);
        return;
    }
    const float *guidance = w ? w->data : NULL;

    float out[B * 4 * 8 * 8], d_out[B * 4 * 8 * 8];
    dit_zero_grad(&model);
    dit_forward_guided(&model, x->data, t->data, y->data, guidance, B, out);
    double ref_max;
    double rel = test_relative_max_error(out, output->data, B * sample, &ref_max);
    printf("output: max error %.3g relative to max |ref| %.3g\n", rel, ref_max);
    CHECK_MSG(rel <= TOLERANCE, "output error %.3g", rel);
    float loss = weighted_mse_forward(NULL, out, target->data, weight->data, B, (int)sample);
    float ref_loss = ((const float *)loss_ref->data)[0];
    CHECK_CLOSE(loss, ref_loss, 0, TOLERANCE);

    weighted_mse_backward(d_out, 1.0f, out, target->data, weight->data, B, (int)sample);
    dit_backward(&model, d_out, NULL, B);
    double worst = 0;
    const char *worst_name = "";
    for (int i = 0; i < model.table.count; i++) {
        param_entry *e = &model.table.entries[i];
        if (!e->trainable) continue;
        char name[PARAM_NAME_MAX + 8];
        snprintf(name, sizeof(name), "grad.%s", e->name);
        const safetensors_tensor *g = need(&fx, name, e->numel);
        if (!g) continue;
        double gmax;
        double grel = test_relative_max_error(e->grad, g->data, e->numel, &gmax);
        CHECK_MSG(grel <= TOLERANCE + 1e-9 / (gmax > 0 ? gmax : 1), "%s: gradient error %.3g (max |ref| %.3g)",
                  name, grel, gmax);
        CHECK_MSG(gmax > 0, "%s: the reference gradient is zero, the check would be empty", name);
        if (grel > worst) {
            worst = grel;
            worst_name = e->name;
        }
    }
    printf("gradients: worst relative error %.3g (%s)\n", worst, worst_name);

    /* 10 AdamW steps from the same initial weights on the same batch */
    const float *h = hyper->data;
    memcpy(model.params, initial, sizeof(float) * model.table.trainable_numel);
    adamw_state optimizer;
    adamw_create(&optimizer, model.table.trainable_numel, (adamw_hyper){h[1], h[2], h[3], h[4]});
    const float *ref_losses = losses_ref->data;
    double worst_loss = 0;
    for (int step = 0; step < 10; step++) {
        dit_zero_grad(&model);
        dit_forward_guided(&model, x->data, t->data, y->data, guidance, B, out);
        float l = weighted_mse_forward(NULL, out, target->data, weight->data, B, (int)sample);
        CHECK_CLOSE(l, ref_losses[step], 0, TOLERANCE);
        double e = fabs(l - ref_losses[step]) / fabs(ref_losses[step]);
        if (e > worst_loss) worst_loss = e;
        weighted_mse_backward(d_out, 1.0f, out, target->data, weight->data, B, (int)sample);
        dit_backward(&model, d_out, NULL, B);
        adamw_step(&optimizer, model.params, model.grads, h[0]);
    }
    printf("adamw: 10 losses from %.6f to %.6f, worst relative error %.3g\n", ref_losses[0], ref_losses[9],
           worst_loss);
    CHECK(ref_losses[9] < ref_losses[0]);

    adamw_destroy(&optimizer);
    free(initial);
    dit_destroy(&model);
    safetensors_free(&fx);
}

int main(void) {
    check_fixture("tests/fixtures/dit_small.safetensors", 0);
    check_fixture("tests/fixtures/dit_small_guided.safetensors", 1);
    return test_finish("test_dit_reference");
}

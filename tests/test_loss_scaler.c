/* The loss scaler (train/loss_scaler.h) on a host parameter store of four
 * values, one rank: each micro-batch's loss weight; in fp16 the scale taken
 * out of a finite gradient (the norm is the unscaled one), an overflow (a
 * non-finite gradient with a finite loss) skipped with the scale halved and not
 * counted toward divergence while the scale is at least 1, but counted below
 * 1; the scale doubled after growth_interval good steps; in fp32 a non-finite
 * loss skipped and counted, the count reset by a good step; on resume, the
 * scale of an fp16 checkpoint kept and that of a bf16 one started afresh. */
#include <math.h>
#include <string.h>

#include "comm.h"
#include "config.h"
#include "loss_scaler.h"
#include "parameter_store.h"
#include "test_util.h"

#define COUNT 4

static float params[COUNT], grads[COUNT], ema[COUNT];

static loss_scaler scaler_for(const char *precision) {
    ldm_config c;
    config_defaults(&c);
    strcpy(c.train.precision, precision);
    c.train.loss_scale_initial = 1024;
    c.train.loss_scale_growth_interval = 3;
    c.train.max_nonfinite_steps = 5;
    return loss_scaler_from_config(&c.train);
}

static void set_grads(float a, float b) {
    grads[0] = a, grads[1] = b, grads[2] = grads[3] = 0;
}

static void test_fp16(parameter_store *store) {
    const loss_scaler s = scaler_for("fp16");
    training_state state = {.loss_scale = loss_scaler_first_scale(&s)};
    CHECK(s.dynamic && state.loss_scale == 1024);
    CHECK(loss_scaler_weight(&s, &state, 4) == 256.0f);

    /* A finite gradient: unscaled, its norm the unscaled one; two more good steps grow the scale. */
    set_grads(3 * 1024, 4 * 1024);
    loss_scaler_verdict v = loss_scaler_check(&s, &state, store, 0.5);
    CHECK(!v.skip && !v.overflow && v.scale == 1024);
    CHECK_CLOSE(v.grad_norm, 5.0, 0, 1e-12);
    CHECK(grads[0] == 3.0f && grads[1] == 4.0f);
    for (int64_t step = 0; step < 2; step++) {
        loss_scaler_record(&s, &state, &v, step);
        CHECK(state.loss_scale == 1024 && state.loss_scale_good_steps == step + 1);
    }
    loss_scaler_record(&s, &state, &v, 2);
    CHECK(state.loss_scale == 2048 && state.loss_scale_good_steps == 0);

    /* An overflow: skipped, the scale halved, not counted toward divergence. */
    set_grads(INFINITY, 1);
    v = loss_scaler_check(&s, &state, store, 0.5);
    CHECK(v.skip && v.overflow && v.scale == 2048 && isnan(v.grad_norm));
    CHECK(grads[0] == INFINITY && grads[1] == 1.0f); /* a skipped step's gradient is left alone */
    loss_scaler_record(&s, &state, &v, 3);
    CHECK(state.loss_scale == 1024 && state.skipped_total == 1 && state.skipped_in_a_row == 0);

    /* Halved to 1 an overflow does not count yet; below 1 it counts. */
    state.loss_scale = 2;
    v = loss_scaler_check(&s, &state, store, 0.5);
    loss_scaler_record(&s, &state, &v, 4);
    CHECK(state.loss_scale == 1 && state.skipped_in_a_row == 0 && state.skipped_total == 2);
    v = loss_scaler_check(&s, &state, store, 0.5);
    loss_scaler_record(&s, &state, &v, 5);
    CHECK(state.loss_scale == 0.5 && state.skipped_in_a_row == 1 && state.skipped_total == 3);

    /* A non-finite loss is no overflow. */
    state.loss_scale = 1024;
    set_grads(1, 1);
    v = loss_scaler_check(&s, &state, store, NAN);
    CHECK(v.skip && !v.overflow);
    loss_scaler_record(&s, &state, &v, 6);
    CHECK(state.loss_scale == 512 && state.skipped_in_a_row == 2);

    /* Resume: an fp16 checkpoint's scale is kept, a bf16 one's starts afresh. */
    state.loss_scale = 8, state.loss_scale_good_steps = 2;
    loss_scaler_resume(&s, &state, "{\"config\": {\"train\": {\"precision\": \"fp16\"}}}");
    CHECK(state.loss_scale == 8 && state.loss_scale_good_steps == 2);
    state.loss_scale = 1;
    loss_scaler_resume(&s, &state, "{\"config\": {\"train\": {\"precision\": \"bf16\"}}}");
    CHECK(state.loss_scale == 1024 && state.loss_scale_good_steps == 0);
}

static void test_fp32(parameter_store *store) {
    const loss_scaler s = scaler_for("fp32");
    training_state state = {.loss_scale = loss_scaler_first_scale(&s)};
    CHECK(!s.dynamic && state.loss_scale == 1);
    CHECK(loss_scaler_weight(&s, &state, 4) == 0.25f);
    set_grads(3, 4);
    loss_scaler_verdict v = loss_scaler_check(&s, &state, store, 0.5);
    CHECK(!v.skip && v.scale == 1 && grads[0] == 3.0f);
    CHECK_CLOSE(v.grad_norm, 5.0, 0, 1e-12);
    for (int64_t step = 0; step < 4; step++) {
        set_grads(INFINITY, 1);
        v = loss_scaler_check(&s, &state, store, 0.5);
        CHECK(v.skip && !v.overflow);
        loss_scaler_record(&s, &state, &v, step);
        CHECK(state.skipped_in_a_row == step + 1 && state.loss_scale == 1);
    }
    set_grads(1, 1);
    v = loss_scaler_check(&s, &state, store, 0.5);
    loss_scaler_record(&s, &state, &v, 4);
    CHECK(state.skipped_in_a_row == 0 && state.skipped_total == 4 && state.loss_scale_good_steps == 0);
}

int main(int argc, char **argv) {
    comm_init(&argc, &argv);
    trainable model = {.params = params, .grads = grads, .count = COUNT};
    adamw_state optimizer;
    adamw_create(&optimizer, COUNT, (adamw_hyper){.beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f});
    parameter_store *store = parameter_store_create(&model, &optimizer, ema);
    test_fp16(store);
    test_fp32(store);
    store->destroy(store);
    adamw_destroy(&optimizer);
    comm_finalize();
    return test_finish("test_loss_scaler");
}

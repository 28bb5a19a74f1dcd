/* See loss_scaler.h. */
#include "loss_scaler.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <string.h>

#include "comm.h"
#include "fatal.h"

loss_scaler loss_scaler_from_config(const train_config *train) {
    return (loss_scaler){.dynamic = strcmp(train->precision, "fp16") == 0,
                         .initial_scale = train->loss_scale_initial,
                         .growth_interval = train->loss_scale_growth_interval,
                         .max_nonfinite_steps = train->max_nonfinite_steps};
}

double loss_scaler_first_scale(const loss_scaler *scaler) { return scaler->dynamic ? scaler->initial_scale : 1.0; }

/* Whether state.json's config trained in fp16. */
static int saved_in_fp16(const char *state_json) {
    cJSON *root = cJSON_Parse(state_json);
    const cJSON *train = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "config"), "train");
    const cJSON *precision = cJSON_GetObjectItemCaseSensitive(train, "precision");
    int fp16 = cJSON_IsString(precision) && strcmp(precision->valuestring, "fp16") == 0;
    cJSON_Delete(root);
    return fp16;
}

void loss_scaler_resume(const loss_scaler *scaler, training_state *state, const char *saved_state_json) {
    if (scaler->dynamic && !saved_in_fp16(saved_state_json)) {
        state->loss_scale = scaler->initial_scale;
        state->loss_scale_good_steps = 0;
    }
}

float loss_scaler_weight(const loss_scaler *scaler, const training_state *state, int accumulation) {
    return scaler->dynamic ? (float)(state->loss_scale / (double)accumulation) : 1.0f / (float)accumulation;
}

loss_scaler_verdict loss_scaler_check(const loss_scaler *scaler, const training_state *state,
                                      parameter_store *store, double loss) {
    /* Every rank holds the same averaged gradient, and comm_any makes the
     * decision one for all in any case. The norm is finite exactly when every
     * value is (squares of floats cannot overflow a double sum). */
    loss_scaler_verdict verdict = {.scale = state->loss_scale, .grad_norm = store->gradient_norm(store)};
    verdict.skip = comm_any(!isfinite(loss) || !isfinite(verdict.grad_norm));
    verdict.overflow = scaler->dynamic && verdict.skip && isfinite(loss);
    if (verdict.skip) {
        verdict.grad_norm = NAN;
    } else if (scaler->dynamic) {
        /* Exact for a power of two, unless a value underflows. */
        store->scale_gradients(store, (float)(1.0 / verdict.scale));
        verdict.grad_norm = store->gradient_norm(store);
    }
    return verdict;
}

void loss_scaler_record(const loss_scaler *scaler, training_state *state, const loss_scaler_verdict *verdict,
                        int64_t step) {
    if (!verdict->skip) {
        state->skipped_in_a_row = 0;
        if (scaler->dynamic && ++state->loss_scale_good_steps >= scaler->growth_interval) {
            state->loss_scale = verdict->scale * 2;
            state->loss_scale_good_steps = 0;
        }
        return;
    }
    state->skipped_total++;
    if (scaler->dynamic) {
        state->loss_scale = verdict->scale / 2;
        state->loss_scale_good_steps = 0;
    }
    /* An overflow that a lower scale cures is not divergence; once the scale
     * is below 1, lowering it further is not a cure either. */
    if ((!verdict->overflow || state->loss_scale < 1.0) && ++state->skipped_in_a_row >= scaler->max_nonfinite_steps)
        fatal_internal("training diverged: %d steps in a row with a non-finite loss or gradient, the last at "
                       "step %lld (train.max_nonfinite_steps); lower train.lr or raise train.grad_clip",
                       state->skipped_in_a_row, (long long)step + 1);
}

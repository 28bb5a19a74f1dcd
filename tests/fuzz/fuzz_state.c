/* libFuzzer target: a checkpoint's state.json (train/training_state.c) and
 * the consistency record of a student (train/consistency_record.c). The input
 * is parsed as a state (and each rank's loader state derived from it for 1 and
 * 3 ranks), as a record for the sampler at 1, 2 and 4 steps, and as a saved
 * record against the record of a default config. */
#include <stdlib.h>

#include "config.h"
#include "consistency_record.h"
#include "fuzz_common.h"
#include "training_state.h"

static void parse_state(void *context) {
    training_state state;
    training_state_parse(context, "fuzz/state.json", &state);
    for (int world = 1; world <= 3; world += 2)
        for (int rank = 0; rank < world; rank++) {
            loader_state loader = training_state_loader_for_rank(&state, 1000, rank, world);
            (void)loader;
        }
    training_state_free(&state);
}

static void parse_record(void *context) {
    for (int steps = 1; steps <= 4; steps *= 2) {
        consistency_sampler_options options;
        consistency_record_sampler(context, "fuzz/checkpoint", steps, &options);
    }
}

static char *reference_record;

static void compare_record(void *context) { consistency_record_check_resume(context, reference_record, "fuzz/checkpoint"); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!reference_record) {
        ldm_config config;
        config_defaults(&config);
        reference_record = consistency_record_json(&config, "teacher/checkpoints/step-00000010 (step 10, ema weights)");
    }
    char *text = fuzz_text(data, size);
    fuzz_run(parse_state, text);
    fuzz_run(parse_record, text);
    fuzz_run(compare_record, text);
    free(text);
    return 0;
}

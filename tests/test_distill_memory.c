/* The distillation step (train/trainables/distill_trainable.c: the teacher's guided Heun
 * step, the target network, the student's forward and backward, the target's
 * EMA update) allocates nothing, in fp32 and bf16, with a fixed guidance scale
 * and with a range of scales (a student with a guidance input); and it is
 * deterministic: two distillers built alike take bit-identical steps.
 *
 * Allocation is observed by linking this test with -Wl,--wrap=malloc (and
 * calloc, realloc, free, aligned_alloc, posix_memalign): every call made from
 * our own objects goes through the counters of allocation_counter.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "allocation_counter.h"
#include "cli.h"
#include "config.h"
#include "dit.h"
#include "rng.h"
#include "test_util.h"
#include "trainable.h"
#include "model_shapes.h"
#include "trainables.h"

enum { BATCH = 3, PER_SAMPLE = 4 * 8 * 8 };

static void small_config(ldm_config *c, const char *precision, double guidance_max) {
    config_defaults(c);
    c->model.input_size = 8;
    c->model.in_channels = 4;
    c->model.patch_size = 2;
    c->model.hidden_size = 32;
    c->model.depth = 2;
    c->model.num_heads = 4;
    c->model.num_classes = 10;
    snprintf(c->train.precision, sizeof c->train.precision, "%s", precision);
    c->distill.guidance = 2.0;
    c->distill.guidance_max = guidance_max;
}

/* A teacher checkpoint folder holding ema.safetensors of a DiT with open gates. */
static void write_teacher(const ldm_config *c, const char *dir) {
    dit_model teacher;
    const dit_shape shape = config_dit_shape(c);
    dit_create(&teacher, &shape, 1);
    dit_init_weights(&teacher, 7);
    rng_stream rng = rng_stream_for(11, 0, 0);
    for (size_t i = 0; i < teacher.table.trainable_numel; i++) teacher.params[i] += 0.05f * rng_normal(&rng);
    char path[512], err[256];
    snprintf(path, sizeof path, "%s/ema.safetensors", dir);
    CHECK_MSG(param_table_save_safetensors(&teacher.table, path, 0, err, sizeof err) == 0, "%s", err);
    dit_destroy(&teacher);
}

/* Two steps of micro-batch + the extra state's after_step on fixed data; returns the last loss. */
static double two_steps(trainable *t, int64_t first_step) {
    static float samples[BATCH * PER_SAMPLE];
    rng_stream rng = rng_stream_for(12, 0, 0);
    for (int i = 0; i < BATCH * PER_SAMPLE; i++) samples[i] = rng_normal(&rng);
    const int32_t labels[BATCH] = {1, 5, -1};
    const int64_t index[BATCH] = {0, 7, 3};
    double loss = 0;
    for (int64_t step = first_step; step < first_step + 2; step++) {
        t->zero_grad(t);
        loss = t->micro_batch(t, samples, labels, index, BATCH, step, 1.0f, NULL, NULL);
        t->extra->after_step(t);
    }
    return loss;
}

static void check_distiller(const char *dir, const char *precision, double guidance_max) {
    ldm_config config;
    small_config(&config, precision, guidance_max);
    write_teacher(&config, dir);
    const distill_context context = {.teacher_checkpoint = dir, .record_json = "{}"};
    trainable *a = distill_trainable_create(&config, BATCH, &context);
    trainable *b = distill_trainable_create(&config, BATCH, &context);
    two_steps(a, 0); /* warm-up: lazy library set-up */
    allocation_counting = 1;
    allocation_count = 0;
    const double loss = two_steps(a, 2);
    allocation_counting = 0;
    CHECK_MSG(allocation_count == 0, "%s, guidance_max %g: %ld allocations or frees in 2 distillation steps",
              precision, guidance_max, allocation_count);
    two_steps(b, 0);
    const double again = two_steps(b, 2);
    printf("%s, guidance %s: loss %.9g\n", precision, guidance_max > 0 ? "2 to 3 (student input)" : "2", loss);
    CHECK(loss > 0 && loss == again);
    CHECK(memcmp(a->params, b->params, sizeof(float) * a->count) == 0);
    CHECK(memcmp(a->extra->weights, b->extra->weights, sizeof(float) * a->count) == 0);
    a->destroy(a);
    b->destroy(b);
}

int main(void) {
    char dir[] = "/tmp/ldm_test_distill_memory_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    check_distiller(dir, "fp32", 0);
    check_distiller(dir, "fp32", 3);
    check_distiller(dir, "bf16", 3);
    char path[600];
    snprintf(path, sizeof path, "%s/ema.safetensors", dir);
    unlink(path);
    rmdir(dir);
    return test_finish("test_distill_memory");
}

/* The DiT training step (forward, loss, backward, AdamW) allocates nothing, and
 * it is deterministic: two models with the same seed take bit-identical steps,
 * also when the OpenMP thread count differs. Two shapes: a small one, and one
 * whose attention (64 tokens, head_dim 64) takes the fused fp32 attention on
 * AVX-512 CPUs.
 *
 * Allocation is observed by linking this test with -Wl,--wrap=malloc (and calloc,
 * realloc, free, aligned_alloc, posix_memalign): every call made from our own
 * objects goes through the counters of allocation_counter.c. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "dit.h"
#include "ops.h"
#include "optimizer.h"
#include "rng.h"
#include "allocation_counter.h"
#include "test_util.h"


enum { BATCH = 3 };

typedef struct {
    dit_model model;
    adamw_state optimizer;
    float x[BATCH * 4 * 8 * 8], target[BATCH * 4 * 8 * 8], out[BATCH * 4 * 8 * 8], d_out[BATCH * 4 * 8 * 8];
    float t[BATCH];
    int y[BATCH];
} trainer;

static void trainer_create(trainer *tr, const dit_shape *shape) {
    dit_create(&tr->model, shape, BATCH);
    dit_init_weights(&tr->model, 7);
    /* DiT's zero init leaves the gates closed; open them so every path carries gradient. */
    rng_stream rng = rng_stream_for(11, 0, 0);
    for (size_t i = 0; i < tr->model.table.trainable_numel; i++) tr->model.params[i] += 0.05f * rng_normal(&rng);
    adamw_create(&tr->optimizer, tr->model.table.trainable_numel, (adamw_hyper){0.9f, 0.999f, 1e-8f, 0.01f});
    for (size_t i = 0; i < sizeof(tr->x) / sizeof(float); i++) {
        tr->x[i] = rng_normal(&rng);
        tr->target[i] = rng_normal(&rng);
    }
    for (int b = 0; b < BATCH; b++) {
        tr->t[b] = 100.0f * rng_normal(&rng);
        tr->y[b] = b * 4; /* includes the null class 10 for b = 2 */
    }
    tr->y[2] = 10;
}

static float trainer_step(trainer *tr) {
    dit_zero_grad(&tr->model);
    dit_forward(&tr->model, tr->x, tr->t, tr->y, BATCH, tr->out);
    float loss = weighted_mse_forward(NULL, tr->out, tr->target, NULL, BATCH, 4 * 8 * 8);
    weighted_mse_backward(tr->d_out, 1.0f, tr->out, tr->target, NULL, BATCH, 4 * 8 * 8);
    dit_backward(&tr->model, tr->d_out, NULL, BATCH);
    adamw_step(&tr->optimizer, tr->model.params, tr->model.grads, 1e-3f);
    return loss;
}

static void trainer_destroy(trainer *tr) {
    adamw_destroy(&tr->optimizer);
    dit_destroy(&tr->model);
}

/* Allocation-free and bit-identical with fewer threads, at this shape. */
static void check_shape(const char *name, const dit_shape *shape) {
    static trainer first, second;
    int threads = omp_get_max_threads();
    trainer_create(&first, shape);
    trainer_create(&second, shape);

    /* the step allocates nothing (after one warm-up step for lazy library set-up) */
    trainer_step(&first);
    allocation_count = 0;
    allocation_counting = 1;
    float first_losses[4];
    for (int s = 0; s < 3; s++) first_losses[s] = trainer_step(&first);
    allocation_counting = 0;
    CHECK_MSG(allocation_count == 0, "%s: %ld allocations or frees during 3 training steps", name, allocation_count);

    /* bit-identical with fewer threads (never more: scratch is sized for the thread count at creation) */
    omp_set_num_threads(threads > 1 ? threads - 1 : 1);
    trainer_step(&second);
    for (int s = 0; s < 3; s++) {
        float loss = trainer_step(&second);
        CHECK_MSG(memcmp(&loss, &first_losses[s], sizeof(float)) == 0, "%s: step %d loss %.9g vs %.9g", name, s,
                  loss, first_losses[s]);
    }
    CHECK(memcmp(first.model.params, second.model.params, sizeof(float) * first.model.table.trainable_numel) == 0);
    CHECK(memcmp(first.optimizer.v, second.optimizer.v, sizeof(float) * first.optimizer.count) == 0);
    CHECK_MSG(first_losses[2] < first_losses[0], "%s: the loss does not fall", name); /* and it learns */
    omp_set_num_threads(threads);

    trainer_destroy(&first);
    trainer_destroy(&second);
}

int main(void) {
    const dit_shape small = {.input_size = 8, .in_channels = 4, .patch_size = 2, .hidden_size = 32, .depth = 2,
                             .num_heads = 4, .mlp_hidden = 128, .num_classes = 10};
    const dit_shape fused_attention = {.input_size = 8, .in_channels = 4, .patch_size = 1, .hidden_size = 128,
                                       .depth = 1, .num_heads = 2, .mlp_hidden = 256, .num_classes = 10};
    check_shape("small", &small);
    check_shape("64 tokens, head_dim 64", &fused_attention);
    return test_finish("test_dit_memory");
}

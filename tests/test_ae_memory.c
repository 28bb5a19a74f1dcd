/* The autoencoder's training step (forward with sampling, loss, backward, AdamW) and
 * its inference encode/decode allocate nothing (nor make oneDNN convolutions: the
 * layout does); the step is deterministic (two models
 * with the same seed take bit-identical steps, also with fewer OpenMP threads); and it
 * learns (the loss falls over a few steps on a fixed batch).
 *
 * Allocation is observed by linking this test with -Wl,--wrap=malloc (and calloc,
 * realloc, free, aligned_alloc, posix_memalign): every call made from our own objects
 * goes through the counters of allocation_counter.c. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autoencoder.h"
#include "conv_onednn.h"
#include "optimizer.h"
#include "rng.h"
#include "allocation_counter.h"
#include "test_util.h"


enum { BATCH = 3, C = 3, SIZE = 16, L = 2, LATENT_SIZE = 4 };
enum { IMAGE = C * SIZE * SIZE, LATENT = L * LATENT_SIZE * LATENT_SIZE };

static const autoencoder_shape SHAPE = {.in_channels = C, .input_size = SIZE, .levels = 3,
                                        .block_out_channels = {8, 16, 16}, .layers_per_block = 1,
                                        .latent_channels = L, .norm_groups = 4};

typedef struct {
    autoencoder_model model;
    adamw_state optimizer;
    float images[BATCH * IMAGE], noise[BATCH * LATENT], d_images[BATCH * IMAGE];
} trainer;

static void trainer_create(trainer *tr) {
    autoencoder_create(&tr->model, &SHAPE, BATCH, AE_FOR_TRAINING);
    autoencoder_init_weights(&tr->model, 7);
    adamw_create(&tr->optimizer, tr->model.table.trainable_numel, (adamw_hyper){0.9f, 0.999f, 1e-8f, 0.0f});
    /* smooth images in [-1, 1] (something an autoencoder can learn quickly), fixed noise */
    rng_stream rng = rng_stream_for(11, 0, 0);
    for (int b = 0; b < BATCH; b++)
        for (int c = 0; c < C; c++) {
            float fx = 0.2f + 0.3f * rng_uniform(&rng), fy = 0.2f + 0.3f * rng_uniform(&rng);
            for (int y = 0; y < SIZE; y++)
                for (int x = 0; x < SIZE; x++)
                    tr->images[((b * C + c) * SIZE + y) * SIZE + x] = 0.8f * sinf(fx * x + 0.5f * c) * cosf(fy * y);
        }
    for (int k = 0; k < BATCH * LATENT; k++) tr->noise[k] = rng_normal(&rng);
}

static float trainer_step(trainer *tr) {
    autoencoder_zero_grad(&tr->model);
    autoencoder_loss loss = autoencoder_train_forward(&tr->model, tr->images, tr->noise, BATCH, 1e-3f, AE_LOSS_L1);
    autoencoder_train_backward(&tr->model, 1.0f, tr->d_images);
    adamw_step(&tr->optimizer, tr->model.params, tr->model.grads, 3e-3f);
    return loss.total;
}

static void trainer_destroy(trainer *tr) {
    adamw_destroy(&tr->optimizer);
    autoencoder_destroy(&tr->model);
}

int main(void) {
    static trainer first, second;
    int threads = omp_get_max_threads();
    trainer_create(&first);
    trainer_create(&second);

    /* the step allocates nothing (after one warm-up step for lazy library set-up), and
     * not even the warm-up makes oneDNN convolutions: the layout made them */
    const long conv_plans = conv_onednn_plans_made();
    float initial = trainer_step(&first);
    allocation_counting = 1;
    float first_losses[20];
    for (int s = 0; s < 3; s++) first_losses[s] = trainer_step(&first);
    allocation_counting = 0;
    CHECK_MSG(allocation_count == 0, "%ld allocations or frees during 3 training steps", allocation_count);
    CHECK_MSG(conv_onednn_plans_made() == conv_plans, "the training steps planned %ld oneDNN convolutions",
              conv_onednn_plans_made() - conv_plans);

    /* neither do encode and decode of a model laid out for inference */
    autoencoder_model inference;
    autoencoder_create(&inference, &SHAPE, BATCH, AE_FOR_INFERENCE);
    memcpy(inference.params, first.model.params, sizeof(float) * first.model.table.trainable_numel);
    static float mean[BATCH * LATENT], logvar[BATCH * LATENT], decoded[BATCH * IMAGE];
    autoencoder_encode(&inference, first.images, BATCH, mean, logvar);
    allocation_count = 0;
    allocation_counting = 1;
    autoencoder_encode(&inference, first.images, BATCH, mean, logvar);
    autoencoder_decode(&inference, mean, BATCH, decoded);
    allocation_counting = 0;
    CHECK_MSG(allocation_count == 0, "%ld allocations or frees during encode and decode", allocation_count);
    autoencoder_destroy(&inference);

    /* bit-identical with fewer threads (never more: scratch is sized for the thread count at creation) */
    omp_set_num_threads(threads > 1 ? threads - 1 : 1);
    float second_initial = trainer_step(&second);
    CHECK(memcmp(&second_initial, &initial, sizeof(float)) == 0);
    for (int s = 0; s < 3; s++) {
        float loss = trainer_step(&second);
        CHECK_MSG(memcmp(&loss, &first_losses[s], sizeof(float)) == 0, "step %d loss %.9g vs %.9g", s, loss,
                  first_losses[s]);
    }
    CHECK(memcmp(first.model.params, second.model.params, sizeof(float) * first.model.table.trainable_numel) == 0);
    CHECK(memcmp(first.d_images, second.d_images, sizeof first.d_images) == 0);
    omp_set_num_threads(threads);

    /* and it learns */
    for (int s = 3; s < 20; s++) first_losses[s] = trainer_step(&first);
    printf("loss: %.5f at the start, %.5f after 20 AdamW steps\n", initial, first_losses[19]);
    CHECK_MSG(first_losses[19] < 0.8f * initial, "loss %.5f -> %.5f", initial, first_losses[19]);

    trainer_destroy(&first);
    trainer_destroy(&second);
    return test_finish("test_ae_memory");
}

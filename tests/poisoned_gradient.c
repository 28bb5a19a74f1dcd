/* The test program ldm_poisoned_gradient: the ldm program (train/cli/main.c) with
 * every trainable it creates wrapped so that, on the last rank, the gradient
 * of the steps named by the environment variable
 * LDM_TEST_POISON_GRADIENT_STEPS="FIRST[-LAST]" (1-based) is not finite: those
 * steps' micro-batches run with an infinite loss weight, which leaves their
 * loss as it is. train_scenarios.sh checks with it that such a step is
 * skipped by every rank (in fp16: taken for an overflow of the scaled
 * gradient, the scale halved), and that too many in a row end the run.
 *
 * The linker puts the wrappers in place (-Wl,--wrap=dit_trainable_create and
 * the other creators, tests/train_tests.cmake): __wrap_X is called where ldm
 * calls X, and __real_X is ldm's own X. The ldm program has no test hook. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "comm.h"
#include "fatal.h"
#include "trainable.h"
#ifdef LDM_HAVE_CUDA
#include "autoencoder_cuda_trainable.h"
#include "dit_cuda_trainable.h"
#endif

typedef struct {
    trainable outer;       /* first: the loop's calls hand this back as their self; the inner one's members */
    trainable *inner;
    int64_t first, last;   /* the poisoned steps, 1-based; -1: none */
} poisoned_trainable;

static double poisoned_micro_batch(trainable *self, const float *samples, const int32_t *labels,
                                   const int64_t *index, int batch, int64_t step, float loss_weight,
                                   const gradient_handover *handover, double *statistics) {
    poisoned_trainable *p = (poisoned_trainable *)self;
    if (step + 1 >= p->first && step + 1 <= p->last && comm_rank() == comm_world_size() - 1) loss_weight = INFINITY;
    return p->inner->micro_batch(p->inner, samples, labels, index, batch, step, loss_weight, handover, statistics);
}

static void poisoned_destroy(trainable *self) {
    poisoned_trainable *p = (poisoned_trainable *)self;
    p->inner->destroy(p->inner);
    free(p);
}

/* inner with its micro-batches poisoned at the steps of the environment. Its
 * other entries are called with the wrapper as self: they read only
 * self->self, the inner one's state. */
static trainable *poisoned(trainable *inner) {
    poisoned_trainable *p = xcalloc(1, sizeof *p);
    p->outer = *inner;
    p->outer.micro_batch = poisoned_micro_batch;
    p->outer.destroy = poisoned_destroy;
    p->inner = inner;
    p->first = p->last = -1;
    const char *text = getenv("LDM_TEST_POISON_GRADIENT_STEPS");
    if (text && *text) {
        long long a = 0, b = 0;
        int n = sscanf(text, "%lld-%lld", &a, &b);
        if (n < 1) fatal_input("LDM_TEST_POISON_GRADIENT_STEPS: expected FIRST or FIRST-LAST, got '%s'", text);
        p->first = a;
        p->last = n == 2 ? b : a;
    }
    return &p->outer;
}

/* The creators ldm calls, as the linker wraps them. */
trainable *__real_dit_trainable_create(const ldm_config *config, int micro_batch);
trainable *__wrap_dit_trainable_create(const ldm_config *config, int micro_batch);
trainable *__wrap_dit_trainable_create(const ldm_config *config, int micro_batch) {
    return poisoned(__real_dit_trainable_create(config, micro_batch));
}

trainable *__real_autoencoder_trainable_create(const ldm_config *config, int micro_batch);
trainable *__wrap_autoencoder_trainable_create(const ldm_config *config, int micro_batch);
trainable *__wrap_autoencoder_trainable_create(const ldm_config *config, int micro_batch) {
    return poisoned(__real_autoencoder_trainable_create(config, micro_batch));
}

trainable *__real_distill_trainable_create(const ldm_config *config, int micro_batch, const void *context);
trainable *__wrap_distill_trainable_create(const ldm_config *config, int micro_batch, const void *context);
trainable *__wrap_distill_trainable_create(const ldm_config *config, int micro_batch, const void *context) {
    return poisoned(__real_distill_trainable_create(config, micro_batch, context));
}

#ifdef LDM_HAVE_CUDA
trainable *__real_dit_cuda_trainable_create(const ldm_config *config, int micro_batch);
trainable *__wrap_dit_cuda_trainable_create(const ldm_config *config, int micro_batch);
trainable *__wrap_dit_cuda_trainable_create(const ldm_config *config, int micro_batch) {
    return poisoned(__real_dit_cuda_trainable_create(config, micro_batch));
}

trainable *__real_autoencoder_cuda_trainable_create(const ldm_config *config, int micro_batch);
trainable *__wrap_autoencoder_cuda_trainable_create(const ldm_config *config, int micro_batch);
trainable *__wrap_autoencoder_cuda_trainable_create(const ldm_config *config, int micro_batch) {
    return poisoned(__real_autoencoder_cuda_trainable_create(config, micro_batch));
}
#endif

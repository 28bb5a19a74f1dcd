/* The DiT trained as an EDM denoiser on the CPU: the network's forward and
 * backward passes between the host-side batch preparation and loss that
 * dit_batch.c shares with the GPU trainable (dit_cuda_trainable.c), and the
 * preview pictures as its validation (dit_validation.h). All buffers are laid
 * out at creation. */
#include <stdlib.h>

#include "model_shapes.h"
#include "dit.h"
#include "dit_batch.h"
#include "dit_validation.h"
#include "fatal.h"
#include "trainable.h"
#include "trainables.h"

typedef struct {
    dit_batch batch; /* first: dit_batch_describe's entries read self as a dit_batch */
    dit_model model;
} dit_trainer;

static void dit_zero_grad_entry(trainable *self) { dit_zero_grad(&((dit_trainer *)self->self)->model); }

static double dit_micro_batch(trainable *self, const float *samples, const int32_t *labels, const int64_t *index,
                              int batch, int64_t step, float loss_weight, const gradient_handover *handover,
                              double *statistics) {
    (void)handover; /* on the host: the store averages the whole gradient after the step */
    dit_trainer *d = self->self;
    dit_batch *b = &d->batch;
    dit_batch_prepare(b, samples, labels, index, batch, step);
    dit_forward(&d->model, b->net_in, b->t, b->y, batch, b->F);
    double loss = dit_batch_loss(b, samples, batch, loss_weight, statistics);
    dit_backward(&d->model, b->d_F, NULL, batch);
    return loss;
}

static void dit_destroy_entry(trainable *self) {
    dit_trainer *d = self->self;
    self->validation->destroy(self->validation);
    dit_batch_destroy(&d->batch);
    dit_destroy(&d->model);
    free(d);
    free(self);
}

trainable *dit_trainable_create(const ldm_config *config, int micro_batch) {
    dit_trainer *d = xcalloc(1, sizeof *d);
    dit_shape shape = config_dit_shape(config);
    /* bf16/fp16: the DiT rounds GEMM inputs and keeps 16-bit activations (dit.h);
     * master weights, gradients and the loss stay fp32. */
    dit_create_precision(&d->model, &shape, micro_batch, (ldm_precision)precision_from_name(config->train.precision));
    dit_init_weights(&d->model, config->train.seed);
    dit_batch_create(&d->batch, config, &shape, micro_batch, 1);

    trainable *t = xcalloc(1, sizeof *t);
    *t = (trainable){
        .table = &d->model.table,
        .params = d->model.params,
        .grads = d->model.grads,
        .fixed = d->model.fixed,
        .count = d->model.table.trainable_numel,
        .zero_grad = dit_zero_grad_entry,
        .micro_batch = dit_micro_batch,
        .destroy = dit_destroy_entry,
        .self = d,
        .validation = dit_validation_create(&shape, config->diffusion.sigma_data, NULL),
    };
    dit_batch_describe(t);
    return t;
}

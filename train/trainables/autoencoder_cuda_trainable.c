/* The KL autoencoder with its network on the rank's GPU (`ldm train-ae` with
 * device.type cuda).
 *
 * The params and gradients live on the device (the GPU model's fp32 master
 * vectors, exposed by the trainable's device capability): the training
 * loop's parameter store (parameter_store_cuda.c) averages, clips and steps
 * them there, with the EMA and moments beside them. The host keeps a CPU
 * autoencoder laid out for inference on micro-batches, whose params are the
 * host mirrors the loop saves in checkpoints and fills on resume, and on which
 * validation runs (the CPU trainable's own validation, after the loop has
 * brought the mirrors up to date). Everything that does not depend on the
 * device -- the posterior noise, the loss settings, the statistics -- is the CPU
 * trainable's code (autoencoder_trainable.h), so both train the same thing.
 *
 * A micro-batch moves its images and posterior noise (drawn on the host from
 * the CPU trainable's streams, into page-locked buffers) to the device
 * asynchronously on the model's stream; forward, loss, and backward ADDING
 * loss_weight times the gradient into the device gradients (zeroed by
 * zero_grad once per step) are queued behind them; the loss's two sums come
 * back at the end, the one wait of a micro-batch.
 *
 * Everything is laid out at creation; a step allocates nothing. */
#include "autoencoder_cuda_trainable.h"

#include <cuda_runtime_api.h>
#include <stdlib.h>

#include "autoencoder_cuda.h"
#include "autoencoder_trainable.h"
#include "comm.h"
#include "device.h"
#include "fatal.h"
#include "ops_cuda.h"

typedef struct {
    autoencoder_batch batch;       /* first: autoencoder_batch_describe's entries read self as an autoencoder_batch */
    autoencoder_model host;        /* the loop's host params mirror, the table, validation (micro_batch images) */
    autoencoder_cuda_model device; /* the network on the GPU, with the params and gradients the loop updates */
    float *host_grads;             /* (count) the gradient's host mirror */
    trainable_device residency;    /* the trainable's device capability: device's params and gradients */
} autoencoder_cuda_trainer;

static void zero_grad_entry(trainable *self) {
    autoencoder_cuda_zero_grad(&((autoencoder_cuda_trainer *)self->self)->device);
}

static double micro_batch_entry(trainable *self, const float *samples, const int32_t *labels, const int64_t *index,
                                int batch, int64_t step, float loss_weight, const gradient_handover *handover,
                                double *statistics) {
    (void)labels;
    (void)handover; /* it hands over no slices: the store averages after the step */
    autoencoder_cuda_trainer *a = self->self;
    autoencoder_cuda_model *m = &a->device;
    if (batch < 1 || batch > m->max_batch)
        fatal_internal("GPU autoencoder trainable: batch %d outside [1, %d]", batch, m->max_batch);
    const autoencoder_shape *s = &a->batch.shape;
    const size_t images = (size_t)batch * (size_t)s->in_channels * (size_t)s->input_size * (size_t)s->input_size;
    /* The previous micro-batch ended with a wait on the stream, so the host
     * buffers are free to be refilled, and these copies need not wait. */
    const float *noise = autoencoder_batch_noise(&a->batch, index, batch, step);
    cuda_copy_to_device_async(m->images, samples, images * sizeof(float), m->stream);
    if (noise)
        cuda_copy_to_device_async(m->noise, noise, (size_t)batch * (size_t)a->batch.latent_per_sample * sizeof(float),
                                  m->stream);
    autoencoder_cuda_train_forward(m, batch, noise != NULL, (float)a->batch.config->autoencoder.kl_beta,
                                   autoencoder_batch_loss_kind(&a->batch));
    autoencoder_cuda_train_backward(m, loss_weight);
    return autoencoder_batch_add_statistics(autoencoder_cuda_loss(m), statistics);
}

static void destroy_entry(trainable *self) {
    autoencoder_cuda_trainer *a = self->self;
    self->validation->destroy(self->validation);
    autoencoder_cuda_destroy(&a->device); /* waits for its stream first */
    autoencoder_destroy(&a->host);
    autoencoder_batch_destroy(&a->batch);
    free(a->host_grads);
    free(a);
    free(self);
}

trainable *autoencoder_cuda_trainable_create(const ldm_config *config, int micro_batch) {
    cuda_use_device_of_local_rank(comm_local_rank());

    autoencoder_cuda_trainer *a = xcalloc(1, sizeof *a);
    autoencoder_batch_create(&a->batch, config, micro_batch, &a->host, cuda_pinned_alloc, cuda_pinned_free);
    const ldm_precision precision = (ldm_precision)precision_from_name(config->train.precision);
    /* The host model validates as the CPU trainable's does, in the same
     * precision; it never trains, so it has no gradients or kept activations. */
    autoencoder_create_precision(&a->host, &a->batch.shape, micro_batch, AE_FOR_INFERENCE, precision);
    autoencoder_init_weights(&a->host, config->train.seed);
    autoencoder_cuda_create(&a->device, &a->batch.shape, micro_batch, precision);
    const size_t count = a->host.table.trainable_numel;
    a->host_grads = xcalloc(count, sizeof(float));
    /* The device starts from the host's initial weights (the loop sends its
     * own again through the parameter store before the first step). */
    autoencoder_cuda_upload_params(&a->device, a->host.params);

    trainable *t = xcalloc(1, sizeof *t);
    *t = (trainable){
        .table = &a->host.table,
        .params = a->host.params,
        .grads = a->host_grads,
        .count = count,
        .zero_grad = zero_grad_entry,
        .micro_batch = micro_batch_entry,
        .destroy = destroy_entry,
        .self = a,
        .device = &a->residency,
        .validation = autoencoder_validation_create(&a->batch),
    };
    a->residency = (trainable_device){.params = a->device.params, .grads = a->device.grads,
                                      .host_buffer_alloc = cuda_pinned_alloc, .host_buffer_free = cuda_pinned_free,
                                      .stream = a->device.stream};
    autoencoder_batch_describe(t);
    return t;
}

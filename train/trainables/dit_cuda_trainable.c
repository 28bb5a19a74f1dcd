/* The DiT under EDM with its network on the rank's GPU (`ldm train` with
 * device.type cuda).
 *
 * The params and gradients live on the device (the model's own fp32 master
 * vectors, exposed by the trainable's device capability): the training
 * loop's parameter store (parameter_store_cuda.c) averages, clips and steps
 * them there, with the EMA and moments beside them. The host keeps a CPU
 * dit_model laid out for one sample, for the table, the initial weights and
 * the host mirrors the loop saves in checkpoints; the batch preparation and
 * the loss are the CPU trainable's own code (dit_batch.c), so both draw the
 * same noise and compute the loss in the same double sums.
 *
 * A micro-batch moves only its samples and per-sample values to the device:
 * the host draws each sample's sigma, label and the stream its noise comes
 * from (dit_batch_draw_conditions, the CPU trainable's own draws) and the
 * preconditioning coefficients (edm.c, double); the samples (from the loop's
 * page-locked buffers) and these go up asynchronously on the model's stream;
 * the noise, the network input, the loss and its gradient d_F (times
 * loss_weight) are made there (edm_cuda.h), dit_cuda_backward ADDS into the
 * device gradients (zeroed by zero_grad once per step: gradients accumulate
 * over micro-batches), and the per-sample losses come back for the returned
 * mean and the sigma-binned statistics, the one wait of a micro-batch. On the
 * step's final micro-batch, the gradient's slices go to the parameter store's
 * handover as backward finishes them.
 *
 * Everything is laid out at creation; a step allocates nothing. */
#include "dit_cuda_trainable.h"

#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model_shapes.h"
#include "comm.h"
#include "device.h"
#include "dit.h"
#include "dit_batch.h"
#include "dit_cuda.h"
#include "dit_validation.h"
#include "edm.h"
#include "edm_cuda.h"
#include "fatal.h"
#include "ops_cuda.h"

typedef struct {
    dit_batch batch;       /* first: dit_batch_describe's entries read self as a dit_batch */
    dit_model host;        /* the loop's host mirrors (params, grads), fixed and the table (activations for 1 sample) */
    dit_cuda_model device; /* the network on the GPU, with the params and gradients the loop updates */
    int micro_batch;
    /* device buffers of up to micro_batch samples (B) of P values */
    float *x, *noise, *net_in, *F, *d_F; /* (B, P) */
    float *t;                            /* (B) */
    int *y;                              /* (B) */
    uint64_t *noise_streams;             /* (B) */
    edm_sample_coefficients *coefficients; /* (B) */
    double *sample_loss;                 /* (B) */
    /* page-locked host twins of the per-sample buffers (B) */
    float *host_t;
    int *host_y;
    uint64_t *host_noise_streams;
    edm_sample_coefficients *host_coefficients;
    double *host_sample_loss;
    trainable_device residency; /* the trainable's device capability: device's params and gradients */
    /* The gradient slices handed to the parameter store during backward. */
    const gradient_handover *handover; /* during the final micro-batch's backward, else NULL */
    dit_gradient_slices slices;
} dit_cuda_trainer;

/* The backward stage that finishes a tensor's gradient (dit_cuda.h's gradients_ready). */
static int stage_of(const char *name, int depth) {
    int block = -1;
    if (sscanf(name, "blocks.%d.", &block) == 1) return block;
    if (strncmp(name, "final_layer.", 12) == 0) return depth;
    return -1;
}

void dit_gradient_slices_plan(dit_gradient_slices *s, const param_table *table, int depth) {
    s->count = 0;
    s->stage = xcalloc((size_t)table->count, sizeof(int));
    s->offset = xcalloc((size_t)table->count, sizeof(size_t));
    s->size = xcalloc((size_t)table->count, sizeof(size_t));
    for (int e = 0; e < table->count; e++) {
        const param_entry *entry = &table->entries[e];
        if (!entry->trainable) continue;
        const int stage = stage_of(entry->name, depth), last = s->count - 1;
        if (last >= 0 && s->stage[last] == stage && s->offset[last] + s->size[last] == entry->offset) {
            s->size[last] += entry->numel;
        } else {
            s->stage[s->count] = stage;
            s->offset[s->count] = entry->offset;
            s->size[s->count] = entry->numel;
            s->count++;
        }
    }
}

void dit_gradient_slices_hand_over(const dit_gradient_slices *s, int stage, const gradient_handover *handover) {
    if (!handover) return;
    for (int k = 0; k < s->count; k++)
        if (s->stage[k] == stage) handover->ready(handover->context, s->offset[k], s->size[k]);
}

void dit_gradient_slices_free(dit_gradient_slices *s) {
    free(s->stage), free(s->offset), free(s->size);
    s->stage = NULL, s->offset = NULL, s->size = NULL;
    s->count = 0;
}

/* dit_cuda_backward's hook: the stage's slices to the store, on the step's final micro-batch. */
static void stage_gradients_ready(void *context, int stage) {
    dit_cuda_trainer *d = context;
    dit_gradient_slices_hand_over(&d->slices, stage, d->handover);
}

static void zero_grad_entry(trainable *self) { dit_cuda_zero_grad(&((dit_cuda_trainer *)self->self)->device); }

static double micro_batch_entry(trainable *self, const float *samples, const int32_t *labels, const int64_t *index,
                                int batch, int64_t step, float loss_weight, const gradient_handover *handover,
                                double *statistics) {
    dit_cuda_trainer *d = self->self;
    dit_batch *b = &d->batch;
    dit_cuda_model *m = &d->device;
    if (batch < 1 || batch > d->micro_batch)
        fatal_internal("GPU DiT trainable: batch %d outside [1, %d]", batch, d->micro_batch);
    const int per_sample = (int)b->per_sample;
    const double sigma_data = b->config->diffusion.sigma_data;
    dit_batch_draw_conditions(b, labels, index, batch, step, d->host_noise_streams);
    for (int i = 0; i < batch; i++) {
        const double sigma = b->sigma[i];
        const edm_precond p = edm_preconditioning(sigma, sigma_data);
        d->host_coefficients[i] = (edm_sample_coefficients){.sigma = sigma, .c_in = p.c_in, .c_skip = p.c_skip,
                                                            .c_out = p.c_out,
                                                            .loss_weight = edm_loss_weight(sigma, sigma_data)};
        d->host_t[i] = b->t[i];
        d->host_y[i] = b->y[i];
    }
    /* The previous micro-batch ended with a wait on the stream, so the host
     * buffers are free to be refilled, and these copies need not wait. */
    ldm_stream stream = m->stream;
    const size_t n = (size_t)batch;
    cuda_copy_to_device_async(d->x, samples, n * (size_t)per_sample * sizeof(float), stream);
    cuda_copy_to_device_async(d->noise_streams, d->host_noise_streams, n * sizeof(uint64_t), stream);
    cuda_copy_to_device_async(d->coefficients, d->host_coefficients, n * sizeof(edm_sample_coefficients), stream);
    cuda_copy_to_device_async(d->t, d->host_t, n * sizeof(float), stream);
    cuda_copy_to_device_async(d->y, d->host_y, n * sizeof(int), stream);
    edm_training_input_cuda(d->net_in, d->noise, d->x, d->noise_streams, d->coefficients, batch, per_sample, stream);
    dit_cuda_forward(m, d->net_in, d->t, d->y, NULL, batch, d->F);
    edm_training_loss_cuda(d->sample_loss, d->d_F, loss_weight, d->x, d->noise, d->F, d->coefficients, batch,
                           per_sample, stream);
    d->handover = handover;
    dit_cuda_backward(m, d->d_F, NULL, batch);
    d->handover = NULL;
    cuda_copy_to_host_async(d->host_sample_loss, d->sample_loss, n * sizeof(double), stream);
    cuda_stream_synchronize(stream);
    double total = 0.0; /* as edm_training_loss sums it */
    for (int i = 0; i < batch; i++) {
        total += d->host_sample_loss[i];
        b->sample_loss[i] = (float)d->host_sample_loss[i];
    }
    dit_batch_add_statistics(b, batch, statistics);
    return total / batch;
}

static void destroy_entry(trainable *self) {
    dit_cuda_trainer *d = self->self;
    self->validation->destroy(self->validation);
    dit_cuda_destroy(&d->device); /* waits for its stream first */
    void *device_buffers[] = {d->x, d->noise, d->net_in, d->F, d->d_F, d->t, d->y, d->noise_streams,
                              d->coefficients, d->sample_loss};
    for (size_t i = 0; i < sizeof device_buffers / sizeof device_buffers[0]; i++) cuda_buffer_free(device_buffers[i]);
    void *host_buffers[] = {d->host_t, d->host_y, d->host_noise_streams, d->host_coefficients, d->host_sample_loss};
    for (size_t i = 0; i < sizeof host_buffers / sizeof host_buffers[0]; i++) cuda_pinned_free(host_buffers[i]);
    dit_batch_destroy(&d->batch);
    dit_destroy(&d->host);
    dit_gradient_slices_free(&d->slices);
    free(d);
    free(self);
}

trainable *dit_cuda_trainable_create(const ldm_config *config, int micro_batch) {
    cuda_use_device_of_local_rank(comm_local_rank());

    dit_cuda_trainer *d = xcalloc(1, sizeof *d);
    dit_shape shape = config_dit_shape(config);
    /* The host model holds what the loop reads and writes (fp32 master weights,
     * gradients); its activations are never used, so it is laid out for one sample. */
    dit_create(&d->host, &shape, 1);
    dit_init_weights(&d->host, config->train.seed);
    dit_cuda_create(&d->device, &shape, micro_batch, (ldm_precision)precision_from_name(config->train.precision), 0);
    dit_batch_create(&d->batch, config, &shape, micro_batch, 0);
    d->micro_batch = micro_batch;
    const size_t count = d->host.table.trainable_numel;
    const size_t values = (size_t)micro_batch * (size_t)d->batch.per_sample, rows = (size_t)micro_batch;
    /* The device starts from the host's initial weights (the loop sends its
     * own again through the parameter store before the first step). */
    dit_cuda_upload_params(&d->device, d->host.params);
    d->x = cuda_buffer_alloc(values * sizeof(float));
    d->noise = cuda_buffer_alloc(values * sizeof(float));
    d->net_in = cuda_buffer_alloc(values * sizeof(float));
    d->F = cuda_buffer_alloc(values * sizeof(float));
    d->d_F = cuda_buffer_alloc(values * sizeof(float));
    d->t = cuda_buffer_alloc(rows * sizeof(float));
    d->y = cuda_buffer_alloc(rows * sizeof(int));
    d->noise_streams = cuda_buffer_alloc(rows * sizeof(uint64_t));
    d->coefficients = cuda_buffer_alloc(rows * sizeof(edm_sample_coefficients));
    d->sample_loss = cuda_buffer_alloc(rows * sizeof(double));
    d->host_t = cuda_pinned_alloc(rows * sizeof(float));
    d->host_y = cuda_pinned_alloc(rows * sizeof(int));
    d->host_noise_streams = cuda_pinned_alloc(rows * sizeof(uint64_t));
    d->host_coefficients = cuda_pinned_alloc(rows * sizeof(edm_sample_coefficients));
    d->host_sample_loss = cuda_pinned_alloc(rows * sizeof(double));

    trainable *t = xcalloc(1, sizeof *t);
    *t = (trainable){
        .table = &d->host.table,
        .params = d->host.params,
        .grads = d->host.grads,
        .fixed = d->host.fixed,
        .count = count,
        .zero_grad = zero_grad_entry,
        .micro_batch = micro_batch_entry,
        .destroy = destroy_entry,
        .self = d,
        .device = &d->residency,
        .validation = dit_validation_create_on(&shape, config->diffusion.sigma_data, NULL, 1),
    };
    dit_gradient_slices_plan(&d->slices, &d->host.table, d->host.shape.depth);
    d->residency = (trainable_device){.params = d->device.params, .grads = d->device.grads,
                                      .host_buffer_alloc = cuda_pinned_alloc, .host_buffer_free = cuda_pinned_free,
                                      .stream = d->device.stream, .gradient_slices = d->slices.count};
    d->device.gradients_ready = stage_gradients_ready;
    d->device.gradients_ready_context = d;
    dit_batch_describe(t);
    return t;
}

/* The GPU parameter store (see parameter_store.h): the trainable's params and
 * gradients in device memory (its device capability), the EMA and the
 * AdamW moments beside them, laid out once here. Per step: the gradient
 * averaged by NCCL (several ranks: in the slices the trainable hands over
 * during the backward pass of the step's final micro-batch, each all-reduced
 * on NCCL's stream while backward goes on (comm_nccl.h's buckets), else in
 * one all-reduce afterwards), its norm (one double comes back to the
 * host, which decides skip and clipping), scaling, AdamW and the EMA as one
 * kernel each. Everything runs on the trainable's own stream (its device
 * capability's), in order behind its backward pass, so that nothing counts on
 * the legacy default stream; NCCL's stream is ordered with it by events
 * (comm_nccl.h). The host waits for that stream before it reads or writes
 * what the stream uses.
 *
 * A trainable's extra state kept on the device (distillation's target
 * network: trainable_extra_state.device_weights) travels with the other
 * mirrors in to_host and from_host.
 *
 * The kernels are the CPU's arithmetic (ops_cuda.h: AdamW and the EMA bit for
 * bit); the norm sums in double in a fixed order of its own, so it is
 * deterministic but not the CPU's bits. */
#include "parameter_store.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "comm.h"
#include "comm_nccl.h"
#include "fatal.h"
#include "ops_cuda.h"

typedef struct {
    comm_nccl *nccl;          /* NULL with one rank: there is nothing to average */
    int buckets;              /* the trainable hands over gradient slices during backward */
    int launched;             /* slices were launched this step (the final micro-batch's backward) */
    gradient_handover handover; /* the store's: device_bucket_ready */
    float *ema, *adam_m, *adam_v; /* device (count) */
    double *norm_partials;    /* device (SQUARED_NORM_PARTIALS + 1): the slices' sums, then the total */
} device_vectors;

static device_vectors *vectors_of(parameter_store *store) { return store->self; }

/* Where the store's work is queued: the trainable's stream. */
static ldm_stream stream_of(const parameter_store *store) { return store->model->device->stream; }

/* The handover's ready: a slice's all-reduce starts behind the backward kernels queued so far. */
static void device_bucket_ready(void *context, size_t offset, size_t count) {
    parameter_store *store = context;
    device_vectors *d = vectors_of(store);
    comm_nccl_bucket_ready(d->nccl, offset, count);
    d->launched = 1;
}

static void device_average_gradients(parameter_store *store) {
    device_vectors *d = vectors_of(store);
    if (d->launched) {
        /* Every slice was launched during backward; the trainable's stream waits for them. */
        comm_nccl_wait_all(d->nccl, stream_of(store));
        d->launched = 0;
    } else if (d->nccl) {
        comm_nccl_allreduce_mean(d->nccl, store->model->device->grads, store->model->count, stream_of(store));
    }
}

static double device_gradient_norm(parameter_store *store) {
    device_vectors *d = vectors_of(store);
    double *total = d->norm_partials + SQUARED_NORM_PARTIALS;
    squared_norm_cuda(total, d->norm_partials, store->model->device->grads, store->model->count, stream_of(store));
    double squared = 0.0;
    cuda_copy_to_host_async(&squared, total, sizeof squared, stream_of(store));
    cuda_stream_synchronize(stream_of(store));
    return sqrt(squared);
}

static void device_scale_gradients(parameter_store *store, float factor) {
    scale_cuda(store->model->device->grads, store->model->count, factor, stream_of(store));
}

static void device_adamw_step(parameter_store *store, float lr) {
    device_vectors *d = vectors_of(store);
    adamw_state *o = store->optimizer;
    o->step++;
    adamw_step_cuda(store->model->device->params, store->model->device->grads, d->adam_m, d->adam_v, o->count, lr,
                    o->hyper.beta1, o->hyper.beta2, o->hyper.eps, o->hyper.weight_decay, o->step, stream_of(store));
}

static void device_ema_update(parameter_store *store, double decay) {
    ema_update_cuda(vectors_of(store)->ema, store->model->device->params, store->model->count, decay,
                    stream_of(store));
}

static void device_to_host(parameter_store *store) {
    device_vectors *d = vectors_of(store);
    const size_t bytes = store->model->count * sizeof(float);
    cuda_stream_synchronize(stream_of(store)); /* the step's kernels have written them */
    cuda_copy_to_host(store->model->params, store->model->device->params, bytes);
    cuda_copy_to_host(store->ema, d->ema, bytes);
    cuda_copy_to_host(store->optimizer->m, d->adam_m, bytes);
    cuda_copy_to_host(store->optimizer->v, d->adam_v, bytes);
    const trainable_extra_state *extra = store->model->extra;
    if (extra && extra->device_weights) cuda_copy_to_host(extra->weights, extra->device_weights, bytes);
}

static void device_from_host(parameter_store *store) {
    device_vectors *d = vectors_of(store);
    const size_t bytes = store->model->count * sizeof(float);
    cuda_stream_synchronize(stream_of(store)); /* nothing queued may still read the old values */
    cuda_copy_to_device(store->model->device->params, store->model->params, bytes);
    cuda_copy_to_device(d->ema, store->ema, bytes);
    cuda_copy_to_device(d->adam_m, store->optimizer->m, bytes);
    cuda_copy_to_device(d->adam_v, store->optimizer->v, bytes);
    const trainable_extra_state *extra = store->model->extra;
    if (extra && extra->device_weights) cuda_copy_to_device(extra->device_weights, extra->weights, bytes);
}

static void device_destroy(parameter_store *store) {
    device_vectors *d = vectors_of(store);
    cuda_device_synchronize();
    comm_nccl_destroy(d->nccl);
    cuda_buffer_free(d->ema), cuda_buffer_free(d->adam_m), cuda_buffer_free(d->adam_v);
    cuda_buffer_free(d->norm_partials);
    free(d);
    free(store);
}

parameter_store *parameter_store_cuda_create(trainable *model, adamw_state *optimizer, float *ema) {
    const trainable_device *device = model->device;
    if (!device || !device->grads)
        fatal_internal("parameter_store_cuda_create: the trainable has no device gradients");
    device_vectors *d = xcalloc(1, sizeof *d);
    /* Collective: every rank's trainable is on the GPU (device.type is one for the job). */
    if (comm_world_size() > 1) d->nccl = comm_nccl_create();
    const size_t bytes = model->count * sizeof(float);
    d->ema = cuda_buffer_alloc(bytes);
    d->adam_m = cuda_buffer_alloc(bytes);
    d->adam_v = cuda_buffer_alloc(bytes);
    d->norm_partials = cuda_buffer_alloc((SQUARED_NORM_PARTIALS + 1) * sizeof(double));
    parameter_store *store = xcalloc(1, sizeof *store);
    *store = (parameter_store){
        .average_gradients = device_average_gradients,
        .gradient_norm = device_gradient_norm,
        .scale_gradients = device_scale_gradients,
        .adamw_step = device_adamw_step,
        .ema_update = device_ema_update,
        .to_host = device_to_host,
        .from_host = device_from_host,
        .destroy = device_destroy,
        .model = model,
        .optimizer = optimizer,
        .ema = ema,
        .self = d,
    };
    /* The all-reduce overlapped with backward, in the trainable's slices. */
    if (d->nccl && device->stream && device->gradient_slices > 0) {
        comm_nccl_buckets_layout(d->nccl, device->grads, model->count, device->gradient_slices, device->stream);
        d->handover = (gradient_handover){.ready = device_bucket_ready, .context = store};
        store->handover = &d->handover;
        d->buckets = 1;
    }
    if (d->nccl && comm_rank() == 0) {
        if (d->buckets)
            printf("train: gradients averaged by NCCL over %d ranks, in %d slices during the backward pass\n",
                   comm_world_size(), device->gradient_slices);
        else
            printf("train: gradients averaged by NCCL over %d ranks after the backward pass\n", comm_world_size());
        fflush(stdout);
    }
    return store;
}

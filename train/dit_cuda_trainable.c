/* The DiT under EDM with its network on the rank's GPU: the first GPU path of
 * `ldm train`, a correctness stepping stone rather than the fast path.
 *
 * What stays on the host: the parameters, gradients and fixed buffers the
 * training loop sees (a CPU dit_model laid out for one sample, which also gives
 * the table and the initial weights of dit_trainable.c), the batch preparation
 * and the loss (dit_batch.c, the CPU trainable's own code, so both draw the
 * same noise and compute the loss in the same double sums), AdamW, clipping and
 * the EMA of the loop, and the pictures (sampled from the EMA on the host).
 * Gradients are still averaged over ranks by the loop's MPI all-reduce on the
 * host; NCCL buckets on the device come next.
 *
 * A micro-batch: the host prepares sigma, noise, labels and the network input;
 * the params are uploaded when the optimizer step changed since the last upload
 * (once per step, not per micro-batch: the loop changes them only between
 * steps); net_in, t and y go up; dit_cuda_forward; the output comes down and the
 * loss and its gradient d_F are computed on the host exactly as on the CPU
 * (the only difference from the CPU trainable is then the network itself);
 * d_F goes up; dit_cuda_backward into the device gradients, zeroed first; they
 * come down into a scratch buffer that is ADDED to the host grads (the trainable
 * contract: gradients accumulate over micro-batches).
 *
 * Everything is laid out at creation; a step allocates nothing on the host. */
#include "dit_cuda_trainable.h"

#include <cuda_runtime_api.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "comm.h"
#include "device.h"
#include "dit.h"
#include "dit_batch.h"
#include "dit_cuda.h"
#include "fatal.h"
#include "ops_cuda.h"

typedef struct {
    dit_batch batch;       /* first: dit_batch_describe's entries read self as a dit_batch */
    dit_model host;        /* the loop's params, grads, fixed and the table (activations for 1 sample) */
    dit_cuda_model device; /* the network on the GPU */
    float *grads_scratch;  /* host (count): one micro-batch's device gradients, added to host.grads */
    /* device buffers of up to micro_batch samples */
    float *net_in, *t, *F, *d_F;
    int *y;
    int64_t uploaded_step; /* the optimizer step whose params the device holds, -1: none yet */
    int micro_batch;
} dit_cuda_trainer;

static void zero_grad_entry(trainable *self) {
    /* The device gradients are zeroed before each micro-batch's backward pass. */
    dit_zero_grad(&((dit_cuda_trainer *)self->self)->host);
}

static double micro_batch_entry(trainable *self, const float *samples, const int32_t *labels, const int64_t *index,
                                int batch, int64_t step, float loss_weight, double *statistics) {
    dit_cuda_trainer *d = self->self;
    dit_batch *b = &d->batch;
    dit_cuda_model *m = &d->device;
    if (batch < 1 || batch > d->micro_batch)
        fatal_internal("GPU DiT trainable: batch %d outside [1, %d]", batch, d->micro_batch);
    const size_t values = (size_t)batch * (size_t)b->per_sample;
    dit_batch_prepare(b, samples, labels, index, batch, step);
    /* The loop changes the params only between optimizer steps (AdamW, or a
     * resume before the first), so a new step number is when they may have changed. */
    if (step != d->uploaded_step) {
        dit_cuda_upload_params(m, d->host.params);
        d->uploaded_step = step;
    }
    /* Copies on the legacy default stream are ordered with the model's blocking
     * stream (dit_cuda.h): the previous micro-batch's work is done before they land. */
    cuda_copy_to_device(d->net_in, b->net_in, values * sizeof(float));
    cuda_copy_to_device(d->t, b->t, (size_t)batch * sizeof(float));
    cuda_copy_to_device(d->y, b->y, (size_t)batch * sizeof(int));
    dit_cuda_forward(m, d->net_in, d->t, d->y, NULL, batch, d->F);
    dit_cuda_synchronize(m);
    cuda_copy_to_host(b->F, d->F, values * sizeof(float));
    double loss = dit_batch_loss(b, samples, batch, loss_weight, statistics);
    cuda_copy_to_device(d->d_F, b->d_F, values * sizeof(float));
    dit_cuda_zero_grad(m);
    dit_cuda_backward(m, d->d_F, NULL, batch);
    dit_cuda_download_grads(m, d->grads_scratch); /* waits for the backward pass */
    float *grads = d->host.grads;
    const float *add = d->grads_scratch;
    const size_t count = d->host.table.trainable_numel;
#pragma omp parallel for schedule(static) if (count > 65536)
    for (size_t i = 0; i < count; i++) grads[i] += add[i];
    return loss;
}

static void destroy_entry(trainable *self) {
    dit_cuda_trainer *d = self->self;
    dit_cuda_destroy(&d->device); /* waits for its stream first */
    cuda_buffer_free(d->net_in), cuda_buffer_free(d->t), cuda_buffer_free(d->F), cuda_buffer_free(d->d_F);
    cuda_buffer_free(d->y);
    free(d->grads_scratch);
    dit_batch_destroy(&d->batch);
    dit_destroy(&d->host);
    free(d);
    free(self);
}

trainable *dit_cuda_trainable_create(const ldm_config *config, int micro_batch) {
    const int devices = device_cuda_count();
    if (devices < 1) fatal_internal("dit_cuda_trainable_create: no CUDA device"); /* the command refuses first */
    /* One GPU per rank: the ranks of a host take its GPUs in turn. */
    const int gpu = comm_local_rank() % devices;
    cudaError_t status = cudaSetDevice(gpu);
    if (status != cudaSuccess) fatal_internal("cudaSetDevice(%d) failed: %s", gpu, cudaGetErrorString(status));

    dit_cuda_trainer *d = xcalloc(1, sizeof *d);
    dit_shape shape = cli_dit_shape(config);
    /* The host model holds what the loop reads and writes (fp32 master weights,
     * gradients); its activations are never used, so it is laid out for one sample. */
    dit_create(&d->host, &shape, 1);
    dit_init_weights(&d->host, config->train.seed);
    dit_cuda_create(&d->device, &shape, micro_batch, (ldm_precision)precision_from_name(config->train.precision), 0);
    dit_batch_create(&d->batch, config, &shape, micro_batch);
    d->micro_batch = micro_batch;
    d->uploaded_step = -1;
    const size_t count = d->host.table.trainable_numel;
    const size_t values = (size_t)micro_batch * (size_t)d->batch.per_sample;
    d->grads_scratch = xmalloc(count * sizeof(float));
    d->net_in = cuda_buffer_alloc(values * sizeof(float));
    d->F = cuda_buffer_alloc(values * sizeof(float));
    d->d_F = cuda_buffer_alloc(values * sizeof(float));
    d->t = cuda_buffer_alloc((size_t)micro_batch * sizeof(float));
    d->y = cuda_buffer_alloc((size_t)micro_batch * sizeof(int));

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
    };
    dit_batch_describe(t);
    return t;
}

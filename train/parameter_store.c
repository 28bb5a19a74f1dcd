/* The host parameter store (see parameter_store.h): the CPU trainables'
 * vectors in host memory, updated by the functions the training loop called
 * directly before (MPI all-reduce, grad_clip.h, optimizer.h, ema.h). */
#include "parameter_store.h"

#include <stdlib.h>

#include "comm.h"
#include "ema.h"
#include "fatal.h"
#include "grad_clip.h"

#define PARALLEL_MIN 65536

static void host_average_gradients(parameter_store *store) {
    comm_allreduce_mean(store->model->grads, (int64_t)store->model->count);
}

static double host_gradient_norm(parameter_store *store) {
    return grad_global_norm(store->model->grads, store->model->count);
}

static void host_scale_gradients(parameter_store *store, float factor) {
    float *grads = store->model->grads;
    const size_t count = store->model->count;
#pragma omp parallel for schedule(static) if (count > PARALLEL_MIN)
    for (size_t i = 0; i < count; i++) grads[i] *= factor;
}

static void host_adamw_step(parameter_store *store, float lr) {
    adamw_step(store->optimizer, store->model->params, store->model->grads, lr);
}

static void host_ema_update(parameter_store *store, double decay) {
    ema_update(store->ema, store->model->params, store->model->count, decay);
}

static void host_nothing_to_move(parameter_store *store) { (void)store; }

static void host_destroy(parameter_store *store) { free(store); }

parameter_store *parameter_store_create(trainable *model, adamw_state *optimizer, float *ema) {
    if (model->device) {
#ifdef LDM_HAVE_CUDA
        return parameter_store_cuda_create(model, optimizer, ema);
#else
        fatal_internal("parameter_store_create: a trainable on the device in a build without CUDA");
#endif
    }
    parameter_store *store = xcalloc(1, sizeof *store);
    *store = (parameter_store){
        .average_gradients = host_average_gradients,
        .gradient_norm = host_gradient_norm,
        .scale_gradients = host_scale_gradients,
        .adamw_step = host_adamw_step,
        .ema_update = host_ema_update,
        .to_host = host_nothing_to_move,
        .from_host = host_nothing_to_move,
        .destroy = host_destroy,
        .model = model,
        .optimizer = optimizer,
        .ema = ema,
    };
    return store;
}

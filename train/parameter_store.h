/* The vectors a training step updates -- the trainable's params and grads, the
 * EMA of the weights, the AdamW moments -- and the operations the training
 * loop does on them after the micro-batches, wherever they live:
 * - on the host, for the CPU trainables (parameter_store.c): comm.h's MPI
 *   all-reduce and the functions of optimizer.h, ema.h and grad_clip.h, so
 *   results are what they were before this interface existed, bit for bit;
 * - on the GPU, for a trainable that keeps its params and gradients there
 *   (its device capability, trainable.device; parameter_store_cuda.c): NCCL, and the kernels
 *   of ops_cuda.h. A step then moves nothing between host and device but the
 *   gradient norm (and what the trainable itself moves).
 *
 * The host buffers -- model->params, ema, and the moments and step count of
 * the adamw_state, and the weights of a trainable's extra state -- are what
 * checkpoints save and resume fills. With the vectors on the GPU they are
 * mirrors (the extra state's when it has device_weights): to_host brings them up to date (before
 * a checkpoint, validation, the end of the run: the copy is all the step
 * waits for), from_host sends them (after resume or the initial broadcast). */
#ifndef LDM_PARAMETER_STORE_H
#define LDM_PARAMETER_STORE_H

#include "optimizer.h"
#include "trainable.h"

typedef struct parameter_store parameter_store;
struct parameter_store {
    /* In place: the gradient averaged over the ranks. */
    void (*average_gradients)(parameter_store *store);
    /* The gradient's global L2 norm, in double, the same on every rank that
     * holds the same gradient; infinite or NaN when any value is not finite. */
    double (*gradient_norm)(parameter_store *store);
    /* grads *= factor. */
    void (*scale_gradients)(parameter_store *store, float factor);
    /* One AdamW step of the params from the grads (the step count advances). */
    void (*adamw_step)(parameter_store *store, float lr);
    /* ema = decay ema + (1 - decay) params (ema_update). */
    void (*ema_update)(parameter_store *store, double decay);
    /* Host mirrors <- the vectors (nothing to do on the host). */
    void (*to_host)(parameter_store *store);
    /* The vectors <- host mirrors (nothing to do on the host). */
    void (*from_host)(parameter_store *store);
    void (*destroy)(parameter_store *store);

    /* Where the step's final micro-batch hands over its gradient's slices
     * (trainable.micro_batch), so that their average starts during its
     * backward pass; NULL: the gradient is averaged after the micro-batches. */
    const gradient_handover *handover;
    trainable *model;
    adamw_state *optimizer; /* host moments and step count */
    float *ema;             /* host (model->count) */
    void *self;             /* the implementation's own state */
};

/* On the GPU when the model has the device capability (a CUDA build), else on the
 * host. optimizer and ema are the loop's host buffers, laid out for
 * model->count values; they must outlive the store. Collective when on the
 * GPU with several ranks (creates the NCCL communicator). */
parameter_store *parameter_store_create(trainable *model, adamw_state *optimizer, float *ema);

#ifdef LDM_HAVE_CUDA
/* The GPU implementation (parameter_store_cuda.c). */
parameter_store *parameter_store_cuda_create(trainable *model, adamw_state *optimizer, float *ema);
#endif

#endif

/* What a DiT trainable under EDM does around the network, on the host, shared
 * by the CPU trainable (dit_trainable.c) and the GPU one (dit_cuda_trainable.c)
 * so that both train the same thing: each sample's noise level, noise and
 * label dropout drawn from its own stream keyed by (seed, step, the sample's row
 * in the data set), so nothing depends on history, on the world size or on
 * which rank holds the sample; the preconditioned network input; the weighted
 * loss and its gradient with respect to the network output; the loss binned by
 * noise level (the statistics); and the trainable's members that do not depend
 * on where the network runs (checkpoint kind, settings keys, statistics). The
 * preview pictures are not the batch's: they are the trainables' validation
 * capability (dit_validation.h). All buffers are laid out at creation. */
#ifndef LDM_DIT_BATCH_H
#define LDM_DIT_BATCH_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "dit.h"
#include "trainable.h"

typedef struct {
    const ldm_config *config;
    dit_shape shape;
    int64_t per_sample;  /* P = C * H * W */
    int *y;              /* (B) labels given to the DiT; num_classes = the null class */
    float *sigma;        /* (B) */
    float *noise;        /* (B, P) (network_on_host) */
    float *net_in;       /* (B, P) the network input (network_on_host) */
    float *t;            /* (B) the timestep the network sees */
    float *F;            /* (B, P) the network output, filled by the caller (network_on_host) */
    float *d_F;          /* (B, P) the loss's gradient with respect to F (network_on_host) */
    float *sample_loss;  /* (B) */
} dit_batch;

/* Buffers for batches of up to micro_batch samples of the shape. Without
 * network_on_host (the GPU trainable, which makes the noise, network input
 * and loss on the device) only the per-sample ones: noise, net_in, F and d_F
 * stay NULL, and dit_batch_prepare and dit_batch_loss are not for it. */
void dit_batch_create(dit_batch *b, const ldm_config *config, const dit_shape *shape, int micro_batch,
                      int network_on_host);
void dit_batch_destroy(dit_batch *b);

/* Before the network: sigma, noise and y of each sample, then net_in and t. */
void dit_batch_prepare(dit_batch *b, const float *samples, const int32_t *labels, const int64_t *index, int batch,
                       int64_t step);
/* After the network (b->F filled): the micro-batch's mean loss (returned),
 * d_F = loss_weight times its gradient, and each sample's loss added to its
 * sigma bin in statistics. */
double dit_batch_loss(dit_batch *b, const float *samples, int batch, float loss_weight, double *statistics);

/* For a network input made elsewhere (the GPU: train/diffusion/edm_cuda.h): sigma, y
 * and t of each sample as dit_batch_prepare draws them, and each sample's
 * stream positioned where its noise begins: noise_streams (batch), the
 * rng_stream states; normal j of the noise is made from the stream's draws
 * 2j + 1 and 2j + 2 (rng_normal). */
void dit_batch_draw_conditions(dit_batch *b, const int32_t *labels, const int64_t *index, int batch, int64_t step,
                               uint64_t *noise_streams);
/* Each sample's loss (b->sample_loss) added to its sigma bin in statistics. */
void dit_batch_add_statistics(const dit_batch *b, int batch, double *statistics);

/* Sets the members of a DiT trainable that do not depend on where the network
 * runs: kind "dit", shape_section, settings_keys, the expected data and the
 * statistics. Their entries read t->self as a dit_batch: the implementation's
 * state must begin with its dit_batch. */
void dit_batch_describe(trainable *t);

#endif

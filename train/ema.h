/* The exponential moving average of the weights, the model that is sampled
 * from and exported: ema = decay ema + (1 - decay) w after every optimizer step.
 * The decay of a step comes from one of two rules (config train.*):
 * - ema_halflife_images = 0: decay = min(ema_decay, (1 + step) / (10 + step)), a
 *   warmup so that the average is not dominated by the random initialisation;
 * - ema_halflife_images > 0 (EDM's rule): the average's half-life in images,
 *   halflife = min(ema_halflife_images, images_seen ema_rampup) when ema_rampup
 *   > 0, and decay = 0.5^(batch_images / halflife). images_seen counts the images
 *   of the steps before this one, as in EDM, so the first step copies the weights. */
#ifndef LDM_EMA_H
#define LDM_EMA_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

typedef struct {
    double decay;            /* train.ema_decay, the warmup rule's ceiling */
    int64_t halflife_images; /* train.ema_halflife_images; 0: the warmup rule */
    double rampup;           /* train.ema_rampup; 0: no ramp */
} ema_schedule;

ema_schedule ema_schedule_from_config(const train_config *train);

/* The decay of the update after step `step` (counted from 0), which saw
 * images_seen images before it and batch_images in it (the global batch). */
double ema_decay_at(const ema_schedule *schedule, int64_t step, int64_t images_seen, int64_t batch_images);

/* ema (count) = decay ema + (1 - decay) params, in place. */
void ema_update(float *ema, const float *params, size_t count, double decay);

#endif

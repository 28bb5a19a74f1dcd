/* The EMA of the weights and its decay schedule (see ema.h). */
#include "ema.h"

#include <math.h>
#include <string.h>

/* Below this many values a parallel region costs more than the loop. */
#define PARALLEL_MIN 65536

ema_schedule ema_schedule_from_config(const train_config *train) {
    ema_schedule s = {train->ema_decay, train->ema_halflife_images, train->ema_rampup};
    return s;
}

double ema_decay_at(const ema_schedule *s, int64_t step, int64_t images_seen, int64_t batch_images) {
    if (s->halflife_images <= 0) {
        const double warmup = (1.0 + (double)step) / (10.0 + (double)step);
        return warmup < s->decay ? warmup : s->decay;
    }
    double halflife = (double)s->halflife_images;
    if (s->rampup > 0.0 && (double)images_seen * s->rampup < halflife) halflife = (double)images_seen * s->rampup;
    /* EDM's floor: at images_seen = 0 the half-life is ~0 and the decay 0. */
    if (halflife < 1e-8) halflife = 1e-8;
    return pow(0.5, (double)batch_images / halflife);
}

void ema_update(float *ema, const float *params, size_t count, double decay) {
    /* Written as ema + (1 - decay) (w - ema), torch's lerp: with (1 - decay)
     * taken in double before rounding, a decay such as 0.9999 keeps its step
     * to float precision (1 - (float)0.9999 is 0.02% off). Decay 0 copies exactly. */
    if (decay == 0.0) {
        memcpy(ema, params, count * sizeof(float));
        return;
    }
    const float step = (float)(1.0 - decay);
#pragma omp parallel for schedule(static) if (count > PARALLEL_MIN)
    for (size_t i = 0; i < count; i++) ema[i] += step * (params[i] - ema[i]);
}

/* The learning-rate schedule (see lr_schedule.h). */
#include "lr_schedule.h"

#include <math.h>
#include <string.h>

#include "fatal.h"

lr_schedule lr_schedule_from_config(const train_config *train) {
    lr_schedule s = {train->lr, train->warmup_steps, train->steps, LR_CONSTANT};
    if (strcmp(train->lr_schedule, "cosine") == 0)
        s.decay = LR_COSINE;
    else if (strcmp(train->lr_schedule, "constant") != 0)
        /* config_load accepts only the two names. */
        fatal_internal("unknown train.lr_schedule \"%s\"", train->lr_schedule);
    return s;
}

double lr_at_step(const lr_schedule *s, int64_t step) {
    if (step < s->warmup_steps) return s->peak * (double)(step + 1) / (double)s->warmup_steps;
    if (s->decay == LR_CONSTANT) return s->peak;
    const int64_t decay_steps = s->total_steps - s->warmup_steps;
    double progress = decay_steps > 0 ? (double)(step - s->warmup_steps) / (double)decay_steps : 1.0;
    if (progress > 1.0) progress = 1.0;
    return s->peak * 0.5 * (1.0 + cos(M_PI * progress));
}

/* AdamW (Loshchilov & Hutter) over a flat parameter buffer, with the update
 * written as torch.optim.AdamW computes it (decoupled decay first, bias
 * corrections folded into the step size and the denominator), so that runs agree
 * with PyTorch to rounding. Moments are fp32 and laid out once. */
#ifndef LDM_OPTIMIZER_H
#define LDM_OPTIMIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    float beta1, beta2, eps, weight_decay;
} adamw_hyper;

typedef struct {
    adamw_hyper hyper;
    size_t count;
    float *m;      /* (count) first moment */
    float *v;      /* (count) second moment */
    int64_t step;  /* steps taken */
} adamw_state;

void adamw_create(adamw_state *state, size_t count, adamw_hyper hyper);
void adamw_destroy(adamw_state *state);
/* One step with learning rate lr: params (count) updated from grads (count). */
void adamw_step(adamw_state *state, float *params, const float *grads, float lr);

#endif

/* Gradient clipping by the global L2 norm, and the check that a gradient is
 * finite (a step whose gradient overflowed is skipped, by every rank alike).
 * Both are deterministic: the norm is summed in double over fixed blocks in a
 * fixed order, whatever the thread count, so ranks holding the same all-reduced
 * gradient compute the same norm and clip it the same way. */
#ifndef LDM_GRAD_CLIP_H
#define LDM_GRAD_CLIP_H

#include <stdbool.h>
#include <stddef.h>

/* sqrt(sum of grad[i]^2), in double. Infinite or NaN when any value is. */
double grad_global_norm(const float *grad, size_t count);

/* The factor torch.nn.utils.clip_grad_norm_ scales a gradient of global norm
 * `norm` by: max_norm / (norm + 1e-6) when norm exceeds max_norm (> 0; 0 =
 * off), else 1 (also for a norm that is not finite: that step is skipped). */
float grad_clip_factor(double norm, double max_norm);
/* Returns the norm before clipping. If it exceeds max_norm (> 0; 0 = off), grad
 * is scaled in place by max_norm / (norm + 1e-6), as torch.nn.utils.
 * clip_grad_norm_ does. A norm that is not finite leaves grad untouched: the
 * caller skips that step. */
double grad_clip_global_norm(float *grad, size_t count, double max_norm);

/* True when no value is infinite or NaN. */
bool grad_all_finite(const float *grad, size_t count);

#endif

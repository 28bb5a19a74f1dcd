/* AdamW over the flat parameter buffer (see optimizer.h). */
#include "optimizer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fatal.h"

void adamw_create(adamw_state *s, size_t count, adamw_hyper hyper) {
    memset(s, 0, sizeof(*s));
    s->hyper = hyper;
    s->count = count;
    /* Zeroed by writing, not by calloc: the first step would read calloc's
     * untouched pages (the kernel maps its one zero page) and then write them,
     * each write a copy-on-write fault that interrupts every other CPU of the
     * process to flush its TLB (DiT-S's first AdamW step: 0.8 s instead of 20 ms). */
    s->m = xmalloc(count * sizeof(float));
    s->v = xmalloc(count * sizeof(float));
    memset(s->m, 0, count * sizeof(float));
    memset(s->v, 0, count * sizeof(float));
}

void adamw_destroy(adamw_state *s) {
    free(s->m);
    free(s->v);
    memset(s, 0, sizeof(*s));
}

void adamw_step(adamw_state *s, float *params, const float *grads, float lr) {
    s->step++;
    const float b1 = s->hyper.beta1, b2 = s->hyper.beta2, eps = s->hyper.eps;
    const float decay = 1.0f - lr * s->hyper.weight_decay;
    const double bias_correction1 = 1.0 - pow(b1, (double)s->step);
    const double bias_correction2 = 1.0 - pow(b2, (double)s->step);
    const float step_size = (float)(lr / bias_correction1);
    const float sqrt_bc2 = (float)sqrt(bias_correction2);
    float *m = s->m, *v = s->v;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < s->count; i++) {
        float g = grads[i];
        params[i] *= decay;
        m[i] = b1 * m[i] + (1.0f - b1) * g;
        v[i] = b2 * v[i] + (1.0f - b2) * g * g;
        float denom = sqrtf(v[i]) / sqrt_bc2 + eps;
        params[i] -= step_size * m[i] / denom;
    }
}

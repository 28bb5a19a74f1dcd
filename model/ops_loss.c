/* The training loss: a mean squared error with a weight per sample (EDM's
 * lambda(sigma)), averaged over the batch. Sums are accumulated in double. */
#include "ops.h"

float weighted_mse_forward(float *per_sample_loss, const float *pred, const float *target,
                           const float *weight, int batch, int per_sample) {
    double total = 0.0;
    for (int b = 0; b < batch; b++) {
        const float *p = pred + (size_t)b * per_sample, *t = target + (size_t)b * per_sample;
        double sum = 0.0;
        for (int j = 0; j < per_sample; j++) {
            double d = (double)p[j] - t[j];
            sum += d * d;
        }
        double sample_loss = (weight ? weight[b] : 1.0) * sum / per_sample;
        if (per_sample_loss) per_sample_loss[b] = (float)sample_loss;
        total += sample_loss;
    }
    return (float)(total / batch);
}

void weighted_mse_backward(float *d_pred, float d_loss, const float *pred, const float *target,
                           const float *weight, int batch, int per_sample) {
#pragma omp parallel for schedule(static)
    for (int b = 0; b < batch; b++) {
        float coeff = (float)(2.0 * d_loss * (weight ? weight[b] : 1.0) / ((double)batch * per_sample));
        const float *p = pred + (size_t)b * per_sample, *t = target + (size_t)b * per_sample;
        float *d = d_pred + (size_t)b * per_sample;
        for (int j = 0; j < per_sample; j++) d[j] = coeff * (p[j] - t[j]);
    }
}

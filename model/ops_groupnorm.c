/* GroupNorm with affine parameters (the autoencoder's only normalisation),
 * forward and backward, as torch.nn.GroupNorm: statistics over (channels of the
 * group, pixels) per sample, biased variance, then a per-channel scale and shift.
 * Group statistics and the backward's group sums are accumulated in double: one
 * group can hold hundreds of thousands of values (4 channels of 256x256). The
 * forward and d_in are threaded over (sample, group); d_gamma and d_beta over
 * channels, each summing the samples in order, so results do not depend on the
 * thread count. */
#include <math.h>
#include <string.h>

#include "ops_conv.h"

void groupnorm_forward(float *out, float *mean, float *rstd, const float *in,
                       const float *gamma, const float *beta,
                       int batch, int channels, int spatial, int groups, float eps) {
    const int per_group = channels / groups;
    const size_t group_size = (size_t)per_group * spatial;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < batch; b++)
        for (int g = 0; g < groups; g++) {
            size_t base = ((size_t)b * channels + (size_t)g * per_group) * spatial;
            const float *x = in + base; /* (per_group, spatial) */
            float *y = out + base;
            double sum = 0.0;
            for (size_t i = 0; i < group_size; i++) sum += x[i];
            float mu = (float)(sum / (double)group_size);
            double var = 0.0; /* second pass around the mean: no cancellation */
            for (size_t i = 0; i < group_size; i++) {
                double d = (double)x[i] - mu;
                var += d * d;
            }
            float rs = (float)(1.0 / sqrt(var / (double)group_size + eps));
            for (int c = 0; c < per_group; c++) {
                int channel = g * per_group + c;
                float scale = rs * gamma[channel], offset = beta[channel];
                const float *xc = x + (size_t)c * spatial;
                float *yc = y + (size_t)c * spatial;
                for (int i = 0; i < spatial; i++) yc[i] = (xc[i] - mu) * scale + offset;
            }
            mean[b * groups + g] = mu;
            rstd[b * groups + g] = rs;
        }
}

void groupnorm_backward(float *d_in, float d_in_beta, float *d_gamma, float *d_beta,
                        const float *d_out, const float *in, const float *mean, const float *rstd,
                        const float *gamma, int batch, int channels, int spatial, int groups) {
    const int per_group = channels / groups;
    const size_t group_size = (size_t)per_group * spatial;
    if (d_in) {
        /* With xhat = (x - mu) rstd and dy = d_out gamma:
         * dx = rstd (dy - mean(dy) - xhat mean(dy xhat)), means over the group. */
#pragma omp parallel for collapse(2) schedule(static)
        for (int b = 0; b < batch; b++)
            for (int g = 0; g < groups; g++) {
                size_t base = ((size_t)b * channels + (size_t)g * per_group) * spatial;
                const float *x = in + base, *dy_raw = d_out + base;
                float *dx = d_in + base;
                float mu = mean[b * groups + g], rs = rstd[b * groups + g];
                double sum_dy = 0.0, sum_dy_xhat = 0.0;
                for (int c = 0; c < per_group; c++) {
                    float gm = gamma[g * per_group + c];
                    const float *xc = x + (size_t)c * spatial, *gc = dy_raw + (size_t)c * spatial;
                    double part_dy = 0.0, part_dy_xhat = 0.0; /* this channel's sums, times its gamma below */
                    for (int i = 0; i < spatial; i++) {
                        part_dy += gc[i];
                        part_dy_xhat += gc[i] * ((xc[i] - mu) * rs);
                    }
                    sum_dy += gm * part_dy;
                    sum_dy_xhat += gm * part_dy_xhat;
                }
                float mean_dy = (float)(sum_dy / (double)group_size);
                float mean_dy_xhat = (float)(sum_dy_xhat / (double)group_size);
                for (int c = 0; c < per_group; c++) {
                    float gm = gamma[g * per_group + c];
                    const float *xc = x + (size_t)c * spatial, *gc = dy_raw + (size_t)c * spatial;
                    float *dxc = dx + (size_t)c * spatial;
                    if (d_in_beta == 0.0f) {
                        for (int i = 0; i < spatial; i++)
                            dxc[i] = rs * (gc[i] * gm - mean_dy - (xc[i] - mu) * rs * mean_dy_xhat);
                    } else {
                        for (int i = 0; i < spatial; i++)
                            dxc[i] = d_in_beta * dxc[i] + rs * (gc[i] * gm - mean_dy - (xc[i] - mu) * rs * mean_dy_xhat);
                    }
                }
            }
    }
    if (d_gamma || d_beta) {
#pragma omp parallel for schedule(static)
        for (int channel = 0; channel < channels; channel++) {
            int g = channel / per_group;
            double sum_dy = 0.0, sum_dy_xhat = 0.0;
            for (int b = 0; b < batch; b++) {
                size_t base = ((size_t)b * channels + channel) * spatial;
                const float *xc = in + base, *gc = d_out + base;
                float mu = mean[b * groups + g], rs = rstd[b * groups + g];
                for (int i = 0; i < spatial; i++) {
                    sum_dy += gc[i];
                    sum_dy_xhat += gc[i] * ((xc[i] - mu) * rs);
                }
            }
            if (d_gamma) d_gamma[channel] += (float)sum_dy_xhat;
            if (d_beta) d_beta[channel] += (float)sum_dy;
        }
    }
}

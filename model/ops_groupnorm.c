/* GroupNorm with affine parameters (the autoencoder's only normalisation),
 * forward and backward, as torch.nn.GroupNorm: statistics over (channels of the
 * group, pixels) per sample, biased variance, then a per-channel scale and shift.
 * Group statistics and the backward's group sums are accumulated in double: one
 * group can hold hundreds of thousands of values (4 channels of 256x256). The
 * forward is threaded over (sample, group); the backward over groups, each
 * walking the samples in order and taking d_in and the channels' sums (d_gamma,
 * d_beta, summed over the samples in order) in one pass (or, for more than
 * FUSED_PER_GROUP channels per group or without d_in, d_in over (sample, group)
 * and the parameter gradients over channels), so results do not depend on the
 * thread count. Each double sum runs in LANES independent accumulators
 * (lane_sums.h), combined in a fixed order. */
#include <math.h>
#include <string.h>

#include "lane_sums.h"
#include "ops_conv.h"

/* dy[i % LANES] += g[i] and dy_xhat[i % LANES] += g[i] ((x[i] - mu) rs). */
static void add_gradient_sums(double dy[LANES], double dy_xhat[LANES], const float *g, const float *x, int n,
                              float mu, float rs) {
    double a[LANES], b[LANES];
    memcpy(a, dy, sizeof a);
    memcpy(b, dy_xhat, sizeof b);
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) {
            a[l] += g[i + l];
            b[l] += g[i + l] * ((x[i + l] - mu) * rs);
        }
    for (int l = 0; i < n; i++, l++) {
        a[l] += g[i];
        b[l] += g[i] * ((x[i] - mu) * rs);
    }
    memcpy(dy, a, sizeof a);
    memcpy(dy_xhat, b, sizeof b);
}

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
            double acc[LANES] = {0};
            add_values(acc, x, group_size);
            float mu = (float)(lanes_total(acc) / (double)group_size);
            double squares[LANES] = {0}; /* second pass around the mean: no cancellation */
            add_squares(squares, x, group_size, mu);
            const double var = lanes_total(squares);
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

/* Channels per group up to which groupnorm_backward takes d_in and the parameter
 * gradients in one pass over the data (their per-channel sums on the stack). */
enum { FUSED_PER_GROUP = 64 };

/* d_in of one (sample, group) from the group's sums, as groupnorm_backward below. */
static void group_input_gradient(float *dx, float d_in_beta, const float *x, const float *dy_raw,
                                 const float *gamma_g, int per_group, int spatial, float mu, float rs,
                                 float mean_dy, float mean_dy_xhat) {
    for (int c = 0; c < per_group; c++) {
        float gm = gamma_g[c];
        const float *xc = x + (size_t)c * spatial, *gc = dy_raw + (size_t)c * spatial;
        float *dxc = dx + (size_t)c * spatial;
        if (d_in_beta == 0.0f) {
            for (int i = 0; i < spatial; i++) dxc[i] = rs * (gc[i] * gm - mean_dy - (xc[i] - mu) * rs * mean_dy_xhat);
        } else {
            for (int i = 0; i < spatial; i++)
                dxc[i] = d_in_beta * dxc[i] + rs * (gc[i] * gm - mean_dy - (xc[i] - mu) * rs * mean_dy_xhat);
        }
    }
}

void groupnorm_backward(float *d_in, float d_in_beta, float *d_gamma, float *d_beta,
                        const float *d_out, const float *in, const float *mean, const float *rstd,
                        const float *gamma, int batch, int channels, int spatial, int groups) {
    const int per_group = channels / groups;
    const size_t group_size = (size_t)per_group * spatial;
    if (d_in && (d_gamma || d_beta) && per_group <= FUSED_PER_GROUP) {
        /* One pass: threaded over groups, each walking the samples in order, so that the
         * channels' sums over the batch (the parameter gradients) are taken in sample order
         * from the same per-(sample, channel) sums d_in needs. */
#pragma omp parallel for schedule(static)
        for (int g = 0; g < groups; g++) {
            double dgamma[FUSED_PER_GROUP] = {0}, dbeta[FUSED_PER_GROUP] = {0};
            const float *gamma_g = gamma + (size_t)g * per_group;
            for (int b = 0; b < batch; b++) {
                size_t base = ((size_t)b * channels + (size_t)g * per_group) * spatial;
                const float *x = in + base, *dy_raw = d_out + base;
                float mu = mean[b * groups + g], rs = rstd[b * groups + g];
                double sum_dy = 0.0, sum_dy_xhat = 0.0;
                for (int c = 0; c < per_group; c++) {
                    double part_dy[LANES] = {0}, part_dy_xhat[LANES] = {0};
                    add_gradient_sums(part_dy, part_dy_xhat, dy_raw + (size_t)c * spatial, x + (size_t)c * spatial,
                                      spatial, mu, rs);
                    const double channel_dy = lanes_total(part_dy), channel_dy_xhat = lanes_total(part_dy_xhat);
                    sum_dy += gamma_g[c] * channel_dy;
                    sum_dy_xhat += gamma_g[c] * channel_dy_xhat;
                    dbeta[c] += channel_dy;
                    dgamma[c] += channel_dy_xhat;
                }
                group_input_gradient(d_in + base, d_in_beta, x, dy_raw, gamma_g, per_group, spatial, mu, rs,
                                     (float)(sum_dy / (double)group_size), (float)(sum_dy_xhat / (double)group_size));
            }
            for (int c = 0; c < per_group; c++) {
                if (d_gamma) d_gamma[g * per_group + c] += (float)dgamma[c];
                if (d_beta) d_beta[g * per_group + c] += (float)dbeta[c];
            }
        }
        return;
    }
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
                    /* this channel's sums, times its gamma below */
                    double part_dy[LANES] = {0}, part_dy_xhat[LANES] = {0};
                    add_gradient_sums(part_dy, part_dy_xhat, gc, xc, spatial, mu, rs);
                    sum_dy += gm * lanes_total(part_dy);
                    sum_dy_xhat += gm * lanes_total(part_dy_xhat);
                }
                group_input_gradient(dx, d_in_beta, x, dy_raw, gamma + (size_t)g * per_group, per_group, spatial, mu,
                                     rs, (float)(sum_dy / (double)group_size),
                                     (float)(sum_dy_xhat / (double)group_size));
            }
    }
    if (d_gamma || d_beta) {
#pragma omp parallel for schedule(static)
        for (int channel = 0; channel < channels; channel++) {
            int g = channel / per_group;
            double sum_dy[LANES] = {0}, sum_dy_xhat[LANES] = {0};
            for (int b = 0; b < batch; b++) {
                size_t base = ((size_t)b * channels + channel) * spatial;
                const float *xc = in + base, *gc = d_out + base;
                float mu = mean[b * groups + g], rs = rstd[b * groups + g];
                add_gradient_sums(sum_dy, sum_dy_xhat, gc, xc, spatial, mu, rs);
            }
            if (d_gamma) d_gamma[channel] += (float)lanes_total(sum_dy_xhat);
            if (d_beta) d_beta[channel] += (float)lanes_total(sum_dy);
        }
    }
}

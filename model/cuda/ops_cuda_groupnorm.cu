/* GroupNorm with affine parameters on the GPU, forward and backward: the CUDA
 * side of ops_groupnorm.c. A group's values (per_group channels x spatial) are
 * contiguous, so the forward and d_in run one block per (sample, group) over
 * that range; d_gamma and d_beta run one block per channel over the samples.
 * Every statistic and gradient sum is accumulated in double, as on the CPU (a
 * group can hold hundreds of thousands of values), and reduced in a fixed order
 * (block_sum): the same bits on every run, no atomics. */
#include "cuda_device.cuh"

extern "C" {
#include "ops_cuda_conv.h"
}

#define GROUPNORM_THREADS 512
#define GROUPNORM_PARAMETER_THREADS 256

/* Block b * groups + g normalises group g of sample b: out = (x - mean) *
 * (rstd * gamma[c]) + beta[c]; mean, rstd (batch * groups) saved. The variance
 * is a second pass around the mean (no cancellation), biased, as in PyTorch. */
__global__ static void __launch_bounds__(GROUPNORM_THREADS)
groupnorm_forward_kernel(float *out, float *mean, float *rstd, const float *in,
                         const float *gamma, const float *beta, int channels_per_group,
                         int spatial, int groups, float eps) {
    const size_t group_size = (size_t)channels_per_group * spatial;
    const size_t base = (size_t)blockIdx.x * group_size; /* (b * groups + g) * group_size */
    const float *x = in + base;                          /* (channels_per_group, spatial) */
    const int first_channel = (int)(blockIdx.x % (unsigned int)groups) * channels_per_group;
    double sum = 0.0;
    for (size_t i = threadIdx.x; i < group_size; i += blockDim.x) sum += x[i];
    sum = block_sum(sum);
    const float mu = (float)(sum / (double)group_size);
    double var = 0.0;
    for (size_t i = threadIdx.x; i < group_size; i += blockDim.x) {
        const double d = (double)x[i] - mu;
        var += d * d;
    }
    var = block_sum(var);
    const float rs = (float)(1.0 / sqrt(var / (double)group_size + eps));
    for (size_t i = threadIdx.x; i < group_size; i += blockDim.x) {
        const int channel = first_channel + (int)(i / (size_t)spatial);
        const float scale = rs * gamma[channel];
        out[base + i] = (x[i] - mu) * scale + beta[channel];
    }
    if (threadIdx.x == 0) {
        mean[blockIdx.x] = mu;
        rstd[blockIdx.x] = rs;
    }
}

/* Block b * groups + g: with xhat = (x - mean) rstd and dy = d_out gamma,
 * dx = rstd (dy - mean(dy) - xhat mean(dy xhat)) over the group, written as
 * d_in = d_in_beta * d_in + dx (beta 0 does not read d_in). */
__global__ static void __launch_bounds__(GROUPNORM_THREADS)
groupnorm_backward_input_kernel(float *d_in, float d_in_beta, const float *d_out,
                                const float *in, const float *mean, const float *rstd,
                                const float *gamma, int channels_per_group, int spatial,
                                int groups) {
    const size_t group_size = (size_t)channels_per_group * spatial;
    const size_t base = (size_t)blockIdx.x * group_size;
    const float *x = in + base, *dy = d_out + base; /* (channels_per_group, spatial) */
    float *dx = d_in + base;
    const int first_channel = (int)(blockIdx.x % (unsigned int)groups) * channels_per_group;
    const float mu = mean[blockIdx.x], rs = rstd[blockIdx.x];
    double sum_dy = 0.0, sum_dy_xhat = 0.0;
    for (size_t i = threadIdx.x; i < group_size; i += blockDim.x) {
        const double gm = gamma[first_channel + (int)(i / (size_t)spatial)];
        const float g = dy[i];
        sum_dy += gm * g;
        sum_dy_xhat += gm * (double)(g * ((x[i] - mu) * rs));
    }
    sum_dy = block_sum(sum_dy);
    sum_dy_xhat = block_sum(sum_dy_xhat);
    const float mean_dy = (float)(sum_dy / (double)group_size);
    const float mean_dy_xhat = (float)(sum_dy_xhat / (double)group_size);
    for (size_t i = threadIdx.x; i < group_size; i += blockDim.x) {
        const float gm = gamma[first_channel + (int)(i / (size_t)spatial)];
        const float v = rs * (dy[i] * gm - mean_dy - (x[i] - mu) * rs * mean_dy_xhat);
        /* beta 0 must not read d_in: it may hold anything, also NaN */
        dx[i] = d_in_beta == 0.0f ? v : d_in_beta * dx[i] + v;
    }
}

/* Block c: d_gamma[c] += sum of d_out * xhat, d_beta[c] += sum of d_out, over
 * the samples and pixels of channel c (either may be NULL). */
__global__ static void __launch_bounds__(GROUPNORM_PARAMETER_THREADS)
groupnorm_backward_parameters_kernel(float *d_gamma, float *d_beta, const float *d_out,
                                     const float *in, const float *mean, const float *rstd,
                                     int batch, int channels, int spatial, int groups) {
    const int channel = blockIdx.x, group = channel / (channels / groups);
    const size_t n = (size_t)batch * spatial;
    double sum_dy = 0.0, sum_dy_xhat = 0.0;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) {
        const size_t b = i / (size_t)spatial, p = i % (size_t)spatial;
        const size_t index = (b * channels + channel) * spatial + p;
        const float mu = mean[b * groups + group], rs = rstd[b * groups + group];
        const float g = d_out[index];
        sum_dy += g;
        sum_dy_xhat += g * ((in[index] - mu) * rs);
    }
    sum_dy = block_sum(sum_dy);
    sum_dy_xhat = block_sum(sum_dy_xhat);
    if (threadIdx.x == 0) {
        if (d_gamma) d_gamma[channel] += (float)sum_dy_xhat;
        if (d_beta) d_beta[channel] += (float)sum_dy;
    }
}

/* 0 when there is nothing to do; ends the program on groups that do not divide channels. */
static int groupnorm_blocks(int batch, int channels, int spatial, int groups, const char *op) {
    if (batch <= 0 || channels <= 0 || spatial <= 0) return 0;
    if (groups <= 0 || channels % groups != 0)
        fatal_internal("%s: %d channels do not split into %d groups", op, channels, groups);
    return batch * groups;
}

extern "C" void groupnorm_forward_cuda(float *out, float *mean, float *rstd, const float *in, const float *gamma,
                                       const float *beta, int batch, int channels, int spatial, int groups, float eps,
                                       ldm_stream stream) {
    const int blocks = groupnorm_blocks(batch, channels, spatial, groups, "groupnorm_forward_cuda");
    if (blocks == 0) return;
    CUDA_LAUNCH_KERNEL(groupnorm_forward_kernel, blocks, GROUPNORM_THREADS, stream, out, mean, rstd, in, gamma, beta,
                       channels / groups, spatial, groups, eps);
    CUDA_CHECK_LAUNCH("groupnorm_forward_kernel");
}

extern "C" void groupnorm_backward_cuda(float *d_in, float d_in_beta, float *d_gamma, float *d_beta,
                                        const float *d_out, const float *in, const float *mean, const float *rstd,
                                        const float *gamma, int batch, int channels, int spatial, int groups,
                                        ldm_stream stream) {
    const int blocks = groupnorm_blocks(batch, channels, spatial, groups, "groupnorm_backward_cuda");
    if (blocks == 0) return;
    if (d_in) {
        CUDA_LAUNCH_KERNEL(groupnorm_backward_input_kernel, blocks, GROUPNORM_THREADS, stream, d_in, d_in_beta, d_out,
                           in, mean, rstd, gamma, channels / groups, spatial, groups);
        CUDA_CHECK_LAUNCH("groupnorm_backward_input_kernel");
    }
    if (d_gamma || d_beta) {
        CUDA_LAUNCH_KERNEL(groupnorm_backward_parameters_kernel, channels, GROUPNORM_PARAMETER_THREADS, stream, d_gamma,
                           d_beta, d_out, in, mean, rstd, batch, channels, spatial, groups);
        CUDA_CHECK_LAUNCH("groupnorm_backward_parameters_kernel");
    }
}

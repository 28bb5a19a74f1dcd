/* LayerNorm without affine parameters and the adaLN pieces on its output
 * (modulate, the gated residual) on the GPU: the CUDA side of ops_norm.c, plus
 * the fused LayerNorm + modulate forward. One block per row for the LayerNorm
 * kernels, with the row statistics accumulated in double as on the CPU and
 * reduced in a fixed order (block_sum); the token sums of the shift, scale and
 * gate gradients go through the deterministic column sums. */
#include "cuda_device.cuh"

extern "C" {
#include "ops_cuda.h"
}

#define LAYERNORM_THREADS 256

/* Row r of in (rows, dim): normalized (or NULL) = (x - mean) * rstd; out = that,
 * or with shift/scale (not NULL) out = normalized * (1 + scale) + shift with the
 * shift/scale row of sample r / tokens. mean, rstd (or NULL) saved. */
__global__ static void __launch_bounds__(LAYERNORM_THREADS)
layernorm_forward_kernel(float *out, float *normalized, float *mean, float *rstd,
                         const float *in, const float *shift, const float *scale,
                         int mod_stride, int tokens, int dim, float eps) {
    const size_t r = blockIdx.x;
    const float *x = in + r * dim;
    double sum = 0.0;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) sum += x[j];
    sum = block_sum(sum);
    const float mu = (float)(sum / dim);
    double var = 0.0;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        float d = x[j] - mu;
        var += (double)d * d;
    }
    var = block_sum(var);
    const float rs = (float)(1.0 / sqrt(var / dim + eps));
    const float *sh = shift ? shift + (r / tokens) * mod_stride : NULL;
    const float *sc = shift ? scale + (r / tokens) * mod_stride : NULL;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        float y = (x[j] - mu) * rs;
        if (normalized) normalized[r * dim + j] = y;
        out[r * dim + j] = sh ? y * (1.0f + sc[j]) + sh[j] : y;
    }
    if (threadIdx.x == 0) {
        if (mean) mean[r] = mu;
        if (rstd) rstd[r] = rs;
    }
}

/* d_in = d_in_beta * d_in + rstd * (g - mean(g) - xhat * mean(g * xhat)) for row
 * r, with xhat from the input and mean (FROM_NORMALIZED false) or given. */
template <bool FROM_NORMALIZED>
__global__ static void __launch_bounds__(LAYERNORM_THREADS)
layernorm_backward_kernel(float *d_in, float d_in_beta, const float *d_out, const float *src,
                          const float *mean, const float *rstd, int dim) {
    const size_t r = blockIdx.x;
    const float *g = d_out + r * dim, *s = src + r * dim;
    float *dx = d_in + r * dim;
    const float rs = rstd[r];
    const float mu = FROM_NORMALIZED ? 0.0f : mean[r];
    float sum_g = 0.0f, sum_gx = 0.0f;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        float xhat = FROM_NORMALIZED ? s[j] : (s[j] - mu) * rs;
        sum_g += g[j];
        sum_gx += g[j] * xhat;
    }
    sum_g = block_sum(sum_g);
    sum_gx = block_sum(sum_gx);
    const float mean_g = sum_g / dim, mean_gx = sum_gx / dim;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        float xhat = FROM_NORMALIZED ? s[j] : (s[j] - mu) * rs;
        float v = rs * (g[j] - mean_g - xhat * mean_gx);
        /* beta 0 must not read d_in: it may hold anything, also NaN */
        dx[j] = d_in_beta == 0.0f ? v : d_in_beta * dx[j] + v;
    }
}

static void layernorm_forward_launch(float *out, float *normalized, float *mean, float *rstd, const float *in,
                                     const float *shift, const float *scale, int mod_stride, int tokens, int rows,
                                     int dim, float eps, cudaStream_t stream) {
    if (rows <= 0 || dim <= 0) return;
    CUDA_LAUNCH_KERNEL(layernorm_forward_kernel, rows, LAYERNORM_THREADS, stream, out, normalized, mean, rstd, in,
                       shift, scale, mod_stride, tokens, dim, eps);
    CUDA_CHECK_LAUNCH("layernorm_forward_kernel");
}

extern "C" void layernorm_forward_cuda(float *out, float *mean, float *rstd, const float *in, int rows, int dim,
                                       float eps, ldm_stream stream) {
    layernorm_forward_launch(out, NULL, mean, rstd, in, NULL, NULL, 0, 1, rows, dim, eps, stream);
}

extern "C" void layernorm_modulate_forward_cuda(float *out, float *normalized, float *mean, float *rstd,
                                                const float *in, const float *shift, const float *scale,
                                                int mod_stride, int batch, int tokens, int dim, float eps,
                                                ldm_stream stream) {
    if (tokens <= 0) return;
    layernorm_forward_launch(out, normalized, mean, rstd, in, shift, scale, mod_stride, tokens, batch * tokens, dim,
                             eps, stream);
}

extern "C" void layernorm_backward_cuda(float *d_in, float d_in_beta, const float *d_out, const float *in,
                                        const float *mean, const float *rstd, int rows, int dim, ldm_stream stream) {
    if (rows <= 0 || dim <= 0) return;
    CUDA_LAUNCH_KERNEL(layernorm_backward_kernel<false>, rows, LAYERNORM_THREADS, stream, d_in, d_in_beta, d_out, in,
                       mean, rstd, dim);
    CUDA_CHECK_LAUNCH("layernorm_backward_kernel");
}

extern "C" void layernorm_backward_normalized_cuda(float *d_in, float d_in_beta, const float *d_out,
                                                   const float *normalized, const float *rstd, int rows, int dim,
                                                   ldm_stream stream) {
    if (rows <= 0 || dim <= 0) return;
    CUDA_LAUNCH_KERNEL(layernorm_backward_kernel<true>, rows, LAYERNORM_THREADS, stream, d_in, d_in_beta, d_out,
                       normalized, NULL, rstd, dim);
    CUDA_CHECK_LAUNCH("layernorm_backward_kernel");
}

/* ---- modulate and gated residual: elementwise over (batch, tokens, dim) ----
 * Element i belongs to sample i / (tokens * dim) and column i % dim; its row of
 * the modulation buffer starts at sample * mod_stride. */

__device__ __forceinline__ size_t modulation_index(size_t i, size_t per_sample, int dim, int mod_stride) {
    return (i / per_sample) * (size_t)mod_stride + i % (size_t)dim;
}

__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
modulate_forward_kernel(float *out, const float *in, const float *shift, const float *scale,
                        int mod_stride, size_t per_sample, int dim, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) {
        size_t m = modulation_index(i, per_sample, dim, mod_stride);
        out[i] = in[i] * (1.0f + scale[m]) + shift[m];
    }
}

/* out[i] = a[i] * (1 + factor[m]) when one_plus, else a[i] * factor[m]. */
__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
scale_by_modulation_kernel(float *out, const float *a, const float *factor, int one_plus,
                           int mod_stride, size_t per_sample, int dim, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) {
        float f = factor[modulation_index(i, per_sample, dim, mod_stride)];
        out[i] = a[i] * (one_plus ? 1.0f + f : f);
    }
}

__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
gated_residual_forward_kernel(float *x, const float *y, const float *gate, int mod_stride,
                              size_t per_sample, int dim, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) x[i] += gate[modulation_index(i, per_sample, dim, mod_stride)] * y[i];
}

/* n elements, or 0 when any size is 0 (then nothing is launched). */
static size_t modulation_elements(int batch, int tokens, int dim) {
    if (batch <= 0 || tokens <= 0 || dim <= 0) return 0;
    return (size_t)batch * tokens * dim;
}

extern "C" void modulate_forward_cuda(float *out, const float *in, const float *shift, const float *scale,
                                      int mod_stride, int batch, int tokens, int dim, ldm_stream stream) {
    CUDA_LAUNCH_ELEMENTWISE(modulate_forward_kernel, modulation_elements(batch, tokens, dim), stream, out, in, shift,
                            scale, mod_stride, (size_t)tokens * dim, dim);
}

static void scale_by_modulation(float *out, const float *a, const float *factor, int one_plus, int mod_stride,
                                int batch, int tokens, int dim, cudaStream_t stream) {
    CUDA_LAUNCH_ELEMENTWISE(scale_by_modulation_kernel, modulation_elements(batch, tokens, dim), stream, out, a,
                            factor, one_plus, mod_stride, (size_t)tokens * dim, dim);
}

extern "C" void modulate_backward_cuda(float *d_in, float *d_shift, float *d_scale, const float *d_out,
                                       const float *in, const float *scale, int mod_stride, int batch, int tokens,
                                       int dim, ldm_stream stream) {
    if (d_in) scale_by_modulation(d_in, d_out, scale, 1, mod_stride, batch, tokens, dim, stream);
    if (d_shift)
        column_sums_accumulate_cuda(d_shift, mod_stride, d_out, PRECISION_FP32, NULL, batch, tokens, dim, stream);
    if (d_scale)
        column_sums_accumulate_cuda(d_scale, mod_stride, d_out, PRECISION_FP32, in, batch, tokens, dim, stream);
}

extern "C" void gated_residual_forward_cuda(float *x, const float *y, const float *gate, int mod_stride, int batch,
                                            int tokens, int dim, ldm_stream stream) {
    CUDA_LAUNCH_ELEMENTWISE(gated_residual_forward_kernel, modulation_elements(batch, tokens, dim), stream, x, y, gate,
                            mod_stride, (size_t)tokens * dim, dim);
}

extern "C" void gated_residual_backward_cuda(float *d_y, float *d_gate, const float *d_x, const float *y,
                                             const float *gate, int mod_stride, int batch, int tokens, int dim,
                                             ldm_stream stream) {
    if (d_y) scale_by_modulation(d_y, d_x, gate, 0, mod_stride, batch, tokens, dim, stream);
    if (d_gate) column_sums_accumulate_cuda(d_gate, mod_stride, d_x, PRECISION_FP32, y, batch, tokens, dim, stream);
}

/* The posterior and loss kernels of autoencoder_cuda_kernels.h. Float
 * arithmetic that the CPU does in separate operations is written with the _rn
 * intrinsics, so that nvcc does not fuse it into multiply-adds and the results
 * are the CPU's bits (up to expf's last bit on a GPU). */
#include <math.h>

#include "cuda_device.cuh"

extern "C" {
#include "autoencoder.h"
#include "autoencoder_cuda_kernels.h"
}

/* One block sums: small next to the convolutions (the latent is 1/48 of an RGB
 * image's values, the reconstruction one pass over the images). */
#define SUM_THREADS 1024

__device__ __forceinline__ float clamp_logvar(float v) {
    return v < AE_LOGVAR_MIN ? AE_LOGVAR_MIN : v > AE_LOGVAR_MAX ? AE_LOGVAR_MAX : v;
}

/* One block: each thread its strided values in order, then block_sum's fixed order. */
__global__ static void posterior_forward_kernel(float *mean, float *logvar, float *z, double *kl_sum,
                                                const float *moments, const float *noise, int per_sample, size_t n,
                                                int precision) {
    double kl = 0.0;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) {
        const size_t b = i / (size_t)per_sample, k = i % (size_t)per_sample;
        const float *sample = moments + 2 * b * (size_t)per_sample;
        const float m = sample[k], lv = clamp_logvar(sample[per_sample + k]);
        mean[i] = m;
        logvar[i] = lv;
        const float std = expf(__fmul_rn(0.5f, lv));
        z[i] = device_precision_round(precision, noise ? __fadd_rn(m, __fmul_rn(std, noise[i])) : m);
        kl += (double)m * m + exp((double)lv) - 1.0 - lv;
    }
    kl = block_sum(kl);
    if (threadIdx.x == 0) *kl_sum = kl;
}

extern "C" void autoencoder_posterior_forward_cuda(float *mean, float *logvar, float *z, double *kl_sum,
                                                   const float *moments, const float *noise, int batch,
                                                   int per_sample, ldm_precision precision, ldm_stream stream) {
    if (batch <= 0 || per_sample <= 0) return;
    CUDA_LAUNCH_KERNEL(posterior_forward_kernel, 1, SUM_THREADS, stream, mean, logvar, z, kl_sum, moments, noise,
                       per_sample, (size_t)batch * per_sample, (int)precision);
    CUDA_CHECK_LAUNCH("posterior_forward_kernel");
}

/* Element i of the latent writes its mean's and its log-variance's gradient. */
__global__ static void posterior_backward_kernel(float *d_moments, const float *d_z, const float *moments,
                                                 const float *mean, const float *logvar, const float *noise,
                                                 float kl_scale, int per_sample, int precision, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) {
        const size_t b = i / (size_t)per_sample, k = i % (size_t)per_sample;
        const size_t at_mean = 2 * b * (size_t)per_sample + k, at_logvar = at_mean + (size_t)per_sample;
        const float dz = d_z[i], lv = logvar[i];
        float g = __fmul_rn(__fmul_rn(0.5f, kl_scale), __fsub_rn(expf(lv), 1.0f));
        if (noise) {
            const float std = expf(__fmul_rn(0.5f, lv));
            g = __fadd_rn(g, __fmul_rn(__fmul_rn(__fmul_rn(dz, 0.5f), std), noise[i]));
        }
        const float raw = moments[at_logvar];
        const bool inside = raw >= AE_LOGVAR_MIN && raw <= AE_LOGVAR_MAX;
        d_moments[at_mean] = device_precision_round(precision, __fadd_rn(dz, __fmul_rn(kl_scale, mean[i])));
        d_moments[at_logvar] = device_precision_round(precision, inside ? g : 0.0f);
    }
}

extern "C" void autoencoder_posterior_backward_cuda(float *d_moments, const float *d_z, const float *moments,
                                                    const float *mean, const float *logvar, const float *noise,
                                                    float kl_scale, int batch, int per_sample, ldm_precision precision,
                                                    ldm_stream stream) {
    if (batch <= 0 || per_sample <= 0) return;
    CUDA_LAUNCH_ELEMENTWISE(posterior_backward_kernel, (size_t)batch * per_sample, stream, d_moments, d_z, moments,
                            mean, logvar, noise, kl_scale, per_sample, (int)precision);
}

__global__ static void reconstruction_sum_kernel(double *sum, const float *rec, const float *target, size_t n,
                                                 int l2) {
    double s = 0.0;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) {
        const double diff = (double)rec[i] - target[i];
        s += l2 ? diff * diff : fabs(diff);
    }
    s = block_sum(s);
    if (threadIdx.x == 0) *sum = s;
}

extern "C" void autoencoder_reconstruction_sum_cuda(double *sum, const float *rec, const float *target, size_t n,
                                                    int l2, ldm_stream stream) {
    if (n == 0) return;
    CUDA_LAUNCH_KERNEL(reconstruction_sum_kernel, 1, SUM_THREADS, stream, sum, rec, target, n, l2);
    CUDA_CHECK_LAUNCH("reconstruction_sum_kernel");
}

__global__ static void reconstruction_backward_kernel(float *d_rec, const float *rec, const float *target, int l2,
                                                      float scale, int precision, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) {
        const float diff = __fsub_rn(rec[i], target[i]);
        const float d = l2 ? __fmul_rn(__fmul_rn(2.0f, scale), diff) : __fmul_rn(scale, (float)((diff > 0) - (diff < 0)));
        d_rec[i] = device_precision_round(precision, d);
    }
}

extern "C" void autoencoder_reconstruction_backward_cuda(float *d_rec, const float *rec, const float *target,
                                                         size_t n, int l2, float d_loss, ldm_precision precision,
                                                         ldm_stream stream) {
    const float scale = d_loss / (float)n; /* as autoencoder_train_backward */
    CUDA_LAUNCH_ELEMENTWISE(reconstruction_backward_kernel, n, stream, d_rec, rec, target, l2, scale, (int)precision);
}

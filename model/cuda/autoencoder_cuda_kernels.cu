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

/* The sums run over many blocks: block k sums its fixed slice of the values
 * (each thread its strided values in order, then block_sum's fixed order) into
 * sum_partials[k], and one thread adds the partials in block order: the same
 * bits on every run, no atomics. The partials are this module's device array,
 * which the kernels name directly (no allocation, nothing for the caller to
 * pass); work on one stream runs in order, so a sum's second pass reads its own
 * first pass's partials (two streams must not run these sums at once). */
#define SUM_THREADS 256
#define SUM_MAX_BLOCKS 256
/* The second pass: one thread adds (one warp is launched). */
#define SUM_TOTAL_THREADS 32

static __device__ double sum_partials[SUM_MAX_BLOCKS];

/* Blocks for n values: one per SUM_THREADS values, at most SUM_MAX_BLOCKS. */
static unsigned int sum_blocks(size_t n) {
    const size_t blocks = (n + SUM_THREADS - 1) / SUM_THREADS;
    return (unsigned int)(blocks < SUM_MAX_BLOCKS ? blocks : SUM_MAX_BLOCKS);
}

/* The slice [begin, end) of n values that block blockIdx.x of gridDim.x sums. */
__device__ __forceinline__ void block_slice(size_t n, size_t *begin, size_t *end) {
    const size_t slice = (n + gridDim.x - 1) / gridDim.x;
    *begin = (size_t)blockIdx.x * slice;
    *end = *begin + slice < n ? *begin + slice : n;
}

/* *total = sum_partials[0] + sum_partials[1] + ... in block order, by one thread. */
__global__ static void __launch_bounds__(SUM_TOTAL_THREADS) sum_partials_kernel(double *total, int count) {
    if (threadIdx.x != 0) return;
    double sum = 0.0;
    for (int k = 0; k < count; k++) sum += sum_partials[k];
    *total = sum;
}

static void add_partials(double *total, unsigned int blocks, cudaStream_t stream) {
    CUDA_LAUNCH_KERNEL(sum_partials_kernel, 1, SUM_TOTAL_THREADS, stream, total, (int)blocks);
    CUDA_CHECK_LAUNCH("sum_partials_kernel");
}

__device__ __forceinline__ float clamp_logvar(float v) {
    return v < AE_LOGVAR_MIN ? AE_LOGVAR_MIN : v > AE_LOGVAR_MAX ? AE_LOGVAR_MAX : v;
}

/* Block k: its slice of the latent, and its part of the KL sum into sum_partials[k]. */
__global__ static void __launch_bounds__(SUM_THREADS)
posterior_forward_kernel(float *mean, float *logvar, float *z, const float *moments, const float *noise,
                         int per_sample, size_t n, int precision) {
    double kl = 0.0;
    size_t begin, end;
    block_slice(n, &begin, &end);
    for (size_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
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
    if (threadIdx.x == 0) sum_partials[blockIdx.x] = kl;
}

extern "C" void autoencoder_posterior_forward_cuda(float *mean, float *logvar, float *z, double *kl_sum,
                                                   const float *moments, const float *noise, int batch,
                                                   int per_sample, ldm_precision precision, ldm_stream stream) {
    if (batch <= 0 || per_sample <= 0) return;
    const size_t n = (size_t)batch * per_sample;
    const unsigned int blocks = sum_blocks(n);
    CUDA_LAUNCH_KERNEL(posterior_forward_kernel, blocks, SUM_THREADS, stream, mean, logvar, z, moments, noise,
                       per_sample, n, (int)precision);
    CUDA_CHECK_LAUNCH("posterior_forward_kernel");
    add_partials(kl_sum, blocks, stream);
}

/* Element i of the latent writes its mean's and its log-variance's gradient. */
__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
posterior_backward_kernel(float *d_moments, const float *d_z, const float *moments, const float *mean,
                          const float *logvar, const float *noise, float kl_scale, int per_sample, int precision,
                          size_t n) {
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

/* Block k: its slice's sum into sum_partials[k]. */
__global__ static void __launch_bounds__(SUM_THREADS)
reconstruction_sum_kernel(const float *rec, const float *target, size_t n, int l2) {
    double s = 0.0;
    size_t begin, end;
    block_slice(n, &begin, &end);
    for (size_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
        const double diff = (double)rec[i] - target[i];
        s += l2 ? diff * diff : fabs(diff);
    }
    s = block_sum(s);
    if (threadIdx.x == 0) sum_partials[blockIdx.x] = s;
}

extern "C" void autoencoder_reconstruction_sum_cuda(double *sum, const float *rec, const float *target, size_t n,
                                                    int l2, ldm_stream stream) {
    if (n == 0) return;
    const unsigned int blocks = sum_blocks(n);
    CUDA_LAUNCH_KERNEL(reconstruction_sum_kernel, blocks, SUM_THREADS, stream, rec, target, n, l2);
    CUDA_CHECK_LAUNCH("reconstruction_sum_kernel");
    add_partials(sum, blocks, stream);
}

__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
reconstruction_backward_kernel(float *d_rec, const float *rec, const float *target, int l2, float scale, int precision,
                               size_t n) {
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

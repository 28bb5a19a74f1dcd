/* The training loss on the GPU, the CUDA side of ops_loss.c: the weighted mean
 * squared error and its gradient. The forward runs over many blocks: block k
 * takes the samples k, k + G, k + 2G, ... (G blocks), sums each sample's squared
 * errors in double (block_sum's fixed order), writes its per-sample loss and
 * adds its samples' losses in order into a partial; then one thread adds the G
 * partials in block order. The loss is the same bits on every run (no atomics)
 * and agrees with the CPU's double sums to float rounding. */
#include "cuda_device.cuh"

extern "C" {
#include "ops_cuda.h"
}

#define LOSS_THREADS 256
#define LOSS_MAX_BLOCKS 256
/* The second pass: one thread adds (one warp is launched). */
#define LOSS_TOTAL_THREADS 32

/* The blocks' partial sums of sample losses, named by the kernels directly (no
 * allocation); work on one stream runs in order, so the second pass reads its
 * own first pass's partials (two streams must not run the loss at once). */
static __device__ double loss_partials[LOSS_MAX_BLOCKS];

__global__ static void __launch_bounds__(LOSS_THREADS)
weighted_mse_partials_kernel(float *per_sample_loss, const float *pred, const float *target, const float *weight,
                             int batch, int per_sample) {
    double block_total = 0.0; /* thread 0's */
    for (int b = blockIdx.x; b < batch; b += gridDim.x) {
        const float *p = pred + (size_t)b * per_sample, *t = target + (size_t)b * per_sample;
        double sum = 0.0;
        for (int j = threadIdx.x; j < per_sample; j += LOSS_THREADS) {
            const double d = (double)p[j] - t[j];
            sum += d * d;
        }
        sum = block_sum(sum);
        if (threadIdx.x == 0) {
            const double sample_loss = (weight ? weight[b] : 1.0) * sum / per_sample;
            if (per_sample_loss) per_sample_loss[b] = (float)sample_loss;
            block_total += sample_loss;
        }
    }
    if (threadIdx.x == 0) loss_partials[blockIdx.x] = block_total;
}

/* *loss = (the partials added in block order) / batch, by one thread. */
__global__ static void __launch_bounds__(LOSS_TOTAL_THREADS)
weighted_mse_total_kernel(float *loss, int blocks, int batch) {
    if (threadIdx.x != 0) return;
    double total = 0.0;
    for (int k = 0; k < blocks; k++) total += loss_partials[k];
    *loss = (float)(total / batch);
}

/* Element i of sample i / per_sample: d = coeff * (pred - target), coeff as on the CPU. */
__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
weighted_mse_backward_kernel(float *d_pred, float d_loss, const float *pred, const float *target, const float *weight,
                             int batch, int per_sample, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) {
        size_t b = i / per_sample;
        float coeff = (float)(2.0 * d_loss * (weight ? weight[b] : 1.0) / ((double)batch * per_sample));
        d_pred[i] = coeff * (pred[i] - target[i]);
    }
}

extern "C" void weighted_mse_forward_cuda(float *loss, float *per_sample_loss, const float *pred, const float *target,
                                          const float *weight, int batch, int per_sample, ldm_stream stream) {
    if (batch < 0 || per_sample < 0) return;
    const int blocks = batch < 1 ? 1 : batch < LOSS_MAX_BLOCKS ? batch : LOSS_MAX_BLOCKS;
    CUDA_LAUNCH_KERNEL(weighted_mse_partials_kernel, blocks, LOSS_THREADS, stream, per_sample_loss, pred, target,
                       weight, batch, per_sample);
    CUDA_CHECK_LAUNCH("weighted_mse_partials_kernel");
    CUDA_LAUNCH_KERNEL(weighted_mse_total_kernel, 1, LOSS_TOTAL_THREADS, stream, loss, blocks, batch);
    CUDA_CHECK_LAUNCH("weighted_mse_total_kernel");
}

extern "C" void weighted_mse_backward_cuda(float *d_pred, float d_loss, const float *pred, const float *target,
                                           const float *weight, int batch, int per_sample, ldm_stream stream) {
    if (batch <= 0 || per_sample <= 0) return;
    CUDA_LAUNCH_ELEMENTWISE(weighted_mse_backward_kernel, (size_t)batch * per_sample, stream, d_pred, d_loss, pred,
                            target, weight, batch, per_sample);
}

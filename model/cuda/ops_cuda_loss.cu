/* The training loss on the GPU, the CUDA side of ops_loss.c: the weighted mean
 * squared error and its gradient. The forward is one block: each warp sums one
 * sample's squared errors in double (a fixed shuffle order), and thread 0 adds
 * the per-sample losses in sample order, so the loss is the same bits on every
 * run and agrees with the CPU's double sums to float rounding. */
#include "cuda_device.cuh"

extern "C" {
#include "ops_cuda.h"
}

#define LOSS_THREADS 1024

__global__ static void weighted_mse_forward_kernel(float *loss, float *per_sample_loss, const float *pred,
                                                   const float *target, const float *weight, int batch,
                                                   int per_sample) {
    __shared__ double sample_sums[LOSS_THREADS / 32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    double total = 0.0; /* thread 0's */
    for (int first = 0; first < batch; first += warps) {
        const int b = first + warp;
        double sum = 0.0;
        if (b < batch) {
            const float *p = pred + (size_t)b * per_sample, *t = target + (size_t)b * per_sample;
            for (int j = lane; j < per_sample; j += 32) {
                double d = (double)p[j] - t[j];
                sum += d * d;
            }
        }
        sum = warp_sum(sum);
        if (lane == 0) sample_sums[warp] = sum;
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int w = 0; w < warps && first + w < batch; w++) {
                const int s = first + w;
                double sample_loss = (weight ? weight[s] : 1.0) * sample_sums[w] / per_sample;
                if (per_sample_loss) per_sample_loss[s] = (float)sample_loss;
                total += sample_loss;
            }
        }
        __syncthreads(); /* sample_sums is rewritten next round */
    }
    if (threadIdx.x == 0) *loss = (float)(total / batch);
}

/* Element i of sample i / per_sample: d = coeff * (pred - target), coeff as on the CPU. */
__global__ static void weighted_mse_backward_kernel(float *d_pred, float d_loss, const float *pred,
                                                    const float *target, const float *weight, int batch,
                                                    int per_sample, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) {
        size_t b = i / per_sample;
        float coeff = (float)(2.0 * d_loss * (weight ? weight[b] : 1.0) / ((double)batch * per_sample));
        d_pred[i] = coeff * (pred[i] - target[i]);
    }
}

extern "C" void weighted_mse_forward_cuda(float *loss, float *per_sample_loss, const float *pred, const float *target,
                                          const float *weight, int batch, int per_sample, ldm_stream stream) {
    if (batch < 0 || per_sample < 0) return;
    CUDA_LAUNCH_KERNEL(weighted_mse_forward_kernel, 1, LOSS_THREADS, stream, loss, per_sample_loss, pred, target,
                       weight, batch, per_sample);
    CUDA_CHECK_LAUNCH("weighted_mse_forward_kernel");
}

extern "C" void weighted_mse_backward_cuda(float *d_pred, float d_loss, const float *pred, const float *target,
                                           const float *weight, int batch, int per_sample, ldm_stream stream) {
    if (batch <= 0 || per_sample <= 0) return;
    CUDA_LAUNCH_ELEMENTWISE(weighted_mse_backward_kernel, (size_t)batch * per_sample, stream, d_pred, d_loss, pred,
                            target, weight, batch, per_sample);
}

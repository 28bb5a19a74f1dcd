/* Patchify and unpatchify on the GPU, the CUDA side of ops_patch.c: the index
 * permutations between an image (batch, channels, size, size) and patch tokens.
 * One thread per element of the token layout computes the matching image index
 * (the same formulas as ops_patch.c) and copies one value, so results are
 * bit-identical to the CPU's; backward passes copy the other way. */
#include "cuda_device.cuh"

extern "C" {
#include "ops_cuda.h"
}

/* Element i of the token layout (batch, grid*grid, channels*patch*patch), each
 * token vector in (channel, py, px) order, or in (py, px, channel) order when
 * channel_last; to_tokens copies image -> tokens, else tokens -> image. */
__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
patch_permute_kernel(float *tokens, float *image, int to_tokens, int channel_last, int channels,
                     int size, int patch, size_t n) {
    const int grid = size / patch;
    const size_t vec = (size_t)channels * patch * patch, grid_tokens = (size_t)grid * grid;
    CUDA_FOR_EACH_INDEX(i, n) {
        size_t e = i % vec, token = (i / vec) % grid_tokens, b = i / (vec * grid_tokens);
        int c, py, px;
        if (channel_last) {
            c = (int)(e % channels);
            px = (int)((e / channels) % patch);
            py = (int)(e / ((size_t)channels * patch));
        } else {
            px = (int)(e % patch);
            py = (int)((e / patch) % patch);
            c = (int)(e / ((size_t)patch * patch));
        }
        int gy = (int)(token / grid), gx = (int)(token % grid);
        size_t image_index = ((b * channels + c) * size + (size_t)gy * patch + py) * size + (size_t)gx * patch + px;
        if (to_tokens)
            tokens[i] = image[image_index];
        else
            image[image_index] = tokens[i];
    }
}

static void patch_permute(float *tokens, float *image, int to_tokens, int channel_last, int batch, int channels,
                          int size, int patch, cudaStream_t stream) {
    if (batch <= 0 || channels <= 0 || patch <= 0 || size / patch <= 0) return;
    const size_t grid = (size_t)(size / patch);
    const size_t n = (size_t)batch * grid * grid * channels * patch * patch;
    CUDA_LAUNCH_ELEMENTWISE(patch_permute_kernel, n, stream, tokens, image, to_tokens, channel_last, channels, size,
                            patch);
}

/* The const casts: each direction only reads the source side. */
extern "C" void patchify_forward_cuda(float *patches, const float *image, int batch, int channels, int size,
                                      int patch, ldm_stream stream) {
    patch_permute(patches, (float *)image, 1, 0, batch, channels, size, patch, stream);
}

extern "C" void patchify_backward_cuda(float *d_image, const float *d_patches, int batch, int channels, int size,
                                       int patch, ldm_stream stream) {
    patch_permute((float *)d_patches, d_image, 0, 0, batch, channels, size, patch, stream);
}

extern "C" void unpatchify_forward_cuda(float *image, const float *tokens, int batch, int channels, int size,
                                        int patch, ldm_stream stream) {
    patch_permute((float *)tokens, image, 0, 1, batch, channels, size, patch, stream);
}

extern "C" void unpatchify_backward_cuda(float *d_tokens, const float *d_image, int batch, int channels, int size,
                                         int patch, ldm_stream stream) {
    patch_permute(d_tokens, (float *)d_image, 1, 1, batch, channels, size, patch, stream);
}

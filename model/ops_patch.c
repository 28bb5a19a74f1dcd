/* Patchify and unpatchify: the index permutations between an image (batch,
 * channels, size, size) and a sequence of patch tokens. Patchify orders each
 * patch vector (channel, py, px) like a Conv2d weight, so patchify + linear is
 * DiT's x_embedder conv; unpatchify reads DiT's final-layer token vectors in
 * (py, px, channel) order. Backward passes are the inverse permutations. */
#include "ops.h"

/* Calls visit(patch_index, image_index) for every element; both directions of
 * both ops are the same walk with source and destination swapped. */
#define FOR_EACH_PATCH_ELEMENT(batch, channels, size, patch, CHANNEL_LAST, BODY)             \
    do {                                                                                     \
        const int grid_ = (size) / (patch);                                                  \
        const int tokens_ = grid_ * grid_;                                                   \
        const int vec_ = (channels) * (patch) * (patch);                                     \
        _Pragma("omp parallel for collapse(2) schedule(static)")                             \
        for (int b_ = 0; b_ < (batch); b_++)                                                 \
            for (int tok_ = 0; tok_ < tokens_; tok_++) {                                     \
                int gy_ = tok_ / grid_, gx_ = tok_ % grid_;                                  \
                for (int c_ = 0; c_ < (channels); c_++)                                      \
                    for (int py_ = 0; py_ < (patch); py_++)                                  \
                        for (int px_ = 0; px_ < (patch); px_++) {                            \
                            size_t patch_index = ((size_t)b_ * tokens_ + tok_) * vec_ +      \
                                (CHANNEL_LAST ? ((size_t)py_ * (patch) + px_) * (channels) + c_ \
                                              : ((size_t)c_ * (patch) + py_) * (patch) + px_); \
                            size_t image_index = (((size_t)b_ * (channels) + c_) * (size) +  \
                                                  gy_ * (patch) + py_) * (size) +            \
                                                 gx_ * (patch) + px_;                        \
                            BODY;                                                            \
                        }                                                                    \
            }                                                                                \
    } while (0)

void patchify_forward(float *patches, const float *image, int batch, int channels, int size, int patch) {
    FOR_EACH_PATCH_ELEMENT(batch, channels, size, patch, 0, patches[patch_index] = image[image_index]);
}

void patchify_backward(float *d_image, const float *d_patches, int batch, int channels, int size, int patch) {
    FOR_EACH_PATCH_ELEMENT(batch, channels, size, patch, 0, d_image[image_index] = d_patches[patch_index]);
}

void unpatchify_forward(float *image, const float *tokens, int batch, int channels, int size, int patch) {
    FOR_EACH_PATCH_ELEMENT(batch, channels, size, patch, 1, image[image_index] = tokens[patch_index]);
}

void unpatchify_backward(float *d_tokens, const float *d_image, int batch, int channels, int size, int patch) {
    FOR_EACH_PATCH_ELEMENT(batch, channels, size, patch, 1, d_tokens[patch_index] = d_image[image_index]);
}

/* 2-D convolution forward and backward on the CPU (im2col + GEMM through
 * OpenBLAS), nearest 2x upsampling, and the (channels, tokens) transpose: the
 * spatial ops of the autoencoder. GroupNorm lives in ops_groupnorm.c.
 *
 * How the work is cut (pieces never depend on the thread count, so results are
 * bit-identical whatever it is; OpenBLAS runs single-threaded, see ops_linear.c):
 * - forward: one piece per (sample, tile of CONV_PIXEL_TILE output pixels): the
 *   tile's columns are unfolded (im2col) into the thread's scratch slot and one
 *   sgemm computes out[b, :, tile] = weight (Cout, Cin k k) @ columns (Cin k k, tile).
 * - d_in: one piece per (sample, block of input channels): for each pixel tile in
 *   order, the block's rows of the column gradient weight[:, block]^T @ d_out[b, :, tile]
 *   are folded back (col2im, a scatter-add) into those channels only, so no two
 *   pieces write the same input value.
 * - d_weight: one piece per block of input channels, i.e. a block of columns of
 *   d_weight (Cout, Cin k k); it runs over the samples and tiles in order, so the
 *   reduction over the batch is summed in the same order on any thread count.
 * - d_bias: one piece per output channel.
 * A 1x1 convolution with stride 1 and no padding (shortcuts, quant_conv) uses the
 * input itself as its column matrix and needs no scratch. */
#include <cblas.h>
#include <omp.h>
#include <string.h>

#include "fatal.h"
#include "ops.h"
#include "ops_conv.h"

/* Output pixels per im2col tile: with the columns of one tile in a thread's
 * scratch, per-thread scratch is Cin k k * 256 floats (1.2 MB at 128 channels, 3x3). */
enum { CONV_PIXEL_TILE = 256 };
/* Rows of the column matrix (channels * k * k) per block in the backward pieces:
 * 8 channels of a 3x3 conv, 72 of a 1x1. */
enum { CONV_BLOCK_ROWS = 72 };

conv2d_dims conv2d_shape(int batch, int in_channels, int out_channels, int height, int width,
                         int kernel, int stride, int padding) {
    conv2d_dims s = {batch, in_channels, out_channels, height, width, kernel, stride,
                     padding, padding, padding, padding};
    return s;
}

int conv2d_out_height(const conv2d_dims *s) {
    return (s->height + s->pad_top + s->pad_bottom - s->kernel) / s->stride + 1;
}

int conv2d_out_width(const conv2d_dims *s) {
    return (s->width + s->pad_left + s->pad_right - s->kernel) / s->stride + 1;
}

static int is_pointwise(const conv2d_dims *s) {
    return s->kernel == 1 && s->stride == 1 && s->pad_top == 0 && s->pad_bottom == 0 && s->pad_left == 0 &&
           s->pad_right == 0;
}

static int pixel_tile(const conv2d_dims *s) {
    int pixels = conv2d_out_height(s) * conv2d_out_width(s);
    return pixels < CONV_PIXEL_TILE ? pixels : CONV_PIXEL_TILE;
}

static int channels_per_block(const conv2d_dims *s) {
    int per_block = CONV_BLOCK_ROWS / (s->kernel * s->kernel);
    if (per_block < 1) per_block = 1;
    return per_block < s->in_channels ? per_block : s->in_channels;
}

/* One thread's scratch: the columns of one tile for all input channels (the
 * backward blocks use a part of it). */
static size_t slot_floats(const conv2d_dims *s) {
    return (size_t)s->in_channels * s->kernel * s->kernel * (size_t)pixel_tile(s);
}

size_t conv2d_scratch_floats(const conv2d_dims *shape, int threads) {
    if (is_pointwise(shape)) return 0;
    return slot_floats(shape) * (size_t)(threads > 0 ? threads : 1);
}

/* Threads the scratch has room for, at most the OpenMP maximum. */
static int scratch_threads(const conv2d_dims *s, size_t scratch_floats, const char *op) {
    size_t per_thread = slot_floats(s);
    size_t slots = scratch_floats / per_thread;
    if (slots < 1)
        fatal_internal("%s: scratch of %zu floats is less than one thread's %zu", op, scratch_floats, per_thread);
    int max_threads = omp_get_max_threads();
    return slots < (size_t)max_threads ? (int)slots : max_threads;
}

static void check_shape(const conv2d_dims *s, const char *op) {
    if (s->batch < 1 || s->in_channels < 1 || s->out_channels < 1 || s->kernel < 1 || s->stride < 1 ||
        s->pad_top < 0 || s->pad_bottom < 0 || s->pad_left < 0 || s->pad_right < 0 ||
        s->height + s->pad_top + s->pad_bottom < s->kernel || s->width + s->pad_left + s->pad_right < s->kernel)
        fatal_internal("%s: bad shape (batch %d, %d -> %d channels, %dx%d, kernel %d, stride %d, pad %d %d %d %d)",
                       op, s->batch, s->in_channels, s->out_channels, s->height, s->width, s->kernel, s->stride,
                       s->pad_top, s->pad_bottom, s->pad_left, s->pad_right);
}

/* The output columns ox in [*lo, *hi) whose input column ox * stride - pad_left + kx
 * lies inside [0, width). */
static void valid_columns(const conv2d_dims *s, int kx, int out_width, int *lo, int *hi) {
    int first = s->pad_left - kx; /* smallest ox * stride allowed */
    int a = first <= 0 ? 0 : (first + s->stride - 1) / s->stride;
    int last = s->width - 1 + s->pad_left - kx; /* largest ox * stride allowed */
    int b = last < 0 ? 0 : last / s->stride + 1;
    if (b > out_width) b = out_width;
    if (a > b) a = b;
    *lo = a;
    *hi = b;
}

/* columns (channel_count k k, count) = the input patches of output pixels
 * [first_pixel, first_pixel + count) of one sample, for input channels
 * [first_channel, first_channel + channel_count); plane (in_channels, height, width). */
static void im2col_tile(float *columns, const float *plane, const conv2d_dims *s, int first_channel,
                        int channel_count, int first_pixel, int count) {
    const int k = s->kernel, out_width = conv2d_out_width(s);
    for (int c = 0; c < channel_count; c++) {
        const float *channel = plane + (size_t)(first_channel + c) * s->height * s->width;
        for (int ky = 0; ky < k; ky++)
            for (int kx = 0; kx < k; kx++) {
                float *row = columns + ((size_t)(c * k + ky) * k + kx) * count;
                int lo, hi;
                valid_columns(s, kx, out_width, &lo, &hi);
                /* walk the tile one output row segment at a time */
                for (int j = 0; j < count;) {
                    int pixel = first_pixel + j;
                    int oy = pixel / out_width, ox0 = pixel - oy * out_width;
                    int seg = out_width - ox0 < count - j ? out_width - ox0 : count - j;
                    float *dst = row + j; /* dst[ox - ox0] for ox in [ox0, ox0 + seg) */
                    int iy = oy * s->stride - s->pad_top + ky;
                    int a = lo > ox0 ? lo : ox0, b = hi < ox0 + seg ? hi : ox0 + seg;
                    if (iy < 0 || iy >= s->height || a >= b) {
                        memset(dst, 0, sizeof(float) * (size_t)seg);
                    } else {
                        /* input column of ox: ox * stride + shift, inside the row for ox in [a, b) */
                        const float *src = channel + (size_t)iy * s->width;
                        const int shift = kx - s->pad_left;
                        memset(dst, 0, sizeof(float) * (size_t)(a - ox0));
                        if (s->stride == 1) {
                            memcpy(dst + (a - ox0), src + (a + shift), sizeof(float) * (size_t)(b - a));
                        } else {
                            for (int ox = a; ox < b; ox++) dst[ox - ox0] = src[ox * s->stride + shift];
                        }
                        memset(dst + (b - ox0), 0, sizeof(float) * (size_t)(ox0 + seg - b));
                    }
                    j += seg;
                }
            }
    }
}

/* The adjoint of im2col_tile: plane[...] += columns[...] for the same index map. */
static void col2im_tile_accumulate(float *plane, const float *columns, const conv2d_dims *s, int first_channel,
                                   int channel_count, int first_pixel, int count) {
    const int k = s->kernel, out_width = conv2d_out_width(s);
    for (int c = 0; c < channel_count; c++) {
        float *channel = plane + (size_t)(first_channel + c) * s->height * s->width;
        for (int ky = 0; ky < k; ky++)
            for (int kx = 0; kx < k; kx++) {
                const float *row = columns + ((size_t)(c * k + ky) * k + kx) * count;
                int lo, hi;
                valid_columns(s, kx, out_width, &lo, &hi);
                for (int j = 0; j < count;) {
                    int pixel = first_pixel + j;
                    int oy = pixel / out_width, ox0 = pixel - oy * out_width;
                    int seg = out_width - ox0 < count - j ? out_width - ox0 : count - j;
                    const float *src = row + j; /* src[ox - ox0] */
                    int iy = oy * s->stride - s->pad_top + ky;
                    int a = lo > ox0 ? lo : ox0, b = hi < ox0 + seg ? hi : ox0 + seg;
                    if (iy >= 0 && iy < s->height && a < b) {
                        float *dst = channel + (size_t)iy * s->width;
                        const int shift = kx - s->pad_left;
                        for (int ox = a; ox < b; ox++) dst[ox * s->stride + shift] += src[ox - ox0];
                    }
                    j += seg;
                }
            }
    }
}

void conv2d_forward(float *out, const float *in, const float *weight, const float *bias,
                    const conv2d_dims *s, float *scratch, size_t scratch_floats) {
    check_shape(s, "conv2d_forward");
    ops_blas_single_threaded();
    const int pixels = conv2d_out_height(s) * conv2d_out_width(s);
    const int in_pixels = s->height * s->width;
    const int patch = s->in_channels * s->kernel * s->kernel; /* rows of the column matrix */
    const int tile = pixel_tile(s);
    const int tiles = (pixels + tile - 1) / tile;
    const int pieces = s->batch * tiles;
    const int pointwise = is_pointwise(s);
    const int threads = pointwise ? omp_get_max_threads() : scratch_threads(s, scratch_floats, "conv2d_forward");
#pragma omp parallel num_threads(threads)
    {
        float *columns = pointwise ? NULL : scratch + (size_t)omp_get_thread_num() * slot_floats(s);
#pragma omp for schedule(static)
        for (int piece = 0; piece < pieces; piece++) {
            int b = piece / tiles, p0 = (piece % tiles) * tile;
            int count = pixels - p0 < tile ? pixels - p0 : tile;
            const float *plane = in + (size_t)b * s->in_channels * in_pixels;
            float *dst = out + (size_t)b * s->out_channels * pixels + p0; /* (Cout, count), stride pixels */
            const float *cols;
            int ld_cols;
            if (pointwise) {
                cols = plane + p0;
                ld_cols = in_pixels;
            } else {
                im2col_tile(columns, plane, s, 0, s->in_channels, p0, count);
                cols = columns;
                ld_cols = count;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s->out_channels, count, patch, 1.0f, weight,
                        patch, cols, ld_cols, 0.0f, dst, pixels);
            if (bias)
                for (int co = 0; co < s->out_channels; co++) {
                    float *row = dst + (size_t)co * pixels;
                    for (int j = 0; j < count; j++) row[j] += bias[co];
                }
        }
    }
}

/* d_bias[co] += sum over samples (in order) and pixels of d_out[b, co, :]. */
static void conv2d_bias_backward(float *d_bias, const float *d_out, const conv2d_dims *s, int pixels) {
#pragma omp parallel for schedule(static)
    for (int co = 0; co < s->out_channels; co++) {
        double sum = 0.0;
        for (int b = 0; b < s->batch; b++) {
            const float *row = d_out + ((size_t)b * s->out_channels + co) * pixels;
            for (int j = 0; j < pixels; j++) sum += row[j];
        }
        d_bias[co] += (float)sum;
    }
}

static void conv2d_weight_backward(float *d_weight, const float *d_out, const float *in, const conv2d_dims *s,
                                   float *scratch, int threads) {
    const int pixels = conv2d_out_height(s) * conv2d_out_width(s);
    const int in_pixels = s->height * s->width;
    const int kk = s->kernel * s->kernel, patch = s->in_channels * kk;
    const int tile = pixel_tile(s);
    const int block = channels_per_block(s);
    const int blocks = (s->in_channels + block - 1) / block;
    const int pointwise = is_pointwise(s);
#pragma omp parallel num_threads(threads)
    {
        float *columns = pointwise ? NULL : scratch + (size_t)omp_get_thread_num() * slot_floats(s);
#pragma omp for schedule(static)
        for (int blk = 0; blk < blocks; blk++) {
            int c0 = blk * block, nc = s->in_channels - c0 < block ? s->in_channels - c0 : block;
            float *dw = d_weight + (size_t)c0 * kk; /* (Cout, nc k k), stride patch */
            for (int b = 0; b < s->batch; b++) {
                const float *plane = in + (size_t)b * s->in_channels * in_pixels;
                const float *g = d_out + (size_t)b * s->out_channels * pixels; /* (Cout, pixels) */
                if (pointwise) {
                    /* dw (Cout, nc) += g (Cout, pixels) @ in[b, c0:c0+nc]^T */
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s->out_channels, nc, pixels, 1.0f, g,
                                pixels, plane + (size_t)c0 * in_pixels, in_pixels, 1.0f, dw, patch);
                    continue;
                }
                for (int p0 = 0; p0 < pixels; p0 += tile) {
                    int count = pixels - p0 < tile ? pixels - p0 : tile;
                    im2col_tile(columns, plane, s, c0, nc, p0, count);
                    /* dw (Cout, nc k k) += g[:, tile] (Cout, count) @ columns^T (count, nc k k) */
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s->out_channels, nc * kk, count, 1.0f,
                                g + p0, pixels, columns, count, 1.0f, dw, patch);
                }
            }
        }
    }
}

static void conv2d_input_backward(float *d_in, float d_in_beta, const float *d_out, const float *weight,
                                  const conv2d_dims *s, float *scratch, int threads) {
    const int pixels = conv2d_out_height(s) * conv2d_out_width(s);
    const int in_pixels = s->height * s->width;
    const int kk = s->kernel * s->kernel, patch = s->in_channels * kk;
    const int tile = pixel_tile(s);
    const int tiles = (pixels + tile - 1) / tile;
    if (is_pointwise(s)) {
        /* d_in[b, :, tile] = beta d_in[b, :, tile] + weight^T (Cin, Cout) @ d_out[b, :, tile] */
        const int pieces = s->batch * tiles;
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int piece = 0; piece < pieces; piece++) {
            int b = piece / tiles, p0 = (piece % tiles) * tile;
            int count = pixels - p0 < tile ? pixels - p0 : tile;
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, s->in_channels, count, s->out_channels, 1.0f,
                        weight, s->in_channels, d_out + (size_t)b * s->out_channels * pixels + p0, pixels,
                        d_in_beta, d_in + (size_t)b * s->in_channels * in_pixels + p0, in_pixels);
        }
        return;
    }
    const int block = channels_per_block(s);
    const int blocks = (s->in_channels + block - 1) / block;
    const int pieces = s->batch * blocks;
#pragma omp parallel num_threads(threads)
    {
        float *columns = scratch + (size_t)omp_get_thread_num() * slot_floats(s);
#pragma omp for schedule(static)
        for (int piece = 0; piece < pieces; piece++) {
            int b = piece / blocks, c0 = (piece % blocks) * block;
            int nc = s->in_channels - c0 < block ? s->in_channels - c0 : block;
            float *plane = d_in + (size_t)b * s->in_channels * in_pixels;
            float *mine = plane + (size_t)c0 * in_pixels; /* (nc, height, width) */
            size_t mine_count = (size_t)nc * in_pixels;
            if (d_in_beta == 0.0f) {
                memset(mine, 0, sizeof(float) * mine_count); /* overwrite, whatever was there */
            } else if (d_in_beta != 1.0f) {
                for (size_t i = 0; i < mine_count; i++) mine[i] *= d_in_beta;
            }
            const float *g = d_out + (size_t)b * s->out_channels * pixels;
            for (int p0 = 0; p0 < pixels; p0 += tile) {
                int count = pixels - p0 < tile ? pixels - p0 : tile;
                /* columns (nc k k, count) = weight[:, c0 k k : (c0 + nc) k k]^T @ g[:, tile] */
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nc * kk, count, s->out_channels, 1.0f,
                            weight + (size_t)c0 * kk, patch, g + p0, pixels, 0.0f, columns, count);
                col2im_tile_accumulate(plane, columns, s, c0, nc, p0, count);
            }
        }
    }
}

void conv2d_backward(float *d_in, float d_in_beta, float *d_weight, float *d_bias,
                     const float *d_out, const float *in, const float *weight,
                     const conv2d_dims *s, float *scratch, size_t scratch_floats) {
    check_shape(s, "conv2d_backward");
    ops_blas_single_threaded();
    const int threads = is_pointwise(s) ? omp_get_max_threads() : scratch_threads(s, scratch_floats, "conv2d_backward");
    if (d_bias) conv2d_bias_backward(d_bias, d_out, s, conv2d_out_height(s) * conv2d_out_width(s));
    if (d_weight) conv2d_weight_backward(d_weight, d_out, in, s, scratch, threads);
    if (d_in) conv2d_input_backward(d_in, d_in_beta, d_out, weight, s, scratch, threads);
}

void upsample_nearest2x_forward(float *out, const float *in, int batch, int channels, int height, int width) {
    const int planes = batch * channels, out_width = 2 * width;
#pragma omp parallel for schedule(static)
    for (int p = 0; p < planes; p++) {
        const float *src = in + (size_t)p * height * width;
        float *dst = out + (size_t)p * 4 * height * width;
        for (int y = 0; y < height; y++) {
            float *row = dst + (size_t)(2 * y) * out_width;
            for (int x = 0; x < width; x++) row[2 * x] = row[2 * x + 1] = src[(size_t)y * width + x];
            memcpy(row + out_width, row, sizeof(float) * (size_t)out_width);
        }
    }
}

void upsample_nearest2x_backward(float *d_in, const float *d_out, int batch, int channels, int height, int width) {
    const int planes = batch * channels, out_width = 2 * width;
#pragma omp parallel for schedule(static)
    for (int p = 0; p < planes; p++) {
        const float *src = d_out + (size_t)p * 4 * height * width;
        float *dst = d_in + (size_t)p * height * width;
        for (int y = 0; y < height; y++) {
            const float *top = src + (size_t)(2 * y) * out_width, *bottom = top + out_width;
            for (int x = 0; x < width; x++)
                dst[(size_t)y * width + x] = (top[2 * x] + top[2 * x + 1]) + (bottom[2 * x] + bottom[2 * x + 1]);
        }
    }
}

/* dst (batch, cols, rows) = src (batch, rows, cols) transposed per sample, in
 * 32x32 blocks so that both sides are read and written a cache line at a time. */
static void transpose_per_sample(float *dst, const float *src, int batch, int rows, int cols) {
    enum { BLOCK = 32 };
    const int row_blocks = (rows + BLOCK - 1) / BLOCK;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < batch; b++)
        for (int rb = 0; rb < row_blocks; rb++) {
            const float *s = src + (size_t)b * rows * cols;
            float *d = dst + (size_t)b * rows * cols;
            int r0 = rb * BLOCK, r1 = r0 + BLOCK < rows ? r0 + BLOCK : rows;
            for (int c0 = 0; c0 < cols; c0 += BLOCK) {
                int c1 = c0 + BLOCK < cols ? c0 + BLOCK : cols;
                for (int c = c0; c < c1; c++)
                    for (int r = r0; r < r1; r++) d[(size_t)c * rows + r] = s[(size_t)r * cols + c];
            }
        }
}

void transpose_channels_tokens_forward(float *out, const float *in, int batch, int channels, int tokens) {
    transpose_per_sample(out, in, batch, channels, tokens);
}

void transpose_channels_tokens_backward(float *d_in, const float *d_out, int batch, int channels, int tokens) {
    transpose_per_sample(d_in, d_out, batch, tokens, channels);
}

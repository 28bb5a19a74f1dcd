/* 2-D convolution forward and backward, nearest 2x upsampling and the
 * (channels, tokens) transpose on the GPU: the CUDA side of ops_conv.c
 * (GroupNorm is in ops_cuda_groupnorm.cu).
 *
 * The convolution is im2col + GEMM, cut into chunks that fit the caller's
 * scratch (the plan below depends only on the shape and the scratch size, so a
 * call is repeatable bit for bit):
 * - a chunk is either several whole samples or, when one sample's columns do not
 *   fit, a band of output rows of one sample;
 * - forward: the chunk's columns (samples, Cin k k, pixels of the band) are
 *   unfolded into scratch, and one strided-batched GEMM (the weight shared,
 *   batch stride 0) writes out[b, :, band] = weight (Cout, Cin k k) @ columns;
 *   the bias is added afterwards in one elementwise pass;
 * - d_weight, when the scratch holds two samples' columns and output gradients
 *   or more: one GEMM per group of samples (the whole batch when the scratch is
 *   what conv2d_scratch_floats_cuda asks for and fits): the group's columns are
 *   unfolded sample-interleaved, (patch, samples, pixels), its d_out is gathered
 *   into (Cout, samples, pixels) beside them, and d_weight += d_out @ columns^T
 *   sums over samples and pixels in one K = samples * pixels reduction (groups
 *   in order with beta 1: no atomics). A 1x1 stride-1 convolution gathers its
 *   input the same way when the scratch it is given allows. With less scratch:
 *   the chunks above, one GEMM per sample of a chunk (per band of a sample);
 * - d_in: the column gradient weight^T @ d_out[b, :, band] goes to scratch, and a
 *   gather (col2im read from the input side) sums, for every input value, the
 *   column entries that came from it, in a fixed (ky, kx) order, and writes it:
 *   no scatter, no atomics. The first band of a sample covers every input row
 *   (applying d_in_beta, so rows no output reads are written too); later bands
 *   add to the input rows they reach;
 * - d_bias: one block per output channel, summing in double like the CPU.
 * A 1x1 convolution with stride 1 and no padding reads the input (and writes
 * d_in) directly as its column matrix: no scratch, one batched GEMM per pass. */
#include "cuda_device.cuh"

extern "C" {
#include "ops_cuda_conv.h"
}

/* The scratch conv2d_scratch_floats_cuda asks for: 32 MiB of columns, enough for
 * GEMMs a few thousand pixels wide at 512 channels. */
#define CONV_SCRATCH_TARGET_FLOATS ((size_t)1 << 23)
#define BIAS_GRADIENT_THREADS 256
/* The transpose's tiles: TRANSPOSE_TILE x TRANSPOSE_TILE values per block of
 * (TRANSPOSE_TILE, TRANSPOSE_ROWS) threads. */
#define TRANSPOSE_TILE 32
#define TRANSPOSE_ROWS 8
/* The weight gradient's gathered d_out starts this many floats (256 bytes) past
 * a multiple of them after the columns, so its GEMM operand is aligned as well. */
#define CONV_GROUP_ALIGN_FLOATS 64
/* The most samples one launch takes on grid.z (CUDA's limit on that axis). */
#define MAX_GRID_Z 65535

/* The shape as the kernels read it (passed by value). */
typedef struct {
    int in_channels, out_channels;
    int height, width;         /* of the input */
    int out_height, out_width; /* of the output */
    int kernel, stride, pad_top, pad_left;
    int patch; /* rows of the column matrix: in_channels * kernel * kernel */
} conv_geometry;

/* How one call is cut into chunks. */
typedef struct {
    conv_geometry g;
    int batch;
    int pixels, in_pixels; /* per channel: out_height * out_width, height * width */
    int pointwise;         /* 1x1, stride 1, unpadded: no columns */
    int samples_per_chunk; /* more than 1 only when rows_per_chunk == out_height */
    int rows_per_chunk;    /* output rows per chunk */
} conv_plan;

static void check_shape(const conv2d_dims *s, const char *op) {
    if (s->batch < 0 || s->in_channels < 1 || s->out_channels < 1 || s->kernel < 1 || s->stride < 1 ||
        s->pad_top < 0 || s->pad_bottom < 0 || s->pad_left < 0 || s->pad_right < 0 ||
        s->height + s->pad_top + s->pad_bottom < s->kernel || s->width + s->pad_left + s->pad_right < s->kernel)
        fatal_internal("%s: bad shape (batch %d, %d -> %d channels, %dx%d, kernel %d, stride %d, pad %d %d %d %d)",
                       op, s->batch, s->in_channels, s->out_channels, s->height, s->width, s->kernel, s->stride,
                       s->pad_top, s->pad_bottom, s->pad_left, s->pad_right);
}

static int is_pointwise(const conv2d_dims *s) {
    return s->kernel == 1 && s->stride == 1 && s->pad_top == 0 && s->pad_bottom == 0 && s->pad_left == 0 &&
           s->pad_right == 0;
}

static conv_geometry geometry_of(const conv2d_dims *s) {
    conv_geometry g;
    g.in_channels = s->in_channels;
    g.out_channels = s->out_channels;
    g.height = s->height;
    g.width = s->width;
    g.out_height = conv2d_out_height(s);
    g.out_width = conv2d_out_width(s);
    g.kernel = s->kernel;
    g.stride = s->stride;
    g.pad_top = s->pad_top;
    g.pad_left = s->pad_left;
    g.patch = s->in_channels * s->kernel * s->kernel;
    return g;
}

/* Floats of columns for one output row, and for one whole sample. */
static size_t row_floats(const conv_geometry *g) { return (size_t)g->patch * g->out_width; }
static size_t sample_floats(const conv_geometry *g) { return row_floats(g) * g->out_height; }

extern "C" size_t conv2d_scratch_floats_cuda(const conv2d_dims *shape) {
    check_shape(shape, "conv2d_scratch_floats_cuda");
    if (is_pointwise(shape)) return 0;
    const conv_geometry g = geometry_of(shape);
    const size_t per_row = row_floats(&g), per_sample = sample_floats(&g);
    const size_t batch = shape->batch > 0 ? (size_t)shape->batch : 1;
    /* two samples or more with their output gradients beside their columns: the
     * weight gradient in one GEMM per group of them */
    const size_t with_gradient = per_sample + (size_t)g.out_channels * g.out_height * g.out_width;
    const size_t group_target = CONV_SCRATCH_TARGET_FLOATS - CONV_GROUP_ALIGN_FLOATS;
    if (batch > 1 && 2 * with_gradient <= group_target) {
        if (with_gradient * batch <= group_target) return with_gradient * batch + CONV_GROUP_ALIGN_FLOATS;
        return group_target / with_gradient * with_gradient + CONV_GROUP_ALIGN_FLOATS;
    }
    if (per_sample <= CONV_SCRATCH_TARGET_FLOATS) return CONV_SCRATCH_TARGET_FLOATS / per_sample * per_sample;
    const size_t rows = CONV_SCRATCH_TARGET_FLOATS / per_row;
    return (rows > 0 ? rows : 1) * per_row;
}

static conv_plan plan_of(const conv2d_dims *s, const float *scratch, size_t scratch_floats, const char *op) {
    check_shape(s, op);
    conv_plan p;
    p.g = geometry_of(s);
    p.batch = s->batch;
    p.pixels = p.g.out_height * p.g.out_width;
    p.in_pixels = s->height * s->width;
    p.pointwise = is_pointwise(s);
    p.samples_per_chunk = s->batch;
    p.rows_per_chunk = p.g.out_height;
    if (p.pointwise || p.batch == 0) return p; /* no scratch needed (batch 0: nothing to do) */
    const size_t per_row = row_floats(&p.g), per_sample = sample_floats(&p.g);
    if (!scratch || scratch_floats < per_row)
        fatal_internal("%s: scratch of %zu floats is less than one output row's columns (%zu)", op,
                       scratch ? scratch_floats : (size_t)0, per_row);
    if (scratch_floats >= per_sample) {
        size_t samples = scratch_floats / per_sample;
        p.samples_per_chunk = samples < (size_t)s->batch ? (int)samples : s->batch;
    } else {
        p.samples_per_chunk = 1;
        p.rows_per_chunk = (int)(scratch_floats / per_row); /* < out_height here */
    }
    return p;
}

/* One chunk: samples [first_sample, first_sample + samples), output rows
 * [first_row, first_row + rows); count = rows * out_width pixels per sample. */
typedef struct {
    int first_sample, samples, first_row, rows, count;
} conv_chunk;

/* Calls body(chunk) for every chunk of the plan, samples and bands in order. */
template <typename Body> static void for_each_chunk(const conv_plan *p, Body body) {
    for (int s0 = 0; s0 < p->batch; s0 += p->samples_per_chunk) {
        const int samples = p->batch - s0 < p->samples_per_chunk ? p->batch - s0 : p->samples_per_chunk;
        for (int r0 = 0; r0 < p->g.out_height; r0 += p->rows_per_chunk) {
            const int rows = p->g.out_height - r0 < p->rows_per_chunk ? p->g.out_height - r0 : p->rows_per_chunk;
            const conv_chunk chunk = {s0, samples, r0, rows, rows * p->g.out_width};
            body(chunk);
        }
    }
}

/* columns[sample * sample_stride + row * row_stride + j] (row < patch, j < count):
 * the input patch of every pixel of the band starting at output row first_row;
 * (samples, patch, count) with strides (patch * count, count), or
 * sample-interleaved (patch, samples, count) with strides (count, samples *
 * count). in points at the chunk's first sample, (samples, in_channels, height,
 * width). Zero where the patch lies in the padding. With a 1x1 stride-1
 * unpadded geometry it is a gather of (samples, channels, pixels). */
__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
im2col_kernel(float *columns, const float *in, conv_geometry g, int first_row, int count, size_t sample_stride,
              size_t row_stride, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) {
        const int j = (int)(i % (size_t)count); /* pixel of the band */
        const size_t sample_row = i / (size_t)count;
        const int row = (int)(sample_row % (size_t)g.patch);
        const size_t sample = sample_row / (size_t)g.patch;
        const int channel = row / (g.kernel * g.kernel), within = row % (g.kernel * g.kernel);
        const int ky = within / g.kernel, kx = within % g.kernel;
        const int oy = first_row + j / g.out_width, ox = j % g.out_width;
        const int iy = oy * g.stride - g.pad_top + ky, ix = ox * g.stride - g.pad_left + kx;
        float value = 0.0f;
        if (iy >= 0 && iy < g.height && ix >= 0 && ix < g.width)
            value = in[((sample * g.in_channels + channel) * g.height + iy) * g.width + ix];
        columns[sample * sample_stride + (size_t)row * row_stride + (size_t)j] = value;
    }
}

/* The adjoint of im2col_kernel, as a gather: for the input rows
 * [first_input_row, first_input_row + input_rows) of the chunk's samples,
 * d_in = keep * d_in + (the sum, in (ky, kx) order, of the column entries taken
 * from that input value by the band at output row first_row, rows long);
 * keep 0 does not read d_in. d_in points at the chunk's first sample. */
__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
col2im_kernel(float *d_in, float keep, const float *columns, conv_geometry g, int first_row,
              int rows, int first_input_row, int input_rows, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) {
        const int ix = (int)(i % (size_t)g.width);
        size_t rest = i / (size_t)g.width;
        const int iy = first_input_row + (int)(rest % (size_t)input_rows);
        rest /= (size_t)input_rows;
        const int channel = (int)(rest % (size_t)g.in_channels);
        const size_t sample = rest / (size_t)g.in_channels;
        const int count = rows * g.out_width;
        /* this sample's rows of the channel's k x k column rows */
        const float *channel_columns = columns + (sample * g.patch + (size_t)channel * g.kernel * g.kernel) * count;
        float sum = 0.0f;
        for (int ky = 0; ky < g.kernel; ky++) {
            const int ty = iy + g.pad_top - ky; /* = oy * stride for the output row that reads iy through ky */
            if (ty < 0 || ty % g.stride != 0) continue;
            const int oy = ty / g.stride - first_row;
            if (oy < 0 || oy >= rows) continue;
            for (int kx = 0; kx < g.kernel; kx++) {
                const int tx = ix + g.pad_left - kx;
                if (tx < 0 || tx % g.stride != 0) continue;
                const int ox = tx / g.stride;
                if (ox >= g.out_width) continue;
                sum += channel_columns[(size_t)(ky * g.kernel + kx) * count + (size_t)oy * g.out_width + ox];
            }
        }
        float *target = d_in + ((sample * g.in_channels + channel) * g.height + iy) * g.width + ix;
        /* keep 0 must not read d_in: it may hold anything, also NaN */
        *target = keep == 0.0f ? sum : keep * *target + sum;
    }
}

/* out (batch, channels, pixels) += bias[channel]. */
__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
add_channel_bias_kernel(float *out, const float *bias, int channels, int pixels, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) out[i] += bias[(i / (size_t)pixels) % (size_t)channels];
}

/* d_bias[channel] += the sum of d_out[b, channel, :] over b and pixels, in double;
 * one block per channel. */
__global__ static void __launch_bounds__(BIAS_GRADIENT_THREADS)
bias_gradient_kernel(float *d_bias, const float *d_out, int batch, int channels, int pixels) {
    const int channel = blockIdx.x;
    const size_t n = (size_t)batch * pixels;
    double sum = 0.0;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) {
        const size_t b = i / (size_t)pixels, p = i % (size_t)pixels;
        sum += d_out[(b * channels + channel) * pixels + p];
    }
    sum = block_sum(sum);
    if (threadIdx.x == 0) d_bias[channel] += (float)sum;
}

static void im2col(float *columns, const float *in, const conv_plan *p, const conv_chunk *c, cudaStream_t stream) {
    const float *first = in + (size_t)c->first_sample * p->g.in_channels * p->in_pixels;
    CUDA_LAUNCH_ELEMENTWISE(im2col_kernel, (size_t)c->samples * p->g.patch * c->count, stream, columns, first, p->g,
                            c->first_row, c->count, (size_t)p->g.patch * c->count, (size_t)c->count);
}

/* dst (channels, samples, pixels) = src (samples, channels, pixels): im2col's
 * sample-interleaved gather with a 1x1 geometry. */
static void gather_channels_by_sample(float *dst, const float *src, int samples, int channels, int height, int width,
                                      cudaStream_t stream) {
    conv_geometry g;
    g.in_channels = g.out_channels = g.patch = channels;
    g.height = g.out_height = height;
    g.width = g.out_width = width;
    g.kernel = g.stride = 1;
    g.pad_top = g.pad_left = 0;
    const size_t pixels = (size_t)height * width;
    CUDA_LAUNCH_ELEMENTWISE(im2col_kernel, (size_t)samples * channels * pixels, stream, dst, src, g, 0, (int)pixels,
                            pixels, (size_t)samples * pixels);
}

/* Samples per group of the one-GEMM weight gradient in scratch_floats: each
 * needs its columns and its output gradient; 0 when fewer than two fit. */
static int weight_group_samples(const conv_plan *p, size_t scratch_floats) {
    const size_t per_sample = (size_t)(p->g.patch + p->g.out_channels) * p->pixels;
    if (scratch_floats < CONV_GROUP_ALIGN_FLOATS) return 0;
    size_t samples = (scratch_floats - CONV_GROUP_ALIGN_FLOATS) / per_sample;
    if (samples > (size_t)p->batch) samples = (size_t)p->batch;
    return samples >= 2 ? (int)samples : 0;
}

extern "C" void conv2d_forward_cuda(gemm_cuda_context *ctx, float *out, const float *in, const float *weight,
                                    const float *bias, const conv2d_dims *shape, float *scratch, size_t scratch_floats,
                                    ldm_stream stream) {
    const conv_plan p = plan_of(shape, scratch, scratch_floats, "conv2d_forward_cuda");
    if (p.batch == 0) return;
    const conv_geometry *g = &p.g;
    const long long out_stride = (long long)g->out_channels * p.pixels;
    if (p.pointwise) {
        /* out[b] (Cout, pixels) = weight (Cout, Cin) @ in[b] (Cin, pixels), every sample at once */
        gemm_cuda_strided_batched(ctx, 0, 0, g->out_channels, p.pixels, g->in_channels, 1.0f, weight, g->in_channels,
                                  0, in, p.in_pixels, (long long)g->in_channels * p.in_pixels, 0.0f, out, p.pixels,
                                  out_stride, p.batch, stream);
    } else {
        for_each_chunk(&p, [&](const conv_chunk &c) {
            im2col(scratch, in, &p, &c, stream);
            /* out[b, :, band] (Cout, count) = weight (Cout, patch) @ columns[b] (patch, count) */
            float *first = out + (size_t)c.first_sample * out_stride + (size_t)c.first_row * g->out_width;
            gemm_cuda_strided_batched(ctx, 0, 0, g->out_channels, c.count, g->patch, 1.0f, weight, g->patch, 0,
                                      scratch, c.count, (long long)g->patch * c.count, 0.0f, first, p.pixels,
                                      out_stride, c.samples, stream);
        });
    }
    if (bias)
        CUDA_LAUNCH_ELEMENTWISE(add_channel_bias_kernel, (size_t)p.batch * out_stride, stream, out, bias,
                                g->out_channels, p.pixels);
}

static void conv2d_bias_backward(float *d_bias, const float *d_out, const conv_plan *p, cudaStream_t stream) {
    CUDA_LAUNCH_KERNEL(bias_gradient_kernel, p->g.out_channels, BIAS_GRADIENT_THREADS, stream, d_bias, d_out, p->batch,
                       p->g.out_channels, p->pixels);
    CUDA_CHECK_LAUNCH("bias_gradient_kernel");
}

static void conv2d_weight_backward(gemm_cuda_context *ctx, float *d_weight, const float *d_out, const float *in,
                                   const conv_plan *p, float *scratch, size_t scratch_floats, cudaStream_t stream) {
    const conv_geometry *g = &p->g;
    const size_t out_stride = (size_t)g->out_channels * p->pixels;
    const int group = scratch ? weight_group_samples(p, scratch_floats) : 0;
    if (group) {
        for (int s0 = 0; s0 < p->batch; s0 += group) {
            const int samples = p->batch - s0 < group ? p->batch - s0 : group;
            const size_t k = (size_t)samples * p->pixels; /* the reduction: samples x pixels */
            const size_t columns_floats = (size_t)g->patch * k;
            float *columns = scratch;
            float *gradient = scratch + (columns_floats + CONV_GROUP_ALIGN_FLOATS - 1) / CONV_GROUP_ALIGN_FLOATS *
                                            CONV_GROUP_ALIGN_FLOATS;
            const float *first_in = in + (size_t)s0 * g->in_channels * p->in_pixels;
            if (p->pointwise) {
                gather_channels_by_sample(columns, first_in, samples, g->in_channels, g->height, g->width, stream);
            } else {
                CUDA_LAUNCH_ELEMENTWISE(im2col_kernel, (size_t)samples * g->patch * p->pixels, stream, columns,
                                        first_in, *g, 0, p->pixels, (size_t)p->pixels, k);
            }
            gather_channels_by_sample(gradient, d_out + (size_t)s0 * out_stride, samples, g->out_channels,
                                      g->out_height, g->out_width, stream);
            /* d_weight (Cout, patch) += gradient (Cout, k) @ columns^T (k, patch) */
            gemm_cuda_strided_batched(ctx, 0, 1, g->out_channels, g->patch, (int)k, 1.0f, gradient, (int)k, 0,
                                      columns, (int)k, 0, 1.0f, d_weight, g->patch, 0, 1, stream);
        }
        return;
    }
    if (p->pointwise) {
        /* d_weight (Cout, Cin) += d_out[b] (Cout, pixels) @ in[b]^T (pixels, Cin), samples in order */
        for (int b = 0; b < p->batch; b++)
            gemm_cuda_strided_batched(ctx, 0, 1, g->out_channels, g->in_channels, p->pixels, 1.0f,
                                      d_out + (size_t)b * out_stride, p->pixels, 0,
                                      in + (size_t)b * g->in_channels * p->in_pixels, p->in_pixels, 0, 1.0f, d_weight,
                                      g->in_channels, 0, 1, stream);
        return;
    }
    for_each_chunk(p, [&](const conv_chunk &c) {
        im2col(scratch, in, p, &c, stream);
        for (int s = 0; s < c.samples; s++) {
            /* d_weight (Cout, patch) += d_out[b, :, band] (Cout, count) @ columns[s]^T (count, patch) */
            const float *gradient =
                d_out + (size_t)(c.first_sample + s) * out_stride + (size_t)c.first_row * g->out_width;
            gemm_cuda_strided_batched(ctx, 0, 1, g->out_channels, g->patch, c.count, 1.0f, gradient, p->pixels, 0,
                                      scratch + (size_t)s * g->patch * c.count, c.count, 0, 1.0f, d_weight, g->patch,
                                      0, 1, stream);
        }
    });
}

static void conv2d_input_backward(gemm_cuda_context *ctx, float *d_in, float d_in_beta, const float *d_out,
                                  const float *weight, const conv_plan *p, float *scratch, cudaStream_t stream) {
    const conv_geometry *g = &p->g;
    const long long out_stride = (long long)g->out_channels * p->pixels;
    const long long in_stride = (long long)g->in_channels * p->in_pixels;
    if (p->pointwise) {
        /* d_in[b] (Cin, pixels) = beta d_in[b] + weight^T (Cin, Cout) @ d_out[b] (Cout, pixels) */
        gemm_cuda_strided_batched(ctx, 1, 0, g->in_channels, p->pixels, g->out_channels, 1.0f, weight, g->in_channels,
                                  0, d_out, p->pixels, out_stride, d_in_beta, d_in, p->pixels, in_stride, p->batch,
                                  stream);
        return;
    }
    for_each_chunk(p, [&](const conv_chunk &c) {
        /* columns[b] (patch, count) = weight^T (patch, Cout) @ d_out[b, :, band] (Cout, count) */
        const float *gradient = d_out + (size_t)c.first_sample * out_stride + (size_t)c.first_row * g->out_width;
        gemm_cuda_strided_batched(ctx, 1, 0, g->patch, c.count, g->out_channels, 1.0f, weight, g->patch, 0, gradient,
                                  p->pixels, out_stride, 0.0f, scratch, c.count, (long long)g->patch * c.count,
                                  c.samples, stream);
        /* The first band of a sample writes every input row (with beta); later
         * bands add to the rows their patches reach. */
        int first_input_row = 0, end_input_row = g->height;
        float keep = d_in_beta;
        if (c.first_row > 0) {
            keep = 1.0f;
            first_input_row = c.first_row * g->stride - g->pad_top;
            end_input_row = (c.first_row + c.rows - 1) * g->stride - g->pad_top + g->kernel;
            if (first_input_row < 0) first_input_row = 0;
            if (end_input_row > g->height) end_input_row = g->height;
        }
        if (end_input_row <= first_input_row) return;
        const int input_rows = end_input_row - first_input_row;
        CUDA_LAUNCH_ELEMENTWISE(col2im_kernel, (size_t)c.samples * g->in_channels * input_rows * g->width, stream,
                                d_in + (size_t)c.first_sample * in_stride, keep, scratch, *g, c.first_row, c.rows,
                                first_input_row, input_rows);
    });
}

extern "C" void conv2d_backward_cuda(gemm_cuda_context *ctx, float *d_in, float d_in_beta, float *d_weight,
                                     float *d_bias, const float *d_out, const float *in, const float *weight,
                                     const conv2d_dims *shape, float *scratch, size_t scratch_floats,
                                     ldm_stream stream) {
    const conv_plan p = plan_of(shape, scratch, scratch_floats, "conv2d_backward_cuda");
    if (p.batch == 0) return;
    if (d_bias) conv2d_bias_backward(d_bias, d_out, &p, stream);
    if (d_weight) conv2d_weight_backward(ctx, d_weight, d_out, in, &p, scratch, scratch_floats, stream);
    if (d_in) conv2d_input_backward(ctx, d_in, d_in_beta, d_out, weight, &p, scratch, stream);
}

/* ---- nearest 2x upsampling: elementwise over the larger side ---- */

/* out (planes, 2 height, 2 width)[y, x] = in (planes, height, width)[y / 2, x / 2]. */
__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
upsample_forward_kernel(float *out, const float *in, int height, int width, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) {
        const size_t out_width = 2 * (size_t)width;
        const size_t x = i % out_width, rest = i / out_width;
        const size_t y = rest % (2 * (size_t)height), plane = rest / (2 * (size_t)height);
        out[i] = in[(plane * height + y / 2) * width + x / 2];
    }
}

/* d_in[y, x] = (top left + top right) + (bottom left + bottom right) of the 2x2
 * block of d_out: the CPU's order, so the result is bit-identical. */
__global__ static void __launch_bounds__(CUDA_ELEMENTWISE_THREADS)
upsample_backward_kernel(float *d_in, const float *d_out, int height, int width, size_t n) {
    CUDA_FOR_EACH_INDEX(i, n) {
        const size_t x = i % (size_t)width, rest = i / (size_t)width;
        const size_t y = rest % (size_t)height, plane = rest / (size_t)height;
        const size_t out_width = 2 * (size_t)width;
        const float *top = d_out + (plane * 2 * height + 2 * y) * out_width + 2 * x, *bottom = top + out_width;
        d_in[i] = (top[0] + top[1]) + (bottom[0] + bottom[1]);
    }
}

static size_t plane_elements(int batch, int channels, int height, int width) {
    if (batch <= 0 || channels <= 0 || height <= 0 || width <= 0) return 0;
    return (size_t)batch * channels * height * width;
}

extern "C" void upsample_nearest2x_forward_cuda(float *out, const float *in, int batch, int channels, int height,
                                                int width, ldm_stream stream) {
    CUDA_LAUNCH_ELEMENTWISE(upsample_forward_kernel, 4 * plane_elements(batch, channels, height, width), stream, out,
                            in, height, width);
}

extern "C" void upsample_nearest2x_backward_cuda(float *d_in, const float *d_out, int batch, int channels,
                                                 int height, int width, ldm_stream stream) {
    CUDA_LAUNCH_ELEMENTWISE(upsample_backward_kernel, plane_elements(batch, channels, height, width), stream, d_in,
                            d_out, height, width);
}

/* ---- the per-sample transpose ---- */

/* dst (batch, cols, rows) = src (batch, rows, cols) transposed; one block per
 * TRANSPOSE_TILE x TRANSPOSE_TILE tile (blockIdx.x = row tile * col_tiles + col
 * tile) of sample first_sample + blockIdx.z, staged in shared memory so that
 * both the reads and the writes are along rows. */
__global__ static void __launch_bounds__(TRANSPOSE_TILE * TRANSPOSE_ROWS)
transpose_kernel(float *dst, const float *src, int rows, int cols, int col_tiles,
                 int first_sample) {
    __shared__ float tile[TRANSPOSE_TILE][TRANSPOSE_TILE + 1]; /* +1: no bank conflicts down a column */
    const size_t sample = ((size_t)first_sample + blockIdx.z) * rows * cols;
    const int r0 = (int)(blockIdx.x / col_tiles) * TRANSPOSE_TILE, c0 = (int)(blockIdx.x % col_tiles) * TRANSPOSE_TILE;
    for (int y = threadIdx.y; y < TRANSPOSE_TILE; y += TRANSPOSE_ROWS) {
        const int r = r0 + y, c = c0 + threadIdx.x;
        if (r < rows && c < cols) tile[y][threadIdx.x] = src[sample + (size_t)r * cols + c];
    }
    __syncthreads();
    for (int y = threadIdx.y; y < TRANSPOSE_TILE; y += TRANSPOSE_ROWS) {
        const int c = c0 + y, r = r0 + threadIdx.x;
        if (r < rows && c < cols) dst[sample + (size_t)c * rows + r] = tile[threadIdx.x][y];
    }
}

static void transpose_per_sample(float *dst, const float *src, int batch, int rows, int cols, cudaStream_t stream) {
    if (batch <= 0 || rows <= 0 || cols <= 0) return;
    const int row_tiles = (rows + TRANSPOSE_TILE - 1) / TRANSPOSE_TILE;
    const int col_tiles = (cols + TRANSPOSE_TILE - 1) / TRANSPOSE_TILE;
    const dim3 block(TRANSPOSE_TILE, TRANSPOSE_ROWS);
    for (int b0 = 0; b0 < batch; b0 += MAX_GRID_Z) {
        const int samples = batch - b0 < MAX_GRID_Z ? batch - b0 : MAX_GRID_Z;
        const dim3 grid((unsigned int)((size_t)row_tiles * col_tiles), 1, (unsigned int)samples);
        CUDA_LAUNCH_KERNEL(transpose_kernel, grid, block, stream, dst, src, rows, cols, col_tiles, b0);
        CUDA_CHECK_LAUNCH("transpose_kernel");
    }
}

extern "C" void transpose_channels_tokens_forward_cuda(float *out, const float *in, int batch, int channels,
                                                       int tokens, ldm_stream stream) {
    transpose_per_sample(out, in, batch, channels, tokens, stream);
}

extern "C" void transpose_channels_tokens_backward_cuda(float *d_in, const float *d_out, int batch, int channels,
                                                        int tokens, ldm_stream stream) {
    transpose_per_sample(d_in, d_out, batch, tokens, channels, stream);
}

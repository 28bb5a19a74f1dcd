/* PIL's resampling and the ADM center crop built on it (see center_crop.h). */
#include "center_crop.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fatal.h"

/* PIL's fixed point for 8-bit pixels: 32 bits less 8 for the pixel and 2 for
 * the sign and the filters' overshoot. */
#define RESAMPLE_PRECISION_BITS (32 - 8 - 2)

static double box_filter(double x) { return x > -0.5 && x <= 0.5 ? 1.0 : 0.0; }

static double bicubic_filter(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

/* The taps of one axis: output pixel i reads source pixels bounds[2i] ..
 * bounds[2i] + bounds[2i + 1] - 1 with weights[i * taps ..] (fixed point). */
typedef struct {
    int taps;
    int *bounds;  /* 2 per output pixel: first source pixel, count */
    int *weights; /* taps per output pixel */
} resample_axis;

/* PIL's precompute_coeffs and normalize_coeffs_8bpc (Resample.c). */
static void resample_axis_make(int in_size, int out_size, resample_filter filter, resample_axis *axis) {
    double (*f)(double) = filter == RESAMPLE_BOX ? box_filter : bicubic_filter;
    const double filter_support = filter == RESAMPLE_BOX ? 0.5 : 2.0;
    /* PIL passes the box edges as floats. */
    const float in0 = 0.0f, in1 = (float)in_size;
    double scale = (double)(in1 - in0) / out_size, filter_scale = scale < 1.0 ? 1.0 : scale;
    double support = filter_support * filter_scale;
    axis->taps = (int)ceil(support) * 2 + 1;
    axis->bounds = xmalloc(sizeof(int) * 2 * (size_t)out_size);
    axis->weights = xmalloc(sizeof(int) * (size_t)axis->taps * (size_t)out_size);
    double *k = xmalloc(sizeof(double) * (size_t)axis->taps);
    for (int i = 0; i < out_size; i++) {
        double center = in0 + (i + 0.5) * scale, total = 0.0, inverse_scale = 1.0 / filter_scale;
        int first = (int)(center - support + 0.5);
        if (first < 0) first = 0;
        int last = (int)(center + support + 0.5);
        if (last > in_size) last = in_size;
        int count = last - first;
        for (int x = 0; x < count; x++) {
            k[x] = f((x + first - center + 0.5) * inverse_scale);
            total += k[x];
        }
        for (int x = 0; x < count; x++)
            if (total != 0.0) k[x] /= total;
        for (int x = count; x < axis->taps; x++) k[x] = 0;
        for (int x = 0; x < axis->taps; x++) {
            double scaled = k[x] * (1 << RESAMPLE_PRECISION_BITS);
            axis->weights[i * axis->taps + x] = (int)(k[x] < 0 ? -0.5 + scaled : 0.5 + scaled);
        }
        axis->bounds[2 * i] = first;
        axis->bounds[2 * i + 1] = count;
    }
    free(k);
}

static void resample_axis_free(resample_axis *axis) {
    free(axis->bounds);
    free(axis->weights);
}

static uint8_t clip8(int sum) {
    int v = sum >> RESAMPLE_PRECISION_BITS;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* out (rows x out_width x channels) from rows first_row.. of in (x in_width). */
static void resample_horizontal(const uint8_t *in, int in_width, int first_row, int rows, int channels,
                                const resample_axis *axis, int out_width, uint8_t *out) {
    for (int y = 0; y < rows; y++) {
        const uint8_t *row = in + (size_t)(first_row + y) * in_width * channels;
        for (int x = 0; x < out_width; x++) {
            const int first = axis->bounds[2 * x], count = axis->bounds[2 * x + 1];
            const int *k = axis->weights + (size_t)x * axis->taps;
            for (int c = 0; c < channels; c++) {
                int sum = 1 << (RESAMPLE_PRECISION_BITS - 1);
                for (int t = 0; t < count; t++) sum += row[(first + t) * channels + c] * k[t];
                out[((size_t)y * out_width + x) * channels + c] = clip8(sum);
            }
        }
    }
}

/* out (out_height x width x channels) from in, whose row 0 is source row `row_offset`. */
static void resample_vertical(const uint8_t *in, int width, int row_offset, int channels, const resample_axis *axis,
                              int out_height, uint8_t *out) {
    const size_t stride = (size_t)width * channels;
    for (int y = 0; y < out_height; y++) {
        const int first = axis->bounds[2 * y] - row_offset, count = axis->bounds[2 * y + 1];
        const int *k = axis->weights + (size_t)y * axis->taps;
        for (size_t i = 0; i < stride; i++) {
            int sum = 1 << (RESAMPLE_PRECISION_BITS - 1);
            for (int t = 0; t < count; t++) sum += in[(size_t)(first + t) * stride + i] * k[t];
            out[(size_t)y * stride + i] = clip8(sum);
        }
    }
}

void pil_resize(const uint8_t *in, int in_height, int in_width, int channels, resample_filter filter, int out_height,
                int out_width, uint8_t *out) {
    if (in_height < 1 || in_width < 1 || out_height < 1 || out_width < 1)
        fatal_internal("pil_resize: %dx%d to %dx%d", in_width, in_height, out_width, out_height);
    if (in_height == out_height && in_width == out_width) {
        memcpy(out, in, (size_t)in_height * in_width * channels);
        return;
    }
    resample_axis horizontal, vertical;
    resample_axis_make(in_width, out_width, filter, &horizontal);
    resample_axis_make(in_height, out_height, filter, &vertical);
    if (in_width == out_width) {
        resample_vertical(in, in_width, 0, channels, &vertical, out_height, out);
    } else if (in_height == out_height) {
        resample_horizontal(in, in_width, 0, in_height, channels, &horizontal, out_width, out);
    } else {
        /* Only the source rows the vertical pass reads, as PIL. */
        const int first_row = vertical.bounds[0];
        const int end_row = vertical.bounds[2 * out_height - 2] + vertical.bounds[2 * out_height - 1];
        uint8_t *rows = xmalloc((size_t)(end_row - first_row) * out_width * channels); /* (rows, out_width, C) */
        resample_horizontal(in, in_width, first_row, end_row - first_row, channels, &horizontal, out_width, rows);
        resample_vertical(rows, out_width, first_row, channels, &vertical, out_height, out);
        free(rows);
    }
    resample_axis_free(&horizontal);
    resample_axis_free(&vertical);
}

void adm_center_crop(const uint8_t *image, int height, int width, int channels, int size, uint8_t *out) {
    if (size < 1) fatal_internal("adm_center_crop: size %d", size);
    uint8_t *current = NULL; /* owned copy once resized, (height, width, channels) */
    const uint8_t *pixels = image;
    while ((height < width ? height : width) >= 2 * size) {
        int half_height = height / 2, half_width = width / 2;
        uint8_t *half = xmalloc((size_t)half_height * half_width * channels);
        pil_resize(pixels, height, width, channels, RESAMPLE_BOX, half_height, half_width, half);
        free(current);
        pixels = current = half;
        height = half_height, width = half_width;
    }
    /* Python's round(x * scale), half to even: rint in the default rounding mode. */
    const double scale = (double)size / (height < width ? height : width);
    const int new_height = (int)rint(height * scale), new_width = (int)rint(width * scale);
    uint8_t *resized = xmalloc((size_t)new_height * new_width * channels);
    pil_resize(pixels, height, width, channels, RESAMPLE_BICUBIC, new_height, new_width, resized);
    free(current);
    if (new_height < size || new_width < size)
        fatal_internal("adm_center_crop: resized to %dx%d, smaller than %d", new_width, new_height, size);
    const int top = (new_height - size) / 2, left = (new_width - size) / 2;
    for (int y = 0; y < size; y++)
        memcpy(out + (size_t)y * size * channels, resized + ((size_t)(top + y) * new_width + left) * channels,
               (size_t)size * channels);
    free(resized);
}

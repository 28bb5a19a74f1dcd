/* The embeddings of DiT's inputs: the fixed 2-D sin-cos position embedding of
 * the patch grid, the sinusoidal timestep embedding, and the class-label table
 * lookup. Sines and cosines are evaluated in double: the timestep arguments t*f
 * reach ~1000, where float rounding of the argument alone is ~1e-4. */
#include <math.h>

#include "ops.h"

#define SINCOS_MAX_PERIOD 10000.0

/* out[k] = sin(pos * omega_k), out[half + k] = cos(pos * omega_k), k < half. */
static void sincos_1d(float *out, int embed_dim, double pos) {
    int half = embed_dim / 2;
    for (int k = 0; k < half; k++) {
        double omega = 1.0 / pow(SINCOS_MAX_PERIOD, (double)k / half);
        out[k] = (float)sin(pos * omega);
        out[half + k] = (float)cos(pos * omega);
    }
}

void pos_embed_2d_sincos(float *out, int dim, int grid) {
    /* As in MAE/DiT: the first half of the vector embeds the column (the first
     * output of meshgrid(w, h)), the second half the row. */
    int half = dim / 2;
    for (int row = 0; row < grid; row++)
        for (int col = 0; col < grid; col++) {
            float *v = out + ((size_t)row * grid + col) * dim;
            sincos_1d(v, half, col);
            sincos_1d(v + half, half, row);
        }
}

static double timestep_frequency(int k, int half) {
    return exp(-log(SINCOS_MAX_PERIOD) * k / half);
}

void timestep_embedding_forward(float *out, const float *t, int batch, int dim) {
    int half = dim / 2;
    for (int b = 0; b < batch; b++) {
        float *v = out + (size_t)b * dim;
        for (int k = 0; k < half; k++) {
            double arg = (double)t[b] * timestep_frequency(k, half);
            v[k] = (float)cos(arg);
            v[half + k] = (float)sin(arg);
        }
    }
}

void timestep_embedding_backward(float *d_t, const float *d_out, const float *t, int batch, int dim) {
    int half = dim / 2;
    for (int b = 0; b < batch; b++) {
        const float *g = d_out + (size_t)b * dim;
        double sum = 0.0;
        for (int k = 0; k < half; k++) {
            double f = timestep_frequency(k, half);
            double arg = (double)t[b] * f;
            sum += g[k] * (-f * sin(arg)) + g[half + k] * (f * cos(arg));
        }
        d_t[b] = (float)sum;
    }
}

void embedding_forward(float *out, const float *table, const int *labels, int batch, int dim) {
    for (int b = 0; b < batch; b++) {
        const float *row = table + (size_t)labels[b] * dim;
        float *o = out + (size_t)b * dim;
        for (int j = 0; j < dim; j++) o[j] = row[j];
    }
}

/* Serial over the batch so that repeated labels always add in the same order. */
void embedding_backward(float *d_table, const float *d_out, const int *labels, int batch, int dim) {
    for (int b = 0; b < batch; b++) {
        float *row = d_table + (size_t)labels[b] * dim;
        const float *g = d_out + (size_t)b * dim;
        for (int j = 0; j < dim; j++) row[j] += g[j];
    }
}

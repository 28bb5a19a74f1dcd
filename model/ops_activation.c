/* Elementwise activations: tanh-approximated GELU (DiT's MLP) and SiLU (the
 * adaLN and timestep-embedder inputs). */
#include <math.h>

#include "ops.h"

#define GELU_SQRT_2_OVER_PI 0.7978845608028654f
#define GELU_COEFF 0.044715f

void gelu_tanh_forward(float *out, const float *in, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float x = in[i];
        float u = GELU_SQRT_2_OVER_PI * (x + GELU_COEFF * x * x * x);
        out[i] = 0.5f * x * (1.0f + tanhf(u));
    }
}

void gelu_tanh_backward(float *d_in, const float *d_out, const float *in, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float x = in[i];
        float u = GELU_SQRT_2_OVER_PI * (x + GELU_COEFF * x * x * x);
        float th = tanhf(u);
        float du = GELU_SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_COEFF * x * x);
        float grad = 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du;
        d_in[i] = d_out[i] * grad;
    }
}

void silu_forward(float *out, const float *in, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float x = in[i];
        out[i] = x / (1.0f + expf(-x));
    }
}

void silu_backward(float *d_in, const float *d_out, const float *in, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float x = in[i];
        float s = 1.0f / (1.0f + expf(-x));
        d_in[i] = d_out[i] * s * (1.0f + x * (1.0f - s));
    }
}

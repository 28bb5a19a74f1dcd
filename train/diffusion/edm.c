/* The EDM formulation (see edm.h): preconditioning, noise levels, loss weight,
 * the batch functions of a training step and of sampling, the rho-schedule.
 * Per-element work is done in double and rounded once to float: at small sigma
 * the residual D - x is about sigma times the data's scale while lambda is about
 * 1 / sigma^2, so a float residual would lose digits that the weight then
 * magnifies. The loops are sequential: a batch is B * C * H * W elements, nothing
 * next to the network, and a fixed order keeps the loss's sums deterministic. */
#include "edm.h"

#include <math.h>
#include <stddef.h>

edm_precond edm_preconditioning(double sigma, double sigma_data) {
    const double s2 = sigma * sigma, d2 = sigma_data * sigma_data;
    const double root = sqrt(s2 + d2);
    edm_precond p;
    p.c_skip = d2 / (s2 + d2);
    p.c_out = sigma * sigma_data / root;
    p.c_in = 1.0 / root;
    p.c_noise = log(sigma) / 4.0;
    return p;
}

double edm_time_input(double sigma) { return 250.0 * log(sigma); }

double edm_loss_weight(double sigma, double sigma_data) {
    const double s_d = sigma * sigma_data;
    return (sigma * sigma + sigma_data * sigma_data) / (s_d * s_d);
}

float edm_draw_sigma(rng_stream *rng, double p_mean, double p_std) {
    return (float)exp(p_mean + p_std * (double)rng_normal(rng));
}

double edm_schedule_sigma(int i, int n, double sigma_min, double sigma_max, double rho) {
    if (n <= 1) return sigma_max;
    const double max_root = pow(sigma_max, 1.0 / rho), min_root = pow(sigma_min, 1.0 / rho);
    return pow(max_root + (double)i / (n - 1) * (min_root - max_root), rho);
}

/* ---- training ---- */

void edm_training_input(float *net_in, float *t, const float *x, const float *sigma, const float *noise, int batch,
                        int per_sample, double sigma_data) {
    for (int b = 0; b < batch; b++) {
        const double s = sigma[b];
        const double c_in = edm_preconditioning(s, sigma_data).c_in;
        const size_t offset = (size_t)b * per_sample;
        for (int j = 0; j < per_sample; j++)
            net_in[offset + j] = (float)(c_in * ((double)x[offset + j] + s * (double)noise[offset + j]));
        t[b] = (float)edm_time_input(s);
    }
}

double edm_training_loss(float *per_sample_loss, float *d_F, float d_loss, const float *x, const float *sigma,
                         const float *noise, const float *F, int batch, int per_sample, double sigma_data) {
    double total = 0.0;
    for (int b = 0; b < batch; b++) {
        const double s = sigma[b];
        const edm_precond p = edm_preconditioning(s, sigma_data);
        const double weight = edm_loss_weight(s, sigma_data);
        /* dloss/dF_bj = 2 lambda c_out (D - x) / (batch per_sample). */
        const double grad_coeff = 2.0 * (double)d_loss * weight * p.c_out / ((double)batch * per_sample);
        const size_t offset = (size_t)b * per_sample;
        double squares = 0.0;
        for (int j = 0; j < per_sample; j++) {
            const double clean = x[offset + j];
            const double noisy = clean + s * (double)noise[offset + j];
            const double residual = p.c_skip * noisy + p.c_out * (double)F[offset + j] - clean; /* D - x */
            squares += residual * residual;
            if (d_F) d_F[offset + j] = (float)(grad_coeff * residual);
        }
        const double sample_loss = weight * squares / per_sample;
        if (per_sample_loss) per_sample_loss[b] = (float)sample_loss;
        total += sample_loss;
    }
    return total / batch;
}

/* ---- sampling ---- */

void edm_network_input(float *net_in, float *t, const float *x_noisy, const float *sigma, int batch, int per_sample,
                       double sigma_data) {
    for (int b = 0; b < batch; b++) {
        const double c_in = edm_preconditioning(sigma[b], sigma_data).c_in;
        const size_t offset = (size_t)b * per_sample;
        for (int j = 0; j < per_sample; j++) net_in[offset + j] = (float)(c_in * (double)x_noisy[offset + j]);
        t[b] = (float)edm_time_input(sigma[b]);
    }
}

void edm_denoised(float *D, const float *x_noisy, const float *F, const float *sigma, int batch, int per_sample,
                  double sigma_data) {
    for (int b = 0; b < batch; b++) {
        const edm_precond p = edm_preconditioning(sigma[b], sigma_data);
        const size_t offset = (size_t)b * per_sample;
        for (int j = 0; j < per_sample; j++)
            D[offset + j] = (float)(p.c_skip * (double)x_noisy[offset + j] + p.c_out * (double)F[offset + j]);
    }
}

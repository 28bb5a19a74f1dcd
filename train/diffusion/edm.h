/* The EDM formulation of diffusion (Karras et al. 2022, "Elucidating the Design
 * Space of Diffusion-Based Generative Models"): the preconditioning that turns
 * the raw network F into the denoiser D(x; sigma) = c_skip x + c_out F(c_in x, t),
 * the training distribution of noise levels, the loss weight, the batch
 * functions of a training step (network input, weighted loss and its gradient
 * with respect to F), and the rho-schedule of noise levels that samplers use.
 *
 * sigma_data is the standard deviation of the (normalised) data, config
 * diffusion.sigma_data. The network's time input is t = 1000 c_noise = 250 ln sigma
 * (as in the consistency-models code), so that the DiT timestep embedder sees a
 * DDPM-like range. Scalars are computed in double; batch buffers are float,
 * laid out (batch, per_sample) with per_sample = C * H * W. */
#ifndef LDM_EDM_H
#define LDM_EDM_H


#include "rng.h"

/* The sampler schedule's defaults (EDM's Table 1). */
#define EDM_SIGMA_MIN 0.002
#define EDM_SIGMA_MAX 80.0
#define EDM_RHO 7.0

typedef struct {
    double c_skip;  /* sigma_data^2 / (sigma^2 + sigma_data^2) */
    double c_out;   /* sigma * sigma_data / sqrt(sigma^2 + sigma_data^2) */
    double c_in;    /* 1 / sqrt(sigma^2 + sigma_data^2) */
    double c_noise; /* ln(sigma) / 4 */
} edm_precond;

edm_precond edm_preconditioning(double sigma, double sigma_data);
/* The network's time input: t = 1000 c_noise = 250 ln sigma. */
double edm_time_input(double sigma);
/* lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2, which is
 * 1 / c_out^2: the weighted loss is a plain MSE of F against its effective target. */
double edm_loss_weight(double sigma, double sigma_data);
/* A training noise level: ln sigma ~ N(p_mean, p_std), one normal draw from rng. */
float edm_draw_sigma(rng_stream *rng, double p_mean, double p_std);
/* The rho-schedule: sigma_i = (smax^(1/rho) + i / (n - 1) (smin^(1/rho) - smax^(1/rho)))^rho
 * for i in [0, n), from sigma_max down to sigma_min (n = 1: sigma_max). Samplers
 * append sigma = 0 after the last. */
double edm_schedule_sigma(int i, int n, double sigma_min, double sigma_max, double rho);

/* ---- a training step, on batches ----
 * x (batch, per_sample): clean data; sigma (batch): each sample's noise level;
 * noise (batch, per_sample): standard normal. The noisy input is x + sigma noise. */

/* net_in (batch, per_sample) = c_in (x + sigma noise); t (batch) = 250 ln sigma. */
void edm_training_input(float *net_in, float *t, const float *x, const float *sigma, const float *noise, int batch,
                        int per_sample, double sigma_data);

/* With F (batch, per_sample) the network's output on that input and
 * D = c_skip (x + sigma noise) + c_out F the denoised sample, returns
 *     loss = (1 / batch) sum_b lambda(sigma_b) mean_j (D_bj - x_bj)^2
 * computed in double. per_sample_loss (batch) or NULL receives each sample's
 * lambda(sigma_b) mean_j (D_bj - x_bj)^2, so that training can bin the loss by sigma.
 * d_F (batch, per_sample) or NULL is overwritten with d_loss * dloss/dF
 * (d_loss: the gradient arriving from above, e.g. 1, a loss scale, or
 * 1 / micro-batches). Deterministic: each sample's sum runs in order on one thread. */
double edm_training_loss(float *per_sample_loss, float *d_F, float d_loss, const float *x, const float *sigma,
                         const float *noise, const float *F, int batch, int per_sample, double sigma_data);

/* ---- sampling ---- x_noisy (batch, per_sample) is a noisy sample at sigma (batch). */

/* net_in = c_in x_noisy; t = 250 ln sigma. */
void edm_network_input(float *net_in, float *t, const float *x_noisy, const float *sigma, int batch, int per_sample,
                       double sigma_data);
/* D = c_skip x_noisy + c_out F. */
void edm_denoised(float *D, const float *x_noisy, const float *F, const float *sigma, int batch, int per_sample,
                  double sigma_data);

#endif

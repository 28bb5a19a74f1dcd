/* EDM samplers for a DiT (Karras et al. 2022): Heun's 2nd-order method
 * (Algorithm 1: 2N - 1 network evaluations; with churn, Algorithm 2) and
 * Euler's method (N evaluations), on the rho-schedule sigma_0 = sigma_max > ... > sigma_{N-1} =
 * sigma_min, then sigma_N = 0, of the probability-flow ODE
 * dx/dsigma = (x - D(x; sigma)) / sigma, with
 *     D(x; sigma) = c_skip x + c_out F(c_in x, t = 250 ln sigma, y).
 *
 * Classifier-free guidance with scale w: D = D_u + w (D_c - D_u), where D_c uses
 * the sample's label and D_u the null class (the model's num_classes); the two
 * passes of a batch of B run as one dit_forward of 2B samples. w = 1 is no
 * guidance: only the conditional pass runs (D = D_c exactly).
 *
 * A sample depends only on (seed, its index) and its label: its initial noise is
 * x = sigma_max n with n drawn from rng_stream_for(seed, SAMPLER_PURPOSE_NOISE,
 * index), and every later step is elementwise or a per-sample network pass; so
 * the result does not depend on the batch composition or the number of ranks.
 * It does depend on max_batch: dit_forward is not bit-invariant in its batch size
 * (OpenBLAS's sgemm takes other paths for small M), so every network pass runs
 * on max_batch rows (2 max_batch under guidance), padded with zeros; results for
 * another max_batch agree to float rounding (~1e-6), not bit for bit.
 *
 * All buffers are laid out by sampler_create; sampler_run allocates nothing. */
#ifndef LDM_SAMPLER_H
#define LDM_SAMPLER_H

#include <stdint.h>

#include "dit.h"

#define SAMPLER_PURPOSE_NOISE 0x73616d706c657a7aull /* "samplezz": the initial noise of ldm sample */
#define SAMPLER_PURPOSE_CHURN 0x636875726e7a7a7aull /* "churnzzz": the noise added by churn */

typedef enum { SAMPLER_HEUN = 0, SAMPLER_EULER = 1 } sampler_method;

typedef struct {
    int steps;             /* N >= 1 noise levels before sigma = 0 */
    sampler_method method;
    double guidance;       /* w; 1 = none */
    uint64_t seed;
    double sigma_min, sigma_max, rho; /* 0 = EDM's defaults (0.002, 80, 7) */
    /* EDM's stochastic sampling (Algorithm 2): before the step from sigma_i, noise
     * is added to raise sigma_i to (1 + gamma) sigma_i, gamma = min(churn / N,
     * sqrt 2 - 1) where churn_min <= sigma_i <= churn_max (else 0), scaled by
     * churn_noise. churn 0 (the default) is the deterministic sampler; the other
     * three at 0 take EDM's ImageNet values (0.05, 50, 1.003). The added noise is
     * keyed by (seed, step, sample index) like the initial noise. */
    double churn, churn_min, churn_max, churn_noise;
} sampler_options;

typedef struct {
    dit_model *model;
    sampler_options options;
    double sigma_data;
    int max_batch;       /* samples per sampler_run */
    int64_t per_sample;  /* C * H * W */
    int guided;          /* guidance != 1: 2 passes per evaluation */
    double *sigmas;      /* (steps + 1), the last 0 */
    float *x, *x_next, *d, *denoised;  /* (max_batch, per_sample) */
    float *net_x, *net_out, *net_denoised; /* (passes * max_batch, per_sample) */
    float *net_t, *net_sigma;          /* (passes * max_batch) */
    int *net_y;                        /* (passes * max_batch) */
    void *memory;
} sampler;

/* The schedule sigma_0 .. sigma_steps (the last 0) of options into sigmas (steps + 1),
 * each rounded to float. */
void sampler_schedule(const sampler_options *options, double *sigmas);
/* Network evaluations of one sampler_run (per sample): 2N - 1 (Heun) or N (Euler);
 * each is 2 dit passes under guidance. */
int sampler_network_evaluations(const sampler_options *options);

/* options checked (fatal_input on bad ones) with the defaults filled in. */
sampler_options sampler_options_checked(const sampler_options *options);

/* model must hold batches of max_batch (2 max_batch when options->guidance != 1).
 * fatal_input on bad options. */
void sampler_create(sampler *s, dit_model *model, const sampler_options *options, double sigma_data,
                    int max_batch);
void sampler_destroy(sampler *s);

/* labels (batch) in [0, num_classes] (num_classes: unconditional); indices (batch):
 * each sample's index, which keys its noise; out (batch, C, H, W): the samples in
 * the data's units (for pixel models, [-1, 1]). */
void sampler_run(sampler *s, const int *labels, const int64_t *indices, int batch, float *out);

/* The initial noise sigma_max n of the sample with this index (per_sample values). */
void sampler_initial_noise(uint64_t seed, int64_t index, double sigma_max, int64_t per_sample, float *out);

#endif

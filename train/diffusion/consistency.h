/* Consistency models (Song et al. 2023, "Consistency Models") in the EDM sigma
 * space of the teacher: the consistency function
 *     f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, t = 250 ln sigma, y)
 * with the boundary condition built in,
 *     c_skip = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2),
 *     c_out  = sigma_data (sigma - sigma_min) / sqrt(sigma^2 + sigma_data^2),
 * so that f(x, sigma_min) = x exactly; the network input (c_in, t) is the EDM
 * teacher's (edm.h), so a student that starts from the teacher's weights starts
 * as (nearly) the teacher's denoiser. The discretisation of distillation, and the
 * multistep sampler (Algorithm 1 of the paper) with its sigma points for 1, 2
 * and 4 steps.
 *
 * Noise levels live in float batches: sigma_min is taken as the float nearest to
 * it, so that sigma - sigma_min is exactly 0 for the float a batch carries. */
#ifndef LDM_CONSISTENCY_H
#define LDM_CONSISTENCY_H

#include <stdint.h>

#include "dit.h"

#define CONSISTENCY_PURPOSE_NOISE 0x636f6e7369737a7aull /* "consiszz": the noise a multistep sample adds */
#define CONSISTENCY_MAX_STEPS 8

typedef struct {
    double c_skip, c_out;
} consistency_scaling;

/* c_skip and c_out at sigma (sigma_min rounded to float first). */
consistency_scaling consistency_scalings(double sigma, double sigma_data, double sigma_min);

/* f (batch, per_sample) = c_skip x + c_out F, each row at its sigma (batch);
 * in double, rounded once. f may be x. */
void consistency_output(float *f, const float *x, const float *F, const float *sigma, int batch, int per_sample,
                        double sigma_data, double sigma_min);

/* Scratch of consistency_apply for batches of up to max_batch rows. */
typedef struct {
    float *net_in, *F; /* (max_batch, per_sample) */
    float *t;          /* (max_batch) */
    void *memory;
} consistency_buffers;
void consistency_buffers_create(consistency_buffers *b, const dit_shape *shape, int max_batch);
void consistency_buffers_destroy(consistency_buffers *b);

/* f (batch, per_sample) = f(x, sigma) on the DiT with labels y (batch) and, for
 * a model with a guidance input, guidance scales (batch), else NULL; the
 * network's output stays in b->F (for a backward pass). f may not be x. */
void consistency_apply(dit_model *model, consistency_buffers *b, const float *x, const float *sigma, const int *y,
                       const float *guidance, int batch, double sigma_data, double sigma_min, float *f);

/* Distillation's discretisation: point i of n in increasing order,
 * sigma_0 = sigma_min < ... < sigma_{n-1} = sigma_max on the rho schedule,
 * rounded to float. */
double consistency_point(int i, int n, double sigma_min, double sigma_max, double rho);

/* The sigma points of the multistep sampler for 1, 2 and 4 steps (sigmas
 * (steps), decreasing, the first sigma_max), when the checkpoint records none:
 *   1: sigma_max;
 *   2: sigma_max, 0.821 (the midpoint the consistency-models paper found for
 *      2-step sampling on EDM's schedule), or the middle point of the
 *      rho schedule when 0.821 is outside (sigma_min, sigma_max);
 *   4: the first 4 of 5 points of the rho schedule from sigma_max to sigma_min
 *      (80, 17.5, 2.52, 0.170 on EDM's), i.e. evenly spaced in sigma^(1/rho)
 *      like the training discretisation.
 * Returns 0 for another number of steps. */
int consistency_default_points(int steps, double sigma_min, double sigma_max, double rho, double *sigmas);

/* ---- the multistep sampler (Algorithm 1) ----
 * x = sigma_0 z_0 (z_0 the EDM sampler's initial noise of the sample, keyed by
 * (seed, index)); x = f(x, sigma_0); then for every further point sigma_k:
 * x = x + sqrt(sigma_k^2 - sigma_min^2) z_k, x = f(x, sigma_k), z_k keyed by
 * (seed, k, index). The network always runs on max_batch rows (zero padded), as
 * in sampler.h, so a sample does not depend on its batch or the ranks. */
typedef struct {
    int steps;                            /* 1 .. CONSISTENCY_MAX_STEPS */
    double sigmas[CONSISTENCY_MAX_STEPS]; /* decreasing, each > sigma_min */
    double sigma_min;
    uint64_t seed;
    double guidance; /* the scale given to a student with a guidance input (> 0); 0 for one without */
} consistency_sampler_options;

typedef struct {
    dit_model *model;
    consistency_sampler_options options;
    double sigma_data;
    int max_batch;
    int64_t per_sample;
    consistency_buffers buffers;
    float *x, *f;    /* (max_batch, per_sample) */
    float *sigma;    /* (max_batch) */
    float *guidance; /* (max_batch) options.guidance in every row */
    int *y;          /* (max_batch) */
    void *memory;
} consistency_sampler;

/* fatal_input on bad options (no steps, sigmas not decreasing or not above sigma_min). */
void consistency_sampler_check(const consistency_sampler_options *options);
/* Checks options as consistency_sampler_check. */
void consistency_sampler_create(consistency_sampler *s, dit_model *model, const consistency_sampler_options *options,
                                double sigma_data, int max_batch);
void consistency_sampler_destroy(consistency_sampler *s);
/* labels, indices (batch) as sampler_run takes them; out (batch, C, H, W). */
void consistency_sampler_run(consistency_sampler *s, const int *labels, const int64_t *indices, int batch,
                             float *out);

#endif

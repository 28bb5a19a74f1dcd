/* Tests of the EDM formulation (train/diffusion/edm.h). Each formula is checked against
 * an evaluation written differently (e.g. c_skip = 1 / (1 + (sigma/sigma_data)^2))
 * and against the identities the paper derives them from:
 *   c_skip + c_out^2 / sigma_data^2 = 1, c_in^2 (sigma^2 + sigma_data^2) = 1,
 *   lambda c_out^2 = 1, and the effective training target
 *   (x - c_skip (x + sigma n)) / c_out has unit variance for data of std sigma_data.
 * The training loss is checked against its other form, a plain MSE of F against
 * that effective target; its gradient against central finite differences of the
 * loss in every element (the loss is quadratic in F, so the differences are
 * exact up to rounding); the sigma draws' mean and std of ln sigma over 100k
 * draws; the rho-schedule's endpoints, monotonicity and values. */
#include "edm.h"
#include "test_util.h"

#include <stdlib.h>

static const double sigmas[] = {1e-6, 0.002, 0.01, 0.2, 0.5, 1.0, 3.0, 80.0, 500.0};
static const double sigma_datas[] = {0.5, 1.0, 0.13};
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static void test_preconditioning(void) {
    for (size_t i = 0; i < COUNT(sigmas); i++)
        for (size_t k = 0; k < COUNT(sigma_datas); k++) {
            const double s = sigmas[i], sd = sigma_datas[k], ratio = s / sd;
            const edm_precond p = edm_preconditioning(s, sd);
            CHECK_CLOSE(p.c_skip, 1.0 / (1.0 + ratio * ratio), 0, 1e-14);
            CHECK_CLOSE(p.c_out, s / sqrt(1.0 + ratio * ratio), 0, 1e-14);
            CHECK_CLOSE(p.c_in, 1.0 / (sd * sqrt(1.0 + ratio * ratio)), 0, 1e-14);
            CHECK_CLOSE(exp(4.0 * p.c_noise), s, 0, 1e-14);
            CHECK_CLOSE(p.c_skip + p.c_out * p.c_out / (sd * sd), 1.0, 1e-14, 0);
            CHECK_CLOSE(p.c_in * p.c_in * (s * s + sd * sd), 1.0, 1e-14, 0);
            const double weight = edm_loss_weight(s, sd);
            CHECK_CLOSE(weight, 1.0 / (sd * sd) + 1.0 / (s * s), 0, 1e-14);
            CHECK_CLOSE(weight * p.c_out * p.c_out, 1.0, 1e-14, 0);
            /* Var(target) = ((1 - c_skip)^2 sigma_data^2 + c_skip^2 sigma^2) / c_out^2 = 1. */
            const double target_var =
                ((1 - p.c_skip) * (1 - p.c_skip) * sd * sd + p.c_skip * p.c_skip * s * s) / (p.c_out * p.c_out);
            CHECK_CLOSE(target_var, 1.0, 1e-12, 0);
            /* The network time input: 1000 c_noise. */
            CHECK_CLOSE(edm_time_input(s), 1000.0 * p.c_noise, 1e-12, 1e-14);
        }
    CHECK(edm_time_input(1.0) == 0.0);
    CHECK_CLOSE(edm_time_input(exp(1.0)), 250.0, 0, 1e-15);
    CHECK_CLOSE(edm_time_input(0.002), 250.0 * -6.2146080984221914, 0, 1e-14);
    /* Limits: a tiny sigma passes the input through (D = x_noisy), a huge one
     * lets the network predict the data (c_out -> sigma_data). */
    edm_precond tiny = edm_preconditioning(1e-9, 0.5), huge = edm_preconditioning(1e9, 0.5);
    CHECK_CLOSE(tiny.c_skip, 1.0, 1e-15, 0);
    CHECK_CLOSE(tiny.c_out, 1e-9, 0, 1e-12);
    CHECK_CLOSE(huge.c_skip, 0.0, 1e-15, 0);
    CHECK_CLOSE(huge.c_out, 0.5, 0, 1e-12);
}

/* A random batch: normal data of std sigma_data, normal noise, a network output,
 * and sigmas spread from 0.002 to 80. */
static uint64_t fill_state = 0x1234;
static double uniform01(void) {
    fill_state = fill_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(fill_state >> 11) * (1.0 / 9007199254740992.0);
}
static double std_normal(void) {
    double u1 = uniform01(), u2 = uniform01();
    return sqrt(-2.0 * log(u1 + 1e-300)) * cos(2.0 * 3.14159265358979323846 * u2);
}

typedef struct {
    int batch, per_sample;
    float *x, *sigma, *noise, *F;
} batch_data;

static batch_data make_batch(int batch, int per_sample, double sigma_data) {
    batch_data d = {batch, per_sample, malloc(sizeof(float) * batch * per_sample), malloc(sizeof(float) * batch),
                    malloc(sizeof(float) * batch * per_sample), malloc(sizeof(float) * batch * per_sample)};
    for (int b = 0; b < batch; b++)
        d.sigma[b] = (float)(batch == 1 ? 1.0 : 0.002 * pow(80.0 / 0.002, (double)b / (batch - 1)));
    for (int i = 0; i < batch * per_sample; i++) {
        d.x[i] = (float)(sigma_data * std_normal());
        d.noise[i] = (float)std_normal();
        d.F[i] = (float)std_normal();
    }
    return d;
}

static void free_batch(batch_data *d) {
    free(d->x);
    free(d->sigma);
    free(d->noise);
    free(d->F);
}

/* The loss in its other form: the MSE of F against the effective target. */
static double loss_by_target(const batch_data *d, const float *F, double sd, double *per_sample) {
    double total = 0.0;
    for (int b = 0; b < d->batch; b++) {
        const double s = d->sigma[b], ratio = s / sd;
        const double c_skip = 1.0 / (1.0 + ratio * ratio), c_out = s / sqrt(1.0 + ratio * ratio);
        double sum = 0.0;
        for (int j = 0; j < d->per_sample; j++) {
            const size_t i = (size_t)b * d->per_sample + j;
            const double target = ((double)d->x[i] - c_skip * ((double)d->x[i] + s * d->noise[i])) / c_out;
            sum += ((double)F[i] - target) * ((double)F[i] - target);
        }
        if (per_sample) per_sample[b] = sum / d->per_sample;
        total += sum / d->per_sample;
    }
    return total / d->batch;
}

static void test_training_batch(void) {
    const double sd = 0.5;
    const int B = 9, P = 4 * 3 * 5;
    batch_data d = make_batch(B, P, sd);
    float *net_in = malloc(sizeof(float) * B * P), *t = malloc(sizeof(float) * B);
    float *d_F = malloc(sizeof(float) * B * P), *per_sample = malloc(sizeof(float) * B);

    edm_training_input(net_in, t, d.x, d.sigma, d.noise, B, P, sd);
    for (int b = 0; b < B; b++) {
        const double s = d.sigma[b];
        CHECK_CLOSE(t[b], 250.0 * log(s), 1e-4, 1e-6);
        for (int j = 0; j < P; j++) {
            const size_t i = (size_t)b * P + j;
            CHECK_CLOSE(net_in[i], ((double)d.x[i] + s * d.noise[i]) / sqrt(s * s + sd * sd), 1e-7, 1e-6);
        }
    }

    double reference_per_sample[9];
    const double reference = loss_by_target(&d, d.F, sd, reference_per_sample);
    const double loss = edm_training_loss(per_sample, d_F, 1.0f, d.x, d.sigma, d.noise, d.F, B, P, sd);
    CHECK_CLOSE(loss, reference, 0, 1e-10);
    for (int b = 0; b < B; b++) CHECK_CLOSE(per_sample[b], reference_per_sample[b], 0, 1e-6);
    /* Without the optional outputs: the same loss. */
    CHECK(edm_training_loss(NULL, NULL, 1.0f, d.x, d.sigma, d.noise, d.F, B, P, sd) == loss);

    /* D against the sampling function on the float noisy input: the same up to
     * the rounding of x + sigma n. */
    float *noisy = malloc(sizeof(float) * B * P), *D = malloc(sizeof(float) * B * P);
    for (int b = 0; b < B; b++)
        for (int j = 0; j < P; j++) noisy[b * P + j] = d.x[b * P + j] + d.sigma[b] * d.noise[b * P + j];
    edm_denoised(D, noisy, d.F, d.sigma, B, P, sd);
    float *net_in_sampling = malloc(sizeof(float) * B * P), *t_sampling = malloc(sizeof(float) * B);
    edm_network_input(net_in_sampling, t_sampling, noisy, d.sigma, B, P, sd);
    for (int b = 0; b < B; b++) {
        const double s = d.sigma[b], c_skip = sd * sd / (s * s + sd * sd), c_out = s * sd / sqrt(s * s + sd * sd);
        CHECK(t_sampling[b] == t[b]);
        for (int j = 0; j < P; j++) {
            const size_t i = (size_t)b * P + j;
            CHECK_CLOSE(D[i], c_skip * noisy[i] + c_out * d.F[i], 1e-6, 1e-6);
            CHECK_CLOSE(net_in_sampling[i], noisy[i] / sqrt(s * s + sd * sd), 1e-7, 1e-6);
        }
    }

    /* The ideal network output (F = effective target) denoises exactly: D = x
     * and the loss is zero to rounding, at every sigma. */
    float *ideal = malloc(sizeof(float) * B * P);
    for (int b = 0; b < B; b++) {
        const double s = d.sigma[b], c_skip = sd * sd / (s * s + sd * sd), c_out = s * sd / sqrt(s * s + sd * sd);
        for (int j = 0; j < P; j++) {
            const size_t i = (size_t)b * P + j;
            ideal[i] = (float)(((double)d.x[i] - c_skip * ((double)d.x[i] + s * d.noise[i])) / c_out);
        }
    }
    const double ideal_loss = edm_training_loss(per_sample, NULL, 1.0f, d.x, d.sigma, d.noise, ideal, B, P, sd);
    CHECK_MSG(ideal_loss < 1e-12, "loss of the ideal output %g", ideal_loss);

    /* A tiny sigma: D = x_noisy whatever F says. */
    float tiny_sigma[9];
    for (int b = 0; b < B; b++) tiny_sigma[b] = 1e-7f;
    edm_denoised(D, d.x, d.F, tiny_sigma, B, P, sd);
    for (int i = 0; i < B * P; i++) CHECK_CLOSE(D[i], d.x[i], 1e-6, 0);

    /* d_loss scales the gradient. */
    float *d_F_scaled = malloc(sizeof(float) * B * P);
    edm_training_loss(NULL, d_F_scaled, 2.5f, d.x, d.sigma, d.noise, d.F, B, P, sd);
    for (int i = 0; i < B * P; i++) CHECK_CLOSE(d_F_scaled[i], 2.5 * d_F[i], 1e-12, 1e-6);

    free(net_in);
    free(t);
    free(d_F);
    free(d_F_scaled);
    free(per_sample);
    free(noisy);
    free(D);
    free(net_in_sampling);
    free(t_sampling);
    free(ideal);
    free_batch(&d);
}

/* d_F against central differences of the loss, for every element. */
static void test_gradient(void) {
    const double sd = 0.5;
    const int B = 5, P = 2 * 3 * 3;
    batch_data d = make_batch(B, P, sd);
    float *d_F = malloc(sizeof(float) * B * P);
    edm_training_loss(NULL, d_F, 1.0f, d.x, d.sigma, d.noise, d.F, B, P, sd);
    double max_grad = 0.0, worst = 0.0;
    for (int i = 0; i < B * P; i++) max_grad = fmax(max_grad, fabs(d_F[i]));
    for (int i = 0; i < B * P; i++) {
        const float kept = d.F[i];
        d.F[i] = kept + 1e-2f;
        const float up = d.F[i];
        const double loss_up = edm_training_loss(NULL, NULL, 1.0f, d.x, d.sigma, d.noise, d.F, B, P, sd);
        d.F[i] = kept - 1e-2f;
        const float down = d.F[i];
        const double loss_down = edm_training_loss(NULL, NULL, 1.0f, d.x, d.sigma, d.noise, d.F, B, P, sd);
        d.F[i] = kept;
        const double numeric = (loss_up - loss_down) / ((double)up - (double)down);
        const double error = fabs(numeric - d_F[i]) / max_grad;
        if (error > worst) worst = error;
        CHECK_MSG(error < 1e-5, "element %d: numeric %.9g, analytic %.9g", i, numeric, d_F[i]);
    }
    printf("test_edm: worst gradient error %.3g of the largest gradient\n", worst);
    free(d_F);
    free_batch(&d);
}

static void test_sigma_draws(void) {
    const int n = 100000;
    const double p_mean = -1.2, p_std = 1.2;
    rng_stream rng = rng_stream_for(7, 1, 2);
    double sum = 0.0, sum_sq = 0.0;
    int positive = 1;
    for (int i = 0; i < n; i++) {
        float s = edm_draw_sigma(&rng, p_mean, p_std);
        positive &= s > 0.0f && isfinite(s);
        double l = log(s);
        sum += l;
        sum_sq += l * l;
    }
    const double mean = sum / n, std = sqrt(sum_sq / n - mean * mean);
    /* Standard errors: p_std / sqrt(n) = 0.0038 for the mean, p_std / sqrt(2n) =
     * 0.0027 for the std; the bounds are 5 of them. */
    CHECK(positive);
    CHECK_CLOSE(mean, p_mean, 0.019, 0);
    CHECK_CLOSE(std, p_std, 0.0135, 0);
    /* The same stream gives the same draws. */
    rng_stream a = rng_stream_for(3, 4, 5), b = rng_stream_for(3, 4, 5);
    for (int i = 0; i < 10; i++) CHECK(edm_draw_sigma(&a, 0.3, 2.0) == edm_draw_sigma(&b, 0.3, 2.0));
    /* p_std 0: every draw is exp(p_mean). */
    CHECK_CLOSE(edm_draw_sigma(&a, 0.7, 0.0), exp(0.7), 0, 1e-7);
}

static void test_schedule(void) {
    const int n = 18;
    CHECK_CLOSE(edm_schedule_sigma(0, n, EDM_SIGMA_MIN, EDM_SIGMA_MAX, EDM_RHO), 80.0, 0, 1e-13);
    CHECK_CLOSE(edm_schedule_sigma(n - 1, n, EDM_SIGMA_MIN, EDM_SIGMA_MAX, EDM_RHO), 0.002, 0, 1e-13);
    double previous = INFINITY;
    for (int i = 0; i < n; i++) {
        const double s = edm_schedule_sigma(i, n, EDM_SIGMA_MIN, EDM_SIGMA_MAX, EDM_RHO);
        CHECK_MSG(s < previous, "sigma_%d = %g not below sigma_%d = %g", i, s, i - 1, previous);
        previous = s;
        /* The same point as an interpolation of sigma^(1/rho) between the ends. */
        const double u = (double)i / (n - 1);
        const double expected = pow((1 - u) * pow(80.0, 1 / 7.0) + u * pow(0.002, 1 / 7.0), 7.0);
        CHECK_CLOSE(s, expected, 0, 1e-12);
    }
    /* rho = 1 is a linear schedule. */
    CHECK_CLOSE(edm_schedule_sigma(1, 3, 1.0, 9.0, 1.0), 5.0, 0, 1e-14);
    CHECK(edm_schedule_sigma(0, 1, EDM_SIGMA_MIN, EDM_SIGMA_MAX, EDM_RHO) == EDM_SIGMA_MAX);
}

int main(void) {
    test_preconditioning();
    test_training_batch();
    test_gradient();
    test_sigma_draws();
    test_schedule();
    return test_finish("test_edm");
}

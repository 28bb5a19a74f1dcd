/* Consistency distillation (Song et al. 2023, Algorithm 2) as a trainable: a
 * student DiT (the trained parameters) that starts from the teacher's EMA
 * weights, the frozen teacher, and the target network, an EMA of the student
 * with rate distill.target_ema, followed after every optimizer step and saved
 * in checkpoints as target.safetensors (the extra-state capability, with the
 * "consistency" record of state.json). Validation: the student's pictures with
 * its 2-step sampler (dit_validation.h).
 *
 * For each sample: n uniform in [0, N-2] and noise z from its own stream keyed
 * by (seed, step, the sample's row), like dit_trainable.c; with the increasing
 * points s_0 = sigma_min < ... < s_{N-1} = sigma_max (consistency_point):
 *   x_{n+1} = x + s_{n+1} z;
 *   x_n     = one Heun step of the teacher's probability-flow ODE from s_{n+1}
 *             to s_n (classifier-free guidance at distill.guidance, or, with
 *             distill.guidance_max, at a scale w drawn uniformly from
 *             [guidance, guidance_max] for each sample, which the student and
 *             the target network then take as an input);
 *   loss    = d(f_student(x_{n+1}, s_{n+1}), f_target(x_n, s_n)), with d the
 *             pseudo-Huber distance sqrt(|a - b|^2 + c^2) - c over the whole
 *             sample, or the mean squared difference (distill.loss), weight 1.
 * Labels are never dropped: the student is a conditional sampler of the
 * guided teacher (unlabelled data: the null class). All buffers are laid out
 * at creation; a step allocates nothing. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atomic_file.h"
#include "model_shapes.h"
#include "comm.h"
#include "consistency.h"
#include "consistency_record.h"
#include "dit.h"
#include "dit_validation.h"
#include "distill_draws.h"
#include "edm.h"
#include "ema.h"
#include "fatal.h"
#include "rng.h"
#include "trainable.h"
#include "trainables.h"

/* model.class_dropout is not used by distillation: it may change on resume. */
static const char *const distill_settings_keys[] = {"class_dropout", NULL};

typedef struct {
    const ldm_config *config;
    dit_model student, teacher, target;
    consistency_buffers student_buffers, target_buffers;
    int passes;            /* teacher rows per sample: 2 under guidance, else 1 */
    int guidance_input;    /* 1: the scale is drawn per sample and is an input of the student */
    int64_t per_sample;    /* P = C * H * W */
    double sigma_min, sigma_data, huber_c;
    double *points;        /* (N) increasing: points[0] = sigma_min, points[N-1] = sigma_max */
    int *y;                /* (B) labels; num_classes = the null class */
    float *guidance;       /* (B) each sample's guidance scale */
    float *sigma_next, *sigma_now; /* (B) s_{n+1}, s_n */
    float *x_next;         /* (B, P) x_{n+1} */
    float *x_now;          /* (B, P) the teacher's x_n (first its Euler estimate) */
    float *slope;          /* (B, P) the teacher's dx/dsigma at s_{n+1} */
    float *denoised;       /* (B, P) the teacher's guided D */
    float *teacher_x, *teacher_in, *teacher_F, *teacher_D; /* (passes B, P) */
    float *teacher_sigma, *teacher_t;                      /* (passes B) */
    int *teacher_y;                                        /* (passes B) */
    float *target_f, *student_f, *d_F;                     /* (B, P) */
    void *memory;                                          /* behind everything above from points on */
    trainable_extra_state target_state; /* the trainable's extra state: the target network */
} distiller;

static void distill_zero_grad(trainable *self) { dit_zero_grad(&((distiller *)self->self)->student); }

/* denoised (batch, P) = the teacher's D(x; sigma) with guidance: conditional
 * rows first, then the null class, in one pass of passes * batch rows. */
static void teacher_denoise(distiller *d, const float *x, const float *sigma, int batch) {
    const int64_t ps = d->per_sample, used = (int64_t)batch * ps;
    const int rows = d->passes * batch, null_class = d->teacher.shape.num_classes;
    for (int p = 0; p < d->passes; p++) {
        memcpy(d->teacher_x + p * used, x, sizeof(float) * (size_t)used);
        for (int b = 0; b < batch; b++) {
            d->teacher_y[p * batch + b] = p == 0 ? d->y[b] : null_class;
            d->teacher_sigma[p * batch + b] = sigma[b];
        }
    }
    edm_network_input(d->teacher_in, d->teacher_t, d->teacher_x, d->teacher_sigma, rows, (int)ps, d->sigma_data);
    dit_forward(&d->teacher, d->teacher_in, d->teacher_t, d->teacher_y, rows, d->teacher_F);
    edm_denoised(d->teacher_D, d->teacher_x, d->teacher_F, d->teacher_sigma, rows, (int)ps, d->sigma_data);
    if (d->passes == 1) {
        memcpy(d->denoised, d->teacher_D, sizeof(float) * (size_t)used);
        return;
    }
    const float *cond = d->teacher_D, *uncond = d->teacher_D + used;
    for (int b = 0; b < batch; b++) {
        const float w = d->guidance[b];
        for (int64_t i = b * ps; i < (b + 1) * ps; i++) d->denoised[i] = uncond[i] + w * (cond[i] - uncond[i]);
    }
}

/* Each sample's pair of points, label, guidance scale and x_{n+1}
 * (distill_draws.h: its noise from the sample's own stream). */
static void draw_step(distiller *d, const float *x, const int32_t *labels, const int64_t *index, int batch,
                      int64_t step) {
    const int64_t ps = d->per_sample;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < batch; i++) {
        const distill_sample_draw draw =
            distill_draw_sample(d->config, d->points, d->guidance_input, labels[i], index[i], step);
        d->sigma_now[i] = draw.sigma_now;
        d->sigma_next[i] = draw.sigma_next;
        d->y[i] = draw.y;
        d->guidance[i] = draw.guidance;
        rng_stream rng = {.state = draw.noise_stream};
        const double s = d->sigma_next[i];
        const float *xi = x + (size_t)i * (size_t)ps;
        float *out = d->x_next + (size_t)i * (size_t)ps;
        for (int64_t j = 0; j < ps; j++) out[j] = (float)((double)xi[j] + s * (double)rng_normal(&rng));
    }
}

/* x_now = one Heun step of the teacher from sigma_next to sigma_now (> 0). */
static void teacher_heun_step(distiller *d, int batch) {
    const int64_t ps = d->per_sample;
    teacher_denoise(d, d->x_next, d->sigma_next, batch);
    for (int b = 0; b < batch; b++) {
        const double s = d->sigma_next[b], h = (double)d->sigma_now[b] - s;
        for (int64_t j = b * ps; j < (b + 1) * ps; j++) {
            const double slope = ((double)d->x_next[j] - (double)d->denoised[j]) / s;
            d->slope[j] = (float)slope;
            d->x_now[j] = (float)((double)d->x_next[j] + h * slope);
        }
    }
    teacher_denoise(d, d->x_now, d->sigma_now, batch);
    for (int b = 0; b < batch; b++) {
        const double s = d->sigma_now[b], h = s - (double)d->sigma_next[b];
        for (int64_t j = b * ps; j < (b + 1) * ps; j++) {
            const double slope_now = ((double)d->x_now[j] - (double)d->denoised[j]) / s;
            d->x_now[j] = (float)((double)d->x_next[j] + h * 0.5 * ((double)d->slope[j] + slope_now));
        }
    }
}

/* The mean over the batch of d(student_f, target_f); d_F = loss_weight times
 * its gradient with respect to the student network's output F (through c_out). */
static double distill_loss(distiller *d, int batch, float loss_weight) {
    const int64_t ps = d->per_sample;
    const int l2 = strcmp(d->config->distill.loss, "l2") == 0;
    const double c = d->huber_c;
    double total = 0.0;
    for (int b = 0; b < batch; b++) {
        const float *fs = d->student_f + b * ps, *ft = d->target_f + b * ps;
        double squares = 0.0;
        for (int64_t j = 0; j < ps; j++) {
            const double diff = (double)fs[j] - (double)ft[j];
            squares += diff * diff;
        }
        /* L2: mean_j diff^2, d/dfs_j = 2 diff / P. Pseudo-Huber: sqrt(S + c^2) - c,
         * d/dfs_j = diff / sqrt(S + c^2). Both over the batch's mean. */
        const double root = sqrt(squares + c * c);
        const double loss = l2 ? squares / (double)ps : root - c;
        const double per_diff = l2 ? 2.0 / (double)ps : (root > 0 ? 1.0 / root : 0.0);
        const double c_out = consistency_scalings(d->sigma_next[b], d->sigma_data, d->sigma_min).c_out;
        const double coeff = (double)loss_weight * per_diff * c_out / batch;
        for (int64_t j = 0; j < ps; j++) d->d_F[b * ps + j] = (float)(coeff * ((double)fs[j] - (double)ft[j]));
        total += loss;
    }
    return total / batch;
}

static double distill_micro_batch(trainable *self, const float *samples, const int32_t *labels, const int64_t *index,
                                  int batch, int64_t step, float loss_weight, const gradient_handover *handover,
                                  double *statistics) {
    (void)handover; /* on the host: the store averages the whole gradient after the step */
    (void)statistics;
    distiller *d = self->self;
    draw_step(d, samples, labels, index, batch, step);
    teacher_heun_step(d, batch);
    const float *guidance = d->guidance_input ? d->guidance : NULL;
    consistency_apply(&d->target, &d->target_buffers, d->x_now, d->sigma_now, d->y, guidance, batch, d->sigma_data,
                      d->sigma_min, d->target_f);
    consistency_apply(&d->student, &d->student_buffers, d->x_next, d->sigma_next, d->y, guidance, batch,
                      d->sigma_data, d->sigma_min, d->student_f);
    const double loss = distill_loss(d, batch, loss_weight);
    dit_backward(&d->student, d->d_F, NULL, batch);
    return loss;
}

static void distill_after_step(trainable *self) {
    distiller *d = self->self;
    ema_update(d->target.params, d->student.params, d->student.table.trainable_numel, d->config->distill.target_ema);
}

static void distill_destroy(trainable *self) {
    distiller *d = self->self;
    self->validation->destroy(self->validation);
    consistency_buffers_destroy(&d->student_buffers);
    consistency_buffers_destroy(&d->target_buffers);
    dit_destroy(&d->student), dit_destroy(&d->teacher), dit_destroy(&d->target);
    free(d->memory);
    free(d);
    free(self);
}

trainable *distill_trainable_create(const ldm_config *config, int micro_batch, const void *context) {
    const distill_context *ctx = context;
    distiller *d = xcalloc(1, sizeof *d);
    d->config = config;
    const distill_config *dc = &config->distill;
    const dit_shape shape = config_dit_shape(config), student_shape = config_student_shape(config);
    const ldm_precision precision = (ldm_precision)precision_from_name(config->train.precision);
    d->guidance_input = student_shape.guidance_input;
    d->passes = dc->guidance != 1.0 || d->guidance_input ? 2 : 1;
    dit_create_precision(&d->student, &student_shape, micro_batch, precision);
    dit_create_precision(&d->teacher, &shape, d->passes * micro_batch, precision);
    dit_create_precision(&d->target, &student_shape, micro_batch, precision);
    consistency_buffers_create(&d->student_buffers, &shape, micro_batch);
    consistency_buffers_create(&d->target_buffers, &shape, micro_batch);
    /* The teacher's EMA weights, read by rank 0 and sent to every rank; the
     * student and the target start as the teacher. A guidance input's tensors
     * come last in the student's table (dit.h): they start as DiT's
     * initialisation, whose zero last layer adds nothing at first. */
    if (comm_rank() == 0) {
        char *file = path_join(ctx->teacher_checkpoint, "ema.safetensors");
        param_table_load_safetensors(&d->teacher.table, file);
        free(file);
    }
    const size_t teacher_count = d->teacher.table.trainable_numel, count = d->student.table.trainable_numel;
    comm_broadcast(d->teacher.params, teacher_count * sizeof(float), 0);
    dit_init_weights(&d->student, config->train.seed);
    memcpy(d->student.params, d->teacher.params, teacher_count * sizeof(float));
    memcpy(d->target.params, d->student.params, count * sizeof(float));

    d->per_sample = (int64_t)shape.in_channels * shape.input_size * shape.input_size;
    d->sigma_min = dc->sigma_min;
    d->sigma_data = config->diffusion.sigma_data;
    /* The pseudo-Huber c of "Improved techniques for training consistency
     * models": 0.00054 sqrt(d), d the dimension of a sample. */
    d->huber_c = dc->huber_c > 0 ? dc->huber_c : 0.00054 * sqrt((double)d->per_sample);
    /* One allocation: the points (doubles) first, then 4-byte floats and ints. */
    const size_t b = (size_t)micro_batch, n = b * (size_t)d->per_sample, tb = (size_t)d->passes * b;
    const size_t words = 4 * b + 7 * n + 4 * (size_t)d->passes * n + 3 * tb;
    d->memory = xmalloc(sizeof(double) * (size_t)dc->num_points + sizeof(float) * words);
    d->points = d->memory;
    for (int i = 0; i < dc->num_points; i++)
        d->points[i] = consistency_point(i, dc->num_points, dc->sigma_min, dc->sigma_max, dc->rho);
    float *f = (float *)(d->points + dc->num_points);
    d->sigma_next = f, f += b;
    d->sigma_now = f, f += b;
    d->guidance = f, f += b;
    d->x_next = f, f += n;
    d->x_now = f, f += n;
    d->slope = f, f += n;
    d->denoised = f, f += n;
    d->target_f = f, f += n;
    d->student_f = f, f += n;
    d->d_F = f, f += n;
    d->teacher_x = f, f += (size_t)d->passes * n;
    d->teacher_in = f, f += (size_t)d->passes * n;
    d->teacher_F = f, f += (size_t)d->passes * n;
    d->teacher_D = f, f += (size_t)d->passes * n;
    d->teacher_sigma = f, f += tb;
    d->teacher_t = f, f += tb;
    _Static_assert(sizeof(int) == sizeof(float), "ints share the float-sized slots");
    d->y = (int *)f, f += b;
    d->teacher_y = (int *)f;
    d->target_state = (trainable_extra_state){.weights = d->target.params, .name = "target",
                                              .after_step = distill_after_step, .record_name = "consistency",
                                              .record_json = ctx->record_json,
                                              .check_saved_record = consistency_record_check_resume};
    /* The pictures of train.sample_every: the student's EMA weights with its
     * 2-step sampler (at the lower end of a guidance range). */
    consistency_sampler_options pictures = {.steps = 2, .sigma_min = dc->sigma_min,
                                            .guidance = d->guidance_input ? dc->guidance : 0};
    consistency_default_points(2, dc->sigma_min, dc->sigma_max, dc->rho, pictures.sigmas);

    trainable *t = xcalloc(1, sizeof *t);
    *t = (trainable){
        .kind = "consistency",
        .shape_section = "model",
        .settings_keys = distill_settings_keys,
        .table = &d->student.table,
        .params = d->student.params,
        .grads = d->student.grads,
        .fixed = d->student.fixed,
        .count = count,
        .expect_channels = shape.in_channels,
        .expect_size = shape.input_size,
        .expect_num_classes = config->model.num_classes,
        .statistic_count = 0,
        .zero_grad = distill_zero_grad,
        .micro_batch = distill_micro_batch,
        .destroy = distill_destroy,
        .self = d,
        .extra = &d->target_state,
        .validation = dit_validation_create(&d->student.shape, d->sigma_data, &pictures),
    };
    return t;
}

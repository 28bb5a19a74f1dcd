/* Consistency distillation with its three networks on the rank's GPU (`ldm
 * distill` with device.type cuda): the trainable of distill_trainable_create,
 * kind "consistency" with the same checkpoints (target.safetensors, the
 * "consistency" record), whose step runs on the device.
 *
 * The student's params and gradients are the device's (the trainable's device
 * capability): the loop's GPU parameter store averages them (NCCL, in the
 * slices handed over during the backward pass of the step's final
 * micro-batch, as for ldm train), clips and steps them, with the EMA and the
 * moments beside them. The target network (an EMA of the student) lives on the
 * device too: the extra state's device_weights, followed there after each step
 * taken (one kernel), with its host mirror refreshed and restored by the store
 * with the others. The frozen teacher is on the device only. The host keeps a
 * CPU dit_model of the student laid out for one sample, for the table, the
 * initial weights and the mirrors the loop saves.
 *
 * A micro-batch: the host draws each sample's points, label, guidance scale
 * and noise stream (distill_draws.h, the CPU distiller's own draws) and
 * computes its coefficients in double (edm.c, consistency.c); those and the
 * samples go up asynchronously on the one stream that the three networks
 * share (dit_cuda_use_stream: each network's input is the previous one's
 * output, so one stream orders them); then on the device: x_{n+1} = x + s z
 * (edm_cuda.h's noise from the sample's stream), the guided teacher's Heun step
 * to x_n (two forward passes of passes x B rows), the target network at
 * (x_n, s_n), the student at (x_{n+1}, s_{n+1}), the loss and d_F
 * (consistency_cuda.h), and the student's backward pass, which ADDS into the
 * device gradients. The per-sample losses come back: the micro-batch's one wait.
 *
 * Everything is laid out at creation; a step allocates nothing. */
#include "distill_cuda_trainable.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "atomic_file.h"
#include "comm.h"
#include "consistency.h"
#include "consistency_cuda.h"
#include "consistency_record.h"
#include "distill_draws.h"
#include "dit.h"
#include "dit_cuda.h"
#include "dit_cuda_trainable.h"
#include "dit_validation.h"
#include "edm.h"
#include "edm_cuda.h"
#include "fatal.h"
#include "model_shapes.h"
#include "ops_cuda.h"
#include "trainables.h"

/* model.class_dropout is not used by distillation: it may change on resume. */
static const char *const distill_settings_keys[] = {"class_dropout", NULL};

typedef struct {
    const ldm_config *config;
    int micro_batch;
    int passes;           /* teacher rows per sample: 2 under guidance, else 1 */
    int guidance_input;   /* 1: the scale is drawn per sample and is an input of the student */
    int l2;               /* distill.loss l2, else pseudo-Huber */
    int64_t per_sample;   /* P = C * H * W */
    double sigma_min, sigma_data, huber_c;
    double *points;       /* host (N) increasing: points[0] = sigma_min, points[N-1] = sigma_max */
    dit_model host;       /* the student's host mirrors (params, grads), fixed and the table (activations for 1 sample) */
    float *host_target;   /* host (count) the target network's mirror */
    dit_cuda_model student, teacher, target; /* on the student's stream */
    /* device buffers of up to micro_batch samples (B) of P values */
    float *x, *noise, *x_next, *x_now, *slope;           /* (B, P); noise: scratch of x_{n+1}'s kernel */
    float *student_in, *student_F, *student_f;           /* (B, P) */
    float *target_in, *target_F, *target_f, *d_F;        /* (B, P) */
    float *teacher_in, *teacher_F;                       /* (passes B, P) */
    float *t_next, *t_now;                               /* (passes B) the network's time input at s_{n+1}, s_n */
    int *y;                                              /* (passes B) labels, then the null class */
    float *guidance;                                     /* (B) the student's and target's scale input */
    uint64_t *noise_streams;                             /* (B) */
    edm_sample_coefficients *noise_coefficients;         /* (B) c_in 1, sigma s_{n+1}: x_{n+1} = x + s z */
    distill_sample_coefficients *coefficients;           /* (B) */
    double *sample_loss;                                 /* (B) */
    /* page-locked host twins of the per-sample buffers */
    float *host_t_next, *host_t_now;                     /* (passes B) */
    int *host_y;                                         /* (passes B) */
    float *host_guidance;                                /* (B) */
    uint64_t *host_noise_streams;                        /* (B) */
    edm_sample_coefficients *host_noise_coefficients;    /* (B) */
    distill_sample_coefficients *host_coefficients;      /* (B) */
    double *host_sample_loss;                            /* (B) */
    trainable_device residency;         /* the student's device params and gradients */
    trainable_extra_state target_state; /* the target network: host mirror and device weights */
    const gradient_handover *handover;  /* during the final micro-batch's backward, else NULL */
    dit_gradient_slices slices;
} distill_cuda_trainer;

static void stage_gradients_ready(void *context, int stage) {
    distill_cuda_trainer *d = context;
    dit_gradient_slices_hand_over(&d->slices, stage, d->handover);
}

static void zero_grad_entry(trainable *self) { dit_cuda_zero_grad(&((distill_cuda_trainer *)self->self)->student); }

/* Each sample's draws (the CPU distiller's) and coefficients into the page-locked buffers. */
static void prepare_host_rows(distill_cuda_trainer *d, const int32_t *labels, const int64_t *index, int batch,
                              int64_t step) {
    const int null_class = d->config->model.num_classes;
    for (int i = 0; i < batch; i++) {
        const distill_sample_draw draw =
            distill_draw_sample(d->config, d->points, d->guidance_input, labels[i], index[i], step);
        distill_sample_coefficients *c = &d->host_coefficients[i];
        c->sigma[0] = draw.sigma_next;
        c->sigma[1] = draw.sigma_now;
        for (int at = 0; at < 2; at++) {
            const edm_precond p = edm_preconditioning(c->sigma[at], d->sigma_data);
            const consistency_scaling s = consistency_scalings(c->sigma[at], d->sigma_data, d->sigma_min);
            c->c_in[at] = p.c_in;
            c->edm_skip[at] = p.c_skip;
            c->edm_out[at] = p.c_out;
            c->consistency_skip[at] = s.c_skip;
            c->consistency_out[at] = s.c_out;
        }
        c->guidance = draw.guidance;
        d->host_guidance[i] = draw.guidance;
        d->host_noise_streams[i] = draw.noise_stream;
        d->host_noise_coefficients[i] = (edm_sample_coefficients){.sigma = c->sigma[0], .c_in = 1.0};
        const float t_next = (float)edm_time_input(c->sigma[0]), t_now = (float)edm_time_input(c->sigma[1]);
        for (int p = 0; p < d->passes; p++) {
            d->host_t_next[p * batch + i] = t_next;
            d->host_t_now[p * batch + i] = t_now;
            d->host_y[p * batch + i] = p == 0 ? draw.y : null_class;
        }
    }
}

static double micro_batch_entry(trainable *self, const float *samples, const int32_t *labels, const int64_t *index,
                                int batch, int64_t step, float loss_weight, const gradient_handover *handover,
                                double *statistics) {
    (void)statistics;
    distill_cuda_trainer *d = self->self;
    if (batch < 1 || batch > d->micro_batch)
        fatal_internal("GPU distiller: batch %d outside [1, %d]", batch, d->micro_batch);
    const int ps = (int)d->per_sample, rows = d->passes * batch;
    prepare_host_rows(d, labels, index, batch, step);
    /* The previous micro-batch ended with a wait on the stream, so the host
     * buffers are free to be refilled, and these copies need not wait. */
    ldm_stream stream = d->student.stream;
    const size_t n = (size_t)batch;
    cuda_copy_to_device_async(d->x, samples, n * (size_t)ps * sizeof(float), stream);
    cuda_copy_to_device_async(d->noise_streams, d->host_noise_streams, n * sizeof(uint64_t), stream);
    cuda_copy_to_device_async(d->noise_coefficients, d->host_noise_coefficients, n * sizeof(edm_sample_coefficients),
                              stream);
    cuda_copy_to_device_async(d->coefficients, d->host_coefficients, n * sizeof(distill_sample_coefficients), stream);
    cuda_copy_to_device_async(d->guidance, d->host_guidance, n * sizeof(float), stream);
    cuda_copy_to_device_async(d->t_next, d->host_t_next, (size_t)rows * sizeof(float), stream);
    cuda_copy_to_device_async(d->t_now, d->host_t_now, (size_t)rows * sizeof(float), stream);
    cuda_copy_to_device_async(d->y, d->host_y, (size_t)rows * sizeof(int), stream);

    /* x_{n+1} = x + s_{n+1} z */
    edm_training_input_cuda(d->x_next, d->noise, d->x, d->noise_streams, d->noise_coefficients, batch, ps, stream);
    /* The teacher's Heun step from s_{n+1} to s_n. */
    distill_network_input_cuda(d->teacher_in, d->x_next, d->coefficients, 0, batch, d->passes, ps, stream);
    dit_cuda_forward(&d->teacher, d->teacher_in, d->t_next, d->y, NULL, rows, d->teacher_F);
    distill_heun_euler_cuda(d->slope, d->x_now, d->x_next, d->teacher_F, d->coefficients, batch, d->passes, ps, stream);
    distill_network_input_cuda(d->teacher_in, d->x_now, d->coefficients, 1, batch, d->passes, ps, stream);
    dit_cuda_forward(&d->teacher, d->teacher_in, d->t_now, d->y, NULL, rows, d->teacher_F);
    distill_heun_correct_cuda(d->x_now, d->x_next, d->slope, d->teacher_F, d->coefficients, batch, d->passes, ps,
                              stream);
    /* The target network at (x_n, s_n), the student at (x_{n+1}, s_{n+1}). */
    const float *guidance = d->guidance_input ? d->guidance : NULL;
    distill_network_input_cuda(d->target_in, d->x_now, d->coefficients, 1, batch, 1, ps, stream);
    dit_cuda_forward(&d->target, d->target_in, d->t_now, d->y, guidance, batch, d->target_F);
    distill_consistency_output_cuda(d->target_f, d->x_now, d->target_F, d->coefficients, 1, batch, ps, stream);
    distill_network_input_cuda(d->student_in, d->x_next, d->coefficients, 0, batch, 1, ps, stream);
    dit_cuda_forward(&d->student, d->student_in, d->t_next, d->y, guidance, batch, d->student_F);
    distill_consistency_output_cuda(d->student_f, d->x_next, d->student_F, d->coefficients, 0, batch, ps, stream);
    distill_loss_cuda(d->sample_loss, d->d_F, d->student_f, d->target_f, d->coefficients, d->l2, d->huber_c,
                      loss_weight, batch, ps, stream);
    d->handover = handover;
    dit_cuda_backward(&d->student, d->d_F, NULL, batch);
    d->handover = NULL;
    cuda_copy_to_host_async(d->host_sample_loss, d->sample_loss, n * sizeof(double), stream);
    cuda_stream_synchronize(stream);
    double total = 0.0; /* as distill_trainable.c's distill_loss sums it */
    for (int i = 0; i < batch; i++) total += d->host_sample_loss[i];
    return total / batch;
}

/* The target network follows the student on the device (ema_update's arithmetic). */
static void after_step_entry(trainable *self) {
    distill_cuda_trainer *d = self->self;
    ema_update_cuda(d->target.params, d->student.params, d->host.table.trainable_numel, d->config->distill.target_ema,
                    d->student.stream);
}

static void destroy_entry(trainable *self) {
    distill_cuda_trainer *d = self->self;
    self->validation->destroy(self->validation);
    /* The networks that borrow the student's stream go first (each waits for it). */
    dit_cuda_destroy(&d->teacher);
    dit_cuda_destroy(&d->target);
    dit_cuda_destroy(&d->student);
    void *device_buffers[] = {d->x, d->noise, d->x_next, d->x_now, d->slope, d->student_in, d->student_F,
                              d->student_f, d->target_in, d->target_F, d->target_f, d->d_F, d->teacher_in,
                              d->teacher_F, d->t_next, d->t_now, d->y, d->guidance, d->noise_streams,
                              d->noise_coefficients, d->coefficients, d->sample_loss};
    for (size_t i = 0; i < sizeof device_buffers / sizeof device_buffers[0]; i++) cuda_buffer_free(device_buffers[i]);
    void *host_buffers[] = {d->host_t_next, d->host_t_now, d->host_y, d->host_guidance, d->host_noise_streams,
                            d->host_noise_coefficients, d->host_coefficients, d->host_sample_loss};
    for (size_t i = 0; i < sizeof host_buffers / sizeof host_buffers[0]; i++) cuda_pinned_free(host_buffers[i]);
    dit_gradient_slices_free(&d->slices);
    dit_destroy(&d->host);
    free(d->host_target);
    free(d->points);
    free(d);
    free(self);
}

/* The student's and target's initial weights (the teacher's EMA weights, read
 * by rank 0 and sent to every rank, or without a teacher checkpoint, for ldm
 * bench, the initialised DiT; a guidance input's tensors, last in the
 * student's table, keep DiT's initialisation) into the host mirrors, and the
 * teacher's onto the device. */
static void load_weights(distill_cuda_trainer *d, const dit_shape *teacher_shape, const distill_context *ctx) {
    dit_model teacher;
    dit_create(&teacher, teacher_shape, 1);
    if (!ctx->teacher_checkpoint) {
        dit_init_weights(&teacher, d->config->train.seed);
    } else if (comm_rank() == 0) {
        char *file = path_join(ctx->teacher_checkpoint, "ema.safetensors");
        param_table_load_safetensors(&teacher.table, file);
        free(file);
    }
    const size_t teacher_count = teacher.table.trainable_numel, count = d->host.table.trainable_numel;
    comm_broadcast(teacher.params, teacher_count * sizeof(float), 0);
    dit_init_weights(&d->host, d->config->train.seed);
    memcpy(d->host.params, teacher.params, teacher_count * sizeof(float));
    memcpy(d->host_target, d->host.params, count * sizeof(float));
    dit_cuda_upload_params(&d->teacher, teacher.params);
    dit_cuda_upload_params(&d->student, d->host.params);
    dit_cuda_upload_params(&d->target, d->host_target);
    dit_destroy(&teacher);
}

trainable *distill_cuda_trainable_create(const ldm_config *config, int micro_batch, const void *context) {
    cuda_use_device_of_local_rank(comm_local_rank());
    const distill_context *ctx = context;
    const distill_config *dc = &config->distill;
    distill_cuda_trainer *d = xcalloc(1, sizeof *d);
    d->config = config;
    d->micro_batch = micro_batch;
    const dit_shape shape = config_dit_shape(config), student_shape = config_student_shape(config);
    const ldm_precision precision = (ldm_precision)precision_from_name(config->train.precision);
    d->guidance_input = student_shape.guidance_input;
    d->passes = dc->guidance != 1.0 || d->guidance_input ? 2 : 1;
    d->l2 = strcmp(dc->loss, "l2") == 0;
    dit_create(&d->host, &student_shape, 1);
    d->host_target = xmalloc(d->host.table.trainable_numel * sizeof(float));
    dit_cuda_create(&d->student, &student_shape, micro_batch, precision, 0);
    dit_cuda_create(&d->teacher, &shape, d->passes * micro_batch, precision, 0);
    dit_cuda_create(&d->target, &student_shape, micro_batch, precision, 0);
    dit_cuda_use_stream(&d->teacher, d->student.stream);
    dit_cuda_use_stream(&d->target, d->student.stream);
    load_weights(d, &shape, ctx);

    d->per_sample = (int64_t)shape.in_channels * shape.input_size * shape.input_size;
    d->sigma_min = dc->sigma_min;
    d->sigma_data = config->diffusion.sigma_data;
    /* distill_trainable.c's c: 0.00054 sqrt(d), d the dimension of a sample. */
    d->huber_c = dc->huber_c > 0 ? dc->huber_c : 0.00054 * sqrt((double)d->per_sample);
    d->points = xmalloc(sizeof(double) * (size_t)dc->num_points);
    for (int i = 0; i < dc->num_points; i++)
        d->points[i] = consistency_point(i, dc->num_points, dc->sigma_min, dc->sigma_max, dc->rho);

    const size_t b = (size_t)micro_batch, values = b * (size_t)d->per_sample, rows = (size_t)d->passes * b;
    float **per_value[] = {&d->x, &d->noise, &d->x_next, &d->x_now, &d->slope, &d->student_in, &d->student_F,
                           &d->student_f, &d->target_in, &d->target_F, &d->target_f, &d->d_F};
    for (size_t i = 0; i < sizeof per_value / sizeof per_value[0]; i++)
        *per_value[i] = cuda_buffer_alloc(values * sizeof(float));
    d->teacher_in = cuda_buffer_alloc(rows * (size_t)d->per_sample * sizeof(float));
    d->teacher_F = cuda_buffer_alloc(rows * (size_t)d->per_sample * sizeof(float));
    d->t_next = cuda_buffer_alloc(rows * sizeof(float));
    d->t_now = cuda_buffer_alloc(rows * sizeof(float));
    d->y = cuda_buffer_alloc(rows * sizeof(int));
    d->guidance = cuda_buffer_alloc(b * sizeof(float));
    d->noise_streams = cuda_buffer_alloc(b * sizeof(uint64_t));
    d->noise_coefficients = cuda_buffer_alloc(b * sizeof(edm_sample_coefficients));
    d->coefficients = cuda_buffer_alloc(b * sizeof(distill_sample_coefficients));
    d->sample_loss = cuda_buffer_alloc(b * sizeof(double));
    d->host_t_next = cuda_pinned_alloc(rows * sizeof(float));
    d->host_t_now = cuda_pinned_alloc(rows * sizeof(float));
    d->host_y = cuda_pinned_alloc(rows * sizeof(int));
    d->host_guidance = cuda_pinned_alloc(b * sizeof(float));
    d->host_noise_streams = cuda_pinned_alloc(b * sizeof(uint64_t));
    d->host_noise_coefficients = cuda_pinned_alloc(b * sizeof(edm_sample_coefficients));
    d->host_coefficients = cuda_pinned_alloc(b * sizeof(distill_sample_coefficients));
    d->host_sample_loss = cuda_pinned_alloc(b * sizeof(double));

    d->target_state = (trainable_extra_state){.weights = d->host_target, .device_weights = d->target.params,
                                              .name = "target", .after_step = after_step_entry,
                                              .record_name = "consistency", .record_json = ctx->record_json,
                                              .check_saved_record = consistency_record_check_resume};
    /* The pictures of train.sample_every: the student's EMA weights (the host
     * mirror) with its 2-step sampler (at the lower end of a guidance range),
     * sampled on this rank's GPU (sample_runner.h). */
    consistency_sampler_options pictures = {.steps = 2, .sigma_min = dc->sigma_min,
                                            .guidance = d->guidance_input ? dc->guidance : 0};
    consistency_default_points(2, dc->sigma_min, dc->sigma_max, dc->rho, pictures.sigmas);
    dit_gradient_slices_plan(&d->slices, &d->host.table, student_shape.depth);
    d->residency = (trainable_device){.params = d->student.params, .grads = d->student.grads,
                                      .host_buffer_alloc = cuda_pinned_alloc, .host_buffer_free = cuda_pinned_free,
                                      .stream = d->student.stream, .gradient_slices = d->slices.count};
    d->student.gradients_ready = stage_gradients_ready;
    d->student.gradients_ready_context = d;

    trainable *t = xcalloc(1, sizeof *t);
    *t = (trainable){
        .kind = "consistency",
        .shape_section = "model",
        .settings_keys = distill_settings_keys,
        .table = &d->host.table,
        .params = d->host.params,
        .grads = d->host.grads,
        .fixed = d->host.fixed,
        .count = d->host.table.trainable_numel,
        .expect_channels = shape.in_channels,
        .expect_size = shape.input_size,
        .expect_num_classes = config->model.num_classes,
        .statistic_count = 0,
        .zero_grad = zero_grad_entry,
        .micro_batch = micro_batch_entry,
        .destroy = destroy_entry,
        .self = d,
        .device = &d->residency,
        .extra = &d->target_state,
        .validation = dit_validation_create_on(&student_shape, d->sigma_data, &pictures, 1),
    };
    return t;
}

/* The GPU side of `ldm bench --device cuda` (see bench_cuda.h): the model and
 * batch on the rank's GPU, the timed training steps (CUDA events around each
 * phase, read one step behind so that the host never drains the queue), a
 * consistency distillation step (the GPU distiller as the loop drives it), and the
 * table of dense peak TFLOP/s by GPU name that the MFU is taken against.
 * Host C over the CUDA runtime API; built only in a CUDA build. */
#include "bench_cuda.h"

#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "device.h"
#include "distill_cuda_trainable.h"
#include "dit_cuda_kernels.h"
#include "fatal.h"
#include "monotonic_clock.h"
#include "parameter_store.h"
#include "trainables.h"
#include "sampler_cuda.h"

#define CUDA_OK(call) cuda_ok((call), #call)

static void cuda_ok(cudaError_t status, const char *what) {
    if (status != cudaSuccess) fatal_internal("bench: CUDA %s failed: %s", what, cudaGetErrorString(status));
}

/* A device copy of bytes of host. */
static void *upload(const void *host, size_t bytes) {
    void *device = cuda_buffer_alloc(bytes);
    cuda_copy_to_device(device, host, bytes);
    return device;
}

void bench_cuda_create(bench_cuda *b, const dit_shape *shape, int batch, ldm_precision precision, float loss_scale,
                       uint64_t seed, const float *x, const float *t, const int *y, const float *target) {
    memset(b, 0, sizeof(*b));
    b->device = cuda_use_device_of_local_rank(comm_local_rank()); /* bench.c refuses --device cuda without one */
    device_cuda_name(b->device, b->device_name, sizeof(b->device_name));
    b->batch = batch;
    b->per_sample = shape->in_channels * shape->input_size * shape->input_size;
    b->loss_scale = loss_scale;

    dit_cuda_create(&b->model, shape, batch, precision, 1);
    /* The CPU bench's initial weights: the same init on a host model, whose
     * parameter layout the GPU model shares (one sample of activations is all
     * the host model needs to lay out). */
    dit_model host;
    dit_create(&host, shape, 1);
    dit_init_weights(&host, seed);
    dit_cuda_upload_params(&b->model, host.params);
    dit_destroy(&host);

    const size_t values = sizeof(float) * (size_t)batch * (size_t)b->per_sample;
    b->x = upload(x, values);
    b->target = upload(target, values);
    b->t = upload(t, sizeof(float) * (size_t)batch);
    b->y = upload(y, sizeof(int) * (size_t)batch);
    b->out = cuda_buffer_alloc(values);
    b->d_out = cuda_buffer_alloc(values);
    b->loss = cuda_buffer_alloc(sizeof(float));
}

void bench_cuda_destroy(bench_cuda *b) {
    dit_cuda_destroy(&b->model); /* waits for its stream first */
    float *floats[] = {b->x, b->t, b->target, b->out, b->d_out, b->loss};
    for (size_t i = 0; i < sizeof(floats) / sizeof(floats[0]); i++) cuda_buffer_free(floats[i]);
    cuda_buffer_free(b->y);
    memset(b, 0, sizeof(*b));
}

/* ---- the timed steps ---- */

/* Events recorded in one step: before it, after the forward phase, after the
 * backward phase, after AdamW. */
enum { MARK_START, MARK_FORWARD, MARK_BACKWARD, MARK_END, MARKS };

static double seconds_between(cudaEvent_t from, cudaEvent_t to) {
    float ms = 0;
    CUDA_OK(cudaEventElapsedTime(&ms, from, to));
    return 1e-3 * (double)ms;
}

/* Adds a recorded step's phases to times, waiting for the step to finish. */
static void add_phases(cudaEvent_t marks[MARKS], bench_cuda_times *times) {
    CUDA_OK(cudaEventSynchronize(marks[MARK_END]));
    times->forward_s += seconds_between(marks[MARK_START], marks[MARK_FORWARD]);
    times->backward_s += seconds_between(marks[MARK_FORWARD], marks[MARK_BACKWARD]);
    times->optimizer_s += seconds_between(marks[MARK_BACKWARD], marks[MARK_END]);
}

/* One training step queued on the model's stream, as bench.c's CPU loop takes
 * it: the EDM loss without per-sample weights (the CPU bench's, so that both
 * report the same losses for the same config), fp16's loss scale on the loss
 * gradient and out of the parameter gradient. */
static void queue_step(bench_cuda *b, const train_config *train, cudaEvent_t marks[MARKS]) {
    dit_cuda_model *m = &b->model;
    CUDA_OK(cudaEventRecord(marks[MARK_START], m->stream));
    dit_cuda_zero_grad(m);
    dit_cuda_forward(m, b->x, b->t, b->y, NULL, b->batch, b->out);
    weighted_mse_forward_cuda(b->loss, NULL, b->out, b->target, NULL, b->batch, b->per_sample, m->stream);
    CUDA_OK(cudaEventRecord(marks[MARK_FORWARD], m->stream));
    weighted_mse_backward_cuda(b->d_out, b->loss_scale, b->out, b->target, NULL, b->batch, b->per_sample, m->stream);
    dit_cuda_backward(m, b->d_out, NULL, b->batch);
    if (b->loss_scale != 1.0f)
        dit_cuda_scale(m->grads, m->grads, 1.0f / b->loss_scale, m->table.trainable_numel, m->stream);
    CUDA_OK(cudaEventRecord(marks[MARK_BACKWARD], m->stream));
    dit_cuda_adamw_step(m, (float)train->lr, (float)train->adam_beta1, (float)train->adam_beta2,
                        (float)train->adam_eps, (float)train->weight_decay);
    CUDA_OK(cudaEventRecord(marks[MARK_END], m->stream));
}

void bench_cuda_run(bench_cuda *b, const train_config *train, int warmup, int steps, bench_cuda_times *times) {
    if (steps < 1) fatal_internal("bench_cuda_run: %d timed steps", steps);
    memset(times, 0, sizeof(*times));
    /* Two sets of marks, alternating: step s's are read while step s + 1 is
     * queued behind it, so the GPU never waits for the host. */
    cudaEvent_t marks[2][MARKS], begin, end;
    for (int set = 0; set < 2; set++)
        for (int i = 0; i < MARKS; i++) CUDA_OK(cudaEventCreate(&marks[set][i]));
    CUDA_OK(cudaEventCreate(&begin));
    CUDA_OK(cudaEventCreate(&end));

    const ldm_stream stream = b->model.stream;
    for (int step = 0; step < warmup + steps; step++) {
        if (step == warmup) CUDA_OK(cudaEventRecord(begin, stream));
        queue_step(b, train, marks[step & 1]);
        if (step > warmup) add_phases(marks[(step - 1) & 1], times);
    }
    CUDA_OK(cudaEventRecord(end, stream));
    CUDA_OK(cudaEventSynchronize(end));
    add_phases(marks[(warmup + steps - 1) & 1], times);
    times->elapsed_s = seconds_between(begin, end);
    float loss = 0;
    cuda_copy_to_host(&loss, b->loss, sizeof(float)); /* the stream is done (end) */
    times->loss = loss;

    for (int set = 0; set < 2; set++)
        for (int i = 0; i < MARKS; i++) CUDA_OK(cudaEventDestroy(marks[set][i]));
    CUDA_OK(cudaEventDestroy(begin));
    CUDA_OK(cudaEventDestroy(end));
}

/* ---- a distillation step ---- */

double bench_cuda_distill(const ldm_config *config, int batch, const float *x, const int *y, int warmup, int steps,
                          double *loss) {
    if (steps < 1) fatal_internal("bench_cuda_distill: %d timed steps", steps);
    const distill_context teacher = {.teacher_checkpoint = NULL, .record_json = "{}"};
    trainable *t = distill_cuda_trainable_create(config, batch, &teacher);
    const train_config *train = &config->train;
    adamw_state adam;
    adamw_create(&adam, t->count, (adamw_hyper){.beta1 = (float)train->adam_beta1, .beta2 = (float)train->adam_beta2,
                                                .eps = (float)train->adam_eps,
                                                .weight_decay = (float)train->weight_decay});
    float *ema = xmalloc(t->count * sizeof(float));
    memcpy(ema, t->params, t->count * sizeof(float));
    parameter_store *store = parameter_store_create(t, &adam, ema);
    store->from_host(store);
    const size_t values = (size_t)batch * (size_t)t->expect_channels * t->expect_size * t->expect_size;
    float *samples = t->device->host_buffer_alloc(values * sizeof(float)); /* page-locked, as the loop's */
    memcpy(samples, x, values * sizeof(float));
    int32_t *labels = xmalloc((size_t)batch * sizeof(int32_t));
    int64_t *index = xmalloc((size_t)batch * sizeof(int64_t));
    for (int i = 0; i < batch; i++) labels[i] = y[i], index[i] = i;
    double start = 0;
    for (int step = 0; step < warmup + steps; step++) {
        if (step == warmup) start = monotonic_seconds();
        t->zero_grad(t);
        *loss = t->micro_batch(t, samples, labels, index, batch, step, 1.0f, NULL, NULL);
        store->gradient_norm(store);
        store->adamw_step(store, (float)train->lr);
        store->ema_update(store, train->ema_decay);
        t->extra->after_step(t);
    }
    cuda_stream_synchronize(t->device->stream);
    const double per_step = (monotonic_seconds() - start) / steps;
    t->device->host_buffer_free(samples);
    free(labels), free(index), free(ema);
    store->destroy(store);
    adamw_destroy(&adam);
    t->destroy(t);
    return per_step;
}

/* ---- a sampling step ---- */

double bench_cuda_sampling_images_per_s(bench_cuda *b, double sigma_data, int warmup, int steps) {
    if (steps < 1) fatal_internal("bench_cuda_sampling_images_per_s: %d timed steps", steps);
    /* One Euler step from sigma_max: one network evaluation of the batch, its
     * noise drawn on the host and uploaded, as ldm sample's steps do. */
    const sampler_options options = {.steps = 1, .method = SAMPLER_EULER, .guidance = 1.0};
    sampler_cuda sampler;
    sampler_cuda_create(&sampler, &b->model, &options, sigma_data, b->batch);
    int *labels = xmalloc(sizeof(int) * (size_t)b->batch);
    int64_t *indices = xmalloc(sizeof(int64_t) * (size_t)b->batch);
    for (int i = 0; i < b->batch; i++) labels[i] = i % (b->model.shape.num_classes + 1), indices[i] = i;
    cudaEvent_t begin, end;
    CUDA_OK(cudaEventCreate(&begin));
    CUDA_OK(cudaEventCreate(&end));
    for (int step = 0; step < warmup + steps; step++) {
        /* sampler_cuda_run waits for the stream before it draws: the host's noise counts too */
        if (step == warmup) CUDA_OK(cudaEventRecord(begin, b->model.stream));
        sampler_cuda_run(&sampler, labels, indices, b->batch);
    }
    CUDA_OK(cudaEventRecord(end, b->model.stream));
    CUDA_OK(cudaEventSynchronize(end));
    const double seconds = seconds_between(begin, end);
    CUDA_OK(cudaEventDestroy(begin));
    CUDA_OK(cudaEventDestroy(end));
    free(labels);
    free(indices);
    sampler_cuda_destroy(&sampler);
    return seconds > 0 ? (double)b->batch * steps / seconds : 0.0;
}

/* ---- the peak the MFU is taken against ---- */

/* Dense (not 2:4 sparse) peaks from NVIDIA's data sheets, TFLOP/s. The first
 * entry whose key occurs in the device name wins, so the specific variants come
 * before the plain names ("NVIDIA H100 80GB HBM3" is the SXM part). */
static const struct {
    const char *key;
    double tensor_16bit; /* bf16 and fp16 tensor cores */
    double fp32;         /* fp32 without tensor cores */
} PEAKS[] = {
    {"H100 PCIe", 756, 51},
    {"H100 NVL", 835, 60},
    {"H200 NVL", 835, 60},
    {"H100", 989, 67},
    {"H200", 989, 67},
};

double bench_cuda_peak_tflops(const char *device_name, ldm_precision precision, const char **source) {
    const char *override = getenv("LDM_PEAK_TFLOPS");
    if (override && *override) {
        char *end = NULL;
        double value = strtod(override, &end);
        if (*end != '\0' || !isfinite(value) || value <= 0)
            fatal_input("LDM_PEAK_TFLOPS: expected a number > 0 (TFLOP/s), got '%s'", override);
        *source = "LDM_PEAK_TFLOPS";
        return value;
    }
    for (size_t i = 0; i < sizeof(PEAKS) / sizeof(PEAKS[0]); i++) {
        if (strstr(device_name, PEAKS[i].key)) {
            *source = "table";
            return precision == PRECISION_FP32 ? PEAKS[i].fp32 : PEAKS[i].tensor_16bit;
        }
    }
    *source = "unknown";
    return 0;
}

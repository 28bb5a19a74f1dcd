/* The KL autoencoder on the GPU (see autoencoder_cuda.h): the network of
 * autoencoder_graph.c (the same unit list, layout and op order as the CPU model)
 * over the CUDA ops (ops_cuda.h, ops_cuda_conv.h, autoencoder_cuda_kernels.h),
 * laid out once in one device allocation, and the training step around it.
 *
 * Where the results differ from the CPU model's (at rounding level; the
 * graph's op order and its bf16/fp16 rounding points are shared, so these are
 * the only differences, and tests/test_autoencoder_cuda.c bounds them):
 * - convolutions and linears are cuBLASLt GEMMs over im2col chunks, whose sums
 *   run in another order than the CPU's BLAS and its thread pieces (float
 *   rounding);
 * - GroupNorm statistics and gradients, and the bias gradients, are reduced by
 *   blocks in a fixed tree order, not the CPU's sequential order;
 * - the loss's and the KL's sums (double) are one block's strided partial sums
 *   and a tree, not one value after another (double rounding);
 * - the posterior's and the softmax's expf may differ from the C library's in
 *   the last bit on a GPU (the emulation uses the C library's);
 * - the attention's GEMMs are strided-batched fp32 GEMMs.
 * Encoding and decoding alone (ldm encode, ldm decode, sampling) run the same
 * graph laid out pooled, as the CPU model's inference does; the images'
 * gradient is not computed on the GPU.
 *
 * Notation in the shape comments: B batch, C channels, S = H * W pixels, T tokens
 * (= S in the attention), L latent channels, G GroupNorm groups. */
#ifdef LDM_HAVE_CUDA

#include "autoencoder_cuda.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "autoencoder_cuda_kernels.h"
#include "autoencoder_graph.h"
#include "dit_cuda_kernels.h"
#include "fatal.h"
#include "ops_cuda_conv.h"

struct autoencoder_cuda_units {
    ae_graph graph; /* the network, its buffers in device memory, the ops below */
    gemm_cuda_context *gemm;
    ldm_stream stream; /* the model's (autoencoder_cuda_model.stream) */
    double *host_sums; /* page-locked (2): the loss's sums read back */
    float *host_moments; /* encoding layouts: (max_batch, 2L, h, w) the moments read back */
};

/* ---- the graph's ops on the device (ae_backend): work queued on the model's stream ---- */

static const autoencoder_cuda_units *device_of(const ae_graph *g) { return g->device; }
static ldm_stream stream_of(const ae_graph *g) { return device_of(g)->stream; }
static gemm_cuda_context *gemm_of(const ae_graph *g) { return device_of(g)->gemm; }

static void gpu_conv_forward(const ae_graph *g, float *out, const float *in, const float *weight, const float *bias,
                             const conv2d_dims *shape) {
    conv2d_forward_cuda(gemm_of(g), out, in, weight, bias, shape, g->conv_scratch, g->conv_scratch_floats,
                        stream_of(g));
}

static void gpu_conv_backward(const ae_graph *g, float *d_in, float d_in_beta, float *d_weight, float *d_bias,
                              const float *d_out, const float *in, const float *weight, const conv2d_dims *shape) {
    conv2d_backward_cuda(gemm_of(g), d_in, d_in_beta, d_weight, d_bias, d_out, in, weight, shape, g->conv_scratch,
                         g->conv_scratch_floats, stream_of(g));
}

static void gpu_groupnorm_forward(const ae_graph *g, float *out, float *mean, float *rstd, const float *in,
                                  const float *gamma, const float *beta, int batch, int channels, int spatial) {
    groupnorm_forward_cuda(out, mean, rstd, in, gamma, beta, batch, channels, spatial, g->shape.norm_groups,
                           AE_GROUPNORM_EPS, stream_of(g));
}

static void gpu_groupnorm_backward(const ae_graph *g, float *d_in, float d_in_beta, float *d_gamma, float *d_beta,
                                   const float *d_out, const float *in, const float *mean, const float *rstd,
                                   const float *gamma, int batch, int channels, int spatial) {
    groupnorm_backward_cuda(d_in, d_in_beta, d_gamma, d_beta, d_out, in, mean, rstd, gamma, batch, channels, spatial,
                            g->shape.norm_groups, stream_of(g));
}

static void gpu_silu_forward(const ae_graph *g, float *out, const float *in, size_t n) {
    silu_forward_cuda(out, in, n, stream_of(g));
}

static void gpu_silu_backward(const ae_graph *g, float *d_in, const float *d_out, const float *in, size_t n) {
    silu_backward_cuda(d_in, d_out, in, n, stream_of(g));
}

static void gpu_add(const ae_graph *g, float *out, const float *a, const float *b, size_t n) {
    add_forward_cuda(out, a, b, n, stream_of(g));
}

static void gpu_copy(const ae_graph *g, float *dst, const float *src, size_t n) {
    dit_cuda_copy_async(dst, src, sizeof(float) * n, stream_of(g));
}

static void gpu_upsample_forward(const ae_graph *g, float *out, const float *in, int batch, int channels, int height,
                                 int width) {
    upsample_nearest2x_forward_cuda(out, in, batch, channels, height, width, stream_of(g));
}

static void gpu_upsample_backward(const ae_graph *g, float *d_in, const float *d_out, int batch, int channels,
                                  int height, int width) {
    upsample_nearest2x_backward_cuda(d_in, d_out, batch, channels, height, width, stream_of(g));
}

static void gpu_channels_to_tokens(const ae_graph *g, float *out, const float *in, int batch, int channels,
                                   int tokens) {
    transpose_channels_tokens_forward_cuda(out, in, batch, channels, tokens, stream_of(g));
}

static void gpu_tokens_to_channels(const ae_graph *g, float *out, const float *in, int batch, int channels,
                                   int tokens) {
    transpose_channels_tokens_backward_cuda(out, in, batch, channels, tokens, stream_of(g));
}

static void gpu_linear_forward(const ae_graph *g, float *out, const float *in, const float *weight, const float *bias,
                               int rows, int sample_rows, int in_features, int out_features) {
    (void)sample_rows;
    linear_forward_cuda(gemm_of(g), out, in, weight, bias, rows, in_features, out_features, PRECISION_FP32,
                        stream_of(g));
}

static void gpu_linear_backward(const ae_graph *g, float *d_in, float *d_weight, float *d_bias, const float *d_out,
                                const float *in, const float *weight, int rows, int in_features, int out_features) {
    linear_backward_cuda(gemm_of(g), d_in, 0.0f, d_weight, d_bias, d_out, in, weight, rows, in_features, out_features,
                         PRECISION_FP32, stream_of(g));
}

static void gpu_attention_forward(const ae_graph *g, float *out, float *probs, const float *qkv, int batch, int tokens,
                                  int width) {
    attention_forward_cuda(gemm_of(g), out, probs, qkv, batch, tokens, 1, width, g->precision, stream_of(g));
}

static void gpu_attention_backward(const ae_graph *g, float *d_qkv, float *d_scores, const float *d_out,
                                   const float *qkv, const float *probs, int batch, int tokens, int width) {
    attention_backward_cuda(gemm_of(g), d_qkv, d_scores, d_out, qkv, probs, batch, tokens, 1, width, g->precision,
                            stream_of(g));
}

static void gpu_round(const ae_graph *g, float *x, size_t n) { precision_round_cuda(g->precision, x, n, stream_of(g)); }

static void gpu_posterior_forward(const ae_graph *g, float *mean, float *logvar, float *z, double *kl_sum,
                                  const float *moments, const float *noise, int batch, int per_sample) {
    autoencoder_posterior_forward_cuda(mean, logvar, z, kl_sum, moments, noise, batch, per_sample, g->precision,
                                       stream_of(g));
}

static void gpu_posterior_backward(const ae_graph *g, float *d_moments, const float *d_z, const float *moments,
                                   const float *mean, const float *logvar, const float *noise, float kl_scale,
                                   int batch, int per_sample) {
    autoencoder_posterior_backward_cuda(d_moments, d_z, moments, mean, logvar, noise, kl_scale, batch, per_sample,
                                        g->precision, stream_of(g));
}

static void gpu_reconstruction_sum(const ae_graph *g, double *sum, const float *rec, const float *target, size_t n,
                                   bool l2) {
    autoencoder_reconstruction_sum_cuda(sum, rec, target, n, l2, stream_of(g));
}

static void gpu_reconstruction_backward(const ae_graph *g, float *d_rec, const float *rec, const float *target,
                                        size_t n, bool l2, float d_loss) {
    autoencoder_reconstruction_backward_cuda(d_rec, rec, target, n, l2, d_loss, g->precision, stream_of(g));
}

static const ae_backend gpu_backend = {
    .conv_scratch_floats = conv2d_scratch_floats_cuda,
    .conv_forward = gpu_conv_forward,
    .conv_backward = gpu_conv_backward,
    .groupnorm_forward = gpu_groupnorm_forward,
    .groupnorm_backward = gpu_groupnorm_backward,
    .silu_forward = gpu_silu_forward,
    .silu_backward = gpu_silu_backward,
    .add = gpu_add,
    .copy = gpu_copy,
    .upsample_forward = gpu_upsample_forward,
    .upsample_backward = gpu_upsample_backward,
    .channels_to_tokens = gpu_channels_to_tokens,
    .tokens_to_channels = gpu_tokens_to_channels,
    .linear_forward = gpu_linear_forward,
    .linear_backward = gpu_linear_backward,
    .attention_forward = gpu_attention_forward,
    .attention_backward = gpu_attention_backward,
    .round = gpu_round,
    .posterior_forward = gpu_posterior_forward,
    .posterior_backward = gpu_posterior_backward,
    .reconstruction_sum = gpu_reconstruction_sum,
    .reconstruction_backward = gpu_reconstruction_backward,
};

/* ---- the model ---- */

void autoencoder_cuda_create(autoencoder_cuda_model *m, const autoencoder_shape *shape, int max_batch,
                             ldm_precision precision) {
    autoencoder_cuda_create_purpose(m, shape, max_batch, precision, AE_FOR_TRAINING);
}

void autoencoder_cuda_create_purpose(autoencoder_cuda_model *m, const autoencoder_shape *shape, int max_batch,
                                     ldm_precision precision, autoencoder_purpose purpose) {
    memset(m, 0, sizeof(*m));
    if (precision != PRECISION_FP32 && precision != PRECISION_BF16 && precision != PRECISION_FP16)
        fatal_internal("autoencoder_cuda_create: unknown precision %d", (int)precision);
    if (max_batch < 1) fatal_internal("autoencoder_cuda_create: batch %d", max_batch);
    autoencoder_build_table(&m->table, shape); /* checks the shape (fatal_input) */
    m->shape = *shape;
    m->purpose = purpose;
    m->precision = precision;
    m->max_batch = max_batch;
    m->latent_size = shape->input_size >> (shape->levels - 1);
    m->units = xcalloc(1, sizeof(*m->units));
    ae_graph *g = &m->units->graph;
    g->ops = &gpu_backend;
    g->device = m->units;
    g->shape = *shape;
    g->precision = precision;
    g->max_batch = max_batch;
    g->latent_size = m->latent_size;
    g->param_count = m->table.trainable_numel;
    /* As autoencoder.c lays the CPU model out for each purpose. */
    g->parts = (ae_graph_parts){.encoder = purpose != AE_FOR_DECODING,
                                .decoder = purpose != AE_FOR_ENCODING,
                                .training = purpose == AE_FOR_TRAINING,
                                .pooled = purpose != AE_FOR_TRAINING};
    ae_graph_init(g);

    const size_t bytes = ae_graph_measure(g, &m->table);
    m->memory_bytes = (bytes + ARENA_ALIGNMENT - 1) / ARENA_ALIGNMENT * ARENA_ALIGNMENT;
    /* parameters and gradients start zero */
    m->memory = cuda_model_memory_alloc(m->memory_bytes, "the autoencoder", max_batch, precision);
    /* Placing into the device block: the arena only does address arithmetic on
     * its base (cudaMalloc's 256-byte alignment keeps the 64-byte offsets aligned). */
    arena ar = {.base = m->memory, .capacity = m->memory_bytes};
    ae_graph_place(g, &ar, &m->table);
    m->params = g->params;
    m->grads = g->grads;
    m->compute_params = g->compute_params;
    m->images = g->images;
    m->noise = g->noise;
    m->units->host_sums = cuda_pinned_alloc(2 * sizeof(double));
    if (purpose != AE_FOR_TRAINING) {
        /* The inputs of inference beside the graph's block: (max_batch, C, H, W) and (max_batch, L, h, w). */
        const size_t images = (size_t)max_batch * shape->in_channels * shape->input_size * shape->input_size;
        const size_t latents = (size_t)max_batch * shape->latent_channels * m->latent_size * m->latent_size;
        if (g->parts.encoder) {
            m->encode_input = cuda_buffer_alloc(sizeof(float) * images);
            m->units->host_moments = xmalloc(sizeof(float) * 2 * latents);
        }
        if (g->parts.decoder) m->decode_input = cuda_buffer_alloc(sizeof(float) * latents);
    }
    m->gemm = m->units->gemm = gemm_cuda_context_create();
    m->stream = m->units->stream = dit_cuda_stream_create();
}

void autoencoder_cuda_destroy(autoencoder_cuda_model *m) {
    if (m->stream) {
        dit_cuda_stream_synchronize(m->stream);
        dit_cuda_stream_destroy(m->stream);
    }
    if (m->gemm) gemm_cuda_context_destroy(m->gemm);
    cuda_buffer_free(m->memory);
    cuda_buffer_free(m->encode_input);
    cuda_buffer_free(m->decode_input);
    if (m->units) {
        cuda_pinned_free(m->units->host_sums);
        free(m->units->host_moments);
        ae_graph_free(&m->units->graph);
        free(m->units);
    }
    param_table_free(&m->table);
    memset(m, 0, sizeof(*m));
}

/* ---- copies ---- */

void autoencoder_cuda_upload_params(autoencoder_cuda_model *m, const float *host_params) {
    dit_cuda_stream_synchronize(m->stream); /* nothing queued may still read the old values */
    cuda_copy_to_device(m->params, host_params, sizeof(float) * m->table.trainable_numel);
}

void autoencoder_cuda_download_grads(autoencoder_cuda_model *m, float *host_grads) {
    dit_cuda_stream_synchronize(m->stream);
    cuda_copy_to_host(host_grads, m->grads, sizeof(float) * m->table.trainable_numel);
}

void autoencoder_cuda_zero_grad(autoencoder_cuda_model *m) {
    dit_cuda_zero_async(m->grads, sizeof(float) * m->table.trainable_numel, m->stream);
}

/* ---- inference ---- */

static void check_inference(const autoencoder_cuda_model *m, int batch, const float *input, const char *what) {
    if (!input) fatal_internal("%s: the model was not laid out for it", what);
    if (batch < 1 || batch > m->max_batch) fatal_internal("%s: batch %d outside [1, %d]", what, batch, m->max_batch);
}

const float *autoencoder_cuda_encode(autoencoder_cuda_model *m, int batch) {
    check_inference(m, batch, m->encode_input, "autoencoder_cuda_encode");
    ae_graph *g = &m->units->graph;
    ae_graph_refresh_weights(g);
    ae_graph_encode(g, m->encode_input, batch);
    return ae_graph_moments(g);
}

const float *autoencoder_cuda_decode(autoencoder_cuda_model *m, int batch) {
    check_inference(m, batch, m->decode_input, "autoencoder_cuda_decode");
    ae_graph *g = &m->units->graph;
    ae_graph_refresh_weights(g);
    ae_graph_decode(g, m->decode_input, batch);
    return ae_graph_decoded(g);
}

static float clamp_logvar(float v) { return v < AE_LOGVAR_MIN ? AE_LOGVAR_MIN : v > AE_LOGVAR_MAX ? AE_LOGVAR_MAX : v; }

void autoencoder_cuda_encode_host(autoencoder_cuda_model *m, const float *images, int batch, float *mean,
                                  float *logvar) {
    check_inference(m, batch, m->encode_input, "autoencoder_cuda_encode_host");
    const size_t image = (size_t)m->shape.in_channels * m->shape.input_size * m->shape.input_size;
    const size_t per = (size_t)m->shape.latent_channels * m->latent_size * m->latent_size;
    dit_cuda_stream_synchronize(m->stream); /* nothing queued may still read the input */
    cuda_copy_to_device(m->encode_input, images, sizeof(float) * (size_t)batch * image);
    const float *moments = autoencoder_cuda_encode(m, batch);
    dit_cuda_stream_synchronize(m->stream);
    float *host = m->units->host_moments;
    cuda_copy_to_host(host, moments, sizeof(float) * (size_t)batch * 2 * per);
    /* Split as autoencoder.c does: the mean, and the log-variance clamped. */
    for (int b = 0; b < batch; b++) {
        const float *row = host + (size_t)b * 2 * per;
        if (mean) memcpy(mean + (size_t)b * per, row, sizeof(float) * per);
        if (logvar)
            for (size_t k = 0; k < per; k++) logvar[(size_t)b * per + k] = clamp_logvar(row[per + k]);
    }
}

void autoencoder_cuda_decode_host(autoencoder_cuda_model *m, const float *z, int batch, float *images) {
    check_inference(m, batch, m->decode_input, "autoencoder_cuda_decode_host");
    const size_t image = (size_t)m->shape.in_channels * m->shape.input_size * m->shape.input_size;
    const size_t per = (size_t)m->shape.latent_channels * m->latent_size * m->latent_size;
    dit_cuda_stream_synchronize(m->stream);
    cuda_copy_to_device(m->decode_input, z, sizeof(float) * (size_t)batch * per);
    const float *decoded = autoencoder_cuda_decode(m, batch);
    dit_cuda_stream_synchronize(m->stream);
    cuda_copy_to_host(images, decoded, sizeof(float) * (size_t)batch * image);
}

/* ---- the training step ---- */

void autoencoder_cuda_train_forward(autoencoder_cuda_model *m, int batch, int sample_posterior, float kl_beta,
                                    autoencoder_reconstruction_loss kind) {
    if (batch < 1 || batch > m->max_batch)
        fatal_internal("autoencoder_cuda_train_forward: batch %d outside [1, %d]", batch, m->max_batch);
    ae_graph *g = &m->units->graph;
    ae_graph_train_forward(g, batch, sample_posterior != 0, kl_beta, kind);
    m->posterior_mean = g->mean;
    m->posterior_logvar = g->logvar;
    m->latent = g->z;
    m->reconstruction = ae_graph_decoded(g);
}

static void need_forward(const autoencoder_cuda_model *m, const char *what) {
    if (m->units->graph.batch < 1) fatal_internal("%s: no forward pass was queued", what);
}

void autoencoder_cuda_train_backward(autoencoder_cuda_model *m, float d_loss) {
    need_forward(m, "autoencoder_cuda_train_backward");
    ae_graph_train_backward(&m->units->graph, d_loss, NULL);
}

autoencoder_loss autoencoder_cuda_loss(autoencoder_cuda_model *m) {
    autoencoder_cuda_units *u = m->units;
    need_forward(m, "autoencoder_cuda_loss");
    cuda_copy_to_host_async(u->host_sums, u->graph.sums, 2 * sizeof(double), m->stream);
    dit_cuda_stream_synchronize(m->stream);
    return ae_graph_loss(&u->graph, u->host_sums);
}

#endif /* LDM_HAVE_CUDA */

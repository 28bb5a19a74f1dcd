/* The KL autoencoder on the CPU (see autoencoder.h): the shape's checks, the
 * model's one allocation, torch's default initialisation, loading diffusers'
 * weights, and encode / decode / the training step over the network of
 * autoencoder_graph.c with the CPU's ops (ae_backend_cpu).
 *
 * Memory: one host block laid out by the graph for the purpose. Laid out for
 * inference the forward pass runs in the graph's four pooled slots (no per-layer
 * activations); for training every activation the backward reads has its own
 * buffer (see autoencoder_graph.h). */
#include "autoencoder.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "autoencoder_graph.h"
#include "fatal.h"
#include "precision.h"
#include "rng.h"

struct autoencoder_activations {
    ae_graph graph; /* the network, its buffers in the model's memory, the CPU's ops */
};

/* ---- shape ---- */

static void check_shape(const autoencoder_shape *s, int max_batch) {
    if (s->in_channels < 1 || s->input_size < 1 || s->levels < 1 || s->levels > AE_MAX_LEVELS ||
        s->layers_per_block < 1 || s->latent_channels < 1 || s->norm_groups < 1 || max_batch < 1)
        fatal_input("autoencoder shape: every size must be positive and 1 to %d levels (in_channels %d, "
                    "input_size %d, levels %d, layers_per_block %d, latent_channels %d, norm_groups %d, batch %d)",
                    AE_MAX_LEVELS, s->in_channels, s->input_size, s->levels, s->layers_per_block,
                    s->latent_channels, s->norm_groups, max_batch);
    for (int i = 0; i < s->levels; i++)
        if (s->block_out_channels[i] < 1 || s->block_out_channels[i] % s->norm_groups)
            fatal_input("autoencoder shape: autoencoder.block_out_channels[%d] = %d is not a positive multiple of "
                        "autoencoder.norm_groups %d",
                        i, s->block_out_channels[i], s->norm_groups);
    int reduction = 1 << (s->levels - 1);
    if (s->input_size % reduction)
        fatal_input("autoencoder shape: autoencoder.input_size %d is not a multiple of %d (2^(levels - 1))",
                    s->input_size, reduction);
}

void autoencoder_build_table(param_table *table, const autoencoder_shape *shape) {
    check_shape(shape, 1);
    ae_graph_build_table(table, shape);
}

/* ---- memory layout ---- */

void autoencoder_create(autoencoder_model *m, const autoencoder_shape *shape, int max_batch,
                        autoencoder_purpose purpose) {
    autoencoder_create_precision(m, shape, max_batch, purpose, PRECISION_FP32);
}

void autoencoder_create_precision(autoencoder_model *m, const autoencoder_shape *shape, int max_batch,
                                  autoencoder_purpose purpose, ldm_precision precision) {
    memset(m, 0, sizeof(*m));
    check_shape(shape, max_batch);
    m->shape = *shape;
    m->precision = precision;
    m->purpose = purpose;
    m->max_batch = max_batch;
    m->latent_size = shape->input_size >> (shape->levels - 1);
    ae_graph_build_table(&m->table, shape);

    m->act = xcalloc(1, sizeof(*m->act));
    ae_graph *g = &m->act->graph;
    g->ops = &ae_backend_cpu;
    g->shape = *shape;
    g->precision = precision;
    g->max_batch = max_batch;
    g->latent_size = m->latent_size;
    g->param_count = m->table.trainable_numel;
    g->parts = (ae_graph_parts){.encoder = purpose != AE_FOR_DECODING,
                                .decoder = purpose != AE_FOR_ENCODING,
                                .training = purpose == AE_FOR_TRAINING,
                                .pooled = purpose != AE_FOR_TRAINING};
    ae_graph_init(g);
    arena ar;
    arena_begin_place(&ar, ae_graph_measure(g, &m->table));
    ae_graph_place(g, &ar, &m->table);
    m->memory = ar.base;
    m->memory_bytes = ar.capacity;
    m->params = g->params;
    m->grads = g->grads;
    m->compute_params = g->compute_params;
    param_table_bind(&m->table, m->params, m->grads, NULL);
}

void autoencoder_destroy(autoencoder_model *m) {
    if (m->act) {
        ae_graph_free(&m->act->graph);
        free(m->act);
    }
    param_table_free(&m->table);
    free(m->memory);
    memset(m, 0, sizeof(*m));
}

/* ---- initialisation and loading ---- */

void autoencoder_zero_grad(autoencoder_model *m) {
    if (!m->grads) fatal_internal("autoencoder_zero_grad: the model was not laid out for training");
    memset(m->grads, 0, sizeof(float) * m->table.trainable_numel);
}

void autoencoder_init_weights(autoencoder_model *m, uint64_t seed) {
    for (int i = 0; i < m->table.count; i++) {
        param_entry *e = &m->table.entries[i];
        size_t len = strlen(e->name);
        bool is_bias = len > 5 && strcmp(e->name + len - 5, ".bias") == 0;
        /* The tensor whose fan-in sets the bound: a bias's own weight. */
        const param_entry *w = e;
        if (is_bias) {
            char weight_name[PARAM_NAME_MAX];
            snprintf(weight_name, sizeof weight_name, "%.*s.weight", (int)(len - 5), e->name);
            w = param_table_find(&m->table, weight_name);
            if (!w) fatal_internal("autoencoder: %s has no weight", e->name);
        }
        if (w->ndim == 1) { /* GroupNorm: gamma 1, beta 0 */
            for (size_t k = 0; k < e->numel; k++) e->data[k] = is_bias ? 0.0f : 1.0f;
            continue;
        }
        /* torch's Conv2d / Linear reset_parameters: kaiming_uniform(a = sqrt(5)) for the
         * weight, which is uniform in +-1/sqrt(fan_in), and the bias in the same bound. */
        double fan_in = (double)w->numel / (double)w->shape[0];
        float bound = (float)(1.0 / sqrt(fan_in));
        rng_stream rng = rng_stream_for(seed, 0x61652d696e6974 /* "ae-init" */, (uint64_t)i);
        for (size_t k = 0; k < e->numel; k++) e->data[k] = bound * (2.0f * rng_uniform(&rng) - 1.0f);
    }
}

/* diffusers' deprecated attention names (AttentionBlock, before 0.14) -> today's. */
const char *autoencoder_current_tensor_name(const char *file_name, char *buf, size_t buf_size) {
    static const char *const renames[][2] = {
        {"query", "to_q"}, {"key", "to_k"}, {"value", "to_v"}, {"proj_attn", "to_out.0"}};
    const char *at = strstr(file_name, "mid_block.attentions.0.");
    if (!at) return file_name;
    const char *leaf = at + strlen("mid_block.attentions.0.");
    for (size_t i = 0; i < sizeof renames / sizeof renames[0]; i++) {
        size_t n = strlen(renames[i][0]);
        if (strncmp(leaf, renames[i][0], n) == 0 && (strcmp(leaf + n, ".weight") == 0 || strcmp(leaf + n, ".bias") == 0)) {
            int w = snprintf(buf, buf_size, "%.*s%s%s", (int)(leaf - file_name), file_name, renames[i][1], leaf + n);
            return w > 0 && (size_t)w < buf_size ? buf : file_name;
        }
    }
    return file_name;
}

void autoencoder_load_safetensors(autoencoder_model *m, const char *path) {
    param_table_load_safetensors_renamed(&m->table, path, autoencoder_current_tensor_name);
}

/* ---- encode, decode ---- */

static void check_batch(const autoencoder_model *m, int batch, const char *what) {
    if (batch < 1 || batch > m->max_batch)
        fatal_internal("%s: batch %d outside [1, %d]", what, batch, m->max_batch);
}

static float clamp_logvar(float v) { return v < AE_LOGVAR_MIN ? AE_LOGVAR_MIN : v > AE_LOGVAR_MAX ? AE_LOGVAR_MAX : v; }

/* Splits the moments (B, 2L, h, w) into mean and clamped logvar (B, L, h, w); either may be NULL. */
static void split_moments(const autoencoder_model *m, int batch, float *mean, float *logvar) {
    const size_t per = (size_t)m->shape.latent_channels * m->latent_size * m->latent_size;
    for (int b = 0; b < batch; b++) {
        const float *moments = ae_graph_moments(&m->act->graph) + (size_t)b * 2 * per;
        if (mean) memcpy(mean + (size_t)b * per, moments, sizeof(float) * per);
        if (logvar)
            for (size_t k = 0; k < per; k++) logvar[(size_t)b * per + k] = clamp_logvar(moments[per + k]);
    }
}

void autoencoder_encode(autoencoder_model *m, const float *images, int batch, float *mean, float *logvar) {
    if (m->purpose == AE_FOR_DECODING) fatal_internal("autoencoder_encode: the model was laid out for decoding only");
    check_batch(m, batch, "autoencoder_encode");
    ae_graph_refresh_weights(&m->act->graph);
    ae_graph_encode(&m->act->graph, images, batch);
    split_moments(m, batch, mean, logvar);
}

void autoencoder_decode(autoencoder_model *m, const float *z, int batch, float *images) {
    if (m->purpose == AE_FOR_ENCODING) fatal_internal("autoencoder_decode: the model was laid out for encoding only");
    check_batch(m, batch, "autoencoder_decode");
    ae_graph_refresh_weights(&m->act->graph);
    ae_graph_decode(&m->act->graph, z, batch);
    const size_t image = (size_t)m->shape.in_channels * m->shape.input_size * m->shape.input_size;
    memcpy(images, ae_graph_decoded(&m->act->graph), sizeof(float) * (size_t)batch * image);
}

/* ---- the training step ---- */

autoencoder_loss autoencoder_train_forward(autoencoder_model *m, const float *images, const float *noise, int batch,
                                           float kl_beta, autoencoder_reconstruction_loss kind) {
    if (m->purpose != AE_FOR_TRAINING)
        fatal_internal("autoencoder_train_forward: the model was not laid out for training");
    check_batch(m, batch, "autoencoder_train_forward");
    ae_graph *g = &m->act->graph;
    const size_t image = (size_t)m->shape.in_channels * m->shape.input_size * m->shape.input_size;
    const size_t latent = (size_t)batch * m->shape.latent_channels * m->latent_size * m->latent_size;
    memcpy(g->images, images, sizeof(float) * (size_t)batch * image);
    if (noise) memcpy(g->noise, noise, sizeof(float) * latent); /* kept for backward */
    ae_graph_train_forward(g, batch, noise != NULL, kl_beta, kind);
    m->posterior_mean = g->mean;
    m->posterior_logvar = g->logvar;
    m->latent = g->z;
    m->reconstruction = ae_graph_decoded(g);
    return ae_graph_loss(g, g->sums);
}

void autoencoder_train_backward(autoencoder_model *m, float d_loss, float *d_images) {
    if (m->purpose != AE_FOR_TRAINING)
        fatal_internal("autoencoder_train_backward: the model was not laid out for training");
    const ae_graph *g = &m->act->graph;
    ae_graph_train_backward(g, d_loss, d_images);
    if (!d_images) return;
    /* the images are also the reconstruction's target: d/dx = -d/d rec of the loss */
    const size_t n = (size_t)g->batch * m->shape.in_channels * m->shape.input_size * m->shape.input_size;
    const float scale = d_loss / (float)n;
    const float *rec = ae_graph_decoded(g);
    for (size_t k = 0; k < n; k++)
        d_images[k] -= ae_reconstruction_gradient(rec[k], g->images[k], scale, g->kind == AE_LOSS_L2);
}

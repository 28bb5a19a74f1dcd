/* The autoencoder's one network description (autoencoder_graph.h), which the CPU
 * and the GPU models both run: every tensor of the parameter table is read by
 * exactly one place in the unit list (a tensor added to the table without a unit,
 * or a unit naming another's tensor, fails here), the units chain (each reads the
 * width and size the previous one writes), and a pooled layout (inference) never
 * lets a unit write where it reads: a unit's output is not its input, and its
 * intermediates are neither. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autoencoder_graph.h"
#include "test_util.h"

/* Counts, per table entry, the units' reads of the tensor at `offset` (numel
 * tensors from there: the attention's q, k, v are one read of three). */
static void mark(const param_table *t, int *reads, size_t offset, int tensors) {
    for (int i = 0; i < t->count; i++)
        if (t->entries[i].offset == offset) {
            for (int k = 0; k < tensors && i + k < t->count; k++) reads[i + k]++;
            return;
        }
    CHECK_MSG(0, "a unit reads offset %zu, the start of no tensor", offset);
}

static void mark_conv(const param_table *t, int *reads, const ae_conv *c) {
    mark(t, reads, c->weight, 1);
    mark(t, reads, c->bias, 1);
}

static void mark_stage(const param_table *t, int *reads, const ae_stage *s) {
    mark(t, reads, s->norm.gamma, 1);
    mark(t, reads, s->norm.beta, 1);
    mark_conv(t, reads, &s->conv);
}

static ae_graph make_graph(const autoencoder_shape *shape, const param_table *table, ae_graph_parts parts, arena *ar) {
    ae_graph g = {.ops = &ae_backend_cpu, .shape = *shape, .precision = PRECISION_FP32, .max_batch = 2,
                  .latent_size = shape->input_size >> (shape->levels - 1), .parts = parts,
                  .param_count = table->trainable_numel};
    ae_graph_init(&g);
    arena_begin_place(ar, ae_graph_measure(&g, table));
    ae_graph_place(&g, ar, table);
    return g;
}

static void check_table_coverage(const autoencoder_shape *shape) {
    param_table table;
    ae_graph_build_table(&table, shape);
    arena ar;
    ae_graph g = make_graph(shape, &table, (ae_graph_parts){.encoder = true, .decoder = true, .training = true}, &ar);
    int *reads = calloc((size_t)table.count, sizeof(int));
    int channels = shape->in_channels;
    for (int k = 0; k < g.unit_count; k++) {
        const ae_unit *u = &g.units[k];
        if (k == g.encoder_count) channels = shape->latent_channels; /* the decoder reads z */
        switch (u->kind) {
        case AE_UNIT_CONV:
        case AE_UNIT_UPSAMPLE:
            CHECK_MSG(u->conv.shape.in_channels == channels, "unit %d reads %d channels, %d written", k,
                      u->conv.shape.in_channels, channels);
            mark_conv(&table, reads, &u->conv);
            channels = u->conv.shape.out_channels;
            break;
        case AE_UNIT_HEAD:
            CHECK(u->stage[0].norm.channels == channels);
            mark_stage(&table, reads, &u->stage[0]);
            channels = u->stage[0].conv.shape.out_channels;
            break;
        case AE_UNIT_RESNET:
            CHECK(u->stage[0].norm.channels == channels);
            mark_stage(&table, reads, &u->stage[0]);
            mark_stage(&table, reads, &u->stage[1]);
            CHECK(u->has_shortcut == (channels != u->stage[1].conv.shape.out_channels));
            if (u->has_shortcut) mark_conv(&table, reads, &u->conv);
            channels = u->stage[1].conv.shape.out_channels;
            break;
        case AE_UNIT_ATTENTION:
            CHECK(u->attention.channels == channels);
            mark(&table, reads, u->attention.norm.gamma, 1);
            mark(&table, reads, u->attention.norm.beta, 1);
            mark(&table, reads, u->attention.qkv_weight, 3);
            mark(&table, reads, u->attention.qkv_bias, 3);
            mark(&table, reads, u->attention.out_weight, 1);
            mark(&table, reads, u->attention.out_bias, 1);
            break;
        }
    }
    CHECK(channels == shape->in_channels);
    for (int i = 0; i < table.count; i++)
        CHECK_MSG(reads[i] == 1, "%s is read by %d units", table.entries[i].name, reads[i]);
    free(reads);
    ae_graph_free(&g);
    arena_free(&ar);
    param_table_free(&table);
}

/* Pooled: the buffers of unit k (its output and intermediates) are not its input. */
static void check_pooled_aliasing(const autoencoder_shape *shape) {
    param_table table;
    ae_graph_build_table(&table, shape);
    arena ar;
    ae_graph g = make_graph(shape, &table, (ae_graph_parts){.encoder = true, .decoder = true, .pooled = true}, &ar);
    for (int k = 1; k < g.unit_count; k++) {
        const ae_unit *u = &g.units[k];
        const float *in = g.units[k - 1].out;
        CHECK_MSG(u->out != in, "unit %d writes its input", k);
        const float *intermediates[] = {u->upsampled, u->stage[0].normed, u->stage[0].act,
                                        u->kind == AE_UNIT_RESNET ? u->stage[0].out : NULL, u->stage[1].normed,
                                        u->stage[1].act, u->attention.normed, u->attention.tokens_in, u->attention.attn,
                                        u->attention.proj};
        for (size_t j = 0; j < sizeof intermediates / sizeof intermediates[0]; j++)
            CHECK_MSG(intermediates[j] != in && (intermediates[j] != u->out || !intermediates[j]),
                      "unit %d: intermediate %zu aliases its input or output", k, j);
    }
    ae_graph_free(&g);
    arena_free(&ar);
    param_table_free(&table);
}

int main(void) {
    const autoencoder_shape tiny = {.in_channels = 3, .input_size = 16, .levels = 3,
                                    .block_out_channels = {8, 16, 16}, .layers_per_block = 1,
                                    .latent_channels = 2, .norm_groups = 4};
    const autoencoder_shape deeper = {.in_channels = 1, .input_size = 16, .levels = 2,
                                      .block_out_channels = {4, 8}, .layers_per_block = 2,
                                      .latent_channels = 4, .norm_groups = 2};
    check_table_coverage(&tiny);
    check_table_coverage(&deeper);
    check_pooled_aliasing(&tiny);
    check_pooled_aliasing(&deeper);
    return test_finish("test_ae_graph");
}

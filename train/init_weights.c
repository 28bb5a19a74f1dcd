/* See init_weights.h. */
#include "init_weights.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fatal.h"
#include "params.h"

/* How far a fixed buffer read from a file may be from the model's own: its
 * values lie in [-1, 1], and a file saved in bf16 rounds them by up to 2^-9. */
#define FIXED_TOLERANCE 4e-3

void init_weights_load(const trainable *model, const char *path) {
    const param_table *table = model->table;
    /* The loader writes the file's fixed buffers over the model's: keep the
     * model's to compare with and to restore (so that training starts from
     * exactly the embedding a fresh run has). */
    float *own_fixed = xmalloc((table->fixed_numel + 1) * sizeof(float)); /* (fixed_numel) */
    for (int i = 0; i < table->count; i++) {
        const param_entry *e = &table->entries[i];
        if (!e->trainable) memcpy(own_fixed + e->offset, e->data, e->numel * sizeof(float));
    }
    param_table_load_safetensors(table, path);
    for (int i = 0; i < table->count; i++) {
        const param_entry *e = &table->entries[i];
        if (e->trainable) continue;
        const float *own = own_fixed + e->offset;
        for (size_t j = 0; j < e->numel; j++) {
            if (fabsf(e->data[j] - own[j]) <= FIXED_TOLERANCE) continue;
            fatal_input("%s: tensor '%s' differs from this model's fixed %s at element %zu (%g, expected %g): "
                        "weights of another grid size or embedding", path, e->name,
                        strcmp(e->name, "pos_embed") == 0 ? "2-D sin-cos position embedding" : "buffer", j,
                        (double)e->data[j], (double)own[j]);
        }
    }
    for (int i = 0; i < table->count; i++) {
        const param_entry *e = &table->entries[i];
        if (!e->trainable) memcpy(e->data, own_fixed + e->offset, e->numel * sizeof(float));
    }
    free(own_fixed);
}

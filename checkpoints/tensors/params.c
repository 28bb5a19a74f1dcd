/* Parameter tables (see params.h): names, shapes and offsets of a model's
 * tensors, and loading/saving them by name as safetensors. */
#include "params.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fatal.h"
#include "safetensors.h"

void param_table_init(param_table *table) { memset(table, 0, sizeof(*table)); }

void param_table_free(param_table *table) {
    free(table->entries);
    memset(table, 0, sizeof(*table));
}

int param_table_add(param_table *table, bool trainable, int ndim, const int64_t *shape,
                    const char *name_fmt, ...) {
    if (table->count == table->capacity) {
        table->capacity = table->capacity ? 2 * table->capacity : 64;
        param_entry *grown = realloc(table->entries, sizeof(param_entry) * (size_t)table->capacity);
        if (!grown) fatal_internal("out of memory growing the parameter table");
        table->entries = grown;
    }
    param_entry *e = &table->entries[table->count];
    memset(e, 0, sizeof(*e));
    va_list args;
    va_start(args, name_fmt);
    vsnprintf(e->name, sizeof(e->name), name_fmt, args);
    va_end(args);
    e->ndim = ndim;
    e->numel = 1;
    for (int d = 0; d < ndim; d++) {
        e->shape[d] = shape[d];
        e->numel *= (size_t)shape[d];
    }
    e->trainable = trainable;
    size_t *total = trainable ? &table->trainable_numel : &table->fixed_numel;
    e->offset = *total;
    *total += e->numel;
    return table->count++;
}

void param_table_bind(param_table *table, float *params, float *grads, float *fixed) {
    for (int i = 0; i < table->count; i++) {
        param_entry *e = &table->entries[i];
        e->data = e->trainable ? params + e->offset : fixed + e->offset;
        e->grad = e->trainable && grads ? grads + e->offset : NULL;
    }
}

const param_entry *param_table_find(const param_table *table, const char *name) {
    for (int i = 0; i < table->count; i++)
        if (strcmp(table->entries[i].name, name) == 0) return &table->entries[i];
    return NULL;
}

static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
    uint32_t bits;
    if (exponent == 0x1f) {
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else if (exponent == 0) {
        if (mantissa == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int shift = 0;
            while (!(mantissa & 0x400)) {
                mantissa <<= 1;
                shift++;
            }
            bits = sign | (uint32_t)(127 - 15 - shift + 1) << 23 | ((mantissa & 0x3ff) << 13);
        }
    } else {
        bits = sign | (exponent + 127 - 15) << 23 | (mantissa << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof(f));
    return f;
}

static void shape_text(char *out, size_t size, int ndim, const int64_t *shape) {
    size_t used = (size_t)snprintf(out, size, "[");
    for (int d = 0; d < ndim && used < size; d++)
        used += (size_t)snprintf(out + used, size - used, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (used < size) snprintf(out + used, size - used, "]");
}

void param_table_load_safetensors(const param_table *table, const char *path) {
    param_table_load_safetensors_renamed(table, path, NULL);
}

void param_table_load_safetensors_renamed(const param_table *table, const char *path, param_rename_fn rename) {
    safetensors_file file;
    char err[512];
    if (safetensors_read(path, &file, err, sizeof(err)) != 0) fatal_input("%s", err);
    /* which file tensor each entry takes (NULL: none yet) */
    const safetensors_tensor **source = xcalloc((size_t)table->count + 1, sizeof(*source));
    for (int i = 0; i < file.count; i++) {
        char buf[PARAM_NAME_MAX];
        const char *name = rename ? rename(file.tensors[i].name, buf, sizeof(buf)) : file.tensors[i].name;
        const param_entry *e = param_table_find(table, name);
        if (!e)
            fatal_input("%s: tensor '%s' is not a parameter of this model (wrong config or file?)",
                        path, file.tensors[i].name);
        const safetensors_tensor **slot = &source[e - table->entries];
        if (*slot)
            fatal_input("%s: tensors '%s' and '%s' are both the parameter '%s'", path, (*slot)->name,
                        file.tensors[i].name, e->name);
        *slot = &file.tensors[i];
    }
    for (int i = 0; i < table->count; i++) {
        const param_entry *e = &table->entries[i];
        const safetensors_tensor *t = source[i];
        if (!t) fatal_input("%s: tensor '%s' is missing", path, e->name);
        bool same_shape = t->ndim == e->ndim;
        for (int d = 0; same_shape && d < e->ndim; d++) same_shape = t->shape[d] == e->shape[d];
        if (!same_shape) {
            char want[128], got[128];
            shape_text(want, sizeof(want), e->ndim, e->shape);
            shape_text(got, sizeof(got), t->ndim, t->shape);
            fatal_input("%s: tensor '%s' has shape %s, the config gives %s", path, t->name, got, want);
        }
        const unsigned char *src = t->data;
        for (size_t k = 0; k < e->numel; k++) {
            float value;
            uint16_t h;
            uint32_t bits;
            switch (t->dtype) {
            case SAFETENSORS_F32: memcpy(&value, src + 4 * k, 4); break;
            case SAFETENSORS_F16: memcpy(&h, src + 2 * k, 2); value = half_to_float(h); break;
            case SAFETENSORS_BF16:
                memcpy(&h, src + 2 * k, 2);
                bits = (uint32_t)h << 16;
                memcpy(&value, &bits, 4);
                break;
            default:
                fatal_input("%s: tensor '%s' has dtype %s, expected F32, F16 or BF16", path, t->name,
                            safetensors_dtype_name(t->dtype));
            }
            e->data[k] = value;
        }
    }
    free(source);
    safetensors_free(&file);
}

int param_table_save_safetensors(const param_table *table, const char *path, int which,
                                 char *err, size_t err_size) {
    safetensors_entry *entries = xcalloc((size_t)table->count, sizeof(*entries));
    int count = 0;
    for (int i = 0; i < table->count; i++) {
        const param_entry *e = &table->entries[i];
        const float *data = which == 1 ? e->grad : e->data;
        if (!data) continue;
        safetensors_entry *s = &entries[count++];
        s->name = e->name;
        s->dtype = SAFETENSORS_F32;
        s->ndim = e->ndim;
        for (int d = 0; d < e->ndim; d++) s->shape[d] = e->shape[d];
        s->data = data;
    }
    int rc = safetensors_write(path, entries, count, NULL, NULL, 0, err, err_size);
    free(entries);
    return rc;
}

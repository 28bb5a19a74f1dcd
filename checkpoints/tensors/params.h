/* Parameter tables: every tensor of a model by name (the public DiT/diffusers
 * names), with its shape and where its values and gradient live in the model's
 * flat buffers. Trainable parameters are contiguous in one flat buffer (so the
 * optimizer, the all-reduce and checkpoints treat them as one vector); fixed
 * buffers such as DiT's pos_embed live beside them and are exported but not trained. */
#ifndef LDM_PARAMS_H
#define LDM_PARAMS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PARAM_MAX_DIMS 4
#define PARAM_NAME_MAX 96

typedef struct {
    char name[PARAM_NAME_MAX];
    int ndim;
    int64_t shape[PARAM_MAX_DIMS];
    size_t numel;
    bool trainable;
    size_t offset; /* into the flat trainable buffer, or into the fixed buffer */
    float *data;   /* set once the buffers exist */
    float *grad;   /* NULL for fixed buffers */
} param_entry;

typedef struct {
    param_entry *entries;
    int count;
    int capacity;
    size_t trainable_numel; /* length of the flat parameter/gradient buffers */
    size_t fixed_numel;     /* length of the fixed-buffer buffer */
} param_table;

void param_table_init(param_table *table);
void param_table_free(param_table *table);
/* Appends an entry (name printf-style), assigning its offset; returns its index. */
int param_table_add(param_table *table, bool trainable, int ndim, const int64_t *shape,
                    const char *name_fmt, ...) __attribute__((format(printf, 5, 6)));
/* Points every entry at the flat buffers (params/grads of trainable_numel, fixed of fixed_numel). */
void param_table_bind(param_table *table, float *params, float *grads, float *fixed);
const param_entry *param_table_find(const param_table *table, const char *name);

/* Loads tensors by name from a safetensors file into the bound buffers. Every
 * entry must be present with the same shape (F32, F16 or BF16 accepted);
 * tensors the table does not know are an error. Exits with fatal_input naming the
 * file and tensor on any mismatch. */
void param_table_load_safetensors(const param_table *table, const char *path);
/* The same, with each file tensor's name first mapped to a table name by rename (for
 * files that spell some names another way, e.g. older diffusers attention names): it
 * returns its argument, or a name it wrote into buf (buf_size PARAM_NAME_MAX). Messages
 * name the tensors as the file does. Two file tensors mapping to one entry are an error. */
typedef const char *(*param_rename_fn)(const char *file_name, char *buf, size_t buf_size);
void param_table_load_safetensors_renamed(const param_table *table, const char *path, param_rename_fn rename);
/* Writes every entry (trainable and fixed) as F32 to path. which = 0 writes the values,
 * 1 writes the gradients (trainable only; for fixtures and debugging). Returns 0 or -1 with err. */
int param_table_save_safetensors(const param_table *table, const char *path, int which,
                                 char *err, size_t err_size);

#endif

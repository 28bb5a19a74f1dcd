/* The safetensors file format (https://github.com/huggingface/safetensors):
 * 8-byte little-endian header length N, N bytes of JSON header, then the raw
 * tensor bytes. The header maps each tensor name to {dtype, shape, data_offsets}
 * (offsets relative to the start of the byte buffer) and may hold a
 * "__metadata__" object of string -> string.
 *
 * Reading validates everything before any tensor is handed out, so a damaged or
 * hostile file produces an error message, never a crash. Writing goes to a
 * temporary name, is fsynced and renamed, so a failed write leaves no
 * half-written file at the destination. */
#ifndef LDM_SAFETENSORS_H
#define LDM_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define SAFETENSORS_MAX_DIMS 8

typedef enum {
    SAFETENSORS_F32,
    SAFETENSORS_F16,
    SAFETENSORS_BF16,
    SAFETENSORS_F64,
    SAFETENSORS_I64,
    SAFETENSORS_I32,
    SAFETENSORS_I16,
    SAFETENSORS_I8,
    SAFETENSORS_U8,
    SAFETENSORS_BOOL,
} safetensors_dtype;

typedef struct {
    char *name;
    safetensors_dtype dtype;
    int ndim;
    int64_t shape[SAFETENSORS_MAX_DIMS];
    size_t numel;          /* product of shape (1 for a scalar, ndim 0) */
    size_t nbytes;         /* numel * element size, checked against data_offsets */
    const void *data;      /* points into safetensors_file.bytes */
} safetensors_tensor;

typedef struct {
    char *path;
    safetensors_tensor *tensors; /* in file order of data offsets */
    int count;
    char **metadata_keys;        /* the "__metadata__" entries, may be empty */
    char **metadata_values;
    int metadata_count;
    unsigned char *bytes;        /* the whole tensor byte buffer */
    size_t bytes_size;
} safetensors_file;

typedef struct {
    const char *name;
    safetensors_dtype dtype;
    int ndim;
    int64_t shape[SAFETENSORS_MAX_DIMS];
    const void *data;            /* numel * element size bytes */
} safetensors_entry;

/* Bytes per element of a dtype. */
size_t safetensors_dtype_size(safetensors_dtype dtype);
/* "F32", "BF16", ... as the format spells them. */
const char *safetensors_dtype_name(safetensors_dtype dtype);

/* Reads and validates the whole file. Returns 0 on success; on failure returns -1,
 * leaves *out empty and writes one line "PATH: what is wrong" to err. Refused:
 * a missing or short file, a header length past the end of the file, a header
 * that is not a JSON object, a tensor entry without dtype/shape/data_offsets or
 * with wrong types, an unknown dtype, a negative dimension, offsets out of the
 * byte buffer, reversed or overlapping offsets, bytes that do not match the
 * shape and dtype, duplicate names. */
int safetensors_read(const char *path, safetensors_file *out, char *err, size_t err_size);

/* Finds a tensor by name; NULL if absent. */
const safetensors_tensor *safetensors_find(const safetensors_file *file, const char *name);

/* Finds a metadata value by key; NULL if absent. */
const char *safetensors_metadata(const safetensors_file *file, const char *key);

void safetensors_free(safetensors_file *file);

/* Writes entries (in the given order, 8-byte aligned header) and optional metadata
 * pairs to PATH via PATH.tmp-<pid>, fsync and rename. Returns 0, or -1 with err
 * (after a failed create or write, errno that of the failure: ENOSPC on a full disk). */
int safetensors_write(const char *path, const safetensors_entry *entries, int count,
                      const char *const *metadata_keys, const char *const *metadata_values,
                      int metadata_count, char *err, size_t err_size);

#endif

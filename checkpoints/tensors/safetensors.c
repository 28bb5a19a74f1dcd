/* The safetensors file format: reading with full validation of the JSON header
 * against the byte buffer, and writing through a temporary file that is fsynced
 * and renamed into place. Every tensor file of a checkpoint (model, ema,
 * optimizer) goes through here, and so does a user's own file (an SD VAE), so
 * the reader treats its input as hostile: a bad file is an error line, never a
 * crash or an out-of-bounds read. */
#include "safetensors.h"

#include "fatal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The reference implementation refuses larger headers; a length beyond this is
 * a damaged length field, and refusing it early avoids a huge allocation. */
#define MAX_HEADER_BYTES 100000000u

/* JSON numbers reach us as doubles; above 2^53 they are no longer exact, so an
 * offset or dimension that large cannot be trusted (and no real file has one). */
#define MAX_EXACT_INTEGER 9007199254740992.0

#define METADATA_KEY "__metadata__"

static const struct {
    const char *name;
    size_t size;
} dtype_table[] = {
    [SAFETENSORS_F32] = {"F32", 4}, [SAFETENSORS_F16] = {"F16", 2},
    [SAFETENSORS_BF16] = {"BF16", 2}, [SAFETENSORS_F64] = {"F64", 8},
    [SAFETENSORS_I64] = {"I64", 8}, [SAFETENSORS_I32] = {"I32", 4},
    [SAFETENSORS_I16] = {"I16", 2}, [SAFETENSORS_I8] = {"I8", 1},
    [SAFETENSORS_U8] = {"U8", 1}, [SAFETENSORS_BOOL] = {"BOOL", 1},
};
#define DTYPE_COUNT ((int)(sizeof dtype_table / sizeof dtype_table[0]))

static bool dtype_valid(safetensors_dtype dtype) {
    return (int)dtype >= 0 && (int)dtype < DTYPE_COUNT;
}

size_t safetensors_dtype_size(safetensors_dtype dtype) {
    return dtype_valid(dtype) ? dtype_table[dtype].size : 0;
}

const char *safetensors_dtype_name(safetensors_dtype dtype) {
    /* Never NULL, so that it can go straight into a printf. */
    return dtype_valid(dtype) ? dtype_table[dtype].name : "?";
}

static int dtype_from_name(const char *name, safetensors_dtype *out) {
    for (int i = 0; i < DTYPE_COUNT; i++) {
        if (strcmp(name, dtype_table[i].name) == 0) {
            *out = (safetensors_dtype)i;
            return 0;
        }
    }
    return -1;
}

__attribute__((format(printf, 4, 5))) static void set_err(char *err, size_t err_size,
                                                          const char *path, const char *fmt,
                                                          ...) {
    if (!err || err_size == 0) return;
    int n = snprintf(err, err_size, "%s: ", path ? path : "(null)");
    if (n < 0 || (size_t)n >= err_size) return;
    va_list args;
    va_start(args, fmt);
    vsnprintf(err + n, err_size - (size_t)n, fmt, args);
    va_end(args);
    /* The message must stay one line even if a name in it came from the file. */
    for (char *c = err; *c; c++)
        if (*c == '\n' || *c == '\r') *c = ' ';
}

/* A name from the file, made safe to print: control bytes become '?' and long
 * names are cut, so that a hostile name cannot break the one-line message. */
static const char *printable(const char *name, char *buf, size_t size) {
    size_t i = 0;
    for (; name[i] && i + 1 < size; i++) {
        unsigned char c = (unsigned char)name[i];
        buf[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    buf[i] = '\0';
    if (name[i] && size > 4) memcpy(buf + size - 4, "...", 4);
    return buf;
}

static void format_shape(const int64_t *shape, int ndim, char *buf, size_t size) {
    size_t n = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ndim && n < size; i++)
        n += (size_t)snprintf(buf + n, size - n, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (n < size) snprintf(buf + n, size - n, "]");
}

/* Element count and byte size of a shape of non-negative dimensions; false if the
 * size does not fit a size_t. Any zero dimension makes the tensor empty however
 * large the others are, so no product is formed then (and nothing wraps). */
static bool shape_size(const int64_t *shape, int ndim, size_t elem, size_t *numel_out,
                       size_t *nbytes_out) {
    size_t numel = 1;
    for (int k = 0; k < ndim; k++)
        if (shape[k] == 0) numel = 0;
    for (int k = 0; k < ndim && numel != 0; k++) {
        uint64_t d = (uint64_t)shape[k];
        if (numel > SIZE_MAX / elem / d) return false;
        numel *= (size_t)d;
    }
    *numel_out = numel;
    *nbytes_out = numel * elem;
    return true;
}

/* ---------------------------------------------------------------- reading */

static int read_full(int fd, void *buf, size_t size) {
    unsigned char *p = buf;
    while (size > 0) {
        ssize_t got = read(fd, p, size);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return -1;
        if (got == 0) {
            errno = 0; /* the file shrank under us */
            return -1;
        }
        p += got;
        size -= (size_t)got;
    }
    return 0;
}

static bool utf8_valid(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        size_t len;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            len = 2, cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3, cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4, cp = c & 0x07;
        } else {
            return false;
        }
        if (n - i < len) return false;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return false;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        static const uint32_t min_for_len[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min_for_len[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += len;
    }
    return true;
}

/* Reads the file as its three parts: the header text (NUL-terminated) and the
 * tensor byte buffer, in separate allocations so that the byte buffer can be
 * handed out (and freed) as safetensors_file.bytes on its own. */
static int read_parts(const char *path, char **header_out, size_t *header_len_out,
                      unsigned char **bytes_out, size_t *bytes_size_out, char *err,
                      size_t err_size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        set_err(err, err_size, path, "cannot open: %s", strerror(errno));
        return -1;
    }
    char *header = NULL;
    unsigned char *bytes = NULL;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        set_err(err, err_size, path, "cannot stat: %s", strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        set_err(err, err_size, path, "not a regular file");
        goto fail;
    }
    uint64_t file_size = (uint64_t)st.st_size;
    if (file_size < 8) {
        set_err(err, err_size, path,
                "file is %" PRIu64 " bytes, too short for the 8-byte header length "
                "(truncated?)",
                file_size);
        goto fail;
    }
    unsigned char len_bytes[8];
    if (read_full(fd, len_bytes, 8) != 0) goto read_error;
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--) header_len = (header_len << 8) | len_bytes[i];
    if (header_len > file_size - 8) {
        set_err(err, err_size, path,
                "header length %" PRIu64 " runs past the end of the file (%" PRIu64
                " bytes; truncated or not a safetensors file?)",
                header_len, file_size);
        goto fail;
    }
    if (header_len > MAX_HEADER_BYTES) {
        set_err(err, err_size, path, "header length %" PRIu64 " exceeds the limit of %u bytes",
                header_len, MAX_HEADER_BYTES);
        goto fail;
    }
    if (file_size - 8 - header_len > (uint64_t)SIZE_MAX) {
        set_err(err, err_size, path, "file too large for this machine");
        goto fail;
    }
    size_t bytes_size = (size_t)(file_size - 8 - header_len);
    header = xmalloc((size_t)header_len + 1);
    if (read_full(fd, header, (size_t)header_len) != 0) goto read_error;
    header[header_len] = '\0';
    /* Not xmalloc: the size comes from the file, and a file too big for memory is
     * an error for the caller to report, not a reason to exit. */
    bytes = malloc(bytes_size ? bytes_size : 1);
    if (!bytes) {
        set_err(err, err_size, path, "cannot allocate %zu bytes for the tensor data", bytes_size);
        goto fail;
    }
    if (read_full(fd, bytes, bytes_size) != 0) goto read_error;
    close(fd);
    *header_out = header;
    *header_len_out = (size_t)header_len;
    *bytes_out = bytes;
    *bytes_size_out = bytes_size;
    return 0;

read_error:
    if (errno)
        set_err(err, err_size, path, "read error: %s", strerror(errno));
    else
        set_err(err, err_size, path, "file changed size while being read");
fail:
    free(header);
    free(bytes);
    close(fd);
    return -1;
}

/* A JSON number that is an exact non-negative integer. Returns 0, or -1 if it is
 * not a number or not integral, -2 if negative, -3 if too large to be exact. */
static int json_uint(const cJSON *item, uint64_t *out) {
    if (!cJSON_IsNumber(item)) return -1;
    double d = item->valuedouble;
    if (d < 0) return -2;
    if (!(d <= MAX_EXACT_INTEGER)) return d > 0 ? -3 : -1; /* NaN is not > 0 */
    uint64_t v = (uint64_t)d;
    if ((double)v != d) return -1;
    *out = v;
    return 0;
}

typedef struct {
    safetensors_tensor t;
    uint64_t begin, end;
    int order; /* position in the header: a stable tie-break for the sort */
} pending_tensor;

static int cmp_pending(const void *a, const void *b) {
    const pending_tensor *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return (x->order > y->order) - (x->order < y->order);
}

static int cmp_str_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The first name that occurs twice, or NULL. Sorting keeps this O(n log n), so a
 * header with a million entries cannot stall the reader. */
static const char *find_duplicate(const char *const *names, size_t n) {
    if (n < 2) return NULL;
    const char **sorted = xmalloc(n * sizeof *sorted);
    memcpy(sorted, names, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, cmp_str_ptr);
    const char *dup = NULL;
    for (size_t i = 1; i < n && !dup; i++)
        if (strcmp(sorted[i - 1], sorted[i]) == 0) dup = sorted[i];
    free(sorted);
    return dup;
}

static int parse_metadata(const char *path, const cJSON *meta, safetensors_file *f, char *err,
                          size_t err_size) {
    if (!cJSON_IsObject(meta)) {
        set_err(err, err_size, path, "\"" METADATA_KEY "\" is not an object of strings");
        return -1;
    }
    int n = cJSON_GetArraySize(meta);
    f->metadata_keys = xcalloc((size_t)n, sizeof *f->metadata_keys);
    f->metadata_values = xcalloc((size_t)n, sizeof *f->metadata_values);
    char show[128];
    for (const cJSON *it = meta->child; it; it = it->next) {
        if (!cJSON_IsString(it)) {
            set_err(err, err_size, path,
                    "\"" METADATA_KEY "\" entry '%s' is not a string (metadata must be an "
                    "object of strings)",
                    printable(it->string, show, sizeof show));
            return -1;
        }
        f->metadata_keys[f->metadata_count] = xstrdup(it->string);
        f->metadata_values[f->metadata_count] = xstrdup(it->valuestring);
        f->metadata_count++;
    }
    const char *dup =
        find_duplicate((const char *const *)f->metadata_keys, (size_t)f->metadata_count);
    if (dup) {
        set_err(err, err_size, path, "\"" METADATA_KEY "\" key '%s' appears twice",
                printable(dup, show, sizeof show));
        return -1;
    }
    return 0;
}

/* Fills p from one header entry; checks that need no other tensor. */
static int parse_tensor(const char *path, const cJSON *entry, size_t bytes_size,
                        pending_tensor *p, char *err, size_t err_size) {
    char show[128];
    const char *name = printable(entry->string, show, sizeof show);
    if (!cJSON_IsObject(entry)) {
        set_err(err, err_size, path,
                "tensor '%s': entry is not an object with dtype, shape and data_offsets", name);
        return -1;
    }
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(entry, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(entry, "shape");
    const cJSON *offsets = cJSON_GetObjectItemCaseSensitive(entry, "data_offsets");
    if (!dtype || !shape || !offsets) {
        set_err(err, err_size, path, "tensor '%s': missing \"%s\"", name,
                !dtype ? "dtype" : !shape ? "shape" : "data_offsets");
        return -1;
    }
    if (!cJSON_IsString(dtype)) {
        set_err(err, err_size, path, "tensor '%s': \"dtype\" is not a string", name);
        return -1;
    }
    if (dtype_from_name(dtype->valuestring, &p->t.dtype) != 0) {
        char dshow[32];
        set_err(err, err_size, path,
                "tensor '%s': unknown dtype '%s' (expected F32, F16, BF16, F64, I64, I32, "
                "I16, I8, U8 or BOOL)",
                name, printable(dtype->valuestring, dshow, sizeof dshow));
        return -1;
    }
    if (!cJSON_IsArray(shape)) {
        set_err(err, err_size, path, "tensor '%s': \"shape\" is not an array of integers", name);
        return -1;
    }
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > SAFETENSORS_MAX_DIMS) {
        set_err(err, err_size, path, "tensor '%s': shape has %d dimensions, at most %d supported",
                name, ndim, SAFETENSORS_MAX_DIMS);
        return -1;
    }
    p->t.ndim = ndim;
    int i = 0;
    for (const cJSON *d = shape->child; d; d = d->next, i++) {
        uint64_t v;
        int rc = json_uint(d, &v);
        if (rc == -2) {
            set_err(err, err_size, path, "tensor '%s': shape entry %d is negative (%.17g)", name,
                    i, d->valuedouble);
            return -1;
        }
        if (rc != 0) {
            set_err(err, err_size, path,
                    "tensor '%s': shape entry %d is not a non-negative integer%s", name, i,
                    rc == -3 ? " (too large)" : "");
            return -1;
        }
        p->t.shape[i] = (int64_t)v;
    }
    if (!cJSON_IsArray(offsets) || cJSON_GetArraySize(offsets) != 2 ||
        json_uint(offsets->child, &p->begin) != 0 ||
        json_uint(offsets->child->next, &p->end) != 0) {
        set_err(err, err_size, path,
                "tensor '%s': \"data_offsets\" is not [begin, end] with two non-negative "
                "integers",
                name);
        return -1;
    }
    if (p->begin > p->end) {
        set_err(err, err_size, path,
                "tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] are reversed (begin > end)",
                name, p->begin, p->end);
        return -1;
    }
    if (p->end > bytes_size) {
        set_err(err, err_size, path,
                "tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                "] run past the end of the byte buffer (%zu bytes; truncated?)",
                name, p->begin, p->end, bytes_size);
        return -1;
    }
    char shape_text[256];
    format_shape(p->t.shape, ndim, shape_text, sizeof shape_text);
    if (!shape_size(p->t.shape, ndim, safetensors_dtype_size(p->t.dtype), &p->t.numel,
                    &p->t.nbytes)) {
        set_err(err, err_size, path, "tensor '%s': shape %s of %s is too large (size overflows)",
                name, shape_text, safetensors_dtype_name(p->t.dtype));
        return -1;
    }
    if (p->end - p->begin != p->t.nbytes) {
        set_err(err, err_size, path,
                "tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                "] do not match shape %s of %s (%zu bytes)",
                name, p->begin, p->end, shape_text, safetensors_dtype_name(p->t.dtype),
                p->t.nbytes);
        return -1;
    }
    return 0;
}

static void free_pending(pending_tensor *pending, int n) {
    for (int i = 0; i < n; i++) free(pending[i].t.name);
    free(pending);
}

/* Parses the header into f (whose bytes/bytes_size are already set). On failure
 * f may be partly filled; the caller frees it. */
static int parse_header(const char *path, const char *header, size_t header_len,
                        safetensors_file *f, char *err, size_t err_size) {
    /* cJSON stops at a NUL, which would silently hide the rest of the header. */
    if (memchr(header, '\0', header_len)) {
        set_err(err, err_size, path, "header contains a NUL byte (not a safetensors file?)");
        return -1;
    }
    if (!utf8_valid((const unsigned char *)header, header_len)) {
        set_err(err, err_size, path, "header is not valid UTF-8 (not a safetensors file?)");
        return -1;
    }
    const char *end = NULL;
    /* require_null_terminated also accepts the trailing space padding the spec allows,
     * but nothing else after the object. */
    cJSON *root = cJSON_ParseWithOpts(header, &end, 1);
    if (!root) {
        size_t at = end && end >= header ? (size_t)(end - header) : 0;
        set_err(err, err_size, path,
                "header is not valid JSON (error near byte %zu of %zu; not a safetensors "
                "file?)",
                at, header_len);
        return -1;
    }
    if (!cJSON_IsObject(root)) {
        set_err(err, err_size, path, "header is not a JSON object");
        cJSON_Delete(root);
        return -1;
    }

    int rc = -1;
    int entries = cJSON_GetArraySize(root);
    pending_tensor *pending = xcalloc((size_t)entries, sizeof *pending);
    const char **names = xcalloc((size_t)entries, sizeof *names);
    int n = 0, metadata_seen = 0;
    char show[128], show2[128];
    for (const cJSON *it = root->child; it; it = it->next) {
        names[n + metadata_seen] = it->string;
        if (strcmp(it->string, METADATA_KEY) == 0) {
            /* A second __metadata__ is reported as a duplicate name below. */
            if (metadata_seen++ == 0 && parse_metadata(path, it, f, err, err_size) != 0)
                goto done;
            continue;
        }
        pending[n].order = n;
        if (parse_tensor(path, it, f->bytes_size, &pending[n], err, err_size) != 0) goto done;
        pending[n].t.name = xstrdup(it->string);
        n++;
    }
    const char *dup = find_duplicate(names, (size_t)(n + metadata_seen));
    if (dup) {
        set_err(err, err_size, path, "tensor '%s' appears twice in the header (duplicate name)",
                printable(dup, show, sizeof show));
        goto done;
    }

    /* The spec wants the byte buffer covered exactly: no overlaps, no holes, no
     * trailing bytes. Zero-sized tensors may share an offset with a neighbour. */
    qsort(pending, (size_t)n, sizeof *pending, cmp_pending);
    uint64_t cursor = 0;
    for (int i = 0; i < n; i++) {
        if (pending[i].begin < cursor) {
            set_err(err, err_size, path,
                    "tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                    "] overlap tensor '%s' [%" PRIu64 ", %" PRIu64 "]",
                    printable(pending[i].t.name, show, sizeof show), pending[i].begin,
                    pending[i].end, printable(pending[i - 1].t.name, show2, sizeof show2),
                    pending[i - 1].begin, pending[i - 1].end);
            goto done;
        }
        if (pending[i].begin > cursor) {
            set_err(err, err_size, path,
                    "bytes [%" PRIu64 ", %" PRIu64
                    ") of the byte buffer are not covered by any tensor (before tensor '%s')",
                    cursor, pending[i].begin, printable(pending[i].t.name, show, sizeof show));
            goto done;
        }
        cursor = pending[i].end;
    }
    if (cursor != f->bytes_size) {
        set_err(err, err_size, path,
                "bytes [%" PRIu64 ", %zu) of the byte buffer are not covered by any tensor "
                "(trailing data)",
                cursor, f->bytes_size);
        goto done;
    }

    f->tensors = xcalloc((size_t)n, sizeof *f->tensors);
    for (int i = 0; i < n; i++) {
        f->tensors[i] = pending[i].t;
        f->tensors[i].data = f->bytes + pending[i].begin;
        pending[i].t.name = NULL; /* now owned by f */
    }
    f->count = n;
    rc = 0;
done:
    free_pending(pending, n);
    free(names);
    cJSON_Delete(root);
    return rc;
}

int safetensors_read(const char *path, safetensors_file *out, char *err, size_t err_size) {
    if (err && err_size) err[0] = '\0';
    if (!out) {
        set_err(err, err_size, path, "no output given");
        return -1;
    }
    memset(out, 0, sizeof *out);
    if (!path) {
        set_err(err, err_size, path, "no path given");
        return -1;
    }
    char *header = NULL;
    size_t header_len = 0;
    safetensors_file f = {0};
    if (read_parts(path, &header, &header_len, &f.bytes, &f.bytes_size, err, err_size) != 0)
        return -1;
    int rc = parse_header(path, header, header_len, &f, err, err_size);
    free(header);
    if (rc != 0) {
        safetensors_free(&f);
        return -1;
    }
    f.path = xstrdup(path);
    *out = f;
    return 0;
}

const safetensors_tensor *safetensors_find(const safetensors_file *file, const char *name) {
    if (!file || !name) return NULL;
    for (int i = 0; i < file->count; i++)
        if (strcmp(file->tensors[i].name, name) == 0) return &file->tensors[i];
    return NULL;
}

const char *safetensors_metadata(const safetensors_file *file, const char *key) {
    if (!file || !key) return NULL;
    for (int i = 0; i < file->metadata_count; i++)
        if (strcmp(file->metadata_keys[i], key) == 0) return file->metadata_values[i];
    return NULL;
}

void safetensors_free(safetensors_file *file) {
    if (!file) return;
    for (int i = 0; i < file->count; i++) free(file->tensors[i].name);
    free(file->tensors);
    /* Also frees a half-built file from a failed read: metadata_count counts only
     * the pairs already copied. */
    for (int i = 0; i < file->metadata_count; i++) {
        free(file->metadata_keys[i]);
        free(file->metadata_values[i]);
    }
    free(file->metadata_keys);
    free(file->metadata_values);
    free(file->bytes);
    free(file->path);
    memset(file, 0, sizeof *file);
}

/* ---------------------------------------------------------------- writing */

/* Integers go into the header as raw text: cJSON would print them via double and
 * could choose exponent notation, which strict readers refuse as an offset. */
static bool add_raw_uint(cJSON *array, uint64_t v) {
    char text[32];
    snprintf(text, sizeof text, "%" PRIu64, v);
    cJSON *item = cJSON_CreateRaw(text);
    if (!item) return false;
    if (!cJSON_AddItemToArray(array, item)) {
        cJSON_Delete(item);
        return false;
    }
    return true;
}

static int check_entries(const char *path, const safetensors_entry *entries, int count,
                         const char *const *metadata_keys, const char *const *metadata_values,
                         int metadata_count, char *err, size_t err_size) {
    if (count < 0 || (count > 0 && !entries)) {
        set_err(err, err_size, path, "invalid tensor list (count %d)", count);
        return -1;
    }
    if (metadata_count < 0 || (metadata_count > 0 && (!metadata_keys || !metadata_values))) {
        set_err(err, err_size, path, "invalid metadata list (count %d)", metadata_count);
        return -1;
    }
    char show[128];
    for (int i = 0; i < metadata_count; i++) {
        if (!metadata_keys[i] || !metadata_values[i]) {
            set_err(err, err_size, path, "metadata entry %d has no key or no value", i);
            return -1;
        }
    }
    const char *dup = find_duplicate(metadata_keys, (size_t)metadata_count);
    if (dup) {
        set_err(err, err_size, path, "metadata key '%s' given twice",
                printable(dup, show, sizeof show));
        return -1;
    }
    size_t total = 0;
    const char **names = xcalloc((size_t)count, sizeof *names);
    for (int i = 0; i < count; i++) {
        const safetensors_entry *e = &entries[i];
        if (!e->name) {
            set_err(err, err_size, path, "tensor %d has no name", i);
            goto fail;
        }
        names[i] = e->name;
        const char *name = printable(e->name, show, sizeof show);
        if (strcmp(e->name, METADATA_KEY) == 0) {
            set_err(err, err_size, path, "tensor name '%s' is reserved", name);
            goto fail;
        }
        if (!dtype_valid(e->dtype)) {
            set_err(err, err_size, path, "tensor '%s': invalid dtype %d", name, (int)e->dtype);
            goto fail;
        }
        if (e->ndim < 0 || e->ndim > SAFETENSORS_MAX_DIMS) {
            set_err(err, err_size, path, "tensor '%s': ndim %d out of range 0..%d", name,
                    e->ndim, SAFETENSORS_MAX_DIMS);
            goto fail;
        }
        for (int k = 0; k < e->ndim; k++) {
            int64_t d = e->shape[k];
            /* The reader cannot trust dimensions above 2^53, so do not write one. */
            if (d < 0 || (double)d > MAX_EXACT_INTEGER) {
                set_err(err, err_size, path, "tensor '%s': dimension %d is %" PRId64
                        " (expected 0..2^53)", name, k, d);
                goto fail;
            }
        }
        size_t numel, nbytes;
        if (!shape_size(e->shape, e->ndim, safetensors_dtype_size(e->dtype), &numel, &nbytes)) {
            set_err(err, err_size, path, "tensor '%s': shape too large (size overflows)", name);
            goto fail;
        }
        if (nbytes > 0 && !e->data) {
            set_err(err, err_size, path, "tensor '%s': no data for %zu bytes", name, nbytes);
            goto fail;
        }
        if (nbytes > SIZE_MAX - total || (double)(total + nbytes) > MAX_EXACT_INTEGER) {
            set_err(err, err_size, path, "tensors too large in total");
            goto fail;
        }
        total += nbytes;
    }
    dup = find_duplicate(names, (size_t)count);
    if (dup) {
        set_err(err, err_size, path, "tensor '%s' given twice", printable(dup, show, sizeof show));
        goto fail;
    }
    free(names);
    return 0;
fail:
    free(names);
    return -1;
}

/* The header JSON, unpadded; NULL if cJSON ran out of memory. */
static char *build_header(const safetensors_entry *entries, int count,
                          const char *const *metadata_keys, const char *const *metadata_values,
                          int metadata_count) {
    cJSON *root = cJSON_CreateObject();
    bool ok = root != NULL;
    if (ok && metadata_count > 0) {
        cJSON *meta = cJSON_AddObjectToObject(root, METADATA_KEY);
        ok = meta != NULL;
        for (int i = 0; ok && i < metadata_count; i++)
            ok = cJSON_AddStringToObject(meta, metadata_keys[i], metadata_values[i]) != NULL;
    }
    uint64_t offset = 0;
    for (int i = 0; ok && i < count; i++) {
        const safetensors_entry *e = &entries[i];
        cJSON *t = cJSON_AddObjectToObject(root, e->name);
        ok = t && cJSON_AddStringToObject(t, "dtype", safetensors_dtype_name(e->dtype));
        cJSON *shape = ok ? cJSON_AddArrayToObject(t, "shape") : NULL;
        ok = shape != NULL;
        for (int k = 0; ok && k < e->ndim; k++) ok = add_raw_uint(shape, (uint64_t)e->shape[k]);
        size_t numel = 0, nbytes = 0; /* cannot fail: check_entries passed */
        shape_size(e->shape, e->ndim, safetensors_dtype_size(e->dtype), &numel, &nbytes);
        cJSON *offs = ok ? cJSON_AddArrayToObject(t, "data_offsets") : NULL;
        ok = offs && add_raw_uint(offs, offset) && add_raw_uint(offs, offset + nbytes);
        offset += nbytes;
    }
    char *text = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    return text;
}

int safetensors_write(const char *path, const safetensors_entry *entries, int count,
                      const char *const *metadata_keys, const char *const *metadata_values,
                      int metadata_count, char *err, size_t err_size) {
    if (err && err_size) err[0] = '\0';
    if (!path) {
        set_err(err, err_size, path, "no path given");
        return -1;
    }
    if (check_entries(path, entries, count, metadata_keys, metadata_values, metadata_count,
                      err, err_size) != 0)
        return -1;
    char *json = build_header(entries, count, metadata_keys, metadata_values, metadata_count);
    if (!json) {
        set_err(err, err_size, path, "out of memory building the header");
        return -1;
    }
    size_t json_len = strlen(json);
    /* Spaces up to an 8-byte boundary, so that every tensor whose offset is a
     * multiple of its element size is aligned when the file is mapped. */
    size_t header_len = json_len + (8 - (8 + json_len) % 8) % 8;
    unsigned char len_bytes[8];
    for (int i = 0; i < 8; i++) len_bytes[i] = (unsigned char)((uint64_t)header_len >> (8 * i));

    size_t tmp_size = strlen(path) + 32;
    char *tmp = xmalloc(tmp_size);
    snprintf(tmp, tmp_size, "%s.tmp-%ld", path, (long)getpid());
    int rc = -1;
    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        int saved = errno;
        set_err(err, err_size, path, "cannot create %s: %s", tmp, strerror(saved));
        errno = saved;
        goto done;
    }
    bool ok = fwrite(len_bytes, 1, 8, fp) == 8 && fwrite(json, 1, json_len, fp) == json_len;
    for (size_t i = json_len; ok && i < header_len; i++) ok = fputc(' ', fp) != EOF;
    for (int i = 0; ok && i < count; i++) {
        size_t numel = 0, nbytes = 0;
        shape_size(entries[i].shape, entries[i].ndim, safetensors_dtype_size(entries[i].dtype),
                   &numel, &nbytes);
        if (nbytes > 0) ok = fwrite(entries[i].data, 1, nbytes, fp) == nbytes;
    }
    ok = ok && fflush(fp) == 0 && fsync(fileno(fp)) == 0;
    int saved = errno;
    if (fclose(fp) != 0 && ok) {
        ok = false;
        saved = errno;
    }
    if (!ok) {
        set_err(err, err_size, path, "cannot write %s: %s", tmp, strerror(saved));
        unlink(tmp);
        errno = saved; /* for the caller, which tells a full disk from other failures */
        goto done;
    }
    if (rename(tmp, path) != 0) {
        set_err(err, err_size, path, "cannot rename %s into place: %s", tmp, strerror(errno));
        unlink(tmp);
        goto done;
    }
    rc = 0;
done:
    free(tmp);
    free(json);
    return rc;
}

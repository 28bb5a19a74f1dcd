/* Streaming .npz writer: stored zip entries holding .npy v1.0 arrays (see
 * npz_writer.h; the zip layout is PKWARE's APPNOTE, sections 4.3 and 4.5.3). */
#include "npz_writer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>
#include <zlib.h>

#include "atomic_file.h"
#include "fatal.h"

#define ZIP_LOCAL_SIGNATURE 0x04034b50u
#define ZIP_CENTRAL_SIGNATURE 0x02014b50u
#define ZIP_END_SIGNATURE 0x06054b50u
#define ZIP64_END_SIGNATURE 0x06064b50u
#define ZIP64_LOCATOR_SIGNATURE 0x07064b50u
#define ZIP64_EXTRA_ID 0x0001u
#define ZIP_VERSION_ZIP64 45 /* 4.5: zip64 */
#define ZIP_DOS_DATE_1980 ((0 << 9) | (1 << 5) | 1)
#define ZIP32_LIMIT 0xffffffffu

typedef struct {
    char name[80];
    uint64_t offset; /* of the local header */
    uint64_t size;   /* stored = uncompressed bytes: .npy header + data */
    uint32_t crc;
} npz_entry;

struct npz_writer {
    char *path, *partial_path;
    FILE *file;
    npz_entry entries[NPZ_MAX_ENTRIES];
    int count;
    int open;                  /* an entry is being written */
    uint64_t data_left;        /* bytes of the open entry's array still to come */
    uint64_t crc_field_offset; /* where the open entry's local header keeps its CRC */
    uint64_t zip32_limit;      /* sizes and offsets from here on go to zip64 fields */
};

/* Little-endian fields into a byte buffer. */
typedef struct {
    uint8_t bytes[128];
    size_t size;
} field_buffer;

static void put(field_buffer *b, uint64_t value, int bytes) {
    for (int i = 0; i < bytes; i++) b->bytes[b->size++] = (uint8_t)(value >> (8 * i));
}

static void write_bytes(npz_writer *w, const void *data, size_t size) {
    if (size && fwrite(data, 1, size, w->file) != size)
        fatal_input("%s: cannot write: %s (disk full?)", w->partial_path, strerror(errno));
}

static uint64_t position(npz_writer *w) {
    off_t at = ftello(w->file);
    if (at < 0) fatal_internal("%s: ftello: %s", w->partial_path, strerror(errno));
    return (uint64_t)at;
}

static uint32_t crc_update(uint32_t crc, const void *data, size_t size) {
    const Bytef *p = data;
    while (size > 0) {
        uInt chunk = size > (1u << 30) ? (1u << 30) : (uInt)size;
        crc = (uint32_t)crc32(crc, p, chunk);
        p += chunk, size -= chunk;
    }
    return crc;
}

npz_writer *npz_writer_create(const char *path) { return npz_writer_create_with_zip32_limit(path, ZIP32_LIMIT); }

npz_writer *npz_writer_create_with_zip32_limit(const char *path, uint64_t zip32_limit) {
    npz_writer *w = xcalloc(1, sizeof(*w));
    w->zip32_limit = zip32_limit < ZIP32_LIMIT ? zip32_limit : ZIP32_LIMIT;
    w->path = xstrdup(path);
    size_t n = strlen(path) + sizeof(".partial");
    w->partial_path = xmalloc(n);
    snprintf(w->partial_path, n, "%s.partial", path);
    w->file = fopen(w->partial_path, "wb");
    if (!w->file) fatal_input("%s: cannot create: %s", w->partial_path, strerror(errno));
    fatal_remove_on_failure(w->partial_path);
    return w;
}

/* The .npy v1.0 header of an array: magic, version, header length, the dict
 * padded with spaces to end in '\n' at a multiple of 64 bytes. */
static size_t npy_header(const char *descr, const int64_t *shape, int dims, char *out, size_t size) {
    char dict[512], shape_text[256] = "";
    size_t used = 0;
    for (int d = 0; d < dims; d++)
        used += (size_t)snprintf(shape_text + used, sizeof(shape_text) - used, "%s%lld", d ? ", " : "",
                                 (long long)shape[d]);
    if (dims == 1) snprintf(shape_text + used, sizeof(shape_text) - used, ",");
    int length = snprintf(dict, sizeof(dict), "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr,
                          shape_text);
    size_t total = 10 + (size_t)length + 1;
    total = (total + 63) / 64 * 64;
    if (total > size) fatal_internal("npy header of %zu bytes", total);
    memcpy(out, "\x93NUMPY\x01\x00", 8);
    size_t header_length = total - 10;
    out[8] = (char)(header_length & 0xff), out[9] = (char)(header_length >> 8);
    memcpy(out + 10, dict, (size_t)length);
    memset(out + 10 + length, ' ', total - 10 - (size_t)length - 1);
    out[total - 1] = '\n';
    return total;
}

void npz_writer_begin_array(npz_writer *w, const char *name, const char *descr, int element_bytes,
                            const int64_t *shape, int dims) {
    if (w->open || w->count == NPZ_MAX_ENTRIES || dims < 1 || dims > NPZ_MAX_DIMS || element_bytes < 1)
        fatal_internal("npz_writer_begin_array %s: bad call", name);
    uint64_t elements = 1;
    for (int d = 0; d < dims; d++) {
        if (shape[d] < 0) fatal_internal("npz_writer_begin_array %s: negative dimension", name);
        elements *= (uint64_t)shape[d];
    }
    char header[1024];
    size_t header_size = npy_header(descr, shape, dims, header, sizeof(header));
    npz_entry *e = &w->entries[w->count++];
    snprintf(e->name, sizeof(e->name), "%s.npy", name);
    e->offset = position(w);
    e->size = header_size + elements * (uint64_t)element_bytes;
    const size_t name_length = strlen(e->name);

    /* Local header: the 32-bit sizes say "see zip64", which holds both. */
    field_buffer b = {.size = 0};
    put(&b, ZIP_LOCAL_SIGNATURE, 4);
    put(&b, ZIP_VERSION_ZIP64, 2);
    put(&b, 0, 2); /* flags */
    put(&b, 0, 2); /* stored */
    put(&b, 0, 2); /* time 00:00 */
    put(&b, ZIP_DOS_DATE_1980, 2);
    w->crc_field_offset = e->offset + b.size;
    put(&b, 0, 4); /* CRC, patched at the end */
    put(&b, ZIP32_LIMIT, 4);
    put(&b, ZIP32_LIMIT, 4);
    put(&b, name_length, 2);
    put(&b, 20, 2); /* extra: zip64 */
    write_bytes(w, b.bytes, b.size);
    write_bytes(w, e->name, name_length);
    b.size = 0;
    put(&b, ZIP64_EXTRA_ID, 2);
    put(&b, 16, 2);
    put(&b, e->size, 8);
    put(&b, e->size, 8);
    write_bytes(w, b.bytes, b.size);

    write_bytes(w, header, header_size);
    e->crc = crc_update((uint32_t)crc32(0, Z_NULL, 0), header, header_size);
    w->data_left = elements * (uint64_t)element_bytes;
    w->open = 1;
}

void npz_writer_write(npz_writer *w, const void *data, size_t bytes) {
    if (!w->open || bytes > w->data_left) fatal_internal("npz_writer_write: more bytes than the shape holds");
    npz_entry *e = &w->entries[w->count - 1];
    write_bytes(w, data, bytes);
    e->crc = crc_update(e->crc, data, bytes);
    w->data_left -= bytes;
}

void npz_writer_end_array(npz_writer *w) {
    if (!w->open || w->data_left != 0)
        fatal_internal("npz_writer_end_array: %llu bytes of the array missing", (unsigned long long)w->data_left);
    const npz_entry *e = &w->entries[w->count - 1];
    uint64_t end = position(w);
    field_buffer b = {.size = 0};
    put(&b, e->crc, 4);
    if (fseeko(w->file, (off_t)w->crc_field_offset, SEEK_SET) != 0) fatal_internal("%s: fseeko", w->partial_path);
    write_bytes(w, b.bytes, b.size);
    if (fseeko(w->file, (off_t)end, SEEK_SET) != 0) fatal_internal("%s: fseeko", w->partial_path);
    w->open = 0;
}

void npz_writer_finish(npz_writer *w) {
    if (w->open) fatal_internal("npz_writer_finish with an entry open");
    const uint64_t directory_offset = position(w);
    for (int i = 0; i < w->count; i++) {
        const npz_entry *e = &w->entries[i];
        const int large_size = e->size >= w->zip32_limit, large_offset = e->offset >= w->zip32_limit;
        const size_t name_length = strlen(e->name);
        field_buffer b = {.size = 0};
        put(&b, ZIP_CENTRAL_SIGNATURE, 4);
        put(&b, ZIP_VERSION_ZIP64, 2); /* made by (MS-DOS attributes) */
        put(&b, ZIP_VERSION_ZIP64, 2); /* needed */
        put(&b, 0, 2);
        put(&b, 0, 2);
        put(&b, 0, 2);
        put(&b, ZIP_DOS_DATE_1980, 2);
        put(&b, e->crc, 4);
        put(&b, large_size ? ZIP32_LIMIT : e->size, 4);
        put(&b, large_size ? ZIP32_LIMIT : e->size, 4);
        put(&b, name_length, 2);
        put(&b, (large_size || large_offset) ? 4 + 16 * large_size + 8 * large_offset : 0, 2);
        put(&b, 0, 2); /* comment */
        put(&b, 0, 2); /* disk */
        put(&b, 0, 2); /* internal attributes */
        put(&b, 0, 4); /* external attributes */
        put(&b, large_offset ? ZIP32_LIMIT : e->offset, 4);
        write_bytes(w, b.bytes, b.size);
        write_bytes(w, e->name, name_length);
        if (large_size || large_offset) {
            /* Only the fields whose 32-bit slots say "see zip64", in this order. */
            b.size = 0;
            put(&b, ZIP64_EXTRA_ID, 2);
            put(&b, 16 * large_size + 8 * large_offset, 2);
            if (large_size) put(&b, e->size, 8), put(&b, e->size, 8);
            if (large_offset) put(&b, e->offset, 8);
            write_bytes(w, b.bytes, b.size);
        }
    }
    const uint64_t directory_end = position(w), directory_size = directory_end - directory_offset;
    const int zip64_end = directory_offset >= w->zip32_limit || directory_size >= w->zip32_limit;
    field_buffer b = {.size = 0};
    if (zip64_end) {
        put(&b, ZIP64_END_SIGNATURE, 4);
        put(&b, 44, 8); /* the record's size after this field */
        put(&b, ZIP_VERSION_ZIP64, 2);
        put(&b, ZIP_VERSION_ZIP64, 2);
        put(&b, 0, 4);
        put(&b, 0, 4);
        put(&b, (uint64_t)w->count, 8);
        put(&b, (uint64_t)w->count, 8);
        put(&b, directory_size, 8);
        put(&b, directory_offset, 8);
        put(&b, ZIP64_LOCATOR_SIGNATURE, 4);
        put(&b, 0, 4);
        put(&b, directory_end, 8);
        put(&b, 1, 4);
        write_bytes(w, b.bytes, b.size);
        b.size = 0;
    }
    put(&b, ZIP_END_SIGNATURE, 4);
    put(&b, 0, 2);
    put(&b, 0, 2);
    put(&b, (uint64_t)w->count, 2);
    put(&b, (uint64_t)w->count, 2);
    put(&b, zip64_end ? ZIP32_LIMIT : directory_size, 4);
    put(&b, zip64_end ? ZIP32_LIMIT : directory_offset, 4);
    put(&b, 0, 2); /* comment */
    write_bytes(w, b.bytes, b.size);

    if (fflush(w->file) != 0 || fsync(fileno(w->file)) != 0)
        fatal_input("%s: cannot write: %s (disk full?)", w->partial_path, strerror(errno));
    if (fclose(w->file) != 0) fatal_input("%s: cannot close: %s", w->partial_path, strerror(errno));
    if (rename(w->partial_path, w->path) != 0)
        fatal_internal("cannot rename %s to %s: %s", w->partial_path, w->path, strerror(errno));
    fsync_folder_of(w->path, 0);
    fatal_forget_removal(w->partial_path);
    free(w->path);
    free(w->partial_path);
    free(w);
}

/* NumPy .npz files, as np.savez writes them and np.load, the ADM evaluation
 * suite and torch-fidelity read them: a zip archive of "stored" (uncompressed)
 * entries NAME.npy, each a .npy v1.0 file (magic, a header dict with descr,
 * fortran_order False and shape, padded so the data starts at a multiple of
 * 64 bytes, then the C-order data), with CRC-32 (zlib) and zip64 size fields
 * (as np.savez, which opens every entry with force_zip64; zip64 offsets and
 * end records once the archive passes 4 GiB). Entries are streamed: the sizes
 * come from the shape, the CRC is patched in when the entry ends. The archive
 * is written as PATH.partial and renamed to PATH when complete and fsynced.
 * Times in the archive are fixed (1980-01-01), so the same arrays give the
 * same bytes. */
#ifndef LDM_NPZ_WRITER_H
#define LDM_NPZ_WRITER_H

#include <stddef.h>
#include <stdint.h>

#define NPZ_MAX_ENTRIES 16
#define NPZ_MAX_DIMS 8

typedef struct npz_writer npz_writer;

/* Opens PATH.partial (fatal_input naming it when it cannot be created). */
npz_writer *npz_writer_create(const char *path);

/* The same, with sizes and offsets from zip32_limit on (at most 2^32 - 1, the
 * default) written in zip64 fields: a test writes every one so with 0. */
npz_writer *npz_writer_create_with_zip32_limit(const char *path, uint64_t zip32_limit);

/* Starts entry NAME.npy of an array with numpy dtype string `descr` ("|u1",
 * "<i8", "<f4", ...) of `element_bytes` bytes and the given shape. */
void npz_writer_begin_array(npz_writer *writer, const char *name, const char *descr, int element_bytes,
                            const int64_t *shape, int dims);
/* Appends the next bytes of the array's data (C order). */
void npz_writer_write(npz_writer *writer, const void *data, size_t bytes);
/* Ends the entry: exactly the shape's bytes must have been written. */
void npz_writer_end_array(npz_writer *writer);

/* Writes the central directory, closes, fsyncs and renames to PATH; frees. */
void npz_writer_finish(npz_writer *writer);

#endif

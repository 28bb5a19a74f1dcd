/* The ldm data set file (see dataset_file.h and FORMAT.md): validating and
 * describing a file on one rank, reading its labels, and writing a new file
 * collectively with parallel HDF5 under a temporary name. HDF5's own error
 * printing is off: every problem is reported once, as one line naming the file,
 * the data set or attribute, what was expected and what was found. */
#include "dataset_file.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <libgen.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "comm.h"
#include "disk_space.h"
#include "fatal.h"

/* ---- reading ---- */

/* A short name for an HDF5 element type, for error lines: "uint8", "float32". */
static void describe_type(hid_t type, char *out, size_t size) {
    H5T_class_t type_class = H5Tget_class(type);
    size_t bytes = H5Tget_size(type);
    if (type_class == H5T_INTEGER)
        snprintf(out, size, "%s%zu", H5Tget_sign(type) == H5T_SGN_NONE ? "uint" : "int", bytes * 8);
    else if (type_class == H5T_FLOAT)
        snprintf(out, size, "float%zu", bytes * 8);
    else if (type_class == H5T_STRING)
        snprintf(out, size, "string");
    else
        snprintf(out, size, "a non-numeric type");
}

/* IEEE binary16 exactly (sign, 5 exponent bits with bias 15, 10 mantissa bits):
 * other 2-byte float layouts, such as bfloat16, are not what the loader reads. */
static int is_float16(hid_t type) {
    if (H5Tget_class(type) != H5T_FLOAT || H5Tget_size(type) != 2) return 0;
    size_t sign, exponent_position, exponent_size, mantissa_position, mantissa_size;
    if (H5Tget_fields(type, &sign, &exponent_position, &exponent_size, &mantissa_position, &mantissa_size) < 0)
        return 0;
    return exponent_size == 5 && mantissa_size == 10 && H5Tget_ebias(type) == 15;
}

/* The dims of a data set; fatal unless it has `want_rank` dimensions. */
static void dataset_dims(const char *path, hid_t ds, const char *name, int want_rank, const char *layout,
                         hsize_t *dims) {
    hid_t space = H5Dget_space(ds);
    int rank = H5Sget_simple_extent_ndims(space);
    if (rank != want_rank) {
        H5Sclose(space);
        fatal_input("%s: %s: expected %d dimensions %s, found %d", path, name, want_rank, layout, rank);
    }
    H5Sget_simple_extent_dims(space, dims, NULL);
    H5Sclose(space);
}

static int64_t chunk_rows_of(hid_t ds, int64_t row_bytes, int64_t count) {
    hid_t plist = H5Dget_create_plist(ds);
    int64_t rows = 0;
    if (H5Pget_layout(plist) == H5D_CHUNKED) {
        hsize_t chunk[8];
        if (H5Pget_chunk(plist, 8, chunk) >= 1) rows = (int64_t)chunk[0];
    }
    H5Pclose(plist);
    /* Unchunked files are read in windows of about a chunk's size all the same. */
    if (rows <= 0) rows = DATASET_CHUNK_BYTES / row_bytes;
    if (rows < 1) rows = 1;
    if (rows > count) rows = count;
    return rows;
}

/* Reads an integer attribute of the root group; 0 if absent. */
static int read_int_attribute(const char *path, hid_t file, const char *name, long long *value) {
    if (H5Aexists(file, name) <= 0) return 0;
    hid_t attr = H5Aopen(file, name, H5P_DEFAULT);
    hid_t type = H5Aget_type(attr);
    hid_t space = H5Aget_space(attr);
    hssize_t points = H5Sget_simple_extent_npoints(space);
    char found[32];
    describe_type(type, found, sizeof found);
    int ok = H5Tget_class(type) == H5T_INTEGER && points == 1 &&
             H5Aread(attr, H5T_NATIVE_LLONG, value) >= 0;
    H5Sclose(space);
    H5Tclose(type);
    H5Aclose(attr);
    if (!ok) fatal_input("%s: attribute %s: expected one integer, found %lld value(s) of %s", path, name,
                         (long long)points, found);
    return 1;
}

/* Reads a float attribute of `count` values of the root group; 0 if absent. */
static int read_double_attribute(const char *path, hid_t file, const char *name, int count, double *values) {
    if (H5Aexists(file, name) <= 0) return 0;
    hid_t attr = H5Aopen(file, name, H5P_DEFAULT);
    hid_t type = H5Aget_type(attr);
    hid_t space = H5Aget_space(attr);
    hssize_t points = H5Sget_simple_extent_npoints(space);
    char found[32];
    describe_type(type, found, sizeof found);
    H5T_class_t type_class = H5Tget_class(type);
    int ok = (type_class == H5T_FLOAT || type_class == H5T_INTEGER) && points == count &&
             H5Aread(attr, H5T_NATIVE_DOUBLE, values) >= 0;
    H5Sclose(space);
    H5Tclose(type);
    H5Aclose(attr);
    if (!ok) fatal_input("%s: attribute %s: expected %d numbers, found %lld value(s) of %s", path, name, count,
                         (long long)points, found);
    return 1;
}

/* Reads a string attribute array (variable or fixed length) of the root group
 * into `count` newly allocated strings; 0 if absent. */
static int read_string_attribute(const char *path, hid_t file, const char *name, int count, char **out) {
    if (H5Aexists(file, name) <= 0) return 0;
    hid_t attr = H5Aopen(file, name, H5P_DEFAULT);
    hid_t type = H5Aget_type(attr);
    hid_t space = H5Aget_space(attr);
    hssize_t points = H5Sget_simple_extent_npoints(space);
    int ok = H5Tget_class(type) == H5T_STRING && points == count;
    if (ok && H5Tis_variable_str(type) > 0) {
        hid_t memory_type = H5Tcopy(H5T_C_S1);
        H5Tset_size(memory_type, H5T_VARIABLE);
        H5Tset_cset(memory_type, H5Tget_cset(type)); /* HDF5 does not convert ASCII <-> UTF-8 */
        char **strings = xcalloc((size_t)count, sizeof(char *));
        ok = H5Aread(attr, memory_type, strings) >= 0;
        for (int i = 0; i < count; i++) out[i] = xstrdup(ok && strings[i] ? strings[i] : "");
        if (ok) H5Dvlen_reclaim(memory_type, space, H5P_DEFAULT, strings);
        free(strings);
        H5Tclose(memory_type);
    } else if (ok) {
        size_t width = H5Tget_size(type);
        hid_t memory_type = H5Tcopy(H5T_C_S1);
        H5Tset_size(memory_type, width);
        H5Tset_cset(memory_type, H5Tget_cset(type));
        char *buffer = xcalloc((size_t)count, width + 1);
        ok = H5Aread(attr, memory_type, buffer) >= 0;
        for (int i = 0; i < count; i++) {
            out[i] = xcalloc(width + 1, 1);
            memcpy(out[i], buffer + (size_t)i * width, width);
        }
        free(buffer);
        H5Tclose(memory_type);
    }
    H5Sclose(space);
    H5Tclose(type);
    H5Aclose(attr);
    if (!ok) fatal_input("%s: attribute %s: expected %d string(s), found %lld value(s) of another type", path,
                         name, count, (long long)points);
    return 1;
}

void dataset_info_open(const char *path, dataset_info *info) {
    memset(info, 0, sizeof *info);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    if (strlen(path) >= sizeof info->path) fatal_input("%s: path too long", path);
    snprintf(info->path, sizeof info->path, "%s", path);
    if (access(path, R_OK) != 0) fatal_input("%s: cannot read the data set file: %s", path, strerror(errno));
    if (H5Fis_hdf5(path) <= 0) fatal_input("%s: not an HDF5 file (expected an ldm data set, see data/FORMAT.md)", path);
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0) fatal_input("%s: cannot open the HDF5 file (damaged?)", path);

    int has_images = H5Lexists(file, "images", H5P_DEFAULT) > 0;
    int has_latents = H5Lexists(file, "latents", H5P_DEFAULT) > 0;
    if (!has_images && !has_latents)
        fatal_input("%s: no data set /images or /latents (expected one of them, see data/FORMAT.md)", path);
    if (has_images && has_latents)
        fatal_input("%s: both /images and /latents are present (expected exactly one)", path);
    info->kind = has_images ? DATASET_IMAGES : DATASET_LATENTS;
    const char *name = dataset_samples_name(info);
    hid_t ds = H5Dopen2(file, name, H5P_DEFAULT);
    if (ds < 0) fatal_input("%s: %s is not a data set", path, name);

    hid_t type = H5Dget_type(ds);
    char found[32];
    describe_type(type, found, sizeof found);
    hsize_t dims[4];
    if (info->kind == DATASET_IMAGES) {
        if (!(H5Tget_class(type) == H5T_INTEGER && H5Tget_size(type) == 1 && H5Tget_sign(type) == H5T_SGN_NONE))
            fatal_input("%s: /images: expected uint8 elements, found %s", path, found);
        info->element = DATASET_UINT8;
        dataset_dims(path, ds, name, 4, "(N, H, W, C)", dims);
        info->height = (int)dims[1];
        info->width = (int)dims[2];
        info->channels = (int)dims[3];
    } else {
        if (is_float16(type))
            info->element = DATASET_FLOAT16;
        else if (H5Tget_class(type) == H5T_FLOAT && H5Tget_size(type) == 4)
            info->element = DATASET_FLOAT32;
        else
            fatal_input("%s: /latents: expected float16 (IEEE) or float32 elements, found %s", path, found);
        dataset_dims(path, ds, name, 4, "(N, C, H, W)", dims);
        info->channels = (int)dims[1];
        info->height = (int)dims[2];
        info->width = (int)dims[3];
    }
    H5Tclose(type);
    info->count = (int64_t)dims[0];
    if (info->count < 1) fatal_input("%s: %s: expected at least one sample, found N = 0", path, name);
    if (info->channels < 1 || info->channels > DATASET_MAX_CHANNELS)
        fatal_input("%s: %s: expected 1 to %d channels, found %d", path, name, DATASET_MAX_CHANNELS, info->channels);
    if (info->height < 1 || info->width < 1 || dims[1] > 1u << 16 || dims[2] > 1u << 16 || dims[3] > 1u << 16)
        fatal_input("%s: %s: sample shape %llu x %llu x %llu is not usable", path, name,
                    (unsigned long long)dims[1], (unsigned long long)dims[2], (unsigned long long)dims[3]);
    info->sample_elements = (int64_t)info->channels * info->height * info->width;
    int64_t element_bytes = info->element == DATASET_UINT8 ? 1 : info->element == DATASET_FLOAT16 ? 2 : 4;
    info->chunk_rows = chunk_rows_of(ds, info->sample_elements * element_bytes, info->count);
    H5Dclose(ds);

    info->has_labels = H5Lexists(file, "labels", H5P_DEFAULT) > 0;
    if (info->has_labels) {
        hid_t labels = H5Dopen2(file, "labels", H5P_DEFAULT);
        if (labels < 0) fatal_input("%s: /labels is not a data set", path);
        hid_t label_type = H5Dget_type(labels);
        describe_type(label_type, found, sizeof found);
        if (H5Tget_class(label_type) != H5T_INTEGER || H5Tget_size(label_type) > 4)
            fatal_input("%s: /labels: expected int32 elements, found %s", path, found);
        H5Tclose(label_type);
        hsize_t label_dims[1];
        dataset_dims(path, labels, "/labels", 1, "(N)", label_dims);
        if ((int64_t)label_dims[0] != info->count)
            fatal_input("%s: /labels: expected %lld entries (one per sample), found %llu", path,
                        (long long)info->count, (unsigned long long)label_dims[0]);
        H5Dclose(labels);
    }

    long long num_classes = 0;
    int has_num_classes = read_int_attribute(path, file, "num_classes", &num_classes);
    if (info->has_labels && !has_num_classes)
        fatal_input("%s: attribute num_classes is missing (required when /labels is present)", path);
    if (has_num_classes && (num_classes < (info->has_labels ? 1 : 0) || num_classes > DATASET_MAX_CLASSES))
        fatal_input("%s: attribute num_classes: expected 1 to %d, found %lld", path, DATASET_MAX_CLASSES,
                    num_classes);
    info->num_classes = (int)num_classes;
    if (info->num_classes > 0) {
        info->class_names = xcalloc((size_t)info->num_classes, sizeof(char *));
        if (!read_string_attribute(path, file, "class_names", info->num_classes, info->class_names)) {
            free(info->class_names);
            info->class_names = NULL;
        }
    }

    if (info->kind == DATASET_LATENTS) {
        info->latent_mean = xcalloc((size_t)info->channels, sizeof(double));
        info->latent_std = xcalloc((size_t)info->channels, sizeof(double));
        if (!read_double_attribute(path, file, "latent_mean", info->channels, info->latent_mean))
            fatal_input("%s: attribute latent_mean is missing (required for /latents: %d per-channel means)", path,
                        info->channels);
        if (!read_double_attribute(path, file, "latent_std", info->channels, info->latent_std))
            fatal_input("%s: attribute latent_std is missing (required for /latents: %d per-channel stds)", path,
                        info->channels);
        for (int c = 0; c < info->channels; c++) {
            if (!isfinite(info->latent_mean[c]))
                fatal_input("%s: attribute latent_mean[%d]: expected a finite number, found %g", path, c,
                            info->latent_mean[c]);
            if (!(info->latent_std[c] > 0) || !isfinite(info->latent_std[c]))
                fatal_input("%s: attribute latent_std[%d]: expected a finite number > 0, found %g", path, c,
                            info->latent_std[c]);
        }
        char *autoencoder = NULL;
        if (read_string_attribute(path, file, "autoencoder", 1, &autoencoder)) {
            snprintf(info->autoencoder, sizeof info->autoencoder, "%s", autoencoder);
            free(autoencoder);
        }
        info->latent_scaling_factor = 1.0;
        if (read_double_attribute(path, file, "latent_scaling_factor", 1, &info->latent_scaling_factor) &&
            (!(info->latent_scaling_factor > 0) || !isfinite(info->latent_scaling_factor)))
            fatal_input("%s: attribute latent_scaling_factor: expected a finite number > 0, found %g", path,
                        info->latent_scaling_factor);
        if (read_double_attribute(path, file, "latent_shift_factor", 1, &info->latent_shift_factor) &&
            !isfinite(info->latent_shift_factor))
            fatal_input("%s: attribute latent_shift_factor: expected a finite number, found %g", path,
                        info->latent_shift_factor);
    }
    H5Fclose(file);
}

void dataset_info_free(dataset_info *info) {
    if (info->class_names)
        for (int i = 0; i < info->num_classes; i++) free(info->class_names[i]);
    free(info->class_names);
    free(info->latent_mean);
    free(info->latent_std);
    info->class_names = NULL;
    info->latent_mean = info->latent_std = NULL;
}

const char *dataset_samples_name(const dataset_info *info) {
    return info->kind == DATASET_IMAGES ? "/images" : "/latents";
}

int32_t *dataset_read_labels(const dataset_info *info) {
    if (!info->has_labels) return NULL;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t file = H5Fopen(info->path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0) fatal_input("%s: cannot open the HDF5 file", info->path);
    hid_t labels = H5Dopen2(file, "labels", H5P_DEFAULT);
    int32_t *values = xmalloc((size_t)info->count * sizeof(int32_t));
    if (labels < 0 || H5Dread(labels, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, values) < 0)
        fatal_input("%s: /labels: cannot read (damaged file?)", info->path);
    H5Dclose(labels);
    H5Fclose(file);
    for (int64_t i = 0; i < info->count; i++)
        if (values[i] < 0 || values[i] >= info->num_classes)
            fatal_input("%s: /labels[%lld]: expected a class in [0, %d) (attribute num_classes), found %d",
                        info->path, (long long)i, info->num_classes, values[i]);
    return values;
}

int64_t dataset_rows_in_batch(int64_t rows, int64_t batch, int64_t b) {
    int64_t left = rows - b * batch;
    return left < 0 ? 0 : left < batch ? left : batch;
}

void dataset_shard_range(int64_t n, int rank, int world_size, int64_t *start, int64_t *rows) {
    int64_t base = n / world_size, extra = n % world_size;
    *rows = base + (rank < extra ? 1 : 0);
    *start = rank * base + (rank < extra ? rank : extra);
}

/* ---- writing ---- */

struct dataset_writer {
    char *path, *partial_path;
    dataset_writer_options options;
    hid_t file, samples, labels;
    hid_t sample_file_type; /* the stored element type */
    int is_root;
    int stats_written;
};

/* A write or close of the partial file failed. This rank ends without exit()'s
 * handlers: HDF5's clean-up at exit would close the file again, and a file
 * whose close failed is left half torn down inside HDF5 1.10 (its shared part
 * freed, its identifier kept), so that second close crashed (SIGSEGV). The
 * partial file is removed on the way out (fatal_remove_on_failure). HDF5 keeps
 * no errno, so a full disk is told by the space left. */
static __attribute__((noreturn)) void write_failed(const dataset_writer *w, const char *what) {
    char full[512];
    if (disk_full_describe(w->partial_path, 0, full, sizeof full))
        fatal_input_without_teardown("%s: cannot write %s: %s", w->path, what, full);
    fatal_internal_without_teardown("%s: cannot write %s", w->partial_path, what);
}

/* IEEE half from float, rounding to nearest even, with overflow to infinity:
 * written out here rather than left to HDF5's soft conversion so that the
 * rounding is known. */
static uint16_t float_to_half_bits(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    uint32_t sign = (bits >> 16) & 0x8000u;
    uint32_t magnitude = bits & 0x7fffffffu;
    if (magnitude >= 0x7f800000u) /* inf or NaN */
        return (uint16_t)(sign | 0x7c00u | (magnitude > 0x7f800000u ? 0x200u : 0));
    if (magnitude >= 0x47800000u) return (uint16_t)(sign | 0x7c00u); /* 65536 and above */
    if (magnitude < 0x38800000u) {                                    /* subnormal or zero in half */
        /* Adding 0.5 (as a float) aligns the value's bits so that the FPU's own
         * round-to-nearest-even produces the half subnormal's mantissa. */
        float scaled;
        memcpy(&scaled, &magnitude, sizeof scaled);
        scaled += 0.5f;
        uint32_t scaled_bits;
        memcpy(&scaled_bits, &scaled, sizeof scaled_bits);
        return (uint16_t)(sign | (scaled_bits - 0x3f000000u));
    }
    uint32_t mantissa_odd = (magnitude >> 13) & 1u;
    magnitude += 0xc8000fffu + mantissa_odd; /* rebias exponent (-112 << 23) and round */
    return (uint16_t)(sign | (magnitude >> 13));
}

hid_t dataset_float16_type(void) {
    hid_t type = H5Tcopy(H5T_IEEE_F32LE);
    H5Tset_fields(type, 15, 10, 5, 0, 10);
    H5Tset_size(type, 2);
    H5Tset_ebias(type, 15);
    return type;
}

static hid_t create_chunked(dataset_writer *w, const char *name, hid_t type, int rank, const hsize_t *dims,
                            int64_t row_bytes) {
    hsize_t chunk[4];
    int64_t rows = DATASET_CHUNK_BYTES / (row_bytes > 0 ? row_bytes : 1);
    if (rows < 1) rows = 1;
    if (rows > (int64_t)dims[0]) rows = (int64_t)dims[0];
    chunk[0] = (hsize_t)rows;
    for (int d = 1; d < rank; d++) chunk[d] = dims[d];
    hid_t space = H5Screate_simple(rank, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(dcpl, rank, chunk);
    /* No timestamps, so the same data gives the same file bytes. */
    H5Pset_obj_track_times(dcpl, 0);
    H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);
    hid_t ds = H5Dcreate2(w->file, name, type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    H5Pclose(dcpl);
    H5Sclose(space);
    if (ds < 0) fatal_internal("%s: cannot create data set %s", w->partial_path, name);
    return ds;
}

static void write_scalar_int_attribute(dataset_writer *w, const char *name, long long value) {
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t attr = H5Acreate2(w->file, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    if (attr < 0 || H5Awrite(attr, H5T_NATIVE_LLONG, &value) < 0)
        fatal_internal("%s: cannot write attribute %s", w->partial_path, name);
    H5Aclose(attr);
    H5Sclose(space);
}

static void write_string_attribute(dataset_writer *w, const char *name, const char *const *values, int count,
                                   int as_array) {
    hsize_t dims[1] = {(hsize_t)count};
    hid_t space = as_array ? H5Screate_simple(1, dims, NULL) : H5Screate(H5S_SCALAR);
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, H5T_VARIABLE);
    H5Tset_cset(type, H5T_CSET_UTF8);
    hid_t attr = H5Acreate2(w->file, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    if (attr < 0 || H5Awrite(attr, type, values) < 0)
        fatal_internal("%s: cannot write attribute %s", w->partial_path, name);
    H5Aclose(attr);
    H5Tclose(type);
    H5Sclose(space);
}

static void write_double_attribute(dataset_writer *w, const char *name, const double *values, int count) {
    hsize_t dims[1] = {(hsize_t)count};
    hid_t space = H5Screate_simple(1, dims, NULL);
    hid_t attr = H5Acreate2(w->file, name, H5T_IEEE_F64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    if (attr < 0 || H5Awrite(attr, H5T_NATIVE_DOUBLE, values) < 0)
        fatal_internal("%s: cannot write attribute %s", w->partial_path, name);
    H5Aclose(attr);
    H5Sclose(space);
}

dataset_writer *dataset_writer_create(const dataset_writer_options *options) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    const dataset_writer_options *o = options;
    if (o->count < 1 || o->channels < 1 || o->channels > DATASET_MAX_CHANNELS || o->height < 1 || o->width < 1)
        fatal_internal("dataset_writer_create: bad shape %lld x %d x %d x %d", (long long)o->count, o->channels,
                       o->height, o->width);
    if (o->has_labels && (o->num_classes < 1 || o->num_classes > DATASET_MAX_CLASSES))
        fatal_internal("dataset_writer_create: bad num_classes %d", o->num_classes);
    if ((o->kind == DATASET_IMAGES) != (o->element == DATASET_UINT8))
        fatal_internal("dataset_writer_create: images are uint8, latents float16 or float32");

    const int rank = comm_rank();
    /* Rank 0 decides whether the output exists and whether its data fits on
     * the disk, so that ranks on hosts without a shared view of the path still
     * agree. A file whose data alone does not fit is refused before anything
     * is computed or written (HDF5's few KiB of metadata are not counted, nor
     * the unwritten end of a last chunk, which HDF5 leaves as a hole: a disk
     * that runs out on the metadata fails while writing, with the same line). */
    const int64_t sample_bytes = (int64_t)o->height * o->width * o->channels *
                                 (o->element == DATASET_UINT8 ? 1 : o->element == DATASET_FLOAT16 ? 2 : 4);
    const int64_t needed = o->count * (sample_bytes + (o->has_labels ? 4 : 0));
    int64_t place[2] = {0, -1}; /* the output exists; bytes free on its disk (-1: unknown) */
    if (rank == 0) place[0] = access(o->path, F_OK) == 0, place[1] = disk_free_bytes(o->path);
    comm_broadcast(place, sizeof place, 0);
    if (place[0] && !o->force) fatal_input("%s: the output exists (use --force to overwrite it)", o->path);
    if (place[1] >= 0 && place[1] < needed) {
        char *folder = disk_folder_of(o->path);
        fatal_input("%s: cannot write the output: the disk holding %s is full (%lld bytes free, its data needs %lld)",
                    o->path, folder, (long long)place[1], (long long)needed);
    }

    dataset_writer *w = xcalloc(1, sizeof *w);
    w->options = *o;
    w->options.class_names = NULL;
    w->path = xstrdup(o->path);
    size_t n = strlen(o->path) + sizeof ".partial";
    w->partial_path = xmalloc(n);
    snprintf(w->partial_path, n, "%s.partial", o->path);
    w->is_root = rank == 0;

    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fapl_mpio(fapl, MPI_COMM_WORLD, MPI_INFO_NULL);
    hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
    H5Pset_obj_track_times(fcpl, 0);
    w->file = H5Fcreate(w->partial_path, H5F_ACC_TRUNC, fcpl, fapl);
    H5Pclose(fcpl);
    H5Pclose(fapl);
    if (w->file < 0)
        fatal_input("%s: cannot create the output (is the folder there and writable?)", w->partial_path);
    /* Any rank that fails removes the partial file: a rank other than 0 may be
     * the one that fails, and its abort ends rank 0 before rank 0 could. */
    fatal_remove_on_failure(w->partial_path);

    hsize_t dims[4];
    int64_t row_bytes;
    dims[0] = (hsize_t)o->count;
    if (o->kind == DATASET_IMAGES) {
        dims[1] = (hsize_t)o->height, dims[2] = (hsize_t)o->width, dims[3] = (hsize_t)o->channels;
        w->sample_file_type = H5Tcopy(H5T_STD_U8LE);
        row_bytes = (int64_t)o->height * o->width * o->channels;
    } else {
        dims[1] = (hsize_t)o->channels, dims[2] = (hsize_t)o->height, dims[3] = (hsize_t)o->width;
        w->sample_file_type = o->element == DATASET_FLOAT16 ? dataset_float16_type() : H5Tcopy(H5T_IEEE_F32LE);
        row_bytes = (int64_t)o->height * o->width * o->channels * (o->element == DATASET_FLOAT16 ? 2 : 4);
    }
    w->samples = create_chunked(w, o->kind == DATASET_IMAGES ? "images" : "latents", w->sample_file_type, 4, dims,
                                row_bytes);
    w->labels = -1;
    if (o->has_labels) w->labels = create_chunked(w, "labels", H5T_STD_I32LE, 1, dims, 4);

    const char *format_name = DATASET_FORMAT_NAME;
    write_string_attribute(w, "format", &format_name, 1, 0);
    write_scalar_int_attribute(w, "format_version", DATASET_FORMAT_VERSION);
    write_scalar_int_attribute(w, "num_classes", o->has_labels ? o->num_classes : 0);
    if (o->has_labels && o->class_names) write_string_attribute(w, "class_names", o->class_names, o->num_classes, 1);
    if (o->kind == DATASET_LATENTS) {
        const char *autoencoder = o->autoencoder ? o->autoencoder : "";
        write_string_attribute(w, "autoencoder", &autoencoder, 1, 0);
        if (o->latent_scaling_factor > 0) {
            write_double_attribute(w, "latent_scaling_factor", &o->latent_scaling_factor, 1);
            write_double_attribute(w, "latent_shift_factor", &o->latent_shift_factor, 1);
        }
        if (o->latent_mean && o->latent_std) dataset_writer_set_latent_stats(w, o->latent_mean, o->latent_std);
    }
    return w;
}

/* Collective write of rows [start, start + rows) of a data set whose rows have
 * the trailing dims of its file space. */
static void write_rows(dataset_writer *w, hid_t ds, hid_t memory_type, int64_t start, int64_t rows,
                       const void *data, const char *name) {
    if (start < 0 || rows < 0 || start + rows > w->options.count)
        fatal_internal("%s: rows [%lld, %lld) outside [0, %lld)", name, (long long)start, (long long)(start + rows),
                       (long long)w->options.count);
    hid_t file_space = H5Dget_space(ds);
    int rank = H5Sget_simple_extent_ndims(file_space);
    hsize_t dims[4], offset[4] = {0, 0, 0, 0}, count[4];
    H5Sget_simple_extent_dims(file_space, dims, NULL);
    for (int d = 0; d < rank; d++) count[d] = dims[d];
    offset[0] = (hsize_t)start;
    count[0] = (hsize_t)rows;
    hid_t memory_space;
    if (rows > 0) {
        H5Sselect_hyperslab(file_space, H5S_SELECT_SET, offset, NULL, count, NULL);
        memory_space = H5Screate_simple(rank, count, NULL);
    } else {
        /* A rank with nothing to write still takes part in the collective call. */
        H5Sselect_none(file_space);
        count[0] = 1;
        memory_space = H5Screate_simple(rank, count, NULL);
        H5Sselect_none(memory_space);
    }
    hid_t dxpl = H5Pcreate(H5P_DATASET_XFER);
    H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE);
    herr_t status = H5Dwrite(ds, memory_type, memory_space, file_space, dxpl, data);
    H5Pclose(dxpl);
    H5Sclose(memory_space);
    H5Sclose(file_space);
    if (status < 0) write_failed(w, name);
}

void dataset_writer_write_images(dataset_writer *w, int64_t start, int64_t rows, const uint8_t *images) {
    if (w->options.kind != DATASET_IMAGES) fatal_internal("dataset_writer_write_images on a latents file");
    write_rows(w, w->samples, H5T_NATIVE_UINT8, start, rows, images, "/images");
}

void dataset_writer_write_latents(dataset_writer *w, int64_t start, int64_t rows, const float *latents) {
    if (w->options.kind != DATASET_LATENTS) fatal_internal("dataset_writer_write_latents on an images file");
    if (w->options.element == DATASET_FLOAT32) {
        write_rows(w, w->samples, H5T_NATIVE_FLOAT, start, rows, latents, "/latents");
        return;
    }
    int64_t elements = rows * w->options.channels * w->options.height * w->options.width;
    uint16_t *halves = xmalloc((size_t)(elements > 0 ? elements : 1) * sizeof(uint16_t));
    for (int64_t i = 0; i < elements; i++) halves[i] = float_to_half_bits(latents[i]);
    write_rows(w, w->samples, w->sample_file_type, start, rows, halves, "/latents");
    free(halves);
}

void dataset_writer_write_labels(dataset_writer *w, int64_t start, int64_t rows, const int32_t *labels) {
    if (w->labels < 0) fatal_internal("dataset_writer_write_labels on a file without labels");
    for (int64_t i = 0; i < rows; i++)
        if (labels[i] < 0 || labels[i] >= w->options.num_classes)
            fatal_internal("label %d of row %lld outside [0, %d)", labels[i], (long long)(start + i),
                           w->options.num_classes);
    write_rows(w, w->labels, H5T_NATIVE_INT32, start, rows, labels, "/labels");
}

void dataset_writer_set_latent_stats(dataset_writer *w, const double *mean, const double *std) {
    if (w->options.kind != DATASET_LATENTS) fatal_internal("latent statistics on an images file");
    if (w->stats_written) fatal_internal("latent statistics written twice");
    write_double_attribute(w, "latent_mean", mean, w->options.channels);
    write_double_attribute(w, "latent_std", std, w->options.channels);
    w->stats_written = 1;
}

void dataset_writer_shrink(dataset_writer *w, int64_t count) {
    if (count < 1 || count > w->options.count)
        fatal_internal("dataset_writer_shrink: %lld rows, expected [1, %lld]", (long long)count,
                       (long long)w->options.count);
    if (count == w->options.count) return;
    hid_t sets[2] = {w->samples, w->labels};
    for (int i = 0; i < 2; i++) {
        if (sets[i] < 0) continue;
        hsize_t dims[4];
        hid_t space = H5Dget_space(sets[i]);
        H5Sget_simple_extent_dims(space, dims, NULL);
        H5Sclose(space);
        dims[0] = (hsize_t)count;
        if (H5Dset_extent(sets[i], dims) < 0) fatal_internal("%s: cannot shrink to %lld rows", w->partial_path, (long long)count);
    }
    w->options.count = count;
}

static void fsync_path(const char *path, int directory) {
    int fd = open(path, directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
    if (fd < 0) fatal_internal("%s: cannot open to sync: %s", path, strerror(errno));
    if (fsync(fd) != 0 && !directory) {
        int error_number = errno;
        char full[512];
        if (disk_full_describe(path, error_number, full, sizeof full)) fatal_input("%s: cannot write: %s", path, full);
        fatal_internal("%s: fsync failed: %s", path, strerror(error_number));
    }
    close(fd);
}

void dataset_writer_finish(dataset_writer *w) {
    if (w->options.kind == DATASET_LATENTS && !w->stats_written)
        fatal_internal("%s: latents written without their statistics", w->partial_path);
    int closed = H5Dclose(w->samples) >= 0;
    if (w->labels >= 0) closed = H5Dclose(w->labels) >= 0 && closed;
    H5Tclose(w->sample_file_type);
    /* The metadata (and whatever HDF5 still holds) is written here. */
    if (!closed || H5Fclose(w->file) < 0) write_failed(w, "the file's metadata");
    if (w->is_root) {
        fsync_path(w->partial_path, 0);
        if (rename(w->partial_path, w->path) != 0)
            fatal_internal("cannot rename %s to %s: %s", w->partial_path, w->path, strerror(errno));
        char *copy = xstrdup(w->path);
        fsync_path(dirname(copy), 1);
        free(copy);
    }
    /* Nobody returns before the file is in place under its final name. */
    comm_barrier();
    fatal_forget_removal(w->partial_path);
    free(w->path);
    free(w->partial_path);
    free(w);
}

uint8_t dataset_pixel_from_float(float value) {
    float v = (value + 1.0f) * 127.5f;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : lrintf(v));
}

void dataset_pixels_from_floats(const float *images, int64_t rows, int channels, int size, uint8_t *pixels) {
    const int64_t plane = (int64_t)size * size;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < plane; i++)
            for (int c = 0; c < channels; c++)
                pixels[(r * plane + i) * channels + c] =
                    dataset_pixel_from_float(images[(r * channels + c) * plane + i]);
}

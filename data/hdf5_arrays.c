/* Whole-array HDF5 reads and writes (see hdf5_arrays.h). HDF5's own error
 * stack printing is switched off: errors are reported once, as one line. */
#include "hdf5_arrays.h"

#include <hdf5.h>
#include <pthread.h>
#include <stdlib.h>
#include <fcntl.h>
#include <unistd.h>

#include "fatal.h"

static hid_t open_dataset(const char *path, const char *dataset, hid_t *file, hdf5_array_shape *shape) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    if (access(path, R_OK) != 0) fatal_input("%s: cannot read the file", path);
    *file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (*file < 0) fatal_input("%s: not an HDF5 file", path);
    if (H5Lexists(*file, dataset, H5P_DEFAULT) <= 0) fatal_input("%s: dataset %s is missing", path, dataset);
    hid_t ds = H5Dopen2(*file, dataset, H5P_DEFAULT);
    if (ds < 0) fatal_input("%s: %s is not a dataset", path, dataset);
    hid_t space = H5Dget_space(ds);
    int ndim = H5Sget_simple_extent_ndims(space);
    if (ndim < 0 || ndim > HDF5_ARRAY_MAX_DIMS)
        fatal_input("%s: dataset %s has %d dimensions, at most %d supported", path, dataset, ndim,
                    HDF5_ARRAY_MAX_DIMS);
    hsize_t dims[HDF5_ARRAY_MAX_DIMS];
    H5Sget_simple_extent_dims(space, dims, NULL);
    H5Sclose(space);
    shape->ndim = ndim;
    shape->count = 1;
    for (int d = 0; d < ndim; d++) {
        shape->dims[d] = (int64_t)dims[d];
        shape->count *= (int64_t)dims[d];
    }
    hid_t type = H5Dget_type(ds);
    H5T_class_t type_class = H5Tget_class(type);
    H5Tclose(type);
    if (type_class != H5T_INTEGER && type_class != H5T_FLOAT)
        fatal_input("%s: dataset %s is not numeric", path, dataset);
    return ds;
}

static void *read_converted(const char *path, const char *dataset, hdf5_array_shape *shape,
                            hid_t memory_type, size_t element_size) {
    hid_t file;
    hid_t ds = open_dataset(path, dataset, &file, shape);
    void *data = xmalloc((size_t)shape->count * element_size);
    if (H5Dread(ds, memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
        fatal_input("%s: cannot read dataset %s (damaged file or values out of range)", path, dataset);
    H5Dclose(ds);
    H5Fclose(file);
    return data;
}

float *hdf5_read_floats(const char *path, const char *dataset, hdf5_array_shape *shape) {
    return read_converted(path, dataset, shape, H5T_NATIVE_FLOAT, sizeof(float));
}

int *hdf5_read_ints(const char *path, const char *dataset, hdf5_array_shape *shape) {
    return read_converted(path, dataset, shape, H5T_NATIVE_INT, sizeof(int));
}

int64_t hdf5_create_file(const char *path) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    return file < 0 ? -1 : (int64_t)file;
}

int hdf5_write_floats(int64_t file, const char *dataset, const float *data, int ndim, const int64_t *dims) {
    hsize_t hdims[HDF5_ARRAY_MAX_DIMS];
    for (int d = 0; d < ndim; d++) hdims[d] = (hsize_t)dims[d];
    hid_t space = H5Screate_simple(ndim, hdims, NULL);
    hid_t ds = H5Dcreate2((hid_t)file, dataset, H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    int ok = ds >= 0 && H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0;
    if (ds >= 0) H5Dclose(ds);
    H5Sclose(space);
    return ok ? 0 : -1;
}

int hdf5_close_file(int64_t file, const char *path) {
    if (H5Fclose((hid_t)file) < 0) return -1;
    /* HDF5 does not fsync; without it a crash after the rename could leave an empty file. */
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

static pthread_once_t library_lock_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t library_lock;

/* At exit HDF5 shuts itself down (an atexit handler it registers when it
 * starts), which would pull the library from under a loader thread still
 * reading. This handler, registered after HDF5's and so run before it, takes
 * the lock for good: a thread mid-call finishes first, and none starts again. */
static void hold_library_lock_at_exit(void) { pthread_mutex_lock(&library_lock); }

static void library_lock_init(void) {
    H5open();
    atexit(hold_library_lock_at_exit);
    pthread_mutexattr_t attributes;
    pthread_mutexattr_init(&attributes);
    pthread_mutexattr_settype(&attributes, PTHREAD_MUTEX_RECURSIVE);
    if (pthread_mutex_init(&library_lock, &attributes) != 0) fatal_internal("cannot create the HDF5 library lock");
    pthread_mutexattr_destroy(&attributes);
}

void hdf5_library_lock(void) {
    pthread_once(&library_lock_once, library_lock_init);
    pthread_mutex_lock(&library_lock);
}

void hdf5_library_unlock(void) { pthread_mutex_unlock(&library_lock); }

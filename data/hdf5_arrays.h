/* Whole-array reads and writes of HDF5 datasets on one rank, for commands that
 * exchange plain arrays (ldm forward's /x, /t, /y and /out), and the process-wide
 * lock that serialises HDF5 calls between threads. Every failure on user files is
 * a fatal_input naming the file and the dataset. The sharded, parallel
 * data-set loader lives beside this in its own files. */
#ifndef LDM_HDF5_ARRAYS_H
#define LDM_HDF5_ARRAYS_H

#include <stdint.h>

#define HDF5_ARRAY_MAX_DIMS 8

typedef struct {
    int ndim;
    int64_t dims[HDF5_ARRAY_MAX_DIMS];
    int64_t count; /* product of dims */
} hdf5_array_shape;

/* Reads a numeric dataset converted to float32 / int32; the caller frees the result. */
float *hdf5_read_floats(const char *path, const char *dataset, hdf5_array_shape *shape);
int *hdf5_read_ints(const char *path, const char *dataset, hdf5_array_shape *shape);

/* Creates (truncating) PATH; returns an HDF5 file id, or -1 (nothing is printed). */
int64_t hdf5_create_file(const char *path);
/* Writes a float32 dataset; returns 0 or -1. */
int hdf5_write_floats(int64_t file, const char *dataset, const float *data, int ndim, const int64_t *dims);
/* Closes the file and fsyncs it to disk; returns 0 or -1. */
int hdf5_close_file(int64_t file, const char *path);

/* Debian's HDF5 is built without thread safety, and a data loader may read on
 * its background thread while other code uses HDF5 on the main thread: every
 * HDF5 call made while a loader can be streaming must hold this process-wide
 * lock. It is recursive, so a function holding it may call another that takes
 * it. Never hold it across a blocking MPI collective that another rank can
 * only reach after this rank's loader thread made progress. */
void hdf5_library_lock(void);
void hdf5_library_unlock(void);

#endif

/* libFuzzer target: the data set file validator (data/dataset_file.c) on an
 * HDF5 file held in memory (a file in /dev/shm: the validator opens a path, as
 * every command does): layout, element types, shapes, attributes, labels; for a
 * file that passes with at most 65536 samples, its labels are read and checked
 * too. HDF5 objects a refused file left open are closed after each input, so
 * that the next one is not served from HDF5's cache of open files. */
#include <hdf5.h>
#include <stdlib.h>

#include "dataset_file.h"
#include "fuzz_common.h"

static void validate(void *context) {
    dataset_info info;
    dataset_info_open(context, &info);
    if (info.count <= 65536) free(dataset_read_labels(&info));
    dataset_info_free(&info);
}

static void close_everything(void) {
    ssize_t count = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
    if (count <= 0) return;
    hid_t *ids = malloc((size_t)count * sizeof *ids);
    if (!ids) abort();
    count = H5Fget_obj_ids(H5F_OBJ_ALL, H5F_OBJ_ALL, (size_t)count, ids);
    for (ssize_t i = 0; i < count; i++) {
        switch (H5Iget_type(ids[i])) {
        case H5I_FILE: H5Fclose(ids[i]); break;
        case H5I_GROUP: H5Gclose(ids[i]); break;
        case H5I_DATASET: H5Dclose(ids[i]); break;
        case H5I_DATATYPE: H5Tclose(ids[i]); break;
        case H5I_ATTR: H5Aclose(ids[i]); break;
        default: break;
        }
    }
    free(ids);
    /* Files stay open while any object in them is: a second pass for the files. */
    count = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_FILE);
    if (count > 0) {
        ids = malloc((size_t)count * sizeof *ids);
        if (!ids) abort();
        count = H5Fget_obj_ids(H5F_OBJ_ALL, H5F_OBJ_FILE, (size_t)count, ids);
        for (ssize_t i = 0; i < count; i++) H5Fclose(ids[i]);
        free(ids);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_run(validate, (void *)fuzz_file("input.h5", data, size));
    close_everything();
    fuzz_close_files();
    return 0;
}

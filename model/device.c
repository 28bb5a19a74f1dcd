/* Device discovery (see device.h). */
#include "device.h"

#include <omp.h>
#include <stdio.h>

int device_cuda_compiled(void) {
#ifdef LDM_HAVE_CUDA
    return 1;
#else
    return 0;
#endif
}

int device_cuda_count(void) {
#ifdef LDM_HAVE_CUDA
    return device_cuda_count_impl();
#else
    return 0;
#endif
}

const char *device_cuda_error(void) {
#ifdef LDM_HAVE_CUDA
    device_cuda_count_impl();
    return device_cuda_error_impl();
#else
    return NULL;
#endif
}

void device_describe(char *out, size_t size) {
    int used = snprintf(out, size, "cpu (%d threads)", omp_get_max_threads());
#ifdef LDM_HAVE_CUDA
    int count = device_cuda_count_impl();
    const char *error = device_cuda_error_impl();
    if (count == 0 && used > 0 && (size_t)used < size)
        snprintf(out + used, size - used, "; cuda: %s", error ? error : "no device");
    for (int d = 0; d < count && used > 0 && (size_t)used < size; d++) {
        char name[256];
        device_cuda_name(d, name, sizeof(name));
        used += snprintf(out + used, size - used, "; cuda:%d %s", d, name);
    }
#else
    if (used > 0 && (size_t)used < size) snprintf(out + used, size - used, "; cuda: not compiled in");
#endif
}

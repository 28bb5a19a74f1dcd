/* Full disks (see disk_space.h). */
#include "disk_space.h"

#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>

#include "fatal.h"

char *disk_folder_of(const char *path) {
    char *copy = xstrdup(path);
    char *folder = xstrdup(dirname(copy));
    free(copy);
    return folder;
}

int64_t disk_free_bytes(const char *path) {
    struct statvfs info;
    if (statvfs(path, &info) != 0) {
        char *folder = disk_folder_of(path);
        int status = statvfs(folder, &info);
        free(folder);
        if (status != 0) return -1;
    }
    return (int64_t)info.f_bavail * (int64_t)info.f_frsize;
}

int disk_is_full(const char *path, int error_number) {
    if (error_number == ENOSPC || error_number == EDQUOT) return 1;
    if (error_number != 0) return 0;
    int64_t free_bytes = disk_free_bytes(path);
    return free_bytes >= 0 && free_bytes < DISK_NEARLY_FULL_BYTES;
}

int disk_full_describe(const char *path, int error_number, char *text, size_t size) {
    if (!disk_is_full(path, error_number)) return 0;
    char *folder = disk_folder_of(path);
    int64_t free_bytes = disk_free_bytes(path);
    /* With the error number known, the space left says little: the writer
     * may have removed what it wrote already. */
    if (error_number != 0 || free_bytes < 0)
        snprintf(text, size, "the disk holding %s is full (%s)", folder, strerror(error_number ? error_number : ENOSPC));
    else
        snprintf(text, size, "the disk holding %s is full (%lld bytes free)", folder, (long long)free_bytes);
    free(folder);
    return 1;
}

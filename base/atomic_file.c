/* Atomic file publishing (see atomic_file.h). */
#include "atomic_file.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fatal.h"

char *path_join(const char *folder, const char *name) {
    size_t length = strlen(folder);
    while (length > 1 && folder[length - 1] == '/') length--;
    size_t size = length + strlen(name) + 2;
    char *path = xmalloc(size);
    snprintf(path, size, "%.*s/%s", (int)length, folder, name);
    return path;
}

int fsync_folder_of(const char *path, int is_folder) {
    char *copy = xstrdup(path);
    const char *folder = is_folder ? copy : dirname(copy);
    int fd = open(folder, O_RDONLY | O_DIRECTORY);
    int status = fd >= 0 && fsync(fd) == 0 ? 0 : -1;
    if (fd >= 0) close(fd);
    free(copy);
    return status;
}

int atomic_write_file(const char *path, const void *bytes, size_t size, char *err, size_t err_size) {
    size_t n = strlen(path) + 32;
    char *temporary = xmalloc(n);
    snprintf(temporary, n, "%s.tmp-%d", path, (int)getpid());
    int status = -1, saved_errno = 0;
    FILE *f = fopen(temporary, "wb");
    if (!f) {
        saved_errno = errno;
        snprintf(err, err_size, "%s: cannot create: %s", temporary, strerror(saved_errno));
        goto done;
    }
    int ok = fwrite(bytes, 1, size, f) == size && fflush(f) == 0 && fsync(fileno(f)) == 0;
    saved_errno = errno;
    if (fclose(f) != 0 && ok) {
        ok = 0;
        saved_errno = errno;
    }
    if (!ok) {
        snprintf(err, err_size, "%s: cannot write: %s", temporary, strerror(saved_errno));
        unlink(temporary);
        goto done;
    }
    if (rename(temporary, path) != 0) {
        saved_errno = errno;
        snprintf(err, err_size, "%s: cannot rename into place: %s", path, strerror(saved_errno));
        unlink(temporary);
        goto done;
    }
    fsync_folder_of(path, 0);
    status = 0;
done:
    free(temporary);
    if (status != 0) errno = saved_errno; /* for the caller, which tells a full disk from other failures */
    return status;
}

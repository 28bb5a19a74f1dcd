/* Files on disk: joining paths, and publishing files atomically: a file is written under a temporary name in the
 * same folder, fsynced, renamed over its final name, and the folder fsynced, so
 * a reader (or a run after a crash) sees the old file or the new one, never a
 * part. Used for config.json, state and manifests. */
#ifndef LDM_ATOMIC_FILE_H
#define LDM_ATOMIC_FILE_H

#include <stddef.h>

/* Writes bytes to path atomically. Returns 0, or -1 with one line in err and
 * errno that of the failed call (ENOSPC: the disk is full). */
int atomic_write_file(const char *path, const void *bytes, size_t size, char *err, size_t err_size);
/* fsyncs the folder holding path (or the folder itself when is_folder). Returns 0 or -1. */
int fsync_folder_of(const char *path, int is_folder);

/* "folder/name" (caller frees), without a doubled slash when folder ends in one. */
char *path_join(const char *folder, const char *name);

#endif

/* Full disks: telling a failed write on a full disk from other write failures,
 * and the words of the one line the user gets then ("PATH: cannot write WHAT:
 * the disk holding FOLDER is full (N bytes free)", exit status 2: the user
 * frees space and runs again). Every writer of ldm (data set files, PNGs,
 * checkpoints, metrics) reports a full disk through here. */
#ifndef LDM_DISK_SPACE_H
#define LDM_DISK_SPACE_H

#include <stddef.h>
#include <stdint.h>

/* Where a library loses errno (HDF5 writing through MPI-IO), a failed write
 * with less than this left on the file system is taken for a full disk. */
#define DISK_NEARLY_FULL_BYTES ((int64_t)4 << 20)

/* Bytes free to this user on the file system holding path (path itself, or its
 * folder when path does not exist yet); -1 when it cannot be told. */
int64_t disk_free_bytes(const char *path);

/* The folder holding path ("." for a bare name); caller frees. */
char *disk_folder_of(const char *path);

/* Whether a failed write of path was the disk being full: error_number is
 * ENOSPC or EDQUOT, or error_number is 0 (unknown) and less than
 * DISK_NEARLY_FULL_BYTES are free on the file system holding path. */
int disk_is_full(const char *path, int error_number);

/* When disk_is_full(path, error_number): writes "the disk holding FOLDER is
 * full (No space left on device)" into text, or, with error_number 0, "... is
 * full (N bytes free)" (the space as it is now: measure before removing what
 * was written) and returns 1; returns 0 otherwise. The
 * caller ends the program with its line "PATH: cannot write ...: TEXT" and
 * exit status 2 (fatal_input). */
int disk_full_describe(const char *path, int error_number, char *text, size_t size);

#endif

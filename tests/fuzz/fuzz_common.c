/* See fuzz_common.h. */
#include "fuzz_common.h"

#include <dirent.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fatal.h"

volatile unsigned fuzz_sink;

static jmp_buf back;
static int jumped_status;

static void jump_back(int exit_code) {
    jumped_status = exit_code;
    longjmp(back, 1);
}

int fuzz_run(void (*body)(void *context), void *context) {
    fatal_set_abort_hook(jump_back);
    volatile int status = 0;
    if (setjmp(back) == 0)
        body(context);
    else
        status = jumped_status;
    fatal_set_abort_hook(NULL);
    return status;
}

static char folder[64];

static void remove_folder(void) {
    char command[128];
    snprintf(command, sizeof command, "rm -rf '%s'", folder);
    if (system(command) != 0) fprintf(stderr, "fuzz: cannot remove %s\n", folder);
}

const char *fuzz_folder(void) {
    if (!folder[0]) {
        snprintf(folder, sizeof folder, "/dev/shm/ldm-fuzz-XXXXXX");
        if (!mkdtemp(folder)) {
            snprintf(folder, sizeof folder, "/tmp/ldm-fuzz-XXXXXX");
            if (!mkdtemp(folder)) {
                perror("fuzz: mkdtemp");
                abort();
            }
        }
        atexit(remove_folder);
    }
    return folder;
}

const char *fuzz_file(const char *name, const uint8_t *data, size_t size) {
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", fuzz_folder(), name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        perror(path);
        abort();
    }
    for (size_t done = 0; done < size;) {
        ssize_t n = write(fd, data + done, size - done);
        if (n <= 0) {
            perror(path);
            abort();
        }
        done += (size_t)n;
    }
    close(fd);
    return path;
}

void fuzz_close_files(void) {
    const char *inside = fuzz_folder();
    DIR *fds = opendir("/proc/self/fd");
    if (!fds) return;
    int open_fds[256], count = 0;
    for (struct dirent *entry; (entry = readdir(fds)) && count < 256;) {
        char link[64], target[512];
        snprintf(link, sizeof link, "/proc/self/fd/%s", entry->d_name);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n <= 0) continue;
        target[n] = '\0';
        if (strncmp(target, inside, strlen(inside)) == 0) open_fds[count++] = atoi(entry->d_name);
    }
    closedir(fds);
    for (int i = 0; i < count; i++) close(open_fds[i]);
}

char *fuzz_text(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text) abort();
    memcpy(text, data, size);
    text[size] = '\0';
    return text;
}

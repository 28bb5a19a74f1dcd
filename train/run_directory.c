/* The run directory (see run_directory.h). */
#include "run_directory.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "atomic_file.h"
#include "comm.h"
#include "disk_space.h"
#include "fatal.h"

/* What marks a folder as holding a run. */
static const char *const run_markers[] = {"config.json", "metrics.jsonl", "checkpoints", "model.safetensors"};

char *run_directory_path(const char *run_dir, const char *name) { return path_join(run_dir, name); }

/* mkdir -p */
static void make_folders(const char *path) {
    char *copy = xstrdup(path);
    for (char *p = copy + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(copy, 0777) != 0 && errno != EEXIST)
            fatal_input("%s: cannot create the run directory: %s", path, strerror(errno));
        *p = '/';
    }
    if (mkdir(copy, 0777) != 0 && errno != EEXIST)
        fatal_input("%s: cannot create the run directory: %s", path, strerror(errno));
    free(copy);
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) fatal_input("%s: exists and is not a directory", path);
}

void run_directory_prepare(const char *run_dir, int force, const char *config_json) {
    if (comm_rank() == 0) {
        for (size_t i = 0; i < sizeof run_markers / sizeof run_markers[0] && !force; i++) {
            char *marker = run_directory_path(run_dir, run_markers[i]);
            if (access(marker, F_OK) == 0)
                fatal_input("%s: holds another run (%s exists); use --force to start over in it, or another --run",
                            run_dir, run_markers[i]);
            free(marker);
        }
        make_folders(run_dir);
        /* The exports mark a finished run (launch/slurm.sbatch requeues a job
         * until they exist); this run writes them again when it completes. */
        const char *const exports[] = {"model.safetensors", "ema.safetensors"};
        for (int i = 0; i < 2; i++) {
            char *path = run_directory_path(run_dir, exports[i]);
            unlink(path);
            free(path);
        }
        char *config_path = run_directory_path(run_dir, "config.json");
        char err[512];
        if (atomic_write_file(config_path, config_json, strlen(config_json), err, sizeof err) != 0) {
            char full[512];
            if (disk_full_describe(config_path, errno, full, sizeof full))
                fatal_input("%s: cannot write: %s", config_path, full);
            fatal_input("%s", err);
        }
        free(config_path);
    }
    comm_barrier();
}

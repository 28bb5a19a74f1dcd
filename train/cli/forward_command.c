/* `ldm forward`: runs the DiT on inputs from an HDF5 file, /x (N, C, H, W)
 * float32, /t (N) the time input as the embedder sees it, /y (N) int32 labels,
 * with weights from a safetensors file, and writes /out (N, C, H, W). For
 * interoperability checks against other implementations and for debugging. The
 * output is written under a temporary name and renamed when complete. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "dit.h"
#include "fatal.h"
#include "hdf5_arrays.h"
#include "model_shapes.h"

static const char *output_temporary; /* removed at exit unless renamed into place */

static void remove_output_temporary(void) {
    if (output_temporary) unlink(output_temporary);
}

int command_forward(int argc, char **argv) {
    cli_option options[] = {
        {.name = "--config", .required = 1, .help = "config file giving the model shape"},
        {.name = "--set", .repeatable = 1, .help = "override a config key: section.key=value (repeatable)"},
        {.name = "--weights", .required = 1, .help = "model weights (safetensors, DiT names)"},
        {.name = "--input", .required = 1, .help = "HDF5 file with /x, /t, /y"},
        {.name = "--output", .required = 1, .help = "HDF5 file to write /out to"},
        {.name = "--batch", .value = "64", .help = "samples per forward pass (default 64)"},
        {0},
    };
    for (int i = 2; i < argc; i++)
        if (!strcmp(argv[i], "--help")) {
            cli_print_usage("forward", "Runs the DiT on /x, /t, /y of an HDF5 file and writes /out.", options);
            return 0;
        }
    cli_parse("forward", argc, argv, 2, options);
    ldm_config config;
    cli_load_config(&config, &options[0], &options[1]);
    const char *input = options[3].value, *output = options[4].value;
    int max_batch = (int)cli_int("forward", &options[5], 1, 1 << 20);
    dit_shape shape = config_dit_shape(&config);

    hdf5_array_shape xs, ts, ys;
    float *x = hdf5_read_floats(input, "/x", &xs);
    float *t = hdf5_read_floats(input, "/t", &ts);
    int *y = hdf5_read_ints(input, "/y", &ys);
    if (xs.ndim != 4 || xs.dims[1] != shape.in_channels || xs.dims[2] != shape.input_size ||
        xs.dims[3] != shape.input_size)
        fatal_input("%s: /x must have shape (N, %d, %d, %d) for this config", input, shape.in_channels,
                    shape.input_size, shape.input_size);
    int64_t n = xs.dims[0];
    if (ts.ndim != 1 || ts.dims[0] != n) fatal_input("%s: /t must have shape (%lld)", input, (long long)n);
    if (ys.ndim != 1 || ys.dims[0] != n) fatal_input("%s: /y must have shape (%lld)", input, (long long)n);
    for (int64_t i = 0; i < n; i++)
        if (y[i] < 0 || y[i] > shape.num_classes)
            fatal_input("%s: /y[%lld] = %d is outside [0, %d] (%d is the null class)", input, (long long)i, y[i],
                        shape.num_classes, shape.num_classes);

    /* The output's temporary file is created first, so that an unwritable output
     * is reported before the work, and removed on any failure. */
    char temporary[4096];
    snprintf(temporary, sizeof(temporary), "%s.tmp-%d", output, (int)getpid());
    int64_t file = hdf5_create_file(temporary);
    if (file < 0) fatal_input("%s: cannot create the output file (does its directory exist?)", output);
    output_temporary = temporary;
    atexit(remove_output_temporary);

    int batch = n < max_batch ? (int)(n > 0 ? n : 1) : max_batch;
    dit_model model;
    dit_create(&model, &shape, batch);
    param_table_load_safetensors(&model.table, options[2].value);

    const size_t sample = (size_t)shape.in_channels * shape.input_size * shape.input_size;
    float *out = xmalloc(sizeof(float) * (size_t)(n > 0 ? n : 1) * sample); /* (N, C, H, W) */
    for (int64_t start = 0; start < n; start += batch) {
        int count = (int)(n - start < batch ? n - start : batch);
        dit_forward(&model, x + start * sample, t + start, y + start, count, out + start * sample);
    }

    if (hdf5_write_floats(file, "/out", out, 4, xs.dims) != 0 || hdf5_close_file(file, temporary) != 0 ||
        rename(temporary, output) != 0)
        fatal_internal("%s: cannot write the output", output);
    output_temporary = NULL;
    printf("forward: %lld samples -> %s:/out\n", (long long)n, output);
    free(out);
    free(x);
    free(t);
    free(y);
    dit_destroy(&model);
    return 0;
}

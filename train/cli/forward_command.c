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
#include "model_shapes.h"
#include "hdf5_arrays.h"

static const char *output_temporary; /* removed at exit unless renamed into place */

static void remove_output_temporary(void) {
    if (output_temporary) unlink(output_temporary);
}

/* The command line of ldm forward, parsed, with the config it names. */
typedef struct {
    const char *config_path, *weights, *input, *output;
    cli_list overrides; /* --set */
    ldm_config config;
    dit_shape shape;
    int max_batch;
} forward_options;

/* Parses the command line and loads the config into o; 0 when help was printed. */
static int parse_forward_options(int argc, char **argv, forward_options *o) {
    o->config_path = o->weights = o->input = o->output = NULL;
    o->overrides.count = 0;
    const char *batch = "64";
    cli_option table[] = {
        {.name = "--config", .text = &o->config_path, .required = 1, .help = "config file giving the model shape"},
        {.name = "--set", .list = &o->overrides, .help = "override a config key: section.key=value (repeatable)"},
        {.name = "--weights", .text = &o->weights, .required = 1, .help = "model weights (safetensors, DiT names)"},
        {.name = "--input", .text = &o->input, .required = 1, .help = "HDF5 file with /x, /t, /y"},
        {.name = "--output", .text = &o->output, .required = 1, .help = "HDF5 file to write /out to"},
        {.name = "--batch", .text = &batch, .help = "samples per forward pass (default 64)"},
        {0},
    };
    /* --help only (-h is an unknown option here). */
    for (int i = 2; i < argc; i++)
        if (!strcmp(argv[i], "--help")) {
            cli_print_usage("forward", "Runs the DiT on /x, /t, /y of an HDF5 file and writes /out.", table);
            return 0;
        }
    cli_parse("forward", argc, argv, 2, table);
    cli_load_config(&o->config, o->config_path, &o->overrides);
    o->max_batch = (int)cli_int("forward", "--batch", batch, 1, 1 << 20);
    o->shape = config_dit_shape(&o->config);
    return 1;
}

/* The inputs of the network, as read from --input. */
typedef struct {
    hdf5_array_shape xs, ts, ys;
    float *x;  /* (N, C, H, W) */
    float *t;  /* (N) */
    int *y;    /* (N) */
    int64_t n;
} forward_inputs;

/* Reads /x, /t, /y and checks their shapes against the config's DiT. */
static void read_forward_inputs(const forward_options *o, forward_inputs *in) {
    const char *input = o->input;
    const dit_shape *shape = &o->shape;
    in->x = hdf5_read_floats(input, "/x", &in->xs);
    in->t = hdf5_read_floats(input, "/t", &in->ts);
    in->y = hdf5_read_ints(input, "/y", &in->ys);
    if (in->xs.ndim != 4 || in->xs.dims[1] != shape->in_channels || in->xs.dims[2] != shape->input_size ||
        in->xs.dims[3] != shape->input_size)
        fatal_input("%s: /x must have shape (N, %d, %d, %d) for this config", input, shape->in_channels,
                    shape->input_size, shape->input_size);
    const int64_t n = in->n = in->xs.dims[0];
    if (in->ts.ndim != 1 || in->ts.dims[0] != n) fatal_input("%s: /t must have shape (%lld)", input, (long long)n);
    if (in->ys.ndim != 1 || in->ys.dims[0] != n) fatal_input("%s: /y must have shape (%lld)", input, (long long)n);
    for (int64_t i = 0; i < n; i++)
        if (in->y[i] < 0 || in->y[i] > shape->num_classes)
            fatal_input("%s: /y[%lld] = %d is outside [0, %d] (%d is the null class)", input, (long long)i, in->y[i],
                        shape->num_classes, shape->num_classes);
}

/* The network's output for every input row, (N, C, H, W) (caller frees). */
static float *run_forward(const forward_options *o, const forward_inputs *in) {
    const int64_t n = in->n;
    int batch = n < o->max_batch ? (int)(n > 0 ? n : 1) : o->max_batch;
    dit_model model;
    dit_create(&model, &o->shape, batch);
    param_table_load_safetensors(&model.table, o->weights);
    const size_t sample = (size_t)o->shape.in_channels * o->shape.input_size * o->shape.input_size;
    float *out = xmalloc(sizeof(float) * (size_t)(n > 0 ? n : 1) * sample); /* (N, C, H, W) */
    for (int64_t start = 0; start < n; start += batch) {
        int count = (int)(n - start < batch ? n - start : batch);
        dit_forward(&model, in->x + start * sample, in->t + start, in->y + start, count, out + start * sample);
    }
    dit_destroy(&model);
    return out;
}

int command_forward(int argc, char **argv) {
    forward_options options;
    if (!parse_forward_options(argc, argv, &options)) return 0;
    forward_inputs in;
    read_forward_inputs(&options, &in);

    /* The output's temporary file is created first, so that an unwritable output
     * is reported before the work, and removed on any failure. */
    const char *output = options.output;
    char temporary[4096];
    snprintf(temporary, sizeof(temporary), "%s.tmp-%d", output, (int)getpid());
    int64_t file = hdf5_create_file(temporary);
    if (file < 0) fatal_input("%s: cannot create the output file (does its directory exist?)", output);
    output_temporary = temporary;
    atexit(remove_output_temporary);

    float *out = run_forward(&options, &in);
    if (hdf5_write_floats(file, "/out", out, 4, in.xs.dims) != 0 || hdf5_close_file(file, temporary) != 0 ||
        rename(temporary, output) != 0)
        fatal_internal("%s: cannot write the output", output);
    output_temporary = NULL;
    printf("forward: %lld samples -> %s:/out\n", (long long)in.n, output);
    free(out);
    free(in.x);
    free(in.t);
    free(in.y);
    return 0;
}

/* Command-line test of `ldm forward` (argv[1] is the ldm binary; run from the
 * repository root). From tests/fixtures/dit_small.safetensors it writes the model
 * weights and an HDF5 input (/x, /t, /y) into a temporary directory, runs ldm and
 * compares /out with the PyTorch float64 reference output:
 *     max |ours - ref| <= 1e-5 * max |ref|
 * (the same bound as test_dit_reference: float32 arithmetic against a float64
 * reference computed from the same float32-rounded weights and inputs), with the
 * default batch and with --batch 3 (chunks of 3 and 1).
 * Bad inputs (weights with a missing, extra or misshapen tensor, a weights file
 * that is not safetensors, /x of the wrong shape, a label out of range, /t
 * missing, an input file that does not exist, a --set that changes the model, an
 * unknown option) must each end ldm with exit status 2 and one line
 * "ldm: error: ..." naming the file (or option) and the problem, and must leave
 * no output file behind; an existing output file is replaced only on success. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "safetensors.h"
#include "test_util.h"

#define FIXTURE "tests/fixtures/dit_small.safetensors"
#define CONFIG "configs/tiny.json"
#define TOLERANCE 1e-5 /* relative to max |ref|, see above */

/* configs/tiny.json: input 8, channels 4, patch 2, hidden 64, depth 2, heads 4, 10 classes */
enum { N = 4, C = 4, H = 8, W = 8, SAMPLE = C * H * W };

static const char *ldm_binary;
static char dir[64];

static char *in_dir(const char *name) {
    static char paths[16][512];
    static int next;
    char *p = paths[next++ % 16];
    snprintf(p, sizeof(paths[0]), "%s/%s", dir, name);
    return p;
}

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    size_t got;
    while ((got = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += got;
        if (cap - len - 1 == 0) buf = realloc(buf, cap *= 2);
    }
    buf[len] = 0;
    fclose(f);
    return buf;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(1);
    }
    fputs(text, f);
    fclose(f);
}

/* Runs `ldm forward ARGS...` (NULL-terminated) with stdout to /dev/null and stderr to
 * DIR/stderr.txt; returns the exit status, or 128 + signal. *err gets stderr's text. */
static int run_forward(char **err, ...) {
    char *argv[64];
    int argc = 0;
    argv[argc++] = (char *)ldm_binary;
    argv[argc++] = "forward";
    va_list args;
    va_start(args, err);
    for (char *a; (a = va_arg(args, char *)) && argc < 63;) argv[argc++] = a;
    va_end(args);
    argv[argc] = NULL;

    const char *err_path = in_dir("stderr.txt");
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(1);
    }
    if (pid == 0) {
        int out = open("/dev/null", O_WRONLY);
        int e = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (out < 0 || e < 0) _exit(126);
        dup2(out, 1);
        dup2(e, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) {
            perror("waitpid");
            exit(1);
        }
    *err = read_text(err_path);
    if (!*err) *err = strdup("");
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    return 128 + WTERMSIG(status);
}

/* ---- HDF5 inputs and output ---------------------------------------------------------- */

static void write_dataset(hid_t file, const char *name, hid_t file_type, hid_t mem_type, int ndim,
                          const hsize_t *dims, const void *data) {
    hid_t space = H5Screate_simple(ndim, dims, NULL);
    hid_t ds = H5Dcreate2(file, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (ds < 0 || H5Dwrite(ds, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0) {
        fprintf(stderr, "cannot write dataset %s\n", name);
        exit(1);
    }
    H5Dclose(ds);
    H5Sclose(space);
}

/* Writes /x with dims xdims (4-D, xdims' product must be N * SAMPLE), /t unless omit_t,
 * and /y (N int32). */
static void write_input(const char *path, const float *x, const hsize_t *xdims, const float *t, int omit_t,
                        const int *y) {
    hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (file < 0) {
        fprintf(stderr, "%s: cannot create\n", path);
        exit(1);
    }
    hsize_t n = N;
    write_dataset(file, "/x", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 4, xdims, x);
    if (!omit_t) write_dataset(file, "/t", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, &n, t);
    write_dataset(file, "/y", H5T_STD_I32LE, H5T_NATIVE_INT, 1, &n, y);
    H5Fclose(file);
}

/* Reads /out of PATH as float32 if it has shape (N, C, H, W); NULL (and a failed check) otherwise. */
static float *read_output(const char *path) {
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    CHECK_MSG(file >= 0, "%s: cannot open as HDF5", path);
    if (file < 0) return NULL;
    float *out = NULL;
    hid_t ds = H5Dopen2(file, "/out", H5P_DEFAULT);
    CHECK_MSG(ds >= 0, "%s: no dataset /out", path);
    if (ds >= 0) {
        hid_t space = H5Dget_space(ds);
        hsize_t dims[8] = {0};
        int ndim = H5Sget_simple_extent_dims(space, dims, NULL);
        H5Sclose(space);
        int ok = ndim == 4 && dims[0] == N && dims[1] == C && dims[2] == H && dims[3] == W;
        CHECK_MSG(ok, "%s: /out has %d dims (%llu, %llu, %llu, %llu), expected (%d, %d, %d, %d)", path, ndim,
                  (unsigned long long)dims[0], (unsigned long long)dims[1], (unsigned long long)dims[2],
                  (unsigned long long)dims[3], N, C, H, W);
        if (ok) {
            out = malloc(sizeof(float) * N * SAMPLE);
            if (H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) < 0) {
                CHECK_MSG(0, "%s: cannot read /out", path);
                free(out);
                out = NULL;
            }
        }
        H5Dclose(ds);
    }
    H5Fclose(file);
    return out;
}

/* ---- weights ------------------------------------------------------------------------- */

static int is_model_tensor(const char *name) {
    return strncmp(name, "input.", 6) && strncmp(name, "grad.", 5) && strncmp(name, "adamw.", 6) &&
           strcmp(name, "output") && strcmp(name, "loss");
}

static void write_weights(const char *path, const safetensors_entry *entries, int count) {
    char err[512];
    if (safetensors_write(path, entries, count, NULL, NULL, 0, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s\n", err);
        exit(1);
    }
}

/* ---- checks -------------------------------------------------------------------------- */

static void check_matches_reference(const char *what, const char *path, const float *ref) {
    float *out = read_output(path);
    if (!out) return;
    double ref_max = 0, err_max = 0;
    for (int i = 0; i < N * SAMPLE; i++) {
        double r = fabs((double)ref[i]), e = fabs((double)out[i] - (double)ref[i]);
        if (r > ref_max) ref_max = r;
        if (!(e <= err_max)) err_max = e; /* NaN propagates */
    }
    printf("%s: max |ours - ref| = %.3g, max |ref| = %.3g\n", what, err_max, ref_max);
    CHECK_MSG(ref_max > 0 && err_max <= TOLERANCE * ref_max, "%s: max error %.3g > %.0e * %.3g", what,
              err_max, TOLERANCE, ref_max);
    free(out);
}

/* No file under DIR whose name contains ".tmp-" (a temporary output left behind). */
static void check_no_temporaries(const char *what) {
    DIR *d = opendir(dir);
    if (!d) return;
    for (struct dirent *e; (e = readdir(d));)
        CHECK_MSG(!strstr(e->d_name, ".tmp-"), "%s: temporary file %s left behind", what, e->d_name);
    closedir(d);
}

/* A failing run: exit status 2, exactly one stderr line starting "ldm: error: " that holds
 * every one of the NULL-terminated substrings, and no output file. */
static void check_bad_input(const char *what, int status, const char *err, const char *output, ...) {
    CHECK_MSG(status == 2, "%s: exit status %d, expected 2; stderr:\n%s", what, status, err);
    const char *line = strstr(err, "ldm: error: ");
    CHECK_MSG(line && (line == err || line[-1] == '\n'), "%s: no line \"ldm: error: ...\" on stderr:\n%s", what,
              err);
    if (line) {
        CHECK_MSG(!strstr(line + 1, "ldm: error: "), "%s: more than one error line:\n%s", what, err);
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        char *one = strndup(line, len);
        va_list args;
        va_start(args, output);
        for (const char *s; (s = va_arg(args, const char *));)
            CHECK_MSG(strstr(one, s), "%s: expected \"%s\" in \"%s\"", what, s, one);
        va_end(args);
        free(one);
    }
    CHECK_MSG(!exists(output), "%s: output %s was created", what, output);
    check_no_temporaries(what);
    printf("%s: status %d, %s", what, status, line ? line : "(no error line)\n");
}

static void remove_dir(void) {
    DIR *d = opendir(dir);
    if (d) {
        for (struct dirent *e; (e = readdir(d));) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char path[512];
            snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
            if (unlink(path) != 0) fprintf(stderr, "cannot remove %s: %s\n", path, strerror(errno));
        }
        closedir(d);
    }
    if (rmdir(dir) != 0) fprintf(stderr, "cannot remove %s: %s\n", dir, strerror(errno));
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s PATH-TO-LDM (run from the repository root)\n", argv[0]);
        return 1;
    }
    ldm_binary = argv[1];
    if (access(ldm_binary, X_OK) != 0) {
        fprintf(stderr, "%s: not an executable: %s\n", ldm_binary, strerror(errno));
        return 1;
    }
    /* The children initialise MPI: Open MPI as root needs consent. Under the sanitizers,
     * memory Open MPI still holds at a fatal exit() is not ours to report. */
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 0);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 0);
    {
        const char *asan = getenv("ASAN_OPTIONS");
        char buf[1024];
        snprintf(buf, sizeof(buf), "%s%sdetect_leaks=0", asan ? asan : "", asan && *asan ? ":" : "");
        setenv("ASAN_OPTIONS", buf, 1);
    }
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* we report HDF5 failures ourselves */

    safetensors_file fx;
    char err_text[512];
    if (safetensors_read(FIXTURE, &fx, err_text, sizeof(err_text)) != 0) {
        fprintf(stderr, "%s\n", err_text);
        return 1;
    }
    const safetensors_tensor *fx_x = safetensors_find(&fx, "input.x"), *fx_t = safetensors_find(&fx, "input.t"),
                             *fx_y = safetensors_find(&fx, "input.y"), *fx_out = safetensors_find(&fx, "output");
    int fixture_ok = fx_x && fx_t && fx_y && fx_out && fx_x->dtype == SAFETENSORS_F32 && fx_x->numel == N * SAMPLE &&
                     fx_x->ndim == 4 && fx_x->shape[1] == C && fx_x->shape[2] == H && fx_x->shape[3] == W &&
                     fx_t->dtype == SAFETENSORS_F32 && fx_t->numel == N && fx_y->dtype == SAFETENSORS_I32 &&
                     fx_y->numel == N && fx_out->dtype == SAFETENSORS_F32 && fx_out->numel == N * SAMPLE;
    CHECK_MSG(fixture_ok, FIXTURE ": input.x (4,4,8,8) F32, input.t (4) F32, input.y (4) I32, output (4,4,8,8) F32");
    if (!fixture_ok) return test_finish("test_forward_command");
    /* The data of a safetensors file need not be aligned: copy before use as float/int. */
    float *x = malloc(sizeof(float) * N * SAMPLE), *t = malloc(sizeof(float) * N),
          *ref = malloc(sizeof(float) * N * SAMPLE);
    int *y = malloc(sizeof(int) * N);
    memcpy(x, fx_x->data, sizeof(float) * N * SAMPLE);
    memcpy(t, fx_t->data, sizeof(float) * N);
    memcpy(y, fx_y->data, sizeof(int) * N);
    memcpy(ref, fx_out->data, sizeof(float) * N * SAMPLE);

    /* The model tensors, in fixture order. */
    safetensors_entry *model = calloc((size_t)fx.count + 1, sizeof(*model));
    int model_count = 0;
    for (int i = 0; i < fx.count; i++) {
        const safetensors_tensor *s = &fx.tensors[i];
        if (!is_model_tensor(s->name)) continue;
        safetensors_entry *e = &model[model_count++];
        e->name = s->name;
        e->dtype = s->dtype;
        e->ndim = s->ndim;
        memcpy(e->shape, s->shape, sizeof(e->shape));
        e->data = s->data;
    }
    CHECK_MSG(model_count > 10 && safetensors_find(&fx, "pos_embed"), "fixture holds %d model tensors", model_count);

    strcpy(dir, "/tmp/ldm-test-forward-XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    char weights[512], input[512];
    snprintf(weights, sizeof(weights), "%s", in_dir("weights.safetensors"));
    snprintf(input, sizeof(input), "%s", in_dir("input.h5"));
    write_weights(weights, model, model_count);
    const hsize_t xdims[4] = {N, C, H, W};
    write_input(input, x, xdims, t, 0, y);

    char *err = NULL;
    int status;

    /* ---- 1. Correct inputs: /out matches the reference, whole batch and uneven chunks. */
    const char *out = in_dir("out.h5");
    status = run_forward(&err, "--config", CONFIG, "--weights", weights, "--input", input, "--output", out, NULL);
    CHECK_MSG(status == 0, "forward: exit status %d; stderr:\n%s", status, err);
    free(err);
    if (status == 0) check_matches_reference("forward", out, ref);
    check_no_temporaries("forward");

    const char *out3 = in_dir("out-batch3.h5");
    status = run_forward(&err, "--config", CONFIG, "--weights", weights, "--input", input, "--output", out3,
                         "--batch", "3", NULL);
    CHECK_MSG(status == 0, "forward --batch 3: exit status %d; stderr:\n%s", status, err);
    free(err);
    if (status == 0) check_matches_reference("forward --batch 3", out3, ref);
    check_no_temporaries("forward --batch 3");

    /* ---- 2. Bad weights. */
    const char *fail_out = in_dir("out-fail.h5");
    char bad[512];

    /* A tensor missing. */
    snprintf(bad, sizeof(bad), "%s", in_dir("missing.safetensors"));
    {
        safetensors_entry *e = calloc((size_t)model_count, sizeof(*e));
        int n = 0;
        for (int i = 0; i < model_count; i++)
            if (strcmp(model[i].name, "blocks.1.mlp.fc2.bias")) e[n++] = model[i];
        CHECK(n == model_count - 1);
        write_weights(bad, e, n);
        free(e);
    }
    status = run_forward(&err, "--config", CONFIG, "--weights", bad, "--input", input, "--output", fail_out, NULL);
    check_bad_input("missing tensor", status, err, fail_out, bad, "'blocks.1.mlp.fc2.bias'", "missing", NULL);
    free(err);

    /* An extra tensor the model does not have. */
    snprintf(bad, sizeof(bad), "%s", in_dir("extra.safetensors"));
    {
        static const float junk[3] = {1, 2, 3};
        model[model_count] = (safetensors_entry){.name = "blocks.2.attn.qkv.bias", .dtype = SAFETENSORS_F32,
                                                 .ndim = 1, .shape = {3}, .data = junk};
        write_weights(bad, model, model_count + 1);
    }
    status = run_forward(&err, "--config", CONFIG, "--weights", bad, "--input", input, "--output", fail_out, NULL);
    check_bad_input("extra tensor", status, err, fail_out, bad, "'blocks.2.attn.qkv.bias'",
                    "not a parameter of this model", NULL);
    free(err);

    /* A tensor with the wrong shape (same element count, so only the shape check can catch it). */
    snprintf(bad, sizeof(bad), "%s", in_dir("wrong-shape.safetensors"));
    {
        safetensors_entry *e = malloc(sizeof(*e) * (size_t)model_count);
        memcpy(e, model, sizeof(*e) * (size_t)model_count);
        int found = 0;
        for (int i = 0; i < model_count; i++)
            if (!strcmp(e[i].name, "final_layer.linear.bias")) {
                CHECK(e[i].ndim == 1 && e[i].shape[0] == 16);
                e[i].ndim = 2;
                e[i].shape[0] = 4;
                e[i].shape[1] = 4;
                found = 1;
            }
        CHECK(found);
        write_weights(bad, e, model_count);
        free(e);
    }
    status = run_forward(&err, "--config", CONFIG, "--weights", bad, "--input", input, "--output", fail_out, NULL);
    check_bad_input("wrong shape", status, err, fail_out, bad, "'final_layer.linear.bias'", "[4, 4]", "[16]",
                    NULL);
    free(err);

    /* A weights file that is not safetensors at all. */
    snprintf(bad, sizeof(bad), "%s", in_dir("weights.txt"));
    write_text(bad, "These are not the weights you are looking for.\nJust some text.\n");
    status = run_forward(&err, "--config", CONFIG, "--weights", bad, "--input", input, "--output", fail_out, NULL);
    check_bad_input("text weights", status, err, fail_out, bad, "not a safetensors file", NULL);
    free(err);

    /* A --set that changes the model: the weights no longer fit. */
    status = run_forward(&err, "--config", CONFIG, "--set", "model.hidden_size=32", "--weights", weights, "--input",
                         input, "--output", fail_out, NULL);
    check_bad_input("--set model.hidden_size=32", status, err, fail_out, weights, "has shape", "config gives",
                    NULL);
    free(err);

    /* ---- 3. Bad inputs. */
    /* /x of the wrong shape for the config (same element count). */
    snprintf(bad, sizeof(bad), "%s", in_dir("x-shape.h5"));
    {
        const hsize_t wrong[4] = {N, C, H / 2, W * 2};
        write_input(bad, x, wrong, t, 0, y);
    }
    status = run_forward(&err, "--config", CONFIG, "--weights", weights, "--input", bad, "--output", fail_out, NULL);
    check_bad_input("/x shape", status, err, fail_out, bad, "/x", "(N, 4, 8, 8)", NULL);
    free(err);

    /* A label outside [0, 10] (10 is the null class). */
    snprintf(bad, sizeof(bad), "%s", in_dir("y-range.h5"));
    {
        int y_bad[N];
        memcpy(y_bad, y, sizeof(y_bad));
        y_bad[2] = 11;
        write_input(bad, x, xdims, t, 0, y_bad);
    }
    status = run_forward(&err, "--config", CONFIG, "--weights", weights, "--input", bad, "--output", fail_out, NULL);
    check_bad_input("label 11", status, err, fail_out, bad, "/y[2] = 11", "outside [0, 10]", NULL);
    free(err);

    /* /t missing. */
    snprintf(bad, sizeof(bad), "%s", in_dir("no-t.h5"));
    write_input(bad, x, xdims, t, 1, y);
    status = run_forward(&err, "--config", CONFIG, "--weights", weights, "--input", bad, "--output", fail_out, NULL);
    check_bad_input("/t missing", status, err, fail_out, bad, "/t", "missing", NULL);
    free(err);

    /* An input file that does not exist. */
    snprintf(bad, sizeof(bad), "%s", in_dir("does-not-exist.h5"));
    status = run_forward(&err, "--config", CONFIG, "--weights", weights, "--input", bad, "--output", fail_out, NULL);
    check_bad_input("missing input file", status, err, fail_out, bad, "cannot read", NULL);
    free(err);

    /* An unknown option. */
    status = run_forward(&err, "--config", CONFIG, "--weights", weights, "--input", input, "--output", fail_out,
                         "--bogus", "1", NULL);
    check_bad_input("unknown option", status, err, fail_out, "--bogus", "unknown option", NULL);
    free(err);

    /* ---- 4. An existing output is replaced only on success. */
    const char *sentinel = in_dir("existing.h5");
    const char *sentinel_text = "sentinel: an earlier output that a failing run must not touch\n";
    write_text(sentinel, sentinel_text);
    snprintf(bad, sizeof(bad), "%s", in_dir("missing.safetensors"));
    status = run_forward(&err, "--config", CONFIG, "--weights", bad, "--input", input, "--output", sentinel, NULL);
    CHECK_MSG(status == 2, "failing run onto an existing output: exit status %d; stderr:\n%s", status, err);
    free(err);
    {
        char *now = read_text(sentinel);
        CHECK_MSG(now && !strcmp(now, sentinel_text), "existing output changed by a failing run: \"%s\"",
                  now ? now : "(gone)");
        free(now);
    }
    check_no_temporaries("failing run onto an existing output");
    status = run_forward(&err, "--config", CONFIG, "--weights", weights, "--input", input, "--output", sentinel,
                         "--batch", "1", NULL);
    CHECK_MSG(status == 0, "run onto an existing output: exit status %d; stderr:\n%s", status, err);
    free(err);
    if (status == 0) check_matches_reference("forward --batch 1 onto an existing output", sentinel, ref);
    check_no_temporaries("run onto an existing output");

    remove_dir();
    free(model);
    free(x);
    free(t);
    free(y);
    free(ref);
    safetensors_free(&fx);
    return test_finish("test_forward_command");
}

/* `ldm sample`: images from a DiT trained by `ldm train`, with EDM's Heun or
 * Euler sampler (optionally with churn) and classifier-free guidance
 * (train/diffusion/sampler.h), decoded through the autoencoder for a model trained on
 * latents (train/diffusion/sample_pipeline.h).
 *
 *   ldm sample --model RUN_OR_CKPT --n N --out FILE.h5|FILE.png|FILE.npz [--ae RUN_OR_CKPT]
 *              [--class K|all] [--cfg W] [--steps S] [--sampler heun|euler]
 *              [--churn S] [--seed S] [--weights ema|model] [--batch B] [--force]
 *              [--device auto|cpu|cuda]
 *
 * The model: rank 0 finds the checkpoint (checkpoint_model.h), which must be of
 * kind "dit", and reads the model's config and its data record from its
 * state.json; they and the weights (EMA by default) are broadcast. A model
 * trained on latents is decoded by --ae, or else by the autoencoder its latents
 * file named (when that checkpoint is still there), with its EMA weights; the
 * latents' normalisation recorded in state.json is undone first.
 *
 * Sample i has label K (--class K) or i mod num_classes (--class all, the
 * default), and its noise is keyed by (seed, i): the output does not depend on
 * the number of ranks (bit for bit, for a given --batch; another --batch gives
 * the same samples up to float rounding, as the network always runs on --batch
 * rows, padded). Rank r of W samples the contiguous shard
 * dataset_shard_range(N, r, W). .h5: every rank writes its rows collectively
 * (dataset_writer: /images uint8 (N, H, W, C), pixel = round((x + 1) * 127.5)
 * clamped to [0, 255], and /labels). .png: rank 0 gathers the shards and writes
 * a grid, one row per class with --class all (sample i in row i mod classes,
 * column i / classes), else 8 per row; RGB for 3 or more channels, else the
 * first channel in gray. .npz: rank 0 gathers the shards and writes arr_0
 * (N, H, W, 3) uint8 (gray repeated to RGB) and arr_1 (N) int64 labels, what
 * the ADM evaluation suite and torch-fidelity read (data/npz_writer.h).
 *
 * --device (command_device.h): on cuda the sampler, the DiT and the decoder run
 * on each rank's GPU (sample_runner.h), the noise drawn on the host from the
 * same streams: the same samples as the CPU's up to the network's rounding, and
 * the same bytes for any number of ranks for a given --batch. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "atomic_file.h"
#include "checkpoint.h"
#include "checkpoint_model.h"
#include "cli.h"
#include "command_device.h"
#include "comm.h"
#include "commands.h"
#include "dataset_file.h"
#include "dit.h"
#include "fatal.h"
#include "model_shapes.h"
#include "npz_writer.h"
#include "png_image.h"
#include "progress_bar.h"
#include "consistency_record.h"
#include "sample_runner.h"
#include "sampler.h"

/* The command line of ldm sample, parsed and checked. */
typedef struct {
    const char *model, *out, *class_text, *weights, *ae, *sigmas; /* as given (NULL: left out) */
    const char *device;               /* --device auto|cpu|cuda (NULL: auto) */
    int64_t n;
    int force, png, npz;              /* npz: --out ends in .npz */
    int batch;                        /* rows of every network pass */
    sampler_options sampler;          /* EDM's: the given options, else their defaults */
    int steps_given, cfg_given;
    const char *sampler_option_given; /* "--sampler" or "--churn" when given, else NULL */
    const char *edm_option_given;     /* "--cfg", else sampler_option_given */
} sample_options;

/* The options parse_sample_options converts from text (NULL: left out). */
typedef struct {
    const char *n, *cfg, *steps, *sampler, *seed, *batch, *churn;
} sample_option_texts;

/* The option table, tied to the fields of o and t; 0 when help was printed. */
static int read_sample_command_line(int argc, char **argv, sample_options *o, sample_option_texts *t) {
    cli_option table[] = {
        {.name = "--model", .text = &o->model, .required = 1,
         .help = "the DiT: a run directory of ldm train or one of its checkpoints"},
        {.name = "--n", .text = &t->n, .required = 1, .help = "how many samples"},
        {.name = "--out", .text = &o->out, .required = 1,
         .help = "SAMPLES.h5 (an ldm data set with /images and /labels), GRID.png, or SAMPLES.npz (arr_0 "
                 "(N, H, W, 3) uint8 and arr_1 labels, for the ADM evaluator and torch-fidelity)"},
        {.name = "--class", .text = &o->class_text,
         .help = "the class of every sample, or all (sample i: i mod classes)"},
        {.name = "--cfg", .text = &t->cfg,
         .help = "classifier-free guidance scale (default 1: none); a consistency model distilled over a range "
                 "of scales (distill.guidance_max): its scale input, in that range (default the lower end)"},
        {.name = "--steps", .text = &t->steps,
         .help = "noise levels before sigma = 0 (default 18); a consistency model (ldm distill): 1, 2 or 4 "
                 "(default 2)"},
        {.name = "--sampler", .text = &t->sampler, .help = "heun (2 steps - 1 evaluations) or euler (default heun)"},
        {.name = "--seed", .text = &t->seed, .help = "seed of the initial noise (default 0)"},
        {.name = "--weights", .text = &o->weights, .help = "ema or model (default ema)"},
        {.name = "--batch", .text = &t->batch, .help = "samples per forward pass (default: N, at most 64)"},
        {.name = "--force", .flag = &o->force, .help = "overwrite an existing output"},
        {.name = "--ae", .text = &o->ae,
         .help = "for a model trained on latents: the autoencoder (run, checkpoint or diffusers folder) that "
                 "decodes them (default: the one that made its latents, when still there)"},
        {.name = "--churn", .text = &t->churn, .help = "EDM's stochastic churn S_churn (default 0: deterministic)"},
        {.name = "--device", .text = &o->device,
         .help = "auto (cuda where this build and machine have a GPU, else cpu), cpu or cuda (default auto)"},
        {.name = "--sigmas", .text = &o->sigmas,
         .help = "a consistency model: its sampler's noise levels instead of the recorded ones, decreasing and "
                 "above distill.sigma_min, e.g. 80,0.821 (one per step)"},
        {0},
    };
    return cli_parse_unless_help("sample", "Samples images from a DiT with EDM's Heun or Euler sampler, or from a "
                                           "consistency model of ldm distill with its 1-4 step sampler.",
                                 argc, argv, 2, table);
}

/* Parses and checks the command line into o; 0 when help was printed. */
static int parse_sample_options(int argc, char **argv, sample_options *o) {
    *o = (sample_options){.class_text = "all", .weights = "ema"};
    sample_option_texts t = {.seed = "0"};
    if (!read_sample_command_line(argc, argv, o, &t)) return 0;
    o->n = cli_int("sample", "--n", t.n, 1, INT_MAX);
    o->png = cli_path_ends_with(o->out, ".png");
    o->npz = cli_path_ends_with(o->out, ".npz");
    if (!o->png && !o->npz && !cli_path_ends_with(o->out, ".h5"))
        fatal_input("ldm sample: option --out: expected a file name ending in .h5, .png or .npz, got '%s'", o->out);
    /* EDM's options, when left out: their defaults. A consistency model takes none
     * of them (refused by resolve_consistency_guidance when given), and 2 steps by default. */
    o->sampler_option_given = t.sampler ? "--sampler" : t.churn ? "--churn" : NULL;
    o->edm_option_given = t.cfg ? "--cfg" : o->sampler_option_given;
    o->steps_given = t.steps != NULL;
    o->cfg_given = t.cfg != NULL;
    o->sampler = (sampler_options){
        .steps = (int)cli_int("sample", "--steps", t.steps ? t.steps : "18", 1, 100000),
        .guidance = cli_double("sample", "--cfg", t.cfg ? t.cfg : "1", 0.0, 1e6),
        .seed = cli_uint64("sample", "--seed", t.seed),
        .churn = cli_double("sample", "--churn", t.churn ? t.churn : "0", 0.0, 1e6),
    };
    const char *method = t.sampler ? t.sampler : "heun";
    if (!strcmp(method, "heun")) o->sampler.method = SAMPLER_HEUN;
    else if (!strcmp(method, "euler")) o->sampler.method = SAMPLER_EULER;
    else fatal_input("ldm sample: option --sampler: expected heun or euler, got '%s'", method);
    if (strcmp(o->weights, "ema") != 0 && strcmp(o->weights, "model") != 0)
        fatal_input("ldm sample: option --weights: expected ema or model, got '%s'", o->weights);
    o->batch = t.batch ? (int)cli_int("sample", "--batch", t.batch, 1, 1 << 16) : o->n < 64 ? (int)o->n : 64;
    return 1;
}

/* --sigmas A,B,...: the consistency sampler's noise levels, one per step,
 * decreasing and above co->sigma_min (the count must agree with --steps when
 * both are given). */
static void consistency_sigmas_option(const char *text, int steps, consistency_sampler_options *co) {
    int count = 0;
    const char *p = text;
    while (*p) {
        char *end = NULL;
        errno = 0;
        const double v = strtod(p, &end);
        if (end == p || errno || !isfinite(v) || (*end && *end != ',') || count == CONSISTENCY_MAX_STEPS)
            fatal_input("ldm sample: option --sigmas: expected up to %d comma-separated numbers, got '%s'",
                        CONSISTENCY_MAX_STEPS, text);
        if (!(v > co->sigma_min) || (count > 0 && !(v < co->sigmas[count - 1])))
            fatal_input("ldm sample: option --sigmas: expected decreasing numbers above distill.sigma_min (%g), got "
                        "'%s'", co->sigma_min, text);
        co->sigmas[count++] = v;
        p = *end ? end + 1 : end;
    }
    if (count == 0) fatal_input("ldm sample: option --sigmas: expected at least one number, got '%s'", text);
    if (steps && steps != count)
        fatal_input("ldm sample: option --sigmas: %d noise levels, but --steps %d", count, steps);
    co->steps = count;
}

/* The DiT to sample from, as its checkpoint describes it, and the sampler it takes. */
typedef struct {
    char *checkpoint;
    long long step;
    checkpoint_data data;            /* what it was trained on */
    ldm_config config;
    dit_shape shape;
    int latents;                     /* trained on latents: decoded by an autoencoder */
    int consistency;                 /* a student of ldm distill */
    consistency_sampler_options co;  /* its sampler, when consistency */
    sampler_options edm;             /* EDM's sampler, otherwise */
    int classes, fixed_class;        /* --class K, or -1 for all */
} sample_model;

/* Collective: finds the checkpoint of --model (rank 0, broadcast) and, for a
 * student of ldm distill, its consistency sampler; returns the config's JSON
 * text (caller frees). */
static char *find_sample_model(const sample_options *o, sample_model *m) {
    char *config_text = NULL;
    const int rank = comm_rank();
    m->checkpoint = NULL;
    m->step = 0;
    const checkpoint_model_request request = {"sample", "model", "dit", "train", "consistency", "distill"};
    if (rank == 0) config_text = checkpoint_model_find(&request, o->model, &m->checkpoint, &m->step, &m->data);
    config_text = checkpoint_model_broadcast_string(config_text);
    m->checkpoint = checkpoint_model_broadcast_string(m->checkpoint);
    comm_broadcast(&m->step, sizeof m->step, 0);
    comm_broadcast(&m->data, sizeof m->data, 0);
    /* A student of ldm distill: its record says so, and holds its sigma points. */
    char *record = rank == 0 ? checkpoint_model_state_record(m->checkpoint, CONSISTENCY_RECORD_NAME) : NULL;
    m->consistency = record != NULL;
    comm_broadcast(&m->consistency, sizeof m->consistency, 0);
    m->edm = o->sampler;
    if (m->consistency) {
        record = checkpoint_model_broadcast_string(record);
        /* With --sigmas the record gives sigma_min only. */
        const int recorded_steps = o->sigmas ? 0 : o->steps_given ? m->edm.steps : 2;
        consistency_record_sampler(record, m->checkpoint, recorded_steps, &m->co);
        m->co.seed = m->edm.seed;
        free(record);
        if (o->sigmas) consistency_sigmas_option(o->sigmas, o->steps_given ? m->edm.steps : 0, &m->co);
    } else if (o->sigmas) {
        fatal_input("ldm sample: option --sigmas: %s is not a consistency model (ldm distill's students take it; "
                    "EDM's sampler takes --steps)", m->checkpoint);
    }
    return config_text;
}

/* A student distilled over a range of guidance scales takes the scale as an
 * input (--cfg, default the range's lower end); any other consistency model
 * has its teacher's guidance built in and takes none of EDM's options. */
static void resolve_consistency_guidance(const sample_options *o, sample_model *m) {
    if (m->consistency && m->shape.guidance_input) {
        const double low = m->config.distill.guidance, high = m->config.distill.guidance_max;
        if (o->sampler_option_given)
            fatal_input("ldm sample: option %s: does not apply to the consistency model %s (its sampler takes "
                        "--steps 1, 2 or 4 and --cfg only)", o->sampler_option_given, m->checkpoint);
        if (!(m->edm.guidance >= low && m->edm.guidance <= high) && o->cfg_given)
            fatal_input("ldm sample: option --cfg: the consistency model %s was distilled for guidance scales in "
                        "[%g, %g], got %g", m->checkpoint, low, high, m->edm.guidance);
        m->co.guidance = o->cfg_given ? m->edm.guidance : low;
    } else if (m->consistency && o->edm_option_given) {
        fatal_input("ldm sample: option %s: does not apply to the consistency model %s (its sampler takes "
                    "--steps 1, 2 or 4 only)", o->edm_option_given, m->checkpoint);
    }
    if (m->consistency) m->edm.guidance = 1.0;
}

/* --class: all (-1), or a class of the model. */
static int parse_sample_class(const char *class_text, int classes) {
    if (strcmp(class_text, "all") == 0) return -1;
    char *end = NULL;
    errno = 0;
    long v = strtol(class_text, &end, 10);
    if (errno || end == class_text || *end || v < 0 || v >= classes)
        fatal_input("ldm sample: option --class: expected all or a class in [0, %d] (the model has %d classes), "
                    "got '%s'", classes - 1, classes, class_text);
    return (int)v;
}

/* Collective: the model of --model, checked against the other options. */
static void resolve_sample_model(const sample_options *o, sample_model *m) {
    char *config_text = find_sample_model(o, m);
    m->latents = strcmp(m->data.kind, "latents") == 0;
    if (!m->latents && o->ae)
        fatal_input("ldm sample: option --ae: %s was trained on %s, not latents: it needs no autoencoder",
                    m->checkpoint, m->data.kind[0] ? m->data.kind : "images");
    if (m->latents && !m->data.has_latent_statistics)
        fatal_input("%s/state.json: data: no latent_mean and latent_std (a run of an older ldm); cannot undo the "
                    "latents' normalisation", m->checkpoint);
    char source[4200], err[1024];
    snprintf(source, sizeof source, "%s/state.json: config", m->checkpoint);
    if (config_load_json_text(&m->config, config_text, source, NULL, 0, err, sizeof err) != 0)
        fatal_input("%s", err);
    free(config_text);
    m->shape = m->consistency ? config_student_shape(&m->config) : config_dit_shape(&m->config);
    resolve_consistency_guidance(o, m);
    m->classes = m->shape.num_classes;
    m->fixed_class = parse_sample_class(o->class_text, m->classes);
}

/* The networks that make the samples, and the words that name them. */
typedef struct {
    sample_runner *runner;     /* the sampler over the DiT (and the decoder), on the CPU or the GPU */
    checkpoint_autoencoder ae; /* a latents model's decoder */
    char *recorded_ae;         /* the autoencoder its latents file named, or NULL */
    char *description;         /* "CHECKPOINT (step S, ema weights)[, decoded by AE]" */
} sample_networks;

/* Collective: the autoencoder of a latents model: --ae, or the one recorded in the data. */
static void load_sample_autoencoder(const sample_options *o, const sample_model *m, int on_cuda,
                                    sample_networks *net) {
    const char *ae_where = o->ae;
    net->recorded_ae = NULL;
    if (!ae_where) {
        net->recorded_ae = checkpoint_autoencoder_recorded_path(m->data.autoencoder);
        int there = comm_rank() == 0 && net->recorded_ae && access(net->recorded_ae, F_OK) == 0;
        comm_broadcast(&there, sizeof there, 0);
        if (!there)
            fatal_input("%s: the model was trained on latents (made by: %s); name the autoencoder that decodes "
                        "them with --ae", m->checkpoint, m->data.autoencoder[0] ? m->data.autoencoder : "not recorded");
        ae_where = net->recorded_ae;
    }
    /* On the GPU the runner decodes with a device copy: the host model only holds the weights. */
    checkpoint_autoencoder_load_sized(&net->ae, "sample", ae_where, "ema", AE_FOR_DECODING, on_cuda ? 1 : o->batch, 0,
                                      m->shape.input_size);
    checkpoint_autoencoder_check_latents(&net->ae, &m->shape, m->checkpoint);
}

/* Collective: the sampler over the DiT with the --weights of its checkpoint
 * (rank 0 reads, every rank gets them), and for a latents model its
 * autoencoder, on the device of --device. */
static void load_sample_networks(const sample_options *o, const sample_model *m, int on_cuda,
                                 sample_networks *net) {
    net->recorded_ae = NULL;
    checkpoint_data data = m->data; /* its latent statistics in the units of the autoencoder that decodes */
    if (m->latents) {
        load_sample_autoencoder(o, m, on_cuda, net);
        checkpoint_autoencoder_latent_units(&net->ae, data.latent_scaling_factor, data.latent_shift_factor,
                                            m->shape.in_channels, data.latent_mean, data.latent_std);
    }
    sample_runner_options ro = {.shape = &m->shape, .on_cuda = on_cuda, .max_batch = o->batch,
                                .sigma_data = m->config.diffusion.sigma_data,
                                .edm = m->consistency ? NULL : &m->edm, .consistency = m->consistency ? &m->co : NULL,
                                .decoder = m->latents ? &net->ae.model : NULL,
                                .latent_mean = data.latent_mean, .latent_std = data.latent_std};
    net->runner = sample_runner_create(&ro);
    param_table *table = sample_runner_table(net->runner);
    if (comm_rank() == 0) {
        char *file = path_join(m->checkpoint, strcmp(o->weights, "ema") == 0 ? "ema.safetensors" : "model.safetensors");
        param_table_load_safetensors(table, file);
        free(file);
    }
    comm_broadcast(sample_runner_params(net->runner), sizeof(float) * table->trainable_numel, 0);
    sample_runner_params_changed(net->runner);
    char *model_description = checkpoint_model_description(m->checkpoint, m->step, o->weights);
    net->description = model_description;
    if (m->latents) {
        size_t length = strlen(model_description) + strlen(net->ae.description) + 32;
        net->description = xmalloc(length);
        snprintf(net->description, length, "%s, decoded by %s", model_description, net->ae.description);
        free(model_description);
    }
}

static void free_sample_networks(const sample_model *m, sample_networks *net) {
    sample_runner_destroy(net->runner);
    if (m->latents) checkpoint_autoencoder_free(&net->ae);
    free(net->recorded_ae);
    free(net->description);
}

/* This rank's contiguous shard of the samples and what it holds of them. */
typedef struct {
    int64_t start, rows, largest_shard;
    int64_t image_elements;   /* C * H * W of a sample */
    int channels, size;
    float *images;            /* (batch, C, H, W) one pipeline run */
    int *labels;              /* (batch) */
    int64_t *indices;         /* (batch) */
    int32_t *labels32;        /* (largest_shard) the shard's labels */
    uint8_t *pixels;          /* (largest_shard, H, W, C) the shard's samples */
} sample_shard;

static void sample_shard_create(sample_shard *s, const sample_options *o, const sample_runner *runner) {
    const int rank = comm_rank(), world = comm_world_size();
    s->start = 0, s->rows = o->n;
    dataset_shard_range(o->n, rank, world, &s->start, &s->rows);
    s->largest_shard = (o->n + world - 1) / world;
    s->image_elements = sample_runner_per_image(runner);
    s->channels = sample_runner_channels(runner), s->size = sample_runner_size(runner);
    const size_t shard_rows = (size_t)(s->largest_shard > 0 ? s->largest_shard : 1);
    s->images = xmalloc(sizeof(float) * (size_t)o->batch * (size_t)s->image_elements);
    s->labels = xmalloc(sizeof(int) * (size_t)o->batch);
    s->labels32 = xmalloc(sizeof(int32_t) * shard_rows);
    s->indices = xmalloc(sizeof(int64_t) * (size_t)o->batch);
    s->pixels = xcalloc(shard_rows * (size_t)s->image_elements, 1);
}

static void sample_shard_free(sample_shard *s) {
    free(s->pixels);
    free(s->indices);
    free(s->labels32);
    free(s->labels);
    free(s->images);
}

/* Collective, for an .h5 output: the data set every rank writes its rows of. */
static dataset_writer *create_sample_writer(const sample_options *o, const sample_model *m, const sample_shard *s) {
    dataset_writer_options wo = {
        .path = o->out,
        .force = o->force,
        .kind = DATASET_IMAGES,
        .element = DATASET_UINT8,
        .count = o->n,
        .channels = s->channels,
        .height = s->size,
        .width = s->size,
        .has_labels = 1,
        .num_classes = m->classes,
    };
    return dataset_writer_create(&wo);
}

/* Samples the shard in batches of --batch (the network always runs on --batch
 * rows, so that the samples do not depend on the number of ranks: sampler.h),
 * writing each batch to writer when there is one. */
static void sample_shard_rows(const sample_options *o, const sample_model *m, sample_runner *runner,
                              sample_shard *s, dataset_writer *writer) {
    const int batch = o->batch;
    progress_bar bar;
    progress_bar_start(&bar, "sample", o->n, comm_rank() == 0 && s->rows > 0);
    const int64_t batches = (s->largest_shard + batch - 1) / batch;
    for (int64_t b = 0; b < batches; b++) {
        int64_t first = b * batch, count = dataset_rows_in_batch(s->rows, batch, b);
        uint8_t *pixels = s->pixels + first * s->image_elements;
        for (int64_t r = 0; r < count; r++) {
            int64_t index = s->start + first + r;
            s->indices[r] = index;
            s->labels[r] = m->fixed_class >= 0 ? m->fixed_class : (int)(index % m->classes);
            s->labels32[first + r] = s->labels[r];
        }
        if (count > 0) {
            sample_runner_run(runner, s->labels, s->indices, (int)count, s->images);
            for (int64_t i = 0; i < count * s->image_elements; i++)
                if (!isfinite(s->images[i]))
                    fatal_input("%s: the model gave a non-finite sample %lld (damaged or diverged weights?)",
                                m->checkpoint, (long long)(s->start + first + i / s->image_elements));
            dataset_pixels_from_floats(s->images, count, s->channels, s->size, pixels);
        }
        if (writer) {
            dataset_writer_write_images(writer, s->start + first, count, pixels);
            dataset_writer_write_labels(writer, s->start + first, count, s->labels32 + first);
        }
        progress_bar_update(&bar, (first + count) * o->n / (s->rows > 0 ? s->rows : 1));
    }
    progress_bar_finish(&bar);
}

/* How the samples were made, for the closing line. */
static void describe_sampler(const sample_model *m, char *made_by, size_t size) {
    if (m->consistency) {
        const consistency_sampler_options *co = &m->co;
        int used = snprintf(made_by, size, "consistency sampler %d step%s at sigma", co->steps,
                            co->steps == 1 ? "" : "s");
        for (int k = 0; k < co->steps && used > 0 && (size_t)used < size; k++)
            used += snprintf(made_by + used, size - (size_t)used, "%s %g", k ? "," : "", co->sigmas[k]);
        if (co->guidance > 0 && used > 0 && (size_t)used < size)
            snprintf(made_by + used, size - (size_t)used, ", guidance input %g", co->guidance);
    } else {
        const sampler_options *so = &m->edm;
        snprintf(made_by, size, "%s %d steps (%d evaluations), cfg %g, churn %g",
                 so->method == SAMPLER_HEUN ? "heun" : "euler", so->steps, sampler_network_evaluations(so),
                 so->guidance, so->churn);
    }
}

/* Collective, for a .png output: rank 0 gathers the shards and writes the grid. */
static void write_sample_grid(const sample_options *o, const sample_model *m, const sample_shard *s,
                              const char *made_by, const char *description) {
    const int rank = comm_rank(), world = comm_world_size();
    const int64_t n = o->n;
    const size_t shard_bytes = (size_t)s->largest_shard * (size_t)s->image_elements;
    uint8_t *all = rank == 0 ? xmalloc(shard_bytes * (size_t)world) : NULL;
    comm_gather(s->pixels, shard_bytes, all, 0);
    if (rank == 0) {
        /* Rank r's rows start at r * largest_shard; make them contiguous. */
        uint8_t *ordered = xmalloc((size_t)n * (size_t)s->image_elements);
        for (int r = 0; r < world; r++) {
            int64_t s0, sn;
            dataset_shard_range(n, r, world, &s0, &sn);
            memcpy(ordered + s0 * s->image_elements, all + (size_t)r * shard_bytes, (size_t)(sn * s->image_elements));
        }
        png_write_image_grid(o->out, ordered, n, s->channels, s->size, m->fixed_class < 0 ? m->classes : 0);
        printf("sample: wrote %s: a grid of %lld image%s%s, %s, seed %llu, from %s\n", o->out, (long long)n,
               n == 1 ? "" : "s", m->fixed_class < 0 ? ", one row per class" : "", made_by,
               (unsigned long long)m->edm.seed, description);
        free(ordered);
    }
    free(all);
    comm_barrier();
}

/* Collective, for an .npz output: rank 0 gathers the shards (pixels and labels)
 * and writes arr_0 (N, H, W, 3) uint8, gray repeated to RGB, and arr_1 (N) int64. */
static void write_sample_npz(const sample_options *o, const sample_model *m, const sample_shard *s,
                             const char *made_by, const char *description) {
    const int rank = comm_rank(), world = comm_world_size();
    const int64_t n = o->n, plane = (int64_t)s->size * s->size;
    const size_t shard_bytes = (size_t)s->largest_shard * (size_t)s->image_elements;
    const size_t shard_labels = (size_t)(s->largest_shard > 0 ? s->largest_shard : 1);
    uint8_t *all = rank == 0 ? xmalloc(shard_bytes * (size_t)world) : NULL;
    int32_t *all_labels = rank == 0 ? xmalloc(sizeof(int32_t) * shard_labels * (size_t)world) : NULL;
    comm_gather(s->pixels, shard_bytes, all, 0);
    comm_gather(s->labels32, sizeof(int32_t) * shard_labels, all_labels, 0);
    if (rank == 0) {
        npz_writer *npz = npz_writer_create(o->out);
        const int64_t image_shape[4] = {n, s->size, s->size, 3}, label_shape[1] = {n};
        uint8_t *rgb = xmalloc((size_t)plane * 3); /* (H, W, 3) one sample */
        int64_t *labels = xmalloc(sizeof(int64_t) * (size_t)n);
        npz_writer_begin_array(npz, "arr_0", "|u1", 1, image_shape, 4);
        /* Rank r's rows start at r * largest_shard. */
        for (int r = 0; r < world; r++) {
            int64_t s0, sn;
            dataset_shard_range(n, r, world, &s0, &sn);
            for (int64_t i = 0; i < sn; i++) {
                const uint8_t *pixels = all + (size_t)r * shard_bytes + (size_t)(i * s->image_elements);
                if (s->channels == 3) {
                    npz_writer_write(npz, pixels, (size_t)plane * 3);
                } else {
                    for (int64_t p = 0; p < plane; p++) rgb[3 * p] = rgb[3 * p + 1] = rgb[3 * p + 2] = pixels[p];
                    npz_writer_write(npz, rgb, (size_t)plane * 3);
                }
                labels[s0 + i] = all_labels[(size_t)r * shard_labels + (size_t)i];
            }
        }
        npz_writer_end_array(npz);
        npz_writer_begin_array(npz, "arr_1", "<i8", 8, label_shape, 1);
        npz_writer_write(npz, labels, sizeof(int64_t) * (size_t)n);
        npz_writer_end_array(npz);
        npz_writer_finish(npz);
        printf("sample: wrote %s: arr_0 (%lld, %d, %d, 3) uint8%s and arr_1 (%lld) int64 labels, %s, seed %llu, "
               "from %s\n",
               o->out, (long long)n, s->size, s->size, s->channels == 1 ? " (gray repeated to RGB)" : "",
               (long long)n, made_by, (unsigned long long)m->edm.seed, description);
        free(labels);
        free(rgb);
    }
    free(all_labels);
    free(all);
    comm_barrier();
}

/* Runs the sampler over this rank's shard and writes the output file. */
static void sample_and_write(const sample_options *o, const sample_model *m, sample_networks *net) {
    sample_shard shard;
    sample_shard_create(&shard, o, net->runner);
    if (o->npz && shard.channels != 1 && shard.channels != 3)
        fatal_input("ldm sample: option --out: an .npz holds RGB images, but %s makes samples of %d channels (a "
                    "latent model needs --ae or its autoencoder)",
                    m->checkpoint, shard.channels);
    dataset_writer *writer = o->png || o->npz ? NULL : create_sample_writer(o, m, &shard);
    sample_shard_rows(o, m, net->runner, &shard, writer);

    char made_by[256];
    describe_sampler(m, made_by, sizeof made_by);
    if (writer) {
        dataset_writer_finish(writer);
        if (comm_rank() == 0)
            printf("sample: wrote %s: %lld image%s %d x %d x %d, %s, seed %llu, from %s\n", o->out, (long long)o->n,
                   o->n == 1 ? "" : "s", shard.size, shard.size, shard.channels, made_by,
                   (unsigned long long)m->edm.seed, net->description);
    } else if (o->npz) {
        write_sample_npz(o, m, &shard, made_by, net->description);
    } else {
        write_sample_grid(o, m, &shard, made_by, net->description);
    }
    sample_shard_free(&shard);
}

int command_sample(int argc, char **argv) {
    sample_options options;
    if (!parse_sample_options(argc, argv, &options)) return 0;
    /* A PNG or an npz is written by rank 0 alone: refuse an existing one before any work. */
    if (options.png || options.npz) cli_refuse_existing_output(options.out, options.force);
    const int on_cuda = command_device_on_cuda("sample", options.device);
    sample_model model;
    resolve_sample_model(&options, &model);
    sample_networks networks;
    load_sample_networks(&options, &model, on_cuda, &networks);
    command_device_print("sample", on_cuda);
    sample_and_write(&options, &model, &networks);
    free_sample_networks(&model, &networks);
    free(model.checkpoint);
    return 0;
}

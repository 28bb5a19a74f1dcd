/* `ldm sample`: images from a DiT trained by `ldm train`, with EDM's Heun or
 * Euler sampler (optionally with churn) and classifier-free guidance
 * (train/sampler.h), decoded through the autoencoder for a model trained on
 * latents (train/sample_pipeline.h).
 *
 *   ldm sample --model RUN_OR_CKPT --n N --out FILE.h5|FILE.png [--ae RUN_OR_CKPT]
 *              [--class K|all] [--cfg W] [--steps S] [--sampler heun|euler]
 *              [--churn S] [--seed S] [--weights ema|model] [--batch B] [--force]
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
 * first channel in gray. */
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
#include "comm.h"
#include "commands.h"
#include "dataset_file.h"
#include "dit.h"
#include "fatal.h"
#include "png_image.h"
#include "progress_bar.h"
#include "consistency_record.h"
#include "sample_pipeline.h"
#include "sampler.h"
#include "model_shapes.h"



static double parse_double(const cli_option *option, double min, double max) {
    char *end = NULL;
    errno = 0;
    double v = strtod(option->value, &end);
    if (errno || end == option->value || *end || !(v >= min && v <= max))
        fatal_input("ldm sample: option %s: expected a number in [%g, %g], got '%s'", option->name, min, max,
                    option->value);
    return v;
}

/* --sigmas A,B,...: the consistency sampler's noise levels, one per step,
 * decreasing and above co->sigma_min (the count must agree with --steps when
 * both are given). */
static void consistency_sigmas_option(const cli_option *option, int steps, consistency_sampler_options *co) {
    int count = 0;
    const char *p = option->value;
    while (*p) {
        char *end = NULL;
        errno = 0;
        const double v = strtod(p, &end);
        if (end == p || errno || !isfinite(v) || (*end && *end != ',') || count == CONSISTENCY_MAX_STEPS)
            fatal_input("ldm sample: option --sigmas: expected up to %d comma-separated numbers, got '%s'",
                        CONSISTENCY_MAX_STEPS, option->value);
        if (!(v > co->sigma_min) || (count > 0 && !(v < co->sigmas[count - 1])))
            fatal_input("ldm sample: option --sigmas: expected decreasing numbers above distill.sigma_min (%g), got "
                        "'%s'", co->sigma_min, option->value);
        co->sigmas[count++] = v;
        p = *end ? end + 1 : end;
    }
    if (count == 0) fatal_input("ldm sample: option --sigmas: expected at least one number, got '%s'", option->value);
    if (steps && steps != count)
        fatal_input("ldm sample: option --sigmas: %d noise levels, but --steps %d", count, steps);
    co->steps = count;
}

int command_sample(int argc, char **argv) {
    cli_option options[] = {
        {.name = "--model", .required = 1, .help = "the DiT: a run directory of ldm train or one of its checkpoints"},
        {.name = "--n", .required = 1, .help = "how many samples"},
        {.name = "--out", .required = 1, .help = "SAMPLES.h5 (an ldm data set with /images and /labels) or GRID.png"},
        {.name = "--class", .value = "all", .help = "the class of every sample, or all (sample i: i mod classes)"},
        {.name = "--cfg", .help = "classifier-free guidance scale (default 1: none); a consistency model distilled over a range "
                                   "of scales (distill.guidance_max): its scale input, in that range (default the "
                                   "lower end)"},
        {.name = "--steps", .help = "noise levels before sigma = 0 (default 18); a consistency model (ldm distill): "
                                    "1, 2 or 4 (default 2)"},
        {.name = "--sampler", .help = "heun (2 steps - 1 evaluations) or euler (default heun)"},
        {.name = "--seed", .value = "0", .help = "seed of the initial noise (default 0)"},
        {.name = "--weights", .value = "ema", .help = "ema or model (default ema)"},
        {.name = "--batch", .help = "samples per forward pass (default: N, at most 64)"},
        {.name = "--force", .is_flag = 1, .help = "overwrite an existing output"},
        {.name = "--ae", .help = "for a model trained on latents: the autoencoder run or checkpoint that decodes them "
                                 "(default: the one that made its latents, when still there)"},
        {.name = "--churn", .help = "EDM's stochastic churn S_churn (default 0: deterministic)"},
        {.name = "--sigmas", .help = "a consistency model: its sampler's noise levels instead of the recorded ones, "
                                     "decreasing and above distill.sigma_min, e.g. 80,0.821 (one per step)"},
        {0},
    };
    if (cli_wants_help(argc, argv)) {
        cli_print_usage("sample", "Samples images from a DiT with EDM's Heun or Euler sampler, or from a consistency "
                                  "model of ldm distill with its 1-4 step sampler.", options);
        return 0;
    }
    cli_parse("sample", argc, argv, 2, options);
    const char *where = options[0].value, *out_path = options[2].value, *class_text = options[3].value;
    const int64_t n = cli_int("sample", &options[1], 1, INT_MAX);
    const int force = options[10].value != NULL;
    const int png = cli_path_ends_with(out_path, ".png");
    if (!png && !cli_path_ends_with(out_path, ".h5"))
        fatal_input("ldm sample: option --out: expected a file name ending in .h5 or .png, got '%s'", out_path);
    /* EDM's options, when left out: their defaults. A consistency model takes none
     * of them (refused below when given), and 2 steps by default. */
    const char *sampler_option_given = options[6].value ? "--sampler" : options[12].value ? "--churn" : NULL;
    const char *edm_option_given = options[4].value ? "--cfg" : sampler_option_given;
    const int steps_given = options[5].value != NULL, cfg_given = options[4].value != NULL;
    if (!options[4].value) options[4].value = "1";
    if (!options[5].value) options[5].value = "18";
    if (!options[6].value) options[6].value = "heun";
    if (!options[12].value) options[12].value = "0";
    sampler_options so = {
        .steps = (int)cli_int("sample", &options[5], 1, 100000),
        .guidance = parse_double(&options[4], 0.0, 1e6),
        .seed = cli_uint64("sample", &options[7]),
        .churn = parse_double(&options[12], 0.0, 1e6),
    };
    const char *method = options[6].value;
    if (!strcmp(method, "heun")) so.method = SAMPLER_HEUN;
    else if (!strcmp(method, "euler")) so.method = SAMPLER_EULER;
    else fatal_input("ldm sample: option --sampler: expected heun or euler, got '%s'", method);
    const char *weights = options[8].value;
    if (strcmp(weights, "ema") != 0 && strcmp(weights, "model") != 0)
        fatal_input("ldm sample: option --weights: expected ema or model, got '%s'", weights);
    const int batch_option = options[9].value ? (int)cli_int("sample", &options[9], 1, 1 << 16) : n < 64 ? (int)n : 64;
    const int rank = comm_rank(), world = comm_world_size();

    /* A PNG is written by rank 0 alone: refuse an existing one before any work. */
    if (png) cli_refuse_existing_output(out_path, force);

    /* The model's checkpoint and config. */
    char *config_text = NULL, *checkpoint = NULL;
    long long step = 0;
    checkpoint_data data;
    const checkpoint_model_request request = {"sample", "model", "dit", "train", "consistency", "distill"};
    if (rank == 0) config_text = checkpoint_model_find(&request, where, &checkpoint, &step, &data);
    config_text = checkpoint_model_broadcast_string(config_text);
    checkpoint = checkpoint_model_broadcast_string(checkpoint);
    comm_broadcast(&step, sizeof step, 0);
    comm_broadcast(&data, sizeof data, 0);
    /* A student of ldm distill: its record says so, and holds its sigma points. */
    char *record = rank == 0 ? checkpoint_model_state_record(checkpoint, CONSISTENCY_RECORD_NAME) : NULL;
    int consistency = record != NULL;
    comm_broadcast(&consistency, sizeof consistency, 0);
    consistency_sampler_options co;
    if (consistency) {
        record = checkpoint_model_broadcast_string(record);
        /* With --sigmas the record gives sigma_min only. */
        const int recorded_steps = options[13].value ? 0 : steps_given ? so.steps : 2;
        consistency_record_sampler(record, checkpoint, recorded_steps, &co);
        co.seed = so.seed;
        free(record);
        if (options[13].value) consistency_sigmas_option(&options[13], steps_given ? so.steps : 0, &co);
    } else if (options[13].value) {
        fatal_input("ldm sample: option --sigmas: %s is not a consistency model (ldm distill's students take it; "
                    "EDM's sampler takes --steps)", checkpoint);
    }
    const int latents = strcmp(data.kind, "latents") == 0;
    if (!latents && options[11].value)
        fatal_input("ldm sample: option --ae: %s was trained on %s, not latents: it needs no autoencoder", checkpoint,
                    data.kind[0] ? data.kind : "images");
    if (latents && !data.has_latent_statistics)
        fatal_input("%s/state.json: data: no latent_mean and latent_std (a run of an older ldm); cannot undo the "
                    "latents' normalisation", checkpoint);
    ldm_config config;
    char source[4200], err[1024];
    snprintf(source, sizeof source, "%s/state.json: config", checkpoint);
    if (config_load_json_text(&config, config_text, source, NULL, 0, err, sizeof err) != 0) fatal_input("%s", err);
    free(config_text);
    /* A student distilled over a range of guidance scales takes the scale as an
     * input (--cfg, default the range's lower end); any other consistency model
     * has its teacher's guidance built in and takes none of EDM's options. */
    const dit_shape shape = consistency ? config_student_shape(&config) : config_dit_shape(&config);
    if (consistency && shape.guidance_input) {
        const double low = config.distill.guidance, high = config.distill.guidance_max;
        if (sampler_option_given)
            fatal_input("ldm sample: option %s: does not apply to the consistency model %s (its sampler takes "
                        "--steps 1, 2 or 4 and --cfg only)", sampler_option_given, checkpoint);
        if (!(so.guidance >= low && so.guidance <= high) && cfg_given)
            fatal_input("ldm sample: option --cfg: the consistency model %s was distilled for guidance scales in "
                        "[%g, %g], got %g", checkpoint, low, high, so.guidance);
        co.guidance = cfg_given ? so.guidance : low;
    } else if (consistency && edm_option_given) {
        fatal_input("ldm sample: option %s: does not apply to the consistency model %s (its sampler takes "
                    "--steps 1, 2 or 4 only)", edm_option_given, checkpoint);
    }
    if (consistency) so.guidance = 1.0;
    const int classes = shape.num_classes;

    int fixed_class = -1;
    if (strcmp(class_text, "all") != 0) {
        char *end = NULL;
        errno = 0;
        long v = strtol(class_text, &end, 10);
        if (errno || end == class_text || *end || v < 0 || v >= classes)
            fatal_input("ldm sample: option --class: expected all or a class in [0, %d] (the model has %d classes), "
                        "got '%s'", classes - 1, classes, class_text);
        fixed_class = (int)v;
    }

    int64_t start = 0, rows = n;
    dataset_shard_range(n, rank, world, &start, &rows);
    const int64_t largest_shard = (n + world - 1) / world;
    /* Not capped by the shard: the network always runs on --batch rows, so that the
     * samples do not depend on the number of ranks (sampler.h). */
    const int batch = batch_option;
    const int guided = so.guidance != 1.0;

    /* The autoencoder of a latents model: --ae, or the one recorded in the data. */
    checkpoint_autoencoder ae;
    const char *ae_where = options[11].value;
    char *recorded = NULL;
    if (latents) {
        if (!ae_where) {
            recorded = checkpoint_autoencoder_recorded_path(data.autoencoder);
            int there = rank == 0 && recorded && access(recorded, F_OK) == 0;
            comm_broadcast(&there, sizeof there, 0);
            if (!there)
                fatal_input("%s: the model was trained on latents (made by: %s); name the autoencoder that decodes "
                            "them with --ae", checkpoint, data.autoencoder[0] ? data.autoencoder : "not recorded");
            ae_where = recorded;
        }
        checkpoint_autoencoder_load(&ae, "sample", ae_where, "ema", AE_FOR_DECODING, batch);
        checkpoint_autoencoder_check_latents(&ae, &shape, checkpoint);
    }
    dit_model model;
    dit_create(&model, &shape, guided ? 2 * batch : batch);
    if (rank == 0) {
        char *file = path_join(checkpoint, strcmp(weights, "ema") == 0 ? "ema.safetensors" : "model.safetensors");
        param_table_load_safetensors(&model.table, file);
        free(file);
    }
    comm_broadcast(model.params, sizeof(float) * model.table.trainable_numel, 0);
    char *model_description = checkpoint_model_description(checkpoint, step, weights);
    char *description = model_description;
    if (latents) {
        size_t length = strlen(model_description) + strlen(ae.description) + 32;
        description = xmalloc(length);
        snprintf(description, length, "%s, decoded by %s", model_description, ae.description);
        free(model_description);
    }

    sample_pipeline pipeline;
    if (consistency)
        sample_pipeline_create_consistency(&pipeline, &model, &co, config.diffusion.sigma_data, batch,
                                           latents ? &ae.model : NULL, data.latent_mean, data.latent_std);
    else
        sample_pipeline_create(&pipeline, &model, &so, config.diffusion.sigma_data, batch, latents ? &ae.model : NULL,
                               data.latent_mean, data.latent_std);
    const int64_t image_elements = pipeline.per_image;
    const int image_channels = pipeline.channels, image_size = pipeline.size;
    float *images = xmalloc(sizeof(float) * (size_t)batch * (size_t)image_elements);
    int *labels = xmalloc(sizeof(int) * (size_t)batch);
    int32_t *labels32 = xmalloc(sizeof(int32_t) * (size_t)(largest_shard > 0 ? largest_shard : 1));
    int64_t *indices = xmalloc(sizeof(int64_t) * (size_t)batch);
    uint8_t *pixels = xcalloc((size_t)(largest_shard > 0 ? largest_shard : 1) * (size_t)image_elements, 1);

    dataset_writer *writer = NULL;
    if (!png) {
        dataset_writer_options wo = {
            .path = out_path,
            .force = force,
            .kind = DATASET_IMAGES,
            .element = DATASET_UINT8,
            .count = n,
            .channels = image_channels,
            .height = image_size,
            .width = image_size,
            .has_labels = 1,
            .num_classes = classes,
        };
        writer = dataset_writer_create(&wo);
    }

    progress_bar bar;
    progress_bar_start(&bar, "sample", n, rank == 0 && rows > 0);
    const int64_t batches = (largest_shard + batch - 1) / batch;
    for (int64_t b = 0; b < batches; b++) {
        int64_t first = b * batch, count = dataset_rows_in_batch(rows, batch, b);
        for (int64_t r = 0; r < count; r++) {
            int64_t index = start + first + r;
            indices[r] = index;
            labels[r] = fixed_class >= 0 ? fixed_class : (int)(index % classes);
            labels32[first + r] = labels[r];
        }
        if (count > 0) {
            sample_pipeline_run(&pipeline, labels, indices, (int)count, images);
            for (int64_t i = 0; i < count * image_elements; i++)
                if (!isfinite(images[i]))
                    fatal_input("%s: the model gave a non-finite sample %lld (damaged or diverged weights?)",
                                checkpoint, (long long)(start + first + i / image_elements));
            dataset_pixels_from_floats(images, count, image_channels, image_size, pixels + first * image_elements);
        }
        if (writer) {
            dataset_writer_write_images(writer, start + first, count, pixels + first * image_elements);
            dataset_writer_write_labels(writer, start + first, count, labels32 + first);
        }
        progress_bar_update(&bar, (first + count) * n / (rows > 0 ? rows : 1));
    }
    progress_bar_finish(&bar);

    /* How the samples were made, for the closing line. */
    char made_by[256];
    if (consistency) {
        int used = snprintf(made_by, sizeof made_by, "consistency sampler %d step%s at sigma", co.steps,
                            co.steps == 1 ? "" : "s");
        for (int k = 0; k < co.steps && used > 0 && (size_t)used < sizeof made_by; k++)
            used += snprintf(made_by + used, sizeof made_by - (size_t)used, "%s %g", k ? "," : "", co.sigmas[k]);
        if (co.guidance > 0 && used > 0 && (size_t)used < sizeof made_by)
            snprintf(made_by + used, sizeof made_by - (size_t)used, ", guidance input %g", co.guidance);
    } else {
        snprintf(made_by, sizeof made_by, "%s %d steps (%d evaluations), cfg %g, churn %g",
                 so.method == SAMPLER_HEUN ? "heun" : "euler", so.steps, sampler_network_evaluations(&so),
                 so.guidance, so.churn);
    }
    if (writer) {
        dataset_writer_finish(writer);
        if (rank == 0)
            printf("sample: wrote %s: %lld image%s %d x %d x %d, %s, seed %llu, from %s\n", out_path, (long long)n,
                   n == 1 ? "" : "s", image_size, image_size, image_channels, made_by, (unsigned long long)so.seed,
                   description);
    } else {
        const size_t shard_bytes = (size_t)largest_shard * (size_t)image_elements;
        uint8_t *all = rank == 0 ? xmalloc(shard_bytes * (size_t)world) : NULL;
        comm_gather(pixels, shard_bytes, all, 0);
        if (rank == 0) {
            /* Rank r's rows start at r * largest_shard; make them contiguous. */
            uint8_t *ordered = xmalloc((size_t)n * (size_t)image_elements);
            for (int r = 0; r < world; r++) {
                int64_t s0, sn;
                dataset_shard_range(n, r, world, &s0, &sn);
                memcpy(ordered + s0 * image_elements, all + (size_t)r * shard_bytes, (size_t)(sn * image_elements));
            }
            png_write_image_grid(out_path, ordered, n, image_channels, image_size, fixed_class < 0 ? classes : 0);
            printf("sample: wrote %s: a grid of %lld image%s%s, %s, seed %llu, from %s\n", out_path, (long long)n,
                   n == 1 ? "" : "s", fixed_class < 0 ? ", one row per class" : "", made_by,
                   (unsigned long long)so.seed, description);
            free(ordered);
        }
        free(all);
        comm_barrier();
    }

    free(pixels);
    free(indices);
    free(labels32);
    free(labels);
    free(images);
    sample_pipeline_destroy(&pipeline);
    dit_destroy(&model);
    if (latents) checkpoint_autoencoder_free(&ae);
    free(recorded);
    free(description);
    free(checkpoint);
    return 0;
}

/* `ldm train`, `ldm train-ae` and `ldm distill`: the command line of
 * data-parallel training, the same with or without mpirun.
 *   ldm train    --config F --data D --run DIR [--ae AE] [--init W] [--set k=v ...] [--force | --resume auto|PATH]
 *   ldm train-ae --config F --data D --run DIR [--val-data V] [--set ...] [--force | --resume ...]
 *   ldm distill  --teacher T --config F --data D --run DIR [--set ...] [--force | --resume ...]
 *                (see distill_command.c)
 * All load and validate the config, check the batch split, resolve
 * device.type, and hand over to the one training loop with their model: the
 * DiT under EDM, the KL autoencoder or the consistency student (each on the
 * CPU or the rank's GPU). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "autoencoder_cuda_trainable.h"
#include "cli.h"
#include "comm.h"
#include "commands.h"
#include "device.h"
#include "distill_cuda_trainable.h"
#include "dit_cuda_trainable.h"
#include "fatal.h"
#include "run_directory.h"
#include "trainables.h"
#include "training_loop.h"

/* device.type resolved once on every rank (each checks its own host):
 * 1 for cuda, 0 for cpu; "auto" is cuda where this build and machine have a
 * GPU. cuda that cannot be had is refused before anything is written. */
static int training_on_cuda(const training_command *spec, const ldm_config *config) {
    const char *type = config->device.type;
    if (strcmp(type, "cpu") == 0) return 0;
    if (strcmp(type, "auto") == 0) return device_cuda_count() > 0;
    if (!device_cuda_compiled())
        fatal_input("ldm %s: device.type: cuda: this build has no CUDA (cmake -DLDM_CUDA=ON)", spec->command);
    if (device_cuda_count() == 0) {
        const char *error = device_cuda_error();
        fatal_input("ldm %s: device.type: cuda: %s", spec->command, error ? error : "no CUDA device on this machine");
    }
    return 1;
}

/* Rank 0's line saying where training runs. */
static void print_device(int on_cuda) {
    if (comm_rank() != 0) return;
    if (!on_cuda) {
        printf("train: device: cpu\n");
    } else {
#ifdef LDM_HAVE_CUDA
        int count = device_cuda_count(), gpu = comm_local_rank() % count;
        char name[256];
        device_cuda_name(gpu, name, sizeof name);
        printf("train: device: cuda (one GPU per rank; rank 0 on cuda:%d %s of %d on its host)\n", gpu, name, count);
#endif
    }
    fflush(stdout);
}

/* The command line shared by ldm train, train-ae and distill, parsed. */
typedef struct {
    const char *config_path; /* --config, or on resume the run's config.json; NULL: the defaults */
    const char *data, *run_dir, *resume, *validation_data, *autoencoder, *teacher, *init;
    cli_list overrides;      /* --set */
    int force, help;
    char *run_config;        /* the run's config.json when config_path is it (freed by the caller) */
} training_options;

/* Parses argv into o; 0 when help was printed. */
static int parse_training_options(const training_command *spec, int argc, char **argv, training_options *o) {
    *o = (training_options){0};
    cli_option table[] = {
        {.name = "--config", .text = &o->config_path, .help = "config file (defaults only when left out)"},
        {.name = "--data", .text = &o->data, .required = 1,
         .help = "the data set: an ldm HDF5 file (ldm prepare, ldm encode)"},
        {.name = "--run", .text = &o->run_dir, .required = 1,
         .help = "the run directory: config.json, metrics.jsonl, checkpoints"},
        {.name = "--set", .list = &o->overrides, .help = "override a config key: section.key=value (repeatable)"},
        {.name = "--force", .flag = &o->force, .help = "start over in a run directory that holds another run"},
        {.name = "--resume", .text = &o->resume,
         .help = "auto (the run's newest good checkpoint; from scratch if none) or a checkpoint directory; without "
                 "--config the run's config.json is used"},
        /* ldm train-ae's: the DiT validates by sampling. */
        {.name = "--val-data", .text = &o->validation_data,
         .help = "held-out images for validation (its first data.validation_samples)",
         .absent = spec->create_model != autoencoder_trainable_create},
        /* ldm train's and ldm distill's (create_model NULL: prepare chooses the model). */
        {.name = "--ae", .text = &o->autoencoder,
         .help = "on latents: the autoencoder (run, checkpoint or diffusers folder) that decodes the pictures of "
                 "train.sample_every (default: the one that made the latents)",
         .absent = spec->create_model == autoencoder_trainable_create},
        /* ldm train's. */
        {.name = "--init", .text = &o->init,
         .help = "start from these DiT weights (safetensors in the public DiT names, e.g. from "
                 "model/convert_dit_checkpoint.py) with fresh optimizer state; with --resume auto a checkpoint of "
                 "the run wins",
         .absent = spec->create_model != dit_trainable_create},
        {.name = "--help", .flag = &o->help, .help = "this help"},
        /* ldm distill's. */
        {.name = "--teacher", .text = &o->teacher, .required = 1,
         .help = "the teacher: a run directory of ldm train or one of its checkpoints (its EMA weights)",
         .absent = !spec->prepare},
        {0},
    };
    if (!cli_parse_unless_help(spec->command, spec->summary, argc, argv, 2, table)) return 0;
    if (o->resume && o->force) fatal_input("ldm %s: --resume and --force exclude each other", spec->command);
    if (o->init && o->resume && strcmp(o->resume, "auto") != 0)
        fatal_input("ldm %s: --init and --resume %s exclude each other (a checkpoint brings its own weights; "
                    "--resume auto takes --init only when the run has no checkpoint yet)", spec->command, o->resume);
    /* A resumed run keeps its config unless told otherwise: the run's own
     * config.json, with --set on top (steps, lr, intervals may change). */
    if (o->resume && !o->config_path) {
        o->run_config = run_directory_path(o->run_dir, "config.json");
        if (access(o->run_config, R_OK) == 0) o->config_path = o->run_config;
    }
    return 1;
}

/* Collective: whether the ranks train on their GPUs, agreed by all. */
static int training_device(const training_command *spec, const ldm_config *config) {
    const int on_cuda = training_on_cuda(spec, config);
    /* The ranks train on one kind of device ("auto" is resolved per host), or
     * their gradient all-reduces (MPI and NCCL) would not meet. */
    if (comm_any(on_cuda) && comm_any(!on_cuda))
        fatal_input("ldm %s: device.type %s: some ranks have a GPU and others none; set device.type to cpu or cuda",
                    spec->command, config->device.type);
    return on_cuda;
}

int training_command_run(const training_command *spec, int argc, char **argv) {
    training_options o;
    if (!parse_training_options(spec, argc, argv, &o)) return 0;
    ldm_config config;
    cli_load_config(&config, o.config_path, &o.overrides);
    int micro, accumulation;
    /* Checked before anything is written. */
    training_batch_split(&config, o.config_path, comm_world_size(), &micro, &accumulation);
    const int on_cuda = training_device(spec, &config);
    trainable *(*create_model)(const ldm_config *, int) = spec->create_model;
#ifdef LDM_HAVE_CUDA
    if (on_cuda)
        create_model = create_model == autoencoder_trainable_create ? autoencoder_cuda_trainable_create
                                                                    : dit_cuda_trainable_create;
#endif
    training_job job = {.config = &config, .config_path = o.config_path, .data_path = o.data,
                        .validation_path = o.validation_data, .autoencoder_path = o.autoencoder, .run_dir = o.run_dir,
                        .force = o.force, .resume = o.resume, .init_weights = o.init, .create_model = create_model};
    void *prepared = spec->prepare ? spec->prepare(&job, o.teacher) : NULL;
#ifdef LDM_HAVE_CUDA
    /* ldm distill: its prepare chose the CPU distiller. */
    if (on_cuda && job.create_model_with == distill_trainable_create)
        job.create_model_with = distill_cuda_trainable_create;
#endif
    print_device(on_cuda);
    training_run(&job);
    if (spec->release) spec->release(prepared);
    free(o.run_config);
    return 0;
}

int command_train(int argc, char **argv) {
    const training_command spec = {"train", "Trains the DiT denoiser (EDM) on a data set, data-parallel over the "
                                            "ranks of mpirun.", dit_trainable_create, NULL, NULL};
    return training_command_run(&spec, argc, argv);
}

int command_train_ae(int argc, char **argv) {
    const training_command spec = {"train-ae", "Trains the KL autoencoder (config section autoencoder) on an image "
                                               "data set, data-parallel over the ranks of mpirun; --val-data gives "
                                               "the held-out images of the PSNR and the pictures in RUN/samples/.",
                                   autoencoder_trainable_create, NULL, NULL};
    return training_command_run(&spec, argc, argv);
}

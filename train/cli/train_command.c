/* `ldm train`, `ldm train-ae` and `ldm distill`: the command line of
 * data-parallel training, the same with or without mpirun.
 *   ldm train    --config F --data D --run DIR [--ae AE] [--set k=v ...] [--force | --resume auto|PATH]
 *   ldm train-ae --config F --data D --run DIR [--val-data V] [--set ...] [--force | --resume ...]
 *   ldm distill  --teacher T --config F --data D --run DIR [--set ...] [--force | --resume ...]
 *                (see distill_command.c)
 * All load and validate the config, check the batch split, resolve
 * device.type, and hand over to the one training loop with their model: the
 * DiT under EDM or the KL autoencoder (each on the CPU or the rank's GPU), or
 * the consistency student (CPU-only so far). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "autoencoder_cuda_trainable.h"
#include "cli.h"
#include "comm.h"
#include "commands.h"
#include "device.h"
#include "dit_cuda_trainable.h"
#include "fatal.h"
#include "run_directory.h"
#include "training_loop.h"

/* device.type resolved once on every rank (each checks its own host):
 * 1 for cuda, 0 for cpu; "auto" is cuda where this build and machine have a
 * GPU. cuda that cannot be had is refused before anything is written. */
static int training_on_cuda(const training_command *spec, const ldm_config *config) {
    const char *type = config->device.type;
    if (strcmp(type, "cpu") == 0) return 0;
    if (spec->create_model != dit_trainable_create && spec->create_model != autoencoder_trainable_create) {
        /* ldm distill (its prepare makes the model) */
        if (strcmp(type, "cuda") == 0)
            fatal_input("ldm %s: device.type cuda: consistency distillation trains on the CPU only so far",
                        spec->command);
        return 0;
    }
    if (strcmp(type, "auto") == 0) return device_cuda_count() > 0;
    if (!device_cuda_compiled())
        fatal_input("ldm %s: device.type: cuda: this build has no CUDA (cmake -DLDM_CUDA=ON)", spec->command);
    if (device_cuda_count() == 0) fatal_input("ldm %s: device.type: cuda: no CUDA device on this machine", spec->command);
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

int training_command_run(const training_command *spec, int argc, char **argv) {
    const char *command = spec->command, *summary = spec->summary;
    trainable *(*create_model)(const ldm_config *, int) = spec->create_model;
    cli_option options[] = {
        {.name = "--config", .help = "config file (defaults only when left out)"},
        {.name = "--data", .required = 1, .help = "the data set: an ldm HDF5 file (ldm prepare, ldm encode)"},
        {.name = "--run", .required = 1, .help = "the run directory: config.json, metrics.jsonl, checkpoints"},
        {.name = "--set", .repeatable = 1, .help = "override a config key: section.key=value (repeatable)"},
        {.name = "--force", .is_flag = 1, .help = "start over in a run directory that holds another run"},
        {.name = "--resume", .help = "auto (the run's newest good checkpoint; from scratch if none) or a checkpoint "
                                     "directory; without --config the run's config.json is used"},
        {.name = "--val-data", .help = "held-out images for validation (its first data.validation_samples)"},
        {.name = "--ae", .help = "on latents: the autoencoder (run or checkpoint) that decodes the pictures of "
                                 "train.sample_every (default: the one that made the latents)"},
        {.name = "--help", .is_flag = 1, .help = "this help"},
        {.name = "--teacher", .required = 1, .help = "the teacher: a run directory of ldm train or one of its "
                                                     "checkpoints (its EMA weights)"},
        {0},
    };
    /* One table for the three commands: --teacher is ldm distill's, --val-data
     * ldm train-ae's (the DiT validates by sampling), --ae ldm train's and
     * ldm distill's (create_model NULL: prepare chooses the model). */
    options[9].absent = !spec->prepare;
    options[6].absent = create_model != autoencoder_trainable_create;
    options[7].absent = create_model == autoencoder_trainable_create;
    for (int i = 2; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            cli_print_usage(command, summary, options);
            return 0;
        }
    cli_parse(command, argc, argv, 2, options);
    const char *resume = options[5].value;
    if (resume && options[4].value) fatal_input("ldm %s: --resume and --force exclude each other", command);
    /* A resumed run keeps its config unless told otherwise: the run's own
     * config.json, with --set on top (steps, lr, intervals may change). */
    char *run_config = NULL;
    if (resume && !options[0].value) {
        run_config = run_directory_path(options[2].value, "config.json");
        if (access(run_config, R_OK) == 0) options[0].value = run_config;
    }
    ldm_config config;
    cli_load_config(&config, &options[0], &options[3]);
    int micro, accumulation;
    /* Checked before anything is written. */
    training_batch_split(&config, options[0].value, comm_world_size(), &micro, &accumulation);
    const int on_cuda = training_on_cuda(spec, &config);
    /* The ranks train on one kind of device ("auto" is resolved per host), or
     * their gradient all-reduces (MPI and NCCL) would not meet. */
    if (comm_any(on_cuda) && comm_any(!on_cuda))
        fatal_input("ldm %s: device.type %s: some ranks have a GPU and others none; set device.type to cpu or cuda",
                    spec->command, config.device.type);
#ifdef LDM_HAVE_CUDA
    if (on_cuda)
        create_model = create_model == autoencoder_trainable_create ? autoencoder_cuda_trainable_create
                                                                    : dit_cuda_trainable_create;
#endif
    training_job job = {.config = &config, .config_path = options[0].value, .data_path = options[1].value,
                        .validation_path = options[6].value, .autoencoder_path = options[7].value, .run_dir = options[2].value,
                        .force = options[4].value != NULL, .resume = resume, .create_model = create_model};
    void *prepared = spec->prepare ? spec->prepare(&job, options[9].value) : NULL;
    print_device(on_cuda);
    training_run(&job);
    if (spec->release) spec->release(prepared);
    free(run_config);
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

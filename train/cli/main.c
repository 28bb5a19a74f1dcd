/* The `ldm` program: dispatches to the subcommands. MPI is initialised for
 * every command (a single rank without mpirun), so that a fatal error on any
 * rank ends every rank. */
#include <stdio.h>
#include <string.h>

#include "comm.h"
#include "commands.h"
#include "device.h"
#include "fatal.h"

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command_entry;

static int command_help(int argc, char **argv);
static int command_version(int argc, char **argv);

static const command_entry commands[] = {
    {"prepare", command_prepare,
     "make a data set file: ldm prepare fashion-mnist|images DIR|synthetic --out F.h5 (ldm prepare --help)"},
    {"train", command_train, "train the DiT on a data set: [mpirun -np N] ldm train --config F --data D --run DIR"},
    {"train-ae", command_train_ae,
     "train the autoencoder on images: [mpirun -np N] ldm train-ae --config F --data D --run DIR [--val-data V]"},
    {"distill", command_distill,
     "consistency distillation of a DiT: [mpirun -np N] ldm distill --teacher RUN --config F --data D --run DIR"},
    {"encode", command_encode,
     "images to latents: [mpirun -np N] ldm encode --ae AE_RUN --data IMAGES.h5 --out LATENTS.h5"},
    {"decode", command_decode,
     "latents to images: [mpirun -np N] ldm decode --ae AE_RUN --data LATENTS.h5 --out IMAGES.h5|GRID.png"},
    {"sample", command_sample,
     "images from a trained DiT: [mpirun -np N] ldm sample --model RUN --n N --out F.h5|GRID.png [--class K|all]"},
    {"bench", command_bench, "time training steps (and with --data the loader): ldm bench --config F [--data D.h5]"},
    {"forward", command_forward,
     "run the DiT on an HDF5 file: ldm forward --config F --weights W --input IN.h5 --output OUT.h5"},
    {"inspect", command_inspect,
     "show a checkpoint's step, config, tensors and checksums: ldm inspect CKPT_OR_RUN"},
    {"version", command_version, "print the version and the devices this build can use"},
    {"help", command_help, "list the commands"},
};
static const int command_count = sizeof(commands) / sizeof(commands[0]);

static int command_help(int argc, char **argv) {
    (void)argc;
    (void)argv;
    printf("ldm %s: distributed training of latent diffusion models\n\nusage: ldm COMMAND [options]"
           " (ldm COMMAND --help for its options)\n\ncommands:\n", LDM_VERSION);
    for (int i = 0; i < command_count; i++) printf("  %-10s %s\n", commands[i].name, commands[i].summary);
    return 0;
}

static int command_version(int argc, char **argv) {
    (void)argc;
    (void)argv;
    char devices[512];
    device_describe(devices, sizeof(devices));
    printf("ldm %s\ndevices: %s\n", LDM_VERSION, devices);
    return 0;
}

int main(int argc, char **argv) {
    comm_init(&argc, &argv);
    int status;
    if (argc < 2) {
        command_help(argc, argv);
        comm_finalize();
        return LDM_EXIT_BAD_INPUT;
    }
    const command_entry *found = NULL;
    for (int i = 0; i < command_count; i++)
        if (strcmp(argv[1], commands[i].name) == 0) found = &commands[i];
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) found = &commands[command_count - 1];
    if (!found) fatal_input("unknown command '%s' (ldm help lists the commands)", argv[1]);
    status = found->run(argc, argv);
    comm_finalize();
    return status;
}

/* The ldm subcommands; each parses its own options and returns an exit status. */
#ifndef LDM_COMMANDS_H
#define LDM_COMMANDS_H

#include "training_loop.h"

int command_bench(int argc, char **argv);
int command_decode(int argc, char **argv);
int command_encode(int argc, char **argv);
int command_forward(int argc, char **argv);
int command_inspect(int argc, char **argv);
int command_prepare(int argc, char **argv);
int command_sample(int argc, char **argv);
int command_train(int argc, char **argv);
int command_train_ae(int argc, char **argv);
int command_distill(int argc, char **argv);

/* The command line shared by ldm train, train-ae and distill
 * (train/cli/train_command.c): the options, the config (the run's own on resume),
 * the batch split, then the training loop with the command's model. */
typedef struct {
    const char *command, *summary;
    trainable *(*create_model)(const ldm_config *config, int micro_batch);
    /* ldm distill: --teacher is required, and prepare (collective, once the
     * config is loaded) readies the job from it (create_model_with and its
     * context); release frees what it returned after training. NULL: neither. */
    void *(*prepare)(training_job *job, const char *teacher);
    void (*release)(void *prepared);
} training_command;
int training_command_run(const training_command *spec, int argc, char **argv);

#endif

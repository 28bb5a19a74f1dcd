/* The ldm subcommands; each parses its own options and returns an exit status. */
#ifndef LDM_COMMANDS_H
#define LDM_COMMANDS_H

int command_bench(int argc, char **argv);
int command_decode(int argc, char **argv);
int command_encode(int argc, char **argv);
int command_forward(int argc, char **argv);
int command_inspect(int argc, char **argv);
int command_prepare(int argc, char **argv);
int command_sample(int argc, char **argv);
int command_train(int argc, char **argv);
int command_train_ae(int argc, char **argv);

#endif

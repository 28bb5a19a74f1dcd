/* Command-line parsing shared by every ldm subcommand: "--name value" options,
 * repeatable ones (--set), and flags. Unknown options, missing values and missing
 * required options end the program with one line naming the option (exit 2). */
#ifndef LDM_CLI_H
#define LDM_CLI_H

#include "autoencoder.h"
#include <stdint.h>

#include "config.h"
#include "dit.h"

#define CLI_MAX_REPEATS 64

typedef struct {
    const char *name;      /* "--config" */
    const char *value;     /* filled in, or the default given */
    int is_flag;           /* takes no value; value becomes "1" when present */
    int required;
    int repeatable;        /* values collected into repeated[] */
    const char *repeated[CLI_MAX_REPEATS];
    int repeat_count;
    const char *help;
    int absent;            /* not an option of this command (shared tables): unknown, not listed */
} cli_option;

/* Parses argv[first..argc) of `command` into options (terminated by a NULL name). */
void cli_parse(const char *command, int argc, char **argv, int first, cli_option *options);
/* Prints "usage: ldm COMMAND" and the options' help. */
void cli_print_usage(const char *command, const char *summary, const cli_option *options);
/* Parses an option value as an integer in [min, max]; fatal_input otherwise. */
long long cli_int(const char *command, const cli_option *option, long long min, long long max);

/* Parses an option value as a non-negative 64-bit integer (a seed); fatal_input otherwise. */
uint64_t cli_uint64(const char *command, const cli_option *option);
/* True when argv[2..) holds --help or -h (checked before required options are). */
int cli_wants_help(int argc, char **argv);

/* Whether path ends in suffix (".png"), ignoring case. */
int cli_path_ends_with(const char *path, const char *suffix);
/* Collective: an output that rank 0 alone writes (a PNG) is refused when it
 * exists and force is 0, before any work (rank 0 looks, every rank agrees). */
void cli_refuse_existing_output(const char *path, int force);

/* Loads the config named by --config with the --set overrides; fatal_input on any error. */
void cli_load_config(ldm_config *config, const cli_option *config_option, const cli_option *set_option);

#endif

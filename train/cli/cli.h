/* Command-line parsing shared by every ldm subcommand: "--name value" options,
 * repeatable ones (--set), and flags. A command describes its options in a
 * table whose rows point at the fields of its own options struct; cli_parse
 * fills those fields, and the command converts and checks them (cli_int,
 * cli_double, cli_uint64). Unknown options, missing values and missing
 * required options end the program with one line naming the option (exit 2). */
#ifndef LDM_CLI_H
#define LDM_CLI_H

#include <stdint.h>

#include "config.h"

#define CLI_MAX_REPEATS 64

/* The values of a repeatable option (--set), in the order given. */
typedef struct {
    const char *values[CLI_MAX_REPEATS];
    int count;
} cli_list;

/* One row of a command's option table: the option and the field of the
 * command's options struct it fills. Exactly one of text, flag and list is set;
 * that pointer is the option's kind. A field keeps what it was initialised to
 * (the default, or NULL: left out) when the option is not given. */
typedef struct {
    const char *name;      /* "--config" */
    const char **text;     /* "--name value": the value */
    int *flag;             /* "--name": 1 when present */
    cli_list *list;        /* "--name value", repeatable: every value */
    int required;
    const char *help;
    int absent;            /* not an option of this command (shared tables): unknown, not listed */
} cli_option;

/* Parses argv[first..argc) of `command` into the fields of options (a table
 * terminated by a NULL name). */
void cli_parse(const char *command, int argc, char **argv, int first, cli_option *options);
/* Prints "usage: ldm COMMAND" and the options' help. */
void cli_print_usage(const char *command, const char *summary, const cli_option *options);
/* When argv[2..) asks for help (cli_wants_help): prints the usage and returns 0.
 * Otherwise parses argv[first..) (cli_parse) and returns 1. */
int cli_parse_unless_help(const char *command, const char *summary, int argc, char **argv, int first,
                          cli_option *options);
/* The value text of option `name` as an integer in [min, max]; fatal_input otherwise. */
long long cli_int(const char *command, const char *name, const char *text, long long min, long long max);
/* The value text of option `name` as a number in [min, max]; fatal_input otherwise. */
double cli_double(const char *command, const char *name, const char *text, double min, double max);
/* The value text of option `name` as a non-negative 64-bit integer (a seed); fatal_input otherwise. */
uint64_t cli_uint64(const char *command, const char *name, const char *text);
/* True when argv[2..) holds --help or -h (checked before required options are). */
int cli_wants_help(int argc, char **argv);

/* Whether path ends in suffix (".png"), ignoring case. */
int cli_path_ends_with(const char *path, const char *suffix);
/* Collective: an output that rank 0 alone writes (a PNG) is refused when it
 * exists and force is 0, before any work (rank 0 looks, every rank agrees). */
void cli_refuse_existing_output(const char *path, int force);

/* Loads the config file config_path (NULL: the defaults) with the --set
 * overrides; fatal_input on any error. */
void cli_load_config(ldm_config *config, const char *config_path, const cli_list *overrides);

#endif

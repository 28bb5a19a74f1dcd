/* Command-line parsing shared by the subcommands (see cli.h). */
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "comm.h"
#include "fatal.h"

/* Whether the option was given (or has a default, for a text option). */
static int cli_option_has_value(const cli_option *o) {
    if (o->text) return *o->text != NULL;
    if (o->flag) return *o->flag != 0;
    return o->list->count > 0;
}

void cli_parse(const char *command, int argc, char **argv, int first, cli_option *options) {
    for (int i = first; i < argc; i++) {
        const char *arg = argv[i];
        cli_option *found = NULL;
        for (cli_option *o = options; o->name; o++)
            if (!o->absent && strcmp(o->name, arg) == 0) found = o;
        if (!found) fatal_input("ldm %s: unknown option '%s' (see ldm %s --help)", command, arg, command);
        if (found->flag) {
            *found->flag = 1;
            continue;
        }
        if (i + 1 >= argc) fatal_input("ldm %s: option %s needs a value", command, arg);
        const char *value = argv[++i];
        if (found->list) {
            if (found->list->count == CLI_MAX_REPEATS)
                fatal_input("ldm %s: option %s given more than %d times", command, arg, CLI_MAX_REPEATS);
            found->list->values[found->list->count++] = value;
        } else {
            *found->text = value;
        }
    }
    for (cli_option *o = options; o->name; o++)
        if (o->required && !o->absent && !cli_option_has_value(o))
            fatal_input("ldm %s: option %s is required", command, o->name);
}

void cli_print_usage(const char *command, const char *summary, const cli_option *options) {
    printf("usage: ldm %s [options]\n%s\n\noptions:\n", command, summary);
    for (const cli_option *o = options; o->name; o++)
        if (!o->absent) printf("  %-14s %s%s\n", o->name, o->help, o->required ? " (required)" : "");
}

int cli_parse_unless_help(const char *command, const char *summary, int argc, char **argv, int first,
                          cli_option *options) {
    if (cli_wants_help(argc, argv)) {
        cli_print_usage(command, summary, options);
        return 0;
    }
    cli_parse(command, argc, argv, first, options);
    return 1;
}

long long cli_int(const char *command, const char *name, const char *text, long long min, long long max) {
    char *end = NULL;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno || end == text || *end || v < min || v > max)
        fatal_input("ldm %s: option %s: expected an integer in [%lld, %lld], got '%s'", command, name, min, max,
                    text);
    return v;
}

double cli_double(const char *command, const char *name, const char *text, double min, double max) {
    char *end = NULL;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || *end || !(v >= min && v <= max))
        fatal_input("ldm %s: option %s: expected a number in [%g, %g], got '%s'", command, name, min, max, text);
    return v;
}

void cli_load_config(ldm_config *config, const char *config_path, const cli_list *overrides) {
    char err[1024];
    if (config_load(config, config_path, overrides->values, overrides->count, err, sizeof(err)) != 0)
        fatal_input("%s", err);
}

uint64_t cli_uint64(const char *command, const char *name, const char *text) {
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || end == text || *end || text[0] == '-')
        fatal_input("ldm %s: option %s: expected a non-negative integer, got '%s'", command, name, text);
    return (uint64_t)v;
}

int cli_wants_help(int argc, char **argv) {
    for (int i = 2; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return 1;
    return 0;
}

int cli_path_ends_with(const char *path, const char *suffix) {
    size_t n = strlen(path), m = strlen(suffix);
    return n >= m && strcasecmp(path + n - m, suffix) == 0;
}

void cli_refuse_existing_output(const char *path, int force) {
    int exists = comm_rank() == 0 && !force && access(path, F_OK) == 0;
    comm_broadcast(&exists, sizeof exists, 0);
    if (exists) fatal_input("%s: the output exists (use --force to overwrite it)", path);
}

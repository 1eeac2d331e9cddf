/* cli_opts.h - the one option parser of the nesf commands: a table of
 * long options, each writing into the caller's variable, numbers checked
 * (a whole number or decimal, within the option's range) with an error
 * that names the option.  The common options are declared once here. */
#ifndef NESF_CLI_OPTS_H
#define NESF_CLI_OPTS_H

#include <limits.h>
#include <stdio.h>

typedef enum {
    CLI_STR,    /* const char * = the argument */
    CLI_FLAG,   /* int = 1, takes no argument */
    CLI_INT,    /* int within [lo, hi] */
    CLI_LONG,   /* long within [lo, hi] */
    CLI_DOUBLE, /* double within [lo, hi], finite */
    CLI_POSITIVE, /* double > 0, finite */
} cli_kind;

typedef struct cli_opt {
    const char *name; /* without the leading -- */
    cli_kind kind;
    void *dst;        /* borrowed: the caller's variable, holding its default */
    double lo, hi;    /* range of a number */
    char short_name;  /* 0, or the one-letter form (-m) */
} cli_opt;

/* Table entries by kind (name, the variable's address, range). */
#define CLI_S(n, p) {(n), CLI_STR, (p), 0, 0, 0}
#define CLI_F(n, p) {(n), CLI_FLAG, (p), 0, 0, 0}
#define CLI_I(n, p, lo, hi) {(n), CLI_INT, (p), (lo), (hi), 0}
#define CLI_L(n, p, lo, hi) {(n), CLI_LONG, (p), (lo), (hi), 0}
#define CLI_D(n, p, lo, hi) {(n), CLI_DOUBLE, (p), (lo), (hi), 0}
#define CLI_POS(n, p) {(n), CLI_POSITIVE, (p), 0, 0, 0}

/* The options every command spells the same way. */
#define CLI_OPT_MODEL(p) CLI_S("model", (p))
#define CLI_OPT_DATA(p) CLI_S("data", (p))
#define CLI_OPT_OUT(p) CLI_S("out", (p))
#define CLI_OPT_OPTIONS(p) CLI_S("options", (p))
#define CLI_OPT_BACKEND(p) CLI_S("backend", (p))
#define CLI_OPT_THREADS(p) CLI_I("threads", (p), 0, 4096)
#define CLI_OPT_LIMIT(p) CLI_I("limit", (p), 0, INT_MAX)
#define CLI_OPT_END {0, 0, 0, 0, 0, 0}

/* Parses argv[1..] by the table (ended by CLI_OPT_END) with getopt_long;
 * --help (-h) prints usage on stdout.  Returns -1 to go on (argv[*rest..] are
 * the operands, rest may be NULL when a command takes none: then operands
 * are a usage error), else the exit status: 0 after --help, 2 after a usage
 * error (usage, or the bad number's message, printed on stderr as
 * "nesf CMD: --NAME: ..."). */
int cli_parse(const char *cmd, int argc, char **argv, const cli_opt *opts, void (*usage)(FILE *),
              int *rest);

#endif

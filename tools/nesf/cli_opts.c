/* cli_opts.c - the table-driven option parser of cli_opts.h over getopt_long. */
#include "cli_opts.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdlib.h>

#define CLI_MAX_OPTS 48
#define CLI_VAL0 0x100 /* getopt_long's values of the table's options: clear of '?' and ':' */

/* The number in s (all of it) within [o->lo, o->hi] into o->dst; prints
 * why not and returns 2. */
static int set_number(const char *cmd, const cli_opt *o, const char *s)
{
    char *end;
    errno = 0;
    if (o->kind == CLI_DOUBLE || o->kind == CLI_POSITIVE) {
        const int pos = o->kind == CLI_POSITIVE;
        double v = strtod(s, &end);
        if (end != s && !*end && !errno && isfinite(v) && (pos ? v > 0 : v >= o->lo && v <= o->hi)) {
            *(double *)o->dst = v;
            return 0;
        }
        if (pos) fprintf(stderr, "nesf %s: --%s: '%s' is not a positive number\n", cmd, o->name, s);
        else fprintf(stderr, "nesf %s: --%s: '%s' is not a number in [%g, %g]\n", cmd, o->name, s, o->lo, o->hi);
        return 2;
    }
    long v = strtol(s, &end, 10);
    if (end != s && !*end && !errno && v >= o->lo && v <= o->hi) {
        if (o->kind == CLI_INT) *(int *)o->dst = (int)v;
        else *(long *)o->dst = v;
        return 0;
    }
    fprintf(stderr, "nesf %s: --%s: '%s' is not an integer in [%.0f, %.0f]\n", cmd, o->name, s, o->lo, o->hi);
    return 2;
}

int cli_parse(const char *cmd, int argc, char **argv, const cli_opt *opts, void (*usage)(FILE *),
              int *rest)
{
    struct option lo[CLI_MAX_OPTS + 2];
    char shorts[2 * CLI_MAX_OPTS + 2];
    int n = 0, ns = 0;
    for (; opts[n].name; n++) {
        if (n == CLI_MAX_OPTS) {
            fprintf(stderr, "nesf %s: more than %d options\n", cmd, CLI_MAX_OPTS);
            return 2;
        }
        lo[n] = (struct option){opts[n].name, opts[n].kind == CLI_FLAG ? no_argument : required_argument, 0,
                                CLI_VAL0 + n};
        if (opts[n].short_name) {
            shorts[ns++] = opts[n].short_name;
            if (opts[n].kind != CLI_FLAG) shorts[ns++] = ':';
        }
    }
    shorts[ns++] = 'h';
    shorts[ns] = 0;
    lo[n] = (struct option){"help", no_argument, 0, CLI_VAL0 + n};
    lo[n + 1] = (struct option){0, 0, 0, 0};
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, shorts, lo, NULL)) != -1) {
        for (int i = 0; i < n && ch < CLI_VAL0; i++)
            if (ch == opts[i].short_name) ch = CLI_VAL0 + i;
        if (ch == 'h') ch = CLI_VAL0 + n;
        if (ch == CLI_VAL0 + n) {
            usage(stdout);
            return 0;
        }
        if (ch < CLI_VAL0 || ch > CLI_VAL0 + n) {
            usage(stderr);
            return 2;
        }
        const cli_opt *o = &opts[ch - CLI_VAL0];
        if (o->kind == CLI_FLAG) *(int *)o->dst = 1;
        else if (o->kind == CLI_STR) *(const char **)o->dst = optarg;
        else if (set_number(cmd, o, optarg)) return 2;
    }
    if (rest) *rest = optind;
    else if (optind < argc) {
        usage(stderr);
        return 2;
    }
    return -1;
}

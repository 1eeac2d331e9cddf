/* nesf match - are two structures (or two lists of them, pair by pair) the
 * same crystal?  StructureMatcher-like comparison (match.h). */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_opts.h"
#include "commands.h"
#include "latent_cli.h"
#include "match.h"
#include "sio.h"

static void usage(FILE *f)
{
    fprintf(f,
        "usage: nesf match [options] A B\n"
        "Compares structure A with B like pymatgen's StructureMatcher (primitive cells,\n"
        "Niggli reduction, same volume, lattice and site tolerances, species-aware site\n"
        "pairing under periodic images; RMS normalised by (V/n)^(1/3)).  A and B are\n"
        "CIF, JSON or JSON Lines files; with several structures each, structure i of A\n"
        "is compared with structure i of B (or the one of A with each of B).\n\n"
        "  --ltol X        relative lattice-length tolerance (default 0.3)\n"
        "  --stol X        site tolerance in units of (V/n)^(1/3) (default 0.5)\n"
        "  --angle-tol X   angle tolerance, degrees (default 10)\n"
        "  --json          per pair {index, match, rms, max_dist, reason} and a summary\n"
        "Exit status 0 when every pair matches, 1 when one does not.\n");
}

static json_t *num(double v) { return isfinite(v) ? json_real(v) : json_null(); }

int nesf_cmd_match(int argc, char **argv)
{
    nesf_match_opts o;
    nesf_match_opts_default(&o);
    int json = 0, arg0;
    const cli_opt opts[] = {CLI_POS("ltol", &o.ltol), CLI_POS("stol", &o.stol),
                            CLI_POS("angle-tol", &o.angle_tol), CLI_F("json", &json),
                            CLI_OPT_END};
    int prc = cli_parse("match", argc, argv, opts, usage, &arg0);
    if (prc >= 0) return prc;
    if (arg0 != argc - 2) {
        usage(stderr);
        return 2;
    }
    nesf_structure **a = NULL, **b = NULL;
    int na = 0, nb = 0, status = 1;
    nesf_error err;
    if (nesf_sio_read_file(argv[arg0], NESF_FORMAT_AUTO, &a, &na, &err) ||
        nesf_sio_read_file(argv[arg0 + 1], NESF_FORMAT_AUTO, &b, &nb, &err)) {
        fprintf(stderr, "nesf match: %s\n", err.msg);
        goto done;
    }
    if (na != nb && na != 1) {
        fprintf(stderr, "nesf match: %s holds %d structures, %s %d (want the same number, or one in A)\n",
                argv[arg0], na, argv[arg0 + 1], nb);
        status = 2;
        goto done;
    }
    json_t *list = json_array();
    int matched = 0;
    double t0 = nesf_clock_s();
    for (int i = 0; i < nb; i++) {
        nesf_match_result r;
        if (nesf_structure_match(a[na == 1 ? 0 : i], b[i], &o, &r, &err)) {
            fprintf(stderr, "nesf match: pair %d: %s\n", i, err.msg);
            json_decref(list);
            goto done;
        }
        matched += r.match;
        if (json)
            json_array_append_new(list, json_pack("{s:i, s:b, s:o, s:o, s:s}", "index", i, "match", r.match,
                                                  "rms", num(r.rms), "max_dist", num(r.max_dist), "reason",
                                                  r.reason));
        else if (r.match)
            printf("%d: match, rms %.4f, max %.4f\n", i, r.rms, r.max_dist);
        else
            printf("%d: no match (%s)\n", i, r.reason);
    }
    double secs = nesf_clock_s() - t0;
    if (json) {
        json_t *o2 = json_pack("{s:o, s:i, s:i, s:f, s:f, s:{s:f, s:f, s:f}}", "pairs", list, "compared", nb,
                               "matched", matched, "match_rate_pct", nb ? 100.0 * matched / nb : 0.0,
                               "seconds", secs, "tolerances", "ltol", o.ltol, "stol", o.stol, "angle_tol",
                               o.angle_tol);
        char *t = json_dumps(o2, JSON_INDENT(1) | JSON_REAL_PRECISION(8));
        if (t) printf("%s\n", t);
        free(t);
        json_decref(o2);
    } else {
        json_decref(list);
        printf("%d of %d pairs match (%.1f %%) in %.3f s\n", matched, nb, nb ? 100.0 * matched / nb : 0.0, secs);
    }
    status = matched == nb ? 0 : 1;
done:
    nesf_structure_list_free(a, a ? na : 0);
    nesf_structure_list_free(b, b ? nb : 0);
    return status;
}

/* nesf convert - read structures (CIF, JSON, JSON Lines; auto-detected)
 * and print them as JSON, CIF or pymatgen's Structure.as_dict() JSON. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "strbuf.h"
#include "cif.h"
#include "fileio.h"
#include "cli_opts.h"
#include "commands.h"
#include "sio.h"
#include "sjson.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: nesf convert [--to json|cif|pymatgen] [--from cif|json|jsonl] [--symprec X]\n"
            "                    [--symmetrize] [-o OUT] FILE|-\n"
            "  --to json       (default) {\"lattice\", \"species\", \"frac_coords\", \"cart_coords\",\n"
            "                  \"formula\", \"spacegroup\"}; a JSON list when FILE holds several\n"
            "  --to cif        P1 CIF (one data block per structure)\n"
            "  --to pymatgen   pymatgen Structure.as_dict() (a list when several)\n"
            "  --symprec X     spglib tolerance in Å for \"spacegroup\" and --symmetrize\n"
            "                  (default 0.01; 0 leaves the space group out)\n"
            "  --symmetrize    with --to cif: the space-group operations and one site per orbit\n"
            "  -o, --out OUT   write OUT atomically instead of standard output\n");
}

/* Writes text to path (nesf_write_file) or, without one, to stdout. */
static int emit(const char *path, const char *text)
{
    nesf_error err;
    if (nesf_write_file(path ? path : "-", text, strlen(text), &err)) {
        fprintf(stderr, "nesf convert: %s\n", err.msg);
        return 1;
    }
    return 0;
}

/* The options; -1 to go on, else the exit status.  *style: an
 * nesf_sjson_style, or -2 for CIF. */
static int convert_args(int argc, char **argv, const char **input, nesf_format *from, int *style,
                        double *symprec, int *symmetrize, const char **out)
{
    const char *to = "json", *from_s = NULL;
    int arg0;
    const cli_opt opts[] = {CLI_S("to", &to), CLI_S("from", &from_s), CLI_D("symprec", symprec, 0, 1e6),
                            CLI_F("symmetrize", symmetrize), {"out", CLI_STR, out, 0, 0, 'o'}, CLI_OPT_END};
    int rc = cli_parse("convert", argc, argv, opts, usage, &arg0);
    if (rc >= 0) return rc;
    if (from_s) {
        *from = !strcmp(from_s, "cif") ? NESF_FORMAT_CIF : !strcmp(from_s, "json") ? NESF_FORMAT_JSON
              : !strcmp(from_s, "jsonl") ? NESF_FORMAT_JSONL : (nesf_format)-1;
        if ((int)*from < 0) {
            fprintf(stderr, "nesf convert: --from must be cif, json or jsonl\n");
            return 2;
        }
    }
    if (arg0 < argc - 1) {
        fprintf(stderr, "nesf convert: one input expected\n");
        return 2;
    }
    *style = !strcmp(to, "json") ? NESF_SJSON_FULL : !strcmp(to, "pymatgen") ? NESF_SJSON_PYMATGEN
           : !strcmp(to, "cif") ? -2 : -1;
    if (*style == -1) {
        fprintf(stderr, "nesf convert: --to must be json, cif or pymatgen\n");
        return 2;
    }
    if (arg0 == argc) {
        usage(stderr);
        return 2;
    }
    *input = argv[arg0];
    if (*symmetrize && (*style != -2 || !(*symprec > 0))) {
        fprintf(stderr, "nesf convert: --symmetrize needs --to cif and --symprec > 0\n");
        return 2;
    }
    return -1;
}

int nesf_cmd_convert(int argc, char **argv)
{
    const char *out = NULL, *input = NULL;
    nesf_format from = NESF_FORMAT_AUTO;
    double symprec = 0.01;
    int symmetrize = 0, style;
    int arc = convert_args(argc, argv, &input, &from, &style, &symprec, &symmetrize, &out);
    if (arc >= 0) return arc;
    nesf_structure **list;
    int n;
    nesf_error err = {0};
    if (nesf_sio_read_file(input, from, &list, &n, &err)) {
        fprintf(stderr, "nesf convert: %s\n", err.msg);
        return 1;
    }
    char *text = NULL;
    nesf_strbuf sb = {0};
    int rc = 0;
    if (style == -2) {
        for (int i = 0; i < n && !rc; i++) {
            char *c = NULL;
            if (symmetrize) {
                if (nesf_cif_write_symmetrized(list[i], symprec, &c, &err)) {
                    fprintf(stderr, "nesf convert: structure %d: %s\n", i + 1, err.msg);
                    rc = 1;
                    break;
                }
            } else {
                c = nesf_cif_write(list[i]);
            }
            if (!c) rc = -1;
            else nesf_strbuf_printf(&sb, "%s%s", i ? "\n" : "", c);
            free(c);
        }
        if (!rc && !(text = nesf_strbuf_take(&sb, NULL))) rc = -1;
    } else {
        json_t *arr = n > 1 ? json_array() : NULL;
        json_t *one = NULL;
        for (int i = 0; i < n && !rc; i++) {
            json_t *j = nesf_sjson_to_json(list[i], (nesf_sjson_style)style, symprec);
            if (!j) rc = -1;
            else if (arr) rc = json_array_append_new(arr, j) ? -1 : 0;
            else one = j;
        }
        if (!rc) {
            char *j = nesf_sjson_dumps(arr ? arr : one);
            if (j) nesf_strbuf_printf(&sb, "%s\n", j);
            free(j);
            if (!j || !(text = nesf_strbuf_take(&sb, NULL))) rc = -1;
        }
        json_decref(arr ? arr : one);
    }
    nesf_strbuf_free(&sb);
    nesf_structure_list_free(list, n);
    if (rc < 0) fprintf(stderr, "nesf convert: out of memory\n");
    if (!rc) rc = emit(out, text);
    free(text);
    return rc ? 1 : 0;
}

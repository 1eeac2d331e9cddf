/* nesf encode - latents of structures (CIF, JSON, JSON Lines) as JSON:
 * {"model": ..., "latent_size": L, "latents": [{"id", "formula", "z": [...]}, ...]}
 * which `nesf decode` and the daemon's /decode accept back. */
#include <stdio.h>
#include <stdlib.h>

#include <jansson.h>

#include "latent_cli.h"
#include "cli_opts.h"
#include "commands.h"
#include "model.h"
#include "refine.h"
#include "sio.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: nesf encode --model M.safetensors [--refine JSON] [--backend cpu|cuda|auto] FILE|-\n"
               "  FILE: CIF (every data block), a JSON structure or array, or JSON Lines.\n"
               "  --refine: latent refinement on each structure, as nesfd encodes: true (the\n"
               "  default), a step count, {\"steps\", \"lr\", ...}, or false (the encoder alone).\n"
               "  Prints {\"latent_size\", \"latents\": [{\"id\", \"formula\", \"z\"}, ...]} on stdout.\n");
}

int nesf_cmd_encode(int argc, char **argv)
{
    const char *model = NULL, *backend = "auto", *refine = NULL;
    const cli_opt opts[] = {{"model", CLI_STR, &model, 0, 0, 'm'}, CLI_S("refine", &refine),
                            CLI_OPT_BACKEND(&backend), CLI_OPT_END};
    int arg0;
    int prc = cli_parse("encode", argc, argv, opts, usage, &arg0);
    if (prc >= 0) return prc;
    if (!model || arg0 != argc - 1) {
        usage(stderr);
        return 2;
    }
    nesf_refine_opts ro;
    if (cli_refine_options("encode", refine, &ro)) return 2;
    nesf_error err = {0};
    nesf_backend *be = NULL;
    nesf_model *m = NULL;
    nesf_structure **s = NULL;
    float *z = NULL;
    int n = 0, rc = 1;
    if (nesf_sio_read_file(argv[arg0], NESF_FORMAT_AUTO, &s, &n, &err) ||
        cli_backend_open(backend, 0, &be, &err) || nesf_model_load(model, be, &m, &err))
        goto out;
    const int L = nesf_model_latent_size(m);
    z = malloc((size_t)(n ? n : 1) * L * sizeof *z);
    if (!z || nesf_model_encode(m, s, n, z, &err)) goto out;
    if (ro.steps > 0 && n > 0 && nesf_refine_latents(m, s, n, z, &ro, NULL, &err)) goto out;
    json_t *arr = json_array();
    for (int i = 0; i < n; i++) {
        char formula[256];
        nesf_structure_formula(s[i], formula, sizeof formula);
        json_t *v = json_array();
        for (int k = 0; k < L; k++) json_array_append_new(v, json_real(z[(size_t)i * L + k]));
        json_array_append_new(arr, json_pack("{s:s, s:s, s:i, s:o}", "id", s[i]->id, "formula", formula,
                                             "atoms", s[i]->n, "z", v));
    }
    json_t *o = json_pack("{s:s, s:i, s:o}", "model", model, "latent_size", L, "latents", arr);
    json_dumpf(o, stdout, JSON_INDENT(1) | JSON_REAL_PRECISION(9));
    fputc('\n', stdout);
    json_decref(o);
    rc = 0;
out:
    if (rc) fprintf(stderr, "nesf encode: %s\n", err.msg[0] ? err.msg : "out of memory");
    free(z);
    nesf_structure_list_free(s, n);
    nesf_model_free(m);
    nesf_backend_free(be);
    return rc;
}

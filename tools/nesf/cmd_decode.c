/* nesf decode - latent vectors to crystal structures (spec §5). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_opts.h"
#include "commands.h"
#include "decode.h"
#include "domain.h"
#include "fileio.h"
#include "latent_cli.h"
#include "sio.h"

static void usage(FILE *f)
{
    fprintf(f,
        "usage: nesf decode --model M.safetensors [options] LATENTS.json\n"
        "Decodes latent vectors (a JSON array of numbers, an array of them, or an\n"
        "object with \"latents\", as `nesf latents` and `nesf encode` write; - reads\n"
        "stdin) in one batched pass and prints the structures.\n\n"
        "  --format FMT       json (default: formula, space group), cif or jsonl\n"
        "  --out FILE         write there instead of stdout\n"
        "  --options JSON     decode options (or @FILE), e.g. '{\"grid_step\": 0.4}';\n"
        "                     '{\"symmetrize\": true}' refines each structure to its space\n"
        "                     group (\"symprec\" 0.1 Å, \"cell\": \"conventional\"|\"primitive\")\n"
        "  --backend KIND     cpu, cuda or auto;  --threads N\n"
        "stderr lists each structure's cycle distance |E(D(z)) - z| and its percentile on\n"
        "the model's training sample (-1 when the file has none: nesf domain).\n");
}

/* Each decoded structure's cycle distance and its training percentile. */
static void print_confidence(nesf_model *m, int n, const float *z, nesf_structure *const *s)
{
    nesf_error err;
    double *cyc = malloc((size_t)(n ? n : 1) * sizeof *cyc);
    if (cyc && nesf_cycle_distances(m, n, z, s, cyc, &err)) {
        fprintf(stderr, "nesf decode: confidence: %s\n", err.msg);
        free(cyc);
        return;
    }
    for (int i = 0; cyc && i < n; i++)
        if (s[i])
            fprintf(stderr, "nesf decode: latent %d: %d atoms, cycle distance %.3f (percentile %.0f of "
                    "training)\n", i, s[i]->n, cyc[i], nesf_domain_percentile(nesf_model_domain(m), cyc[i]));
    free(cyc);
}

int nesf_cmd_decode(int argc, char **argv)
{
    const char *model = NULL, *fmt = "json", *out = "-", *options = NULL, *backend = NULL;
    int threads = 0, arg0;
    const cli_opt opts[] = {CLI_OPT_MODEL(&model), CLI_S("format", &fmt), CLI_OPT_OUT(&out),
                            CLI_OPT_OPTIONS(&options), CLI_OPT_BACKEND(&backend), CLI_OPT_THREADS(&threads),
                            CLI_OPT_END};
    int prc = cli_parse("decode", argc, argv, opts, usage, &arg0);
    if (prc >= 0) return prc;
    if (!model || arg0 != argc - 1 ||
        (strcmp(fmt, "json") && strcmp(fmt, "cif") && strcmp(fmt, "jsonl"))) {
        usage(stderr);
        return 2;
    }
    nesf_error err;
    nesf_decode_opts o;
    nesf_decode_opts_default(&o);
    if (cli_decode_options("decode", "options", options, &o)) return 2;
    char *text;
    size_t len;
    if (nesf_sio_slurp(argv[arg0], &text, &len, &err)) {
        fprintf(stderr, "nesf decode: %s\n", err.msg);
        return 1;
    }
    nesf_backend *be;
    nesf_model *m;
    if (cli_open_model("decode", model, backend, threads, &be, &m)) {
        free(text);
        return 1;
    }
    int status = 1, n = 0;
    float *z = NULL;
    nesf_structure **s = NULL;
    nesf_error *ierr = NULL;
    if (cli_parse_latents(text, nesf_model_latent_size(m), &z, &n, &err)) {
        fprintf(stderr, "nesf decode: %s: %s\n", argv[arg0], err.msg);
        goto done;
    }
    s = calloc((size_t)n, sizeof *s);
    ierr = calloc((size_t)n, sizeof *ierr);
    if (!s || !ierr) {
        fprintf(stderr, "nesf decode: out of memory\n");
        goto done;
    }
    nesf_decode_stats st;
    nesf_decode_opts plain = o;
    plain.symmetrize = 0;
    if (nesf_decode(m, n, z, &plain, s, ierr, &st, &err)) {
        fprintf(stderr, "nesf decode: %s\n", err.msg);
        goto done;
    }
    /* confidence on the structures as decoded (the kind the training
     * sample was measured on), then the symmetrize option */
    print_confidence(m, n, z, s);
    if (o.symmetrize) nesf_decode_symmetrize(&o, s, n, &st);
    int failed = 0;
    for (int i = 0; i < n; i++)
        if (!s[i]) {
            fprintf(stderr, "nesf decode: latent %d: %s\n", i, ierr[i].msg);
            failed++;
        } else {
            snprintf(s[i]->id, sizeof s[i]->id, "decoded-%d", i);
        }
    char *res = cli_format_structures(s, n, fmt, NULL, ierr);
    if (!res || nesf_write_file(out, res, strlen(res), &err)) {
        fprintf(stderr, "nesf decode: %s\n", res ? err.msg : "out of memory");
        free(res);
        goto done;
    }
    free(res);
    fprintf(stderr, "nesf decode: %d latents -> %ld atoms in %.1f ms (%s)", n, st.atoms, st.ms,
            be->device);
    if (o.symmetrize)
        fprintf(stderr, "; %d symmetrized, %d left as decoded (spglib found no group)",
                st.symmetrized, st.symmetrize_failed);
    fputc('\n', stderr);
    status = failed ? 1 : 0;
done:
    nesf_structure_list_free(s, s ? n : 0);
    free(ierr);
    free(z);
    free(text);
    cli_close_model(be, m);
    return status;
}

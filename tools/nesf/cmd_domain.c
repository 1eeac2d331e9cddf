/* nesf domain - records a model's training domain and cycle-distance
 * calibration (domain.h) in its file, for files written before training
 * did so.  Only the metadata changes: every tensor is copied byte for byte
 * (nesf_st_rewrite_meta). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_opts.h"
#include "commands.h"
#include "dataset.h"
#include "decode.h"
#include "domain.h"
#include "latent_cli.h"
#include "refine.h"
#include "safetensors.h"

static void usage(FILE *f)
{
    fprintf(f,
        "usage: nesf domain --model M.safetensors --data DIR|TRAIN.jsonl [options]\n"
        "Measures the training domain of M on its training set (DIR/train.jsonl):\n"
        "largest atom count, elements, ranges of a, b, c and of the angles, and the\n"
        "distribution of the cycle distance |E(D(z)) - E(S)| over a sample of it\n"
        "(encoded as nesfd encodes, z refined on S unless --refine false), and\n"
        "writes M again with that record in its metadata (\"domain\"); the weights\n"
        "are copied unchanged.  nesfd and nesf eval then warn about inputs outside\n"
        "the domain and give each decoded structure a confidence percentile.\n\n"
        "  --out FILE         write there instead of replacing M (atomically either way)\n"
        "  --sample N         training structures for the cycle distance (default 300;\n"
        "                     0: domain only), evenly spaced through the file\n"
        "  --options JSON     decode options for the sample (default {\"mode\": \"fast\"})\n"
        "  --refine JSON      latent refinement of the sample (default true; core/refine.h)\n"
        "  --backend KIND     cpu, cuda or auto;  --threads N\n");
}

/* Cycle distances of `count` structures spread evenly over d, reconstructed
 * as nesfd reconstructs them (refined latents decoded, the distance taken
 * to the encoder's own latents: the figure nesfd and nesf eval report). */
static int sample_cycle(nesf_model *m, const nesf_dataset *d, int count, const nesf_decode_opts *o,
                        const nesf_refine_opts *ro, double *dist, nesf_error *err)
{
    const size_t L = (size_t)nesf_model_latent_size(m);
    nesf_structure **s = malloc((size_t)count * sizeof *s), **dec = calloc((size_t)count, sizeof *dec);
    nesf_error *ie = calloc((size_t)count, sizeof *ie);
    float *z = malloc(2 * (size_t)count * L * sizeof *z), *z0 = z ? z + (size_t)count * L : NULL;
    int rc = !s || !dec || !ie || !z ? nesf_fail(err, NESF_ERR_NOMEM, "out of memory") : NESF_OK;
    for (int i = 0; !rc && i < count; i++) s[i] = d->s[(long)i * d->n / count];
    if (!rc) rc = nesf_model_encode(m, s, count, z, err);
    if (!rc) memcpy(z0, z, (size_t)count * L * sizeof *z);
    if (!rc && ro->steps > 0) rc = nesf_refine_latents(m, s, count, z, ro, NULL, err);
    if (!rc) rc = nesf_decode(m, count, z, o, dec, ie, NULL, err);
    if (!rc) rc = nesf_cycle_distances(m, count, z0, dec, dist, err);
    if (dec) nesf_structure_list_free(dec, count);
    free(s);
    free(ie);
    free(z);
    return rc;
}

/* The record itself: d's domain and, for sample > 0, the cycle distances
 * of that many of its structures, written into model's file as out (NULL:
 * in place).  Prints what it did on report; returns the exit status. */
static int record(const char *model, const char *path, const nesf_dataset *d, const char *out, int sample,
                  const nesf_decode_opts *o, const nesf_refine_opts *ro, const char *backend, int threads,
                  FILE *report)
{
    nesf_backend *be = NULL;
    nesf_model *m = NULL;
    int status = 1;
    double *dist = NULL;
    char *text = NULL;
    nesf_error err;
    if (d->n == 0) {
        fprintf(stderr, "nesf domain: %s holds no structures\n", path);
        return 1;
    }
    if (cli_open_model("domain", model, backend, threads, &be, &m)) return 1;
    nesf_domain dom;
    nesf_domain_from_structures(d->s, d->n, &dom);
    if (sample > d->n) sample = d->n;
    if (sample > 0) {
        double t0 = nesf_clock_s();
        if (!(dist = malloc((size_t)sample * sizeof *dist))) {
            fprintf(stderr, "nesf domain: out of memory\n");
            goto done;
        }
        if (sample_cycle(m, d, sample, o, ro, dist, &err)) {
            fprintf(stderr, "nesf domain: %s\n", err.msg);
            goto done;
        }
        char label[16];
        snprintf(label, sizeof label, "%s%s", o->mode == NESF_DECODE_FAST ? "fast" : "paper",
                 ro->steps > 0 ? "+refine" : "");
        nesf_domain_set_cycle(&dom, dist, sample, label);
        fprintf(stderr, "nesf domain: cycle distance of %d training structures in %.1f s: median "
                "%.3f, 80th percentile %.3f, 95th %.3f\n", sample, nesf_clock_s() - t0, dom.cycle_q[50],
                dom.cycle_q[80], dom.cycle_q[95]);
    }
    if (!(text = nesf_domain_to_json(&dom)) ||
        nesf_st_rewrite_meta(model, out ? out : model, "domain", text, &err)) {
        fprintf(stderr, "nesf domain: %s\n", text ? err.msg : "out of memory");
        goto done;
    }
    fprintf(report, "%s: domain of %d structures of %s recorded\n%s\n", out ? out : model, d->n, path, text);
    status = 0;
done:
    free(text);
    free(dist);
    cli_close_model(be, m);
    return status;
}

int nesf_domain_record(const char *model, const char *data, const char *out, int sample, const char *options,
                       const char *refine, const char *backend, int threads, FILE *report)
{
    nesf_decode_opts o;
    nesf_decode_opts_default(&o);
    o.mode = NESF_DECODE_FAST;
    if (cli_decode_options("domain", "options", options, &o)) return 2;
    nesf_refine_opts ro;
    if (cli_refine_options("domain", refine, &ro)) return 2;
    char path[4096];
    size_t dl = strlen(data);
    snprintf(path, sizeof path, dl > 6 && !strcmp(data + dl - 6, ".jsonl") ? "%s" : "%s/train.jsonl", data);
    nesf_error err;
    nesf_dataset d = {0};
    if (nesf_dataset_load(path, &d, &err)) {
        fprintf(stderr, "nesf domain: %s\n", err.msg);
        return 1;
    }
    int status = record(model, path, &d, out, sample, &o, &ro, backend, threads, report);
    nesf_dataset_free(&d);
    return status;
}

int nesf_cmd_domain(int argc, char **argv)
{
    const char *model = NULL, *data = NULL, *out = NULL, *options = NULL, *backend = NULL, *refine = NULL;
    int threads = 0, sample = 300;
    const cli_opt opts[] = {CLI_OPT_MODEL(&model), CLI_OPT_DATA(&data), CLI_OPT_OUT(&out),
                            CLI_I("sample", &sample, 0, INT_MAX), CLI_OPT_OPTIONS(&options),
                            CLI_S("refine", &refine),
                            CLI_OPT_BACKEND(&backend), CLI_OPT_THREADS(&threads), CLI_OPT_END};
    int prc = cli_parse("domain", argc, argv, opts, usage, NULL);
    if (prc >= 0) return prc;
    if (!model || !data) {
        usage(stderr);
        return 2;
    }
    return nesf_domain_record(model, data, out, sample, options, refine, backend, threads, stdout);
}

/* nesf bench decode - time reconstruction at the paper's settings: N
 * latents decoded in one batched call, next to the baseline of one call
 * per latent, and the exact field (the algorithm without the network), all
 * in the same run; the batched and one-by-one results are compared. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_opts.h"
#include "commands.h"
#include "dataset.h"
#include "latent_cli.h"

/* Largest distance from an atom of a[i] to the nearest atom of b[i] (atoms
 * may come out in another order when scores tie to rounding). */
static double max_shift(nesf_structure *const *a, nesf_structure *const *b, int n, int *count_diff)
{
    double worst = 0;
    *count_diff = 0;
    for (int i = 0; i < n; i++) {
        if (!a[i] || !b[i] || a[i]->n != b[i]->n) {
            (*count_diff)++;
            continue;
        }
        for (int j = 0; j < a[i]->n; j++) {
            double best = INFINITY;
            for (int k = 0; k < b[i]->n; k++) {
                double d = 0;
                for (int c = 0; c < 3; c++) d += pow(a[i]->cart[3 * j + c] - b[i]->cart[3 * k + c], 2);
                best = fmin(best, sqrt(d));
            }
            worst = fmax(worst, best);
        }
    }
    return worst;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: nesf bench decode --model M --data FILE.jsonl [--n N (16)]\n"
               "                         [--options JSON] [--backend KIND] [--threads N]\n");
}

/* The timings, side by side. */
static void report(const char *data, int n, long G, const nesf_decode_opts *o, const nesf_backend *be,
                   const nesf_decode_stats *st, double tb, double ts, double tt, int cdiff, double shift)
{
    printf("nesf bench decode: %d latents of %s, %ld particles x %d iterations each\n", n, data, G, o->iterations);
    printf("backend: %s\n", be->device);
    printf("  %-34s %9.3f s  %9.1f ms/structure\n", "batched (one nesf_decode call)", tb, 1e3 * tb / n);
    printf("  %-34s %9.3f s  %9.1f ms/structure  (baseline)\n", "one nesf_decode call per latent", ts,
           1e3 * ts / n);
    printf("  %-34s %9.2fx\n", "speedup of batching", ts / tb);
    printf("  %-34s %9.3f s  %9.1f ms/structure\n", "exact field (algorithm only)", tt, 1e3 * tt / n);
    printf("  batched: flow %.3f s, NMS %.3f s, species %.3f s; %.3g field evaluations/s\n", st->ms_flow / 1e3,
           st->ms_nms / 1e3, st->ms_species / 1e3, st->field_evals / (st->ms / 1e3));
    printf("  batched vs one-by-one: %d structures differ in atom count, largest position "
           "difference %.2e Å\n", cdiff, shift);
}

int nesf_bench_decode(int argc, char **argv)
{
    const char *model = NULL, *data = NULL, *options = NULL, *backend = NULL;
    int n = 16, threads = 0;
    const cli_opt opts[] = {CLI_OPT_MODEL(&model), CLI_OPT_DATA(&data), CLI_I("n", &n, 1, INT_MAX),
                            CLI_OPT_OPTIONS(&options), CLI_OPT_BACKEND(&backend), CLI_OPT_THREADS(&threads),
                            CLI_OPT_END};
    int prc = cli_parse("bench decode", argc, argv, opts, usage, NULL);
    if (prc >= 0) return prc;
    if (!model || !data) {
        fprintf(stderr, "nesf bench decode: --model and --data are required\n");
        return 2;
    }
    nesf_error err;
    nesf_decode_opts o;
    nesf_decode_opts_default(&o);
    if (cli_decode_options("bench decode", "options", options, &o)) return 2;
    nesf_dataset d = {0};
    if (nesf_dataset_load(data, &d, &err)) {
        fprintf(stderr, "nesf bench decode: %s\n", err.msg);
        return 1;
    }
    if (n > d.n) n = d.n;
    nesf_backend *be;
    nesf_model *m;
    if (cli_open_model("bench decode", model, backend, threads, &be, &m)) {
        nesf_dataset_free(&d);
        return 1;
    }
    const int L = nesf_model_latent_size(m);
    int status = 1;
    float *z = malloc((size_t)n * L * sizeof *z);
    nesf_structure **batched = calloc((size_t)n, sizeof *batched);
    nesf_structure **single = calloc((size_t)n, sizeof *single);
    nesf_structure **truth = calloc((size_t)n, sizeof *truth);
    nesf_error *ierr = calloc((size_t)n, sizeof *ierr);
    if (!z || !batched || !single || !truth || !ierr) {
        fprintf(stderr, "nesf bench decode: out of memory\n");
        goto done;
    }
    if (nesf_model_encode(m, d.s, n, z, &err)) {
        fprintf(stderr, "nesf bench decode: %s\n", err.msg);
        goto done;
    }
    nesf_decode_stats st;
    double t0 = nesf_clock_s();
    if (nesf_decode(m, n, z, &o, batched, ierr, &st, &err)) {
        fprintf(stderr, "nesf bench decode: %s\n", err.msg);
        goto done;
    }
    const double tb = nesf_clock_s() - t0;
    const long G = st.particles / n;
    t0 = nesf_clock_s();
    for (int i = 0; i < n; i++)
        if (nesf_decode(m, 1, z + (size_t)i * L, &o, single + i, ierr + i, NULL, &err)) {
            fprintf(stderr, "nesf bench decode: %s\n", err.msg);
            goto done;
        }
    const double ts = nesf_clock_s() - t0;
    int species_z[NESF_MAX_SPECIES], ns = nesf_model_num_species(m);
    for (int k = 0; k < ns; k++) species_z[k] = nesf_model_species_z(m, k);
    float lo[3], hi[3];
    nesf_model_bbox(m, lo, hi);
    nesf_field f;
    nesf_decode_stats tst;
    t0 = nesf_clock_s();
    if (nesf_field_truth(be, d.s, n, species_z, ns, lo, hi, &f, &err) ||
        nesf_decode_field(&f, &o, truth, ierr, &tst, &err)) {
        fprintf(stderr, "nesf bench decode: exact field: %s\n", err.msg);
        nesf_field_release(&f);
        goto done;
    }
    nesf_field_release(&f);
    const double tt = nesf_clock_s() - t0;
    int cdiff;
    double shift = max_shift(batched, single, n, &cdiff);

    report(data, n, G, &o, be, &st, tb, ts, tt, cdiff, shift);
    status = 0;
done:
    nesf_structure_list_free(batched, batched ? n : 0);
    nesf_structure_list_free(single, single ? n : 0);
    nesf_structure_list_free(truth, truth ? n : 0);
    free(ierr);
    free(z);
    cli_close_model(be, m);
    nesf_dataset_free(&d);
    return status;
}

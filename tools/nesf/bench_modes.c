/* nesf bench decode-modes - the paper's decoding algorithm next to the
 * fast one (decode.h, "mode") on the same latents in the same run: field
 * evaluations and wall time per structure, the full Table 1 row of each
 * (spec §6), and whether the fast mode meets issue #8's bar (>= 10x fewer
 * field evaluations, >= 5x less wall time, atom-count and species errors
 * at most 0.5 points and position errors at most 0.005 Å worse).
 *
 * The two modes take turns on chunks of structures, so that a machine
 * whose load changes during the run slows both alike.  --field truth
 * decodes the exact fields of the structures instead of the network's
 * (the algorithms alone). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_opts.h"
#include "commands.h"
#include "dataset.h"
#include "latent_cli.h"
#include "metrics.h"

typedef struct mode_run {
    const char *name;
    nesf_decode_opts o;
    nesf_metrics met;
    double wall;       /* s */
    nesf_decode_stats st; /* summed over the chunks */
    long failed;
} mode_run;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: nesf bench decode-modes [--model M] [--data FILE.jsonl] [--limit N]\n"
            "         [--chunk N] [--field model|truth] [--paper OPTS] [--fast OPTS]\n"
            "         [--backend cpu|cuda|auto] [--threads N]\n"
            "  Decodes the latents of FILE (default ../shared/datasets/lcs6/val.jsonl) with\n"
            "  the paper's algorithm and with the fast mode, N structures at a time in turn\n"
            "  (--chunk, 8), and prints field evaluations, wall time and the Table 1 row\n"
            "  of each.  --paper/--fast: decode options (JSON or @FILE) over each side's\n"
            "  defaults (mode \"paper\" / \"fast\").\n");
}

/* Decodes structures [i0, i0 + k) in mode r and adds them to its figures. */
static int run_chunk(mode_run *r, nesf_model *m, nesf_backend *be, const char *field,
                     nesf_structure *const *truth, const float *z, int k, nesf_error *err)
{
    nesf_structure **out = calloc((size_t)k, sizeof *out);
    nesf_error *ie = calloc((size_t)k, sizeof *ie);
    if (!out || !ie) {
        free(out);
        free(ie);
        return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    }
    nesf_decode_stats st;
    int rc;
    double t0 = nesf_clock_s();
    if (!strcmp(field, "truth")) {
        int zs[NESF_MAX_SPECIES], A = nesf_model_num_species(m);
        float lo[3], hi[3];
        for (int c = 0; c < A; c++) zs[c] = nesf_model_species_z(m, c);
        nesf_model_bbox(m, lo, hi);
        nesf_field f;
        rc = nesf_field_truth(be, truth, k, zs, A, lo, hi, &f, err);
        if (!rc) rc = nesf_decode_field(&f, &r->o, out, ie, &st, err);
        nesf_field_release(&f);
    } else {
        rc = nesf_decode(m, k, z, &r->o, out, ie, &st, err);
    }
    r->wall += nesf_clock_s() - t0;
    if (!rc) {
        nesf_decode_stats_add(&r->st, &st);
        for (int i = 0; i < k; i++) {
            r->failed += out[i] == NULL;
            nesf_metrics_add(&r->met, truth[i], out[i]);
        }
    }
    nesf_structure_list_free(out, k);
    free(ie);
    return rc;
}

/* The two modes' table and the verdict against the bar. */
static void modes_report(const mode_run *run, int n, const char *data, const char *field, const char *model,
                         const nesf_backend *be, int chunk)
{
    char *oj[2] = {nesf_decode_opts_to_json(&run[0].o), nesf_decode_opts_to_json(&run[1].o)};
    printf("nesf bench decode-modes: %d structures of %s, %s field, %s\n", n, data, field, model);
    printf("backend: %s; modes alternate in chunks of %d\n", be->device, chunk);
    for (int r = 0; r < 2; r++) printf("%-5s options: %s\n", run[r].name, oj[r] ? oj[r] : "?");
    free(oj[0]);
    free(oj[1]);
    printf("\n%-6s %12s %10s %9s %10s %7s %8s %8s %8s %8s %7s %7s %6s\n", "mode", "evals/struct",
           "ms/struct", "particles", "steps", "atoms%", "posact", "posdet", "specact%",
           "specdet%", "len", "ang", "failed");
    nesf_metrics_summary sum[2];
    for (int r = 0; r < 2; r++) {
        nesf_metrics_summarize(&run[r].met, &sum[r]);
        printf("%-6s %12.0f %10.1f %9.0f %10.1f %7.2f %8.4f %8.4f %8.2f %8.2f %7.4f %7.3f %6ld\n",
               run[r].name, (double)run[r].st.field_evals / n, 1e3 * run[r].wall / n,
               (double)run[r].st.particles / n, (double)run[r].st.steps / n, sum[r].count_err_pct,
               sum[r].pos_act, sum[r].pos_det, sum[r].spec_act_pct, sum[r].spec_det_pct,
               sum[r].len_mae, sum[r].ang_mae, run[r].failed);
    }
    const long fe = run[1].st.field_evals;
    const double er = (double)run[0].st.field_evals / (double)(fe ? fe : 1);
    const double wr = run[0].wall / (run[1].wall > 0 ? run[1].wall : 1e-9);
    const double d_cnt = sum[1].count_err_pct - sum[0].count_err_pct;
    const double d_sa = sum[1].spec_act_pct - sum[0].spec_act_pct;
    const double d_sd = sum[1].spec_det_pct - sum[0].spec_det_pct;
    const double d_pa = sum[1].pos_act - sum[0].pos_act, d_pd = sum[1].pos_det - sum[0].pos_det;
    printf("\nfast vs paper: %.1fx fewer field evaluations, %.1fx less wall time; atom-count "
           "error %+.2f points, species %+.2f / %+.2f points, position %+.4f / %+.4f Å\n",
           er, wr, d_cnt, d_sa, d_sd, d_pa, d_pd);
    const int bar = er >= 10 && wr >= 5 && d_cnt <= 0.5 && d_sa <= 0.5 && d_sd <= 0.5 &&
                    d_pa <= 0.005 && d_pd <= 0.005;
    printf("bar (>= 10x evaluations, >= 5x wall, <= +0.5 points, <= +0.005 Å): %s\n",
           bar ? "met" : "NOT met");
}

int nesf_bench_decode_modes(int argc, char **argv)
{
    const char *model = "models/lcs6.safetensors", *data = NULL, *field = "model";
    const char *paper_json = NULL, *fast_json = NULL, *backend = "auto";
    int limit = 0, chunk = 8, threads = 0;
    const cli_opt opts[] = {CLI_OPT_MODEL(&model), CLI_OPT_DATA(&data), CLI_OPT_LIMIT(&limit),
                            CLI_I("chunk", &chunk, 1, INT_MAX), CLI_S("field", &field), CLI_S("paper", &paper_json),
                            CLI_S("fast", &fast_json), CLI_OPT_BACKEND(&backend), CLI_OPT_THREADS(&threads),
                            CLI_OPT_END};
    int prc = cli_parse("bench decode-modes", argc, argv, opts, usage, NULL);
    if (prc >= 0) return prc;
    if (strcmp(field, "model") && strcmp(field, "truth")) {
        usage(stderr);
        return 2;
    }
    char def[1024];
    if (!data) {
        const char *sh = getenv("NESF_SHARED");
        snprintf(def, sizeof def, "%s/datasets/lcs6/val.jsonl", sh ? sh : "../shared");
        data = def;
    }
    mode_run run[2] = {{.name = "paper"}, {.name = "fast"}};
    nesf_error err = {0};
    for (int r = 0; r < 2; r++) {
        nesf_decode_opts_default(&run[r].o);
        run[r].o.mode = r ? NESF_DECODE_FAST : NESF_DECODE_PAPER;
        const char *js = r ? fast_json : paper_json;
        if (cli_decode_options("bench decode-modes", run[r].name, js, &run[r].o)) return 2;
        nesf_metrics_init(&run[r].met);
    }
    nesf_dataset d = {0};
    nesf_backend *be = NULL;
    nesf_model *m = NULL;
    float *z = NULL;
    int status = 1;
    if (nesf_dataset_load(data, &d, &err)) goto done;
    if (cli_open_model("bench decode-modes", model, backend, threads, &be, &m)) {
        nesf_dataset_free(&d);
        return 1;
    }
    const int n = limit && limit < d.n ? limit : d.n, L = nesf_model_latent_size(m);
    z = malloc((size_t)(n ? n : 1) * L * sizeof *z);
    if (!z) {
        nesf_fail(&err, NESF_ERR_NOMEM, "out of memory");
        goto done;
    }
    if (nesf_model_encode(m, d.s, n, z, &err)) goto done;
    cli_progress prog;
    cli_progress_start(&prog, "decoding", n);
    for (int i0 = 0; i0 < n; i0 += chunk) {
        const int k = n - i0 < chunk ? n - i0 : chunk;
        /* alternate which mode goes first, so neither always runs on a warm cache */
        for (int j = 0; j < 2; j++) {
            mode_run *r = &run[(j + i0 / chunk) % 2];
            if (run_chunk(r, m, be, field, d.s + i0, z + (size_t)i0 * L, k, &err)) {
                nesf_error_prefix(&err, "%s mode: ", r->name);
                goto done;
            }
        }
        cli_progress_update(&prog, i0 + k);
    }
    cli_progress_end(&prog);

    modes_report(run, n, data, field, model, be, chunk);
    status = 0;
done:
    if (status) fprintf(stderr, "nesf bench decode-modes: %s\n", err.msg[0] ? err.msg : "failed");
    free(z);
    cli_close_model(be, m);
    nesf_dataset_free(&d);
    return status;
}

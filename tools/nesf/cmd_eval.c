/* nesf eval - reconstruct every structure of a dataset (encode, decode)
 * and print the paper's Table 1 figures (spec §6), per atom count too.
 * With --truth the network is replaced by the exact field of each
 * structure, which checks the reconstruction algorithm on its own. */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "dataset.h"
#include "decode.h"
#include "fileio.h"
#include "domain.h"
#include "latent_cli.h"
#include "match.h"
#include "metrics.h"

static void usage(FILE *f)
{
    fprintf(f,
        "usage: nesf eval --model M.safetensors --data FILE.jsonl [options]\n"
        "       nesf eval --truth --meta META.json --data FILE.jsonl [options]\n"
        "Reconstructs every structure (encode, then decode at the paper's settings)\n"
        "and prints atom-count, position, species and lattice errors (paper Table 1),\n"
        "overall and per true atom count, with timings.\n\n"
        "  --model FILE       trained (or initialised) weights\n"
        "  --truth            decode the exact field of each structure instead of the\n"
        "                     network's: a check of the algorithm alone\n"
        "  --meta FILE        species list (meta.json) for --truth without --model\n"
        "  --bbox-from FILE   particle-grid bounding box from these structures'\n"
        "                     atoms (the training set) for --truth; default: the\n"
        "                     model's, else the data's own\n"
        "  --data FILE        structures to reconstruct (JSON Lines)\n"
        "  --out FILE         write the reconstructions (JSON Lines, the data's ids)\n"
        "  --json             print the results as JSON\n"
        "  --strict-lattice   fail structures whose predicted cell is none instead of\n"
        "                     decoding them in a repaired cell (lattice errors are\n"
        "                     always measured on the lattice heads' raw output)\n"
        "  --list             list every structure reconstructed wrongly (default\n"
        "                     with --truth)\n"
        "  --options JSON     decode options, e.g. '{\"iterations\": 32}' (or @FILE)\n"
        "  --batch N          structures per batched decode (default 64)\n"
        "  --limit N          only the first N structures\n"
        "  --backend KIND     cpu, cuda or auto (default auto)\n"
        "  --threads N        CPU threads (default: all cores)\n");
}

typedef struct eval_args {
    const char *model, *data, *out, *meta, *bbox_from, *options, *backend;
    int truth, json, list, batch, limit, threads, strict;
} eval_args;

/* One structure's outcome, for --list. */
typedef struct item {
    nesf_metrics m;
    char why[160]; /* decode/encode failure */
    int n_warn;    /* domain warnings of the input (domain.h) */
    nesf_domain_warning warn[NESF_DOMAIN_MAX_WARNINGS];
    int lacks;     /* an element the model does not know: never encoded */
    double cycle;  /* cycle distance |E(D(z)) - z| (NAN: not measured) */
    int matched;   /* the same crystal as the truth (match.h) */
    double rms;    /* its normalised RMS displacement */
} item;

/* How well the cycle distance separates reconstructions with the wrong atom
 * count from the right ones: the median of each, and at thresholds set by
 * percentiles of the training sample the model file records, how many of
 * each it flags (the right ones flagged are false alarms). */
static const int flag_pct[] = {50, 80, 90, 95, 99};
#define N_FLAG ((int)(sizeof flag_pct / sizeof flag_pct[0]))

typedef struct conf_report {
    int n[2];                 /* [0] right count, [1] wrong count */
    double median[2];
    int flagged[N_FLAG][2];
    double thr[N_FLAG];
    int calibrated;
} conf_report;

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void conf_tally(conf_report *r, const item *items, int n, const nesf_domain *dom)
{
    memset(r, 0, sizeof *r);
    double *v[2] = {malloc((size_t)(n ? n : 1) * sizeof(double)), malloc((size_t)(n ? n : 1) * sizeof(double))};
    r->calibrated = dom && dom->cycle_n > 0;
    for (int f = 0; f < N_FLAG; f++) r->thr[f] = r->calibrated ? dom->cycle_q[flag_pct[f]] : NAN;
    for (int i = 0; v[0] && v[1] && i < n; i++) {
        if (isnan(items[i].cycle) || items[i].why[0]) continue;
        int w = items[i].m.count_wrong > 0;
        v[w][r->n[w]++] = items[i].cycle;
        for (int f = 0; f < N_FLAG && r->calibrated; f++) r->flagged[f][w] += items[i].cycle > r->thr[f];
    }
    for (int w = 0; w < 2; w++) {
        r->median[w] = NAN;
        if (!v[w] || !r->n[w]) continue;
        qsort(v[w], (size_t)r->n[w], sizeof(double), cmp_dbl);
        int k = r->n[w];
        r->median[w] = k % 2 ? v[w][k / 2] : 0.5 * (v[w][k / 2 - 1] + v[w][k / 2]);
    }
    free(v[0]);
    free(v[1]);
}

/* The inputs outside the model's training domain, reported apart from the
 * rest (their errors say what the model was not trained for). */
typedef struct domain_report {
    int outside, lacks;
    nesf_metrics in, out;
    char codes[8][32];
    int code_n[8], n_codes;
} domain_report;

static json_t *summary_json(const nesf_metrics *m);

static void count_code(domain_report *r, const char *code)
{
    int k = 0;
    while (k < r->n_codes && strcmp(r->codes[k], code)) k++;
    if (k == 8) return;
    if (k == r->n_codes) snprintf(r->codes[r->n_codes++], sizeof r->codes[0], "%s", code);
    r->code_n[k]++;
}

static void domain_tally(domain_report *r, const item *items, int n)
{
    memset(r, 0, sizeof *r);
    nesf_metrics_init(&r->in);
    nesf_metrics_init(&r->out);
    for (int i = 0; i < n; i++) {
        const item *it = &items[i];
        int out = it->n_warn > 0 || it->lacks;
        r->outside += out;
        r->lacks += it->lacks;
        nesf_metrics_merge(out ? &r->out : &r->in, &it->m);
        for (int w = 0; w < it->n_warn; w++) count_code(r, it->warn[w].code);
        if (it->lacks) count_code(r, "model_lacks_element");
    }
}

static json_t *domain_json(const domain_report *r, const item *items, const nesf_dataset *d, int n)
{
    json_t *codes = json_object(), *ids = json_array();
    for (int k = 0; k < r->n_codes; k++) json_object_set_new(codes, r->codes[k], json_integer(r->code_n[k]));
    for (int i = 0; i < n; i++)
        if (items[i].n_warn || items[i].lacks) json_array_append_new(ids, json_string(d->s[i]->id));
    return json_pack("{s:i, s:i, s:o, s:o, s:o, s:o}", "structures", r->outside, "not_encodable", r->lacks,
                     "codes", codes, "ids", ids, "outside", summary_json(&r->out), "inside",
                     summary_json(&r->in));
}

static json_t *num(double v) { return isfinite(v) ? json_real(v) : json_null(); }

static json_t *summary_json(const nesf_metrics *m)
{
    nesf_metrics_summary s;
    nesf_metrics_summarize(m, &s);
    json_t *o = json_object();
    json_object_set_new(o, "structures", json_integer(m->structures));
    json_object_set_new(o, "atom_count_error_pct", num(s.count_err_pct));
    json_object_set_new(o, "position_error_actual", num(s.pos_act));
    json_object_set_new(o, "position_error_detected", num(s.pos_det));
    json_object_set_new(o, "species_error_actual_pct", num(s.spec_act_pct));
    json_object_set_new(o, "species_error_detected_pct", num(s.spec_det_pct));
    json_object_set_new(o, "lattice_length_error", num(s.len_mae));
    json_object_set_new(o, "lattice_angle_error_deg", num(s.ang_mae));
    json_object_set_new(o, "true_atoms", json_integer(m->true_atoms));
    json_object_set_new(o, "detected_atoms", json_integer(m->det_atoms));
    json_object_set_new(o, "undetected_atoms", json_integer(m->undetected_atoms));
    return o;
}

static void print_row(const char *label, const nesf_metrics *m)
{
    nesf_metrics_summary s;
    nesf_metrics_summarize(m, &s);
    printf("%-14s %6ld %8.2f %10.4f %10.4f %10.2f %10.2f %8.4f %8.3f\n", label, m->structures,
           s.count_err_pct, s.pos_act, s.pos_det, s.spec_act_pct, s.spec_det_pct, s.len_mae,
           s.ang_mae);
}

/* Cycle distances of one decoded batch into its items. */
static int batch_cycle(nesf_model *m, int S, const float *z, nesf_structure *const *rec, item *it,
                       nesf_error *err)
{
    double *d = malloc((size_t)S * sizeof *d);
    if (!d) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    int rc = nesf_cycle_distances(m, S, z, rec, d, err);
    for (int i = 0; !rc && i < S; i++) it[i].cycle = d[i];
    free(d);
    return rc;
}

static void print_confidence(const conf_report *r)
{
    printf("confidence (cycle distance |E(D(z)) - z|): median %.3f for %d with the right atom count, "
           "%.3f for %d with the wrong one\n", r->median[0], r->n[0], r->median[1], r->n[1]);
    for (int f = 0; f < N_FLAG && r->calibrated; f++)
        printf("  above the training sample's %2dth percentile (%.3f): flags %d of %d wrong, %d of %d "
               "right (false alarms %.1f %%)\n", flag_pct[f], r->thr[f], r->flagged[f][1], r->n[1],
               r->flagged[f][0], r->n[0], r->n[0] ? 100.0 * r->flagged[f][0] / r->n[0] : 0.0);
    if (!r->calibrated) printf("  (the model file records no training sample: see nesf domain)\n");
}

static json_t *confidence_json(const conf_report *r)
{
    json_t *o = json_pack("{s:{s:i, s:o}, s:{s:i, s:o}}", "right_count", "structures", r->n[0],
                          "median_cycle_distance", num(r->median[0]), "wrong_count", "structures", r->n[1],
                          "median_cycle_distance", num(r->median[1]));
    json_t *t = json_array();
    for (int f = 0; f < N_FLAG && r->calibrated; f++)
        json_array_append_new(t, json_pack("{s:i, s:o, s:i, s:i}", "training_percentile", flag_pct[f],
                                           "cycle_distance", num(r->thr[f]), "wrong_flagged", r->flagged[f][1],
                                           "right_flagged", r->flagged[f][0]));
    json_object_set_new(o, "thresholds", t);
    return o;
}

static void print_domain(const domain_report *r, int recorded)
{
    printf("outside the model's training domain%s: %d structures", recorded ? "" : " (only its bounding "
           "box is recorded: see nesf domain)", r->outside);
    for (int k = 0; k < r->n_codes; k++) printf("%s%s %d", k ? ", " : " (", r->codes[k], r->code_n[k]);
    printf("%s\n", r->n_codes ? ")" : "");
    if (r->lacks) printf("  of which not encodable (an element the model lacks): %d\n", r->lacks);
    if (r->out.structures) {
        print_row("outside", &r->out);
        print_row("inside", &r->in);
    }
}

/* Wrong in any way: count, species, or a mean position error over 0.01 Å. */
static int is_wrong(const item *it)
{
    const nesf_metrics *m = &it->m;
    return it->why[0] || m->count_wrong || m->spec_act_wrong || m->spec_det_wrong ||
           !(m->pos_act_sum <= 0.01 * m->act_atoms) || !(m->pos_det_sum <= 0.01 * m->det_atoms);
}

static int parse_args(int argc, char **argv, eval_args *a)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"data", required_argument, 0, 'd'},
        {"out", required_argument, 0, 'o'},   {"meta", required_argument, 0, 'M'},
        {"bbox-from", required_argument, 0, 'B'}, {"options", required_argument, 0, 'O'},
        {"backend", required_argument, 0, 'k'}, {"threads", required_argument, 0, 't'},
        {"batch", required_argument, 0, 'b'}, {"limit", required_argument, 0, 'l'},
        {"truth", no_argument, 0, 'T'},       {"json", no_argument, 0, 'j'},
        {"list", no_argument, 0, 'L'},        {"help", no_argument, 0, 'h'},
        {"strict-lattice", no_argument, 0, 'S'},
        {0, 0, 0, 0}};
    memset(a, 0, sizeof *a);
    a->batch = 64;
    a->limit = -1;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': a->model = optarg; break;
        case 'd': a->data = optarg; break;
        case 'o': a->out = optarg; break;
        case 'M': a->meta = optarg; break;
        case 'B': a->bbox_from = optarg; break;
        case 'O': a->options = optarg; break;
        case 'k': a->backend = optarg; break;
        case 't': a->threads = atoi(optarg); break;
        case 'b': a->batch = atoi(optarg); break;
        case 'l': a->limit = atoi(optarg); break;
        case 'T': a->truth = 1; break;
        case 'S': a->strict = 1; break;
        case 'j': a->json = 1; break;
        case 'L': a->list = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc || !a->data || (!a->model && !(a->truth && a->meta)) || a->batch < 1) {
        usage(stderr);
        return 2;
    }
    if (a->truth) a->list = 1;
    return -1;
}

int nesf_cmd_eval(int argc, char **argv)
{
    eval_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc >= 0) return rc;
    const double t_start = cli_now_s();
    nesf_error err;
    nesf_decode_opts opts;
    nesf_decode_opts_default(&opts);
    opts.repair_lattice = !a.strict;
    if (cli_decode_options("eval", "options", a.options, &opts)) return 2;
    if (opts.symmetrize) { /* the metrics pair atoms of one cell with those of the other */
        fprintf(stderr, "nesf eval: --options: symmetrize changes the cell (and its atom count) the "
                        "metrics compare with the truth; evaluate without it\n");
        return 2;
    }
    nesf_dataset d = {0};
    if (nesf_dataset_load(a.data, &d, &err)) {
        fprintf(stderr, "nesf eval: %s\n", err.msg);
        return 1;
    }
    const int n = a.limit >= 0 && a.limit < d.n ? a.limit : d.n;

    nesf_backend *be = NULL;
    nesf_model *m = NULL;
    int species_z[NESF_MAX_SPECIES], ns = 0;
    float lo[3], hi[3];
    const char *bbox_src;
    int status = 1;
    nesf_structure **rec = calloc((size_t)(n ? n : 1), sizeof *rec);
    item *items = calloc((size_t)(n ? n : 1), sizeof *items);
    nesf_error *ierr = calloc((size_t)(n ? n : 1), sizeof *ierr);
    int maxn = 0;
    for (int i = 0; i < n; i++) maxn = d.s[i]->n > maxn ? d.s[i]->n : maxn;
    nesf_metrics *by_n = calloc((size_t)maxn + 1, sizeof *by_n);
    float *z = NULL, *cell = NULL; /* latents, raw lattice heads (len | ang) */
    nesf_error *keep = malloc((size_t)a.batch * sizeof *keep);
    if (!rec || !items || !ierr || !by_n || !keep) {
        fprintf(stderr, "nesf eval: out of memory\n");
        goto done;
    }
    if (a.model) {
        if (cli_open_model("eval", a.model, a.backend, a.threads, &be, &m)) goto done;
        ns = nesf_model_num_species(m);
        for (int c = 0; c < ns; c++) species_z[c] = nesf_model_species_z(m, c);
        nesf_model_bbox(m, lo, hi);
        bbox_src = "the model's";
        z = malloc((size_t)a.batch * nesf_model_latent_size(m) * sizeof *z);
        cell = malloc((size_t)a.batch * 6 * sizeof *cell);
        if (!z || !cell) {
            fprintf(stderr, "nesf eval: out of memory\n");
            goto done;
        }
    } else {
        nesf_vocab v;
        if (nesf_vocab_load(a.meta, &v, &err) ||
            nesf_backend_create(a.backend ? a.backend : "auto", a.threads, &be, &err)) {
            fprintf(stderr, "nesf eval: %s\n", err.msg);
            goto done;
        }
        ns = v.n;
        memcpy(species_z, v.z, (size_t)v.n * sizeof *v.z);
        nesf_structures_bbox(d.s, n, lo, hi);
        bbox_src = "the data's own";
    }
    if (a.bbox_from) {
        nesf_dataset bd;
        if (nesf_dataset_load(a.bbox_from, &bd, &err)) {
            fprintf(stderr, "nesf eval: %s\n", err.msg);
            goto done;
        }
        nesf_structures_bbox(bd.s, bd.n, lo, hi);
        nesf_dataset_free(&bd);
        bbox_src = a.bbox_from;
    }

    nesf_match_opts mopts;
    nesf_match_opts_default(&mopts);
    nesf_decode_stats total;
    memset(&total, 0, sizeof total);
    double t_encode = 0;
    cli_progress bar;
    cli_progress_start(&bar, a.truth ? "eval (truth)" : "eval", n);
    for (int b0 = 0; b0 < n; b0 += a.batch) {
        const int S = n - b0 < a.batch ? n - b0 : a.batch;
        nesf_structure **s = d.s + b0;
        nesf_decode_stats st;
        if (a.truth) {
            nesf_field f;
            rc = nesf_field_truth(be, s, S, species_z, ns, lo, hi, &f, &err);
            if (!rc) rc = nesf_decode_field(&f, &opts, rec + b0, ierr + b0, &st, &err);
            nesf_field_release(&f);
        } else {
            double t0 = cli_now_s();
            const int L = nesf_model_latent_size(m);
            rc = nesf_model_encode(m, s, S, z, &err);
            if (rc == NESF_ERR_NOTFOUND || rc == NESF_ERR_INVALID) {
                /* find the structures the model cannot take; decode the rest */
                for (int i = 0; i < S; i++)
                    if (nesf_model_encode(m, s + i, 1, z + (size_t)i * L, &ierr[b0 + i])) {
                        items[b0 + i].lacks = ierr[b0 + i].code == NESF_ERR_NOTFOUND;
                        nesf_error_prefix(&ierr[b0 + i], "encode: ");
                        memset(z + (size_t)i * L, 0, (size_t)L * sizeof *z);
                    }
                rc = NESF_OK;
            }
            t_encode += cli_now_s() - t0;
            if (!rc) rc = nesf_model_lattice(m, S, z, cell, cell + 3 * S, &err);
            if (!rc) {
                /* nesf_decode clears item errors: keep the encoder's */
                memcpy(keep, ierr + b0, (size_t)S * sizeof *keep);
                rc = nesf_decode(m, S, z, &opts, rec + b0, ierr + b0, &st, &err);
                for (int i = 0; i < S && !rc; i++)
                    if (keep[i].code) {
                        nesf_structure_free(rec[b0 + i]);
                        rec[b0 + i] = NULL;
                        ierr[b0 + i] = keep[i];
                    }
                if (!rc) rc = batch_cycle(m, S, z, rec + b0, items + b0, &err);
            }
        }
        if (rc) {
            cli_progress_end(&bar);
            fprintf(stderr, "nesf eval: structures %d..%d: %s\n", b0, b0 + S - 1, err.msg);
            goto done;
        }
        nesf_decode_stats_add(&total, &st);
        for (int i = b0; i < b0 + S; i++) {
            nesf_metrics_init(&items[i].m);
            if (!m) items[i].cycle = NAN;
            if (m)
                items[i].n_warn = nesf_domain_check(nesf_model_domain(m), lo, hi, d.s[i], items[i].warn,
                                                    NESF_DOMAIN_MAX_WARNINGS);
            if (a.truth) {
                nesf_metrics_add(&items[i].m, d.s[i], rec[i]);
            } else {
                nesf_metrics_add_atoms(&items[i].m, d.s[i], rec[i]);
                const float *l = cell + 3 * (i - b0), *g = cell + 3 * S + 3 * (i - b0);
                const double deg = 180.0 / M_PI;
                nesf_cellpar p = {l[0], l[1], l[2], g[0] * deg, g[1] * deg, g[2] * deg};
                if (!keep[i - b0].code) nesf_metrics_add_lattice(&items[i].m, d.s[i], &p);
            }
            if (ierr[i].code) snprintf(items[i].why, sizeof items[i].why, "%s", ierr[i].msg);
            items[i].rms = NAN;
            nesf_match_result mr;
            if (rec[i] && !nesf_structure_match(d.s[i], rec[i], &mopts, &mr, NULL))
                items[i].matched = mr.match, items[i].rms = mr.rms;
            if (rec[i]) snprintf(rec[i]->id, sizeof rec[i]->id, "%s", d.s[i]->id);
        }
        cli_progress_update(&bar, b0 + S);
    }
    cli_progress_end(&bar);

    nesf_metrics all;
    nesf_metrics_init(&all);
    for (int i = 0; i < n; i++) {
        nesf_metrics_merge(&all, &items[i].m);
        nesf_metrics_merge(&by_n[d.s[i]->n], &items[i].m);
    }
    int wrong = 0, failed = 0;
    for (int i = 0; i < n; i++) {
        wrong += is_wrong(&items[i]);
        failed += items[i].why[0] != 0 && !items[i].lacks;
    }
    int matched = 0;
    double rms_sum = 0;
    for (int i = 0; i < n; i++)
        if (items[i].matched) matched++, rms_sum += items[i].rms;
    const double match_pct = n ? 100.0 * matched / n : 0.0, mean_rms = matched ? rms_sum / matched : NAN;
    domain_report dr;
    domain_tally(&dr, items, n);
    conf_report cr;
    conf_tally(&cr, items, n, m ? nesf_model_domain(m) : NULL);
    const double wall = cli_now_s() - t_start;
    long G = n ? total.particles / n : 0;

    if (a.out) {
        char *text = cli_format_structures(rec, n, "jsonl");
        if (!text || nesf_write_file(a.out, text, strlen(text), &err)) {
            fprintf(stderr, "nesf eval: %s\n", text ? err.msg : "out of memory");
            free(text);
            goto done;
        }
        free(text);
    }

    if (a.json) {
        json_t *o = json_object();
        json_object_set_new(o, "data", json_string(a.data));
        json_object_set_new(o, "mode", json_string(a.truth ? "truth" : "model"));
        json_object_set_new(o, "model", a.model ? json_string(a.model) : json_null());
        json_object_set_new(o, "backend", json_string(be->device));
        json_object_set_new(o, "all", summary_json(&all));
        json_t *rows = json_array();
        for (int k = 0; k <= maxn; k++) {
            if (!by_n[k].structures) continue;
            json_t *r = summary_json(&by_n[k]);
            json_object_set_new(r, "atoms", json_integer(k));
            json_array_append_new(rows, r);
        }
        json_object_set_new(o, "by_atom_count", rows);
        json_t *bad = json_array();
        for (int i = 0; i < n && a.list; i++) {
            if (!is_wrong(&items[i])) continue;
            nesf_metrics_summary s;
            nesf_metrics_summarize(&items[i].m, &s);
            json_t *r = json_object();
            json_object_set_new(r, "id", json_string(d.s[i]->id));
            json_object_set_new(r, "true_atoms", json_integer(d.s[i]->n));
            json_object_set_new(r, "detected_atoms", json_integer(rec[i] ? rec[i]->n : 0));
            json_object_set_new(r, "position_error_actual", num(s.pos_act));
            json_object_set_new(r, "species_error_actual_pct", num(s.spec_act_pct));
            if (items[i].why[0]) json_object_set_new(r, "error", json_string(items[i].why));
            json_array_append_new(bad, r);
        }
        json_object_set_new(o, "wrong", json_integer(wrong));
        json_object_set_new(o, "failed", json_integer(failed));
        json_object_set_new(o, "match_rate_pct", json_real(match_pct));
        json_object_set_new(o, "match", json_pack("{s:i, s:i, s:o, s:f, s:f, s:f}", "matched", matched,
                                                  "structures", n, "mean_rms", num(mean_rms), "ltol",
                                                  mopts.ltol, "stol", mopts.stol, "angle_tol", mopts.angle_tol));
        if (m) json_object_set_new(o, "outside_domain", domain_json(&dr, items, &d, n));
        if (m) json_object_set_new(o, "confidence", confidence_json(&cr));
        if (a.list) json_object_set_new(o, "wrong_structures", bad);
        else json_decref(bad);
        char *ot = nesf_decode_opts_to_json(&opts);
        json_object_set_new(o, "options", ot ? json_loads(ot, 0, NULL) : json_null());
        free(ot);
        json_t *bb = json_pack("{s:[f,f,f], s:[f,f,f], s:s}", "min", lo[0], lo[1], lo[2], "max",
                               hi[0], hi[1], hi[2], "source", bbox_src);
        json_object_set_new(o, "bbox", bb);
        json_object_set_new(o, "timing", json_pack(
            "{s:f, s:f, s:f, s:f, s:f, s:f, s:I, s:I, s:i}", "wall_s", wall, "encode_s", t_encode,
            "decode_s", total.ms / 1e3, "decode_ms_per_structure", n ? total.ms / n : 0.0,
            "flow_s", total.ms_flow / 1e3, "nms_s", total.ms_nms / 1e3,
            "particles_per_structure", (json_int_t)G, "field_evals", (json_int_t)total.field_evals,
            "truncated", total.truncated));
        json_object_set_new(o, "lattice_repaired", json_integer(total.lattice_repaired));
        char *t = json_dumps(o, JSON_INDENT(1) | JSON_REAL_PRECISION(8));
        if (t) printf("%s\n", t);
        free(t);
        json_decref(o);
    } else {
        printf("nesf eval: %d structures of %s, %s\n", n, a.data,
               a.truth ? "exact (ground-truth) field" : a.model);
        printf("backend: %s; bounding box %s: [%.3f %.3f %.3f] .. [%.3f %.3f %.3f]\n", be->device,
               bbox_src, lo[0], lo[1], lo[2], hi[0], hi[1], hi[2]);
        printf("\n%-14s %6s %8s %10s %10s %10s %10s %8s %8s\n", "", "n", "atoms%", "pos act A",
               "pos det A", "spec act%", "spec det%", "len A", "ang deg");
        print_row("all", &all);
        for (int k = 0; k <= maxn; k++) {
            if (!by_n[k].structures) continue;
            char label[32];
            snprintf(label, sizeof label, "%d atoms", k);
            print_row(label, &by_n[k]);
        }
        printf("\natoms: %ld true, %ld detected, %ld in %s without any detection\n",
               all.true_atoms, all.det_atoms, all.undetected_atoms, "structures");
        printf("reconstructed exactly (count, species, mean position error <= 0.01 Å): %d of %d; "
               "failed to decode: %d\n", n - wrong, n, failed);
        printf("match rate (StructureMatcher-like, ltol %g, stol %g, angle_tol %g): %d of %d = %.2f %%, "
               "mean RMS of the matches %.4f\n", mopts.ltol, mopts.stol, mopts.angle_tol, matched, n,
               match_pct, mean_rms);
        if (m) print_domain(&dr, nesf_model_domain(m) != NULL);
        if (m) print_confidence(&cr);
        if (a.list)
            for (int i = 0; i < n; i++) {
                if (!is_wrong(&items[i])) continue;
                nesf_metrics_summary s;
                nesf_metrics_summarize(&items[i].m, &s);
                printf("  wrong: %-14s %2d atoms -> %2d, pos act %.4f Å, species act %.1f%%%s%s\n",
                       d.s[i]->id, d.s[i]->n, rec[i] ? rec[i]->n : 0, s.pos_act, s.spec_act_pct,
                       items[i].why[0] ? ", " : "", items[i].why);
            }
        printf("\ndecode: %.2f s for %d structures = %.1f ms per structure "
               "(%ld particles x %d iterations each; flow %.2f s, NMS %.2f s, species %.2f s)\n",
               total.ms / 1e3, n, n ? total.ms / n : 0.0, G, opts.iterations,
               total.ms_flow / 1e3, total.ms_nms / 1e3, total.ms_species / 1e3);
        if (!a.truth) printf("encode: %.2f s\n", t_encode);
        if (total.truncated) printf("max_atoms reached in %d structures\n", total.truncated);
        if (total.lattice_repaired)
            printf("predicted cell was no cell, decoded in a repaired one: %d structures\n",
                   total.lattice_repaired);
        printf("wall time: %.2f s\n", wall);
    }
    status = 0;
done:
    for (int i = 0; rec && i < n; i++) nesf_structure_free(rec[i]);
    free(rec);
    free(items);
    free(ierr);
    free(by_n);
    free(z);
    free(cell);
    free(keep);
    if (m) nesf_model_free(m);
    if (be) nesf_backend_free(be);
    nesf_dataset_free(&d);
    return status;
}

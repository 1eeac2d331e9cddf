/* nesf eval - reconstruct every structure of a dataset (encode, decode)
 * and print the paper's Table 1 figures (spec §6), per atom count too.
 * With --truth the network is replaced by the exact field of each
 * structure, which checks the reconstruction algorithm on its own. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_opts.h"
#include "commands.h"
#include "consistency.h"
#include "dataset.h"
#include "decode.h"
#include "fileio.h"
#include "domain.h"
#include "latent_cli.h"
#include "match.h"
#include "metrics.h"
#include "refine.h"
#include "second_look.h"

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
        "  --self-check       re-encode and decode every reconstruction again and report\n"
        "                     how well \"not a fixed point\" flags the wrong ones\n"
        "  --refine JSON      latent refinement on each structure before decoding:\n"
        "                     true (the default, as nesfd), a step count, {\"steps\",\n"
        "                     \"lr\", ...} (core/refine.h), or false: the encoder's latent\n"
        "                     alone (the paper's autoencoder, Table 1)\n"
        "  --batch N          structures per batched decode (default 64)\n"
        "  --limit N          only the first N structures\n"
        "  --backend KIND     cpu, cuda or auto (default auto)\n"
        "  --threads N        CPU threads (default: all cores)\n");
}

typedef struct eval_args {
    const char *model, *data, *out, *meta, *bbox_from, *options, *backend, *refine;
    int truth, json, list, batch, limit, threads, strict, self_check;
} eval_args;

/* One structure's outcome, for --list. */
typedef struct item {
    nesf_metrics m;
    char why[160]; /* decode/encode failure */
    int n_warn;    /* domain warnings of the input (domain.h) */
    nesf_domain_warning warn[NESF_DOMAIN_MAX_WARNINGS];
    int lacks;     /* an element the model does not know: never encoded */
    double cycle;  /* cycle distance |E(D(z)) - E(S)| (NAN: not measured) */
    int matched;   /* the same crystal as the truth (match.h) */
    double rms;    /* its normalised RMS displacement */
    int fixed;     /* --self-check: 1 a fixed point of decode∘encode, 0 not, -1 unchecked */
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

/* Cycle distances of one decoded batch into its items, against the
 * encoder's own latents z of the inputs: with refinement the decoded
 * latent lies off the encoder's manifold, and |E(D) - E(S)| is what
 * separates wrong answers (docs/trust.md); without, it is |E(D(z)) - z|. */
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
    printf("confidence (cycle distance |E(D(z)) - E(S)|): median %.3f for %d with the right atom count, "
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
    memset(a, 0, sizeof *a);
    a->batch = 64;
    a->limit = -1;
    const cli_opt opts[] = {
        CLI_OPT_MODEL(&a->model), CLI_OPT_DATA(&a->data), CLI_OPT_OUT(&a->out),
        CLI_S("meta", &a->meta), CLI_S("bbox-from", &a->bbox_from),
        CLI_OPT_OPTIONS(&a->options), CLI_OPT_BACKEND(&a->backend), CLI_OPT_THREADS(&a->threads),
        CLI_I("batch", &a->batch, 1, 1 << 20), CLI_OPT_LIMIT(&a->limit),
        CLI_F("truth", &a->truth), CLI_F("json", &a->json),
        CLI_F("list", &a->list), CLI_F("strict-lattice", &a->strict),
        CLI_S("refine", &a->refine), CLI_F("self-check", &a->self_check), CLI_OPT_END};
    int rc = cli_parse("eval", argc, argv, opts, usage, NULL);
    if (rc >= 0) return rc;
    if (!a->data || (!a->model && !(a->truth && a->meta))) {
        usage(stderr);
        return 2;
    }
    if (a->truth) a->list = 1;
    return -1;
}

/* Everything one evaluation run holds, shared by its steps below. */
typedef struct eval_run {
    eval_args a;
    nesf_decode_opts opts;
    nesf_refine_opts ropts;
    nesf_refine_stats rstats;
    nesf_second_look_stats lstats;
    double t_look;
    nesf_match_opts mopts;
    nesf_dataset d;
    int n, maxn;
    nesf_backend *be;
    nesf_model *m;
    int species_z[NESF_MAX_SPECIES], ns;
    float lo[3], hi[3];
    const char *bbox_src;
    nesf_structure **rec;   /* [n] reconstructions */
    item *items;            /* [n] */
    nesf_error *ierr;       /* [n] */
    nesf_metrics *by_n;     /* [maxn + 1] */
    float *z, *cell;        /* a batch's latents, raw lattice heads (len | ang) */
    float *z0;              /* the batch's latents before refinement (in z's block) */
    nesf_error *keep;       /* a batch's encoder errors */
    nesf_decode_stats total;
    double t_start, t_encode, t_self_check;
    /* tallies, after the batches */
    nesf_metrics all;
    int wrong, failed, matched;
    double match_pct, mean_rms;
    domain_report dr;
    conf_report cr;
    int sc_n[2], sc_flagged[2]; /* --self-check: [0] right composition, [1] wrong; flagged: not fixed points */
} eval_run;

/* The model (or, for --truth, the species list and the data's box) and
 * the bounding box the run decodes in. */
static int eval_setup(eval_run *r)
{
    nesf_error err;
    const eval_args *a = &r->a;
    if (a->model) {
        if (cli_open_model("eval", a->model, a->backend, a->threads, &r->be, &r->m)) return -1;
        r->ns = nesf_model_num_species(r->m);
        for (int c = 0; c < r->ns; c++) r->species_z[c] = nesf_model_species_z(r->m, c);
        nesf_model_bbox(r->m, r->lo, r->hi);
        r->bbox_src = "the model's";
        r->z = malloc(2 * (size_t)a->batch * nesf_model_latent_size(r->m) * sizeof *r->z);
        r->z0 = r->z ? r->z + (size_t)a->batch * nesf_model_latent_size(r->m) : NULL;
        r->cell = malloc((size_t)a->batch * 6 * sizeof *r->cell);
        if (!r->z || !r->cell) {
            fprintf(stderr, "nesf eval: out of memory\n");
            return -1;
        }
    } else {
        nesf_vocab v;
        if (nesf_vocab_load(a->meta, &v, &err) ||
            cli_backend_open(a->backend, a->threads, &r->be, &err)) {
            fprintf(stderr, "nesf eval: %s\n", err.msg);
            return -1;
        }
        r->ns = v.n;
        memcpy(r->species_z, v.z, (size_t)v.n * sizeof *v.z);
        nesf_structures_bbox(r->d.s, r->n, r->lo, r->hi);
        r->bbox_src = "the data's own";
    }
    if (a->bbox_from) {
        nesf_dataset bd;
        if (nesf_dataset_load(a->bbox_from, &bd, &err)) {
            fprintf(stderr, "nesf eval: %s\n", err.msg);
            return -1;
        }
        nesf_structures_bbox(bd.s, bd.n, r->lo, r->hi);
        nesf_dataset_free(&bd);
        r->bbox_src = a->bbox_from;
    }
    return 0;
}

/* --self-check of the S reconstructions from b0 (consistency.h). */
static int batch_fixed_point(eval_run *r, int b0, int S, nesf_error *err)
{
    nesf_fixed_point *v = malloc((size_t)S * sizeof *v);
    if (!v) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    double t0 = nesf_clock_s();
    int rc = nesf_fixed_point_check(r->m, r->rec + b0, S, &r->opts, v, err);
    for (int i = 0; !rc && i < S; i++) r->items[b0 + i].fixed = v[i].checked ? v[i].consistent : -1;
    r->t_self_check += nesf_clock_s() - t0;
    free(v);
    return rc;
}

/* The second look (second_look.h) at the batch's doubtful
 * reconstructions; the lattice heads again for the latents it replaced. */
static int batch_second_look(eval_run *r, int b0, int S, nesf_error *err)
{
    if (r->ropts.steps <= 0 || r->ropts.look_tries <= 0) return NESF_OK;
    double t0 = nesf_clock_s();
    nesf_structure **s = malloc((size_t)S * sizeof *s);
    double *cyc = malloc((size_t)S * sizeof *cyc);
    int rc = s && cyc ? NESF_OK : nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    for (int i = 0; !rc && i < S; i++) {
        s[i] = r->ierr[b0 + i].code ? NULL : r->d.s[b0 + i]; /* no second look at a failure */
        cyc[i] = r->items[b0 + i].cycle;
    }
    int before = r->lstats.replaced;
    if (!rc) rc = nesf_second_look(r->m, s, S, r->z0, r->z, r->rec + b0, cyc, &r->ropts, &r->opts, &r->lstats, err);
    for (int i = 0; !rc && i < S; i++) r->items[b0 + i].cycle = cyc[i];
    if (!rc && r->lstats.replaced > before) rc = nesf_model_lattice(r->m, S, r->z, r->cell, r->cell + 3 * S, err);
    free(s);
    free(cyc);
    r->t_look += nesf_clock_s() - t0;
    return rc;
}

/* Encodes (structures the model cannot take fail alone) and decodes the S
 * structures from b0, with each one's cycle distance. */
static int model_batch(eval_run *r, int b0, int S, nesf_decode_stats *st, nesf_error *err)
{
    nesf_structure **s = r->d.s + b0;
    double t0 = nesf_clock_s();
    const int L = nesf_model_latent_size(r->m);
    float *z = r->z;
    int rc = nesf_model_encode(r->m, s, S, z, err);
    if (rc == NESF_ERR_NOTFOUND || rc == NESF_ERR_INVALID) {
        for (int i = 0; i < S; i++)
            if (nesf_model_encode(r->m, s + i, 1, z + (size_t)i * L, &r->ierr[b0 + i])) {
                r->items[b0 + i].lacks = r->ierr[b0 + i].code == NESF_ERR_NOTFOUND;
                nesf_error_prefix(&r->ierr[b0 + i], "encode: ");
                memset(z + (size_t)i * L, 0, (size_t)L * sizeof *z);
            }
        rc = NESF_OK;
    }
    memcpy(r->z0, z, (size_t)S * L * sizeof *z);
    for (int i = 0; !rc && r->ropts.steps > 0 && i < S; i++)
        if (!r->ierr[b0 + i].code)
            rc = nesf_refine_latents(r->m, s + i, 1, z + (size_t)i * L, &r->ropts, &r->rstats, err);
    r->t_encode += nesf_clock_s() - t0;
    if (!rc) rc = nesf_model_lattice(r->m, S, z, r->cell, r->cell + 3 * S, err);
    if (rc) return rc;
    /* nesf_decode clears item errors: keep the encoder's */
    memcpy(r->keep, r->ierr + b0, (size_t)S * sizeof *r->keep);
    rc = nesf_decode(r->m, S, z, &r->opts, r->rec + b0, r->ierr + b0, st, err);
    for (int i = 0; i < S && !rc; i++)
        if (r->keep[i].code) {
            nesf_structure_free(r->rec[b0 + i]);
            r->rec[b0 + i] = NULL;
            r->ierr[b0 + i] = r->keep[i];
        }
    if (!rc) rc = batch_cycle(r->m, S, r->z0, r->rec + b0, r->items + b0, err);
    if (!rc) rc = batch_second_look(r, b0, S, err);
    return rc || !r->a.self_check ? rc : batch_fixed_point(r, b0, S, err);
}

/* One structure's outcome: metrics, domain check, match, failure. */
static void score_item(eval_run *r, int i, int b0, int S)
{
    item *it = &r->items[i];
    const nesf_structure *t = r->d.s[i];
    nesf_structure *rec = r->rec[i];
    nesf_metrics_init(&it->m);
    if (!r->m) it->cycle = NAN;
    if (r->m)
        it->n_warn = nesf_domain_check(nesf_model_domain(r->m), r->lo, r->hi, t, it->warn,
                                       NESF_DOMAIN_MAX_WARNINGS);
    if (r->a.truth) {
        nesf_metrics_add(&it->m, t, rec);
    } else {
        nesf_metrics_add_atoms(&it->m, t, rec);
        const float *l = r->cell + 3 * (i - b0), *g = r->cell + 3 * S + 3 * (i - b0);
        const double deg = 180.0 / M_PI;
        nesf_cellpar p = {l[0], l[1], l[2], g[0] * deg, g[1] * deg, g[2] * deg};
        if (!r->keep[i - b0].code) nesf_metrics_add_lattice(&it->m, t, &p);
    }
    if (r->ierr[i].code) snprintf(it->why, sizeof it->why, "%s", r->ierr[i].msg);
    it->rms = NAN;
    nesf_match_result mr;
    if (rec && !nesf_structure_match(t, rec, &r->mopts, &mr, NULL)) it->matched = mr.match, it->rms = mr.rms;
    if (rec) snprintf(rec->id, sizeof rec->id, "%s", t->id);
}

/* Every batch, with a progress bar. */
static int eval_batches(eval_run *r)
{
    nesf_error err;
    cli_progress bar;
    cli_progress_start(&bar, r->a.truth ? "eval (truth)" : "eval", r->n);
    for (int b0 = 0; b0 < r->n; b0 += r->a.batch) {
        const int S = r->n - b0 < r->a.batch ? r->n - b0 : r->a.batch;
        nesf_decode_stats st;
        int rc;
        if (r->a.truth) {
            nesf_field f;
            rc = nesf_field_truth(r->be, r->d.s + b0, S, r->species_z, r->ns, r->lo, r->hi, &f, &err);
            if (!rc) rc = nesf_decode_field(&f, &r->opts, r->rec + b0, r->ierr + b0, &st, &err);
            nesf_field_release(&f);
        } else {
            rc = model_batch(r, b0, S, &st, &err);
        }
        if (rc) {
            cli_progress_end(&bar);
            fprintf(stderr, "nesf eval: structures %d..%d: %s\n", b0, b0 + S - 1, err.msg);
            return -1;
        }
        nesf_decode_stats_add(&r->total, &st);
        for (int i = b0; i < b0 + S; i++) score_item(r, i, b0, S);
        cli_progress_update(&bar, b0 + S);
    }
    cli_progress_end(&bar);
    return 0;
}

static void eval_tally(eval_run *r)
{
    nesf_metrics_init(&r->all);
    double rms_sum = 0;
    for (int i = 0; i < r->n; i++) {
        const item *it = &r->items[i];
        nesf_metrics_merge(&r->all, &it->m);
        nesf_metrics_merge(&r->by_n[r->d.s[i]->n], &it->m);
        r->wrong += is_wrong(it);
        r->failed += it->why[0] != 0 && !it->lacks;
        if (it->matched) r->matched++, rms_sum += it->rms;
    }
    r->match_pct = r->n ? 100.0 * r->matched / r->n : 0.0;
    r->mean_rms = r->matched ? rms_sum / r->matched : NAN;
    domain_tally(&r->dr, r->items, r->n);
    conf_tally(&r->cr, r->items, r->n, r->m ? nesf_model_domain(r->m) : NULL);
    for (int i = 0; r->a.self_check && i < r->n; i++) {
        const item *it = &r->items[i];
        if (it->why[0] || it->fixed < 0) continue;
        int w = !r->rec[i] || !nesf_same_composition(r->d.s[i], r->rec[i]);
        r->sc_n[w]++;
        r->sc_flagged[w] += !it->fixed;
    }
}

/* The structures reconstructed wrongly (--list), as JSON. */
static json_t *wrong_json(const eval_run *r)
{
    json_t *bad = json_array();
    for (int i = 0; i < r->n; i++) {
        if (!is_wrong(&r->items[i])) continue;
        nesf_metrics_summary s;
        nesf_metrics_summarize(&r->items[i].m, &s);
        json_t *o = json_object();
        json_object_set_new(o, "id", json_string(r->d.s[i]->id));
        json_object_set_new(o, "true_atoms", json_integer(r->d.s[i]->n));
        json_object_set_new(o, "detected_atoms", json_integer(r->rec[i] ? r->rec[i]->n : 0));
        json_object_set_new(o, "position_error_actual", num(s.pos_act));
        json_object_set_new(o, "species_error_actual_pct", num(s.spec_act_pct));
        if (r->items[i].why[0]) json_object_set_new(o, "error", json_string(r->items[i].why));
        json_array_append_new(bad, o);
    }
    return bad;
}

/* --self-check's tallies, and the ids of the answers it flags (not to be
 * trusted). */
static json_t *self_check_json(const eval_run *r)
{
    json_t *ids = json_array();
    for (int i = 0; i < r->n; i++)
        if (!r->items[i].why[0] && r->items[i].fixed == 0) json_array_append_new(ids, json_string(r->d.s[i]->id));
    return json_pack("{s:i, s:i, s:i, s:i, s:f, s:o}", "wrong_flagged", r->sc_flagged[1], "wrong_composition",
                     r->sc_n[1], "right_flagged", r->sc_flagged[0], "right_composition", r->sc_n[0], "seconds",
                     r->t_self_check, "flagged", ids);
}

static void report_json(const eval_run *r, double wall)
{
    const eval_args *a = &r->a;
    const nesf_decode_stats *t = &r->total;
    json_t *o = json_object();
    json_object_set_new(o, "data", json_string(a->data));
    json_object_set_new(o, "mode", json_string(a->truth ? "truth" : "model"));
    json_object_set_new(o, "model", a->model ? json_string(a->model) : json_null());
    json_object_set_new(o, "backend", json_string(r->be->device));
    json_object_set_new(o, "all", summary_json(&r->all));
    json_t *rows = json_array();
    for (int k = 0; k <= r->maxn; k++) {
        if (!r->by_n[k].structures) continue;
        json_t *row = summary_json(&r->by_n[k]);
        json_object_set_new(row, "atoms", json_integer(k));
        json_array_append_new(rows, row);
    }
    json_object_set_new(o, "by_atom_count", rows);
    json_object_set_new(o, "wrong", json_integer(r->wrong));
    json_object_set_new(o, "failed", json_integer(r->failed));
    json_object_set_new(o, "match_rate_pct", json_real(r->match_pct));
    json_object_set_new(o, "match", json_pack("{s:i, s:i, s:o, s:f, s:f, s:f}", "matched", r->matched,
                                              "structures", r->n, "mean_rms", num(r->mean_rms), "ltol",
                                              r->mopts.ltol, "stol", r->mopts.stol, "angle_tol",
                                              r->mopts.angle_tol));
    if (r->m) json_object_set_new(o, "outside_domain", domain_json(&r->dr, r->items, &r->d, r->n));
    if (r->m) json_object_set_new(o, "confidence", confidence_json(&r->cr));
    if (a->self_check)
        json_object_set_new(o, "self_check", self_check_json(r));
    if (a->list) json_object_set_new(o, "wrong_structures", wrong_json(r));
    char *ot = nesf_decode_opts_to_json(&r->opts);
    json_object_set_new(o, "options", ot ? json_loads(ot, 0, NULL) : json_null());
    free(ot);
    json_object_set_new(o, "bbox", json_pack("{s:[f,f,f], s:[f,f,f], s:s}", "min", r->lo[0], r->lo[1], r->lo[2],
                                             "max", r->hi[0], r->hi[1], r->hi[2], "source", r->bbox_src));
    long G = r->n ? t->particles / r->n : 0;
    json_object_set_new(o, "timing", json_pack(
        "{s:f, s:f, s:f, s:f, s:f, s:f, s:I, s:I, s:i}", "wall_s", wall, "encode_s", r->t_encode,
        "decode_s", t->ms / 1e3, "decode_ms_per_structure", r->n ? t->ms / r->n : 0.0,
        "flow_s", t->ms_flow / 1e3, "nms_s", t->ms_nms / 1e3,
        "particles_per_structure", (json_int_t)G, "field_evals", (json_int_t)t->field_evals,
        "truncated", t->truncated));
    json_object_set_new(o, "lattice_repaired", json_integer(t->lattice_repaired));
    char *text = json_dumps(o, JSON_INDENT(1) | JSON_REAL_PRECISION(8));
    if (text) printf("%s\n", text);
    free(text);
    json_decref(o);
}

static void report_text(const eval_run *r, double wall)
{
    const eval_args *a = &r->a;
    const nesf_decode_stats *t = &r->total;
    const int n = r->n;
    printf("nesf eval: %d structures of %s, %s\n", n, a->data, a->truth ? "exact (ground-truth) field" : a->model);
    printf("backend: %s; bounding box %s: [%.3f %.3f %.3f] .. [%.3f %.3f %.3f]\n", r->be->device,
           r->bbox_src, r->lo[0], r->lo[1], r->lo[2], r->hi[0], r->hi[1], r->hi[2]);
    printf("\n%-14s %6s %8s %10s %10s %10s %10s %8s %8s\n", "", "n", "atoms%", "pos act A",
           "pos det A", "spec act%", "spec det%", "len A", "ang deg");
    print_row("all", &r->all);
    for (int k = 0; k <= r->maxn; k++) {
        if (!r->by_n[k].structures) continue;
        char label[32];
        snprintf(label, sizeof label, "%d atoms", k);
        print_row(label, &r->by_n[k]);
    }
    printf("\natoms: %ld true, %ld detected, %ld in %s without any detection\n",
           r->all.true_atoms, r->all.det_atoms, r->all.undetected_atoms, "structures");
    printf("reconstructed exactly (count, species, mean position error <= 0.01 Å): %d of %d; "
           "failed to decode: %d\n", n - r->wrong, n, r->failed);
    printf("match rate (StructureMatcher-like, ltol %g, stol %g, angle_tol %g): %d of %d = %.2f %%, "
           "mean RMS of the matches %.4f\n", r->mopts.ltol, r->mopts.stol, r->mopts.angle_tol, r->matched, n,
           r->match_pct, r->mean_rms);
    if (r->m) print_domain(&r->dr, nesf_model_domain(r->m) != NULL);
    if (r->m) print_confidence(&r->cr);
    if (a->self_check)
        printf("self-check (not a fixed point of decode∘encode): flags %d of %d with the wrong composition, "
               "%d of %d right "
               "(false alarms %.1f %%), %.2f s\n", r->sc_flagged[1], r->sc_n[1], r->sc_flagged[0], r->sc_n[0],
               r->sc_n[0] ? 100.0 * r->sc_flagged[0] / r->sc_n[0] : 0.0, r->t_self_check);
    for (int i = 0; a->list && i < n; i++) {
        if (!is_wrong(&r->items[i])) continue;
        nesf_metrics_summary s;
        nesf_metrics_summarize(&r->items[i].m, &s);
        printf("  wrong: %-14s %2d atoms -> %2d, pos act %.4f Å, species act %.1f%%%s%s\n",
               r->d.s[i]->id, r->d.s[i]->n, r->rec[i] ? r->rec[i]->n : 0, s.pos_act, s.spec_act_pct,
               r->items[i].why[0] ? ", " : "", r->items[i].why);
    }
    long G = n ? t->particles / n : 0;
    printf("\ndecode: %.2f s for %d structures = %.1f ms per structure "
           "(%ld particles x %d iterations each; flow %.2f s, NMS %.2f s, species %.2f s)\n",
           t->ms / 1e3, n, n ? t->ms / n : 0.0, G, r->opts.iterations,
           t->ms_flow / 1e3, t->ms_nms / 1e3, t->ms_species / 1e3);
    if (!a->truth) printf("encode: %.2f s%s\n", r->t_encode, r->ropts.steps > 0 ? " (with refinement)" : "");
    if (r->ropts.steps > 0)
        printf("refine: %d steps, lr %g: loss %.4f -> %.4f (mean over structures), %ld field rows\n",
               r->ropts.steps, (double)r->ropts.lr, r->rstats.loss_before / n, r->rstats.loss_after / n,
               r->rstats.field_rows);
    if (r->ropts.steps > 0 && r->ropts.look_tries > 0)
        printf("second look: %d doubtful (cycle distance above the %g th percentile of training), "
               "%d answers replaced, %d tries of %d steps, %.2f s\n",
               r->lstats.doubtful, (double)r->ropts.look_pct, r->lstats.replaced, r->lstats.tries,
               r->ropts.look_steps, r->t_look);
    if (t->truncated) printf("max_atoms reached in %d structures\n", t->truncated);
    if (t->lattice_repaired)
        printf("predicted cell was no cell, decoded in a repaired one: %d structures\n", t->lattice_repaired);
    printf("wall time: %.2f s\n", wall);
}

static void eval_free(eval_run *r)
{
    for (int i = 0; r->rec && i < r->n; i++) nesf_structure_free(r->rec[i]);
    free(r->rec);
    free(r->items);
    free(r->ierr);
    free(r->by_n);
    free(r->z);
    free(r->cell);
    free(r->keep);
    if (r->m) nesf_model_free(r->m);
    if (r->be) nesf_backend_free(r->be);
    nesf_dataset_free(&r->d);
    free(r);
}

/* One evaluation after its arguments: options, data, model, batches, the
 * --out file and the report.  Frees r; returns the exit status. */
static int eval_main(eval_run *r)
{
    const eval_args *a = &r->a;
    r->t_start = nesf_clock_s();
    nesf_error err;
    nesf_decode_opts_default(&r->opts);
    r->opts.repair_lattice = !a->strict;
    nesf_match_opts_default(&r->mopts);
    int status = 2;
    if (cli_decode_options("eval", "options", a->options, &r->opts)) goto done;
    if (cli_refine_options("eval", a->refine, &r->ropts)) goto done;
    if (r->opts.symmetrize) { /* the metrics pair atoms of one cell with those of the other */
        fprintf(stderr, "nesf eval: --options: symmetrize changes the cell (and its atom count) the "
                        "metrics compare with the truth; evaluate without it\n");
        goto done;
    }
    status = 1;
    if (nesf_dataset_load(a->data, &r->d, &err)) {
        fprintf(stderr, "nesf eval: %s\n", err.msg);
        goto done;
    }
    const int n = r->n = a->limit >= 0 && a->limit < r->d.n ? a->limit : r->d.n;
    for (int i = 0; i < n; i++) r->maxn = r->d.s[i]->n > r->maxn ? r->d.s[i]->n : r->maxn;
    r->rec = calloc((size_t)(n ? n : 1), sizeof *r->rec);
    r->items = calloc((size_t)(n ? n : 1), sizeof *r->items);
    r->ierr = calloc((size_t)(n ? n : 1), sizeof *r->ierr);
    r->by_n = calloc((size_t)r->maxn + 1, sizeof *r->by_n);
    r->keep = calloc((size_t)a->batch, sizeof *r->keep);
    if (!r->rec || !r->items || !r->ierr || !r->by_n || !r->keep) {
        fprintf(stderr, "nesf eval: out of memory\n");
        goto done;
    }
    if (eval_setup(r) || eval_batches(r)) goto done;
    eval_tally(r);
    const double wall = nesf_clock_s() - r->t_start;
    if (a->out) {
        /* line i is structure i: a failure is a record with its error */
        const char **ids = malloc((size_t)(n ? n : 1) * sizeof *ids);
        for (int i = 0; ids && i < n; i++) ids[i] = r->d.s[i]->id;
        char *text = ids ? cli_format_structures(r->rec, n, "jsonl", ids, r->ierr) : NULL;
        free(ids);
        if (!text || nesf_write_file(a->out, text, strlen(text), &err)) {
            fprintf(stderr, "nesf eval: %s\n", text ? err.msg : "out of memory");
            free(text);
            goto done;
        }
        free(text);
    }
    if (a->json) report_json(r, wall);
    else report_text(r, wall);
    status = 0;
done:
    eval_free(r);
    return status;
}

int nesf_cmd_eval(int argc, char **argv)
{
    eval_run *r = calloc(1, sizeof *r);
    if (!r) {
        fprintf(stderr, "nesf eval: out of memory\n");
        return 1;
    }
    int rc = parse_args(argc, argv, &r->a);
    if (rc >= 0) {
        free(r);
        return rc;
    }
    return eval_main(r);
}

int nesf_eval_reconstruct(const char *model, const char *data, const char *out, const char *backend,
                          int threads, const char *options, const char *refine)
{
    eval_run *r = calloc(1, sizeof *r);
    if (!r) {
        fprintf(stderr, "nesf eval: out of memory\n");
        return 1;
    }
    r->a = (eval_args){.model = model, .data = data, .out = out, .backend = backend, .options = options,
                       .refine = refine, .threads = threads, .batch = 64, .limit = -1};
    return eval_main(r);
}

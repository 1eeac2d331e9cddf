/* nesf latents - encode a dataset, and optionally map the latents to 2-D
 * with t-SNE as SVG scatter plots coloured by cell volume, atom count or
 * crystal system (paper §2.5, Fig. 7). */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_opts.h"
#include "commands.h"
#include "dataset.h"
#include "fileio.h"
#include "latent_cli.h"
#include "svg.h"
#include "tsne.h"

static void usage(FILE *f)
{
    fprintf(f,
        "usage: nesf latents --model M.safetensors --data FILE.jsonl [options]\n"
        "Encodes every structure and writes the latents as JSON ({\"ids\", \"latents\",\n"
        "\"meta\", and \"tsne\" when computed}; `nesf decode` reads it back).\n\n"
        "  --out FILE         latents JSON (default stdout, unless --svg is given)\n"
        "  --svg FILE         t-SNE map as SVG\n"
        "  --color WHAT       volume (default), atoms, spacegroup (crystal system) or\n"
        "                     all (three maps: FILE with -volume, -atoms, -spacegroup)\n"
        "  --perplexity P     t-SNE perplexity (30)\n"
        "  --iterations N     t-SNE iterations (1000)\n"
        "  --theta T          Barnes-Hut opening angle (0.5); --exact for the O(n²) method\n"
        "  --seed N           t-SNE initial layout (42)\n"
        "  --limit N          only the first N structures\n"
        "  --backend KIND     cpu, cuda or auto;  --threads N\n");
}

static const char *const systems[7] = {"triclinic", "monoclinic", "orthorhombic", "tetragonal",
                                       "trigonal", "hexagonal", "cubic"};

/* Crystal system index of space group number sg, -1 when unknown. */
static int crystal_system(int sg)
{
    static const int last[7] = {2, 15, 74, 142, 167, 194, 230};
    for (int k = 0; k < 7; k++)
        if (sg >= 1 && sg <= last[k]) return k;
    return -1;
}

/* FILE.svg -> FILE-what.svg */
static void suffixed(const char *path, const char *what, char *buf, size_t n)
{
    size_t len = strlen(path);
    if (len > 4 && !strcmp(path + len - 4, ".svg"))
        snprintf(buf, n, "%.*s-%s.svg", (int)(len - 4), path, what);
    else
        snprintf(buf, n, "%s-%s.svg", path, what);
}

static int write_map(const char *path, const char *what, int n, const double *Y,
                     const double *vol, const double *atoms, const double *sys,
                     const char *const *tips, const char *title)
{
    char label[64];
    const char *names[7];
    int counts[7] = {0};
    char nb[7][48];
    nesf_scatter p = {n, Y, NULL, 0, 0, NULL, title, NULL, tips};
    if (!strcmp(what, "volume")) {
        p.value = vol;
        p.value_label = "cell volume (Å³)";
    } else if (!strcmp(what, "atoms")) {
        p.value = atoms;
        p.value_label = "atoms in the cell";
    } else {
        for (int i = 0; i < n; i++)
            if (sys[i] >= 0) counts[(int)sys[i]]++;
        for (int k = 0; k < 7; k++) {
            snprintf(nb[k], sizeof nb[k], "%s (%d)", systems[k], counts[k]);
            names[k] = nb[k];
        }
        p.value = sys;
        p.categorical = 1;
        p.ncat = 7;
        p.names = names;
        snprintf(label, sizeof label, "crystal system");
        p.value_label = label;
    }
    char *svg = nesf_svg_scatter(&p);
    nesf_error err;
    if (!svg || nesf_write_file(path, svg, strlen(svg), &err)) {
        fprintf(stderr, "nesf latents: %s\n", svg ? err.msg : "out of memory");
        free(svg);
        return 1;
    }
    free(svg);
    fprintf(stderr, "nesf latents: wrote %s\n", path);
    return 0;
}

/* Everything one run holds, shared by its steps below. */
typedef struct lat_run {
    const char *model, *data, *out, *svg, *color, *backend;
    int threads, limit, n, L;
    nesf_tsne_opts to;
    nesf_dataset d;
    nesf_backend *be;
    nesf_model *m;
    float *z;                 /* n x L */
    double *Y;                /* n x 2, the t-SNE map */
    double *vol, *atoms, *sys;
    char **tips;
    json_t *root;
} lat_run;

/* Options into r; -1 to go on, else the exit status. */
static int lat_args(lat_run *r, int argc, char **argv)
{
    r->color = "volume";
    r->limit = -1;
    nesf_tsne_opts_default(&r->to);
    long seed = (long)r->to.seed;
    int exact = 0;
    const cli_opt opts[] = {
        CLI_OPT_MODEL(&r->model), CLI_OPT_DATA(&r->data), CLI_OPT_OUT(&r->out), CLI_S("svg", &r->svg),
        CLI_S("color", &r->color), CLI_POS("perplexity", &r->to.perplexity),
        CLI_I("iterations", &r->to.iterations, 0, 1 << 24), CLI_D("theta", &r->to.theta, 0, 1e6),
        CLI_F("exact", &exact), CLI_L("seed", &seed, 0, 9.2e18), CLI_OPT_LIMIT(&r->limit),
        CLI_OPT_BACKEND(&r->backend), CLI_OPT_THREADS(&r->threads), CLI_OPT_END};
    int rc = cli_parse("latents", argc, argv, opts, usage, NULL);
    if (rc >= 0) return rc;
    const char *c = r->color;
    if (!r->model || !r->data ||
        (strcmp(c, "volume") && strcmp(c, "atoms") && strcmp(c, "spacegroup") && strcmp(c, "all"))) {
        usage(stderr);
        return 2;
    }
    r->to.seed = (uint64_t)seed;
    if (exact) r->to.theta = 0;
    if (!r->out && !r->svg) r->out = "-";
    return -1;
}

/* Encodes the first n structures, 256 at a time, with a progress bar. */
static int lat_encode(lat_run *r)
{
    nesf_error err;
    const double t0 = nesf_clock_s();
    cli_progress bar;
    cli_progress_start(&bar, "encode", r->n);
    for (int b0 = 0; b0 < r->n; b0 += 256) {
        int S = r->n - b0 < 256 ? r->n - b0 : 256;
        if (nesf_model_encode(r->m, r->d.s + b0, S, r->z + (size_t)b0 * r->L, &err)) {
            cli_progress_end(&bar);
            fprintf(stderr, "nesf latents: structures %d..%d: %s\n", b0, b0 + S - 1, err.msg);
            return 1;
        }
        cli_progress_update(&bar, b0 + S);
    }
    cli_progress_end(&bar);
    fprintf(stderr, "nesf latents: encoded %d structures in %.2f s\n", r->n, nesf_clock_s() - t0);
    return 0;
}

/* The output JSON (ids, latents, meta) and each structure's volume, atom
 * count, crystal system and tooltip for the maps. */
static void lat_json(lat_run *r)
{
    json_t *root = r->root = json_object();
    json_t *ids = json_array(), *lat = json_array(), *meta = json_array();
    json_object_set_new(root, "model", json_string(r->model));
    json_object_set_new(root, "data", json_string(r->data));
    json_object_set_new(root, "latent_size", json_integer(r->L));
    json_object_set_new(root, "ids", ids);
    json_object_set_new(root, "latents", lat);
    json_object_set_new(root, "meta", meta);
    for (int i = 0; i < r->n; i++) {
        const nesf_structure *s = r->d.s[i];
        char f[64], sym[24];
        nesf_structure_formula(s, f, sizeof f);
        int sg = nesf_structure_spacegroup(s, CLI_SYMPREC, sym, sizeof sym);
        r->vol[i] = nesf_lattice_volume(&s->lat);
        r->atoms[i] = s->n;
        r->sys[i] = crystal_system(sg) >= 0 ? crystal_system(sg) : NAN;
        size_t tl = strlen(s->id) + strlen(f) + strlen(sym) + 64;
        if ((r->tips[i] = malloc(tl)))
            snprintf(r->tips[i], tl, "%s %s, %d atoms, %s, %.1f Å³", s->id, f, s->n, sg > 0 ? sym : "?", r->vol[i]);
        json_t *row = json_array();
        for (int k = 0; k < r->L; k++) json_array_append_new(row, json_real(r->z[(size_t)i * r->L + k]));
        json_array_append_new(lat, row);
        json_array_append_new(ids, json_string(s->id));
        json_array_append_new(meta, json_pack("{s:s, s:s, s:i, s:f, s:i}", "id", s->id, "formula", f, "atoms",
                                              s->n, "volume", r->vol[i], "spacegroup", sg));
    }
}

/* The t-SNE map of the latents into the JSON and the SVG file(s). */
static int lat_maps(lat_run *r)
{
    const int n = r->n;
    nesf_error err;
    if (!(r->Y = malloc((size_t)n * 2 * sizeof *r->Y))) {
        fprintf(stderr, "nesf latents: out of memory\n");
        return 1;
    }
    if (n < 2) {
        fprintf(stderr, "nesf latents: a t-SNE map needs at least 2 structures\n");
        return 1;
    }
    const double t0 = nesf_clock_s();
    double kl;
    if (nesf_tsne(r->z, n, r->L, &r->to, r->Y, &kl, &err)) {
        fprintf(stderr, "nesf latents: %s\n", err.msg);
        return 1;
    }
    fprintf(stderr, "nesf latents: t-SNE (%s, perplexity %g, %d iterations) in %.2f s",
            r->to.theta == 0 ? "exact" : "Barnes-Hut", r->to.perplexity, r->to.iterations, nesf_clock_s() - t0);
    if (isfinite(kl)) fprintf(stderr, ", KL %.4f", kl);
    fprintf(stderr, "\n");
    json_t *ts = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(ts, json_pack("[f,f]", r->Y[2 * i], r->Y[2 * i + 1]));
    json_object_set_new(r->root, "tsne", ts);
    char title[256];
    snprintf(title, sizeof title, "t-SNE of %d latents (%s)", n, r->data);
    static const char *const what[3] = {"volume", "atoms", "spacegroup"};
    const int all = !strcmp(r->color, "all");
    for (int k = 0; k < 3; k++) {
        if (!all && strcmp(r->color, what[k])) continue;
        char path[4096];
        if (all) suffixed(r->svg, what[k], path, sizeof path);
        else snprintf(path, sizeof path, "%s", r->svg);
        if (write_map(path, what[k], n, r->Y, r->vol, r->atoms, r->sys, (const char *const *)r->tips, title))
            return 1;
    }
    return 0;
}

/* The JSON, one line, to --out (or stdout). */
static int lat_write(const lat_run *r)
{
    nesf_error err;
    char *t = json_dumps(r->root, JSON_COMPACT | JSON_REAL_PRECISION(9));
    size_t tl = t ? strlen(t) : 0;
    char *p = t ? realloc(t, tl + 2) : NULL;
    if (!p) {
        free(t);
        fprintf(stderr, "nesf latents: out of memory\n");
        return 1;
    }
    p[tl] = '\n';
    p[tl + 1] = 0;
    int rc = nesf_write_file(r->out, p, tl + 1, &err);
    free(p);
    if (rc) fprintf(stderr, "nesf latents: %s\n", err.msg);
    return rc ? 1 : 0;
}

/* Frees the run, whatever step it stopped at. */
static void lat_free(lat_run *r)
{
    json_decref(r->root);
    for (int i = 0; r->tips && i < r->n; i++) free(r->tips[i]);
    free(r->tips);
    free(r->z);
    free(r->Y);
    free(r->vol);
    free(r->atoms);
    free(r->sys);
    if (r->m) cli_close_model(r->be, r->m);
    nesf_dataset_free(&r->d);
}

int nesf_cmd_latents(int argc, char **argv)
{
    lat_run r = {0};
    int rc = lat_args(&r, argc, argv);
    if (rc >= 0) return rc;
    nesf_error err;
    if (nesf_dataset_load(r.data, &r.d, &err)) {
        fprintf(stderr, "nesf latents: %s\n", err.msg);
        return 1;
    }
    const int n = r.n = r.limit >= 0 && r.limit < r.d.n ? r.limit : r.d.n;
    int status = 1;
    if (n < 1) {
        fprintf(stderr, "nesf latents: %s has no structures\n", r.data);
        goto done;
    }
    if (cli_open_model("latents", r.model, r.backend, r.threads, &r.be, &r.m)) goto done;
    r.L = nesf_model_latent_size(r.m);
    r.z = malloc((size_t)n * r.L * sizeof *r.z);
    r.vol = malloc((size_t)n * sizeof *r.vol);
    r.atoms = malloc((size_t)n * sizeof *r.atoms);
    r.sys = malloc((size_t)n * sizeof *r.sys);
    r.tips = calloc((size_t)n, sizeof *r.tips);
    if (!r.z || !r.vol || !r.atoms || !r.sys || !r.tips) {
        fprintf(stderr, "nesf latents: out of memory\n");
        goto done;
    }
    if (lat_encode(&r)) goto done;
    lat_json(&r);
    if (r.svg && lat_maps(&r)) goto done;
    if (r.out && lat_write(&r)) goto done;
    status = 0;
done:
    lat_free(&r);
    return status;
}

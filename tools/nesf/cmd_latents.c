/* nesf latents - encode a dataset, and optionally map the latents to 2-D
 * with t-SNE as SVG scatter plots coloured by cell volume, atom count or
 * crystal system (paper §2.5, Fig. 7). */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

int nesf_cmd_latents(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"data", required_argument, 0, 'd'},
        {"out", required_argument, 0, 'o'},   {"svg", required_argument, 0, 's'},
        {"color", required_argument, 0, 'c'}, {"perplexity", required_argument, 0, 'p'},
        {"iterations", required_argument, 0, 'i'}, {"theta", required_argument, 0, 'T'},
        {"exact", no_argument, 0, 'e'},       {"seed", required_argument, 0, 'S'},
        {"limit", required_argument, 0, 'l'}, {"backend", required_argument, 0, 'k'},
        {"threads", required_argument, 0, 't'}, {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *model = NULL, *data = NULL, *out = NULL, *svg = NULL, *color = "volume";
    const char *backend = NULL;
    int threads = 0, limit = -1, c;
    nesf_tsne_opts to;
    nesf_tsne_opts_default(&to);
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'd': data = optarg; break;
        case 'o': out = optarg; break;
        case 's': svg = optarg; break;
        case 'c': color = optarg; break;
        case 'p': to.perplexity = atof(optarg); break;
        case 'i': to.iterations = atoi(optarg); break;
        case 'T': to.theta = atof(optarg); break;
        case 'e': to.theta = 0; break;
        case 'S': to.seed = strtoull(optarg, NULL, 10); break;
        case 'l': limit = atoi(optarg); break;
        case 'k': backend = optarg; break;
        case 't': threads = atoi(optarg); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!model || !data || optind != argc ||
        (strcmp(color, "volume") && strcmp(color, "atoms") && strcmp(color, "spacegroup") &&
         strcmp(color, "all"))) {
        usage(stderr);
        return 2;
    }
    if (!out && !svg) out = "-";
    nesf_error err;
    nesf_dataset d = {0};
    if (nesf_dataset_load(data, &d, &err)) {
        fprintf(stderr, "nesf latents: %s\n", err.msg);
        return 1;
    }
    const int n = limit >= 0 && limit < d.n ? limit : d.n;
    if (n < 1) {
        fprintf(stderr, "nesf latents: %s has no structures\n", data);
        nesf_dataset_free(&d);
        return 1;
    }
    nesf_backend *be;
    nesf_model *m;
    if (cli_open_model("latents", model, backend, threads, &be, &m)) {
        nesf_dataset_free(&d);
        return 1;
    }
    const int L = nesf_model_latent_size(m);
    int status = 1;
    float *z = malloc((size_t)n * L * sizeof *z);
    double *Y = NULL, *vol = malloc((size_t)n * sizeof *vol);
    double *atoms = malloc((size_t)n * sizeof *atoms), *sys = malloc((size_t)n * sizeof *sys);
    char **tips = calloc((size_t)n, sizeof *tips);
    json_t *root = NULL;
    if (!z || !vol || !atoms || !sys || !tips) {
        fprintf(stderr, "nesf latents: out of memory\n");
        goto done;
    }
    double t0 = nesf_clock_s();
    cli_progress bar;
    cli_progress_start(&bar, "encode", n);
    for (int b0 = 0; b0 < n; b0 += 256) {
        int S = n - b0 < 256 ? n - b0 : 256;
        if (nesf_model_encode(m, d.s + b0, S, z + (size_t)b0 * L, &err)) {
            cli_progress_end(&bar);
            fprintf(stderr, "nesf latents: structures %d..%d: %s\n", b0, b0 + S - 1, err.msg);
            goto done;
        }
        cli_progress_update(&bar, b0 + S);
    }
    cli_progress_end(&bar);
    fprintf(stderr, "nesf latents: encoded %d structures in %.2f s\n", n, nesf_clock_s() - t0);

    root = json_object();
    json_t *ids = json_array(), *lat = json_array(), *meta = json_array();
    json_object_set_new(root, "model", json_string(model));
    json_object_set_new(root, "data", json_string(data));
    json_object_set_new(root, "latent_size", json_integer(L));
    json_object_set_new(root, "ids", ids);
    json_object_set_new(root, "latents", lat);
    json_object_set_new(root, "meta", meta);
    for (int i = 0; i < n; i++) {
        const nesf_structure *s = d.s[i];
        char f[64], sym[24];
        nesf_structure_formula(s, f, sizeof f);
        int sg = nesf_structure_spacegroup(s, CLI_SYMPREC, sym, sizeof sym);
        vol[i] = nesf_lattice_volume(&s->lat);
        atoms[i] = s->n;
        sys[i] = crystal_system(sg) >= 0 ? crystal_system(sg) : NAN;
        size_t tl = strlen(s->id) + strlen(f) + strlen(sym) + 64;
        if ((tips[i] = malloc(tl)))
            snprintf(tips[i], tl, "%s %s, %d atoms, %s, %.1f Å³", s->id, f, s->n,
                     sg > 0 ? sym : "?", vol[i]);
        json_t *row = json_array();
        for (int k = 0; k < L; k++) json_array_append_new(row, json_real(z[(size_t)i * L + k]));
        json_array_append_new(lat, row);
        json_array_append_new(ids, json_string(s->id));
        json_array_append_new(meta, json_pack("{s:s, s:s, s:i, s:f, s:i}", "id", s->id, "formula",
                                              f, "atoms", s->n, "volume", vol[i], "spacegroup",
                                              sg));
    }
    if (svg) {
        Y = malloc((size_t)n * 2 * sizeof *Y);
        if (!Y) {
            fprintf(stderr, "nesf latents: out of memory\n");
            goto done;
        }
        if (n < 2) {
            fprintf(stderr, "nesf latents: a t-SNE map needs at least 2 structures\n");
            goto done;
        }
        t0 = nesf_clock_s();
        double kl;
        if (nesf_tsne(z, n, L, &to, Y, &kl, &err)) {
            fprintf(stderr, "nesf latents: %s\n", err.msg);
            goto done;
        }
        fprintf(stderr, "nesf latents: t-SNE (%s, perplexity %g, %d iterations) in %.2f s",
                to.theta == 0 ? "exact" : "Barnes-Hut", to.perplexity, to.iterations,
                nesf_clock_s() - t0);
        if (isfinite(kl)) fprintf(stderr, ", KL %.4f", kl);
        fprintf(stderr, "\n");
        json_t *ts = json_array();
        for (int i = 0; i < n; i++) json_array_append_new(ts, json_pack("[f,f]", Y[2 * i], Y[2 * i + 1]));
        json_object_set_new(root, "tsne", ts);
        char title[256];
        snprintf(title, sizeof title, "t-SNE of %d latents (%s)", n, data);
        static const char *const what[3] = {"volume", "atoms", "spacegroup"};
        for (int k = 0; k < 3; k++) {
            int all = !strcmp(color, "all");
            if (!all && strcmp(color, what[k])) continue;
            char path[4096];
            if (all) suffixed(svg, what[k], path, sizeof path);
            else snprintf(path, sizeof path, "%s", svg);
            if (write_map(path, what[k], n, Y, vol, atoms, sys, (const char *const *)tips, title))
                goto done;
        }
    }
    if (out) {
        char *t = json_dumps(root, JSON_COMPACT | JSON_REAL_PRECISION(9));
        size_t tl = t ? strlen(t) : 0;
        char *p = t ? realloc(t, tl + 2) : NULL;
        if (!p) {
            free(t);
            fprintf(stderr, "nesf latents: out of memory\n");
            goto done;
        }
        p[tl] = '\n';
        p[tl + 1] = 0;
        int rc = nesf_write_file(out, p, tl + 1, &err);
        free(p);
        if (rc) {
            fprintf(stderr, "nesf latents: %s\n", err.msg);
            goto done;
        }
    }
    status = 0;
done:
    json_decref(root);
    for (int i = 0; tips && i < n; i++) free(tips[i]);
    free(tips);
    free(z);
    free(Y);
    free(vol);
    free(atoms);
    free(sys);
    cli_close_model(be, m);
    nesf_dataset_free(&d);
    return status;
}

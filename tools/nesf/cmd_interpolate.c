/* nesf interpolate - decode the straight line between two latents (paper
 * §2.4): each frame's reduced formula, atom count, space group and CIF. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strbuf.h"
#include "cif.h"
#include "cli_opts.h"
#include "commands.h"
#include "fileio.h"
#include "interp.h"
#include "latent_cli.h"
#include "sio.h"
#include "sjson.h"

static void usage(FILE *f)
{
    fprintf(f,
        "usage: nesf interpolate --model M.safetensors [options] A B\n"
        "A and B are structures (CIF or JSON; the first structure of the file) or\n"
        "latent vectors (JSON).  Decodes (1 - t) z_A + t z_B for --steps evenly\n"
        "spaced t in [0, 1] in one batched pass.\n\n"
        "  --steps N          frames, end points included (default 10)\n"
        "  --format FMT       text (default: a table, then each frame's CIF) or json\n"
        "  --out FILE         write there instead of stdout\n"
        "  --options JSON     decode options (or @FILE)\n"
        "  --backend KIND     cpu, cuda or auto;  --threads N\n");
}

/* The latent of an end point: a latent file, else its first structure encoded. */
static int end_latent(nesf_model *m, const char *path, float *z, char *name, size_t nsize)
{
    nesf_error err;
    char *text;
    size_t len;
    if (nesf_sio_slurp(path, &text, &len, &err)) {
        fprintf(stderr, "nesf interpolate: %s\n", err.msg);
        return 1;
    }
    float *lz;
    int n, rc = cli_parse_latents(text, nesf_model_latent_size(m), &lz, &n, &err);
    if (rc == NESF_OK) {
        if (n > 1) fprintf(stderr, "nesf interpolate: %s: using the first of %d latents\n", path, n);
        memcpy(z, lz, (size_t)nesf_model_latent_size(m) * sizeof *z);
        snprintf(name, nsize, "latent %s", path);
        free(lz);
        free(text);
        return 0;
    }
    if (rc != NESF_ERR_FORMAT && rc != NESF_ERR_PARSE) {
        fprintf(stderr, "nesf interpolate: %s: %s\n", path, err.msg);
        free(text);
        return 1;
    }
    nesf_structure **s;
    rc = nesf_sio_read_buffer(text, len, path, NESF_FORMAT_AUTO, &s, &n, &err);
    free(text);
    if (rc || n < 1) {
        fprintf(stderr, "nesf interpolate: %s: %s\n", path, rc ? err.msg : "no structure");
        if (!rc) nesf_structure_list_free(s, n);
        return 1;
    }
    if (n > 1) fprintf(stderr, "nesf interpolate: %s: using the first of %d structures\n", path, n);
    rc = nesf_model_encode(m, s, 1, z, &err);
    if (rc) fprintf(stderr, "nesf interpolate: %s: %s\n", path, err.msg);
    char f[64];
    nesf_structure_formula(s[0], f, sizeof f);
    snprintf(name, nsize, "%s (%s)", f, s[0]->id[0] ? s[0]->id : path);
    nesf_structure_list_free(s, n);
    return rc ? 1 : 0;
}

/* The frames as a JSON array ({frame, t, formula, atoms, structure, cif}
 * or {frame, t, error}), one text ending in a newline; NULL when out of
 * memory. */
static char *frames_json(nesf_structure **s, const nesf_error *ierr, int steps, size_t *rlen)
{
    json_t *arr = json_array();
    for (int k = 0; k < steps && arr; k++) {
        json_t *fr = json_object();
        json_object_set_new(fr, "frame", json_integer(k));
        json_object_set_new(fr, "t", json_real(nesf_interp_t(k, steps)));
        if (s[k]) {
            snprintf(s[k]->id, sizeof s[k]->id, "frame-%d", k);
            char f[64], *cif = nesf_cif_write(s[k]);
            nesf_structure_formula(s[k], f, sizeof f);
            json_object_set_new(fr, "formula", json_string(f));
            json_object_set_new(fr, "atoms", json_integer(s[k]->n));
            json_object_set_new(fr, "structure", nesf_sjson_to_json(s[k], NESF_SJSON_FULL, CLI_SYMPREC));
            json_object_set_new(fr, "cif", cif ? json_string(cif) : json_null());
            free(cif);
        } else {
            json_object_set_new(fr, "error", json_string(ierr[k].msg));
        }
        json_array_append_new(arr, fr);
    }
    char *j = arr ? json_dumps(arr, JSON_INDENT(1) | JSON_REAL_PRECISION(10)) : NULL;
    json_decref(arr);
    if (!j) return NULL;
    nesf_strbuf b = {0};
    nesf_strbuf_printf(&b, "%s\n", j);
    free(j);
    return nesf_strbuf_take(&b, rlen);
}

/* The frames as text: a table (t, formula, atoms, space group or the
 * error), then each frame's CIF; NULL when out of memory. */
static char *frames_text(nesf_structure **s, const nesf_error *ierr, int steps, char name[2][160], size_t *rlen)
{
    nesf_strbuf mem = {0};
    nesf_strbuf_printf(&mem, "# interpolation: %s -> %s, %d frames\n", name[0], name[1], steps);
    nesf_strbuf_printf(&mem, "# %5s %6s %-16s %6s %-12s\n", "frame", "t", "formula", "atoms", "spacegroup");
    for (int k = 0; k < steps; k++) {
        char f[64] = "-", sg[32] = "-";
        if (s[k]) {
            nesf_structure_formula(s[k], f, sizeof f);
            char sym[24];
            int num = nesf_structure_spacegroup(s[k], CLI_SYMPREC, sym, sizeof sym);
            if (num > 0) snprintf(sg, sizeof sg, "%s (%d)", sym, num);
        }
        nesf_strbuf_printf(&mem, "  %5d %6.3f %-16s %6d %-12s%s%s\n", k, nesf_interp_t(k, steps), f[0] ? f : "(empty)",
                s[k] ? s[k]->n : 0, sg, s[k] ? "" : "  ", s[k] ? "" : ierr[k].msg);
    }
    int bad = 0;
    for (int k = 0; k < steps && !bad; k++) {
        if (!s[k]) continue;
        snprintf(s[k]->id, sizeof s[k]->id, "frame-%d_t%.3f", k, nesf_interp_t(k, steps));
        char *cif = nesf_cif_write(s[k]);
        if (cif) nesf_strbuf_printf(&mem, "\n%s", cif);
        else bad = 1;
        free(cif);
    }
    if (bad) {
        nesf_strbuf_free(&mem);
        return NULL;
    }
    return nesf_strbuf_take(&mem, rlen);
}

int nesf_cmd_interpolate(int argc, char **argv)
{
    const char *model = NULL, *fmt = "text", *out = "-", *options = NULL, *backend = NULL;
    int threads = 0, steps = 10, arg0;
    const cli_opt opts[] = {CLI_OPT_MODEL(&model), CLI_I("steps", &steps, 1, NESF_INTERP_MAX_STEPS),
                            CLI_S("format", &fmt), CLI_OPT_OUT(&out), CLI_OPT_OPTIONS(&options),
                            CLI_OPT_BACKEND(&backend), CLI_OPT_THREADS(&threads), CLI_OPT_END};
    int prc = cli_parse("interpolate", argc, argv, opts, usage, &arg0);
    if (prc >= 0) return prc;
    if (!model || arg0 != argc - 2 || (strcmp(fmt, "text") && strcmp(fmt, "json"))) {
        usage(stderr);
        return 2;
    }
    nesf_error err;
    nesf_decode_opts o;
    nesf_decode_opts_default(&o);
    if (cli_decode_options("interpolate", "options", options, &o)) return 2;
    nesf_backend *be;
    nesf_model *m;
    if (cli_open_model("interpolate", model, backend, threads, &be, &m)) return 1;
    const int L = nesf_model_latent_size(m);
    int status = 1;
    float *z = malloc((size_t)2 * L * sizeof *z);
    nesf_structure **s = calloc((size_t)steps, sizeof *s);
    nesf_error *ierr = calloc((size_t)steps, sizeof *ierr);
    char name[2][160], *res = NULL;
    size_t rlen = 0;
    nesf_decode_stats st;
    if (!z || !s || !ierr) {
        fprintf(stderr, "nesf interpolate: out of memory\n");
        goto done;
    }
    if (end_latent(m, argv[arg0], z, name[0], sizeof name[0]) ||
        end_latent(m, argv[arg0 + 1], z + L, name[1], sizeof name[1]))
        goto done;
    if (nesf_interpolate_latents(m, z, z + L, steps, &o, s, ierr, &st, &err)) {
        fprintf(stderr, "nesf interpolate: %s\n", err.msg);
        goto done;
    }
    res = !strcmp(fmt, "json") ? frames_json(s, ierr, steps, &rlen) : frames_text(s, ierr, steps, name, &rlen);
    if (!res) {
        fprintf(stderr, "nesf interpolate: out of memory\n");
        goto done;
    }
    if (nesf_write_file(out, res, rlen, &err)) {
        fprintf(stderr, "nesf interpolate: %s\n", err.msg);
        goto done;
    }
    fprintf(stderr, "nesf interpolate: %d frames decoded in %.1f ms (%s)\n", steps, st.ms, be->device);
    status = 0;
done:
    free(res);
    nesf_structure_list_free(s, s ? steps : 0);
    free(ierr);
    free(z);
    cli_close_model(be, m);
    return status;
}

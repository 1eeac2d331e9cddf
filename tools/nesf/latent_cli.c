/* latent_cli.c - see latent_cli.h. */
#include "latent_cli.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cif.h"
#include "strbuf.h"
#include "sio.h"
#include "sjson.h"

void cli_progress_start(cli_progress *p, const char *label, long total)
{
    p->label = label;
    p->total = total;
    p->t0 = nesf_clock_s();
    p->tty = isatty(STDERR_FILENO);
    p->drawn = -1;
    cli_progress_update(p, 0);
}

void cli_progress_update(cli_progress *p, long done)
{
    if (!p->tty || p->total <= 0) return;
    int pm = (int)(1000 * done / p->total);
    if (pm == p->drawn) return;
    p->drawn = pm;
    enum { WIDTH = 30 };
    char bar[WIDTH + 1];
    int fill = pm * WIDTH / 1000;
    for (int i = 0; i < WIDTH; i++) bar[i] = i < fill ? '#' : '.';
    bar[WIDTH] = 0;
    double el = nesf_clock_s() - p->t0;
    fprintf(stderr, "\r%s [%s] %ld/%ld  %.1f s", p->label, bar, done, p->total, el);
    if (done > 0 && done < p->total)
        fprintf(stderr, " (eta %.0f s)  ", el / done * (p->total - done));
    else
        fprintf(stderr, "            ");
    fflush(stderr);
}

void cli_progress_end(cli_progress *p)
{
    if (!p->tty) return;
    cli_progress_update(p, p->total);
    fputc('\n', stderr);
}

int cli_backend_open(const char *kind, int threads, nesf_backend **be, nesf_error *err)
{
    nesf_backend_params p;
    nesf_backend_params_default(&p);
    p.threads = threads;
    *be = NULL;
    int rc = nesf_backend_params_lookup(&p, getenv, err);
    return rc ? rc : nesf_backend_open(kind ? kind : "auto", &p, be, err);
}

int cli_open_model(const char *cmd, const char *path, const char *backend, int threads,
                   nesf_backend **be, nesf_model **m)
{
    nesf_error err;
    *be = NULL;
    *m = NULL;
    if (cli_backend_open(backend, threads, be, &err)) {
        fprintf(stderr, "nesf %s: %s\n", cmd, err.msg);
        return 1;
    }
    if (nesf_model_load(path, *be, m, &err)) {
        fprintf(stderr, "nesf %s: %s: %s\n", cmd, path, err.msg);
        nesf_backend_free(*be);
        *be = NULL;
        return 1;
    }
    return 0;
}

void cli_close_model(nesf_backend *be, nesf_model *m)
{
    nesf_model_free(m);
    nesf_backend_free(be);
}

/* One latent from a JSON array of numbers, or from an object's "z" (the
 * entries `nesf encode` and nesfd's /encode write). */
static int latent_row(const json_t *a, int latent, float *z, int idx, nesf_error *err)
{
    if (json_is_object(a)) a = json_object_get(a, "z");
    if (!json_is_array(a))
        return nesf_fail(err, NESF_ERR_INVALID, "latent %d is neither an array of numbers nor an object with \"z\"", idx);
    if ((int)json_array_size(a) != latent)
        return nesf_fail(err, NESF_ERR_INVALID, "latent %d has %zu values, the model takes %d",
                         idx, json_array_size(a), latent);
    for (int k = 0; k < latent; k++) {
        const json_t *v = json_array_get(a, (size_t)k);
        if (!json_is_number(v))
            return nesf_fail(err, NESF_ERR_INVALID, "latent %d, value %d is not a number", idx, k);
        double d = json_number_value(v);
        if (!isfinite(d) || fabs(d) > 3e38)
            return nesf_fail(err, NESF_ERR_INVALID, "latent %d, value %d is not finite", idx, k);
        z[k] = (float)d;
    }
    return NESF_OK;
}

int cli_parse_latents(const char *text, int latent, float **z, int *n, nesf_error *err)
{
    *z = NULL;
    *n = 0;
    json_error_t je;
    json_t *root = json_loads(text, JSON_DECODE_ANY, &je);
    if (!root) return nesf_fail(err, NESF_ERR_PARSE, "line %d: %s", je.line, je.text);
    const json_t *v = root;
    if (json_is_object(root)) {
        v = json_object_get(root, "latents");
        if (!v) v = json_object_get(root, "latent");
    }
    int rc = NESF_OK;
    if (!json_is_array(v) || json_array_size(v) == 0) {
        rc = nesf_fail(err, NESF_ERR_FORMAT, "not a latent vector or a list of them");
        goto done;
    }
    int many = json_is_array(json_array_get(v, 0)) || json_is_object(json_array_get(v, 0));
    int cnt = many ? (int)json_array_size(v) : 1;
    if (!many && !json_is_number(json_array_get(v, 0))) {
        rc = nesf_fail(err, NESF_ERR_FORMAT, "not a latent vector or a list of them");
        goto done;
    }
    *z = malloc((size_t)cnt * latent * sizeof **z);
    if (!*z) {
        rc = nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < cnt && !rc; i++)
        rc = latent_row(many ? json_array_get(v, (size_t)i) : v, latent, *z + (size_t)i * latent, i,
                        err);
    if (rc) {
        free(*z);
        *z = NULL;
    } else {
        *n = cnt;
    }
done:
    json_decref(root);
    return rc;
}

int cli_decode_options(const char *cmd, const char *flag, const char *arg, nesf_decode_opts *o)
{
    if (!arg) return 0;
    nesf_error err;
    int rc;
    if (arg[0] != '@') {
        rc = nesf_decode_opts_from_text(o, arg, &err);
    } else {
        char *text;
        size_t len;
        rc = nesf_sio_slurp(arg + 1, &text, &len, &err);
        if (!rc) {
            rc = nesf_decode_opts_from_text(o, text, &err);
            free(text);
            if (rc) nesf_error_prefix(&err, "%s: ", arg + 1);
        }
    }
    if (!rc) return 0;
    fprintf(stderr, "nesf %s: --%s: %s\n", cmd, flag, err.msg);
    return 2;
}

int cli_refine_options(const char *cmd, const char *arg, nesf_refine_opts *o)
{
    nesf_refine_opts_default(o);
    if (!arg) return 0;
    nesf_error err;
    json_error_t je;
    json_t *v = json_loads(arg, JSON_DECODE_ANY, &je);
    int rc = v ? nesf_refine_opts_from_json(o, v, &err) : nesf_fail(&err, NESF_ERR_INVALID, "%s", je.text);
    json_decref(v);
    if (!rc) return 0;
    fprintf(stderr, "nesf %s: --refine: %s\n", cmd, err.msg);
    return 2;
}

/* Appends t and, when missing, a newline. */
static void append_line(nesf_strbuf *b, const char *t)
{
    size_t k = strlen(t);
    nesf_strbuf_append(b, t, k);
    if (k == 0 || t[k - 1] != '\n') nesf_strbuf_puts(b, "\n");
}

/* The record of structure i that has none: {"id"?, "index", "error"}. */
static json_t *error_record(int i, const char *id, const nesf_error *ierr)
{
    const char *why = ierr && ierr[i].msg[0] ? ierr[i].msg : "not reconstructed";
    json_t *o = json_pack("{s:i,s:s}", "index", i, "error", why);
    if (o && id && id[0]) json_object_set_new(o, "id", json_string(id));
    return o;
}

/* One structure as one text record: CIF (a comment for a failure) or a
 * JSON line in the dataset format (an error record for a failure). */
static char *one_text(nesf_structure *const *s, int i, int cif, const char *const *ids,
                      const nesf_error *ierr)
{
    const char *id = ids ? ids[i] : NULL;
    if (cif && s[i]) return nesf_cif_write(s[i]);
    if (cif) {
        char *t = NULL;
        const char *why = ierr && ierr[i].msg[0] ? ierr[i].msg : "not reconstructed";
        if (asprintf(&t, "# structure %d%s%s: %s\n", i, id && id[0] ? " " : "", id ? id : "",
                     why) < 0)
            return NULL;
        for (char *c = t + 1; *c && c[1]; c++) /* one comment line, whatever the message */
            if (*c == '\n' || *c == '\r') *c = ' ';
        return t;
    }
    json_t *j = s[i] ? nesf_sjson_to_json(s[i], NESF_SJSON_DATASET, 0) : error_record(i, id, ierr);
    char *t = j ? nesf_sjson_dumps(j) : NULL;
    json_decref(j);
    return t;
}

char *cli_format_structures(nesf_structure *const *s, int n, const char *fmt,
                            const char *const *ids, const nesf_error *ierr)
{
    int cif = !strcmp(fmt, "cif");
    if (cif || !strcmp(fmt, "jsonl")) {
        nesf_strbuf all = {0};
        for (int i = 0; i < n && !all.failed; i++) {
            char *t = one_text(s, i, cif, ids, ierr);
            if (t) append_line(&all, t);
            else all.failed = 1;
            free(t);
        }
        return nesf_strbuf_take(&all, NULL);
    }
    if (strcmp(fmt, "json")) return NULL;
    json_t *arr = json_array();
    for (int i = 0; i < n && arr; i++) {
        json_t *j = s[i] ? nesf_sjson_to_json(s[i], NESF_SJSON_FULL, CLI_SYMPREC)
                         : error_record(i, ids ? ids[i] : NULL, ierr);
        if (!j || json_array_append_new(arr, j)) {
            json_decref(arr);
            arr = NULL;
        }
    }
    char *t = arr ? json_dumps(arr, JSON_INDENT(1) | JSON_REAL_PRECISION(10)) : NULL;
    json_decref(arr);
    nesf_strbuf all = {0};
    if (t) append_line(&all, t);
    free(t);
    return t ? nesf_strbuf_take(&all, NULL) : NULL;
}

#include "engine.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "second_look.h"

struct nesfd_engine {
    nesfd_model_entry models[NESFD_MAX_MODELS];
    int n;
    int stopped;
};

/* FNV-1a over the weights file: a cheap id that changes with the weights. */
static int file_hash(const char *path, uint64_t *out, nesf_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) return nesf_fail(err, NESF_ERR_IO, "%s: %s", path, strerror(errno));
    uint64_t h = 1469598103934665603ull;
    unsigned char buf[65536];
    size_t k;
    while ((k = fread(buf, 1, sizeof buf, f)) > 0)
        for (size_t i = 0; i < k; i++) h = (h ^ buf[i]) * 1099511628211ull;
    int bad = ferror(f);
    fclose(f);
    if (bad) return nesf_fail(err, NESF_ERR_IO, "%s: read error", path);
    *out = h;
    return NESF_OK;
}

/* ---- jobs ---- */

nesfd_job *nesfd_job_new(nesfd_job_kind kind, nesfd_model_entry *me, int n)
{
    nesfd_job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    j->kind = kind;
    j->me = me;
    j->n = n;
    j->z = calloc((size_t)n * (size_t)me->latent, sizeof *j->z);
    if (kind != NESFD_JOB_DECODE) j->z_enc = calloc((size_t)n * (size_t)me->latent, sizeof *j->z_enc);
    if (kind == NESFD_JOB_LOOK) {
        j->rec = calloc((size_t)n, sizeof *j->rec);
        j->cycle = calloc((size_t)n, sizeof *j->cycle);
        j->z_dec = calloc((size_t)n * (size_t)me->latent, sizeof *j->z_dec);
    }
    j->s = calloc((size_t)n, sizeof *j->s);
    j->item_err = calloc((size_t)n, sizeof *j->item_err);
    /* zeroed first so that the padding bytes in the batching key are too */
    memset(&j->opts, 0, sizeof j->opts);
    nesf_decode_opts_default(&j->opts);
    nesf_refine_opts_default(&j->refine);
    j->refine.steps = 0; /* the daemon's own encodes (the confidence's E(D(z))) are
                            plain; a request's job takes the request's option */
    if (!j->z || !j->s || !j->item_err || (kind != NESFD_JOB_DECODE && !j->z_enc) ||
        (kind == NESFD_JOB_LOOK && (!j->rec || !j->cycle || !j->z_dec))) {
        nesfd_job_free(j);
        return NULL;
    }
    return j;
}

void nesfd_job_free(void *p)
{
    nesfd_job *j = p;
    if (!j) return;
    if (j->s) nesf_structure_list_free(j->s, j->n); /* frees the array too */
    if (j->rec) nesf_structure_list_free(j->rec, j->n);
    free(j->cycle);
    free(j->z_dec);
    free(j->z);
    free(j->z_enc);
    free(j->item_err);
    free(j);
}

nesfd_ticket *nesfd_job_ticket(nesfd_job *job, int64_t deadline_ns, nesfd_done_fn done, void *arg)
{
    /* the options' bytes, not a printed form: two option sets share a call
     * only when every field is bit-identical */
    char key[16 + 2 * (sizeof job->opts + sizeof job->refine) + 1];
    if (job->kind == NESFD_JOB_ENCODE) {
        snprintf(key, sizeof key, "encode");
    } else {
        const unsigned char *b = (const unsigned char *)&job->opts, *c = (const unsigned char *)&job->refine;
        int k = snprintf(key, sizeof key, job->kind == NESFD_JOB_LOOK ? "look:" : "decode:");
        for (size_t i = 0; i < sizeof job->opts; i++) k += snprintf(key + k, sizeof key - (size_t)k, "%02x", b[i]);
        for (size_t i = 0; job->kind == NESFD_JOB_LOOK && i < sizeof job->refine; i++)
            k += snprintf(key + k, sizeof key - (size_t)k, "%02x", c[i]);
    }
    nesfd_ticket *t = nesfd_ticket_new(job->n, key, deadline_ns, done, arg, job, nesfd_job_free);
    if (!t) nesfd_job_free(job);
    return t;
}

/* ---- batch functions (the model's worker thread) ---- */

static void fail_items(nesfd_item *const *items, int n, const nesf_error *e)
{
    for (int i = 0; i < n; i++) {
        nesfd_job *j = items[i]->data;
        j->item_err[items[i]->index] = *e;
        items[i]->status = e->code ? e->code : NESF_ERR_BACKEND;
    }
}

/* The decoder's cancel hook: stop when nobody waits for the batch (its
 * requests passed their deadline) or the shutdown grace ran out. */
static int batch_abandoned(void *batcher) { return nesfd_batcher_abandoned(batcher); }

static void run_decode(nesfd_model_entry *me, nesfd_item *const *items, int n)
{
    const nesfd_job *j0 = items[0]->data;
    size_t L = (size_t)me->latent;
    float *z = calloc((size_t)n * L, sizeof *z);
    nesf_structure **out = calloc((size_t)n, sizeof *out);
    nesf_error *ie = calloc((size_t)n, sizeof *ie), err = {0};
    if (!z || !out || !ie) {
        nesf_fail(&err, NESF_ERR_NOMEM, "out of memory for a batch of %d latents", n);
        fail_items(items, n, &err);
        goto done;
    }
    for (int i = 0; i < n; i++) {
        const nesfd_job *j = items[i]->data;
        memcpy(z + (size_t)i * L, j->z + (size_t)items[i]->index * L, L * sizeof *z);
    }
    nesf_decode_opts o = j0->opts;
    if (me->invariant) o.batch_particles = 1; /* one structure per GEMM chain */
    o.cancel = batch_abandoned;
    o.cancel_arg = me->batcher;
    int rc = nesf_decode(me->model, n, z, &o, out, ie, NULL, &err);
    if (rc) {
        fail_items(items, n, &err);
        goto done;
    }
    for (int i = 0; i < n; i++) {
        nesfd_job *j = items[i]->data;
        int idx = items[i]->index;
        if (out[i]) {
            j->s[idx] = out[i];
            items[i]->status = 0;
        } else {
            j->item_err[idx] = ie[i];
            items[i]->status = ie[i].code ? ie[i].code : NESF_ERR_INVALID;
        }
    }
done:
    free(z);
    free(out);
    free(ie);
}

static void run_encode(nesfd_model_entry *me, nesfd_item *const *items, int n)
{
    size_t L = (size_t)me->latent;
    float *z = malloc((size_t)n * L * sizeof *z);
    nesf_structure **s = calloc((size_t)n, sizeof *s);
    nesf_error err = {0};
    if (!z || !s) {
        nesf_fail(&err, NESF_ERR_NOMEM, "out of memory for a batch of %d structures", n);
        fail_items(items, n, &err);
        free(z);
        free(s);
        return;
    }
    for (int i = 0; i < n; i++) {
        const nesfd_job *j = items[i]->data;
        s[i] = j->s[items[i]->index];
    }
    /* fused: one call, and on failure one per structure to isolate the
     * culprit (others' items must not fail with it) */
    int rc = me->invariant ? 1 : nesf_model_encode(me->model, s, n, z, &err);
    for (int i = 0; i < n; i++) {
        nesfd_job *j = items[i]->data;
        int idx = items[i]->index;
        nesf_error e1 = err;
        int rci = rc && (n > 1 || me->invariant)
                ? nesf_model_encode(me->model, &s[i], 1, z + (size_t)i * L, &e1) : rc;
        if (!rci) memcpy(j->z_enc + (size_t)idx * L, z + (size_t)i * L, L * sizeof *z);
        if (!rci && j->refine.steps > 0)
            rci = nesf_refine_latents(me->model, &s[i], 1, z + (size_t)i * L, &j->refine, NULL, &e1);
        if (rci) {
            j->item_err[idx] = e1;
            items[i]->status = rci;
        } else {
            memcpy(j->z + (size_t)idx * L, z + (size_t)i * L, L * sizeof *z);
            items[i]->status = 0;
        }
    }
    free(z);
    free(s);
}

/* The second look: one call over the batch (its items share decode and
 * refinement options: the key); each structure is refined, decoded in its
 * own GEMMs (invariant batches) and judged alone, so its answer is the
 * same in any batch. */
static void run_look(nesfd_model_entry *me, nesfd_item *const *items, int n)
{
    const nesfd_job *j0 = items[0]->data;
    const size_t L = (size_t)me->latent;
    nesf_structure **s = calloc((size_t)n, sizeof *s), **rec = calloc((size_t)n, sizeof *rec);
    float *z0 = malloc((size_t)n * L * sizeof *z0), *z = malloc((size_t)n * L * sizeof *z);
    double *cyc = malloc((size_t)n * sizeof *cyc);
    nesf_error err = {0};
    int rc = s && rec && z0 && z && cyc ? NESF_OK : nesf_fail(&err, NESF_ERR_NOMEM, "out of memory for a second look at %d structures", n);
    for (int i = 0; !rc && i < n; i++) { /* the decodes are lent, and given back below */
        nesfd_job *j = items[i]->data;
        int idx = items[i]->index;
        s[i] = j->s[idx];
        rec[i] = j->rec[idx];
        j->rec[idx] = NULL;
        cyc[i] = j->cycle[idx];
        memcpy(z0 + i * L, j->z_enc + idx * L, L * sizeof *z0);
        memcpy(z + i * L, j->z + idx * L, L * sizeof *z);
    }
    nesf_decode_opts o = j0->opts;
    if (me->invariant) o.batch_particles = 1;
    o.cancel = batch_abandoned;
    o.cancel_arg = me->batcher;
    if (!rc) rc = nesf_second_look(me->model, s, n, z0, z, rec, cyc, &j0->refine, &o, NULL, &err);
    for (int i = 0; rec && i < n; i++) {
        nesfd_job *j = items[i]->data;
        int idx = items[i]->index;
        if (!j->rec[idx]) j->rec[idx] = rec[i];
        if (rc) continue;
        items[i]->status = 0;
        if (!memcmp(j->z + idx * L, z + i * L, L * sizeof *z)) continue; /* kept: E(rec) is the cycle's */
        j->cycle[idx] = cyc[i];
        memcpy(j->z + idx * L, z + i * L, L * sizeof *z);
        nesf_error e1; /* a replaced answer's encoding, for the self-check */
        items[i]->status = nesf_model_encode(me->model, &j->rec[idx], 1, j->z_dec + idx * L, &e1);
        if (items[i]->status) j->item_err[idx] = e1;
    }
    if (rc) fail_items(items, n, &err);
    free(s), free(rec), free(z0), free(z), free(cyc);
}

static void batch_fn(void *ctx, const char *key, nesfd_item *const *items, int n)
{
    nesfd_model_entry *me = ctx;
    const nesfd_job *j0 = items[0]->data;
    (void)key;
    if (j0->kind == NESFD_JOB_DECODE) run_decode(me, items, n);
    else if (j0->kind == NESFD_JOB_LOOK) run_look(me, items, n);
    else run_encode(me, items, n);
    double waits[256], *w = n <= 256 ? waits : malloc((size_t)n * sizeof *w);
    if (w)
        for (int i = 0; i < n; i++) w[i] = items[i]->queue_wait;
    nesfd_metrics_batch(me->metrics, me->metric,
                        j0->kind == NESFD_JOB_DECODE ? NESFD_OP_DECODE : NESFD_OP_ENCODE, n, w);
    if (w != waits) free(w);
}

/* ---- engine ---- */

static int depth_fn(void *ctx, int metric)
{
    nesfd_engine *e = ctx;
    for (int i = 0; i < e->n; i++)
        if (e->models[i].metric == metric && e->models[i].batcher)
            return nesfd_batcher_depth(e->models[i].batcher);
    return 0;
}

static int load_one(nesfd_model_entry *me, const nesfd_config *c, const nesfd_model_spec *spec,
                    nesfd_metrics *metrics, nesf_error *err)
{
    snprintf(me->name, sizeof me->name, "%s", spec->name);
    snprintf(me->path, sizeof me->path, "%s", spec->path);
    uint64_t h;
    int rc = file_hash(spec->path, &h, err);
    if (rc) return rc;
    snprintf(me->id, sizeof me->id, "%s-%016llx", spec->name, (unsigned long long)h);
    nesf_backend_params bp = c->backend_params;
    bp.threads = c->compute_threads;
    if ((rc = nesf_backend_open(c->backend, &bp, &me->be, err))) return rc;
    if ((rc = nesf_model_load(spec->path, me->be, &me->model, err))) return rc;
    me->latent = nesf_model_latent_size(me->model);
    me->params = nesf_model_param_count(me->model);
    me->metrics = metrics;
    me->invariant = c->invariant;
    me->metric = nesfd_metrics_model(metrics, me->name);
    nesfd_batcher_opts bo = {me->name, c->max_batch, c->max_delay_us, c->queue_limit};
    me->batcher = nesfd_batcher_new(&bo, batch_fn, me);
    if (!me->batcher) return nesf_fail(err, NESF_ERR_NOMEM, "cannot start the batcher threads");
    return NESF_OK;
}

int nesfd_engine_start(const nesfd_config *c, nesfd_metrics *metrics, nesfd_engine **out,
                       nesf_error *err)
{
    nesfd_engine *e = calloc(1, sizeof *e);
    if (!e) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    for (int i = 0; i < c->n_models; i++) {
        e->n = i + 1;
        int rc = load_one(&e->models[i], c, &c->models[i], metrics, err);
        if (rc) {
            nesf_error_prefix(err, "model '%s': ", c->models[i].name);
            nesfd_engine_free(e);
            return rc;
        }
        nesfd_model_entry *me = &e->models[i];
        nesfd_log_json("info", "model_loaded",
                       json_pack("{s:s, s:s, s:s, s:i, s:i, s:I, s:s}", "model", me->name, "id", me->id,
                                 "path", me->path, "latent", me->latent,
                                 "species", nesf_model_num_species(me->model),
                                 "parameters", (json_int_t)me->params, "device", me->be->device));
    }
    nesfd_metrics_set_depth_fn(metrics, depth_fn, e);
    *out = e;
    return NESF_OK;
}

void nesfd_engine_abort(nesfd_engine *e)
{
    for (int i = 0; e && i < e->n; i++) nesfd_batcher_abort(e->models[i].batcher);
}

void nesfd_engine_stop(nesfd_engine *e)
{
    if (!e || e->stopped) return;
    e->stopped = 1;
    for (int i = 0; i < e->n; i++) nesfd_batcher_stop(e->models[i].batcher);
}

void nesfd_engine_free(nesfd_engine *e)
{
    if (!e) return;
    nesfd_engine_stop(e);
    for (int i = 0; i < e->n; i++) {
        nesfd_model_entry *me = &e->models[i];
        nesfd_batcher_free(me->batcher);
        nesf_model_free(me->model);
        nesf_backend_free(me->be);
    }
    free(e);
}

int nesfd_engine_count(const nesfd_engine *e) { return e->n; }
nesfd_model_entry *nesfd_engine_at(nesfd_engine *e, int i) { return &e->models[i]; }

nesfd_model_entry *nesfd_engine_find(nesfd_engine *e, const char *name)
{
    if (!name || !*name) return e->n ? &e->models[0] : NULL;
    for (int i = 0; i < e->n; i++)
        if (!strcmp(e->models[i].name, name)) return &e->models[i];
    return NULL;
}

int nesfd_engine_ready(nesfd_engine *e)
{
    if (!e || e->stopped || !e->n) return 0;
    for (int i = 0; i < e->n; i++)
        if (!e->models[i].model || !e->models[i].batcher) return 0;
    return 1;
}

#include "handlers.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cif.h"
#include "consistency.h"
#include "domain.h"
#include "elements.h"
#include "interp.h"
#include "oip.h"
#include "match.h"
#include "second_look.h"
#include "sio.h"
#include "sjson.h"
#include "static.h"

#define DEFAULT_SYMPREC 0.1

/* ---- per-request state of the POST routes ----
 * A request goes through up to two batcher tickets (encode, then decode);
 * between them it is suspended and the handler runs again on resume. */

typedef enum { OP_DECODE, OP_ENCODE, OP_RECONSTRUCT, OP_INTERPOLATE } op_kind;

typedef struct op_state {
    nesfd_pending p;           /* first: the batcher's callback gets &st->p */
    op_kind kind;
    int stage;                 /* tickets submitted so far */
    int want_cif, want_pymatgen;
    double symprec;
    nesf_decode_opts opts;
    int n;                     /* items of the request (frames for interpolate) */
    float *latents;            /* reconstruct: the encoded latents (n x L) */
    float *z_enc;              /* reconstruct: the encoder's own latents before
                                  refinement (n x L), the cycle's reference */
    /* interpolate: endpoints given as latents, or encode job slots */
    float *za, *zb;
    int a_slot, b_slot;        /* index in the encode job, -1 when a latent */
    /* confidence: after the decode ticket, the decoded structures are
     * encoded again (E(D(z))); the decode ticket waits in dec_ticket */
    nesfd_ticket *dec_ticket;
    int cycle_done;
    double *cycle;             /* [n] cycle distances |E(D(z)) - z| */
    /* self-check: the cycle's latents E(D(z)) decoded again (consistency.h) */
    int self_check;            /* "self_check": true */
    nesf_fixed_point *fixed;   /* [n] verdicts; NULL: none (not asked, or no memory) */
    int *fixed_idx;            /* item of the re-decode job -> item of the answer */
    nesf_structure **inputs;   /* reconstruct: the input structures (n), for "match" */
    nesf_refine_opts refine;   /* reconstruct: the request's, for the second look */
    int look_stage;            /* 0 second look not considered, 1 under way, 2 done */
    int *look_idx;             /* item of the look job -> item of the answer */
    nesfd_ticket *cyc_ticket;  /* the cycle's encode ticket while the look runs */
    json_t *warn;              /* input structures' domain warnings, one list each */
    json_t *warn_ends;         /* interpolate: {"from"|"to": list} of structure ends */
} op_state;

static void op_free(void *p)
{
    op_state *st = p;
    if (!st) return;
    nesfd_pending_release(&st->p);
    nesfd_ticket_release(st->dec_ticket);
    nesfd_ticket_release(st->cyc_ticket);
    free(st->cycle);
    free(st->fixed);
    free(st->fixed_idx);
    free(st->look_idx);
    if (st->inputs) nesf_structure_list_free(st->inputs, st->n);
    json_decref(st->warn);
    json_decref(st->warn_ends);
    free(st->latents);
    free(st->z_enc);
    free(st->za);
    free(st->zb);
    free(st);
}

/* Batcher thread: only wakes the request; the answer is built on resume. */
static void on_ticket_done(void *arg, int state)
{
    (void)state; /* read back from the ticket on resume */
    nesfd_pending *p = arg;
    nesfd_req_resume(p->req);
}

void nesfd_pending_init(nesfd_pending *p, nesfd_app *app, nesfd_req *r, nesfd_model_entry *me)
{
    p->app = app;
    p->req = r;
    p->me = me;
    p->deadline = nesfd_req_start_ns(r) + (int64_t)(app->cfg->request_timeout_s * 1e9);
}

void nesfd_pending_submit(nesfd_pending *p, nesfd_job *job)
{
    nesfd_ticket_release(p->ticket);
    p->ticket = nesfd_job_ticket(job, p->deadline, on_ticket_done, p);
    if (!p->ticket) {
        p->submit_rc = -1;
        nesfd_pending_failed(p); /* not suspended: answered now */
        return;
    }
    nesfd_req_suspend(p->req); /* before submitting: done may fire at once */
    p->submit_rc = nesfd_batcher_submit(p->me->batcher, p->ticket);
    if (p->submit_rc != NESFD_SUBMIT_OK) nesfd_req_resume(p->req);
}

void nesfd_pending_release(nesfd_pending *p)
{
    nesfd_ticket_release(p->ticket);
    p->ticket = NULL;
}

int nesfd_pending_failed(nesfd_pending *p)
{
    nesfd_req *r = p->req;
    if (p->submit_rc == -1) {
        nesfd_reply_error(r, 503, "out_of_memory", "cannot allocate the work for this request");
        return 1;
    }
    if (p->submit_rc == NESFD_SUBMIT_FULL) {
        nesfd_metrics_rejected(p->app->metrics, p->me->metric);
        nesfd_req_add_header(r, "Retry-After", "1");
        nesfd_reply_error(r, 503, "queue_full", "model '%s' has %d items queued (limit %d); retry later",
                          p->me->name, nesfd_batcher_depth(p->me->batcher), p->app->cfg->queue_limit);
        return 1;
    }
    if (p->submit_rc == NESFD_SUBMIT_STOPPED) {
        nesfd_req_add_header(r, "Retry-After", "5");
        nesfd_reply_error(r, 503, "shutting_down", "the server is shutting down");
        return 1;
    }
    nesfd_req_set_batch(r, nesfd_ticket_max_batch(p->ticket));
    switch (nesfd_ticket_state(p->ticket)) {
    case NESFD_TICKET_DONE:
        return 0;
    case NESFD_TICKET_TIMEOUT:
        nesfd_reply_error(r, 504, "deadline_exceeded", "no answer within the request deadline of %g s",
                          p->app->cfg->request_timeout_s);
        return 1;
    default:
        nesfd_req_add_header(r, "Retry-After", "5");
        nesfd_reply_error(r, 503, "shutting_down", "the server stopped before the work was done");
        return 1;
    }
}

/* One ticket more of the request (encode, then decode). */
static void submit(op_state *st, nesfd_job *job)
{
    st->stage++;
    nesfd_pending_submit(&st->p, job);
}

/* A ticket more while the finished one waits in *keep for later stages. */
static void submit_keeping(op_state *st, nesfd_ticket **keep, nesfd_job *job)
{
    *keep = st->p.ticket;
    st->p.ticket = NULL;
    submit(st, job);
}

static int http_status_of(int code)
{
    switch (code) {
    case NESF_ERR_NOMEM: return 503;
    case NESF_ERR_BACKEND:
    case NESF_ERR_IO: return 500;
    default: return 400;
    }
}

/* ---- request parsing ---- */

/* Refuses keys outside allowed (NULL-terminated): a misspelt option must
 * not be silently ignored. */
static int check_keys(nesfd_req *r, json_t *root, const char *const *allowed)
{
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        const char *const *a = allowed;
        while (*a && strcmp(*a, key)) a++;
        if (!*a) {
            char list[256] = "";
            for (a = allowed; *a; a++)
                snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", a == allowed ? "" : ", ", *a);
            nesfd_reply_error(r, 400, "invalid_request", "unknown key '%s' (expected: %s)", key, list);
            return -1;
        }
    }
    return 0;
}

json_t *nesfd_parse_body(nesfd_req *r, const char *what, const char *const *keys)
{
    size_t len;
    const char *body = nesfd_req_body(r, &len);
    json_error_t je;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        nesfd_reply_error(r, 400, "invalid_json", "invalid JSON at line %d column %d: %s", je.line,
                          je.column, je.text);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        nesfd_reply_error(r, 400, "invalid_json", "the body must be %s", what);
        return NULL;
    }
    if (keys && check_keys(r, root, keys)) {
        json_decref(root);
        return NULL;
    }
    return root;
}

static op_state *new_state(nesfd_app *app, nesfd_req *r, op_kind kind, json_t *root)
{
    json_t *m = json_object_get(root, "model");
    if (m && !json_is_string(m) && !json_is_null(m)) {
        nesfd_reply_error(r, 400, "invalid_request", "'model' must be a string");
        return NULL;
    }
    const char *name = json_is_string(m) ? json_string_value(m) : NULL;
    nesfd_model_entry *me = nesfd_engine_find(app->engine, name);
    if (!me) {
        nesfd_reply_error(r, 404, "unknown_model", "no model named '%s' (see GET /models)", name);
        return NULL;
    }
    op_state *st = calloc(1, sizeof *st);
    if (!st) {
        nesfd_reply_error(r, 503, "out_of_memory", "out of memory");
        return NULL;
    }
    nesfd_pending_init(&st->p, app, r, me);
    st->kind = kind;
    st->symprec = DEFAULT_SYMPREC;
    st->a_slot = st->b_slot = -1;
    /* bytewise, padding included: the options are part of the batching key */
    memcpy(&st->opts, &app->cfg->decode, sizeof st->opts);
    nesfd_req_set_state(r, st, op_free);
    return st;
}

/* "format": "json" | "cif" | "pymatgen" or a list of them (json is always
 * included), "options": decoding overrides, "symprec": space-group tolerance,
 * "self_check": a boolean. */
static int parse_output(op_state *st, json_t *root)
{
    nesfd_req *r = st->p.req;
    json_t *f = json_object_get(root, "format");
    if (f) {
        json_t *list = json_is_string(f) ? json_pack("[O]", f) : json_incref(f);
        if (!json_is_array(list)) {
            json_decref(list);
            nesfd_reply_error(r, 400, "invalid_request", "'format' must be a string or a list of "
                              "\"json\", \"cif\", \"pymatgen\"");
            return -1;
        }
        size_t i;
        json_t *v;
        json_array_foreach(list, i, v) {
            const char *s = json_string_value(v);
            if (s && !strcmp(s, "json")) continue;
            if (s && !strcmp(s, "cif")) { st->want_cif = 1; continue; }
            if (s && !strcmp(s, "pymatgen")) { st->want_pymatgen = 1; continue; }
            json_decref(list);
            nesfd_reply_error(r, 400, "invalid_request", "format[%zu]: expected \"json\", \"cif\" or "
                              "\"pymatgen\"", i);
            return -1;
        }
        json_decref(list);
    }
    json_t *sc = json_object_get(root, "self_check");
    if (sc && !json_is_boolean(sc)) {
        nesfd_reply_error(r, 400, "invalid_request", "'self_check' must be true or false (re-decode "
                          "each answer's latent E(D(z)) and compare compositions)");
        return -1;
    }
    st->self_check = json_is_true(sc);
    json_t *sp = json_object_get(root, "symprec");
    if (sp) {
        if (!json_is_number(sp) || !(json_number_value(sp) > 0) || json_number_value(sp) > 1) {
            nesfd_reply_error(r, 400, "invalid_request", "'symprec' must be a number in (0, 1] (Å)");
            return -1;
        }
        st->symprec = json_number_value(sp);
    }
    json_t *o = json_object_get(root, "options");
    if (o) {
        nesf_error err;
        if (!json_is_object(o)) {
            nesfd_reply_error(r, 400, "invalid_options", "'options' must be an object");
            return -1;
        }
        if (nesf_decode_opts_from_json(&st->opts, o, &err) ||
            nesf_decode_opts_check(&st->opts, &err)) {
            nesfd_reply_error(r, 400, "invalid_options", "options: %s", err.msg);
            return -1;
        }
    }
    /* a symmetrized structure reports the group it was refined to */
    if (st->opts.symmetrize && !sp) { /* the float option as the number the client sent */
        char num[32];
        snprintf(num, sizeof num, "%.7g", st->opts.symprec);
        st->symprec = strtod(num, NULL);
    }
    return 0;
}

/* Fast mode's particles start only near the predicted cell and retire
 * when they stop: measured at 2-3 % of the paper grid's field evaluations
 * (docs/decoding.md), counted here as 10 %. */
#define FAST_WORK_SHARE 0.1
/* The default limit: 64 latents at the paper's 64 steps on the default grid. */
#define DEFAULT_WORK_LATENTS 64
#define DEFAULT_WORK_STEPS 64

/* Decoding work of n latents at options o on a model, in particle steps:
 * latents x iterations x points of the paper's grid (x FAST_WORK_SHARE in
 * fast mode). */
static double decode_work(const nesfd_model_entry *me, const nesf_decode_opts *o, int n,
                          int iterations)
{
    float lo[3], hi[3];
    nesf_model_bbox(me->model, lo, hi);
    double g = 1;
    for (int k = 0; k < 3; k++)
        g *= nesf_arange_count((double)lo[k] - o->grid_pad, (double)hi[k] + o->grid_pad, o->grid_step);
    return g * iterations * n * (o->mode == NESF_DECODE_FAST ? FAST_WORK_SHARE : 1.0);
}

/* One request may not cost more than max_request_work (by default 64
 * latents at the paper's settings: 640 in fast mode, 8 latents at 4096
 * paper iterations are 8 times too many); 413 otherwise, before any work.
 * The self-check decodes every latent twice. */
static int check_work(op_state *st, int n)
{
    const nesfd_config *c = st->p.app->cfg;
    nesf_decode_opts paper = c->decode;
    paper.mode = NESF_DECODE_PAPER;
    double limit = c->max_request_work > 0
                       ? c->max_request_work
                       : decode_work(st->p.me, &paper, DEFAULT_WORK_LATENTS, DEFAULT_WORK_STEPS);
    double w = decode_work(st->p.me, &st->opts, st->self_check ? 2 * n : n, st->opts.iterations);
    if (w <= limit) return 0;
    nesfd_reply_error(st->p.req, 413, "work_too_large", "decoding %d latents%s at %d iterations (%s "
                      "mode) is %.3g particle steps, more than this server's limit of %.3g "
                      "(max_request_work): send fewer latents or cheaper options", n,
                      st->self_check ? " twice (self_check)" : "", st->opts.iterations,
                      st->opts.mode == NESF_DECODE_FAST ? "fast" : "paper", w, limit);
    return -1;
}

/* One latent: exactly L finite numbers (finite also as 32-bit floats). */
static int parse_latent(nesfd_req *r, json_t *v, int L, float *dst, const char *where)
{
    if (!json_is_array(v)) {
        nesfd_reply_error(r, 400, "invalid_latent", "%s: expected an array of %d numbers", where, L);
        return -1;
    }
    if ((int)json_array_size(v) != L) {
        nesfd_reply_error(r, 400, "invalid_latent", "%s: has %zu numbers; the model's latent size is %d",
                          where, json_array_size(v), L);
        return -1;
    }
    for (int k = 0; k < L; k++) {
        json_t *x = json_array_get(v, (size_t)k);
        if (!json_is_number(x)) {
            nesfd_reply_error(r, 400, "invalid_latent", "%s[%d]: not a number", where, k);
            return -1;
        }
        float f = (float)json_number_value(x);
        if (!isfinite(f)) {
            nesfd_reply_error(r, 400, "invalid_latent", "%s[%d]: %g is not a finite 32-bit float",
                              where, k, json_number_value(x));
            return -1;
        }
        dst[k] = f;
    }
    return 0;
}

static int parse_count(nesfd_req *r, size_t n, const char *what, const nesfd_config *cfg)
{
    int limit = cfg->max_items < cfg->queue_limit ? cfg->max_items : cfg->queue_limit;
    if (n == 0) {
        nesfd_reply_error(r, 400, "invalid_request", "'%s' is empty", what);
        return -1;
    }
    if (n > (size_t)limit) {
        nesfd_reply_error(r, 400, "too_many_items", "'%s' has %zu entries; at most %d per request",
                          what, n, limit);
        return -1;
    }
    return 0;
}

/* A structure: {"cif": text}, a structure object (dataset or pymatgen
 * JSON), or a string of CIF/JSON text.  It must be one valid structure
 * whose elements the model knows. */
static nesf_structure *parse_structure(nesfd_req *r, nesfd_model_entry *me, json_t *v,
                                       const char *where)
{
    nesf_error err = {0};
    nesf_structure **list = NULL, *s = NULL;
    int n = 0, rc;
    json_t *cif = json_is_object(v) ? json_object_get(v, "cif") : NULL;
    if (cif) {
        if (!json_is_string(cif)) {
            nesfd_reply_error(r, 400, "invalid_structure", "%s.cif: expected CIF text", where);
            return NULL;
        }
        rc = nesf_sio_read_buffer(json_string_value(cif), json_string_length(cif), "cif",
                                  NESF_FORMAT_CIF, &list, &n, &err);
    } else if (json_is_string(v)) {
        rc = nesf_sio_read_buffer(json_string_value(v), json_string_length(v), "text",
                                  NESF_FORMAT_AUTO, &list, &n, &err);
    } else if (json_is_object(v)) {
        rc = nesf_sjson_from_json(v, &s, &err);
    } else {
        nesfd_reply_error(r, 400, "invalid_structure", "%s: expected {\"cif\": text}, a structure "
                          "object or structure text", where);
        return NULL;
    }
    if (rc) {
        nesfd_reply_error(r, 400, "invalid_structure", "%s: %s", where, err.msg);
        return NULL;
    }
    if (list) {
        if (n != 1) {
            nesf_structure_list_free(list, n);
            nesfd_reply_error(r, 400, "invalid_structure", "%s: holds %d structures; send one per entry",
                              where, n);
            return NULL;
        }
        s = list[0];
        free(list);
    }
    if ((rc = nesf_structure_validate(s, &err))) {
        nesf_structure_free(s);
        nesfd_reply_error(r, 400, "invalid_structure", "%s: %s", where, err.msg);
        return NULL;
    }
    if (s->n == 0) {
        nesf_structure_free(s);
        nesfd_reply_error(r, 400, "invalid_structure", "%s: has no atoms", where);
        return NULL;
    }
    for (int i = 0; i < s->n; i++)
        if (nesf_model_class_of(me->model, s->z[i]) < 0) {
            const nesf_element *el = nesf_element_get(s->z[i]);
            nesfd_reply_error(r, 400, "unknown_species", "%s: element %s is not among model '%s''s %d "
                              "species (see GET /models)", where, el ? el->symbol : "?", me->name,
                              nesf_model_num_species(me->model));
            nesf_structure_free(s);
            return NULL;
        }
    return s;
}

/* An input structure against the model's training domain (domain.h):
 * its warnings into *list (a new JSON array), or, when the daemon refuses
 * such inputs, a 422 answer and -1. */
static int domain_gate(op_state *st, const nesf_structure *s, const char *where, json_t **list)
{
    nesf_domain_warning w[NESF_DOMAIN_MAX_WARNINGS];
    float lo[3], hi[3];
    nesf_model_bbox(st->p.me->model, lo, hi);
    int n = nesf_domain_check(nesf_model_domain(st->p.me->model), lo, hi, s, w, NESF_DOMAIN_MAX_WARNINGS);
    if (n && st->p.app->cfg->domain_refuse) {
        char msg[1024] = "";
        for (int i = 0; i < n; i++)
            snprintf(msg + strlen(msg), sizeof msg - strlen(msg), "%s%s: %s", i ? "; " : "", w[i].code,
                     w[i].message);
        nesfd_reply_error(st->p.req, 422, "outside_domain", "%s lies outside model '%s''s training "
                          "domain: %s", where, st->p.me->name, msg);
        return -1;
    }
    *list = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(*list, json_pack("{s:s, s:s}", "code", w[i].code, "message", w[i].message));
    return 0;
}

/* ---- answers ---- */

static json_t *structure_json(const op_state *st, const nesf_structure *s)
{
    json_t *o = nesf_sjson_to_json(s, NESF_SJSON_FULL, st->symprec);
    if (!o) return NULL;
    json_object_set_new(o, "num_atoms", json_integer(s->n));
    if (st->want_cif) {
        char *cif = nesf_cif_write(s);
        json_object_set_new(o, "cif", cif ? json_string(cif) : json_null());
        free(cif);
    }
    if (st->want_pymatgen) json_object_set_new(o, "pymatgen", nesf_sjson_to_json(s, NESF_SJSON_PYMATGEN, 0));
    return o;
}

static json_t *item_error_json(const nesf_error *e)
{
    json_t *j = json_pack("{s:{s:s, s:s}}", "error", "code", "decode_failed", "message",
                          e->msg[0] ? e->msg : nesf_status_name(e->code));
    /* a message cut inside a character is no UTF-8: the code still says it */
    return j ? j : json_pack("{s:{s:s, s:s}}", "error", "code", "decode_failed", "message",
                             nesf_status_name(e->code));
}

static json_t *latents_json(const float *z, int n, int L)
{
    json_t *all = json_array();
    for (int i = 0; i < n; i++) {
        json_t *row = json_array();
        for (int k = 0; k < L; k++) json_array_append_new(row, json_real(z[(size_t)i * L + k]));
        json_array_append_new(all, row);
    }
    return all;
}

static json_t *answer_base(const op_state *st)
{
    return json_pack("{s:s, s:s, s:i}", "model", st->p.me->name, "request_id", nesfd_req_id(st->p.req),
                     "batch", nesfd_ticket_max_batch(st->p.ticket));
}

/* The options a decode job runs with: the request's, but symmetrized
 * only after the confidence stage (the cycle distance is the decoder's
 * own answer's, the one the training sample was measured on), and the
 * symmetrize fields at their defaults so that such requests still share
 * backend calls with the others. */
static nesf_decode_opts decode_opts(const op_state *st)
{
    nesf_decode_opts o = st->opts, def;
    nesf_decode_opts_default(&def);
    o.symmetrize = 0;
    o.symprec = def.symprec;
    o.cell = def.cell;
    return o;
}

/* After the confidence stage: the symmetrize option on the answer. */
static void finish_decode(op_state *st)
{
    st->cycle_done = 1;
    if (!st->opts.symmetrize) return;
    nesfd_job *job = nesfd_ticket_data(st->p.ticket);
    nesf_decode_stats stats;
    memset(&stats, 0, sizeof stats);
    nesf_decode_symmetrize(&st->opts, job->s, job->n, &stats);
}

/* "confidence" of decoded item i: its cycle distance and that distance's
 * percentile in the training sample the model file records; with the
 * self-check, whether E(D(z)) decodes to the same composition. */
static json_t *confidence_json(const op_state *st, int i)
{
    double d = st->cycle ? st->cycle[i] : NAN;
    double p = isnan(d) ? -1 : nesf_domain_percentile(nesf_model_domain(st->p.me->model), d);
    json_t *o = json_pack("{s:o, s:o}", "cycle_distance", isfinite(d) ? json_real(d) : json_null(),
                          "percentile", p >= 0 ? json_real(p) : json_null());
    if (st->self_check) {
        const nesf_fixed_point *v = st->fixed && st->fixed[i].checked ? &st->fixed[i] : NULL;
        json_object_set_new(o, "self_consistent", v ? json_boolean(v->consistent) : json_null());
        json_object_set_new(o, "redecoded_atoms", v && v->atoms >= 0 ? json_integer(v->atoms) : json_null());
    }
    return o;
}

/* The decode ticket just ended: encodes its structures (E(D(z))).
 * Returns 1 when the encode was submitted (or its submission failed and
 * was answered), 0 when there is nothing to encode (no figures then). */
static int cycle_encode(op_state *st)
{
    nesfd_job *job = nesfd_ticket_data(st->p.ticket);
    int k = 0;
    for (int i = 0; i < job->n; i++) k += job->s[i] && job->s[i]->n > 0;
    st->cycle = malloc((size_t)job->n * sizeof *st->cycle);
    nesfd_job *enc = k && st->cycle ? nesfd_job_new(NESFD_JOB_ENCODE, st->p.me, k) : NULL;
    for (int i = 0, j = 0; enc && i < job->n; i++)
        if (job->s[i] && job->s[i]->n > 0 && !(enc->s[j++] = nesf_structure_copy(job->s[i]))) {
            nesfd_job_free(enc);
            enc = NULL;
        }
    for (int i = 0; st->cycle && i < job->n; i++) st->cycle[i] = INFINITY;
    if (!enc) {
        if (k) free(st->cycle), st->cycle = NULL;
        return 0;
    }
    submit_keeping(st, &st->dec_ticket, enc);
    return 1;
}

/* The encode of the decoded structures ended: their cycle distances, to
 * the decoded latent or, for a reconstruction, to the encoder's own latent
 * of the input (a refined latent lies off the encoder's manifold, and
 * |E(D) - E(S)| is the figure that separates wrong answers; docs/trust.md). */
static void cycle_distances(op_state *st)
{
    nesfd_job *job = nesfd_ticket_data(st->p.ticket), *dec = nesfd_ticket_data(st->dec_ticket);
    const int L = st->p.me->latent;
    for (int i = 0, j = 0; i < dec->n; i++) {
        if (!dec->s[i] || dec->s[i]->n == 0) continue;
        if (!nesfd_ticket_item(st->p.ticket, j)->status) {
            const float *a = job->z + (size_t)j * L, *b = (st->z_enc ? st->z_enc : dec->z) + (size_t)i * L;
            double sum = 0;
            for (int c = 0; c < L; c++) sum += ((double)a[c] - b[c]) * ((double)a[c] - b[c]);
            st->cycle[i] = sqrt(sum);
        }
        j++;
    }
}

/* The self-check's decode of the latents E(D(z)) just encoded, with the
 * decode's own options (as nesf_fixed_point_check: no symmetrize).  A
 * structure whose encode failed is inconsistent without a re-decode.
 * Returns 1 when the decode was submitted (or its submission failed and
 * was answered), 0 when nothing is left to decode (or no memory: no
 * verdicts then). */
static int fixed_point_decode(op_state *st)
{
    nesfd_job *enc = nesfd_ticket_data(st->p.ticket), *dec = nesfd_ticket_data(st->dec_ticket);
    const size_t L = (size_t)st->p.me->latent;
    st->fixed = malloc((size_t)dec->n * sizeof *st->fixed);
    st->fixed_idx = malloc((size_t)dec->n * sizeof *st->fixed_idx);
    if (!st->fixed || !st->fixed_idx) {
        free(st->fixed), st->fixed = NULL;
        return 0;
    }
    int k = 0;
    for (int i = 0, j = 0; i < dec->n; i++) {
        st->fixed[i] = (nesf_fixed_point){0, 0, -1};
        if (!dec->s[i] || dec->s[i]->n == 0) continue;
        st->fixed[i].checked = 1;
        if (!nesfd_ticket_item(st->p.ticket, j)->status) {
            memmove(enc->z + (size_t)k * L, enc->z + (size_t)j * L, L * sizeof *enc->z); /* compacted in place */
            st->fixed_idx[k++] = i;
        }
        j++;
    }
    nesfd_job *re = k ? nesfd_job_new(NESFD_JOB_DECODE, st->p.me, k) : NULL;
    if (!re) {
        if (k) free(st->fixed), st->fixed = NULL;
        return 0;
    }
    memcpy(re->z, enc->z, (size_t)k * L * sizeof *re->z);
    re->opts = decode_opts(st);
    submit(st, re);
    return 1;
}

/* The self-check's decode ended: each structure's verdict. */
static void fixed_point_verdicts(op_state *st)
{
    nesfd_job *re = nesfd_ticket_data(st->p.ticket), *dec = nesfd_ticket_data(st->dec_ticket);
    for (int m = 0; m < re->n; m++) {
        nesf_fixed_point *v = &st->fixed[st->fixed_idx[m]];
        const nesf_structure *s = nesfd_ticket_item(st->p.ticket, m)->status ? NULL : re->s[m];
        v->atoms = s ? s->n : -1;
        v->consistent = s && nesf_same_composition(dec->s[st->fixed_idx[m]], s);
    }
}

/* A reconstruction's second look (second_look.h) at the answers that
 * stay doubtful after the cycle distances, as one job, before the
 * self-check (which then judges the answers kept).  Only answers with
 * atoms whose encode succeeded have a finite distance.  Returns 1 when it
 * was submitted (or its submission failed and was answered), 0 when there
 * is nothing to look at (or no memory: the first answers stand). */
static int look_submit(op_state *st)
{
    nesfd_job *dec = nesfd_ticket_data(st->dec_ticket);
    const size_t L = (size_t)st->p.me->latent;
    double thr = st->inputs && st->z_enc && st->latents ? nesf_second_look_threshold(st->p.me->model, &st->refine)
                                                       : INFINITY;
    int k = 0;
    st->look_stage = 2;
    st->look_idx = !isinf(thr) ? malloc((size_t)dec->n * sizeof *st->look_idx) : NULL;
    for (int i = 0; st->look_idx && i < dec->n; i++)
        if (dec->s[i] && st->inputs[i] && isfinite(st->cycle[i]) && st->cycle[i] > thr) st->look_idx[k++] = i;
    nesfd_job *look = k ? nesfd_job_new(NESFD_JOB_LOOK, st->p.me, k) : NULL;
    for (int j = 0; look && j < k; j++) {
        int i = st->look_idx[j];
        look->s[j] = nesf_structure_copy(st->inputs[i]);
        look->rec[j] = nesf_structure_copy(dec->s[i]);
        if (!look->s[j] || !look->rec[j]) {
            nesfd_job_free(look);
            look = NULL;
            break;
        }
        look->cycle[j] = st->cycle[i];
        memcpy(look->z_enc + j * L, st->z_enc + i * L, L * sizeof *look->z);
        memcpy(look->z + j * L, st->latents + i * L, L * sizeof *look->z);
    }
    if (!look) return 0;
    look->opts = decode_opts(st);
    look->refine = st->refine;
    st->look_stage = 1;
    submit_keeping(st, &st->cyc_ticket, look);
    return 1;
}

/* The second look ended: the answers it replaced, their latents,
 * distances and encodings (in the cycle's encode job, for the self-check);
 * st->p.ticket is the cycle's encode ticket again. */
static void look_take(op_state *st)
{
    nesfd_job *look = nesfd_ticket_data(st->p.ticket), *dec = nesfd_ticket_data(st->dec_ticket);
    nesfd_job *enc = nesfd_ticket_data(st->cyc_ticket);
    const size_t L = (size_t)st->p.me->latent;
    for (int j = 0, e = 0, i = 0; j < look->n; j++) {
        for (; i < st->look_idx[j]; i++) e += dec->s[i] && dec->s[i]->n > 0; /* e: i's row in enc */
        if (nesfd_ticket_item(st->p.ticket, j)->status || !(look->cycle[j] < st->cycle[i])) continue;
        nesf_structure_free(dec->s[i]);
        dec->s[i] = look->rec[j];
        look->rec[j] = NULL;
        st->cycle[i] = look->cycle[j];
        memcpy(st->latents + i * L, look->z + j * L, L * sizeof *look->z);
        memcpy(enc->z + (size_t)e * L, look->z_dec + j * L, L * sizeof *look->z);
    }
    nesfd_ticket_release(st->p.ticket);
    st->p.ticket = st->cyc_ticket;
    st->cyc_ticket = NULL;
    st->look_stage = 2;
}

/* The confidence stage between a finished decode ticket and the answer:
 * the encode of the decoded structures (cycle distances), for a
 * reconstruction the second look, then, with the self-check, the decode of
 * those latents.  Returns 1 while one of them is under way (or its
 * submission failed and was answered), 0 when the answer can be given:
 * st->p.ticket is the decode ticket again and st->cycle (and st->fixed)
 * are filled. */
static int cycle_stage(op_state *st)
{
    if (st->cycle_done) return 0;
    if (!st->dec_ticket) {
        if (cycle_encode(st)) return 1;
        finish_decode(st);
        return 0;
    }
    nesfd_job *job = nesfd_ticket_data(st->p.ticket);
    if (job->kind == NESFD_JOB_ENCODE && st->look_stage == 0) {
        cycle_distances(st);
        if (look_submit(st)) return 1;
    } else if (job->kind == NESFD_JOB_LOOK) {
        look_take(st);
        job = nesfd_ticket_data(st->p.ticket);
    }
    if (job->kind == NESFD_JOB_ENCODE) {
        if (st->self_check && fixed_point_decode(st)) return 1;
    } else {
        fixed_point_verdicts(st);
    }
    nesfd_ticket_release(st->p.ticket);
    st->p.ticket = st->dec_ticket;
    st->dec_ticket = NULL;
    finish_decode(st);
    return 0;
}

/* Structures of a finished decode job, each or its error in place. */
static json_t *decoded_json(const op_state *st, const nesfd_job *job)
{
    json_t *list = json_array();
    for (int i = 0; i < job->n; i++) {
        nesfd_item *it = nesfd_ticket_item(st->p.ticket, i);
        json_t *o = it->status ? item_error_json(&job->item_err[i]) : structure_json(st, job->s[i]);
        if (!it->status) json_object_set_new(o, "confidence", confidence_json(st, i));
        json_array_append_new(list, o);
    }
    return list;
}

static int decoded_count(const nesfd_job *job)
{
    int k = 0;
    for (int i = 0; i < job->n; i++) k += job->s[i] != NULL;
    return k;
}

/* ---- POST /decode ---- */

static void h_decode(nesfd_req *r, void *ctx)
{
    nesfd_app *app = ctx;
    op_state *st = nesfd_req_state(r);
    if (st) { /* resumed: the decode ticket ended, or the confidence stage */
        if (nesfd_pending_failed(&st->p) || cycle_stage(st)) return;
        nesfd_job *job = nesfd_ticket_data(st->p.ticket);
        json_t *ans = answer_base(st);
        json_object_set_new(ans, "structures", decoded_json(st, job));
        nesfd_reply_json(r, 200, ans);
        return;
    }
    static const char *const keys[] = {"model", "latents", "format", "options", "symprec", "self_check",
                                       NULL};
    json_t *root = nesfd_parse_body(r, "a JSON object", keys);
    if (!root) return;
    json_t *lat = json_object_get(root, "latents");
    nesfd_job *job = NULL;
    if (!(st = new_state(app, r, OP_DECODE, root)) ||
        parse_output(st, root))
        goto out;
    if (!json_is_array(lat)) {
        nesfd_reply_error(r, 400, "invalid_request", "'latents' must be an array of latent vectors");
        goto out;
    }
    if (parse_count(r, json_array_size(lat), "latents", app->cfg) ||
        check_work(st, (int)json_array_size(lat)))
        goto out;
    int n = (int)json_array_size(lat), L = st->p.me->latent;
    if (!(job = nesfd_job_new(NESFD_JOB_DECODE, st->p.me, n))) {
        nesfd_reply_error(r, 503, "out_of_memory", "out of memory");
        goto out;
    }
    for (int i = 0; i < n; i++) {
        char where[32];
        snprintf(where, sizeof where, "latents[%d]", i);
        if (parse_latent(r, json_array_get(lat, (size_t)i), L, job->z + (size_t)i * L, where)) goto out;
    }
    job->opts = decode_opts(st);
    st->n = n;
    submit(st, job);
    job = NULL;
out:
    nesfd_job_free(job);
    json_decref(root);
}

/* Bounded so that one request's cost stays within seconds per structure. */
#define NESFD_REFINE_MAX_STEPS 200
#define NESFD_LOOK_MAX_STEPS 800 /* the second look's, per doubtful structure (default 3 x 200) */
int nesfd_parse_refine(nesfd_req *r, json_t *root, nesf_refine_opts *o)
{
    json_t *v = json_object_get(root, "refine");
    nesf_refine_opts_default(o);
    if (!v) return 0;
    nesf_error err;
    if (nesf_refine_opts_from_json(o, v, &err)) {
        nesfd_reply_error(r, 400, "invalid_refine", "%s", err.msg);
        return -1;
    }
    if (o->steps > NESFD_REFINE_MAX_STEPS) {
        nesfd_reply_error(r, 400, "invalid_refine", "refine: at most %d steps", NESFD_REFINE_MAX_STEPS);
        return -1;
    }
    if ((long)o->look_tries * o->look_steps > NESFD_LOOK_MAX_STEPS) {
        nesfd_reply_error(r, 400, "invalid_refine", "refine.second_look: tries x steps at most %d",
                          NESFD_LOOK_MAX_STEPS);
        return -1;
    }
    return 0;
}

/* Parses the "structures" list into an encode job. */
static nesfd_job *structures_job(op_state *st, json_t *root)
{
    nesfd_req *r = st->p.req;
    json_t *list = json_object_get(root, "structures");
    if (!json_is_array(list)) {
        nesfd_reply_error(r, 400, "invalid_request", "'structures' must be an array of structures "
                          "({\"cif\": text} or structure JSON)");
        return NULL;
    }
    if (parse_count(r, json_array_size(list), "structures", st->p.app->cfg)) return NULL;
    if (st->kind == OP_RECONSTRUCT && check_work(st, (int)json_array_size(list))) return NULL;
    int n = (int)json_array_size(list);
    nesf_refine_opts ro;
    if (nesfd_parse_refine(r, root, &ro)) return NULL;
    nesfd_job *job = nesfd_job_new(NESFD_JOB_ENCODE, st->p.me, n);
    if (!job) {
        nesfd_reply_error(r, 503, "out_of_memory", "out of memory");
        return NULL;
    }
    job->refine = ro;
    st->refine = ro;
    st->warn = json_array();
    for (int i = 0; i < n; i++) {
        char where[32];
        json_t *w = NULL;
        snprintf(where, sizeof where, "structures[%d]", i);
        if (!(job->s[i] = parse_structure(r, st->p.me, json_array_get(list, (size_t)i), where)) ||
            domain_gate(st, job->s[i], where, &w)) {
            nesfd_job_free(job);
            return NULL;
        }
        json_array_append_new(st->warn, w);
    }
    st->n = n;
    return job;
}

/* After an encode ticket: answers the first failed item and returns -1. */
static int encode_failed(op_state *st, const nesfd_job *job, const char *what)
{
    for (int i = 0; i < job->n; i++) {
        nesfd_item *it = nesfd_ticket_item(st->p.ticket, i);
        if (it->status) {
            int code = job->item_err[i].code ? job->item_err[i].code : it->status;
            nesfd_reply_error(st->p.req, http_status_of(code),
                              http_status_of(code) == 400 ? "invalid_structure" : "encode_failed",
                              "%s[%d]: %s", what, i, job->item_err[i].msg);
            return -1;
        }
    }
    return 0;
}

/* ---- POST /encode ---- */

static void h_encode(nesfd_req *r, void *ctx)
{
    nesfd_app *app = ctx;
    op_state *st = nesfd_req_state(r);
    if (st) {
        if (nesfd_pending_failed(&st->p)) return;
        nesfd_job *job = nesfd_ticket_data(st->p.ticket);
        if (encode_failed(st, job, "structures")) return;
        json_t *ans = answer_base(st);
        json_object_set_new(ans, "latent_size", json_integer(st->p.me->latent));
        json_object_set_new(ans, "latents", latents_json(job->z, job->n, st->p.me->latent));
        json_object_set(ans, "warnings", st->warn);
        nesfd_reply_json(r, 200, ans);
        return;
    }
    static const char *const keys[] = {"model", "structures", "refine", NULL};
    json_t *root = nesfd_parse_body(r, "a JSON object", keys);
    if (!root) return;
    nesfd_job *job;
    if ((st = new_state(app, r, OP_ENCODE, root)) &&
        (job = structures_job(st, root))) {
        submit(st, job);
    }
    json_decref(root);
}

/* "match": is the reconstruction the input's crystal (match.h, the
 * benchmarks' tolerances)? */
static json_t *match_json(const nesf_structure *in, const nesf_structure *out)
{
    nesf_match_opts o;
    nesf_match_opts_default(&o);
    nesf_match_result r;
    nesf_error err;
    if (nesf_structure_match(in, out, &o, &r, &err))
        return json_pack("{s:n, s:s}", "match", "error", err.msg);
    json_t *m = json_pack("{s:b, s:o, s:o, s:f, s:f, s:f}", "match", r.match,
                          "rms", isfinite(r.rms) ? json_real(r.rms) : json_null(),
                          "max_dist", isfinite(r.max_dist) ? json_real(r.max_dist) : json_null(),
                          "ltol", o.ltol, "stol", o.stol, "angle_tol", o.angle_tol);
    if (!r.match) json_object_set_new(m, "reason", json_string(r.reason));
    return m;
}

/* ---- POST /reconstruct: encode, then decode ---- */

static void h_reconstruct(nesfd_req *r, void *ctx)
{
    nesfd_app *app = ctx;
    op_state *st = nesfd_req_state(r);
    if (!st) {
        static const char *const keys[] = {"model", "structures", "format", "options", "symprec",
                                           "refine", "self_check", NULL};
        json_t *root = nesfd_parse_body(r, "a JSON object", keys);
        if (!root) return;
        nesfd_job *job;
        if ((st = new_state(app, r, OP_RECONSTRUCT, root)) &&
            !parse_output(st, root) && (job = structures_job(st, root))) {
            submit(st, job);
        }
        json_decref(root);
        return;
    }
    if (nesfd_pending_failed(&st->p)) return;
    nesfd_job *job = nesfd_ticket_data(st->p.ticket);
    if (st->stage == 1) { /* encoded: decode the latents */
        if (encode_failed(st, job, "structures")) return;
        size_t bytes = (size_t)job->n * st->p.me->latent * sizeof(float);
        nesfd_job *dec = nesfd_job_new(NESFD_JOB_DECODE, st->p.me, job->n);
        st->latents = malloc(bytes);
        st->z_enc = malloc(bytes);
        if (!dec || !st->latents || !st->z_enc) {
            nesfd_job_free(dec);
            nesfd_reply_error(r, 503, "out_of_memory", "out of memory");
            return;
        }
        memcpy(dec->z, job->z, bytes);
        memcpy(st->latents, job->z, bytes);
        memcpy(st->z_enc, job->z_enc, bytes);
        /* the inputs stay for the answer's "match" blocks */
        if ((st->inputs = calloc((size_t)job->n, sizeof *st->inputs)))
            for (int i = 0; i < job->n; i++) st->inputs[i] = job->s[i], job->s[i] = NULL;
        dec->opts = decode_opts(st);
        submit(st, dec);
        return;
    }
    if (cycle_stage(st)) return;
    job = nesfd_ticket_data(st->p.ticket);
    json_t *ans = answer_base(st), *list = decoded_json(st, job);
    for (int i = 0; i < job->n; i++) { /* what the input's domain check found; input vs answer */
        json_t *o = json_array_get(list, (size_t)i);
        json_object_set(o, "warnings", json_array_get(st->warn, (size_t)i));
        if (job->s[i] && st->inputs && st->inputs[i]) json_object_set_new(o, "match", match_json(st->inputs[i], job->s[i]));
    }
    json_object_set_new(ans, "structures", list);
    json_object_set_new(ans, "latents", latents_json(st->latents, job->n, st->p.me->latent));
    nesfd_reply_json(r, 200, ans);
}

/* ---- POST /interpolate ---- */

/* An endpoint is a latent ([numbers] or {"latent": [numbers]}) or a
 * structure; structures go into the encode job at the next slot. */
static int parse_endpoint(op_state *st, json_t *v, const char *where, float **z, int *slot,
                          nesf_structure **enc, int *n_enc)
{
    json_t *lat = json_is_array(v) ? v : json_is_object(v) ? json_object_get(v, "latent") : NULL;
    if (lat) {
        int L = st->p.me->latent;
        if (!(*z = malloc((size_t)L * sizeof **z))) {
            nesfd_reply_error(st->p.req, 503, "out_of_memory", "out of memory");
            return -1;
        }
        return parse_latent(st->p.req, lat, L, *z, where);
    }
    if (!(enc[*n_enc] = parse_structure(st->p.req, st->p.me, v, where))) return -1;
    *slot = (*n_enc)++;
    json_t *w = NULL;
    if (domain_gate(st, enc[*slot], where, &w)) return -1;
    if (!st->warn_ends) st->warn_ends = json_object();
    json_object_set_new(st->warn_ends, where, w);
    return 0;
}

static void interpolate_decode(op_state *st)
{
    int L = st->p.me->latent;
    nesfd_job *dec = nesfd_job_new(NESFD_JOB_DECODE, st->p.me, st->n);
    if (!dec) {
        nesfd_reply_error(st->p.req, 503, "out_of_memory", "out of memory");
        return;
    }
    nesf_interp_latents(st->za, st->zb, L, st->n, dec->z);
    dec->opts = decode_opts(st);
    submit(st, dec);
}

static void h_interpolate(nesfd_req *r, void *ctx)
{
    nesfd_app *app = ctx;
    op_state *st = nesfd_req_state(r);
    if (!st) {
        static const char *const keys[] = {"model", "from", "to", "steps", "format", "options",
                                           "symprec", "refine", "self_check", NULL};
        json_t *root = nesfd_parse_body(r, "a JSON object", keys);
        if (!root) return;
        nesf_structure *enc[2] = {NULL, NULL};
        int n_enc = 0;
        if (!(st = new_state(app, r, OP_INTERPOLATE, root)) ||
            parse_output(st, root))
            goto out;
        json_t *steps = json_object_get(root, "steps"), *from = json_object_get(root, "from"),
               *to = json_object_get(root, "to");
        int max = app->cfg->max_items < NESF_INTERP_MAX_STEPS ? app->cfg->max_items : NESF_INTERP_MAX_STEPS;
        if (max > app->cfg->queue_limit) max = app->cfg->queue_limit;
        if (!json_is_integer(steps) || json_integer_value(steps) < 2 || json_integer_value(steps) > max) {
            nesfd_reply_error(r, 400, "invalid_request", "'steps' must be an integer in [2, %d]", max);
            goto out;
        }
        if (!from || !to) {
            nesfd_reply_error(r, 400, "invalid_request", "'from' and 'to' are required (a structure "
                              "or a latent each)");
            goto out;
        }
        st->n = (int)json_integer_value(steps);
        nesf_refine_opts ro;
        if (nesfd_parse_refine(r, root, &ro)) goto out;
        if (check_work(st, st->n)) goto out;
        if (parse_endpoint(st, from, "from", &st->za, &st->a_slot, enc, &n_enc) ||
            parse_endpoint(st, to, "to", &st->zb, &st->b_slot, enc, &n_enc))
            goto out;
        if (n_enc == 0) {
            interpolate_decode(st);
            goto out;
        }
        nesfd_job *job = nesfd_job_new(NESFD_JOB_ENCODE, st->p.me, n_enc);
        if (!job) {
            nesfd_reply_error(r, 503, "out_of_memory", "out of memory");
            goto out;
        }
        for (int i = 0; i < n_enc; i++) job->s[i] = enc[i], enc[i] = NULL;
        job->refine = ro;
        submit(st, job);
    out:
        nesf_structure_free(enc[0]);
        nesf_structure_free(enc[1]);
        json_decref(root);
        return;
    }
    if (nesfd_pending_failed(&st->p)) return;
    nesfd_job *job = nesfd_ticket_data(st->p.ticket);
    if (job->kind == NESFD_JOB_ENCODE && !st->dec_ticket) { /* the ends were encoded */
        int L = st->p.me->latent;
        if (encode_failed(st, job, "endpoints")) return;
        float **dst[2] = {&st->za, &st->zb};
        int slot[2] = {st->a_slot, st->b_slot};
        for (int e = 0; e < 2; e++) {
            if (slot[e] < 0) continue;
            if (!(*dst[e] = malloc((size_t)L * sizeof(float)))) {
                nesfd_reply_error(r, 503, "out_of_memory", "out of memory");
                return;
            }
            memcpy(*dst[e], job->z + (size_t)slot[e] * L, (size_t)L * sizeof(float));
        }
        interpolate_decode(st);
        return;
    }
    if (cycle_stage(st)) return;
    job = nesfd_ticket_data(st->p.ticket);
    json_t *frames = json_array();
    for (int k = 0; k < job->n; k++) {
        nesfd_item *it = nesfd_ticket_item(st->p.ticket, k);
        json_t *f = json_pack("{s:f}", "t", nesf_interp_t(k, job->n));
        if (it->status) {
            json_t *e = item_error_json(&job->item_err[k]);
            json_object_update(f, e);
            json_decref(e);
        } else {
            char formula[128];
            nesf_structure_formula(job->s[k], formula, sizeof formula);
            json_object_set_new(f, "formula", json_string(formula));
            json_object_set_new(f, "num_atoms", json_integer(job->s[k]->n));
            json_object_set_new(f, "structure", structure_json(st, job->s[k]));
            json_object_set_new(json_object_get(f, "structure"), "confidence", confidence_json(st, k));
        }
        json_array_append_new(frames, f);
    }
    json_t *ans = answer_base(st);
    json_object_set_new(ans, "steps", json_integer(job->n));
    json_object_set_new(ans, "frames", frames);
    json_object_set_new(ans, "decoded", json_integer(decoded_count(job)));
    if (st->warn_ends) json_object_set(ans, "warnings", st->warn_ends);
    nesfd_reply_json(r, 200, ans);
}

/* ---- GET routes ---- */

static void h_health(nesfd_req *r, void *ctx)
{
    (void)ctx;
    nesfd_reply_json(r, 200, json_pack("{s:s, s:s}", "status", "ok", "version", NESF_VERSION));
}

static void h_ready(nesfd_req *r, void *ctx)
{
    nesfd_app *app = ctx;
    int draining = atomic_load(&app->draining);
    int ready = !draining && nesfd_engine_ready(app->engine);
    json_t *models = json_array();
    for (int i = 0; i < nesfd_engine_count(app->engine); i++)
        json_array_append_new(models, json_string(nesfd_engine_at(app->engine, i)->name));
    json_t *ans = json_pack("{s:b, s:o}", "ready", ready, "models", models);
    if (!ready) {
        json_object_set_new(ans, "reason", json_string(draining ? "shutting down" : "models not loaded"));
        nesfd_req_add_header(r, "Retry-After", "5");
    }
    nesfd_reply_json(r, ready ? 200 : 503, ans);
}

static void h_models(nesfd_req *r, void *ctx)
{
    nesfd_app *app = ctx;
    json_t *list = json_array();
    for (int i = 0; i < nesfd_engine_count(app->engine); i++) {
        nesfd_model_entry *me = nesfd_engine_at(app->engine, i);
        json_t *species = json_array();
        int A = nesf_model_num_species(me->model);
        for (int c = 0; c < A; c++) {
            const nesf_element *el = nesf_element_get(nesf_model_species_z(me->model, c));
            json_array_append_new(species, json_string(el ? el->symbol : "?"));
        }
        float lo[3], hi[3];
        nesf_model_bbox(me->model, lo, hi);
        char *dj = nesf_decode_opts_to_json(&app->cfg->decode);
        json_t *defaults = dj ? json_loads(dj, 0, NULL) : NULL;
        free(dj);
        const nesf_domain *dom = nesf_model_domain(me->model);
        char *domj = dom ? nesf_domain_to_json(dom) : NULL;
        json_t *domain = domj ? json_loads(domj, 0, NULL) : NULL;
        free(domj);
        json_array_append_new(list, json_pack(
            "{s:s, s:s, s:b, s:i, s:i, s:o, s:s, s:s, s:I, s:[fff], s:[fff], s:o}",
            "name", me->name, "id", me->id, "default", i == 0, "latent_size", me->latent,
            "num_species", A, "species", species, "backend", me->be->name, "device", me->be->device,
            "parameters", (json_int_t)me->params, "bbox_min", lo[0], lo[1], lo[2],
            "bbox_max", hi[0], hi[1], hi[2], "decode_defaults", defaults ? defaults : json_object()));
        json_object_set_new(json_array_get(list, json_array_size(list) - 1), "domain",
                            domain ? domain : json_null());
    }
    nesfd_reply_json(r, 200, json_pack("{s:o}", "models", list));
}

static void h_metrics(nesfd_req *r, void *ctx)
{
    nesfd_app *app = ctx;
    size_t len;
    char *text = nesfd_metrics_render(app->metrics, &len);
    if (!text) {
        nesfd_reply_error(r, 503, "out_of_memory", "out of memory");
        return;
    }
    nesfd_reply(r, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
}

/* The web viewer: any GET path that is not an API route. */
static void h_static(nesfd_req *r, void *ctx)
{
    nesfd_app *app = ctx;
    nesf_static_file f;
    nesf_error err;
    const char *path = nesfd_req_path(r);
    int rc = nesf_static_load(app->cfg->web_root, path, &f, &err);
    if (rc == NESF_ERR_NOTFOUND || rc == NESF_ERR_INVALID) {
        /* the viewer's files are public; what is not one is behind the token */
        if (nesfd_req_require_token(r)) return;
        nesfd_reply_error(r, 404, "not_found", "no route or file %s", path);
        return;
    }
    if (rc) {
        nesfd_reply_error(r, 500, "static_file", "%s", err.msg);
        return;
    }
    nesfd_reply(r, 200, f.content_type, (char *)f.data, f.size);
}

const nesfd_route *nesfd_routes(const nesfd_config *cfg, int *n)
{
    static const nesfd_route routes[] = {
        {"/decode", "POST", h_decode, 0, 0},
        {"/encode", "POST", h_encode, 0, 0},
        {"/interpolate", "POST", h_interpolate, 0, 0},
        {"/reconstruct", "POST", h_reconstruct, 0, 0},
        {"/health", "GET", h_health, 1, 0},
        {"/ready", "GET", h_ready, 0, 0},
        {"/models", "GET", h_models, 0, 0},
        {"/metrics", "GET", h_metrics, 0, 0},
        /* the Open Inference Protocol (oip.c) */
        {"/v2", "GET", nesfd_oip_server, 0, 0},
        {"/v2/health/live", "GET", nesfd_oip_live, 1, 0},
        {"/v2/health/ready", "GET", nesfd_oip_ready, 1, 0},
        {"/v2/models/", "GET,POST", nesfd_oip_models, 0, 1},
        {"/", "GET", h_static, 1, 1}, /* last: only with a web root */
    };
    *n = (int)(sizeof routes / sizeof routes[0]) - (cfg->web_root[0] ? 0 : 1);
    return routes;
}

/* ---- shared with the Open Inference Protocol routes (oip.c) ---- */

nesf_structure *nesfd_parse_structure(nesfd_req *r, nesfd_model_entry *me, json_t *v,
                                      const char *where)
{
    return parse_structure(r, me, v, where);
}

int nesfd_parse_count(nesfd_req *r, size_t n, const char *what, const nesfd_config *cfg)
{
    return parse_count(r, n, what, cfg);
}

int nesfd_error_status(int code) { return http_status_of(code); }

json_t *nesfd_item_error_json(const nesf_error *e) { return item_error_json(e); }

#include "oip.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handlers.h"
#include "sjson.h"

#define MODELS_PREFIX "/v2/models/"
#define DEFAULT_SYMPREC 0.1 /* as /decode's */
#define MAX_TENSOR_DEPTH 8

/* Output tensors; a decode gives the first three, an encode the last. */
enum { OUT_STRUCTURE = 1, OUT_LATTICE = 2, OUT_DECODED = 4, OUT_LATENT = 8 };
#define OUT_DECODE_ALL (OUT_STRUCTURE | OUT_LATTICE | OUT_DECODED)

static const struct {
    const char *name;
    unsigned bit;
} output_names[] = {
    {"structure", OUT_STRUCTURE}, {"lattice", OUT_LATTICE}, {"decoded", OUT_DECODED}, {"latent", OUT_LATENT},
};

/* An infer request between its parsing and its answer (kept across the
 * suspension while the batcher works). */
typedef struct oip_state {
    nesfd_pending p;        /* first: the batcher's callback gets &st->p */
    json_t *id;             /* the request's "id", or NULL */
    unsigned want;          /* OUT_* */
    double symprec;
    nesf_refine_opts refine; /* structure inputs: parameters.refine (default on) */
} oip_state;

/* The request state's free_fn: the ticket keeps its own reference. */
static void state_free(void *p)
{
    oip_state *st = p;
    if (!st) return;
    nesfd_pending_release(&st->p);
    json_decref(st->id);
    free(st);
}

/* The same condition as /ready: models loaded and not draining. */
static int ready_now(nesfd_app *app)
{
    return !atomic_load(&app->draining) && nesfd_engine_ready(app->engine);
}

/* ---- server-wide routes ---- */

/* No protocol extensions are implemented, so none are announced. */
void nesfd_oip_server(nesfd_req *r, void *ctx)
{
    (void)ctx;
    nesfd_reply_json(r, 200, json_pack("{s:s, s:s, s:[]}", "name", "nesfd", "version", NESF_VERSION,
                                       "extensions"));
}

/* Answering at all is the liveness signal: no state is consulted. */
void nesfd_oip_live(nesfd_req *r, void *ctx)
{
    (void)ctx;
    nesfd_reply_json(r, 200, json_pack("{s:b}", "live", 1));
}

/* 503 while not ready: a Kubernetes readiness probe reads only the status. */
void nesfd_oip_ready(nesfd_req *r, void *ctx)
{
    int ready = ready_now(ctx);
    if (!ready) nesfd_req_add_header(r, "Retry-After", "5");
    nesfd_reply_json(r, ready ? 200 : 503, json_pack("{s:b}", "ready", ready));
}

/* ---- model metadata and readiness ---- */

/* A $metadata_tensor with a variable batch dimension (-1). */
static json_t *tensor_meta(const char *name, const char *datatype, int dim2)
{
    json_t *shape = dim2 ? json_pack("[ii]", -1, dim2) : json_pack("[i]", -1);
    return json_pack("{s:s, s:s, s:o}", "name", name, "datatype", datatype, "shape", shape);
}

/* The inputs are alternatives: an infer request sends one of them. */
static void model_metadata(nesfd_req *r, const nesfd_model_entry *me)
{
    int L = me->latent;
    json_t *inputs = json_pack("[o, o]", tensor_meta("latent", "FP32", L), tensor_meta("structure", "BYTES", 0));
    json_t *outputs = json_pack("[o, o, o, o]", tensor_meta("structure", "BYTES", 0),
                                tensor_meta("lattice", "FP32", 6), tensor_meta("decoded", "BOOL", 0),
                                tensor_meta("latent", "FP32", L));
    nesfd_reply_json(r, 200, json_pack("{s:s, s:s, s:o, s:o}", "name", me->name, "platform", "nesf",
                                       "inputs", inputs, "outputs", outputs));
}

static void model_ready(nesfd_req *r, nesfd_app *app, const nesfd_model_entry *me)
{
    int ready = ready_now(app) && me->model && me->batcher;
    if (!ready) nesfd_req_add_header(r, "Retry-After", "5");
    nesfd_reply_json(r, ready ? 200 : 503, json_pack("{s:s, s:b}", "name", me->name, "ready", ready));
}

/* ---- infer: parsing ---- */

/* Tensor data may be flat or nested in row-major order (the protocol
 * allows both): appends the leaves to flat. */
static int flatten(json_t *data, json_t *flat, int depth)
{
    if (!json_is_array(data)) return json_array_append(flat, data);
    if (depth >= MAX_TENSOR_DEPTH) return -1;
    size_t i;
    json_t *v;
    json_array_foreach(data, i, v) {
        if (flatten(v, flat, depth + 1)) return -1;
    }
    return 0;
}

/* Checks an input tensor's name/shape/datatype/data; *flat receives its
 * data flattened (new reference) and shape[0..*ndim) its dimensions. */
static int parse_tensor(nesfd_req *r, json_t *in, long long shape[2], int *ndim, json_t **flat)
{
    static const char *const keys[] = {"name", "shape", "datatype", "parameters", "data", NULL};
    const char *key;
    json_t *v;
    json_object_foreach(in, key, v) {
        const char *const *k = keys;
        while (*k && strcmp(*k, key)) k++;
        if (!*k) {
            nesfd_reply_error(r, 400, "invalid_request", "inputs[0]: unknown key '%s'", key);
            return -1;
        }
    }
    json_t *sh = json_object_get(in, "shape"), *data = json_object_get(in, "data");
    if (!json_is_array(sh) || json_array_size(sh) < 1 || json_array_size(sh) > 2) {
        nesfd_reply_error(r, 400, "invalid_request", "inputs[0].shape: expected [N] or [N, M]");
        return -1;
    }
    *ndim = (int)json_array_size(sh);
    for (int d = 0; d < *ndim; d++) {
        json_t *x = json_array_get(sh, (size_t)d);
        if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) > (1 << 24)) {
            nesfd_reply_error(r, 400, "invalid_request", "inputs[0].shape[%d]: not a dimension", d);
            return -1;
        }
        shape[d] = json_integer_value(x);
    }
    if (!data) {
        nesfd_reply_error(r, 400, "invalid_request", "inputs[0]: no \"data\" (the binary tensor "
                          "extension is not supported)");
        return -1;
    }
    *flat = json_array();
    if (!*flat || flatten(data, *flat, 0)) {
        json_decref(*flat);
        nesfd_reply_error(r, 400, "invalid_request", "inputs[0].data: nested deeper than %d", MAX_TENSOR_DEPTH);
        return -1;
    }
    long long want = shape[0] * (*ndim == 2 ? shape[1] : 1);
    if ((long long)json_array_size(*flat) != want) {
        nesfd_reply_error(r, 400, "invalid_request", "inputs[0].data has %zu elements; its shape needs %lld",
                          json_array_size(*flat), want);
        json_decref(*flat);
        return -1;
    }
    return 0;
}

/* Each input has one datatype: nothing is converted silently. */
static int check_datatype(nesfd_req *r, json_t *in, const char *want)
{
    const char *dt = json_string_value(json_object_get(in, "datatype"));
    if (dt && !strcmp(dt, want)) return 0;
    nesfd_reply_error(r, 400, "invalid_request", "inputs[0] '%s' must have datatype %s, not %s",
                      json_string_value(json_object_get(in, "name")), want, dt ? dt : "(none)");
    return -1;
}

/* "latent" data: finite 32-bit floats; 1 when all were. */
static int fill_latents(nesfd_req *r, nesfd_job *job, json_t *flat, const nesf_decode_opts *opts)
{
    for (size_t k = 0; k < json_array_size(flat); k++) {
        json_t *x = json_array_get(flat, k);
        float f = json_is_number(x) ? (float)json_number_value(x) : NAN;
        if (!isfinite(f)) {
            nesfd_reply_error(r, 400, "invalid_latent", "inputs[0].data[%zu]: not a finite 32-bit float", k);
            return 0;
        }
        job->z[k] = f;
    }
    job->opts = *opts;
    return 1;
}

/* "structure" data: CIF or structure JSON text each; 1 when all parsed. */
static int fill_structures(nesfd_req *r, nesfd_model_entry *me, nesfd_job *job, json_t *flat)
{
    for (int i = 0; i < job->n; i++) {
        char where[48];
        snprintf(where, sizeof where, "inputs[0].data[%d]", i);
        json_t *text = json_array_get(flat, (size_t)i);
        if (!json_is_string(text)) {
            nesfd_reply_error(r, 400, "invalid_structure", "%s: expected CIF or structure JSON text", where);
            return 0;
        }
        if (!(job->s[i] = nesfd_parse_structure(r, me, text, where))) return 0;
    }
    return 1;
}

/* The job of the one input: "latent" FP32 [N, latent_size] decodes,
 * "structure" BYTES [N] (or [N, 1]) encodes; NULL when the request was
 * answered with an error. */
static nesfd_job *input_job(oip_state *st, json_t *in, int decode, const nesf_decode_opts *opts)
{
    nesfd_req *r = st->p.req;
    nesfd_model_entry *me = st->p.me;
    long long shape[2];
    int ndim, ok = 0;
    json_t *flat;
    if (check_datatype(r, in, decode ? "FP32" : "BYTES") || parse_tensor(r, in, shape, &ndim, &flat))
        return NULL;
    nesfd_job *job = NULL;
    if (decode && (ndim != 2 || shape[1] != me->latent))
        nesfd_reply_error(r, 400, "invalid_latent", "inputs[0] 'latent' must have shape [N, %d] (model "
                          "'%s''s latent size)", me->latent, me->name);
    else if (!decode && ndim == 2 && shape[1] != 1)
        nesfd_reply_error(r, 400, "invalid_request", "inputs[0] 'structure' must have shape [N] or [N, 1]");
    else if (!nesfd_parse_count(r, (size_t)shape[0], "inputs[0].shape[0]", st->p.app->cfg)) {
        if (!(job = nesfd_job_new(decode ? NESFD_JOB_DECODE : NESFD_JOB_ENCODE, me, (int)shape[0])))
            nesfd_reply_error(r, 503, "out_of_memory", "out of memory");
        else if (decode)
            ok = fill_latents(r, job, flat, opts);
        else {
            job->refine = st->refine;
            ok = fill_structures(r, me, job, flat);
        }
    }
    json_decref(flat);
    if (ok) return job;
    nesfd_job_free(job);
    return NULL;
}

/* "parameters": "symprec", "refine" (/encode's) and decoding options
 * (/decode's "options"); binary_data_output may be false (Triton's clients
 * send it). */
static int parse_parameters(oip_state *st, json_t *params, nesf_decode_opts *opts)
{
    nesfd_req *r = st->p.req;
    nesf_refine_opts_default(&st->refine);
    if (!params) return 0;
    if (!json_is_object(params)) {
        nesfd_reply_error(r, 400, "invalid_request", "'parameters' must be an object");
        return -1;
    }
    json_t *bin = json_object_get(params, "binary_data_output"); /* Triton clients send it */
    if (json_is_true(bin)) {
        nesfd_reply_error(r, 400, "invalid_request", "parameters.binary_data_output: the binary tensor "
                          "extension is not supported");
        return -1;
    }
    if (nesfd_parse_refine(r, params, &st->refine)) return -1;
    json_t *decode = json_deep_copy(params), *sp = json_object_get(params, "symprec");
    if (decode) json_object_del(decode, "binary_data_output");
    if (decode) json_object_del(decode, "refine");
    if (sp) {
        if (!json_is_number(sp) || !(json_number_value(sp) > 0) || json_number_value(sp) > 1) {
            json_decref(decode);
            nesfd_reply_error(r, 400, "invalid_request", "parameters.symprec must be a number in (0, 1] (Å)");
            return -1;
        }
        st->symprec = json_number_value(sp);
        json_object_del(decode, "symprec");
    }
    nesf_error err;
    int rc = !decode || nesf_decode_opts_from_json(opts, decode, &err) || nesf_decode_opts_check(opts, &err);
    json_decref(decode);
    if (rc) nesfd_reply_error(r, 400, "invalid_options", "parameters: %s (parameters are \"symprec\", "
                              "\"refine\" and decoding options)", decode ? err.msg : "out of memory");
    return rc ? -1 : 0;
}

/* "outputs": the subset to answer; absent = every output of the kind. */
static int parse_outputs(oip_state *st, json_t *outs, int decode)
{
    nesfd_req *r = st->p.req;
    unsigned allowed = decode ? OUT_DECODE_ALL : OUT_LATENT;
    if (!outs) {
        st->want = allowed;
        return 0;
    }
    size_t i;
    json_t *o;
    if (!json_is_array(outs)) goto bad;
    json_array_foreach(outs, i, o) {
        const char *name = json_string_value(json_object_get(o, "name"));
        json_t *bin = json_object_get(json_object_get(o, "parameters"), "binary_data");
        unsigned bit = 0;
        for (size_t k = 0; name && k < sizeof output_names / sizeof output_names[0]; k++)
            if (!strcmp(output_names[k].name, name)) bit = output_names[k].bit;
        if (!(bit & allowed)) {
            nesfd_reply_error(r, 400, "invalid_request", "outputs[%zu]: no output '%s' for input '%s' "
                              "(see GET /v2/models/%s)", i, name ? name : "", decode ? "latent" : "structure",
                              st->p.me->name);
            return -1;
        }
        if (json_is_true(bin)) {
            nesfd_reply_error(r, 400, "invalid_request", "outputs[%zu]: the binary tensor extension is "
                              "not supported", i);
            return -1;
        }
        st->want |= bit;
    }
    if (st->want) return 0;
bad:
    nesfd_reply_error(r, 400, "invalid_request", "'outputs' must be a non-empty array of {\"name\": ...}");
    return -1;
}

/* ---- infer: submission and answer ---- */

/* The deadline counts from the request's arrival, as for the native routes. */
static oip_state *new_state(nesfd_app *app, nesfd_req *r, nesfd_model_entry *me)
{
    oip_state *st = calloc(1, sizeof *st);
    if (!st) {
        nesfd_reply_error(r, 503, "out_of_memory", "out of memory");
        return NULL;
    }
    nesfd_pending_init(&st->p, app, r, me);
    st->symprec = DEFAULT_SYMPREC;
    nesfd_req_set_state(r, st, state_free);
    return st;
}

/* First run of an infer request: everything is checked before any work
 * is queued, so a bad request costs the batcher nothing. */
static void infer_start(nesfd_app *app, nesfd_req *r, nesfd_model_entry *me)
{
    static const char *const keys[] = {"id", "parameters", "inputs", "outputs", NULL};
    json_t *root = nesfd_parse_body(r, "an inference request object", keys);
    oip_state *st;
    if (!root || !(st = new_state(app, r, me))) goto out;
    json_t *id = json_object_get(root, "id"), *inputs = json_object_get(root, "inputs");
    if (id && !json_is_string(id)) {
        nesfd_reply_error(r, 400, "invalid_request", "'id' must be a string");
        goto out;
    }
    st->id = json_incref(id);
    nesf_decode_opts opts;
    /* bytewise, padding included: the options are part of the batching key */
    memcpy(&opts, &app->cfg->decode, sizeof opts);
    if (parse_parameters(st, json_object_get(root, "parameters"), &opts)) goto out;
    json_t *in = json_array_get(inputs, 0);
    const char *name = json_string_value(json_object_get(in, "name"));
    if (!json_is_array(inputs) || json_array_size(inputs) != 1 || !json_is_object(in) || !name) {
        nesfd_reply_error(r, 400, "invalid_request", "'inputs' must hold one named tensor: 'latent' "
                          "(FP32 [N, %d]) or 'structure' (BYTES [N])", me->latent);
        goto out;
    }
    int decode = !strcmp(name, "latent");
    if (!decode && strcmp(name, "structure")) {
        nesfd_reply_error(r, 400, "invalid_request", "no input '%s': model '%s' takes 'latent' (FP32 "
                          "[N, %d]) or 'structure' (BYTES [N])", name, me->name, me->latent);
        goto out;
    }
    if (parse_outputs(st, json_object_get(root, "outputs"), decode)) goto out;
    nesfd_job *job = input_job(st, in, decode, &opts);
    if (job) nesfd_pending_submit(&st->p, job);
out:
    json_decref(root);
}

/* A $response_output; takes the references to shape and data. */
static json_t *tensor(const char *name, const char *datatype, json_t *shape, json_t *data)
{
    return json_pack("{s:s, s:s, s:o, s:o}", "name", name, "datatype", datatype, "shape", shape, "data", data);
}

/* The decode outputs; an item that did not decode has its error object as
 * its structure text, a zero lattice row and decoded = false. */
static void add_decode_outputs(const oip_state *st, const nesfd_job *job, json_t *outs)
{
    json_t *text = json_array(), *lat = json_array(), *ok = json_array();
    for (int i = 0; i < job->n; i++) {
        int good = !nesfd_ticket_item(st->p.ticket, i)->status && job->s[i];
        json_t *o = good ? nesf_sjson_to_json(job->s[i], NESF_SJSON_FULL, st->symprec)
                         : nesfd_item_error_json(&job->item_err[i]);
        char *s = o ? nesf_sjson_dumps(o) : NULL;
        json_array_append_new(text, s ? json_string(s) : json_null());
        free(s);
        json_decref(o);
        nesf_cellpar p = {0};
        if (good) nesf_lattice_params(&job->s[i]->lat, &p);
        double v[6] = {p.a, p.b, p.c, p.alpha, p.beta, p.gamma};
        for (int k = 0; k < 6; k++) json_array_append_new(lat, json_real((float)v[k]));
        json_array_append_new(ok, json_boolean(good));
    }
    json_t *n = json_integer(job->n);
    if (st->want & OUT_STRUCTURE) json_array_append_new(outs, tensor("structure", "BYTES", json_pack("[O]", n), text));
    else json_decref(text);
    if (st->want & OUT_LATTICE) json_array_append_new(outs, tensor("lattice", "FP32", json_pack("[Oi]", n, 6), lat));
    else json_decref(lat);
    if (st->want & OUT_DECODED) json_array_append_new(outs, tensor("decoded", "BOOL", json_pack("[O]", n), ok));
    else json_decref(ok);
    json_decref(n);
}

/* The encode output, or an error for the first structure that failed. */
static int add_encode_output(const oip_state *st, const nesfd_job *job, json_t *outs)
{
    for (int i = 0; i < job->n; i++) {
        nesfd_item *it = nesfd_ticket_item(st->p.ticket, i);
        if (it->status) {
            int status = nesfd_error_status(job->item_err[i].code ? job->item_err[i].code : it->status);
            nesfd_reply_error(st->p.req, status, status == 400 ? "invalid_structure" : "encode_failed",
                              "inputs[0].data[%d]: %s", i, job->item_err[i].msg);
            return -1;
        }
    }
    int L = st->p.me->latent;
    json_t *data = json_array();
    for (size_t k = 0; k < (size_t)job->n * L; k++) json_array_append_new(data, json_real(job->z[k]));
    json_array_append_new(outs, tensor("latent", "FP32", json_pack("[ii]", job->n, L), data));
    return 0;
}

/* Second run, after the ticket ended: the $inference_response. */
static void infer_resume(nesfd_req *r)
{
    oip_state *st = nesfd_req_state(r);
    if (nesfd_pending_failed(&st->p)) return;
    nesfd_job *job = nesfd_ticket_data(st->p.ticket);
    json_t *outs = json_array();
    if (job->kind == NESFD_JOB_DECODE) add_decode_outputs(st, job, outs);
    else if (add_encode_output(st, job, outs)) {
        json_decref(outs);
        return;
    }
    json_t *id = st->id ? json_incref(st->id) : json_string(nesfd_req_id(r));
    nesfd_reply_json(r, 200, json_pack("{s:s, s:o, s:{s:i}, s:o}", "model_name", st->p.me->name, "id", id,
                                       "parameters", "batch", nesfd_ticket_max_batch(st->p.ticket),
                                       "outputs", outs));
}

/* ---- /v2/models/{name}[/ready|/infer] ---- */

/* One prefix route for the per-model paths, since a model name is a path
 * segment; the method is checked here per path. */
void nesfd_oip_models(nesfd_req *r, void *ctx)
{
    nesfd_app *app = ctx;
    if (nesfd_req_state(r)) { /* resumed: the ticket ended */
        infer_resume(r);
        return;
    }
    const char *rest = nesfd_req_path(r) + strlen(MODELS_PREFIX), *tail = rest + strcspn(rest, "/");
    char name[64];
    if (tail == rest || tail - rest >= (long)sizeof name) {
        nesfd_reply_error(r, 404, "unknown_model", "no model named '%.*s'", (int)(tail - rest), rest);
        return;
    }
    snprintf(name, sizeof name, "%.*s", (int)(tail - rest), rest);
    if (!strncmp(tail, "/versions/", 10)) {
        nesfd_reply_error(r, 404, "not_found", "model versions are not supported: use %s%s without "
                          "/versions/...", MODELS_PREFIX, name);
        return;
    }
    nesfd_model_entry *me = nesfd_engine_find(app->engine, name);
    if (!me) {
        nesfd_reply_error(r, 404, "unknown_model", "no model named '%s' (see GET /models)", name);
        return;
    }
    const char *want = !*tail || !strcmp(tail, "/ready") ? "GET" : !strcmp(tail, "/infer") ? "POST" : NULL;
    if (!want) {
        nesfd_reply_error(r, 404, "not_found", "no route %s", nesfd_req_path(r));
        return;
    }
    const char *method = nesfd_req_method(r);
    if (strcmp(method, want) && !(!strcmp(want, "GET") && !strcmp(method, "HEAD"))) {
        nesfd_req_add_header(r, "Allow", !strcmp(want, "GET") ? "GET, HEAD, OPTIONS" : "POST, OPTIONS");
        nesfd_reply_error(r, 405, "method_not_allowed", "%s takes %s, not %s", nesfd_req_path(r), want, method);
        return;
    }
    if (!*tail) model_metadata(r, me);
    else if (!strcmp(tail, "/ready")) model_ready(r, app, me);
    else infer_start(app, r, me);
}

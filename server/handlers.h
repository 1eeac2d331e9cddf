/* handlers.h - nesfd's routes: what each endpoint parses, submits to the
 * model batchers and answers (api/openapi.yaml is the contract). */
#ifndef NESFD_HANDLERS_H
#define NESFD_HANDLERS_H

#include <stdatomic.h>

#include "config.h"
#include "engine.h"
#include "http.h"
#include "metrics.h"

typedef struct nesfd_app {
    const nesfd_config *cfg;
    nesfd_engine *engine;
    nesfd_metrics *metrics;
    atomic_int draining;     /* set on SIGTERM: /ready answers 503 */
} nesfd_app;

/* The route table (static storage); *n receives its length.  The static
 * file route is included only when the configuration has a web root. */
const nesfd_route *nesfd_routes(const nesfd_config *cfg, int *n);

/* Request parsing shared by nesfd's own routes and the Open Inference
 * Protocol's (oip.c).  Each answers the request with an error (status 400)
 * and returns NULL / -1 when the input is bad. */
/* One structure ({"cif": text}, structure JSON, or CIF/JSON text) whose
 * elements the model knows; the caller owns it. */
nesf_structure *nesfd_parse_structure(nesfd_req *r, nesfd_model_entry *me, json_t *v,
                                      const char *where);
/* n items in one request: at least one, at most the request/queue limit. */
int nesfd_parse_count(nesfd_req *r, size_t n, const char *what, const nesfd_config *cfg);
/* obj's "refine" (refine.h: true, a step count, an object, false), at most
 * 200 steps, into o; absent: the default (refined).  400 invalid_refine. */
int nesfd_parse_refine(nesfd_req *r, json_t *obj, nesf_refine_opts *o);
/* A POST request between its parsing and its answer, kept across the
 * suspensions while a model's batcher works: the first member of each
 * route's state (handlers.c, oip.c). */
typedef struct nesfd_pending {
    nesfd_app *app;
    nesfd_req *req;
    nesfd_model_entry *me;
    nesfd_ticket *ticket;      /* the last submission's, owned */
    int submit_rc;             /* NESFD_SUBMIT_* of it; -1: no ticket (out of memory) */
    int64_t deadline;          /* from the request's arrival, as every route's */
} nesfd_pending;

void nesfd_pending_init(nesfd_pending *p, nesfd_app *app, nesfd_req *r, nesfd_model_entry *me);
/* Hands the job (taken over) to the model's batcher and suspends the
 * request; the handler runs again when the ticket ends, or at once when
 * the batcher refused it.  With no ticket (submit_rc -1, out of memory) the
 * request is not suspended and is answered here. */
void nesfd_pending_submit(nesfd_pending *p, nesfd_job *job);
/* Answers a refused submission or a ticket that did not finish (503, 504);
 * returns 1 if it answered, 0 when the ticket is done. */
int nesfd_pending_failed(nesfd_pending *p);
/* Drops the ticket. */
void nesfd_pending_release(nesfd_pending *p);
/* The request's JSON object body with no key outside keys (NULL-terminated;
 * NULL: any); `what` names the object in the error ("a JSON object").  Else
 * answers 400 and returns NULL.  The caller owns the result. */
json_t *nesfd_parse_body(nesfd_req *r, const char *what, const char *const *keys);

/* The HTTP status for an nesf_error code (400 bad input, 500, 503). */
int nesfd_error_status(int code);
/* {"error": {"code": "decode_failed", "message"}}: one item that did not decode. */
json_t *nesfd_item_error_json(const nesf_error *e);

#endif

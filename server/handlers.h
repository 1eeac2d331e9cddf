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
/* The HTTP status for an nesf_error code (400 bad input, 500, 503). */
int nesfd_error_status(int code);
/* {"error": {"code": "decode_failed", "message"}}: one item that did not decode. */
json_t *nesfd_item_error_json(const nesf_error *e);

#endif

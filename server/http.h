/* http.h - the HTTP layer of nesfd on libmicrohttpd: listening, routing,
 * request bodies with a size limit, request ids, bearer-token auth, CORS,
 * JSON responses and errors, suspend/resume, request logs and metrics.
 *
 * Connections are accepted by the request-head gate (gate.h), which hands
 * those with a sane request head to libmicrohttpd and answers the rest in
 * the JSON shape below; every answer closes its connection.
 *
 * libmicrohttpd runs its own pool of threads, each an epoll loop.  A route
 * handler runs on one of them once the whole body has arrived; it must
 * either reply or suspend the request.  A suspended request costs no
 * thread: another thread (the batcher) calls nesfd_req_resume when the
 * work is done and the handler runs again, on a pool thread, to reply.
 *
 * Errors are JSON {"error": {"code", "message", "request_id"}}, except under
 * /v2, the Open Inference Protocol's namespace (oip.h), where they are its
 * {"error": "message"}; every
 * response carries X-Request-Id (the caller's when it sent a sane one). */
#ifndef NESFD_HTTP_H
#define NESFD_HTTP_H

#include <jansson.h>
#include <stddef.h>

#include "config.h"
#include "error.h"
#include "metrics.h"

typedef struct nesfd_http nesfd_http;
typedef struct nesfd_req nesfd_req;

typedef void (*nesfd_handler_fn)(nesfd_req *r, void *ctx);

typedef struct nesfd_route {
    const char *path;      /* exact match, e.g. "/decode" */
    const char *method;    /* "GET" (HEAD allowed too), "POST", or both as "GET,POST" */
    nesfd_handler_fn fn;
    int public;            /* no bearer token needed (/health) */
    int prefix;            /* also matches paths under it, when nothing matches exactly */
} nesfd_route;

/* Binds, starts the thread pool and serves routes (copied) until stopped.
 * ctx is handed to every handler. */
int nesfd_http_start(const nesfd_config *c, const nesfd_route *routes, int n_routes, void *ctx,
                     nesfd_metrics *metrics, nesfd_http **out, nesf_error *err);
/* The bound port (useful with port 0). */
int nesfd_http_port(const nesfd_http *h);
/* Graceful stop, step 1: stop accepting (the gate closes the listening
 * socket) and answer requests not yet routed with 503. */
void nesfd_http_quiesce(nesfd_http *h);
/* Requests received and not yet completed. */
int nesfd_http_inflight(nesfd_http *h);
/* Step 2: closes every connection and joins the threads; frees h. */
void nesfd_http_stop(nesfd_http *h);

/* ---- inside a handler ---- */
const char *nesfd_req_id(const nesfd_req *r);
const char *nesfd_req_body(const nesfd_req *r, size_t *len);
/* "GET", "POST", ... */
const char *nesfd_req_method(const nesfd_req *r);
/* The request path, without the query string. */
const char *nesfd_req_path(const nesfd_req *r);
/* Query-string argument or request header (case-insensitive), or NULL. */
const char *nesfd_req_arg(nesfd_req *r, const char *key);
const char *nesfd_req_header(nesfd_req *r, const char *name);
/* CLOCK_MONOTONIC ns when the request arrived. */
long long nesfd_req_start_ns(const nesfd_req *r);

/* With a token configured and not sent (or wrong): answers 401 and
 * returns 1; else 0.  For public routes that must not reveal what exists
 * (the static-file fallback's misses). */
int nesfd_req_require_token(nesfd_req *r);

/* Handler state kept across suspend/resume, freed with free_fn when the
 * request completes. */
void *nesfd_req_state(nesfd_req *r);
void nesfd_req_set_state(nesfd_req *r, void *state, void (*free_fn)(void *));
/* Recorded in the request's log line. */
void nesfd_req_set_batch(nesfd_req *r, int batch);

/* Only from the handler; it must return right after.  Resume from any
 * thread, once per suspend. */
void nesfd_req_suspend(nesfd_req *r);
void nesfd_req_resume(nesfd_req *r);

/* Responses: exactly one per request.  body is malloc'd and taken over. */
void nesfd_req_add_header(nesfd_req *r, const char *name, const char *value);
void nesfd_reply(nesfd_req *r, int status, const char *content_type, char *body, size_t len);
/* Takes the reference to j. */
void nesfd_reply_json(nesfd_req *r, int status, json_t *j);
void nesfd_reply_error(nesfd_req *r, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif

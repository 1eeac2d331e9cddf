#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "batcher.h"
#include "gate.h"
#include "headers.h"
#include "log.h"

#define MAX_EXTRA_HEADERS 6

struct nesfd_http {
    struct MHD_Daemon *d;
    nesfd_gate *gate;        /* accepts, and answers heads libmicrohttpd would answer in HTML */
    nesfd_route *routes;
    int n_routes;
    int *route_metric;       /* metrics label per route */
    int other_metric;        /* unknown paths */
    void *ctx;
    nesfd_metrics *metrics;
    size_t body_limit;
    char token[256];
    char (*origins)[256];
    int n_origins;
    int log_requests;
    int listen_fd, port;
    atomic_int inflight;
    atomic_int draining;
    /* connection watch: slow heads and bodies are cut off (sweeper thread) */
    pthread_mutex_t conns_mu;
    struct conn_watch *conns;
    pthread_t sweeper;
    int sweeper_started, sweeper_stop;
    pthread_cond_t sweeper_cv;
    int64_t body_ns;
    /* bytes of request bodies reserved, all connections */
    atomic_size_t body_bytes;
    size_t body_memory;
};

/* A TCP connection's body clock: its body is due body_ns after the head.
 * (The head's own deadline is the gate's, which hands on only complete
 * heads, and each connection carries one request.) */
typedef struct conn_watch {
    int fd;
    int64_t body_since; /* 0: not waiting for a body */
    struct conn_watch *prev, *next;
} conn_watch;

struct nesfd_req {
    nesfd_http *h;
    struct MHD_Connection *conn;
    char id[NESFD_REQUEST_ID_SIZE];
    const nesfd_route *route;
    int metric_route;
    char method[16];
    char path[1024];
    size_t path_too_long;     /* the request path's length when it did not fit */
    char *body;
    size_t len, cap;
    long long start;
    int status, replied, suspended, batch;
    int late_status;          /* error found while receiving the body */
    int queue_failed;
    size_t reserved;          /* of h->body_bytes, for this body */
    conn_watch *watch;
    char err_code[32];
    const char *origin;       /* allowed Origin to echo, or NULL */
    struct { char name[40], value[160]; } hdr[MAX_EXTRA_HEADERS];
    int nhdr;
    void *state;
    void (*state_free)(void *);
};

/* ---- request accessors ---- */

const char *nesfd_req_id(const nesfd_req *r) { return r->id; }
const char *nesfd_req_path(const nesfd_req *r) { return r->path; }
const char *nesfd_req_method(const nesfd_req *r) { return r->method; }
long long nesfd_req_start_ns(const nesfd_req *r) { return r->start; }
void *nesfd_req_state(nesfd_req *r) { return r->state; }
void nesfd_req_set_batch(nesfd_req *r, int batch) { if (batch > r->batch) r->batch = batch; }

const char *nesfd_req_body(const nesfd_req *r, size_t *len)
{
    if (len) *len = r->len;
    return r->body ? r->body : "";
}

const char *nesfd_req_arg(nesfd_req *r, const char *key)
{
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, key);
}

const char *nesfd_req_header(nesfd_req *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

void nesfd_req_set_state(nesfd_req *r, void *state, void (*free_fn)(void *))
{
    if (r->state && r->state_free && r->state != state) r->state_free(r->state);
    r->state = state;
    r->state_free = free_fn;
}

void nesfd_req_suspend(nesfd_req *r)
{
    r->suspended = 1;
    MHD_suspend_connection(r->conn);
}

void nesfd_req_resume(nesfd_req *r) { MHD_resume_connection(r->conn); }

void nesfd_req_add_header(nesfd_req *r, const char *name, const char *value)
{
    if (r->nhdr == MAX_EXTRA_HEADERS) return;
    snprintf(r->hdr[r->nhdr].name, sizeof r->hdr[0].name, "%s", name);
    snprintf(r->hdr[r->nhdr].value, sizeof r->hdr[0].value, "%s", value);
    r->nhdr++;
}

/* ---- responses ---- */

void nesfd_reply(nesfd_req *r, int status, const char *content_type, char *body, size_t len)
{
    if (r->replied || r->queue_failed) {
        free(body);
        return;
    }
    struct MHD_Response *resp =
        body ? MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE)
             : MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (!resp) {
        free(body);
        return; /* the connection gets closed: nothing better is possible */
    }
    if (content_type) MHD_add_response_header(resp, "Content-Type", content_type);
    MHD_add_response_header(resp, "X-Request-Id", r->id);
    MHD_add_response_header(resp, "Cache-Control", "no-store");
    if (r->origin) {
        MHD_add_response_header(resp, "Access-Control-Allow-Origin", r->origin);
        MHD_add_response_header(resp, "Vary", "Origin");
        MHD_add_response_header(resp, "Access-Control-Expose-Headers", NESFD_CORS_EXPOSE);
    }
    for (int i = 0; i < r->nhdr; i++) MHD_add_response_header(resp, r->hdr[i].name, r->hdr[i].value);
    /* one request per connection: a second one on a kept-alive connection
     * would not pass the gate (gate.h), and libmicrohttpd would answer its
     * faults in HTML */
    MHD_add_response_header(resp, "Connection", "close");
    enum MHD_Result ok = MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    r->status = status;
    if (ok == MHD_YES) r->replied = 1;
    else r->queue_failed = 1;
}

void nesfd_reply_json(nesfd_req *r, int status, json_t *j)
{
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!s) {
        nesfd_reply_error(r, 500, "internal", "out of memory while writing the answer");
        return;
    }
    nesfd_reply(r, status, "application/json", s, strlen(s));
}

/* Length of the valid UTF-8 sequence at s (1..4), 0 if none starts there
 * (a stray or overlong byte, a surrogate, a sequence cut short). */
static int utf8_seq(const unsigned char *s)
{
    unsigned c = s[0];
    if (c < 0x80) return 1;
    int n = c >= 0xc2 && c <= 0xdf ? 2 : (c & 0xf0) == 0xe0 ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
    for (int i = 1; i < n; i++)
        if ((s[i] & 0xc0) != 0x80) return 0;
    if (n == 3 && ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] > 0x9f))) return 0;
    if (n == 4 && ((c == 0xf0 && s[1] < 0x90) || (c == 0xf4 && s[1] > 0x8f))) return 0;
    return n;
}

/* Messages quote client bytes (paths, CIF text, model names) and may be
 * cut anywhere by the buffer: every byte that is not part of valid UTF-8
 * becomes '?', so the JSON encoder always takes the message. */
static void utf8_clean(char *msg)
{
    unsigned char *p = (unsigned char *)msg;
    while (*p) {
        int n = utf8_seq(p);
        if (n == 0) *p++ = '?';
        else p += n;
    }
}

void nesfd_reply_error(nesfd_req *r, int status, const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    utf8_clean(msg);
    snprintf(r->err_code, sizeof r->err_code, "%s", code);
    json_t *j = nesfd_oip_path(r->path) ? json_pack("{s:s}", "error", msg)
                    : json_pack("{s:{s:s, s:s, s:s}}", "error", "code", code, "message", msg,
                                "request_id", r->id);
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!s) { /* last resort, still the documented shape (ids are plain ASCII) */
        char oom[256];
        snprintf(oom, sizeof oom, "{\"error\":{\"code\":\"internal\",\"message\":\"out of "
                 "memory\",\"request_id\":\"%s\"}}", r->id);
        s = strdup(oom);
        if (!s) return;
    }
    nesfd_reply(r, status, "application/json", s, strlen(s));
}

/* ---- request set-up: id, route, CORS, auth, size ---- */

/* Takes n more bytes of the server's body memory for r; 0 (nothing
 * taken) when that would pass body_memory.  Given back when r completes. */
static int body_reserve(nesfd_req *r, size_t n)
{
    nesfd_http *h = r->h;
    size_t cur = atomic_load(&h->body_bytes);
    do {
        if (cur + n > h->body_memory) return 0;
    } while (!atomic_compare_exchange_weak(&h->body_bytes, &cur, cur + n));
    r->reserved += n;
    return 1;
}

/* A declared body over the limit is refused before it is sent; one under
 * it gets its buffer now (from body_memory).  Returns 1 if it answered. */
static int body_precheck(nesfd_http *h, nesfd_req *r)
{
    const char *cl = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Content-Length");
    if (!cl) return 0;
    char *end;
    unsigned long long v = strtoull(cl, &end, 10);
    if (v > h->body_limit) {
        nesfd_reply_error(r, 413, "body_too_large", "request body of %llu bytes exceeds the "
                          "limit of %zu bytes", v, h->body_limit);
        return 1;
    }
    if (*end == 0 && v > 0) {
        if (!body_reserve(r, (size_t)v + 1)) {
            nesfd_req_add_header(r, "Retry-After", "1");
            nesfd_reply_error(r, 503, "busy", "request bodies in flight fill this server's %zu "
                              "bytes for them (body_memory); retry later", h->body_memory);
            return 1;
        }
        r->body = malloc((size_t)v + 1);
        r->cap = r->body ? (size_t)v + 1 : 0;
    }
    return 0;
}

/* Constant time in the token's length so its prefix cannot be probed. */
static int token_ok(const nesfd_http *h, const char *auth)
{
    if (!auth || strncasecmp(auth, "Bearer ", 7)) return 0;
    auth += 7;
    while (*auth == ' ') auth++;
    size_t n = strlen(h->token), m = strlen(auth);
    unsigned char diff = (unsigned char)(n != m);
    for (size_t i = 0; i < n; i++) diff |= (unsigned char)(h->token[i] ^ (i < m ? auth[i] : 0));
    return diff == 0;
}

/* rt->method is one method or a comma-separated list of them. */
static int method_allowed(const nesfd_route *rt, const char *method)
{
    for (const char *m = rt->method; *m;) {
        size_t n = strcspn(m, ",");
        if ((strlen(method) == n && !strncmp(m, method, n)) ||
            (n == 3 && !strncmp(m, "GET", 3) && !strcmp(method, "HEAD")))
            return 1;
        m += n + (m[n] == ',');
    }
    return 0;
}

/* Is the request's Content-Type JSON?  Only "application/json" (any
 * parameters): the types a web page may POST without a CORS preflight
 * (text/plain, forms) and a missing type are refused, so that no page can
 * make a browser spend this server's time. */
static int json_content_type(const char *ct)
{
    if (!ct) return 0;
    while (*ct == ' ') ct++;
    static const char want[] = "application/json";
    if (strncasecmp(ct, want, sizeof want - 1)) return 0;
    ct += sizeof want - 1;
    while (*ct == ' ' || *ct == '\t') ct++;
    return *ct == 0 || *ct == ';';
}

int nesfd_req_require_token(nesfd_req *r)
{
    nesfd_http *h = r->h;
    if (!h->token[0] ||
        token_ok(h, MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Authorization")))
        return 0;
    nesfd_req_add_header(r, "WWW-Authenticate", "Bearer realm=\"nesfd\"");
    nesfd_reply_error(r, 401, "unauthorized", "missing or wrong bearer token");
    return 1;
}

/* Without the token a client learns nothing, not even which routes exist:
 * only public routes (and their CORS preflight, which browsers send
 * without credentials) are answered. */
static int needs_token(const nesfd_http *h, const nesfd_req *r, const char *method)
{
    if (!h->token[0]) return 0;
    if (!r->route) return 1;
    /* the public prefix route is the static one: its misses ask for the
     * token in h_static; a private prefix route (/v2/models/) always does */
    if (r->route->prefix && r->route->public) return !method_allowed(r->route, method);
    return !r->route->public && strcmp(method, "OPTIONS");
}

/* Answers what can be answered from the headers alone; returns 1 if it did. */
static int precheck(nesfd_http *h, nesfd_req *r, const char *method)
{
    if (atomic_load(&h->draining)) {
        nesfd_req_add_header(r, "Retry-After", "1");
        nesfd_reply_error(r, 503, "shutting_down", "the server is shutting down");
        return 1;
    }
    if (needs_token(h, r, method) && nesfd_req_require_token(r)) return 1;
    if (r->path_too_long) {
        nesfd_reply_error(r, 414, "uri_too_long", "request path of %zu bytes (at most %zu)",
                          r->path_too_long, sizeof r->path - 1);
        return 1;
    }
    if (!r->route) {
        nesfd_reply_error(r, 404, "not_found", "no route %s (see GET /health, /ready, /models, "
                          "/metrics and POST /decode, /encode, /interpolate, /reconstruct)", r->path);
        return 1;
    }
    /* the static-file fallback only answers GET: other methods on unknown
     * paths are unknown routes, not wrong methods */
    if (r->route->prefix && !method_allowed(r->route, method) && strcmp(method, "OPTIONS")) {
        nesfd_reply_error(r, 404, "not_found", "no route %s", r->path);
        return 1;
    }
    char allow[48];
    snprintf(allow, sizeof allow, "%s%s, OPTIONS", r->route->method,
             method_allowed(r->route, "HEAD") ? ", HEAD" : "");
    if (!strcmp(method, "OPTIONS")) { /* CORS preflight; browsers send no token with it */
        nesfd_req_add_header(r, "Allow", allow);
        if (r->origin) {
            nesfd_req_add_header(r, "Access-Control-Allow-Methods", allow);
            nesfd_req_add_header(r, "Access-Control-Allow-Headers",
                                 "Authorization, Content-Type, X-Request-Id");
            nesfd_req_add_header(r, "Access-Control-Max-Age", "600");
        }
        nesfd_reply(r, 204, NULL, NULL, 0);
        return 1;
    }
    if (!method_allowed(r->route, method)) {
        nesfd_req_add_header(r, "Allow", allow);
        nesfd_reply_error(r, 405, "method_not_allowed", "%s takes %s, not %s", r->path,
                          r->route->method, method);
        return 1;
    }
    if (!strcmp(method, "POST") &&
        !json_content_type(MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Content-Type"))) {
        const char *ct = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Content-Type");
        nesfd_req_add_header(r, "Accept", "application/json");
        nesfd_reply_error(r, 415, "unsupported_media_type", "POST %s takes Content-Type "
                          "application/json, not %.64s", r->path, ct ? ct : "none");
        return 1;
    }
    return body_precheck(h, r);
}

/* Sets a connection's body clock (0: stopped). */
static void watch_set(nesfd_http *h, conn_watch *w, int64_t body_since)
{
    if (!w) return;
    pthread_mutex_lock(&h->conns_mu);
    w->body_since = body_since;
    pthread_mutex_unlock(&h->conns_mu);
}

static void on_connection(void *cls, struct MHD_Connection *c, void **ctx,
                          enum MHD_ConnectionNotificationCode toe)
{
    nesfd_http *h = cls;
    conn_watch *w = *ctx;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        w = ci ? calloc(1, sizeof *w) : NULL;
        *ctx = w;
        if (!w) return; /* unwatched: only the idle timeout applies */
        w->fd = ci->connect_fd;
        pthread_mutex_lock(&h->conns_mu);
        w->next = h->conns;
        if (h->conns) h->conns->prev = w;
        h->conns = w;
        pthread_mutex_unlock(&h->conns_mu);
        return;
    }
    const union MHD_ConnectionInfo *ai = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (ai) nesfd_gate_release(h->gate, ai->client_addr);
    if (!w) return;
    pthread_mutex_lock(&h->conns_mu); /* before libmicrohttpd closes the socket */
    if (w->prev) w->prev->next = w->next;
    else h->conns = w->next;
    if (w->next) w->next->prev = w->prev;
    pthread_mutex_unlock(&h->conns_mu);
    free(w);
    *ctx = NULL;
}

/* libmicrohttpd 0.9.75 has only an idle timeout, which a byte now and then
 * resets (slowloris): a connection whose body is overdue has its socket
 * shut down, which its thread then sees and closes. */
static void *sweeper_main(void *arg)
{
    nesfd_http *h = arg;
    pthread_mutex_lock(&h->conns_mu);
    while (!h->sweeper_stop) {
        int64_t now = nesf_clock_ns();
        for (conn_watch *w = h->conns; w; w = w->next)
            if (w->body_since && now - w->body_since > h->body_ns) {
                shutdown(w->fd, SHUT_RDWR);
                w->body_since = 0;
            }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 200 * 1000000;
        if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
        pthread_cond_timedwait(&h->sweeper_cv, &h->conns_mu, &ts);
    }
    pthread_mutex_unlock(&h->conns_mu);
    return NULL;
}

static nesfd_req *req_new(nesfd_http *h, struct MHD_Connection *conn, const char *url,
                          const char *method)
{
    nesfd_req *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->h = h;
    r->conn = conn;
    r->start = nesf_clock_ns();
    snprintf(r->method, sizeof r->method, "%s", method);
    if (strlen(url) >= sizeof r->path) {
        r->path_too_long = strlen(url);
        snprintf(r->path, sizeof r->path, "%.64s...", url); /* for the log; routes nothing */
        utf8_clean(r->path);
    } else {
        snprintf(r->path, sizeof r->path, "%s", url);
    }
    const char *rid = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
    nesfd_request_id(rid, rid ? strlen(rid) : 0, r->id);
    r->metric_route = h->other_metric;
    for (int i = 0; i < h->n_routes && !r->route && !r->path_too_long; i++)
        if (!strcmp(h->routes[i].path, url)) {
            r->route = &h->routes[i];
            r->metric_route = h->route_metric[i];
        }
    for (int i = 0; i < h->n_routes && !r->route && !r->path_too_long; i++)
        if (h->routes[i].prefix && !strncmp(h->routes[i].path, url, strlen(h->routes[i].path))) {
            r->route = &h->routes[i];
            r->metric_route = h->route_metric[i];
        }
    const char *origin = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Origin");
    r->origin = nesfd_allowed_origin(h->origins, h->n_origins, origin,
                                     origin ? strlen(origin) : 0);
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    r->watch = ci ? ci->socket_context : NULL;
    watch_set(h, r->watch, r->start); /* the head is in; the body's clock runs */
    return r;
}

static int append_body(nesfd_req *r, const char *data, size_t n)
{
    if (r->len + n + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 4096;
        while (cap < r->len + n + 1) cap *= 2;
        if (!body_reserve(r, cap - r->cap)) return -1;
        char *p = realloc(r->body, cap);
        if (!p) return -1;
        r->body = p;
        r->cap = cap;
    }
    memcpy(r->body + r->len, data, n);
    r->len += n;
    r->body[r->len] = 0;
    return 0;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version,
                                 const char *upload_data, size_t *upload_size, void **con_cls)
{
    (void)version;
    nesfd_http *h = cls;
    nesfd_req *r = *con_cls;
    if (!r) {
        if (!(r = req_new(h, conn, url, method))) return MHD_NO;
        *con_cls = r;
        atomic_fetch_add(&h->inflight, 1);
        nesfd_metrics_inflight(h->metrics, 1);
        precheck(h, r, method);
        return r->queue_failed ? MHD_NO : MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (r->replied || r->late_status) return MHD_YES; /* answered or failed: drop the rest */
        /* Content-Length is at most body_limit (body_precheck) and the gate
         * refuses Transfer-Encoding (gate.h): a body never passes the limit */
        if (r->len + n > h->body_limit) return MHD_NO;
        if (append_body(r, upload_data, n)) r->late_status = 503;
        return MHD_YES;
    }
    watch_set(h, r->watch, 0); /* the whole body is in */
    if (r->replied) return MHD_YES;
    if (r->late_status)
        nesfd_reply_error(r, 503, "out_of_memory", "cannot buffer the request body");
    else {
        r->suspended = 0;
        r->route->fn(r, h->ctx);
        if (!r->replied && !r->suspended && !r->queue_failed)
            nesfd_reply_error(r, 500, "internal", "the handler produced no answer");
    }
    /* a response libmicrohttpd refused leaves nothing to send: close */
    return r->replied || r->suspended ? MHD_YES : MHD_NO;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)conn;
    nesfd_http *h = cls;
    nesfd_req *r = *con_cls;
    if (!r) return;
    *con_cls = NULL;
    double secs = (double)(nesf_clock_ns() - r->start) * 1e-9;
    /* 499: the client went away before an answer (nginx's convention) */
    int status = r->replied ? r->status : 499;
    nesfd_metrics_request(h->metrics, r->metric_route, status, secs);
    if (h->log_requests) {
        json_t *j = json_pack("{s:s, s:s, s:s, s:i, s:f, s:i, s:I}", "id", r->id, "method", r->method,
                              "route", r->path, "status", status, "ms", secs * 1e3,
                              "batch", r->batch, "bytes_in", (json_int_t)r->len);
        if (j && r->err_code[0]) json_object_set_new(j, "error", json_string(r->err_code));
        if (j && toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
            json_object_set_new(j, "aborted", json_true());
        nesfd_log_json("info", "request", j);
    }
    if (r->state && r->state_free) r->state_free(r->state);
    atomic_fetch_sub(&h->body_bytes, r->reserved);
    free(r->body);
    free(r);
    nesfd_metrics_inflight(h->metrics, -1);
    atomic_fetch_sub(&h->inflight, 1);
}

/* libmicrohttpd would percent-decode the path in place, turning "/%00"
 * into "/" (index.html) and "/%ff" into a byte that is no UTF-8: paths
 * stay as sent, and the static-file layer decodes them (and refuses NUL).
 * No route uses query arguments. */
static size_t no_unescape(void *cls, struct MHD_Connection *c, char *s)
{
    (void)cls;
    (void)c;
    return strlen(s);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    msg[strcspn(msg, "\n")] = 0;
    nesfd_log("warn", "libmicrohttpd", "%s", msg);
}

/* The gate's handoff (gate.h): libmicrohttpd reads the head the gate
 * passed as if it had accepted the connection itself.  Its own connection
 * limit is set so that it never refuses one; should it fail later to set
 * the connection up (out of memory for its pool), it closes the socket
 * without the close notice, and the gate goes on counting that connection
 * against its client's limit. */
static int gate_handoff(void *ctx, int fd, const struct sockaddr *addr, socklen_t len)
{
    nesfd_http *h = ctx;
    return MHD_add_connection(h->d, fd, addr, len) == MHD_YES ? 0 : -1;
}

/* The gate's own answers are counted and logged like the others. */
static void gate_answered(void *ctx, int status, const char *code, const char *id,
                          const char *target, double secs)
{
    nesfd_http *h = ctx;
    nesfd_metrics_request(h->metrics, h->other_metric, status, secs);
    if (!h->log_requests) return;
    json_t *j = json_pack("{s:s, s:s, s:i, s:f, s:i, s:i, s:s, s:b}", "id", id, "route", target,
                          "status", status, "ms", secs * 1e3, "batch", 0, "bytes_in", 0,
                          "error", code, "gate", 1);
    nesfd_log_json("info", "request", j);
}

static int open_listener(const char *host, int port, int *bound_port, nesf_error *err)
{
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    int gai = getaddrinfo(host, ps, &hints, &res);
    if (gai) return -nesf_fail(err, NESF_ERR_INVALID, "listen %s: %s", host, gai_strerror(gai));
    int fd = -1, e = 0;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
        if (fd < 0) { e = errno; continue; }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 1024) == 0) break;
        e = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        return -nesf_fail(err, NESF_ERR_IO, "listen %s:%d: %s", host, port, strerror(e));
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    *bound_port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                 : ((struct sockaddr_in *)&ss)->sin_port);
    return fd;
}

int nesfd_http_start(const nesfd_config *c, const nesfd_route *routes, int n_routes, void *ctx,
                     nesfd_metrics *metrics, nesfd_http **out, nesf_error *err)
{
    nesfd_http *h = calloc(1, sizeof *h);
    if (!h) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    h->routes = calloc((size_t)n_routes, sizeof *h->routes);
    h->route_metric = calloc((size_t)n_routes, sizeof *h->route_metric);
    h->origins = calloc(c->n_origins ? (size_t)c->n_origins : 1, sizeof *h->origins);
    if (!h->routes || !h->route_metric || !h->origins) {
        nesfd_http_stop(h);
        return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    }
    memcpy(h->routes, routes, (size_t)n_routes * sizeof *routes);
    h->n_routes = n_routes;
    for (int i = 0; i < n_routes; i++) h->route_metric[i] = nesfd_metrics_route(metrics, routes[i].path);
    h->other_metric = nesfd_metrics_route(metrics, "other");
    memcpy(h->origins, c->origins, (size_t)c->n_origins * sizeof *h->origins);
    h->n_origins = c->n_origins;
    h->ctx = ctx;
    h->metrics = metrics;
    h->body_limit = c->body_limit;
    h->log_requests = c->log_requests;
    snprintf(h->token, sizeof h->token, "%s", c->token);

    h->body_ns = (int64_t)(c->body_timeout_s * 1e9);
    h->body_memory = c->body_memory;
    pthread_mutex_init(&h->conns_mu, NULL);
    pthread_cond_init(&h->sweeper_cv, NULL);
    h->sweeper_started = pthread_create(&h->sweeper, NULL, sweeper_main, h) == 0;
    if (!h->sweeper_started) {
        nesfd_http_stop(h);
        return nesf_fail(err, NESF_ERR_NOMEM, "cannot start the connection sweeper thread");
    }
    h->listen_fd = open_listener(c->host, c->port, &h->port, err);
    if (h->listen_fd < 0) {
        h->listen_fd = -1;
        int code = err ? err->code : NESF_ERR_IO;
        nesfd_http_stop(h);
        return code;
    }
    /* the gate (gate.h) accepts and enforces both connection limits; each
     * of libmicrohttpd's threads may hold them all, so that it never
     * refuses (and closes without an answer) a connection the gate passed */
    h->d = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG |
        MHD_USE_NO_LISTEN_SOCKET | MHD_USE_ITC,
        0, NULL, NULL, on_access, h,
        MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, h,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned int)c->http_threads,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned int)(c->max_connections + 1) * (unsigned int)c->http_threads,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, h,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)c->idle_timeout_s,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(64 * 1024),
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
        MHD_OPTION_UNESCAPE_CALLBACK, no_unescape, h,
        MHD_OPTION_END);
    if (!h->d) {
        nesfd_http_stop(h);
        return nesf_fail(err, NESF_ERR_IO, "libmicrohttpd failed to start (thread pool with epoll)");
    }
    nesfd_gate_config gc = {.listen_fd = h->listen_fd, .max_connections = c->max_connections,
                            .max_per_client = c->max_connections_per_client,
                            .header_ns = (int64_t)(c->header_timeout_s * 1e9), .origins = h->origins,
                            .n_origins = h->n_origins, .handoff = gate_handoff,
                            .answered = gate_answered, .ctx = h};
    h->listen_fd = -1; /* the gate's now, whatever happens */
    int rc = nesfd_gate_start(&gc, &h->gate, err);
    if (rc) {
        nesfd_http_stop(h);
        return rc;
    }
    *out = h;
    return NESF_OK;
}

int nesfd_http_port(const nesfd_http *h) { return h->port; }
int nesfd_http_inflight(nesfd_http *h) { return atomic_load(&h->inflight); }

void nesfd_http_quiesce(nesfd_http *h)
{
    if (atomic_exchange(&h->draining, 1)) return;
    nesfd_gate_quiesce(h->gate);
}

void nesfd_http_stop(nesfd_http *h)
{
    if (!h) return;
    nesfd_gate_stop(h->gate); /* no more handoffs; its counts outlive libmicrohttpd's closes */
    if (h->d) MHD_stop_daemon(h->d);
    nesfd_gate_free(h->gate);
    if (h->sweeper_started) {
        pthread_mutex_lock(&h->conns_mu);
        h->sweeper_stop = 1;
        pthread_cond_signal(&h->sweeper_cv);
        pthread_mutex_unlock(&h->conns_mu);
        pthread_join(h->sweeper, NULL);
        h->sweeper_started = 0;
    }
    if (h->listen_fd >= 0) close(h->listen_fd);
    free(h->routes);
    free(h->route_metric);
    free(h->origins);
    free(h);
}

/* nesfd's HTTP layer over real sockets: routing, 404/405/401/413 errors in
 * the JSON shape, request ids, bearer tokens, CORS, body limits (declared
 * and chunked, which the gate refuses), suspend/resume under concurrency, metrics and quiesce. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include "batcher.h"
#include "gate.h"
#include "headers.h"
#include "http.h"

/* ---- test routes ---- */

static void h_ping(nesfd_req *r, void *ctx)
{
    (void)ctx;
    nesfd_reply_json(r, 200, json_pack("{s:b}", "pong", 1));
}

static void h_echo(nesfd_req *r, void *ctx)
{
    (void)ctx;
    size_t len;
    nesfd_req_body(r, &len);
    nesfd_reply_json(r, 200, json_pack("{s:I}", "bytes", (json_int_t)len));
}

static atomic_int suspended_now, suspended_max;

static void *resume_later(void *arg)
{
    usleep(200000);
    atomic_fetch_sub(&suspended_now, 1);
    nesfd_req_resume(arg);
    return NULL;
}

/* First call suspends and a thread resumes 200 ms later; the second replies. */
static void h_slow(nesfd_req *r, void *ctx)
{
    (void)ctx;
    if (nesfd_req_state(r)) {
        nesfd_reply_json(r, 200, json_pack("{s:s}", "id", nesfd_req_id(r)));
        return;
    }
    nesfd_req_set_state(r, (void *)1, NULL);
    nesfd_req_suspend(r);
    int now = atomic_fetch_add(&suspended_now, 1) + 1, max = atomic_load(&suspended_max);
    while (now > max && !atomic_compare_exchange_weak(&suspended_max, &max, now)) {}
    pthread_t th;
    pthread_create(&th, NULL, resume_later, r);
    pthread_detach(th);
}

static void h_busy(nesfd_req *r, void *ctx)
{
    (void)ctx;
    nesfd_req_add_header(r, "Retry-After", "2");
    nesfd_reply_error(r, 503, "queue_full", "try later");
}

static const nesfd_route routes[] = {
    {"/ping", "GET", h_ping, 1, 0},
    {"/echo", "POST", h_echo, 0, 0},
    {"/slow", "POST", h_slow, 0, 0},
    {"/busy", "POST", h_busy, 0, 0},
};

/* ---- a minimal HTTP/1.1 client (Connection: close) ---- */

typedef struct {
    int status;
    char headers[4096];
    char body[8192];
} response;

static int port;

static int connect_local(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        close(fd);
        return -1;
    }
    return fd;
}

static void send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0) return; /* the server may close early (413) */
        p += w;
        n -= (size_t)w;
    }
}

/* raw: the request text up to and including the blank line; body appended. */
static int exchange(const char *raw, const char *body, size_t body_len, response *out)
{
    memset(out, 0, sizeof *out);
    int fd = connect_local();
    if (fd < 0) return -1;
    send_all(fd, raw, strlen(raw));
    if (body) send_all(fd, body, body_len);
    char buf[16384];
    size_t n = 0;
    ssize_t k;
    while (n < sizeof buf - 1 && (k = recv(fd, buf + n, sizeof buf - 1 - n, 0)) > 0) n += (size_t)k;
    buf[n] = 0;
    close(fd);
    if (sscanf(buf, "HTTP/1.1 %d", &out->status) != 1) return -1;
    char *end = strstr(buf, "\r\n\r\n");
    if (!end) return -1;
    size_t hl = (size_t)(end - buf);
    if (hl >= sizeof out->headers) hl = sizeof out->headers - 1;
    memcpy(out->headers, buf, hl);
    snprintf(out->body, sizeof out->body, "%s", end + 4);
    return 0;
}

static int request(const char *method, const char *path, const char *headers, const char *body,
                   response *out)
{
    char raw[4096];
    /* a POST says it is JSON unless the test sends its own type */
    int json = !strcmp(method, "POST") && !(headers && strcasestr(headers, "Content-Type:"));
    snprintf(raw, sizeof raw, "%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n%s%s"
             "Content-Length: %zu\r\n\r\n", method, path, headers ? headers : "",
             json ? "Content-Type: application/json\r\n" : "", body ? strlen(body) : 0);
    return exchange(raw, body, body ? strlen(body) : 0, out);
}

/* Value of a response header (case-insensitive name), or NULL. */
static const char *header(response *r, const char *name, char *val, size_t size)
{
    size_t nl = strlen(name);
    for (char *line = strstr(r->headers, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
        if (!strncasecmp(line + 2, name, nl) && line[2 + nl] == ':') {
            const char *v = line + 3 + nl;
            while (*v == ' ') v++;
            size_t l = strcspn(v, "\r\n");
            if (l >= size) l = size - 1;
            memcpy(val, v, l);
            val[l] = 0;
            return val;
        }
    }
    return NULL;
}

static void assert_error(response *r, int status, const char *code)
{
    assert_int_equal(r->status, status);
    json_error_t je;
    json_t *j = json_loads(r->body, 0, &je);
    if (!j) fail_msg("not JSON: %s", r->body);
    const char *c = json_string_value(json_object_get(json_object_get(j, "error"), "code"));
    const char *id = json_string_value(json_object_get(json_object_get(j, "error"), "request_id"));
    const char *msg = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
    assert_non_null(c);
    assert_non_null(msg);
    assert_string_equal(c, code);
    char hid[200];
    assert_non_null(header(r, "X-Request-Id", hid, sizeof hid));
    assert_string_equal(id, hid);
    json_decref(j);
}

/* ---- fixture ---- */

static nesfd_http *server;
static nesfd_metrics *metrics;

static int setup(void **state)
{
    (void)state;
    nesfd_config c;
    nesfd_config_defaults(&c);
    c.port = 0;
    c.http_threads = 2;
    c.body_limit = 1000;
    c.log_requests = 0;
    snprintf(c.token, sizeof c.token, "tok123");
    snprintf(c.origins[0], sizeof c.origins[0], "https://viewer.example");
    c.n_origins = 1;
    metrics = nesfd_metrics_new();
    nesf_error err;
    if (nesfd_http_start(&c, routes, 4, NULL, metrics, &server, &err)) {
        fprintf(stderr, "start: %s\n", err.msg);
        return -1;
    }
    port = nesfd_http_port(server);
    return port > 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    nesfd_http_stop(server);
    nesfd_metrics_free(metrics);
    return 0;
}

#define AUTH "Authorization: Bearer tok123\r\n"

static void test_ids(void **state)
{
    (void)state;
    response r;
    char v[200];
    assert_int_equal(request("GET", "/ping", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{\"pong\":true}");
    assert_non_null(header(&r, "X-Request-Id", v, sizeof v));
    assert_int_equal(strlen(v), 36); /* a UUID */
    assert_true(v[8] == '-' && v[13] == '-' && v[14] == '4' && v[18] == '-' && v[23] == '-');
    char first[200];
    snprintf(first, sizeof first, "%s", v);
    assert_int_equal(request("GET", "/ping", NULL, NULL, &r), 0);
    assert_string_not_equal(header(&r, "X-Request-Id", v, sizeof v), first);
    assert_int_equal(request("GET", "/ping", "X-Request-Id: trace-42.a:b_c\r\n", NULL, &r), 0);
    assert_string_equal(header(&r, "X-Request-Id", v, sizeof v), "trace-42.a:b_c");
    assert_int_equal(request("GET", "/ping", "X-Request-Id: bad id<script>\r\n", NULL, &r), 0);
    assert_int_equal(strlen(header(&r, "X-Request-Id", v, sizeof v)), 36);
    assert_int_equal(request("HEAD", "/ping", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "");
}

static void test_errors(void **state)
{
    (void)state;
    response r;
    char v[200];
    assert_int_equal(request("GET", "/nope", AUTH, NULL, &r), 0);
    assert_error(&r, 404, "not_found");
    /* without the token an unknown route or a wrong method says nothing */
    assert_int_equal(request("GET", "/nope", NULL, NULL, &r), 0);
    assert_error(&r, 401, "unauthorized");
    assert_int_equal(request("GET", "/echo", NULL, NULL, &r), 0);
    assert_error(&r, 401, "unauthorized");
    /* bytes that are no UTF-8, quoted in the message: still JSON */
    assert_int_equal(request("GET", "/\xff\xfe%ff\xc3", AUTH, NULL, &r), 0);
    assert_error(&r, 404, "not_found");
    /* only JSON is posted */
    assert_int_equal(request("POST", "/echo", AUTH "Content-Type: text/plain\r\n", "{}", &r), 0);
    assert_error(&r, 415, "unsupported_media_type");
    assert_int_equal(request("POST", "/echo", AUTH "Content-Type: application/json; charset=utf-8\r\n",
                             "{}", &r), 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(request("GET", "/echo", AUTH, NULL, &r), 0);
    assert_error(&r, 405, "method_not_allowed");
    assert_string_equal(header(&r, "Allow", v, sizeof v), "POST, OPTIONS");
    assert_int_equal(request("DELETE", "/ping", NULL, NULL, &r), 0);
    assert_error(&r, 405, "method_not_allowed");
    assert_int_equal(request("POST", "/busy", AUTH, "{}", &r), 0);
    assert_error(&r, 503, "queue_full");
    assert_string_equal(header(&r, "Retry-After", v, sizeof v), "2");
}

static void test_auth(void **state)
{
    (void)state;
    response r;
    char v[200];
    assert_int_equal(request("POST", "/echo", NULL, "{}", &r), 0);
    assert_error(&r, 401, "unauthorized");
    assert_non_null(header(&r, "WWW-Authenticate", v, sizeof v));
    assert_int_equal(request("POST", "/echo", "Authorization: Bearer tok12\r\n", "{}", &r), 0);
    assert_error(&r, 401, "unauthorized");
    assert_int_equal(request("POST", "/echo", "Authorization: Bearer tok1234\r\n", "{}", &r), 0);
    assert_error(&r, 401, "unauthorized");
    assert_int_equal(request("POST", "/echo", "Authorization: Basic dG9rMTIz\r\n", "{}", &r), 0);
    assert_error(&r, 401, "unauthorized");
    assert_int_equal(request("POST", "/echo", AUTH, "{\"a\": 1}", &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{\"bytes\":8}");
    assert_int_equal(request("GET", "/ping", NULL, NULL, &r), 0); /* public */
    assert_int_equal(r.status, 200);
}

static void test_body_limit(void **state)
{
    (void)state;
    response r;
    char big[1200];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    assert_int_equal(request("POST", "/echo", AUTH, big, &r), 0); /* declared length */
    assert_error(&r, 413, "body_too_large");
    big[1000] = 0; /* exactly the limit is fine */
    assert_int_equal(request("POST", "/echo", AUTH, big, &r), 0);
    assert_int_equal(r.status, 200);
    /* chunked: the gate asks for Content-Length (411), in JSON, whatever
     * the chunks (a bad chunk size among them) */
    const char *raw = "POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" AUTH
                      "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_int_equal(exchange(raw, "5\r\nhello\r\n0\r\n\r\n", 15, &r), 0);
    assert_error(&r, 411, "length_required");
    assert_int_equal(exchange(raw, "zz\r\nhello\r\n0\r\n\r\n", 16, &r), 0);
    assert_error(&r, 411, "length_required");
}

static void test_cors(void **state)
{
    (void)state;
    response r;
    char v[200];
    assert_int_equal(request("GET", "/ping", "Origin: https://viewer.example\r\n", NULL, &r), 0);
    assert_string_equal(header(&r, "Access-Control-Allow-Origin", v, sizeof v),
                        "https://viewer.example");
    assert_non_null(strstr(header(&r, "Access-Control-Expose-Headers", v, sizeof v), "X-Request-Id"));
    assert_int_equal(request("GET", "/ping", "Origin: https://evil.example\r\n", NULL, &r), 0);
    assert_null(header(&r, "Access-Control-Allow-Origin", v, sizeof v));
    /* preflight: no token needed, methods and headers announced */
    assert_int_equal(request("OPTIONS", "/echo", "Origin: https://viewer.example\r\n"
                             "Access-Control-Request-Method: POST\r\n", NULL, &r), 0);
    assert_int_equal(r.status, 204);
    assert_non_null(strstr(header(&r, "Access-Control-Allow-Methods", v, sizeof v), "POST"));
    assert_non_null(strstr(header(&r, "Access-Control-Allow-Headers", v, sizeof v), "Authorization"));
    /* errors carry CORS headers too, or a browser could not read them */
    assert_int_equal(request("POST", "/echo", "Origin: https://viewer.example\r\n", "{}", &r), 0);
    assert_int_equal(r.status, 401);
    assert_non_null(header(&r, "Access-Control-Allow-Origin", v, sizeof v));
    /* the gate's answers too (a fetch with a streamed body gets 411), with
     * the same headers, and the caller's id */
    const char *streamed = "POST /echo HTTP/1.1\r\nHost: x\r\nOrigin: https://viewer.example\r\n"
                           "X-Request-Id: page-7\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_int_equal(exchange(streamed, "0\r\n\r\n", 5, &r), 0);
    assert_error(&r, 411, "length_required");
    assert_string_equal(header(&r, "Access-Control-Allow-Origin", v, sizeof v), "https://viewer.example");
    assert_string_equal(header(&r, "Vary", v, sizeof v), "Origin");
    assert_string_equal(header(&r, "Access-Control-Expose-Headers", v, sizeof v), NESFD_CORS_EXPOSE);
    assert_string_equal(header(&r, "X-Request-Id", v, sizeof v), "page-7");
    assert_int_equal(exchange("GET /ping HTTP/2.0\r\nOrigin: https://evil.example\r\n\r\n", NULL, 0,
                              &r), 0);
    assert_error(&r, 505, "http_version_not_supported");
    assert_null(header(&r, "Access-Control-Allow-Origin", v, sizeof v));
    assert_null(header(&r, "Vary", v, sizeof v));
}

typedef struct {
    int status;
    char id[64], body_id[64];
} slow_result;

static void *slow_client(void *arg)
{
    slow_result *s = arg;
    response r;
    char hdr[128];
    snprintf(hdr, sizeof hdr, AUTH "X-Request-Id: %s\r\n", s->id);
    if (request("POST", "/slow", hdr, "{}", &r) == 0) {
        s->status = r.status;
        json_t *j = json_loads(r.body, 0, NULL);
        snprintf(s->body_id, sizeof s->body_id, "%s", json_string_value(json_object_get(j, "id")));
        json_decref(j);
    }
    return NULL;
}

/* 24 requests, each suspended 200 ms, on 2 HTTP threads: all are suspended
 * at once, so the whole run takes about 200 ms, not 24 x 200 ms. */
static void test_suspend_resume(void **state)
{
    (void)state;
    enum { N = 24 };
    slow_result s[N];
    pthread_t th[N];
    int64_t t0 = nesf_clock_ns();
    for (int i = 0; i < N; i++) {
        memset(&s[i], 0, sizeof s[i]);
        snprintf(s[i].id, sizeof s[i].id, "slow-%d", i);
        pthread_create(&th[i], NULL, slow_client, &s[i]);
    }
    for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
    double secs = (double)(nesf_clock_ns() - t0) * 1e-9;
    for (int i = 0; i < N; i++) {
        assert_int_equal(s[i].status, 200);
        assert_string_equal(s[i].body_id, s[i].id); /* answers go back to their own request */
    }
    assert_true(atomic_load(&suspended_max) > 2);
    assert_true(secs < 2.0);
}

/* nesfd_gate_check on heads as they arrive: a verdict as soon as one is
 * sure, "more" while a sane head is incomplete. */
static void test_gate_check(void **state)
{
    (void)state;
    nesfd_gate_verdict v;
    const char *ok = "GET /ping?a=1&b HTTP/1.1\r\nHost: x\r\nCookie: a=1; b=2\r\n\r\n";
    for (size_t n = 0; n < strlen(ok); n++) assert_int_equal(nesfd_gate_check(ok, n, &v), 0);
    assert_int_equal(nesfd_gate_check(ok, strlen(ok), &v), 1);
    assert_string_equal(v.target, "/ping?a=1&b");
    static const struct { const char *head; int status; } bad[] = {
        {"GET / HTTP/2.0\r\n", 505},            /* before the headers are in */
        {"GET / HTTP/1.1\r\nX y\r\n", 400},
        {"GET / HTTP/1.1\nHost: x\r\n\r\n", 400},
        {"GET /\"x HTTP/1.1\r\n\r\n", 0},     /* passes; kept as /?x for the log */
        {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411},
        {"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nContent-Length:  12 \r\n\r\n", 0},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int r = nesfd_gate_check(bad[i].head, strlen(bad[i].head), &v);
        assert_int_equal(r, bad[i].status ? -1 : 1);
        assert_int_equal(v.status, bad[i].status);
    }
    assert_string_equal(v.target, "/");
    static char big[NESFD_GATE_HEAD_MAX + 1];
    memset(big, 'a', sizeof big);
    memcpy(big, "GET / HTTP/1.1\r\nX: ", 19);
    assert_int_equal(nesfd_gate_check(big, sizeof big, &v), -1);
    assert_int_equal(v.status, 431);
    memset(big, 'a', sizeof big);
    memcpy(big, "GET /", 5); /* a request line that does not end */
    assert_int_equal(nesfd_gate_check(big, NESFD_GATE_LINE_MAX, &v), 0);
    assert_int_equal(nesfd_gate_check(big, NESFD_GATE_LINE_MAX + 1, &v), -1);
    assert_int_equal(v.status, 414);
}

/* Which X-Request-Id and Origin a gate answer may use: the first of each
 * on a head as far as it is readable, none when any line is malformed. */
static void test_gate_fields(void **state)
{
    (void)state;
    nesfd_gate_fields f;
    const char *ok = "\r\nGET / HTTP/2.0\r\nx-request-id:  a.1 \r\nOrigin: https://o\r\n"
                     "X-Request-Id: second\r\n\r\nX-Request-Id: body\r\n";
    nesfd_gate_fields_find(ok, strlen(ok), &f);
    assert_non_null(f.id);
    assert_int_equal(f.id_len, 3);
    assert_memory_equal(f.id, "a.1", 3);
    assert_int_equal(f.origin_len, 9);
    assert_memory_equal(f.origin, "https://o", 9);
    /* incomplete: the complete lines count, the cut one does not */
    nesfd_gate_fields_find(ok, strlen("\r\nGET / HTTP/2.0\r\nx-request-id:  a.1 \r\nOrig"), &f);
    assert_non_null(f.id);
    assert_null(f.origin);
    /* a request line over the limit (414) that ends: its fields are read */
    static char longline[NESFD_GATE_LINE_MAX + 64];
    memset(longline, 'a', sizeof longline);
    memcpy(longline, "GET /", 5);
    snprintf(longline + NESFD_GATE_LINE_MAX + 8, 56, " HTTP/1.1\r\nX-Request-Id: long\r\n\r\n");
    nesfd_gate_fields_find(longline, strlen(longline), &f);
    assert_int_equal(f.id_len, 4);
    assert_memory_equal(f.id, "long", 4);
    static const char *none[] = {
        "GET / HTTP/1.1\r\nX-Request-Id: a\r\nBad Line\r\n\r\n",   /* a malformed line */
        "GET / HTTP/1.1\r\nX-Request-Id: a\r\nHost: x\n\r\n",       /* bare LF */
        "GET / HTTP/1.1\r\nX-Request-Id: a\r\n folded\r\n\r\n",     /* obs-fold */
        "GET  / HTTP/1.1\r\nX-Request-Id: a\r\n\r\n",               /* the request line */
        "GET / HTTP/1.1\nX-Request-Id: a\r\n\r\n",
        "GET /aaaa",                                                  /* no request line yet */
    };
    for (size_t i = 0; i < sizeof none / sizeof none[0]; i++) {
        nesfd_gate_fields_find(none[i], strlen(none[i]), &f);
        assert_null(f.id);
        assert_null(f.origin);
    }
    /* the shared rules: ids of 1-128 safe characters, origins exactly */
    char id[NESFD_REQUEST_ID_SIZE], long_id[130];
    memset(long_id, 'k', sizeof long_id);
    assert_true(nesfd_request_id_sane(long_id, 128));
    assert_false(nesfd_request_id_sane(long_id, 129));
    assert_false(nesfd_request_id_sane("", 0));
    assert_false(nesfd_request_id_sane("a\0b", 3));
    assert_false(nesfd_request_id_sane("a b", 3));
    nesfd_request_id("tr-1:x_y.z", 10, id);
    assert_string_equal(id, "tr-1:x_y.z");
    nesfd_request_id("tr-1<", 5, id);
    assert_int_equal(strlen(id), 36);
    nesfd_request_id(NULL, 0, id);
    assert_int_equal(strlen(id), 36);
    const char origins[2][256] = {"https://a.example", "https://b.example"};
    assert_string_equal(nesfd_allowed_origin(origins, 2, "https://b.example", 17), "https://b.example");
    assert_null(nesfd_allowed_origin(origins, 2, "https://b.example.evil", 22));
    assert_null(nesfd_allowed_origin(origins, 2, "https://b.example", 16)); /* a prefix */
    assert_null(nesfd_allowed_origin(origins, 2, NULL, 0));
    const char any[1][256] = {"*"};
    assert_string_equal(nesfd_allowed_origin(any, 1, "", 0), "*");
}

static void test_metrics_and_quiesce(void **state)
{
    (void)state;
    response r;
    int ping = nesfd_metrics_route(metrics, "/ping");
    long before = nesfd_metrics_count(metrics, ping, 200);
    for (int i = 0; i < 3; i++) request("GET", "/ping", NULL, NULL, &r);
    /* the count is taken when the request completes, after the answer */
    for (int i = 0; i < 100 && nesfd_metrics_count(metrics, ping, 200) < before + 3; i++) usleep(1000);
    assert_int_equal(nesfd_metrics_count(metrics, ping, 200), before + 3);
    assert_true(nesfd_metrics_count(metrics, nesfd_metrics_route(metrics, "other"), 404) >= 1);
    for (int i = 0; i < 100 && nesfd_http_inflight(server) > 0; i++) usleep(1000);
    assert_int_equal(nesfd_http_inflight(server), 0);
    nesfd_http_quiesce(server);
    assert_int_equal(connect_local(), -1); /* no longer listening */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ids),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_auth),
        cmocka_unit_test(test_body_limit),
        cmocka_unit_test(test_cors),
        cmocka_unit_test(test_suspend_resume),
        cmocka_unit_test(test_metrics_and_quiesce),
        cmocka_unit_test(test_gate_check),
        cmocka_unit_test(test_gate_fields),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

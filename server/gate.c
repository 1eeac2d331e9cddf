#include "gate.h"

#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <microhttpd.h>
#include <uuid/uuid.h>

#include "clock.h"
#include "headers.h"
#include "log.h"

/* a head that came in more pieces than this is a slowloris (each look at
 * it copies it again); a real one arrives in one or a few TCP segments */
#define PEEKS_MAX 256
/* after an answer the gate reads and drops what the client still sends,
 * so that closing does not reset the connection before the client read
 * the answer: for this long, or this many bytes */
#define LINGER_NS (2 * (int64_t)1000000000)
#define LINGER_BYTES ((size_t)64 << 20)
#define SWEEP_NS (100 * (int64_t)1000000)
#define ACCEPTS_PER_WAKE 64

#define TAG_LISTEN 0
#define TAG_WAKE 1

enum { SLOT_FREE, SLOT_HEAD, SLOT_LINGER };

typedef struct gate_slot {
    int fd, state, next_free;
    uint32_t gen;              /* tells a stale epoll event from the slot's next use */
    int64_t since, deadline;
    size_t seen, drained;
    int peeks;
    struct sockaddr_storage addr;
    socklen_t alen;
} gate_slot;

/* connections per client address (16 bytes, IPv4 as ::ffff:a.b.c.d) */
typedef struct addr_count {
    uint8_t key[16];
    int count;                 /* 0: empty */
} addr_count;

struct nesfd_gate {
    nesfd_gate_config c;
    int ep, wake_fd, listen_fd;
    int64_t listen_paused_until; /* 0: listening */
    pthread_t thread;
    int started;
    atomic_int stop, quiesce;
    gate_slot *slots;
    int free_head;
    char *buf;                 /* NESFD_GATE_HEAD_MAX + 1 bytes, the gate thread's */
    pthread_mutex_t mu;        /* guards the counts below */
    addr_count *tab;
    size_t tab_cap;            /* a power of two, over twice max_connections */
    uint64_t seed;
    int total;
};

/* ---- the head's grammar (RFC 9112, strictly) ---- */

/* RFC 9110's token characters: methods and field names. */
static int tchar(unsigned char ch)
{
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/* Fills v for a refusal; always -1, for `return refuse(...)`. */
static int refuse(nesfd_gate_verdict *v, int status, const char *code, const char *message)
{
    v->status = status;
    v->code = code;
    v->message = message;
    return -1;
}

/* The target is kept for the log line and the error shape (/v2 has its
 * own): printable ASCII only, so that it is valid JSON text as it is. */
static void keep_target(nesfd_gate_verdict *v, const char *t, size_t n)
{
    size_t k = n < sizeof v->target - 1 ? n : sizeof v->target - 1;
    for (size_t i = 0; i < k; i++) {
        unsigned char ch = (unsigned char)t[i];
        v->target[i] = ch > 0x20 && ch < 0x7f && ch != '"' && ch != '\\' ? (char)ch : '?';
    }
    v->target[k] = 0;
}

/* Query arguments: libmicrohttpd stores each one like a header field. */
static int query_fields(const char *t, size_t n)
{
    const char *q = memchr(t, '?', n);
    if (!q) return 0;
    int k = 1;
    for (const char *p = q; p < t + n; p++) k += *p == '&';
    return k;
}

/* METHOD SP target SP HTTP/1.x; returns the fields it costs, or -1. */
static int request_line(const char *s, size_t len, nesfd_gate_verdict *v)
{
    static const char *bad = "malformed request line (expected METHOD SP target SP HTTP/1.1)";
    size_t i = 0;
    while (i < len && tchar((unsigned char)s[i])) i++;
    if (i == 0 || i >= len || s[i] != ' ') return refuse(v, 400, "malformed_request", bad);
    size_t t0 = ++i;
    while (i < len && (unsigned char)s[i] > 0x20 && (unsigned char)s[i] != 0x7f) i++;
    if (i == t0 || i >= len || s[i] != ' ') return refuse(v, 400, "malformed_request", bad);
    keep_target(v, s + t0, i - t0);
    const char *ver = s + i + 1;
    size_t vl = len - i - 1;
    if (vl == 8 && !memcmp(ver, "HTTP/1.", 7) && (ver[7] == '0' || ver[7] == '1'))
        return query_fields(s + t0, i - t0);
    if (vl == 8 && !memcmp(ver, "HTTP/", 5) && ver[5] >= '0' && ver[5] <= '9' && ver[6] == '.' &&
        ver[7] >= '0' && ver[7] <= '9')
        return refuse(v, 505, "http_version_not_supported",
                      "HTTP version not supported: nesfd speaks HTTP/1.0 and HTTP/1.1");
    return refuse(v, 400, "malformed_request", bad);
}

/* Field names compare case-insensitively. */
static int name_is(const char *s, size_t n, const char *name)
{
    return n == strlen(name) && !strncasecmp(s, name, n);
}

/* name ":" OWS value OWS, strictly: the name is s[0..*nlen), the value
 * without its OWS s[*a..*b); 0, or -1 (v says what is wrong). */
static int field_syntax(const char *s, size_t len, size_t *nlen, size_t *a, size_t *b,
                        nesfd_gate_verdict *v)
{
    if (s[0] == ' ' || s[0] == '\t')
        return refuse(v, 400, "malformed_request", "folded header lines (obs-fold) are not accepted");
    size_t i = 0;
    while (i < len && tchar((unsigned char)s[i])) i++;
    if (i == 0 || i >= len || s[i] != ':')
        return refuse(v, 400, "malformed_request", "malformed header line (expected name: value)");
    for (size_t k = i + 1; k < len; k++) {
        unsigned char ch = (unsigned char)s[k];
        if (ch != '\t' && (ch < 0x20 || ch == 0x7f))
            return refuse(v, 400, "malformed_request", "control character in a header value");
    }
    *nlen = i;
    *a = i + 1;
    *b = len;
    while (*a < *b && (s[*a] == ' ' || s[*a] == '\t')) (*a)++;
    while (*b > *a && (s[*b - 1] == ' ' || s[*b - 1] == '\t')) (*b)--;
    return 0;
}

/* A header line: notes Transfer-Encoding (*te), checks Content-Length
 * (*cl: seen), adds cookie pairs to *fields; 0 or -1. */
static int field_line(const char *s, size_t len, int *te, int *cl, int *fields, nesfd_gate_verdict *v)
{
    size_t nlen, a, b;
    if (field_syntax(s, len, &nlen, &a, &b, v)) return -1;
    if (name_is(s, nlen, "Transfer-Encoding")) *te = 1;
    if (name_is(s, nlen, "Cookie"))
        for (size_t k = a; k < b; k++) *fields += s[k] == ';';
    if (!name_is(s, nlen, "Content-Length")) return 0;
    if ((*cl)++) return refuse(v, 400, "malformed_request", "more than one Content-Length header");
    for (size_t k = a; k < b; k++)
        if (s[k] < '0' || s[k] > '9') b = a; /* not a number: refused below */
    if (b == a) return refuse(v, 400, "malformed_request", "Content-Length is not a decimal number");
    if (b - a > 19) return refuse(v, 413, "body_too_large", "Content-Length of more than 19 digits");
    return 0;
}

/* The next line of buf[p..n): its length without CRLF in *len and the
 * offset after it; 0 when incomplete, -1 for a bare LF. */
static int next_line(const char *buf, size_t n, size_t p, size_t *len, size_t *after)
{
    const char *nl = memchr(buf + p, '\n', n - p);
    if (!nl) return 0;
    size_t end = (size_t)(nl - buf);
    if (end == p || buf[end - 1] != '\r') return -1;
    *len = end - 1 - p;
    *after = end + 1;
    return 1;
}

/* Where the request line starts: RFC 9112 2.2 allows empty lines before it. */
static size_t head_start(const char *buf, size_t n)
{
    size_t p = 0;
    while (p + 1 < n && buf[p] == '\r' && buf[p + 1] == '\n') p += 2;
    return p;
}

int nesfd_gate_check(const char *buf, size_t n, nesfd_gate_verdict *v)
{
    static const char *crlf = "header lines must end in CRLF";
    memset(v, 0, sizeof *v);
    size_t p = head_start(buf, n), len, after;
    int r = next_line(buf, n, p, &len, &after);
    if (r == 0 || (r > 0 && len > NESFD_GATE_LINE_MAX)) {
        if (r > 0 || n - p > NESFD_GATE_LINE_MAX)
            return refuse(v, 414, "uri_too_long", "request line over 8192 bytes");
        return n > NESFD_GATE_HEAD_MAX ? refuse(v, 431, "headers_too_large", "request head over 32768 bytes") : 0;
    }
    if (r < 0) return refuse(v, 400, "malformed_request", crlf);
    int fields = request_line(buf + p, len, v), te = 0, cl = 0;
    if (fields < 0) return -1;
    for (p = after;; p = after) {
        r = next_line(buf, n, p, &len, &after);
        if ((r == 0 && n > NESFD_GATE_HEAD_MAX) || (r > 0 && after > NESFD_GATE_HEAD_MAX))
            return refuse(v, 431, "headers_too_large", "request head over 32768 bytes");
        if (r == 0) return 0;
        if (r < 0) return refuse(v, 400, "malformed_request", crlf);
        if (len == 0) break;
        if (field_line(buf + p, len, &te, &cl, &fields, v)) return -1;
        if (++fields > NESFD_GATE_FIELDS_MAX)
            return refuse(v, 431, "headers_too_large", "more than 128 header fields, cookies and "
                          "query arguments");
    }
    if (te)
        return refuse(v, 411, "length_required", "send the body with Content-Length "
                      "(Transfer-Encoding, chunked included, is not accepted)");
    return 1;
}

void nesfd_gate_fields_find(const char *buf, size_t n, nesfd_gate_fields *f)
{
    memset(f, 0, sizeof *f);
    nesfd_gate_verdict v = {0};
    size_t p = head_start(buf, n), len, after, nlen, a, b;
    int r = next_line(buf, n, p, &len, &after);
    if (r <= 0) return; /* a line over the limit is still read: a long URL's 414 names them */
    if (request_line(buf + p, len, &v) < 0 && v.status != 505) return;
    nesfd_gate_fields seen = {0};
    for (p = after; (r = next_line(buf, n, p, &len, &after)) > 0 && len > 0; p = after) {
        if (field_syntax(buf + p, len, &nlen, &a, &b, &v)) return;
        if (!seen.id && name_is(buf + p, nlen, "X-Request-Id")) {
            seen.id = buf + p + a;
            seen.id_len = b - a;
        } else if (!seen.origin && name_is(buf + p, nlen, "Origin")) {
            seen.origin = buf + p + a;
            seen.origin_len = b - a;
        }
    }
    if (r >= 0) *f = seen;
}

/* ---- connections per client ---- */

static void addr_key(const struct sockaddr_storage *ss, uint8_t key[16])
{
    memset(key, 0, 16);
    if (ss->ss_family == AF_INET) {
        key[10] = key[11] = 0xff;
        memcpy(key + 12, &((const struct sockaddr_in *)ss)->sin_addr, 4);
    } else if (ss->ss_family == AF_INET6) {
        memcpy(key, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
    }
}

/* Seeded, so that a client cannot pick addresses that collide. */
static size_t addr_home(const nesfd_gate *g, const uint8_t key[16])
{
    uint64_t h = 1469598103934665603ull ^ g->seed;
    for (int i = 0; i < 16; i++) h = (h ^ key[i]) * 1099511628211ull;
    return (size_t)(h ^ (h >> 29)) & (g->tab_cap - 1);
}

/* The key's entry, or the empty one where it would go (linear probing;
 * the table is never more than half full). */
static size_t addr_find(const nesfd_gate *g, const uint8_t key[16])
{
    size_t i = addr_home(g, key);
    while (g->tab[i].count && memcmp(g->tab[i].key, key, 16)) i = (i + 1) & (g->tab_cap - 1);
    return i;
}

/* Empties entry i, moving later entries of its probe run back so that
 * every entry stays reachable from its home. */
static void addr_delete(nesfd_gate *g, size_t i)
{
    size_t m = g->tab_cap - 1;
    for (size_t j = (i + 1) & m; g->tab[j].count; j = (j + 1) & m) {
        size_t home = addr_home(g, g->tab[j].key);
        int stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            g->tab[i] = g->tab[j];
            i = j;
        }
    }
    g->tab[i].count = 0;
}

/* Counts a new connection in; NULL, or why it is refused. */
static const char *admit(nesfd_gate *g, const struct sockaddr_storage *ss)
{
    uint8_t key[16];
    addr_key(ss, key);
    const char *why = NULL;
    pthread_mutex_lock(&g->mu);
    size_t i = addr_find(g, key);
    if (g->total >= g->c.max_connections) why = "the server has max_connections connections open";
    else if (g->tab[i].count >= g->c.max_per_client)
        why = "this client has max_connections_per_client connections open";
    else {
        memcpy(g->tab[i].key, key, 16);
        g->tab[i].count++;
        g->total++;
    }
    pthread_mutex_unlock(&g->mu);
    return why;
}

static void release_key(nesfd_gate *g, const struct sockaddr_storage *ss)
{
    uint8_t key[16];
    addr_key(ss, key);
    pthread_mutex_lock(&g->mu);
    size_t i = addr_find(g, key);
    if (g->tab[i].count) {
        if (--g->tab[i].count == 0) addr_delete(g, i);
        g->total--;
    }
    pthread_mutex_unlock(&g->mu);
}

void nesfd_gate_release(nesfd_gate *g, const struct sockaddr *addr)
{
    if (!g || !addr) return;
    struct sockaddr_storage ss = {0};
    size_t n = addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    memcpy(&ss, addr, n);
    release_key(g, &ss);
}

/* ---- answers ---- */

/* The CORS headers nesfd_reply adds (http.c), for an allowed Origin; ""
 * for none.  Into out (512 bytes: an origin is at most 255). */
static const char *cors_headers(const nesfd_gate *g, const nesfd_gate_fields *f, char out[512])
{
    const char *allow = nesfd_allowed_origin(g->c.origins, g->c.n_origins, f->origin, f->origin_len);
    if (!allow) return "";
    snprintf(out, 512, "Access-Control-Allow-Origin: %s\r\nVary: Origin\r\n"
             "Access-Control-Expose-Headers: %s\r\n", allow, NESFD_CORS_EXPOSE);
    return out;
}

/* Writes the JSON answer the HTTP layer would give (its shape, /v2's own
 * under /v2, the caller's X-Request-Id or a fresh one, Cache-Control, CORS
 * for an allowed origin, Connection: close) in one send; the socket's
 * buffer is empty, so it fits.  f: what the head names.  Tells c->answered. */
static void send_answer(nesfd_gate *g, int fd, int64_t since, const nesfd_gate_verdict *v,
                        const nesfd_gate_fields *f)
{
    char id[NESFD_REQUEST_ID_SIZE], body[640], cors[512], out[2048];
    nesfd_request_id(f->id, f->id_len, id);
    const char *t = v->target;
    int bl = nesfd_oip_path(t) ? snprintf(body, sizeof body, "{\"error\":\"%s\"}", v->message)
                 : snprintf(body, sizeof body, "{\"error\":{\"code\":\"%s\",\"message\":\"%s\","
                            "\"request_id\":\"%s\"}}", v->code, v->message, id);
    int n = snprintf(out, sizeof out, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %d\r\nCache-Control: no-store\r\nX-Request-Id: %s\r\n"
                     "%s%sConnection: close\r\n\r\n%s", v->status, MHD_get_reason_phrase_for((unsigned)v->status), bl, id,
                     cors_headers(g, f, cors), v->status == 503 ? "Retry-After: 1\r\n" : "", body);
    if (n > 0 && (size_t)n < sizeof out) {
        ssize_t w = send(fd, out, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)w; /* a client that cannot take 2 KiB gets nothing: it is closed either way */
    }
    if (g->c.answered)
        g->c.answered(g->c.ctx, v->status, v->code, id, t, (double)(nesf_clock_ns() - since) * 1e-9);
}

/* ---- slots ---- */

/* Puts a slot whose connection is gone (closed or handed on) back. */
static void slot_free(nesfd_gate *g, gate_slot *s)
{
    s->state = SLOT_FREE;
    s->fd = -1;
    s->next_free = g->free_head;
    g->free_head = (int)(s - g->slots);
}

/* Closes a connection the gate holds; release: it stops counting too. */
static void slot_close(nesfd_gate *g, gate_slot *s, int release)
{
    close(s->fd); /* also leaves the epoll set */
    if (release) release_key(g, &s->addr);
    slot_free(g, s);
}

/* Reads and drops what the client still sends after its answer; closes
 * at its end, on an error or past LINGER_BYTES. */
static void linger_event(nesfd_gate *g, gate_slot *s)
{
    for (int i = 0; i < 32; i++) {
        ssize_t n = recv(s->fd, g->buf, NESFD_GATE_HEAD_MAX + 1, MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
        if (n <= 0 || (s->drained += (size_t)n) > LINGER_BYTES) {
            slot_close(g, s, 1);
            return;
        }
    }
}

/* Answers a connection whose head buf[0..n) was refused, then lingers on
 * it (which reuses g->buf: the head is read first). */
static void refuse_slot(nesfd_gate *g, gate_slot *s, const nesfd_gate_verdict *v, const char *buf,
                        size_t n)
{
    nesfd_gate_fields f;
    nesfd_gate_fields_find(buf, n, &f);
    send_answer(g, s->fd, s->since, v, &f);
    shutdown(s->fd, SHUT_WR);
    s->state = SLOT_LINGER;
    s->deadline = nesf_clock_ns() + LINGER_NS;
    s->drained = 0;
    linger_event(g, s);
}

/* A head that passed: libmicrohttpd takes the socket over. */
static void hand_on(nesfd_gate *g, gate_slot *s)
{
    int fd = s->fd;
    struct sockaddr_storage addr = s->addr;
    socklen_t alen = s->alen;
    epoll_ctl(g->ep, EPOLL_CTL_DEL, fd, NULL);
    slot_free(g, s);
    if (g->c.handoff(g->c.ctx, fd, (struct sockaddr *)&addr, alen)) release_key(g, &addr);
}

/* New bytes (or the peer's end) on a connection still sending its head. */
static void head_event(nesfd_gate *g, gate_slot *s, uint32_t ev)
{
    ssize_t n = recv(s->fd, g->buf, NESFD_GATE_HEAD_MAX + 1, MSG_PEEK | MSG_DONTWAIT);
    int hup = (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) && !hup) return;
    if (n <= 0) {
        slot_close(g, s, 1); /* gone, or closed before sending anything */
        return;
    }
    if ((size_t)n == s->seen && !hup) return; /* nothing new */
    nesfd_gate_verdict v;
    int r = nesfd_gate_check(g->buf, (size_t)n, &v);
    if (r > 0) {
        hand_on(g, s);
        return;
    }
    s->seen = (size_t)n;
    if (r == 0 && (ev & EPOLLHUP)) {
        slot_close(g, s, 1);
        return;
    }
    if (r == 0 && (ev & EPOLLRDHUP))
        refuse(&v, 400, "malformed_request", "the client ended its side before the request head "
               "was complete");
    else if (r == 0 && ++s->peeks > PEEKS_MAX)
        refuse(&v, 408, "request_timeout", "the request head came in more than 256 pieces");
    if (v.status) refuse_slot(g, s, &v, g->buf, (size_t)n);
}

/* Over a limit: a 503 at once, then closed (no slot to linger in).  The
 * head, as far as it came in before the accept, names the target, the
 * request id and the origin.  What the client sent is read after: closing
 * with unread bytes would reset the connection, and the client could lose
 * the answer. */
static void refuse_at_accept(nesfd_gate *g, int fd, const char *why)
{
    nesfd_gate_verdict v = {0};
    nesfd_gate_fields f = {0};
    ssize_t n = recv(fd, g->buf, NESFD_GATE_HEAD_MAX + 1, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0) {
        nesfd_gate_check(g->buf, (size_t)n, &v);
        nesfd_gate_fields_find(g->buf, (size_t)n, &f);
    }
    refuse(&v, 503, "too_many_connections", why);
    send_answer(g, fd, nesf_clock_ns(), &v, &f);
    shutdown(fd, SHUT_WR);
    for (int i = 0; i < 4 && recv(fd, g->buf, NESFD_GATE_HEAD_MAX + 1, MSG_DONTWAIT) > 0; i++) {}
    close(fd);
}

/* Takes a free slot for fd and watches it; 0, or -1 (fd closed, released). */
static int slot_open(nesfd_gate *g, int fd, const struct sockaddr_storage *ss, socklen_t sl)
{
    gate_slot *s = &g->slots[g->free_head]; /* admitted: one is free */
    g->free_head = s->next_free;
    s->fd = fd;
    s->state = SLOT_HEAD;
    s->gen++;
    s->since = nesf_clock_ns();
    s->deadline = s->since + g->c.header_ns;
    s->seen = s->drained = 0;
    s->peeks = 0;
    s->addr = *ss;
    s->alen = sl;
    /* edge-triggered: peeked bytes stay queued, so level-triggered would
     * wake at once again; an edge comes with every new arrival */
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET,
                             .data.u64 = ((uint64_t)s->gen << 32) | (uint64_t)(s - g->slots + 2)};
    if (epoll_ctl(g->ep, EPOLL_CTL_ADD, fd, &ev)) {
        slot_close(g, s, 1);
        return -1;
    }
    return 0;
}

/* Accepts what is waiting (a bounded number, for fairness). */
static void accept_burst(nesfd_gate *g)
{
    for (int i = 0; i < ACCEPTS_PER_WAKE && g->listen_fd >= 0; i++) {
        struct sockaddr_storage ss = {0};
        socklen_t sl = sizeof ss;
        int fd = accept4(g->listen_fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* out of descriptors: stop listening for a moment, not spin */
                nesfd_log("warn", "gate", "accept: %s; pausing 100 ms", strerror(errno));
                epoll_ctl(g->ep, EPOLL_CTL_DEL, g->listen_fd, NULL);
                g->listen_paused_until = nesf_clock_ns() + SWEEP_NS;
            }
            return;
        }
        const char *why = admit(g, &ss);
        if (why) refuse_at_accept(g, fd, why);
        else slot_open(g, fd, &ss, sl);
    }
}

/* Every SWEEP_NS: heads past the header timeout get 408, lingering
 * connections past their time are closed, a paused listener resumes. */
static void sweep(nesfd_gate *g, int64_t now)
{
    for (int i = 0; i < g->c.max_connections; i++) {
        gate_slot *s = &g->slots[i];
        if (s->state == SLOT_FREE || now < s->deadline) continue;
        if (s->state == SLOT_LINGER) {
            slot_close(g, s, 1);
            continue;
        }
        nesfd_gate_verdict v = {0};
        ssize_t n = recv(s->fd, g->buf, NESFD_GATE_HEAD_MAX + 1, MSG_PEEK | MSG_DONTWAIT);
        if (n > 0) nesfd_gate_check(g->buf, (size_t)n, &v); /* for the target only */
        refuse(&v, 408, "request_timeout", "the request head was not complete within the header "
               "timeout (timeouts.header_s)");
        refuse_slot(g, s, &v, g->buf, n > 0 ? (size_t)n : 0);
    }
    if (g->listen_paused_until && now >= g->listen_paused_until && g->listen_fd >= 0) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = TAG_LISTEN};
        if (epoll_ctl(g->ep, EPOLL_CTL_ADD, g->listen_fd, &ev) == 0) g->listen_paused_until = 0;
        else g->listen_paused_until = now + SWEEP_NS;
    }
}

/* From the gate thread (or after it stopped): no accept can race it. */
static void close_listener(nesfd_gate *g)
{
    if (g->listen_fd < 0) return;
    close(g->listen_fd);
    g->listen_fd = -1;
    g->listen_paused_until = 0;
}

/* One epoll event: the listener, the wake-up, or a connection's slot. */
static void dispatch(nesfd_gate *g, const struct epoll_event *e)
{
    uint64_t tag = e->data.u64 & 0xffffffffu;
    if (tag == TAG_LISTEN) {
        accept_burst(g);
    } else if (tag == TAG_WAKE) {
        uint64_t x;
        ssize_t r = read(g->wake_fd, &x, sizeof x);
        (void)r;
        if (atomic_load(&g->quiesce)) close_listener(g);
    } else {
        gate_slot *s = &g->slots[tag - 2];
        if (s->gen != (uint32_t)(e->data.u64 >> 32) || s->state == SLOT_FREE) return; /* stale */
        if (s->state == SLOT_HEAD) head_event(g, s, e->events);
        else linger_event(g, s);
    }
}

/* The gate thread: events as they come, a sweep every SWEEP_NS; on stop
 * it closes what it holds. */
static void *gate_main(void *arg)
{
    nesfd_gate *g = arg;
    struct epoll_event evs[64];
    int64_t next_sweep = nesf_clock_ns() + SWEEP_NS;
    while (!atomic_load(&g->stop)) {
        int n = epoll_wait(g->ep, evs, 64, (int)(SWEEP_NS / 1000000));
        for (int i = 0; i < n; i++) dispatch(g, &evs[i]);
        int64_t now = nesf_clock_ns();
        if (now >= next_sweep) {
            sweep(g, now);
            next_sweep = now + SWEEP_NS;
        }
    }
    for (int i = 0; i < g->c.max_connections; i++)
        if (g->slots[i].state != SLOT_FREE) slot_close(g, &g->slots[i], 1);
    close_listener(g);
    return NULL;
}

/* ---- life cycle ---- */

/* Everything the gate needs, allocated once (fixed memory from then on). */
static int gate_alloc(const nesfd_gate_config *c, nesfd_gate **out, nesf_error *err)
{
    nesfd_gate *g = calloc(1, sizeof *g);
    *out = g;
    if (!g) {
        close(c->listen_fd);
        return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    }
    g->c = *c;
    g->listen_fd = c->listen_fd;
    g->ep = g->wake_fd = -1;
    pthread_mutex_init(&g->mu, NULL);
    g->tab_cap = 16;
    while (g->tab_cap < 2 * (size_t)c->max_connections + 1) g->tab_cap *= 2;
    g->tab = calloc(g->tab_cap, sizeof *g->tab);
    g->slots = calloc((size_t)c->max_connections, sizeof *g->slots);
    g->buf = malloc(NESFD_GATE_HEAD_MAX + 1);
    if (!g->tab || !g->slots || !g->buf) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    for (int i = 0; i < c->max_connections; i++) {
        g->slots[i].fd = -1;
        g->slots[i].next_free = i + 1 < c->max_connections ? i + 1 : -1;
    }
    uuid_t u;
    uuid_generate_random(u);
    memcpy(&g->seed, u, sizeof g->seed);
    return NESF_OK;
}

int nesfd_gate_start(const nesfd_gate_config *c, nesfd_gate **out, nesf_error *err)
{
    *out = NULL;
    if (c->max_connections < 1 || c->max_per_client < 1 || !c->handoff) {
        if (c->listen_fd >= 0) close(c->listen_fd);
        return nesf_fail(err, NESF_ERR_INVALID, "gate: bad configuration");
    }
    nesfd_gate *g;
    int rc = gate_alloc(c, &g, err);
    if (rc) {
        nesfd_gate_free(g);
        return rc;
    }
    g->ep = epoll_create1(EPOLL_CLOEXEC);
    g->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct epoll_event le = {.events = EPOLLIN, .data.u64 = TAG_LISTEN};
    struct epoll_event we = {.events = EPOLLIN, .data.u64 = TAG_WAKE};
    if (g->ep < 0 || g->wake_fd < 0 || epoll_ctl(g->ep, EPOLL_CTL_ADD, g->listen_fd, &le) ||
        epoll_ctl(g->ep, EPOLL_CTL_ADD, g->wake_fd, &we) ||
        pthread_create(&g->thread, NULL, gate_main, g)) {
        rc = nesf_fail(err, NESF_ERR_IO, "gate: cannot start: %s", strerror(errno));
        nesfd_gate_free(g);
        return rc;
    }
    g->started = 1;
    *out = g;
    return NESF_OK;
}

/* Interrupts the gate thread's epoll_wait. */
static void wake(nesfd_gate *g)
{
    uint64_t one = 1;
    ssize_t r = write(g->wake_fd, &one, sizeof one);
    (void)r; /* a full counter still wakes the thread */
}

void nesfd_gate_quiesce(nesfd_gate *g)
{
    if (!g || atomic_exchange(&g->quiesce, 1)) return;
    /* refuses new connections now (Linux stops listening on shutdown);
     * the gate thread closes the socket, so its number is not reused
     * under an accept */
    if (g->listen_fd >= 0) shutdown(g->listen_fd, SHUT_RDWR);
    wake(g);
}

void nesfd_gate_stop(nesfd_gate *g)
{
    if (!g || !g->started) return;
    atomic_store(&g->stop, 1);
    wake(g);
    pthread_join(g->thread, NULL);
    g->started = 0;
}

void nesfd_gate_free(nesfd_gate *g)
{
    if (!g) return;
    nesfd_gate_stop(g);
    close_listener(g);
    if (g->ep >= 0) close(g->ep);
    if (g->wake_fd >= 0) close(g->wake_fd);
    pthread_mutex_destroy(&g->mu);
    free(g->tab);
    free(g->slots);
    free(g->buf);
    free(g);
}

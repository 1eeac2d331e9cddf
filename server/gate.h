/* gate.h - nesfd's request-head gate, in front of libmicrohttpd.
 *
 * libmicrohttpd 0.9.75 answers what it cannot parse (a request line or
 * headers over its buffer, a malformed line, an HTTP version other than
 * 1.0/1.1, a bad chunk size) with its own HTML pages, without X-Request-Id,
 * and has no hook to replace them.  So nesfd accepts connections itself: a
 * gate thread waits (epoll) for each connection's request head, looks at it
 * with recv(MSG_PEEK) without consuming it, and hands a connection whose
 * head is complete and sane to libmicrohttpd (MHD_add_connection), which
 * then reads it as if it had accepted the connection.  Anything else gets
 * nesfd's own JSON error from the gate, with Connection: close: 400
 * malformed, 408 head not complete in time, 411 Transfer-Encoding (a body
 * needs Content-Length), 413 absurd Content-Length, 414 request line too
 * long, 431 head too large, 505 version, 503 over the connection limits.
 * Like every nesfd answer it carries the caller's X-Request-Id when the
 * head seen names a sane one, and CORS headers for an allowed Origin
 * (headers.h), both as far as the head can be read (nesfd_gate_fields).
 *
 * The gate counts every connection from accept to close, in the gate or
 * in libmicrohttpd (nesfd_gate_release), against max_connections and
 * max_connections_per_client.  Memory is fixed at start: one slot per
 * allowed connection, one peek buffer for all, one table of client
 * addresses. */
#ifndef NESFD_GATE_H
#define NESFD_GATE_H

#include <stdint.h>
#include <sys/socket.h>

#include "error.h"

/* The largest request line, request head and number of header fields
 * (header lines plus cookie pairs, which libmicrohttpd stores one by one)
 * the gate lets through: all well inside libmicrohttpd's 64 KiB
 * per-connection memory, so that it never refuses a head the gate passed. */
#define NESFD_GATE_LINE_MAX 8192
#define NESFD_GATE_HEAD_MAX 32768
#define NESFD_GATE_FIELDS_MAX 128

typedef struct nesfd_gate nesfd_gate;

/* Takes a connection whose head passed; the callee owns fd from then on
 * (closes it even on failure).  Returns 0 when it took it, -1 when it
 * refused (then it is no longer counted: the gate releases it itself). */
typedef int (*nesfd_gate_handoff_fn)(void *ctx, int fd, const struct sockaddr *addr, socklen_t len);
/* Told of every answer the gate gives itself (logs, metrics); id is the
 * X-Request-Id sent, target the request target or "" when none parsed. */
typedef void (*nesfd_gate_answered_fn)(void *ctx, int status, const char *code, const char *id,
                                       const char *target, double secs);

typedef struct nesfd_gate_config {
    int listen_fd;            /* listening, non-blocking; taken over (closed by the gate) */
    int max_connections;      /* in the gate and handed on, together */
    int max_per_client;       /* the same, per client address */
    int64_t header_ns;        /* a head must be complete this long after accept */
    const char (*origins)[256]; /* CORS origins (headers.h); the caller's, kept until free */
    int n_origins;
    nesfd_gate_handoff_fn handoff;
    nesfd_gate_answered_fn answered;
    void *ctx;                /* for both callbacks */
} nesfd_gate_config;

/* The verdict on the bytes of a request head seen so far. */
typedef struct nesfd_gate_verdict {
    int status;               /* 0: passes; else the answer's status */
    const char *code, *message; /* static strings */
    char target[128];         /* the request target's start ("" before it parsed) */
} nesfd_gate_verdict;

/* Judges buf[0..n) (n <= NESFD_GATE_HEAD_MAX + 1): 1 when the head is
 * complete and passes, 0 when more bytes are needed, -1 when it is
 * refused (v says how).  Pure: for the gate thread and tests. */
int nesfd_gate_check(const char *buf, size_t n, nesfd_gate_verdict *v);

/* The X-Request-Id and Origin values of a head the gate answers, pointing
 * into the bytes judged (NULL: none). */
typedef struct nesfd_gate_fields {
    const char *id, *origin;
    size_t id_len, origin_len;
} nesfd_gate_fields;

/* Finds them in buf[0..n) (a head, complete or not, refused or not): the
 * first of each among the complete lines, as libmicrohttpd would, behind a
 * request line of METHOD SP target SP HTTP/x.y (any version, any length:
 * a long URL's 414 carries them when its head came in whole).  Neither
 * when the request line is not complete or not that, or any complete line
 * is malformed: then which bytes are which line is not certain.  Pure. */
void nesfd_gate_fields_find(const char *buf, size_t n, nesfd_gate_fields *f);

/* Starts the gate thread; c->listen_fd is the gate's even on failure. */
int nesfd_gate_start(const nesfd_gate_config *c, nesfd_gate **out, nesf_error *err);
/* A handed-on connection from addr closed (from any thread). */
void nesfd_gate_release(nesfd_gate *g, const struct sockaddr *addr);
/* Stops accepting (closes the listening socket soon, from the gate
 * thread); connections already in the gate are still judged. */
void nesfd_gate_quiesce(nesfd_gate *g);
/* Joins the thread and closes the connections still in the gate and the
 * listening socket; nesfd_gate_release stays callable until free. */
void nesfd_gate_stop(nesfd_gate *g);
void nesfd_gate_free(nesfd_gate *g);

#endif

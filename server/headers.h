/* headers.h - the request rules that nesfd's answers share, whether
 * libmicrohttpd parsed the head (http.c) or the gate refused it (gate.c):
 * which request id an answer carries, which CORS origin it allows, and
 * which error shape it uses.  Values are length-delimited, so that the gate can pass bytes
 * of a head it peeked at without copying them.  Pure and thread-safe. */
#ifndef NESFD_HEADERS_H
#define NESFD_HEADERS_H

#include <stddef.h>

/* The longest request id kept, and a buffer that holds any id. */
#define NESFD_REQUEST_ID_MAX 128
#define NESFD_REQUEST_ID_SIZE (NESFD_REQUEST_ID_MAX + 1)
/* What a page on an allowed origin may read of an answer. */
#define NESFD_CORS_EXPOSE "X-Request-Id, Retry-After"

/* 1 when the X-Request-Id value s[0..n) may be echoed (1-128 characters
 * of [A-Za-z0-9._:-]; it goes into a header, JSON and logs as it is). */
int nesfd_request_id_sane(const char *s, size_t n);

/* The id of an answer, into out (NUL-terminated): the caller's sent[0..n)
 * when it is sane, else a fresh random UUID.  sent may be NULL (none). */
void nesfd_request_id(const char *sent, size_t n, char out[NESFD_REQUEST_ID_SIZE]);

/* The Access-Control-Allow-Origin value for a request whose Origin is
 * origin[0..n) (NULL: none sent), against the configured origins: "*" when
 * the list has "*" (a static string), the matching entry of origins (the
 * caller's, which it must keep), or NULL: no CORS headers. */
const char *nesfd_allowed_origin(const char (*origins)[256], int n_origins, const char *origin,
                                 size_t n);

/* 1 when path (a target, its query included or not) is under /v2, the
 * Open Inference Protocol's routes, whose errors are {"error": "message"}
 * instead of nesfd's {"error": {"code", "message", "request_id"}}. */
int nesfd_oip_path(const char *path);

#endif

/* static.h - static files for nesfd's web viewer (clients/web served at /).
 *
 * Maps a request path onto a file under one root directory and reads it.
 * Everything that could leave the root is refused: ".." segments (also
 * percent-encoded), NUL bytes, backslashes, and symlinks whose target lies
 * outside the root (checked on the resolved path).  Only regular files are
 * served; "/" and paths ending in "/" mean index.html.
 *
 * Status codes: NESF_ERR_INVALID for a refused path (answer 400 or 404),
 * NESF_ERR_NOTFOUND for a missing file or a directory (404), NESF_ERR_IO
 * for read errors and NESF_ERR_UNSUPPORTED for files over the size limit.
 * No libmicrohttpd here: the daemon turns the result into a response. */
#ifndef NESF_STATIC_H
#define NESF_STATIC_H

#include <stddef.h>
#include <time.h>

#include "error.h"

#define NESF_STATIC_MAX_BYTES (64u << 20)

typedef struct nesf_static_file {
    unsigned char *data;      /* owned; free with nesf_static_file_free */
    size_t size;
    const char *content_type; /* static string, e.g. "text/html; charset=utf-8" */
    time_t mtime;
} nesf_static_file;

/* Content type from the file name's extension (application/octet-stream
 * when unknown). */
const char *nesf_static_content_type(const char *path);

/* Resolves url_path (the request target's path; a query string or fragment
 * is ignored) under root to an absolute file path in out (size bytes).
 * The file must exist and be a regular file inside root. */
int nesf_static_resolve(const char *root, const char *url_path, char *out, size_t size,
                        nesf_error *err);

/* resolve + read.  On success *f owns the bytes; on failure *f is zeroed. */
int nesf_static_load(const char *root, const char *url_path, nesf_static_file *f,
                     nesf_error *err);

void nesf_static_file_free(nesf_static_file *f);

#endif

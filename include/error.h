/* error.h - status codes and the error record every libnesf call fills.
 *
 * Library functions return an int status (NESF_OK == 0 on success) and,
 * when given a non-NULL nesf_error *, a one-line human message.  The
 * library never prints and never exits. */
#ifndef NESF_ERROR_H
#define NESF_ERROR_H

enum {
    NESF_OK = 0,
    NESF_ERR_INVALID,     /* bad argument or value (NaN, wrong size, ...) */
    NESF_ERR_PARSE,       /* malformed input text (CIF, JSON) */
    NESF_ERR_IO,          /* file system */
    NESF_ERR_NOMEM,
    NESF_ERR_FORMAT,      /* well-formed but wrong content (shapes, dtypes) */
    NESF_ERR_UNSUPPORTED, /* valid but not handled (partial occupancy) */
    NESF_ERR_BACKEND,     /* compute backend failure (CUDA, BLAS) */
    NESF_ERR_NOTFOUND,    /* unknown element, tensor, model */
    NESF_ERR_CANCELLED,   /* the caller asked to stop (nesf_decode_opts.cancel) */
};

typedef struct nesf_error {
    int code;
    char msg[512];
} nesf_error;

/* Records code and a printf-style message in e (may be NULL); returns code,
 * so callers can write `return nesf_fail(err, NESF_ERR_IO, "...")`. */
int nesf_fail(nesf_error *e, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Prefixes an existing message ("file.cif: " + old message). */
void nesf_error_prefix(nesf_error *e, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

void nesf_error_clear(nesf_error *e);
const char *nesf_status_name(int code);

#endif

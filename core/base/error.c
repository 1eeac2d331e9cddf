#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int nesf_fail(nesf_error *e, int code, const char *fmt, ...)
{
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        e->code = code;
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

void nesf_error_prefix(nesf_error *e, const char *fmt, ...)
{
    if (!e) return;
    char pre[256], old[sizeof e->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    memcpy(old, e->msg, sizeof old);
    snprintf(e->msg, sizeof e->msg, "%s%s", pre, old);
}

void nesf_error_clear(nesf_error *e)
{
    if (e) { e->code = NESF_OK; e->msg[0] = 0; }
}

const char *nesf_status_name(int code)
{
    switch (code) {
    case NESF_OK: return "ok";
    case NESF_ERR_INVALID: return "invalid";
    case NESF_ERR_PARSE: return "parse";
    case NESF_ERR_IO: return "io";
    case NESF_ERR_NOMEM: return "nomem";
    case NESF_ERR_FORMAT: return "format";
    case NESF_ERR_UNSUPPORTED: return "unsupported";
    case NESF_ERR_BACKEND: return "backend";
    case NESF_ERR_NOTFOUND: return "notfound";
    case NESF_ERR_CANCELLED: return "cancelled";
    default: return "unknown";
    }
}

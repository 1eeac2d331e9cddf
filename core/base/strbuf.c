/* strbuf.c - see strbuf.h. */
#include "strbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Doubling growth from 4 KiB keeps appends amortised O(1) for the large
 * outputs (multi-megabyte CIF batches) and costs one allocation for the
 * small ones. */
int nesf_strbuf_reserve(nesf_strbuf *b, size_t n)
{
    if (b->failed) return -1;
    if (b->p && b->len + n < b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap <= b->len + n) {
        if (cap > ((size_t)-1) / 2) {
            b->failed = 1;
            return -1;
        }
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (!p) {
        b->failed = 1;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

/* Formats straight into the spare room, growing and retrying once when the
 * text did not fit, so that no temporary copy is made. */
void nesf_strbuf_printf(nesf_strbuf *b, const char *fmt, ...)
{
    if (b->failed) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        size_t room = b->p ? b->cap - b->len : 0;
        int k = vsnprintf(b->p ? b->p + b->len : NULL, room, fmt, ap);
        va_end(ap);
        if (k < 0) {
            b->failed = 1;
            return;
        }
        if (b->p && (size_t)k < room) {
            b->len += (size_t)k;
            return;
        }
        if (nesf_strbuf_reserve(b, (size_t)k)) return;
    }
}

/* Byte-exact append: request bodies and file chunks may hold any byte. */
void nesf_strbuf_append(nesf_strbuf *b, const char *s, size_t n)
{
    if (nesf_strbuf_reserve(b, n)) return;
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

/* The common case of append, for C strings. */
void nesf_strbuf_puts(nesf_strbuf *b, const char *s)
{
    nesf_strbuf_append(b, s, strlen(s));
}

/* One exit for every writer: the failure flag becomes a NULL result. */
char *nesf_strbuf_take(nesf_strbuf *b, size_t *len)
{
    if (!b->failed && !b->p) nesf_strbuf_reserve(b, 0);
    char *p = b->failed ? NULL : b->p;
    if (p) p[b->len] = 0;
    if (len) *len = p ? b->len : 0;
    if (!p) free(b->p);
    memset(b, 0, sizeof *b);
    return p;
}

/* For error paths that drop a half-written text. */
void nesf_strbuf_free(nesf_strbuf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

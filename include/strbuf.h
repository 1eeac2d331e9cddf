/* strbuf.h - the growing text buffer every writer of the library builds its
 * output in (CIF, SVG, Prometheus text, tool reports).
 *
 * A zeroed nesf_strbuf is empty and valid.  Appends never fail loudly: the
 * first allocation or formatting failure sets `failed`, later appends do
 * nothing, and nesf_strbuf_take reports it by returning NULL, so a writer
 * checks once at the end.  The buffer owns `p` until nesf_strbuf_take hands
 * it to the caller (who frees it) or nesf_strbuf_free releases it. */
#ifndef NESF_STRBUF_H
#define NESF_STRBUF_H

#include <stddef.h>

typedef struct nesf_strbuf {
    char *p;      /* NUL-terminated once anything was appended */
    size_t len;   /* bytes before the NUL */
    size_t cap;
    int failed;   /* an append ran out of memory or failed to format */
} nesf_strbuf;

/* printf-style append. */
void nesf_strbuf_printf(nesf_strbuf *b, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Appends n bytes of s (which may hold NULs); the text stays NUL-terminated. */
void nesf_strbuf_append(nesf_strbuf *b, const char *s, size_t n);

/* Appends a NUL-terminated string. */
void nesf_strbuf_puts(nesf_strbuf *b, const char *s);

/* Makes room for n more bytes; 0 on success, -1 (and failed set) when out of
 * memory. */
int nesf_strbuf_reserve(nesf_strbuf *b, size_t n);

/* Hands the text to the caller (free() it) and empties b; an empty buffer
 * gives "" (allocated), a failed one NULL (its memory released). */
char *nesf_strbuf_take(nesf_strbuf *b, size_t *len);

/* Releases the text and empties b. */
void nesf_strbuf_free(nesf_strbuf *b);

#endif

/* sio.c - format detection and reading structures from files or memory. */
#include "sio.h"
#include "cif.h"
#include "sjson.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

const char *nesf_format_name(nesf_format f)
{
    switch (f) {
    case NESF_FORMAT_CIF: return "cif";
    case NESF_FORMAT_JSON: return "json";
    case NESF_FORMAT_JSONL: return "jsonl";
    default: return "auto";
    }
}

static int has_ext(const char *name, const char *ext)
{
    size_t n = strlen(name), e = strlen(ext);
    return n > e && !strcasecmp(name + n - e, ext);
}

nesf_format nesf_sio_detect(const char *text, size_t len, const char *name)
{
    if (name) {
        if (has_ext(name, ".cif")) return NESF_FORMAT_CIF;
        if (has_ext(name, ".jsonl")) return NESF_FORMAT_JSONL;
        if (has_ext(name, ".json")) return NESF_FORMAT_JSON;
    }
    size_t i = 0;
    while (i < len && (text[i] == ' ' || text[i] == '\t' || text[i] == '\r' || text[i] == '\n'))
        i++;
    if (i == len || (text[i] != '{' && text[i] != '[')) return NESF_FORMAT_CIF;
    if (text[i] == '[') return NESF_FORMAT_JSON;
    /* an object: JSON Lines when something follows it */
    json_error_t je;
    json_t *first = json_loadb(text + i, len - i, JSON_DISABLE_EOF_CHECK, &je);
    if (!first) return NESF_FORMAT_JSON; /* the JSON reader reports the error */
    json_decref(first);
    size_t j = i + (size_t)je.position;
    while (j < len && (text[j] == ' ' || text[j] == '\t' || text[j] == '\r' || text[j] == '\n'))
        j++;
    return j < len ? NESF_FORMAT_JSONL : NESF_FORMAT_JSON;
}

int nesf_sio_read_buffer(const char *text, size_t len, const char *name, nesf_format fmt,
                         nesf_structure ***out, int *n, nesf_error *err)
{
    *out = NULL;
    *n = 0;
    const char *label = name ? name : "(input)";
    if (len > NESF_SIO_MAX_BYTES)
        return nesf_fail(err, NESF_ERR_INVALID, "%s: input of %zu bytes is too large (limit %zu)",
                         label, len, NESF_SIO_MAX_BYTES);
    if (fmt == NESF_FORMAT_AUTO) fmt = nesf_sio_detect(text, len, name);
    int rc;
    switch (fmt) {
    case NESF_FORMAT_CIF:
        return nesf_cif_read(text, len, label, out, n, err);
    case NESF_FORMAT_JSONL:
        rc = nesf_sjson_read_lines(text, len, label, out, n, err);
        if (!rc && *n == 0)
            rc = nesf_fail(err, NESF_ERR_FORMAT, "%s: no structure (empty input)", label);
        return rc;
    default:
        rc = nesf_sjson_read(text, len, out, n, err);
        if (rc) nesf_error_prefix(err, "%s: ", label);
        return rc;
    }
}

int nesf_sio_slurp(const char *path, char **text, size_t *len, nesf_error *err)
{
    *text = NULL;
    *len = 0;
    int is_stdin = !strcmp(path, "-");
    FILE *f = is_stdin ? stdin : fopen(path, "rb");
    if (!f) return nesf_fail(err, NESF_ERR_IO, "%s: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    int rc = buf ? NESF_OK : nesf_fail(err, NESF_ERR_NOMEM, "%s: out of memory", path);
    while (!rc) {
        if (n == cap) {
            if (cap >= NESF_SIO_MAX_BYTES) {
                rc = nesf_fail(err, NESF_ERR_INVALID, "%s: larger than %zu bytes", path,
                               NESF_SIO_MAX_BYTES);
                break;
            }
            char *nb = realloc(buf, 2 * cap + 1);
            if (!nb) {
                rc = nesf_fail(err, NESF_ERR_NOMEM, "%s: out of memory", path);
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t k = fread(buf + n, 1, cap - n, f);
        n += k;
        if (k == 0) {
            if (ferror(f)) rc = nesf_fail(err, NESF_ERR_IO, "%s: read error", path);
            break;
        }
    }
    if (!is_stdin) fclose(f);
    if (rc) {
        free(buf);
        return rc;
    }
    buf[n] = 0;
    *text = buf;
    *len = n;
    return NESF_OK;
}

int nesf_sio_read_file(const char *path, nesf_format fmt, nesf_structure ***out, int *n,
                       nesf_error *err)
{
    *out = NULL;
    *n = 0;
    char *text;
    size_t len;
    int rc = nesf_sio_slurp(path, &text, &len, err);
    if (rc) return rc;
    rc = nesf_sio_read_buffer(text, len, strcmp(path, "-") ? path : "(stdin)", fmt, out, n, err);
    free(text);
    return rc;
}

#include "static.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

static const struct {
    const char *ext, *type;
} content_types[] = {
    {"html", "text/html; charset=utf-8"},
    {"htm", "text/html; charset=utf-8"},
    {"js", "text/javascript; charset=utf-8"},
    {"mjs", "text/javascript; charset=utf-8"},
    {"css", "text/css; charset=utf-8"},
    {"json", "application/json"},
    {"map", "application/json"},
    {"txt", "text/plain; charset=utf-8"},
    {"md", "text/markdown; charset=utf-8"},
    {"cif", "chemical/x-cif"},
    {"svg", "image/svg+xml"},
    {"png", "image/png"},
    {"jpg", "image/jpeg"},
    {"jpeg", "image/jpeg"},
    {"gif", "image/gif"},
    {"ico", "image/x-icon"},
    {"webp", "image/webp"},
    {"woff2", "font/woff2"},
    {"wasm", "application/wasm"},
};

const char *nesf_static_content_type(const char *path)
{
    const char *slash = strrchr(path, '/');
    const char *dot = strrchr(slash ? slash : path, '.');
    if (dot && dot[1])
        for (size_t i = 0; i < sizeof content_types / sizeof content_types[0]; i++)
            if (strcasecmp(dot + 1, content_types[i].ext) == 0) return content_types[i].type;
    return "application/octet-stream";
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Percent-decodes src[0..n) into dst (at least n + 1 bytes).  The HTTP
 * layer may have decoded once already, so a '%' that survives decoding
 * (double encoding such as "%252e") is refused rather than guessed at. */
static int url_decode(const char *src, size_t n, char *dst, nesf_error *err)
{
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)src[i];
        if (c == '%') {
            int hi = i + 1 < n ? hexval((unsigned char)src[i + 1]) : -1;
            int lo = i + 2 < n ? hexval((unsigned char)src[i + 2]) : -1;
            if (hi < 0 || lo < 0) return nesf_fail(err, NESF_ERR_INVALID, "bad percent escape in path");
            c = hi * 16 + lo;
            i += 2;
        }
        if (c == 0) return nesf_fail(err, NESF_ERR_INVALID, "NUL byte in path");
        if (c == '\\') return nesf_fail(err, NESF_ERR_INVALID, "backslash in path");
        if (c == '%') return nesf_fail(err, NESF_ERR_INVALID, "double-encoded path"); /* from %25 */
        dst[j++] = (char)c;
    }
    dst[j] = 0;
    return NESF_OK;
}

/* "/a/b/" -> "a/b/index.html" (written to rel), refusing any segment that is
 * "." or ".." or starts with a dot (hidden files such as .git). */
static int normalize(const char *decoded, char *rel, size_t size, nesf_error *err)
{
    size_t len = 0;
    const char *p = decoded;
    int dir = 1; /* the path names a directory: serve its index.html */
    rel[0] = 0;
    while (*p) {
        while (*p == '/') p++;
        if (!*p) break;
        const char *end = strchr(p, '/');
        size_t seg = end ? (size_t)(end - p) : strlen(p);
        if (p[0] == '.')
            return nesf_fail(err, NESF_ERR_INVALID, "path segment \"%.*s\" refused",
                             (int)(seg > 32 ? 32 : seg), p);
        if (len + seg + 2 > size) return nesf_fail(err, NESF_ERR_INVALID, "path too long");
        if (len) rel[len++] = '/';
        memcpy(rel + len, p, seg);
        len += seg;
        rel[len] = 0;
        dir = end != NULL;
        p += seg;
    }
    if (dir) {
        static const char index[] = "index.html";
        if (len + sizeof index + 1 > size) return nesf_fail(err, NESF_ERR_INVALID, "path too long");
        if (len) rel[len++] = '/';
        memcpy(rel + len, index, sizeof index);
    }
    return NESF_OK;
}

int nesf_static_resolve(const char *root, const char *url_path, char *out, size_t size,
                        nesf_error *err)
{
    if (!root || !url_path) return nesf_fail(err, NESF_ERR_INVALID, "no root or path");
    size_t n = strcspn(url_path, "?#");
    if (n == 0 || url_path[0] != '/')
        return nesf_fail(err, NESF_ERR_INVALID, "path must start with '/'");
    if (n >= PATH_MAX) return nesf_fail(err, NESF_ERR_INVALID, "path too long");

    char decoded[PATH_MAX], rel[PATH_MAX], rroot[PATH_MAX], cand[PATH_MAX], rfile[PATH_MAX];
    int rc = url_decode(url_path, n, decoded, err);
    if (rc) return rc;
    if ((rc = normalize(decoded, rel, sizeof rel, err))) return rc;
    if (!realpath(root, rroot))
        return nesf_fail(err, NESF_ERR_IO, "static root %s: %s", root, strerror(errno));
    if ((size_t)snprintf(cand, sizeof cand, "%s/%s", rroot, rel) >= sizeof cand)
        return nesf_fail(err, NESF_ERR_INVALID, "path too long");
    if (!realpath(cand, rfile)) {
        /* a segment longer than NAME_MAX or a symlink loop names no file */
        if (errno == ENOENT || errno == ENOTDIR || errno == ENAMETOOLONG || errno == ELOOP)
            return nesf_fail(err, NESF_ERR_NOTFOUND, "no such file: /%s", rel);
        return nesf_fail(err, NESF_ERR_IO, "/%s: %s", rel, strerror(errno));
    }
    /* symlinks are followed, so the resolved file must still be in the root */
    size_t rl = strlen(rroot);
    if (!(rl == 1 && rroot[0] == '/') &&
        (strncmp(rfile, rroot, rl) != 0 || rfile[rl] != '/'))
        return nesf_fail(err, NESF_ERR_INVALID, "/%s resolves outside the static root", rel);
    struct stat st;
    if (stat(rfile, &st) != 0)
        return nesf_fail(err, NESF_ERR_NOTFOUND, "no such file: /%s", rel);
    if (!S_ISREG(st.st_mode))
        return nesf_fail(err, NESF_ERR_NOTFOUND, "not a file: /%s", rel);
    if (strlen(rfile) + 1 > size) return nesf_fail(err, NESF_ERR_INVALID, "path too long");
    memcpy(out, rfile, strlen(rfile) + 1);
    return NESF_OK;
}

int nesf_static_load(const char *root, const char *url_path, nesf_static_file *f,
                     nesf_error *err)
{
    memset(f, 0, sizeof *f);
    char path[PATH_MAX];
    int rc = nesf_static_resolve(root, url_path, path, sizeof path, err);
    if (rc) return rc;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return nesf_fail(err, NESF_ERR_IO, "%s: %s", url_path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return nesf_fail(err, NESF_ERR_NOTFOUND, "not a file: %s", url_path);
    }
    if ((unsigned long long)st.st_size > NESF_STATIC_MAX_BYTES) {
        close(fd);
        return nesf_fail(err, NESF_ERR_UNSUPPORTED, "%s: file larger than %u bytes", url_path,
                         NESF_STATIC_MAX_BYTES);
    }
    size_t want = (size_t)st.st_size, got = 0;
    int read_errno = 0;
    unsigned char *buf = malloc(want ? want : 1);
    if (!buf) {
        close(fd);
        return nesf_fail(err, NESF_ERR_NOMEM, "out of memory reading %s", url_path);
    }
    while (got < want) {
        ssize_t r = read(fd, buf + got, want - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            read_errno = r < 0 ? errno : 0;
            break;
        }
        got += (size_t)r;
    }
    close(fd);
    if (got != want) {
        free(buf);
        return nesf_fail(err, NESF_ERR_IO, "%s: %s", url_path,
                         read_errno ? strerror(read_errno) : "file shrank while reading");
    }
    f->data = buf;
    f->size = got;
    f->content_type = nesf_static_content_type(path);
    f->mtime = st.st_mtime;
    return NESF_OK;
}

void nesf_static_file_free(nesf_static_file *f)
{
    if (!f) return;
    free(f->data);
    memset(f, 0, sizeof *f);
}

/* fileio.c - see fileio.h. */
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A fresh name beside path for the file before it becomes path; the
 * counter keeps two writers in one process apart. */
static char *temp_name(const char *path, unsigned attempt)
{
    static unsigned counter;
    char *t = NULL;
    unsigned k = __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED);
    if (asprintf(&t, "%s.tmp.%ld.%u", path, (long)getpid(), k * 1000u + attempt) < 0) return NULL;
    return t;
}

/* The directory that will hold path, as open(2) wants it. */
static char *dir_of(const char *path)
{
    char *copy = strdup(path);
    if (!copy) return NULL;
    char *d = strdup(dirname(copy));
    free(copy);
    return d;
}

int nesf_outfile_open(nesf_outfile *f, const char *path, nesf_error *err)
{
    memset(f, 0, sizeof *f);
    f->fd = -1;
    f->path = strdup(path);
    char *dir = dir_of(path);
    if (!f->path || !dir) {
        free(dir);
        nesf_outfile_abort(f);
        return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    }
#ifdef O_TMPFILE
    f->fd = open(dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0644);
#endif
    free(dir);
    if (f->fd >= 0) return NESF_OK;
    /* no unnamed files here (an old kernel, some file systems): a named
     * one that nobody else can have made */
    for (unsigned attempt = 0; attempt < 100 && f->fd < 0; attempt++) {
        free(f->tmp);
        f->tmp = temp_name(path, attempt);
        if (!f->tmp) break;
        f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (f->fd < 0 && errno != EEXIST) break;
    }
    if (f->fd < 0) {
        int rc = nesf_fail(err, NESF_ERR_IO, "%s: %s", f->tmp ? f->tmp : path,
                           f->tmp ? strerror(errno) : "out of memory");
        free(f->tmp);
        f->tmp = NULL; /* not ours: nothing to remove */
        nesf_outfile_abort(f);
        return rc;
    }
    return NESF_OK;
}

int nesf_outfile_write(nesf_outfile *f, const void *data, size_t len, nesf_error *err)
{
    const char *p = data;
    while (len > 0) {
        ssize_t w = write(f->fd, p, len);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return nesf_fail(err, NESF_ERR_IO, "writing %s: %s", f->path,
                                     w < 0 ? strerror(errno) : "nothing written");
        p += w;
        len -= (size_t)w;
    }
    return NESF_OK;
}

/* Gives the unnamed file a temporary name (link(2) never replaces a file,
 * so a fresh name is tried until one is free). */
static int name_unnamed(nesf_outfile *f)
{
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", f->fd);
    for (unsigned attempt = 0; attempt < 100; attempt++) {
        f->tmp = temp_name(f->path, attempt);
        if (!f->tmp) return -1;
        if (linkat(AT_FDCWD, proc, AT_FDCWD, f->tmp, AT_SYMLINK_FOLLOW) == 0) return 0;
        int e = errno;
        free(f->tmp);
        f->tmp = NULL;
        errno = e;
        if (e != EEXIST) return -1;
    }
    return -1;
}

int nesf_outfile_commit(nesf_outfile *f, nesf_error *err)
{
    int unnamed = !f->tmp;
    if (fsync(f->fd) != 0 || (unnamed && name_unnamed(f)) || rename(f->tmp, f->path) != 0) {
        int rc = nesf_fail(err, NESF_ERR_IO, "writing %s: %s", f->path, strerror(errno));
        nesf_outfile_abort(f);
        return rc;
    }
    free(f->tmp);
    f->tmp = NULL; /* renamed: nothing left to remove */
    int e = close(f->fd) != 0 ? errno : 0;
    f->fd = -1;
    /* make the rename itself durable */
    char *dir = dir_of(f->path);
    int dfd = dir ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    free(dir);
    int rc = e ? nesf_fail(err, NESF_ERR_IO, "writing %s: %s", f->path, strerror(e)) : NESF_OK;
    nesf_outfile_abort(f);
    return rc;
}

void nesf_outfile_abort(nesf_outfile *f)
{
    if (f->fd >= 0) close(f->fd);
    f->fd = -1;
    if (f->tmp) unlink(f->tmp);
    free(f->tmp);
    free(f->path);
    f->tmp = f->path = NULL;
}

int nesf_write_file(const char *path, const void *data, size_t len, nesf_error *err)
{
    if (!strcmp(path, "-")) {
        if (fwrite(data, 1, len, stdout) != len || fflush(stdout) != 0)
            return nesf_fail(err, NESF_ERR_IO, "writing standard output: %s", strerror(errno));
        return NESF_OK;
    }
    nesf_outfile f;
    int rc = nesf_outfile_open(&f, path, err);
    if (rc) return rc;
    if ((rc = nesf_outfile_write(&f, data, len, err))) {
        nesf_outfile_abort(&f);
        return rc;
    }
    return nesf_outfile_commit(&f, err);
}

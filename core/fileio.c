/* fileio.c - see fileio.h. */
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int nesf_write_file(const char *path, const void *data, size_t len, nesf_error *err)
{
    if (!strcmp(path, "-")) {
        if (fwrite(data, 1, len, stdout) != len || fflush(stdout) != 0)
            return nesf_fail(err, NESF_ERR_IO, "writing standard output: %s", strerror(errno));
        return NESF_OK;
    }
    size_t n = strlen(path) + 32;
    char *tmp = malloc(n);
    if (!tmp) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    snprintf(tmp, n, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        int rc = nesf_fail(err, NESF_ERR_IO, "%s: %s", tmp, strerror(errno));
        free(tmp);
        return rc;
    }
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        p += w;
        left -= (size_t)w;
    }
    int bad = left > 0 || fsync(fd) != 0;
    int e = errno;
    if (close(fd) != 0) bad = 1, e = errno;
    if (bad || rename(tmp, path) != 0) {
        if (!bad) e = errno;
        unlink(tmp);
        int rc = nesf_fail(err, NESF_ERR_IO, "writing %s: %s", path, strerror(e));
        free(tmp);
        return rc;
    }
    free(tmp);
    return NESF_OK;
}

/* fileio.h - writing whole output files safely: a temporary file beside
 * the target, fsync, then rename, so that a reader never sees a partial
 * file and a failed write leaves the old one in place. */
#ifndef NESF_FILEIO_H
#define NESF_FILEIO_H

#include <stddef.h>

#include "error.h"

/* Writes len bytes of data to path ("-": standard output, written
 * directly). */
int nesf_write_file(const char *path, const void *data, size_t len, nesf_error *err);

#endif

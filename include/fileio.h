/* fileio.h - writing whole output files safely: the data goes to a file
 * that is not yet the target, is fsync'd, and then renamed over it, so
 * that a reader never sees a partial file and a failed write leaves the
 * old one in place. */
#ifndef NESF_FILEIO_H
#define NESF_FILEIO_H

#include <stddef.h>

#include "error.h"

/* An output file being written.  Owns its descriptor and names until
 * nesf_outfile_commit or nesf_outfile_abort, one of which must follow a
 * successful open. */
typedef struct nesf_outfile {
    int fd;
    char *path;  /* the target */
    char *tmp;   /* the temporary name, NULL while the file has none */
} nesf_outfile;

/* Starts writing what will become path: an unnamed file (O_TMPFILE) in
 * path's directory where the file system allows, so that a process killed
 * while writing leaves nothing behind; elsewhere "path.tmp.PID.N" created
 * with O_EXCL | O_NOFOLLOW (never an existing file or a link's target). */
int nesf_outfile_open(nesf_outfile *f, const char *path, nesf_error *err);
int nesf_outfile_write(nesf_outfile *f, const void *data, size_t len, nesf_error *err);
/* fsync, then the file becomes path (an unnamed one gets a fresh O_EXCL-
 * style temporary name first: link(2) never replaces), the directory is
 * fsync'd; on failure the temporary file is removed.  Releases f. */
int nesf_outfile_commit(nesf_outfile *f, nesf_error *err);
/* Drops the file and its temporary name.  Releases f. */
void nesf_outfile_abort(nesf_outfile *f);

/* Writes len bytes of data to path through an nesf_outfile ("-": standard
 * output, written directly). */
int nesf_write_file(const char *path, const void *data, size_t len, nesf_error *err);

#endif

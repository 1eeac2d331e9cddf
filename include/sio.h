/* sio.h - one entry point for reading structures, whatever the format:
 * CIF (every data block holding a structure), a JSON structure object
 * (dataset line format or pymatgen as_dict), a JSON array of them, or JSON
 * Lines.  Used by the `nesf` tool, the daemon and the dataset loader.
 *
 * Ownership: on success *out is a malloc'd array of *n structures owned by
 * the caller, released with nesf_structure_list_free(*out, *n); on failure
 * *out is NULL, *n is 0 and err says what and where ("file:line: ..."). */
#ifndef NESF_SIO_H
#define NESF_SIO_H

#include <stddef.h>

#include "error.h"
#include "structure.h"

/* Largest input accepted (file, stdin or buffer). */
#define NESF_SIO_MAX_BYTES ((size_t)1 << 30)

typedef enum {
    NESF_FORMAT_AUTO = 0, /* detect: nesf_sio_detect */
    NESF_FORMAT_CIF,
    NESF_FORMAT_JSON,     /* one object, or an array of objects */
    NESF_FORMAT_JSONL,    /* one object per line */
} nesf_format;

/* "auto", "cif", "json", "jsonl". */
const char *nesf_format_name(nesf_format f);

/* The format of text: by name's extension when it is .cif, .json or .jsonl
 * (name may be NULL), else by content: text whose first non-blank
 * character is '{' or '[' is JSON, or JSON Lines when a second top-level
 * value follows the first; anything else is CIF. */
nesf_format nesf_sio_detect(const char *text, size_t len, const char *name);

/* Parses structures from memory (not modified, need not be NUL-terminated).
 * name labels messages and guides detection; may be NULL. */
int nesf_sio_read_buffer(const char *text, size_t len, const char *name, nesf_format fmt,
                         nesf_structure ***out, int *n, nesf_error *err);

/* Same from a file, or from standard input when path is "-". */
int nesf_sio_read_file(const char *path, nesf_format fmt, nesf_structure ***out, int *n,
                       nesf_error *err);

/* Reads a whole file ("-": stdin) into *text (malloc'd, NUL-terminated,
 * caller frees), at most NESF_SIO_MAX_BYTES. */
int nesf_sio_slurp(const char *path, char **text, size_t *len, nesf_error *err);

#endif

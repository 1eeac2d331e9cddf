/* sjson.h - structures as JSON (jansson): the datasets' line format
 * (../shared/datasets/README.md) and pymatgen's Structure.as_dict().
 *
 * Reading accepts either format, told apart by pymatgen's "sites" key, and
 * checks everything: shapes (3x3 matrix, n x 3 coordinates, one species per
 * site), finite numbers, known elements, full occupancy, a cell with
 * positive volume.  Errors name the key and index at fault.
 *
 * Ownership: readers hand back structures the caller frees
 * (nesf_structure_free, or nesf_structure_list_free for arrays); writers
 * return a new jansson reference (json_decref) or malloc'd text (free). */
#ifndef NESF_SJSON_H
#define NESF_SJSON_H

#include <jansson.h>
#include <stddef.h>

#include "error.h"
#include "structure.h"

/* One structure from a JSON object. */
int nesf_sjson_from_json(const json_t *obj, nesf_structure **out, nesf_error *err);

/* Text holding one structure object or an array of them.  On success *out
 * is a malloc'd array of *n >= 1 structures. */
int nesf_sjson_read(const char *text, size_t len, nesf_structure ***out, int *n,
                    nesf_error *err);

/* JSON Lines: one structure object per line, blank lines skipped, and so
 * are the records of failed reconstructions (an object with "error" and no
 * "lattice", as nesf decode and nesf eval --out write them).  Errors
 * read "name:LINE: ...".  On success *out holds *n >= 0 structures (a
 * malloc'd array, NULL when *n is 0). */
int nesf_sjson_read_lines(const char *text, size_t len, const char *name,
                          nesf_structure ***out, int *n, nesf_error *err);

typedef enum {
    /* {"id"?, "lattice": {"matrix", a, b, c, alpha, beta, gamma}, "species",
     *  "cart_coords", "frac_coords"}: the dataset line format */
    NESF_SJSON_DATASET,
    /* the dataset format plus lattice "volume", "formula" and, when
     * symprec > 0, "spacegroup": {"symbol", "number", "symprec"} (null when
     * spglib finds none): what `nesf convert` and the daemon print */
    NESF_SJSON_FULL,
    /* pymatgen's Structure.as_dict(), for Structure.from_dict() */
    NESF_SJSON_PYMATGEN,
} nesf_sjson_style;

/* New reference, NULL only when out of memory.  symprec is used by
 * NESF_SJSON_FULL only. */
json_t *nesf_sjson_to_json(const nesf_structure *s, nesf_sjson_style style, double symprec);

/* Serialises a JSON value compactly with 15 significant digits (enough to
 * round-trip every coordinate to far below 1e-10 Å); malloc'd, NULL only
 * when out of memory. */
char *nesf_sjson_dumps(const json_t *v);

#endif

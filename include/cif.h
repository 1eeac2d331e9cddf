/* cif.h - Crystallographic Information Files (CIF 1.1 syntax; DDL2 tag
 * spellings like _cell.length_a are accepted too).
 *
 * Reader: every data block with a structure (_cell_length_* and an
 * _atom_site_ loop with fract_ or Cartn_ coordinates) gives one structure
 * named after the block; blocks with neither are skipped.  Elements come
 * from _atom_site_type_symbol ("Fe2+" -> Fe), else from the label ("Fe1",
 * "CL2" -> Cl), tried as two letters then one, as pymatgen does.  Symmetry
 * operations (_symmetry_equiv_pos_as_xyz or _space_group_symop_operation_xyz)
 * are applied; a block without them gets them from spglib's database by
 * its H-M symbol, Hall symbol or IT number (nesf_spacegroup_ops in
 * symmetry.h: standard setting for a short symbol, origin choice required
 * where a group has two).  Sites are wrapped into
 * [0, 1); copies closer than NESF_CIF_MERGE_TOL are one site, and two
 * different elements that close are an error.  Occupancies other than 1
 * (within NESF_CIF_OCC_TOL) are an error naming the site: disorder is not
 * guessed away.
 *
 * Errors read "FILE:LINE: what was expected".  Any byte sequence is safe
 * input: the reader never reads out of bounds and runs in time linear in
 * the input apart from the symmetry expansion (bounded by
 * NESF_CIF_MAX_SITES).
 *
 * Ownership: *out is a malloc'd array of *n structures owned by the caller
 * (nesf_structure_list_free); writers return malloc'd text (free). */
#ifndef NESF_CIF_H
#define NESF_CIF_H

#include <stddef.h>

#include "error.h"
#include "structure.h"

#define NESF_CIF_MERGE_TOL 1e-2   /* Å */
#define NESF_CIF_OCC_TOL 1e-3
#define NESF_CIF_MAX_OPS 192      /* the most a space group has (Fm-3m, conventional) */
#define NESF_CIF_MAX_SITES 200000 /* sites of one structure after expansion */

int nesf_cif_read(const char *text, size_t len, const char *filename, nesf_structure ***out,
                  int *n, nesf_error *err);

/* A P1 CIF (every site listed, operation x,y,z) in the layout of pymatgen's
 * CifWriter, which pymatgen, ASE and VESTA read.  The block is named after
 * s->id, else the formula.  NULL only when out of memory or s holds an
 * element outside 1..118. */
char *nesf_cif_write(const nesf_structure *s);

/* A symmetrized CIF of s in its own cell: the space-group operations found
 * by spglib at tolerance symprec (Å) and one symmetrized representative per
 * orbit.  Reading it back gives s's sites (within symprec). */
int nesf_cif_write_symmetrized(const nesf_structure *s, double symprec, char **out,
                               nesf_error *err);

#endif

/* symmetry.h - the space-group operations of a structure (spglib), for
 * writing symmetrized CIFs.  nesf_structure_formula and
 * nesf_structure_spacegroup (structure.h) live in symmetry.c as well.
 * spglib calls are serialised internally (it keeps global error state). */
#ifndef NESF_SYMMETRY_H
#define NESF_SYMMETRY_H

#include "error.h"
#include "structure.h"

typedef struct nesf_symmetry {
    int number;            /* International Tables number, 1..230 */
    char symbol[16];       /* international short symbol, "Fm-3m" */
    char hall[20];         /* Hall symbol */
    int n_ops;
    int (*rot)[3][3];      /* [n_ops] rotations acting on fractional coordinates */
    double (*trans)[3];    /* [n_ops] translations, fractional */
    int n_atoms;
    int *equivalent;       /* [n_atoms] index of the orbit's representative site */
} nesf_symmetry;

/* Operations of s in its own cell (not a standardised one), found with
 * tolerance symprec (Å).  NESF_ERR_INVALID for a structure that
 * nesf_structure_spacegroup would not show spglib (a degenerate cell...).  *out is owned by the caller: nesf_symmetry_free. */
int nesf_structure_symmetry(const nesf_structure *s, double symprec, nesf_symmetry **out,
                            nesf_error *err);
void nesf_symmetry_free(nesf_symmetry *sym);

typedef struct nesf_symmetry_info {
    int number;            /* International Tables number, 1..230 */
    char symbol[16];       /* international short symbol */
    double tolerance;      /* spglib's symprec used (Å) */
    double max_shift;      /* the farthest an atom moved (Å; NAN: not measured) */
} nesf_symmetry_info;

/* The crystal of s refined to the most symmetric space group that moves
 * no atom farther than symprec (Å): spglib's standardized cell
 * (conventional, or primitive when primitive is 1) with idealized lattice
 * and positions, so that any tolerance finds that group again; returned
 * in the datasets' orientation (a along +x) with fractional coordinates
 * wrapped into [0, 1).  spglib's own tolerance bounds an atom's distance
 * to its images, up to twice its distance to its symmetric site, so it is
 * asked at 1 to 2 x symprec and the answer kept that is farthest up in
 * symmetry with every atom within symprec of where it was (lattice
 * idealization included; none: spglib's answer at symprec).  This is how
 * decoded structures are published symmetric.  *out is the caller's
 * (nesf_structure_free); info (may be NULL) receives the group.
 * NESF_ERR_INVALID when spglib finds no group (e.g. atoms closer than
 * symprec). */
int nesf_structure_standardize(const nesf_structure *s, double symprec, int primitive,
                               nesf_structure **out, nesf_symmetry_info *info, nesf_error *err);

/* Operations of a space group from spglib's database, for CIFs that name
 * the group instead of listing its operations.  hm is the Hermann-Mauguin
 * symbol as CIFs write it ("P 21/c", "P 1 21/n 1", "F d -3 m :2",
 * "R -3 m H", ICSD's "F D -3 M Z"; NULL or "" when absent), hall a Hall
 * symbol (or NULL), number the IT number (0 when absent); cell decides
 * between rhombohedral and hexagonal axes when the symbol does not.  A
 * short symbol means the standard setting; a group with two origin
 * choices needs the choice spelled out (NESF_ERR_INVALID otherwise).
 * Writes *n_ops <= 192 operations on fractional coordinates. */
int nesf_spacegroup_ops(const char *hm, const char *hall, int number, const nesf_cellpar *cell,
                        int rot[192][3][3], double trans[192][3], int *n_ops, nesf_error *err);

/* A copy of s in its Niggli-reduced cell (spglib; the cell itself when
 * spglib cannot reduce it), fractional coordinates wrapped: a step of
 * comparing two structures (match.h).  *out is the caller's. */
int nesf_structure_niggli(const nesf_structure *s, nesf_structure **out, nesf_error *err);

#endif

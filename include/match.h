/* match.h - are two periodic structures the same crystal?  The comparison
 * of pymatgen's StructureMatcher (primitive_cell=True, scale=True, no
 * supercells, species must agree), which generative-crystal benchmarks use
 * to score reconstructions:
 *   1. the reduced formulas must agree;
 *   2. each structure is reduced to its primitive cell (spglib, 0.25 Å),
 *      Niggli-reduced, and both are scaled to the same volume; the atom
 *      counts must then agree;
 *   3. every cell of A spanned by lattice vectors whose lengths are within
 *      ltol (relative) of B's and whose angles are within angle_tol of B's
 *      is tried, with every translation that puts a site of A on B's
 *      rarest-species site;
 *   4. sites are paired by a minimum-cost assignment of squared distances
 *      (same species only, shortest periodic image in the LLL-reduced
 *      average lattice), the mean displacement removed; the distances are
 *      normalised by (V/n)^(1/3) of the average lattice.
 * A and B match when the largest normalised distance of some mapping is
 * below stol (StructureMatcher.fit); rms and max_dist are those of the
 * mapping with the smallest RMS below stol, as get_rms_dist reports. */
#ifndef NESF_MATCH_H
#define NESF_MATCH_H

#include "error.h"
#include "structure.h"

typedef struct nesf_match_opts {
    double ltol;       /* relative lattice-length tolerance (0.3) */
    double stol;       /* site tolerance, in units of (V/n)^(1/3) (0.5) */
    double angle_tol;  /* degrees (10) */
} nesf_match_opts;

/* The settings of the generative-crystal benchmarks (ltol 0.3, stol 0.5,
 * angle_tol 10; pymatgen's defaults are 0.2, 0.3, 5). */
void nesf_match_opts_default(nesf_match_opts *o);

typedef struct nesf_match_result {
    int match;         /* 1: the same crystal within the tolerances */
    double rms;        /* smallest normalised RMS displacement (NAN when no mapping) */
    double max_dist;   /* the largest normalised displacement of that mapping */
    char reason[96];   /* why not: "composition", "atom count", "lattice", "sites" */
} nesf_match_result;

/* Compares a and b (neither modified).  Errors only for invalid input or
 * memory; a mismatch is a result. */
int nesf_structure_match(const nesf_structure *a, const nesf_structure *b, const nesf_match_opts *o,
                         nesf_match_result *r, nesf_error *err);

/* Minimum-cost assignment of an n x n cost matrix (row-major; entries may
 * be INFINITY for forbidden pairs): col[i] receives row i's column.
 * Returns the total cost (INFINITY when no finite assignment exists), or
 * NAN when out of memory.  Exposed for tests. */
double nesf_assign(int n, const double *cost, int *col);

/* LLL reduction (delta 0.75) of the lattice rows in place. */
void nesf_lattice_lll(nesf_lattice *l);

#endif

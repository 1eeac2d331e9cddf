/* structure.h - crystal structures: lattice, sites, species.
 *
 * Conventions (shared with ../shared/datasets):
 *   - lattice rows are the cell vectors a, b, c in Å; cart = frac · m;
 *   - angles in degrees here (the network works in radians);
 *   - lattice_from_params orients a along +x and b in the xy-plane
 *     (a = (a,0,0), b = (b cosγ, b sinγ, 0), c completes a right-handed
 *     cell), which is how the datasets' cells are stored;
 *   - species are atomic numbers Z (1..118); a model maps them to classes.
 * A structure owns its arrays; nesf_structure_free releases everything. */
#ifndef NESF_STRUCTURE_H
#define NESF_STRUCTURE_H

#include "error.h"

typedef struct nesf_lattice {
    double m[3][3];
} nesf_lattice;

typedef struct nesf_cellpar {
    double a, b, c;             /* Å */
    double alpha, beta, gamma;  /* degrees */
} nesf_cellpar;

typedef struct nesf_structure {
    char id[64];                /* e.g. "mp-866288"; may be empty */
    nesf_lattice lat;
    int n;                      /* number of sites */
    int cap;                    /* allocated sites */
    int *z;                     /* [n] atomic numbers */
    double *frac;               /* [n*3] fractional coordinates */
    double *cart;               /* [n*3] Cartesian coordinates, Å */
} nesf_structure;

/* Lattice geometry. */
int nesf_lattice_from_params(const nesf_cellpar *p, nesf_lattice *out, nesf_error *err);
void nesf_lattice_params(const nesf_lattice *l, nesf_cellpar *out);
double nesf_lattice_volume(const nesf_lattice *l);
/* Length of the lattice's shortest nonzero vector (Å), whatever the basis
 * (LLL, then a small search); 0 for a singular or non-finite lattice.
 * The invariant measure of a degenerate cell: a flat or needle-like cell
 * of tiny volume always has a short vector (Minkowski), and every cell
 * with a short vector puts an atom next to its own image. */
double nesf_lattice_shortest(const nesf_lattice *l);
/* The shortest distance (Å) between two sites of s, periodic images
 * included (a site and its own image: nesf_lattice_shortest); INFINITY
 * for a structure of no sites. */
double nesf_structure_min_distance(const nesf_structure *s);
/* LLL reduction (delta 0.75) of the lattice rows in place; a singular or
 * non-finite lattice is left as it is. */
void nesf_lattice_lll(nesf_lattice *l);
/* Returns NESF_ERR_INVALID for a singular (or nearly) lattice. */
int nesf_lattice_inverse(const nesf_lattice *l, double inv[3][3], nesf_error *err);
void nesf_lattice_frac_to_cart(const nesf_lattice *l, const double f[3], double c[3]);

/* Lifetime.  new() returns NULL on allocation failure. */
nesf_structure *nesf_structure_new(int capacity);
void nesf_structure_free(nesf_structure *s);
nesf_structure *nesf_structure_copy(const nesf_structure *s);
/* Frees list[0..n-1] and the list itself (the arrays readers return). */
void nesf_structure_list_free(nesf_structure **list, int n);
int nesf_structure_reserve(nesf_structure *s, int capacity);

/* Appends a site; the other coordinate set is derived from the lattice,
 * so set the lattice first.  add_site_cart needs an invertible lattice. */
int nesf_structure_add_site(nesf_structure *s, int z, const double frac[3], nesf_error *err);
int nesf_structure_add_site_cart(nesf_structure *s, int z, const double cart[3], nesf_error *err);

/* Recomputes cart from frac (after changing the lattice or frac). */
void nesf_structure_update_cart(nesf_structure *s);
/* Wraps frac into [0, 1) and updates cart. */
void nesf_structure_wrap(nesf_structure *s);

/* Index of the atom nearest to the Cartesian point p (non-periodic; ties:
 * lower index), -1 for no atoms; its squared distance into *d2 and that of
 * the second-nearest atom (INFINITY if none) into *d2_next, if given. */
int nesf_structure_nearest(const nesf_structure *s, const double p[3], double *d2, double *d2_next);

/* Re-expresses the structure in the datasets' orientation (a along +x, b
 * in the xy-plane): the lattice is rebuilt from its parameters and cart
 * recomputed from frac, a pure rotation that leaves frac untouched.  The
 * network's fields are not rotation invariant, so anything fed to it goes
 * through here. */
int nesf_structure_canonicalize(nesf_structure *s, nesf_error *err);

/* Bounds for anything that came from outside: far beyond any crystal,
 * small enough that no geometry computed from them overflows. */
#define NESF_MAX_CELL_LENGTH 1e4  /* Å, length of a cell vector */
#define NESF_MAX_FRAC 1e6         /* |fractional coordinate| */

/* Checks that every number is finite, Z in 1..118, the cell has positive
 * volume and cell vectors and coordinates stay within the bounds above:
 * the gate for anything that came from outside. */
int nesf_structure_validate(const nesf_structure *s, nesf_error *err);

/* Reduced formula in pymatgen's style (elements ordered by
 * electronegativity, counts divided by their gcd, 1 omitted): "ZnS",
 * "BaTiO3".  Writes "" for an empty structure. */
void nesf_structure_formula(const nesf_structure *s, char *buf, int size);

/* Space group through spglib with tolerance symprec (Å); writes the
 * international symbol (e.g. "Fm-3m") and returns its number (1..230), or
 * 0 (symbol "") when spglib finds none or the cell is not one spglib may
 * be shown: invalid (nesf_structure_validate), empty, or with a lattice
 * vector shorter than max(0.5 Å, 2 symprec) (nesf_lattice_shortest): such
 * degenerate cells crash it. */
int nesf_structure_spacegroup(const nesf_structure *s, double symprec, char *symbol, int size);

#endif

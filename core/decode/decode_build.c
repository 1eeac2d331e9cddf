/* decode_build.c - the output structures of both modes: the predicted
 * cell (repaired when repair_lattice asks), the atoms, the validation
 * every structure from outside passes. */
#include "decode_internal.h"

#include <math.h>
#include <stdlib.h>

/* Smallest cell edge and flattest cell (volume / abc) a repair accepts. */
#define REPAIR_MIN_LENGTH 0.5
#define REPAIR_MIN_FLATNESS 0.05

static int sane_cell(const nesf_cellpar *p, nesf_lattice *lat)
{
    return nesf_lattice_from_params(p, lat, NULL) == NESF_OK &&
           nesf_lattice_volume(lat) >= REPAIR_MIN_FLATNESS * p->a * p->b * p->c;
}

/* The nearest sane cell to p: lengths floored, angles brought into
 * [10, 170] degrees and then pulled towards 90 until the cell has volume
 * (all-90 always does).  Returns 0 when p had to change. */
static int repair_cell(nesf_cellpar *p, nesf_lattice *lat)
{
    if (sane_cell(p, lat)) return 1;
    double *len[3] = {&p->a, &p->b, &p->c}, *ang[3] = {&p->alpha, &p->beta, &p->gamma};
    double a0[3];
    for (int k = 0; k < 3; k++) {
        if (*len[k] < REPAIR_MIN_LENGTH) *len[k] = REPAIR_MIN_LENGTH;
        a0[k] = fmin(fmax(*ang[k], 10.0), 170.0);
    }
    for (int step = 20; step >= 0; step--) {
        for (int k = 0; k < 3; k++) *ang[k] = 90.0 + (a0[k] - 90.0) * step / 20.0;
        if (sane_cell(p, lat)) break;
    }
    return 0;
}

/* Builds a structure from its predicted cell and atoms; NESF_ERR_INVALID
 * for a cell that is not one (or non-finite, even with repair) and for a
 * result that nesf_structure_validate refuses. */
static int build_structure(const float len[3], const float ang[3], int na, const float *atoms,
                           const int *cls, const int *species_z, int repair, int *repaired,
                           nesf_structure **out, nesf_error *err)
{
    const double deg = 180.0 / M_PI;
    nesf_cellpar p = {len[0], len[1], len[2], ang[0] * deg, ang[1] * deg, ang[2] * deg};
    nesf_lattice lat;
    double inv[3][3];
    int finite = isfinite(p.a) && isfinite(p.b) && isfinite(p.c) && isfinite(p.alpha) &&
                 isfinite(p.beta) && isfinite(p.gamma);
    *repaired = 0;
    if (finite && repair) *repaired = !repair_cell(&p, &lat);
    if (!finite || (!repair && nesf_lattice_from_params(&p, &lat, err)) ||
        nesf_lattice_inverse(&lat, inv, err)) {
        if (!finite) nesf_fail(err, NESF_ERR_INVALID, "non-finite cell parameters");
        nesf_error_prefix(err, "predicted lattice (%.4g %.4g %.4g Å, %.4g %.4g %.4g°) is degenerate: ",
                          len[0], len[1], len[2], ang[0] * deg, ang[1] * deg, ang[2] * deg);
        return NESF_ERR_INVALID;
    }
    nesf_structure *s = nesf_structure_new(na);
    if (!s) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory building a structure");
    s->lat = lat;
    for (int a = 0; a < na; a++) {
        double c[3] = {atoms[3 * a], atoms[3 * a + 1], atoms[3 * a + 2]};
        int rc = nesf_structure_add_site_cart(s, species_z[cls[a]], c, err);
        if (rc) {
            nesf_structure_free(s);
            return rc;
        }
    }
    /* the gate every structure from outside passes: an absurd prediction
     * (a 1e36 Å cell from an extreme latent) is that structure's error */
    if (nesf_structure_validate(s, err)) {
        nesf_structure_free(s);
        nesf_error_prefix(err, "predicted structure (%.4g %.4g %.4g Å, %.4g %.4g %.4g°) is no "
                          "crystal: ", len[0], len[1], len[2], ang[0] * deg, ang[1] * deg,
                          ang[2] * deg);
        return NESF_ERR_INVALID;
    }
    *out = s;
    return NESF_OK;
}

int nesf__build_batch(const nesf_field *f, const nesf_decode_opts *o, int b0, int S,
                      const float *len, const float *ang, const int *aoff, const float *atoms,
                      const int *cls, nesf_structure **out, nesf_error *item_err, int *repaired,
                      nesf_error *err)
{
    for (int s = 0; s < S; s++) {
        nesf_error e;
        nesf_error_clear(&e);
        int rep;
        int rc = build_structure(len + 3 * s, ang + 3 * s, aoff[s + 1] - aoff[s],
                                 atoms + (size_t)aoff[s] * 3, cls + aoff[s], f->species_z,
                                 o->repair_lattice, &rep, &out[b0 + s], &e);
        *repaired += rep;
        if (rc == NESF_ERR_INVALID && item_err) {
            item_err[b0 + s] = e;
            continue;
        }
        if (rc) {
            if (err) *err = e;
            nesf_error_prefix(err, "structure %d: ", b0 + s);
            return rc;
        }
    }
    return NESF_OK;
}

int nesf__sane_cell(const nesf_cellpar *p, nesf_lattice *lat) { return sane_cell(p, lat); }

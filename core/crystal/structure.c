#include "structure.h"
#include "elements.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define DEG (M_PI / 180.0)

/* exact for right angles, so orthogonal cells get exact zeros */
static double cos_deg(double a) { return a == 90.0 ? 0.0 : cos(a * DEG); }

int nesf_lattice_from_params(const nesf_cellpar *p, nesf_lattice *out, nesf_error *err)
{
    double ca = cos_deg(p->alpha), cb = cos_deg(p->beta);
    double cg = cos_deg(p->gamma), sg = p->gamma == 90.0 ? 1.0 : sin(p->gamma * DEG);
    if (!(p->a > 0 && p->b > 0 && p->c > 0) || !(fabs(sg) > 1e-8))
        return nesf_fail(err, NESF_ERR_INVALID, "invalid cell parameters");
    double cx = cb, cy = (ca - cb * cg) / sg;
    double cz2 = 1.0 - cx * cx - cy * cy;
    if (!(cz2 > 1e-12))
        return nesf_fail(err, NESF_ERR_INVALID,
                         "cell angles %.3f %.3f %.3f do not form a cell",
                         p->alpha, p->beta, p->gamma);
    memset(out, 0, sizeof *out);
    out->m[0][0] = p->a;
    out->m[1][0] = p->b * cg;
    out->m[1][1] = p->b * sg;
    out->m[2][0] = p->c * cx;
    out->m[2][1] = p->c * cy;
    out->m[2][2] = p->c * sqrt(cz2);
    return NESF_OK;
}

static double norm3(const double v[3]) { return sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]); }

static double angle_deg(const double u[3], const double v[3])
{
    double c = (u[0] * v[0] + u[1] * v[1] + u[2] * v[2]) / (norm3(u) * norm3(v));
    if (c > 1) c = 1;
    if (c < -1) c = -1;
    return acos(c) / DEG;
}

void nesf_lattice_params(const nesf_lattice *l, nesf_cellpar *out)
{
    out->a = norm3(l->m[0]);
    out->b = norm3(l->m[1]);
    out->c = norm3(l->m[2]);
    out->alpha = angle_deg(l->m[1], l->m[2]);
    out->beta = angle_deg(l->m[0], l->m[2]);
    out->gamma = angle_deg(l->m[0], l->m[1]);
}

static double det3(const double m[3][3])
{
    return m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) -
           m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0]) +
           m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
}

double nesf_lattice_volume(const nesf_lattice *l) { return fabs(det3(l->m)); }

static double dot3(const double u[3], const double v[3])
{
    return u[0] * v[0] + u[1] * v[1] + u[2] * v[2];
}

/* Gram-Schmidt of b: g[i] the orthogonalised vectors, mu the coefficients.
 * 0 when a vector is (numerically) dependent on the ones before it. */
static int gram_schmidt(const double b[3][3], double g[3][3], double mu[3][3])
{
    for (int i = 0; i < 3; i++) {
        memcpy(g[i], b[i], sizeof g[i]);
        for (int j = 0; j < i; j++) {
            mu[i][j] = dot3(b[i], g[j]) / dot3(g[j], g[j]);
            for (int k = 0; k < 3; k++) g[i][k] -= mu[i][j] * g[j][k];
        }
        double n = dot3(g[i], g[i]);
        if (!(n > 1e-24 * dot3(b[i], b[i])) || !isfinite(n)) return 0;
    }
    return 1;
}

/* LLL reduction of the rows of b with Lovász constant delta, in place; 0
 * for a singular or non-finite basis.  Bounded, so that no input can make
 * it loop.  The one reduction of the library: the strong one (0.99) for
 * the shortest vector, the classic one (0.75) for matching (match.c). */
static int lll_reduce(double b[3][3], double delta)
{
    double g[3][3], mu[3][3];
    int k = 1;
    for (int step = 0; k < 3; step++) {
        if (step > 10000 || !gram_schmidt(b, g, mu)) return 0;
        /* size-reduce b[k] against b[k-1] .. b[0], once each, nearest
         * integer with halves away from zero */
        for (int j = k - 1; j >= 0; j--) {
            double q = round(mu[k][j]);
            if (q == 0) continue;
            for (int c = 0; c < 3; c++) b[k][c] -= q * b[j][c];
            if (!gram_schmidt(b, g, mu)) return 0;
        }
        if (dot3(g[k], g[k]) >= (delta - mu[k][k - 1] * mu[k][k - 1]) * dot3(g[k - 1], g[k - 1])) {
            k++;
        } else {
            double t[3];
            memcpy(t, b[k], sizeof t);
            memcpy(b[k], b[k - 1], sizeof t);
            memcpy(b[k - 1], t, sizeof t);
            k = k > 1 ? k - 1 : 1;
        }
    }
    return gram_schmidt(b, g, mu);
}

void nesf_lattice_lll(nesf_lattice *l)
{
    double b[3][3];
    memcpy(b, l->m, sizeof b);
    if (lll_reduce(b, 0.75)) memcpy(l->m, b, sizeof b);
}

double nesf_lattice_shortest(const nesf_lattice *l)
{
    double b[3][3];
    memcpy(b, l->m, sizeof b);
    if (!lll_reduce(b, 0.99)) return 0;
    /* in an LLL basis of three vectors the shortest vector has small
     * coefficients: a search over [-2, 2]^3 finds it */
    double best = INFINITY;
    for (int i = -2; i <= 2; i++)
        for (int j = -2; j <= 2; j++)
            for (int k = -2; k <= 2; k++) {
                if (!i && !j && !k) continue;
                double v[3];
                for (int c = 0; c < 3; c++) v[c] = i * b[0][c] + j * b[1][c] + k * b[2][c];
                best = fmin(best, dot3(v, v));
            }
    return isfinite(best) ? sqrt(best) : 0;
}

/* Images of the wrapped difference within one cell either way: enough
 * for the cells of crystal data, whose angles are far from degenerate. */
double nesf_structure_min_distance(const nesf_structure *s)
{
    double best = s->n > 0 ? nesf_lattice_shortest(&s->lat) : INFINITY;
    if (s->n > 0 && best <= 0) best = INFINITY;
    for (int a = 0; a < s->n; a++)
        for (int b = a + 1; b < s->n; b++) {
            double w[3];
            for (int c = 0; c < 3; c++) {
                w[c] = s->frac[3 * b + c] - s->frac[3 * a + c];
                w[c] -= floor(w[c] + 0.5);
            }
            for (int i = -1; i <= 1; i++)
                for (int j = -1; j <= 1; j++)
                    for (int k = -1; k <= 1; k++) {
                        const double f[3] = {w[0] + i, w[1] + j, w[2] + k};
                        double v[3];
                        nesf_lattice_frac_to_cart(&s->lat, f, v);
                        best = fmin(best, sqrt(dot3(v, v)));
                    }
        }
    return best;
}

int nesf_lattice_inverse(const nesf_lattice *l, double inv[3][3], nesf_error *err)
{
    const double (*m)[3] = l->m;
    double d = det3(l->m);
    if (!isfinite(d) || fabs(d) < 1e-9)
        return nesf_fail(err, NESF_ERR_INVALID, "lattice is singular (volume %g)", fabs(d));
    inv[0][0] = (m[1][1] * m[2][2] - m[1][2] * m[2][1]) / d;
    inv[0][1] = (m[0][2] * m[2][1] - m[0][1] * m[2][2]) / d;
    inv[0][2] = (m[0][1] * m[1][2] - m[0][2] * m[1][1]) / d;
    inv[1][0] = (m[1][2] * m[2][0] - m[1][0] * m[2][2]) / d;
    inv[1][1] = (m[0][0] * m[2][2] - m[0][2] * m[2][0]) / d;
    inv[1][2] = (m[0][2] * m[1][0] - m[0][0] * m[1][2]) / d;
    inv[2][0] = (m[1][0] * m[2][1] - m[1][1] * m[2][0]) / d;
    inv[2][1] = (m[0][1] * m[2][0] - m[0][0] * m[2][1]) / d;
    inv[2][2] = (m[0][0] * m[1][1] - m[0][1] * m[1][0]) / d;
    return NESF_OK;
}

void nesf_lattice_frac_to_cart(const nesf_lattice *l, const double f[3], double c[3])
{
    for (int k = 0; k < 3; k++)
        c[k] = f[0] * l->m[0][k] + f[1] * l->m[1][k] + f[2] * l->m[2][k];
}

nesf_structure *nesf_structure_new(int capacity)
{
    nesf_structure *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    if (nesf_structure_reserve(s, capacity > 0 ? capacity : 4) != NESF_OK) {
        nesf_structure_free(s);
        return NULL;
    }
    return s;
}

void nesf_structure_free(nesf_structure *s)
{
    if (!s) return;
    free(s->z);
    free(s->frac);
    free(s->cart);
    free(s);
}

void nesf_structure_list_free(nesf_structure **list, int n)
{
    if (!list) return;
    for (int i = 0; i < n; i++) nesf_structure_free(list[i]);
    free(list);
}

int nesf_structure_reserve(nesf_structure *s, int capacity)
{
    if (capacity <= s->cap) return NESF_OK;
    int *z = realloc(s->z, (size_t)capacity * sizeof *z);
    if (!z) return NESF_ERR_NOMEM;
    s->z = z;
    double *f = realloc(s->frac, (size_t)capacity * 3 * sizeof *f);
    if (!f) return NESF_ERR_NOMEM;
    s->frac = f;
    double *c = realloc(s->cart, (size_t)capacity * 3 * sizeof *c);
    if (!c) return NESF_ERR_NOMEM;
    s->cart = c;
    s->cap = capacity;
    return NESF_OK;
}

nesf_structure *nesf_structure_copy(const nesf_structure *s)
{
    nesf_structure *c = nesf_structure_new(s->n);
    if (!c) return NULL;
    memcpy(c->id, s->id, sizeof c->id);
    c->lat = s->lat;
    c->n = s->n;
    if (s->n) {
        memcpy(c->z, s->z, (size_t)s->n * sizeof *s->z);
        memcpy(c->frac, s->frac, (size_t)s->n * 3 * sizeof *s->frac);
        memcpy(c->cart, s->cart, (size_t)s->n * 3 * sizeof *s->cart);
    }
    return c;
}

static int grow(nesf_structure *s, nesf_error *err)
{
    if (s->n < s->cap) return NESF_OK;
    if (nesf_structure_reserve(s, s->cap ? 2 * s->cap : 4) != NESF_OK)
        return nesf_fail(err, NESF_ERR_NOMEM, "out of memory adding a site");
    return NESF_OK;
}

int nesf_structure_add_site(nesf_structure *s, int z, const double frac[3], nesf_error *err)
{
    if (grow(s, err)) return NESF_ERR_NOMEM;
    s->z[s->n] = z;
    memcpy(s->frac + 3 * s->n, frac, 3 * sizeof *frac);
    nesf_lattice_frac_to_cart(&s->lat, frac, s->cart + 3 * s->n);
    s->n++;
    return NESF_OK;
}

int nesf_structure_add_site_cart(nesf_structure *s, int z, const double cart[3], nesf_error *err)
{
    double inv[3][3];
    int rc = nesf_lattice_inverse(&s->lat, inv, err);
    if (rc) return rc;
    if (grow(s, err)) return NESF_ERR_NOMEM;
    double *f = s->frac + 3 * s->n;
    for (int k = 0; k < 3; k++)
        f[k] = cart[0] * inv[0][k] + cart[1] * inv[1][k] + cart[2] * inv[2][k];
    s->z[s->n] = z;
    memcpy(s->cart + 3 * s->n, cart, 3 * sizeof *cart);
    s->n++;
    return NESF_OK;
}

void nesf_structure_update_cart(nesf_structure *s)
{
    for (int i = 0; i < s->n; i++)
        nesf_lattice_frac_to_cart(&s->lat, s->frac + 3 * i, s->cart + 3 * i);
}

void nesf_structure_wrap(nesf_structure *s)
{
    for (int i = 0; i < 3 * s->n; i++) {
        double f = s->frac[i] - floor(s->frac[i]);
        /* floor of -1e-17 leaves 1.0: fold it back to 0 */
        s->frac[i] = f >= 1.0 ? 0.0 : f;
    }
    nesf_structure_update_cart(s);
}

int nesf_structure_canonicalize(nesf_structure *s, nesf_error *err)
{
    nesf_cellpar p;
    nesf_lattice_params(&s->lat, &p);
    int rc = nesf_lattice_from_params(&p, &s->lat, err);
    if (rc) return rc;
    nesf_structure_update_cart(s);
    return NESF_OK;
}

int nesf_structure_validate(const nesf_structure *s, nesf_error *err)
{
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++)
            if (!isfinite(s->lat.m[i][j]))
                return nesf_fail(err, NESF_ERR_INVALID, "lattice has a non-finite entry");
    for (int i = 0; i < 3; i++) {
        const double *r = s->lat.m[i];
        double len = hypot(hypot(r[0], r[1]), r[2]);
        if (len > NESF_MAX_CELL_LENGTH)
            return nesf_fail(err, NESF_ERR_INVALID, "cell vector %d is %g Å long (at most %g)",
                             i + 1, len, NESF_MAX_CELL_LENGTH);
    }
    double v = nesf_lattice_volume(&s->lat);
    if (!(v > 1e-6))
        return nesf_fail(err, NESF_ERR_INVALID, "cell volume %g is not positive", v);
    for (int i = 0; i < s->n; i++) {
        if (s->z[i] < 1 || s->z[i] > NESF_MAX_Z)
            return nesf_fail(err, NESF_ERR_INVALID, "site %d: atomic number %d out of range", i + 1, s->z[i]);
        for (int k = 0; k < 3; k++)
            if (!isfinite(s->frac[3 * i + k]) || !isfinite(s->cart[3 * i + k]))
                return nesf_fail(err, NESF_ERR_INVALID, "site %d: non-finite coordinate", i + 1);
            else if (fabs(s->frac[3 * i + k]) > NESF_MAX_FRAC)
                return nesf_fail(err, NESF_ERR_INVALID,
                                 "site %d: fractional coordinate %g out of range (at most %g)",
                                 i + 1, s->frac[3 * i + k], NESF_MAX_FRAC);
    }
    return NESF_OK;
}

int nesf_structure_nearest(const nesf_structure *s, const double p[3], double *d2, double *d2_next)
{
    int best = -1;
    double bd = INFINITY, next = INFINITY;
    for (int i = 0; i < s->n; i++) {
        const double *c = s->cart + 3 * i;
        double dx = c[0] - p[0], dy = c[1] - p[1], dz = c[2] - p[2];
        double d = dx * dx + dy * dy + dz * dz;
        if (d < bd) {
            next = bd;
            bd = d;
            best = i;
        } else if (d < next) {
            next = d;
        }
    }
    if (d2) *d2 = bd;
    if (d2_next) *d2_next = next;
    return best;
}

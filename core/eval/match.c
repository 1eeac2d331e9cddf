/* match.c - StructureMatcher-like comparison of two structures.  See
 * match.h for the algorithm. */
#include "match.h"
#include "elements.h"
#include "symmetry.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PRIMITIVE_TOL 0.25 /* Å per cell axis, pymatgen's get_primitive_structure tolerance */

void nesf_match_opts_default(nesf_match_opts *o)
{
    o->ltol = 0.3;
    o->stol = 0.5;
    o->angle_tol = 10;
}

/* ---- assignment (Hungarian algorithm, shortest augmenting paths) ---- */

double nesf_assign(int n, const double *cost, int *col)
{
    if (n <= 0) return 0;
    /* potentials u (rows), v (columns); p[j]: row matched to column j (1-based) */
    double *u = calloc((size_t)n + 1, sizeof *u), *v = calloc((size_t)n + 1, sizeof *v);
    double *minv = malloc(((size_t)n + 1) * sizeof *minv);
    int *p = calloc((size_t)n + 1, sizeof *p), *way = calloc((size_t)n + 1, sizeof *way);
    char *used = malloc((size_t)n + 1);
    double total = NAN;
    if (!u || !v || !minv || !p || !way || !used) goto out;
    const double BIG = 1e300; /* forbidden pairs: finite, so potentials stay finite */
    for (int i = 1; i <= n; i++) {
        p[0] = i;
        int j0 = 0;
        for (int j = 0; j <= n; j++) minv[j] = INFINITY, used[j] = 0;
        do {
            used[j0] = 1;
            int i0 = p[j0], j1 = 0;
            double delta = INFINITY;
            for (int j = 1; j <= n; j++) {
                if (used[j]) continue;
                double c = cost[(size_t)(i0 - 1) * n + (j - 1)];
                double cur = (isfinite(c) ? c : BIG) - u[i0] - v[j];
                if (cur < minv[j]) minv[j] = cur, way[j] = j0;
                if (minv[j] < delta) delta = minv[j], j1 = j;
            }
            for (int j = 0; j <= n; j++)
                if (used[j]) u[p[j]] += delta, v[j] -= delta;
                else minv[j] -= delta;
            j0 = j1;
        } while (p[j0] != 0);
        do {
            int j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
        } while (j0);
    }
    total = 0;
    for (int j = 1; j <= n; j++) {
        col[p[j] - 1] = j - 1;
        double c = cost[(size_t)(p[j] - 1) * n + (j - 1)];
        total += isfinite(c) ? c : INFINITY;
    }
out:
    free(u), free(v), free(minv), free(p), free(way), free(used);
    return total;
}

/* ---- lattice helpers ---- */

static double dot3(const double *a, const double *b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }

void nesf_lattice_lll(nesf_lattice *l)
{
    double (*b)[3] = l->m, bs[3][3], mu[3][3], B[3];
    const double delta = 0.75;
    int k = 1, guard = 0;
    while (k < 3 && guard++ < 1000) {
        /* Gram-Schmidt of the current basis */
        for (int i = 0; i < 3; i++) {
            memcpy(bs[i], b[i], sizeof bs[i]);
            for (int j = 0; j < i; j++) {
                mu[i][j] = dot3(b[i], bs[j]) / B[j];
                for (int c = 0; c < 3; c++) bs[i][c] -= mu[i][j] * bs[j][c];
            }
            B[i] = dot3(bs[i], bs[i]);
        }
        for (int j = k - 1; j >= 0; j--) {
            double q = round(dot3(b[k], bs[j]) / B[j]);
            if (q == 0) continue;
            for (int c = 0; c < 3; c++) b[k][c] -= q * b[j][c];
            for (int i = 0; i < 3; i++) { /* refresh mu of row k */
                memcpy(bs[i], b[i], sizeof bs[i]);
                for (int jj = 0; jj < i; jj++) {
                    mu[i][jj] = dot3(b[i], bs[jj]) / B[jj];
                    for (int c = 0; c < 3; c++) bs[i][c] -= mu[i][jj] * bs[jj][c];
                }
                B[i] = dot3(bs[i], bs[i]);
            }
        }
        if (B[k] >= (delta - mu[k][k - 1] * mu[k][k - 1]) * B[k - 1]) {
            k++;
        } else {
            double t[3];
            memcpy(t, b[k], sizeof t);
            memcpy(b[k], b[k - 1], sizeof t);
            memcpy(b[k - 1], t, sizeof t);
            k = k > 1 ? k - 1 : 1;
        }
    }
}

/* Lattice from parameters in pymatgen's orientation does not matter for
 * distances; the datasets' orientation is used. */
static void average_lattice(const nesf_lattice *a, const nesf_lattice *b, nesf_lattice *out)
{
    nesf_cellpar pa, pb;
    nesf_lattice_params(a, &pa);
    nesf_lattice_params(b, &pb);
    nesf_cellpar p = {(pa.a + pb.a) / 2, (pa.b + pb.b) / 2, (pa.c + pb.c) / 2,
                      (pa.alpha + pb.alpha) / 2, (pa.beta + pb.beta) / 2, (pa.gamma + pb.gamma) / 2};
    if (nesf_lattice_from_params(&p, out, NULL)) *out = *b;
}

static double angle_deg(const double *u, const double *w)
{
    double x = dot3(u, w) / sqrt(dot3(u, u) * dot3(w, w));
    return acos(x > 1 ? 1 : x < -1 ? -1 : x) * 180.0 / M_PI;
}

/* ---- primitive cells (pymatgen's get_primitive_structure, tolerance in Å
 * per cell axis) ---- */

/* |d_k - round(d_k)| < tol_k for every axis. */
static int frac_close(const double *a, const double *b, const double *tol)
{
    for (int k = 0; k < 3; k++) {
        double d = a[k] - b[k];
        if (fabs(d - round(d)) >= tol[k]) return 0;
    }
    return 1;
}

static void axis_tol(const nesf_lattice *l, double tol, double out[3])
{
    for (int k = 0; k < 3; k++) out[k] = tol / sqrt(dot3(l->m[k], l->m[k]));
}

/* Does translation t map every site within tol (fractional, per axis)
 * onto a site of its species? */
static int is_translation(const nesf_structure *s, const double *t, const double *tol)
{
    for (int i = 0; i < s->n; i++) {
        double p[3] = {s->frac[3 * i] + t[0], s->frac[3 * i + 1] + t[1], s->frac[3 * i + 2] + t[2]};
        int ok = 0;
        for (int k = 0; k < s->n && !ok; k++) ok = s->z[k] == s->z[i] && frac_close(p, s->frac + 3 * k, tol);
        if (!ok) return 0;
    }
    return 1;
}

static double det_rows(const double a[3], const double b[3], const double c[3])
{
    return a[0] * (b[1] * c[2] - b[2] * c[1]) - a[1] * (b[0] * c[2] - b[2] * c[0]) +
           a[2] * (b[0] * c[1] - b[1] * c[0]);
}

/* The sites of s in the cell F·L (F: rows, fractional in s's cell) grouped
 * into orbits of m sites each, merged at their mean; NULL when they do not
 * group cleanly. */
static nesf_structure *fold(const nesf_structure *s, const double F[3][3], int m, double tol)
{
    nesf_structure *t = nesf_structure_new(s->n / m);
    double Finv[3][3], ft[3];
    nesf_lattice Fl;
    memcpy(Fl.m, F, sizeof Fl.m);
    if (!t || nesf_lattice_inverse(&Fl, Finv, NULL)) {
        nesf_structure_free(t);
        return NULL;
    }
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < 3; k++)
            t->lat.m[i][k] = F[i][0] * s->lat.m[0][k] + F[i][1] * s->lat.m[1][k] + F[i][2] * s->lat.m[2][k];
    axis_tol(&t->lat, tol, ft);
    double *g = malloc((size_t)s->n * 3 * sizeof *g);
    char *used = calloc((size_t)s->n, 1);
    int ok = g && used;
    for (int i = 0; ok && i < s->n; i++)
        for (int k = 0; k < 3; k++) {
            const double *f = s->frac + 3 * i;
            double v = f[0] * Finv[0][k] + f[1] * Finv[1][k] + f[2] * Finv[2][k];
            g[3 * i + k] = v - floor(v);
        }
    for (int i = 0; ok && i < s->n; i++) {
        if (used[i]) continue;
        double mean[3] = {0, 0, 0};
        int size = 0;
        for (int k = i; k < s->n; k++) {
            if (used[k] || s->z[k] != s->z[i] || !frac_close(g + 3 * k, g + 3 * i, ft)) continue;
            used[k] = 1;
            size++;
            for (int c = 0; c < 3; c++) {
                double d = g[3 * k + c] - g[3 * i + c];
                mean[c] += d - round(d);
            }
        }
        double p[3];
        for (int c = 0; c < 3; c++) p[c] = g[3 * i + c] + mean[c] / size;
        ok = size == m && nesf_structure_add_site(t, s->z[i], p, NULL) == NESF_OK;
    }
    free(g);
    free(used);
    if (!ok || t->n != s->n / m) {
        nesf_structure_free(t);
        return NULL;
    }
    nesf_structure_wrap(t);
    return t;
}

/* One reduction step: the pure translations found from the rarest
 * species' sites, and the smallest cell they span with the lattice.  NULL
 * when s has no smaller cell (within tol). */
static nesf_structure *primitive_step(const nesf_structure *s, double tol)
{
    int best = -1, anchor = 0, cnt = 0;
    for (int i = 0; i < s->n; i++) {
        int c = 0;
        for (int k = 0; k < s->n; k++) c += s->z[k] == s->z[i];
        if (best < 0 || c < best) best = c, anchor = i;
    }
    double st[3], (*vec)[3] = malloc(((size_t)best + 3) * sizeof *vec);
    if (!vec) return NULL;
    axis_tol(&s->lat, 2 * tol, st); /* both ends are approximate */
    for (int k = 0; k < 3; k++)
        for (int c = 0; c < 3; c++) vec[cnt][c] = c == k, cnt += c == 2;
    for (int j = 0; j < s->n; j++) {
        if (j == anchor || s->z[j] != s->z[anchor]) continue;
        double t[3];
        for (int c = 0; c < 3; c++) {
            t[c] = s->frac[3 * j + c] - s->frac[3 * anchor + c];
            t[c] -= round(t[c]);
        }
        if (is_translation(s, t, st)) memcpy(vec[cnt++], t, sizeof t);
    }
    const int m = cnt - 2; /* lattice points per cell */
    /* m·t is a lattice vector of the old cell for each of the m
     * translations: snap the approximate ones onto that grid */
    for (int q = 3; q < cnt; q++)
        for (int c = 0; c < 3; c++) vec[q][c] = round(vec[q][c] * m) / m;
    nesf_structure *out = NULL;
    if (m > 1 && s->n % m == 0) {
        double bestlen = INFINITY, F[3][3];
        for (int a = 0; a < cnt; a++)
            for (int b = a + 1; b < cnt; b++)
                for (int c = b + 1; c < cnt; c++) {
                    if (fabs(fabs(det_rows(vec[a], vec[b], vec[c])) * m - 1) > 1e-3) continue;
                    double len = 0;
                    const double *r[3] = {vec[a], vec[b], vec[c]};
                    for (int q = 0; q < 3; q++) {
                        double v[3];
                        nesf_lattice_frac_to_cart(&s->lat, r[q], v);
                        len += sqrt(dot3(v, v));
                    }
                    if (len < bestlen) {
                        bestlen = len;
                        for (int q = 0; q < 3; q++) memcpy(F[q], r[q], sizeof F[q]);
                    }
                }
        if (isfinite(bestlen)) out = fold(s, F, m, tol);
    }
    free(vec);
    return out;
}

/* s reduced to its primitive cell (repeated steps), Niggli-reduced. */
static int reduce(const nesf_structure *s, nesf_structure **out, nesf_error *err)
{
    nesf_structure *cur = nesf_structure_copy(s), *next;
    if (!cur) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    nesf_structure_wrap(cur);
    for (int guard = 0; guard < 8 && (next = primitive_step(cur, PRIMITIVE_TOL)); guard++) {
        nesf_structure_free(cur);
        cur = next;
    }
    int rc = nesf_structure_niggli(cur, out, err);
    nesf_structure_free(cur);
    return rc;
}

/* ---- the comparison ---- */

typedef struct mctx {
    const nesf_match_opts *o;
    const nesf_structure *s1, *s2; /* reduced, scaled; equal counts */
    int n;
    int t2;                         /* the s2 site translations are anchored on */
    double *f1, *cost;              /* n x 3 fractional s1 in a candidate cell; n x n */
    int *col;
    int cells;                      /* candidate cells tried */
    nesf_match_result *r;
} mctx;

/* Every s2 site within frac_tol (per axis, periodic) of a same-species s1
 * site after translating s2 by t: pymatgen's cheap pre-check. */
static int coarse_fit(const mctx *c, const double t[3], const double tol[3])
{
    for (int i = 0; i < c->n; i++) {
        int found = 0;
        for (int j = 0; j < c->n && !found; j++) {
            if (c->s1->z[j] != c->s2->z[i]) continue;
            found = 1;
            for (int k = 0; k < 3 && found; k++) {
                double d = c->f1[3 * j + k] - (c->s2->frac[3 * i + k] + t[k]);
                found = fabs(d - round(d)) < tol[k];
            }
        }
        if (!found) return 0;
    }
    return 1;
}

/* Shortest periodic vectors from s2 (translated by t) to s1 in the average
 * lattice, the assignment, and the normalised distances after removing the
 * mean displacement.  Returns the largest distance (INFINITY: none). */
static double fine_fit(mctx *c, const double t[3], const nesf_lattice *avg, double norm, double *rms)
{
    const int n = c->n;
    nesf_lattice lll = *avg;
    nesf_lattice_lll(&lll);
    double inv[3][3], (*vec)[3] = malloc((size_t)n * n * sizeof *vec);
    if (!vec || nesf_lattice_inverse(&lll, inv, NULL)) {
        free(vec);
        return INFINITY;
    }
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double *cost = &c->cost[(size_t)i * n + j];
            *cost = INFINITY;
            if (c->s1->z[j] != c->s2->z[i]) continue;
            double df[3], d[3], g[3];
            for (int k = 0; k < 3; k++) df[k] = c->f1[3 * j + k] - c->s2->frac[3 * i + k] - t[k];
            nesf_lattice_frac_to_cart(avg, df, d);
            for (int k = 0; k < 3; k++) g[k] = d[0] * inv[0][k] + d[1] * inv[1][k] + d[2] * inv[2][k];
            for (int k = 0; k < 3; k++) g[k] -= round(g[k]); /* in the LLL cell, then its 27 images */
            for (int a = -1; a <= 1; a++)
                for (int b = -1; b <= 1; b++)
                    for (int e = -1; e <= 1; e++) {
                        double h[3] = {g[0] + a, g[1] + b, g[2] + e}, v[3];
                        for (int k = 0; k < 3; k++)
                            v[k] = h[0] * lll.m[0][k] + h[1] * lll.m[1][k] + h[2] * lll.m[2][k];
                        double d2 = dot3(v, v);
                        if (d2 < *cost) *cost = d2, memcpy(vec[(size_t)i * n + j], v, sizeof v);
                    }
        }
    double total = nesf_assign(n, c->cost, c->col);
    double worst = INFINITY;
    if (isfinite(total)) {
        double mean[3] = {0, 0, 0}, sum2 = 0;
        for (int i = 0; i < n; i++)
            for (int k = 0; k < 3; k++) mean[k] += vec[(size_t)i * n + c->col[i]][k] / n;
        worst = 0;
        for (int i = 0; i < n; i++) {
            const double *v = vec[(size_t)i * n + c->col[i]];
            double d2 = 0;
            for (int k = 0; k < 3; k++) d2 += (v[k] - mean[k]) * (v[k] - mean[k]);
            sum2 += d2 * norm * norm;
            worst = fmax(worst, sqrt(d2) * norm);
        }
        *rms = sqrt(sum2 / n);
    }
    free(vec);
    return worst;
}

/* One candidate cell l of s1 (rows: integer combinations of s1's vectors):
 * every anchored translation. Returns 1 on a match. */
static int try_cell(mctx *c, const nesf_lattice *l)
{
    double inv[3][3];
    if (nesf_lattice_inverse(l, inv, NULL)) return 0;
    for (int j = 0; j < c->n; j++)
        for (int k = 0; k < 3; k++) {
            const double *x = c->s1->cart + 3 * j;
            double f = x[0] * inv[0][k] + x[1] * inv[1][k] + x[2] * inv[2][k];
            c->f1[3 * j + k] = f - floor(f);
        }
    nesf_lattice avg;
    average_lattice(l, &c->s2->lat, &avg);
    double V = fabs(nesf_lattice_volume(&avg)), norm = cbrt(c->n / V), ainv[3][3], tol[3];
    if (nesf_lattice_inverse(&avg, ainv, NULL)) return 0;
    for (int k = 0; k < 3; k++) { /* |reciprocal vector| (with 2π) · stol / (π · norm) */
        double rl = 2 * M_PI * sqrt(ainv[0][k] * ainv[0][k] + ainv[1][k] * ainv[1][k] + ainv[2][k] * ainv[2][k]);
        tol[k] = rl * c->o->stol / (M_PI * norm);
    }
    for (int j = 0; j < c->n; j++) {
        if (c->s1->z[j] != c->s2->z[c->t2]) continue;
        double t[3], rms = NAN;
        for (int k = 0; k < 3; k++) t[k] = c->f1[3 * j + k] - c->s2->frac[3 * c->t2 + k];
        if (!coarse_fit(c, t, tol)) continue;
        double worst = fine_fit(c, t, &avg, norm, &rms);
        c->r->match |= worst < c->o->stol; /* fit(): some mapping within stol */
        /* get_rms_dist(): the smallest RMS of all mappings, below stol */
        if (rms < c->o->stol && !(rms >= c->r->rms)) c->r->rms = rms, c->r->max_dist = worst;
        if (c->r->match && c->r->rms < 1e-5) return 1; /* cannot get better */
    }
    return 0;
}

/* Lattice points of s1 within reach of s2's lengths, then every triple
 * that matches s2's lengths and angles (pymatgen's find_all_mappings). */
static int search_cells(mctx *c)
{
    const nesf_lattice *L1 = &c->s1->lat;
    nesf_cellpar p2;
    nesf_lattice_params(&c->s2->lat, &p2);
    const double len[3] = {p2.a, p2.b, p2.c}, ang[3] = {p2.alpha, p2.beta, p2.gamma}, lt = 1 + c->o->ltol;
    double rmax = fmax(len[0], fmax(len[1], len[2])) * lt, inv[3][3];
    if (nesf_lattice_inverse(L1, inv, NULL)) return 0;
    int nb[3];
    for (int k = 0; k < 3; k++)
        nb[k] = (int)ceil(rmax * sqrt(inv[0][k] * inv[0][k] + inv[1][k] * inv[1][k] + inv[2][k] * inv[2][k]));
    int cap = (2 * nb[0] + 1) * (2 * nb[1] + 1) * (2 * nb[2] + 1), m[3] = {0, 0, 0};
    double (*pt)[3] = malloc((size_t)cap * 3 * sizeof *pt);
    if (!pt) return -1;
    for (int a = -nb[0]; a <= nb[0]; a++)
        for (int b = -nb[1]; b <= nb[1]; b++)
            for (int e = -nb[2]; e <= nb[2]; e++) {
                double v[3];
                for (int k = 0; k < 3; k++) v[k] = a * L1->m[0][k] + b * L1->m[1][k] + e * L1->m[2][k];
                double d = sqrt(dot3(v, v));
                for (int q = 0; q < 3; q++)
                    if (d / len[q] < lt && d / len[q] > 1 / lt) memcpy(pt[q * cap + m[q]++], v, sizeof v);
            }
    int found = 0;
    for (int i = 0; i < m[0] && !found; i++)
        for (int j = 0; j < m[1] && !found; j++) {
            const double *va = pt[i], *vb = pt[cap + j];
            if (fabs(angle_deg(va, vb) - ang[2]) >= c->o->angle_tol) continue;
            for (int k = 0; k < m[2] && !found; k++) {
                const double *vc = pt[2 * cap + k];
                if (fabs(angle_deg(vb, vc) - ang[0]) >= c->o->angle_tol ||
                    fabs(angle_deg(va, vc) - ang[1]) >= c->o->angle_tol)
                    continue;
                nesf_lattice l;
                memcpy(l.m[0], va, sizeof l.m[0]);
                memcpy(l.m[1], vb, sizeof l.m[1]);
                memcpy(l.m[2], vc, sizeof l.m[2]);
                double det = nesf_lattice_volume(&l) / fabs(nesf_lattice_volume(L1));
                if (fabs(fabs(det) - 1) >= 0.5) continue; /* the same number of sites */
                c->cells++;
                found = try_cell(c, &l);
            }
        }
    free(pt);
    return found;
}

/* Reduced formulas equal: the counts per element are proportional. */
static int same_composition(const nesf_structure *a, const nesf_structure *b)
{
    long ca[(NESF_MAX_Z + 1)] = {0}, cb[(NESF_MAX_Z + 1)] = {0};
    for (int i = 0; i < a->n; i++) ca[a->z[i] % (NESF_MAX_Z + 1)]++;
    for (int i = 0; i < b->n; i++) cb[b->z[i] % (NESF_MAX_Z + 1)]++;
    for (int z = 0; z < (NESF_MAX_Z + 1); z++)
        if (ca[z] * b->n != cb[z] * a->n) return 0;
    return 1;
}

/* s scaled by f (lattice and Cartesian positions). */
static void scale(nesf_structure *s, double f)
{
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < 3; k++) s->lat.m[i][k] *= f;
    nesf_structure_update_cart(s);
}

static int match_reduced(nesf_structure *s1, nesf_structure *s2, const nesf_match_opts *o,
                         nesf_match_result *r, nesf_error *err)
{
    /* the same volume, as pymatgen's scale=True */
    double ratio = pow(fabs(nesf_lattice_volume(&s2->lat)) / fabs(nesf_lattice_volume(&s1->lat)), 1.0 / 6);
    scale(s1, ratio);
    scale(s2, 1 / ratio);
    const int n = s1->n;
    mctx c = {.o = o, .s1 = s1, .s2 = s2, .n = n, .r = r};
    int best = -1;
    for (int i = 0; i < n; i++) { /* the s2 site whose species is rarest in s1 */
        int other = 0;
        for (int j = 0; j < n; j++) other += s1->z[j] != s2->z[i];
        if (other > best) best = other, c.t2 = i;
    }
    c.f1 = malloc((size_t)n * 3 * sizeof *c.f1);
    c.cost = malloc((size_t)n * n * sizeof *c.cost);
    c.col = malloc((size_t)n * sizeof *c.col);
    int rc = c.f1 && c.cost && c.col ? NESF_OK : nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    int found = rc ? 0 : search_cells(&c);
    if (found < 0) rc = nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    if (!rc && !r->match)
        snprintf(r->reason, sizeof r->reason, c.cells ? "sites" : "lattice");
    free(c.f1);
    free(c.cost);
    free(c.col);
    return rc;
}

int nesf_structure_match(const nesf_structure *a, const nesf_structure *b, const nesf_match_opts *o,
                         nesf_match_result *r, nesf_error *err)
{
    nesf_match_opts def;
    if (!o) nesf_match_opts_default(&def), o = &def;
    memset(r, 0, sizeof *r);
    r->rms = r->max_dist = NAN;
    int rc;
    if ((rc = nesf_structure_validate(a, err)) || (rc = nesf_structure_validate(b, err))) return rc;
    if (!(o->ltol > 0 && o->stol > 0 && o->angle_tol > 0))
        return nesf_fail(err, NESF_ERR_INVALID, "match tolerances must be positive");
    if (a->n == 0 || b->n == 0 || !same_composition(a, b)) {
        snprintf(r->reason, sizeof r->reason, "composition");
        return NESF_OK;
    }
    nesf_structure *s1 = NULL, *s2 = NULL;
    if ((rc = reduce(a, &s1, err)) || (rc = reduce(b, &s2, err))) {
        nesf_structure_free(s1);
        return rc;
    }
    if (s1->n != s2->n)
        snprintf(r->reason, sizeof r->reason, "atom count");
    else
        rc = match_reduced(s1, s2, o, r, err);
    nesf_structure_free(s1);
    nesf_structure_free(s2);
    return rc;
}

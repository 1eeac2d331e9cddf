#include "sample.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void nesf_sampling_paper(nesf_sampling *s)
{
    *s = (nesf_sampling){
        .global_step = 1.0f, .global_pad = 1.0f, .global_sigma = 0.5f, .global_fraction = 1.0f,
        .local_lo = -0.6f, .local_hi = 0.6f, .local_step = 0.3f, .local_sigma = 0.15f,
        .species_lo = -0.3f, .species_hi = 0.3f, .species_step = 0.1f, .species_sigma = 0.05f,
        .species_fraction = 1.0f, .boundary_width = 0.5f};
}

int nesf_arange_count(double lo, double hi, double step)
{
    if (!(step > 0) || !(hi > lo)) return 0;
    double n = (hi - lo) / step;
    double r = floor(n + 0.5);
    /* treat values within rounding of an integer as that integer */
    if (fabs(n - r) < 1e-6) return r > INT_MAX ? INT_MAX : (int)r;
    return n > INT_MAX ? INT_MAX : (int)ceil(n);
}

typedef struct rng {
    uint64_t s;
    int has_spare;
    double spare;
} rng;

static uint64_t rng_next(rng *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double rng_uniform(rng *r) { return (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0); }

static double rng_normal(rng *r)
{
    if (r->has_spare) {
        r->has_spare = 0;
        return r->spare;
    }
    double u, v, s;
    do {
        u = 2 * rng_uniform(r) - 1;
        v = 2 * rng_uniform(r) - 1;
        s = u * u + v * v;
    } while (s >= 1 || s == 0);
    double k = sqrt(-2 * log(s) / s);
    r->spare = v * k;
    r->has_spare = 1;
    return u * k;
}

/* v = atom i of s - p: the position target */
static void target(const nesf_structure *s, int i, const float p[3], float v[3])
{
    for (int k = 0; k < 3; k++) v[k] = (float)(s->cart[3 * i + k] - p[k]);
}

int nesf_nearest_atom(const nesf_structure *s, const float p[3], float v[3])
{
    const double pd[3] = {p[0], p[1], p[2]};
    int best = nesf_structure_nearest(s, pd, NULL, NULL);
    target(s, best, p, v);
    return best;
}

void nesf_queries_free(nesf_queries *q)
{
    free(q->pos_off);
    free(q->pos_xyz);
    free(q->pos_tgt);
    free(q->spec_off);
    free(q->spec_xyz);
    free(q->spec_lbl);
    memset(q, 0, sizeof *q);
}

/* A point uniform in the unit cell of s. */
static void cell_point(rng *r, const nesf_structure *s, float x[3])
{
    double f[3] = {rng_uniform(r), rng_uniform(r), rng_uniform(r)}, c[3];
    nesf_lattice_frac_to_cart(&s->lat, f, c);
    for (int k = 0; k < 3; k++) x[k] = (float)c[k];
}

#define BOUNDARY_TRIES 32

/* Keeps k of n indices, chosen uniformly (partial Fisher-Yates). */
static void choose(rng *r, int *idx, int n, int k)
{
    for (int i = 0; i < n; i++) idx[i] = i;
    for (int i = 0; i < k; i++) {
        int j = i + (int)(rng_uniform(r) * (n - i));
        int t = idx[i];
        idx[i] = idx[j];
        idx[j] = t;
    }
}

int nesf_queries_sample(const nesf_sampling *sp, const float bbmin[3], const float bbmax[3],
                        nesf_structure *const *s, const int *const *cls, int S, uint64_t seed,
                        nesf_queries *q, nesf_error *err)
{
    memset(q, 0, sizeof *q);
    int gn[3], G = 1;
    for (int k = 0; k < 3; k++) {
        gn[k] = nesf_arange_count(bbmin[k] - sp->global_pad, bbmax[k] + sp->global_pad, sp->global_step);
        G *= gn[k];
    }
    int gk = (int)ceil(G * (double)sp->global_fraction);
    if (gk > G) gk = G;
    const int nl = nesf_arange_count(sp->local_lo, sp->local_hi, sp->local_step);
    const int ns = nesf_arange_count(sp->species_lo, sp->species_hi, sp->species_step);
    const int L3 = nl * nl * nl, S3 = ns * ns * ns;
    int sk = (int)ceil(S3 * (double)sp->species_fraction);
    if (sk > S3) sk = S3;
    size_t P = 0, Q = 0;
    for (int i = 0; i < S; i++) {
        P += (size_t)gk + (size_t)sp->cell_points + (size_t)sp->boundary_points + (size_t)L3 * s[i]->n;
        Q += (size_t)sk * s[i]->n;
    }
    if (P > (size_t)1 << 30 || Q > (size_t)1 << 30)
        return nesf_fail(err, NESF_ERR_INVALID, "sampling would produce too many query points");
    q->S = S;
    q->pos_off = malloc((size_t)(S + 1) * sizeof *q->pos_off);
    q->spec_off = malloc((size_t)(S + 1) * sizeof *q->spec_off);
    q->pos_xyz = malloc((P ? P : 1) * 3 * sizeof *q->pos_xyz);
    q->pos_tgt = malloc((P ? P : 1) * 3 * sizeof *q->pos_tgt);
    q->spec_xyz = malloc((Q ? Q : 1) * 3 * sizeof *q->spec_xyz);
    q->spec_lbl = malloc((Q ? Q : 1) * sizeof *q->spec_lbl);
    int *idx = malloc((size_t)(G > S3 ? G : S3) * sizeof *idx);
    if (!q->pos_off || !q->spec_off || !q->pos_xyz || !q->pos_tgt || !q->spec_xyz || !q->spec_lbl || !idx) {
        free(idx);
        nesf_queries_free(q);
        return nesf_fail(err, NESF_ERR_NOMEM, "out of memory sampling queries");
    }
    rng r = {.s = seed};
    size_t p = 0, qq = 0;
    for (int i = 0; i < S; i++) {
        const nesf_structure *st = s[i];
        q->pos_off[i] = (int)p;
        q->spec_off[i] = (int)qq;
        choose(&r, idx, G, gk);
        for (int j = 0; j < gk; j++, p++) {
            int g = idx[j], gx = g / (gn[1] * gn[2]), gy = (g / gn[2]) % gn[1], gz = g % gn[2];
            float *x = q->pos_xyz + 3 * p;
            x[0] = (float)(bbmin[0] - sp->global_pad + gx * sp->global_step + sp->global_sigma * rng_normal(&r));
            x[1] = (float)(bbmin[1] - sp->global_pad + gy * sp->global_step + sp->global_sigma * rng_normal(&r));
            x[2] = (float)(bbmin[2] - sp->global_pad + gz * sp->global_step + sp->global_sigma * rng_normal(&r));
            nesf_nearest_atom(st, x, q->pos_tgt + 3 * p);
        }
        for (int j = 0; j < sp->cell_points; j++, p++) {
            cell_point(&r, st, q->pos_xyz + 3 * p);
            nesf_nearest_atom(st, q->pos_xyz + 3 * p, q->pos_tgt + 3 * p);
        }
        for (int j = 0; j < sp->boundary_points; j++, p++) {
            float *x = q->pos_xyz + 3 * p;
            int best = 0;
            /* rejection sampling on the gap between the second-nearest and
             * the nearest atom; a cell with one atom has no faces, and after
             * BOUNDARY_TRIES misses the last candidate stays */
            for (int t = 0; t < BOUNDARY_TRIES; t++) {
                cell_point(&r, st, x);
                const double xd[3] = {x[0], x[1], x[2]};
                double d1, d2;
                best = nesf_structure_nearest(st, xd, &d1, &d2);
                if (st->n < 2 || sqrt(d2) - sqrt(d1) < sp->boundary_width) break;
            }
            target(st, best, x, q->pos_tgt + 3 * p);
        }
        for (int a = 0; a < st->n; a++) {
            const double *c = st->cart + 3 * a;
            for (int o = 0; o < L3; o++, p++) {
                int ox = o / (nl * nl), oy = (o / nl) % nl, oz = o % nl;
                float *x = q->pos_xyz + 3 * p;
                x[0] = (float)(c[0] + sp->local_lo + ox * sp->local_step + sp->local_sigma * rng_normal(&r));
                x[1] = (float)(c[1] + sp->local_lo + oy * sp->local_step + sp->local_sigma * rng_normal(&r));
                x[2] = (float)(c[2] + sp->local_lo + oz * sp->local_step + sp->local_sigma * rng_normal(&r));
                nesf_nearest_atom(st, x, q->pos_tgt + 3 * p);
            }
            choose(&r, idx, S3, sk);
            for (int j = 0; j < sk; j++, qq++) {
                int o = idx[j], ox = o / (ns * ns), oy = (o / ns) % ns, oz = o % ns;
                float *x = q->spec_xyz + 3 * qq, v[3];
                x[0] = (float)(c[0] + sp->species_lo + ox * sp->species_step + sp->species_sigma * rng_normal(&r));
                x[1] = (float)(c[1] + sp->species_lo + oy * sp->species_step + sp->species_sigma * rng_normal(&r));
                x[2] = (float)(c[2] + sp->species_lo + oz * sp->species_step + sp->species_sigma * rng_normal(&r));
                q->spec_lbl[qq] = cls[i][nesf_nearest_atom(st, x, v)];
            }
        }
    }
    q->pos_off[S] = (int)p;
    q->spec_off[S] = (int)qq;
    free(idx);
    return NESF_OK;
}

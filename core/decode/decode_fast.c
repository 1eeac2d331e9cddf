/* decode_fast.c - the fast reconstruction (decode.h, mode "fast") as the
 * skeleton's mode hooks (decode_internal.h).
 *
 * The paper's decoder flows ~7000 particles over the dataset's whole box
 * for 64 steps, whatever the structure.  This one spends field
 * evaluations only where they change the answer:
 *  - the lattice heads run first and only the paper's particles within a
 *    margin of the predicted cell are flowed (a wrong cell can cost
 *    particles, never add any the paper would not have); a cell that a
 *    repair would change (repair_lattice: none, flat, non-finite) keeps
 *    them all;
 *  - a particle retires once its step is below fast_tol: it sits at the
 *    field's fixed point, where the paper's remaining steps would leave it;
 *  - particles that land in the same fast_merge cell merge: the field is
 *    deterministic, so they would share the rest of their path; a merged
 *    particle carries the number it stands for (its weight), which NMS
 *    counts towards nms_min_count;
 *  - a structure is done when its last particle has retired (at most
 *    `iterations` steps; what is still moving then is scored as in the
 *    paper, by its last step).
 * Retirement and merging are decided on the host after every step, so
 * that only the surviving particles of the batch go through the next
 * evaluation. */
#include "decode_internal.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- the starting grid ----
 * The paper's grid, keeping the points within fast_margin Å of the
 * predicted cell, measured across its faces.  Every kept particle then starts where
 * one of the paper's starts and follows the same path until it retires,
 * and what is left out flowed in from beyond the margin. */

typedef struct start_grid {
    int gn[3];
    double lo[3];
    long G;
} start_grid;

static void grid_init(start_grid *g, const nesf_field *f, const nesf_decode_opts *o)
{
    g->G = 1;
    for (int k = 0; k < 3; k++) {
        g->lo[k] = (double)f->bbox_min[k] - o->grid_pad;
        g->gn[k] = nesf_arange_count(g->lo[k], (double)f->bbox_max[k] + o->grid_pad, o->grid_step);
        if (g->gn[k] < 1) g->gn[k] = 1;
        g->G *= g->gn[k];
    }
}

/* The points of g near the predicted cell (x slowest, z fastest, as the
 * paper's), written to xyz when given; their count.  A cell that a repair
 * would change (none, flat, non-finite) keeps every point. */
static long grid_points(const start_grid *g, const nesf_decode_opts *o, const float len[3],
                        const float ang[3], float *xyz)
{
    const double deg = 180.0 / M_PI;
    nesf_cellpar p = {len[0], len[1], len[2], ang[0] * deg, ang[1] * deg, ang[2] * deg};
    nesf_lattice lat;
    double inv[3][3], m[3] = {INFINITY, INFINITY, INFINITY};
    if (isfinite(p.a) && isfinite(p.b) && isfinite(p.c) && isfinite(p.alpha) &&
        isfinite(p.beta) && isfinite(p.gamma) && nesf__sane_cell(&p, &lat) &&
        !nesf_lattice_inverse(&lat, inv, NULL)) {
        /* fractional margin: fast_margin over the distance between the
         * faces u_k = 0 and u_k = 1, which is 1 / |column k of inv| */
        for (int k = 0; k < 3; k++)
            m[k] = o->fast_margin *
                   sqrt(inv[0][k] * inv[0][k] + inv[1][k] * inv[1][k] + inv[2][k] * inv[2][k]);
    }
    long cnt = 0;
    for (long i = 0; i < g->G; i++) {
        long ix = i / ((long)g->gn[1] * g->gn[2]), iy = (i / g->gn[2]) % g->gn[1],
             iz = i % g->gn[2];
        float c[3] = {(float)(g->lo[0] + ix * (double)o->grid_step),
                      (float)(g->lo[1] + iy * (double)o->grid_step),
                      (float)(g->lo[2] + iz * (double)o->grid_step)};
        int keep = 1;
        for (int k = 0; k < 3 && keep && isfinite(m[k]); k++) {
            double u = c[0] * inv[0][k] + c[1] * inv[1][k] + c[2] * inv[2][k];
            keep = u >= -m[k] && u <= 1 + m[k];
        }
        if (!keep) continue;
        if (xyz) memcpy(xyz + 3 * cnt, c, sizeof c);
        cnt++;
    }
    return cnt;
}

/* ---- merging ---- */

/* Cell coordinate of v at cell size 1/inv, or -1 out of the key's range
 * (such a far-flung particle is simply never merged). */
static int64_t merge_coord(float v, double inv)
{
    double c = floor(v * inv) + NESF__CELL_BIAS;
    return c >= 0 && c <= NESF__CELL_MAX ? (int64_t)c : -1;
}

/* Merges the n particles (p, w, s) that share a cell of size r, in place:
 * weights add, position and score become weight-averaged.  Keeps the
 * order of each cell's first particle.  Returns the new count. */
static int merge_cells(int n, float *p, float *w, float *s, float r, nesf__cell_entry *keys)
{
    const double inv = 1.0 / r;
    int m = 0;
    for (int i = 0; i < n; i++) {
        int64_t c[3];
        for (int k = 0; k < 3; k++) c[k] = merge_coord(p[3 * i + k], inv);
        if (c[0] < 0 || c[1] < 0 || c[2] < 0) continue; /* far away: never merged */
        keys[m++] = (nesf__cell_entry){nesf__cell_key((uint64_t)c[0], (uint64_t)c[1], (uint64_t)c[2]), i};
    }
    if (m < 2) return n;
    qsort(keys, (size_t)m, sizeof *keys, nesf__cmp_cell);
    /* fold every run into its first (lowest-index) particle; mark the rest */
    for (int a = 0; a < m;) {
        int b = a + 1;
        while (b < m && keys[b].key == keys[a].key) b++;
        if (b - a > 1) {
            int i = keys[a].idx;
            double W = 0, acc[4] = {0, 0, 0, 0};
            for (int e = a; e < b; e++) {
                int j = keys[e].idx;
                double wj = w[j];
                W += wj;
                for (int k = 0; k < 3; k++) acc[k] += wj * p[3 * j + k];
                acc[3] += wj * s[j];
                if (j != i) w[j] = -1;
            }
            for (int k = 0; k < 3; k++) p[3 * i + k] = (float)(acc[k] / W);
            s[i] = (float)(acc[3] / W);
            w[i] = (float)W;
        }
        a = b;
    }
    int out = 0;
    for (int i = 0; i < n; i++) {
        if (w[i] < 0) continue;
        if (out != i) {
            memcpy(p + 3 * out, p + 3 * i, 3 * sizeof *p);
            w[out] = w[i];
            s[out] = s[i];
        }
        out++;
    }
    return out;
}

/* ---- the algorithm ---- */

typedef struct fast_ws {
    nesf_backend *be;
    start_grid g;
    float r2max;               /* score_max² */
    float *p_d, *f_d;          /* backend: active positions, their field */
    float *ap, *af, *aw, *as;  /* host: active positions, field, weights, last scores */
    float *fp, *fw, *fs;       /* host: finished particles, per structure slot */
    float *atoms;              /* host: atoms, per structure slot */
    int *cls;
    nesf__cell_entry *keys;
    int *aoff, *slot, *fcnt, *atoff;
    float *len, *ang;          /* lattice of every structure */
    long *cnt0;                /* starting particles of every structure */
} fast_ws;

static void fast_release(nesf__decode_run *r)
{
    fast_ws *w = r->ws;
    if (!w) return;
    if (w->p_d) w->be->ops->free(w->be, w->p_d);
    if (w->f_d) w->be->ops->free(w->be, w->f_d);
    void *host[] = {w->ap, w->af, w->aw, w->as, w->fp, w->fw, w->fs, w->atoms, w->cls,
                    w->keys, w->aoff, w->slot, w->fcnt, w->atoff, w->len, w->ang,
                    w->cnt0};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
    free(w);
    r->ws = NULL;
}

/* Flows the batch's particles (structures [0, S) of the batch, active
 * rows aoff) until each has retired; finished particles of structure s
 * land in its slot from slot[s] on, fcnt[s] of them. */
static int flow_steps(nesf_field *f, const nesf_decode_opts *o, fast_ws *w, int b0, int S,
                      nesf_decode_stats *st, nesf_error *err)
{
    nesf_backend *be = f->be;
    const size_t fl = sizeof(float);
    const float tol2 = o->fast_tol * o->fast_tol;
    int rc;
    for (int it = 0; it < o->iterations && w->aoff[S] > 0; it++) {
        if ((rc = nesf__cancelled(o, err))) return rc;
        const int Pa = w->aoff[S];
        if (be->ops->upload(be, w->p_d, w->ap, (size_t)Pa * 3 * fl))
            return nesf_fail(err, NESF_ERR_BACKEND, "uploading particles failed");
        if ((rc = f->position(f, b0, S, w->aoff, w->p_d, w->f_d, err))) return rc;
        if (be->ops->download(be, w->af, w->f_d, (size_t)Pa * 3 * fl) || be->ops->sync(be))
            return nesf_fail(err, NESF_ERR_BACKEND, "backend failed during the particle flow");
        st->field_evals += Pa;
        const int last = it == o->iterations - 1;
        /* compact in place: structure s moves to [start, out), which never
         * lies beyond its old rows */
        int out = 0, a1 = w->aoff[0];
        for (int s = 0; s < S; s++) {
            const int a0 = a1, start = out;
            a1 = w->aoff[s + 1];
            if (a1 > a0) st->steps++;
            for (int i = a0; i < a1; i++) {
                const float *fv = w->af + 3 * i;
                float d2 = fv[0] * fv[0] + fv[1] * fv[1] + fv[2] * fv[2], q[3];
                for (int k = 0; k < 3; k++) q[k] = w->ap[3 * i + k] + fv[k];
                if (!isfinite(d2) || !isfinite(q[0]) || !isfinite(q[1]) || !isfinite(q[2]))
                    continue; /* the paper's score filter would drop it */
                if (d2 < tol2 || last) {
                    const long r = w->slot[s] + w->fcnt[s]++;
                    memcpy(w->fp + 3 * r, q, sizeof q);
                    w->fw[r] = w->aw[i];
                    w->fs[r] = d2;
                    continue;
                }
                memcpy(w->ap + 3 * out, q, sizeof q);
                w->aw[out] = w->aw[i];
                w->as[out] = d2;
                out++;
            }
            if (o->fast_merge > 0 && out - start > 1) {
                int kept = merge_cells(out - start, w->ap + 3 * start, w->aw + start,
                                       w->as + start, o->fast_merge, w->keys);
                st->merged += out - start - kept;
                out = start + kept;
            }
            w->aoff[s] = start;
        }
        w->aoff[S] = out;
    }
    return NESF_OK;
}

/* Step 1 first, for every structure: the lattice decides where the
 * particles start.  The heads run in the chunks the paper mode's batches
 * would have (whole grids per batch_particles), so that a latent's cell,
 * and hence its answer, does not depend on which latents share the call.
 * Then each structure's starting particles are counted, and the largest
 * batch (*Pmax particles, *Smax structures) found. */
static int fast_plan(nesf__decode_run *r, fast_ws *w, long *Pmax, int *Smax, nesf_error *err)
{
    nesf_field *f = r->f;
    const nesf_decode_opts *o = r->o;
    const int n = f->n;
    int rc;
    const int lchunk = (int)(o->batch_particles / w->g.G > 0 ? o->batch_particles / w->g.G : 1);
    for (int i = 0; i < n; i += lchunk)
        if ((rc = f->lattice(f, i, n - i < lchunk ? n - i : lchunk, w->len + 3 * i, w->ang + 3 * i,
                             err)))
            return rc;
    long P = 0;
    *Pmax = 0;
    *Smax = 0;
    for (int i = 0, b = 0; i < n; i++) {
        w->cnt0[i] = grid_points(&w->g, o, w->len + 3 * i, w->ang + 3 * i, NULL);
        /* batches of whole structures, about batch_particles particles */
        if (b > 0 && P + w->cnt0[i] > o->batch_particles) {
            P = 0;
            b = 0;
        }
        P += w->cnt0[i];
        b++;
        if (P > *Pmax) *Pmax = P;
        if (b > *Smax) *Smax = b;
    }
    return NESF_OK;
}

/* The buffers of the largest batch: Pmax particles, Smax structures. */
static int fast_alloc(fast_ws *w, long Pmax, int Smax, int n, nesf_error *err)
{
    nesf_backend *be = w->be;
    const size_t fl = sizeof(float), Q = (size_t)Pmax;
    w->p_d = be->ops->alloc(be, Q * 3 * fl);
    w->f_d = be->ops->alloc(be, Q * 3 * fl);
    w->ap = malloc(Q * 3 * fl);
    w->af = malloc(Q * 3 * fl);
    w->aw = malloc(Q * fl);
    w->as = malloc(Q * fl);
    w->fp = malloc(Q * 3 * fl);
    w->fw = malloc(Q * fl);
    w->fs = malloc(Q * fl);
    w->atoms = malloc(Q * 3 * fl);
    w->cls = malloc(Q * sizeof *w->cls);
    w->keys = malloc(Q * sizeof *w->keys);
    w->aoff = malloc((size_t)(Smax + 1) * sizeof *w->aoff);
    w->slot = malloc((size_t)(Smax + 1) * sizeof *w->slot);
    w->fcnt = malloc((size_t)Smax * sizeof *w->fcnt);
    w->atoff = malloc((size_t)(Smax + 1) * sizeof *w->atoff);
    if (!w->p_d || !w->f_d || !w->ap || !w->af || !w->aw || !w->as || !w->fp || !w->fw ||
        !w->fs || !w->atoms || !w->cls || !w->keys || !w->aoff || !w->slot || !w->fcnt ||
        !w->atoff)
        return nesf_fail(err, NESF_ERR_NOMEM, "out of memory for decoding %d structures", n);
    return NESF_OK;
}

/* The paper's grid checked against max_particles, the lattices, the
 * batches; the planning counts as flow time. */
static int fast_init(nesf__decode_run *r, int *max_structs, nesf_error *err)
{
    const nesf_decode_opts *o = r->o;
    const int n = r->f->n;
    fast_ws *w = calloc(1, sizeof *w);
    if (!w) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    r->ws = w;
    w->be = r->f->be;
    w->len = malloc((size_t)n * 3 * sizeof *w->len);
    w->ang = malloc((size_t)n * 3 * sizeof *w->ang);
    w->cnt0 = malloc((size_t)n * sizeof *w->cnt0);
    if (!w->len || !w->ang || !w->cnt0) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    double t1 = nesf__now_ms();
    grid_init(&w->g, r->f, o);
    if (w->g.G > o->max_particles)
        return nesf_fail(err, NESF_ERR_INVALID,
                         "particle grid %dx%dx%d = %ld exceeds max_particles %d (raise grid_step)",
                         w->g.gn[0], w->g.gn[1], w->g.gn[2], w->g.G, o->max_particles);
    long Pmax;
    int rc = fast_plan(r, w, &Pmax, max_structs, err);
    if (!rc) rc = fast_alloc(w, Pmax, *max_structs, n, err);
    if (rc) return rc;
    w->r2max = o->score_max * o->score_max;
    r->stats.ms_flow += nesf__now_ms() - t1;
    return NESF_OK;
}

/* Whole structures up to about batch_particles starting particles. */
static int fast_batch(nesf__decode_run *r, int b0)
{
    const fast_ws *w = r->ws;
    const int n = r->f->n;
    int S = 0;
    long Pb = 0;
    while (b0 + S < n && (S == 0 || Pb + w->cnt0[b0 + S] <= r->o->batch_particles))
        Pb += w->cnt0[b0 + S++];
    return S;
}

/* The batch's particles near their cells, each of weight 1, then the
 * flow with retirement and merging. */
static int fast_flow(nesf__decode_run *r, int b0, int S, nesf_error *err)
{
    fast_ws *w = r->ws;
    w->aoff[0] = w->slot[0] = 0;
    for (int s = 0; s < S; s++) {
        const int i = b0 + s;
        long c = grid_points(&w->g, r->o, w->len + 3 * i, w->ang + 3 * i,
                             w->ap + 3 * (size_t)w->aoff[s]);
        for (long k = 0; k < c; k++) {
            w->aw[w->aoff[s] + k] = 1;
            w->as[w->aoff[s] + k] = INFINITY;
        }
        w->aoff[s + 1] = w->aoff[s] + (int)c;
        w->slot[s + 1] = w->aoff[s + 1];
        w->fcnt[s] = 0;
    }
    r->stats.particles += w->aoff[S];
    return flow_steps(r->f, r->o, w, b0, S, &r->stats, err);
}

/* Steps 4-5: score filter and weighted NMS, per structure. */
static int fast_nms(nesf__decode_run *r, int S, nesf__batch_atoms *a, nesf_error *err)
{
    fast_ws *w = r->ws;
    const nesf_decode_opts *o = r->o;
    w->atoff[0] = 0;
    for (int s = 0; s < S; s++) {
        float *fp = w->fp + 3 * (size_t)w->slot[s], *fw = w->fw + w->slot[s], *fs = w->fs + w->slot[s];
        int kept = 0;
        for (int k = 0; k < w->fcnt[s]; k++) {
            if (!(fs[k] <= w->r2max)) continue;
            memmove(fp + 3 * kept, fp + 3 * k, 3 * sizeof(float));
            fw[kept] = fw[k];
            fs[kept++] = fs[k];
        }
        r->stats.kept += kept;
        int more = 0;
        int cap = kept < o->max_atoms ? kept : o->max_atoms;
        int na = nesf_nms_weighted(kept, fp, fs, fw, o->nms_radius, o->nms_min_count, cap,
                                   w->atoms + 3 * (size_t)w->atoff[s], &more);
        if (na < 0) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory in non-max suppression");
        r->stats.truncated += more || (kept > cap && na == cap);
        w->atoff[s + 1] = w->atoff[s] + na;
    }
    *a = (nesf__batch_atoms){.aoff = w->atoff, .atoms = w->atoms, .cls = w->cls};
    return NESF_OK;
}

/* The lattices fast_plan predicted. */
static int fast_lattice(nesf__decode_run *r, int b0, int S, const float **len, const float **ang,
                        nesf_error *err)
{
    const fast_ws *w = r->ws;
    *len = w->len + 3 * b0;
    *ang = w->ang + 3 * b0;
    return NESF_OK;
}

const nesf__decode_mode nesf__mode_fast = {
    .init = fast_init,
    .batch = fast_batch,
    .flow = fast_flow,
    .nms = fast_nms,
    .lattice = fast_lattice,
    .release = fast_release,
};

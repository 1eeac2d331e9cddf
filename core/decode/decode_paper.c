/* decode_paper.c - the paper's reconstruction (spec §5 exactly; decode.h,
 * mode "paper") as the skeleton's mode hooks (decode_internal.h).
 *
 * Every structure starts from the same particle grid over the model's
 * bounding box and flows for `iterations` steps on the backend; a batch is
 * as many whole grids as batch_particles holds.  The score is |f_p|² of
 * the last step.  NMS runs on the host after one download per batch, one
 * structure per core; the lattice heads run last. */
#include "decode_internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct paper_ws {
    nesf_backend *be;
    long G;                                            /* particles per structure */
    long maxa;                                         /* atom slots per structure */
    int Sb, T;                                         /* structures per batch, NMS threads */
    float r2max;                                       /* score_max² */
    int failed;                                        /* an NMS task ran out of memory */
    float *grid_d, *p_d, *f_d, *s_d;                   /* backend */
    float *grid_h, *p_h, *s_h, *kp_h, *ks_h, *atoms_h; /* host; kp, ks: per NMS thread */
    float *len_h, *ang_h;
    int *off, *natoms, *aoff, *cls;
    int *kept, *more;   /* per structure of a batch, from the NMS threads */
} paper_ws;

static void paper_release(nesf__decode_run *r)
{
    paper_ws *w = r->ws;
    if (!w) return;
    nesf_backend *be = w->be;
    void *dev[] = {w->grid_d, w->p_d, w->f_d, w->s_d};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        if (dev[i]) be->ops->free(be, dev[i]);
    void *host[] = {w->grid_h, w->p_h, w->s_h, w->kp_h, w->ks_h, w->atoms_h,
                    w->len_h, w->ang_h, w->off, w->natoms, w->aoff,
                    w->cls, w->kept, w->more};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
    free(w);
    r->ws = NULL;
}

/* The buffers of a batch of Sb structures of G particles each. */
static int paper_alloc(paper_ws *w, int n, nesf_error *err)
{
    nesf_backend *be = w->be;
    const long G = w->G, maxa = w->maxa;
    const int Sb = w->Sb, T = w->T;
    const size_t fl = sizeof(float), Q = (size_t)Sb * G;
    w->grid_d = be->ops->alloc(be, (size_t)G * 3 * fl);
    w->p_d = be->ops->alloc(be, Q * 3 * fl);
    w->f_d = be->ops->alloc(be, Q * 3 * fl);
    w->s_d = be->ops->alloc(be, Q * fl);
    w->grid_h = malloc((size_t)G * 3 * fl);
    w->p_h = malloc(Q * 3 * fl);
    w->s_h = malloc(Q * fl);
    w->kp_h = malloc((size_t)T * G * 3 * fl);
    w->ks_h = malloc((size_t)T * G * fl);
    w->kept = malloc((size_t)Sb * sizeof(int));
    w->more = malloc((size_t)Sb * sizeof(int));
    w->atoms_h = malloc((size_t)Sb * maxa * 3 * fl);
    w->len_h = malloc((size_t)Sb * 3 * fl);
    w->ang_h = malloc((size_t)Sb * 3 * fl);
    w->off = malloc((size_t)(Sb + 1) * sizeof(int));
    w->natoms = malloc((size_t)Sb * sizeof(int));
    w->aoff = malloc((size_t)(Sb + 1) * sizeof(int));
    w->cls = malloc((size_t)Sb * maxa * sizeof(int));
    if (!w->grid_d || !w->p_d || !w->f_d || !w->s_d || !w->grid_h || !w->p_h || !w->s_h ||
        !w->kp_h || !w->ks_h || !w->atoms_h || !w->len_h || !w->ang_h || !w->off ||
        !w->natoms || !w->aoff || !w->cls || !w->kept || !w->more)
        return nesf_fail(err, NESF_ERR_NOMEM, "out of memory for decoding %d structures "
                         "(%ld particles each)", n, G);
    return NESF_OK;
}

/* The grid arange(bbmin - pad, bbmax + pad, step)³, shared by every
 * structure: sized, checked against max_particles, uploaded once. */
static int paper_init(nesf__decode_run *r, int *max_structs, nesf_error *err)
{
    const nesf_field *f = r->f;
    const nesf_decode_opts *o = r->o;
    int gn[3];
    double glo[3];
    long G = 1;
    for (int k = 0; k < 3; k++) {
        glo[k] = (double)f->bbox_min[k] - o->grid_pad;
        gn[k] = nesf_arange_count(glo[k], (double)f->bbox_max[k] + o->grid_pad, o->grid_step);
        G *= gn[k];
    }
    if (G <= 0)
        return nesf_fail(err, NESF_ERR_INVALID, "the particle grid over the bounding box is empty");
    if (G > o->max_particles)
        return nesf_fail(err, NESF_ERR_INVALID,
                         "particle grid %dx%dx%d = %ld exceeds max_particles %d (raise grid_step)",
                         gn[0], gn[1], gn[2], G, o->max_particles);
    paper_ws *w = calloc(1, sizeof *w);
    if (!w) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    r->ws = w;
    w->be = f->be;
    w->G = G;
    w->maxa = G / o->nms_min_count + 1;
    if (w->maxa > o->max_atoms) w->maxa = o->max_atoms;
    w->Sb = (int)(o->batch_particles / G);
    if (w->Sb < 1) w->Sb = 1;
    if (w->Sb > f->n) w->Sb = f->n;
    w->T = nesf__structure_threads(w->Sb);
    w->r2max = o->score_max * o->score_max;
    *max_structs = w->Sb;
    int rc = paper_alloc(w, f->n, err);
    if (rc) return rc;
    /* x slowest, z fastest, as numpy's meshgrid(indexing="ij") */
    for (long g = 0; g < G; g++) {
        long ix = g / ((long)gn[1] * gn[2]), iy = (g / gn[2]) % gn[1], iz = g % gn[2];
        w->grid_h[3 * g] = (float)(glo[0] + ix * (double)o->grid_step);
        w->grid_h[3 * g + 1] = (float)(glo[1] + iy * (double)o->grid_step);
        w->grid_h[3 * g + 2] = (float)(glo[2] + iz * (double)o->grid_step);
    }
    if ((rc = w->be->ops->upload(w->be, w->grid_d, w->grid_h, (size_t)G * 3 * sizeof(float))))
        nesf_fail(err, NESF_ERR_BACKEND, "uploading the particle grid failed");
    return rc;
}

static int paper_batch(nesf__decode_run *r, int b0)
{
    const paper_ws *w = r->ws;
    return r->f->n - b0 < w->Sb ? r->f->n - b0 : w->Sb;
}

/* Step 3 on the backend: every particle takes every step. */
static int paper_flow(nesf__decode_run *r, int b0, int S, nesf_error *err)
{
    paper_ws *w = r->ws;
    nesf_field *f = r->f;
    const nesf_decode_opts *o = r->o;
    nesf_backend *be = f->be;
    const long G = w->G;
    const size_t q = (size_t)S * G, fl = sizeof(float);
    int rc;
    for (int s = 0; s <= S; s++) w->off[s] = (int)(s * G);
    for (int s = 0; s < S; s++)
        if ((rc = be->ops->copy(be, w->p_d + (size_t)s * G * 3, w->grid_d, (size_t)G * 3 * fl))) {
            nesf_fail(err, NESF_ERR_BACKEND, "copying particles failed");
            return rc;
        }
    /* the score is |f_p|² of the last step */
    for (int it = 0; it < o->iterations; it++) {
        if ((rc = nesf__cancelled(o, err))) return rc;
        if ((rc = f->position(f, b0, S, w->off, w->p_d, w->f_d, err))) return rc;
        be->ops->axpy(be, q * 3, 1.0f, w->f_d, w->p_d);
    }
    be->ops->row_sqnorm(be, (int)q, 3, w->f_d, 3, w->s_d);
    if ((rc = be->ops->sync(be))) {
        nesf_fail(err, NESF_ERR_BACKEND, "backend failed during the particle flow");
        return rc;
    }
    r->stats.field_evals += (long)q * o->iterations;
    r->stats.particles += (long)q;
    r->stats.steps += (long)S * o->iterations;
    return NESF_OK;
}

/* One structure's score filter and NMS (a task of nesf__for_structures):
 * its atoms go to slot s (maxa atoms) of atoms_h. */
static void paper_nms_one(void *arg, int s, int tid)
{
    const nesf__decode_run *r = arg;
    paper_ws *w = r->ws;
    const long G = w->G;
    float *kp = w->kp_h + (size_t)tid * G * 3, *ks = w->ks_h + (size_t)tid * G;
    int kept = 0;
    for (long g = 0; g < G; g++) {
        size_t i = (size_t)s * G + g;
        if (!(w->s_h[i] <= w->r2max)) continue; /* also drops NaN */
        memcpy(kp + 3 * kept, w->p_h + 3 * i, 3 * sizeof(float));
        ks[kept++] = w->s_h[i];
    }
    int more = 0;
    int na = nesf_nms(kept, kp, ks, r->o->nms_radius, r->o->nms_min_count, (int)w->maxa,
                      w->atoms_h + (size_t)s * w->maxa * 3, &more);
    if (na < 0) __atomic_store_n(&w->failed, 1, __ATOMIC_RELAXED);
    w->natoms[s] = na < 0 ? 0 : na;
    w->kept[s] = kept;
    w->more[s] = more;
}

/* Steps 4-5 on the host, the batch's structures on threads. */
static int paper_nms(nesf__decode_run *r, int S, nesf__batch_atoms *a, nesf_error *err)
{
    paper_ws *w = r->ws;
    nesf_backend *be = w->be;
    const size_t q = (size_t)S * w->G, fl = sizeof(float);
    if (be->ops->download(be, w->p_h, w->p_d, q * 3 * fl) ||
        be->ops->download(be, w->s_h, w->s_d, q * fl))
        return nesf_fail(err, NESF_ERR_BACKEND, "downloading particles failed");
    w->failed = 0;
    nesf__for_structures(S, w->T < S ? w->T : S, paper_nms_one, r);
    if (w->failed) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory in non-max suppression");
    /* pack the per-structure slots (a slot never moves up) */
    w->aoff[0] = 0;
    for (int s = 0; s < S; s++) {
        r->stats.kept += w->kept[s];
        r->stats.truncated += w->more[s];
        w->aoff[s + 1] = w->aoff[s] + w->natoms[s];
        memmove(w->atoms_h + (size_t)w->aoff[s] * 3, w->atoms_h + (size_t)s * w->maxa * 3,
                (size_t)w->natoms[s] * 3 * fl);
    }
    *a = (nesf__batch_atoms){.aoff = w->aoff, .atoms = w->atoms_h, .cls = w->cls};
    return NESF_OK;
}

/* Step 1 last: the lattice heads of the batch. */
static int paper_lattice(nesf__decode_run *r, int b0, int S, const float **len, const float **ang,
                         nesf_error *err)
{
    paper_ws *w = r->ws;
    *len = w->len_h;
    *ang = w->ang_h;
    return r->f->lattice(r->f, b0, S, w->len_h, w->ang_h, err);
}

const nesf__decode_mode nesf__mode_paper = {
    .init = paper_init,
    .batch = paper_batch,
    .flow = paper_flow,
    .nms = paper_nms,
    .lattice = paper_lattice,
    .release = paper_release,
};

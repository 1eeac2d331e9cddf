/* decode_polish.c - the position polish (decode_internal.h): an NMS atom
 * is where particles stopped, the field's zero, and carries the field's
 * error at that one spot.  Every point near an atom gives the field's own
 * estimate of it, q + f_p(q); their mean over the grid of the training's
 * local queries averages those errors out (docs/decoding.md). */
#include "decode_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* offsets -w, -w/2, 0, w/2, w on each axis */
#define POLISH_SIDE 5

int nesf__polish_init(nesf__polish *p, nesf_backend *be, const nesf_decode_opts *o,
                      int max_structs, nesf_error *err)
{
    memset(p, 0, sizeof *p);
    if (!(o->polish > 0)) return NESF_OK;
    const float w = o->polish, step = w / ((POLISH_SIDE - 1) / 2);
    int rc = nesf__around_init(&p->q, be, -w, w + 0.5f * step, step, max_structs, err);
    if (rc) return rc;
    p->radius = o->nms_radius > 0 ? o->nms_radius : 0.5f;
    const size_t cq = (size_t)p->q.chunk * p->q.P * 3 * sizeof(float);
    p->sv_d = be->ops->alloc(be, cq);
    p->sv_h = malloc(cq);
    if (!p->sv_d || !p->sv_h) {
        nesf__polish_free(p);
        return nesf_fail(err, NESF_ERR_NOMEM, "out of memory for the position polish");
    }
    return NESF_OK;
}

void nesf__polish_free(nesf__polish *p)
{
    if (p->q.be && p->sv_d) p->q.be->ops->free(p->q.be, p->sv_d);
    free(p->sv_h);
    free(p->out);
    nesf__around_free(&p->q);
    memset(p, 0, sizeof *p);
}

/* Atom a's new place from its P estimates q + v (host): their mean over
 * those within radius of it; the atom as it was when none is. */
static void polish_atom(const nesf__polish *p, const float *atom, const float *q, const float *v,
                        float *out)
{
    double sum[3] = {0, 0, 0}, r2 = (double)p->radius * p->radius;
    int n = 0;
    for (int i = 0; i < p->q.P; i++) {
        double e[3], d2 = 0;
        for (int k = 0; k < 3; k++) {
            e[k] = (double)q[3 * i + k] + v[3 * i + k];
            d2 += (e[k] - atom[k]) * (e[k] - atom[k]);
        }
        if (!(d2 <= r2)) continue;
        for (int k = 0; k < 3; k++) sum[k] += e[k];
        n++;
    }
    for (int k = 0; k < 3; k++) out[k] = n ? (float)(sum[k] / n) : atom[k];
}

int nesf__polish_run(nesf__polish *p, nesf_field *f, int first, int S, const int *aoff,
                     const float *atoms, const float **out, long *evals, nesf_error *err)
{
    *out = atoms;
    if (!p->q.P || aoff[S] == 0) return NESF_OK;
    const int P3 = p->q.P, chunk = p->q.chunk, total = aoff[S];
    if (total > p->cap) {
        float *o = realloc(p->out, (size_t)total * 3 * sizeof(float));
        if (!o) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory for the position polish");
        p->out = o;
        p->cap = total;
    }
    int rc, sf, Sc;
    for (int a0 = 0; a0 < total; a0 += chunk) {
        const int a1 = total - a0 < chunk ? total : a0 + chunk;
        const size_t qp = (size_t)(a1 - a0) * P3;
        if ((rc = nesf__around_fill(&p->q, aoff, atoms, a0, a1, &sf, &Sc, err))) return rc;
        if ((rc = f->position(f, first + sf, Sc, p->q.sp_off, p->q.sq_d, p->sv_d, err))) return rc;
        if (p->q.be->ops->download(p->q.be, p->sv_h, p->sv_d, qp * 3 * sizeof(float)))
            return nesf_fail(err, NESF_ERR_BACKEND, "position polish failed");
        for (int a = a0; a < a1; a++) {
            const size_t r = (size_t)(a - a0) * P3 * 3;
            polish_atom(p, atoms + 3 * a, p->q.sq_h + r, p->sv_h + r, p->out + 3 * a);
        }
        *evals += (long)qp;
    }
    *out = p->out;
    return NESF_OK;
}

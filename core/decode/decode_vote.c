/* decode_vote.c - the species vote (spec §5 step 6) of both modes: the
 * offset grid around each atom through the species field, argmax and
 * majority on the backend, one class per atom back.  The offset grid's
 * queries (nesf__around) serve the position polish too. */
#include "decode_internal.h"

#include <stdlib.h>
#include <string.h>

int nesf__around_init(nesf__around *q, nesf_backend *be, float lo, float hi, float step,
                      int max_structs, nesf_error *err)
{
    memset(q, 0, sizeof *q);
    q->be = be;
    const int ns = nesf_arange_count(lo, hi, step);
    q->P = ns * ns * ns;
    /* queries go through the field in chunks of whole atoms */
    q->chunk = (1 << 16) / q->P;
    if (q->chunk < 1) q->chunk = 1;
    const size_t fl = sizeof(float), cq = (size_t)q->chunk * q->P;
    q->sq_d = be->ops->alloc(be, cq * 3 * fl);
    q->sq_h = malloc(cq * 3 * fl);
    q->ofs_h = malloc((size_t)q->P * 3 * fl);
    q->sp_off = malloc((size_t)(max_structs + 1) * sizeof(int));
    if (!q->sq_d || !q->sq_h || !q->ofs_h || !q->sp_off) {
        nesf__around_free(q);
        return nesf_fail(err, NESF_ERR_NOMEM, "out of memory for the queries around atoms");
    }
    for (int p = 0; p < q->P; p++) {
        int c[3] = {p / (ns * ns), (p / ns) % ns, p % ns};
        for (int k = 0; k < 3; k++) q->ofs_h[3 * p + k] = (float)(lo + c[k] * (double)step);
    }
    return NESF_OK;
}

void nesf__around_free(nesf__around *q)
{
    if (q->sq_d) q->be->ops->free(q->be, q->sq_d);
    free(q->sq_h);
    free(q->ofs_h);
    free(q->sp_off);
    memset(q, 0, sizeof *q);
}

int nesf__around_fill(nesf__around *q, const int *aoff, const float *atoms, int a0, int a1,
                      int *sf_out, int *Sc_out, nesf_error *err)
{
    const int P3 = q->P;
    int sf = 0;
    while (aoff[sf + 1] <= a0) sf++;
    int sl = sf;
    while (aoff[sl + 1] < a1) sl++;
    const int Sc = sl - sf + 1;
    for (int k = 0; k <= Sc; k++) {
        int x = aoff[sf + k];
        x = x < a0 ? a0 : x > a1 ? a1 : x;
        q->sp_off[k] = (x - a0) * P3;
    }
    for (int a = a0; a < a1; a++)
        for (int p = 0; p < P3; p++)
            for (int k = 0; k < 3; k++)
                q->sq_h[((size_t)(a - a0) * P3 + p) * 3 + k] = atoms[3 * a + k] + q->ofs_h[3 * p + k];
    const size_t qp = (size_t)(a1 - a0) * P3;
    if (q->be->ops->upload(q->be, q->sq_d, q->sq_h, qp * 3 * sizeof(float)))
        return nesf_fail(err, NESF_ERR_BACKEND, "uploading queries around atoms failed");
    *sf_out = sf;
    *Sc_out = Sc;
    return NESF_OK;
}

int nesf__vote_init(nesf__vote *v, nesf_backend *be, const nesf_decode_opts *o, int A,
                    int max_structs, nesf_error *err)
{
    memset(v, 0, sizeof *v);
    int rc = nesf__around_init(&v->q, be, o->species_lo, o->species_hi, o->species_step,
                               max_structs, err);
    if (rc) return rc;
    v->A = A;
    const size_t cq = (size_t)v->q.chunk * v->q.P;
    v->sl_d = be->ops->alloc(be, cq * A * sizeof(float));
    v->cls_d = be->ops->alloc(be, (size_t)v->q.chunk * sizeof(int));
    if (!v->sl_d || !v->cls_d) {
        nesf__vote_free(v);
        return nesf_fail(err, NESF_ERR_NOMEM, "out of memory for the species vote");
    }
    return NESF_OK;
}

void nesf__vote_free(nesf__vote *v)
{
    nesf_backend *be = v->q.be;
    if (be && v->sl_d) be->ops->free(be, v->sl_d);
    if (be && v->cls_d) be->ops->free(be, v->cls_d);
    nesf__around_free(&v->q);
    memset(v, 0, sizeof *v);
}

int nesf__vote_run(nesf__vote *v, nesf_field *f, int first, int S, const int *aoff,
                   const float *atoms, int *cls, long *evals, nesf_error *err)
{
    nesf_backend *be = v->q.be;
    const int P3 = v->q.P, chunk = v->q.chunk, total = aoff[S];
    int rc, sf, Sc;
    for (int a0 = 0; a0 < total; a0 += chunk) {
        const int a1 = total - a0 < chunk ? total : a0 + chunk;
        if ((rc = nesf__around_fill(&v->q, aoff, atoms, a0, a1, &sf, &Sc, err))) return rc;
        if ((rc = f->species(f, first + sf, Sc, v->q.sp_off, v->q.sq_d, v->sl_d, err))) return rc;
        /* the vote runs where the logits are: one class per atom comes back */
        be->ops->vote(be, a1 - a0, P3, v->A, v->sl_d, v->cls_d);
        if (be->ops->download(be, cls + a0, v->cls_d, (size_t)(a1 - a0) * sizeof(int)))
            return nesf_fail(err, NESF_ERR_BACKEND, "species vote failed");
        *evals += (long)(a1 - a0) * P3;
    }
    return NESF_OK;
}

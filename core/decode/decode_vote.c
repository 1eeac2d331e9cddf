/* decode_vote.c - the species vote (spec §5 step 6) of both modes: the
 * offset grid around each atom through the species field, argmax and
 * majority on the backend, one class per atom back. */
#include "decode_internal.h"

#include <stdlib.h>
#include <string.h>

int nesf__vote_init(nesf__vote *v, nesf_backend *be, const nesf_decode_opts *o, int A,
                    int max_structs, nesf_error *err)
{
    memset(v, 0, sizeof *v);
    v->be = be;
    const int ns = nesf_arange_count(o->species_lo, o->species_hi, o->species_step);
    v->P = ns * ns * ns;
    v->A = A;
    /* species queries go through the field in chunks of whole atoms */
    v->chunk = (1 << 16) / v->P;
    if (v->chunk < 1) v->chunk = 1;
    const size_t fl = sizeof(float), cq = (size_t)v->chunk * v->P;
    v->sq_d = be->ops->alloc(be, cq * 3 * fl);
    v->sl_d = be->ops->alloc(be, cq * A * fl);
    v->cls_d = be->ops->alloc(be, (size_t)v->chunk * sizeof(int));
    v->sq_h = malloc(cq * 3 * fl);
    v->ofs_h = malloc((size_t)v->P * 3 * fl);
    v->sp_off = malloc((size_t)(max_structs + 1) * sizeof(int));
    if (!v->sq_d || !v->sl_d || !v->cls_d || !v->sq_h || !v->ofs_h || !v->sp_off) {
        nesf__vote_free(v);
        return nesf_fail(err, NESF_ERR_NOMEM, "out of memory for the species vote");
    }
    for (int p = 0; p < v->P; p++) {
        int c[3] = {p / (ns * ns), (p / ns) % ns, p % ns};
        for (int k = 0; k < 3; k++)
            v->ofs_h[3 * p + k] = (float)(o->species_lo + c[k] * (double)o->species_step);
    }
    return NESF_OK;
}

void nesf__vote_free(nesf__vote *v)
{
    nesf_backend *be = v->be;
    void *dev[] = {v->sq_d, v->sl_d, v->cls_d};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        if (dev[i]) be->ops->free(be, dev[i]);
    free(v->sq_h);
    free(v->ofs_h);
    free(v->sp_off);
    memset(v, 0, sizeof *v);
}

int nesf__vote_run(nesf__vote *v, nesf_field *f, int first, int S, const int *aoff,
                   const float *atoms, int *cls, long *evals, nesf_error *err)
{
    nesf_backend *be = v->be;
    const int P3 = v->P, chunk = v->chunk, total = aoff[S];
    const size_t fl = sizeof(float);
    int rc;
    for (int a0 = 0; a0 < total; a0 += chunk) {
        const int a1 = total - a0 < chunk ? total : a0 + chunk;
        int sf = 0;
        while (aoff[sf + 1] <= a0) sf++;
        int sl = sf;
        while (aoff[sl + 1] < a1) sl++;
        const int Sc = sl - sf + 1;
        for (int k = 0; k <= Sc; k++) {
            int x = aoff[sf + k];
            x = x < a0 ? a0 : x > a1 ? a1 : x;
            v->sp_off[k] = (x - a0) * P3;
        }
        for (int a = a0; a < a1; a++)
            for (int p = 0; p < P3; p++)
                for (int k = 0; k < 3; k++)
                    v->sq_h[((size_t)(a - a0) * P3 + p) * 3 + k] =
                        atoms[3 * a + k] + v->ofs_h[3 * p + k];
        const size_t qp = (size_t)(a1 - a0) * P3;
        if (be->ops->upload(be, v->sq_d, v->sq_h, qp * 3 * fl))
            return nesf_fail(err, NESF_ERR_BACKEND, "uploading species queries failed");
        if ((rc = f->species(f, first + sf, Sc, v->sp_off, v->sq_d, v->sl_d, err))) return rc;
        /* the vote runs where the logits are: one class per atom comes back */
        be->ops->vote(be, a1 - a0, P3, v->A, v->sl_d, v->cls_d);
        if (be->ops->download(be, cls + a0, v->cls_d, (size_t)(a1 - a0) * sizeof(int)))
            return nesf_fail(err, NESF_ERR_BACKEND, "species vote failed");
        *evals += (long)qp;
    }
    return NESF_OK;
}

/* consistency.c - the decode∘encode fixed-point check (consistency.h). */
#include "consistency.h"

#include <stdlib.h>
#include <string.h>

int nesf_same_composition(const nesf_structure *a, const nesf_structure *b)
{
    if (a->n != b->n) return 0;
    /* element counts by atomic number; sites outside 1..118 never match */
    int count[119];
    memset(count, 0, sizeof count);
    for (int i = 0; i < a->n; i++) {
        if (a->z[i] < 1 || a->z[i] > 118 || b->z[i] < 1 || b->z[i] > 118) return 0;
        count[a->z[i]]++;
        count[b->z[i]]--;
    }
    for (int k = 0; k < 119; k++)
        if (count[k]) return 0;
    return 1;
}

/* Re-decodes k structures ok[] (all with atoms) and writes their verdicts
 * to out[idx[j]]. */
static int check_some(nesf_model *m, nesf_structure *const *ok, const int *idx, int k,
                      const nesf_decode_opts *o, nesf_fixed_point *out, nesf_error *err)
{
    const int L = nesf_model_latent_size(m);
    float *z = malloc((size_t)k * L * sizeof *z);
    nesf_structure **re = calloc((size_t)k, sizeof *re);
    nesf_error *item = calloc((size_t)k, sizeof *item);
    int rc = (!z || !re || !item) ? nesf_fail(err, NESF_ERR_NOMEM, "out of memory") : NESF_OK;
    if (!rc) rc = nesf_model_encode(m, ok, k, z, err);
    if (!rc) rc = nesf_decode(m, k, z, o, re, item, NULL, err);
    for (int j = 0; !rc && j < k; j++) {
        nesf_fixed_point *v = &out[idx[j]];
        v->checked = 1;
        v->atoms = re[j] ? re[j]->n : -1;
        v->consistent = re[j] && nesf_same_composition(ok[j], re[j]);
    }
    for (int j = 0; re && j < k; j++) nesf_structure_free(re[j]);
    free(z), free(re), free(item);
    return rc;
}

int nesf_fixed_point_check(nesf_model *m, nesf_structure *const *dec, int n, const nesf_decode_opts *o,
                           nesf_fixed_point *out, nesf_error *err)
{
    nesf_decode_opts opts;
    if (o) opts = *o;
    else nesf_decode_opts_default(&opts);
    opts.symmetrize = 0;
    nesf_structure **ok = malloc((size_t)(n ? n : 1) * sizeof *ok);
    int *idx = malloc((size_t)(n ? n : 1) * sizeof *idx);
    if (!ok || !idx) {
        free(ok), free(idx);
        return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    }
    int k = 0;
    for (int i = 0; i < n; i++) {
        out[i] = (nesf_fixed_point){0, 0, -1};
        if (dec[i] && dec[i]->n > 0) ok[k] = dec[i], idx[k++] = i;
    }
    int rc = k ? check_some(m, ok, idx, k, &opts, out, err) : NESF_OK;
    free(ok), free(idx);
    return rc;
}

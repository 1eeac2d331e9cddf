/* second_look.c - more refinement where a reconstruction stays doubtful
 * (second_look.h). */
#include "second_look.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "domain.h"

double nesf_second_look_threshold(nesf_model *m, const nesf_refine_opts *o)
{
    const nesf_domain *d = nesf_model_domain(m);
    if (o->steps <= 0 || o->look_tries <= 0 || !d || d->cycle_n <= 0) return INFINITY;
    double p = o->look_pct < 0 ? 0 : o->look_pct > 100 ? 100 : o->look_pct;
    int k = (int)floor(p);
    if (k >= 100) return d->cycle_q[100];
    return d->cycle_q[k] + (p - k) * (d->cycle_q[k + 1] - d->cycle_q[k]);
}

typedef struct look {
    int k, L;
    int *idx;            /* doubtful reconstruction -> item */
    float *z0, *z;       /* their encoder latents, a candidate's latents (k x L) */
    nesf_structure **c;  /* a candidate's decodes */
    nesf_error *cerr;    /* their item errors */
    char *replaced;      /* [k] */
} look;

static void look_free(look *l)
{
    free(l->idx), free(l->z0), free(l->z), free(l->c), free(l->cerr), free(l->replaced);
}

static int look_init(look *l, int n, int L, const float *z0, const double *cycle, double thr,
                     nesf_structure *const *s, nesf_error *err)
{
    memset(l, 0, sizeof *l);
    l->L = L;
    size_t m = (size_t)(n ? n : 1);
    l->idx = malloc(m * sizeof *l->idx);
    l->z0 = malloc(m * L * sizeof *l->z0);
    l->z = malloc(m * L * sizeof *l->z);
    l->c = calloc(m, sizeof *l->c);
    l->cerr = calloc(m, sizeof *l->cerr);
    l->replaced = calloc(m, 1);
    if (!l->idx || !l->z0 || !l->z || !l->c || !l->cerr || !l->replaced) {
        look_free(l);
        return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < n; i++)
        if (s[i] && cycle[i] > thr && isfinite(cycle[i])) { /* INFINITY: nothing decoded, a failure */
            memcpy(l->z0 + (size_t)l->k * L, z0 + (size_t)i * L, (size_t)L * sizeof *z0);
            l->idx[l->k++] = i;
        }
    return NESF_OK;
}

/* One try: refine every doubtful one again from E(S), decode, and keep
 * what the encoder places nearer E(S).  Distances one structure at a time,
 * so that an answer never depends on what else is in the batch. */
static int look_try(look *l, nesf_model *m, nesf_structure *const *s, float *z, nesf_structure **rec,
                    double *cycle, const nesf_refine_opts *ro, const nesf_decode_opts *dopt,
                    nesf_error *err)
{
    const size_t L = (size_t)l->L;
    memcpy(l->z, l->z0, (size_t)l->k * L * sizeof *l->z);
    int rc = NESF_OK;
    for (int j = 0; !rc && j < l->k; j++) rc = nesf_refine_latents(m, &s[l->idx[j]], 1, l->z + j * L, ro, NULL, err);
    if (!rc) rc = nesf_decode(m, l->k, l->z, dopt, l->c, l->cerr, NULL, err);
    for (int j = 0; !rc && j < l->k; j++) {
        int i = l->idx[j];
        double d;
        if (!l->c[j] || (rc = nesf_cycle_distances(m, 1, l->z0 + j * L, &l->c[j], &d, err))) continue;
        if (d < cycle[i]) {
            nesf_structure_free(rec[i]);
            rec[i] = l->c[j];
            l->c[j] = NULL;
            cycle[i] = d;
            memcpy(z + i * L, l->z + j * L, L * sizeof *z);
            l->replaced[j] = 1;
        }
    }
    for (int j = 0; j < l->k; j++) {
        nesf_structure_free(l->c[j]);
        l->c[j] = NULL;
    }
    return rc;
}

int nesf_second_look(nesf_model *m, nesf_structure *const *s, int n, const float *z0, float *z,
                     nesf_structure **rec, double *cycle, const nesf_refine_opts *o,
                     const nesf_decode_opts *dopt, nesf_second_look_stats *st, nesf_error *err)
{
    double thr = nesf_second_look_threshold(m, o);
    if (isinf(thr) || n <= 0) return NESF_OK;
    look l;
    int rc = look_init(&l, n, nesf_model_latent_size(m), z0, cycle, thr, s, err);
    if (rc) return rc;
    nesf_refine_opts ro = *o;
    ro.steps = o->look_steps;
    ro.lr = o->look_lr;
    ro.look_tries = 0;
    for (int t = 1; !rc && l.k && t <= o->look_tries; t++) {
        ro.seed = o->seed + (uint64_t)t;
        rc = look_try(&l, m, s, z, rec, cycle, &ro, dopt, err);
        if (st) st->tries += l.k;
    }
    if (st) {
        st->doubtful += l.k;
        for (int j = 0; j < l.k; j++) st->replaced += l.replaced[j];
    }
    look_free(&l);
    return rc;
}

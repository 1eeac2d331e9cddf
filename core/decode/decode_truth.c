/* decode_truth.c - the ground-truth field (decode.h nesf_field_truth): the
 * exact fields of known structures, which check the decoder independently
 * of training. */
#include "decode.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct truth_impl {
    nesf_structure **s; /* the caller's structures */
    int *aoff;          /* atoms of structure i: [aoff[i], aoff[i+1]) */
    int *cls;           /* atom species class */
    float *len, *ang;
    int *species_z;
    float *in, *res;    /* host staging */
    size_t cap_in, cap_res;
} truth_impl;

static int truth_stage(nesf_field *f, const float *xyz, size_t q, size_t res_cols,
                       nesf_error *err)
{
    truth_impl *t = f->impl;
    if (q * 3 > t->cap_in) {
        float *p = realloc(t->in, q * 3 * sizeof *p);
        if (!p) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory in the truth field");
        t->in = p;
        t->cap_in = q * 3;
    }
    if (q * res_cols > t->cap_res) {
        float *p = realloc(t->res, q * res_cols * sizeof *p);
        if (!p) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory in the truth field");
        t->res = p;
        t->cap_res = q * res_cols;
    }
    if (q && f->be->ops->download(f->be, t->in, xyz, q * 3 * sizeof(float)))
        return nesf_fail(err, NESF_ERR_BACKEND, "download failed in the truth field");
    return NESF_OK;
}

static int truth_eval(nesf_field *f, int first, int S, const int *off, const float *xyz,
                      float *out, int species, nesf_error *err)
{
    truth_impl *t = f->impl;
    const size_t q = (size_t)off[S], cols = species ? (size_t)f->num_species : 3;
    int rc = truth_stage(f, xyz, q, cols, err);
    if (rc) return rc;
    if (species) memset(t->res, 0, q * cols * sizeof(float));
    for (int s = 0; s < S; s++)
        for (int r = off[s]; r < off[s + 1]; r++) {
            /* the training targets' definition of the nearest atom */
            float v[3];
            int a = nesf_nearest_atom(t->s[first + s], t->in + 3 * (size_t)r, v);
            if (species)
                t->res[(size_t)r * cols + t->cls[t->aoff[first + s] + a]] = 1.0f;
            else
                memcpy(t->res + 3 * (size_t)r, v, sizeof v);
        }
    if (q && f->be->ops->upload(f->be, out, t->res, q * cols * sizeof(float)))
        return nesf_fail(err, NESF_ERR_BACKEND, "upload failed in the truth field");
    return NESF_OK;
}

static int truth_position(nesf_field *f, int first, int S, const int *off, const float *xyz,
                          float *out, nesf_error *err)
{
    return truth_eval(f, first, S, off, xyz, out, 0, err);
}

static int truth_species(nesf_field *f, int first, int S, const int *off, const float *xyz,
                         float *out, nesf_error *err)
{
    return truth_eval(f, first, S, off, xyz, out, 1, err);
}

static int truth_lattice(nesf_field *f, int first, int S, float *lengths, float *angles,
                         nesf_error *err)
{
    truth_impl *t = f->impl;
    memcpy(lengths, t->len + 3 * first, (size_t)S * 3 * sizeof(float));
    memcpy(angles, t->ang + 3 * first, (size_t)S * 3 * sizeof(float));
    return NESF_OK;
}

static void truth_release(nesf_field *f)
{
    truth_impl *t = f->impl;
    if (!t) return;
    free(t->s); free(t->aoff); free(t->cls); free(t->len); free(t->ang);
    free(t->species_z); free(t->in); free(t->res);
    free(t);
}

int nesf_field_truth(nesf_backend *be, nesf_structure *const *s, int n, const int *species_z,
                     int num_species, const float bbox_min[3], const float bbox_max[3],
                     nesf_field *f, nesf_error *err)
{
    memset(f, 0, sizeof *f);
    if (n < 0 || num_species < 1)
        return nesf_fail(err, NESF_ERR_INVALID, "truth field: bad sizes");
    truth_impl *t = calloc(1, sizeof *t);
    if (!t) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    f->impl = t;
    f->release = truth_release;
    long atoms = 0;
    for (int i = 0; i < n; i++) atoms += s[i]->n;
    t->s = malloc((size_t)(n ? n : 1) * sizeof *t->s);
    t->aoff = malloc((size_t)(n + 1) * sizeof *t->aoff);
    t->cls = malloc((size_t)(atoms ? atoms : 1) * sizeof *t->cls);
    t->len = malloc((size_t)(n ? n : 1) * 3 * sizeof *t->len);
    t->ang = malloc((size_t)(n ? n : 1) * 3 * sizeof *t->ang);
    t->species_z = malloc((size_t)num_species * sizeof *t->species_z);
    if (!t->s || !t->aoff || !t->cls || !t->len || !t->ang || !t->species_z) {
        nesf_field_release(f);
        return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    }
    memcpy(t->species_z, species_z, (size_t)num_species * sizeof *species_z);
    t->aoff[0] = 0;
    for (int i = 0; i < n; i++) {
        if (s[i]->n < 1) {
            nesf_field_release(f);
            return nesf_fail(err, NESF_ERR_INVALID, "structure %d (%s) has no atoms", i, s[i]->id);
        }
        for (int a = 0; a < s[i]->n; a++) {
            int c = -1, j = t->aoff[i] + a;
            for (int k = 0; k < num_species && c < 0; k++)
                if (species_z[k] == s[i]->z[a]) c = k;
            if (c < 0) {
                nesf_field_release(f);
                return nesf_fail(err, NESF_ERR_NOTFOUND,
                                 "structure %d (%s): element Z=%d is not in the species list",
                                 i, s[i]->id, s[i]->z[a]);
            }
            t->cls[j] = c;
        }
        t->s[i] = s[i];
        t->aoff[i + 1] = t->aoff[i] + s[i]->n;
        nesf_cellpar p;
        nesf_lattice_params(&s[i]->lat, &p);
        const double rad = M_PI / 180.0;
        float v[6] = {p.a, p.b, p.c, p.alpha * rad, p.beta * rad, p.gamma * rad};
        memcpy(t->len + 3 * i, v, 3 * sizeof *v);
        memcpy(t->ang + 3 * i, v + 3, 3 * sizeof *v);
    }
    f->be = be;
    f->n = n;
    f->num_species = num_species;
    f->species_z = t->species_z;
    memcpy(f->bbox_min, bbox_min, sizeof f->bbox_min);
    memcpy(f->bbox_max, bbox_max, sizeof f->bbox_max);
    f->position = truth_position;
    f->species = truth_species;
    f->lattice = truth_lattice;
    return NESF_OK;
}

/* decode_model.c - the network's fields as a nesf_field, and nesf_decode.
 * Kept apart from decode.c so that the algorithm (and the ground-truth
 * field) links without the network. */
#include "decode.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "domain.h"

typedef struct model_field {
    nesf_model *m;
    int latent;
    float *z_dev;  /* n x latent, backend */
    float *z_host; /* n x latent, for the lattice heads */
    int species_z[NESF_MAX_SPECIES];
} model_field;

static int mf_position(nesf_field *f, int first, int S, const int *off, const float *xyz,
                       float *out, nesf_error *err)
{
    model_field *mf = f->impl;
    return nesf_model_position_field(mf->m, S, mf->z_dev + (size_t)first * mf->latent, off, xyz,
                                     out, err);
}

static int mf_species(nesf_field *f, int first, int S, const int *off, const float *xyz,
                      float *out, nesf_error *err)
{
    model_field *mf = f->impl;
    return nesf_model_species_field(mf->m, S, mf->z_dev + (size_t)first * mf->latent, off, xyz,
                                    out, err);
}

static int mf_lattice(nesf_field *f, int first, int S, float *lengths, float *angles,
                      nesf_error *err)
{
    model_field *mf = f->impl;
    return nesf_model_lattice(mf->m, S, mf->z_host + (size_t)first * mf->latent, lengths, angles,
                              err);
}

static void mf_release(nesf_field *f)
{
    model_field *mf = f->impl;
    if (!mf) return;
    if (mf->z_dev) f->be->ops->free(f->be, mf->z_dev);
    free(mf->z_host);
    free(mf);
}

int nesf_field_model(nesf_model *m, int n, const float *z, nesf_field *f, nesf_error *err)
{
    memset(f, 0, sizeof *f);
    if (n < 0) return nesf_fail(err, NESF_ERR_INVALID, "negative latent count");
    nesf_backend *be = nesf_model_backend(m);
    model_field *mf = calloc(1, sizeof *mf);
    if (!mf) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    f->be = be;
    f->impl = mf;
    f->release = mf_release;
    mf->m = m;
    mf->latent = nesf_model_latent_size(m);
    size_t bytes = (size_t)(n ? n : 1) * mf->latent * sizeof(float);
    mf->z_host = malloc(bytes);
    mf->z_dev = be->ops->alloc(be, bytes);
    if (!mf->z_host || !mf->z_dev) {
        nesf_field_release(f);
        return nesf_fail(err, NESF_ERR_NOMEM, "out of memory for %d latents", n);
    }
    memcpy(mf->z_host, z, (size_t)n * mf->latent * sizeof(float));
    if (n && be->ops->upload(be, mf->z_dev, z, (size_t)n * mf->latent * sizeof(float))) {
        nesf_field_release(f);
        return nesf_fail(err, NESF_ERR_BACKEND, "uploading latents failed");
    }
    f->n = n;
    f->num_species = nesf_model_num_species(m);
    for (int c = 0; c < f->num_species && c < NESF_MAX_SPECIES; c++)
        mf->species_z[c] = nesf_model_species_z(m, c);
    f->species_z = mf->species_z;
    nesf_model_bbox(m, f->bbox_min, f->bbox_max);
    const nesf_domain *dom = nesf_model_domain(m);
    f->min_distance = dom ? (float)dom->min_distance : 0.0f;
    f->position = mf_position;
    f->species = mf_species;
    f->lattice = mf_lattice;
    return NESF_OK;
}

int nesf_decode(nesf_model *m, int n, const float *z, const nesf_decode_opts *o,
                nesf_structure **out, nesf_error *item_err, nesf_decode_stats *st,
                nesf_error *err)
{
    const int L = nesf_model_latent_size(m);
    /* non-finite latents decode as zeros and are reported per item, so
     * that one bad request does not spoil a batch */
    float *zc = malloc((size_t)(n ? n : 1) * L * sizeof *zc);
    unsigned char *bad = calloc((size_t)(n ? n : 1), 1);
    if (!zc || !bad) {
        free(zc);
        free(bad);
        return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    }
    memcpy(zc, z, (size_t)n * L * sizeof *zc);
    for (int i = 0; i < n; i++)
        for (int k = 0; k < L; k++)
            if (!isfinite(zc[(size_t)i * L + k])) {
                if (!item_err) {
                    free(zc);
                    free(bad);
                    return nesf_fail(err, NESF_ERR_INVALID,
                                     "latent %d has a non-finite value at index %d", i, k);
                }
                bad[i] = 1;
                memset(zc + (size_t)i * L, 0, (size_t)L * sizeof *zc);
                break;
            }
    nesf_field f;
    int rc = nesf_field_model(m, n, zc, &f, err);
    if (!rc) rc = nesf_decode_field(&f, o, out, item_err, st, err);
    nesf_field_release(&f);
    if (!rc)
        for (int i = 0; i < n; i++)
            if (bad[i]) {
                nesf_structure_free(out[i]);
                out[i] = NULL;
                nesf_fail(&item_err[i], NESF_ERR_INVALID, "latent has a non-finite value");
            }
    free(zc);
    free(bad);
    return rc;
}

int nesf_cycle_distances(nesf_model *m, int n, const float *z, nesf_structure *const *dec,
                         double *dist, nesf_error *err)
{
    const int L = nesf_model_latent_size(m);
    nesf_structure **ok = malloc((size_t)(n ? n : 1) * sizeof *ok);
    int *idx = malloc((size_t)(n ? n : 1) * sizeof *idx);
    float *ze = malloc((size_t)(n ? n : 1) * L * sizeof *ze);
    if (!ok || !idx || !ze) {
        free(ok), free(idx), free(ze);
        return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    }
    int k = 0;
    for (int i = 0; i < n; i++) {
        dist[i] = INFINITY; /* nothing decoded: as far from the latent as it gets */
        if (dec[i] && dec[i]->n > 0) ok[k] = dec[i], idx[k++] = i;
    }
    int rc = k ? nesf_model_encode(m, ok, k, ze, err) : NESF_OK;
    for (int j = 0; !rc && j < k; j++) {
        const float *a = ze + (size_t)j * L, *b = z + (size_t)idx[j] * L;
        double s = 0;
        for (int c = 0; c < L; c++) s += ((double)a[c] - b[c]) * ((double)a[c] - b[c]);
        dist[idx[j]] = sqrt(s);
    }
    free(ok);
    free(idx);
    free(ze);
    return rc;
}

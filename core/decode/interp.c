/* interp.c - see interp.h. */
#include "interp.h"

#include <stdlib.h>

double nesf_interp_t(int k, int steps) { return steps > 1 ? (double)k / (steps - 1) : 0.0; }

void nesf_interp_latents(const float *za, const float *zb, int latent, int steps, float *z)
{
    for (int k = 0; k < steps; k++) {
        double t = nesf_interp_t(k, steps);
        for (int i = 0; i < latent; i++)
            z[(size_t)k * latent + i] = (float)((1 - t) * za[i] + t * zb[i]);
    }
}

int nesf_interpolate_latents(nesf_model *m, const float *za, const float *zb, int steps,
                             const nesf_decode_opts *o, nesf_structure **out,
                             nesf_error *item_err, nesf_decode_stats *st, nesf_error *err)
{
    if (steps < 1 || steps > NESF_INTERP_MAX_STEPS)
        return nesf_fail(err, NESF_ERR_INVALID, "interpolation steps %d outside 1..%d", steps,
                         NESF_INTERP_MAX_STEPS);
    const int L = nesf_model_latent_size(m);
    float *z = malloc((size_t)steps * L * sizeof *z);
    if (!z) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    nesf_interp_latents(za, zb, L, steps, z);
    int rc = nesf_decode(m, steps, z, o, out, item_err, st, err);
    free(z);
    return rc;
}

int nesf_interpolate(nesf_model *m, nesf_structure *a, nesf_structure *b, int steps,
                     const nesf_decode_opts *o, nesf_structure **out, nesf_error *item_err,
                     nesf_decode_stats *st, nesf_error *err)
{
    const int L = nesf_model_latent_size(m);
    float *z = malloc((size_t)2 * L * sizeof *z);
    if (!z) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    nesf_structure *ab[2] = {a, b};
    int rc = nesf_model_encode(m, ab, 2, z, err);
    if (!rc) rc = nesf_interpolate_latents(m, z, z + L, steps, o, out, item_err, st, err);
    free(z);
    return rc;
}

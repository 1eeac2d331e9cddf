/* interp.h - latent-space interpolation (paper §2.4): encode two
 * structures, decode the linear blends (1 - t) z_a + t z_b at evenly spaced
 * t in [0, 1], all frames in one batched nesf_decode call. */
#ifndef NESF_INTERP_H
#define NESF_INTERP_H

#include "decode.h"
#include "model.h"
#include "structure.h"

/* t of frame k of steps frames: k / (steps - 1), 0 for a single frame. */
double nesf_interp_t(int k, int steps);

/* z (steps x latent) = the blends of za and zb. */
void nesf_interp_latents(const float *za, const float *zb, int latent, int steps, float *z);

/* Decodes the steps blends of latents za and zb into out[0..steps)
 * (caller frees each; item_err as in nesf_decode, may be NULL). */
int nesf_interpolate_latents(nesf_model *m, const float *za, const float *zb, int steps,
                             const nesf_decode_opts *o, nesf_structure **out,
                             nesf_error *item_err, nesf_decode_stats *st, nesf_error *err);

/* Same from two structures, encoded first. */
int nesf_interpolate(nesf_model *m, nesf_structure *a, nesf_structure *b, int steps,
                     const nesf_decode_opts *o, nesf_structure **out, nesf_error *item_err,
                     nesf_decode_stats *st, nesf_error *err);

/* Most frames one call decodes. */
#define NESF_INTERP_MAX_STEPS 1024

#endif

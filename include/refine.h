/* refine.h - encoding by analysis by synthesis: the encoder's latent of a
 * known structure, refined by gradient descent on the decoder's own loss.
 *
 * The encoder is a single amortised guess.  For a structure at hand (an
 * /encode or /reconstruct input, an eval structure) the decoder's fields
 * can be asked directly how well a latent explains it: the training loss
 * (spec §4: position MSE on query points around it, species cross-entropy,
 * lattice MSE) is a function of z alone once the network is fixed.  A few
 * Adam steps on z from the encoder's answer lower it, and the species field
 * in particular comes out much closer to the input (measured in
 * docs/training.md).  The decoder is in inference mode throughout (BN
 * folded, no dropout); the network's weights are not touched.
 *
 * Each structure is refined on its own with queries drawn from a seed that
 * depends on the step only, so a latent refined in a batch is bit-identical
 * to the same structure refined alone. */
#ifndef NESF_REFINE_H
#define NESF_REFINE_H

#include <stdint.h>

#include "error.h"
#include "model.h"
#include "sample.h"
#include "structure.h"

/* Steps of "refine": true, the default (docs/training.md: 20-120 steps
 * measured; 80 gains under a point over 40 at twice the cost). */
#define NESF_REFINE_STEPS 40

/* Restarts of the second look (second_look.h) that "second_look": true
 * and the defaults ask for. */
#define NESF_SECOND_LOOK_TRIES 3

typedef struct nesf_refine_opts {
    int steps;            /* Adam steps on z (0: the encoder's latent as it is) */
    float lr;             /* Adam step size (0.02) */
    float w_pos, w_spec, w_len, w_ang; /* loss weights (10, 1, 1, 100) */
    nesf_sampling sampling; /* query points: the paper's with a quarter of the
                               global and half the species points, + 256 cell points */
    uint64_t seed;        /* query draws (1) */
    /* the second look (second_look.h) at reconstructions that stay doubtful */
    int look_tries;       /* refinements again from the encoder's latent (3; 0: none) */
    float look_pct;       /* doubtful: cycle distance above this percentile of the
                             model's training sample (80) */
    int look_steps;       /* steps of each (200) */
    float look_lr;        /* their Adam step size (0.05) */
} nesf_refine_opts;

/* The defaults above, refinement on (NESF_REFINE_STEPS): every structure
 * a user sends is encoded this way unless asked not to (steps 0: the
 * encoder's latent alone, the paper's autoencoder of Table 1). */
void nesf_refine_opts_default(nesf_refine_opts *o);

/* Overrides from a JSON object {"steps", "lr", "seed", "loss_weights":
 * {"position", "species", "length", "angle"}, "global_fraction",
 * "species_fraction", "cell_points", "boundary_points", "second_look":
 * false | true | {"tries", "above_percentile", "steps", "lr"}}; unknown keys,
 * wrong types and out-of-range values fail naming the key.  A JSON integer
 * alone sets steps; true means NESF_REFINE_STEPS, false none. */
struct json_t;
int nesf_refine_opts_from_json(nesf_refine_opts *o, const struct json_t *v, nesf_error *err);

typedef struct nesf_refine_stats {
    double loss_before, loss_after; /* summed over the structures, weighted totals
                                       of the first and last step's queries */
    long field_rows;                /* query rows through the fields, all steps */
} nesf_refine_stats;

/* Refines the latents z (n x latent, host, in: the encoder's, out: refined)
 * of structures s.  Fails naming the element when a species is not among
 * the model's.  st may be NULL. */
int nesf_refine_latents(nesf_model *m, nesf_structure *const *s, int n, float *z,
                        const nesf_refine_opts *o, nesf_refine_stats *st, nesf_error *err);

/* The loss of latent z for structure s on refinement step `step`'s query
 * points (the same draw nesf_refine_latents makes at that step) and its
 * gradient dz (latent floats, host): for tests and tools. */
int nesf_refine_loss(nesf_model *m, const nesf_structure *s, const float *z,
                     const nesf_refine_opts *o, int step, double *loss, float *dz, nesf_error *err);

#endif

/* second_look.h - more refinement where a reconstruction stays doubtful.
 *
 * A refined latent decodes to the input's atom count for about 93 % of
 * LCS6Å val (docs/training.md); the wrong ones are nearly all among the
 * reconstructions whose cycle distance |E(D(z)) - E(S)| is high (all 20 of
 * 20 above the 80th percentile-like threshold, at 31 of 266 false
 * alarms).  For those alone the latent is refined again from the
 * encoder's latent E(S), longer, with a larger step and other query
 * draws, and decoded; the answer kept is the one, old or new, whose
 * decoded structure the encoder places nearest E(S).  The choice uses only
 * the model (the encoder as the judge of likeness), never a comparison of
 * the answer with the input structure.
 *
 * The threshold is a percentile of the model's own training sample
 * (domain.h, written by `nesf domain`); a model file without one gets no
 * second look. */
#ifndef NESF_SECOND_LOOK_H
#define NESF_SECOND_LOOK_H

#include "decode.h"
#include "model.h"
#include "refine.h"

typedef struct nesf_second_look_stats {
    int doubtful; /* reconstructions looked at again */
    int replaced; /* of them, answers replaced by a nearer one */
    int tries;    /* refinements and decodes run */
} nesf_second_look_stats;

/* The cycle distance above which a reconstruction of model m is doubtful
 * under o (look_pct of the model's training sample); INFINITY when o asks
 * for no second look (look_tries or steps 0) or m has no sample. */
double nesf_second_look_threshold(nesf_model *m, const nesf_refine_opts *o);

/* The second look at n reconstructions of structures s: z0 (n x latent,
 * host) the encoder's latents E(S), z the refined latents decoded into
 * rec[i] with decode options dopt (NULL: the defaults), cycle[i] their
 * distances |E(rec[i]) - z0[i]|.  Each one with a finite cycle[i] above
 * the threshold (INFINITY: nothing decoded, a failure) is refined from z0[i] look_tries times (seeds o->seed + 1,
 * + 2, ...) and decoded; a candidate whose distance is lower replaces
 * z[i], rec[i] (the old one freed) and cycle[i].  A candidate that fails
 * to decode is dropped.  st may be NULL.  Fails only on resources, a
 * backend error or a structure refinement cannot take (then z, rec and
 * cycle hold what was replaced so far, each consistent). */
int nesf_second_look(nesf_model *m, nesf_structure *const *s, int n, const float *z0, float *z,
                     nesf_structure **rec, double *cycle, const nesf_refine_opts *o,
                     const nesf_decode_opts *dopt, nesf_second_look_stats *st, nesf_error *err);

#endif

/* tsne.h - t-SNE (van der Maaten & Hinton 2008) of latent vectors into 2-D,
 * for the latent-space maps of paper §2.5 / Fig. 7.
 *
 * Two gradient methods over the same optimiser: exact (dense affinities,
 * O(n²) per iteration, for a few thousand points at most) and Barnes-Hut
 * (van der Maaten 2014: affinities on the 3·perplexity nearest neighbours,
 * repulsion through a quadtree with opening angle theta).  The optimiser is
 * the usual one: early exaggeration 12 for 250 iterations, momentum 0.5
 * then 0.8, per-coordinate gains.  Deterministic for a given seed. */
#ifndef NESF_TSNE_H
#define NESF_TSNE_H

#include <stdint.h>

#include "error.h"

typedef struct nesf_tsne_opts {
    double perplexity;    /* 30 (lowered to (n - 1) / 3 for tiny inputs) */
    int iterations;       /* 1000 */
    double theta;         /* Barnes-Hut opening angle, 0.5; 0 = exact */
    double learning_rate; /* 0 = auto: max(n / 48, 50) */
    uint64_t seed;        /* initial layout */
} nesf_tsne_opts;

void nesf_tsne_opts_default(nesf_tsne_opts *o);

/* Embeds n points of dimension d (X row-major, n x d) into Y (n x 2).
 * kl (may be NULL) receives the final KL divergence KL(P || Q) for the
 * exact method and NaN for Barnes-Hut.  Needs n >= 2. */
int nesf_tsne(const float *X, int n, int d, const nesf_tsne_opts *o, double *Y, double *kl,
              nesf_error *err);

#endif

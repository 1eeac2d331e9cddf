/* mlp.h - the one building block of every NeSF network: a stack of Linear
 * layers, each but the last followed by ReLU, then BatchNorm (when the MLP
 * has BN) and Dropout (when it has dropout).  A layer may take `extra`
 * trailing input columns (the query xyz of the fields), so its input row is
 * [features, extra] and its weight is [out, features + extra].  The extra
 * columns are xyz itself or, with Fourier features, [xyz, sin and cos of
 * xyz at a few frequencies], which let a coordinate MLP fit finer detail
 * (Tancik et al. 2020).
 *
 * The first layer may be "grouped": its features are one row per group
 * (the latent z of a structure) shared by all rows of the group, so z·W^T
 * is computed once per structure instead of once per query.
 *
 * Parameters live in the owner's flat arrays (nesf_net); layers hold
 * offsets into them.  Scratch comes from the net's arena: a forward's
 * activations stay valid until the arena is reset. */
#ifndef NESF_MLP_H
#define NESF_MLP_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"

#define NESF_MLP_MAX 16

typedef struct nesf_layer {
    int in, out, extra;   /* in = features + extra */
    int bn, dropout;      /* post-ops (never on the last layer) */
    size_t W, b;          /* offsets in params (and grads, folded) */
    size_t gamma, beta;   /* BN affine, offsets in params */
    size_t rmean, rvar;   /* BN running statistics, offsets in buffers */
} nesf_layer;

/* The query columns of a field MLP.  fourier = 0: xyz (3 columns); else
 * 3 + 6 fourier columns [x, y, z, then per frequency k and axis d
 * sin(w_k x_d), cos(w_k x_d)], w_k = 2 pi 2^k / period (period in Å). */
typedef struct nesf_xyz_cols {
    int layers;           /* leading layers that take them */
    int fourier;          /* 0..NESF_MLP_FOURIER_MAX */
    float period;         /* longest period, Å (fourier > 0) */
} nesf_xyz_cols;

#define NESF_MLP_FOURIER_MAX 8

typedef struct nesf_mlp {
    char name[32];        /* "decoder.position" */
    int n;
    int xw;               /* width of the query columns (0: none) */
    int fourier;          /* as nesf_xyz_cols */
    float period;
    nesf_layer L[NESF_MLP_MAX];
} nesf_mlp;

/* The arrays an MLP works on, all backend memory, shared by every MLP of a
 * model: params and grads have one layout; folded holds BN-folded copies
 * of W and b at the same offsets (inference); buffers hold BN statistics. */
typedef struct nesf_net {
    nesf_backend *be;
    float *params, *grads, *folded, *buffers;
    size_t nparams, nbuffers;
    float dropout, bn_momentum, bn_eps;
    nesf_arena arena;
} nesf_net;

typedef struct nesf_mlp_in {
    int rows;
    const float *x;       /* rows x L[0].in (ld ldx), when not grouped */
    int ldx;
    int S;                /* > 0: grouped first layer */
    const int *off;       /* S+1 row offsets, backend memory */
    const float *z;       /* S x (L[0].in - L[0].extra), ld ldz */
    int ldz;
    const float *xyz;     /* rows x 3, when a layer has extra columns (the MLP makes
                           * the Fourier columns itself); with Fourier columns
                           * the first layer must be grouped (else
                           * NESF_ERR_INVALID, or NULL from forward_infer) */
} nesf_mlp_in;

/* What backward needs from a training forward. */
typedef struct nesf_mlp_acts {
    float *x[NESF_MLP_MAX];      /* input of layer l (ld L[l].in); x[0] unused if grouped */
    float *r[NESF_MLP_MAX];      /* ReLU output of layer l */
    int ldr[NESF_MLP_MAX];
    float *mean[NESF_MLP_MAX], *invstd[NESF_MLP_MAX], *mask[NESF_MLP_MAX];
    float *out;                  /* rows x L[n-1].out */
    const float *xyz;            /* the query columns used (rows x m->xw) */
} nesf_mlp_acts;

/* Appends an MLP with the given widths (widths[0] = feature input,
 * widths[n] = output) to the layout; xyz (NULL: none) says which leading
 * layers take query columns and which.  Advances *np / *nb (param / buffer
 * counts). */
void nesf_mlp_layout(nesf_mlp *m, const char *name, int n, const int *widths,
                     const nesf_xyz_cols *xyz, int bn, int dropout, size_t *np, size_t *nb);

/* Training forward (batch BN statistics, dropout from seed, running
 * statistics updated) keeping activations in acts. */
int nesf_mlp_forward_train(nesf_net *net, const nesf_mlp *m, const nesf_mlp_in *in,
                           uint64_t seed, nesf_mlp_acts *acts);
/* Inference forward with the folded weights; returns the output (rows x
 * out, contiguous) from the arena, or NULL on allocation failure. */
float *nesf_mlp_forward_infer(nesf_net *net, const nesf_mlp *m, const nesf_mlp_in *in);

/* Backward: dout (rows x out, ld lddout) is consumed (overwritten).
 * Accumulates parameter gradients into net->grads (NULL: none are made,
 * only input gradients, for an MLP without BN: latent refinement); accumulates the input
 * gradient into dx (rows x L[0] features, ld lddx) or, for a grouped
 * first layer, into dz (S x features, ld lddz); either may be NULL. */
int nesf_mlp_backward(nesf_net *net, const nesf_mlp *m, const nesf_mlp_in *in,
                      const nesf_mlp_acts *acts, float *dout, int lddout, float *dx, int lddx,
                      float *dz, int lddz);

/* Recomputes the folded inference weights of m from params and BN
 * statistics (host staging; call after loading or training). */
int nesf_mlp_fold(nesf_net *net, const nesf_mlp *m, const float *params_host,
                  const float *buffers_host, float *folded_host);

size_t nesf_mlp_flops_per_row(const nesf_mlp *m, int grouped);

#endif

/* decode_internal.h - the inside of reconstruction (decode.h): one
 * skeleton (decode.c) runs spec §5 batch by batch for both algorithms, each
 * of which is a set of mode hooks (decode_paper.c, decode_fast.c), over the
 * pieces they share: the species vote (decode_vote.c), the output
 * structures (decode_build.c), NMS and its spatial hashing (decode_nms.c),
 * threads over a batch's structures (decode_threads.c).  Not a public
 * interface. */
#ifndef NESF_DECODE_INTERNAL_H
#define NESF_DECODE_INTERNAL_H

#include <stdint.h>

#include "decode.h"

#include "clock.h"

/* ---- the skeleton and its mode hooks ----
 * Per call: init, then batches of whole structures [b0, b0 + S), each
 * flow -> nms -> species vote -> lattice -> output structures.  The
 * skeleton times the steps (stats ms_flow, ms_nms, ms_species), counts
 * atoms, structures and repaired cells, runs the vote and builds the
 * outputs; a hook counts the rest of its stats in run->stats. */
typedef struct nesf__decode_run {
    nesf_field *f;
    const nesf_decode_opts *o;  /* checked */
    nesf_decode_stats stats;
    void *ws;                   /* the mode's workspace, from init to release */
} nesf__decode_run;

/* The atoms NMS found in a batch: those of its structure s are
 * atoms[aoff[s] .. aoff[s+1]) (host, x 3); cls (host, room for aoff[S])
 * receives their classes.  Owned by the mode's workspace. */
typedef struct nesf__batch_atoms {
    const int *aoff;
    const float *atoms;
    int *cls;
} nesf__batch_atoms;

typedef struct nesf__decode_mode {
    /* Plans the whole call and allocates run->ws (also on failure, for
     * release); *max_structs: the most structures a batch will hold. */
    int (*init)(nesf__decode_run *r, int *max_structs, nesf_error *err);
    /* The number of structures (>= 1) of the batch that starts at b0. */
    int (*batch)(nesf__decode_run *r, int b0);
    /* Steps 2-3: the batch's particles start and flow (cancellable
     * between steps). */
    int (*flow)(nesf__decode_run *r, int b0, int S, nesf_error *err);
    /* Steps 4-5: score filter and NMS of the flowed batch into *a. */
    int (*nms)(nesf__decode_run *r, int S, nesf__batch_atoms *a, nesf_error *err);
    /* Step 1: the batch's lattices, lengths Å and angles radians (S x 3,
     * host, owned by the workspace). */
    int (*lattice)(nesf__decode_run *r, int b0, int S, const float **len, const float **ang,
                   nesf_error *err);
    /* Frees run->ws (NULL-safe, after a failed init too). */
    void (*release)(nesf__decode_run *r);
} nesf__decode_mode;

extern const nesf__decode_mode nesf__mode_paper; /* decode_paper.c */
extern const nesf__decode_mode nesf__mode_fast;  /* decode_fast.c */

/* NESF_ERR_CANCELLED (with a message) when o->cancel asks to stop. */
int nesf__cancelled(const nesf_decode_opts *o, nesf_error *err);

/* ---- threads over a batch's structures (decode_threads.c) ----
 * fn(arg, s, tid) for every s in [0, S) on T threads (the caller's
 * included, tid 0; tid < T), each taking the next structure as it comes
 * free; a thread that fails to start leaves its share to the others.
 * T = nesf__structure_threads(S): the cores, at most 64 and S. */
int nesf__structure_threads(int S);
void nesf__for_structures(int S, int T, void (*fn)(void *arg, int s, int tid), void *arg);

/* ---- NMS's spatial hashing, also fast mode's merging (decode_nms.c) ----
 * Cubic cells: a cell's key packs three 21-bit coordinates, biased so that
 * negative positions fit. */
typedef struct nesf__cell_entry {
    uint64_t key;
    int idx;
} nesf__cell_entry;
#define NESF__CELL_BIAS (1 << 20)
#define NESF__CELL_MAX ((1 << 21) - 1)
static inline uint64_t nesf__cell_key(uint64_t x, uint64_t y, uint64_t z)
{
    return (x << 42) | (y << 21) | z;
}
/* qsort order of cell entries: by key, then by index */
int nesf__cmp_cell(const void *a, const void *b);

/* ---- queries on an offset grid around atoms (decode_vote.c) ----
 * The species vote and the position polish ask a field at each atom plus
 * every offset of arange(lo, hi, step)^3, in chunks of whole atoms. */
typedef struct nesf__around {
    nesf_backend *be;
    int P;              /* offsets per atom */
    int chunk;          /* atoms per field call */
    float *sq_d;        /* backend: chunk*P queries */
    float *sq_h;        /* host: chunk*P queries */
    float *ofs_h;       /* host: P offsets */
    int *sp_off;        /* host: max_structs+1 */
} nesf__around;

int nesf__around_init(nesf__around *q, nesf_backend *be, float lo, float hi, float step,
                      int max_structs, nesf_error *err);
void nesf__around_free(nesf__around *q);
/* Fills and uploads the queries of atoms [a0, a1) (host, x 3) of the
 * structures whose atoms are aoff[.]; *sf, *Sc: the first of those
 * structures and how many, sp_off their rows within the chunk. */
int nesf__around_fill(nesf__around *q, const int *aoff, const float *atoms, int a0, int a1,
                      int *sf, int *Sc, nesf_error *err);

/* ---- the species vote, step 6 (decode_vote.c) ---- */
typedef struct nesf__vote {
    nesf__around q;     /* the vote grid around each atom */
    int A;              /* species */
    float *sl_d;        /* backend: chunk*P logits */
    int *cls_d;         /* backend: chunk classes */
} nesf__vote;

int nesf__vote_init(nesf__vote *v, nesf_backend *be, const nesf_decode_opts *o, int A,
                    int max_structs, nesf_error *err);
/* Frees v's buffers (also of a zeroed or failed-init v). */
void nesf__vote_free(nesf__vote *v);
/* Classes of the atoms of field structures [first, first + S): those of
 * structure s are atoms[aoff[s] .. aoff[s+1]) (host, x 3); cls (host)
 * receives aoff[S] classes; *evals grows by the species queries. */
int nesf__vote_run(nesf__vote *v, nesf_field *f, int first, int S, const int *aoff,
                   const float *atoms, int *cls, long *evals, nesf_error *err);

/* ---- the position polish (decode_polish.c) ----
 * With o->polish > 0 each NMS atom moves to the mean of q + f_p(q) over the
 * offsets q of a 5^3 grid of half-width o->polish around it: the field's
 * own estimate of the atom, averaged, instead of one particle's end. */
typedef struct nesf__polish {
    nesf__around q;
    float radius;       /* estimates farther than this from the atom are another's */
    float *sv_d;        /* backend: chunk*P vectors */
    float *sv_h;        /* host: the same */
    float *out;         /* host: polished atoms, cap x 3 */
    int cap;
} nesf__polish;

int nesf__polish_init(nesf__polish *p, nesf_backend *be, const nesf_decode_opts *o,
                      int max_structs, nesf_error *err);
void nesf__polish_free(nesf__polish *p);
/* The polished atoms of field structures [first, first + S) (host,
 * aoff[S] x 3, owned by p, valid until the next call); *evals grows. */
int nesf__polish_run(nesf__polish *p, nesf_field *f, int first, int S, const int *aoff,
                     const float *atoms, const float **out, long *evals, nesf_error *err);

/* ---- the output structures (decode_build.c) ---- */

/* The output structures of field structures [b0, b0 + S): predicted
 * lattices len, ang (S x 3: lengths Å, angles radians), atoms (host, x 3)
 * and classes of structure s from aoff[s] to aoff[s+1].  A degenerate cell
 * (see repair_lattice; *repaired grows by the cells repaired) fails its
 * item when item_err is given, else the call. */
int nesf__build_batch(const nesf_field *f, const nesf_decode_opts *o, int b0, int S,
                      const float *len, const float *ang, const int *aoff, const float *atoms,
                      const int *cls, nesf_structure **out, nesf_error *item_err, int *repaired,
                      nesf_error *err);
/* Whether p is a cell that a repair would keep as it is (then *lat is it). */
int nesf__sane_cell(const nesf_cellpar *p, nesf_lattice *lat);

#endif

/* decode_internal.h - the parts of reconstruction that the paper algorithm
 * (decode.c) and the fast one (decode_fast.c) share: the species vote
 * (spec §5 step 6), building the output structure, a clock.  Not a public
 * interface. */
#ifndef NESF_DECODE_INTERNAL_H
#define NESF_DECODE_INTERNAL_H

#include <stdint.h>

#include "decode.h"

double nesf__now_ms(void);

/* Spatial hashing on cubic cells (NMS neighbours, fast-mode merging): a
 * cell's key packs three 21-bit coordinates, biased so that negative
 * positions fit. */
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

/* Species vote buffers, sized at init for the options' offset grid and up
 * to max_structs structures per call. */
typedef struct nesf__vote {
    nesf_backend *be;
    int P;              /* offsets per atom */
    int A;              /* species */
    int chunk;          /* atoms per field call */
    float *sq_d, *sl_d; /* backend: chunk*P queries, their logits */
    int *cls_d;         /* backend: chunk classes */
    float *sq_h;        /* host: chunk*P queries */
    float *ofs_h;       /* host: P offsets */
    int *sp_off;        /* host: max_structs+1 */
} nesf__vote;

int nesf__vote_init(nesf__vote *v, nesf_backend *be, const nesf_decode_opts *o, int A,
                    int max_structs, nesf_error *err);
void nesf__vote_free(nesf__vote *v);
/* Classes of the atoms of field structures [first, first + S): those of
 * structure s are atoms[aoff[s] .. aoff[s+1]) (host, x 3); cls (host)
 * receives aoff[S] classes; *evals grows by the species queries. */
int nesf__vote_run(nesf__vote *v, nesf_field *f, int first, int S, const int *aoff,
                   const float *atoms, int *cls, long *evals, nesf_error *err);

/* The output structures of field structures [b0, b0 + S): predicted
 * lattices len, ang (S x 3: lengths Å, angles radians), atoms (host, x 3)
 * and classes of structure s from aoff[s] to aoff[s+1].  A degenerate cell
 * (see repair_lattice; *repaired grows by the cells repaired) fails its
 * item when item_err is given, else the call. */
int nesf__build_batch(const nesf_field *f, const nesf_decode_opts *o, int b0, int S,
                      const float *len, const float *ang, const int *aoff, const float *atoms,
                      const int *cls, nesf_structure **out, nesf_error *item_err, int *repaired,
                      nesf_error *err);
/* Frees and clears out[0..n). */
void nesf__free_outputs(nesf_structure **out, int n);
/* Whether p is a cell that a repair would keep as it is (then *lat is it). */
int nesf__sane_cell(const nesf_cellpar *p, nesf_lattice *lat);
/* NESF_ERR_CANCELLED (with a message) when o->cancel asks to stop. */
int nesf__cancelled(const nesf_decode_opts *o, nesf_error *err);

/* Fast mode (decode_fast.c): nesf_decode_field's contract, called with
 * checked options, out[] and item_err[] cleared and f->n > 0. */
int nesf__decode_fast(nesf_field *f, const nesf_decode_opts *o, nesf_structure **out,
                      nesf_error *item_err, nesf_decode_stats *st, nesf_error *err);

#endif

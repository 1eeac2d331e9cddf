/* consistency.h - is a decoded structure a fixed point of decode∘encode?
 *
 * A doubt signal for decoded structures: re-encode the answer and decode
 * that latent again with the same options.  A right reconstruction nearly
 * always comes back with its own composition; a wrong one rarely does
 * (shipped LCS6 model, fast decoder, val: 23 of 34 wrong atom counts
 * flagged at 3 false alarms of 252; docs/training.md).  It costs one more
 * encode and decode per structure, so callers ask for it. */
#ifndef NESF_CONSISTENCY_H
#define NESF_CONSISTENCY_H

#include "decode.h"
#include "model.h"

typedef struct nesf_fixed_point {
    int checked;    /* 0: nothing to check (no structure, or no atoms) */
    int consistent; /* 1: the re-decode has the same composition */
    int atoms;      /* atoms of the re-decode; -1 when it failed */
} nesf_fixed_point;

/* Checks n decoded structures dec[i] (NULL or empty ones are left
 * unchecked) of model m.  o: the options they were decoded with (NULL:
 * the defaults); its symmetrize step is skipped for the re-decode, which
 * compares compositions, not cells.  out[i] (n entries, caller's memory)
 * receives the verdicts.  A re-decode that fails for one structure is an
 * inconsistent verdict, not an error; the call fails only on resources or
 * a backend error (out is then unspecified). */
int nesf_fixed_point_check(nesf_model *m, nesf_structure *const *dec, int n, const nesf_decode_opts *o,
                           nesf_fixed_point *out, nesf_error *err);

/* 1 when a and b hold the same number of atoms of every element. */
int nesf_same_composition(const nesf_structure *a, const nesf_structure *b);

#endif

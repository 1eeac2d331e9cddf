/* sample.h - training query points (spec §4) and their targets.
 *
 * For every structure of a batch, drawn afresh from a seed:
 *   global grid  arange(bbmin - pad, bbmax + pad, step) per axis + N(0, sigma²),
 *                optionally a random fraction of it (fewer queries per step);
 *   local grid   arange(lo, hi, step)³ offsets around each atom + N(0, sigma²);
 *   species grid the same with the species parameters (216 points per atom);
 *   cell points  (not in the paper, 0 there) uniform in the unit cell: the
 *                global grid puts few points inside a small cell, so an
 *                under-trained field smooths over the empty sites between
 *                atoms and turns them into sinks that decode as atoms;
 *   boundary points (not in the paper, 0 there) uniform in the unit cell
 *                but kept only where the second-nearest atom is less than
 *                boundary_width farther than the nearest: the faces of the
 *                atoms' Voronoi cells, where the target jumps from one atom
 *                to another and a smooth field goes wrong.
 * Position targets are the vector to the nearest atom of the cell (not
 * periodic), species labels the nearest atom's class. */
#ifndef NESF_SAMPLE_H
#define NESF_SAMPLE_H

#include <stdint.h>

#include "error.h"
#include "structure.h"

typedef struct nesf_sampling {
    float global_step, global_pad, global_sigma, global_fraction;
    float local_lo, local_hi, local_step, local_sigma;
    float species_lo, species_hi, species_step, species_sigma, species_fraction;
    int cell_points, boundary_points;
    float boundary_width;
} nesf_sampling;

void nesf_sampling_paper(nesf_sampling *s);

/* Queries of one batch, host memory, owned (nesf_queries_free). */
typedef struct nesf_queries {
    int S;
    int *pos_off;      /* S+1 */
    float *pos_xyz;    /* P x 3 */
    float *pos_tgt;    /* P x 3: nearest atom - query */
    int *spec_off;     /* S+1 */
    float *spec_xyz;   /* Q x 3 */
    int *spec_lbl;     /* Q: species class of the nearest atom */
} nesf_queries;

/* Samples queries for S structures whose species are already classes in
 * cls[s][i] (the caller maps Z to classes).  bbmin/bbmax: the model's box.
 * Same seed, same queries. */
int nesf_queries_sample(const nesf_sampling *sp, const float bbmin[3], const float bbmax[3],
                        nesf_structure *const *s, const int *const *cls, int S, uint64_t seed,
                        nesf_queries *q, nesf_error *err);
void nesf_queries_free(nesf_queries *q);

/* Nearest atom of s (which must have atoms) to point p: index, and writes
 * atom - p into v (the position target). */
int nesf_nearest_atom(const nesf_structure *s, const float p[3], float v[3]);

/* Number of points of arange(lo, hi, step) (numpy semantics, robust to
 * rounding: arange(-0.3, 0.3, 0.1) has 6). */
int nesf_arange_count(double lo, double hi, double step);

#endif

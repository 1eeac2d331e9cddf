/* metrics.h - reconstruction errors (spec §6), pooled over a split as in
 * the paper's Table 1.
 *
 * An accumulator takes (true, reconstructed) structure pairs.  Distances
 * are Cartesian and non-periodic; species are compared by atomic number.
 * A structure with no detected atoms (or no reconstruction at all) counts
 * towards the atom-count error; its true atoms have no nearest detected
 * atom, so they are left out of the "actual" position and species means
 * and counted in `undetected_atoms` instead. */
#ifndef NESF_METRICS_H
#define NESF_METRICS_H

#include "structure.h"

typedef struct nesf_metrics {
    long structures;
    long count_wrong;       /* structures with |D| != |T| */
    long true_atoms;        /* atoms of all true structures */
    long det_atoms;         /* atoms of all reconstructions */
    long act_atoms;         /* true atoms that had a nearest detected atom */
    double pos_act_sum;     /* sum over those of the distance, Å */
    long spec_act_wrong;    /* ... whose nearest detected atom has another species */
    double pos_det_sum;     /* sum over detected atoms of the distance to the nearest true atom */
    long spec_det_wrong;
    long undetected_atoms;  /* true atoms of structures with no detections */
    long lattices;          /* structures whose lattice was compared */
    double len_abs_sum;     /* sum of |a - a'| + |b - b'| + |c - c'|, Å */
    double ang_abs_sum;     /* same for the angles, degrees */
} nesf_metrics;

/* The Table 1 row; a figure with nothing to average over is NaN. */
typedef struct nesf_metrics_summary {
    double count_err_pct;  /* atom-count error, % of structures */
    double pos_act, pos_det;          /* Å */
    double spec_act_pct, spec_det_pct; /* % of atoms */
    double len_mae;        /* Å */
    double ang_mae;        /* degrees */
} nesf_metrics_summary;

void nesf_metrics_init(nesf_metrics *m);
/* Adds one pair; rec may be NULL (failed reconstruction: no atoms, no
 * lattice).  Same as add_atoms then add_lattice with rec's cell. */
void nesf_metrics_add(nesf_metrics *m, const nesf_structure *truth, const nesf_structure *rec);
/* The atoms part only (counts the structure). */
void nesf_metrics_add_atoms(nesf_metrics *m, const nesf_structure *truth,
                            const nesf_structure *rec);
/* The lattice part only: the predicted cell parameters (degrees), e.g.
 * the lattice heads' raw output when the decoded cell had to be repaired. */
void nesf_metrics_add_lattice(nesf_metrics *m, const nesf_structure *truth,
                              const nesf_cellpar *pred);
void nesf_metrics_merge(nesf_metrics *dst, const nesf_metrics *src);
void nesf_metrics_summarize(const nesf_metrics *m, nesf_metrics_summary *out);

#endif

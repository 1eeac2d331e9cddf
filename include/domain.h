/* domain.h - what a model was trained on, so that an answer can say when
 * its input lies outside: the training set's largest atom count, elements
 * and ranges of cell lengths and angles (the bounding box is the model's
 * own, model.h), and the distribution of the cycle distance
 * |E(D(z)) - z| over a sample of the training set, which turns a decoded
 * structure's cycle distance into a confidence percentile.
 *
 * Stored in the model file's metadata under "domain" as JSON text
 * (nesf_domain_to_json); written at training time and by `nesf domain`
 * for older files.  A nesf_domain is a plain value (no allocations). */
#ifndef NESF_DOMAIN_H
#define NESF_DOMAIN_H

#include "elements.h"
#include "error.h"
#include "structure.h"

#define NESF_DOMAIN_QUANTILES 101 /* 0, 1, ..., 100 % */

typedef struct nesf_domain {
    int structures;                 /* training structures measured; 0: no record */
    int max_atoms;
    unsigned char element[NESF_MAX_Z + 1]; /* 1: Z occurs in the training set */
    double len_lo[3], len_hi[3];    /* a, b, c, Å */
    double ang_lo[3], ang_hi[3];    /* alpha, beta, gamma, degrees */
    double min_distance;            /* shortest interatomic distance, Å (periodic;
                                       0: not recorded, older files) */
    /* cycle-distance calibration; cycle_n = 0: none */
    int cycle_n;                    /* sampled structures */
    char cycle_decoder[16];         /* decoding mode used ("fast") */
    double cycle_q[NESF_DOMAIN_QUANTILES]; /* quantiles of the distance */
} nesf_domain;

/* The domain of n training structures (no cycle calibration). */
void nesf_domain_from_structures(nesf_structure *const *s, int n, nesf_domain *d);

/* JSON text of d (caller frees; NULL when out of memory) and back.
 * from_json checks every field and range (NESF_ERR_FORMAT naming it). */
char *nesf_domain_to_json(const nesf_domain *d);
int nesf_domain_from_json(const char *text, nesf_domain *d, nesf_error *err);

/* Quantiles 0..100 % of n distances (sorted in place; non-finite ones
 * count as larger than all others) into d's calibration. */
void nesf_domain_set_cycle(nesf_domain *d, double *dist, int n, const char *decoder);

/* Percentile (0..100) of cycle distance x in the calibration: the share of
 * sampled training structures with a smaller distance, interpolated
 * between quantiles; 100 for a non-finite x.  -1 without calibration. */
double nesf_domain_percentile(const nesf_domain *d, double x);

/* ---- checks of an input structure ---- */

typedef struct nesf_domain_warning {
    char code[32];     /* outside_bbox, too_many_atoms, unknown_element,
                          cell_length_out_of_range, cell_angle_out_of_range */
    char message[192];
} nesf_domain_warning;

#define NESF_DOMAIN_MAX_WARNINGS 8

/* Where s lies outside: its atoms (in the encoder's orientation) outside
 * the bounding box [bbmin, bbmax] (checked always), and, when d records a
 * domain (d may be NULL or empty), more atoms than any training structure,
 * elements absent from the training set, and cell lengths or angles beyond
 * the training ranges.  Writes up to max warnings (one per code) and
 * returns their count. */
int nesf_domain_check(const nesf_domain *d, const float bbmin[3], const float bbmax[3],
                      const nesf_structure *s, nesf_domain_warning *w, int max);

#endif

/* decode.h - reconstruction (spec §5): latent -> crystal structure.
 *
 * Particles start on a grid over the bounding box, flow along the position
 * field for a fixed number of steps, are scored by |f_p|² of the last step,
 * clustered by non-max suppression and labelled by a species-field vote.
 *
 * The algorithm runs against an abstract field (nesf_field) so that the
 * same code decodes the network's fields (nesf_decode) and the exact field
 * of a known structure (nesf_field_truth, which checks the algorithm
 * independently of training).  Particle updates run on the field's backend
 * (GEMMs through the model, axpy, row_sqnorm), and so does the species vote
 * (only one class per atom comes back).  NMS runs on the host after one
 * download per batch, one structure per core: it is a greedy, data-dependent
 * sort-and-sweep per structure, which a GPU would serialise anyway, and the
 * data moved is only the final particles.
 *
 * Many latents are decoded together: all particles of all structures of a
 * batch go through one chain of field evaluations per step.
 *
 * Output cell: the lattice is nesf_lattice_from_params of the predicted
 * (a, b, c, alpha, beta, gamma), i.e. a along +x, b in the xy-plane, c
 * completing a right-handed cell: the orientation in which the datasets
 * store their cells and hence the frame the position field was trained
 * in.  Atoms keep the decoded Cartesian positions; fractional coordinates
 * are cart · lattice⁻¹ and are not wrapped.  (A few dataset cells, 20 of
 * LCS6 train and 1 of val, are stored rotated away from that orientation;
 * for them the Cartesian positions still match, the fractional ones are
 * off by the small rotation.) */
#ifndef NESF_DECODE_H
#define NESF_DECODE_H

#include "backend.h"
#include "error.h"
#include "model.h"
#include "sample.h" /* nesf_arange_count */
#include "structure.h"

struct json_t; /* jansson */

typedef struct nesf_decode_opts {
    float grid_step;     /* particle grid spacing, Å (0.5) */
    float grid_pad;      /* grid covers [bbmin - pad, bbmax + pad) per axis (0.5) */
    int iterations;      /* p <- p + f_p(p) steps (64), >= 1 */
    float score_max;     /* drop particles with |f_p| > score_max, Å (0.9) */
    float nms_radius;    /* NMS sphere radius, Å (0.5); 0: from the model's training
                            set, max(0.5, 0.9 x its shortest interatomic distance)
                            (domain.h; 0.5 when not recorded): no two atoms
                            closer than the training set ever had */
    int nms_min_count;   /* particles a sphere needs to emit an atom (10) */
    float species_lo, species_hi, species_step; /* vote grid arange(lo, hi, step)³
                                                   around each atom (-0.3, 0.3, 0.1) */
    float polish;        /* > 0: each atom moves to the mean of q + f_p(q) over a
                            5^3 grid of this half-width around it, Å (0.6, the
                            training's local query grid; 0: where NMS put it,
                            spec §5 as the paper has it; docs/decoding.md) */
    int max_atoms;       /* atoms kept per structure, lowest scores first (1024) */
    int max_particles;   /* refuse grids larger than this per structure (2^21) */
    long batch_particles;/* particles evaluated together; structures are
                            decoded in batches of about this size (2^20) */
    int repair_lattice;  /* 0: a predicted (a, b, c, alpha, beta, gamma) that
                            is no cell fails that structure; 1: it is replaced
                            by the nearest sane cell (lengths >= 0.5 Å, angles
                            pulled towards 90° until the cell has volume) and
                            counted in stats.lattice_repaired (0) */
    /* The algorithm: NESF_DECODE_PAPER, spec §5 exactly, or
     * NESF_DECODE_FAST (decode_fast.c); JSON "mode": "paper" | "fast".
     * Fast mode: the lattice heads run first and only the points of the
     * paper's grid within fast_margin Å of the predicted cell get a
     * particle.  A particle retires when its step is below fast_tol Å;
     * particles within the same fast_merge Å cell merge (0: never) and
     * count as the particles they merged in NMS; iterations bounds the
     * steps.  Every other option means what it means in paper mode. */
    int mode;
    float fast_margin;   /* (1.0) */
    float fast_tol;      /* (0.001) */
    float fast_merge;    /* (0.01) */
    /* Symmetrized output: with symmetrize = 1 (JSON true) every decoded
     * structure is refined to the most symmetric space group that moves no
     * atom farther than symprec Å (nesf_structure_standardize) and
     * returned as its standardized cell, "conventional" or "primitive"
     * (JSON "cell").  A structure spglib
     * cannot refine is returned as decoded and counted in
     * stats.symmetrize_failed. */
    int symmetrize;      /* (0) */
    float symprec;       /* (0.1) */
    int cell;            /* NESF_CELL_CONVENTIONAL (0) or NESF_CELL_PRIMITIVE */
    /* Not an option (NULL from nesf_decode_opts_default, never read from
     * JSON): when set, called before every flow step of every batch of
     * structures; nonzero stops the whole call with NESF_ERR_CANCELLED (no
     * outputs), so abandoned work ends within one step. */
    int (*cancel)(void *arg);
    void *cancel_arg;
} nesf_decode_opts;

enum { NESF_DECODE_PAPER = 0, NESF_DECODE_FAST = 1 };
enum { NESF_CELL_CONVENTIONAL = 0, NESF_CELL_PRIMITIVE = 1 };

/* The paper's settings (spec §5). */
void nesf_decode_opts_default(nesf_decode_opts *o);
/* Overrides from a JSON object whose keys are the field names above (the
 * daemon's "options"); unknown keys, wrong types and out-of-range values
 * are rejected with a message naming the key.  o keeps its other values. */
int nesf_decode_opts_from_json(nesf_decode_opts *o, const struct json_t *obj, nesf_error *err);
/* Same, from JSON text. */
int nesf_decode_opts_from_text(nesf_decode_opts *o, const char *text, nesf_error *err);
/* Checks ranges (also done by every decode call). */
int nesf_decode_opts_check(const nesf_decode_opts *o, nesf_error *err);
/* The options as a JSON object text (caller frees). */
char *nesf_decode_opts_to_json(const nesf_decode_opts *o);

typedef struct nesf_decode_stats {
    int structures;
    long particles;      /* initial particles over all structures */
    long field_evals;    /* query points evaluated (position + species) */
    long kept;           /* particles under the score threshold */
    long atoms;          /* atoms emitted */
    int truncated;       /* structures that hit max_atoms */
    int lattice_repaired;/* structures whose cell was repaired */
    double ms;           /* wall time of the whole call */
    double ms_flow;      /* particle flow (position field) */
    double ms_nms;       /* download, scoring, NMS, the polish */
    double ms_species;   /* species field and vote */
    long steps;          /* sum over structures of the flow steps they ran */
    long merged;         /* particles merged into others (fast mode) */
    int symmetrized;     /* structures refined to their space group */
    int symmetrize_failed; /* structures spglib could not refine */
} nesf_decode_stats;

/* sum += st, field by field (the counts and times of several calls). */
void nesf_decode_stats_add(nesf_decode_stats *sum, const nesf_decode_stats *st);

/* ---- fields ----
 * A field answers queries for S structures.  Query points and outputs are
 * backend memory; off is a HOST array of S+1 row offsets (structure s owns
 * rows [off[s], off[s+1]) of xyz and out), as in model.h.  first is the
 * index of the first of the S structures within the field, so a caller can
 * work through the field's structures in batches. */
typedef struct nesf_field nesf_field;
struct nesf_field {
    nesf_backend *be;
    int n;                      /* structures */
    int num_species;            /* A: species logits per point */
    const int *species_z;       /* class -> atomic number, A entries */
    float bbox_min[3], bbox_max[3];
    float min_distance;         /* shortest interatomic distance of the training
                                   set, Å (0: unknown), for nms_radius 0 */
    /* out: Q x 3, vector from each point to the nearest atom */
    int (*position)(nesf_field *f, int first, int S, const int *off, const float *xyz,
                    float *out, nesf_error *err);
    /* out: Q x A species logits */
    int (*species)(nesf_field *f, int first, int S, const int *off, const float *xyz,
                   float *out, nesf_error *err);
    /* lattice of structures [first, first + S): lengths Å, angles radians,
     * S x 3 each, host memory */
    int (*lattice)(nesf_field *f, int first, int S, float *lengths, float *angles,
                   nesf_error *err);
    void (*release)(nesf_field *f);
    void *impl;
};

/* The network's fields for n latents z (host, n x latent); z is copied to
 * the model's backend.  Release with nesf_field_release. */
int nesf_field_model(nesf_model *m, int n, const float *z, nesf_field *f, nesf_error *err);
/* The exact field of n known structures: position = nearest atom - p
 * (non-periodic, the cell's own atoms), species logits = one-hot of the
 * nearest atom's class (species_z lists class -> Z, A entries; an atom
 * whose Z is not listed fails with NESF_ERR_NOTFOUND), lattice = the
 * structure's.  The structures must outlive the field.  Ties between
 * equidistant atoms go to the lower index. */
int nesf_field_truth(nesf_backend *be, nesf_structure *const *s, int n, const int *species_z,
                     int num_species, const float bbox_min[3], const float bbox_max[3],
                     nesf_field *f, nesf_error *err);
void nesf_field_release(nesf_field *f);

/* ---- decoding ----
 * out[i] (i < f->n) receives a new structure (caller frees) with the
 * field's lattice, the detected atoms' Cartesian positions and species.
 * A structure that cannot be built (non-finite latent, degenerate
 * predicted lattice without repair_lattice) fails the call, unless item_err is given: then
 * out[i] is NULL, item_err[i] says why, and the call goes on.  Nothing is
 * left allocated on failure.  st may be NULL. */
int nesf_decode_field(nesf_field *f, const nesf_decode_opts *o, nesf_structure **out,
                      nesf_error *item_err, nesf_decode_stats *st, nesf_error *err);

/* Decodes n latents (host memory, n x latent) of model m in batched
 * passes (all particles of a batch through one GEMM chain per step).
 * o may be NULL for the defaults. */
int nesf_decode(nesf_model *m, int n, const float *z, const nesf_decode_opts *o,
                nesf_structure **out, nesf_error *item_err, nesf_decode_stats *st,
                nesf_error *err);

/* The symmetrize option (o->symmetrize, symprec, cell) applied to n
 * decoded structures in place, as every decode does when it is set:
 * out[i] is replaced by its refined cell; a structure spglib cannot refine
 * (or NULL, or empty) is left as it is, and counted in
 * st->symmetrize_failed (refined ones in st->symmetrized).  For callers
 * that need the structures as decoded first (nesfd's confidence). */
void nesf_decode_symmetrize(const nesf_decode_opts *o, nesf_structure **out, int n,
                            nesf_decode_stats *st);

/* The cycle distance |E(D(z)) - z| (Euclidean, latent units) of n latents
 * z (host, n x latent) given their decoded structures dec[i]: how far the
 * decoded structure's own latent lies from the one it came from; small
 * when the decoder's answer is one the encoder recognises.  A NULL or
 * empty dec[i] gets INFINITY.  The confidence of a decoded structure is
 * this distance as a percentile of the training set's (domain.h). */
int nesf_cycle_distances(nesf_model *m, int n, const float *z, nesf_structure *const *dec,
                         double *dist, nesf_error *err);

/* Non-max suppression of one structure's particles (spec §5 step 5):
 * pos (n x 3) and squared scores s (n) of the particles that passed the
 * score filter.  Writes up to max_out atom positions (x 3) in emission
 * order (lowest score first) and returns their count, or -1 when out of
 * memory; *more (may be NULL) is set when further atoms were dropped.
 * Neighbours are found through a hash grid of cell size radius, so a
 * field that scatters particles costs O(n), not O(n²).  Exposed for tests. */
int nesf_nms(int n, const float *pos, const float *s, float radius, int min_count,
             int max_out, float *atoms, int *more);
/* The same with particle i standing for w[i] particles (w NULL: 1 each):
 * a group emits an atom when its weight reaches min_weight, at its mean
 * weighted by w·softmax(-s).  nesf_nms is the case w = NULL. */
int nesf_nms_weighted(int n, const float *pos, const float *s, const float *w, float radius,
                      double min_weight, int max_out, float *atoms, int *more);

#endif

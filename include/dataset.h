/* dataset.h - the JSON Lines datasets of ../shared/datasets and their
 * meta.json species vocabularies (species class index -> Z).
 * A dataset owns its structures; nesf_dataset_free releases them. */
#ifndef NESF_DATASET_H
#define NESF_DATASET_H

#include "error.h"
#include "structure.h"

#define NESF_VOCAB_MAX 128

typedef struct nesf_vocab {
    char name[64];
    int n;                    /* number of species classes (A) */
    int z[NESF_VOCAB_MAX];    /* class -> atomic number */
} nesf_vocab;

/* Reads meta.json ({"name", "species": [symbol...], "num_species"}). */
int nesf_vocab_load(const char *meta_path, nesf_vocab *v, nesf_error *err);
/* Class of atomic number z, or -1. */
int nesf_vocab_class(const nesf_vocab *v, int z);

typedef struct nesf_dataset {
    int n;
    nesf_structure **s;
} nesf_dataset;

/* Loads every line of a .jsonl file (one structure per line, the datasets'
 * format; cart_coords win over frac_coords when both are present).  Errors
 * name the file and line.  Empty lines are skipped. */
int nesf_dataset_load(const char *path, nesf_dataset *d, nesf_error *err);
void nesf_dataset_free(nesf_dataset *d);

/* Per-axis min and max of the Cartesian coordinates of every atom of the
 * first n structures of s: on the training set, the model's bounding box
 * (spec §2).  lo > hi when there are no atoms. */
void nesf_structures_bbox(nesf_structure *const *s, int n, float lo[3], float hi[3]);

#endif

/* model_internal.h - the model's layout, shared by model.c and train.c
 * (not part of the public API). */
#ifndef NESF_MODEL_INTERNAL_H
#define NESF_MODEL_INTERNAL_H

#include "domain.h"
#include "mlp.h"
#include "model.h"
#include "safetensors.h"

typedef struct nesf_tensor_info {
    char name[80];
    int ndim;
    int64_t shape[2];
    size_t off;       /* in params or buffers */
    int buffer;       /* 1: BN running statistics (buffers), 0: parameter */
} nesf_tensor_info;

struct nesf_model {
    nesf_model_config cfg;
    int A;
    int species_z[NESF_MAX_SPECIES];
    float bbmin[3], bbmax[3];
    nesf_mlp mlp[NESF_NUM_MLPS];
    nesf_net net;
    nesf_tensor_info *tensors;
    int ntensors;
    char *train_config;   /* JSON text or NULL */
    nesf_domain domain;   /* training domain; domain.structures = 0: none recorded */
};

/* Host-side inputs of the encoder for a batch of structures (canonical
 * orientation): atom coordinates, one-hot species, atom offsets and the
 * six lattice features (a, b, c in Å, angles in radians). */
typedef struct nesf_enc_batch {
    int S, N;
    int *off;        /* S+1 */
    float *xyz;      /* N x 3 */
    float *onehot;   /* N x A */
    float *latf;     /* S x 6 */
} nesf_enc_batch;

int nesf_enc_batch_build(const nesf_model *m, nesf_structure *const *s, int n,
                         nesf_enc_batch *b, nesf_error *err);
void nesf_enc_batch_free(nesf_enc_batch *b);

/* Writes the model's tensors and metadata through w (which may already
 * hold extra tensors, e.g. a checkpoint's "trainer.*" state) to path.  The
 * loader ignores "trainer.*" tensors, so a checkpoint is also a model. */
int nesf_model_write(nesf_model *m, nesf_st_writer *w, const char *path,
                     const char *train_config_json, nesf_error *err);

/* Re-folds BN into the inference weights (after loading or training). */
int nesf_model_refold(nesf_model *m, nesf_error *err);

#endif

/* model_internal.h - the model's layout, shared by model.c and train.c
 * (not part of the public API).
 *
 * Backend calls in both files: every upload, download, copy, sync and
 * arena reset has its result checked (tests/unit/test_backend_fail.c fails
 * each in turn); the kernels return nothing and report through the sync
 * that ends every sequence of them, whose result is checked too. */
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

/* The encoder's graph, one for training and inference (as llm.c has it):
 * its device inputs and every intermediate, all in the net's arena (valid
 * until the arena is reset), and in training mode what the backward of
 * each MLP needs (nesf_mlp_acts). */
enum { NESF_ENC_GRAPH_POS, NESF_ENC_GRAPH_SPECIES, NESF_ENC_GRAPH_MIX, NESF_ENC_GRAPH_HEAD, NESF_ENC_GRAPH_MLPS };
typedef struct nesf_enc_graph {
    int S, N, train;
    float *xyz, *onehot, *latf;          /* inputs: N x 3, N x A, S x 6 */
    int *off;                            /* S+1 atom offsets */
    nesf_mlp_in in[NESF_ENC_GRAPH_MLPS]; /* the inputs of pos, species, mix and head */
    nesf_mlp_acts acts[NESF_ENC_GRAPH_MLPS]; /* training only */
    float *mixin;                        /* N x (pos_out + species_out) */
    float *pooled;                       /* S x mix_out, the max over each structure's atoms */
    int *arg;                            /* S x mix_out, the atom of each max */
    float *head;                         /* S x (mix_out + 6): pooled | lattice features */
    float *z;                            /* S x latent */
} nesf_enc_graph;

/* Allocates the encoder's inputs in the arena and uploads the batch. */
int nesf_enc_upload(nesf_model *m, const nesf_enc_batch *hb, nesf_enc_graph *g, nesf_error *err);
/* The encoder's forward over g's inputs: train = 1 in batch mode (batch
 * BatchNorm statistics, running ones updated, the head's dropout from
 * dropout_seed) keeping the activations for the backward, 0 in inference
 * mode with the folded weights. */
int nesf_enc_forward(nesf_model *m, nesf_enc_graph *g, int train, uint64_t dropout_seed, nesf_error *err);

/* Writes the model's tensors and metadata through w (which may already
 * hold extra tensors, e.g. a checkpoint's "trainer.*" state) to path.  The
 * loader ignores "trainer.*" tensors, so a checkpoint is also a model. */
int nesf_model_write(nesf_model *m, nesf_st_writer *w, const char *path,
                     const char *train_config_json, nesf_error *err);

/* Re-folds BN into the inference weights (after loading or training). */
int nesf_model_refold(nesf_model *m, nesf_error *err);

#endif

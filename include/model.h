/* model.h - the NeSF network (spec §3): encoder, lattice heads, position
 * and species fields, its weights and its inference entry points.
 *
 * A model lives on one backend and owns its parameters (one flat array in
 * backend memory, viewed as the named tensors of the safetensors file),
 * BatchNorm running statistics, BN-folded inference weights and a scratch
 * workspace.  Because of that workspace a model is not thread-safe: one
 * thread at a time (the daemon gives each model to one batcher thread).
 *
 * Inference uses the folded weights (BN folded into the following Linear,
 * dropout off); training (train.h) uses the raw parameters. */
#ifndef NESF_MODEL_H
#define NESF_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "domain.h"
#include "error.h"
#include "structure.h"

#define NESF_MAX_LAYERS 16
#define NESF_MAX_SPECIES 128

/* Hidden widths of each MLP; input and output widths follow from the
 * architecture (spec §3): encoder.pos 3->...->pos_out, encoder.species
 * A->...->species_out, encoder.mix (pos_out+species_out)->mix_out,
 * encoder.head (mix_out+6)->...->latent, decoder.length/angle latent->...->3,
 * decoder.position [latent,xyz]->...->3, decoder.species [latent,xyz]->...->A.
 * Every decoder field layer but the last takes the query xyz as well. */
typedef struct nesf_model_config {
    char name[64];
    int latent;
    int enc_pos_hidden[NESF_MAX_LAYERS], n_enc_pos_hidden;   /* paper: 64,128 */
    int enc_pos_out;                                         /* 128 */
    int enc_species_hidden[NESF_MAX_LAYERS], n_enc_species_hidden; /* 128 */
    int enc_species_out;                                     /* 128 */
    int enc_mix_out;                                         /* 512 */
    int enc_head_hidden[NESF_MAX_LAYERS], n_enc_head_hidden; /* 256,256 */
    int lattice_hidden[NESF_MAX_LAYERS], n_lattice_hidden;   /* 128 */
    int pos_hidden[NESF_MAX_LAYERS], n_pos_hidden;           /* 256,128 x7 */
    int spec_hidden[NESF_MAX_LAYERS], n_spec_hidden;         /* 256,128 */
    int xyz_fourier;    /* Fourier query columns of the fields (mlp.h): 0 = the paper's xyz */
    float xyz_fourier_period; /* their longest period, Å (8) */
    float dropout;      /* encoder.head, 0.3 */
    float bn_momentum;  /* 0.1 */
    float bn_eps;       /* 1e-5 */
} nesf_model_config;

typedef struct nesf_model nesf_model;

/* The paper's configuration (spec §3). */
void nesf_model_config_paper(nesf_model_config *cfg);
/* Reads the "model" part of a JSON config file (config/models/NAME.json);
 * missing keys keep the paper's values. */
int nesf_model_config_load(const char *path, nesf_model_config *cfg, nesf_error *err);
/* Serialises cfg as a JSON object string (caller frees). */
char *nesf_model_config_to_json(const nesf_model_config *cfg);

/* A freshly initialised model (PyTorch's default Linear init drawn from
 * seed; BN gamma 1, beta 0, running mean 0, var 1).  species_z lists the
 * atomic number of each species class; bbox is the training atoms'
 * bounding box (spec §2). */
int nesf_model_create(const nesf_model_config *cfg, const int *species_z, int num_species,
                      const float bbox_min[3], const float bbox_max[3], nesf_backend *be,
                      uint64_t seed, nesf_model **out, nesf_error *err);

/* Loads a safetensors file written by nesf_model_save or by the PyTorch
 * reference (tests/parity).  Shapes are checked against the config stored
 * in its metadata. */
int nesf_model_load(const char *path, nesf_backend *be, nesf_model **out, nesf_error *err);
/* Writes atomically (temp file + rename).  extra_meta: optional JSON
 * object text merged into __metadata__ (e.g. the training configuration). */
int nesf_model_save(nesf_model *m, const char *path, const char *train_config_json,
                    nesf_error *err);
void nesf_model_free(nesf_model *m);

const nesf_model_config *nesf_model_get_config(const nesf_model *m);
nesf_backend *nesf_model_backend(const nesf_model *m);
int nesf_model_latent_size(const nesf_model *m);
int nesf_model_num_species(const nesf_model *m);
/* Atomic number of species class cls. */
int nesf_model_species_z(const nesf_model *m, int cls);
/* Species class of atomic number z, or -1 when the model does not know it. */
int nesf_model_class_of(const nesf_model *m, int z);
void nesf_model_bbox(const nesf_model *m, float bbox_min[3], float bbox_max[3]);
/* Replaces the stored training box, for a model trained further on other
 * data (spec §2: the box is that of the atoms the model is trained on). */
void nesf_model_set_bbox(nesf_model *m, const float bbox_min[3], const float bbox_max[3]);
/* The training domain recorded in the file (metadata "domain", domain.h),
 * or NULL when the file has none; owned by the model. */
const nesf_domain *nesf_model_domain(const nesf_model *m);
/* Replaces it (saved with the model): training records the domain of its
 * training set. */
void nesf_model_set_domain(nesf_model *m, const nesf_domain *d);
size_t nesf_model_param_count(const nesf_model *m);
/* The network's MLPs (spec §3) by index; their FLOP counts for benchmarks
 * are nesf_model_position_flops and nesf_trainer_step_flops. */
enum { NESF_ENC_POS, NESF_ENC_SPECIES, NESF_ENC_MIX, NESF_ENC_HEAD, NESF_DEC_LENGTH,
       NESF_DEC_ANGLE, NESF_DEC_POSITION, NESF_DEC_SPECIES, NESF_NUM_MLPS };
/* Training configuration JSON stored with the weights ("" if none). */
const char *nesf_model_train_config(const nesf_model *m);

/* ---- inference, host memory in and out ---- */

/* Latents z (n x latent) of n structures.  Fails with NESF_ERR_NOTFOUND
 * naming the element when a species is not in the model's list, and with
 * NESF_ERR_INVALID for an empty or non-finite structure. */
int nesf_model_encode(nesf_model *m, nesf_structure *const *s, int n, float *z,
                      nesf_error *err);
/* Lattice heads: lengths (n x 3, Å) and angles (n x 3, radians). */
int nesf_model_lattice(nesf_model *m, int n, const float *z, float *lengths, float *angles,
                       nesf_error *err);

/* ---- fields, backend memory ----
 * S structures with latents z_dev (S x latent); Q query points xyz_dev
 * (Q x 3, Å), those of structure s being rows [off[s], off[s+1]) where off
 * is a HOST array of S+1 ints.  Position field out_dev: Q x 3 (vector to
 * the nearest atom); species field out_dev: Q x A logits.  Work is done in
 * chunks, so Q may be large. */
int nesf_model_position_field(nesf_model *m, int S, const float *z_dev, const int *off,
                              const float *xyz_dev, float *out_dev, nesf_error *err);
int nesf_model_species_field(nesf_model *m, int S, const float *z_dev, const int *off,
                             const float *xyz_dev, float *out_dev, nesf_error *err);

/* FLOPs of the position field per query: grouped = 0 dense-equivalent,
 * 1 as executed (the latent part once per structure): for benchmarks. */
double nesf_model_position_flops(const nesf_model *m, int grouped);

/* Host-memory wrappers of the two fields (tests, small tools). */
int nesf_model_position_field_host(nesf_model *m, int S, const float *z, const int *off,
                                   const float *xyz, float *out, nesf_error *err);
int nesf_model_species_field_host(nesf_model *m, int S, const float *z, const int *off,
                                  const float *xyz, float *out, nesf_error *err);

#endif

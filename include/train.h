/* train.h - training of a model on its backend (spec §4): the training
 * forward pass, the hand-written backward of every piece, the loss, Adam,
 * the learning-rate schedule and checkpoints.
 *
 * A trainer borrows a model (which must outlive it) and owns gradients,
 * Adam moments and device copies of each batch.  The epoch loop itself
 * lives in the `nesf train` tool, built on these calls. */
#ifndef NESF_TRAIN_H
#define NESF_TRAIN_H

#include <stdint.h>

#include "model.h"
#include "sample.h"

typedef struct nesf_train_config {
    int batch;              /* structures per step (64) */
    int epochs;             /* 3200 */
    float lr;               /* 1e-3 */
    int lr_halve_every;     /* epochs (640) */
    float w_pos, w_spec, w_len, w_ang;  /* 10, 0.1, 1, 1 */
    nesf_sampling sampling;
    uint64_t seed;
    /* Dropout of the decoder's and encoder's hidden layers while training;
     * < 0 (the default) keeps the model file's (spec 0.3).  A training
     * setting, not part of the network: a model trained on with another
     * rate loads and infers the same way (inference never drops). */
    float dropout;
} nesf_train_config;

void nesf_train_config_paper(nesf_train_config *c);

/* Derives independent seeds (per epoch, batch, purpose) from one seed, so
 * a resumed run draws exactly what an uninterrupted one would. */
static inline uint64_t nesf_seed_mix(uint64_t a, uint64_t b)
{
    uint64_t x = a ^ (b + 0x9E3779B97F4A7C15ull + (a << 6) + (a >> 2));
    x ^= x >> 33; x *= 0xFF51AFD7ED558CCDull;
    x ^= x >> 33; x *= 0xC4CEB9FE1A85EC53ull;
    return x ^ (x >> 33);
}
/* Reads the "training" part of a config file; absent keys keep values. */
int nesf_train_config_load(const char *path, nesf_train_config *c, nesf_error *err);
char *nesf_train_config_to_json(const nesf_train_config *c);
/* Learning rate at a (0-based) epoch under the step schedule. */
float nesf_train_lr(const nesf_train_config *c, int epoch);

typedef struct nesf_losses {
    double total, pos, spec, len, ang;   /* total = weighted sum */
    long pos_queries, spec_queries;
} nesf_losses;

typedef struct nesf_trainer nesf_trainer;

int nesf_trainer_create(nesf_model *m, const nesf_train_config *c, nesf_trainer **out,
                        nesf_error *err);
void nesf_trainer_free(nesf_trainer *t);

/* Samples the queries of a batch of structures (seeded), mapping species
 * to the model's classes; fails naming an unknown element. */
int nesf_trainer_sample(nesf_trainer *t, nesf_structure *const *s, int n, uint64_t seed,
                        nesf_queries *q, nesf_error *err);

/* One training forward and backward (BatchNorm in batch mode, dropout from
 * dropout_seed): zeroes and fills the gradients, returns the losses. */
int nesf_trainer_forward_backward(nesf_trainer *t, nesf_structure *const *s, int n,
                                  const nesf_queries *q, uint64_t dropout_seed,
                                  nesf_losses *out, nesf_error *err);
/* Adam update of all parameters with the current gradients. */
int nesf_trainer_step(nesf_trainer *t, float lr, nesf_error *err);
/* Loss in inference mode (running statistics, no dropout, no gradients);
 * refreshes the model's folded weights first. */
int nesf_trainer_eval_loss(nesf_trainer *t, nesf_structure *const *s, int n,
                           const nesf_queries *q, nesf_losses *out, nesf_error *err);

/* Gradient of a named tensor (as in the weight file) into host dst. */
int nesf_trainer_grad(nesf_trainer *t, const char *name, float *dst, nesf_error *err);
/* Parameter values of a named tensor (host). */
int nesf_trainer_param(nesf_trainer *t, const char *name, float *dst, nesf_error *err);
long nesf_trainer_steps(const nesf_trainer *t);

/* Training state beside the weights, for exact resumption. */
typedef struct nesf_train_state {
    int epoch;          /* epochs completed */
    int batch;          /* batches done in the current epoch (mid-epoch stop) */
    long step;          /* Adam steps taken */
    double acc_loss;    /* running sum of the current epoch's batch losses */
    double best_val;    /* best validation loss so far (INFINITY if none) */
    int best_epoch;
    double seconds;     /* training wall time so far */
} nesf_train_state;

/* Checkpoint: weights, BN statistics, Adam moments and state, written
 * atomically; load restores them into a trainer whose model has the same
 * configuration. */
int nesf_trainer_save(nesf_trainer *t, const nesf_train_state *st, const char *path,
                      nesf_error *err);
int nesf_trainer_load(nesf_trainer *t, nesf_train_state *st, const char *path, nesf_error *err);

#endif

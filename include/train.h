/* train.h - training of a model on its backend (spec §4): the training
 * forward pass, the hand-written backward of every piece, the loss, Adam,
 * the learning-rate schedule and checkpoints.
 *
 * A trainer borrows a model (which must outlive it) and owns gradients,
 * Adam moments and device copies of each batch.  nesf_train_run (below,
 * train_run.c) is the whole job on these calls: data, model, the epoch
 * loop, validation and the run folder's files. */
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
    /* Origin-shift augmentation: every epoch each training structure is
     * seen in one of its settings shifted by halves of its cell vectors
     * and wrapped back into the cell, drawn from (seed, epoch, structure).
     * The same crystal, and settings the data hold side by side: of the
     * 100 YBCO-like cells, 73 put the large cations at (1/2, 1/2), 17 at
     * the origin, 10 on the edges.  JSON "origin_shifts": "none" (0, the
     * spec), "half-ab" (4 settings) or "half-abc" (8). */
    int origin_shifts;
} nesf_train_config;

enum { NESF_SHIFTS_NONE = 0, NESF_SHIFTS_HALF_AB = 1, NESF_SHIFTS_HALF_ABC = 2 };

void nesf_train_config_paper(nesf_train_config *c);

/* The jconf rows (jconf.h) of a "loss_weights" object {"position",
 * "species", "length", "angle"} over the members w_pos, w_spec, w_len, w_ang
 * of struct T, each in [0, hi]: the training config's and refine's. */
#define NESF_LOSS_WEIGHT_ROWS(T, hi)                                                    \
    NESF_JF_FLOAT(T, "position", w_pos, 0, hi), NESF_JF_FLOAT(T, "species", w_spec, 0, hi), \
        NESF_JF_FLOAT(T, "length", w_len, 0, hi), NESF_JF_FLOAT(T, "angle", w_ang, 0, hi)

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
/* The same from the JSON text of a "training" object (as a checkpoint
 * records it, nesf_train_config_to_json); errors are prefixed with where. */
int nesf_train_config_parse(const char *json, const char *where, nesf_train_config *c,
                            nesf_error *err);
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
/* FLOPs of one training step as the code executes them (forward, and the
 * backward's weight and input gradients; a grouped first layer does the
 * latent part once per structure) on S structures of N atoms in all with
 * l's query counts: for benchmarks. */
double nesf_trainer_step_flops(const nesf_trainer *t, int N, int S, const nesf_losses *l);

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

/* ---- the training job (nesf train, every fold of nesf cv) ----
 *
 * RUN/checkpoint.safetensors  weights + Adam + state, every few minutes,
 *                             when stopped and at the end; resume continues it
 * RUN/best.safetensors        best validation loss so far (a normal model)
 * RUN/epoch-NNNN.safetensors  with snapshot_every: the weights after epoch NNNN
 * RUN/log.jsonl               one JSON line per epoch
 * Every file but the log is written temp-then-rename.  Every random draw
 * derives from (seed, epoch, batch), so a resumed run reproduces an
 * uninterrupted one bit for bit. */
typedef struct nesf_train_job {
    const char *config;          /* model + training config, unless resuming */
    const char *data;            /* folder with meta.json, train.jsonl, val.jsonl */
    const char *out;             /* run folder (created) */
    const char *from;            /* NULL, or weights (or a checkpoint) to start from with
                                    config's training settings and this data's box */
    nesf_backend *be;            /* borrowed: trained on, outlives the call (its
                                    parameters are the caller's to choose) */
    int resume;                  /* continue out's checkpoint when there is one */
    int epochs;                  /* epochs in total, < 0: the config's */
    double minutes;              /* > 0: stop (checkpointed) after this long */
    double checkpoint_minutes;   /* checkpoint interval */
    int val_every;               /* validate every N epochs (and after the last) */
    int val_limit;               /* > 0: validate on the first N val structures */
    long max_steps;              /* >= 0: stop (checkpointed) after N steps of this call */
    int snapshot_every;          /* > 0: keep epoch-NNNN.safetensors every N epochs */
} nesf_train_job;

/* The tool's defaults: paper config, config's epochs, no time or step
 * limit, checkpoints every 5 minutes, validation every epoch on all of val,
 * no snapshots; no backend (the caller's). */
void nesf_train_job_default(nesf_train_job *j);

typedef struct nesf_train_progress {
    int epoch;                   /* 1-based */
    int batch, batches;          /* batches done in this epoch, of */
    double loss;                 /* this step's */
    double wall;                 /* seconds since nesf_train_run started */
    double structures_per_s, queries_per_s;
} nesf_train_progress;

typedef struct nesf_train_epoch {
    int epoch;                   /* epochs completed */
    long step;
    float lr;
    double train;                /* mean batch loss of the epoch */
    int validated;               /* val holds this epoch's validation losses */
    nesf_losses val;
    const char *val_json;        /* the log's "val": the losses' JSON or "null" */
    int best;                    /* a new best: best.safetensors was written */
    double seconds;              /* training wall time so far */
} nesf_train_epoch;

enum { NESF_SAVED_CHECKPOINT, NESF_SAVED_BEST, NESF_SAVED_SNAPSHOT };

/* What a caller hears of a run; every member may be NULL.  The strings
 * passed are valid during the call only. */
typedef struct nesf_train_hooks {
    void *user;
    void (*message)(void *user, const char *text);       /* setup notes, one line each */
    void (*progress)(void *user, const nesf_train_progress *p);  /* after every step */
    void (*epoch)(void *user, const nesf_train_epoch *e);        /* after every epoch */
    void (*saved)(void *user, int kind, const char *path);       /* a file was written */
    int (*stop)(void *user);     /* polled before every step: nonzero checkpoints and stops */
} nesf_train_hooks;

typedef struct nesf_train_result {
    nesf_train_state state;      /* as checkpointed at the end */
    int stopped;                 /* ended by hooks->stop */
} nesf_train_result;

/* Runs (or continues) a training job to its end, its time or step limit,
 * or a stop from the hooks, checkpointing before it returns; res may be
 * NULL.  Everything it opens it frees, on failure too. */
int nesf_train_run(const nesf_train_job *job, const nesf_train_hooks *hooks, nesf_train_result *res,
                   nesf_error *err);

#endif

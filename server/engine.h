/* engine.h - the models nesfd serves and the batched work done on them.
 *
 * Each model has its own backend and one batcher, whose single worker
 * thread is the only one touching the model (models are not thread-safe).
 * Work is submitted as jobs: a job is the data block of one batcher ticket,
 * holding the inputs and receiving the outputs of n items:
 *   decode: n latents in, n structures out (or a per-item error);
 *   encode: n structures in, n latents out;
 *   look: the second look (second_look.h) at n doubtful reconstructions:
 *     inputs, encoder latents, refined latents, decodes and cycle
 *     distances in, the ones the second look kept out.
 * Decode jobs share a backend call only with decode jobs of identical
 * options (the ticket key is the options' bytes).
 *
 * Invariant batches (the default): BLAS results for a row depend on the
 * shape of the call it is in (OpenBLAS picks kernels and blockings by
 * size, and cuBLAS likewise), so a structure decoded among others would
 * differ from its unbatched decode in the last bits, and NMS can turn
 * such bits into a different atom.  So within one batched call every
 * structure goes through GEMMs of its own (decode option batch_particles
 * = 1; encode one structure per call), and an answer is bit-identical to
 * the unbatched one.  On a CPU this costs nothing measurable: one
 * structure's ~2700 particles already fill a GEMM.  With fused batches the
 * structures of a batch share GEMMs, faster on a GPU.
 *
 * Encode failures in a shared call are retried one structure at a time, so
 * one bad structure cannot fail another request's items.  A job that asks
 * for latent refinement (refine.h) has each of its latents refined after
 * the encode, structure by structure, so its answer is the same in any
 * batch. */
#ifndef NESFD_ENGINE_H
#define NESFD_ENGINE_H

#include "batcher.h"
#include "config.h"
#include "decode.h"
#include "error.h"
#include "metrics.h"
#include "model.h"
#include "refine.h"

typedef struct nesfd_model_entry {
    char name[64];
    char id[96];          /* name + content hash of the weights file */
    char path[4096];
    nesf_backend *be;
    nesf_model *model;
    nesfd_batcher *batcher;
    int metric;           /* metrics label index */
    nesfd_metrics *metrics;
    int latent;
    size_t params;
    int invariant;        /* see above */
} nesfd_model_entry;

typedef struct nesfd_engine nesfd_engine;

/* Loads every configured model on its backend and starts its batcher.
 * Fails (naming the model and file) if any model cannot be loaded. */
int nesfd_engine_start(const nesfd_config *c, nesfd_metrics *metrics, nesfd_engine **out,
                       nesf_error *err);
/* Ends the running batches at their next flow step (their requests are
 * answered 503) and every later one: the end of the shutdown grace. */
void nesfd_engine_abort(nesfd_engine *e);
/* Cancels queued work and joins the batchers (idempotent). */
void nesfd_engine_stop(nesfd_engine *e);
void nesfd_engine_free(nesfd_engine *e);

int nesfd_engine_count(const nesfd_engine *e);
nesfd_model_entry *nesfd_engine_at(nesfd_engine *e, int i);
/* By name; NULL or "" gives the default (first) model; NULL if unknown. */
nesfd_model_entry *nesfd_engine_find(nesfd_engine *e, const char *name);
/* Models loaded and batchers accepting work. */
int nesfd_engine_ready(nesfd_engine *e);

typedef enum { NESFD_JOB_DECODE, NESFD_JOB_ENCODE, NESFD_JOB_LOOK } nesfd_job_kind;

typedef struct nesfd_job {
    nesfd_job_kind kind;
    nesfd_model_entry *me;
    int n;
    float *z;                /* n x latent: decode input / encode output */
    float *z_enc;            /* encode: n x latent, the encoder's own latents
                                before refinement (the confidence's reference);
                                look: the same, input */
    nesf_structure **s;      /* n: encode and look input / decode output (owned) */
    nesf_structure **rec;    /* look: n decodes of z, in and out (owned) */
    double *cycle;           /* look: n cycle distances of rec, in and out */
    float *z_dec;            /* look: n x latent out, E(rec) of the answers it
                                replaced (z changed), for the self-check */
    nesf_error *item_err;    /* n: why item i failed (status != 0) */
    nesf_decode_opts opts;   /* decode */
    nesf_refine_opts refine; /* encode, look: latent refinement (the request's; steps 0: none) */
} nesfd_job;

/* A job of n items with zeroed arrays (s and item_err always; z too).
 * Free with nesfd_job_free (also the ticket's free_data). */
nesfd_job *nesfd_job_new(nesfd_job_kind kind, nesfd_model_entry *me, int n);
void nesfd_job_free(void *job);

/* The ticket for a job: the key is the kind plus, for decode, the options'
 * bytes (for look, the decode and refinement options' bytes).  done(arg, state) is called once (batcher.h).  The ticket owns the
 * job from here on. */
nesfd_ticket *nesfd_job_ticket(nesfd_job *job, int64_t deadline_ns, nesfd_done_fn done, void *arg);

#endif

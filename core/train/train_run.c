/* train_run.c - the training job (spec §4) on the trainer of train.c: data,
 * model (new, resumed or --from), the epoch loop with its prefetching,
 * validation, and the run folder's checkpoint, best weights, snapshots and
 * log.  `nesf train` and every fold of `nesf cv` are this one call. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "dataset.h"
#include "train.h"

/* The next batch's queries are drawn on a thread while the current step
 * runs: sampling is host work (nearest atoms for ~200 k points per batch)
 * that would otherwise leave a GPU idle.  Same seeds, same queries. */
typedef struct prefetch {
    pthread_t th;
    int running, epoch, batch, n, rc;
    nesf_trainer *tr;
    nesf_structure **bs;
    uint64_t seed;
    nesf_queries q;
    nesf_error err;
} prefetch;

/* Everything one job holds, shared by the steps below. */
typedef struct run {
    const nesf_train_job *job;
    const nesf_train_hooks *h;
    char ckpt[4096], best[4096], logp[4096];
    nesf_vocab vocab;
    nesf_dataset train, val;
    nesf_backend *be;           /* the job's */
    nesf_model *m;
    nesf_train_config tc;
    nesf_train_state st;
    nesf_trainer *tr;
    char *tcj;                  /* the training config's JSON, saved with every file */
    nesf_queries vq;            /* validation queries, drawn once */
    int have_vq;
    int B, nb;                  /* batch size, batches per epoch */
    int *perm;                  /* the epoch's order */
    int settings;               /* origin settings of each structure (1: no shifts) */
    nesf_structure **shifted;   /* [(settings - 1) * train.n]: setting v of i at
                                   (v - 1) * train.n + i, owned */
    nesf_structure **bs;        /* the current batch */
    prefetch pf;
    double start, deadline, last_ckpt, seconds0;
    long structs, queries, steps_here;
    int stopped;
} run;

/* The prefetch thread: one batch's queries into p. */
static void *prefetch_main(void *arg)
{
    prefetch *p = arg;
    p->rc = nesf_trainer_sample(p->tr, p->bs, p->n, p->seed, &p->q, &p->err);
    return NULL;
}

/* Waits for a running prefetch; returns 1 when it drew (epoch, batch) and
 * hands its queries (or its error) over, else discards them. */
static int prefetch_take(prefetch *p, int epoch, int batch, nesf_queries *q, int *rc,
                         nesf_error *err)
{
    if (!p->running) return 0;
    pthread_join(p->th, NULL);
    p->running = 0;
    if (p->epoch != epoch || p->batch != batch) {
        if (!p->rc) nesf_queries_free(&p->q);
        return 0;
    }
    *rc = p->rc;
    if (p->rc) *err = p->err;
    else *q = p->q;
    return 1;
}

/* Monotonic seconds: time limits and intervals, immune to clock changes. */
void nesf_train_job_default(nesf_train_job *j)
{
    memset(j, 0, sizeof *j);
    j->config = "config/models/nesf-paper.json";
    j->epochs = -1;
    j->checkpoint_minutes = 5;
    j->val_every = 1;
    j->max_steps = -1;
}

/* A setup note to the message hook (printf-style). */
static void say(const run *r, const char *fmt, ...)
{
    if (!r->h->message) return;
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    r->h->message(r->h->user, buf);
}

/* Tells the saved hook that path (of kind NESF_SAVED_*) was written. */
static void saved(const run *r, int kind, const char *path)
{
    if (r->h->saved) r->h->saved(r->h->user, kind, path);
}

/* dir/file into buf, failing rather than truncating. */
static int join(char *buf, size_t n, const char *dir, const char *file, nesf_error *err)
{
    if (snprintf(buf, n, "%s/%s", dir, file) < (int)n) return NESF_OK;
    return nesf_fail(err, NESF_ERR_INVALID, "path too long: %s/%s", dir, file);
}

/* The run folder and its files' names. */
static int run_paths(run *r, nesf_error *err)
{
    const char *out = r->job->out;
    int rc = join(r->ckpt, sizeof r->ckpt, out, "checkpoint.safetensors", err);
    if (!rc) rc = join(r->best, sizeof r->best, out, "best.safetensors", err);
    if (!rc) rc = join(r->logp, sizeof r->logp, out, "log.jsonl", err);
    if (!rc && mkdir(out, 0755) && errno != EEXIST)
        rc = nesf_fail(err, NESF_ERR_IO, "cannot create %s: %s", out, strerror(errno));
    return rc;
}

/* Vocabulary, train and val sets (canonical orientation, val cut to
 * val_limit). */
static int load_data(run *r, nesf_error *err)
{
    const char *data = r->job->data;
    char path[4096];
    int rc = join(path, sizeof path, data, "meta.json", err);
    if (!rc) rc = nesf_vocab_load(path, &r->vocab, err);
    const double t0 = nesf_clock_s();
    if (!rc) rc = join(path, sizeof path, data, "train.jsonl", err);
    if (!rc) rc = nesf_dataset_load(path, &r->train, err);
    if (!rc) rc = join(path, sizeof path, data, "val.jsonl", err);
    if (!rc) rc = nesf_dataset_load(path, &r->val, err);
    for (int i = 0; !rc && i < r->train.n; i++) rc = nesf_structure_canonicalize(r->train.s[i], err);
    for (int i = 0; !rc && i < r->val.n; i++) rc = nesf_structure_canonicalize(r->val.s[i], err);
    if (rc) return rc;
    const int lim = r->job->val_limit;
    if (lim > 0 && lim < r->val.n) {
        for (int i = lim; i < r->val.n; i++) nesf_structure_free(r->val.s[i]);
        r->val.n = lim;
    }
    say(r, "%d train, %d val structures (%.2f s)", r->train.n, r->val.n, nesf_clock_s() - t0);
    return NESF_OK;
}

/* --from: the file's network, the config file's training settings, and the
 * box of the atoms trained on now (another data set may be larger). */
static int open_from(run *r, const float lo[3], const float hi[3], nesf_error *err)
{
    int rc = nesf_model_load(r->job->from, r->be, &r->m, err);
    if (!rc) rc = nesf_train_config_load(r->job->config, &r->tc, err);
    if (rc) return rc;
    float olo[3], ohi[3];
    nesf_model_bbox(r->m, olo, ohi);
    if (memcmp(lo, olo, sizeof olo) || memcmp(hi, ohi, sizeof ohi)) {
        nesf_model_set_bbox(r->m, lo, hi);
        say(r,
            "bounding box of this training set [%.3f %.3f %.3f] .. [%.3f %.3f %.3f] "
            "(the model's was [%.3f %.3f %.3f] .. [%.3f %.3f %.3f])",
            lo[0], lo[1], lo[2], hi[0], hi[1], hi[2], olo[0], olo[1], olo[2], ohi[0], ohi[1], ohi[2]);
    }
    return NESF_OK;
}

/* The model: resumed from the checkpoint (whose training
 * configuration wins over the file's), from --from, or new from the config. */
static int open_model(run *r, int resuming, nesf_error *err)
{
    const nesf_train_job *j = r->job;
    int rc;
    r->be = j->be;
    say(r, "backend %s", r->be->device);
    nesf_train_config_paper(&r->tc);
    float lo[3], hi[3]; /* spec §2: the box of the atoms trained on */
    nesf_structures_bbox(r->train.s, r->train.n, lo, hi);
    if (resuming) {
        if ((rc = nesf_model_load(r->ckpt, r->be, &r->m, err))) return rc;
        say(r, "resuming %s", r->ckpt);
    } else if (j->from) {
        if ((rc = open_from(r, lo, hi, err))) return rc;
    } else {
        nesf_model_config mc;
        if ((rc = nesf_model_config_load(j->config, &mc, err)) || (rc = nesf_train_config_load(j->config, &r->tc, err)) ||
            (rc = nesf_model_create(&mc, r->vocab.z, r->vocab.n, lo, hi, r->be, r->tc.seed, &r->m, err)))
            return rc;
    }
    /* every saved file records what it was trained on (domain.h); a
     * cycle-distance calibration of earlier weights no longer holds */
    nesf_domain dom;
    nesf_domain_from_structures(r->train.s, r->train.n, &dom);
    nesf_model_set_domain(r->m, &dom);
    const char *saved_tc = nesf_model_train_config(r->m);
    if (resuming && *saved_tc && (rc = nesf_train_config_parse(saved_tc, r->ckpt, &r->tc, err))) return rc;
    if (j->epochs >= 0) r->tc.epochs = j->epochs;
    return NESF_OK;
}

/* The trainer, its state from the checkpoint when resuming, and with
 * --from the Adam moments of a checkpoint (a weights file has none): the
 * schedule, the epoch count and the best validation loss start afresh,
 * since the losses may be weighted differently; steps and seconds keep
 * counting, they measure compute spent. */
static int open_trainer(run *r, int resuming, nesf_error *err)
{
    const char *from = r->job->from;
    r->st = (nesf_train_state){.best_val = INFINITY};
    int rc = nesf_trainer_create(r->m, &r->tc, &r->tr, err);
    if (!rc && resuming) rc = nesf_trainer_load(r->tr, &r->st, r->ckpt, err);
    if (rc) return rc;
    if (!resuming && from) {
        nesf_train_state prev = {0};
        nesf_error e2 = {0};
        if (nesf_trainer_load(r->tr, &prev, from, &e2) == NESF_OK) {
            r->st.step = prev.step;
            r->st.seconds = prev.seconds;
            say(r, "from %s (epoch %d, step %ld, %.0f s), Adam moments kept", from, prev.epoch, prev.step,
                prev.seconds);
        } else {
            say(r, "from %s, fresh Adam moments (%s)", from, e2.msg);
        }
    }
    r->tcj = nesf_train_config_to_json(&r->tc);
    if (!r->tcj) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    say(r, "%zu parameters, config %s", nesf_model_param_count(r->m), r->tcj);
    /* validation queries are drawn once, from a fixed seed */
    rc = nesf_trainer_sample(r->tr, r->val.s, r->val.n, nesf_seed_mix(r->tc.seed, 0xCAFE), &r->vq, err);
    r->have_vq = !rc;
    return rc;
}

/* Batch geometry and buffers. */
static int open_loop(run *r, nesf_error *err)
{
    const int n = r->train.n;
    r->B = r->tc.batch < n ? r->tc.batch : n;
    r->nb = n / r->B + (n % r->B >= 2 ? 1 : 0); /* a last batch of 1 would break BatchNorm */
    r->perm = malloc((size_t)n * sizeof *r->perm);
    r->bs = malloc((size_t)r->B * sizeof *r->bs);
    r->pf.tr = r->tr;
    r->pf.bs = malloc((size_t)r->B * sizeof *r->pf.bs);
    if (!r->perm || !r->bs || !r->pf.bs) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    r->start = nesf_clock_s();
    r->deadline = r->job->minutes > 0 ? r->start + r->job->minutes * 60 : INFINITY;
    r->last_ckpt = r->start;
    r->seconds0 = r->st.seconds;
    return NESF_OK;
}

/* The origin settings of the training structures (origin_shifts): setting
 * v shifts every atom by (v & 1, v >> 1 & 1, v >> 2 & 1) / 2 of the cell
 * vectors and wraps it back, built once since the data are small beside
 * the queries drawn from them. */
static int open_shifts(run *r, nesf_error *err)
{
    const int n = r->train.n;
    r->settings = r->tc.origin_shifts == NESF_SHIFTS_HALF_ABC ? 8 : r->tc.origin_shifts ? 4 : 1;
    if (r->settings == 1) return NESF_OK;
    r->shifted = calloc((size_t)(r->settings - 1) * n, sizeof *r->shifted);
    if (!r->shifted) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    for (int v = 1; v < r->settings; v++)
        for (int i = 0; i < n; i++) {
            nesf_structure *t = nesf_structure_copy(r->train.s[i]);
            if (!t) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
            r->shifted[(size_t)(v - 1) * n + i] = t;
            for (int a = 0; a < t->n; a++)
                for (int d = 0; d < 3; d++) t->frac[3 * a + d] += 0.5 * (v >> d & 1);
            nesf_structure_wrap(t);
        }
    say(r, "origin shifts: %d settings of every training structure", r->settings);
    return NESF_OK;
}

/* The current epoch's seed: its order, origin settings and batches. */
static uint64_t epoch_seed(const run *r)
{
    return nesf_seed_mix(r->tc.seed, (uint64_t)r->st.epoch + 1);
}

/* Structure `slot` of the epoch's order, in the setting the epoch draws
 * for it (the prefetch and the step see the same one). */
static nesf_structure *train_item(const run *r, int slot)
{
    const int i = r->perm[slot];
    if (r->settings == 1) return r->train.s[i];
    const int v = (int)(nesf_seed_mix(epoch_seed(r), 0x5A170000ull + (uint64_t)i) % (uint64_t)r->settings);
    return v ? r->shifted[(size_t)(v - 1) * r->train.n + i] : r->train.s[i];
}

/* Whether to take another step: no stop from the hooks (remembered), time
 * and steps left. */
static int keep_going(run *r)
{
    if (!r->stopped && r->h->stop && r->h->stop(r->h->user)) r->stopped = 1;
    return !r->stopped && nesf_clock_s() < r->deadline && r->steps_here != r->job->max_steps;
}

/* The epoch's order: Fisher-Yates from (seed, epoch). */
static void shuffle(run *r)
{
    uint64_t es = epoch_seed(r);
    for (int i = 0; i < r->train.n; i++) r->perm[i] = i;
    for (int i = r->train.n - 1; i > 0; i--) {
        es = nesf_seed_mix(es, (uint64_t)i);
        int j = (int)(es % (uint64_t)(i + 1)), t = r->perm[i];
        r->perm[i] = r->perm[j];
        r->perm[j] = t;
    }
}

/* The seed of the current epoch's batch: its queries and dropout. */
static uint64_t batch_seed(const run *r, int batch)
{
    return nesf_seed_mix(epoch_seed(r), (uint64_t)batch + 1);
}

/* Starts drawing the queries of the epoch's batch `batch` on a thread. */
static void prefetch_start(run *r, int batch)
{
    prefetch *pf = &r->pf;
    const int c0 = batch * r->B;
    pf->n = c0 + r->B <= r->train.n ? r->B : r->train.n - c0;
    for (int i = 0; i < pf->n; i++) pf->bs[i] = train_item(r, c0 + i);
    pf->epoch = r->st.epoch;
    pf->batch = batch;
    pf->seed = batch_seed(r, batch);
    pf->running = pthread_create(&pf->th, NULL, prefetch_main, pf) == 0;
}

/* The progress hook after a step, with this call's throughput. */
static void progress(const run *r, const nesf_losses *l)
{
    if (!r->h->progress) return;
    const double wall = nesf_clock_s() - r->start;
    nesf_train_progress p = {.epoch = r->st.epoch + 1, .batch = r->st.batch, .batches = r->nb, .loss = l->total,
                             .wall = wall, .structures_per_s = r->structs / wall, .queries_per_s = r->queries / wall};
    r->h->progress(r->h->user, &p);
}

/* The checkpoint with the state as it stands (callers set its seconds). */
static int save_checkpoint(run *r, nesf_error *err)
{
    int rc = nesf_trainer_save(r->tr, &r->st, r->ckpt, err);
    if (!rc) saved(r, NESF_SAVED_CHECKPOINT, r->ckpt);
    r->last_ckpt = nesf_clock_s();
    return rc;
}

/* One step on the epoch's current batch, with the next one's queries
 * drawn meanwhile, and a checkpoint when the interval is over. */
static int train_batch(run *r, float lr, nesf_error *err)
{
    nesf_train_state *st = &r->st;
    const int b0 = st->batch * r->B, n = b0 + r->B <= r->train.n ? r->B : r->train.n - b0;
    for (int i = 0; i < n; i++) r->bs[i] = train_item(r, b0 + i);
    const uint64_t bseed = batch_seed(r, st->batch);
    nesf_queries q;
    nesf_losses l;
    int rc = 0;
    if (!prefetch_take(&r->pf, st->epoch, st->batch, &q, &rc, err))
        rc = nesf_trainer_sample(r->tr, r->bs, n, bseed, &q, err);
    if (rc) return rc;
    if (st->batch + 1 < r->nb) prefetch_start(r, st->batch + 1);
    rc = nesf_trainer_forward_backward(r->tr, r->bs, n, &q, nesf_seed_mix(bseed, 0xD0), &l, err);
    if (!rc) rc = nesf_trainer_step(r->tr, lr, err);
    nesf_queries_free(&q);
    if (rc) return rc;
    r->queries += l.pos_queries + l.spec_queries;
    r->structs += n;
    st->acc_loss += l.total;
    st->batch++;
    st->step++;
    r->steps_here++;
    progress(r, &l);
    const double t = nesf_clock_s();
    if (t - r->last_ckpt <= r->job->checkpoint_minutes * 60) return NESF_OK;
    st->seconds = r->seconds0 + (t - r->start);
    return save_checkpoint(r, err);
}

/* The validation losses as the log's JSON object. */
static void fmt_losses(char *buf, size_t n, const nesf_losses *l)
{
    snprintf(buf, n, "{\"total\":%.6g,\"position\":%.6g,\"species\":%.6g,\"length\":%.6g,\"angle\":%.6g}",
             l->total, l->pos, l->spec, l->len, l->ang);
}

/* The epoch's validation (every val_every epochs and after the last). */
static int validate(run *r, nesf_train_epoch *e, char *vls, size_t vn, nesf_error *err)
{
    nesf_train_state *st = &r->st;
    if (st->epoch % r->job->val_every && st->epoch != r->tc.epochs) return NESF_OK;
    int rc = nesf_trainer_eval_loss(r->tr, r->val.s, r->val.n, &r->vq, &e->val, err);
    if (rc) return rc;
    e->validated = 1;
    fmt_losses(vls, vn, &e->val);
    if (e->val.total < st->best_val) {
        st->best_val = e->val.total;
        st->best_epoch = st->epoch;
        e->best = 1;
    }
    return NESF_OK;
}

/* A completed epoch: validation, best weights, snapshot, checkpoint, the
 * log's line and the epoch hook. */
static int end_epoch(run *r, float lr, nesf_error *err)
{
    nesf_train_state *st = &r->st;
    nesf_train_epoch e = {.train = st->acc_loss / r->nb, .lr = lr};
    st->epoch++;
    st->batch = 0;
    st->acc_loss = 0;
    st->seconds = r->seconds0 + (nesf_clock_s() - r->start);
    char vls[256] = "null", snap[4096], name[32];
    int rc = validate(r, &e, vls, sizeof vls, err);
    if (!rc && e.best && !(rc = nesf_model_save(r->m, r->best, r->tcj, err))) saved(r, NESF_SAVED_BEST, r->best);
    if (!rc && r->job->snapshot_every > 0 && st->epoch % r->job->snapshot_every == 0) {
        snprintf(name, sizeof name, "epoch-%04d.safetensors", st->epoch);
        if (!(rc = join(snap, sizeof snap, r->job->out, name, err)) && !(rc = nesf_model_save(r->m, snap, r->tcj, err)))
            saved(r, NESF_SAVED_SNAPSHOT, snap);
    }
    if (!rc) rc = save_checkpoint(r, err);
    if (rc) return rc;
    e.epoch = st->epoch;
    e.step = st->step;
    e.val_json = vls;
    e.seconds = st->seconds;
    FILE *lf = fopen(r->logp, "a");
    if (!lf) return nesf_fail(err, NESF_ERR_IO, "cannot append to %s: %s", r->logp, strerror(errno));
    fprintf(lf, "{\"epoch\":%d,\"step\":%ld,\"lr\":%g,\"train\":{\"total\":%.6g},\"val\":%s,\"best\":%s,\"seconds\":%.1f}\n",
            st->epoch, st->step, (double)lr, e.train, vls, e.best ? "true" : "false", st->seconds);
    if (fclose(lf)) return nesf_fail(err, NESF_ERR_IO, "cannot write %s", r->logp);
    if (r->h->epoch) r->h->epoch(r->h->user, &e);
    return NESF_OK;
}

/* Epochs until the end, the limits or a stop; then the final checkpoint. */
static int run_loop(run *r, nesf_error *err)
{
    nesf_train_state *st = &r->st;
    int rc = NESF_OK;
    while (!rc && st->epoch < r->tc.epochs && keep_going(r)) {
        shuffle(r);
        const float lr = nesf_train_lr(&r->tc, st->epoch);
        while (!rc && st->batch < r->nb && keep_going(r)) rc = train_batch(r, lr, err);
        if (rc || st->batch < r->nb) break; /* stopped mid-epoch */
        rc = end_epoch(r, lr, err);
    }
    nesf_queries unused;
    int urc;
    nesf_error uerr;
    prefetch_take(&r->pf, -1, -1, &unused, &urc, &uerr); /* a batch drawn for nothing */
    if (rc) return rc;
    st->seconds = r->seconds0 + (nesf_clock_s() - r->start);
    return save_checkpoint(r, err);
}

/* Frees what the job opened, on every path (a prefetch still running too). */
static void run_free(run *r)
{
    if (r->pf.running) {
        nesf_queries unused;
        int urc;
        nesf_error uerr;
        prefetch_take(&r->pf, -1, -1, &unused, &urc, &uerr);
    }
    free(r->perm);
    if (r->shifted) nesf_structure_list_free(r->shifted, (r->settings - 1) * r->train.n);
    free(r->bs);
    free(r->pf.bs);
    free(r->tcj);
    if (r->have_vq) nesf_queries_free(&r->vq);
    nesf_trainer_free(r->tr);
    if (r->m) nesf_model_free(r->m);
    nesf_dataset_free(&r->train);
    nesf_dataset_free(&r->val);
}

int nesf_train_run(const nesf_train_job *job, const nesf_train_hooks *hooks, nesf_train_result *res,
                   nesf_error *err)
{
    static const nesf_train_hooks none;
    run r = {.job = job, .h = hooks ? hooks : &none};
    if (!job->data || !job->out || !job->be || (!job->config && !job->resume))
        return nesf_fail(err, NESF_ERR_INVALID, "a training job needs data, out, backend and config");
    if (job->val_every < 1)
        return nesf_fail(err, NESF_ERR_INVALID, "val_every must be at least 1, not %d", job->val_every);
    int rc = run_paths(&r, err);
    const int resuming = !rc && job->resume && access(r.ckpt, R_OK) == 0;
    if (!rc) rc = load_data(&r, err);
    if (!rc) rc = open_model(&r, resuming, err);
    if (!rc) rc = open_trainer(&r, resuming, err);
    if (!rc) rc = open_shifts(&r, err);
    if (!rc) rc = open_loop(&r, err);
    if (!rc) rc = run_loop(&r, err);
    if (!rc && res) *res = (nesf_train_result){.state = r.st, .stopped = r.stopped};
    run_free(&r);
    return rc;
}

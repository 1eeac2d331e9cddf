#include "batcher.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct nesfd_ticket {
    atomic_int refs;
    atomic_int state;
    atomic_int max_batch;
    atomic_llong first_wait_ns;    /* -1 until an item runs */
    int n;
    char *key;
    int64_t deadline, enqueued;
    nesfd_done_fn done;
    void *done_arg;
    void *data;
    void (*free_data)(void *);
    nesfd_item *items;
    /* owned by the batcher, under its lock */
    int next;                      /* items [next, n) are queued */
    int running;                   /* items in the running batch */
    int in_queue, live;
    nesfd_ticket *qprev, *qnext;   /* queue */
    nesfd_ticket *lprev, *lnext;   /* live: queued or running */
};

nesfd_ticket *nesfd_ticket_new(int n, const char *key, int64_t deadline_ns, nesfd_done_fn done,
                               void *done_arg, void *data, void (*free_data)(void *data))
{
    if (n <= 0 || !key) return NULL;
    nesfd_ticket *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->items = calloc((size_t)n, sizeof *t->items);
    t->key = strdup(key);
    if (!t->items || !t->key) {
        free(t->items);
        free(t->key);
        free(t);
        return NULL;
    }
    atomic_init(&t->refs, 1);
    atomic_init(&t->state, NESFD_TICKET_PENDING);
    atomic_init(&t->max_batch, 0);
    atomic_init(&t->first_wait_ns, -1);
    t->n = n;
    t->deadline = deadline_ns;
    t->done = done;
    t->done_arg = done_arg;
    t->data = data;
    t->free_data = free_data;
    for (int i = 0; i < n; i++) {
        t->items[i].data = data;
        t->items[i].index = i;
        t->items[i].ticket = t;
    }
    return t;
}

nesfd_item *nesfd_ticket_item(nesfd_ticket *t, int i) { return &t->items[i]; }
int nesfd_ticket_count(const nesfd_ticket *t) { return t->n; }
int nesfd_ticket_state(const nesfd_ticket *t) { return atomic_load(&((nesfd_ticket *)t)->state); }
void *nesfd_ticket_data(nesfd_ticket *t) { return t->data; }

int nesfd_ticket_max_batch(const nesfd_ticket *t)
{
    return atomic_load(&((nesfd_ticket *)t)->max_batch);
}

double nesfd_ticket_queue_wait(const nesfd_ticket *t)
{
    long long ns = atomic_load(&((nesfd_ticket *)t)->first_wait_ns);
    return ns < 0 ? -1 : ns * 1e-9;
}

void nesfd_ticket_release(nesfd_ticket *t)
{
    if (!t || atomic_fetch_sub(&t->refs, 1) != 1) return;
    if (t->free_data) t->free_data(t->data);
    free(t->items);
    free(t->key);
    free(t);
}

/* Moves a pending ticket to a final state; only the first caller wins. */
static int finish(nesfd_ticket *t, int state)
{
    int expected = NESFD_TICKET_PENDING;
    return atomic_compare_exchange_strong(&t->state, &expected, state);
}

struct nesfd_batcher {
    nesfd_batcher_opts o;
    char name[32];
    nesfd_batch_fn fn;
    void *ctx;
    pthread_mutex_t mu;
    pthread_cond_t work_cv, dog_cv;
    nesfd_ticket *qhead, *qtail, *live;
    int queued;
    int stopping, stopped, dog_started, worker_started;
    atomic_int aborting;
    pthread_t worker, dog;
    /* worker scratch */
    nesfd_item **batch;
    nesfd_ticket **batch_tickets;
    int *batch_counts;
    int batch_nt;                  /* tickets in the running batch */
};

/* A ticket to fire (done callback) and/or release once the lock is dropped. */
typedef struct {
    nesfd_ticket *t;
    int fire_state;    /* 0 = none */
    int release;       /* the batcher's reference */
} pending_op;

typedef struct {
    pending_op *ops;
    int n, cap;
} op_list;

static void ops_add(op_list *l, nesfd_ticket *t, int fire_state, int release)
{
    if (!fire_state && !release) return;
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 16;
        pending_op *p = realloc(l->ops, (size_t)cap * sizeof *p);
        if (!p) abort(); /* cannot lose a completion: that would hang a client */
        l->ops = p;
        l->cap = cap;
    }
    if (fire_state) atomic_fetch_add(&t->refs, 1); /* keep it alive until fired */
    l->ops[l->n++] = (pending_op){t, fire_state, release};
}

static void ops_run(op_list *l)
{
    for (int i = 0; i < l->n; i++) {
        pending_op *p = &l->ops[i];
        if (p->fire_state && p->t->done) p->t->done(p->t->done_arg, p->fire_state);
        if (p->fire_state) nesfd_ticket_release(p->t);
        if (p->release) nesfd_ticket_release(p->t);
    }
    l->n = 0;
}

static void unqueue(nesfd_batcher *b, nesfd_ticket *t)
{
    if (!t->in_queue) return;
    if (t->qprev) t->qprev->qnext = t->qnext;
    else b->qhead = t->qnext;
    if (t->qnext) t->qnext->qprev = t->qprev;
    else b->qtail = t->qprev;
    t->qprev = t->qnext = NULL;
    t->in_queue = 0;
    b->queued -= t->n - t->next;
    t->next = t->n;
}

/* Leaves the live list when nothing of the ticket is queued or running;
 * returns 1 when the batcher's reference must then be released. */
static int unlive(nesfd_batcher *b, nesfd_ticket *t)
{
    if (!t->live || t->in_queue || t->running) return 0;
    if (t->lprev) t->lprev->lnext = t->lnext;
    else b->live = t->lnext;
    if (t->lnext) t->lnext->lprev = t->lprev;
    t->lprev = t->lnext = NULL;
    t->live = 0;
    return 1;
}

/* Drops a queued ticket that is no longer pending (timed out, cancelled). */
static void drop(nesfd_batcher *b, nesfd_ticket *t, op_list *ops)
{
    unqueue(b, t);
    ops_add(ops, t, 0, unlive(b, t));
}

/* Gathers the next batch into b->batch; returns its size (0: none due yet,
 * *wait_until set to when the head becomes due, 0 when the queue is empty). */
static int gather(nesfd_batcher *b, int64_t now, int64_t *wait_until, int *nt, op_list *ops)
{
    *wait_until = 0;
    *nt = 0;
    while (b->qhead && atomic_load(&b->qhead->state) != NESFD_TICKET_PENDING) drop(b, b->qhead, ops);
    nesfd_ticket *head = b->qhead;
    if (!head) return 0;
    int avail = 0;
    for (nesfd_ticket *t = head; t && avail < b->o.max_batch; t = t->qnext)
        if (!strcmp(t->key, head->key) && atomic_load(&t->state) == NESFD_TICKET_PENDING)
            avail += t->n - t->next;
    int64_t due = head->enqueued + b->o.max_delay_us * 1000;
    if (avail < b->o.max_batch && now < due && !b->stopping) {
        *wait_until = due;
        return 0;
    }
    int n = 0;
    nesfd_ticket *t = head;
    while (t && n < b->o.max_batch) {
        nesfd_ticket *next = t->qnext;
        if (atomic_load(&t->state) != NESFD_TICKET_PENDING) {
            drop(b, t, ops);
        } else if (!strcmp(t->key, head->key)) {
            int k = t->n - t->next;
            if (k > b->o.max_batch - n) k = b->o.max_batch - n;
            for (int i = 0; i < k; i++) b->batch[n + i] = &t->items[t->next + i];
            b->batch_tickets[*nt] = t;
            b->batch_counts[(*nt)++] = k;
            n += k;
            t->next += k;
            t->running += k;
            b->queued -= k;
            if (t->next == t->n) unqueue(b, t);
        }
        t = next;
    }
    return n;
}

static void timed_wait(pthread_cond_t *cv, pthread_mutex_t *mu, int64_t until_ns)
{
    struct timespec ts = {(time_t)(until_ns / 1000000000), (long)(until_ns % 1000000000)};
    pthread_cond_timedwait(cv, mu, &ts);
}

static void *worker_main(void *arg)
{
    nesfd_batcher *b = arg;
    op_list ops = {0};
    pthread_mutex_lock(&b->mu);
    for (;;) {
        int64_t now = nesf_clock_ns(), wait_until;
        int nt, n = gather(b, now, &wait_until, &nt, &ops);
        if (ops.n) {
            pthread_mutex_unlock(&b->mu);
            ops_run(&ops);
            pthread_mutex_lock(&b->mu);
            if (!n) continue;
        }
        if (!n) {
            if (b->stopping) break;
            if (wait_until) timed_wait(&b->work_cv, &b->mu, wait_until);
            else pthread_cond_wait(&b->work_cv, &b->mu);
            continue;
        }
        const char *key = b->batch_tickets[0]->key; /* alive: it has running items */
        pthread_mutex_unlock(&b->mu);

        int64_t start = nesf_clock_ns();
        for (int j = 0, i = 0; j < nt; j++) {
            nesfd_ticket *t = b->batch_tickets[j];
            long long expected = -1;
            atomic_compare_exchange_strong(&t->first_wait_ns, &expected,
                                           (long long)(start - t->enqueued));
            int mb = atomic_load(&t->max_batch);
            while (mb < n && !atomic_compare_exchange_weak(&t->max_batch, &mb, n)) {}
            for (int k = 0; k < b->batch_counts[j]; k++, i++) {
                b->batch[i]->queue_wait = (double)(start - t->enqueued) * 1e-9;
                b->batch[i]->batch_size = n;
                b->batch[i]->status = 0;
            }
        }
        b->batch_nt = nt;
        b->fn(b->ctx, key, b->batch, n);
        b->batch_nt = 0;

        pthread_mutex_lock(&b->mu);
        int aborted = atomic_load(&b->aborting);
        for (int j = 0; j < nt; j++) {
            nesfd_ticket *t = b->batch_tickets[j];
            t->running -= b->batch_counts[j];
            int complete = !t->in_queue && t->running == 0 && t->next == t->n;
            int end = aborted ? NESFD_TICKET_CANCELLED : NESFD_TICKET_DONE;
            int fire = (complete || aborted) && finish(t, end) ? end : 0;
            if (aborted && t->in_queue) drop(b, t, &ops);
            ops_add(&ops, t, fire, unlive(b, t));
        }
    }
    pthread_mutex_unlock(&b->mu);
    ops_run(&ops);
    free(ops.ops);
    return NULL;
}

/* Fires TIMEOUT on time, also while the worker is inside a long batch. */
static void *watchdog_main(void *arg)
{
    nesfd_batcher *b = arg;
    op_list ops = {0};
    pthread_mutex_lock(&b->mu);
    while (!b->stopping) {
        int64_t now = nesf_clock_ns(), earliest = 0;
        nesfd_ticket *t = b->live;
        while (t) {
            nesfd_ticket *next = t->lnext;
            if (t->deadline && atomic_load(&t->state) == NESFD_TICKET_PENDING) {
                if (t->deadline <= now) {
                    if (finish(t, NESFD_TICKET_TIMEOUT)) ops_add(&ops, t, NESFD_TICKET_TIMEOUT, 0);
                    if (t->in_queue) drop(b, t, &ops);
                } else if (!earliest || t->deadline < earliest) {
                    earliest = t->deadline;
                }
            }
            t = next;
        }
        if (ops.n) {
            pthread_cond_signal(&b->work_cv); /* its head may have gone */
            pthread_mutex_unlock(&b->mu);
            ops_run(&ops);
            pthread_mutex_lock(&b->mu);
            continue;
        }
        if (earliest) timed_wait(&b->dog_cv, &b->mu, earliest);
        else pthread_cond_wait(&b->dog_cv, &b->mu);
    }
    pthread_mutex_unlock(&b->mu);
    free(ops.ops);
    return NULL;
}

nesfd_batcher *nesfd_batcher_new(const nesfd_batcher_opts *o, nesfd_batch_fn fn, void *ctx)
{
    if (!o || o->max_batch < 1 || o->max_delay_us < 0 || o->queue_limit < 1 || !fn) return NULL;
    nesfd_batcher *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->o = *o;
    snprintf(b->name, sizeof b->name, "%s", o->name ? o->name : "batcher");
    b->o.name = b->name;
    b->fn = fn;
    b->ctx = ctx;
    b->batch = calloc((size_t)o->max_batch, sizeof *b->batch);
    b->batch_tickets = calloc((size_t)o->max_batch, sizeof *b->batch_tickets);
    b->batch_counts = calloc((size_t)o->max_batch, sizeof *b->batch_counts);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->work_cv, &ca);
    pthread_cond_init(&b->dog_cv, &ca);
    pthread_condattr_destroy(&ca);
    if (!b->batch || !b->batch_tickets || !b->batch_counts) goto fail;
    if (pthread_create(&b->worker, NULL, worker_main, b)) goto fail;
    b->worker_started = 1;
    if (pthread_create(&b->dog, NULL, watchdog_main, b)) goto fail;
    b->dog_started = 1;
    char tn[16];
    snprintf(tn, sizeof tn, "b:%s", b->name);
    pthread_setname_np(b->worker, tn);
    snprintf(tn, sizeof tn, "w:%s", b->name);
    pthread_setname_np(b->dog, tn);
    return b;
fail:
    nesfd_batcher_free(b);
    return NULL;
}

int nesfd_batcher_submit(nesfd_batcher *b, nesfd_ticket *t)
{
    pthread_mutex_lock(&b->mu);
    if (b->stopping) {
        pthread_mutex_unlock(&b->mu);
        return NESFD_SUBMIT_STOPPED;
    }
    if (b->queued + t->n > b->o.queue_limit) {
        pthread_mutex_unlock(&b->mu);
        return NESFD_SUBMIT_FULL;
    }
    atomic_fetch_add(&t->refs, 1);
    t->enqueued = nesf_clock_ns();
    t->next = 0;
    t->in_queue = t->live = 1;
    t->qprev = b->qtail;
    t->qnext = NULL;
    if (b->qtail) b->qtail->qnext = t;
    else b->qhead = t;
    b->qtail = t;
    t->lprev = NULL;
    t->lnext = b->live;
    if (b->live) b->live->lprev = t;
    b->live = t;
    b->queued += t->n;
    pthread_cond_signal(&b->work_cv);
    if (t->deadline) pthread_cond_signal(&b->dog_cv);
    pthread_mutex_unlock(&b->mu);
    return NESFD_SUBMIT_OK;
}

int nesfd_batcher_depth(nesfd_batcher *b)
{
    pthread_mutex_lock(&b->mu);
    int n = b->queued;
    pthread_mutex_unlock(&b->mu);
    return n;
}

int nesfd_batcher_abandoned(nesfd_batcher *b)
{
    if (atomic_load(&b->aborting)) return 1;
    for (int j = 0; j < b->batch_nt; j++) /* worker scratch: this thread's own */
        if (atomic_load(&b->batch_tickets[j]->state) == NESFD_TICKET_PENDING) return 0;
    return b->batch_nt > 0;
}

void nesfd_batcher_abort(nesfd_batcher *b)
{
    if (b) atomic_store(&b->aborting, 1);
}

void nesfd_batcher_stop(nesfd_batcher *b)
{
    if (!b) return;
    op_list ops = {0};
    pthread_mutex_lock(&b->mu);
    if (b->stopped) {
        pthread_mutex_unlock(&b->mu);
        return;
    }
    b->stopping = b->stopped = 1;
    while (b->qhead) {
        nesfd_ticket *t = b->qhead;
        if (finish(t, NESFD_TICKET_CANCELLED)) ops_add(&ops, t, NESFD_TICKET_CANCELLED, 0);
        drop(b, t, &ops);
    }
    pthread_cond_broadcast(&b->work_cv);
    pthread_cond_broadcast(&b->dog_cv);
    pthread_mutex_unlock(&b->mu);
    ops_run(&ops);
    free(ops.ops);
    if (b->worker_started) pthread_join(b->worker, NULL);
    if (b->dog_started) pthread_join(b->dog, NULL);
    b->worker_started = b->dog_started = 0;
}

void nesfd_batcher_free(nesfd_batcher *b)
{
    if (!b) return;
    nesfd_batcher_stop(b);
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->work_cv);
    pthread_cond_destroy(&b->dog_cv);
    free(b->batch);
    free(b->batch_tickets);
    free(b->batch_counts);
    free(b);
}

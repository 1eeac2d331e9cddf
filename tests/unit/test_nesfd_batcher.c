/* The daemon's dynamic batcher: gathering, keys, splitting, queue limit,
 * deadlines fired during a long batch, cancellation on stop, and a
 * multi-threaded stress run where every ticket must end exactly once with
 * the right results. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "batcher.h"

/* ---- a test batch function: out[i] = 2 * in[i], with call records ---- */

typedef struct {
    int n;
    int *in, *out;
    atomic_int *freed; /* counts free_data calls */
} job;

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int calls;
    int sizes[1024];
    char keys[1024][16];
    int block;          /* the batch function waits while set */
    int in_call;
    int sleep_ms;
} recorder;

static void batch_fn(void *ctx, const char *key, nesfd_item *const *items, int n)
{
    recorder *rec = ctx;
    pthread_mutex_lock(&rec->mu);
    if (rec->calls < 1024) {
        rec->sizes[rec->calls] = n;
        snprintf(rec->keys[rec->calls], sizeof rec->keys[0], "%s", key);
    }
    rec->calls++;
    rec->in_call = 1;
    pthread_cond_broadcast(&rec->cv);
    while (rec->block) pthread_cond_wait(&rec->cv, &rec->mu);
    int sleep_ms = rec->sleep_ms;
    pthread_mutex_unlock(&rec->mu);
    if (sleep_ms) usleep((useconds_t)sleep_ms * 1000);
    for (int i = 0; i < n; i++) {
        job *j = items[i]->data;
        j->out[items[i]->index] = 2 * j->in[items[i]->index];
    }
    pthread_mutex_lock(&rec->mu);
    rec->in_call = 0;
    pthread_mutex_unlock(&rec->mu);
}

static void rec_init(recorder *r)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
}

static void rec_unblock(recorder *r)
{
    pthread_mutex_lock(&r->mu);
    r->block = 0;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void *unblock_later(void *r)
{
    usleep(50000);
    rec_unblock(r);
    return NULL;
}

static void rec_wait_in_call(recorder *r)
{
    pthread_mutex_lock(&r->mu);
    while (!r->in_call) pthread_cond_wait(&r->cv, &r->mu);
    pthread_mutex_unlock(&r->mu);
}

/* ---- completion tracking ---- */

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int state, fired;
    int64_t when;
} waiter;

static void on_done(void *arg, int state)
{
    waiter *w = arg;
    pthread_mutex_lock(&w->mu);
    w->state = state;
    w->fired++;
    w->when = nesf_clock_ns();
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static int wait_done(waiter *w)
{
    pthread_mutex_lock(&w->mu);
    while (!w->fired) pthread_cond_wait(&w->cv, &w->mu);
    int s = w->state;
    pthread_mutex_unlock(&w->mu);
    return s;
}

static void free_job(void *p)
{
    job *j = p;
    atomic_fetch_add(j->freed, 1);
    free(j->in);
    free(j->out);
    free(j);
}

static atomic_int freed_count;

static nesfd_ticket *make_ticket(int n, int base, const char *key, int64_t deadline, waiter *w)
{
    job *j = calloc(1, sizeof *j);
    j->n = n;
    j->in = calloc((size_t)n, sizeof *j->in);
    j->out = calloc((size_t)n, sizeof *j->out);
    j->freed = &freed_count;
    for (int i = 0; i < n; i++) j->in[i] = base + i;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    w->fired = 0;
    nesfd_ticket *t = nesfd_ticket_new(n, key, deadline, on_done, w, j, free_job);
    assert_non_null(t);
    return t;
}

static void check_results(nesfd_ticket *t, int base)
{
    job *j = nesfd_ticket_data(t);
    for (int i = 0; i < j->n; i++) assert_int_equal(j->out[i], 2 * (base + i));
}

static nesfd_batcher *make_batcher(recorder *rec, int max_batch, int64_t delay_us, int limit)
{
    nesfd_batcher_opts o = {"test", max_batch, delay_us, limit};
    nesfd_batcher *b = nesfd_batcher_new(&o, batch_fn, rec);
    assert_non_null(b);
    return b;
}

/* Tickets submitted within the delay window share one call. */
static void test_gathers(void **state)
{
    (void)state;
    recorder rec;
    rec_init(&rec);
    nesfd_batcher *b = make_batcher(&rec, 16, 200000, 100);
    waiter w[3];
    nesfd_ticket *t[3];
    for (int i = 0; i < 3; i++) {
        t[i] = make_ticket(2 + i, 100 * i, "k", 0, &w[i]);
        assert_int_equal(nesfd_batcher_submit(b, t[i]), NESFD_SUBMIT_OK);
    }
    for (int i = 0; i < 3; i++) {
        assert_int_equal(wait_done(&w[i]), NESFD_TICKET_DONE);
        check_results(t[i], 100 * i);
        assert_int_equal(nesfd_ticket_max_batch(t[i]), 9);
        assert_true(nesfd_ticket_queue_wait(t[i]) >= 0);
    }
    assert_int_equal(rec.calls, 1);
    assert_int_equal(rec.sizes[0], 9);
    for (int i = 0; i < 3; i++) nesfd_ticket_release(t[i]);
    nesfd_batcher_free(b);
}

/* A full batch does not wait for the delay; big tickets are split. */
static void test_split_and_full_batch(void **state)
{
    (void)state;
    recorder rec;
    rec_init(&rec);
    nesfd_batcher *b = make_batcher(&rec, 4, 10 * 1000000LL, 100); /* 10 s delay */
    waiter w;
    int64_t t0 = nesf_clock_ns();
    nesfd_ticket *t = make_ticket(12, 7, "k", 0, &w);
    assert_int_equal(nesfd_batcher_submit(b, t), NESFD_SUBMIT_OK);
    assert_int_equal(wait_done(&w), NESFD_TICKET_DONE);
    assert_true(nesf_clock_ns() - t0 < 2000000000LL);
    check_results(t, 7);
    assert_int_equal(rec.calls, 3);
    for (int i = 0; i < 3; i++) assert_int_equal(rec.sizes[i], 4);
    assert_int_equal(w.fired, 1);
    nesfd_ticket_release(t);
    nesfd_batcher_free(b);
}

/* Different keys never share a call; order is kept per key. */
static void test_keys(void **state)
{
    (void)state;
    recorder rec;
    rec_init(&rec);
    rec.block = 1;
    nesfd_batcher *b = make_batcher(&rec, 64, 0, 100);
    waiter w0, w[4];
    nesfd_ticket *first = make_ticket(1, 0, "a", 0, &w0);
    assert_int_equal(nesfd_batcher_submit(b, first), NESFD_SUBMIT_OK);
    rec_wait_in_call(&rec); /* the worker is busy: the next ones queue up */
    const char *keys[4] = {"a", "b", "a", "b"};
    nesfd_ticket *t[4];
    for (int i = 0; i < 4; i++) {
        t[i] = make_ticket(3, 10 * i, keys[i], 0, &w[i]);
        assert_int_equal(nesfd_batcher_submit(b, t[i]), NESFD_SUBMIT_OK);
    }
    assert_int_equal(nesfd_batcher_depth(b), 12);
    rec_unblock(&rec);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(wait_done(&w[i]), NESFD_TICKET_DONE);
        check_results(t[i], 10 * i);
        nesfd_ticket_release(t[i]);
    }
    wait_done(&w0);
    nesfd_ticket_release(first);
    assert_int_equal(rec.calls, 3);
    assert_string_equal(rec.keys[1], "a");
    assert_int_equal(rec.sizes[1], 6);
    assert_string_equal(rec.keys[2], "b");
    assert_int_equal(rec.sizes[2], 6);
    assert_int_equal(nesfd_batcher_depth(b), 0);
    nesfd_batcher_free(b);
}

static void test_queue_limit(void **state)
{
    (void)state;
    recorder rec;
    rec_init(&rec);
    rec.block = 1;
    nesfd_batcher *b = make_batcher(&rec, 2, 0, 5);
    waiter w[4];
    nesfd_ticket *t0 = make_ticket(2, 0, "k", 0, &w[0]);
    assert_int_equal(nesfd_batcher_submit(b, t0), NESFD_SUBMIT_OK);
    rec_wait_in_call(&rec); /* t0 runs, queue empty */
    nesfd_ticket *t1 = make_ticket(4, 0, "k", 0, &w[1]);
    nesfd_ticket *t2 = make_ticket(2, 0, "k", 0, &w[2]);
    nesfd_ticket *t3 = make_ticket(1, 0, "k", 0, &w[3]);
    assert_int_equal(nesfd_batcher_submit(b, t1), NESFD_SUBMIT_OK);
    assert_int_equal(nesfd_batcher_submit(b, t2), NESFD_SUBMIT_FULL); /* 4 + 2 > 5 */
    assert_int_equal(nesfd_batcher_submit(b, t3), NESFD_SUBMIT_OK);   /* 4 + 1 */
    rec_unblock(&rec);
    assert_int_equal(wait_done(&w[1]), NESFD_TICKET_DONE);
    assert_int_equal(wait_done(&w[3]), NESFD_TICKET_DONE);
    assert_int_equal(w[2].fired, 0); /* refused tickets never fire */
    nesfd_ticket_release(t0);
    nesfd_ticket_release(t1);
    nesfd_ticket_release(t2);
    nesfd_ticket_release(t3);
    nesfd_batcher_free(b);
}

/* A queued ticket times out on time while the worker is stuck in a long
 * batch; a running one times out too, and its data outlives the creator's
 * release until the batch has written into it. */
static void test_deadline(void **state)
{
    (void)state;
    recorder rec;
    rec_init(&rec);
    rec.sleep_ms = 400;
    nesfd_batcher *b = make_batcher(&rec, 1, 0, 100);
    int before = atomic_load(&freed_count);
    waiter wr, wq;
    int64_t t0 = nesf_clock_ns();
    nesfd_ticket *running = make_ticket(1, 5, "k", t0 + 100000000LL, &wr);
    nesfd_ticket *queued = make_ticket(1, 6, "k", t0 + 150000000LL, &wq);
    assert_int_equal(nesfd_batcher_submit(b, running), NESFD_SUBMIT_OK);
    assert_int_equal(nesfd_batcher_submit(b, queued), NESFD_SUBMIT_OK);
    assert_int_equal(wait_done(&wr), NESFD_TICKET_TIMEOUT);
    assert_int_equal(wait_done(&wq), NESFD_TICKET_TIMEOUT);
    assert_true(wr.when - t0 < 300000000LL); /* before the 400 ms batch ended */
    assert_true(wq.when - t0 < 300000000LL);
    assert_true(wq.when - t0 >= 150000000LL);
    assert_int_equal(nesfd_batcher_depth(b), 0); /* the timed-out item left the queue */
    nesfd_ticket_release(running);               /* still being written by the batch */
    nesfd_ticket_release(queued);
    /* the watchdog drops its reference right after firing */
    for (int i = 0; i < 100 && atomic_load(&freed_count) < before + 1; i++) usleep(1000);
    assert_int_equal(atomic_load(&freed_count), before + 1); /* only the queued one */
    nesfd_batcher_free(b);                                   /* waits for the batch */
    assert_int_equal(atomic_load(&freed_count), before + 2);
    assert_int_equal(rec.calls, 1); /* the timed-out queued item never ran */
    assert_int_equal(wr.fired, 1);
}

/* A batch function that runs until its batch is abandoned (at most 5 s). */
static nesfd_batcher *spin_batcher;
static atomic_int spin_saw_abandoned;

static void spin_fn(void *ctx, const char *key, nesfd_item *const *items, int n)
{
    (void)ctx;
    (void)key;
    for (int i = 0; i < 5000 && !nesfd_batcher_abandoned(spin_batcher); i++) usleep(1000);
    atomic_store(&spin_saw_abandoned, nesfd_batcher_abandoned(spin_batcher));
    for (int i = 0; i < n; i++) items[i]->status = 1;
}

/* The running batch learns that its only ticket timed out, and that abort
 * was called; an aborted batch's tickets end CANCELLED. */
static void test_abandoned_and_abort(void **state)
{
    (void)state;
    nesfd_batcher_opts o = {"t", 4, 0, 100};
    nesfd_batcher *b = spin_batcher = nesfd_batcher_new(&o, spin_fn, NULL);
    assert_non_null(b);
    waiter w0, w1;
    int64_t t0 = nesf_clock_ns();
    nesfd_ticket *late = make_ticket(1, 1, "k", t0 + 100000000LL, &w0);
    assert_int_equal(nesfd_batcher_submit(b, late), NESFD_SUBMIT_OK);
    assert_int_equal(wait_done(&w0), NESFD_TICKET_TIMEOUT);
    for (int i = 0; i < 2000 && !atomic_load(&spin_saw_abandoned); i++) usleep(1000);
    assert_true(atomic_load(&spin_saw_abandoned)); /* well before its 5 s */
    assert_true(nesf_clock_ns() - t0 < 2000000000LL);
    atomic_store(&spin_saw_abandoned, 0);
    nesfd_ticket *forever = make_ticket(1, 2, "k", 0, &w1);
    assert_int_equal(nesfd_batcher_submit(b, forever), NESFD_SUBMIT_OK);
    usleep(50000);
    assert_int_equal(nesfd_ticket_state(forever), NESFD_TICKET_PENDING); /* still running */
    t0 = nesf_clock_ns();
    nesfd_batcher_abort(b);
    assert_int_equal(wait_done(&w1), NESFD_TICKET_CANCELLED);
    assert_true(nesf_clock_ns() - t0 < 1000000000LL);
    nesfd_ticket_release(late);
    nesfd_ticket_release(forever);
    nesfd_batcher_free(b);
}

static void test_stop_cancels(void **state)
{
    (void)state;
    recorder rec;
    rec_init(&rec);
    rec.block = 1;
    nesfd_batcher *b = make_batcher(&rec, 1, 0, 100);
    waiter w0, w1;
    nesfd_ticket *t0 = make_ticket(1, 1, "k", 0, &w0);
    nesfd_ticket *t1 = make_ticket(1, 2, "k", 0, &w1);
    assert_int_equal(nesfd_batcher_submit(b, t0), NESFD_SUBMIT_OK);
    rec_wait_in_call(&rec);
    assert_int_equal(nesfd_batcher_submit(b, t1), NESFD_SUBMIT_OK);
    pthread_t th;
    /* stop blocks on the running batch: unblock it from another thread */
    pthread_create(&th, NULL, unblock_later, &rec);
    nesfd_batcher_stop(b);
    pthread_join(th, NULL);
    assert_int_equal(wait_done(&w1), NESFD_TICKET_CANCELLED);
    assert_int_equal(wait_done(&w0), NESFD_TICKET_DONE);
    check_results(t0, 1);
    waiter w2;
    nesfd_ticket *t2 = make_ticket(1, 0, "k", 0, &w2);
    assert_int_equal(nesfd_batcher_submit(b, t2), NESFD_SUBMIT_STOPPED);
    nesfd_ticket_release(t0);
    nesfd_ticket_release(t1);
    nesfd_ticket_release(t2);
    nesfd_batcher_free(b);
}

/* ---- stress: 8 submitters x 150 tickets, two keys, random sizes ---- */

typedef struct {
    nesfd_batcher *b;
    int seed, errors;
} submitter;

static void *submit_main(void *arg)
{
    submitter *s = arg;
    unsigned r = (unsigned)s->seed;
    for (int k = 0; k < 150; k++) {
        r = r * 1103515245u + 12345u;
        int n = 1 + (int)((r >> 16) % 7), base = (int)((r >> 8) % 1000);
        waiter w;
        nesfd_ticket *t = make_ticket(n, base, (r & 1) ? "x" : "y", 0, &w);
        int rc;
        while ((rc = nesfd_batcher_submit(s->b, t)) == NESFD_SUBMIT_FULL) usleep(100);
        if (rc != NESFD_SUBMIT_OK || wait_done(&w) != NESFD_TICKET_DONE) s->errors++;
        job *j = nesfd_ticket_data(t);
        for (int i = 0; i < n; i++)
            if (j->out[i] != 2 * (base + i)) s->errors++;
        if (w.fired != 1) s->errors++;
        nesfd_ticket_release(t);
    }
    return NULL;
}

static void test_stress(void **state)
{
    (void)state;
    recorder rec;
    rec_init(&rec);
    nesfd_batcher *b = make_batcher(&rec, 8, 300, 40);
    int before = atomic_load(&freed_count);
    submitter s[8];
    pthread_t th[8];
    for (int i = 0; i < 8; i++) {
        s[i] = (submitter){b, i + 1, 0};
        pthread_create(&th[i], NULL, submit_main, &s[i]);
    }
    for (int i = 0; i < 8; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(s[i].errors, 0);
    }
    nesfd_batcher_free(b);
    assert_int_equal(atomic_load(&freed_count), before + 8 * 150);
    int multi = 0;
    for (int i = 0; i < rec.calls && i < 1024; i++) {
        assert_true(rec.sizes[i] >= 1 && rec.sizes[i] <= 8);
        multi += rec.sizes[i] > 1;
    }
    assert_true(multi > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gathers),
        cmocka_unit_test(test_split_and_full_batch),
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_queue_limit),
        cmocka_unit_test(test_deadline),
        cmocka_unit_test(test_stop_cancels),
        cmocka_unit_test(test_abandoned_and_abort),
        cmocka_unit_test(test_stress),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

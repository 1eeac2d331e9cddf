/* batcher.h - dynamic batching: work items from concurrent requests are
 * gathered into one call of a batch function on a single worker thread.
 *
 * A request submits a ticket of n items that share a key (for nesfd: the
 * operation and the decoding options).  The worker takes the oldest queued
 * item's key and gathers queued items with that key, in arrival order,
 * until it has max_batch of them or the oldest has waited max_delay_us;
 * then it runs the batch function once on them.  Items of different keys
 * never share a call.  A ticket may be split over several calls.
 *
 * Every ticket ends exactly once through its done callback:
 *   NESFD_TICKET_DONE     all items went through the batch function;
 *   NESFD_TICKET_TIMEOUT  its deadline passed first (a watchdog thread
 *                         fires it on time even while a long batch runs);
 *   NESFD_TICKET_CANCELLED the batcher stopped first.
 * done runs on a batcher thread (or the caller of nesfd_batcher_stop) with
 * no batcher lock held.
 *
 * Ownership: a ticket is reference-counted.  The creator holds one
 * reference (nesfd_ticket_release) and the batcher one while any item is
 * queued or running, so a ticket that timed out can still be written to by
 * a running batch after its creator has gone.  That is why inputs and
 * outputs live in the ticket's data block, freed by free_data when the last
 * reference goes. */
#ifndef NESFD_BATCHER_H
#define NESFD_BATCHER_H

#include <stdint.h>

#include "clock.h"

enum {
    NESFD_TICKET_PENDING = 0,
    NESFD_TICKET_DONE,
    NESFD_TICKET_TIMEOUT,
    NESFD_TICKET_CANCELLED,
};

/* nesfd_batcher_submit results */
enum { NESFD_SUBMIT_OK = 0, NESFD_SUBMIT_FULL, NESFD_SUBMIT_STOPPED };

typedef struct nesfd_ticket nesfd_ticket;
typedef struct nesfd_batcher nesfd_batcher;

typedef struct nesfd_item {
    void *data;          /* the ticket's data block */
    int index;           /* item index within its ticket */
    int status;          /* set by the batch function; 0 = success */
    double queue_wait;   /* seconds from submit to the start of its batch */
    int batch_size;      /* items in the call that processed it */
    struct nesfd_ticket *ticket; /* the ticket it belongs to */
} nesfd_item;

/* Processes n items with the same key; sets each item's status and writes
 * its outputs into the item's data block.  Runs on the worker thread. */
typedef void (*nesfd_batch_fn)(void *ctx, const char *key, nesfd_item *const *items, int n);
typedef void (*nesfd_done_fn)(void *arg, int state);

/* deadline_ns: CLOCK_MONOTONIC nanoseconds (nesf_clock_ns), 0 = none.
 * key is copied.  Returns NULL on allocation failure. */
nesfd_ticket *nesfd_ticket_new(int n, const char *key, int64_t deadline_ns, nesfd_done_fn done,
                               void *done_arg, void *data, void (*free_data)(void *data));
nesfd_item *nesfd_ticket_item(nesfd_ticket *t, int i);
int nesfd_ticket_count(const nesfd_ticket *t);
/* NESFD_TICKET_*; once not PENDING it never changes. */
int nesfd_ticket_state(const nesfd_ticket *t);
/* Largest batch any of its items went into. */
int nesfd_ticket_max_batch(const nesfd_ticket *t);
/* Seconds the ticket's first item waited for its batch (-1 if none ran). */
double nesfd_ticket_queue_wait(const nesfd_ticket *t);
void *nesfd_ticket_data(nesfd_ticket *t);
void nesfd_ticket_release(nesfd_ticket *t);

typedef struct nesfd_batcher_opts {
    const char *name;       /* thread names, logs */
    int max_batch;          /* >= 1 */
    int64_t max_delay_us;   /* >= 0 */
    int queue_limit;        /* queued items; a ticket that would pass it is refused */
} nesfd_batcher_opts;

/* Starts the worker and the watchdog threads; NULL on failure. */
nesfd_batcher *nesfd_batcher_new(const nesfd_batcher_opts *o, nesfd_batch_fn fn, void *ctx);
/* Queues every item of t (all or none). */
int nesfd_batcher_submit(nesfd_batcher *b, nesfd_ticket *t);
/* Items queued and not yet in a batch. */
int nesfd_batcher_depth(nesfd_batcher *b);
/* Only from inside the batch function: 1 when nobody waits for the
 * running batch any more (every ticket in it timed out or was cancelled,
 * or nesfd_batcher_abort was called), so it may stop early.  A batch that
 * stops early sets its items' status to nonzero. */
int nesfd_batcher_abandoned(nesfd_batcher *b);
/* Makes the running batch abandoned (its tickets end CANCELLED, not DONE,
 * whatever the batch function left) and every later one too: the enforced
 * end of a shutdown grace.  Any thread, idempotent; stop still follows. */
void nesfd_batcher_abort(nesfd_batcher *b);
/* Refuses new tickets, cancels queued ones, waits for the running batch
 * and joins the threads.  Idempotent. */
void nesfd_batcher_stop(nesfd_batcher *b);
/* Stops if needed and frees. */
void nesfd_batcher_free(nesfd_batcher *b);


#endif

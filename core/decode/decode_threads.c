/* decode_threads.c - a batch's structures spread over the cores.
 * Structures are independent and NMS is the one long sequential piece of
 * host work per structure, so paper mode runs it one structure per task on
 * threads (results do not depend on the thread count). */
#include "decode_internal.h"

#include <pthread.h>
#include <unistd.h>

#define MAX_THREADS 64

typedef struct structure_tasks {
    void (*fn)(void *arg, int s, int tid);
    void *arg;
    int S, next;
} structure_tasks;

typedef struct structure_thread {
    structure_tasks *t;
    int tid;
} structure_thread;

/* Takes the next free structure until none is left. */
static void tasks_work(structure_tasks *t, int tid)
{
    for (;;) {
        int s = __atomic_fetch_add(&t->next, 1, __ATOMIC_RELAXED);
        if (s >= t->S) break;
        t->fn(t->arg, s, tid);
    }
}

static void *thread_main(void *arg)
{
    structure_thread *th = arg;
    tasks_work(th->t, th->tid);
    return NULL;
}

/* The cores, at most one per structure. */
int nesf__structure_threads(int S)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) n = 1;
    if (n > MAX_THREADS) n = MAX_THREADS;
    return (int)(n < S ? n : S);
}

/* The calling thread works too, so that a thread that could not start
 * only costs speed. */
void nesf__for_structures(int S, int T, void (*fn)(void *arg, int s, int tid), void *arg)
{
    pthread_t th[MAX_THREADS];
    structure_thread targ[MAX_THREADS];
    structure_tasks t = {.fn = fn, .arg = arg, .S = S, .next = 0};
    if (T > MAX_THREADS) T = MAX_THREADS;
    int started = 0;
    for (int i = 1; i < T; i++) {
        targ[i] = (structure_thread){&t, i};
        if (pthread_create(&th[i], NULL, thread_main, &targ[i])) break;
        started = i;
    }
    tasks_work(&t, 0);
    for (int i = 1; i <= started; i++) pthread_join(th[i], NULL);
}

/* metrics.h - the daemon's counters and histograms, rendered in the
 * Prometheus text exposition format (version 0.0.4) for GET /metrics.
 *
 * Labels come from small fixed sets registered at start-up (routes,
 * models), so a caller cannot blow up the series count with odd paths: the
 * http layer maps unknown paths to the route "other".  Every function is
 * thread-safe. */
#ifndef NESFD_METRICS_H
#define NESFD_METRICS_H

#include <stddef.h>

#define NESFD_METRICS_MAX_ROUTES 16
#define NESFD_METRICS_MAX_MODELS 16

typedef enum { NESFD_OP_DECODE, NESFD_OP_ENCODE, NESFD_OP_COUNT } nesfd_op;

typedef struct nesfd_metrics nesfd_metrics;

nesfd_metrics *nesfd_metrics_new(void);
void nesfd_metrics_free(nesfd_metrics *m);

/* Label registration (start-up); return the index or -1 when full. */
int nesfd_metrics_route(nesfd_metrics *m, const char *route);
int nesfd_metrics_model(nesfd_metrics *m, const char *model);

/* One finished request: route index, HTTP status, seconds since arrival. */
void nesfd_metrics_request(nesfd_metrics *m, int route, int status, double seconds);
void nesfd_metrics_inflight(nesfd_metrics *m, int delta);
/* One backend call of n items (latents decoded or structures encoded);
 * waits[i] is how long item i sat in the queue, in seconds. */
void nesfd_metrics_batch(nesfd_metrics *m, int model, nesfd_op op, int n, const double *waits);
/* Requests refused because the queue was full, per model. */
void nesfd_metrics_rejected(nesfd_metrics *m, int model);

/* Gauges sampled at render time (queue depth per model). */
typedef int (*nesfd_metrics_depth_fn)(void *ctx, int model);
void nesfd_metrics_set_depth_fn(nesfd_metrics *m, nesfd_metrics_depth_fn fn, void *ctx);

/* The exposition text (caller frees), NULL on allocation failure. */
char *nesfd_metrics_render(nesfd_metrics *m, size_t *len);

/* Test helpers: totals read back. */
long nesfd_metrics_count(nesfd_metrics *m, int route, int status);
long nesfd_metrics_items(nesfd_metrics *m, int model, nesfd_op op);
long nesfd_metrics_batches(nesfd_metrics *m, int model, nesfd_op op);

#endif

#include "metrics.h"

#include "strbuf.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_STATUS 600
#define MAX_BUCKETS 20

static const double time_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                     0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
static const double size_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
#define NTIME (int)(sizeof time_bounds / sizeof time_bounds[0])
#define NSIZE (int)(sizeof size_bounds / sizeof size_bounds[0])

typedef struct {
    long bucket[MAX_BUCKETS]; /* non-cumulative; the +Inf bucket is count */
    long count;
    double sum;
} histogram;

static void hist_observe(histogram *h, const double *bounds, int nb, double v)
{
    for (int i = 0; i < nb; i++)
        if (v <= bounds[i]) { h->bucket[i]++; break; }
    h->count++;
    h->sum += v;
}

static const char *const op_names[NESFD_OP_COUNT] = {"decode", "encode"};

struct nesfd_metrics {
    pthread_mutex_t mu;
    char routes[NESFD_METRICS_MAX_ROUTES][64];
    int n_routes;
    char models[NESFD_METRICS_MAX_MODELS][64];
    int n_models;
    long status[NESFD_METRICS_MAX_ROUTES][MAX_STATUS];
    histogram latency[NESFD_METRICS_MAX_ROUTES];
    histogram queue_wait[NESFD_METRICS_MAX_MODELS];
    histogram batch[NESFD_METRICS_MAX_MODELS][NESFD_OP_COUNT];
    long rejected[NESFD_METRICS_MAX_MODELS];
    long inflight;
    nesfd_metrics_depth_fn depth_fn;
    void *depth_ctx;
};

nesfd_metrics *nesfd_metrics_new(void)
{
    nesfd_metrics *m = calloc(1, sizeof *m);
    if (m) pthread_mutex_init(&m->mu, NULL);
    return m;
}

void nesfd_metrics_free(nesfd_metrics *m)
{
    if (!m) return;
    pthread_mutex_destroy(&m->mu);
    free(m);
}

static int add_label(char (*names)[64], int *n, int max, const char *name)
{
    for (int i = 0; i < *n; i++)
        if (!strcmp(names[i], name)) return i;
    if (*n == max) return -1;
    snprintf(names[*n], 64, "%s", name);
    return (*n)++;
}

int nesfd_metrics_route(nesfd_metrics *m, const char *route)
{
    pthread_mutex_lock(&m->mu);
    int i = add_label(m->routes, &m->n_routes, NESFD_METRICS_MAX_ROUTES, route);
    pthread_mutex_unlock(&m->mu);
    return i;
}

int nesfd_metrics_model(nesfd_metrics *m, const char *model)
{
    pthread_mutex_lock(&m->mu);
    int i = add_label(m->models, &m->n_models, NESFD_METRICS_MAX_MODELS, model);
    pthread_mutex_unlock(&m->mu);
    return i;
}

void nesfd_metrics_request(nesfd_metrics *m, int route, int status, double seconds)
{
    if (route < 0 || route >= NESFD_METRICS_MAX_ROUTES || status < 100 || status >= MAX_STATUS) return;
    pthread_mutex_lock(&m->mu);
    m->status[route][status]++;
    hist_observe(&m->latency[route], time_bounds, NTIME, seconds);
    pthread_mutex_unlock(&m->mu);
}

void nesfd_metrics_inflight(nesfd_metrics *m, int delta)
{
    pthread_mutex_lock(&m->mu);
    m->inflight += delta;
    pthread_mutex_unlock(&m->mu);
}

void nesfd_metrics_batch(nesfd_metrics *m, int model, nesfd_op op, int n, const double *waits)
{
    if (model < 0 || model >= NESFD_METRICS_MAX_MODELS || op >= NESFD_OP_COUNT) return;
    pthread_mutex_lock(&m->mu);
    hist_observe(&m->batch[model][op], size_bounds, NSIZE, n);
    for (int i = 0; waits && i < n; i++)
        hist_observe(&m->queue_wait[model], time_bounds, NTIME, waits[i]);
    pthread_mutex_unlock(&m->mu);
}

void nesfd_metrics_rejected(nesfd_metrics *m, int model)
{
    if (model < 0 || model >= NESFD_METRICS_MAX_MODELS) return;
    pthread_mutex_lock(&m->mu);
    m->rejected[model]++;
    pthread_mutex_unlock(&m->mu);
}

void nesfd_metrics_set_depth_fn(nesfd_metrics *m, nesfd_metrics_depth_fn fn, void *ctx)
{
    pthread_mutex_lock(&m->mu);
    m->depth_fn = fn;
    m->depth_ctx = ctx;
    pthread_mutex_unlock(&m->mu);
}

long nesfd_metrics_count(nesfd_metrics *m, int route, int status)
{
    if (route < 0 || route >= NESFD_METRICS_MAX_ROUTES || status < 0 || status >= MAX_STATUS) return 0;
    pthread_mutex_lock(&m->mu);
    long v = m->status[route][status];
    pthread_mutex_unlock(&m->mu);
    return v;
}

long nesfd_metrics_items(nesfd_metrics *m, int model, nesfd_op op)
{
    if (model < 0 || model >= NESFD_METRICS_MAX_MODELS || op >= NESFD_OP_COUNT) return 0;
    pthread_mutex_lock(&m->mu);
    long v = (long)m->batch[model][op].sum;
    pthread_mutex_unlock(&m->mu);
    return v;
}

long nesfd_metrics_batches(nesfd_metrics *m, int model, nesfd_op op)
{
    if (model < 0 || model >= NESFD_METRICS_MAX_MODELS || op >= NESFD_OP_COUNT) return 0;
    pthread_mutex_lock(&m->mu);
    long v = m->batch[model][op].count;
    pthread_mutex_unlock(&m->mu);
    return v;
}

/* ---- rendering ---- */

static void render_hist(nesf_strbuf *b, const char *name, const char *labels, const histogram *h,
                        const double *bounds, int nb)
{
    long cum = 0;
    const char *sep = *labels ? "," : "";
    for (int i = 0; i < nb; i++) {
        cum += h->bucket[i];
        nesf_strbuf_printf(b, "%s_bucket{%s%sle=\"%g\"} %ld\n", name, labels, sep, bounds[i], cum);
    }
    nesf_strbuf_printf(b, "%s_bucket{%s%sle=\"+Inf\"} %ld\n", name, labels, sep, h->count);
    nesf_strbuf_printf(b, "%s_sum{%s} %.9g\n", name, labels, h->sum);
    nesf_strbuf_printf(b, "%s_count{%s} %ld\n", name, labels, h->count);
}

char *nesfd_metrics_render(nesfd_metrics *m, size_t *len)
{
    nesf_strbuf b = {0};
    char labels[256];
    /* sample gauges before taking the lock: depth_fn takes batcher locks */
    int depth[NESFD_METRICS_MAX_MODELS] = {0};
    pthread_mutex_lock(&m->mu);
    nesfd_metrics_depth_fn fn = m->depth_fn;
    void *ctx = m->depth_ctx;
    int n_models = m->n_models;
    pthread_mutex_unlock(&m->mu);
    for (int i = 0; fn && i < n_models; i++) depth[i] = fn(ctx, i);

    pthread_mutex_lock(&m->mu);
    nesf_strbuf_printf(&b, "# HELP nesfd_requests_total HTTP requests answered, by route and status.\n"
                "# TYPE nesfd_requests_total counter\n");
    for (int r = 0; r < m->n_routes; r++)
        for (int s = 100; s < MAX_STATUS; s++)
            if (m->status[r][s])
                nesf_strbuf_printf(&b, "nesfd_requests_total{route=\"%s\",status=\"%d\"} %ld\n", m->routes[r], s,
                        m->status[r][s]);
    nesf_strbuf_printf(&b, "# HELP nesfd_errors_total Requests answered with status >= 400, by route and status.\n"
                "# TYPE nesfd_errors_total counter\n");
    for (int r = 0; r < m->n_routes; r++)
        for (int s = 400; s < MAX_STATUS; s++)
            if (m->status[r][s])
                nesf_strbuf_printf(&b, "nesfd_errors_total{route=\"%s\",status=\"%d\"} %ld\n", m->routes[r], s,
                        m->status[r][s]);
    nesf_strbuf_printf(&b, "# HELP nesfd_request_duration_seconds Time from arrival to answer, by route.\n"
                "# TYPE nesfd_request_duration_seconds histogram\n");
    for (int r = 0; r < m->n_routes; r++) {
        if (!m->latency[r].count) continue;
        snprintf(labels, sizeof labels, "route=\"%s\"", m->routes[r]);
        render_hist(&b, "nesfd_request_duration_seconds", labels, &m->latency[r], time_bounds, NTIME);
    }
    nesf_strbuf_printf(&b, "# HELP nesfd_in_flight_requests Requests received and not yet answered.\n"
                "# TYPE nesfd_in_flight_requests gauge\nnesfd_in_flight_requests %ld\n", m->inflight);
    nesf_strbuf_printf(&b, "# HELP nesfd_queue_wait_seconds Time an item waited in its model's queue.\n"
                "# TYPE nesfd_queue_wait_seconds histogram\n");
    for (int i = 0; i < m->n_models; i++) {
        snprintf(labels, sizeof labels, "model=\"%s\"", m->models[i]);
        render_hist(&b, "nesfd_queue_wait_seconds", labels, &m->queue_wait[i], time_bounds, NTIME);
    }
    nesf_strbuf_printf(&b, "# HELP nesfd_batch_size Items per backend call, by model and operation.\n"
                "# TYPE nesfd_batch_size histogram\n");
    for (int i = 0; i < m->n_models; i++)
        for (int op = 0; op < NESFD_OP_COUNT; op++) {
            snprintf(labels, sizeof labels, "model=\"%s\",op=\"%s\"", m->models[i], op_names[op]);
            render_hist(&b, "nesfd_batch_size", labels, &m->batch[i][op], size_bounds, NSIZE);
        }
    nesf_strbuf_printf(&b, "# HELP nesfd_items_total Latents decoded and structures encoded, by model.\n"
                "# TYPE nesfd_items_total counter\n");
    for (int i = 0; i < m->n_models; i++)
        for (int op = 0; op < NESFD_OP_COUNT; op++)
            nesf_strbuf_printf(&b, "nesfd_items_total{model=\"%s\",op=\"%s\"} %.0f\n", m->models[i],
                    op_names[op], m->batch[i][op].sum);
    nesf_strbuf_printf(&b, "# HELP nesfd_rejected_total Requests refused because the model's queue was full.\n"
                "# TYPE nesfd_rejected_total counter\n");
    for (int i = 0; i < m->n_models; i++)
        nesf_strbuf_printf(&b, "nesfd_rejected_total{model=\"%s\"} %ld\n", m->models[i], m->rejected[i]);
    if (fn) {
        nesf_strbuf_printf(&b, "# HELP nesfd_queue_depth Items queued per model, not yet in a batch.\n"
                    "# TYPE nesfd_queue_depth gauge\n");
        for (int i = 0; i < n_models && i < m->n_models; i++)
            nesf_strbuf_printf(&b, "nesfd_queue_depth{model=\"%s\"} %d\n", m->models[i], depth[i]);
    }
    pthread_mutex_unlock(&m->mu);
    return nesf_strbuf_take(&b, len);
}

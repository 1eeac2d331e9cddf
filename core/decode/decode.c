/* decode.c - the reconstruction algorithm on an abstract field, its
 * options, NMS and the ground-truth field.  See decode.h. */
#include "decode.h"
#include "decode_internal.h"
#include "symmetry.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- options ---- */

void nesf_decode_opts_default(nesf_decode_opts *o)
{
    o->grid_step = 0.5f;
    o->grid_pad = 0.5f;
    o->iterations = 64;
    o->score_max = 0.9f;
    o->nms_radius = 0.5f;
    o->nms_min_count = 10;
    o->species_lo = -0.3f;
    o->species_hi = 0.3f;
    o->species_step = 0.1f;
    o->max_atoms = 1024;
    o->max_particles = 1 << 21;
    o->batch_particles = 1L << 20;
    o->repair_lattice = 0;
    o->mode = NESF_DECODE_PAPER;
    o->fast_margin = 1.0f;
    o->fast_tol = 1e-3f;
    o->fast_merge = 0.01f;
    o->symmetrize = 0;
    o->symprec = 0.1f;
    o->cell = NESF_CELL_CONVENTIONAL;
    o->cancel = NULL;
    o->cancel_arg = NULL;
}

void nesf_decode_stats_add(nesf_decode_stats *sum, const nesf_decode_stats *st)
{
    sum->structures += st->structures;
    sum->particles += st->particles;
    sum->field_evals += st->field_evals;
    sum->kept += st->kept;
    sum->atoms += st->atoms;
    sum->truncated += st->truncated;
    sum->lattice_repaired += st->lattice_repaired;
    sum->ms += st->ms;
    sum->ms_flow += st->ms_flow;
    sum->ms_nms += st->ms_nms;
    sum->ms_species += st->ms_species;
    sum->steps += st->steps;
    sum->merged += st->merged;
    sum->symmetrized += st->symmetrized;
    sum->symmetrize_failed += st->symmetrize_failed;
}

typedef struct opt_desc {
    const char *key;
    char type; /* 'f' float, 'i' int, 'l' long, 'm' an int named in JSON (names),
                  'b' a flag (JSON true/false, or 0/1) */
    size_t off;
    double lo, hi;
    const char *const *names; /* 'm': the JSON words for lo..hi */
} opt_desc;

static const char *const mode_names[] = {"paper", "fast"};
static const char *const cell_names[] = {"conventional", "primitive"};

#define OPT(k, t, lo, hi) {#k, t, offsetof(nesf_decode_opts, k), lo, hi, NULL}
#define OPT_NAMED(k, lo, hi, names) {#k, 'm', offsetof(nesf_decode_opts, k), lo, hi, names}
static const opt_desc opt_table[] = {
    OPT(grid_step, 'f', 0.05, 5.0),
    OPT(grid_pad, 'f', 0.0, 20.0),
    OPT(iterations, 'i', 1, 4096),
    OPT(score_max, 'f', 1e-3, 100.0),
    OPT(nms_radius, 'f', 1e-2, 10.0),
    OPT(nms_min_count, 'i', 1, 1e6),
    OPT(species_lo, 'f', -5.0, 5.0),
    OPT(species_hi, 'f', -5.0, 5.0),
    OPT(species_step, 'f', 1e-2, 5.0),
    OPT(max_atoms, 'i', 1, 100000),
    OPT(max_particles, 'i', 1, 1 << 24),
    OPT(batch_particles, 'l', 1, 1L << 28),
    OPT(repair_lattice, 'i', 0, 1),
    OPT_NAMED(mode, NESF_DECODE_PAPER, NESF_DECODE_FAST, mode_names),
    OPT(fast_margin, 'f', 0.0, 20.0),
    OPT(fast_tol, 'f', 1e-6, 1.0),
    OPT(fast_merge, 'f', 0.0, 1.0),
    OPT(symmetrize, 'b', 0, 1),
    OPT(symprec, 'f', 1e-5, 1.0),
    OPT_NAMED(cell, NESF_CELL_CONVENTIONAL, NESF_CELL_PRIMITIVE, cell_names),
};
#undef OPT
#undef OPT_NAMED
#define N_OPTS ((int)(sizeof opt_table / sizeof opt_table[0]))

/* Most points per atom of the species vote (32³). */
#define MAX_SPECIES_POINTS 32768

static double opt_get(const nesf_decode_opts *o, const opt_desc *d)
{
    const char *p = (const char *)o + d->off;
    switch (d->type) {
    case 'f': return *(const float *)p;
    case 'i': case 'm': case 'b': return *(const int *)p;
    default: return (double)*(const long *)p;
    }
}

static void opt_set(nesf_decode_opts *o, const opt_desc *d, double v)
{
    char *p = (char *)o + d->off;
    switch (d->type) {
    case 'f': *(float *)p = (float)v; break;
    case 'i': case 'm': case 'b': *(int *)p = (int)v; break;
    default: *(long *)p = (long)v; break;
    }
}

int nesf_decode_opts_check(const nesf_decode_opts *o, nesf_error *err)
{
    for (int i = 0; i < N_OPTS; i++) {
        double v = opt_get(o, &opt_table[i]);
        if (!(v >= opt_table[i].lo && v <= opt_table[i].hi))
            return nesf_fail(err, NESF_ERR_INVALID, "decode option %s = %g is outside [%g, %g]",
                             opt_table[i].key, v, opt_table[i].lo, opt_table[i].hi);
    }
    if (!(o->species_lo < o->species_hi))
        return nesf_fail(err, NESF_ERR_INVALID,
                         "decode options: species_lo (%g) must be below species_hi (%g)",
                         o->species_lo, o->species_hi);
    long ns = nesf_arange_count(o->species_lo, o->species_hi, o->species_step);
    if (ns * ns * ns > MAX_SPECIES_POINTS)
        return nesf_fail(err, NESF_ERR_INVALID,
                         "decode options: species grid of %ld³ points per atom exceeds %d",
                         ns, MAX_SPECIES_POINTS);
    return NESF_OK;
}

int nesf_decode_opts_from_json(nesf_decode_opts *o, const struct json_t *obj, nesf_error *err)
{
    if (!obj || !json_is_object(obj))
        return nesf_fail(err, NESF_ERR_INVALID, "decode options must be a JSON object");
    nesf_decode_opts t = *o;
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)obj, key, val) {
        const opt_desc *d = NULL;
        for (int i = 0; i < N_OPTS && !d; i++)
            if (!strcmp(opt_table[i].key, key)) d = &opt_table[i];
        if (!d) return nesf_fail(err, NESF_ERR_INVALID, "unknown decode option \"%.64s\"", key);
        double v = -1;
        if (d->type == 'm') {
            for (int m = (int)d->lo; json_is_string(val) && m <= (int)d->hi; m++)
                if (!strcmp(json_string_value(val), d->names[m - (int)d->lo])) v = m;
            if (v < 0)
                return nesf_fail(err, NESF_ERR_INVALID, "decode option %s must be \"%s\" or \"%s\"",
                                 key, d->names[0], d->names[1]);
        } else if (d->type == 'b' && json_is_boolean(val)) {
            v = json_is_true(val);
        } else if (d->type == 'f') {
            if (!json_is_number(val))
                return nesf_fail(err, NESF_ERR_INVALID, "decode option %s must be a number", key);
            v = json_number_value(val);
        } else {
            if (!json_is_integer(val))
                return nesf_fail(err, NESF_ERR_INVALID, "decode option %s must be %s", key,
                                 d->type == 'b' ? "true or false" : "an integer");
            v = (double)json_integer_value(val);
        }
        if (!(v >= d->lo && v <= d->hi))
            return nesf_fail(err, NESF_ERR_INVALID, "decode option %s = %g is outside [%g, %g]",
                             key, v, d->lo, d->hi);
        opt_set(&t, d, v);
    }
    int rc = nesf_decode_opts_check(&t, err);
    if (rc) return rc;
    *o = t;
    return NESF_OK;
}

int nesf_decode_opts_from_text(nesf_decode_opts *o, const char *text, nesf_error *err)
{
    json_error_t je;
    json_t *obj = json_loads(text, 0, &je);
    if (!obj)
        return nesf_fail(err, NESF_ERR_PARSE, "decode options: %s (line %d)", je.text, je.line);
    int rc = nesf_decode_opts_from_json(o, obj, err);
    json_decref(obj);
    return rc;
}

char *nesf_decode_opts_to_json(const nesf_decode_opts *o)
{
    json_t *obj = json_object();
    if (!obj) return NULL;
    for (int i = 0; i < N_OPTS; i++) {
        double v = opt_get(o, &opt_table[i]);
        const opt_desc *d = &opt_table[i];
        json_t *jv = d->type == 'f'   ? json_real(v)
                     : d->type == 'm' ? json_string(d->names[(int)v - (int)d->lo])
                     : d->type == 'b' ? json_boolean(v != 0)
                                      : json_integer((json_int_t)v);
        json_object_set_new(obj, opt_table[i].key, jv);
    }
    char *s = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(7));
    json_decref(obj);
    return s;
}

/* ---- non-max suppression ---- */

/* Cell coordinates are clamped to 21 bits; clamping keeps neighbouring
 * cells neighbours, so it only costs speed for particles ~500 000 cells
 * away, never correctness. */
static int cell_coord(float v, double inv)
{
    double c = floor(v * inv) + NESF__CELL_BIAS;
    if (c < 0) c = 0;
    if (c > NESF__CELL_MAX) c = NESF__CELL_MAX;
    return (int)c;
}

int nesf__cmp_cell(const void *a, const void *b)
{
    const nesf__cell_entry *x = a, *y = b;
    if (x->key != y->key) return x->key < y->key ? -1 : 1;
    return x->idx - y->idx;
}

typedef struct score_entry {
    float s;
    int idx;
} score_entry;

static int cmp_score(const void *a, const void *b)
{
    const score_entry *x = a, *y = b;
    if (x->s != y->s) return x->s < y->s ? -1 : 1;
    return x->idx - y->idx;
}

static int finite3(const float *p) { return isfinite(p[0]) && isfinite(p[1]) && isfinite(p[2]); }

int nesf_nms(int n, const float *pos, const float *s, float radius, int min_count,
             int max_out, float *atoms, int *more)
{
    return nesf_nms_weighted(n, pos, s, NULL, radius, min_count, max_out, atoms, more);
}

int nesf_nms_weighted(int n, const float *pos, const float *s, const float *wt, float radius,
                      double min_weight, int max_out, float *atoms, int *more)
{
    if (more) *more = 0;
    if (n <= 0) return 0;
    nesf__cell_entry *cells = malloc((size_t)n * sizeof *cells);
    score_entry *order = malloc((size_t)n * sizeof *order);
    int (*cc)[3] = malloc((size_t)n * sizeof *cc);
    unsigned char *alive = calloc((size_t)n, 1);
    if (!cells || !order || !cc || !alive) {
        free(cells); free(order); free(cc); free(alive);
        return -1;
    }
    double inv = 1.0 / radius, r2 = (double)radius * radius;
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (!isfinite(s[i]) || !finite3(pos + 3 * i)) continue;
        for (int k = 0; k < 3; k++) cc[i][k] = cell_coord(pos[3 * i + k], inv);
        cells[m] = (nesf__cell_entry){nesf__cell_key(cc[i][0], cc[i][1], cc[i][2]), i};
        order[m] = (score_entry){s[i], i};
        alive[i] = 1;
        m++;
    }
    qsort(cells, (size_t)m, sizeof *cells, nesf__cmp_cell);
    qsort(order, (size_t)m, sizeof *order, cmp_score);

    int na = 0;
    for (int o = 0; o < m; o++) {
        int i = order[o].idx;
        if (!alive[i]) continue;
        const float *pi = pos + 3 * i;
        double acc[3] = {0, 0, 0}, wsum = 0, cnt = 0;
        for (int dx = -1; dx <= 1; dx++)
            for (int dy = -1; dy <= 1; dy++)
                for (int dz = -1; dz <= 1; dz++) {
                    int x = cc[i][0] + dx, y = cc[i][1] + dy, z = cc[i][2] + dz;
                    if (x < 0 || y < 0 || z < 0 || x > NESF__CELL_MAX || y > NESF__CELL_MAX ||
                        z > NESF__CELL_MAX)
                        continue;
                    uint64_t key = nesf__cell_key(x, y, z);
                    int lo = 0, hi = m; /* first entry with key >= key */
                    while (lo < hi) {
                        int mid = lo + (hi - lo) / 2;
                        if (cells[mid].key < key) lo = mid + 1; else hi = mid;
                    }
                    for (int e = lo; e < m && cells[e].key == key; e++) {
                        int j = cells[e].idx;
                        if (!alive[j]) continue;
                        const float *pj = pos + 3 * j;
                        double d0 = pj[0] - pi[0], d1 = pj[1] - pi[1], d2 = pj[2] - pi[2];
                        if (d0 * d0 + d1 * d1 + d2 * d2 >= r2) continue;
                        alive[j] = 0;
                        /* softmax(-s) over the group; s[i] is its minimum */
                        double wj = wt ? wt[j] : 1.0, w = wj * exp(-((double)s[j] - s[i]));
                        wsum += w;
                        for (int k = 0; k < 3; k++) acc[k] += w * pj[k];
                        cnt += wj;
                    }
                }
        if (cnt < min_weight) continue;
        if (na == max_out) {
            if (more) *more = 1;
            continue;
        }
        for (int k = 0; k < 3; k++) atoms[3 * na + k] = (float)(acc[k] / wsum);
        na++;
    }
    free(cells); free(order); free(cc); free(alive);
    return na;
}

/* ---- the algorithm ---- */

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

double nesf__now_ms(void) { return now_ms(); }

/* Everything one decode call allocates, sized for its largest batch. */
typedef struct decode_ws {
    nesf_backend *be;
    float *grid_d, *p_d, *f_d, *s_d;                   /* backend */
    float *grid_h, *p_h, *s_h, *kp_h, *ks_h, *atoms_h; /* host; kp, ks: per NMS thread */
    float *len_h, *ang_h;
    int *off, *natoms, *aoff, *cls;
    int *kept, *more;   /* per structure of a batch, from the NMS threads */
    nesf__vote vote;
} decode_ws;

static void ws_free(decode_ws *w)
{
    nesf_backend *be = w->be;
    void *dev[] = {w->grid_d, w->p_d, w->f_d, w->s_d};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        if (dev[i]) be->ops->free(be, dev[i]);
    void *host[] = {w->grid_h, w->p_h, w->s_h, w->kp_h, w->ks_h, w->atoms_h,
                    w->len_h, w->ang_h, w->off, w->natoms, w->aoff,
                    w->cls, w->kept, w->more};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
    nesf__vote_free(&w->vote);
}

/* ---- step 6: species vote ---- */

int nesf__vote_init(nesf__vote *v, nesf_backend *be, const nesf_decode_opts *o, int A,
                    int max_structs, nesf_error *err)
{
    memset(v, 0, sizeof *v);
    v->be = be;
    const int ns = nesf_arange_count(o->species_lo, o->species_hi, o->species_step);
    v->P = ns * ns * ns;
    v->A = A;
    /* species queries go through the field in chunks of whole atoms */
    v->chunk = (1 << 16) / v->P;
    if (v->chunk < 1) v->chunk = 1;
    const size_t fl = sizeof(float), cq = (size_t)v->chunk * v->P;
    v->sq_d = be->ops->alloc(be, cq * 3 * fl);
    v->sl_d = be->ops->alloc(be, cq * A * fl);
    v->cls_d = be->ops->alloc(be, (size_t)v->chunk * sizeof(int));
    v->sq_h = malloc(cq * 3 * fl);
    v->ofs_h = malloc((size_t)v->P * 3 * fl);
    v->sp_off = malloc((size_t)(max_structs + 1) * sizeof(int));
    if (!v->sq_d || !v->sl_d || !v->cls_d || !v->sq_h || !v->ofs_h || !v->sp_off) {
        nesf__vote_free(v);
        return nesf_fail(err, NESF_ERR_NOMEM, "out of memory for the species vote");
    }
    for (int p = 0; p < v->P; p++) {
        int c[3] = {p / (ns * ns), (p / ns) % ns, p % ns};
        for (int k = 0; k < 3; k++)
            v->ofs_h[3 * p + k] = (float)(o->species_lo + c[k] * (double)o->species_step);
    }
    return NESF_OK;
}

void nesf__vote_free(nesf__vote *v)
{
    nesf_backend *be = v->be;
    void *dev[] = {v->sq_d, v->sl_d, v->cls_d};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        if (dev[i]) be->ops->free(be, dev[i]);
    free(v->sq_h);
    free(v->ofs_h);
    free(v->sp_off);
    memset(v, 0, sizeof *v);
}

int nesf__vote_run(nesf__vote *v, nesf_field *f, int first, int S, const int *aoff,
                   const float *atoms, int *cls, long *evals, nesf_error *err)
{
    nesf_backend *be = v->be;
    const int P3 = v->P, chunk = v->chunk, total = aoff[S];
    const size_t fl = sizeof(float);
    int rc;
    for (int a0 = 0; a0 < total; a0 += chunk) {
        const int a1 = total - a0 < chunk ? total : a0 + chunk;
        int sf = 0;
        while (aoff[sf + 1] <= a0) sf++;
        int sl = sf;
        while (aoff[sl + 1] < a1) sl++;
        const int Sc = sl - sf + 1;
        for (int k = 0; k <= Sc; k++) {
            int x = aoff[sf + k];
            x = x < a0 ? a0 : x > a1 ? a1 : x;
            v->sp_off[k] = (x - a0) * P3;
        }
        for (int a = a0; a < a1; a++)
            for (int p = 0; p < P3; p++)
                for (int k = 0; k < 3; k++)
                    v->sq_h[((size_t)(a - a0) * P3 + p) * 3 + k] =
                        atoms[3 * a + k] + v->ofs_h[3 * p + k];
        const size_t qp = (size_t)(a1 - a0) * P3;
        if (be->ops->upload(be, v->sq_d, v->sq_h, qp * 3 * fl))
            return nesf_fail(err, NESF_ERR_BACKEND, "uploading species queries failed");
        if ((rc = f->species(f, first + sf, Sc, v->sp_off, v->sq_d, v->sl_d, err))) return rc;
        /* the vote runs where the logits are: one class per atom comes back */
        be->ops->vote(be, a1 - a0, P3, v->A, v->sl_d, v->cls_d);
        if (be->ops->download(be, cls + a0, v->cls_d, (size_t)(a1 - a0) * sizeof(int)))
            return nesf_fail(err, NESF_ERR_BACKEND, "species vote failed");
        *evals += (long)qp;
    }
    return NESF_OK;
}

/* ---- steps 4-5 for a batch: one structure per task, on threads ----
 * Structures are independent and NMS is the one long sequential piece of
 * host work per structure, so a batch's structures are spread over the
 * cores (results do not depend on the thread count).  Structure s writes
 * its atoms to slot s (maxa atoms) of w->atoms_h. */

typedef struct nms_batch {
    decode_ws *w;
    const nesf_decode_opts *o;
    long G, maxa;
    int S, next, failed;
    float r2max;
} nms_batch;

static void nms_worker(nms_batch *b, int tid)
{
    decode_ws *w = b->w;
    float *kp = w->kp_h + (size_t)tid * b->G * 3, *ks = w->ks_h + (size_t)tid * b->G;
    for (;;) {
        int s = __atomic_fetch_add(&b->next, 1, __ATOMIC_RELAXED);
        if (s >= b->S) break;
        int kept = 0;
        for (long g = 0; g < b->G; g++) {
            size_t r = (size_t)s * b->G + g;
            if (!(w->s_h[r] <= b->r2max)) continue; /* also drops NaN */
            memcpy(kp + 3 * kept, w->p_h + 3 * r, 3 * sizeof(float));
            ks[kept++] = w->s_h[r];
        }
        int more = 0;
        int na = nesf_nms(kept, kp, ks, b->o->nms_radius, b->o->nms_min_count, (int)b->maxa,
                          w->atoms_h + (size_t)s * b->maxa * 3, &more);
        if (na < 0) __atomic_store_n(&b->failed, 1, __ATOMIC_RELAXED);
        w->natoms[s] = na < 0 ? 0 : na;
        w->kept[s] = kept;
        w->more[s] = more;
    }
}

typedef struct nms_thread {
    nms_batch *b;
    int tid;
} nms_thread;

static void *nms_thread_main(void *arg)
{
    nms_thread *t = arg;
    nms_worker(t->b, t->tid);
    return NULL;
}

/* Threads for NMS: the cores, at most one per structure of a batch. */
static int nms_threads(int Sb)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) n = 1;
    if (n > 64) n = 64;
    return (int)(n < Sb ? n : Sb);
}

/* Runs the batch on T threads (the caller's included); 0 or -1 (memory). */
static int nms_run(nms_batch *b, int T)
{
    pthread_t th[64];
    nms_thread arg[64];
    int started = 0;
    for (int t = 1; t < T; t++) {
        arg[t] = (nms_thread){b, t};
        if (pthread_create(&th[t], NULL, nms_thread_main, &arg[t])) break;
        started = t;
    }
    nms_worker(b, 0); /* a thread that failed to start leaves its share here */
    for (int t = 1; t <= started; t++) pthread_join(th[t], NULL);
    return b->failed ? -1 : 0;
}

static void free_outputs(nesf_structure **out, int n)
{
    for (int i = 0; i < n; i++) {
        nesf_structure_free(out[i]);
        out[i] = NULL;
    }
}

/* Smallest cell edge and flattest cell (volume / abc) a repair accepts. */
#define REPAIR_MIN_LENGTH 0.5
#define REPAIR_MIN_FLATNESS 0.05

static int sane_cell(const nesf_cellpar *p, nesf_lattice *lat)
{
    return nesf_lattice_from_params(p, lat, NULL) == NESF_OK &&
           nesf_lattice_volume(lat) >= REPAIR_MIN_FLATNESS * p->a * p->b * p->c;
}

/* The nearest sane cell to p: lengths floored, angles brought into
 * [10, 170] degrees and then pulled towards 90 until the cell has volume
 * (all-90 always does).  Returns 0 when p had to change. */
static int repair_cell(nesf_cellpar *p, nesf_lattice *lat)
{
    if (sane_cell(p, lat)) return 1;
    double *len[3] = {&p->a, &p->b, &p->c}, *ang[3] = {&p->alpha, &p->beta, &p->gamma};
    double a0[3];
    for (int k = 0; k < 3; k++) {
        if (*len[k] < REPAIR_MIN_LENGTH) *len[k] = REPAIR_MIN_LENGTH;
        a0[k] = fmin(fmax(*ang[k], 10.0), 170.0);
    }
    for (int step = 20; step >= 0; step--) {
        for (int k = 0; k < 3; k++) *ang[k] = 90.0 + (a0[k] - 90.0) * step / 20.0;
        if (sane_cell(p, lat)) break;
    }
    return 0;
}

/* Builds a structure from its predicted cell and atoms; NESF_ERR_INVALID
 * for a cell that is not one (or non-finite, even with repair) and for a
 * result that nesf_structure_validate refuses. */
static int build_structure(const float len[3], const float ang[3], int na, const float *atoms,
                           const int *cls, const int *species_z, int repair, int *repaired,
                           nesf_structure **out, nesf_error *err)
{
    const double deg = 180.0 / M_PI;
    nesf_cellpar p = {len[0], len[1], len[2], ang[0] * deg, ang[1] * deg, ang[2] * deg};
    nesf_lattice lat;
    double inv[3][3];
    int finite = isfinite(p.a) && isfinite(p.b) && isfinite(p.c) && isfinite(p.alpha) &&
                 isfinite(p.beta) && isfinite(p.gamma);
    *repaired = 0;
    if (finite && repair) *repaired = !repair_cell(&p, &lat);
    if (!finite || (!repair && nesf_lattice_from_params(&p, &lat, err)) ||
        nesf_lattice_inverse(&lat, inv, err)) {
        if (!finite) nesf_fail(err, NESF_ERR_INVALID, "non-finite cell parameters");
        nesf_error_prefix(err, "predicted lattice (%.4g %.4g %.4g Å, %.4g %.4g %.4g°) is degenerate: ",
                          len[0], len[1], len[2], ang[0] * deg, ang[1] * deg, ang[2] * deg);
        return NESF_ERR_INVALID;
    }
    nesf_structure *s = nesf_structure_new(na);
    if (!s) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory building a structure");
    s->lat = lat;
    for (int a = 0; a < na; a++) {
        double c[3] = {atoms[3 * a], atoms[3 * a + 1], atoms[3 * a + 2]};
        int rc = nesf_structure_add_site_cart(s, species_z[cls[a]], c, err);
        if (rc) {
            nesf_structure_free(s);
            return rc;
        }
    }
    /* the gate every structure from outside passes: an absurd prediction
     * (a 1e36 Å cell from an extreme latent) is that structure's error */
    if (nesf_structure_validate(s, err)) {
        nesf_structure_free(s);
        nesf_error_prefix(err, "predicted structure (%.4g %.4g %.4g Å, %.4g %.4g %.4g°) is no "
                          "crystal: ", len[0], len[1], len[2], ang[0] * deg, ang[1] * deg,
                          ang[2] * deg);
        return NESF_ERR_INVALID;
    }
    *out = s;
    return NESF_OK;
}

int nesf__build_batch(const nesf_field *f, const nesf_decode_opts *o, int b0, int S,
                      const float *len, const float *ang, const int *aoff, const float *atoms,
                      const int *cls, nesf_structure **out, nesf_error *item_err, int *repaired,
                      nesf_error *err)
{
    for (int s = 0; s < S; s++) {
        nesf_error e;
        nesf_error_clear(&e);
        int rep;
        int rc = build_structure(len + 3 * s, ang + 3 * s, aoff[s + 1] - aoff[s],
                                 atoms + (size_t)aoff[s] * 3, cls + aoff[s], f->species_z,
                                 o->repair_lattice, &rep, &out[b0 + s], &e);
        *repaired += rep;
        if (rc == NESF_ERR_INVALID && item_err) {
            item_err[b0 + s] = e;
            continue;
        }
        if (rc) {
            if (err) *err = e;
            nesf_error_prefix(err, "structure %d: ", b0 + s);
            return rc;
        }
    }
    return NESF_OK;
}

void nesf__free_outputs(nesf_structure **out, int n) { free_outputs(out, n); }

int nesf__sane_cell(const nesf_cellpar *p, nesf_lattice *lat) { return sane_cell(p, lat); }

void nesf_decode_symmetrize(const nesf_decode_opts *o, nesf_structure **out, int n,
                            nesf_decode_stats *st)
{
    for (int i = 0; i < n; i++) {
        if (!out[i] || out[i]->n == 0) continue;
        nesf_structure *t;
        if (nesf_structure_standardize(out[i], o->symprec, o->cell == NESF_CELL_PRIMITIVE, &t,
                                       NULL, NULL)) {
            st->symmetrize_failed++;
            continue;
        }
        nesf_structure_free(out[i]);
        out[i] = t;
        st->symmetrized++;
    }
}

static int decode_paper(nesf_field *f, const nesf_decode_opts *o, nesf_structure **out,
                        nesf_error *item_err, nesf_decode_stats *st, nesf_error *err);

int nesf__cancelled(const nesf_decode_opts *o, nesf_error *err)
{
    if (!o->cancel || !o->cancel(o->cancel_arg)) return NESF_OK;
    return nesf_fail(err, NESF_ERR_CANCELLED, "decoding cancelled");
}

int nesf_decode_field(nesf_field *f, const nesf_decode_opts *o, nesf_structure **out,
                      nesf_error *item_err, nesf_decode_stats *st, nesf_error *err)
{
    nesf_decode_opts def;
    if (!o) {
        nesf_decode_opts_default(&def);
        o = &def;
    }
    nesf_decode_stats stats;
    memset(&stats, 0, sizeof stats);
    int rc = nesf_decode_opts_check(o, err);
    if (rc) return rc;
    for (int i = 0; i < f->n; i++) {
        out[i] = NULL;
        if (item_err) nesf_error_clear(&item_err[i]);
    }
    if (f->n > 0)
        rc = o->mode == NESF_DECODE_FAST ? nesf__decode_fast(f, o, out, item_err, &stats, err)
                                         : decode_paper(f, o, out, item_err, &stats, err);
    if (rc) return rc;
    if (o->symmetrize) {
        double t0 = now_ms();
        nesf_decode_symmetrize(o, out, f->n, &stats);
        stats.ms += now_ms() - t0;
    }
    if (st) *st = stats;
    return NESF_OK;
}

/* spec §5 on the options' grid; out and item_err cleared by the caller. */
static int decode_paper(nesf_field *f, const nesf_decode_opts *o, nesf_structure **out,
                        nesf_error *item_err, nesf_decode_stats *st, nesf_error *err)
{
    double t0 = now_ms();
    nesf_decode_stats stats;
    memset(&stats, 0, sizeof stats);
    int rc;
    const int n = f->n, A = f->num_species;

    /* the particle grid, shared by every structure */
    int gn[3];
    double glo[3];
    long G = 1;
    for (int k = 0; k < 3; k++) {
        glo[k] = (double)f->bbox_min[k] - o->grid_pad;
        gn[k] = nesf_arange_count(glo[k], (double)f->bbox_max[k] + o->grid_pad, o->grid_step);
        G *= gn[k];
    }
    if (G <= 0)
        return nesf_fail(err, NESF_ERR_INVALID, "the particle grid over the bounding box is empty");
    if (G > o->max_particles)
        return nesf_fail(err, NESF_ERR_INVALID,
                         "particle grid %dx%dx%d = %ld exceeds max_particles %d (raise grid_step)",
                         gn[0], gn[1], gn[2], G, o->max_particles);
    long maxa = G / o->nms_min_count + 1;
    if (maxa > o->max_atoms) maxa = o->max_atoms;
    int Sb = (int)(o->batch_particles / G);
    if (Sb < 1) Sb = 1;
    if (Sb > n) Sb = n;
    const size_t Q = (size_t)Sb * G;

    nesf_backend *be = f->be;
    decode_ws w;
    memset(&w, 0, sizeof w);
    w.be = be;
    const size_t fl = sizeof(float);
    w.grid_d = be->ops->alloc(be, (size_t)G * 3 * fl);
    w.p_d = be->ops->alloc(be, Q * 3 * fl);
    w.f_d = be->ops->alloc(be, Q * 3 * fl);
    w.s_d = be->ops->alloc(be, Q * fl);
    w.grid_h = malloc((size_t)G * 3 * fl);
    w.p_h = malloc(Q * 3 * fl);
    w.s_h = malloc(Q * fl);
    const int T = nms_threads(Sb);
    w.kp_h = malloc((size_t)T * G * 3 * fl);
    w.ks_h = malloc((size_t)T * G * fl);
    w.kept = malloc((size_t)Sb * sizeof(int));
    w.more = malloc((size_t)Sb * sizeof(int));
    w.atoms_h = malloc((size_t)Sb * maxa * 3 * fl);
    w.len_h = malloc((size_t)Sb * 3 * fl);
    w.ang_h = malloc((size_t)Sb * 3 * fl);
    w.off = malloc((size_t)(Sb + 1) * sizeof(int));
    w.natoms = malloc((size_t)Sb * sizeof(int));
    w.aoff = malloc((size_t)(Sb + 1) * sizeof(int));
    w.cls = malloc((size_t)Sb * maxa * sizeof(int));
    if (!w.grid_d || !w.p_d || !w.f_d || !w.s_d || !w.grid_h || !w.p_h || !w.s_h || !w.kp_h ||
        !w.ks_h || !w.atoms_h || !w.len_h || !w.ang_h || !w.off || !w.natoms || !w.aoff ||
        !w.cls || !w.kept || !w.more) {
        ws_free(&w);
        return nesf_fail(err, NESF_ERR_NOMEM, "out of memory for decoding %d structures "
                         "(%ld particles each)", n, G);
    }
    if ((rc = nesf__vote_init(&w.vote, be, o, A, Sb, err))) {
        ws_free(&w);
        return rc;
    }
    /* x slowest, z fastest, as numpy's meshgrid(indexing="ij") */
    for (long g = 0; g < G; g++) {
        long ix = g / ((long)gn[1] * gn[2]), iy = (g / gn[2]) % gn[1], iz = g % gn[2];
        w.grid_h[3 * g] = (float)(glo[0] + ix * (double)o->grid_step);
        w.grid_h[3 * g + 1] = (float)(glo[1] + iy * (double)o->grid_step);
        w.grid_h[3 * g + 2] = (float)(glo[2] + iz * (double)o->grid_step);
    }
    rc = be->ops->upload(be, w.grid_d, w.grid_h, (size_t)G * 3 * fl);
    if (rc) {
        nesf_fail(err, NESF_ERR_BACKEND, "uploading the particle grid failed");
        goto fail;
    }
    const float r2max = o->score_max * o->score_max;

    for (int b0 = 0; b0 < n; b0 += Sb) {
        const int S = n - b0 < Sb ? n - b0 : Sb;
        const size_t q = (size_t)S * G;
        double t1 = now_ms();
        for (int s = 0; s <= S; s++) w.off[s] = (int)(s * G);
        for (int s = 0; s < S; s++)
            if ((rc = be->ops->copy(be, w.p_d + (size_t)s * G * 3, w.grid_d, (size_t)G * 3 * fl))) {
                nesf_fail(err, NESF_ERR_BACKEND, "copying particles failed");
                goto fail;
            }
        /* step 3: the flow; the score is |f_p|² of the last step */
        for (int it = 0; it < o->iterations; it++) {
            if ((rc = nesf__cancelled(o, err))) goto fail;
            if ((rc = f->position(f, b0, S, w.off, w.p_d, w.f_d, err))) goto fail;
            be->ops->axpy(be, q * 3, 1.0f, w.f_d, w.p_d);
        }
        be->ops->row_sqnorm(be, (int)q, 3, w.f_d, 3, w.s_d);
        if ((rc = be->ops->sync(be))) {
            nesf_fail(err, NESF_ERR_BACKEND, "backend failed during the particle flow");
            goto fail;
        }
        stats.field_evals += (long)q * o->iterations;
        stats.particles += (long)q;
        stats.steps += (long)S * o->iterations;
        double t2 = now_ms();
        stats.ms_flow += t2 - t1;

        /* steps 4-5 on the host */
        if (be->ops->download(be, w.p_h, w.p_d, q * 3 * fl) ||
            be->ops->download(be, w.s_h, w.s_d, q * fl)) {
            rc = nesf_fail(err, NESF_ERR_BACKEND, "downloading particles failed");
            goto fail;
        }
        nms_batch nb = {.w = &w, .o = o, .G = G, .maxa = maxa, .S = S, .r2max = r2max};
        if (nms_run(&nb, T < S ? T : S)) {
            rc = nesf_fail(err, NESF_ERR_NOMEM, "out of memory in non-max suppression");
            goto fail;
        }
        /* pack the per-structure slots (a slot never moves up) */
        w.aoff[0] = 0;
        for (int s = 0; s < S; s++) {
            stats.kept += w.kept[s];
            stats.truncated += w.more[s];
            w.aoff[s + 1] = w.aoff[s] + w.natoms[s];
            memmove(w.atoms_h + (size_t)w.aoff[s] * 3, w.atoms_h + (size_t)s * maxa * 3,
                    (size_t)w.natoms[s] * 3 * fl);
        }
        const int total = w.aoff[S];
        stats.atoms += total;
        double t3 = now_ms();
        stats.ms_nms += t3 - t2;

        /* step 6: species vote */
        if ((rc = nesf__vote_run(&w.vote, f, b0, S, w.aoff, w.atoms_h, w.cls, &stats.field_evals,
                                 err)))
            goto fail;
        stats.ms_species += now_ms() - t3;

        /* step 1 (the lattice) and the output structures */
        if ((rc = f->lattice(f, b0, S, w.len_h, w.ang_h, err))) goto fail;
        if ((rc = nesf__build_batch(f, o, b0, S, w.len_h, w.ang_h, w.aoff, w.atoms_h, w.cls, out,
                                    item_err, &stats.lattice_repaired, err)))
            goto fail;
    }
    ws_free(&w);
    stats.structures = n;
    stats.ms = now_ms() - t0;
    if (st) *st = stats;
    return NESF_OK;

fail:
    ws_free(&w);
    free_outputs(out, n);
    return rc ? rc : NESF_ERR_BACKEND;
}

void nesf_field_release(nesf_field *f)
{
    if (f && f->release) f->release(f);
    if (f) {
        f->release = NULL;
        f->impl = NULL;
    }
}

/* ---- the ground-truth field ---- */

typedef struct truth_impl {
    nesf_structure **s; /* the caller's structures */
    int *aoff;          /* atoms of structure i: [aoff[i], aoff[i+1]) */
    int *cls;           /* atom species class */
    float *len, *ang;
    int *species_z;
    float *in, *res;    /* host staging */
    size_t cap_in, cap_res;
} truth_impl;

static int truth_stage(nesf_field *f, const float *xyz, size_t q, size_t res_cols,
                       nesf_error *err)
{
    truth_impl *t = f->impl;
    if (q * 3 > t->cap_in) {
        float *p = realloc(t->in, q * 3 * sizeof *p);
        if (!p) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory in the truth field");
        t->in = p;
        t->cap_in = q * 3;
    }
    if (q * res_cols > t->cap_res) {
        float *p = realloc(t->res, q * res_cols * sizeof *p);
        if (!p) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory in the truth field");
        t->res = p;
        t->cap_res = q * res_cols;
    }
    if (q && f->be->ops->download(f->be, t->in, xyz, q * 3 * sizeof(float)))
        return nesf_fail(err, NESF_ERR_BACKEND, "download failed in the truth field");
    return NESF_OK;
}

static int truth_eval(nesf_field *f, int first, int S, const int *off, const float *xyz,
                      float *out, int species, nesf_error *err)
{
    truth_impl *t = f->impl;
    const size_t q = (size_t)off[S], cols = species ? (size_t)f->num_species : 3;
    int rc = truth_stage(f, xyz, q, cols, err);
    if (rc) return rc;
    if (species) memset(t->res, 0, q * cols * sizeof(float));
    for (int s = 0; s < S; s++)
        for (int r = off[s]; r < off[s + 1]; r++) {
            /* the training targets' definition of the nearest atom */
            float v[3];
            int a = nesf_nearest_atom(t->s[first + s], t->in + 3 * (size_t)r, v);
            if (species)
                t->res[(size_t)r * cols + t->cls[t->aoff[first + s] + a]] = 1.0f;
            else
                memcpy(t->res + 3 * (size_t)r, v, sizeof v);
        }
    if (q && f->be->ops->upload(f->be, out, t->res, q * cols * sizeof(float)))
        return nesf_fail(err, NESF_ERR_BACKEND, "upload failed in the truth field");
    return NESF_OK;
}

static int truth_position(nesf_field *f, int first, int S, const int *off, const float *xyz,
                          float *out, nesf_error *err)
{
    return truth_eval(f, first, S, off, xyz, out, 0, err);
}

static int truth_species(nesf_field *f, int first, int S, const int *off, const float *xyz,
                         float *out, nesf_error *err)
{
    return truth_eval(f, first, S, off, xyz, out, 1, err);
}

static int truth_lattice(nesf_field *f, int first, int S, float *lengths, float *angles,
                         nesf_error *err)
{
    truth_impl *t = f->impl;
    memcpy(lengths, t->len + 3 * first, (size_t)S * 3 * sizeof(float));
    memcpy(angles, t->ang + 3 * first, (size_t)S * 3 * sizeof(float));
    return NESF_OK;
}

static void truth_release(nesf_field *f)
{
    truth_impl *t = f->impl;
    if (!t) return;
    free(t->s); free(t->aoff); free(t->cls); free(t->len); free(t->ang);
    free(t->species_z); free(t->in); free(t->res);
    free(t);
}

int nesf_field_truth(nesf_backend *be, nesf_structure *const *s, int n, const int *species_z,
                     int num_species, const float bbox_min[3], const float bbox_max[3],
                     nesf_field *f, nesf_error *err)
{
    memset(f, 0, sizeof *f);
    if (n < 0 || num_species < 1)
        return nesf_fail(err, NESF_ERR_INVALID, "truth field: bad sizes");
    truth_impl *t = calloc(1, sizeof *t);
    if (!t) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    f->impl = t;
    f->release = truth_release;
    long atoms = 0;
    for (int i = 0; i < n; i++) atoms += s[i]->n;
    t->s = malloc((size_t)(n ? n : 1) * sizeof *t->s);
    t->aoff = malloc((size_t)(n + 1) * sizeof *t->aoff);
    t->cls = malloc((size_t)(atoms ? atoms : 1) * sizeof *t->cls);
    t->len = malloc((size_t)(n ? n : 1) * 3 * sizeof *t->len);
    t->ang = malloc((size_t)(n ? n : 1) * 3 * sizeof *t->ang);
    t->species_z = malloc((size_t)num_species * sizeof *t->species_z);
    if (!t->s || !t->aoff || !t->cls || !t->len || !t->ang || !t->species_z) {
        nesf_field_release(f);
        return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    }
    memcpy(t->species_z, species_z, (size_t)num_species * sizeof *species_z);
    t->aoff[0] = 0;
    for (int i = 0; i < n; i++) {
        if (s[i]->n < 1) {
            nesf_field_release(f);
            return nesf_fail(err, NESF_ERR_INVALID, "structure %d (%s) has no atoms", i, s[i]->id);
        }
        for (int a = 0; a < s[i]->n; a++) {
            int c = -1, j = t->aoff[i] + a;
            for (int k = 0; k < num_species && c < 0; k++)
                if (species_z[k] == s[i]->z[a]) c = k;
            if (c < 0) {
                nesf_field_release(f);
                return nesf_fail(err, NESF_ERR_NOTFOUND,
                                 "structure %d (%s): element Z=%d is not in the species list",
                                 i, s[i]->id, s[i]->z[a]);
            }
            t->cls[j] = c;
        }
        t->s[i] = s[i];
        t->aoff[i + 1] = t->aoff[i] + s[i]->n;
        nesf_cellpar p;
        nesf_lattice_params(&s[i]->lat, &p);
        const double rad = M_PI / 180.0;
        float v[6] = {p.a, p.b, p.c, p.alpha * rad, p.beta * rad, p.gamma * rad};
        memcpy(t->len + 3 * i, v, 3 * sizeof *v);
        memcpy(t->ang + 3 * i, v + 3, 3 * sizeof *v);
    }
    f->be = be;
    f->n = n;
    f->num_species = num_species;
    f->species_z = t->species_z;
    memcpy(f->bbox_min, bbox_min, sizeof f->bbox_min);
    memcpy(f->bbox_max, bbox_max, sizeof f->bbox_max);
    f->position = truth_position;
    f->species = truth_species;
    f->lattice = truth_lattice;
    return NESF_OK;
}

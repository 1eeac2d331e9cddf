/* tsne.c - exact and Barnes-Hut t-SNE, see tsne.h. */
#include "tsne.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h" /* nesf_hash_uniform */

#define EXAGGERATION 12.0
#define EXAG_ITERS 250

void nesf_tsne_opts_default(nesf_tsne_opts *o)
{
    o->perplexity = 30.0;
    o->iterations = 1000;
    o->theta = 0.5;
    o->learning_rate = 0.0;
    o->seed = 42;
}

static double sqdist(const float *a, const float *b, int d)
{
    float s = 0;
    for (int k = 0; k < d; k++) {
        float t = a[k] - b[k];
        s += t * t;
    }
    return s;
}

/* Turns squared distances d[0..m) into the conditional distribution p of
 * perplexity exp(logu) by bisection on the precision. */
static void row_affinities(const double *d, int m, double logu, double *p)
{
    double dmin = INFINITY;
    for (int j = 0; j < m; j++)
        if (d[j] < dmin) dmin = d[j];
    double beta = 1.0, lo = -INFINITY, hi = INFINITY, sum = 0;
    for (int it = 0; it < 200; it++) {
        double hsum = 0;
        sum = 0;
        for (int j = 0; j < m; j++) {
            p[j] = exp(-beta * (d[j] - dmin));
            sum += p[j];
            hsum += (d[j] - dmin) * p[j];
        }
        double h = log(sum) + beta * hsum / sum, diff = h - logu;
        if (fabs(diff) < 1e-5) break;
        if (diff > 0) {
            lo = beta;
            beta = isinf(hi) ? beta * 2 : (beta + hi) / 2;
        } else {
            hi = beta;
            beta = isinf(lo) ? beta / 2 : (beta + lo) / 2;
        }
    }
    for (int j = 0; j < m; j++) p[j] /= sum;
}

/* ---- sparse symmetric affinities on the K nearest neighbours ---- */

typedef struct sparse {
    int n;
    int *row;   /* n + 1 */
    int *col;
    double *val;
} sparse;

typedef struct triple {
    int i, j;
    double v;
} triple;

static int cmp_triple(const void *a, const void *b)
{
    const triple *x = a, *y = b;
    if (x->i != y->i) return x->i < y->i ? -1 : 1;
    return (x->j > y->j) - (x->j < y->j);
}

/* max-heap of (distance, index) keeping the K smallest */
static void heap_push(double *hd, int *hi, int *size, int K, double d, int j)
{
    int s = *size;
    if (s == K) {
        if (d >= hd[0]) return;
        /* replace the root and sift down */
        int k = 0;
        for (;;) {
            int c = 2 * k + 1;
            if (c >= s) break;
            if (c + 1 < s && hd[c + 1] > hd[c]) c++;
            if (hd[c] <= d) break;
            hd[k] = hd[c];
            hi[k] = hi[c];
            k = c;
        }
        hd[k] = d;
        hi[k] = j;
        return;
    }
    int k = s++;
    while (k > 0 && hd[(k - 1) / 2] < d) {
        hd[k] = hd[(k - 1) / 2];
        hi[k] = hi[(k - 1) / 2];
        k = (k - 1) / 2;
    }
    hd[k] = d;
    hi[k] = j;
    *size = s;
}

static int knn_affinities(const float *X, int n, int d, double perp, sparse *P, nesf_error *err)
{
    int K = (int)(3 * perp);
    if (K > n - 1) K = n - 1;
    if (K < 1) K = 1;
    double *hd = malloc((size_t)K * sizeof *hd), *p = malloc((size_t)K * sizeof *p);
    int *hi = malloc((size_t)K * sizeof *hi);
    triple *t = malloc((size_t)2 * n * K * sizeof *t);
    P->row = calloc((size_t)n + 1, sizeof *P->row);
    P->col = malloc((size_t)2 * n * K * sizeof *P->col);
    P->val = malloc((size_t)2 * n * K * sizeof *P->val);
    P->n = n;
    int rc = NESF_OK;
    if (!hd || !p || !hi || !t || !P->row || !P->col || !P->val) {
        rc = nesf_fail(err, NESF_ERR_NOMEM, "t-SNE: out of memory for %d points", n);
        goto done;
    }
    size_t nt = 0;
    for (int i = 0; i < n; i++) {
        int size = 0;
        for (int j = 0; j < n; j++)
            if (j != i) heap_push(hd, hi, &size, K, sqdist(X + (size_t)i * d, X + (size_t)j * d, d), j);
        row_affinities(hd, size, log(perp), p);
        for (int k = 0; k < size; k++) {
            t[nt++] = (triple){i, hi[k], p[k]};
            t[nt++] = (triple){hi[k], i, p[k]};
        }
    }
    qsort(t, nt, sizeof *t, cmp_triple);
    size_t m = 0;
    for (size_t a = 0; a < nt; a++) {
        if (m > 0 && P->col[m - 1] == t[a].j && a > 0 && t[a - 1].i == t[a].i) {
            P->val[m - 1] += t[a].v;
            continue;
        }
        P->col[m] = t[a].j;
        P->val[m] = t[a].v;
        P->row[t[a].i + 1]++;
        m++;
    }
    for (int i = 0; i < n; i++) P->row[i + 1] += P->row[i];
    for (size_t a = 0; a < m; a++) P->val[a] /= 2.0 * n;
done:
    free(hd);
    free(p);
    free(hi);
    free(t);
    return rc;
}

/* ---- Barnes-Hut quadtree ---- */

typedef struct qnode {
    double cx, cy, hw; /* cell centre and half width */
    double mx, my;     /* centre of mass */
    int count;
    int child;         /* first of 4 children, -1 for a leaf */
    int point;         /* the point of a one-point leaf */
} qnode;

typedef struct qtree {
    qnode *node;
    int n, cap;
} qtree;

static int qt_new(qtree *t, double cx, double cy, double hw)
{
    if (t->n == t->cap) {
        int cap = t->cap ? 2 * t->cap : 1024;
        qnode *p = realloc(t->node, (size_t)cap * sizeof *p);
        if (!p) return -1;
        t->node = p;
        t->cap = cap;
    }
    t->node[t->n] = (qnode){cx, cy, hw, 0, 0, 0, -1, -1};
    return t->n++;
}

static int quadrant(const qnode *q, double x, double y) { return (x >= q->cx) + 2 * (y >= q->cy); }

/* Deepest level: coincident (or nearly) points share a leaf there, which
 * also bounds the traversal stack. */
#define QT_DEPTH 48

static int qt_insert(qtree *t, int k, const double *Y, int i)
{
    double x = Y[2 * i], y = Y[2 * i + 1];
    for (int depth = 0;; depth++) {
        qnode *q = &t->node[k];
        q->count++;
        q->mx += (x - q->mx) / q->count;
        q->my += (y - q->my) / q->count;
        if (q->child < 0) {
            if (q->count == 1) {
                q->point = i;
                return 0;
            }
            if (depth >= QT_DEPTH) return 0;
            int old = q->point;
            double cx = q->cx, cy = q->cy, h = q->hw / 2;
            int first = -1;
            for (int c = 0; c < 4; c++) {
                int id = qt_new(t, cx + ((c & 1) ? h : -h), cy + ((c & 2) ? h : -h), h);
                if (id < 0) return -1;
                if (c == 0) first = id;
            }
            q = &t->node[k]; /* qt_new may have moved the array */
            q->child = first;
            q->point = -1;
            int c = first + quadrant(q, Y[2 * old], Y[2 * old + 1]);
            qnode *cn = &t->node[c];
            cn->count = 1;
            cn->mx = Y[2 * old];
            cn->my = Y[2 * old + 1];
            cn->point = old;
        }
        k = t->node[k].child + quadrant(&t->node[k], x, y);
    }
}

/* Repulsive force on point i (unnormalised) and its share of the
 * normalisation sum. */
static double qt_repulse(const qtree *t, const double *Y, int i, double theta2, int *stack,
                         double *fx, double *fy)
{
    double sumq = 0, x = Y[2 * i], y = Y[2 * i + 1];
    int sp = 0;
    stack[sp++] = 0;
    *fx = *fy = 0;
    while (sp) {
        const qnode *q = &t->node[stack[--sp]];
        if (q->count == 0 || (q->child < 0 && q->count == 1 && q->point == i)) continue;
        double dx = x - q->mx, dy = y - q->my, d2 = dx * dx + dy * dy;
        if (q->child < 0 || 4 * q->hw * q->hw < theta2 * d2) {
            double qq = 1.0 / (1.0 + d2), m = q->count * qq;
            sumq += m;
            *fx += m * qq * dx;
            *fy += m * qq * dy;
        } else {
            for (int c = 0; c < 4; c++) stack[sp++] = q->child + c;
        }
    }
    return sumq;
}

/* ---- the optimiser ---- */

int nesf_tsne(const float *X, int n, int d, const nesf_tsne_opts *o, double *Y, double *kl,
              nesf_error *err)
{
    nesf_tsne_opts def;
    if (!o) {
        nesf_tsne_opts_default(&def);
        o = &def;
    }
    if (kl) *kl = NAN;
    if (n < 2 || d < 1) return nesf_fail(err, NESF_ERR_INVALID, "t-SNE needs at least 2 points");
    if (!(o->perplexity > 0) || o->iterations < 1 || !(o->theta >= 0))
        return nesf_fail(err, NESF_ERR_INVALID, "t-SNE: bad options");
    for (size_t k = 0; k < (size_t)n * d; k++)
        if (!isfinite(X[k]))
            return nesf_fail(err, NESF_ERR_INVALID, "t-SNE: point %zu has a non-finite value", k / d);
    const int exact = o->theta == 0;
    if (exact && n > 20000)
        return nesf_fail(err, NESF_ERR_INVALID, "exact t-SNE of %d points is too large; use Barnes-Hut", n);
    double perp = o->perplexity;
    if (3 * perp > n - 1) perp = (n - 1) / 3.0;
    if (perp < 1) perp = 1;
    double lr = o->learning_rate > 0 ? o->learning_rate : fmax(n / (4 * EXAGGERATION), 50.0);

    double *Pd = NULL, *grad = malloc((size_t)n * 2 * sizeof *grad);
    double *upd = calloc((size_t)n * 2, sizeof *upd), *gains = malloc((size_t)n * 2 * sizeof *gains);
    sparse P = {0};
    qtree qt = {0};
    int *stack = NULL;
    int rc = NESF_OK;
    if (!grad || !upd || !gains) {
        rc = nesf_fail(err, NESF_ERR_NOMEM, "t-SNE: out of memory");
        goto done;
    }
    if (exact) {
        Pd = malloc((size_t)n * n * sizeof *Pd);
        double *dist = malloc((size_t)n * sizeof *dist), *row = malloc((size_t)n * sizeof *row);
        if (!Pd || !dist || !row) {
            free(dist);
            free(row);
            rc = nesf_fail(err, NESF_ERR_NOMEM, "t-SNE: out of memory for %d points", n);
            goto done;
        }
        for (int i = 0; i < n; i++) {
            int m = 0;
            for (int j = 0; j < n; j++)
                if (j != i) dist[m++] = sqdist(X + (size_t)i * d, X + (size_t)j * d, d);
            row_affinities(dist, m, log(perp), row);
            for (int j = 0, k = 0; j < n; j++) Pd[(size_t)i * n + j] = j == i ? 0 : row[k++];
        }
        for (int i = 0; i < n; i++)
            for (int j = i + 1; j < n; j++) {
                double v = (Pd[(size_t)i * n + j] + Pd[(size_t)j * n + i]) / (2.0 * n);
                Pd[(size_t)i * n + j] = Pd[(size_t)j * n + i] = v;
            }
        free(dist);
        free(row);
    } else {
        if ((rc = knn_affinities(X, n, d, perp, &P, err))) goto done;
        /* a traversal holds at most 3 siblings per level plus 4 */
        stack = malloc((size_t)(3 * QT_DEPTH + 16) * sizeof *stack);
        if (!stack) {
            rc = nesf_fail(err, NESF_ERR_NOMEM, "t-SNE: out of memory");
            goto done;
        }
    }

    /* initial layout N(0, 1e-4²) by Box-Muller on the shared hash RNG */
    for (int i = 0; i < 2 * n; i++) {
        double u1 = nesf_hash_uniform(o->seed, 2 * (uint64_t)i) + 1e-12;
        double u2 = nesf_hash_uniform(o->seed, 2 * (uint64_t)i + 1);
        Y[i] = 1e-4 * sqrt(-2 * log(u1)) * cos(2 * M_PI * u2);
        gains[i] = 1.0;
    }

    for (int it = 0; it < o->iterations; it++) {
        const double exag = it < EXAG_ITERS ? EXAGGERATION : 1.0;
        const double mom = it < EXAG_ITERS ? 0.5 : 0.8;
        if (exact) {
            double z = 0;
            for (int i = 0; i < n; i++)
                for (int j = i + 1; j < n; j++) {
                    double dx = Y[2 * i] - Y[2 * j], dy = Y[2 * i + 1] - Y[2 * j + 1];
                    z += 2.0 / (1.0 + dx * dx + dy * dy);
                }
            for (int i = 0; i < n; i++) {
                double gx = 0, gy = 0;
                for (int j = 0; j < n; j++) {
                    if (j == i) continue;
                    double dx = Y[2 * i] - Y[2 * j], dy = Y[2 * i + 1] - Y[2 * j + 1];
                    double q = 1.0 / (1.0 + dx * dx + dy * dy);
                    double m = (exag * Pd[(size_t)i * n + j] - q / z) * q;
                    gx += m * dx;
                    gy += m * dy;
                }
                grad[2 * i] = 4 * gx;
                grad[2 * i + 1] = 4 * gy;
            }
        } else {
            double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
            for (int i = 0; i < n; i++) {
                x0 = fmin(x0, Y[2 * i]);
                x1 = fmax(x1, Y[2 * i]);
                y0 = fmin(y0, Y[2 * i + 1]);
                y1 = fmax(y1, Y[2 * i + 1]);
            }
            qt.n = 0;
            double hw = fmax(x1 - x0, y1 - y0) / 2 * (1 + 1e-6) + 1e-9;
            int ok = qt_new(&qt, (x0 + x1) / 2, (y0 + y1) / 2, hw) == 0;
            for (int i = 0; i < n && ok; i++) ok = qt_insert(&qt, 0, Y, i) == 0;
            if (!ok) {
                rc = nesf_fail(err, NESF_ERR_NOMEM, "t-SNE: out of memory for the quadtree");
                goto done;
            }
            double z = 0;
            for (int i = 0; i < n; i++) {
                double fx, fy;
                z += qt_repulse(&qt, Y, i, o->theta * o->theta, stack, &fx, &fy);
                grad[2 * i] = -fx;
                grad[2 * i + 1] = -fy;
            }
            for (int i = 0; i < n; i++) {
                double ax = 0, ay = 0;
                for (int e = P.row[i]; e < P.row[i + 1]; e++) {
                    int j = P.col[e];
                    double dx = Y[2 * i] - Y[2 * j], dy = Y[2 * i + 1] - Y[2 * j + 1];
                    double m = P.val[e] / (1.0 + dx * dx + dy * dy);
                    ax += m * dx;
                    ay += m * dy;
                }
                grad[2 * i] = 4 * (exag * ax + grad[2 * i] / z);
                grad[2 * i + 1] = 4 * (exag * ay + grad[2 * i + 1] / z);
            }
        }
        double mx = 0, my = 0;
        for (int i = 0; i < 2 * n; i++) {
            gains[i] = upd[i] * grad[i] < 0 ? gains[i] + 0.2 : fmax(gains[i] * 0.8, 0.01);
            upd[i] = mom * upd[i] - lr * gains[i] * grad[i];
            Y[i] += upd[i];
        }
        for (int i = 0; i < n; i++) {
            mx += Y[2 * i];
            my += Y[2 * i + 1];
        }
        for (int i = 0; i < n; i++) {
            Y[2 * i] -= mx / n;
            Y[2 * i + 1] -= my / n;
        }
    }

    if (exact && kl) {
        double z = 0, s = 0;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++)
                if (j != i) {
                    double dx = Y[2 * i] - Y[2 * j], dy = Y[2 * i + 1] - Y[2 * j + 1];
                    z += 1.0 / (1.0 + dx * dx + dy * dy);
                }
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) {
                double p = Pd[(size_t)i * n + j];
                if (j == i || p <= 0) continue;
                double dx = Y[2 * i] - Y[2 * j], dy = Y[2 * i + 1] - Y[2 * j + 1];
                double q = 1.0 / (1.0 + dx * dx + dy * dy) / z;
                s += p * log(p / fmax(q, 1e-300));
            }
        *kl = s;
    }
done:
    free(Pd);
    free(grad);
    free(upd);
    free(gains);
    free(P.row);
    free(P.col);
    free(P.val);
    free(qt.node);
    free(stack);
    return rc;
}

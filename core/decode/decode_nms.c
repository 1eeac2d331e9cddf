/* decode_nms.c - non-max suppression (spec §5 step 5, decode.h nesf_nms)
 * and the spatial hashing it shares with fast mode's merging. */
#include "decode_internal.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

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

/* domain.c - the training domain of a model and the checks against it.
 * See domain.h. */
#include "domain.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Slack of the checks: a decoded cell's particle grid reaches grid_pad
 * (0.5 Å) beyond the box, and ranges measured on a finite set are not
 * sharp edges. */
#define BBOX_MARGIN 0.5  /* Å */
#define LEN_MARGIN 0.05  /* Å */
#define ANG_MARGIN 0.5   /* degrees */

static const char *const len_names[3] = {"a", "b", "c"};
static const char *const ang_names[3] = {"alpha", "beta", "gamma"};

void nesf_domain_from_structures(nesf_structure *const *s, int n, nesf_domain *d)
{
    memset(d, 0, sizeof *d);
    for (int k = 0; k < 3; k++) {
        d->len_lo[k] = d->ang_lo[k] = INFINITY;
        d->len_hi[k] = d->ang_hi[k] = -INFINITY;
    }
    for (int i = 0; i < n; i++) {
        nesf_cellpar p;
        nesf_lattice_params(&s[i]->lat, &p);
        const double len[3] = {p.a, p.b, p.c}, ang[3] = {p.alpha, p.beta, p.gamma};
        for (int k = 0; k < 3; k++) {
            d->len_lo[k] = fmin(d->len_lo[k], len[k]);
            d->len_hi[k] = fmax(d->len_hi[k], len[k]);
            d->ang_lo[k] = fmin(d->ang_lo[k], ang[k]);
            d->ang_hi[k] = fmax(d->ang_hi[k], ang[k]);
        }
        if (s[i]->n > d->max_atoms) d->max_atoms = s[i]->n;
        double md = nesf_structure_min_distance(s[i]);
        if (isfinite(md) && (d->min_distance == 0 || md < d->min_distance)) d->min_distance = md;
        for (int a = 0; a < s[i]->n; a++)
            if (s[i]->z[a] >= 1 && s[i]->z[a] <= NESF_MAX_Z) d->element[s[i]->z[a]] = 1;
    }
    d->structures = n;
}

static int cmp_double(const void *pa, const void *pb)
{
    double a = *(const double *)pa, b = *(const double *)pb;
    if (!isfinite(a) || !isfinite(b)) return isfinite(a) ? -1 : isfinite(b) ? 1 : 0;
    return a < b ? -1 : a > b;
}

void nesf_domain_set_cycle(nesf_domain *d, double *dist, int n, const char *decoder)
{
    d->cycle_n = 0;
    if (n <= 0) return;
    qsort(dist, (size_t)n, sizeof *dist, cmp_double);
    for (int q = 0; q < NESF_DOMAIN_QUANTILES; q++) {
        /* linear interpolation between order statistics (numpy's default) */
        double pos = (double)q / (NESF_DOMAIN_QUANTILES - 1) * (n - 1);
        int i = (int)floor(pos);
        double f = pos - i, lo = dist[i], hi = dist[i + 1 < n ? i + 1 : i];
        d->cycle_q[q] = f > 0 && isfinite(hi) ? lo + f * (hi - lo) : f > 0 ? hi : lo;
    }
    d->cycle_n = n;
    snprintf(d->cycle_decoder, sizeof d->cycle_decoder, "%s", decoder ? decoder : "");
}

double nesf_domain_percentile(const nesf_domain *d, double x)
{
    if (!d || d->cycle_n <= 0) return -1;
    const double *q = d->cycle_q;
    const int last = NESF_DOMAIN_QUANTILES - 1;
    if (!isfinite(x) || !(x < q[last])) return 100;
    if (x <= q[0]) return 0;
    int i = 0;
    while (i < last && !(x < q[i + 1])) i++;
    double span = q[i + 1] - q[i];
    double f = span > 0 && isfinite(span) ? (x - q[i]) / span : 0;
    return (i + f) * 100.0 / last;
}

/* ---- JSON ---- */

static json_t *range(double lo, double hi) { return json_pack("[f,f]", lo, hi); }

char *nesf_domain_to_json(const nesf_domain *d)
{
    json_t *o = json_object(), *el = json_array();
    if (!o || !el) {
        json_decref(o);
        json_decref(el);
        return NULL;
    }
    for (int z = 1; z <= NESF_MAX_Z; z++)
        if (d->element[z]) json_array_append_new(el, json_string(nesf_element_get(z)->symbol));
    json_object_set_new(o, "structures", json_integer(d->structures));
    json_object_set_new(o, "max_atoms", json_integer(d->max_atoms));
    json_object_set_new(o, "elements", el);
    if (d->min_distance > 0) json_object_set_new(o, "min_distance", json_real(d->min_distance));
    for (int k = 0; k < 3; k++) json_object_set_new(o, len_names[k], range(d->len_lo[k], d->len_hi[k]));
    for (int k = 0; k < 3; k++) json_object_set_new(o, ang_names[k], range(d->ang_lo[k], d->ang_hi[k]));
    if (d->cycle_n > 0) {
        json_t *q = json_array();
        for (int i = 0; i < NESF_DOMAIN_QUANTILES; i++)
            json_array_append_new(q, isfinite(d->cycle_q[i]) ? json_real(d->cycle_q[i]) : json_null());
        json_object_set_new(o, "cycle_distance", json_pack("{s:i, s:s, s:o}", "sample", d->cycle_n,
                                                           "decoder", d->cycle_decoder, "quantiles", q));
    }
    char *text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
    json_decref(o);
    return text;
}

static int get_range(json_t *o, const char *key, double lim_lo, double lim_hi, double *lo, double *hi,
                     nesf_error *err)
{
    json_t *r = json_object_get(o, key);
    if (!json_is_array(r) || json_array_size(r) != 2 || !json_is_number(json_array_get(r, 0)) ||
        !json_is_number(json_array_get(r, 1)))
        return nesf_fail(err, NESF_ERR_FORMAT, "domain: '%s' must be [low, high]", key);
    *lo = json_number_value(json_array_get(r, 0));
    *hi = json_number_value(json_array_get(r, 1));
    if (!(*lo <= *hi && *lo >= lim_lo && *hi <= lim_hi))
        return nesf_fail(err, NESF_ERR_FORMAT, "domain: '%s' = [%g, %g] is no range within [%g, %g]",
                         key, *lo, *hi, lim_lo, lim_hi);
    return NESF_OK;
}

static int get_cycle(json_t *c, nesf_domain *d, nesf_error *err)
{
    json_t *n = json_object_get(c, "sample"), *dec = json_object_get(c, "decoder"),
           *q = json_object_get(c, "quantiles");
    if (!json_is_integer(n) || json_integer_value(n) < 1 || !json_is_string(dec) || !json_is_array(q) ||
        json_array_size(q) != NESF_DOMAIN_QUANTILES)
        return nesf_fail(err, NESF_ERR_FORMAT, "domain: 'cycle_distance' needs sample >= 1, decoder "
                         "and %d quantiles", NESF_DOMAIN_QUANTILES);
    for (int i = 0; i < NESF_DOMAIN_QUANTILES; i++) {
        json_t *v = json_array_get(q, (size_t)i);
        d->cycle_q[i] = json_is_null(v) ? INFINITY : json_is_number(v) ? json_number_value(v) : NAN;
        if (isnan(d->cycle_q[i]) || d->cycle_q[i] < 0 || (i && d->cycle_q[i] < d->cycle_q[i - 1]))
            return nesf_fail(err, NESF_ERR_FORMAT, "domain: cycle_distance quantile %d is not a "
                             "non-decreasing distance", i);
    }
    d->cycle_n = (int)json_integer_value(n);
    snprintf(d->cycle_decoder, sizeof d->cycle_decoder, "%s", json_string_value(dec));
    return NESF_OK;
}

static int domain_from(json_t *o, nesf_domain *d, nesf_error *err)
{
    json_t *n = json_object_get(o, "structures"), *ma = json_object_get(o, "max_atoms"),
           *el = json_object_get(o, "elements");
    if (!json_is_integer(n) || json_integer_value(n) < 1 || !json_is_integer(ma) ||
        json_integer_value(ma) < 1 || json_integer_value(ma) > 1000000 || !json_is_array(el))
        return nesf_fail(err, NESF_ERR_FORMAT, "domain: needs structures >= 1, max_atoms >= 1 and "
                         "elements");
    d->structures = (int)json_integer_value(n);
    d->max_atoms = (int)json_integer_value(ma);
    size_t i;
    json_t *v;
    json_array_foreach(el, i, v) {
        int z = json_is_string(v) ? nesf_element_z(json_string_value(v)) : 0;
        if (z < 1 || z > NESF_MAX_Z)
            return nesf_fail(err, NESF_ERR_FORMAT, "domain: elements[%zu] is not an element", i);
        d->element[z] = 1;
    }
    int rc = NESF_OK;
    for (int k = 0; k < 3 && !rc; k++)
        rc = get_range(o, len_names[k], 0, NESF_MAX_CELL_LENGTH, &d->len_lo[k], &d->len_hi[k], err);
    for (int k = 0; k < 3 && !rc; k++)
        rc = get_range(o, ang_names[k], 0, 180, &d->ang_lo[k], &d->ang_hi[k], err);
    json_t *md = json_object_get(o, "min_distance");
    if (!rc && md) {
        if (!json_is_number(md) || !(json_number_value(md) > 0) || json_number_value(md) > NESF_MAX_CELL_LENGTH)
            return nesf_fail(err, NESF_ERR_FORMAT, "domain: min_distance must be a positive distance");
        d->min_distance = json_number_value(md);
    }
    json_t *c = json_object_get(o, "cycle_distance");
    if (!rc && c) rc = get_cycle(c, d, err);
    return rc;
}

int nesf_domain_from_json(const char *text, nesf_domain *d, nesf_error *err)
{
    memset(d, 0, sizeof *d);
    json_error_t je;
    json_t *o = json_loads(text, 0, &je);
    if (!json_is_object(o)) {
        json_decref(o);
        return nesf_fail(err, NESF_ERR_FORMAT, "domain: not a JSON object%s%s", o ? "" : ": ",
                         o ? "" : je.text);
    }
    int rc = domain_from(o, d, err);
    json_decref(o);
    if (rc) memset(d, 0, sizeof *d);
    return rc;
}

/* ---- checks ---- */

static void add(nesf_domain_warning *w, int max, int *n, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void add(nesf_domain_warning *w, int max, int *n, const char *code, const char *fmt, ...)
{
    if (*n >= max) return;
    snprintf(w[*n].code, sizeof w[*n].code, "%s", code);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w[*n].message, sizeof w[*n].message, fmt, ap);
    va_end(ap);
    (*n)++;
}

/* Atoms in the encoder's frame (lattice rebuilt from its parameters, frac
 * as given) against the box: the worst excess over the margin, 0 if none. */
static double bbox_excess(const nesf_structure *s, const float lo[3], const float hi[3], int *atom)
{
    nesf_cellpar p;
    nesf_lattice canon;
    nesf_lattice_params(&s->lat, &p);
    if (nesf_lattice_from_params(&p, &canon, NULL)) return 0;
    double worst = 0;
    for (int a = 0; a < s->n; a++) {
        double c[3];
        nesf_lattice_frac_to_cart(&canon, s->frac + 3 * a, c);
        for (int k = 0; k < 3; k++) {
            double e = fmax(lo[k] - c[k], c[k] - hi[k]) - BBOX_MARGIN;
            if (e > worst) worst = e, *atom = a;
        }
    }
    return worst;
}

static void check_cell(const nesf_domain *d, const nesf_structure *s, nesf_domain_warning *w,
                       int max, int *n)
{
    nesf_cellpar p;
    nesf_lattice_params(&s->lat, &p);
    const double len[3] = {p.a, p.b, p.c}, ang[3] = {p.alpha, p.beta, p.gamma};
    for (int k = 0; k < 3; k++)
        if (len[k] < d->len_lo[k] - LEN_MARGIN || len[k] > d->len_hi[k] + LEN_MARGIN) {
            add(w, max, n, "cell_length_out_of_range", "cell length %s = %.3f Å is outside the "
                "training range [%.3f, %.3f] Å", len_names[k], len[k], d->len_lo[k], d->len_hi[k]);
            break;
        }
    for (int k = 0; k < 3; k++)
        if (ang[k] < d->ang_lo[k] - ANG_MARGIN || ang[k] > d->ang_hi[k] + ANG_MARGIN) {
            add(w, max, n, "cell_angle_out_of_range", "cell angle %s = %.2f° is outside the "
                "training range [%.2f, %.2f]°", ang_names[k], ang[k], d->ang_lo[k], d->ang_hi[k]);
            break;
        }
}

int nesf_domain_check(const nesf_domain *d, const float bbmin[3], const float bbmax[3],
                      const nesf_structure *s, nesf_domain_warning *w, int max)
{
    int n = 0, atom = 0;
    double ex = bbox_excess(s, bbmin, bbmax, &atom);
    if (ex > 0)
        add(w, max, &n, "outside_bbox", "atom %d lies %.2f Å outside the training atoms' bounding "
            "box [%.2f %.2f %.2f] .. [%.2f %.2f %.2f] Å (beyond a %.1f Å margin)", atom + 1, ex,
            bbmin[0], bbmin[1], bbmin[2], bbmax[0], bbmax[1], bbmax[2], BBOX_MARGIN);
    if (!d || d->structures <= 0) return n;
    if (s->n > d->max_atoms)
        add(w, max, &n, "too_many_atoms", "%d atoms; the largest training structure has %d", s->n,
            d->max_atoms);
    for (int a = 0; a < s->n; a++) {
        int z = s->z[a];
        if (z >= 1 && z <= NESF_MAX_Z && !d->element[z]) {
            add(w, max, &n, "unknown_element", "element %s does not occur in the training set",
                nesf_element_get(z)->symbol);
            break;
        }
    }
    check_cell(d, s, w, max, &n);
    return n;
}

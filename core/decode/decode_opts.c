/* decode_opts.c - the decode options (decode.h): defaults, the table of
 * their names, types and ranges, JSON in and out, and the stats sum. */
#include "decode.h"

#include <jansson.h>
#include <stddef.h>
#include <string.h>

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

/* decode_opts.c - the decode options (decode.h): defaults, the table of
 * their names, types and ranges (rows of the one config reader, jconf.h),
 * JSON in and out, and the stats sum. */
#include "decode.h"
#include "jconf.h"

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
    o->polish = 0.6f;
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

static const char *const mode_names[] = {"paper", "fast", NULL};
static const char *const cell_names[] = {"conventional", "primitive", NULL};

#define O nesf_decode_opts
static const nesf_jfield opt_rows[] = {
    NESF_JF_FLOAT(O, "grid_step", grid_step, 0.05, 5.0),
    NESF_JF_FLOAT(O, "grid_pad", grid_pad, 0.0, 20.0),
    NESF_JF_INT(O, "iterations", iterations, 1, 4096),
    NESF_JF_FLOAT(O, "score_max", score_max, 1e-3, 100.0),
    NESF_JF_FLOAT(O, "nms_radius", nms_radius, 0.0, 10.0), /* 0: from the training set */
    NESF_JF_INT(O, "nms_min_count", nms_min_count, 1, 1e6),
    NESF_JF_FLOAT(O, "species_lo", species_lo, -5.0, 5.0),
    NESF_JF_FLOAT(O, "species_hi", species_hi, -5.0, 5.0),
    NESF_JF_FLOAT(O, "species_step", species_step, 1e-2, 5.0),
    NESF_JF_FLOAT(O, "polish", polish, 0.0, 2.0),
    NESF_JF_INT(O, "max_atoms", max_atoms, 1, 100000),
    NESF_JF_INT(O, "max_particles", max_particles, 1, 1 << 24),
    NESF_JF_LONG(O, "batch_particles", batch_particles, 1, 1L << 28),
    NESF_JF_INT(O, "repair_lattice", repair_lattice, 0, 1),
    NESF_JF_NAMED(O, "mode", mode, NESF_DECODE_PAPER, mode_names),
    NESF_JF_FLOAT(O, "fast_margin", fast_margin, 0.0, 20.0),
    NESF_JF_FLOAT(O, "fast_tol", fast_tol, 1e-6, 1.0),
    NESF_JF_FLOAT(O, "fast_merge", fast_merge, 0.0, 1.0),
    NESF_JF_BOOL(O, "symmetrize", symmetrize),
    NESF_JF_FLOAT(O, "symprec", symprec, 1e-5, 1.0),
    NESF_JF_NAMED(O, "cell", cell, NESF_CELL_CONVENTIONAL, cell_names),
    NESF_JF_END_NOUN("decode option"),
};
#undef O

/* Most points per atom of the species vote (32³). */
#define MAX_SPECIES_POINTS 32768

int nesf_decode_opts_check(const nesf_decode_opts *o, nesf_error *err)
{
    int rc = nesf_jconf_check(opt_rows, o, "decode", err);
    if (rc) return rc;
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

/* All or nothing: o changes only when every key is valid. */
int nesf_decode_opts_from_json(nesf_decode_opts *o, const struct json_t *obj, nesf_error *err)
{
    if (!obj || !json_is_object(obj))
        return nesf_fail(err, NESF_ERR_INVALID, "decode options must be a JSON object");
    nesf_decode_opts t = *o;
    int rc = nesf_jconf_read(opt_rows, &t, obj, "decode", NULL, err);
    if (!rc) rc = nesf_decode_opts_check(&t, err);
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
    json_t *obj = nesf_jconf_dump(opt_rows, o);
    char *s = obj ? json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(7)) : NULL;
    json_decref(obj);
    return s;
}

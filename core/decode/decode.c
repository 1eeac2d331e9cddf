/* decode.c - reconstruction (decode.h): the one skeleton both modes run.
 * A call checks its options, plans (the mode's init), then takes batches
 * of whole structures through spec §5's steps, the mode supplying the
 * steps that differ (decode_internal.h: paper mode in decode_paper.c, fast
 * mode in decode_fast.c) and the skeleton the ones they share: the species
 * vote, the position polish, the output structures, the timing,
 * symmetrized output. */
#include "decode.h"
#include "decode_internal.h"
#include "symmetry.h"

#include <math.h>
#include <string.h>

int nesf__cancelled(const nesf_decode_opts *o, nesf_error *err)
{
    if (!o->cancel || !o->cancel(o->cancel_arg)) return NESF_OK;
    return nesf_fail(err, NESF_ERR_CANCELLED, "decoding cancelled");
}

static void free_outputs(nesf_structure **out, int n)
{
    for (int i = 0; i < n; i++) {
        nesf_structure_free(out[i]);
        out[i] = NULL;
    }
}

/* One batch, structures [b0, b0 + S), through steps 2-6 and 1. */
static int decode_batch(nesf__decode_run *r, const nesf__decode_mode *m, nesf__vote *vote,
                        nesf__polish *pol, int b0, int S, nesf_structure **out,
                        nesf_error *item_err, nesf_error *err)
{
    nesf_decode_stats *st = &r->stats;
    double t1 = nesf_clock_ms();
    int rc = m->flow(r, b0, S, err);
    if (rc) return rc;
    double t2 = nesf_clock_ms();
    st->ms_flow += t2 - t1;

    nesf__batch_atoms a;
    if ((rc = m->nms(r, S, &a, err))) return rc;
    st->atoms += a.aoff[S];
    /* step 5b, timed with NMS: the polish */
    const float *atoms;
    if ((rc = nesf__polish_run(pol, r->f, b0, S, a.aoff, a.atoms, &atoms, &st->field_evals, err)))
        return rc;
    double t3 = nesf_clock_ms();
    st->ms_nms += t3 - t2;

    /* step 6: species vote */
    if ((rc = nesf__vote_run(vote, r->f, b0, S, a.aoff, atoms, a.cls, &st->field_evals, err)))
        return rc;
    st->ms_species += nesf_clock_ms() - t3;

    /* step 1 (the lattice) and the output structures */
    const float *len, *ang;
    if ((rc = m->lattice(r, b0, S, &len, &ang, err))) return rc;
    return nesf__build_batch(r->f, r->o, b0, S, len, ang, a.aoff, atoms, a.cls, out, item_err,
                             &st->lattice_repaired, err);
}

/* nesf_decode_field's work in mode m, for checked options, cleared out[]
 * and item_err[] and f->n > 0; nothing stays allocated on failure. */
static int decode_run(nesf_field *f, const nesf_decode_opts *o, const nesf__decode_mode *m,
                      nesf_structure **out, nesf_error *item_err, nesf_decode_stats *st,
                      nesf_error *err)
{
    double t0 = nesf_clock_ms();
    nesf__decode_run r = {.f = f, .o = o};
    nesf__vote vote;
    nesf__polish pol;
    memset(&vote, 0, sizeof vote);
    memset(&pol, 0, sizeof pol);
    int max_structs = 0;
    int rc = m->init(&r, &max_structs, err);
    if (!rc) rc = nesf__vote_init(&vote, f->be, o, f->num_species, max_structs, err);
    if (!rc) rc = nesf__polish_init(&pol, f->be, o, max_structs, err);
    for (int b0 = 0; !rc && b0 < f->n;) {
        const int S = m->batch(&r, b0);
        rc = decode_batch(&r, m, &vote, &pol, b0, S, out, item_err, err);
        b0 += S;
    }
    nesf__polish_free(&pol);
    nesf__vote_free(&vote);
    m->release(&r);
    if (rc) {
        free_outputs(out, f->n);
        return rc;
    }
    r.stats.structures = f->n;
    r.stats.ms = nesf_clock_ms() - t0;
    *st = r.stats;
    return NESF_OK;
}

int nesf_decode_field(nesf_field *f, const nesf_decode_opts *o, nesf_structure **out,
                      nesf_error *item_err, nesf_decode_stats *st, nesf_error *err)
{
    nesf_decode_opts def;
    if (!o) {
        nesf_decode_opts_default(&def);
        o = &def;
    }
    if (o->nms_radius == 0) { /* from the training set (decode.h) */
        if (o != &def) def = *o;
        def.nms_radius = f->min_distance > 0 ? fmaxf(0.5f, 0.9f * f->min_distance) : 0.5f;
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
        rc = decode_run(f, o, o->mode == NESF_DECODE_FAST ? &nesf__mode_fast : &nesf__mode_paper,
                        out, item_err, &stats, err);
    if (rc) return rc;
    if (o->symmetrize) {
        double t0 = nesf_clock_ms();
        nesf_decode_symmetrize(o, out, f->n, &stats);
        stats.ms += nesf_clock_ms() - t0;
    }
    if (st) *st = stats;
    return NESF_OK;
}

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

void nesf_field_release(nesf_field *f)
{
    if (f && f->release) f->release(f);
    if (f) {
        f->release = NULL;
        f->impl = NULL;
    }
}

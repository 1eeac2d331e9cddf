/* metrics.c - reconstruction errors, see metrics.h. */
#include "metrics.h"

#include <math.h>
#include <string.h>

void nesf_metrics_init(nesf_metrics *m) { memset(m, 0, sizeof *m); }

/* Sums, over the atoms of `from`, the distance to the nearest atom of `to`
 * and counts species mismatches.  `to` must have atoms. */
static void one_way(const nesf_structure *from, const nesf_structure *to, double *dsum,
                    long *wrong)
{
    for (int i = 0; i < from->n; i++) {
        double d;
        int j = nesf_structure_nearest(to, from->cart + 3 * i, &d, NULL);
        d = sqrt(d);
        *dsum += d;
        if (to->z[j] != from->z[i]) (*wrong)++;
    }
}

void nesf_metrics_add_atoms(nesf_metrics *m, const nesf_structure *truth,
                            const nesf_structure *rec)
{
    const int nd = rec ? rec->n : 0;
    m->structures++;
    m->true_atoms += truth->n;
    m->det_atoms += nd;
    if (nd != truth->n) m->count_wrong++;
    if (nd == 0) {
        m->undetected_atoms += truth->n;
    } else {
        m->act_atoms += truth->n;
        one_way(truth, rec, &m->pos_act_sum, &m->spec_act_wrong);
        if (truth->n > 0) one_way(rec, truth, &m->pos_det_sum, &m->spec_det_wrong);
    }
}

void nesf_metrics_add_lattice(nesf_metrics *m, const nesf_structure *truth,
                              const nesf_cellpar *b)
{
    nesf_cellpar a;
    nesf_lattice_params(&truth->lat, &a);
    m->lattices++;
    m->len_abs_sum += fabs(a.a - b->a) + fabs(a.b - b->b) + fabs(a.c - b->c);
    m->ang_abs_sum += fabs(a.alpha - b->alpha) + fabs(a.beta - b->beta) + fabs(a.gamma - b->gamma);
}

void nesf_metrics_add(nesf_metrics *m, const nesf_structure *truth, const nesf_structure *rec)
{
    nesf_metrics_add_atoms(m, truth, rec);
    if (rec) {
        nesf_cellpar b;
        nesf_lattice_params(&rec->lat, &b);
        nesf_metrics_add_lattice(m, truth, &b);
    }
}

void nesf_metrics_merge(nesf_metrics *dst, const nesf_metrics *src)
{
    dst->structures += src->structures;
    dst->count_wrong += src->count_wrong;
    dst->true_atoms += src->true_atoms;
    dst->det_atoms += src->det_atoms;
    dst->act_atoms += src->act_atoms;
    dst->pos_act_sum += src->pos_act_sum;
    dst->spec_act_wrong += src->spec_act_wrong;
    dst->pos_det_sum += src->pos_det_sum;
    dst->spec_det_wrong += src->spec_det_wrong;
    dst->undetected_atoms += src->undetected_atoms;
    dst->lattices += src->lattices;
    dst->len_abs_sum += src->len_abs_sum;
    dst->ang_abs_sum += src->ang_abs_sum;
}

static double ratio(double num, long den) { return den > 0 ? num / den : NAN; }

void nesf_metrics_summarize(const nesf_metrics *m, nesf_metrics_summary *out)
{
    /* detected atoms only exist where the structure had detections, so
     * det_atoms is the denominator of the "detected" figures */
    out->count_err_pct = 100.0 * ratio((double)m->count_wrong, m->structures);
    out->pos_act = ratio(m->pos_act_sum, m->act_atoms);
    out->pos_det = ratio(m->pos_det_sum, m->det_atoms);
    out->spec_act_pct = 100.0 * ratio((double)m->spec_act_wrong, m->act_atoms);
    out->spec_det_pct = 100.0 * ratio((double)m->spec_det_wrong, m->det_atoms);
    out->len_mae = ratio(m->len_abs_sum, 3 * m->lattices);
    out->ang_mae = ratio(m->ang_abs_sum, 3 * m->lattices);
}

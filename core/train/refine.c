/* refine.c - latent refinement by gradient descent on the decoder's loss
 * (refine.h).  The decoder runs through the training forward and backward
 * of mlp.c on a view of the network whose parameters are the BN-folded
 * inference weights and whose MLPs have BN and dropout stripped: with BN
 * folded into the following Linear, inference is exactly Linear + ReLU,
 * so the training code differentiates the inference network; without
 * parameter gradients (net.grads NULL) only dz is computed. */
#include "refine.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "jconf.h"
#include "model_internal.h"
#include "train.h" /* nesf_seed_mix */

void nesf_refine_opts_default(nesf_refine_opts *o)
{
    memset(o, 0, sizeof *o);
    o->steps = NESF_REFINE_STEPS;
    o->lr = 0.02f;
    o->w_pos = 10.0f;
    o->w_spec = 1.0f;
    o->w_len = 1.0f;
    o->w_ang = 100.0f; /* radians²: at 1 the angle head drifts (0.76° -> 1.29° on val) */
    nesf_sampling_paper(&o->sampling);
    o->sampling.global_fraction = 0.25f; /* half the cost, the same val row */
    o->sampling.species_fraction = 0.5f;
    o->sampling.cell_points = 256;
    o->seed = 1;
    o->look_tries = NESF_SECOND_LOOK_TRIES;
    o->look_pct = 80.0f;
    o->look_steps = 200;
    o->look_lr = 0.05f;
}

#define R nesf_refine_opts
static const nesf_jfield weight_rows[] = {NESF_LOSS_WEIGHT_ROWS(R, 1e4), NESF_JF_END};
static const nesf_jfield look_rows[] = {
    NESF_JF_INT(R, "tries", look_tries, 0, 16),
    NESF_JF_FLOAT(R, "above_percentile", look_pct, 0, 100),
    NESF_JF_INT(R, "steps", look_steps, 1, 1000),
    NESF_JF_FLOAT_OPEN(R, "lr", look_lr, 0, 1),
    NESF_JF_END,
};

/* "second_look": true / false as shorthands of the object form. */
static int read_look(void *dst, const char *path, const json_t *v, void *ctx, nesf_error *err)
{
    nesf_refine_opts *o = dst;
    (void)ctx;
    if (json_is_boolean(v)) {
        o->look_tries = json_is_true(v) ? NESF_SECOND_LOOK_TRIES : 0;
        return NESF_OK;
    }
    if (!json_is_object(v)) return nesf_fail(err, NESF_ERR_INVALID, "%s: expected true, false or an object", path);
    return nesf_jconf_read(look_rows, o, v, path, NULL, err);
}

static const nesf_jfield refine_rows[] = {
    NESF_JF_INT(R, "steps", steps, 0, 1000),
    NESF_JF_FLOAT_OPEN(R, "lr", lr, 0, 1),
    NESF_JF_OBJECT("loss_weights", weight_rows),
    NESF_JF_FLOAT_OPEN(R, "global_fraction", sampling.global_fraction, 0, 1),
    NESF_JF_FLOAT_OPEN(R, "species_fraction", sampling.species_fraction, 0, 1),
    NESF_JF_INT(R, "cell_points", sampling.cell_points, 0, 4096),
    NESF_JF_INT(R, "boundary_points", sampling.boundary_points, 0, 4096),
    NESF_JF_U64(R, "seed", seed, 0, 9.2e18),
    NESF_JF_CUSTOM("second_look", read_look),
    NESF_JF_END,
};
#undef R

/* The shorthands (a step count, true/false) keep request bodies short; the
 * object form goes through the one table reader. */
int nesf_refine_opts_from_json(nesf_refine_opts *o, const json_t *v, nesf_error *err)
{
    if (json_is_boolean(v)) {
        o->steps = json_is_true(v) ? NESF_REFINE_STEPS : 0;
        return NESF_OK;
    }
    if (json_is_integer(v)) {
        json_int_t n = json_integer_value(v);
        if (n < 0 || n > 1000) return nesf_fail(err, NESF_ERR_INVALID, "refine: steps must be in 0..1000");
        o->steps = (int)n;
        return NESF_OK;
    }
    if (!json_is_object(v))
        return nesf_fail(err, NESF_ERR_INVALID, "refine: expected a step count or an object");
    return nesf_jconf_read(refine_rows, o, v, "refine", NULL, err);
}

/* The differentiable inference decoder: the four decoder MLPs, BN and
 * dropout stripped, over the folded weights; scratch gradients and an
 * arena of its own so that the model's arena is left alone. */
typedef struct ctx {
    nesf_model *m;
    nesf_net v;
    nesf_mlp len, ang, pos, spec;
} ctx;

static void strip(nesf_mlp *dst, const nesf_mlp *src)
{
    *dst = *src;
    for (int l = 0; l < dst->n; l++) dst->L[l].bn = dst->L[l].dropout = 0;
}

static int ctx_init(ctx *c, nesf_model *m, nesf_error *err)
{
    memset(c, 0, sizeof *c);
    c->m = m;
    c->v = m->net;
    c->v.params = m->net.folded;
    c->v.dropout = 0;
    nesf_arena_init(&c->v.arena, m->net.be);
    c->v.grads = NULL; /* only dz: the weight-gradient GEMMs are skipped */
    strip(&c->len, &m->mlp[NESF_DEC_LENGTH]);
    strip(&c->ang, &m->mlp[NESF_DEC_ANGLE]);
    strip(&c->pos, &m->mlp[NESF_DEC_POSITION]);
    strip(&c->spec, &m->mlp[NESF_DEC_SPECIES]);
    return NESF_OK;
}

static void ctx_free(ctx *c) { nesf_arena_release(&c->v.arena); }

/* Device copies of one structure's queries and lattice targets. */
typedef struct dev_q {
    float *z, *pxyz, *ptgt, *sxyz, *tlen, *tang;
    int *poff, *soff, *slbl;
    int P, Q;
} dev_q;

static void *up(nesf_arena *ar, const void *src, size_t bytes, int *fail)
{
    void *d = nesf_arena_alloc(ar, bytes ? bytes : 4);
    if (!d) *fail = 1;
    else if (bytes && ar->be->ops->upload(ar->be, d, src, bytes)) *fail = 1;
    return d;
}

static int upload_q(ctx *c, const nesf_queries *q, const float *z, const float latf[6], dev_q *d,
                    nesf_error *err)
{
    nesf_arena *ar = &c->v.arena;
    const int L = c->m->cfg.latent;
    int fail = nesf_arena_reset(ar) != 0;
    d->P = q->pos_off[1];
    d->Q = q->spec_off[1];
    d->z = up(ar, z, (size_t)L * sizeof(float), &fail);
    d->pxyz = up(ar, q->pos_xyz, (size_t)d->P * 3 * sizeof(float), &fail);
    d->ptgt = up(ar, q->pos_tgt, (size_t)d->P * 3 * sizeof(float), &fail);
    d->poff = up(ar, q->pos_off, 2 * sizeof(int), &fail);
    d->sxyz = up(ar, q->spec_xyz, (size_t)d->Q * 3 * sizeof(float), &fail);
    d->slbl = up(ar, q->spec_lbl, (size_t)d->Q * sizeof(int), &fail);
    d->soff = up(ar, q->spec_off, 2 * sizeof(int), &fail);
    d->tlen = up(ar, latf, 3 * sizeof(float), &fail);
    d->tang = up(ar, latf + 3, 3 * sizeof(float), &fail);
    return fail ? nesf_fail(err, NESF_ERR_NOMEM, "out of backend memory for refinement") : NESF_OK;
}

/* Loss of latent d->z on its queries and its gradient into host dz_h. */
static int loss_grad(ctx *c, const nesf_refine_opts *o, const dev_q *d, float *dz_h, double *loss,
                     nesf_error *err)
{
    nesf_net *v = &c->v;
    nesf_backend *be = v->be;
    const int L = c->m->cfg.latent, A = c->m->A;
    nesf_mlp_acts a_len, a_ang, a_fp, a_fs;
    nesf_mlp_in in_lat = {.rows = 1, .x = d->z, .ldx = L};
    nesf_mlp_in in_fp = {.rows = d->P, .S = 1, .off = d->poff, .z = d->z, .ldz = L, .xyz = d->pxyz};
    nesf_mlp_in in_fs = {.rows = d->Q, .S = 1, .off = d->soff, .z = d->z, .ldz = L, .xyz = d->sxyz};
    int rc = nesf_mlp_forward_train(v, &c->len, &in_lat, 0, &a_len);
    if (!rc) rc = nesf_mlp_forward_train(v, &c->ang, &in_lat, 0, &a_ang);
    if (!rc) rc = nesf_mlp_forward_train(v, &c->pos, &in_fp, 0, &a_fp);
    if (!rc) rc = nesf_mlp_forward_train(v, &c->spec, &in_fs, 0, &a_fs);
    float *dz = rc ? NULL : nesf_arena_floats(&v->arena, (size_t)L);
    if (!dz) return nesf_fail(err, NESF_ERR_NOMEM, "out of backend memory for refinement");
    /* each loss op leaves the gradient of its weighted term in place */
    double lp = be->ops->mse(be, (size_t)d->P * 3, a_fp.out, d->ptgt, o->w_pos, a_fp.out);
    double ls = be->ops->cross_entropy(be, d->Q, A, a_fs.out, d->slbl, o->w_spec, a_fs.out);
    double ll = be->ops->mse(be, 3, a_len.out, d->tlen, o->w_len, a_len.out);
    double la = be->ops->mse(be, 3, a_ang.out, d->tang, o->w_ang, a_ang.out);
    *loss = o->w_pos * lp + o->w_spec * ls + o->w_len * ll + o->w_ang * la;
    be->ops->fill(be, dz, (size_t)L, 0);
    rc = nesf_mlp_backward(v, &c->pos, &in_fp, &a_fp, a_fp.out, 3, NULL, 0, dz, L);
    if (!rc) rc = nesf_mlp_backward(v, &c->spec, &in_fs, &a_fs, a_fs.out, A, NULL, 0, dz, L);
    if (!rc) rc = nesf_mlp_backward(v, &c->len, &in_lat, &a_len, a_len.out, 3, dz, L, NULL, 0);
    if (!rc) rc = nesf_mlp_backward(v, &c->ang, &in_lat, &a_ang, a_ang.out, 3, dz, L, NULL, 0);
    if (rc) return nesf_fail(err, rc, "out of backend memory for refinement");
    if (be->ops->download(be, dz_h, dz, (size_t)L * sizeof(float)) || be->ops->sync(be))
        return nesf_fail(err, NESF_ERR_BACKEND, "backend failure in latent refinement");
    return NESF_OK;
}

/* Adam on one latent (moments m1, m2 host, t 1-based). */
static void adam(float *z, const float *g, float *m1, float *m2, int L, int t, float lr)
{
    const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
    const float c1 = 1.0f - powf(b1, (float)t), c2 = 1.0f - powf(b2, (float)t);
    for (int i = 0; i < L; i++) {
        m1[i] = b1 * m1[i] + (1 - b1) * g[i];
        m2[i] = b2 * m2[i] + (1 - b2) * g[i] * g[i];
        z[i] -= lr * (m1[i] / c1) / (sqrtf(m2[i] / c2) + eps);
    }
}

/* One structure in the datasets' orientation (canonical), with what every
 * step needs: its species classes and lattice targets. */
typedef struct item {
    nesf_structure *s;
    nesf_enc_batch hb;
    int *cls;
} item;

static int item_init(item *it, nesf_model *m, const nesf_structure *s, nesf_error *err)
{
    memset(it, 0, sizeof *it);
    it->s = nesf_structure_copy(s);
    if (!it->s) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    int rc = nesf_structure_canonicalize(it->s, err);
    if (!rc) rc = nesf_enc_batch_build(m, &it->s, 1, &it->hb, err);
    if (!rc && !(it->cls = malloc((size_t)it->s->n * sizeof *it->cls)))
        rc = nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    for (int j = 0; !rc && j < it->s->n; j++) it->cls[j] = nesf_model_class_of(m, it->s->z[j]);
    return rc;
}

static void item_free(item *it)
{
    nesf_structure_free(it->s);
    nesf_enc_batch_free(&it->hb);
    free(it->cls);
}

/* Loss and gradient at z on step t's queries (rows counted into *rows). */
static int step_loss(ctx *c, const nesf_refine_opts *o, const item *it, const float *z, int t,
                     double *loss, float *dz, long *rows, nesf_error *err)
{
    nesf_queries q = {0};
    const int *cp = it->cls;
    int rc = nesf_queries_sample(&o->sampling, c->m->bbmin, c->m->bbmax, (nesf_structure *const *)&it->s,
                                 &cp, 1, nesf_seed_mix(o->seed, (uint64_t)t), &q, err);
    dev_q d;
    if (!rc) rc = upload_q(c, &q, z, it->hb.latf, &d, err);
    if (!rc) rc = loss_grad(c, o, &d, dz, loss, err);
    if (!rc && !isfinite(*loss)) rc = nesf_fail(err, NESF_ERR_INVALID, "refinement loss is not finite");
    if (!rc && rows) *rows += d.P + d.Q;
    nesf_queries_free(&q);
    return rc;
}

static int refine_one(ctx *c, const nesf_refine_opts *o, const item *it, float *z,
                      nesf_refine_stats *st, nesf_error *err)
{
    const int L = c->m->cfg.latent;
    float *buf = calloc((size_t)3 * L, sizeof *buf); /* gradient, Adam moments */
    int rc = buf ? NESF_OK : nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    double loss = 0;
    long rows = 0;
    for (int t = 0; !rc && t < o->steps; t++) {
        rc = step_loss(c, o, it, z, t, &loss, buf, &rows, err);
        if (!rc && t == 0 && st) st->loss_before += loss;
        if (!rc) adam(z, buf, buf + L, buf + 2 * L, L, t + 1, o->lr);
    }
    if (!rc && st) {
        st->loss_after += loss; /* the last step's, before its update */
        st->field_rows += rows;
    }
    free(buf);
    return rc;
}

int nesf_refine_loss(nesf_model *m, const nesf_structure *s, const float *z,
                     const nesf_refine_opts *o, int step, double *loss, float *dz, nesf_error *err)
{
    ctx c;
    item it = {0};
    int rc = ctx_init(&c, m, err);
    if (!rc) rc = item_init(&it, m, s, err);
    if (!rc) rc = step_loss(&c, o, &it, z, step, loss, dz, NULL, err);
    item_free(&it);
    ctx_free(&c);
    return rc;
}

int nesf_refine_latents(nesf_model *m, nesf_structure *const *s, int n, float *z,
                        const nesf_refine_opts *o, nesf_refine_stats *st, nesf_error *err)
{
    if (o->steps <= 0 || n <= 0) return NESF_OK;
    ctx c;
    int rc = ctx_init(&c, m, err);
    const int L = m->cfg.latent;
    for (int i = 0; !rc && i < n; i++) {
        item it;
        rc = item_init(&it, m, s[i], err);
        if (!rc) rc = refine_one(&c, o, &it, z + (size_t)i * L, st, err);
        if (rc) nesf_error_prefix(err, "structure %d: ", i + 1);
        item_free(&it);
    }
    ctx_free(&c);
    return rc;
}

#include "train.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "elements.h"
#include "jconf.h"
#include "model_internal.h"

struct nesf_trainer {
    nesf_model *m;
    nesf_train_config c;
    float *adam_m, *adam_v;   /* backend memory, nparams each */
    long t;                   /* Adam steps taken */
};

/* ---- configuration ---- */

void nesf_train_config_paper(nesf_train_config *c)
{
    memset(c, 0, sizeof *c);
    c->batch = 64;
    c->epochs = 3200;
    c->lr = 1e-3f;
    c->lr_halve_every = 640;
    c->w_pos = 10.0f;
    c->w_spec = 0.1f;
    c->w_len = 1.0f;
    c->w_ang = 1.0f;
    nesf_sampling_paper(&c->sampling);
    c->seed = 1;
    c->dropout = -1.0f;
}

float nesf_train_lr(const nesf_train_config *c, int epoch)
{
    int halvings = c->lr_halve_every > 0 ? epoch / c->lr_halve_every : 0;
    return c->lr * powf(0.5f, (float)halvings);
}

#define C nesf_train_config
static const char *const shift_words[] = {"none", "half-ab", "half-abc", NULL};
static const nesf_jfield weight_rows[] = {NESF_LOSS_WEIGHT_ROWS(C, 1e6), NESF_JF_END};
static const nesf_jfield sampling_rows[] = {
    NESF_JF_FLOAT(C, "global_step", sampling.global_step, 0.05, 100),
    NESF_JF_FLOAT(C, "global_pad", sampling.global_pad, 0, 100),
    NESF_JF_FLOAT(C, "global_sigma", sampling.global_sigma, 0, 100),
    NESF_JF_FLOAT(C, "global_fraction", sampling.global_fraction, 0, 1),
    NESF_JF_FLOAT(C, "local_lo", sampling.local_lo, -10, 10),
    NESF_JF_FLOAT(C, "local_hi", sampling.local_hi, -10, 10),
    NESF_JF_FLOAT(C, "local_step", sampling.local_step, 0.01, 10),
    NESF_JF_FLOAT(C, "local_sigma", sampling.local_sigma, 0, 10),
    NESF_JF_FLOAT(C, "species_lo", sampling.species_lo, -10, 10),
    NESF_JF_FLOAT(C, "species_hi", sampling.species_hi, -10, 10),
    NESF_JF_FLOAT(C, "species_step", sampling.species_step, 0.01, 10),
    NESF_JF_FLOAT(C, "species_sigma", sampling.species_sigma, 0, 10),
    NESF_JF_FLOAT(C, "species_fraction", sampling.species_fraction, 0, 1),
    NESF_JF_FLOAT(C, "boundary_width", sampling.boundary_width, 0.01, 10),
    NESF_JF_INT(C, "cell_points", sampling.cell_points, 0, 1 << 16),
    NESF_JF_INT(C, "boundary_points", sampling.boundary_points, 0, 1 << 16),
    NESF_JF_END,
};
static const nesf_jfield training_rows[] = {
    NESF_JF_INT(C, "batch", batch, 1, 1 << 16),
    NESF_JF_INT(C, "epochs", epochs, 0, 1 << 24),
    NESF_JF_INT(C, "lr_halve_every", lr_halve_every, 0, 1 << 24),
    NESF_JF_U64(C, "seed", seed, 0, 9.2e18),
    NESF_JF_FLOAT(C, "lr", lr, 0, 10),
    NESF_JF_FLOAT(C, "dropout", dropout, 0, 0.99),
    NESF_JF_NAMED(C, "origin_shifts", origin_shifts, NESF_SHIFTS_NONE, shift_words),
    NESF_JF_OBJECT("loss_weights", weight_rows),
    NESF_JF_OBJECT("sampling", sampling_rows),
    NESF_JF_END,
};
/* A config file: the "model" section is the model reader's (model.c). */
static const nesf_jfield file_rows[] = {
    NESF_JF_OBJECT("training", training_rows),
    NESF_JF_CUSTOM("model", nesf_jconf_skip),
    NESF_JF_END,
};
#undef C

int nesf_train_config_load(const char *path, nesf_train_config *c, nesf_error *err)
{
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) return nesf_fail(err, NESF_ERR_PARSE, "%s:%d: %s", path, je.line, je.text);
    int rc = nesf_jconf_read(file_rows, c, root, "", NULL, err);
    if (rc) nesf_error_prefix(err, "%s: ", path);
    json_decref(root);
    return rc;
}

int nesf_train_config_parse(const char *json, const char *where, nesf_train_config *c,
                            nesf_error *err)
{
    json_error_t je;
    json_t *o = json_loads(json, 0, &je);
    int rc = o ? nesf_jconf_read(training_rows, c, o, "training", NULL, err)
               : nesf_fail(err, NESF_ERR_PARSE, "%d: %s", je.line, je.text);
    if (rc) nesf_error_prefix(err, "%s: ", where);
    json_decref(o);
    return rc;
}

char *nesf_train_config_to_json(const nesf_train_config *c)
{
    const nesf_sampling *s = &c->sampling;
    json_t *o = json_pack("{s:i, s:i, s:f, s:i, s:I, s:{s:f, s:f, s:f, s:f}}", "batch", c->batch,
                          "epochs", c->epochs, "lr", (double)c->lr, "lr_halve_every", c->lr_halve_every,
                          "seed", (json_int_t)c->seed, "loss_weights", "position", (double)c->w_pos,
                          "species", (double)c->w_spec, "length", (double)c->w_len, "angle", (double)c->w_ang);
    json_t *sp = json_pack("{s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f}",
                           "global_step", (double)s->global_step, "global_pad", (double)s->global_pad,
                           "global_sigma", (double)s->global_sigma, "global_fraction", (double)s->global_fraction,
                           "local_lo", (double)s->local_lo, "local_hi", (double)s->local_hi,
                           "local_step", (double)s->local_step, "local_sigma", (double)s->local_sigma,
                           "species_lo", (double)s->species_lo, "species_hi", (double)s->species_hi,
                           "species_step", (double)s->species_step, "species_sigma", (double)s->species_sigma,
                           "species_fraction", (double)s->species_fraction);
    json_object_set_new(sp, "cell_points", json_integer(s->cell_points));
    json_object_set_new(sp, "boundary_points", json_integer(s->boundary_points));
    json_object_set_new(sp, "boundary_width", json_real(s->boundary_width));
    json_object_set_new(o, "sampling", sp);
    if (c->dropout >= 0) json_object_set_new(o, "dropout", json_real(c->dropout));
    if (c->origin_shifts) /* absent = none: older readers load such files */
        json_object_set_new(o, "origin_shifts", json_string(shift_words[c->origin_shifts]));
    char *out = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return out;
}

/* ---- trainer ---- */

int nesf_trainer_create(nesf_model *m, const nesf_train_config *c, nesf_trainer **out,
                        nesf_error *err)
{
    *out = NULL;
    nesf_net *net = &m->net;
    nesf_backend *be = net->be;
    nesf_trainer *t = calloc(1, sizeof *t);
    if (!t) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    t->m = m;
    t->c = *c;
    if (c->dropout >= 0) /* recorded in the saved model config too */
        m->cfg.dropout = net->dropout = c->dropout;
    if (!net->grads) net->grads = be->ops->alloc(be, net->nparams * sizeof(float));
    t->adam_m = be->ops->alloc(be, net->nparams * sizeof(float));
    t->adam_v = be->ops->alloc(be, net->nparams * sizeof(float));
    if (!net->grads || !t->adam_m || !t->adam_v) {
        nesf_trainer_free(t);
        return nesf_fail(err, NESF_ERR_NOMEM, "cannot allocate training state on %s", be->name);
    }
    *out = t;
    return NESF_OK;
}

void nesf_trainer_free(nesf_trainer *t)
{
    if (!t) return;
    nesf_backend *be = t->m->net.be;
    be->ops->free(be, t->adam_m);
    be->ops->free(be, t->adam_v);
    free(t);
}

long nesf_trainer_steps(const nesf_trainer *t) { return t->t; }

double nesf_trainer_step_flops(const nesf_trainer *t, int N, int S, const nesf_losses *l)
{
    double f = 0;
    for (int k = 0; k < NESF_NUM_MLPS; k++) {
        const nesf_mlp *p = &t->m->mlp[k];
        const int grouped = k == NESF_DEC_POSITION || k == NESF_DEC_SPECIES;
        const int dx0 = k == NESF_ENC_MIX || k == NESF_ENC_HEAD || k == NESF_DEC_LENGTH || k == NESF_DEC_ANGLE;
        const double R = k == NESF_DEC_POSITION ? (double)l->pos_queries
                       : k == NESF_DEC_SPECIES  ? (double)l->spec_queries
                       : k <= NESF_ENC_MIX      ? N : S;
        for (int i = 0; i < p->n; i++) {
            const nesf_layer *L = &p->L[i];
            const double feat = L->in - L->extra, o = L->out;
            if (i == 0 && grouped)
                f += 2 * (2 * R * L->extra * o + 3 * S * feat * o);
            else
                f += 2 * (2 * R * L->in * o + (i > 0 || dx0 ? R * feat * o : 0));
        }
    }
    return f;
}

int nesf_trainer_sample(nesf_trainer *t, nesf_structure *const *s, int n, uint64_t seed,
                        nesf_queries *q, nesf_error *err)
{
    int **cls = calloc((size_t)n, sizeof *cls);
    int rc = cls ? NESF_OK : nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    for (int i = 0; !rc && i < n; i++) {
        cls[i] = malloc((size_t)(s[i]->n ? s[i]->n : 1) * sizeof **cls);
        if (!cls[i]) {
            rc = nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
            break;
        }
        for (int j = 0; j < s[i]->n; j++) {
            cls[i][j] = nesf_model_class_of(t->m, s[i]->z[j]);
            if (cls[i][j] < 0) {
                const nesf_element *e = nesf_element_get(s[i]->z[j]);
                rc = nesf_fail(err, NESF_ERR_NOTFOUND, "structure %d: element %s is not among the model's species",
                               i + 1, e ? e->symbol : "?");
                break;
            }
        }
    }
    if (!rc)
        rc = nesf_queries_sample(&t->c.sampling, t->m->bbmin, t->m->bbmax, s, (const int *const *)cls,
                                 n, seed, q, err);
    for (int i = 0; cls && i < n; i++) free(cls[i]);
    free(cls);
    return rc;
}

/* Arena copy of a host array for one step; sets *fail to 1 when the arena
 * is out of memory, 2 when the upload failed (callers report once). */
static void *up(nesf_arena *ar, const void *src, size_t bytes, int *fail)
{
    void *d = nesf_arena_alloc(ar, bytes ? bytes : 4);
    if (!d) {
        *fail = 1;
        return NULL;
    }
    if (bytes && ar->be->ops->upload(ar->be, d, src, bytes)) *fail = 2;
    return d;
}

/* The encoder's backward from dz (S x latent, consumed): the head, the max
 * pooling, the mix and the two atom MLPs, gradients accumulated into the
 * net's.  The scratch gradients come zeroed. */
static int enc_backward(nesf_model *m, const nesf_enc_graph *g, float *dz, float *dhead, float *dpool, float *dmix,
                        float *dmixin)
{
    nesf_net *net = &m->net;
    nesf_backend *be = net->be;
    const nesf_model_config *c = &m->cfg;
    const nesf_mlp *mlp = m->mlp;
    const int n = g->S, L = c->latent, mixw = c->enc_pos_out + c->enc_species_out, headw = c->enc_mix_out + 6;
    const nesf_mlp_in *in = g->in;
    const nesf_mlp_acts *a = g->acts;
    int rc = nesf_mlp_backward(net, &mlp[NESF_ENC_HEAD], &in[NESF_ENC_GRAPH_HEAD], &a[NESF_ENC_GRAPH_HEAD], dz, L,
                               dhead, headw, NULL, 0);
    if (rc) return rc;
    be->ops->copy2d(be, n, c->enc_mix_out, dhead, headw, dpool, c->enc_mix_out);
    be->ops->group_max_backward(be, n, c->enc_mix_out, dpool, g->arg, dmix, c->enc_mix_out);
    rc = nesf_mlp_backward(net, &mlp[NESF_ENC_MIX], &in[NESF_ENC_GRAPH_MIX], &a[NESF_ENC_GRAPH_MIX], dmix,
                           c->enc_mix_out, dmixin, mixw, NULL, 0);
    if (!rc)
        rc = nesf_mlp_backward(net, &mlp[NESF_ENC_POS], &in[NESF_ENC_GRAPH_POS], &a[NESF_ENC_GRAPH_POS], dmixin, mixw,
                               NULL, 0, NULL, 0);
    if (!rc)
        rc = nesf_mlp_backward(net, &mlp[NESF_ENC_SPECIES], &in[NESF_ENC_GRAPH_SPECIES], &a[NESF_ENC_GRAPH_SPECIES],
                               dmixin + c->enc_pos_out, mixw, NULL, 0, NULL, 0);
    return rc;
}

/* The four losses on the decoders' outputs; each writes the gradient of
 * its weighted term in place. */
static nesf_losses losses(nesf_trainer *t, const nesf_enc_graph *g, const nesf_mlp_acts *a_len,
                          const nesf_mlp_acts *a_ang, const nesf_mlp_acts *a_fp, const nesf_mlp_acts *a_fs,
                          const float *ptgt, const int *slbl, float *tl, float *ta, int P, int Q)
{
    nesf_backend *be = t->m->net.be;
    const int n = g->S, A = t->m->A;
    be->ops->copy2d(be, n, 3, g->latf, 6, tl, 3);
    be->ops->copy2d(be, n, 3, g->latf + 3, 6, ta, 3);
    nesf_losses lo = {0};
    lo.pos = be->ops->mse(be, (size_t)P * 3, a_fp->out, ptgt, t->c.w_pos, a_fp->out);
    lo.spec = be->ops->cross_entropy(be, Q, A, a_fs->out, slbl, t->c.w_spec, a_fs->out);
    lo.len = be->ops->mse(be, (size_t)n * 3, a_len->out, tl, t->c.w_len, a_len->out);
    lo.ang = be->ops->mse(be, (size_t)n * 3, a_ang->out, ta, t->c.w_ang, a_ang->out);
    lo.total = t->c.w_pos * lo.pos + t->c.w_spec * lo.spec + t->c.w_len * lo.len + t->c.w_ang * lo.ang;
    lo.pos_queries = P;
    lo.spec_queries = Q;
    return lo;
}

int nesf_trainer_forward_backward(nesf_trainer *t, nesf_structure *const *s, int n,
                                  const nesf_queries *q, uint64_t dropout_seed,
                                  nesf_losses *out, nesf_error *err)
{
    nesf_model *m = t->m;
    nesf_net *net = &m->net;
    nesf_backend *be = net->be;
    nesf_arena *ar = &net->arena;
    const nesf_model_config *c = &m->cfg;
    const int L = c->latent, A = m->A;
    const int mixw = c->enc_pos_out + c->enc_species_out, headw = c->enc_mix_out + 6;
    nesf_mlp *mlp = m->mlp;
    nesf_enc_batch hb;
    nesf_enc_graph g;
    int rc = nesf_enc_batch_build(m, s, n, &hb, err);
    if (rc) return rc;
    const int N = hb.N, P = q->pos_off[n], Q = q->spec_off[n];
    if ((rc = nesf_arena_reset(ar)) || (rc = nesf_enc_upload(m, &hb, &g, err))) {
        nesf_enc_batch_free(&hb);
        return rc;
    }
    nesf_enc_batch_free(&hb);
    /* the queries */
    int fail = 0;
    float *pxyz = up(ar, q->pos_xyz, (size_t)P * 3 * sizeof(float), &fail);
    float *ptgt = up(ar, q->pos_tgt, (size_t)P * 3 * sizeof(float), &fail);
    int *poff = up(ar, q->pos_off, (size_t)(n + 1) * sizeof(int), &fail);
    float *sxyz = up(ar, q->spec_xyz, (size_t)Q * 3 * sizeof(float), &fail);
    int *slbl = up(ar, q->spec_lbl, (size_t)Q * sizeof(int), &fail);
    int *soff = up(ar, q->spec_off, (size_t)(n + 1) * sizeof(int), &fail);
    if (fail == 2) return nesf_fail(err, NESF_ERR_BACKEND, "backend failure uploading a batch");
    if (fail) return nesf_fail(err, NESF_ERR_NOMEM, "out of backend memory");
    if ((rc = nesf_enc_forward(m, &g, 1, dropout_seed, err))) return rc;
    float *z = g.z;

    /* decoders */
    nesf_mlp_acts a_len, a_ang, a_fp, a_fs;
    nesf_mlp_in in_lat = {.rows = n, .x = z, .ldx = L};
    nesf_mlp_in in_fp = {.rows = P, .S = n, .off = poff, .z = z, .ldz = L, .xyz = pxyz};
    nesf_mlp_in in_fs = {.rows = Q, .S = n, .off = soff, .z = z, .ldz = L, .xyz = sxyz};
    rc = nesf_mlp_forward_train(net, &mlp[NESF_DEC_LENGTH], &in_lat, 0, &a_len);
    if (!rc) rc = nesf_mlp_forward_train(net, &mlp[NESF_DEC_ANGLE], &in_lat, 0, &a_ang);
    if (!rc) rc = nesf_mlp_forward_train(net, &mlp[NESF_DEC_POSITION], &in_fp, 0, &a_fp);
    if (!rc) rc = nesf_mlp_forward_train(net, &mlp[NESF_DEC_SPECIES], &in_fs, 0, &a_fs);
    float *tl = nesf_arena_floats(ar, (size_t)n * 3), *ta = nesf_arena_floats(ar, (size_t)n * 3);
    float *dz = nesf_arena_floats(ar, (size_t)n * L), *dhead = nesf_arena_floats(ar, (size_t)n * headw);
    float *dpool = nesf_arena_floats(ar, (size_t)n * c->enc_mix_out);
    float *dmix = nesf_arena_floats(ar, (size_t)N * c->enc_mix_out);
    float *dmixin = nesf_arena_floats(ar, (size_t)N * mixw);
    if (rc || !tl || !ta || !dz || !dhead || !dpool || !dmix || !dmixin)
        return nesf_fail(err, NESF_ERR_NOMEM, "out of backend memory");
    nesf_losses lo = losses(t, &g, &a_len, &a_ang, &a_fp, &a_fs, ptgt, slbl, tl, ta, P, Q);

    /* backward */
    be->ops->fill(be, net->grads, net->nparams, 0);
    be->ops->fill(be, dz, (size_t)n * L, 0);
    be->ops->fill(be, dhead, (size_t)n * headw, 0);
    be->ops->fill(be, dmix, (size_t)N * c->enc_mix_out, 0);
    be->ops->fill(be, dmixin, (size_t)N * mixw, 0);
    rc = nesf_mlp_backward(net, &mlp[NESF_DEC_POSITION], &in_fp, &a_fp, a_fp.out, 3, NULL, 0, dz, L);
    if (!rc) rc = nesf_mlp_backward(net, &mlp[NESF_DEC_SPECIES], &in_fs, &a_fs, a_fs.out, A, NULL, 0, dz, L);
    if (!rc) rc = nesf_mlp_backward(net, &mlp[NESF_DEC_LENGTH], &in_lat, &a_len, a_len.out, 3, dz, L, NULL, 0);
    if (!rc) rc = nesf_mlp_backward(net, &mlp[NESF_DEC_ANGLE], &in_lat, &a_ang, a_ang.out, 3, dz, L, NULL, 0);
    if (!rc) rc = enc_backward(m, &g, dz, dhead, dpool, dmix, dmixin);
    if (rc) return nesf_fail(err, rc, "out of backend memory in backward");
    if ((rc = be->ops->sync(be))) return nesf_fail(err, rc, "backend failure in the training step");
    if (!isfinite(lo.total)) return nesf_fail(err, NESF_ERR_INVALID, "training loss is not finite");
    if (out) *out = lo;
    return NESF_OK;
}

int nesf_trainer_step(nesf_trainer *t, float lr, nesf_error *err)
{
    nesf_net *net = &t->m->net;
    nesf_backend *be = net->be;
    t->t++;
    be->ops->adam(be, net->nparams, net->params, net->grads, t->adam_m, t->adam_v, lr, 0.9f, 0.999f,
                  1e-8f, (int)t->t);
    int rc = be->ops->sync(be);
    return rc ? nesf_fail(err, rc, "backend failure in the Adam step") : NESF_OK;
}

/* ---- validation loss (inference mode, host arithmetic) ---- */

int nesf_trainer_eval_loss(nesf_trainer *t, nesf_structure *const *s, int n,
                           const nesf_queries *q, nesf_losses *out, nesf_error *err)
{
    nesf_model *m = t->m;
    const int L = m->cfg.latent, A = m->A, P = q->pos_off[n], Q = q->spec_off[n];
    int rc = nesf_model_refold(m, err);
    if (rc) return rc;
    float *z = malloc((size_t)n * L * sizeof *z), *len = malloc((size_t)n * 6 * sizeof *len);
    float *fp = malloc(((size_t)P * 3 + 1) * sizeof *fp), *fs = malloc(((size_t)Q * A + 1) * sizeof *fs);
    nesf_enc_batch hb = {0};
    if (!z || !len || !fp || !fs) rc = nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    if (!rc) rc = nesf_model_encode(m, s, n, z, err);
    if (!rc) rc = nesf_model_lattice(m, n, z, len, len + 3 * n, err);
    if (!rc) rc = nesf_model_position_field_host(m, n, z, q->pos_off, q->pos_xyz, fp, err);
    if (!rc) rc = nesf_model_species_field_host(m, n, z, q->spec_off, q->spec_xyz, fs, err);
    if (!rc) rc = nesf_enc_batch_build(m, s, n, &hb, err);
    if (!rc) {
        nesf_losses lo = {0};
        double acc = 0;
        for (size_t i = 0; i < (size_t)P * 3; i++) acc += ((double)fp[i] - q->pos_tgt[i]) * (fp[i] - q->pos_tgt[i]);
        lo.pos = P ? acc / (3.0 * P) : 0;
        acc = 0;
        for (int r = 0; r < Q; r++) {
            const float *l = fs + (size_t)r * A;
            double mx = l[0], se = 0;
            for (int k = 1; k < A; k++) mx = l[k] > mx ? l[k] : mx;
            for (int k = 0; k < A; k++) se += exp(l[k] - mx);
            acc += mx + log(se) - l[q->spec_lbl[r]];
        }
        lo.spec = Q ? acc / Q : 0;
        double al = 0, aa = 0;
        for (int i = 0; i < n; i++)
            for (int k = 0; k < 3; k++) {
                double dl = len[3 * i + k] - hb.latf[6 * i + k], da = len[3 * n + 3 * i + k] - hb.latf[6 * i + 3 + k];
                al += dl * dl;
                aa += da * da;
            }
        lo.len = al / (3.0 * n);
        lo.ang = aa / (3.0 * n);
        lo.total = t->c.w_pos * lo.pos + t->c.w_spec * lo.spec + t->c.w_len * lo.len + t->c.w_ang * lo.ang;
        lo.pos_queries = P;
        lo.spec_queries = Q;
        *out = lo;
    }
    nesf_enc_batch_free(&hb);
    free(z);
    free(len);
    free(fp);
    free(fs);
    return rc;
}

/* ---- named access ---- */

static const nesf_tensor_info *tensor(const nesf_model *m, const char *name)
{
    for (int i = 0; i < m->ntensors; i++)
        if (!strcmp(m->tensors[i].name, name)) return &m->tensors[i];
    return NULL;
}

static int fetch(nesf_trainer *t, const char *name, const float *base, float *dst, nesf_error *err)
{
    const nesf_tensor_info *ti = tensor(t->m, name);
    if (!ti || ti->buffer) return nesf_fail(err, NESF_ERR_NOTFOUND, "no parameter named '%s'", name);
    size_t n = (size_t)ti->shape[0] * (ti->ndim == 2 ? (size_t)ti->shape[1] : 1);
    nesf_backend *be = t->m->net.be;
    int rc = be->ops->download(be, dst, base + ti->off, n * sizeof(float));
    if (!rc) rc = be->ops->sync(be);
    if (rc) nesf_fail(err, rc, "backend failure reading '%s'", name);
    return rc;
}

int nesf_trainer_grad(nesf_trainer *t, const char *name, float *dst, nesf_error *err)
{
    return fetch(t, name, t->m->net.grads, dst, err);
}

int nesf_trainer_param(nesf_trainer *t, const char *name, float *dst, nesf_error *err)
{
    return fetch(t, name, t->m->net.params, dst, err);
}

/* ---- checkpoints ---- */

int nesf_trainer_save(nesf_trainer *t, const nesf_train_state *st, const char *path,
                      nesf_error *err)
{
    nesf_net *net = &t->m->net;
    nesf_backend *be = net->be;
    float *mh = malloc(net->nparams * sizeof *mh), *vh = malloc(net->nparams * sizeof *vh);
    nesf_st_writer *w = nesf_st_writer_new();
    char *tc = nesf_train_config_to_json(&t->c);
    char state[512];
    int rc = NESF_OK;
    if (!mh || !vh || !w || !tc) {
        rc = nesf_fail(err, NESF_ERR_NOMEM, "out of memory writing a checkpoint");
        goto out;
    }
    if ((rc = be->ops->download(be, mh, t->adam_m, net->nparams * sizeof *mh)) ||
        (rc = be->ops->download(be, vh, t->adam_v, net->nparams * sizeof *vh)) ||
        (rc = be->ops->sync(be))) {
        nesf_fail(err, rc, "backend failed downloading the optimiser state");
        goto out;
    }
    int64_t shape[1] = {(int64_t)net->nparams};
    snprintf(state, sizeof state,
             "{\"epoch\":%d,\"batch\":%d,\"step\":%ld,\"adam_t\":%ld,\"best_val\":%.17g,"
             "\"best_epoch\":%d,\"seconds\":%.3f,\"acc_loss\":%.17g}",
             st->epoch, st->batch, st->step, t->t, isfinite(st->best_val) ? st->best_val : 1e300,
             st->best_epoch, st->seconds, st->acc_loss);
    rc = nesf_st_writer_add(w, "trainer.adam_m", NESF_ST_F32, 1, shape, mh, err);
    if (!rc) rc = nesf_st_writer_add(w, "trainer.adam_v", NESF_ST_F32, 1, shape, vh, err);
    if (!rc) rc = nesf_st_writer_meta(w, "train_state", state, err);
    if (!rc) rc = nesf_model_write(t->m, w, path, tc, err);
out:
    free(mh);
    free(vh);
    free(tc);
    nesf_st_writer_free(w);
    return rc;
}

int nesf_trainer_load(nesf_trainer *t, nesf_train_state *st, const char *path, nesf_error *err)
{
    nesf_net *net = &t->m->net;
    nesf_backend *be = net->be;
    nesf_st *f;
    int rc = nesf_st_read(path, &f, err);
    if (rc) return rc;
    float *mh = malloc(net->nparams * sizeof *mh), *vh = malloc(net->nparams * sizeof *vh);
    int64_t shape[1] = {(int64_t)net->nparams};
    const char *state = nesf_st_meta(f, "train_state");
    if (!mh || !vh) rc = nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    if (!rc && !state) rc = nesf_fail(err, NESF_ERR_FORMAT, "not a checkpoint (no train_state)");
    if (!rc) rc = nesf_st_get_f32(f, "trainer.adam_m", 1, shape, mh, err);
    if (!rc) rc = nesf_st_get_f32(f, "trainer.adam_v", 1, shape, vh, err);
    if (!rc) {
        json_error_t je;
        json_t *o = json_loads(state, 0, &je);
        json_int_t ep, bt, step, at, be_ep;
        double bv, secs, acc;
        if (!o || json_unpack(o, "{s:I, s:I, s:I, s:I, s:F, s:I, s:F, s:F}", "epoch", &ep, "batch", &bt,
                              "step", &step, "adam_t", &at, "best_val", &bv, "best_epoch", &be_ep,
                              "seconds", &secs, "acc_loss", &acc)) {
            rc = nesf_fail(err, NESF_ERR_FORMAT, "bad train_state in checkpoint");
        } else {
            st->epoch = (int)ep;
            st->batch = (int)bt;
            st->acc_loss = acc;
            st->step = (long)step;
            st->best_val = bv >= 1e300 ? INFINITY : bv;
            st->best_epoch = (int)be_ep;
            st->seconds = secs;
            t->t = (long)at;
        }
        json_decref(o);
    }
    if (!rc) {
        if ((rc = be->ops->upload(be, t->adam_m, mh, net->nparams * sizeof *mh)) ||
            (rc = be->ops->upload(be, t->adam_v, vh, net->nparams * sizeof *vh)) ||
            (rc = be->ops->sync(be)))
            nesf_fail(err, rc, "backend failed uploading the optimiser state");
    }
    free(mh);
    free(vh);
    nesf_st_free(f);
    if (rc) nesf_error_prefix(err, "%s: ", path);
    return rc;
}

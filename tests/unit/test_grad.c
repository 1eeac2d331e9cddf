/* Finite-difference checks of the hand-written backward: each layer kind of
 * the MLP block on its own (Linear, ReLU, BatchNorm in training mode,
 * Dropout, xyz concatenation, the grouped first layer), the max-pool and
 * losses, then the whole NeSF loss through nesf_trainer_forward_backward.
 *
 * Gradients are compared as vectors over sampled entries: |g_fd - g| /
 * |g_fd, g| must be small.  The networks are piecewise linear (ReLU), so a
 * perturbation can cross a kink; the left and right difference quotients
 * then disagree and that entry says nothing about the backward: it is
 * skipped, and at most a fifth of the entries may be skipped. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "backend.h"
#include "mlp.h"
#include "model_internal.h"
#include "train.h"

static nesf_backend *be;

static int setup(void **state)
{
    (void)state;
    return nesf_backend_cpu_create(1, &be, NULL);
}

static int teardown(void **state)
{
    (void)state;
    nesf_backend_free(be);
    return 0;
}

static uint64_t rs = 12345;
static float urand(void)
{
    rs = rs * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rs >> 40) * (1.0 / 16777216.0)) * 2 - 1;
}

/* vector relative error between two gradient estimates */
static double rel_err_floor(const double *a, const double *b, int n, double floor)
{
    double d = 0, s = 0;
    for (int i = 0; i < n; i++) {
        d += (a[i] - b[i]) * (a[i] - b[i]);
        s += a[i] * a[i] + b[i] * b[i];
    }
    return sqrt(d) / fmax(sqrt(s), floor);
}

static double rel_err(const double *a, const double *b, int n) { return rel_err_floor(a, b, n, 1e-12); }

/* Central difference of f at the current value of *p, or NAN at a kink
 * (left and right quotients disagree). */
typedef double (*lossfn)(void *ctx);
static double fd(lossfn f, void *ctx, double f0, float *p, float h)
{
    float save = *p;
    *p = save + h;
    double fp = f(ctx);
    *p = save - h;
    double fm = f(ctx);
    *p = save;
    double r = (fp - f0) / h, l = (f0 - fm) / h;
    if (fabs(r - l) > 1e-2 * (fabs(r) + fabs(l)) + 1e-3) return NAN;
    return (r + l) / 2;
}

/* Compares analytic gradients ga with difference quotients gf (NAN =
 * skipped) and returns the relative error of the kept entries. */
static double compare(const char *what, const double *ga, const double *gf, int n, double tol)
{
    double a[1024], b[1024];
    int k = 0;
    for (int i = 0; i < n && k < 1024; i++)
        if (!isnan(gf[i])) {
            a[k] = ga[i];
            b[k++] = gf[i];
        }
    double e = rel_err(a, b, k);
    print_message("  %-28s %4d checked, %3d at kinks, rel err %.2e\n", what, k, n - k, e);
    assert_true(k >= n - n / 5);
    assert_true(e < tol);
    return e;
}

/* ---- one MLP with a random linear loss sum(out * R) ---- */

typedef struct {
    nesf_net net;
    nesf_mlp mlp;
    nesf_mlp_in in;
    float *x, *xyz, *z, *R;
    int *off;
    int rows, S, grouped;
} mlp_case;

static double mlp_loss(mlp_case *c, nesf_mlp_acts *acts)
{
    nesf_arena_reset(&c->net.arena);
    assert_int_equal(nesf_mlp_forward_train(&c->net, &c->mlp, &c->in, 77, acts), NESF_OK);
    const int out = c->mlp.L[c->mlp.n - 1].out;
    double l = 0;
    for (int i = 0; i < c->rows * out; i++) l += (double)acts->out[i] * c->R[i];
    return l;
}

static double mlp_loss_cb(void *ctx)
{
    nesf_mlp_acts acts;
    return mlp_loss(ctx, &acts);
}

/* fourier > 0 needs grouped (mlp.h: the MLP makes those columns itself) */
static void check_mlp(int n, const int *widths, int xyz_layers, int fourier, int bn, int dropout,
                      int grouped)
{
    mlp_case c = {0};
    size_t np = 0, nb = 0;
    nesf_xyz_cols q = {xyz_layers, fourier, 3.0f};
    nesf_mlp_layout(&c.mlp, "t", n, widths, &q, bn, dropout, &np, &nb);
    c.net.be = be;
    c.net.nparams = np;
    c.net.nbuffers = nb;
    c.net.dropout = 0.3f;
    c.net.bn_momentum = 0.1f;
    c.net.bn_eps = 1e-5f;
    c.net.params = calloc(np, sizeof(float));
    c.net.grads = calloc(np, sizeof(float));
    c.net.buffers = calloc(nb + 1, sizeof(float));
    nesf_arena_init(&c.net.arena, be);
    for (size_t i = 0; i < np; i++) c.net.params[i] = urand() * 0.6f;
    for (int l = 0; l < n; l++)
        if (c.mlp.L[l].bn)
            for (int i = 0; i < c.mlp.L[l].out; i++) c.net.params[c.mlp.L[l].gamma + i] = 1 + 0.3f * urand();
    c.rows = 23;
    c.S = 4;
    int feat0 = widths[0];
    c.xyz = malloc(sizeof(float) * 3 * c.rows);
    for (int i = 0; i < 3 * c.rows; i++) c.xyz[i] = 2 * urand();
    c.R = malloc(sizeof(float) * c.rows * widths[n]);
    for (int i = 0; i < c.rows * widths[n]; i++) c.R[i] = urand();
    int off[5] = {0, 7, 7, 15, 23};  /* includes an empty group */
    c.off = off;
    if (grouped) {
        c.z = malloc(sizeof(float) * c.S * feat0);
        for (int i = 0; i < c.S * feat0; i++) c.z[i] = urand();
        c.in = (nesf_mlp_in){.rows = c.rows, .S = c.S, .off = c.off, .z = c.z, .ldz = feat0, .xyz = c.xyz};
    } else {
        int ld = feat0 + (xyz_layers ? 3 : 0);
        c.x = malloc(sizeof(float) * c.rows * ld);
        for (int r = 0; r < c.rows; r++)
            for (int k = 0; k < ld; k++)
                c.x[r * ld + k] = k < feat0 ? urand() : c.xyz[r * 3 + k - feat0];
        c.in = (nesf_mlp_in){.rows = c.rows, .x = c.x, .ldx = ld, .xyz = c.xyz};
    }

    nesf_mlp_acts acts;
    const double f0 = mlp_loss(&c, &acts);
    const int out = widths[n];
    float *dout = malloc(sizeof(float) * c.rows * out);
    memcpy(dout, c.R, sizeof(float) * c.rows * out);
    int inw = grouped ? c.S * feat0 : c.rows * feat0;
    float *din = calloc((size_t)inw, sizeof(float));
    memset(c.net.grads, 0, np * sizeof(float));
    int ldin = grouped ? feat0 : feat0;
    assert_int_equal(nesf_mlp_backward(&c.net, &c.mlp, &c.in, &acts, dout, out, grouped ? NULL : din, ldin,
                                       grouped ? din : NULL, ldin), NESF_OK);

    /* parameters: up to K entries spread over all tensors */
    enum { K = 400 };
    double *ga = malloc(sizeof(double) * K), *gf = malloc(sizeof(double) * K);
    int k = 0;
    const float h = 1e-3f;
    for (size_t i = 0; i < np && k < K; i += 1 + np / K, k++) {
        gf[k] = fd(mlp_loss_cb, &c, f0, &c.net.params[i], h);
        ga[k] = c.net.grads[i];
    }
    compare("parameters", ga, gf, k, 1e-3);

    /* inputs (or the grouped latents) */
    float *xin = grouped ? c.z : c.x;
    int ld = grouped ? feat0 : c.in.ldx;
    k = 0;
    int nrow = grouped ? c.S : c.rows;
    for (int r = 0; r < nrow && k < K; r++)
        for (int j = 0; j < feat0 && k < K; j++, k++) {
            gf[k] = fd(mlp_loss_cb, &c, f0, &xin[r * ld + j], h);
            ga[k] = din[r * feat0 + j];
        }
    compare(grouped ? "latent inputs" : "inputs", ga, gf, k, 1e-3);

    nesf_arena_release(&c.net.arena);
    free(c.net.params); free(c.net.grads); free(c.net.buffers);
    free(c.x); free(c.z); free(c.xyz); free(c.R); free(dout); free(din); free(ga); free(gf);
}

static void test_linear_relu(void **s) { (void)s; check_mlp(3, (int[]){5, 7, 6, 4}, 0, 0, 0, 0, 0); }
static void test_batchnorm(void **s) { (void)s; check_mlp(3, (int[]){5, 7, 6, 4}, 0, 0, 1, 0, 0); }
static void test_dropout(void **s) { (void)s; check_mlp(3, (int[]){5, 9, 8, 4}, 0, 0, 1, 1, 0); }
static void test_xyz_concat(void **s) { (void)s; check_mlp(4, (int[]){5, 7, 6, 6, 3}, 3, 0, 1, 0, 0); }
static void test_grouped_first_layer(void **s) { (void)s; check_mlp(4, (int[]){6, 7, 6, 5, 3}, 3, 0, 1, 0, 1); }
static void test_grouped_fourier(void **s) { (void)s; check_mlp(4, (int[]){6, 7, 6, 5, 3}, 3, 2, 1, 0, 1); }

/* Fourier columns with an ungrouped first layer are refused, not read from x */
static void test_fourier_needs_groups(void **s)
{
    (void)s;
    nesf_mlp m;
    size_t np = 0, nb = 0;
    nesf_mlp_layout(&m, "t", 2, (int[]){4, 5, 3}, &(nesf_xyz_cols){1, 2, 4.0f}, 0, 0, &np, &nb);
    assert_int_equal(m.L[0].extra, 15);
    nesf_net net = {.be = be, .nparams = np, .nbuffers = nb};
    net.params = calloc(np, sizeof(float));
    net.grads = calloc(np, sizeof(float));
    nesf_arena_init(&net.arena, be);
    float x[2 * 7] = {0}, xyz[2 * 3] = {0};
    nesf_mlp_in in = {.rows = 2, .x = x, .ldx = 7, .xyz = xyz};
    nesf_mlp_acts acts;
    assert_int_equal(nesf_mlp_forward_train(&net, &m, &in, 1, &acts), NESF_ERR_INVALID);
    assert_null(nesf_mlp_forward_infer(&net, &m, &in));
    nesf_arena_release(&net.arena);
    free(net.params);
    free(net.grads);
}

/* ---- the whole loss ---- */

static nesf_structure *rand_structure(int n, const int *zs, int nz)
{
    nesf_structure *s = nesf_structure_new(n);
    nesf_cellpar p = {3 + urand(), 3.5 + urand(), 4 + urand(), 80 + 5 * urand(), 95 + 5 * urand(), 88 + 5 * urand()};
    nesf_lattice_from_params(&p, &s->lat, NULL);
    for (int i = 0; i < n; i++) {
        double f[3] = {0.5 + 0.45 * urand(), 0.5 + 0.45 * urand(), 0.5 + 0.45 * urand()};
        nesf_structure_add_site(s, zs[(i * 7 + n) % nz], f, NULL);
    }
    return s;
}

typedef struct {
    nesf_trainer *t;
    nesf_structure **s;
    nesf_queries *q;
} whole_ctx;

static double whole_loss(void *ctx)
{
    whole_ctx *w = ctx;
    nesf_losses l;
    assert_int_equal(nesf_trainer_forward_backward(w->t, w->s, 3, w->q, 5, &l, NULL), NESF_OK);
    return l.total;
}

static void test_whole_loss(void **st)
{
    (void)st;
    nesf_model_config cfg;
    nesf_model_config_paper(&cfg);
    cfg.latent = 12;
    cfg.n_enc_pos_hidden = 1; cfg.enc_pos_hidden[0] = 10; cfg.enc_pos_out = 9;
    cfg.n_enc_species_hidden = 1; cfg.enc_species_hidden[0] = 8; cfg.enc_species_out = 7;
    cfg.enc_mix_out = 16;
    cfg.n_enc_head_hidden = 2; cfg.enc_head_hidden[0] = 14; cfg.enc_head_hidden[1] = 13;
    cfg.n_lattice_hidden = 1; cfg.lattice_hidden[0] = 6;
    cfg.n_pos_hidden = 3; cfg.pos_hidden[0] = 11; cfg.pos_hidden[1] = 10; cfg.pos_hidden[2] = 9;
    cfg.n_spec_hidden = 2; cfg.spec_hidden[0] = 10; cfg.spec_hidden[1] = 8;
    int zs[4] = {8, 26, 29, 56};
    float lo[3] = {0, 0, 0}, hi[3] = {4, 4, 5};
    nesf_model *m;
    nesf_error err;
    assert_int_equal(nesf_model_create(&cfg, zs, 4, lo, hi, be, 3, &m, &err), NESF_OK);
    nesf_train_config tc;
    nesf_train_config_paper(&tc);
    tc.sampling.global_fraction = 0.05f;
    tc.sampling.species_fraction = 0.1f;
    nesf_trainer *t;
    assert_int_equal(nesf_trainer_create(m, &tc, &t, &err), NESF_OK);
    nesf_structure *s[3] = {rand_structure(2, zs, 4), rand_structure(5, zs, 4), rand_structure(3, zs, 4)};
    nesf_queries q;
    assert_int_equal(nesf_trainer_sample(t, s, 3, 9, &q, &err), NESF_OK);
    nesf_losses l0;
    assert_int_equal(nesf_trainer_forward_backward(t, s, 3, &q, 5, &l0, &err), NESF_OK);
    print_message("  loss %.4f (pos %.4f spec %.4f len %.4f ang %.4f), %ld+%ld queries\n", l0.total, l0.pos,
                  l0.spec, l0.len, l0.ang, l0.pos_queries, l0.spec_queries);
    nesf_net *net = &m->net;
    float *g = malloc(net->nparams * sizeof *g);
    memcpy(g, net->grads, net->nparams * sizeof *g);
    /* every parameter tensor, eight entries each.  The loss is O(10) in
     * float32, so quotients carry ~1e-2 absolute noise: each tensor must
     * agree to 3e-2 (a wrong backward is off by O(1)), all of them together
     * to 5e-3. */
    whole_ctx wc = {t, s, &q};
    const double f0 = whole_loss(&wc);
    int ntot = 0, nkink = 0;
    double *ga = malloc(sizeof(double) * 2048), *gf = malloc(sizeof(double) * 2048);
    for (int ti = 0; ti < m->ntensors; ti++) {
        const nesf_tensor_info *T = &m->tensors[ti];
        if (T->buffer) continue;
        size_t n = (size_t)T->shape[0] * (T->ndim == 2 ? (size_t)T->shape[1] : 1);
        double ta[8], tf[8];
        int k = 0;
        for (size_t i = 0; i < n && k < 8; i += 1 + n / 8) {
            double v = fd(whole_loss, &wc, f0, net->params + T->off + i, 1e-3f);
            if (isnan(v)) {
                nkink++;
                continue;
            }
            ta[k] = ga[ntot] = g[T->off + i];
            tf[k++] = gf[ntot++] = v;
        }
        /* floor: a bias feeding BatchNorm has a true gradient of 0 */
        double e = rel_err_floor(ta, tf, k, 0.1);
        if (e > 3e-2) print_message("  %s: rel err %.2e\n", T->name, e);
        assert_true(e < 3e-2);
    }
    double e = rel_err(ga, gf, ntot);
    print_message("  whole loss: %d entries of every tensor, %d at kinks, rel err %.2e\n", ntot, nkink, e);
    assert_true(nkink < ntot / 4);
    assert_true(e < 5e-3);
    free(ga);
    free(gf);
    free(g);
    nesf_queries_free(&q);
    for (int i = 0; i < 3; i++) nesf_structure_free(s[i]);
    nesf_trainer_free(t);
    nesf_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_linear_relu),
        cmocka_unit_test(test_batchnorm),
        cmocka_unit_test(test_dropout),
        cmocka_unit_test(test_xyz_concat),
        cmocka_unit_test(test_grouped_first_layer),
        cmocka_unit_test(test_grouped_fourier),
        cmocka_unit_test(test_fourier_needs_groups),
        cmocka_unit_test(test_whole_loss),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

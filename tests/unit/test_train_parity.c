/* One training step against the independent PyTorch reference
 * (tests/parity/make_fixtures.py): losses in train and inference mode,
 * the gradient of every parameter, BatchNorm running statistics after the
 * step, and one Adam update, on identical weights, queries and dropout
 * masks.  Tolerance per array (tests/parity/README.md):
 * max|c - ref| <= tol * max(max|ref|, 1e-3). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <unistd.h>

#include "model.h"
#include "safetensors.h"
#include "train.h"

static char fix_dir[4096];

static const nesf_st_tensor *get(const nesf_st *st, const char *name)
{
    const nesf_st_tensor *t = nesf_st_find(st, name);
    if (!t) fail_msg("fixture tensor %s missing", name);
    return t;
}

static size_t numel(const nesf_st_tensor *t)
{
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= (size_t)t->shape[i];
    return n;
}

static void *raw(const nesf_st *st, const char *name, size_t *n)
{
    const nesf_st_tensor *t = get(st, name);
    void *p = malloc(t->nbytes + 8);
    memcpy(p, t->data, t->nbytes);
    if (n) *n = numel(t);
    return p;
}

static float *f32(const nesf_st *st, const char *name, size_t *n)
{
    const nesf_st_tensor *t = get(st, name);
    float *p = malloc(numel(t) * sizeof *p + 8);
    assert_int_equal(nesf_st_get_f32(st, name, t->ndim, t->shape, p, NULL), NESF_OK);
    if (n) *n = numel(t);
    return p;
}

static double scaled_err(const float *c, const float *ref, size_t n)
{
    double d = 0, s = 1e-3;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)c[i] - ref[i]));
        s = fmax(s, fabs((double)ref[i]));
    }
    return d / s;
}

static void check_scalar(const char *what, double c, const nesf_st *io, const char *name, double tol)
{
    float ref = *f32(io, name, NULL);
    double e = fabs(c - ref) / fmax(fabs(ref), 1e-3);
    print_message("  %-22s C %.7g  torch %.7g  err %.1e\n", what, c, ref, e);
    assert_true(e <= tol);
}

static void test_train_step(void **state)
{
    (void)state;
    char path[4200];
    nesf_error err = {0};
    nesf_backend *be;
    assert_int_equal(nesf_backend_cpu_create(1, &be, &err), NESF_OK);
    nesf_model *m;
    snprintf(path, sizeof path, "%s/train_step.safetensors", fix_dir);
    if (nesf_model_load(path, be, &m, &err)) fail_msg("%s", err.msg);
    nesf_st *io;
    snprintf(path, sizeof path, "%s/train_step_io.safetensors", fix_dir);
    assert_int_equal(nesf_st_read(path, &io, &err), NESF_OK);

    /* structures */
    size_t nl, nat;
    double *lat = raw(io, "lattice", &nl), *cart = raw(io, "atom_cart", &nat);
    int32_t *az = raw(io, "atom_z", NULL), *aoff = raw(io, "atom_off", NULL);
    const int S = (int)(nl / 9);
    nesf_structure *s[16];
    for (int i = 0; i < S; i++) {
        s[i] = nesf_structure_new(4);
        memcpy(s[i]->lat.m, lat + 9 * i, sizeof s[i]->lat.m);
        for (int a = aoff[i]; a < aoff[i + 1]; a++)
            assert_int_equal(nesf_structure_add_site_cart(s[i], az[a], cart + 3 * a, NULL), NESF_OK);
    }
    /* queries exactly as the reference used them */
    nesf_queries q = {.S = S};
    q.pos_off = raw(io, "pos_off", NULL);
    q.spec_off = raw(io, "spec_off", NULL);
    q.pos_xyz = f32(io, "pos_xyz", NULL);
    q.pos_tgt = f32(io, "pos_target", NULL);
    q.spec_xyz = f32(io, "spec_xyz", NULL);
    q.spec_lbl = raw(io, "spec_label", NULL);
    int64_t *seed = raw(io, "dropout_seed", NULL);

    nesf_train_config tc;
    nesf_train_config_paper(&tc);
    nesf_trainer *t;
    assert_int_equal(nesf_trainer_create(m, &tc, &t, &err), NESF_OK);

    /* inference-mode loss first: the step changes the running statistics */
    nesf_losses el;
    if (nesf_trainer_eval_loss(t, s, S, &q, &el, &err)) fail_msg("%s", err.msg);
    check_scalar("eval position", el.pos, io, "eval_loss.position", 1e-4);
    check_scalar("eval species", el.spec, io, "eval_loss.species", 1e-4);
    check_scalar("eval length", el.len, io, "eval_loss.length", 1e-4);
    check_scalar("eval angle", el.ang, io, "eval_loss.angle", 1e-4);
    check_scalar("eval total", el.total, io, "eval_loss.total", 1e-4);

    nesf_losses l;
    if (nesf_trainer_forward_backward(t, s, S, &q, (uint64_t)*seed, &l, &err)) fail_msg("%s", err.msg);
    check_scalar("train position", l.pos, io, "loss.position", 1e-4);
    check_scalar("train species", l.spec, io, "loss.species", 1e-4);
    check_scalar("train length", l.len, io, "loss.length", 1e-4);
    check_scalar("train angle", l.ang, io, "loss.angle", 1e-4);
    check_scalar("train total", l.total, io, "loss.total", 1e-4);

    /* every gradient and running statistic the fixture holds */
    int ngrad = 0, nstat = 0;
    double worst = 0;
    char worst_name[128] = "";
    for (int i = 0; i < nesf_st_count(io); i++) {
        const nesf_st_tensor *ft = nesf_st_at(io, i);
        if (strncmp(ft->name, "grad.", 5)) continue;
        size_t n = numel(ft);
        float *ref = f32(io, ft->name, NULL), *c = malloc(n * sizeof *c);
        double e = -1, tol = 0;
        {
            assert_int_equal(nesf_trainer_grad(t, ft->name + 5, c, &err), NESF_OK);
            e = scaled_err(c, ref, n);
            tol = 1e-3;
            ngrad++;
        }
        if (e >= 0) {
            if (e > worst) {
                worst = e;
                snprintf(worst_name, sizeof worst_name, "%s", ft->name);
            }
            if (e > tol) print_message("  %s: err %.2e\n", ft->name, e);
            assert_true(e <= tol);
        }
        free(ref);
        free(c);
    }
    print_message("  %d parameter gradients, worst %.2e (%s)\n", ngrad, worst, worst_name);
    assert_true(ngrad > 20);

    /* running statistics after the step: saved into a model file and read back */
    snprintf(path, sizeof path, "%s/nesf-train-parity-%d.safetensors", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid());
    assert_int_equal(nesf_model_save(m, path, NULL, &err), NESF_OK);
    nesf_st *saved;
    assert_int_equal(nesf_st_read(path, &saved, &err), NESF_OK);
    worst = 0;
    for (int i = 0; i < nesf_st_count(io); i++) {
        const nesf_st_tensor *ft = nesf_st_at(io, i);
        if (strncmp(ft->name, "after.", 6)) continue;
        size_t n = numel(ft);
        float *ref = f32(io, ft->name, NULL), *c = f32(saved, ft->name + 6, NULL);
        double e = scaled_err(c, ref, n);
        worst = fmax(worst, e);
        assert_true(e <= 1e-4);
        nstat++;
        free(ref);
        free(c);
    }
    print_message("  %d BN running statistics after the step, worst %.2e\n", nstat, worst);
    assert_true(nstat > 4);
    nesf_st_free(saved);
    remove(path);

    /* one Adam step from zero moments.  The first step moves each weight
     * by lr * g / (|g| + eps): for a tensor whose true gradient is zero (a
     * bias feeding BatchNorm, gradient ~1e-8 of rounding noise) that is
     * noise in both implementations, so such tensors are only held to
     * |update| <= lr. */
    float *before[16];
    int nb = 0;
    for (int i = 0; i < nesf_st_count(io) && nb < 16; i++) {
        const nesf_st_tensor *ft = nesf_st_at(io, i);
        if (strncmp(ft->name, "adam.", 5)) continue;
        before[nb] = malloc(numel(ft) * sizeof(float));
        assert_int_equal(nesf_trainer_param(t, ft->name + 5, before[nb++], &err), NESF_OK);
    }
    assert_int_equal(nesf_trainer_step(t, 1e-3f, &err), NESF_OK);
    nb = 0;
    int nadam = 0;
    for (int i = 0; i < nesf_st_count(io); i++) {
        const nesf_st_tensor *ft = nesf_st_at(io, i);
        if (strncmp(ft->name, "adam.", 5)) continue;
        size_t n = numel(ft);
        float *ref = f32(io, ft->name, NULL), *c = malloc(n * sizeof *c);
        assert_int_equal(nesf_trainer_param(t, ft->name + 5, c, &err), NESF_OK);
        char gname[128];
        snprintf(gname, sizeof gname, "grad.%s", ft->name + 5);
        float *g = f32(io, gname, NULL);
        /* elements with a true gradient of zero: only |update| <= lr */
        double d = 0, scale = 1e-3;
        int nzero = 0;
        for (size_t k = 0; k < n; k++) {
            if (fabs(g[k]) < 1e-6) {
                nzero++;
                assert_true(fabs((double)c[k] - before[nb][k]) <= 1.0001e-3);
                continue;
            }
            d = fmax(d, fabs((double)c[k] - ref[k]));
            scale = fmax(scale, fabs((double)ref[k]));
        }
        print_message("  Adam %-30s err %.2e (%d zero-gradient elements)\n", ft->name + 5, d / scale, nzero);
        assert_true(d / scale <= 1e-4);
        nadam++;
        free(g);
        free(before[nb++]);
        free(ref);
        free(c);
    }
    assert_true(nadam >= 1);

    for (int i = 0; i < S; i++) nesf_structure_free(s[i]);
    nesf_queries_free(&q);
    free(lat); free(cart); free(az); free(aoff); free(seed);
    nesf_trainer_free(t);
    nesf_model_free(m);
    nesf_st_free(io);
    nesf_backend_free(be);
}

int main(void)
{
    const char *root = getenv("NESF_SOURCE_ROOT");
    snprintf(fix_dir, sizeof fix_dir, "%s/tests/parity/fixtures", root ? root : ".");
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_train_step)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}

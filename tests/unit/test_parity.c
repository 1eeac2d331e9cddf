/* The C network against the independent PyTorch reference
 * (tests/parity/nesf_ref.py, fixtures from make_fixtures.py; layout and
 * tolerances in tests/parity/README.md).
 *
 * Error measure per output array: max |c - ref| / max(max |ref|, 1e-3),
 * i.e. relative to the array's scale; forward outputs, losses and BN
 * statistics must be within 1e-4, gradients within the fixture's
 * gradtol.<name> (1e-3, or 10x PyTorch's own float32 error if larger). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "backend.h"
#include "model.h"
#include "safetensors.h"
#include "train.h"

#define TOL_FWD 1e-4
#define TOL_GRAD 1e-3

static nesf_backend *be;

/* CPU by default; NESF_PARITY_BACKEND=cuda|auto checks another backend
 * against the same fixtures (on a machine with a GPU). */
static int setup(void **state)
{
    (void)state;
    nesf_error e = {0};
    const char *kind = getenv("NESF_PARITY_BACKEND");
    nesf_backend_params bp; /* NESF_CUDA_EMULATION=1 and the CUDA knobs, from the environment */
    nesf_backend_params_default(&bp);
    bp.threads = 1;
    if (nesf_backend_params_lookup(&bp, getenv, &e) ||
        nesf_backend_open(kind && *kind ? kind : "cpu", &bp, &be, &e)) {
        fprintf(stderr, "backend: %s\n", e.msg);
        return -1;
    }
    print_message("parity on backend %s (%s)\n", be->name, be->device);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    nesf_backend_free(be);
    return 0;
}

static void fixture(char *buf, size_t size, const char *name)
{
    const char *root = getenv("NESF_SOURCE_ROOT");
    snprintf(buf, size, "%s/tests/parity/fixtures/%s", root ? root : ".", name);
}

static nesf_st *load_st(const char *name)
{
    char path[1024];
    fixture(path, sizeof path, name);
    nesf_st *st = NULL;
    nesf_error e = {0};
    if (nesf_st_read(path, &st, &e)) fail_msg("%s", e.msg);
    return st;
}

static nesf_model *load_model(const char *name)
{
    char path[1024];
    fixture(path, sizeof path, name);
    nesf_model *m = NULL;
    nesf_error e = {0};
    if (nesf_model_load(path, be, &m, &e)) fail_msg("nesf_model_load %s: %s", name, e.msg);
    return m;
}

/* A fixture tensor as float32 (any float dtype), malloc'ed; *n elements. */
static float *get_f32(const nesf_st *st, const char *name, size_t *n)
{
    const nesf_st_tensor *t = nesf_st_find(st, name);
    if (!t) fail_msg("fixture lacks %s", name);
    size_t k = 1;
    for (int i = 0; i < t->ndim; i++) k *= (size_t)t->shape[i];
    float *v = malloc((k ? k : 1) * sizeof *v);
    nesf_error e = {0};
    if (nesf_st_get_f32(st, name, t->ndim, t->shape, v, &e)) fail_msg("%s", e.msg);
    if (n) *n = k;
    return v;
}

static int *get_i32(const nesf_st *st, const char *name, size_t *n)
{
    const nesf_st_tensor *t = nesf_st_find(st, name);
    if (!t || t->dtype != NESF_ST_I32) fail_msg("fixture lacks I32 %s", name);
    int *v = malloc(t->nbytes ? t->nbytes : 1);
    memcpy(v, t->data, t->nbytes);
    if (n) *n = t->nbytes / 4;
    return v;
}

static double rel_err(const float *c, const float *ref, size_t n)
{
    double num = 0, den = 1e-3;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)c[i] - ref[i]);
        if (!(d <= num)) num = d;   /* NaN propagates */
        if (fabs(ref[i]) > den) den = fabs(ref[i]);
    }
    return num / den;
}

static void check(const char *what, const float *c, const float *ref, size_t n, double tol)
{
    double r = rel_err(c, ref, n);
    if (!(r <= tol)) fail_msg("%s: relative error %.3g > %.1g", what, r, tol);
    print_message("  %-44s rel %.2e\n", what, r);
}

/* The structures of an I/O fixture, rebuilt from exact lattice and Cartesian
 * coordinates. */
static nesf_structure **structures(const nesf_st *io, int *S)
{
    const nesf_st_tensor *cart = nesf_st_find(io, "atom_cart"), *lat = nesf_st_find(io, "lattice");
    assert_non_null(cart);
    assert_non_null(lat);
    size_t no;
    int *off = get_i32(io, "atom_off", &no), *z = get_i32(io, "atom_z", NULL);
    *S = (int)no - 1;
    nesf_structure **s = calloc((size_t)*S, sizeof *s);
    for (int k = 0; k < *S; k++) {
        s[k] = nesf_structure_new(off[k + 1] - off[k]);
        memcpy(s[k]->lat.m, (const double *)lat->data + 9 * k, sizeof s[k]->lat.m);
        for (int i = off[k]; i < off[k + 1]; i++) {
            double c[3];
            memcpy(c, (const double *)cart->data + 3 * i, sizeof c);
            nesf_error e = {0};
            if (nesf_structure_add_site_cart(s[k], z[i], c, &e)) fail_msg("%s", e.msg);
        }
    }
    free(off);
    free(z);
    return s;
}

static void free_structures(nesf_structure **s, int S)
{
    for (int k = 0; k < S; k++) nesf_structure_free(s[k]);
    free(s);
}

static void check_forward(nesf_model *m, const char *io_name)
{
    nesf_st *io = load_st(io_name);
    int S;
    nesf_structure **s = structures(io, &S);
    int L = nesf_model_latent_size(m), A = nesf_model_num_species(m);
    assert_int_equal(A, 80);
    nesf_error e = {0};
    size_t nz;
    float *z_ref = get_f32(io, "z", &nz);
    assert_int_equal(nz, (size_t)S * L);

    float *z = malloc(nz * sizeof *z);
    if (nesf_model_encode(m, s, S, z, &e)) fail_msg("encode: %s", e.msg);
    check("encode (batch)", z, z_ref, nz, TOL_FWD);
    /* inference is per structure: encoding one at a time gives the same */
    for (int k = 0; k < S; k++) {
        if (nesf_model_encode(m, s + k, 1, z + (size_t)k * L, &e)) fail_msg("encode: %s", e.msg);
    }
    check("encode (one at a time)", z, z_ref, nz, TOL_FWD);

    float *len_ref = get_f32(io, "lengths", NULL), *ang_ref = get_f32(io, "angles", NULL);
    float len[3 * 64], ang[3 * 64];
    assert_true(S <= 64);
    if (nesf_model_lattice(m, S, z_ref, len, ang, &e)) fail_msg("lattice: %s", e.msg);
    check("lattice lengths", len, len_ref, 3 * (size_t)S, TOL_FWD);
    check("lattice angles", ang, ang_ref, 3 * (size_t)S, TOL_FWD);

    size_t np_, ns;
    int *poff = get_i32(io, "pos_off", NULL), *soff = get_i32(io, "spec_off", NULL);
    float *pxyz = get_f32(io, "pos_xyz", &np_), *pref = get_f32(io, "pos_out", NULL);
    float *sxyz = get_f32(io, "spec_xyz", &ns), *sref = get_f32(io, "spec_out", NULL);
    float *pout = calloc(np_, sizeof *pout), *sout = calloc(ns / 3 * A, sizeof *sout);
    if (nesf_model_position_field_host(m, S, z_ref, poff, pxyz, pout, &e))
        fail_msg("position field: %s", e.msg);
    check("position field", pout, pref, np_, TOL_FWD);
    if (nesf_model_species_field_host(m, S, z_ref, soff, sxyz, sout, &e))
        fail_msg("species field: %s", e.msg);
    check("species field", sout, sref, ns / 3 * A, TOL_FWD);

    /* the last structure alone (offsets relative to its own rows) */
    int k = S - 1, one[2] = {0, poff[S] - poff[k]}, ones[2] = {0, soff[S] - soff[k]};
    memset(pout, 0, np_ * sizeof *pout);
    if (nesf_model_position_field_host(m, 1, z_ref + (size_t)k * L, one, pxyz + 3 * (size_t)poff[k],
                                       pout, &e))
        fail_msg("position field: %s", e.msg);
    check("position field (last structure alone)", pout, pref + 3 * (size_t)poff[k],
          3 * (size_t)one[1], TOL_FWD);
    if (nesf_model_species_field_host(m, 1, z_ref + (size_t)k * L, ones, sxyz + 3 * (size_t)soff[k],
                                      sout, &e))
        fail_msg("species field: %s", e.msg);
    check("species field (last structure alone)", sout, sref + (size_t)soff[k] * A,
          (size_t)ones[1] * A, TOL_FWD);

    free(pout); free(sout); free(pxyz); free(pref); free(sxyz); free(sref); free(poff); free(soff);
    free(len_ref); free(ang_ref); free(z); free(z_ref);
    free_structures(s, S);
    nesf_st_free(io);
}

static void check_metadata(nesf_model *m, const char *weights)
{
    nesf_st *st = load_st(weights);
    assert_int_equal(nesf_model_species_z(m, 0), 1);      /* H */
    assert_int_equal(nesf_model_species_z(m, 79), 94);    /* Pu */
    assert_int_equal(nesf_model_class_of(m, 8), 6);       /* O */
    assert_int_equal(nesf_model_class_of(m, 2), -1);      /* He is not in lcs6 */
    float lo[3], hi[3], want[3];
    nesf_model_bbox(m, lo, hi);
    const char *keys[2] = {"bbox_min", "bbox_max"};
    for (int b = 0; b < 2; b++) {
        const char *v = nesf_st_meta(st, keys[b]);
        assert_int_equal(sscanf(v, "%f,%f,%f", &want[0], &want[1], &want[2]), 3);
        for (int i = 0; i < 3; i++) assert_true(fabsf((b ? hi : lo)[i] - want[i]) <= 1e-6f);
    }
    assert_int_equal(nesf_model_latent_size(m), atoi(nesf_st_meta(st, "latent_size")));
    nesf_st_free(st);
}

static void test_forward_paper(void **state)
{
    (void)state;
    nesf_model *m = load_model("forward.safetensors");
    assert_int_equal(nesf_model_param_count(m), 765465);
    assert_int_equal(nesf_model_latent_size(m), 192);
    check_metadata(m, "forward.safetensors");
    check_forward(m, "forward_io.safetensors");
    nesf_model_free(m);
}

static void test_forward_tiny(void **state)
{
    (void)state;
    nesf_model *m = load_model("forward_tiny.safetensors");
    assert_int_equal(nesf_model_param_count(m), 15321);
    const nesf_model_config *c = nesf_model_get_config(m);
    assert_int_equal(c->latent, 20);
    assert_int_equal(c->n_pos_hidden, 5);
    assert_int_equal(c->n_spec_hidden, 3);
    check_metadata(m, "forward_tiny.safetensors");
    check_forward(m, "forward_tiny_io.safetensors");
    nesf_model_free(m);
}

/* Fourier query columns (model config xyz_fourier): 21 columns into every
 * field layer but the last, the reference's own encoding of them */
static void test_forward_fourier(void **state)
{
    (void)state;
    nesf_model *m = load_model("forward_fourier.safetensors");
    assert_int_equal(nesf_model_param_count(m), 18633);
    const nesf_model_config *c = nesf_model_get_config(m);
    assert_int_equal(c->xyz_fourier, 3);
    assert_true(c->xyz_fourier_period == 6.0f);
    check_metadata(m, "forward_fourier.safetensors");
    check_forward(m, "forward_fourier_io.safetensors");
    nesf_model_free(m);
}

/* Copies a weight file to a temp path, dropping metadata key `drop` (may
 * be "") and replacing tensor X by `override.X` of io (may be NULL). */
static void copy_weights(const char *name, const char *drop, const nesf_st *io, char *out,
                         size_t size)
{
    nesf_st *st = load_st(name);
    nesf_st_writer *w = nesf_st_writer_new();
    nesf_error e = {0};
    for (int i = 0; i < nesf_st_count(st); i++) {
        const nesf_st_tensor *t = nesf_st_at(st, i), *o = NULL;
        char oname[256];
        snprintf(oname, sizeof oname, "override.%s", t->name);
        if (io && (o = nesf_st_find(io, oname))) t = o;
        assert_int_equal(nesf_st_writer_add(w, nesf_st_at(st, i)->name, t->dtype, t->ndim, t->shape,
                                            t->data, &e), 0);
    }
    const char *keys[] = {"nesf_version", "latent_size", "species", "bbox_min", "bbox_max",
                          "train_config", "model_config"};
    for (int k = 0; k < 7; k++)
        if (strcmp(keys[k], drop) && nesf_st_meta(st, keys[k]))
            assert_int_equal(nesf_st_writer_meta(w, keys[k], nesf_st_meta(st, keys[k]), &e), 0);
    snprintf(out, size, "/tmp/nesf_parity_%ld_%s%s", (long)getpid(), io ? "ovr_" : "", name);
    if (nesf_st_writer_write(w, out, &e)) fail_msg("%s", e.msg);
    nesf_st_writer_free(w);
    nesf_st_free(st);
}

/* A file without model_config is the paper network; a non-paper file
 * without it must then be refused on shapes, not misread. */
static void test_model_config_fallback(void **state)
{
    (void)state;
    char path[512];
    nesf_error e = {0};
    nesf_model *m = NULL;
    copy_weights("forward.safetensors", "model_config", NULL, path, sizeof path);
    if (nesf_model_load(path, be, &m, &e)) fail_msg("%s", e.msg);
    unlink(path);
    check_forward(m, "forward_io.safetensors");
    nesf_model_free(m);

    copy_weights("forward_tiny.safetensors", "model_config", NULL, path, sizeof path);
    m = NULL;
    int rc = nesf_model_load(path, be, &m, &e);
    unlink(path);
    assert_int_not_equal(rc, NESF_OK);
    assert_null(m);
    assert_true(e.msg[0] != 0);
}

static void test_load_errors(void **state)
{
    (void)state;
    char path[1024];
    nesf_error e = {0};
    nesf_model *m = NULL;
    fixture(path, sizeof path, "forward_io.safetensors");   /* not a weight file */
    assert_int_not_equal(nesf_model_load(path, be, &m, &e), NESF_OK);
    assert_null(m);
    assert_true(e.msg[0] != 0);
    char tmp[512];
    copy_weights("forward_tiny.safetensors", "species", NULL, tmp, sizeof tmp);
    assert_int_not_equal(nesf_model_load(tmp, be, &m, &e), NESF_OK);
    unlink(tmp);
    assert_null(m);
    assert_int_not_equal(nesf_model_load("/nonexistent.safetensors", be, &m, &e), NESF_OK);
}

static void test_encode_errors(void **state)
{
    (void)state;
    nesf_model *m = load_model("forward_tiny.safetensors");
    nesf_structure *s = nesf_structure_new(2);
    nesf_cellpar p = {4, 4, 4, 90, 90, 90};
    nesf_error e = {0};
    assert_int_equal(nesf_lattice_from_params(&p, &s->lat, &e), 0);
    float z[20];
    assert_int_equal(nesf_model_encode(m, &s, 1, z, &e), NESF_ERR_INVALID);   /* empty */
    double f0[3] = {0, 0, 0}, f1[3] = {0.5, 0.5, 0.5};
    assert_int_equal(nesf_structure_add_site(s, 8, f0, &e), 0);
    assert_int_equal(nesf_structure_add_site(s, 2, f1, &e), 0);                /* He */
    assert_int_equal(nesf_model_encode(m, &s, 1, z, &e), NESF_ERR_NOTFOUND);
    assert_non_null(strstr(e.msg, "He"));
    s->z[1] = 26;
    s->cart[4] = NAN;
    assert_int_equal(nesf_model_encode(m, &s, 1, z, &e), NESF_ERR_INVALID);
    nesf_structure_free(s);
    nesf_model_free(m);
}

/* nesf_model_save writes what nesf_model_load reads back, bit for bit. */
static void test_save_round_trip(void **state)
{
    (void)state;
    nesf_model *m = load_model("forward_tiny.safetensors");
    char path[256];
    snprintf(path, sizeof path, "/tmp/nesf_parity_%ld_saved.safetensors", (long)getpid());
    nesf_error e = {0};
    if (nesf_model_save(m, path, "{\"note\": \"round trip\"}", &e)) fail_msg("%s", e.msg);
    nesf_st *a = load_st("forward_tiny.safetensors"), *b = NULL;
    assert_int_equal(nesf_st_read(path, &b, &e), 0);
    for (int i = 0; i < nesf_st_count(a); i++) {
        const nesf_st_tensor *ta = nesf_st_at(a, i), *tb = nesf_st_find(b, ta->name);
        if (!tb) fail_msg("saved file lacks %s", ta->name);
        assert_int_equal(ta->nbytes, tb->nbytes);
        if (memcmp(ta->data, tb->data, ta->nbytes)) fail_msg("%s differs after save", ta->name);
    }
    assert_string_equal(nesf_st_meta(b, "species"), nesf_st_meta(a, "species"));
    assert_non_null(nesf_st_meta(b, "model_config"));
    nesf_st_free(a);
    nesf_st_free(b);
    nesf_model *m2 = NULL;
    if (nesf_model_load(path, be, &m2, &e)) fail_msg("%s", e.msg);
    unlink(path);
    assert_string_equal(nesf_model_train_config(m2), "{\"note\": \"round trip\"}");
    check_forward(m2, "forward_tiny_io.safetensors");
    nesf_model_free(m2);
    nesf_model_free(m);
}

static float scalar(const nesf_st *st, const char *name)
{
    float *v = get_f32(st, name, NULL), x = v[0];
    free(v);
    return x;
}

static void check_loss(const char *what, double c, float ref)
{
    double r = fabs(c - ref) / fmax(fabs(ref), 1e-3);
    if (!(r <= TOL_FWD)) fail_msg("%s: %.7g vs reference %.7g (rel %.2e)", what, c, ref, r);
    print_message("  %-44s rel %.2e\n", what, r);
}

/* One training step: losses, the gradients (all of them when all_grads),
 * BN running statistics after the step, one Adam update; and the
 * inference-mode loss before it. */
static void check_train_step(const char *weights, const char *io_name, int all_grads)
{
    nesf_st *io = load_st(io_name);
    /* the step's weights: the file, with the conditioned biases (README) */
    char wpath[512];
    copy_weights(weights, "", io, wpath, sizeof wpath);
    nesf_model *m = NULL;
    nesf_error e0 = {0};
    if (nesf_model_load(wpath, be, &m, &e0)) fail_msg("%s", e0.msg);
    nesf_st *w = NULL;
    if (nesf_st_read(wpath, &w, &e0)) fail_msg("%s", e0.msg);
    unlink(wpath);
    int S;
    nesf_structure **s = structures(io, &S);
    nesf_error e = {0};
    nesf_queries q = {0};
    q.S = S;
    q.pos_off = get_i32(io, "pos_off", NULL);
    q.spec_off = get_i32(io, "spec_off", NULL);
    q.pos_xyz = get_f32(io, "pos_xyz", NULL);
    q.pos_tgt = get_f32(io, "pos_target", NULL);
    q.spec_xyz = get_f32(io, "spec_xyz", NULL);
    q.spec_lbl = get_i32(io, "spec_label", NULL);
    int64_t seed;
    memcpy(&seed, nesf_st_find(io, "dropout_seed")->data, 8);

    nesf_train_config tc;
    nesf_train_config_paper(&tc);
    nesf_trainer *t = NULL;
    if (nesf_trainer_create(m, &tc, &t, &e)) fail_msg("%s", e.msg);

    nesf_losses l;
    if (nesf_trainer_eval_loss(t, s, S, &q, &l, &e)) fail_msg("eval loss: %s", e.msg);
    check_loss("eval loss position", l.pos, scalar(io, "eval_loss.position"));
    check_loss("eval loss species", l.spec, scalar(io, "eval_loss.species"));
    check_loss("eval loss length", l.len, scalar(io, "eval_loss.length"));
    check_loss("eval loss angle", l.ang, scalar(io, "eval_loss.angle"));
    check_loss("eval loss total", l.total, scalar(io, "eval_loss.total"));

    if (nesf_trainer_forward_backward(t, s, S, &q, (uint64_t)seed, &l, &e))
        fail_msg("forward_backward: %s", e.msg);
    check_loss("loss position", l.pos, scalar(io, "loss.position"));
    check_loss("loss species", l.spec, scalar(io, "loss.species"));
    check_loss("loss length", l.len, scalar(io, "loss.length"));
    check_loss("loss angle", l.ang, scalar(io, "loss.angle"));
    check_loss("loss total", l.total, scalar(io, "loss.total"));

    int ngrad = 0;
    double worst = 0;
    const char *worst_name = "";
    for (int i = 0; i < nesf_st_count(w); i++) {
        const char *name = nesf_st_at(w, i)->name;
        if (strstr(name, "running_")) continue;
        char gname[256];
        snprintf(gname, sizeof gname, "grad.%s", name);
        if (!all_grads && !nesf_st_find(io, gname)) continue;
        size_t n;
        float *ref = get_f32(io, gname, &n), *g = malloc(n * sizeof *g);
        if (nesf_trainer_grad(t, name, g, &e)) fail_msg("grad %s: %s", name, e.msg);
        double r = rel_err(g, ref, n), tol = TOL_GRAD;
        snprintf(gname, sizeof gname, "gradtol.%s", name);
        if (nesf_st_find(io, gname)) tol = scalar(io, gname);
        if (!(r <= tol)) fail_msg("gradient of %s: relative error %.3g > %.2g", name, r, tol);
        if (r > worst) { worst = r; worst_name = nesf_st_at(w, i)->name; }
        ngrad++;
        free(ref);
        free(g);
    }
    print_message("  %d gradients, worst %s rel %.2e\n", ngrad, worst_name, worst);
    assert_true(ngrad > 50);   /* paper: biases, BN and 7 weight matrices */

    /* BN running statistics after the step, through the saved file */
    char path[256];
    snprintf(path, sizeof path, "/tmp/nesf_parity_%ld_step.safetensors", (long)getpid());
    if (nesf_model_save(m, path, NULL, &e)) fail_msg("%s", e.msg);
    nesf_st *after = NULL;
    assert_int_equal(nesf_st_read(path, &after, &e), 0);
    unlink(path);
    int nbn = 0;
    for (int i = 0; i < nesf_st_count(w); i++) {
        const char *name = nesf_st_at(w, i)->name;
        if (!strstr(name, "running_")) continue;
        char aname[256];
        snprintf(aname, sizeof aname, "after.%s", name);
        size_t n;
        float *ref = get_f32(io, aname, &n), *got = get_f32(after, name, NULL);
        double r = rel_err(got, ref, n);
        if (!(r <= TOL_FWD)) fail_msg("%s after the step: relative error %.3g", name, r);
        nbn++;
        free(ref);
        free(got);
    }
    assert_true(nbn > 20);
    nesf_st_free(after);

    /* Adam, t = 1: p - lr * g / (|g| + eps) elementwise.  Where the gradient
     * is within float32 noise of zero its sign (hence the update) may
     * legitimately differ, so only clearly nonzero gradients must agree. */
    if (nesf_trainer_step(t, 1e-3f, &e)) fail_msg("adam: %s", e.msg);
    int nadam = 0;
    for (int i = 0; i < nesf_st_count(io); i++) {
        const char *aname = nesf_st_at(io, i)->name;
        if (strncmp(aname, "adam.", 5)) continue;
        const char *pname = aname + 5;
        size_t n;
        char gname[256];
        snprintf(gname, sizeof gname, "grad.%s", pname);
        float *before = get_f32(w, pname, &n), *ref = get_f32(io, aname, NULL);
        float *gref = get_f32(io, gname, NULL), *p = malloc(n * sizeof *p);
        if (nesf_trainer_param(t, pname, p, &e)) fail_msg("%s", e.msg);
        float gmax = 0;
        for (size_t j = 0; j < n; j++) gmax = fmaxf(gmax, fabsf(gref[j]));
        for (size_t j = 0; j < n; j++) {
            double d = fabs((double)p[j] - ref[j]);
            double tol = fabsf(gref[j]) >= 2e-3f * gmax ? 2e-6 : 2.0001e-3;
            if (!(d <= tol))
                fail_msg("%s[%zu] after Adam: %.8g, reference %.8g (before %.8g, grad %.3g)",
                         pname, j, p[j], ref[j], before[j], gref[j]);
        }
        nadam++;
        free(before); free(ref); free(gref); free(p);
    }
    assert_int_equal(nadam, 4);

    nesf_trainer_free(t);
    free(q.pos_off); free(q.spec_off); free(q.pos_xyz); free(q.pos_tgt); free(q.spec_xyz);
    free(q.spec_lbl);
    free_structures(s, S);
    nesf_st_free(io);
    nesf_st_free(w);
    nesf_model_free(m);
}

static void test_train_step_tiny(void **state)
{
    (void)state;
    check_train_step("train_step.safetensors", "train_step_io.safetensors", 1);
}

static void test_train_step_fourier(void **state)
{
    (void)state;
    check_train_step("train_step_fourier.safetensors", "train_step_fourier_io.safetensors", 1);
}

/* the paper network: widths 256/512 and A = 80 through every kernel */
static void test_train_step_paper(void **state)
{
    (void)state;
    check_train_step("forward.safetensors", "train_step_paper_io.safetensors", 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forward_paper),
        cmocka_unit_test(test_forward_tiny),
        cmocka_unit_test(test_forward_fourier),
        cmocka_unit_test(test_model_config_fallback),
        cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_encode_errors),
        cmocka_unit_test(test_save_round_trip),
        cmocka_unit_test(test_train_step_tiny),
        cmocka_unit_test(test_train_step_paper),
        cmocka_unit_test(test_train_step_fourier),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

/* Latent refinement (core/train/refine.c): its gradient against finite
 * differences, its loss against the model's own inference fields (so the
 * BN-stripped view over the folded weights is the inference network), the
 * loss going down, batched answers identical to single ones, and option
 * errors (the second look's too; its work: test_second_look.c). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <jansson.h>

#include "model_internal.h"
#include "refine.h"
#include "train.h"

static nesf_backend *be;
static nesf_model *m;
static const int zs[4] = {8, 26, 29, 56};

static uint64_t rs = 777;
static float urand(void)
{
    rs = rs * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rs >> 40) * (1.0 / 16777216.0)) * 2 - 1;
}

static nesf_structure *rand_structure(int n)
{
    nesf_structure *s = nesf_structure_new(n);
    nesf_cellpar p = {3 + urand(), 3.5 + urand(), 4 + urand(), 80 + 5 * urand(), 95 + 5 * urand(),
                      88 + 5 * urand()};
    nesf_lattice_from_params(&p, &s->lat, NULL);
    for (int i = 0; i < n; i++) {
        double f[3] = {0.5 + 0.45 * urand(), 0.5 + 0.45 * urand(), 0.5 + 0.45 * urand()};
        nesf_structure_add_site(s, zs[(i * 7 + n) % 4], f, NULL);
    }
    return s;
}

/* A small network whose BatchNorm statistics are far from the defaults, so
 * that folding them into the following layers matters. */
static int setup(void **state)
{
    (void)state;
    if (nesf_backend_cpu_create(1, &be, NULL)) return 1;
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
    float lo[3] = {0, 0, 0}, hi[3] = {4, 4, 5};
    nesf_error err;
    if (nesf_model_create(&cfg, zs, 4, lo, hi, be, 3, &m, &err)) return 1;
    for (int t = 0; t < m->ntensors; t++) {
        const nesf_tensor_info *T = &m->tensors[t];
        float *base = T->buffer ? m->net.buffers : m->net.params;
        const size_t n = (size_t)T->shape[0] * (T->ndim == 2 ? (size_t)T->shape[1] : 1);
        const char *end = strrchr(T->name, '.');
        for (size_t i = 0; i < n; i++) {
            if (!strcmp(end, ".running_var")) base[T->off + i] = 0.5f + 0.4f * urand();
            else if (!strcmp(end, ".running_mean")) base[T->off + i] = 0.3f * urand();
            else if (strstr(T->name, ".bn.weight")) base[T->off + i] = 1.0f + 0.3f * urand();
        }
    }
    return nesf_model_refold(m, &err);
}

static int teardown(void **state)
{
    (void)state;
    nesf_model_free(m);
    nesf_backend_free(be);
    return 0;
}

static void small_opts(nesf_refine_opts *o)
{
    nesf_refine_opts_default(o);
    o->sampling.global_fraction = 0.1f;
    o->sampling.species_fraction = 0.2f;
    o->sampling.cell_points = 32;
}

/* dLoss/dz against central differences, entry by entry, skipping kinks of
 * the ReLU network (left and right quotients disagree). */
static void test_gradient(void **state)
{
    (void)state;
    nesf_structure *s = rand_structure(4);
    nesf_refine_opts o;
    small_opts(&o);
    nesf_error err;
    float z[12], dz[12], dummy[12];
    for (int i = 0; i < 12; i++) z[i] = urand();
    double f0;
    assert_int_equal(nesf_refine_loss(m, s, z, &o, 3, &f0, dz, &err), NESF_OK);
    double d = 0, n2 = 0;
    int kept = 0;
    for (int i = 0; i < 12; i++) {
        const float h = 1e-2f, save = z[i];
        double fp, fm;
        z[i] = save + h;
        assert_int_equal(nesf_refine_loss(m, s, z, &o, 3, &fp, dummy, &err), NESF_OK);
        z[i] = save - h;
        assert_int_equal(nesf_refine_loss(m, s, z, &o, 3, &fm, dummy, &err), NESF_OK);
        z[i] = save;
        const double r = (fp - f0) / h, l = (f0 - fm) / h;
        if (fabs(r - l) > 5e-2 * (fabs(r) + fabs(l)) + 1e-3) continue;
        d += ((r + l) / 2 - dz[i]) * ((r + l) / 2 - dz[i]);
        n2 += dz[i] * (double)dz[i];
        kept++;
    }
    const double rel = sqrt(d / fmax(n2, 1e-12));
    print_message("  loss %.4f, %d of 12 entries compared, rel err %.2e\n", f0, kept, rel);
    assert_true(kept >= 8);
    assert_true(rel < 2e-2);
    nesf_structure_free(s);
}

/* The position term alone equals the MSE of the model's inference
 * position field on the same query points. */
static void test_loss_is_inference(void **state)
{
    (void)state;
    nesf_structure *s = rand_structure(3);
    nesf_refine_opts o;
    small_opts(&o);
    o.w_spec = o.w_len = o.w_ang = 0;
    o.w_pos = 1;
    nesf_error err;
    float z[12], dz[12];
    for (int i = 0; i < 12; i++) z[i] = urand();
    double loss;
    assert_int_equal(nesf_refine_loss(m, s, z, &o, 5, &loss, dz, &err), NESF_OK);

    nesf_structure *c = nesf_structure_copy(s);
    assert_int_equal(nesf_structure_canonicalize(c, &err), NESF_OK);
    int cls[3];
    for (int j = 0; j < 3; j++) cls[j] = nesf_model_class_of(m, c->z[j]);
    const int *cp = cls;
    nesf_queries q;
    assert_int_equal(nesf_queries_sample(&o.sampling, m->bbmin, m->bbmax, &c, &cp, 1,
                                         nesf_seed_mix(o.seed, 5), &q, &err), NESF_OK);
    const int P = q.pos_off[1];
    float *out = malloc((size_t)P * 3 * sizeof *out);
    assert_int_equal(nesf_model_position_field_host(m, 1, z, q.pos_off, q.pos_xyz, out, &err), NESF_OK);
    double mse = 0;
    for (int i = 0; i < 3 * P; i++) mse += (out[i] - q.pos_tgt[i]) * (double)(out[i] - q.pos_tgt[i]);
    mse /= 3.0 * P;
    print_message("  refine position loss %.6f, inference field MSE %.6f (%d queries)\n", loss, mse, P);
    assert_true(fabs(loss - mse) <= 1e-5 * fabs(mse) + 1e-7);
    free(out);
    nesf_queries_free(&q);
    nesf_structure_free(c);
    nesf_structure_free(s);
}

/* Refining lowers the loss; two structures refined together give the very
 * latents each gets alone. */
static void test_refine_batch(void **state)
{
    (void)state;
    nesf_structure *s[2] = {rand_structure(2), rand_structure(5)};
    nesf_refine_opts o;
    small_opts(&o);
    o.steps = 60;
    o.lr = 0.1f;
    nesf_error err;
    float z[24], za[24];
    assert_int_equal(nesf_model_encode(m, s, 2, z, &err), NESF_OK);
    memcpy(za, z, sizeof z);
    nesf_refine_stats st = {0};
    assert_int_equal(nesf_refine_latents(m, s, 2, z, &o, &st, &err), NESF_OK);
    /* on one fixed draw of queries (each step draws afresh, so the
     * per-step losses are noisy) */
    double l0, l1;
    float g[12];
    assert_int_equal(nesf_refine_loss(m, s[1], za + 12, &o, 0, &l0, g, &err), NESF_OK);
    assert_int_equal(nesf_refine_loss(m, s[1], z + 12, &o, 0, &l1, g, &err), NESF_OK);
    print_message("  steps' losses %.4f -> %.4f, %ld field rows; step 0's queries: %.4f -> %.4f\n",
                  st.loss_before, st.loss_after, st.field_rows, l0, l1);
    assert_true(l1 < 0.9 * l0);
    assert_true(st.field_rows > 0);
    assert_int_equal(nesf_refine_latents(m, s, 1, za, &o, NULL, &err), NESF_OK);
    assert_int_equal(nesf_refine_latents(m, s + 1, 1, za + 12, &o, NULL, &err), NESF_OK);
    assert_memory_equal(z, za, sizeof z);
    /* steps 0: the latent as it was */
    float zb[12];
    memcpy(zb, z, sizeof zb);
    o.steps = 0;
    assert_int_equal(nesf_refine_latents(m, s, 1, zb, &o, NULL, &err), NESF_OK);
    assert_memory_equal(zb, z, sizeof zb);
    nesf_structure_free(s[0]);
    nesf_structure_free(s[1]);
}

static void test_unknown_element(void **state)
{
    (void)state;
    nesf_structure *s = rand_structure(2);
    s->z[1] = 79; /* Au is not among the model's species */
    nesf_refine_opts o;
    small_opts(&o);
    o.steps = 2;
    float z[12] = {0};
    nesf_error err;
    assert_int_equal(nesf_refine_latents(m, &s, 1, z, &o, NULL, &err), NESF_ERR_NOTFOUND);
    assert_non_null(strstr(err.msg, "Au"));
    nesf_structure_free(s);
}

static void expect_bad(const char *text, const char *needle)
{
    nesf_refine_opts o;
    nesf_refine_opts_default(&o);
    json_t *v = json_loads(text, JSON_DECODE_ANY, NULL);
    assert_non_null(v);
    nesf_error err;
    assert_int_equal(nesf_refine_opts_from_json(&o, v, &err), NESF_ERR_INVALID);
    if (!strstr(err.msg, needle)) print_message("  %s: %s\n", text, err.msg);
    assert_non_null(strstr(err.msg, needle));
    json_decref(v);
}

static void test_options(void **state)
{
    (void)state;
    nesf_refine_opts o;
    nesf_refine_opts_default(&o);
    assert_int_equal(o.steps, NESF_REFINE_STEPS); /* on unless asked not to */
    nesf_error err;
    json_t *v = json_loads("{\"steps\": 7, \"lr\": 0.5, \"loss_weights\": {\"species\": 2},"
                           " \"cell_points\": 0, \"global_fraction\": 0.5}", 0, NULL);
    assert_int_equal(nesf_refine_opts_from_json(&o, v, &err), NESF_OK);
    json_decref(v);
    assert_int_equal(o.steps, 7);
    assert_true(o.lr == 0.5f && o.w_spec == 2.0f && o.w_pos == 10.0f);
    assert_int_equal(o.sampling.cell_points, 0);
    v = json_integer(12);
    assert_int_equal(nesf_refine_opts_from_json(&o, v, &err), NESF_OK);
    json_decref(v);
    assert_int_equal(o.steps, 12);
    expect_bad("{\"stpes\": 3}", "stpes");
    expect_bad("-1", "steps");
    expect_bad("{\"lr\": 0}", "lr");
    expect_bad("{\"loss_weights\": {\"pos\": 1}}", "pos");
    expect_bad("{\"loss_weights\": {\"angle\": -1}}", "angle");
    expect_bad("{\"cell_points\": 1.5}", "cell_points");
    expect_bad("\"many\"", "step count");
    v = json_true();
    assert_int_equal(nesf_refine_opts_from_json(&o, v, &err), NESF_OK);
    assert_int_equal(o.steps, NESF_REFINE_STEPS);
    json_decref(v);
    v = json_false();
    assert_int_equal(nesf_refine_opts_from_json(&o, v, &err), NESF_OK);
    assert_int_equal(o.steps, 0);
    json_decref(v);
}

static void test_look_options(void **state)
{
    (void)state;
    nesf_refine_opts o;
    nesf_refine_opts_default(&o);
    assert_int_equal(o.look_tries, NESF_SECOND_LOOK_TRIES);
    nesf_error err;
    json_t *v = json_loads("{\"second_look\": false}", 0, NULL);
    assert_int_equal(nesf_refine_opts_from_json(&o, v, &err), NESF_OK);
    assert_int_equal(o.look_tries, 0);
    json_decref(v);
    v = json_loads("{\"second_look\": {\"tries\": 3, \"above_percentile\": 90, \"steps\": 50, \"lr\": 0.1}}", 0, NULL);
    assert_int_equal(nesf_refine_opts_from_json(&o, v, &err), NESF_OK);
    assert_true(o.look_tries == 3 && o.look_pct == 90.0f && o.look_steps == 50 && o.look_lr == 0.1f);
    json_decref(v);
    expect_bad("{\"second_look\": {\"tries\": -1}}", "tries");
    expect_bad("{\"second_look\": {\"above_percentile\": 101}}", "above_percentile");
    expect_bad("{\"second_look\": {\"try\": 1}}", "try");
    expect_bad("{\"second_look\": 2}", "second_look");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gradient),
        cmocka_unit_test(test_loss_is_inference),
        cmocka_unit_test(test_refine_batch),
        cmocka_unit_test(test_unknown_element),
        cmocka_unit_test(test_options),
        cmocka_unit_test(test_look_options),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

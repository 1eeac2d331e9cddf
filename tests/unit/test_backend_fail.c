/* Every backend call's result is checked in the model and the trainer: a
 * CPU backend whose k-th upload, download, copy or sync fails (that call
 * alone, the rest succeed) must make encode, the lattice heads, the fields,
 * the training step, the validation loss and checkpoints fail with a
 * message, for every k up to the number of such calls the operation makes.
 * An ignored return code would let the operation succeed. */
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
#include "train.h"

static nesf_backend *be;
static const nesf_backend_ops *cpu_ops;
static nesf_backend_ops failing_ops;
static long countdown = -1; /* calls left before the failing one; < 0: none fails */
static long calls;

/* Counts a call; nonzero when it is the one to fail. */
static int fails_now(void)
{
    calls++;
    return countdown >= 0 && countdown-- == 0;
}

static int f_upload(nesf_backend *b, void *d, const void *s, size_t n)
{
    return fails_now() ? NESF_ERR_BACKEND : cpu_ops->upload(b, d, s, n);
}

static int f_download(nesf_backend *b, void *d, const void *s, size_t n)
{
    return fails_now() ? NESF_ERR_BACKEND : cpu_ops->download(b, d, s, n);
}

static int f_copy(nesf_backend *b, void *d, const void *s, size_t n)
{
    return fails_now() ? NESF_ERR_BACKEND : cpu_ops->copy(b, d, s, n);
}

static int f_sync(nesf_backend *b) { return fails_now() ? NESF_ERR_BACKEND : cpu_ops->sync(b); }

static int setup(void **state)
{
    (void)state;
    if (nesf_backend_cpu_create(1, &be, NULL)) return -1;
    cpu_ops = be->ops;
    failing_ops = *cpu_ops;
    failing_ops.upload = f_upload;
    failing_ops.download = f_download;
    failing_ops.copy = f_copy;
    failing_ops.sync = f_sync;
    be->ops = &failing_ops;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    be->ops = cpu_ops;
    nesf_backend_free(be);
    return 0;
}

typedef struct fixture {
    nesf_model *m;
    nesf_trainer *t;
    nesf_structure *s[3];
    nesf_queries q;
    char path[64];
} fixture;

typedef int (*operation)(fixture *f, nesf_error *err);

static nesf_structure *structure(int n, double a, const int *zs)
{
    nesf_structure *s = nesf_structure_new(n);
    nesf_cellpar p = {a, a + 0.5, a + 1, 85, 95, 90};
    nesf_lattice_from_params(&p, &s->lat, NULL);
    for (int i = 0; i < n; i++) {
        double fr[3] = {0.1 + 0.2 * i, 0.3 + 0.1 * i, 0.5 - 0.1 * i};
        nesf_structure_add_site(s, zs[i % 3], fr, NULL);
    }
    return s;
}

static void fixture_open(fixture *f)
{
    nesf_model_config cfg;
    nesf_model_config_paper(&cfg);
    cfg.latent = 8;
    cfg.n_enc_pos_hidden = 1; cfg.enc_pos_hidden[0] = 6; cfg.enc_pos_out = 5;
    cfg.n_enc_species_hidden = 1; cfg.enc_species_hidden[0] = 6; cfg.enc_species_out = 5;
    cfg.enc_mix_out = 8;
    cfg.n_enc_head_hidden = 1; cfg.enc_head_hidden[0] = 8;
    cfg.n_lattice_hidden = 1; cfg.lattice_hidden[0] = 4;
    cfg.n_pos_hidden = 2; cfg.pos_hidden[0] = 8; cfg.pos_hidden[1] = 6;
    cfg.n_spec_hidden = 1; cfg.spec_hidden[0] = 6;
    const int zs[3] = {8, 26, 29};
    float lo[3] = {0, 0, 0}, hi[3] = {4, 4, 5};
    nesf_error err;
    assert_int_equal(nesf_model_create(&cfg, zs, 3, lo, hi, be, 3, &f->m, &err), NESF_OK);
    nesf_train_config tc;
    nesf_train_config_paper(&tc);
    tc.sampling.global_fraction = 0.05f;
    tc.sampling.species_fraction = 0.1f;
    assert_int_equal(nesf_trainer_create(f->m, &tc, &f->t, &err), NESF_OK);
    f->s[0] = structure(2, 3.0, zs);
    f->s[1] = structure(4, 3.5, zs);
    f->s[2] = structure(3, 4.0, zs);
    assert_int_equal(nesf_trainer_sample(f->t, f->s, 3, 9, &f->q, &err), NESF_OK);
    snprintf(f->path, sizeof f->path, "/tmp/nesf-test-fail-%d.safetensors", (int)getpid());
}

static void fixture_close(fixture *f)
{
    unlink(f->path);
    nesf_queries_free(&f->q);
    for (int i = 0; i < 3; i++) nesf_structure_free(f->s[i]);
    nesf_trainer_free(f->t);
    nesf_model_free(f->m);
}

static int op_encode(fixture *f, nesf_error *err)
{
    float z[3 * 8];
    return nesf_model_encode(f->m, f->s, 3, z, err);
}

static int op_lattice(fixture *f, nesf_error *err)
{
    float z[3 * 8] = {0.5f, -0.25f, 1}, len[9], ang[9];
    return nesf_model_lattice(f->m, 3, z, len, ang, err);
}

static int op_fields(fixture *f, nesf_error *err)
{
    float z[3 * 8] = {0.5f, -0.25f, 1}, out[6 * 3];
    const float xyz[6 * 3] = {0.1f, 0.2f, 0.3f, 1, 1, 1, 2, 0, 1, 0, 2, 2, 3, 3, 1, 0.5f, 0.5f, 4};
    const int off[4] = {0, 2, 3, 6};
    int rc = nesf_model_position_field_host(f->m, 3, z, off, xyz, out, err);
    return rc ? rc : nesf_model_species_field_host(f->m, 3, z, off, xyz, out, err);
}

static int op_train_step(fixture *f, nesf_error *err)
{
    nesf_losses l;
    int rc = nesf_trainer_forward_backward(f->t, f->s, 3, &f->q, 5, &l, err);
    return rc ? rc : nesf_trainer_step(f->t, 1e-4f, err);
}

static int op_eval_loss(fixture *f, nesf_error *err)
{
    nesf_losses l;
    return nesf_trainer_eval_loss(f->t, f->s, 3, &f->q, &l, err);
}

static int op_checkpoint(fixture *f, nesf_error *err)
{
    nesf_train_state st = {.epoch = 1, .step = 2};
    int rc = nesf_trainer_save(f->t, &st, f->path, err);
    return rc ? rc : nesf_trainer_load(f->t, &st, f->path, err);
}

/* Fails each counted call of op in turn; returns how many there were. */
static long fail_each(fixture *f, operation op, const char *what)
{
    nesf_error err;
    for (long k = 0;; k++) {
        countdown = k;
        calls = 0;
        memset(&err, 0, sizeof err);
        int rc = op(f, &err);
        const int failed_one = countdown < 0;
        countdown = -1;
        if (!failed_one) {
            assert_int_equal(rc, NESF_OK);
            print_message("  %s: %ld backend calls, each failure reported\n", what, k);
            return k;
        }
        if (rc == NESF_OK || !err.msg[0]) fail_msg("%s: failure of backend call %ld ignored (rc %d)", what, k + 1, rc);
    }
}

static void test_every_call_checked(void **state)
{
    (void)state;
    fixture f;
    fixture_open(&f);
    const struct { operation op; const char *what; } ops[] = {
        {op_encode, "encode"}, {op_lattice, "lattice heads"}, {op_fields, "fields"},
        {op_train_step, "training step"}, {op_eval_loss, "validation loss"}, {op_checkpoint, "checkpoint"}};
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        assert_true(fail_each(&f, ops[i].op, ops[i].what) > 0);
    fixture_close(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_every_call_checked)};
    return cmocka_run_group_tests(tests, setup, teardown);
}

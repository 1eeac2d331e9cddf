/* Batched decoding gives what decoding one structure at a time gives: the
 * batch's non-max suppression runs on several threads and its atoms are
 * packed afterwards, so order, counts and positions must not depend on the
 * batch or the thread count.  Uses the exact field of LCS6 validation
 * structures (the network is not involved). */
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
#include "dataset.h"
#include "decode.h"

static void decode_truth(nesf_backend *be, const nesf_vocab *v, nesf_structure *const *s, int n,
                         const nesf_decode_opts *o, nesf_structure **out, nesf_decode_stats *st)
{
    const float bmin[3] = {-0.01f, -0.01f, 0.0f}, bmax[3] = {11.65f, 8.5f, 5.97f};
    nesf_field f;
    nesf_error err;
    assert_int_equal(nesf_field_truth(be, s, n, v->z, v->n, bmin, bmax, &f, &err), NESF_OK);
    int rc = nesf_decode_field(&f, o, out, NULL, st, &err);
    nesf_field_release(&f);
    if (rc) fail_msg("decode: %s", err.msg);
}

static void test_batch_equals_single(void **state)
{
    (void)state;
    const char *sh = getenv("NESF_SHARED");
    char p[512];
    nesf_error err;
    nesf_vocab v;
    nesf_dataset d;
    snprintf(p, sizeof p, "%s/datasets/lcs6/meta.json", sh ? sh : "../shared");
    assert_int_equal(nesf_vocab_load(p, &v, &err), NESF_OK);
    snprintf(p, sizeof p, "%s/datasets/lcs6/val.jsonl", sh ? sh : "../shared");
    assert_int_equal(nesf_dataset_load(p, &d, &err), NESF_OK);
    nesf_backend *be;
    assert_int_equal(nesf_backend_cpu_create(1, &be, &err), NESF_OK);

    enum { N = 12 };
    nesf_decode_opts o;
    nesf_decode_opts_default(&o);
    o.iterations = 3;            /* the exact field lands particles in one step */
    o.batch_particles = 5 * 7280; /* several batches, each of several structures */
    nesf_structure *all[N], *one[N];
    nesf_decode_stats st_all, st_one, st;
    decode_truth(be, &v, d.s, N, &o, all, &st_all);
    memset(&st_one, 0, sizeof st_one);
    for (int i = 0; i < N; i++) {
        decode_truth(be, &v, d.s + i, 1, &o, &one[i], &st);
        st_one.kept += st.kept;
        st_one.atoms += st.atoms;
    }
    assert_int_equal(st_all.kept, st_one.kept);
    assert_int_equal(st_all.atoms, st_one.atoms);
    int atoms = 0;
    for (int i = 0; i < N; i++) {
        assert_int_equal(all[i]->n, one[i]->n);
        for (int j = 0; j < all[i]->n; j++) {
            assert_int_equal(all[i]->z[j], one[i]->z[j]);
            for (int k = 0; k < 3; k++)
                assert_true(all[i]->cart[3 * j + k] == one[i]->cart[3 * j + k]);
        }
        atoms += all[i]->n;
        nesf_structure_free(all[i]);
        nesf_structure_free(one[i]);
    }
    print_message("%d structures, %d atoms: batched == one at a time\n", N, atoms);
    assert_true(atoms > N);
    nesf_backend_free(be);
    nesf_dataset_free(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_equals_single),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* The training domain: measured ranges, its JSON record, the checks an
 * input gets, the cycle-distance percentiles, and the metadata rewrite
 * that adds the record to a finished model file without touching its
 * tensors. */
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

#include <jansson.h>

#include "domain.h"
#include "safetensors.h"

static nesf_structure *cubic(double a, int z, int n)
{
    nesf_cellpar p = {a, a, a, 90, 90, 90};
    nesf_structure *s = nesf_structure_new(n);
    assert_int_equal(nesf_lattice_from_params(&p, &s->lat, NULL), 0);
    for (int i = 0; i < n; i++) {
        double f[3] = {(double)i / n, 0.5, 0.5};
        assert_int_equal(nesf_structure_add_site(s, z, f, NULL), 0);
    }
    return s;
}

static int has(const nesf_domain_warning *w, int n, const char *code)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(w[i].code, code)) return 1;
    return 0;
}

static void test_measure_check(void **state)
{
    (void)state;
    nesf_structure *train[2] = {cubic(4.0, 8, 2), cubic(5.0, 11, 4)};
    nesf_domain d;
    nesf_domain_from_structures(train, 2, &d);
    assert_int_equal(d.structures, 2);
    assert_int_equal(d.max_atoms, 4);
    assert_true(d.element[8] && d.element[11] && !d.element[17]);
    assert_true(fabs(d.len_lo[0] - 4.0) < 1e-9 && fabs(d.len_hi[2] - 5.0) < 1e-9);
    assert_true(fabs(d.ang_lo[1] - 90) < 1e-9 && fabs(d.ang_hi[1] - 90) < 1e-9);
    assert_true(fabs(d.min_distance - 1.25) < 1e-9); /* 4 sites along a 5 Å edge */
    /* periodic: a site and its own image, and a pair across the cell's face */
    nesf_structure *one = cubic(4.0, 8, 1), *pair = cubic(4.0, 8, 0);
    assert_true(fabs(nesf_structure_min_distance(one) - 4.0) < 1e-9);
    assert_true(isinf(nesf_structure_min_distance(pair)));
    assert_int_equal(nesf_structure_add_site(pair, 8, (double[3]){0.02, 0.5, 0.5}, NULL), 0);
    assert_int_equal(nesf_structure_add_site(pair, 8, (double[3]){0.98, 0.5, 0.5}, NULL), 0);
    assert_true(fabs(nesf_structure_min_distance(pair) - 0.16) < 1e-9);
    nesf_structure_free(one);
    nesf_structure_free(pair);
    const float lo[3] = {0, 0, 0}, hi[3] = {5, 5, 5};
    nesf_domain_warning w[NESF_DOMAIN_MAX_WARNINGS];
    assert_int_equal(nesf_domain_check(&d, lo, hi, train[1], w, NESF_DOMAIN_MAX_WARNINGS), 0);
    /* every way out at once */
    nesf_structure *out = cubic(9.0, 17, 6);
    int n = nesf_domain_check(&d, lo, hi, out, w, NESF_DOMAIN_MAX_WARNINGS);
    assert_int_equal(n, 4);
    assert_true(has(w, n, "outside_bbox") && has(w, n, "too_many_atoms") &&
                has(w, n, "unknown_element") && has(w, n, "cell_length_out_of_range"));
    assert_non_null(strstr(w[0].message, "bounding box"));
    /* without a record only the box is checked; max bounds the count */
    assert_int_equal(nesf_domain_check(NULL, lo, hi, out, w, NESF_DOMAIN_MAX_WARNINGS), 1);
    assert_int_equal(nesf_domain_check(&d, lo, hi, out, w, 2), 2);
    /* an angle outside */
    nesf_cellpar p = {4.5, 4.5, 4.5, 70, 90, 90};
    assert_int_equal(nesf_lattice_from_params(&p, &train[0]->lat, NULL), 0);
    nesf_structure_update_cart(train[0]);
    n = nesf_domain_check(&d, lo, hi, train[0], w, NESF_DOMAIN_MAX_WARNINGS);
    assert_int_equal(n, 1);
    assert_string_equal(w[0].code, "cell_angle_out_of_range");
    nesf_structure_free(out);
    nesf_structure_free(train[0]);
    nesf_structure_free(train[1]);
}

static void test_json_and_percentile(void **state)
{
    (void)state;
    nesf_structure *train[1] = {cubic(4.0, 8, 2)};
    nesf_domain d, back;
    nesf_domain_from_structures(train, 1, &d);
    assert_true(nesf_domain_percentile(&d, 1.0) < 0); /* no calibration */
    double dist[5] = {4, INFINITY, 1, 3, 2};
    nesf_domain_set_cycle(&d, dist, 5, "fast");
    assert_int_equal(d.cycle_n, 5);
    assert_true(fabs(d.cycle_q[0] - 1) < 1e-12 && fabs(d.cycle_q[50] - 3) < 1e-12);
    assert_true(isinf(d.cycle_q[100]));
    assert_true(fabs(nesf_domain_percentile(&d, 3) - 50) < 1e-9);
    assert_true(fabs(nesf_domain_percentile(&d, 2.5) - 37.5) < 1e-9);
    assert_true(nesf_domain_percentile(&d, 0.5) == 0);
    assert_true(nesf_domain_percentile(&d, INFINITY) == 100);
    char *text = nesf_domain_to_json(&d);
    assert_non_null(strstr(text, "\"elements\":[\"O\"]"));
    nesf_error err;
    assert_int_equal(nesf_domain_from_json(text, &back, &err), 0);
    json_t *rec = json_loads(text, 0, NULL); /* the same record as an older file writes it */
    free(text);
    assert_non_null(rec);
    json_object_del(rec, "min_distance");
    char *older = json_dumps(rec, 0);
    json_object_set_new(rec, "min_distance", json_real(-1));
    char *broken = json_dumps(rec, 0);
    json_decref(rec);
    assert_int_equal(back.structures, 1);
    assert_int_equal(back.max_atoms, 2);
    assert_true(back.element[8] && !back.element[11]);
    assert_int_equal(back.cycle_n, 5);
    assert_string_equal(back.cycle_decoder, "fast");
    for (int q = 0; q < NESF_DOMAIN_QUANTILES; q++) /* 9 significant digits */
        assert_true(back.cycle_q[q] == d.cycle_q[q] || fabs(back.cycle_q[q] - d.cycle_q[q]) < 1e-8 * d.cycle_q[q]);
    assert_true(fabs(back.len_lo[1] - d.len_lo[1]) < 1e-8 && fabs(back.ang_hi[2] - d.ang_hi[2]) < 1e-6);
    assert_true(fabs(back.min_distance - 2.0) < 1e-8);
    /* an older record without min_distance reads as 0 (not recorded) */
    nesf_domain old;
    assert_int_equal(nesf_domain_from_json(older, &old, &err), 0);
    assert_true(old.min_distance == 0 && old.max_atoms == 2);
    assert_int_equal(nesf_domain_from_json(broken, &old, &err), NESF_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "min_distance"));
    free(older);
    free(broken);
    /* broken records name what is wrong */
    assert_int_equal(nesf_domain_from_json("{\"structures\": 1}", &back, &err), NESF_ERR_FORMAT);
    assert_int_equal(nesf_domain_from_json("[1]", &back, &err), NESF_ERR_FORMAT);
    assert_int_equal(nesf_domain_from_json("{\"structures\": 1, \"max_atoms\": 2, \"elements\": [\"Xx\"]}",
                                           &back, &err), NESF_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "elements[0]"));
    nesf_structure_free(train[0]);
}

static void test_rewrite_meta(void **state)
{
    (void)state;
    char a[] = "/tmp/nesf-domain-XXXXXX";
    int fd = mkstemp(a);
    assert_true(fd >= 0);
    close(fd);
    float w[6] = {1.5f, -2.25f, 3e-8f, 4, 5, 6};
    int64_t ids[2] = {7, -9};
    const int64_t s23[2] = {2, 3}, s2[1] = {2};
    nesf_st_writer *wr = nesf_st_writer_new();
    nesf_error err;
    assert_int_equal(nesf_st_writer_add(wr, "w", NESF_ST_F32, 2, s23, w, &err), 0);
    assert_int_equal(nesf_st_writer_add(wr, "ids", NESF_ST_I64, 1, s2, ids, &err), 0);
    assert_int_equal(nesf_st_writer_meta(wr, "species", "H,O", &err), 0);
    assert_int_equal(nesf_st_writer_meta(wr, "domain", "old", &err), 0);
    assert_int_equal(nesf_st_writer_write(wr, a, &err), 0);
    nesf_st_writer_free(wr);
    assert_int_equal(nesf_st_rewrite_meta(a, a, "domain", "{\"new\": 1}", &err), 0);
    nesf_st *st;
    assert_int_equal(nesf_st_read(a, &st, &err), 0);
    assert_int_equal(nesf_st_count(st), 2);
    assert_memory_equal(nesf_st_find(st, "w")->data, w, sizeof w);
    assert_memory_equal(nesf_st_find(st, "ids")->data, ids, sizeof ids);
    assert_string_equal(nesf_st_meta(st, "species"), "H,O");
    assert_string_equal(nesf_st_meta(st, "domain"), "{\"new\": 1}");
    nesf_st_free(st);
    assert_int_equal(nesf_st_rewrite_meta("/nonexistent/x", a, "k", "v", &err), NESF_ERR_IO);
    unlink(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_measure_check),
        cmocka_unit_test(test_json_and_percentile),
        cmocka_unit_test(test_rewrite_meta),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Elements, reduced formula, space group, structure JSON and the dataset
 * loader. */
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

#include "dataset.h"
#include "elements.h"
#include "sio.h"
#include "sjson.h"
#include "structure.h"

static const char *shared(void)
{
    const char *s = getenv("NESF_SHARED");
    return s ? s : "../shared";
}

static void dataset_path(char *buf, size_t n, const char *rel)
{
    snprintf(buf, n, "%s/datasets/%s", shared(), rel);
}

static void test_elements(void **state)
{
    (void)state;
    for (int z = 1; z <= NESF_MAX_Z; z++) {
        const nesf_element *e = nesf_element_get(z);
        assert_non_null(e);
        assert_int_equal(e->z, z);
        assert_int_equal(nesf_element_z(e->symbol), z);
        assert_true(e->covalent_radius > 0.2 && e->covalent_radius <= 2.6);
        assert_true(e->name[0] >= 'A' && e->name[0] <= 'Z');
        assert_true(e->rgb <= 0xFFFFFF);
    }
    assert_null(nesf_element_get(0));
    assert_null(nesf_element_get(119));
    const nesf_element *fe = nesf_element_get(26);
    assert_string_equal(fe->symbol, "Fe");
    assert_string_equal(fe->name, "Iron");
    assert_int_equal(fe->rgb, 0xE06633);
    assert_true(fabs(fe->covalent_radius - 1.42) < 1e-9);
    assert_true(fabs(fe->electronegativity - 1.83) < 1e-9);
    assert_true(nesf_element_get(8)->electronegativity == 3.44);
    assert_true(nesf_element_get(2)->electronegativity == 0); /* He: undefined */
    assert_string_equal(nesf_element_get(118)->symbol, "Og");
    assert_int_equal(nesf_element_z("FE"), 26);
    assert_int_equal(nesf_element_z("fe"), 26);
    assert_int_equal(nesf_element_z("O"), 8);
    assert_int_equal(nesf_element_z("Xx"), 0);
    assert_int_equal(nesf_element_z(""), 0);
    assert_int_equal(nesf_element_z("Fe2"), 0);
    assert_int_equal(nesf_element_z("Fe "), 0);
    assert_int_equal(nesf_element_z(NULL), 0);
}

/* a cubic cell holding the given atoms at arbitrary distinct positions */
static nesf_structure *make(const int *z, int n)
{
    nesf_structure *s = nesf_structure_new(n);
    nesf_cellpar p = {5, 5, 5, 90, 90, 90};
    assert_int_equal(nesf_lattice_from_params(&p, &s->lat, NULL), NESF_OK);
    for (int i = 0; i < n; i++) {
        double f[3] = {0.05 * i, 0.5, 0.25};
        assert_int_equal(nesf_structure_add_site(s, z[i], f, NULL), NESF_OK);
    }
    return s;
}

static void check_formula(const int *z, int n, const char *want)
{
    nesf_structure *s = make(z, n);
    char f[64];
    nesf_structure_formula(s, f, sizeof f);
    assert_string_equal(f, want);
    nesf_structure_free(s);
}

static void test_formula(void **state)
{
    (void)state;
    /* expected strings from pymatgen's Composition.reduced_formula */
    check_formula((int[]){27, 4, 23, 27}, 4, "BeVCo2");
    check_formula((int[]){8, 22, 8, 8, 22, 8}, 6, "TiO2");
    check_formula((int[]){8, 56, 22, 8, 8}, 5, "BaTiO3");
    check_formula((int[]){30, 6, 6, 7, 7}, 5, "Zn(CN)2");             /* polyanion */
    check_formula((int[]){22, 30, 83, 83, 8, 8, 8, 8, 8, 8}, 10, "TiZn(BiO3)2");
    check_formula((int[]){3, 15, 8, 8, 8, 8, 3, 3}, 8, "Li3PO4");     /* reduces by 1: no () */
    check_formula((int[]){8, 8}, 2, "O2");                            /* special formulas */
    check_formula((int[]){3, 8, 3, 8}, 4, "Li2O2");
    check_formula((int[]){26}, 1, "Fe");
    check_formula((int[]){10, 26}, 2, "FeNe"); /* no electronegativity: last */
    nesf_structure *e = nesf_structure_new(0);
    char f[8] = "junk";
    nesf_structure_formula(e, f, sizeof f);
    assert_string_equal(f, "");
    nesf_structure_free(e);
    /* truncation never overflows */
    nesf_structure *s = make((int[]){56, 22, 8, 8, 8}, 5);
    char small[4];
    nesf_structure_formula(s, small, sizeof small);
    assert_string_equal(small, "BaT");
    nesf_structure_free(s);
}

static nesf_structure *load_one(const char *rel, int index)
{
    char path[1024];
    dataset_path(path, sizeof path, rel);
    nesf_dataset d;
    nesf_error err = {0};
    int rc = nesf_dataset_load(path, &d, &err);
    if (rc) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(rc, NESF_OK);
    assert_true(index < d.n);
    nesf_structure *s = nesf_structure_copy(d.s[index]);
    nesf_dataset_free(&d);
    return s;
}

static void test_spacegroup(void **state)
{
    (void)state;
    char sym[16];
    nesf_structure *s = load_one("lcs6/val.jsonl", 0); /* mp-866288, Heusler BeVCo2 */
    assert_int_equal(nesf_structure_spacegroup(s, 0.01, sym, sizeof sym), 225);
    assert_string_equal(sym, "Fm-3m");
    /* moving one atom by 0.2 Å breaks the symmetry at 0.01, not at 0.5 */
    s->cart[0] += 0.2;
    double inv[3][3];
    assert_int_equal(nesf_lattice_inverse(&s->lat, inv, NULL), NESF_OK);
    for (int k = 0; k < 3; k++)
        s->frac[k] = s->cart[0] * inv[0][k] + s->cart[1] * inv[1][k] + s->cart[2] * inv[2][k];
    assert_true(nesf_structure_spacegroup(s, 0.01, sym, sizeof sym) < 225);
    assert_int_equal(nesf_structure_spacegroup(s, 0.5, sym, sizeof sym), 225);
    nesf_structure_free(s);

    s = load_one("lcs6/val.jsonl", 10); /* mp-2657, rutile */
    assert_string_equal(s->id, "mp-2657");
    assert_int_equal(nesf_structure_spacegroup(s, 0.01, sym, sizeof sym), 136);
    assert_string_equal(sym, "P4_2/mnm");
    nesf_structure_free(s);

    nesf_structure *empty = nesf_structure_new(0);
    assert_int_equal(nesf_structure_spacegroup(empty, 0.01, sym, sizeof sym), 0);
    assert_string_equal(sym, "");
    nesf_structure_free(empty);
}

static void test_load_lcs6(void **state)
{
    (void)state;
    char path[1024];
    nesf_dataset d;
    nesf_error err = {0};
    dataset_path(path, sizeof path, "lcs6/train.jsonl");
    assert_int_equal(nesf_dataset_load(path, &d, &err), NESF_OK);
    assert_int_equal(d.n, 5418);
    for (int i = 0; i < d.n; i++) {
        assert_int_equal(nesf_structure_validate(d.s[i], NULL), NESF_OK);
        assert_true(d.s[i]->n >= 1);
        assert_true(d.s[i]->id[0] != 0);
    }
    nesf_dataset_free(&d);
    assert_int_equal(d.n, 0);

    dataset_path(path, sizeof path, "lcs6/val.jsonl");
    assert_int_equal(nesf_dataset_load(path, &d, &err), NESF_OK);
    assert_int_equal(d.n, 286);
    const nesf_structure *s = d.s[0];
    assert_string_equal(s->id, "mp-866288");
    assert_int_equal(s->n, 16);
    assert_int_equal(s->z[0], 4);
    assert_int_equal(s->z[4], 23);
    assert_int_equal(s->z[15], 27);
    assert_true(fabs(s->lat.m[0][0] - 5.502738) < 1e-12);
    /* site 2: cart (0, 2.751369, 2.751369) -> frac (0, 0.5, 0.5) */
    assert_true(fabs(s->cart[3 * 1 + 1] - 2.751369) < 1e-12);
    assert_true(fabs(s->frac[3 * 1 + 1] - 0.5) < 1e-12);
    assert_true(fabs(s->frac[3 * 1 + 0]) < 1e-12);
    nesf_dataset_free(&d);

    dataset_path(path, sizeof path, "ybco13/fold0/train.jsonl");
    assert_int_equal(nesf_dataset_load(path, &d, &err), NESF_OK);
    assert_int_equal(d.n, 90);
    for (int i = 0; i < d.n; i++) assert_int_equal(d.s[i]->n, 13);
    nesf_dataset_free(&d);

    assert_int_equal(nesf_dataset_load("/nonexistent/x.jsonl", &d, &err), NESF_ERR_IO);
    assert_non_null(strstr(err.msg, "/nonexistent/x.jsonl"));
}

static void test_vocab(void **state)
{
    (void)state;
    char path[1024];
    nesf_vocab v;
    nesf_error err = {0};
    dataset_path(path, sizeof path, "lcs6/meta.json");
    assert_int_equal(nesf_vocab_load(path, &v, &err), NESF_OK);
    assert_string_equal(v.name, "lcs6");
    assert_int_equal(v.n, 80);
    assert_int_equal(v.z[0], 1);
    assert_int_equal(v.z[79], 94);
    assert_int_equal(nesf_vocab_class(&v, 1), 0);
    assert_int_equal(nesf_vocab_class(&v, 8), 6);
    assert_int_equal(nesf_vocab_class(&v, 94), 79);
    assert_int_equal(nesf_vocab_class(&v, 2), -1);
    dataset_path(path, sizeof path, "ybco13/meta.json");
    assert_int_equal(nesf_vocab_load(path, &v, &err), NESF_OK);
    assert_int_equal(v.n, 31);
    assert_int_equal(v.z[0], 8);
}

static char *write_temp(const char *text)
{
    char *path = strdup("/tmp/nesf_test_XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t n = strlen(text);
    assert_int_equal(write(fd, text, n), (ssize_t)n);
    close(fd);
    return path;
}

#define CUBE "\"lattice\":{\"matrix\":[[4,0,0],[0,4,0],[0,0,4]]}"

/* Each bad line must fail with the given code, naming line 3 and the key. */
static void expect_bad_line(const char *line, int code, const char *needle)
{
    char text[4096];
    snprintf(text, sizeof text,
             "{" CUBE ",\"species\":[\"Fe\"],\"cart_coords\":[[0,0,0]]}\n\n%s\n", line);
    char *path = write_temp(text);
    nesf_dataset d;
    nesf_error err = {0};
    int rc = nesf_dataset_load(path, &d, &err);
    if (rc != code || !strstr(err.msg, ":3: ") || !strstr(err.msg, needle))
        fprintf(stderr, "line %s -> rc %d msg '%s'\n", line, rc, err.msg);
    assert_int_equal(rc, code);
    assert_non_null(strstr(err.msg, ":3: "));
    assert_non_null(strstr(err.msg, needle));
    assert_int_equal(d.n, 0);
    assert_null(d.s);
    unlink(path);
    free(path);
}

static void test_bad_lines(void **state)
{
    (void)state;
    expect_bad_line("{" CUBE ",\"species\":[\"Fe\"],\"cart_coords\":[[0,0,", NESF_ERR_PARSE, "column");
    expect_bad_line("{" CUBE ",\"species\":[\"Qq\"],\"cart_coords\":[[0,0,0]]}", NESF_ERR_NOTFOUND, "Qq");
    expect_bad_line("{" CUBE ",\"species\":[\"Fe\"],\"cart_coords\":[[0,0,NaN]]}", NESF_ERR_PARSE, "column");
    expect_bad_line("{" CUBE ",\"species\":[\"Fe\"],\"cart_coords\":[[0,0,1e999]]}", NESF_ERR_PARSE, "overflow");
    expect_bad_line("{" CUBE ",\"species\":[\"Fe\"],\"cart_coords\":[[0,0]]}", NESF_ERR_FORMAT, "cart_coords[0]");
    expect_bad_line("{" CUBE ",\"species\":[\"Fe\",\"O\"],\"cart_coords\":[[0,0,0]]}", NESF_ERR_FORMAT, "2 species");
    expect_bad_line("{" CUBE ",\"species\":[\"Fe\"],\"cart_coords\":[[0,\"a\",0]]}", NESF_ERR_FORMAT, "[0][1]");
    expect_bad_line("{\"lattice\":{\"matrix\":[[4,0,0],[0,4,0],[4,0,0]]},\"species\":[\"Fe\"],"
                    "\"frac_coords\":[[0,0,0]]}", NESF_ERR_INVALID, "singular");
    expect_bad_line("{\"lattice\":{\"matrix\":[[4,0,0],[0,4,0]]},\"species\":[],\"frac_coords\":[]}",
                    NESF_ERR_FORMAT, "3x3");
    expect_bad_line("{\"species\":[\"Fe\"],\"frac_coords\":[[0,0,0]]}", NESF_ERR_FORMAT, "lattice");
    expect_bad_line("{" CUBE ",\"species\":[\"Fe\"]}", NESF_ERR_FORMAT, "cart_coords");
    expect_bad_line("[1,2,3]", NESF_ERR_FORMAT, "object");
    /* found by fuzzing: finite but absurd cells overflowed the writers */
    expect_bad_line("{\"lattice\":{\"matrix\":[[5,1e306,0],[0,5,0],[0,0,5]]},\"species\":[\"Fe\"],"
                    "\"frac_coords\":[[0,0,0]]}", NESF_ERR_INVALID, "cell vector 1 is 1e+306 Å long");
    expect_bad_line("{" CUBE ",\"species\":[\"Fe\"],\"frac_coords\":[[0,-2e6,0]]}",
                    NESF_ERR_INVALID, "fractional coordinate -2e+06 out of range");
    expect_bad_line("{" CUBE ",\"sites\":[{\"species\":[{\"element\":\"Fe\",\"occu\":0.5}],"
                    "\"abc\":[0,0,0]}]}", NESF_ERR_UNSUPPORTED, "partially occupied");
    expect_bad_line("{" CUBE ",\"sites\":[{\"species\":[{\"element\":\"Fe\",\"occu\":0.5},"
                    "{\"element\":\"Co\",\"occu\":0.5}],\"abc\":[0,0,0]}]}", NESF_ERR_UNSUPPORTED,
                    "disordered");
    expect_bad_line("{" CUBE ",\"sites\":[{\"species\":[{\"element\":\"X0+\",\"occu\":1}],"
                    "\"abc\":[0,0,0]}]}", NESF_ERR_NOTFOUND, "X0+");
}

static void test_sjson_roundtrip(void **state)
{
    (void)state;
    nesf_structure *s = load_one("lcs6/train.jsonl", 7);
    for (nesf_sjson_style st = NESF_SJSON_DATASET; st <= NESF_SJSON_PYMATGEN; st++) {
        json_t *j = nesf_sjson_to_json(s, st, 0.01);
        assert_non_null(j);
        char *text = nesf_sjson_dumps(j);
        json_decref(j);
        nesf_structure **list;
        int n;
        nesf_error err = {0};
        assert_int_equal(nesf_sio_read_buffer(text, strlen(text), NULL, NESF_FORMAT_AUTO, &list,
                                              &n, &err), NESF_OK);
        assert_int_equal(n, 1);
        const nesf_structure *r = list[0];
        assert_int_equal(r->n, s->n);
        for (int i = 0; i < 3; i++)
            for (int k = 0; k < 3; k++) assert_true(fabs(r->lat.m[i][k] - s->lat.m[i][k]) < 1e-12);
        for (int i = 0; i < s->n; i++) {
            assert_int_equal(r->z[i], s->z[i]);
            for (int k = 0; k < 3; k++) {
                assert_true(fabs(r->cart[3 * i + k] - s->cart[3 * i + k]) < 1e-12);
                assert_true(fabs(r->frac[3 * i + k] - s->frac[3 * i + k]) < 1e-12);
            }
        }
        if (st == NESF_SJSON_FULL) {
            assert_non_null(strstr(text, "\"formula\":"));
            assert_non_null(strstr(text, "\"spacegroup\":{"));
            assert_non_null(strstr(text, "\"volume\":"));
        }
        if (st == NESF_SJSON_PYMATGEN) {
            assert_non_null(strstr(text, "\"@class\":\"Structure\""));
            assert_non_null(strstr(text, "\"sites\":[{\"species\":[{\"element\":"));
        }
        nesf_structure_list_free(list, n);
        free(text);
    }
    nesf_structure_free(s);
}

/* writers never emit a partial document */
static void test_sjson_writer_refuses(void **state)
{
    (void)state;
    nesf_structure *s = load_one("lcs6/val.jsonl", 3);
    s->cart[4] = NAN;
    for (nesf_sjson_style st = NESF_SJSON_DATASET; st <= NESF_SJSON_PYMATGEN; st++)
        assert_null(nesf_sjson_to_json(s, st, 0));
    s->cart[4] = 0;
    s->z[1] = 0;
    assert_null(nesf_sjson_to_json(s, NESF_SJSON_DATASET, 0));
    nesf_structure_free(s);
}

static void test_detect(void **state)
{
    (void)state;
    const char *obj = "{\"a\":1}", *lines = " {\"a\":1}\n{\"a\":2}\n", *arr = "[{}]";
    assert_int_equal(nesf_sio_detect(obj, strlen(obj), NULL), NESF_FORMAT_JSON);
    assert_int_equal(nesf_sio_detect(lines, strlen(lines), NULL), NESF_FORMAT_JSONL);
    assert_int_equal(nesf_sio_detect(arr, strlen(arr), NULL), NESF_FORMAT_JSON);
    assert_int_equal(nesf_sio_detect("data_x\n", 7, NULL), NESF_FORMAT_CIF);
    assert_int_equal(nesf_sio_detect(obj, strlen(obj), "x.CIF"), NESF_FORMAT_CIF);
    assert_int_equal(nesf_sio_detect(obj, strlen(obj), "x.jsonl"), NESF_FORMAT_JSONL);
    nesf_structure **list = (nesf_structure **)1;
    int n = 7;
    nesf_error err = {0};
    assert_int_not_equal(nesf_sio_read_buffer("", 0, "empty.json", NESF_FORMAT_AUTO, &list, &n,
                                              &err), NESF_OK);
    assert_null(list);
    assert_int_equal(n, 0);
    assert_non_null(strstr(err.msg, "empty.json"));
    assert_int_not_equal(nesf_sio_read_buffer("\n\n", 2, "e.jsonl", NESF_FORMAT_AUTO, &list, &n,
                                              &err), NESF_OK);
    assert_int_not_equal(nesf_sio_read_buffer("[]", 2, NULL, NESF_FORMAT_AUTO, &list, &n, &err),
                         NESF_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_elements),
        cmocka_unit_test(test_formula),
        cmocka_unit_test(test_spacegroup),
        cmocka_unit_test(test_load_lcs6),
        cmocka_unit_test(test_vocab),
        cmocka_unit_test(test_bad_lines),
        cmocka_unit_test(test_sjson_roundtrip),
        cmocka_unit_test(test_sjson_writer_refuses),
        cmocka_unit_test(test_detect),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

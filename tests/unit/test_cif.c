/* CIF reader and writers: syntax features, symmetry expansion, and broken
 * files that must fail with file, line and a clear message. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "cif.h"
#include "sio.h"
#include "structure.h"

#define SITES_ "loop_ _atom_site_label _atom_site_fract_x _atom_site_fract_y _atom_site_fract_z\n"

/* rutile as pymatgen's CifWriter(symprec=0.01) writes it */
static const char *rutile =
    "# generated using pymatgen\n"
    "data_TiO2\n"
    "_symmetry_space_group_name_H-M   P4_2/mnm\n"
    "_cell_length_a   4.65327200\n_cell_length_b   4.65327200\n_cell_length_c   2.96920300\n"
    "_cell_angle_alpha   90.00000000\n_cell_angle_beta   90.00000000\n"
    "_cell_angle_gamma   90.00000000\n"
    "_symmetry_Int_Tables_number   136\n"
    "loop_\n _symmetry_equiv_pos_site_id\n _symmetry_equiv_pos_as_xyz\n"
    "  1  'x, y, z'\n  2  '-x, -y, -z'\n  3  '-y+1/2, x+1/2, z+1/2'\n"
    "  4  'y+1/2, -x+1/2, -z+1/2'\n  5  '-x, -y, z'\n  6  'x, y, -z'\n"
    "  7  'y+1/2, -x+1/2, z+1/2'\n  8  '-y+1/2, x+1/2, -z+1/2'\n  9  'x+1/2, -y+1/2, -z+1/2'\n"
    "  10  '-x+1/2, y+1/2, z+1/2'\n  11  '-y, -x, -z'\n  12  'y, x, z'\n"
    "  13  '-x+1/2, y+1/2, -z+1/2'\n  14  'x+1/2, -y+1/2, z+1/2'\n  15  'y, x, -z'\n"
    "  16  '-y, -x, z'\n"
    "loop_\n _atom_site_type_symbol\n _atom_site_label\n _atom_site_symmetry_multiplicity\n"
    " _atom_site_fract_x\n _atom_site_fract_y\n _atom_site_fract_z\n _atom_site_occupancy\n"
    "  Ti  Ti0  2  0.00000000  0.00000000  0.00000000  1\n"
    "  O  O1  4  0.19542000  0.80458000  0.50000000  1\n";

static nesf_structure **read_ok(const char *text, int want_n)
{
    nesf_structure **list;
    int n;
    nesf_error err = {0};
    int rc = nesf_cif_read(text, strlen(text), "t.cif", &list, &n, &err);
    if (rc) fprintf(stderr, "unexpected: %s\n", err.msg);
    assert_int_equal(rc, NESF_OK);
    assert_int_equal(n, want_n);
    return list;
}

/* Fails with code, and a message starting "t.cif:LINE:" (line > 0 when
 * given) containing needle. */
static void read_bad(const char *text, size_t len, int code, int line, const char *needle)
{
    nesf_structure **list = (nesf_structure **)&list;
    int n = 99;
    nesf_error err = {0};
    int rc = nesf_cif_read(text, len, "t.cif", &list, &n, &err);
    char want[32];
    snprintf(want, sizeof want, "t.cif:%d:", line);
    if (rc != code || !strstr(err.msg, needle) || (line > 0 && strncmp(err.msg, want, strlen(want))))
        fprintf(stderr, "rc %d (want %d), msg '%s' (want '%s' and '%s')\n", rc, code, err.msg, want,
                needle);
    assert_int_equal(rc, code);
    assert_null(list);
    assert_int_equal(n, 0);
    assert_non_null(strstr(err.msg, needle));
    if (line > 0) assert_int_equal(strncmp(err.msg, want, strlen(want)), 0);
}

/* sites of s and the (frac, Z) list match one to one, periodically */
static void assert_sites(const nesf_structure *s, int n, const int *z, const double (*f)[3], double tol)
{
    assert_int_equal(s->n, n);
    int used[64] = {0};
    for (int i = 0; i < n; i++) {
        int found = -1;
        for (int j = 0; j < s->n && found < 0; j++) {
            if (used[j] || s->z[j] != z[i]) continue;
            double m = 0;
            for (int k = 0; k < 3; k++) {
                double d = s->frac[3 * j + k] - f[i][k];
                d -= nearbyint(d);
                if (fabs(d) > m) m = fabs(d);
            }
            if (m < tol) found = j;
        }
        if (found < 0) fprintf(stderr, "no site Z=%d at %g %g %g\n", z[i], f[i][0], f[i][1], f[i][2]);
        assert_true(found >= 0);
        used[found] = 1;
    }
}

static void test_rutile(void **state)
{
    (void)state;
    nesf_structure **l = read_ok(rutile, 1);
    const nesf_structure *s = l[0];
    assert_string_equal(s->id, "TiO2");
    const double f[6][3] = {{0.5, 0.5, 0.5}, {0, 0, 0}, {0.19542, 0.80458, 0.5},
                            {0.80458, 0.19542, 0.5}, {0.30458, 0.30458, 0}, {0.69542, 0.69542, 0}};
    assert_sites(s, 6, (int[]){22, 22, 8, 8, 8, 8}, f, 1e-9);
    /* the identity copy comes first, and everything is inside the cell */
    assert_int_equal(s->z[0], 22);
    assert_true(s->frac[0] == 0 && s->frac[1] == 0 && s->frac[2] == 0);
    for (int i = 0; i < 3 * s->n; i++) assert_true(s->frac[i] >= 0 && s->frac[i] < 1);
    assert_true(fabs(s->lat.m[2][2] - 2.969203) < 1e-12);
    char sym[16];
    assert_int_equal(nesf_structure_spacegroup(s, 0.01, sym, sizeof sym), 136);
    nesf_structure_list_free(l, 1);
}

/* comments, quotes, text fields, uncertainties, DDL2 tags, Cartesian
 * coordinates, labels without type symbols, several blocks */
static void test_syntax(void **state)
{
    (void)state;
    const char *text =
        "#\\#CIF_1.1\n"
        "global_\n_audit_creation_method 'hand made'\n"
        "data_info   # a block without a structure is skipped\n"
        "_publ_section_title\n;\nA title with 'quotes', \"more\" and data_ inside;\n"
        "still the title\n;\n"
        "data_si\n"
        "_cell_length_a 5.4310(2) _cell_length_b 5.4310(2)\n_cell_length_c\n5.4310(12)\n"
        "_cell_angle_alpha 90 _cell_angle_beta 90.0(0) _cell_angle_gamma '90.'\n"
        "_space_group_name_H-M_alt 'P 1'\n"
        "loop_ _atom_site_label _atom_site_fract_x _atom_site_fract_y _atom_site_fract_z\n"
        "Si1 0 0 0  'Si2' .25 .25 .25 # comment after a row\n"
        "Si3 0.5(1) 0.5 -0.0\n"
        "data_ddl2\n"
        "_cell.length_a 4 _cell.length_b 4 _cell.length_c 4\n"
        "_cell.angle_alpha 90 _cell.angle_beta 90 _cell.angle_gamma 90\n"
        "loop_\n_space_group_symop.id\n_space_group_symop.operation_xyz\n"
        "1 x,y,z\n2 \"-X, 1/2+y, -z+0.5\"\n"
        "loop_\n_atom_site.label\n_atom_site.type_symbol\n_atom_site.Cartn_x\n_atom_site.Cartn_y\n"
        "_atom_site.Cartn_z\n_atom_site.occupancy\n"
        "CL1 Cl1- 1 1 1 1.0\nX9 Fe2+ 2 1 1 ?\nO1 ? 1 2 1 0.9995\n";
    nesf_structure **l = read_ok(text, 2);
    assert_string_equal(l[0]->id, "si");
    assert_true(fabs(l[0]->lat.m[0][0] - 5.431) < 1e-12);
    assert_sites(l[0], 3, (int[]){14, 14, 14},
                 (const double[][3]){{0, 0, 0}, {.25, .25, .25}, {.5, .5, 0}}, 1e-12);
    assert_string_equal(l[1]->id, "ddl2");
    /* Cartesian (1,1,1) in a 4 Å cube is (.25,.25,.25); -x, y+1/2, -z+1/2 maps it to (.75,.75,.25) */
    assert_sites(l[1], 6, (int[]){17, 17, 26, 26, 8, 8},
                 (const double[][3]){{.25, .25, .25}, {.75, .75, .25}, {.5, .25, .25},
                                     {.5, .75, .25}, {.25, .5, .25}, {.75, 0, .25}}, 1e-12);
    nesf_structure_list_free(l, 2);
}

static int count_sites(const char *cell, const char *group, const char *sites)
{
    char text[1024];
    snprintf(text, sizeof text, "data_g\n%s%s\n" SITES_ "%s", cell, group, sites);
    nesf_structure **l = read_ok(text, 1);
    int n = l[0]->n;
    nesf_structure_list_free(l, 1);
    return n;
}

/* Blocks that name their space group instead of listing operations:
 * spglib's database provides them (counts are multiplicities in the ITA). */
static void test_named_groups(void **state)
{
    (void)state;
    const char *cubic = "_cell_length_a 5 _cell_length_b 5 _cell_length_c 5\n"
                        "_cell_angle_alpha 90 _cell_angle_beta 90 _cell_angle_gamma 90\n";
    const char *mono = "_cell_length_a 5 _cell_length_b 6 _cell_length_c 7\n"
                       "_cell_angle_alpha 90 _cell_angle_beta 100 _cell_angle_gamma 90\n";
    const char *hex = "_cell_length_a 3 _cell_length_b 3 _cell_length_c 12\n"
                      "_cell_angle_alpha 90 _cell_angle_beta 90 _cell_angle_gamma 120\n";
    const char *rh = "_cell_length_a 4 _cell_length_b 4 _cell_length_c 4\n"
                     "_cell_angle_alpha 60 _cell_angle_beta 60 _cell_angle_gamma 60\n";
    assert_int_equal(count_sites(cubic, "_symmetry_space_group_name_H-M 'F m -3 m'",
                                 "Na1 0 0 0\nCl1 .5 .5 .5\n"), 8);
    assert_int_equal(count_sites(cubic, "_space_group_IT_number 225", "Fe1 0 0 0\n"), 4);
    assert_int_equal(count_sites(cubic, "_symmetry_space_group_name_Hall '-F 4 2 3'",
                                 "Fe1 .1 .2 .35\n"), 192);
    assert_int_equal(count_sites(cubic, "_symmetry_space_group_name_H-M 'F d -3 m :2'",
                                 "Si1 .125 .125 .125\n"), 8);
    assert_int_equal(count_sites(cubic, "_symmetry_space_group_name_H-M 'F D -3 M Z'",
                                 "Si1 .125 .125 .125\n"), 8);
    assert_int_equal(count_sites(cubic, "_symmetry_space_group_name_H-M 'Fd-3m:1'", "Si1 0 0 0\n"), 8);
    assert_int_equal(count_sites(mono, "_symmetry_space_group_name_H-M 'P 21/c'", "O1 .1 .2 .3\n"), 4);
    assert_int_equal(count_sites(mono, "_symmetry_space_group_name_H-M 'P 1 21/n 1'",
                                 "O1 .1 .2 .3\nO2 0 0 0\n"), 6);
    assert_int_equal(count_sites(hex, "_symmetry_space_group_name_H-M 'R -3 m'", "Bi1 0 0 0\n"), 3);
    assert_int_equal(count_sites(hex, "_symmetry_space_group_name_H-M 'R -3 m H'", "Bi1 0 0 0\n"), 3);
    assert_int_equal(count_sites(rh, "_symmetry_space_group_name_H-M 'R -3 m'", "Bi1 0 0 0\n"), 1);
    assert_int_equal(count_sites(rh, "_symmetry_space_group_name_H-M 'P 1'\n_space_group_IT_number 1",
                                 "Bi1 0 0 0\n"), 1);
    /* the 21/c operations are the standard ones: (x,y,z) -> (-x, y+1/2, -z+1/2) */
    char text[1024];
    snprintf(text, sizeof text, "data_g\n%s_symmetry_space_group_name_H-M 'P 21/c'\n" SITES_
             "O1 .1 .2 .3\n", mono);
    nesf_structure **l = read_ok(text, 1);
    assert_sites(l[0], 4, (int[]){8, 8, 8, 8},
                 (const double[][3]){{.1, .2, .3}, {.9, .7, .2}, {.9, .8, .7}, {.1, .3, .8}}, 1e-12);
    nesf_structure_list_free(l, 1);
}

/* special positions: copies that coincide are one site */
static void test_merge(void **state)
{
    (void)state;
    const char *text =
        "data_m\n_cell_length_a 3 _cell_length_b 3 _cell_length_c 3\n"
        "_cell_angle_alpha 90 _cell_angle_beta 90 _cell_angle_gamma 90\n"
        "loop_ _symmetry_equiv_pos_as_xyz x,y,z -x,-y,-z x+1/2,y+1/2,z -x+1/2,-y+1/2,-z\n"
        "loop_ _atom_site_type_symbol _atom_site_fract_x _atom_site_fract_y _atom_site_fract_z\n"
        "Cs 0 0 0\n"                 /* 2 copies */
        "Cl 0.5 0 0.5\n"             /* 2 copies: -x = 0.5 */
        "Br 0.1 0.2 0.3\n"           /* 4 copies */
        "I 0.99999 0 0.5\n";         /* -x = 1e-5 ~ 0.99999 (3e-5 Å): 2 copies */
    nesf_structure **l = read_ok(text, 1);
    assert_int_equal(l[0]->n, 10);
    nesf_structure_list_free(l, 1);
    /* two elements on one position is disorder */
    const char *clash =
        "data_c\n_cell_length_a 3 _cell_length_b 3 _cell_length_c 3\n"
        "_cell_angle_alpha 90 _cell_angle_beta 90 _cell_angle_gamma 90\n"
        "loop_ _atom_site_label _atom_site_fract_x _atom_site_fract_y _atom_site_fract_z\n"
        "Fe1 0 0 0\nCo1 0.001 0 1\n";
    read_bad(clash, strlen(clash), NESF_ERR_UNSUPPORTED, 6, "'Fe1' (Fe) and 'Co1' (Co)");
}

/* The GIU zeolite (IZA database via Debian's libavogadro-data,
 * tests/data/GIU.cif): P63/mmc, 18 sites, coordinates to 4 decimals.  Its
 * cell holds Si96 O192 (SiO2).  pymatgen's CifParser gives 306 sites,
 * O210: it merges copies by a fractional tolerance (1e-4) and keeps 18
 * pairs of O copies 0.0013 Å apart (O5 on a mirror, its x written
 * rounded).  Merged at 0.01 Å under periodicity, as here, they are one
 * atom each, and no two atoms are closer than a Si-O bond. */
static void test_giu_zeolite(void **state)
{
    (void)state;
    const char *src = getenv("NESF_SOURCE_ROOT");
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/data/GIU.cif", src ? src : ".");
    nesf_structure **l;
    int n;
    nesf_error err = {0};
    assert_int_equal(nesf_sio_read_file(path, NESF_FORMAT_AUTO, &l, &n, &err), NESF_OK);
    assert_int_equal(n, 1);
    const nesf_structure *s = l[0];
    int si = 0, o = 0;
    for (int i = 0; i < s->n; i++) si += s->z[i] == 14, o += s->z[i] == 8;
    assert_int_equal(s->n, 288);
    assert_int_equal(si, 96);
    assert_int_equal(o, 192);
    double dmin = INFINITY; /* nearest pair under periodicity (the cell is > 12 Å) */
    for (int i = 0; i < s->n; i++)
        for (int j = i + 1; j < s->n; j++) {
            double d[3], c[3];
            for (int k = 0; k < 3; k++) {
                d[k] = s->frac[3 * i + k] - s->frac[3 * j + k];
                d[k] -= nearbyint(d[k]);
            }
            nesf_lattice_frac_to_cart(&s->lat, d, c);
            dmin = fmin(dmin, sqrt(c[0] * c[0] + c[1] * c[1] + c[2] * c[2]));
        }
    assert_true(dmin > 1.5 && dmin < 1.7); /* a Si-O bond */
    nesf_structure_list_free(l, n);
}

#define CELL "_cell_length_a 4 _cell_length_b 4 _cell_length_c 4\n" \
             "_cell_angle_alpha 90 _cell_angle_beta 90 _cell_angle_gamma 90\n"
#define SITES "loop_ _atom_site_label _atom_site_fract_x _atom_site_fract_y _atom_site_fract_z\n"

static void test_broken(void **state)
{
    (void)state;
    const char *t;
#define BAD(text, code, line, needle) (t = (text), read_bad(t, strlen(t), code, line, needle))
    BAD("", NESF_ERR_PARSE, 1, "no data_ block");
    BAD("  \n# only a comment\n", NESF_ERR_PARSE, 3, "no data_ block");
    BAD("data_x\n_title 't'\n", NESF_ERR_FORMAT, 0, "no data block holds a structure");
    BAD("_cell_length_a 4\ndata_x\n", NESF_ERR_PARSE, 1, "before the first data_");
    BAD("data_x\n" CELL SITES "Fe1 0 0\n", NESF_ERR_PARSE, 4, "3 values for 4 tags");
    BAD("data_x\n" CELL SITES "Fe1 0 0 0\nO1 0.5 0.5\n", NESF_ERR_PARSE, 4, "truncated loop");
    BAD("data_x\n" CELL SITES, NESF_ERR_PARSE, 4, "no values");
    BAD("data_x\n" CELL "loop_\n", NESF_ERR_PARSE, 4, "without tags");
    BAD("data_x\n" CELL SITES "Fe1 'unterminated 0 0\n", NESF_ERR_PARSE, 5, "unterminated quoted");
    BAD("data_x\n_title \"abc\n" CELL, NESF_ERR_PARSE, 2, "unterminated quoted");
    BAD("data_x\n_title\n;\ntext that never ends\n" CELL, NESF_ERR_PARSE, 3, "unterminated text field");
    BAD("data_x\n_cell_length_a\n", NESF_ERR_PARSE, 2, "has no value");
    BAD("data_x\n_cell_length_a _cell_length_b 4\n", NESF_ERR_PARSE, 2, "has no value");
    BAD("data_x\nstray\n", NESF_ERR_PARSE, 2, "without a tag");
    BAD("data_x\n" SITES "Fe1 0 0 0\n", NESF_ERR_PARSE, 1, "_cell_length_a missing");
    BAD("data_x\n_cell_length_a 4 _cell_length_b 4 _cell_length_c 4\n" SITES "Fe1 0 0 0\n",
        NESF_ERR_PARSE, 1, "_cell_angle_alpha missing");
    BAD("data_x\n_cell_length_a 0 _cell_length_b 4 _cell_length_c 4\n"
        "_cell_angle_alpha 90 _cell_angle_beta 90 _cell_angle_gamma 90\n" SITES "Fe1 0 0 0\n",
        NESF_ERR_PARSE, 1, "a length in (0");
    BAD("data_x\n_cell_length_a 4 _cell_length_b 4 _cell_length_c 4\n"
        "_cell_angle_alpha 120 _cell_angle_beta 120 _cell_angle_gamma 120\n" SITES "Fe1 0 0 0\n",
        NESF_ERR_PARSE, 1, "do not form a cell");
    BAD("data_x\n_cell_length_a 4 _cell_length_b 4 _cell_length_c 4\n"
        "_cell_angle_alpha 90 _cell_angle_beta 90 _cell_angle_gamma 180\n" SITES "Fe1 0 0 0\n",
        NESF_ERR_PARSE, 1, "an angle in (0, 180)");
    BAD("data_x\n_cell_length_a 1e999 _cell_length_b 4 _cell_length_c 4\n", NESF_ERR_PARSE, 2,
        "'1e999' is not a finite number");
    BAD("data_x\n_cell_length_a 1e300 _cell_length_b 4 _cell_length_c 4\n"
        "_cell_angle_alpha 90 _cell_angle_beta 90 _cell_angle_gamma 90\n" SITES "Fe1 0 0 0\n",
        NESF_ERR_PARSE, 1, "a length in (0");
    BAD("data_x\n_cell_length_a nan _cell_length_b 4 _cell_length_c 4\n", NESF_ERR_PARSE, 2,
        "not a finite number");
    BAD("data_x\n_cell_length_a 4(1 _cell_length_b 4 _cell_length_c 4\n", NESF_ERR_PARSE, 2,
        "not a finite number");
    BAD("data_x\n" CELL SITES "Fe1 0 1e40 0\n", NESF_ERR_PARSE, 5, "out of range");
    BAD("data_x\n" CELL SITES "Fe1 0 ? 0\n", NESF_ERR_PARSE, 5, "a number expected");
    BAD("data_x\n" CELL "_title x\n", NESF_ERR_PARSE, 1, "no atom sites");
    BAD("data_x\n" CELL SITES "Qq1 0 0 0\n", NESF_ERR_NOTFOUND, 5, "unknown element 'Qq1'");
    BAD("data_x\n" CELL "loop_ _atom_site_label _atom_site_type_symbol _atom_site_fract_x "
        "_atom_site_fract_y _atom_site_fract_z\nA1 D 0 0 0\n", NESF_ERR_NOTFOUND, 5,
        "atom site 'A1': unknown element 'D'");
    BAD("data_x\n" CELL "loop_ _atom_site_label _atom_site_fract_x _atom_site_fract_y "
        "_atom_site_fract_z _atom_site_occupancy\nFe1 0 0 0 1\nCo2 .5 .5 .5 0.5\n",
        NESF_ERR_UNSUPPORTED, 6, "atom site 'Co2' is partially occupied (occupancy 0.5)");
    BAD("data_x\n" CELL "loop_ _atom_site_label _atom_site_fract_x _atom_site_fract_y\n"
        "Fe1 0 0\n", NESF_ERR_PARSE, 4, "_atom_site_fract_z missing");
    BAD("data_x\n" CELL "_atom_site_type_symbol Fe\n" SITES "Fe1 0 0 0\nFe2 .5 .5 .5\n",
        NESF_ERR_PARSE, 4, "not in the loop");
    BAD("data_x\n" CELL "_cell_length_a 5\n" SITES "Fe1 0 0 0\n", NESF_ERR_PARSE, 4, "given twice");
    BAD("data_x\n" CELL "_symmetry_space_group_name_H-M 'F d -3 m'\n" SITES "Si1 0 0 0\n",
        NESF_ERR_PARSE, 4, "two origin choices");
    BAD("data_x\n" CELL "_symmetry_space_group_name_H-M 'Q 9'\n" SITES "Fe1 0 0 0\n",
        NESF_ERR_PARSE, 4, "space group 'Q 9' unknown");
    BAD("data_x\n" CELL "_symmetry_Int_Tables_number 300\n" SITES "Fe1 0 0 0\n",
        NESF_ERR_PARSE, 4, "1..230 expected");
    BAD("data_x\n" CELL "_symmetry_space_group_name_H-M 'P m -3 m'\n_symmetry_Int_Tables_number 225\n"
        SITES "Fe1 0 0 0\n", NESF_ERR_PARSE, 4, "not of the given number");
    BAD("data_x\n" CELL "loop_ _symmetry_equiv_pos_as_xyz x,y,z 'x,y'\n" SITES "Fe1 0 0 0\n",
        NESF_ERR_PARSE, 4, "'x,y' is not a symmetry operation");
    BAD("data_x\n" CELL "loop_ _symmetry_equiv_pos_as_xyz 'x,y,x'\n" SITES "Fe1 0 0 0\n",
        NESF_ERR_PARSE, 4, "not a symmetry operation");
    BAD("data_x\n" CELL "loop_ _symmetry_equiv_pos_as_xyz 'x,y,z+a'\n" SITES "Fe1 0 0 0\n",
        NESF_ERR_PARSE, 4, "not a symmetry operation");
    BAD("data_x\n" CELL "loop_ _symmetry_equiv_pos_as_xyz 'x/2,y,z'\n" SITES "Fe1 0 0 0\n",
        NESF_ERR_PARSE, 4, "not a symmetry operation");
    /* 193 operations */
    char many[8192] = "data_x\n" CELL "loop_ _symmetry_equiv_pos_as_xyz\n";
    for (int i = 0; i < 193; i++) strcat(many, "x,y,z\n");
    strcat(many, SITES "Fe1 0 0 0\n");
    BAD(many, NESF_ERR_PARSE, 4, "193 symmetry operations");
    /* binary garbage */
    static const char bin[] = "data_x\n\x7f" "ELF\x01\x02\x00\x00";
    read_bad(bin, sizeof bin - 1, NESF_ERR_PARSE, 2, "control byte 0x7f");
    static const char nul[] = "data_x\n_cell_length_a 4\x00\n";
    read_bad(nul, sizeof nul - 1, NESF_ERR_PARSE, 2, "control byte 0x00");
#undef BAD
}

static void roundtrip(const nesf_structure *s, const char *text)
{
    nesf_structure **l = read_ok(text, 1);
    nesf_cellpar p, q;
    nesf_lattice_params(&s->lat, &p);
    nesf_lattice_params(&l[0]->lat, &q);
    assert_true(fabs(p.a - q.a) < 1e-7 && fabs(p.b - q.b) < 1e-7 && fabs(p.c - q.c) < 1e-7);
    assert_true(fabs(p.alpha - q.alpha) < 1e-7 && fabs(p.beta - q.beta) < 1e-7);
    assert_true(fabs(p.gamma - q.gamma) < 1e-7);
    double (*f)[3] = malloc((size_t)s->n * sizeof *f);
    for (int i = 0; i < s->n; i++) memcpy(f[i], s->frac + 3 * i, sizeof f[i]);
    assert_sites(l[0], s->n, s->z, (const double(*)[3])f, 1e-7);
    free(f);
    nesf_structure_list_free(l, 1);
}

static void test_writers(void **state)
{
    (void)state;
    nesf_structure **l = read_ok(rutile, 1);
    nesf_structure *s = l[0];
    char *p1 = nesf_cif_write(s);
    assert_non_null(p1);
    assert_non_null(strstr(p1, "data_TiO2\n"));
    assert_non_null(strstr(p1, "_symmetry_space_group_name_H-M   'P 1'\n"));
    assert_non_null(strstr(p1, "_chemical_formula_sum   'Ti2 O4'\n"));
    assert_non_null(strstr(p1, "_cell_formula_units_Z   2\n"));
    assert_non_null(strstr(p1, "  O  O3  1  0.69542000  0.69542000  0.00000000  1\n"));
    roundtrip(s, p1);
    free(p1);

    char *sym;
    nesf_error err = {0};
    assert_int_equal(nesf_cif_write_symmetrized(s, 0.01, &sym, &err), NESF_OK);
    assert_non_null(strstr(sym, "_symmetry_Int_Tables_number   136\n"));
    assert_non_null(strstr(sym, "'-y+1/2, x+1/2, z+1/2'"));
    /* one line per orbit: Ti (2) and O (4) */
    assert_non_null(strstr(sym, "  Ti  Ti1  2  "));
    assert_non_null(strstr(sym, "  O  O1  4  "));
    assert_null(strstr(sym, "  Ti  Ti2  "));
    roundtrip(s, sym);
    free(sym);

    /* a slightly perturbed site is symmetrized back onto the orbit */
    s->frac[3 * 2 + 0] += 1e-4;
    nesf_structure_update_cart(s);
    assert_int_equal(nesf_cif_write_symmetrized(s, 0.01, &sym, &err), NESF_OK);
    nesf_structure **r = read_ok(sym, 1);
    assert_int_equal(r[0]->n, 6);
    nesf_structure_list_free(r, 1);
    free(sym);
    assert_int_not_equal(nesf_cif_write_symmetrized(s, 0, &sym, &err), NESF_OK);
    assert_null(sym);

    /* id with blanks still gives one valid block name */
    snprintf(s->id, sizeof s->id, "my rutile");
    p1 = nesf_cif_write(s);
    assert_non_null(strstr(p1, "data_my_rutile\n"));
    free(p1);
    nesf_structure_list_free(l, 1);
}

/* sio: CIF detected by content and by extension */
static void test_sio_cif(void **state)
{
    (void)state;
    nesf_structure **l;
    int n;
    nesf_error err = {0};
    assert_int_equal(nesf_sio_read_buffer(rutile, strlen(rutile), NULL, NESF_FORMAT_AUTO, &l, &n,
                                          &err), NESF_OK);
    assert_int_equal(n, 1);
    assert_int_equal(l[0]->n, 6);
    nesf_structure_list_free(l, n);
    assert_int_equal(nesf_sio_read_buffer("{", 1, "x.cif", NESF_FORMAT_AUTO, &l, &n, &err),
                     NESF_ERR_PARSE);
    assert_non_null(strstr(err.msg, "x.cif:1:"));
}

/* Mutations of valid files must give OK or an error, never a crash (the
 * sanitizer build checks memory) and never an empty message. */
static void test_mutations(void **state)
{
    (void)state;
    size_t len = strlen(rutile);
    char *buf = malloc(len + 64);
    uint64_t x = 0x9E3779B97F4A7C15ull;
    int ok = 0, bad = 0;
    for (int it = 0; it < 4000; it++) {
        memcpy(buf, rutile, len);
        size_t n = len;
        int edits = 1 + it % 4;
        for (int e = 0; e < edits; e++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            size_t pos = (size_t)(x % n);
            switch ((x >> 32) % 4) {
            case 0: buf[pos] = (char)(x >> 40); break;                   /* random byte */
            case 1: n = pos; break;                                      /* truncate */
            case 2: buf[pos] = "'\";_#\n 0.(x,-/"[(x >> 40) % 15]; break; /* syntax char */
            default: memmove(buf + pos, buf + pos + 1, n - pos - 1); n--; break;
            }
            if (!n) break;
        }
        nesf_structure **l;
        int cnt;
        nesf_error err = {0};
        if (nesf_cif_read(buf, n, "m.cif", &l, &cnt, &err) == NESF_OK) {
            assert_true(cnt >= 1);
            for (int i = 0; i < cnt; i++) assert_int_equal(nesf_structure_validate(l[i], NULL), NESF_OK);
            nesf_structure_list_free(l, cnt);
            ok++;
        } else {
            assert_true(strlen(err.msg) > 6);
            bad++;
        }
    }
    assert_true(ok > 100 && bad > 100);
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rutile),
        cmocka_unit_test(test_syntax),
        cmocka_unit_test(test_named_groups),
        cmocka_unit_test(test_merge),
        cmocka_unit_test(test_broken),
        cmocka_unit_test(test_writers),
        cmocka_unit_test(test_sio_cif),
        cmocka_unit_test(test_giu_zeolite),
        cmocka_unit_test(test_mutations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

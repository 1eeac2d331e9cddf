/* t-SNE and the SVG latent maps: cluster recovery, determinism, and an
 * SVG that parses as XML and renders (rsvg-convert) with the expected
 * colours where the points are. */
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

#include "fileio.h"
#include "svg.h"
#include "tsne.h"

/* n points in d dimensions around C centres 10 apart; label i % C */
static float *clusters(int n, int d, int C, uint32_t seed)
{
    float *X = malloc((size_t)n * d * sizeof *X);
    for (int i = 0; i < n; i++)
        for (int k = 0; k < d; k++) {
            seed = seed * 1664525u + 1013904223u;
            double u1 = ((seed >> 8) + 1.0) / 16777217.0;
            seed = seed * 1664525u + 1013904223u;
            double u2 = (seed >> 8) / 16777216.0;
            X[(size_t)i * d + k] = (float)((k == i % C ? 10 : 0) +
                                           sqrt(-2 * log(u1)) * cos(2 * M_PI * u2));
        }
    return X;
}

/* Fraction of points whose nearest 2-D neighbour has the same label. */
static double nn_accuracy(const double *Y, int n, int C)
{
    int ok = 0;
    for (int i = 0; i < n; i++) {
        int b = -1;
        double bd = INFINITY;
        for (int j = 0; j < n; j++) {
            double dx = Y[2 * i] - Y[2 * j], dy = Y[2 * i + 1] - Y[2 * j + 1];
            if (j != i && dx * dx + dy * dy < bd) {
                bd = dx * dx + dy * dy;
                b = j;
            }
        }
        ok += b % C == i % C;
    }
    return (double)ok / n;
}

static void run_tsne(double theta)
{
    const int n = 240, d = 16, C = 4;
    float *X = clusters(n, d, C, 7);
    double *Y = malloc((size_t)n * 2 * sizeof *Y), *Y2 = malloc((size_t)n * 2 * sizeof *Y2);
    nesf_tsne_opts o;
    nesf_tsne_opts_default(&o);
    o.theta = theta;
    o.iterations = 500;
    double kl;
    nesf_error err;
    assert_int_equal(nesf_tsne(X, n, d, &o, Y, &kl, &err), 0);
    assert_true(nn_accuracy(Y, n, C) > 0.97);
    /* the layout spreads out (not collapsed near the 1e-4 start) */
    double r = 0;
    for (int i = 0; i < 2 * n; i++) r = fmax(r, fabs(Y[i]));
    assert_true(r > 5);
    if (theta == 0) assert_true(kl > 0 && kl < 2);
    else assert_true(isnan(kl));
    assert_int_equal(nesf_tsne(X, n, d, &o, Y2, NULL, &err), 0);
    assert_memory_equal(Y, Y2, (size_t)n * 2 * sizeof *Y);
    free(X);
    free(Y);
    free(Y2);
}

static void test_tsne_exact(void **state) { (void)state; run_tsne(0); }
static void test_tsne_bh(void **state) { (void)state; run_tsne(0.5); }

static void test_tsne_bad_input(void **state)
{
    (void)state;
    float X[6] = {0, 1, 2, NAN, 4, 5};
    double Y[6];
    nesf_error err;
    assert_int_equal(nesf_tsne(X, 3, 2, NULL, Y, NULL, &err), NESF_ERR_INVALID);
    assert_int_equal(nesf_tsne(X, 1, 2, NULL, Y, NULL, &err), NESF_ERR_INVALID);
    /* identical points must not hang the quadtree */
    float same[40] = {0};
    double Ys[40];
    assert_int_equal(nesf_tsne(same, 20, 2, NULL, Ys, NULL, &err), 0);
}

static void test_viridis(void **state)
{
    (void)state;
    assert_int_equal(nesf_viridis(0), 0x440154);
    assert_int_equal(nesf_viridis(1), 0xfde725);
    assert_int_equal(nesf_viridis(0.5), 0x21918c);
    assert_int_equal(nesf_viridis(NAN), 0x440154);
}

static int sh(const char *cmd)
{
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* Renders an SVG (rsvg-convert) and checks with PIL that the pixel at
 * (x, y) has colour rgb drawn with opacity alpha over white, and that the
 * image is 900 x 680. */
static void check_render(const char *svg, int x, int y, unsigned rgb, double alpha)
{
    unsigned c[3];
    for (int k = 0; k < 3; k++)
        c[k] = (unsigned)lround(alpha * ((rgb >> (16 - 8 * k)) & 255) + (1 - alpha) * 255);
    char dir[] = "/tmp/nesf-svg-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128], png[128], cmd[1024];
    snprintf(path, sizeof path, "%s/map.svg", dir);
    snprintf(png, sizeof png, "%s/map.png", dir);
    assert_int_equal(nesf_write_file(path, svg, strlen(svg), NULL), 0);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 -c \"import xml.etree.ElementTree as E; E.parse('%s')\"", path);
    assert_int_equal(sh(cmd), 0);
    snprintf(cmd, sizeof cmd, "rsvg-convert -o %s %s", png, path);
    assert_int_equal(sh(cmd), 0);
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -c \"from PIL import Image; im=Image.open('%s').convert('RGB'); "
             "assert im.size==(900,680), im.size; p=im.getpixel((%d,%d)); "
             "import sys; sys.exit(0 if all(abs(a-b)<=12 for a,b in zip(p,(%u,%u,%u))) else 1)\"",
             png, x, y, c[0], c[1], c[2]);
    assert_int_equal(sh(cmd), 0);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    sh(cmd);
}

static void test_svg_categorical(void **state)
{
    (void)state;
    /* three groups: bottom-left, top-right (x, y up) and centre */
    enum { N = 30 };
    double xy[2 * N], v[N];
    const char *tips[N];
    for (int i = 0; i < N; i++) {
        int c = i % 3;
        xy[2 * i] = c == 0 ? -10 : c == 1 ? 10 : 0;
        xy[2 * i + 1] = c == 0 ? -10 : c == 1 ? 10 : 0;
        v[i] = c;
        tips[i] = "mp-1 <NaCl & co>";
    }
    const char *names[3] = {"cubic (10)", "hexagonal (10)", "triclinic \"x\" (10)"};
    nesf_scatter p = {N, xy, v, 1, 3, names, "latent map <test>", "crystal system", tips};
    char *svg = nesf_svg_scatter(&p);
    assert_non_null(svg);
    assert_non_null(strstr(svg, "&lt;NaCl &amp; co&gt;"));
    assert_non_null(strstr(svg, "hexagonal (10)"));
    /* plot centre is (350, 340); points span 20 units over 580/1.05 px;
     * ten stacked translucent circles are opaque */
    double scale = 580 / (20 * 1.05);
    check_render(svg, 350, 340, 0x2ca02c, 1.0);                               /* category 2 */
    check_render(svg, (int)(350 - 10 * scale), (int)(340 + 10 * scale), 0x1f77b4, 1.0); /* 0 */
    check_render(svg, (int)(350 + 10 * scale), (int)(340 - 10 * scale), 0xff7f0e, 1.0); /* 1 */
    free(svg);
}

static void test_svg_continuous(void **state)
{
    (void)state;
    double xy[6] = {0, 0, 1, 0, 2, 0}, v[3] = {100, 200, NAN};
    nesf_scatter p = {3, xy, v, 0, 0, NULL, NULL, "cell volume (Å³)", NULL};
    char *svg = nesf_svg_scatter(&p);
    assert_non_null(svg);
    assert_non_null(strstr(svg, "cell volume (Å³)"));
    assert_non_null(strstr(svg, "linearGradient"));
    double scale = 580 / (2 * 1.05);
    check_render(svg, (int)(350 - 1 * scale), 340, 0x440154, 0.85); /* min: dark purple */
    check_render(svg, 350, 340, 0xfde725, 0.85);                    /* max: yellow */
    check_render(svg, (int)(350 + 1 * scale), 340, 0xbbbbbb, 0.85); /* NaN: grey */
    /* colour bar: bottom is the minimum */
    check_render(svg, 670 + 11, 60 + 15 + 295, 0x440154, 1.0);
    free(svg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tsne_exact),
        cmocka_unit_test(test_tsne_bh),
        cmocka_unit_test(test_tsne_bad_input),
        cmocka_unit_test(test_viridis),
        cmocka_unit_test(test_svg_categorical),
        cmocka_unit_test(test_svg_continuous),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

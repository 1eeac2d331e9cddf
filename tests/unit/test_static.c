/* Static file serving for the web viewer: path mapping, content types and
 * every way out of the root that a request could try. */
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "static.h"

typedef struct fixture {
    char base[64];            /* temp dir holding root/ and outside */
    char root[PATH_MAX];
} fixture;

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    strcpy(fx->base, "/tmp/nesf_static_XXXXXX");
    if (!mkdtemp(fx->base)) return -1;
    char p[PATH_MAX];
    snprintf(fx->root, sizeof fx->root, "%s/root", fx->base);
    mkdir(fx->root, 0755);
    snprintf(p, sizeof p, "%s/index.html", fx->root); write_file(p, "<!doctype html>hi");
    snprintf(p, sizeof p, "%s/app.js", fx->root); write_file(p, "console.log(1)");
    snprintf(p, sizeof p, "%s/sub", fx->root); mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/sub/index.html", fx->root); write_file(p, "sub index");
    snprintf(p, sizeof p, "%s/sub/ZnS.cif", fx->root); write_file(p, "data_ZnS");
    snprintf(p, sizeof p, "%s/sub/a b.json", fx->root); write_file(p, "{}");
    snprintf(p, sizeof p, "%s/empty.txt", fx->root); write_file(p, "");
    snprintf(p, sizeof p, "%s/.hidden", fx->root); write_file(p, "secret");
    snprintf(p, sizeof p, "%s/secret.txt", fx->base); write_file(p, "outside");
    /* a link out of the root and a link that stays inside it */
    char t[PATH_MAX];
    snprintf(t, sizeof t, "%s/secret.txt", fx->base);
    snprintf(p, sizeof p, "%s/escape.txt", fx->root);
    if (symlink(t, p) != 0) return -1;
    snprintf(p, sizeof p, "%s/outdir", fx->root);
    if (symlink(fx->base, p) != 0) return -1;
    snprintf(p, sizeof p, "%s/alias.js", fx->root);
    if (symlink("app.js", p) != 0) return -1;
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fx->base);
    int rc = system(cmd);
    free(fx);
    return rc == 0 ? 0 : -1;
}

static void expect_body(const char *root, const char *url, const char *body, const char *type)
{
    nesf_static_file f;
    nesf_error e = {0};
    int rc = nesf_static_load(root, url, &f, &e);
    if (rc) fail_msg("%s: %s", url, e.msg);
    assert_int_equal(f.size, strlen(body));
    assert_memory_equal(f.data, body, f.size);
    assert_string_equal(f.content_type, type);
    assert_true(f.mtime > 0);
    nesf_static_file_free(&f);
    assert_null(f.data);
}

static void expect_code(const char *root, const char *url, int code)
{
    nesf_static_file f;
    nesf_error e = {0};
    int rc = nesf_static_load(root, url, &f, &e);
    if (rc != code) fail_msg("%s: got status %d (%s), want %d", url, rc, e.msg, code);
    assert_true(e.msg[0] != 0);
    assert_null(f.data);
    assert_int_equal(f.size, 0);
}

static void test_serves_files(void **state)
{
    fixture *fx = *state;
    const char *html = "text/html; charset=utf-8";
    expect_body(fx->root, "/", "<!doctype html>hi", html);
    expect_body(fx->root, "/index.html", "<!doctype html>hi", html);
    expect_body(fx->root, "/?from=ZnS&to=CdS", "<!doctype html>hi", html);
    expect_body(fx->root, "/app.js#frag", "console.log(1)", "text/javascript; charset=utf-8");
    expect_body(fx->root, "//sub//ZnS.cif", "data_ZnS", "chemical/x-cif");
    expect_body(fx->root, "/sub/", "sub index", html);
    expect_body(fx->root, "/sub/a%20b.json", "{}", "application/json");
    expect_body(fx->root, "/%61pp.js", "console.log(1)", "text/javascript; charset=utf-8");
    expect_body(fx->root, "/empty.txt", "", "text/plain; charset=utf-8");
    /* a symlink that stays inside the root is fine */
    expect_body(fx->root, "/alias.js", "console.log(1)", "text/javascript; charset=utf-8");
}

static void test_refuses_traversal(void **state)
{
    fixture *fx = *state;
    const char *bad[] = {
        "/../secret.txt", "/sub/../../secret.txt", "/%2e%2e/secret.txt", "/%2E%2E/secret.txt",
        "/sub/%2e%2e/%2e%2e/secret.txt", "/%252e%252e/secret.txt", "/..%2fsecret.txt",
        "/..%5csecret.txt", "/sub\\..\\..\\secret.txt", "/index.html%00.png", "/%zz",
        "/%2", "/.hidden", "/./index.html", "/sub/./ZnS.cif", "/escape.txt",
        "/outdir/secret.txt", "secret.txt", "", "../secret.txt",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_code(fx->root, bad[i], NESF_ERR_INVALID);
}

static void test_not_found(void **state)
{
    fixture *fx = *state;
    expect_code(fx->root, "/missing.js", NESF_ERR_NOTFOUND);
    expect_code(fx->root, "/app.js/x", NESF_ERR_NOTFOUND);
    expect_code(fx->root, "/sub/nothing/", NESF_ERR_NOTFOUND);
    /* a directory without an index.html */
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/bare", fx->root);
    mkdir(p, 0755);
    expect_code(fx->root, "/bare", NESF_ERR_NOTFOUND);
    expect_code(fx->root, "/bare/", NESF_ERR_NOTFOUND);
    expect_code("/nonexistent/nesf/root", "/index.html", NESF_ERR_IO);
}

static void test_resolve_and_long_paths(void **state)
{
    fixture *fx = *state;
    char out[PATH_MAX], want[PATH_MAX + 16], rroot[PATH_MAX];
    assert_non_null(realpath(fx->root, rroot));
    assert_int_equal(nesf_static_resolve(fx->root, "/sub/ZnS.cif", out, sizeof out, NULL), NESF_OK);
    snprintf(want, sizeof want, "%s/sub/ZnS.cif", rroot);
    assert_string_equal(out, want);
    /* too small an output buffer is an error, not a truncation */
    char tiny[8];
    assert_int_equal(nesf_static_resolve(fx->root, "/sub/ZnS.cif", tiny, sizeof tiny, NULL),
                     NESF_ERR_INVALID);
    size_t n = PATH_MAX + 100;
    char *longp = malloc(n + 1);
    longp[0] = '/';
    memset(longp + 1, 'a', n - 1);
    longp[n] = 0;
    expect_code(fx->root, longp, NESF_ERR_INVALID);
    free(longp);
}

static void test_content_types(void **state)
{
    (void)state;
    assert_string_equal(nesf_static_content_type("a/b/style.CSS"), "text/css; charset=utf-8");
    assert_string_equal(nesf_static_content_type("x.svg"), "image/svg+xml");
    assert_string_equal(nesf_static_content_type("x.png"), "image/png");
    assert_string_equal(nesf_static_content_type("x.wasm"), "application/wasm");
    assert_string_equal(nesf_static_content_type("LICENSE"), "application/octet-stream");
    assert_string_equal(nesf_static_content_type("dir.v2/LICENSE"), "application/octet-stream");
    assert_string_equal(nesf_static_content_type("x."), "application/octet-stream");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_serves_files),
        cmocka_unit_test(test_refuses_traversal),
        cmocka_unit_test(test_not_found),
        cmocka_unit_test(test_resolve_and_long_paths),
        cmocka_unit_test(test_content_types),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

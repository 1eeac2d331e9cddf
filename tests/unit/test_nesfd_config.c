/* nesfd configuration: defaults, the JSON file, flags over the file,
 * relative model paths, and the errors for bad keys and values. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "config.h"

static char dir[256];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/nesfd-config-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd);
}

static const char *write_file(const char *name, const char *text)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static int args(nesfd_config *c, nesf_error *err, ...)
{
    char *argv[32] = {"nesfd"};
    int argc = 1;
    va_list ap;
    va_start(ap, err);
    for (char *a; (a = va_arg(ap, char *));) argv[argc++] = a;
    va_end(ap);
    int help, version, check;
    return nesfd_config_from_args(c, argc, argv, &help, &version, &check, err);
}

static void test_defaults(void **state)
{
    (void)state;
    nesfd_config c;
    nesfd_config_defaults(&c);
    nesfd_config_finish(&c);
    assert_string_equal(c.host, "127.0.0.1");
    assert_int_equal(c.port, 8080);
    assert_int_equal(c.n_models, 1);
    assert_string_equal(c.models[0].name, "lcs6");
    assert_string_equal(c.models[0].path, "models/lcs6.safetensors");
    assert_string_equal(c.backend, "auto");
    assert_string_equal(c.token, "");
    assert_int_equal(c.decode.mode, NESF_DECODE_FAST); /* qualified: docs/decoding.md */
    assert_int_equal(c.decode.iterations, 64);
}

static void test_decode_options(void **state)
{
    (void)state;
    nesfd_config c;
    nesf_error err;
    nesfd_config_defaults(&c);
    const char *ok = write_file("dec.json", "{\"decode_options\": {\"mode\": \"paper\", \"iterations\": 32}}");
    if (nesfd_config_load_file(&c, ok, &err)) fail_msg("%s", err.msg);
    assert_int_equal(c.decode.mode, NESF_DECODE_PAPER);
    assert_int_equal(c.decode.iterations, 32);
    assert_float_equal(c.decode.grid_step, 0.5f, 0); /* the rest stays */
    char *dump = nesfd_config_dump(&c);
    assert_non_null(strstr(dump, "\"iterations\": 32"));
    free(dump);
    const char *bad[] = {"{\"decode_options\": {\"mode\": \"slow\"}}",
                         "{\"decode_options\": {\"iterations\": 0}}",
                         "{\"decode_options\": {\"grid_stp\": 0.5}}",
                         "{\"decode_options\": [1]}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_not_equal(nesfd_config_load_file(&c, write_file("bad.json", bad[i]), &err), NESF_OK);
        assert_non_null(strstr(err.msg, "decode"));
    }
}

static void test_file_and_flags(void **state)
{
    (void)state;
    const char *path = write_file("nesfd.json",
        "{\"listen\": \"0.0.0.0:9000\", \"models\": {\"a\": \"m/a.safetensors\", \"b\": \"/abs/b.st\"},"
        " \"backend\": \"cpu\", \"batching\": {\"max_batch\": 7, \"max_delay_us\": 100, \"queue_limit\": 50},"
        " \"body_limit\": 1000, \"timeouts\": {\"request_s\": 2.5, \"idle_s\": 3, \"header_s\": 4,"
        " \"body_s\": 5}, \"body_memory\": 4096, \"max_connections_per_client\": 8,"
        " \"max_request_work\": 123456,"
        " \"auth_token\": \"s3cret\", \"cors_origins\": [\"https://a.example\"], \"log_requests\": false}");
    nesfd_config c;
    nesf_error err;
    nesfd_config_defaults(&c);
    /* --config is read first wherever it is; later flags win over it */
    assert_int_equal(args(&c, &err, "--max-batch", "9", "--config", path, "--model", "b=x.st",
                          "--listen", "[::1]:0", "--cors-origin", "*", NULL), NESF_OK);
    nesfd_config_finish(&c);
    assert_string_equal(c.host, "::1");
    assert_int_equal(c.port, 0);
    assert_int_equal(c.n_models, 2);
    char want[600];
    snprintf(want, sizeof want, "%s/m/a.safetensors", dir);
    assert_string_equal(c.models[0].path, want); /* relative to the file */
    assert_string_equal(c.models[1].path, "x.st"); /* flag: relative to the cwd */
    assert_int_equal(c.max_batch, 9);
    assert_int_equal(c.max_delay_us, 100);
    assert_int_equal(c.queue_limit, 50);
    assert_int_equal(c.body_limit, 1000);
    assert_true(c.request_timeout_s == 2.5);
    assert_int_equal(c.idle_timeout_s, 3);
    assert_true(c.header_timeout_s == 4 && c.body_timeout_s == 5);
    assert_int_equal(c.body_memory, 4096);
    assert_int_equal(c.max_connections_per_client, 8);
    assert_true(c.max_request_work == 123456);
    assert_string_equal(c.token, "s3cret");
    assert_int_equal(c.n_origins, 1);
    assert_string_equal(c.origins[0], "*");
    assert_int_equal(c.log_requests, 0);
    char *dump = nesfd_config_dump(&c);
    assert_non_null(dump);
    assert_null(strstr(dump, "s3cret"));
    assert_non_null(strstr(dump, "\"[::1]:0\""));
    free(dump);

    assert_int_equal(args(&c, &err, "--header-timeout", "0.5", "--body-timeout", "7",
                          "--body-memory", "1m", "--max-connections-per-client", "3",
                          "--max-request-work", "99", NULL), NESF_OK);
    assert_true(c.header_timeout_s == 0.5 && c.body_timeout_s == 7);
    assert_int_equal(c.body_memory, 1u << 20);
    assert_int_equal(c.max_connections_per_client, 3);
    assert_true(c.max_request_work == 99);
    assert_int_equal(args(&c, &err, "--no-batching", "--body-limit", "2M", NULL), NESF_OK);
    assert_int_equal(c.max_batch, 1);
    assert_int_equal(c.max_delay_us, 0);
    assert_int_equal(c.body_limit, 2u << 20);
}

static void test_token_sources(void **state)
{
    (void)state;
    const char *tf = write_file("token", "from-file\n");
    nesfd_config c;
    nesf_error err;
    nesfd_config_defaults(&c);
    setenv("NESFD_TOKEN", "from-env", 1);
    assert_int_equal(args(&c, &err, NULL), NESF_OK);
    assert_string_equal(c.token, "from-env");
    assert_int_equal(args(&c, &err, "--token-file", tf, NULL), NESF_OK);
    assert_string_equal(c.token, "from-file");
    unsetenv("NESFD_TOKEN");
    const char *empty = write_file("empty", "\n");
    assert_int_not_equal(args(&c, &err, "--token-file", empty, NULL), NESF_OK);
}

static void test_errors(void **state)
{
    (void)state;
    nesfd_config c;
    nesf_error err;
    nesfd_config_defaults(&c);
    const char *typo = write_file("typo.json", "{\"max_batch\": 4}"); /* belongs in batching */
    assert_int_not_equal(nesfd_config_load_file(&c, typo, &err), NESF_OK);
    assert_non_null(strstr(err.msg, "max_batch"));
    const char *bad = write_file("bad.json", "{\"listen\": \"127.0.0.1:8080\",\n \"backend\": }");
    assert_int_equal(nesfd_config_load_file(&c, bad, &err), NESF_ERR_PARSE);
    assert_non_null(strstr(err.msg, ":2:")); /* the line */
    const char *neg = write_file("neg.json", "{\"batching\": {\"max_batch\": 0}}");
    assert_int_not_equal(nesfd_config_load_file(&c, neg, &err), NESF_OK);
    assert_int_not_equal(args(&c, &err, "--backend", "tpu", NULL), NESF_OK);
    assert_int_not_equal(args(&c, &err, "--listen", "nohostport", NULL), NESF_OK);
    assert_int_not_equal(args(&c, &err, "--listen", "1.2.3.4:70000", NULL), NESF_OK);
    assert_int_not_equal(args(&c, &err, "--model", "noequals", NULL), NESF_OK);
    assert_int_not_equal(args(&c, &err, "--model", "bad/name=x", NULL), NESF_OK);
    assert_int_not_equal(args(&c, &err, "--max-batch", NULL), NESF_OK);
    assert_int_not_equal(args(&c, &err, "--max-batch", "12x", NULL), NESF_OK);
    assert_int_not_equal(args(&c, &err, "--frobnicate", NULL), NESF_OK);
    assert_non_null(strstr(err.msg, "--frobnicate"));
    assert_int_not_equal(args(&c, &err, "--config", "/nonexistent/nesfd.json", NULL), NESF_OK);
    assert_int_not_equal(args(&c, &err, "--cors-origin", "a, b", NULL), NESF_OK);
}

static void test_domain(void **state)
{
    (void)state;
    nesfd_config c;
    nesf_error err;
    nesfd_config_defaults(&c);
    assert_int_equal(c.domain_refuse, 0);
    const char *f = write_file("domain.json", "{\"domain\": \"refuse\"}");
    assert_int_equal(nesfd_config_load_file(&c, f, &err), NESF_OK);
    assert_int_equal(c.domain_refuse, 1);
    char *dump = nesfd_config_dump(&c);
    assert_non_null(strstr(dump, "\"domain\": \"refuse\""));
    free(dump);
    assert_int_equal(args(&c, &err, "--domain", "warn", NULL), NESF_OK);
    assert_int_equal(c.domain_refuse, 0);
    /* the symmetrize decode options validate like the others */
    const char *sym = write_file("sym.json", "{\"decode_options\": {\"symmetrize\": true, \"cell\": \"primitive\"}}");
    assert_int_equal(nesfd_config_load_file(&c, sym, &err), NESF_OK);
    assert_true(c.decode.symmetrize && c.decode.cell == NESF_CELL_PRIMITIVE);
    const char *badsym = write_file("badsym.json", "{\"decode_options\": {\"cell\": \"niggli\"}}");
    assert_int_not_equal(nesfd_config_load_file(&c, badsym, &err), NESF_OK);
    assert_non_null(strstr(err.msg, "decode_options"));
    assert_int_not_equal(args(&c, &err, "--domain", "ignore", NULL), NESF_OK);
    assert_non_null(strstr(err.msg, "warn or refuse"));
    const char *bad = write_file("domain-bad.json", "{\"domain\": true}");
    assert_int_not_equal(nesfd_config_load_file(&c, bad, &err), NESF_OK);
    assert_non_null(strstr(err.msg, "domain"));
}

static void test_repo_config(void **state)
{
    (void)state;
    const char *root = getenv("NESF_SOURCE_ROOT");
    if (!root) skip();
    char path[600];
    snprintf(path, sizeof path, "%s/config/nesfd.json", root);
    nesfd_config c;
    nesf_error err;
    nesfd_config_defaults(&c);
    if (nesfd_config_load_file(&c, path, &err)) fail_msg("%s", err.msg);
    assert_true(c.n_models >= 1);
    assert_int_equal(c.decode.mode, NESF_DECODE_FAST);
}

/* Every key of the file is read by one table: an unknown key anywhere is
 * an error that names it and its section; "_comment" is allowed. */
static void test_unknown_keys(void **state)
{
    (void)state;
    nesfd_config c;
    nesf_error err;
    static const struct { const char *text, *needle; } bad[] = {
        {"{\"listne\": \"127.0.0.1:1\"}", "listne"},
        {"{\"batching\": {\"max_bacth\": 4}}", "batching: unknown key \"max_bacth\""},
        {"{\"timeouts\": {\"request\": 4}}", "timeouts: unknown key \"request\""},
        {"{\"decode_options\": {\"mdoe\": \"fast\"}}", "mdoe"},
        {"{\"timeouts\": {\"max_batch\": 4}}", "timeouts: unknown key \"max_batch\""},
        {"{\"http_threads\": 2.5}", "http_threads"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        nesfd_config_defaults(&c);
        const char *f = write_file("unknown.json", bad[i].text);
        assert_int_equal(nesfd_config_load_file(&c, f, &err), NESF_ERR_INVALID);
        if (!strstr(err.msg, bad[i].needle)) print_message("%s: %s\n", bad[i].text, err.msg);
        assert_non_null(strstr(err.msg, bad[i].needle));
    }
    nesfd_config_defaults(&c);
    const char *ok = write_file("comment.json", "{\"_comment\": \"x\", \"batching\": {\"_comment\": 1,"
                                                " \"max_batch\": 7}, \"max_delay_us\": 5}");
    assert_int_not_equal(nesfd_config_load_file(&c, ok, &err), NESF_OK); /* max_delay_us is batching's */
    ok = write_file("comment.json", "{\"_comment\": \"x\", \"batching\": {\"_comment\": 1,"
                                    " \"max_batch\": 7, \"max_delay_us\": 5}}");
    assert_int_equal(nesfd_config_load_file(&c, ok, &err), NESF_OK);
    assert_int_equal(c.max_batch, 7);
    assert_int_equal(c.max_delay_us, 5);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_file_and_flags),
        cmocka_unit_test(test_token_sources),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_decode_options),
        cmocka_unit_test(test_domain),
        cmocka_unit_test(test_repo_config),
        cmocka_unit_test(test_unknown_keys),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

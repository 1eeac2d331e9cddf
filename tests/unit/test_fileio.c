/* Atomic output files: the target appears whole or not at all, and no
 * temporary file is left behind, whatever happens in between. */
#include <dirent.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "fileio.h"

static char dir[] = "/tmp/nesf-fileio-XXXXXX";

/* Number of entries in dir (without . and ..). */
static int entries(void)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

static void slurp(const char *path, char *buf, size_t n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    size_t k = fread(buf, 1, n - 1, f);
    buf[k] = 0;
    fclose(f);
}

static void test_write_and_replace(void **state)
{
    (void)state;
    char path[256], buf[64];
    snprintf(path, sizeof path, "%s/out.txt", dir);
    nesf_error err;
    assert_int_equal(nesf_write_file(path, "old\n", 4, &err), NESF_OK);
    assert_int_equal(nesf_write_file(path, "new\n", 4, &err), NESF_OK);
    slurp(path, buf, sizeof buf);
    assert_string_equal(buf, "new\n");
    assert_int_equal(entries(), 1);
    /* an aborted write leaves the old file and nothing else */
    nesf_outfile f;
    assert_int_equal(nesf_outfile_open(&f, path, &err), NESF_OK);
    assert_int_equal(nesf_outfile_write(&f, "partial", 7, &err), NESF_OK);
    nesf_outfile_abort(&f);
    slurp(path, buf, sizeof buf);
    assert_string_equal(buf, "new\n");
    assert_int_equal(entries(), 1);
    /* a directory that does not exist is a clear error */
    snprintf(path, sizeof path, "%s/no/such/out.txt", dir);
    assert_int_equal(nesf_write_file(path, "x", 1, &err), NESF_ERR_IO);
    assert_true(err.msg[0] != 0);
    assert_int_equal(entries(), 1);
}

/* kill -9 in the middle of a write: the old file stays, no temporary
 * file is left (the data was in an unnamed file). */
static void test_killed_writer(void **state)
{
    (void)state;
    char path[256], buf[64];
    snprintf(path, sizeof path, "%s/out.txt", dir);
    int go[2];
    assert_int_equal(pipe(go), 0);
    pid_t pid = fork();
    if (pid == 0) {
        nesf_outfile f;
        nesf_error err;
        if (nesf_outfile_open(&f, path, &err) || nesf_outfile_write(&f, "half", 4, &err)) _exit(1);
        if (write(go[1], "x", 1) != 1) _exit(1);
        pause(); /* killed here */
        _exit(0);
    }
    char c;
    assert_int_equal(read(go[0], &c, 1), 1);
    kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
    close(go[0]);
    close(go[1]);
    slurp(path, buf, sizeof buf);
    assert_string_equal(buf, "new\n");
    assert_int_equal(entries(), 1);
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) != 0;
}

int main(void)
{
    if (!mkdtemp(dir)) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_write_and_replace),
        cmocka_unit_test(test_killed_writer),
    };
    return cmocka_run_group_tests(tests, NULL, teardown);
}

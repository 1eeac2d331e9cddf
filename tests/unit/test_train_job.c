/* The training job's library call (nesf_train_run): its hooks hear every
 * step, epoch and written file; a stop from the hooks checkpoints and
 * returns with stopped set; resuming continues from that step to the end;
 * a job without the settings it needs is refused with a message.  On 36
 * LCS6 val structures with the tiny test config (skips without
 * ../shared). */
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

#include "train.h"

static char dir[64], data[96], config[4096];
static nesf_backend *be;

/* Lines [from, to) of src into dst; 0 on success. */
static int copy_lines(const char *src, const char *dst, int from, int to)
{
    FILE *in = fopen(src, "r"), *out = in ? fopen(dst, "w") : NULL;
    char line[1 << 16];
    for (int i = 0; out && i < to && fgets(line, sizeof line, in); i++)
        if (i >= from) fputs(line, out);
    int rc = !in || !out;
    if (in) fclose(in);
    if (out && fclose(out)) rc = 1;
    return rc;
}

static int setup(void **state)
{
    (void)state;
    if (nesf_backend_create("cpu", 1, &be, NULL)) return -1;
    const char *sh = getenv("NESF_SHARED"), *src = getenv("NESF_SOURCE_ROOT");
    char lcs6[4096], path[4096];
    snprintf(lcs6, sizeof lcs6, "%s/datasets/lcs6", sh ? sh : "../shared");
    snprintf(path, sizeof path, "%s/val.jsonl", lcs6);
    if (access(path, R_OK)) return 0; /* the tests skip */
    snprintf(config, sizeof config, "%s/tests/data/tiny-train.json", src ? src : ".");
    snprintf(dir, sizeof dir, "/tmp/nesf-test-run-%d", (int)getpid());
    snprintf(data, sizeof data, "%s/data", dir);
    char dst[4096];
    if (mkdir(dir, 0755) || mkdir(data, 0755)) return -1;
    snprintf(dst, sizeof dst, "%s/train.jsonl", data);
    if (copy_lines(path, dst, 0, 36)) return -1;
    snprintf(dst, sizeof dst, "%s/val.jsonl", data);
    if (copy_lines(path, dst, 36, 44)) return -1;
    snprintf(path, sizeof path, "%s/meta.json", lcs6);
    snprintf(dst, sizeof dst, "%s/meta.json", data);
    return copy_lines(path, dst, 0, 1000);
}

static int teardown(void **state)
{
    (void)state;
    nesf_backend_free(be);
    if (dir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        return system(cmd) ? -1 : 0;
    }
    return 0;
}

typedef struct heard {
    int messages, steps, epochs, validated, saved[3];
    int last_epoch;
    long stop_after; /* > 0: stop once this many steps were heard */
} heard;

static void on_message(void *u, const char *text)
{
    heard *h = u;
    assert_true(text[0] != 0);
    h->messages++;
}

static void on_progress(void *u, const nesf_train_progress *p)
{
    heard *h = u;
    assert_true(p->batch >= 1 && p->batch <= p->batches);
    h->steps++;
}

static void on_epoch(void *u, const nesf_train_epoch *e)
{
    heard *h = u;
    assert_int_equal(e->epoch, h->last_epoch + 1);
    assert_true(e->validated ? e->val_json[0] == '{' : !strcmp(e->val_json, "null"));
    h->last_epoch = e->epoch;
    h->epochs++;
    h->validated += e->validated;
}

static void on_saved(void *u, int kind, const char *path)
{
    heard *h = u;
    assert_true(kind >= NESF_SAVED_CHECKPOINT && kind <= NESF_SAVED_SNAPSHOT);
    assert_int_equal(access(path, R_OK), 0);
    h->saved[kind]++;
}

static int on_stop(void *u)
{
    const heard *h = u;
    return h->stop_after > 0 && h->steps >= h->stop_after;
}

static void job_for(nesf_train_job *j, const char *out)
{
    nesf_train_job_default(j);
    j->config = config;
    j->data = data;
    j->out = out;
    j->be = be;
}

static void test_hooks_and_snapshots(void **state)
{
    (void)state;
    if (!dir[0]) skip();
    char out[128];
    snprintf(out, sizeof out, "%s/a", dir);
    nesf_train_job j;
    job_for(&j, out);
    j.epochs = 3;
    j.val_every = 2;
    j.snapshot_every = 1;
    heard h = {0};
    nesf_train_hooks hooks = {&h, on_message, on_progress, on_epoch, on_saved, on_stop};
    nesf_train_result res;
    nesf_error err = {0};
    assert_int_equal(nesf_train_run(&j, &hooks, &res, &err), NESF_OK);
    /* 36 structures in batches of 8: 5 a epoch (the last one of 4) */
    assert_int_equal(h.steps, 15);
    assert_int_equal(h.epochs, 3);
    assert_int_equal(h.validated, 2); /* epoch 2 and the last */
    assert_int_equal(h.saved[NESF_SAVED_SNAPSHOT], 3);
    assert_int_equal(h.saved[NESF_SAVED_CHECKPOINT], 4); /* every epoch, then the end */
    assert_true(h.saved[NESF_SAVED_BEST] >= 1);
    assert_true(h.messages >= 3);
    assert_false(res.stopped);
    assert_int_equal(res.state.epoch, 3);
    assert_int_equal(res.state.step, 15);
}

static void test_stop_and_resume(void **state)
{
    (void)state;
    if (!dir[0]) skip();
    char out[128];
    snprintf(out, sizeof out, "%s/b", dir);
    nesf_train_job j;
    job_for(&j, out);
    j.epochs = 2;
    heard h = {.stop_after = 3};
    nesf_train_hooks hooks = {.user = &h, .progress = on_progress, .stop = on_stop, .saved = on_saved};
    nesf_train_result res;
    nesf_error err = {0};
    assert_int_equal(nesf_train_run(&j, &hooks, &res, &err), NESF_OK);
    assert_true(res.stopped);
    assert_int_equal(res.state.step, 3);
    assert_int_equal(res.state.epoch, 0);
    assert_int_equal(res.state.batch, 3);
    assert_int_equal(h.saved[NESF_SAVED_CHECKPOINT], 1);
    j.resume = 1;
    heard h2 = {0};
    hooks.user = &h2;
    assert_int_equal(nesf_train_run(&j, &hooks, &res, &err), NESF_OK);
    assert_false(res.stopped);
    assert_int_equal(h2.steps, 7);
    assert_int_equal(res.state.step, 10);
    assert_int_equal(res.state.epoch, 2);
}

static void test_bad_jobs(void **state)
{
    (void)state;
    nesf_train_job j;
    nesf_error err = {0};
    job_for(&j, "/tmp/nesf-test-run-unused");
    j.val_every = 0;
    assert_int_equal(nesf_train_run(&j, NULL, NULL, &err), NESF_ERR_INVALID);
    assert_non_null(strstr(err.msg, "val_every"));
    job_for(&j, NULL);
    assert_int_equal(nesf_train_run(&j, NULL, NULL, &err), NESF_ERR_INVALID);
    assert_non_null(strstr(err.msg, "out"));
    job_for(&j, "/tmp/nesf-test-run-unused");
    j.be = NULL;
    assert_int_equal(nesf_train_run(&j, NULL, NULL, &err), NESF_ERR_INVALID);
    assert_non_null(strstr(err.msg, "backend"));
    if (!dir[0]) return;
    char out[128];
    snprintf(out, sizeof out, "%s/c", dir);
    job_for(&j, out);
    j.data = dir; /* no meta.json there */
    memset(&err, 0, sizeof err);
    assert_int_not_equal(nesf_train_run(&j, NULL, NULL, &err), NESF_OK);
    assert_non_null(strstr(err.msg, "meta.json"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hooks_and_snapshots),
        cmocka_unit_test(test_stop_and_resume),
        cmocka_unit_test(test_bad_jobs),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

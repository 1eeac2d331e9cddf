/* nesf cv - k-fold cross-validation (the paper's YBCO-like protocol):
 * for every fold, train on its train split (validating on its val split),
 * reconstruct its test split with the best weights, then pool the test
 * structures of all folds into one Table 1 row.  Training is
 * nesf_train_run with nesf train's hooks, evaluation nesf eval's, both in
 * this process; the fold folders under --out keep their checkpoints, so an
 * interrupted run (SIGINT/SIGTERM checkpoint the fold and stop) continues
 * (as --resume) instead of starting over. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "latent_cli.h"
#include "cli_opts.h"
#include "commands.h"
#include "dataset.h"
#include "domain.h"
#include "metrics.h"
#include "safetensors.h"
#include "train.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: nesf cv --data DIR --out RUN [options]\n"
            "  --data DIR       folder of foldK/ subfolders (train/val/test.jsonl) and meta.json,\n"
            "                   e.g. ../shared/datasets/ybco13\n"
            "  --out RUN        one subfolder per fold (checkpoint, best weights, reconstructions)\n"
            "  --config FILE    model + training config (default config/models/nesf-paper.json)\n"
            "  --from FILE      start every fold from these weights (nesf train --from: e.g.\n"
            "                   models/lcs6.safetensors, fine-tuned on each fold) instead of\n"
            "                   from a fresh initialisation\n"
            "  --epochs N       training epochs per fold (default: the config's)\n"
            "  --minutes M      training time limit per fold\n"
            "  --folds LIST     e.g. 0-4,7 (default: every foldK found)\n"
            "  --options JSON   decode options passed to nesf eval\n"
            "  --refine JSON    latent refinement of the test structures (nesf eval --refine),\n"
            "                   e.g. '{\"second_look\": false}'\n"
            "  --calibrate N    before the test split, record in each fold's best weights the\n"
            "                   cycle distances of N of its training structures (nesf domain\n"
            "                   --sample N), so that the second look judges the fold's answers\n"
            "                   by the fold model's own figures and nesf eval gives confidence\n"
            "                   percentiles (default 0: none; on YBCO-like folds the second\n"
            "                   look costs atom counts, docs/ybco-cv.md)\n"
            "  --backend B      cpu | cuda | auto;  --threads N (default: all cores)\n");
}

/* Whether fold k is in list ("0-4,7"; NULL: every fold); -1 when list is
 * not such a list. */
static int fold_wanted(const char *list, int k)
{
    if (!list) return 1;
    const char *p = list;
    int in = 0;
    while (*p) {
        char *end;
        long a = strtol(p, &end, 10), b = a;
        if (end == p || a < 0) return -1;
        if (*end == '-') {
            const char *q = end + 1;
            b = strtol(q, &end, 10);
            if (end == q || b < a) return -1;
        }
        in |= k >= a && k <= b;
        if (!*end) break;
        if (*end != ',' || !end[1]) return -1;
        p = end + 1;
    }
    return in;
}

static void print_row(const char *label, const nesf_metrics *m)
{
    nesf_metrics_summary s;
    nesf_metrics_summarize(m, &s);
    printf("| %-30s | %6.2f | %7.4f | %7.4f | %6.2f | %6.2f | %5.3f | %5.2f |\n", label, s.count_err_pct,
           s.pos_act, s.pos_det, s.spec_act_pct, s.spec_det_pct, s.len_mae, s.ang_mae);
}

/* What every fold shares. */
typedef struct cv_args {
    const char *data, *out, *folds, *options, *refine, *backend;
    int calibrate; /* training structures for the cycle distances */
    int threads;   /* CPU threads (0: all cores) */
    nesf_train_job job; /* config, from, epochs, minutes and the backend */
} cv_args;

/* Links src/name at dst/name (absolute): nesf train wants meta.json beside
 * the splits. */
static int link_into(const char *dst, const char *src, const char *name)
{
    char target[4096], link[4200];
    snprintf(link, sizeof link, "%s/%s", dst, name);
    snprintf(target, sizeof target, "%s/%s", src, name);
    char *abs = realpath(target, NULL);
    unlink(link);
    int rc = !abs || symlink(abs, link);
    if (rc) fprintf(stderr, "nesf cv: cannot link %s\n", target);
    free(abs);
    return rc;
}

/* Pools fold k's test structures against their reconstructions (by id),
 * printing the fold's row. */
static int fold_pool(int k, const char *test, const char *recon, nesf_metrics *pooled)
{
    nesf_dataset truth = {0}, rec = {0};
    nesf_error err = {0};
    if (nesf_dataset_load(test, &truth, &err) || nesf_dataset_load(recon, &rec, &err)) {
        fprintf(stderr, "nesf cv: fold %d: %s\n", k, err.msg);
        nesf_dataset_free(&truth);
        return 1;
    }
    nesf_metrics fm;
    nesf_metrics_init(&fm);
    for (int i = 0; i < truth.n; i++) {
        nesf_structure_canonicalize(truth.s[i], NULL);
        const nesf_structure *r = NULL;
        for (int j = 0; j < rec.n && !r; j++)
            if (!strcmp(rec.s[j]->id, truth.s[i]->id)) r = rec.s[j];
        nesf_metrics_add(&fm, truth.s[i], r);
    }
    char label[32];
    snprintf(label, sizeof label, "fold %d", k);
    print_row(label, &fm);
    fflush(stdout);
    nesf_metrics_merge(pooled, &fm);
    nesf_dataset_free(&truth);
    nesf_dataset_free(&rec);
    return 0;
}

/* Whether the weights file at path already holds a cycle-distance
 * calibration (a rerun of cv need not measure it again). */
static int calibrated(const char *path)
{
    nesf_st *st = NULL;
    nesf_error err;
    if (nesf_st_read(path, &st, &err)) return 0;
    nesf_domain d;
    const char *text = nesf_st_meta(st, "domain");
    int yes = text && !nesf_domain_from_json(text, &d, &err) && d.cycle_n > 0;
    nesf_st_free(st);
    return yes;
}

/* Fold k (its splits in fdir): train (resuming), reconstruct the test
 * split with the best weights, pool.  Returns the exit status (1 also
 * when a signal stopped the training). */
static int run_fold(const cv_args *a, int k, const char *fdir, nesf_metrics *pooled)
{
    char odir[4096], path[4200], best[4200], recon[4200], test[4200], train[4200];
    snprintf(odir, sizeof odir, "%s/fold%d", a->out, k);
    snprintf(path, sizeof path, "%s/data", odir);
    mkdir(odir, 0755);
    mkdir(path, 0755);
    if (link_into(path, fdir, "train.jsonl") || link_into(path, fdir, "val.jsonl") ||
        link_into(path, fdir, "test.jsonl"))
        return 1;
    snprintf(test, sizeof test, "%s/meta.json", path);
    snprintf(recon, sizeof recon, "%s/meta.json", a->data);
    char *abs = realpath(recon, NULL);
    unlink(test);
    if (!abs || symlink(abs, test)) {
        fprintf(stderr, "nesf cv: no %s\n", recon);
        free(abs);
        return 1;
    }
    free(abs);
    fprintf(stderr, "nesf cv: fold %d: training\n", k);
    nesf_train_job job = a->job;
    job.data = path;
    job.out = odir;
    job.resume = 1;
    int stopped = 0;
    if (nesf_train_job_cli(&job, 1, &stopped) || stopped) {
        fprintf(stderr, "nesf cv: fold %d: training %s\n", k, stopped ? "stopped" : "failed");
        return 1;
    }
    snprintf(best, sizeof best, "%s/best.safetensors", odir);
    snprintf(recon, sizeof recon, "%s/test-recon.jsonl", odir);
    snprintf(train, sizeof train, "%s/train.jsonl", fdir);
    if (a->calibrate > 0 && !calibrated(best)) {
        fprintf(stderr, "nesf cv: fold %d: calibrating the cycle distance\n", k);
        if (nesf_domain_record(best, train, NULL, a->calibrate, a->options, NULL, a->backend, a->threads,
                               stderr))
            return 1;
    }
    snprintf(test, sizeof test, "%s/test.jsonl", fdir);
    fprintf(stderr, "nesf cv: fold %d: reconstructing the test split\n", k);
    if (nesf_eval_reconstruct(best, test, recon, a->backend, a->threads, a->options, a->refine)) {
        fprintf(stderr, "nesf cv: fold %d: evaluation failed\n", k);
        return 1;
    }
    return fold_pool(k, test, recon, pooled);
}

int nesf_cmd_cv(int argc, char **argv)
{
    cv_args a = {.backend = "auto"}; /* --calibrate 0: no cycle sample */
    nesf_train_job_default(&a.job);
    const cli_opt opts[] = {
        CLI_OPT_DATA(&a.data), CLI_OPT_OUT(&a.out), CLI_S("config", &a.job.config),
        CLI_I("epochs", &a.job.epochs, 0, 1 << 24), CLI_D("minutes", &a.job.minutes, 0, 1e9),
        CLI_S("folds", &a.folds), CLI_OPT_OPTIONS(&a.options), CLI_S("refine", &a.refine),
        CLI_I("calibrate", &a.calibrate, 0, 1 << 24), CLI_OPT_BACKEND(&a.backend),
        CLI_OPT_THREADS(&a.threads),
        CLI_S("from", &a.job.from), CLI_OPT_END};
    int rc = cli_parse("cv", argc, argv, opts, usage, NULL);
    if (rc >= 0) return rc;
    if (!a.data || !a.out) {
        usage(stderr);
        return 2;
    }
    if (fold_wanted(a.folds, 0) < 0) {
        fprintf(stderr, "nesf cv: --folds: '%s' is not a list of folds like 0-4,7\n", a.folds);
        return 2;
    }
    if (mkdir(a.out, 0755) && errno != EEXIST) {
        fprintf(stderr, "nesf cv: cannot create %s: %s\n", a.out, strerror(errno));
        return 1;
    }
    nesf_error err = {0};
    if (cli_backend_open(a.backend, a.threads, &a.job.be, &err)) {
        fprintf(stderr, "nesf cv: %s\n", err.msg);
        return 1;
    }
    nesf_metrics pooled;
    nesf_metrics_init(&pooled);
    int nfolds = 0, status = 0;
    char fdir[4096];
    for (int k = 0; k < 1000 && !status; k++) {
        snprintf(fdir, sizeof fdir, "%s/fold%d", a.data, k);
        struct stat sb;
        if (stat(fdir, &sb)) break;
        if (!fold_wanted(a.folds, k)) continue;
        status = run_fold(&a, k, fdir, &pooled);
        nfolds += !status;
    }
    nesf_backend_free(a.job.be);
    if (status) return status;
    if (!nfolds) {
        fprintf(stderr, "nesf cv: no foldK folders under %s\n", a.data);
        return 1;
    }
    printf("\n| %-30s | atoms%% | pos act | pos det | spec a%% | spec d%% | len Å | ang ° |\n", "pooled test splits");
    printf("|--------------------------------|--------|---------|---------|---------|---------|-------|-------|\n");
    char label[64];
    snprintf(label, sizeof label, "nesf, %d folds, %ld structures", nfolds, pooled.structures);
    print_row(label, &pooled);
    printf("| %-30s | %6.2f | %7.4f | %7.4f | %6.2f | %6.2f | %5.2f | %5.2f |\n", "paper (NeSF, 20-fold)", 12.00,
           0.2631, 0.2448, 14.78, 19.89, 0.25, 2.91);
    return 0;
}

/* nesf cv - k-fold cross-validation (the paper's YBCO-like protocol):
 * for every fold, train on its train split (validating on its val split),
 * reconstruct its test split with the best weights, then pool the test
 * structures of all folds into one Table 1 row.  Training and evaluation
 * are `nesf train` and `nesf eval` run by this same executable; the fold
 * folders under --out keep their checkpoints, so an interrupted run
 * continues (--resume) instead of starting over. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "commands.h"
#include "dataset.h"
#include "metrics.h"

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
            "  --backend B      cpu | cuda | auto\n");
}

/* Runs this executable with args; returns its exit status. */
static int run_self(char *const *args)
{
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        execv("/proc/self/exe", args);
        _exit(127);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int fold_wanted(const char *list, int k)
{
    if (!list) return 1;
    const char *p = list;
    while (*p) {
        char *end;
        long a = strtol(p, &end, 10), b = a;
        if (end == p) return 0;
        if (*end == '-') b = strtol(end + 1, &end, 10);
        if (k >= a && k <= b) return 1;
        p = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') return 0;
    }
    return 0;
}

static void print_row(const char *label, const nesf_metrics *m)
{
    nesf_metrics_summary s;
    nesf_metrics_summarize(m, &s);
    printf("| %-30s | %6.2f | %7.4f | %7.4f | %6.2f | %6.2f | %5.3f | %5.2f |\n", label, s.count_err_pct,
           s.pos_act, s.pos_det, s.spec_act_pct, s.spec_det_pct, s.len_mae, s.ang_mae);
}

int nesf_cmd_cv(int argc, char **argv)
{
    const char *data = NULL, *out = NULL, *config = "config/models/nesf-paper.json", *epochs = NULL,
               *minutes = NULL, *folds = NULL, *options = NULL, *backend = "auto",
               *from = NULL;
    static const struct option opts[] = {
        {"data", required_argument, 0, 'd'}, {"out", required_argument, 0, 'o'},
        {"config", required_argument, 0, 'c'}, {"epochs", required_argument, 0, 'e'},
        {"minutes", required_argument, 0, 'm'}, {"folds", required_argument, 0, 'f'},
        {"options", required_argument, 0, 'O'}, {"backend", required_argument, 0, 'b'},
        {"from", required_argument, 0, 'F'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'd': data = optarg; break;
        case 'o': out = optarg; break;
        case 'c': config = optarg; break;
        case 'e': epochs = optarg; break;
        case 'm': minutes = optarg; break;
        case 'f': folds = optarg; break;
        case 'O': options = optarg; break;
        case 'b': backend = optarg; break;
        case 'F': from = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!data || !out) {
        usage(stderr);
        return 2;
    }
    if (mkdir(out, 0755) && errno != EEXIST) {
        fprintf(stderr, "nesf cv: cannot create %s: %s\n", out, strerror(errno));
        return 1;
    }
    nesf_metrics pooled;
    nesf_metrics_init(&pooled);
    int nfolds = 0;
    char fdir[4096], odir[4096], path[4096], best[4096], recon[4096], meta[4096];
    snprintf(meta, sizeof meta, "%s/meta.json", data);
    for (int k = 0; k < 1000; k++) {
        snprintf(fdir, sizeof fdir, "%s/fold%d", data, k);
        struct stat sb;
        if (stat(fdir, &sb)) break;
        if (!fold_wanted(folds, k)) continue;
        /* nesf train wants meta.json beside the splits: a folder of links */
        snprintf(odir, sizeof odir, "%s/fold%d", out, k);
        snprintf(path, sizeof path, "%s/data", odir);
        mkdir(odir, 0755);
        mkdir(path, 0755);
        const char *names[] = {"train.jsonl", "val.jsonl", "test.jsonl"};
        char target[4096], link[4200];
        for (int i = 0; i < 3; i++) {
            snprintf(link, sizeof link, "%s/%s", path, names[i]);
            snprintf(target, sizeof target, "%s/%s", fdir, names[i]);
            char *abs = realpath(target, NULL);
            unlink(link);
            if (!abs || symlink(abs, link)) {
                fprintf(stderr, "nesf cv: cannot link %s\n", target);
                free(abs);
                return 1;
            }
            free(abs);
        }
        snprintf(link, sizeof link, "%s/meta.json", path);
        char *abs = realpath(meta, NULL);
        unlink(link);
        if (!abs || symlink(abs, link)) {
            fprintf(stderr, "nesf cv: no %s\n", meta);
            free(abs);
            return 1;
        }
        free(abs);

        fprintf(stderr, "nesf cv: fold %d: training\n", k);
        char *targs[32];
        int n = 0;
        targs[n++] = "nesf"; targs[n++] = "train"; targs[n++] = "--config"; targs[n++] = (char *)config;
        targs[n++] = "--data"; targs[n++] = path; targs[n++] = "--out"; targs[n++] = odir;
        targs[n++] = "--resume"; targs[n++] = "--quiet"; targs[n++] = "--backend"; targs[n++] = (char *)backend;
        if (from) { targs[n++] = "--from"; targs[n++] = (char *)from; }
        if (epochs) { targs[n++] = "--epochs"; targs[n++] = (char *)epochs; }
        if (minutes) { targs[n++] = "--minutes"; targs[n++] = (char *)minutes; }
        targs[n] = NULL;
        if (run_self(targs)) {
            fprintf(stderr, "nesf cv: fold %d: training failed\n", k);
            return 1;
        }
        snprintf(best, sizeof best, "%s/best.safetensors", odir);
        snprintf(recon, sizeof recon, "%s/test-recon.jsonl", odir);
        snprintf(target, sizeof target, "%s/test.jsonl", fdir);
        fprintf(stderr, "nesf cv: fold %d: reconstructing the test split\n", k);
        char *eargs[32];
        n = 0;
        eargs[n++] = "nesf"; eargs[n++] = "eval"; eargs[n++] = "--model"; eargs[n++] = best;
        eargs[n++] = "--data"; eargs[n++] = target; eargs[n++] = "--out"; eargs[n++] = recon;
        eargs[n++] = "--backend"; eargs[n++] = (char *)backend;
        if (options) { eargs[n++] = "--options"; eargs[n++] = (char *)options; }
        eargs[n] = NULL;
        if (run_self(eargs)) {
            fprintf(stderr, "nesf cv: fold %d: evaluation failed\n", k);
            return 1;
        }
        /* pool: every test structure against its reconstruction (by id) */
        nesf_dataset truth = {0}, rec = {0};
        nesf_error err = {0};
        if (nesf_dataset_load(target, &truth, &err) || nesf_dataset_load(recon, &rec, &err)) {
            fprintf(stderr, "nesf cv: fold %d: %s\n", k, err.msg);
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
        nesf_metrics_merge(&pooled, &fm);
        nesf_dataset_free(&truth);
        nesf_dataset_free(&rec);
        nfolds++;
    }
    if (!nfolds) {
        fprintf(stderr, "nesf cv: no foldK folders under %s\n", data);
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

/* nesf train - the offline training job (spec §4): nesf_train_run (train.h)
 * with this tool's hooks, which print its notes, the progress line and one
 * line per epoch on stderr, and stop it (with a checkpoint) on SIGINT or
 * SIGTERM.  nesf cv runs each fold through the same hooks. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include "latent_cli.h"
#include "cli_opts.h"
#include "commands.h"
#include "train.h"

static volatile sig_atomic_t stop_requested;
/* SIGINT/SIGTERM: the run checkpoints and stops at its next step. */
static void on_signal(int sig) { (void)sig; stop_requested = 1; }

typedef struct train_cli {
    int quiet, tty;
    double last_print;
} train_cli;

/* A setup note, as nesf train has always printed them. */
static void on_message(void *user, const char *text)
{
    (void)user;
    fprintf(stderr, "nesf train: %s\n", text);
}

/* The progress line, at most once a second, only on a terminal. */
static void on_progress(void *user, const nesf_train_progress *p)
{
    train_cli *c = user;
    if (c->quiet || !c->tty || p->wall - c->last_print <= 1) return;
    fprintf(stderr, "\repoch %d  batch %d/%d  loss %.4f  %.1f structures/s  %.0f queries/s   ", p->epoch, p->batch,
            p->batches, p->loss, p->structures_per_s, p->queries_per_s);
    c->last_print = p->wall;
}

/* One line per epoch: train and val losses, best marker, wall time. */
static void on_epoch(void *user, const nesf_train_epoch *e)
{
    const train_cli *c = user;
    fprintf(stderr, "%sepoch %d  train %.4f  val %s%s  (%.0f s)\n", !c->quiet && c->tty ? "\r" : "", e->epoch,
            e->train, e->val_json, e->best ? "  *best*" : "", e->seconds);
}

/* Polled by the run before every step. */
static int on_stop(void *user)
{
    (void)user;
    return stop_requested;
}

int nesf_train_job_cli(const nesf_train_job *job, int quiet, int *stopped)
{
    train_cli c = {.quiet = quiet, .tty = isatty(2), .last_print = -INFINITY};
    const nesf_train_hooks hooks = {.user = &c, .message = on_message, .progress = on_progress,
                                    .epoch = on_epoch, .stop = on_stop};
    /* the handlers hold for the run only: nesf cv evaluates in between */
    struct sigaction sa = {0}, old_int, old_term;
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    nesf_train_result res;
    nesf_error err = {0};
    const int rc = nesf_train_run(job, &hooks, &res, &err);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (rc) {
        fprintf(stderr, "nesf train: %s\n", err.msg[0] ? err.msg : "failed");
        return 1;
    }
    const nesf_train_state *st = &res.state;
    fprintf(stderr, "nesf train: %s after %d epochs (%ld steps, %.0f s); best val %.4f at epoch %d\n",
            res.stopped ? "stopped" : "done", st->epoch, st->step, st->seconds, st->best_val, st->best_epoch);
    if (stopped) *stopped = res.stopped;
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: nesf train --data DIR --out RUN [options]\n"
            "  --config FILE         model + training config (default config/models/nesf-paper.json)\n"
            "  --data DIR            dataset folder with meta.json, train.jsonl, val.jsonl\n"
            "  --out RUN             run folder (checkpoint, best weights, log)\n"
            "  --epochs N            stop after N epochs in total (default: config)\n"
            "  --minutes M           stop (with a checkpoint) after M minutes of this invocation\n"
            "  --resume              continue RUN/checkpoint.safetensors\n"
            "  --from FILE           start from FILE's weights (and Adam moments when FILE is a\n"
            "                        checkpoint) with --config's training settings: a new schedule\n"
            "                        for a trained model (epochs count from 0 again), or fine-tuning\n"
            "                        on another data set (its elements must be among the model's\n"
            "                        species; the bounding box becomes this training set's)\n"
            "  --backend B           cpu | cuda | auto (default auto)\n"
            "  --threads T           CPU threads (default: all cores)\n"
            "  --checkpoint-minutes M  checkpoint interval (default 5)\n"
            "  --val-every N         validate every N epochs (default 1)\n"
            "  --val-limit N         validate on the first N val structures (default all)\n"
            "  --max-steps N         stop (with a checkpoint) after N steps of this invocation\n"
            "  --snapshot-every N    keep RUN/epoch-NNNN.safetensors, the weights after every\n"
            "                        N-th epoch, for choosing a checkpoint later (default off)\n"
            "  --quiet               no progress line\n");
}

int nesf_cmd_train(int argc, char **argv)
{
    nesf_train_job j;
    nesf_train_job_default(&j);
    const char *backend = "auto";
    int quiet = 0, threads = 0;
    const cli_opt opts[] = {
        CLI_S("config", &j.config), CLI_OPT_DATA(&j.data), CLI_OPT_OUT(&j.out),
        CLI_I("epochs", &j.epochs, 0, 1 << 24), CLI_D("minutes", &j.minutes, 0, 1e9),
        CLI_F("resume", &j.resume), CLI_OPT_BACKEND(&backend), CLI_OPT_THREADS(&threads),
        CLI_D("checkpoint-minutes", &j.checkpoint_minutes, 0, 1e9),
        CLI_I("val-every", &j.val_every, 1, 1 << 24), CLI_I("val-limit", &j.val_limit, 0, INT_MAX),
        CLI_F("quiet", &quiet), CLI_L("max-steps", &j.max_steps, 0, 9e18),
        CLI_S("from", &j.from), CLI_I("snapshot-every", &j.snapshot_every, 0, 1 << 24),
        CLI_OPT_END};
    int rc = cli_parse("train", argc, argv, opts, usage, NULL);
    if (rc >= 0) return rc;
    if (!j.data || !j.out) {
        usage(stderr);
        return 2;
    }
    nesf_error err = {0};
    if (cli_backend_open(backend, threads, &j.be, &err)) {
        fprintf(stderr, "nesf train: %s\n", err.msg);
        return 1;
    }
    rc = nesf_train_job_cli(&j, quiet, NULL);
    nesf_backend_free(j.be);
    return rc;
}

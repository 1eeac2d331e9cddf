/* nesf bench field | train - the network's throughput beside PyTorch
 * (tests/bench/torch_*.py, Debian's python3-torch) run in the same
 * invocation, on the same cores, with the ratio.  --no-torch skips the
 * baseline. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "cli_opts.h"
#include "commands.h"
#include "dataset.h"
#include "train.h"

typedef struct {
    const char *shared, *source, *model;
    int threads, no_torch, steps, batch;
    double min_time;
} bench_opts;

/* CPU seconds of this process so far (all threads), user and system. */
static void cpu_seconds(double *user, double *sys)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    *user = u.ru_utime.tv_sec + u.ru_utime.tv_usec * 1e-6;
    *sys = u.ru_stime.tv_sec + u.ru_stime.tv_usec * 1e-6;
}

static const char *bench_what; /* "field" or "train", for usage */

static void usage(FILE *f)
{
    const char *w = bench_what;
    fprintf(f, "usage: nesf bench %s [--model M] [--shared DIR] [--source DIR] [--threads N]\n"
               "       [--no-torch] [--steps N] [--batch N] [--min-time S]\n"
               "Runs the C %s benchmark and tests/bench/torch_%s.py (under --source) with the same\n"
               "threads (train: their timed steps alternate) and prints both and their ratio.\n", w, w, w);
}

/* The options into o; -1 to go on, else the exit status. */
static int parse(int argc, char **argv, bench_opts *o, const char *what)
{
    *o = (bench_opts){.shared = "../shared", .source = ".", .threads = 2, .steps = 3, .batch = 64, .min_time = 3};
    bench_what = what;
    const cli_opt opts[] = {CLI_S("shared", &o->shared), CLI_S("source", &o->source), CLI_OPT_MODEL(&o->model),
                            CLI_OPT_THREADS(&o->threads), CLI_F("no-torch", &o->no_torch),
                            CLI_I("steps", &o->steps, 1, 1 << 20), CLI_I("batch", &o->batch, 2, 1 << 20),
                            CLI_D("min-time", &o->min_time, 0, 1e6), CLI_OPT_END};
    return cli_parse(what[0] == 'f' ? "bench field" : "bench train", argc, argv, opts, usage, NULL);
}

/* A paper-configuration model (fresh, seeded) or --model, plus the lcs6 data. */
static int setup(const bench_opts *o, nesf_backend **be, nesf_model **m, nesf_dataset *train,
                 nesf_dataset *val, nesf_error *err)
{
    char path[4096];
    nesf_vocab v;
    int rc = nesf_backend_cpu_create(o->threads, be, err);
    snprintf(path, sizeof path, "%s/datasets/lcs6/meta.json", o->shared);
    if (!rc) rc = nesf_vocab_load(path, &v, err);
    snprintf(path, sizeof path, "%s/datasets/lcs6/train.jsonl", o->shared);
    if (!rc) rc = nesf_dataset_load(path, train, err);
    snprintf(path, sizeof path, "%s/datasets/lcs6/val.jsonl", o->shared);
    if (!rc) rc = nesf_dataset_load(path, val, err);
    if (rc) return rc;
    if (o->model) return nesf_model_load(o->model, *be, m, err);
    float lo[3] = {INFINITY, INFINITY, INFINITY}, hi[3] = {-INFINITY, -INFINITY, -INFINITY};
    for (int i = 0; i < train->n; i++)
        for (int j = 0; j < train->s[i]->n; j++)
            for (int k = 0; k < 3; k++) {
                lo[k] = fminf(lo[k], (float)train->s[i]->cart[3 * j + k]);
                hi[k] = fmaxf(hi[k], (float)train->s[i]->cart[3 * j + k]);
            }
    nesf_model_config cfg;
    nesf_model_config_paper(&cfg);
    return nesf_model_create(&cfg, v.z, v.n, lo, hi, *be, 1, m, err);
}

/* Runs the PyTorch script and returns the value of key in its output line. */
static double torch_value(const bench_opts *o, const char *script, const char *args, const char *key,
                          char *line, size_t n)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s/tests/bench/%s --threads %d --shared %s %s%s%s 2>&1",
             o->source, script, o->threads, o->shared, args, o->model ? " --weights " : "",
             o->model ? o->model : "");
    FILE *p = popen(cmd, "r");
    line[0] = 0;
    double v = NAN;
    if (!p) return v;
    char buf[4096];
    while (fgets(buf, sizeof buf, p)) {
        char *k = strstr(buf, key);
        if (k && k[strlen(key)] == '=') {
            v = atof(k + strlen(key) + 1);
            snprintf(line, n, "%s", buf);
        }
    }
    pclose(p);
    if (isnan(v)) snprintf(line, n, "(no result from %s: is python3-torch installed?)\n", script);
    return v;
}

/* Options, model and data of a benchmark; -1 to go on, else the exit
 * status (the error printed). */
static int bench_open(int argc, char **argv, const char *what, bench_opts *o, nesf_backend **be, nesf_model **m,
                      nesf_dataset *train, nesf_dataset *val)
{
    int r = parse(argc, argv, o, what);
    if (r >= 0) return r;
    nesf_error err = {0};
    if (setup(o, be, m, train, val, &err)) {
        fprintf(stderr, "nesf bench %s: %s\n", what, err.msg);
        return 1;
    }
    return -1;
}

int nesf_bench_field(int argc, char **argv)
{
    bench_opts o;
    nesf_error err = {0};
    nesf_backend *be = NULL;
    nesf_model *m = NULL;
    nesf_dataset train = {0}, val = {0};
    int r = bench_open(argc, argv, "field", &o, &be, &m, &train, &val);
    if (r >= 0) return r;
    /* one decode step of one structure: the paper's inference grid */
    float lo[3], hi[3];
    nesf_model_bbox(m, lo, hi);
    int g[3], Q = 1;
    for (int k = 0; k < 3; k++) Q *= g[k] = nesf_arange_count(lo[k] - 0.5, hi[k] + 0.5, 0.5);
    float *xyz = malloc((size_t)Q * 3 * sizeof *xyz), *out = malloc((size_t)Q * 3 * sizeof *out);
    float *z = malloc((size_t)nesf_model_latent_size(m) * sizeof *z);
    for (int i = 0, q = 0; i < g[0]; i++)
        for (int j = 0; j < g[1]; j++)
            for (int k = 0; k < g[2]; k++, q++) {
                xyz[3 * q] = lo[0] - 0.5f + 0.5f * i;
                xyz[3 * q + 1] = lo[1] - 0.5f + 0.5f * j;
                xyz[3 * q + 2] = lo[2] - 0.5f + 0.5f * k;
            }
    if (nesf_model_encode(m, val.s, 1, z, &err)) {
        fprintf(stderr, "nesf bench field: %s\n", err.msg);
        return 1;
    }
    int off[2] = {0, Q};
    for (int w = 0; w < 2; w++) nesf_model_position_field_host(m, 1, z, off, xyz, out, &err);
    int reps = 0;
    double t0 = nesf_clock_s(), dt, u0, s0, u1, s1;
    cpu_seconds(&u0, &s0);
    do {
        nesf_model_position_field_host(m, 1, z, off, xyz, out, &err);
        reps++;
        dt = nesf_clock_s() - t0;
    } while (dt < o.min_time || reps < 3);
    cpu_seconds(&u1, &s1);
    double qps = (double)Q * reps / dt;
    double dense = nesf_model_position_flops(m, 0), done = nesf_model_position_flops(m, 1);
    printf("nesf bench field: position field, %d queries (one decode step of one structure), %d threads\n", Q, o.threads);
    printf("  C     : %10.0f queries/s  %7.2f GFLOP/s dense-equivalent (%.0f flop/query; %.0f executed, latent part once per structure)\n",
           qps, dense * qps / 1e9, dense, done);
    printf("          %10.0f queries per CPU-second (all threads; sys %.0f%%)\n",
           (double)Q * reps / (u1 - u0 + s1 - s0), 100 * (s1 - s0) / (u1 - u0 + s1 - s0));
    if (!o.no_torch) {
        char line[4096];
        double tq = torch_value(&o, "torch_field.py", "--min-time 3", "queries_per_s", line, sizeof line);
        printf("  torch : %10.0f queries/s  %7.2f GFLOP/s   [%s]\n", tq, dense * tq / 1e9, strtok(line, "\n"));
        printf("  ratio : %.2fx PyTorch\n", qps / tq);
    }
    free(xyz);
    free(out);
    free(z);
    nesf_model_free(m);
    nesf_dataset_free(&train);
    nesf_dataset_free(&val);
    nesf_backend_free(be);
    return 0;
}

/* The machine's FLOP/s on a large square sgemm through the backend (its
 * threads), best of three: *wall over wall time, *core per CPU-second
 * (all threads), which a machine shared with other work still measures. */
static void measured_peak(nesf_backend *be, double *wall, double *core)
{
    const int n = 2048;
    float *a = be->ops->alloc(be, (size_t)n * n * sizeof *a), *c = be->ops->alloc(be, (size_t)n * n * sizeof *c);
    *wall = *core = 0;
    if (a && c) {
        for (size_t i = 0; i < (size_t)n * n; i++) a[i] = (float)(i % 7) * 0.25f;
        for (int rep = 0; rep < 3; rep++) {
            double t0 = nesf_clock_s(), u0, s0, u1, s1;
            cpu_seconds(&u0, &s0);
            be->ops->gemm(be, 0, 1, n, n, n, 1.0f, a, n, a, n, 0.0f, c, n);
            if (be->ops->sync(be)) break; /* a failed GEMM measures nothing */
            double t1 = nesf_clock_s(), f = 2.0 * n * n * n;
            cpu_seconds(&u1, &s1);
            if (f / (t1 - t0) > *wall) *wall = f / (t1 - t0);
            if (f / (u1 - u0 + s1 - s0) > *core) *core = f / (u1 - u0 + s1 - s0);
        }
    }
    be->ops->free(be, a);
    be->ops->free(be, c);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* tests/bench/torch_train.py --interleave as a child: C and PyTorch take
 * turns, one timed step each, so both see the same load on a shared
 * machine (one run after the other would not). */
typedef struct {
    pid_t pid;
    FILE *to, *from;
    double wall, cpu;    /* sums over its timed steps */
    int ok;
    char last[4096];     /* its last other output line (an error, say) */
} torch_proc;

/* Starts the script (it loads and runs its warm-up step meanwhile). */
static void torch_start(const bench_opts *o, torch_proc *t)
{
    int in[2], out[2];
    char script[4096], th[16], b[16], st[16];
    memset(t, 0, sizeof *t);
    snprintf(script, sizeof script, "%s/tests/bench/torch_train.py", o->source);
    snprintf(th, sizeof th, "%d", o->threads);
    snprintf(b, sizeof b, "%d", o->batch);
    snprintf(st, sizeof st, "%d", o->steps);
    char *argv[] = {"/usr/bin/python3", script, "--interleave", "--threads", th, "--batch", b, "--steps", st,
                    "--shared", (char *)o->shared, o->model ? "--weights" : NULL, (char *)o->model, NULL};
    if (pipe(in)) return;
    if (pipe(out)) {
        close(in[0]);
        close(in[1]);
        return;
    }
    signal(SIGPIPE, SIG_IGN);  /* a script that died must not kill the bench */
    t->pid = fork();
    if (t->pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        dup2(out[1], 2);
        close(in[1]);
        close(out[0]);
        execv(argv[0], argv);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    t->to = fdopen(in[1], "w");
    t->from = fdopen(out[0], "r");
    t->ok = t->pid > 0 && t->to && t->from;
}

/* One timed PyTorch step; a script that ended stops being asked. */
static void torch_step(torch_proc *t)
{
    if (!t->ok) return;
    fputs("step\n", t->to);
    fflush(t->to);
    char buf[4096];
    while (fgets(buf, sizeof buf, t->from)) {
        char *k = strstr(buf, "torch_step: step_s="), *c = strstr(buf, "cpu_s=");
        if (k && c) {
            t->wall += atof(k + 19);
            t->cpu += atof(c + 6);
            return;
        }
        snprintf(t->last, sizeof t->last, "%s", buf);
    }
    t->ok = 0;
}

/* Ends the script, reads its summary line and prints it beside C's
 * structures/s (sps) and CPU seconds per step. */
static void torch_finish(const bench_opts *o, torch_proc *t, double sps, double cpu_step)
{
    char buf[4096], line[4096] = "";
    if (t->to) fclose(t->to);
    while (t->from && fgets(buf, sizeof buf, t->from))
        if (strstr(buf, "torch_train:")) snprintf(line, sizeof line, "%s", buf);
    if (t->from) fclose(t->from);
    if (t->pid > 0) waitpid(t->pid, NULL, 0);
    if (!t->ok || !line[0]) {
        printf("  torch : no result from torch_train.py (is python3-torch installed?) %s", t->last);
        return;
    }
    double tq = NAN, ts = o->batch * o->steps / t->wall, tcpu = t->cpu / o->steps;
    char *k = strstr(line, "queries_per_s=");
    if (k) tq = atof(k + 14);
    printf("  torch : %6.2f structures/s  %9.0f queries/s  cpu %.3f s/step  [%s]\n", ts, tq, tcpu,
           strtok(line, "\n"));
    /* same batch size on both sides: CPU seconds per step compare directly */
    printf("  ratio : %.2fx PyTorch (structures/s, steps taken in turns); %.2fx by CPU time per step\n",
           sps / ts, tcpu / cpu_step);
}

/* Prints C's side of nesf bench train. */
static void print_c(const bench_opts *o, nesf_backend *be, double *walls, long nq, double step_t,
                    double sample_t, double cpu_t, double sys_t, double flops)
{
    double peak, core;
    measured_peak(be, &peak, &core);
    qsort(walls, (size_t)o->steps, sizeof *walls, cmp_double);
    double sps = o->batch * o->steps / step_t, qps = nq / step_t, gf = flops / step_t;
    printf("nesf bench train: batch %d, paper sampling (%ld queries/step), %d threads, %d timed steps\n",
           o->batch, nq / o->steps, o->threads, o->steps);
    printf("  peak  : %6.1f GFLOP/s per core (sgemm 2048^3, FLOPs per CPU-second); %.1f GFLOP/s wall on %d threads\n",
           core / 1e9, peak / 1e9, o->threads);
    printf("  C     : %6.2f structures/s  %9.0f queries/s  step %.3f s (median %.3f; + sampling %.3f s)\n"
           "          %.1f GFLOP/step: %.1f GFLOP/s wall = %.0f%% of the %d-thread peak; cpu %.3f s/step (sys %.3f),\n"
           "          %.1f GFLOP per CPU-second = %.0f%% of the per-core peak\n",
           sps, qps, step_t / o->steps, walls[(o->steps - 1) / 2], sample_t / o->steps, flops / o->steps / 1e9,
           gf / 1e9, peak > 0 ? 100 * gf / peak : 0, o->threads, cpu_t / o->steps, sys_t / o->steps,
           flops / cpu_t / 1e9, core > 0 ? 100 * flops / cpu_t / core : 0);
}

int nesf_bench_train(int argc, char **argv)
{
    bench_opts o;
    nesf_error err = {0};
    nesf_backend *be = NULL;
    nesf_model *m = NULL;
    nesf_dataset train = {0}, val = {0};
    int r = bench_open(argc, argv, "train", &o, &be, &m, &train, &val);
    if (r >= 0) return r;
    nesf_train_config tc;
    nesf_train_config_paper(&tc);
    nesf_trainer *t;
    if (nesf_trainer_create(m, &tc, &t, &err)) {
        fprintf(stderr, "nesf bench train: %s\n", err.msg);
        return 1;
    }
    torch_proc tp = {0};
    if (!o.no_torch) torch_start(&o, &tp);
    nesf_structure **bs = malloc((size_t)o.batch * sizeof *bs);
    double *walls = calloc((size_t)o.steps, sizeof *walls);
    double step_t = 0, sample_t = 0, cpu_t = 0, sys_t = 0, flops = 0;
    long nq = 0;
    uint64_t st = 1;
    nesf_losses l = {0};
    for (int step = 0; step <= o.steps; step++) {
        int N = 0;
        for (int i = 0; i < o.batch; i++) {
            st = nesf_seed_mix(st, (uint64_t)i);
            bs[i] = train.s[st % (uint64_t)train.n];
            nesf_structure_canonicalize(bs[i], NULL);
            N += bs[i]->n;
        }
        nesf_queries q;
        double t0 = nesf_clock_s(), u0, s0, u1, s1;
        if (nesf_trainer_sample(t, bs, o.batch, st, &q, &err)) break;
        double t1 = nesf_clock_s();
        cpu_seconds(&u0, &s0);
        if (nesf_trainer_forward_backward(t, bs, o.batch, &q, st, &l, &err) || nesf_trainer_step(t, 1e-3f, &err)) {
            nesf_queries_free(&q);
            break;
        }
        double t2 = nesf_clock_s();
        cpu_seconds(&u1, &s1);
        nesf_queries_free(&q);
        if (step == 0) continue;  /* the first step is a warm-up */
        sample_t += t1 - t0;
        step_t += t2 - t1;
        walls[step - 1] = t2 - t1;
        cpu_t += (u1 - u0) + (s1 - s0);
        sys_t += s1 - s0;
        flops += nesf_trainer_step_flops(t, N, o.batch, &l);
        nq += l.pos_queries + l.spec_queries;
        torch_step(&tp);
    }
    if (err.msg[0]) {
        fprintf(stderr, "nesf bench train: %s\n", err.msg);
        return 1;
    }
    print_c(&o, be, walls, nq, step_t, sample_t, cpu_t, sys_t, flops);
    if (!o.no_torch) torch_finish(&o, &tp, o.batch * o.steps / step_t, cpu_t / o.steps);
    free(walls);
    free(bs);
    nesf_trainer_free(t);
    nesf_model_free(m);
    nesf_dataset_free(&train);
    nesf_dataset_free(&val);
    nesf_backend_free(be);
    return 0;
}

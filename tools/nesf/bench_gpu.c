/* nesf bench gpu - the CUDA backend next to the CPU backend in one run:
 *   fields   position-field throughput on 2^20 queries (GEMM efficiency) and
 *            its deviation from the CPU backend on the first 2^16;
 *   decode   decodes/s at paper settings for several batch sizes, with the
 *            achieved field FLOP/s against the device's peak, and how many
 *            of a check set of latents decode to the CPU's structures;
 *   train    seconds per training step (batch 64 of LCS6Å) and the epoch and
 *            3200-epoch times they imply.
 * The CUDA part runs once per GEMM arithmetic (--math fp32,tf32,bf16).
 * Without a CUDA device the CPU figures are printed alone. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "cli_opts.h"
#include "commands.h"
#include "dataset.h"
#include "decode.h"
#include "model.h"
#include "train.h"

/* FLOPs per query of a field MLP whose first layer is grouped (the latent
 * part costs once per structure, not counted) and whose first xyz_layers
 * layers take the 3 xyz columns. */
static double field_flops(const int *hidden, int nh, int out, int xyz_layers)
{
    double f = 2.0 * 3 * hidden[0];
    for (int l = 1; l <= nh; l++) {
        int in = hidden[l - 1] + (l < xyz_layers ? 3 : 0);
        int o = l < nh ? hidden[l] : out;
        f += 2.0 * in * o;
    }
    return f;
}

static int parse_list(const char *s, int *v, int max)
{
    int n = 0;
    while (*s && n < max) {
        char *end;
        long x = strtol(s, &end, 10);
        if (end == s || x < 1 || x > 100000) return -1;
        v[n++] = (int)x;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') return -1;
    }
    return n;
}

#define CHECK_Q (1 << 16) /* field queries compared with the CPU */

typedef struct bench {
    const char *model_path;
    char math[64];
    int check_n;              /* latents decoded on every backend and compared */
    float *check_z;           /* check_n latents (CPU encoder) */
    nesf_structure **ref;     /* their CPU decodes (NULL items: failed alike?) */
    float *field_ref;         /* CPU position field on the first CHECK_Q queries */
    int batches[8], nbatch, cpu_batches[8], ncpu_batch;
    int train_steps, cpu_train_steps;
    double min_seconds;
    nesf_dataset train, val;
    nesf_vocab vocab;
    float bbmin[3], bbmax[3];
} bench;

static int load_model(bench *b, nesf_backend *be, nesf_model **m, nesf_error *err)
{
    if (b->model_path) return nesf_model_load(b->model_path, be, m, err);
    nesf_model_config cfg;
    nesf_model_config_paper(&cfg);
    return nesf_model_create(&cfg, b->vocab.z, b->vocab.n, b->bbmin, b->bbmax, be, 1, m, err);
}

static void bench_fields(bench *b, nesf_model *m, nesf_backend *be, double pos_flops,
                         nesf_error *err)
{
    enum { S = 64, Q = 1 << 20 };
    const int L = nesf_model_latent_size(m);
    float *z = malloc((size_t)S * L * sizeof *z), *xyz = malloc((size_t)Q * 3 * sizeof *xyz);
    int off[S + 1];
    float *zd = be->ops->alloc(be, (size_t)S * L * sizeof(float));
    float *xd = be->ops->alloc(be, (size_t)Q * 3 * sizeof(float));
    float *od = be->ops->alloc(be, (size_t)Q * 3 * sizeof(float));
    if (!z || !xyz || !zd || !xd || !od) {
        printf("  fields: out of memory\n");
        goto out;
    }
    for (int i = 0; i < S * L; i++) z[i] = (float)sin(i * 0.37);
    for (int i = 0; i < Q * 3; i++) xyz[i] = (float)(5 + 5 * sin(i * 0.11));
    for (int s = 0; s <= S; s++) off[s] = (int)((long)Q * s / S);
    if (be->ops->upload(be, zd, z, (size_t)S * L * sizeof(float)) ||
        be->ops->upload(be, xd, xyz, (size_t)Q * 3 * sizeof(float))) {
        printf("  fields: upload failed: %s\n", nesf_backend_error(be));
        goto out;
    }
    int reps = 0;
    double t0 = 0, t = 0;
    for (int r = -1; r < 50; r++) { /* one warm-up, then until ~2 s */
        if (r == 0) t0 = nesf_clock_s();
        if (nesf_model_position_field(m, S, zd, off, xd, od, err)) {
            printf("  fields: %s\n", err->msg);
            goto out;
        }
        if (r >= 0) reps++;
        t = nesf_clock_s() - t0;
        if (r >= 0 && t > 2.0) break;
    }
    double qps = (double)Q * reps / t;
    printf("  %-5s position field  %9.3g queries/s  %8.2f TFLOP/s", be->name, qps,
           qps * pos_flops * 1e-12);
    if (be->peak_flops > 0) printf("  (%.1f%% of %.1f peak)", 100 * qps * pos_flops / be->peak_flops,
                                   be->peak_flops * 1e-12);
    /* the same queries' field against the CPU's (the first CHECK_Q rows) */
    float *o = malloc((size_t)CHECK_Q * 3 * sizeof *o);
    if (o && !be->ops->download(be, o, od, (size_t)CHECK_Q * 3 * sizeof(float))) {
        if (!b->field_ref) {
            b->field_ref = o;
            o = NULL;
        } else {
            double md = 0, mr = 0;
            for (int i = 0; i < CHECK_Q * 3; i++) {
                md = fmax(md, fabs((double)o[i] - b->field_ref[i]));
                mr = fmax(mr, fabs((double)b->field_ref[i]));
            }
            printf("  max |field - CPU| / max |CPU| = %.2e", md / mr);
        }
    }
    free(o);
    printf("\n");
out:
    free(z);
    free(xyz);
    be->ops->free(be, zd);
    be->ops->free(be, xd);
    be->ops->free(be, od);
}

static void bench_decode(bench *b, nesf_model *m, nesf_backend *be, const int *batches, int nb,
                         double pos_flops, double spec_flops, nesf_error *err)
{
    const int L = nesf_model_latent_size(m);
    int maxb = 0;
    for (int i = 0; i < nb; i++) maxb = batches[i] > maxb ? batches[i] : maxb;
    float *z = malloc((size_t)maxb * L * sizeof *z);
    nesf_structure **out = calloc((size_t)maxb, sizeof *out);
    nesf_error *ie = calloc((size_t)maxb, sizeof *ie);
    if (!z || !out || !ie) {
        printf("  decode: out of memory\n");
        goto done;
    }
    /* latents of real structures (validation split, repeated as needed) */
    for (int i = 0; i < maxb; i += 64) {
        int n = maxb - i < 64 ? maxb - i : 64;
        nesf_structure *s[64];
        for (int k = 0; k < n; k++) s[k] = b->val.s[(i + k) % b->val.n];
        if (nesf_model_encode(m, s, n, z + (size_t)i * L, err)) {
            printf("  decode: encode: %s\n", err->msg);
            goto done;
        }
    }
    nesf_decode_opts o;
    nesf_decode_opts_default(&o);
    for (int i = 0; i < nb; i++) {
        const int B = batches[i];
        nesf_decode_stats st, sum = {0};
        int reps = 0;
        double t0 = 0, t = 0;
        for (int r = -1;; r++) {
            if (r == 0) t0 = nesf_clock_s();
            if (nesf_decode(m, B, z, &o, out, ie, &st, err)) {
                printf("  decode: %s\n", err->msg);
                goto done;
            }
            for (int k = 0; k < B; k++) {
                nesf_structure_free(out[k]);
                out[k] = NULL;
            }
            if (r < 0) continue;
            reps++;
            nesf_decode_stats_add(&sum, &st);
            t = nesf_clock_s() - t0;
            if (t > b->min_seconds || reps >= 1000) break;
        }
        double dps = (double)B * reps / t;
        /* position queries: particles x iterations; the rest are species */
        double pq = (double)sum.particles * o.iterations;
        double sq = (double)sum.field_evals - pq;
        double flops = (pq * pos_flops + (sq > 0 ? sq * spec_flops : 0)) / t;
        printf("  %-5s batch %4d  %9.1f decodes/s  %8.2f ms/decode  %8.2f TFLOP/s", be->name, B,
               dps, 1e3 / dps, flops * 1e-12);
        if (be->peak_flops > 0) printf(" (%4.1f%%)", 100 * flops / be->peak_flops);
        printf("  flow/nms/species %.0f/%.0f/%.0f ms per call, %.1f atoms/structure\n",
               sum.ms_flow / reps, sum.ms_nms / reps, sum.ms_species / reps,
               (double)sum.atoms / ((double)reps * B));
    }
done:
    if (out)
        for (int k = 0; k < maxb; k++) nesf_structure_free(out[k]);
    free(out);
    free(ie);
    free(z);
}

/* Decodes the check latents at paper settings; the first backend's
 * results become the reference, later ones are compared with it: same
 * atom count and species, positions within 1e-3 Å. */
static void decode_check(bench *b, nesf_model *m, nesf_backend *be, nesf_error *err)
{
    const int n = b->check_n;
    if (n <= 0) return;
    nesf_structure **out = calloc((size_t)n, sizeof *out);
    nesf_error *ie = calloc((size_t)n, sizeof *ie);
    if (!out || !ie || nesf_decode(m, n, b->check_z, NULL, out, ie, NULL, err)) {
        printf("  check: %s\n", out && ie ? err->msg : "out of memory");
        free(out);
        free(ie);
        return;
    }
    free(ie);
    if (!b->ref) {
        b->ref = out;
        return;
    }
    int same = 0, atoms = 0;
    double dmax = 0;
    for (int i = 0; i < n; i++) {
        const nesf_structure *x = out[i], *y = b->ref[i];
        int ok = !x == !y;
        double d = 0;
        if (ok && x) {
            ok = x->n == y->n;
            for (int j = 0; ok && j < x->n; j++) {
                ok = x->z[j] == y->z[j];
                for (int k = 0; k < 3; k++)
                    d = fmax(d, fabs(x->cart[3 * j + k] - y->cart[3 * j + k]));
            }
            if (ok) atoms += x->n;
        }
        dmax = fmax(dmax, d);
        same += ok && d <= 1e-3;
    }
    printf("  %-5s decodes identical to the CPU's: %d of %d (%d atoms), max |dpos| %.2e A\n",
           be->name, same, n, atoms, dmax);
    for (int i = 0; i < n; i++) nesf_structure_free(out[i]);
    free(out);
}

static void bench_train(bench *b, nesf_model *m, nesf_backend *be, int steps, nesf_error *err)
{
    nesf_train_config tc;
    nesf_train_config_paper(&tc);
    nesf_trainer *t;
    if (nesf_trainer_create(m, &tc, &t, err)) {
        printf("  train: %s\n", err->msg);
        return;
    }
    const int B = tc.batch, per_epoch = (b->train.n + B - 1) / B;
    double ts = 0, tt = 0;
    int done = 0;
    for (int step = -1; step < steps; step++) { /* one warm-up step */
        int first = ((step + 1) * B) % (b->train.n - B);
        nesf_queries q;
        double t0 = nesf_clock_s();
        int rc = nesf_trainer_sample(t, b->train.s + first, B, 1000 + step, &q, err);
        double t1 = nesf_clock_s();
        if (!rc) rc = nesf_trainer_forward_backward(t, b->train.s + first, B, &q, 7 + step, NULL, err);
        if (!rc) rc = nesf_trainer_step(t, tc.lr, err);
        double t2 = nesf_clock_s();
        nesf_queries_free(&q);
        if (rc) {
            printf("  train: %s\n", err->msg);
            break;
        }
        if (step < 0) continue;
        ts += t1 - t0;
        tt += t2 - t1;
        done++;
    }
    if (done) {
        double per = (ts + tt) / done;
        printf("  %-5s train step (batch %d)  %8.1f ms  (sampling %.1f ms, device %.1f ms)  "
               "epoch %.2f s  %d epochs %.1f min\n",
               be->name, B, 1e3 * per, 1e3 * ts / done, 1e3 * tt / done, per * per_epoch,
               tc.epochs, per * per_epoch * tc.epochs / 60);
    }
    nesf_trainer_free(t);
}

static void run_backend(bench *b, nesf_backend *be, const int *batches, int nb, int steps)
{
    nesf_error err = {0};
    nesf_model *m;
    printf("%s: %s\n", be->name, be->device);
    if (load_model(b, be, &m, &err)) {
        printf("  model: %s\n", err.msg);
        return;
    }
    const nesf_model_config *c = nesf_model_get_config(m);
    double pos_flops = field_flops(c->pos_hidden, c->n_pos_hidden, 3, c->n_pos_hidden);
    double spec_flops =
        field_flops(c->spec_hidden, c->n_spec_hidden, nesf_model_num_species(m), c->n_spec_hidden);
    if (!b->check_z) { /* the check latents, from the first backend's encoder */
        const int L = nesf_model_latent_size(m);
        nesf_structure **s = malloc((size_t)(b->check_n + 1) * sizeof *s);
        b->check_z = malloc((size_t)(b->check_n + 1) * L * sizeof *b->check_z);
        for (int i = 0; s && i < b->check_n; i++) s[i] = b->val.s[i % b->val.n];
        if (!s || !b->check_z || nesf_model_encode(m, s, b->check_n, b->check_z, &err)) {
            printf("  check latents: %s\n", err.msg);
            b->check_n = 0;
        }
        free(s);
    }
    bench_fields(b, m, be, pos_flops, &err);
    bench_decode(b, m, be, batches, nb, pos_flops, spec_flops, &err);
    decode_check(b, m, be, &err);
    nesf_model_free(m);
    /* training from the same starting point */
    if (steps > 0 && !load_model(b, be, &m, &err)) {
        bench_train(b, m, be, steps, &err);
        nesf_model_free(m);
    }
}

static void gpu_usage(FILE *f)
{
    fprintf(f, "usage: nesf bench gpu [--model FILE] [--batches 1,64,512] [--cpu-batches 1,8]\n"
               "                      [--train-steps 20] [--cpu-train-steps 2] [--seconds 3]\n"
               "                      [--math fp32,tf32,bf16] [--check 8]\n"
               "CUDA next to CPU: field throughput and deviation, decodes/s at paper\n"
               "settings, decodes identical to the CPU's (--check latents), training step\n"
               "and epoch time on LCS6 (untrained paper model without --model).  The CUDA\n"
               "part runs once per GEMM arithmetic in --math.\n");
}

/* The options into b; -1 to go on, else the exit status. */
static int gpu_args(int argc, char **argv, bench *b)
{
    const char *batches = NULL, *cpu_batches = NULL, *math = NULL;
    const cli_opt opts[] = {CLI_OPT_MODEL(&b->model_path), CLI_S("batches", &batches),
                            CLI_S("cpu-batches", &cpu_batches), CLI_I("train-steps", &b->train_steps, 0, 1 << 20),
                            CLI_I("cpu-train-steps", &b->cpu_train_steps, 0, 1 << 20),
                            CLI_D("seconds", &b->min_seconds, 0, 1e6), CLI_I("check", &b->check_n, 0, 1 << 20),
                            CLI_S("math", &math), CLI_OPT_END};
    int rc = cli_parse("bench gpu", argc, argv, opts, gpu_usage, NULL);
    if (rc >= 0) return rc;
    if (batches) b->nbatch = parse_list(batches, b->batches, 8);
    if (cpu_batches) b->ncpu_batch = parse_list(cpu_batches, b->cpu_batches, 8);
    if (b->nbatch < 0 || b->ncpu_batch < 0) {
        fprintf(stderr, "nesf bench gpu: bad batch list %s\n", b->nbatch < 0 ? batches : cpu_batches);
        return 2;
    }
    if (math) snprintf(b->math, sizeof b->math, "%s", math);
    return -1;
}

int nesf_bench_gpu(int argc, char **argv)
{
    bench b = {.batches = {1, 64, 512}, .nbatch = 3, .cpu_batches = {1, 8}, .ncpu_batch = 2,
               .train_steps = 20, .cpu_train_steps = 2, .min_seconds = 3.0, .check_n = 8,
               .math = "fp32,tf32,bf16"};
    int arc = gpu_args(argc, argv, &b);
    if (arc >= 0) return arc;
    const char *sh = getenv("NESF_SHARED");
    char p[1024];
    nesf_error err = {0};
    snprintf(p, sizeof p, "%s/datasets/lcs6/meta.json", sh ? sh : "../shared");
    int rc = nesf_vocab_load(p, &b.vocab, &err);
    snprintf(p, sizeof p, "%s/datasets/lcs6/train.jsonl", sh ? sh : "../shared");
    if (!rc) rc = nesf_dataset_load(p, &b.train, &err);
    snprintf(p, sizeof p, "%s/datasets/lcs6/val.jsonl", sh ? sh : "../shared");
    if (!rc) rc = nesf_dataset_load(p, &b.val, &err);
    if (rc) {
        fprintf(stderr, "nesf bench gpu: %s\n", err.msg);
        return 1;
    }
    for (int k = 0; k < 3; k++) {
        b.bbmin[k] = 1e30f;
        b.bbmax[k] = -1e30f;
    }
    for (int i = 0; i < b.train.n; i++)
        for (int a = 0; a < b.train.s[i]->n; a++)
            for (int k = 0; k < 3; k++) {
                float x = (float)b.train.s[i]->cart[3 * a + k];
                b.bbmin[k] = fminf(b.bbmin[k], x);
                b.bbmax[k] = fmaxf(b.bbmax[k], x);
            }

    /* CPU first: its field and decodes are the reference */
    nesf_backend *cpu = NULL;
    if (nesf_backend_cpu_create(0, &cpu, &err)) {
        fprintf(stderr, "nesf bench gpu: %s\n", err.msg);
        return 1;
    }
    run_backend(&b, cpu, b.cpu_batches, b.ncpu_batch, b.cpu_train_steps);
    nesf_backend_free(cpu);
    if (!nesf_backend_cuda_available()) printf("no CUDA device: CPU figures only\n");
    for (char *save = NULL, *mode = strtok_r(b.math, ",", &save);
         mode && nesf_backend_cuda_available(); mode = strtok_r(NULL, ",", &save)) {
        nesf_backend *gpu;
        nesf_backend_params bp;
        nesf_backend_params_default(&bp);
        int grc = nesf_backend_params_set(&bp, "NESF_CUDA_MATH", mode, &err);
        if (!grc) grc = nesf_backend_cuda_create(&bp, &gpu, &err);
        if (grc) {
            fprintf(stderr, "nesf bench gpu: %s\n", err.msg);
            rc = 1;
            continue;
        }
        run_backend(&b, gpu, b.batches, b.nbatch, b.train_steps);
        nesf_backend_free(gpu);
    }
    if (b.ref)
        for (int i = 0; i < b.check_n; i++) nesf_structure_free(b.ref[i]);
    free(b.ref);
    free(b.check_z);
    free(b.field_ref);
    nesf_dataset_free(&b.train);
    nesf_dataset_free(&b.val);
    return rc;
}

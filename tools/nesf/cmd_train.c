/* nesf train - the offline training job (spec §4) on the core trainer.
 *
 * RUN/checkpoint.safetensors  weights + Adam + state, every few minutes and
 *                             on SIGINT/SIGTERM (atomic); --resume continues it
 * RUN/best.safetensors        best validation loss so far (a normal model)
 * RUN/log.jsonl               one JSON line per epoch
 * Every random draw derives from (seed, epoch, batch), so a resumed run
 * reproduces an uninterrupted one. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "latent_cli.h"
#include "clock.h"
#include "commands.h"
#include "dataset.h"
#include "train.h"

/* The next batch's queries are drawn on a thread while the current step
 * runs: sampling is host work (nearest atoms for ~200 k points per batch)
 * that would otherwise leave a GPU idle.  Same seeds, same queries. */
typedef struct prefetch {
    pthread_t th;
    int running, epoch, batch, n, rc;
    nesf_trainer *tr;
    nesf_structure **bs;
    uint64_t seed;
    nesf_queries q;
    nesf_error err;
} prefetch;

static void *prefetch_main(void *arg)
{
    prefetch *p = arg;
    p->rc = nesf_trainer_sample(p->tr, p->bs, p->n, p->seed, &p->q, &p->err);
    return NULL;
}

/* Waits for a running prefetch; returns 1 when it drew (epoch, batch) and
 * hands its queries (or its error) over, else discards them. */
static int prefetch_take(prefetch *p, int epoch, int batch, nesf_queries *q, int *rc,
                         nesf_error *err)
{
    if (!p->running) return 0;
    pthread_join(p->th, NULL);
    p->running = 0;
    if (p->epoch != epoch || p->batch != batch) {
        if (!p->rc) nesf_queries_free(&p->q);
        return 0;
    }
    *rc = p->rc;
    if (p->rc) *err = p->err;
    else *q = p->q;
    return 1;
}

static volatile sig_atomic_t stop_requested;
static void on_signal(int sig) { (void)sig; stop_requested = 1; }

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
            "  --quiet               no progress line\n");
}

static int join(char *buf, size_t n, const char *dir, const char *file)
{
    return snprintf(buf, n, "%s/%s", dir, file) >= (int)n ? -1 : 0;
}

static void fmt_losses(char *buf, size_t n, const nesf_losses *l)
{
    snprintf(buf, n, "{\"total\":%.6g,\"position\":%.6g,\"species\":%.6g,\"length\":%.6g,\"angle\":%.6g}",
             l->total, l->pos, l->spec, l->len, l->ang);
}

int nesf_cmd_train(int argc, char **argv)
{
    const char *config = "config/models/nesf-paper.json", *data = NULL, *out = NULL, *backend = "auto",
               *from = NULL;
    int epochs = -1, resume = 0, threads = 0, val_every = 1, val_limit = 0, quiet = 0;
    long max_steps = -1;
    double minutes = 0, ckpt_minutes = 5;
    static const struct option opts[] = {
        {"config", required_argument, 0, 'c'}, {"data", required_argument, 0, 'd'},
        {"out", required_argument, 0, 'o'}, {"epochs", required_argument, 0, 'e'},
        {"minutes", required_argument, 0, 'm'}, {"resume", no_argument, 0, 'r'},
        {"backend", required_argument, 0, 'b'}, {"threads", required_argument, 0, 't'},
        {"checkpoint-minutes", required_argument, 0, 'k'}, {"val-every", required_argument, 0, 'v'},
        {"val-limit", required_argument, 0, 'l'}, {"quiet", no_argument, 0, 'q'},
        {"max-steps", required_argument, 0, 'x'}, {"from", required_argument, 0, 'f'},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': config = optarg; break;
        case 'd': data = optarg; break;
        case 'o': out = optarg; break;
        case 'e': epochs = atoi(optarg); break;
        case 'm': minutes = atof(optarg); break;
        case 'r': resume = 1; break;
        case 'b': backend = optarg; break;
        case 't': threads = atoi(optarg); break;
        case 'k': ckpt_minutes = atof(optarg); break;
        case 'v': val_every = atoi(optarg) > 0 ? atoi(optarg) : 1; break;
        case 'l': val_limit = atoi(optarg); break;
        case 'q': quiet = 1; break;
        case 'x': max_steps = atol(optarg); break;
        case 'f': from = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!data || !out) {
        usage(stderr);
        return 2;
    }
    nesf_error err = {0};
    char path[4096], ckpt[4096], best[4096], logp[4096];
    if (join(ckpt, sizeof ckpt, out, "checkpoint.safetensors") || join(best, sizeof best, out, "best.safetensors") ||
        join(logp, sizeof logp, out, "log.jsonl")) {
        fprintf(stderr, "nesf train: path too long\n");
        return 2;
    }
    if (mkdir(out, 0755) && errno != EEXIST) {
        fprintf(stderr, "nesf train: cannot create %s: %s\n", out, strerror(errno));
        return 1;
    }

    /* data */
    nesf_vocab vocab;
    nesf_dataset train = {0}, val = {0};
    join(path, sizeof path, data, "meta.json");
    if (nesf_vocab_load(path, &vocab, &err)) goto fail;
    join(path, sizeof path, data, "train.jsonl");
    double t0 = nesf_clock_s();
    if (nesf_dataset_load(path, &train, &err)) goto fail;
    join(path, sizeof path, data, "val.jsonl");
    if (nesf_dataset_load(path, &val, &err)) goto fail;
    for (int i = 0; i < train.n; i++)
        if (nesf_structure_canonicalize(train.s[i], &err)) goto fail;
    for (int i = 0; i < val.n; i++)
        if (nesf_structure_canonicalize(val.s[i], &err)) goto fail;
    if (val_limit > 0 && val_limit < val.n) {
        for (int i = val_limit; i < val.n; i++) nesf_structure_free(val.s[i]);
        val.n = val_limit;
    }
    fprintf(stderr, "nesf train: %d train, %d val structures (%.2f s)\n", train.n, val.n, nesf_clock_s() - t0);

    nesf_backend *be = NULL;
    if (cli_backend_open(backend, threads, &be, &err)) goto fail;
    fprintf(stderr, "nesf train: backend %s\n", be->device);

    nesf_model *m = NULL;
    nesf_train_config tc;
    nesf_train_config_paper(&tc);
    nesf_train_state st = {.best_val = INFINITY};
    const int resuming = resume && access(ckpt, R_OK) == 0;
    float lo[3], hi[3]; /* spec §2: the box of the atoms trained on */
    nesf_structures_bbox(train.s, train.n, lo, hi);
    if (resuming) {
        if (nesf_model_load(ckpt, be, &m, &err)) goto fail;
        fprintf(stderr, "nesf train: resuming %s\n", ckpt);
    } else if (from) {
        /* the file's network, the config file's training settings, and the
         * box of the atoms trained on now (another data set may be larger) */
        if (nesf_model_load(from, be, &m, &err)) goto fail;
        if (nesf_train_config_load(config, &tc, &err)) goto fail;
        float olo[3], ohi[3];
        nesf_model_bbox(m, olo, ohi);
        if (memcmp(lo, olo, sizeof lo) || memcmp(hi, ohi, sizeof hi)) {
            nesf_model_set_bbox(m, lo, hi);
            fprintf(stderr,
                    "nesf train: bounding box of this training set [%.3f %.3f %.3f] .. [%.3f %.3f %.3f] "
                    "(the model's was [%.3f %.3f %.3f] .. [%.3f %.3f %.3f])\n",
                    lo[0], lo[1], lo[2], hi[0], hi[1], hi[2], olo[0], olo[1], olo[2], ohi[0], ohi[1], ohi[2]);
        }
    } else {
        nesf_model_config mc;
        if (nesf_model_config_load(config, &mc, &err)) goto fail;
        if (nesf_train_config_load(config, &tc, &err)) goto fail;
        if (nesf_model_create(&mc, vocab.z, vocab.n, lo, hi, be, tc.seed, &m, &err)) goto fail;
    }
    {
        /* every saved file records what it was trained on (domain.h); a
         * cycle-distance calibration of earlier weights no longer holds */
        nesf_domain dom;
        nesf_domain_from_structures(train.s, train.n, &dom);
        nesf_model_set_domain(m, &dom);
    }
    if (resuming) {
        /* the checkpoint's training configuration wins over the file's */
        const char *saved = nesf_model_train_config(m);
        if (*saved) {
            char tmp[] = "/tmp/nesf-tc-XXXXXX";
            int fd = mkstemp(tmp);
            if (fd >= 0) {
                FILE *f = fdopen(fd, "w");
                fprintf(f, "{\"training\": %s}", saved);
                fclose(f);
                if (nesf_train_config_load(tmp, &tc, &err)) {
                    unlink(tmp);
                    goto fail;
                }
                unlink(tmp);
            }
        }
    }
    if (epochs >= 0) tc.epochs = epochs;
    nesf_trainer *tr = NULL;
    if (nesf_trainer_create(m, &tc, &tr, &err)) goto fail;
    if (resuming && nesf_trainer_load(tr, &st, ckpt, &err)) goto fail;
    if (!resuming && from) {
        /* Adam moments carry over from a checkpoint (a weights file has
         * none); the schedule, the epoch count and the best validation
         * loss start afresh, since the losses may be weighted differently.
         * Steps and seconds keep counting: they measure compute spent. */
        nesf_train_state prev = {0};
        nesf_error e2 = {0};
        if (nesf_trainer_load(tr, &prev, from, &e2) == NESF_OK) {
            st.step = prev.step;
            st.seconds = prev.seconds;
            fprintf(stderr, "nesf train: from %s (epoch %d, step %ld, %.0f s), Adam moments kept\n",
                    from, prev.epoch, prev.step, prev.seconds);
        } else {
            fprintf(stderr, "nesf train: from %s, fresh Adam moments (%s)\n", from, e2.msg);
        }
    }
    char *tcj = nesf_train_config_to_json(&tc);
    fprintf(stderr, "nesf train: %zu parameters, config %s\n", nesf_model_param_count(m), tcj);

    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    /* validation queries are drawn once, from a fixed seed */
    nesf_queries vq;
    if (nesf_trainer_sample(tr, val.s, val.n, nesf_seed_mix(tc.seed, 0xCAFE), &vq, &err)) goto fail;

    const int B = tc.batch < train.n ? tc.batch : train.n;
    const int nb = train.n / B + (train.n % B >= 2 ? 1 : 0);  /* a last batch of 1 would break BatchNorm */
    int *perm = malloc((size_t)train.n * sizeof *perm);
    nesf_structure **bs = malloc((size_t)B * sizeof *bs);
    prefetch pf = {.tr = tr, .bs = malloc((size_t)B * sizeof *bs)};
    if (!perm || !bs || !pf.bs) {
        nesf_fail(&err, NESF_ERR_NOMEM, "out of memory");
        goto fail;
    }
    const double start = nesf_clock_s(), deadline = minutes > 0 ? start + minutes * 60 : INFINITY;
    double last_ckpt = start, last_print = 0, seconds0 = st.seconds;
    long structs = 0, queries = 0, steps_here = 0;
    int rc = 0;
    while (st.epoch < tc.epochs && !stop_requested && nesf_clock_s() < deadline && steps_here != max_steps) {
        /* the epoch's order: Fisher-Yates from (seed, epoch) */
        uint64_t es = nesf_seed_mix(tc.seed, (uint64_t)st.epoch + 1);
        for (int i = 0; i < train.n; i++) perm[i] = i;
        for (int i = train.n - 1; i > 0; i--) {
            es = nesf_seed_mix(es, (uint64_t)i);
            int j = (int)(es % (uint64_t)(i + 1)), t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        const float lr = nesf_train_lr(&tc, st.epoch);
        while (st.batch < nb && !stop_requested && nesf_clock_s() < deadline && steps_here != max_steps) {
            int b0 = st.batch * B, n = b0 + B <= train.n ? B : train.n - b0;
            for (int i = 0; i < n; i++) bs[i] = train.s[perm[b0 + i]];
            uint64_t bseed = nesf_seed_mix(nesf_seed_mix(tc.seed, (uint64_t)st.epoch + 1), (uint64_t)st.batch + 1);
            nesf_queries q;
            nesf_losses l;
            int src = 0;
            if (!prefetch_take(&pf, st.epoch, st.batch, &q, &src, &err))
                src = nesf_trainer_sample(tr, bs, n, bseed, &q, &err);
            if (src) goto fail;
            if (st.batch + 1 < nb) { /* draw the next batch meanwhile */
                int c0 = (st.batch + 1) * B;
                pf.n = c0 + B <= train.n ? B : train.n - c0;
                for (int i = 0; i < pf.n; i++) pf.bs[i] = train.s[perm[c0 + i]];
                pf.epoch = st.epoch;
                pf.batch = st.batch + 1;
                pf.seed = nesf_seed_mix(nesf_seed_mix(tc.seed, (uint64_t)st.epoch + 1), (uint64_t)pf.batch + 1);
                pf.running = pthread_create(&pf.th, NULL, prefetch_main, &pf) == 0;
            }
            if (nesf_trainer_forward_backward(tr, bs, n, &q, nesf_seed_mix(bseed, 0xD0), &l, &err) ||
                nesf_trainer_step(tr, lr, &err)) {
                nesf_queries_free(&q);
                goto fail;
            }
            queries += l.pos_queries + l.spec_queries;
            nesf_queries_free(&q);
            structs += n;
            st.acc_loss += l.total;
            st.batch++;
            st.step++;
            steps_here++;
            double t = nesf_clock_s();
            if (!quiet && isatty(2) && t - last_print > 1) {
                fprintf(stderr, "\repoch %d  batch %d/%d  loss %.4f  %.1f structures/s  %.0f queries/s   ",
                        st.epoch + 1, st.batch, nb, l.total, structs / (t - start), queries / (t - start));
                last_print = t;
            }
            if (t - last_ckpt > ckpt_minutes * 60) {
                st.seconds = seconds0 + (t - start);
                if (nesf_trainer_save(tr, &st, ckpt, &err)) goto fail;
                last_ckpt = t;
            }
        }
        if (st.batch < nb) break;  /* stopped mid-epoch */
        nesf_losses tl = {.total = st.acc_loss / nb};
        st.epoch++;
        st.batch = 0;
        st.acc_loss = 0;
        st.seconds = seconds0 + (nesf_clock_s() - start);
        char tls[256], vls[256] = "null";
        snprintf(tls, sizeof tls, "{\"total\":%.6g}", tl.total);
        int improved = 0;
        if (st.epoch % val_every == 0 || st.epoch == tc.epochs) {
            nesf_losses vl;
            if (nesf_trainer_eval_loss(tr, val.s, val.n, &vq, &vl, &err)) goto fail;
            fmt_losses(vls, sizeof vls, &vl);
            if (vl.total < st.best_val) {
                st.best_val = vl.total;
                st.best_epoch = st.epoch;
                improved = 1;
            }
        }
        if (improved && nesf_model_save(m, best, tcj, &err)) goto fail;
        if (nesf_trainer_save(tr, &st, ckpt, &err)) goto fail;
        last_ckpt = nesf_clock_s();
        FILE *lf = fopen(logp, "a");
        if (lf) {
            fprintf(lf, "{\"epoch\":%d,\"step\":%ld,\"lr\":%g,\"train\":%s,\"val\":%s,\"best\":%s,\"seconds\":%.1f}\n",
                    st.epoch, st.step, (double)lr, tls, vls, improved ? "true" : "false", st.seconds);
            fclose(lf);
        }
        fprintf(stderr, "%sepoch %d  train %.4f  val %s%s  (%.0f s)\n", !quiet && isatty(2) ? "\r" : "", st.epoch,
                tl.total, vls, improved ? "  *best*" : "", st.seconds);
    }
    {
        nesf_queries unused;
        int urc;
        prefetch_take(&pf, -1, -1, &unused, &urc, &err); /* a batch drawn for nothing */
    }
    st.seconds = seconds0 + (nesf_clock_s() - start);
    if (nesf_trainer_save(tr, &st, ckpt, &err)) goto fail;
    fprintf(stderr, "nesf train: %s after %d epochs (%ld steps, %.0f s); best val %.4f at epoch %d\n",
            stop_requested ? "stopped" : "done", st.epoch, st.step, st.seconds, st.best_val, st.best_epoch);
    free(perm);
    free(bs);
    free(pf.bs);
    free(tcj);
    nesf_queries_free(&vq);
    nesf_trainer_free(tr);
    nesf_model_free(m);
    nesf_backend_free(be);
    nesf_dataset_free(&train);
    nesf_dataset_free(&val);
    return rc;
fail:
    fprintf(stderr, "nesf train: %s\n", err.msg[0] ? err.msg : "failed");
    return 1;
}

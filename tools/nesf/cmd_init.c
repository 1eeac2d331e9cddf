/* nesf init - a freshly initialised model (PyTorch's default init from a
 * seed) with the dataset's species list and training bounding box: the
 * starting point of training, and an untrained baseline for `nesf eval`. */
#include <stdio.h>
#include <stdlib.h>

#include "cli_opts.h"
#include "commands.h"
#include "dataset.h"
#include "latent_cli.h"

static void usage(FILE *f)
{
    fprintf(f,
        "usage: nesf init --meta META.json --data-bbox TRAIN.jsonl --out M.safetensors\n"
        "                 [--config config/models/NAME.json] [--seed N]\n"
        "  --config FILE      network configuration (default: the paper's)\n"
        "  --meta FILE        species list (the dataset's meta.json)\n"
        "  --data-bbox FILE   training structures: their atoms' bounding box\n"
        "  --seed N           initialisation seed (default 0)\n");
}

int nesf_cmd_init(int argc, char **argv)
{
    const char *config = NULL, *meta = NULL, *bbox = NULL, *out = NULL;
    long seed_arg = 0;
    const cli_opt opts[] = {CLI_S("config", &config), CLI_S("meta", &meta),
                            CLI_S("data-bbox", &bbox), CLI_OPT_OUT(&out),
                            CLI_L("seed", &seed_arg, 0, 9.2e18), CLI_OPT_END};
    int prc = cli_parse("init", argc, argv, opts, usage, NULL);
    if (prc >= 0) return prc;
    if (!meta || !bbox || !out) {
        usage(stderr);
        return 2;
    }
    const unsigned long long seed = (unsigned long long)seed_arg;
    nesf_error err;
    nesf_model_config cfg;
    nesf_model_config_paper(&cfg);
    nesf_vocab v;
    nesf_dataset d = {0};
    if ((config && nesf_model_config_load(config, &cfg, &err)) || nesf_vocab_load(meta, &v, &err) ||
        nesf_dataset_load(bbox, &d, &err)) {
        fprintf(stderr, "nesf init: %s\n", err.msg);
        nesf_dataset_free(&d);
        return 1;
    }
    float lo[3], hi[3];
    nesf_structures_bbox(d.s, d.n, lo, hi);
    nesf_dataset_free(&d);
    if (!(lo[0] <= hi[0] && lo[1] <= hi[1] && lo[2] <= hi[2])) {
        fprintf(stderr, "nesf init: %s has no atoms\n", bbox);
        return 1;
    }
    nesf_backend *be;
    nesf_model *m;
    if (nesf_backend_create("cpu", 0, &be, &err)) {
        fprintf(stderr, "nesf init: %s\n", err.msg);
        return 1;
    }
    if (nesf_model_create(&cfg, v.z, v.n, lo, hi, be, seed, &m, &err)) {
        fprintf(stderr, "nesf init: %s\n", err.msg);
        nesf_backend_free(be);
        return 1;
    }
    int rc = nesf_model_save(m, out, NULL, &err);
    if (rc) fprintf(stderr, "nesf init: %s\n", err.msg);
    else
        printf("nesf init: %s: %zu parameters, %d species, bbox [%.4f %.4f %.4f] .. "
               "[%.4f %.4f %.4f], seed %llu\n", out, nesf_model_param_count(m), v.n, lo[0], lo[1],
               lo[2], hi[0], hi[1], hi[2], seed);
    nesf_model_free(m);
    nesf_backend_free(be);
    return rc ? 1 : 0;
}

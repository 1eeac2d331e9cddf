/* nesf - the offline tool: train, eval, encode, decode, convert, bench. */
#include <stdio.h>
#include <string.h>

#include "commands.h"

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command;

static const command commands[] = {
    {"convert", nesf_cmd_convert, "convert a CIF/JSON structure to JSON, CIF or pymatgen JSON"},
    {"encode", nesf_cmd_encode, "latent vectors of structures (CIF/JSON) as JSON"},
    {"train", nesf_cmd_train, "train a model (checkpoints, resume, best weights)"},
    {"cv", nesf_cmd_cv, "k-fold cross-validation (train, reconstruct, pooled Table 1 row)"},
    {"bench", nesf_cmd_bench, "benchmarks (load, field, train, decode)"},
    {"init", nesf_cmd_init, "write a freshly initialised model (untrained baseline)"},
    {"eval", nesf_cmd_eval, "reconstruct a dataset and print the paper's error table"},
    {"match", nesf_cmd_match, "compare structures like pymatgen's StructureMatcher"},
    {"domain", nesf_cmd_domain, "record a model's training domain and confidence calibration in its file"},
    {"decode", nesf_cmd_decode, "decode latent vectors to structures (CIF/JSON)"},
    {"interpolate", nesf_cmd_interpolate, "decode the latent line between two structures"},
    {"latents", nesf_cmd_latents, "encode a dataset; t-SNE map as SVG"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: nesf <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n`nesf <command> --help` describes a command.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("nesf %s\n", NESF_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name))
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "nesf: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}

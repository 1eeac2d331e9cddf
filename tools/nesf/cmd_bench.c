/* nesf bench <what> - dispatches to the benchmarks; each prints figures. */
#include <stdio.h>
#include <string.h>

#include "commands.h"

int nesf_cmd_bench(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help")) {
        printf("usage: nesf bench <load|gpu|field|train|decode> [options]\n");
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "load")) return nesf_bench_load(argc - 1, argv + 1);
    if (!strcmp(argv[1], "decode")) return nesf_bench_decode(argc - 1, argv + 1);
    if (!strcmp(argv[1], "field")) return nesf_bench_field(argc - 1, argv + 1);
    if (!strcmp(argv[1], "train")) return nesf_bench_train(argc - 1, argv + 1);
    if (!strcmp(argv[1], "gpu")) return nesf_bench_gpu(argc - 1, argv + 1);
    fprintf(stderr, "nesf bench: unknown benchmark '%s'\n", argv[1]);
    return 2;
}

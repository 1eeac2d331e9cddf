/* nesf bench load [FILE] - time nesf_dataset_load on a JSON Lines dataset,
 * next to two baselines measured in the same run: reading the bytes, and
 * parsing every line with jansson alone (no structures built). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "commands.h"
#include "dataset.h"
#include "sio.h"

static int parse_only(const char *text, size_t len)
{
    int n = 0;
    for (const char *p = text, *end = text + len; p < end;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *e = nl ? nl : end;
        if (e > p) {
            json_t *j = json_loadb(p, (size_t)(e - p), 0, NULL);
            if (!j) return -1;
            json_decref(j);
            n++;
        }
        p = e + 1;
    }
    return n;
}

int nesf_bench_load(int argc, char **argv)
{
    char def[1024];
    const char *path = argc > 1 ? argv[1] : NULL;
    if (path && !strcmp(path, "--help")) {
        printf("usage: nesf bench load [FILE.jsonl]   (default: $NESF_SHARED or ../shared, "
               "datasets/lcs6/train.jsonl)\n");
        return 0;
    }
    if (!path) {
        const char *sh = getenv("NESF_SHARED");
        snprintf(def, sizeof def, "%s/datasets/lcs6/train.jsonl", sh ? sh : "../shared");
        path = def;
    }
    enum { REPS = 5 };
    double t_read = 1e30, t_parse = 1e30, t_load = 1e30;
    int n = 0, n_parse = 0;
    size_t bytes = 0;
    for (int r = 0; r < REPS; r++) {
        nesf_error err = {0};
        char *text;
        double t0 = nesf_clock_s();
        if (nesf_sio_slurp(path, &text, &bytes, &err)) {
            fprintf(stderr, "nesf bench load: %s\n", err.msg);
            return 1;
        }
        double t1 = nesf_clock_s();
        n_parse = parse_only(text, bytes);
        double t2 = nesf_clock_s();
        free(text);
        nesf_dataset d;
        double t3 = nesf_clock_s();
        if (nesf_dataset_load(path, &d, &err)) {
            fprintf(stderr, "nesf bench load: %s\n", err.msg);
            return 1;
        }
        double t4 = nesf_clock_s();
        n = d.n;
        nesf_dataset_free(&d);
        if (t1 - t0 < t_read) t_read = t1 - t0;
        if (t2 - t1 < t_parse) t_parse = t2 - t1;
        if (t4 - t3 < t_load) t_load = t4 - t3;
    }
    printf("bench load: %s (%.1f MB), best of %d runs\n", path, (double)bytes / 1e6, REPS);
    printf("  %-34s %10s %14s\n", "", "seconds", "structures/s");
    printf("  %-34s %10.4f %14s\n", "baseline: read bytes", t_read, "-");
    printf("  %-34s %10.4f %14.0f\n", "baseline: jansson parse only", t_read + t_parse,
           n_parse / (t_read + t_parse));
    printf("  %-34s %10.4f %14.0f\n", "nesf_dataset_load", t_load, n / t_load);
    printf("structures: %d  seconds: %.4f  structures/s: %.0f\n", n, t_load, n / t_load);
    return 0;
}

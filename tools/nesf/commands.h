/* commands.h - subcommands of the offline `nesf` tool, one file each
 * (cmd_<name>.c).  Each returns the process exit status: 0 success,
 * 1 failure reported on stderr, 2 usage error. */
#ifndef NESF_COMMANDS_H
#define NESF_COMMANDS_H

#include <stdio.h>

int nesf_cmd_convert(int argc, char **argv);
int nesf_cmd_bench(int argc, char **argv);
int nesf_cmd_train(int argc, char **argv);
int nesf_cmd_encode(int argc, char **argv);
int nesf_cmd_cv(int argc, char **argv);
int nesf_bench_load(int argc, char **argv);
int nesf_cmd_eval(int argc, char **argv);
int nesf_cmd_decode(int argc, char **argv);
int nesf_cmd_interpolate(int argc, char **argv);
int nesf_cmd_latents(int argc, char **argv);
int nesf_cmd_init(int argc, char **argv);
int nesf_cmd_domain(int argc, char **argv);
int nesf_cmd_match(int argc, char **argv);
int nesf_bench_decode(int argc, char **argv);
int nesf_bench_field(int argc, char **argv);
int nesf_bench_train(int argc, char **argv);
int nesf_bench_gpu(int argc, char **argv);
int nesf_bench_decode_modes(int argc, char **argv);

/* Runs a training job with nesf train's hooks (train.h): its notes and
 * epoch lines on stderr, the progress line unless quiet, SIGINT/SIGTERM
 * stop it with a checkpoint (*stopped, may be NULL, says so).  Returns the
 * exit status, having printed the error. */
struct nesf_train_job;
/* nesf eval --model MODEL --data DATA --out OUT --backend B --threads T
 * [--options O] [--refine R] (NULL: the default): the report on stdout;
 * returns the exit status. */
int nesf_eval_reconstruct(const char *model, const char *data, const char *out, const char *backend,
                          int threads, const char *options, const char *refine);
int nesf_train_job_cli(const struct nesf_train_job *job, int quiet, int *stopped);
/* nesf domain --model MODEL --data DATA [--out OUT] --sample N --options O
 * --refine R --backend B --threads T (NULL strings: the defaults): records
 * DATA's domain and cycle-distance calibration in MODEL; returns the exit
 * status, having printed what it did on report (errors on stderr). */
int nesf_domain_record(const char *model, const char *data, const char *out, int sample, const char *options,
                       const char *refine, const char *backend, int threads, FILE *report);

#endif

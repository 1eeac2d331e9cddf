/* commands.h - subcommands of the offline `nesf` tool, one file each
 * (cmd_<name>.c).  Each returns the process exit status: 0 success,
 * 1 failure reported on stderr, 2 usage error. */
#ifndef NESF_COMMANDS_H
#define NESF_COMMANDS_H

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

#endif

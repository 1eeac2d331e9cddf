/* latent_cli.h - what the latent-space commands (eval, decode,
 * interpolate, latents, init) share: a progress bar, opening a model on a
 * backend, reading latent vectors, printing structures. */
#ifndef NESF_LATENT_CLI_H
#define NESF_LATENT_CLI_H

#include "clock.h"
#include "decode.h"
#include "model.h"
#include "refine.h"
#include "structure.h"

/* A one-line progress bar on stderr, drawn only when stderr is a terminal. */
typedef struct cli_progress {
    const char *label;
    long total;
    double t0;
    int tty;
    int drawn; /* last permille drawn */
} cli_progress;

void cli_progress_start(cli_progress *p, const char *label, long total);
void cli_progress_update(cli_progress *p, long done);
void cli_progress_end(cli_progress *p);

/* The tools' backend: kind ("cpu", "cuda", "auto"; NULL: auto) and threads
 * (<= 0: all cores), with the CUDA parameters of the documented variables
 * (NESF_CUDA_MATH, NESF_CUDA_LT, NESF_CUDA_CHUNK, NESF_CUDA_EMULATION),
 * which the tool reads and passes to the library. */
int cli_backend_open(const char *kind, int threads, nesf_backend **be, nesf_error *err);

/* Backend kind ("cpu", "cuda", "auto") and threads (<= 0: all cores), then
 * the model.  On failure prints "nesf CMD: ..." and returns 1. */
int cli_open_model(const char *cmd, const char *path, const char *backend, int threads,
                   nesf_backend **be, nesf_model **m);
void cli_close_model(nesf_backend *be, nesf_model *m);

/* Latent vectors from JSON text: an array of numbers (one latent), an
 * array of such arrays, or an object with "latent" or "latents" holding
 * one of those.  Each must have `latent` finite numbers.  *z is malloc'd
 * (n x latent).  Returns NESF_ERR_FORMAT when the text is JSON but not
 * latents, so callers can try it as a structure. */
int cli_parse_latents(const char *text, int latent, float **z, int *n, nesf_error *err);

/* Decode options from a flag's argument (JSON text, or @FILE for a file)
 * over *o; arg NULL leaves *o.  On failure prints "nesf CMD: --FLAG: ..."
 * and returns 2 (the usage exit code), else 0. */
int cli_decode_options(const char *cmd, const char *flag, const char *arg, nesf_decode_opts *o);
/* Latent refinement options: the defaults (refinement on), overridden by
 * --refine's argument when given (true, false, a step count or a JSON
 * object, refine.h); prints the error and returns 2 on failure. */
int cli_refine_options(const char *cmd, const char *arg, nesf_refine_opts *o);

/* Structures as one text: "cif" (data blocks one after another), "json"
 * (an array of full structure objects: formula, space group) or "jsonl"
 * (the dataset line format).  A NULL entry (a failed decode) still gets
 * its record, so that record i is structure i: {"index", "id"?, "error"}
 * in JSON, a "# structure i: error" comment in CIF; ids[i] (ids may be
 * NULL) names it and ierr[i] (ierr may be NULL) says why.  malloc'd, NULL
 * when out of memory or fmt unknown. */
char *cli_format_structures(nesf_structure *const *s, int n, const char *fmt,
                            const char *const *ids, const nesf_error *ierr);

/* The symprec used for the space groups reported by the tools. */
#define CLI_SYMPREC 0.1

#endif

/* config.h - nesfd settings: defaults, config/nesfd.json, command-line flags.
 *
 * Precedence: built-in defaults < the JSON file (--config) < flags.  Model
 * paths in the file are relative to the file's directory; paths given with
 * --model (and the built-in default models/lcs6.safetensors) are relative to
 * the current directory.  Errors are returned as NESF_ERR_* codes with a
 * message naming the key or flag; nothing here prints except
 * nesfd_config_usage. */
#ifndef NESFD_CONFIG_H
#define NESFD_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "backend.h"
#include "decode.h"
#include "error.h"

#define NESFD_MAX_MODELS 16
#define NESFD_MAX_ORIGINS 16

typedef struct nesfd_model_spec {
    char name[64];
    char path[4096];
} nesfd_model_spec;

typedef struct nesfd_config {
    char host[256];            /* listen address (IPv4 or IPv6 literal, or "localhost") */
    int port;
    nesfd_model_spec models[NESFD_MAX_MODELS];
    int n_models;              /* models[0] is the default when a request names none */
    char backend[16];          /* auto | cpu | cuda */
    int compute_threads;       /* BLAS threads per backend, 0 = all cores */
    int http_threads;          /* libmicrohttpd thread-pool size */
    int max_connections;
    int max_connections_per_client; /* per client IP address */
    int max_batch;             /* items (latents or structures) per backend call */
    int64_t max_delay_us;      /* how long the oldest queued item may wait for company */
    int queue_limit;           /* queued items per model before 503 */
    int invariant;             /* each item computed in GEMMs of its own inside a batch,
                                  so answers are bit-identical to unbatched ones */
    size_t body_limit;         /* bytes */
    int max_items;             /* latents/structures/steps per request */
    double max_request_work;   /* decoding work per request, particle steps (latents x
                                  iterations x grid points, x 0.1 in fast mode); 0 = 64
                                  latents at the paper's 64 steps on the default grid */
    double request_timeout_s;  /* deadline from arrival to answer (504) */
    int idle_timeout_s;        /* keep-alive connections idle longer are closed */
    double header_timeout_s;   /* from connect (or the previous answer) to a complete
                                  request head; else the connection is closed */
    double body_timeout_s;     /* from the request head to the end of its body */
    size_t body_memory;        /* bytes of request bodies held at once, all connections */
    double shutdown_grace_s;   /* longest wait for in-flight requests on SIGTERM */
    char token[256];           /* bearer token; "" = no authentication */
    char origins[NESFD_MAX_ORIGINS][256]; /* CORS origins; "*" allows any */
    int n_origins;
    int log_requests;          /* one JSON line per request on stderr */
    char web_root[4096];       /* static files (the web viewer) served at /; "" = none */
    int domain_refuse;         /* inputs outside a model's training domain (domain.h):
                                  0 "warn": answered with "warnings", 1 "refuse": 422 */
    nesf_backend_params backend_params; /* CUDA knobs from the environment
                                  (NESF_CUDA_MATH, NESF_CUDA_LT, NESF_CUDA_CHUNK,
                                  NESF_CUDA_EMULATION; nesfd_config_from_args reads
                                  them); threads come from compute_threads */
    nesf_decode_opts decode;   /* decode options of a request that sets none; a request's
                                  "options" override them key by key.  Built in: the fast
                                  mode (it qualified against the paper's algorithm, see
                                  docs/decoding.md); "decode_options": {"mode": "paper"}
                                  restores spec §5 exactly */
} nesfd_config;

void nesfd_config_defaults(nesfd_config *c);

/* Applies the JSON file at path on top of c. */
int nesfd_config_load_file(nesfd_config *c, const char *path, nesf_error *err);

/* Applies argv (argv[0] is the program) on top of c, reading --config first
 * wherever it appears.  Sets *help / *version when asked for and
 * *check when --check-config was given. */
int nesfd_config_from_args(nesfd_config *c, int argc, char **argv, int *help, int *version,
                           int *check, nesf_error *err);

/* Fills the default model list when neither file nor flags gave one. */
void nesfd_config_finish(nesfd_config *c);

/* "host:port", "[v6]:port" or ":port" (host kept). */
int nesfd_config_parse_listen(nesfd_config *c, const char *s, nesf_error *err);

/* Effective configuration as JSON text (token redacted); caller frees. */
char *nesfd_config_dump(const nesfd_config *c);

void nesfd_config_usage(FILE *f);

#endif

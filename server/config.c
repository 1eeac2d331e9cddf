#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "jconf.h"

void nesfd_config_defaults(nesfd_config *c)
{
    *c = (nesfd_config){
        .host = "127.0.0.1", .port = 8080, .backend = "auto", .http_threads = 4,
        .max_connections = 1024, .max_connections_per_client = 64,
        .max_batch = 32, .max_delay_us = 2000, .queue_limit = 4096, .invariant = 1,
        .body_limit = 8u << 20, .max_items = 512, .body_memory = 256u << 20,
        .request_timeout_s = 300, .idle_timeout_s = 60, .header_timeout_s = 10,
        .body_timeout_s = 60, .shutdown_grace_s = 60, .log_requests = 1,
    };
    nesf_backend_params_default(&c->backend_params);
    nesf_decode_opts_default(&c->decode);
    c->decode.mode = NESF_DECODE_FAST;
}

void nesfd_config_finish(nesfd_config *c)
{
    if (c->n_models == 0) {
        c->n_models = 1;
        snprintf(c->models[0].name, sizeof c->models[0].name, "lcs6");
        snprintf(c->models[0].path, sizeof c->models[0].path, "models/lcs6.safetensors");
    }
}

/* ---- value parsers shared by the file and the flags ---- */

static int parse_long(const char *what, const char *s, long lo, long hi, long *out,
                      nesf_error *err)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return nesf_fail(err, NESF_ERR_INVALID, "%s: expected an integer in [%ld, %ld], got '%s'",
                         what, lo, hi, s);
    *out = v;
    return NESF_OK;
}

/* Byte sizes accept a k/m/g suffix (powers of 1024). */
static int parse_size(const char *what, const char *s, size_t *out, nesf_error *err)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    unsigned long long mul = 1;
    if (*end == 'k' || *end == 'K') mul = 1ull << 10, end++;
    else if (*end == 'm' || *end == 'M') mul = 1ull << 20, end++;
    else if (*end == 'g' || *end == 'G') mul = 1ull << 30, end++;
    if (errno || end == s || *end || s[0] == '-' || v == 0 || v > (1ull << 40) / mul)
        return nesf_fail(err, NESF_ERR_INVALID, "%s: expected a positive size like 8388608 or 8M, got '%s'",
                         what, s);
    *out = (size_t)(v * mul);
    return NESF_OK;
}

static int parse_seconds(const char *what, const char *s, double *out, nesf_error *err)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v <= 0 || v > 86400 * 7)
        return nesf_fail(err, NESF_ERR_INVALID, "%s: expected seconds > 0, got '%s'", what, s);
    *out = v;
    return NESF_OK;
}

static int set_domain(nesfd_config *c, const char *what, const char *s, nesf_error *err)
{
    if (strcmp(s, "warn") && strcmp(s, "refuse"))
        return nesf_fail(err, NESF_ERR_INVALID, "%s: expected warn or refuse, got '%s'", what, s);
    c->domain_refuse = !strcmp(s, "refuse");
    return NESF_OK;
}

static int set_backend(nesfd_config *c, const char *what, const char *s, nesf_error *err)
{
    if (strcmp(s, "auto") && strcmp(s, "cpu") && strcmp(s, "cuda"))
        return nesf_fail(err, NESF_ERR_INVALID, "%s: expected auto, cpu or cuda, got '%s'", what, s);
    snprintf(c->backend, sizeof c->backend, "%s", s);
    return NESF_OK;
}

int nesfd_config_parse_listen(nesfd_config *c, const char *s, nesf_error *err)
{
    int rc;
    const char *colon = strrchr(s, ':');
    if (!colon)
        return nesf_fail(err, NESF_ERR_INVALID, "listen: expected HOST:PORT, got '%s'", s);
    long port = 0;
    if ((rc = parse_long("listen port", colon + 1, 0, 65535, &port, err))) return rc;
    size_t hl = (size_t)(colon - s);
    const char *h = s;
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') h++, hl -= 2;
    if (hl >= sizeof c->host)
        return nesf_fail(err, NESF_ERR_INVALID, "listen: host too long");
    if (hl > 0) {
        memcpy(c->host, h, hl);
        c->host[hl] = 0;
    }
    c->port = (int)port;
    return NESF_OK;
}

static int valid_model_name(const char *s)
{
    if (!*s || strlen(s) >= sizeof ((nesfd_model_spec *)0)->name) return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr("-_.", *s)) return 0;
    return 1;
}

/* Adds or replaces model `name`; path is joined to base_dir when relative. */
static int set_model(nesfd_config *c, const char *name, const char *path, const char *base_dir,
                     nesf_error *err)
{
    if (!valid_model_name(name))
        return nesf_fail(err, NESF_ERR_INVALID,
                         "model name '%s': use 1-63 letters, digits, '-', '_' or '.'", name);
    if (!*path) return nesf_fail(err, NESF_ERR_INVALID, "model '%s': empty path", name);
    int i = 0;
    while (i < c->n_models && strcmp(c->models[i].name, name)) i++;
    if (i == NESFD_MAX_MODELS)
        return nesf_fail(err, NESF_ERR_INVALID, "at most %d models", NESFD_MAX_MODELS);
    nesfd_model_spec *m = &c->models[i];
    int w;
    if (path[0] != '/' && base_dir && *base_dir)
        w = snprintf(m->path, sizeof m->path, "%s/%s", base_dir, path);
    else
        w = snprintf(m->path, sizeof m->path, "%s", path);
    if (w < 0 || (size_t)w >= sizeof m->path)
        return nesf_fail(err, NESF_ERR_INVALID, "model '%s': path too long", name);
    snprintf(m->name, sizeof m->name, "%s", name);
    if (i == c->n_models) c->n_models++;
    return NESF_OK;
}

static int add_origin(nesfd_config *c, const char *o, nesf_error *err)
{
    if (c->n_origins == NESFD_MAX_ORIGINS)
        return nesf_fail(err, NESF_ERR_INVALID, "at most %d CORS origins", NESFD_MAX_ORIGINS);
    if (!*o || strlen(o) >= sizeof c->origins[0] || strpbrk(o, "\r\n ,"))
        return nesf_fail(err, NESF_ERR_INVALID, "CORS origin '%s' is not a single origin", o);
    snprintf(c->origins[c->n_origins++], sizeof c->origins[0], "%s", o);
    return NESF_OK;
}

static int read_token_file(nesfd_config *c, const char *path, nesf_error *err)
{
    FILE *f = fopen(path, "r");
    if (!f) return nesf_fail(err, NESF_ERR_IO, "token file %s: %s", path, strerror(errno));
    char line[sizeof c->token + 2];
    if (!fgets(line, sizeof line, f)) line[0] = 0;
    fclose(f);
    line[strcspn(line, "\r\n")] = 0;
    if (strlen(line) >= sizeof c->token)
        return nesf_fail(err, NESF_ERR_INVALID, "token file %s: token longer than %zu bytes", path,
                         sizeof c->token - 1);
    if (!*line) return nesf_fail(err, NESF_ERR_INVALID, "token file %s: empty", path);
    snprintf(c->token, sizeof c->token, "%s", line);
    return NESF_OK;
}

static int set_token(nesfd_config *c, const char *what, const char *t, nesf_error *err)
{
    if (strlen(t) >= sizeof c->token)
        return nesf_fail(err, NESF_ERR_INVALID, "%s: token longer than %zu bytes", what,
                         sizeof c->token - 1);
    for (const char *p = t; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 127)
            return nesf_fail(err, NESF_ERR_INVALID, "%s: token must be printable without spaces", what);
    snprintf(c->token, sizeof c->token, "%s", t);
    return NESF_OK;
}

/* ---- the JSON file ---- */

/* The custom rows: ctx is the config file's folder, which relative paths
 * in the file are joined to. */
static const char *json_str(const char *key, const json_t *v, nesf_error *err)
{
    if (!json_is_string(v)) {
        nesf_fail(err, NESF_ERR_INVALID, "%s: expected a string", key);
        return NULL;
    }
    return json_string_value(v);
}

static int j_listen(void *dst, const char *key, const json_t *v, void *ctx, nesf_error *err)
{
    (void)ctx;
    const char *s = json_str(key, v, err);
    return s ? nesfd_config_parse_listen(dst, s, err) : NESF_ERR_INVALID;
}

static int j_backend(void *dst, const char *key, const json_t *v, void *ctx, nesf_error *err)
{
    (void)ctx;
    const char *s = json_str(key, v, err);
    return s ? set_backend(dst, key, s, err) : NESF_ERR_INVALID;
}

static int j_domain(void *dst, const char *key, const json_t *v, void *ctx, nesf_error *err)
{
    (void)ctx;
    const char *s = json_str(key, v, err);
    return s ? set_domain(dst, key, s, err) : NESF_ERR_INVALID;
}

static int j_token(void *dst, const char *key, const json_t *v, void *ctx, nesf_error *err)
{
    (void)ctx;
    nesfd_config *c = dst;
    if (json_is_null(v)) {
        c->token[0] = 0;
        return NESF_OK;
    }
    const char *s = json_str(key, v, err);
    return s ? set_token(c, key, s, err) : NESF_ERR_INVALID;
}

/* out = s joined to the file's folder when relative; -1 when too long. */
static int file_path(char *out, size_t n, const char *base_dir, const char *s)
{
    int w = s[0] != '/' && base_dir && *base_dir ? snprintf(out, n, "%s/%s", base_dir, s)
                                                : snprintf(out, n, "%s", s);
    return w < 0 || (size_t)w >= n ? -1 : 0;
}

static int j_web_root(void *dst, const char *key, const json_t *v, void *ctx, nesf_error *err)
{
    nesfd_config *c = dst;
    const char *s = json_str(key, v, err);
    if (!s) return NESF_ERR_INVALID;
    if (file_path(c->web_root, sizeof c->web_root, ctx, s))
        return nesf_fail(err, NESF_ERR_INVALID, "%s: path too long", key);
    return NESF_OK;
}

static int j_token_file(void *dst, const char *key, const json_t *v, void *ctx, nesf_error *err)
{
    const char *s = json_str(key, v, err);
    if (!s) return NESF_ERR_INVALID;
    char p[4096];
    if (file_path(p, sizeof p, ctx, s)) return nesf_fail(err, NESF_ERR_INVALID, "%s: path too long", key);
    return read_token_file(dst, p, err);
}

static int j_decode(void *dst, const char *key, const json_t *v, void *ctx, nesf_error *err)
{
    (void)ctx;
    nesfd_config *c = dst;
    if (!json_is_object(v)) return nesf_fail(err, NESF_ERR_INVALID, "%s: expected an object", key);
    int rc = nesf_decode_opts_from_json(&c->decode, v, err);
    if (!rc) rc = nesf_decode_opts_check(&c->decode, err);
    if (rc) nesf_error_prefix(err, "%s: ", key);
    return rc;
}

static int j_origins(void *dst, const char *key, const json_t *v, void *ctx, nesf_error *err)
{
    (void)ctx;
    nesfd_config *c = dst;
    if (!json_is_array(v)) return nesf_fail(err, NESF_ERR_INVALID, "%s: expected an array", key);
    c->n_origins = 0;
    size_t i;
    json_t *o;
    json_array_foreach(v, i, o) {
        const char *s = json_str(key, o, err);
        int rc = s ? add_origin(c, s, err) : NESF_ERR_INVALID;
        if (rc) return rc;
    }
    return NESF_OK;
}

static int j_models(void *dst, const char *key, const json_t *v, void *ctx, nesf_error *err)
{
    nesfd_config *c = dst;
    if (!json_is_object(v))
        return nesf_fail(err, NESF_ERR_INVALID, "%s: expected an object {name: path}", key);
    c->n_models = 0;
    const char *name;
    json_t *p;
    json_object_foreach((json_t *)v, name, p) {
        const char *s = json_str(key, p, err);
        int rc = s ? set_model(c, name, s, ctx, err) : NESF_ERR_INVALID;
        if (rc) return rc;
    }
    return NESF_OK;
}

#define C nesfd_config
static const nesf_jfield batching_rows[] = {
    NESF_JF_INT(C, "max_batch", max_batch, 1, 65536),
    NESF_JF_I64(C, "max_delay_us", max_delay_us, 0, 10000000),
    NESF_JF_INT(C, "queue_limit", queue_limit, 1, 1 << 24),
    NESF_JF_BOOL(C, "invariant", invariant),
    NESF_JF_END,
};
static const nesf_jfield timeout_rows[] = {
    NESF_JF_DOUBLE_OPEN(C, "request_s", request_timeout_s, 0, 86400 * 7),
    NESF_JF_INT(C, "idle_s", idle_timeout_s, 1, 86400),
    NESF_JF_DOUBLE_OPEN(C, "shutdown_grace_s", shutdown_grace_s, 0, 86400 * 7),
    NESF_JF_DOUBLE_OPEN(C, "header_s", header_timeout_s, 0, 86400 * 7),
    NESF_JF_DOUBLE_OPEN(C, "body_s", body_timeout_s, 0, 86400 * 7),
    NESF_JF_END,
};
static const nesf_jfield file_rows[] = {
    NESF_JF_CUSTOM("listen", j_listen),
    NESF_JF_CUSTOM("models", j_models),
    NESF_JF_CUSTOM("backend", j_backend),
    NESF_JF_INT(C, "compute_threads", compute_threads, 0, 1024),
    NESF_JF_INT(C, "http_threads", http_threads, 1, 256),
    NESF_JF_INT(C, "max_connections", max_connections, 1, 65536),
    NESF_JF_INT(C, "max_connections_per_client", max_connections_per_client, 1, 65536),
    NESF_JF_OBJECT("batching", batching_rows),
    NESF_JF_SIZE(C, "body_limit", body_limit, 1, 1099511627776.0),
    NESF_JF_SIZE(C, "body_memory", body_memory, 1, 1099511627776.0),
    NESF_JF_INT(C, "max_items", max_items, 1, 1 << 20),
    NESF_JF_DOUBLE(C, "max_request_work", max_request_work, 0, 1125899906842624.0),
    NESF_JF_OBJECT("timeouts", timeout_rows),
    NESF_JF_CUSTOM("auth_token", j_token),
    NESF_JF_CUSTOM("auth_token_file", j_token_file),
    NESF_JF_CUSTOM("cors_origins", j_origins),
    NESF_JF_BOOL(C, "log_requests", log_requests),
    NESF_JF_CUSTOM("web_root", j_web_root),
    NESF_JF_CUSTOM("domain", j_domain),
    NESF_JF_CUSTOM("decode_options", j_decode),
    NESF_JF_END,
};
#undef C

int nesfd_config_load_file(nesfd_config *c, const char *path, nesf_error *err)
{
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return nesf_fail(err, NESF_ERR_PARSE, "%s:%d:%d: %s", path, je.line, je.column, je.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return nesf_fail(err, NESF_ERR_FORMAT, "%s: expected a JSON object", path);
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    else snprintf(dir, sizeof dir, ".");
    int rc = nesf_jconf_read(file_rows, c, root, "", dir, err);
    json_decref(root);
    if (rc) nesf_error_prefix(err, "%s: ", path);
    return rc;
}

/* ---- flags ---- */

typedef struct {
    const char *name;
    int takes_value;
    const char *arg, *help;
} flag_info;

static const flag_info flags[] = {
    {"--config", 1, "FILE", "JSON configuration (see config/nesfd.json); flags override it"},
    {"--listen", 1, "HOST:PORT", "listen address (default 127.0.0.1:8080; [::1]:8080 for IPv6)"},
    {"--model", 1, "NAME=PATH", "serve a safetensors model under NAME (repeatable; the first is the\n"
                                "default; default lcs6=models/lcs6.safetensors)"},
    {"--backend", 1, "KIND", "auto | cpu | cuda (default auto: CUDA when available)"},
    {"--compute-threads", 1, "N", "BLAS threads per model backend (default 0 = all cores)"},
    {"--http-threads", 1, "N", "HTTP worker threads, each running an epoll loop (default 4)"},
    {"--max-connections", 1, "N", "simultaneous connections (default 1024)"},
    {"--max-batch", 1, "N", "items per backend call (default 32)"},
    {"--max-delay-us", 1, "US", "longest wait of a queued item for a fuller batch (default 2000)"},
    {"--no-batching", 0, NULL, "one item per backend call (same as --max-batch 1 --max-delay-us 0)"},
    {"--fused-batches", 0, NULL, "let the structures of a batch share GEMMs: faster on a GPU, but\n"
                                 "answers may then differ from unbatched ones in the last bits\n"
                                 "(default: each item in GEMMs of its own, answers bit-identical)"},
    {"--domain", 1, "warn|refuse", "inputs outside a model's training domain: answer with \"warnings\"\n"
                                   "(default) or refuse them with 422 (docs/trust.md)"},
    {"--queue-limit", 1, "N", "queued items per model before answering 503 (default 4096)"},
    {"--body-limit", 1, "BYTES", "largest request body, k/m/g suffixes allowed (default 8M)"},
    {"--max-items", 1, "N", "latents, structures or steps per request (default 512)"},
    {"--max-request-work", 1, "N", "decoding work per request in particle steps (latents x\n"
                                   "iterations x grid points, x 0.1 in fast mode), else 413;\n"
                                   "default 0 = 64 latents at the paper's 64 steps"},
    {"--request-timeout", 1, "SEC", "deadline from arrival to answer, else 504 (default 300)"},
    {"--idle-timeout", 1, "SEC", "close keep-alive connections idle this long (default 60)"},
    {"--shutdown-grace", 1, "SEC", "on SIGTERM, wait this long for in-flight requests (default 60)"},
    {"--header-timeout", 1, "SEC", "time for a request head, from connect or the last answer\n"
                                   "(default 10)"},
    {"--body-timeout", 1, "SEC", "time for a request body after its head (default 60)"},
    {"--body-memory", 1, "BYTES", "request bodies held at once, else 503 (default 256M)"},
    {"--max-connections-per-client", 1, "N", "connections per client address (default 64)"},
    {"--token-file", 1, "FILE", "require 'Authorization: Bearer <first line of FILE>' on every\n"
                                "route but /health (also: NESFD_TOKEN, config auth_token)"},
    {"--cors-origin", 1, "ORIGIN", "allow browser calls from ORIGIN, e.g. https://viewer.example\n"
                                   "(repeatable, '*' for any; replaces the file's list)"},
    {"--web-root", 1, "DIR", "serve the web viewer (clients/web) from DIR at / (default: none)"},
    {"--quiet", 0, NULL, "no per-request log lines"},
    {"--check-config", 0, NULL, "print the effective configuration as JSON and exit"},
    {"--help", 0, NULL, "this text"},
    {"--version", 0, NULL, "print the version"},
};

void nesfd_config_usage(FILE *f)
{
    fprintf(f,
            "usage: nesfd [options]\n\n"
            "nesfd serves NeSF models over HTTP/JSON: POST /decode, /encode, /interpolate,\n"
            "/reconstruct; GET /health, /ready, /models, /metrics (api/openapi.yaml).\n"
            "Concurrent requests are batched per model into one backend call.\n\noptions:\n");
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        char left[64];
        snprintf(left, sizeof left, "%s%s%s", flags[i].name, flags[i].arg ? " " : "",
                 flags[i].arg ? flags[i].arg : "");
        fprintf(f, "  %-26s ", left);
        for (const char *h = flags[i].help; *h; h++) {
            fputc(*h, f);
            if (*h == '\n') fprintf(f, "  %-26s ", "");
        }
        fputc('\n', f);
    }
    fprintf(f,
            "\nconfig file keys: listen, models {name: path}, backend, compute_threads,\n"
            "http_threads, max_connections, batching {max_batch, max_delay_us, queue_limit,\n"
            "invariant}, body_limit, body_memory, max_items, max_request_work, max_connections_per_client,\n"
            "timeouts {request_s, idle_s, shutdown_grace_s, header_s, body_s},\n"
            "auth_token | auth_token_file, cors_origins [..], log_requests, web_root,\n"
            "domain (\"warn\" | \"refuse\"),\n"
            "decode_options {mode, grid_step, iterations, ...} (default {\"mode\": \"fast\"}).\n"
            "Model paths in the file are relative to the file; on the command line, to the\n"
            "current directory.  SIGTERM/SIGINT: stop accepting, finish in-flight requests,\n"
            "exit 0.  Logs: one JSON line per request on stderr.\n");
}

static const flag_info *find_flag(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
        if (strlen(flags[i].name) == len && !strncmp(flags[i].name, name, len)) return &flags[i];
    return NULL;
}

static int apply_flag(nesfd_config *c, const char *name, const char *val, int *origins_reset,
                      int *help, int *version, int *check, nesf_error *err)
{
    long n = 0;
    int rc;
#define INT_FLAG(flag, lo, hi, field)                                         \
    if (!strcmp(name, flag)) {                                                \
        if ((rc = parse_long(flag, val, lo, hi, &n, err))) return rc; \
        field = n;                                                            \
        return NESF_OK;                                                       \
    }
    INT_FLAG("--compute-threads", 0, 1024, c->compute_threads)
    INT_FLAG("--http-threads", 1, 256, c->http_threads)
    INT_FLAG("--max-connections", 1, 65536, c->max_connections)
    INT_FLAG("--max-connections-per-client", 1, 65536, c->max_connections_per_client)
    INT_FLAG("--max-batch", 1, 65536, c->max_batch)
    INT_FLAG("--max-delay-us", 0, 10000000, c->max_delay_us)
    INT_FLAG("--queue-limit", 1, 1 << 24, c->queue_limit)
    INT_FLAG("--max-items", 1, 1 << 20, c->max_items)
#undef INT_FLAG
    if (!strcmp(name, "--config")) return NESF_OK; /* read before the other flags */
    if (!strcmp(name, "--listen")) return nesfd_config_parse_listen(c, val, err);
    if (!strcmp(name, "--backend")) return set_backend(c, name, val, err);
    if (!strcmp(name, "--domain")) return set_domain(c, name, val, err);
    if (!strcmp(name, "--body-limit")) return parse_size(name, val, &c->body_limit, err);
    if (!strcmp(name, "--max-request-work")) {
        if ((rc = parse_long(name, val, 0, 1L << 50, &n, err))) return rc;
        c->max_request_work = (double)n;
        return NESF_OK;
    }
    if (!strcmp(name, "--request-timeout")) return parse_seconds(name, val, &c->request_timeout_s, err);
    if (!strcmp(name, "--shutdown-grace")) return parse_seconds(name, val, &c->shutdown_grace_s, err);
    if (!strcmp(name, "--header-timeout")) return parse_seconds(name, val, &c->header_timeout_s, err);
    if (!strcmp(name, "--body-timeout")) return parse_seconds(name, val, &c->body_timeout_s, err);
    if (!strcmp(name, "--body-memory")) return parse_size(name, val, &c->body_memory, err);
    if (!strcmp(name, "--idle-timeout")) {
        double s = 0;
        if ((rc = parse_seconds(name, val, &s, err))) return rc;
        c->idle_timeout_s = s < 1 ? 1 : (int)s;
        return NESF_OK;
    }
    if (!strcmp(name, "--token-file")) return read_token_file(c, val, err);
    if (!strcmp(name, "--web-root")) {
        if (strlen(val) >= sizeof c->web_root)
            return nesf_fail(err, NESF_ERR_INVALID, "--web-root: path too long");
        snprintf(c->web_root, sizeof c->web_root, "%s", val);
        return NESF_OK;
    }
    if (!strcmp(name, "--cors-origin")) {
        if (!*origins_reset) c->n_origins = 0, *origins_reset = 1;
        return add_origin(c, val, err);
    }
    if (!strcmp(name, "--model")) {
        const char *eq = strchr(val, '=');
        if (!eq) return nesf_fail(err, NESF_ERR_INVALID, "--model: expected NAME=PATH, got '%s'", val);
        char mname[64];
        size_t l = (size_t)(eq - val);
        if (l >= sizeof mname) l = sizeof mname - 1;
        memcpy(mname, val, l);
        mname[l] = 0;
        return set_model(c, mname, eq + 1, NULL, err);
    }
    if (!strcmp(name, "--no-batching")) {
        c->max_batch = 1;
        c->max_delay_us = 0;
        return NESF_OK;
    }
    if (!strcmp(name, "--quiet")) { c->log_requests = 0; return NESF_OK; }
    if (!strcmp(name, "--fused-batches")) { c->invariant = 0; return NESF_OK; }
    if (!strcmp(name, "--check-config")) { *check = 1; return NESF_OK; }
    if (!strcmp(name, "--help")) { *help = 1; return NESF_OK; }
    if (!strcmp(name, "--version")) { *version = 1; return NESF_OK; }
    return nesf_fail(err, NESF_ERR_INVALID, "unknown option '%s'", name);
}

/* Walks argv calling fn(name, value) for each flag; "--x=v" and "--x v". */
static int walk_args(int argc, char **argv, int only_config, nesfd_config *c, int *help,
                     int *version, int *check, nesf_error *err)
{
    int origins_reset = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h")) a = "--help";
        const char *eq = strncmp(a, "--", 2) ? NULL : strchr(a, '=');
        size_t nl = eq ? (size_t)(eq - a) : strlen(a);
        const flag_info *f = find_flag(a, nl);
        if (!f) return nesf_fail(err, NESF_ERR_INVALID, "unknown option '%s' (see --help)", a);
        const char *val = NULL;
        if (f->takes_value) {
            if (eq) val = eq + 1;
            else if (i + 1 < argc) val = argv[++i];
            else return nesf_fail(err, NESF_ERR_INVALID, "%s needs a value (%s)", f->name, f->arg);
        } else if (eq) {
            return nesf_fail(err, NESF_ERR_INVALID, "%s takes no value", f->name);
        }
        int rc;
        if (only_config)
            rc = strcmp(f->name, "--config") ? NESF_OK : nesfd_config_load_file(c, val, err);
        else
            rc = apply_flag(c, f->name, val, &origins_reset, help, version, check, err);
        if (rc) return rc;
    }
    return NESF_OK;
}

int nesfd_config_from_args(nesfd_config *c, int argc, char **argv, int *help, int *version,
                           int *check, nesf_error *err)
{
    *help = *version = *check = 0;
    int rc = walk_args(argc, argv, 1, c, help, version, check, err);
    if (rc) return rc;
    const char *env = getenv("NESFD_TOKEN");
    if (env && *env && (rc = set_token(c, "NESFD_TOKEN", env, err))) return rc;
    if ((rc = nesf_backend_params_lookup(&c->backend_params, getenv, err))) return rc;
    return walk_args(argc, argv, 0, c, help, version, check, err);
}

char *nesfd_config_dump(const nesfd_config *c)
{
    json_t *models = json_object(), *origins = json_array();
    for (int i = 0; i < c->n_models; i++)
        json_object_set_new(models, c->models[i].name, json_string(c->models[i].path));
    for (int i = 0; i < c->n_origins; i++) json_array_append_new(origins, json_string(c->origins[i]));
    char listen[300];
    snprintf(listen, sizeof listen, strchr(c->host, ':') ? "[%s]:%d" : "%s:%d", c->host, c->port);
    json_t *o = json_pack(
        "{s:s, s:o, s:s, s:i, s:i, s:i, s:{s:i, s:I, s:i}, s:I, s:i, s:I, s:{s:f, s:i, s:f},"
        " s:o, s:o, s:b, s:s}",
        "listen", listen, "models", models, "backend", c->backend,
        "compute_threads", c->compute_threads, "http_threads", c->http_threads,
        "max_connections", c->max_connections,
        "batching", "max_batch", c->max_batch, "max_delay_us", (json_int_t)c->max_delay_us,
        "queue_limit", c->queue_limit,
        "body_limit", (json_int_t)c->body_limit, "max_items", c->max_items,
        "max_request_work", (json_int_t)c->max_request_work,
        "timeouts", "request_s", c->request_timeout_s, "idle_s", c->idle_timeout_s,
        "shutdown_grace_s", c->shutdown_grace_s,
        "auth_token", c->token[0] ? json_string("<redacted>") : json_null(),
        "cors_origins", origins, "log_requests", c->log_requests, "web_root", c->web_root);
    if (o) json_object_set_new(json_object_get(o, "batching"), "invariant", json_boolean(c->invariant));
    if (o) json_object_set_new(o, "domain", json_string(c->domain_refuse ? "refuse" : "warn"));
    if (o) {
        json_t *t = json_object_get(o, "timeouts");
        json_object_set_new(t, "header_s", json_real(c->header_timeout_s));
        json_object_set_new(t, "body_s", json_real(c->body_timeout_s));
        json_object_set_new(o, "body_memory", json_integer((json_int_t)c->body_memory));
        json_object_set_new(o, "max_connections_per_client", json_integer(c->max_connections_per_client));
    }
    char *dj = nesf_decode_opts_to_json(&c->decode);
    if (o && dj) json_object_set_new(o, "decode_options", json_loads(dj, 0, NULL));
    free(dj);
    char *s = o ? json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    json_decref(o);
    return s;
}

/* nesfd - the NeSF HTTP/JSON daemon: configuration, start-up, and the
 * graceful shutdown on SIGTERM/SIGINT (stop accepting, finish in-flight
 * requests, exit 0; a second signal cuts the wait short). */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "batcher.h"
#include "config.h"
#include "engine.h"
#include "handlers.h"
#include "http.h"
#include "log.h"
#include "metrics.h"

/* Waits until no request is in flight or the time is up; returns early
 * (0) when another signal arrives. */
static int drain(nesfd_http *h, const sigset_t *sigs, double seconds)
{
    int64_t until = nesfd_now_ns() + (int64_t)(seconds * 1e9);
    struct timespec tick = {0, 20 * 1000000};
    while (nesfd_http_inflight(h) > 0 && nesfd_now_ns() < until)
        if (sigtimedwait(sigs, NULL, &tick) > 0) return 0;
    return nesfd_http_inflight(h) == 0;
}

int main(int argc, char **argv)
{
    nesfd_config cfg;
    nesf_error err = {0};
    int help, version, check;
    nesfd_config_defaults(&cfg);
    if (nesfd_config_from_args(&cfg, argc, argv, &help, &version, &check, &err)) {
        fprintf(stderr, "nesfd: %s\n", err.msg);
        return 2;
    }
    if (help) {
        nesfd_config_usage(stdout);
        return 0;
    }
    if (version) {
        printf("nesfd %s\n", NESF_VERSION);
        return 0;
    }
    nesfd_config_finish(&cfg);
    if (check) {
        char *s = nesfd_config_dump(&cfg);
        if (s) puts(s);
        free(s);
        return s ? 0 : 1;
    }

    /* every thread inherits this mask: the signals are taken by sigwait
     * here, never delivered asynchronously; SIGPIPE is simply ignored */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    signal(SIGPIPE, SIG_IGN);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);

    nesfd_metrics *metrics = nesfd_metrics_new();
    nesfd_engine *engine = NULL;
    nesfd_http *http = NULL;
    if (!metrics) {
        nesfd_log("error", "start", "out of memory");
        return 1;
    }
    if (nesfd_engine_start(&cfg, metrics, &engine, &err)) {
        nesfd_log("error", "start", "%s", err.msg);
        nesfd_metrics_free(metrics);
        return 1;
    }
    nesfd_app app = {&cfg, engine, metrics, 0};
    int n_routes;
    const nesfd_route *routes = nesfd_routes(&cfg, &n_routes);
    if (nesfd_http_start(&cfg, routes, n_routes, &app, metrics, &http, &err)) {
        nesfd_log("error", "start", "%s", err.msg);
        nesfd_engine_free(engine);
        nesfd_metrics_free(metrics);
        return 1;
    }
    nesfd_log_json("info", "listening",
                   json_pack("{s:s, s:i, s:i, s:i, s:I, s:i, s:b, s:b}", "host", cfg.host,
                             "port", nesfd_http_port(http), "models", nesfd_engine_count(engine),
                             "max_batch", cfg.max_batch, "max_delay_us", (json_int_t)cfg.max_delay_us,
                             "http_threads", cfg.http_threads, "auth", cfg.token[0] != 0,
                             "web", cfg.web_root[0] != 0));

    int sig = 0;
    while (sigwait(&sigs, &sig)) {}
    nesfd_log_json("info", "shutdown",
                   json_pack("{s:s, s:i}", "signal", sig == SIGINT ? "SIGINT" : "SIGTERM",
                             "in_flight", nesfd_http_inflight(http)));
    atomic_store(&app.draining, 1);
    nesfd_http_quiesce(http);
    int clean = drain(http, &sigs, cfg.shutdown_grace_s);
    /* what is still queued is answered 503; suspended requests must all be
     * resumed before the HTTP threads stop */
    nesfd_engine_stop(engine);
    drain(http, &sigs, 5);
    int left = nesfd_http_inflight(http);
    nesfd_http_stop(http);
    nesfd_engine_free(engine);
    nesfd_log_json("info", "stopped", json_pack("{s:b, s:i}", "clean", clean, "abandoned", left));
    nesfd_metrics_free(metrics);
    return 0;
}

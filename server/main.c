/* nesfd - the NeSF HTTP/JSON daemon: configuration, start-up, and the
 * graceful shutdown on SIGTERM/SIGINT (stop accepting, finish in-flight
 * requests for at most the grace period, then stop the running work and
 * answer 503; a second signal cuts the grace short; exit 0). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "batcher.h"
#include "config.h"
#include "engine.h"
#include "handlers.h"
#include "http.h"
#include "log.h"
#include "metrics.h"

/* The one way signals reach nesfd: a handler on whichever thread the
 * kernel picks (OpenBLAS starts threads before main, with signals
 * unblocked) writes the signal's number to this pipe, and main reads it. */
static int sig_pipe[2] = {-1, -1};

static void on_signal(int sig)
{
    int saved = errno;
    unsigned char c = (unsigned char)sig;
    if (write(sig_pipe[1], &c, 1) < 0) {} /* full: a signal is pending anyway */
    errno = saved;
}

static int install_signals(void)
{
    if (pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK)) return -1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigfillset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) || sigaction(SIGINT, &sa, NULL)) return -1;
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

/* Waits up to ms (-1: for ever) for a signal; its number, or 0. */
static int wait_signal(int ms)
{
    struct pollfd p = {sig_pipe[0], POLLIN, 0};
    if (poll(&p, 1, ms) <= 0) return 0;
    unsigned char c = 0;
    return read(sig_pipe[0], &c, 1) == 1 ? c : 0;
}

/* Waits until no request is in flight or the time is up; returns early
 * (0) when another signal arrives. */
static int drain(nesfd_http *h, double seconds)
{
    int64_t until = nesf_clock_ns() + (int64_t)(seconds * 1e9);
    while (nesfd_http_inflight(h) > 0 && nesf_clock_ns() < until)
        if (wait_signal(20)) return 0;
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

    /* the threads started below inherit a mask without SIGTERM/SIGINT, so
     * no system call of theirs is interrupted; main unblocks them again
     * once they run, and the handler only writes to a pipe */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    if (install_signals()) {
        nesfd_log("error", "start", "cannot install signal handlers: %s", strerror(errno));
        return 1;
    }
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

    pthread_sigmask(SIG_UNBLOCK, &sigs, NULL);
    int sig;
    while (!(sig = wait_signal(-1))) {}
    nesfd_log_json("info", "shutdown",
                   json_pack("{s:s, s:i}", "signal", sig == SIGINT ? "SIGINT" : "SIGTERM",
                             "in_flight", nesfd_http_inflight(http)));
    atomic_store(&app.draining, 1);
    nesfd_http_quiesce(http);
    int clean = drain(http, cfg.shutdown_grace_s);
    /* the grace is over (or a second signal cut it short): running batches
     * stop at their next flow step, and they and what is still queued are
     * answered 503; suspended requests must all be resumed before the HTTP
     * threads stop */
    if (!clean) nesfd_engine_abort(engine);
    nesfd_engine_stop(engine);
    drain(http, 5);
    int left = nesfd_http_inflight(http);
    nesfd_http_stop(http);
    nesfd_engine_free(engine);
    nesfd_log_json("info", "stopped", json_pack("{s:b, s:i}", "clean", clean, "abandoned", left));
    nesfd_metrics_free(metrics);
    return 0;
}

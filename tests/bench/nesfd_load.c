/* nesfd_load - a small closed-loop HTTP load generator for nesfd.
 *
 *   nesfd_load --port P [--host 127.0.0.1] [--path /decode] --body FILE
 *              [--concurrency N] [--seconds S] [--token T] [--items K]
 *   nesfd_load --port P --get [--path /health] ...
 *
 * N threads, each on its own connection (kept alive unless the server
 * answers Connection: close, as nesfd does), POST the body (or GET the
 * path with --get) again and again and time every answer.  Answers completed in the S seconds
 * after a warm-up (1 s by default) are counted: requests/s, items/s (K
 * items per request, e.g. latents), latency p50/p90/p99/max in ms, errors.
 * One JSON line on stdout.
 * Closed loop: a client sends its next request when the previous answer
 * is in, so the concurrency is exactly N.  --latencies FILE appends every
 * counted latency (ms), one per line, for pooling runs. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static char host[64] = "127.0.0.1", path[256] = "/decode", token[256];
static int port, concurrency = 1, items = 1;
static double seconds = 10, warmup = 1;
static char *request;
static size_t request_len;
static int64_t t_start, t_measure, t_end;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

typedef struct {
    double *lat;      /* ms of each counted request */
    int n, cap;
    long errors, non2xx;
} client;

static int connect_server(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, host, &a.sin_addr);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Sends the request and reads one whole answer; returns its status or -1.
 * *closing: the server closes the connection after it (nesfd answers one
 * request per connection), so the next request needs a new one. */
static int exchange(int fd, char **buf, size_t *cap, int *closing)
{
    for (size_t off = 0; off < request_len;) {
        ssize_t w = send(fd, request + off, request_len - off, MSG_NOSIGNAL);
        if (w <= 0) return -1;
        off += (size_t)w;
    }
    size_t n = 0, need = 0, head = 0;
    for (;;) {
        if (n + 4096 > *cap) {
            *cap = (*cap + 4096) * 2;
            char *p = realloc(*buf, *cap);
            if (!p) return -1;
            *buf = p;
        }
        ssize_t r = recv(fd, *buf + n, *cap - n - 1, 0);
        if (r <= 0) return -1;
        n += (size_t)r;
        (*buf)[n] = 0;
        if (!head) {
            char *e = strstr(*buf, "\r\n\r\n");
            if (!e) continue;
            head = (size_t)(e - *buf) + 4;
            char *cl = strcasestr(*buf, "\r\nContent-Length:");
            if (!cl || cl > e) return -1; /* nesfd always sends a length */
            need = head + strtoul(cl + 17, NULL, 10);
        }
        if (n >= need) break;
    }
    int status = 0;
    sscanf(*buf, "HTTP/1.%*d %d", &status);
    char *cc = strcasestr(*buf, "\r\nConnection: close\r\n");
    *closing = cc && cc < *buf + head;
    return status;
}

static void *client_main(void *arg)
{
    client *c = arg;
    char *buf = NULL;
    size_t cap = 0;
    int fd = -1;
    while (now_ns() < t_end) {
        if (fd < 0 && (fd = connect_server()) < 0) {
            c->errors++;
            usleep(10000);
            continue;
        }
        int64_t t0 = now_ns();
        int closing = 0;
        int status = exchange(fd, &buf, &cap, &closing);
        int64_t t1 = now_ns();
        if (status >= 0 && closing) {
            close(fd);
            fd = -1;
        }
        if (status < 0) {
            c->errors++;
            close(fd);
            fd = -1;
            continue;
        }
        if (t1 < t_measure || t1 > t_end) continue; /* completions inside the window */
        if (status / 100 != 2) {
            c->non2xx++;
            continue;
        }
        if (c->n == c->cap) {
            c->cap = c->cap ? c->cap * 2 : 1024;
            c->lat = realloc(c->lat, (size_t)c->cap * sizeof *c->lat);
        }
        c->lat[c->n++] = (double)(t1 - t0) * 1e-6;
    }
    if (fd >= 0) close(fd);
    free(buf);
    return NULL;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(const double *v, int n, double p)
{
    if (!n) return 0;
    int i = (int)(p * (n - 1) + 0.5);
    return v[i];
}

static int run(const char *lat_path);

int main(int argc, char **argv)
{
    const char *body_path = NULL, *lat_path = NULL;
    int get = 0;
    for (int i = 1; i < argc; i += 2) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(k, "--get")) {
            get = 1;
            i--; /* takes no value */
        } else if (!strcmp(k, "--port")) port = atoi(v);
        else if (!strcmp(k, "--host")) snprintf(host, sizeof host, "%s", v);
        else if (!strcmp(k, "--path")) snprintf(path, sizeof path, "%s", v);
        else if (!strcmp(k, "--body")) body_path = v;
        else if (!strcmp(k, "--concurrency")) concurrency = atoi(v);
        else if (!strcmp(k, "--seconds")) seconds = atof(v);
        else if (!strcmp(k, "--warmup")) warmup = atof(v);
        else if (!strcmp(k, "--token")) snprintf(token, sizeof token, "%s", v);
        else if (!strcmp(k, "--items")) items = atoi(v);
        else if (!strcmp(k, "--latencies")) lat_path = v;
        else {
            fprintf(stderr, "nesfd_load: unknown option %s\n", k);
            return 2;
        }
    }
    if (!port || (!body_path && !get) || concurrency < 1 || seconds <= 0) {
        fprintf(stderr, "usage: nesfd_load --port P (--body FILE | --get) [--path /decode] [--concurrency N]\n"
                        "                  [--seconds S] [--warmup S] [--token T] [--items K]\n");
        return 2;
    }
    char auth[300] = "";
    if (token[0]) snprintf(auth, sizeof auth, "Authorization: Bearer %s\r\n", token);
    if (get) {
        request = malloc(1024);
        request_len = (size_t)snprintf(request, 1024, "GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n",
                                       path, host, auth);
        return run(lat_path);
    }
    FILE *f = fopen(body_path, "rb");
    if (!f) {
        perror(body_path);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    long blen = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *body = malloc((size_t)blen);
    if (!body || fread(body, 1, (size_t)blen, f) != (size_t)blen) return 1;
    fclose(f);
    request = malloc((size_t)blen + 1024);
    request_len = (size_t)sprintf(request, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                                           "%sContent-Length: %ld\r\n\r\n", path, host, auth, blen);
    memcpy(request + request_len, body, (size_t)blen);
    request_len += (size_t)blen;
    return run(lat_path);
}

/* Runs the clients on `request` and prints the JSON line; the exit code. */
static int run(const char *lat_path)
{
    client *cl = calloc((size_t)concurrency, sizeof *cl);
    pthread_t *th = calloc((size_t)concurrency, sizeof *th);
    t_start = now_ns();
    t_measure = t_start + (int64_t)(warmup * 1e9);
    t_end = t_measure + (int64_t)(seconds * 1e9);
    for (int i = 0; i < concurrency; i++) pthread_create(&th[i], NULL, client_main, &cl[i]);
    int total = 0;
    long errors = 0, non2xx = 0;
    for (int i = 0; i < concurrency; i++) {
        pthread_join(th[i], NULL);
        total += cl[i].n;
        errors += cl[i].errors;
        non2xx += cl[i].non2xx;
    }
    double *all = malloc((size_t)(total ? total : 1) * sizeof *all);
    for (int i = 0, k = 0; i < concurrency; i++)
        for (int j = 0; j < cl[i].n; j++) all[k++] = cl[i].lat[j];
    qsort(all, (size_t)total, sizeof *all, cmp);
    if (lat_path) { /* appended, for pooling several runs */
        FILE *lf = fopen(lat_path, "a");
        if (!lf) {
            perror(lat_path);
            return 1;
        }
        for (int i = 0; i < total; i++) fprintf(lf, "%.3f\n", all[i]);
        fclose(lf);
    }
    printf("{\"concurrency\":%d,\"seconds\":%.1f,\"requests\":%d,\"requests_per_s\":%.2f,"
           "\"items_per_s\":%.2f,\"p50_ms\":%.1f,\"p90_ms\":%.1f,\"p99_ms\":%.1f,\"max_ms\":%.1f,"
           "\"non_2xx\":%ld,\"errors\":%ld}\n",
           concurrency, seconds, total, total / seconds, total * items / seconds, pct(all, total, 0.5),
           pct(all, total, 0.9), pct(all, total, 0.99), total ? all[total - 1] : 0, non2xx, errors);
    return total > 0 && !errors && !non2xx ? 0 : 1;
}

/* Prometheus rendering of nesfd's metrics: counters by route and status,
 * cumulative histogram buckets, gauges. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "metrics.h"

static int depth_fn(void *ctx, int model)
{
    (void)ctx;
    return 10 + model;
}

static void test_render(void **state)
{
    (void)state;
    nesfd_metrics *m = nesfd_metrics_new();
    int dec = nesfd_metrics_route(m, "/decode");
    int other = nesfd_metrics_route(m, "other");
    assert_int_equal(nesfd_metrics_route(m, "/decode"), dec); /* idempotent */
    int lcs = nesfd_metrics_model(m, "lcs6");
    nesfd_metrics_request(m, dec, 200, 0.003);
    nesfd_metrics_request(m, dec, 200, 0.2);
    nesfd_metrics_request(m, dec, 400, 0.0001);
    nesfd_metrics_request(m, other, 404, 0.0001);
    nesfd_metrics_request(m, dec, 1000, 1); /* ignored: not a status */
    nesfd_metrics_inflight(m, 3);
    nesfd_metrics_inflight(m, -1);
    double waits[3] = {0.001, 0.002, 0.5};
    nesfd_metrics_batch(m, lcs, NESFD_OP_DECODE, 3, waits);
    nesfd_metrics_batch(m, lcs, NESFD_OP_DECODE, 1, waits);
    nesfd_metrics_rejected(m, lcs);
    nesfd_metrics_set_depth_fn(m, depth_fn, NULL);
    assert_int_equal(nesfd_metrics_count(m, dec, 200), 2);
    assert_int_equal(nesfd_metrics_items(m, lcs, NESFD_OP_DECODE), 4);
    assert_int_equal(nesfd_metrics_batches(m, lcs, NESFD_OP_DECODE), 2);

    size_t len;
    char *t = nesfd_metrics_render(m, &len);
    assert_non_null(t);
    assert_int_equal(strlen(t), len);
    const char *want[] = {
        "# TYPE nesfd_requests_total counter\n",
        "nesfd_requests_total{route=\"/decode\",status=\"200\"} 2\n",
        "nesfd_requests_total{route=\"/decode\",status=\"400\"} 1\n",
        "nesfd_requests_total{route=\"other\",status=\"404\"} 1\n",
        "nesfd_errors_total{route=\"/decode\",status=\"400\"} 1\n",
        /* cumulative buckets: 0.0001 and 0.003 are <= 0.005, 0.2 is not */
        "nesfd_request_duration_seconds_bucket{route=\"/decode\",le=\"0.005\"} 2\n",
        "nesfd_request_duration_seconds_bucket{route=\"/decode\",le=\"0.25\"} 3\n",
        "nesfd_request_duration_seconds_bucket{route=\"/decode\",le=\"+Inf\"} 3\n",
        "nesfd_request_duration_seconds_count{route=\"/decode\"} 3\n",
        "nesfd_in_flight_requests 2\n",
        "nesfd_batch_size_bucket{model=\"lcs6\",op=\"decode\",le=\"1\"} 1\n",
        "nesfd_batch_size_bucket{model=\"lcs6\",op=\"decode\",le=\"4\"} 2\n",
        "nesfd_batch_size_sum{model=\"lcs6\",op=\"decode\"} 4\n",
        "nesfd_batch_size_count{model=\"lcs6\",op=\"encode\"} 0\n",
        "nesfd_queue_wait_seconds_count{model=\"lcs6\"} 4\n",
        "nesfd_items_total{model=\"lcs6\",op=\"decode\"} 4\n",
        "nesfd_rejected_total{model=\"lcs6\"} 1\n",
        "nesfd_queue_depth{model=\"lcs6\"} 10\n",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(t, want[i])) fail_msg("missing line: %s\n---\n%s", want[i], t);
    assert_null(strstr(t, "status=\"1000\""));
    free(t);
    nesfd_metrics_free(m);
}

static void test_label_limits(void **state)
{
    (void)state;
    nesfd_metrics *m = nesfd_metrics_new();
    char name[32];
    for (int i = 0; i < NESFD_METRICS_MAX_ROUTES; i++) {
        snprintf(name, sizeof name, "/r%d", i);
        assert_int_equal(nesfd_metrics_route(m, name), i);
    }
    assert_int_equal(nesfd_metrics_route(m, "/one-too-many"), -1);
    nesfd_metrics_request(m, -1, 200, 1); /* ignored, no crash */
    nesfd_metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render),
        cmocka_unit_test(test_label_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

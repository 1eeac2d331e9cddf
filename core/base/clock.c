/* clock.c - see clock.h. */
#include "clock.h"

#include <time.h>

/* Monotonic so that durations survive NTP steps and suspend-free clock
 * changes. */
int64_t nesf_clock_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Seconds as a double keep sub-microsecond resolution for years of uptime. */
double nesf_clock_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Milliseconds from the same reading, so decode timings add up with the
 * others. */
double nesf_clock_ms(void)
{
    return 1e3 * nesf_clock_s();
}

/* clock.h - the one clock of the library, the daemon and the tools: a
 * monotonic clock for durations, deadlines and progress rates (never wall
 * time; log timestamps use the realtime clock where they are formatted). */
#ifndef NESF_CLOCK_H
#define NESF_CLOCK_H

#include <stdint.h>

/* Nanoseconds since an arbitrary fixed point (CLOCK_MONOTONIC). */
int64_t nesf_clock_ns(void);

/* The same clock in seconds. */
double nesf_clock_s(void);

/* The same clock in milliseconds (the unit of the decode statistics). */
double nesf_clock_ms(void);

#endif

/* log.h - structured logs: one JSON object per line on stderr, e.g.
 *   {"ts":"2024-05-01T12:00:00.123Z","level":"info","event":"request","id":...}
 * Lines are written whole (one write under stdio's stream lock), so
 * concurrent threads never interleave them. */
#ifndef NESFD_LOG_H
#define NESFD_LOG_H

#include <jansson.h>

/* Adds ts, level and event to fields (taken over; may be NULL) and prints. */
void nesfd_log_json(const char *level, const char *event, json_t *fields);
/* A line with a "msg" field. */
void nesfd_log(const char *level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif

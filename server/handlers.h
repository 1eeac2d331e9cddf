/* handlers.h - nesfd's routes: what each endpoint parses, submits to the
 * model batchers and answers (api/openapi.yaml is the contract). */
#ifndef NESFD_HANDLERS_H
#define NESFD_HANDLERS_H

#include <stdatomic.h>

#include "config.h"
#include "engine.h"
#include "http.h"
#include "metrics.h"

typedef struct nesfd_app {
    const nesfd_config *cfg;
    nesfd_engine *engine;
    nesfd_metrics *metrics;
    atomic_int draining;     /* set on SIGTERM: /ready answers 503 */
} nesfd_app;

/* The route table (static storage); *n receives its length.  The static
 * file route is included only when the configuration has a web root. */
const nesfd_route *nesfd_routes(const nesfd_config *cfg, int *n);

#endif

/* oip.h - the Open Inference Protocol (KServe v2 REST, also Triton's) on
 * nesfd, beside its own routes, so that KServe, Triton clients and
 * gateways that speak only the protocol can use a model:
 *
 *   GET  /v2                        server metadata
 *   GET  /v2/health/live            {"live": true}
 *   GET  /v2/health/ready           {"ready": bool}: 503 while not ready
 *   GET  /v2/models/{name}          model metadata: its input and output tensors
 *   GET  /v2/models/{name}/ready    {"name", "ready"}
 *   POST /v2/models/{name}/infer    one input tensor:
 *        "latent"    FP32 [N, latent_size] -> "structure" BYTES [N] (structure
 *                    JSON text), "lattice" FP32 [N, 6] (a, b, c in Å, α, β, γ
 *                    in degrees), "decoded" BOOL [N]
 *        "structure" BYTES [N] (CIF or structure JSON text) -> "latent" FP32
 *                    [N, latent_size]
 *
 * Work goes through the model's batcher like /decode and /encode, so
 * protocol and native requests share batches.  Errors are the protocol's
 * {"error": "message"} (http.c, for every path under /v2).  Request "parameters" are
 * decoding options (as in /decode's "options") and "symprec".  Model
 * versions are not implemented (paths with /versions/ answer 404). */
#ifndef NESFD_OIP_H
#define NESFD_OIP_H

#include "http.h"

/* Route handlers; ctx is the nesfd_app (handlers.h). */
void nesfd_oip_server(nesfd_req *r, void *ctx);
void nesfd_oip_live(nesfd_req *r, void *ctx);
void nesfd_oip_ready(nesfd_req *r, void *ctx);
/* Everything under /v2/models/: metadata, ready and infer. */
void nesfd_oip_models(nesfd_req *r, void *ctx);

#endif

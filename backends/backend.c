/* Backend selection and the arena, shared by every backend. */
#include "backend.h"

#include <stdlib.h>
#include <string.h>

int nesf_backend_create(const char *kind, int threads, nesf_backend **out, nesf_error *err)
{
    *out = NULL;
    if (!kind || !strcmp(kind, "auto")) {
#ifndef NESF_CUDA_EMULATION /* the host emulation is a test harness: never chosen for work */
        if (nesf_backend_cuda_available() && nesf_backend_cuda_create(0, out, NULL) == NESF_OK)
            return NESF_OK;
#endif
        return nesf_backend_cpu_create(threads, out, err);
    }
    if (!strcmp(kind, "cpu"))
        return nesf_backend_cpu_create(threads, out, err);
    if (!strcmp(kind, "cuda")) {
#ifdef NESF_CUDA_EMULATION
        const char *ok = getenv("NESF_CUDA_EMULATION");
        if (!ok || strcmp(ok, "1"))
            return nesf_fail(err, NESF_ERR_UNSUPPORTED,
                             "this build's CUDA backend is the host emulation test harness "
                             "(-Demulate_cuda=true), not a GPU; NESF_CUDA_EMULATION=1 selects it "
                             "for tests");
#endif
        return nesf_backend_cuda_create(0, out, err);
    }
    return nesf_fail(err, NESF_ERR_INVALID, "unknown backend '%s' (expected auto, cpu or cuda)", kind);
}

void nesf_backend_free(nesf_backend *be)
{
    if (be) be->ops->destroy(be);
}

#ifndef NESF_HAVE_CUDA
int nesf_backend_cuda_create(int device, nesf_backend **out, nesf_error *err)
{
    (void)device;
    *out = NULL;
    return nesf_fail(err, NESF_ERR_UNSUPPORTED, "this build has no CUDA backend (rebuild with -Dcuda=enabled)");
}

int nesf_backend_cuda_available(void) { return 0; }
#endif

/* ---- arena ---- */

#define ARENA_ALIGN 64

void nesf_arena_init(nesf_arena *a, nesf_backend *be)
{
    memset(a, 0, sizeof *a);
    a->be = be;
}

void *nesf_arena_alloc(nesf_arena *a, size_t bytes)
{
    bytes = (bytes + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    if (bytes == 0) bytes = ARENA_ALIGN;
    /* the current block, else the first later one that fits: blocks are
     * kept across resets, so a step no larger than the largest so far
     * touches only memory that earlier steps touched (no page faults) */
    for (int i = a->cur; i < a->nblk; i++) {
        nesf_arena_block *b = &a->blk[i];
        if (b->cap - b->used >= bytes) {
            void *p = b->base + b->used;
            b->used += bytes;
            a->cur = i;
            return p;
        }
    }
    if (a->nblk == (int)(sizeof a->blk / sizeof a->blk[0])) return NULL;
    size_t cap = bytes;
    if (a->nblk && 2 * a->blk[a->nblk - 1].cap > cap) cap = 2 * a->blk[a->nblk - 1].cap;
    if (cap < ((size_t)1 << 20)) cap = (size_t)1 << 20;
    char *base = a->be->ops->alloc(a->be, cap);
    if (!base) return NULL;
    nesf_arena_block *b = &a->blk[a->nblk];
    a->cur = a->nblk++;
    b->base = base;
    b->cap = cap;
    b->used = bytes;
    return base;
}

float *nesf_arena_floats(nesf_arena *a, size_t n)
{
    return nesf_arena_alloc(a, n * sizeof(float));
}

int nesf_arena_reset(nesf_arena *a)
{
    size_t used = 0;
    for (int i = 0; i < a->nblk; i++) {
        used += a->blk[i].used;
        a->blk[i].used = 0;
    }
    if (used > a->peak) a->peak = used;
    a->cur = 0;
    return NESF_OK;
}

void nesf_arena_release(nesf_arena *a)
{
    for (int i = 0; i < a->nblk; i++) a->be->ops->free(a->be, a->blk[i].base);
    a->nblk = 0;
    a->cur = 0;
}

/* cuda_emu.cpp - the host emulation runtime behind cuda_emu.h: errors,
 * device memory, launches (blocks on a worker pool, a block's threads as
 * fibers), cuBLAS and cuBLASLt as reference GEMMs.  A test harness for the
 * CUDA backend's own code, never a backend to compute with. */
#include "cuda_emu.h"

#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdarg>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

thread_local uint3 threadIdx, blockIdx;
thread_local dim3 blockDim, gridDim;

/* ---- errors: per-thread last error, process-wide sticky fault ---- */

static thread_local cudaError_t tl_last = cudaSuccess;
static std::atomic<int> g_sticky{0};
static thread_local int tl_device_set;

static cudaError_t set_err(cudaError_t e)
{
    if (e != cudaSuccess) tl_last = e;
    return e;
}

/* A fault a real device would raise inside a kernel: the context is dead,
 * every later call fails with e.  The reason goes to stderr (once). */
static cudaError_t fault(cudaError_t e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static cudaError_t fault(cudaError_t e, const char *fmt, ...)
{
    int expected = 0;
    if (g_sticky.compare_exchange_strong(expected, (int)e)) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "nesf CUDA emulation: sticky fault (%s): ", cudaGetErrorString(e));
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
    }
    return set_err((cudaError_t)g_sticky.load());
}

/* Every call starts here: a dead context fails everything. */
static cudaError_t enter(void)
{
    int s = g_sticky.load();
    return s ? set_err((cudaError_t)s) : cudaSuccess;
}

cudaError_t cudaGetLastError(void)
{
    int s = g_sticky.load();
    if (s) return (cudaError_t)s;
    cudaError_t e = tl_last;
    tl_last = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void)
{
    int s = g_sticky.load();
    return s ? (cudaError_t)s : tl_last;
}

const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInitializationError: return "initialization error";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorMisalignedAddress: return "misaligned address";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    }
    return "unknown error";
}

/* ---- device ---- */

/* NESF_CUDA_EMULATION_DEVICES=0 emulates a machine without a device. */
static int device_count(void)
{
    const char *e = getenv("NESF_CUDA_EMULATION_DEVICES");
    return e && *e ? atoi(e) : 1;
}

cudaError_t cudaGetDeviceCount(int *n)
{
    *n = device_count();
    return *n > 0 ? cudaSuccess : set_err(cudaErrorNoDevice);
}

cudaError_t cudaSetDevice(int d)
{
    if (cudaError_t e = enter()) return e;
    if (d < 0 || d >= device_count()) return set_err(cudaErrorInvalidDevice);
    tl_device_set = 1;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d)
{
    if (d < 0 || d >= device_count()) return set_err(cudaErrorInvalidDevice);
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "nesf host emulation (test harness, not a GPU)");
    p->major = 9;
    p->minor = 0;
    p->multiProcessorCount = 4;
    p->totalGlobalMem = (size_t)16 << 30;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int d)
{
    if (d < 0 || d >= device_count()) return set_err(cudaErrorInvalidDevice);
    *v = 0; /* clock rate unknown: the backend reports no peak */
    (void)a;
    return cudaSuccess;
}

/* ---- memory: a registry of allocations with guard zones ---- */

#define GUARD 256
#define GUARD_BYTE 0xA5

struct Alloc {
    size_t bytes;
    int pinned; /* cudaMallocHost */
    char *raw;  /* GUARD bytes before the base, GUARD after the end */
};

static std::mutex g_mem_mu;
static std::map<uintptr_t, Alloc> g_mem;

static cudaError_t mem_alloc(void **p, size_t bytes, int pinned)
{
    *p = NULL;
    size_t n = (bytes + 255) / 256 * 256;
    char *raw = (char *)aligned_alloc(256, n + 2 * GUARD);
    if (!raw) return set_err(cudaErrorMemoryAllocation);
    memset(raw, GUARD_BYTE, GUARD);
    memset(raw + GUARD + bytes, GUARD_BYTE, n - bytes + GUARD);
    /* fresh device memory reads as NaN floats / -1 ints, never as zeros */
    memset(raw + GUARD, pinned ? 0 : 0xFF, bytes);
    std::lock_guard<std::mutex> g(g_mem_mu);
    g_mem[(uintptr_t)(raw + GUARD)] = Alloc{bytes, pinned, raw};
    *p = raw + GUARD;
    return cudaSuccess;
}

/* The allocation holding [p, p + bytes) (one past the end allowed for an
 * empty range), or NULL. */
static const Alloc *find_alloc(const void *p, size_t bytes, uintptr_t *base)
{
    std::lock_guard<std::mutex> g(g_mem_mu);
    uintptr_t v = (uintptr_t)p;
    auto it = g_mem.upper_bound(v);
    if (it == g_mem.begin()) return NULL;
    --it;
    if (v - it->first + bytes > it->second.bytes) return NULL;
    if (base) *base = it->first;
    return &it->second;
}

static int is_device_range(const void *p, size_t bytes)
{
    const Alloc *a = find_alloc(p, bytes, NULL);
    return a && !a->pinned;
}

int nesf_emu_device_ptr(const void *p) { return !p || is_device_range(p, 0); }

static size_t tail_bytes(const Alloc &a) { return (a.bytes + 255) / 256 * 256 - a.bytes + GUARD; }

static int guards_intact(const Alloc &a)
{
    const char *end = a.raw + GUARD + a.bytes;
    for (size_t i = 0; i < GUARD; i++)
        if ((unsigned char)a.raw[i] != GUARD_BYTE) return 0;
    for (size_t i = 0, n = tail_bytes(a); i < n; i++)
        if ((unsigned char)end[i] != GUARD_BYTE) return 0;
    return 1;
}

/* After a kernel or copy: an overwritten guard is the out-of-bounds store a
 * device would have faulted on. */
static cudaError_t check_guards(const char *what)
{
    std::lock_guard<std::mutex> g(g_mem_mu);
    for (auto &kv : g_mem)
        if (!guards_intact(kv.second)) {
            Alloc &a = kv.second; /* guards restored: reported once */
            memset(a.raw, GUARD_BYTE, GUARD);
            memset(a.raw + GUARD + a.bytes, GUARD_BYTE, tail_bytes(a));
            return fault(cudaErrorIllegalAddress, "%s wrote outside an allocation of %zu bytes",
                         what, a.bytes);
        }
    return cudaSuccess;
}

static cudaError_t mem_free(void *p, int pinned)
{
    if (!p) return cudaSuccess;
    Alloc a;
    {
        std::lock_guard<std::mutex> g(g_mem_mu);
        auto it = g_mem.find((uintptr_t)p);
        if (it == g_mem.end() || (it->second.pinned == 1) != (pinned == 1))
            return set_err(cudaErrorInvalidValue);
        a = it->second;
        g_mem.erase(it);
    }
    if (!guards_intact(a))
        fault(cudaErrorIllegalAddress, "an allocation of %zu bytes was overrun", a.bytes);
    free(a.raw);
    return enter();
}

cudaError_t cudaMalloc(void **p, size_t bytes)
{
    if (cudaError_t e = enter()) return e;
    return mem_alloc(p, bytes, 0);
}

cudaError_t cudaFree(void *p)
{
    if (cudaError_t e = enter()) return e;
    return mem_free(p, 0);
}

cudaError_t cudaMallocHost(void **p, size_t bytes)
{
    if (cudaError_t e = enter()) return e;
    return mem_alloc(p, bytes, 1);
}

cudaError_t cudaFreeHost(void *p) { return mem_free(p, 1); }

cudaError_t cudaPointerGetAttributes(cudaPointerAttributes *a, const void *p)
{
    if (cudaError_t e = enter()) return e;
    memset(a, 0, sizeof *a);
    const Alloc *al = find_alloc(p, 0, NULL);
    a->type = !al ? cudaMemoryTypeUnregistered : al->pinned ? cudaMemoryTypeHost : cudaMemoryTypeDevice;
    return cudaSuccess;
}

/* ---- streams and events: work runs at enqueue time ---- */

struct nesf_emu_stream {
    unsigned flags;
};
struct nesf_emu_event {
    unsigned flags;
};
static std::mutex g_obj_mu;
static std::set<void *> g_objs;

static void obj_add(void *o)
{
    std::lock_guard<std::mutex> g(g_obj_mu);
    g_objs.insert(o);
}

static int obj_live(const void *o)
{
    std::lock_guard<std::mutex> g(g_obj_mu);
    return g_objs.count((void *)o) != 0;
}

static int obj_remove(void *o)
{
    std::lock_guard<std::mutex> g(g_obj_mu);
    return g_objs.erase(o) != 0;
}

static cudaError_t check_stream(cudaStream_t s)
{
    return !s || obj_live(s) ? cudaSuccess : set_err(cudaErrorInvalidResourceHandle);
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags)
{
    if (cudaError_t e = enter()) return e;
    *s = new nesf_emu_stream{flags};
    obj_add(*s);
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    if (!s || !obj_remove(s)) return set_err(cudaErrorInvalidResourceHandle);
    delete s;
    return enter();
}

cudaError_t cudaStreamSynchronize(cudaStream_t s)
{
    if (cudaError_t e = enter()) return e;
    return check_stream(s);
}

cudaError_t cudaDeviceSynchronize(void) { return enter(); }

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags)
{
    if (cudaError_t r = enter()) return r;
    *e = new nesf_emu_event{flags};
    obj_add(*e);
    return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *e) { return cudaEventCreateWithFlags(e, 0); }

cudaError_t cudaEventDestroy(cudaEvent_t e)
{
    if (!e || !obj_remove(e)) return set_err(cudaErrorInvalidResourceHandle);
    delete e;
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s)
{
    if (cudaError_t r = enter()) return r;
    if (!e || !obj_live(e)) return set_err(cudaErrorInvalidResourceHandle);
    return check_stream(s);
}

cudaError_t cudaEventSynchronize(cudaEvent_t e)
{
    if (cudaError_t r = enter()) return r;
    return e && obj_live(e) ? cudaSuccess : set_err(cudaErrorInvalidResourceHandle);
}

/* ---- copies: ranges checked against the allocations and the kind ---- */

/* A range of host memory must not be device memory and the reverse, as
 * the copy kind states. */
static int side_ok(const void *p, size_t span, int device)
{
    if (span == 0) return 1;
    return device ? is_device_range(p, span) : !is_device_range(p, 0);
}

static cudaError_t copy_check(void *dst, size_t dspan, const void *src, size_t sspan,
                              cudaMemcpyKind k, cudaStream_t s)
{
    if (cudaError_t e = enter()) return e;
    if (cudaError_t e = check_stream(s)) return e;
    if (k == cudaMemcpyDefault) return cudaSuccess;
    int dd = k == cudaMemcpyHostToDevice || k == cudaMemcpyDeviceToDevice;
    int sd = k == cudaMemcpyDeviceToHost || k == cudaMemcpyDeviceToDevice;
    if (k < cudaMemcpyHostToHost || k > cudaMemcpyDefault || !side_ok(dst, dspan, dd) ||
        !side_ok(src, sspan, sd))
        return set_err(cudaErrorInvalidValue);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind k,
                            cudaStream_t s)
{
    if (cudaError_t e = copy_check(dst, bytes, src, bytes, k, s)) return e;
    if (bytes) memmove(dst, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind k)
{
    return cudaMemcpyAsync(dst, src, bytes, k, 0);
}

cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch,
                              size_t width, size_t height, cudaMemcpyKind k, cudaStream_t s)
{
    if (width > dpitch || width > spitch) return set_err(cudaErrorInvalidValue);
    size_t dspan = height ? (height - 1) * dpitch + width : 0;
    size_t sspan = height ? (height - 1) * spitch + width : 0;
    if (cudaError_t e = copy_check(dst, dspan, src, sspan, k, s)) return e;
    for (size_t r = 0; r < height && width; r++)
        memmove((char *)dst + r * dpitch, (const char *)src + r * spitch, width);
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *p, int v, size_t bytes, cudaStream_t s)
{
    if (cudaError_t e = enter()) return e;
    if (cudaError_t e = check_stream(s)) return e;
    if (bytes && !is_device_range(p, bytes)) return set_err(cudaErrorInvalidValue);
    memset(p, v, bytes);
    return cudaSuccess;
}

/* ---- a worker pool: the caller plus NESF_CUDA_EMULATION_THREADS - 1 ---- */

static int pool_size(void)
{
    const char *e = getenv("NESF_CUDA_EMULATION_THREADS");
    int n = e && *e ? atoi(e) : (int)std::thread::hardware_concurrency();
    return n < 1 ? 1 : n > 16 ? 16 : n;
}

struct Pool {
    std::mutex submit;          /* one parallel job at a time, whoever submits */
    std::mutex mu;
    std::condition_variable go, idle;
    std::vector<std::thread> th;
    const std::function<void(int)> *job = nullptr;
    unsigned long gen = 0;
    int busy = 0;

    /* Runs job(w) for w < workers, w 0 on the calling thread. */
    void run(int workers, const std::function<void(int)> &f)
    {
        std::lock_guard<std::mutex> s(submit);
        if (workers > 1 + (int)th.size()) workers = 1 + (int)th.size();
        {
            std::lock_guard<std::mutex> g(mu);
            job = &f;
            busy = workers - 1;
            want = workers - 1;
            gen++;
        }
        go.notify_all();
        f(0);
        std::unique_lock<std::mutex> g(mu);
        idle.wait(g, [&] { return busy == 0; });
        job = nullptr;
    }

    void loop(int w)
    {
        unsigned long seen = 0;
        for (;;) {
            std::unique_lock<std::mutex> g(mu);
            go.wait(g, [&] { return gen != seen && want > 0; });
            seen = gen;
            want--;
            const std::function<void(int)> *f = job;
            g.unlock();
            (*f)(w);
            g.lock();
            if (--busy == 0) idle.notify_all();
        }
    }

    int want = 0;
};

static Pool *pool(void)
{
    static Pool *p = [] {
        Pool *q = new Pool; /* lives until exit; workers are detached */
        for (int w = 1; w < pool_size(); w++) {
            q->th.emplace_back([q, w] { q->loop(w); });
            q->th.back().detach();
        }
        return q;
    }();
    return p;
}

/* ---- one block: threads as fibers, or one after another ---- */

#define FIBER_STACK ((size_t)64 << 10)
#define MAX_BLOCK 1024

enum { F_RUN, F_BAR, F_WARP, F_DONE };

struct Sched {
    ucontext_t main;
    ucontext_t uc[MAX_BLOCK];
    int state[MAX_BLOCK];
    char *stacks = nullptr;     /* MAX_BLOCK stacks, mapped on first use */
    int n = 0, cur = 0, seq = 0;
    long syncs = 0;             /* barriers and shuffles the block used */
    const char *bad = nullptr;  /* why the block faulted */
    void (*body)(void *) = nullptr;
    void *ctx = nullptr;
    uint64_t shfl[MAX_BLOCK];
    std::vector<char> dyn;
};

static thread_local Sched *tl_sched;

static Sched *sched(void)
{
    if (!tl_sched) tl_sched = new Sched; /* one per worker thread, for its lifetime */
    return tl_sched;
}

static void set_tid(Sched *s, int i)
{
    s->cur = i;
    threadIdx.x = (unsigned)i % blockDim.x;
    threadIdx.y = (unsigned)i / blockDim.x % blockDim.y;
    threadIdx.z = (unsigned)i / (blockDim.x * blockDim.y);
}

static void fiber_main(void)
{
    Sched *s = tl_sched;
    s->body(s->ctx);
    s->state[s->cur] = F_DONE; /* uc_link returns to the scheduler */
}

/* Suspends the calling thread of the block until the scheduler releases
 * it (state: what it waits for). */
static void wait_as(int state, const char *what)
{
    Sched *s = tl_sched;
    if (!s) return; /* host code: nothing to wait for */
    s->syncs++;
    if (s->seq) {
        /* the block's threads run one after another: only possible when
         * block 0 of the launch used no barrier, so this one is divergent */
        if (!s->bad) s->bad = what;
        return;
    }
    int me = s->cur;
    s->state[me] = state;
    swapcontext(&s->uc[me], &s->main);
}

void __syncthreads(void) { wait_as(F_BAR, "__syncthreads reached by some blocks only"); }

void __syncwarp(unsigned mask)
{
    if (mask != 0xffffffffu && tl_sched && !tl_sched->bad) tl_sched->bad = "partial warp mask";
    wait_as(F_WARP, "warp sync in a block that ran without");
}

int nesf_emu_lane(void) { return tl_sched ? tl_sched->cur & 31 : 0; }

uint64_t nesf_emu_shfl(unsigned mask, uint64_t v, int src_lane)
{
    Sched *s = tl_sched;
    if (!s) return v;
    if (mask != 0xffffffffu && !s->bad) s->bad = "shuffle with a partial warp mask";
    int me = s->cur, warp0 = me & ~31;
    s->shfl[me] = v;
    wait_as(F_WARP, "warp shuffle in a block that ran without");
    int src = warp0 + src_lane;
    uint64_t r = src < s->n ? s->shfl[src] : v;
    wait_as(F_WARP, "warp shuffle in a block that ran without"); /* all read before reuse */
    return r;
}

void *nesf_emu_dynamic_shared(void) { return tl_sched ? tl_sched->dyn.data() : nullptr; }

/* Releases whatever the suspended threads wait for; 0 when nothing can
 * move (a deadlock: a divergent barrier or shuffle), with s->bad set. */
static int release(Sched *s)
{
    int moved = 0, done = 0, bar = 0;
    for (int w = 0; w < s->n; w += 32) {
        int e = w + 32 < s->n ? w + 32 : s->n, at = 0, fin = 0;
        for (int i = w; i < e; i++) {
            at += s->state[i] == F_WARP;
            fin += s->state[i] == F_DONE;
        }
        if (at == e - w) {
            for (int i = w; i < e; i++) s->state[i] = F_RUN;
            moved = 1;
        } else if (at && fin && !s->bad) {
            s->bad = "warp sync or shuffle with lanes that have exited";
        }
    }
    if (moved) return 1;
    for (int i = 0; i < s->n; i++) {
        done += s->state[i] == F_DONE;
        bar += s->state[i] == F_BAR;
    }
    if (bar && bar + done == s->n) {
        if (done) {
            if (!s->bad) s->bad = "__syncthreads not reached by every thread of the block";
            return 0;
        }
        for (int i = 0; i < s->n; i++) s->state[i] = F_RUN;
        return 1;
    }
    if (done < s->n && !s->bad) s->bad = "deadlock: threads wait at different barriers";
    return 0;
}

static void run_fibers(Sched *s)
{
    if (!s->stacks) {
        void *m = mmap(NULL, MAX_BLOCK * FIBER_STACK, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
            s->bad = "no memory for fiber stacks";
            return;
        }
        s->stacks = (char *)m;
    }
    for (int i = 0; i < s->n; i++) {
        getcontext(&s->uc[i]);
        s->uc[i].uc_stack.ss_sp = s->stacks + (size_t)i * FIBER_STACK;
        s->uc[i].uc_stack.ss_size = FIBER_STACK;
        s->uc[i].uc_link = &s->main;
        makecontext(&s->uc[i], fiber_main, 0);
        s->state[i] = F_RUN;
    }
    for (;;) {
        for (int i = 0; i < s->n && !s->bad; i++)
            if (s->state[i] == F_RUN) {
                set_tid(s, i);
                swapcontext(&s->main, &s->uc[i]);
            }
        if (s->bad || !release(s)) return;
    }
}

/* Runs block b of the launch; returns the fault, if any. */
static const char *run_block(Sched *s, unsigned long b, int fibers)
{
    blockIdx.x = (unsigned)(b % gridDim.x);
    blockIdx.y = (unsigned)(b / gridDim.x % gridDim.y);
    blockIdx.z = (unsigned)(b / ((unsigned long)gridDim.x * gridDim.y));
    if (!s->dyn.empty()) memset(s->dyn.data(), 0xFF, s->dyn.size());
    s->bad = nullptr;
    s->seq = !fibers;
    if (fibers) {
        run_fibers(s);
    } else {
        for (int i = 0; i < s->n && !s->bad; i++) {
            set_tid(s, i);
            s->body(s->ctx);
        }
    }
    return s->bad;
}

/* ---- launches ---- */

static cudaError_t check_config(dim3 g, dim3 b, size_t shmem)
{
    unsigned long t = (unsigned long)b.x * b.y * b.z;
    if (!g.x || !g.y || !g.z || !t || t > MAX_BLOCK || b.z > 64 || g.y > 65535 || g.z > 65535 ||
        g.x > 0x7fffffffu || shmem > 48 * 1024)
        return cudaErrorInvalidConfiguration;
    return cudaSuccess;
}

/* Block 0 runs as fibers; when it used no barrier or shuffle the rest run
 * thread after thread (much faster), else as fibers too.  Blocks are
 * spread over the pool; the first fault stops the launch. */
void nesf_emu_run(const char *name, dim3 grid, dim3 block, size_t shmem, cudaStream_t st,
                  void (*body)(void *), void *ctx, int args_ok)
{
    if (enter() || check_stream(st)) return;
    if (cudaError_t e = check_config(grid, block, shmem)) {
        set_err(e);
        return;
    }
    if (!args_ok) {
        fault(cudaErrorIllegalAddress, "kernel %s: a pointer argument is not device memory", name);
        return;
    }
    unsigned long nb = (unsigned long)grid.x * grid.y * grid.z;
    std::atomic<unsigned long> next{1};
    std::atomic<const char *> bad{nullptr};
    int fibers = 1;
    auto work = [&](int w) {
        Sched *s = sched();
        gridDim = grid;
        blockDim = block;
        s->n = (int)(block.x * block.y * block.z);
        s->body = body;
        s->ctx = ctx;
        s->dyn.assign(shmem, 0);
        s->syncs = 0;
        if (w < 0) { /* block 0, on the caller */
            if (const char *why = run_block(s, 0, 1)) bad = why;
            fibers = s->syncs > 0;
            return;
        }
        for (unsigned long b; !bad.load() && (b = next.fetch_add(1)) < nb;)
            if (const char *why = run_block(s, b, fibers)) bad = why;
    };
    work(-1);
    if (!bad.load() && nb > 1) {
        std::function<void(int)> f = work;
        if (nb < 8) f(0);
        else pool()->run(pool_size(), f);
    }
    if (bad.load()) {
        fault(cudaErrorLaunchFailure, "kernel %s: %s", name, bad.load());
        return;
    }
    char what[160];
    snprintf(what, sizeof what, "kernel %s", name);
    check_guards(what);
}

/* ---- reference GEMM (column-major, cuBLAS semantics) ---- */

enum { ROUND_NONE, ROUND_TF32, ROUND_BF16 };

/* Rounds to the tensor-core input format (nearest even), as TF32 / BF16
 * compute types do to both operands. */
static float round_in(float x, int mode)
{
    if (mode == ROUND_NONE || !std::isfinite(x)) return x;
    uint32_t u;
    memcpy(&u, &x, 4);
    int drop = mode == ROUND_TF32 ? 13 : 16;
    uint32_t half = (1u << (drop - 1)) - 1 + ((u >> drop) & 1);
    u = (u + half) & ~((1u << drop) - 1);
    memcpy(&x, &u, 4);
    return x;
}

struct Gemm {
    int ta, tb, m, n, k, lda, ldb, ldc, ldd, round, relu;
    float alpha, beta;
    const float *A, *B, *C, *bias;
    float *D;
};

/* Elements of a column-major rows x cols matrix with leading dimension ld. */
static size_t span(int rows, int cols, int ld)
{
    return rows && cols ? ((size_t)(cols - 1) * ld + rows) * sizeof(float) : 0;
}

static float dot(const float *a, const float *b, int k)
{
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int p = 0;
    for (; p + 8 <= k; p += 8)
        for (int q = 0; q < 8; q++) acc[q] += a[p + q] * b[p + q];
    float s = 0;
    for (; p < k; p++) s += a[p] * b[p];
    for (int q = 0; q < 8; q++) s += acc[q];
    return s;
}

/* D = act(alpha op(A) op(B) + beta C + bias[i]); C is not read when beta
 * is 0.  Operands are packed (rounded) so every dot product is contiguous;
 * columns of D are spread over the pool. */
static void ref_gemm(const Gemm &g)
{
    size_t kk = g.k > 0 ? (size_t)g.k : 1;
    std::vector<float> ap((size_t)g.m * kk), bp((size_t)g.n * kk);
    for (int i = 0; i < g.m; i++)
        for (int p = 0; p < g.k; p++)
            ap[(size_t)i * kk + p] =
                round_in(g.ta ? g.A[p + (size_t)i * g.lda] : g.A[i + (size_t)p * g.lda], g.round);
    for (int j = 0; j < g.n; j++)
        for (int p = 0; p < g.k; p++)
            bp[(size_t)j * kk + p] =
                round_in(g.tb ? g.B[j + (size_t)p * g.ldb] : g.B[p + (size_t)j * g.ldb], g.round);
    std::atomic<int> next{0};
    std::function<void(int)> cols = [&](int) {
        for (int j; (j = next.fetch_add(1)) < g.n;)
            for (int i = 0; i < g.m; i++) {
                float v = g.k > 0 ? g.alpha * dot(&ap[(size_t)i * kk], &bp[(size_t)j * kk], g.k) : 0.0f;
                if (g.beta != 0.0f) v += g.beta * g.C[i + (size_t)j * g.ldc];
                if (g.bias) v += g.bias[i];
                if (g.relu) v = v > 0.0f ? v : 0.0f;
                g.D[i + (size_t)j * g.ldd] = v;
            }
    };
    if ((double)g.m * g.n * g.k < 1e6) cols(0);
    else pool()->run(pool_size(), cols);
}

/* Operands outside device memory: the out-of-bounds reads and writes of a
 * real kernel, a sticky illegal-address fault. */
static int gemm_ranges_ok(const Gemm &g, const char *what)
{
    int ar = g.ta ? g.k : g.m, ac = g.ta ? g.m : g.k, br = g.tb ? g.n : g.k, bc = g.tb ? g.k : g.n;
    const char *bad = nullptr;
    if (g.k > 0 && !is_device_range(g.A, span(ar, ac, g.lda))) bad = "A";
    else if (g.k > 0 && !is_device_range(g.B, span(br, bc, g.ldb))) bad = "B";
    else if (g.beta != 0.0f && !is_device_range(g.C, span(g.m, g.n, g.ldc))) bad = "C";
    else if (!is_device_range(g.D, span(g.m, g.n, g.ldd))) bad = "D";
    else if (g.bias && !is_device_range(g.bias, (size_t)g.m * sizeof(float))) bad = "bias";
    if (!bad) return 1;
    fault(cudaErrorIllegalAddress, "%s: operand %s is not inside a device allocation", what, bad);
    return 0;
}

static int round_of(cublasComputeType_t c)
{
    return c == CUBLAS_COMPUTE_32F_FAST_TF32 ? ROUND_TF32 : c == CUBLAS_COMPUTE_32F_FAST_16BF ? ROUND_BF16 : ROUND_NONE;
}

static int compute_ok(cublasComputeType_t c)
{
    return c == CUBLAS_COMPUTE_32F || c == CUBLAS_COMPUTE_32F_FAST_TF32 || c == CUBLAS_COMPUTE_32F_FAST_16BF;
}

/* ---- cuBLAS ---- */

struct nesf_emu_blas {
    cudaStream_t stream;
};

cublasStatus_t cublasCreate(cublasHandle_t *h)
{
    if (enter()) return CUBLAS_STATUS_NOT_INITIALIZED;
    *h = new nesf_emu_blas{0};
    obj_add(*h);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t h)
{
    if (!h || !obj_remove(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s)
{
    if (!h || !obj_live(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (s && !obj_live(s)) return CUBLAS_STATUS_INVALID_VALUE;
    h->stream = s;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetVersion(cublasHandle_t h, int *v)
{
    if (!h || !obj_live(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    *v = 0; /* no cuBLAS: the emulation's reference GEMM */
    return CUBLAS_STATUS_SUCCESS;
}

const char *cublasGetStatusString(cublasStatus_t st)
{
    switch (st) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void *alpha, const void *A, cudaDataType at,
                            int lda, const void *B, cudaDataType bt, int ldb, const void *beta,
                            void *C, cudaDataType ct, int ldc, cublasComputeType_t comp,
                            cublasGemmAlgo_t algo)
{
    if (!h || !obj_live(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    int tA = ta == CUBLAS_OP_T, tB = tb == CUBLAS_OP_T;
    /* cuBLAS's own argument checks (status, nothing launched) */
    if ((ta != CUBLAS_OP_N && !tA) || (tb != CUBLAS_OP_N && !tB) || m < 0 || n < 0 || k < 0 ||
        lda < std::max(1, tA ? k : m) || ldb < std::max(1, tB ? n : k) || ldc < std::max(1, m) ||
        !alpha || !beta || at != CUDA_R_32F || bt != CUDA_R_32F || ct != CUDA_R_32F ||
        !compute_ok(comp) || algo != CUBLAS_GEMM_DEFAULT)
        return CUBLAS_STATUS_INVALID_VALUE;
    if (enter()) return CUBLAS_STATUS_EXECUTION_FAILED;
    if (!m || !n) return CUBLAS_STATUS_SUCCESS;
    Gemm g{tA, tB, m, n, k, lda, ldb, ldc, ldc, round_of(comp), 0, *(const float *)alpha,
           *(const float *)beta, (const float *)A, (const float *)B, (const float *)C, nullptr,
           (float *)C};
    if (gemm_ranges_ok(g, "cublasGemmEx")) ref_gemm(g);
    return CUBLAS_STATUS_SUCCESS; /* a fault surfaces at the next sync, as on a device */
}

/* ---- cuBLASLt ---- */

struct nesf_emu_lt {
    int magic;
};
struct nesf_emu_lt_desc {
    cublasComputeType_t comp;
    int32_t ta, tb;
    uint32_t epi;
    const float *bias;
};
struct nesf_emu_lt_layout {
    uint64_t rows, cols;
    int64_t ld;
};
struct nesf_emu_lt_pref {
    uint64_t ws;
    uint32_t align[4]; /* A, B, C, D; cuBLASLt assumes 256 unless told */
};

cublasStatus_t cublasLtCreate(cublasLtHandle_t *h)
{
    if (enter()) return CUBLAS_STATUS_NOT_INITIALIZED;
    *h = new nesf_emu_lt{1};
    obj_add(*h);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t h)
{
    if (!h || !obj_remove(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *d, cublasComputeType_t comp,
                                        cudaDataType_t scale)
{
    if (!compute_ok(comp) || scale != CUDA_R_32F) return CUBLAS_STATUS_INVALID_VALUE;
    *d = new nesf_emu_lt_desc{comp, CUBLAS_OP_N, CUBLAS_OP_N, CUBLASLT_EPILOGUE_DEFAULT, nullptr};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d)
{
    delete d;
    return CUBLAS_STATUS_SUCCESS;
}

/* Attribute buffers must have the attribute's exact size, as in cuBLASLt. */
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d,
                                              cublasLtMatmulDescAttributes_t a, const void *buf,
                                              size_t size)
{
    if (!d || !buf) return CUBLAS_STATUS_INVALID_VALUE;
    switch (a) {
    case CUBLASLT_MATMUL_DESC_TRANSA:
    case CUBLASLT_MATMUL_DESC_TRANSB: {
        if (size != sizeof(int32_t)) return CUBLAS_STATUS_INVALID_VALUE;
        int32_t v;
        memcpy(&v, buf, 4);
        if (v != CUBLAS_OP_N && v != CUBLAS_OP_T) return CUBLAS_STATUS_INVALID_VALUE;
        (a == CUBLASLT_MATMUL_DESC_TRANSA ? d->ta : d->tb) = v;
        return CUBLAS_STATUS_SUCCESS;
    }
    case CUBLASLT_MATMUL_DESC_EPILOGUE: {
        if (size != sizeof(uint32_t)) return CUBLAS_STATUS_INVALID_VALUE;
        uint32_t v;
        memcpy(&v, buf, 4);
        if (v != CUBLASLT_EPILOGUE_DEFAULT && v != CUBLASLT_EPILOGUE_RELU &&
            v != CUBLASLT_EPILOGUE_BIAS && v != CUBLASLT_EPILOGUE_RELU_BIAS)
            return CUBLAS_STATUS_INVALID_VALUE;
        d->epi = v;
        return CUBLAS_STATUS_SUCCESS;
    }
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER:
        if (size != sizeof(void *)) return CUBLAS_STATUS_INVALID_VALUE;
        memcpy(&d->bias, buf, sizeof(void *));
        return CUBLAS_STATUS_SUCCESS;
    }
    return CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *l, cudaDataType_t t,
                                          uint64_t rows, uint64_t cols, int64_t ld)
{
    if (t != CUDA_R_32F || ld < (int64_t)(rows ? rows : 1) || rows > 0x7fffffff || cols > 0x7fffffff)
        return CUBLAS_STATUS_INVALID_VALUE;
    *l = new nesf_emu_lt_layout{rows, cols, ld};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l)
{
    delete l;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *p)
{
    *p = new nesf_emu_lt_pref{0, {256, 256, 256, 256}};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p)
{
    delete p;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p,
                                                    cublasLtMatmulPreferenceAttributes_t a,
                                                    const void *buf, size_t size)
{
    if (!p || !buf) return CUBLAS_STATUS_INVALID_VALUE;
    if (a == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES) {
        if (size != sizeof(uint64_t)) return CUBLAS_STATUS_INVALID_VALUE;
        memcpy(&p->ws, buf, 8);
        return CUBLAS_STATUS_SUCCESS;
    }
    int i = a - CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES;
    if (i < 0 || i > 3 || size != sizeof(uint32_t)) return CUBLAS_STATUS_INVALID_VALUE;
    uint32_t v;
    memcpy(&v, buf, 4);
    if (!v || (v & (v - 1))) return CUBLAS_STATUS_INVALID_VALUE;
    p->align[i] = v;
    return CUBLAS_STATUS_SUCCESS;
}

/* op(A) is m x k, op(B) k x n, C and D m x n: the layouts must agree. */
static int lt_shape(cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                    cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d, int *m, int *n, int *k)
{
    if (!op || !a || !b || !c || !d) return 0;
    *m = (int)d->rows;
    *n = (int)d->cols;
    *k = (int)(op->ta ? a->rows : a->cols);
    return (op->ta ? a->cols : a->rows) == d->rows && (op->tb ? b->cols : b->rows) == (uint64_t)*k &&
           (op->tb ? b->rows : b->cols) == d->cols && c->rows == d->rows && c->cols == d->cols;
}

/* The algorithm records the alignments it was chosen for (data[0..3]). */
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t h, cublasLtMatmulDesc_t op,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t *res, int *found)
{
    int m, n, k;
    if (!h || !obj_live(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!pref || requested < 1 || !res || !found || !lt_shape(op, a, b, c, d, &m, &n, &k))
        return CUBLAS_STATUS_INVALID_VALUE;
    memset(res, 0, sizeof *res);
    for (int i = 0; i < 4; i++) res->algo.data[i] = pref->align[i];
    res->algo.data[4] = 0x6e657366; /* "nesf": made by this heuristic */
    res->state = CUBLAS_STATUS_SUCCESS;
    res->wavesCount = 1;
    *found = 1;
    return CUBLAS_STATUS_SUCCESS;
}

/* Largest power of two (<= 256) dividing p and ld floats. */
static unsigned align_of(const void *p, int64_t ld)
{
    uintptr_t v = (uintptr_t)p | ((uintptr_t)ld * sizeof(float)) | 256;
    return (unsigned)(v & (~v + 1));
}

/* A pointer less aligned than the algorithm assumes, or a bias that is not
 * 16-byte aligned, is the misaligned-address fault of a real device. */
static int lt_aligned(const cublasLtMatmulAlgo_t *algo, const void *const ptr[4],
                      const cublasLtMatrixLayout_t lay[4], const float *bias)
{
    static const char *names = "ABCD";
    for (int i = 0; i < 4; i++) {
        unsigned have = align_of(ptr[i], lay[i]->ld);
        if (have < algo->data[i]) {
            fault(cudaErrorMisalignedAddress,
                  "cublasLtMatmul: %c is %u-byte aligned, the algorithm was chosen for %u",
                  names[i], have, (unsigned)algo->data[i]);
            return 0;
        }
    }
    if (bias && ((uintptr_t)bias & 15)) {
        fault(cudaErrorMisalignedAddress, "cublasLtMatmul: epilogue bias %p is not 16-byte aligned",
              (const void *)bias);
        return 0;
    }
    return 1;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t h, cublasLtMatmulDesc_t op, const void *alpha,
                              const void *A, cublasLtMatrixLayout_t ad, const void *B,
                              cublasLtMatrixLayout_t bd, const void *beta, const void *C,
                              cublasLtMatrixLayout_t cd, void *D, cublasLtMatrixLayout_t dd,
                              const cublasLtMatmulAlgo_t *algo, void *ws, size_t ws_bytes,
                              cudaStream_t s)
{
    int m, n, k;
    if (!h || !obj_live(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!alpha || !beta || !algo || algo->data[4] != 0x6e657366 ||
        !lt_shape(op, ad, bd, cd, dd, &m, &n, &k) || (s && !obj_live(s)) ||
        (ws_bytes && !is_device_range(ws, ws_bytes)))
        return CUBLAS_STATUS_INVALID_VALUE;
    int bias = op->epi == CUBLASLT_EPILOGUE_BIAS || op->epi == CUBLASLT_EPILOGUE_RELU_BIAS;
    if (bias && !op->bias) return CUBLAS_STATUS_INVALID_VALUE;
    if (enter()) return CUBLAS_STATUS_EXECUTION_FAILED;
    if (!m || !n) return CUBLAS_STATUS_SUCCESS;
    const void *ptr[4] = {A, B, C, D};
    const cublasLtMatrixLayout_t lay[4] = {ad, bd, cd, dd};
    if (!lt_aligned(algo, ptr, lay, bias ? op->bias : nullptr)) return CUBLAS_STATUS_SUCCESS;
    Gemm g{op->ta, op->tb, m, n, k, (int)ad->ld, (int)bd->ld, (int)cd->ld, (int)dd->ld,
           round_of(op->comp),
           op->epi == CUBLASLT_EPILOGUE_RELU || op->epi == CUBLASLT_EPILOGUE_RELU_BIAS,
           *(const float *)alpha, *(const float *)beta, (const float *)A, (const float *)B,
           (const float *)C, bias ? op->bias : nullptr, (float *)D};
    if (gemm_ranges_ok(g, "cublasLtMatmul")) ref_gemm(g);
    return CUBLAS_STATUS_SUCCESS;
}

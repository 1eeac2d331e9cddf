#include "mlp.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

void nesf_mlp_layout(nesf_mlp *m, const char *name, int n, const int *widths,
                     const nesf_xyz_cols *xyz, int bn, int dropout, size_t *np, size_t *nb)
{
    memset(m, 0, sizeof *m);
    snprintf(m->name, sizeof m->name, "%s", name);
    m->n = n;
    const int xyz_layers = xyz ? xyz->layers : 0;
    if (xyz_layers) {
        m->fourier = xyz->fourier;
        m->period = xyz->period;
        m->xw = 3 + 6 * xyz->fourier;
    }
    for (int l = 0; l < n; l++) {
        nesf_layer *L = &m->L[l];
        int last = l == n - 1;
        L->extra = l < xyz_layers ? m->xw : 0;
        L->in = widths[l] + L->extra;
        L->out = widths[l + 1];
        L->bn = !last && bn;
        L->dropout = !last && dropout;
        L->W = *np;
        *np += (size_t)L->out * L->in;
        L->b = *np;
        *np += L->out;
        if (L->bn) {
            L->gamma = *np;
            *np += L->out;
            L->beta = *np;
            *np += L->out;
            L->rmean = *nb;
            *nb += L->out;
            L->rvar = *nb;
            *nb += L->out;
        }
    }
}

/* Input row stride of layer l+1, which receives layer l's output. */
static int next_ld(const nesf_mlp *m, int l)
{
    return l + 1 < m->n ? m->L[l + 1].in : m->L[l].out;
}

/* Computes layer l's pre-BN activation into dst (ld ldd): act(x W^T + b),
 * with ReLU unless it is the last layer.  W and b are read from w (params
 * or folded). */
static void linear(nesf_net *net, const nesf_mlp *m, int l, const nesf_mlp_in *in, const float *x,
                   int ldx, const float *w, float *dst, int ldd, nesf_arena *ar)
{
    const nesf_layer *L = &m->L[l];
    nesf_backend *be = net->be;
    const int relu = l < m->n - 1;
    if (l == 0 && in->S > 0) {
        const int feat = L->in - L->extra;
        float *G = nesf_arena_floats(ar, (size_t)in->S * L->out);
        be->ops->gemm(be, 0, 1, in->S, L->out, feat, 1.0f, in->z, in->ldz, w + L->W, L->in, 0.0f,
                      G, L->out);
        be->ops->group_linear(be, in->S, in->off, L->out, G, L->out, in->xyz, m->xw, L->extra,
                              w + L->W + feat, L->in, w + L->b, relu, dst, ldd);
        return;
    }
    be->ops->linear(be, in->rows, L->out, L->in, x, ldx, w + L->W, L->in, w + L->b, relu, dst,
                    ldd);
}

static void put_xyz(nesf_net *net, const nesf_mlp *m, int l, const nesf_mlp_in *in, float *x)
{
    const nesf_layer *L = &m->L[l];
    if (L->extra)
        net->be->ops->copy2d(net->be, in->rows, L->extra, in->xyz, m->xw, x + (L->in - L->extra), L->in);
}

/* Points *in at the input with its query columns as the layers take them:
 * the caller's xyz, or its Fourier columns made once here in the arena (the
 * same for every layer; tmp holds the copy).  Fourier columns need a
 * grouped first layer: an ungrouped one would read them from the caller's
 * x, which holds raw xyz. */
static int with_xyz_cols(nesf_net *net, const nesf_mlp *m, const nesf_mlp_in **in, nesf_mlp_in *tmp)
{
    if (!m->fourier || !(*in)->xyz) return NESF_OK;
    if ((*in)->S <= 0) return NESF_ERR_INVALID;
    float *cols = nesf_arena_floats(&net->arena, (size_t)(*in)->rows * m->xw);
    if (!cols) return NESF_ERR_NOMEM;
    net->be->ops->xyz_fourier(net->be, (*in)->rows, (*in)->xyz, m->fourier, m->period, cols, m->xw);
    *tmp = **in;
    tmp->xyz = cols;
    *in = tmp;
    return NESF_OK;
}

#define CHECK(p) do { if (!(p)) return NESF_ERR_NOMEM; } while (0)

int nesf_mlp_forward_train(nesf_net *net, const nesf_mlp *m, const nesf_mlp_in *in,
                           uint64_t seed, nesf_mlp_acts *acts)
{
    nesf_backend *be = net->be;
    nesf_arena *ar = &net->arena;
    const int rows = in->rows;
    memset(acts, 0, sizeof *acts);
    nesf_mlp_in tmp;
    int rc = with_xyz_cols(net, m, &in, &tmp);
    if (rc) return rc;
    acts->xyz = in->xyz;
    const float *x = in->x;
    int ldx = in->ldx;
    for (int l = 0; l < m->n; l++) {
        const nesf_layer *L = &m->L[l];
        acts->x[l] = (float *)x;
        const int ld = next_ld(m, l);
        float *nx = nesf_arena_floats(ar, (size_t)rows * ld);
        CHECK(nx);
        if (l == m->n - 1) {
            linear(net, m, l, in, x, ldx, net->params, nx, ld, ar);
            acts->out = nx;
            break;
        }
        if (L->bn) {
            float *r = nesf_arena_floats(ar, (size_t)rows * L->out);
            float *st = nesf_arena_floats(ar, (size_t)2 * L->out);
            CHECK(r && st);
            linear(net, m, l, in, x, ldx, net->params, r, L->out, ar);
            acts->r[l] = r;
            acts->ldr[l] = L->out;
            acts->mean[l] = st;
            acts->invstd[l] = st + L->out;
            be->ops->bn_train(be, rows, L->out, r, L->out, net->params + L->gamma,
                              net->params + L->beta, net->bn_eps, net->bn_momentum,
                              net->buffers + L->rmean, net->buffers + L->rvar, acts->mean[l],
                              acts->invstd[l], nx, ld);
        } else {
            /* no BN: the ReLU output is the next input itself */
            linear(net, m, l, in, x, ldx, net->params, nx, ld, ar);
            acts->r[l] = nx;
            acts->ldr[l] = ld;
        }
        if (L->dropout && net->dropout > 0) {
            acts->mask[l] = nesf_arena_floats(ar, (size_t)rows * L->out);
            CHECK(acts->mask[l]);
            be->ops->dropout(be, rows, L->out, net->dropout, seed + (uint64_t)l, nx, ld,
                             acts->mask[l]);
        }
        put_xyz(net, m, l + 1, in, nx);
        x = nx;
        ldx = ld;
    }
    return NESF_OK;
}

float *nesf_mlp_forward_infer(nesf_net *net, const nesf_mlp *m, const nesf_mlp_in *in)
{
    nesf_arena *ar = &net->arena;
    nesf_mlp_in tmp;
    if (with_xyz_cols(net, m, &in, &tmp)) return NULL;
    const float *x = in->x;
    int ldx = in->ldx;
    float *nx = NULL;
    /* two buffers used in turn: the working set of a chunk is two layers'
     * activations, not all of them, so it can stay in cache (GPU L2) */
    int maxw = 0;
    for (int l = 0; l < m->n; l++) maxw = next_ld(m, l) > maxw ? next_ld(m, l) : maxw;
    float *buf[2] = {nesf_arena_floats(ar, (size_t)in->rows * maxw),
                     nesf_arena_floats(ar, (size_t)in->rows * maxw)};
    if (!buf[0] || !buf[1]) return NULL;
    for (int l = 0; l < m->n; l++) {
        const int ld = next_ld(m, l);
        nx = buf[l & 1];
        linear(net, m, l, in, x, ldx, net->folded, nx, ld, ar);
        if (l + 1 < m->n) put_xyz(net, m, l + 1, in, nx);
        x = nx;
        ldx = ld;
    }
    return nx;
}

int nesf_mlp_backward(nesf_net *net, const nesf_mlp *m, const nesf_mlp_in *in,
                      const nesf_mlp_acts *acts, float *dout, int lddout, float *dx, int lddx,
                      float *dz, int lddz)
{
    nesf_backend *be = net->be;
    nesf_arena *ar = &net->arena;
    const int rows = in->rows;
    float *g = dout;  /* gradient of layer l's output */
    int ldg = lddout;
    /* the input gradients of the layers alternate between two buffers: a
     * layer's output gradient is dead once its input gradient is made */
    float *buf[2] = {NULL, NULL};
    int maxfeat = 0, which = 0;
    for (int l = 1; l < m->n; l++)
        if (m->L[l].in - m->L[l].extra > maxfeat) maxfeat = m->L[l].in - m->L[l].extra;
    const int want_w = net->grads != NULL; /* NULL: input gradients only */
    for (int l = m->n - 1; l >= 0; l--) {
        const nesf_layer *L = &m->L[l];
        const int feat = L->in - L->extra;
        float *dW = want_w ? net->grads + L->W : NULL, *db = want_w ? net->grads + L->b : NULL;
        const float *W = net->params + L->W;
        float *dy = g;
        int ldy = ldg;
        if (l < m->n - 1) {
            if (acts->mask[l]) be->ops->mul(be, rows, L->out, acts->mask[l], g, ldg);
            if (L->bn && !want_w) return NESF_ERR_INVALID; /* BN's affine needs its gradients */
            if (L->bn)
                be->ops->relu_bn_backward(be, rows, L->out, acts->r[l], acts->ldr[l], acts->mean[l],
                                          acts->invstd[l], net->params + L->gamma, g, ldg, g, ldg,
                                          net->grads + L->gamma, net->grads + L->beta);
            else
                be->ops->relu_backward(be, rows, L->out, acts->r[l], acts->ldr[l], g, ldg, g, ldg);
        }
        if (want_w) be->ops->col_sum(be, rows, L->out, dy, ldy, db);
        if (l == 0 && in->S > 0) {
            float *dG = nesf_arena_floats(ar, (size_t)in->S * L->out);
            CHECK(dG);
            be->ops->group_sum(be, in->S, in->off, L->out, dy, ldy, dG, L->out, 0);
            if (want_w)
                be->ops->gemm(be, 1, 0, L->out, feat, in->S, 1.0f, dG, L->out, in->z, in->ldz, 1.0f, dW,
                              L->in);
            if (want_w && L->extra)
                be->ops->gemm(be, 1, 0, L->out, L->extra, rows, 1.0f, dy, ldy, acts->xyz, m->xw,
                              1.0f, dW + feat, L->in);
            if (dz)
                be->ops->gemm(be, 0, 0, in->S, feat, L->out, 1.0f, dG, L->out, W, L->in, 1.0f, dz,
                              lddz);
            break;
        }
        if (want_w)
            be->ops->gemm(be, 1, 0, L->out, L->in, rows, 1.0f, dy, ldy, acts->x[l],
                          L->in == feat && l == 0 ? in->ldx : L->in, 1.0f, dW, L->in);
        if (l == 0) {
            if (dx)
                be->ops->gemm(be, 0, 0, rows, feat, L->out, 1.0f, dy, ldy, W, L->in, 1.0f, dx, lddx);
            break;
        }
        if (!buf[which]) buf[which] = nesf_arena_floats(ar, (size_t)rows * maxfeat);
        float *dprev = buf[which];
        CHECK(dprev);
        which ^= 1;
        be->ops->gemm(be, 0, 0, rows, feat, L->out, 1.0f, dy, ldy, W, L->in, 0.0f, dprev, feat);
        g = dprev;
        ldg = feat;
    }
    return NESF_OK;
}

int nesf_mlp_fold(nesf_net *net, const nesf_mlp *m, const float *P, const float *B, float *F)
{
    for (int l = 0; l < m->n; l++) {
        const nesf_layer *L = &m->L[l];
        memcpy(F + L->W, P + L->W, (size_t)L->out * L->in * sizeof *F);
        memcpy(F + L->b, P + L->b, (size_t)L->out * sizeof *F);
        if (l == 0 || !m->L[l - 1].bn) continue;
        /* BN after ReLU of layer l-1: y = s x + t feeds this layer's feature
         * columns, so W' = W diag(s) and b' = b + W t; xyz columns untouched */
        const nesf_layer *Pv = &m->L[l - 1];
        const int feat = L->in - L->extra;
        for (int j = 0; j < feat; j++) {
            double s = P[Pv->gamma + j] / sqrt((double)B[Pv->rvar + j] + net->bn_eps);
            double t = P[Pv->beta + j] - B[Pv->rmean + j] * s;
            for (int o = 0; o < L->out; o++) {
                const float w = P[L->W + (size_t)o * L->in + j];
                F[L->W + (size_t)o * L->in + j] = (float)(w * s);
                F[L->b + o] += (float)(w * t);
            }
        }
    }
    return NESF_OK;
}

size_t nesf_mlp_flops_per_row(const nesf_mlp *m, int grouped)
{
    size_t f = 0;
    for (int l = 0; l < m->n; l++) {
        const nesf_layer *L = &m->L[l];
        int k = (l == 0 && grouped) ? L->extra : L->in;
        f += (size_t)2 * k * L->out;
    }
    return f;
}

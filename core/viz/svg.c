/* svg.c - scatter plots as SVG, see svg.h. */
#include "svg.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct sbuf {
    char *s;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...)
{
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        size_t room = b->cap - b->len;
        int k = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? room : 0, fmt, ap);
        va_end(ap);
        if (k < 0) {
            b->oom = 1;
            return;
        }
        if (b->s && (size_t)k < room) {
            b->len += (size_t)k;
            return;
        }
        size_t cap = b->cap ? b->cap : 4096;
        while (cap - b->len <= (size_t)k) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
}

/* Text with XML's special characters escaped. */
static void sb_text(sbuf *b, const char *t)
{
    for (; t && *t; t++) {
        switch (*t) {
        case '<': sb_printf(b, "&lt;"); break;
        case '>': sb_printf(b, "&gt;"); break;
        case '&': sb_printf(b, "&amp;"); break;
        case '"': sb_printf(b, "&quot;"); break;
        default:
            /* control characters are not allowed in XML 1.0 */
            if ((unsigned char)*t >= 0x20 || *t == '\n' || *t == '\t') sb_printf(b, "%c", *t);
        }
    }
}

unsigned nesf_viridis(double t)
{
    /* matplotlib's viridis sampled at 0, 1/8, ..., 1 */
    static const unsigned stops[9] = {0x440154, 0x472d7b, 0x3b528b, 0x2c728e, 0x21918c,
                                      0x28ae80, 0x5ec962, 0xaddc30, 0xfde725};
    if (!(t > 0)) t = 0;
    if (t > 1) t = 1;
    double x = t * 8;
    int i = (int)x;
    if (i >= 8) return stops[8];
    double f = x - i;
    unsigned c = 0;
    for (int sh = 16; sh >= 0; sh -= 8) {
        double a = (stops[i] >> sh) & 0xff, b = (stops[i + 1] >> sh) & 0xff;
        c |= (unsigned)lround(a + f * (b - a)) << sh;
    }
    return c;
}

static const unsigned palette[10] = {0x1f77b4, 0xff7f0e, 0x2ca02c, 0xd62728, 0x9467bd,
                                     0x8c564b, 0xe377c2, 0x7f7f7f, 0xbcbd22, 0x17becf};

#define W 900
#define H 680
#define PLOT_X 60
#define PLOT_Y 50
#define PLOT_W 580
#define PLOT_H 580
#define GREY 0xbbbbbb

char *nesf_svg_scatter(const nesf_scatter *p)
{
    sbuf b = {0};
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
    double v0 = INFINITY, v1 = -INFINITY;
    for (int i = 0; i < p->n; i++) {
        double x = p->xy[2 * i], y = p->xy[2 * i + 1], v = p->value ? p->value[i] : NAN;
        if (isfinite(x) && isfinite(y)) {
            x0 = fmin(x0, x);
            x1 = fmax(x1, x);
            y0 = fmin(y0, y);
            y1 = fmax(y1, y);
        }
        if (isfinite(v)) {
            v0 = fmin(v0, v);
            v1 = fmax(v1, v);
        }
    }
    if (!(x1 > x0)) { x0 -= 1; x1 += 1; }
    if (!(y1 > y0)) { y0 -= 1; y1 += 1; }
    /* same scale on both axes: t-SNE distances are isotropic */
    double span = fmax(x1 - x0, y1 - y0) * 1.05;
    double cx = (x0 + x1) / 2, cy = (y0 + y1) / 2, scale = PLOT_W / span;

    sb_printf(&b, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                  "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
                  "viewBox=\"0 0 %d %d\" font-family=\"DejaVu Sans, Arial, sans-serif\">\n",
              W, H, W, H);
    sb_printf(&b, "<rect width=\"%d\" height=\"%d\" fill=\"#ffffff\"/>\n", W, H);
    if (p->title) {
        sb_printf(&b, "<text x=\"%d\" y=\"30\" font-size=\"18\" text-anchor=\"middle\">",
                  PLOT_X + PLOT_W / 2);
        sb_text(&b, p->title);
        sb_printf(&b, "</text>\n");
    }
    sb_printf(&b, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" "
                  "stroke=\"#444444\"/>\n", PLOT_X, PLOT_Y, PLOT_W, PLOT_H);
    sb_printf(&b, "<text x=\"%d\" y=\"%d\" font-size=\"13\" text-anchor=\"middle\">t-SNE 1</text>\n",
              PLOT_X + PLOT_W / 2, PLOT_Y + PLOT_H + 22);
    sb_printf(&b, "<text x=\"%d\" y=\"%d\" font-size=\"13\" text-anchor=\"middle\" "
                  "transform=\"rotate(-90 %d %d)\">t-SNE 2</text>\n",
              PLOT_X - 15, PLOT_Y + PLOT_H / 2, PLOT_X - 15, PLOT_Y + PLOT_H / 2);

    sb_printf(&b, "<g stroke=\"#333333\" stroke-width=\"0.3\" fill-opacity=\"0.85\">\n");
    for (int i = 0; i < p->n; i++) {
        double x = p->xy[2 * i], y = p->xy[2 * i + 1], v = p->value ? p->value[i] : NAN;
        if (!isfinite(x) || !isfinite(y)) continue;
        unsigned col = GREY;
        if (p->categorical) {
            int c = isfinite(v) ? (int)v : -1;
            if (c >= 0 && c < p->ncat) col = palette[c % 10];
        } else if (isfinite(v)) {
            col = nesf_viridis(v1 > v0 ? (v - v0) / (v1 - v0) : 0.5);
        }
        double px = PLOT_X + PLOT_W / 2.0 + (x - cx) * scale;
        double py = PLOT_Y + PLOT_H / 2.0 - (y - cy) * scale;
        sb_printf(&b, "<circle cx=\"%.2f\" cy=\"%.2f\" r=\"3.5\" fill=\"#%06x\">", px, py, col);
        if (p->tips && p->tips[i]) {
            sb_printf(&b, "<title>");
            sb_text(&b, p->tips[i]);
            sb_printf(&b, "</title>");
        }
        sb_printf(&b, "</circle>\n");
    }
    sb_printf(&b, "</g>\n");

    /* legend */
    const int lx = PLOT_X + PLOT_W + 30, ly = PLOT_Y + 10;
    sb_printf(&b, "<text x=\"%d\" y=\"%d\" font-size=\"14\">", lx, ly);
    sb_text(&b, p->value_label ? p->value_label : "");
    sb_printf(&b, "</text>\n");
    if (p->categorical) {
        for (int c = 0; c < p->ncat; c++) {
            int y = ly + 22 + 22 * c;
            sb_printf(&b, "<circle cx=\"%d\" cy=\"%d\" r=\"6\" fill=\"#%06x\"/>"
                          "<text x=\"%d\" y=\"%d\" font-size=\"13\">",
                      lx + 6, y - 4, palette[c % 10], lx + 18, y);
            sb_text(&b, p->names ? p->names[c] : "");
            sb_printf(&b, "</text>\n");
        }
    } else {
        const int bh = 300, bw = 22, by = ly + 15;
        sb_printf(&b, "<defs><linearGradient id=\"cbar\" x1=\"0\" y1=\"1\" x2=\"0\" y2=\"0\">");
        for (int k = 0; k <= 8; k++)
            sb_printf(&b, "<stop offset=\"%.3f\" stop-color=\"#%06x\"/>", k / 8.0,
                      nesf_viridis(k / 8.0));
        sb_printf(&b, "</linearGradient></defs>\n");
        sb_printf(&b, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"url(#cbar)\" "
                      "stroke=\"#444444\"/>\n", lx, by, bw, bh);
        if (v1 >= v0)
            for (int k = 0; k <= 4; k++) {
                double v = v0 + (v1 - v0) * k / 4.0;
                int y = by + bh - bh * k / 4;
                sb_printf(&b, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#444444\"/>"
                              "<text x=\"%d\" y=\"%d\" font-size=\"12\">%.4g</text>\n",
                          lx + bw, y, lx + bw + 5, y, lx + bw + 8, y + 4, v);
            }
    }
    sb_printf(&b, "</svg>\n");
    if (b.oom) {
        free(b.s);
        return NULL;
    }
    return b.s;
}

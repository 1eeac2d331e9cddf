/* svg.h - self-contained SVG scatter plots with a legend: the latent-space
 * maps of paper §2.5 / Fig. 7 (t-SNE coloured by cell volume, atom count or
 * crystal system).  Writers return malloc'd text (caller frees). */
#ifndef NESF_SVG_H
#define NESF_SVG_H

typedef struct nesf_scatter {
    int n;
    const double *xy;         /* n x 2, any scale: the plot fits them */
    const double *value;      /* n colour values; NaN is drawn grey */
    int categorical;          /* value[i] is a category index into names */
    int ncat;
    const char *const *names; /* ncat category names (legend) */
    const char *title;        /* may be NULL */
    const char *value_label;  /* legend heading, e.g. "cell volume (Å³)" */
    const char *const *tips;  /* optional per-point hover text (n entries) */
} nesf_scatter;

/* Continuous values use the viridis colour map over [min, max] with a
 * colour bar; categories use a 10-colour palette with one legend row
 * each.  NULL only when out of memory. */
char *nesf_svg_scatter(const nesf_scatter *p);

/* Viridis at t in [0, 1] as 0xRRGGBB (exposed for tests). */
unsigned nesf_viridis(double t);

#endif

/* shipped.h - what the unit tests that need a trained network share: the
 * shipped model (a random small one decodes no atoms to judge) and cubic
 * test crystals.  Header-only, for test files. */
#ifndef NESF_TEST_SHIPPED_H
#define NESF_TEST_SHIPPED_H

#include <stdio.h>
#include <stdlib.h>

#include "model.h"
#include "structure.h"

/* models/lcs6.safetensors under $NESF_SOURCE_ROOT (else .) on a new
 * 1-thread CPU backend; 0 on success. */
static inline int shipped_load(nesf_backend **be, nesf_model **m)
{
    const char *root = getenv("NESF_SOURCE_ROOT");
    char path[1024];
    snprintf(path, sizeof path, "%s/models/lcs6.safetensors", root ? root : ".");
    if (nesf_backend_cpu_create(1, be, NULL)) return 1;
    return nesf_model_load(path, *be, m, NULL) != NESF_OK;
}

/* A cubic cell of edge a with n sites of atomic numbers z at fractional f;
 * NULL on a bad site (callers assert). */
static inline nesf_structure *shipped_cubic(double a, int n, const int *z, const double (*f)[3])
{
    nesf_structure *s = nesf_structure_new(n);
    nesf_cellpar p = {a, a, a, 90, 90, 90};
    if (!s || nesf_lattice_from_params(&p, &s->lat, NULL)) goto bad;
    for (int i = 0; i < n; i++)
        if (nesf_structure_add_site(s, z[i], f[i], NULL)) goto bad;
    return s;
bad:
    nesf_structure_free(s);
    return NULL;
}

#endif

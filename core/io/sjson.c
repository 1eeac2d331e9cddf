/* sjson.c - structures as JSON: dataset line format and pymatgen as_dict. */
#include "sjson.h"
#include "elements.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Sites per structure; far above any crystal cell, low enough that a
 * hostile document cannot make us allocate without bound. */
#define SJSON_MAX_SITES 1000000

/* ---- reading ------------------------------------------------------------ */

static int get_vec3(const json_t *a, double out[3], const char *what, int idx, nesf_error *err)
{
    if (!json_is_array(a) || json_array_size(a) != 3)
        return idx < 0 ? nesf_fail(err, NESF_ERR_FORMAT, "%s: expected an array of 3 numbers", what)
                       : nesf_fail(err, NESF_ERR_FORMAT, "%s[%d]: expected an array of 3 numbers",
                                   what, idx);
    for (int k = 0; k < 3; k++) {
        const json_t *v = json_array_get(a, (size_t)k);
        if (!json_is_number(v) || !isfinite(json_number_value(v)))
            return idx < 0 ? nesf_fail(err, NESF_ERR_FORMAT, "%s[%d]: expected a finite number", what, k)
                           : nesf_fail(err, NESF_ERR_FORMAT, "%s[%d][%d]: expected a finite number",
                                       what, idx, k);
        out[k] = json_number_value(v);
    }
    return NESF_OK;
}

static int get_number(const json_t *obj, const char *key, double *out, nesf_error *err)
{
    const json_t *v = json_object_get(obj, key);
    if (!json_is_number(v) || !isfinite(json_number_value(v)))
        return nesf_fail(err, NESF_ERR_FORMAT, "lattice.%s: expected a finite number", key);
    *out = json_number_value(v);
    return NESF_OK;
}

/* "matrix" when present, else a b c alpha beta gamma. */
static int read_lattice(const json_t *root, nesf_lattice *lat, nesf_error *err)
{
    const json_t *l = json_object_get(root, "lattice");
    if (!json_is_object(l)) return nesf_fail(err, NESF_ERR_FORMAT, "\"lattice\": an object expected");
    const json_t *m = json_object_get(l, "matrix");
    if (m) {
        if (!json_is_array(m) || json_array_size(m) != 3)
            return nesf_fail(err, NESF_ERR_FORMAT, "lattice.matrix: expected a 3x3 array");
        for (int i = 0; i < 3; i++) {
            int rc = get_vec3(json_array_get(m, (size_t)i), lat->m[i], "lattice.matrix", i, err);
            if (rc) return rc;
        }
        return NESF_OK;
    }
    nesf_cellpar p;
    int rc = get_number(l, "a", &p.a, err);
    if (!rc) rc = get_number(l, "b", &p.b, err);
    if (!rc) rc = get_number(l, "c", &p.c, err);
    if (!rc) rc = get_number(l, "alpha", &p.alpha, err);
    if (!rc) rc = get_number(l, "beta", &p.beta, err);
    if (!rc) rc = get_number(l, "gamma", &p.gamma, err);
    if (rc) {
        nesf_error_prefix(err, "lattice has no \"matrix\" and ");
        return rc;
    }
    return nesf_lattice_from_params(&p, lat, err);
}

static int species_z(const json_t *v, const char *what, int idx, int *z, nesf_error *err)
{
    if (json_is_string(v)) {
        *z = nesf_element_z(json_string_value(v));
        if (!*z)
            return nesf_fail(err, NESF_ERR_NOTFOUND, "%s[%d]: unknown element '%.16s'", what, idx,
                             json_string_value(v));
        return NESF_OK;
    }
    if (json_is_integer(v)) {
        json_int_t zz = json_integer_value(v);
        if (zz < 1 || zz > NESF_MAX_Z)
            return nesf_fail(err, NESF_ERR_NOTFOUND, "%s[%d]: atomic number %lld out of 1..%d",
                             what, idx, (long long)zz, NESF_MAX_Z);
        *z = (int)zz;
        return NESF_OK;
    }
    return nesf_fail(err, NESF_ERR_FORMAT, "%s[%d]: expected an element symbol", what, idx);
}

static int read_dataset_sites(const json_t *root, nesf_structure *s, nesf_error *err)
{
    const json_t *sp = json_object_get(root, "species");
    if (!json_is_array(sp)) return nesf_fail(err, NESF_ERR_FORMAT, "missing \"species\" array");
    const json_t *cart = json_object_get(root, "cart_coords");
    const json_t *frac = json_object_get(root, "frac_coords");
    const json_t *pos = cart ? cart : frac;
    const char *pname = cart ? "cart_coords" : "frac_coords";
    if (!pos) return nesf_fail(err, NESF_ERR_FORMAT, "missing \"cart_coords\" or \"frac_coords\"");
    if (!json_is_array(pos)) return nesf_fail(err, NESF_ERR_FORMAT, "%s: expected an array", pname);
    size_t n = json_array_size(sp);
    if (json_array_size(pos) != n)
        return nesf_fail(err, NESF_ERR_FORMAT, "%zu species but %zu %s", n, json_array_size(pos),
                         pname);
    if (n > SJSON_MAX_SITES)
        return nesf_fail(err, NESF_ERR_FORMAT, "%zu sites (at most %d)", n, SJSON_MAX_SITES);
    if (nesf_structure_reserve(s, (int)n)) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        int z, rc = species_z(json_array_get(sp, i), "species", (int)i, &z, err);
        double x[3];
        if (!rc) rc = get_vec3(json_array_get(pos, i), x, pname, (int)i, err);
        if (!rc) rc = cart ? nesf_structure_add_site_cart(s, z, x, err)
                           : nesf_structure_add_site(s, z, x, err);
        if (rc) return rc;
    }
    return NESF_OK;
}

/* pymatgen sites: {"species": [{"element", "occu"}], "abc", "xyz", ...} */
static int read_pymatgen_sites(const json_t *root, nesf_structure *s, nesf_error *err)
{
    const json_t *sites = json_object_get(root, "sites");
    if (!json_is_array(sites)) return nesf_fail(err, NESF_ERR_FORMAT, "\"sites\": expected an array");
    size_t n = json_array_size(sites);
    if (n > SJSON_MAX_SITES)
        return nesf_fail(err, NESF_ERR_FORMAT, "%zu sites (at most %d)", n, SJSON_MAX_SITES);
    if (nesf_structure_reserve(s, (int)n)) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        const json_t *site = json_array_get(sites, i);
        if (!json_is_object(site))
            return nesf_fail(err, NESF_ERR_FORMAT, "sites[%zu]: expected an object", i);
        const json_t *sp = json_object_get(site, "species");
        if (!json_is_array(sp) || json_array_size(sp) == 0)
            return nesf_fail(err, NESF_ERR_FORMAT, "sites[%zu].species: expected a non-empty array", i);
        if (json_array_size(sp) > 1)
            return nesf_fail(err, NESF_ERR_UNSUPPORTED,
                             "sites[%zu] is a disordered site (%zu species): not supported", i,
                             json_array_size(sp));
        const json_t *e = json_array_get(sp, 0);
        if (!json_is_object(e))
            return nesf_fail(err, NESF_ERR_FORMAT, "sites[%zu].species[0]: expected an object", i);
        const json_t *occ = json_object_get(e, "occu");
        if (occ && (!json_is_number(occ) || fabs(json_number_value(occ) - 1.0) > 1e-6))
            return nesf_fail(err, NESF_ERR_UNSUPPORTED,
                             "sites[%zu] is partially occupied (occu %g): not supported", i,
                             json_is_number(occ) ? json_number_value(occ) : NAN);
        int z, rc = species_z(json_object_get(e, "element"), "sites[].species[0].element", (int)i,
                              &z, err);
        if (rc) return rc;
        double x[3];
        const json_t *abc = json_object_get(site, "abc");
        if (abc) {
            rc = get_vec3(abc, x, "sites[].abc", (int)i, err);
            if (!rc) rc = nesf_structure_add_site(s, z, x, err);
        } else {
            rc = get_vec3(json_object_get(site, "xyz"), x, "sites[].xyz", (int)i, err);
            if (!rc) rc = nesf_structure_add_site_cart(s, z, x, err);
        }
        if (rc) return rc;
    }
    return NESF_OK;
}

int nesf_sjson_from_json(const json_t *root, nesf_structure **out, nesf_error *err)
{
    *out = NULL;
    if (!json_is_object(root)) return nesf_fail(err, NESF_ERR_FORMAT, "expected a structure object");
    nesf_structure *s = nesf_structure_new(0);
    if (!s) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    const json_t *id = json_object_get(root, "id");
    if (json_is_string(id)) snprintf(s->id, sizeof s->id, "%s", json_string_value(id));
    int rc = read_lattice(root, &s->lat, err);
    if (!rc) {
        double inv[3][3];
        rc = nesf_lattice_inverse(&s->lat, inv, err);
    }
    if (!rc) rc = json_object_get(root, "sites") ? read_pymatgen_sites(root, s, err)
                                                 : read_dataset_sites(root, s, err);
    if (!rc) rc = nesf_structure_validate(s, err);
    if (rc) {
        nesf_structure_free(s);
        return rc;
    }
    *out = s;
    return NESF_OK;
}

int nesf_sjson_read(const char *text, size_t len, nesf_structure ***out, int *n, nesf_error *err)
{
    *out = NULL;
    *n = 0;
    json_error_t je;
    json_t *root = json_loadb(text, len, 0, &je);
    if (!root)
        return nesf_fail(err, NESF_ERR_PARSE, "JSON line %d column %d: %s", je.line, je.column,
                         je.text);
    int rc = NESF_OK;
    size_t count = json_is_array(root) ? json_array_size(root) : 1;
    if (count == 0) rc = nesf_fail(err, NESF_ERR_FORMAT, "empty JSON array: no structure");
    nesf_structure **list = rc ? NULL : calloc(count, sizeof *list);
    if (!rc && !list) rc = nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    for (size_t i = 0; !rc && i < count; i++) {
        rc = nesf_sjson_from_json(json_is_array(root) ? json_array_get(root, i) : root, &list[i], err);
        if (rc && json_is_array(root)) nesf_error_prefix(err, "structure %zu: ", i + 1);
    }
    json_decref(root);
    if (rc) {
        nesf_structure_list_free(list, (int)count);
        return rc;
    }
    *out = list;
    *n = (int)count;
    return NESF_OK;
}

int nesf_sjson_read_lines(const char *text, size_t len, const char *name,
                          nesf_structure ***out, int *n, nesf_error *err)
{
    *out = NULL;
    *n = 0;
    if (!name) name = "(input)";
    nesf_structure **list = NULL;
    int count = 0, cap = 0, rc = NESF_OK, line = 0;
    const char *p = text, *end = text + len;
    while (p < end && !rc) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *e = nl ? nl : end;
        line++;
        const char *q = p;
        while (q < e && (*q == ' ' || *q == '\t' || *q == '\r')) q++;
        if (q < e) {
            if (count == cap) {
                int ncap = cap ? 2 * cap : 256;
                nesf_structure **nl2 = realloc(list, (size_t)ncap * sizeof *list);
                if (!nl2) {
                    rc = nesf_fail(err, NESF_ERR_NOMEM, "%s:%d: out of memory", name, line);
                    break;
                }
                list = nl2;
                cap = ncap;
            }
            json_error_t je;
            json_t *root = json_loadb(p, (size_t)(e - p), 0, &je);
            if (!root) {
                rc = nesf_fail(err, NESF_ERR_PARSE, "%s:%d: column %d: %s", name, line, je.column,
                               je.text);
            } else if (json_object_get(root, "error") && !json_object_get(root, "lattice")) {
                json_decref(root); /* a failed reconstruction's record */
            } else {
                rc = nesf_sjson_from_json(root, &list[count], err);
                if (rc) nesf_error_prefix(err, "%s:%d: ", name, line);
                else count++;
                json_decref(root);
            }
        }
        p = e + 1;
    }
    if (rc) {
        nesf_structure_list_free(list, count);
        return rc;
    }
    *out = list;
    *n = count;
    return NESF_OK;
}

/* ---- writing ------------------------------------------------------------
 * Builders return NULL when anything inside failed (allocation, or a
 * non-finite number, which JSON cannot hold): never a partial document. */

static json_t *vec3(const double v[3])
{
    /* 0.0 rather than -0.0 */
    return json_pack("[fff]", v[0] + 0.0, v[1] + 0.0, v[2] + 0.0);
}

/* o[key] = v, consuming v; 0 on success */
static int put(json_t *o, const char *key, json_t *v)
{
    return v ? json_object_set_new(o, key, v) : -1;
}

static int push(json_t *a, json_t *v)
{
    return v ? json_array_append_new(a, v) : -1;
}

static json_t *coords(const double *x, int n)
{
    json_t *a = json_array();
    for (int i = 0; a && i < n; i++)
        if (push(a, vec3(x + 3 * i))) {
            json_decref(a);
            return NULL;
        }
    return a;
}

static json_t *lattice_json(const nesf_lattice *l, int with_volume, int with_pbc)
{
    nesf_cellpar p;
    nesf_lattice_params(l, &p);
    json_t *m = json_pack("[ooo]", vec3(l->m[0]), vec3(l->m[1]), vec3(l->m[2]));
    json_t *o = json_pack("{s:o,s:f,s:f,s:f,s:f,s:f,s:f}", "matrix", m, "a", p.a, "b", p.b, "c",
                          p.c, "alpha", p.alpha, "beta", p.beta, "gamma", p.gamma);
    if (o && ((with_pbc && put(o, "pbc", json_pack("[bbb]", 1, 1, 1))) ||
              (with_volume && put(o, "volume", json_real(nesf_lattice_volume(l)))))) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static json_t *pymatgen_json(const nesf_structure *s)
{
    json_t *sites = json_array();
    for (int i = 0; sites && i < s->n; i++) {
        const char *sym = nesf_element_get(s->z[i])->symbol;
        json_t *site = json_pack("{s:[{s:s,s:i}],s:o,s:o,s:s,s:{}}", "species", "element", sym,
                                 "occu", 1, "abc", vec3(s->frac + 3 * i), "xyz",
                                 vec3(s->cart + 3 * i), "label", sym, "properties");
        if (push(sites, site)) {
            json_decref(sites);
            return NULL;
        }
    }
    return json_pack("{s:s,s:s,s:i,s:o,s:o}", "@module", "pymatgen.core.structure", "@class",
                     "Structure", "charge", 0, "lattice", lattice_json(&s->lat, 1, 1), "sites",
                     sites);
}

json_t *nesf_sjson_to_json(const nesf_structure *s, nesf_sjson_style style, double symprec)
{
    for (int i = 0; i < s->n; i++)
        if (!nesf_element_get(s->z[i])) return NULL;
    if (style == NESF_SJSON_PYMATGEN) return pymatgen_json(s);
    json_t *o = json_object();
    if (!o) return NULL;
    int bad = s->id[0] && put(o, "id", json_string(s->id));
    bad = bad || put(o, "lattice", lattice_json(&s->lat, style == NESF_SJSON_FULL, 0));
    json_t *sp = bad ? NULL : json_array();
    for (int i = 0; sp && i < s->n && !bad; i++)
        bad = push(sp, json_string(nesf_element_get(s->z[i])->symbol));
    bad = bad || put(o, "species", sp);
    bad = bad || put(o, "cart_coords", coords(s->cart, s->n));
    bad = bad || put(o, "frac_coords", coords(s->frac, s->n));
    if (!bad && style == NESF_SJSON_FULL) {
        char f[256];
        nesf_structure_formula(s, f, sizeof f);
        bad = put(o, "formula", json_string(f));
        if (!bad && symprec > 0) {
            char sym[32];
            int num = nesf_structure_spacegroup(s, symprec, sym, sizeof sym);
            bad = put(o, "spacegroup",
                      num ? json_pack("{s:s,s:i,s:f}", "symbol", sym, "number", num, "symprec",
                                      symprec)
                          : json_null());
        }
    }
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

char *nesf_sjson_dumps(const json_t *v)
{
    return json_dumps(v, JSON_COMPACT | JSON_REAL_PRECISION(15));
}

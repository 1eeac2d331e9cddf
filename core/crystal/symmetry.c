/* symmetry.c - what is derived from a whole structure: the reduced formula
 * (pymatgen's rules) and the space group (spglib). */
#include "structure.h"
#include "elements.h"
#include "symmetry.h"

#include <math.h>
#include <pthread.h>
#include <spglib.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <ctype.h>

/* ---- reduced formula --------------------------------------------------- */

typedef struct {
    int z;
    long count;
} el_count;

/* pymatgen sorts by (X, symbol); elements without an electronegativity
 * (noble gases, Z > 103) get NaN there, which we order last. */
static int cmp_electroneg(const void *pa, const void *pb)
{
    const nesf_element *a = nesf_element_get(((const el_count *)pa)->z);
    const nesf_element *b = nesf_element_get(((const el_count *)pb)->z);
    double xa = a->electronegativity > 0 ? a->electronegativity : INFINITY;
    double xb = b->electronegativity > 0 ? b->electronegativity : INFINITY;
    if (xa != xb) return xa < xb ? -1 : 1;
    return strcmp(a->symbol, b->symbol);
}

static long gcd_l(long a, long b)
{
    while (b) {
        long t = a % b;
        a = b;
        b = t;
    }
    return a;
}

typedef struct {
    char *p;
    size_t left;
} sbuf;

static void sb_put(sbuf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void sb_put(sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(b->p, b->left, fmt, ap);
    va_end(ap);
    if (k < 0) return;
    size_t used = (size_t)k < b->left ? (size_t)k : (b->left ? b->left - 1 : 0);
    b->p += used;
    b->left -= used;
}

static void put_element(sbuf *b, int z, long amount)
{
    sb_put(b, "%s", nesf_element_get(z)->symbol);
    if (amount != 1) sb_put(b, "%ld", amount);
}

/* pymatgen.core.composition.reduce_formula for integer amounts, elements
 * sorted already.  A trailing pair of close electronegativities is a
 * polyanion, written "(XY)n" when it reduces further. */
static void reduce_formula(const el_count *e, int n, sbuf *b)
{
    long f = 0;
    for (int i = 0; i < n; i++) f = gcd_l(f, e[i].count);
    if (f <= 0) f = 1;
    int nplain = n;
    long poly_factor = 1;
    if (n >= 3) {
        const nesf_element *x1 = nesf_element_get(e[n - 2].z), *x2 = nesf_element_get(e[n - 1].z);
        if (x1->electronegativity > 0 && x2->electronegativity > 0 &&
            x2->electronegativity - x1->electronegativity < 1.65) {
            poly_factor = gcd_l(e[n - 2].count / f, e[n - 1].count / f);
            if (poly_factor != 1) nplain = n - 2;
        }
    }
    for (int i = 0; i < nplain; i++) put_element(b, e[i].z, e[i].count / f);
    if (nplain < n) {
        sb_put(b, "(");
        put_element(b, e[n - 2].z, e[n - 2].count / f / poly_factor);
        put_element(b, e[n - 1].z, e[n - 1].count / f / poly_factor);
        sb_put(b, ")%ld", poly_factor);
    }
}

void nesf_structure_formula(const nesf_structure *s, char *buf, int size)
{
    if (size <= 0) return;
    buf[0] = 0;
    long count[NESF_MAX_Z + 1] = {0};
    for (int i = 0; i < s->n; i++)
        if (s->z[i] >= 1 && s->z[i] <= NESF_MAX_Z) count[s->z[i]]++;
    el_count e[NESF_MAX_Z];
    int n = 0;
    for (int z = 1; z <= NESF_MAX_Z; z++)
        if (count[z]) e[n++] = (el_count){z, count[z]};
    if (!n) return;
    qsort(e, (size_t)n, sizeof *e, cmp_electroneg);
    char tmp[2048];
    sbuf b = {tmp, sizeof tmp};
    reduce_formula(e, n, &b);
    /* pymatgen's Composition.special_formulas: peroxides and diatomic gases */
    static const char *const special[][2] = {
        {"LiO", "Li2O2"}, {"NaO", "Na2O2"}, {"KO", "K2O2"}, {"HO", "H2O2"},
        {"CsO", "Cs2O2"}, {"RbO", "Rb2O2"}, {"O", "O2"}, {"N", "N2"},
        {"F", "F2"}, {"Cl", "Cl2"}, {"H", "H2"},
    };
    const char *out = tmp;
    for (size_t i = 0; i < sizeof special / sizeof special[0]; i++)
        if (!strcmp(tmp, special[i][0])) out = special[i][1];
    snprintf(buf, (size_t)size, "%s", out);
}

/* ---- spglib ------------------------------------------------------------ */

/* spglib keeps its error state in a global: one caller at a time. */
static pthread_mutex_t spg_lock = PTHREAD_MUTEX_INITIALIZER;

/* spglib dereferences NULL on degenerate cells (a decoded cell 0.009 Å
 * thick, for any symprec from 0.005 to 0.3 Å): no cell reaches it unless
 * its shortest lattice vector (nesf_lattice_shortest, basis independent)
 * is at least both of these: an absolute bound far below any crystal (an
 * atom is > 1.5 Å from its own image in every real one) and a multiple of
 * the tolerance, below which an atom is "equal" to its own image. */
#define SPG_MIN_TRANSLATION 0.5        /* Å */
#define SPG_TRANSLATION_PER_SYMPREC 2.0

/* NESF_OK when spglib may look at s with tolerance symprec; otherwise
 * NESF_ERR_INVALID saying why (err may be NULL). */
static int spg_cell_ok(const nesf_structure *s, double symprec, nesf_error *err)
{
    int rc = nesf_structure_validate(s, err);
    if (rc) return rc;
    if (s->n <= 0) return nesf_fail(err, NESF_ERR_INVALID, "structure has no sites");
    if (!(symprec > 0) || !isfinite(symprec))
        return nesf_fail(err, NESF_ERR_INVALID, "symprec must be positive (got %g)", symprec);
    double t = nesf_lattice_shortest(&s->lat);
    double need = fmax(SPG_MIN_TRANSLATION, SPG_TRANSLATION_PER_SYMPREC * symprec);
    if (!(t >= need))
        return nesf_fail(err, NESF_ERR_INVALID,
                         "cell is degenerate for a symmetry search at symprec %g Å: a lattice "
                         "vector only %.3g Å long (at least %g Å needed)", symprec, t, need);
    return NESF_OK;
}

/* spglib wants column vectors and plain arrays. */
static int spg_input(const nesf_structure *s, double lat[3][3], double (**pos)[3], int **types)
{
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) lat[i][j] = s->lat.m[j][i];
    size_t n = s->n > 0 ? (size_t)s->n : 1;
    *pos = malloc(n * sizeof **pos);
    *types = malloc(n * sizeof **types);
    if (!*pos || !*types) {
        free(*pos);
        free(*types);
        return NESF_ERR_NOMEM;
    }
    for (int i = 0; i < s->n; i++) {
        for (int k = 0; k < 3; k++) {
            double f = s->frac[3 * i + k];
            (*pos)[i][k] = f - floor(f);
        }
        (*types)[i] = s->z[i];
    }
    return NESF_OK;
}

int nesf_structure_spacegroup(const nesf_structure *s, double symprec, char *symbol, int size)
{
    if (size > 0) symbol[0] = 0;
    if (spg_cell_ok(s, symprec, NULL) != NESF_OK) return 0;
    double lat[3][3], (*pos)[3];
    int *types;
    if (spg_input(s, lat, &pos, &types)) return 0;
    char sym[11] = "";
    pthread_mutex_lock(&spg_lock);
    int num = spg_get_international(sym, lat, pos, types, s->n, symprec);
    pthread_mutex_unlock(&spg_lock);
    free(pos);
    free(types);
    if (num <= 0) return 0;
    if (size > 0) snprintf(symbol, (size_t)size, "%s", sym);
    return num;
}

void nesf_symmetry_free(nesf_symmetry *sym)
{
    if (!sym) return;
    free(sym->rot);
    free(sym->trans);
    free(sym->equivalent);
    free(sym);
}

int nesf_structure_symmetry(const nesf_structure *s, double symprec, nesf_symmetry **out,
                            nesf_error *err)
{
    *out = NULL;
    int rc = spg_cell_ok(s, symprec, err);
    if (rc) return rc;
    double lat[3][3], (*pos)[3];
    int *types;
    if (spg_input(s, lat, &pos, &types))
        return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    pthread_mutex_lock(&spg_lock);
    SpglibDataset *ds = spg_get_dataset(lat, pos, types, s->n, symprec);
    const char *why = ds ? NULL : spg_get_error_message(spg_get_error_code());
    pthread_mutex_unlock(&spg_lock);
    free(pos);
    free(types);
    if (!ds)
        return nesf_fail(err, NESF_ERR_INVALID, "spglib found no space group at symprec %g: %s",
                         symprec, why ? why : "unknown reason");
    nesf_symmetry *y = calloc(1, sizeof *y);
    if (y) {
        y->number = ds->spacegroup_number;
        snprintf(y->symbol, sizeof y->symbol, "%s", ds->international_symbol);
        snprintf(y->hall, sizeof y->hall, "%s", ds->hall_symbol);
        y->n_ops = ds->n_operations;
        y->n_atoms = s->n;
        y->rot = malloc((size_t)y->n_ops * sizeof *y->rot);
        y->trans = malloc((size_t)y->n_ops * sizeof *y->trans);
        y->equivalent = malloc((size_t)s->n * sizeof *y->equivalent);
    }
    if (!y || !y->rot || !y->trans || !y->equivalent) {
        spg_free_dataset(ds);
        nesf_symmetry_free(y);
        return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    }
    memcpy(y->rot, ds->rotations, (size_t)y->n_ops * sizeof *y->rot);
    memcpy(y->trans, ds->translations, (size_t)y->n_ops * sizeof *y->trans);
    memcpy(y->equivalent, ds->equivalent_atoms, (size_t)s->n * sizeof *y->equivalent);
    spg_free_dataset(ds);
    *out = y;
    return NESF_OK;
}

/* ---- space groups by name (spglib's 530 Hall settings) ------------------ */

#define N_HALL 530

static SpglibSpacegroupType types[N_HALL + 1];
static pthread_once_t types_once = PTHREAD_ONCE_INIT;

static void load_types(void)
{
    for (int h = 1; h <= N_HALL; h++) types[h] = spg_get_spacegroup_type(h);
}

/* lower case without blanks and '_': "P 2_1/c" and "P21/C" agree */
static void norm_symbol(const char *s, char *out, size_t n)
{
    size_t k = 0;
    for (; s && *s && k + 1 < n; s++)
        if (*s != ' ' && *s != '_' && *s != '\t') out[k++] = (char)tolower((unsigned char)*s);
    out[k] = 0;
}

/* Does normalised symbol s name setting t?  2: its full symbol, 1: another
 * spelling (short symbol, a part of "P 2_1/c = P 1 2_1/c 1"), 0: no. */
static int symbol_match(const SpglibSpacegroupType *t, const char *s)
{
    char buf[64];
    norm_symbol(t->international_full, buf, sizeof buf);
    if (!strcmp(buf, s)) return 2;
    norm_symbol(t->international_short, buf, sizeof buf);
    if (!strcmp(buf, s)) return 1;
    char intl[sizeof t->international + 1];
    snprintf(intl, sizeof intl, "%s", t->international);
    for (char *part = strtok(intl, "="); part; part = strtok(NULL, "=")) {
        norm_symbol(part, buf, sizeof buf);
        if (!strcmp(buf, s)) return 1;
    }
    return 0;
}

static int rhombohedral_axes(const nesf_cellpar *c)
{
    double a = c->a;
    return fabs(c->b - a) < 1e-3 * a && fabs(c->c - a) < 1e-3 * a &&
           fabs(c->alpha - c->beta) < 1e-3 && fabs(c->alpha - c->gamma) < 1e-3 &&
           fabs(c->alpha - 90) > 1e-3;
}

int nesf_spacegroup_ops(const char *hm, const char *hall, int number, const nesf_cellpar *cell,
                        int rot[192][3][3], double trans[192][3], int *n_ops, nesf_error *err)
{
    *n_ops = 0;
    char s[64] = "", choice[8] = "";
    norm_symbol(hm, s, sizeof s);
    char *colon = strchr(s, ':');
    if (colon) {
        snprintf(choice, sizeof choice, "%s", colon + 1);
        *colon = 0;
    } else if (s[0] && s[1]) {
        /* "R -3 m H" and ICSD's origin suffixes "S" (choice 1) and "Z" (2):
         * no Hermann-Mauguin symbol ends in these letters */
        char *last = s + strlen(s) - 1;
        const char *c = *last == 'h' ? "h" : *last == 'r' ? "r" : *last == 's' ? "1"
                      : *last == 'z' ? "2" : NULL;
        if (c) {
            snprintf(choice, sizeof choice, "%s", c);
            *last = 0;
        }
    }
    char hs[64] = "";
    norm_symbol(hall, hs, sizeof hs);
    if (!s[0] && !hs[0] && number <= 0)
        return nesf_fail(err, NESF_ERR_INVALID, "no space group symbol or number");
    if (number > 230)
        return nesf_fail(err, NESF_ERR_INVALID, "space group number %d outside 1..230", number);
    int cand[N_HALL], ncand = 0, best = 0;
    pthread_once(&types_once, load_types);
    for (int h = 1; h <= N_HALL; h++) {
        const SpglibSpacegroupType *t = &types[h];
        int m;
        if (hs[0]) {
            char buf[64];
            norm_symbol(t->hall_symbol, buf, sizeof buf);
            m = strcmp(buf, hs) ? 0 : 2;
        } else if (s[0]) {
            m = symbol_match(t, s);
        } else {
            m = t->number == number;
        }
        if (!m || (number > 0 && t->number != number)) continue;
        if (choice[0] && strcasecmp(t->choice, choice)) continue;
        if (m > best) ncand = 0, best = m; /* an exact full-symbol match beats the rest */
        if (m == best) cand[ncand++] = h;
    }
    const char *what = hs[0] ? hall : s[0] ? hm : "";
    if (!ncand) {
        if (number > 0 && !s[0] && !hs[0])
            return nesf_fail(err, NESF_ERR_INVALID, "space group number %d unknown", number);
        return nesf_fail(err, NESF_ERR_INVALID, "space group '%s'%s%s%s unknown to spglib%s", what,
                         choice[0] ? " (setting " : "", choice, choice[0] ? ")" : "",
                         number > 0 ? " or not of the given number" : "");
    }
    int pick = cand[0];
    if (ncand > 1) {
        const char *c0 = types[cand[0]].choice;
        if (!strcasecmp(c0, "H") || !strcasecmp(c0, "R")) {
            const char *want = rhombohedral_axes(cell) ? "R" : "H";
            for (int i = 0; i < ncand; i++)
                if (!strcasecmp(types[cand[i]].choice, want)) pick = cand[i];
        } else if (!strcmp(c0, "1") || !strcmp(c0, "2")) {
            return nesf_fail(err, NESF_ERR_INVALID,
                             "space group '%s' (No. %d) has two origin choices: list the symmetry "
                             "operations or write '%s :1' or '%s :2'",
                             what[0] ? what : types[pick].international_short, types[pick].number,
                             types[pick].international, types[pick].international);
        }
        /* otherwise settings that share a short symbol: the short symbol means
         * the standard one, spglib's first */
    }
    pthread_mutex_lock(&spg_lock);
    int n = spg_get_symmetry_from_database(rot, trans, pick);
    pthread_mutex_unlock(&spg_lock);
    if (n <= 0)
        return nesf_fail(err, NESF_ERR_INVALID, "spglib has no operations for Hall setting %d", pick);
    *n_ops = n;
    return NESF_OK;
}

/* ---- standardized (refined) cells ---------------------------------------- */

/* spglib's output into a new structure in the datasets' orientation. */
static int standardized_structure(double lat[3][3], double (*pos)[3], const int *zs, int n,
                                  nesf_structure **out, nesf_error *err)
{
    nesf_structure *t = nesf_structure_new(n);
    if (!t) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) t->lat.m[i][j] = lat[j][i];
    int rc = NESF_OK;
    for (int i = 0; i < n && !rc; i++) rc = nesf_structure_add_site(t, zs[i], pos[i], err);
    if (!rc) rc = nesf_structure_canonicalize(t, err);
    if (!rc) {
        nesf_structure_wrap(t);
        rc = nesf_structure_validate(t, err);
    }
    if (rc) {
        nesf_structure_free(t);
        return rc;
    }
    *out = t;
    return NESF_OK;
}

/* One pass of spglib's standardization; info receives the group of s. */
static int standardize_once(const nesf_structure *s, double symprec, int primitive,
                            nesf_structure **out, nesf_symmetry_info *info, nesf_error *err)
{
    int rc;
    double lat[3][3], (*in)[3];
    int *tin;
    if (spg_input(s, lat, &in, &tin)) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    /* a conventional cell holds up to 4 times the atoms of a primitive input */
    size_t cap = 4 * (size_t)s->n;
    double(*pos)[3] = malloc(cap * sizeof *pos);
    int *zs = malloc(cap * sizeof *zs);
    if (!pos || !zs) {
        free(in), free(tin), free(pos), free(zs);
        return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    }
    memcpy(pos, in, (size_t)s->n * sizeof *pos);
    memcpy(zs, tin, (size_t)s->n * sizeof *zs);
    char sym[11] = "";
    pthread_mutex_lock(&spg_lock);
    int number = spg_get_international(sym, lat, in, tin, s->n, symprec);
    int n = number > 0 ? spg_standardize_cell(lat, pos, zs, s->n, primitive, 0, symprec) : 0;
    const char *why = n > 0 ? NULL : spg_get_error_message(spg_get_error_code());
    pthread_mutex_unlock(&spg_lock);
    free(in);
    free(tin);
    if (n <= 0 || (size_t)n > cap)
        rc = nesf_fail(err, NESF_ERR_INVALID, "spglib cannot standardize the cell at symprec %g: %s",
                       symprec, why ? why : "unknown reason");
    else
        rc = standardized_structure(lat, pos, zs, n, out, err);
    free(pos);
    free(zs);
    if (!rc) {
        info->number = number;
        snprintf(info->symbol, sizeof info->symbol, "%s", sym);
    }
    return rc;
}

/* Standardized-cell translations tried for each of its sites: wrapping by
 * s's own lattice covers the rest unless s is a supercell of more than
 * 2 standardized cells along an axis. */
#define SHIFT_IMAGES 125 /* -2..2 along each axis */

/* The largest distance (Å) from a site of s to the nearest site of its
 * species in ds's idealized standardized cell, brought back into s's
 * frame (spglib: Cartesian c = R^T S (x_s - p) for std_rotation_matrix R,
 * std_lattice S in columns and origin_shift p) and wrapped by s's lattice.
 * How far refining s to ds's group moves an atom, lattice idealization
 * included. */
static double ideal_shift(const nesf_structure *s, const SpglibDataset *ds)
{
    double inv[3][3], m[3][3] = {{0}}, img[SHIFT_IMAGES][3], worst = 0;
    if (nesf_lattice_inverse(&s->lat, inv, NULL)) return INFINITY;
    /* m: standardized fractional coordinates -> s's, inv^T R^T S */
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++)
            for (int c = 0; c < 3; c++)
                for (int d = 0; d < 3; d++)
                    m[a][b] += inv[d][a] * ds->std_rotation_matrix[c][d] * ds->std_lattice[c][b];
    for (int t = 0; t < SHIFT_IMAGES; t++) {
        const double u[3] = {t % 5 - 2, t / 5 % 5 - 2, t / 25 - 2};
        for (int a = 0; a < 3; a++) img[t][a] = m[a][0] * u[0] + m[a][1] * u[1] + m[a][2] * u[2];
    }
    for (int i = 0; i < s->n; i++) {
        double best = INFINITY;
        for (int j = 0; j < ds->n_std_atoms; j++) {
            if (ds->std_types[j] != s->z[i]) continue;
            double x[3], f0[3];
            for (int k = 0; k < 3; k++) x[k] = ds->std_positions[j][k] - ds->origin_shift[k];
            for (int a = 0; a < 3; a++)
                f0[a] = m[a][0] * x[0] + m[a][1] * x[1] + m[a][2] * x[2] - s->frac[3 * i + a];
            for (int t = 0; t < SHIFT_IMAGES; t++) {
                double f[3], c[3];
                for (int k = 0; k < 3; k++) f[k] = f0[k] + img[t][k], f[k] -= round(f[k]);
                nesf_lattice_frac_to_cart(&s->lat, f, c);
                best = fmin(best, sqrt(c[0] * c[0] + c[1] * c[1] + c[2] * c[2]));
            }
        }
        worst = fmax(worst, best);
    }
    return worst;
}

/* How far refining s to the group spglib finds at tolerance tol moves an
 * atom (ideal_shift); *ops receives that group's operations in s's cell
 * (0 and INFINITY when spglib finds none or may not look). */
static double refine_shift(const nesf_structure *s, double tol, int *ops)
{
    double lat[3][3], (*pos)[3], d = INFINITY;
    int *zs;
    *ops = 0;
    if (spg_cell_ok(s, tol, NULL) != NESF_OK || spg_input(s, lat, &pos, &zs)) return INFINITY;
    pthread_mutex_lock(&spg_lock);
    SpglibDataset *ds = spg_get_dataset(lat, pos, zs, s->n, tol);
    pthread_mutex_unlock(&spg_lock);
    if (ds) {
        d = ideal_shift(s, ds);
        *ops = ds->n_operations;
        spg_free_dataset(ds);
    }
    free(pos);
    free(zs);
    return d;
}

/* spglib's tolerance bounds the distance between an atom and its image
 * under an operation, so atoms each 0.06 Å off their symmetric sites (a
 * decoded ZnS) need 0.12 Å for the group they are within 0.06 Å of.  The
 * tolerance symprec promises instead that no atom moves farther than
 * symprec: spglib is asked at up to SPG_LADDER_MAX x symprec, and the
 * tolerance of the most symmetric answer within that distance is used. */
#define SPG_LADDER_STEPS 5   /* 1, 1.25, 1.5, 1.75, 2 x symprec */
#define SPG_LADDER_MAX 2.0

/* The spglib tolerance for refining s at symprec (see above); *shift
 * receives how far its answer moves an atom (NAN: no answer within
 * symprec, the tolerance is symprec itself). */
static double ladder_tolerance(const nesf_structure *s, double symprec, double *shift)
{
    double best_tol = symprec;
    int best_ops = 0;
    *shift = NAN;
    for (int k = 0; k < SPG_LADDER_STEPS; k++) {
        double tol = symprec * (1 + (SPG_LADDER_MAX - 1) * k / (SPG_LADDER_STEPS - 1));
        int ops;
        double d = refine_shift(s, tol, &ops);
        if (d <= symprec && ops > best_ops) {
            best_ops = ops;
            best_tol = tol;
            *shift = d;
        }
    }
    return best_tol;
}

/* Idealizing can bring atoms within the tolerance of a higher group, so
 * the result is refined again, up to this many passes in all, while the
 * atoms' summed moves stay within symprec. */
#define STANDARDIZE_PASSES 4

int nesf_structure_standardize(const nesf_structure *s, double symprec, int primitive,
                               nesf_structure **out, nesf_symmetry_info *info, nesf_error *err)
{
    *out = NULL;
    int rc = nesf_structure_validate(s, err);
    if (rc) return rc;
    if (s->n <= 0) return nesf_fail(err, NESF_ERR_INVALID, "structure has no sites");
    if (!(symprec > 0) || !isfinite(symprec))
        return nesf_fail(err, NESF_ERR_INVALID, "symprec must be positive (got %g)", symprec);
    nesf_symmetry_info got = {0};
    double moved;
    const double tol = ladder_tolerance(s, symprec, &moved);
    nesf_structure *cur = NULL;
    for (int pass = 0; pass < STANDARDIZE_PASSES; pass++) {
        if (cur) { /* a higher group within tol of cur: only within symprec of s */
            int ops;
            double more = refine_shift(cur, tol, &ops);
            if (!(moved + more <= symprec)) break;
            moved += more;
        }
        nesf_structure *next = NULL;
        nesf_symmetry_info refined;
        if ((rc = standardize_once(cur ? cur : s, tol, primitive, &next, &refined, err))) break;
        nesf_structure_free(cur);
        cur = next;
        got = refined; /* the group cur is exactly symmetric in */
        if (nesf_structure_spacegroup(cur, tol, NULL, 0) == refined.number) break;
    }
    if (rc) {
        nesf_structure_free(cur);
        return rc;
    }
    got.tolerance = tol;
    got.max_shift = moved;
    if (info) *info = got; /* the group of what is returned */
    *out = cur;
    return NESF_OK;
}

/* ---- reduced cells for structure comparison ------------------------------ */

int nesf_structure_niggli(const nesf_structure *s, nesf_structure **out, nesf_error *err)
{
    *out = NULL;
    double lat[3][3];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) lat[i][j] = s->lat.m[j][i];
    pthread_mutex_lock(&spg_lock);
    spg_niggli_reduce(lat, 1e-5); /* leaves lat as it was when it fails */
    pthread_mutex_unlock(&spg_lock);
    nesf_structure *t = nesf_structure_new(s->n);
    if (!t) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) t->lat.m[i][j] = lat[j][i];
    int rc = NESF_OK;
    for (int i = 0; !rc && i < s->n; i++) rc = nesf_structure_add_site_cart(t, s->z[i], s->cart + 3 * i, err);
    if (!rc) nesf_structure_wrap(t);
    if (rc) {
        nesf_structure_free(t);
        return rc;
    }
    *out = t;
    return NESF_OK;
}

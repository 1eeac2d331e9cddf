/* cif.c - CIF reader (tokenizer -> blocks of tables -> structures) and
 * writers (P1 and spglib-symmetrized). */
#include "cif.h"
#include "elements.h"
#include "symmetry.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ======================================================================
 * Tokenizer
 * ====================================================================== */

typedef enum { T_EOF, T_DATA, T_LOOP, T_GLOBAL, T_SAVE, T_STOP, T_TAG, T_VALUE } tok_kind;

typedef struct {
    const char *p;  /* into the input text; not NUL-terminated */
    int len;
    int line;
    int kind;       /* tok_kind */
    int quoted;     /* quoted or text field: '?' and '.' are then literal */
} tok;

typedef struct {
    const char *s, *end, *p;
    int line;
    const char *file;
    nesf_error *err;
} lexer;

static int lex_fail(lexer *L, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int lex_fail(lexer *L, int line, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return nesf_fail(L->err, NESF_ERR_PARSE, "%s:%d: %s", L->file, line, msg);
}

static int is_ws(int c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* CIF 1.1 allows printable ASCII and tab/newlines; bytes >= 0x80 are let
 * through (UTF-8 text is common in free-text fields). */
static int is_bad_byte(unsigned char c) { return (c < 0x20 && !is_ws(c)) || c == 0x7f; }

static int at_line_start(const lexer *L, const char *q) { return q == L->s || q[-1] == '\n' || q[-1] == '\r'; }

static int prefix_ci(const char *p, int len, const char *kw)
{
    int k = (int)strlen(kw);
    if (len < k) return 0;
    for (int i = 0; i < k; i++)
        if (tolower((unsigned char)p[i]) != kw[i]) return 0;
    return 1;
}

/* Next token into *t; NESF_OK or an error. */
static int lex_next(lexer *L, tok *t)
{
    for (;;) {
        while (L->p < L->end && is_ws((unsigned char)*L->p)) {
            if (*L->p == '\n') L->line++;
            L->p++;
        }
        if (L->p < L->end && *L->p == '#') {
            while (L->p < L->end && *L->p != '\n') L->p++;
            continue;
        }
        break;
    }
    memset(t, 0, sizeof *t);
    t->line = L->line;
    if (L->p >= L->end) {
        t->kind = T_EOF;
        return NESF_OK;
    }
    const char *q = L->p;
    unsigned char c = (unsigned char)*q;
    if (is_bad_byte(c))
        return lex_fail(L, L->line, "unexpected control byte 0x%02x (binary data?)", c);
    if (c == ';' && at_line_start(L, q)) {
        /* text field: up to the next line that starts with ';' */
        const char *b = q + 1;
        int start = L->line;
        for (const char *r = b; r < L->end; r++) {
            if (*r == '\n') {
                L->line++;
                if (r + 1 < L->end && r[1] == ';') {
                    t->p = b;
                    t->len = (int)(r - b);
                    if (t->len > 0 && r[-1] == '\r') t->len--;
                    t->kind = T_VALUE;
                    t->quoted = 1;
                    L->p = r + 2;
                    return NESF_OK;
                }
            } else if (is_bad_byte((unsigned char)*r)) {
                return lex_fail(L, L->line, "unexpected control byte 0x%02x in text field",
                                (unsigned char)*r);
            }
        }
        return lex_fail(L, start, "unterminated text field (a line starting with ';' expected)");
    }
    if (c == '\'' || c == '"') {
        /* quoted: closes at the same quote followed by blank or end */
        for (const char *r = q + 1; r < L->end; r++) {
            if (*r == '\n' || *r == '\r') break;
            if (is_bad_byte((unsigned char)*r))
                return lex_fail(L, L->line, "unexpected control byte 0x%02x in quoted string",
                                (unsigned char)*r);
            if (*r == (char)c && (r + 1 == L->end || is_ws((unsigned char)r[1]))) {
                t->p = q + 1;
                t->len = (int)(r - q - 1);
                t->kind = T_VALUE;
                t->quoted = 1;
                L->p = r + 1;
                return NESF_OK;
            }
        }
        return lex_fail(L, L->line, "unterminated quoted string (closing %c expected)", c);
    }
    const char *r = q;
    while (r < L->end && !is_ws((unsigned char)*r)) {
        if (is_bad_byte((unsigned char)*r))
            return lex_fail(L, L->line, "unexpected control byte 0x%02x", (unsigned char)*r);
        r++;
    }
    if (r - q > INT32_MAX / 2) return lex_fail(L, L->line, "token too long");
    t->p = q;
    t->len = (int)(r - q);
    L->p = r;
    if (c == '_') t->kind = T_TAG;
    else if (prefix_ci(q, t->len, "data_")) t->kind = T_DATA;
    else if (t->len == 5 && prefix_ci(q, t->len, "loop_")) t->kind = T_LOOP;
    else if (t->len == 7 && prefix_ci(q, t->len, "global_")) t->kind = T_GLOBAL;
    else if (prefix_ci(q, t->len, "save_")) t->kind = T_SAVE;
    else if (t->len == 5 && prefix_ci(q, t->len, "stop_")) t->kind = T_STOP;
    else t->kind = T_VALUE;
    return NESF_OK;
}

/* ======================================================================
 * Blocks: each a list of tables (a loop, or one tag with one value)
 * ====================================================================== */

typedef struct {
    int tag0, ntags;   /* into cif_doc.tags */
    int val0, nrows;   /* into cif_doc.vals, nrows * ntags values */
    int line;
} table;

typedef struct {
    tok name;
    int tab0, ntab;    /* into cif_doc.tabs */
} block;

typedef struct {
    tok *tags; int ntags, ctags;
    tok *vals; int nvals, cvals;
    table *tabs; int ntabs, ctabs;
    block *blocks; int nblocks, cblocks;
} cif_doc;

static int grow_arr(void **arr, int *cap, int need, size_t elem)
{
    if (need <= *cap) return 0;
    int n = *cap ? *cap : 64;
    while (n < need) {
        if (n > INT32_MAX / 2) return -1;
        n *= 2;
    }
    void *p = realloc(*arr, (size_t)n * elem);
    if (!p) return -1;
    *arr = p;
    *cap = n;
    return 0;
}

#define PUSH(arr, cnt, cap, item)                                                      \
    (grow_arr((void **)&(arr), &(cap), (cnt) + 1, sizeof *(arr)) ? -1 : ((arr)[(cnt)++] = (item), 0))

static void doc_free(cif_doc *d)
{
    free(d->tags);
    free(d->vals);
    free(d->tabs);
    free(d->blocks);
}

static int oom(lexer *L) { return nesf_fail(L->err, NESF_ERR_NOMEM, "%s: out of memory", L->file); }

static int parse_doc(lexer *L, cif_doc *d)
{
    tok t;
    int rc = lex_next(L, &t);
    while (!rc && t.kind != T_EOF) {
        switch (t.kind) {
        case T_DATA:
        case T_GLOBAL: {
            block b = {t, d->ntabs, 0};
            if (t.kind == T_DATA) {
                b.name.p += 5;
                b.name.len -= 5;
            }
            if (PUSH(d->blocks, d->nblocks, d->cblocks, b)) return oom(L);
            rc = lex_next(L, &t);
            break;
        }
        case T_SAVE: /* save frames hold dictionary definitions: their items count as the block's */
        case T_STOP:
            rc = lex_next(L, &t);
            break;
        case T_TAG:
        case T_LOOP: {
            if (!d->nblocks)
                return lex_fail(L, t.line, "data item before the first data_ block header");
            table tb = {d->ntags, 0, d->nvals, 0, t.line};
            if (t.kind == T_TAG) {
                tok v;
                if ((rc = lex_next(L, &v))) return rc;
                if (v.kind != T_VALUE)
                    return lex_fail(L, t.line, "tag '%.*s' has no value", t.len > 80 ? 80 : t.len, t.p);
                if (PUSH(d->tags, d->ntags, d->ctags, t) || PUSH(d->vals, d->nvals, d->cvals, v))
                    return oom(L);
                tb.ntags = tb.nrows = 1;
                rc = lex_next(L, &t);
            } else {
                if ((rc = lex_next(L, &t))) return rc;
                while (t.kind == T_TAG) {
                    if (PUSH(d->tags, d->ntags, d->ctags, t)) return oom(L);
                    tb.ntags++;
                    if ((rc = lex_next(L, &t))) return rc;
                }
                if (!tb.ntags) return lex_fail(L, tb.line, "loop_ without tags");
                int nv = 0;
                while (t.kind == T_VALUE) {
                    if (PUSH(d->vals, d->nvals, d->cvals, t)) return oom(L);
                    nv++;
                    if ((rc = lex_next(L, &t))) return rc;
                }
                if (!nv) return lex_fail(L, tb.line, "loop_ has tags but no values");
                if (nv % tb.ntags)
                    return lex_fail(L, tb.line,
                                    "loop_ has %d values for %d tags (truncated loop? a multiple "
                                    "of %d expected)", nv, tb.ntags, tb.ntags);
                tb.nrows = nv / tb.ntags;
            }
            if (PUSH(d->tabs, d->ntabs, d->ctabs, tb)) return oom(L);
            d->blocks[d->nblocks - 1].ntab++;
            break;
        }
        default: /* T_VALUE */
            return lex_fail(L, t.line, "value '%.*s' without a tag (a _tag or loop_ expected)",
                            t.len > 40 ? 40 : t.len, t.p);
        }
    }
    return rc;
}

/* ======================================================================
 * Lookups and values
 * ====================================================================== */

/* DDL1 "_cell_length_a" and DDL2 "_cell.length_a" name the same item. */
static int tag_eq(const tok *t, const char *name)
{
    int n = (int)strlen(name);
    if (t->len != n) return 0;
    for (int i = 0; i < n; i++) {
        int a = tolower((unsigned char)t->p[i]), b = name[i];
        if (a == '.') a = '_';
        if (a != b) return 0;
    }
    return 1;
}

typedef struct {
    const table *tab;
    int col;
    int line;   /* of the tag */
} column;

typedef struct {
    lexer *L;
    const cif_doc *d;
    const block *b;
} ctx;

/* Finds tag in the block: 1 found, 0 absent, <0 error (given twice). */
static int find(ctx *c, const char *name, column *out)
{
    int found = 0;
    for (int i = 0; i < c->b->ntab; i++) {
        const table *tb = &c->d->tabs[c->b->tab0 + i];
        for (int j = 0; j < tb->ntags; j++) {
            const tok *t = &c->d->tags[tb->tag0 + j];
            if (!tag_eq(t, name)) continue;
            if (found) {
                lex_fail(c->L, t->line, "%s given twice (first at line %d)", name, out->line);
                return -1;
            }
            *out = (column){tb, j, t->line};
            found = 1;
        }
    }
    return found;
}

/* First of several alternative spellings present. */
static int find_any(ctx *c, const char *const *names, column *out, const char **which)
{
    for (int i = 0; names[i]; i++) {
        int r = find(c, names[i], out);
        if (r) {
            if (which) *which = names[i];
            return r;
        }
    }
    return 0;
}

static const tok *cell(const ctx *c, const column *col, int row)
{
    return &c->d->vals[col->tab->val0 + row * col->tab->ntags + col->col];
}

static int is_missing(const tok *v) { return !v->quoted && v->len == 1 && (v->p[0] == '?' || v->p[0] == '.'); }

/* A CIF number: [+-] digits [. digits] [e[+-]digits] [(su)].  No inf/nan. */
static int parse_number(const tok *v, double *out)
{
    const char *p = v->p, *e = v->p + v->len;
    char buf[72];
    int n = 0, digits = 0;
    if (p < e && (*p == '+' || *p == '-')) buf[n++] = *p++;
    while (p < e && isdigit((unsigned char)*p) && n < 64) buf[n++] = *p++, digits++;
    if (p < e && *p == '.') {
        buf[n++] = *p++;
        while (p < e && isdigit((unsigned char)*p) && n < 64) buf[n++] = *p++, digits++;
    }
    if (!digits) return -1;
    if (p < e && (*p == 'e' || *p == 'E')) {
        buf[n++] = *p++;
        if (p < e && (*p == '+' || *p == '-')) buf[n++] = *p++;
        int ed = 0;
        while (p < e && isdigit((unsigned char)*p) && n < 70) buf[n++] = *p++, ed++;
        if (!ed) return -1;
    }
    if (p < e && *p == '(') {
        p++;
        int sd = 0;
        while (p < e && isdigit((unsigned char)*p)) p++, sd++;
        if (!sd || p >= e || *p != ')') return -1;
        p++;
    }
    if (p != e) return -1;
    buf[n] = 0;
    *out = strtod(buf, NULL);
    return isfinite(*out) ? 0 : -1;
}

static int value_number(ctx *c, const char *name, const tok *v, double *out)
{
    if (parse_number(v, out))
        return lex_fail(c->L, v->line, "%s: '%.*s' is not a finite number", name,
                        v->len > 40 ? 40 : v->len, v->p);
    return NESF_OK;
}

/* A required scalar number. */
static int scalar_number(ctx *c, const char *name, double *out)
{
    column col;
    int r = find(c, name, &col);
    if (r < 0) return NESF_ERR_PARSE;
    if (!r)
        return lex_fail(c->L, c->b->name.line, "data_%.*s: %s missing (the cell is required)",
                        c->b->name.len > 60 ? 60 : c->b->name.len, c->b->name.p, name);
    const tok *v = cell(c, &col, 0);
    if (col.tab->nrows != 1)
        return lex_fail(c->L, col.line, "%s: one value expected, found a loop", name);
    if (is_missing(v)) return lex_fail(c->L, v->line, "%s: a number expected, got '%c'", name, v->p[0]);
    return value_number(c, name, v, out);
}

/* Element from a type symbol or label, pymatgen's way: the first two
 * characters title-cased when they name an element, else the first. */
static int element_of(const tok *v)
{
    char s[3] = {0, 0, 0};
    if (v->len < 1 || !isalpha((unsigned char)v->p[0])) return 0;
    s[0] = (char)toupper((unsigned char)v->p[0]);
    if (v->len >= 2 && isalpha((unsigned char)v->p[1])) {
        s[1] = (char)tolower((unsigned char)v->p[1]);
        int z = nesf_element_z(s);
        if (z) return z;
        s[1] = 0;
    }
    return nesf_element_z(s);
}

/* ======================================================================
 * Symmetry operations "x-y+1/2, -y, z"
 * ====================================================================== */

typedef struct {
    double r[3][3];
    double t[3];
} symop;

static int is_var(int ch) { ch = tolower(ch); return ch == 'x' || ch == 'y' || ch == 'z'; }

/* One component: a sum of terms  [+-] ( number[/number] [*] [var] | var [/number] ). */
static int parse_component(const char *p, const char *e, double row[3], double *t)
{
    row[0] = row[1] = row[2] = *t = 0;
    int nterms = 0;
    while (p < e) {
        while (p < e && *p == ' ') p++;
        if (p >= e) break;
        double sign = 1;
        if (*p == '+' || *p == '-') {
            sign = *p == '-' ? -1 : 1;
            p++;
            while (p < e && *p == ' ') p++;
        } else if (nterms) {
            return -1;
        }
        double num = 1;
        int have_num = 0, var = -1;
        if (p < e && (isdigit((unsigned char)*p) || *p == '.')) {
            char buf[32];
            int n = 0;
            while (p < e && (isdigit((unsigned char)*p) || *p == '.') && n < 30) buf[n++] = *p++;
            buf[n] = 0;
            char *end;
            num = strtod(buf, &end);
            if (*end || !isfinite(num)) return -1;
            have_num = 1;
            if (p < e && *p == '/') {
                p++;
                n = 0;
                while (p < e && isdigit((unsigned char)*p) && n < 30) buf[n++] = *p++;
                buf[n] = 0;
                if (!n) return -1;
                double den = strtod(buf, NULL);
                if (!(den > 0)) return -1;
                num /= den;
            }
            while (p < e && *p == ' ') p++;
            if (p < e && *p == '*') {
                p++;
                while (p < e && *p == ' ') p++;
                if (!(p < e && is_var((unsigned char)*p))) return -1;
            }
        }
        if (p < e && is_var((unsigned char)*p)) {
            var = tolower((unsigned char)*p) - 'x';
            p++;
            if (!have_num && p < e && *p == '/') { /* "x/2" */
                p++;
                char buf[32];
                int n = 0;
                while (p < e && isdigit((unsigned char)*p) && n < 30) buf[n++] = *p++;
                buf[n] = 0;
                if (!n) return -1;
                double den = strtod(buf, NULL);
                if (!(den > 0)) return -1;
                num /= den;
            }
        } else if (!have_num) {
            return -1;
        }
        if (var >= 0) row[var] += sign * num;
        else *t += sign * num;
        nterms++;
    }
    return nterms ? 0 : -1;
}

static double det3(const double m[3][3])
{
    return m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) -
           m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0]) +
           m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
}

static int parse_symop(const tok *v, symop *op)
{
    const char *p = v->p, *e = v->p + v->len;
    for (int i = 0; i < 3; i++) {
        const char *q = p;
        while (q < e && *q != ',') q++;
        if ((i < 2) != (q < e)) return -1; /* exactly two commas */
        if (parse_component(p, q, op->r[i], &op->t[i])) return -1;
        p = q + 1;
    }
    /* a crystallographic operation: integer matrix with determinant +-1 */
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++)
            if (op->r[i][j] != floor(op->r[i][j]) || fabs(op->r[i][j]) > 4) return -1;
    double d = det3(op->r);
    return fabs(fabs(d) - 1) < 1e-9 ? 0 : -1;
}

/* A scalar text value (NUL-terminated copy, at most n-1 bytes) or "". */
static int scalar_text(ctx *c, const char *const *names, char *buf, size_t n, int *line)
{
    column col;
    buf[0] = 0;
    int r = find_any(c, names, &col, NULL);
    if (r <= 0) return r;
    const tok *v = cell(c, &col, 0);
    *line = col.line;
    if (!is_missing(v)) snprintf(buf, n, "%.*s", v->len, v->p);
    return 1;
}

static int is_p1(const char *s)
{
    char t[8];
    size_t k = 0;
    for (; *s && k < sizeof t - 1; s++)
        if (*s != ' ' && *s != '_') t[k++] = (char)tolower((unsigned char)*s);
    t[k] = 0;
    return !*s && (!strcmp(t, "p1") || !strcmp(t, "p1(1)"));
}

/* No operation loop: the identity for P1, else the group spglib's
 * database has under the block's symbol, Hall symbol or number. */
static int symops_by_name(ctx *c, const nesf_cellpar *cell_par, symop **ops_out, int *nops)
{
    static const char *const hm_tags[] = {"_symmetry_space_group_name_h-m",
                                          "_space_group_name_h-m_alt", NULL};
    static const char *const hall_tags[] = {"_symmetry_space_group_name_hall",
                                            "_space_group_name_hall", NULL};
    static const char *const it_tags[] = {"_symmetry_int_tables_number", "_space_group_it_number",
                                          NULL};
    char hm[64], hall[64], num[32];
    int line = c->b->name.line, lh = line, lhall = line, ln = line;
    if (scalar_text(c, hm_tags, hm, sizeof hm, &lh) < 0 ||
        scalar_text(c, hall_tags, hall, sizeof hall, &lhall) < 0 ||
        scalar_text(c, it_tags, num, sizeof num, &ln) < 0)
        return NESF_ERR_PARSE;
    int number = 0;
    if (num[0]) {
        char *end;
        long v = strtol(num, &end, 10);
        if (*end || v < 1 || v > 230)
            return lex_fail(c->L, ln, "space group number '%s': 1..230 expected", num);
        number = (int)v;
    }
    symop *ops = calloc(NESF_CIF_MAX_OPS, sizeof *ops);
    if (!ops) return oom(c->L);
    if ((!hm[0] || is_p1(hm)) && (!hall[0] || is_p1(hall)) && number <= 1) {
        ops[0].r[0][0] = ops[0].r[1][1] = ops[0].r[2][2] = 1;
        *ops_out = ops;
        *nops = 1;
        return NESF_OK;
    }
    int (*rot)[3][3] = malloc(192 * sizeof *rot);
    double (*tr)[3] = malloc(192 * sizeof *tr);
    int n = 0, rc = NESF_OK;
    nesf_error e2 = {0};
    if (!rot || !tr) rc = oom(c->L);
    else if (nesf_spacegroup_ops(hm, hall, number, cell_par, rot, tr, &n, &e2))
        rc = lex_fail(c->L, hall[0] ? lhall : hm[0] ? lh : ln,
                      "no symmetry operations listed (_symmetry_equiv_pos_as_xyz) and %s", e2.msg);
    for (int o = 0; !rc && o < n && o < NESF_CIF_MAX_OPS; o++)
        for (int i = 0; i < 3; i++) {
            for (int j = 0; j < 3; j++) ops[o].r[i][j] = rot[o][i][j];
            ops[o].t[i] = tr[o][i];
        }
    free(rot);
    free(tr);
    if (rc) {
        free(ops);
        return rc;
    }
    *ops_out = ops;
    *nops = n;
    return NESF_OK;
}

static int read_symops(ctx *c, const nesf_cellpar *cell_par, symop **ops_out, int *nops)
{
    static const char *const op_tags[] = {"_symmetry_equiv_pos_as_xyz",
                                          "_space_group_symop_operation_xyz", NULL};
    *ops_out = NULL;
    *nops = 0;
    column col;
    const char *which = NULL;
    int r = find_any(c, op_tags, &col, &which);
    if (r < 0) return NESF_ERR_PARSE;
    if (!r) return symops_by_name(c, cell_par, ops_out, nops);
    int n = col.tab->nrows;
    if (n > NESF_CIF_MAX_OPS)
        return lex_fail(c->L, col.line, "%d symmetry operations (at most %d expected)", n,
                        NESF_CIF_MAX_OPS);
    symop *ops = calloc((size_t)n, sizeof *ops);
    if (!ops) return oom(c->L);
    for (int i = 0; i < n; i++) {
        const tok *v = cell(c, &col, i);
        if (is_missing(v) || parse_symop(v, &ops[i])) {
            free(ops);
            return lex_fail(c->L, v->line,
                            "%s: '%.*s' is not a symmetry operation like 'x, -y+1/2, z'", which,
                            v->len > 40 ? 40 : v->len, v->p);
        }
    }
    *ops_out = ops;
    *nops = n;
    return NESF_OK;
}

/* ======================================================================
 * Merging symmetry copies: a periodic grid over fractional space
 * ====================================================================== */

typedef struct {
    int g[3];
    int *head, *next;     /* bin -> first site, site -> next in bin (-1 ends) */
    int *src;             /* site -> asymmetric-unit row it came from */
    double tolf[3];       /* bound on |dfrac_k| for sites within tol */
} grid;

static int bin_of(const grid *G, const double f[3])
{
    int b[3];
    for (int k = 0; k < 3; k++) {
        b[k] = (int)(f[k] * G->g[k]);
        if (b[k] >= G->g[k]) b[k] = G->g[k] - 1;
        if (b[k] < 0) b[k] = 0;
    }
    return (b[0] * G->g[1] + b[1]) * G->g[2] + b[2];
}

/* Periodic distance (Å) between fractional points a and b. */
static double pdist(const nesf_lattice *l, const double a[3], const double b[3], const double tolf[3])
{
    double best = INFINITY, d0[3];
    int lo[3], hi[3];
    for (int k = 0; k < 3; k++) {
        d0[k] = a[k] - b[k];
        d0[k] -= nearbyint(d0[k]);
        /* a tolerance comparable to the cell: look at the neighbouring images too */
        lo[k] = tolf[k] < 0.5 ? 0 : -1;
        hi[k] = -lo[k];
    }
    for (int i = lo[0]; i <= hi[0]; i++)
        for (int j = lo[1]; j <= hi[1]; j++)
            for (int k = lo[2]; k <= hi[2]; k++) {
                double d[3] = {d0[0] + i, d0[1] + j, d0[2] + k}, x[3];
                nesf_lattice_frac_to_cart(l, d, x);
                double r = sqrt(x[0] * x[0] + x[1] * x[1] + x[2] * x[2]);
                if (r < best) best = r;
            }
    return best;
}

/* Index of a site of s within tol of f, or -1. */
static int grid_find(const grid *G, const nesf_structure *s, const double f[3], double tol)
{
    int b[3], lo[3], hi[3];
    for (int k = 0; k < 3; k++) {
        b[k] = (int)(f[k] * G->g[k]);
        if (b[k] >= G->g[k]) b[k] = G->g[k] - 1;
        if (b[k] < 0) b[k] = 0;
        if (G->g[k] >= 3) {
            lo[k] = b[k] - 1;
            hi[k] = b[k] + 1;
        } else {
            lo[k] = 0;
            hi[k] = G->g[k] - 1;
        }
    }
    for (int i = lo[0]; i <= hi[0]; i++)
        for (int j = lo[1]; j <= hi[1]; j++)
            for (int k = lo[2]; k <= hi[2]; k++) {
                int ii = (i + G->g[0]) % G->g[0], jj = (j + G->g[1]) % G->g[1];
                int kk = (k + G->g[2]) % G->g[2];
                for (int a = G->head[(ii * G->g[1] + jj) * G->g[2] + kk]; a >= 0; a = G->next[a])
                    if (pdist(&s->lat, f, s->frac + 3 * a, G->tolf) < tol) return a;
            }
    return -1;
}

static int grid_init(grid *G, const nesf_lattice *l, int maxsites, double tol)
{
    double inv[3][3];
    memset(G, 0, sizeof *G);
    if (nesf_lattice_inverse(l, inv, NULL)) return -1;
    int cap = (int)cbrt((double)maxsites) + 1;
    int nb = 1;
    for (int k = 0; k < 3; k++) {
        double cn = sqrt(inv[0][k] * inv[0][k] + inv[1][k] * inv[1][k] + inv[2][k] * inv[2][k]);
        G->tolf[k] = tol * cn;
        double g = G->tolf[k] > 0 ? floor(1.0 / G->tolf[k]) : 64;
        if (g > 64) g = 64;
        if (g > cap) g = cap;
        G->g[k] = g < 1 ? 1 : (int)g;
        nb *= G->g[k];
    }
    G->head = malloc((size_t)nb * sizeof *G->head);
    G->next = malloc((size_t)maxsites * sizeof *G->next);
    G->src = malloc((size_t)maxsites * sizeof *G->src);
    if (!G->head || !G->next || !G->src) return -1;
    for (int i = 0; i < nb; i++) G->head[i] = -1;
    return 0;
}

static void grid_free(grid *G)
{
    free(G->head);
    free(G->next);
    free(G->src);
}

/* ======================================================================
 * Block -> structure
 * ====================================================================== */

typedef struct {
    int z;
    double x[3];
    const tok *label;  /* for messages: label or type symbol */
} asym_site;

static const char *const fract_tags[3] = {"_atom_site_fract_x", "_atom_site_fract_y",
                                          "_atom_site_fract_z"};
static const char *const cartn_tags[3] = {"_atom_site_cartn_x", "_atom_site_cartn_y",
                                          "_atom_site_cartn_z"};

/* Does the block describe a structure at all? */
static int block_has_structure(ctx *c)
{
    column col;
    return find(c, "_cell_length_a", &col) != 0 || find(c, "_atom_site_fract_x", &col) != 0 ||
           find(c, "_atom_site_cartn_x", &col) != 0;
}

/* Column of the atom-site loop: same table as the coordinates, or a
 * scalar when the loop has a single row. */
static int site_column(ctx *c, const char *name, const column *ref, column *out)
{
    int r = find(c, name, out);
    if (r <= 0) return r;
    if (out->tab != ref->tab && !(out->tab->nrows == 1 && ref->tab->nrows == 1)) {
        lex_fail(c->L, out->line, "%s is not in the loop of the atom-site coordinates (line %d)",
                 name, ref->line);
        return -1;
    }
    return 1;
}

static int read_sites(ctx *c, const nesf_lattice *lat, asym_site **out, int *nout)
{
    *out = NULL;
    *nout = 0;
    column xyz[3], label, type, occ;
    int cart = 0;
    int r = find(c, fract_tags[0], &xyz[0]);
    if (r < 0) return NESF_ERR_PARSE;
    if (!r) {
        r = find(c, cartn_tags[0], &xyz[0]);
        if (r < 0) return NESF_ERR_PARSE;
        cart = 1;
    }
    if (!r)
        return lex_fail(c->L, c->b->name.line,
                        "data_%.*s: no atom sites (_atom_site_fract_x or _atom_site_Cartn_x loop "
                        "expected)", c->b->name.len > 60 ? 60 : c->b->name.len, c->b->name.p);
    const char *const *names = cart ? cartn_tags : fract_tags;
    for (int k = 1; k < 3; k++) {
        r = site_column(c, names[k], &xyz[0], &xyz[k]);
        if (r < 0) return NESF_ERR_PARSE;
        if (!r) return lex_fail(c->L, xyz[0].line, "%s missing next to %s", names[k], names[0]);
    }
    int hl = site_column(c, "_atom_site_label", &xyz[0], &label);
    int ht = site_column(c, "_atom_site_type_symbol", &xyz[0], &type);
    int ho = site_column(c, "_atom_site_occupancy", &xyz[0], &occ);
    if (hl < 0 || ht < 0 || ho < 0) return NESF_ERR_PARSE;
    if (!hl && !ht)
        return lex_fail(c->L, xyz[0].line,
                        "atom sites have neither _atom_site_type_symbol nor _atom_site_label");
    int n = xyz[0].tab->nrows;
    double inv[3][3];
    if (cart && nesf_lattice_inverse(lat, inv, NULL))
        return lex_fail(c->L, xyz[0].line, "singular cell");
    asym_site *s = calloc((size_t)n, sizeof *s);
    if (!s) return oom(c->L);
    int rc = NESF_OK;
    for (int i = 0; i < n && !rc; i++) {
        const tok *lt = hl ? cell(c, &label, i) : NULL, *tt = ht ? cell(c, &type, i) : NULL;
        const tok *name = lt && !is_missing(lt) ? lt : tt ? tt : lt;
        const tok *from = tt && !is_missing(tt) ? tt : lt;
        int line = cell(c, &xyz[0], i)->line;
        s[i].label = name;
        s[i].z = from && !is_missing(from) ? element_of(from) : 0;
        if (!s[i].z) {
            rc = from && !is_missing(from)
                     ? nesf_fail(c->L->err, NESF_ERR_NOTFOUND, "%s:%d: atom site '%.*s': unknown element '%.*s'",
                                 c->L->file, line, name->len > 30 ? 30 : name->len, name->p,
                                 from->len > 30 ? 30 : from->len, from->p)
                     : lex_fail(c->L, line, "atom site %d has no element (type symbol or label)", i + 1);
            break;
        }
        if (ho) {
            const tok *o = cell(c, &occ, i);
            double v;
            if (!is_missing(o)) {
                if ((rc = value_number(c, "_atom_site_occupancy", o, &v))) break;
                if (fabs(v - 1.0) > NESF_CIF_OCC_TOL) {
                    rc = nesf_fail(c->L->err, NESF_ERR_UNSUPPORTED,
                                   "%s:%d: atom site '%.*s' is partially occupied (occupancy %.*s): "
                                   "disordered structures are not supported",
                                   c->L->file, o->line, name->len > 30 ? 30 : name->len, name->p,
                                   o->len > 20 ? 20 : o->len, o->p);
                    break;
                }
            }
        }
        double x[3];
        for (int k = 0; k < 3 && !rc; k++) {
            const tok *v = cell(c, &xyz[k], i);
            if (is_missing(v))
                rc = lex_fail(c->L, v->line, "atom site '%.*s': %s is '%c', a number expected",
                              name->len > 30 ? 30 : name->len, name->p, names[k], v->p[0]);
            else
                rc = value_number(c, names[k], v, &x[k]);
        }
        if (rc) break;
        if (cart)
            for (int k = 0; k < 3; k++)
                s[i].x[k] = x[0] * inv[0][k] + x[1] * inv[1][k] + x[2] * inv[2][k];
        else
            memcpy(s[i].x, x, sizeof x);
        for (int k = 0; k < 3; k++)
            if (!(fabs(s[i].x[k]) <= NESF_MAX_FRAC)) {
                rc = lex_fail(c->L, line, "atom site '%.*s': coordinate out of range",
                              name->len > 30 ? 30 : name->len, name->p);
                break;
            }
    }
    if (rc) {
        free(s);
        return rc;
    }
    *out = s;
    *nout = n;
    return NESF_OK;
}

static double wrap01(double f)
{
    f -= floor(f);
    return f >= 1.0 ? 0.0 : f;
}

static int expand(ctx *c, const asym_site *as, int nas, const symop *ops, int nops,
                  nesf_structure *s)
{
    if ((long)nas * nops > NESF_CIF_MAX_SITES)
        return lex_fail(c->L, c->b->name.line, "%d sites x %d symmetry operations exceed %d sites",
                        nas, nops, NESF_CIF_MAX_SITES);
    int maxsites = nas * nops > 0 ? nas * nops : 1;
    grid G;
    if (grid_init(&G, &s->lat, maxsites, NESF_CIF_MERGE_TOL) || nesf_structure_reserve(s, maxsites)) {
        grid_free(&G);
        return oom(c->L);
    }
    int rc = NESF_OK;
    for (int i = 0; i < nas && !rc; i++) {
        for (int o = 0; o < nops; o++) {
            double f[3];
            for (int k = 0; k < 3; k++)
                f[k] = wrap01(ops[o].r[k][0] * as[i].x[0] + ops[o].r[k][1] * as[i].x[1] +
                              ops[o].r[k][2] * as[i].x[2] + ops[o].t[k]);
            int a = grid_find(&G, s, f, NESF_CIF_MERGE_TOL);
            if (a >= 0) {
                if (s->z[a] == as[i].z) continue;
                const tok *l1 = as[G.src[a]].label, *l2 = as[i].label;
                rc = nesf_fail(c->L->err, NESF_ERR_UNSUPPORTED,
                               "%s:%d: atom sites '%.*s' (%s) and '%.*s' (%s) occupy the same "
                               "position (within %g Å): disorder is not supported",
                               c->L->file, l2->line, l1->len > 30 ? 30 : l1->len, l1->p,
                               nesf_element_get(s->z[a])->symbol, l2->len > 30 ? 30 : l2->len, l2->p,
                               nesf_element_get(as[i].z)->symbol, NESF_CIF_MERGE_TOL);
                break;
            }
            int id = s->n;
            nesf_structure_add_site(s, as[i].z, f, NULL); /* reserved above: cannot fail */
            int b = bin_of(&G, f);
            G.next[id] = G.head[b];
            G.head[b] = id;
            G.src[id] = i;
        }
    }
    grid_free(&G);
    return rc;
}

static int block_structure(ctx *c, nesf_structure **out)
{
    *out = NULL;
    static const char *const par[6] = {"_cell_length_a", "_cell_length_b", "_cell_length_c",
                                       "_cell_angle_alpha", "_cell_angle_beta", "_cell_angle_gamma"};
    double v[6];
    for (int i = 0; i < 6; i++) {
        int rc = scalar_number(c, par[i], &v[i]);
        if (rc) return rc;
    }
    for (int i = 0; i < 3; i++)
        if (!(v[i] > 0 && v[i] <= NESF_MAX_CELL_LENGTH))
            return lex_fail(c->L, c->b->name.line, "%s = %g: a length in (0, %g] Å expected",
                            par[i], v[i], NESF_MAX_CELL_LENGTH);
    for (int i = 3; i < 6; i++)
        if (!(v[i] > 0 && v[i] < 180))
            return lex_fail(c->L, c->b->name.line, "%s = %g: an angle in (0, 180) degrees expected",
                            par[i], v[i]);
    nesf_cellpar p = {v[0], v[1], v[2], v[3], v[4], v[5]};
    nesf_structure *s = nesf_structure_new(0);
    if (!s) return oom(c->L);
    snprintf(s->id, sizeof s->id, "%.*s", c->b->name.len, c->b->name.p);
    nesf_error e2 = {0};
    int rc = nesf_lattice_from_params(&p, &s->lat, &e2);
    if (!rc && nesf_lattice_volume(&s->lat) < 1e-6) rc = nesf_fail(&e2, NESF_ERR_INVALID, "zero volume");
    if (rc) {
        nesf_structure_free(s);
        return lex_fail(c->L, c->b->name.line, "data_%.*s: cell %g %g %g %g %g %g: %s",
                        c->b->name.len > 60 ? 60 : c->b->name.len, c->b->name.p, v[0], v[1], v[2],
                        v[3], v[4], v[5], e2.msg);
    }
    asym_site *as = NULL;
    symop *ops = NULL;
    int nas = 0, nops = 0;
    rc = read_sites(c, &s->lat, &as, &nas);
    if (!rc) rc = read_symops(c, &p, &ops, &nops);
    if (!rc) rc = expand(c, as, nas, ops, nops, s);
    free(as);
    free(ops);
    if (!rc && nesf_structure_validate(s, &e2))
        rc = lex_fail(c->L, c->b->name.line, "%s", e2.msg);
    if (rc) {
        nesf_structure_free(s);
        return rc;
    }
    *out = s;
    return NESF_OK;
}

int nesf_cif_read(const char *text, size_t len, const char *filename, nesf_structure ***out,
                  int *n, nesf_error *err)
{
    *out = NULL;
    *n = 0;
    if (!filename) filename = "(cif)";
    lexer L = {text, text + len, text, 1, filename, err};
    if (len > (size_t)INT32_MAX)
        return nesf_fail(err, NESF_ERR_INVALID, "%s: input too large for a CIF", filename);
    cif_doc d = {0};
    int rc = parse_doc(&L, &d);
    nesf_structure **list = NULL;
    int count = 0;
    if (!rc && !d.nblocks)
        rc = nesf_fail(err, NESF_ERR_PARSE, "%s:%d: no data_ block (is this a CIF?)", filename,
                       L.line);
    if (!rc && !(list = calloc((size_t)d.nblocks, sizeof *list))) rc = oom(&L);
    for (int b = 0; !rc && b < d.nblocks; b++) {
        ctx c = {&L, &d, &d.blocks[b]};
        if (!block_has_structure(&c)) continue;
        rc = block_structure(&c, &list[count]);
        if (!rc) count++;
    }
    if (!rc && !count)
        rc = nesf_fail(err, NESF_ERR_FORMAT,
                       "%s: no data block holds a structure (_cell_length_a and _atom_site_ loop "
                       "expected)", filename);
    doc_free(&d);
    if (rc) {
        nesf_structure_list_free(list, count);
        return rc;
    }
    *out = list;
    *n = count;
    return NESF_OK;
}

/* ======================================================================
 * Writers
 * ====================================================================== */

typedef struct {
    char *p;
    size_t len, cap;
    int failed;
} outbuf;

static void put(outbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(outbuf *b, const char *fmt, ...)
{
    if (b->failed) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (k < 0) {
            b->failed = 1;
            return;
        }
        if (b->p && b->len + (size_t)k < b->cap) {
            b->len += (size_t)k;
            return;
        }
        size_t nc = b->cap ? b->cap : 4096;
        while (nc <= b->len + (size_t)k) nc *= 2;
        char *np = realloc(b->p, nc);
        if (!np) {
            b->failed = 1;
            return;
        }
        b->p = np;
        b->cap = nc;
    }
}

static char *finish(outbuf *b)
{
    if (b->failed) {
        free(b->p);
        return NULL;
    }
    return b->p;
}

/* CIF values must not contain blanks unquoted. */
static void block_name(const nesf_structure *s, char *buf, size_t n)
{
    if (s->id[0]) snprintf(buf, n, "%s", s->id);
    else nesf_structure_formula(s, buf, (int)n);
    if (!buf[0]) snprintf(buf, n, "structure");
    for (char *q = buf; *q; q++)
        if (!isgraph((unsigned char)*q)) *q = '_';
}

static double clean(double x) { return fabs(x) < 5e-9 ? 0.0 : x; }

/* Cell, formula and the header lines common to both writers. */
static void write_header(outbuf *b, const nesf_structure *s, const char *hm, int number)
{
    char name[128], formula[256];
    block_name(s, name, sizeof name);
    nesf_structure_formula(s, formula, sizeof formula);
    nesf_cellpar p;
    nesf_lattice_params(&s->lat, &p);
    put(b, "# generated by nesf %s\ndata_%s\n", NESF_VERSION, name);
    put(b, "_symmetry_space_group_name_H-M   '%s'\n", hm);
    put(b, "_cell_length_a   %.8f\n_cell_length_b   %.8f\n_cell_length_c   %.8f\n", p.a, p.b, p.c);
    put(b, "_cell_angle_alpha   %.8f\n_cell_angle_beta   %.8f\n_cell_angle_gamma   %.8f\n", p.alpha,
        p.beta, p.gamma);
    put(b, "_symmetry_Int_Tables_number   %d\n", number);
    put(b, "_chemical_formula_structural   %s\n", formula);
    /* sum in electronegativity order, like pymatgen's Composition.formula */
    int count[NESF_MAX_Z + 1] = {0}, order[NESF_MAX_Z], no = 0;
    for (int i = 0; i < s->n; i++) count[s->z[i]]++;
    for (int z = 1; z <= NESF_MAX_Z; z++)
        if (count[z]) order[no++] = z;
    for (int i = 1; i < no; i++) /* insertion sort by (X, symbol); X 0 = undefined goes last */
        for (int j = i; j > 0; j--) {
            const nesf_element *a = nesf_element_get(order[j - 1]), *e = nesf_element_get(order[j]);
            double xa = a->electronegativity > 0 ? a->electronegativity : 1e9;
            double xe = e->electronegativity > 0 ? e->electronegativity : 1e9;
            if (xa < xe || (xa == xe && strcmp(a->symbol, e->symbol) <= 0)) break;
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    put(b, "_chemical_formula_sum   '");
    int g = 0;
    for (int i = 0; i < no; i++) {
        put(b, "%s%s%d", i ? " " : "", nesf_element_get(order[i])->symbol, count[order[i]]);
        int a = count[order[i]], c = g;
        while (c) { int t = a % c; a = c; c = t; }
        g = a;
    }
    put(b, "'\n_cell_volume   %.8f\n_cell_formula_units_Z   %d\n", nesf_lattice_volume(&s->lat),
        g ? g : 1);
}

static void write_sites_header(outbuf *b)
{
    put(b, "loop_\n _atom_site_type_symbol\n _atom_site_label\n _atom_site_symmetry_multiplicity\n"
           " _atom_site_fract_x\n _atom_site_fract_y\n _atom_site_fract_z\n _atom_site_occupancy\n");
}

static void write_site(outbuf *b, int z, int *label_count, int mult, const double f[3])
{
    const char *sym = nesf_element_get(z)->symbol;
    put(b, "  %s  %s%d  %d  %.8f  %.8f  %.8f  1\n", sym, sym, ++label_count[z], mult, clean(f[0]),
        clean(f[1]), clean(f[2]));
}

char *nesf_cif_write(const nesf_structure *s)
{
    for (int i = 0; i < s->n; i++)
        if (!nesf_element_get(s->z[i])) return NULL;
    outbuf b = {0};
    write_header(&b, s, "P 1", 1);
    put(&b, "loop_\n _symmetry_equiv_pos_site_id\n _symmetry_equiv_pos_as_xyz\n  1  'x, y, z'\n");
    write_sites_header(&b);
    int label_count[NESF_MAX_Z + 1] = {0};
    for (int i = 0; i < s->n; i++) write_site(&b, s->z[i], label_count, 1, s->frac + 3 * i);
    return finish(&b);
}

/* "x-y+1/2": a translation as a small fraction where it is one */
static void put_component(outbuf *b, const int r[3], double t)
{
    static const char var[3] = {'x', 'y', 'z'};
    int first = 1;
    for (int j = 0; j < 3; j++) {
        if (!r[j]) continue;
        const char *sign = r[j] < 0 ? "-" : first ? "" : "+";
        if (abs(r[j]) == 1) put(b, "%s%c", sign, var[j]);
        else put(b, "%s%d%c", sign, abs(r[j]), var[j]);
        first = 0;
    }
    t = wrap01(t);
    if (t > 1 - 1e-8) t = 0;
    if (t < 1e-8) {
        if (first) put(b, "0");
        return;
    }
    for (int d = 2; d <= 24; d++) {
        double k = t * d;
        if (fabs(k - nearbyint(k)) < 1e-6) {
            put(b, "+%d/%d", (int)nearbyint(k), d);
            return;
        }
    }
    put(b, "+%.10f", t);
}

int nesf_cif_write_symmetrized(const nesf_structure *s, double symprec, char **out,
                               nesf_error *err)
{
    *out = NULL;
    nesf_symmetry *y;
    int rc = nesf_structure_symmetry(s, symprec, &y, err);
    if (rc) return rc;
    int *mult = calloc((size_t)s->n, sizeof *mult);
    if (!mult) {
        nesf_symmetry_free(y);
        return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < s->n; i++) mult[y->equivalent[i]]++;
    outbuf b = {0};
    /* the cell is s's own, not a standard setting: the operations below are
     * what readers apply; the symbol is informative */
    write_header(&b, s, y->symbol, y->number);
    put(&b, "loop_\n _symmetry_equiv_pos_site_id\n _symmetry_equiv_pos_as_xyz\n");
    for (int o = 0; o < y->n_ops; o++) {
        put(&b, "  %d  '", o + 1);
        for (int k = 0; k < 3; k++) {
            if (k) put(&b, ", ");
            put_component(&b, y->rot[o][k], y->trans[o][k]);
        }
        put(&b, "'\n");
    }
    write_sites_header(&b);
    int label_count[NESF_MAX_Z + 1] = {0};
    for (int i = 0; i < s->n; i++) {
        if (y->equivalent[i] != i) continue;
        /* symmetrize: average the images of the site under its stabilizer */
        const double *p = s->frac + 3 * i;
        double acc[3] = {0, 0, 0};
        int nstab = 0;
        for (int o = 0; o < y->n_ops; o++) {
            double d[3], c[3];
            for (int k = 0; k < 3; k++) {
                double q = y->rot[o][k][0] * p[0] + y->rot[o][k][1] * p[1] + y->rot[o][k][2] * p[2] +
                           y->trans[o][k];
                d[k] = q - p[k] - nearbyint(q - p[k]);
            }
            nesf_lattice_frac_to_cart(&s->lat, d, c);
            if (sqrt(c[0] * c[0] + c[1] * c[1] + c[2] * c[2]) > 2 * symprec) continue;
            for (int k = 0; k < 3; k++) acc[k] += d[k];
            nstab++;
        }
        double f[3];
        for (int k = 0; k < 3; k++) f[k] = wrap01(p[k] + (nstab ? acc[k] / nstab : 0));
        write_site(&b, s->z[i], label_count, mult[i], f);
    }
    free(mult);
    nesf_symmetry_free(y);
    *out = finish(&b);
    return *out ? NESF_OK : nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
}

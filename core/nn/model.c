#include "model_internal.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "elements.h"
#include "jconf.h"
#include "safetensors.h"

/* Rows per chunk of field evaluation when the backend states no
 * preference (be->chunk_rows): large enough for efficient GEMMs, small
 * enough that a chunk's activations stay in the last-level cache. */
#define FIELD_CHUNK 4096

/* ---- configuration ---- */

static void set_widths(int *dst, int *n, const int *src, int count)
{
    memcpy(dst, src, (size_t)count * sizeof *dst);
    *n = count;
}

void nesf_model_config_paper(nesf_model_config *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "nesf-paper");
    c->latent = 192;
    set_widths(c->enc_pos_hidden, &c->n_enc_pos_hidden, (int[]){64, 128}, 2);
    c->enc_pos_out = 128;
    set_widths(c->enc_species_hidden, &c->n_enc_species_hidden, (int[]){128}, 1);
    c->enc_species_out = 128;
    c->enc_mix_out = 512;
    set_widths(c->enc_head_hidden, &c->n_enc_head_hidden, (int[]){256, 256}, 2);
    set_widths(c->lattice_hidden, &c->n_lattice_hidden, (int[]){128}, 1);
    set_widths(c->pos_hidden, &c->n_pos_hidden, (int[]){256, 128, 128, 128, 128, 128, 128, 128}, 8);
    set_widths(c->spec_hidden, &c->n_spec_hidden, (int[]){256, 128}, 2);
    c->xyz_fourier = 0;
    c->xyz_fourier_period = 8.0f;
    c->dropout = 0.3f;
    c->bn_momentum = 0.1f;
    c->bn_eps = 1e-5f;
}

/* A width list: at most NESF_MAX_LAYERS - 1 hidden widths in 1..65536,
 * which the fixed arrays of nesf_model_config hold. */
static int read_widths(int *dst, int *n, const char *path, const json_t *v, nesf_error *err)
{
    if (!json_is_array(v) || json_array_size(v) > NESF_MAX_LAYERS - 1)
        return nesf_fail(err, NESF_ERR_INVALID, "%s: expected an array of at most %d widths", path,
                         NESF_MAX_LAYERS - 1);
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e) {
        if (!json_is_integer(e) || json_integer_value(e) < 1 || json_integer_value(e) > 65536)
            return nesf_fail(err, NESF_ERR_INVALID, "%s[%zu]: expected a width in 1..65536", path, i);
        dst[i] = (int)json_integer_value(e);
    }
    *n = (int)json_array_size(v);
    return NESF_OK;
}

/* One custom row reader per width list: the list and its count are two
 * members of nesf_model_config. */
#define WIDTHS(field)                                                                              \
    static int read_##field(void *dst, const char *path, const json_t *v, void *ctx, nesf_error *err) \
    {                                                                                              \
        (void)ctx;                                                                                 \
        nesf_model_config *c = dst;                                                                \
        return read_widths(c->field, &c->n_##field, path, v, err);                                 \
    }
WIDTHS(enc_pos_hidden)
WIDTHS(enc_species_hidden)
WIDTHS(enc_head_hidden)
WIDTHS(lattice_hidden)
WIDTHS(pos_hidden)
WIDTHS(spec_hidden)
#undef WIDTHS

#define C nesf_model_config
static const nesf_jfield model_rows[] = {
    NESF_JF_STRING(C, "name", name),
    NESF_JF_INT(C, "latent", latent, 1, 65536),
    NESF_JF_CUSTOM("enc_pos_hidden", read_enc_pos_hidden),
    NESF_JF_INT(C, "enc_pos_out", enc_pos_out, 1, 65536),
    NESF_JF_CUSTOM("enc_species_hidden", read_enc_species_hidden),
    NESF_JF_INT(C, "enc_species_out", enc_species_out, 1, 65536),
    NESF_JF_INT(C, "enc_mix_out", enc_mix_out, 1, 65536),
    NESF_JF_CUSTOM("enc_head_hidden", read_enc_head_hidden),
    NESF_JF_CUSTOM("lattice_hidden", read_lattice_hidden),
    NESF_JF_CUSTOM("pos_hidden", read_pos_hidden),
    NESF_JF_CUSTOM("spec_hidden", read_spec_hidden),
    NESF_JF_INT(C, "xyz_fourier", xyz_fourier, 0, NESF_MLP_FOURIER_MAX),
    NESF_JF_FLOAT(C, "xyz_fourier_period", xyz_fourier_period, 0.5, 1000),
    NESF_JF_FLOAT(C, "dropout", dropout, 0, 0.99),
    NESF_JF_FLOAT(C, "bn_momentum", bn_momentum, 0, 1),
    NESF_JF_FLOAT(C, "bn_eps", bn_eps, 0, 1),
    NESF_JF_END,
};
/* A config file: the "training" section is the training reader's (train.c). */
static const nesf_jfield file_rows[] = {
    NESF_JF_OBJECT("model", model_rows),
    NESF_JF_CUSTOM("training", nesf_jconf_skip),
    NESF_JF_END,
};
#undef C

/* Fills cfg from a JSON object (the "model" part); keeps values for absent keys. */
static int config_from_json(json_t *o, nesf_model_config *c, nesf_error *err)
{
    return nesf_jconf_read(model_rows, c, o, "model", NULL, err);
}

/* A file with a "model" or "training" section, or a bare model config. */
int nesf_model_config_load(const char *path, nesf_model_config *cfg, nesf_error *err)
{
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) return nesf_fail(err, NESF_ERR_PARSE, "%s:%d: %s", path, je.line, je.text);
    nesf_model_config_paper(cfg);
    int sections = json_object_get(root, "model") || json_object_get(root, "training");
    int rc = sections ? nesf_jconf_read(file_rows, cfg, root, "", NULL, err)
                      : config_from_json(root, cfg, err);
    if (rc) nesf_error_prefix(err, "%s: ", path);
    json_decref(root);
    return rc;
}

static json_t *widths_json(const int *w, int n)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(a, json_integer(w[i]));
    return a;
}

char *nesf_model_config_to_json(const nesf_model_config *c)
{
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(c->name));
    json_object_set_new(o, "latent", json_integer(c->latent));
    json_object_set_new(o, "enc_pos_hidden", widths_json(c->enc_pos_hidden, c->n_enc_pos_hidden));
    json_object_set_new(o, "enc_pos_out", json_integer(c->enc_pos_out));
    json_object_set_new(o, "enc_species_hidden", widths_json(c->enc_species_hidden, c->n_enc_species_hidden));
    json_object_set_new(o, "enc_species_out", json_integer(c->enc_species_out));
    json_object_set_new(o, "enc_mix_out", json_integer(c->enc_mix_out));
    json_object_set_new(o, "enc_head_hidden", widths_json(c->enc_head_hidden, c->n_enc_head_hidden));
    json_object_set_new(o, "lattice_hidden", widths_json(c->lattice_hidden, c->n_lattice_hidden));
    json_object_set_new(o, "pos_hidden", widths_json(c->pos_hidden, c->n_pos_hidden));
    json_object_set_new(o, "spec_hidden", widths_json(c->spec_hidden, c->n_spec_hidden));
    if (c->xyz_fourier) { /* absent = the paper's raw xyz: older readers load such files */
        json_object_set_new(o, "xyz_fourier", json_integer(c->xyz_fourier));
        json_object_set_new(o, "xyz_fourier_period", json_real(c->xyz_fourier_period));
    }
    json_object_set_new(o, "dropout", json_real(c->dropout));
    json_object_set_new(o, "bn_momentum", json_real(c->bn_momentum));
    json_object_set_new(o, "bn_eps", json_real(c->bn_eps));
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

/* ---- layout ---- */

static const char *const mlp_names[NESF_NUM_MLPS] = {
    "encoder.pos", "encoder.species", "encoder.mix", "encoder.head",
    "decoder.length", "decoder.angle", "decoder.position", "decoder.species"};

/* widths = [in, hidden..., out] */
static int widths_of(const int *hidden, int nh, int in, int out, int *w)
{
    w[0] = in;
    if (nh) memcpy(w + 1, hidden, (size_t)nh * sizeof *w);
    w[nh + 1] = out;
    return nh + 1;
}

static int add_tensor(nesf_model *m, const char *name, int ndim, int64_t d0, int64_t d1, size_t off,
                      int buffer)
{
    nesf_tensor_info *t = realloc(m->tensors, (size_t)(m->ntensors + 1) * sizeof *t);
    if (!t) return NESF_ERR_NOMEM;
    m->tensors = t;
    t += m->ntensors++;
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->off = off;
    t->buffer = buffer;
    return NESF_OK;
}

static int build_layout(nesf_model *m, nesf_error *err)
{
    const nesf_model_config *c = &m->cfg;
    if (c->latent < 1 || m->A < 1 || m->A > NESF_MAX_SPECIES)
        return nesf_fail(err, NESF_ERR_FORMAT, "bad model size (latent %d, %d species)", c->latent, m->A);
    size_t np = 0, nb = 0;
    int w[NESF_MAX_LAYERS + 2], n;
    n = widths_of(c->enc_pos_hidden, c->n_enc_pos_hidden, 3, c->enc_pos_out, w);
    nesf_mlp_layout(&m->mlp[NESF_ENC_POS], mlp_names[NESF_ENC_POS], n, w, NULL, 1, 0, &np, &nb);
    n = widths_of(c->enc_species_hidden, c->n_enc_species_hidden, m->A, c->enc_species_out, w);
    nesf_mlp_layout(&m->mlp[NESF_ENC_SPECIES], mlp_names[NESF_ENC_SPECIES], n, w, NULL, 1, 0, &np, &nb);
    n = widths_of(NULL, 0, c->enc_pos_out + c->enc_species_out, c->enc_mix_out, w);
    nesf_mlp_layout(&m->mlp[NESF_ENC_MIX], mlp_names[NESF_ENC_MIX], n, w, NULL, 0, 0, &np, &nb);
    n = widths_of(c->enc_head_hidden, c->n_enc_head_hidden, c->enc_mix_out + 6, c->latent, w);
    nesf_mlp_layout(&m->mlp[NESF_ENC_HEAD], mlp_names[NESF_ENC_HEAD], n, w, NULL, 1, 1, &np, &nb);
    n = widths_of(c->lattice_hidden, c->n_lattice_hidden, c->latent, 3, w);
    nesf_mlp_layout(&m->mlp[NESF_DEC_LENGTH], mlp_names[NESF_DEC_LENGTH], n, w, NULL, 0, 0, &np, &nb);
    nesf_mlp_layout(&m->mlp[NESF_DEC_ANGLE], mlp_names[NESF_DEC_ANGLE], n, w, NULL, 0, 0, &np, &nb);
    /* every field layer but the last takes the query columns (spec §3) */
    nesf_xyz_cols q = {0, c->xyz_fourier, c->xyz_fourier_period};
    n = widths_of(c->pos_hidden, c->n_pos_hidden, c->latent, 3, w);
    q.layers = n - 1;
    nesf_mlp_layout(&m->mlp[NESF_DEC_POSITION], mlp_names[NESF_DEC_POSITION], n, w, &q, 1, 0, &np, &nb);
    n = widths_of(c->spec_hidden, c->n_spec_hidden, c->latent, m->A, w);
    q.layers = n - 1;
    nesf_mlp_layout(&m->mlp[NESF_DEC_SPECIES], mlp_names[NESF_DEC_SPECIES], n, w, &q, 1, 0, &np, &nb);
    m->net.nparams = np;
    m->net.nbuffers = nb;

    char name[96];
    for (int k = 0; k < NESF_NUM_MLPS; k++) {
        const nesf_mlp *p = &m->mlp[k];
        for (int l = 0; l < p->n; l++) {
            const nesf_layer *L = &p->L[l];
            int rc = 0;
            snprintf(name, sizeof name, "%s.%d.weight", p->name, l);
            rc |= add_tensor(m, name, 2, L->out, L->in, L->W, 0);
            snprintf(name, sizeof name, "%s.%d.bias", p->name, l);
            rc |= add_tensor(m, name, 1, L->out, 0, L->b, 0);
            if (L->bn) {
                snprintf(name, sizeof name, "%s.%d.bn.weight", p->name, l);
                rc |= add_tensor(m, name, 1, L->out, 0, L->gamma, 0);
                snprintf(name, sizeof name, "%s.%d.bn.bias", p->name, l);
                rc |= add_tensor(m, name, 1, L->out, 0, L->beta, 0);
                snprintf(name, sizeof name, "%s.%d.bn.running_mean", p->name, l);
                rc |= add_tensor(m, name, 1, L->out, 0, L->rmean, 1);
                snprintf(name, sizeof name, "%s.%d.bn.running_var", p->name, l);
                rc |= add_tensor(m, name, 1, L->out, 0, L->rvar, 1);
            }
            if (rc) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
        }
    }
    return NESF_OK;
}

/* Allocates the net's arrays on the backend (grads only for training). */
static int alloc_net(nesf_model *m, nesf_backend *be, nesf_error *err)
{
    nesf_net *net = &m->net;
    net->be = be;
    net->dropout = m->cfg.dropout;
    net->bn_momentum = m->cfg.bn_momentum;
    net->bn_eps = m->cfg.bn_eps;
    nesf_arena_init(&net->arena, be);
    net->params = be->ops->alloc(be, net->nparams * sizeof(float));
    net->folded = be->ops->alloc(be, net->nparams * sizeof(float));
    net->buffers = be->ops->alloc(be, (net->nbuffers ? net->nbuffers : 1) * sizeof(float));
    if (!net->params || !net->folded || !net->buffers)
        return nesf_fail(err, NESF_ERR_NOMEM, "cannot allocate %zu parameters on %s", net->nparams, be->name);
    return NESF_OK;
}

static nesf_model *model_new(const nesf_model_config *cfg, const int *species_z, int A,
                             const float *bbmin, const float *bbmax, nesf_error *err)
{
    if (A < 1 || A > NESF_MAX_SPECIES) {
        nesf_fail(err, NESF_ERR_FORMAT, "model needs 1..%d species, got %d", NESF_MAX_SPECIES, A);
        return NULL;
    }
    for (int k = 0; k < 3; k++)
        if (!isfinite(bbmin[k]) || !isfinite(bbmax[k]) || !(bbmax[k] > bbmin[k]) ||
            bbmax[k] - bbmin[k] > 1000) {
            nesf_fail(err, NESF_ERR_FORMAT, "bad bounding box along axis %d", k);
            return NULL;
        }
    nesf_model *m = calloc(1, sizeof *m);
    if (!m) {
        nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
        return NULL;
    }
    m->cfg = *cfg;
    m->A = A;
    memcpy(m->species_z, species_z, (size_t)A * sizeof *species_z);
    memcpy(m->bbmin, bbmin, sizeof m->bbmin);
    memcpy(m->bbmax, bbmax, sizeof m->bbmax);
    if (build_layout(m, err)) {
        nesf_model_free(m);
        return NULL;
    }
    return m;
}

void nesf_model_free(nesf_model *m)
{
    if (!m) return;
    nesf_backend *be = m->net.be;
    if (be) {
        nesf_arena_release(&m->net.arena);
        be->ops->free(be, m->net.params);
        be->ops->free(be, m->net.grads);
        be->ops->free(be, m->net.folded);
        be->ops->free(be, m->net.buffers);
    }
    free(m->tensors);
    free(m->train_config);
    free(m);
}

int nesf_model_refold(nesf_model *m, nesf_error *err)
{
    nesf_net *net = &m->net;
    nesf_backend *be = net->be;
    float *P = malloc(net->nparams * sizeof *P), *F = malloc(net->nparams * sizeof *F);
    float *B = malloc((net->nbuffers ? net->nbuffers : 1) * sizeof *B);
    int rc = NESF_OK;
    if (!P || !F || !B) {
        rc = nesf_fail(err, NESF_ERR_NOMEM, "out of memory folding BatchNorm");
        goto out;
    }
    if ((rc = be->ops->download(be, P, net->params, net->nparams * sizeof *P)) ||
        (rc = be->ops->download(be, B, net->buffers, net->nbuffers * sizeof *B))) {
        nesf_fail(err, rc, "backend failed downloading weights to fold BatchNorm");
        goto out;
    }
    memcpy(F, P, net->nparams * sizeof *F);
    for (int k = 0; k < NESF_NUM_MLPS; k++) nesf_mlp_fold(net, &m->mlp[k], P, B, F);
    rc = be->ops->upload(be, net->folded, F, net->nparams * sizeof *F);
    if (!rc) rc = be->ops->sync(be);
    if (rc) nesf_fail(err, rc, "backend failed uploading folded weights");
out:
    free(P);
    free(F);
    free(B);
    return rc;
}

/* splitmix64: a seeded stream for weight initialisation */
static double rng_uniform(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

int nesf_model_create(const nesf_model_config *cfg, const int *species_z, int num_species,
                      const float bbox_min[3], const float bbox_max[3], nesf_backend *be,
                      uint64_t seed, nesf_model **out, nesf_error *err)
{
    *out = NULL;
    nesf_model *m = model_new(cfg, species_z, num_species, bbox_min, bbox_max, err);
    if (!m) return err ? err->code : NESF_ERR_INVALID;
    int rc = alloc_net(m, be, err);
    float *P = calloc(m->net.nparams, sizeof *P), *B = calloc(m->net.nbuffers + 1, sizeof *B);
    if (!rc && (!P || !B)) rc = nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    if (rc) {
        free(P);
        free(B);
        nesf_model_free(m);
        return rc;
    }
    /* PyTorch's Linear default: W, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) */
    uint64_t st = seed;
    for (int k = 0; k < NESF_NUM_MLPS; k++)
        for (int l = 0; l < m->mlp[k].n; l++) {
            const nesf_layer *L = &m->mlp[k].L[l];
            double bound = 1.0 / sqrt((double)L->in);
            for (size_t i = 0; i < (size_t)L->out * L->in; i++)
                P[L->W + i] = (float)((2 * rng_uniform(&st) - 1) * bound);
            for (int i = 0; i < L->out; i++) P[L->b + i] = (float)((2 * rng_uniform(&st) - 1) * bound);
            if (L->bn)
                for (int i = 0; i < L->out; i++) {
                    P[L->gamma + i] = 1;
                    B[L->rvar + i] = 1;
                }
        }
    if ((rc = be->ops->upload(be, m->net.params, P, m->net.nparams * sizeof *P)) ||
        (rc = be->ops->upload(be, m->net.buffers, B, m->net.nbuffers * sizeof *B)))
        nesf_fail(err, rc, "backend failed uploading initial weights");
    free(P);
    free(B);
    if (!rc) rc = nesf_model_refold(m, err);
    if (rc) {
        nesf_model_free(m);
        return rc;
    }
    *out = m;
    return NESF_OK;
}

/* ---- load / save ---- */

static int parse_floats(const char *s, float *dst, int n)
{
    for (int i = 0; i < n; i++) {
        char *end;
        double v = strtod(s, &end);
        if (end == s || !isfinite(v)) return -1;
        dst[i] = (float)v;
        s = end;
        while (*s == ' ') s++;
        if (i < n - 1) {
            if (*s != ',') return -1;
            s++;
        }
    }
    while (*s == ' ') s++;
    return *s ? -1 : 0;
}

static int parse_species(const char *s, int *z, int *n, nesf_error *err)
{
    *n = 0;
    while (*s) {
        char sym[8];
        int len = 0;
        while (*s == ' ') s++;
        while (*s && *s != ',' && *s != ' ' && len < 7) sym[len++] = *s++;
        sym[len] = 0;
        while (*s == ' ') s++;
        if (*s == ',') s++;
        else if (*s)
            return nesf_fail(err, NESF_ERR_FORMAT, "metadata 'species': bad entry near '%.10s'", s);
        int zz = nesf_element_z(sym);
        if (!zz) return nesf_fail(err, NESF_ERR_FORMAT, "metadata 'species': unknown element '%s'", sym);
        if (*n == NESF_MAX_SPECIES)
            return nesf_fail(err, NESF_ERR_FORMAT, "metadata 'species': more than %d species", NESF_MAX_SPECIES);
        z[(*n)++] = zz;
    }
    if (!*n) return nesf_fail(err, NESF_ERR_FORMAT, "metadata 'species' is empty");
    return NESF_OK;
}

static const nesf_tensor_info *find_tensor(const nesf_model *m, const char *name)
{
    for (int i = 0; i < m->ntensors; i++)
        if (!strcmp(m->tensors[i].name, name)) return &m->tensors[i];
    return NULL;
}

static int load_from(nesf_st *st, const char *path, nesf_backend *be, nesf_model **out, nesf_error *err)
{
    nesf_model_config cfg;
    nesf_model_config_paper(&cfg);
    const char *mc = nesf_st_meta(st, "model_config");
    if (mc) {
        json_error_t je;
        json_t *o = json_loads(mc, 0, &je);
        if (!o) return nesf_fail(err, NESF_ERR_FORMAT, "metadata 'model_config' is not JSON: %s", je.text);
        int rc = config_from_json(o, &cfg, err);
        json_decref(o);
        if (rc) {
            nesf_error_prefix(err, "metadata 'model_config': ");
            return err ? (err->code = NESF_ERR_FORMAT) : NESF_ERR_FORMAT;
        }
    }
    const char *sp = nesf_st_meta(st, "species"), *lo = nesf_st_meta(st, "bbox_min"),
               *hi = nesf_st_meta(st, "bbox_max"), *ls = nesf_st_meta(st, "latent_size");
    if (!sp || !lo || !hi)
        return nesf_fail(err, NESF_ERR_FORMAT, "metadata lacks %s", !sp ? "'species'" : !lo ? "'bbox_min'" : "'bbox_max'");
    int z[NESF_MAX_SPECIES], A;
    int rc = parse_species(sp, z, &A, err);
    if (rc) return rc;
    float bbmin[3], bbmax[3];
    if (parse_floats(lo, bbmin, 3) || parse_floats(hi, bbmax, 3))
        return nesf_fail(err, NESF_ERR_FORMAT, "metadata bbox_min/bbox_max must be three numbers");
    if (ls && atoi(ls) != cfg.latent)
        return nesf_fail(err, NESF_ERR_FORMAT, "metadata latent_size %s disagrees with model config (%d)", ls, cfg.latent);
    nesf_model *m = model_new(&cfg, z, A, bbmin, bbmax, err);
    if (!m) return err ? err->code : NESF_ERR_FORMAT;
    const char *tc = nesf_st_meta(st, "training_config");
    if (!tc) tc = nesf_st_meta(st, "train_config");  /* the PyTorch reference's key */
    if (tc) m->train_config = strdup(tc);
    const char *dm = nesf_st_meta(st, "domain");
    if (dm && (rc = nesf_domain_from_json(dm, &m->domain, err))) {
        nesf_model_free(m);
        return rc;
    }
    rc = alloc_net(m, be, err);
    float *P = calloc(m->net.nparams, sizeof *P), *B = calloc(m->net.nbuffers + 1, sizeof *B);
    if (!rc && (!P || !B)) rc = nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    for (int i = 0; !rc && i < m->ntensors; i++) {
        const nesf_tensor_info *t = &m->tensors[i];
        rc = nesf_st_get_f32(st, t->name, t->ndim, t->shape, (t->buffer ? B : P) + t->off, err);
    }
    for (int i = 0; !rc && i < nesf_st_count(st); i++) {
        const char *name = nesf_st_at(st, i)->name;
        size_t len = strlen(name);
        if (find_tensor(m, name) || !strncmp(name, "trainer.", 8) || (len > 19 && !strcmp(name + len - 19, "num_batches_tracked")))
            continue;
        rc = nesf_fail(err, NESF_ERR_FORMAT, "unexpected tensor '%s' for this model configuration", name);
    }
    for (size_t i = 0; !rc && i < m->net.nparams; i++)
        if (!isfinite(P[i])) rc = nesf_fail(err, NESF_ERR_FORMAT, "non-finite parameter value");
    for (int k = 0; !rc && k < NESF_NUM_MLPS; k++)
        for (int l = 0; l < m->mlp[k].n; l++)
            if (m->mlp[k].L[l].bn)
                for (int i = 0; i < m->mlp[k].L[l].out; i++)
                    if (!(B[m->mlp[k].L[l].rvar + i] >= 0) || !isfinite(B[m->mlp[k].L[l].rmean + i])) {
                        rc = nesf_fail(err, NESF_ERR_FORMAT, "%s.%d: bad BatchNorm running statistics",
                                       m->mlp[k].name, l);
                        break;
                    }
    if (!rc) {
        if ((rc = be->ops->upload(be, m->net.params, P, m->net.nparams * sizeof *P)) ||
            (rc = be->ops->upload(be, m->net.buffers, B, m->net.nbuffers * sizeof *B)))
            nesf_fail(err, rc, "backend failed uploading weights");
        else
            rc = nesf_model_refold(m, err);
    }
    free(P);
    free(B);
    if (rc) {
        nesf_model_free(m);
        return rc;
    }
    (void)path;
    *out = m;
    return NESF_OK;
}

int nesf_model_load(const char *path, nesf_backend *be, nesf_model **out, nesf_error *err)
{
    *out = NULL;
    nesf_st *st;
    int rc = nesf_st_read(path, &st, err);
    if (rc) return rc;
    rc = load_from(st, path, be, out, err);
    nesf_st_free(st);
    if (rc) nesf_error_prefix(err, "%s: ", path);
    return rc;
}

static void join_floats(char *buf, size_t size, const float *v, int n)
{
    size_t k = 0;
    buf[0] = 0;
    for (int i = 0; i < n && k < size; i++)
        k += (size_t)snprintf(buf + k, size - k, "%s%.9g", i ? "," : "", v[i]);
}

int nesf_model_save(nesf_model *m, const char *path, const char *train_config_json, nesf_error *err)
{
    nesf_st_writer *w = nesf_st_writer_new();
    if (!w) return nesf_fail(err, NESF_ERR_NOMEM, "out of memory saving the model");
    int rc = nesf_model_write(m, w, path, train_config_json, err);
    nesf_st_writer_free(w);
    return rc;
}

int nesf_model_write(nesf_model *m, nesf_st_writer *w, const char *path,
                     const char *train_config_json, nesf_error *err)
{
    nesf_net *net = &m->net;
    nesf_backend *be = net->be;
    float *P = malloc(net->nparams * sizeof *P), *B = malloc((net->nbuffers + 1) * sizeof *B);
    char *mc = nesf_model_config_to_json(&m->cfg);
    char *species = calloc((size_t)m->A, 4);
    int rc = NESF_OK;
    if (!P || !B || !w || !mc || !species) {
        rc = nesf_fail(err, NESF_ERR_NOMEM, "out of memory saving the model");
        goto out;
    }
    if ((rc = be->ops->download(be, P, net->params, net->nparams * sizeof *P)) ||
        (rc = be->ops->download(be, B, net->buffers, net->nbuffers * sizeof *B)) ||
        (rc = be->ops->sync(be))) {
        nesf_fail(err, rc, "backend failed downloading weights");
        goto out;
    }
    for (int i = 0; !rc && i < m->ntensors; i++) {
        const nesf_tensor_info *t = &m->tensors[i];
        rc = nesf_st_writer_add(w, t->name, NESF_ST_F32, t->ndim, t->shape, (t->buffer ? B : P) + t->off, err);
    }
    for (int i = 0; i < m->A; i++) {
        if (i) strcat(species, ",");
        strcat(species, nesf_element_get(m->species_z[i])->symbol);
    }
    char lo[96], hi[96], ls[16];
    join_floats(lo, sizeof lo, m->bbmin, 3);
    join_floats(hi, sizeof hi, m->bbmax, 3);
    snprintf(ls, sizeof ls, "%d", m->cfg.latent);
    const char *tc = train_config_json ? train_config_json : m->train_config;
    if (!rc) rc = nesf_st_writer_meta(w, "nesf_version", NESF_VERSION, err);
    if (!rc) rc = nesf_st_writer_meta(w, "latent_size", ls, err);
    if (!rc) rc = nesf_st_writer_meta(w, "species", species, err);
    if (!rc) rc = nesf_st_writer_meta(w, "bbox_min", lo, err);
    if (!rc) rc = nesf_st_writer_meta(w, "bbox_max", hi, err);
    if (!rc) rc = nesf_st_writer_meta(w, "model_config", mc, err);
    if (!rc && tc) rc = nesf_st_writer_meta(w, "training_config", tc, err);
    char *dj = m->domain.structures > 0 ? nesf_domain_to_json(&m->domain) : NULL;
    if (!rc && m->domain.structures > 0)
        rc = dj ? nesf_st_writer_meta(w, "domain", dj, err) : nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    free(dj);
    if (!rc) rc = nesf_st_writer_write(w, path, err);
    if (!rc && tc && tc != m->train_config) {
        free(m->train_config);
        m->train_config = strdup(tc);
    }
out:
    free(P);
    free(B);
    free(mc);
    free(species);
    return rc;
}

/* ---- accessors ---- */

const nesf_model_config *nesf_model_get_config(const nesf_model *m) { return &m->cfg; }
nesf_backend *nesf_model_backend(const nesf_model *m) { return m->net.be; }
int nesf_model_latent_size(const nesf_model *m) { return m->cfg.latent; }
int nesf_model_num_species(const nesf_model *m) { return m->A; }
int nesf_model_species_z(const nesf_model *m, int cls) { return cls >= 0 && cls < m->A ? m->species_z[cls] : 0; }
size_t nesf_model_param_count(const nesf_model *m) { return m->net.nparams; }
const nesf_domain *nesf_model_domain(const nesf_model *m) { return m->domain.structures > 0 ? &m->domain : NULL; }
void nesf_model_set_domain(nesf_model *m, const nesf_domain *d) { m->domain = *d; }
const char *nesf_model_train_config(const nesf_model *m) { return m->train_config ? m->train_config : ""; }

int nesf_model_class_of(const nesf_model *m, int z)
{
    for (int i = 0; i < m->A; i++)
        if (m->species_z[i] == z) return i;
    return -1;
}

void nesf_model_bbox(const nesf_model *m, float bbox_min[3], float bbox_max[3])
{
    memcpy(bbox_min, m->bbmin, sizeof m->bbmin);
    memcpy(bbox_max, m->bbmax, sizeof m->bbmax);
}

void nesf_model_set_bbox(nesf_model *m, const float bbox_min[3], const float bbox_max[3])
{
    memcpy(m->bbmin, bbox_min, sizeof m->bbmin);
    memcpy(m->bbmax, bbox_max, sizeof m->bbmax);
}

/* ---- encoder ---- */

void nesf_enc_batch_free(nesf_enc_batch *b)
{
    free(b->off);
    free(b->xyz);
    free(b->onehot);
    free(b->latf);
    memset(b, 0, sizeof *b);
}

int nesf_enc_batch_build(const nesf_model *m, nesf_structure *const *s, int n, nesf_enc_batch *b,
                         nesf_error *err)
{
    memset(b, 0, sizeof *b);
    int N = 0;
    for (int i = 0; i < n; i++) {
        if (s[i]->n < 1) return nesf_fail(err, NESF_ERR_INVALID, "structure %d has no atoms", i + 1);
        int rc = nesf_structure_validate(s[i], err);
        if (rc) {
            nesf_error_prefix(err, "structure %d: ", i + 1);
            return rc;
        }
        N += s[i]->n;
    }
    b->S = n;
    b->N = N;
    b->off = malloc((size_t)(n + 1) * sizeof *b->off);
    b->xyz = malloc((size_t)N * 3 * sizeof *b->xyz);
    b->onehot = calloc((size_t)N * m->A, sizeof *b->onehot);
    b->latf = malloc((size_t)n * 6 * sizeof *b->latf);
    if (!b->off || !b->xyz || !b->onehot || !b->latf) {
        nesf_enc_batch_free(b);
        return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    }
    int r = 0;
    for (int i = 0; i < n; i++) {
        nesf_cellpar p;
        nesf_lattice canon;
        nesf_lattice_params(&s[i]->lat, &p);
        int rc = nesf_lattice_from_params(&p, &canon, err);
        if (rc) {
            nesf_enc_batch_free(b);
            nesf_error_prefix(err, "structure %d: ", i + 1);
            return rc;
        }
        const double rad = M_PI / 180.0;
        float *lf = b->latf + 6 * i;
        lf[0] = (float)p.a; lf[1] = (float)p.b; lf[2] = (float)p.c;
        lf[3] = (float)(p.alpha * rad); lf[4] = (float)(p.beta * rad); lf[5] = (float)(p.gamma * rad);
        b->off[i] = r;
        for (int j = 0; j < s[i]->n; j++, r++) {
            int cls = nesf_model_class_of(m, s[i]->z[j]);
            if (cls < 0) {
                const nesf_element *e = nesf_element_get(s[i]->z[j]);
                nesf_enc_batch_free(b);
                return nesf_fail(err, NESF_ERR_NOTFOUND,
                                 "structure %d: element %s is not among the model's %d species",
                                 i + 1, e ? e->symbol : "?", m->A);
            }
            b->onehot[(size_t)r * m->A + cls] = 1;
            double c[3];
            nesf_lattice_frac_to_cart(&canon, s[i]->frac + 3 * j, c);
            for (int k = 0; k < 3; k++) b->xyz[3 * r + k] = (float)c[k];
        }
    }
    b->off[n] = r;
    return NESF_OK;
}

#define TRY_ALLOC(p) do { if (!(p)) { rc = nesf_fail(err, NESF_ERR_NOMEM, "out of backend memory"); goto out; } } while (0)

int nesf_enc_upload(nesf_model *m, const nesf_enc_batch *hb, nesf_enc_graph *g, nesf_error *err)
{
    nesf_backend *be = m->net.be;
    nesf_arena *ar = &m->net.arena;
    const int N = hb->N, n = hb->S;
    memset(g, 0, sizeof *g);
    g->S = n;
    g->N = N;
    g->xyz = nesf_arena_floats(ar, (size_t)N * 3);
    g->onehot = nesf_arena_floats(ar, (size_t)N * m->A);
    g->latf = nesf_arena_floats(ar, (size_t)n * 6);
    g->off = nesf_arena_alloc(ar, (size_t)(n + 1) * sizeof(int));
    if (!g->xyz || !g->onehot || !g->latf || !g->off) return nesf_fail(err, NESF_ERR_NOMEM, "out of backend memory");
    int rc;
    if ((rc = be->ops->upload(be, g->xyz, hb->xyz, (size_t)N * 3 * sizeof(float))) ||
        (rc = be->ops->upload(be, g->onehot, hb->onehot, (size_t)N * m->A * sizeof(float))) ||
        (rc = be->ops->upload(be, g->latf, hb->latf, (size_t)n * 6 * sizeof(float))) ||
        (rc = be->ops->upload(be, g->off, hb->off, (size_t)(n + 1) * sizeof(int))))
        return nesf_fail(err, rc, "backend failure uploading the encoder's inputs");
    return NESF_OK;
}

/* MLP k of the encoder (model MLP `which`) on in, in g's mode; its output,
 * NULL when the arena is out of memory. */
static float *enc_mlp(nesf_model *m, int which, int k, nesf_mlp_in in, uint64_t seed, nesf_enc_graph *g)
{
    g->in[k] = in;
    if (!g->train) return nesf_mlp_forward_infer(&m->net, &m->mlp[which], &g->in[k]);
    return nesf_mlp_forward_train(&m->net, &m->mlp[which], &g->in[k], seed, &g->acts[k]) ? NULL : g->acts[k].out;
}

int nesf_enc_forward(nesf_model *m, nesf_enc_graph *g, int train, uint64_t dropout_seed, nesf_error *err)
{
    nesf_backend *be = m->net.be;
    nesf_arena *ar = &m->net.arena;
    const nesf_model_config *c = &m->cfg;
    const int N = g->N, n = g->S, mixw = c->enc_pos_out + c->enc_species_out, headw = c->enc_mix_out + 6;
    g->train = train;
    float *hp = enc_mlp(m, NESF_ENC_POS, NESF_ENC_GRAPH_POS, (nesf_mlp_in){.rows = N, .x = g->xyz, .ldx = 3}, 0, g);
    float *hs = hp ? enc_mlp(m, NESF_ENC_SPECIES, NESF_ENC_GRAPH_SPECIES,
                             (nesf_mlp_in){.rows = N, .x = g->onehot, .ldx = m->A}, 0, g) : NULL;
    g->mixin = hs ? nesf_arena_floats(ar, (size_t)N * mixw) : NULL;
    if (!g->mixin) return nesf_fail(err, NESF_ERR_NOMEM, "out of backend memory");
    be->ops->copy2d(be, N, c->enc_pos_out, hp, c->enc_pos_out, g->mixin, mixw);
    be->ops->copy2d(be, N, c->enc_species_out, hs, c->enc_species_out, g->mixin + c->enc_pos_out, mixw);
    float *hm = enc_mlp(m, NESF_ENC_MIX, NESF_ENC_GRAPH_MIX, (nesf_mlp_in){.rows = N, .x = g->mixin, .ldx = mixw}, 0, g);
    g->pooled = hm ? nesf_arena_floats(ar, (size_t)n * c->enc_mix_out) : NULL;
    g->arg = g->pooled ? nesf_arena_alloc(ar, (size_t)n * c->enc_mix_out * sizeof(int)) : NULL;
    g->head = g->arg ? nesf_arena_floats(ar, (size_t)n * headw) : NULL;
    if (!g->head) return nesf_fail(err, NESF_ERR_NOMEM, "out of backend memory");
    be->ops->group_max(be, n, g->off, c->enc_mix_out, hm, c->enc_mix_out, g->pooled, g->arg);
    be->ops->copy2d(be, n, c->enc_mix_out, g->pooled, c->enc_mix_out, g->head, headw);
    be->ops->copy2d(be, n, 6, g->latf, 6, g->head + c->enc_mix_out, headw);
    g->z = enc_mlp(m, NESF_ENC_HEAD, NESF_ENC_GRAPH_HEAD, (nesf_mlp_in){.rows = n, .x = g->head, .ldx = headw},
                   dropout_seed, g);
    return g->z ? NESF_OK : nesf_fail(err, NESF_ERR_NOMEM, "out of backend memory");
}

int nesf_model_encode(nesf_model *m, nesf_structure *const *s, int n, float *z, nesf_error *err)
{
    if (n <= 0) return NESF_OK;
    nesf_enc_batch hb;
    int rc = nesf_enc_batch_build(m, s, n, &hb, err);
    if (rc) return rc;
    nesf_backend *be = m->net.be;
    nesf_enc_graph g;
    if ((rc = nesf_arena_reset(&m->net.arena))) nesf_fail(err, rc, "backend failure resetting its scratch memory");
    if (!rc) rc = nesf_enc_upload(m, &hb, &g, err);
    if (!rc) rc = nesf_enc_forward(m, &g, 0, 0, err);
    nesf_enc_batch_free(&hb);
    if (rc) return rc;
    rc = be->ops->download(be, z, g.z, (size_t)n * m->cfg.latent * sizeof(float));
    if (!rc) rc = be->ops->sync(be);
    return rc ? nesf_fail(err, rc, "backend failure during encode") : NESF_OK;
}

int nesf_model_lattice(nesf_model *m, int n, const float *z, float *lengths, float *angles,
                       nesf_error *err)
{
    if (n <= 0) return NESF_OK;
    nesf_net *net = &m->net;
    nesf_backend *be = net->be;
    nesf_arena *ar = &net->arena;
    int rc = NESF_OK;
    for (size_t i = 0; i < (size_t)n * m->cfg.latent; i++)
        if (!isfinite(z[i])) return nesf_fail(err, NESF_ERR_INVALID, "latent %zu has a non-finite value", i / m->cfg.latent + 1);
    if ((rc = nesf_arena_reset(ar))) return nesf_fail(err, rc, "backend failure resetting its scratch memory");
    float *zd = nesf_arena_floats(ar, (size_t)n * m->cfg.latent);
    TRY_ALLOC(zd);
    if ((rc = be->ops->upload(be, zd, z, (size_t)n * m->cfg.latent * sizeof(float))))
        return nesf_fail(err, rc, "backend failure uploading latents");
    nesf_mlp_in in = {.rows = n, .x = zd, .ldx = m->cfg.latent};
    float *len = nesf_mlp_forward_infer(net, &m->mlp[NESF_DEC_LENGTH], &in);
    float *ang = nesf_mlp_forward_infer(net, &m->mlp[NESF_DEC_ANGLE], &in);
    TRY_ALLOC(len && ang);
    if (!(rc = be->ops->download(be, lengths, len, (size_t)n * 3 * sizeof(float))) &&
        !(rc = be->ops->download(be, angles, ang, (size_t)n * 3 * sizeof(float))))
        rc = be->ops->sync(be);
    if (rc) nesf_fail(err, rc, "backend failure in the lattice heads");
out:
    return rc;
}

/* ---- fields ---- */

/* Evaluates one field MLP over all queries in chunks of the backend's
 * chunk_rows.  A chunk is a run of consecutive rows cut into pieces, one per
 * structure it touches; each piece gets its structure's latent, so a large
 * structure can span chunks and small ones share a chunk. */
static int eval_field(nesf_model *m, int which, int S, const float *z_dev, const int *off,
                      const float *xyz_dev, float *out_dev, int outw, nesf_error *err)
{
    nesf_net *net = &m->net;
    nesf_backend *be = net->be;
    nesf_arena *ar = &net->arena;
    const int L = m->cfg.latent;
    const int Q = off[S];
    int *loff = malloc((size_t)(S + 2) * sizeof *loff), *zrow = malloc((size_t)(S + 1) * sizeof *zrow);
    int rc = NESF_OK;
    if (!loff || !zrow) {
        free(loff);
        free(zrow);
        return nesf_fail(err, NESF_ERR_NOMEM, "out of memory");
    }
    for (int s = 0; s < S; s++)
        if (off[s + 1] < off[s]) {
            free(loff);
            free(zrow);
            return nesf_fail(err, NESF_ERR_INVALID, "query offsets must not decrease");
        }
    const int chunk = be->chunk_rows > 0 ? be->chunk_rows : FIELD_CHUNK;
    int s = 0;
    for (int r0 = 0; r0 < Q;) {
        int r1 = r0 + chunk < Q ? r0 + chunk : Q;
        int np = 0;
        while (off[s + 1] <= r0) s++;
        for (int t = s; t < S && off[t] < r1; t++) {
            if (off[t + 1] <= r0) continue;
            loff[np] = (off[t] > r0 ? off[t] : r0) - r0;
            zrow[np++] = t;
        }
        loff[np] = r1 - r0;
        if ((rc = nesf_arena_reset(ar))) {
            nesf_fail(err, rc, "backend failure resetting its scratch memory");
            break;
        }
        float *zc = nesf_arena_floats(ar, (size_t)np * L);
        int *offd = nesf_arena_alloc(ar, (size_t)(np + 1) * sizeof(int));
        if (!zc || !offd) {
            rc = nesf_fail(err, NESF_ERR_NOMEM, "out of backend memory");
            break;
        }
        for (int p = 0; !rc && p < np; p++)
            rc = be->ops->copy(be, zc + (size_t)p * L, z_dev + (size_t)zrow[p] * L, L * sizeof(float));
        if (rc || (rc = be->ops->upload(be, offd, loff, (size_t)(np + 1) * sizeof(int)))) {
            nesf_fail(err, rc, "backend failure staging a field chunk's latents and offsets");
            break;
        }
        nesf_mlp_in in = {.rows = r1 - r0, .S = np, .off = offd, .z = zc, .ldz = L, .xyz = xyz_dev + (size_t)r0 * 3};
        float *o = nesf_mlp_forward_infer(net, &m->mlp[which], &in);
        if (!o) {
            rc = nesf_fail(err, NESF_ERR_NOMEM, "out of backend memory");
            break;
        }
        if ((rc = be->ops->copy(be, out_dev + (size_t)r0 * outw, o, (size_t)(r1 - r0) * outw * sizeof(float)))) {
            nesf_fail(err, rc, "backend failure copying a field chunk's values");
            break;
        }
        r0 = r1;
    }
    free(loff);
    free(zrow);
    if (!rc && (rc = be->ops->sync(be))) nesf_fail(err, rc, "backend failure evaluating a field");
    return rc;
}

double nesf_model_position_flops(const nesf_model *m, int grouped)
{
    return (double)nesf_mlp_flops_per_row(&m->mlp[NESF_DEC_POSITION], grouped);
}

int nesf_model_position_field(nesf_model *m, int S, const float *z_dev, const int *off,
                              const float *xyz_dev, float *out_dev, nesf_error *err)
{
    return eval_field(m, NESF_DEC_POSITION, S, z_dev, off, xyz_dev, out_dev, 3, err);
}

int nesf_model_species_field(nesf_model *m, int S, const float *z_dev, const int *off,
                             const float *xyz_dev, float *out_dev, nesf_error *err)
{
    return eval_field(m, NESF_DEC_SPECIES, S, z_dev, off, xyz_dev, out_dev, m->A, err);
}

/* Host wrappers: stage through backend memory owned here (not the arena,
 * which the field evaluation resets). */
static int field_host(nesf_model *m, int which, int S, const float *z, const int *off,
                      const float *xyz, float *out, int outw, nesf_error *err)
{
    nesf_backend *be = m->net.be;
    const int L = m->cfg.latent, Q = off[S];
    for (size_t i = 0; i < (size_t)S * L; i++)
        if (!isfinite(z[i])) return nesf_fail(err, NESF_ERR_INVALID, "latent has a non-finite value");
    float *zd = be->ops->alloc(be, (size_t)S * L * sizeof(float) + 1);
    float *xd = be->ops->alloc(be, (size_t)Q * 3 * sizeof(float) + 1);
    float *od = be->ops->alloc(be, (size_t)Q * outw * sizeof(float) + 1);
    int rc;
    if (!zd || !xd || !od) {
        rc = nesf_fail(err, NESF_ERR_NOMEM, "out of backend memory");
    } else {
        if ((rc = be->ops->upload(be, zd, z, (size_t)S * L * sizeof(float))) ||
            (rc = be->ops->upload(be, xd, xyz, (size_t)Q * 3 * sizeof(float))))
            nesf_fail(err, rc, "backend failure uploading field queries");
        else
            rc = eval_field(m, which, S, zd, off, xd, od, outw, err);
        if (!rc) {
            rc = be->ops->download(be, out, od, (size_t)Q * outw * sizeof(float));
            if (!rc) rc = be->ops->sync(be);
            if (rc) nesf_fail(err, rc, "backend failure downloading field values");
        }
    }
    be->ops->free(be, zd);
    be->ops->free(be, xd);
    be->ops->free(be, od);
    return rc;
}

int nesf_model_position_field_host(nesf_model *m, int S, const float *z, const int *off,
                                   const float *xyz, float *out, nesf_error *err)
{
    return field_host(m, NESF_DEC_POSITION, S, z, off, xyz, out, 3, err);
}

int nesf_model_species_field_host(nesf_model *m, int S, const float *z, const int *off,
                                  const float *xyz, float *out, nesf_error *err)
{
    return field_host(m, NESF_DEC_SPECIES, S, z, off, xyz, out, m->A, err);
}

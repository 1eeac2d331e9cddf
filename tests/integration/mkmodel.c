/* mkmodel - writes a NeSF model file (paper configuration) for the daemon's
 * integration tests and benchmark, which must not depend on a trained model.
 *
 *   mkmodel OUT.safetensors [META.json] [SEED] [--random | --flat]
 *
 * The network starts from random weights (seed) with the species of a
 * dataset's meta.json (default LCS6Å's through $NESF_SHARED) and a 6 Å
 * bounding box.  Unless --random is given, three heads are then set by
 * hand so that decoding yields real structures whose every number depends
 * on the whole pipeline:
 *   - lattice heads: a ≈ 4, b ≈ 4.5, c ≈ 5 Å, angles ≈ 90°, plus a small
 *     latent-dependent part (the last layers' random weights x 0.05);
 *   - position field: the last hidden layer copies the query point and two
 *     ramps of x, and the output layer turns them into the field of two
 *     attractors, at (1, 2.25, 2.5) for x < 3 and (3.5, 2.25, 2.5) beyond,
 *     so the particles gather into exactly two atoms;
 *   - species field: untouched, so the two atoms' elements depend on z.
 * --flat makes c 0.001 Å for every latent: a trained LCS6 model once
 * decoded one N(0,1) latent in 1000 to a cell 0.0086 Å thick, which crashed
 * spglib; this one's two atoms make an unguarded spglib 2.0 segfault at
 * symprec 0.01, so the daemon's guard is tested without depending on a
 * trained model's weights.
 * A random network alone predicts a degenerate cell and scatters its
 * particles, which would leave nothing to compare but error messages. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "dataset.h"
#include "model.h"

static unsigned char *image;
static size_t image_len, data_base;
static json_t *header;

static float *tensor(const char *name, int64_t *rows, int64_t *cols)
{
    json_t *t = json_object_get(header, name);
    json_t *shape = json_object_get(t, "shape"), *off = json_object_get(t, "data_offsets");
    if (!t || strcmp(json_string_value(json_object_get(t, "dtype")), "F32")) {
        fprintf(stderr, "mkmodel: no F32 tensor %s\n", name);
        exit(1);
    }
    *rows = json_integer_value(json_array_get(shape, 0));
    *cols = json_array_size(shape) > 1 ? json_integer_value(json_array_get(shape, 1)) : 1;
    size_t begin = (size_t)json_integer_value(json_array_get(off, 0));
    if (data_base + begin + (size_t)(*rows * *cols) * 4 > image_len) {
        fprintf(stderr, "mkmodel: %s outside the file\n", name);
        exit(1);
    }
    return (float *)(image + data_base + begin); /* safetensors data is 8-aligned here */
}

static void set_all(const char *name, float v)
{
    int64_t r, c;
    float *p = tensor(name, &r, &c);
    for (int64_t i = 0; i < r * c; i++) p[i] = v;
}

static void scale(const char *name, float s)
{
    int64_t r, c;
    float *p = tensor(name, &r, &c);
    for (int64_t i = 0; i < r * c; i++) p[i] *= s;
}

static void shape_fixture(int flat)
{
    int64_t r, c;
    float *p;
    /* lattice: a constant plus 5% of the random latent-dependent part */
    scale("decoder.length.1.weight", 0.05f);
    scale("decoder.angle.1.weight", 0.05f);
    p = tensor("decoder.length.1.bias", &r, &c);
    p[0] = 4.0f, p[1] = 4.5f, p[2] = 5.0f;
    if (flat) {
        float *w = tensor("decoder.length.1.weight", &r, &c);
        memset(w + 2 * c, 0, (size_t)c * sizeof *w); /* c: no latent-dependent part */
        p[2] = 0.001f;
    }
    set_all("decoder.angle.1.bias", 1.5707963f);

    /* last hidden layer of the position field (input [128 features, x, y, z]):
     * u0..u2 = coordinate + B (kept positive through the ReLU),
     * u3 = relu(x - 3 + eps), u4 = relu(x - 3): (u3 - u4) / eps steps 0 -> 1 at x = 3.
     * Its BN has mean 0 and var 1 - eps_bn, i.e. exactly the identity. */
    const float B = 10.0f, eps = 0.01f;
    float *w = tensor("decoder.position.7.weight", &r, &c);
    int64_t in7 = c, xyz = in7 - 3, h7 = r;
    float *b = tensor("decoder.position.7.bias", &r, &c);
    memset(w, 0, (size_t)(h7 * in7) * sizeof *w);
    memset(b, 0, (size_t)h7 * sizeof *b);
    for (int k = 0; k < 3; k++) w[k * in7 + xyz + k] = 1, b[k] = B;
    w[3 * in7 + xyz] = 1, b[3] = -3 + eps;
    w[4 * in7 + xyz] = 1, b[4] = -3;
    set_all("decoder.position.7.bn.running_mean", 0);
    set_all("decoder.position.7.bn.running_var", 1 - 1e-5f);
    set_all("decoder.position.7.bn.weight", 1);
    set_all("decoder.position.7.bn.bias", 0);

    /* output: f = attractor - p, the attractor's x switching at x = 3 */
    const float a1[3] = {1.0f, 2.25f, 2.5f}, a2x = 3.5f;
    float *w8 = tensor("decoder.position.8.weight", &r, &c);
    int64_t in8 = c;
    float *b8 = tensor("decoder.position.8.bias", &r, &c);
    memset(w8, 0, (size_t)(3 * in8) * sizeof *w8);
    for (int k = 0; k < 3; k++) w8[k * in8 + k] = -1, b8[k] = a1[k] + B;
    w8[3] = (a2x - a1[0]) / eps;
    w8[4] = -(a2x - a1[0]) / eps;
}

static int patch_file(const char *path, int flat)
{
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    image_len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    image = malloc(image_len);
    if (!image || fread(image, 1, image_len, f) != image_len) return -1;
    fclose(f);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | image[i];
    json_error_t je;
    header = json_loadb((const char *)image + 8, (size_t)hl, 0, &je);
    if (!header) {
        fprintf(stderr, "mkmodel: header: %s\n", je.text);
        return -1;
    }
    data_base = 8 + (size_t)hl;
    shape_fixture(flat);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    f = fopen(tmp, "wb");
    if (!f || fwrite(image, 1, image_len, f) != image_len || fclose(f)) return -1;
    json_decref(header);
    free(image);
    return rename(tmp, path);
}

int main(int argc, char **argv)
{
    const char *pos[3] = {NULL, NULL, NULL};
    int npos = 0, random_only = 0, flat = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--random")) random_only = 1;
        else if (!strcmp(argv[i], "--flat")) flat = 1;
        else if (npos < 3) pos[npos++] = argv[i];
        else npos = 4;
    }
    if (npos < 1 || npos > 3 || (random_only && flat)) {
        fprintf(stderr, "usage: mkmodel OUT.safetensors [META.json] [SEED] [--random | --flat]\n");
        return 2;
    }
    char meta[4096];
    if (pos[1]) {
        snprintf(meta, sizeof meta, "%s", pos[1]);
    } else {
        const char *shared = getenv("NESF_SHARED");
        snprintf(meta, sizeof meta, "%s/datasets/lcs6/meta.json", shared ? shared : "../shared");
    }
    uint64_t seed = pos[2] ? strtoull(pos[2], NULL, 10) : 1;
    nesf_error err = {0};
    nesf_vocab v;
    nesf_model_config cfg;
    nesf_backend *be = NULL;
    nesf_model *m = NULL;
    const float lo[3] = {0, 0, 0}, hi[3] = {6, 6, 6};
    nesf_model_config_paper(&cfg);
    snprintf(cfg.name, sizeof cfg.name, "%s-%llu", random_only ? "random" : "fixture",
             (unsigned long long)seed);
    int rc = nesf_vocab_load(meta, &v, &err);
    if (!rc) rc = nesf_backend_cpu_create(1, &be, &err);
    if (!rc) rc = nesf_model_create(&cfg, v.z, v.n, lo, hi, be, seed, &m, &err);
    if (!rc) rc = nesf_model_save(m, pos[0], NULL, &err);
    nesf_model_free(m);
    nesf_backend_free(be);
    if (rc) {
        fprintf(stderr, "mkmodel: %s\n", err.msg);
        return 1;
    }
    if (!random_only && patch_file(pos[0], flat)) {
        fprintf(stderr, "mkmodel: cannot rewrite %s\n", pos[0]);
        return 1;
    }
    return 0;
}

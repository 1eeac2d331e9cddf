/* The parity fixtures (tests/parity/fixtures, written by the PyTorch
 * reference with plain Python) load in the C reader with the layout the
 * parity tests rely on, and the reference's dropout RNG is bit-identical to
 * nesf_hash_uniform. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "backend.h"
#include "safetensors.h"

static nesf_st *load(const char *name)
{
    const char *root = getenv("NESF_SOURCE_ROOT");
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/parity/fixtures/%s", root ? root : ".", name);
    nesf_st *st = NULL;
    nesf_error e = {0};
    if (nesf_st_read(path, &st, &e) != NESF_OK) fail_msg("%s", e.msg);
    return st;
}

static const nesf_st_tensor *need(const nesf_st *st, const char *name, nesf_st_dtype dt)
{
    const nesf_st_tensor *t = nesf_st_find(st, name);
    if (!t) fail_msg("fixture tensor %s missing", name);
    if (t->dtype != dt) fail_msg("fixture tensor %s has dtype %d, want %d", name, t->dtype, dt);
    return t;
}

static void test_hash_matches_reference(void **state)
{
    (void)state;
    nesf_st *st = load("train_step_io.safetensors");
    const nesf_st_tensor *s = need(st, "hash.seed", NESF_ST_I64), *i = need(st, "hash.index", NESF_ST_I64),
                         *v = need(st, "hash.value", NESF_ST_F32);
    int n = (int)v->shape[0];
    assert_true(n >= 16);
    for (int k = 0; k < n; k++) {
        int64_t seed, idx;
        float want;
        memcpy(&seed, (const char *)s->data + 8 * k, 8);
        memcpy(&idx, (const char *)i->data + 8 * k, 8);
        memcpy(&want, (const char *)v->data + 4 * k, 4);
        float got = nesf_hash_uniform((uint64_t)seed, (uint64_t)idx);
        if (got != want) fail_msg("hash(%llu, %llu) = %.9g, reference %.9g",
                                  (unsigned long long)seed, (unsigned long long)idx, got, want);
    }
    /* the stored dropout masks follow from the seed and the rule of backend.h */
    const nesf_st_tensor *seed_t = need(st, "dropout_seed", NESF_ST_I64);
    int64_t seed;
    memcpy(&seed, seed_t->data, 8);
    for (int l = 0; l < 2; l++) {
        char name[32];
        snprintf(name, sizeof name, "dropout_mask.%d", l);
        const nesf_st_tensor *m = need(st, name, NESF_ST_F32);
        int rows = (int)m->shape[0], cols = (int)m->shape[1], dropped = 0;
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) {
                float want;
                memcpy(&want, (const char *)m->data + 4 * ((size_t)r * cols + c), 4);
                int drop = nesf_hash_uniform((uint64_t)seed + (uint64_t)l, (uint64_t)r * cols + c) < 0.3f;
                dropped += drop;
                assert_true(drop ? want == 0.0f : want == 1.0f / (1.0f - 0.3f));
            }
        assert_true(dropped > 0 && dropped < rows * cols);
    }
    nesf_st_free(st);
}

/* Every file parses, the weight files carry the metadata the loader needs,
 * and the I/O files have consistent offsets. */
static void test_layout(void **state)
{
    (void)state;
    const char *weights[] = {"forward.safetensors", "forward_tiny.safetensors", "train_step.safetensors",
                             "forward_fourier.safetensors", "train_step_fourier.safetensors"};
    for (int w = 0; w < 5; w++) {
        nesf_st *st = load(weights[w]);
        const char *keys[] = {"nesf_version", "latent_size", "species", "bbox_min", "bbox_max",
                              "train_config", "model_config"};
        for (int k = 0; k < 7; k++)
            if (!nesf_st_meta(st, keys[k])) fail_msg("%s lacks metadata %s", weights[w], keys[k]);
        assert_int_equal(strncmp(nesf_st_meta(st, "species"), "H,Li,Be,", 8), 0);
        assert_non_null(nesf_st_find(st, "decoder.position.0.weight"));
        assert_non_null(nesf_st_find(st, "encoder.head.1.bn.running_var"));
        assert_null(nesf_st_find(st, "encoder.mix.0.bn.weight"));
        nesf_st_free(st);
    }
    /* the paper file is stored as F16 and converts */
    nesf_st *st = load("forward.safetensors");
    int64_t shape[2] = {256, 195};
    float *buf = malloc(256 * 195 * sizeof *buf);
    nesf_error e = {0};
    assert_int_equal(need(st, "decoder.position.0.weight", NESF_ST_F16)->ndim, 2);
    assert_int_equal(nesf_st_get_f32(st, "decoder.position.0.weight", 2, shape, buf, &e), NESF_OK);
    float mx = 0;
    for (int i = 0; i < 256 * 195; i++) mx = buf[i] > mx ? buf[i] : mx;
    assert_true(mx > 0.03f && mx <= 1.0f / 13.9f);   /* PyTorch init bound 1/sqrt(195) */
    free(buf);
    nesf_st_free(st);

    const char *ios[] = {"forward_io.safetensors", "forward_tiny_io.safetensors", "train_step_io.safetensors",
                         "forward_fourier_io.safetensors", "train_step_fourier_io.safetensors"};
    for (int w = 0; w < 5; w++) {
        st = load(ios[w]);
        const nesf_st_tensor *aoff = need(st, "atom_off", NESF_ST_I32), *cart = need(st, "atom_cart", NESF_ST_F64);
        const nesf_st_tensor *lat = need(st, "lattice", NESF_ST_F64);
        int S = (int)aoff->shape[0] - 1;
        assert_true(S >= 3);
        assert_int_equal(lat->shape[0], S);
        int32_t last;
        memcpy(&last, (const char *)aoff->data + 4 * S, 4);
        assert_int_equal(last, cart->shape[0]);
        const char *offs[] = {"pos_off", "spec_off"}, *xyz[] = {"pos_xyz", "spec_xyz"};
        for (int k = 0; k < 2; k++) {
            const nesf_st_tensor *o = need(st, offs[k], NESF_ST_I32), *x = need(st, xyz[k], NESF_ST_F32);
            assert_int_equal(o->shape[0], S + 1);
            memcpy(&last, (const char *)o->data + 4 * S, 4);
            assert_int_equal(last, x->shape[0]);
        }
        nesf_st_free(st);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hash_matches_reference),
        cmocka_unit_test(test_layout),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

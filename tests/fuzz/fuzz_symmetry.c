/* libFuzzer target: space-group detection (spglib behind its guard in
 * symmetry.c) on arbitrary cells, at the daemon's symprec (0.1 Å) and at
 * one the input picks.  Two input forms, chosen by the first byte:
 *   'S' + text: a CIF or JSON structure, as nesfd and nesf read them;
 *   else binary: byte 1 picks symprec, then 9 float32 lattice entries
 *   (rows a, b, c in Å) and up to 64 sites of 1 byte Z + 3 float32
 *   fractional coordinates, so that flat, needle-like, skewed and tiny
 *   cells are reached directly.
 * Whatever comes in must not crash or hang, the number must be 0..230
 * with a symbol exactly when it is not 0, and the symmetry search must
 * agree with the space-group call. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "elements.h"
#include "sio.h"
#include "structure.h"
#include "symmetry.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define DAEMON_SYMPREC 0.1

static float get_f32(const uint8_t *p)
{
    float f;
    memcpy(&f, p, sizeof f);
    return f;
}

/* The binary form's structure, or NULL when it is not a valid one. */
static nesf_structure *from_binary(const uint8_t *d, size_t n)
{
    if (n < 2 + 36) return NULL;
    nesf_structure *s = nesf_structure_new(64);
    if (!s) return NULL;
    for (int i = 0; i < 9; i++) s->lat.m[i / 3][i % 3] = get_f32(d + 2 + 4 * i);
    const uint8_t *p = d + 2 + 36, *end = d + n;
    for (; end - p >= 13 && s->n < 64; p += 13) {
        double f[3] = {get_f32(p + 1), get_f32(p + 5), get_f32(p + 9)};
        nesf_structure_add_site(s, 1 + p[0] % NESF_MAX_Z, f, NULL);
    }
    if (nesf_structure_validate(s, NULL)) {
        nesf_structure_free(s);
        return NULL;
    }
    return s;
}

static void check(const nesf_structure *s, double symprec)
{
    char sym[32] = "x";
    int num = nesf_structure_spacegroup(s, symprec, sym, sizeof sym);
    if (num < 0 || num > 230 || (num == 0) != (sym[0] == 0)) abort();
    nesf_symmetry *y = NULL;
    nesf_error err = {0};
    int rc = nesf_structure_symmetry(s, symprec, &y, &err);
    if (rc && !err.msg[0]) abort();
    if (!rc && (!y || y->n_ops < 1 || y->n_ops > 192 || y->number < 1 || y->number > 230)) abort();
    /* a cell refused by one is refused by the other */
    if (rc == NESF_ERR_INVALID && strstr(err.msg, "degenerate") && num) abort();
    nesf_symmetry_free(y);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    if (data[0] == 'S') {
        nesf_structure **list;
        int n;
        nesf_error err;
        if (nesf_sio_read_buffer((const char *)data + 1, size - 1, "fuzz", NESF_FORMAT_AUTO, &list,
                                 &n, &err))
            return 0;
        for (int i = 0; i < n && i < 4; i++) check(list[i], DAEMON_SYMPREC);
        nesf_structure_list_free(list, n);
        return 0;
    }
    nesf_structure *s = from_binary(data, size);
    if (!s) return 0;
    check(s, DAEMON_SYMPREC);
    check(s, pow(10, -3.0 + 3.0 * (size > 1 ? data[1] : 0) / 255.0)); /* 1e-3 .. 1 Å */
    nesf_structure_free(s);
    return 0;
}

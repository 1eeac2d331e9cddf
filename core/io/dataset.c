/* dataset.c - JSON Lines datasets and their species vocabularies. */
#include "dataset.h"
#include "elements.h"
#include "sio.h"
#include "sjson.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int nesf_vocab_load(const char *meta_path, nesf_vocab *v, nesf_error *err)
{
    memset(v, 0, sizeof *v);
    json_error_t je;
    json_t *root = json_load_file(meta_path, 0, &je);
    if (!root)
        return nesf_fail(err, je.line > 0 ? NESF_ERR_PARSE : NESF_ERR_IO, "%s:%d: %s", meta_path,
                         je.line, je.text);
    int rc = NESF_OK;
    const json_t *name = json_object_get(root, "name");
    const json_t *sp = json_object_get(root, "species");
    const json_t *num = json_object_get(root, "num_species");
    if (!json_is_array(sp) || json_array_size(sp) == 0 || json_array_size(sp) > NESF_VOCAB_MAX) {
        rc = nesf_fail(err, NESF_ERR_FORMAT, "%s: \"species\" must be an array of 1..%d symbols",
                       meta_path, NESF_VOCAB_MAX);
        goto done;
    }
    if (num && (!json_is_integer(num) || json_integer_value(num) != (json_int_t)json_array_size(sp))) {
        rc = nesf_fail(err, NESF_ERR_FORMAT, "%s: num_species does not match the species list",
                       meta_path);
        goto done;
    }
    if (json_is_string(name)) snprintf(v->name, sizeof v->name, "%s", json_string_value(name));
    v->n = (int)json_array_size(sp);
    for (int i = 0; i < v->n; i++) {
        const char *sym = json_string_value(json_array_get(sp, (size_t)i));
        int z = sym ? nesf_element_z(sym) : 0;
        if (!z) {
            rc = nesf_fail(err, NESF_ERR_NOTFOUND, "%s: species[%d]: unknown element '%.16s'",
                           meta_path, i, sym ? sym : "(not a string)");
            goto done;
        }
        if (nesf_vocab_class(v, z) >= 0) {
            rc = nesf_fail(err, NESF_ERR_FORMAT, "%s: element %s listed twice", meta_path, sym);
            goto done;
        }
        v->z[i] = z;
    }
done:
    json_decref(root);
    if (rc) memset(v, 0, sizeof *v);
    return rc;
}

int nesf_vocab_class(const nesf_vocab *v, int z)
{
    for (int i = 0; i < v->n; i++)
        if (v->z[i] == z) return i;
    return -1;
}

int nesf_dataset_load(const char *path, nesf_dataset *d, nesf_error *err)
{
    memset(d, 0, sizeof *d);
    char *text;
    size_t len;
    int rc = nesf_sio_slurp(path, &text, &len, err);
    if (rc) return rc;
    rc = nesf_sjson_read_lines(text, len, path, &d->s, &d->n, err);
    free(text);
    return rc;
}

void nesf_dataset_free(nesf_dataset *d)
{
    if (!d) return;
    nesf_structure_list_free(d->s, d->n);
    d->s = NULL;
    d->n = 0;
}

void nesf_structures_bbox(nesf_structure *const *s, int n, float lo[3], float hi[3])
{
    for (int k = 0; k < 3; k++) {
        lo[k] = INFINITY;
        hi[k] = -INFINITY;
    }
    for (int i = 0; i < n; i++)
        for (int a = 0; a < s[i]->n; a++)
            for (int k = 0; k < 3; k++) {
                float c = (float)s[i]->cart[3 * a + k];
                lo[k] = c < lo[k] ? c : lo[k];
                hi[k] = c > hi[k] ? c : hi[k];
            }
}

/* libFuzzer target: the JSON structure readers (one object or an array,
 * and JSON Lines; the first byte picks which) and the JSON writers on what
 * was read. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sio.h"
#include "sjson.h"
#include "structure.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    nesf_format fmt = data[0] & 1 ? NESF_FORMAT_JSONL : NESF_FORMAT_JSON;
    nesf_structure **list;
    int n;
    nesf_error err;
    if (nesf_sio_read_buffer((const char *)data + 1, size - 1, "fuzz.json", fmt, &list, &n, &err)) {
        if (!err.msg[0]) abort();
        return 0;
    }
    for (int i = 0; i < n; i++) {
        if (nesf_structure_validate(list[i], NULL)) abort();
        for (int style = NESF_SJSON_DATASET; style <= NESF_SJSON_PYMATGEN; style++) {
            json_t *j = nesf_sjson_to_json(list[i], (nesf_sjson_style)style, 0);
            if (!j) abort();
            nesf_structure *back;
            if (nesf_sjson_from_json(j, &back, &err)) abort();
            if (back->n != list[i]->n) abort();
            nesf_structure_free(back);
            json_decref(j);
        }
    }
    nesf_structure_list_free(list, n);
    return 0;
}

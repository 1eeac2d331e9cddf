/* libFuzzer target: the CIF reader on arbitrary bytes.  A structure that
 * was read must validate, and the P1 CIF written from it must read back
 * with the same number of sites (the writer/reader contract). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cif.h"
#include "structure.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    nesf_structure **list;
    int n;
    nesf_error err;
    if (nesf_cif_read((const char *)data, size, "fuzz.cif", &list, &n, &err)) {
        if (!err.msg[0]) abort(); /* every failure explains itself */
        return 0;
    }
    for (int i = 0; i < n; i++) {
        if (nesf_structure_validate(list[i], NULL)) abort();
        char *text = nesf_cif_write(list[i]);
        if (!text) abort();
        nesf_structure **back;
        int nb;
        if (nesf_cif_read(text, strlen(text), "fuzz-out.cif", &back, &nb, &err)) abort();
        if (nb != 1 || back[0]->n != list[i]->n) abort();
        nesf_structure_list_free(back, nb);
        free(text);
    }
    nesf_structure_list_free(list, n);
    return 0;
}

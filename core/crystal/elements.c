/* elements.c - the periodic table: lookups over the generated data of
 * elements_table.h (scripts/gen_elements.py). */
#include "elements.h"

#include <ctype.h>
#include <string.h>

#include "elements_table.h"

const nesf_element *nesf_element_get(int z)
{
    return z >= 1 && z <= NESF_MAX_Z ? &table[z - 1] : NULL;
}

int nesf_element_z(const char *symbol)
{
    if (!symbol || !isalpha((unsigned char)symbol[0])) return 0;
    char s[3] = {(char)toupper((unsigned char)symbol[0]), 0, 0};
    if (symbol[1]) {
        if (symbol[2] || !isalpha((unsigned char)symbol[1])) return 0;
        s[1] = (char)tolower((unsigned char)symbol[1]);
    }
    for (int i = 0; i < NESF_MAX_Z; i++)
        if (!strcmp(table[i].symbol, s)) return i + 1;
    return 0;
}

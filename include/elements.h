/* elements.h - the periodic table, Z = 1..118. */
#ifndef NESF_ELEMENTS_H
#define NESF_ELEMENTS_H

#define NESF_MAX_Z 118

typedef struct nesf_element {
    int z;
    const char *symbol;     /* "Fe" */
    const char *name;       /* "Iron" */
    unsigned rgb;           /* CPK / Jmol colour, 0xRRGGBB */
    double covalent_radius; /* Å */
    double electronegativity; /* Pauling; 0 where undefined */
} nesf_element;

/* NULL when z is outside 1..118. */
const nesf_element *nesf_element_get(int z);
/* Z for a symbol ("Fe", case-insensitive on the second letter as CIF
 * writers vary), or 0 when unknown. */
int nesf_element_z(const char *symbol);

#endif

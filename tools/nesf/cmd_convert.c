#include <stdio.h>

#include "commands.h"

int nesf_cmd_convert(int argc, char **argv)
{
    (void)argc; (void)argv;
    fprintf(stderr, "nesf convert: not built yet\n");
    return 1;
}

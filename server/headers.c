#include "headers.h"

#include <string.h>
#include <uuid/uuid.h>

int nesfd_request_id_sane(const char *s, size_t n)
{
    if (n == 0 || n > NESFD_REQUEST_ID_MAX) return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        int alnum = (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
        if (!alnum && (!ch || !strchr("-_.:", ch))) return 0;
    }
    return 1;
}

void nesfd_request_id(const char *sent, size_t n, char out[NESFD_REQUEST_ID_SIZE])
{
    if (sent && nesfd_request_id_sane(sent, n)) {
        memcpy(out, sent, n);
        out[n] = 0;
        return;
    }
    uuid_t u;
    uuid_generate_random(u);
    uuid_unparse_lower(u, out);
}

const char *nesfd_allowed_origin(const char (*origins)[256], int n_origins, const char *origin,
                                 size_t n)
{
    if (!origin) return NULL;
    for (int i = 0; i < n_origins; i++) {
        if (!strcmp(origins[i], "*")) return "*";
        if (strlen(origins[i]) == n && !memcmp(origins[i], origin, n)) return origins[i];
    }
    return NULL;
}

int nesfd_oip_path(const char *path)
{
    return !strncmp(path, "/v2", 3) && (path[3] == '/' || path[3] == '?' || !path[3]);
}

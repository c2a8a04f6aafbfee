/* weft — error names and messages, generated from WEFT_OWN_ERRNO_MAP. */
#include "weft/error.h"

#include <string.h>

const char *weft_strerror(int err)
{
    switch (err) {
    case 0:
        return "success";
#define WEFT__ERR_MSG(name, off, msg)                                                              \
    case WEFT_##name:                                                                              \
        return msg;
        WEFT_OWN_ERRNO_MAP(WEFT__ERR_MSG)
#undef WEFT__ERR_MSG
    default:
        break;
    }
    if (err < 0 && err > -4096) {
        /* strerrordesc_np is thread-safe and NULL for unknown values. */
        const char *s = strerrordesc_np(-err);
        if (s != NULL)
            return s;
    }
    return "unknown error";
}

const char *weft_err_name(int err)
{
    switch (err) {
    case 0:
        return "OK";
#define WEFT__ERR_NAME(name, off, msg)                                                             \
    case WEFT_##name:                                                                              \
        return "WEFT_" #name;
        WEFT_OWN_ERRNO_MAP(WEFT__ERR_NAME)
#undef WEFT__ERR_NAME
    default:
        break;
    }
    if (err < 0 && err > -4096) {
        const char *s = strerrorname_np(-err);
        if (s != NULL)
            return s;
    }
    return "UNKNOWN";
}

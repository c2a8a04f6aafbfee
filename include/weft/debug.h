/* weft — logging and debug hooks.
 *
 * weft never writes to stderr behind your back except through the log
 * handler, whose default prints "weft: <level>: <message>" to stderr.
 */
#ifndef WEFT_DEBUG_H
#define WEFT_DEBUG_H

#include "weft/types.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { WEFT_LOG_DEBUG = 0, WEFT_LOG_INFO = 1, WEFT_LOG_WARN = 2, WEFT_LOG_ERROR = 3 };

typedef void (*weft_log_fn)(int level, const char *message, void *arg);

/* Replace the process-wide log handler; NULL restores the default.
 * The handler may be called from any thread, concurrently.
 * Returns 0.  Thread: any (set it before starting loops).  Suspends: no. */
WEFT_API int weft_set_log_handler(weft_log_fn fn, void *arg);

/* true when WEFT_DEBUG=1 (or any value other than "0"/"") is set in the
 * environment.  Thread: any.  Suspends: no. */
WEFT_API bool weft_debug_env(void);

#ifdef __cplusplus
}
#endif

#endif /* WEFT_DEBUG_H */

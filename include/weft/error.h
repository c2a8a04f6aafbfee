/* weft — error codes.
 *
 * Every weft function that can fail returns an int: 0 on success or a
 * negative code.  System errors pass through as -errno (-EINVAL, -ENOMEM,
 * -EBADF, ...).  asyncio's CancelledError and TimeoutError map to
 * WEFT_ECANCELED (-ECANCELED) and WEFT_ETIMEDOUT (-ETIMEDOUT).  weft's own
 * conditions live in one block far below errno's range (errno values are
 * < 4096 on Linux), so a code is never ambiguous.
 *
 * The table below is the single definition: it generates the enum, the
 * names returned by weft_err_name() and the messages of weft_strerror().
 */
#ifndef WEFT_ERROR_H
#define WEFT_ERROR_H

#include <errno.h>

#include "weft/types.h"

#ifdef __cplusplus
extern "C" {
#endif

/* First code of weft's own block.  Linux errno values stay below 4096
 * (MAX_ERRNO), so -20000 and down can never collide with -errno. */
#define WEFT__ERR_BASE (-20000)

/* X(name, offset, message) — weft's own codes. */
#define WEFT_OWN_ERRNO_MAP(X)                                                                      \
    X(EINVALSTATE, 0, "invalid state for this operation")                                          \
    X(EINCOMPLETE, 1, "incomplete: fewer bytes or items than requested")                           \
    X(ELIMIT, 2, "limit exceeded")                                                                 \
    X(EQUEUEEMPTY, 3, "queue is empty")                                                            \
    X(EQUEUEFULL, 4, "queue is full")                                                              \
    X(EQSHUTDOWN, 5, "queue is shut down")                                                         \
    X(EBROKEN, 6, "barrier is broken")                                                             \
    X(ECLOSED, 7, "object is closed")                                                              \
    X(EGROUP, 8, "one or more tasks of the group failed")

enum {
    WEFT_OK = 0,
    /* asyncio.CancelledError */
    WEFT_ECANCELED = -ECANCELED,
    /* asyncio.TimeoutError / TimeoutError */
    WEFT_ETIMEDOUT = -ETIMEDOUT,
    /* Plain argument errors are -EINVAL; the alias reads better in tables. */
    WEFT_EINVAL = -EINVAL,
#define WEFT__ERR_ENUM(name, off, msg) WEFT_##name = WEFT__ERR_BASE - (off),
    WEFT_OWN_ERRNO_MAP(WEFT__ERR_ENUM)
#undef WEFT__ERR_ENUM
};

/* How many own codes there are; the block is WEFT__ERR_BASE down to
 * WEFT__ERR_LAST inclusive. */
#define WEFT__ERR_COUNT_ONE(name, off, msg) +1
enum { WEFT__ERR_COUNT = 0 WEFT_OWN_ERRNO_MAP(WEFT__ERR_COUNT_ONE) };
#undef WEFT__ERR_COUNT_ONE
#define WEFT__ERR_LAST (WEFT__ERR_BASE - WEFT__ERR_COUNT + 1)

#if !defined(__cplusplus)
_Static_assert(WEFT__ERR_BASE < -4096 && WEFT__ERR_LAST <= WEFT__ERR_BASE,
               "weft's own error codes must stay outside errno's range");
#endif

/* Human-readable message for any code weft returns (own codes, -errno,
 * or 0).  Never NULL; unknown codes give "unknown error".
 * Thread: any.  Suspends: no. */
WEFT_API const char *weft_strerror(int err);

/* Symbolic name ("WEFT_ECLOSED", "EINVAL", "OK", ...).  Never NULL;
 * unknown codes give "UNKNOWN".
 * Thread: any.  Suspends: no. */
WEFT_API const char *weft_err_name(int err);

#ifdef __cplusplus
}
#endif

#endif /* WEFT_ERROR_H */

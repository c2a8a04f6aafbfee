/* weft — common types shared by every public header.
 *
 * Every object is an opaque handle; no struct layout is public.  Times are
 * int64_t nanoseconds: durations relative, deadlines absolute on the loop
 * clock (CLOCK_MONOTONIC, see weft_loop_time()); -1 means "none".
 */
#ifndef WEFT_TYPES_H
#define WEFT_TYPES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__) || defined(__clang__)
#define WEFT_API __attribute__((visibility("default")))
#else
#define WEFT_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef struct weft_runtime weft_runtime_t;
typedef struct weft_loop weft_loop_t;
typedef struct weft_handle weft_handle_t;
typedef struct weft_future weft_future_t;
typedef struct weft_task weft_task_t;
typedef struct weft_lock weft_lock_t;
typedef struct weft_event weft_event_t;
typedef struct weft_cond weft_cond_t;
typedef struct weft_sem weft_sem_t;
typedef struct weft_barrier weft_barrier_t;
typedef struct weft_queue weft_queue_t;

/* A task body or a blocking call: returns 0 and stores *result, or returns
 * a negative error code (the task/future then fails with that code). */
typedef int (*weft_fn)(void *arg, void **result);

/* A loop callback. */
typedef void (*weft_callback_fn)(void *arg);

#ifdef __cplusplus
}
#endif

#endif /* WEFT_TYPES_H */

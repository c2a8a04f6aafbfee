/* weft — the log handler, check failures and thread identity. */
#include "sched/common.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The handler and its argument change together, so they live in one
 * immutable record swapped atomically.  Records are never freed: a
 * handler change is rare and a reader on another thread may still be
 * using the old one. */
typedef struct log_sink {
    weft_log_fn fn;
    void *arg;
    struct log_sink *older; /* every record ever installed, newest first */
} log_sink_t;

static _Atomic(log_sink_t *) current_sink;

/* Every record stays on this list so that it remains reachable (and so is
 * not reported as leaked) after it has been replaced. */
static _Atomic(log_sink_t *) all_sinks;

int weft_set_log_handler(weft_log_fn fn, void *arg)
{
    log_sink_t *sink = NULL;
    if (fn != NULL) {
        /* Plain malloc: this record is deliberately immortal and must not
         * count against the allocation-failure seam. */
        sink = malloc(sizeof *sink);
        if (sink == NULL)
            return -ENOMEM;
        sink->fn = fn;
        sink->arg = arg;
        sink->older = atomic_load_explicit(&all_sinks, memory_order_relaxed);
        /* Relaxed: the list is only kept for reachability, never walked. */
        while (!atomic_compare_exchange_weak_explicit(&all_sinks, &sink->older, sink,
                                                      memory_order_relaxed, memory_order_relaxed))
            ;
    }
    /* release: publishes the record's fields; pairs with the acquire load
     * in weft__log(). */
    log_sink_t *old = atomic_exchange_explicit(&current_sink, sink, memory_order_acq_rel);
    (void)old; /* kept on all_sinks: a reader may still be using it */
    return 0;
}

static const char *level_name(int level)
{
    switch (level) {
    case WEFT_LOG_DEBUG:
        return "debug";
    case WEFT_LOG_INFO:
        return "info";
    case WEFT_LOG_WARN:
        return "warning";
    default:
        return "error";
    }
}

void weft__log(int level, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);

    log_sink_t *sink = atomic_load_explicit(&current_sink, memory_order_acquire);
    if (sink != NULL) {
        sink->fn(level, buf, sink->arg);
        return;
    }
    fprintf(stderr, "weft: %s: %s\n", level_name(level), buf);
}

bool weft_debug_env(void)
{
    const char *v = getenv("WEFT_DEBUG");
    return v != NULL && v[0] != '\0' && strcmp(v, "0") != 0;
}

void weft__check_failed(const char *file, int line, const char *expr)
{
    fprintf(stderr, "weft: internal check failed at %s:%d: %s\n", file, line, expr);
    fflush(stderr);
    abort();
}

static _Thread_local char thread_anchor;

__attribute__((noinline)) const void *weft__thread_id(void)
{
    /* The empty asm keeps the compiler from caching the TLS address across
     * calls in a caller that may have migrated (DESIGN.md "Coroutines"). */
    const void *p = &thread_anchor;
    __asm__ volatile("" : "+r"(p));
    return p;
}

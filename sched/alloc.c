/* weft — the allocation seam.
 *
 * With WEFT_USE_JEMALLOC, weft's own objects come from jemalloc through its
 * non-standard API (mallocx/dallocx), which skips the malloc symbol
 * lookup and works whether or not the application's malloc is jemalloc.
 * Sanitizer builds use libc so ASan/TSan see every allocation.
 */
#include "sched/common.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#ifdef WEFT_USE_JEMALLOC
#include <jemalloc/jemalloc.h>
#endif

/* Countdown for the test seam; 0 = off.  Relaxed is enough: the seam is
 * documented as single-threaded, the atomic only keeps TSan quiet when a
 * test's helper threads allocate too. */
static atomic_long fail_countdown;

void weft__alloc_fail_nth(long n)
{
    atomic_store_explicit(&fail_countdown, n < 0 ? 0 : n, memory_order_relaxed);
}

bool weft__alloc_should_fail(void)
{
    long n = atomic_load_explicit(&fail_countdown, memory_order_relaxed);
    if (weft__likely(n == 0))
        return false;
    /* Only the allocation that moves the countdown from 1 to 0 fails. */
    long prev = atomic_fetch_sub_explicit(&fail_countdown, 1, memory_order_relaxed);
    if (prev == 1)
        return true;
    if (prev <= 0)
        atomic_store_explicit(&fail_countdown, 0, memory_order_relaxed);
    return false;
}

void *weft__alloc(size_t size)
{
    if (weft__alloc_should_fail())
        return NULL;
#ifdef WEFT_USE_JEMALLOC
    return mallocx(size ? size : 1, 0);
#else
    return malloc(size ? size : 1);
#endif
}

void *weft__calloc(size_t n, size_t size)
{
    if (size != 0 && n > SIZE_MAX / size)
        return NULL;
    if (weft__alloc_should_fail())
        return NULL;
#ifdef WEFT_USE_JEMALLOC
    size_t bytes = n * size;
    return mallocx(bytes != 0 ? bytes : 1, MALLOCX_ZERO);
#else
    return calloc(n ? n : 1, size ? size : 1);
#endif
}

void *weft__realloc(void *p, size_t size)
{
    if (weft__alloc_should_fail())
        return NULL;
#ifdef WEFT_USE_JEMALLOC
    if (p == NULL)
        return mallocx(size ? size : 1, 0);
    return rallocx(p, size ? size : 1, 0);
#else
    return realloc(p, size ? size : 1);
#endif
}

void *weft__alloc_aligned(size_t align, size_t size)
{
    if (weft__alloc_should_fail())
        return NULL;
    size = (size + align - 1) / align * align; /* aligned_alloc wants a multiple */
#ifdef WEFT_USE_JEMALLOC
    return mallocx(size, MALLOCX_ALIGN(align));
#else
    return aligned_alloc(align, size);
#endif
}

void weft__free(void *p)
{
    if (p == NULL)
        return;
#ifdef WEFT_USE_JEMALLOC
    dallocx(p, 0);
#else
    free(p);
#endif
}

char *weft__strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = weft__alloc(n);
    if (d != NULL)
        memcpy(d, s, n);
    return d;
}

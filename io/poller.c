/* weft — epoll + eventfd.  See poller.h. */
#include "io/poller.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

/* Process-wide: once epoll_pwait2 reports ENOSYS, stop trying it.
 * Relaxed: a stale `true` only costs one more ENOSYS round trip. */
static atomic_bool no_pwait2;

int weft__poller_init(weft_poller_t *p)
{
    p->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (p->epfd < 0)
        return -errno;
    p->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (p->evfd < 0) {
        int err = -errno;
        close(p->epfd);
        p->epfd = -1;
        return err;
    }
    int rc = weft__poller_ctl(p, EPOLL_CTL_ADD, p->evfd, EPOLLIN, WEFT__POLLER_WAKE_TAG);
    if (rc != 0) {
        close(p->evfd);
        close(p->epfd);
        p->epfd = p->evfd = -1;
        return rc;
    }
    return 0;
}

void weft__poller_close(weft_poller_t *p)
{
    if (p->evfd >= 0)
        close(p->evfd);
    if (p->epfd >= 0)
        close(p->epfd);
    p->evfd = p->epfd = -1;
}

int weft__poller_wait(weft_poller_t *p, struct epoll_event *evs, int max, int64_t timeout_ns)
{
    int n;
    if (timeout_ns != 0 && !atomic_load_explicit(&no_pwait2, memory_order_relaxed)) {
        struct timespec ts, *tsp = NULL;
        if (timeout_ns > 0) {
            ts.tv_sec = (time_t)(timeout_ns / 1000000000);
            ts.tv_nsec = (long)(timeout_ns % 1000000000);
            tsp = &ts;
        }
        n = epoll_pwait2(p->epfd, evs, max, tsp, NULL);
        if (n >= 0)
            return n;
        int err = errno; /* read at once: nothing may run in between */
        if (err == EINTR)
            return 0;
        if (err != ENOSYS)
            return -err;
        atomic_store_explicit(&no_pwait2, true, memory_order_relaxed);
    }
    int ms;
    if (timeout_ns < 0)
        ms = -1;
    else if (timeout_ns > (int64_t)INT32_MAX * 1000000)
        ms = INT32_MAX;
    else /* round up: waking early would make the loop spin, never run a timer early */
        ms = (int)((timeout_ns + 999999) / 1000000);
    n = epoll_wait(p->epfd, evs, max, ms);
    if (n >= 0)
        return n;
    int err = errno;
    return err == EINTR ? 0 : -err;
}

int weft__poller_wake(weft_poller_t *p)
{
    uint64_t one = 1;
    for (;;) {
        ssize_t w = write(p->evfd, &one, sizeof one);
        if (w == (ssize_t)sizeof one)
            return 0;
        int err = errno;
        if (err == EINTR)
            continue;
        /* EAGAIN: the counter is at its maximum, so the loop is certainly
         * going to wake; that is all a wake needs. */
        return err == EAGAIN ? 0 : -err;
    }
}

uint64_t weft__poller_ack_wake(weft_poller_t *p)
{
    uint64_t v;
    /* Nonblocking read returns the sum of the writes and resets the
     * counter; EAGAIN means nothing was pending. */
    for (;;) {
        if (read(p->evfd, &v, sizeof v) == (ssize_t)sizeof v)
            return v;
        if (errno != EINTR)
            return 0;
    }
}

int weft__poller_ctl(weft_poller_t *p, int op, int fd, uint32_t events, uint64_t tag)
{
    struct epoll_event ev = {.events = events, .data.u64 = tag};
    if (epoll_ctl(p->epfd, op, fd, &ev) != 0)
        return -errno;
    return 0;
}

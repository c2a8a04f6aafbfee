/* weft — the epoll instance and eventfd waker a loop sleeps in (private).
 *
 * Thread: weft__poller_wake() from any thread; everything else from the
 * loop thread.  The eventfd is registered level-triggered with the data tag
 * WEFT__POLLER_WAKE_TAG; the loop reads it (weft__poller_ack_wake) when
 * epoll reports it, which rearms it.
 */
#ifndef WEFT_IO_POLLER_H
#define WEFT_IO_POLLER_H

#include <stdint.h>
#include <sys/epoll.h>

#define WEFT__POLLER_WAKE_TAG UINT64_MAX

typedef struct weft_poller {
    int epfd;
    int evfd;
} weft_poller_t;

/* 0 or -errno. */
int weft__poller_init(weft_poller_t *p);
void weft__poller_close(weft_poller_t *p);

/* Wait up to timeout_ns (-1 = forever, 0 = poll) with nanosecond precision
 * (epoll_pwait2; where the kernel lacks it, epoll_wait rounding up to whole
 * milliseconds so a timer is never early).  Returns the number of events,
 * 0 on timeout or EINTR, or -errno. */
int weft__poller_wait(weft_poller_t *p, struct epoll_event *evs, int max, int64_t timeout_ns);

/* Make the next (or current) wait return.  0 or -errno. */
int weft__poller_wake(weft_poller_t *p);

/* Consume pending wakeups after the wake tag was reported; returns how
 * many writes were consumed (0 if none was pending). */
uint64_t weft__poller_ack_wake(weft_poller_t *p);

/* epoll_ctl with data.u64 = tag.  0 or -errno. */
int weft__poller_ctl(weft_poller_t *p, int op, int fd, uint32_t events, uint64_t tag);

#endif /* WEFT_IO_POLLER_H */

/* weft — fd registrations for add_reader/add_writer (private).
 *
 * Each watched fd gets one registration, added once to the loop's epoll,
 * edge-triggered, for both directions (DESIGN.md "I/O with stealing").  The
 * epoll data carries (generation << 32 | fd), so an event that arrives for
 * a registration that has since been removed — or for a new one on a
 * reused fd number — is recognised as stale and ignored.
 *
 * asyncio's add_reader is level-triggered: the callback runs again every
 * iteration while data remains.  Over an edge-triggered registration that
 * is kept by re-checking readiness with poll(fd, 0) after each callback and
 * queueing it again while the fd stays ready.  Adding a callback to an
 * existing registration re-arms it with EPOLL_CTL_MOD, which makes the
 * kernel report current readiness again, so an edge that passed while
 * nobody listened is not lost.
 *
 * Thread: loop thread only.
 */
#ifndef WEFT_IO_FDWATCH_H
#define WEFT_IO_FDWATCH_H

#include <stddef.h>
#include <stdint.h>

#include "sched/handle.h"

enum { WEFT__FD_READ = 0, WEFT__FD_WRITE = 1 };

typedef struct weft_fdreg {
    int fd;
    uint32_t gen;
    weft_callback_fn fn[2]; /* NULL: no callback for that direction */
    void *arg[2];
    weft_handle_t h[2]; /* embedded, queued in the ready FIFO when due */
    bool queued[2];
    bool dispatching; /* a callback of this registration is running */
    bool zombie;      /* removed from the table; free when idle */
} weft_fdreg_t;

typedef struct weft_fdtable {
    weft_fdreg_t **regs; /* indexed by fd */
    size_t cap;
    uint32_t next_gen;
} weft_fdtable_t;

void weft__fdtable_init(weft_fdtable_t *t);
/* Free every registration (the epoll instance is closed by the caller). */
void weft__fdtable_destroy(weft_fdtable_t *t);

/* 0, -EINVAL, -ENOMEM, -EBADF, -EPERM (fd type epoll cannot watch). */
int weft__fd_add(weft_loop_t *loop, int fd, int dir, weft_callback_fn fn, void *arg);
/* 1 removed, 0 none. */
int weft__fd_remove(weft_loop_t *loop, int fd, int dir);

/* An epoll event with data.u64 == tag: queue the due callbacks. */
void weft__fd_event(weft_loop_t *loop, uint64_t tag, uint32_t events);

/* Run a claimed WEFT__HK_FD handle.  Returns true if a callback ran. */
bool weft__fd_run(weft_loop_t *loop, weft_handle_t *h);

/* A queued FD handle dropped without running (loop close). */
void weft__fd_drop(weft_handle_t *h);

#endif /* WEFT_IO_FDWATCH_H */

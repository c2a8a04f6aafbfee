/* weft — fd registrations for add_reader/add_writer.  See fdwatch.h. */
#include "io/fdwatch.h"

#include <poll.h>
#include <string.h>

#include "sched/loop.h"

#define WATCH_EVENTS (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET)

static inline uint64_t make_tag(const weft_fdreg_t *r)
{
    return ((uint64_t)r->gen << 32) | (uint32_t)r->fd;
}

void weft__fdtable_init(weft_fdtable_t *t)
{
    t->regs = NULL;
    t->cap = 0;
    t->next_gen = 1;
}

static void reg_free_if_idle(weft_fdreg_t *r)
{
    if (r->zombie && !r->queued[0] && !r->queued[1] && !r->dispatching)
        weft__free(r);
}

void weft__fdtable_destroy(weft_fdtable_t *t)
{
    for (size_t i = 0; i < t->cap; i++) {
        weft_fdreg_t *r = t->regs[i];
        if (r == NULL)
            continue;
        r->zombie = true;
        reg_free_if_idle(r);
    }
    weft__free(t->regs);
    t->regs = NULL;
    t->cap = 0;
}

static int table_reserve(weft_fdtable_t *t, int fd)
{
    if ((size_t)fd < t->cap)
        return 0;
    size_t cap = t->cap ? t->cap : 64;
    while (cap <= (size_t)fd)
        cap *= 2;
    weft_fdreg_t **regs = weft__realloc(t->regs, cap * sizeof *regs);
    if (regs == NULL)
        return -ENOMEM;
    memset(regs + t->cap, 0, (cap - t->cap) * sizeof *regs);
    t->regs = regs;
    t->cap = cap;
    return 0;
}

static void init_embedded(weft_loop_t *loop, weft_fdreg_t *r, int dir)
{
    weft_handle_t *h = &r->h[dir];
    memset(h, 0, sizeof *h);
    h->loop = loop;
    h->kind = WEFT__HK_FD;
    h->arg = r;
    h->seq = (uint64_t)dir;
    h->when = -1;
    atomic_init(&h->refs, 1);
    atomic_init(&h->state, WEFT__H_PENDING);
}

static weft_fdreg_t *reg_new(weft_loop_t *loop, int fd)
{
    weft_fdreg_t *r = weft__calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->fd = fd;
    r->gen = loop->fds.next_gen++;
    if (loop->fds.next_gen == 0) /* generation 0 is never used */
        loop->fds.next_gen = 1;
    init_embedded(loop, r, WEFT__FD_READ);
    init_embedded(loop, r, WEFT__FD_WRITE);
    return r;
}

/* Drop r from the table and epoll; it is freed once no queued handle or
 * running callback refers to it. */
static void reg_retire(weft_loop_t *loop, weft_fdreg_t *r)
{
    /* ENOENT/EBADF: the user closed the fd first, and closing already
     * removed it from epoll; nothing else to undo. */
    (void)weft__poller_ctl(&loop->poller, EPOLL_CTL_DEL, r->fd, 0, 0);
    loop->fds.regs[r->fd] = NULL;
    r->zombie = true;
    reg_free_if_idle(r);
}

int weft__fd_add(weft_loop_t *loop, int fd, int dir, weft_callback_fn fn, void *arg)
{
    int rc = table_reserve(&loop->fds, fd);
    if (rc != 0)
        return rc;
    weft_fdreg_t *r = loop->fds.regs[fd];
    if (r != NULL) {
        /* Re-arm: MOD makes epoll report current readiness again.  ENOENT
         * means the fd was closed (dropping it from epoll) and the number
         * reused: start over with a fresh registration and generation. */
        rc = weft__poller_ctl(&loop->poller, EPOLL_CTL_MOD, fd, WATCH_EVENTS, make_tag(r));
        if (rc == 0) {
            r->fn[dir] = fn;
            r->arg[dir] = arg;
            return 0;
        }
        if (rc != -ENOENT)
            return rc;
        reg_retire(loop, r);
    }
    r = reg_new(loop, fd);
    if (r == NULL)
        return -ENOMEM;
    r->fn[dir] = fn;
    r->arg[dir] = arg;
    rc = weft__poller_ctl(&loop->poller, EPOLL_CTL_ADD, fd, WATCH_EVENTS, make_tag(r));
    if (rc != 0) {
        weft__free(r);
        return rc;
    }
    loop->fds.regs[fd] = r;
    return 0;
}

int weft__fd_remove(weft_loop_t *loop, int fd, int dir)
{
    if ((size_t)fd >= loop->fds.cap)
        return 0;
    weft_fdreg_t *r = loop->fds.regs[fd];
    if (r == NULL || r->fn[dir] == NULL)
        return 0;
    r->fn[dir] = NULL;
    r->arg[dir] = NULL;
    if (r->fn[1 - dir] == NULL)
        reg_retire(loop, r);
    return 1;
}

static void queue_dir(weft_loop_t *loop, weft_fdreg_t *r, int dir)
{
    if (r->fn[dir] == NULL || r->queued[dir])
        return;
    r->queued[dir] = true;
    atomic_store_explicit(&r->h[dir].state, WEFT__H_PENDING, memory_order_relaxed);
    weft__loop_ready_push(loop, &r->h[dir]);
}

void weft__fd_event(weft_loop_t *loop, uint64_t tag, uint32_t events)
{
    int fd = (int)(uint32_t)tag;
    uint32_t gen = (uint32_t)(tag >> 32);
    if (fd < 0 || (size_t)fd >= loop->fds.cap)
        return;
    weft_fdreg_t *r = loop->fds.regs[fd];
    if (r == NULL || r->gen != gen)
        return; /* stale: removed, or a newer registration for a reused fd */
    /* Errors and hangups wake both sides, as asyncio's selector does: the
     * callback's own read/write then reports what happened. */
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        queue_dir(loop, r, WEFT__FD_READ);
    if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
        queue_dir(loop, r, WEFT__FD_WRITE);
}

static bool still_ready(int fd, int dir)
{
    struct pollfd p = {.fd = fd, .events = dir == WEFT__FD_READ ? POLLIN : POLLOUT};
    int n;
    do
        n = poll(&p, 1, 0);
    while (n < 0 && errno == EINTR);
    if (n <= 0)
        return false;
    if (p.revents & POLLNVAL)
        return false;
    return (p.revents & (p.events | POLLHUP | POLLERR)) != 0;
}

bool weft__fd_run(weft_loop_t *loop, weft_handle_t *h)
{
    weft_fdreg_t *r = h->arg;
    int dir = (int)h->seq;
    r->queued[dir] = false;
    weft_callback_fn fn = r->zombie ? NULL : r->fn[dir];
    if (fn == NULL) {
        reg_free_if_idle(r);
        return false;
    }
    r->dispatching = true;
    fn(r->arg[dir]);
    r->dispatching = false;
    /* Level semantics: while the fd stays ready and the callback is still
     * wanted, run it again next iteration. */
    if (!r->zombie && r->fn[dir] != NULL && still_ready(r->fd, dir))
        queue_dir(loop, r, dir);
    reg_free_if_idle(r);
    return true;
}

void weft__fd_drop(weft_handle_t *h)
{
    weft_fdreg_t *r = h->arg;
    r->queued[(int)h->seq] = false;
    reg_free_if_idle(r);
}

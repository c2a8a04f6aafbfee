/* Tests of the coroutine switch (sched/coro.h) and coroutine stacks
 * (sched/stack.h): exact step order across switches, many coroutines,
 * migration between threads (errno and TLS seen through non-inlined
 * accessors), callee-saved registers and FP control words, the exit path,
 * and stacks: sizes, the per-worker cache, the canary, the guard page, slabs
 * past the guard cap, and how little a parked coroutine touches.
 *
 * Nothing here calls a cmocka assert inside a coroutine or a helper thread:
 * those record what they see (or CHECK() into a check_rec_t) and the test
 * asserts on its own stack afterwards.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sched/common.h" /* weft__alloc_fail_nth() */
#include "sched/coro.h"
#include "sched/stack.h"
#include "test/support/check.h"

/* Sanitizer builds map a fresh stack every time (no cache, no slabs), so
 * assertions about reuse only hold elsewhere. */
#if defined(WEFT_ASAN) || defined(WEFT_TSAN)
#define SANITIZED 1
#else
#define SANITIZED 0
#endif

#define KiB ((size_t)1024)

/* ---- helpers ------------------------------------------------------------ */

typedef struct steps {
    int v[64];
    int n;
} steps_t;

static void step(steps_t *s, int x)
{
    if (s->n < (int)(sizeof s->v / sizeof s->v[0]))
        s->v[s->n] = x;
    s->n++;
}

static void assert_steps(const steps_t *s, int n)
{
    assert_int_equal(s->n, n);
    for (int i = 0; i < n; i++)
        assert_int_equal(s->v[i], i);
}

static weft_stack_t new_stack(size_t size)
{
    weft_stack_t st;
    assert_int_equal(weft__stack_alloc(NULL, size, &st), 0);
    return st;
}

/* A value the compiler cannot fold. */
__attribute__((noinline)) static uint64_t opaque(uint64_t x)
{
    __asm__ volatile("" : "+r"(x));
    return x;
}

/* Thread-local state read the way DESIGN.md requires after a possible
 * migration: through a non-inlined accessor behind a compiler barrier. */
static _Thread_local int tls_value;

__attribute__((noinline)) static int read_tls(void)
{
    __asm__ volatile("" ::: "memory");
    return tls_value;
}

__attribute__((noinline)) static int read_errno(void)
{
    __asm__ volatile("" ::: "memory");
    return errno;
}

__attribute__((noinline)) static void write_errno(int v)
{
    __asm__ volatile("" ::: "memory");
    errno = v;
}

/* pthread_self() is declared const, so a direct call may be reused across
 * a switch; this one may not. */
__attribute__((noinline)) static pthread_t current_thread(void)
{
    __asm__ volatile("" ::: "memory");
    return pthread_self();
}

static size_t resident_pages(const void *addr, size_t len)
{
    size_t ps = weft__stack_page_size();
    size_t n = len / ps;
    unsigned char vec[n];
    if (mincore((void *)addr, len, vec) != 0)
        return SIZE_MAX;
    size_t r = 0;
    for (size_t i = 0; i < n; i++)
        r += vec[i] & 1;
    return r;
}

static int count_mappings(void)
{
    FILE *f = fopen("/proc/self/maps", "re");
    if (f == NULL)
        return -1;
    int n = 0, ch;
    while ((ch = fgetc(f)) != EOF)
        n += ch == '\n';
    fclose(f);
    return n;
}

/* Does /proc/self/maps show a PROT_NONE mapping ending exactly at addr? */
static bool guard_below(const void *addr)
{
    FILE *f = fopen("/proc/self/maps", "re");
    if (f == NULL)
        return false;
    char line[512];
    bool found = false;
    while (fgets(line, sizeof line, f) != NULL) {
        unsigned long lo, hi;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) != 3)
            continue;
        if (hi == (unsigned long)(uintptr_t)addr && strncmp(perms, "---p", 4) == 0)
            found = true;
    }
    fclose(f);
    return found;
}

/* Fork; the child runs fn(arg) and _exits 0 if it returns.  Returns the
 * child's wait status. */
static int run_in_child(void (*fn)(void *), void *arg, int stderr_fd)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        /* cmocka catches these to fail the test; the child must die of them. */
        signal(SIGSEGV, SIG_DFL);
        signal(SIGABRT, SIG_DFL);
        if (stderr_fd >= 0)
            dup2(stderr_fd, STDERR_FILENO);
        fn(arg);
        _exit(0);
    }
    assert_true(pid > 0);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return status;
}

/* ---- ping-pong ---------------------------------------------------------- */

typedef struct pingpong {
    weft_coro_t main, co;
    steps_t steps;
    int suspended_seen; /* weft__coro_is_suspended(co) seen from inside co */
} pingpong_t;

static void pingpong_fn(void *arg)
{
    pingpong_t *p = arg;
    step(&p->steps, 1);
    p->suspended_seen = weft__coro_is_suspended(&p->co);
    weft__coro_switch(&p->co, &p->main);
    step(&p->steps, 3);
    weft__coro_switch(&p->co, &p->main);
    step(&p->steps, 5);
    weft__coro_exit(&p->co, &p->main);
}

static void test_coro_ping_pong_runs_steps_in_exact_order(void **state)
{
    (void)state;
    pingpong_t p;
    memset(&p, 0, sizeof p);
    weft_stack_t st = new_stack(0);
    weft__coro_thread_init(&p.main);
    assert_int_equal(weft__coro_init(&p.co, &st, pingpong_fn, &p), 0);
    assert_true(weft__coro_is_suspended(&p.co)); /* ready to start */

    step(&p.steps, 0);
    weft__coro_switch(&p.main, &p.co);
    assert_true(weft__coro_is_suspended(&p.co));
    step(&p.steps, 2);
    weft__coro_switch(&p.main, &p.co);
    step(&p.steps, 4);
    weft__coro_switch(&p.main, &p.co);
    step(&p.steps, 6);

    assert_steps(&p.steps, 7);
    assert_int_equal(p.suspended_seen, 0);        /* running: sp is NULL */
    assert_false(weft__coro_is_suspended(&p.co)); /* exited */
    assert_false(weft__coro_is_suspended(&p.main));
    assert_true(weft__stack_canary_ok(&st));
    weft__coro_destroy(&p.co);
    weft__stack_release(NULL, &st);
    assert_null(st.base);
    weft__coro_thread_fini(&p.main);
}

/* ---- coroutine to coroutine -------------------------------------------- */

/* Coroutines may switch straight to each other, not only to a main
 * context: main -> a -> b -> c -> main, twice, then each exits to the
 * next. */
typedef struct chain {
    weft_coro_t main, co[3];
    steps_t steps;
} chain_t;

typedef struct chain_arg {
    chain_t *ch;
    int i;
} chain_arg_t;

static void chain_fn(void *arg)
{
    chain_arg_t *a = arg;
    chain_t *ch = a->ch;
    weft_coro_t *self = &ch->co[a->i];
    weft_coro_t *next = a->i == 2 ? &ch->main : &ch->co[a->i + 1];
    step(&ch->steps, 1 + a->i);
    weft__coro_switch(self, next);
    step(&ch->steps, 5 + a->i);
    weft__coro_switch(self, next);
    step(&ch->steps, 9 + a->i);
    weft__coro_exit(self, next);
}

static void test_coro_coroutines_switch_directly_to_each_other(void **state)
{
    (void)state;
    chain_t ch;
    memset(&ch, 0, sizeof ch);
    weft_stack_t st[3];
    chain_arg_t args[3];
    weft__coro_thread_init(&ch.main);
    for (int i = 0; i < 3; i++) {
        st[i] = new_stack(0);
        args[i] = (chain_arg_t){&ch, i};
        assert_int_equal(weft__coro_init(&ch.co[i], &st[i], chain_fn, &args[i]), 0);
    }
    step(&ch.steps, 0);
    weft__coro_switch(&ch.main, &ch.co[0]);
    step(&ch.steps, 4);
    weft__coro_switch(&ch.main, &ch.co[0]);
    step(&ch.steps, 8);
    /* co[0] exits into co[1], which exits into co[2], which exits to main. */
    weft__coro_switch(&ch.main, &ch.co[0]);
    step(&ch.steps, 12);
    assert_steps(&ch.steps, 13);
    for (int i = 0; i < 3; i++) {
        assert_false(weft__coro_is_suspended(&ch.co[i]));
        weft__coro_destroy(&ch.co[i]);
        weft__stack_release(NULL, &st[i]);
    }
    weft__coro_thread_fini(&ch.main);
}

/* ---- many coroutines ---------------------------------------------------- */

#define RR_COROS  1000
#define RR_ROUNDS 5

typedef struct rr rr_t;
typedef struct rr_co {
    weft_coro_t co;
    weft_stack_t stack;
    int id;
    rr_t *rr;
} rr_co_t;

struct rr {
    weft_coro_t main;
    rr_co_t cos[RR_COROS];
    int log[RR_COROS * RR_ROUNDS];
    int n;
};

static void rr_fn(void *arg)
{
    rr_co_t *c = arg;
    rr_t *rr = c->rr;
    for (int r = 0; r < RR_ROUNDS; r++) {
        if (rr->n < RR_COROS * RR_ROUNDS)
            rr->log[rr->n] = r * RR_COROS + c->id;
        rr->n++;
        weft__coro_switch(&c->co, &rr->main);
    }
    weft__coro_exit(&c->co, &rr->main);
}

static void test_coro_thousand_coroutines_interleave_round_robin_in_order(void **state)
{
    (void)state;
    rr_t *rr = calloc(1, sizeof *rr);
    assert_non_null(rr);
    weft__coro_thread_init(&rr->main);
    for (int i = 0; i < RR_COROS; i++) {
        rr_co_t *c = &rr->cos[i];
        c->id = i;
        c->rr = rr;
        c->stack = new_stack(WEFT__STACK_MIN_SIZE);
        assert_int_equal(weft__coro_init(&c->co, &c->stack, rr_fn, c), 0);
    }
    /* RR_ROUNDS rounds of steps, then one more in which each exits. */
    for (int r = 0; r <= RR_ROUNDS; r++)
        for (int i = 0; i < RR_COROS; i++)
            weft__coro_switch(&rr->main, &rr->cos[i].co);

    assert_int_equal(rr->n, RR_COROS * RR_ROUNDS);
    for (int k = 0; k < RR_COROS * RR_ROUNDS; k++)
        assert_int_equal(rr->log[k], k);
    for (int i = 0; i < RR_COROS; i++) {
        rr_co_t *c = &rr->cos[i];
        assert_false(weft__coro_is_suspended(&c->co));
        assert_true(weft__stack_canary_ok(&c->stack));
        weft__coro_destroy(&c->co);
        weft__stack_release(NULL, &c->stack);
    }
    weft__coro_thread_fini(&rr->main);
    free(rr);
}

/* ---- migration ---------------------------------------------------------- */

typedef struct migrate {
    weft_coro_t co;
    weft_stack_t stack;
    weft_coro_t *home; /* the main context to switch back to, set by the resumer */
    int tls_seen[2];
    int errno_seen[2];
    pthread_t thread_seen[2];
    bool locals_ok;
    int steps;
} migrate_t;

static void migrate_fn(void *arg)
{
    migrate_t *m = arg;
    uint64_t a = opaque(0x1111), b = opaque(0x2222), c = opaque(0x3333);
    m->tls_seen[0] = read_tls();
    m->errno_seen[0] = read_errno();
    m->thread_seen[0] = current_thread();
    m->steps++;
    write_errno(44); /* thread A's errno */
    weft__coro_switch(&m->co, m->home);

    /* Now on thread B. */
    m->tls_seen[1] = read_tls();
    m->errno_seen[1] = read_errno();
    m->thread_seen[1] = current_thread();
    m->locals_ok = a == 0x1111 && b == 0x2222 && c == 0x3333;
    m->steps++;
    write_errno(33); /* thread B's errno */
    weft__coro_exit(&m->co, m->home);
}

typedef struct migrate_thread {
    migrate_t *m;
    int tls, err;    /* set before switching in */
    int errno_after; /* errno after the coroutine switched back */
    bool suspended_after;
    pthread_t self;
} migrate_thread_t;

static void *migrate_thread_a(void *arg)
{
    migrate_thread_t *t = arg;
    weft_coro_t main;
    weft__coro_thread_init(&main);
    t->self = pthread_self();
    tls_value = t->tls;
    t->m->home = &main;
    if (weft__coro_init(&t->m->co, &t->m->stack, migrate_fn, t->m) != 0)
        return NULL;
    errno = t->err;
    weft__coro_switch(&main, &t->m->co);
    t->errno_after = errno;
    t->suspended_after = weft__coro_is_suspended(&t->m->co);
    weft__coro_thread_fini(&main);
    return NULL;
}

static void *migrate_thread_b(void *arg)
{
    migrate_thread_t *t = arg;
    weft_coro_t main;
    weft__coro_thread_init(&main);
    t->self = pthread_self();
    tls_value = t->tls;
    t->m->home = &main;
    errno = t->err;
    weft__coro_switch(&main, &t->m->co);
    t->errno_after = errno;
    t->suspended_after = weft__coro_is_suspended(&t->m->co);
    weft__coro_destroy(&t->m->co);
    weft__coro_thread_fini(&main);
    return NULL;
}

static void test_coro_resumes_on_another_thread_and_sees_its_errno_and_tls(void **state)
{
    (void)state;
    migrate_t m;
    memset(&m, 0, sizeof m);
    m.stack = new_stack(0);

    migrate_thread_t ta = {.m = &m, .tls = 111, .err = 11};
    migrate_thread_t tb = {.m = &m, .tls = 222, .err = 22};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, migrate_thread_a, &ta), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(m.steps, 1);
    assert_true(ta.suspended_after);

    assert_int_equal(pthread_create(&th, NULL, migrate_thread_b, &tb), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(m.steps, 2);
    assert_false(tb.suspended_after);

    assert_int_equal(m.tls_seen[0], 111);
    assert_int_equal(m.errno_seen[0], 11);
    assert_true(pthread_equal(m.thread_seen[0], ta.self));
    assert_int_equal(ta.errno_after, 44);

    assert_int_equal(m.tls_seen[1], 222);
    assert_int_equal(m.errno_seen[1], 22);
    assert_true(pthread_equal(m.thread_seen[1], tb.self));
    assert_int_equal(tb.errno_after, 33);
    assert_true(m.locals_ok);

    weft__stack_release(NULL, &m.stack);
}

/* Coroutines bounce between two threads through a shared FIFO: the
 * resumer publishes a coroutine again only after it has switched away
 * (coro.h, invariant 2).  The threads take strict turns, one coroutine
 * each, and the number of coroutines is odd, so every coroutine changes
 * thread on its next resume.  Under TSan this checks the fiber annotations
 * across threads. */
#define HOP_COROS   15
#define HOP_THREADS 2
#define HOP_HOPS    200

typedef struct hop_shared hop_shared_t;
typedef struct hop_co {
    weft_coro_t co;
    weft_stack_t stack;
    weft_coro_t *home;
    hop_shared_t *sh;
    int id;
    int hops;
    bool done;
    bool moved; /* resumed on a thread other than the last one at least once */
} hop_co_t;

struct hop_shared {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    hop_co_t *queue[HOP_COROS];
    int head, len;
    int finished;
    int turn; /* which thread takes the next coroutine */
    check_rec_t rec;
    hop_co_t cos[HOP_COROS];
};

static void hop_fn(void *arg)
{
    hop_co_t *c = arg;
    uint64_t k0 = opaque((uint64_t)c->id * 7 + 1), k1 = opaque((uint64_t)c->id * 13 + 5);
    pthread_t last = current_thread();
    for (int i = 0; i < HOP_HOPS; i++) {
        c->hops++;
        weft__coro_switch(&c->co, c->home);
        pthread_t now = current_thread();
        if (!pthread_equal(now, last))
            c->moved = true;
        last = now;
        CHECK(&c->sh->rec, k0 == (uint64_t)c->id * 7 + 1 + (uint64_t)i);
        CHECK(&c->sh->rec, k1 == (uint64_t)c->id * 13 + 5 + 2 * (uint64_t)i);
        k0 += 1;
        k1 += 2;
    }
    c->done = true;
    weft__coro_exit(&c->co, c->home);
}

typedef struct hop_thread_arg {
    hop_shared_t *sh;
    int me;
} hop_thread_arg_t;

static void *hop_thread(void *arg)
{
    hop_shared_t *sh = ((hop_thread_arg_t *)arg)->sh;
    int me = ((hop_thread_arg_t *)arg)->me;
    weft_coro_t main;
    weft__coro_thread_init(&main);
    pthread_mutex_lock(&sh->lock);
    for (;;) {
        while (sh->finished < HOP_COROS && (sh->turn != me || sh->len == 0))
            pthread_cond_wait(&sh->cond, &sh->lock);
        if (sh->finished == HOP_COROS)
            break;
        hop_co_t *c = sh->queue[sh->head];
        sh->head = (sh->head + 1) % HOP_COROS;
        sh->len--;
        pthread_mutex_unlock(&sh->lock);

        c->home = &main;
        weft__coro_switch(&main, &c->co);
        /* c has switched away: only now may another thread have it. */
        if (c->done) {
            weft__coro_destroy(&c->co);
            weft__stack_release(NULL, &c->stack);
        }
        pthread_mutex_lock(&sh->lock);
        if (c->done) {
            sh->finished++;
        } else {
            sh->queue[(sh->head + sh->len) % HOP_COROS] = c;
            sh->len++;
        }
        sh->turn = (me + 1) % HOP_THREADS;
        pthread_cond_broadcast(&sh->cond);
    }
    pthread_mutex_unlock(&sh->lock);
    weft__coro_thread_fini(&main);
    return NULL;
}

static void test_coro_migrates_back_and_forth_between_threads(void **state)
{
    (void)state;
    hop_shared_t *sh = calloc(1, sizeof *sh);
    assert_non_null(sh);
    pthread_mutex_init(&sh->lock, NULL);
    pthread_cond_init(&sh->cond, NULL);
    check_rec_init(&sh->rec);
    for (int i = 0; i < HOP_COROS; i++) {
        hop_co_t *c = &sh->cos[i];
        c->id = i;
        c->sh = sh;
        c->stack = new_stack(64 * KiB);
        assert_int_equal(weft__coro_init(&c->co, &c->stack, hop_fn, c), 0);
        sh->queue[i] = c;
    }
    sh->len = HOP_COROS;

    pthread_t th[HOP_THREADS];
    hop_thread_arg_t args[HOP_THREADS];
    for (int i = 0; i < HOP_THREADS; i++) {
        args[i] = (hop_thread_arg_t){sh, i};
        assert_int_equal(pthread_create(&th[i], NULL, hop_thread, &args[i]), 0);
    }
    for (int i = 0; i < HOP_THREADS; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);

    ASSERT_NO_FAILURE(&sh->rec);
    assert_int_equal(sh->finished, HOP_COROS);
    for (int i = 0; i < HOP_COROS; i++) {
        assert_int_equal(sh->cos[i].hops, HOP_HOPS);
        assert_true(sh->cos[i].done);
        assert_true(sh->cos[i].moved);
    }
    pthread_cond_destroy(&sh->cond);
    pthread_mutex_destroy(&sh->lock);
    free(sh);
}

/* ---- registers ---------------------------------------------------------- */

/* Many values live across each switch on both sides: more than there are
 * callee-saved registers, so some live in registers and some in the frame.
 * The other side has different values in the same places. */
typedef struct regs {
    weft_coro_t main, co;
    int rounds;
    bool co_ok;
} regs_t;

#define LIVE_LOCALS(p)                                                                             \
    uint64_t p##0 = opaque(base + 0), p##1 = opaque(base + 1), p##2 = opaque(base + 2),            \
             p##3 = opaque(base + 3), p##4 = opaque(base + 4), p##5 = opaque(base + 5),            \
             p##6 = opaque(base + 6), p##7 = opaque(base + 7), p##8 = opaque(base + 8),            \
             p##9 = opaque(base + 9), p##10 = opaque(base + 10), p##11 = opaque(base + 11);        \
    double p##d0 = (double)opaque(base + 20), p##d1 = (double)opaque(base + 21),                   \
           p##d2 = (double)opaque(base + 22), p##d3 = (double)opaque(base + 23),                   \
           p##d4 = (double)opaque(base + 24), p##d5 = (double)opaque(base + 25),                   \
           p##d6 = (double)opaque(base + 26), p##d7 = (double)opaque(base + 27),                   \
           p##d8 = (double)opaque(base + 28), p##d9 = (double)opaque(base + 29)

#define LIVE_OK(p)                                                                                 \
    (p##0 == base + 0 && p##1 == base + 1 && p##2 == base + 2 && p##3 == base + 3 &&               \
     p##4 == base + 4 && p##5 == base + 5 && p##6 == base + 6 && p##7 == base + 7 &&               \
     p##8 == base + 8 && p##9 == base + 9 && p##10 == base + 10 && p##11 == base + 11 &&           \
     p##d0 == (double)(base + 20) && p##d1 == (double)(base + 21) &&                               \
     p##d2 == (double)(base + 22) && p##d3 == (double)(base + 23) &&                               \
     p##d4 == (double)(base + 24) && p##d5 == (double)(base + 25) &&                               \
     p##d6 == (double)(base + 26) && p##d7 == (double)(base + 27) &&                               \
     p##d8 == (double)(base + 28) && p##d9 == (double)(base + 29))

/* Each round both sides add `step` to every value, so a value that leaked
 * across contexts would not match. */
#define LIVE_ADD(p, k)                                                                             \
    do {                                                                                           \
        p##0 += k, p##1 += k, p##2 += k, p##3 += k, p##4 += k, p##5 += k;                          \
        p##6 += k, p##7 += k, p##8 += k, p##9 += k, p##10 += k, p##11 += k;                        \
        p##d0 += (double)k, p##d1 += (double)k, p##d2 += (double)k, p##d3 += (double)k;            \
        p##d4 += (double)k, p##d5 += (double)k, p##d6 += (double)k, p##d7 += (double)k;            \
        p##d8 += (double)k, p##d9 += (double)k;                                                    \
    } while (0)

static void regs_fn(void *arg)
{
    regs_t *r = arg;
    uint64_t base = 5000;
    LIVE_LOCALS(c);
    bool ok = true;
    for (int i = 0; i < r->rounds; i++) {
        weft__coro_switch(&r->co, &r->main);
        ok = ok && LIVE_OK(c);
        LIVE_ADD(c, 1000);
        base += 1000;
    }
    r->co_ok = ok;
    weft__coro_exit(&r->co, &r->main);
}

static void test_coro_values_live_across_switches_survive_on_both_sides(void **state)
{
    (void)state;
    regs_t r;
    memset(&r, 0, sizeof r);
    r.rounds = 50;
    weft_stack_t st = new_stack(0);
    weft__coro_thread_init(&r.main);
    assert_int_equal(weft__coro_init(&r.co, &st, regs_fn, &r), 0);
    uint64_t base = 100;
    LIVE_LOCALS(m);
    bool ok = true;
    for (int i = 0; i <= r.rounds; i++) {
        weft__coro_switch(&r.main, &r.co);
        ok = ok && LIVE_OK(m);
        LIVE_ADD(m, 7);
        base += 7;
    }
    assert_true(ok);
    assert_true(r.co_ok);
    weft__coro_destroy(&r.co);
    weft__stack_release(NULL, &st);
    weft__coro_thread_fini(&r.main);
}

#if defined(__x86_64__)
/* uint64_t regcheck_switch(weft_coro_t *from, weft_coro_t *to, uint64_t seed)
 * Loads seed, seed+1, ... into rbx, r12-r15 and rbp, switches, and returns
 * 0 if every one of them still holds its value afterwards (1 otherwise).
 * In assembly so that the compiler cannot keep the values anywhere else. */
__asm__(".text\n"
        ".p2align 4\n"
        "regcheck_switch:\n"
        "  pushq %rbp\n"
        "  pushq %rbx\n"
        "  pushq %r12\n"
        "  pushq %r13\n"
        "  pushq %r14\n"
        "  pushq %r15\n"
        "  subq $8, %rsp\n"
        "  movq %rdx, (%rsp)\n"
        "  movq %rdx, %rbx\n"
        "  leaq 1(%rdx), %r12\n"
        "  leaq 2(%rdx), %r13\n"
        "  leaq 3(%rdx), %r14\n"
        "  leaq 4(%rdx), %r15\n"
        "  leaq 5(%rdx), %rbp\n"
        "  call weft__coro_switch\n"
        "  movq (%rsp), %rdx\n"
        "  movl $1, %eax\n"
        "  cmpq %rdx, %rbx\n"
        "  jne 1f\n"
        "  incq %rdx\n"
        "  cmpq %rdx, %r12\n"
        "  jne 1f\n"
        "  incq %rdx\n"
        "  cmpq %rdx, %r13\n"
        "  jne 1f\n"
        "  incq %rdx\n"
        "  cmpq %rdx, %r14\n"
        "  jne 1f\n"
        "  incq %rdx\n"
        "  cmpq %rdx, %r15\n"
        "  jne 1f\n"
        "  incq %rdx\n"
        "  cmpq %rdx, %rbp\n"
        "  jne 1f\n"
        "  xorl %eax, %eax\n"
        "1:\n"
        "  addq $8, %rsp\n"
        "  popq %r15\n"
        "  popq %r14\n"
        "  popq %r13\n"
        "  popq %r12\n"
        "  popq %rbx\n"
        "  popq %rbp\n"
        "  ret\n");
#define HAVE_REGCHECK 1
#elif defined(__aarch64__)
/* The same for x19-x28 and d8-d15 (x29 is the frame pointer). */
__asm__(".text\n"
        ".p2align 4\n"
        "regcheck_switch:\n"
        "  stp x29, x30, [sp, #-160]!\n"
        "  mov x29, sp\n"
        "  stp x19, x20, [sp, #16]\n"
        "  stp x21, x22, [sp, #32]\n"
        "  stp x23, x24, [sp, #48]\n"
        "  stp x25, x26, [sp, #64]\n"
        "  stp x27, x28, [sp, #80]\n"
        "  stp d8, d9, [sp, #96]\n"
        "  stp d10, d11, [sp, #112]\n"
        "  stp d12, d13, [sp, #128]\n"
        "  stp d14, d15, [sp, #144]\n"
        "  mov x19, x2\n"
        "  add x20, x2, #1\n"
        "  add x21, x2, #2\n"
        "  add x22, x2, #3\n"
        "  add x23, x2, #4\n"
        "  add x24, x2, #5\n"
        "  add x25, x2, #6\n"
        "  add x26, x2, #7\n"
        "  add x27, x2, #8\n"
        "  add x28, x2, #9\n"
        "  fmov d8, x19\n"
        "  fmov d9, x20\n"
        "  fmov d10, x21\n"
        "  fmov d11, x22\n"
        "  fmov d12, x23\n"
        "  fmov d13, x24\n"
        "  fmov d14, x25\n"
        "  fmov d15, x26\n"
        "  bl weft__coro_switch\n"
        "  mov x0, #1\n"
        "  mov x9, x19\n"
        "  add x10, x9, #1\n  cmp x20, x10\n  b.ne 1f\n"
        "  add x10, x9, #2\n  cmp x21, x10\n  b.ne 1f\n"
        "  add x10, x9, #3\n  cmp x22, x10\n  b.ne 1f\n"
        "  add x10, x9, #4\n  cmp x23, x10\n  b.ne 1f\n"
        "  add x10, x9, #5\n  cmp x24, x10\n  b.ne 1f\n"
        "  add x10, x9, #6\n  cmp x25, x10\n  b.ne 1f\n"
        "  add x10, x9, #7\n  cmp x26, x10\n  b.ne 1f\n"
        "  add x10, x9, #8\n  cmp x27, x10\n  b.ne 1f\n"
        "  add x10, x9, #9\n  cmp x28, x10\n  b.ne 1f\n"
        "  fmov x10, d8\n  cmp x10, x19\n  b.ne 1f\n"
        "  fmov x10, d9\n  cmp x10, x20\n  b.ne 1f\n"
        "  fmov x10, d10\n  cmp x10, x21\n  b.ne 1f\n"
        "  fmov x10, d11\n  cmp x10, x22\n  b.ne 1f\n"
        "  fmov x10, d12\n  cmp x10, x23\n  b.ne 1f\n"
        "  fmov x10, d13\n  cmp x10, x24\n  b.ne 1f\n"
        "  fmov x10, d14\n  cmp x10, x25\n  b.ne 1f\n"
        "  fmov x10, d15\n  cmp x10, x26\n  b.ne 1f\n"
        "  mov x0, #0\n"
        "1:\n"
        "  ldp x19, x20, [sp, #16]\n"
        "  ldp x21, x22, [sp, #32]\n"
        "  ldp x23, x24, [sp, #48]\n"
        "  ldp x25, x26, [sp, #64]\n"
        "  ldp x27, x28, [sp, #80]\n"
        "  ldp d8, d9, [sp, #96]\n"
        "  ldp d10, d11, [sp, #112]\n"
        "  ldp d12, d13, [sp, #128]\n"
        "  ldp d14, d15, [sp, #144]\n"
        "  ldp x29, x30, [sp], #160\n"
        "  ret\n");
#define HAVE_REGCHECK 1
#endif

#ifdef HAVE_REGCHECK
uint64_t regcheck_switch(weft_coro_t *from, weft_coro_t *to, uint64_t seed);

typedef struct regcheck {
    weft_coro_t main, co;
    uint64_t bad; /* failed checks inside the coroutine */
} regcheck_t;

static void regcheck_fn(void *arg)
{
    regcheck_t *r = arg;
    for (uint64_t i = 0; i < 10; i++)
        r->bad += regcheck_switch(&r->co, &r->main, 0x7000000000 + i * 0x100);
    weft__coro_exit(&r->co, &r->main);
}

static void test_coro_switch_preserves_every_callee_saved_register(void **state)
{
    (void)state;
    regcheck_t r;
    memset(&r, 0, sizeof r);
    weft_stack_t st = new_stack(0);
    weft__coro_thread_init(&r.main);
    assert_int_equal(weft__coro_init(&r.co, &st, regcheck_fn, &r), 0);
    uint64_t bad = 0;
    for (uint64_t i = 0; i < 10; i++)
        bad += regcheck_switch(&r.main, &r.co, 0x100000 + i * 0x10);
    weft__coro_switch(&r.main, &r.co); /* lets it exit */
    assert_int_equal(bad, 0);
    assert_int_equal(r.bad, 0);
    weft__coro_destroy(&r.co);
    weft__stack_release(NULL, &st);
    weft__coro_thread_fini(&r.main);
}
#endif

/* ---- FP control words --------------------------------------------------- */

/* Rounding modes in the encoding of the control register we test. */
enum { RM_NEAREST, RM_UP, RM_DOWN, RM_ZERO };

#if defined(__x86_64__)
/* MXCSR RC (bits 13-14) and x87 RC (bits 10-11): 00 nearest, 01 down,
 * 10 up, 11 toward zero. */
static const unsigned rc_bits[] = {0, 2, 1, 3};

__attribute__((noinline)) static void set_rounding(int rm)
{
    uint32_t csr;
    uint16_t cw;
    __asm__ volatile("stmxcsr %0" : "=m"(csr));
    csr = (csr & ~(3u << 13)) | (rc_bits[rm] << 13);
    __asm__ volatile("ldmxcsr %0" : : "m"(csr));
    __asm__ volatile("fnstcw %0" : "=m"(cw));
    cw = (uint16_t)((cw & ~(3u << 10)) | (rc_bits[rm] << 10));
    __asm__ volatile("fldcw %0" : : "m"(cw));
}

/* The mode both control words agree on, or -1 if they differ. */
__attribute__((noinline)) static int get_rounding(void)
{
    uint32_t csr;
    uint16_t cw;
    __asm__ volatile("stmxcsr %0" : "=m"(csr));
    __asm__ volatile("fnstcw %0" : "=m"(cw));
    unsigned a = (csr >> 13) & 3, b = (cw >> 10) & 3;
    if (a != b)
        return -1;
    for (int i = 0; i < 4; i++)
        if (rc_bits[i] == a)
            return i;
    return -1;
}
#define HAVE_ROUNDING 1
#elif defined(__aarch64__)
/* FPCR RMode (bits 22-23): 00 nearest, 01 up, 10 down, 11 toward zero. */
static const unsigned rc_bits[] = {0, 1, 2, 3};

__attribute__((noinline)) static void set_rounding(int rm)
{
    uint64_t fpcr;
    __asm__ volatile("mrs %0, fpcr" : "=r"(fpcr));
    fpcr = (fpcr & ~((uint64_t)3 << 22)) | ((uint64_t)rc_bits[rm] << 22);
    __asm__ volatile("msr fpcr, %0" : : "r"(fpcr));
}

__attribute__((noinline)) static int get_rounding(void)
{
    uint64_t fpcr;
    __asm__ volatile("mrs %0, fpcr" : "=r"(fpcr));
    unsigned a = (unsigned)(fpcr >> 22) & 3;
    for (int i = 0; i < 4; i++)
        if (rc_bits[i] == a)
            return i;
    return -1;
}
#define HAVE_ROUNDING 1
#endif

#ifdef HAVE_ROUNDING
/* 1/3 in the current rounding mode; volatile so it is computed at run
 * time, after the switch. */
__attribute__((noinline)) static double third(void)
{
    volatile double one = 1.0, three = 3.0;
    return one / three;
}

typedef struct fpenv {
    weft_coro_t main, co;
    int seen_at_start, seen_after_switch;
    double third_up;
} fpenv_t;

static void fpenv_fn(void *arg)
{
    fpenv_t *f = arg;
    f->seen_at_start = get_rounding();
    set_rounding(RM_UP);
    weft__coro_switch(&f->co, &f->main);
    f->seen_after_switch = get_rounding();
    f->third_up = third();
    weft__coro_exit(&f->co, &f->main);
}

static void test_coro_rounding_mode_set_inside_a_coroutine_stays_inside_it(void **state)
{
    (void)state;
    fpenv_t f;
    memset(&f, 0, sizeof f);
    weft_stack_t st = new_stack(0);
    weft__coro_thread_init(&f.main);
    assert_int_equal(get_rounding(), RM_NEAREST);

    /* A new coroutine starts with the control words of the thread that
     * prepared it. */
    set_rounding(RM_ZERO);
    assert_int_equal(weft__coro_init(&f.co, &st, fpenv_fn, &f), 0);
    set_rounding(RM_NEAREST);

    weft__coro_switch(&f.main, &f.co);
    int main_after_first = get_rounding();
    set_rounding(RM_DOWN);
    weft__coro_switch(&f.main, &f.co);
    int main_after_exit = get_rounding();
    double third_down = third();
    set_rounding(RM_NEAREST);

    assert_int_equal(f.seen_at_start, RM_ZERO);
    assert_int_equal(main_after_first, RM_NEAREST); /* the coroutine's UP stayed inside */
    assert_int_equal(f.seen_after_switch, RM_UP);   /* and main's DOWN did not leak in */
    assert_int_equal(main_after_exit, RM_DOWN);
    assert_true(f.third_up > third_down);
    weft__coro_destroy(&f.co);
    weft__stack_release(NULL, &st);
    weft__coro_thread_fini(&f.main);
}
#endif

/* ---- exit, destroy, misuse ---------------------------------------------- */

typedef struct quick {
    weft_coro_t main, co;
    int runs;
} quick_t;

static void quick_fn(void *arg)
{
    quick_t *q = arg;
    q->runs++;
    weft__coro_exit(&q->co, &q->main);
}

static void test_coro_exit_returns_to_owner_and_stack_is_reused(void **state)
{
    (void)state;
    quick_t q;
    memset(&q, 0, sizeof q);
    weft_stack_cache_t *cache = NULL;
    assert_int_equal(weft__stack_cache_new(4, &cache), 0);
    weft__coro_thread_init(&q.main);
    void *first_base = NULL;
    for (int i = 0; i < 100; i++) {
        weft_stack_t st;
        assert_int_equal(weft__stack_alloc(cache, 0, &st), 0);
        if (i == 0)
            first_base = st.base;
        else if (!SANITIZED)
            assert_ptr_equal(st.base, first_base);
        assert_int_equal(weft__coro_init(&q.co, &st, quick_fn, &q), 0);
        weft__coro_switch(&q.main, &q.co);
        assert_int_equal(q.runs, i + 1);
        assert_false(weft__coro_is_suspended(&q.co));
        weft__coro_destroy(&q.co);
        weft__stack_release(cache, &st);
    }
    weft__coro_thread_fini(&q.main);
    weft__stack_cache_free(cache);
}

#ifndef WEFT_TSAN
static void test_coro_init_allocates_nothing(void **state)
{
    (void)state;
    quick_t q;
    memset(&q, 0, sizeof q);
    weft_stack_t st = new_stack(0);
    weft__coro_thread_init(&q.main);
    weft__alloc_fail_nth(1);
    int rc = weft__coro_init(&q.co, &st, quick_fn, &q);
    weft__alloc_fail_nth(0);
    assert_int_equal(rc, 0);
    weft__coro_switch(&q.main, &q.co);
    assert_int_equal(q.runs, 1);
    weft__coro_destroy(&q.co);
    weft__stack_release(NULL, &st);
    weft__coro_thread_fini(&q.main);
}
#endif

static void returning_fn(void *arg)
{
    (void)arg;
}

static void child_runs_returning_coroutine(void *arg)
{
    (void)arg;
    weft_coro_t main, co;
    weft_stack_t st;
    if (weft__stack_alloc(NULL, 0, &st) != 0)
        _exit(2);
    weft__coro_thread_init(&main);
    if (weft__coro_init(&co, &st, returning_fn, NULL) != 0)
        _exit(3);
    weft__coro_switch(&main, &co);
    _exit(4); /* not reached: the check aborts */
}

static void test_coro_entry_function_that_returns_aborts_with_message(void **state)
{
    (void)state;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    int status = run_in_child(child_runs_returning_coroutine, NULL, fds[1]);
    close(fds[1]);
    char buf[4096];
    size_t n = 0;
    ssize_t r;
    while (n < sizeof buf - 1 && (r = read(fds[0], buf + n, sizeof buf - 1 - n)) > 0)
        n += (size_t)r;
    buf[n] = '\0';
    close(fds[0]);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGABRT);
    assert_non_null(strstr(buf, "must end with weft__coro_exit()"));
}

/* ---- stack size and memory ---------------------------------------------- */

typedef struct park {
    weft_coro_t main, co;
} park_t;

static void park_fn(void *arg)
{
    park_t *p = arg;
    weft__coro_switch(&p->co, &p->main);
    weft__coro_exit(&p->co, &p->main);
}

static void test_coro_parked_right_after_entry_touches_only_the_top_page(void **state)
{
    (void)state;
    park_t p;
    memset(&p, 0, sizeof p);
    weft_stack_t st = new_stack(0);
    assert_int_equal(resident_pages(st.base, st.size), 1); /* the canary's page */
    weft__coro_thread_init(&p.main);
    assert_int_equal(weft__coro_init(&p.co, &st, park_fn, &p), 0);
    weft__coro_switch(&p.main, &p.co);

#ifndef WEFT_CORO_UCONTEXT
    /* With the assembly switch, sp is the suspended stack pointer. */
    uintptr_t top = (uintptr_t)st.base + st.size;
    size_t used = (size_t)(top - (uintptr_t)p.co.sp);
    size_t ps = weft__stack_page_size();
    print_message("parked right after entry: %zu bytes of stack in use, %zu pages resident "
                  "(including the canary's)\n",
                  used, resident_pages(st.base, st.size));
    assert_true(used < ps);
#else
    print_message("parked right after entry: %zu pages resident (including the canary's)\n",
                  resident_pages(st.base, st.size));
#endif
    if (!SANITIZED) /* sanitizer frames are larger and ASan may touch more */
        assert_int_equal(resident_pages(st.base, st.size), 2);

    weft__coro_switch(&p.main, &p.co);
    weft__coro_destroy(&p.co);
    weft__stack_release(NULL, &st);
    weft__coro_thread_fini(&p.main);
}

static void test_stack_sizes_round_up_to_pages_and_minimum(void **state)
{
    (void)state;
    size_t ps = weft__stack_page_size();
    weft_stack_t st;

    assert_int_equal(weft__stack_default_size(), 256 * KiB);
    assert_int_equal(weft__stack_alloc(NULL, 0, &st), 0);
    assert_int_equal(st.size, 256 * KiB);
    assert_int_equal((uintptr_t)st.base % ps, 0);
    assert_true(weft__stack_canary_ok(&st));
    /* Both ends are usable. */
    ((volatile char *)st.base)[st.size - 1] = 1;
    ((volatile char *)st.base)[8] = 1;
    assert_true(weft__stack_canary_ok(&st));
    weft__stack_release(NULL, &st);

    assert_int_equal(weft__stack_alloc(NULL, 1, &st), 0);
    assert_int_equal(st.size, WEFT__STACK_MIN_SIZE);
    weft__stack_release(NULL, &st);

    assert_int_equal(weft__stack_alloc(NULL, WEFT__STACK_MIN_SIZE + 1, &st), 0);
    assert_int_equal(st.size, WEFT__STACK_MIN_SIZE + ps);
    weft__stack_release(NULL, &st);

    assert_int_equal(weft__stack_alloc(NULL, 100 * KiB + 3, &st), 0);
    assert_int_equal(st.size % ps, 0);
    assert_true(st.size >= 100 * KiB + 3 && st.size < 100 * KiB + 3 + ps);
    weft__stack_release(NULL, &st);

    /* The largest size is accepted (address space only). */
    assert_int_equal(weft__stack_alloc(NULL, WEFT__STACK_MAX_SIZE, &st), 0);
    assert_int_equal(st.size, WEFT__STACK_MAX_SIZE);
    assert_true(weft__stack_canary_ok(&st));
    weft__stack_release(NULL, &st);

    /* One byte more is -EINVAL, and *out is untouched. */
    weft_stack_t untouched = {.base = (void *)&untouched, .size = 7, .flags = 9, .slab = NULL};
    weft_stack_t copy = untouched;
    assert_int_equal(weft__stack_alloc(NULL, WEFT__STACK_MAX_SIZE + 1, &untouched), -EINVAL);
    assert_int_equal(weft__stack_alloc(NULL, SIZE_MAX, &untouched), -EINVAL);
    assert_memory_equal(&untouched, &copy, sizeof copy);
}

static void test_stack_cache_reuses_lifo_and_keeps_at_most_max(void **state)
{
    (void)state;
    weft_stack_cache_t *cache = NULL;
    assert_int_equal(weft__stack_cache_new(2, &cache), 0);
    size_t guarded0 = weft__stack_guarded_count();

    weft_stack_t a, b, c;
    assert_int_equal(weft__stack_alloc(cache, 0, &a), 0);
    assert_int_equal(weft__stack_alloc(cache, 0, &b), 0);
    assert_int_equal(weft__stack_alloc(cache, 0, &c), 0);
    void *ab = a.base, *bb = b.base, *cb = c.base;
    assert_true(ab != bb && bb != cb && ab != cb);
    assert_int_equal(weft__stack_guarded_count(), guarded0 + 3);

    weft__stack_release(cache, &a);
    weft__stack_release(cache, &b);
    weft__stack_release(cache, &c); /* the cache is full: c goes to the depot */
    assert_null(a.base);
    if (!SANITIZED) {
        assert_int_equal(weft__stack_guarded_count(), guarded0 + 3);
        assert_int_equal(weft__stack_depot_drain(), 1); /* c is unmapped */
        assert_int_equal(weft__stack_guarded_count(), guarded0 + 2);
    } else {
        assert_int_equal(weft__stack_guarded_count(), guarded0);
    }

    /* A size the cache does not hold: a fresh stack. */
    weft_stack_t small;
    assert_int_equal(weft__stack_alloc(cache, WEFT__STACK_MIN_SIZE, &small), 0);
    assert_int_equal(small.size, WEFT__STACK_MIN_SIZE);
    if (!SANITIZED)
        assert_true(small.base != ab && small.base != bb);
    weft__stack_release(NULL, &small);

    /* Hottest first: b, then a. */
    weft_stack_t x, y;
    assert_int_equal(weft__stack_alloc(cache, 0, &x), 0);
    assert_int_equal(weft__stack_alloc(cache, 0, &y), 0);
    if (!SANITIZED) {
        assert_ptr_equal(x.base, bb);
        assert_ptr_equal(y.base, ab);
    }
    assert_true(weft__stack_canary_ok(&x));
    assert_true(weft__stack_canary_ok(&y));

    weft__stack_release(cache, &x);
    weft__stack_release(cache, &y);
    weft__stack_cache_free(cache); /* unmaps both */
    assert_int_equal(weft__stack_guarded_count(), guarded0);
}

static void test_stack_cache_of_zero_keeps_nothing(void **state)
{
    (void)state;
    weft_stack_cache_t *cache = NULL;
    assert_int_equal(weft__stack_cache_new(0, &cache), 0);
    size_t guarded0 = weft__stack_guarded_count();
    weft_stack_t a;
    assert_int_equal(weft__stack_alloc(cache, 0, &a), 0);
    weft__stack_release(cache, &a);
    (void)weft__stack_depot_drain();
    assert_int_equal(weft__stack_guarded_count(), guarded0);
    weft__stack_cache_free(cache);
    weft__stack_cache_free(NULL);
}

/* A stack freed on one worker (its cache full) is reused by another
 * worker's next allocation: no new mapping. */
static void test_stack_depot_passes_stacks_between_caches(void **state)
{
    (void)state;
    if (SANITIZED) {
        skip(); /* no reuse in sanitizer builds */
        return;
    }
    (void)weft__stack_depot_drain();
    weft_stack_cache_t *c1 = NULL, *c2 = NULL;
    assert_int_equal(weft__stack_cache_new(0, &c1), 0);
    assert_int_equal(weft__stack_cache_new(0, &c2), 0);
    size_t guarded0 = weft__stack_guarded_count();
    weft_stack_t a;
    assert_int_equal(weft__stack_alloc(c1, 0, &a), 0);
    void *base = a.base;
    weft__stack_release(c1, &a); /* c1 keeps nothing: to the depot */
    assert_null(a.base);
    assert_int_equal(weft__stack_guarded_count(), guarded0 + 1);
    weft_stack_t b;
    assert_int_equal(weft__stack_alloc(c2, 0, &b), 0);
    assert_ptr_equal(b.base, base);
    assert_int_equal(weft__stack_guarded_count(), guarded0 + 1);
    assert_true(weft__stack_canary_ok(&b));
    weft__stack_release(NULL, &b); /* no cache: unmapped, not kept */
    assert_int_equal(weft__stack_guarded_count(), guarded0);
    assert_int_equal(weft__stack_depot_drain(), 0);
    weft__stack_cache_free(c1);
    weft__stack_cache_free(c2);
}

/* A stack going back to a cache after a deep task keeps only its top two
 * pages; after a shallow one, its top page. */
static void test_stack_cached_after_a_deep_task_keeps_only_its_top_pages(void **state)
{
    (void)state;
    if (SANITIZED) {
        skip(); /* no reuse in sanitizer builds */
        return;
    }
    size_t page = weft__stack_page_size();
    weft_stack_cache_t *cache = NULL;
    assert_int_equal(weft__stack_cache_new(1, &cache), 0);
    weft_stack_t a;
    assert_int_equal(weft__stack_alloc_ex(cache, 64 * KiB, false, &a), 0);
    void *base = a.base;
    size_t size = a.size;
    memset(base, 0xab, size); /* as deep as it goes */
    weft__stack_release(cache, &a);
    assert_int_equal(resident_pages(base, size - 2 * page), 0);
    assert_int_equal(resident_pages((char *)base + size - 2 * page, 2 * page), 2);

    assert_int_equal(weft__stack_alloc_ex(cache, 64 * KiB, false, &a), 0);
    assert_ptr_equal(a.base, base);
    memset((char *)base + size - page, 0xcd, page); /* shallow */
    weft__stack_release(cache, &a);
    /* (The page under the kept ones is read by the depth probe: it maps
     * the zero page, which mincore counts as resident.) */
    assert_int_equal(resident_pages(base, size - 3 * page), 0);
    assert_true(resident_pages((char *)base + size - page, page) == 1);
    weft__stack_cache_free(cache);
}

static void test_stack_cache_new_fails_cleanly_without_memory(void **state)
{
    (void)state;
    weft_stack_cache_t *cache = (weft_stack_cache_t *)&cache;
    weft__alloc_fail_nth(1);
    assert_int_equal(weft__stack_cache_new(8, &cache), -ENOMEM);
    weft__alloc_fail_nth(0);
    assert_ptr_equal(cache, (weft_stack_cache_t *)&cache);
}

static void test_stack_canary_detects_overwrite(void **state)
{
    (void)state;
    weft_stack_cache_t *cache = NULL;
    assert_int_equal(weft__stack_cache_new(1, &cache), 0);
    weft_stack_t st;
    assert_int_equal(weft__stack_alloc(cache, 0, &st), 0);
    assert_true(weft__stack_canary_ok(&st));
    ((volatile unsigned char *)st.base)[3] ^= 0x40;
    assert_false(weft__stack_canary_ok(&st));
    /* A canary copied from another stack does not pass either. */
    weft_stack_t other;
    assert_int_equal(weft__stack_alloc(NULL, 0, &other), 0);
    memcpy(st.base, other.base, 8);
    assert_false(weft__stack_canary_ok(&st));
    weft__stack_release(NULL, &other);
    /* Reuse from the cache writes a fresh canary. */
    weft__stack_release(cache, &st);
    assert_int_equal(weft__stack_alloc(cache, 0, &st), 0);
    assert_true(weft__stack_canary_ok(&st));
    weft__stack_release(cache, &st);
    weft__stack_cache_free(cache);
}

static void child_writes_below_base(void *arg)
{
    volatile char *base = arg;
    base[0] = 1;  /* the canary's page: fine */
    base[-1] = 1; /* the guard page: SIGSEGV */
    _exit(7);
}

static void test_stack_guard_page_below_base_faults(void **state)
{
    (void)state;
    assert_true(weft__stack_guard_cap() > 0);
    weft_stack_t st = new_stack(0);
    assert_true(st.flags & WEFT_STACK_GUARDED);
    assert_true(guard_below(st.base));

    int status = run_in_child(child_writes_below_base, st.base, -1);
    if (WIFSIGNALED(status)) {
        assert_int_equal(WTERMSIG(status), SIGSEGV);
    } else {
        /* A sanitizer's SEGV handler reports and exits non-zero instead. */
        assert_true(SANITIZED);
        assert_true(WIFEXITED(status));
        assert_int_not_equal(WEXITSTATUS(status), 0);
        assert_int_not_equal(WEXITSTATUS(status), 7);
    }
    weft__stack_release(NULL, &st);
}

static void test_stack_guard_cap_default_is_quarter_of_max_map_count(void **state)
{
    (void)state;
    long max = 65530;
    FILE *f = fopen("/proc/sys/vm/max_map_count", "re");
    if (f != NULL) {
        if (fscanf(f, "%ld", &max) != 1)
            max = 65530;
        fclose(f);
    }
    assert_int_equal(weft__stack_guard_cap(), (size_t)max / 4);
    size_t old = weft__stack_set_guard_cap(5);
    assert_int_equal(old, (size_t)max / 4);
    assert_int_equal(weft__stack_set_guard_cap(SIZE_MAX), 5);
    assert_int_equal(weft__stack_guard_cap(), (size_t)max / 4);
}

#define SLAB_TEST_STACKS 130

static void test_stack_past_the_guard_cap_comes_unguarded_from_slabs(void **state)
{
    (void)state;
    size_t guarded0 = weft__stack_guarded_count();
    /* One guarded stack left under the cap, then none. */
    size_t old = weft__stack_set_guard_cap(guarded0 + 1);
    int maps0 = count_mappings();

    static weft_stack_t st[SLAB_TEST_STACKS];
    for (int i = 0; i < SLAB_TEST_STACKS; i++) {
        assert_int_equal(weft__stack_alloc(NULL, WEFT__STACK_MIN_SIZE, &st[i]), 0);
        if (i == 0) {
            assert_true(st[i].flags & WEFT_STACK_GUARDED);
        } else {
            assert_false(st[i].flags & WEFT_STACK_GUARDED);
            if (!SANITIZED)
                assert_true(st[i].flags & WEFT_STACK_SLAB);
        }
        assert_true(weft__stack_canary_ok(&st[i]));
        memset((char *)st[i].base + 8, 0xa5, st[i].size - 8); /* all of it is usable */
    }
    assert_int_equal(weft__stack_guarded_count(), guarded0 + 1);
    /* Disjoint, and no stack's writes reached another's canary. */
    for (int i = 0; i < SLAB_TEST_STACKS; i++) {
        assert_true(weft__stack_canary_ok(&st[i]));
        for (int j = i + 1; j < SLAB_TEST_STACKS; j++) {
            uintptr_t a = (uintptr_t)st[i].base, b = (uintptr_t)st[j].base;
            assert_true(a + st[i].size <= b || b + st[j].size <= a);
        }
    }
    if (!SANITIZED) {
        /* 129 unguarded stacks from 64-stack slabs: at most 3 more
         * mappings, plus 2 for the guarded one. */
        int maps = count_mappings();
        print_message("%d stacks (1 guarded, %d in slabs): %d more mappings\n", SLAB_TEST_STACKS,
                      SLAB_TEST_STACKS - 1, maps - maps0);
        assert_true(maps - maps0 <= 5);
    }
    for (int i = 0; i < SLAB_TEST_STACKS; i++)
        weft__stack_release(NULL, &st[i]);
    assert_int_equal(weft__stack_guarded_count(), guarded0);
    if (!SANITIZED)
        assert_true(count_mappings() <= maps0); /* empty slabs are unmapped */
    weft__stack_set_guard_cap(old);
}

/* A released slab slot gives back the pages a deep task touched but keeps
 * its top two (the next task in the slot touches them at once; dropping
 * them costs a TLB shootdown per release). */
static void test_stack_returned_to_slab_drops_its_deep_pages(void **state)
{
    (void)state;
    if (SANITIZED) {
        skip(); /* no slabs in sanitizer builds */
        return;
    }
    size_t old = weft__stack_set_guard_cap(0);
    weft_stack_t a, b;
    assert_int_equal(weft__stack_alloc(NULL, 64 * KiB, &a), 0);
    assert_int_equal(weft__stack_alloc(NULL, 64 * KiB, &b), 0); /* keeps the slab mapped */
    assert_true(a.flags & WEFT_STACK_SLAB);
    assert_ptr_equal(a.slab, b.slab);
    void *base = a.base;
    size_t size = a.size;
    size_t page = weft__stack_page_size();
    memset(base, 1, size);
    assert_int_equal(resident_pages(base, size), size / page);
    weft__stack_release(NULL, &a);
    assert_int_equal(resident_pages(base, size - 2 * page), 0);
    assert_int_equal(resident_pages((char *)base + size - 2 * page, 2 * page), 2);
    /* A shallow task's slot: only its top page was touched, and it stays
     * (the probed page under the kept ones reads as the zero page). */
    assert_int_equal(weft__stack_alloc_ex(NULL, 64 * KiB, false, &a), 0);
    assert_ptr_equal(a.base, base);
    weft__stack_release(NULL, &a);
    assert_int_equal(resident_pages(base, size - 3 * page), 0);
    /* The free slot is handed out again, with a fresh canary. */
    assert_int_equal(weft__stack_alloc(NULL, 64 * KiB, &a), 0);
    assert_ptr_equal(a.base, base);
    assert_true(weft__stack_canary_ok(&a));
    weft__stack_release(NULL, &a);
    weft__stack_release(NULL, &b);
    weft__stack_set_guard_cap(old);
}

static void test_coroutine_on_unguarded_slab_stack_runs(void **state)
{
    (void)state;
    size_t old = weft__stack_set_guard_cap(0);
    pingpong_t p;
    memset(&p, 0, sizeof p);
    weft_stack_t st = new_stack(WEFT__STACK_MIN_SIZE);
    assert_false(st.flags & WEFT_STACK_GUARDED);
    weft__coro_thread_init(&p.main);
    assert_int_equal(weft__coro_init(&p.co, &st, pingpong_fn, &p), 0);
    step(&p.steps, 0);
    weft__coro_switch(&p.main, &p.co);
    step(&p.steps, 2);
    weft__coro_switch(&p.main, &p.co);
    step(&p.steps, 4);
    weft__coro_switch(&p.main, &p.co);
    step(&p.steps, 6);
    assert_steps(&p.steps, 7);
    assert_true(weft__stack_canary_ok(&st));
    weft__coro_destroy(&p.co);
    weft__stack_release(NULL, &st);
    weft__coro_thread_fini(&p.main);
    weft__stack_set_guard_cap(old);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_coro_ping_pong_runs_steps_in_exact_order),
        cmocka_unit_test(test_coro_coroutines_switch_directly_to_each_other),
        cmocka_unit_test(test_coro_thousand_coroutines_interleave_round_robin_in_order),
        cmocka_unit_test(test_coro_resumes_on_another_thread_and_sees_its_errno_and_tls),
        cmocka_unit_test(test_coro_migrates_back_and_forth_between_threads),
        cmocka_unit_test(test_coro_values_live_across_switches_survive_on_both_sides),
#ifdef HAVE_REGCHECK
        cmocka_unit_test(test_coro_switch_preserves_every_callee_saved_register),
#endif
#ifdef HAVE_ROUNDING
        cmocka_unit_test(test_coro_rounding_mode_set_inside_a_coroutine_stays_inside_it),
#endif
        cmocka_unit_test(test_coro_exit_returns_to_owner_and_stack_is_reused),
#ifndef WEFT_TSAN
        cmocka_unit_test(test_coro_init_allocates_nothing),
#endif
        cmocka_unit_test(test_coro_entry_function_that_returns_aborts_with_message),
        cmocka_unit_test(test_coro_parked_right_after_entry_touches_only_the_top_page),
        cmocka_unit_test(test_stack_sizes_round_up_to_pages_and_minimum),
        cmocka_unit_test(test_stack_cache_reuses_lifo_and_keeps_at_most_max),
        cmocka_unit_test(test_stack_cache_of_zero_keeps_nothing),
        cmocka_unit_test(test_stack_depot_passes_stacks_between_caches),
        cmocka_unit_test(test_stack_cached_after_a_deep_task_keeps_only_its_top_pages),
        cmocka_unit_test(test_stack_cache_new_fails_cleanly_without_memory),
        cmocka_unit_test(test_stack_canary_detects_overwrite),
        cmocka_unit_test(test_stack_guard_page_below_base_faults),
        cmocka_unit_test(test_stack_guard_cap_default_is_quarter_of_max_map_count),
        cmocka_unit_test(test_stack_past_the_guard_cap_comes_unguarded_from_slabs),
        cmocka_unit_test(test_stack_returned_to_slab_drops_its_deep_pages),
        cmocka_unit_test(test_coroutine_on_unguarded_slab_stack_runs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

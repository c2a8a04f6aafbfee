/* Smoke test of the coroutine switch and stacks for a cross-compiled target
 * (aarch64 under qemu-user; see scripts/test_aarch64.sh).  A plain C driver
 * rather than the cmocka test, so it links statically against nothing but
 * libc: ping-pong order, many coroutines round-robin, every callee-saved
 * register (x19-x28, d8-d15) and FPCR rounding mode per context, values
 * live across switches, the exit path with stack reuse from a cache, the
 * canary, the guard page, and a coroutine resumed on another thread.
 *
 * Exits 0 when every check passed; the last line is "N passed, N failed".
 * Also builds and runs on x86-64 (the register check is then x86-64's).
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sched/coro.h"
#include "sched/stack.h"

static int passed, failed;

#define EXPECT(cond)                                                                               \
    do {                                                                                           \
        if (cond) {                                                                                \
            passed++;                                                                              \
        } else {                                                                                   \
            failed++;                                                                              \
            fprintf(stderr, "FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond);                      \
        }                                                                                          \
    } while (0)

__attribute__((noinline)) static uint64_t opaque(uint64_t x)
{
    __asm__ volatile("" : "+r"(x));
    return x;
}

static bool new_stack(size_t size, weft_stack_t *st)
{
    int rc = weft__stack_alloc(NULL, size, st);
    EXPECT(rc == 0);
    return rc == 0;
}

/* ---- ping-pong ---------------------------------------------------------- */

typedef struct pingpong {
    weft_coro_t main, co;
    int log[8];
    int n;
} pingpong_t;

static void pingpong_fn(void *arg)
{
    pingpong_t *p = arg;
    p->log[p->n++] = 1;
    weft__coro_switch(&p->co, &p->main);
    p->log[p->n++] = 3;
    weft__coro_switch(&p->co, &p->main);
    p->log[p->n++] = 5;
    weft__coro_exit(&p->co, &p->main);
}

static void check_ping_pong(void)
{
    pingpong_t p;
    memset(&p, 0, sizeof p);
    weft_stack_t st;
    if (!new_stack(0, &st))
        return;
    weft__coro_thread_init(&p.main);
    EXPECT(weft__coro_init(&p.co, &st, pingpong_fn, &p) == 0);
    p.log[p.n++] = 0;
    weft__coro_switch(&p.main, &p.co);
    EXPECT(weft__coro_is_suspended(&p.co));
    p.log[p.n++] = 2;
    weft__coro_switch(&p.main, &p.co);
    p.log[p.n++] = 4;
    weft__coro_switch(&p.main, &p.co);
    p.log[p.n++] = 6;
    EXPECT(p.n == 7);
    bool in_order = true;
    for (int i = 0; i < 7; i++)
        in_order = in_order && p.log[i] == i;
    EXPECT(in_order);
    EXPECT(!weft__coro_is_suspended(&p.co));
    EXPECT(weft__stack_canary_ok(&st));
    weft__coro_destroy(&p.co);
    weft__stack_release(NULL, &st);
    weft__coro_thread_fini(&p.main);
}

/* ---- many coroutines ---------------------------------------------------- */

#define RR_COROS  1000
#define RR_ROUNDS 3

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
    for (int r = 0; r < RR_ROUNDS; r++) {
        if (c->rr->n < RR_COROS * RR_ROUNDS)
            c->rr->log[c->rr->n] = r * RR_COROS + c->id;
        c->rr->n++;
        weft__coro_switch(&c->co, &c->rr->main);
    }
    weft__coro_exit(&c->co, &c->rr->main);
}

static void check_many_coroutines(void)
{
    rr_t *rr = calloc(1, sizeof *rr);
    if (rr == NULL) {
        EXPECT(rr != NULL);
        return;
    }
    weft__coro_thread_init(&rr->main);
    bool init_ok = true;
    for (int i = 0; i < RR_COROS; i++) {
        rr_co_t *c = &rr->cos[i];
        c->id = i;
        c->rr = rr;
        init_ok = init_ok && weft__stack_alloc(NULL, WEFT__STACK_MIN_SIZE, &c->stack) == 0 &&
                  weft__coro_init(&c->co, &c->stack, rr_fn, c) == 0;
    }
    EXPECT(init_ok);
    if (init_ok) {
        for (int r = 0; r <= RR_ROUNDS; r++)
            for (int i = 0; i < RR_COROS; i++)
                weft__coro_switch(&rr->main, &rr->cos[i].co);
        EXPECT(rr->n == RR_COROS * RR_ROUNDS);
        bool in_order = true;
        for (int k = 0; k < RR_COROS * RR_ROUNDS; k++)
            in_order = in_order && rr->log[k] == k;
        EXPECT(in_order);
    }
    bool canaries = true;
    for (int i = 0; i < RR_COROS; i++) {
        if (rr->cos[i].stack.base == NULL)
            continue;
        canaries = canaries && weft__stack_canary_ok(&rr->cos[i].stack);
        weft__coro_destroy(&rr->cos[i].co);
        weft__stack_release(NULL, &rr->cos[i].stack);
    }
    EXPECT(canaries);
    weft__coro_thread_fini(&rr->main);
    free(rr);
}

/* ---- callee-saved registers --------------------------------------------- */

/* uint64_t regcheck_switch(weft_coro_t *from, weft_coro_t *to, uint64_t seed):
 * loads seed-derived values into every callee-saved register, switches,
 * returns 0 if all of them survived. */
#if defined(__aarch64__)
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
#elif defined(__x86_64__)
__asm__(".text\n"
        ".p2align 4\n"
        "regcheck_switch:\n"
        "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
        "  subq $8, %rsp\n"
        "  movq %rdx, (%rsp)\n"
        "  movq %rdx, %rbx\n"
        "  leaq 1(%rdx), %r12\n  leaq 2(%rdx), %r13\n  leaq 3(%rdx), %r14\n"
        "  leaq 4(%rdx), %r15\n  leaq 5(%rdx), %rbp\n"
        "  call weft__coro_switch\n"
        "  movq (%rsp), %rdx\n"
        "  movl $1, %eax\n"
        "  cmpq %rdx, %rbx\n  jne 1f\n"
        "  incq %rdx\n  cmpq %rdx, %r12\n  jne 1f\n"
        "  incq %rdx\n  cmpq %rdx, %r13\n  jne 1f\n"
        "  incq %rdx\n  cmpq %rdx, %r14\n  jne 1f\n"
        "  incq %rdx\n  cmpq %rdx, %r15\n  jne 1f\n"
        "  incq %rdx\n  cmpq %rdx, %rbp\n  jne 1f\n"
        "  xorl %eax, %eax\n"
        "1:\n"
        "  addq $8, %rsp\n"
        "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
        "  ret\n");
#define HAVE_REGCHECK 1
#endif

#ifdef HAVE_REGCHECK
uint64_t regcheck_switch(weft_coro_t *from, weft_coro_t *to, uint64_t seed);

typedef struct regcheck {
    weft_coro_t main, co;
    uint64_t bad;
} regcheck_t;

static void regcheck_fn(void *arg)
{
    regcheck_t *r = arg;
    for (uint64_t i = 0; i < 10; i++)
        r->bad += regcheck_switch(&r->co, &r->main, 0x7000000000 + i * 0x100);
    weft__coro_exit(&r->co, &r->main);
}

static void check_callee_saved_registers(void)
{
    regcheck_t r;
    memset(&r, 0, sizeof r);
    weft_stack_t st;
    if (!new_stack(0, &st))
        return;
    weft__coro_thread_init(&r.main);
    EXPECT(weft__coro_init(&r.co, &st, regcheck_fn, &r) == 0);
    uint64_t bad = 0;
    for (uint64_t i = 0; i < 10; i++)
        bad += regcheck_switch(&r.main, &r.co, 0x100000 + i * 0x10);
    weft__coro_switch(&r.main, &r.co);
    EXPECT(bad == 0);
    EXPECT(r.bad == 0);
    weft__coro_destroy(&r.co);
    weft__stack_release(NULL, &st);
    weft__coro_thread_fini(&r.main);
}
#endif

/* ---- values live across switches ---------------------------------------- */

typedef struct live {
    weft_coro_t main, co;
    bool co_ok;
} live_t;

static void live_fn(void *arg)
{
    live_t *l = arg;
    uint64_t a = opaque(1), b = opaque(2), c = opaque(3), d = opaque(4), e = opaque(5);
    uint64_t f = opaque(6), g = opaque(7), h = opaque(8), i = opaque(9), j = opaque(10);
    uint64_t k = opaque(11), m = opaque(12);
    double x = (double)opaque(13), y = (double)opaque(14), z = (double)opaque(15);
    double w = (double)opaque(16), v = (double)opaque(17), u = (double)opaque(18);
    double t = (double)opaque(19), s = (double)opaque(20), q = (double)opaque(21);
    bool ok = true;
    for (uint64_t r = 0; r < 20; r++) {
        weft__coro_switch(&l->co, &l->main);
        ok = ok && a == 1 + r && b == 2 + r && c == 3 + r && d == 4 + r && e == 5 + r &&
             f == 6 + r && g == 7 + r && h == 8 + r && i == 9 + r && j == 10 + r && k == 11 + r &&
             m == 12 + r && x == (double)(13 + r) && y == (double)(14 + r) &&
             z == (double)(15 + r) && w == (double)(16 + r) && v == (double)(17 + r) &&
             u == (double)(18 + r) && t == (double)(19 + r) && s == (double)(20 + r) &&
             q == (double)(21 + r);
        a++, b++, c++, d++, e++, f++, g++, h++, i++, j++, k++, m++;
        x += 1, y += 1, z += 1, w += 1, v += 1, u += 1, t += 1, s += 1, q += 1;
    }
    l->co_ok = ok;
    weft__coro_exit(&l->co, &l->main);
}

static void check_live_values(void)
{
    live_t l;
    memset(&l, 0, sizeof l);
    weft_stack_t st;
    if (!new_stack(0, &st))
        return;
    weft__coro_thread_init(&l.main);
    EXPECT(weft__coro_init(&l.co, &st, live_fn, &l) == 0);
    uint64_t a = opaque(101), b = opaque(102), c = opaque(103), d = opaque(104);
    uint64_t e = opaque(105), f = opaque(106), g = opaque(107), h = opaque(108);
    double x = (double)opaque(109), y = (double)opaque(110), z = (double)opaque(111);
    double w = (double)opaque(112), v = (double)opaque(113), u = (double)opaque(114);
    bool ok = true;
    for (uint64_t r = 0; r <= 20; r++) {
        weft__coro_switch(&l.main, &l.co);
        ok = ok && a == 101 + 3 * r && b == 102 + 3 * r && c == 103 + 3 * r && d == 104 + 3 * r &&
             e == 105 + 3 * r && f == 106 + 3 * r && g == 107 + 3 * r && h == 108 + 3 * r &&
             x == (double)(109 + 3 * r) && y == (double)(110 + 3 * r) &&
             z == (double)(111 + 3 * r) && w == (double)(112 + 3 * r) &&
             v == (double)(113 + 3 * r) && u == (double)(114 + 3 * r);
        a += 3, b += 3, c += 3, d += 3, e += 3, f += 3, g += 3, h += 3;
        x += 3, y += 3, z += 3, w += 3, v += 3, u += 3;
    }
    EXPECT(ok);
    EXPECT(l.co_ok);
    weft__coro_destroy(&l.co);
    weft__stack_release(NULL, &st);
    weft__coro_thread_fini(&l.main);
}

/* ---- FP control --------------------------------------------------------- */

#if defined(__aarch64__) || defined(__x86_64__)
enum { RM_NEAREST, RM_UP, RM_DOWN, RM_ZERO };

#if defined(__aarch64__)
/* FPCR RMode, bits 22-23: 00 nearest, 01 up, 10 down, 11 toward zero. */
static void set_rounding(int rm)
{
    static const uint64_t bits[] = {0, 1, 2, 3};
    uint64_t fpcr;
    __asm__ volatile("mrs %0, fpcr" : "=r"(fpcr));
    fpcr = (fpcr & ~((uint64_t)3 << 22)) | (bits[rm] << 22);
    __asm__ volatile("msr fpcr, %0" : : "r"(fpcr));
}

__attribute__((noinline)) static int get_rounding(void)
{
    uint64_t fpcr;
    __asm__ volatile("mrs %0, fpcr" : "=r"(fpcr));
    return (int)((fpcr >> 22) & 3); /* same numbering as RM_* */
}
#else
/* MXCSR RC, bits 13-14: 00 nearest, 01 down, 10 up, 11 toward zero. */
static void set_rounding(int rm)
{
    static const uint32_t bits[] = {0, 2, 1, 3};
    uint32_t csr;
    __asm__ volatile("stmxcsr %0" : "=m"(csr));
    csr = (csr & ~(3u << 13)) | (bits[rm] << 13);
    __asm__ volatile("ldmxcsr %0" : : "m"(csr));
}

__attribute__((noinline)) static int get_rounding(void)
{
    static const int modes[] = {RM_NEAREST, RM_DOWN, RM_UP, RM_ZERO};
    uint32_t csr;
    __asm__ volatile("stmxcsr %0" : "=m"(csr));
    return modes[(csr >> 13) & 3];
}
#endif

__attribute__((noinline)) static double third(void)
{
    volatile double one = 1.0, three = 3.0;
    return one / three;
}

typedef struct fpenv {
    weft_coro_t main, co;
    int at_start, after_switch;
    double third_up;
} fpenv_t;

static void fpenv_fn(void *arg)
{
    fpenv_t *f = arg;
    f->at_start = get_rounding();
    set_rounding(RM_UP);
    weft__coro_switch(&f->co, &f->main);
    f->after_switch = get_rounding();
    f->third_up = third();
    weft__coro_exit(&f->co, &f->main);
}

static void check_fp_control(void)
{
    fpenv_t f;
    memset(&f, 0, sizeof f);
    weft_stack_t st;
    if (!new_stack(0, &st))
        return;
    weft__coro_thread_init(&f.main);
    EXPECT(get_rounding() == RM_NEAREST);
    set_rounding(RM_ZERO);
    EXPECT(weft__coro_init(&f.co, &st, fpenv_fn, &f) == 0);
    set_rounding(RM_NEAREST);
    weft__coro_switch(&f.main, &f.co);
    int main_after_first = get_rounding();
    set_rounding(RM_DOWN);
    weft__coro_switch(&f.main, &f.co);
    int main_after_exit = get_rounding();
    double third_down = third();
    set_rounding(RM_NEAREST);
    EXPECT(f.at_start == RM_ZERO);
    EXPECT(main_after_first == RM_NEAREST);
    EXPECT(f.after_switch == RM_UP);
    EXPECT(main_after_exit == RM_DOWN);
    EXPECT(f.third_up > third_down);
    weft__coro_destroy(&f.co);
    weft__stack_release(NULL, &st);
    weft__coro_thread_fini(&f.main);
}
#endif

/* ---- exit, cache, canary, guard ----------------------------------------- */

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

static void check_exit_and_reuse(void)
{
    quick_t q;
    memset(&q, 0, sizeof q);
    weft_stack_cache_t *cache = NULL;
    EXPECT(weft__stack_cache_new(4, &cache) == 0);
    if (cache == NULL)
        return;
    weft__coro_thread_init(&q.main);
    void *first = NULL;
    bool reused = true, exited = true;
    for (int i = 0; i < 100; i++) {
        weft_stack_t st;
        if (weft__stack_alloc(cache, 0, &st) != 0) {
            EXPECT(!"stack_alloc");
            break;
        }
        if (i == 0)
            first = st.base;
        reused = reused && st.base == first;
        EXPECT(weft__coro_init(&q.co, &st, quick_fn, &q) == 0);
        weft__coro_switch(&q.main, &q.co);
        exited = exited && q.runs == i + 1 && !weft__coro_is_suspended(&q.co);
        weft__coro_destroy(&q.co);
        weft__stack_release(cache, &st);
    }
    EXPECT(exited);
    EXPECT(reused);
    weft__coro_thread_fini(&q.main);
    weft__stack_cache_free(cache);
}

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
        if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) == 3 &&
            hi == (unsigned long)(uintptr_t)addr && strncmp(perms, "---p", 4) == 0)
            found = true;
    }
    fclose(f);
    return found;
}

static void check_stacks(void)
{
    weft_stack_t st;
    if (!new_stack(1, &st))
        return;
    EXPECT(st.size == WEFT__STACK_MIN_SIZE || st.size == weft__stack_page_size());
    EXPECT(weft__stack_canary_ok(&st));
    EXPECT(st.flags & WEFT_STACK_GUARDED);
    EXPECT(guard_below(st.base));
    ((volatile unsigned char *)st.base)[0] ^= 1;
    EXPECT(!weft__stack_canary_ok(&st));
    weft__stack_release(NULL, &st);

    weft_stack_t bad = {0};
    EXPECT(weft__stack_alloc(NULL, WEFT__STACK_MAX_SIZE + 1, &bad) == -EINVAL);
    EXPECT(bad.base == NULL);

    size_t old = weft__stack_set_guard_cap(0);
    if (new_stack(0, &st)) {
        EXPECT(!(st.flags & WEFT_STACK_GUARDED));
        EXPECT(weft__stack_canary_ok(&st));
        weft__stack_release(NULL, &st);
    }
    weft__stack_set_guard_cap(old);
}

/* ---- migration ---------------------------------------------------------- */

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

typedef struct migrate {
    weft_coro_t co;
    weft_stack_t stack;
    weft_coro_t *home;
    int tls_seen[2], errno_seen[2];
    bool locals_ok;
} migrate_t;

static void migrate_fn(void *arg)
{
    migrate_t *m = arg;
    uint64_t a = opaque(77), b = opaque(88);
    m->tls_seen[0] = read_tls();
    m->errno_seen[0] = read_errno();
    weft__coro_switch(&m->co, m->home);
    m->tls_seen[1] = read_tls();
    m->errno_seen[1] = read_errno();
    m->locals_ok = a == 77 && b == 88;
    weft__coro_exit(&m->co, m->home);
}

typedef struct migrate_thread {
    migrate_t *m;
    int value;
    bool start;
} migrate_thread_t;

static void *migrate_thread(void *arg)
{
    migrate_thread_t *t = arg;
    weft_coro_t main;
    weft__coro_thread_init(&main);
    tls_value = t->value;
    t->m->home = &main;
    if (t->start && weft__coro_init(&t->m->co, &t->m->stack, migrate_fn, t->m) != 0)
        return NULL;
    errno = t->value;
    weft__coro_switch(&main, &t->m->co);
    if (!t->start)
        weft__coro_destroy(&t->m->co);
    weft__coro_thread_fini(&main);
    return NULL;
}

static void check_migration(void)
{
    migrate_t m;
    memset(&m, 0, sizeof m);
    if (!new_stack(0, &m.stack))
        return;
    migrate_thread_t a = {&m, 111, true}, b = {&m, 222, false};
    pthread_t th;
    EXPECT(pthread_create(&th, NULL, migrate_thread, &a) == 0);
    pthread_join(th, NULL);
    EXPECT(pthread_create(&th, NULL, migrate_thread, &b) == 0);
    pthread_join(th, NULL);
    EXPECT(m.tls_seen[0] == 111 && m.errno_seen[0] == 111);
    EXPECT(m.tls_seen[1] == 222 && m.errno_seen[1] == 222);
    EXPECT(m.locals_ok);
    weft__stack_release(NULL, &m.stack);
}

int main(void)
{
    check_ping_pong();
    check_many_coroutines();
#ifdef HAVE_REGCHECK
    check_callee_saved_registers();
#endif
    check_live_values();
#if defined(__aarch64__) || defined(__x86_64__)
    check_fp_control();
#endif
    check_exit_and_reuse();
    check_stacks();
    check_migration();
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}

/* example_sleepers — what one sleeping task costs in memory.
 *
 * Usage: example_sleepers [N [SECONDS]]   (defaults: N = 100000, 1 s)
 *
 * A main task spawns N tasks; each one sleeps SECONDS and finishes.  The
 * runtime uses the default configuration (one worker per CPU, 256 KiB of
 * stack address space per task).  Because a stack is mapped with
 * MAP_NORESERVE, a task only pays for the stack pages it touches, plus its
 * task record and its timer.  The program measures the process's resident
 * memory before the spawns and at the peak, when (nearly) all N tasks are
 * asleep at once, and prints the difference per task.
 *
 * Two measures of the peak are printed: getrusage's ru_maxrss and the
 * VmHWM line of /proc/self/status (both in KiB, both "high water marks").
 * The bytes-per-task figure uses VmHWM.
 *
 * It is not run by scripts/demo.sh: at its default size it needs about
 * 0.5-1 GB and a few seconds.  Run it by hand, e.g.
 *   build/examples/example_sleepers 1000000
 * Starting a task for the first time costs a page fault or two (its stack),
 * so a 2-CPU machine starts a few hundred thousand tasks per second: with
 * 1 s sleeps the first tasks wake before the last ones start.  To have all
 * of a million asleep at once, sleep longer:
 *   build/examples/example_sleepers 1000000 10
 * A million sleeping tasks need about 5 GB of RAM (one touched stack page,
 * the 256-byte task record and its timer: ~4.4 KB each, plus ~0.5 KB of
 * page tables); with WEFT_DEBUG=1 about 9 GB, because the debug-mode stack
 * canary touches a second page at the bottom of every stack.  They also
 * reserve 256 GB of address space (not committed) and use about 33000
 * memory mappings, under the default vm.max_map_count of 65530.
 *
 * Exit status: 0 when every task ran exactly once and slept at least its
 * SECONDS; 1 otherwise; 2 on bad arguments.
 */
#include <inttypes.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "weft.h"

#define SECOND INT64_C(1000000000) /* weft counts time in nanoseconds */

#define DEFAULT_N 100000

/* The spawner yields every this many spawns, so its own worker also gets
 * to start tasks instead of only queueing them. */
#define YIELD_EVERY 4096

static size_t n_tasks;
static int64_t sleep_ns = 1 * SECOND;
static unsigned char *ran;     /* ran[i]: times task i finished (must end 1) */
static atomic_size_t sleeping; /* tasks inside weft_sleep right now */
static atomic_size_t max_sleeping;
static atomic_size_t finished;
static atomic_size_t short_sleeps; /* woke before sleep_ns had passed: a bug */
static atomic_size_t errors;       /* weft_sleep failed */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * SECOND + ts.tv_nsec;
}

/* ---- memory measures ----------------------------------------------------- */

/* A "VmXXX:   1234 kB" line of /proc/self/status, in KiB (0 if missing). */
static long status_kib(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL)
        return 0;
    char line[256];
    size_t klen = strlen(key);
    long v = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
            v = strtol(line + klen + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return v;
}

static long maxrss_kib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss; /* KiB on Linux */
}

typedef struct mem {
    long rss, hwm, maxrss; /* KiB */
    long pte;              /* KiB of page tables: not part of RSS, but paid for too */
} mem_t;

static mem_t mem_now(void)
{
    mem_t m = {status_kib("VmRSS"), status_kib("VmHWM"), maxrss_kib(), status_kib("VmPTE")};
    return m;
}

/* ---- the tasks ----------------------------------------------------------- */

/* One sleeper.  arg is its index, smuggled in the pointer. */
static int sleeper(void *arg, void **result)
{
    size_t i = (size_t)(uintptr_t)arg;
    (void)result;

    /* Count ourselves in, and keep the highest count seen: that is how many
     * tasks were asleep at once. */
    size_t now = atomic_fetch_add(&sleeping, 1) + 1;
    size_t max = atomic_load(&max_sleeping);
    while (now > max && !atomic_compare_exchange_weak(&max_sleeping, &max, now))
        ;

    int64_t t0 = now_ns();
    int rc = weft_sleep(sleep_ns); /* suspends this task only */
    if (rc != 0)
        atomic_fetch_add(&errors, 1);
    else if (now_ns() - t0 < sleep_ns)
        atomic_fetch_add(&short_sleeps, 1);
    atomic_fetch_sub(&sleeping, 1);

    /* Each index belongs to exactly one task, so this plain write is not a
     * race; the main task reads it after every task finished. */
    ran[i]++;
    atomic_fetch_add(&finished, 1);
    return 0;
}

typedef struct report {
    mem_t before, peak, after;
    size_t asleep_at_peak; /* tasks asleep when `peak` was taken */
    double spawn_s, total_s;
} report_t;

/* The main task: spawn N sleepers, take a memory snapshot once they are all
 * asleep, then wait for every one of them. */
static int main_task(void *arg, void **result)
{
    report_t *r = arg;
    (void)result;
    r->before = mem_now();
    int64_t t0 = now_ns();

    for (size_t i = 0; i < n_tasks; i++) {
        /* No handle wanted (NULL out): the tasks report through `ran`. */
        int rc = weft_spawn(sleeper, (void *)(uintptr_t)i, NULL, NULL);
        if (rc != 0) {
            fprintf(stderr, "weft_spawn of task %zu: %s\n", i, weft_strerror(rc));
            return rc;
        }
        if (i % YIELD_EVERY == YIELD_EVERY - 1)
            weft_yield();
    }
    int64_t t1 = now_ns();

    /* Wait (by sleeping in small steps) until every task has gone to sleep
     * or the first ones have already woken up; then look at the memory. */
    while (atomic_load(&max_sleeping) < n_tasks && atomic_load(&finished) == 0)
        weft_sleep(SECOND / 100);
    r->peak = mem_now();
    r->asleep_at_peak = atomic_load(&sleeping);

    while (atomic_load(&finished) < n_tasks)
        weft_sleep(SECOND / 20);
    r->after = mem_now();
    r->spawn_s = (double)(t1 - t0) / 1e9;
    r->total_s = (double)(now_ns() - t0) / 1e9;
    return 0;
}

int main(int argc, char **argv)
{
    n_tasks = DEFAULT_N;
    if (argc > 1) {
        char *end;
        unsigned long long v = strtoull(argv[1], &end, 10);
        if (*end != '\0' || v == 0 || v > 100000000ull) {
            fprintf(stderr, "usage: %s [N 1..100000000 [SECONDS 1..3600]]\n", argv[0]);
            return 2;
        }
        n_tasks = (size_t)v;
    }
    if (argc > 2) {
        char *end;
        unsigned long v = strtoul(argv[2], &end, 10);
        if (*end != '\0' || v == 0 || v > 3600) {
            fprintf(stderr, "usage: %s [N 1..100000000 [SECONDS 1..3600]]\n", argv[0]);
            return 2;
        }
        sleep_ns = (int64_t)v * SECOND;
    }
    ran = calloc(n_tasks, 1);
    if (ran == NULL) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }

    /* weft_run is asyncio.run(): start a runtime (NULL = default
     * configuration), run main_task in it, shut it down. */
    report_t r;
    memset(&r, 0, sizeof r);
    int rc = weft_run(NULL, main_task, &r, NULL);
    if (rc != 0) {
        fprintf(stderr, "weft_run: %s\n", weft_strerror(rc));
        return 1;
    }

    size_t bad = 0;
    for (size_t i = 0; i < n_tasks; i++)
        if (ran[i] != 1)
            bad++;
    free(ran);

    size_t peak_asleep = atomic_load(&max_sleeping);
    long grew_kib = r.peak.hwm - r.before.hwm;
    printf("tasks: %zu, asleep at once: %zu, spawned in %.2f s, all done after %.2f s\n", n_tasks,
           peak_asleep, r.spawn_s, r.total_s);
    printf("before:  VmRSS %8ld KiB  VmHWM %8ld KiB  ru_maxrss %8ld KiB  VmPTE %7ld KiB\n",
           r.before.rss, r.before.hwm, r.before.maxrss, r.before.pte);
    printf("peak:    VmRSS %8ld KiB  VmHWM %8ld KiB  ru_maxrss %8ld KiB  VmPTE %7ld KiB\n",
           r.peak.rss, r.peak.hwm, r.peak.maxrss, r.peak.pte);
    printf("after:   VmRSS %8ld KiB  VmHWM %8ld KiB  ru_maxrss %8ld KiB  VmPTE %7ld KiB\n",
           r.after.rss, r.after.hwm, r.after.maxrss, r.after.pte);
    size_t asleep = r.asleep_at_peak;
    if (asleep != 0) {
        printf("per sleeping task: %.0f bytes resident (VmHWM growth / %zu tasks asleep)\n",
               (double)grew_kib * 1024.0 / (double)asleep, asleep);
        printf("                   + %.0f bytes of page tables (VmPTE growth)\n",
               (double)(r.peak.pte - r.before.pte) * 1024.0 / (double)asleep);
    }

    int status = 0;
    if (bad != 0) {
        fprintf(stderr, "FAILED: %zu task(s) did not run exactly once\n", bad);
        status = 1;
    }
    if (atomic_load(&errors) != 0 || atomic_load(&short_sleeps) != 0) {
        fprintf(stderr, "FAILED: %zu weft_sleep error(s), %zu sleep(s) cut short\n",
                atomic_load(&errors), atomic_load(&short_sleeps));
        status = 1;
    }
    if (peak_asleep < n_tasks)
        printf("note: only %zu of %zu tasks were asleep at the same time (starting them took "
               "longer than one sleep); pass a longer SECONDS to measure all of them\n",
               peak_asleep, n_tasks);
    return status;
}

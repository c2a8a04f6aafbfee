/* example_threadsafe — other threads hand work to a loop.
 *
 * A weft loop belongs to the thread that runs it: only that thread may call
 * weft_loop_call_soon.  Any other thread uses
 * weft_loop_call_soon_threadsafe, which queues the callback and wakes the
 * loop if it is asleep.  Here three ordinary pthreads each send five
 * messages to a loop running in main(); the loop prints them (always on
 * the main thread) and stops after all fifteen arrived.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "weft.h"

enum { THREADS = 3, MESSAGES = 5 };

static weft_loop_t *loop;
static int received; /* only touched by loop callbacks, i.e. the main thread */

typedef struct message {
    int thread;
    int number;
} message_t;

/* Runs on the loop thread. */
static void print_message(void *arg)
{
    message_t *m = arg;
    received++;
    printf("loop got message %d from thread %d (%2d/%d)\n", m->number, m->thread, received,
           THREADS * MESSAGES);
    free(m);
    if (received == THREADS * MESSAGES)
        weft_loop_stop(loop);
}

static void *sender(void *arg)
{
    int id = (int)(intptr_t)arg;
    for (int i = 1; i <= MESSAGES; i++) {
        message_t *m = malloc(sizeof *m);
        if (m == NULL)
            abort();
        m->thread = id;
        m->number = i;
        /* Safe from any thread; the loop takes ownership of m. */
        int rc = weft_loop_call_soon_threadsafe(loop, print_message, m, NULL);
        if (rc != 0) {
            fprintf(stderr, "thread %d: %s\n", id, weft_strerror(rc));
            free(m);
            exit(1);
        }
        /* A short pause so the messages interleave and the loop gets to
         * sleep between some of them. */
        struct timespec pause = {0, 2 * 1000000L};
        nanosleep(&pause, NULL);
    }
    return NULL;
}

int main(void)
{
    int rc = weft_loop_new(&loop);
    if (rc != 0) {
        fprintf(stderr, "weft_loop_new: %s\n", weft_strerror(rc));
        return 1;
    }

    pthread_t threads[THREADS];
    for (int i = 0; i < THREADS; i++)
        pthread_create(&threads[i], NULL, sender, (void *)(intptr_t)(i + 1));

    /* The main thread becomes the loop thread until print_message stops it. */
    rc = weft_loop_run_forever(loop);
    for (int i = 0; i < THREADS; i++)
        pthread_join(threads[i], NULL);
    if (rc != 0) {
        fprintf(stderr, "weft_loop_run_forever: %s\n", weft_strerror(rc));
        return 1;
    }

    weft_loop_stats_t st;
    weft_loop_get_stats(loop, &st);
    printf("\nthreadsafe calls: %" PRIu64 ", eventfd writes: %" PRIu64 ", wakeups: %" PRIu64 "\n",
           (uint64_t)st.threadsafe_calls, (uint64_t)st.eventfd_writes, (uint64_t)st.wakeups);
    printf("A sender writes the loop's eventfd only when the loop is asleep, and at most once\n"
           "per sleep, so calls that arrive while the loop is awake (or already being woken)\n"
           "cost no system call: eventfd writes <= threadsafe calls.\n");

    weft_loop_free(loop);
    return received == THREADS * MESSAGES ? 0 : 1;
}

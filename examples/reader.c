/* example_reader — react when a file descriptor becomes readable.
 *
 * weft_loop_add_reader(loop, fd, fn, arg) calls fn(arg) on the loop thread
 * whenever fd has data (level-triggered, like asyncio's add_reader: it is
 * called again on the next iteration if data remains).  Here another thread
 * writes three lines into a pipe, with a pause before each; the reader
 * callback reads what is there, prints complete lines, and after the third
 * line removes itself and stops the loop.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "weft.h"

enum { LINES = 3 };

static weft_loop_t *loop;
static int pipe_fds[2]; /* [0] read end (watched by the loop), [1] write end */

/* Bytes read but not yet printed (a line may arrive in pieces). */
static char pending[256];
static size_t pending_len;
static int lines_seen;

static void on_readable(void *arg)
{
    int fd = *(int *)arg;
    ssize_t n = read(fd, pending + pending_len, sizeof pending - 1 - pending_len);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return; /* nothing after all; we will be called again */
        perror("read");
        weft_loop_stop(loop);
        return;
    }
    if (n == 0) { /* writer closed the pipe early */
        weft_loop_remove_reader(loop, fd);
        weft_loop_stop(loop);
        return;
    }
    pending_len += (size_t)n;

    /* Print every complete line we have. */
    char *nl;
    while (lines_seen < LINES && (nl = memchr(pending, '\n', pending_len)) != NULL) {
        size_t len = (size_t)(nl - pending);
        lines_seen++;
        printf("reader got line %d: \"%.*s\"\n", lines_seen, (int)len, pending);
        memmove(pending, nl + 1, pending_len - len - 1);
        pending_len -= len + 1;
    }

    if (lines_seen == LINES) {
        /* Done: stop watching the fd (returns 1: one reader removed), then
         * let run_forever return. */
        int removed = weft_loop_remove_reader(loop, fd);
        printf("third line read: remove_reader returned %d, stopping\n", removed);
        weft_loop_stop(loop);
    }
}

static void *writer(void *arg)
{
    (void)arg;
    static const char *const lines[LINES] = {"hello from the writer thread\n",
                                             "the loop sleeps until data arrives\n", "goodbye\n"};
    for (int i = 0; i < LINES; i++) {
        struct timespec pause = {0, 30 * 1000000L}; /* 30 ms */
        nanosleep(&pause, NULL);
        size_t len = strlen(lines[i]);
        if (write(pipe_fds[1], lines[i], len) != (ssize_t)len)
            perror("write");
    }
    return NULL;
}

int main(void)
{
    if (pipe(pipe_fds) != 0) {
        perror("pipe");
        return 1;
    }
    /* Readiness callbacks pair with nonblocking fds: a read never blocks
     * the loop, it fails with EAGAIN instead. */
    fcntl(pipe_fds[0], F_SETFL, fcntl(pipe_fds[0], F_GETFL) | O_NONBLOCK);

    int rc = weft_loop_new(&loop);
    if (rc == 0)
        rc = weft_loop_add_reader(loop, pipe_fds[0], on_readable, &pipe_fds[0]);
    if (rc != 0) {
        fprintf(stderr, "setup failed: %s\n", weft_strerror(rc));
        return 1;
    }

    pthread_t t;
    pthread_create(&t, NULL, writer, NULL);
    rc = weft_loop_run_forever(loop); /* returns after the third line */
    pthread_join(t, NULL);

    weft_loop_free(loop);
    close(pipe_fds[0]);
    close(pipe_fds[1]);
    if (rc != 0) {
        fprintf(stderr, "weft_loop_run_forever: %s\n", weft_strerror(rc));
        return 1;
    }
    return lines_seen == LINES ? 0 : 1;
}

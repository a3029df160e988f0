/*
 * Throughput of libmy_timer through the raw ABI (not a test).
 *   make -C native bench && native/build/abi_bench [calls-per-run]
 * For version and echo(delayMs 0): sequential (each call waits for its
 * callback) and submit-all-then-wait, from 1 and 4 submitting threads.
 */
#define _GNU_SOURCE
#include "../include/my_timer_cbor.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    atomic_long done;
    atomic_long errors;
} counter_t;

static void cb(int code, const char *msg, size_t len, void *ud)
{
    counter_t *c = ud;
    (void)msg, (void)len;
    if (code != RET_OK)
        atomic_fetch_add(&c->errors, 1);
    atomic_fetch_add_explicit(&c->done, 1, memory_order_release);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Spin briefly, then yield: 4 waiting threads share 2 cores with the library. */
static void wait_for(counter_t *c, long target)
{
    for (int i = 0; atomic_load_explicit(&c->done, memory_order_acquire) < target; i++) {
        if (i > 200)
            sched_yield();
#if defined(__x86_64__) || defined(__i386__)
        else
            __builtin_ia32_pause();
#endif
    }
}

static const uint8_t VERSION_REQ[] = {0xa0};
/* {"req": {"message": "hello", "delayMs": 0}} */
static const uint8_t ECHO_REQ[] = {0xa1, 0x63, 'r', 'e', 'q', 0xa2, 0x67, 'm', 'e', 's', 's', 'a',
                                   'g', 'e', 0x65, 'h', 'e', 'l', 'l', 'o', 0x67, 'd', 'e', 'l',
                                   'a', 'y', 'M', 's', 0x00};

typedef struct {
    void *ctx;
    int echo, sequential;
    long n;
    counter_t c;
} job_t;

static void *run(void *arg)
{
    job_t *j = arg;
    const uint8_t *p = j->echo ? ECHO_REQ : VERSION_REQ;
    size_t len = j->echo ? sizeof ECHO_REQ : sizeof VERSION_REQ;
    int (*fn)(void *, FFICallBack, void *, const uint8_t *, size_t) =
        j->echo ? my_timer_echo_cbor : my_timer_version_cbor;
    for (long i = 0; i < j->n; i++) {
        if (fn(j->ctx, cb, &j->c, p, len) != RET_OK)
            abort();
        if (j->sequential)
            wait_for(&j->c, i + 1);
    }
    wait_for(&j->c, j->n);
    return NULL;
}

static void ctor_cb(int code, const char *msg, size_t len, void *ud)
{
    (void)msg, (void)len;
    atomic_store((atomic_int *)ud, code == RET_OK ? 1 : 2);
}

int main(int argc, char **argv)
{
    long total = argc > 1 ? atol(argv[1]) : 400000;
    static const uint8_t create_req[] = {0xa1, 0x66, 'c', 'o', 'n', 'f', 'i', 'g', 0xa1,
                                         0x64, 'n', 'a', 'm', 'e', 0x64, 'b', 'e', 'n', 'c', 'h'};
    atomic_int ready = 0;
    void *ctx = my_timer_create_cbor(create_req, sizeof create_req, ctor_cb, &ready);
    if (!ctx)
        return 1;
    while (!atomic_load(&ready))
        sched_yield();
    const char *mode = getenv("MY_TIMER_SUBMIT_MODE");
    printf("libmy_timer ABI benchmark: %ld calls per run, submit mode %s\n", total,
           mode && *mode ? mode : "async");
    printf("%-8s %-12s %-8s %14s\n", "method", "pattern", "threads", "calls/s");
    for (int echo = 0; echo < 2; echo++) {
        for (int sequential = 1; sequential >= 0; sequential--) {
            for (int threads = 1; threads <= 4; threads += 3) {
                job_t jobs[4];
                pthread_t th[4];
                long errors = 0;
                double t0 = now_s();
                for (int t = 0; t < threads; t++) {
                    memset(&jobs[t], 0, sizeof jobs[t]);
                    jobs[t].ctx = ctx;
                    jobs[t].echo = echo;
                    jobs[t].sequential = sequential;
                    jobs[t].n = total / threads;
                    pthread_create(&th[t], NULL, run, &jobs[t]);
                }
                for (int t = 0; t < threads; t++) {
                    pthread_join(th[t], NULL);
                    errors += atomic_load(&jobs[t].c.errors);
                }
                double dt = now_s() - t0;
                printf("%-8s %-12s %-8d %14.0f%s\n", echo ? "echo" : "version",
                       sequential ? "sequential" : "submit-all", threads,
                       (double)(total / threads * threads) / dt, errors ? "  (errors!)" : "");
                fflush(stdout);
            }
        }
    }
    return my_timer_destroy(ctx) == RET_OK ? 0 : 1;
}

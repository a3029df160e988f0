/*
 * libmy_timer: a C drop-in for the nim-ffi CBOR ABI of the Nim timer library.
 * Contract: ../ABI.md; design notes: ../README.md.
 *
 * One library thread per context runs an event loop over a request queue
 * (batch-popped under one lock) and a timer min-heap owned by that thread.
 * Only the library thread invokes result and event callbacks, so callbacks of
 * one context never overlap; the exceptions are the synchronous errors the
 * spec puts on the caller's thread (invalid context, failed create).
 *
 * The same source builds both ABI generations: MT_GENERATION=2 (default,
 * libmy_timer.so, _cbor symbols) and MT_GENERATION=3 (libmy_timer-0.3.so:
 * suffix-less symbols, static lib_version, text priority, echo delay limit,
 * on_job_scheduled, RET_STALE_WARN, and events delivered by a second,
 * per-context event thread instead of the library thread).
 */
#define _GNU_SOURCE
#ifndef MT_GENERATION
#define MT_GENERATION 2
#endif
#if MT_GENERATION == 3
#include "../include/my_timer.h"
#define MT_SYM(name) my_timer_##name
#elif MT_GENERATION == 2
#include "../include/my_timer_cbor.h"
#define MT_SYM(name) my_timer_##name##_cbor
#else
#error "MT_GENERATION must be 2 or 3"
#endif

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cbor.h"
#include "ffi_runtime.h"
#include "requests.h"

enum { M_CTOR, M_VERSION, M_ECHO, M_COMPLEX, M_SCHEDULE };

static const char *const req_type[] = {"", "MyTimerVersionReq", "MyTimerEchoReq",
                                       "MyTimerComplexReq", "MyTimerScheduleReq"};
static const char *const method_name[] = {"create", "version", "echo", "complex",
                                          "schedule"};

#define INLINE_PAYLOAD 96
#define FREELIST_MAX 1024
#define SPIN_NS 30000          /* idle spin before sleeping: keeps round trips cheap */
#define SPIN_MAX_NS 200000     /* ... up to twice the usual gap between requests, this long */
#define LONE_BATCHES 8         /* ... for a caller alone: batches of one request in a row */
#define BUSY_SPIN_NS 5000      /* ... but this long after a turn not of one lone request */
#define DEFAULT_GRACE_MS 1500  /* like the real library's destroy bound */
#define MAX_GRACE_MS 3600000
#define DEFAULT_STALE_MS 5000  /* 0.3: RET_STALE_WARN interval */
#define MAX_STALE_MS 3600000

typedef struct req {
    struct req *next;
    int method;
    int null_payload; /* caller passed NULL with a non-zero length */
    int oom;          /* payload could not be copied */
    FFICallBack cb;
    void *ud;
    uint8_t *payload;
    size_t len;
    uint64_t seq;
    int64_t deadline_ns; /* while in the timer heap: next wake-up (finish or warning) */
    int64_t start_ns, finish_ns; /* when the wait began, when it ends */
    int64_t warned;              /* RET_STALE_WARN callbacks sent (0.3) */
    union {
        mt_echo_req echo;
        mt_schedule_req sched;
    } u;
    uint8_t inl[INLINE_PAYLOAD];
} req_t;

/* 0.3: an event on its way to the event thread. */
typedef struct ev {
    struct ev *next;
    const char *name; /* static string */
    int code;
    size_t len;
    uint8_t body[];
} ev_t;

/* Listeners live in rt; a listener without a name is a wildcard (0.2) or
 * receives nothing (0.3). */
typedef struct ctx {
    ffi_ctx rt; /* first: the context's address is rt's */
    pthread_cond_t cv_turn; /* handoff callers wait here for their turn */
    req_t *qhead, *qtail;
    atomic_int qnonempty; /* lets the spinning library thread see work without the lock */
    req_t *freelist;
    int nfree;
    int sleeping, cancel, exited;
    int handing_over; /* handoff: a caller is waiting for its request to be taken */
    int64_t gap_ns; /* library thread only: the usual wait for the next request (an average) */
    int lone;       /* library thread only: batches in a row of one request each */
    int64_t grace_ms;
    char *name;
    size_t name_len;

    /* timer heap: library thread only */
    req_t **heap;
    size_t hn, hcap;

    int64_t stale_ns; /* 0.3: RET_STALE_WARN interval (0: never) */
#if MT_GENERATION == 3
    /* events are queued only while rt.nnamed > 0 */
    pthread_t ethread; /* event thread: delivers events, nothing else */
    pthread_mutex_t emu;
    pthread_cond_t ecv;
    ev_t *ehead, *etail;
    int estop;
#endif
} ctx_t;

/* ---- helpers ---------------------------------------------------------- */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static struct timespec ns_to_ts(int64_t ns)
{
    struct timespec ts;
    ts.tv_sec = ns / 1000000000;
    ts.tv_nsec = ns % 1000000000;
    return ts;
}

static void free_node(req_t *n)
{
    if (n->payload && n->payload != n->inl)
        free(n->payload);
    free(n);
}

/* ---- timer heap (library thread only) ----------------------------------- */

static int heap_less(const req_t *a, const req_t *b)
{
    return a->deadline_ns < b->deadline_ns ||
           (a->deadline_ns == b->deadline_ns && a->seq < b->seq);
}

static int heap_push(ctx_t *c, req_t *n)
{
    if (c->hn == c->hcap) {
        size_t ncap = c->hcap ? c->hcap * 2 : 64;
        req_t **h = realloc(c->heap, ncap * sizeof *h);
        if (!h)
            return -1;
        c->heap = h;
        c->hcap = ncap;
    }
    size_t i = c->hn++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!heap_less(n, c->heap[parent]))
            break;
        c->heap[i] = c->heap[parent];
        i = parent;
    }
    c->heap[i] = n;
    return 0;
}

static req_t *heap_pop(ctx_t *c)
{
    req_t *top = c->heap[0];
    req_t *last = c->heap[--c->hn];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const req_t *best = last;
        if (l < c->hn && heap_less(c->heap[l], best))
            m = l, best = c->heap[l];
        if (r < c->hn && heap_less(c->heap[r], best))
            m = r;
        if (m == i)
            break;
        c->heap[i] = c->heap[m];
        i = m;
    }
    if (c->hn)
        c->heap[i] = last;
    return top;
}

/* ---- request handling (library thread) ---------------------------------- */

/* Runs the listeners of event `ev`. 0.2: on the library thread, wildcards
 * (NULL name) included. 0.3: on the event thread, exact names only. The lock
 * is held while listeners run so that once remove returns, that listener is
 * never called again; add/remove from a callback are rejected, not
 * deadlocked (ffi_in_cb). */
static void deliver_event(ctx_t *c, const char *ev, int code, const void *body, size_t len)
{
    pthread_mutex_lock(&c->rt.lmu);
    for (size_t i = 0; i < c->rt.nl; i++) {
        ffi_listener *l = &c->rt.lst[i];
#if MT_GENERATION == 3
        if (!l->name || strcmp(l->name, ev) != 0)
            continue;
#else
        if (l->name && strcmp(l->name, ev) != 0)
            continue;
#endif
        ffi_call_cb(l->cb, code, body, len, l->ud);
    }
    pthread_mutex_unlock(&c->rt.lmu);
}

/* Fires an encoded event: delivered now (0.2) or handed to the event thread
 * (0.3, so it may reach listeners after the reply that follows it). */
static void fire_event(ctx_t *c, const char *ev, const mt_buf *b)
{
    static const char oom[] = "out of memory encoding event";
    const void *body = b->oom ? (const void *)oom : b->p;
    size_t len = b->oom ? sizeof oom - 1 : b->len;
    int code = b->oom ? RET_ERR : RET_OK;
#if MT_GENERATION == 3
    if (atomic_load(&c->rt.nnamed) == 0)
        return; /* nobody could receive it */
    ev_t *e = malloc(sizeof *e + len);
    if (!e)
        return; /* out of memory: the event is lost, the call still answers */
    e->next = NULL;
    e->name = ev;
    e->code = code;
    e->len = len;
    memcpy(e->body, body, len);
    pthread_mutex_lock(&c->emu);
    if (c->etail)
        c->etail->next = e;
    else
        c->ehead = e;
    c->etail = e;
    pthread_cond_signal(&c->ecv);
    pthread_mutex_unlock(&c->emu);
#else
    deliver_event(c, ev, code, body, len);
#endif
}

#if MT_GENERATION == 3
static void *event_main(void *arg)
{
    ctx_t *c = arg;
    pthread_mutex_lock(&c->emu);
    for (;;) {
        while (!c->ehead && !c->estop)
            pthread_cond_wait(&c->ecv, &c->emu);
        ev_t *batch = c->ehead;
        if (!batch)
            break; /* stopping and drained */
        c->ehead = c->etail = NULL;
        pthread_mutex_unlock(&c->emu);
        while (batch) {
            ev_t *e = batch;
            batch = e->next;
            deliver_event(c, e->name, e->code, e->body, e->len);
            free(e);
        }
        pthread_mutex_lock(&c->emu);
    }
    pthread_mutex_unlock(&c->emu);
    return NULL;
}
#endif

static void reply(req_t *n, mt_buf *b, int code) { ffi_reply(n->cb, n->ud, b, code); }

static void finish_echo(ctx_t *c, req_t *n)
{
    mt_buf b;
    mt_str name = {c->name, c->name_len};
    mt_buf_init(&b);
    mt_encode_echo_event(&b, n->u.echo.message);
    fire_event(c, "on_echo_fired", &b);
    mt_buf_free(&b);
    mt_buf_init(&b);
    mt_encode_echo_reply(&b, n->u.echo.message, name);
    reply(n, &b, RET_OK);
    mt_buf_free(&b);
}

static void finish_schedule(ctx_t *c, req_t *n)
{
    mt_buf b;
    mt_str name = {c->name, c->name_len};
    mt_buf_init(&b);
    int rc = mt_eval_schedule(&b, &n->u.sched, name);
#if MT_GENERATION == 3
    if (rc == 0) { /* every successful schedule fires on_job_scheduled */
        mt_buf e;
        mt_buf_init(&e);
        mt_encode_job_event(&e, &n->u.sched, name);
        fire_event(c, "on_job_scheduled", &e);
        mt_buf_free(&e);
    }
#endif
    reply(n, &b, rc == 0 ? RET_OK : RET_ERR);
    mt_buf_free(&b);
}

/* Next wake-up of a waiting request: its end, or its next RET_STALE_WARN if
 * that comes first (0.3; a warning due at the very end goes first). */
static int64_t next_wake(const ctx_t *c, const req_t *n)
{
    if (c->stale_ns > 0) {
        int64_t warn_at;
        if (!__builtin_mul_overflow(n->warned + 1, c->stale_ns, &warn_at) &&
            !__builtin_add_overflow(warn_at, n->start_ns, &warn_at) && warn_at <= n->finish_ns)
            return warn_at;
    }
    return n->finish_ns;
}

/* 1 if the wake-up at n->deadline_ns is a RET_STALE_WARN (sent here) rather
 * than the end of the request. */
static int stale_warning(ctx_t *c, req_t *n)
{
    int64_t elapsed;
    if (c->stale_ns <= 0 || __builtin_mul_overflow(n->warned + 1, c->stale_ns, &elapsed) ||
        elapsed > n->deadline_ns - n->start_ns)
        return 0;
    char msg[24];
    int len = snprintf(msg, sizeof msg, "%" PRId64, elapsed / 1000000);
    n->warned++;
    ffi_call_cb(n->cb, RET_STALE_WARN, msg, (size_t)len, n->ud);
    return 1;
}

static void finish_cancelled(req_t *n)
{
    char msg[64];
    snprintf(msg, sizeof msg, "%s cancelled: context destroyed", method_name[n->method]);
    ffi_call_err(n->cb, msg, n->ud);
}

/* Returns 1 when the node is finished, 0 when it moved into the timer heap. */
static int handle(ctx_t *c, req_t *n)
{
    mt_dec d;
    mt_buf b;
    int rc;

    if (n->method == M_CTOR) {
        ffi_reply_created(n->cb, n->ud, c);
        return 1;
    }
    mt_buf_init(&b);
    if (n->null_payload || n->oom) {
        ffi_payload_error(&b, req_type[n->method], n->len, n->oom);
        reply(n, &b, RET_ERR);
        mt_buf_free(&b);
        return 1;
    }
    mt_dec_init(&d, n->payload, n->len);
    switch (n->method) {
    case M_VERSION:
        rc = mt_decode_version(&d);
        break;
    case M_ECHO:
        rc = mt_decode_echo(&d, &n->u.echo);
        break;
    case M_COMPLEX: {
        mt_complex_req r;
        rc = mt_decode_complex(&d, &r);
        if (rc == 0) {
            mt_encode_complex_reply(&b, &r);
            reply(n, &b, RET_OK);
            mt_buf_free(&b);
            return 1;
        }
        break;
    }
    default:
        rc = mt_decode_schedule(&d, &n->u.sched, MT_GENERATION);
        break;
    }
    /* Trailing bytes after the request item are ignored, like the real library. */
    if (rc) {
        ffi_decode_error(&b, req_type[n->method], d.err);
        reply(n, &b, RET_ERR);
        mt_buf_free(&b);
        return 1;
    }
    if (n->method == M_VERSION) {
        mt_encode_version(&b);
        reply(n, &b, RET_OK);
        mt_buf_free(&b);
        return 1;
    }
    int64_t now = now_ns();
    if (n->method == M_ECHO) {
        int64_t delay = n->u.echo.delay_ms;
#if MT_GENERATION == 3
        if (delay > MT_MAX_DELAY_MS) { /* refused at once, no event */
            mt_buf_puts(&b, "delayMs must not exceed 5000");
            reply(n, &b, RET_ERR);
            mt_buf_free(&b);
            return 1;
        }
#endif
        if (delay <= 0) {
            finish_echo(c, n);
            return 1;
        }
        /* The real library aborts when the deadline overflows its clock. */
        int64_t max_ms = (INT64_MAX - now) / 1000000;
        if (delay > max_ms) {
            mt_buf_puts(&b, "echo delayMs ");
            mt_buf_put_i64(&b, delay);
            mt_buf_puts(&b, " is beyond the range of the library's clock (maximum ");
            mt_buf_put_i64(&b, max_ms);
            mt_buf_puts(&b, " ms)");
            reply(n, &b, RET_ERR);
            mt_buf_free(&b);
            return 1;
        }
        n->finish_ns = now + delay * 1000000;
    } else {
        n->finish_ns = now + 1000000; /* schedule waits 1 ms before answering */
    }
    n->start_ns = now;
    n->warned = 0;
    n->deadline_ns = next_wake(c, n);
    if (heap_push(c, n)) {
        ffi_call_err(n->cb, "out of memory scheduling a timer", n->ud);
        return 1;
    }
    return 0;
}

/* Returns 1 when the node is finished, 0 when it went back into the heap
 * (after a RET_STALE_WARN). */
static int fire_timer(ctx_t *c, req_t *n)
{
    if (stale_warning(c, n)) {
        n->deadline_ns = next_wake(c, n);
        heap_push(c, n); /* cannot fail: it was just popped */
        return 0;
    }
    if (n->method == M_ECHO)
        finish_echo(c, n);
    else
        finish_schedule(c, n);
    return 1;
}

static void recycle(ctx_t *c, req_t **done)
{
    /* caller holds c->rt.mu */
    while (*done) {
        req_t *n = *done;
        *done = n->next;
        if (c->nfree < FREELIST_MAX) {
            if (n->payload != n->inl)
                free(n->payload);
            n->payload = NULL;
            n->next = c->freelist;
            c->freelist = n;
            c->nfree++;
        } else {
            free_node(n);
        }
    }
}

static void *lib_main(void *arg)
{
    ctx_t *c = arg;
    req_t *done = NULL;
    int64_t idle_since = 0; /* when it last ran out of requests */

    pthread_mutex_lock(&c->rt.mu);
    for (;;) {
        recycle(c, &done);
        for (;;) { /* wait for work */
            if (c->qhead)
                break;
            if (c->hn) {
                if (c->cancel || c->heap[0]->deadline_ns <= now_ns())
                    break;
                c->sleeping = 1;
                struct timespec ts = ns_to_ts(c->heap[0]->deadline_ns);
                pthread_cond_timedwait(&c->rt.cv_work, &c->rt.mu, &ts);
                c->sleeping = 0;
            } else if (c->rt.stopping) {
                goto out;
            } else {
                c->sleeping = 1;
                pthread_cond_wait(&c->rt.cv_work, &c->rt.mu);
                c->sleeping = 0;
            }
        }
        if (c->qhead && idle_since) {
            /* a wait cut short at twice the longest spin: one long pause
               does not make the next spin short for long */
            int64_t waited = now_ns() - idle_since;
            if (waited > 2 * SPIN_MAX_NS)
                waited = 2 * SPIN_MAX_NS;
            c->gap_ns += (waited - c->gap_ns) / 8;
            idle_since = 0;
        }
        req_t *batch = c->qhead;
        int cancel = c->cancel;
        int handoff = c->rt.handoff;
        c->qhead = c->qtail = NULL;
        atomic_store_explicit(&c->qnonempty, 0, memory_order_relaxed);
        pthread_mutex_unlock(&c->rt.mu);

        c->lone = batch && !batch->next ? c->lone + 1 : 0;
        while (batch) {
            req_t *n = batch;
            batch = n->next;
            if (handle(c, n)) {
                n->next = done;
                done = n;
            }
            if (handoff) { /* the caller returns once its request was handled */
                pthread_mutex_lock(&c->rt.mu);
                c->rt.handled_seq = n->seq;
                pthread_cond_broadcast(&c->rt.cv_done);
                pthread_mutex_unlock(&c->rt.mu);
            }
        }
        int64_t now = now_ns();
        while (c->hn && (cancel || c->heap[0]->deadline_ns <= now)) {
            req_t *n = heap_pop(c);
            if (cancel)
                finish_cancelled(n);
            else if (!fire_timer(c, n))
                continue;
            n->next = done;
            done = n;
        }
        /* Spin briefly before taking the lock and maybe sleeping: a caller
         * that submits again right away then needs no futex wake-up. While
         * requests come less than SPIN_MAX_NS apart (a client calling back
         * to back through a slower round trip, TLS say), one at a time
         * (LONE_BATCHES batches of one request in a row: with several
         * callers the cores are busy, and a longer spin would take one from
         * them), spin for twice the usual wait: waking a sleeping thread
         * costs tens of microseconds on a virtual machine, more than such a
         * call. After a turn that was not one request alone (a batch of
         * several: several callers, who keep the cores busy; or timers
         * only), spin only BUSY_SPIN_NS: on a machine shared with the
         * callers, the spin's core is one a caller needs. Not in handoff
         * mode, which keeps to the real build's timing. */
        idle_since = now_ns();
        int64_t spin = SPIN_NS;
        if (!handoff && c->lone >= LONE_BATCHES && c->gap_ns <= SPIN_MAX_NS &&
            2 * c->gap_ns > SPIN_NS)
            spin = 2 * c->gap_ns < SPIN_MAX_NS ? 2 * c->gap_ns : SPIN_MAX_NS;
        else if (!handoff && c->lone == 0)
            spin = BUSY_SPIN_NS;
        int64_t spin_end = idle_since + spin;
        for (int i = 0; !atomic_load_explicit(&c->qnonempty, memory_order_relaxed); i++) {
            if (i < 128) {
#if defined(__x86_64__) || defined(__i386__)
                __builtin_ia32_pause();
#endif
                continue;
            }
            /* then yield: on a busy machine the submitter may need this core */
            if (now_ns() > spin_end)
                break;
            sched_yield();
        }
        pthread_mutex_lock(&c->rt.mu);
    }
out:
    recycle(c, &done);
    c->exited = 1;
    pthread_cond_broadcast(&c->rt.cv_done);
    pthread_mutex_unlock(&c->rt.mu);
    return NULL;
}

/* ---- submission --------------------------------------------------------- */

static req_t *new_node(ctx_t *c)
{
    req_t *n = NULL;
    pthread_mutex_lock(&c->rt.mu);
    if (c->freelist) {
        n = c->freelist;
        c->freelist = n->next;
        c->nfree--;
    }
    pthread_mutex_unlock(&c->rt.mu);
    if (!n)
        n = malloc(sizeof *n);
    return n;
}

/* handoff (the real library's timing): the caller returns only once the
 * library thread has handled its request, and callers take turns, as the
 * real library's callers do (it holds a per-context lock from sending a
 * request until its thread has taken it). So while the library thread is
 * busy, one caller waits for it and the others wait for their turn: requests
 * are never handed over in a batch. destroy releases them all (releasing). */
static void enqueue(ctx_t *c, req_t *n, int handoff)
{
    pthread_mutex_lock(&c->rt.mu);
    if (handoff) {
        while (c->handing_over && !c->rt.releasing)
            pthread_cond_wait(&c->cv_turn, &c->rt.mu);
        c->handing_over = 1;
    }
    n->next = NULL;
    n->seq = ++c->rt.submit_seq;
    if (c->qtail)
        c->qtail->next = n;
    else
        c->qhead = n;
    c->qtail = n;
    atomic_store_explicit(&c->qnonempty, 1, memory_order_relaxed);
    if (c->sleeping)
        pthread_cond_signal(&c->rt.cv_work);
    if (handoff) {
        uint64_t seq = n->seq; /* n may be recycled once handled */
        while (c->rt.handled_seq < seq && !c->rt.releasing)
            pthread_cond_wait(&c->rt.cv_done, &c->rt.mu);
        c->handing_over = 0;
        pthread_cond_signal(&c->cv_turn);
    }
    pthread_mutex_unlock(&c->rt.mu);
}

static int submit(int method, void *ctx, FFICallBack cb, void *ud, const uint8_t *payload,
                  size_t len)
{
    int rc;
    ctx_t *c = (ctx_t *)ffi_enter(ctx, cb, ud, &rc);
    if (!c)
        return rc;
    req_t *n = new_node(c);
    if (!n) {
        ffi_release(&c->rt);
        ffi_call_err(cb, "out of memory queueing a request", ud);
        return RET_ERR;
    }
    n->method = method;
    n->cb = cb;
    n->ud = ud;
    n->len = len;
    n->payload = ffi_copy_payload(n->inl, sizeof n->inl, payload, len, &n->null_payload, &n->oom);
    enqueue(c, n, c->rt.handoff);
    ffi_release(&c->rt);
    return RET_OK;
}

int MT_SYM(version)(void *ctx, FFICallBack cb, void *ud, const uint8_t *p, size_t n)
{
    return submit(M_VERSION, ctx, cb, ud, p, n);
}

int MT_SYM(echo)(void *ctx, FFICallBack cb, void *ud, const uint8_t *p, size_t n)
{
    return submit(M_ECHO, ctx, cb, ud, p, n);
}

int MT_SYM(complex)(void *ctx, FFICallBack cb, void *ud, const uint8_t *p, size_t n)
{
    return submit(M_COMPLEX, ctx, cb, ud, p, n);
}

int MT_SYM(schedule)(void *ctx, FFICallBack cb, void *ud, const uint8_t *p, size_t n)
{
    return submit(M_SCHEDULE, ctx, cb, ud, p, n);
}

#if MT_GENERATION == 3
/* The static call of the 0.3 generation: no context, so no library thread;
 * it is answered on the caller's thread before it returns (the timing a host
 * must already accept from the real library's quick handlers). */
int my_timer_lib_version(FFICallBack cb, void *ud, const uint8_t *p, size_t len)
{
    int rc = ffi_check_call(cb);
    if (rc != RET_OK)
        return rc;
    mt_buf b;
    mt_buf_init(&b);
    if (!p && len > 0) {
        ffi_payload_error(&b, "MyTimerLibVersionReq", len, 0);
        ffi_reply(cb, ud, &b, RET_ERR);
    } else {
        mt_dec d;
        mt_dec_init(&d, p, len);
        if (mt_decode_lib_version(&d)) {
            ffi_decode_error(&b, "MyTimerLibVersionReq", d.err);
            ffi_reply(cb, ud, &b, RET_ERR);
        } else {
            mt_encode_version(&b);
            ffi_reply(cb, ud, &b, RET_OK);
        }
    }
    mt_buf_free(&b);
    return RET_OK;
}
#endif

/* ---- create / destroy --------------------------------------------------- */

static void ctx_free(ctx_t *c)
{
    req_t *n;
    while ((n = c->freelist)) {
        c->freelist = n->next;
        free_node(n);
    }
    free(c->heap);
    free(c->name);
#if MT_GENERATION == 3
    ev_t *e;
    while ((e = c->ehead)) {
        c->ehead = e->next;
        free(e);
    }
    pthread_mutex_destroy(&c->emu);
    pthread_cond_destroy(&c->ecv);
#endif
    pthread_cond_destroy(&c->cv_turn);
    ffi_ctx_destroy(&c->rt);
    free(c);
}

/* Stops an idle library thread (and the event thread, if started) and joins them. */
static void stop_threads(ctx_t *c, int event_thread)
{
    ffi_stop_thread(&c->rt);
#if MT_GENERATION == 3
    if (event_thread) {
        pthread_mutex_lock(&c->emu);
        c->estop = 1;
        pthread_cond_signal(&c->ecv);
        pthread_mutex_unlock(&c->emu);
        pthread_join(c->ethread, NULL);
    }
#else
    (void)event_thread;
#endif
}

void *MT_SYM(create)(const uint8_t *payload, size_t len, FFICallBack cb, void *ud)
{
    if (ffi_in_cb || !cb)
        return NULL; /* nowhere to report, or a reentrant call */

    int handoff;
    if (ffi_submit_mode("MY_TIMER_SUBMIT_MODE", cb, ud, &handoff))
        return NULL;
    int64_t grace = DEFAULT_GRACE_MS;
    const char *gs = getenv("MY_TIMER_DESTROY_GRACE_MS");
    if (gs && *gs) {
        char *end;
        errno = 0;
        long long v = strtoll(gs, &end, 10);
        if (errno || *end || v < 0 || v > MAX_GRACE_MS) {
            char q[80];
            mt_quote(q, sizeof q, gs, strlen(gs));
            return ffi_ctor_fail(cb, ud,
                                 "ffiCtor: invalid MY_TIMER_DESTROY_GRACE_MS '%s' "
                                 "(expected an integer from 0 to 3600000)", q);
        }
        grace = v;
    }
    int64_t stale_ms = 0;
#if MT_GENERATION == 3
    stale_ms = DEFAULT_STALE_MS;
    const char *ss = getenv("MY_TIMER_STALE_WARN_MS"); /* a test aid */
    if (ss && *ss) {
        char *end;
        errno = 0;
        long long v = strtoll(ss, &end, 10);
        if (errno || *end || v < 0 || v > MAX_STALE_MS) {
            char q[80];
            mt_quote(q, sizeof q, ss, strlen(ss));
            return ffi_ctor_fail(cb, ud,
                                 "ffiCtor: invalid MY_TIMER_STALE_WARN_MS '%s' "
                                 "(expected an integer from 0 to 3600000)", q);
        }
        stale_ms = v;
    }
#endif
    if (!payload && len > 0) {
        char det[64];
        snprintf(det, sizeof det, "NULL payload pointer with length %zu", len);
        return ffi_ctor_fail(cb, ud, "ffiCtor: failed to decode request: %s", det);
    }
    mt_dec d;
    mt_create_req r;
    mt_dec_init(&d, payload, len);
    if (mt_decode_create(&d, &r))
        return ffi_ctor_fail(cb, ud, "ffiCtor: failed to decode request: %s", d.err);

    ctx_t *c = calloc(1, sizeof *c);
    req_t *n = malloc(sizeof *n);
    char *name = malloc(r.name.n + 1);
    if (!c || !n || !name) {
        free(c), free(n), free(name);
        return ffi_ctor_fail(cb, ud, "ffiCtor: %s", "out of memory");
    }
    memcpy(name, r.name.s, r.name.n);
    name[r.name.n] = 0;
    c->name = name;
    c->name_len = r.name.n;
    c->grace_ms = grace;
    c->stale_ns = stale_ms * 1000000;
    ffi_ctx_init(&c->rt, handoff);
    pthread_cond_init(&c->cv_turn, NULL);
#if MT_GENERATION == 3
    pthread_mutex_init(&c->emu, NULL);
    pthread_cond_init(&c->ecv, NULL);
#endif

    int err = ffi_start_thread(&c->rt.thread, lib_main, c);
#if MT_GENERATION == 3
    int eerr = err ? 0 : ffi_start_thread(&c->ethread, event_main, c);
#endif
    if (err) {
        free(n);
        ctx_free(c);
        return ffi_ctor_fail(cb, ud, "ffiCtor: cannot start the library thread: %s",
                             strerror(err));
    }
#if MT_GENERATION == 3
    if (eerr || ffi_reg_add(&c->rt)) {
        stop_threads(c, !eerr);
        free(n);
        ctx_free(c);
        if (eerr)
            return ffi_ctor_fail(cb, ud, "ffiCtor: cannot start the event thread: %s",
                                 strerror(eerr));
        return ffi_ctor_fail(cb, ud, "ffiCtor: %s", "out of memory");
    }
#else
    if (ffi_reg_add(&c->rt)) {
        stop_threads(c, 0);
        free(n);
        ctx_free(c);
        return ffi_ctor_fail(cb, ud, "ffiCtor: %s", "out of memory");
    }
#endif
    /* The RET_OK callback comes from the library thread, normally after we return. */
    memset(n, 0, sizeof *n);
    n->method = M_CTOR;
    n->cb = cb;
    n->ud = ud;
    n->payload = n->inl;
    enqueue(c, n, 0);
    return c;
}

int my_timer_destroy(void *ctx)
{
    if (ffi_in_cb || !ctx)
        return RET_ERR; /* from a callback this would join our own thread */
    ctx_t *c = (ctx_t *)ffi_reg_remove(ctx);
    if (!c)
        return RET_ERR;
    /* New calls now see an invalid context. Calls already inside finish
     * queueing; handoff callers stop waiting, for the library thread or for
     * their turn (their request stays queued and is drained or cancelled
     * below), so a stuck library thread cannot hold them forever. */
    ffi_begin_release(&c->rt);
    pthread_mutex_lock(&c->rt.mu);
    pthread_cond_broadcast(&c->cv_turn);
    pthread_mutex_unlock(&c->rt.mu);
    ffi_wait_unused(&c->rt);

    pthread_mutex_lock(&c->rt.mu);
    c->rt.stopping = 1;
    pthread_cond_signal(&c->rt.cv_work);
    struct timespec ts = ns_to_ts(now_ns() + c->grace_ms * 1000000);
    while (!c->exited) {
        if (!c->cancel) {
            if (pthread_cond_timedwait(&c->rt.cv_done, &c->rt.mu, &ts) == ETIMEDOUT && !c->exited) {
                /* grace over: pending requests get their final RET_ERR now */
                c->cancel = 1;
                pthread_cond_signal(&c->rt.cv_work);
            }
        } else {
            pthread_cond_wait(&c->rt.cv_done, &c->rt.mu);
        }
    }
    pthread_mutex_unlock(&c->rt.mu);
    pthread_join(c->rt.thread, NULL);
#if MT_GENERATION == 3
    /* every event is queued by now: the event thread delivers them all, then exits */
    pthread_mutex_lock(&c->emu);
    c->estop = 1;
    pthread_cond_signal(&c->ecv);
    pthread_mutex_unlock(&c->emu);
    pthread_join(c->ethread, NULL);
#endif
    ctx_free(c);
    return RET_OK;
}

/* ---- events ------------------------------------------------------------- */

uint64_t my_timer_add_event_listener(void *ctx, const char *event, FFICallBack cb, void *ud)
{
    return ffi_add_listener(ctx, event, 1, cb, ud);
}

int my_timer_remove_event_listener(void *ctx, uint64_t id)
{
    return ffi_remove_listener(ctx, id);
}

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
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cbor.h"
#include "requests.h"

enum { M_CTOR, M_VERSION, M_ECHO, M_COMPLEX, M_SCHEDULE };

static const char *const req_type[] = {"", "MyTimerVersionReq", "MyTimerEchoReq",
                                       "MyTimerComplexReq", "MyTimerScheduleReq"};
static const char *const method_name[] = {"create", "version", "echo", "complex",
                                          "schedule"};

#define INLINE_PAYLOAD 96
#define FREELIST_MAX 1024
#define SPIN_NS 30000          /* idle spin before sleeping: keeps round trips cheap */
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

typedef struct {
    uint64_t id;
    char *name; /* NULL: wildcard (0.2), receives nothing (0.3) */
    FFICallBack cb;
    void *ud;
} listener_t;

/* 0.3: an event on its way to the event thread. */
typedef struct ev {
    struct ev *next;
    const char *name; /* static string */
    int code;
    size_t len;
    uint8_t body[];
} ev_t;

typedef struct ctx {
    pthread_mutex_t mu;
    pthread_cond_t cv_work; /* library thread waits here */
    pthread_cond_t cv_done; /* handoff callers and destroy wait here */
    pthread_cond_t cv_turn; /* handoff callers wait here for their turn */
    req_t *qhead, *qtail;
    atomic_int qnonempty; /* lets the spinning library thread see work without the lock */
    req_t *freelist;
    int nfree;
    int sleeping, stopping, cancel, exited;
    int releasing; /* destroy started: handoff callers stop waiting */
    int handoff;
    int handing_over; /* handoff: a caller is waiting for its request to be taken */
    uint64_t submit_seq, handled_seq;
    int64_t grace_ms;
    pthread_t thread;
    char *name;
    size_t name_len;
    atomic_int users; /* ABI calls currently using this context */

    /* timer heap: library thread only */
    req_t **heap;
    size_t hn, hcap;

    pthread_mutex_t lmu; /* listeners; held while they run (see remove) */
    listener_t *lst;
    size_t nl, lcap;
    uint64_t next_id;

    int64_t stale_ns; /* 0.3: RET_STALE_WARN interval (0: never) */
#if MT_GENERATION == 3
    atomic_int nnamed; /* listeners with a name: events are queued only then */
    pthread_t ethread; /* event thread: delivers events, nothing else */
    pthread_mutex_t emu;
    pthread_cond_t ecv;
    ev_t *ehead, *etail;
    int estop;
#endif
} ctx_t;

/* ---- registry of live contexts ------------------------------------------ */

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static ctx_t **reg;
static size_t nreg, regcap;

static int reg_add(ctx_t *c)
{
    int rc = 0;
    pthread_mutex_lock(&reg_mu);
    if (nreg == regcap) {
        size_t ncap = regcap ? regcap * 2 : 8;
        ctx_t **n = realloc(reg, ncap * sizeof *n);
        if (!n)
            rc = -1;
        else
            reg = n, regcap = ncap;
    }
    if (rc == 0)
        reg[nreg++] = c;
    pthread_mutex_unlock(&reg_mu);
    return rc;
}

/* Looks the pointer up without dereferencing it; pins the context. */
static ctx_t *acquire(void *p)
{
    ctx_t *found = NULL;
    if (!p)
        return NULL;
    pthread_mutex_lock(&reg_mu);
    for (size_t i = 0; i < nreg; i++) {
        if (reg[i] == p) {
            found = reg[i];
            atomic_fetch_add(&found->users, 1);
            break;
        }
    }
    pthread_mutex_unlock(&reg_mu);
    return found;
}

static void release(ctx_t *c) { atomic_fetch_sub(&c->users, 1); }

static ctx_t *reg_remove(void *p)
{
    ctx_t *found = NULL;
    pthread_mutex_lock(&reg_mu);
    for (size_t i = 0; i < nreg; i++) {
        if (reg[i] == p) {
            found = reg[i];
            reg[i] = reg[--nreg];
            break;
        }
    }
    if (nreg == 0) { /* leave no heap behind when idle */
        free(reg);
        reg = NULL;
        regcap = 0;
    }
    pthread_mutex_unlock(&reg_mu);
    return found;
}

/* ---- helpers ---------------------------------------------------------- */

/* Set while this thread runs a library callback: ABI calls made from there
 * are rejected (RET_ERR, no callback) instead of deadlocking. */
static __thread int tl_in_cb;

static void call_cb(FFICallBack cb, int code, const void *msg, size_t len, void *ud)
{
    tl_in_cb++;
    cb(code, (const char *)msg, len, ud);
    tl_in_cb--;
}

static void call_err(FFICallBack cb, const char *text, void *ud)
{
    call_cb(cb, RET_ERR, text, strlen(text), ud);
}

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
 * deadlocked (tl_in_cb). */
static void deliver_event(ctx_t *c, const char *ev, int code, const void *body, size_t len)
{
    pthread_mutex_lock(&c->lmu);
    for (size_t i = 0; i < c->nl; i++) {
        listener_t *l = &c->lst[i];
#if MT_GENERATION == 3
        if (!l->name || strcmp(l->name, ev) != 0)
            continue;
#else
        if (l->name && strcmp(l->name, ev) != 0)
            continue;
#endif
        call_cb(l->cb, code, body, len, l->ud);
    }
    pthread_mutex_unlock(&c->lmu);
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
    if (atomic_load(&c->nnamed) == 0)
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

static void reply_to(FFICallBack cb, void *ud, mt_buf *b, int code)
{
    if (b->oom)
        call_err(cb, "out of memory encoding reply", ud);
    else
        call_cb(cb, code, b->p, b->len, ud);
}

static void reply(req_t *n, mt_buf *b, int code) { reply_to(n->cb, n->ud, b, code); }

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
    call_cb(n->cb, RET_STALE_WARN, msg, (size_t)len, n->ud);
    return 1;
}

static void finish_cancelled(req_t *n)
{
    char msg[64];
    snprintf(msg, sizeof msg, "%s cancelled: context destroyed", method_name[n->method]);
    call_err(n->cb, msg, n->ud);
}

/* Returns 1 when the node is finished, 0 when it moved into the timer heap. */
static int handle(ctx_t *c, req_t *n)
{
    mt_dec d;
    mt_buf b;
    int rc;

    if (n->method == M_CTOR) {
        char addr[32];
        mt_buf_init(&b);
        snprintf(addr, sizeof addr, "%" PRIuPTR, (uintptr_t)c);
        mt_cbor_ctext(&b, addr);
        reply(n, &b, RET_OK);
        return 1;
    }
    mt_buf_init(&b);
    if (n->null_payload || n->oom) {
        mt_buf_puts(&b, "CBOR decode failed for ");
        mt_buf_puts(&b, req_type[n->method]);
        mt_buf_puts(&b, n->oom ? ": out of memory copying a request of " : ": NULL payload pointer with length ");
        mt_buf_put_u64(&b, n->len);
        if (n->oom)
            mt_buf_puts(&b, " bytes");
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
        mt_buf_puts(&b, "CBOR decode failed for ");
        mt_buf_puts(&b, req_type[n->method]);
        mt_buf_puts(&b, ": ");
        mt_buf_puts(&b, d.err);
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
        call_err(n->cb, "out of memory scheduling a timer", n->ud);
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
    /* caller holds c->mu */
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

    pthread_mutex_lock(&c->mu);
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
                pthread_cond_timedwait(&c->cv_work, &c->mu, &ts);
                c->sleeping = 0;
            } else if (c->stopping) {
                goto out;
            } else {
                c->sleeping = 1;
                pthread_cond_wait(&c->cv_work, &c->mu);
                c->sleeping = 0;
            }
        }
        req_t *batch = c->qhead;
        int cancel = c->cancel;
        int handoff = c->handoff;
        c->qhead = c->qtail = NULL;
        atomic_store_explicit(&c->qnonempty, 0, memory_order_relaxed);
        pthread_mutex_unlock(&c->mu);

        while (batch) {
            req_t *n = batch;
            batch = n->next;
            if (handle(c, n)) {
                n->next = done;
                done = n;
            }
            if (handoff) { /* the caller returns once its request was handled */
                pthread_mutex_lock(&c->mu);
                c->handled_seq = n->seq;
                pthread_cond_broadcast(&c->cv_done);
                pthread_mutex_unlock(&c->mu);
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
         * that submits again right away then needs no futex wake-up. */
        int64_t spin_end = now_ns() + SPIN_NS;
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
        pthread_mutex_lock(&c->mu);
    }
out:
    recycle(c, &done);
    c->exited = 1;
    pthread_cond_broadcast(&c->cv_done);
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* ---- submission --------------------------------------------------------- */

static req_t *new_node(ctx_t *c)
{
    req_t *n = NULL;
    pthread_mutex_lock(&c->mu);
    if (c->freelist) {
        n = c->freelist;
        c->freelist = n->next;
        c->nfree--;
    }
    pthread_mutex_unlock(&c->mu);
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
    pthread_mutex_lock(&c->mu);
    if (handoff) {
        while (c->handing_over && !c->releasing)
            pthread_cond_wait(&c->cv_turn, &c->mu);
        c->handing_over = 1;
    }
    n->next = NULL;
    n->seq = ++c->submit_seq;
    if (c->qtail)
        c->qtail->next = n;
    else
        c->qhead = n;
    c->qtail = n;
    atomic_store_explicit(&c->qnonempty, 1, memory_order_relaxed);
    if (c->sleeping)
        pthread_cond_signal(&c->cv_work);
    if (handoff) {
        uint64_t seq = n->seq; /* n may be recycled once handled */
        while (c->handled_seq < seq && !c->releasing)
            pthread_cond_wait(&c->cv_done, &c->mu);
        c->handing_over = 0;
        pthread_cond_signal(&c->cv_turn);
    }
    pthread_mutex_unlock(&c->mu);
}

static int submit(int method, void *ctx, FFICallBack cb, void *ud, const uint8_t *payload,
                  size_t len)
{
    if (tl_in_cb)
        return RET_ERR; /* reentrant call: rejected without a callback */
    if (!cb)
        return RET_MISSING_CALLBACK;
    ctx_t *c = acquire(ctx);
    if (!c) {
        call_err(cb, "ctx is not a valid FFI context", ud);
        return RET_ERR;
    }
    req_t *n = new_node(c);
    if (!n) {
        release(c);
        call_err(cb, "out of memory queueing a request", ud);
        return RET_ERR;
    }
    n->method = method;
    n->cb = cb;
    n->ud = ud;
    n->len = len;
    n->null_payload = payload == NULL && len > 0;
    n->oom = 0;
    n->payload = n->inl;
    if (!n->null_payload && len > 0) {
        /* the caller's buffer is only valid during the call */
        if (len > sizeof n->inl) {
            n->payload = malloc(len);
            if (!n->payload)
                n->oom = 1;
        }
        if (n->payload)
            memcpy(n->payload, payload, len);
    }
    enqueue(c, n, c->handoff);
    release(c);
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
    if (tl_in_cb)
        return RET_ERR; /* reentrant call: rejected without a callback */
    if (!cb)
        return RET_MISSING_CALLBACK;
    mt_buf b;
    mt_buf_init(&b);
    if (!p && len > 0) {
        mt_buf_puts(&b, "CBOR decode failed for MyTimerLibVersionReq: NULL payload pointer with length ");
        mt_buf_put_u64(&b, len);
        reply_to(cb, ud, &b, RET_ERR);
    } else {
        mt_dec d;
        mt_dec_init(&d, p, len);
        if (mt_decode_lib_version(&d)) {
            mt_buf_puts(&b, "CBOR decode failed for MyTimerLibVersionReq: ");
            mt_buf_puts(&b, d.err);
            reply_to(cb, ud, &b, RET_ERR);
        } else {
            mt_encode_version(&b);
            reply_to(cb, ud, &b, RET_OK);
        }
    }
    mt_buf_free(&b);
    return RET_OK;
}
#endif

/* ---- create / destroy --------------------------------------------------- */

static void *ctor_fail(FFICallBack cb, void *ud, const char *fmt, const char *detail)
{
    char msg[MT_ERR_MAX + 128];
    snprintf(msg, sizeof msg, fmt, detail);
    call_err(cb, msg, ud);
    return NULL;
}

static void ctx_free(ctx_t *c)
{
    req_t *n;
    while ((n = c->freelist)) {
        c->freelist = n->next;
        free_node(n);
    }
    for (size_t i = 0; i < c->nl; i++)
        free(c->lst[i].name);
    free(c->lst);
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
    pthread_mutex_destroy(&c->mu);
    pthread_mutex_destroy(&c->lmu);
    pthread_cond_destroy(&c->cv_work);
    pthread_cond_destroy(&c->cv_done);
    pthread_cond_destroy(&c->cv_turn);
    free(c);
}

/* Stops an idle library thread (and the event thread, if started) and joins them. */
static void stop_threads(ctx_t *c, int event_thread)
{
    pthread_mutex_lock(&c->mu);
    c->stopping = 1;
    pthread_cond_signal(&c->cv_work);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->thread, NULL);
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
    if (tl_in_cb || !cb)
        return NULL; /* nowhere to report, or a reentrant call */

    const char *mode = getenv("MY_TIMER_SUBMIT_MODE");
    int handoff = 0;
    if (mode && *mode && strcmp(mode, "async") != 0) {
        if (strcmp(mode, "handoff") != 0) {
            char q[80];
            mt_quote(q, sizeof q, mode, strlen(mode));
            return ctor_fail(cb, ud,
                             "ffiCtor: invalid MY_TIMER_SUBMIT_MODE '%s' "
                             "(expected 'async' or 'handoff')", q);
        }
        handoff = 1;
    }
    int64_t grace = DEFAULT_GRACE_MS;
    const char *gs = getenv("MY_TIMER_DESTROY_GRACE_MS");
    if (gs && *gs) {
        char *end;
        errno = 0;
        long long v = strtoll(gs, &end, 10);
        if (errno || *end || v < 0 || v > MAX_GRACE_MS) {
            char q[80];
            mt_quote(q, sizeof q, gs, strlen(gs));
            return ctor_fail(cb, ud,
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
            return ctor_fail(cb, ud,
                             "ffiCtor: invalid MY_TIMER_STALE_WARN_MS '%s' "
                             "(expected an integer from 0 to 3600000)", q);
        }
        stale_ms = v;
    }
#endif
    if (!payload && len > 0) {
        char det[64];
        snprintf(det, sizeof det, "NULL payload pointer with length %zu", len);
        return ctor_fail(cb, ud, "ffiCtor: failed to decode request: %s", det);
    }
    mt_dec d;
    mt_create_req r;
    mt_dec_init(&d, payload, len);
    if (mt_decode_create(&d, &r))
        return ctor_fail(cb, ud, "ffiCtor: failed to decode request: %s", d.err);

    ctx_t *c = calloc(1, sizeof *c);
    req_t *n = malloc(sizeof *n);
    char *name = malloc(r.name.n + 1);
    if (!c || !n || !name) {
        free(c), free(n), free(name);
        return ctor_fail(cb, ud, "ffiCtor: %s", "out of memory");
    }
    memcpy(name, r.name.s, r.name.n);
    name[r.name.n] = 0;
    c->name = name;
    c->name_len = r.name.n;
    c->handoff = handoff;
    c->grace_ms = grace;
    c->stale_ns = stale_ms * 1000000;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&c->mu, NULL);
    pthread_mutex_init(&c->lmu, NULL);
    pthread_cond_init(&c->cv_work, &ca);
    pthread_cond_init(&c->cv_done, &ca);
    pthread_cond_init(&c->cv_turn, NULL);
#if MT_GENERATION == 3
    pthread_mutex_init(&c->emu, NULL);
    pthread_cond_init(&c->ecv, NULL);
#endif
    pthread_condattr_destroy(&ca);

    /* The library's threads take no signals: they stay with the host's threads. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int err = pthread_create(&c->thread, NULL, lib_main, c);
#if MT_GENERATION == 3
    int eerr = err ? 0 : pthread_create(&c->ethread, NULL, event_main, c);
#endif
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err) {
        free(n);
        ctx_free(c);
        return ctor_fail(cb, ud, "ffiCtor: cannot start the library thread: %s",
                         strerror(err));
    }
#if MT_GENERATION == 3
    if (eerr || reg_add(c)) {
        stop_threads(c, !eerr);
        free(n);
        ctx_free(c);
        if (eerr)
            return ctor_fail(cb, ud, "ffiCtor: cannot start the event thread: %s",
                             strerror(eerr));
        return ctor_fail(cb, ud, "ffiCtor: %s", "out of memory");
    }
#else
    if (reg_add(c)) {
        stop_threads(c, 0);
        free(n);
        ctx_free(c);
        return ctor_fail(cb, ud, "ffiCtor: %s", "out of memory");
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
    if (tl_in_cb || !ctx)
        return RET_ERR; /* from a callback this would join our own thread */
    ctx_t *c = reg_remove(ctx);
    if (!c)
        return RET_ERR;
    /* New calls now see an invalid context. Calls already inside finish
     * queueing; handoff callers stop waiting, for the library thread or for
     * their turn (their request stays queued and is drained or cancelled
     * below), so a stuck library thread cannot hold them forever. */
    pthread_mutex_lock(&c->mu);
    c->releasing = 1;
    pthread_cond_broadcast(&c->cv_done);
    pthread_cond_broadcast(&c->cv_turn);
    pthread_mutex_unlock(&c->mu);
    while (atomic_load(&c->users) > 0)
        usleep(100);

    pthread_mutex_lock(&c->mu);
    c->stopping = 1;
    pthread_cond_signal(&c->cv_work);
    struct timespec ts = ns_to_ts(now_ns() + c->grace_ms * 1000000);
    while (!c->exited) {
        if (!c->cancel) {
            if (pthread_cond_timedwait(&c->cv_done, &c->mu, &ts) == ETIMEDOUT && !c->exited) {
                /* grace over: pending requests get their final RET_ERR now */
                c->cancel = 1;
                pthread_cond_signal(&c->cv_work);
            }
        } else {
            pthread_cond_wait(&c->cv_done, &c->mu);
        }
    }
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->thread, NULL);
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
    if (tl_in_cb || !cb)
        return 0;
    ctx_t *c = acquire(ctx);
    if (!c)
        return 0;
    uint64_t id = 0;
    char *name = NULL;
    if (event && *event && !(name = strdup(event))) {
        release(c);
        return 0;
    }
    pthread_mutex_lock(&c->lmu);
    if (c->nl == c->lcap) {
        size_t ncap = c->lcap ? c->lcap * 2 : 4;
        listener_t *l = realloc(c->lst, ncap * sizeof *l);
        if (l)
            c->lst = l, c->lcap = ncap;
    }
    if (c->nl < c->lcap) {
        id = ++c->next_id;
#if MT_GENERATION == 3
        if (name)
            atomic_fetch_add(&c->nnamed, 1);
#endif
        c->lst[c->nl++] = (listener_t){id, name, cb, ud};
        name = NULL;
    }
    pthread_mutex_unlock(&c->lmu);
    free(name);
    release(c);
    return id;
}

int my_timer_remove_event_listener(void *ctx, uint64_t id)
{
    if (tl_in_cb)
        return RET_ERR;
    ctx_t *c = acquire(ctx);
    if (!c)
        return RET_ERR;
    int rc = RET_ERR;
    pthread_mutex_lock(&c->lmu);
    for (size_t i = 0; i < c->nl; i++) {
        if (c->lst[i].id == id) {
#if MT_GENERATION == 3
            if (c->lst[i].name)
                atomic_fetch_sub(&c->nnamed, 1);
#endif
            free(c->lst[i].name);
            memmove(&c->lst[i], &c->lst[i + 1], (c->nl - i - 1) * sizeof c->lst[0]);
            c->nl--;
            rc = RET_OK;
            break;
        }
    }
    pthread_mutex_unlock(&c->lmu);
    release(c);
    return rc;
}

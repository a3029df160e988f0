/* See glue.h for what this is and why it is shaped this way. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "my_timer_cbor.h"
#include "glue.h"
#include "internal.h"


typedef void *(*create_fn)(const uint8_t *, size_t, FFICallBack, void *);
typedef int (*method_fn)(void *, FFICallBack, void *, const uint8_t *, size_t);
typedef int (*static_fn)(FFICallBack, void *, const uint8_t *, size_t);
typedef uint64_t (*listen_fn)(void *, const char *, FFICallBack, void *);

/* One registered event listener: its events come out as records with `id`.
   Freed with the host, after the context is destroyed. */
struct listener {
    struct listener *next;
    mt_host *host;
    uint64_t id;
};
typedef int (*destroy_fn)(void *);

/* One queued call. Freed when both the call has returned and its final
   callback has run, whichever is last: the real library may call back before
   the call returns. The request bytes are only needed until the library
   function returns (the library copies what it keeps), so they are freed
   then: a call the library holds for long costs the glue a few bytes, not
   its request. In direct mode they are never copied at all. */
struct call {
    struct call *next;
    mt_host *host;
    atomic_int refs;
    int method;
    uint64_t id;
    size_t len;
    uint8_t *data;
    int64_t submitted_ns; /* for the method's answer time (mt_call's wait) */
    /* mt_call: WAITING while its caller waits for the answer; the final
       callback moves it to DELIVERED with the answer in `result`, unless the
       caller gave up first (NO_WAITER): the answer is then queued as usual. */
    atomic_int waiter;
    struct done *result;
    int lane; /* made by the lane: the answer goes to it */
};

enum { NO_WAITER, WAITING, DELIVERED };

struct mt_host {
    void *dl;
    char prefix[MT_MAX_PREFIX + 1];
    const char *suffix;
    create_fn create;
    destroy_fn destroy;
    void *unlisten; /* <prefix>_remove_event_listener: only compared, never called */
    method_fn methods[MT_MAX_METHODS];
    static_fn statics[MT_MAX_METHODS]; /* set instead of methods[i] for static calls */
    atomic_uint_least64_t stale_by_method[MT_MAX_METHODS];
    listen_fn listen;
    struct listener *listeners;
    int nmethods;
    struct {
        uint8_t name[MT_QUICK_NAME];
        size_t len;
        int method;
    } quick[MT_QUICK_METHODS];
    int nquick;
    void *ctx;

    pthread_mutex_t create_mu;
    pthread_cond_t create_cv;
    int created;
    int create_ret;
    char create_msg[512];

    pthread_mutex_t submit_mu;
    pthread_cond_t submit_cv;
    struct call *submit_head, **submit_tail;
    int stopping;
    int submitter_waiting;
    int64_t last_call_ns;            /* the event loop's: when it queued the last call */
    atomic_int_least64_t call_gap_ns; /* the usual time between queued calls */
    pthread_t submitter;
    int submitter_running;
    atomic_int callback_cpu; /* the CPU the library last called back on, -1 none yet */

    pthread_mutex_t done_mu;
    struct done *done_head, **done_tail;
    int armed;
    int efd;

    int direct;
    /* Per method: how long its calls take from submission to the final
       callback (a moving average; written by whichever thread calls back,
       read by mt_call to decide whether an answer is worth waiting for). */
    atomic_int_least64_t answer_ns[MT_MAX_METHODS];
    atomic_int_least64_t call_started_ns;
    atomic_uint_least64_t queued, submitted, completed, stale, events;
    struct mt_lane *lane;
};

static struct timespec realtime_in(int timeout_ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec += 1;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

/* A completion record of `len` bytes of msg (NULL when out of memory: the
   request then times out in the daemon; nothing else to do). */
static struct done *new_record(uint64_t id, int ret, const char *msg, size_t len) {
    if (len > UINT32_MAX) {
        static const char too_big[] = "library result larger than 4 GiB";
        ret = RET_ERR;
        msg = too_big;
        len = sizeof too_big - 1;
    }
    struct done *d = malloc(sizeof *d + len);
    if (!d)
        return NULL;
    d->next = NULL;
    d->id = id;
    d->ret = ret;
    d->len = (uint32_t)len;
    if (len)
        memcpy(d->data, msg, len);
    return d;
}

static void queue_record(mt_host *h, struct done *d) {
    pthread_mutex_lock(&h->done_mu);
    *h->done_tail = d;
    h->done_tail = &d->next;
    int wake = !h->armed;
    h->armed = 1;
    pthread_mutex_unlock(&h->done_mu);
    if (wake) {
        uint64_t one = 1;
        /* A full counter (never in practice) still leaves the fd readable. */
        ssize_t n = write(h->efd, &one, sizeof one);
        (void)n;
    }
}

static void push_record(mt_host *h, uint64_t id, int ret, const char *msg, size_t len) {
    struct done *d = new_record(id, ret, msg, len);
    if (d)
        queue_record(h, d);
}

static void release_call(struct call *c) {
    if (atomic_fetch_sub(&c->refs, 1) == 1)
        free(c);
}

static void on_result(int ret, const char *msg, size_t len, void *ud) {
    struct call *c = ud;
    if (ret == RET_STALE_WARN) { /* newer nim-ffi: "still running", not final */
        atomic_fetch_add(&c->host->stale, 1);
        atomic_fetch_add(&c->host->stale_by_method[c->method], 1);
        return;
    }
    mt_host *h = c->host;
    atomic_fetch_add(&h->completed, 1);
    atomic_store_explicit(&h->callback_cpu, sched_getcpu(), memory_order_relaxed);
    /* Racy read-modify-write on purpose: a lost update only blurs an estimate. */
    int64_t took = now_ns() - c->submitted_ns;
    int64_t avg = atomic_load_explicit(&h->answer_ns[c->method], memory_order_relaxed);
    atomic_store_explicit(&h->answer_ns[c->method], avg + (took - avg) / 8,
                          memory_order_relaxed);
    struct done *d = new_record(c->id, ret, msg, len);
    if (c->lane) {
        lane_answer(h->lane, d);
        release_call(c);
        return;
    }
    if (d && atomic_load_explicit(&c->waiter, memory_order_relaxed) == WAITING) {
        c->result = d;
        int expected = WAITING;
        /* release: the waiter that sees DELIVERED sees the record too */
        if (atomic_compare_exchange_strong_explicit(&c->waiter, &expected, DELIVERED,
                                                    memory_order_acq_rel,
                                                    memory_order_acquire)) {
            release_call(c);
            return;
        }
        c->result = NULL; /* the waiter gave up: it goes the usual way */
    }
    if (d)
        queue_record(h, d);
    release_call(c);
}

/* Events may come from any library thread (the newer generation has an
   event thread of its own): push_record is thread-safe. */
static void on_event(int ret, const char *msg, size_t len, void *ud) {
    struct listener *l = ud;
    if (ret != RET_OK)
        return;
    atomic_fetch_add(&l->host->events, 1);
    push_record(l->host, l->id, ret, msg, len);
}

/* Call method number `method` of the library with the call as userData. */
static void invoke(mt_host *h, struct call *c, const uint8_t *data, size_t len) {
    if (h->statics[c->method])
        h->statics[c->method](on_result, c, data, len);
    else
        h->methods[c->method](h->ctx, on_result, c, data, len);
}

static void on_create(int ret, const char *msg, size_t len, void *ud) {
    mt_host *h = ud;
    if (ret == RET_STALE_WARN)
        return;
    pthread_mutex_lock(&h->create_mu);
    h->created = 1;
    h->create_ret = ret;
    size_t n = len < sizeof h->create_msg - 1 ? len : sizeof h->create_msg - 1;
    if (n && msg)
        memcpy(h->create_msg, msg, n);
    h->create_msg[n] = '\0';
    pthread_cond_broadcast(&h->create_cv);
    pthread_mutex_unlock(&h->create_mu);
}

/* dlsym of <prefix>_<name><suffix>; NULL when absent or too long to name. */
static void *lookup(mt_host *h, const char *name, const char *suffix) {
    char sym[MT_MAX_PREFIX + 160];
    int n = snprintf(sym, sizeof sym, "%s_%s%s", h->prefix, name, suffix);
    if (n < 0 || (size_t)n >= sizeof sym)
        return NULL;
    return dlsym(h->dl, sym);
}

static void *resolve(mt_host *h, const char *name) { return lookup(h, name, h->suffix); }

mt_host *mt_open(const char *path, const char *prefix, char *err, size_t errlen) {
    if (!prefix[0] || strlen(prefix) > MT_MAX_PREFIX) {
        snprintf(err, errlen, "library name must be 1 to %d bytes", MT_MAX_PREFIX);
        return NULL;
    }
    mt_host *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    strcpy(h->prefix, prefix);
    atomic_init(&h->callback_cpu, -1);
    h->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h->dl) {
        snprintf(err, errlen, "cannot load %s: %s", path, dlerror());
        free(h);
        return NULL;
    }
    /* Older nim-ffi builds suffix the CBOR ABI with _cbor and also export a
       different ABI under the bare names, so the suffix is decided once. */
    h->suffix = lookup(h, "create", "_cbor") ? "_cbor" : "";
    h->create = (create_fn)resolve(h, "create");
    h->destroy = (destroy_fn)lookup(h, "destroy", "");
    h->listen = (listen_fn)lookup(h, "add_event_listener", "");
    h->unlisten = lookup(h, "remove_event_listener", "");
    if (!h->create || !h->destroy) {
        snprintf(err, errlen,
                 "%s is not a nim-ffi CBOR-ABI library named %s "
                 "(no %s_create_cbor/%s_create or %s_destroy)",
                 path, prefix, prefix, prefix, prefix);
        dlclose(h->dl);
        free(h);
        return NULL;
    }
    h->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (h->efd < 0) {
        snprintf(err, errlen, "eventfd: %s", strerror(errno));
        dlclose(h->dl);
        free(h);
        return NULL;
    }
    pthread_mutex_init(&h->create_mu, NULL);
    pthread_cond_init(&h->create_cv, NULL);
    pthread_mutex_init(&h->submit_mu, NULL);
    pthread_cond_init(&h->submit_cv, NULL);
    pthread_mutex_init(&h->done_mu, NULL);
    h->submit_tail = &h->submit_head;
    h->done_tail = &h->done_head;
    return h;
}

/* Resolve `name` into the next method number, as a method on the context or
   as a static entry point; -1 if the library lacks it, -3 if the table is
   full, -2 if the symbol is the constructor, the destructor or a listener entry
   point under another name (calling it as a method would crash the daemon
   or end the context). */
static int bind_entry(mt_host *h, const char *name, int is_static) {
    if (h->nmethods == MT_MAX_METHODS)
        return -3;
    void *fn = resolve(h, name);
    if (!fn)
        return -1;
    if (fn == (void *)h->create || fn == (void *)h->destroy || fn == (void *)h->listen ||
        fn == h->unlisten)
        return -2;
    if (is_static)
        h->statics[h->nmethods] = (static_fn)fn;
    else
        h->methods[h->nmethods] = (method_fn)fn;
    return h->nmethods++;
}

int mt_bind(mt_host *h, const char *name) { return bind_entry(h, name, 0); }

int mt_bind_static(mt_host *h, const char *name) { return bind_entry(h, name, 1); }

int mt_generation(mt_host *h) { return h->suffix[0] ? 2 : 3; }

int mt_listen(mt_host *h, const char *name, uint64_t id) {
    if (!h->listen || !h->ctx)
        return -1;
    struct listener *l = malloc(sizeof *l);
    if (!l)
        return -1;
    l->host = h;
    l->id = id;
    if (h->listen(h->ctx, name, on_event, l) == 0) {
        free(l);
        return -1;
    }
    l->next = h->listeners;
    h->listeners = l;
    return 0;
}

uint64_t mt_stale(mt_host *h, int method) {
    if (method < 0 || method >= h->nmethods)
        return 0;
    return atomic_load(&h->stale_by_method[method]);
}

/* One step of a bounded busy wait: a CPU pause for the first 64 steps,
   then a yield (a thread on this core, the library's or the caller's, gets
   to run) until deadline; false once the deadline has passed. */
bool glue_spin_step(int i, int64_t deadline) {
    if (i < 64) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
        return true;
    }
    if (now_ns() >= deadline)
        return false;
    sched_yield();
    return true;
}

ssize_t glue_spin_recv(int fd, uint8_t *buf, size_t cap, int64_t deadline) {
    uint8_t peek;
    for (unsigned i = 0;; i++) {
        ssize_t n = cap ? recv(fd, buf, cap, MSG_DONTWAIT)
                        : recv(fd, &peek, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
            return n;
        if (now_ns() >= deadline) {
            errno = EAGAIN;
            return -1;
        }
        /* Every other look, yield: the client may be waiting for this core
           to send what we wait for. (glue_spin_step's first steps would not look
           at the clock, and each look here is a system call.) */
        if (i & 1)
            sched_yield();
    }
}

long mt_spin_read(int fd, uint8_t *buf, size_t cap, int64_t spin_ns) {
    ssize_t n = glue_spin_recv(fd, buf, cap, now_ns() + spin_ns);
    return n > 0 ? (long)n : 0;
}

/* Before the submitter sleeps: while calls come often, look for the next
   one a while (pause, then yield the core to whoever else wants it) for
   twice the usual time between calls, MT_SUBMIT_SPIN_NS at most. Waking a
   sleeping thread costs the event loop a futex call, and waking an idle CPU
   of a virtual machine tens of microseconds, on every call of a client
   that calls one at a time. Calls further apart than that: no spin. */
static void spin_for_work(mt_host *h) {
    int64_t gap = atomic_load_explicit(&h->call_gap_ns, memory_order_relaxed);
    if (gap > MT_SUBMIT_SPIN_NS)
        return;
    int64_t end = now_ns() + (2 * gap < MT_SUBMIT_SPIN_NS ? 2 * gap : MT_SUBMIT_SPIN_NS);
    for (int i = 0; !atomic_load_explicit(&h->queued, memory_order_relaxed); i++)
        if (!glue_spin_step(i, end))
            return;
}

/* Where the submitter runs. A call that returns only once the library's
   thread has taken the request (MT_HANDOFF_NS) is a round trip between the
   two threads: on one CPU a switch, across two a wake-up of the other CPU,
   which on a virtual machine costs more than the call (real-build-like
   library, 16 connections over TCP, the two threads pinned by hand:
   8,000-22,000 calls/s on two CPUs, 28,000-36,000 on one). So the
   submitter follows the CPU the library calls back on. A library whose
   calls return at once works beside the submitter instead, on another CPU:
   the submitter is not pinned. Placed before each batch of calls. */
struct placement {
    cpu_set_t allowed; /* the thread's own, restored when not following */
    int cpu;           /* followed, -1: none */
    int64_t call_ns;   /* the usual time of one call (a moving average) */
    bool off;          /* affinity cannot be read or set here */
};

static void place(mt_host *h, struct placement *p) {
    if (p->off)
        return;
    int want = p->call_ns >= MT_HANDOFF_NS
                   ? atomic_load_explicit(&h->callback_cpu, memory_order_relaxed)
                   : -1;
    if (want == p->cpu)
        return;
    cpu_set_t one, *set = &p->allowed;
    if (want >= 0) {
        CPU_ZERO(&one);
        CPU_SET(want, &one);
        set = &one;
    }
    if (pthread_setaffinity_np(pthread_self(), sizeof *set, set) != 0)
        p->off = true; /* (a CPU outside a cpuset, say): left where it is */
    else
        p->cpu = want;
}

static void *submitter_main(void *arg) {
    mt_host *h = arg;
    struct placement where = {.cpu = -1};
    where.off = pthread_getaffinity_np(pthread_self(), sizeof where.allowed, &where.allowed) != 0;
    pthread_setname_np(pthread_self(), "mt-submit");
    for (;;) {
        place(h, &where);
        pthread_mutex_lock(&h->submit_mu);
        while (!h->submit_head && !h->stopping) {
            h->submitter_waiting = 1;
            pthread_cond_wait(&h->submit_cv, &h->submit_mu);
            h->submitter_waiting = 0;
        }
        struct call *batch = h->submit_head;
        h->submit_head = NULL;
        h->submit_tail = &h->submit_head;
        pthread_mutex_unlock(&h->submit_mu);
        if (!batch)
            return NULL; /* stopping and drained */
        while (batch) {
            struct call *c = batch;
            batch = c->next;
            atomic_fetch_sub(&h->queued, 1);
            int64_t started = now_ns();
            atomic_store(&h->call_started_ns, started);
            invoke(h, c, c->data, c->len);
            atomic_store(&h->call_started_ns, 0);
            where.call_ns += (now_ns() - started - where.call_ns) / 8;
            atomic_fetch_add(&h->submitted, 1);
            free(c->data);
            c->data = NULL;
            release_call(c);
        }
        spin_for_work(h);
    }
}

int mt_create(mt_host *h, const uint8_t *req, size_t len, int timeout_ms, int direct,
              char *err, size_t errlen) {
    h->ctx = h->create(req, len, on_create, h);
    struct timespec deadline = realtime_in(timeout_ms);
    pthread_mutex_lock(&h->create_mu);
    int rc = 0;
    while (!h->created && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&h->create_cv, &h->create_mu, &deadline);
    int created = h->created, ret = h->create_ret;
    pthread_mutex_unlock(&h->create_mu);
    if (!h->ctx || !created || ret != RET_OK) {
        if (created)
            snprintf(err, errlen, "create failed: %s", h->create_msg);
        else if (!h->ctx)
            snprintf(err, errlen, "create returned NULL without a callback");
        else
            snprintf(err, errlen, "create's callback did not arrive within %d ms", timeout_ms);
        return -1;
    }
    h->direct = direct;
    if (direct)
        return 0;
    if (pthread_create(&h->submitter, NULL, submitter_main, h) != 0) {
        snprintf(err, errlen, "cannot start the submitter thread");
        return -1;
    }
    h->submitter_running = 1;
    return 0;
}

/* Make call `id` of method number `method`: on this thread (direct) or
   queued to the submitter (the payload is copied). `waiting`: mt_call's
   caller will wait for the answer, which holds one more reference. 0 on
   success, -1 if shutting down or out of memory (nothing was called). */
static int start_call(mt_host *h, int method, uint64_t id, const uint8_t *payload, size_t len,
                      struct call **out, int waiting, int lane) {
    if (method < 0 || method >= h->nmethods)
        return -1;
    struct call *c = malloc(sizeof *c);
    if (!c)
        return -1;
    c->next = NULL;
    c->host = h;
    atomic_init(&c->refs, waiting ? 3 : 2);
    atomic_init(&c->waiter, waiting ? WAITING : NO_WAITER);
    c->result = NULL;
    c->lane = lane;
    c->method = method;
    c->id = id;
    c->len = len;
    c->data = NULL;
    c->submitted_ns = now_ns();
    *out = c;
    if (h->direct) {
        if (h->stopping) {
            free(c);
            return -1;
        }
        atomic_store(&h->call_started_ns, c->submitted_ns);
        invoke(h, c, payload, len);
        atomic_store(&h->call_started_ns, 0);
        atomic_fetch_add(&h->submitted, 1);
        release_call(c);
        return 0;
    }
    if (len) {
        c->data = malloc(len);
        if (!c->data) {
            free(c);
            return -1;
        }
        memcpy(c->data, payload, len);
    }
    /* The usual time between calls (a moving average), for spin_for_work; a
       pause counts as twice the spin, so that the next burst spins soon. */
    int64_t gap = atomic_load_explicit(&h->call_gap_ns, memory_order_relaxed);
    int64_t since = c->submitted_ns - h->last_call_ns;
    if (since > 2 * MT_SUBMIT_SPIN_NS)
        since = 2 * MT_SUBMIT_SPIN_NS;
    atomic_store_explicit(&h->call_gap_ns, gap + (since - gap) / 8, memory_order_relaxed);
    h->last_call_ns = c->submitted_ns;
    pthread_mutex_lock(&h->submit_mu);
    if (h->stopping || !h->submitter_running) {
        pthread_mutex_unlock(&h->submit_mu);
        free(c->data);
        free(c);
        return -1;
    }
    *h->submit_tail = c;
    h->submit_tail = &c->next;
    atomic_fetch_add(&h->queued, 1);
    int wake = h->submitter_waiting;
    pthread_mutex_unlock(&h->submit_mu);
    if (wake)
        pthread_cond_signal(&h->submit_cv);
    return 0;
}

int mt_submit(mt_host *h, int method, uint64_t id, const uint8_t *payload, size_t len) {
    struct call *c;
    return start_call(h, method, id, payload, len, &c, 0, 0);
}

int glue_lane_call(mt_host *h, int method, uint64_t id, const uint8_t *payload, size_t len) {
    struct call *c;
    return start_call(h, method, id, payload, len, &c, 0, 1);
}

void glue_set_lane(mt_host *h, struct mt_lane *lane) { h->lane = lane; }

int64_t glue_answer_wait(mt_host *h, int method, int64_t max_wait_ns) {
    int64_t usual = atomic_load_explicit(&h->answer_ns[method], memory_order_relaxed);
    if (max_wait_ns <= 0 || usual > max_wait_ns)
        return 0;
    /* Twice the usual time and a little: the common answer is caught, and a
       slow one costs no more than that before it goes the usual way. */
    int64_t wait = 2 * usual + MT_WAIT_SLACK_NS;
    return wait < max_wait_ns ? wait : max_wait_ns;
}

/* Make call `id` and wait for its answer when the method's calls usually
   take at most max_wait_ns: 1 with the answer in *answer (the caller frees
   it), 0 when it comes later through the queue, -1 as start_call fails. */
static int call_wait(mt_host *h, int method, uint64_t id, const uint8_t *payload, size_t len,
                     int64_t max_wait_ns, struct done **answer) {
    if (method < 0 || method >= h->nmethods)
        return -1;
    int64_t wait = glue_answer_wait(h, method, max_wait_ns);
    int waiting = wait > 0;
    struct call *c;
    if (start_call(h, method, id, payload, len, &c, waiting, 0) != 0)
        return -1;
    if (!waiting)
        return 0;
    int64_t deadline = c->submitted_ns + wait;
    for (int i = 0; atomic_load_explicit(&c->waiter, memory_order_acquire) == WAITING; i++)
        if (!glue_spin_step(i, deadline))
            break;
    int expected = WAITING;
    if (atomic_compare_exchange_strong_explicit(&c->waiter, &expected, NO_WAITER,
                                                memory_order_acq_rel, memory_order_acquire)) {
        release_call(c); /* not in time: the answer will be queued */
        return 0;
    }
    *answer = c->result;
    release_call(c);
    return 1;
}

/* The answer d as a response frame in buf, freed: its size; or, when it
   does not fit in cap, queued for mt_drain: 0. */
static int64_t put_frame(mt_host *h, struct done *d, uint8_t *buf, size_t cap) {
    if ((size_t)d->len + 8 > cap) {
        queue_record(h, d);
        return 0;
    }
    put_be32(buf, (uint32_t)d->ret);
    put_be32(buf + 4, d->len);
    memcpy(buf + 8, d->data, d->len);
    int64_t size = 8 + (int64_t)d->len;
    free(d);
    return size;
}

int64_t mt_call(mt_host *h, int method, uint64_t id, const uint8_t *payload, size_t len,
                int64_t max_wait_ns, uint8_t *buf, size_t cap) {
    struct done *d;
    int rc = call_wait(h, method, id, payload, len, max_wait_ns, &d);
    return rc == 1 ? put_frame(h, d, buf, cap) : rc;
}

int mt_quick_add(mt_host *h, const char *name, int method) {
    size_t n = strlen(name);
    if (h->nquick == MT_QUICK_METHODS || n > MT_QUICK_NAME || method < 0 ||
        method >= h->nmethods)
        return -1;
    memcpy(h->quick[h->nquick].name, name, n);
    h->quick[h->nquick].len = n;
    h->quick[h->nquick].method = method;
    h->nquick++;
    return 0;
}

int glue_quick_method(mt_host *h, const uint8_t *name, size_t len) {
    for (int i = 0; i < h->nquick; i++)
        if (h->quick[i].len == len && memcmp(h->quick[i].name, name, len) == 0)
            return h->quick[i].method;
    return -1;
}

int64_t mt_quick(mt_host *h, const uint8_t *data, size_t len, uint64_t first_id,
                 int64_t max_wait_ns, uint8_t *out, size_t cap, int64_t *out_len,
                 mt_quick_call *calls, int max_calls, int *ncalls) {
    size_t pos = 0, used = 0;
    int n = 0;
    while (n < max_calls && len - pos >= 4) {
        size_t mlen = get_be32(data + pos);
        /* [u32 name length][name][u32 1][0xa0]: anything else is not quick */
        if (mlen > MT_QUICK_NAME || len - pos < 4 + mlen + 5)
            break;
        const uint8_t *payload = data + pos + 4 + mlen + 4;
        if (get_be32(data + pos + 4 + mlen) != 1 || payload[0] != 0xa0)
            break;
        int method = glue_quick_method(h, data + pos + 4, mlen);
        if (method < 0)
            break;
        int64_t started = now_ns();
        struct done *d;
        int rc = call_wait(h, method, first_id + (uint64_t)n, payload, 1, max_wait_ns, &d);
        if (rc < 0)
            break; /* not made: the caller's slow path answers it */
        pos += 4 + mlen + 5;
        calls[n].method = method;
        calls[n].ns = now_ns() - started;
        int64_t size = rc == 1 ? put_frame(h, d, out + used, cap - used) : 0;
        if (size == 0) { /* comes later: the caller waits for it before the rest */
            calls[n].ret = -1;
            n++;
            break;
        }
        calls[n].ret = (int32_t)get_be32(out + used);
        used += (size_t)size;
        n++;
    }
    *ncalls = n;
    *out_len = (int64_t)used;
    return (int64_t)pos;
}

int mt_fd(mt_host *h) { return h->efd; }

int64_t mt_drain(mt_host *h, uint8_t *buf, size_t cap) { return mt_drain_more(h, buf, cap, NULL); }

int64_t mt_drain_more(mt_host *h, uint8_t *buf, size_t cap, int *more) {
    uint64_t counter;
    ssize_t n = read(h->efd, &counter, sizeof counter); /* reset; EAGAIN is fine */
    (void)n;
    pthread_mutex_lock(&h->done_mu);
    struct done *first = h->done_head, *last = NULL, *d = first;
    size_t used = 0;
    while (d && used + 16 + d->len <= cap) {
        used += 16 + d->len;
        last = d;
        d = d->next;
    }
    if (!last) {
        if (first) {
            int64_t need = 16 + (int64_t)first->len;
            pthread_mutex_unlock(&h->done_mu);
            if (more)
                *more = 1;
            return -need;
        }
        h->armed = 0;
        pthread_mutex_unlock(&h->done_mu);
        if (more)
            *more = 0;
        return 0;
    }
    h->done_head = d;
    if (!d) {
        h->done_tail = &h->done_head;
        h->armed = 0;
    }
    last->next = NULL;
    pthread_mutex_unlock(&h->done_mu);
    /* Emptied (d == NULL): disarmed under the lock, so the next completion
       writes the eventfd again and the caller may wait on it now. */
    if (more)
        *more = d != NULL;
    uint8_t *p = buf;
    for (d = first; d;) {
        struct done *next = d->next;
        memcpy(p, &d->id, 8);
        memcpy(p + 8, &d->ret, 4);
        memcpy(p + 12, &d->len, 4);
        memcpy(p + 16, d->data, d->len);
        p += 16 + d->len;
        free(d);
        d = next;
    }
    return (int64_t)used;
}

void mt_get_status(mt_host *h, mt_status *out) {
    int64_t started = atomic_load(&h->call_started_ns);
    out->in_call_ns = started ? now_ns() - started : 0;
    out->queued = atomic_load(&h->queued);
    out->submitted = atomic_load(&h->submitted);
    out->completed = atomic_load(&h->completed);
    out->stale_warnings = atomic_load(&h->stale);
    out->events = atomic_load(&h->events);
}

struct destroyer {
    mt_host *h;
    int ret;
};

static void *destroyer_main(void *arg) {
    struct destroyer *d = arg;
    d->ret = d->h->destroy(d->h->ctx);
    return NULL;
}

int mt_shutdown(mt_host *h, int timeout_ms) {
    struct timespec deadline = realtime_in(timeout_ms);
    pthread_mutex_lock(&h->submit_mu);
    h->stopping = 1;
    pthread_cond_signal(&h->submit_cv);
    pthread_mutex_unlock(&h->submit_mu);
    if (h->submitter_running && pthread_timedjoin_np(h->submitter, NULL, &deadline) != 0)
        return -1; /* stuck inside a library call: abandon it */
    h->submitter_running = 0;
    if (h->ctx) {
        /* Heap-allocated: an abandoned destroyer thread keeps using it. */
        struct destroyer *d = malloc(sizeof *d);
        pthread_t t;
        if (!d)
            return -1;
        d->h = h;
        d->ret = RET_ERR;
        if (pthread_create(&t, NULL, destroyer_main, d) != 0) {
            free(d);
            return -1;
        }
        if (pthread_timedjoin_np(t, NULL, &deadline) != 0) {
            pthread_detach(t);
            return -1;
        }
        int ret = d->ret;
        free(d);
        h->ctx = NULL;
        if (ret != RET_OK)
            return 1; /* half-alive context: leave it alone */
    }
    /* Every callback has run: release what nobody will drain. */
    for (struct done *d = h->done_head; d;) {
        struct done *next = d->next;
        free(d);
        d = next;
    }
    for (struct listener *l = h->listeners; l;) {
        struct listener *next = l->next;
        free(l);
        l = next;
    }
    if (h->lane)
        lane_free(h->lane);
    close(h->efd);
    free(h);
    return 0;
}

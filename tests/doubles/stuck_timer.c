/*
 * stuck_timer: a misbehaving stand-in for libmy_timer (same 8 CBOR-ABI
 * symbols) for the daemon's tests. On EVERY call it reads the file named by
 * $STUCK_TIMER_CONTROL:
 *   missing / "ok"  behave normally enough for a daemon: create fires RET_OK
 *                   (CBOR text of the address) from the double's own thread;
 *                   version -> "nim-timer v0.1.0"; echo -> {"echoed", "timerName"}
 *                   after delayMs (events fired to listeners first); complex and
 *                   schedule -> RET_ERR "not implemented by the test double".
 *   "silent"        calls return RET_OK (create returns a context) but never
 *                   call back.
 *   "block"         the calling thread blocks inside the call until the
 *                   context is destroyed or the file says something else
 *                   (then the call goes on as that mode says); create blocks
 *                   until process exit.
 * Destroy always returns promptly: it releases blocked callers, answers
 * pending echoes with RET_ERR "echo cancelled: context destroyed" and joins
 * the worker. Contexts are never freed (a blocked caller may still look at
 * one), which is fine for a test double.
 *
 * Build: gcc -Wall -Wextra -Werror -shared -fPIC -pthread stuck_timer.c
 */
#define _GNU_SOURCE
#include "../../native/include/my_timer_cbor.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { MODE_OK, MODE_SILENT, MODE_BLOCK };

static int read_mode(void)
{
    const char *path = getenv("STUCK_TIMER_CONTROL");
    char buf[32] = {0};
    if (!path)
        return MODE_OK;
    FILE *f = fopen(path, "r");
    if (!f)
        return MODE_OK;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == ' ' || buf[n - 1] == '\r'))
        buf[--n] = 0;
    if (strcmp(buf, "silent") == 0)
        return MODE_SILENT;
    if (strcmp(buf, "block") == 0)
        return MODE_BLOCK;
    return MODE_OK;
}

typedef struct job {
    struct job *next;
    long long due_ns;
    int kind; /* 0 ctor, 1 reply now (version/err), 2 echo */
    int code;
    FFICallBack cb;
    void *ud;
    char *msg; /* echo message or error text */
    size_t msg_len;
} job_t;

typedef struct {
    uint64_t id;
    int matches; /* "on_echo_fired" or wildcard */
    FFICallBack cb;
    void *ud;
} listener_t;

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job_t *jobs;
    int stop;
    atomic_int dead;
    pthread_t worker;
    char name[128];
    listener_t lst[32];
    int nl;
    uint64_t next_id;
} ctx_t;

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void text_head(unsigned char *out, size_t *o, int major, size_t n)
{
    if (n < 24) {
        out[(*o)++] = (unsigned char)(major << 5 | n);
    } else if (n < 256) {
        out[(*o)++] = (unsigned char)(major << 5 | 24);
        out[(*o)++] = (unsigned char)n;
    } else {
        out[(*o)++] = (unsigned char)(major << 5 | 25);
        out[(*o)++] = (unsigned char)(n >> 8);
        out[(*o)++] = (unsigned char)n;
    }
}

static void put_text(unsigned char *out, size_t *o, const char *s, size_t n)
{
    text_head(out, o, 3, n);
    memcpy(out + *o, s, n);
    *o += n;
}

static void run_job(ctx_t *c, job_t *j, int cancelled)
{
    if (cancelled && j->kind == 2) {
        const char *t = "echo cancelled: context destroyed";
        j->cb(RET_ERR, t, strlen(t), j->ud);
        return;
    }
    if (j->kind == 2) {
        size_t cap = j->msg_len + strlen(c->name) + 128, o = 0;
        unsigned char *out = malloc(cap);
        if (!out)
            return;
        /* event first, to every matching listener */
        out[o++] = 0xa2;
        put_text(out, &o, "eventType", 9);
        put_text(out, &o, "on_echo_fired", 13);
        put_text(out, &o, "payload", 7);
        out[o++] = 0xa2;
        put_text(out, &o, "message", 7);
        put_text(out, &o, j->msg, j->msg_len);
        put_text(out, &o, "echoCount", 9);
        out[o++] = 0x01;
        pthread_mutex_lock(&c->mu);
        int nl = c->nl;
        listener_t lst[32];
        memcpy(lst, c->lst, sizeof lst);
        pthread_mutex_unlock(&c->mu);
        for (int i = 0; i < nl; i++)
            if (lst[i].matches)
                lst[i].cb(RET_OK, (const char *)out, o, lst[i].ud);
        o = 0;
        out[o++] = 0xa2;
        put_text(out, &o, "echoed", 6);
        put_text(out, &o, j->msg, j->msg_len);
        put_text(out, &o, "timerName", 9);
        put_text(out, &o, c->name, strlen(c->name));
        j->cb(RET_OK, (const char *)out, o, j->ud);
        free(out);
        return;
    }
    j->cb(j->code, j->msg, j->msg_len, j->ud);
}

static void *worker(void *arg)
{
    ctx_t *c = arg;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        job_t **pp = &c->jobs, **best = NULL;
        for (; *pp; pp = &(*pp)->next)
            if (!best || (*pp)->due_ns < (*best)->due_ns)
                best = pp;
        if (!best) {
            if (c->stop)
                break;
            pthread_cond_wait(&c->cv, &c->mu);
            continue;
        }
        job_t *j = *best;
        if (!c->stop && j->due_ns > now_ns()) {
            struct timespec ts = {j->due_ns / 1000000000LL, j->due_ns % 1000000000LL};
            pthread_cond_timedwait(&c->cv, &c->mu, &ts);
            continue;
        }
        *best = j->next;
        int cancelled = c->stop;
        pthread_mutex_unlock(&c->mu);
        run_job(c, j, cancelled);
        free(j->msg);
        free(j);
        pthread_mutex_lock(&c->mu);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

static void push(ctx_t *c, job_t *j)
{
    pthread_mutex_lock(&c->mu);
    j->next = c->jobs;
    c->jobs = j;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

static job_t *new_job(int kind, int code, FFICallBack cb, void *ud, const char *msg,
                      size_t len, long long delay_ms)
{
    job_t *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->kind = kind;
    j->code = code;
    j->cb = cb;
    j->ud = ud;
    j->msg = malloc(len + 1);
    if (j->msg) {
        memcpy(j->msg, msg, len);
        j->msg_len = len;
    }
    j->due_ns = now_ns() + (delay_ms > 0 ? delay_ms * 1000000LL : 0);
    return j;
}

/* Finds the text value of `key` anywhere in a small CBOR payload: enough for
 * {"config": {"name": ..}} and {"req": {"message": .., "delayMs": ..}}. */
static int find_text(const uint8_t *p, size_t n, const char *key, const char **out, size_t *olen)
{
    size_t kl = strlen(key);
    for (size_t i = 0; i + 1 + kl < n; i++) {
        if (p[i] == (0x60 | kl) && memcmp(p + i + 1, key, kl) == 0) {
            size_t v = i + 1 + kl, len;
            if (v >= n || (p[v] >> 5) != 3)
                return 0;
            uint8_t ai = p[v] & 31;
            if (ai < 24) len = ai, v += 1;
            else if (ai == 24 && v + 1 < n) len = p[v + 1], v += 2;
            else if (ai == 25 && v + 2 < n) len = (size_t)p[v + 1] << 8 | p[v + 2], v += 3;
            else return 0;
            if (v + len > n)
                return 0;
            *out = (const char *)p + v;
            *olen = len;
            return 1;
        }
    }
    return 0;
}

static long long find_int(const uint8_t *p, size_t n, const char *key)
{
    size_t kl = strlen(key);
    for (size_t i = 0; i + 1 + kl < n; i++) {
        if (p[i] == (0x60 | kl) && memcmp(p + i + 1, key, kl) == 0) {
            size_t v = i + 1 + kl;
            if (v >= n)
                return 0;
            int major = p[v] >> 5, ai = p[v] & 31;
            long long val = 0;
            size_t extra = ai < 24 ? 0 : ai <= 27 ? (size_t)1 << (ai - 24) : 0;
            if (major > 1 || ai > 27 || v + extra >= n)
                return 0;
            val = ai < 24 ? ai : 0;
            for (size_t k = 0; k < extra && v + 1 + k < n; k++)
                val = val << 8 | p[v + 1 + k];
            return major == 0 ? val : -1 - val;
        }
    }
    return 0;
}

static void block_until_dead(ctx_t *c)
{
    while (!c || !atomic_load(&c->dead))
        usleep(10000);
}

void *my_timer_create_cbor(const uint8_t *req, size_t len, FFICallBack cb, void *ud)
{
    int mode = read_mode();
    if (mode == MODE_BLOCK)
        block_until_dead(NULL); /* nothing to destroy yet: until process exit */
    ctx_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    const char *name;
    size_t nl;
    if (req && find_text(req, len, "name", &name, &nl)) {
        if (nl >= sizeof c->name)
            nl = sizeof c->name - 1;
        memcpy(c->name, name, nl);
    }
    if (pthread_create(&c->worker, NULL, worker, c)) {
        free(c);
        return NULL;
    }
    if (mode == MODE_OK && cb) {
        char addr[32];
        unsigned char out[40];
        size_t o = 0;
        int n = snprintf(addr, sizeof addr, "%lu", (unsigned long)(uintptr_t)c);
        put_text(out, &o, addr, (size_t)n);
        job_t *j = new_job(1, RET_OK, cb, ud, (const char *)out, o, 0);
        if (j)
            push(c, j);
    }
    return c;
}

static int method(void *ctx, FFICallBack cb, void *ud, const uint8_t *req, size_t len, int which)
{
    ctx_t *c = ctx;
    if (!cb)
        return RET_MISSING_CALLBACK;
    if (!c || atomic_load(&c->dead)) {
        const char *t = "ctx is not a valid FFI context";
        cb(RET_ERR, t, strlen(t), ud);
        return RET_ERR;
    }
    int mode = read_mode();
    while (mode == MODE_BLOCK) { /* like a library thread that gets unstuck */
        if (atomic_load(&c->dead))
            return RET_OK;
        usleep(10000);
        mode = read_mode();
    }
    if (mode == MODE_SILENT)
        return RET_OK;
    job_t *j;
    if (which == 0) {
        const char v[] = "\x70" "nim-timer v0.1.0"; /* CBOR text, 16 bytes */
        j = new_job(1, RET_OK, cb, ud, v, sizeof v - 1, 0);
    } else if (which == 1) {
        const char *msg = "";
        size_t ml = 0;
        if (req)
            find_text(req, len, "message", &msg, &ml);
        j = new_job(2, RET_OK, cb, ud, msg, ml, req ? find_int(req, len, "delayMs") : 0);
    } else {
        const char *t = "not implemented by the test double";
        j = new_job(1, RET_ERR, cb, ud, t, strlen(t), 0);
    }
    if (j)
        push(c, j);
    return RET_OK;
}

int my_timer_version_cbor(void *ctx, FFICallBack cb, void *ud, const uint8_t *r, size_t n)
{
    return method(ctx, cb, ud, r, n, 0);
}
int my_timer_echo_cbor(void *ctx, FFICallBack cb, void *ud, const uint8_t *r, size_t n)
{
    return method(ctx, cb, ud, r, n, 1);
}
int my_timer_complex_cbor(void *ctx, FFICallBack cb, void *ud, const uint8_t *r, size_t n)
{
    return method(ctx, cb, ud, r, n, 2);
}
int my_timer_schedule_cbor(void *ctx, FFICallBack cb, void *ud, const uint8_t *r, size_t n)
{
    return method(ctx, cb, ud, r, n, 3);
}

int my_timer_destroy(void *ctx)
{
    ctx_t *c = ctx;
    if (!c || atomic_exchange(&c->dead, 1))
        return RET_ERR;
    pthread_mutex_lock(&c->mu);
    c->stop = 1;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->worker, NULL);
    return RET_OK;
}

uint64_t my_timer_add_event_listener(void *ctx, const char *name, FFICallBack cb, void *ud)
{
    ctx_t *c = ctx;
    uint64_t id = 0;
    if (!c || !cb || atomic_load(&c->dead))
        return 0;
    pthread_mutex_lock(&c->mu);
    if (c->nl < 32) {
        id = ++c->next_id;
        c->lst[c->nl++] = (listener_t){id, !name || !*name || strcmp(name, "on_echo_fired") == 0, cb, ud};
    }
    pthread_mutex_unlock(&c->mu);
    return id;
}

int my_timer_remove_event_listener(void *ctx, uint64_t id)
{
    ctx_t *c = ctx;
    int rc = RET_ERR;
    if (!c || atomic_load(&c->dead))
        return RET_ERR;
    pthread_mutex_lock(&c->mu);
    for (int i = 0; i < c->nl; i++) {
        if (c->lst[i].id == id) {
            c->lst[i] = c->lst[--c->nl];
            rc = RET_OK;
            break;
        }
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

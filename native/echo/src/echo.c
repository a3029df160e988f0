/*
 * libecho: a C implementation of the CBOR ABI of nim-ffi's `echo` example
 * library. Contract and design: ../README.md.
 *
 * One library thread per context takes requests from a queue (popped in
 * batches under one lock) and answers each at once: no echo call waits for
 * anything. Only the library thread runs result callbacks, so callbacks of
 * one context never overlap; the exceptions are those the ABI puts on the
 * caller's thread (invalid context, failed create, and the 0.3 static calls).
 *
 * The same source builds both ABI generations: EC_GENERATION=2 (default,
 * libecho.so, _cbor symbols) and EC_GENERATION=3 (libecho-0.3.so: suffix-less
 * symbols, the static calls echo_lib_version and echo_shout_anon, and the
 * 512-byte limit of shout).
 */
#define _GNU_SOURCE
#ifndef EC_GENERATION
#define EC_GENERATION 2
#endif
#if EC_GENERATION == 3
#include "../include/echo.h"
#define EC_SYM(name) echo_##name
#elif EC_GENERATION == 2
#include "../include/echo_cbor.h"
#define EC_SYM(name) echo_##name##_cbor
#else
#error "EC_GENERATION must be 2 or 3"
#endif

#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cbor.h"
#include "shout.h"

enum { M_CTOR, M_VERSION, M_SHOUT, M_LIB_VERSION, M_SHOUT_ANON };

/* Request envelope names, as in the CDDL and the real library's errors. */
static const char *const req_type[] = {"EchoCreateCtorReq", "EchoVersionReq", "EchoShoutReq",
                                       "EchoLibVersionReq", "EchoShoutAnonReq"};

#define INLINE_PAYLOAD 64

typedef struct req {
    struct req *next;
    int method;
    int null_payload; /* the caller passed NULL with a non-zero length */
    int oom;          /* the payload could not be copied */
    FFICallBack cb;
    void *ud;
    uint8_t *payload;
    size_t len;
    uint64_t seq;
    uint8_t inl[INLINE_PAYLOAD];
} req_t;

typedef struct {
    uint64_t id;
    FFICallBack cb;
    void *ud;
} listener_t;

typedef struct ctx {
    pthread_mutex_t mu;
    pthread_cond_t cv_work; /* the library thread waits here */
    pthread_cond_t cv_done; /* handoff callers wait here */
    req_t *qhead, *qtail;
    int stopping;
    int releasing; /* destroy started: handoff callers stop waiting */
    int handoff;
    uint64_t submit_seq, handled_seq;
    pthread_t thread;
    char *prefix;
    size_t prefix_len;
    atomic_int users; /* ABI calls currently using this context */

    /* Listeners are kept (ids are handed out and can be removed) but the
     * library declares no event, so none is ever called. */
    pthread_mutex_t lmu;
    listener_t *lst;
    size_t nl, lcap;
    uint64_t next_id;
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

/* Finds a live context by comparing pointers (never dereferencing an
 * unknown one) and pins it until release(). */
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

/* ---- callbacks ---------------------------------------------------------- */

/* Set while this thread runs one of this library's callbacks: calls into
 * libecho made from there are refused (RET_ERR / 0 / NULL, no callback)
 * instead of deadlocking. Other libraries (libmy_timer) have their own flag,
 * so calling one from the other's callback works. */
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

static void reply(FFICallBack cb, void *ud, const mt_buf *b, int code)
{
    if (b->oom)
        call_err(cb, "out of memory encoding reply", ud);
    else
        call_cb(cb, code, b->p, b->len, ud);
}

/* Decodes and answers one method or static call (everything but create's
 * own callback). `prefix` is the context's; NULL for the static calls. */
static void answer(int method, const char *prefix, size_t prefix_len, const uint8_t *payload,
                   size_t len, int null_payload, int oom, FFICallBack cb, void *ud)
{
    mt_buf b;
    mt_dec d;
    ec_text text = {{"", 0}, NULL};
    int rc;

    mt_buf_init(&b);
    if (null_payload || oom) {
        mt_buf_puts(&b, "CBOR decode failed for ");
        mt_buf_puts(&b, req_type[method]);
        mt_buf_puts(&b, oom ? ": out of memory copying a request of "
                            : ": NULL payload pointer with length ");
        mt_buf_put_u64(&b, len);
        if (oom)
            mt_buf_puts(&b, " bytes");
        reply(cb, ud, &b, RET_ERR);
        mt_buf_free(&b);
        return;
    }
    mt_dec_init(&d, payload, len);
    if (method == M_VERSION || method == M_LIB_VERSION)
        rc = ec_decode_empty(&d, req_type[method]);
    else
        rc = ec_decode_shout(&d, req_type[method], &text);
    /* bytes after the request item are ignored, like the real library */
    if (rc) {
        mt_buf_puts(&b, "CBOR decode failed for ");
        mt_buf_puts(&b, req_type[method]);
        mt_buf_puts(&b, ": ");
        mt_buf_puts(&b, d.err);
        reply(cb, ud, &b, RET_ERR);
    } else if (method == M_VERSION || method == M_LIB_VERSION) {
        ec_encode_version(&b);
        reply(cb, ud, &b, RET_OK);
    } else if (method == M_SHOUT_ANON) {
        mt_str none = {"", 0};
        ec_encode_shout(&b, none, "", text.s);
        reply(cb, ud, &b, RET_OK);
    } else if (EC_GENERATION == 3 && text.s.n > EC_MAX_SHOUT_LEN) {
        call_err(cb, "text must not exceed 512 bytes", ud);
    } else {
        mt_str p = {prefix, prefix_len};
        ec_encode_shout(&b, p, ": ", text.s);
        reply(cb, ud, &b, RET_OK);
    }
    ec_text_free(&text);
    mt_buf_free(&b);
}

/* ---- the library thread ------------------------------------------------- */

static void handle(ctx_t *c, req_t *n)
{
    if (n->method == M_CTOR) { /* create's RET_OK: the address in decimal, as CBOR text */
        char addr[32];
        mt_buf b;
        mt_buf_init(&b);
        snprintf(addr, sizeof addr, "%" PRIuPTR, (uintptr_t)c);
        mt_cbor_ctext(&b, addr);
        reply(n->cb, n->ud, &b, RET_OK);
        mt_buf_free(&b);
        return;
    }
    answer(n->method, c->prefix, c->prefix_len, n->payload, n->len, n->null_payload, n->oom,
           n->cb, n->ud);
}

static void free_node(req_t *n)
{
    if (n->payload != n->inl)
        free(n->payload);
    free(n);
}

static void *lib_main(void *arg)
{
    ctx_t *c = arg;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (!c->qhead && !c->stopping)
            pthread_cond_wait(&c->cv_work, &c->mu);
        req_t *batch = c->qhead;
        if (!batch)
            break; /* stopping, and every queued request was answered */
        int handoff = c->handoff;
        c->qhead = c->qtail = NULL;
        pthread_mutex_unlock(&c->mu);
        while (batch) {
            req_t *n = batch;
            batch = n->next;
            uint64_t seq = n->seq;
            handle(c, n);
            free_node(n);
            if (handoff) { /* its caller returns once its request was answered */
                pthread_mutex_lock(&c->mu);
                c->handled_seq = seq;
                pthread_cond_broadcast(&c->cv_done);
                pthread_mutex_unlock(&c->mu);
            }
        }
        pthread_mutex_lock(&c->mu);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* ---- submission --------------------------------------------------------- */

static void enqueue(ctx_t *c, req_t *n, int wait_handled)
{
    pthread_mutex_lock(&c->mu);
    n->next = NULL;
    n->seq = ++c->submit_seq;
    uint64_t seq = n->seq; /* n is freed once handled */
    if (c->qtail)
        c->qtail->next = n;
    else
        c->qhead = n;
    c->qtail = n;
    pthread_cond_signal(&c->cv_work);
    while (wait_handled && c->handled_seq < seq && !c->releasing)
        pthread_cond_wait(&c->cv_done, &c->mu);
    pthread_mutex_unlock(&c->mu);
}

static int submit(int method, void *ctx, FFICallBack cb, void *ud, const uint8_t *payload,
                  size_t len)
{
    if (tl_in_cb)
        return RET_ERR; /* reentrant call: refused without a callback */
    if (!cb)
        return RET_MISSING_CALLBACK;
    ctx_t *c = acquire(ctx);
    if (!c) {
        call_err(cb, "ctx is not a valid FFI context", ud);
        return RET_ERR;
    }
    req_t *n = malloc(sizeof *n);
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
            if (!n->payload) {
                n->payload = n->inl;
                n->oom = 1;
            }
        }
        if (!n->oom)
            memcpy(n->payload, payload, len);
    }
    enqueue(c, n, c->handoff);
    release(c);
    return RET_OK;
}

int EC_SYM(version)(void *ctx, FFICallBack cb, void *ud, const uint8_t *p, size_t n)
{
    return submit(M_VERSION, ctx, cb, ud, p, n);
}

int EC_SYM(shout)(void *ctx, FFICallBack cb, void *ud, const uint8_t *p, size_t n)
{
    return submit(M_SHOUT, ctx, cb, ud, p, n);
}

#if EC_GENERATION == 3
/* The static calls: no context, so no library thread. They are answered on
 * the caller's thread before they return (decode errors through the callback
 * too), may run on any number of threads at once and allocate nothing that
 * outlives the call (the real library keeps a context slot for good). */
static int static_call(int method, FFICallBack cb, void *ud, const uint8_t *p, size_t len)
{
    if (tl_in_cb)
        return RET_ERR; /* reentrant call: refused without a callback */
    if (!cb)
        return RET_MISSING_CALLBACK;
    answer(method, NULL, 0, p, len, p == NULL && len > 0, 0, cb, ud);
    return RET_OK;
}

int echo_lib_version(FFICallBack cb, void *ud, const uint8_t *p, size_t len)
{
    return static_call(M_LIB_VERSION, cb, ud, p, len);
}

int echo_shout_anon(FFICallBack cb, void *ud, const uint8_t *p, size_t len)
{
    return static_call(M_SHOUT_ANON, cb, ud, p, len);
}
#else
/* The 0.2 generation's native-ABI names (C struct arguments in the real
 * build): exported so the symbol table is the real one, inert here. */
void *echo_create(void) { return NULL; }
int echo_shout(void) { return RET_ERR; }
int echo_version(void) { return RET_ERR; }
#endif

/* The Nim runtime's entry points, exported by the real build: nothing to do. */
void libechoNimMain(void) {}
void NimDestroyGlobals(void) {}

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
    free(c->lst);
    free(c->prefix);
    pthread_mutex_destroy(&c->mu);
    pthread_mutex_destroy(&c->lmu);
    pthread_cond_destroy(&c->cv_work);
    pthread_cond_destroy(&c->cv_done);
    free(c);
}

void *EC_SYM(create)(const uint8_t *payload, size_t len, FFICallBack cb, void *ud)
{
    if (tl_in_cb || !cb)
        return NULL; /* a reentrant call, or nowhere to report (the real one crashes) */

    const char *mode = getenv("ECHO_SUBMIT_MODE");
    int handoff = 0;
    if (mode && *mode && strcmp(mode, "async") != 0) {
        if (strcmp(mode, "handoff") != 0) {
            char q[80];
            mt_quote(q, sizeof q, mode, strlen(mode));
            return ctor_fail(cb, ud,
                             "ffiCtor: invalid ECHO_SUBMIT_MODE '%s' "
                             "(expected 'async' or 'handoff')", q);
        }
        handoff = 1;
    }
    if (!payload && len > 0) {
        char det[64];
        snprintf(det, sizeof det, "NULL payload pointer with length %zu", len);
        return ctor_fail(cb, ud, "ffiCtor: failed to decode request: %s", det);
    }
    /* Nothing is allocated before the request decodes (the real library
     * leaks a context slot and two threads per failed create). */
    mt_dec d;
    ec_text prefix;
    mt_dec_init(&d, payload, len);
    if (ec_decode_create(&d, &prefix)) {
        ec_text_free(&prefix);
        return ctor_fail(cb, ud, "ffiCtor: failed to decode request: %s", d.err);
    }

    ctx_t *c = calloc(1, sizeof *c);
    req_t *n = calloc(1, sizeof *n);
    char *copy = malloc(prefix.s.n + 1);
    if (!c || !n || !copy) {
        free(c), free(n), free(copy);
        ec_text_free(&prefix);
        return ctor_fail(cb, ud, "ffiCtor: %s", "out of memory");
    }
    memcpy(copy, prefix.s.s, prefix.s.n);
    copy[prefix.s.n] = 0;
    c->prefix = copy;
    c->prefix_len = prefix.s.n;
    ec_text_free(&prefix);
    c->handoff = handoff;
    pthread_mutex_init(&c->mu, NULL);
    pthread_mutex_init(&c->lmu, NULL);
    pthread_cond_init(&c->cv_work, NULL);
    pthread_cond_init(&c->cv_done, NULL);

    /* The library thread takes no signals: they stay with the host's threads. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int err = pthread_create(&c->thread, NULL, lib_main, c);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err) {
        free(n);
        ctx_free(c);
        return ctor_fail(cb, ud, "ffiCtor: cannot start the library thread: %s", strerror(err));
    }
    if (reg_add(c)) {
        pthread_mutex_lock(&c->mu);
        c->stopping = 1;
        pthread_cond_signal(&c->cv_work);
        pthread_mutex_unlock(&c->mu);
        pthread_join(c->thread, NULL);
        free(n);
        ctx_free(c);
        return ctor_fail(cb, ud, "ffiCtor: %s", "out of memory");
    }
    /* create's RET_OK comes from the library thread, normally after we return */
    n->method = M_CTOR;
    n->cb = cb;
    n->ud = ud;
    n->payload = n->inl;
    enqueue(c, n, 0);
    return c;
}

int echo_destroy(void *ctx)
{
    if (tl_in_cb || !ctx)
        return RET_ERR; /* from a callback this would join our own thread */
    ctx_t *c = reg_remove(ctx);
    if (!c)
        return RET_ERR; /* unknown, or destroyed already */
    /* New calls now see an invalid context; calls already inside finish
     * queueing, and handoff callers stop waiting (their requests are still
     * answered below). */
    pthread_mutex_lock(&c->mu);
    c->releasing = 1;
    pthread_cond_broadcast(&c->cv_done);
    pthread_mutex_unlock(&c->mu);
    while (atomic_load(&c->users) > 0)
        usleep(100);
    /* Every queued request is answered (no echo call waits for anything),
     * then the library thread exits. */
    pthread_mutex_lock(&c->mu);
    c->stopping = 1;
    pthread_cond_signal(&c->cv_work);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->thread, NULL);
    ctx_free(c);
    return RET_OK;
}

/* ---- listeners (the library declares no event) -------------------------- */

uint64_t echo_add_event_listener(void *ctx, const char *event, FFICallBack cb, void *ud)
{
    (void)event; /* any name, NULL or empty included, gets an id */
    if (tl_in_cb || !cb)
        return 0;
    ctx_t *c = acquire(ctx);
    if (!c)
        return 0;
    uint64_t id = 0;
    pthread_mutex_lock(&c->lmu);
    if (c->nl == c->lcap) {
        size_t ncap = c->lcap ? c->lcap * 2 : 4;
        listener_t *l = realloc(c->lst, ncap * sizeof *l);
        if (l)
            c->lst = l, c->lcap = ncap;
    }
    if (c->nl < c->lcap) {
        id = ++c->next_id;
        c->lst[c->nl++] = (listener_t){id, cb, ud};
    }
    pthread_mutex_unlock(&c->lmu);
    release(c);
    return id;
}

int echo_remove_event_listener(void *ctx, uint64_t id)
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

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

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cbor.h"
#include "ffi_runtime.h"
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

/* Listeners are kept in rt (ids are handed out and can be removed) but the
 * library declares no event, so none is ever called. */
typedef struct ctx {
    ffi_ctx rt; /* first: the context's address is rt's */
    req_t *qhead, *qtail;
    char *prefix;
    size_t prefix_len;
} ctx_t;

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
        ffi_payload_error(&b, req_type[method], len, oom);
        ffi_reply(cb, ud, &b, RET_ERR);
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
        ffi_decode_error(&b, req_type[method], d.err);
        ffi_reply(cb, ud, &b, RET_ERR);
    } else if (method == M_VERSION || method == M_LIB_VERSION) {
        ec_encode_version(&b);
        ffi_reply(cb, ud, &b, RET_OK);
    } else if (method == M_SHOUT_ANON) {
        mt_str none = {"", 0};
        ec_encode_shout(&b, none, "", text.s);
        ffi_reply(cb, ud, &b, RET_OK);
    } else if (EC_GENERATION == 3 && text.s.n > EC_MAX_SHOUT_LEN) {
        ffi_call_err(cb, "text must not exceed 512 bytes", ud);
    } else {
        mt_str p = {prefix, prefix_len};
        ec_encode_shout(&b, p, ": ", text.s);
        ffi_reply(cb, ud, &b, RET_OK);
    }
    ec_text_free(&text);
    mt_buf_free(&b);
}

/* ---- the library thread ------------------------------------------------- */

static void handle(ctx_t *c, req_t *n)
{
    if (n->method == M_CTOR)
        ffi_reply_created(n->cb, n->ud, c);
    else
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
    pthread_mutex_lock(&c->rt.mu);
    for (;;) {
        while (!c->qhead && !c->rt.stopping)
            pthread_cond_wait(&c->rt.cv_work, &c->rt.mu);
        req_t *batch = c->qhead;
        if (!batch)
            break; /* stopping, and every queued request was answered */
        int handoff = c->rt.handoff;
        c->qhead = c->qtail = NULL;
        pthread_mutex_unlock(&c->rt.mu);
        while (batch) {
            req_t *n = batch;
            batch = n->next;
            uint64_t seq = n->seq;
            handle(c, n);
            free_node(n);
            if (handoff) { /* its caller returns once its request was answered */
                pthread_mutex_lock(&c->rt.mu);
                c->rt.handled_seq = seq;
                pthread_cond_broadcast(&c->rt.cv_done);
                pthread_mutex_unlock(&c->rt.mu);
            }
        }
        pthread_mutex_lock(&c->rt.mu);
    }
    pthread_mutex_unlock(&c->rt.mu);
    return NULL;
}

/* ---- submission --------------------------------------------------------- */

static void enqueue(ctx_t *c, req_t *n, int wait_handled)
{
    pthread_mutex_lock(&c->rt.mu);
    n->next = NULL;
    n->seq = ++c->rt.submit_seq;
    uint64_t seq = n->seq; /* n is freed once handled */
    if (c->qtail)
        c->qtail->next = n;
    else
        c->qhead = n;
    c->qtail = n;
    pthread_cond_signal(&c->rt.cv_work);
    while (wait_handled && c->rt.handled_seq < seq && !c->rt.releasing)
        pthread_cond_wait(&c->rt.cv_done, &c->rt.mu);
    pthread_mutex_unlock(&c->rt.mu);
}

static int submit(int method, void *ctx, FFICallBack cb, void *ud, const uint8_t *payload,
                  size_t len)
{
    int rc;
    ctx_t *c = (ctx_t *)ffi_enter(ctx, cb, ud, &rc);
    if (!c)
        return rc;
    req_t *n = malloc(sizeof *n);
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
    int rc = ffi_check_call(cb);
    if (rc == RET_OK)
        answer(method, NULL, 0, p, len, p == NULL && len > 0, 0, cb, ud);
    return rc;
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

static void ctx_free(ctx_t *c)
{
    free(c->prefix);
    ffi_ctx_destroy(&c->rt);
    free(c);
}

void *EC_SYM(create)(const uint8_t *payload, size_t len, FFICallBack cb, void *ud)
{
    if (ffi_in_cb || !cb)
        return NULL; /* a reentrant call, or nowhere to report (the real one crashes) */

    int handoff;
    if (ffi_submit_mode("ECHO_SUBMIT_MODE", cb, ud, &handoff))
        return NULL;
    if (!payload && len > 0) {
        char det[64];
        snprintf(det, sizeof det, "NULL payload pointer with length %zu", len);
        return ffi_ctor_fail(cb, ud, "ffiCtor: failed to decode request: %s", det);
    }
    /* Nothing is allocated before the request decodes (the real library
     * leaks a context slot and two threads per failed create). */
    mt_dec d;
    ec_text prefix;
    mt_dec_init(&d, payload, len);
    if (ec_decode_create(&d, &prefix)) {
        ec_text_free(&prefix);
        return ffi_ctor_fail(cb, ud, "ffiCtor: failed to decode request: %s", d.err);
    }

    ctx_t *c = calloc(1, sizeof *c);
    req_t *n = calloc(1, sizeof *n);
    char *copy = malloc(prefix.s.n + 1);
    if (!c || !n || !copy) {
        free(c), free(n), free(copy);
        ec_text_free(&prefix);
        return ffi_ctor_fail(cb, ud, "ffiCtor: %s", "out of memory");
    }
    memcpy(copy, prefix.s.s, prefix.s.n);
    copy[prefix.s.n] = 0;
    c->prefix = copy;
    c->prefix_len = prefix.s.n;
    ec_text_free(&prefix);
    ffi_ctx_init(&c->rt, handoff);

    int err = ffi_start_thread(&c->rt.thread, lib_main, c);
    if (err) {
        free(n);
        ctx_free(c);
        return ffi_ctor_fail(cb, ud, "ffiCtor: cannot start the library thread: %s",
                             strerror(err));
    }
    if (ffi_reg_add(&c->rt)) {
        ffi_stop_thread(&c->rt);
        free(n);
        ctx_free(c);
        return ffi_ctor_fail(cb, ud, "ffiCtor: %s", "out of memory");
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
    if (ffi_in_cb || !ctx)
        return RET_ERR; /* from a callback this would join our own thread */
    ctx_t *c = (ctx_t *)ffi_reg_remove(ctx);
    if (!c)
        return RET_ERR; /* unknown, or destroyed already */
    /* New calls now see an invalid context; calls already inside finish
     * queueing, and handoff callers stop waiting (their requests are still
     * answered below). */
    ffi_begin_release(&c->rt);
    ffi_wait_unused(&c->rt);
    /* Every queued request is answered (no echo call waits for anything),
     * then the library thread exits. */
    ffi_stop_thread(&c->rt);
    ctx_free(c);
    return RET_OK;
}

/* ---- listeners (the library declares no event: names are not kept) ------ */

uint64_t echo_add_event_listener(void *ctx, const char *event, FFICallBack cb, void *ud)
{
    return ffi_add_listener(ctx, event, 0, cb, ud); /* any name, NULL or empty included */
}

int echo_remove_event_listener(void *ctx, uint64_t id)
{
    return ffi_remove_listener(ctx, id);
}

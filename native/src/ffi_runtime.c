/*
 * The runtime libmy_timer and libecho share; see ffi_runtime.h.
 */
#define _GNU_SOURCE
#include "ffi_runtime.h"

#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- registry of live contexts ------------------------------------------ */

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static ffi_ctx **reg;
static size_t nreg, regcap;

int ffi_reg_add(ffi_ctx *c)
{
    int rc = 0;
    pthread_mutex_lock(&reg_mu);
    if (nreg == regcap) {
        size_t ncap = regcap ? regcap * 2 : 8;
        ffi_ctx **n = realloc(reg, ncap * sizeof *n);
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

/* Finds a live context by comparing pointers (never dereferencing an unknown
 * one) and pins it until ffi_release(). */
static ffi_ctx *ffi_acquire(void *p)
{
    ffi_ctx *found = NULL;
    if (!p)
        return NULL;
    pthread_mutex_lock(&reg_mu);
    for (size_t i = 0; i < nreg; i++) {
        if ((void *)reg[i] == p) {
            found = reg[i];
            atomic_fetch_add(&found->users, 1);
            break;
        }
    }
    pthread_mutex_unlock(&reg_mu);
    return found;
}

void ffi_release(ffi_ctx *c) { atomic_fetch_sub(&c->users, 1); }

ffi_ctx *ffi_reg_remove(void *p)
{
    ffi_ctx *found = NULL;
    pthread_mutex_lock(&reg_mu);
    for (size_t i = 0; i < nreg; i++) {
        if ((void *)reg[i] == p) {
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

__thread int ffi_in_cb;

void ffi_call_cb(FFICallBack cb, int code, const void *msg, size_t len, void *ud)
{
    ffi_in_cb++;
    cb(code, (const char *)msg, len, ud);
    ffi_in_cb--;
}

void ffi_call_err(FFICallBack cb, const char *text, void *ud)
{
    ffi_call_cb(cb, RET_ERR, text, strlen(text), ud);
}

void ffi_reply(FFICallBack cb, void *ud, const mt_buf *b, int code)
{
    if (b->oom)
        ffi_call_err(cb, "out of memory encoding reply", ud);
    else
        ffi_call_cb(cb, code, b->p, b->len, ud);
}

void ffi_reply_created(FFICallBack cb, void *ud, const void *ctx)
{
    char addr[32];
    mt_buf b;
    mt_buf_init(&b);
    snprintf(addr, sizeof addr, "%" PRIuPTR, (uintptr_t)ctx);
    mt_cbor_ctext(&b, addr);
    ffi_reply(cb, ud, &b, RET_OK);
    mt_buf_free(&b);
}

/* ---- calls -------------------------------------------------------------- */

int ffi_check_call(FFICallBack cb)
{
    if (ffi_in_cb)
        return RET_ERR; /* reentrant call: refused without a callback */
    if (!cb)
        return RET_MISSING_CALLBACK;
    return RET_OK;
}

ffi_ctx *ffi_enter(void *ctx, FFICallBack cb, void *ud, int *rc)
{
    *rc = ffi_check_call(cb);
    if (*rc != RET_OK)
        return NULL;
    ffi_ctx *c = ffi_acquire(ctx);
    if (!c) {
        ffi_call_err(cb, "ctx is not a valid FFI context", ud);
        *rc = RET_ERR;
    }
    return c;
}

uint8_t *ffi_copy_payload(uint8_t *inl, size_t inl_size, const uint8_t *payload, size_t len,
                          int *null_payload, int *oom)
{
    uint8_t *copy = inl;
    *null_payload = payload == NULL && len > 0;
    *oom = 0;
    if (*null_payload || len == 0)
        return copy;
    if (len > inl_size) {
        copy = malloc(len);
        if (!copy) {
            *oom = 1;
            return inl;
        }
    }
    memcpy(copy, payload, len);
    return copy;
}

void ffi_payload_error(mt_buf *b, const char *req_type, size_t len, int oom)
{
    mt_buf_puts(b, "CBOR decode failed for ");
    mt_buf_puts(b, req_type);
    mt_buf_puts(b, oom ? ": out of memory copying a request of "
                       : ": NULL payload pointer with length ");
    mt_buf_put_u64(b, len);
    if (oom)
        mt_buf_puts(b, " bytes");
}

void ffi_decode_error(mt_buf *b, const char *req_type, const char *err)
{
    mt_buf_puts(b, "CBOR decode failed for ");
    mt_buf_puts(b, req_type);
    mt_buf_puts(b, ": ");
    mt_buf_puts(b, err);
}

/* ---- create / destroy --------------------------------------------------- */

void *ffi_ctor_fail(FFICallBack cb, void *ud, const char *fmt, const char *detail)
{
    char msg[MT_ERR_MAX + 128];
    snprintf(msg, sizeof msg, fmt, detail);
    ffi_call_err(cb, msg, ud);
    return NULL;
}

int ffi_submit_mode(const char *var, FFICallBack cb, void *ud, int *handoff)
{
    const char *mode = getenv(var);
    *handoff = 0;
    if (!mode || !*mode || strcmp(mode, "async") == 0)
        return 0;
    if (strcmp(mode, "handoff") == 0) {
        *handoff = 1;
        return 0;
    }
    char q[80], msg[MT_ERR_MAX + 128];
    mt_quote(q, sizeof q, mode, strlen(mode));
    snprintf(msg, sizeof msg, "ffiCtor: invalid %s '%s' (expected 'async' or 'handoff')", var, q);
    ffi_call_err(cb, msg, ud);
    return -1;
}

void ffi_ctx_init(ffi_ctx *c, int handoff)
{
    /* A library may wait on cv_work and cv_done with a deadline (libmy_timer's
     * timers and destroy grace): on the monotonic clock, which never jumps. */
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&c->mu, NULL);
    pthread_mutex_init(&c->lmu, NULL);
    pthread_cond_init(&c->cv_work, &ca);
    pthread_cond_init(&c->cv_done, &ca);
    pthread_condattr_destroy(&ca);
    c->handoff = handoff;
}

void ffi_ctx_destroy(ffi_ctx *c)
{
    for (size_t i = 0; i < c->nl; i++)
        free(c->lst[i].name);
    free(c->lst);
    pthread_mutex_destroy(&c->mu);
    pthread_mutex_destroy(&c->lmu);
    pthread_cond_destroy(&c->cv_work);
    pthread_cond_destroy(&c->cv_done);
}

int ffi_start_thread(pthread_t *t, void *(*fn)(void *), void *arg)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int err = pthread_create(t, NULL, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return err;
}

void ffi_stop_thread(ffi_ctx *c)
{
    pthread_mutex_lock(&c->mu);
    c->stopping = 1;
    pthread_cond_signal(&c->cv_work);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->thread, NULL);
}

void ffi_begin_release(ffi_ctx *c)
{
    pthread_mutex_lock(&c->mu);
    c->releasing = 1;
    pthread_cond_broadcast(&c->cv_done);
    pthread_mutex_unlock(&c->mu);
}

void ffi_wait_unused(ffi_ctx *c)
{
    while (atomic_load(&c->users) > 0)
        usleep(100);
}

/* ---- listeners ---------------------------------------------------------- */

uint64_t ffi_add_listener(void *ctx, const char *event, int keep_name, FFICallBack cb, void *ud)
{
    if (ffi_in_cb || !cb)
        return 0;
    ffi_ctx *c = ffi_acquire(ctx);
    if (!c)
        return 0;
    uint64_t id = 0;
    char *name = NULL;
    if (keep_name && event && *event && !(name = strdup(event))) {
        ffi_release(c);
        return 0;
    }
    pthread_mutex_lock(&c->lmu);
    if (c->nl == c->lcap) {
        size_t ncap = c->lcap ? c->lcap * 2 : 4;
        ffi_listener *l = realloc(c->lst, ncap * sizeof *l);
        if (l)
            c->lst = l, c->lcap = ncap;
    }
    if (c->nl < c->lcap) {
        id = ++c->next_id;
        if (name)
            atomic_fetch_add(&c->nnamed, 1);
        c->lst[c->nl++] = (ffi_listener){id, name, cb, ud};
        name = NULL;
    }
    pthread_mutex_unlock(&c->lmu);
    free(name);
    ffi_release(c);
    return id;
}

int ffi_remove_listener(void *ctx, uint64_t id)
{
    if (ffi_in_cb)
        return RET_ERR;
    ffi_ctx *c = ffi_acquire(ctx);
    if (!c)
        return RET_ERR;
    int rc = RET_ERR;
    pthread_mutex_lock(&c->lmu);
    for (size_t i = 0; i < c->nl; i++) {
        if (c->lst[i].id == id) {
            if (c->lst[i].name)
                atomic_fetch_sub(&c->nnamed, 1);
            free(c->lst[i].name);
            memmove(&c->lst[i], &c->lst[i + 1], (c->nl - i - 1) * sizeof c->lst[0]);
            c->nl--;
            rc = RET_OK;
            break;
        }
    }
    pthread_mutex_unlock(&c->lmu);
    ffi_release(c);
    return rc;
}

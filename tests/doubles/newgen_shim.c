/*
 * Test double: the newer nim-ffi symbol generation. Exports the CBOR ABI
 * without the _cbor suffix, forwards to the library named by env
 * NEWGEN_SHIM_TARGET, and precedes every final result with a
 * RET_STALE_WARN (3) "still running" callback, as newer releases may.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "my_timer_cbor.h"

#define EXPORT __attribute__((visibility("default")))

typedef void *(*create_fn)(const uint8_t *, size_t, FFICallBack, void *);
typedef int (*method_fn)(void *, FFICallBack, void *, const uint8_t *, size_t);
typedef int (*destroy_fn)(void *);

static create_fn t_create;
static method_fn t_echo, t_version, t_complex, t_schedule;
static destroy_fn t_destroy;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void load(void) {
    const char *path = getenv("NEWGEN_SHIM_TARGET");
    void *dl = path ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : NULL;
    if (!dl) {
        fprintf(stderr, "newgen_shim: cannot load NEWGEN_SHIM_TARGET=%s\n", path ? path : "(unset)");
        abort();
    }
    t_create = (create_fn)dlsym(dl, "my_timer_create_cbor");
    t_echo = (method_fn)dlsym(dl, "my_timer_echo_cbor");
    t_version = (method_fn)dlsym(dl, "my_timer_version_cbor");
    t_complex = (method_fn)dlsym(dl, "my_timer_complex_cbor");
    t_schedule = (method_fn)dlsym(dl, "my_timer_schedule_cbor");
    t_destroy = (destroy_fn)dlsym(dl, "my_timer_destroy");
}

struct wrap {
    FFICallBack cb;
    void *ud;
};

static void forward(int ret, const char *msg, size_t len, void *ud) {
    struct wrap *w = ud;
    w->cb(RET_STALE_WARN, "7", 1, w->ud);
    w->cb(ret, msg, len, w->ud);
    free(w);
}

static int call(method_fn fn, void *ctx, FFICallBack cb, void *ud, const uint8_t *p, size_t n) {
    struct wrap *w = malloc(sizeof *w);
    if (!w)
        return RET_ERR;
    w->cb = cb;
    w->ud = ud;
    return fn(ctx, forward, w, p, n);
}

EXPORT void *my_timer_create(const uint8_t *p, size_t n, FFICallBack cb, void *ud) {
    pthread_once(&once, load);
    return t_create(p, n, cb, ud);
}
EXPORT int my_timer_echo(void *c, FFICallBack cb, void *ud, const uint8_t *p, size_t n) {
    return call(t_echo, c, cb, ud, p, n);
}
EXPORT int my_timer_version(void *c, FFICallBack cb, void *ud, const uint8_t *p, size_t n) {
    return call(t_version, c, cb, ud, p, n);
}
EXPORT int my_timer_complex(void *c, FFICallBack cb, void *ud, const uint8_t *p, size_t n) {
    return call(t_complex, c, cb, ud, p, n);
}
EXPORT int my_timer_schedule(void *c, FFICallBack cb, void *ud, const uint8_t *p, size_t n) {
    return call(t_schedule, c, cb, ud, p, n);
}
EXPORT int my_timer_destroy(void *c) { return t_destroy(c); }

/*
 * Stress driver for libecho under the sanitizers (ASan+UBSan, TSan): replays
 * every recorded vector (from a file that tests/echo writes out of the JSON
 * vectors), then again from several threads at once on one context, and runs
 * the lifecycle, re-entrancy, listener, submit-mode and garbage scenarios.
 * Exits non-zero on any failed check; the sanitizers abort on any report.
 *
 * Built per generation (make -C native/echo [GENERATION=0.3] asan|tsan):
 * build/<san>/stress (0.2) and build/<san>/stress-0.3.
 *
 * usage: stress VECTOR-FILE [garbage-iterations]
 * VECTOR-FILE lines:
 *   create <request-hex>
 *   call <method> <static 0|1> <ret> <request-hex|-> <ok|err|prefix> <expected-hex|->
 * ("prefix": the real library's empty detail; ours must extend it.)
 */
#define _GNU_SOURCE
#ifndef EC_GENERATION
#define EC_GENERATION 2
#endif
#if EC_GENERATION == 3
#include "../include/echo.h"
#define SYM(name) echo_##name
#else
#include "../include/echo_cbor.h"
#define SYM(name) echo_##name##_cbor
#endif

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_int failures;
#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        if (!(cond)) {                                                       \
            if (atomic_fetch_add(&failures, 1) < 50) {                       \
                fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);         \
                fprintf(stderr, __VA_ARGS__);                                \
                fputc('\n', stderr);                                         \
            }                                                                \
        }                                                                    \
    } while (0)

/* ---- vectors ------------------------------------------------------------ */

typedef struct {
    char method[32];
    int is_static, ret;
    uint8_t *req;
    size_t req_len;
    char mode[8]; /* ok, err, prefix */
    uint8_t *want;
    size_t want_len;
} vec_t;

static vec_t vecs[256];
static size_t nvecs;
static uint8_t *create_req;
static size_t create_len;

static uint8_t *unhex(const char *s, size_t *n)
{
    size_t len = strcmp(s, "-") == 0 ? 0 : strlen(s);
    uint8_t *out = malloc(len / 2 + 1);
    if (!out || len % 2)
        abort();
    for (size_t i = 0; i < len / 2; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1)
            abort();
        out[i] = (uint8_t)v;
    }
    *n = len / 2;
    return out;
}

static void load(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        perror(path);
        exit(2);
    }
    static char line[1 << 16], a[1 << 15], b[1 << 15];
    while (fgets(line, sizeof line, f)) {
        vec_t *v = &vecs[nvecs];
        if (sscanf(line, "create %32767s", a) == 1) {
            create_req = unhex(a, &create_len);
        } else if (nvecs < sizeof vecs / sizeof vecs[0] &&
                   sscanf(line, "call %31s %d %d %32767s %7s %32767s", v->method, &v->is_static,
                          &v->ret, a, v->mode, b) == 6) {
            v->req = unhex(a, &v->req_len);
            v->want = unhex(b, &v->want_len);
            nvecs++;
        } else if (line[0] != '\n') {
            fprintf(stderr, "bad vector line: %s", line);
            exit(2);
        }
    }
    fclose(f);
    if (!create_req || nvecs == 0) {
        fprintf(stderr, "no vectors in %s\n", path);
        exit(2);
    }
}

/* ---- callbacks ---------------------------------------------------------- */

typedef struct {
    atomic_int count;
    atomic_int code;
    atomic_size_t len;
    char body[4096];
} slot_t;

static atomic_int inside, overlaps; /* context callbacks must never overlap */

static void on_result(int code, const char *msg, size_t len, void *ud)
{
    slot_t *s = ud;
    if (atomic_fetch_add(&inside, 1) != 0)
        atomic_fetch_add(&overlaps, 1);
    size_t n = len < sizeof s->body ? len : sizeof s->body;
    memcpy(s->body, msg, n); /* ASan checks the whole message */
    atomic_store(&s->len, len);
    atomic_store(&s->code, code);
    atomic_fetch_add(&s->count, 1);
    atomic_fetch_sub(&inside, 1);
}

/* for the static calls, which run on their callers' threads (they may overlap) */
__attribute__((unused)) static void on_static(int code, const char *msg, size_t len, void *ud)
{
    slot_t *s = ud;
    size_t n = len < sizeof s->body ? len : sizeof s->body;
    memcpy(s->body, msg, n);
    atomic_store(&s->len, len);
    atomic_store(&s->code, code);
    atomic_fetch_add(&s->count, 1);
}

/* 1 if the callback's message starts with `text` */
static int starts(const slot_t *s, const char *text)
{
    size_t n = strlen(text);
    return atomic_load(&s->len) >= n && memcmp(s->body, text, n) == 0;
}

static void sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

static int wait_count(slot_t *s, int n)
{
    for (int i = 0; i < 200000 && atomic_load(&s->count) < n; i++)
        sleep_us(50);
    return atomic_load(&s->count);
}

static void *create_ctx(const uint8_t *req, size_t len, slot_t *s)
{
    memset(s, 0, sizeof *s);
    void *ctx = SYM(create)(req, len, on_result, s);
    if (ctx) {
        CHECK(wait_count(s, 1) == 1, "no create callback");
        char want[32];
        snprintf(want, sizeof want, "%lu", (unsigned long)(uintptr_t)ctx);
        size_t wl = strlen(want);
        CHECK(s->code == RET_OK && s->len == wl + 1 && (uint8_t)s->body[0] == 0x60 + wl &&
                  memcmp(s->body + 1, want, wl) == 0,
              "create callback is not the address as CBOR text");
    }
    return ctx;
}

static int call(const vec_t *v, void *ctx, slot_t *s)
{
    memset(s, 0, sizeof *s);
    const uint8_t *p = v->req_len ? v->req : (const uint8_t *)"";
#if EC_GENERATION == 3
    if (v->is_static) {
        if (strcmp(v->method, "lib_version") == 0)
            return echo_lib_version(on_static, s, p, v->req_len);
        return echo_shout_anon(on_static, s, p, v->req_len);
    }
#endif
    if (strcmp(v->method, "version") == 0)
        return SYM(version)(ctx, on_result, s, p, v->req_len);
    return SYM(shout)(ctx, on_result, s, p, v->req_len);
}

/* 1 if the final callback in s is what v recorded */
static int matches(const vec_t *v, const slot_t *s)
{
    size_t len = atomic_load(&s->len);
    if (atomic_load(&s->count) != 1 || atomic_load(&s->code) != v->ret || len > sizeof s->body)
        return 0;
    if (strcmp(v->mode, "prefix") == 0) /* ours adds a detail after the real prefix */
        return len > v->want_len && memcmp(s->body, v->want, v->want_len) == 0;
    return len == v->want_len && memcmp(s->body, v->want, len) == 0;
}

static int replay(const vec_t *v, void *ctx)
{
    slot_t *s = malloc(sizeof *s);
    int rc = call(v, ctx, s), ok;
    ok = rc == RET_OK && wait_count(s, 1) == 1;
    sleep_us(v->is_static ? 0 : 200); /* a second callback would show up here */
    ok = ok && matches(v, s);
    free(s);
    return ok;
}

/* ---- scenarios ---------------------------------------------------------- */

static void scenario_vectors(void)
{
    slot_t cs;
    void *ctx = create_ctx(create_req, create_len, &cs);
    CHECK(ctx != NULL, "create vector failed");
    size_t passed = 0;
    for (size_t i = 0; i < nvecs; i++) {
        int ok = replay(&vecs[i], ctx);
        CHECK(ok, "vector %zu (%s) differs", i, vecs[i].method);
        passed += ok;
    }
    CHECK(echo_destroy(ctx) == RET_OK, "destroy");
    printf("vectors: %zu/%zu passed\n", passed, nvecs);
}

typedef struct {
    void *ctx;
    int rounds;
    int seed;
} worker_arg;

static void *worker(void *arg)
{
    worker_arg *w = arg;
    slot_t *slots = calloc(nvecs, sizeof *slots);
    for (int r = 0; r < w->rounds; r++) {
        /* submit every vector at once, then check each answer */
        for (size_t k = 0; k < nvecs; k++) {
            size_t i = (k + (size_t)w->seed) % nvecs;
            CHECK(call(&vecs[i], w->ctx, &slots[i]) == RET_OK, "concurrent call refused");
        }
        for (size_t i = 0; i < nvecs; i++) {
            CHECK(wait_count(&slots[i], 1) == 1, "concurrent vector %zu: no answer", i);
            CHECK(matches(&vecs[i], &slots[i]), "concurrent vector %zu differs", i);
        }
    }
    free(slots);
    return NULL;
}

static void scenario_concurrent(void)
{
    slot_t cs;
    void *ctx = create_ctx(create_req, create_len, &cs);
    pthread_t t[4];
    worker_arg w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (worker_arg){ctx, 20, i * 7};
        pthread_create(&t[i], NULL, worker, &w[i]);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    CHECK(echo_destroy(ctx) == RET_OK, "destroy");
    CHECK(atomic_load(&overlaps) == 0, "%d overlapping callbacks", atomic_load(&overlaps));
    printf("concurrent: 4 threads x 20 rounds x %zu vectors\n", nvecs);
}

/* destroy answers every call already queued, then the context is gone */
static void scenario_lifecycle(void)
{
    enum { CALLS = 16 };
    const uint8_t shout[] = {0xa1, 0x63, 'r', 'e', 'q', 0xa1, 0x64, 't', 'e', 'x', 't', 0x61, 'x'};
    for (int cycle = 0; cycle < 200; cycle++) {
        slot_t *cs = calloc(1, sizeof *cs), *s = calloc(CALLS, sizeof *s);
        void *ctx = SYM(create)((const uint8_t *)"\xa0", 1, on_result, cs);
        CHECK(ctx != NULL, "create {}");
        for (int i = 0; i < CALLS; i++)
            CHECK(SYM(shout)(ctx, on_result, &s[i], shout, sizeof shout) == RET_OK, "shout");
        CHECK(echo_destroy(ctx) == RET_OK, "destroy");
        CHECK(atomic_load(&cs->count) == 1, "create callback before destroy returned");
        for (int i = 0; i < CALLS; i++) {
            CHECK(atomic_load(&s[i].count) == 1 && s[i].code == RET_OK,
                  "call %d not answered exactly once by destroy", i);
            /* prefix "" (from {}): {"shouted": ": X", "prefix": ""} */
            CHECK(s[i].len == 21 && memcmp(s[i].body + 10, ": X", 3) == 0, "shout body");
        }
        slot_t late = {0};
        CHECK(SYM(version)(ctx, on_result, &late, (const uint8_t *)"\xa0", 1) == RET_ERR,
              "call on a destroyed context");
        CHECK(late.count == 1 && late.len == 30 &&
                  memcmp(late.body, "ctx is not a valid FFI context", 30) == 0,
              "invalid context error");
        CHECK(echo_destroy(ctx) == RET_ERR, "second destroy");
        free(cs);
        free(s);
    }
    CHECK(echo_destroy(NULL) == RET_ERR, "destroy NULL");
    printf("lifecycle: 200 create/destroy cycles\n");
}

typedef struct {
    void *ctx;
    atomic_int called;
    int rc_version, rc_destroy, rc_remove, rc_static;
    uint64_t id_add;
    void *created;
    slot_t inner;
} reentry_t;

static void reentrant_cb(int code, const char *msg, size_t len, void *ud)
{
    (void)code, (void)msg, (void)len;
    reentry_t *r = ud;
    r->rc_version = SYM(version)(r->ctx, on_result, &r->inner, (const uint8_t *)"\xa0", 1);
    r->rc_destroy = echo_destroy(r->ctx);
    r->id_add = echo_add_event_listener(r->ctx, "", on_result, &r->inner);
    r->rc_remove = echo_remove_event_listener(r->ctx, 1);
    r->created = SYM(create)((const uint8_t *)"\xa0", 1, on_result, &r->inner);
#if EC_GENERATION == 3
    r->rc_static = echo_lib_version(on_static, &r->inner, (const uint8_t *)"\xa0", 1);
#else
    r->rc_static = RET_ERR;
#endif
    atomic_store(&r->called, 1);
}

static void scenario_reentrancy(void)
{
    slot_t cs;
    void *ctx = create_ctx(create_req, create_len, &cs);
    reentry_t *r = calloc(1, sizeof *r);
    r->ctx = ctx;
    CHECK(SYM(version)(ctx, reentrant_cb, r, (const uint8_t *)"\xa0", 1) == RET_OK, "version");
    for (int i = 0; i < 200000 && !atomic_load(&r->called); i++)
        sleep_us(50);
    sleep_us(2000);
    CHECK(atomic_load(&r->called), "no callback");
    CHECK(r->rc_version == RET_ERR && r->rc_destroy == RET_ERR && r->id_add == 0 &&
              r->rc_remove == RET_ERR && r->created == NULL && r->rc_static == RET_ERR,
          "calls from a callback must be refused");
    CHECK(atomic_load(&r->inner.count) == 0, "a refused call must not call back");
    /* the context survived the refused destroy */
    CHECK(replay(&vecs[0], ctx), "context unusable after re-entrant calls");
    CHECK(echo_destroy(ctx) == RET_OK, "destroy");
    free(r);
    printf("reentrancy: refused\n");
}

static void scenario_listeners(void)
{
    slot_t cs, ev = {0};
    void *ctx = create_ctx(create_req, create_len, &cs);
    uint64_t ids[4] = {echo_add_event_listener(ctx, "", on_result, &ev),
                       echo_add_event_listener(ctx, NULL, on_result, &ev),
                       echo_add_event_listener(ctx, "on_shout", on_result, &ev),
                       echo_add_event_listener(ctx, "on_echo_fired", on_result, &ev)};
    for (int i = 0; i < 4; i++) {
        CHECK(ids[i] >= 1, "listener id");
        for (int j = 0; j < i; j++)
            CHECK(ids[i] != ids[j], "listener ids must differ");
    }
    CHECK(echo_add_event_listener(ctx, "", NULL, NULL) == 0, "NULL callback");
    CHECK(echo_add_event_listener(NULL, "", on_result, &ev) == 0, "NULL context");
    for (size_t i = 0; i < nvecs; i++)
        replay(&vecs[i], ctx);
    CHECK(atomic_load(&ev.count) == 0, "the echo library has no events");
    for (int i = 0; i < 4; i++) {
        CHECK(echo_remove_event_listener(ctx, ids[i]) == RET_OK, "remove");
        CHECK(echo_remove_event_listener(ctx, ids[i]) == RET_ERR, "remove twice");
    }
    CHECK(echo_remove_event_listener(NULL, 1) == RET_ERR, "remove on NULL");
    CHECK(echo_destroy(ctx) == RET_OK, "destroy");
    printf("listeners: ids, no events\n");
}

static void scenario_modes(void)
{
    /* handoff: a call returns once its answer was delivered */
    setenv("ECHO_SUBMIT_MODE", "handoff", 1);
    slot_t cs;
    void *ctx = create_ctx(create_req, create_len, &cs);
    unsetenv("ECHO_SUBMIT_MODE");
    CHECK(ctx != NULL, "handoff create");
    for (size_t i = 0; i < nvecs; i++) {
        if (vecs[i].is_static)
            continue;
        slot_t *s = malloc(sizeof *s);
        CHECK(call(&vecs[i], ctx, s) == RET_OK, "handoff call");
        CHECK(atomic_load(&s->count) == 1, "handoff: answer %zu not delivered before return", i);
        CHECK(matches(&vecs[i], s), "handoff vector %zu differs", i);
        free(s);
    }
    CHECK(echo_destroy(ctx) == RET_OK, "destroy");

    setenv("ECHO_SUBMIT_MODE", "sync", 1);
    slot_t bad = {0};
    CHECK(SYM(create)(create_req, create_len, on_result, &bad) == NULL, "bad mode must fail");
    unsetenv("ECHO_SUBMIT_MODE");
    CHECK(bad.count == 1 && bad.code == RET_ERR &&
              starts(&bad, "ffiCtor: invalid ECHO_SUBMIT_MODE 'sync'"),
          "bad mode error");
    printf("submit modes: handoff, invalid\n");
}

static void scenario_hostile(int iterations)
{
    slot_t cs, s = {0};
    /* NULL payload pointers with a length */
    CHECK(SYM(create)(NULL, 5, on_result, &s) == NULL, "create NULL payload");
    CHECK(s.count == 1 && s.code == RET_ERR &&
              starts(&s, "ffiCtor: failed to decode request: NULL payload pointer with length 5"),
          "create NULL payload error");
    CHECK(SYM(create)(create_req, create_len, NULL, NULL) == NULL, "create without callback");
    void *ctx = create_ctx(create_req, create_len, &cs);
    slot_t *r = calloc(1, sizeof *r);
    CHECK(SYM(shout)(ctx, on_result, r, NULL, 7) == RET_OK, "shout NULL payload");
    CHECK(wait_count(r, 1) == 1 && r->code == RET_ERR &&
              starts(r, "CBOR decode failed for EchoShoutReq: NULL payload pointer with length 7"),
          "NULL payload error");
    CHECK(SYM(shout)(ctx, NULL, NULL, create_req, create_len) == RET_MISSING_CALLBACK,
          "missing callback");
    /* garbage: random bytes and mutated vectors get exactly one answer each */
    uint64_t x = 0x9e3779b97f4a7c15u;
    uint8_t buf[2200];
    slot_t *slots = calloc(64, sizeof *slots);
    for (int it = 0; it < iterations; it += 64) {
        for (int k = 0; k < 64; k++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            const vec_t *v = &vecs[x % nvecs];
            size_t len;
            if (x & 1) {
                len = v->req_len < sizeof buf ? v->req_len : sizeof buf;
                memcpy(buf, v->req, len);
                for (int m = 0; m < 3 && len; m++) {
                    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                    buf[x % len] ^= (uint8_t)(x >> 32);
                }
                if (len && (x & 2))
                    len = (x >> 8) % len; /* truncated */
            } else {
                len = (x >> 16) % 48;
                for (size_t i = 0; i < len; i++) {
                    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                    buf[i] = (uint8_t)x;
                }
            }
            memset(&slots[k], 0, sizeof slots[k]);
            int rc;
#if EC_GENERATION == 3
            if (x & 4)
                rc = (x & 8) ? echo_shout_anon(on_static, &slots[k], buf, len)
                             : echo_lib_version(on_static, &slots[k], buf, len);
            else
#endif
                rc = (x & 8) ? SYM(shout)(ctx, on_result, &slots[k], buf, len)
                             : SYM(version)(ctx, on_result, &slots[k], buf, len);
            CHECK(rc == RET_OK, "garbage call refused");
        }
        for (int k = 0; k < 64; k++) {
            CHECK(wait_count(&slots[k], 1) == 1, "garbage: no answer");
            int code = atomic_load(&slots[k].code);
            CHECK(code == RET_OK || code == RET_ERR, "garbage: code %d", code);
        }
    }
    CHECK(echo_destroy(ctx) == RET_OK, "destroy");
    for (int k = 0; k < 64; k++)
        CHECK(atomic_load(&slots[k].count) == 1, "garbage: more than one answer");
    free(slots);
    free(r);
    printf("hostile: %d garbage requests\n", iterations);
}

#if EC_GENERATION == 3
static void *static_worker(void *arg)
{
    (void)arg;
    slot_t *s = malloc(sizeof *s);
    for (int r = 0; r < 50; r++)
        for (size_t i = 0; i < nvecs; i++) {
            if (!vecs[i].is_static)
                continue;
            CHECK(call(&vecs[i], NULL, s) == RET_OK, "static call");
            /* answered on this thread before the call returned */
            CHECK(atomic_load(&s->count) == 1 && matches(&vecs[i], s), "static vector %zu", i);
        }
    free(s);
    return NULL;
}

static void scenario_static(void)
{
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, static_worker, NULL);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    CHECK(echo_lib_version(NULL, NULL, (const uint8_t *)"\xa0", 1) == RET_MISSING_CALLBACK,
          "static call without callback");
    printf("static calls: 4 threads at once\n");
}
#else
static void scenario_native_names(void)
{
    /* the 0.2 native-ABI names are inert: they fail without calling back */
    CHECK(echo_create() == NULL, "echo_create");
    CHECK(echo_shout() == RET_ERR, "echo_shout");
    CHECK(echo_version() == RET_ERR, "echo_version");
    printf("native-ABI names: inert\n");
}
#endif

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s VECTOR-FILE [garbage-iterations]\n", argv[0]);
        return 2;
    }
    int iterations = argc > 2 ? atoi(argv[2]) : 20000;
    load(argv[1]);
    libechoNimMain(); /* what a Nim-aware host may call first: harmless */
    scenario_vectors();
    scenario_concurrent();
    scenario_lifecycle();
    scenario_reentrancy();
    scenario_listeners();
    scenario_modes();
    scenario_hostile(iterations);
#if EC_GENERATION == 3
    scenario_static();
#else
    scenario_native_names();
#endif
    NimDestroyGlobals();
    for (size_t i = 0; i < nvecs; i++) {
        free(vecs[i].req);
        free(vecs[i].want);
    }
    free(create_req);
    int f = atomic_load(&failures);
    if (f) {
        fprintf(stderr, "%d checks failed\n", f);
        return 1;
    }
    printf("all scenarios passed\n");
    return 0;
}

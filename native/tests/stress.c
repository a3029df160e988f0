/*
 * Sanitizer harness for libmy_timer: drives the ABI through the same
 * scenarios as the pytest suite (vectors, concurrency and ordering, events,
 * destroy draining and grace, both submit modes, re-entrancy, hostile
 * payloads, create/destroy cycles). Built with ASan+UBSan and with TSan
 * (make -C native asan tsan); exits non-zero on any failed check, and the
 * sanitizers abort on any report (halt_on_error).
 *
 * Built a second time with -DMT_GENERATION=3 against the 0.3 generation
 * (make -C native GENERATION=0.3 asan tsan -> build/<san>/stress-0.3): the
 * same scenarios through the suffix-less symbols with that generation's
 * vectors, plus the static call, RET_STALE_WARN and the event thread.
 *
 * usage: stress [hostile-iterations]
 */
#define _GNU_SOURCE
#ifndef MT_GENERATION
#define MT_GENERATION 2
#endif
#if MT_GENERATION == 3
#include "../include/my_timer.h"
#define SYM(name) my_timer_##name
#else
#include "../include/my_timer_cbor.h"
#define SYM(name) my_timer_##name##_cbor
#endif

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <time.h>
#include <unistd.h>

static int failures;
#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);             \
            fprintf(stderr, __VA_ARGS__);                                    \
            fputc('\n', stderr);                                             \
            failures++;                                                      \
        }                                                                    \
    } while (0)

typedef struct {
    atomic_int count;
    atomic_int code;
    atomic_llong at_ns;
    char body[256];
    atomic_size_t len;
} slot_t;

static atomic_int inside, overlaps;
#if MT_GENERATION == 3
/* 0.3: events come from their own thread, so they are tracked apart from
 * results (events must not overlap each other; results must not either). */
static atomic_int ev_inside, ev_overlaps;
#endif

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void record(int code, const char *msg, size_t len, void *ud, atomic_int *in,
                   atomic_int *ov)
{
    slot_t *s = ud;
    if (atomic_fetch_add(in, 1) != 0)
        atomic_fetch_add(ov, 1);
    size_t n = len < sizeof s->body - 1 ? len : sizeof s->body - 1;
    /* touch every byte of msg so ASan checks the whole buffer */
    volatile unsigned sum = 0;
    for (size_t i = 0; i < len; i++)
        sum += (unsigned char)msg[i];
    (void)sum;
    if (atomic_load(&s->count) == 0) {
        memcpy(s->body, msg, n);
        s->body[n] = 0;
        atomic_store(&s->len, len);
        atomic_store(&s->code, code);
        atomic_store(&s->at_ns, now_ns());
    }
    atomic_fetch_add(&s->count, 1);
    atomic_fetch_sub(in, 1);
}

static void cb(int code, const char *msg, size_t len, void *ud)
{
    record(code, msg, len, ud, &inside, &overlaps);
}

#if MT_GENERATION == 3
static void ev_cb(int code, const char *msg, size_t len, void *ud)
{
    record(code, msg, len, ud, &ev_inside, &ev_overlaps);
}
#define EVCB ev_cb
#else
#define EVCB cb
#endif

static void wait_count(slot_t *s, int n, int timeout_ms)
{
    for (int i = 0; i < timeout_ms * 10 && atomic_load(&s->count) < n; i++)
        usleep(100);
}

static size_t unhex(const char *hex, uint8_t *out)
{
    size_t n = strlen(hex) / 2;
    for (size_t i = 0; i < n; i++)
        sscanf(hex + 2 * i, "%2hhx", &out[i]);
    return n;
}

static void hexify(const char *msg, size_t len, char *out)
{
    for (size_t i = 0; i < len; i++)
        sprintf(out + 2 * i, "%02x", (unsigned char)msg[i]);
    out[2 * len] = 0;
}

static void *create(const char *name_hex_payload, slot_t *s)
{
    uint8_t p[256];
    size_t n = unhex(name_hex_payload, p);
    void *ctx = SYM(create)(p, n, cb, s);
    CHECK(ctx != NULL, "create failed: %s", s->body);
    wait_count(s, 1, 2000);
    CHECK(atomic_load(&s->code) == RET_OK, "create callback code");
    return ctx;
}

#define DEMO "a166636f6e666967a1646e616d656464656d6f"
#define ECHO5 "a163726571a2676d6573736167656568656c6c6f6764656c61794d7305"

typedef int (*method_fn)(void *, FFICallBack, void *, const uint8_t *, size_t);
static method_fn methods[4] = {SYM(version), SYM(echo),
                               SYM(complex), SYM(schedule)};

static const struct {
    int m;
    const char *req, *ok_hex, *err;
} vec[] = {
#if MT_GENERATION == 3
    /* abi-vectors-0.3.json (the unknown-key detail is ours; the static call
     * and the 5 s stale-warning echo are exercised elsewhere) */
    /* version */
    {0, "a0",
     "706e696d2d74696d65722076302e312e30", NULL},
    /* echo */
    {1, "a163726571a2676d6573736167656568656c6c6f6764656c61794d7305",
     "a2666563686f65646568656c6c6f6974696d65724e616d656464656d6f", NULL},
    /* echo, delayMs above MaxDelayMs (5000) */
    {1, "a163726571a2676d6573736167656568656c6c6f6764656c61794d73191389",
     NULL, "delayMs must not exceed 5000"},
    /* echo, unknown key */
    {1, "a163726571a3676d6573736167656268696764656c61794d730065657874726101",
     NULL, "CBOR decode failed for MyTimerEchoReq: unknown field 'extra' in EchoRequest"},
    /* complex, options absent */
    {2, "a163726571a2686d6573736167657380647461677380",
     "a36773756d6d617279782b72656365697665642030206d657373616765732c206e6f74653d3c6e6f6e653e2c20726574726965733d30696974656d436f756e7400676861734e6f7465f4", NULL},
    /* schedule, priority low, backoffMs 0 (DefaultBackoffMs 250) */
    {3, "a3636a6f62a3646e616d65616a677061796c6f6164816170687072696f72697479636c6f77657265747279a36b6d6178417474656d70747303696261636b6f66664d73006772657472794f6e816774696d656f7574687363686564756c65a369737461727441744d731903e86a696e74657276616c4d7318fa666a697474657205",
     "a5656a6f6249646664656d6f3a6a6c77696c6c52756e436f756e7418f06c666972737452756e41744d731903ed726566666563746976654261636b6f66664d731901f4687072696f72697479636c6f77", NULL},
    /* schedule, priority normal, backoffMs 0 (DefaultBackoffMs 250) */
    {3, "a3636a6f62a3646e616d65616a677061796c6f6164816170687072696f72697479666e6f726d616c657265747279a36b6d6178417474656d70747303696261636b6f66664d73006772657472794f6e816774696d656f7574687363686564756c65a369737461727441744d731903e86a696e74657276616c4d7318fa666a697474657205",
     "a5656a6f6249646664656d6f3a6a6c77696c6c52756e436f756e7418f06c666972737452756e41744d731903ed726566666563746976654261636b6f66664d7318fa687072696f72697479666e6f726d616c", NULL},
    /* schedule, priority high, backoffMs 0 (DefaultBackoffMs 250) */
    {3, "a3636a6f62a3646e616d65616a677061796c6f6164816170687072696f726974796468696768657265747279a36b6d6178417474656d70747303696261636b6f66664d73006772657472794f6e816774696d656f7574687363686564756c65a369737461727441744d731903e86a696e74657276616c4d7318fa666a697474657205",
     "a5656a6f6249646664656d6f3a6a6c77696c6c52756e436f756e7418f06c666972737452756e41744d731903ed726566666563746976654261636b6f66664d73187d687072696f726974796468696768", NULL},
    /* schedule, priority high, backoffMs 100 */
    {3, "a3636a6f62a2646e616d65616a687072696f726974796468696768657265747279a26b6d6178417474656d70747303696261636b6f66664d731864687363686564756c65a0",
     "a5656a6f6249646664656d6f3a6a6c77696c6c52756e436f756e74016c666972737452756e41744d7300726566666563746976654261636b6f66664d731832687072696f726974796468696768", NULL},
    /* schedule, priority missing (zero value: low) */
    {3, "a3636a6f62a2646e616d65616a677061796c6f6164816170657265747279a36b6d6178417474656d70747303696261636b6f66664d73006772657472794f6e816774696d656f7574687363686564756c65a369737461727441744d731903e86a696e74657276616c4d7318fa666a697474657205",
     "a5656a6f6249646664656d6f3a6a6c77696c6c52756e436f756e7418f06c666972737452756e41744d731903ed726566666563746976654261636b6f66664d731901f4687072696f72697479636c6f77", NULL},
    /* schedule, priority not a member */
    {3, "a3636a6f62a2646e616d65616a687072696f7269747966757267656e74657265747279a36b6d6178417474656d70747303696261636b6f66664d73006772657472794f6e816774696d656f7574687363686564756c65a369737461727441744d731903e86a696e74657276616c4d7318fa666a697474657205",
     NULL, "CBOR decode failed for MyTimerScheduleReq: Invalid value for 'JobPriority'"},
    /* schedule, priority as integer (the 0.2 form) */
    {3, "a3636a6f62a2646e616d65616a687072696f7269747901657265747279a36b6d6178417474656d70747303696261636b6f66664d73006772657472794f6e816774696d656f7574687363686564756c65a369737461727441744d731903e86a696e74657276616c4d7318fa666a697474657205",
     NULL, "CBOR decode failed for MyTimerScheduleReq: Expected: string but found: Unsigned"},
    /* schedule, empty job name */
    {3, "a3636a6f62a2646e616d6560687072696f726974796468696768657265747279a16b6d6178417474656d70747303687363686564756c65a0",
     NULL, "job name must not be empty"},
    /* schedule, maxAttempts 0 */
    {3, "a3636a6f62a1646e616d65616a657265747279a16b6d6178417474656d70747300687363686564756c65a0",
     NULL, "retry.maxAttempts must be positive"},
#else
    {0, "a0", "706e696d2d74696d65722076302e312e30", NULL},
    {0, "", NULL, "CBOR decode failed for MyTimerVersionReq: unexpected eof"},
    {1, ECHO5, "a2666563686f65646568656c6c6f6974696d65724e616d656464656d6f", NULL},
    {1, "a163726571a3676d6573736167656268696764656c61794d730065657874726101", NULL,
     "CBOR decode failed for MyTimerEchoReq: unknown field 'extra' in EchoRequest"},
    {1, "a163726571a2676d6573736167656268696764656c61794d736135", NULL,
     "CBOR decode failed for MyTimerEchoReq: Expected: number but found: text string"},
    {2, "a163726571a2686d6573736167657380647461677380",
     "a36773756d6d617279782b72656365697665642030206d657373616765732c206e6f74653d3c6e6f6e653e2c20726574726965733d30696974656d436f756e7400676861734e6f7465f4",
     NULL},
    {2, "a163726571a4686d6573736167657382a2676d65737361676561616764656c61794d7301a2676d65737361676561626764656c61794d7302647461677382627431627432646e6f7465616e677265747269657303",
     "a36773756d6d617279782672656365697665642032206d657373616765732c206e6f74653d6e2c20726574726965733d33696974656d436f756e7402676861734e6f7465f5",
     NULL},
    {3, "a3636a6f62a3646e616d65616a677061796c6f6164816170687072696f7269747901657265747279a36b6d6178417474656d70747303696261636b6f66664d7318646772657472794f6e816774696d656f7574687363686564756c65a369737461727441744d731903e86a696e74657276616c4d7318fa666a697474657205",
     "a4656a6f6249646664656d6f3a6a6c77696c6c52756e436f756e7418f06c666972737452756e41744d731903ed726566666563746976654261636b6f66664d731864",
     NULL},
    {3, "a3636a6f62a1646e616d6560657265747279a16b6d6178417474656d70747303687363686564756c65a0",
     NULL, "job name must not be empty"},
    {3, "a2636a6f62a1646e616d65616a657265747279a16b6d6178417474656d70747300", NULL,
     "retry.maxAttempts must be positive"},
#endif
};
#define NVEC (sizeof vec / sizeof vec[0])

static void scenario_vectors(void)
{
    slot_t cs = {0}, ev = {0};
    void *ctx = create(DEMO, &cs);
    uint64_t lid = my_timer_add_event_listener(ctx, "on_echo_fired", EVCB, &ev);
    CHECK(lid >= 1, "listener id");
#if MT_GENERATION == 3
    slot_t job = {0}, none = {0};
    uint64_t jid = my_timer_add_event_listener(ctx, "on_job_scheduled", ev_cb, &job);
    uint64_t nid = my_timer_add_event_listener(ctx, "", ev_cb, &none);
    uint64_t nulid = my_timer_add_event_listener(ctx, NULL, ev_cb, &none);
    CHECK(jid > lid && nid > jid && nulid > nid, "listener ids");
#endif
    for (size_t i = 0; i < NVEC; i++) {
        slot_t s = {0};
        uint8_t p[512];
        size_t n = unhex(vec[i].req, p);
        CHECK(methods[vec[i].m](ctx, cb, &s, p, n) == RET_OK, "rc");
        wait_count(&s, 1, 2000);
        char hex[600];
        hexify(s.body, atomic_load(&s.len), hex);
        if (vec[i].ok_hex)
            CHECK(s.code == RET_OK && strcmp(hex, vec[i].ok_hex) == 0, "vector %zu: %s", i, hex);
        else
            CHECK(s.code == RET_ERR && strcmp(s.body, vec[i].err) == 0, "vector %zu: %s", i, s.body);
    }
#if MT_GENERATION == 3
    /* events may trail the replies: destroy delivers every queued one */
    CHECK(my_timer_remove_event_listener(ctx, nulid) == RET_OK, "remove");
    CHECK(my_timer_destroy(ctx) == RET_OK, "destroy");
    CHECK(atomic_load(&ev.count) == 1, "one echo event, got %d", atomic_load(&ev.count));
    CHECK(atomic_load(&job.count) == 5, "five job events, got %d", atomic_load(&job.count));
    CHECK(atomic_load(&none.count) == 0, "unnamed listeners got %d events", atomic_load(&none.count));
    CHECK(atomic_load(&ev_overlaps) == 0, "overlapping event callbacks");
#else
    CHECK(atomic_load(&ev.count) == 1, "one echo event, got %d", atomic_load(&ev.count));
    CHECK(my_timer_remove_event_listener(ctx, lid) == RET_OK, "remove");
    CHECK(my_timer_destroy(ctx) == RET_OK, "destroy");
#endif
    CHECK(atomic_load(&overlaps) == 0, "overlapping callbacks");
}

static size_t echo_payload(uint8_t *out, int delay)
{
    /* {"req": {"message": "m", "delayMs": delay}} with delay < 65536 */
    size_t n = unhex("a163726571a2676d657373616765616d6764656c61794d73", out);
    out[n++] = 0x19;
    out[n++] = (uint8_t)(delay >> 8);
    out[n++] = (uint8_t)delay;
    return n;
}

static void scenario_concurrent_echoes(int handoff)
{
    setenv("MY_TIMER_SUBMIT_MODE", handoff ? "handoff" : "async", 1);
    slot_t cs = {0};
    void *ctx = create(DEMO, &cs);
    static slot_t s[64];
    memset(s, 0, sizeof s);
    uint8_t p[64];
    size_t n = echo_payload(p, 100);
    long long t0 = now_ns();
    for (int i = 0; i < 64; i++)
        CHECK(SYM(echo)(ctx, cb, &s[i], p, n) == RET_OK, "echo rc");
    for (int i = 0; i < 64; i++)
        wait_count(&s[i], 1, 3000);
    long long last = 0;
    for (int i = 0; i < 64; i++) {
        CHECK(s[i].count == 1 && s[i].code == RET_OK, "echo %d", i);
        if (s[i].at_ns > last)
            last = s[i].at_ns;
    }
    /* sanitizers slow things down: allow more than the 150 ms of the spec */
    CHECK(last - t0 < 400000000LL, "64 echoes took %lld ms", (last - t0) / 1000000);
    if (handoff) { /* version is answered before the call returns */
        slot_t v = {0};
        CHECK(SYM(version)(ctx, cb, &v, (const uint8_t *)"\xa0", 1) == RET_OK, "rc");
        CHECK(atomic_load(&v.count) == 1, "handoff: delivered before return");
    }
    CHECK(my_timer_destroy(ctx) == RET_OK, "destroy");
    unsetenv("MY_TIMER_SUBMIT_MODE");
}

/* ---- multi-threaded submission with listener churn ---- */

typedef struct {
    void *ctx;
    slot_t *slots;
    int n;
    int seed;
} worker_t;

static void *submitter(void *arg)
{
    worker_t *w = arg;
    uint8_t p[256];
    for (int i = 0; i < w->n; i++) {
        int k = (i + w->seed) % NVEC;
        size_t n;
        if (i % 7 == 0) {
            n = echo_payload(p, i % 4);
            CHECK(SYM(echo)(w->ctx, cb, &w->slots[i], p, n) == RET_OK, "rc");
        } else {
            n = unhex(vec[k].req, p);
            CHECK(methods[vec[k].m](w->ctx, cb, &w->slots[i], p, n) == RET_OK, "rc");
        }
    }
    return NULL;
}

static atomic_int churn_stop;
static void *churner(void *ctx)
{
    slot_t ev = {0};
    while (!atomic_load(&churn_stop)) {
        uint64_t id = my_timer_add_event_listener(ctx, (rand() & 1) ? "" : "on_echo_fired", EVCB, &ev);
        CHECK(id >= 1, "add");
        usleep(50);
        CHECK(my_timer_remove_event_listener(ctx, id) == RET_OK, "remove");
    }
    return NULL;
}

static void scenario_threads(int per_thread)
{
    slot_t cs = {0};
    void *ctx = create(DEMO, &cs);
    enum { T = 4 };
    pthread_t th[T], ch;
    worker_t w[T];
    slot_t *slots = calloc((size_t)T * per_thread, sizeof *slots);
    atomic_store(&churn_stop, 0);
    pthread_create(&ch, NULL, churner, ctx);
    for (int t = 0; t < T; t++) {
        w[t] = (worker_t){ctx, slots + (size_t)t * per_thread, per_thread, t};
        pthread_create(&th[t], NULL, submitter, &w[t]);
    }
    for (int t = 0; t < T; t++)
        pthread_join(th[t], NULL);
    atomic_store(&churn_stop, 1);
    pthread_join(ch, NULL);
    CHECK(my_timer_destroy(ctx) == RET_OK, "destroy");
    for (int i = 0; i < T * per_thread; i++)
        CHECK(atomic_load(&slots[i].count) == 1, "slot %d got %d callbacks", i, slots[i].count);
    free(slots);
    CHECK(atomic_load(&overlaps) == 0, "overlapping callbacks");
}

/* ---- hostile payloads ---- */

static uint64_t rng = 0x9e3779b97f4a7c15ULL;
static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void scenario_hostile(int iters)
{
    setenv("MY_TIMER_DESTROY_GRACE_MS", "50", 1);
    slot_t cs = {0};
    void *ctx = create(DEMO, &cs);
    slot_t *slots = calloc((size_t)iters, sizeof *slots);
    int *meth = calloc((size_t)iters, sizeof *meth);
    uint8_t base[512], p[1024];
    for (int i = 0; i < iters; i++) {
        size_t k = next_rand() % NVEC, n = unhex(vec[k].req, base);
        uint64_t r = next_rand();
        size_t len;
        if (r % 4 == 0) { /* random bytes */
            len = next_rand() % 64;
            for (size_t j = 0; j < len; j++)
                p[j] = (uint8_t)next_rand();
        } else { /* mutated vector */
            memcpy(p, base, n);
            len = n;
            int muts = 1 + (int)(next_rand() % 4);
            for (int m = 0; m < muts && len; m++) {
                size_t at = next_rand() % len;
                switch (next_rand() % 5) {
                case 0: p[at] ^= (uint8_t)(1u << (next_rand() % 8)); break;
                case 1: p[at] = (uint8_t)next_rand(); break;
                case 2: len = at; break;
                case 3: p[at] = (uint8_t[]){0x1b, 0x3b, 0x7b, 0x9b, 0xbf, 0xff, 0xf6}[next_rand() % 7]; break;
                default:
                    if (len < sizeof p - 1) {
                        memmove(p + at + 1, p + at, len - at);
                        p[at] = (uint8_t)next_rand();
                        len++;
                    }
                }
            }
        }
        meth[i] = (int)(next_rand() % 4);
        const uint8_t *pp = (r % 97 == 0) ? NULL : p; /* NULL with a length */
        CHECK(methods[meth[i]](ctx, cb, &slots[i], pp, len) == RET_OK, "rc");
    }
    CHECK(my_timer_destroy(ctx) == RET_OK, "destroy");
    static const char *const types[] = {"MyTimerVersionReq", "MyTimerEchoReq",
                                        "MyTimerComplexReq", "MyTimerScheduleReq"};
    for (int i = 0; i < iters; i++) {
        CHECK(atomic_load(&slots[i].count) == 1, "hostile %d: %d callbacks", i, slots[i].count);
        if (slots[i].code == RET_ERR && strncmp(slots[i].body, "CBOR decode failed", 18) == 0) {
            char prefix[96];
            int pl = snprintf(prefix, sizeof prefix, "CBOR decode failed for %s: ", types[meth[i]]);
            CHECK(strncmp(slots[i].body, prefix, (size_t)pl) == 0 &&
                      atomic_load(&slots[i].len) > (size_t)pl,
                  "hostile %d: bad error text '%s'", i, slots[i].body);
        }
    }
    free(slots);
    free(meth);
    unsetenv("MY_TIMER_DESTROY_GRACE_MS");
}

/* ---- lifecycle, grace, re-entrancy ---- */

static void *reentrant_ctx;
static atomic_int reentrant_rcs[4];
static void reentrant_cb(int code, const char *msg, size_t len, void *ud)
{
    slot_t dummy = {0};
    (void)code, (void)msg, (void)len;
    atomic_store(&reentrant_rcs[0], SYM(version)(reentrant_ctx, cb, &dummy,
                                                          (const uint8_t *)"\xa0", 1));
    atomic_store(&reentrant_rcs[1], my_timer_destroy(reentrant_ctx));
    atomic_store(&reentrant_rcs[2], (int)my_timer_add_event_listener(reentrant_ctx, "", cb, &dummy));
    atomic_store(&reentrant_rcs[3], my_timer_remove_event_listener(reentrant_ctx, 1));
#if MT_GENERATION == 3
    if (my_timer_lib_version(cb, &dummy, (const uint8_t *)"\xa0", 1) != RET_ERR)
        atomic_store(&reentrant_rcs[0], -1);
#endif
    CHECK(atomic_load(&dummy.count) == 0, "reentrant call called back");
    cb(code, msg, len, ud);
}

static void scenario_lifecycle(int cycles)
{
    uint8_t p[64];
    slot_t *slots = calloc((size_t)cycles * 3, sizeof *slots);
    for (int i = 0; i < cycles; i++) {
        void *ctx = SYM(create)((const uint8_t *)"\xa0", 1, cb, &slots[3 * i]);
        CHECK(ctx != NULL, "create");
        size_t n = echo_payload(p, 1);
        SYM(echo)(ctx, cb, &slots[3 * i + 1], p, n);
        SYM(version)(ctx, cb, &slots[3 * i + 2], (const uint8_t *)"\xa0", 1);
        CHECK(my_timer_destroy(ctx) == RET_OK, "destroy");
        for (int k = 0; k < 3; k++)
            CHECK(atomic_load(&slots[3 * i + k].count) == 1, "cycle %d/%d", i, k);
    }
    free(slots);

    /* grace: a one-hour echo (0.3: the maximum, 5 s) is cancelled with
     * exactly one RET_ERR */
    setenv("MY_TIMER_DESTROY_GRACE_MS", "20", 1);
    slot_t cs = {0}, longs = {0};
    void *ctx = create(DEMO, &cs);
    unsetenv("MY_TIMER_DESTROY_GRACE_MS");
#if MT_GENERATION == 3
    size_t n = unhex("a163726571a2676d657373616765616d6764656c61794d73191388", p);
#else
    size_t n = unhex("a163726571a2676d657373616765616d6764656c61794d731a0036ee80", p);
#endif
    CHECK(SYM(echo)(ctx, cb, &longs, p, n) == RET_OK, "rc");
    CHECK(my_timer_destroy(ctx) == RET_OK, "destroy");
    CHECK(longs.count == 1 && longs.code == RET_ERR &&
              strcmp(longs.body, "echo cancelled: context destroyed") == 0,
          "cancel: %s", longs.body);

    /* re-entrancy */
    slot_t cs2 = {0}, rs = {0};
    reentrant_ctx = create(DEMO, &cs2);
    CHECK(SYM(version)(reentrant_ctx, reentrant_cb, &rs, (const uint8_t *)"\xa0", 1) == RET_OK, "rc");
    wait_count(&rs, 1, 2000);
    CHECK(reentrant_rcs[0] == RET_ERR && reentrant_rcs[1] == RET_ERR && reentrant_rcs[2] == 0 &&
              reentrant_rcs[3] == RET_ERR,
          "reentrant results");
    CHECK(my_timer_destroy(reentrant_ctx) == RET_OK, "destroy");

    /* invalid contexts */
    slot_t bad = {0};
    int local;
    CHECK(SYM(version)(NULL, cb, &bad, (const uint8_t *)"\xa0", 1) == RET_ERR, "null");
    CHECK(SYM(echo)(&local, cb, &bad, (const uint8_t *)"\xa0", 1) == RET_ERR, "bogus");
    CHECK(SYM(echo)(ctx, cb, &bad, (const uint8_t *)"\xa0", 1) == RET_ERR, "destroyed");
    CHECK(bad.count == 3 && strcmp(bad.body, "ctx is not a valid FFI context") == 0, "invalid");
    CHECK(my_timer_destroy(ctx) == RET_ERR, "double destroy");
    CHECK(SYM(version)(NULL, NULL, NULL, NULL, 0) == RET_MISSING_CALLBACK, "no cb");
    slot_t ce = {0};
    CHECK(SYM(create)(NULL, 3, cb, &ce) == NULL && ce.count == 1, "null create");
    setenv("MY_TIMER_SUBMIT_MODE", "bogus", 1);
    slot_t cm = {0};
    CHECK(SYM(create)((const uint8_t *)"\xa0", 1, cb, &cm) == NULL && cm.count == 1, "bad mode");
    unsetenv("MY_TIMER_SUBMIT_MODE");
}

#if MT_GENERATION == 3
/* ---- 0.3 only: static call, stale warnings, the event thread ---- */

/* lib_version answers on each caller's thread: these may overlap freely */
static atomic_int lv_inside, lv_overlaps;
static void lv_cb(int code, const char *msg, size_t len, void *ud)
{
    record(code, msg, len, ud, &lv_inside, &lv_overlaps);
}

static void *lib_version_caller(void *arg)
{
    int *bad = arg;
    for (int i = 0; i < 2000; i++) {
        slot_t s = {0};
        if (my_timer_lib_version(lv_cb, &s, (const uint8_t *)"\xa0", 1) != RET_OK ||
            atomic_load(&s.count) != 1 || atomic_load(&s.code) != RET_OK ||
            strcmp(s.body + 1, "nim-timer v0.1.0") != 0)
            (*bad)++;
    }
    return NULL;
}

static void scenario_gen3(void)
{
    /* the static call answers on the caller's thread, from any thread */
    pthread_t th[4];
    int bad[4] = {0};
    for (int t = 0; t < 4; t++)
        pthread_create(&th[t], NULL, lib_version_caller, &bad[t]);
    for (int t = 0; t < 4; t++) {
        pthread_join(th[t], NULL);
        CHECK(bad[t] == 0, "lib_version thread %d: %d bad answers", t, bad[t]);
    }
    slot_t ls = {0};
    CHECK(my_timer_lib_version(cb, &ls, NULL, 4) == RET_OK && ls.count == 1 &&
              ls.code == RET_ERR,
          "lib_version NULL payload");
    CHECK(my_timer_lib_version(NULL, NULL, NULL, 0) == RET_MISSING_CALLBACK, "no cb");

    /* stale warnings every 5 ms: 32 echoes of 23 ms each get 4, then the reply */
    setenv("MY_TIMER_STALE_WARN_MS", "5", 1);
    slot_t cs = {0}, ev = {0};
    void *ctx = create(DEMO, &cs);
    unsetenv("MY_TIMER_STALE_WARN_MS");
    CHECK(my_timer_add_event_listener(ctx, "on_echo_fired", ev_cb, &ev) >= 1, "add");
    static slot_t s[32];
    memset(s, 0, sizeof s);
    uint8_t p[64];
    size_t n = echo_payload(p, 23);
    for (int i = 0; i < 32; i++)
        CHECK(SYM(echo)(ctx, cb, &s[i], p, n) == RET_OK, "rc");
    for (int i = 0; i < 32; i++)
        wait_count(&s[i], 5, 3000);
    for (int i = 0; i < 32; i++)
        CHECK(atomic_load(&s[i].count) == 5 && atomic_load(&s[i].code) == RET_STALE_WARN &&
                  strcmp(s[i].body, "5") == 0,
              "stale echo %d: %d callbacks, first %d '%s'", i, s[i].count, s[i].code, s[i].body);
    /* a long echo cancelled by destroy: warnings, then exactly one RET_ERR */
    setenv("MY_TIMER_DESTROY_GRACE_MS", "30", 1);
    setenv("MY_TIMER_STALE_WARN_MS", "5", 1);
    slot_t cs2 = {0}, longs = {0};
    void *ctx2 = create(DEMO, &cs2);
    unsetenv("MY_TIMER_DESTROY_GRACE_MS");
    unsetenv("MY_TIMER_STALE_WARN_MS");
    n = echo_payload(p, 5000);
    CHECK(SYM(echo)(ctx2, cb, &longs, p, n) == RET_OK, "rc");
    CHECK(my_timer_destroy(ctx2) == RET_OK, "destroy");
    CHECK(atomic_load(&longs.count) >= 2 && atomic_load(&longs.code) == RET_STALE_WARN,
          "cancelled echo: %d callbacks", longs.count);
    CHECK(my_timer_destroy(ctx) == RET_OK, "destroy");
    CHECK(atomic_load(&ev.count) == 32, "echo events: %d", atomic_load(&ev.count));
    CHECK(atomic_load(&overlaps) == 0 && atomic_load(&ev_overlaps) == 0, "overlaps");
}
#endif

static int count_dir(const char *path)
{
    int n = 0;
    DIR *d = opendir(path);
    if (!d)
        return -1;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

int main(int argc, char **argv)
{
    int iters = argc > 1 ? atoi(argv[1]) : 20000;
    unsetenv("MY_TIMER_SUBMIT_MODE");
    unsetenv("MY_TIMER_DESTROY_GRACE_MS");
    scenario_vectors();
    scenario_concurrent_echoes(0);
    scenario_concurrent_echoes(1);
    scenario_threads(iters / 8);
    scenario_hostile(iters);
#if MT_GENERATION == 3
    scenario_gen3();
#endif
    int threads = count_dir("/proc/self/task"), fds = count_dir("/proc/self/fd");
    scenario_lifecycle(1000);
    CHECK(count_dir("/proc/self/task") == threads, "threads left behind");
    CHECK(count_dir("/proc/self/fd") == fds, "fds left behind");
    if (failures) {
        fprintf(stderr, "stress: %d check(s) failed\n", failures);
        return 1;
    }
    printf("stress: all scenarios passed (%d hostile payloads)\n", iters);
    return 0;
}

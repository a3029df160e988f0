/*
 * Sanitizer harness for libmy_timer: drives the ABI through the same
 * scenarios as the pytest suite (vectors, concurrency and ordering, events,
 * destroy draining and grace, both submit modes, re-entrancy, hostile
 * payloads, create/destroy cycles). Built with ASan+UBSan and with TSan
 * (make -C native asan tsan); exits non-zero on any failed check, and the
 * sanitizers abort on any report (halt_on_error).
 *
 * usage: stress [hostile-iterations]
 */
#define _GNU_SOURCE
#include "../include/my_timer_cbor.h"

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

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void cb(int code, const char *msg, size_t len, void *ud)
{
    slot_t *s = ud;
    if (atomic_fetch_add(&inside, 1) != 0)
        atomic_fetch_add(&overlaps, 1);
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
    atomic_fetch_sub(&inside, 1);
}

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
    void *ctx = my_timer_create_cbor(p, n, cb, s);
    CHECK(ctx != NULL, "create failed: %s", s->body);
    wait_count(s, 1, 2000);
    CHECK(atomic_load(&s->code) == RET_OK, "create callback code");
    return ctx;
}

#define DEMO "a166636f6e666967a1646e616d656464656d6f"
#define ECHO5 "a163726571a2676d6573736167656568656c6c6f6764656c61794d7305"

typedef int (*method_fn)(void *, FFICallBack, void *, const uint8_t *, size_t);
static method_fn methods[4] = {my_timer_version_cbor, my_timer_echo_cbor,
                               my_timer_complex_cbor, my_timer_schedule_cbor};

static const struct {
    int m;
    const char *req, *ok_hex, *err;
} vec[] = {
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
};
#define NVEC (sizeof vec / sizeof vec[0])

static void scenario_vectors(void)
{
    slot_t cs = {0}, ev = {0};
    void *ctx = create(DEMO, &cs);
    uint64_t lid = my_timer_add_event_listener(ctx, "on_echo_fired", cb, &ev);
    CHECK(lid >= 1, "listener id");
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
    CHECK(atomic_load(&ev.count) == 1, "one echo event, got %d", atomic_load(&ev.count));
    CHECK(my_timer_remove_event_listener(ctx, lid) == RET_OK, "remove");
    CHECK(my_timer_destroy(ctx) == RET_OK, "destroy");
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
        CHECK(my_timer_echo_cbor(ctx, cb, &s[i], p, n) == RET_OK, "echo rc");
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
        CHECK(my_timer_version_cbor(ctx, cb, &v, (const uint8_t *)"\xa0", 1) == RET_OK, "rc");
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
            CHECK(my_timer_echo_cbor(w->ctx, cb, &w->slots[i], p, n) == RET_OK, "rc");
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
        uint64_t id = my_timer_add_event_listener(ctx, (rand() & 1) ? "" : "on_echo_fired", cb, &ev);
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
    atomic_store(&reentrant_rcs[0], my_timer_version_cbor(reentrant_ctx, cb, &dummy,
                                                          (const uint8_t *)"\xa0", 1));
    atomic_store(&reentrant_rcs[1], my_timer_destroy(reentrant_ctx));
    atomic_store(&reentrant_rcs[2], (int)my_timer_add_event_listener(reentrant_ctx, "", cb, &dummy));
    atomic_store(&reentrant_rcs[3], my_timer_remove_event_listener(reentrant_ctx, 1));
    CHECK(atomic_load(&dummy.count) == 0, "reentrant call called back");
    cb(code, msg, len, ud);
}

static void scenario_lifecycle(int cycles)
{
    uint8_t p[64];
    slot_t *slots = calloc((size_t)cycles * 3, sizeof *slots);
    for (int i = 0; i < cycles; i++) {
        void *ctx = my_timer_create_cbor((const uint8_t *)"\xa0", 1, cb, &slots[3 * i]);
        CHECK(ctx != NULL, "create");
        size_t n = echo_payload(p, 1);
        my_timer_echo_cbor(ctx, cb, &slots[3 * i + 1], p, n);
        my_timer_version_cbor(ctx, cb, &slots[3 * i + 2], (const uint8_t *)"\xa0", 1);
        CHECK(my_timer_destroy(ctx) == RET_OK, "destroy");
        for (int k = 0; k < 3; k++)
            CHECK(atomic_load(&slots[3 * i + k].count) == 1, "cycle %d/%d", i, k);
    }
    free(slots);

    /* grace: a one-hour echo is cancelled with exactly one RET_ERR */
    setenv("MY_TIMER_DESTROY_GRACE_MS", "20", 1);
    slot_t cs = {0}, longs = {0};
    void *ctx = create(DEMO, &cs);
    unsetenv("MY_TIMER_DESTROY_GRACE_MS");
    size_t n = unhex("a163726571a2676d657373616765616d6764656c61794d731a0036ee80", p);
    CHECK(my_timer_echo_cbor(ctx, cb, &longs, p, n) == RET_OK, "rc");
    CHECK(my_timer_destroy(ctx) == RET_OK, "destroy");
    CHECK(longs.count == 1 && longs.code == RET_ERR &&
              strcmp(longs.body, "echo cancelled: context destroyed") == 0,
          "cancel: %s", longs.body);

    /* re-entrancy */
    slot_t cs2 = {0}, rs = {0};
    reentrant_ctx = create(DEMO, &cs2);
    CHECK(my_timer_version_cbor(reentrant_ctx, reentrant_cb, &rs, (const uint8_t *)"\xa0", 1) == RET_OK, "rc");
    wait_count(&rs, 1, 2000);
    CHECK(reentrant_rcs[0] == RET_ERR && reentrant_rcs[1] == RET_ERR && reentrant_rcs[2] == 0 &&
              reentrant_rcs[3] == RET_ERR,
          "reentrant results");
    CHECK(my_timer_destroy(reentrant_ctx) == RET_OK, "destroy");

    /* invalid contexts */
    slot_t bad = {0};
    int local;
    CHECK(my_timer_version_cbor(NULL, cb, &bad, (const uint8_t *)"\xa0", 1) == RET_ERR, "null");
    CHECK(my_timer_echo_cbor(&local, cb, &bad, (const uint8_t *)"\xa0", 1) == RET_ERR, "bogus");
    CHECK(my_timer_echo_cbor(ctx, cb, &bad, (const uint8_t *)"\xa0", 1) == RET_ERR, "destroyed");
    CHECK(bad.count == 3 && strcmp(bad.body, "ctx is not a valid FFI context") == 0, "invalid");
    CHECK(my_timer_destroy(ctx) == RET_ERR, "double destroy");
    CHECK(my_timer_version_cbor(NULL, NULL, NULL, NULL, 0) == RET_MISSING_CALLBACK, "no cb");
    slot_t ce = {0};
    CHECK(my_timer_create_cbor(NULL, 3, cb, &ce) == NULL && ce.count == 1, "null create");
    setenv("MY_TIMER_SUBMIT_MODE", "bogus", 1);
    slot_t cm = {0};
    CHECK(my_timer_create_cbor((const uint8_t *)"\xa0", 1, cb, &cm) == NULL && cm.count == 1, "bad mode");
    unsetenv("MY_TIMER_SUBMIT_MODE");
}

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

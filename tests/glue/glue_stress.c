/*
 * glue_stress: drives glue/glue.c (the daemon's C host for libmy_timer)
 * directly, so that it can be run under AddressSanitizer+UBSan and
 * ThreadSanitizer. Built and run by tests/glue/test_glue_sanitizers.py.
 *
 * Like the daemon's event loop, ONE thread calls mt_submit / mt_drain /
 * mt_get_status / mt_shutdown; only the library's own threads (and the glue's
 * submitter thread) run concurrently with it.
 *
 * Usage:
 *   glue_stress stress   <lib.so> <direct 0|1> <calls> <loop|once>  scenario 1
 *   glue_stress drainbuf <lib.so> <direct 0|1>           scenario 2
 *   glue_stress inflight <lib.so> <direct 0|1>           scenario 3
 *   glue_stress stuck    <stuck.so> <control file>       scenario 4 (threaded)
 *   glue_stress openerr  <non-library path>              scenario 5
 *   glue_stress inline   <lib.so> <direct 0|1> <calls>  scenario 6
 *   glue_stress idle     <lib.so>                       scenario 7 (threaded)
 *
 * Exit status 0 and "PASS <scenario>" on stdout on success; any failed check
 * prints "FAIL: ..." to stderr and exits 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "my_timer_cbor.h"
#include "glue.h"
#include "check.h"

/* Ids are offset so that the full 64 bits of an id have to survive the trip. */
#define ID_BASE 0xA5A5000000000000ULL

static const uint8_t VERSION_REQ[] = {0xa0};
static const uint8_t VERSION_BODY[] = "\x70" "nim-timer v0.1.0"; /* + NUL */
#define VERSION_BODY_LEN (sizeof VERSION_BODY - 1)

static int64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void put_text(uint8_t *out, size_t *o, const char *s) {
    size_t n = strlen(s);
    if (n >= 24) {
        fprintf(stderr, "put_text: %zu bytes is too long for this helper\n", n);
        exit(2);
    }
    out[(*o)++] = (uint8_t)(0x60 | n);
    memcpy(out + *o, s, n);
    *o += n;
}

/* {"req": {"message": msg, "delayMs": delay}} with 0 <= delay < 24 */
static size_t echo_req(uint8_t *out, const char *msg, int delay) {
    size_t o = 0;
    out[o++] = 0xa1;
    put_text(out, &o, "req");
    out[o++] = 0xa2;
    put_text(out, &o, "message");
    put_text(out, &o, msg);
    put_text(out, &o, "delayMs");
    out[o++] = (uint8_t)delay;
    return o;
}

/* {"config": {"name": name}} */
static size_t create_req(uint8_t *out, const char *name) {
    size_t o = 0;
    out[o++] = 0xa1;
    put_text(out, &o, "config");
    out[o++] = 0xa1;
    put_text(out, &o, "name");
    put_text(out, &o, name);
    return o;
}

struct lib {
    mt_host *h;
    int version, echo, complex_, schedule;
};

static struct lib open_lib(const char *path, int direct) {
    char err[512] = "";
    struct lib l;
    l.h = mt_open(path, "my_timer", err, sizeof err);
    CHECK(l.h, "mt_open(%s): %s", path, err);
    l.version = mt_bind(l.h, "version");
    l.echo = mt_bind(l.h, "echo");
    l.complex_ = mt_bind(l.h, "complex");
    l.schedule = mt_bind(l.h, "schedule");
    CHECK(l.version == 0 && l.echo == 1 && l.complex_ == 2 && l.schedule == 3,
          "methods %d %d %d %d", l.version, l.echo, l.complex_, l.schedule);
    CHECK(mt_bind(l.h, "no_such_method") == -1, "binding a missing method must fail");
    uint8_t req[64];
    size_t n = create_req(req, "glue");
    CHECK(mt_create(l.h, req, n, 5000, direct, err, sizeof err) == 0, "mt_create: %s", err);
    return l;
}

/* Waits at most timeout_ms for the eventfd to become readable. */
static int wait_readable(mt_host *h, int timeout_ms) {
    struct pollfd p = {.fd = mt_fd(h), .events = POLLIN};
    int r;
    do
        r = poll(&p, 1, timeout_ms);
    while (r < 0 && errno == EINTR);
    CHECK(r >= 0, "poll: %s", strerror(errno));
    return r > 0 && (p.revents & POLLIN);
}

/* ---------------------------------------------------------------- scenario 1 */

struct tracker {
    size_t n;
    uint8_t *kind;  /* 0 version, 1 echo, 2 echo with {} */
    uint8_t *seen;  /* completions per id */
    size_t done;
    size_t records;
};

static void check_record(struct tracker *t, uint64_t id, int32_t ret, const uint8_t *body,
                         uint32_t len) {
    CHECK(id >= ID_BASE && id - ID_BASE < t->n, "unknown id %#" PRIx64, id);
    size_t i = (size_t)(id - ID_BASE);
    CHECK(t->seen[i] == 0, "id %zu completed twice", i);
    t->seen[i] = 1;
    t->done++;
    if (t->kind[i] == 2) { /* an echo without its argument echoes "" */
        static const uint8_t empty[] = "\x66" "echoed" "\x60";
        CHECK(ret == RET_OK && len > 0 && body[0] == 0xa2 &&
                  memmem(body, len, empty, sizeof empty - 1),
              "id %zu: echo {} ret %d", i, ret);
        return;
    }
    CHECK(ret == RET_OK, "id %zu (%s) ret %d: %.*s", i, t->kind[i] ? "echo" : "version", ret,
          (int)len, (const char *)body);
    if (t->kind[i] == 0) {
        CHECK(len == VERSION_BODY_LEN && memcmp(body, VERSION_BODY, len) == 0,
              "id %zu: bad version body (%u bytes)", i, len);
    } else {
        /* the reply echoes our unique message back as a CBOR text string */
        char msg[32];
        uint8_t enc[33];
        int m = snprintf(msg, sizeof msg, "m%zu", i);
        enc[0] = (uint8_t)(0x60 | m);
        memcpy(enc + 1, msg, (size_t)m);
        CHECK(len > 0 && body[0] == 0xa2 && memmem(body, len, enc, (size_t)m + 1),
              "id %zu: echo body does not carry its message", i);
    }
}

static size_t parse_records(struct tracker *t, const uint8_t *buf, size_t cap, int64_t used) {
    CHECK((size_t)used <= cap, "drain wrote %" PRId64 " > cap %zu", used, cap);
    size_t pos = 0, records = 0;
    while (pos < (size_t)used) {
        CHECK(pos + 16 <= (size_t)used, "truncated record header at %zu/%" PRId64, pos, used);
        uint64_t id;
        int32_t ret;
        uint32_t len;
        memcpy(&id, buf + pos, 8);
        memcpy(&ret, buf + pos + 8, 4);
        memcpy(&len, buf + pos + 12, 4);
        CHECK(pos + 16 + len <= (size_t)used, "record body overruns the drained bytes");
        check_record(t, id, ret, buf + pos + 16, len);
        pos += 16 + len;
        records++;
    }
    return records;
}

/* Drains until the glue reports nothing is waiting, like library.py's drain().
   Returns the number of records. The buffer is small on purpose so that one
   wake-up usually takes several partial drains. */
static size_t drain_all(mt_host *h, struct tracker *t, uint8_t **buf, size_t *cap) {
    size_t records = 0;
    for (;;) {
        int64_t used = mt_drain(h, *buf, *cap);
        if (used == 0)
            return records;
        if (used < 0) {
            CHECK((size_t)-used > *cap, "asked to grow to %" PRId64 " with cap %zu", -used, *cap);
            *cap = (size_t)-used;
            *buf = realloc(*buf, *cap);
            CHECK(*buf, "realloc");
            continue;
        }
        records += parse_records(t, *buf, *cap, used);
    }
}

/* One mt_drain into a buffer big enough for everything in flight. */
static size_t drain_once(mt_host *h, struct tracker *t, uint8_t *buf, size_t cap) {
    int64_t used = mt_drain(h, buf, cap);
    CHECK(used >= 0, "a %zu-byte buffer is too small for one record (%" PRId64 ")", cap, used);
    return parse_records(t, buf, cap, used);
}

static int scenario_stress(const char *path, int direct, size_t n, int once) {
    struct lib l = open_lib(path, direct);
    struct tracker t = {.n = n};
    t.kind = calloc(n, 1);
    t.seen = calloc(n, 1);
    CHECK(t.kind && t.seen, "calloc");
    /* "loop": small buffer, drain until 0 per wake-up, like library.py.
       "once": a buffer that holds everything in flight, ONE mt_drain per
       wake-up; that drain empties the queue, so the glue must announce the
       next result on the eventfd again (catches a notification consumed
       after the queue was taken). */
    size_t cap = once ? (size_t)1 << 20 : 256;
    uint8_t *buf = malloc(cap);
    CHECK(buf, "malloc");

    const size_t max_in_flight = 4000;
    size_t next = 0;
    int64_t deadline = mono_ms() + 90000;
    int64_t last_progress = mono_ms();
    while (t.done < n) {
        /* submit a slice, then look at the eventfd without blocking */
        for (int k = 0; k < 64 && next < n && next - t.done < max_in_flight; k++, next++) {
            uint8_t req[64];
            size_t len;
            int method;
            if (next % 3 == 0) {
                char msg[32];
                snprintf(msg, sizeof msg, "m%zu", next);
                len = echo_req(req, msg, (int)(next % 3 == 0 ? (next / 3) % 3 : 0));
                method = l.echo;
                t.kind[next] = 1;
            } else {
                memcpy(req, VERSION_REQ, sizeof VERSION_REQ);
                len = sizeof VERSION_REQ;
                method = l.version;
            }
            CHECK(mt_submit(l.h, method, ID_BASE + next, req, len) == 0, "mt_submit %zu", next);
        }
        /* Only drain when the eventfd says so: a lost wake-up stalls the loop. */
        int blocked = next == n || next - t.done >= max_in_flight;
        if (wait_readable(l.h, blocked ? 200 : 0)) {
            if ((once ? drain_once(l.h, &t, buf, cap) : drain_all(l.h, &t, &buf, &cap)))
                last_progress = mono_ms();
        } else if (blocked) {
            mt_status st;
            mt_get_status(l.h, &st);
            CHECK(mono_ms() - last_progress < 5000,
                  "no wake-up for 5 s (lost notification?): done %zu/%zu submitted %zu; glue: queued %" PRIu64
                  " submitted %" PRIu64 " completed %" PRIu64,
                  t.done, n, next, st.queued, st.submitted, st.completed);
        }
        CHECK(mono_ms() < deadline, "took too long: %zu/%zu done", t.done, n);
    }
    for (size_t i = 0; i < n; i++)
        CHECK(t.seen[i] == 1, "id %zu never completed", i);
    mt_status st;
    mt_get_status(l.h, &st);
    CHECK(st.queued == 0 && st.submitted == n && st.completed == n && st.in_call_ns == 0 &&
              st.stale_warnings == 0,
          "status: in_call %" PRId64 " queued %" PRIu64 " submitted %" PRIu64
          " completed %" PRIu64 " stale %" PRIu64,
          st.in_call_ns, st.queued, st.submitted, st.completed, st.stale_warnings);
    CHECK(mt_drain(l.h, buf, cap) == 0, "nothing may be left");
    CHECK(mt_shutdown(l.h, 5000) == 0, "mt_shutdown");
    free(buf);
    free(t.kind);
    free(t.seen);
    printf("PASS stress direct=%d calls=%zu drain=%s\n", direct, n, once ? "once" : "loop");
    return 0;
}

/* ---------------------------------------------------------------- scenario 2 */

static void wait_completed(mt_host *h, uint64_t want) {
    int64_t deadline = mono_ms() + 10000;
    mt_status st;
    for (;;) {
        mt_get_status(h, &st);
        if (st.completed >= want)
            return;
        CHECK(mono_ms() < deadline, "completed %" PRIu64 " < %" PRIu64, st.completed, want);
        sleep_ms(1);
    }
}

static void check_version_records(const uint8_t *buf, int64_t used, uint64_t first_id, int count) {
    const int64_t rec = 16 + (int64_t)VERSION_BODY_LEN;
    CHECK(used == rec * count, "used %" PRId64 " want %" PRId64, used, rec * count);
    /* each of these was submitted only after the previous one completed */
    for (int i = 0; i < count; i++) {
        const uint8_t *p = buf + i * rec;
        uint64_t id;
        int32_t ret;
        uint32_t len;
        memcpy(&id, p, 8);
        memcpy(&ret, p + 8, 4);
        memcpy(&len, p + 12, 4);
        CHECK(id == first_id + (uint64_t)i && ret == RET_OK && len == VERSION_BODY_LEN &&
                  memcmp(p + 16, VERSION_BODY, len) == 0,
              "record %d: id %#" PRIx64 " ret %d len %u", i, id, ret, len);
    }
}

static int scenario_drainbuf(const char *path, int direct) {
    struct lib l = open_lib(path, direct);
    const int64_t rec = 16 + (int64_t)VERSION_BODY_LEN;
    uint8_t *buf = malloc(4 * (size_t)rec);
    CHECK(buf, "malloc");

    CHECK(mt_drain(l.h, buf, 4 * (size_t)rec) == 0, "empty queue drains 0");
    CHECK(mt_submit(l.h, l.version, ID_BASE + 1, VERSION_REQ, sizeof VERSION_REQ) == 0, "submit");
    CHECK(wait_readable(l.h, 5000), "no wake-up for the first result");
    /* too small (even 0 and one byte short): minus the record's size, nothing lost */
    CHECK(mt_drain(l.h, buf, 0) == -rec, "cap 0");
    CHECK(mt_drain(l.h, buf, 8) == -rec, "cap 8");
    CHECK(mt_drain(l.h, buf, (size_t)rec - 1) == -rec, "cap rec-1");
    int64_t used = mt_drain(l.h, buf, (size_t)rec);
    check_version_records(buf, used, ID_BASE + 1, 1);
    CHECK(mt_drain(l.h, buf, (size_t)rec) == 0, "drained");

    /* three waiting, room for two: partial drain, then the rest */
    for (int i = 0; i < 3; i++) {
        CHECK(mt_submit(l.h, l.version, ID_BASE + 10 + (uint64_t)i, VERSION_REQ,
                        sizeof VERSION_REQ) == 0, "submit");
        wait_completed(l.h, 2 + (uint64_t)i);
    }
    CHECK(wait_readable(l.h, 5000), "no wake-up for three results");
    used = mt_drain(l.h, buf, 2 * (size_t)rec + (size_t)rec / 2);
    check_version_records(buf, used, ID_BASE + 10, 2);
    used = mt_drain(l.h, buf, 4 * (size_t)rec);
    check_version_records(buf, used, ID_BASE + 12, 1);
    CHECK(mt_drain(l.h, buf, 4 * (size_t)rec) == 0, "drained");

    /* the notification is re-armed once the queue has been emptied */
    CHECK(mt_submit(l.h, l.version, ID_BASE + 20, VERSION_REQ, sizeof VERSION_REQ) == 0, "submit");
    CHECK(wait_readable(l.h, 5000), "no wake-up after the queue was emptied");
    used = mt_drain(l.h, buf, 4 * (size_t)rec);
    check_version_records(buf, used, ID_BASE + 20, 1);

    /* mt_drain_more says when the queue is left empty: no last call for 0 */
    int more = -1;
    CHECK(mt_drain_more(l.h, buf, 4 * (size_t)rec, &more) == 0 && more == 0, "empty: more 0");
    for (int i = 0; i < 3; i++) {
        CHECK(mt_submit(l.h, l.version, ID_BASE + 30 + (uint64_t)i, VERSION_REQ,
                        sizeof VERSION_REQ) == 0, "submit");
        wait_completed(l.h, 6 + (uint64_t)i);
    }
    CHECK(wait_readable(l.h, 5000), "no wake-up for three results");
    more = -1;
    CHECK(mt_drain_more(l.h, buf, 8, &more) == -rec && more == 1, "too small: more 1");
    more = -1;
    used = mt_drain_more(l.h, buf, 2 * (size_t)rec, &more);
    check_version_records(buf, used, ID_BASE + 30, 2);
    CHECK(more == 1, "one left: more 1");
    more = -1;
    used = mt_drain_more(l.h, buf, 4 * (size_t)rec, &more);
    check_version_records(buf, used, ID_BASE + 32, 1);
    CHECK(more == 0, "took the last: more 0");
    /* emptied by a call that returned records: re-armed all the same */
    CHECK(mt_submit(l.h, l.version, ID_BASE + 40, VERSION_REQ, sizeof VERSION_REQ) == 0, "submit");
    CHECK(wait_readable(l.h, 5000), "no wake-up after mt_drain_more emptied the queue");
    more = -1;
    used = mt_drain_more(l.h, buf, 4 * (size_t)rec, &more);
    check_version_records(buf, used, ID_BASE + 40, 1);
    CHECK(more == 0, "more 0");

    CHECK(mt_shutdown(l.h, 5000) == 0, "mt_shutdown");
    free(buf);
    printf("PASS drainbuf direct=%d\n", direct);
    return 0;
}

/* ---------------------------------------------------------------- scenario 3 */

static int scenario_inflight(const char *path, int direct) {
    struct lib l = open_lib(path, direct);
    /* some results completed but never drained ... */
    for (int i = 0; i < 5; i++)
        CHECK(mt_submit(l.h, l.version, ID_BASE + (uint64_t)i, VERSION_REQ, sizeof VERSION_REQ) == 0,
              "submit version");
    wait_completed(l.h, 5);
    /* ... and echoes still sleeping when shutdown starts */
    for (int i = 0; i < 20; i++) {
        uint8_t req[64];
        size_t n = echo_req(req, "late", 0);
        req[n - 1] = 0x18; /* delayMs: one-byte uint follows */
        req[n++] = 200;
        CHECK(mt_submit(l.h, l.echo, ID_BASE + 100 + (uint64_t)i, req, n) == 0, "submit echo");
    }
    int64_t t0 = mono_ms();
    int rc = mt_shutdown(l.h, 5000);
    int64_t took = mono_ms() - t0;
    CHECK(rc == 0, "mt_shutdown with echoes in flight returned %d after %" PRId64 " ms", rc, took);
    /* it must have waited for the 200 ms echoes (they are not cancelled) */
    CHECK(took >= 150 && took < 4000, "mt_shutdown took %" PRId64 " ms", took);
    /* LeakSanitizer at exit proves the 25 undrained results were freed */
    printf("PASS inflight direct=%d shutdown_ms=%" PRId64 "\n", direct, took);
    return 0;
}

static size_t put_request(uint8_t *out, const char *name, const uint8_t *payload, size_t n);

/* ---------------------------------------------------------------- scenario 4 */

static void write_control(const char *file, const char *mode) {
    FILE *f = fopen(file, "w");
    CHECK(f, "open %s: %s", file, strerror(errno));
    fputs(mode, f);
    CHECK(fclose(f) == 0, "close %s", file);
}

static int scenario_stuck(const char *path, const char *control) {
    /* the double reads its mode from the file named here, on every call */
    CHECK(setenv("STUCK_TIMER_CONTROL", control, 1) == 0, "setenv");
    /* a glue that lets the stuck call block this thread would hang forever:
       SIGALRM ends the process (non-zero status) well before pytest's limit */
    alarm(20);
    write_control(control, "ok");
    struct lib l = open_lib(path, 0);
    uint8_t buf[256];

    /* sanity: it works while the double behaves */
    CHECK(mt_submit(l.h, l.version, ID_BASE, VERSION_REQ, sizeof VERSION_REQ) == 0, "submit");
    CHECK(wait_readable(l.h, 5000), "no result from the double in ok mode");
    check_version_records(buf, mt_drain(l.h, buf, sizeof buf), ID_BASE, 1);

    write_control(control, "block");
    int64_t t0 = mono_ms();
    for (int i = 1; i <= 5; i++)
        CHECK(mt_submit(l.h, l.version, ID_BASE + (uint64_t)i, VERSION_REQ, sizeof VERSION_REQ) == 0,
              "submit %d", i);
    int64_t took = mono_ms() - t0;
    CHECK(took < 100, "mt_submit blocked the caller for %" PRId64 " ms", took);
    /* waiting for an answer is bounded too: 2 ms at most, then it is queued */
    t0 = mono_ms();
    CHECK(mt_call(l.h, l.version, ID_BASE + 6, VERSION_REQ, sizeof VERSION_REQ, 2000000, buf,
                  sizeof buf) == 0,
          "mt_call answered by a stuck library");
    CHECK(mt_quick_add(l.h, "version", l.version) == 0, "mt_quick_add");
    uint8_t frame[16];
    size_t flen = put_request(frame, "version", VERSION_REQ, sizeof VERSION_REQ);
    mt_quick_call made[2];
    int64_t out_len;
    int nmade;
    CHECK(mt_quick(l.h, frame, flen, ID_BASE + 7, 2000000, buf, sizeof buf, &out_len, made, 2,
                   &nmade) == (int64_t)flen && nmade == 1 && made[0].ret == -1 && out_len == 0,
          "mt_quick answered by a stuck library");
    took = mono_ms() - t0;
    CHECK(took < 100, "waiting for a stuck library took %" PRId64 " ms", took);

    sleep_ms(100);
    mt_status a, b;
    mt_get_status(l.h, &a);
    sleep_ms(200);
    mt_get_status(l.h, &b);
    CHECK(a.in_call_ns > 50 * 1000000LL, "in_call_ns %" PRId64 " after 100 ms; queued %" PRIu64 " submitted %" PRIu64 " completed %" PRIu64, a.in_call_ns, a.queued, a.submitted, a.completed);
    CHECK(b.in_call_ns >= a.in_call_ns + 150 * 1000000LL, "in_call_ns %" PRId64 " -> %" PRId64,
          a.in_call_ns, b.in_call_ns);
    CHECK(b.queued == 6 && b.submitted == 1 && b.completed == 1,
          "stuck status: queued %" PRIu64 " submitted %" PRIu64 " completed %" PRIu64, b.queued,
          b.submitted, b.completed);
    CHECK(!wait_readable(l.h, 0), "nothing can have completed");

    t0 = mono_ms();
    int rc = mt_shutdown(l.h, 300);
    took = mono_ms() - t0;
    CHECK(rc == -1, "mt_shutdown on a stuck library returned %d", rc);
    CHECK(took >= 250 && took < 2000, "mt_shutdown(300) took %" PRId64 " ms", took);
    /* The host and the submitter thread (still blocked in the double) are
       abandoned by design; the process exits with them. */
    printf("PASS stuck shutdown_ms=%" PRId64 "\n", took);
    return 0;
}

/* ---------------------------------------------------------------- scenario 6 */

/* A response frame of mt_call/mt_quick: [i32 ret][u32 len][body], big-endian. */
static void check_frame(struct tracker *t, uint64_t id, const uint8_t *p, int64_t size) {
    CHECK(size >= 8, "frame of %" PRId64 " bytes", size);
    uint32_t ret = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
    uint32_t len = (uint32_t)p[4] << 24 | (uint32_t)p[5] << 16 | (uint32_t)p[6] << 8 | p[7];
    CHECK((int64_t)len + 8 == size, "frame length %u in %" PRId64 " bytes", len, size);
    check_record(t, id, (int32_t)ret, p + 8, len);
}

/* [u32 len][name][u32 len][payload] */
static size_t put_request(uint8_t *out, const char *name, const uint8_t *payload, size_t n) {
    size_t m = strlen(name), o = 0;
    uint8_t head[4] = {(uint8_t)(m >> 24), (uint8_t)(m >> 16), (uint8_t)(m >> 8), (uint8_t)m};
    memcpy(out + o, head, 4);
    o += 4;
    memcpy(out + o, name, m);
    o += m;
    uint8_t plen[4] = {(uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n};
    memcpy(out + o, plen, 4);
    o += 4;
    memcpy(out + o, payload, n);
    return o + n;
}

/* Drain whatever is waiting, without waiting for the eventfd. */
static void drain_now(mt_host *h, struct tracker *t, uint8_t **buf, size_t *cap) {
    if (wait_readable(h, 0))
        drain_all(h, t, buf, cap);
}

static int scenario_inline(const char *path, int direct, size_t n) {
    struct lib l = open_lib(path, direct);
    struct tracker t = {.n = n};
    t.kind = calloc(n, 1);
    t.seen = calloc(n, 1);
    CHECK(t.kind && t.seen, "calloc");
    size_t cap = 256;
    uint8_t *buf = malloc(cap);
    uint8_t frame[512];
    CHECK(buf, "malloc");
    size_t inline_answers = 0, next = 0;
    /* mt_call: versions and short echoes, with waits from 0 to 2 ms, so that
       a waiter often gives up just as the answer comes (the race between
       the give-up and the callback), and a cap too small now and then (the
       answer is queued instead); each id answered once, either way. */
    for (; next < n / 2; next++) {
        uint8_t req[64];
        size_t len = sizeof VERSION_REQ;
        int method = l.version;
        memcpy(req, VERSION_REQ, len);
        if (next % 4 == 0) {
            char msg[32];
            snprintf(msg, sizeof msg, "m%zu", next);
            len = echo_req(req, msg, (int)((next / 4) % 2));
            method = l.echo;
            t.kind[next] = 1;
        }
        int64_t wait = (int64_t)(next % 9) * 250000;
        size_t fcap = next % 13 == 0 ? 8 : sizeof frame;
        int64_t size = mt_call(l.h, method, ID_BASE + next, req, len, wait, frame, fcap);
        CHECK(size >= 0, "mt_call %zu: %" PRId64, next, size);
        if (size > 0) {
            check_frame(&t, ID_BASE + next, frame, size);
            inline_answers++;
        }
        drain_now(l.h, &t, &buf, &cap);
    }
    CHECK(mt_call(l.h, l.schedule + 1, ID_BASE, VERSION_REQ, 1, 1000, frame, sizeof frame) == -1,
          "mt_call of a method that is not bound");
    /* mt_quick: the version and echo calls served, {} only */
    CHECK(mt_quick_add(l.h, "version", l.version) == 0, "mt_quick_add version");
    CHECK(mt_quick_add(l.h, "echo", l.echo) == 0, "mt_quick_add echo");
    char long_name[MT_QUICK_NAME + 2];
    memset(long_name, 'x', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    CHECK(mt_quick_add(l.h, long_name, l.version) == -1, "a name longer than MT_QUICK_NAME");
    CHECK(mt_quick_add(l.h, "version", l.schedule + 1) == -1, "a method that is not bound");
    uint8_t data[4096];
    mt_quick_call calls[8];
    int ncalls;
    int64_t out_len;
    uint8_t out[4096];
    while (next < n) {
        /* 1-5 quick frames (at ends[]), then one that is not quick (a
           payload other than a0), then a quick one that must not be touched */
        size_t k = 1 + next % 5, o = 0, ends[5];
        if (k > n - next)
            k = n - next;
        for (size_t i = 0; i < k; i++) {
            o += put_request(data + o, i % 3 == 2 ? "echo" : "version", VERSION_REQ, 1);
            ends[i] = o;
        }
        static const uint8_t other[] = {0xbf, 0xff}; /* {} of indefinite length */
        o += put_request(data + o, "version", other, sizeof other);
        o += put_request(data + o, "version", VERSION_REQ, 1);
        int64_t wait = (int64_t)(next % 7) * 300000;
        int max_calls = next % 11 == 0 ? 2 : 8;
        size_t ocap = next % 17 == 0 ? 16 : sizeof out; /* 16: no answer fits */
        int64_t used = mt_quick(l.h, data, o, ID_BASE + next, wait, out, ocap, &out_len, calls,
                                max_calls, &ncalls);
        CHECK(ncalls >= 1 && ncalls <= max_calls && (size_t)ncalls <= k, "ncalls %d", ncalls);
        CHECK(used == (int64_t)ends[ncalls - 1], "used %" PRId64 " for %d calls", used, ncalls);
        int64_t pos = 0;
        for (int i = 0; i < ncalls; i++) {
            size_t id = next + (size_t)i;
            CHECK(id < n, "id");
            t.kind[id] = (i % 3 == 2) ? 2 : 0;
            CHECK(calls[i].method == (i % 3 == 2 ? l.echo : l.version) && calls[i].ns >= 0,
                  "call %d: method %d", i, calls[i].method);
            if (calls[i].ret == -1) {
                CHECK(i == ncalls - 1, "a call answered later is the last one made");
                continue;
            }
            CHECK(pos + 8 <= out_len, "frames end early");
            uint32_t len = (uint32_t)out[pos + 4] << 24 | (uint32_t)out[pos + 5] << 16 |
                           (uint32_t)out[pos + 6] << 8 | out[pos + 7];
            check_frame(&t, ID_BASE + id, out + pos, 8 + (int64_t)len);
            CHECK(calls[i].ret == RET_OK, "ret %d", calls[i].ret);
            pos += 8 + len;
            inline_answers++;
        }
        CHECK(pos == out_len, "out_len %" PRId64 " for frames of %" PRId64, out_len, pos);
        /* it stops only after a call answered later, at max_calls, or at the
           frame that is not quick */
        if (calls[ncalls - 1].ret != -1 && ncalls < max_calls)
            CHECK((size_t)ncalls == k, "stopped after %d of %zu quick frames", ncalls, k);
        next += (size_t)ncalls;
        drain_now(l.h, &t, &buf, &cap);
    }
    /* nothing quick at the start: nothing made */
    static const uint8_t two[] = {0xa0, 0xa0};
    size_t o = put_request(data, "complex", VERSION_REQ, 1); /* a method not added */
    CHECK(mt_quick(l.h, data, o, ID_BASE, 1000, out, sizeof out, &out_len, calls, 8, &ncalls) ==
                  0 && ncalls == 0 && out_len == 0,
          "a method not added");
    o = put_request(data, "version", two, sizeof two);
    CHECK(mt_quick(l.h, data, o, ID_BASE, 1000, out, sizeof out, &out_len, calls, 8, &ncalls) ==
                  0 && ncalls == 0,
          "a payload of two bytes");
    o = put_request(data, "version", VERSION_REQ, 1);
    for (size_t cut = 0; cut < o; cut++)
        CHECK(mt_quick(l.h, data, cut, ID_BASE, 1000, out, sizeof out, &out_len, calls, 8,
                       &ncalls) == 0 && ncalls == 0,
              "a frame cut at %zu of %zu bytes", cut, o);
    int64_t deadline = mono_ms() + 10000;
    while (t.done < n) {
        CHECK(mono_ms() < deadline, "%zu of %zu answered", t.done, n);
        if (wait_readable(l.h, 100))
            drain_all(l.h, &t, &buf, &cap);
    }
    for (size_t i = 0; i < n; i++)
        CHECK(t.seen[i] == 1, "id %zu never answered", i);
    mt_status st;
    mt_get_status(l.h, &st);
    CHECK(st.queued == 0 && st.submitted == n && st.completed == n,
          "status: queued %" PRIu64 " submitted %" PRIu64 " completed %" PRIu64, st.queued,
          st.submitted, st.completed);
    CHECK(mt_shutdown(l.h, 5000) == 0, "mt_shutdown");
    free(buf);
    free(t.kind);
    free(t.seen);
    printf("PASS inline direct=%d calls=%zu answered_inline=%zu\n", direct, n, inline_answers);
    return 0;
}

/* ---------------------------------------------------------------- scenario 7 */

static int64_t cpu_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* One call, waited for through the eventfd. */
static void one_call(struct lib *l, uint64_t id, uint8_t *buf, size_t cap) {
    CHECK(mt_submit(l->h, l->version, id, VERSION_REQ, sizeof VERSION_REQ) == 0, "submit");
    CHECK(wait_readable(l->h, 5000), "no answer");
    check_version_records(buf, mt_drain(l->h, buf, cap), id, 1);
}

static int scenario_idle(const char *path) {
    struct lib l = open_lib(path, 0);
    uint8_t buf[256];
    /* calls back to back: the submitter spins between them; once they stop,
       it sleeps: a quiet 200 ms costs (almost) no CPU */
    for (uint64_t i = 0; i < 2000; i++)
        one_call(&l, ID_BASE + i, buf, sizeof buf);
    int64_t c0 = cpu_us();
    sleep_ms(200);
    int64_t quiet = cpu_us() - c0;
    CHECK(quiet < 20000, "%" PRId64 " us of CPU in 200 ms without calls", quiet);
    /* calls 5 ms apart, further apart than any spin: it does not spin */
    c0 = cpu_us();
    int64_t t0 = mono_ms();
    for (uint64_t i = 0; i < 40; i++) {
        one_call(&l, ID_BASE + 2000 + i, buf, sizeof buf);
        sleep_ms(5);
    }
    int64_t used = cpu_us() - c0, wall = (mono_ms() - t0) * 1000;
    CHECK(used * 4 < wall, "%" PRId64 " us of CPU in %" PRId64 " us of calls 5 ms apart", used,
          wall);
    CHECK(mt_shutdown(l.h, 5000) == 0, "mt_shutdown");
    printf("PASS idle quiet_cpu_us=%" PRId64 " spaced_cpu_us=%" PRId64 "\n", quiet, used);
    return 0;
}

/* ---------------------------------------------------------------- scenario 5 */

static int scenario_openerr(const char *not_a_library) {
    char err[512];
    struct {
        const char *path;
        const char *expect;
    } cases[] = {
        {not_a_library, "cannot load"},
        {"/nonexistent/libmy_timer.so", "cannot load"},
        {"libc.so.6", "is not a nim-ffi CBOR-ABI library named my_timer"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        memset(err, 0, sizeof err);
        mt_host *h = mt_open(cases[i].path, "my_timer", err, sizeof err);
        CHECK(h == NULL, "mt_open(%s) succeeded", cases[i].path);
        CHECK(strstr(err, cases[i].expect) && strstr(err, cases[i].path),
              "mt_open(%s): unexpected message \"%s\"", cases[i].path, err);
        printf("mt_open(%s): %s\n", cases[i].path, err);
    }
    /* a tiny buffer is truncated, never overrun (ASan watches) */
    char small[8];
    CHECK(mt_open("libc.so.6", "my_timer", small, sizeof small) == NULL &&
              strlen(small) == sizeof small - 1,
          "truncated message");
    printf("PASS openerr\n");
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 6 && strcmp(argv[1], "stress") == 0 &&
        (strcmp(argv[5], "loop") == 0 || strcmp(argv[5], "once") == 0))
        return scenario_stress(argv[2], atoi(argv[3]), (size_t)strtoull(argv[4], NULL, 10),
                               strcmp(argv[5], "once") == 0);
    if (argc == 4 && strcmp(argv[1], "drainbuf") == 0)
        return scenario_drainbuf(argv[2], atoi(argv[3]));
    if (argc == 4 && strcmp(argv[1], "inflight") == 0)
        return scenario_inflight(argv[2], atoi(argv[3]));
    if (argc == 4 && strcmp(argv[1], "stuck") == 0)
        return scenario_stuck(argv[2], argv[3]);
    if (argc == 5 && strcmp(argv[1], "inline") == 0)
        return scenario_inline(argv[2], atoi(argv[3]), (size_t)strtoull(argv[4], NULL, 10));
    if (argc == 3 && strcmp(argv[1], "idle") == 0)
        return scenario_idle(argv[2]);
    if (argc == 3 && strcmp(argv[1], "openerr") == 0)
        return scenario_openerr(argv[2]);
    fprintf(stderr, "usage: see the comment at the top of %s\n", __FILE__);
    return 2;
}

/*
 * lane_stress: drives glue/lane.c (the lane: quick calls served in C on the
 * event loop's thread) together with glue/glue.c, so that both can be run
 * under AddressSanitizer+UBSan and ThreadSanitizer. Built and run by
 * tests/glue/test_lane_sanitizers.py.
 *
 * Like the daemon's event loop, ONE thread (main) calls every mt_lane_* and
 * mt_* function; client threads only use their own end of a socketpair,
 * and the library's threads (and the glue's submitter thread) deliver the
 * answers through lane_answer.
 *
 * Usage:
 *   lane_stress stress   <lib.so> <direct 0|1> <calls>           scenario 1
 *   lane_stress shutdown <lib.so> <direct 0|1> <wait 0|1>        scenario 2
 *   lane_stress eof      <lib.so> <direct 0|1>                   scenario 3
 *   lane_stress full     <lib.so> <direct 0|1>                   scenario 4
 *
 * Exit status 0 and "PASS <scenario>" on stdout on success; any failed check
 * prints "FAIL ..." to stderr and exits 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "my_timer_cbor.h"
#include "glue.h"
#include "lane.h"
#include "check.h"
#include "lane_common.h"

/* The lane's call ids: base + seq * 1024 + slot; the high bit has to survive. */
#define ID_BASE (1ULL << 62)

/* {"config": {"name": "x"}} */
static size_t create_req(uint8_t *out) {
    static const uint8_t req[] = {0xa1, 0x66, 'c', 'o', 'n', 'f', 'i', 'g', 0xa1,
                                  0x64, 'n',  'a', 'm', 'e', 0x61, 'x'};
    memcpy(out, req, sizeof req);
    return sizeof req;
}

struct lib {
    mt_host *h;
    int version;
    mt_lane *lane;
};

static struct lib open_lane(const char *path, int direct, int slots) {
    char err[512] = "";
    struct lib l;
    l.h = mt_open(path, "my_timer", err, sizeof err);
    CHECK(l.h, "mt_open(%s): %s", path, err);
    l.version = mt_bind(l.h, "version");
    CHECK(l.version >= 0, "mt_bind(version) = %d", l.version);
    uint8_t req[64];
    size_t n = create_req(req);
    CHECK(mt_create(l.h, req, n, 5000, direct, err, sizeof err) == 0, "mt_create: %s", err);
    CHECK(mt_quick_add(l.h, "version", l.version) == 0, "mt_quick_add");
    /* refused sizes create nothing (and do not become the host's lane) */
    CHECK(mt_lane_new(l.h, 0, ID_BASE) == NULL, "a lane of 0 slots");
    CHECK(mt_lane_new(l.h, 1025, ID_BASE) == NULL, "a lane of 1025 slots");
    l.lane = mt_lane_new(l.h, slots, ID_BASE);
    CHECK(l.lane, "mt_lane_new");
    CHECK(mt_lane_fd(l.lane) >= 0, "mt_lane_fd");
    CHECK(mt_lane_count(l.lane) == 0, "a new lane is empty");
    return l;
}

/* A socketpair: sv[0] the daemon's end (non-blocking), sv[1] the client's. */
static void pair(int sv[2]) {
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0, "socketpair: %s",
          strerror(errno));
    int fl = fcntl(sv[0], F_GETFL);
    CHECK(fl >= 0 && fcntl(sv[0], F_SETFL, fl | O_NONBLOCK) == 0, "O_NONBLOCK");
}

/* Exactly n bytes from fd, blocking or not; fails on an end or an error. */
static void read_exact(int fd, uint8_t *p, size_t n) {
    while (n) {
        ssize_t r = recv(fd, p, n, 0);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            wait_fd(fd, POLLIN, 10000);
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        CHECK(r > 0, "recv on %d: %s", fd, r == 0 ? "end of stream" : strerror(errno));
        p += r;
        n -= (size_t)r;
    }
}

/* Nothing more to read on fd right now. */
static void check_nothing_left(int fd, const char *who) {
    uint8_t b;
    ssize_t r = recv(fd, &b, 1, MSG_DONTWAIT);
    CHECK(r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK),
          "%s: unexpected bytes or end after the last answer (recv %zd)", who, r);
}

/* ---------------------------------------------------------------- scenario 1 */

#define NCLIENTS 8
/* calls client 0 makes past the others', alone in the lane */
#define ALONE_EXTRA 1280
/* the lone wait every turn is given (the lane's only connection is served
   on the spot); long, for the sanitizers' slow clients */
#define LONE_NS 2000000

struct client {
    int idx;
    int sv[2];
    size_t calls;     /* to make */
    size_t alone;     /* the last of them once all other clients are done */
    size_t answered;  /* answers read (the client thread's; read after join) */
    unsigned seed;
    atomic_int done;  /* the client thread read its last answer */
    pthread_t thread;
    /* main thread only */
    int slot;         /* in the lane, or -1 */
    int parked;       /* taken with a call in flight: out of the lane until its orphan */
    int retired;      /* done, and out of the lane for good */
    uint64_t pending; /* that call's id */
    uint8_t saved[MT_LANE_IN]; /* what it sent past that call, served after its answer */
    int saved_len;
};

static atomic_int clients_done;

/* One request at a time, now and then two at once (a pipeline: the lane
   hands the connection back, MT_LANE_AHEAD) or one in two parts. */
static void *client_main(void *arg) {
    struct client *c = arg;
    char who[32];
    snprintf(who, sizeof who, "client %d", c->idx);
    uint8_t got[FRAME_LEN];
    for (size_t k = 0; k < c->calls;) {
        unsigned r = (unsigned)rand_r(&c->seed);
        size_t n = 1;
        if (k >= c->calls - c->alone) {
            /* client 0's last calls: plain ones, once all the others are done */
            if (k == c->calls - c->alone)
                while (atomic_load(&clients_done) < NCLIENTS - 1)
                    sleep_us(1000);
            write_all(c->sv[1], VERSION_REQ, REQ_LEN);
        } else if (r % 16 == 0) {
            /* a request in two parts: the lane holds the first until the rest comes */
            size_t cut = 1 + (r >> 4) % (REQ_LEN - 1);
            write_all(c->sv[1], VERSION_REQ, cut);
            if ((r >> 12) & 1)
                sched_yield();
            else
                sleep_us(20 + (r >> 13) % 100);
            write_all(c->sv[1], VERSION_REQ + cut, REQ_LEN - cut);
        } else if (r % 32 == 1 && c->calls - k >= 2) {
            uint8_t two[2 * REQ_LEN];
            memcpy(two, VERSION_REQ, REQ_LEN);
            memcpy(two + REQ_LEN, VERSION_REQ, REQ_LEN);
            write_all(c->sv[1], two, sizeof two);
            n = 2;
        } else {
            write_all(c->sv[1], VERSION_REQ, REQ_LEN);
        }
        for (size_t j = 0; j < n; j++, k++) {
            read_exact(c->sv[1], got, FRAME_LEN);
            check_frame(got, who, k);
            c->answered++;
        }
    }
    atomic_store(&c->done, 1);
    atomic_fetch_add(&clients_done, 1);
    return NULL;
}

struct stress {
    struct lib lb;
    struct client cl[NCLIENTS];
    int owner[NCLIENTS];     /* slot -> client */
    size_t by_lane, by_orphan, by_us;
    size_t why_count[8];
    size_t taken_in_flight, taken_with_bytes, random_takes, sweeps_quiet;
    size_t lone_turns; /* turns that answered 2 calls or more of the lane's only connection */
    size_t round_turns; /* turns that answered more calls than there were connections */
    uint8_t buf[4096];
};

static size_t answered(const struct stress *s) { return s->by_lane + s->by_orphan + s->by_us; }

static void readd(struct stress *s, struct client *c) {
    CHECK(c->slot < 0 && !c->parked, "client %d re-added twice", c->idx);
    int slot = mt_lane_add(s->lb.lane, c->sv[0], NULL);
    CHECK(slot >= 0 && slot < NCLIENTS, "mt_lane_add(client %d) = %d", c->idx, slot);
    CHECK(s->owner[slot] < 0, "slot %d given twice", slot);
    s->owner[slot] = c->idx;
    c->slot = slot;
}

/* Serve the n bytes client c sent and the lane did not (whole version
   requests, then maybe the start of one whose rest is on its way), as the
   loop does, then put c back in the lane. */
static void serve_rest(struct stress *s, struct client *c, const uint8_t *in, int n) {
    CHECK(n >= 0 && n <= MT_LANE_IN, "client %d: %d bytes", c->idx, n);
    if (n)
        s->taken_with_bytes++;
    for (int pos = 0; pos < n; pos += REQ_LEN) {
        int part = n - pos < REQ_LEN ? n - pos : REQ_LEN;
        CHECK(memcmp(in + pos, VERSION_REQ, (size_t)part) == 0,
              "client %d: unserved bytes %d..%d are not a version request", c->idx, pos,
              pos + part);
        if (part < REQ_LEN) {
            uint8_t rest[REQ_LEN];
            read_exact(c->sv[0], rest, (size_t)(REQ_LEN - part));
            CHECK(memcmp(rest, VERSION_REQ + part, (size_t)(REQ_LEN - part)) == 0,
                  "client %d: the rest of its request", c->idx);
        }
        write_all(c->sv[0], FRAME, FRAME_LEN);
        s->by_us++;
    }
    readd(s, c);
}

/* Take client c out of the lane and deal with what it owes, as the loop does:
   write the rest of an answer, serve the bytes it sent, or wait for the
   answer of its call in flight (an orphan) before it goes back in. */
static void take(struct stress *s, struct client *c) {
    int slot = c->slot;
    CHECK(slot >= 0 && s->owner[slot] == c->idx, "take of client %d at slot %d", c->idx, slot);
    mt_lane_state st;
    memset(&st, 0xee, sizeof st);
    int before = mt_lane_count(s->lb.lane);
    int64_t need = mt_lane_take(s->lb.lane, slot, s->buf, 0, &st);
    if (need < 0) { /* does not fit in 0 bytes: nothing changed */
        CHECK(mt_lane_count(s->lb.lane) == before, "a take that did not fit changed the count");
        need = mt_lane_take(s->lb.lane, slot, s->buf, sizeof s->buf, &st);
    }
    CHECK(need >= 0 && (size_t)need <= sizeof s->buf, "mt_lane_take = %" PRId64, need);
    s->owner[slot] = -1;
    c->slot = -1;
    CHECK(st.in_len >= 0 && st.in_len <= need && st.in_len <= MT_LANE_IN,
          "in_len %d of %" PRId64, st.in_len, need);
    /* the unwritten rest of an answer (none here: MT_LANE_FULL is a failure) */
    if (need > st.in_len) {
        size_t out = (size_t)(need - st.in_len);
        CHECK(out <= (size_t)FRAME_LEN &&
                  memcmp(s->buf + st.in_len, FRAME + FRAME_LEN - out, out) == 0,
              "client %d: %zu unwritten bytes are not the rest of an answer", c->idx, out);
        write_all(c->sv[0], s->buf + st.in_len, out);
    }
    if (st.call_id) {
        CHECK(st.method == s->lb.version, "in-flight method %d", st.method);
        CHECK((st.call_id & 1023) == (uint64_t)slot && st.call_id >= ID_BASE + 1024,
              "call id %#" PRIx64 " at slot %d", st.call_id, slot);
        CHECK(st.started_ns > 0 && st.last_ns >= st.started_ns, "times of the call in flight");
        c->parked = 1;
        c->pending = st.call_id;
        memcpy(c->saved, s->buf, (size_t)st.in_len);
        c->saved_len = st.in_len;
        s->taken_in_flight++;
        return;
    }
    serve_rest(s, c, s->buf, st.in_len);
}

/* Take the clients that are done (all but client 0) out of the lane for
   good, as the loop does with connections that end: client 0 is left
   alone there. */
static void retire_done(struct stress *s) {
    for (int i = 1; i < NCLIENTS; i++) {
        struct client *c = &s->cl[i];
        if (c->retired || c->parked || c->slot < 0 || !atomic_load(&c->done))
            continue;
        mt_lane_state st;
        int64_t need = mt_lane_take(s->lb.lane, c->slot, s->buf, sizeof s->buf, &st);
        CHECK(need == 0 && st.call_id == 0, "client %d, done: %" PRId64 " bytes, call %#" PRIx64,
              i, need, st.call_id);
        s->owner[c->slot] = -1;
        c->slot = -1;
        c->retired = 1;
    }
}

static void orphans(struct stress *s, const struct turn *t) {
    size_t pos = 0, used = (size_t)t->orphans_len;
    while (pos < used) {
        CHECK(pos + 16 <= used, "truncated orphan record at %zu/%zu", pos, used);
        uint64_t id;
        int32_t ret;
        uint32_t len;
        memcpy(&id, t->orphans + pos, 8);
        memcpy(&ret, t->orphans + pos + 8, 4);
        memcpy(&len, t->orphans + pos + 12, 4);
        CHECK(pos + 16 + len <= used, "orphan record overruns the buffer");
        CHECK(ret == RET_OK && len == BODY_LEN && memcmp(t->orphans + pos + 16, VERSION_BODY,
                                                         BODY_LEN) == 0,
              "orphan %#" PRIx64 ": ret %d len %u", id, ret, len);
        struct client *c = NULL;
        for (int i = 0; i < NCLIENTS; i++)
            if (s->cl[i].parked && s->cl[i].pending == id)
                c = &s->cl[i];
        CHECK(c, "orphan %#" PRIx64 " of no call taken back (twice, or unknown)", id);
        write_all(c->sv[0], FRAME, FRAME_LEN);
        s->by_orphan++;
        c->parked = 0;
        c->pending = 0;
        serve_rest(s, c, c->saved, c->saved_len);
        pos += 16 + len;
    }
}

/* Take back the connections of back records; `allowed` says which reasons may come. */
static void backs(struct stress *s, const mt_lane_back *back, int n, unsigned allowed) {
    for (int k = 0; k < n; k++) {
        int slot = back[k].slot, why = back[k].why;
        CHECK(slot >= 0 && slot < NCLIENTS && s->owner[slot] >= 0,
              "back record of slot %d, not in the lane", slot);
        CHECK(why >= 1 && why <= 7 && (allowed >> why & 1), "slot %d (client %d) handed back: %s (%d)",
              slot, s->owner[slot], why_name(why), why);
        s->why_count[why]++;
        take(s, &s->cl[s->owner[slot]]);
    }
}

static int scenario_stress(const char *path, int direct, size_t calls) {
    init_frame();
    static struct stress s; /* zeroed */
    s.lb = open_lane(path, direct, NCLIENTS);
    /* client 0 goes on alone at the end, the others taken out as they are
       done: the lane serves it on the spot */
    size_t per = calls / NCLIENTS, total = per * NCLIENTS + ALONE_EXTRA;
    CHECK(per > 0, "calls %zu < %d", calls, NCLIENTS);
    for (int i = 0; i < NCLIENTS; i++)
        s.owner[i] = -1;
    for (int i = 0; i < NCLIENTS; i++) {
        struct client *c = &s.cl[i];
        c->idx = i;
        c->alone = i == 0 ? ALONE_EXTRA : 0;
        c->calls = per + c->alone;
        c->seed = 0x9e3779b9u * (unsigned)(i + 1);
        c->slot = -1;
        pair(c->sv);
        readd(&s, c);
    }
    CHECK(mt_lane_count(s.lb.lane) == NCLIENTS, "count %d", mt_lane_count(s.lb.lane));
    int extra[2];
    pair(extra);
    CHECK(mt_lane_add(s.lb.lane, extra[0], NULL) == -1, "a full lane takes one more");
    close(extra[0]);
    close(extra[1]);
    for (int i = 0; i < NCLIENTS; i++)
        CHECK(pthread_create(&s.cl[i].thread, NULL, client_main, &s.cl[i]) == 0,
              "pthread_create");

    unsigned seed = 12345u + (unsigned)direct;
    struct turn *t = calloc(1, sizeof *t);
    CHECK(t, "calloc");
    int64_t start = mono_ms(), last_progress = start;
    size_t iter = 0, last_answered = 0;
    while (answered(&s) < total) {
        iter++;
        unsigned r = (unsigned)rand_r(&seed);
        int max_calls = 1 + (int)(r % 16);
        size_t ocap = (r >> 4) % 4 == 0 ? 16 + BODY_LEN : sizeof t->orphans;
        int there = mt_lane_count(s.lb.lane);
        run_turn(s.lb.lane, t, max_calls, ocap, 5, LONE_NS);
        s.lone_turns += there == 1 && t->ncalls >= 2;
        s.round_turns += there > 1 && t->ncalls > there;
        check_calls(s.lb.version, t);
        s.by_lane += (size_t)t->ncalls;
        orphans(&s, t);
        backs(&s, t->back, t->nback, 1u << MT_LANE_AHEAD | 1u << MT_LANE_QUIET);
        retire_done(&s);
        if (iter % 500 == 0) {
            /* the loop takes a connection back whatever it is doing */
            int n = 0, pick[NCLIENTS];
            for (int i = 0; i < NCLIENTS; i++)
                if (s.cl[i].slot >= 0)
                    pick[n++] = i;
            if (n) {
                take(&s, &s.cl[pick[(r >> 8) % (unsigned)n]]);
                s.random_takes++;
            }
            mt_lane_back sb[NCLIENTS];
            CHECK(mt_lane_sweep(s.lb.lane, INT64_MAX / 2, INT64_MAX / 2, sb, NCLIENTS) == 0,
                  "a sweep with huge limits handed something back");
        }
        if (iter % 1500 == 750) {
            /* sweeps that find everyone quiet, or every call slow */
            mt_lane_back sb[NCLIENTS];
            int slow = (iter / 1500) % 2;
            int n = mt_lane_sweep(s.lb.lane, slow ? INT64_MAX / 2 : 0, slow ? 0 : INT64_MAX / 2,
                                  sb, NCLIENTS);
            CHECK(n >= 0 && n <= mt_lane_count(s.lb.lane), "sweep: %d", n);
            for (int k = 0; k < n; k++)
                CHECK(sb[k].why == MT_LANE_QUIET, "sweep record %d: %d", k, sb[k].why);
            s.sweeps_quiet += (size_t)n;
            backs(&s, sb, n, 1u << MT_LANE_QUIET);
        }
        int in_lane = 0;
        for (int i = 0; i < NCLIENTS; i++)
            in_lane += s.cl[i].slot >= 0;
        CHECK(mt_lane_count(s.lb.lane) == in_lane, "count %d, %d in the lane",
              mt_lane_count(s.lb.lane), in_lane);
        CHECK(answered(&s) <= total, "answered %zu > %zu calls", answered(&s), total);
        int64_t now = mono_ms();
        if (answered(&s) != last_answered) {
            last_answered = answered(&s);
            last_progress = now;
        }
        mt_status gs;
        mt_get_status(s.lb.h, &gs);
        CHECK(now - last_progress < 10000,
              "no answer for 10 s (lost wake-up?): %zu/%zu answered (lane %zu, orphans %zu, "
              "ours %zu); glue: queued %" PRIu64 " submitted %" PRIu64 " completed %" PRIu64,
              answered(&s), total, s.by_lane, s.by_orphan, s.by_us, gs.queued, gs.submitted,
              gs.completed);
    }
    int64_t took = mono_ms() - start;
    for (int i = 0; i < NCLIENTS; i++) {
        CHECK(pthread_join(s.cl[i].thread, NULL) == 0, "pthread_join");
        CHECK(s.cl[i].answered == s.cl[i].calls, "client %d read %zu answers of %zu", i,
              s.cl[i].answered, s.cl[i].calls);
        CHECK(!s.cl[i].parked, "client %d still waits for an orphan", i);
        char who[32];
        snprintf(who, sizeof who, "client %d", i);
        check_nothing_left(s.cl[i].sv[1], who);
    }
    /* nothing more may come: no call in flight, no orphan */
    for (int k = 0; k < 3; k++) {
        run_turn(s.lb.lane, t, 16, sizeof t->orphans, 20, LONE_NS);
        CHECK(t->nback == 0 && t->ncalls == 0 && t->orphans_len == 0,
              "after the last answer: %d back, %d calls, %" PRId64 " orphan bytes", t->nback,
              t->ncalls, t->orphans_len);
    }
    mt_status gs;
    mt_get_status(s.lb.h, &gs);
    CHECK(gs.queued == 0 && gs.submitted == gs.completed && gs.in_call_ns == 0,
          "glue: queued %" PRIu64 " submitted %" PRIu64 " completed %" PRIu64, gs.queued,
          gs.submitted, gs.completed);
    CHECK(gs.completed == s.by_lane + s.by_orphan,
          "completed %" PRIu64 " != lane %zu + orphans %zu", gs.completed, s.by_lane,
          s.by_orphan);
    for (int i = 0; i < NCLIENTS; i++)
        if (s.cl[i].slot >= 0) {
            mt_lane_state st;
            int64_t need = mt_lane_take(s.lb.lane, s.cl[i].slot, s.buf, sizeof s.buf, &st);
            CHECK(need == 0 && st.call_id == 0 && st.in_len == 0,
                  "client %d at the end: %" PRId64 " bytes, call %#" PRIx64, i, need,
                  st.call_id);
            s.owner[s.cl[i].slot] = -1;
            s.cl[i].slot = -1;
        }
    CHECK(mt_lane_count(s.lb.lane) == 0, "count %d after taking all", mt_lane_count(s.lb.lane));
    CHECK(mt_drain(s.lb.h, s.buf, sizeof s.buf) == 0, "lane answers went to mt_drain");
    CHECK(mt_shutdown(s.lb.h, 5000) == 0, "mt_shutdown");
    for (int i = 0; i < NCLIENTS; i++) {
        close(s.cl[i].sv[0]);
        close(s.cl[i].sv[1]);
    }
    free(t);
    printf("lane=%zu orphans=%zu ours=%zu taken_in_flight=%zu taken_with_bytes=%zu "
           "random_takes=%zu lone_turns=%zu round_turns=%zu ahead=%zu quiet=%zu iterations=%zu "
           "ms=%" PRId64 "\n",
           s.by_lane, s.by_orphan, s.by_us, s.taken_in_flight, s.taken_with_bytes,
           s.random_takes, s.lone_turns, s.round_turns, s.why_count[MT_LANE_AHEAD],
           s.why_count[MT_LANE_QUIET], iter, took);
    /* the paths this run is for were taken */
    CHECK(s.lone_turns > 0, "the lane's only connection was never served on the spot");
    CHECK(s.round_turns > 0, "no turn served a connection twice (serve_busy)");
    CHECK(s.why_count[MT_LANE_AHEAD] > 0, "no pipeline was handed back");
    CHECK(s.by_orphan > 0, "no call taken back in flight came back as an orphan");
    printf("PASS stress direct=%d calls=%zu\n", direct, total);
    return 0;
}

/* ---------------------------------------------------------------- scenario 2 */

/* Calls (and answers) in the lane when mt_shutdown runs: nothing taken,
   nothing drained; lane_free must free what is queued. */
static int scenario_shutdown(const char *path, int direct, int wait) {
    init_frame();
    struct lib lb = open_lane(path, direct, 4);
    int sv[4][2];
    for (int i = 0; i < 4; i++) {
        pair(sv[i]);
        CHECK(mt_lane_add(lb.lane, sv[i][0], NULL) == i, "slot of socket %d", i);
    }
    for (int i = 0; i < 4; i++)
        write_all(sv[i][1], VERSION_REQ, REQ_LEN);
    struct turn *t = calloc(1, sizeof *t);
    CHECK(t, "calloc");
    CHECK(run_turn(lb.lane, t, 16, sizeof t->orphans, 5000, 0), "the requests raised no event");
    CHECK(t->nback == 0 && t->ncalls == 0 && t->orphans_len == 0,
          "the first turn: %d back, %d calls", t->nback, t->ncalls);
    mt_status gs;
    if (wait) {
        /* all four answers in the lane's queue, none written */
        int64_t deadline = mono_ms() + 10000;
        do {
            mt_get_status(lb.h, &gs);
            CHECK(mono_ms() < deadline, "completed %" PRIu64 " of 4", gs.completed);
            sleep_us(1000);
        } while (gs.completed < 4);
        wait_fd(mt_lane_fd(lb.lane), POLLIN, 1000);
    }
    CHECK(mt_lane_count(lb.lane) == 4, "count %d", mt_lane_count(lb.lane));
    CHECK(mt_shutdown(lb.h, 5000) == 0, "mt_shutdown with calls in the lane");
    for (int i = 0; i < 4; i++) {
        check_nothing_left(sv[i][1], "client"); /* the lane never answered */
        close(sv[i][0]);
        close(sv[i][1]);
    }
    free(t);
    printf("PASS shutdown direct=%d wait=%d completed=%" PRIu64 "\n", direct, wait,
           wait ? gs.completed : 0);
    return 0;
}

/* ---------------------------------------------------------------- scenario 3 */

/* Clients that end: after a request (its answer first, then the end), in
   the middle of one (its bytes come back), and one gone before its answer. */
static int scenario_eof(const char *path, int direct) {
    init_frame();
    struct lib lb = open_lane(path, direct, 8);
    enum { A, B, C, D, N };
    static const char *const names[N] = {"A (request, then end)", "B (3 bytes, then close)",
                                         "C (end while called)", "D (closed before the answer)"};
    int sv[N][2], slot[N], why[N], answers[N];
    int answered_at_back[N];
    for (int i = 0; i < N; i++) {
        pair(sv[i]);
        why[i] = 0;
        answers[i] = 0;
        answered_at_back[i] = 0;
    }
    /* A: the request and its end are there before the lane takes it */
    write_all(sv[A][1], VERSION_REQ, REQ_LEN);
    CHECK(shutdown(sv[A][1], SHUT_WR) == 0, "shutdown");
    for (int i = 0; i < N; i++) {
        slot[i] = mt_lane_add(lb.lane, sv[i][0], NULL);
        CHECK(slot[i] >= 0, "mt_lane_add");
    }
    /* B: part of a request, then gone */
    write_all(sv[B][1], VERSION_REQ, 3);
    CHECK(close(sv[B][1]) == 0, "close");
    sv[B][1] = -1;
    /* D: a whole request, then gone: its answer cannot be written */
    write_all(sv[D][1], VERSION_REQ, REQ_LEN);
    CHECK(close(sv[D][1]) == 0, "close");
    sv[D][1] = -1;
    /* C: a request; its end comes once the lane has called it */
    write_all(sv[C][1], VERSION_REQ, REQ_LEN);
    struct turn *t = calloc(1, sizeof *t);
    CHECK(t, "calloc");
    int c_ended = 0, backs = 0, ncalls = 0;
    int64_t deadline = mono_ms() + 10000;
    while (backs < N) {
        CHECK(mono_ms() < deadline, "%d of %d handed back, %d calls answered", backs, N, ncalls);
        run_turn(lb.lane, t, 16, sizeof t->orphans, 20, 0);
        check_calls(lb.version, t);
        CHECK(t->orphans_len == 0, "orphans without a take");
        /* which slots were answered: the call records do not say; A, C and D
           each make one call, B none */
        ncalls += t->ncalls;
        CHECK(ncalls <= 3, "%d calls for 3 requests", ncalls);
        for (int k = 0; k < t->nback; k++) {
            int i = 0;
            while (i < N && slot[i] != t->back[k].slot)
                i++;
            CHECK(i < N && !why[i], "back record of slot %d", t->back[k].slot);
            why[i] = t->back[k].why;
            answered_at_back[i] = ncalls;
            backs++;
        }
        if (!c_ended) {
            CHECK(shutdown(sv[C][1], SHUT_WR) == 0, "shutdown");
            c_ended = 1;
        }
    }
    CHECK(ncalls == 3, "%d calls answered, want 3", ncalls);
    for (int i = 0; i < N; i++)
        CHECK(why[i] == (i == D ? MT_LANE_ERROR : MT_LANE_EOF), "%s came back: %s (%d)",
              names[i], why_name(why[i]), why[i]);
    CHECK(answered_at_back[A] >= 1 && answered_at_back[C] >= 1 && answered_at_back[D] >= 1,
          "handed back before its answer");
    uint8_t buf[256];
    for (int i = 0; i < N; i++) {
        mt_lane_state st;
        memset(&st, 0xee, sizeof st);
        int64_t need = mt_lane_take(lb.lane, slot[i], buf, sizeof buf, &st);
        CHECK(st.call_id == 0, "%s: a call in flight after its answer", names[i]);
        if (i == B)
            CHECK(need == 3 && st.in_len == 3 && memcmp(buf, VERSION_REQ, 3) == 0,
                  "%s: took %" PRId64 " bytes, in_len %d; want its 3", names[i], need, st.in_len);
        else
            CHECK(need == 0 && st.in_len == 0, "%s: took %" PRId64 " bytes", names[i], need);
        CHECK(st.last_ns > 0, "%s: last_ns", names[i]);
    }
    CHECK(mt_lane_count(lb.lane) == 0, "count %d", mt_lane_count(lb.lane));
    for (int i = 0; i < N; i++) {
        if (i == A || i == C) {
            uint8_t got[FRAME_LEN];
            read_exact(sv[i][1], got, FRAME_LEN);
            check_frame(got, names[i], 0);
            check_nothing_left(sv[i][1], names[i]);
            answers[i]++;
        }
    }
    CHECK(answers[A] == 1 && answers[C] == 1, "answers");
    CHECK(mt_shutdown(lb.h, 5000) == 0, "mt_shutdown");
    for (int i = 0; i < N; i++) {
        close(sv[i][0]);
        if (sv[i][1] >= 0)
            close(sv[i][1]);
    }
    free(t);
    printf("PASS eof direct=%d\n", direct);
    return 0;
}

/* ---------------------------------------------------------------- scenario 4 */

/* Fill the daemon-to-client direction of sv until even one byte waits;
   returns the bytes written. */
static size_t fill(int fd) {
    static uint8_t junk[65536];
    memset(junk, 'j', sizeof junk);
    size_t total = 0;
    for (size_t chunk = sizeof junk; chunk; chunk /= 2) {
        for (;;) {
            ssize_t w = send(fd, junk, chunk, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (w < 0) {
                CHECK(errno == EAGAIN || errno == EWOULDBLOCK, "fill: %s", strerror(errno));
                break;
            }
            total += (size_t)w;
        }
    }
    return total;
}

/* A socket that takes part (or none) of an answer: MT_LANE_FULL, and the
   rest of the answer comes back from mt_lane_take; one such slot is left in
   the lane at mt_shutdown (lane_free frees its rest). */
static int scenario_full(const char *path, int direct) {
    init_frame();
    struct lib lb = open_lane(path, direct, 2);
    int sv[2][2], slot[2];
    size_t filled[2];
    for (int i = 0; i < 2; i++) {
        pair(sv[i]);
        filled[i] = fill(sv[i][0]);
        slot[i] = mt_lane_add(lb.lane, sv[i][0], NULL);
        CHECK(slot[i] >= 0, "mt_lane_add");
        write_all(sv[i][1], VERSION_REQ, REQ_LEN);
    }
    struct turn *t = calloc(1, sizeof *t);
    CHECK(t, "calloc");
    int backs = 0, ncalls = 0;
    int64_t deadline = mono_ms() + 10000;
    while (backs < 2) {
        CHECK(mono_ms() < deadline, "%d of 2 handed back", backs);
        run_turn(lb.lane, t, 16, sizeof t->orphans, 20, 0);
        check_calls(lb.version, t);
        ncalls += t->ncalls;
        for (int k = 0; k < t->nback; k++) {
            CHECK(t->back[k].why == MT_LANE_FULL, "slot %d came back: %s", t->back[k].slot,
                  why_name(t->back[k].why));
            backs++;
        }
    }
    CHECK(ncalls == 2, "%d answers", ncalls);
    /* socket 0: taken; what it got and what comes back make one answer */
    uint8_t buf[256];
    mt_lane_state st;
    int64_t need = mt_lane_take(lb.lane, slot[0], buf, 4, &st);
    CHECK(need < -4 && need >= -FRAME_LEN, "take into 4 bytes: %" PRId64, need);
    need = mt_lane_take(lb.lane, slot[0], buf, sizeof buf, &st);
    CHECK(need > 0 && need <= FRAME_LEN && st.in_len == 0 && st.call_id == 0,
          "take: %" PRId64 " bytes, in_len %d, call %#" PRIx64, need, st.in_len, st.call_id);
    size_t sent = (size_t)(FRAME_LEN - need);
    CHECK(memcmp(buf, FRAME + sent, (size_t)need) == 0, "the rest is not the answer's rest");
    static uint8_t got[1 << 20];
    size_t have = 0;
    for (;;) {
        ssize_t r = recv(sv[0][1], got + have, sizeof got - have, MSG_DONTWAIT);
        if (r <= 0)
            break;
        have += (size_t)r;
    }
    CHECK(have == filled[0] + sent, "client read %zu bytes, want %zu + %zu", have, filled[0],
          sent);
    CHECK(memcmp(got + filled[0], FRAME, sent) == 0, "the part written is not the answer's start");
    CHECK(mt_lane_count(lb.lane) == 1, "count %d", mt_lane_count(lb.lane));
    /* socket 1 stays handed back, with the rest of its answer, at shutdown */
    CHECK(mt_shutdown(lb.h, 5000) == 0, "mt_shutdown");
    for (int i = 0; i < 2; i++) {
        close(sv[i][0]);
        close(sv[i][1]);
    }
    free(t);
    printf("PASS full direct=%d written=%zu rest=%" PRId64 "\n", direct, sent, need);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 5 && strcmp(argv[1], "stress") == 0)
        return scenario_stress(argv[2], atoi(argv[3]), (size_t)strtoull(argv[4], NULL, 10));
    if (argc >= 5 && strcmp(argv[1], "shutdown") == 0)
        return scenario_shutdown(argv[2], atoi(argv[3]), atoi(argv[4]));
    if (argc >= 4 && strcmp(argv[1], "eof") == 0)
        return scenario_eof(argv[2], atoi(argv[3]));
    if (argc >= 4 && strcmp(argv[1], "full") == 0)
        return scenario_full(argv[2], atoi(argv[3]));
    fprintf(stderr,
            "usage: %s stress <lib> <direct> <calls> | shutdown <lib> <direct> <wait> |"
            " eof <lib> <direct> | full <lib> <direct>\n",
            argv[0]);
    return 2;
}

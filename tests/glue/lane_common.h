/* What the lane's C test drivers (lane_stress.c, lane_tls_stress.c) share:
 * the version request and its answer frame, the clock and sleep, waiting on
 * and writing to a socket, the check of an answer frame, one turn of the
 * lane run and checked, and the names of the lane's hand-back reasons.
 * Static inline, for the drivers only; included after glue.h and lane.h
 * (which have no include guards). */
#ifndef MYTIMERD_TESTS_LANE_COMMON_H
#define MYTIMERD_TESTS_LANE_COMMON_H

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "check.h"

/* [u32 7]["version"][u32 1][0xa0] */
static const uint8_t VERSION_REQ[] = {0, 0, 0, 7, 'v', 'e', 'r', 's', 'i', 'o', 'n', 0, 0, 0, 1, 0xa0};
#define REQ_LEN ((int)sizeof VERSION_REQ)
static const uint8_t VERSION_BODY[] = "\x70" "nim-timer v0.1.0"; /* + NUL */
#define BODY_LEN (sizeof VERSION_BODY - 1)
/* [i32 0][u32 17][body]: the version answer, set by init_frame */
#define FRAME_LEN (8 + (int)BODY_LEN)
static uint8_t FRAME[FRAME_LEN];

static inline void init_frame(void) {
    memset(FRAME, 0, 8);
    FRAME[7] = (uint8_t)BODY_LEN;
    memcpy(FRAME + 8, VERSION_BODY, BODY_LEN);
}

static inline int64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void sleep_us(long us) {
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static inline void wait_fd(int fd, short events, int timeout_ms) {
    struct pollfd p = {.fd = fd, .events = events};
    int r;
    do
        r = poll(&p, 1, timeout_ms);
    while (r < 0 && errno == EINTR);
    CHECK(r > 0, "fd %d not ready (%d) within %d ms: %s", fd, events, timeout_ms,
          r < 0 ? strerror(errno) : "timeout");
}

/* All n bytes to fd, blocking or not (a non-blocking one is waited for). */
static inline void write_all(int fd, const uint8_t *p, size_t n) {
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            wait_fd(fd, POLLOUT, 10000);
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        CHECK(w > 0, "send on %d: %s", fd, strerror(errno));
        p += w;
        n -= (size_t)w;
    }
}

/* got (FRAME_LEN bytes) is the version answer frame; `who` names the reader. */
static inline void check_frame(const uint8_t *got, const char *who, size_t k) {
    if (memcmp(got, FRAME, FRAME_LEN) != 0) {
        fprintf(stderr, "%s answer %zu:", who, k);
        for (int i = 0; i < FRAME_LEN; i++)
            fprintf(stderr, " %02x", got[i]);
        fputc('\n', stderr);
        CHECK(0, "%s: answer %zu is not the version answer frame", who, k);
    }
}

/* What one turn of mt_lane_run gives back (left: work left for the next). */
struct turn {
    mt_lane_back back[MT_LANE_EVENTS + 16];
    int nback;
    mt_lane_tally tally[16];
    int ntally;
    double secs[16];
    int ncalls;
    uint8_t orphans[4096];
    int64_t orphans_len;
    int left;
};

/* Poll the lane's descriptor (not waiting when work is left) and run one
   turn; whether the descriptor was readable. */
static inline int run_turn(mt_lane *l, struct turn *t, int max_calls, size_t orphans_cap,
                           int timeout_ms, int64_t lone_ns) {
    CHECK(max_calls >= 1 && max_calls <= 16 && orphans_cap <= sizeof t->orphans, "turn sizes");
    /* Work left for another turn makes the descriptor readable at once
       (with at most 9 descriptors in the lane's epoll, never 64 events: it
       can only be answers that did not fit, put back in its queue). */
    struct pollfd p = {.fd = mt_lane_fd(l), .events = POLLIN};
    int r;
    do
        r = poll(&p, 1, t->left ? 0 : timeout_ms);
    while (r < 0 && errno == EINTR);
    CHECK(r >= 0, "poll: %s", strerror(errno));
    int ready = r > 0;
    CHECK(ready || !t->left, "work left, but the lane's descriptor is not readable");
    /* run even when poll timed out: a turn with nothing to do does nothing */
    t->left = mt_lane_run(l, lone_ns, t->back, MT_LANE_EVENTS + max_calls, &t->nback, t->tally,
                          &t->ntally, t->secs, max_calls, &t->ncalls, t->orphans, orphans_cap,
                          &t->orphans_len);
    CHECK(t->left == 0 || t->left == 1, "mt_lane_run returned %d", t->left);
    CHECK(t->nback >= 0 && t->nback <= MT_LANE_EVENTS + max_calls, "nback %d", t->nback);
    CHECK(t->ncalls >= 0 && t->ncalls <= max_calls, "ncalls %d > %d", t->ncalls, max_calls);
    CHECK(t->orphans_len >= 0 && (size_t)t->orphans_len <= orphans_cap, "orphans_len %" PRId64,
          t->orphans_len);
    return ready;
}

/* The turn's answers are all version's (`version`: its method). */
static inline void check_calls(int version, const struct turn *t) {
    /* runs of one method and outcome: here every answer is version's, so
       one run holds them all */
    CHECK(t->ntally == (t->ncalls > 0), "%d runs for %d answers", t->ntally, t->ncalls);
    if (t->ntally)
        CHECK(t->tally[0].method == version && t->tally[0].ret == RET_OK &&
                  t->tally[0].count == t->ncalls,
              "run: method %d ret %d count %d of %d answers", t->tally[0].method,
              t->tally[0].ret, t->tally[0].count, t->ncalls);
    for (int k = 0; k < t->ncalls; k++)
        CHECK(t->secs[k] >= 0 && t->secs[k] < 60, "answer %d: latency %g s", k, t->secs[k]);
}

static inline const char *why_name(int why) {
    switch (why) {
    case MT_LANE_OTHER: return "other";
    case MT_LANE_EOF: return "eof";
    case MT_LANE_ERROR: return "error";
    case MT_LANE_FULL: return "full";
    case MT_LANE_QUIET: return "quiet";
    case MT_LANE_AHEAD: return "ahead";
    default: return "?";
    }
}

#endif

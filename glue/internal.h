/*
 * What glue.c shares with lane.c, and nothing else includes: the completion
 * record, the clock and the wire's integers, and the hooks by which the
 * lane makes calls and takes their answers. (glue.h is read by cffi's
 * cdef(): it cannot carry these.)
 */
#ifndef MT_GLUE_INTERNAL_H
#define MT_GLUE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

/* glue.h (no include guard: cffi reads it) comes first. */

/* One answer (or event) from the library, as the callback copied it. */
struct done {
    struct done *next;
    uint64_t id;
    int32_t ret;
    uint32_t len;
    uint8_t data[];
};

struct mt_lane;

static inline int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The wire's big-endian u32s. */
static inline void put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline uint32_t get_be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Make call `id` of quick method number `method` for the lane: its answer
   goes to lane_answer (on whichever thread calls back), not to mt_drain.
   0, or -1 as mt_submit fails. */
int glue_lane_call(mt_host *h, int method, uint64_t id, const uint8_t *payload, size_t len);
/* The method number of a quick request's name (mt_quick_add), or -1. */
int glue_quick_method(mt_host *h, const uint8_t *name, size_t len);
/* How long to wait on the spot for an answer of method number `method`
   (ns): twice its usual answer time and MT_WAIT_SLACK_NS, max_wait_ns at
   most; 0 (do not wait) when it usually takes longer than max_wait_ns. */
int64_t glue_answer_wait(mt_host *h, int method, int64_t max_wait_ns);
/* One step of a bounded busy wait (see glue.c); false once past deadline. */
bool glue_spin_step(int i, int64_t deadline);
/* recv on non-blocking socket fd until bytes come, it ends or fails, or
   deadline passes (busy, yielding the core every other look): recv's
   result, -1 with errno EAGAIN when nothing came in time. cap 0: look
   only (a byte peeked, left there). */
ssize_t glue_spin_recv(int fd, uint8_t *buf, size_t cap, int64_t deadline);
/* The host's lane, set once by mt_lane_new. */
void glue_set_lane(mt_host *h, struct mt_lane *lane);

/* lane.c: take the answer of a lane call (any thread; NULL: out of memory,
   the call then times out in the lane's sweep). */
void lane_answer(struct mt_lane *l, struct done *d);
/* lane.c: free the lane once no callback can come any more. */
void lane_free(struct mt_lane *l);

/* lanetls.c: read plaintext of TLS session tls (mt_tls_borrow) on socket
   fd into buf (room bytes at most; waiting until deadline, when not 0, for
   the first bytes): recv's result (-1 with errno EPROTO: the session
   failed, or records came and no request); *more: something may be left to
   read without a new edge. */
ssize_t lane_tls_recv(void *tls, int fd, uint8_t *buf, size_t room, int64_t deadline,
                      bool *more);
/* lanetls.c: seal an answer (head, then len bytes of data) in one record
   and send it: 0 all sent; 1 the socket took part, and *rest (malloc'd,
   *rest_len bytes) holds the sealed rest; -1 failed (errno). */
int lane_tls_send(void *tls, int fd, const uint8_t head[8], const uint8_t *data, uint32_t len,
                  uint8_t **rest, size_t *rest_len);

#endif

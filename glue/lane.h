/*
 * The lane: quick calls served in C, on the event loop's thread, for
 * connections that make them one after another (mytimerd's daemon/lane.py
 * decides which). A connection in the lane is read, its quick requests
 * called and their answers written here, with no Python per call: the loop
 * runs mt_lane_run when the lane's epoll descriptor is readable. A TLS
 * connection is served on its session, which Python's ssl made and the
 * lane borrows (lanetls.c). Anything else the connection does (another
 * request, a frame in part past what a quick one can be, its end, an
 * error, a socket that takes only part of an answer) hands it back to the
 * loop, with the bytes it sent and the rest of the answer not yet written
 * (sealed, for TLS), in order; for TLS, what the session holds unread
 * stays there for Python's ssl.
 *
 * One call in flight per connection at most; a client that sends its next
 * request before the answer (a pipeline) goes back to the loop, which
 * serves pipelines in batches. While the loop has nothing else to do
 * (mt_lane_run's lone_ns), a connection alone in the lane is served on the
 * spot, one call after another, and several are served round after round
 * while their answers are due, each for a bounded time. mt_lane_run does a
 * bounded slice of work per turn.
 *
 * This file is read by cffi's cdef(): declarations only, no preprocessor.
 */

typedef struct mt_lane mt_lane;

/* Bytes a connection in the lane may have sent and the lane not served. */
#define MT_LANE_IN 256
/* Ready sockets one turn of mt_lane_run looks at, at most. */
#define MT_LANE_EVENTS 64

/* Why a connection came back (mt_lane_back.why). */
#define MT_LANE_OTHER 1 /* it sent something the lane does not serve */
#define MT_LANE_EOF 2   /* its client closed its side */
#define MT_LANE_ERROR 3 /* reading or writing failed */
#define MT_LANE_FULL 4  /* its socket took part of an answer */
#define MT_LANE_QUIET 6 /* mt_lane_sweep: quiet, or its call slow */
#define MT_LANE_AHEAD 7 /* it sent requests before its answer came (pipelining) */

typedef struct {
    int32_t slot;
    int32_t why;
} mt_lane_back;

/* What mt_lane_take tells of a connection it gives back. */
typedef struct {
    uint64_t call_id;  /* its call in flight, 0 if none: the answer comes as an orphan */
    int32_t method;    /* that call's method number */
    int32_t in_len;    /* the first in_len bytes of buf: what it sent, unserved */
    int64_t started_ns;/* when that call was made (CLOCK_MONOTONIC) */
    int64_t last_ns;   /* when it last completed a request or was answered */
} mt_lane_state;

/* A run of answers the lane wrote (or handed back unwritten) one after
   another, all of one method and outcome, for the stats: one record per
   run, not per answer, so that the loop's Python counts a turn's answers
   in a few steps however many there were. */
typedef struct {
    int32_t method;
    int32_t ret;
    int32_t count;     /* answers in the run; their latencies are the next count of secs[] */
} mt_lane_tally;

/* The lane of host h (after mt_create and mt_quick_add), with room for
   `slots` connections; its calls have ids id_base + k * 1024 + slot.
   NULL when out of memory or descriptors, or slots is not in 1..1024. It
   lives as long as the host. */
mt_lane *mt_lane_new(mt_host *h, int slots, uint64_t id_base);
/* The descriptor the loop watches: readable when mt_lane_run has work. */
int mt_lane_fd(mt_lane *l);
/* Take the connection on socket fd (non-blocking, owing nothing, its
   reading paused by the loop), plaintext or, with tls (mt_tls_borrow), in
   that TLS session, which the loop leaves alone until mt_lane_take: its
   slot, or -1 when the lane is full or epoll refuses. */
int mt_lane_add(mt_lane *l, int fd, void *tls);
/* Give slot back to the loop, whatever it is doing: its unserved bytes and
   then the unwritten rest of an answer go to buf; returns the bytes written
   to buf (*st says how they split and what is in flight) and the lane
   forgets the socket; or, when they do not fit in cap, minus the size
   needed, and nothing changes. A free slot: 0, and *st all zero. */
int64_t mt_lane_take(mt_lane *l, int slot, uint8_t *buf, size_t cap, mt_lane_state *st);
/* One turn: serve what is ready, at most MT_LANE_EVENTS sockets and
   max_calls answers. Connections to hand back go to back[] (at most
   back_cap; *nback of them); the answers written go to tally[] in runs
   (*ntally of them) and their latencies, in seconds from the request's
   call to its answer, to secs[] (*ncalls; both arrays hold max_calls);
   answers of calls no longer in the lane (taken back meanwhile) go to
   orphans as mt_drain records (*orphans_len bytes). lone_ns > 0: the loop
   has nothing else to do; the lane's only connection (if it holds one) is
   served on the spot for a while, waiting up to lone_ns for each of its
   requests (as the loop's read-ahead); several are served round after
   round while the answers of their calls are due (each method's usual
   time, 100 us at most), 100 us at most. Returns 1 if work is left for
   another turn, 0 if not. */
int mt_lane_run(mt_lane *l, int64_t lone_ns, mt_lane_back *back, int back_cap, int *nback,
                mt_lane_tally *tally, int *ntally, double *secs, int max_calls, int *ncalls,
                uint8_t *orphans, size_t orphans_cap, int64_t *orphans_len);
/* Connections quiet (no request completed nor answer written) for idle_ns,
   or whose call has been in flight for slow_ns: put in back[] (at most
   back_cap) with MT_LANE_QUIET, to be taken back. Returns how many. */
int mt_lane_sweep(mt_lane *l, int64_t idle_ns, int64_t slow_ns, mt_lane_back *back, int back_cap);
/* Connections in the lane now. */
int mt_lane_count(mt_lane *l);

/* The OpenSSL the glue runs on (OpenSSL_version_num): the lane borrows
   Python's TLS sessions only when it is the one Python's ssl runs on. */
unsigned long mt_tls_openssl(void);
/* The OpenSSL session of a Python ssl.SSLObject whose handshake is done:
   the addresses of its _ssl._SSLSocket (SSLObject._sslobj) and of its two
   ssl.MemoryBIO objects, incoming and outgoing. NULL unless the session
   found there is that object's, on those BIOs (see lanetls.c). */
void *mt_tls_borrow(uintptr_t sslsocket, uintptr_t in_bio, uintptr_t out_bio);

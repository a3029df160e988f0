/*
 * lane_tls_stress: drives glue/lanetls.c through the lane (glue/lane.c, with
 * glue/glue.c) on TLS connections, under AddressSanitizer+UBSan and
 * ThreadSanitizer. Built and run by tests/glue/test_lane_sanitizers.py.
 *
 * Each connection's server side is an OpenSSL session on two memory BIOs,
 * as Python's ssl.SSLObject has it: its handshake is driven here (bytes
 * moved between the BIOs and the server's end of a socketpair), then the
 * session is lent to the lane with mt_lane_add(fd, ssl). Its client is an
 * OpenSSL client on the other end, in its own thread, that verifies the
 * server's certificate against the CA. As in the daemon, ONE thread (main)
 * calls every mt_* function and touches the server sessions: the lane while
 * it holds one, the driver (as Python's ssl would) only once taken back.
 *
 * Usage:
 *   lane_tls_stress stress <lib.so> <direct 0|1> <calls> <cert> <key> <ca>
 *   lane_tls_stress full   <lib.so> <direct 0|1> <cert> <key> <ca>
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
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>

#include "my_timer_cbor.h"
#include "glue.h"
#include "lane.h"
#include "check.h"
#include "lane_common.h"

#define ID_BASE (1ULL << 62)
#define NMAX 4
/* the last calls of client 0, made alone in the lane (served on the spot) */
#define ALONE 2000
/* the lone wait, long for the sanitizers' slow clients */
#define LONE_NS 2000000
/* calls the full scenario's client makes once it reads again */
#define AFTER_FULL 200
/* requests a client sends at once now and then: more than MT_LANE_IN bytes */
#define BURST 20
_Static_assert(BURST * 16 > MT_LANE_IN, "a burst does not fit in the lane's buffer");

/* CHECK that first prints OpenSSL's error queue (cond evaluated once). */
#define TLS_CHECK(cond, ...)                                                  \
    do {                                                                      \
        if (!(cond)) {                                                        \
            ERR_print_errors_fp(stderr);                                      \
            CHECK_FAILED(#cond, __VA_ARGS__);                                 \
        }                                                                     \
    } while (0)

struct conn {
    int idx;
    int sv[2];        /* sv[0] the server's end, sv[1] the client's */
    SSL *srv;         /* main thread only */
    int full;         /* the client that stops reading (scenario full) */
    size_t calls;     /* to make (stress) */
    size_t alone;     /* the last of them, once the other clients have ended */
    unsigned seed;
    pthread_t thread;
    /* the client thread's, read after join */
    size_t made, answered;
    /* main thread only */
    int slot;         /* in the lane, or -1 */
    int ended;        /* its close_notify came, ours went */
};

static struct {
    mt_host *h;
    int version;
    mt_lane *lane;
    SSL_CTX *sctx, *cctx;
    struct conn cl[NMAX];
    int n;
    int owner[NMAX]; /* slot -> client */
    size_t by_lane, by_us, why_count[8], lone_turns, round_turns, rest_bytes;
    size_t held; /* plaintext read from a session taken back (or after its handshake) */
    uint8_t buf[4096];
} D;

/* Published by main for the full scenario's client, which reads nothing
   until its socket is full: answers written (lane's and ours), then whether
   the lane handed it back MT_LANE_FULL (set before the count of that turn). */
static atomic_size_t answers;
static atomic_int full_seen;
static atomic_int ended_count;

/* ---------------------------------------------------------------- clients */

static void tls_write(SSL *ssl, const uint8_t *p, size_t n) {
    size_t w = 0;
    TLS_CHECK(SSL_write_ex(ssl, p, n, &w) && w == n, "client SSL_write_ex: error %d",
              SSL_get_error(ssl, 0));
}

static void tls_read(SSL *ssl, uint8_t *p, size_t n) {
    while (n) {
        size_t got = 0;
        TLS_CHECK(SSL_read_ex(ssl, p, n, &got), "client SSL_read_ex: error %d (errno %s)",
                  SSL_get_error(ssl, 0), strerror(errno));
        p += got;
        n -= got;
    }
}

static void read_answers(struct conn *c, SSL *ssl, size_t n) {
    char who[32];
    snprintf(who, sizeof who, "client %d", c->idx);
    uint8_t got[FRAME_LEN];
    for (size_t j = 0; j < n; j++) {
        tls_read(ssl, got, FRAME_LEN);
        check_frame(got, who, c->answered++);
    }
}

/* One request at a time; now and then two (or BURST) in one record (the
   lane hands the connection back MT_LANE_AHEAD) or one in two records. */
static void stress_calls(struct conn *c, SSL *ssl) {
    size_t shared = c->calls - c->alone; /* the calls made with the others */
    while (c->made < c->calls) {
        unsigned r = (unsigned)rand_r(&c->seed);
        size_t n = 1;
        if (c->made == shared)
            while (atomic_load(&ended_count) < D.n - 1)
                sleep_us(1000);
        if (c->made >= shared) {
            tls_write(ssl, VERSION_REQ, REQ_LEN);
        } else if (r % 16 == 0) {
            size_t cut = 1 + (r >> 4) % (REQ_LEN - 1);
            tls_write(ssl, VERSION_REQ, cut);
            if ((r >> 12) & 1)
                sched_yield();
            else
                sleep_us(20 + (r >> 13) % 100);
            tls_write(ssl, VERSION_REQ + cut, REQ_LEN - cut);
        } else if ((r % 32 == 1 && shared - c->made >= 2) ||
                   (r % 64 == 2 && shared - c->made >= BURST)) {
            /* BURST: more than MT_LANE_IN, the session keeps what the lane
               did not read, and the driver reads it once taken back */
            uint8_t many[BURST * REQ_LEN];
            n = r % 32 == 1 ? 2 : BURST;
            for (size_t j = 0; j < n; j++)
                memcpy(many + j * REQ_LEN, VERSION_REQ, REQ_LEN);
            tls_write(ssl, many, n * REQ_LEN);
        } else {
            tls_write(ssl, VERSION_REQ, REQ_LEN);
        }
        c->made += n;
        read_answers(c, ssl, n);
    }
}

/* Calls one at a time, each sent once the last was written, none read, until
   the lane hands the connection back MT_LANE_FULL; then all are read (the
   last one's sealed rest written by main), and a few more made. */
static void full_calls(struct conn *c, SSL *ssl) {
    int64_t deadline = mono_ms() + 20000;
    while (!atomic_load(&full_seen)) {
        CHECK(c->made < 10000, "no MT_LANE_FULL after %zu answers left unread", c->made);
        tls_write(ssl, VERSION_REQ, REQ_LEN);
        c->made++;
        for (;;) {
            size_t a = atomic_load(&answers);
            if (atomic_load(&full_seen) || a >= c->made)
                break;
            CHECK(mono_ms() < deadline, "full client: %zu answered of %zu", a, c->made);
            sleep_us(50);
        }
    }
    read_answers(c, ssl, c->made);
    for (int k = 0; k < AFTER_FULL; k++) {
        tls_write(ssl, VERSION_REQ, REQ_LEN);
        c->made++;
        read_answers(c, ssl, 1);
    }
}

static void *client_main(void *arg) {
    struct conn *c = arg;
    SSL *ssl = SSL_new(D.cctx);
    TLS_CHECK(ssl && SSL_set_fd(ssl, c->sv[1]) && SSL_set1_host(ssl, "localhost") &&
                  SSL_set_tlsext_host_name(ssl, "localhost"),
              "client SSL_new");
    TLS_CHECK(SSL_connect(ssl) == 1, "client %d: handshake failed", c->idx);
    CHECK(SSL_get_verify_result(ssl) == X509_V_OK, "client %d: verify %ld", c->idx,
          SSL_get_verify_result(ssl));
    if (c->full)
        full_calls(c, ssl);
    else
        stress_calls(c, ssl);
    /* close_notify: the lane hands it back MT_LANE_EOF; main answers with
       its own, and any answer past the last would come before it */
    CHECK(SSL_shutdown(ssl) == 0, "client %d: SSL_shutdown", c->idx);
    uint8_t b[64];
    size_t got = 0;
    int ok = SSL_read_ex(ssl, b, sizeof b, &got);
    CHECK(!ok && SSL_get_error(ssl, 0) == SSL_ERROR_ZERO_RETURN,
          "client %d: after its last answer, %zu bytes or error %d instead of close_notify",
          c->idx, got, ok ? 0 : SSL_get_error(ssl, 0));
    SSL_free(ssl);
    return NULL;
}

/* ---------------------------------------------------------------- main's side */

/* What the session sealed (handshake, answers, close_notify), to the socket. */
static void flush_out(struct conn *c) {
    uint8_t buf[4096];
    int n;
    while ((n = BIO_read(SSL_get_wbio(c->srv), buf, sizeof buf)) > 0)
        write_all(c->sv[0], buf, (size_t)n);
}

/* Records from the socket into the session's read BIO (waiting for them). */
static void feed_in(struct conn *c) {
    uint8_t raw[16384];
    ssize_t r;
    do {
        wait_fd(c->sv[0], POLLIN, 10000);
        r = recv(c->sv[0], raw, sizeof raw, MSG_DONTWAIT);
    } while (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR));
    CHECK(r > 0, "client %d: recv %zd: %s", c->idx, r, r ? strerror(errno) : "end of stream");
    TLS_CHECK(BIO_write(SSL_get_rbio(c->srv), raw, (int)r) == (int)r, "BIO_write");
}

static void answer_self(struct conn *c) {
    size_t w = 0;
    TLS_CHECK(SSL_write_ex(c->srv, FRAME, FRAME_LEN, &w) && w == FRAME_LEN, "server SSL_write_ex");
    flush_out(c);
    D.by_us++;
    atomic_fetch_add(&answers, 1);
}

static void add(struct conn *c) {
    /* the lane is lent a session owing nothing: nothing unread, nothing unsent
       (daemon/tlslayer.py's lane_session) */
    CHECK(BIO_ctrl_pending(SSL_get_rbio(c->srv)) == 0 &&
              BIO_ctrl_pending(SSL_get_wbio(c->srv)) == 0 && SSL_pending(c->srv) == 0,
          "client %d: the session holds bytes", c->idx);
    int slot = mt_lane_add(D.lane, c->sv[0], c->srv);
    CHECK(slot >= 0 && slot < NMAX && D.owner[slot] < 0, "mt_lane_add(client %d) = %d", c->idx,
          slot);
    D.owner[slot] = c->idx;
    c->slot = slot;
}

/* Its close_notify came: ours goes back, and it is done. */
static void end(struct conn *c) {
    CHECK(SSL_shutdown(c->srv) == 1, "client %d: server SSL_shutdown", c->idx);
    flush_out(c);
    c->ended = 1;
    atomic_fetch_add(&ended_count, 1);
}

/* As the loop does with a connection back from the lane: serve the n bytes
   it sent, then what the session holds unread, reading the rest of a
   request (or record) begun; then lend the session to the lane again. */
static void serve_self(struct conn *c, const uint8_t *in, int n) {
    uint8_t buf[1024];
    size_t len = (size_t)n;
    if (len) /* (in is NULL for none: memcpy's arguments may not be) */
        memcpy(buf, in, len);
    for (;;) {
        size_t got = 0;
        while (SSL_read_ex(c->srv, buf + len, sizeof buf - len, &got)) {
            len += got;
            D.held += got;
            CHECK(len < sizeof buf, "client %d: %zu bytes unserved", c->idx, len);
        }
        int e = SSL_get_error(c->srv, 0);
        if (e == SSL_ERROR_ZERO_RETURN && !len) {
            end(c);
            return;
        }
        TLS_CHECK(e == SSL_ERROR_WANT_READ, "client %d: server SSL_read_ex error %d", c->idx, e);
        size_t pos = 0;
        for (; len - pos >= (size_t)REQ_LEN; pos += REQ_LEN) {
            CHECK(memcmp(buf + pos, VERSION_REQ, REQ_LEN) == 0,
                  "client %d: not a version request", c->idx);
            answer_self(c);
        }
        memmove(buf, buf + pos, len - pos);
        len -= pos;
        CHECK(memcmp(buf, VERSION_REQ, len) == 0, "client %d: not the start of a request",
              c->idx);
        if (!len && !BIO_ctrl_pending(SSL_get_rbio(c->srv)))
            break;
        feed_in(c); /* the rest of a request, or of a record, is on its way */
    }
    add(c);
}

/* The server side of a new connection: a session on memory BIOs whose
   handshake this drives (blocking), then served and lent to the lane. */
static void open_conn(struct conn *c, int idx) {
    c->idx = idx;
    c->slot = -1;
    c->seed = 0x9e3779b9u * (unsigned)(idx + 1);
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, c->sv) == 0, "socketpair: %s",
          strerror(errno));
    /* a client that hangs fails its read, not the test's time limit */
    struct timeval tv = {10, 0};
    CHECK(setsockopt(c->sv[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0, "SO_RCVTIMEO");
    c->srv = SSL_new(D.sctx);
    BIO *rbio = BIO_new(BIO_s_mem()), *wbio = BIO_new(BIO_s_mem());
    TLS_CHECK(c->srv && rbio && wbio, "SSL_new, BIO_new");
    /* empty: "retry" (-1), as Python's ssl.MemoryBIO says, not end of file */
    BIO_set_mem_eof_return(rbio, -1);
    BIO_set_mem_eof_return(wbio, -1);
    SSL_set_bio(c->srv, rbio, wbio);
    SSL_set_accept_state(c->srv);
    CHECK(pthread_create(&c->thread, NULL, client_main, c) == 0, "pthread_create");
    for (;;) {
        int r = SSL_do_handshake(c->srv);
        flush_out(c); /* its flight, then (TLS 1.3) the session tickets */
        if (r == 1)
            break;
        int e = SSL_get_error(c->srv, r);
        TLS_CHECK(e == SSL_ERROR_WANT_READ, "client %d: server handshake error %d", c->idx, e);
        feed_in(c); /* the client's first requests may come along */
    }
    if (c->full) {
        /* a few answers fill it (AF_UNIX counts the sender's buffer); set
           after the handshake, whose session tickets the client leaves unread */
        int small = 4096;
        CHECK(setsockopt(c->sv[1], SOL_SOCKET, SO_RCVBUF, &small, sizeof small) == 0 &&
                  setsockopt(c->sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small) == 0,
              "small buffers");
    }
    int fl = fcntl(c->sv[0], F_GETFL);
    CHECK(fl >= 0 && fcntl(c->sv[0], F_SETFL, fl | O_NONBLOCK) == 0, "O_NONBLOCK");
    serve_self(c, NULL, 0);
}

/* Take back what the lane handed back: write the sealed rest of an answer
   (MT_LANE_FULL), end it (MT_LANE_EOF), or serve what it sent and lend it
   again. `allowed`: the reasons this scenario may see. */
static void backs(const mt_lane_back *back, int n, unsigned allowed) {
    for (int k = 0; k < n; k++) {
        int slot = back[k].slot, why = back[k].why;
        CHECK(slot >= 0 && slot < NMAX && D.owner[slot] >= 0, "back record of slot %d", slot);
        struct conn *c = &D.cl[D.owner[slot]];
        CHECK(why >= 1 && why <= 7 && (allowed >> why & 1), "client %d handed back: %s (%d)",
              c->idx, why_name(why), why);
        D.why_count[why]++;
        mt_lane_state st;
        int64_t need = mt_lane_take(D.lane, slot, D.buf, 0, &st);
        CHECK(need < 0 || (why != MT_LANE_AHEAD && why != MT_LANE_FULL),
              "client %d (%s): nothing to take back", c->idx, why_name(why));
        if (need < 0) /* does not fit in 0 bytes: nothing changed */
            need = mt_lane_take(D.lane, slot, D.buf, sizeof D.buf, &st);
        CHECK(need >= 0 && st.in_len >= 0 && st.in_len <= need && st.call_id == 0,
              "client %d: take %" PRId64 ", in_len %d, call %#" PRIx64, c->idx, need, st.in_len,
              st.call_id);
        D.owner[slot] = -1;
        c->slot = -1;
        size_t rest = (size_t)(need - st.in_len);
        CHECK((rest > 0) == (why == MT_LANE_FULL),
              "client %d (%s): %zu bytes of an answer unsent", c->idx, why_name(why), rest);
        if (rest) {
            /* the client reads again once it knows; this write waits for it */
            atomic_store(&full_seen, 1);
            D.rest_bytes += rest;
            write_all(c->sv[0], D.buf + st.in_len, rest);
        }
        if (why == MT_LANE_EOF)
            CHECK(st.in_len == 0, "client %d: %d bytes before its end", c->idx, st.in_len);
        /* EOF too: its close_notify stays in the session, and is read again */
        serve_self(c, D.buf, st.in_len);
        CHECK(c->ended == (why == MT_LANE_EOF), "client %d: %s, ended %d", c->idx,
              why_name(why), c->ended);
    }
}

/* Runs the lane as the loop does until every client has ended. */
static void run_loop(unsigned allowed, int quiet_sweeps) {
    static struct turn t;
    unsigned seed = 12345u;
    int64_t last_progress = mono_ms();
    size_t iter = 0, last = 0;
    while ((int)atomic_load(&ended_count) < D.n) {
        iter++;
        unsigned r = (unsigned)rand_r(&seed);
        int max_calls = 1 + (int)(r % 16); /* small limits: answers put back for the next turn */
        int there = mt_lane_count(D.lane);
        /* the loop idle: always for one connection, every other turn for several */
        int64_t lone = there == 1 || (r >> 4) % 2 ? LONE_NS : 0;
        run_turn(D.lane, &t, max_calls, sizeof t.orphans, 5, lone);
        CHECK(t.orphans_len == 0, "%" PRId64 " orphan bytes", t.orphans_len);
        check_calls(D.version, &t);
        D.lone_turns += there == 1 && t.ncalls >= 2;
        D.round_turns += there > 1 && t.ncalls > there;
        backs(t.back, t.nback, allowed); /* (MT_LANE_FULL published before the count) */
        D.by_lane += (size_t)t.ncalls;
        atomic_fetch_add(&answers, (size_t)t.ncalls);
        mt_lane_back sb[NMAX];
        if (iter % 100 == 0)
            CHECK(mt_lane_sweep(D.lane, INT64_MAX / 2, INT64_MAX / 2, sb, NMAX) == 0,
                  "a sweep with huge limits handed something back");
        if (quiet_sweeps && iter % 400 == 200) {
            /* everyone without a call in flight is quiet: taken back, served
               by the loop, lent again (its session may hold a request begun) */
            int n = mt_lane_sweep(D.lane, 0, INT64_MAX / 2, sb, NMAX);
            CHECK(n >= 0 && n <= mt_lane_count(D.lane), "sweep: %d", n);
            for (int k = 0; k < n; k++)
                CHECK(sb[k].why == MT_LANE_QUIET, "sweep record: %d", sb[k].why);
            backs(sb, n, 1u << MT_LANE_QUIET);
        }
        int in_lane = 0;
        for (int i = 0; i < D.n; i++)
            in_lane += D.cl[i].slot >= 0;
        CHECK(mt_lane_count(D.lane) == in_lane, "count %d, %d in the lane",
              mt_lane_count(D.lane), in_lane);
        int64_t now = mono_ms();
        if (D.by_lane + D.by_us != last) {
            last = D.by_lane + D.by_us;
            last_progress = now;
        }
        CHECK(now - last_progress < 10000, "no answer for 10 s: lane %zu, ours %zu, %d ended",
              D.by_lane, D.by_us, atomic_load(&ended_count));
    }
}

static int scenario(int full, const char *lib, int direct, size_t calls, const char *cert,
                    const char *key, const char *ca) {
    init_frame();
    char err[512] = "";
    D.h = mt_open(lib, "my_timer", err, sizeof err);
    CHECK(D.h, "mt_open(%s): %s", lib, err);
    D.version = mt_bind(D.h, "version");
    CHECK(D.version >= 0, "mt_bind(version) = %d", D.version);
    /* {"config": {"name": "x"}} */
    static const uint8_t create[] = {0xa1, 0x66, 'c', 'o', 'n', 'f', 'i', 'g', 0xa1,
                                     0x64, 'n',  'a', 'm', 'e', 0x61, 'x'};
    CHECK(mt_create(D.h, create, sizeof create, 5000, direct, err, sizeof err) == 0,
          "mt_create: %s", err);
    CHECK(mt_quick_add(D.h, "version", D.version) == 0, "mt_quick_add");
    D.lane = mt_lane_new(D.h, NMAX, ID_BASE);
    CHECK(D.lane, "mt_lane_new");
    D.sctx = SSL_CTX_new(TLS_server_method());
    D.cctx = SSL_CTX_new(TLS_client_method());
    TLS_CHECK(D.sctx && D.cctx && SSL_CTX_use_certificate_chain_file(D.sctx, cert) == 1 &&
                  SSL_CTX_use_PrivateKey_file(D.sctx, key, SSL_FILETYPE_PEM) == 1 &&
                  SSL_CTX_load_verify_locations(D.cctx, ca, NULL) == 1,
              "the contexts (%s, %s, %s)", cert, key, ca);
    SSL_CTX_set_verify(D.cctx, SSL_VERIFY_PEER, NULL);
    for (int i = 0; i < NMAX; i++)
        D.owner[i] = -1;
    size_t total = 0;
    D.n = full ? 1 : NMAX;
    int64_t start = mono_ms();
    for (int i = 0; i < D.n; i++) {
        struct conn *c = &D.cl[i];
        c->full = full;
        c->alone = i == 0 ? ALONE : 0;
        c->calls = calls / NMAX + c->alone;
        total += c->calls;
        open_conn(c, i);
    }
    unsigned allowed = full ? 1u << MT_LANE_FULL | 1u << MT_LANE_EOF
                            : 1u << MT_LANE_AHEAD | 1u << MT_LANE_EOF | 1u << MT_LANE_QUIET;
    run_loop(allowed, !full);
    int64_t took = mono_ms() - start;
    size_t made = 0;
    for (int i = 0; i < D.n; i++) {
        struct conn *c = &D.cl[i];
        CHECK(pthread_join(c->thread, NULL) == 0, "pthread_join");
        CHECK(c->answered == c->made && (full || c->made == c->calls),
              "client %d read %zu answers of %zu calls", i, c->answered, c->made);
        made += c->made;
    }
    /* every call answered once: by the lane (each one a library call) or by us */
    CHECK(D.by_lane + D.by_us == made, "lane %zu + ours %zu != %zu calls", D.by_lane, D.by_us,
          made);
    mt_status gs;
    mt_get_status(D.h, &gs);
    CHECK(gs.queued == 0 && gs.submitted == gs.completed && gs.completed == D.by_lane,
          "glue: queued %" PRIu64 " submitted %" PRIu64 " completed %" PRIu64 ", lane %zu",
          gs.queued, gs.submitted, gs.completed, D.by_lane);
    CHECK(mt_lane_count(D.lane) == 0, "count %d at the end", mt_lane_count(D.lane));
    CHECK(mt_drain(D.h, D.buf, sizeof D.buf) == 0, "lane answers went to mt_drain");
    CHECK(mt_shutdown(D.h, 5000) == 0, "mt_shutdown");
    for (int i = 0; i < D.n; i++) {
        SSL_free(D.cl[i].srv);
        close(D.cl[i].sv[0]);
        close(D.cl[i].sv[1]);
    }
    SSL_CTX_free(D.sctx);
    SSL_CTX_free(D.cctx);
    printf("lane=%zu ours=%zu ahead=%zu quiet=%zu full=%zu rest_bytes=%zu held=%zu "
           "lone_turns=%zu round_turns=%zu ms=%" PRId64 "\n",
           D.by_lane, D.by_us, D.why_count[MT_LANE_AHEAD], D.why_count[MT_LANE_QUIET],
           D.why_count[MT_LANE_FULL], D.rest_bytes, D.held, D.lone_turns, D.round_turns, took);
    /* the paths this run is for were taken */
    CHECK(D.why_count[MT_LANE_EOF] == (size_t)D.n, "%zu ends", D.why_count[MT_LANE_EOF]);
    if (full) {
        CHECK(D.why_count[MT_LANE_FULL] > 0 && D.rest_bytes > 0, "no sealed rest handed back");
        printf("PASS full direct=%d calls=%zu\n", direct, made);
    } else {
        CHECK(D.why_count[MT_LANE_AHEAD] > 0, "no pipeline was handed back");
        CHECK(D.held > 0, "no session held plaintext when taken back");
        CHECK(D.lone_turns > 0, "the lane's only connection was never served on the spot");
        CHECK(D.round_turns > 0, "no turn served a connection twice (serve_busy)");
        printf("PASS stress direct=%d calls=%zu total=%zu\n", direct, made, total);
    }
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 8 && strcmp(argv[1], "stress") == 0)
        return scenario(0, argv[2], atoi(argv[3]), (size_t)strtoull(argv[4], NULL, 10), argv[5],
                        argv[6], argv[7]);
    if (argc >= 7 && strcmp(argv[1], "full") == 0)
        return scenario(1, argv[2], atoi(argv[3]), 0, argv[4], argv[5], argv[6]);
    fprintf(stderr,
            "usage: %s stress <lib> <direct> <calls> <cert> <key> <ca> |"
            " full <lib> <direct> <cert> <key> <ca>\n",
            argv[0]);
    return 2;
}

/*
 * loadgen.c - epoll load generator for the mytimerd framing.
 *
 * Modes (one per run):
 *   closed loop  (default)  : N connections, each keeps --depth requests in
 *                             flight, for --duration seconds after --warmup.
 *                             Latency is measured from the actual send.
 *   open loop    (--rate R) : R calls/s in total, spread evenly over the N
 *                             connections, each call sent at (or as soon as
 *                             possible after) its scheduled time; latency is
 *                             measured from the *scheduled* time, so a stalled
 *                             server is not hidden (coordinated omission).
 *   fixed count  (--count K): every connection sends K requests (pipelined up
 *                             to --depth) as soon as it is connected; reports
 *                             the wall time from the first connect() to the
 *                             last answer (burst and cold-start scenarios).
 *
 *   fan-out      (--fanout S): S more connections subscribe to on_echo_fired
 *                             (mytimerd.subscribe) and read events; once every
 *                             subscription is acknowledged, the --conns driver
 *                             connections make echo calls, closed loop (--depth)
 *                             or open loop (--rate), each message carrying its
 *                             send time. Counts events fired (echo calls sent
 *                             in the window and answered) and delivered (events
 *                             of those calls received, all subscribers), and
 *                             the delivery latency: the call's send time to the
 *                             event's arrival at a subscriber. After the window
 *                             it waits (--drain) for every answer and event.
 *                             A subscriber cut off (SlowSubscriber) or closed
 *                             and every missing event count as errors.
 *                             --stall-subs N: N subscribers read nothing after
 *                             their acknowledgement until the drain (to check
 *                             that a cut-off is seen).
 *
 *   handshakes   (--handshakes, needs --tls): closed loop of new connections;
 *                             each connects, does a full TLS handshake (no
 *                             session resumption), sends close_notify and
 *                             waits for the server to close, then starts
 *                             over. Counts completed cycles whose connect()
 *                             was in the measured window; latency is
 *                             connect() to the server's close.
 *
 * --tls speaks TLS 1.2+ (OpenSSL, non-blocking over the same epoll loop) on a
 * TCP target: --tls-ca FILE verifies the server (its certificate must name the
 * target address, or --tls-name), --tls-cert/--tls-key present a client
 * certificate, --tls-version 1.2|1.3 pins the version. The handshake is part
 * of connecting (before the measured window, except in --handshakes).
 *
 * --idle M opens M extra connections (blocking connects) that never send
 * anything and are held open for the whole run; with --wait-stdin the program
 * prints an "idle_ready" JSON line and waits for a line on stdin before the
 * measured phase (so a harness can sample the server's memory in between).
 *
 * Every response is verified: ret must be 0 (RET_OK) and the body must equal
 * the version reply (method version) or be the echo reply for the message
 * sent (method echo); anything else counts as a mismatch (an error).
 *
 * Output: one JSON line on stdout. --latency-out FILE writes every recorded
 * latency (microseconds, one per line). Targets must be unix sockets or
 * loopback TCP addresses.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#if defined(__has_include)
#if !__has_include(<openssl/ssl.h>)
#error "OpenSSL headers not found: install libssl-dev (Debian/Ubuntu) or openssl-devel"
#endif
#endif
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define NS 1000000000ull
#define MAX_BODY (16u << 20)
#define LAT_CAP (16u * 1024 * 1024) /* recorded samples at most (128 MiB) */
#define TIMER_TAG UINT64_MAX

enum { C_RETRY, C_CONNECTING, C_HANDSHAKE, C_OPEN, C_SHUTDOWN, C_DONE, C_DEAD };
enum { M_CLOSED, M_OPEN, M_COUNT, M_HANDSHAKES };

struct conn {
    int fd;
    int state;
    uint32_t events;
    uint8_t *in;
    size_t in_len, in_cap;
    uint8_t *out;
    size_t out_off, out_len, out_cap;
    uint64_t *q; /* timestamps of in-flight requests (FIFO ring) */
    size_t q_head, q_len, q_cap;
    uint64_t sent, answered;
    uint64_t next_sched;
    uint64_t t_connect; /* when this connection's connect() was started */
    SSL *ssl;           /* --tls */
    int wr_wants_w;     /* the last SSL_write wanted the socket writable */
    int rd_wants_w;     /* the last SSL_read wanted the socket writable */
    int sub;            /* --fanout: an event subscriber, not a caller */
    int acked;          /* --fanout: the subscription was acknowledged */
    int stalled;        /* --stall-subs: not reading until the drain */
    uint64_t ev_total;  /* --fanout: events received (from our calls) */
};

/* options */
static int o_mode = M_CLOSED;
static const char *o_unix, *o_host, *o_port;
static long o_conns = 1, o_depth = 1, o_count = 1, o_idle = 0, o_max_inflight = 4096;
static double o_duration = 5, o_warmup = 1, o_rate = 0, o_timeout = 10, o_drain = 2;
static const char *o_method = "version", *o_message = "hello over the wire", *o_lat_out;
static long o_delay_ms = 0;
static int o_wait_stdin = 0;
static int o_tls = 0, o_tls_version = 0;
static const char *o_tls_ca, *o_tls_cert, *o_tls_key, *o_tls_name;
static long o_subs = 0, o_stall_subs = 0; /* --fanout, --stall-subs */

/* state */
static struct conn *g_c;
static int g_ep, g_tfd = -1;
static uint8_t *g_req;
static size_t g_req_len;
static uint8_t g_expect[512];
static size_t g_expect_len;
static int g_is_echo;
static struct sockaddr_storage g_sa;
static socklen_t g_sa_len;
static uint64_t *g_lat;
static size_t g_lat_n, g_lat_cap;
static uint64_t g_rec_from, g_rec_to; /* record answers whose timestamp is in [from, to) */
static uint64_t g_answered_total, g_answered_window, g_mismatch, g_conn_errors,
    g_connect_fail, g_unanswered, g_dropped_lat;
static uint64_t g_first_connect, g_last_answer;
static int g_sending = 1;
static SSL_CTX *g_ssl_ctx;
static uint64_t g_tls_fail, g_handshakes;
static char g_tls_err[200], g_tls_proto[32], g_tls_cipher[64];
static volatile sig_atomic_t g_stop;
/* --fanout */
#define FO_PREFIX "fo-"
#define FO_MSG_LEN 19 /* "fo-" + 16 hex digits of the send time */
static long g_n;      /* connections in g_c: drivers [0, o_conns), subscribers after */
static size_t g_msg_off, g_exp_msg_off; /* where the message text sits in g_req / g_expect */
static uint8_t g_sub_req[128];
static size_t g_sub_req_len;
static uint64_t g_subs_acked, g_cut_off, g_ev_window, g_ev_total, g_ev_foreign, g_ev_bad;
static uint64_t *g_clat; /* the driver's call latencies (g_lat holds event deliveries) */
static size_t g_clat_n, g_clat_cap;

static void on_signal(int s) {
    (void)s;
    g_stop = 1;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS + (uint64_t)ts.tv_nsec;
}

static void die(const char *m) {
    perror(m);
    exit(1);
}

static void fail(const char *m) {
    fprintf(stderr, "loadgen: %s\n", m);
    exit(2);
}

static uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* --- tiny CBOR encoder (heads, text strings, ints) --- */
static size_t cbor_head(uint8_t *p, unsigned major, uint64_t v) {
    uint8_t m = (uint8_t)(major << 5);
    if (v < 24) {
        p[0] = m | (uint8_t)v;
        return 1;
    } else if (v <= 0xff) {
        p[0] = m | 24;
        p[1] = (uint8_t)v;
        return 2;
    } else if (v <= 0xffff) {
        p[0] = m | 25;
        p[1] = (uint8_t)(v >> 8);
        p[2] = (uint8_t)v;
        return 3;
    } else if (v <= 0xffffffffull) {
        p[0] = m | 26;
        put32(p + 1, (uint32_t)v);
        return 5;
    }
    p[0] = m | 27;
    for (int i = 0; i < 8; i++) p[1 + i] = (uint8_t)(v >> (56 - 8 * i));
    return 9;
}

static size_t cbor_text(uint8_t *p, const char *s) {
    size_t n = strlen(s);
    size_t h = cbor_head(p, 3, n);
    memcpy(p + h, s, n);
    return h + n;
}

static size_t cbor_int(uint8_t *p, long v) {
    if (v >= 0) return cbor_head(p, 0, (uint64_t)v);
    return cbor_head(p, 1, (uint64_t)(-(v + 1)));
}

static void build_request(void) {
    uint8_t payload[512];
    size_t pl = 0;
    if (!strcmp(o_method, "version")) {
        payload[pl++] = 0xa0;
        static const uint8_t vb[] = {0x70, 'n', 'i', 'm', '-', 't', 'i', 'm', 'e',
                                     'r', ' ', 'v', '0', '.', '1', '.', '0'};
        memcpy(g_expect, vb, sizeof vb);
        g_expect_len = sizeof vb;
    } else if (!strcmp(o_method, "echo")) {
        if (strlen(o_message) > 200) fail("--message too long (max 200 bytes)");
        if (o_subs > 0) o_message = FO_PREFIX "0000000000000000"; /* patched per call */
        g_is_echo = 1;
        payload[pl++] = 0xa1;
        pl += cbor_text(payload + pl, "req");
        payload[pl++] = 0xa2;
        pl += cbor_text(payload + pl, "message");
        pl += cbor_text(payload + pl, o_message);
        g_msg_off = pl - strlen(o_message);
        pl += cbor_text(payload + pl, "delayMs");
        pl += cbor_int(payload + pl, o_delay_ms);
        /* expected body prefix: {"echoed": msg, "timerName": <any text>} */
        size_t e = 0;
        g_expect[e++] = 0xa2;
        e += cbor_text(g_expect + e, "echoed");
        e += cbor_text(g_expect + e, o_message);
        g_exp_msg_off = e - strlen(o_message);
        e += cbor_text(g_expect + e, "timerName");
        g_expect_len = e;
    } else {
        fail("--method must be version or echo");
    }
    size_t ml = strlen(o_method);
    g_req_len = 8 + ml + pl;
    g_req = malloc(g_req_len);
    if (!g_req) die("malloc");
    put32(g_req, (uint32_t)ml);
    memcpy(g_req + 4, o_method, ml);
    put32(g_req + 4 + ml, (uint32_t)pl);
    memcpy(g_req + 8 + ml, payload, pl);
    g_msg_off += 8 + ml;
    if (o_subs > 0) { /* mytimerd.subscribe {"events": ["on_echo_fired"]} */
        uint8_t sp[64];
        size_t n = 0;
        sp[n++] = 0xa1;
        n += cbor_text(sp + n, "events");
        sp[n++] = 0x81;
        n += cbor_text(sp + n, "on_echo_fired");
        const char *m = "mytimerd.subscribe";
        size_t sl = strlen(m);
        put32(g_sub_req, (uint32_t)sl);
        memcpy(g_sub_req + 4, m, sl);
        put32(g_sub_req + 4 + sl, (uint32_t)n);
        memcpy(g_sub_req + 8 + sl, sp, n);
        g_sub_req_len = 8 + sl + n;
    }
}

/* --fanout: the send time as the 16 hex digits after FO_PREFIX */
static void put_hex_ts(uint8_t *p, uint64_t ts) {
    static const char hx[] = "0123456789abcdef";
    memcpy(p, FO_PREFIX, 3);
    for (int i = 0; i < 16; i++) p[3 + i] = (uint8_t)hx[(ts >> (60 - 4 * i)) & 15];
}

static int get_hex_ts(const uint8_t *p, size_t n, uint64_t *ts) {
    if (n != FO_MSG_LEN || memcmp(p, FO_PREFIX, 3) != 0) return 0;
    uint64_t v = 0;
    for (int i = 3; i < FO_MSG_LEN; i++) {
        uint8_t ch = p[i];
        unsigned d;
        if (ch >= '0' && ch <= '9') d = ch - '0';
        else if (ch >= 'a' && ch <= 'f') d = (unsigned)(ch - 'a' + 10);
        else return 0;
        v = (v << 4) | d;
    }
    *ts = v;
    return 1;
}

/* --- minimal CBOR reader (for event bodies) --- */
struct cur {
    const uint8_t *p, *end;
};

/* the head of the next item: major type and argument; 0 if malformed or indefinite */
static int cbor_get_head(struct cur *c, unsigned *major, uint64_t *arg) {
    if (c->p >= c->end) return 0;
    uint8_t b = *c->p++;
    *major = b >> 5;
    unsigned ai = b & 31;
    if (ai < 24) {
        *arg = ai;
        return 1;
    }
    if (ai > 27) return 0;
    size_t n = (size_t)1 << (ai - 24);
    if ((size_t)(c->end - c->p) < n) return 0;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) v = (v << 8) | c->p[i];
    c->p += n;
    *arg = v;
    return 1;
}

static int cbor_skip(struct cur *c, int depth) {
    unsigned major;
    uint64_t arg;
    if (depth > 16 || !cbor_get_head(c, &major, &arg)) return 0;
    switch (major) {
    case 0: case 1: case 7:
        return 1;
    case 2: case 3:
        if ((uint64_t)(c->end - c->p) < arg) return 0;
        c->p += arg;
        return 1;
    case 4: case 5:
        for (uint64_t i = 0; i < (major == 5 ? 2 * arg : arg); i++)
            if (!cbor_skip(c, depth + 1)) return 0;
        return 1;
    case 6:
        return cbor_skip(c, depth + 1);
    }
    return 0;
}

static int cbor_get_text(struct cur *c, const uint8_t **s, size_t *n) {
    unsigned major;
    uint64_t arg;
    if (!cbor_get_head(c, &major, &arg) || major != 3 || (uint64_t)(c->end - c->p) < arg) return 0;
    *s = c->p;
    *n = (size_t)arg;
    c->p += arg;
    return 1;
}

static int text_is(const uint8_t *s, size_t n, const char *want) {
    return n == strlen(want) && memcmp(s, want, n) == 0;
}

/* an event body {"eventType": "on_echo_fired", "payload": {"message": m, ...}}, keys
   in any order: 1 and *msg / *msg_n set; 0 if it is anything else */
static int parse_event(const uint8_t *b, size_t n, const uint8_t **msg, size_t *msg_n) {
    struct cur c = {b, b + n};
    unsigned major;
    uint64_t arg;
    int type_ok = 0, have_msg = 0;
    if (!cbor_get_head(&c, &major, &arg) || major != 5) return 0;
    for (uint64_t i = 0; i < arg; i++) {
        const uint8_t *k, *v;
        size_t kn, vn;
        if (!cbor_get_text(&c, &k, &kn)) return 0;
        if (text_is(k, kn, "eventType")) {
            if (!cbor_get_text(&c, &v, &vn)) return 0;
            type_ok = text_is(v, vn, "on_echo_fired");
        } else if (text_is(k, kn, "payload")) {
            unsigned pm;
            uint64_t pn;
            if (!cbor_get_head(&c, &pm, &pn) || pm != 5) return 0;
            for (uint64_t j = 0; j < pn; j++) {
                if (!cbor_get_text(&c, &k, &kn)) return 0;
                if (text_is(k, kn, "message")) {
                    if (!cbor_get_text(&c, msg, msg_n)) return 0;
                    have_msg = 1;
                } else if (!cbor_skip(&c, 1)) {
                    return 0;
                }
            }
        } else if (!cbor_skip(&c, 1)) {
            return 0;
        }
    }
    return type_ok && have_msg && c.p == c.end;
}

static int body_ok(int32_t ret, const uint8_t *b, uint32_t n) {
    if (ret != 0) return 0;
    if (!g_is_echo) return n == g_expect_len && memcmp(b, g_expect, n) == 0;
    if (n < g_expect_len + 1 || memcmp(b, g_expect, g_expect_len) != 0) return 0;
    /* the rest must be exactly one text string */
    const uint8_t *p = b + g_expect_len;
    size_t rest = n - g_expect_len;
    if ((p[0] >> 5) != 3) return 0;
    uint8_t ai = p[0] & 31;
    uint64_t len;
    size_t h;
    if (ai < 24) {
        len = ai;
        h = 1;
    } else if (ai == 24 && rest >= 2) {
        len = p[1];
        h = 2;
    } else if (ai == 25 && rest >= 3) {
        len = ((uint64_t)p[1] << 8) | p[2];
        h = 3;
    } else if (ai == 26 && rest >= 5) {
        len = be32(p + 1);
        h = 5;
    } else {
        return 0;
    }
    return h + len == rest;
}

/* --- addresses --- */
static void resolve_target(void) {
    memset(&g_sa, 0, sizeof g_sa);
    if (o_unix) {
        struct sockaddr_un *su = (struct sockaddr_un *)&g_sa;
        if (strlen(o_unix) >= sizeof su->sun_path) fail("unix path too long");
        su->sun_family = AF_UNIX;
        strcpy(su->sun_path, o_unix);
        g_sa_len = sizeof *su;
        return;
    }
    if (!o_host || !o_port) fail("need --unix PATH or --tcp HOST PORT");
    const char *host = strcmp(o_host, "localhost") == 0 ? "127.0.0.1" : o_host;
    int port = atoi(o_port);
    if (port <= 0 || port > 65535) fail("bad port");
    struct sockaddr_in *s4 = (struct sockaddr_in *)&g_sa;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&g_sa;
    if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
        if ((ntohl(s4->sin_addr.s_addr) >> 24) != 127) fail("only loopback TCP targets (127.0.0.0/8)");
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        g_sa_len = sizeof *s4;
    } else if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
        if (!IN6_IS_ADDR_LOOPBACK(&s6->sin6_addr)) fail("only loopback TCP targets (::1)");
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        g_sa_len = sizeof *s6;
    } else {
        fail("bad host (numeric loopback address or localhost)");
    }
}

/* --- connection plumbing --- */
static void set_events(struct conn *c, uint32_t ev) {
    if (c->events == ev) return;
    struct epoll_event e = {.events = ev, .data.u64 = (uint64_t)(c - g_c)};
    if (epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &e) == 0) c->events = ev;
}

static void conn_close(struct conn *c) {
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) {
        epoll_ctl(g_ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->wr_wants_w = c->rd_wants_w = 0;
}

static void conn_kill(struct conn *c) {
    if (c->state == C_DEAD) return;
    if (c->state == C_OPEN || c->state == C_CONNECTING || c->state == C_HANDSHAKE)
        g_conn_errors += c->q_len;
    conn_close(c);
    c->q_len = 0;
    c->state = C_DEAD;
}

/* --- TLS --- */
static void tls_note_error(const char *where) {
    g_tls_fail++;
    if (g_tls_err[0]) return; /* keep the first one */
    unsigned long e = ERR_peek_error();
    char buf[160];
    if (e)
        ERR_error_string_n(e, buf, sizeof buf);
    else
        snprintf(buf, sizeof buf, "%s", errno ? strerror(errno) : "connection closed");
    snprintf(g_tls_err, sizeof g_tls_err, "%s: %s", where, buf);
    for (char *p = g_tls_err; *p; p++)
        if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20) *p = '\'';
}

static void tls_init(void) {
    g_ssl_ctx = SSL_CTX_new(TLS_client_method());
    if (!g_ssl_ctx) fail("SSL_CTX_new failed");
    int lo = o_tls_version == 13 ? TLS1_3_VERSION : TLS1_2_VERSION;
    int hi = o_tls_version == 12 ? TLS1_2_VERSION : 0;
    if (!SSL_CTX_set_min_proto_version(g_ssl_ctx, lo) ||
        !SSL_CTX_set_max_proto_version(g_ssl_ctx, hi))
        fail("cannot set the TLS version range");
    /* the out buffer moves and grows between retries of a partial SSL_write */
    SSL_CTX_set_mode(g_ssl_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_session_cache_mode(g_ssl_ctx, SSL_SESS_CACHE_OFF); /* every handshake is full */
#ifdef SSL_OP_IGNORE_UNEXPECTED_EOF
    SSL_CTX_set_options(g_ssl_ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
#endif
    if (o_tls_ca) {
        if (SSL_CTX_load_verify_locations(g_ssl_ctx, o_tls_ca, NULL) != 1) fail("cannot load --tls-ca");
        SSL_CTX_set_verify(g_ssl_ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(g_ssl_ctx, SSL_VERIFY_NONE, NULL);
    }
    if (o_tls_cert || o_tls_key) {
        if (!o_tls_cert || !o_tls_key) fail("--tls-cert and --tls-key go together");
        if (SSL_CTX_use_certificate_chain_file(g_ssl_ctx, o_tls_cert) != 1) fail("cannot load --tls-cert");
        if (SSL_CTX_use_PrivateKey_file(g_ssl_ctx, o_tls_key, SSL_FILETYPE_PEM) != 1)
            fail("cannot load --tls-key");
        if (SSL_CTX_check_private_key(g_ssl_ctx) != 1) fail("--tls-key does not match --tls-cert");
    }
}

/* the TCP connection is up: start the handshake (or, without TLS, it is open) */
static void tls_start(struct conn *c);
static void handshake_step(struct conn *c);

static void start_connect(struct conn *c) {
    if (c->fd < 0) {
        c->fd = socket(g_sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c->fd < 0) {
            g_connect_fail++;
            c->state = C_DEAD;
            return;
        }
        if (g_sa.ss_family != AF_UNIX) {
            int one = 1;
            setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        }
    }
    c->t_connect = now_ns();
    if (!g_first_connect) g_first_connect = c->t_connect;
    int r = connect(c->fd, (struct sockaddr *)&g_sa, g_sa_len);
    uint32_t ev;
    if (r == 0) {
        c->state = C_OPEN;
        ev = EPOLLIN;
    } else if (errno == EINPROGRESS) {
        c->state = C_CONNECTING;
        ev = EPOLLOUT;
    } else if (errno == EAGAIN) { /* unix socket backlog full: retry later */
        c->state = C_RETRY;
        return;
    } else {
        g_connect_fail++;
        close(c->fd);
        c->fd = -1;
        c->state = C_DEAD;
        return;
    }
    struct epoll_event e = {.events = ev, .data.u64 = (uint64_t)(c - g_c)};
    if (epoll_ctl(g_ep, EPOLL_CTL_ADD, c->fd, &e) < 0) die("epoll_ctl add");
    c->events = ev;
    if (c->state == C_OPEN && o_tls) tls_start(c);
}

static void q_push(struct conn *c, uint64_t ts) {
    if (c->q_len == c->q_cap) {
        size_t ncap = c->q_cap ? c->q_cap * 2 : 64;
        uint64_t *n = malloc(ncap * sizeof *n);
        if (!n) die("malloc");
        for (size_t i = 0; i < c->q_len; i++) n[i] = c->q[(c->q_head + i) % c->q_cap];
        free(c->q);
        c->q = n;
        c->q_cap = ncap;
        c->q_head = 0;
    }
    c->q[(c->q_head + c->q_len) % c->q_cap] = ts;
    c->q_len++;
}

static uint64_t q_pop(struct conn *c) {
    uint64_t ts = c->q[c->q_head];
    c->q_head = (c->q_head + 1) % c->q_cap;
    c->q_len--;
    return ts;
}

static void enqueue_bytes(struct conn *c, const uint8_t *req, size_t req_len, uint64_t ts) {
    if (c->out_off > 0 && c->out_off == c->out_len) c->out_off = c->out_len = 0;
    if (c->out_len + req_len > c->out_cap) {
        if (c->out_off > 0) {
            memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
            c->out_len -= c->out_off;
            c->out_off = 0;
        }
        size_t cap = c->out_cap ? c->out_cap : 4096;
        while (cap < c->out_len + req_len) cap *= 2;
        if (cap != c->out_cap) {
            uint8_t *n = realloc(c->out, cap);
            if (!n) die("realloc");
            c->out = n;
            c->out_cap = cap;
        }
    }
    memcpy(c->out + c->out_len, req, req_len);
    c->out_len += req_len;
    q_push(c, ts);
    c->sent++;
}

static void enqueue(struct conn *c, uint64_t ts) {
    enqueue_bytes(c, g_req, g_req_len, ts);
    /* --fanout: the message carries the send time, for the subscribers' latency */
    if (o_subs > 0) put_hex_ts(c->out + c->out_len - g_req_len + g_msg_off, ts);
}

/* send/recv, plain or TLS: > 0 bytes, 0 end of stream, -1 with errno (EAGAIN: try later) */
static ssize_t conn_send(struct conn *c, const uint8_t *b, size_t n) {
    if (!c->ssl) return send(c->fd, b, n, MSG_NOSIGNAL);
    ERR_clear_error();
    int r = SSL_write(c->ssl, b, n > INT32_MAX ? INT32_MAX : (int)n);
    c->wr_wants_w = 0;
    if (r > 0) return r;
    switch (SSL_get_error(c->ssl, r)) {
    case SSL_ERROR_WANT_WRITE:
        c->wr_wants_w = 1;
        /* fall through */
    case SSL_ERROR_WANT_READ:
        errno = EAGAIN;
        return -1;
    default:
        tls_note_error("SSL_write");
        errno = EPIPE;
        return -1;
    }
}

static ssize_t conn_recv(struct conn *c, uint8_t *b, size_t n) {
    if (!c->ssl) return recv(c->fd, b, n, 0);
    ERR_clear_error();
    int r = SSL_read(c->ssl, b, n > INT32_MAX ? INT32_MAX : (int)n);
    c->rd_wants_w = 0;
    if (r > 0) return r;
    switch (SSL_get_error(c->ssl, r)) {
    case SSL_ERROR_WANT_WRITE:
        c->rd_wants_w = 1;
        /* fall through */
    case SSL_ERROR_WANT_READ:
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        if (ERR_peek_error() == 0 && errno == 0) return 0; /* EOF without close_notify */
        /* fall through */
    default:
        tls_note_error("SSL_read");
        errno = ECONNRESET;
        return -1;
    }
}

/* what to wait for on an open connection */
static void open_events(struct conn *c) {
    int pending = c->out_off < c->out_len;
    int want_out = c->ssl ? (pending && c->wr_wants_w) || c->rd_wants_w : pending;
    set_events(c, EPOLLIN | (want_out ? EPOLLOUT : 0));
}

static void flush(struct conn *c) {
    if (c->state != C_OPEN) return;
    while (c->out_off < c->out_len) {
        ssize_t n = conn_send(c, c->out + c->out_off, c->out_len - c->out_off);
        if (n > 0) {
            c->out_off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else {
            conn_kill(c);
            return;
        }
    }
    open_events(c);
}

static void lat_push(uint64_t **v, size_t *len, size_t *cap, uint64_t lat) {
    if (*len == *cap) {
        if (*cap >= LAT_CAP) {
            g_dropped_lat++;
            return;
        }
        size_t ncap = *cap ? *cap * 2 : 65536;
        uint64_t *n = realloc(*v, ncap * sizeof *n);
        if (!n) {
            g_dropped_lat++;
            return;
        }
        *v = n;
        *cap = ncap;
    }
    (*v)[(*len)++] = lat;
}

static void record(uint64_t ts, uint64_t t) {
    if (ts < g_rec_from || ts >= g_rec_to) return;
    g_answered_window++;
    /* --fanout: g_lat is for event deliveries; the calls' own go to g_clat */
    if (o_subs > 0)
        lat_push(&g_clat, &g_clat_n, &g_clat_cap, t > ts ? t - ts : 0);
    else
        lat_push(&g_lat, &g_lat_n, &g_lat_cap, t > ts ? t - ts : 0);
}

/* --fanout: one frame on a subscriber connection */
static int sub_frame(struct conn *c, int32_t ret, const uint8_t *b, uint32_t n, uint64_t t) {
    if (!c->acked) { /* the subscription's answer: {"subscribed": [...]} */
        if (c->q_len) q_pop(c);
        if (ret != 0 || n < 12 || memcmp(b, "\xa1\x6asubscribed", 12) != 0) {
            g_mismatch++;
            return 0;
        }
        c->acked = 1;
        g_subs_acked++;
        if (c - g_c < o_conns + o_stall_subs) c->stalled = 1; /* stops reading after this frame */
        return 1;
    }
    if (ret != 0) { /* SlowSubscriber (or any error) is its last frame */
        if (n >= 14 && memmem(b, n, "SlowSubscriber", 14))
            g_cut_off++;
        else
            g_mismatch++;
        return 0;
    }
    const uint8_t *msg = NULL;
    size_t mn = 0;
    uint64_t ts;
    if (!parse_event(b, n, &msg, &mn)) {
        g_ev_bad++; /* not an on_echo_fired event body */
        return 1;
    }
    if (!get_hex_ts(msg, mn, &ts)) {
        g_ev_foreign++; /* an echo someone else made */
        return 1;
    }
    c->ev_total++;
    g_ev_total++;
    if (ts >= g_rec_from && ts < g_rec_to) {
        g_ev_window++;
        lat_push(&g_lat, &g_lat_n, &g_lat_cap, t > ts ? t - ts : 0);
    }
    return 1;
}

/* the closed loop / count mode refill after answers */
static void refill(struct conn *c, uint64_t t) {
    if (!g_sending || c->state != C_OPEN || c->sub) return;
    if (o_mode == M_CLOSED) {
        while ((long)c->q_len < o_depth) enqueue(c, t);
    } else if (o_mode == M_COUNT) {
        while ((long)c->q_len < o_depth && (long)c->sent < o_count) enqueue(c, t);
    }
}

static void on_readable(struct conn *c) {
    /* TLS: what OpenSSL already took off the socket must be read now, epoll will not say so */
    for (int rounds = 0; rounds < 8 || (c->ssl && SSL_has_pending(c->ssl)); rounds++) {
        if (c->in_cap - c->in_len < 4096) {
            size_t cap = c->in_cap ? c->in_cap * 2 : 16384;
            uint8_t *n = realloc(c->in, cap);
            if (!n) die("realloc");
            c->in = n;
            c->in_cap = cap;
        }
        errno = 0;
        ssize_t n = conn_recv(c, c->in + c->in_len, c->in_cap - c->in_len);
        if (n == 0) {
            conn_kill(c);
            return;
        }
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            conn_kill(c);
            return;
        }
        c->in_len += (size_t)n;
        uint64_t t = now_ns();
        size_t pos = 0;
        while (c->in_len - pos >= 8) {
            int32_t ret = (int32_t)be32(c->in + pos);
            uint32_t blen = be32(c->in + pos + 4);
            if (blen > MAX_BODY) {
                g_mismatch++;
                conn_kill(c);
                return;
            }
            if (c->in_len - pos < 8 + (size_t)blen) break;
            if (c->sub) {
                if (!sub_frame(c, ret, c->in + pos + 8, blen, t)) {
                    conn_kill(c);
                    return;
                }
                pos += 8 + (size_t)blen;
                continue;
            }
            if (c->q_len == 0) { /* answer to nothing we asked */
                g_mismatch++;
                conn_kill(c);
                return;
            }
            uint64_t ts = q_pop(c);
            c->answered++;
            g_answered_total++;
            g_last_answer = t;
            if (o_subs > 0) put_hex_ts(g_expect + g_exp_msg_off, ts);
            if (!body_ok(ret, c->in + pos + 8, blen))
                g_mismatch++;
            else
                record(ts, t);
            pos += 8 + (size_t)blen;
        }
        if (pos) {
            memmove(c->in, c->in + pos, c->in_len - pos);
            c->in_len -= pos;
        }
        if (c->stalled) {
            set_events(c, 0);
            return;
        }
        refill(c, t);
        if (o_mode == M_COUNT && (long)c->answered >= o_count) {
            c->state = C_DONE;
            conn_close(c);
            return;
        }
        if ((size_t)n < 4096 && !(c->ssl && SSL_has_pending(c->ssl))) break;
    }
    flush(c);
}

static void on_connected(struct conn *c) {
    int err = 0;
    socklen_t l = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0 || err != 0) {
        g_connect_fail++;
        conn_kill(c);
        return;
    }
    c->state = C_OPEN;
    if (o_tls)
        tls_start(c);
    else
        set_events(c, EPOLLIN);
}

static void tls_start(struct conn *c) {
    c->ssl = SSL_new(g_ssl_ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1) {
        tls_note_error("SSL_new");
        conn_kill(c);
        return;
    }
    const char *name = o_tls_name ? o_tls_name : o_host;
    struct in6_addr ip;
    int is_ip = inet_pton(AF_INET, name, &ip) == 1 || inet_pton(AF_INET6, name, &ip) == 1;
    if (!is_ip) SSL_set_tlsext_host_name(c->ssl, name); /* SNI: names only */
    if (o_tls_ca) {
        X509_VERIFY_PARAM *vp = SSL_get0_param(c->ssl);
        if (is_ip ? X509_VERIFY_PARAM_set1_ip_asc(vp, name) != 1 : SSL_set1_host(c->ssl, name) != 1) {
            tls_note_error("server name check");
            conn_kill(c);
            return;
        }
    }
    SSL_set_connect_state(c->ssl);
    c->state = C_HANDSHAKE;
    handshake_step(c);
}

/* --handshakes: one cycle is over (ok or not); start the next one */
static void hs_next(struct conn *c) {
    conn_close(c);
    c->q_len = 0;
    c->state = C_RETRY;
    if (g_sending && !g_stop)
        start_connect(c);
    else
        c->state = C_DONE;
}

/* --handshakes: close_notify sent; wait for the server's close */
static void shutdown_step(struct conn *c) {
    ERR_clear_error();
    errno = 0;
    int r = SSL_shutdown(c->ssl);
    /* 1: the server's close_notify came, or a fatal alert (a refused client
       certificate in TLS 1.3 comes after the client's handshake is done),
       which leaves its reason in the error queue */
    if (r == 1 && ERR_peek_error() == 0) goto done;
    if (r == 1) {
        tls_note_error("server closed with an alert");
        hs_next(c);
        return;
    }
    if (r == 0) {           /* ours is out; wait for the server */
        set_events(c, EPOLLIN);
        return;
    }
    switch (SSL_get_error(c->ssl, r)) {
    case SSL_ERROR_WANT_READ:
        set_events(c, EPOLLIN);
        return;
    case SSL_ERROR_WANT_WRITE:
        set_events(c, EPOLLOUT);
        return;
    case SSL_ERROR_ZERO_RETURN:
        goto done;
    case SSL_ERROR_SYSCALL:
        if (ERR_peek_error() == 0 && (errno == 0 || errno == ECONNRESET || errno == EPIPE))
            goto done; /* the server closed the TCP connection: fine */
        /* fall through */
    default:
        tls_note_error("SSL_shutdown");
        hs_next(c);
        return;
    }
done:
    g_answered_total++;
    g_last_answer = now_ns();
    record(c->t_connect, g_last_answer);
    hs_next(c);
}

static void handshake_step(struct conn *c) {
    ERR_clear_error();
    errno = 0;
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        g_handshakes++;
        if (!g_tls_proto[0]) {
            snprintf(g_tls_proto, sizeof g_tls_proto, "%s", SSL_get_version(c->ssl));
            snprintf(g_tls_cipher, sizeof g_tls_cipher, "%s", SSL_get_cipher_name(c->ssl));
        }
        if (o_mode == M_HANDSHAKES) {
            c->state = C_SHUTDOWN;
            shutdown_step(c);
            return;
        }
        c->state = C_OPEN;
        set_events(c, EPOLLIN);
        return;
    }
    switch (SSL_get_error(c->ssl, r)) {
    case SSL_ERROR_WANT_READ:
        set_events(c, EPOLLIN);
        return;
    case SSL_ERROR_WANT_WRITE:
        set_events(c, EPOLLOUT);
        return;
    default:
        tls_note_error("handshake");
        if (o_mode == M_HANDSHAKES)
            hs_next(c);
        else
            conn_kill(c);
    }
}

static void arm_timer(uint64_t at) {
    struct itimerspec its;
    memset(&its, 0, sizeof its);
    if (at == 0) at = 1;
    its.it_value.tv_sec = (time_t)(at / NS);
    its.it_value.tv_nsec = (long)(at % NS);
    timerfd_settime(g_tfd, TFD_TIMER_ABSTIME, &its, NULL);
}

static void poll_events(int timeout_ms) {
    struct epoll_event evs[512];
    int n = epoll_wait(g_ep, evs, 512, timeout_ms);
    if (n < 0) {
        if (errno == EINTR) return;
        die("epoll_wait");
    }
    for (int i = 0; i < n; i++) {
        if (evs[i].data.u64 == TIMER_TAG) {
            uint64_t x;
            if (read(g_tfd, &x, sizeof x) < 0) { /* spurious: ignore */
            }
            continue;
        }
        struct conn *c = &g_c[evs[i].data.u64];
        if (c->fd < 0) continue;
        uint32_t e = evs[i].events;
        if (c->state == C_CONNECTING || c->state == C_HANDSHAKE) {
            if (c->state == C_CONNECTING) {
                if (e & (EPOLLOUT | EPOLLERR | EPOLLHUP)) {
                    on_connected(c);
                    if (c->state == C_DEAD && o_mode == M_HANDSHAKES) hs_next(c);
                }
            } else {
                handshake_step(c);
            }
            if (c->state == C_OPEN && o_mode == M_COUNT) {
                refill(c, now_ns());
                flush(c);
            }
            continue;
        }
        if (c->state == C_SHUTDOWN) {
            shutdown_step(c);
            continue;
        }
        if (c->state != C_OPEN) continue;
        if ((e & (EPOLLIN | EPOLLERR | EPOLLHUP)) || (c->rd_wants_w && (e & EPOLLOUT))) on_readable(c);
        if (c->state == C_OPEN && (e & EPOLLOUT)) flush(c);
    }
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(double p) {
    if (!g_lat_n) return -1;
    size_t i = (size_t)(p / 100.0 * (double)(g_lat_n - 1) + 0.5);
    if (i >= g_lat_n) i = g_lat_n - 1;
    return (double)g_lat[i] / 1000.0;
}

static int *g_idle_fds;
static long g_idle_ok;

static void open_idle(void) {
    g_idle_fds = calloc((size_t)o_idle, sizeof *g_idle_fds);
    if (!g_idle_fds) die("calloc");
    uint64_t t0 = now_ns(), limit = t0 + (uint64_t)(o_timeout * 3 * NS);
    long failed = 0;
    for (long i = 0; i < o_idle; i++) {
        g_idle_fds[i] = -1;
        if (g_stop || now_ns() > limit) {
            failed++;
            continue;
        }
        int fd = socket(g_sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            failed++;
            continue;
        }
        struct timeval tv = {.tv_sec = 5, .tv_usec = 0};
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        if (connect(fd, (struct sockaddr *)&g_sa, g_sa_len) < 0) {
            close(fd);
            failed++;
            continue;
        }
        g_idle_fds[i] = fd;
        g_idle_ok++;
    }
    printf("{\"event\":\"idle_ready\",\"idle\":%ld,\"failed\":%ld,\"ms\":%.1f}\n", g_idle_ok, failed,
           (double)(now_ns() - t0) / 1e6);
    fflush(stdout);
}

static long idle_dropped(void) {
    long dropped = 0;
    for (long i = 0; i < o_idle; i++) {
        if (g_idle_fds[i] < 0) continue;
        struct pollfd p = {.fd = g_idle_fds[i], .events = POLLIN};
        if (poll(&p, 1, 0) == 1) dropped++; /* EOF/reset/data on a silent connection */
    }
    return dropped;
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen (--unix PATH | --tcp HOST PORT) [--conns N] [--depth D]\n"
            "               [--duration S] [--warmup S]          closed loop (default)\n"
            "               [--rate CALLS_PER_S] [--drain S]      open loop\n"
            "               [--count K] [--timeout S]             fixed count per connection\n"
            "               [--method version|echo] [--message TEXT] [--delay-ms MS]\n"
            "               [--idle M [--wait-stdin]] [--max-inflight N] [--latency-out FILE]\n"
            "               [--fanout S [--stall-subs N]]   S event subscribers (N of them do not\n"
            "                read until the drain: a test of the cut-off count); --conns drivers\n"
            "                make echo calls\n"
            "               [--tls [--tls-ca FILE] [--tls-name NAME] [--tls-cert FILE --tls-key FILE]\n"
            "                [--tls-version 1.2|1.3] [--handshakes]]   TLS (TCP targets only)\n");
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (!strcmp(a, "--unix") && more) o_unix = argv[++i];
        else if (!strcmp(a, "--tcp") && i + 2 < argc) { o_host = argv[++i]; o_port = argv[++i]; }
        else if (!strcmp(a, "--conns") && more) o_conns = atol(argv[++i]);
        else if (!strcmp(a, "--depth") && more) o_depth = atol(argv[++i]);
        else if (!strcmp(a, "--duration") && more) o_duration = atof(argv[++i]);
        else if (!strcmp(a, "--warmup") && more) o_warmup = atof(argv[++i]);
        else if (!strcmp(a, "--rate") && more) { o_rate = atof(argv[++i]); o_mode = M_OPEN; }
        else if (!strcmp(a, "--drain") && more) o_drain = atof(argv[++i]);
        else if (!strcmp(a, "--count") && more) { o_count = atol(argv[++i]); o_mode = M_COUNT; }
        else if (!strcmp(a, "--timeout") && more) o_timeout = atof(argv[++i]);
        else if (!strcmp(a, "--method") && more) o_method = argv[++i];
        else if (!strcmp(a, "--message") && more) o_message = argv[++i];
        else if (!strcmp(a, "--delay-ms") && more) o_delay_ms = atol(argv[++i]);
        else if (!strcmp(a, "--idle") && more) o_idle = atol(argv[++i]);
        else if (!strcmp(a, "--wait-stdin")) o_wait_stdin = 1;
        else if (!strcmp(a, "--max-inflight") && more) o_max_inflight = atol(argv[++i]);
        else if (!strcmp(a, "--latency-out") && more) o_lat_out = argv[++i];
        else if (!strcmp(a, "--tls")) o_tls = 1;
        else if (!strcmp(a, "--tls-ca") && more) o_tls_ca = argv[++i];
        else if (!strcmp(a, "--tls-cert") && more) o_tls_cert = argv[++i];
        else if (!strcmp(a, "--tls-key") && more) o_tls_key = argv[++i];
        else if (!strcmp(a, "--tls-name") && more) o_tls_name = argv[++i];
        else if (!strcmp(a, "--tls-version") && more) {
            const char *v = argv[++i];
            o_tls_version = !strcmp(v, "1.2") ? 12 : !strcmp(v, "1.3") ? 13 : -1;
        }
        else if (!strcmp(a, "--handshakes")) o_mode = M_HANDSHAKES;
        else if (!strcmp(a, "--fanout") && more) o_subs = atol(argv[++i]);
        else if (!strcmp(a, "--stall-subs") && more) o_stall_subs = atol(argv[++i]);
        else if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(); return 0; }
        else { usage(); return 2; }
    }
    if (o_conns < 1 || o_conns > 100000) fail("--conns out of range");
    if (o_depth < 1 || o_depth > 100000) fail("--depth out of range");
    if (o_idle < 0 || o_idle > 1000000) fail("--idle out of range");
    if (o_duration <= 0 || o_duration > 600 || o_warmup < 0 || o_warmup > 600) fail("bad --duration/--warmup");
    if (o_timeout <= 0 || o_timeout > 600 || o_drain < 0 || o_drain > 60) fail("bad --timeout/--drain");
    if (o_mode == M_OPEN && (o_rate <= 0 || o_rate > 10e6)) fail("bad --rate");
    if (o_mode == M_COUNT && (o_count < 1 || o_count > 100000000)) fail("bad --count");
    if (o_max_inflight < 1) fail("bad --max-inflight");
    if (o_tls_version < 0) fail("--tls-version must be 1.2 or 1.3");
    if ((o_tls_ca || o_tls_cert || o_tls_key || o_tls_name || o_tls_version) && !o_tls)
        fail("--tls-* options need --tls");
    if (o_tls && o_unix) fail("--tls needs a --tcp target");
    if (o_mode == M_HANDSHAKES && !o_tls) fail("--handshakes needs --tls");
    if (o_subs < 0 || o_subs > 100000) fail("--fanout out of range");
    if (o_stall_subs < 0 || o_stall_subs > o_subs) fail("--stall-subs out of range");
    if (o_subs > 0) {
        if (o_mode != M_CLOSED && o_mode != M_OPEN) fail("--fanout goes with the closed or open loop");
        o_method = "echo";
    }

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0); /* precise open-loop send times */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    build_request();
    resolve_target();
    if (o_tls) tls_init();
    g_ep = epoll_create1(EPOLL_CLOEXEC);
    if (g_ep < 0) die("epoll_create1");
    g_tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (g_tfd < 0) die("timerfd_create");
    struct epoll_event te = {.events = EPOLLIN, .data.u64 = TIMER_TAG};
    if (epoll_ctl(g_ep, EPOLL_CTL_ADD, g_tfd, &te) < 0) die("epoll_ctl timer");

    if (o_idle > 0) {
        open_idle();
        if (o_wait_stdin) {
            char line[64];
            if (!fgets(line, sizeof line, stdin)) { /* EOF: go on anyway */
            }
        }
    }

    g_n = o_conns + o_subs;
    g_c = calloc((size_t)g_n, sizeof *g_c);
    if (!g_c) die("calloc");
    for (long i = 0; i < g_n; i++) {
        g_c[i].fd = -1;
        g_c[i].sub = i >= o_conns;
    }

    uint64_t t_begin = now_ns();
    uint64_t connect_deadline = t_begin + (uint64_t)(o_timeout * NS);
    g_rec_from = 0;
    g_rec_to = UINT64_MAX;
    for (long i = 0; i < g_n; i++) {
        start_connect(&g_c[i]);
        if (o_mode == M_COUNT && g_c[i].state == C_OPEN) {
            refill(&g_c[i], now_ns());
            flush(&g_c[i]);
        }
    }

    uint64_t t_start = 0, t_end = 0, hard_end = 0;
    double elapsed_s = 0;
    if (o_mode == M_COUNT) {
        hard_end = t_begin + (uint64_t)(o_timeout * NS);
        for (long iter = 0; !g_stop; iter++) {
            long pending = 0, retry = 0;
            for (long i = 0; i < o_conns; i++) {
                struct conn *c = &g_c[i];
                if (c->state == C_RETRY) {
                    start_connect(c);
                    if (c->state == C_OPEN) {
                        refill(c, now_ns());
                        flush(c);
                    }
                }
                if (c->state == C_RETRY) retry++;
                if (c->state == C_RETRY || c->state == C_CONNECTING || c->state == C_HANDSHAKE ||
                    c->state == C_OPEN)
                    pending++;
            }
            if (!pending || now_ns() >= hard_end) break;
            poll_events(retry ? 1 : 50);
        }
        for (long i = 0; i < o_conns; i++) {
            struct conn *c = &g_c[i];
            if (c->state != C_DONE) g_unanswered += (uint64_t)(o_count - (long)c->answered);
        }
        t_start = g_first_connect;
        t_end = g_last_answer ? g_last_answer : now_ns();
        elapsed_s = (double)(t_end - t_start) / 1e9;
    } else if (o_mode == M_HANDSHAKES) {
        /* every connection loops connect -> handshake -> close; the first ones are under way */
        t_start = t_begin;
        g_rec_from = t_start + (uint64_t)(o_warmup * NS);
        g_rec_to = g_rec_from + (uint64_t)(o_duration * NS);
        t_end = g_rec_to;
        while (!g_stop) {
            uint64_t t = now_ns();
            if (t >= t_end) break;
            long retry = 0;
            for (long i = 0; i < o_conns; i++) {
                struct conn *c = &g_c[i];
                if (c->state == C_RETRY) start_connect(c);
                if (c->state == C_RETRY) retry++;
            }
            uint64_t left_ms = (t_end - t) / 1000000 + 1;
            poll_events(retry ? 1 : left_ms > 100 ? 100 : (int)left_ms);
        }
        g_sending = 0;
        /* let the cycles under way finish (not counted), so the server sees no
           handshake abandoned halfway */
        uint64_t drain_end = now_ns() + (uint64_t)(o_drain * NS);
        while (!g_stop && now_ns() < drain_end) {
            long busy = 0;
            for (long i = 0; i < o_conns; i++) {
                int st = g_c[i].state;
                if (st == C_RETRY) g_c[i].state = C_DONE;
                if (st == C_CONNECTING || st == C_HANDSHAKE || st == C_SHUTDOWN) busy++;
            }
            if (!busy) break;
            poll_events(10);
        }
        elapsed_s = o_duration;
    } else {
        /* connect everything first (TLS: and handshake) */
        for (;;) {
            long pending = 0;
            for (long i = 0; i < g_n; i++) {
                if (g_c[i].state == C_RETRY) start_connect(&g_c[i]);
                if (g_c[i].state == C_RETRY || g_c[i].state == C_CONNECTING ||
                    g_c[i].state == C_HANDSHAKE)
                    pending++;
            }
            if (!pending || g_stop) break;
            if (now_ns() >= connect_deadline) {
                for (long i = 0; i < g_n; i++)
                    if (g_c[i].state == C_RETRY || g_c[i].state == C_CONNECTING ||
                        g_c[i].state == C_HANDSHAKE) {
                        g_connect_fail++;
                        conn_kill(&g_c[i]);
                    }
                break;
            }
            poll_events(1);
        }
        if (o_subs > 0) { /* subscribe, and wait for every acknowledgement */
            for (long i = o_conns; i < g_n; i++) {
                if (g_c[i].state != C_OPEN) continue;
                enqueue_bytes(&g_c[i], g_sub_req, g_sub_req_len, now_ns());
                flush(&g_c[i]);
            }
            while (!g_stop && now_ns() < connect_deadline) {
                long waiting = 0;
                for (long i = o_conns; i < g_n; i++)
                    if (g_c[i].state == C_OPEN && !g_c[i].acked) waiting++;
                if (!waiting) break;
                poll_events(10);
            }
        }
        t_start = now_ns();
        g_rec_from = t_start + (uint64_t)(o_warmup * NS);
        g_rec_to = g_rec_from + (uint64_t)(o_duration * NS);
        t_end = g_rec_to;
        if (o_mode == M_CLOSED) {
            for (long i = 0; i < o_conns; i++) {
                refill(&g_c[i], t_start);
                flush(&g_c[i]);
            }
            while (!g_stop) {
                uint64_t t = now_ns();
                if (t >= t_end) break;
                uint64_t left_ms = (t_end - t) / 1000000 + 1;
                poll_events(left_ms > 100 ? 100 : (int)left_ms);
            }
            g_sending = 0;
            if (o_subs > 0) { /* the calls in flight and their events */
                uint64_t drain_end = now_ns() + (uint64_t)(o_drain * NS);
                for (;;) {
                    long inflight = 0;
                    for (long i = 0; i < o_conns; i++)
                        if (g_c[i].state == C_OPEN) inflight += (long)g_c[i].q_len;
                    if (!inflight || g_stop || now_ns() >= drain_end) break;
                    poll_events(10);
                }
                for (long i = 0; i < o_conns; i++)
                    if (g_c[i].state == C_OPEN) g_unanswered += g_c[i].q_len;
            }
        } else {
            double interval = (double)o_conns * 1e9 / o_rate;
            for (long i = 0; i < o_conns; i++)
                g_c[i].next_sched = t_start + (uint64_t)((double)i * 1e9 / o_rate);
            uint64_t sched_end = t_end;
            for (;;) {
                uint64_t t = now_ns();
                uint64_t next = sched_end;
                for (long i = 0; i < o_conns; i++) {
                    struct conn *c = &g_c[i];
                    if (c->state != C_OPEN) continue;
                    int queued = 0;
                    while (c->next_sched <= t && c->next_sched < sched_end &&
                           (long)c->q_len < o_max_inflight) {
                        enqueue(c, c->next_sched);
                        c->next_sched = t_start + (uint64_t)((double)(c->sent) * interval +
                                                             (double)i * 1e9 / o_rate);
                        queued = 1;
                    }
                    if (queued) flush(c);
                    if (c->state == C_OPEN && c->next_sched < next) next = c->next_sched;
                }
                /* stop after a pass at or past the end, so every call due in the window is sent */
                if (t >= sched_end || g_stop) break;
                if (next <= t) next = t + 20000; /* in-flight cap reached: re-check soon */
                arm_timer(next);
                poll_events(100);
            }
            g_sending = 0;
            /* drain: wait for answers to everything sent */
            uint64_t drain_end = now_ns() + (uint64_t)(o_drain * NS);
            while (!g_stop && now_ns() < drain_end) {
                long inflight = 0;
                for (long i = 0; i < o_conns; i++)
                    if (g_c[i].state == C_OPEN) inflight += (long)g_c[i].q_len;
                if (!inflight) break;
                poll_events(10);
            }
            for (long i = 0; i < o_conns; i++) {
                struct conn *c = &g_c[i];
                if (c->state == C_OPEN) g_unanswered += c->q_len;
                /* calls scheduled in the window but never sent count as unanswered too */
                if (c->next_sched < sched_end) { /* also a connection lost mid-run */
                    double left = (double)(sched_end - c->next_sched) / interval;
                    g_unanswered += (uint64_t)left + 1;
                }
            }
        }
        elapsed_s = o_duration;
        if (o_subs > 0) { /* every subscriber gets every event of the calls answered */
            for (long i = o_conns; i < g_n; i++) /* --stall-subs: read again */
                if (g_c[i].stalled && g_c[i].state == C_OPEN) {
                    g_c[i].stalled = 0;
                    set_events(&g_c[i], EPOLLIN);
                }
            uint64_t drain_end = now_ns() + (uint64_t)(o_drain * NS);
            while (!g_stop && now_ns() < drain_end) {
                long behind = 0;
                for (long i = o_conns; i < g_n; i++)
                    if (g_c[i].state == C_OPEN && g_c[i].ev_total < g_answered_total) behind++;
                if (!behind) break;
                poll_events(10);
            }
        }
    }

    long dropped_idle = o_idle > 0 ? idle_dropped() : 0;
    struct rusage ru;
    double cpu_s = 0;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        cpu_s = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    qsort(g_lat, g_lat_n, sizeof *g_lat, cmp_u64);
    double sum = 0;
    for (size_t i = 0; i < g_lat_n; i++) sum += (double)g_lat[i];
    uint64_t calls = o_mode == M_COUNT ? g_answered_total : g_answered_window;
    uint64_t errors = g_mismatch + g_conn_errors + g_connect_fail + g_unanswered + g_tls_fail;
    /* --fanout: subscribers gone (cut off included) or never acknowledged, events missed */
    uint64_t subs_lost = 0, subs_unacked = 0, ev_missed = 0;
    for (long i = o_conns; i < g_n; i++) {
        if (g_c[i].state != C_OPEN) subs_lost++;
        else if (!g_c[i].acked) subs_unacked++;
    }
    uint64_t ev_expected = (uint64_t)o_subs * g_answered_window;
    if (o_subs > 0) {
        ev_missed = ev_expected > g_ev_window ? ev_expected - g_ev_window : 0;
        errors += subs_lost + subs_unacked + ev_missed + g_ev_bad;
    }
    const char *mode = o_mode == M_CLOSED ? "closed"
                       : o_mode == M_OPEN ? "open"
                       : o_mode == M_COUNT ? "count"
                                           : "handshakes";
    printf("{\"mode\":\"%s\",\"method\":\"%s\",\"transport\":\"%s\",\"conns\":%ld,\"depth\":%ld,"
           "\"rate\":%.1f,\"duration_s\":%.6f,\"calls\":%llu,\"calls_per_s\":%.1f,"
           "\"errors\":%llu,\"mismatches\":%llu,\"conn_errors\":%llu,\"connect_failures\":%llu,"
           "\"unanswered\":%llu,\"lat_samples\":%zu,\"lat_us\":{\"p50\":%.1f,\"p90\":%.1f,"
           "\"p99\":%.1f,\"p999\":%.1f,\"max\":%.1f,\"mean\":%.1f},\"wall_ms\":%.3f,"
           "\"idle\":%ld,\"idle_connected\":%ld,\"idle_dropped\":%ld,\"interrupted\":%s,"
           "\"tls\":%s,\"tls_version\":\"%s\",\"tls_cipher\":\"%s\",\"handshakes\":%llu,"
           "\"tls_failures\":%llu,\"tls_error\":\"%s\",\"cpu_s\":%.3f",
           mode, o_method, o_unix ? "unix" : "tcp", o_conns, o_depth, o_rate, elapsed_s,
           (unsigned long long)calls, elapsed_s > 0 ? (double)calls / elapsed_s : 0.0,
           (unsigned long long)errors, (unsigned long long)g_mismatch,
           (unsigned long long)g_conn_errors, (unsigned long long)g_connect_fail,
           (unsigned long long)g_unanswered, g_lat_n, pct(50), pct(90), pct(99), pct(99.9),
           g_lat_n ? (double)g_lat[g_lat_n - 1] / 1000.0 : -1.0,
           g_lat_n ? sum / (double)g_lat_n / 1000.0 : -1.0,
           o_mode == M_COUNT ? elapsed_s * 1000.0 : -1.0, o_idle, g_idle_ok, dropped_idle,
           g_stop ? "true" : "false", o_tls ? "true" : "false", g_tls_proto, g_tls_cipher,
           (unsigned long long)g_handshakes, (unsigned long long)g_tls_fail, g_tls_err, cpu_s);
    if (o_subs > 0) {
        qsort(g_clat, g_clat_n, sizeof *g_clat, cmp_u64);
        double cp50 = g_clat_n ? (double)g_clat[(g_clat_n - 1) / 2] / 1000.0 : -1.0;
        double cp99 = g_clat_n ? (double)g_clat[(size_t)(0.99 * (double)(g_clat_n - 1) + 0.5)] / 1000.0 : -1.0;
        printf(",\"subs\":%ld,\"subs_acked\":%llu,\"subs_lost\":%llu,\"subs_unacked\":%llu,"
               "\"cut_off\":%llu,\"events_fired\":%llu,\"events_fired_per_s\":%.1f,"
               "\"events_delivered\":%llu,\"events_delivered_per_s\":%.1f,\"events_expected\":%llu,"
               "\"events_missed\":%llu,\"events_total\":%llu,\"events_foreign\":%llu,"
               "\"events_bad\":%llu,\"call_lat_us\":{\"p50\":%.1f,\"p99\":%.1f}",
               o_subs, (unsigned long long)g_subs_acked, (unsigned long long)subs_lost,
               (unsigned long long)subs_unacked, (unsigned long long)g_cut_off,
               (unsigned long long)g_answered_window,
               elapsed_s > 0 ? (double)g_answered_window / elapsed_s : 0.0,
               (unsigned long long)g_ev_window,
               elapsed_s > 0 ? (double)g_ev_window / elapsed_s : 0.0,
               (unsigned long long)ev_expected, (unsigned long long)ev_missed,
               (unsigned long long)g_ev_total, (unsigned long long)g_ev_foreign,
               (unsigned long long)g_ev_bad, cp50, cp99);
    }
    printf("}\n");
    fflush(stdout);
    if (o_lat_out) {
        FILE *f = fopen(o_lat_out, "w");
        if (!f) die("latency-out");
        for (size_t i = 0; i < g_lat_n; i++) fprintf(f, "%.1f\n", (double)g_lat[i] / 1000.0);
        fclose(f);
    }
    return 0;
}

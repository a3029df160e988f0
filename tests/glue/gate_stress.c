/*
 * gate_stress: drives glue/gate.c (the gate of a unix listener with
 * allow-lists) directly, so that it runs under AddressSanitizer+UBSan and
 * ThreadSanitizer. Built and run by tests/glue/test_gate.py.
 *
 * Like the daemon's event loop, ONE thread (main) polls mt_gate_fd and calls
 * mt_gate_take / mt_gate_refuse / mt_gate_stop / mt_gate_free while the
 * gate's threads accept. Clients are threads of this process on an abstract
 * unix socket (no file, no permissions). As root, a client thread takes
 * other credentials with raw setresgid/setresuid system calls, which change
 * the calling thread's only, so that SO_PEERCRED differs between peers.
 *
 * Usage: gate_stress SCENARIO, one of
 *   refuse    the table's peer is refused by the threads: frame, clean EOF, counted
 *   handover  other peers come back with their credentials, non-blocking, close-on-exec
 *   lease     a lease that ran out hands the peer back
 *   table     frame too long; eviction takes the lease that ends first, never
 *             an entry with a count waiting
 *   emfile    accept4 failing with EMFILE is reported, does not spin, recovers
 *   stop      stopping with the queue full and threads blocked on it; no fd leaks
 *   stall     the longest mt_gate_take with a full queue and a full table
 *   flood     client threads against refusals, hand-overs and table churn: every
 *             connection is answered once and counted once
 *   creds     (root) peers of other uids/gids: refused or handed over by
 *             (uid, gid); a table whose every entry has a count waiting adds none
 *
 * Exit status 0 and "PASS <scenario>" on stdout on success; a failed check
 * prints "FAIL ..." to stderr and exits 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "gate.h"
#include "check.h"

static const uint8_t FRAME[] = "\x00\x00\x00\x01refused: not on the allow-lists";
#define FRAME_LEN (sizeof FRAME - 1)
static const char REQUEST[] = "\x00\x00\x00\x07version\x00\x00\x00\x01\xa0";
#define REQUEST_LEN (sizeof REQUEST - 1)
/* What main writes to a peer handed over before closing it. */
#define SERVED 'H'
#define LONG_LEASE 60000

static struct sockaddr_un addr;
static socklen_t addr_len;

static int64_t mono_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static int open_fds(void) {
    int n = 0;
    char path[64];
    for (int fd = 0; fd < 4096; fd++) {
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        n += access(path, F_OK) == 0;
    }
    return n;
}

/* A listening, non-blocking socket on a fresh abstract address. */
static int listener(void) {
    static int serial;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    int len = snprintf(addr.sun_path + 1, sizeof addr.sun_path - 1, "gate-stress-%d-%d",
                       (int)getpid(), serial++);
    addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)len);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0, "socket: %s", strerror(errno));
    CHECK(bind(fd, (struct sockaddr *)&addr, addr_len) == 0, "bind: %s", strerror(errno));
    CHECK(listen(fd, 4096) == 0, "listen: %s", strerror(errno));
    return fd;
}

/* A connected client; non-blocking connects never wait for the backlog. */
static int client(int nonblocking) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0), 0);
    CHECK(fd >= 0, "socket: %s", strerror(errno));
    CHECK(connect(fd, (struct sockaddr *)&addr, addr_len) == 0, "connect: %s", strerror(errno));
    return fd;
}

/* Everything until EOF or an error, within timeout_ms; the error (a reset)
   in *err, 0 for a clean EOF. */
static ssize_t read_to_eof(int fd, uint8_t *buf, size_t cap, int timeout_ms, int *err) {
    size_t got = 0;
    *err = 0;
    int64_t deadline = mono_us() + (int64_t)timeout_ms * 1000;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int left = (int)((deadline - mono_us()) / 1000);
        CHECK(left > 0 && poll(&p, 1, left) == 1, "no EOF within %d ms (%zu bytes)", timeout_ms, got);
        ssize_t n = recv(fd, buf + got, cap - got, MSG_DONTWAIT);
        if (n < 0 && errno == EAGAIN)
            continue;
        if (n <= 0) {
            *err = n < 0 ? errno : 0;
            return (ssize_t)got;
        }
        got += (size_t)n;
        CHECK(got < cap, "more than %zu bytes", cap);
    }
}

/* A refused client's view: exactly the frame, then a clean EOF. */
static int got_frame(const uint8_t *buf, ssize_t n) {
    return n == (ssize_t)FRAME_LEN && memcmp(buf, FRAME, FRAME_LEN) == 0;
}

/* A refused client reads the frame, then a clean EOF when it had sent
   nothing or the gate read what it had sent; with `reset_ok`, a reset
   instead (its request came between the gate's read and its close). */
static void expect_refused(int fd, int reset_ok) {
    uint8_t buf[1024];
    int err;
    ssize_t n = read_to_eof(fd, buf, sizeof buf, 5000, &err);
    CHECK(got_frame(buf, n), "a refused client read %zd bytes", n);
    CHECK(!err || (reset_ok && err == ECONNRESET), "then %s, not EOF", strerror(err));
    close(fd);
}

/* The request, as a client sends it: it may find the peer closed already. */
static void send_request(int fd) {
    ssize_t n = send(fd, REQUEST, REQUEST_LEN, MSG_NOSIGNAL);
    CHECK(n == (ssize_t)REQUEST_LEN || (n < 0 && errno == EPIPE), "send: %s", strerror(errno));
}

struct taken {
    mt_peer peers[4096];
    int npeers;
    uint64_t refused; /* summed over every (uid, gid) */
    int err;
    mt_refused by_peer[2 * MT_GATE_PEERS]; /* summed per (uid, gid) */
    int nby_peer;
};

/* Refusals of (uid, gid) taken so far. */
static uint64_t refused_of(const struct taken *t, uint32_t uid, uint32_t gid) {
    for (int i = 0; i < t->nby_peer; i++)
        if (t->by_peer[i].uid == uid && t->by_peer[i].gid == gid)
            return t->by_peer[i].refused;
    return 0;
}

static mt_gate_taken last;

/* One mt_gate_take, added to `t`. */
static int take_once(mt_gate *g, struct taken *t, int max_peers) {
    int room = (int)(sizeof t->peers / sizeof t->peers[0]) - t->npeers;
    int n = mt_gate_take(g, t->peers + t->npeers, max_peers < room ? max_peers : room, &last);
    t->npeers += n;
    for (int i = 0; i < last.nrefused; i++) {
        mt_refused *r = &last.refused[i];
        CHECK(r->refused > 0, "a count of 0");
        t->refused += r->refused;
        int j = 0;
        while (j < t->nby_peer && (t->by_peer[j].uid != r->uid || t->by_peer[j].gid != r->gid))
            j++;
        if (j == t->nby_peer) {
            CHECK(j < 2 * MT_GATE_PEERS, "too many peers counted");
            t->by_peer[t->nby_peer++] = (mt_refused){r->uid, r->gid, 0};
        }
        t->by_peer[j].refused += r->refused;
    }
    if (last.err)
        t->err = last.err;
    return n;
}

/* Poll and take until `peers` peers and `refused` refusals were taken (or
   more), as the daemon's loop would; fails after timeout_ms. */
static void take_until(mt_gate *g, struct taken *t, int peers, uint64_t refused, int timeout_ms) {
    int64_t deadline = mono_us() + (int64_t)timeout_ms * 1000;
    while (t->npeers < peers || t->refused < refused) {
        int left = (int)((deadline - mono_us()) / 1000);
        CHECK(left > 0, "took %d peers and %" PRIu64 " refusals, waited for %d and %" PRIu64,
              t->npeers, t->refused, peers, refused);
        struct pollfd p = {.fd = mt_gate_fd(g), .events = POLLIN};
        if (poll(&p, 1, left) == 1)
            take_once(g, t, 64);
    }
}

static void serve(const mt_peer *p) {
    uint8_t c = SERVED;
    CHECK(send(p->fd, &c, 1, MSG_NOSIGNAL) == 1, "send: %s", strerror(errno));
    close(p->fd);
}

static mt_gate *new_gate(void) {
    mt_gate *g = mt_gate_new();
    CHECK(g, "mt_gate_new: %s", strerror(errno));
    return g;
}

static void run(mt_gate *g, int lfd, int threads) {
    int err = mt_gate_start(g, lfd, threads);
    CHECK(!err, "mt_gate_start: %s", strerror(err));
}

static mt_gate *start(int lfd, int threads) {
    mt_gate *g = new_gate();
    run(g, lfd, threads);
    return g;
}

static void finish(mt_gate *g, int lfd) {
    mt_gate_stop(g);
    struct taken rest = {0};
    while (take_once(g, &rest, 64))
        ;
    for (int i = 0; i < rest.npeers; i++)
        close(rest.peers[i].fd);
    mt_gate_free(g);
    close(lfd);
}

static int refuse_me(mt_gate *g, int lease_ms) {
    return mt_gate_refuse(g, getuid(), getgid(), FRAME, FRAME_LEN, lease_ms);
}

/* ---------------------------------------------------------------- refuse */

#define REFUSE_CLIENTS 4
#define REFUSE_EACH 100

static void *refused_client(void *arg) {
    (void)arg;
    for (int i = 0; i < REFUSE_EACH; i++) {
        int fd = client(0);
        send_request(fd);
        expect_refused(fd, 1);
    }
    return NULL;
}

static int scenario_refuse(void) {
    int before = open_fds();
    int lfd = listener();
    /* Requests already sent when the gate accepts: read, so a clean EOF. */
    int early[REFUSE_EACH];
    for (int i = 0; i < REFUSE_EACH; i++) {
        early[i] = client(1);
        send_request(early[i]);
    }
    mt_gate *g = new_gate();
    CHECK(refuse_me(g, LONG_LEASE) == 0, "mt_gate_refuse");
    run(g, lfd, 2);
    for (int i = 0; i < REFUSE_EACH; i++)
        expect_refused(early[i], 0);
    /* Clients racing the gate: the frame whatever comes after. */
    pthread_t t[REFUSE_CLIENTS];
    for (int i = 0; i < REFUSE_CLIENTS; i++)
        CHECK(pthread_create(&t[i], NULL, refused_client, NULL) == 0, "pthread_create");
    const uint64_t total = (REFUSE_CLIENTS + 1) * REFUSE_EACH;
    struct taken got = {0};
    take_until(g, &got, 0, total, 20000);
    for (int i = 0; i < REFUSE_CLIENTS; i++)
        pthread_join(t[i], NULL);
    CHECK(got.npeers == 0 && got.refused == total && !got.err,
          "%d peers, %" PRIu64 " refused, err %d", got.npeers, got.refused, got.err);
    CHECK(got.nby_peer == 1 && refused_of(&got, getuid(), getgid()) == total, "whose counts");
    finish(g, lfd);
    CHECK(open_fds() == before, "%d descriptors open, %d before", open_fds(), before);
    printf("PASS refuse\n");
    return 0;
}

/* ---------------------------------------------------------------- handover */

#define HANDOVER_CLIENTS 100

static int scenario_handover(void) {
    int lfd = listener();
    mt_gate *g = start(lfd, 2);
    int clients[HANDOVER_CLIENTS];
    for (int i = 0; i < HANDOVER_CLIENTS; i++) {
        clients[i] = client(1);
        uint8_t c = (uint8_t)i;
        CHECK(send(clients[i], &c, 1, MSG_NOSIGNAL) == 1, "send");
    }
    struct taken got = {0};
    take_until(g, &got, HANDOVER_CLIENTS, 0, 10000);
    CHECK(got.npeers == HANDOVER_CLIENTS && got.refused == 0, "%d peers", got.npeers);
    int seen[HANDOVER_CLIENTS] = {0};
    for (int i = 0; i < got.npeers; i++) {
        mt_peer *p = &got.peers[i];
        CHECK(p->uid == getuid() && p->gid == getgid(), "creds %u/%u", p->uid, p->gid);
        CHECK(fcntl(p->fd, F_GETFL) & O_NONBLOCK, "a peer is blocking");
        CHECK(fcntl(p->fd, F_GETFD) & FD_CLOEXEC, "a peer is not close-on-exec");
        struct pollfd pf = {.fd = p->fd, .events = POLLIN};
        CHECK(poll(&pf, 1, 5000) == 1, "the client's byte did not come");
        uint8_t c;
        CHECK(recv(p->fd, &c, 1, 0) == 1 && c < HANDOVER_CLIENTS && !seen[c]++, "byte %u", c);
        serve(p);
    }
    for (int i = 0; i < HANDOVER_CLIENTS; i++) {
        uint8_t buf[16];
        int err;
        ssize_t n = read_to_eof(clients[i], buf, sizeof buf, 5000, &err);
        CHECK(n == 1 && buf[0] == SERVED && !err, "client %d read %zd bytes", i, n);
        close(clients[i]);
    }
    finish(g, lfd);
    printf("PASS handover\n");
    return 0;
}

/* ---------------------------------------------------------------- lease */

static int scenario_lease(void) {
    int lfd = listener();
    mt_gate *g = start(lfd, 1);
    CHECK(refuse_me(g, 200) == 0, "mt_gate_refuse");
    expect_refused(client(0), 0);
    sleep_ms(300);
    int late = client(1);
    struct taken got = {0};
    take_until(g, &got, 1, 1, 5000);
    CHECK(got.npeers == 1 && got.refused == 1, "%d peers, %" PRIu64 " refused", got.npeers,
          got.refused);
    serve(&got.peers[0]);
    close(late);
    CHECK(refuse_me(g, 200) == 0, "a renewed lease"); /* as the daemon does after refusing */
    expect_refused(client(0), 0);
    finish(g, lfd);
    printf("PASS lease\n");
    return 0;
}

/* ---------------------------------------------------------------- table */

static void fill_others(mt_gate *g, int lease_ms) {
    for (uint32_t i = 0; i < MT_GATE_PEERS; i++)
        CHECK(mt_gate_refuse(g, 200000 + i, 1, FRAME, FRAME_LEN, lease_ms) == 0, "entry %u", i);
}

static int scenario_table(void) {
    int lfd = listener();
    uint8_t big[MT_GATE_FRAME + 1] = {0};

    mt_gate *g = new_gate(); /* freed without ever starting */
    CHECK(mt_gate_refuse(g, 1, 1, big, MT_GATE_FRAME + 1, LONG_LEASE) == -1, "too long a frame");
    CHECK(mt_gate_refuse(g, 1, 1, big, MT_GATE_FRAME, LONG_LEASE) == 0, "the longest frame");
    CHECK(mt_gate_start(g, lfd, 0) == EINVAL && mt_gate_start(g, lfd, MT_GATE_THREADS + 1) == EINVAL,
          "thread counts out of range");
    mt_gate_free(g);
    g = start(lfd, MT_GATE_THREADS);
    CHECK(mt_gate_start(g, lfd, 1) == EINVAL, "a second start");
    finish(g, lfd);

    /* The entry whose lease ends first goes: ours, added first with the
       shortest lease, when MT_GATE_PEERS others are added. */
    lfd = listener();
    g = start(lfd, 1);
    CHECK(refuse_me(g, LONG_LEASE / 2) == 0, "mt_gate_refuse");
    fill_others(g, LONG_LEASE);
    int fd = client(1);
    struct taken got = {0};
    take_until(g, &got, 1, 0, 5000);
    CHECK(got.peers[0].uid == getuid(), "evicted: ours should have come back");
    serve(&got.peers[0]);
    close(fd);
    finish(g, lfd);

    /* Never an entry with a count waiting: ours, with the shortest lease
       again but a refusal not taken yet, stays and keeps its count. */
    lfd = listener();
    g = start(lfd, 1);
    CHECK(refuse_me(g, LONG_LEASE / 2) == 0, "mt_gate_refuse");
    expect_refused(client(0), 0); /* the EOF: the thread has counted it */
    fill_others(g, LONG_LEASE);
    expect_refused(client(0), 0);
    got = (struct taken){0};
    take_until(g, &got, 0, 2, 5000);
    CHECK(got.refused == 2 && refused_of(&got, getuid(), getgid()) == 2,
          "%" PRIu64 " refused in %d counts", got.refused, got.nby_peer);
    finish(g, lfd);
    printf("PASS table\n");
    return 0;
}

/* ---------------------------------------------------------------- emfile */

static double cpu_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1000 + (double)ts.tv_nsec / 1e6;
}

static int scenario_emfile(void) {
    int lfd = listener();
    mt_gate *g = start(lfd, 2);
    struct rlimit lim;
    CHECK(getrlimit(RLIMIT_NOFILE, &lim) == 0, "getrlimit");
    struct rlimit low = {.rlim_cur = (rlim_t)open_fds() + 64, .rlim_max = lim.rlim_max};
    CHECK(setrlimit(RLIMIT_NOFILE, &low) == 0, "setrlimit: %s", strerror(errno));
    int dummies[128], n = 0;
    while (n < 128 && (dummies[n] = dup(0)) >= 0)
        n++;
    CHECK(n < 128 && errno == EMFILE, "could not reach the descriptor limit");
    close(dummies[--n]);
    int fd = client(1); /* the last descriptor: the gate's accept4 has none */
    struct taken got = {0};
    int64_t deadline = mono_us() + 5000000;
    while (got.err != EMFILE) {
        CHECK(mono_us() < deadline, "no EMFILE reported (err %d)", got.err);
        struct pollfd p = {.fd = mt_gate_fd(g), .events = POLLIN};
        if (poll(&p, 1, 100) == 1)
            take_once(g, &got, 64);
    }
    /* At the limit the threads wait between tries instead of spinning. */
    double cpu = cpu_ms();
    sleep_ms(300);
    cpu = cpu_ms() - cpu;
    CHECK(cpu < 60, "%.0f ms of CPU in 300 ms at the descriptor limit: spinning", cpu);
    close(dummies[--n]);
    take_until(g, &got, 1, 0, 5000);
    CHECK(got.npeers == 1, "%d peers", got.npeers);
    serve(&got.peers[0]);
    close(fd);
    while (n)
        close(dummies[--n]);
    CHECK(setrlimit(RLIMIT_NOFILE, &lim) == 0, "setrlimit");
    finish(g, lfd);
    printf("PASS emfile cpu_ms_at_limit=%.1f\n", cpu);
    return 0;
}

/* ---------------------------------------------------------------- stop */

#define OVER (MT_GATE_WAITING + 40)

static int scenario_stop(void) {
    int before = open_fds();
    int lfd = listener();
    mt_gate *g = start(lfd, 2);
    static int clients[OVER];
    for (int i = 0; i < OVER; i++)
        clients[i] = client(1);
    /* The queue fills; each thread then holds one more peer, waiting for room. */
    sleep_ms(500);
    int64_t t0 = mono_us();
    mt_gate_stop(g);
    int64_t stop_us = mono_us() - t0;
    CHECK(stop_us < 1000000, "mt_gate_stop took %" PRId64 " us", stop_us);
    struct taken got = {0};
    while (take_once(g, &got, 64))
        ;
    CHECK(got.npeers == MT_GATE_WAITING, "%d peers after the stop", got.npeers);
    for (int i = 0; i < got.npeers; i++)
        close(got.peers[i].fd);
    CHECK(mt_gate_take(g, got.peers, 64, &last) == 0, "a take after the last");
    mt_gate_free(g);
    close(lfd);
    for (int i = 0; i < OVER; i++)
        close(clients[i]);
    CHECK(open_fds() == before, "%d descriptors open, %d before", open_fds(), before);
    printf("PASS stop stop_us=%" PRId64 "\n", stop_us);
    return 0;
}

/* ---------------------------------------------------------------- stall */

static int scenario_stall(void) {
    int lfd = listener();
    mt_gate *g = start(lfd, 2);
    fill_others(g, LONG_LEASE); /* a full table to scan */
    static int clients[MT_GATE_WAITING];
    for (int i = 0; i < MT_GATE_WAITING; i++)
        clients[i] = client(1);
    sleep_ms(500);
    int64_t longest = 0;
    struct taken got = {0};
    for (;;) {
        int64_t t0 = mono_us();
        int n = take_once(g, &got, 64); /* the daemon's slice */
        int64_t took = mono_us() - t0;
        longest = took > longest ? took : longest;
        if (!n)
            break;
    }
    CHECK(got.npeers == MT_GATE_WAITING, "%d peers", got.npeers);
    for (int i = 0; i < got.npeers; i++)
        close(got.peers[i].fd);
    for (int i = 0; i < MT_GATE_WAITING; i++)
        close(clients[i]);
    finish(g, lfd);
    printf("PASS stall take_us_max=%" PRId64 "\n", longest);
    return 0;
}

/* ---------------------------------------------------------------- flood */

#define FLOOD_CLIENTS 4
#define FLOOD_EACH 1500

static atomic_int flood_refused, flood_served;

static void *flood_client(void *arg) {
    (void)arg;
    uint8_t buf[1024];
    for (int i = 0; i < FLOOD_EACH; i++) {
        int fd = client(0);
        send_request(fd);
        int err;
        ssize_t n = read_to_eof(fd, buf, sizeof buf, 10000, &err);
        close(fd);
        if (got_frame(buf, n) && (!err || err == ECONNRESET))
            atomic_fetch_add(&flood_refused, 1);
        else if (n == 1 && buf[0] == SERVED)
            atomic_fetch_add(&flood_served, 1); /* a reset too: main did not read the request */
        else
            CHECK(0, "a client read %zd bytes (%s): neither refused nor served", n, strerror(err));
    }
    return NULL;
}

static int scenario_flood(void) {
    int lfd = listener();
    mt_gate *g = start(lfd, 3);
    pthread_t t[FLOOD_CLIENTS];
    for (int i = 0; i < FLOOD_CLIENTS; i++)
        CHECK(pthread_create(&t[i], NULL, flood_client, NULL) == 0, "pthread_create");
    struct taken got = {0};
    int served = 0;
    uint32_t churn = 0;
    const int total = FLOOD_CLIENTS * FLOOD_EACH;
    int64_t deadline = mono_us() + 60000000;
    while (served + (int)got.refused < total) {
        CHECK(mono_us() < deadline, "%d served, %" PRIu64 " refused of %d", served, got.refused,
              total);
        struct pollfd p = {.fd = mt_gate_fd(g), .events = POLLIN};
        if (poll(&p, 1, 100) != 1 || !take_once(g, &got, 64))
            continue;
        for (int i = 0; i < got.npeers; i++)
            serve(&got.peers[i]);
        served += got.npeers;
        got.npeers = 0;
        /* As the daemon does after refusing one itself: the threads refuse
           the next ones for a lease (short here, so that peers go both
           ways), while other entries come and go. */
        CHECK(refuse_me(g, 2) == 0, "mt_gate_refuse");
        uint32_t other = 300000 + churn++ % (2 * MT_GATE_PEERS);
        CHECK(mt_gate_refuse(g, other, 7, FRAME, FRAME_LEN, 1) == 0, "churn");
    }
    for (int i = 0; i < FLOOD_CLIENTS; i++)
        pthread_join(t[i], NULL);
    CHECK(atomic_load(&flood_refused) == (int)got.refused && atomic_load(&flood_served) == served,
          "clients saw %d refused and %d served; the gate counted %" PRIu64 " and handed %d",
          atomic_load(&flood_refused), atomic_load(&flood_served), got.refused, served);
    CHECK(got.refused > 0 && served > 0, "the peers did not go both ways");
    finish(g, lfd);
    printf("PASS flood refused=%d served=%d\n", atomic_load(&flood_refused), served);
    return 0;
}

/* ---------------------------------------------------------------- creds */

struct as {
    uint32_t uid, gid;
    int fd; /* connected, as uid/gid */
};

/* Connect from a thread that has taken uid/gid (for itself only). */
static void *connect_as(void *arg) {
    struct as *a = arg;
    CHECK(syscall(SYS_setresgid, a->gid, a->gid, a->gid) == 0, "setresgid: %s", strerror(errno));
    CHECK(syscall(SYS_setresuid, a->uid, a->uid, a->uid) == 0, "setresuid: %s", strerror(errno));
    a->fd = client(1);
    return NULL;
}

static int client_as(uint32_t uid, uint32_t gid) {
    struct as a = {uid, gid, -1};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, connect_as, &a) == 0, "pthread_create");
    pthread_join(t, NULL);
    return a.fd;
}

static int scenario_creds(void) {
    CHECK(geteuid() == 0, "needs root");
    int lfd = listener();
    mt_gate *g = start(lfd, 2);
    CHECK(mt_gate_refuse(g, 5000, 5000, FRAME, FRAME_LEN, LONG_LEASE) == 0, "mt_gate_refuse");
    expect_refused(client_as(5000, 5000), 0);
    int same_uid = client_as(5000, 5001), other = client_as(5001, 5000);
    struct taken got = {0};
    take_until(g, &got, 2, 1, 5000);
    CHECK(got.npeers == 2, "%d peers", got.npeers);
    for (int i = 0; i < 2; i++) {
        mt_peer *p = &got.peers[i];
        CHECK((p->uid == 5000 && p->gid == 5001) || (p->uid == 5001 && p->gid == 5000),
              "creds %u/%u", p->uid, p->gid);
        serve(p);
    }
    close(same_uid);
    close(other);
    CHECK(got.nby_peer == 1 && refused_of(&got, 5000, 5000) == 1, "the count of 5000/5000");

    /* Every entry with a count waiting: nothing may be evicted. */
    for (uint32_t i = 0; i < MT_GATE_PEERS; i++)
        CHECK(mt_gate_refuse(g, 6000 + i, 6000, FRAME, FRAME_LEN, LONG_LEASE) == 0, "entry");
    for (uint32_t i = 0; i < MT_GATE_PEERS; i++)
        expect_refused(client_as(6000 + i, 6000), 0);
    CHECK(mt_gate_refuse(g, 7000, 7000, FRAME, FRAME_LEN, LONG_LEASE) == -2, "a full table");
    got = (struct taken){0};
    take_until(g, &got, 0, MT_GATE_PEERS, 5000);
    CHECK(got.nby_peer == MT_GATE_PEERS && got.refused == MT_GATE_PEERS, "%d counts",
          got.nby_peer);
    CHECK(mt_gate_refuse(g, 7000, 7000, FRAME, FRAME_LEN, LONG_LEASE) == 0, "room once taken");
    expect_refused(client_as(7000, 7000), 0);
    finish(g, lfd);
    printf("PASS creds\n");
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    static const struct {
        const char *name;
        int (*run)(void);
    } scenarios[] = {
        {"refuse", scenario_refuse}, {"handover", scenario_handover}, {"lease", scenario_lease},
        {"table", scenario_table},   {"emfile", scenario_emfile},     {"stop", scenario_stop},
        {"stall", scenario_stall},   {"flood", scenario_flood},       {"creds", scenario_creds},
    };
    for (size_t i = 0; argc == 2 && i < sizeof scenarios / sizeof scenarios[0]; i++)
        if (strcmp(argv[1], scenarios[i].name) == 0)
            return scenarios[i].run();
    fprintf(stderr, "usage: see the comment at the top of %s\n", __FILE__);
    return 2;
}

/*
 * floor_server.c - the "floor" for mytimerd benchmarks.
 *
 * A minimal single-threaded epoll server that speaks the mytimerd framing
 * (docs/protocol.md) on unix and TCP sockets and answers every
 * request, whatever its method, with the fixed 25-byte version response:
 *
 *   00000000 00000011 706e696d2d74696d65722076302e312e30
 *
 * No library, no CBOR decoding: it shows how fast the framing alone can go on
 * this machine, so daemon figures can be quoted as ratios to it.
 *
 * Usage:
 *   floor_server [--unix PATH]... [--tcp HOST PORT]... [--max-connections N]
 *                [--max-in-flight N] [--log-level L] [--lifetime SECONDS]
 * With no --unix/--tcp it takes its listening sockets from systemd socket
 * activation ($LISTEN_FDS, fds 3..). --max-in-flight and --log-level are
 * accepted (and ignored) so that the harness can run it as --daemon-cmd.
 * TCP hosts must be loopback addresses. --lifetime S exits after S seconds
 * (a safety net for benchmark runs; default: run until SIGTERM/SIGINT).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "listen.h"

#define MAX_LISTENERS 16
#define MAX_METHOD_LEN 4096u
#define MAX_PAYLOAD_LEN (1u << 20)
#define OUT_HIGH_WATER (4u << 20) /* stop reading a conn while this much is unsent */
#define LISTENER_TAG (1ull << 40)

static const uint8_t VERSION_RESPONSE[25] = {
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x11, 0x70, 0x6e, 0x69, 0x6d, 0x2d,
    0x74, 0x69, 0x6d, 0x65, 0x72, 0x20, 0x76, 0x30, 0x2e, 0x31, 0x2e, 0x30};

struct conn {
    int fd; /* -1 when unused */
    uint32_t events;
    uint8_t *in;
    size_t in_len, in_cap;
    uint8_t *out;
    size_t out_off, out_len, out_cap;
};

static volatile sig_atomic_t g_stop;
static struct conn *g_conns;
static size_t g_nconns_cap;
static long g_nconns, g_max_conns = 1000000;
static int g_ep;
static int g_listen_fds[MAX_LISTENERS];
static int g_nlisten;
static const char *g_unix_paths[MAX_LISTENERS];
static int g_nunix_paths;

static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

static uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void add_listener(int fd) {
    if (g_nlisten >= MAX_LISTENERS) {
        fprintf(stderr, "floor_server: too many listeners\n");
        exit(2);
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) die("fcntl");
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = LISTENER_TAG | (uint64_t)g_nlisten};
    if (epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl listener");
    g_listen_fds[g_nlisten++] = fd;
}

static void listen_unix(const char *path) {
    add_listener(bench_listen_unix("floor_server", path));
    if (g_nunix_paths < MAX_LISTENERS) g_unix_paths[g_nunix_paths++] = path;
}

static void conn_close(struct conn *c) {
    epoll_ctl(g_ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->in);
    free(c->out);
    memset(c, 0, sizeof *c);
    c->fd = -1;
    g_nconns--;
}

static void conn_set_events(struct conn *c, uint32_t events) {
    if (events == c->events) return;
    struct epoll_event ev = {.events = events, .data.u64 = (uint64_t)c->fd};
    if (epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &ev) == 0) c->events = events;
}

static int out_reserve(struct conn *c, size_t extra) {
    if (c->out_off > 0 && c->out_off == c->out_len) c->out_off = c->out_len = 0;
    if (c->out_len + extra <= c->out_cap) return 0;
    if (c->out_off > 0) {
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
        if (c->out_len + extra <= c->out_cap) return 0;
    }
    size_t cap = c->out_cap ? c->out_cap : 4096;
    while (cap < c->out_len + extra) cap *= 2;
    uint8_t *n = realloc(c->out, cap);
    if (!n) return -1;
    c->out = n;
    c->out_cap = cap;
    return 0;
}

/* Returns -1 if the connection must be closed. */
static int conn_flush(struct conn *c) {
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else {
            return -1;
        }
    }
    size_t pending = c->out_len - c->out_off;
    if (pending == 0) c->out_off = c->out_len = 0;
    uint32_t ev = 0;
    if (pending < OUT_HIGH_WATER) ev |= EPOLLIN;
    if (pending > 0) ev |= EPOLLOUT;
    conn_set_events(c, ev);
    return 0;
}

/* Consume complete frames from c->in, queue one response per frame. */
static int conn_parse(struct conn *c) {
    size_t pos = 0;
    size_t nframes = 0;
    for (;;) {
        size_t avail = c->in_len - pos;
        if (avail < 4) break;
        uint32_t mlen = be32(c->in + pos);
        if (mlen > MAX_METHOD_LEN) return -1;
        if (avail < 8 + (size_t)mlen) break;
        uint32_t plen = be32(c->in + pos + 4 + mlen);
        if (plen > MAX_PAYLOAD_LEN) return -1;
        size_t flen = 8 + (size_t)mlen + plen;
        if (avail < flen) break;
        pos += flen;
        nframes++;
    }
    if (nframes) {
        if (out_reserve(c, nframes * sizeof VERSION_RESPONSE) < 0) return -1;
        for (size_t i = 0; i < nframes; i++) {
            memcpy(c->out + c->out_len, VERSION_RESPONSE, sizeof VERSION_RESPONSE);
            c->out_len += sizeof VERSION_RESPONSE;
        }
    }
    if (pos > 0) {
        memmove(c->in, c->in + pos, c->in_len - pos);
        c->in_len -= pos;
    }
    return 0;
}

static int conn_read(struct conn *c) {
    for (int rounds = 0; rounds < 16; rounds++) {
        if (c->in_cap - c->in_len < 4096) {
            size_t cap = c->in_cap ? c->in_cap * 2 : 16384;
            if (cap > 2 * (MAX_PAYLOAD_LEN + MAX_METHOD_LEN + 16)) {
                if (c->in_cap - c->in_len == 0) return -1;
                cap = c->in_cap;
            }
            if (cap != c->in_cap) {
                uint8_t *n = realloc(c->in, cap);
                if (!n) return -1;
                c->in = n;
                c->in_cap = cap;
            }
        }
        ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
        if (n > 0) {
            c->in_len += (size_t)n;
            if (conn_parse(c) < 0) return -1;
            if ((size_t)n < 4096) break; /* probably drained */
        } else if (n == 0) {
            return -1;
        } else if (errno == EINTR) {
            continue;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            break;
        } else {
            return -1;
        }
    }
    return conn_flush(c);
}

static void do_accept(int lfd) {
    for (int i = 0; i < 1024; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return; /* EAGAIN, EMFILE, ... */
        if ((size_t)fd >= g_nconns_cap || g_nconns >= g_max_conns) {
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* fails harmlessly on unix */
        struct conn *c = &g_conns[fd];
        memset(c, 0, sizeof *c);
        c->fd = fd;
        c->events = EPOLLIN;
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)fd};
        if (epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            close(fd);
            c->fd = -1;
            continue;
        }
        g_nconns++;
    }
}

static void usage(void) {
    fprintf(stderr,
            "usage: floor_server [--unix PATH]... [--tcp HOST PORT]... [--max-connections N]\n"
            "                    [--max-in-flight N] [--log-level L] [--lifetime SECONDS]\n"
            "with no --unix/--tcp, uses systemd socket activation ($LISTEN_FDS)\n");
}

int main(int argc, char **argv) {
    long lifetime = 0; /* seconds; 0 = until SIGTERM/SIGINT */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    g_nconns_cap = (size_t)rl.rlim_cur;
    g_conns = calloc(g_nconns_cap, sizeof *g_conns);
    if (!g_conns) die("calloc");
    for (size_t i = 0; i < g_nconns_cap; i++) g_conns[i].fd = -1;

    g_ep = epoll_create1(EPOLL_CLOEXEC);
    if (g_ep < 0) die("epoll_create1");

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--unix") && i + 1 < argc) {
            listen_unix(argv[++i]);
        } else if (!strcmp(argv[i], "--tcp") && i + 2 < argc) {
            add_listener(bench_listen_tcp("floor_server", argv[i + 1], argv[i + 2]));
            i += 2;
        } else if (!strcmp(argv[i], "--lifetime") && i + 1 < argc) {
            lifetime = atol(argv[++i]);
        } else if (!strcmp(argv[i], "--max-connections") && i + 1 < argc) {
            g_max_conns = atol(argv[++i]);
        } else if ((!strcmp(argv[i], "--max-in-flight") || !strcmp(argv[i], "--log-level")) &&
                   i + 1 < argc) {
            i++; /* accepted for command-line compatibility with mytimerd */
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage();
            return 0;
        } else {
            usage();
            return 2;
        }
    }
    if (g_nlisten == 0) {
        const char *lfds = getenv("LISTEN_FDS");
        const char *lpid = getenv("LISTEN_PID");
        if (lfds && (!lpid || atol(lpid) == (long)getpid())) {
            int n = atoi(lfds);
            for (int i = 0; i < n && i < MAX_LISTENERS; i++) add_listener(3 + i);
        }
    }
    if (g_nlisten == 0) {
        fprintf(stderr, "floor_server: nothing to listen on\n");
        usage();
        return 2;
    }

    struct epoll_event evs[256];
    time_t end = lifetime > 0 ? time(NULL) + lifetime : 0;
    while (!g_stop && (!end || time(NULL) < end)) {
        int n = epoll_wait(g_ep, evs, 256, 1000);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            uint64_t tag = evs[i].data.u64;
            if (tag & LISTENER_TAG) {
                do_accept(g_listen_fds[tag & 0xff]);
                continue;
            }
            struct conn *c = &g_conns[tag];
            if (c->fd < 0) continue;
            int rc = 0;
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) rc = conn_read(c);
            if (rc == 0 && (evs[i].events & EPOLLOUT)) rc = conn_flush(c);
            if (rc < 0) conn_close(c);
        }
    }
    for (int i = 0; i < g_nunix_paths; i++) unlink(g_unix_paths[i]);
    return 0;
}

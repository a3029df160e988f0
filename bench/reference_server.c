/*
 * reference_server.c - the threaded C reference for mytimerd benchmarks
 * (issue 21).
 *
 * A plain, competent C server for libmy_timer: the framing of the original
 * example (docs/protocol.md), one thread per connection, TCP_NODELAY, no log
 * line per call, and every request answered by the library itself, called for
 * real through its CBOR ABI on one context that all connections share. The
 * library is loaded at run time (dlopen), so the reference runs whichever
 * library the daemon serves: the bundled one, the real Nim build or any
 * ABI-compatible build, of either symbol generation (0.2: my_timer_*_cbor;
 * 0.3: the same names without the suffix).
 *
 * A connection's thread reads a frame, calls my_timer_<method> with a
 * callback that copies the answer into the connection's slot, waits for the
 * one final callback (RET_STALE_WARN, 3, is not final) and writes
 * [ret][length][body] in one send. The callback may come before the call
 * returns (the real build's timing) or after it: the slot handles both.
 * Frames a client pipelines wait in the socket until the previous answer is
 * written, so answers keep their order. A method the library does not export
 * is answered RET_ERR with a text saying so. Nothing is validated beyond the
 * framing: the reference shows what the library costs behind a thin server,
 * not a trust boundary.
 *
 * Usage:
 *   reference_server --library PATH [--unix PATH]... [--tcp HOST PORT]...
 *                    [--name NAME] [--lifetime SECONDS]
 * --name is the timer's name (default "reference"). TCP hosts must be
 * loopback addresses. --lifetime S exits after S seconds (a safety net for
 * benchmark runs; default: run until SIGTERM/SIGINT).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "listen.h"

#define PROG "reference_server"
#define MAX_LISTENERS 16
#define MAX_METHOD_LEN 256u           /* the daemon's default limit */
#define MAX_PAYLOAD_LEN (1u << 20)    /* likewise */
#define MAX_CONNS 4096                /* threads, each with its own stack */
#define MAX_NAME_LEN 255u             /* a one-byte CBOR length head */
#define IN_BUF_MIN 16384u
#define RET_OK 0
#define RET_ERR 1
#define RET_STALE_WARN 3

typedef void (*ffi_callback)(int ret, const char *msg, size_t len, void *user_data);
typedef void *(*create_fn)(const uint8_t *req, size_t len, ffi_callback cb, void *user_data);
typedef int (*method_fn)(void *ctx, ffi_callback cb, void *user_data, const uint8_t *req,
                         size_t len);

static const char *const METHOD_NAMES[] = {"version", "echo", "complex", "schedule"};
#define NMETHODS (sizeof METHOD_NAMES / sizeof METHOD_NAMES[0])

static method_fn g_methods[NMETHODS]; /* NULL: the library does not export it */
static void *g_ctx;
static atomic_int g_nconns;
static volatile sig_atomic_t g_stop;

/* Where the library's answer to a connection's current call lands. buf holds
 * the 8-byte response head followed by the body, so one send writes both. */
struct answer {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done, ret;
    uint8_t *buf;
    size_t len, cap; /* body length; size of buf */
};

struct conn {
    int fd;
    struct answer ans;
    uint8_t *in;
    size_t in_off, in_len, in_cap; /* unconsumed bytes: in[in_off .. in_len) */
};

static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

static void die(const char *what) {
    fprintf(stderr, PROG ": ");
    perror(what);
    exit(1);
}

static uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static int answer_init(struct answer *a) {
    memset(a, 0, sizeof *a);
    a->cap = 256;
    a->buf = malloc(a->cap);
    if (!a->buf) return -1;
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->cv, NULL);
    return 0;
}

static void answer_free(struct answer *a) {
    pthread_mutex_destroy(&a->mu);
    pthread_cond_destroy(&a->cv);
    free(a->buf);
}

/* Stores one answer; caller holds a->mu. Without memory for the body the
 * answer becomes a RET_ERR saying so (buf always has room for that text). */
static void answer_store(struct answer *a, int ret, const char *msg, size_t len) {
    static const char OOM[] = "reference_server: out of memory for the answer";
    if (8 + len > a->cap) {
        uint8_t *n = realloc(a->buf, 8 + len);
        if (n) {
            a->buf = n;
            a->cap = 8 + len;
        } else {
            ret = RET_ERR;
            msg = OOM;
            len = sizeof OOM - 1;
        }
    }
    memcpy(a->buf + 8, msg, len);
    a->ret = ret;
    a->len = len;
    a->done = 1;
    pthread_cond_signal(&a->cv);
}

/* The library's callback: runs on the library's thread (or, for the ABI's
 * synchronous errors, on the caller's). msg is only valid during the call. */
static void on_answer(int ret, const char *msg, size_t len, void *user_data) {
    struct answer *a = user_data;
    if (ret == RET_STALE_WARN) return; /* "still running": the final answer follows */
    pthread_mutex_lock(&a->mu);
    answer_store(a, ret, msg, len);
    pthread_mutex_unlock(&a->mu);
}

/* Waits for the answer to the call just made and makes the slot ready for the next. */
static void answer_wait(struct answer *a) {
    pthread_mutex_lock(&a->mu);
    while (!a->done) pthread_cond_wait(&a->cv, &a->mu);
    a->done = 0;
    pthread_mutex_unlock(&a->mu);
}

/* An answer of our own instead of the library's (no call made, or refused). */
static void answer_error(struct answer *a, const char *text) {
    pthread_mutex_lock(&a->mu);
    answer_store(a, RET_ERR, text, strlen(text));
    pthread_mutex_unlock(&a->mu);
    answer_wait(a);
}

/* One request: the library's answer (or an error of ours) in c->ans. */
static void call(struct conn *c, const uint8_t *method, uint32_t mlen, const uint8_t *payload,
                 uint32_t plen) {
    struct answer *a = &c->ans;
    method_fn fn = NULL;
    for (size_t i = 0; i < NMETHODS; i++) {
        if (strlen(METHOD_NAMES[i]) == mlen && memcmp(METHOD_NAMES[i], method, mlen) == 0) {
            fn = g_methods[i];
            break;
        }
    }
    if (!fn) {
        answer_error(a, "reference_server: the library has no such method");
        return;
    }
    int rc = fn(g_ctx, on_answer, a, payload, plen);
    if (rc == RET_OK) {
        answer_wait(a);
        return;
    }
    /* Refused: with a synchronous callback (an invalid context) or none. */
    pthread_mutex_lock(&a->mu);
    int answered = a->done;
    pthread_mutex_unlock(&a->mu);
    if (answered)
        answer_wait(a);
    else
        answer_error(a, "reference_server: the library refused the call");
}

static int send_all(int fd, const uint8_t *p, size_t n) {
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Makes c->in hold at least want unconsumed bytes; -1 on EOF, error or memory. */
static int fill(struct conn *c, size_t want) {
    while (c->in_len - c->in_off < want) {
        if (c->in_off > 0) { /* move the unconsumed bytes to the front */
            memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
            c->in_len -= c->in_off;
            c->in_off = 0;
        }
        if (c->in_cap < want) { /* room for a few frames, so one recv usually reads all */
            size_t cap = want < IN_BUF_MIN ? IN_BUF_MIN : want;
            uint8_t *n = realloc(c->in, cap);
            if (!n) return -1;
            c->in = n;
            c->in_cap = cap;
        }
        ssize_t k = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        c->in_len += (size_t)k;
    }
    return 0;
}

static void *serve(void *arg) {
    struct conn *c = arg;
    for (;;) {
        if (fill(c, 4) < 0) break;
        uint32_t mlen = be32(c->in + c->in_off);
        if (mlen > MAX_METHOD_LEN || fill(c, 8 + (size_t)mlen) < 0) break;
        uint32_t plen = be32(c->in + c->in_off + 4 + mlen);
        size_t flen = 8 + (size_t)mlen + plen;
        if (plen > MAX_PAYLOAD_LEN || fill(c, flen) < 0) break;
        const uint8_t *frame = c->in + c->in_off;
        call(c, frame + 4, mlen, frame + 8 + mlen, plen);
        c->in_off += flen;
        put_be32(c->ans.buf, (uint32_t)c->ans.ret);
        put_be32(c->ans.buf + 4, (uint32_t)c->ans.len);
        if (send_all(c->fd, c->ans.buf, 8 + c->ans.len) < 0) break;
    }
    close(c->fd);
    answer_free(&c->ans);
    free(c->in);
    free(c);
    atomic_fetch_sub(&g_nconns, 1);
    return NULL;
}

static void start_conn(int fd, const pthread_attr_t *attr) {
    if (atomic_fetch_add(&g_nconns, 1) >= MAX_CONNS) {
        atomic_fetch_sub(&g_nconns, 1);
        close(fd);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* fails harmlessly on unix */
    struct conn *c = calloc(1, sizeof *c);
    pthread_t t;
    if (c && answer_init(&c->ans) == 0) {
        c->fd = fd;
        if (pthread_create(&t, attr, serve, c) == 0) return;
        answer_free(&c->ans);
    }
    free(c);
    close(fd);
    atomic_fetch_sub(&g_nconns, 1);
}

/* Loads the library, creates its context and waits for the create callback
 * (calls made before it would run against an unnamed timer). */
static void open_library(const char *path, const char *name) {
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, PROG ": cannot load %s: %s\n", path, dlerror());
        exit(1);
    }
    const char *suffix = "_cbor"; /* 0.2 generation; 0.3 drops the suffix */
    create_fn create = (create_fn)dlsym(h, "my_timer_create_cbor");
    if (!create) {
        suffix = "";
        create = (create_fn)dlsym(h, "my_timer_create");
    }
    if (!create) {
        fprintf(stderr, PROG ": %s exports neither my_timer_create_cbor nor my_timer_create\n",
                path);
        exit(1);
    }
    for (size_t i = 0; i < NMETHODS; i++) {
        char sym[64];
        snprintf(sym, sizeof sym, "my_timer_%s%s", METHOD_NAMES[i], suffix);
        g_methods[i] = (method_fn)dlsym(h, sym);
    }
    /* {"config": {"name": name}} */
    size_t n = strlen(name);
    uint8_t req[16 + MAX_NAME_LEN];
    static const uint8_t head[] = {0xa1, 0x66, 'c', 'o', 'n', 'f', 'i', 'g',
                                   0xa1, 0x64, 'n', 'a', 'm', 'e'};
    memcpy(req, head, sizeof head);
    size_t len = sizeof head;
    if (n < 24) {
        req[len++] = (uint8_t)(0x60 + n);
    } else {
        req[len++] = 0x78;
        req[len++] = (uint8_t)n;
    }
    memcpy(req + len, name, n);
    len += n;
    struct answer a;
    if (answer_init(&a) < 0) die("malloc");
    g_ctx = create(req, len, on_answer, &a);
    answer_wait(&a);
    if (!g_ctx || a.ret != RET_OK) {
        fprintf(stderr, PROG ": creating the library's context failed: %.*s\n", (int)a.len,
                (const char *)a.buf + 8);
        exit(1);
    }
    /* The library keeps no reference to a after the create callback. */
    answer_free(&a);
}

static void usage(FILE *to) {
    fprintf(to, "usage: " PROG " --library PATH [--unix PATH]... [--tcp HOST PORT]...\n"
                "                        [--name NAME] [--lifetime SECONDS]\n");
}

int main(int argc, char **argv) {
    const char *library = NULL, *name = "reference";
    long lifetime = 0; /* seconds; 0 = until SIGTERM/SIGINT */
    struct pollfd lfds[MAX_LISTENERS];
    const char *unix_paths[MAX_LISTENERS];
    int nlisten = 0, nunix = 0;

    for (int i = 1; i < argc; i++) {
        int is_unix = !strcmp(argv[i], "--unix") && i + 1 < argc;
        int is_tcp = !strcmp(argv[i], "--tcp") && i + 2 < argc;
        if ((is_unix || is_tcp) && nlisten == MAX_LISTENERS) {
            fprintf(stderr, PROG ": too many listeners\n");
            return 2;
        }
        if (is_unix) {
            unix_paths[nunix++] = argv[i + 1];
            lfds[nlisten++].fd = bench_listen_unix(PROG, argv[++i]);
        } else if (is_tcp) {
            lfds[nlisten++].fd = bench_listen_tcp(PROG, argv[i + 1], argv[i + 2]);
            i += 2;
        } else if (!strcmp(argv[i], "--library") && i + 1 < argc) {
            library = argv[++i];
        } else if (!strcmp(argv[i], "--name") && i + 1 < argc) {
            name = argv[++i];
        } else if (!strcmp(argv[i], "--lifetime") && i + 1 < argc) {
            lifetime = atol(argv[++i]);
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (!library || nlisten == 0 || strlen(name) > MAX_NAME_LEN) {
        usage(stderr);
        return 2;
    }
    for (int i = 0; i < nlisten; i++) lfds[i].events = POLLIN;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* The library's threads and the connections' threads are created with
     * SIGINT/SIGTERM blocked, so the signals reach this thread's ppoll(). */
    sigset_t stop_sigs, old;
    sigemptyset(&stop_sigs);
    sigaddset(&stop_sigs, SIGINT);
    sigaddset(&stop_sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_sigs, &old);
    open_library(library, name);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);

    time_t end = lifetime > 0 ? time(NULL) + lifetime : 0;
    const struct timespec tick = {.tv_sec = 1};
    while (!g_stop && (!end || time(NULL) < end)) {
        /* the signals are let in only while waiting here */
        int n = ppoll(lfds, (nfds_t)nlisten, &tick, &old);
        if (n < 0 && errno != EINTR) die("ppoll");
        for (int i = 0; n > 0 && i < nlisten; i++) {
            if (!(lfds[i].revents & POLLIN)) continue;
            int fd = accept4(lfds[i].fd, NULL, NULL, SOCK_CLOEXEC);
            if (fd >= 0) start_conn(fd, &attr);
        }
    }
    for (int i = 0; i < nunix; i++) unlink(unix_paths[i]);
    /* No my_timer_destroy: connection threads may be inside library calls,
     * and tearing the context down under them is a race the process, about
     * to end, has no reason to run. */
    _exit(0);
}

/* See gate.h for what this is and why it is shaped this way. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "gate.h"

/* What a refused peer may have sent that is read before its close: closing
   a unix socket with unread data makes the client's next read fail with
   ECONNRESET instead of showing it the answer and a clean EOF. */
#define GATE_DROP (64 * 1024)
/* After an accept4 that failed other than EAGAIN (EMFILE, ...) a thread
   waits this long: the listener stays readable, and retrying at once would
   spin. */
#define GATE_BACKOFF_MS 10
/* Counts alone wake the caller at most this often: in a flood, every turn
   of its loop would otherwise take a handful of counts. */
#define GATE_COUNT_EVERY_MS 50

struct entry {
    uint32_t uid, gid;
    int64_t until_ns; /* refused here until then (CLOCK_MONOTONIC) */
    uint64_t refused; /* since the last mt_gate_take */
    uint32_t len;
    uint8_t frame[MT_GATE_FRAME];
};

struct worker {
    mt_gate *g;
    int ep; /* this thread's epoll: the listener (exclusive wake-ups) and stopfd */
    pthread_t thread;
};

struct mt_gate {
    int lfd;
    int efd;    /* the caller's: readable while `armed` */
    int stopfd; /* readable once stopping: wakes every thread */
    atomic_int stopping;
    int nworkers; /* with an epoll (to close) */
    int nstarted; /* running */
    struct worker workers[MT_GATE_THREADS];

    pthread_mutex_t mu; /* everything below */
    pthread_cond_t room; /* the queue has room again, or stopping */
    int armed;           /* efd written since the last take */
    int err;
    uint64_t counted;    /* refusals since the last take */
    int64_t last_take_ns;
    int n; /* entries in use: the first n */
    struct entry entries[MT_GATE_PEERS];
    mt_peer waiting[MT_GATE_WAITING]; /* a ring: `count` from `head` */
    int head, count;
};

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void wake_caller(mt_gate *g) {
    uint64_t one = 1;
    /* A full counter (never in practice) still leaves the fd readable. */
    ssize_t n = write(g->efd, &one, sizeof one);
    (void)n;
}

/* Under g->mu: whether this event is the one that must wake the caller. */
static int arm(mt_gate *g) {
    if (g->armed)
        return 0;
    g->armed = 1;
    return 1;
}

static struct entry *find(mt_gate *g, uint32_t uid, uint32_t gid) {
    for (int i = 0; i < g->n; i++) {
        struct entry *e = &g->entries[i];
        if (e->uid == uid && e->gid == gid)
            return e;
    }
    return NULL;
}

static void answer(int fd, uint8_t *drop, const uint8_t *frame, size_t len) {
    /* Failures change nothing: the peer is closed all the same (a client
       that has gone, or whose buffer is full, misses only the answer). */
    ssize_t n = recv(fd, drop, GATE_DROP, MSG_DONTWAIT);
    n = send(fd, frame, len, MSG_DONTWAIT | MSG_NOSIGNAL);
    (void)n;
    close(fd);
}

static void back_off(mt_gate *g, int err) {
    pthread_mutex_lock(&g->mu);
    g->err = err;
    int wake = arm(g);
    pthread_mutex_unlock(&g->mu);
    if (wake)
        wake_caller(g);
    struct pollfd p = {.fd = g->stopfd, .events = POLLIN};
    poll(&p, 1, GATE_BACKOFF_MS);
}

/* One accepted peer: refused here, or queued for the caller. */
static void admit(mt_gate *g, int fd, uint8_t *drop, uint8_t *frame) {
    struct ucred cred;
    socklen_t clen = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) != 0) {
        /* Never for a unix stream socket; a peer that cannot be checked
           is not served. */
        close(fd);
        return;
    }
    int64_t now = now_ns();
    size_t len = 0;
    int refuse = 0, wake = 0;
    pthread_mutex_lock(&g->mu);
    struct entry *e = find(g, cred.uid, cred.gid);
    if (e && now < e->until_ns) {
        refuse = 1;
        len = e->len;
        memcpy(frame, e->frame, len); /* the caller may renew the entry meanwhile */
        e->refused++;
        g->counted++;
        if (now - g->last_take_ns >= (int64_t)GATE_COUNT_EVERY_MS * 1000000)
            wake = arm(g);
    } else {
        while (g->count == MT_GATE_WAITING && !atomic_load(&g->stopping))
            pthread_cond_wait(&g->room, &g->mu);
        if (atomic_load(&g->stopping)) {
            pthread_mutex_unlock(&g->mu);
            close(fd); /* only when the caller's loop is stuck at shutdown */
            return;
        }
        mt_peer *p = &g->waiting[(g->head + g->count++) % MT_GATE_WAITING];
        p->fd = fd;
        p->uid = cred.uid;
        p->gid = cred.gid;
        wake = arm(g);
    }
    pthread_mutex_unlock(&g->mu);
    if (wake)
        wake_caller(g);
    if (refuse)
        answer(fd, drop, frame, len);
}

/* How long a thread may wait for the listener: until counts that have not
   woken the caller are due (-1: none waiting). Wakes the caller if they
   are due now. */
static int timeout_ms(mt_gate *g) {
    int ms = -1;
    pthread_mutex_lock(&g->mu);
    if (g->counted && !g->armed) {
        int64_t due = g->last_take_ns + (int64_t)GATE_COUNT_EVERY_MS * 1000000 - now_ns();
        ms = due <= 0 ? 0 : (int)((due + 999999) / 1000000);
        if (ms == 0)
            g->armed = 1;
    }
    pthread_mutex_unlock(&g->mu);
    if (ms == 0) {
        wake_caller(g);
        ms = -1;
    }
    return ms;
}

static void *gate_main(void *arg) {
    struct worker *w = arg;
    mt_gate *g = w->g;
    uint8_t drop[GATE_DROP];
    uint8_t frame[MT_GATE_FRAME];
    while (!atomic_load(&g->stopping)) {
        struct epoll_event ev;
        if (epoll_wait(w->ep, &ev, 1, timeout_ms(g)) < 0 && errno != EINTR) {
            back_off(g, errno);
            continue;
        }
        while (!atomic_load(&g->stopping)) {
            int fd = accept4(g->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd >= 0) {
                admit(g, fd, drop, frame);
                continue;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                back_off(g, errno);
            break;
        }
    }
    return NULL;
}

static void stop_workers(mt_gate *g) {
    atomic_store(&g->stopping, 1);
    pthread_mutex_lock(&g->mu);
    pthread_cond_broadcast(&g->room);
    pthread_mutex_unlock(&g->mu);
    uint64_t one = 1;
    ssize_t n = write(g->stopfd, &one, sizeof one);
    (void)n;
    for (int i = 0; i < g->nstarted; i++)
        pthread_join(g->workers[i].thread, NULL);
    g->nstarted = 0;
}

mt_gate *mt_gate_new(void) {
    mt_gate *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->room, NULL);
    g->lfd = -1;
    g->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    g->stopfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (g->efd < 0 || g->stopfd < 0) {
        int err = errno;
        mt_gate_free(g);
        errno = err;
        return NULL;
    }
    return g;
}

int mt_gate_start(mt_gate *g, int lfd, int threads) {
    if (threads < 1 || threads > MT_GATE_THREADS || g->nworkers)
        return EINVAL;
    g->lfd = lfd;
    for (int i = 0; i < threads; i++) {
        struct worker *w = &g->workers[i];
        w->g = g;
        w->ep = epoll_create1(EPOLL_CLOEXEC);
        g->nworkers = i + 1; /* its epoll is closed by mt_gate_free */
        struct epoll_event lev = {.events = EPOLLIN | EPOLLEXCLUSIVE};
        struct epoll_event sev = {.events = EPOLLIN};
        if (w->ep < 0 || epoll_ctl(w->ep, EPOLL_CTL_ADD, lfd, &lev) != 0 ||
            epoll_ctl(w->ep, EPOLL_CTL_ADD, g->stopfd, &sev) != 0)
            return errno;
    }
    /* Signals go to the interpreter's thread, never to these (nor do they
       interrupt their system calls). */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int err = 0;
    while (g->nstarted < threads && !err) {
        struct worker *w = &g->workers[g->nstarted];
        err = pthread_create(&w->thread, NULL, gate_main, w);
        g->nstarted += !err;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err)
        stop_workers(g);
    return err;
}

int mt_gate_fd(mt_gate *g) { return g->efd; }

int mt_gate_take(mt_gate *g, mt_peer *peers, int max_peers, mt_gate_taken *taken) {
    uint64_t counter;
    ssize_t r = read(g->efd, &counter, sizeof counter); /* reset; EAGAIN is fine */
    (void)r;
    int n = 0;
    pthread_mutex_lock(&g->mu);
    while (n < max_peers && g->count) {
        peers[n++] = g->waiting[g->head];
        g->head = (g->head + 1) % MT_GATE_WAITING;
        g->count--;
    }
    taken->err = g->err;
    g->err = 0;
    taken->nrefused = 0;
    for (int i = 0; i < g->n; i++) {
        struct entry *e = &g->entries[i];
        if (!e->refused)
            continue;
        mt_refused *out = &taken->refused[taken->nrefused++];
        out->uid = e->uid;
        out->gid = e->gid;
        out->refused = e->refused;
        e->refused = 0;
    }
    g->counted = 0;
    g->last_take_ns = now_ns();
    /* Disarmed under the lock, so the next event writes the eventfd again;
       peers left behind write it now. */
    int more = g->count > 0;
    g->armed = more;
    if (n)
        pthread_cond_broadcast(&g->room);
    pthread_mutex_unlock(&g->mu);
    if (more)
        wake_caller(g);
    return n;
}

int mt_gate_refuse(mt_gate *g, uint32_t uid, uint32_t gid, const uint8_t *frame, size_t len,
                   int lease_ms) {
    if (len > MT_GATE_FRAME)
        return -1;
    pthread_mutex_lock(&g->mu);
    struct entry *e = find(g, uid, gid);
    if (!e && g->n < MT_GATE_PEERS)
        e = &g->entries[g->n++];
    if (!e) {
        /* Evicting an entry with a count waiting would lose the count. */
        for (int i = 0; i < MT_GATE_PEERS; i++) {
            struct entry *c = &g->entries[i];
            if (!c->refused && (!e || c->until_ns < e->until_ns))
                e = c;
        }
        if (!e) {
            pthread_mutex_unlock(&g->mu);
            return -2;
        }
    }
    e->uid = uid;
    e->gid = gid;
    e->until_ns = now_ns() + (int64_t)lease_ms * 1000000;
    e->len = (uint32_t)len;
    memcpy(e->frame, frame, len);
    pthread_mutex_unlock(&g->mu);
    return 0;
}

void mt_gate_stop(mt_gate *g) { stop_workers(g); }

void mt_gate_free(mt_gate *g) {
    for (int i = 0; i < g->count; i++)
        close(g->waiting[(g->head + i) % MT_GATE_WAITING].fd);
    for (int i = 0; i < g->nworkers; i++)
        if (g->workers[i].ep >= 0)
            close(g->workers[i].ep);
    if (g->stopfd >= 0)
        close(g->stopfd);
    if (g->efd >= 0)
        close(g->efd);
    pthread_cond_destroy(&g->room);
    pthread_mutex_destroy(&g->mu);
    free(g);
}

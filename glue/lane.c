/* See lane.h for what this is and why it is shaped this way. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "glue.h"
#include "internal.h"
#include "lane.h"

/* A whole quick request always fits, so a buffer that cannot tell is never full. */
_Static_assert(4 + MT_QUICK_NAME + 5 < MT_LANE_IN, "MT_LANE_IN holds a quick request");

#define SLOT_BITS 10
#define MAX_SLOTS (1 << SLOT_BITS)
/* epoll tag of the answers' eventfd (slots are tagged by their number). */
#define ANSWERS_TAG UINT64_MAX

struct slot {
    int fd;             /* -1: free */
    bool readable;      /* epoll said so and a read has not found it empty */
    bool hup;           /* epoll said the client closed its side (or an error) */
    bool back;          /* handed back: waits for mt_lane_take */
    int method;         /* of the call in flight */
    uint64_t call_id;   /* 0: none in flight */
    int64_t started_ns;
    int64_t last_ns;
    uint32_t in_len;
    uint8_t in[MT_LANE_IN];
    void *tls;          /* its TLS session (lanetls.c), NULL: plaintext */
    uint8_t *out;       /* the unwritten rest of an answer (MT_LANE_FULL), sealed if TLS */
    size_t out_len;
};

struct mt_lane {
    mt_host *h;
    uint64_t id_base;
    uint64_t seq;
    int ep, efd;
    int nslots, used;
    struct slot *slots;
    int *free_slots, nfree;
    /* answers from the library's threads, behind mu */
    pthread_mutex_t mu;
    struct done *head, **tail;
    bool armed;
    /* the connection's slot while there is one, else -1 */
    int sole;
    /* how long serve_lone waits for the next request now */
    int64_t lone_wait;
    atomic_int queued; /* answers in the queue */
    int64_t expect_ns; /* the answers of the calls made so far are due by then */
};

mt_lane *mt_lane_new(mt_host *h, int slots, uint64_t id_base) {
    if (slots < 1 || slots > MAX_SLOTS)
        return NULL;
    mt_lane *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->slots = calloc((size_t)slots, sizeof *l->slots);
    l->free_slots = calloc((size_t)slots, sizeof *l->free_slots);
    l->ep = epoll_create1(EPOLL_CLOEXEC);
    l->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = ANSWERS_TAG};
    if (!l->slots || !l->free_slots || l->ep < 0 || l->efd < 0 ||
        epoll_ctl(l->ep, EPOLL_CTL_ADD, l->efd, &ev) != 0) {
        if (l->ep >= 0)
            close(l->ep);
        if (l->efd >= 0)
            close(l->efd);
        free(l->slots);
        free(l->free_slots);
        free(l);
        return NULL;
    }
    l->h = h;
    l->id_base = id_base;
    l->nslots = slots;
    for (int i = 0; i < slots; i++) {
        l->slots[i].fd = -1;
        l->free_slots[slots - 1 - i] = i; /* slot 0 is taken first */
    }
    l->nfree = slots;
    l->sole = -1;
    pthread_mutex_init(&l->mu, NULL);
    l->tail = &l->head;
    glue_set_lane(h, l);
    return l;
}

void lane_free(struct mt_lane *l) {
    for (struct done *d = l->head; d;) {
        struct done *next = d->next;
        free(d);
        d = next;
    }
    for (int i = 0; i < l->nslots; i++)
        free(l->slots[i].out);
    close(l->ep);
    close(l->efd);
    pthread_mutex_destroy(&l->mu);
    free(l->slots);
    free(l->free_slots);
    free(l);
}

int mt_lane_fd(mt_lane *l) { return l->ep; }

int mt_lane_count(mt_lane *l) { return l->used; }

/* Make the lane's descriptor readable: answers wait in the queue. */
static void signal_answers(mt_lane *l) {
    uint64_t one = 1;
    ssize_t n = write(l->efd, &one, sizeof one); /* EAGAIN (a full count) is as good */
    (void)n;
}

void lane_answer(struct mt_lane *l, struct done *d) {
    if (!d)
        return;
    pthread_mutex_lock(&l->mu);
    *l->tail = d;
    l->tail = &d->next;
    atomic_fetch_add_explicit(&l->queued, 1, memory_order_release);
    bool wake = !l->armed;
    l->armed = true;
    pthread_mutex_unlock(&l->mu);
    if (wake)
        signal_answers(l);
}

int mt_lane_add(mt_lane *l, int fd, void *tls) {
    if (!l->nfree)
        return -1;
    int i = l->free_slots[l->nfree - 1];
    /* Edge-triggered: a read that comes back short has taken all there was,
       and bytes that arrive later raise a new edge. */
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.u64 = (uint64_t)i};
    if (epoll_ctl(l->ep, EPOLL_CTL_ADD, fd, &ev) != 0)
        return -1;
    l->nfree--;
    l->used++;
    l->sole = l->used == 1 ? i : -1;
    struct slot *s = &l->slots[i];
    s->fd = fd;
    s->readable = false;
    s->hup = false;
    s->back = false;
    s->call_id = 0;
    s->in_len = 0;
    s->tls = tls;
    s->out = NULL;
    s->out_len = 0;
    s->last_ns = now_ns();
    return i;
}

/* Hand slot i back to the loop: out of epoll now, taken by mt_lane_take. */
static void hand_back(mt_lane *l, int i, int why, mt_lane_back *back, int *nback) {
    struct slot *s = &l->slots[i];
    if (s->back)
        return;
    s->back = true;
    epoll_ctl(l->ep, EPOLL_CTL_DEL, s->fd, NULL);
    back[*nback].slot = i;
    back[*nback].why = why;
    (*nback)++;
}

int64_t mt_lane_take(mt_lane *l, int slot, uint8_t *buf, size_t cap, mt_lane_state *st) {
    if (slot < 0 || slot >= l->nslots || l->slots[slot].fd < 0) {
        memset(st, 0, sizeof *st); /* nothing there: nothing sent, nothing in flight */
        return 0;
    }
    struct slot *s = &l->slots[slot];
    size_t need = s->in_len + s->out_len;
    if (need > cap)
        return -(int64_t)need;
    if (!s->back)
        epoll_ctl(l->ep, EPOLL_CTL_DEL, s->fd, NULL);
    memcpy(buf, s->in, s->in_len);
    if (s->out_len)
        memcpy(buf + s->in_len, s->out, s->out_len);
    st->call_id = s->call_id;
    st->method = s->method;
    st->in_len = (int32_t)s->in_len;
    st->started_ns = s->started_ns;
    st->last_ns = s->last_ns;
    free(s->out);
    s->out = NULL;
    s->out_len = 0;
    s->fd = -1;
    s->tls = NULL;
    s->call_id = 0;
    s->back = false;
    l->free_slots[l->nfree++] = slot;
    l->used--;
    l->sole = -1;
    if (l->used == 1)
        for (int k = 0; k < l->nslots && l->sole < 0; k++) /* rare: a take leaving one */
            if (l->slots[k].fd >= 0)
                l->sole = k;
    return (int64_t)need;
}

/* What the slot's buffer starts with: a whole quick request (its method
   number, *size its bytes), -1 not one (hand back), -2 too little to tell. */
static int quick_frame(mt_lane *l, struct slot *s, size_t *size) {
    uint32_t n = s->in_len;
    if (n < 4)
        return -2;
    uint32_t mlen = get_be32(s->in);
    /* [u32 name length][name][u32 1][0xa0], the name a quick method's */
    if (mlen > MT_QUICK_NAME)
        return -1;
    if (n < 4 + mlen)
        return -2;
    int method = glue_quick_method(l->h, s->in + 4, mlen);
    if (method < 0)
        return -1;
    if (n < 4 + mlen + 4)
        return -2;
    if (get_be32(s->in + 4 + mlen) != 1)
        return -1;
    if (n < 4 + mlen + 5)
        return -2;
    if (s->in[4 + mlen + 4] != 0xa0)
        return -1;
    *size = 4 + mlen + 5;
    return method;
}

/* Read what slot s's client sent into its buffer (waiting until deadline
   for the first bytes, when not 0): recv's result, and s->readable says
   whether more may be there without a new edge (a plaintext read that
   filled the buffer; for TLS, records the session holds). */
static ssize_t slot_read(struct slot *s, int64_t deadline) {
    size_t room = MT_LANE_IN - s->in_len;
    uint8_t *to = s->in + s->in_len;
    bool more;
    ssize_t got;
    if (s->tls) {
        got = lane_tls_recv(s->tls, s->fd, to, room, deadline, &more);
    } else {
        got = deadline ? glue_spin_recv(s->fd, to, room, deadline)
                       : recv(s->fd, to, room, MSG_DONTWAIT);
        more = got == (ssize_t)room;
    }
    if (got > 0) {
        s->in_len += (uint32_t)got;
        s->readable = more;
    } else if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        s->readable = false; /* all read: what comes next raises an edge */
    }
    return got;
}

/* Serve slot i while it owes nothing: call its next request, reading more
   when the buffer holds too little; or hand it back. */
static void serve(mt_lane *l, int i, mt_lane_back *back, int *nback) {
    struct slot *s = &l->slots[i];
    while (!s->back && !s->call_id) {
        size_t size = 0;
        int method = quick_frame(l, s, &size);
        if (method >= 0) {
            uint64_t id = l->id_base + (++l->seq << SLOT_BITS) + (uint64_t)i;
            s->call_id = id;
            s->method = method;
            s->started_ns = s->last_ns = now_ns();
            int64_t due = glue_answer_wait(l->h, method, MT_INLINE_WAIT_NS);
            if (due && s->started_ns + due > l->expect_ns)
                l->expect_ns = s->started_ns + due;
            if (glue_lane_call(l->h, method, id, s->in + size - 1, 1) != 0) {
                s->call_id = 0; /* not made (shutting down): the loop answers it */
                hand_back(l, i, MT_LANE_OTHER, back, nback);
                return;
            }
            memmove(s->in, s->in + size, s->in_len - size);
            s->in_len -= (uint32_t)size;
            return;
        }
        if (method == -1) {
            hand_back(l, i, MT_LANE_OTHER, back, nback);
            return;
        }
        if (!s->readable) {
            /* (a short read leaves readable false: an end that had come
               with the bytes raises no new edge, so epoll's word counts) */
            if (s->hup)
                hand_back(l, i, MT_LANE_EOF, back, nback);
            return;
        }
        ssize_t got = slot_read(s, 0);
        if (got == 0)
            hand_back(l, i, MT_LANE_EOF, back, nback);
        else if (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            hand_back(l, i, MT_LANE_ERROR, back, nback);
    }
}

/* Send an answer (head, then len bytes of data) in the clear: as
   lane_tls_send (lanetls.c), 0 all sent; 1 the socket took part, and
   *rest (malloc'd, *rest_len bytes) holds the rest; -1 failed (errno). */
static int plain_send(int fd, const uint8_t head[8], const uint8_t *data, uint32_t len,
                      uint8_t **rest, size_t *rest_len) {
    struct iovec iov[2] = {{(void *)head, 8}, {(void *)data, len}};
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = 2};
    size_t total = 8 + (size_t)len;
    ssize_t put = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (put == (ssize_t)total)
        return 0;
    if (put < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        return -1;
    size_t done = put > 0 ? (size_t)put : 0;
    size_t left = total - done;
    uint8_t *out = malloc(left);
    if (!out) {
        errno = ENOMEM; /* the client's answer is cut; it reads an error */
        return -1;
    }
    size_t from_head = done < 8 ? 8 - done : 0;
    memcpy(out, head + (8 - from_head), from_head);
    memcpy(out + from_head, data + (done > 8 ? done - 8 : 0), left - from_head);
    *rest = out;
    *rest_len = left;
    return 1;
}

/* Write the answer d of slot i's call; false if the slot went back (its
   unwritten rest, sealed if TLS, in s->out: MT_LANE_FULL). */
static bool answer(mt_lane *l, int i, struct done *d, mt_lane_back *back, int *nback) {
    struct slot *s = &l->slots[i];
    uint8_t head[8];
    put_be32(head, (uint32_t)d->ret);
    put_be32(head + 4, d->len);
    int sent = s->tls ? lane_tls_send(s->tls, s->fd, head, d->data, d->len, &s->out, &s->out_len)
                      : plain_send(s->fd, head, d->data, d->len, &s->out, &s->out_len);
    s->call_id = 0;
    s->last_ns = now_ns();
    if (sent == 0)
        return true;
    hand_back(l, i, sent > 0 ? MT_LANE_FULL : MT_LANE_ERROR, back, nback);
    return false;
}

/* What one turn of mt_lane_run writes its results to. */
struct turn_out {
    mt_lane_back *back;
    int *nback;
    mt_lane_tally *tally;
    int *ntally;
    double *secs;
    int max_calls;
    int *ncalls;
    uint8_t *orphans;
    size_t orphans_cap;
    int64_t *orphans_len;
};

/* Write the answers queued so far (from the library's threads), then serve
   each answered connection's next request; answers of calls no longer in
   the lane go to the orphans. looking: the caller looks at the queue again
   (no eventfd meanwhile), else the next answer writes it. True if some did
   not fit this turn (they go back to the queue, and the eventfd says so). */
static bool collect(mt_lane *l, struct turn_out *o, bool looking) {
    pthread_mutex_lock(&l->mu);
    struct done *d = l->head;
    l->head = NULL;
    l->tail = &l->head;
    l->armed = looking;
    atomic_store_explicit(&l->queued, 0, memory_order_relaxed);
    pthread_mutex_unlock(&l->mu);
    size_t olen = (size_t)*o->orphans_len;
    bool left = false;
    while (d) {
        struct done *next = d->next;
        int i = (int)(d->id & (MAX_SLOTS - 1));
        struct slot *s = i < l->nslots ? &l->slots[i] : NULL;
        bool ours = s && s->fd >= 0 && s->call_id == d->id;
        if (ours ? *o->ncalls == o->max_calls : olen + 16 + d->len > o->orphans_cap) {
            /* no room this turn: the rest go back to the queue's head */
            int more = 1;
            struct done *last = d;
            for (; last->next; more++)
                last = last->next;
            pthread_mutex_lock(&l->mu);
            last->next = l->head;
            if (!l->head)
                l->tail = &last->next;
            l->head = d;
            atomic_fetch_add_explicit(&l->queued, more, memory_order_relaxed);
            pthread_mutex_unlock(&l->mu);
            signal_answers(l);
            left = true;
            break;
        }
        if (ours) {
            o->secs[(*o->ncalls)++] = (double)(now_ns() - s->started_ns) / 1e9;
            mt_lane_tally *t = *o->ntally ? &o->tally[*o->ntally - 1] : NULL;
            if (t && t->method == s->method && t->ret == d->ret) {
                t->count++;
            } else {
                t = &o->tally[(*o->ntally)++];
                t->method = s->method;
                t->ret = d->ret;
                t->count = 1;
            }
            if (answer(l, i, d, o->back, o->nback)) {
                if (s->in_len) {
                    /* it sent ahead: the loop serves a pipeline in
                       batches, the lane one call at a time */
                    hand_back(l, i, MT_LANE_AHEAD, o->back, o->nback);
                } else {
                    serve(l, i, o->back, o->nback);
                }
            }
        } else {
            memcpy(o->orphans + olen, &d->id, 8);
            memcpy(o->orphans + olen + 8, &d->ret, 4);
            memcpy(o->orphans + olen + 12, &d->len, 4);
            memcpy(o->orphans + olen + 16, d->data, d->len);
            olen += 16 + d->len;
        }
        free(d);
        d = next;
    }
    *o->orphans_len = (int64_t)olen;
    return left;
}

/* The lane's only connection, while the loop has nothing else to do
   (lone_ns > 0): served on the spot, as the loop's read-ahead serves a lone
   client, for MT_READ_AHEAD_SLICE_NS at most (then the loop's turn; with
   the waits below, a lone client's turn lasts about that slice,
   MT_INLINE_WAIT_NS and lone_ns at most). Its call's answer is waited for
   as the glue's call_wait waits (glue_answer_wait) and written, then its
   next request is waited for on its socket: l->lone_wait, which halves
   after a wait in vain, down to MT_READ_AHEAD_MIN_NS, and doubles after
   one that saw a request, up to lone_ns. So a client calling back to back costs no
   eventfd, no wake-up of the loop and no turn per call, which cost more
   than the call on a virtual machine. True if answers were left for a
   later turn (the eventfd says so). */
static bool serve_lone(mt_lane *l, int i, int64_t lone_ns, struct turn_out *o) {
    struct slot *s = &l->slots[i];
    int64_t end = now_ns() + MT_READ_AHEAD_SLICE_NS;
    if (l->lone_wait <= 0 || l->lone_wait > lone_ns)
        l->lone_wait = lone_ns;
    while (!s->back && s->fd >= 0 && *o->ncalls < o->max_calls) {
        if (s->call_id) {
            int64_t wait = glue_answer_wait(l->h, s->method, MT_INLINE_WAIT_NS);
            if (!wait)
                return false; /* a slow call: its answer comes in a later turn */
            int64_t deadline = now_ns() + wait;
            pthread_mutex_lock(&l->mu);
            l->armed = true; /* collect below looks: no eventfd meanwhile */
            pthread_mutex_unlock(&l->mu);
            for (int k = 0; !atomic_load_explicit(&l->queued, memory_order_acquire); k++)
                if (!glue_spin_step(k, deadline))
                    break;
            uint64_t call = s->call_id;
            bool left = collect(l, o, false);
            if (left || s->call_id == call)
                return left; /* not answered in time: it comes in a later turn */
            continue;        /* answered; collect served what it had buffered */
        }
        /* Part of a request (the rest raises an edge), or the slice is
           over: a later turn. Whatever came since the last read raised an
           edge too, as every read here went on until one came back short. */
        if (s->in_len || now_ns() >= end)
            return false;
        ssize_t got = slot_read(s, now_ns() + l->lone_wait);
        if (got > 0) {
            l->lone_wait = 2 * l->lone_wait < lone_ns ? 2 * l->lone_wait : lone_ns;
            serve(l, i, o->back, o->nback);
        } else if (got == 0) {
            hand_back(l, i, MT_LANE_EOF, o->back, o->nback);
        } else if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            l->lone_wait = l->lone_wait / 2 < MT_READ_AHEAD_MIN_NS ? MT_READ_AHEAD_MIN_NS
                                                                   : l->lone_wait / 2;
            s->readable = false;
            return false;
        } else {
            hand_back(l, i, MT_LANE_ERROR, o->back, o->nback);
        }
    }
    return false;
}

/* Look at the lane's sockets without waiting: each that epoll says is
   ready is marked readable (and ended, if so) and evs[0..n) tells which;
   *answers says whether the answers' eventfd was among them. */
static int look(mt_lane *l, struct epoll_event evs[MT_LANE_EVENTS], bool *answers) {
    int n = epoll_wait(l->ep, evs, MT_LANE_EVENTS, 0);
    *answers = false;
    for (int k = 0; k < n; k++) {
        if (evs[k].data.u64 == ANSWERS_TAG) {
            *answers = true;
            continue;
        }
        struct slot *s = &l->slots[evs[k].data.u64];
        if (s->fd >= 0) {
            s->readable = true;
            if (evs[k].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                s->hup = true;
        }
    }
    return n;
}

/* Serve each socket look() found ready; false if there was none. */
static bool serve_ready(mt_lane *l, const struct epoll_event *evs, int n, mt_lane_back *back,
                        int *nback) {
    bool any = false;
    for (int k = 0; k < n; k++) {
        uint64_t tag = evs[k].data.u64;
        if (tag != ANSWERS_TAG && l->slots[tag].fd >= 0) {
            serve(l, (int)tag, back, nback);
            any = true;
        }
    }
    return any;
}

/* Several connections, while the loop has nothing else to do: the answers
   of the calls made are waited for on the spot while they are due
   (expect_ns: each method's usual time, as serve_lone waits), written, and
   the requests that came meanwhile served, one round after another, for
   MT_BUSY_SLICE_NS at most. So a busy lane costs no eventfd, no
   wake-up of the loop and no turn of Python per round of calls; once
   nothing comes and nothing is due, the loop's turn. True if answers were
   left for a later turn (the eventfd says so). */
static bool serve_busy(mt_lane *l, struct turn_out *o, int back_cap) {
    int64_t end = now_ns() + MT_BUSY_SLICE_NS;
    bool left = false;
    pthread_mutex_lock(&l->mu);
    l->armed = true; /* this turn looks at the queue: no eventfd meanwhile */
    pthread_mutex_unlock(&l->mu);
    /* (room for a round's hand-backs: one per socket event, one per answer) */
    for (int idle = 0; *o->ncalls < o->max_calls &&
                       *o->nback + MT_LANE_EVENTS + o->max_calls - *o->ncalls <= back_cap;) {
        bool answered = atomic_load_explicit(&l->queued, memory_order_acquire) != 0;
        if (answered && (left = collect(l, o, true)))
            break;
        struct epoll_event evs[MT_LANE_EVENTS];
        bool unused;
        int n = look(l, evs, &unused);
        bool ready = serve_ready(l, evs, n, o->back, o->nback);
        int64_t now = now_ns();
        if (now >= end)
            break;
        if (answered || ready) {
            idle = 0;
            continue;
        }
        int64_t due = l->expect_ns < end ? l->expect_ns : end;
        if (now >= due || !glue_spin_step(idle++, due))
            break;
    }
    /* the loop's turn: from now on an answer writes the eventfd */
    pthread_mutex_lock(&l->mu);
    bool wake = l->head != NULL;
    l->armed = wake;
    pthread_mutex_unlock(&l->mu);
    if (wake)
        signal_answers(l);
    return left;
}

int mt_lane_run(mt_lane *l, int64_t lone_ns, mt_lane_back *back, int back_cap, int *nback,
                mt_lane_tally *tally, int *ntally, double *secs, int max_calls, int *ncalls,
                uint8_t *orphans, size_t orphans_cap, int64_t *orphans_len) {
    *nback = 0;
    *ntally = 0;
    *ncalls = 0;
    *orphans_len = 0;
    /* Every socket event may hand one back, every answer one more: room
       for both, or this turn does nothing. */
    if (back_cap < MT_LANE_EVENTS + max_calls)
        return 1;
    struct turn_out o = {back,      nback,  tally,   ntally,      secs,
                         max_calls, ncalls, orphans, orphans_cap, orphans_len};
    struct epoll_event evs[MT_LANE_EVENTS];
    bool answers;
    int n = look(l, evs, &answers);
    bool left = n == MT_LANE_EVENTS;
    if (answers) {
        uint64_t count;
        ssize_t r = read(l->efd, &count, sizeof count); /* reset; EAGAIN is fine */
        (void)r;
        left |= collect(l, &o, false);
    }
    serve_ready(l, evs, n, back, nback);
    if (lone_ns > 0 && l->used == 1 && l->sole >= 0)
        left |= serve_lone(l, l->sole, lone_ns, &o);
    else if (lone_ns > 0 && l->used > 1 && !left && l->expect_ns > now_ns())
        left |= serve_busy(l, &o, back_cap);
    return left;
}

int mt_lane_sweep(mt_lane *l, int64_t idle_ns, int64_t slow_ns, mt_lane_back *back,
                  int back_cap) {
    int64_t now = now_ns();
    int nback = 0;
    for (int i = 0; i < l->nslots && nback < back_cap; i++) {
        struct slot *s = &l->slots[i];
        if (s->fd < 0 || s->back)
            continue;
        if (s->call_id ? now - s->started_ns >= slow_ns : now - s->last_ns >= idle_ns)
            hand_back(l, i, MT_LANE_QUIET, back, &nback);
    }
    return nback;
}

/*
 * The gate of a unix listener with allow-lists (mytimerd/daemon/gate.py):
 * threads that accept on the listener, read each peer's SO_PEERCRED and
 * refuse on their own the peers (uid, gid) in a table the caller keeps
 * filled; every other peer is handed to the caller through a queue and an
 * eventfd its event loop watches.
 *
 * Why threads: a uid the allow-lists refuse can flood connect(). Refusing
 * costs the kernel's accept and close (8-10 us) whatever the language; done
 * on the event loop's one thread, even in C, a flood from a client with more
 * threads got as much CPU as the refusing, the listen queue held 1,000-1,800
 * connections and an allowed client waited behind them (p99 54-140 ms in
 * tests/hostile's connect-flood row, 2 CPUs). The gate's threads refuse in
 * parallel, never take the GIL and never stall the event loop.
 *
 * This file is read by cffi's cdef(): declarations only, no preprocessor.
 */

typedef struct mt_gate mt_gate;

/* Threads one gate runs at most. */
#define MT_GATE_THREADS 8
/* Peers (uid, gid) the table holds at most: a refused peer past these is
   handed to the caller, which refuses it itself (slower, still right). The
   bound keeps the memory fixed and the lookup (a scan, per accepted
   connection) short however many uids flood. */
#define MT_GATE_PEERS 256
/* Longest answer the table keeps (PermissionDenied is ~160 bytes). */
#define MT_GATE_FRAME 512
/* Peers handed over and not taken yet, at most: past it the threads stop
   accepting until the caller takes some (its loop is behind). */
#define MT_GATE_WAITING 1024

/* A peer handed over: accepted non-blocking and close-on-exec, the
   caller's to serve or close. */
typedef struct {
    int fd;
    uint32_t uid;
    uint32_t gid;
} mt_peer;

/* Peers of (uid, gid) the table refused since the last mt_gate_take. */
typedef struct {
    uint32_t uid;
    uint32_t gid;
    uint64_t refused;
} mt_refused;

/* What mt_gate_take found besides the peers. */
typedef struct {
    /* errno of the last accept4 that failed (EMFILE, ENFILE, ENOBUFS, ...)
       since the last take; 0: none. The thread waits a little after one. */
    int err;
    int nrefused;
    mt_refused refused[MT_GATE_PEERS];
} mt_gate_taken;

/* A gate with an empty table and no threads yet; NULL with errno set on
   failure. */
mt_gate *mt_gate_new(void);
/* Start `threads` threads (1..MT_GATE_THREADS) accepting on the listening,
   non-blocking unix socket lfd, which must stay open until mt_gate_stop.
   Once per gate. 0, or an errno value (no thread is left running). */
int mt_gate_start(mt_gate *g, int lfd, int threads);
/* An eventfd that is readable while peers, counts or an error wait for
   mt_gate_take. */
int mt_gate_fd(mt_gate *g);
/* Move up to max_peers waiting peers into peers[] (the number is returned),
   and every count and the last error into *taken. The eventfd is readable
   again at once if peers are still waiting. */
int mt_gate_take(mt_gate *g, mt_peer *peers, int max_peers, mt_gate_taken *taken);
/* Refuse peer (uid, gid) with `frame` for the next lease_ms milliseconds:
   read what it sent (up to 64 KiB, so that the close is not a reset), send
   the frame without waiting, close, count. Renews the peer's entry if it
   has one, else takes a free one, else the one whose lease ended first of
   those with no count waiting. 0; -1 if the frame is longer than
   MT_GATE_FRAME; -2 if every entry has a count waiting (not added). */
int mt_gate_refuse(mt_gate *g, uint32_t uid, uint32_t gid, const uint8_t *frame, size_t len,
                   int lease_ms);
/* Stop and join the threads (if started); mt_gate_take still hands over
   what waits. */
void mt_gate_stop(mt_gate *g);
/* After mt_gate_stop, or instead of mt_gate_start: close the peers never
   taken and free the gate. */
void mt_gate_free(mt_gate *g);

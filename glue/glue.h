/*
 * The daemon's side of the nim-ffi CBOR ABI: a host that loads any such
 * library (libmy_timer, libecho, ...; symbols bound by the library's name
 * at run time) and moves calls and results between the
 * asyncio event loop and the library without ever running Python on a
 * library thread.
 *
 * - Calls are queued to one submitter thread, so a library that blocks a
 *   submitting call (the real one can) never blocks the event loop.
 * - Results are copied by a C callback into a completion queue; the event
 *   loop is woken through an eventfd and drains them in batches. No
 *   ffi.callback() is involved, so this works under MemoryDenyWriteExecute.
 * - A caller may instead wait a few microseconds for one call's answer
 *   (mt_call, mt_quick): the callback hands it over directly, and the loop
 *   answers in the same turn, with no wake-up on the eventfd. The wait is
 *   bounded, so a library that is slow (or stuck) never holds the loop.
 *
 * This file is read by cffi's cdef(): declarations only, no preprocessor.
 */

typedef struct mt_host mt_host;

/* Most methods (and static calls) one library may have bound. */
#define MT_MAX_METHODS 64
/* Longest library name (the symbol prefix, e.g. "my_timer"). */
#define MT_MAX_PREFIX 64
/* mt_call waits twice a method's usual answer time and this much more. */
#define MT_WAIT_SLACK_NS 5000
/* The longest the event loop's thread waits for one answer on the spot
   (mt_call, mt_quick for a lone caller, the lane for a lone client): an
   answer caught costs no wake-up of the loop (the eventfd, a turn, the
   drain); a method that usually answers slower is not waited for. Long
   enough for a library that answers through a thread hand-off (40-60 us
   on a 2-vCPU VM whose idle CPUs are slow to wake). */
#define MT_INLINE_WAIT_NS 100000
/* Reading a lone client ahead (the loop's read-ahead, the lane's lone
   serving): one go lasts this long at most, and a wait for its next request
   that came in vain halves the next one, down to MT_READ_AHEAD_MIN_NS. */
#define MT_READ_AHEAD_SLICE_NS 250000
#define MT_READ_AHEAD_MIN_NS 4000
/* The lane serving several connections round after round while the loop
   has nothing else to do: one go lasts this long at most (and one answer's
   wait), which is how much longer a client that joins meanwhile waits.
   Measured with 16 clients: 100 us keeps most of 250 us's gain, and a
   bystander's median wait grows by about 120 us instead of 320 us. */
#define MT_BUSY_SLICE_NS 100000
/* While calls come this close together, the submitter thread looks for
   the next one (twice their usual distance, this long at most) before it
   sleeps. */
#define MT_SUBMIT_SPIN_NS 150000
/* A library whose calls usually take the submitter this long or more (the
   real nim-ffi build's: a call returns once the library's thread has taken
   the request) is called from the CPU that thread calls back from. */
#define MT_HANDOFF_NS 4000
/* Methods mt_quick serves, at most, and their longest name. */
#define MT_QUICK_METHODS 8
#define MT_QUICK_NAME 64

/* One call mt_quick made: its method number, the answer's ret (-1: the
   answer comes later through mt_drain) and how long it took. */
typedef struct {
    int32_t method;
    int32_t ret;
    int64_t ns;
} mt_quick_call;

typedef struct {
    int64_t in_call_ns;     /* how long the current library call has run, 0 if none */
    uint64_t queued;        /* calls waiting for the submitter */
    uint64_t submitted;     /* calls handed to the library */
    uint64_t completed;     /* final callbacks received */
    uint64_t stale_warnings;/* RET_STALE_WARN callbacks (newer nim-ffi), not final */
    uint64_t events;        /* events received by the listeners */
} mt_status;

/* Load the nim-ffi library at path whose symbols start with prefix + "_"
   (its name, e.g. "my_timer": my_timer_create_cbor or my_timer_create,
   my_timer_destroy, ...); NULL with a message in err on failure. */
mt_host *mt_open(const char *path, const char *prefix, char *err, size_t errlen);
/* Index of method `name` (entry point <prefix>_<name>[_cbor]) for mt_submit;
   -1 if the library lacks it, -2 if that symbol is the constructor, the
   destructor or a listener entry point, -3 past MT_MAX_METHODS. */
int mt_bind(mt_host *h, const char *name);
/* Like mt_bind, for a static entry point: no context, (cb, userData, req, len). */
int mt_bind_static(mt_host *h, const char *name);
/* The nim-ffi symbol generation: 2 (names with _cbor) or 3 (without). */
int mt_generation(mt_host *h);
/* After mt_create: listen to event `name` (by its exact name); its events come
   out of mt_drain as RET_OK records with id `id`. 0, or -1 if the library has
   no listener entry point or refused. */
int mt_listen(mt_host *h, const char *name, uint64_t id);
/* RET_STALE_WARN callbacks received so far by calls of method number `method`. */
uint64_t mt_stale(mt_host *h, int method);
/* Create the one context and wait for its callback (at most timeout_ms).
   With `direct`, mt_submit calls the library on the caller's thread instead
   of queueing to the submitter thread: one thread hand-off less per call,
   for libraries whose calls never block. 0 on success; otherwise -1 and a
   message in err. */
int mt_create(mt_host *h, const uint8_t *req, size_t len, int timeout_ms, int direct,
              char *err, size_t errlen);
/* Call (direct) or queue a call of method number `method` with request id `id`; the
   payload is copied. 0 on success, -1 if shutting down or out of memory. */
int mt_submit(mt_host *h, int method, uint64_t id, const uint8_t *payload, size_t len);
/* mt_submit, then wait for the call's answer when the method's calls usually
   take at most max_wait_ns (from submission to the final callback, a moving
   average): a caller that answers on the spot needs no wake-up on the
   eventfd. It waits twice the usual time and MT_WAIT_SLACK_NS more, at most
   max_wait_ns, spinning and yielding the core (a library thread on it gets
   to answer). Returns the size of the answer's response frame written to
   buf ([i32 ret][u32 len][body], big-endian, as on the wire); 0 when the
   answer comes later through mt_drain (not waited for, not in time, or
   larger than cap); -1 as mt_submit fails. */
int64_t mt_call(mt_host *h, int method, uint64_t id, const uint8_t *payload, size_t len,
                int64_t max_wait_ns, uint8_t *buf, size_t cap);
/* Let mt_quick serve method number `method` under its wire name `name`
   (the caller checked that it would make a call of it with the empty map as
   it is, without looking at it). 0, or -1 when MT_QUICK_METHODS are served
   already, the name is longer than MT_QUICK_NAME or the method unbound. */
int mt_quick_add(mt_host *h, const char *name, int method);
/* The quick path of the wire: for each request frame at the start of
   data[0..len) that names a method of mt_quick_add with the canonical empty
   map (0xa0) as its payload, make the call (ids first_id, first_id + 1, ...)
   as mt_call does and append the answer's response frame to out. Stops at
   any other frame, an incomplete one, after max_calls calls, after a call
   whose answer comes later (through mt_drain, as does an answer that does
   not fit in cap), and before a call the library refuses (shutting down).
   Returns the bytes of data consumed (whole frames); *out_len the bytes
   written to out, *ncalls the calls made, described in calls[]. */
int64_t mt_quick(mt_host *h, const uint8_t *data, size_t len, uint64_t first_id,
                 int64_t max_wait_ns, uint8_t *out, size_t cap, int64_t *out_len,
                 mt_quick_call *calls, int max_calls, int *ncalls);
/* The eventfd that becomes readable when completions are waiting. */
int mt_fd(mt_host *h);
/* Move waiting completions into buf as records
   [u64 id][i32 ret][u32 len][len bytes] (native byte order).
   Returns the bytes written; when the first waiting record alone does not fit,
   returns minus its size so the caller can grow buf. Call it until it returns
   0 before waiting on the eventfd again: the eventfd is only written when the
   queue goes from empty to non-empty. */
int64_t mt_drain(mt_host *h, uint8_t *buf, size_t cap);
/* mt_drain that also says whether to call it again: *more is 0 when this call
   left the queue empty (it returned 0, or took the last waiting record; the
   eventfd is then re-armed, so the caller may wait on it right away), 1 when
   records are still waiting (the buffer was full, or it returned minus the
   size of a record that did not fit). One call per wake-up instead of a last
   one that returns 0. */
int64_t mt_drain_more(mt_host *h, uint8_t *buf, size_t cap, int *more);
void mt_get_status(mt_host *h, mt_status *out);
/* Stop the submitter and destroy the context, waiting at most timeout_ms.
   0: destroyed; 1: the library returned an error; -1: timed out (the library's
   threads are abandoned, the host is leaked deliberately). */
int mt_shutdown(mt_host *h, int timeout_ms);
/* Wait at most spin_ns for input on the socket fd (a pause, then yielding
   the core now and then) and read what came, at most cap bytes: the bytes
   read, or 0 if none came in time, or the peer closed or failed (the event
   loop sees that itself: an end is only peeked at, and after an error it
   reads the error or an end). With cap 0 it only waits: 1 once there is
   input to read (left for the event loop). */
long mt_spin_read(int fd, uint8_t *buf, size_t cap, int64_t spin_ns);

/*
 * What is generic about a nim-ffi CBOR library, shared by libmy_timer and
 * libecho: the registry of live contexts, the context's common part (lock,
 * library thread, handoff bookkeeping, listeners), callback invocation with
 * its re-entrancy guard, the submit-mode setting and the replies and errors
 * every library words the same way. The queue, the library thread's loop and
 * the handoff policy stay in each library: they differ (libmy_timer keeps
 * timers and makes handoff callers take turns, libecho answers at once).
 *
 * Each library compiles its own copy (hidden symbols), so each has its own
 * registry and re-entrancy flag: calling one library from the other's
 * callback works. Internal API; not part of any ABI.
 */
#ifndef FFI_RUNTIME_H
#define FFI_RUNTIME_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "cbor.h"

/* The callback type and codes of every nim-ffi CBOR header's CFFI region,
 * repeated here (identically, which C allows) so that this module needs no
 * particular library's header. */
typedef void (*FFICallBack)(int callerRet, const char *msg, size_t len, void *userData);

#define RET_OK 0
#define RET_ERR 1
#define RET_MISSING_CALLBACK 2
#define RET_STALE_WARN 3

typedef struct {
    uint64_t id;
    char *name; /* NULL: no name (see ffi_add_listener) */
    FFICallBack cb;
    void *ud;
} ffi_listener;

/* The common part of a context: the first member of each library's context,
 * so that the context's address (the handle the host holds) is its address. */
typedef struct {
    pthread_mutex_t mu;     /* guards the library's queue and the fields below */
    pthread_cond_t cv_work; /* the library thread waits here */
    pthread_cond_t cv_done; /* handoff callers (and libmy_timer's destroy) wait here */
    int stopping;
    int releasing; /* destroy started: handoff callers stop waiting */
    int handoff;
    uint64_t submit_seq, handled_seq;
    pthread_t thread; /* the library thread */
    atomic_int users; /* ABI calls currently using this context */

    pthread_mutex_t lmu; /* listeners; a library may hold it while they run */
    ffi_listener *lst;
    size_t nl, lcap;
    uint64_t next_id;
    atomic_int nnamed; /* listeners with a name */
} ffi_ctx;

/* ---- registry of live contexts ------------------------------------------ */

MT_HIDDEN int ffi_reg_add(ffi_ctx *c);
/* Unpins a context pinned by ffi_enter. */
MT_HIDDEN void ffi_release(ffi_ctx *c);
MT_HIDDEN ffi_ctx *ffi_reg_remove(void *p);

/* ---- callbacks ---------------------------------------------------------- */

/* Set while this thread runs one of this library's callbacks: calls into the
 * library made from there are refused (RET_ERR / 0 / NULL, no callback)
 * instead of deadlocking. */
extern __thread int ffi_in_cb MT_HIDDEN;

MT_HIDDEN void ffi_call_cb(FFICallBack cb, int code, const void *msg, size_t len, void *ud);
MT_HIDDEN void ffi_call_err(FFICallBack cb, const char *text, void *ud);
/* Sends an encoded reply, or RET_ERR if encoding ran out of memory. */
MT_HIDDEN void ffi_reply(FFICallBack cb, void *ud, const mt_buf *b, int code);
/* create's RET_OK: the context's address in decimal, as CBOR text. */
MT_HIDDEN void ffi_reply_created(FFICallBack cb, void *ud, const void *ctx);

/* ---- calls -------------------------------------------------------------- */

/* RET_OK if a call may go on; else what it returns at once, without a
 * callback: RET_ERR when re-entrant, RET_MISSING_CALLBACK. */
MT_HIDDEN int ffi_check_call(FFICallBack cb);
/* The start of a context call: ffi_check_call, then the context pinned, or
 * NULL with *rc set (an unknown context is also reported to cb). */
MT_HIDDEN ffi_ctx *ffi_enter(void *ctx, FFICallBack cb, void *ud, int *rc);
/* Copies a call's payload, which is only valid during the call: into `inl`
 * when it fits, else onto the heap. Sets *null_payload (NULL with a non-zero
 * length) and *oom (no copy could be made); returns `inl` when nothing was
 * allocated. */
MT_HIDDEN uint8_t *ffi_copy_payload(uint8_t *inl, size_t inl_size, const uint8_t *payload,
                                    size_t len, int *null_payload, int *oom);
/* The errors of a request that cannot be decoded, worded like the real
 * library's: no payload (NULL pointer, or no memory for its copy) ... */
MT_HIDDEN void ffi_payload_error(mt_buf *b, const char *req_type, size_t len, int oom);
/* ... and a decoder error. */
MT_HIDDEN void ffi_decode_error(mt_buf *b, const char *req_type, const char *err);

/* ---- create / destroy --------------------------------------------------- */

/* Reports a failed create (fmt has one %s, filled with detail); returns NULL. */
MT_HIDDEN void *ffi_ctor_fail(FFICallBack cb, void *ud, const char *fmt, const char *detail);
/* Reads the submit mode from environment variable `var` (unset, empty or
 * "async": 0; "handoff": 1) into *handoff. Anything else fails the create:
 * reported to cb, returns -1. */
MT_HIDDEN int ffi_submit_mode(const char *var, FFICallBack cb, void *ud, int *handoff);
MT_HIDDEN void ffi_ctx_init(ffi_ctx *c, int handoff);
/* Frees the listeners and the synchronisation objects (not c itself). */
MT_HIDDEN void ffi_ctx_destroy(ffi_ctx *c);
/* Starts a thread that takes no signals: they stay with the host's threads. */
MT_HIDDEN int ffi_start_thread(pthread_t *t, void *(*fn)(void *), void *arg);
/* Sets `stopping`, wakes the library thread and joins it. */
MT_HIDDEN void ffi_stop_thread(ffi_ctx *c);
/* destroy, once the context left the registry: handoff callers stop waiting
 * (their requests stay queued) ... */
MT_HIDDEN void ffi_begin_release(ffi_ctx *c);
/* ... and, after the library woke whatever else its callers wait on, the
 * calls already inside finish. */
MT_HIDDEN void ffi_wait_unused(ffi_ctx *c);

/* ---- listeners ---------------------------------------------------------- */

/* add_event_listener: an id, or 0 (refused, unknown context, out of memory).
 * keep_name: store the event name (NULL or empty: no name); otherwise every
 * listener is nameless (a library that declares no event). */
MT_HIDDEN uint64_t ffi_add_listener(void *ctx, const char *event, int keep_name, FFICallBack cb,
                                    void *ud);
MT_HIDDEN int ffi_remove_listener(void *ctx, uint64_t id);

#endif /* FFI_RUNTIME_H */

/*
 * Request decoding and response encoding for libmy_timer: pure functions,
 * no threads, no allocation while decoding (strings point into the input).
 * Shared by the library, the fuzz target and the sanitizer harness.
 */
#ifndef MT_REQUESTS_H
#define MT_REQUESTS_H

#include "cbor.h"

typedef struct {
    mt_str name;
} mt_create_req;

typedef struct {
    mt_str message;
    int64_t delay_ms;
} mt_echo_req;

typedef struct {
    uint64_t n_messages;
    int has_note;
    mt_str note;
    int has_retries;
    int64_t retries;
} mt_complex_req;

/* JobPriority of the 0.3 generation (text enum; the zero value is low). */
enum { MT_PRIO_LOW, MT_PRIO_NORMAL, MT_PRIO_HIGH };

typedef struct {
    int gen;          /* 2 or 3: the ABI generation whose rules apply */
    mt_str job_name;
    int64_t priority; /* gen 2: an integer, decoded and otherwise unused */
    int prio;         /* gen 3: MT_PRIO_* */
    int64_t max_attempts, backoff_ms;
    int64_t start_at_ms, interval_ms;
    int has_jitter;
    int64_t jitter;
} mt_schedule_req;

/* Each returns 0 or -1 with d->err holding the detail (no prefix). */
MT_HIDDEN int mt_decode_create(mt_dec *d, mt_create_req *r);
MT_HIDDEN int mt_decode_version(mt_dec *d);
MT_HIDDEN int mt_decode_lib_version(mt_dec *d); /* 0.3: the static call */
MT_HIDDEN int mt_decode_echo(mt_dec *d, mt_echo_req *r);
MT_HIDDEN int mt_decode_complex(mt_dec *d, mt_complex_req *r);
/* gen: 2 (priority is an integer) or 3 (priority is the JobPriority text enum). */
MT_HIDDEN int mt_decode_schedule(mt_dec *d, mt_schedule_req *r, int gen);

MT_HIDDEN void mt_encode_version(mt_buf *b);
MT_HIDDEN void mt_encode_echo_reply(mt_buf *b, mt_str message, mt_str timer_name);
MT_HIDDEN void mt_encode_echo_event(mt_buf *b, mt_str message);
MT_HIDDEN void mt_encode_complex_reply(mt_buf *b, const mt_complex_req *r);
/* The schedule business logic: fills b with the RET_OK body and returns 0,
 * or returns -1 with b holding the RET_ERR text. */
MT_HIDDEN int mt_eval_schedule(mt_buf *b, const mt_schedule_req *r, mt_str timer_name);
/* 0.3 generation: the on_job_scheduled event of a schedule that succeeded. */
MT_HIDDEN void mt_encode_job_event(mt_buf *b, const mt_schedule_req *r, mt_str timer_name);

#define MT_VERSION_TEXT "nim-timer v0.1.0"
#define MT_MAX_DELAY_MS 5000      /* 0.3: echo refuses longer delays */
#define MT_DEFAULT_BACKOFF_MS 250 /* 0.3: base of effectiveBackoffMs when backoffMs <= 0 */

#endif

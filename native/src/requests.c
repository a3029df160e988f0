/* Request schemas of libmy_timer (see ../ABI.md): decode + reply. */
#include "requests.h"

#include <string.h>

typedef int (*field_fn)(mt_dec *d, int idx, void *out);

/* Decodes a map whose keys must be among names[] (any order, each at most
 * once, all optional). Unknown and duplicate keys are rejected with a detail
 * naming the field and the type. */
static int decode_struct(mt_dec *d, const char *type, const char *const *names,
                         int nnames, field_fn fn, void *out)
{
    uint64_t n;
    unsigned seen = 0;
    if (mt_dec_map(d, &n))
        return -1;
    for (uint64_t i = 0; i < n; i++) {
        mt_str k;
        char q[MT_ERR_MAX / 2];
        int idx = -1;
        if (mt_dec_text(d, &k))
            return -1;
        for (int j = 0; j < nnames; j++) {
            if (strlen(names[j]) == k.n && memcmp(names[j], k.s, k.n) == 0) {
                idx = j;
                break;
            }
        }
        if (idx < 0) {
            mt_quote(q, sizeof q, k.s, k.n);
            return mt_dec_fail(d, "unknown field '%s' in %s", q, type);
        }
        if (seen & (1u << idx))
            return mt_dec_fail(d, "duplicate field '%s' in %s", names[idx], type);
        seen |= 1u << idx;
        size_t prev = mt_dec_push_key(d, names[idx]);
        if (fn(d, idx, out))
            return -1;
        mt_dec_pop(d, prev);
    }
    return 0;
}

static int decode_text_array(mt_dec *d)
{
    uint64_t n;
    mt_str s;
    if (mt_dec_array(d, &n))
        return -1;
    /* each element consumes at least one byte, so a huge count just hits eof */
    for (uint64_t i = 0; i < n; i++) {
        size_t prev = mt_dec_push_index(d, i);
        if (mt_dec_text(d, &s))
            return -1;
        mt_dec_pop(d, prev);
    }
    return 0;
}

/* option[T]: absent when null or undefined */
static int decode_opt_text(mt_dec *d, int *has, mt_str *out)
{
    int nil = mt_dec_is_nil(d);
    if (nil < 0)
        return -1;
    if (nil) {
        *has = 0;
        return 0;
    }
    *has = 1;
    return mt_dec_text(d, out);
}

static int decode_opt_int(mt_dec *d, int *has, int64_t *out)
{
    int nil = mt_dec_is_nil(d);
    if (nil < 0)
        return -1;
    if (nil) {
        *has = 0;
        return 0;
    }
    *has = 1;
    return mt_dec_int(d, out);
}

/* ---- create ---------------------------------------------------------- */

static const char *const config_fields[] = {"name"};
static int config_field(mt_dec *d, int idx, void *out)
{
    (void)idx;
    return mt_dec_text(d, &((mt_create_req *)out)->name);
}

static const char *const create_fields[] = {"config"};
static int create_field(mt_dec *d, int idx, void *out)
{
    (void)idx;
    return decode_struct(d, "TimerConfig", config_fields, 1, config_field, out);
}

int mt_decode_create(mt_dec *d, mt_create_req *r)
{
    memset(r, 0, sizeof *r);
    r->name.s = "";
    return decode_struct(d, "create request", create_fields, 1, create_field, r);
}

/* ---- version --------------------------------------------------------- */

static int no_field(mt_dec *d, int idx, void *out)
{
    (void)d, (void)idx, (void)out;
    return -1; /* unreachable: no names */
}

int mt_decode_version(mt_dec *d)
{
    return decode_struct(d, "MyTimerVersionReq", NULL, 0, no_field, NULL);
}

int mt_decode_lib_version(mt_dec *d)
{
    return decode_struct(d, "MyTimerLibVersionReq", NULL, 0, no_field, NULL);
}

/* ---- echo ------------------------------------------------------------ */

static const char *const echo_fields[] = {"message", "delayMs"};
static int echo_field(mt_dec *d, int idx, void *out)
{
    mt_echo_req *r = out;
    return idx == 0 ? mt_dec_text(d, &r->message) : mt_dec_int(d, &r->delay_ms);
}

static const char *const req_fields[] = {"req"};
static int echo_top_field(mt_dec *d, int idx, void *out)
{
    (void)idx;
    return decode_struct(d, "EchoRequest", echo_fields, 2, echo_field, out);
}

int mt_decode_echo(mt_dec *d, mt_echo_req *r)
{
    memset(r, 0, sizeof *r);
    r->message.s = "";
    return decode_struct(d, "MyTimerEchoReq", req_fields, 1, echo_top_field, r);
}

/* ---- complex --------------------------------------------------------- */

static int decode_echo_array(mt_dec *d, uint64_t *count)
{
    uint64_t n;
    if (mt_dec_array(d, &n))
        return -1;
    for (uint64_t i = 0; i < n; i++) {
        mt_echo_req ignored; /* message delays are ignored by complex */
        size_t prev = mt_dec_push_index(d, i);
        memset(&ignored, 0, sizeof ignored);
        if (decode_struct(d, "EchoRequest", echo_fields, 2, echo_field, &ignored))
            return -1;
        mt_dec_pop(d, prev);
    }
    *count = n;
    return 0;
}

static const char *const complex_fields[] = {"messages", "tags", "note", "retries"};
static int complex_field(mt_dec *d, int idx, void *out)
{
    mt_complex_req *r = out;
    switch (idx) {
    case 0:
        return decode_echo_array(d, &r->n_messages);
    case 1:
        return decode_text_array(d);
    case 2:
        return decode_opt_text(d, &r->has_note, &r->note);
    default:
        return decode_opt_int(d, &r->has_retries, &r->retries);
    }
}

static int complex_top_field(mt_dec *d, int idx, void *out)
{
    (void)idx;
    return decode_struct(d, "ComplexRequest", complex_fields, 4, complex_field, out);
}

int mt_decode_complex(mt_dec *d, mt_complex_req *r)
{
    memset(r, 0, sizeof *r);
    return decode_struct(d, "MyTimerComplexReq", req_fields, 1, complex_top_field, r);
}

/* ---- schedule -------------------------------------------------------- */

/* 0.3 generation: enums cross the wire as text. A wrong type is reported
 * with the major type named as the real library names it (observed:
 * "Expected: string but found: Unsigned"; the other names follow the same
 * CBOR major-type naming: Negative, Bytes, Array, Map, Tag, SimpleOrFloat). */
static int decode_priority(mt_dec *d, int *prio)
{
    static const char *const kinds[] = {"Unsigned", "Negative", "Bytes", "Text",
                                        "Array", "Map", "Tag", "SimpleOrFloat"};
    static const char *const members[] = {"low", "normal", "high"};
    mt_str s;
    if (d->p >= d->end)
        return mt_dec_fail(d, "unexpected eof");
    int major = *d->p >> 5;
    if (major != 3)
        return mt_dec_fail(d, "Expected: string but found: %s", kinds[major]);
    if (mt_dec_text(d, &s))
        return -1;
    for (int i = 0; i < 3; i++) {
        if (strlen(members[i]) == s.n && memcmp(members[i], s.s, s.n) == 0) {
            *prio = i; /* MT_PRIO_LOW, MT_PRIO_NORMAL, MT_PRIO_HIGH */
            return 0;
        }
    }
    return mt_dec_fail(d, "Invalid value for 'JobPriority'");
}

static const char *const job_fields[] = {"name", "payload", "priority"};
static int job_field(mt_dec *d, int idx, void *out)
{
    mt_schedule_req *r = out;
    switch (idx) {
    case 0:
        return mt_dec_text(d, &r->job_name);
    case 1:
        return decode_text_array(d);
    default:
        if (r->gen >= 3)
            return decode_priority(d, &r->prio);
        return mt_dec_int(d, &r->priority);
    }
}

static const char *const retry_fields[] = {"maxAttempts", "backoffMs", "retryOn"};
static int retry_field(mt_dec *d, int idx, void *out)
{
    mt_schedule_req *r = out;
    switch (idx) {
    case 0:
        return mt_dec_int(d, &r->max_attempts);
    case 1:
        return mt_dec_int(d, &r->backoff_ms);
    default:
        return decode_text_array(d);
    }
}

static const char *const sched_fields[] = {"startAtMs", "intervalMs", "jitter"};
static int sched_field(mt_dec *d, int idx, void *out)
{
    mt_schedule_req *r = out;
    switch (idx) {
    case 0:
        return mt_dec_int(d, &r->start_at_ms);
    case 1:
        return mt_dec_int(d, &r->interval_ms);
    default:
        return decode_opt_int(d, &r->has_jitter, &r->jitter);
    }
}

static const char *const schedule_top_fields[] = {"job", "retry", "schedule"};
static int schedule_top_field(mt_dec *d, int idx, void *out)
{
    switch (idx) {
    case 0:
        return decode_struct(d, "JobSpec", job_fields, 3, job_field, out);
    case 1:
        return decode_struct(d, "RetryPolicy", retry_fields, 3, retry_field, out);
    default:
        return decode_struct(d, "ScheduleConfig", sched_fields, 3, sched_field, out);
    }
}

int mt_decode_schedule(mt_dec *d, mt_schedule_req *r, int gen)
{
    memset(r, 0, sizeof *r);
    r->gen = gen;
    r->prio = MT_PRIO_LOW; /* a missing priority is the enum's first member */
    r->job_name.s = "";
    return decode_struct(d, "MyTimerScheduleReq", schedule_top_fields, 3,
                         schedule_top_field, r);
}

/* ---- replies ----------------------------------------------------------- */

void mt_encode_version(mt_buf *b) { mt_cbor_ctext(b, MT_VERSION_TEXT); }

void mt_encode_echo_reply(mt_buf *b, mt_str message, mt_str timer_name)
{
    mt_cbor_head(b, 5, 2);
    mt_cbor_ctext(b, "echoed");
    mt_cbor_text(b, message.s, message.n);
    mt_cbor_ctext(b, "timerName");
    mt_cbor_text(b, timer_name.s, timer_name.n);
}

void mt_encode_echo_event(mt_buf *b, mt_str message)
{
    mt_cbor_head(b, 5, 2);
    mt_cbor_ctext(b, "eventType");
    mt_cbor_ctext(b, "on_echo_fired");
    mt_cbor_ctext(b, "payload");
    mt_cbor_head(b, 5, 2);
    mt_cbor_ctext(b, "message");
    mt_cbor_text(b, message.s, message.n);
    mt_cbor_ctext(b, "echoCount");
    mt_cbor_int(b, 1);
}

void mt_encode_complex_reply(mt_buf *b, const mt_complex_req *r)
{
    mt_buf summary;
    mt_buf_init(&summary);
    mt_buf_puts(&summary, "received ");
    mt_buf_put_u64(&summary, r->n_messages);
    mt_buf_puts(&summary, " messages, note=");
    if (r->has_note)
        mt_buf_put(&summary, r->note.s, r->note.n);
    else
        mt_buf_puts(&summary, "<none>");
    mt_buf_puts(&summary, ", retries=");
    mt_buf_put_i64(&summary, r->has_retries ? r->retries : 0);
    if (summary.oom)
        b->oom = 1;

    mt_cbor_head(b, 5, 3);
    mt_cbor_ctext(b, "summary");
    mt_cbor_text(b, (const char *)summary.p, summary.len);
    mt_cbor_ctext(b, "itemCount");
    mt_cbor_head(b, 0, r->n_messages);
    mt_cbor_ctext(b, "hasNote");
    mt_cbor_bool(b, r->has_note);
    mt_buf_free(&summary);
}

static int64_t will_run_count(const mt_schedule_req *r)
{
    int64_t runs = 1;
    if (r->interval_ms > 0) {
        runs = 60000 / r->interval_ms; /* interval > 0: cannot overflow */
        if (runs < 1)
            runs = 1;
    }
    return runs;
}

static void encode_job_id(mt_buf *b, const mt_schedule_req *r, mt_str timer_name)
{
    mt_cbor_head(b, 3, (uint64_t)timer_name.n + 1 + r->job_name.n);
    mt_buf_put(b, timer_name.s, timer_name.n);
    mt_buf_put(b, ":", 1);
    mt_buf_put(b, r->job_name.s, r->job_name.n);
}

static const char *const prio_names[] = {"low", "normal", "high"};

int mt_eval_schedule(mt_buf *b, const mt_schedule_req *r, mt_str timer_name)
{
    int64_t jitter = r->has_jitter ? r->jitter : 0;
    int64_t first;
    int64_t backoff = r->backoff_ms;
    if (r->job_name.n == 0) {
        mt_buf_puts(b, "job name must not be empty");
        return -1;
    }
    if (r->max_attempts <= 0) {
        mt_buf_puts(b, "retry.maxAttempts must be positive");
        return -1;
    }
    /* The real library aborts the process here; we reject instead. */
    if (__builtin_add_overflow(r->start_at_ms, jitter, &first)) {
        mt_buf_puts(b, "schedule.startAtMs + schedule.jitter overflows int64 (startAtMs=");
        mt_buf_put_i64(b, r->start_at_ms);
        mt_buf_puts(b, ", jitter=");
        mt_buf_put_i64(b, jitter);
        mt_buf_puts(b, ")");
        return -1;
    }
    if (r->gen >= 3) {
        /* base = backoffMs (DefaultBackoffMs when <= 0); high halves it,
         * normal keeps it, low doubles it. Only low can overflow. */
        int64_t base = r->backoff_ms > 0 ? r->backoff_ms : MT_DEFAULT_BACKOFF_MS;
        if (r->prio == MT_PRIO_HIGH) {
            backoff = base / 2;
        } else if (r->prio == MT_PRIO_NORMAL) {
            backoff = base;
        } else if (__builtin_mul_overflow(base, 2, &backoff)) {
            mt_buf_puts(b, "retry.backoffMs * 2 (priority low) overflows int64 (backoffMs=");
            mt_buf_put_i64(b, r->backoff_ms);
            mt_buf_puts(b, ")");
            return -1;
        }
    }
    mt_cbor_head(b, 5, r->gen >= 3 ? 5 : 4);
    mt_cbor_ctext(b, "jobId");
    encode_job_id(b, r, timer_name);
    mt_cbor_ctext(b, "willRunCount");
    mt_cbor_int(b, will_run_count(r));
    mt_cbor_ctext(b, "firstRunAtMs");
    mt_cbor_int(b, first);
    mt_cbor_ctext(b, "effectiveBackoffMs");
    mt_cbor_int(b, backoff);
    if (r->gen >= 3) {
        mt_cbor_ctext(b, "priority");
        mt_cbor_ctext(b, prio_names[r->prio]);
    }
    return 0;
}

void mt_encode_job_event(mt_buf *b, const mt_schedule_req *r, mt_str timer_name)
{
    mt_cbor_head(b, 5, 2);
    mt_cbor_ctext(b, "eventType");
    mt_cbor_ctext(b, "on_job_scheduled");
    mt_cbor_ctext(b, "payload");
    mt_cbor_head(b, 5, 2);
    mt_cbor_ctext(b, "jobId");
    encode_job_id(b, r, timer_name);
    mt_cbor_ctext(b, "willRunCount");
    mt_cbor_int(b, will_run_count(r));
}

/*
 * libFuzzer target for the request decoders and reply encoders
 * (make -C native fuzz; run: build/fuzz_decode -max_total_time=60 DIR corpus).
 * Every input is fed to all five decoders (schedule under the rules of both
 * generations); successful decodes are encoded
 * into replies, and invariants that the library relies on are checked.
 */
#include <stdint.h>
#include <string.h>

#include "../src/cbor.h"
#include "../src/requests.h"

static void check_str(const uint8_t *data, size_t size, mt_str s)
{
    /* decoded strings point into the input (no copies), or are the "" default */
    if (s.n && ((const uint8_t *)s.s < data || (const uint8_t *)s.s + s.n > data + size))
        __builtin_trap();
    if (!mt_utf8_valid((const uint8_t *)s.s, s.n))
        __builtin_trap();
}

static void check_err(const mt_dec *d)
{
    size_t n = strlen(d->err);
    if (!d->failed || n == 0) /* a failure always carries a detail */
        __builtin_trap();
    if (!mt_utf8_valid((const uint8_t *)d->err, n))
        __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mt_dec d;
    mt_buf b;
    mt_str name = {"demo", 4};

    mt_create_req cr;
    mt_dec_init(&d, data, size);
    if (mt_decode_create(&d, &cr) == 0)
        check_str(data, size, cr.name);
    else
        check_err(&d);

    mt_dec_init(&d, data, size);
    if (mt_decode_version(&d) != 0)
        check_err(&d);

    mt_echo_req er;
    mt_dec_init(&d, data, size);
    if (mt_decode_echo(&d, &er) == 0) {
        check_str(data, size, er.message);
        mt_buf_init(&b);
        mt_encode_echo_event(&b, er.message);
        mt_encode_echo_reply(&b, er.message, name);
        mt_buf_free(&b);
    } else {
        check_err(&d);
    }

    mt_complex_req xr;
    mt_dec_init(&d, data, size);
    if (mt_decode_complex(&d, &xr) == 0) {
        if (xr.has_note)
            check_str(data, size, xr.note);
        if (xr.n_messages > size) /* each message takes at least one byte */
            __builtin_trap();
        mt_buf_init(&b);
        mt_encode_complex_reply(&b, &xr);
        mt_buf_free(&b);
    } else {
        check_err(&d);
    }

    for (int gen = 2; gen <= 3; gen++) { /* integer priority, then the text enum */
        mt_schedule_req sr;
        mt_dec_init(&d, data, size);
        if (mt_decode_schedule(&d, &sr, gen) == 0) {
            check_str(data, size, sr.job_name);
            if (sr.prio < MT_PRIO_LOW || sr.prio > MT_PRIO_HIGH)
                __builtin_trap();
            mt_buf_init(&b);
            if (mt_eval_schedule(&b, &sr, name) == 0 && gen == 3)
                mt_encode_job_event(&b, &sr, name);
            mt_buf_free(&b);
        } else {
            check_err(&d);
        }
    }
    return 0;
}

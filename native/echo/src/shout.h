/*
 * libecho's requests and answers (see ../README.md): pure functions, no
 * threads, no globals. Decoding uses the mt_dec reader state and the writer of
 * native/src/cbor.c, with a reader of its own for the item heads because
 * libecho accepts indefinite lengths (the real library does, and a recorded
 * vector depends on it) and names wrong types as the real echo build does.
 */
#ifndef EC_SHOUT_H
#define EC_SHOUT_H

#include "cbor.h"

#define EC_VERSION "nim-echo v0.1.0"
#define EC_MAX_SHOUT_LEN 512 /* 0.3 generation: MaxShoutLen, in bytes */

/* A decoded text string: points into the payload, or into `owned` (heap)
 * when it was sent in chunks (indefinite length). Release with ec_text_free. */
typedef struct {
    mt_str s;
    char *owned;
} ec_text;

MT_HIDDEN void ec_text_free(ec_text *t);

/* Decoders: 0 on success, -1 with d->err set (the detail after
 * "CBOR decode failed for <type>: "). Every key is optional; `type` names the
 * request envelope in error details. Bytes after the request item are left
 * unread (ignored, like the real library). */
MT_HIDDEN int ec_decode_empty(mt_dec *d, const char *type);            /* {} */
MT_HIDDEN int ec_decode_shout(mt_dec *d, const char *type, ec_text *text); /* {req: {text}} */
MT_HIDDEN int ec_decode_create(mt_dec *d, ec_text *prefix);           /* {config: {prefix}} */

/* Encoders (definite lengths, shortest heads: what cbor2.dumps writes). */
MT_HIDDEN void ec_encode_version(mt_buf *b);
/* {"shouted": prefix + sep + upper(text), "prefix": prefix}; sep is ": " for
 * shout and "" for shout_anon (whose prefix is ""). ASCII letters only. */
MT_HIDDEN void ec_encode_shout(mt_buf *b, mt_str prefix, const char *sep, mt_str text);

#endif

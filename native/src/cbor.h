/*
 * Minimal strict CBOR reader/writer for libmy_timer's request and response
 * shapes. Internal (hidden) API; not part of the ABI.
 */
#ifndef MT_CBOR_H
#define MT_CBOR_H

#include <stddef.h>
#include <stdint.h>

#define MT_HIDDEN __attribute__((visibility("hidden")))

/* ---- writer ---------------------------------------------------------- */

/* Growable output buffer; starts in inline storage so typical replies need
 * no heap allocation. `oom` latches an allocation failure. */
typedef struct {
    uint8_t *p;
    size_t len, cap;
    int oom;
    uint8_t inl[256];
} mt_buf;

MT_HIDDEN void mt_buf_init(mt_buf *b);
MT_HIDDEN void mt_buf_free(mt_buf *b);
MT_HIDDEN void mt_buf_put(mt_buf *b, const void *data, size_t n);
MT_HIDDEN void mt_buf_puts(mt_buf *b, const char *s);
MT_HIDDEN void mt_buf_put_i64(mt_buf *b, int64_t v);  /* decimal ASCII */
MT_HIDDEN void mt_buf_put_u64(mt_buf *b, uint64_t v); /* decimal ASCII */

/* CBOR items, definite lengths, shortest heads (what cbor2.dumps emits). */
MT_HIDDEN void mt_cbor_head(mt_buf *b, int major, uint64_t val);
MT_HIDDEN void mt_cbor_text(mt_buf *b, const char *s, size_t n);
MT_HIDDEN void mt_cbor_ctext(mt_buf *b, const char *s);
MT_HIDDEN void mt_cbor_int(mt_buf *b, int64_t v);
MT_HIDDEN void mt_cbor_bool(mt_buf *b, int v);

/* ---- reader ---------------------------------------------------------- */

#define MT_PATH_MAX 160
#define MT_ERR_MAX 320

typedef struct {
    const uint8_t *p, *end;
    char path[MT_PATH_MAX]; /* location of the item being decoded, e.g. req.delayMs */
    size_t plen;
    char err[MT_ERR_MAX];   /* detail text once failed */
    int failed;
} mt_dec;

typedef struct {
    const char *s;
    size_t n;
} mt_str;

MT_HIDDEN void mt_dec_init(mt_dec *d, const uint8_t *p, size_t n);
MT_HIDDEN int mt_dec_fail(mt_dec *d, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* All readers return 0 on success, -1 on failure (d->err set). */
MT_HIDDEN int mt_dec_map(mt_dec *d, uint64_t *count);
MT_HIDDEN int mt_dec_array(mt_dec *d, uint64_t *count);
MT_HIDDEN int mt_dec_text(mt_dec *d, mt_str *out);
MT_HIDDEN int mt_dec_int(mt_dec *d, int64_t *out);
/* 1 if the next item is null/undefined (consumed), 0 if not, -1 on eof. */
MT_HIDDEN int mt_dec_is_nil(mt_dec *d);
/* Path maintenance: push returns the previous length for pop. */
MT_HIDDEN size_t mt_dec_push_key(mt_dec *d, const char *key);
MT_HIDDEN size_t mt_dec_push_index(mt_dec *d, uint64_t idx);
MT_HIDDEN void mt_dec_pop(mt_dec *d, size_t prev);
/* " at <path>" or "" at top level; for details that carry a location. */
MT_HIDDEN const char *mt_dec_where(const mt_dec *d, char *tmp, size_t tmpn);

MT_HIDDEN int mt_utf8_valid(const uint8_t *s, size_t n);
/* Quote untrusted (valid UTF-8) text for an error message: escapes control
 * bytes, quotes and backslashes, truncates at a code point boundary. */
MT_HIDDEN void mt_quote(char *dst, size_t dstn, const char *s, size_t n);

#endif

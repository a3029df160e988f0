/* Strict CBOR subset used by libmy_timer: see cbor.h. */
#include "cbor.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- writer ---------------------------------------------------------- */

void mt_buf_init(mt_buf *b)
{
    b->p = b->inl;
    b->len = 0;
    b->cap = sizeof b->inl;
    b->oom = 0;
}

void mt_buf_free(mt_buf *b)
{
    if (b->p != b->inl)
        free(b->p);
    mt_buf_init(b);
}

void mt_buf_put(mt_buf *b, const void *data, size_t n)
{
    if (b->oom || n == 0)
        return;
    if (n > b->cap - b->len) {
        if (n > SIZE_MAX / 2 - b->len) { /* cannot grow without overflow */
            b->oom = 1;
            return;
        }
        size_t ncap = b->cap * 2;
        while (ncap - b->len < n)
            ncap *= 2;
        uint8_t *np = malloc(ncap);
        if (!np) {
            b->oom = 1;
            return;
        }
        memcpy(np, b->p, b->len);
        if (b->p != b->inl)
            free(b->p);
        b->p = np;
        b->cap = ncap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

void mt_buf_puts(mt_buf *b, const char *s) { mt_buf_put(b, s, strlen(s)); }

void mt_buf_put_u64(mt_buf *b, uint64_t v)
{
    char tmp[24];
    size_t i = sizeof tmp;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    mt_buf_put(b, tmp + i, sizeof tmp - i);
}

void mt_buf_put_i64(mt_buf *b, int64_t v)
{
    if (v < 0) {
        mt_buf_put(b, "-", 1);
        /* negate in unsigned space: INT64_MIN has no positive int64 */
        mt_buf_put_u64(b, (uint64_t)0 - (uint64_t)v);
    } else {
        mt_buf_put_u64(b, (uint64_t)v);
    }
}

void mt_cbor_head(mt_buf *b, int major, uint64_t val)
{
    uint8_t h[9];
    size_t n;
    uint8_t m = (uint8_t)(major << 5);
    if (val < 24) {
        h[0] = m | (uint8_t)val;
        n = 1;
    } else if (val <= 0xff) {
        h[0] = m | 24;
        h[1] = (uint8_t)val;
        n = 2;
    } else if (val <= 0xffff) {
        h[0] = m | 25;
        h[1] = (uint8_t)(val >> 8);
        h[2] = (uint8_t)val;
        n = 3;
    } else if (val <= 0xffffffffu) {
        h[0] = m | 26;
        for (int i = 0; i < 4; i++)
            h[1 + i] = (uint8_t)(val >> (24 - 8 * i));
        n = 5;
    } else {
        h[0] = m | 27;
        for (int i = 0; i < 8; i++)
            h[1 + i] = (uint8_t)(val >> (56 - 8 * i));
        n = 9;
    }
    mt_buf_put(b, h, n);
}

void mt_cbor_text(mt_buf *b, const char *s, size_t n)
{
    mt_cbor_head(b, 3, n);
    mt_buf_put(b, s, n);
}

void mt_cbor_ctext(mt_buf *b, const char *s) { mt_cbor_text(b, s, strlen(s)); }

void mt_cbor_int(mt_buf *b, int64_t v)
{
    if (v >= 0)
        mt_cbor_head(b, 0, (uint64_t)v);
    else
        mt_cbor_head(b, 1, (uint64_t)(-(v + 1))); /* -1-n, no overflow at INT64_MIN */
}

void mt_cbor_bool(mt_buf *b, int v)
{
    uint8_t x = v ? 0xf5 : 0xf4;
    mt_buf_put(b, &x, 1);
}

/* ---- reader ---------------------------------------------------------- */

void mt_dec_init(mt_dec *d, const uint8_t *p, size_t n)
{
    d->p = p;
    d->end = p ? p + n : p;
    d->plen = 0;
    d->path[0] = 0;
    d->err[0] = 0;
    d->failed = 0;
}

int mt_dec_fail(mt_dec *d, const char *fmt, ...)
{
    if (!d->failed) { /* keep the first (innermost) error */
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(d->err, sizeof d->err, fmt, ap);
        va_end(ap);
        d->failed = 1;
    }
    return -1;
}

const char *mt_dec_where(const mt_dec *d, char *tmp, size_t tmpn)
{
    if (d->plen == 0)
        return "";
    snprintf(tmp, tmpn, " at %s", d->path);
    return tmp;
}

size_t mt_dec_push_key(mt_dec *d, const char *key)
{
    size_t prev = d->plen;
    int n = snprintf(d->path + d->plen, sizeof d->path - d->plen, "%s%s",
                     d->plen ? "." : "", key);
    if (n > 0)
        d->plen += (size_t)n < sizeof d->path - d->plen ? (size_t)n
                                                        : sizeof d->path - d->plen - 1;
    return prev;
}

size_t mt_dec_push_index(mt_dec *d, uint64_t idx)
{
    size_t prev = d->plen;
    int n = snprintf(d->path + d->plen, sizeof d->path - d->plen, "[%llu]",
                     (unsigned long long)idx);
    if (n > 0)
        d->plen += (size_t)n < sizeof d->path - d->plen ? (size_t)n
                                                        : sizeof d->path - d->plen - 1;
    return prev;
}

void mt_dec_pop(mt_dec *d, size_t prev)
{
    d->plen = prev;
    d->path[prev] = 0;
}

/* Names as the real (Nim) library prints them in "Expected: X but found: Y". */
static const char *found_name(int major, int ai)
{
    static const char *const names[] = {"unsigned integer", "negative integer",
                                        "byte string", "text string", "array",
                                        "map", "tag"};
    if (major < 7)
        return names[major];
    switch (ai) {
    case 20:
    case 21:
        return "bool";
    case 22:
        return "null";
    case 23:
        return "undefined";
    case 25:
    case 26:
    case 27:
        return "float";
    case 31:
        return "break";
    default:
        return "simple value";
    }
}

/* Reads one head, checking its major type against `want` (-1: int, i.e.
 * major 0 or 1). The argument value is returned in *val. */
static int read_head(mt_dec *d, int want, const char *want_name, int *major_out,
                     uint64_t *val)
{
    char w[MT_PATH_MAX + 8];
    if (d->p >= d->end)
        return mt_dec_fail(d, "unexpected eof");
    uint8_t ib = *d->p;
    int major = ib >> 5, ai = ib & 31;
    int ok = want < 0 ? (major == 0 || major == 1) : major == want;
    if (!ok)
        return mt_dec_fail(d, "Expected: %s but found: %s", want_name,
                           found_name(major, ai));
    if ((ai >= 28 && ai <= 30) || (ai == 31 && (major < 2 || major > 5)))
        return mt_dec_fail(d, "malformed CBOR: reserved additional information %d%s",
                           ai, mt_dec_where(d, w, sizeof w));
    if (ai == 31)
        return mt_dec_fail(d, "indefinite-length %s is not supported%s", want_name,
                           mt_dec_where(d, w, sizeof w));
    size_t extra = ai < 24 ? 0 : (size_t)1 << (ai - 24);
    if ((size_t)(d->end - d->p) < 1 + extra)
        return mt_dec_fail(d, "unexpected eof");
    uint64_t v = ai < 24 ? (uint64_t)ai : 0;
    for (size_t i = 0; i < extra; i++)
        v = (v << 8) | d->p[1 + i];
    d->p += 1 + extra;
    *major_out = major;
    *val = v;
    return 0;
}

int mt_dec_map(mt_dec *d, uint64_t *count)
{
    int m;
    return read_head(d, 5, "map", &m, count);
}

int mt_dec_array(mt_dec *d, uint64_t *count)
{
    int m;
    return read_head(d, 4, "array", &m, count);
}

int mt_dec_text(mt_dec *d, mt_str *out)
{
    int m;
    uint64_t n;
    char w[MT_PATH_MAX + 8];
    if (read_head(d, 3, "text string", &m, &n))
        return -1;
    /* bound the length by the remaining input before touching it */
    if (n > (uint64_t)(d->end - d->p))
        return mt_dec_fail(d, "unexpected eof");
    if (!mt_utf8_valid(d->p, (size_t)n))
        return mt_dec_fail(d, "invalid UTF-8 in text string%s",
                           mt_dec_where(d, w, sizeof w));
    out->s = (const char *)d->p;
    out->n = (size_t)n;
    d->p += n;
    return 0;
}

int mt_dec_int(mt_dec *d, int64_t *out)
{
    int m;
    uint64_t v;
    char w[MT_PATH_MAX + 8];
    if (read_head(d, -1, "number", &m, &v))
        return -1;
    if (v > (uint64_t)INT64_MAX)
        return mt_dec_fail(d, "integer out of int64 range%s",
                           mt_dec_where(d, w, sizeof w));
    *out = m == 0 ? (int64_t)v : -1 - (int64_t)v;
    return 0;
}

int mt_dec_is_nil(mt_dec *d)
{
    if (d->p >= d->end) {
        mt_dec_fail(d, "unexpected eof");
        return -1;
    }
    if (*d->p == 0xf6 || *d->p == 0xf7) {
        d->p++;
        return 1;
    }
    return 0;
}

int mt_utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp, min;
        if ((c & 0xe0) == 0xc0) {
            len = 2, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (n - i < len)
            return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        /* reject overlongs, surrogates and code points past U+10FFFF */
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += len;
    }
    return 1;
}

void mt_quote(char *dst, size_t dstn, const char *s, size_t n)
{
    size_t o = 0, i = 0;
    const size_t limit = 64; /* bytes of source text shown */
    if (dstn == 0)
        return;
    while (i < n && i < limit) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        size_t el;
        if (c < 0x20 || c == 0x7f || c == '\'' || c == '\\') {
            el = (size_t)snprintf(esc, sizeof esc, "\\x%02x", c);
        } else if (c >= 0x80) {
            /* copy a whole code point or stop (input is valid UTF-8) */
            size_t len = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
            if (i + len > n || i + len > limit || o + len + 1 > dstn)
                break;
            memcpy(dst + o, s + i, len);
            o += len;
            i += len;
            continue;
        } else {
            esc[0] = (char)c;
            el = 1;
        }
        if (o + el + 1 > dstn)
            break;
        memcpy(dst + o, esc, el);
        o += el;
        i++;
    }
    if (i < n && o + 4 <= dstn) {
        memcpy(dst + o, "...", 3);
        o += 3;
    }
    dst[o] = 0;
}

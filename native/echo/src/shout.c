/* libecho's request decoding and answer encoding: see shout.h. */
#include "shout.h"

#include <stdlib.h>
#include <string.h>

/* Names of CBOR major types as the real echo build prints them in
 * "Expected: X but found: Y" (major 7 covers floats, simple values, null,
 * undefined, booleans and the break byte). */
static const char *const found_name[8] = {
    "unsigned integer", "negative integer", "byte string", "text string",
    "array",            "map",              "tag",         "simple/float/break"};

void ec_text_free(ec_text *t)
{
    free(t->owned);
    t->owned = NULL;
}

static const char *where(const mt_dec *d, char *tmp, size_t n) { return mt_dec_where(d, tmp, n); }

/* Reads the head of a map (major 5) or text string (major 3). Definite:
 * *indef = 0 and *val is the count/length. Indefinite (additional info 31):
 * *indef = 1. */
static int head(mt_dec *d, int want, const char *want_name, uint64_t *val, int *indef)
{
    char w[MT_PATH_MAX + 8];
    if (d->p >= d->end)
        return mt_dec_fail(d, "unexpected eof");
    int major = *d->p >> 5, ai = *d->p & 31;
    if (major != want)
        return mt_dec_fail(d, "Expected: %s but found: %s", want_name, found_name[major]);
    if (ai >= 28 && ai <= 30)
        return mt_dec_fail(d, "malformed CBOR: reserved additional information %d%s", ai,
                           where(d, w, sizeof w));
    if (ai == 31) {
        d->p++;
        *indef = 1;
        *val = 0;
        return 0;
    }
    size_t extra = ai < 24 ? 0 : (size_t)1 << (ai - 24);
    if ((size_t)(d->end - d->p) < 1 + extra)
        return mt_dec_fail(d, "unexpected eof");
    uint64_t v = ai < 24 ? (uint64_t)ai : 0;
    for (size_t i = 0; i < extra; i++)
        v = (v << 8) | d->p[1 + i];
    d->p += 1 + extra;
    *indef = 0;
    *val = v;
    return 0;
}

/* One definite-length text string (a whole string, or a chunk of an
 * indefinite one): bounds and UTF-8 checked, then consumed. */
static int definite_text(mt_dec *d, uint64_t n, const uint8_t **s)
{
    char w[MT_PATH_MAX + 8];
    /* bound the length by the remaining input before touching it */
    if (n > (uint64_t)(d->end - d->p))
        return mt_dec_fail(d, "unexpected eof");
    if (!mt_utf8_valid(d->p, (size_t)n))
        return mt_dec_fail(d, "invalid UTF-8 in text string%s", where(d, w, sizeof w));
    *s = d->p;
    d->p += n;
    return 0;
}

/* The chunks of an indefinite-length text string, up to and including its
 * break byte. With out == NULL only checks them and sums their lengths; with
 * out, copies them there (a second pass over input already checked). */
static int text_chunks(mt_dec *d, char *out, size_t *total)
{
    char w[MT_PATH_MAX + 8];
    size_t sum = 0;
    for (;;) {
        if (d->p >= d->end)
            return mt_dec_fail(d, "unexpected eof");
        if (*d->p == 0xff) {
            d->p++;
            break;
        }
        uint64_t n;
        int indef;
        const uint8_t *s;
        /* RFC 8949: each chunk is a definite-length text string */
        if ((*d->p >> 5) != 3 || (*d->p & 31) == 31)
            return mt_dec_fail(d, "malformed CBOR: a chunk of an indefinite-length text "
                                  "string must be a definite-length text string%s",
                               where(d, w, sizeof w));
        if (head(d, 3, "text string", &n, &indef) || definite_text(d, n, &s))
            return -1;
        if (out)
            memcpy(out + sum, s, (size_t)n);
        sum += (size_t)n; /* cannot overflow: every byte counted is in the payload */
    }
    *total = sum;
    return 0;
}

static int read_text(mt_dec *d, ec_text *t)
{
    uint64_t n;
    int indef;
    const uint8_t *s;
    ec_text_free(t);
    t->s.s = "";
    t->s.n = 0;
    if (head(d, 3, "text string", &n, &indef))
        return -1;
    if (!indef) {
        if (definite_text(d, n, &s))
            return -1;
        t->s.s = (const char *)s;
        t->s.n = (size_t)n;
        return 0;
    }
    const uint8_t *start = d->p;
    size_t total;
    if (text_chunks(d, NULL, &total))
        return -1;
    t->owned = malloc(total ? total : 1);
    if (!t->owned)
        return mt_dec_fail(d, "out of memory assembling a text string of %zu bytes", total);
    d->p = start;
    text_chunks(d, t->owned, &total); /* cannot fail: the same bytes passed above */
    t->s.s = t->owned;
    t->s.n = total;
    return 0;
}

/* A map, definite or indefinite. */
typedef struct {
    uint64_t left;
    int indef;
} map_iter;

static int map_begin(mt_dec *d, map_iter *m)
{
    return head(d, 5, "map", &m->left, &m->indef);
}

/* 1: another entry follows, 0: the map ended, -1: error. */
static int map_next(mt_dec *d, map_iter *m)
{
    if (!m->indef) {
        if (m->left == 0)
            return 0;
        m->left--; /* each entry takes at least two bytes: a huge count meets eof */
        return 1;
    }
    if (d->p >= d->end)
        return mt_dec_fail(d, "unexpected eof");
    if (*d->p == 0xff) {
        d->p++;
        return 0;
    }
    return 1;
}

typedef int (*field_fn)(mt_dec *d, int idx, void *out);

/* A map whose keys must be among names[] (any order, each at most once, all
 * optional). Unknown and duplicate keys are errors naming the key and the
 * type (the real library's detail is empty for unknown keys; duplicate keys
 * make the map invalid CBOR, RFC 8949 section 5.6). */
static int decode_struct(mt_dec *d, const char *type, const char *const *names, int nnames,
                         field_fn fn, void *out)
{
    map_iter m;
    unsigned seen = 0;
    int more;
    if (map_begin(d, &m))
        return -1;
    while ((more = map_next(d, &m)) == 1) {
        ec_text k = {{"", 0}, NULL};
        int idx = -1;
        if (read_text(d, &k))
            return -1;
        for (int j = 0; j < nnames; j++) {
            if (strlen(names[j]) == k.s.n && memcmp(names[j], k.s.s, k.s.n) == 0) {
                idx = j;
                break;
            }
        }
        if (idx < 0) {
            char q[MT_ERR_MAX / 2];
            mt_quote(q, sizeof q, k.s.s, k.s.n);
            ec_text_free(&k);
            return mt_dec_fail(d, "unknown field '%s' in %s", q, type);
        }
        ec_text_free(&k);
        if (seen & (1u << idx))
            return mt_dec_fail(d, "duplicate field '%s' in %s", names[idx], type);
        seen |= 1u << idx;
        size_t prev = mt_dec_push_key(d, names[idx]);
        if (fn(d, idx, out))
            return -1;
        mt_dec_pop(d, prev);
    }
    return more; /* 0, or -1 */
}

int ec_decode_empty(mt_dec *d, const char *type)
{
    return decode_struct(d, type, NULL, 0, NULL, NULL);
}

static int text_field(mt_dec *d, int idx, void *out)
{
    (void)idx;
    return read_text(d, out);
}

static const char *const text_names[] = {"text"};
static const char *const prefix_names[] = {"prefix"};

static int shout_request(mt_dec *d, int idx, void *out)
{
    (void)idx;
    return decode_struct(d, "ShoutRequest", text_names, 1, text_field, out);
}

static int echo_config(mt_dec *d, int idx, void *out)
{
    (void)idx;
    return decode_struct(d, "EchoConfig", prefix_names, 1, text_field, out);
}

int ec_decode_shout(mt_dec *d, const char *type, ec_text *text)
{
    static const char *const names[] = {"req"};
    text->s.s = "";
    text->s.n = 0;
    text->owned = NULL;
    return decode_struct(d, type, names, 1, shout_request, text);
}

int ec_decode_create(mt_dec *d, ec_text *prefix)
{
    static const char *const names[] = {"config"};
    prefix->s.s = "";
    prefix->s.n = 0;
    prefix->owned = NULL;
    return decode_struct(d, "EchoCreateCtorReq", names, 1, echo_config, prefix);
}

void ec_encode_version(mt_buf *b) { mt_cbor_ctext(b, EC_VERSION); }

static void put_upper(mt_buf *b, mt_str s)
{
    char tmp[256];
    size_t i = 0;
    while (i < s.n) {
        size_t k = 0;
        for (; k < sizeof tmp && i < s.n; k++, i++) {
            char c = s.s[i];
            tmp[k] = (c >= 'a' && c <= 'z') ? (char)(c - 'a' + 'A') : c;
        }
        mt_buf_put(b, tmp, k);
    }
}

void ec_encode_shout(mt_buf *b, mt_str prefix, const char *sep, mt_str text)
{
    size_t seplen = strlen(sep);
    mt_cbor_head(b, 5, 2);
    mt_cbor_ctext(b, "shouted");
    /* every length here is that of a buffer in memory: the sum cannot wrap */
    mt_cbor_head(b, 3, (uint64_t)prefix.n + seplen + text.n);
    mt_buf_put(b, prefix.s, prefix.n);
    mt_buf_put(b, sep, seplen);
    put_upper(b, text);
    mt_cbor_ctext(b, "prefix");
    mt_cbor_text(b, prefix.s, prefix.n);
}

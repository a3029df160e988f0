/*
 * TLS for the lane: the record layer of a connection whose handshake
 * Python's ssl module made, on the OpenSSL session Python's ssl.SSLObject
 * holds (borrowed: Python does not touch it while the lane has it, and the
 * lane lets go of it before Python reads or writes again).
 *
 * Python's ssl offers no handle to its session, so mt_tls_borrow reads it
 * from the C objects behind ssl.SSLObject and its memory BIOs: CPython's
 * _ssl._SSLSocket begins with PyObject_HEAD, a weak reference to a socket
 * and the SSL pointer; _ssl.MemoryBIO with PyObject_HEAD and the BIO
 * pointer. The borrow is taken only when what it reads agrees with
 * OpenSSL's own word: the session's app data is that _SSLSocket (as _ssl
 * sets it), its read and write BIOs are those two, and its handshake is
 * done. mytimerd's daemon/tlslane.py checks the rest first (the types, and
 * that this is the OpenSSL that _ssl runs on).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "glue.h"
#include "internal.h"
#include "lane.h"

/* One TLS record, header and padding included: what one read takes in. */
#define RECORD_MAX (16384 + 5 + 256)
/* Socket reads one lane_tls_recv makes at most: records that carry no
   application data (empty ones, key updates) cannot keep it going. */
#define READS_MAX 4

unsigned long mt_tls_openssl(void) { return OpenSSL_version_num(); }

void *mt_tls_borrow(uintptr_t sslsocket, uintptr_t in_bio, uintptr_t out_bio) {
    if (!sslsocket || !in_bio || !out_bio)
        return NULL;
    SSL *ssl = *(SSL **)(sslsocket + 3 * sizeof(void *));
    BIO *in = *(BIO **)(in_bio + 2 * sizeof(void *));
    BIO *out = *(BIO **)(out_bio + 2 * sizeof(void *));
    if (!ssl || !in || !out || SSL_get_app_data(ssl) != (void *)sslsocket ||
        SSL_get_rbio(ssl) != in || SSL_get_wbio(ssl) != out || !SSL_is_init_finished(ssl))
        return NULL;
    return ssl;
}

ssize_t lane_tls_recv(void *tls, int fd, uint8_t *buf, size_t room, int64_t deadline,
                      bool *more) {
    SSL *ssl = tls;
    BIO *rbio = SSL_get_rbio(ssl);
    uint8_t raw[RECORD_MAX];
    size_t got = 0;
    bool drained = false, end = false;
    int failed = 0;
    for (int reads = 0; got < room;) {
        size_t n = 0;
        if (SSL_read_ex(ssl, buf + got, room - got, &n)) {
            got += n;
            continue;
        }
        int e = SSL_get_error(ssl, 0);
        if (e == SSL_ERROR_ZERO_RETURN) { /* close_notify (it stays so for Python) */
            end = true;
            break;
        }
        if (e != SSL_ERROR_WANT_READ) { /* the session failed (so it stays for Python) */
            ERR_clear_error();
            failed = EPROTO;
            break;
        }
        if (drained)
            break;
        if (reads++ == READS_MAX) {
            failed = EPROTO; /* records and no request: Python's TLS layer sees to it */
            break;
        }
        ssize_t r = deadline && !got ? glue_spin_recv(fd, raw, sizeof raw, deadline)
                                     : recv(fd, raw, sizeof raw, MSG_DONTWAIT);
        if (r > 0) {
            if (BIO_write(rbio, raw, (int)r) != (int)r) {
                ERR_clear_error();
                failed = ENOMEM;
                break;
            }
            drained = (size_t)r < sizeof raw;
        } else if (r == 0) {
            end = true;
            break;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            drained = true;
        } else if (errno != EINTR) {
            failed = errno;
            break;
        }
    }
    /* OpenSSL has something to say (a key update's answer, a handshake):
       that is for Python's ssl, which sends it. */
    if (BIO_ctrl_pending(SSL_get_wbio(ssl)) > 0 && !failed && !end)
        failed = EPROTO;
    /* Records held in the BIO or by OpenSSL raise no edge: look again. */
    *more = !drained || SSL_has_pending(ssl) || BIO_ctrl_pending(rbio) > 0;
    if (got) {
        *more |= end || failed; /* the next read finds the end or the failure again */
        return (ssize_t)got;
    }
    if (end)
        return 0;
    errno = failed ? failed : EAGAIN;
    return -1;
}

/* Send what the session has sealed; the part the socket does not take goes
   to *rest (malloc'd, *rest_len bytes). 0: all sent; 1: *rest holds the
   rest; -1: failed (errno). */
static int flush_sealed(SSL *ssl, int fd, uint8_t **rest, size_t *rest_len) {
    BIO *wbio = SSL_get_wbio(ssl);
    uint8_t buf[RECORD_MAX];
    for (;;) {
        int n = BIO_read(wbio, buf, sizeof buf);
        if (n <= 0)
            return 0; /* (a memory BIO: empty) */
        ssize_t put = send(fd, buf, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (put == n)
            continue;
        if (put < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return -1;
        size_t done = put > 0 ? (size_t)put : 0;
        size_t left = (size_t)n - done;
        size_t queued = BIO_ctrl_pending(wbio);
        uint8_t *out = malloc(left + queued);
        if (!out) {
            errno = ENOMEM;
            return -1;
        }
        memcpy(out, buf + done, left);
        if (queued && BIO_read(wbio, out + left, (int)queued) != (int)queued) {
            free(out);
            errno = EPROTO;
            return -1;
        }
        *rest = out;
        *rest_len = left + queued;
        return 1;
    }
}

int lane_tls_send(void *tls, int fd, const uint8_t head[8], const uint8_t *data, uint32_t len,
                  uint8_t **rest, size_t *rest_len) {
    SSL *ssl = tls;
    /* One record for the answer, not one for its head and one for the rest. */
    uint8_t small[1024];
    size_t size = 8 + (size_t)len;
    uint8_t *plain = size <= sizeof small ? small : malloc(size);
    if (!plain) {
        errno = ENOMEM;
        return -1;
    }
    memcpy(plain, head, 8);
    memcpy(plain + 8, data, len);
    size_t written = 0;
    int ok = SSL_write_ex(ssl, plain, size, &written);
    if (plain != small)
        free(plain);
    if (!ok || written != size) {
        ERR_clear_error();
        errno = EPROTO;
        return -1;
    }
    return flush_sealed(ssl, fd, rest, rest_len);
}

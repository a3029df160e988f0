/*
 * A minimal mytimerd client written from docs/protocol.md alone:
 * a socket, big-endian length framing and a hand-written CBOR subset.
 *
 *   c_client unix PATH MESSAGE
 *   c_client tcp HOST PORT MESSAGE
 *
 * Calls `version` and `echo` ({"req": {"message": MESSAGE, "delayMs": 5}}) and
 * prints:
 *   version: <text>
 *   echoed: <text>
 *   timerName: <text>
 * Exit status 0 on success, 1 on any error (with a message on stderr).
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <netdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_BODY 65536

static void die(const char *what) {
    fprintf(stderr, "c_client: %s\n", what);
    exit(1);
}

static int connect_unix(const char *path) {
    struct sockaddr_un sa;
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0) die("socket(AF_UNIX) failed");
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sa.sun_path) die("unix path too long");
    strcpy(sa.sun_path, path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect(unix) failed");
    return fd;
}

static int connect_tcp(const char *host, const char *port) {
    struct addrinfo hints, *res, *ai;
    int fd = -1;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, port, &hints, &res) != 0) die("getaddrinfo failed");
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (fd < 0) continue;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) break;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) die("connect(tcp) failed");
    return fd;
}

static void write_all(int fd, const uint8_t *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n <= 0) die("write failed");
        buf += n;
        len -= (size_t)n;
    }
}

static void read_all(int fd, uint8_t *buf, size_t len) {
    while (len > 0) {
        ssize_t n = read(fd, buf, len);
        if (n <= 0) die("read failed (connection closed?)");
        buf += n;
        len -= (size_t)n;
    }
}

/* --- CBOR encoding (definite lengths only) --------------------------- */

struct buf {
    uint8_t data[4096];
    size_t len;
};

static void put(struct buf *b, uint8_t byte) {
    if (b->len >= sizeof b->data) die("request too large");
    b->data[b->len++] = byte;
}

static void put_head(struct buf *b, unsigned major, uint64_t value) {
    uint8_t mt = (uint8_t)(major << 5);
    if (value < 24) {
        put(b, mt | (uint8_t)value);
    } else if (value <= 0xff) {
        put(b, mt | 24);
        put(b, (uint8_t)value);
    } else if (value <= 0xffff) {
        put(b, mt | 25);
        put(b, (uint8_t)(value >> 8));
        put(b, (uint8_t)value);
    } else {
        int i;
        put(b, mt | 26);
        for (i = 3; i >= 0; i--) put(b, (uint8_t)(value >> (8 * i)));
    }
}

static void put_text(struct buf *b, const char *s) {
    size_t n = strlen(s), i;
    put_head(b, 3, n);
    for (i = 0; i < n; i++) put(b, (uint8_t)s[i]);
}

/* --- CBOR decoding (the subset the responses use) --------------------- */

struct cursor {
    const uint8_t *p;
    size_t left;
};

static uint64_t get_head(struct cursor *c, unsigned *major) {
    uint8_t first, info;
    uint64_t value = 0;
    int n = 0, i;
    if (c->left < 1) die("truncated CBOR");
    first = *c->p++;
    c->left--;
    *major = first >> 5;
    info = first & 0x1f;
    if (info < 24) return info;
    if (info == 24) n = 1;
    else if (info == 25) n = 2;
    else if (info == 26) n = 4;
    else if (info == 27) n = 8;
    else die("unsupported CBOR (indefinite length?)");
    if (c->left < (size_t)n) die("truncated CBOR");
    for (i = 0; i < n; i++) value = (value << 8) | c->p[i];
    c->p += n;
    c->left -= (size_t)n;
    return value;
}

/* A text string; returns a malloc'd NUL-terminated copy. */
static char *get_text(struct cursor *c) {
    unsigned major;
    uint64_t n = get_head(c, &major);
    char *s;
    if (major != 3) die("expected a CBOR text string");
    if (n > c->left) die("truncated CBOR text");
    s = malloc((size_t)n + 1);
    if (s == NULL) die("out of memory");
    memcpy(s, c->p, (size_t)n);
    s[n] = '\0';
    c->p += n;
    c->left -= (size_t)n;
    return s;
}

/* --- framing ----------------------------------------------------------- */

static void put_u32(uint8_t *out, uint32_t v) {
    uint32_t be = htonl(v);
    memcpy(out, &be, 4);
}

/* Send one request, read one response; returns ret, fills body/len. */
static int32_t call(int fd, const char *method, const struct buf *payload, uint8_t *body,
                    uint32_t *body_len) {
    uint8_t head[4];
    uint8_t resp_head[8];
    uint32_t mlen = (uint32_t)strlen(method), blen, uret;
    put_u32(head, mlen);
    write_all(fd, head, 4);
    write_all(fd, (const uint8_t *)method, mlen);
    put_u32(head, (uint32_t)payload->len);
    write_all(fd, head, 4);
    write_all(fd, payload->data, payload->len);
    read_all(fd, resp_head, 8);
    memcpy(&uret, resp_head, 4);
    memcpy(&blen, resp_head + 4, 4);
    blen = ntohl(blen);
    if (blen > MAX_BODY) die("response body too large");
    read_all(fd, body, blen);
    *body_len = blen;
    return (int32_t)ntohl(uret);
}

int main(int argc, char **argv) {
    static uint8_t body[MAX_BODY];
    struct buf req;
    struct cursor c;
    uint32_t body_len;
    unsigned major;
    uint64_t pairs, i;
    const char *message;
    char *text;
    int fd;

    if (argc == 4 && strcmp(argv[1], "unix") == 0) {
        fd = connect_unix(argv[2]);
        message = argv[3];
    } else if (argc == 5 && strcmp(argv[1], "tcp") == 0) {
        fd = connect_tcp(argv[2], argv[3]);
        message = argv[4];
    } else {
        fprintf(stderr, "usage: %s unix PATH MESSAGE | tcp HOST PORT MESSAGE\n", argv[0]);
        return 1;
    }

    /* version: payload {} */
    req.len = 0;
    put_head(&req, 5, 0);
    if (call(fd, "version", &req, body, &body_len) != 0) die("version: RET_ERR");
    c.p = body;
    c.left = body_len;
    text = get_text(&c);
    if (c.left != 0) die("version: trailing bytes");
    printf("version: %s\n", text);
    free(text);

    /* echo: {"req": {"message": MESSAGE, "delayMs": 5}} */
    req.len = 0;
    put_head(&req, 5, 1);
    put_text(&req, "req");
    put_head(&req, 5, 2);
    put_text(&req, "message");
    put_text(&req, message);
    put_text(&req, "delayMs");
    put_head(&req, 0, 5);
    if (call(fd, "echo", &req, body, &body_len) != 0) {
        fprintf(stderr, "c_client: echo: RET_ERR %.*s\n", (int)body_len, (const char *)body);
        return 1;
    }
    c.p = body;
    c.left = body_len;
    pairs = get_head(&c, &major);
    if (major != 5) die("echo: expected a CBOR map");
    for (i = 0; i < pairs; i++) {
        char *key = get_text(&c);
        char *value = get_text(&c);
        printf("%s: %s\n", key, value);
        free(key);
        free(value);
    }
    if (c.left != 0) die("echo: trailing bytes");
    close(fd);
    return 0;
}

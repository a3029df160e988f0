/* listen.c - see listen.h. */
#define _GNU_SOURCE
#include "listen.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static void fail_sys(const char *prog, const char *what) {
    fprintf(stderr, "%s: ", prog);
    perror(what);
    exit(1);
}

static void fail_arg(const char *prog, const char *what, const char *arg) {
    fprintf(stderr, "%s: %s: %s\n", prog, what, arg);
    exit(2);
}

static int is_loopback(const char *host) {
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, host, &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) == 1) return IN6_IS_ADDR_LOOPBACK(&a6);
    return strcmp(host, "localhost") == 0;
}

int bench_listen_unix(const char *prog, const char *path) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path)) fail_arg(prog, "unix path too long", path);
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) fail_sys(prog, "socket");
    unlink(path);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) fail_sys(prog, "bind unix");
    if (listen(fd, 4096) < 0) fail_sys(prog, "listen");
    return fd;
}

int bench_listen_tcp(const char *prog, const char *host, const char *port) {
    if (!is_loopback(host)) fail_arg(prog, "refusing non-loopback host", host);
    if (strcmp(host, "localhost") == 0) host = "127.0.0.1";
    char *end;
    long p = strtol(port, &end, 10);
    if (*port == '\0' || *end != '\0' || p < 0 || p > 65535) fail_arg(prog, "bad port", port);
    struct sockaddr_storage ss;
    socklen_t sl;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)p);
        sl = sizeof *s4;
    } else {
        inet_pton(AF_INET6, host, &s6->sin6_addr); /* is_loopback() parsed it already */
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)p);
        sl = sizeof *s6;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) fail_sys(prog, "socket");
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, sl) < 0) fail_sys(prog, "bind tcp");
    if (listen(fd, 4096) < 0) fail_sys(prog, "listen");
    return fd;
}

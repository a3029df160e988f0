/*
 * listen.h - the listening sockets of the benchmark's servers (floor_server,
 * reference_server): unix paths, and TCP on loopback addresses only, since
 * these servers are measuring tools, never meant to be reachable from outside.
 */
#ifndef BENCH_LISTEN_H
#define BENCH_LISTEN_H

/* A listening unix socket at path (a stale file there is replaced). */
int bench_listen_unix(const char *prog, const char *path);

/* A listening TCP socket on host (a numeric loopback address or "localhost")
 * and port. */
int bench_listen_tcp(const char *prog, const char *host, const char *port);

/* Both return a blocking, close-on-exec socket with a backlog of 4096, or
 * print what went wrong, prefixed with prog, and exit: status 2 for a bad
 * argument, 1 for a failed system call. */

#endif

/* CHECK(cond, fmt, ...): the C test drivers' assertion. A failed check
 * prints "FAIL file:line: cond: message" to stderr and exits 1, which the
 * pytest side reports with the driver's output. CHECK_FAILED(what, fmt,
 * ...) is that report and exit, for a check that prints more first
 * (lane_tls_stress.c's TLS_CHECK). */
#ifndef MYTIMERD_TESTS_CHECK_H
#define MYTIMERD_TESTS_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#define CHECK_FAILED(what, ...)                                               \
    do {                                                                      \
        fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, what);        \
        fprintf(stderr, __VA_ARGS__);                                         \
        fputc('\n', stderr);                                                  \
        exit(1);                                                              \
    } while (0)

#define CHECK(cond, ...)                                                      \
    do {                                                                      \
        if (!(cond))                                                          \
            CHECK_FAILED(#cond, __VA_ARGS__);                                 \
    } while (0)

#endif

/* CHECK(cond, fmt, ...): the C test drivers' assertion. A failed check
 * prints "FAIL file:line: cond: message" to stderr and exits 1, which the
 * pytest side reports with the driver's output. */
#ifndef MYTIMERD_TESTS_CHECK_H
#define MYTIMERD_TESTS_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond, ...)                                                      \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);   \
            fprintf(stderr, __VA_ARGS__);                                     \
            fputc('\n', stderr);                                              \
            exit(1);                                                          \
        }                                                                     \
    } while (0)

#endif

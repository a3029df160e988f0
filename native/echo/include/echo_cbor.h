/*
 * libecho, 0.2 generation of the nim-ffi CBOR ABI: a C implementation of
 * nim-ffi's second example library (`examples/echo`). Contract and design:
 * ../README.md. Built by `make -C native/echo` into build/libecho.so.
 *
 * The region between the CFFI-BEGIN / CFFI-END markers is read verbatim by
 * cffi's cdef() (tests/echo), so it must stay free of preprocessor
 * conditionals. It is identical to libmy_timer's (same callback type and
 * codes), so both headers may be included together.
 *
 * Environment, read at create time: ECHO_SUBMIT_MODE=async|handoff.
 */
#ifndef ECHO_CBOR_H
#define ECHO_CBOR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define ECHO_API __attribute__((visibility("default")))
#else
#define ECHO_API
#endif

/* CFFI-BEGIN */
typedef void (*FFICallBack)(int callerRet, const char *msg, size_t len, void *userData);

#define RET_OK 0
#define RET_ERR 1
#define RET_MISSING_CALLBACK 2
/* Newer nim-ffi generations only: "still running", never final. */
#define RET_STALE_WARN 3
/* CFFI-END */

/* The CBOR ABI: what a host binds. */
ECHO_API void *echo_create_cbor(const uint8_t *reqCbor, size_t reqCborLen,
                                FFICallBack cb, void *userData);
ECHO_API int echo_shout_cbor(void *ctx, FFICallBack cb, void *userData,
                             const uint8_t *reqCbor, size_t reqCborLen);
ECHO_API int echo_version_cbor(void *ctx, FFICallBack cb, void *userData,
                               const uint8_t *reqCbor, size_t reqCborLen);
ECHO_API int echo_destroy(void *ctx);
ECHO_API uint64_t echo_add_event_listener(void *ctx, const char *eventName,
                                          FFICallBack cb, void *userData);
ECHO_API int echo_remove_event_listener(void *ctx, uint64_t listenerId);

/* Exported only so that the symbol table is the real build's. The real
 * echo_create / echo_shout / echo_version of this generation are nim-ffi's
 * native C ABI (C struct arguments), not CBOR: here they read no argument,
 * call nothing back and fail (NULL / RET_ERR). A host must bind the _cbor
 * names. libechoNimMain (the Nim runtime's initialiser) and NimDestroyGlobals
 * do nothing: this library needs neither. */
ECHO_API void *echo_create(void);
ECHO_API int echo_shout(void);
ECHO_API int echo_version(void);
ECHO_API void libechoNimMain(void);
ECHO_API void NimDestroyGlobals(void);

#ifdef __cplusplus
}
#endif

#endif /* ECHO_CBOR_H */

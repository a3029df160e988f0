/*
 * libecho, 0.3 generation of the nim-ffi CBOR ABI (nim-ffi's `examples/echo`):
 * the calls of echo_cbor.h without the _cbor suffix, plus two context-free
 * static calls, echo_lib_version and echo_shout_anon. Contract and design:
 * ../README.md. Built by `make -C native/echo GENERATION=0.3` into
 * build/libecho-0.3.so.
 *
 * The CFFI-BEGIN / CFFI-END region is the same as in echo_cbor.h (and in
 * libmy_timer's headers) and must stay free of preprocessor conditionals.
 *
 * Environment, read at create time: ECHO_SUBMIT_MODE=async|handoff.
 */
#ifndef ECHO_H
#define ECHO_H

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
ECHO_API void *echo_create(const uint8_t *reqCbor, size_t reqCborLen,
                           FFICallBack cb, void *userData);
ECHO_API int echo_shout(void *ctx, FFICallBack cb, void *userData,
                        const uint8_t *reqCbor, size_t reqCborLen);
ECHO_API int echo_version(void *ctx, FFICallBack cb, void *userData,
                          const uint8_t *reqCbor, size_t reqCborLen);
ECHO_API int echo_lib_version(FFICallBack cb, void *userData,
                              const uint8_t *reqCbor, size_t reqCborLen);
ECHO_API int echo_shout_anon(FFICallBack cb, void *userData,
                             const uint8_t *reqCbor, size_t reqCborLen);
ECHO_API int echo_destroy(void *ctx);
ECHO_API uint64_t echo_add_event_listener(void *ctx, const char *eventName,
                                          FFICallBack cb, void *userData);
ECHO_API int echo_remove_event_listener(void *ctx, uint64_t listenerId);

/* Exported only so that the symbol table is the real build's: the Nim
 * runtime's initialiser and global destructor. Both do nothing here. */
ECHO_API void libechoNimMain(void);
ECHO_API void NimDestroyGlobals(void);

#ifdef __cplusplus
}
#endif

#endif /* ECHO_H */

/*
 * libmy_timer, 0.3 generation of the nim-ffi CBOR ABI (see ../ABI.md,
 * "The 0.3 generation"): the same calls as my_timer_cbor.h without the _cbor
 * suffix, plus the context-free static call my_timer_lib_version. Built by
 * `make -C native GENERATION=0.3` into build/libmy_timer-0.3.so.
 *
 * The region between the CFFI-BEGIN / CFFI-END markers is the same as in
 * my_timer_cbor.h (identical redefinitions, so both headers may be included)
 * and must stay free of preprocessor conditionals.
 */
/*
 * The C implementation reads these environment variables at create time (see
 * native/README.md): MY_TIMER_SUBMIT_MODE=async|handoff,
 * MY_TIMER_DESTROY_GRACE_MS and, in this generation only, the test aid
 * MY_TIMER_STALE_WARN_MS (interval of RET_STALE_WARN, default 5000).
 */
#ifndef MY_TIMER_H
#define MY_TIMER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define MY_TIMER_API __attribute__((visibility("default")))
#else
#define MY_TIMER_API
#endif

/* CFFI-BEGIN */
typedef void (*FFICallBack)(int callerRet, const char *msg, size_t len, void *userData);

#define RET_OK 0
#define RET_ERR 1
#define RET_MISSING_CALLBACK 2
/* Newer nim-ffi generations only: "still running", never final. */
#define RET_STALE_WARN 3
/* CFFI-END */

MY_TIMER_API void *my_timer_create(const uint8_t *reqCbor, size_t reqCborLen,
                                   FFICallBack cb, void *userData);
MY_TIMER_API int my_timer_echo(void *ctx, FFICallBack cb, void *userData,
                               const uint8_t *reqCbor, size_t reqCborLen);
MY_TIMER_API int my_timer_version(void *ctx, FFICallBack cb, void *userData,
                                  const uint8_t *reqCbor, size_t reqCborLen);
MY_TIMER_API int my_timer_lib_version(FFICallBack cb, void *userData,
                                      const uint8_t *reqCbor, size_t reqCborLen);
MY_TIMER_API int my_timer_complex(void *ctx, FFICallBack cb, void *userData,
                                  const uint8_t *reqCbor, size_t reqCborLen);
MY_TIMER_API int my_timer_schedule(void *ctx, FFICallBack cb, void *userData,
                                   const uint8_t *reqCbor, size_t reqCborLen);
MY_TIMER_API int my_timer_destroy(void *ctx);
MY_TIMER_API uint64_t my_timer_add_event_listener(void *ctx, const char *eventName,
                                                  FFICallBack cb, void *userData);
MY_TIMER_API int my_timer_remove_event_listener(void *ctx, uint64_t listenerId);

#ifdef __cplusplus
}
#endif

#endif /* MY_TIMER_H */

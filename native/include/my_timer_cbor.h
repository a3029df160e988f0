/*
 * libmy_timer: the nim-ffi CBOR ABI (see ../ABI.md).
 *
 * This header is the single declaration of the ABI. It is included by the C
 * implementation in native/, by the daemon's cffi glue, and the region between
 * the CFFI-BEGIN / CFFI-END markers is read verbatim by cffi's cdef(), so it
 * must stay free of preprocessor conditionals.
 */
/*
 * The C implementation in native/src reads two environment variables at
 * create time (see native/README.md): MY_TIMER_SUBMIT_MODE=async|handoff and
 * MY_TIMER_DESTROY_GRACE_MS. A call made from inside a library callback is
 * rejected (RET_ERR / 0 / NULL, no callback) instead of deadlocking.
 */
#ifndef MY_TIMER_CBOR_H
#define MY_TIMER_CBOR_H

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

MY_TIMER_API void *my_timer_create_cbor(const uint8_t *reqCbor, size_t reqCborLen,
                                        FFICallBack cb, void *userData);
MY_TIMER_API int my_timer_echo_cbor(void *ctx, FFICallBack cb, void *userData,
                                    const uint8_t *reqCbor, size_t reqCborLen);
MY_TIMER_API int my_timer_version_cbor(void *ctx, FFICallBack cb, void *userData,
                                       const uint8_t *reqCbor, size_t reqCborLen);
MY_TIMER_API int my_timer_complex_cbor(void *ctx, FFICallBack cb, void *userData,
                                       const uint8_t *reqCbor, size_t reqCborLen);
MY_TIMER_API int my_timer_schedule_cbor(void *ctx, FFICallBack cb, void *userData,
                                        const uint8_t *reqCbor, size_t reqCborLen);
MY_TIMER_API int my_timer_destroy(void *ctx);
MY_TIMER_API uint64_t my_timer_add_event_listener(void *ctx, const char *eventName,
                                                  FFICallBack cb, void *userData);
MY_TIMER_API int my_timer_remove_event_listener(void *ctx, uint64_t listenerId);

#ifdef __cplusplus
}
#endif

#endif /* MY_TIMER_CBOR_H */

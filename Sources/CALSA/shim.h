// Debian's libasound2-dev: the ALSA PCM API used for microphone capture.
#ifndef MYQASR_CALSA_SHIM_H
#define MYQASR_CALSA_SHIM_H

#include <alsa/asoundlib.h>
#include <stdarg.h>
#include <stdio.h>

// ALSA reports its internal errors through a variadic handler
// (snd_lib_error_handler_t), which Swift can neither implement nor call.
// This shim formats the message in C and hands a plain string to a
// non-variadic callback that Swift can provide.

/// Receives one formatted ALSA library error message.
typedef void (*myqasr_alsa_error_callback)(const char *file, int line,
                                           const char *function, int err,
                                           const char *message);

static myqasr_alsa_error_callback myqasr_alsa_error_target = NULL;

static void myqasr_alsa_error_trampoline(const char *file, int line,
                                         const char *function, int err,
                                         const char *fmt, ...) {
    char message[512];
    va_list arguments;
    va_start(arguments, fmt);
    vsnprintf(message, sizeof message, fmt, arguments);
    va_end(arguments);
    myqasr_alsa_error_callback target = myqasr_alsa_error_target;
    if (target != NULL) {
        target(file, line, function, err, message);
    }
}

/// Routes ALSA's library error messages to `callback` (NULL restores
/// ALSA's default handler, which prints to stderr).
static inline int myqasr_alsa_set_error_callback(myqasr_alsa_error_callback callback) {
    myqasr_alsa_error_target = callback;
    return snd_lib_error_set_handler(callback != NULL ? myqasr_alsa_error_trampoline : NULL);
}

#endif

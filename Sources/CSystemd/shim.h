// Debian's libsystemd-dev: sd_notify, sd_watchdog_enabled and sd_listen_fds.
#include <systemd/sd-daemon.h>

// The daemon's background work runs at idle I/O priority. ioprio_get/ioprio_set have no glibc wrapper, and
// syscall(2) is variadic (not callable from Swift): these two wrap it. Who 1 is IOPRIO_WHO_PROCESS; id 0 is
// the calling thread (linux/ioprio.h).
#include <sys/syscall.h>
#include <unistd.h>
// SCHED_IDLE: glibc's <sched.h> shows it only to _GNU_SOURCE builds; the kernel's header has it.
#include <linux/sched.h>
static inline int myq_ioprio_get_self(void) { return (int)syscall(SYS_ioprio_get, 1, 0); }
static inline int myq_ioprio_set_self(int value) { return (int)syscall(SYS_ioprio_set, 1, 0, value); }
// The calling thread's name as ps, top and /proc show it (at most 15 bytes); prctl(2) is variadic too.
#include <sys/prctl.h>
static inline int myq_set_thread_name(const char *name) { return prctl(PR_SET_NAME, name, 0, 0, 0); }

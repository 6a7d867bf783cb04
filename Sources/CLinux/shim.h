// Linux declarations Swift cannot reach through Glibc (no library to link): the layouts the servers read
// peer credentials into (glibc hides `struct ucred` without _GNU_SOURCE), and wrappers of prctl(2) and
// syscall(2), which are variadic (not callable from Swift).
#ifndef MYQASR_CLINUX_SHIM_H
#define MYQASR_CLINUX_SHIM_H

#include <stdint.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
// SCHED_IDLE: glibc's <sched.h> shows it only to _GNU_SOURCE builds; the kernel's header has it.
#include <linux/sched.h>

/// What getsockopt(SO_PEERCRED) fills: the layout of glibc's `struct ucred`.
typedef struct {
    int32_t pid;
    uint32_t uid;
    uint32_t gid;
} myqasr_ucred;

/// What getsockopt(SO_PEERGROUPS) (Linux 4.13+) fills: the peer's supplementary groups (a peer with more
/// than this many is read as having none).
#define MYQASR_PEER_GROUPS_MAX 256
typedef struct {
    uint32_t gids[MYQASR_PEER_GROUPS_MAX];
} myqasr_peer_groups;

/// prctl(PR_SET_DUMPABLE, value): 0 means no core dump and no ptrace attach by other processes of the user.
static inline int myqasr_set_dumpable(int value) { return prctl(PR_SET_DUMPABLE, (unsigned long)value, 0UL, 0UL, 0UL); }

/// prctl(PR_GET_DUMPABLE): 1 if the process may be dumped, 0 if not, -1 on error.
static inline int myqasr_get_dumpable(void) { return prctl(PR_GET_DUMPABLE, 0UL, 0UL, 0UL, 0UL); }

/// The calling thread's name as ps, top and /proc show it (at most 15 bytes).
static inline int myqasr_set_thread_name(const char *name) { return prctl(PR_SET_NAME, name, 0UL, 0UL, 0UL); }

/// The calling thread's I/O priority (ioprio_get/ioprio_set have no glibc wrapper). Who 1 is
/// IOPRIO_WHO_PROCESS; id 0 is the calling thread (linux/ioprio.h).
static inline int myqasr_ioprio_get_self(void) { return (int)syscall(SYS_ioprio_get, 1, 0); }
static inline int myqasr_ioprio_set_self(int value) { return (int)syscall(SYS_ioprio_set, 1, 0, value); }

#endif

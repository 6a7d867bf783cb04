// Linux declarations Swift cannot reach through Glibc (no library to link): the layouts the servers read
// peer credentials into (glibc hides `struct ucred` without _GNU_SOURCE), and prctl(), which is variadic.
#ifndef MYQASR_CLINUX_SHIM_H
#define MYQASR_CLINUX_SHIM_H

#include <stdint.h>
#include <sys/prctl.h>
#include <sys/resource.h>

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

#endif

// Memory housekeeping for a long-running process that drops large models: the heap, code and mapped file
// pages it no longer needs, and the unnamed file a build writes its layers to.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <linux/magic.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "ckernels.h"

void mq_release_free_heap(void) {
    // glibc keeps freed heap memory for reuse; after a model is dropped, give the free pages of
    // every arena back to the system (malloc_trim also releases pages inside the heap, not only
    // at its top, since glibc 2.8).
    malloc_trim(0);
}

// For dl_iterate_phdr: drops the resident pages of one loaded object's read-only segments.
static int release_read_only_segments(struct dl_phdr_info *info, size_t size, void *unused) {
    (void)size;
    (void)unused;
    // The vDSO is the kernel's, not a file mapping.
    if (info->dlpi_name != NULL && strstr(info->dlpi_name, "vdso") != NULL) return 0;
    // Text relocations would make private, written copies of code pages: those must stay.
    for (ElfW(Half) i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_DYNAMIC) continue;
        for (const ElfW(Dyn) *d = (const ElfW(Dyn) *)(info->dlpi_addr + ph->p_vaddr); d->d_tag != DT_NULL; d++) {
            if (d->d_tag == DT_TEXTREL || (d->d_tag == DT_FLAGS && (d->d_un.d_val & DF_TEXTREL))) return 0;
        }
    }
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    for (ElfW(Half) i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        // Writable segments (data, and the relocated read-only data that RELRO protects afterwards) hold
        // the process's own copies: never these.
        if (ph->p_type != PT_LOAD || (ph->p_flags & PF_W) || ph->p_filesz != ph->p_memsz) continue;
        const uintptr_t lo = (info->dlpi_addr + ph->p_vaddr) & ~(page - 1);
        const uintptr_t hi = (info->dlpi_addr + ph->p_vaddr + ph->p_memsz + page - 1) & ~(page - 1);
        madvise((void *)lo, hi - lo, MADV_DONTNEED);
    }
    return 0;
}

void mq_release_code_pages(void) {
    // A daemon's start-up runs code it never runs again (argument and configuration parsing, model
    // loading, quantization, the self-check), and each page of code it runs maps 64 KiB around it (the
    // kernel's fault-around): the static myqasrd kept 17 MiB of its 19 MB of code resident at rest, of
    // which serving a command touched 2.9 MiB (smaps' Referenced after clear_refs). Dropping the page-table
    // entries of every loaded object's read-only segments (code, constants) takes them out of RSS; the
    // page cache keeps them, and the code still in use maps back with minor faults. Only read-only
    // file-backed segments: their contents are the file's, so nothing is lost.
    dl_iterate_phdr(release_read_only_segments, NULL);
}

void mq_keep_freed_heap(void) {
    // Each 30 s window allocates tens of MB of scratch (im2col rows, the encoder's activations,
    // the cross-attention keys and values, per-step logits) and frees it at the end. With glibc's
    // sliding defaults the larger blocks are mmap'd and the top of the heap is returned as soon as
    // twice that threshold is free, so every window faulted the same pages in again: 135,000 to
    // 169,000 page faults transcribing the 74 s of scripts/fetch-samples, 11,698 in a repeated
    // jfk.wav window. Serving blocks up to 32 MiB (the most glibc allows) from the heap and
    // keeping up to 256 MiB of it free for reuse: 29,500 faults (most of them loading the model),
    // 18 in the repeated window, the same peak RSS. mq_release_free_heap still returns it all.
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
}

void mq_use_one_heap(void) {
    // glibc gives threads that contend for the heap arenas of their own. malloc_trim returns the free
    // pages inside every arena's free chunks, but the top of a thread arena's heap goes back only when
    // it exceeds the trim threshold, which mq_keep_freed_heap sets to 256 MiB (beyond a thread heap's
    // 64 MiB): after two transcriptions, one thread heap of the daemon kept 10.7 MB of free memory
    // resident. With every thread on the main heap, malloc_trim reaches all of it: RssAnon after two
    // transcriptions 52.3 MiB instead of 65-76 MiB, and the same speed (docs/daemon.md).
    mallopt(M_ARENA_MAX, 1);
}

void mq_release_mapped_pages(const void *start, size_t length, const void *mapping, size_t mappingLength) {
    // Drops this process's page-table entries for the pages of [start, start + length) of a
    // read-only file mapping: RSS (RssFile, and so VmHWM) stops counting them, the page cache keeps
    // them, and the next read maps them again with a minor fault. Only for file mappings: on
    // anonymous memory MADV_DONTNEED discards the contents. The range is widened to whole 2 MiB
    // spans of the file (within the mapping): a read fault maps the pages around the one read as
    // well, 64 KiB of them (the kernel's fault-around) or the whole folio the page cache holds them
    // in, which on ext4 with large folios (Linux 6.x) is up to 2 MiB, naturally aligned in the file.
    // Measured on Linux 6.18 and ext4: reading one byte of model.bin mapped 256 KiB, another 2 MiB;
    // a 64 KiB margin left 12.8 MB of it resident after a build and its check.
    if (length == 0) return;
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), span = MQ_RELEASE_SPAN;
    const uintptr_t first = (uintptr_t)mapping, end = first + mappingLength;
    // Offsets in the file (the mapping starts at offset 0), rounded out to the span.
    uintptr_t lo = ((uintptr_t)start - first) / span * span;
    uintptr_t hi = ((uintptr_t)start + length - first + span - 1) / span * span;
    lo += first;
    hi = hi > mappingLength ? end : first + hi;
    lo &= ~(page - 1);
    hi = (hi + page - 1) & ~(page - 1);
    madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

int mq_open_unnamed_file(const char *directory) {
    // O_TMPFILE (Linux 3.11+, ext4, xfs, btrfs, tmpfs): the file never has a name, so nothing is left in the
    // directory when the process ends however it ends; its blocks are freed once the last descriptor and
    // mapping go. Filesystems without it answer EOPNOTSUPP (or EISDIR on old kernels): a named file removed at
    // once has the same lifetime, with a moment in between in which it can be seen.
    int fd = open(directory, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR)) return fd;
    char path[4096];
    if (snprintf(path, sizeof path, "%s/.layers-XXXXXX", directory) >= (int)sizeof path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    fd = mkostemp(path, O_CLOEXEC);
    if (fd < 0) return -1;
    if (unlink(path) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

int mq_is_in_memory_file(int fd) {
    // tmpfs and ramfs keep their files in memory (swap-backed at best): pages written there are memory all
    // the same, only no longer counted in the writer's resident set.
    struct statfs info;
    if (fstatfs(fd, &info) != 0) return -1;
    return info.f_type == TMPFS_MAGIC || info.f_type == RAMFS_MAGIC;
}

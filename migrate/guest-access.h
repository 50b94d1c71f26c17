/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Guarded access to memory that someone else can shrink under us.
 *
 * Guest memory is a file the memory owner and every back-end also hold.  A
 * memfd sealed with F_SEAL_SHRINK cannot lose pages, but a tmpfs or
 * hugetlbfs file can be truncated at any time, and touching a page past the
 * new end raises SIGBUS, which would kill the whole daemon.  These calls
 * make such a fault an error of the one access instead: a process-wide
 * SIGBUS handler (installed once) jumps back into the call when the fault
 * lies in the range this thread is accessing, and -EIO is returned.  A
 * SIGBUS anywhere else is handed to the handler that was there before (a
 * sanitizer's, say) or, without one, kills the process as it always would:
 * real bugs still crash.
 *
 * The guest pointer must be the host address of mapped guest memory (see
 * migrate/vm.h, which callers should use instead of these).
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* Copies len bytes from guest memory at src; 0 or -EIO when the memory is gone. */
int vhm_guarded_read(void *dst, const volatile void *src, size_t len);
/* Copies len bytes to guest memory at dst; 0 or -EIO when the memory is gone. */
int vhm_guarded_write(volatile void *dst, const void *src, size_t len);
/* An acquire load of a 2-aligned u16 in guest memory (ring indices); 0 or -EIO. */
int vhm_guarded_load_u16_acquire(const volatile uint16_t *src, uint16_t *out);
/*
 * Runs fn over guest memory [guest, guest+len) with that range armed: one
 * pass that reads guest memory in place (a hash, a zero test) instead of a
 * copy first.  A fault there cuts fn short wherever it is and -EIO is
 * returned, so fn must only compute: no allocation, lock, I/O or anything
 * else that would be left half done.
 */
int vhm_guarded_call(const volatile void *guest, size_t len, void (*fn)(const void *guest, size_t len, void *arg),
                     void *arg);

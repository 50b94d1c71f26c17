/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vhm_log: a VM's shared dirty log (vhost-user LOG_SHMFD).
 *
 * One bit per 4 KiB page of guest-physical address space: page = gpa / 4096,
 * byte page / 8, bit page % 8 (equivalently, on little-endian hosts, 64-bit
 * word page / 64, bit page % 64).  Backends set bits with atomic OR; the
 * front-end harvests them into the VM's migration bitmap.
 *
 * The memory is one memfd (MFD_CLOEXEC | MFD_ALLOW_SEALING), sized to whole
 * 64-bit words covering [0, top_gpa), sealed with F_SEAL_GROW |
 * F_SEAL_SHRINK | F_SEAL_SEAL and mapped MAP_SHARED.  SET_LOG_BASE sends
 * vhm_log_fd() with mmap_size = vhm_log_size_bytes() and mmap_offset = 0.
 *
 * A vhm_log is used by one thread (the VM's migration thread); backends
 * write it concurrently from other processes.  log/ knows nothing of
 * sockets: sending the fd is the caller's job.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "log/bitmap.h"

/* Largest top_gpa accepted: 2^52 (the x86-64 / arm64 physical address limit). */
#define VHM_LOG_MAX_TOP_GPA (UINT64_C(1) << 52)

struct vhm_log;

/* A guest-physical extent: [gpa, gpa + size). */
struct vhm_log_extent {
        uint64_t gpa;
        uint64_t size;
};

/*
 * The exclusive end of guest-physical space the log must cover: the maximum
 * of every region's end (gpa + size) and every used ring's log range end
 * (log_guest_addr + bytes of the used ring).  A used ring may lie past the
 * last memory region's end in the log's view (its log address is what the
 * backend logs), so both must be given.  Either array may be empty (NULL with
 * a count of 0), not both.
 * Returns 0 and *top, -EINVAL (no extents, an extent of size 0, NULL
 * arguments) or -EOVERFLOW (gpa + size wraps past 2^64).
 */
int vhm_log_required_top(const struct vhm_log_extent *regions, size_t nregions, const struct vhm_log_extent *used_rings,
                         size_t nrings, uint64_t *top);

/*
 * Create a log covering guest-physical addresses [0, top_gpa).  It covers
 * npages = ceil(top_gpa / 4096) pages and is ceil(npages / 64) * 8 bytes
 * long; all bits clear.
 * Returns 0, -EINVAL (top_gpa == 0 or out == NULL), -ERANGE (top_gpa >
 * VHM_LOG_MAX_TOP_GPA) or the errno of memfd_create / ftruncate / fcntl /
 * mmap, negated.
 */
int vhm_log_new(uint64_t top_gpa, struct vhm_log **out);

/*
 * Take back a log a previous process created (kept across a restart): fd is
 * its memfd, top_gpa what it was created for.  The memfd must be sealed as
 * vhm_log_new seals it (F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL: no
 * back-end mapping it can have it shrunk under it) and exactly
 * ceil(ceil(top_gpa / 4096) / 64) * 8 bytes long.  Its bits are kept: pages
 * logged before the restart are harvested after it.  Takes fd in every case
 * (closed on failure).  Returns 0, -EINVAL (bad arguments, not a memfd,
 * other seals), -EMSGSIZE (another size), -ERANGE, or an mmap errno.
 */
int vhm_log_adopt(int fd, uint64_t top_gpa, struct vhm_log **out);

/* Unmap, close and free; NULL is allowed.  The caller must have made every
 * backend drop the log first (SET_LOG_BASE with the next log, acknowledged). */
void vhm_log_free(struct vhm_log *log);

/* The memfd to send with SET_LOG_BASE (owned by the log: do not close it). */
int vhm_log_fd(const struct vhm_log *log);

/* The log's length in bytes: ceil(npages / 64) * 8; SET_LOG_BASE mmap_size. */
uint64_t vhm_log_size_bytes(const struct vhm_log *log);

/* The number of pages the log was created for: ceil(top_gpa / 4096).  Pages
 * up to vhm_log_size_bytes() * 8 - 1 exist in the memory but lie past top. */
uint64_t vhm_log_npages(const struct vhm_log *log);

/*
 * Harvest: move every bit set in the log into the migration bitmap.
 * A bit is taken out of the log only by an atomic operation (see
 * enum vhm_log_harvest_impl), never by a read followed by a store, so a
 * bit a backend sets during the harvest is either taken now or stays in the
 * log for the next harvest: never lost.  And only once it is in `into`:
 * a process dying at any instruction leaves each bit in the log or in the
 * bitmap (a restart keeps both memfds), never only in a register.  Empty 1 KiB chunks and 64-byte
 * lines are skipped after plain (vector) reads, which only say where to
 * look; no per-bit work is done.  Returns with acquire
 * ordering: the caller's later reads of the harvested pages are not moved
 * before it.
 *
 * `into` must cover at least vhm_log_npages() pages; it may be larger
 * (memory hot-added after the log was sized): its pages past the log are not
 * touched.  Bits a backend set past vhm_log_npages() (inside the last word,
 * beyond top) are taken out of the log and dropped when `into` ends there.
 *
 * *pages_harvested (if not NULL) receives the number of pages this call
 * newly set in `into`: dirty in the log and not already set in the bitmap
 * (what QEMU calls num_dirty; it feeds the dirty rate).
 * Returns 0 or -ERANGE if `into` is smaller than the log (nothing done).
 */
int vhm_log_harvest(struct vhm_log *log, struct vhm_bitmap *into, uint64_t *pages_harvested);

/*
 * Harvest a DETACHED log: one no back-end writes any more.  The same result
 * as vhm_log_harvest, with plain loads and stores instead of atomics (no
 * locked instruction at any density), so it is faster on dense logs; the log
 * is all clear afterwards, ready to be handed out again.  Words are zeroed
 * only after they are merged, as vhm_log_harvest does.
 *
 * This serves double-buffered logging: two logs of the same size, one given
 * to the back-ends; to harvest, SET_LOG_BASE the other (all clear) to every
 * device, then harvest the old one with this call, and swap roles next time.
 *
 * SAFETY RULE: call it only when every back-end that was given this log has
 * acknowledged SET_LOG_BASE of another log AND is known to write no page to
 * the old log after that acknowledgement, i.e. switches logs under the locks
 * its queues write under.  DPDK's vhost library does (SET_LOG_BASE runs with
 * every ring's access_lock held and replies before unlocking), and so does
 * virtiofsd 7.2 (its dispatch write lock); generic libvhost-user does not
 * (no lock: a queue thread may still OR into the old log), nor does a
 * back-end not known.  A bit a back-end sets during this call may be lost,
 * and a page with it.  When in doubt, use vhm_log_harvest: it is always safe.
 * Returns 0 or -ERANGE, as vhm_log_harvest.
 */
int vhm_log_harvest_detached(struct vhm_log *log, struct vhm_bitmap *into, uint64_t *pages_harvested);

/*
 * How the harvest takes bits out of the log.  Each log starts with AUTO,
 * which picks the fastest the CPU supports (RTM, then CAS16, then XCHG);
 * choosing one explicitly is for tests and benchmarks.
 *   XCHG   per non-zero word, the value read merged, then one 8-byte
 *          __atomic_fetch_and(word, ~value) (named for the exchange it
 *          was before the merge came first).  Portable; the reference.
 *   CAS16  x86-64 with cmpxchg16b: per aligned word pair with both words
 *          non-zero, the pair merged, then one 16-byte compare-exchange
 *          against the value merged (on failure the value it returns is
 *          merged and tried in turn); a pair with one non-zero word takes
 *          the XCHG path.  The fewest locked instructions at every density.
 *   RTM    x86-64 with working TSX: one hardware transaction per 1 KiB chunk
 *          with dirty lines reads, merges and zeroes them; a transaction a
 *          backend's write conflicts with aborts and that chunk is redone
 *          with XCHG.  Dense logs run near memory bandwidth.
 */
enum vhm_log_harvest_impl {
        VHM_LOG_HARVEST_AUTO = 0,
        VHM_LOG_HARVEST_XCHG,
        VHM_LOG_HARVEST_CAS16,
        VHM_LOG_HARVEST_RTM,
};

/* Choose the implementation for this log.  Returns 0, -EOPNOTSUPP if this
 * CPU lacks what it needs, or -EINVAL for an unknown value. */
int vhm_log_set_harvest_impl(struct vhm_log *log, enum vhm_log_harvest_impl impl);

/* The implementation in use (never AUTO). */
enum vhm_log_harvest_impl vhm_log_get_harvest_impl(const struct vhm_log *log);

/* "auto", "xchg", "cas16", "rtm"; "?" for anything else. */
const char *vhm_log_harvest_impl_name(enum vhm_log_harvest_impl impl);

/* Cumulative counters of a log's harvests. */
struct vhm_log_harvest_stats {
        uint64_t harvests;   /* successful vhm_log_harvest calls */
        uint64_t pages;      /* sum of *pages_harvested */
        uint64_t tx_commits; /* RTM: chunks taken by a transaction */
        uint64_t tx_aborts;  /* RTM: chunks redone with XCHG after an abort */
};

void vhm_log_get_stats(const struct vhm_log *log, struct vhm_log_harvest_stats *stats);

/*
 * Mark pages dirty the way a backend does (atomic OR into the shared
 * memory); for tests, benchmarks and the synthetic guest.  mark_page ORs one
 * byte like DPDK/libvhost-user; mark_range ORs whole 64-bit words.
 * Return 0 or -ERANGE if a page lies outside the log's memory
 * (>= vhm_log_size_bytes() * 8).
 */
int vhm_log_mark_page(struct vhm_log *log, uint64_t page);
int vhm_log_mark_range(struct vhm_log *log, uint64_t first, uint64_t count);

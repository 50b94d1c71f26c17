/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vhm_bitmap: a VM's migration bitmap.
 *
 * One bit per 4 KiB guest-physical page (bit n of the bitmap is guest page n,
 * i.e. gpa n * 4096), stored as 64-bit words: page p lives in word p / 64,
 * bit p % 64.  The bitmap is plain memory with no atomics: it is owned by one
 * thread (the VM's migration thread), which harvests the shared dirty log into
 * it (vhm_log_harvest) and consumes it (the page sender, via the range
 * iterator).
 *
 * Invariant: bits at or beyond npages are always zero, so word-wise
 * operations (count, iterate, harvest) never report a page past the end.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VHM_PAGE_SHIFT 12
#define VHM_PAGE_SIZE  (UINT64_C(1) << VHM_PAGE_SHIFT)

/* Largest bitmap accepted: 2^40 pages (4 PiB of guest memory, 128 GiB of bitmap). */
#define VHM_BITMAP_MAX_PAGES (UINT64_C(1) << 40)

struct vhm_bitmap;

/* Allocate a bitmap of npages pages, all clear.  npages may be 0.
 * Returns 0, -ERANGE (npages > VHM_BITMAP_MAX_PAGES), -EINVAL (out == NULL)
 * or -ENOMEM. */
int vhm_bitmap_new(uint64_t npages, struct vhm_bitmap **out);

/*
 * The same, kept in a memfd (MFD_CLOEXEC, sealed F_SEAL_SHRINK |
 * F_SEAL_GROW, mapped shared) so that it can outlive the process: a
 * successor takes it back with vhm_bitmap_adopt.  The memfd is
 * ceil(npages / 64) * 8 bytes (8 for 0 pages).  Returns 0, -EINVAL, -ERANGE
 * or the errno of memfd_create / ftruncate / fcntl / mmap, negated.
 */
int vhm_bitmap_new_memfd(uint64_t npages, struct vhm_bitmap **out);

/*
 * Take back a bitmap vhm_bitmap_new_memfd made (in another process): fd is
 * its memfd, npages what it covered.  The memfd must be sealed against
 * shrinking and growing, not against writing, and of exactly the size
 * npages need; its bits are kept (bits past npages are cleared).  Takes fd
 * in every case (closed on failure).  Returns 0, -EINVAL (bad arguments, not
 * a memfd), -EPERM (other seals), -EMSGSIZE (another size), -ERANGE, or the
 * errno of mmap.
 */
int vhm_bitmap_adopt(int fd, uint64_t npages, struct vhm_bitmap **out);

/* The memfd of a bitmap made by vhm_bitmap_new_memfd or vhm_bitmap_adopt
 * (owned by the bitmap), -1 for one made by vhm_bitmap_new.  A resize that
 * changes the number of words moves the bitmap to a new memfd. */
int vhm_bitmap_fd(const struct vhm_bitmap *bm);

/*
 * Move a bitmap's bits into a new memfd (memfd true, as vhm_bitmap_new_memfd
 * makes) or back into malloc'd memory (false), so that it holds an fd only
 * while it must outlive the process.  A no-op when it is so already.
 * Returns 0, or -ENOMEM / a memfd errno (the bitmap is unchanged then).
 */
int vhm_bitmap_set_memfd(struct vhm_bitmap *bm, bool memfd);

/* Free a bitmap (unmapping and closing its memfd); NULL is allowed. */
void vhm_bitmap_free(struct vhm_bitmap *bm);

/* Number of pages the bitmap covers. */
uint64_t vhm_bitmap_npages(const struct vhm_bitmap *bm);

/* Set / clear one page.  Returns 0 or -ERANGE if page >= npages. */
int vhm_bitmap_set(struct vhm_bitmap *bm, uint64_t page);
int vhm_bitmap_clear(struct vhm_bitmap *bm, uint64_t page);

/* Whether page is set; false for page >= npages. */
bool vhm_bitmap_test(const struct vhm_bitmap *bm, uint64_t page);

/* Set / clear count pages starting at first (word at a time).  count 0 is a
 * no-op.  Returns 0 or -ERANGE if the range does not fit in the bitmap
 * (nothing is changed then). */
int vhm_bitmap_set_range(struct vhm_bitmap *bm, uint64_t first, uint64_t count);
int vhm_bitmap_clear_range(struct vhm_bitmap *bm, uint64_t first, uint64_t count);

/* Number of set pages (popcount over all words). */
uint64_t vhm_bitmap_count(const struct vhm_bitmap *bm);

/* Clear every page. */
void vhm_bitmap_clear_all(struct vhm_bitmap *bm);
/* Set every page set in from (a restart's other copy of the bitmap); -ERANGE when from has more pages. */
int vhm_bitmap_or(struct vhm_bitmap *into, const struct vhm_bitmap *from);

/* Change the number of pages.  Growing keeps every bit and adds clear pages
 * (memory hot-add); shrinking drops the pages at and past the new end.  A
 * memfd bitmap whose word count changes moves to a new memfd (vhm_bitmap_fd
 * changes; the old one is closed).  Returns 0, -ERANGE (npages >
 * VHM_BITMAP_MAX_PAGES) or -ENOMEM / a memfd errno (the bitmap is unchanged
 * then). */
int vhm_bitmap_resize(struct vhm_bitmap *bm, uint64_t npages);

/*
 * Iterator over dirty RANGES: maximal runs of consecutive set pages, in
 * increasing order.  Usage:
 *
 *     struct vhm_bitmap_iter it;
 *     uint64_t first, count;
 *     vhm_bitmap_iter_init(&it, bm, 0);
 *     while (vhm_bitmap_iter_next(&it, &first, &count))
 *             send_pages(first, count);   // may vhm_bitmap_clear_range() it
 *
 * The owner may change the bitmap between calls: pages before the position
 * the iterator has reached (the end of the range last returned) are not
 * looked at again; pages at or after it are read as they are at the next
 * call.  The bitmap must not be resized or freed while an iterator is in use
 * (re-initialise it after a resize).
 */
struct vhm_bitmap_iter {
        const struct vhm_bitmap *bm;
        uint64_t pos; /* next page to look at */
};

/* Start iterating at page start (start >= npages gives an empty iteration). */
void vhm_bitmap_iter_init(struct vhm_bitmap_iter *it, const struct vhm_bitmap *bm, uint64_t start);

/* Store the next dirty range in *first / *count (count >= 1) and return true,
 * or return false when there is none left. */
bool vhm_bitmap_iter_next(struct vhm_bitmap_iter *it, uint64_t *first, uint64_t *count);

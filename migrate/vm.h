/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The VM model: guest memory handed over by the memory owner (the VMM), and
 * the devices vhostmig runs for it.  vhostmig never allocates a real VM's
 * memory: it maps what it is given, shared, and translates guest-physical
 * addresses with bounds checks.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define VHM_VM_MAX_REGIONS 8
#define VHM_VM_NAME_MAX    64

struct vhm_vm;

/* A region as the memory owner describes it; the fd is duplicated, the caller keeps its own. */
struct vhm_region_spec {
        int fd;
        uint64_t guest_phys_addr;
        uint64_t size;
        uint64_t offset; /* into the file */
        /*
         * Where back-ends were told the region starts (SET_MEM_TABLE's
         * userspace_addr, the space of SET_VRING_ADDR's ring addresses): a
         * restart's, kept from the process that told them.  0: a new region,
         * given our mapping's address unless that range is another region's.
         */
        uint64_t uaddr;
};

/* A mapped region, as back-ends are told about it. */
struct vhm_region {
        int fd;
        uint64_t guest_phys_addr;
        uint64_t size;
        uint64_t offset;
        uint8_t *host;
        uint64_t uaddr; /* userspace_addr: our mapping when added, or the spec's (a restart's) */
};

/* Names: 1..63 characters of [A-Za-z0-9_.-]; -EINVAL otherwise. */
int vhm_vm_new(const char *name, struct vhm_vm **out);
/* Releases the memory mappings and fds; the VM's devices must be freed first. */
void vhm_vm_free(struct vhm_vm *vm);
const char *vhm_vm_name(const struct vhm_vm *vm);

/*
 * Maps a region.  Refused with a reason (vhm_vm_error): an fd that is not a
 * regular file or memfd, a memfd not sealed with F_SEAL_SHRINK (a back-end
 * could truncate it under us), a size or offset that does not fit the file,
 * page misalignment, a region ending above the guest-physical limit, overlap
 * with another region, more than 8 regions.
 *
 * Files that cannot be sealed (tmpfs, hugetlbfs, regular files) are accepted:
 * the guarded accessors below turn a truncation into an error of the access.
 */
int vhm_vm_add_region(struct vhm_vm *vm, const struct vhm_region_spec *spec);
int vhm_vm_remove_region(struct vhm_vm *vm, uint64_t guest_phys_addr);
const char *vhm_vm_error(const struct vhm_vm *vm);

unsigned vhm_vm_region_count(const struct vhm_vm *vm);
const struct vhm_region *vhm_vm_region(const struct vhm_vm *vm, unsigned i);
uint64_t vhm_vm_memory_size(const struct vhm_vm *vm); /* sum of region sizes */
uint64_t vhm_vm_top_gpa(const struct vhm_vm *vm);     /* end of the highest region */

/*
 * The highest guest-physical address a region may end at (default
 * VHM_VM_DEFAULT_GPA_LIMIT).  It bounds what dirty logging allocates: the
 * log and the migration bitmap cover every page below the top.  A limit below
 * the current top, not a multiple of 4 KiB or above what the log can cover is
 * refused (-ERANGE, -EINVAL).
 */
#define VHM_VM_DEFAULT_GPA_LIMIT (UINT64_C(1) << 40)
int vhm_vm_set_gpa_limit(struct vhm_vm *vm, uint64_t limit);
uint64_t vhm_vm_gpa_limit(const struct vhm_vm *vm);

/*
 * Reading and writing guest memory.  The rule: every reader (and writer) of
 * guest memory goes through vhm_vm_read / vhm_vm_write /
 * vhm_vm_load_u16_acquire, never through a pointer from vhm_vm_gpa_to_host:
 * a file that is not sealed may have been truncated by a back-end or the
 * memory owner, and a raw access would kill the daemon with SIGBUS.  These
 * fail instead, and only this VM notices.
 *
 * [gpa, gpa+len) must lie within one region (-EFAULT otherwise); memory that
 * is no longer backed fails with -EIO; both with a reason in vhm_vm_error().
 */
int vhm_vm_read(struct vhm_vm *vm, uint64_t gpa, void *buf, size_t len);
int vhm_vm_write(struct vhm_vm *vm, uint64_t gpa, const void *buf, size_t len);
/* An acquire load of the u16 at a 2-aligned gpa (a ring index), -EINVAL when misaligned. */
int vhm_vm_load_u16_acquire(struct vhm_vm *vm, uint64_t gpa, uint16_t *out);

/*
 * Reads [gpa, gpa+len) (within one region) in place: fn gets the host
 * address with the range guarded (vhm_guarded_call), so a hash or a zero
 * test needs no copy first.  fn must only compute: a fault cuts it short
 * and the call fails with -EIO and the reason of vhm_vm_read.
 */
int vhm_vm_visit(struct vhm_vm *vm, uint64_t gpa, size_t len, void (*fn)(const void *p, size_t len, void *arg),
                 void *arg);

/*
 * For the kernel's copies only: an iovec over [gpa, gpa+len) (within one
 * region) for sendmsg/writev/recvmsg/readv straight from or into guest
 * memory.  The kernel's copies are fault-safe: where memory is no longer
 * backed they fail with EFAULT (or stop short) instead of raising SIGBUS.
 * Never dereferenced in user space.  -EFAULT with a reason when outside.
 */
int vhm_vm_kernel_iov(struct vhm_vm *vm, uint64_t gpa, size_t len, struct iovec *out);
/*
 * After a kernel copy over [gpa, gpa+len) failed with EFAULT: -EIO and the
 * guarded path's reason ("guest memory is no longer backed") naming the
 * first page that is gone (-EFAULT and "bad address" if every page reads).
 */
int vhm_vm_kernel_io_failed(struct vhm_vm *vm, uint64_t gpa, size_t len, const char *what);

/*
 * Host pointer for [gpa, gpa+len) when it lies within one region, else NULL.
 * For bounds checks and for telling back-ends addresses (SET_VRING_ADDR):
 * never dereference it, see the rule above.
 */
void *vhm_vm_gpa_to_host(const struct vhm_vm *vm, uint64_t gpa, uint64_t len);
/* Same, as the front-end address a back-end is given (SET_VRING_ADDR); 0 when out of bounds. */
uint64_t vhm_vm_gpa_to_uaddr(const struct vhm_vm *vm, uint64_t gpa, uint64_t len);

/* Changes to the memory layout bump this, so devices know to resend their table. */
uint64_t vhm_vm_memory_generation(const struct vhm_vm *vm);

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

#define VHM_VM_MAX_REGIONS 8
#define VHM_VM_NAME_MAX 64

struct vhm_vm;

/* A region as the memory owner describes it; the fd is duplicated, the caller keeps its own. */
struct vhm_region_spec {
        int fd;
        uint64_t guest_phys_addr;
        uint64_t size;
        uint64_t offset;           /* into the file */
};

/* A mapped region, as back-ends are told about it (userspace_addr = our mapping). */
struct vhm_region {
        int fd;
        uint64_t guest_phys_addr;
        uint64_t size;
        uint64_t offset;
        uint8_t *host;
};

/* Names: 1..63 characters of [A-Za-z0-9_.-]; -EINVAL otherwise. */
int vhm_vm_new(const char *name, struct vhm_vm **out);
/* Releases the memory mappings and fds; the VM's devices must be freed first. */
void vhm_vm_free(struct vhm_vm *vm);
const char *vhm_vm_name(const struct vhm_vm *vm);

/*
 * Maps a region.  Refused with a reason (vhm_vm_error): an fd that is not a
 * regular file or memfd, a size or offset that does not fit the file, page
 * misalignment, overlap with another region, more than 8 regions.
 */
int vhm_vm_add_region(struct vhm_vm *vm, const struct vhm_region_spec *spec);
int vhm_vm_remove_region(struct vhm_vm *vm, uint64_t guest_phys_addr);
const char *vhm_vm_error(const struct vhm_vm *vm);

unsigned vhm_vm_region_count(const struct vhm_vm *vm);
const struct vhm_region *vhm_vm_region(const struct vhm_vm *vm, unsigned i);
uint64_t vhm_vm_memory_size(const struct vhm_vm *vm);   /* sum of region sizes */
uint64_t vhm_vm_top_gpa(const struct vhm_vm *vm);       /* end of the highest region */

/* Host pointer for [gpa, gpa+len) when it lies within one region, else NULL. */
void *vhm_vm_gpa_to_host(const struct vhm_vm *vm, uint64_t gpa, uint64_t len);
/* Same, as the front-end address a back-end is given (SET_VRING_ADDR); 0 when out of bounds. */
uint64_t vhm_vm_gpa_to_uaddr(const struct vhm_vm *vm, uint64_t gpa, uint64_t len);

/* Changes to the memory layout bump this, so devices know to resend their table. */
uint64_t vhm_vm_memory_generation(const struct vhm_vm *vm);

/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log/dirty-log.h"
#include "migrate/guest-access.h"
#include "migrate/vm.h"

#define PAGE_SIZE 4096u

struct vhm_vm {
        char name[VHM_VM_NAME_MAX];
        struct vhm_region regions[VHM_VM_MAX_REGIONS];
        unsigned nregions;
        uint64_t generation;
        uint64_t gpa_limit;
        char error[256];
};

__attribute__((format(printf, 3, 4))) static int vm_fail(struct vhm_vm *vm, int err, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(vm->error, sizeof(vm->error), fmt, ap);
        va_end(ap);
        return err;
}

static bool valid_name(const char *name) {
        size_t len = name ? strlen(name) : 0;
        if (len == 0 || len >= VHM_VM_NAME_MAX)
                return false;
        for (size_t i = 0; i < len; i++) {
                char c = name[i];
                bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                          c == '-' || c == '.';
                if (!ok)
                        return false;
        }
        return true;
}

int vhm_vm_new(const char *name, struct vhm_vm **out) {
        if (!valid_name(name))
                return -EINVAL;
        struct vhm_vm *vm = calloc(1, sizeof(*vm));
        if (!vm)
                return -ENOMEM;
        snprintf(vm->name, sizeof(vm->name), "%s", name);
        vm->gpa_limit = VHM_VM_DEFAULT_GPA_LIMIT;
        *out = vm;
        return 0;
}

static void unmap_region(struct vhm_region *r) {
        munmap(r->host, r->size);
        close(r->fd);
}

void vhm_vm_free(struct vhm_vm *vm) {
        if (!vm)
                return;
        for (unsigned i = 0; i < vm->nregions; i++)
                unmap_region(&vm->regions[i]);
        free(vm);
}

const char *vhm_vm_name(const struct vhm_vm *vm) {
        return vm->name;
}
const char *vhm_vm_error(const struct vhm_vm *vm) {
        return vm->error;
}
unsigned vhm_vm_region_count(const struct vhm_vm *vm) {
        return vm->nregions;
}
uint64_t vhm_vm_memory_generation(const struct vhm_vm *vm) {
        return vm->generation;
}

const struct vhm_region *vhm_vm_region(const struct vhm_vm *vm, unsigned i) {
        return i < vm->nregions ? &vm->regions[i] : NULL;
}

uint64_t vhm_vm_memory_size(const struct vhm_vm *vm) {
        uint64_t total = 0;
        for (unsigned i = 0; i < vm->nregions; i++)
                total += vm->regions[i].size;
        return total;
}

uint64_t vhm_vm_top_gpa(const struct vhm_vm *vm) {
        uint64_t top = 0;
        for (unsigned i = 0; i < vm->nregions; i++) {
                uint64_t end = vm->regions[i].guest_phys_addr + vm->regions[i].size;
                if (end > top)
                        top = end;
        }
        return top;
}

uint64_t vhm_vm_gpa_limit(const struct vhm_vm *vm) {
        return vm->gpa_limit;
}

int vhm_vm_set_gpa_limit(struct vhm_vm *vm, uint64_t limit) {
        if (limit == 0 || limit % PAGE_SIZE || limit > VHM_LOG_MAX_TOP_GPA)
                return vm_fail(vm, -EINVAL,
                               "guest-physical limit 0x%" PRIx64 ": must be a non-zero multiple of"
                               " 4 KiB up to 0x%" PRIx64,
                               limit, VHM_LOG_MAX_TOP_GPA);
        if (vhm_vm_top_gpa(vm) > limit)
                return vm_fail(vm, -ERANGE, "guest-physical limit 0x%" PRIx64 ": memory already ends at 0x%" PRIx64,
                               limit, vhm_vm_top_gpa(vm));
        vm->gpa_limit = limit;
        return 0;
}

/* A memfd's /proc/self/fd link reads "/memfd:NAME (deleted)". */
static bool is_memfd(int fd) {
        char path[64], target[16];
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
        ssize_t n = readlink(path, target, sizeof(target));
        return n >= 7 && memcmp(target, "/memfd:", 7) == 0;
}

/*
 * A memfd can be made unshrinkable, and then no back-end can truncate it
 * under our mapping: we insist on it.  Other files cannot be sealed; their
 * reads are guarded instead (vhm_vm_read).
 */
static int check_sealed(struct vhm_vm *vm, const struct vhm_region_spec *s) {
        if (!is_memfd(s->fd))
                return 0;
        int seals = fcntl(s->fd, F_GET_SEALS);
        if (seals >= 0 && (seals & F_SEAL_SHRINK))
                return 0;
        return vm_fail(vm, -EPERM,
                       "region at 0x%" PRIx64 ": the memfd is not sealed against shrinking,"
                       " so a back-end could truncate it; create it with MFD_ALLOW_SEALING and add"
                       " F_SEAL_SHRINK (fcntl F_ADD_SEALS)",
                       s->guest_phys_addr);
}

/* What the memory owner gave must be mappable memory that really holds the region. */
static bool uaddr_taken(const struct vhm_vm *vm, uint64_t uaddr, uint64_t size) {
        for (unsigned i = 0; i < vm->nregions; i++) {
                const struct vhm_region *r = &vm->regions[i];
                if (uaddr < r->uaddr + r->size && r->uaddr < uaddr + size)
                        return true;
        }
        return false;
}

static int check_spec(struct vhm_vm *vm, const struct vhm_region_spec *s) {
        struct stat st;
        uint64_t gpa = s->guest_phys_addr;

        if (vm->nregions >= VHM_VM_MAX_REGIONS)
                return vm_fail(vm, -E2BIG, "region at 0x%" PRIx64 ": the VM already has %u regions", gpa,
                               VHM_VM_MAX_REGIONS);
        if (s->fd < 0 || fstat(s->fd, &st) < 0)
                return vm_fail(vm, -EBADF, "region at 0x%" PRIx64 ": invalid fd", gpa);
        if (!S_ISREG(st.st_mode))
                return vm_fail(vm, -EINVAL,
                               "region at 0x%" PRIx64 ": fd is not a memory file (memfd, hugetlbfs or tmpfs)", gpa);
        if (s->size == 0 || (s->size | gpa | s->offset) % PAGE_SIZE)
                return vm_fail(vm, -EINVAL,
                               "region at 0x%" PRIx64 ": size 0x%" PRIx64 " and offset 0x%" PRIx64
                               " must be non-zero multiples of 4 KiB",
                               gpa, s->size, s->offset);
        if (gpa + s->size < gpa || s->offset + s->size < s->offset)
                return vm_fail(vm, -EINVAL, "region at 0x%" PRIx64 ": wraps around", gpa);
        if (gpa + s->size > vm->gpa_limit)
                return vm_fail(vm, -ERANGE,
                               "region at 0x%" PRIx64 ": ends at 0x%" PRIx64 ", above the VM's"
                               " guest-physical limit of 0x%" PRIx64,
                               gpa, gpa + s->size, vm->gpa_limit);
        if (s->offset + s->size > (uint64_t) st.st_size)
                return vm_fail(vm, -EINVAL,
                               "region at 0x%" PRIx64 ": offset 0x%" PRIx64 " + size 0x%" PRIx64
                               " exceeds the file (0x%" PRIx64 " bytes)",
                               gpa, s->offset, s->size, (uint64_t) st.st_size);
        for (unsigned i = 0; i < vm->nregions; i++) {
                const struct vhm_region *r = &vm->regions[i];
                if (gpa < r->guest_phys_addr + r->size && r->guest_phys_addr < gpa + s->size)
                        return vm_fail(vm, -EEXIST, "region at 0x%" PRIx64 " overlaps the region at 0x%" PRIx64, gpa,
                                       r->guest_phys_addr);
        }
        if (s->uaddr && (s->uaddr % PAGE_SIZE || s->uaddr + s->size < s->uaddr || uaddr_taken(vm, s->uaddr, s->size)))
                return vm_fail(vm, -EINVAL,
                               "region at 0x%" PRIx64 ": back-end address 0x%" PRIx64
                               " is unaligned, wraps around or overlaps another region's",
                               gpa, s->uaddr);
        return check_sealed(vm, s);
}

/*
 * A new region's userspace_addr: our mapping, unless a restart left another
 * region's back-end address range there (the back-ends still translate ring
 * addresses by it); then the first free 2 MiB-aligned range above them all.
 */
static uint64_t new_uaddr(const struct vhm_vm *vm, uint64_t host, uint64_t size) {
        if (!uaddr_taken(vm, host, size))
                return host;
        uint64_t top = 0;
        for (unsigned i = 0; i < vm->nregions; i++)
                top = vm->regions[i].uaddr + vm->regions[i].size > top ? vm->regions[i].uaddr + vm->regions[i].size
                                                                       : top;
        return (top + (UINT64_C(2) << 20) - 1) & ~((UINT64_C(2) << 20) - 1);
}

int vhm_vm_add_region(struct vhm_vm *vm, const struct vhm_region_spec *spec) {
        int r = check_spec(vm, spec);
        if (r < 0)
                return r;

        int fd = fcntl(spec->fd, F_DUPFD_CLOEXEC, 3);
        if (fd < 0)
                return vm_fail(vm, -errno, "region at 0x%" PRIx64 ": dup: %m", spec->guest_phys_addr);
        void *host = mmap(NULL, spec->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t) spec->offset);
        if (host == MAP_FAILED) {
                r = -errno;
                close(fd);
                return vm_fail(vm, r, "region at 0x%" PRIx64 ": mmap: %s", spec->guest_phys_addr, strerror(-r));
        }
        vm->regions[vm->nregions++] = (struct vhm_region){
                .fd = fd,
                .guest_phys_addr = spec->guest_phys_addr,
                .size = spec->size,
                .offset = spec->offset,
                .host = host,
                .uaddr = spec->uaddr ? spec->uaddr : new_uaddr(vm, (uint64_t) (uintptr_t) host, spec->size),
        };
        vm->generation++;
        return 0;
}

int vhm_vm_remove_region(struct vhm_vm *vm, uint64_t guest_phys_addr) {
        for (unsigned i = 0; i < vm->nregions; i++) {
                if (vm->regions[i].guest_phys_addr != guest_phys_addr)
                        continue;
                unmap_region(&vm->regions[i]);
                memmove(&vm->regions[i], &vm->regions[i + 1], (vm->nregions - i - 1) * sizeof(vm->regions[0]));
                vm->nregions--;
                vm->generation++;
                return 0;
        }
        return vm_fail(vm, -ENOENT, "no region starts at 0x%" PRIx64, guest_phys_addr);
}

static const struct vhm_region *find_region(const struct vhm_vm *vm, uint64_t gpa, uint64_t len) {
        for (unsigned i = 0; i < vm->nregions; i++) {
                const struct vhm_region *r = &vm->regions[i];
                if (gpa >= r->guest_phys_addr && len <= r->size && gpa - r->guest_phys_addr <= r->size - len)
                        return r;
        }
        return NULL;
}

void *vhm_vm_gpa_to_host(const struct vhm_vm *vm, uint64_t gpa, uint64_t len) {
        const struct vhm_region *r = find_region(vm, gpa, len);
        return r ? r->host + (gpa - r->guest_phys_addr) : NULL;
}

uint64_t vhm_vm_gpa_to_uaddr(const struct vhm_vm *vm, uint64_t gpa, uint64_t len) {
        const struct vhm_region *r = find_region(vm, gpa, len);
        return r ? r->uaddr + (gpa - r->guest_phys_addr) : 0;
}

/* ---- guarded access -------------------------------------------------------- */

static uint8_t *host_or_fail(struct vhm_vm *vm, uint64_t gpa, size_t len, const char *what) {
        uint8_t *p = vhm_vm_gpa_to_host(vm, gpa, len);
        if (!p)
                vm_fail(vm, -EFAULT, "%s of %zu bytes at 0x%" PRIx64 ": outside guest memory", what, len, gpa);
        return p;
}

static int access_failed(struct vhm_vm *vm, int r, uint64_t gpa, const char *what) {
        const struct vhm_region *reg = find_region(vm, gpa, 1);
        if (r == -EIO)
                return vm_fail(vm, r,
                               "region at 0x%" PRIx64 ": %s at 0x%" PRIx64 ": guest memory is no longer"
                               " backed (the file was truncated?)",
                               reg->guest_phys_addr, what, gpa);
        return vm_fail(vm, r, "%s at 0x%" PRIx64 ": %s", what, gpa, strerror(-r));
}

int vhm_vm_read(struct vhm_vm *vm, uint64_t gpa, void *buf, size_t len) {
        const uint8_t *p = host_or_fail(vm, gpa, len, "read");
        if (!p)
                return -EFAULT;
        int r = vhm_guarded_read(buf, p, len);
        return r < 0 ? access_failed(vm, r, gpa, "read") : 0;
}

int vhm_vm_write(struct vhm_vm *vm, uint64_t gpa, const void *buf, size_t len) {
        uint8_t *p = host_or_fail(vm, gpa, len, "write");
        if (!p)
                return -EFAULT;
        int r = vhm_guarded_write(p, buf, len);
        return r < 0 ? access_failed(vm, r, gpa, "write") : 0;
}

int vhm_vm_load_u16_acquire(struct vhm_vm *vm, uint64_t gpa, uint16_t *out) {
        if (gpa % sizeof(uint16_t))
                return vm_fail(vm, -EINVAL, "load of a u16 at 0x%" PRIx64 ": misaligned", gpa);
        const uint8_t *p = host_or_fail(vm, gpa, sizeof(*out), "load");
        if (!p)
                return -EFAULT;
        int r = vhm_guarded_load_u16_acquire((const volatile uint16_t *) (const void *) p, out);
        return r < 0 ? access_failed(vm, r, gpa, "load") : 0;
}

int vhm_vm_visit(struct vhm_vm *vm, uint64_t gpa, size_t len, void (*fn)(const void *p, size_t len, void *arg),
                 void *arg) {
        const uint8_t *p = host_or_fail(vm, gpa, len, "read");
        if (!p)
                return -EFAULT;
        int r = vhm_guarded_call(p, len, fn, arg);
        return r < 0 ? access_failed(vm, r, gpa, "read") : 0;
}

int vhm_vm_kernel_iov(struct vhm_vm *vm, uint64_t gpa, size_t len, struct iovec *out) {
        uint8_t *p = host_or_fail(vm, gpa, len, "copy");
        if (!p)
                return -EFAULT;
        *out = (struct iovec){ p, len };
        return 0;
}

static void touch(const void *p, size_t len, void *arg) {
        (void) len;
        *(uint8_t *) arg = *(const volatile uint8_t *) p;
}

int vhm_vm_kernel_io_failed(struct vhm_vm *vm, uint64_t gpa, size_t len, const char *what) {
        /* The kernel does not say where: the first page a guarded read finds gone. */
        for (uint64_t off = 0; off < len; off += PAGE_SIZE) {
                uint8_t byte;
                const uint8_t *p = host_or_fail(vm, gpa + off, 1, what);
                if (!p)
                        return -EFAULT;
                if (vhm_guarded_call(p, 1, touch, &byte) < 0)
                        return access_failed(vm, -EIO, gpa + off, what);
        }
        return vm_fail(vm, -EFAULT, "%s of %zu bytes at 0x%" PRIx64 ": bad address", what, len, gpa);
}

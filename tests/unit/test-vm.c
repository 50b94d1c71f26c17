/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The VM model: what memory it accepts, how it translates, and that it leaks nothing. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "migrate/vm.h"
#include "tests/common/fd-count.h"

static int memfd_of(uint64_t size) {
        int fd = memfd_create("vm-test", MFD_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, (off_t) size), 0);
        return fd;
}

static void names(void **state) {
        (void) state;
        struct vhm_vm *vm;
        assert_int_equal(vhm_vm_new("", &vm), -EINVAL);
        assert_int_equal(vhm_vm_new("a/b", &vm), -EINVAL);
        assert_int_equal(vhm_vm_new("white space", &vm), -EINVAL);
        char longname[80];
        memset(longname, 'x', sizeof(longname) - 1);
        longname[79] = 0;
        assert_int_equal(vhm_vm_new(longname, &vm), -EINVAL);
        assert_int_equal(vhm_vm_new("guest-1.prod_a", &vm), 0);
        assert_string_equal(vhm_vm_name(vm), "guest-1.prod_a");
        vhm_vm_free(vm);
}

static void regions_and_translation(void **state) {
        (void) state;
        int before = count_open_fds();
        struct vhm_vm *vm;
        assert_int_equal(vhm_vm_new("t", &vm), 0);
        int fd = memfd_of(4 << 20);
        /* Two regions from one file: [0, 1M) at gpa 0, [2M, 4M) of the file at gpa 4G. */
        assert_int_equal(vhm_vm_add_region(vm, &(struct vhm_region_spec) { fd, 0, 1 << 20, 0 }), 0);
        assert_int_equal(vhm_vm_add_region(vm, &(struct vhm_region_spec) { fd, 1ull << 32, 2 << 20, 2 << 20 }), 0);
        close(fd); /* the VM keeps its own */
        assert_int_equal(vhm_vm_region_count(vm), 2);
        assert_int_equal(vhm_vm_memory_size(vm), 3 << 20);
        assert_int_equal(vhm_vm_top_gpa(vm), (1ull << 32) + (2 << 20));

        uint8_t *p = vhm_vm_gpa_to_host(vm, (1ull << 32) + 16, 8);
        assert_non_null(p);
        memcpy(p, "vhostmig", 8);
        assert_memory_equal(vhm_vm_region(vm, 1)->host + 16, "vhostmig", 8);
        assert_null(vhm_vm_gpa_to_host(vm, (1 << 20) - 4, 8));      /* crosses the end of region 0 */
        assert_null(vhm_vm_gpa_to_host(vm, 1 << 20, 1));            /* hole */
        assert_null(vhm_vm_gpa_to_host(vm, UINT64_MAX - 3, 8));     /* wrap */
        assert_null(vhm_vm_gpa_to_host(vm, 0, (1 << 20) + 1));
        assert_non_null(vhm_vm_gpa_to_host(vm, 0, 1 << 20));
        assert_int_equal(vhm_vm_gpa_to_uaddr(vm, 0x1000, 8), (uint64_t) (uintptr_t) vhm_vm_region(vm, 0)->host + 0x1000);

        uint64_t gen = vhm_vm_memory_generation(vm);
        assert_int_equal(vhm_vm_remove_region(vm, 0), 0);
        assert_int_equal(vhm_vm_remove_region(vm, 0), -ENOENT);
        assert_true(vhm_vm_memory_generation(vm) > gen);
        assert_int_equal(vhm_vm_region_count(vm), 1);
        vhm_vm_free(vm);
        assert_int_equal(count_open_fds(), before);
}

static void bad_memory_is_refused_with_a_reason(void **state) {
        (void) state;
        int before = count_open_fds();
        struct vhm_vm *vm;
        assert_int_equal(vhm_vm_new("t", &vm), 0);
        int fd = memfd_of(1 << 20);
        int efd = eventfd(0, EFD_CLOEXEC);

        assert_int_equal(vhm_vm_add_region(vm, &(struct vhm_region_spec) { -1, 0, 4096, 0 }), -EBADF);
        assert_int_equal(vhm_vm_add_region(vm, &(struct vhm_region_spec) { efd, 0, 4096, 0 }), -EINVAL);
        assert_non_null(strstr(vhm_vm_error(vm), "not a memory file"));
        assert_int_equal(vhm_vm_add_region(vm, &(struct vhm_region_spec) { fd, 0, 2 << 20, 0 }), -EINVAL);
        assert_non_null(strstr(vhm_vm_error(vm), "exceeds the file"));
        assert_int_equal(vhm_vm_add_region(vm, &(struct vhm_region_spec) { fd, 0, 4096, 1 << 20 }), -EINVAL);
        assert_int_equal(vhm_vm_add_region(vm, &(struct vhm_region_spec) { fd, 0, 100, 0 }), -EINVAL);
        assert_int_equal(vhm_vm_add_region(vm, &(struct vhm_region_spec) { fd, 0, 0, 0 }), -EINVAL);
        assert_int_equal(vhm_vm_add_region(vm, &(struct vhm_region_spec) { fd, UINT64_MAX - 4095, 8192, 0 }), -EINVAL);
        assert_int_equal(vhm_vm_add_region(vm, &(struct vhm_region_spec) { fd, 0, 1 << 20, 0 }), 0);
        assert_int_equal(vhm_vm_add_region(vm, &(struct vhm_region_spec) { fd, 0x80000, 4096, 0 }), -EEXIST);
        assert_non_null(strstr(vhm_vm_error(vm), "overlaps"));
        for (unsigned i = 1; i < VHM_VM_MAX_REGIONS; i++)
                assert_int_equal(vhm_vm_add_region(vm, &(struct vhm_region_spec) { fd, (uint64_t) i << 30, 4096, 0 }), 0);
        assert_int_equal(vhm_vm_add_region(vm, &(struct vhm_region_spec) { fd, 100ull << 30, 4096, 0 }), -E2BIG);
        assert_int_equal(vhm_vm_region_count(vm), VHM_VM_MAX_REGIONS);
        close(fd);
        close(efd);
        vhm_vm_free(vm);
        assert_int_equal(count_open_fds(), before);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(names),
                cmocka_unit_test(regions_and_translation),
                cmocka_unit_test(bad_memory_is_refused_with_a_reason),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

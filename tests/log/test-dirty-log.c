/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests for log/dirty-log.{h,c}: sizing, sealing, fds and mappings. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "log/dirty-log.h"
#include "log-test-util.h"

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)
#define GiB (UINT64_C(1) << 30)

static void check_size(uint64_t top, uint64_t want_pages, uint64_t want_bytes) {
        struct vhm_log *log = NULL;
        struct stat st;

        assert_int_equal(vhm_log_new(top, &log), 0);
        assert_non_null(log);
        assert_int_equal(vhm_log_npages(log), want_pages);
        assert_int_equal(vhm_log_size_bytes(log), want_bytes);
        /* what a backend maps is exactly mmap_size = size_bytes */
        assert_int_equal(fstat(vhm_log_fd(log), &st), 0);
        assert_int_equal((uint64_t) st.st_size, want_bytes);
        /* the page holding the last byte below top is inside the log */
        assert_true((top - 1) / 4096 < vhm_log_npages(log));
        assert_int_equal(vhm_log_mark_page(log, (top - 1) / 4096), 0);
        vhm_log_free(log);
}

static void test_sizing(void **state) {
        (void) state;
        /* smallest: one page, one word */
        check_size(1, 1, 8);
        check_size(4096, 1, 8);
        /* top not a multiple of 4 KiB */
        check_size(4097, 2, 8);
        check_size(GiB + 100, GiB / 4096 + 1, (GiB / 4096 / 64 + 1) * 8);
        /* exactly at a word boundary (64 pages = 256 KiB), and just past it */
        check_size(64 * 4096, 64, 8);
        check_size(64 * 4096 - 1, 64, 8);
        check_size(64 * 4096 + 1, 65, 16);
        check_size(128 * 4096, 128, 16);
        /* 1 GiB: 262144 pages, 4096 words, 32 KiB; 1 TiB: 32 MiB */
        check_size(GiB, GiB / 4096, 32 * KiB);
        check_size(1024 * GiB, 1024 * GiB / 4096, 32 * MiB);
}

static void test_new_invalid(void **state) {
        struct vhm_log *log = (struct vhm_log *) (uintptr_t) 1; /* must be reset */

        (void) state;
        assert_int_equal(vhm_log_new(0, &log), -EINVAL);
        assert_null(log);
        assert_int_equal(vhm_log_new(VHM_LOG_MAX_TOP_GPA + 1, &log), -ERANGE);
        assert_null(log);
        assert_int_equal(vhm_log_new(UINT64_MAX, &log), -ERANGE);
        assert_int_equal(vhm_log_new(4096, NULL), -EINVAL);
        vhm_log_free(NULL);
}

static void test_required_top(void **state) {
        const struct vhm_log_extent regions[] = {
                { 0, 3 * GiB },           /* low memory */
                { 4 * GiB, 2 * GiB + 5 }, /* high memory, end not page aligned */
        };
        /* one ring inside memory, one whose log range ends past the last region */
        const struct vhm_log_extent rings[] = {
                { 0x1000, 4 + 8 * 256 + 2 },
                { 7 * GiB + 0x7f0, 4 + 8 * 1024 + 2 },
        };
        const struct vhm_log_extent zero[] = { { 0x1000, 0 } };
        const struct vhm_log_extent wrap[] = { { UINT64_MAX - 10, 100 } };
        const struct vhm_log_extent at_end[] = { { UINT64_MAX - 4095, 4096 } };
        struct vhm_log *log;
        uint64_t top = 0;

        (void) state;
        /* regions only */
        assert_int_equal(vhm_log_required_top(regions, 2, NULL, 0, &top), 0);
        assert_int_equal(top, 6 * GiB + 5);
        /* a ring inside memory changes nothing */
        assert_int_equal(vhm_log_required_top(regions, 2, rings, 1, &top), 0);
        assert_int_equal(top, 6 * GiB + 5);
        /* the used ring past the last region decides */
        assert_int_equal(vhm_log_required_top(regions, 2, rings, 2, &top), 0);
        assert_int_equal(top, 7 * GiB + 0x7f0 + 4 + 8 * 1024 + 2);
        /* the log sized from it covers the ring's last byte */
        assert_int_equal(vhm_log_new(top, &log), 0);
        assert_true((rings[1].gpa + rings[1].size - 1) / 4096 < vhm_log_npages(log));
        assert_int_equal(vhm_log_mark_page(log, (rings[1].gpa + rings[1].size - 1) / 4096), 0);
        /* ... whereas a log sized from the regions alone would not */
        assert_true((rings[1].gpa + rings[1].size - 1) / 4096 >= (6 * GiB + 5 + 4095) / 4096);
        vhm_log_free(log);

        /* rings only, order does not matter */
        assert_int_equal(vhm_log_required_top(NULL, 0, rings, 2, &top), 0);
        assert_int_equal(top, 7 * GiB + 0x7f0 + 4 + 8 * 1024 + 2);
        assert_int_equal(vhm_log_required_top(&regions[1], 1, &regions[0], 1, &top), 0);
        assert_int_equal(top, 6 * GiB + 5);

        /* invalid */
        assert_int_equal(vhm_log_required_top(NULL, 0, NULL, 0, &top), -EINVAL);
        assert_int_equal(vhm_log_required_top(regions, 2, NULL, 0, NULL), -EINVAL);
        assert_int_equal(vhm_log_required_top(NULL, 1, NULL, 0, &top), -EINVAL);
        assert_int_equal(vhm_log_required_top(regions, 2, zero, 1, &top), -EINVAL);
        assert_int_equal(vhm_log_required_top(wrap, 1, NULL, 0, &top), -EOVERFLOW);
        assert_int_equal(vhm_log_required_top(regions, 2, at_end, 1, &top), -EOVERFLOW);
}

static void test_seals(void **state) {
        struct vhm_log *log;
        char path[64], target[256];
        uint64_t size;
        ssize_t n;
        int fd, seals, fdflags;
        uint8_t byte = 0;

        (void) state;
        assert_int_equal(vhm_log_new(16 * GiB, &log), 0);
        fd = vhm_log_fd(log);
        size = vhm_log_size_bytes(log);
        assert_true(fd >= 0);

        /* it is our memfd */
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
        n = readlink(path, target, sizeof(target) - 1);
        assert_true(n > 0);
        target[n] = '\0';
        assert_non_null(strstr(target, "memfd:vhostmig-dirty-log"));

        /* close-on-exec */
        fdflags = fcntl(fd, F_GETFD);
        assert_true(fdflags >= 0);
        assert_true(fdflags & FD_CLOEXEC);

        /* exactly grow + shrink + seal: no write seal, backends must write */
        seals = fcntl(fd, F_GET_SEALS);
        assert_int_equal(seals, F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL);

        /* the seals hold */
        errno = 0;
        assert_int_equal(ftruncate(fd, (off_t) size * 2), -1);
        assert_int_equal(errno, EPERM);
        errno = 0;
        assert_int_equal(ftruncate(fd, (off_t) size / 2), -1);
        assert_int_equal(errno, EPERM);
        errno = 0;
        assert_int_equal(ftruncate(fd, 0), -1);
        assert_int_equal(errno, EPERM);
        errno = 0;
        assert_int_equal(pwrite(fd, &byte, 1, (off_t) size), -1);
        assert_int_equal(errno, EPERM);
        errno = 0;
        assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE), -1);
        assert_int_equal(errno, EPERM);
        assert_int_equal(fcntl(fd, F_GET_SEALS), F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL);

        /* writing inside is allowed (that is what backends do) */
        assert_int_equal(pwrite(fd, &byte, 1, (off_t) size - 1), 1);
        vhm_log_free(log);
}

static void test_backend_view(void **state) {
        struct vhm_log *log;
        uint8_t *b;
        uint64_t size;

        (void) state;
        assert_int_equal(vhm_log_new(65 * 4096, &log), 0); /* 65 pages, 2 words */
        size = vhm_log_size_bytes(log);
        assert_int_equal(size, 16);
        b = backend_map(vhm_log_fd(log), size);
        assert_non_null(b);

        /* page p = byte p / 8, bit p % 8 */
        assert_int_equal(vhm_log_mark_page(log, 0), 0);
        assert_int_equal(vhm_log_mark_page(log, 9), 0);
        assert_int_equal(vhm_log_mark_page(log, 64), 0);
        assert_int_equal(b[0], 0x01);
        assert_int_equal(b[1], 0x02);
        assert_int_equal(b[8], 0x01);
        /* pages past top but inside the last word exist in memory */
        assert_int_equal(vhm_log_mark_page(log, 127), 0);
        assert_int_equal(b[15], 0x80);
        assert_int_equal(vhm_log_mark_page(log, 128), -ERANGE);
        assert_int_equal(vhm_log_mark_page(log, UINT64_MAX), -ERANGE);

        memset(b, 0, size);
        assert_int_equal(vhm_log_mark_range(log, 3, 70), 0); /* pages 3..72 */
        assert_int_equal(b[0], 0xf8);
        for (int i = 1; i < 9; i++)
                assert_int_equal(b[i], 0xff);
        assert_int_equal(b[9], 0x01);
        assert_int_equal(b[10], 0x00);
        assert_int_equal(vhm_log_mark_range(log, 100, 29), -ERANGE);
        assert_int_equal(vhm_log_mark_range(log, 1, UINT64_MAX), -ERANGE);
        assert_int_equal(vhm_log_mark_range(log, 100, 28), 0);
        assert_int_equal(b[15], 0xff);
        assert_int_equal(vhm_log_mark_range(log, 5, 0), 0);

        munmap(b, size);
        vhm_log_free(log);
}

static void test_no_leaks(void **state) {
        const uint64_t tops[] = { 1, 4097, 64 * 4096, GiB, 64 * GiB + 12345 };
        int fds0, maps0, logmaps0;

        (void) state;
        fds0 = count_open_fds();
        maps0 = count_maps(NULL);
        logmaps0 = count_maps("vhostmig-dirty-log");
        assert_true(fds0 > 0);
        assert_true(maps0 > 0);
        assert_int_equal(logmaps0, 0);

        for (int round = 0; round < 50; round++) {
                struct vhm_log *logs[sizeof(tops) / sizeof(tops[0])];

                for (size_t i = 0; i < sizeof(tops) / sizeof(tops[0]); i++)
                        assert_int_equal(vhm_log_new(tops[i], &logs[i]), 0);
                if (round == 0) {
                        assert_int_equal(count_open_fds(), fds0 + (int) (sizeof(tops) / sizeof(tops[0])));
                        assert_int_equal(count_maps("vhostmig-dirty-log"), (int) (sizeof(tops) / sizeof(tops[0])));
                }
                for (size_t i = 0; i < sizeof(tops) / sizeof(tops[0]); i++)
                        vhm_log_free(logs[i]);
        }
        assert_int_equal(count_open_fds(), fds0);
        assert_int_equal(count_maps("vhostmig-dirty-log"), 0);
        assert_int_equal(count_maps(NULL), maps0);
}

/* The failure path after memfd_create: mmap refused by RLIMIT_AS. */
static void test_no_leak_on_failure(void **state) {
        struct rlimit old, lim;
        struct vhm_log *log = NULL;
        int fds0 = count_open_fds(), r;

        (void) state;
#ifdef UNDER_ASAN
        skip(); /* ASan reserves terabytes of address space */
#endif
        assert_int_equal(getrlimit(RLIMIT_AS, &old), 0);
        lim = old;
        lim.rlim_cur = 1024 * MiB; /* far below the 16 GiB mapping asked for below */
        if (old.rlim_cur != RLIM_INFINITY && old.rlim_cur < lim.rlim_cur)
                skip();
        assert_int_equal(setrlimit(RLIMIT_AS, &lim), 0);
        /* top 2^49 (512 TiB) -> 16 GiB log: ftruncate works (sparse), mmap fails */
        r = vhm_log_new(UINT64_C(1) << 49, &log);
        assert_int_equal(setrlimit(RLIMIT_AS, &old), 0);
        assert_int_equal(r, -ENOMEM);
        assert_null(log);
        assert_int_equal(count_open_fds(), fds0);
        assert_int_equal(count_maps("vhostmig-dirty-log"), 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_sizing),
                cmocka_unit_test(test_new_invalid),
                cmocka_unit_test(test_required_top),
                cmocka_unit_test(test_seals),
                cmocka_unit_test(test_backend_view),
                cmocka_unit_test(test_no_leaks),
                cmocka_unit_test(test_no_leak_on_failure),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}

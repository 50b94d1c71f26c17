/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests for log/bitmap.{h,c}: the migration bitmap. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "log/bitmap.h"
#include "log-test-util.h"
#include "tests/common/fd-count.h"

/* Compare a bitmap with a reference bool array, page by page. */
static void assert_matches(const struct vhm_bitmap *bm, const bool *ref, uint64_t npages) {
        uint64_t n = 0;

        assert_int_equal(vhm_bitmap_npages(bm), npages);
        for (uint64_t p = 0; p < npages; p++) {
                if (vhm_bitmap_test(bm, p) != ref[p])
                        fail_msg("page %llu: bitmap %d, reference %d", (unsigned long long) p, vhm_bitmap_test(bm, p),
                                 ref[p]);
                n += ref[p];
        }
        assert_int_equal(vhm_bitmap_count(bm), n);
        /* nothing past the end */
        assert_false(vhm_bitmap_test(bm, npages));
        assert_false(vhm_bitmap_test(bm, npages + 63));
}

static void test_new_free(void **state) {
        struct vhm_bitmap *bm = NULL;

        (void) state;
        assert_int_equal(vhm_bitmap_new(0, &bm), 0);
        assert_non_null(bm);
        assert_int_equal(vhm_bitmap_npages(bm), 0);
        assert_int_equal(vhm_bitmap_count(bm), 0);
        assert_int_equal(vhm_bitmap_set(bm, 0), -ERANGE);
        vhm_bitmap_free(bm);

        assert_int_equal(vhm_bitmap_new(VHM_BITMAP_MAX_PAGES + 1, &bm), -ERANGE);
        assert_null(bm);
        assert_int_equal(vhm_bitmap_new(1, NULL), -EINVAL);
        vhm_bitmap_free(NULL);

        assert_int_equal(vhm_bitmap_new(1, &bm), 0);
        assert_int_equal(vhm_bitmap_npages(bm), 1);
        vhm_bitmap_free(bm);
}

static void test_set_test_clear(void **state) {
        const uint64_t npages = 200;
        const uint64_t pages[] = { 0, 1, 63, 64, 65, 127, 128, 199 };
        struct vhm_bitmap *bm;

        (void) state;
        assert_int_equal(vhm_bitmap_new(npages, &bm), 0);
        for (size_t i = 0; i < sizeof(pages) / sizeof(pages[0]); i++) {
                assert_false(vhm_bitmap_test(bm, pages[i]));
                assert_int_equal(vhm_bitmap_set(bm, pages[i]), 0);
                assert_true(vhm_bitmap_test(bm, pages[i]));
                assert_int_equal(vhm_bitmap_count(bm), i + 1);
        }
        assert_false(vhm_bitmap_test(bm, 2));
        assert_false(vhm_bitmap_test(bm, 62));
        assert_int_equal(vhm_bitmap_set(bm, npages), -ERANGE);
        assert_int_equal(vhm_bitmap_set(bm, UINT64_MAX), -ERANGE);
        assert_int_equal(vhm_bitmap_clear(bm, npages), -ERANGE);
        assert_false(vhm_bitmap_test(bm, UINT64_MAX));

        assert_int_equal(vhm_bitmap_clear(bm, 64), 0);
        assert_false(vhm_bitmap_test(bm, 64));
        assert_true(vhm_bitmap_test(bm, 63));
        assert_true(vhm_bitmap_test(bm, 65));
        assert_int_equal(vhm_bitmap_count(bm), 7);

        vhm_bitmap_clear_all(bm);
        assert_int_equal(vhm_bitmap_count(bm), 0);
        for (size_t i = 0; i < sizeof(pages) / sizeof(pages[0]); i++)
                assert_false(vhm_bitmap_test(bm, pages[i]));
        vhm_bitmap_free(bm);
}

static void test_ranges_random(void **state) {
        const uint64_t npages = 1000; /* not a multiple of 64 */
        struct test_rng rng = { 0x5eed0001 };
        struct vhm_bitmap *bm;
        bool *ref = calloc(npages, sizeof(bool));

        (void) state;
        assert_non_null(ref);
        assert_int_equal(vhm_bitmap_new(npages, &bm), 0);

        for (int op = 0; op < 3000; op++) {
                uint64_t first = rng_below(&rng, npages + 1);
                uint64_t count = rng_below(&rng, 300);
                bool fits = first + count <= npages;
                int kind = (int) rng_below(&rng, 4);
                int r;

                switch (kind) {
                case 0:
                        r = vhm_bitmap_set_range(bm, first, count);
                        break;
                case 1:
                        r = vhm_bitmap_clear_range(bm, first, count);
                        break;
                case 2:
                        r = vhm_bitmap_set(bm, first);
                        fits = first < npages;
                        count = 1;
                        break;
                default:
                        r = vhm_bitmap_clear(bm, first);
                        fits = first < npages;
                        count = 1;
                        break;
                }
                if (!fits) {
                        assert_int_equal(r, -ERANGE);
                } else {
                        assert_int_equal(r, 0);
                        for (uint64_t p = first; p < first + count; p++)
                                ref[p] = (kind == 0 || kind == 2);
                }
                if (op % 50 == 0 || !fits)
                        assert_matches(bm, ref, npages);
        }
        assert_matches(bm, ref, npages);

        /* whole-bitmap and overflowing ranges */
        assert_int_equal(vhm_bitmap_set_range(bm, 0, npages), 0);
        assert_int_equal(vhm_bitmap_count(bm), npages);
        assert_int_equal(vhm_bitmap_set_range(bm, UINT64_MAX, 2), -ERANGE);
        assert_int_equal(vhm_bitmap_set_range(bm, 1, UINT64_MAX), -ERANGE);
        assert_int_equal(vhm_bitmap_clear_range(bm, 0, npages + 1), -ERANGE);
        assert_int_equal(vhm_bitmap_count(bm), npages);
        assert_int_equal(vhm_bitmap_set_range(bm, npages, 0), 0);
        assert_int_equal(vhm_bitmap_clear_range(bm, 64, 64), 0);
        assert_int_equal(vhm_bitmap_count(bm), npages - 64);
        assert_true(vhm_bitmap_test(bm, 63));
        assert_false(vhm_bitmap_test(bm, 64));
        assert_false(vhm_bitmap_test(bm, 127));
        assert_true(vhm_bitmap_test(bm, 128));

        vhm_bitmap_free(bm);
        free(ref);
}

static void test_resize(void **state) {
        struct vhm_bitmap *bm;

        (void) state;
        assert_int_equal(vhm_bitmap_new(100, &bm), 0);
        assert_int_equal(vhm_bitmap_set(bm, 0), 0);
        assert_int_equal(vhm_bitmap_set(bm, 64), 0);
        assert_int_equal(vhm_bitmap_set(bm, 99), 0);

        /* grow: bits kept, new pages clear */
        assert_int_equal(vhm_bitmap_resize(bm, 100000), 0);
        assert_int_equal(vhm_bitmap_npages(bm), 100000);
        assert_int_equal(vhm_bitmap_count(bm), 3);
        assert_true(vhm_bitmap_test(bm, 0));
        assert_true(vhm_bitmap_test(bm, 64));
        assert_true(vhm_bitmap_test(bm, 99));
        for (uint64_t p = 100; p < 100000; p++)
                if (vhm_bitmap_test(bm, p))
                        fail_msg("page %llu set after grow", (unsigned long long) p);
        assert_int_equal(vhm_bitmap_set(bm, 99999), 0);
        assert_int_equal(vhm_bitmap_set_range(bm, 1000, 5000), 0);
        assert_int_equal(vhm_bitmap_count(bm), 5004);

        /* grow within the same last word */
        assert_int_equal(vhm_bitmap_resize(bm, 100010), 0);
        assert_int_equal(vhm_bitmap_count(bm), 5004);
        assert_false(vhm_bitmap_test(bm, 100005));

        /* shrink into the middle of a word: pages past the end are dropped */
        assert_int_equal(vhm_bitmap_resize(bm, 70), 0);
        assert_int_equal(vhm_bitmap_count(bm), 2);
        assert_int_equal(vhm_bitmap_set(bm, 70), -ERANGE);
        assert_int_equal(vhm_bitmap_set(bm, 69), 0);
        assert_int_equal(vhm_bitmap_count(bm), 3);

        /* grow again: what was dropped does not come back */
        assert_int_equal(vhm_bitmap_resize(bm, 200000), 0);
        assert_int_equal(vhm_bitmap_count(bm), 3);
        assert_false(vhm_bitmap_test(bm, 99));
        assert_false(vhm_bitmap_test(bm, 1000));
        assert_false(vhm_bitmap_test(bm, 99999));

        /* to zero and back */
        assert_int_equal(vhm_bitmap_resize(bm, 0), 0);
        assert_int_equal(vhm_bitmap_count(bm), 0);
        assert_int_equal(vhm_bitmap_resize(bm, 64), 0);
        assert_int_equal(vhm_bitmap_count(bm), 0);

        assert_int_equal(vhm_bitmap_resize(bm, VHM_BITMAP_MAX_PAGES + 1), -ERANGE);
        assert_int_equal(vhm_bitmap_npages(bm), 64);
        vhm_bitmap_free(bm);
}

/* Collect all ranges of a bitmap and compare them with the runs of ref. */
static void check_ranges(const struct vhm_bitmap *bm, const bool *ref, uint64_t npages, uint64_t start) {
        struct vhm_bitmap_iter it;
        uint64_t first, count, p = start, prev_end = 0;
        bool have_prev = false;

        vhm_bitmap_iter_init(&it, bm, start);
        while (vhm_bitmap_iter_next(&it, &first, &count)) {
                assert_true(count >= 1);
                assert_true(first >= p);
                /* everything between the previous range and this one is clear */
                for (; p < first; p++)
                        assert_false(ref[p]);
                /* maximal: the page before this range is clear (or before start) */
                if (have_prev)
                        assert_true(first > prev_end);
                if (first > start)
                        assert_false(ref[first - 1]);
                for (; p < first + count; p++)
                        assert_true(ref[p]);
                assert_true(p == npages || !ref[p]);
                prev_end = p;
                have_prev = true;
        }
        for (; p < npages; p++)
                assert_false(ref[p]);
        /* exhausted iterators stay exhausted */
        assert_false(vhm_bitmap_iter_next(&it, &first, &count));
}

static void test_iter(void **state) {
        const uint64_t sizes[] = { 1, 63, 64, 65, 130, 1000, 4096, 70001 };
        struct test_rng rng = { 0x17e4 };

        (void) state;
        for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
                uint64_t npages = sizes[s];
                bool *ref = calloc(npages, sizeof(bool));
                struct vhm_bitmap *bm;
                struct vhm_bitmap_iter it;
                uint64_t first, count;

                assert_non_null(ref);
                assert_int_equal(vhm_bitmap_new(npages, &bm), 0);

                /* empty */
                vhm_bitmap_iter_init(&it, bm, 0);
                assert_false(vhm_bitmap_iter_next(&it, &first, &count));

                /* full: one range */
                assert_int_equal(vhm_bitmap_set_range(bm, 0, npages), 0);
                vhm_bitmap_iter_init(&it, bm, 0);
                assert_true(vhm_bitmap_iter_next(&it, &first, &count));
                assert_int_equal(first, 0);
                assert_int_equal(count, npages);
                assert_false(vhm_bitmap_iter_next(&it, &first, &count));
                vhm_bitmap_clear_all(bm);

                /* only the last page */
                assert_int_equal(vhm_bitmap_set(bm, npages - 1), 0);
                vhm_bitmap_iter_init(&it, bm, 0);
                assert_true(vhm_bitmap_iter_next(&it, &first, &count));
                assert_int_equal(first, npages - 1);
                assert_int_equal(count, 1);
                assert_false(vhm_bitmap_iter_next(&it, &first, &count));
                vhm_bitmap_clear_all(bm);

                /* random runs of random lengths, several densities */
                for (int round = 0; round < 6; round++) {
                        uint64_t p = 0;
                        bool on = false;

                        vhm_bitmap_clear_all(bm);
                        while (p < npages) {
                                uint64_t len = 1 + rng_below(&rng, round < 3 ? 8 : 200);

                                if (len > npages - p)
                                        len = npages - p;
                                for (uint64_t i = p; i < p + len; i++)
                                        ref[i] = on;
                                if (on)
                                        assert_int_equal(vhm_bitmap_set_range(bm, p, len), 0);
                                p += len;
                                on = !on;
                        }
                        check_ranges(bm, ref, npages, 0);
                        /* starting mid-way (possibly inside a run) */
                        {
                                uint64_t start = rng_below(&rng, npages);
                                bool *sub = calloc(npages, sizeof(bool));

                                assert_non_null(sub);
                                memcpy(sub, ref, npages * sizeof(bool));
                                for (uint64_t i = 0; i < start; i++)
                                        sub[i] = false;
                                check_ranges(bm, sub, npages, start);
                                free(sub);
                        }
                }

                /* the consumer clears each range as it goes (page sender) */
                vhm_bitmap_iter_init(&it, bm, 0);
                while (vhm_bitmap_iter_next(&it, &first, &count))
                        assert_int_equal(vhm_bitmap_clear_range(bm, first, count), 0);
                assert_int_equal(vhm_bitmap_count(bm), 0);

                /* start past the end */
                vhm_bitmap_iter_init(&it, bm, npages + 5);
                assert_false(vhm_bitmap_iter_next(&it, &first, &count));

                vhm_bitmap_free(bm);
                free(ref);
        }
}

/* A duplicate of a memfd bitmap's fd: what a restart keeps in the fd store. */
static int kept_fd(const struct vhm_bitmap *bm) {
        int fd = fcntl(vhm_bitmap_fd(bm), F_DUPFD_CLOEXEC, 3);

        assert_true(fd >= 0);
        return fd;
}

/* A memfd bitmap outlives its first owner: another takes its bits back, a resize moves them to a new memfd. */
static void test_memfd_adopt(void **state) {
        struct vhm_bitmap *bm = NULL, *back = NULL;
        int fds = count_open_fds();

        (void) state;
        assert_int_equal(vhm_bitmap_new_memfd(1000, &bm), 0);
        assert_true(vhm_bitmap_fd(bm) >= 0);
        assert_int_equal(vhm_bitmap_set_range(bm, 3, 70), 0);
        assert_int_equal(vhm_bitmap_set(bm, 999), 0);
        int fd = kept_fd(bm);
        vhm_bitmap_free(bm);

        assert_int_equal(vhm_bitmap_adopt(fd, 1000, &back), 0);
        assert_int_equal(vhm_bitmap_fd(back), fd);
        assert_int_equal(vhm_bitmap_count(back), 71);
        assert_true(vhm_bitmap_test(back, 3) && vhm_bitmap_test(back, 72) && vhm_bitmap_test(back, 999));
        assert_false(vhm_bitmap_test(back, 2) || vhm_bitmap_test(back, 73));

        /* Growing: a new memfd with every bit, the old one closed. */
        assert_int_equal(vhm_bitmap_resize(back, 5000), 0);
        assert_int_not_equal(vhm_bitmap_fd(back), -1);
        assert_int_equal(vhm_bitmap_count(back), 71);
        assert_true(vhm_bitmap_test(back, 999));
        struct stat st;
        assert_int_equal(fstat(vhm_bitmap_fd(back), &st), 0);
        assert_int_equal(st.st_size, (5000 + 63) / 64 * 8);
        assert_int_equal(fcntl(vhm_bitmap_fd(back), F_GET_SEALS) & (F_SEAL_SHRINK | F_SEAL_GROW),
                         F_SEAL_SHRINK | F_SEAL_GROW);
        fd = kept_fd(back);
        vhm_bitmap_free(back);
        assert_int_equal(vhm_bitmap_adopt(fd, 5000, &back), 0);
        assert_int_equal(vhm_bitmap_count(back), 71);
        vhm_bitmap_free(back);

        /* A heap bitmap has no fd; its bits move into a memfd and back. */
        assert_int_equal(vhm_bitmap_new(130, &bm), 0);
        assert_int_equal(vhm_bitmap_fd(bm), -1);
        assert_int_equal(vhm_bitmap_set_range(bm, 60, 70), 0);
        assert_int_equal(vhm_bitmap_set_memfd(bm, true), 0);
        assert_true(vhm_bitmap_fd(bm) >= 0);
        assert_int_equal(vhm_bitmap_set_memfd(bm, true), 0);
        assert_int_equal(vhm_bitmap_count(bm), 70);
        fd = kept_fd(bm);
        assert_int_equal(vhm_bitmap_set_memfd(bm, false), 0);
        assert_int_equal(vhm_bitmap_fd(bm), -1);
        assert_int_equal(vhm_bitmap_count(bm), 70);
        assert_true(vhm_bitmap_test(bm, 60) && vhm_bitmap_test(bm, 129) && !vhm_bitmap_test(bm, 59));
        vhm_bitmap_free(bm);
        assert_int_equal(vhm_bitmap_adopt(fd, 130, &back), 0);
        assert_int_equal(vhm_bitmap_count(back), 70);
        vhm_bitmap_free(back);
        assert_int_equal(count_open_fds(), fds);
}

/* Bits past the pages the bitmap covers are not pages: cleared when taken back. */
static void test_memfd_adopt_clears_past_the_end(void **state) {
        struct vhm_bitmap *bm = NULL;

        (void) state;
        assert_int_equal(vhm_bitmap_new_memfd(100, &bm), 0);
        int fd = kept_fd(bm);
        uint64_t *w = mmap(NULL, 16, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        assert_true(w != MAP_FAILED);
        w[1] = ~UINT64_C(0); /* pages 64..127: only 64..99 exist */
        munmap(w, 16);
        vhm_bitmap_free(bm);
        assert_int_equal(vhm_bitmap_adopt(fd, 100, &bm), 0);
        assert_int_equal(vhm_bitmap_count(bm), 36);
        vhm_bitmap_free(bm);
}

/* A sealed memfd of size bytes with the given seals. */
static int memfd_sealed(size_t size, int seals) {
        int fd = memfd_create("test-bitmap", MFD_CLOEXEC | MFD_ALLOW_SEALING);

        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, (off_t) size), 0);
        if (seals)
                assert_int_equal(fcntl(fd, F_ADD_SEALS, seals), 0);
        return fd;
}

/* What was not made by vhm_bitmap_new_memfd for these pages is refused, its fd closed, nothing left. */
static void test_memfd_adopt_refusals(void **state) {
        struct vhm_bitmap *bm = (struct vhm_bitmap *) 1;
        const int resize = F_SEAL_SHRINK | F_SEAL_GROW;
        int fds = count_open_fds();
        struct {
                int fd;
                uint64_t npages;
                int err;
        } cases[] = {
                { memfd_sealed(16, 0), 100, -EPERM },                     /* not sealed */
                { memfd_sealed(16, F_SEAL_SHRINK), 100, -EPERM },         /* may grow */
                { memfd_sealed(16, resize | F_SEAL_WRITE), 100, -EPERM }, /* harvests could not write */
                { memfd_sealed(16, resize), 200, -EMSGSIZE },             /* another size */
                { memfd_sealed(16, resize), 64, -EMSGSIZE },
                { memfd_sealed(16, resize), VHM_BITMAP_MAX_PAGES + 1, -ERANGE },
        };

        (void) state;
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                bm = (struct vhm_bitmap *) 1;
                assert_int_equal(vhm_bitmap_adopt(cases[i].fd, cases[i].npages, &bm), cases[i].err);
                assert_null(bm);
                assert_true(fcntl(cases[i].fd, F_GETFD) < 0 && errno == EBADF);
        }
        /* Not a memfd. */
        int p[2];
        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        close(p[1]);
        assert_int_equal(vhm_bitmap_adopt(p[0], 64, &bm), -EINVAL);
        assert_true(fcntl(p[0], F_GETFD) < 0);
        /* No out: the fd is still taken. */
        int fd = memfd_sealed(16, resize);
        assert_int_equal(vhm_bitmap_adopt(fd, 100, NULL), -EINVAL);
        assert_true(fcntl(fd, F_GETFD) < 0);
        assert_int_equal(vhm_bitmap_adopt(-1, 100, &bm), -EINVAL);
        assert_int_equal(count_open_fds(), fds);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_new_free),
                cmocka_unit_test(test_set_test_clear),
                cmocka_unit_test(test_ranges_random),
                cmocka_unit_test(test_resize),
                cmocka_unit_test(test_iter),
                cmocka_unit_test(test_memfd_adopt),
                cmocka_unit_test(test_memfd_adopt_clears_past_the_end),
                cmocka_unit_test(test_memfd_adopt_refusals),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}

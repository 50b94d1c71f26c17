/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests for vhm_log_harvest: correctness against a reference, edge
 * sizes, and no lost page while a backend writes concurrently. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "log/dirty-log.h"
#include "log/log-priv.h"
#include "log-test-util.h"

/* The implementation under test; every test runs once per available one,
 * then once more harvesting detached logs (vhm_log_harvest_detached). */
static enum vhm_log_harvest_impl impl;
static bool detached;

static int do_harvest(struct vhm_log *log, struct vhm_bitmap *bm, uint64_t *got) {
        return detached ? vhm_log_harvest_detached(log, bm, got) : vhm_log_harvest(log, bm, got);
}

static const enum vhm_log_harvest_impl all_impls[] = {
        VHM_LOG_HARVEST_XCHG,
        VHM_LOG_HARVEST_CAS16,
        VHM_LOG_HARVEST_RTM,
};

static struct vhm_log *new_log(uint64_t top) {
        struct vhm_log *log;

        assert_int_equal(vhm_log_new(top, &log), 0);
        assert_int_equal(vhm_log_set_harvest_impl(log, impl), 0);
        assert_int_equal(vhm_log_get_harvest_impl(log), impl);
        return log;
}

/*
 * fn once per mask width this CPU has: the harvests find non-zero words with
 * AVX2 where the CPU has it and with SSE2 (or plain C) elsewhere; both run.
 */
static void for_each_mask_width(const char *name, void (*fn)(void)) {
        if (vhm_log_priv_cpu()->avx2) {
                print_message("  [%s, avx2 masks]\n", name);
                fn();
                vhm_log_priv_use_avx2(false);
                assert_false(vhm_log_priv_cpu()->avx2);
        }
        print_message("  [%s]\n", name);
        fn();
        vhm_log_priv_use_avx2(true);
}

/* Run fn once per implementation this CPU supports. */
static void for_each_impl(void (*fn)(void)) {
        struct vhm_log *probe;

        assert_int_equal(vhm_log_new(4096, &probe), 0);
        for (size_t i = 0; i < sizeof(all_impls) / sizeof(all_impls[0]); i++) {
                int r = vhm_log_set_harvest_impl(probe, all_impls[i]);

                if (r == -EOPNOTSUPP) {
                        print_message("  [%s: not supported on this CPU, skipped]\n",
                                      vhm_log_harvest_impl_name(all_impls[i]));
                        continue;
                }
                assert_int_equal(r, 0);
                impl = all_impls[i];
                for_each_mask_width(vhm_log_harvest_impl_name(impl), fn);
        }
        vhm_log_free(probe);
        impl = VHM_LOG_HARVEST_XCHG;
        detached = true;
        for_each_mask_width("detached", fn);
        detached = false;
}

static uint64_t mask_below(uint64_t npages, uint64_t word) {
        uint64_t lo = word * 64;

        if (npages >= lo + 64)
                return ~UINT64_C(0);
        if (npages <= lo)
                return 0;
        return (UINT64_C(1) << (npages - lo)) - 1;
}

/* Read a bitmap into words through the public API. */
static void bitmap_words(const struct vhm_bitmap *bm, uint64_t *w, uint64_t nwords) {
        memset(w, 0, nwords * 8);
        for (uint64_t p = 0; p < vhm_bitmap_npages(bm) && p < nwords * 64; p++)
                if (vhm_bitmap_test(bm, p))
                        w[p / 64] |= UINT64_C(1) << (p % 64);
}

/*
 * One random case: a log for log_pages pages, a bitmap of bm_pages pages with
 * some bits already set; the backend writes a random pattern (including bits
 * past top inside the last word); harvest; compare with the reference.
 */
static void run_case(struct test_rng *rng, uint64_t log_pages, uint64_t bm_pages, uint32_t log_ppm, uint32_t old_ppm) {
        struct vhm_log *log;
        struct vhm_bitmap *bm;
        uint64_t lwords, bwords, size, got, want_fresh = 0;
        uint64_t *pattern, *old, *want, *have;
        uint8_t *b;

        log = new_log(log_pages * 4096);
        assert_int_equal(vhm_log_npages(log), log_pages);
        size = vhm_log_size_bytes(log);
        lwords = size / 8;
        bwords = (bm_pages + 63) / 64;
        b = backend_map(vhm_log_fd(log), size);
        assert_non_null(b);

        pattern = calloc(lwords, 8);
        old = calloc(bwords + 1, 8);
        want = calloc(bwords + 1, 8);
        have = calloc(bwords + 1, 8);
        assert_non_null(pattern);
        assert_non_null(old);
        assert_non_null(want);
        assert_non_null(have);

        assert_int_equal(vhm_bitmap_new(bm_pages, &bm), 0);
        for (uint64_t w = 0; w < bwords; w++) {
                old[w] = rng_word_density(rng, old_ppm) & mask_below(bm_pages, w);
                for (int i = 0; i < 64; i++)
                        if (old[w] >> i & 1)
                                assert_int_equal(vhm_bitmap_set(bm, w * 64 + (uint64_t) i), 0);
        }
        for (uint64_t w = 0; w < lwords; w++)
                pattern[w] = rng_word_density(rng, log_ppm);
        memcpy(b, pattern, size); /* little-endian: word w = bytes 8w..8w+7 */

        for (uint64_t w = 0; w < bwords; w++) {
                uint64_t in = w < lwords ? pattern[w] & mask_below(bm_pages, w) : 0;

                want[w] = old[w] | in;
                want_fresh += (uint64_t) __builtin_popcountll(in & ~old[w]);
        }

        got = UINT64_MAX;
        assert_int_equal(do_harvest(log, bm, &got), 0);
        assert_int_equal(got, want_fresh);
        bitmap_words(bm, have, bwords);
        for (uint64_t w = 0; w < bwords; w++)
                if (have[w] != want[w])
                        fail_msg("log %llu pages, bitmap %llu: word %llu is %016llx, want %016llx",
                                 (unsigned long long) log_pages, (unsigned long long) bm_pages, (unsigned long long) w,
                                 (unsigned long long) have[w], (unsigned long long) want[w]);
        {
                uint64_t n = 0;

                for (uint64_t w = 0; w < bwords; w++)
                        n += (uint64_t) __builtin_popcountll(want[w]);
                assert_int_equal(vhm_bitmap_count(bm), n);
        }
        /* the log is empty afterwards, all of it */
        for (uint64_t i = 0; i < size; i++)
                if (b[i])
                        fail_msg("log byte %llu still %02x", (unsigned long long) i, b[i]);
        /* and a second harvest finds nothing */
        assert_int_equal(do_harvest(log, bm, &got), 0);
        assert_int_equal(got, 0);
        assert_int_equal(do_harvest(log, bm, NULL), 0);

        vhm_bitmap_free(bm);
        munmap(b, size);
        vhm_log_free(log);
        free(pattern);
        free(old);
        free(want);
        free(have);
}

static void harvest_random(void) {
        /* sizes around the 64-page word and the 512-page (one cache line) block */
        const uint64_t sizes[] = { 1, 2, 63, 64, 65, 511, 512, 513, 575, 1000, 4096 * 8 + 17, UINT64_C(1) << 18 };
        /* 2 %: about a third of the words non-zero, so half masks mix single words and full pairs */
        const uint32_t ppm[] = { 0, 1000, 20000, 100000, 500000, 1000000 };
        struct test_rng rng = { 0x4a7e57 };

        for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
                for (size_t d = 0; d < sizeof(ppm) / sizeof(ppm[0]); d++) {
                        uint64_t n = sizes[s];

                        /* bitmap exactly the log's pages */
                        run_case(&rng, n, n, ppm[d], 0);
                        run_case(&rng, n, n, ppm[d], 200000);
                        /* bitmap rounded to whole words: bits past top are kept */
                        run_case(&rng, n, (n + 63) / 64 * 64, ppm[d], 50000);
                        /* bitmap larger than the log (memory hot-added) */
                        run_case(&rng, n, n + 1000, ppm[d], 100000);
                }
        }
}

static void test_harvest_random(void **state) {
        (void) state;
        for_each_impl(harvest_random);
}

/* A bitmap larger than the log: pages past the log are not touched. */
static void harvest_bitmap_larger(void) {
        struct vhm_log *log;
        struct vhm_bitmap *bm;
        uint64_t got;

        log = new_log(1000 * 4096); /* 16 words */
        assert_int_equal(vhm_bitmap_new(100000, &bm), 0);
        assert_int_equal(vhm_bitmap_set_range(bm, 1024, 500), 0); /* past the log */
        assert_int_equal(vhm_bitmap_set(bm, 99999), 0);
        assert_int_equal(vhm_log_mark_range(log, 0, 1024), 0); /* the whole log memory */
        assert_int_equal(do_harvest(log, bm, &got), 0);
        assert_int_equal(got, 1024);
        assert_int_equal(vhm_bitmap_count(bm), 1024 + 500 + 1);
        assert_true(vhm_bitmap_test(bm, 1023));
        assert_true(vhm_bitmap_test(bm, 1024));
        assert_true(vhm_bitmap_test(bm, 1523));
        assert_false(vhm_bitmap_test(bm, 1524));
        assert_true(vhm_bitmap_test(bm, 99999));
        vhm_bitmap_free(bm);
        vhm_log_free(log);
}

static void test_harvest_bitmap_larger(void **state) {
        (void) state;
        for_each_impl(harvest_bitmap_larger);
}

/* A bitmap smaller than the log is refused and the log left alone. */
static void harvest_bitmap_smaller(void) {
        struct vhm_log *log;
        struct vhm_bitmap *bm;
        uint64_t got = 77;

        log = new_log(1000 * 4096);
        assert_int_equal(vhm_bitmap_new(999, &bm), 0);
        assert_int_equal(vhm_log_mark_page(log, 5), 0);
        assert_int_equal(do_harvest(log, bm, &got), -ERANGE);
        assert_int_equal(got, 77);
        assert_int_equal(vhm_bitmap_count(bm), 0);
        /* grown to fit, the page is still there */
        assert_int_equal(vhm_bitmap_resize(bm, 1000), 0);
        assert_int_equal(do_harvest(log, bm, &got), 0);
        assert_int_equal(got, 1);
        assert_true(vhm_bitmap_test(bm, 5));
        vhm_bitmap_free(bm);
        vhm_log_free(log);
}

static void test_harvest_bitmap_smaller(void **state) {
        (void) state;
        for_each_impl(harvest_bitmap_smaller);
}

/*
 * Concurrency: a writer thread marks a random set of pages (each page with
 * probability ppm / 1e6, so harvests run at that density), each exactly
 * once, in an order that keeps hammering the same words (random word order,
 * random bit order inside each word, full words sometimes by whole-word OR),
 * while the main thread harvests in a loop.  After the writer stops and a
 * final harvest, the bitmap must hold exactly the pages marked: a lost page
 * (a bit set between a read and a clear) would be missing, and since each
 * page is marked once it could not be re-marked later to hide the loss.
 *
 * Detached mode is double-buffered logging done by the rule of
 * vhm_log_harvest_detached: the writer marks each word under a lock (a
 * back-end's queue lock), the harvester switches the writer to the other log
 * under that lock (SET_LOG_BASE and its reply), then harvests the old log
 * with plain loads and stores.
 */
struct writer {
        struct vhm_log *logs[2];
        pthread_mutex_t lock; /* detached mode: the "queue lock" */
        unsigned int active;  /* detached mode: the log the writer uses; under lock */
        uint64_t npages;
        uint64_t seed;
        uint32_t ppm;
        bool paced;        /* wait for a harvest after every few words */
        uint64_t harvests; /* atomic: main's harvest count */
        bool done;         /* atomic */
        uint64_t marked;   /* pages marked; read after join */
        uint64_t *want;    /* the pages marked, as bitmap words */
};

/* Best effort: put the calling thread on its own CPU, so writer and
 * harvester really run at the same time on a busy 2-CPU machine. */
static void pin_to_cpu(int which) {
        cpu_set_t set;
        long n = sysconf(_SC_NPROCESSORS_ONLN);

        if (n < 2)
                return;
        CPU_ZERO(&set);
        CPU_SET(which % (int) n, &set);
        (void) pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

/* Paced mode: wait until main has finished a harvest since `since`. */
static void wait_harvest(struct writer *w, uint64_t since) {
        for (unsigned int spins = 0; __atomic_load_n(&w->harvests, __ATOMIC_ACQUIRE) == since; spins++)
                if (spins > 1000)
                        sched_yield();
}

/* Mark the pages of mask in word `word`, in a random order. */
static void mark_word(struct writer *w, struct vhm_log *log, struct test_rng *rng, uint64_t word, uint64_t mask) {
        unsigned int bits[64];

        if (mask == ~UINT64_C(0) && rng_below(rng, 8) == 0) {
                /* two half-word ORs, like a multi-page write */
                if (vhm_log_mark_range(log, word * 64, 32) || vhm_log_mark_range(log, word * 64 + 32, 32))
                        abort();
                w->marked += 64;
                return;
        }
        for (unsigned int b = 0; b < 64; b++)
                bits[b] = b;
        for (unsigned int b = 63; b > 0; b--) {
                unsigned int j = (unsigned int) rng_below(rng, b + 1u), t = bits[b];

                bits[b] = bits[j];
                bits[j] = t;
        }
        for (unsigned int b = 0; b < 64; b++) {
                if (!(mask >> bits[b] & 1))
                        continue;
                if (vhm_log_mark_page(log, word * 64 + bits[b]))
                        abort();
                w->marked++;
        }
}

static void *writer_main(void *arg) {
        struct writer *w = arg;
        struct test_rng rng = { w->seed };
        uint64_t nwords = w->npages / 64;
        uint64_t *order = malloc(nwords * sizeof(uint64_t));
        uint64_t seen = __atomic_load_n(&w->harvests, __ATOMIC_ACQUIRE);

        pin_to_cpu(1);
        if (!order)
                abort();
        for (uint64_t i = 0; i < nwords; i++)
                order[i] = i;
        for (uint64_t i = nwords - 1; i > 0; i--) {
                uint64_t j = rng_below(&rng, i + 1), t = order[i];

                order[i] = order[j];
                order[j] = t;
        }
        for (uint64_t i = 0; i < nwords; i++) {
                uint64_t word = order[i], mask = rng_word_density(&rng, w->ppm);

                if (w->paced && i % 4 == 0) {
                        wait_harvest(w, seen);
                        seen = __atomic_load_n(&w->harvests, __ATOMIC_ACQUIRE);
                }
                w->want[word] = mask;
                if (pthread_mutex_lock(&w->lock))
                        abort();
                mark_word(w, w->logs[w->active], &rng, word, mask);
                pthread_mutex_unlock(&w->lock);
        }
        free(order);
        __atomic_store_n(&w->done, true, __ATOMIC_RELEASE);
        return NULL;
}

/* One harvest.  Detached: switch the writer to the other log under its
 * lock, then harvest the one it left. */
static uint64_t harvest_round(struct writer *w, struct vhm_bitmap *bm, bool is_detached) {
        uint64_t got;
        unsigned int old;

        if (!is_detached) {
                assert_int_equal(vhm_log_harvest(w->logs[0], bm, &got), 0);
                return got;
        }
        assert_int_equal(pthread_mutex_lock(&w->lock), 0);
        old = w->active;
        w->active = !old;
        assert_int_equal(pthread_mutex_unlock(&w->lock), 0);
        assert_int_equal(vhm_log_harvest_detached(w->logs[old], bm, &got), 0);
        return got;
}

static void run_concurrent(uint64_t npages, uint64_t seed, uint32_t ppm, bool paced) {
        struct writer w = { .npages = npages, .seed = seed, .ppm = ppm, .paced = paced };
        struct vhm_bitmap *bm;
        pthread_t th;
        uint64_t total = 0, harvests = 0, productive = 0, want_pages = 0;
        struct vhm_log_harvest_stats st[2] = { 0 };

        w.logs[0] = new_log(npages * 4096);
        w.logs[1] = new_log(npages * 4096);
        w.want = calloc(npages / 64, sizeof(uint64_t));
        assert_non_null(w.want);
        assert_int_equal(pthread_mutex_init(&w.lock, NULL), 0);
        assert_int_equal(vhm_bitmap_new(npages, &bm), 0);
        pin_to_cpu(0);
        assert_int_equal(pthread_create(&th, NULL, writer_main, &w), 0);

        while (!__atomic_load_n(&w.done, __ATOMIC_ACQUIRE)) {
                uint64_t got = harvest_round(&w, bm, detached);

                total += got;
                harvests++;
                productive += got != 0;
                __atomic_store_n(&w.harvests, harvests, __ATOMIC_RELEASE);
        }
        assert_int_equal(pthread_join(th, NULL), 0);
        {
                cpu_set_t all;

                CPU_ZERO(&all);
                for (int c = 0; c < CPU_SETSIZE; c++)
                        CPU_SET(c, &all);
                (void) pthread_setaffinity_np(pthread_self(), sizeof(all), &all);
        }
        /* the writer is gone: both logs are quiet now */
        total += harvest_round(&w, bm, detached);
        total += harvest_round(&w, bm, detached);

        for (uint64_t i = 0; i < npages / 64; i++)
                want_pages += (uint64_t) __builtin_popcountll(w.want[i]);
        assert_int_equal(w.marked, want_pages);
        assert_int_equal(total, want_pages);                /* each page counted once */
        assert_int_equal(vhm_bitmap_count(bm), want_pages); /* and none lost */
        for (uint64_t p = 0; p < npages; p++)
                if (vhm_bitmap_test(bm, p) != (bool) (w.want[p / 64] >> (p % 64) & 1))
                        fail_msg("page %llu: harvested %d, marked %d", (unsigned long long) p, vhm_bitmap_test(bm, p),
                                 (int) (w.want[p / 64] >> (p % 64) & 1));
        vhm_log_get_stats(w.logs[0], &st[0]);
        vhm_log_get_stats(w.logs[1], &st[1]);
        assert_int_equal(st[0].harvests + st[1].harvests, harvests + 2);
        assert_int_equal(st[0].pages + st[1].pages, want_pages);
        /* paced: the writer waited for a harvest every 4 words, so many
         * harvests took pages while it was still writing */
        if (paced && ppm >= 100000)
                assert_true(productive >= npages / 64 / 4 / 2);
        print_message("  %s %6.2f%% of %llu pages: %llu harvests, %llu took pages while the writer ran"
                      " (tx %llu committed, %llu aborted)\n",
                      paced ? "paced" : "free ", ppm / 1e4, (unsigned long long) npages, (unsigned long long) harvests,
                      (unsigned long long) productive, (unsigned long long) (st[0].tx_commits + st[1].tx_commits),
                      (unsigned long long) (st[0].tx_aborts + st[1].tx_aborts));
        vhm_bitmap_free(bm);
        vhm_log_free(w.logs[0]);
        vhm_log_free(w.logs[1]);
        pthread_mutex_destroy(&w.lock);
        free(w.want);
}

static void harvest_concurrent(void) {
        /* the bench's densities: 0.1 %, 10 % and every page */
        static const uint32_t ppm[] = { 1000, 100000, 1000000 };

        for (size_t d = 0; d < sizeof(ppm) / sizeof(ppm[0]); d++) {
                /* small logs: the harvester sweeps the word being written very often */
                for (uint64_t r = 0; r < 4; r++) {
                        run_concurrent(UINT64_C(1) << 14, 0xc0ffee + r, ppm[d], false);
                        run_concurrent(UINT64_C(1) << 14, 0xc0ffee + r, ppm[d], true);
                }
                run_concurrent(UINT64_C(1) << 18, 0xbeef, ppm[d], false);
                run_concurrent(UINT64_C(1) << 18, 0xbeef, ppm[d], true);
        }
        /* a 16 GiB guest's log */
        run_concurrent(UINT64_C(1) << 22, 0xfeed, 1000000, false);
}

static void test_harvest_concurrent(void **state) {
        (void) state;
        for_each_impl(harvest_concurrent);
}

/* A harvest into a bitmap the sender clears between harvests: the union of
 * everything harvested is exactly what was written. */
static void harvest_union_with_clearing(void) {
        const uint64_t npages = 1 << 16;
        struct test_rng rng = { 0xa11 };
        struct vhm_log *log;
        struct vhm_bitmap *bm, *uni, *ref;
        struct vhm_bitmap_iter it;
        uint64_t first, count, got;

        log = new_log(npages * 4096);
        assert_int_equal(vhm_bitmap_new(npages, &bm), 0);
        assert_int_equal(vhm_bitmap_new(npages, &uni), 0);
        assert_int_equal(vhm_bitmap_new(npages, &ref), 0);
        for (int round = 0; round < 200; round++) {
                for (int k = 0; k < 300; k++) {
                        uint64_t p = rng_below(&rng, npages);

                        assert_int_equal(vhm_log_mark_page(log, p), 0);
                        assert_int_equal(vhm_bitmap_set(ref, p), 0);
                }
                assert_int_equal(do_harvest(log, bm, &got), 0);
                assert_int_equal(got, vhm_bitmap_count(bm)); /* bm was empty */
                vhm_bitmap_iter_init(&it, bm, 0);
                while (vhm_bitmap_iter_next(&it, &first, &count)) {
                        assert_int_equal(vhm_bitmap_set_range(uni, first, count), 0);
                        assert_int_equal(vhm_bitmap_clear_range(bm, first, count), 0);
                }
        }
        assert_int_equal(vhm_bitmap_count(uni), vhm_bitmap_count(ref));
        for (uint64_t p = 0; p < npages; p++)
                assert_int_equal(vhm_bitmap_test(uni, p), vhm_bitmap_test(ref, p));
        vhm_bitmap_free(bm);
        vhm_bitmap_free(uni);
        vhm_bitmap_free(ref);
        vhm_log_free(log);
}

static void test_harvest_union_with_clearing(void **state) {
        (void) state;
        for_each_impl(harvest_union_with_clearing);
}

/* Choosing an implementation; AUTO picks a real one. */
static void test_impl_choice(void **state) {
        struct vhm_log *log;

        (void) state;
        assert_int_equal(vhm_log_new(4096, &log), 0);
        assert_int_not_equal(vhm_log_get_harvest_impl(log), VHM_LOG_HARVEST_AUTO);
        print_message("  auto picks %s\n", vhm_log_harvest_impl_name(vhm_log_get_harvest_impl(log)));
        assert_int_equal(vhm_log_set_harvest_impl(log, VHM_LOG_HARVEST_XCHG), 0);
        assert_int_equal(vhm_log_get_harvest_impl(log), VHM_LOG_HARVEST_XCHG);
        assert_int_equal(vhm_log_set_harvest_impl(log, VHM_LOG_HARVEST_AUTO), 0);
        assert_int_not_equal(vhm_log_get_harvest_impl(log), VHM_LOG_HARVEST_AUTO);
        assert_int_equal(vhm_log_set_harvest_impl(log, (enum vhm_log_harvest_impl) 42), -EINVAL);
        assert_string_equal(vhm_log_harvest_impl_name(VHM_LOG_HARVEST_XCHG), "xchg");
        assert_string_equal(vhm_log_harvest_impl_name(VHM_LOG_HARVEST_CAS16), "cas16");
        assert_string_equal(vhm_log_harvest_impl_name(VHM_LOG_HARVEST_RTM), "rtm");
        assert_string_equal(vhm_log_harvest_impl_name(VHM_LOG_HARVEST_AUTO), "auto");
        vhm_log_free(log);
}

/* With RTM, a full log is really taken by transactions (the path is
 * exercised, not just its fallback). */
static void test_rtm_commits(void **state) {
        struct vhm_log *log;
        struct vhm_bitmap *bm;
        struct vhm_log_harvest_stats st;
        uint64_t got;

        (void) state;
        assert_int_equal(vhm_log_new(UINT64_C(1) << 30, &log), 0);
        if (vhm_log_set_harvest_impl(log, VHM_LOG_HARVEST_RTM) == -EOPNOTSUPP) {
                vhm_log_free(log);
                skip();
        }
        assert_int_equal(vhm_bitmap_new(vhm_log_npages(log), &bm), 0);
        for (int round = 0; round < 3; round++) {
                assert_int_equal(vhm_log_mark_range(log, 0, vhm_log_npages(log)), 0);
                assert_int_equal(do_harvest(log, bm, &got), 0);
                assert_int_equal(vhm_bitmap_count(bm), vhm_log_npages(log));
                vhm_bitmap_clear_all(bm);
        }
        vhm_log_get_stats(log, &st);
        print_message("  tx %llu committed, %llu aborted\n", (unsigned long long) st.tx_commits,
                      (unsigned long long) st.tx_aborts);
        assert_true(st.tx_commits > 0);
        assert_int_equal(st.harvests, 3);
        assert_int_equal(st.pages, 3 * vhm_log_npages(log));
        vhm_bitmap_free(bm);
        vhm_log_free(log);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_harvest_random),
                cmocka_unit_test(test_harvest_bitmap_larger),
                cmocka_unit_test(test_harvest_bitmap_smaller),
                cmocka_unit_test(test_harvest_concurrent),
                cmocka_unit_test(test_harvest_union_with_clearing),
                cmocka_unit_test(test_impl_choice),
                cmocka_unit_test(test_rtm_commits),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}

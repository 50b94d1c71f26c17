/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The text of `vhostmigctl migrate start --wait` (daemon/ctl/ctl-progress.c):
 * given figures, the exact progress line in each of its forms (wide,
 * compact, terse, cut), the units (MiB of 1024 * 1024 bytes, pages/s,
 * MiB/s, ms), the width limit of an 80-column terminal, and the summary.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "daemon/ctl/ctl-progress.h"

#define PAGE 4096u
#define MIB  (1024u * 1024u)

/* A 1 GiB guest half sent in round 3, 4096 pages dirty, 1200 pages/s dirtied, 110.2 MiB/s. */
static struct ctl_progress live_figures(const char *state) {
        return (struct ctl_progress){
                .state = state,
                .live = true,
                .page_size = PAGE,
                .round = 3,
                .pages_total = 262144,
                .pages_transferred = 131072,
                .pages_remaining = 4096,
                .dirty_rate = 1200,
                .bandwidth = 115553075, /* 110.2 MiB/s */
                .expected_downtime_ms = 45,
        };
}

static void assert_line(const struct ctl_progress *p, unsigned width, const char *expected) {
        char buf[512];
        size_t n = ctl_progress_line(buf, sizeof(buf), p, width);
        assert_string_equal(buf, expected);
        assert_int_equal(n, strlen(expected));
        if (width)
                assert_true(n <= width);
}

static void test_wide(void **state) {
        (void) state;
        struct ctl_progress p = live_figures("active");
        const char *wide = "active  round 3  512.0/1024.0 MiB  4096 pages left  dirty 1200 pages/s (4.7 MiB/s)  "
                           "bw 110.2 MiB/s  downtime ~45 ms";
        /* No limit (not a terminal), and a terminal wide enough. */
        assert_line(&p, 0, wide);
        assert_line(&p, 200, wide);
        assert_line(&p, (unsigned) strlen(wide), wide);
}

static void test_compact_fits_80_columns(void **state) {
        (void) state;
        struct ctl_progress p = live_figures("active");
        const char *compact = "active r3 512.0/1024.0MiB left 4096 dirty 1200/s 4.7MiB/s bw 110.2MiB/s dt 45ms";
        /* 80 columns less the spare one vhostmigctl keeps. */
        assert_line(&p, 79, compact);
        assert_line(&p, 80, compact);
}

static void test_terse_drops_dirty_mib(void **state) {
        (void) state;
        struct ctl_progress p = live_figures("pre-switchover");
        assert_line(&p, 79, "pre-switchover r3 512.0/1024.0MiB left 4096 dirty 1200/s bw 110.2MiB/s dt 45ms");
}

static void test_cut_keeps_state_and_round(void **state) {
        (void) state;
        /* A 1 TiB guest in its last round: even the terse form is wider than 79. */
        struct ctl_progress p = live_figures("pre-switchover");
        p.round = 29;
        p.pages_total = p.pages_transferred = 268435456;
        p.pages_remaining = 262144;
        p.dirty_rate = 262144;
        p.bandwidth = 1227360256; /* 1170.5 MiB/s */
        p.expected_downtime_ms = 300;
        char buf[512];
        assert_int_equal(ctl_progress_line(buf, sizeof(buf), &p, 79), 79);
        assert_int_equal(strlen(buf), 79);
        assert_string_equal(buf, "pre-switchover r29 1048576/1048576MiB left 262144 dirty 262144/s bw 1170.5MiB/s");
}

static void test_units(void **state) {
        (void) state;
        /* Whole MiB from 10000 on; rates of 0; 16K pages. */
        struct ctl_progress p = live_figures("active");
        p.page_size = 16384;
        p.pages_total = 655360;      /* 10240 MiB */
        p.pages_transferred = 64000; /* 1000 MiB */
        p.dirty_rate = 0;
        p.bandwidth = 0;
        p.round = 0;
        assert_line(&p, 0,
                    "active  round 0  1000.0/10240 MiB  4096 pages left  dirty 0 pages/s (0.0 MiB/s)  bw 0.0 MiB/s  "
                    "downtime ~45 ms");
        /* No PageSize known: 4096. */
        p.page_size = 0;
        p.pages_total = 512;
        p.pages_transferred = 256;
        assert_line(&p, 79, "active r0 1.0/2.0MiB left 4096 dirty 0/s 0.0MiB/s bw 0.0MiB/s dt 45ms");
}

static void test_stop_and_copy(void **state) {
        (void) state;
        /* Not live: no round, rates or expected downtime to show. */
        struct ctl_progress p = { .state = "active", .page_size = PAGE, .pages_total = 512, .pages_transferred = 256 };
        assert_line(&p, 0, "active  1.0/2.0 MiB");
        assert_line(&p, 79, "active  1.0/2.0 MiB");
        p.state = "";
        assert_line(&p, 0, "unknown  1.0/2.0 MiB");
}

static void test_small_buffer(void **state) {
        (void) state;
        struct ctl_progress p = live_figures("active");
        char buf[10];
        size_t n = ctl_progress_line(buf, sizeof(buf), &p, 0);
        assert_true(n < sizeof(buf));
        assert_string_equal(buf, "active  r");
        n = ctl_progress_summary(buf, sizeof(buf), &p);
        assert_true(n < sizeof(buf));
        assert_int_equal(strlen(buf), n);
}

static void test_summary(void **state) {
        (void) state;
        char buf[512];
        struct ctl_progress p = live_figures("completed");
        p.total_ms = 1234;
        p.downtime_ms = 45;
        p.pages_transferred = 300000;
        p.zero_pages = 200000;
        p.rarp_sent = 1;
        p.checksum = 0x0123456789abcdefull;
        ctl_progress_summary(buf, sizeof(buf), &p);
        assert_string_equal(buf, "completed in 1.2 s: downtime 45 ms, 300000 pages (200000 zero), 4 rounds, 1 RARP, "
                                 "checksum 0x0123456789abcdef");

        /* Stop-and-copy: one round (the full pass). */
        struct ctl_progress s = { .state = "failed", .total_ms = 87, .pages_transferred = 12, .checksum = 0 };
        ctl_progress_summary(buf, sizeof(buf), &s);
        assert_string_equal(buf, "failed in 87 ms: downtime 0 ms, 12 pages (0 zero), 1 round, 0 RARPs, checksum "
                                 "0x0000000000000000");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_wide),
                cmocka_unit_test(test_compact_fits_80_columns),
                cmocka_unit_test(test_terse_drops_dirty_mib),
                cmocka_unit_test(test_cut_keeps_state_and_round),
                cmocka_unit_test(test_units),
                cmocka_unit_test(test_stop_and_copy),
                cmocka_unit_test(test_small_buffer),
                cmocka_unit_test(test_summary),
        };
        return cmocka_run_group_tests_name("ctl-progress", tests, NULL, NULL);
}

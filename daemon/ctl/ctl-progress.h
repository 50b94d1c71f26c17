/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The text of `migrate start --wait`: the progress line (redrawn in place
 * on a terminal, one line per state change otherwise) and the summary at
 * the end.  Plain formatting of figures, no bus and no JSON, so that the
 * exact text is tested on its own (tests/ctl/test-progress.c).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The figures of a migration as the Vm's properties give them. */
struct ctl_progress {
        const char *state; /* MigrationState */
        bool live;         /* pre-copy: rounds, remaining pages, rates and expected downtime mean something */
        uint64_t page_size;
        uint64_t round; /* 0: the full pass */
        uint64_t pages_total, pages_transferred, pages_remaining, zero_pages;
        uint64_t dirty_rate; /* pages/s */
        uint64_t bandwidth;  /* bytes/s */
        uint64_t expected_downtime_ms, downtime_ms, total_ms;
        uint64_t rarp_sent;
        uint64_t checksum;
};

/*
 * The progress line, without a newline, at most `width` columns (0: no
 * limit).  The wide form when it fits:
 *   "active  round 3  512.0/1024.0 MiB  4096 pages left  dirty 1200 pages/s
 *    (4.7 MiB/s)  bw 110.2 MiB/s  downtime ~45 ms" (one line)
 * else the compact form (79 columns here):
 *   "active r3 512.0/1024.0MiB left 4096 dirty 1200/s 4.7MiB/s bw 110.2MiB/s dt 45ms"
 * else the compact form without the dirty rate in MiB/s, else that cut at
 * `width`: the state and the round come first, so they always show.
 * Without `live` only the state and the transfer.  Returns the length.
 */
size_t ctl_progress_line(char *buf, size_t len, const struct ctl_progress *p, unsigned width);

/*
 * The summary once the migration ended, without a newline:
 *   "completed in 1.2 s: downtime 45 ms, 262144 pages (200000 zero), 4 rounds, 0 RARPs, checksum 0x..."
 * Rounds count the full pass: a stop-and-copy migration has one.
 */
size_t ctl_progress_summary(char *buf, size_t len, const struct ctl_progress *p);

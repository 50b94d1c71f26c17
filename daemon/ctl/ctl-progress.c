/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The progress line and the summary of `migrate start --wait` (see
 * ctl-progress.h).  Sizes are MiB (binary, as --max-bandwidth's suffixes),
 * page counts are pages of the VM's PageSize.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "ctl-progress.h"

#define MIB 1048576.0

/* A line built by appends; what does not fit is cut, never overflows. */
struct line {
        char *buf;
        size_t len, used;
};

static void __attribute__((format(printf, 2, 3))) add(struct line *l, const char *fmt, ...) {
        if (l->len == 0 || l->used >= l->len - 1)
                return;
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(l->buf + l->used, l->len - l->used, fmt, ap);
        va_end(ap);
        if (n > 0)
                l->used += (size_t) n < l->len - l->used ? (size_t) n : l->len - l->used - 1;
}

/* MiB with one decimal while that stays short (under 10000), whole MiB above. */
static void format_mib(char *buf, size_t len, double bytes) {
        double mib = bytes / MIB;
        snprintf(buf, len, mib < 9999.95 ? "%.1f" : "%.0f", mib);
}

enum form {
        FORM_WIDE,
        FORM_COMPACT,
        FORM_TERSE, /* compact without the dirty rate in MiB/s */
};

static void build_line(struct line *l, const struct ctl_progress *p, enum form form) {
        uint64_t page = p->page_size ? p->page_size : 4096;
        bool wide = form == FORM_WIDE;
        char done[32], total[32], dirty[32], bw[32];

        format_mib(done, sizeof(done), (double) p->pages_transferred * (double) page);
        format_mib(total, sizeof(total), (double) p->pages_total * (double) page);
        format_mib(dirty, sizeof(dirty), (double) p->dirty_rate * (double) page);
        format_mib(bw, sizeof(bw), (double) p->bandwidth);

        add(l, "%s", p->state && *p->state ? p->state : "unknown");
        if (p->live)
                add(l, wide ? "  round %" PRIu64 : " r%" PRIu64, p->round);
        add(l, wide ? "  %s/%s MiB" : " %s/%sMiB", done, total);
        if (!p->live)
                return;
        add(l, wide ? "  %" PRIu64 " pages left" : " left %" PRIu64, p->pages_remaining);
        add(l, wide ? "  dirty %" PRIu64 " pages/s" : " dirty %" PRIu64 "/s", p->dirty_rate);
        if (form != FORM_TERSE)
                add(l, wide ? " (%s MiB/s)" : " %sMiB/s", dirty);
        add(l, wide ? "  bw %s MiB/s" : " bw %sMiB/s", bw);
        add(l, wide ? "  downtime ~%" PRIu64 " ms" : " dt %" PRIu64 "ms", p->expected_downtime_ms);
}

size_t ctl_progress_line(char *buf, size_t len, const struct ctl_progress *p, unsigned width) {
        static const enum form forms[] = { FORM_WIDE, FORM_COMPACT, FORM_TERSE };
        struct line l = { buf, len, 0 };

        if (len == 0)
                return 0;
        for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
                l.used = 0;
                buf[0] = 0;
                build_line(&l, p, forms[i]);
                if (width == 0 || l.used <= width)
                        return l.used;
        }
        /* Even the terse form is too wide: cut it (the state and round come first). */
        buf[width] = 0;
        return width;
}

size_t ctl_progress_summary(char *buf, size_t len, const struct ctl_progress *p) {
        struct line l = { buf, len, 0 };
        uint64_t rounds = p->round + 1;

        if (len == 0)
                return 0;
        buf[0] = 0;
        add(&l, "%s in ", p->state && *p->state ? p->state : "unknown");
        if (p->total_ms < 1000)
                add(&l, "%" PRIu64 " ms", p->total_ms);
        else
                add(&l, "%.1f s", (double) p->total_ms / 1000.0);
        add(&l,
            ": downtime %" PRIu64 " ms, %" PRIu64 " pages (%" PRIu64 " zero), %" PRIu64 " round%s, %" PRIu64
            " RARP%s, checksum 0x%016" PRIx64,
            p->downtime_ms, p->pages_transferred, p->zero_pages, rounds, rounds == 1 ? "" : "s", p->rarp_sent,
            p->rarp_sent == 1 ? "" : "s", p->checksum);
        return l.used;
}

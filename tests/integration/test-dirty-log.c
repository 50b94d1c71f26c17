/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * VM-level dirty logging (migrate/logging.h) against real back-ends.
 *
 * The synthetic guest records, outside guest memory, every page the device
 * provably wrote (used ring entries, used->idx, the received bytes of each
 * receive buffer).  The migration bitmap filled by vhm_logging_harvest() must
 * be a superset of that record: a page the device wrote and the log never
 * reported would be sent stale to the destination.  Every test counts the
 * missed pages and requires none, over many harvests while DPDK testpmd
 * writes the guest's memory concurrently: echoed traffic on one and four
 * queue pairs, a log resize in the middle of the stream, a receive-ring
 * flood, logging switched off and on again; then virtiofsd (no traffic), and
 * the migration blockers of a back-end that cannot share a log.
 *
 * Because a ring workload rewrites the same pages over and over, a bitmap
 * that only accumulates would hide a page lost once.  So the tests play the
 * migration's page sender too: at a harvest in the middle of a run every
 * page in the bitmap is "sent" (cleared, as a sender does); at the end, each
 * page the device wrote must be dirty again in the bitmap (it was rewritten
 * after the send, so only what the log reported since can account for it).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "log/bitmap.h"
#include "migrate/blockers.h"
#include "migrate/device.h"
#include "migrate/logging.h"
#include "migrate/vm.h"
#include "proto/vhost-user.h"
#include "tests/backend/test-backend.h"
#include "tests/common/check.h"
#include "tests/common/clock.h"
#include "tests/common/fd-count.h"
#include "tests/common/guest-device.h"
#include "tests/common/real-backends.h"
#include "daemon/guest/guest.h"

#define TOTAL_FRAMES   100000u /* over all queue pairs */
#define HARVEST_EVERY  2000u   /* frames between two harvests */
#define RUN_TIMEOUT_MS 120000
#define FLOOD_MS       3000u
#define PAGE           4096u

/* The guest's default 64 MiB: 16384 pages, 256 log words. */
#define GUEST_LOG_BYTES ((VHM_GUEST_DEFAULT_MEM / PAGE + 63) / 64 * 8)

/* The memory hot-added in the middle of a run: 2 MiB at 4 GiB. */
#define HOTPLUG_GPA       (UINT64_C(4) << 30)
#define HOTPLUG_SIZE      (UINT64_C(2) << 20)
#define HOTPLUG_LOG_BYTES (((HOTPLUG_GPA + HOTPLUG_SIZE) / PAGE + 63) / 64 * 8)

/* ---- small helpers ------------------------------------------------------- */

static struct vhm_guest_stats guest_stats(const struct vhm_guest *g) {
        struct vhm_guest_stats s;
        assert_int_equal(vhm_guest_get_stats(g, VHM_GUEST_ALL_QPS, &s), 0);
        return s;
}

static void print_stats(const char *what, const struct vhm_guest_stats *s) {
        printf("  %-16s sent %" PRIu64 " received %" PRIu64 " lost %" PRIu64 " corrupted %" PRIu64
               " duplicated %" PRIu64 " other %" PRIu64 " bad_used %" PRIu64 "\n",
               what, s->sent, s->received, s->lost, s->corrupted, s->duplicated, s->other, s->bad_used);
        fflush(stdout);
}

/* ---- per-test fixture: whatever a failed test left running is stopped ---------- */

struct fixture {
        struct real_backend b;
        pid_t tb_pid[2]; /* test back-ends, 0 once reaped */
};

static int fixture_setup(void **state) {
        struct fixture *f = calloc(1, sizeof(*f));
        if (!f)
                return -1;
        real_backend_init(&f->b);
        *state = f;
        return 0;
}

static int fixture_teardown(void **state) {
        struct fixture *f = *state;
        stop_backend(&f->b); /* a no-op when the test stopped it */
        for (unsigned i = 0; i < 2; i++)
                if (f->tb_pid[i] > 0)
                        (void) tb_stop(f->tb_pid[i]);
        free(f);
        return 0;
}

/* ---- a guest, its VM, one device and the VM's logging ---------------------- */

struct rig {
        struct vhm_guest *g;
        struct vhm_vm *vm;
        struct vhm_device *dev;
        struct vhm_logging *lg;
        unsigned nqp;
        int hotplug_fd;         /* memory added in the middle of a run, or -1 */
        struct real_backend *b; /* testpmd, for diagnostics */
};

static uint64_t net_features(unsigned nqp) {
        uint64_t f = vhm_guest_driver_features();
        if (nqp > 1)
                f |= VHU_BIT(VHU_VF_NET_MQ);
        return f;
}

/* Guest memory, the VM holding it, a device whose queues are the guest's rings, and logging for the VM. */
static void rig_new(struct rig *r, unsigned nqp, const char *socket, uint64_t features) {
        memset(r, 0, sizeof(*r));
        r->nqp = nqp;
        r->hotplug_fd = -1;
        struct vhm_guest_config gc = { .queue_pairs = nqp };
        GD_CHECK(guest_vm_new("dirtylog", &gc, &r->g, &r->vm));
        assert_int_equal(vhm_guest_mem_size(r->g), VHM_GUEST_DEFAULT_MEM);
        struct vhm_device_config cfg = {
                .socket = socket,
                .features = features,
                .queue_pairs = nqp,
                .timeout_ms = 5000,
        };
        GD_CHECK(guest_device_new(r->vm, r->g, &cfg, &r->dev, NULL));
        assert_int_equal(vhm_logging_new(r->vm, &r->lg), 0);
        LOG_CHECK(r->lg, vhm_logging_add_device(r->lg, r->dev));
}

/* Connect, start the rings, tell the guest driver what was negotiated. */
static void rig_start_device(struct rig *r) {
        DEV_CHECK(r->dev, vhm_device_connect(r->dev));
        DEV_CHECK(r->dev, vhm_device_start(r->dev));
        assert_int_equal(vhm_device_state(r->dev), VHM_DEVICE_RUNNING);
        assert_int_equal(vhm_guest_set_features(r->g, vhm_device_acked_features(r->dev)), 0);
}

static void rig_start_logging(struct rig *r) {
        LOG_CHECK(r->lg, vhm_logging_start(r->lg));
        assert_true(vhm_logging_active(r->lg));
        assert_true(vhm_device_logging(r->dev));
        assert_int_equal(vhm_logging_log_size(r->lg), GUEST_LOG_BYTES);
        /* LOG_ALL went to the back-end with the features. */
        assert_true(vhm_device_acked_features(r->dev) & VHU_BIT(VHU_VF_LOG_ALL));
        assert_int_equal(vhm_device_state(r->dev), VHM_DEVICE_RUNNING);
}

static void rig_free(struct rig *r) {
        vhm_logging_free(r->lg);
        vhm_device_free(r->dev);
        vhm_vm_free(r->vm);
        vhm_guest_free(r->g);
        if (r->hotplug_fd >= 0)
                close(r->hotplug_fd);
        memset(r, 0, sizeof(*r));
}

/* A net device on testpmd with nqp queue pairs, running, with logging on. */
static void dpdk_rig(struct rig *r, struct real_backend *b, unsigned nqp, unsigned flags) {
        assert_true(backend_available(TESTPMD_BIN));
        assert_int_equal(start_testpmd(b, nqp, flags), 0);
        rig_new(r, nqp, b->socket, net_features(nqp));
        r->b = b;
        rig_start_device(r);
        struct vhm_blockers bl;
        vhm_logging_blockers(r->lg, &bl);
        assert_int_equal(bl.n, 0);
        rig_start_logging(r);
}

/* ---- the migration's page sender ------------------------------------------------ */

struct sender {
        uint8_t *ever; /* one byte per guest page: sent at least once */
        uint64_t npages;
        unsigned sends;
        uint64_t pages_sent; /* sum over the sends */
        uint64_t outside;    /* dirty pages past guest memory (the device never writes there) */
};

static void sender_init(struct sender *snd, const struct rig *r) {
        memset(snd, 0, sizeof(*snd));
        snd->npages = vhm_guest_mem_size(r->g) / PAGE;
        snd->ever = calloc(snd->npages, 1);
        assert_non_null(snd->ever);
}

static void sender_fini(struct sender *snd) {
        free(snd->ever);
        snd->ever = NULL;
}

/* Sends every dirty page: walks the bitmap's ranges and clears each, as a page sender does. */
static void sender_send(struct sender *snd, struct vhm_bitmap *bm) {
        struct vhm_bitmap_iter it;
        uint64_t first, count;
        vhm_bitmap_iter_init(&it, bm, 0);
        while (vhm_bitmap_iter_next(&it, &first, &count)) {
                for (uint64_t p = first; p < first + count; p++) {
                        if (p < snd->npages)
                                snd->ever[p] = 1;
                        else
                                snd->outside++;
                }
                snd->pages_sent += count;
                vhm_bitmap_clear_range(bm, first, count);
        }
        snd->sends++;
}

/* Distinct pages harvested over the whole run: sent at some point, or dirty now. */
static uint64_t pages_ever_harvested(const struct sender *snd, const struct vhm_bitmap *bm) {
        uint64_t n = 0;
        for (uint64_t p = 0; p < snd->npages; p++)
                n += snd->ever[p] || vhm_bitmap_test(bm, p);
        return n;
}

/* When traffic stalls: is testpmd still there, and what did it say last? */
static void backend_diagnostics(struct rig *r) {
        if (!r->b)
                return;
        pid_t pid = r->b->pid;
        bool gone = backend_exited(r->b, 0);
        fprintf(stderr, "testpmd (pid %d) %s; the end of its log %s:\n", (int) pid, gone ? "has exited" : "is running",
                r->b->log);
        FILE *f = fopen(r->b->log, "re");
        if (!f)
                return;
        char lines[16][256];
        unsigned n = 0;
        while (fgets(lines[n % 16], sizeof(lines[0]), f))
                n++;
        fclose(f);
        for (unsigned i = n > 16 ? n - 16 : 0; i < n; i++)
                fprintf(stderr, "  | %s", lines[i % 16]);
}

/* ---- harvesting while the guest runs ----------------------------------------- */

struct harvester {
        struct vhm_logging *lg;
        struct vhm_guest *g;
        unsigned qp;   /* whose sent frames count (or VHM_GUEST_ALL_QPS) */
        uint64_t next; /* harvest once this many frames were sent ... */
        uint64_t last; /* ... up to (excluding) this many */
        unsigned harvests;
        uint64_t pages; /* sum of the new pages of every harvest */
        /* Optional: right after the harvest at `send_at` frames, every dirty page is sent. */
        uint64_t send_at;
        struct sender *sender;
};

static void harvester_init(struct harvester *h, struct rig *r, uint64_t first, uint64_t last) {
        memset(h, 0, sizeof(*h));
        h->lg = r->lg;
        h->g = r->g;
        h->qp = VHM_GUEST_ALL_QPS;
        h->next = first;
        h->last = last;
}

static int harvest_once(struct harvester *h) {
        uint64_t n = 0;
        int rc = vhm_logging_harvest(h->lg, &n);
        if (rc < 0) {
                fprintf(stderr, "harvest %u: %s\n", h->harvests + 1, vhm_logging_error(h->lg));
                return rc;
        }
        h->harvests++;
        h->pages += n;
        return 0;
}

/* vhm_guest_run_until's step: runs between rounds while frames are in flight. */
static int harvest_step(void *opaque) {
        struct harvester *h = opaque;
        struct vhm_guest_stats s;
        int rc = vhm_guest_get_stats(h->g, h->qp, &s);
        if (rc < 0)
                return rc;
        if (s.sent >= h->next && h->next < h->last) {
                rc = harvest_once(h);
                if (rc < 0)
                        return rc;
                if (h->sender && h->next == h->send_at)
                        sender_send(h->sender, vhm_logging_bitmap(h->lg));
                while (h->next <= s.sent)
                        h->next += HARVEST_EVERY;
        }
        return 0;
}

/*
 * Send `frames` frames over queue pair qp, or over all of them evenly
 * (VHM_GUEST_ALL_QPS), echoed by testpmd, with the harvester as the step.
 * Returns once every frame came back: nothing is in flight then.
 */
static void run_traffic_on(struct rig *r, unsigned qp, uint64_t frames, struct harvester *h) {
        struct vhm_guest_run_opts opts = { .step = h ? harvest_step : NULL, .opaque = h };
        unsigned nqp = qp == VHM_GUEST_ALL_QPS ? r->nqp : 1;
        uint64_t per_qp = frames / nqp;
        assert_int_equal(per_qp * nqp, frames);
        if (h)
                h->qp = qp;
        int rc = vhm_guest_run_until(r->g, qp, per_qp, RUN_TIMEOUT_MS, &opts);
        if (rc < 0) {
                struct vhm_guest_stats s = guest_stats(r->g);
                print_stats("when it failed:", &s);
                backend_diagnostics(r);
                fail_msg("vhm_guest_run_until(%" PRIu64 "): %s; device %s: %s; logging: %s", per_qp, strerror(-rc),
                         vhm_device_state_name(vhm_device_state(r->dev)), vhm_device_error(r->dev),
                         vhm_logging_error(r->lg));
        }
}

static void run_traffic(struct rig *r, uint64_t frames, struct harvester *h) {
        run_traffic_on(r, VHM_GUEST_ALL_QPS, frames, h);
}

/* ---- the check: the device-written record against the migration bitmap ------ */

struct page_check {
        const struct vhm_bitmap *bm;
        const uint8_t *only; /* when not NULL: the pages to look at (one byte per page) */
        uint64_t only_npages;
        bool quiet; /* a page missing is expected: do not list it */
        uint64_t written;
        uint64_t missed; /* written, not dirty in the bitmap now */
        uint64_t first_missed[8];
};

static int check_page(uint64_t page, void *opaque) {
        struct page_check *c = opaque;
        if (c->only && (page >= c->only_npages || !c->only[page]))
                return 0;
        c->written++;
        if (!vhm_bitmap_test(c->bm, page)) {
                if (c->missed < 8)
                        c->first_missed[c->missed] = page;
                c->missed++;
        }
        return 0;
}

/*
 * Every page in the guest's device-written record (or those of them in
 * `only`) against the migration bitmap as it is now.
 */
static struct page_check check_pages(const struct rig *r, const uint8_t *only, uint64_t only_npages, bool quiet) {
        struct page_check c = { .bm = vhm_logging_bitmap(r->lg), .only = only, .only_npages = only_npages };
        assert_non_null(c.bm);
        assert_int_equal(vhm_guest_for_each_device_written_page(r->g, check_page, &c), 0);
        for (uint64_t i = 0; !quiet && i < c.missed && i < 8; i++)
                fprintf(stderr, "  missed page %" PRIu64 " (gpa 0x%" PRIx64 ")\n", c.first_missed[i],
                        c.first_missed[i] * PAGE);
        return c;
}

static struct page_check check_record(const struct rig *r) {
        return check_pages(r, NULL, 0, false);
}

/* Pages of the record neither sent at some point nor dirty now: lost over the whole run. */
static uint64_t missed_over_run(const struct rig *r, const struct sender *snd) {
        uint8_t *never = calloc(snd->npages, 1);
        assert_non_null(never);
        for (uint64_t p = 0; p < snd->npages; p++)
                never[p] = !snd->ever[p];
        struct page_check c = check_pages(r, never, snd->npages, false);
        free(never);
        return c.missed;
}

/*
 * The pages a device certainly wrote once every slot of every ring was used
 * at least once and every receive buffer filled: each queue's used ring
 * entries and used->idx, and the first `rx_bytes` of every receive buffer.
 */
static void mark_qp_pages(const struct rig *r, unsigned qp, uint32_t rx_bytes, uint8_t *seen) {
        for (unsigned q = 2 * qp; q < 2 * qp + 2; q++) {
                struct vhm_guest_queue_layout l;
                assert_int_equal(vhm_guest_queue_layout(r->g, q, &l), 0);
                seen[(l.used_gpa + 2) / PAGE] = 1; /* used->idx */
                for (uint64_t a = l.used_gpa + 4; a < l.used_gpa + 4 + 8ull * l.num; a += 8)
                        seen[a / PAGE] = 1; /* used->ring[] */
                if (!l.is_rx)
                        continue;
                for (unsigned id = 0; id < l.num; id++) {
                        uint64_t start = l.buf_gpa + (uint64_t) id * l.buf_size;
                        for (uint64_t p = start / PAGE; p <= (start + rx_bytes - 1) / PAGE; p++)
                                seen[p] = 1;
                }
        }
}

static uint8_t *qp_pages(const struct rig *r, unsigned qp, uint32_t rx_bytes) {
        uint8_t *seen = calloc(vhm_guest_mem_size(r->g) / PAGE, 1);
        assert_non_null(seen);
        mark_qp_pages(r, qp, rx_bytes, seen);
        return seen;
}

static uint64_t count_marked(const uint8_t *seen, uint64_t npages) {
        uint64_t n = 0;
        for (uint64_t p = 0; p < npages; p++)
                n += seen[p];
        return n;
}

static uint64_t expected_pages(const struct rig *r, uint32_t rx_bytes) {
        uint64_t npages = vhm_guest_mem_size(r->g) / PAGE;
        uint8_t *seen = calloc(npages, 1);
        assert_non_null(seen);
        for (unsigned qp = 0; qp < r->nqp; qp++)
                mark_qp_pages(r, qp, rx_bytes, seen);
        uint64_t n = 0;
        for (uint64_t p = 0; p < npages; p++)
                n += seen[p];
        free(seen);
        return n;
}

static void report(const char *what, uint64_t frames, unsigned harvests, uint64_t written, uint64_t harvested,
                   uint64_t missed) {
        printf("  %s: frames %" PRIu64 ", harvests %u, pages written by the device %" PRIu64
               ", pages harvested %" PRIu64 ", missed %" PRIu64 "\n",
               what, frames, harvests, written, harvested, missed);
        fflush(stdout);
}

/* ---- 1, 2: echoed traffic, many harvests --------------------------------------- */

/* Header (12 bytes with VERSION_1) and the guest's default 128-byte frame. */
#define ECHO_RX_BYTES (12u + VHM_GUEST_DEFAULT_FRAME)
/* The sender sends everything at this harvest: 10,000 frames (dozens of ring cycles) follow it. */
#define SEND_AT (TOTAL_FRAMES - 5 * HARVEST_EVERY)

/*
 * switched: testpmd is declared to switch logs under its queue locks, so
 * every harvest is double-buffered (SET_LOG_BASE to the other log, then the
 * old one read without atomics) while frames flow.
 */
static void zero_missed_pages(struct real_backend *b, unsigned nqp, bool switched) {
        int fds_before = count_open_fds();
        struct rig r;
        dpdk_rig(&r, b, nqp, 0);
        if (switched)
                LOG_CHECK(r.lg, vhm_logging_set_log_switch_locked(r.lg, r.dev, true));
        struct sender snd;
        sender_init(&snd, &r);

        /* What counts starts now: logging is on. */
        vhm_guest_reset_device_written_pages(r.g);
        struct harvester h;
        harvester_init(&h, &r, HARVEST_EVERY, TOTAL_FRAMES);
        h.send_at = SEND_AT;
        h.sender = &snd;
        run_traffic(&r, TOTAL_FRAMES, &h);
        /* Traffic has stopped: every frame came back and was consumed.  Then the final harvest. */
        struct vhm_guest_stats s = guest_stats(r.g);
        assert_echoed(&s, TOTAL_FRAMES);
        assert_int_equal(h.harvests, TOTAL_FRAMES / HARVEST_EVERY - 1);
        assert_int_equal(snd.sends, 1);
        sleep_ms(20);
        assert_int_equal(harvest_once(&h), 0);
        assert_int_equal(h.harvests, TOTAL_FRAMES / HARVEST_EVERY);

        /* Every page the device wrote is dirty again since the send, and none was lost over the run. */
        struct vhm_bitmap *bm = vhm_logging_bitmap(r.lg);
        struct page_check c = check_record(&r);
        uint64_t lost = missed_over_run(&r, &snd);
        uint64_t harvested = pages_ever_harvested(&snd, bm);
        report(nqp == 1 ? (switched ? "1 queue pair, double-buffered" : "1 queue pair")
                        : (switched ? "4 queue pairs, double-buffered" : "4 queue pairs"),
               s.sent, h.harvests, c.written, harvested, c.missed);
        /* Every harvest switched logs, or none did (the device is testpmd's, connected throughout). */
        assert_int_equal(vhm_logging_switched_harvests(r.lg), switched ? h.harvests : 0);
        assert_int_equal(c.missed, 0);
        assert_int_equal(lost, 0);
        assert_int_equal(c.written, expected_pages(&r, ECHO_RX_BYTES));
        /* The log reported exactly the pages the device wrote: no more, no fewer. */
        assert_int_equal(harvested, c.written);
        assert_int_equal(vhm_bitmap_count(bm), c.written);
        assert_int_equal(snd.pages_sent, c.written);
        assert_int_equal(snd.outside, 0);
        /* The harvests' new pages add up: everything up to the send, then everything since. */
        assert_int_equal(h.pages, snd.pages_sent + vhm_bitmap_count(bm));

        LOG_CHECK(r.lg, vhm_logging_stop(r.lg));
        assert_false(vhm_logging_active(r.lg));
        assert_false(vhm_device_logging(r.dev));
        assert_false(vhm_device_acked_features(r.dev) & VHU_BIT(VHU_VF_LOG_ALL));
        assert_int_equal(vhm_device_state(r.dev), VHM_DEVICE_RUNNING);
        sender_fini(&snd);
        rig_free(&r);
        stop_backend(b);
        assert_int_equal(count_open_fds(), fds_before);
}

static void dpdk_one_queue_pair_zero_missed(void **state) {
        zero_missed_pages(&((struct fixture *) *state)->b, 1, false);
}

static void dpdk_four_queue_pairs_zero_missed(void **state) {
        zero_missed_pages(&((struct fixture *) *state)->b, 4, false);
}

static void dpdk_one_queue_pair_double_buffered_zero_missed(void **state) {
        zero_missed_pages(&((struct fixture *) *state)->b, 1, true);
}

static void dpdk_four_queue_pairs_double_buffered_zero_missed(void **state) {
        zero_missed_pages(&((struct fixture *) *state)->b, 4, true);
}

/* ---- 3: the log grows in the middle of the stream ----------------------------- */

struct hotplug {
        struct rig *r;
        uint64_t size_before, size_after;
        /* Optional: right after the switch, these pages must be dirty (they can only come from the old log). */
        const uint8_t *old_pages;
        uint64_t old_expected, old_missed;
};

/* Memory hot-added at 4 GiB, far past the log's end: the log must grow. */
static int hotplug_and_resize(void *opaque) {
        struct hotplug *hp = opaque;
        struct rig *r = hp->r;
        hp->size_before = vhm_logging_log_size(r->lg);
        /* Sealed against shrinking, as the VM requires of a memfd. */
        r->hotplug_fd = memfd_create("hotplug", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (r->hotplug_fd < 0 || ftruncate(r->hotplug_fd, (off_t) HOTPLUG_SIZE) < 0 ||
            fcntl(r->hotplug_fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0)
                return -errno;
        struct vhm_region_spec region = { .fd = r->hotplug_fd, .guest_phys_addr = HOTPLUG_GPA, .size = HOTPLUG_SIZE };
        int rc = vhm_vm_add_region(r->vm, &region);
        if (rc < 0) {
                fprintf(stderr, "vhm_vm_add_region: %s\n", vhm_vm_error(r->vm));
                return rc;
        }
        rc = vhm_logging_resize(r->lg);
        if (rc < 0) {
                fprintf(stderr, "vhm_logging_resize: %s\n", vhm_logging_error(r->lg));
                return rc;
        }
        hp->size_after = vhm_logging_log_size(r->lg);
        if (hp->old_pages) {
                const struct vhm_bitmap *bm = vhm_logging_bitmap(r->lg);
                uint64_t npages = vhm_guest_mem_size(r->g) / PAGE;
                for (uint64_t p = 0; p < npages; p++) {
                        if (!hp->old_pages[p])
                                continue;
                        hp->old_expected++;
                        if (!vhm_bitmap_test(bm, p)) {
                                if (hp->old_missed < 8)
                                        fprintf(stderr, "  page %" PRIu64 " logged before the switch is missing\n", p);
                                hp->old_missed++;
                        }
                }
        }
        return 0;
}

struct resize_step {
        struct harvester *h;
        struct hotplug *hp;
        uint64_t at; /* frames of the harvester's queue pair */
        bool done;
        uint64_t sent_then;
};

/* Harvests as usual; once, with frames in flight, hot-adds memory and resizes the log. */
static int resize_step(void *opaque) {
        struct resize_step *rs = opaque;
        if (!rs->done) {
                struct vhm_guest_stats s;
                int rc = vhm_guest_get_stats(rs->h->g, rs->h->qp, &s);
                if (rc < 0)
                        return rc;
                if (s.sent >= rs->at) {
                        rs->done = true;
                        rs->sent_then = s.sent;
                        rc = hotplug_and_resize(rs->hp);
                        if (rc < 0)
                                return rc;
                }
        }
        return harvest_step(rs->h);
}

#define RESIZE_QP_FRAMES (TOTAL_FRAMES / 2)

/*
 * Two queue pairs, so that what is logged before the switch is not simply
 * logged again after it:
 *   1. queue pair 0 runs 50,000 frames; at the harvest at 48,000 everything
 *      is sent, so every page it writes in its last 2,000 frames (all of its
 *      pages: the ring turns over ~8 times) is dirty only in the current log,
 *      which nobody harvests again before the switch;
 *   2. queue pair 1 runs 50,000 frames; after 1,000 of them, frames in
 *      flight, memory is hot-added at 4 GiB and the log resized.  Right then
 *      every page of queue pair 0 must be dirty: only the old log, harvested
 *      by the resize, can have them.  At its harvest at 10,000 everything is
 *      sent again, so at the end every page of queue pair 1 must be dirty: only
 *      the new log can have them.
 */
static void dpdk_resize_mid_stream_zero_missed(void **state) {
        struct real_backend *b = &((struct fixture *) *state)->b;
        int fds_before = count_open_fds();
        struct rig r;
        dpdk_rig(&r, b, 2, 0);
        struct sender snd;
        sender_init(&snd, &r);
        struct vhm_bitmap *bm;
        uint64_t npages = vhm_guest_mem_size(r.g) / PAGE;
        vhm_guest_reset_device_written_pages(r.g);

        /* 1. Queue pair 0, into the first log. */
        struct harvester h0;
        harvester_init(&h0, &r, HARVEST_EVERY, RESIZE_QP_FRAMES);
        h0.send_at = RESIZE_QP_FRAMES - HARVEST_EVERY;
        h0.sender = &snd;
        run_traffic_on(&r, 0, RESIZE_QP_FRAMES, &h0);
        assert_int_equal(h0.harvests, RESIZE_QP_FRAMES / HARVEST_EVERY - 1);
        assert_int_equal(snd.sends, 1);
        /* Nothing harvested since the send: queue pair 0's last pages are in the log only. */
        assert_int_equal(vhm_bitmap_count(vhm_logging_bitmap(r.lg)), 0);

        /* 2. Queue pair 1, with the switch after 1,000 frames. */
        uint8_t *qp0 = qp_pages(&r, 0, ECHO_RX_BYTES);
        uint8_t *qp1 = qp_pages(&r, 1, ECHO_RX_BYTES);
        struct hotplug hp = { .r = &r, .old_pages = qp0 };
        struct harvester h1;
        harvester_init(&h1, &r, HARVEST_EVERY, RESIZE_QP_FRAMES);
        h1.send_at = 5 * HARVEST_EVERY;
        h1.sender = &snd;
        h1.qp = 1;
        struct resize_step rs = { .h = &h1, .hp = &hp, .at = HARVEST_EVERY / 2 };
        struct vhm_guest_run_opts opts = { .step = resize_step, .opaque = &rs };
        int rc = vhm_guest_run_until(r.g, 1, RESIZE_QP_FRAMES, RUN_TIMEOUT_MS, &opts);
        if (rc < 0) {
                backend_diagnostics(&r);
                fail_msg("queue pair 1: %s; device: %s; logging: %s", strerror(-rc), vhm_device_error(r.dev),
                         vhm_logging_error(r.lg));
        }

        struct vhm_guest_stats s = guest_stats(r.g), s0, s1;
        assert_int_equal(vhm_guest_get_stats(r.g, 0, &s0), 0);
        assert_int_equal(vhm_guest_get_stats(r.g, 1, &s1), 0);
        assert_echoed(&s0, RESIZE_QP_FRAMES);
        assert_echoed(&s1, RESIZE_QP_FRAMES);
        assert_echoed(&s, TOTAL_FRAMES);
        /* The log grew, while frames were in flight, and traffic went on after it. */
        assert_true(rs.done);
        assert_int_equal(hp.size_before, GUEST_LOG_BYTES);
        assert_int_equal(hp.size_after, HOTPLUG_LOG_BYTES);
        assert_true(hp.size_after > hp.size_before);
        assert_int_equal(vhm_logging_log_size(r.lg), HOTPLUG_LOG_BYTES);
        assert_int_equal(vhm_vm_region_count(r.vm), 2);
        assert_true(rs.sent_then >= rs.at && rs.sent_then < rs.at + 64);
        uint64_t after = s1.sent - rs.sent_then;
        assert_true(after > RESIZE_QP_FRAMES - HARVEST_EVERY);
        /* The bitmap covers the new memory too. */
        bm = vhm_logging_bitmap(r.lg);
        assert_int_equal(vhm_bitmap_npages(bm), (HOTPLUG_GPA + HOTPLUG_SIZE) / PAGE);
        /* Right after the switch, every page queue pair 0 wrote was there: the old log was harvested. */
        assert_int_equal(hp.old_expected, count_marked(qp0, npages));
        assert_int_equal(hp.old_missed, 0);

        assert_int_equal(h1.harvests, RESIZE_QP_FRAMES / HARVEST_EVERY - 1);
        assert_int_equal(snd.sends, 2);
        sleep_ms(20);
        assert_int_equal(harvest_once(&h1), 0);
        unsigned harvests = h0.harvests + h1.harvests;

        /* Queue pair 1's pages were all written after the second send: the new log had them. */
        struct page_check c1 = check_pages(&r, qp1, npages, false);
        assert_int_equal(c1.written, count_marked(qp1, npages));
        assert_int_equal(c1.missed, 0);
        /* ... and only them: queue pair 0 wrote nothing since. */
        assert_int_equal(vhm_bitmap_count(bm), c1.written);
        /* (Queue pair 0's pages were sent at the second send and not written since: not dirty now.) */
        struct page_check c = check_pages(&r, NULL, 0, true);
        assert_int_equal(c.missed, count_marked(qp0, npages));
        uint64_t lost = missed_over_run(&r, &snd);
        uint64_t harvested = pages_ever_harvested(&snd, bm);
        report("resize mid-stream", s.sent, harvests, c.written, harvested, lost);
        printf("  log %" PRIu64 " -> %" PRIu64 " bytes after %" PRIu64 " frames of queue pair 1 (%" PRIu64
               " after it); %" PRIu64 " pages of queue pair 0 found in the old log at the switch\n",
               hp.size_before, hp.size_after, rs.sent_then, after, hp.old_expected);
        assert_int_equal(lost, 0);
        assert_int_equal(c.written, expected_pages(&r, ECHO_RX_BYTES));
        assert_int_equal(harvested, c.written);
        assert_int_equal(snd.outside, 0);
        /* The device never wrote the hot-added memory. */
        struct vhm_bitmap_iter it;
        uint64_t first, count;
        vhm_bitmap_iter_init(&it, bm, HOTPLUG_GPA / PAGE);
        assert_false(vhm_bitmap_iter_next(&it, &first, &count));

        LOG_CHECK(r.lg, vhm_logging_stop(r.lg));
        assert_int_equal(vhm_logging_log_size(r.lg), 0);
        free(qp0);
        free(qp1);
        sender_fini(&snd);
        rig_free(&r);
        stop_backend(b);
        assert_int_equal(count_open_fds(), fds_before);
}

/* ---- 4: receive-ring flood ------------------------------------------------- */

/* net_null's frames: 64 bytes after the 12-byte header. */
#define FLOOD_RX_BYTES (12u + 64u)

static void dpdk_rx_flood_zero_missed(void **state) {
        struct real_backend *b = &((struct fixture *) *state)->b;
        int fds_before = count_open_fds();
        struct rig r;
        dpdk_rig(&r, b, 1, TESTPMD_NULL_PORT);
        struct sender snd;
        sender_init(&snd, &r);

        vhm_guest_reset_device_written_pages(r.g);
        struct harvester h;
        harvester_init(&h, &r, HARVEST_EVERY, UINT64_MAX);
        /* The guest only posts and recycles receive buffers; testpmd fills them as fast as they come. */
        assert_int_equal(vhm_guest_post_rx(r.g, 0), (int) VHM_GUEST_DEFAULT_RING);
        uint64_t consumed = 0, start = now_ms(), polls = 0, elapsed;
        while ((elapsed = now_ms() - start) < FLOOD_MS) {
                int n = vhm_guest_poll_rx(r.g, 0, 0);
                if (n < 0)
                        fail_msg("vhm_guest_poll_rx: %s", strerror(-n));
                polls++;
                consumed += (uint64_t) n;
                if (consumed >= h.next) {
                        assert_int_equal(harvest_once(&h), 0);
                        /* Half-way, the sender sends it all: the second half must dirty every page again. */
                        if (snd.sends == 0 && elapsed >= FLOOD_MS / 2)
                                sender_send(&snd, vhm_logging_bitmap(r.lg));
                        while (h.next <= consumed)
                                h.next += HARVEST_EVERY;
                }
        }
        /* Stop recycling: the ring runs dry and testpmd can write nothing more.  Then the final harvest. */
        sleep_ms(50);
        assert_int_equal(harvest_once(&h), 0);

        struct vhm_guest_stats s = guest_stats(r.g);
        print_stats("flood:", &s);
        /* Nothing the guest sent; every consumed buffer held a frame of testpmd's null port. */
        assert_int_equal(s.sent, 0);
        assert_int_equal(s.received, 0);
        assert_int_equal(s.corrupted, 0);
        assert_int_equal(s.bad_used, 0);
        assert_int_equal(s.other, consumed);
        if (consumed <= 10u * HARVEST_EVERY)
                backend_diagnostics(&r);
        assert_true(consumed > 10u * HARVEST_EVERY);
        assert_true(h.harvests >= 10);
        assert_int_equal(snd.sends, 1);

        struct vhm_bitmap *bm = vhm_logging_bitmap(r.lg);
        struct page_check c = check_record(&r);
        uint64_t lost = missed_over_run(&r, &snd);
        uint64_t harvested = pages_ever_harvested(&snd, bm);
        report("rx flood", consumed, h.harvests, c.written, harvested, c.missed);
        printf("  flood: %" PRIu64 " polls in %u ms, %.2f Mframes/s\n", polls, FLOOD_MS,
               (double) consumed / FLOOD_MS / 1000.0);
        assert_int_equal(c.missed, 0);
        assert_int_equal(lost, 0);
        /* Every receive buffer and used-ring slot was used; the transmit ring never was. */
        uint8_t *rx_only = qp_pages(&r, 0, FLOOD_RX_BYTES);
        struct vhm_guest_queue_layout tx;
        assert_int_equal(vhm_guest_queue_layout(r.g, 1, &tx), 0);
        for (uint64_t a = tx.used_gpa + 2; a < tx.used_gpa + 4 + 8ull * tx.num; a += 2)
                rx_only[a / PAGE] = 0;
        struct page_check rx = check_pages(&r, rx_only, snd.npages, false);
        assert_int_equal(rx.written, count_marked(rx_only, snd.npages));
        assert_int_equal(c.written, rx.written);
        free(rx_only);
        /* The log reported exactly the pages the device wrote. */
        assert_int_equal(harvested, c.written);
        assert_int_equal(vhm_bitmap_count(bm), c.written);
        assert_int_equal(h.pages, snd.pages_sent + vhm_bitmap_count(bm));

        sender_fini(&snd);
        rig_free(&r);
        stop_backend(b);
        assert_int_equal(count_open_fds(), fds_before);
}

/* ---- 5: logging off, then on again --------------------------------------------- */

#define ONOFF_FRAMES 20000u

static void dpdk_logging_off_then_on(void **state) {
        struct real_backend *b = &((struct fixture *) *state)->b;
        int fds_before = count_open_fds();
        struct rig r;
        dpdk_rig(&r, b, 1, 0);

        /* First period: logged. */
        vhm_guest_reset_device_written_pages(r.g);
        struct harvester h;
        harvester_init(&h, &r, HARVEST_EVERY, ONOFF_FRAMES);
        run_traffic(&r, ONOFF_FRAMES, &h);
        sleep_ms(20);
        assert_int_equal(harvest_once(&h), 0);
        struct page_check c1 = check_record(&r);
        uint64_t harvested = vhm_bitmap_count(vhm_logging_bitmap(r.lg));
        report("logged period 1", ONOFF_FRAMES, h.harvests, c1.written, harvested, c1.missed);
        assert_int_equal(c1.missed, 0);
        assert_int_equal(c1.written, expected_pages(&r, ECHO_RX_BYTES));
        assert_int_equal(harvested, c1.written);
        assert_int_equal(h.harvests, ONOFF_FRAMES / HARVEST_EVERY);

        /* Off: the device keeps running and traffic still flows. */
        LOG_CHECK(r.lg, vhm_logging_stop(r.lg));
        assert_false(vhm_logging_active(r.lg));
        assert_false(vhm_device_logging(r.dev));
        assert_int_equal(vhm_logging_log_size(r.lg), 0);
        assert_false(vhm_device_acked_features(r.dev) & VHU_BIT(VHU_VF_LOG_ALL));
        assert_int_equal(vhm_device_state(r.dev), VHM_DEVICE_RUNNING);
        uint64_t n = 0;
        assert_int_equal(vhm_logging_harvest(r.lg, &n), -ENODATA);
        /* Stopping twice is a no-op. */
        assert_int_equal(vhm_logging_stop(r.lg), 0);
        run_traffic(&r, ONOFF_FRAMES, NULL);
        struct vhm_guest_stats s = guest_stats(r.g);
        assert_echoed(&s, 2 * ONOFF_FRAMES);
        assert_int_equal(vhm_device_poll_connection(r.dev), 1);
        assert_int_equal(vhm_device_state(r.dev), VHM_DEVICE_RUNNING);
        /* The bitmap kept what was harvested, and nothing came in while logging was off. */
        assert_int_equal(vhm_bitmap_count(vhm_logging_bitmap(r.lg)), harvested);
        printf("  logging off: %u frames echoed\n", ONOFF_FRAMES);

        /* On again, with a clean bitmap so the second period proves itself. */
        vhm_bitmap_clear_all(vhm_logging_bitmap(r.lg));
        rig_start_logging(&r);
        /* Nothing ran since: the fresh log is empty. */
        assert_int_equal(vhm_logging_harvest(r.lg, &n), 0);
        assert_int_equal(n, 0);
        vhm_guest_reset_device_written_pages(r.g);
        harvester_init(&h, &r, 2 * ONOFF_FRAMES + HARVEST_EVERY, 3 * ONOFF_FRAMES);
        run_traffic(&r, ONOFF_FRAMES, &h);
        s = guest_stats(r.g);
        assert_echoed(&s, 3 * ONOFF_FRAMES);
        assert_int_equal(h.harvests, ONOFF_FRAMES / HARVEST_EVERY - 1);
        sleep_ms(20);
        assert_int_equal(harvest_once(&h), 0);
        struct page_check c2 = check_record(&r);
        harvested = vhm_bitmap_count(vhm_logging_bitmap(r.lg));
        report("logged period 2", ONOFF_FRAMES, h.harvests, c2.written, harvested, c2.missed);
        assert_int_equal(c2.missed, 0);
        assert_int_equal(c2.written, expected_pages(&r, ECHO_RX_BYTES));
        assert_int_equal(harvested, c2.written);
        assert_int_equal(harvested, h.pages);
        assert_int_equal(h.harvests, ONOFF_FRAMES / HARVEST_EVERY);

        rig_free(&r); /* stops logging itself */
        stop_backend(b);
        assert_int_equal(count_open_fds(), fds_before);
}

/* ---- 6: virtiofsd ----------------------------------------------------------- */

static void virtiofsd_start_resize_stop(void **state) {
        struct real_backend *b = &((struct fixture *) *state)->b;
        assert_true(backend_available(VIRTIOFSD_BIN));
        int fds_before = count_open_fds();
        assert_int_equal(start_virtiofsd(b), 0);
        struct rig r;
        /* Two rings (hiprio and one request queue) laid out like a queue pair; no traffic. */
        rig_new(&r, 1, b->socket, VHU_BIT(VHU_VF_VERSION_1));
        DEV_CHECK(r.dev, vhm_device_connect(r.dev));
        DEV_CHECK(r.dev, vhm_device_start(r.dev));
        assert_false(vhm_device_protocol_features(r.dev) & VHU_BIT(VHU_PF_RARP));
        assert_true(vhm_device_protocol_features(r.dev) & VHU_BIT(VHU_PF_LOG_SHMFD));
        struct vhm_blockers bl;
        vhm_logging_blockers(r.lg, &bl);
        assert_int_equal(bl.n, 0);

        /* virtiofsd answers SET_LOG_BASE with 8 bytes. */
        rig_start_logging(&r);
        uint64_t n = 1;
        LOG_CHECK(r.lg, vhm_logging_harvest(r.lg, &n));
        assert_int_equal(n, 0);

        struct hotplug hp = { .r = &r };
        assert_int_equal(hotplug_and_resize(&hp), 0);
        assert_int_equal(hp.size_before, GUEST_LOG_BYTES);
        assert_int_equal(hp.size_after, HOTPLUG_LOG_BYTES);
        /* A second resize with nothing changed is a no-op. */
        LOG_CHECK(r.lg, vhm_logging_resize(r.lg));
        assert_int_equal(vhm_logging_log_size(r.lg), HOTPLUG_LOG_BYTES);
        LOG_CHECK(r.lg, vhm_logging_harvest(r.lg, &n));
        assert_int_equal(n, 0);

        LOG_CHECK(r.lg, vhm_logging_stop(r.lg));
        assert_false(vhm_logging_active(r.lg));
        assert_int_equal(vhm_logging_log_size(r.lg), 0);
        assert_int_equal(vhm_bitmap_count(vhm_logging_bitmap(r.lg)), 0);
        /* virtiofsd took all of it and is still there. */
        assert_int_equal(vhm_device_poll_connection(r.dev), 1);
        assert_int_equal(vhm_device_state(r.dev), VHM_DEVICE_RUNNING);
        assert_true(b->pid > 0 && !backend_exited(b, 0));
        printf("  virtiofsd: log %" PRIu64 " -> %" PRIu64 " bytes, stopped, still connected\n", hp.size_before,
               hp.size_after);

        rig_free(&r);
        /* It serves one connection and leaves when it closes. */
        assert_true(backend_exited(b, 10000));
        stop_backend(b);
        assert_int_equal(count_open_fds(), fds_before);
}

/* ---- 7: blockers --------------------------------------------------------------- */

static const char LOG_SHMFD_REASON[] =
        "Migration disabled: vhost-user backend lacks VHOST_USER_PROTOCOL_F_LOG_SHMFD feature.";

static void blocker_without_log_shmfd(void **state) {
        struct fixture *f = *state;
        int fds_before = count_open_fds();
        char dir[] = "/tmp/vhostmig-blockers-XXXXXX";
        assert_non_null(mkdtemp(dir));
        char good_sock[64], bad_sock[64];
        snprintf(good_sock, sizeof(good_sock), "%s/good.sock", dir);
        snprintf(bad_sock, sizeof(bad_sock), "%s/no-log-shmfd.sock", dir);

        /* Two test back-ends: a complete one, and one that does not offer LOG_SHMFD. */
        struct tb_config good, bad;
        tb_config_init(&good);
        tb_config_init(&bad);
        bad.no_log_shmfd = true;
        assert_int_equal(tb_spawn_listen(&good, good_sock, &f->tb_pid[0]), 0);
        assert_int_equal(tb_spawn_listen(&bad, bad_sock, &f->tb_pid[1]), 0);

        struct rig r;
        rig_new(&r, 1, good_sock, net_features(1));
        struct vhm_device_config cfg = {
                .socket = bad_sock,
                .features = net_features(1),
                .queue_pairs = 1,
                .timeout_ms = 5000,
        };
        struct vhm_device *bad_dev;
        assert_int_equal(vhm_device_new(r.vm, &cfg, &bad_dev), 0);
        LOG_CHECK(r.lg, vhm_logging_add_device(r.lg, bad_dev));

        /* Nothing is known before the back-ends were asked. */
        struct vhm_blockers bl;
        vhm_logging_blockers(r.lg, &bl);
        assert_int_equal(bl.n, 0);

        DEV_CHECK(r.dev, vhm_device_connect(r.dev));
        DEV_CHECK(bad_dev, vhm_device_connect(bad_dev));
        assert_false(vhm_device_protocol_features(bad_dev) & VHU_BIT(VHU_PF_LOG_SHMFD));
        assert_true(vhm_device_protocol_features(r.dev) & VHU_BIT(VHU_PF_LOG_SHMFD));

        vhm_logging_blockers(r.lg, &bl);
        assert_int_equal(bl.n, 1);
        char expected[VHM_BLOCKER_LEN];
        snprintf(expected, sizeof(expected), "%s: %s", bad_sock, LOG_SHMFD_REASON);
        assert_string_equal(bl.reason[0], expected);
        printf("  blocker: %s\n", bl.reason[0]);

        /* Logging refuses to start, saying why; nothing was handed out. */
        assert_int_equal(vhm_logging_start(r.lg), -EPERM);
        const char *err = vhm_logging_error(r.lg);
        printf("  start: %s\n", err);
        assert_non_null(strstr(err, expected));
        assert_null(strstr(err, good_sock));
        assert_false(vhm_logging_active(r.lg));
        assert_int_equal(vhm_logging_log_size(r.lg), 0);
        assert_false(vhm_device_logging(r.dev));
        assert_false(vhm_device_logging(bad_dev));

        /* The device goes: so does its blocker, and logging starts for the rest of the VM. */
        vhm_logging_remove_device(r.lg, bad_dev);
        vhm_logging_blockers(r.lg, &bl);
        assert_int_equal(bl.n, 0);
        LOG_CHECK(r.lg, vhm_logging_start(r.lg));
        assert_true(vhm_logging_active(r.lg));
        assert_int_equal(vhm_logging_log_size(r.lg), GUEST_LOG_BYTES);
        assert_true(vhm_device_logging(r.dev));
        LOG_CHECK(r.lg, vhm_logging_stop(r.lg));

        vhm_device_free(bad_dev);
        rig_free(&r);
        /* Each served its one connection and left when it closed. */
        for (unsigned i = 0; i < 2; i++)
                assert_tb_exits_cleanly(&f->tb_pid[i], 5000);
        unlink(good_sock);
        unlink(bad_sock);
        assert_int_equal(rmdir(dir), 0);
        assert_int_equal(count_open_fds(), fds_before);
}

int main(void) {
#define TEST(t) cmocka_unit_test_setup_teardown(t, fixture_setup, fixture_teardown)
        const struct CMUnitTest tests[] = {
                TEST(dpdk_one_queue_pair_zero_missed),
                TEST(dpdk_four_queue_pairs_zero_missed),
                TEST(dpdk_resize_mid_stream_zero_missed),
                TEST(dpdk_rx_flood_zero_missed),
                TEST(dpdk_logging_off_then_on),
                TEST(virtiofsd_start_resize_stop),
                TEST(blocker_without_log_shmfd),
                TEST(dpdk_one_queue_pair_double_buffered_zero_missed),
                TEST(dpdk_four_queue_pairs_double_buffered_zero_missed),
        };
#undef TEST
        return cmocka_run_group_tests(tests, NULL, NULL);
}

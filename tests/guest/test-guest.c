/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests of the synthetic guest against the in-process loopback device.
 * Usage: test-guest [traffic|notify|faults|migrate|attach|pages|dirty]  (no
 * argument runs every group).  Every test checks that it leaves the process
 * with exactly the file descriptors it found.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <linux/virtio_config.h>
#include <linux/virtio_net.h>

#include "tests/common/fd-count.h"
#include "daemon/guest/guest-internal.h"
#include "daemon/guest/guest.h"
#include "loopback.h"
#include "migrate/stream.h"
#include "migrate/vm.h"

#define SMALL_MEM      (4ull << 20)
#define RUN_TIMEOUT_MS 30000

/* ---------------------------------------------------------------- helpers */

static int fds_at_start;

static int fd_setup(void **state) {
        (void) state;
        fds_at_start = count_open_fds();
        return fds_at_start < 0 ? -1 : 0;
}

static int fd_teardown(void **state) {
        (void) state;
        assert_int_equal(count_open_fds(), fds_at_start);
        return 0;
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, fd_setup, fd_teardown)

static struct vhm_guest *mk_guest(unsigned nqp, unsigned ring, unsigned frame_len, uint64_t mem) {
        struct vhm_guest_config c = {
                .mem_size = mem,
                .queue_pairs = nqp,
                .ring_size = ring,
                .frame_len = frame_len,
        };
        struct vhm_guest *g = NULL;

        assert_int_equal(vhm_guest_create(&c, &g), 0);
        assert_non_null(g);
        return g;
}

static struct lb_dev *mk_dev(struct vhm_guest *g, const struct lb_config *cfg) {
        struct lb_dev *d = NULL;

        assert_int_equal(lb_create(g, cfg, &d), 0);
        return d;
}

static void assert_clean(struct vhm_guest *g, unsigned qp, uint64_t n) {
        struct vhm_guest_stats s;

        assert_int_equal(vhm_guest_get_stats(g, qp, &s), 0);
        assert_int_equal(s.sent, n);
        assert_int_equal(s.received, n);
        assert_int_equal(s.tx_seq, n);
        assert_int_equal(s.rx_expected, n);
        assert_int_equal(s.lost, 0);
        assert_int_equal(s.corrupted, 0);
        assert_int_equal(s.duplicated, 0);
        assert_int_equal(s.rarp_seen, 0);
        assert_int_equal(s.other, 0);
        assert_int_equal(s.bad_used, 0);
}

static int run_stepped(struct vhm_guest *g, unsigned qp, uint64_t n, struct lb_dev *d, int timeout) {
        struct vhm_guest_run_opts o = { .step = lb_step, .opaque = d };

        return vhm_guest_run_until(g, qp, n, timeout, &o);
}

/* A migrated image: a fresh memfd (sealable, as a VMM makes it) holding a
 * byte copy of guest memory. */
static int copy_memory(const struct vhm_guest *g) {
        const uint8_t *p = vhm_guest_mem_base(g);
        uint64_t size = vhm_guest_mem_size(g), off = 0;
        int fd = memfd_create("vhm-test-copy", MFD_CLOEXEC | MFD_ALLOW_SEALING);

        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, (off_t) size), 0);
        while (off < size) {
                ssize_t n = pwrite(fd, p + off, size - off, (off_t) off);

                assert_true(n > 0);
                off += (uint64_t) n;
        }
        return fd;
}

static uint64_t kicks(struct vhm_guest *g, unsigned queue) {
        struct vhm_guest_queue_layout l;
        uint64_t v = 0;

        assert_int_equal(vhm_guest_queue_layout(g, queue, &l), 0);
        if (read(l.kick_fd, &v, sizeof(v)) != sizeof(v))
                assert_int_equal(errno, EAGAIN);
        return v;
}

/* ---------------------------------------------------------------- traffic */

static bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen) {
        return a < b + blen && b < a + alen;
}

static void test_create_layout(void **state) {
        struct vhm_guest *g = mk_guest(0, 0, 0, 0);
        struct vhm_guest_queue_layout l[VHM_GUEST_MAX_QUEUES];
        uint64_t page = VHM_GUEST_PAGE_SIZE;
        unsigned nq;

        (void) state;
        assert_int_equal(vhm_guest_mem_size(g), 64ull << 20);
        assert_int_equal(vhm_guest_queue_pairs(g), 1);
        assert_int_equal(vhm_guest_ring_size(g), 256);
        assert_true(fcntl(vhm_guest_mem_fd(g), F_GETFD) & FD_CLOEXEC);
        nq = 2 * vhm_guest_queue_pairs(g);
        for (unsigned q = 0; q < nq; q++) {
                assert_int_equal(vhm_guest_queue_layout(g, q, &l[q]), 0);
                assert_int_equal(l[q].is_rx, q % 2 == 0);
                assert_int_equal(l[q].used_len, 6 + 8 * 256);
                assert_int_equal(l[q].used_gpa % page, 0);
                assert_int_equal(l[q].desc_gpa % page, 0);
                assert_int_equal(l[q].buf_gpa % page, 0);
                assert_int_equal(l[q].used_uaddr - (uintptr_t) vhm_guest_mem_base(g), l[q].used_gpa);
                assert_true(l[q].buf_gpa + 256ull * l[q].buf_size <= vhm_guest_mem_size(g));
                assert_true(fcntl(l[q].kick_fd, F_GETFL) & O_NONBLOCK);
                assert_true(fcntl(l[q].call_fd, F_GETFD) & FD_CLOEXEC);
                assert_true(l[q].buf_size >= 12 + 1514);
        }
        /* The used ring's pages hold nothing else. */
        for (unsigned q = 0; q < nq; q++) {
                uint64_t upages = (l[q].used_len + page - 1) / page * page;

                for (unsigned r = 0; r < nq; r++) {
                        assert_false(ranges_overlap(l[q].used_gpa, upages, l[r].desc_gpa, 16 * 256));
                        assert_false(ranges_overlap(l[q].used_gpa, upages, l[r].avail_gpa, 6 + 2 * 256));
                        assert_false(ranges_overlap(l[q].used_gpa, upages, l[r].buf_gpa, 256 * 2048));
                        assert_true(r == q || !ranges_overlap(l[q].used_gpa, upages, l[r].used_gpa, upages));
                }
                assert_true(l[q].desc_gpa >= page); /* state area first */
        }
        assert_int_equal(vhm_guest_queue_layout(g, nq, &l[0]), -EINVAL);
        vhm_guest_free(g);
        vhm_guest_free(NULL);
}

static void test_create_rejects(void **state) {
        struct vhm_guest_config c = { 0 };
        struct vhm_guest *g = NULL;

        (void) state;
        c.ring_size = 300;
        assert_int_equal(vhm_guest_create(&c, &g), -EINVAL);
        c = (struct vhm_guest_config){ .queue_pairs = 9 };
        assert_int_equal(vhm_guest_create(&c, &g), -EINVAL);
        c = (struct vhm_guest_config){ .frame_len = 63 };
        assert_int_equal(vhm_guest_create(&c, &g), -EINVAL);
        c = (struct vhm_guest_config){ .frame_len = 1515 };
        assert_int_equal(vhm_guest_create(&c, &g), -EINVAL);
        c = (struct vhm_guest_config){ .mem_size = 4096 * 3 + 1 };
        assert_int_equal(vhm_guest_create(&c, &g), -EINVAL);
        c = (struct vhm_guest_config){ .mem_size = 1 << 20, .queue_pairs = 8 };
        assert_int_equal(vhm_guest_create(&c, &g), -ENOSPC);
        c = (struct vhm_guest_config){ .mac = { 0x01, 0, 0, 0, 0, 1 } };
        assert_int_equal(vhm_guest_create(&c, &g), -EINVAL);
        assert_null(g);

        g = mk_guest(1, 64, 0, SMALL_MEM);
        assert_int_equal(vhm_guest_set_features(g, 1ull << VIRTIO_F_RING_PACKED), -ENOTSUP);
        assert_int_equal(vhm_guest_set_features(g, 1ull << VIRTIO_F_IN_ORDER), -ENOTSUP);
        assert_int_equal(vhm_guest_set_features(g, vhm_guest_driver_features()), 0);
        assert_int_equal(vhm_guest_set_frame_len(g, 40), -EINVAL);
        assert_int_equal(vhm_guest_tx(g, 1, 1), -EINVAL);
        vhm_guest_free(g);
}

static void run_threaded(unsigned nqp, const struct lb_config *cfg, uint64_t features, unsigned flags) {
        struct vhm_guest *g = mk_guest(nqp, 256, 0, 0);
        struct vhm_guest_run_opts o = { .flags = flags };
        struct lb_dev *d;

        assert_int_equal(vhm_guest_set_features(g, features), 0);
        d = mk_dev(g, cfg);
        assert_int_equal(lb_start(d), 0);
        assert_int_equal(vhm_guest_run_until(g, VHM_GUEST_ALL_QPS, 10000, RUN_TIMEOUT_MS, &o), 0);
        lb_stop(d);
        assert_int_equal(lb_error(d), 0);
        for (unsigned qp = 0; qp < nqp; qp++)
                assert_clean(g, qp, 10000);
        if (flags & VHM_GUEST_RUN_WAIT_CALL)
                assert_true(lb_calls(d) > 0);
        else /* busy polling asks for no calls; EVENT_IDX may cost one */
                assert_true(lb_calls(d) <= (features & (1ull << VIRTIO_RING_F_EVENT_IDX) ? 2 * nqp : 0));
        lb_free(d);
        vhm_guest_free(g);
}

static void test_10k_1qp(void **state) {
        const struct lb_config cfg = { .no_notify = true };

        (void) state;
        run_threaded(1, &cfg, 1ull << VIRTIO_F_VERSION_1, 0);
}

static void test_10k_4qp(void **state) {
        const struct lb_config cfg = { .no_notify = true };

        (void) state;
        run_threaded(4, &cfg, 1ull << VIRTIO_F_VERSION_1, 0);
}

static void test_10k_4qp_event_idx_busy(void **state) {
        const struct lb_config cfg = { .event_idx = true };

        (void) state;
        run_threaded(4, &cfg, vhm_guest_driver_features(), 0);
}

static void test_10k_4qp_wait_call(void **state) {
        const struct lb_config cfg = { .wait_kick = true };

        (void) state;
        run_threaded(4, &cfg, 1ull << VIRTIO_F_VERSION_1, VHM_GUEST_RUN_WAIT_CALL);
}

static void test_10k_4qp_event_idx(void **state) {
        const struct lb_config cfg = { .wait_kick = true, .event_idx = true };

        (void) state;
        run_threaded(4, &cfg, vhm_guest_driver_features(), VHM_GUEST_RUN_WAIT_CALL);
}

static void test_stepped_frame_sizes(void **state) {
        struct vhm_guest *g = mk_guest(2, 128, 64, SMALL_MEM);
        struct lb_dev *d = mk_dev(g, NULL);

        (void) state;
        assert_int_equal(run_stepped(g, VHM_GUEST_ALL_QPS, 5000, d, RUN_TIMEOUT_MS), 0);
        assert_int_equal(vhm_guest_set_frame_len(g, 1514), 0);
        assert_int_equal(run_stepped(g, VHM_GUEST_ALL_QPS, 5000, d, RUN_TIMEOUT_MS), 0);
        assert_clean(g, 0, 10000);
        assert_clean(g, 1, 10000);
        lb_free(d);
        vhm_guest_free(g);
}

/* Legacy device without MRG_RXBUF: a 10-byte header. */
static void test_legacy_header(void **state) {
        const struct lb_config cfg = { .hdr_len = 10 };
        struct vhm_guest *g = mk_guest(1, 64, 200, SMALL_MEM);
        struct lb_dev *d;

        (void) state;
        assert_int_equal(vhm_guest_set_features(g, 0), 0);
        d = mk_dev(g, &cfg);
        assert_int_equal(run_stepped(g, 0, 1000, d, RUN_TIMEOUT_MS), 0);
        assert_clean(g, 0, 1000);
        lb_free(d);
        vhm_guest_free(g);
}

/* ---------------------------------------------------------------- notify */

static void test_no_notify_suppresses_kicks(void **state) {
        const struct lb_config cfg = { .no_notify = true };
        struct vhm_guest *g = mk_guest(1, 64, 0, SMALL_MEM);
        struct lb_dev *d = mk_dev(g, &cfg);

        (void) state;
        assert_int_equal(vhm_guest_post_rx(g, 0), 64);
        assert_int_equal(vhm_guest_tx(g, 0, 10), 10);
        assert_int_equal(kicks(g, 0), 0);
        assert_int_equal(kicks(g, 1), 0);
        assert_int_equal(lb_step(d), 10);
        assert_int_equal(vhm_guest_reclaim_tx(g, 0), 10);
        assert_int_equal(vhm_guest_poll_rx(g, 0, 0), 10);
        assert_clean(g, 0, 10);
        lb_free(d);
        vhm_guest_free(g);
}

static void test_kicks_without_suppression(void **state) {
        struct vhm_guest *g = mk_guest(1, 64, 0, SMALL_MEM);
        struct lb_dev *d = mk_dev(g, NULL);

        (void) state;
        assert_int_equal(vhm_guest_post_rx(g, 0), 64);
        assert_int_equal(kicks(g, 0), 1);
        assert_int_equal(vhm_guest_tx(g, 0, 10), 10);
        assert_int_equal(vhm_guest_tx(g, 0, 5), 5);
        assert_int_equal(kicks(g, 1), 2);
        assert_int_equal(vhm_guest_tx(g, 0, 0), 0); /* nothing new: no kick */
        assert_int_equal(kicks(g, 1), 0);
        lb_free(d);
        vhm_guest_free(g);
}

/* With EVENT_IDX the device's avail_event decides, not used->flags. */
static void test_event_idx_kicks(void **state) {
        const struct lb_config cfg = { .event_idx = true };
        struct vhm_guest *g = mk_guest(1, 64, 0, SMALL_MEM);
        struct lb_dev *d;

        (void) state;
        assert_int_equal(vhm_guest_set_features(g, vhm_guest_driver_features()), 0);
        d = mk_dev(g, &cfg);
        assert_int_equal(vhm_guest_post_rx(g, 0), 64);
        assert_int_equal(vhm_guest_tx(g, 0, 5), 5); /* crosses avail_event 0 */
        assert_int_equal(kicks(g, 1), 1);
        assert_int_equal(vhm_guest_tx(g, 0, 5), 5); /* device has not asked again */
        assert_int_equal(kicks(g, 1), 0);
        assert_int_equal(lb_step(d), 10); /* sets avail_event = 10 */
        assert_int_equal(vhm_guest_reclaim_tx(g, 0), 10);
        assert_int_equal(vhm_guest_tx(g, 0, 1), 1);
        assert_int_equal(kicks(g, 1), 1);
        assert_int_equal(vhm_guest_poll_rx(g, 0, 0), 10);
        assert_int_equal(lb_step(d), 1);
        assert_true(lb_calls(d) > 0); /* used_event honoured */
        lb_free(d);
        vhm_guest_free(g);
}

/* ---------------------------------------------------------------- faults */

struct fault_case {
        enum lb_fault fault;
        uint64_t lost, corrupted, duplicated, rarp, other, bad_used, received;
};

static void check_fault(const struct fault_case *fc) {
        struct vhm_guest *g = mk_guest(1, 256, 0, 0);
        struct lb_dev *d = mk_dev(g, NULL);
        struct vhm_guest_stats s;

        assert_int_equal(lb_inject(d, 0, fc->fault, 1234), 0);
        assert_int_equal(run_stepped(g, 0, 3000, d, RUN_TIMEOUT_MS), 0);
        assert_int_equal(vhm_guest_get_stats(g, 0, &s), 0);
        assert_int_equal(s.sent, 3000);
        assert_int_equal(s.received, fc->received);
        assert_int_equal(s.lost, fc->lost);
        assert_int_equal(s.corrupted, fc->corrupted);
        assert_int_equal(s.duplicated, fc->duplicated);
        assert_int_equal(s.rarp_seen, fc->rarp);
        assert_int_equal(s.other, fc->other);
        assert_int_equal(s.bad_used, fc->bad_used);
        lb_free(d);
        vhm_guest_free(g);
}

static void test_fault_drop(void **state) {
        const struct fault_case fc = { .fault = LB_FAULT_DROP, .lost = 1, .received = 2999 };

        (void) state;
        check_fault(&fc);
}

static void test_fault_corrupt(void **state) {
        const struct fault_case fc = { .fault = LB_FAULT_CORRUPT, .corrupted = 1, .received = 2999 };

        (void) state;
        check_fault(&fc);
}

static void test_fault_dup(void **state) {
        const struct fault_case fc = { .fault = LB_FAULT_DUP, .duplicated = 1, .received = 3000 };

        (void) state;
        check_fault(&fc);
}

static void test_fault_rarp(void **state) {
        const struct fault_case fc = { .fault = LB_FAULT_RARP, .rarp = 1, .received = 3000 };

        (void) state;
        check_fault(&fc);
}

static void test_fault_rarp_other(void **state) {
        const struct fault_case fc = { .fault = LB_FAULT_RARP_OTHER, .other = 1, .received = 3000 };

        (void) state;
        check_fault(&fc);
}

static void test_fault_bad_id(void **state) {
        const struct fault_case fc = { .fault = LB_FAULT_BAD_ID, .bad_used = 1, .received = 3000 };

        (void) state;
        check_fault(&fc);
}

/* Several faults on several queue pairs at once, each counted where it
 * happened; a thread plays the device. */
static void test_faults_mixed_threaded(void **state) {
        struct vhm_guest *g = mk_guest(4, 256, 0, 0);
        struct lb_dev *d = mk_dev(g, NULL);
        struct vhm_guest_stats s;

        (void) state;
        assert_int_equal(lb_inject(d, 0, LB_FAULT_DROP, 10), 0);
        assert_int_equal(lb_inject(d, 0, LB_FAULT_DROP, 11), 0);
        assert_int_equal(lb_inject(d, 1, LB_FAULT_CORRUPT, 500), 0);
        assert_int_equal(lb_inject(d, 1, LB_FAULT_DUP, 900), 0);
        assert_int_equal(lb_inject(d, 2, LB_FAULT_RARP, 0), 0);
        assert_int_equal(lb_inject(d, 3, LB_FAULT_DROP, 4000), 0);
        assert_int_equal(lb_inject(d, 3, LB_FAULT_CORRUPT, 4001), 0);
        assert_int_equal(lb_start(d), 0);
        assert_int_equal(vhm_guest_run_until(g, VHM_GUEST_ALL_QPS, 5000, RUN_TIMEOUT_MS, NULL), 0);
        lb_stop(d);
        assert_int_equal(vhm_guest_get_stats(g, 0, &s), 0);
        assert_int_equal(s.lost, 2);
        assert_int_equal(s.received, 4998);
        assert_int_equal(vhm_guest_get_stats(g, 1, &s), 0);
        assert_int_equal(s.corrupted, 1);
        assert_int_equal(s.duplicated, 1);
        assert_int_equal(s.lost, 0);
        assert_int_equal(s.received, 4999);
        assert_int_equal(vhm_guest_get_stats(g, 2, &s), 0);
        assert_int_equal(s.rarp_seen, 1);
        assert_int_equal(s.received, 5000);
        assert_int_equal(vhm_guest_get_stats(g, 3, &s), 0);
        assert_int_equal(s.lost, 1);
        assert_int_equal(s.corrupted, 1);
        assert_int_equal(s.received, 4998);
        assert_int_equal(vhm_guest_get_stats(g, VHM_GUEST_ALL_QPS, &s), 0);
        assert_int_equal(s.sent, 20000);
        assert_int_equal(s.lost, 3);
        assert_int_equal(s.corrupted, 2);
        lb_free(d);
        vhm_guest_free(g);
}

/* A corrupted last frame is still accounted for; a dropped one cannot be
 * told from a slow device, so the run times out. */
static void test_trailing_faults(void **state) {
        struct vhm_guest *g = mk_guest(1, 64, 0, SMALL_MEM);
        struct lb_dev *d = mk_dev(g, NULL);
        struct vhm_guest_stats s;

        (void) state;
        assert_int_equal(lb_inject(d, 0, LB_FAULT_CORRUPT, 99), 0);
        assert_int_equal(run_stepped(g, 0, 100, d, RUN_TIMEOUT_MS), 0);
        assert_int_equal(lb_inject(d, 0, LB_FAULT_DROP, 199), 0);
        assert_int_equal(run_stepped(g, 0, 100, d, 200), -ETIMEDOUT);
        assert_int_equal(vhm_guest_get_stats(g, 0, &s), 0);
        assert_int_equal(s.corrupted, 1);
        assert_int_equal(s.received, 198);
        assert_int_equal(s.lost, 0);
        assert_int_equal(s.rx_expected, 199);
        lb_free(d);
        vhm_guest_free(g);
}

/* A device claiming more used entries than were ever available. */
static void test_used_overrun(void **state) {
        struct vhm_guest *g = mk_guest(1, 64, 0, SMALL_MEM);
        struct vhm_guest_queue_layout l;
        struct vring_used *used;
        struct vhm_guest_stats s;

        (void) state;
        assert_int_equal(vhm_guest_queue_layout(g, 1, &l), 0);
        used = (struct vring_used *) (uintptr_t) l.used_uaddr;
        assert_int_equal(vhm_guest_tx(g, 0, 3), 3);
        used->idx = 4;
        assert_int_equal(vhm_guest_reclaim_tx(g, 0), -EPROTO);
        assert_int_equal(vhm_guest_get_stats(g, 0, &s), 0);
        assert_int_equal(s.bad_used, 1);
        vhm_guest_free(g);
}

/* ---------------------------------------------------------------- migrate */

static struct vhm_guest *migrate(struct vhm_guest *src, struct lb_dev *dsrc, struct lb_dev **ddst) {
        struct vhm_guest *dst = NULL;
        char err[256];
        int fd = copy_memory(src);

        assert_int_equal(vhm_guest_attach(fd, &dst, err, sizeof(err)), 0);
        close(fd);
        *ddst = mk_dev(dst, NULL);
        for (unsigned q = 0; q < 2 * vhm_guest_queue_pairs(src); q++)
                lb_set_base(*ddst, q, lb_get_base(dsrc, q));
        return dst;
}

static void test_migrate_quiesced(void **state) {
        struct vhm_guest *g = mk_guest(2, 256, 0, 0), *g2;
        struct lb_dev *d = mk_dev(g, NULL), *d2;
        struct vhm_guest_queue_layout a, b;

        (void) state;
        assert_int_equal(run_stepped(g, VHM_GUEST_ALL_QPS, 1000, d, RUN_TIMEOUT_MS), 0);
        g2 = migrate(g, d, &d2);
        lb_free(d);
        assert_int_equal(vhm_guest_queue_layout(g, 1, &a), 0);
        assert_int_equal(vhm_guest_queue_layout(g2, 1, &b), 0);
        assert_int_equal(a.used_gpa, b.used_gpa);
        assert_true(a.kick_fd != b.kick_fd);
        vhm_guest_free(g);
        assert_int_equal(run_stepped(g2, VHM_GUEST_ALL_QPS, 1000, d2, RUN_TIMEOUT_MS), 0);
        assert_clean(g2, 0, 2000);
        assert_clean(g2, 1, 2000);
        lb_free(d2);
        vhm_guest_free(g2);
}

/* Frames still in the TX ring, echoes not yet polled: the copy carries them
 * and the resumed guest sees one unbroken sequence. */
static void test_migrate_in_flight(void **state) {
        const struct lb_config slow = { .max_per_step = 7 };
        struct vhm_guest *g = mk_guest(1, 256, 300, 0), *g2;
        struct lb_dev *d = mk_dev(g, &slow), *d2;
        struct vhm_guest_stats s;
        uint16_t avail, used;

        (void) state;
        assert_int_equal(vhm_guest_post_rx(g, 0), 256);
        assert_int_equal(vhm_guest_tx(g, 0, 100), 100);
        assert_int_equal(lb_step(d), 7);
        assert_int_equal(vhm_guest_poll_rx(g, 0, 3), 3);
        g2 = migrate(g, d, &d2);
        lb_free(d);
        vhm_guest_free(g);
        assert_int_equal(vhm_guest_queue_indices(g2, 1, &avail, &used), 0);
        assert_int_equal(avail, 100);
        assert_int_equal(used, 7);
        assert_int_equal(run_stepped(g2, 0, 0, d2, RUN_TIMEOUT_MS), 0);
        assert_clean(g2, 0, 100);
        assert_int_equal(run_stepped(g2, 0, 5000, d2, RUN_TIMEOUT_MS), 0);
        assert_clean(g2, 0, 5100);
        assert_int_equal(vhm_guest_get_stats(g2, 0, &s), 0);
        assert_int_equal(s.tx_seq, 5100);
        lb_free(d2);
        vhm_guest_free(g2);
}

/* ---------------------------------------------------------------- attach */

typedef void (*corrupt_fn)(uint8_t *mem, struct vhm_gstate *st, const struct vhm_layout *lay);

static void c_magic(uint8_t *m, struct vhm_gstate *st, const struct vhm_layout *l) {
        (void) m, (void) l;
        st->magic ^= 1;
}

static void c_version(uint8_t *m, struct vhm_gstate *st, const struct vhm_layout *l) {
        (void) m, (void) l;
        st->version = 99;
}

static void c_qps(uint8_t *m, struct vhm_gstate *st, const struct vhm_layout *l) {
        (void) m, (void) l;
        st->queue_pairs = 9;
}

static void c_ring(uint8_t *m, struct vhm_gstate *st, const struct vhm_layout *l) {
        (void) m, (void) l;
        st->ring_size = 300;
}

static void c_ring_huge(uint8_t *m, struct vhm_gstate *st, const struct vhm_layout *l) {
        (void) m, (void) l;
        st->ring_size = 32768; /* valid virtio, but the layout overflows memory */
}

static void c_memsize(uint8_t *m, struct vhm_gstate *st, const struct vhm_layout *l) {
        (void) m, (void) l;
        st->mem_size *= 2;
}

static void c_frame(uint8_t *m, struct vhm_gstate *st, const struct vhm_layout *l) {
        (void) m, (void) l;
        st->frame_len = 5000;
}

static void c_features(uint8_t *m, struct vhm_gstate *st, const struct vhm_layout *l) {
        (void) m, (void) l;
        st->features |= 1ull << VIRTIO_F_RING_PACKED;
}

static void c_num_free(uint8_t *m, struct vhm_gstate *st, const struct vhm_layout *l) {
        (void) m, (void) l;
        st->q[1].num_free = (uint16_t) (st->ring_size + 1);
}

static void c_free_id(uint8_t *m, struct vhm_gstate *st, const struct vhm_layout *l) {
        (void) st;
        ((uint16_t *) (m + l->free_stack[1]))[0] = 0xffff;
}

static void c_free_dup(uint8_t *m, struct vhm_gstate *st, const struct vhm_layout *l) {
        uint16_t *fs = (uint16_t *) (m + l->free_stack[1]);

        (void) st;
        fs[1] = fs[0];
}

static void c_owner(uint8_t *m, struct vhm_gstate *st, const struct vhm_layout *l) {
        (void) st;
        m[l->owner[0] + 3] = 7;
}

static void c_owner_count(uint8_t *m, struct vhm_gstate *st, const struct vhm_layout *l) {
        (void) st;
        m[l->owner[0] + 3] ^= 1; /* flips posted <-> free */
}

static void c_next_avail(uint8_t *m, struct vhm_gstate *st, const struct vhm_layout *l) {
        (void) m, (void) l;
        st->q[1].next_avail += 1;
}

static void c_used_idx(uint8_t *m, struct vhm_gstate *st, const struct vhm_layout *l) {
        struct vring_used *u = (struct vring_used *) (m + l->used[0]);

        (void) st;
        u->idx = (uint16_t) (st->q[0].last_used + 300);
}

static void c_last_used(uint8_t *m, struct vhm_gstate *st, const struct vhm_layout *l) {
        (void) m, (void) l;
        st->q[1].last_used -= 200;
}

static void c_seq(uint8_t *m, struct vhm_gstate *st, const struct vhm_layout *l) {
        (void) m, (void) l;
        st->qp[0].rx_expected = st->qp[0].tx_seq + 1;
}

static void c_garbage(uint8_t *m, struct vhm_gstate *st, const struct vhm_layout *l) {
        (void) st;
        srand(42);
        for (uint64_t i = 0; i < l->state_end; i++)
                m[i] = (uint8_t) rand();
}

static void c_garbage_keep_magic(uint8_t *m, struct vhm_gstate *st, const struct vhm_layout *l) {
        struct vhm_gstate keep = *st;

        c_garbage(m, st, l);
        st->magic = keep.magic;
        st->version = keep.version;
        st->header_size = keep.header_size;
        st->mem_size = keep.mem_size;
}

/* A guest with traffic behind it, so the state is not all zeroes. */
static struct vhm_guest *busy_guest(void) {
        struct vhm_guest *g = mk_guest(1, 256, 0, SMALL_MEM);
        struct lb_dev *d = mk_dev(g, NULL);

        assert_int_equal(run_stepped(g, 0, 500, d, RUN_TIMEOUT_MS), 0);
        assert_int_equal(vhm_guest_tx(g, 0, 20), 20); /* leave some in flight */
        lb_free(d);
        return g;
}

static void expect_rejected(struct vhm_guest *g, corrupt_fn fn, const char *what) {
        struct vhm_guest *out = NULL;
        struct vhm_layout lay;
        char err[256] = "";
        int fd = copy_memory(g), fds;
        uint64_t size = vhm_guest_mem_size(g);
        uint8_t *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        int rc;

        assert_true(m != MAP_FAILED);
        assert_int_equal(vhm_layout_compute(1, 256, &lay), 0);
        fn(m, (struct vhm_gstate *) m, &lay);
        munmap(m, size);
        fds = count_open_fds();
        rc = vhm_guest_attach(fd, &out, err, sizeof(err));
        if (rc != -EBADMSG)
                fail_msg("%s: attach returned %d (%s)", what, rc, err);
        assert_null(out);
        assert_true(strlen(err) > 0);
        print_message("rejected %s: %s\n", what, err);
        assert_int_equal(count_open_fds(), fds);
        close(fd);
}

#define REJECT(fn) expect_rejected(g, fn, #fn)

static void test_attach_rejects_corruption(void **state) {
        struct vhm_guest *g = busy_guest();

        (void) state;
        REJECT(c_magic);
        REJECT(c_version);
        REJECT(c_qps);
        REJECT(c_ring);
        REJECT(c_ring_huge);
        REJECT(c_memsize);
        REJECT(c_frame);
        REJECT(c_features);
        REJECT(c_num_free);
        REJECT(c_free_id);
        REJECT(c_free_dup);
        REJECT(c_owner);
        REJECT(c_owner_count);
        REJECT(c_next_avail);
        REJECT(c_used_idx);
        REJECT(c_last_used);
        REJECT(c_seq);
        REJECT(c_garbage);
        REJECT(c_garbage_keep_magic);
        vhm_guest_free(g);
}

static void test_attach_bad_files(void **state) {
        struct vhm_guest *out = NULL;
        char err[256];
        int fd, p[2];

        (void) state;
        assert_int_equal(vhm_guest_attach(-1, &out, err, sizeof(err)), -EBADF);
        fd = memfd_create("empty", MFD_CLOEXEC);
        assert_int_equal(vhm_guest_attach(fd, &out, err, sizeof(err)), -EBADMSG);
        assert_int_equal(ftruncate(fd, 4096), 0);
        assert_int_equal(vhm_guest_attach(fd, &out, err, sizeof(err)), -EBADMSG);
        assert_int_equal(ftruncate(fd, 4097), 0);
        assert_int_equal(vhm_guest_attach(fd, &out, err, sizeof(err)), -EBADMSG);
        close(fd);
        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        assert_int_equal(vhm_guest_attach(p[0], &out, NULL, 0), -EBADMSG);
        close(p[0]);
        close(p[1]);
        assert_null(out);
}

/* A valid image attaches, and freeing it gives every descriptor back. */
static void test_attach_valid(void **state) {
        struct vhm_guest *g = busy_guest(), *g2 = NULL;
        struct vhm_guest_stats a, b;
        char err[256];
        int fd = copy_memory(g);

        (void) state;
        assert_int_equal(vhm_guest_attach(fd, &g2, err, sizeof(err)), 0);
        assert_int_equal(vhm_guest_get_stats(g, 0, &a), 0);
        assert_int_equal(vhm_guest_get_stats(g2, 0, &b), 0);
        assert_memory_equal(&a, &b, sizeof(a));
        assert_int_equal(vhm_guest_mem_size(g2), vhm_guest_mem_size(g));
        vhm_guest_free(g2);
        close(fd);
        vhm_guest_free(g);
}

/* The eventfds an incoming VMM gave its front-end before the memory came:
 * the attached driver kicks and waits on those very ones. */
struct efds {
        unsigned n;
        int kick[VHM_GUEST_MAX_QUEUES];
        int call[VHM_GUEST_MAX_QUEUES];
};

static void efds_new(struct efds *e, unsigned nqueues) {
        e->n = nqueues;
        for (unsigned q = 0; q < nqueues; q++) {
                e->kick[q] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
                e->call[q] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
                assert_true(e->kick[q] >= 0 && e->call[q] >= 0);
        }
}

static void efds_close(struct efds *e) {
        for (unsigned q = 0; q < e->n; q++) {
                close(e->kick[q]);
                close(e->call[q]);
        }
}

static uint64_t efd_read(int fd) {
        uint64_t v = 0;

        if (read(fd, &v, sizeof(v)) != sizeof(v))
                assert_int_equal(errno, EAGAIN);
        return v;
}

static void test_attach_given_eventfds(void **state) {
        struct vhm_guest *g = mk_guest(2, 64, 0, SMALL_MEM), *g2 = NULL;
        struct lb_dev *d = mk_dev(g, NULL), *d2;
        struct vhm_guest_queue_layout l;
        struct efds e;
        char err[256];
        uint64_t one = 1;
        int fd;

        (void) state;
        assert_int_equal(run_stepped(g, VHM_GUEST_ALL_QPS, 100, d, RUN_TIMEOUT_MS), 0);
        lb_free(d);
        fd = copy_memory(g);
        vhm_guest_free(g);
        efds_new(&e, 4);
        assert_int_equal(vhm_guest_attach_eventfds(fd, e.kick, e.call, e.n, &g2, err, sizeof(err)), 0);
        close(fd);
        /* Duplicates (ours to close), of the same eventfds: a kick is seen on
         * the VMM's fd, a call made on the VMM's fd reaches the driver's. */
        assert_int_equal(vhm_guest_queue_layout(g2, 3, &l), 0);
        assert_true(l.kick_fd != e.kick[3] && l.call_fd != e.call[3]);
        assert_int_equal(efd_read(e.kick[3]), 0);
        assert_true(vhm_guest_post_rx(g2, 1) >= 0);
        assert_int_equal(vhm_guest_tx(g2, 1, 5), 5);
        assert_true(efd_read(e.kick[3]) > 0);
        assert_int_equal(write(e.call[2], &one, sizeof(one)), sizeof(one));
        assert_int_equal(vhm_guest_queue_layout(g2, 2, &l), 0);
        assert_int_equal(efd_read(l.call_fd), 1);
        /* A device thread waking on kicks, a driver sleeping on calls: both
         * through the VMM's eventfds, the sequence goes on. */
        d2 = mk_dev(g2, &(struct lb_config){ .wait_kick = true });
        assert_int_equal(lb_start(d2), 0);
        struct vhm_guest_run_opts o = { .flags = VHM_GUEST_RUN_WAIT_CALL };
        assert_int_equal(vhm_guest_run_until(g2, VHM_GUEST_ALL_QPS, 1000, RUN_TIMEOUT_MS, &o), 0);
        lb_stop(d2);
        assert_int_equal(lb_error(d2), 0);
        assert_clean(g2, 0, 1100);
        assert_clean(g2, 1, 1105);
        lb_free(d2);
        vhm_guest_free(g2);
        efds_close(&e);
}

static void test_attach_eventfds_rejects(void **state) {
        struct vhm_guest *g = mk_guest(1, 64, 0, SMALL_MEM), *out = NULL;
        struct efds e;
        char err[256];
        int fd = copy_memory(g), p[2];

        (void) state;
        vhm_guest_free(g);
        efds_new(&e, 4);
        assert_int_equal(vhm_guest_attach_eventfds(fd, e.kick, e.call, 4, &out, err, sizeof(err)), -EBADMSG);
        assert_non_null(strstr(err, "2 queues, 4 eventfd pairs"));
        assert_int_equal(vhm_guest_attach_eventfds(fd, e.kick, NULL, 2, &out, err, sizeof(err)), -EINVAL);
        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        int kick[2] = { e.kick[0], p[0] }, call[2] = { e.call[0], -1 };
        assert_int_equal(vhm_guest_attach_eventfds(fd, kick, e.call, 2, &out, err, sizeof(err)), -EBADF);
        assert_non_null(strstr(err, "queue 1"));
        assert_int_equal(vhm_guest_attach_eventfds(fd, e.kick, call, 2, &out, err, sizeof(err)), -EBADF);
        assert_null(out);
        close(p[0]);
        close(p[1]);
        close(fd);
        efds_close(&e);
}

/* What an incoming VMM announces before the memory exists is where the guest keeps its rings. */
static void test_plan_queue_layout(void **state) {
        struct vhm_guest_config c = { .mem_size = 16ull << 20, .queue_pairs = 3, .ring_size = 512 };
        struct vhm_guest *g = NULL;
        struct vhm_guest_queue_layout want, got;

        (void) state;
        assert_int_equal(vhm_guest_create(&c, &g), 0);
        for (unsigned q = 0; q < 6; q++) {
                assert_int_equal(vhm_guest_queue_layout(g, q, &want), 0);
                assert_int_equal(vhm_guest_plan_queue_layout(&c, q, &got), 0);
                assert_int_equal(got.index, q);
                assert_int_equal(got.num, want.num);
                assert_int_equal(got.is_rx, want.is_rx);
                assert_int_equal(got.desc_gpa, want.desc_gpa);
                assert_int_equal(got.avail_gpa, want.avail_gpa);
                assert_int_equal(got.used_gpa, want.used_gpa);
                assert_int_equal(got.used_len, want.used_len);
                assert_int_equal(got.buf_gpa, want.buf_gpa);
                assert_int_equal(got.kick_fd, -1);
                assert_int_equal(got.desc_uaddr, 0);
        }
        assert_int_equal(vhm_guest_plan_queue_layout(&c, 6, &got), -EINVAL);
        c.mem_size = 1ull << 20;
        assert_int_equal(vhm_guest_plan_queue_layout(&c, 0, &got), -ENOSPC);
        c.ring_size = 500;
        assert_int_equal(vhm_guest_plan_queue_layout(&c, 0, &got), -EINVAL);
        vhm_guest_free(g);
}

/* The migration stream's checksum of the same memory, through a VM model. */
static uint64_t stream_checksum(const struct vhm_guest *g) {
        struct vhm_region_spec r = { .fd = vhm_guest_mem_fd(g), .size = vhm_guest_mem_size(g) };
        struct vhm_vm *vm = NULL;
        uint64_t sum = 0;

        assert_int_equal(vhm_vm_new("checksum", &vm), 0);
        if (vhm_vm_add_region(vm, &r) < 0)
                fail_msg("add_region: %s", vhm_vm_error(vm));
        assert_int_equal(vhm_memory_checksum(vm, &sum), 0);
        vhm_vm_free(vm);
        return sum;
}

static uint64_t csum(const struct vhm_guest *g, unsigned flags) {
        uint64_t v = 0;

        assert_int_equal(vhm_guest_checksum(g, flags, &v), 0);
        return v;
}

/* Full image: the stream's checksum.  Driver image: what a destination
 * back-end writes before the guest resumes (used rings, RX buffers) does not
 * change it; the driver's own progress does. */
static void test_checksum(void **state) {
        const struct lb_config slow = { .max_per_step = 7 };
        struct vhm_guest *g = mk_guest(2, 256, 300, 0), *g2 = NULL;
        struct lb_dev *d = mk_dev(g, &slow), *d2;
        uint64_t full, driver, v;
        char err[256];
        int fd;

        (void) state;
        assert_int_equal(vhm_guest_checksum(g, 0x2, &v), -EINVAL);
        assert_int_equal(vhm_guest_post_rx(g, 0), 256);
        assert_int_equal(vhm_guest_tx(g, 0, 100), 100);
        assert_int_equal(lb_step(d), 7);
        full = csum(g, 0);
        driver = csum(g, VHM_GUEST_CHECKSUM_DRIVER);
        assert_true(full == stream_checksum(g));
        assert_true(full != driver);
        fd = copy_memory(g);
        assert_int_equal(vhm_guest_attach(fd, &g2, err, sizeof(err)), 0);
        close(fd);
        assert_true(csum(g2, 0) == full);
        assert_true(csum(g2, VHM_GUEST_CHECKSUM_DRIVER) == driver);
        d2 = mk_dev(g2, &slow);
        for (unsigned q = 0; q < 4; q++)
                lb_set_base(d2, q, lb_get_base(d, q));
        assert_int_equal(lb_step(d2), 7);
        assert_true(csum(g2, 0) != full);
        assert_true(csum(g2, VHM_GUEST_CHECKSUM_DRIVER) == driver);
        assert_true(csum(g2, 0) == stream_checksum(g2));
        assert_true(vhm_guest_poll_rx(g2, 0, 0) > 0);
        assert_true(csum(g2, VHM_GUEST_CHECKSUM_DRIVER) != driver);
        lb_free(d2);
        vhm_guest_free(g2);
        lb_free(d);
        vhm_guest_free(g);
}

/* ---------------------------------------------------------------- pages */

static int count_page(uint64_t page, void *opaque) {
        (void) page;
        ++*(size_t *) opaque;
        return 0;
}

static bool bit(const uint8_t *bm, uint64_t p) {
        return bm[p / 8] & (1u << (p % 8));
}

static void test_device_written_pages(void **state) {
        struct vhm_guest *g = mk_guest(2, 256, 1514, 0);
        struct lb_dev *d = mk_dev(g, NULL);
        size_t np = vhm_guest_npages(g), bytes = (np + 7) / 8, n = 0, pop = 0;
        uint8_t *want = calloc(bytes, 1), *got = calloc(bytes, 1);
        struct vhm_guest_queue_layout l;

        (void) state;
        assert_int_equal(lb_inject(d, 0, LB_FAULT_DROP, 5), 0);
        assert_int_equal(lb_inject(d, 1, LB_FAULT_DUP, 6), 0);
        assert_int_equal(lb_inject(d, 1, LB_FAULT_BAD_ID, 7), 0);
        assert_int_equal(run_stepped(g, VHM_GUEST_ALL_QPS, 300, d, RUN_TIMEOUT_MS), 0);
        lb_written_pages(d, want, np);
        assert_int_equal(vhm_guest_device_written_pages(g, got, np), 0);
        assert_memory_equal(want, got, bytes);
        for (size_t i = 0; i < bytes; i++)
                pop += (size_t) __builtin_popcount(got[i]);
        assert_int_equal(vhm_guest_for_each_device_written_page(g, count_page, &n), 0);
        assert_int_equal(n, pop);
        /* Device pages only: not the state area, descriptors, avail rings or
         * TX buffers; every used ring and (with 300 frames) every RX buffer. */
        assert_false(bit(got, 0));
        for (unsigned q = 0; q < 4; q++) {
                assert_int_equal(vhm_guest_queue_layout(g, q, &l), 0);
                assert_false(bit(got, l.desc_gpa / 4096));
                assert_false(bit(got, l.avail_gpa / 4096));
                assert_true(bit(got, l.used_gpa / 4096));
                for (uint64_t p = l.buf_gpa / 4096; p < (l.buf_gpa + 256ull * 2048) / 4096; p++)
                        assert_int_equal(bit(got, p), l.is_rx);
        }
        vhm_guest_reset_device_written_pages(g);
        n = 0;
        assert_int_equal(vhm_guest_for_each_device_written_page(g, count_page, &n), 0);
        assert_int_equal(n, 0);
        free(want);
        free(got);
        lb_free(d);
        vhm_guest_free(g);
}

/* ---------------------------------------------------------------- dirty bitmap */

static void test_dirty_bitmap_fd(void **state) {
        struct vhm_guest *g = mk_guest(1, 64, 0, SMALL_MEM);
        size_t np = vhm_guest_npages(g);
        struct stat sb;
        int fd;

        (void) state;
        /* No bitmap yet: the driver marks nothing and nothing reads as dirty. */
        assert_int_equal(vhm_guest_tx(g, 0, 4), 4);
        assert_false(vhm_guest_page_dirty(g, 0));
        fd = vhm_guest_dirty_bitmap(g);
        assert_true(fd >= 0);
        assert_int_equal(vhm_guest_dirty_bitmap(g), fd);
        assert_int_equal(fstat(fd, &sb), 0);
        assert_int_equal(sb.st_size, (off_t) ((np + 63) / 64 * 8));
        /* What AddDirtyBitmap requires: sealed against shrinking, writable. */
        assert_true(fcntl(fd, F_GET_SEALS) & F_SEAL_SHRINK);
        assert_int_equal(fcntl(fd, F_GETFL) & O_ACCMODE, O_RDWR);
        for (size_t p = 0; p < np; p++)
                assert_false(vhm_guest_page_dirty(g, p));
        assert_false(vhm_guest_page_dirty(g, np)); /* beyond memory */
        vhm_guest_free(g);
}

/* The device's pages: used rings (pages of their own) and RX buffers. */
static bool device_page(struct vhm_guest *g, uint64_t page) {
        struct vhm_guest_queue_layout l;
        uint64_t gpa = page * 4096;

        for (unsigned q = 0; q < 2 * vhm_guest_queue_pairs(g); q++) {
                assert_int_equal(vhm_guest_queue_layout(g, q, &l), 0);
                if (gpa >= l.used_gpa && gpa < l.buf_gpa)
                        return true;
                if (l.is_rx && gpa >= l.buf_gpa && gpa < l.buf_gpa + (uint64_t) l.num * l.buf_size)
                        return true;
        }
        return false;
}

/* Every page that differs from before, except the device's, must be marked;
 * returns how many differ (so a test can insist that something was written). */
static size_t assert_changes_marked(struct vhm_guest *g, const uint8_t *before, bool skip_device) {
        const uint8_t *m = vhm_guest_mem_base(g);
        size_t changed = 0;

        for (size_t p = 0; p < vhm_guest_npages(g); p++) {
                if (memcmp(m + p * 4096, before + p * 4096, 4096) == 0 || (skip_device && device_page(g, p)))
                        continue;
                changed++;
                if (!vhm_guest_page_dirty(g, p))
                        fail_msg("page %zu was written but is not marked dirty", p);
        }
        return changed;
}

static uint8_t *snapshot(struct vhm_guest *g, uint8_t *buf) {
        vhm_guest_clear_dirty(g);
        memcpy(buf, vhm_guest_mem_base(g), vhm_guest_mem_size(g));
        return buf;
}

static void assert_page_marked(struct vhm_guest *g, uint64_t gpa, const char *what) {
        if (!vhm_guest_page_dirty(g, gpa / 4096))
                fail_msg("%s (gpa 0x%llx) not marked", what, (unsigned long long) gpa);
}

/* Each driver operation alone (the device stepped only in between): every
 * page it changed is marked, and the pages it must write are. */
static void test_dirty_each_write(void **state) {
        struct vhm_guest *g = mk_guest(1, 64, 0, SMALL_MEM);
        struct lb_dev *d = mk_dev(g, NULL);
        uint8_t *before = malloc(vhm_guest_mem_size(g));
        struct vhm_guest_queue_layout rx, tx;

        (void) state;
        assert_non_null(before);
        assert_true(vhm_guest_dirty_bitmap(g) >= 0);
        assert_int_equal(vhm_guest_queue_layout(g, 0, &rx), 0);
        assert_int_equal(vhm_guest_queue_layout(g, 1, &tx), 0);

        /* The state area: features and frame length. */
        snapshot(g, before);
        assert_int_equal(vhm_guest_set_features(g, vhm_guest_driver_features()), 0);
        assert_true(assert_changes_marked(g, before, false) > 0);
        assert_page_marked(g, 0, "state area (features)");
        snapshot(g, before);
        assert_int_equal(vhm_guest_set_frame_len(g, 200), 0);
        assert_true(assert_changes_marked(g, before, false) > 0);
        assert_page_marked(g, 0, "state area (frame length)");

        /* RX buffers posted: descriptors, avail entries and idx, free stack. */
        snapshot(g, before);
        assert_int_equal(vhm_guest_post_rx(g, 0), 64);
        assert_true(assert_changes_marked(g, before, false) > 0);
        assert_page_marked(g, rx.desc_gpa, "RX descriptors");
        assert_page_marked(g, rx.avail_gpa, "RX avail ring");
        assert_page_marked(g, 0, "state area (RX free stack)");

        /* Frames sent: buffers, descriptors, avail ring, sequence numbers. */
        snapshot(g, before);
        assert_int_equal(vhm_guest_tx(g, 0, 40), 40);
        assert_true(assert_changes_marked(g, before, false) > 0);
        assert_page_marked(g, tx.buf_gpa, "first TX buffer");
        assert_page_marked(g, tx.buf_gpa + 39ull * tx.buf_size, "last TX buffer");
        assert_page_marked(g, tx.desc_gpa, "TX descriptors");
        assert_page_marked(g, tx.avail_gpa, "TX avail ring");
        assert_page_marked(g, 0, "state area (sequence numbers)");

        /* The device echoes; then the driver takes back and receives. */
        assert_int_equal(lb_step(d), 40);
        snapshot(g, before);
        assert_int_equal(vhm_guest_reclaim_tx(g, 0), 40);
        assert_true(assert_changes_marked(g, before, false) > 0);
        assert_page_marked(g, 0, "state area (TX free stack, last used)");
        snapshot(g, before);
        assert_int_equal(vhm_guest_poll_rx(g, 0, 0), 40);
        assert_true(assert_changes_marked(g, before, false) > 0);
        assert_page_marked(g, 0, "state area (RX counters)");
        assert_page_marked(g, rx.avail_gpa, "RX avail ring (re-posted)");
        assert_clean(g, 0, 40);
        free(before);
        lb_free(d);
        vhm_guest_free(g);
}

/* Whole runs, notifications switched on and off, faults counted: outside the
 * device's pages nothing changes unmarked. */
static void check_run_marked(unsigned nqp, bool event_idx, bool wait_call) {
        struct vhm_guest *g = mk_guest(nqp, 128, 0, SMALL_MEM);
        struct lb_config c = { .event_idx = event_idx };
        struct lb_dev *d;
        uint8_t *before = malloc(vhm_guest_mem_size(g));
        struct vhm_guest_run_opts o = { .step = lb_step, .flags = wait_call ? VHM_GUEST_RUN_WAIT_CALL : 0 };
        struct vhm_guest_stats s;

        assert_non_null(before);
        if (event_idx)
                assert_int_equal(vhm_guest_set_features(g, vhm_guest_driver_features()), 0);
        d = mk_dev(g, &c);
        o.opaque = d;
        assert_true(vhm_guest_dirty_bitmap(g) >= 0);
        assert_int_equal(lb_inject(d, 0, LB_FAULT_CORRUPT, 100), 0);
        assert_int_equal(lb_inject(d, nqp - 1, LB_FAULT_DUP, 200), 0);
        assert_int_equal(lb_inject(d, 0, LB_FAULT_RARP, 300), 0);
        snapshot(g, before);
        assert_int_equal(vhm_guest_run_until(g, VHM_GUEST_ALL_QPS, 1000, RUN_TIMEOUT_MS, &o), 0);
        assert_true(assert_changes_marked(g, before, true) > 0);
        assert_int_equal(vhm_guest_get_stats(g, VHM_GUEST_ALL_QPS, &s), 0);
        assert_int_equal(s.corrupted, 1);
        assert_int_equal(s.duplicated, 1);
        assert_int_equal(s.rarp_seen, 1);
        free(before);
        lb_free(d);
        vhm_guest_free(g);
}

static void test_dirty_runs(void **state) {
        (void) state;
        check_run_marked(1, false, false);
        check_run_marked(4, true, false);
        check_run_marked(2, true, true);
}

/* The bits a harvest clears are set again by the next writes only. */
static void test_dirty_cleared_and_remarked(void **state) {
        struct vhm_guest *g = mk_guest(1, 64, 0, SMALL_MEM);
        struct vhm_guest_queue_layout tx;

        (void) state;
        assert_true(vhm_guest_dirty_bitmap(g) >= 0);
        assert_int_equal(vhm_guest_queue_layout(g, 1, &tx), 0);
        assert_int_equal(vhm_guest_tx(g, 0, 1), 1);
        assert_true(vhm_guest_page_dirty(g, tx.buf_gpa / 4096));
        vhm_guest_clear_dirty(g);
        for (size_t p = 0; p < vhm_guest_npages(g); p++)
                assert_false(vhm_guest_page_dirty(g, p));
        /* The second descriptor's buffer shares the first one's page. */
        assert_int_equal(vhm_guest_tx(g, 0, 1), 1);
        assert_true(vhm_guest_page_dirty(g, tx.buf_gpa / 4096));
        assert_false(vhm_guest_page_dirty(g, (tx.buf_gpa + 2ull * tx.buf_size) / 4096));
        vhm_guest_free(g);
}

/* ---------------------------------------------------------------- window */

struct window_probe {
        struct vhm_guest *g;
        struct lb_dev *d;
        uint64_t max_in_flight;
};

/* Between the guest's turns: how many frames are out, then the device's turn. */
static int window_step(void *opaque) {
        struct window_probe *w = opaque;
        struct vhm_guest_stats s;

        assert_int_equal(vhm_guest_get_stats(w->g, 0, &s), 0);
        if (s.sent - s.received > w->max_in_flight)
                w->max_in_flight = s.sent - s.received;
        return lb_step(w->d);
}

static uint64_t max_in_flight(unsigned window) {
        struct window_probe w = { .g = mk_guest(1, 64, 0, SMALL_MEM) };
        struct vhm_guest_run_opts o = { .step = window_step, .opaque = &w, .burst = 64, .window = window };

        w.d = mk_dev(w.g, NULL);
        assert_int_equal(vhm_guest_run_until(w.g, 0, 2000, RUN_TIMEOUT_MS, &o), 0);
        assert_clean(w.g, 0, 2000);
        lb_free(w.d);
        vhm_guest_free(w.g);
        return w.max_in_flight;
}

/* The window bounds the frames in flight; 0 or more than a ring is the ring. */
static void test_window(void **state) {
        (void) state;
        assert_int_equal(max_in_flight(0), 64);
        assert_int_equal(max_in_flight(1000), 64);
        assert_int_equal(max_in_flight(56), 56);
        assert_int_equal(max_in_flight(5), 5);
}

/* ---------------------------------------------------------------- main */

static const struct CMUnitTest traffic_tests[] = {
        T(test_create_layout),
        T(test_create_rejects),
        T(test_10k_1qp),
        T(test_10k_4qp),
        T(test_10k_4qp_event_idx_busy),
        T(test_10k_4qp_wait_call),
        T(test_10k_4qp_event_idx),
        T(test_stepped_frame_sizes),
        T(test_legacy_header),
        T(test_window),
};

static const struct CMUnitTest notify_tests[] = {
        T(test_no_notify_suppresses_kicks),
        T(test_kicks_without_suppression),
        T(test_event_idx_kicks),
};

static const struct CMUnitTest fault_tests[] = {
        T(test_fault_drop),
        T(test_fault_corrupt),
        T(test_fault_dup),
        T(test_fault_rarp),
        T(test_fault_rarp_other),
        T(test_fault_bad_id),
        T(test_faults_mixed_threaded),
        T(test_trailing_faults),
        T(test_used_overrun),
};

static const struct CMUnitTest migrate_tests[] = {
        T(test_migrate_quiesced),
        T(test_migrate_in_flight),
};

static const struct CMUnitTest attach_tests[] = {
        T(test_attach_rejects_corruption),
        T(test_attach_bad_files),
        T(test_attach_valid),
        T(test_attach_given_eventfds),
        T(test_attach_eventfds_rejects),
        T(test_plan_queue_layout),
        T(test_checksum),
};

static const struct CMUnitTest page_tests[] = {
        T(test_device_written_pages),
};

static const struct CMUnitTest dirty_tests[] = {
        T(test_dirty_bitmap_fd),
        T(test_dirty_each_write),
        T(test_dirty_runs),
        T(test_dirty_cleared_and_remarked),
};

static bool wanted(int argc, char **argv, const char *group) {
        return argc < 2 || strcmp(argv[1], group) == 0;
}

int main(int argc, char **argv) {
        int failed = 0;

        if (wanted(argc, argv, "traffic"))
                failed += cmocka_run_group_tests_name("traffic", traffic_tests, NULL, NULL);
        if (wanted(argc, argv, "notify"))
                failed += cmocka_run_group_tests_name("notify", notify_tests, NULL, NULL);
        if (wanted(argc, argv, "faults"))
                failed += cmocka_run_group_tests_name("faults", fault_tests, NULL, NULL);
        if (wanted(argc, argv, "migrate"))
                failed += cmocka_run_group_tests_name("migrate", migrate_tests, NULL, NULL);
        if (wanted(argc, argv, "attach"))
                failed += cmocka_run_group_tests_name("attach", attach_tests, NULL, NULL);
        if (wanted(argc, argv, "pages"))
                failed += cmocka_run_group_tests_name("pages", page_tests, NULL, NULL);
        if (wanted(argc, argv, "dirty"))
                failed += cmocka_run_group_tests_name("dirty", dirty_tests, NULL, NULL);
        return failed ? 1 : 0;
}

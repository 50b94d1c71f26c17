/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The device lifecycle (migrate/device.h) with real traffic: the synthetic
 * guest transmits sequence-numbered frames, DPDK testpmd in macswap/loop mode
 * echoes every one of them back, and the guest accounts for each frame
 * exactly (received, lost, corrupted, duplicated).  Then the same device is
 * stopped and resumed, loses its back-end and reconnects to a new one, and
 * announces itself with SEND_RARP; and the lifecycle without traffic against
 * QEMU's virtiofsd.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "migrate/device.h"
#include "migrate/vm.h"
#include "proto/vhost-user.h"
#include "tests/common/check.h"
#include "tests/common/clock.h"
#include "tests/common/fd-count.h"
#include "tests/common/guest-device.h"
#include "tests/common/real-backends.h"
#include "daemon/guest/guest.h"

#define TOTAL_FRAMES   100000u
#define RUN_TIMEOUT_MS 120000
#define GUEST_MEM      (32ull << 20)

/* ---- small helpers --------------------------------------------------------- */

static int cmp_double(const void *a, const void *b) {
        double x = *(const double *) a, y = *(const double *) b;
        return (x > y) - (x < y);
}

static double median(double *v, unsigned n) {
        qsort(v, n, sizeof(*v), cmp_double);
        return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static struct vhm_guest_stats guest_stats(const struct vhm_guest *g, unsigned qp) {
        struct vhm_guest_stats s;
        assert_int_equal(vhm_guest_get_stats(g, qp, &s), 0);
        return s;
}

static void print_stats(const char *what, const struct vhm_guest_stats *s) {
        printf("  %-22s sent %" PRIu64 " received %" PRIu64 " lost %" PRIu64 " corrupted %" PRIu64
               " duplicated %" PRIu64 " rarp %" PRIu64 " other %" PRIu64 " bad_used %" PRIu64 "\n",
               what, s->sent, s->received, s->lost, s->corrupted, s->duplicated, s->rarp_seen, s->other, s->bad_used);
        fflush(stdout);
}

/* The frames accounted for so far: came back, written off as lost, or damaged. */
static uint64_t accounted(const struct vhm_guest_stats *s) {
        return s->received + s->lost + s->corrupted;
}

static uint16_t avail_idx(const struct vhm_guest *g, unsigned q) {
        uint16_t avail, used;
        assert_int_equal(vhm_guest_queue_indices(g, q, &avail, &used), 0);
        return avail;
}

static uint16_t used_idx(const struct vhm_guest *g, unsigned q) {
        uint16_t avail, used;
        assert_int_equal(vhm_guest_queue_indices(g, q, &avail, &used), 0);
        return used;
}

/* ---- keeping off testpmd's forwarding core (real-backends.h says why) ------------ */

static void pin_off_worker(void) {
        assert_int_equal(testpmd_cpus_avoid_worker(), 0);
}

static void unpin(void) {
        assert_int_equal(testpmd_cpus_restore(), 0);
}

/* ---- a guest, its VM and its device ---------------------------------------- */

struct rig {
        struct vhm_guest *g;
        struct vhm_vm *vm;
        struct vhm_device *dev;
        unsigned nqp;
};

static void run_or_fail(struct rig *r, unsigned qp, uint64_t frames) {
        int rc = vhm_guest_run_until(r->g, qp, frames, RUN_TIMEOUT_MS, NULL);
        if (rc < 0) {
                struct vhm_guest_stats s = guest_stats(r->g, VHM_GUEST_ALL_QPS);
                print_stats("when it failed:", &s);
                fail_msg("vhm_guest_run_until(%u, %" PRIu64 "): %s; device %s: %s", qp, frames, strerror(-rc),
                         vhm_device_state_name(vhm_device_state(r->dev)), vhm_device_error(r->dev));
        }
}

/* Guest memory, the VM holding it, and a device whose queues are the guest's rings. */
static void rig_new(struct rig *r, unsigned nqp, const char *socket, uint64_t features) {
        memset(r, 0, sizeof(*r));
        r->nqp = nqp;
        struct vhm_guest_config gc = { .mem_size = GUEST_MEM, .queue_pairs = nqp };
        GD_CHECK(guest_vm_new("traffic", &gc, &r->g, &r->vm));
        struct vhm_device_config cfg = {
                .socket = socket,
                .features = features,
                .queue_pairs = nqp,
                .timeout_ms = 5000,
        };
        GD_CHECK(guest_device_new(r->vm, r->g, &cfg, &r->dev, NULL));
}

/* Connect, start the rings, tell the guest driver what was negotiated, post receive buffers. */
static void rig_start(struct rig *r) {
        DEV_CHECK(r->dev, vhm_device_connect(r->dev));
        assert_int_equal(vhm_device_state(r->dev), VHM_DEVICE_READY);
        DEV_CHECK(r->dev, vhm_device_start(r->dev));
        assert_int_equal(vhm_device_state(r->dev), VHM_DEVICE_RUNNING);
        assert_int_equal(vhm_guest_set_features(r->g, vhm_device_acked_features(r->dev)), 0);
        for (unsigned qp = 0; qp < r->nqp; qp++)
                assert_true(vhm_guest_post_rx(r->g, qp) > 0);
}

static void rig_free(struct rig *r) {
        vhm_device_free(r->dev);
        vhm_vm_free(r->vm);
        vhm_guest_free(r->g);
        memset(r, 0, sizeof(*r));
}

static uint64_t net_features(unsigned nqp) {
        uint64_t f = vhm_guest_driver_features();
        if (nqp > 1)
                f |= VHU_BIT(VHU_VF_NET_MQ);
        return f;
}

/* A net device on testpmd with nqp queue pairs, started. */
static void dpdk_rig(struct rig *r, struct real_backend *b, unsigned nqp) {
        assert_true(backend_available(TESTPMD_BIN));
        unpin();
        assert_int_equal(start_testpmd(b, nqp, 0), 0);
        pin_off_worker();
        rig_new(r, nqp, b->socket, net_features(nqp));
        rig_start(r);
        /* The device acks what the guest wants and testpmd offers: split ring, mergeable buffers, event idx. */
        uint64_t acked = vhm_device_acked_features(r->dev);
        assert_true(acked & VHU_BIT(VHU_VF_VERSION_1));
        assert_false(acked & VHU_BIT(VHU_VF_RING_PACKED));
        assert_true(vhm_device_protocol_features(r->dev) & VHU_BIT(VHU_PF_REPLY_ACK));
        printf("  testpmd, %u queue pair(s): features acked 0x%" PRIx64 ", protocol features 0x%" PRIx64 "\n", nqp,
               acked, vhm_device_protocol_features(r->dev));
}

/*
 * Transmit on qp until `total` frames were sent in all, receiving and
 * reclaiming meanwhile but never waiting for the stream to drain: returns
 * with up to `window` frames still in flight.  A window of at most a ring
 * (what vhm_guest_run_until keeps) means the echo never finds the receive
 * ring without a buffer.
 */
static void drive_to(struct rig *r, unsigned qp, uint64_t total, unsigned window) {
        uint64_t deadline = now_ns() + (uint64_t) RUN_TIMEOUT_MS * 1000000u;
        for (;;) {
                assert_true(vhm_guest_reclaim_tx(r->g, qp) >= 0);
                assert_true(vhm_guest_poll_rx(r->g, qp, 0) >= 0);
                struct vhm_guest_stats s = guest_stats(r->g, qp);
                if (s.sent >= total)
                        return;
                uint64_t inflight = s.sent - accounted(&s);
                if (inflight < window) {
                        uint64_t want = total - s.sent;
                        if (want > window - inflight)
                                want = window - inflight;
                        if (want > 32)
                                want = 32;
                        assert_true(vhm_guest_tx(r->g, qp, (unsigned) want) >= 0);
                }
                if (now_ns() > deadline)
                        fail_msg("drive_to(%" PRIu64 "): stuck at %" PRIu64 " sent", total, s.sent);
        }
}

/* Receive on qp until every frame sent is accounted for. */
static void settle(struct rig *r, unsigned qp) {
        uint64_t deadline = now_ns() + (uint64_t) RUN_TIMEOUT_MS * 1000000u;
        for (;;) {
                assert_true(vhm_guest_reclaim_tx(r->g, qp) >= 0);
                assert_true(vhm_guest_poll_rx(r->g, qp, 0) >= 0);
                struct vhm_guest_stats s = guest_stats(r->g, qp);
                if (accounted(&s) >= s.sent)
                        return;
                if (now_ns() > deadline)
                        fail_msg("settle: %" PRIu64 " of %" PRIu64 " frames accounted for", accounted(&s), s.sent);
        }
}

/* Keep receiving (and reclaiming) on every queue pair for ms milliseconds, transmitting nothing. */
static void drain(struct rig *r, unsigned ms) {
        uint64_t end = now_ns() + (uint64_t) ms * 1000000u;
        while (now_ns() < end)
                for (unsigned qp = 0; qp < r->nqp; qp++) {
                        assert_true(vhm_guest_reclaim_tx(r->g, qp) >= 0);
                        assert_true(vhm_guest_poll_rx(r->g, qp, 0) >= 0);
                }
}

/* ---- the back-end goes and comes back ------------------------------------------------ */

/* The back-end went away: the device notices within a second. */
static void expect_disconnect(struct vhm_device *dev) {
        uint64_t t0 = now_ns();
        int r;
        while ((r = vhm_device_poll_connection(dev)) == 1 && now_ns() - t0 < 1000000000u)
                sleep_ms(5);
        assert_int_equal(r, 0);
        printf("  disconnection noticed after %.1f ms: %s\n", (double) (now_ns() - t0) / 1e6, vhm_device_error(dev));
        assert_int_equal(vhm_device_state(dev), VHM_DEVICE_DISCONNECTED);
        assert_null(vhm_device_conn(dev));
}

/* Retries vhm_device_reconnect with the device's back-off until it succeeds (20 s at most). */
static void reconnect_or_fail(struct vhm_device *dev) {
        uint64_t t0 = now_ns();
        unsigned attempts = 0;
        int r;
        while ((r = vhm_device_reconnect(dev, 1000)) != 0) {
                attempts++;
                if (r != -EAGAIN)
                        printf("  reconnect attempt %u: %s (%s)\n", attempts, strerror(-r), vhm_device_error(dev));
                if (now_ns() - t0 > 20000000000u)
                        fail_msg("no reconnection within 20 s: %s", vhm_device_error(dev));
                sleep_ms(vhm_device_reconnect_delay_ms(dev));
        }
        printf("  reconnected after %u failed attempts, %.0f ms\n", attempts, (double) (now_ns() - t0) / 1e6);
}

/* ---- throughput ---------------------------------------------------------------- */

/*
 * ~30,000 frames before the kill, ~30,000 after.  A window lasts about a
 * millisecond at testpmd's echo rate, so one time slice lost to another
 * process spoils it: the median of nine shrugs off four such windows.
 */
#define WINDOW_FRAMES 3500u
#define WINDOWS       9u

/* Frames per second over `windows` runs of WINDOW_FRAMES each, their median. */
static double throughput(struct rig *r, unsigned windows) {
        double fps[16];
        for (unsigned w = 0; w < windows; w++) {
                uint64_t t0 = now_ns();
                run_or_fail(r, 0, WINDOW_FRAMES);
                fps[w] = WINDOW_FRAMES / ((double) (now_ns() - t0) / 1e9);
        }
        printf("  windows of %u frames:", WINDOW_FRAMES);
        for (unsigned w = 0; w < windows; w++)
                printf(" %.0f", fps[w]);
        double m = median(fps, windows);
        printf(" -> median %.0f frames/s\n", m);
        return m;
}

/*
 * Each test's back-end and rig live here so that a failed assertion (which
 * leaves the test early) still stops the back-end: a testpmd left behind
 * would busy-poll a core under the next test.
 */
static struct real_backend be;
static struct rig rg;

static int setup(void **state) {
        (void) state;
        real_backend_init(&be);
        memset(&rg, 0, sizeof(rg));
        return 0;
}

static int teardown(void **state) {
        (void) state;
        unpin();
        rig_free(&rg);
        stop_backend(&be);
        return 0;
}

/* The end of a test on testpmd: all freed and stopped, not one fd more than before it. */
static void finish(int fds_before) {
        rig_free(&rg);
        stop_backend(&be);
        assert_int_equal(count_open_fds(), fds_before);
}

/* ---- 1, 2: plain traffic ------------------------------------------------------ */

static void traffic(unsigned nqp) {
        int fds_before = count_open_fds();
        dpdk_rig(&rg, &be, nqp);

        uint64_t per_qp = TOTAL_FRAMES / nqp;
        uint64_t t0 = now_ns();
        run_or_fail(&rg, VHM_GUEST_ALL_QPS, per_qp);
        double secs = (double) (now_ns() - t0) / 1e9;

        struct vhm_guest_stats s = guest_stats(rg.g, VHM_GUEST_ALL_QPS);
        print_stats("all queue pairs:", &s);
        printf("  %u queue pair(s): %" PRIu64 " frames echoed in %.3f s (%.0f frames/s)\n", nqp, s.received, secs,
               (double) s.received / secs);
        assert_echoed(&s, TOTAL_FRAMES);
        assert_int_equal(s.rarp_seen, 0);
        for (unsigned qp = 0; qp < nqp; qp++) {
                struct vhm_guest_stats q = guest_stats(rg.g, qp);
                assert_echoed(&q, per_qp);
        }
        /* Every ring moved: the device's queues are the guest's, all of them served. */
        for (unsigned q = 0; q < 2 * nqp; q++)
                assert_true(used_idx(rg.g, q) != 0);

        finish(fds_before);
}

static void dpdk_traffic_one_queue_pair(void **state) {
        (void) state;
        traffic(1);
}

static void dpdk_traffic_four_queue_pairs(void **state) {
        (void) state;
        traffic(4);
}

/* ---- 3: stop and resume mid-stream ----------------------------------------------- */

static void dpdk_stop_resume_mid_stream(void **state) {
        (void) state;
        int fds_before = count_open_fds();
        dpdk_rig(&rg, &be, 1);
        const unsigned rxq = 0, txq = 1, num = vhm_guest_ring_size(rg.g);

        drive_to(&rg, 0, 30000, vhm_guest_ring_size(rg.g));
        struct vhm_guest_stats before = guest_stats(rg.g, 0);
        DEV_CHECK(rg.dev, vhm_device_stop(rg.dev));
        assert_int_equal(vhm_device_state(rg.dev), VHM_DEVICE_STOPPED);
        assert_int_equal(vhm_device_stats(rg.dev)->stops, 1);

        /*
         * GET_VRING_BASE reports where the back-end stopped: never beyond what
         * the guest made available, never behind what the guest saw used.
         * testpmd completes each burst under the ring lock, so what it took it
         * also marked used: the index is exactly the guest's used index.
         */
        for (unsigned q = 0; q < 2; q++) {
                uint16_t avail, used;
                assert_int_equal(vhm_guest_queue_indices(rg.g, q, &avail, &used), 0);
                uint16_t idx = (uint16_t) vhm_device_ring_index(rg.dev, q);
                printf("  queue %u (%s): avail %u used %u, back-end stopped at %u\n", q, q == rxq ? "rx" : "tx", avail,
                       used, idx);
                assert_true((uint16_t) (avail - idx) <= num);
                assert_int_equal(idx, used);
        }
        uint16_t tx_pending = (uint16_t) (avail_idx(rg.g, txq) - vhm_device_ring_index(rg.dev, txq));
        printf("  stopped after %" PRIu64 " frames sent, %" PRIu64 " back, %u still in the tx ring\n", before.sent,
               before.received, tx_pending);

        /* Stopped means stopped: what the guest sends now stays in its ring. */
        uint16_t tx_used = used_idx(rg.g, txq);
        uint16_t rx_used = used_idx(rg.g, rxq);
        assert_int_equal(vhm_guest_tx(rg.g, 0, 16), 16);
        drain(&rg, 200);
        assert_int_equal(used_idx(rg.g, txq), tx_used);
        assert_int_equal(used_idx(rg.g, rxq), rx_used);

        DEV_CHECK(rg.dev, vhm_device_resume(rg.dev));
        assert_int_equal(vhm_device_state(rg.dev), VHM_DEVICE_RUNNING);
        /* Resumed from the indices it stopped at. */
        assert_int_equal((uint16_t) vhm_device_ring_index(rg.dev, txq), tx_used);
        assert_int_equal((uint16_t) vhm_device_ring_index(rg.dev, rxq), rx_used);

        struct vhm_guest_stats mid = guest_stats(rg.g, 0);
        run_or_fail(&rg, 0, TOTAL_FRAMES - mid.sent);
        struct vhm_guest_stats s = guest_stats(rg.g, 0);
        print_stats("after resume:", &s);
        assert_echoed(&s, TOTAL_FRAMES);
        assert_int_equal(vhm_device_stats(rg.dev)->starts, 2);

        finish(fds_before);
}

/* ---- 4: the back-end dies mid-stream and comes back ---------------------------------- */

static void dpdk_backend_restart_mid_stream(void **state) {
        (void) state;
        int fds_before = count_open_fds();
        dpdk_rig(&rg, &be, 1);

        run_or_fail(&rg, 0, 2000); /* warm-up */
        double before = throughput(&rg, WINDOWS);

        /* Mid-stream: frames in the rings and in testpmd when it goes. */
        struct vhm_guest_stats s0 = guest_stats(rg.g, 0);
        drive_to(&rg, 0, s0.sent + 500, vhm_guest_ring_size(rg.g));
        struct vhm_guest_stats at_kill = guest_stats(rg.g, 0);
        char dir[sizeof(be.dir)];
        snprintf(dir, sizeof(dir), "%s", be.dir);
        uint64_t t_kill = now_ns();
        stop_backend(&be);
        expect_disconnect(rg.dev);
        assert_int_equal(vhm_device_stats(rg.dev)->disconnects, 1);

        /* Nobody listens at the path: the device says try again. */
        assert_int_equal(vhm_device_reconnect(rg.dev, 1000), -EAGAIN);
        assert_int_equal(vhm_device_state(rg.dev), VHM_DEVICE_DISCONNECTED);
        unsigned delay1 = vhm_device_reconnect_delay_ms(rg.dev);
        assert_int_equal(vhm_device_reconnect(rg.dev, 1000), -EAGAIN);
        assert_true(vhm_device_reconnect_delay_ms(rg.dev) > delay1);

        unpin();
        assert_int_equal(start_testpmd_at(&be, dir, 1, 0), 0);
        pin_off_worker();
        reconnect_or_fail(rg.dev);
        double outage_ms = (double) (now_ns() - t_kill) / 1e6;
        assert_int_equal(vhm_device_state(rg.dev), VHM_DEVICE_RUNNING);
        assert_int_equal(vhm_device_stats(rg.dev)->connects, 2);
        assert_int_equal(vhm_device_acked_features(rg.dev) & vhm_guest_driver_features(), vhm_guest_driver_features());

        /* Everything in flight at the kill is accounted for once later frames come back. */
        run_or_fail(&rg, 0, 1000);
        struct vhm_guest_stats s1 = guest_stats(rg.g, 0);
        printf("  outage %.0f ms: %" PRIu64 " frames in flight at the kill; lost %" PRIu64 ", duplicated %" PRIu64
               ", corrupted %" PRIu64 "\n",
               outage_ms, at_kill.sent - accounted(&at_kill), s1.lost - at_kill.lost,
               s1.duplicated - at_kill.duplicated, s1.corrupted - at_kill.corrupted);
        assert_true(s1.lost - at_kill.lost <= at_kill.sent - accounted(&at_kill));
        assert_int_equal(s1.bad_used, 0);

        /* After the reconnect, every frame comes back intact. */
        double after = throughput(&rg, WINDOWS);
        struct vhm_guest_stats s2 = guest_stats(rg.g, 0);
        print_stats("end:", &s2);
        uint64_t frames_after = s2.sent - s1.sent;
        assert_true(frames_after >= 20000);
        assert_int_equal(s2.received - s1.received, frames_after);
        assert_int_equal(s2.lost, s1.lost);
        assert_int_equal(s2.corrupted, s1.corrupted);
        assert_int_equal(s2.duplicated, s1.duplicated);
        assert_int_equal(s2.bad_used, 0);

        /* For the log only: speed is a benchmark's to judge (bench-device), not a test's on a noisy machine. */
        printf("  throughput before %.0f frames/s, after reconnect %.0f frames/s (%.1f%%)\n", before, after,
               100.0 * after / before);

        finish(fds_before);
}

/* ---- 5: SEND_RARP --------------------------------------------------------------- */

static void dpdk_announce(void **state) {
        (void) state;
        int fds_before = count_open_fds();
        dpdk_rig(&rg, &be, 1);
        assert_true(vhm_device_needs_rarp(rg.dev));

        run_or_fail(&rg, 0, 1000);
        assert_int_equal(guest_stats(rg.g, 0).rarp_seen, 0);
        DEV_CHECK(rg.dev, vhm_device_announce(rg.dev));
        /*
         * testpmd injects the RARP into its next dequeue: the guest has to
         * transmit for it to come.  The RARP takes a receive buffer on top of
         * the echoes, so keep fewer frames in flight than there are buffers
         * (a full ring in flight would lose one echo to the announcement).
         */
        struct vhm_guest_stats s0 = guest_stats(rg.g, 0);
        drive_to(&rg, 0, s0.sent + 3000, vhm_guest_ring_size(rg.g) / 2);
        settle(&rg, 0);
        drain(&rg, 300);

        struct vhm_guest_stats s = guest_stats(rg.g, 0);
        print_stats("after announce:", &s);
        assert_int_equal(s.rarp_seen, 1);
        assert_echoed(&s, 4000);
        assert_int_equal(vhm_device_poll_connection(rg.dev), 1);

        finish(fds_before);
}

/* ---- 6: virtiofsd ---------------------------------------------------------------- */

static void assert_indices_zero(const struct vhm_device *dev) {
        for (unsigned q = 0; q < 2; q++)
                assert_int_equal(vhm_device_ring_index(dev, q), 0);
}

static void virtiofsd_lifecycle_and_reconnect(void **state) {
        (void) state;
        assert_true(backend_available(VIRTIOFSD_BIN));
        int fds_before = count_open_fds();
        assert_int_equal(start_virtiofsd(&be), 0);
        /* virtio-fs: a hiprio queue and a request queue, the guest's rings as memory for them. */
        rig_new(&rg, 1, be.socket, VHU_BIT(VHU_VF_VERSION_1));
        DEV_CHECK(rg.dev, vhm_device_connect(rg.dev));
        assert_false(vhm_device_protocol_features(rg.dev) & VHU_BIT(VHU_PF_RARP));
        DEV_CHECK(rg.dev, vhm_device_start(rg.dev));
        assert_int_equal(vhm_device_state(rg.dev), VHM_DEVICE_RUNNING);
        assert_true(vhm_device_acked_features(rg.dev) & VHU_BIT(VHU_VF_VERSION_1));

        /* No RARP: refused here, never sent (virtiofsd would panic), the link unharmed. */
        assert_false(vhm_device_needs_rarp(rg.dev));
        assert_int_equal(vhm_device_announce(rg.dev), -ENOTSUP);
        assert_int_equal(vhm_device_state(rg.dev), VHM_DEVICE_RUNNING);
        assert_int_equal(vhm_device_poll_connection(rg.dev), 1);

        DEV_CHECK(rg.dev, vhm_device_stop(rg.dev));
        assert_int_equal(vhm_device_state(rg.dev), VHM_DEVICE_STOPPED);
        assert_indices_zero(rg.dev);
        DEV_CHECK(rg.dev, vhm_device_resume(rg.dev));
        assert_int_equal(vhm_device_state(rg.dev), VHM_DEVICE_RUNNING);
        assert_int_equal(vhm_device_poll_connection(rg.dev), 1);

        /* virtiofsd goes; a new one is started at the same path; the device finds it. */
        char dir[sizeof(be.dir)];
        snprintf(dir, sizeof(dir), "%s", be.dir);
        stop_backend(&be);
        expect_disconnect(rg.dev);
        assert_int_equal(start_virtiofsd_at(&be, dir), 0);
        reconnect_or_fail(rg.dev);
        assert_int_equal(vhm_device_state(rg.dev), VHM_DEVICE_RUNNING);
        assert_indices_zero(rg.dev);
        assert_int_equal(vhm_device_stats(rg.dev)->connects, 2);
        assert_int_equal(vhm_device_announce(rg.dev), -ENOTSUP);
        assert_int_equal(vhm_device_poll_connection(rg.dev), 1);

        DEV_CHECK(rg.dev, vhm_device_stop(rg.dev));
        assert_indices_zero(rg.dev);
        assert_int_equal(vhm_device_poll_connection(rg.dev), 1);

        rig_free(&rg);
        /* It served its one front-end and leaves when it goes. */
        assert_true(backend_exited(&be, 5000));
        stop_backend(&be);
        assert_int_equal(count_open_fds(), fds_before);
}

int main(void) {
        /* Progress lines interleave with cmocka's: no buffering. */
        setvbuf(stdout, NULL, _IONBF, 0);
        if (testpmd_cpus_init() < 0)
                return 1;
#define TEST(t) cmocka_unit_test_setup_teardown(t, setup, teardown)
        const struct CMUnitTest tests[] = {
                TEST(dpdk_traffic_one_queue_pair),
                TEST(dpdk_traffic_four_queue_pairs),
                TEST(dpdk_stop_resume_mid_stream),
                TEST(dpdk_backend_restart_mid_stream),
                TEST(dpdk_announce),
                TEST(virtiofsd_lifecycle_and_reconnect),
        };
#undef TEST
        return cmocka_run_group_tests(tests, NULL, NULL);
}

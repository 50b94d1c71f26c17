/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The device lifecycle (migrate/device.h) against the project's own test
 * back-end (tests/backend/test-backend.h): every request the device sends is
 * recorded and checked against the specification, and the back-end misbehaves
 * on cue (refuses, closes, hangs, answers malformed) so each fault's effect on
 * the device state can be asserted: a refusal leaves the link usable, a broken
 * link makes the device DISCONNECTED and reconnectable, and nothing leaks.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "migrate/device.h"
#include "migrate/vm.h"
#include "proto/vhost-user.h"
#include "tests/backend/test-backend.h"
#include "tests/common/check.h"
#include "tests/common/clock.h"
#include "tests/common/fd-count.h"
#include "tests/common/guest-device.h"
#include "daemon/guest/guest.h"

/* Queue pairs of the device: 2, or 1 where the back-end offers no MQ. */
static unsigned queue_pairs = 2;
#define NQUEUES (2 * queue_pairs)

/* ---- the fixture: a test back-end, a guest, its VM and device ---------------------- */

struct fx {
        char dir[64];
        char socket[128];
        char record[128];
        pid_t pid; /* the test back-end child, or -1 */
        struct tb_config cfg;
        struct vhm_guest *g;
        struct vhm_vm *vm;
        struct vhm_device *dev;
        int fds_before;
        char imposter_record[128];
        pid_t imposter; /* a test back-end playing another local user, or -1 */
};

static struct fx fx;

/* A default back-end configuration, recording to the test's record file. */
static void reset_config(void) {
        tb_config_init(&fx.cfg);
        fx.cfg.record_path = fx.record;
}

static int setup(void **state) {
        (void) state;
        memset(&fx, 0, sizeof(fx));
        queue_pairs = 2;
        fx.pid = -1;
        fx.fds_before = count_open_fds();
        snprintf(fx.dir, sizeof(fx.dir), "/tmp/vhostmig-faults-XXXXXX");
        if (!mkdtemp(fx.dir))
                return -1;
        snprintf(fx.socket, sizeof(fx.socket), "%s/sock", fx.dir);
        snprintf(fx.record, sizeof(fx.record), "%s/record", fx.dir);
        snprintf(fx.imposter_record, sizeof(fx.imposter_record), "%s/imposter-record", fx.dir);
        fx.imposter = -1;
        reset_config();
        fx.cfg.io_timeout_ms = 3000;
        return 0;
}

static void free_device(void) {
        vhm_device_free(fx.dev);
        vhm_vm_free(fx.vm);
        vhm_guest_free(fx.g);
        fx.dev = NULL;
        fx.vm = NULL;
        fx.g = NULL;
}

static void stop_child(void) {
        if (fx.pid > 0)
                (void) tb_stop(fx.pid);
        fx.pid = -1;
}

static int teardown(void **state) {
        (void) state;
        free_device();
        stop_child();
        if (fx.imposter > 0)
                (void) tb_stop(fx.imposter);
        unlink(fx.socket);
        unlink(fx.record);
        unlink(fx.imposter_record);
        rmdir(fx.dir);
        return 0;
}

/* The device broke no rule the back-end checks. */
static void assert_no_violation(void) {
        char *rec = tb_record_read(fx.record);
        assert_non_null(rec);
        if (strstr(rec, "VIOLATION"))
                fail_msg("the test back-end recorded violations:\n%s", rec);
        free(rec);
}

/*
 * Everything freed; the back-end, having served every connection it was
 * configured for, gone by itself; not one fd more than before the test; and
 * no rule broken in the record.
 */
static void finish(void) {
        free_device();
        if (fx.pid > 0)
                assert_tb_exits_cleanly(&fx.pid, 3000);
        assert_int_equal(count_open_fds(), fx.fds_before);
        assert_no_violation();
}

static void add_fault(const char *spec) {
        struct tb_fault f;
        assert_int_equal(tb_parse_fault(spec, &f), 0);
        assert_int_equal(tb_config_add_fault(&fx.cfg, &f), 0);
}

static void spawn_backend(void) {
        int r = tb_spawn_listen(&fx.cfg, fx.socket, &fx.pid);
        if (r < 0)
                fail_msg("tb_spawn_listen(%s): %s", fx.socket, strerror(-r));
}

/* DEV_CHECK on the fixture's device. */
#define FX_CHECK(call) DEV_CHECK(fx.dev, call)

/* A guest (memory and rings) with queue_pairs pairs, its VM, and a device for it. */
static void make_device(bool server, unsigned timeout_ms) {
        struct vhm_guest_config gc = { .mem_size = 8u << 20, .queue_pairs = queue_pairs, .ring_size = 64 };
        GD_CHECK(guest_vm_new("faults", &gc, &fx.g, &fx.vm));
        struct vhm_device_config cfg = {
                .socket = fx.socket,
                .server = server,
                .timeout_ms = timeout_ms,
                .features = vhm_guest_driver_features() | VHU_BIT(VHU_VF_NET_MQ),
                .queue_pairs = queue_pairs,
                .mtu = 1500,
        };
        GD_CHECK(guest_device_new(fx.vm, fx.g, &cfg, &fx.dev, NULL));
}

/* The back-end was stopped: the device notices within a second. */
static void await_disconnect(void) {
        uint64_t t0 = now_ms();
        while (vhm_device_poll_connection(fx.dev) == 1 && now_ms() - t0 < 1000)
                sleep_ms(5);
        assert_int_equal(vhm_device_state(fx.dev), VHM_DEVICE_DISCONNECTED);
}

/* Reconnection attempts with the device's back-off, 10 s at most. */
static void reconnect(void) {
        uint64_t t0 = now_ms();
        int r;
        while ((r = vhm_device_reconnect(fx.dev, 1000)) == -EAGAIN && now_ms() - t0 < 10000)
                sleep_ms(vhm_device_reconnect_delay_ms(fx.dev));
        FX_CHECK(r);
}

static void connect_and_start(void) {
        FX_CHECK(vhm_device_connect(fx.dev));
        FX_CHECK(vhm_device_start(fx.dev));
        assert_int_equal(vhm_device_state(fx.dev), VHM_DEVICE_RUNNING);
}

/* The back-end as configured, and a client-mode device running on it. */
static void running_device(unsigned timeout_ms) {
        spawn_backend();
        make_device(false, timeout_ms);
        connect_and_start();
}

/* The back-end is stopped under the device, which notices. */
static void lose_backend(void) {
        stop_child();
        await_disconnect();
}

/* A new back-end at the same path, and the device reconnected to it. */
static void backend_back(void) {
        spawn_backend();
        reconnect();
}

/* Each ring's last known index is base + its queue number. */
static void assert_ring_indices(unsigned base) {
        for (unsigned q = 0; q < NQUEUES; q++)
                assert_int_equal(vhm_device_ring_index(fx.dev, q), base + q);
}

/* ---- reading the record ------------------------------------------------------- */

/* The record as an array of lines (the buffer is modified in place). */
struct lines {
        char *buf;
        char *line[4096];
        unsigned n;
};

static void read_record(struct lines *l) {
        l->buf = tb_record_read(fx.record);
        assert_non_null(l->buf);
        l->n = 0;
        for (char *s = l->buf, *save = NULL; (s = strtok_r(s, "\n", &save)) && l->n < 4096; s = NULL)
                l->line[l->n++] = s;
}

/* Index of the first line at or after `from` that starts with `request` and contains `needle`; -1 if none. */
static int find(const struct lines *l, unsigned from, const char *request, const char *needle) {
        size_t len = strlen(request);
        for (unsigned i = from; i < l->n; i++)
                if (strncmp(l->line[i], request, len) == 0 && l->line[i][len] == ' ' &&
                    (!needle || strstr(l->line[i], needle)))
                        return (int) i;
        return -1;
}

/* The line where the nth connection (from 1, over every back-end process of the test) opened; -1 if none. */
static int nth_connection(const struct lines *l, unsigned nth) {
        int i = -1;
        for (unsigned k = 0; k < nth; k++) {
                i = find(l, (unsigned) (i + 1), "CONNECTION", " OPEN");
                if (i < 0)
                        return -1;
        }
        return i;
}

static unsigned count(const struct lines *l, const char *request, const char *needle) {
        unsigned n = 0;
        for (int i = find(l, 0, request, needle); i >= 0; i = find(l, (unsigned) i + 1, request, needle))
                n++;
        return n;
}

/* After the nth connection opened (from 1), each ring was started from base + its queue number. */
static void assert_rings_based_at(unsigned nth, unsigned base) {
        struct lines l;
        read_record(&l);
        int conn = nth_connection(&l, nth);
        assert_true(conn > 0);
        for (unsigned q = 0; q < NQUEUES; q++) {
                char needle[40];
                snprintf(needle, sizeof(needle), "index=%u num=%u", q, base + q);
                assert_true(find(&l, (unsigned) conn, "SET_VRING_BASE", needle) > conn);
        }
        free(l.buf);
}

static void dump_record(void) {
        char *rec = tb_record_read(fx.record);
        printf("---- record ----\n%s----------------\n", rec ? rec : "(none)\n");
        free(rec);
}

/* ---- the lifecycle, recorded ------------------------------------------------------ */

static void clean_lifecycle(void **state) {
        (void) state;
        running_device(0);
        assert_int_equal(vhm_device_queue_pairs(fx.dev), queue_pairs);
        assert_true(vhm_device_needs_rarp(fx.dev));
        FX_CHECK(vhm_device_stop(fx.dev));
        assert_int_equal(vhm_device_state(fx.dev), VHM_DEVICE_STOPPED);
        FX_CHECK(vhm_device_resume(fx.dev));
        FX_CHECK(vhm_device_announce(fx.dev));
        assert_int_equal(vhm_device_poll_connection(fx.dev), 1);
        finish();

        struct lines l;
        read_record(&l);
        /* Once per connection: SET_OWNER; the rings twice (start, resume); stopped once while
         * running and once more by vhm_device_free. */
        assert_int_equal(count(&l, "SET_OWNER", NULL), 1);
        assert_int_equal(count(&l, "NET_SET_MTU", "mtu=1500"), 2);
        assert_int_equal(count(&l, "SET_VRING_ADDR", NULL), 2 * NQUEUES);
        assert_int_equal(count(&l, "GET_VRING_BASE", NULL), 2 * NQUEUES);
        for (unsigned q = 0; q < NQUEUES; q++) {
                char needle[32];
                snprintf(needle, sizeof(needle), "index=%u num=64", q);
                assert_int_equal(count(&l, "SET_VRING_NUM", needle), 2);
        }
        /* The announcement carries the guest's MAC (the synthetic guest's default). */
        assert_int_equal(count(&l, "SEND_RARP", "mac=02:76:68:6d:00:01"), 1);
        assert_true(find(&l, 0, "CONNECTION", "CLOSED peer closed") >= 0);
        free(l.buf);
}

/*
 * With PROTOCOL_FEATURES offered, a front-end acknowledges it (the guest
 * driver never asks for this vhost-user bit); the rings then start disabled
 * and are enabled explicitly once all are set up, and stopping disables them
 * before GET_VRING_BASE collects their indices.
 */
static void rings_enabled_and_disabled_explicitly(void **state) {
        (void) state;
        running_device(0);
        uint64_t acked = vhm_device_acked_features(fx.dev);
        FX_CHECK(vhm_device_stop(fx.dev));
        finish();

        struct lines l;
        read_record(&l);
        if (!(acked & VHU_BIT(VHU_VF_PROTOCOL_FEATURES))) {
                dump_record();
                fail_msg("SET_FEATURES 0x%" PRIx64 " does not acknowledge VHOST_USER_F_PROTOCOL_FEATURES (bit 30) "
                         "although the back-end offers it",
                         acked);
        }
        int first_get = find(&l, 0, "GET_VRING_BASE", NULL);
        assert_true(first_get >= 0);
        for (unsigned q = 0; q < NQUEUES; q++) {
                char on[32], off[32];
                snprintf(on, sizeof(on), "index=%u num=1", q);
                snprintf(off, sizeof(off), "index=%u num=0", q);
                int e = find(&l, 0, "SET_VRING_ENABLE", on);
                int d = find(&l, 0, "SET_VRING_ENABLE", off);
                int kick = find(&l, 0, "SET_VRING_KICK", NULL);
                assert_true(e >= 0 && e > kick);
                assert_true(d >= 0 && d < first_get);
        }
        free(l.buf);
}

/* ---- faults ------------------------------------------------------------------- */

/* A refusal (REPLY_ACK status 1) fails that start; the link stays up and the next start works. */
static void refusal_fails_only_that_start(void **state) {
        (void) state;
        add_fault("SET_VRING_ADDR:nack:1");
        spawn_backend();
        make_device(false, 0);
        FX_CHECK(vhm_device_connect(fx.dev));
        int r = vhm_device_start(fx.dev);
        assert_int_equal(r, -EREMOTEIO);
        printf("  refused: %s\n", vhm_device_error(fx.dev));
        assert_non_null(strstr(vhm_device_error(fx.dev), "SET_VRING_ADDR"));
        assert_int_equal(vhm_device_state(fx.dev), VHM_DEVICE_FAILED);
        assert_int_equal(vhm_device_poll_connection(fx.dev), 1);
        assert_non_null(vhm_device_conn(fx.dev));
        FX_CHECK(vhm_device_start(fx.dev));
        assert_int_equal(vhm_device_state(fx.dev), VHM_DEVICE_RUNNING);
        assert_int_equal(vhm_device_stats(fx.dev)->connects, 1);
        finish();
}

/* The back-end closes in the middle of a start: DISCONNECTED, then reconnect and start. */
static void close_during_start(void **state) {
        (void) state;
        add_fault("SET_MEM_TABLE:close");
        fx.cfg.max_connections = 2;
        spawn_backend();
        make_device(false, 0);
        FX_CHECK(vhm_device_connect(fx.dev));
        int r = vhm_device_start(fx.dev);
        assert_true(r < 0);
        printf("  start: %s (%s)\n", strerror(-r), vhm_device_error(fx.dev));
        assert_int_equal(vhm_device_state(fx.dev), VHM_DEVICE_DISCONNECTED);
        assert_null(vhm_device_conn(fx.dev));
        assert_int_equal(vhm_device_poll_connection(fx.dev), 0);
        /* It never ran: reconnecting negotiates and leaves the start to the owner. */
        FX_CHECK(vhm_device_reconnect(fx.dev, 1000));
        assert_int_equal(vhm_device_state(fx.dev), VHM_DEVICE_READY);
        FX_CHECK(vhm_device_start(fx.dev));
        assert_int_equal(vhm_device_stats(fx.dev)->connects, 2);
        finish();
}

/* A back-end that never answers: the stop fails after the request timeout, not later. */
static void hang_times_out(void **state) {
        (void) state;
        add_fault("GET_VRING_BASE:hang");
        running_device(300);
        uint64_t t0 = now_ms();
        int r = vhm_device_stop(fx.dev);
        uint64_t took = now_ms() - t0;
        printf("  stop: %s after %" PRIu64 " ms (%s)\n", strerror(-r), took, vhm_device_error(fx.dev));
        assert_int_equal(r, -ETIMEDOUT);
        assert_true(took >= 250 && took < 2000);
        assert_int_equal(vhm_device_state(fx.dev), VHM_DEVICE_DISCONNECTED);
        finish();
}

/* Malformed replies during negotiation: refused, the link dropped, no fd kept (extra fds closed). */
static void malformed_replies(void **state) {
        (void) state;
        static const char *const kinds[] = {
                "bad-flags", "oversize", "undersize", "wrong-request", "extra-fds=3", "garbage",
        };
        static const char *const requests[] = { "GET_FEATURES", "GET_PROTOCOL_FEATURES", "GET_QUEUE_NUM" };
        make_device(false, 1000);
        for (unsigned k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
                for (unsigned q = 0; q < sizeof(requests) / sizeof(requests[0]); q++) {
                        char spec[64];
                        snprintf(spec, sizeof(spec), "%s:%s", requests[q], kinds[k]);
                        reset_config();
                        add_fault(spec);
                        spawn_backend();
                        int fds = count_open_fds();
                        int r = vhm_device_connect(fx.dev);
                        printf("  %-34s -> %s (%s)\n", spec, strerror(-r), vhm_device_error(fx.dev));
                        assert_true(r < 0);
                        assert_int_equal(vhm_device_state(fx.dev), VHM_DEVICE_DISCONNECTED);
                        assert_null(vhm_device_conn(fx.dev));
                        assert_int_equal(count_open_fds(), fds);
                        stop_child();
                }
        }
        /* And a good back-end afterwards: the same device connects and starts. */
        reset_config();
        spawn_backend();
        connect_and_start();
        finish();
}

/* Sets each ring's used index in guest memory, as a back-end that used that many entries would have. */
static void set_used_indices(unsigned base) {
        uint8_t *mem = vhm_guest_mem_base(fx.g);
        for (unsigned q = 0; q < NQUEUES; q++) {
                struct vhm_guest_queue_layout l;
                assert_int_equal(vhm_guest_queue_layout(fx.g, q, &l), 0);
                uint16_t idx = (uint16_t) (base + q);
                memcpy(mem + l.used_gpa + 2, &idx, sizeof(idx));
        }
}

/*
 * A malformed reply while stopping: the link is dropped half-way through the
 * stop.  The rings were being stopped, so after reconnecting they stay
 * stopped, and since not every ring's index was collected, the guest's used
 * indices say where to resume.
 */
static void malformed_reply_while_stopping(void **state) {
        (void) state;
        add_fault("GET_VRING_BASE:bad-flags:2");
        fx.cfg.max_connections = 2;
        running_device(0);
        set_used_indices(40);
        int r = vhm_device_stop(fx.dev);
        printf("  stop: %s (%s)\n", strerror(-r), vhm_device_error(fx.dev));
        assert_int_equal(r, -EPROTO);
        assert_int_equal(vhm_device_state(fx.dev), VHM_DEVICE_DISCONNECTED);
        FX_CHECK(vhm_device_reconnect(fx.dev, 1000));
        if (vhm_device_state(fx.dev) != VHM_DEVICE_STOPPED)
                fail_msg("a device whose stop was cut short came back %s after reconnecting, not stopped",
                         vhm_device_state_name(vhm_device_state(fx.dev)));
        assert_ring_indices(40);
        FX_CHECK(vhm_device_resume(fx.dev));
        assert_int_equal(vhm_device_poll_connection(fx.dev), 1);
        finish();
        assert_rings_based_at(2, 40);
}

/* The back-end cannot serve as many queue pairs as the device has: refused at connect. */
static void too_few_queue_pairs(void **state) {
        (void) state;
        fx.cfg.queues = 1;
        spawn_backend();
        make_device(false, 0);
        int r = vhm_device_connect(fx.dev);
        printf("  connect: %s (%s)\n", strerror(-r), vhm_device_error(fx.dev));
        assert_int_equal(r, -ENOTSUP);
        assert_int_equal(vhm_device_state(fx.dev), VHM_DEVICE_FAILED);
        assert_int_equal(vhm_device_start(fx.dev), -EBUSY);
        finish();
        struct lines l;
        read_record(&l);
        /* Nothing about rings or memory was sent to a back-end that cannot take the device. */
        assert_int_equal(count(&l, "SET_MEM_TABLE", NULL), 0);
        assert_int_equal(count(&l, "SET_VRING_NUM", NULL), 0);
        free(l.buf);
}

/* Back-ends that offer less: no protocol features at all, or no REPLY_ACK. */
static void lifecycle_with(bool no_protocol_features, bool no_reply_ack) {
        /* Without protocol features there is no MQ: one queue pair. */
        if (no_protocol_features)
                queue_pairs = 1;
        fx.cfg.no_protocol_features = no_protocol_features;
        fx.cfg.no_reply_ack = no_reply_ack;
        running_device(0);
        FX_CHECK(vhm_device_stop(fx.dev));
        FX_CHECK(vhm_device_resume(fx.dev));
        if (no_protocol_features) {
                assert_false(vhm_device_needs_rarp(fx.dev));
                assert_int_equal(vhm_device_announce(fx.dev), -ENOTSUP);
        } else {
                FX_CHECK(vhm_device_announce(fx.dev));
        }
        assert_int_equal(vhm_device_poll_connection(fx.dev), 1);
        finish();
        struct lines l;
        read_record(&l);
        if (no_protocol_features) {
                assert_int_equal(count(&l, "SET_VRING_ENABLE", NULL), 0);
                assert_int_equal(count(&l, "NET_SET_MTU", NULL), 0);
                assert_int_equal(count(&l, "SET_PROTOCOL_FEATURES", NULL), 0);
        }
        /* No NEED_REPLY (flags 0x9) without REPLY_ACK: the back-end would have recorded a violation. */
        free(l.buf);
}

static void backend_without_protocol_features(void **state) {
        (void) state;
        lifecycle_with(true, false);
}

static void backend_without_reply_ack(void **state) {
        (void) state;
        lifecycle_with(false, true);
}

/*
 * The back-end is killed while the rings run and a new one starts at the same
 * path: the device resumes from the guest's used indices (the dead back-end
 * cannot report its own), stops at what the new one reports, and resumes there.
 */
static void killed_and_restarted(void **state) {
        (void) state;
        running_device(0);
        /* Pretend the old back-end used some entries: the used index is what survives it. */
        set_used_indices(1000);
        lose_backend();
        assert_int_equal(vhm_device_reconnect(fx.dev, 500), -EAGAIN);

        backend_back();
        assert_int_equal(vhm_device_state(fx.dev), VHM_DEVICE_RUNNING);
        assert_ring_indices(1000);
        FX_CHECK(vhm_device_stop(fx.dev));
        assert_ring_indices(1000);
        FX_CHECK(vhm_device_resume(fx.dev));
        finish();

        assert_rings_based_at(2, 1000);
}

/*
 * A device stopped on purpose (say, for a switchover) whose back-end then
 * restarts: reconnecting must not run the rings, and must not forget where
 * they stopped, so that vhm_device_resume() carries on from there.
 */
static void stopped_device_keeps_indices_across_reconnect(void **state) {
        (void) state;
        running_device(0);
        FX_CHECK(vhm_device_stop(fx.dev));
        /* The back-end reports where each ring stopped; make those non-zero by restarting once
         * from the guest's used indices. */
        set_used_indices(300);
        FX_CHECK(vhm_device_resume(fx.dev));
        lose_backend();
        fx.cfg.max_connections = 1;
        backend_back();
        /* Running again from the used indices; now stop it for good, then lose the back-end again. */
        assert_int_equal(vhm_device_state(fx.dev), VHM_DEVICE_RUNNING);
        FX_CHECK(vhm_device_stop(fx.dev));
        assert_ring_indices(300);
        lose_backend();
        backend_back();
        if (vhm_device_state(fx.dev) != VHM_DEVICE_STOPPED)
                fail_msg("a stopped device came back %s after reconnecting: vhm_device_resume() refuses it and "
                         "vhm_device_start() would restart its rings from 0, not from the indices kept at the stop",
                         vhm_device_state_name(vhm_device_state(fx.dev)));
        assert_ring_indices(300);
        FX_CHECK(vhm_device_resume(fx.dev));
        finish();
        assert_rings_based_at(3, 300);
}

/* ---- server mode: the back-end connects to the device --------------------------------- */

static void server_mode_and_reconnect(void **state) {
        (void) state;
        /* The back-end closes when asked to announce, then connects again. */
        add_fault("SEND_RARP:close");
        fx.cfg.max_connections = 2;
        make_device(true, 5000);
        assert_int_equal(vhm_device_listen_fd(fx.dev), -1);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                struct tb_config cfg = fx.cfg;
                _exit(tb_run_connect(&cfg, fx.socket, NULL, NULL) < 0 ? 1 : 0);
        }
        fx.pid = pid;
        connect_and_start();
        assert_true(vhm_device_listen_fd(fx.dev) >= 0);
        assert_true(vhm_device_announce(fx.dev) < 0);
        assert_int_equal(vhm_device_state(fx.dev), VHM_DEVICE_DISCONNECTED);
        FX_CHECK(vhm_device_reconnect(fx.dev, 5000));
        assert_int_equal(vhm_device_state(fx.dev), VHM_DEVICE_RUNNING);
        assert_int_equal(vhm_device_stats(fx.dev)->connects, 2);
        FX_CHECK(vhm_device_stop(fx.dev));
        free_device();
        /* The back-end served its two connections and is done. */
        assert_tb_exits_cleanly(&fx.pid, 3000);
        finish();
        /* The device removed its listening socket. */
        assert_int_equal(access(fx.socket, F_OK), -1);
}

/* ---- a back-end that truncates guest memory ------------------------------------------ */

/*
 * The guest's memory copied into a tmpfs file (a /dev/shm file as a VMM may
 * use), which cannot be sealed: the VM's region is that file, the device's
 * queues the guest's rings.
 */
static void make_device_on_tmpfs(void) {
        struct vhm_guest_config gc = { .mem_size = 8u << 20, .queue_pairs = queue_pairs, .ring_size = 64 };
        assert_int_equal(vhm_guest_create(&gc, &fx.g), 0);
        int shm = open("/dev/shm", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
        assert_true(shm >= 0);
        uint64_t size = vhm_guest_mem_size(fx.g);
        assert_int_equal(pwrite(shm, vhm_guest_mem_base(fx.g), size, 0), (ssize_t) size);
        assert_int_equal(vhm_vm_new("tmpfs", &fx.vm), 0);
        struct vhm_region_spec region = { .fd = shm, .guest_phys_addr = 0, .size = size };
        if (vhm_vm_add_region(fx.vm, &region) < 0)
                fail_msg("vhm_vm_add_region: %s", vhm_vm_error(fx.vm));
        close(shm);
        struct vhm_device_config cfg = {
                .socket = fx.socket,
                .features = vhm_guest_driver_features() | VHU_BIT(VHU_VF_NET_MQ),
                .queue_pairs = queue_pairs,
        };
        GD_CHECK(guest_device_new(fx.vm, fx.g, &cfg, &fx.dev, NULL));
}

/*
 * The back-end truncates every memory fd it was given and hangs up; the
 * device reconnects and must read the used indices from memory that is
 * gone.  That used to kill this process (playing the daemon) with SIGBUS;
 * now the reconnect fails with a clear error, the device is FAILED, and
 * nothing leaks.
 */
static void backend_truncates_unsealed_memory(void **state) {
        (void) state;
        add_fault("SEND_RARP:truncate-memory");
        fx.cfg.max_connections = 2;
        spawn_backend();
        make_device_on_tmpfs();
        connect_and_start();
        assert_true(vhm_device_announce(fx.dev) < 0);
        await_disconnect();
        if (!tb_record_contains(fx.record, "TRUNCATED gpa=0x0 "))
                dump_record();
        assert_true(tb_record_contains(fx.record, "TRUNCATED gpa=0x0 "));

        int r = vhm_device_reconnect(fx.dev, 1000);
        printf("  reconnect: %s (%s)\n", strerror(-r), vhm_device_error(fx.dev));
        assert_int_equal(r, -EIO);
        assert_int_equal(vhm_device_state(fx.dev), VHM_DEVICE_FAILED);
        assert_null(vhm_device_conn(fx.dev));
        assert_non_null(strstr(vhm_device_error(fx.dev), "no longer backed"));
        assert_non_null(strstr(vhm_device_error(fx.dev), "used index"));
        finish();
}

/* The same back-end against sealed memory: its ftruncate fails, and the device carries on. */
static void backend_cannot_truncate_sealed_memory(void **state) {
        (void) state;
        add_fault("SEND_RARP:truncate-memory");
        fx.cfg.max_connections = 2;
        running_device(0);
        set_used_indices(7);
        assert_true(vhm_device_announce(fx.dev) < 0);
        await_disconnect();
        FX_CHECK(vhm_device_reconnect(fx.dev, 1000));
        assert_int_equal(vhm_device_state(fx.dev), VHM_DEVICE_RUNNING);
        assert_ring_indices(7);
        struct lines l;
        read_record(&l);
        int i = find(&l, 0, "TRUNCATED", NULL);
        assert_true(i >= 0);
        printf("  %s\n", l.line[i]);
        assert_null(strstr(l.line[i], " ok"));
        free(l.buf);
        finish();
}

/* ---- who may be the back-end ------------------------------------------------------- */

#define NOBODY   65534u /* the real back-end's user */
#define INTRUDER 1001u  /* another local user */

static bool can_switch_users(void) {
        return geteuid() == 0;
}

/* The test directory as a world-writable one (/tmp without the sticky bit, say). */
static void world_writable_dir(void) {
        assert_int_equal(chmod(fx.dir, 0777), 0);
}

static void run_as(struct tb_config *cfg, uid_t uid) {
        cfg->run_as_uid = uid;
        cfg->run_as_gid = (gid_t) uid;
}

/* A back-end running as uid that listens (client mode) or connects (server mode) at the device's socket. */
static pid_t spawn_imposter(uid_t uid, bool connect) {
        struct tb_config cfg;
        tb_config_init(&cfg);
        cfg.record_path = fx.imposter_record;
        cfg.io_timeout_ms = 3000;
        run_as(&cfg, uid);
        pid_t pid;
        int r = connect ? tb_spawn_connect(&cfg, fx.socket, &pid) : tb_spawn_listen(&cfg, fx.socket, &pid);
        if (r < 0)
                fail_msg("spawning a back-end as uid %u: %s", (unsigned) uid, strerror(-r));
        return pid;
}

/* The refused peer was not sent a single request: its record shows a connection and nothing else. */
static void assert_imposter_got_nothing(void) {
        /* It serves one connection and exits once it saw the hang-up: then its record is complete. */
        int status = tb_wait_exit(fx.imposter, 3000);
        if (status == -ETIMEDOUT)
                (void) tb_stop(fx.imposter);
        fx.imposter = -1;
        char *rec = tb_record_read(fx.imposter_record);
        assert_non_null(rec);
        printf("  the imposter's record:\n%s", rec);
        assert_non_null(strstr(rec, "CONNECTION 1 OPEN"));
        for (char *line = rec, *save = NULL; (line = strtok_r(line, "\n", &save)); line = NULL)
                if (strncmp(line, "CONNECTION ", 11) != 0)
                        fail_msg("the refused peer got something: %s", line);
        free(rec);
}

static void assert_refused(int r, const char *why) {
        printf("  refused: %s\n", vhm_device_error(fx.dev));
        assert_int_equal(r, -EPERM);
        assert_int_equal(vhm_device_state(fx.dev), VHM_DEVICE_DISCONNECTED);
        assert_null(vhm_device_conn(fx.dev));
        assert_non_null(strstr(vhm_device_error(fx.dev), why));
}

/*
 * The back-end (running as nobody) exits and removes its socket; another
 * local user binds the same path in the world-writable directory.  The
 * reconnect must not hand it the guest's memory: refused before a single
 * request, counted; the real back-end, back, is reconnected.
 */
static void imposter_on_reconnect_is_refused(void **state) {
        (void) state;
        if (!can_switch_users())
                skip();
        world_writable_dir();
        run_as(&fx.cfg, NOBODY);
        running_device(0);
        assert_int_equal(vhm_device_backend_uid(fx.dev), NOBODY);
        lose_backend();

        fx.imposter = spawn_imposter(INTRUDER, false);
        int r = vhm_device_reconnect(fx.dev, 1000);
        assert_refused(r, "peer uid 1001 is not the back-end's uid 65534 of the first connection");
        assert_int_equal(vhm_device_stats(fx.dev)->refused_peers, 1);
        assert_int_equal(vhm_device_stats(fx.dev)->connects, 1);
        assert_imposter_got_nothing();

        backend_back();
        assert_int_equal(vhm_device_state(fx.dev), VHM_DEVICE_RUNNING);
        assert_int_equal(vhm_device_stats(fx.dev)->connects, 2);
        assert_int_equal(vhm_device_stats(fx.dev)->refused_peers, 1);
        finish();
}

/* Client mode: the socket file must belong to the peer (or root), whoever the peer is. */
static void socket_file_of_someone_else_is_refused(void **state) {
        (void) state;
        if (!can_switch_users())
                skip();
        world_writable_dir();
        run_as(&fx.cfg, NOBODY);
        fx.cfg.max_connections = 2;
        spawn_backend();
        make_device(false, 0);
        assert_int_equal(lchown(fx.socket, INTRUDER, (gid_t) -1), 0);
        assert_refused(vhm_device_connect(fx.dev), "peer uid 65534 does not own the socket file (owner uid 1001");
        assert_int_equal(vhm_device_stats(fx.dev)->refused_peers, 1);
        assert_int_equal(lchown(fx.socket, NOBODY, (gid_t) -1), 0);
        connect_and_start();
        finish();
        /* The refused connection got nothing: the first request came on the second. */
        struct lines l;
        read_record(&l);
        int second = nth_connection(&l, 2);
        assert_true(second > 0);
        assert_int_equal(find(&l, 0, "GET_FEATURES", NULL) > second, true);
        free(l.buf);
}

/* With an allow-list only the listed uids (and root) may be the back-end, the first connection included. */
static void allow_list(void **state) {
        (void) state;
        if (!can_switch_users())
                skip();
        world_writable_dir();
        uid_t allowed[] = { NOBODY };
        struct vhm_guest_config gc = { .mem_size = 8u << 20, .queue_pairs = queue_pairs, .ring_size = 64 };
        GD_CHECK(guest_vm_new("faults", &gc, &fx.g, &fx.vm));
        struct vhm_device_config cfg = {
                .socket = fx.socket,
                .features = vhm_guest_driver_features() | VHU_BIT(VHU_VF_NET_MQ),
                .queue_pairs = queue_pairs,
                .allowed_uids = allowed,
                .n_allowed_uids = 1,
        };
        GD_CHECK(guest_device_new(fx.vm, fx.g, &cfg, &fx.dev, NULL));

        fx.imposter = spawn_imposter(INTRUDER, false);
        assert_refused(vhm_device_connect(fx.dev), "peer uid 1001 is not among the device's allowed uids");
        assert_imposter_got_nothing();

        run_as(&fx.cfg, NOBODY);
        spawn_backend();
        connect_and_start();
        assert_int_equal(vhm_device_stats(fx.dev)->refused_peers, 1);
        lose_backend();
        /* Root is always allowed. */
        run_as(&fx.cfg, (uid_t) -1);
        fx.cfg.run_as_gid = (gid_t) -1;
        backend_back();
        assert_int_equal(vhm_device_state(fx.dev), VHM_DEVICE_RUNNING);
        finish();
}

/*
 * Server mode: the socket is open to other users (mode 0777), so anyone may
 * connect; only the back-end's uid is served.
 */
static void server_mode_refuses_another_uid(void **state) {
        (void) state;
        if (!can_switch_users())
                skip();
        world_writable_dir();
        struct vhm_guest_config gc = { .mem_size = 8u << 20, .queue_pairs = queue_pairs, .ring_size = 64 };
        GD_CHECK(guest_vm_new("faults", &gc, &fx.g, &fx.vm));
        struct vhm_device_config cfg = {
                .socket = fx.socket,
                .server = true,
                .features = vhm_guest_driver_features() | VHU_BIT(VHU_VF_NET_MQ),
                .queue_pairs = queue_pairs,
                .listen = { .mode = 0777 },
        };
        GD_CHECK(guest_device_new(fx.vm, fx.g, &cfg, &fx.dev, NULL));
        /* Nobody yet: the device listens. */
        assert_int_equal(vhm_device_reconnect(fx.dev, 50), -EAGAIN);

        run_as(&fx.cfg, NOBODY);
        assert_int_equal(tb_spawn_connect(&fx.cfg, fx.socket, &fx.pid), 0);
        FX_CHECK(vhm_device_reconnect(fx.dev, 3000));
        FX_CHECK(vhm_device_start(fx.dev));
        vhm_device_disconnect(fx.dev);
        assert_tb_exits_cleanly(&fx.pid, 3000);

        /* While the back-end is away, another user connects first. */
        fx.imposter = spawn_imposter(INTRUDER, true);
        assert_refused(vhm_device_reconnect(fx.dev, 3000), "peer uid 1001 is not the back-end's uid 65534");
        assert_int_equal(vhm_device_stats(fx.dev)->refused_peers, 1);
        assert_imposter_got_nothing();

        assert_int_equal(tb_spawn_connect(&fx.cfg, fx.socket, &fx.pid), 0);
        FX_CHECK(vhm_device_reconnect(fx.dev, 3000));
        assert_int_equal(vhm_device_state(fx.dev), VHM_DEVICE_RUNNING);
        finish();
}

int main(void) {
        setvbuf(stdout, NULL, _IONBF, 0);
#define TEST(t) cmocka_unit_test_setup_teardown(t, setup, teardown)
        const struct CMUnitTest tests[] = {
                TEST(clean_lifecycle),
                TEST(rings_enabled_and_disabled_explicitly),
                TEST(refusal_fails_only_that_start),
                TEST(close_during_start),
                TEST(hang_times_out),
                TEST(malformed_replies),
                TEST(malformed_reply_while_stopping),
                TEST(too_few_queue_pairs),
                TEST(backend_without_protocol_features),
                TEST(backend_without_reply_ack),
                TEST(killed_and_restarted),
                TEST(stopped_device_keeps_indices_across_reconnect),
                TEST(server_mode_and_reconnect),
                TEST(backend_truncates_unsealed_memory),
                TEST(backend_cannot_truncate_sealed_memory),
                TEST(imposter_on_reconnect_is_refused),
                TEST(socket_file_of_someone_else_is_refused),
                TEST(allow_list),
                TEST(server_mode_refuses_another_uid),
        };
#undef TEST
        return cmocka_run_group_tests(tests, NULL, NULL);
}

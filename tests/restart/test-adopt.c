/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Adoption of a live back-end connection (migrate/device.h,
 * vhm_device_adopt): what a restarted vhostmigd does with the connections it
 * kept in systemd's fd store.  Against the project's test back-end, which
 * records every request: a device saved and handed over is adopted by a new
 * device with not one request sent, in the state it was in (running, logging,
 * on the same log), and its connection then serves requests as before; a
 * record that does not fit the connection is refused and the connection
 * closed, so the back-end sees a clean end and nothing leaks.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log/dirty-log.h"
#include "migrate/device.h"
#include "migrate/vm.h"
#include "proto/vhost-user-frontend.h"
#include "tests/backend/test-backend.h"
#include "tests/common/check.h"
#include "tests/common/clock.h"
#include "tests/common/fd-count.h"
#include "tests/common/guest-device.h"
#include "daemon/guest/guest.h"
#include "tests/restart/restart-fixture.h"

#define QUEUE_PAIRS RESTART_FX_QUEUE_PAIRS

/* The log the previous process's device writes. */
static struct vhm_log *fx_log;

static int setup(void **state) {
        (void) state;
        return restart_fx_setup("adopt");
}

static int teardown(void **state) {
        (void) state;
        vhm_log_free(fx_log);
        fx_log = NULL;
        restart_fx_teardown();
        return 0;
}

/* A test back-end serving one connection, a guest and a device running and logging on it. */
static void running_logging_device(void) {
        restart_fx_running_device("adopt");
        assert_int_equal(vhm_log_new(vhm_vm_top_gpa(fx.vm), &fx_log), 0);
        DEV_CHECK(fx.old, vhm_device_set_log(fx.old, vhm_log_fd(fx_log), vhm_log_size_bytes(fx_log)));
        DEV_CHECK(fx.old, vhm_device_set_logging(fx.old, true));
}

/* The old device hands over: saved, its connection taken, freed (which sends nothing). */
static struct vhu_conn *hand_over(struct vhm_device_saved *saved) {
        DEV_CHECK(fx.old, vhm_device_save(fx.old, saved));
        struct vhu_conn *conn = vhm_device_take_conn(fx.old);
        assert_non_null(conn);
        assert_int_equal(vhm_device_state(fx.old), VHM_DEVICE_DISCONNECTED);
        vhm_device_free(fx.old);
        fx.old = NULL;
        return conn;
}

static void adopt_running_logging_device_sends_nothing(void **state) {
        (void) state;
        running_logging_device();
        uint64_t acked = vhm_device_acked_features(fx.old);
        struct vhm_device_saved saved;
        struct vhu_conn *conn = hand_over(&saved);
        assert_int_equal(saved.state, VHM_DEVICE_RUNNING);
        assert_true(saved.logging && saved.log_acknowledged);
        unsigned before = restart_fx_requests_recorded();

        fx.dev = restart_fx_new_device();
        struct vhm_device_adoption a = {
                .conn = conn, .listen_fd = -1, .log_fd = vhm_log_fd(fx_log), .log_size = vhm_log_size_bytes(fx_log)
        };
        DEV_CHECK(fx.dev, vhm_device_adopt(fx.dev, &a, &saved));
        assert_int_equal(vhm_device_state(fx.dev), VHM_DEVICE_RUNNING);
        assert_true(vhm_device_logging(fx.dev));
        assert_true(vhm_device_log_acknowledged(fx.dev, vhm_log_fd(fx_log)));
        assert_int_equal(vhm_device_acked_features(fx.dev), acked);
        /* The same log handed over again by the logging layer: already acknowledged, so no SET_LOG_BASE. */
        DEV_CHECK(fx.dev, vhm_device_set_log(fx.dev, vhm_log_fd(fx_log), vhm_log_size_bytes(fx_log)));
        sleep_ms(100);
        assert_int_equal(restart_fx_requests_recorded(), before);

        /* The adopted connection is the live one: it stops the rings (GET_VRING_BASE answered). */
        DEV_CHECK(fx.dev, vhm_device_stop(fx.dev));
        assert_int_equal(vhm_device_state(fx.dev), VHM_DEVICE_STOPPED);
        assert_true(restart_fx_requests_recorded() > before);
        assert_int_equal(tb_record_count(fx.record, "VIOLATION"), 0);
        vhm_device_free(fx.dev);
        fx.dev = NULL;
        assert_tb_exits_cleanly(&fx.pid, 3000);
}

/*
 * A refused adoption closes the connection (the back-end, one connection to
 * serve, exits cleanly) and the listening socket that came with it.
 */
static void refused_with(struct vhm_device_saved *saved, struct vhu_conn *conn, int listen_fd, int err,
                         const char *why) {
        unsigned before = restart_fx_requests_recorded();
        fx.dev = restart_fx_new_device();
        struct vhm_device_adoption a = { .conn = conn,
                                         .listen_fd = listen_fd,
                                         .log_fd = vhm_log_fd(fx_log),
                                         .log_size = vhm_log_size_bytes(fx_log) };
        assert_int_equal(vhm_device_adopt(fx.dev, &a, saved), err);
        printf("  refused: %s\n", vhm_device_error(fx.dev));
        assert_non_null(strstr(vhm_device_error(fx.dev), why));
        assert_int_equal(vhm_device_state(fx.dev), VHM_DEVICE_DISCONNECTED);
        assert_int_equal(restart_fx_requests_recorded(), before);
        vhm_device_free(fx.dev);
        fx.dev = NULL;
        vhm_log_free(fx_log);
        fx_log = NULL;
        vhm_vm_free(fx.vm);
        fx.vm = NULL;
        vhm_guest_free(fx.g);
        fx.g = NULL;
        assert_tb_exits_cleanly(&fx.pid, 3000);
        assert_int_equal(count_open_fds(), fx.fds_before);
}

static void refused(struct vhm_device_saved *saved, struct vhu_conn *conn, int err, const char *why) {
        refused_with(saved, conn, -1, err, why);
}

static void adopt_refuses_other_queue_pairs(void **state) {
        (void) state;
        running_logging_device();
        struct vhm_device_saved saved;
        struct vhu_conn *conn = hand_over(&saved);
        saved.queue_pairs = 1;
        refused(&saved, conn, -EINVAL, "queue pairs");
}

static void adopt_refuses_other_features(void **state) {
        (void) state;
        running_logging_device();
        struct vhm_device_saved saved;
        struct vhu_conn *conn = hand_over(&saved);
        saved.protocol_features ^= 1;
        refused(&saved, conn, -EINVAL, "negotiated features");
}

static void adopt_refuses_another_backend_uid(void **state) {
        (void) state;
        running_logging_device();
        struct vhm_device_saved saved;
        struct vhu_conn *conn = hand_over(&saved);
        saved.backend_uid = 4242;
        refused(&saved, conn, -EPERM, "uid 4242");
}

static void adopt_refuses_a_listener_for_a_client_device(void **state) {
        (void) state;
        running_logging_device();
        struct vhm_device_saved saved;
        struct vhu_conn *conn = hand_over(&saved);
        char path[160];
        snprintf(path, sizeof(path), "%s/other.sock", fx.dir);
        int listen_fd = vhu_socket_listen_ex(path, NULL, NULL);
        assert_true(listen_fd >= 0);
        unlink(path);
        refused_with(&saved, conn, listen_fd, -EINVAL, "a client-mode device has no listening socket");
}

/*
 * A server-mode device disconnected at the capture: the new process takes its
 * listening socket back, and a back-end that connected while no daemon ran
 * (it waits in the backlog; a new socket would have reset it) is accepted and
 * served.  A second listener is refused and closed.
 */
static void disconnected_server_device_keeps_its_listener(void **state) {
        (void) state;
        struct vhm_guest_config gc = { .mem_size = 8u << 20, .queue_pairs = QUEUE_PAIRS, .ring_size = 64 };
        GD_CHECK(guest_vm_new("listener", &gc, &fx.g, &fx.vm));
        struct vhm_device_config cfg = {
                .socket = fx.socket,
                .server = true,
                .timeout_ms = 3000,
                .features = vhm_guest_driver_features() | VHU_BIT(VHU_VF_NET_MQ),
                .queue_pairs = QUEUE_PAIRS,
        };
        GD_CHECK(guest_device_new(fx.vm, fx.g, &cfg, &fx.old, NULL));
        /* The previous process listened, nobody came; it dies with its socket in the store. */
        assert_int_equal(vhm_device_reconnect(fx.old, 50), -EAGAIN);
        int listen_fd = fcntl(vhm_device_listen_fd(fx.old), F_DUPFD_CLOEXEC, 3);
        assert_true(listen_fd >= 0);

        struct tb_config tcfg;
        tb_config_init(&tcfg);
        tcfg.record_path = fx.record;
        tcfg.io_timeout_ms = 3000;
        assert_int_equal(tb_spawn_connect(&tcfg, fx.socket, &fx.pid), 0);

        GD_CHECK(guest_device_new(fx.vm, fx.g, &cfg, &fx.dev, NULL));
        DEV_CHECK(fx.dev, vhm_device_adopt_listener(fx.dev, listen_fd));
        assert_int_equal(vhm_device_listen_fd(fx.dev), listen_fd);
        DEV_CHECK(fx.dev, vhm_device_reconnect(fx.dev, 3000));
        DEV_CHECK(fx.dev, vhm_device_start(fx.dev));
        assert_int_equal(vhm_device_state(fx.dev), VHM_DEVICE_RUNNING);

        int again = fcntl(listen_fd, F_DUPFD_CLOEXEC, 3);
        assert_int_equal(vhm_device_adopt_listener(fx.dev, again), -EBUSY);
        assert_int_equal(fcntl(again, F_GETFD), -1);
}

static void adopt_refuses_logging_without_log(void **state) {
        (void) state;
        running_logging_device();
        struct vhm_device_saved saved;
        struct vhu_conn *conn = hand_over(&saved);
        unsigned before = restart_fx_requests_recorded();
        fx.dev = restart_fx_new_device();
        struct vhm_device_adoption a = { .conn = conn, .listen_fd = -1, .log_fd = -1 };
        assert_int_equal(vhm_device_adopt(fx.dev, &a, &saved), -EINVAL);
        assert_non_null(strstr(vhm_device_error(fx.dev), "no log came with it"));
        assert_int_equal(restart_fx_requests_recorded(), before);
        vhm_device_free(fx.dev);
        fx.dev = NULL;
        assert_tb_exits_cleanly(&fx.pid, 3000);
}

static void save_refuses_a_disconnected_device(void **state) {
        (void) state;
        struct vhm_guest_config gc = { .mem_size = 8u << 20, .queue_pairs = QUEUE_PAIRS, .ring_size = 64 };
        GD_CHECK(guest_vm_new("adopt", &gc, &fx.g, &fx.vm));
        fx.dev = restart_fx_new_device();
        struct vhm_device_saved saved;
        assert_int_equal(vhm_device_save(fx.dev, &saved), -EBUSY);
        assert_null(vhm_device_take_conn(fx.dev));
}

#define TEST(t) cmocka_unit_test_setup_teardown(t, setup, teardown)

int main(void) {
        const struct CMUnitTest tests[] = {
                TEST(adopt_running_logging_device_sends_nothing),
                TEST(adopt_refuses_other_queue_pairs),
                TEST(adopt_refuses_other_features),
                TEST(adopt_refuses_another_backend_uid),
                TEST(adopt_refuses_a_listener_for_a_client_device),
                TEST(adopt_refuses_logging_without_log),
                TEST(save_refuses_a_disconnected_device),
                TEST(disconnected_server_device_keeps_its_listener),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The device record of the restart state (daemon/vhostmigd/restart-record.h):
 * a device running and logging on the test back-end is recorded, written as
 * JSON text and read back equal, and the record read back is enough for a
 * new owner to adopt the connection through its fds without a request; a
 * record with a field missing, of another type or out of range is refused
 * naming that field.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/vhostmigd/restart-record.h"
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

/* The log the previous process's device writes. */
static struct vhm_log *fx_log;

static int setup(void **state) {
        (void) state;
        return restart_fx_setup("record");
}

static int teardown(void **state) {
        (void) state;
        vhm_log_free(fx_log);
        fx_log = NULL;
        restart_fx_teardown();
        return 0;
}

static void running_logging_device(void) {
        restart_fx_running_device("record");
        assert_int_equal(vhm_log_new(vhm_vm_top_gpa(fx.vm), &fx_log), 0);
        DEV_CHECK(fx.old, vhm_device_set_log(fx.old, vhm_log_fd(fx_log), vhm_log_size_bytes(fx_log)));
        DEV_CHECK(fx.old, vhm_device_set_logging(fx.old, true));
}

/* The record through JSON text, as the state memfd carries it. */
static void through_text(const struct restart_device_record *in, struct restart_device_record *out) {
        json_object *o = NULL;
        assert_int_equal(restart_record_to_json(in, &o), 0);
        char *text = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
        json_object_put(o);
        printf("  %s\n", text);
        json_object *back = json_tokener_parse(text);
        free(text);
        assert_non_null(back);
        char why[256] = "";
        int r = restart_record_from_json(back, out, why, sizeof(why));
        json_object_put(back);
        if (r < 0)
                fail_msg("restart_record_from_json: %s", why);
}

static void record_round_trip_is_enough_to_adopt(void **state) {
        (void) state;
        running_logging_device();
        struct restart_device_record rec, back;
        assert_int_equal(restart_record_from_device(fx.old, &rec), 0);
        assert_true(rec.channel);
        assert_int_equal(rec.saved.state, VHM_DEVICE_RUNNING);
        through_text(&rec, &back);
        assert_memory_equal(&back.saved, &rec.saved, sizeof(rec.saved));
        assert_true(back.channel);
        assert_int_equal(back.negotiated.features, rec.negotiated.features);
        assert_int_equal(back.negotiated.acked_features, rec.negotiated.acked_features);
        assert_int_equal(back.negotiated.protocol_features, rec.negotiated.protocol_features);
        assert_int_equal(back.negotiated.protocol_features_offered, rec.negotiated.protocol_features_offered);
        assert_int_equal(back.negotiated.queue_num, rec.negotiated.queue_num);
        assert_int_equal(back.negotiated.max_mem_slots, rec.negotiated.max_mem_slots);

        /* The fds as the store keeps them: duplicates; the old owner goes without a word. */
        struct vhu_conn *old_conn = vhm_device_take_conn(fx.old);
        int conn_fd = fcntl(vhu_conn_fd(old_conn), F_DUPFD_CLOEXEC, 3);
        int channel_fd = fcntl(vhu_backend_channel_fd(vhu_conn_backend_channel(old_conn)), F_DUPFD_CLOEXEC, 3);
        assert_true(conn_fd >= 0 && channel_fd >= 0);
        vhu_conn_free(old_conn);
        vhm_device_free(fx.old);
        fx.old = NULL;
        unsigned before = restart_fx_requests_recorded();

        back.negotiated.channel_fd = channel_fd;
        struct vhu_conn *conn = NULL;
        char why[256] = "";
        if (vhu_conn_adopt(conn_fd, &back.negotiated, NULL, &conn, why, sizeof(why)) < 0)
                fail_msg("vhu_conn_adopt: %s", why);
        fx.dev = restart_fx_new_device();
        struct vhm_device_adoption a = {
                .conn = conn, .listen_fd = -1, .log_fd = vhm_log_fd(fx_log), .log_size = vhm_log_size_bytes(fx_log)
        };
        DEV_CHECK(fx.dev, vhm_device_adopt(fx.dev, &a, &back.saved));
        assert_int_equal(vhm_device_state(fx.dev), VHM_DEVICE_RUNNING);
        assert_true(vhm_device_logging(fx.dev));
        sleep_ms(100);
        assert_int_equal(restart_fx_requests_recorded(), before);
        DEV_CHECK(fx.dev, vhm_device_stop(fx.dev));
        assert_int_equal(tb_record_count(fx.record, "VIOLATION"), 0);
        vhm_device_free(fx.dev);
        fx.dev = NULL;
        assert_tb_exits_cleanly(&fx.pid, 3000);
}

/* A valid record's JSON, for the refusals to spoil one field at a time. */
static json_object *valid_json(void) {
        struct restart_device_record rec = {
                .saved = { .state = VHM_DEVICE_RUNNING,
                           .features_offered = UINT64_C(0x8000000000000003),
                           .acked_features = 1,
                           .queue_pairs = 1,
                           .backend_uid = (uid_t) -1,
                           .last_avail = { 7, 65535 } },
                .negotiated = { .acked_features = 1, .queue_num = 1 },
        };
        json_object *o = NULL;
        assert_int_equal(restart_record_to_json(&rec, &o), 0);
        struct restart_device_record back;
        char why[256];
        assert_int_equal(restart_record_from_json(o, &back, why, sizeof(why)), 0);
        assert_int_equal(back.saved.features_offered, UINT64_C(0x8000000000000003));
        assert_int_equal(back.saved.backend_uid, (uid_t) -1);
        assert_int_equal(back.saved.last_avail[1], 65535);
        return o;
}

static void refused(json_object *o, const char *why_part) {
        struct restart_device_record back;
        char why[256] = "";
        assert_int_equal(restart_record_from_json(o, &back, why, sizeof(why)), -EINVAL);
        printf("  refused: %s\n", why);
        assert_non_null(strstr(why, why_part));
        json_object_put(o);
}

static void record_refuses_what_it_cannot_trust(void **state) {
        (void) state;
        static const char *const required[] = {
                "state",
                "features_offered",
                "acked_features",
                "conn_acked_features",
                "protocol_features",
                "protocol_features_offered",
                "queue_num",
                "max_mem_slots",
                "queue_pairs",
                "backend_uid",
                "mtu",
                "logging",
                "log_acknowledged",
                "stop_complete",
                "channel",
                "last_avail",
        };
        for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++) {
                json_object *o = valid_json();
                json_object_object_del(o, required[i]);
                refused(o, required[i]);
        }
        static const struct {
                const char *key, *json, *why;
        } spoilt[] = {
                { "state", "\"failed\"", "\"state\"" },
                { "features_offered", "\"12\"", "\"features_offered\" is not a hexadecimal" },
                { "acked_features", "\"0x\"", "\"acked_features\"" },
                { "protocol_features", "\"0x1g\"", "\"protocol_features\"" },
                { "protocol_features_offered", "3", "\"protocol_features_offered\"" },
                { "queue_pairs", "9", "\"queue_pairs\" is not a number from 1 to 8" },
                { "queue_num", "0", "\"queue_num\"" },
                { "mtu", "65536", "\"mtu\"" },
                { "backend_uid", "-2", "\"backend_uid\"" },
                { "logging", "1", "\"logging\" is not a boolean" },
                { "last_avail", "[1]", "not an array of 2 ring indices" },
                { "last_avail", "[1, 65536]", "\"last_avail\"[1]" },
                { "last_avail", "[1, \"2\"]", "\"last_avail\"[1]" },
        };
        for (size_t i = 0; i < sizeof(spoilt) / sizeof(spoilt[0]); i++) {
                json_object *o = valid_json();
                json_object_object_add(o, spoilt[i].key, json_tokener_parse(spoilt[i].json));
                refused(o, spoilt[i].why);
        }
        refused(json_object_new_array(), "not a JSON object");
}

#define TEST(t) cmocka_unit_test_setup_teardown(t, setup, teardown)

int main(void) {
        const struct CMUnitTest tests[] = {
                TEST(record_round_trip_is_enough_to_adopt),
                TEST(record_refuses_what_it_cannot_trust),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

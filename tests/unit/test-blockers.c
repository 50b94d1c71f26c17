/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Migration blockers from a back-end's features and its device type: the reasons a person reads. */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "migrate/blockers.h"
#include "proto/vhost-user.h"

#define LOGGABLE (VHU_BIT(VHU_VF_PROTOCOL_FEATURES) | VHU_BIT(VHU_VF_LOG_ALL) | VHU_BIT(VHU_VF_VERSION_1))

static void complete_backend_is_migratable(void **state) {
        (void) state;
        struct vhm_blockers b;
        vhm_backend_blockers(LOGGABLE, VHU_BIT(VHU_PF_LOG_SHMFD), &b);
        assert_int_equal(b.n, 0);
}

static void missing_log_shmfd_uses_qemu_wording(void **state) {
        (void) state;
        struct vhm_blockers b;
        vhm_backend_blockers(LOGGABLE, VHU_BIT(VHU_PF_REPLY_ACK), &b);
        assert_int_equal(b.n, 1);
        assert_string_equal(b.reason[0],
                            "Migration disabled: vhost-user backend lacks VHOST_USER_PROTOCOL_F_LOG_SHMFD feature.");
}

static void missing_protocol_features_and_log_all(void **state) {
        (void) state;
        struct vhm_blockers b;
        vhm_backend_blockers(VHU_BIT(VHU_VF_VERSION_1), 0, &b);
        assert_int_equal(b.n, 2);
        assert_non_null(strstr(b.reason[0], "VHOST_USER_F_PROTOCOL_FEATURES"));
        assert_non_null(strstr(b.reason[1], "VHOST_F_LOG_ALL"));
}

#define LOGGING_PF (VHU_BIT(VHU_PF_LOG_SHMFD))
#define FS_BLOCKER "vhost-user-fs: the back-end keeps state outside the rings and does not offer DEVICE_STATE"

/* virtiofsd keeps its open files in its own process: without DEVICE_STATE they cannot move. */
static void fs_without_device_state_is_blocked(void **state) {
        (void) state;
        struct vhm_blockers b;
        vhm_device_type_blockers(VHM_DEVICE_TYPE_FS, LOGGABLE, LOGGING_PF, &b);
        assert_int_equal(b.n, 1);
        assert_string_equal(b.reason[0], FS_BLOCKER);
        char why[VHM_BLOCKER_LEN];
        assert_true(vhm_device_state_blocker(VHM_DEVICE_TYPE_FS, LOGGING_PF, why, sizeof(why)));
        assert_string_equal(why, FS_BLOCKER);

        /* Beside the dirty-log reasons, not instead of them. */
        vhm_device_type_blockers(VHM_DEVICE_TYPE_FS, VHU_BIT(VHU_VF_VERSION_1), 0, &b);
        assert_int_equal(b.n, 3);
        assert_string_equal(b.reason[2], FS_BLOCKER);
}

static void fs_with_device_state_migrates(void **state) {
        (void) state;
        struct vhm_blockers b;
        vhm_device_type_blockers(VHM_DEVICE_TYPE_FS, LOGGABLE, LOGGING_PF | VHU_BIT(VHU_PF_DEVICE_STATE), &b);
        assert_int_equal(b.n, 0);
        char why[VHM_BLOCKER_LEN] = "";
        assert_false(vhm_device_state_blocker(VHM_DEVICE_TYPE_FS, VHU_BIT(VHU_PF_DEVICE_STATE), why, sizeof(why)));
        assert_string_equal(why, "");
}

/* The rings carry a net or blk device's state; a type we know nothing of is treated as fs is. */
static void net_and_blk_need_no_state_other_does(void **state) {
        (void) state;
        struct vhm_blockers b;
        vhm_device_type_blockers(VHM_DEVICE_TYPE_NET, LOGGABLE, LOGGING_PF, &b);
        assert_int_equal(b.n, 0);
        vhm_device_type_blockers(VHM_DEVICE_TYPE_BLK, LOGGABLE, LOGGING_PF, &b);
        assert_int_equal(b.n, 0);
        vhm_device_type_blockers(VHM_DEVICE_TYPE_OTHER, LOGGABLE, LOGGING_PF, &b);
        assert_int_equal(b.n, 1);
        assert_non_null(strstr(b.reason[0], "does not offer DEVICE_STATE"));
        assert_false(vhm_device_type_needs_state(VHM_DEVICE_TYPE_NET));
        assert_false(vhm_device_type_needs_state(VHM_DEVICE_TYPE_BLK));
        assert_true(vhm_device_type_needs_state(VHM_DEVICE_TYPE_FS));
        assert_true(vhm_device_type_needs_state(VHM_DEVICE_TYPE_OTHER));
}

static void type_names_round_trip(void **state) {
        (void) state;
        static const char *const names[] = { "net", "fs", "blk", "other" };
        for (unsigned t = 0; t < VHM_DEVICE_TYPE_MAX; t++) {
                enum vhm_device_type got;
                assert_string_equal(vhm_device_type_name((enum vhm_device_type) t), names[t]);
                assert_int_equal(vhm_device_type_from_name(names[t], &got), 0);
                assert_int_equal(got, t);
        }
        enum vhm_device_type got = VHM_DEVICE_TYPE_BLK;
        assert_int_equal(vhm_device_type_from_name("virtio-fs", &got), -EINVAL);
        assert_int_equal(vhm_device_type_from_name("", &got), -EINVAL);
        assert_int_equal(vhm_device_type_from_name(NULL, &got), -EINVAL);
        assert_int_equal(got, VHM_DEVICE_TYPE_BLK);
        assert_string_equal(vhm_device_type_name(VHM_DEVICE_TYPE_MAX), "unknown");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(complete_backend_is_migratable),
                cmocka_unit_test(missing_log_shmfd_uses_qemu_wording),
                cmocka_unit_test(missing_protocol_features_and_log_all),
                cmocka_unit_test(fs_without_device_state_is_blocked),
                cmocka_unit_test(fs_with_device_state_migrates),
                cmocka_unit_test(net_and_blk_need_no_state_other_does),
                cmocka_unit_test(type_names_round_trip),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Migration blockers from a back-end's features: the reasons a person reads. */
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

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(complete_backend_is_migratable),
                cmocka_unit_test(missing_log_shmfd_uses_qemu_wording),
                cmocka_unit_test(missing_protocol_features_and_log_all),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

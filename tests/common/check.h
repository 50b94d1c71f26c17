/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * What the cmocka tests share: failing a test with the object's own error
 * text when a call returns a negative errno, the synthetic guest's traffic
 * accounted for exactly, and the end of a test back-end that served its
 * connections (gone by itself, cleanly).
 *
 * The macros name the error function of the object they check; a file uses
 * only those whose header it includes (migrate/device.h for DEV_CHECK,
 * migrate/logging.h for LOG_CHECK, proto/vhost-user-frontend.h for
 * CONN_CHECK, tests/common/guest-device.h for GD_CHECK).
 */
#pragma once

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>

#include "tests/backend/test-backend.h"
#include "daemon/guest/guest.h"

/* `call` returns 0 or more, or fails the test with what went wrong and why. */
#define CHECK_WITH(error, call)                                                        \
        do {                                                                           \
                int r_ = (call);                                                       \
                if (r_ < 0)                                                            \
                        fail_msg("%s failed: %s (%s)", #call, (error), strerror(-r_)); \
        } while (0)

#define DEV_CHECK(dev, call) CHECK_WITH(vhm_device_error(dev), call) /* struct vhm_device */
#define LOG_CHECK(lg, call)  CHECK_WITH(vhm_logging_error(lg), call) /* struct vhm_logging */
#define CONN_CHECK(c, call)  CHECK_WITH(vhu_conn_error(c), call)     /* struct vhu_conn */
#define GD_CHECK(call)       CHECK_WITH(guest_device_error(), call)  /* tests/common/guest-device.h */

/*
 * A test back-end that served every connection it was configured for exits
 * by itself, cleanly, within timeout_ms (and its record is complete then).
 * *pid is the child; it is set to 0 once reaped, so a teardown leaves it be.
 */
static inline void assert_tb_exits_cleanly(pid_t *pid, unsigned timeout_ms) {
        int status = tb_wait_exit(*pid, timeout_ms);
        if (status < 0)
                fail_msg("the test back-end (pid %d) did not exit: %s", (int) *pid, strerror(-status));
        *pid = 0;
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
}

/* Every frame the guest sent came back intact, once, in order; nothing else arrived. */
static inline void assert_echoed(const struct vhm_guest_stats *s, uint64_t frames) {
        assert_int_equal(s->sent, frames);
        assert_int_equal(s->received, frames);
        assert_int_equal(s->lost, 0);
        assert_int_equal(s->corrupted, 0);
        assert_int_equal(s->duplicated, 0);
        assert_int_equal(s->other, 0);
        assert_int_equal(s->bad_used, 0);
}

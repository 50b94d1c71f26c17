/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include "tests/restart/restart-fixture.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "daemon/guest/guest.h"
#include "migrate/device.h"
#include "migrate/vm.h"
#include "tests/backend/test-backend.h"
#include "tests/common/fd-count.h"
#include "tests/common/guest-device.h"
#include "tests/common/check.h" /* after the headers whose checks it defines */

struct restart_fx fx;

int restart_fx_setup(const char *prefix) {
        memset(&fx, 0, sizeof(fx));
        fx.pid = -1;
        fx.fds_before = count_open_fds();
        snprintf(fx.dir, sizeof(fx.dir), "/tmp/vhostmig-%s-XXXXXX", prefix);
        if (!mkdtemp(fx.dir))
                return -1;
        snprintf(fx.socket, sizeof(fx.socket), "%s/sock", fx.dir);
        snprintf(fx.record, sizeof(fx.record), "%s/record", fx.dir);
        return 0;
}

void restart_fx_teardown(void) {
        vhm_device_free(fx.dev);
        vhm_device_free(fx.old);
        vhm_vm_free(fx.vm);
        vhm_guest_free(fx.g);
        if (fx.pid > 0)
                (void) tb_stop(fx.pid);
        unlink(fx.socket);
        unlink(fx.record);
        rmdir(fx.dir);
}

struct vhm_device *restart_fx_new_device(void) {
        struct vhm_device_config cfg = {
                .socket = fx.socket,
                .timeout_ms = 3000,
                .features = vhm_guest_driver_features() | VHU_BIT(VHU_VF_NET_MQ),
                .queue_pairs = RESTART_FX_QUEUE_PAIRS,
                .mtu = 1500,
        };
        struct vhm_device *dev = NULL;
        GD_CHECK(guest_device_new(fx.vm, fx.g, &cfg, &dev, NULL));
        return dev;
}

void restart_fx_running_device(const char *name) {
        struct tb_config cfg;
        tb_config_init(&cfg);
        cfg.record_path = fx.record;
        cfg.io_timeout_ms = 3000;
        int r = tb_spawn_listen(&cfg, fx.socket, &fx.pid);
        if (r < 0)
                fail_msg("tb_spawn_listen(%s): %s", fx.socket, strerror(-r));
        struct vhm_guest_config gc = { .mem_size = 8u << 20, .queue_pairs = RESTART_FX_QUEUE_PAIRS, .ring_size = 64 };
        GD_CHECK(guest_vm_new(name, &gc, &fx.g, &fx.vm));
        fx.old = restart_fx_new_device();
        DEV_CHECK(fx.old, vhm_device_connect(fx.old));
        DEV_CHECK(fx.old, vhm_device_start(fx.old));
}

unsigned restart_fx_requests_recorded(void) {
        static const char *const not_requests[] = { "VIOLATION", "BACKEND", "FAULT", "CONNECT", "DISCONNECT",
                                                    "LISTEN",    "ACCEPT",  "EOF",   "CLOSED" };
        char *rec = tb_record_read(fx.record);
        assert_non_null(rec);
        unsigned n = 0;
        for (char *line = strtok(rec, "\n"); line; line = strtok(NULL, "\n")) {
                bool other = false;
                for (size_t i = 0; i < sizeof(not_requests) / sizeof(not_requests[0]); i++)
                        other |= strncmp(line, not_requests[i], strlen(not_requests[i])) == 0;
                n += !other && strstr(line, " flags=0x") != NULL;
        }
        free(rec);
        return n;
}

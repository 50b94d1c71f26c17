/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vhostmigd's configuration: defaults, and every kind of bad file refused with the key named. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#include "daemon/config.h"

static void defaults_without_a_file(void **state) {
        (void) state;
        struct vhostmigd_config c;
        char err[256] = "";
        assert_int_equal(config_load(&c, "/nonexistent/vhostmigd.json", true, err, sizeof(err)), 0);
        assert_int_equal(c.request_timeout_ms, 5000);
        assert_int_equal(c.max_vms, 64);
        assert_int_equal(c.log_level, LOG_INFO);
        /* Named explicitly, a missing file is an error. */
        assert_int_equal(config_load(&c, "/nonexistent/vhostmigd.json", false, err, sizeof(err)), -ENOENT);
        assert_non_null(strstr(err, "/nonexistent/vhostmigd.json"));
}

static void good_file(void **state) {
        (void) state;
        struct vhostmigd_config c;
        config_defaults(&c);
        char err[256];
        assert_int_equal(config_parse(&c, "{ \"request_timeout_ms\": 250, \"log_level\": \"debug\",\n"
                                          "  \"monitor_interval_ms\": 50 }\n", err, sizeof(err)), 0);
        assert_int_equal(c.request_timeout_ms, 250);
        assert_int_equal(c.log_level, LOG_DEBUG);
        assert_int_equal(c.monitor_interval_ms, 50);
        assert_int_equal(c.max_vms, 64); /* untouched keys keep their defaults */
        char *json = config_to_json(&c);
        assert_non_null(strstr(json, "\"request_timeout_ms\":250"));
        free(json);
}

static void bad_files(void **state) {
        (void) state;
        static const struct { const char *text, *mentions; } cases[] = {
                { "{ \"request_timeout\": 5 }", "\"request_timeout\": unknown key" },
                { "{ \"max_vms\": \"ten\" }", "\"max_vms\": expected an integer" },
                { "{ \"max_vms\": 0 }", "\"max_vms\": 0 is out of range" },
                { "{ \"max_vms\": 99999999999 }", "out of range" },
                { "{ \"request_timeout_ms\": 1.5 }", "expected an integer" },
                { "{ \"log_level\": \"loud\" }", "\"log_level\": expected one of" },
                { "{ \"runtime_directory\": \"/run/x\" }", "\"runtime_directory\": unknown key" },
                { "{ \"max_vms\": 3 } trailing", "invalid JSON at byte 17" },
                { "{ \"max_vms\": 3 } {}", "invalid JSON at byte 17" },
                { "{ \"max_vms\": 3, }", "invalid JSON" },
                { "[ 1, 2 ]", "top level must be an object" },
                { "{ \"max_vms\": 3", "unexpected end of input" },
                { "", "invalid JSON" },
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct vhostmigd_config c;
                config_defaults(&c);
                char err[256] = "";
                int r = config_parse(&c, cases[i].text, err, sizeof(err));
                if (r >= 0 || !strstr(err, cases[i].mentions))
                        fail_msg("\"%s\": r=%d error \"%s\", expected \"%s\"", cases[i].text, r, err, cases[i].mentions);
                /* A refused file changes nothing. */
                assert_int_equal(c.max_vms, 64);
        }
}

static void file_errors_name_the_file(void **state) {
        (void) state;
        char path[] = "/tmp/vhostmig-config-XXXXXX";
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, "{ \"max_vms\": -1 }", 17), 17);
        close(fd);
        struct vhostmigd_config c;
        char err[512];
        assert_int_equal(config_load(&c, path, false, err, sizeof(err)), -ERANGE);
        assert_non_null(strstr(err, path));
        assert_non_null(strstr(err, "\"max_vms\""));
        assert_int_equal(c.max_vms, 64);
        unlink(path);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(defaults_without_a_file),
                cmocka_unit_test(good_file),
                cmocka_unit_test(bad_files),
                cmocka_unit_test(file_errors_name_the_file),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

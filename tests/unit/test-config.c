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

#include "daemon/vhostmigd/config.h"

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
        assert_int_equal(config_parse(&c,
                                      "{ \"request_timeout_ms\": 250, \"log_level\": \"debug\",\n"
                                      "  \"monitor_interval_ms\": 50 }\n",
                                      err, sizeof(err)),
                         0);
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
        static const struct {
                const char *text, *mentions;
        } cases[] = {
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
                /* json-c alone would keep the last of two equal keys. */
                { "{\"max_vms\": 3, \"max_vms\": 7}", "\"max_vms\": duplicate key" },
                { "{\"vms\": {\"a\": {\"backend_uids\": [1]}, \"a\": {}}}", "\"a\": duplicate key" },
                { "{\"vms\": {\"a\": {\"backend_uids\": [1], \"backend_uids\": [2]}}}",
                  "\"backend_uids\": duplicate key" },
                { "{\"max_guest_phys_addr\": 1024}", "\"max_guest_phys_addr\": 1024 is out of range" },
                { "{\"max_guest_phys_addr\": 9007199254740993}", "out of range" },
                { "{\"max_guest_phys_addr\": 1073745920001}", "is not a multiple of 4096" },
                { "{\"max_probes\": 0}", "\"max_probes\": 0 is out of range" },
                { "{\"server_socket_mode\": 432}", "\"server_socket_mode\": expected an octal mode" },
                { "{\"server_socket_mode\": \"0968\"}", "expected an octal mode" },
                { "{\"server_socket_mode\": \"1777\"}", "has bits beyond 0777" },
                { "{\"server_socket_mode\": \"0060\"}", "lacks the owner's write permission" },
                { "{\"server_socket_group\": \"no-such-group-here\"}", "no group named \"no-such-group-here\"" },
                { "{\"server_socket_group\": -1}", "\"server_socket_group\": -1 is out of range" },
                { "{\"server_socket_group\": true}", "expected a group name or a gid" },
                { "{\"backend_uids\": 1000}", "\"backend_uids\": expected an array of uids" },
                { "{\"backend_uids\": [1000, \"x\"]}", "\"backend_uids[1]\": expected an integer" },
                { "{\"backend_uids\": [-5]}", "\"backend_uids[0]\": -5 is out of range" },
                { "{\"backend_uids\": [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]}", "at most 16 uids" },
                { "{\"vms\": []}", "\"vms\": expected an object of VM names" },
                { "{\"vms\": {\"bad name\": {}}}", "\"vms\": \"bad name\" is not a VM name" },
                { "{\"vms\": {\"a\": {\"uids\": []}}}", "\"vms.a.uids\": unknown key" },
                { "{\"vms\": {\"a\": {\"backend_uids\": [\"root\"]}}}",
                  "\"vms.a.backend_uids[0]\": expected an integer" },
                { "{\"libvirt\": \"qemu:///system\"}", "\"libvirt\": expected an object" },
                { "{\"libvirt\": {\"url\": \"qemu:///system\"}}", "\"libvirt.url\": unknown key" },
                { "{\"libvirt\": {\"uri\": \"\"}}", "\"libvirt.uri\": expected a libvirt URI" },
                { "{\"libvirt\": {\"uri\": 5}}", "\"libvirt.uri\": expected a libvirt URI" },
                { "{\"libvirt\": {\"keepalive_interval_s\": 0}}",
                  "\"libvirt.keepalive_interval_s\": 0 is out of range" },
                { "{\"libvirt\": {\"keepalive_count\": 0}}", "\"libvirt.keepalive_count\": 0 is out of range" },
                { "{\"libvirt\": {\"reconnect_min_ms\": \"1s\"}}",
                  "\"libvirt.reconnect_min_ms\": expected an integer" },
                { "{\"libvirt\": {\"reconnect_max_ms\": 3600001}}",
                  "\"libvirt.reconnect_max_ms\": 3600001 is out of range" },
                { "{\"libvirt\": {\"reconnect_min_ms\": 5000, \"reconnect_max_ms\": 1000}}",
                  "\"libvirt.reconnect_min_ms\": 5000 is above \"libvirt.reconnect_max_ms\" 1000" },
                { "{\"libvirt\": {\"uri\": \"test:///default\", \"uri\": null}}", "\"uri\": duplicate key" },
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct vhostmigd_config c;
                config_defaults(&c);
                char err[256] = "";
                int r = config_parse(&c, cases[i].text, err, sizeof(err));
                if (r >= 0 || !strstr(err, cases[i].mentions))
                        fail_msg("\"%s\": r=%d error \"%s\", expected \"%s\"", cases[i].text, r, err,
                                 cases[i].mentions);
                /* A refused file changes nothing. */
                assert_int_equal(c.max_vms, 64);
        }
}

static void security_keys(void **state) {
        (void) state;
        struct vhostmigd_config c;
        config_defaults(&c);
        assert_int_equal(c.server_socket_mode, 0660);
        assert_int_equal(c.server_socket_group, (gid_t) -1);
        assert_true(c.max_guest_phys_addr == (UINT64_C(1) << 40));
        assert_int_equal(c.max_probes, 4);
        assert_int_equal(config_backend_uids(&c, "vm0")->n, 0);
        char err[256] = "";
        int r = config_parse(&c,
                             "{ \"server_socket_mode\": \"0666\", \"server_socket_group\": \"root\",\n"
                             "  \"max_guest_phys_addr\": 1099511627776000, \"backend_uids\": [0, 1000],\n"
                             "  \"vms\": { \"vm1\": { \"backend_uids\": [2000] } } }",
                             err, sizeof(err));
        if (r < 0)
                fail_msg("%s", err);
        assert_int_equal(c.server_socket_mode, 0666);
        assert_int_equal(c.server_socket_group, 0);
        assert_true(c.max_guest_phys_addr == UINT64_C(1099511627776000));
        const struct config_uid_list *global = config_backend_uids(&c, "vm0");
        assert_int_equal(global->n, 2);
        assert_int_equal(global->uid[1], 1000);
        const struct config_uid_list *own = config_backend_uids(&c, "vm1");
        assert_int_equal(own->n, 1);
        assert_int_equal(own->uid[0], 2000);
        /* A gid by number, and the effective configuration shows it all. */
        assert_int_equal(config_parse(&c, "{\"server_socket_group\": 4242}", err, sizeof(err)), 0);
        assert_int_equal(c.server_socket_group, 4242);
        char *json = config_to_json(&c);
        assert_non_null(strstr(json, "\"server_socket_mode\":\"0666\""));
        assert_non_null(strstr(json, "\"server_socket_group\":4242"));
        /* What --check-config prints is a configuration that loads to the same settings. */
        struct vhostmigd_config again;
        config_defaults(&again);
        r = config_parse(&again, json, err, sizeof(err));
        if (r < 0)
                fail_msg("%s\n%s", err, json);
        free(json);
        assert_int_equal(again.server_socket_mode, 0666);
        assert_int_equal(again.server_socket_group, 4242);
        assert_true(again.max_guest_phys_addr == c.max_guest_phys_addr);
        assert_int_equal(config_backend_uids(&again, "vm1")->uid[0], 2000);
        assert_int_equal(config_backend_uids(&again, "vm0")->n, 2);
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

/* systemd's level names, both ways, as the file and LogControl1 take them. */
static void log_levels(void **state) {
        (void) state;
        static const char *const names[] = { "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug" };
        for (int level = LOG_EMERG; level <= LOG_DEBUG; level++) {
                assert_string_equal(config_log_level_name(level), names[level]);
                assert_int_equal(config_log_level_from_name(names[level]), level);
                struct vhostmigd_config c;
                config_defaults(&c);
                char text[64], err[256];
                snprintf(text, sizeof(text), "{\"log_level\": \"%s\"}", names[level]);
                assert_int_equal(config_parse(&c, text, err, sizeof(err)), 0);
                assert_int_equal(c.log_level, level);
        }
        assert_int_equal(config_log_level_from_name("DEBUG"), -EINVAL);
        assert_int_equal(config_log_level_from_name("7"), -EINVAL);
        assert_int_equal(config_log_level_from_name(NULL), -EINVAL);
        assert_null(config_log_level_name(8));
        assert_null(config_log_level_name(-1));
}

/* "//" keys are comments at the top level only; anything else stays strict. */
static void comment_keys(void **state) {
        (void) state;
        struct vhostmigd_config c;
        config_defaults(&c);
        char err[256] = "";
        assert_int_equal(
                config_parse(&c, "{\"//\": \"why\", \"// max_vms\": [1, {}], \"max_vms\": 3}", err, sizeof(err)), 0);
        assert_int_equal(c.max_vms, 3);
        assert_int_equal(config_parse(&c, "{\"/ max_vms\": 3}", err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "\"/ max_vms\": unknown key"));
        assert_int_equal(config_parse(&c, "{\"//\": 1, \"//\": 2}", err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "duplicate key"));
        assert_int_equal(config_parse(&c, "{\"vms\": {\"//\": {}}}", err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "is not a VM name"));
}

/* The watcher is off unless a URI is given; its settings keep their defaults where the file is silent. */
static void libvirt_keys(void **state) {
        (void) state;
        struct vhostmigd_config c;
        config_defaults(&c);
        assert_string_equal(c.libvirt.uri, "");
        assert_int_equal(c.libvirt.keepalive_interval_s, 5);
        assert_int_equal(c.libvirt.keepalive_count, 5);
        assert_int_equal(c.libvirt.reconnect_min_ms, 500);
        assert_int_equal(c.libvirt.reconnect_max_ms, 30000);
        char err[256] = "";
        if (config_parse(&c, "{\"libvirt\": {\"uri\": \"qemu:///system\", \"keepalive_count\": 3}}", err, sizeof(err)) <
            0)
                fail_msg("%s", err);
        assert_string_equal(c.libvirt.uri, "qemu:///system");
        assert_int_equal(c.libvirt.keepalive_count, 3);
        assert_int_equal(c.libvirt.reconnect_max_ms, 30000);
        char *json = config_to_json(&c);
        assert_non_null(strstr(json, "\"uri\":\"qemu:///system\""));
        assert_non_null(strstr(json, "\"keepalive_count\":3"));
        free(json);
        /* A refused libvirt section leaves the one before it whole. */
        assert_int_equal(config_parse(&c, "{\"libvirt\": {\"uri\": \"test:///default\", \"reconnect_min_ms\": 1}}", err,
                                      sizeof(err)),
                         -ERANGE);
        assert_string_equal(c.libvirt.uri, "qemu:///system");
        /* null turns it off again. */
        assert_int_equal(config_parse(&c, "{\"libvirt\": {\"uri\": null}}", err, sizeof(err)), 0);
        assert_string_equal(c.libvirt.uri, "");
        struct vhostmigd_config d;
        config_defaults(&d);
        assert_int_equal(config_parse(&d, "{\"libvirt\": {\"uri\": \"test:///default\"}}", err, sizeof(err)), 0);
        char *diff = config_diff(&c, &d);
        assert_non_null(strstr(diff, "libvirt {\"uri\":null,"));
        assert_non_null(strstr(diff, "-> {\"uri\":\"test:///default\","));
        free(diff);
}

/* A reload logs what it changed. */
static void diff_names_what_changed(void **state) {
        (void) state;
        struct vhostmigd_config a, b;
        config_defaults(&a);
        config_defaults(&b);
        char *d = config_diff(&a, &b);
        assert_string_equal(d, "");
        free(d);
        char err[256];
        assert_int_equal(config_parse(&b,
                                      "{\"max_probes\": 2, \"log_level\": \"debug\", \"server_socket_group\": 0,"
                                      " \"vms\": {\"vm1\": {\"backend_uids\": [7]}}}",
                                      err, sizeof(err)),
                         0);
        d = config_diff(&a, &b);
        assert_non_null(strstr(d, "max_probes 4 -> 2"));
        assert_non_null(strstr(d, "log_level \"info\" -> \"debug\""));
        assert_non_null(strstr(d, "server_socket_group (unset) -> 0"));
        assert_non_null(strstr(d, "vms {} -> {\"vm1\":{\"backend_uids\":[7]}}"));
        assert_null(strstr(d, "max_vms"));
        free(d);
        d = config_diff(&b, &a);
        assert_non_null(strstr(d, "server_socket_group 0 -> (unset)"));
        free(d);
}

/* The installed example (VHOSTMIGD_EXAMPLE) is a valid file that changes nothing. */
static void example_is_the_defaults(void **state) {
        (void) state;
        const char *path = getenv("VHOSTMIGD_EXAMPLE");
        if (!path)
                skip();
        struct vhostmigd_config c, defaults;
        char err[512] = "";
        if (config_load(&c, path, false, err, sizeof(err)) < 0)
                fail_msg("%s", err);
        config_defaults(&defaults);
        char *d = config_diff(&defaults, &c);
        if (!d || *d)
                fail_msg("%s differs from the defaults: %s", path, d ? d : "(out of memory)");
        free(d);
}

/*
 * A key or value the file spells with control characters is quoted escaped
 * (as a JSON string) in the refusal, so a file cannot write lines of its own
 * into the log: each case names where the text goes and how it must read.
 */
static void refusals_quote_escaped(void **state) {
        (void) state;
        const struct {
                const char *text, *mentions;
        } cases[] = {
                { "{\"max_vms\\n<3>forged\": 1}", "\"max_vms\\n<3>forged\": unknown key" },
                { "{\"a\\r\\u001b[2J\": 1}", "\"a\\r\\u001b[2J\": unknown key" },
                { "{\"libvirt\": {\"u\\nri\": 1}}", "\"libvirt.u\\nri\": unknown key" },
                { "{\"vms\": {\"a\": {\"x\\ny\": 1}}}", "\"vms.a.x\\ny\": unknown key" },
                { "{\"vms\": {\"a\\nb\": {}}}", "\"vms\": \"a\\nb\" is not a VM name" },
                { "{\"server_socket_group\": \"no\\nsuch\"}", "no group named \"no\\nsuch\"" },
                { "{\"k\\n\": 1, \"k\\n\": 2}", "\"k\\n\": duplicate key" },
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct vhostmigd_config c;
                config_defaults(&c);
                char err[256] = "";
                int r = config_parse(&c, cases[i].text, err, sizeof(err));
                if (r >= 0 || !strstr(err, cases[i].mentions) || strpbrk(err, "\n\r\x1b"))
                        fail_msg("%s: got %d \"%s\", wanted it escaped: %s", cases[i].text, r, err, cases[i].mentions);
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(defaults_without_a_file),
                cmocka_unit_test(good_file),
                cmocka_unit_test(bad_files),
                cmocka_unit_test(security_keys),
                cmocka_unit_test(file_errors_name_the_file),
                cmocka_unit_test(log_levels),
                cmocka_unit_test(comment_keys),
                cmocka_unit_test(refusals_quote_escaped),
                cmocka_unit_test(diff_names_what_changed),
                cmocka_unit_test(libvirt_keys),
                cmocka_unit_test(example_is_the_defaults),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

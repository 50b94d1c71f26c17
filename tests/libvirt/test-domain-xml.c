/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The hook's domain XML parser (daemon/libvirt/domain-xml.h): snippets of
 * libvirt domain XML to the vhost-user devices and the memory verdict they
 * must give, and hostile or broken documents refused with a reason.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/libvirt/domain-xml.h"

static struct vhm_domain_xml *parse_ok(const char *xml) {
        struct vhm_domain_xml *dx = NULL;
        char why[512] = "";
        int r = vhm_domain_xml_parse(xml, strlen(xml), &dx, why, sizeof(why));
        if (r < 0)
                fail_msg("parse failed: %s (%s)", why, strerror(-r));
        return dx;
}

static int parse_err(const char *xml, size_t len, char *why, size_t why_len) {
        struct vhm_domain_xml *dx = NULL;
        int r = vhm_domain_xml_parse(xml, len, &dx, why, why_len);
        assert_true(r < 0);
        assert_null(dx);
        return r;
}

/* A domain with the given <memoryBacking>/<cpu> part and devices. */
static char *domain(const char *memory, const char *devices) {
        char *s = NULL;
        int n = asprintf(&s,
                         "<domain type='kvm'>\n  <name>vm1</name>\n"
                         "  <uuid>4DEA22B3-1D52-D8F3-2516-782E98AB3FA0</uuid>\n  <memory unit='KiB'>1048576</memory>\n"
                         "%s\n  <devices>\n%s\n  </devices>\n</domain>\n",
                         memory, devices);
        assert_true(n > 0);
        return s;
}

#define MEMFD "<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>"
#define NET_CLIENT(mac, path)                                  \
        "<interface type='vhostuser'><mac address='" mac "'/>" \
        "<source type='unix' path='" path "' mode='client'/><model type='virtio'/></interface>"

static void test_devices(void **state) {
        (void) state;
        char *xml = domain(
                MEMFD,
                NET_CLIENT(
                        "52:54:00:3b:83:1b",
                        "/run/vhu0.sock") "<interface type='vhostuser'><mac address='52:54:00:00:00:02'/>"
                                          "<source type='unix' path='/run/vhu1.sock' mode='server'/></interface>"
                                          "<interface type='network'><mac address='52:54:00:00:00:03'/><source network='default'/></interface>"
                                          "<disk type='vhostuser' device='disk'><driver name='qemu' type='raw'/>"
                                          "<source type='unix' path='/run/blk.sock'><reconnect enabled='yes' timeout='10'/></source>"
                                          "<target dev='vdb' bus='virtio'/></disk>"
                                          "<disk type='file' device='disk'><source file='/var/lib/x.qcow2'/><target dev='vda'/></disk>"
                                          "<filesystem type='mount'><driver type='virtiofs' queue='1024'/>"
                                          "<source socket='/run/fs.sock'/><target dir='share'/></filesystem>"
                                          "<filesystem type='mount' accessmode='passthrough'><driver type='virtiofs'/>"
                                          "<source dir='/srv'/><target dir='internal'/></filesystem>"
                                          "<filesystem type='mount'><driver type='path'/><source dir='/x'/><target dir='p9'/></filesystem>");
        struct vhm_domain_xml *dx = parse_ok(xml);
        assert_string_equal(dx->name, "vm1");
        assert_string_equal(dx->uuid, "4dea22b3-1d52-d8f3-2516-782e98ab3fa0");
        assert_true(dx->memory_shared);
        assert_int_equal(dx->ndevices, 5);

        const struct vhm_dx_device *d = dx->devices;
        assert_int_equal(d[0].kind, VHM_DX_INTERFACE);
        assert_string_equal(d[0].mac, "52:54:00:3b:83:1b");
        assert_string_equal(d[0].socket, "/run/vhu0.sock");
        assert_int_equal(d[0].listener, VHM_DX_BACKEND_LISTENS);

        assert_int_equal(d[1].kind, VHM_DX_INTERFACE);
        assert_int_equal(d[1].listener, VHM_DX_QEMU_LISTENS);
        assert_string_equal(d[1].socket, "/run/vhu1.sock");

        assert_int_equal(d[2].kind, VHM_DX_DISK);
        assert_string_equal(d[2].socket, "/run/blk.sock");
        assert_string_equal(d[2].target, "vdb");
        assert_int_equal(d[2].listener, VHM_DX_BACKEND_LISTENS);
        assert_null(d[2].mac);

        assert_int_equal(d[3].kind, VHM_DX_FS);
        assert_string_equal(d[3].socket, "/run/fs.sock");
        assert_string_equal(d[3].target, "share");
        assert_int_equal(d[3].listener, VHM_DX_BACKEND_LISTENS);

        /* virtiofsd started by libvirt itself: no socket to ask yet. */
        assert_int_equal(d[4].kind, VHM_DX_FS);
        assert_null(d[4].socket);
        assert_int_equal(d[4].listener, VHM_DX_UNKNOWN);
        vhm_domain_xml_free(dx);
        free(xml);
}

static void test_no_vhost_user(void **state) {
        (void) state;
        char *xml = domain("", "<interface type='bridge'><source bridge='br0'/></interface>"
                               "<disk type='file'><source file='/x'/></disk>");
        struct vhm_domain_xml *dx = parse_ok(xml);
        assert_int_equal(dx->ndevices, 0);
        assert_false(dx->memory_shared); /* said, but without vhost-user nobody needs it */
        vhm_domain_xml_free(dx);
        free(xml);
}

/* An interface without mode or socket is kept, as unknown: the hook says it cannot check it. */
static void test_incomplete_interface(void **state) {
        (void) state;
        char *xml = domain(MEMFD, "<interface type='vhostuser'><source type='unix' path='/run/a.sock'/></interface>"
                                  "<interface type='vhostuser'/>");
        struct vhm_domain_xml *dx = parse_ok(xml);
        assert_int_equal(dx->ndevices, 2);
        assert_int_equal(dx->devices[0].listener, VHM_DX_UNKNOWN);
        assert_string_equal(dx->devices[0].socket, "/run/a.sock");
        assert_null(dx->devices[0].mac);
        assert_int_equal(dx->devices[1].listener, VHM_DX_UNKNOWN);
        assert_null(dx->devices[1].socket);
        vhm_domain_xml_free(dx);
        free(xml);
}

/* Elements in another namespace (<metadata> content, tricks) are not libvirt's devices. */
static void test_namespaced_ignored(void **state) {
        (void) state;
        char *xml = domain(MEMFD, "<x:interface xmlns:x='http://example.org/x' type='vhostuser'>"
                                  "<x:source type='unix' path='/run/a.sock' mode='client'/></x:interface>");
        struct vhm_domain_xml *dx = parse_ok(xml);
        assert_int_equal(dx->ndevices, 0);
        vhm_domain_xml_free(dx);
        free(xml);
}

static void check_memory_verdict(const char *memory, bool shared, const char *why_part) {
        char *xml = domain(memory, NET_CLIENT("52:54:00:00:00:01", "/run/a.sock"));
        struct vhm_domain_xml *dx = parse_ok(xml);
        if (dx->memory_shared != shared)
                fail_msg("memory %s: expected %s, got %s (%s)", memory, shared ? "shared" : "private",
                         dx->memory_shared ? "shared" : "private", dx->memory_why);
        if (why_part && !strstr(dx->memory_why, why_part))
                fail_msg("memory %s: reason \"%s\" lacks \"%s\"", memory, dx->memory_why, why_part);
        vhm_domain_xml_free(dx);
        free(xml);
}

#define NUMA(cells)      "<cpu><numa>" cells "</numa></cpu>"
#define CELL(id, access) "<cell id='" id "' cpus='0' memory='524288' unit='KiB'" access "/>"

static void test_memory_rules(void **state) {
        (void) state;
        check_memory_verdict("", false, "neither <source type='memfd'/> nor <access mode='shared'/>");
        check_memory_verdict("<memoryBacking><source type='memfd'/></memoryBacking>", true, NULL);
        check_memory_verdict(MEMFD, true, NULL);
        check_memory_verdict("<memoryBacking><source type='memfd'/><access mode='private'/></memoryBacking>", false,
                             "<access mode='private'/>");
        check_memory_verdict("<memoryBacking><source type='file'/><access mode='shared'/></memoryBacking>", true, NULL);
        check_memory_verdict("<memoryBacking><source type='file'/></memoryBacking>", false, "neither");
        check_memory_verdict("<memoryBacking><hugepages/><access mode='shared'/></memoryBacking>", true, NULL);
        check_memory_verdict("<memoryBacking><hugepages/></memoryBacking>", false, "neither");
        /* Per NUMA cell: memAccess overrides, no attribute inherits. */
        check_memory_verdict("<memoryBacking><hugepages/></memoryBacking>" NUMA(
                                     CELL("0", " memAccess='shared'") CELL("1", " memAccess='shared'")),
                             true, NULL);
        check_memory_verdict(
                "<memoryBacking><hugepages/></memoryBacking>" NUMA(CELL("0", " memAccess='shared'") CELL("1", "")),
                false, "NUMA cell 1");
        check_memory_verdict(MEMFD NUMA(CELL("0", "") CELL("1", "")), true, NULL);
        check_memory_verdict(MEMFD NUMA(CELL("0", "") CELL("7", " memAccess='private'")), false,
                             "NUMA cell 7: memAccess='private'");
}

static void test_memory_device(void **state) {
        (void) state;
        char *xml = domain(
                MEMFD,
                NET_CLIENT("52:54:00:00:00:01",
                           "/run/a.sock") "<memory model='dimm' access='private'><target><size unit='KiB'>524288</size>"
                                          "<node>0</node></target></memory>");
        struct vhm_domain_xml *dx = parse_ok(xml);
        assert_false(dx->memory_shared);
        assert_non_null(strstr(dx->memory_why, "memory device: access='private'"));
        vhm_domain_xml_free(dx);
        free(xml);
}

static void test_malformed(void **state) {
        (void) state;
        char why[512];
        const char *bad = "<domain><name>vm1</name><devices><interface type='vhostuser'></devices></domain>";
        assert_int_equal(parse_err(bad, strlen(bad), why, sizeof(why)), -EINVAL);
        assert_non_null(strstr(why, "malformed XML, line 1"));
        assert_null(strchr(why, '\n'));

        assert_int_equal(parse_err("", 0, why, sizeof(why)), -EINVAL);
        assert_non_null(strstr(why, "malformed XML"));

        const char *other = "<network><name>default</name></network>";
        assert_int_equal(parse_err(other, strlen(other), why, sizeof(why)), -EINVAL);
        assert_string_equal(why, "the root element is <network>, not <domain>");

        const char *nul = "<domain>\0</domain>";
        assert_int_equal(parse_err(nul, 18, why, sizeof(why)), -EINVAL);
}

/* A DTD (entity expansion, external entities) is refused, never fetched or expanded. */
static void test_doctype_refused(void **state) {
        (void) state;
        char why[512];
        const char *ext = "<?xml version='1.0'?><!DOCTYPE domain [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>"
                          "<domain><name>&x;</name></domain>";
        assert_int_equal(parse_err(ext, strlen(ext), why, sizeof(why)), -EINVAL);
        assert_string_equal(why, "a <!DOCTYPE> has no place in a domain XML");

        const char *laughs = "<!DOCTYPE d [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;'>"
                             "<!ENTITY c '&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;'>]><domain><name>&c;</name></domain>";
        assert_int_equal(parse_err(laughs, strlen(laughs), why, sizeof(why)), -EINVAL);

        const char *sys = "<!DOCTYPE domain SYSTEM 'http://127.0.0.1:1/x.dtd'><domain/>";
        assert_int_equal(parse_err(sys, strlen(sys), why, sizeof(why)), -EINVAL);

        /* An undeclared entity without a DTD is simply not well-formed. */
        const char *undecl = "<domain><name>&x;</name></domain>";
        assert_int_equal(parse_err(undecl, strlen(undecl), why, sizeof(why)), -EINVAL);
}

static void test_bounds(void **state) {
        (void) state;
        char why[512];
        size_t big = VHM_DX_MAX_INPUT + 1;
        char *buf = malloc(big);
        assert_non_null(buf);
        memset(buf, ' ', big);
        assert_int_equal(parse_err(buf, big, why, sizeof(why)), -E2BIG);
        assert_non_null(strstr(why, "more than"));
        free(buf);

        /* One device more than accepted. */
        size_t one = strlen(NET_CLIENT("52:54:00:00:00:01", "/run/a.sock"));
        size_t n = VHM_DX_MAX_DEVICES + 1;
        char *devs = malloc(one * n + 1);
        assert_non_null(devs);
        for (size_t i = 0; i < n; i++)
                memcpy(devs + i * one, NET_CLIENT("52:54:00:00:00:01", "/run/a.sock"), one);
        devs[one * n] = '\0';
        char *xml = domain(MEMFD, devs);
        assert_int_equal(parse_err(xml, strlen(xml), why, sizeof(why)), -E2BIG);
        assert_non_null(strstr(why, "vhost-user devices"));
        free(xml);
        free(devs);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_devices),
                cmocka_unit_test(test_no_vhost_user),
                cmocka_unit_test(test_incomplete_interface),
                cmocka_unit_test(test_namespaced_ignored),
                cmocka_unit_test(test_memory_rules),
                cmocka_unit_test(test_memory_device),
                cmocka_unit_test(test_malformed),
                cmocka_unit_test(test_doctype_refused),
                cmocka_unit_test(test_bounds),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Tests of the test back-end itself, driven with raw messages through the
 * transport (no front-end library): it answers, honours NEED_REPLY, records,
 * keeps state, fires faults, talks on the back-end channel, refuses unknown
 * requests by closing, and leaks no fd.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "proto/vhost-user-table.h"
#include "proto/vhost-user-transport.h"
#include "tests/backend/test-backend.h"
#include "tests/common/fd-count.h"

#define IO_MS 3000u

/* ---------------------------------------------------------------- harness */

struct fx {
        char dir[64];
        char sock[128];
        char rec[128];
        pid_t pid;
        int fd;
};

static void fx_dirs(struct fx *f) {
        memset(f, 0, sizeof(*f));
        strcpy(f->dir, "/tmp/tb-test-XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        snprintf(f->sock, sizeof(f->sock), "%s/sock", f->dir);
        snprintf(f->rec, sizeof(f->rec), "%s/record", f->dir);
        f->fd = -1;
        f->pid = -1;
}

/* A back-end listening in a child, and a connection to it. */
static void fx_start(struct fx *f, struct tb_config *cfg) {
        fx_dirs(f);
        cfg->record_path = f->rec;
        assert_int_equal(tb_spawn_listen(cfg, f->sock, &f->pid), 0);
        f->fd = vhu_socket_connect(f->sock);
        assert_true(f->fd >= 0);
}

static void fx_stop(struct fx *f) {
        if (f->fd >= 0)
                close(f->fd);
        if (f->pid > 0)
                tb_stop(f->pid);
        unlink(f->rec);
        unlink(f->sock);
        rmdir(f->dir);
}

static void dump_record(const struct fx *f) {
        char *text = tb_record_read(f->rec);
        fprintf(stderr, "---- record ----\n%s----------------\n", text ? text : "(none)\n");
        free(text);
}

static void assert_recorded(const struct fx *f, const char *needle) {
        if (!tb_record_contains(f->rec, needle)) {
                fprintf(stderr, "record lacks: %s\n", needle);
                dump_record(f);
                fail();
        }
}

static void assert_no_violation(const struct fx *f) {
        if (tb_record_count(f->rec, "VIOLATION") != 0) {
                dump_record(f);
                fail();
        }
}

static int send_req(int fd, uint32_t request, uint32_t flags, const void *payload, uint32_t size, const int *fds,
                    unsigned nfds) {
        struct vhu_msg m;
        memset(&m, 0, sizeof(m));
        m.hdr.request = request;
        m.hdr.flags = VHU_VERSION | flags;
        m.hdr.size = size;
        if (size)
                memcpy(&m.payload, payload, size);
        for (unsigned i = 0; i < nfds; i++)
                m.fds[i] = fds[i];
        m.nfds = nfds;
        return vhu_send_msg(fd, &m, NULL, vhu_deadline_after_ms(IO_MS));
}

/* A reply whose size fits the payload union, with its fds. */
static int recv_msg(int fd, struct vhu_msg *m) {
        memset(m, 0, sizeof(*m));
        int r = vhu_recv_hdr(fd, m, NULL, vhu_deadline_after_ms(IO_MS));
        if (r < 0)
                return r;
        if (m->hdr.size > sizeof(m->payload))
                return -EMSGSIZE;
        return vhu_recv_payload(fd, m, NULL, vhu_deadline_after_ms(IO_MS));
}

static void expect_reply(int fd, uint32_t request, uint32_t size, struct vhu_msg *m) {
        assert_int_equal(recv_msg(fd, m), 0);
        assert_int_equal(m->hdr.request, request);
        assert_int_equal(m->hdr.flags, VHU_REPLY_FLAGS);
        assert_int_equal(m->hdr.size, size);
}

static uint64_t get_u64(int fd, uint32_t request) {
        struct vhu_msg m;
        assert_int_equal(send_req(fd, request, 0, NULL, 0, NULL, 0), 0);
        expect_reply(fd, request, 8, &m);
        assert_int_equal(m.nfds, 0);
        return m.payload.u64;
}

static void set_u64(int fd, uint32_t request, uint32_t flags, uint64_t v) {
        assert_int_equal(send_req(fd, request, flags, &v, sizeof(v), NULL, 0), 0);
}

/* Sends a u64 request with NEED_REPLY and returns the ack status. */
static uint64_t acked(int fd, uint32_t request, const void *payload, uint32_t size, const int *fds, unsigned nfds) {
        struct vhu_msg m;
        assert_int_equal(send_req(fd, request, VHU_FLAG_NEED_REPLY, payload, size, fds, nfds), 0);
        expect_reply(fd, request, 8, &m);
        return m.payload.u64;
}

static bool nothing_arrives(int fd, int ms) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        return poll(&p, 1, ms) == 0;
}

static void expect_closed(int fd) {
        struct vhu_msg m;
        assert_int_equal(vhu_recv_hdr(fd, &m, NULL, vhu_deadline_after_ms(IO_MS)), -ECONNRESET);
}

/* The opening a front-end makes: features and protocol features acknowledged. */
static void negotiate(int fd, uint64_t pf) {
        uint64_t f = get_u64(fd, VHU_REQ_GET_FEATURES);
        uint64_t offered = get_u64(fd, VHU_REQ_GET_PROTOCOL_FEATURES);
        set_u64(fd, VHU_REQ_SET_FEATURES, 0, f & ~VHU_BIT(VHU_VF_LOG_ALL));
        set_u64(fd, VHU_REQ_SET_PROTOCOL_FEATURES, 0, pf & offered);
}

static int memfd_of(size_t size) {
        int fd = memfd_create("tb-test", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, (off_t) size), 0);
        return fd;
}

#define PF_BASIC                                                                                                    \
        (VHU_BIT(VHU_PF_MQ) | VHU_BIT(VHU_PF_LOG_SHMFD) | VHU_BIT(VHU_PF_REPLY_ACK) | VHU_BIT(VHU_PF_BACKEND_REQ) | \
         VHU_BIT(VHU_PF_CONFIG) | VHU_BIT(VHU_PF_STATUS) | VHU_BIT(VHU_PF_CONFIGURE_MEM_SLOTS) |                    \
         VHU_BIT(VHU_PF_INFLIGHT_SHMFD) | VHU_BIT(VHU_PF_CRYPTO_SESSION) | VHU_BIT(VHU_PF_SHARED_OBJECT) |          \
         VHU_BIT(VHU_PF_DEVICE_STATE))

/* ---------------------------------------------------------------- tests */

static void test_parse(void **state) {
        (void) state;
        struct tb_fault f;
        struct tb_backend_req b;
        uint32_t req;

        assert_int_equal(tb_request_from_name("SET_MEM_TABLE", &req), 0);
        assert_int_equal(req, VHU_REQ_SET_MEM_TABLE);
        assert_int_equal(tb_request_from_name("check_device_state", &req), 0);
        assert_int_equal(req, VHU_REQ_CHECK_DEVICE_STATE);
        assert_int_equal(tb_request_from_name("6", &req), 0);
        assert_int_equal(req, VHU_REQ_SET_LOG_BASE);
        assert_int_equal(tb_request_from_name("NO_SUCH_REQUEST", &req), -EINVAL);
        assert_int_equal(tb_request_from_name("99", &req), -EINVAL);

        assert_int_equal(tb_parse_fault("SET_MEM_TABLE:close", &f), 0);
        assert_int_equal(f.request, VHU_REQ_SET_MEM_TABLE);
        assert_int_equal(f.kind, TB_FAULT_CLOSE);
        assert_int_equal(f.nth, 1);
        assert_false(f.has_value);
        assert_int_equal(tb_parse_fault("GET_FEATURES:bad-flags=0x1:3", &f), 0);
        assert_int_equal(f.kind, TB_FAULT_BAD_FLAGS);
        assert_true(f.has_value);
        assert_int_equal(f.value, 1);
        assert_int_equal(f.nth, 3);
        assert_int_equal(tb_parse_fault("SET_OWNER", &f), -EINVAL);
        assert_int_equal(tb_parse_fault("SET_OWNER:explode", &f), -EINVAL);
        assert_int_equal(tb_parse_fault("SET_OWNER:close:0", &f), -EINVAL);
        assert_int_equal(tb_parse_fault("SET_OWNER:close:1:2", &f), -EINVAL);
        for (unsigned k = 0; k < TB_FAULT_KIND_COUNT; k++) {
                char spec[64];
                snprintf(spec, sizeof(spec), "GET_FEATURES:%s", tb_fault_kind_name((enum tb_fault_kind) k));
                assert_int_equal(tb_parse_fault(spec, &f), 0);
                assert_int_equal(f.kind, k);
        }

        assert_int_equal(tb_parse_backend_req("CONFIG_CHANGE_MSG:need-reply", &b), 0);
        assert_int_equal(b.request, VHU_BREQ_CONFIG_CHANGE_MSG);
        assert_true(b.need_reply);
        assert_int_equal(b.after, 0);
        assert_int_equal(b.timing, TB_BACKEND_AFTER_REPLY);
        assert_int_equal(tb_parse_backend_req("99:after=SET_VRING_KICK:block:index=3", &b), 0);
        assert_int_equal(b.request, 99);
        assert_false(b.need_reply);
        assert_int_equal(b.after, VHU_REQ_SET_VRING_KICK);
        assert_int_equal(b.timing, TB_BACKEND_BEFORE_REPLY);
        assert_int_equal(b.index, 3);
        assert_int_equal(tb_parse_backend_req("NOPE", &b), -EINVAL);
        assert_int_equal(tb_parse_backend_req("VRING_CALL:sometimes", &b), -EINVAL);

        struct tb_config cfg;
        tb_config_init(&cfg);
        assert_int_equal(tb_config_features(&cfg) & VHU_BIT(VHU_VF_NET_GUEST_ANNOUNCE), 0);
        assert_true(tb_config_features(&cfg) & VHU_BIT(VHU_VF_LOG_ALL));
        assert_int_equal(tb_config_protocol_features(&cfg), 0xdfeff);
        cfg.no_log_shmfd = cfg.no_mq = true;
        assert_int_equal(tb_config_protocol_features(&cfg), 0xdfeff & ~UINT64_C(3));
        cfg.no_protocol_features = true;
        assert_int_equal(tb_config_protocol_features(&cfg), 0);
        assert_int_equal(tb_config_features(&cfg) & VHU_BIT(VHU_VF_PROTOCOL_FEATURES), 0);
        cfg.log_reply_size = 4;
        assert_int_equal(tb_config_check(&cfg, NULL), -EINVAL);
}

static void test_get_features_and_record(void **state) {
        (void) state;
        struct tb_config cfg;
        struct fx f;
        tb_config_init(&cfg);
        fx_start(&f, &cfg);

        assert_int_equal(get_u64(f.fd, VHU_REQ_GET_FEATURES), TB_DEFAULT_FEATURES);
        assert_int_equal(get_u64(f.fd, VHU_REQ_GET_PROTOCOL_FEATURES), TB_DEFAULT_PROTOCOL_FEATURES);
        set_u64(f.fd, VHU_REQ_SET_FEATURES, 0, VHU_BIT(VHU_VF_VERSION_1) | VHU_BIT(VHU_VF_PROTOCOL_FEATURES));
        set_u64(f.fd, VHU_REQ_SET_PROTOCOL_FEATURES, 0, VHU_BIT(VHU_PF_MQ));
        assert_int_equal(get_u64(f.fd, VHU_REQ_GET_QUEUE_NUM), TB_DEFAULT_QUEUES);

        assert_recorded(&f, "CONNECTION 1 OPEN\nGET_FEATURES flags=0x1 size=0 fds=0\n");
        assert_recorded(&f, "SET_FEATURES flags=0x1 size=8 fds=0 features=0x140000000\n");
        assert_recorded(&f, "SET_PROTOCOL_FEATURES flags=0x1 size=8 fds=0 features=0x1\n");
        assert_recorded(&f, "GET_QUEUE_NUM flags=0x1 size=0 fds=0\n");
        assert_no_violation(&f);

        /* A child serving one connection exits when it ends. */
        close(f.fd);
        f.fd = -1;
        int status = tb_wait_exit(f.pid, IO_MS);
        assert_true(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0);
        f.pid = -1;
        assert_recorded(&f, "CONNECTION 1 CLOSED peer closed");
        struct stat st;
        assert_int_equal(stat(f.sock, &st), -1);
        fx_stop(&f);
}

static void test_need_reply(void **state) {
        (void) state;
        struct tb_config cfg;
        struct fx f;
        struct vhu_msg m;
        tb_config_init(&cfg);
        fx_start(&f, &cfg);

        /* Before REPLY_ACK: no ack, and the front-end broke a rule. */
        assert_int_equal(send_req(f.fd, VHU_REQ_SET_OWNER, VHU_FLAG_NEED_REPLY, NULL, 0, NULL, 0), 0);
        assert_int_equal(get_u64(f.fd, VHU_REQ_GET_FEATURES), TB_DEFAULT_FEATURES);
        assert_recorded(&f, "VIOLATION SET_OWNER: NEED_REPLY without REPLY_ACK negotiated");

        /* SET_PROTOCOL_FEATURES may itself ask for the ack it turns on. */
        uint64_t pf = VHU_BIT(VHU_PF_REPLY_ACK) | VHU_BIT(VHU_PF_MQ);
        assert_int_equal(acked(f.fd, VHU_REQ_SET_PROTOCOL_FEATURES, &pf, sizeof(pf), NULL, 0), 0);

        struct vhu_vring_state vs = { .index = 1, .num = 256 };
        assert_int_equal(acked(f.fd, VHU_REQ_SET_VRING_NUM, &vs, sizeof(vs), NULL, 0), 0);
        /* A refused request: ring 300 cannot exist (the index has 8 bits). */
        vs.index = 300;
        assert_int_equal(acked(f.fd, VHU_REQ_SET_VRING_NUM, &vs, sizeof(vs), NULL, 0), 1);

        /* A request with its own reply gets only that, NEED_REPLY or not. */
        assert_int_equal(send_req(f.fd, VHU_REQ_GET_FEATURES, VHU_FLAG_NEED_REPLY, NULL, 0, NULL, 0), 0);
        expect_reply(f.fd, VHU_REQ_GET_FEATURES, 8, &m);
        assert_true(nothing_arrives(f.fd, 100));

        /* Without NEED_REPLY, nothing comes back. */
        vs.index = 0;
        vs.num = 0;
        assert_int_equal(send_req(f.fd, VHU_REQ_SET_VRING_NUM, 0, &vs, sizeof(vs), NULL, 0), 0);
        assert_true(nothing_arrives(f.fd, 100));
        assert_recorded(&f, "SET_VRING_NUM flags=0x9 size=8 fds=0 index=1 num=256\n");
        assert_recorded(&f, "SET_VRING_NUM flags=0x1 size=8 fds=0 index=0 num=0\n");
        assert_recorded(&f, "VIOLATION SET_VRING_NUM: ring 0 size 0 out of range");
        assert_int_equal(tb_record_count(f.rec, "VIOLATION"), 3);
        fx_stop(&f);
}

static void test_fault_bad_flags_without_need_reply(void **state) {
        (void) state;
        struct tb_config cfg;
        struct tb_fault fault;
        struct fx f;
        struct vhu_msg m;

        tb_config_init(&cfg);
        assert_int_equal(tb_parse_fault("SET_OWNER:bad-flags", &fault), 0);
        assert_int_equal(tb_config_add_fault(&cfg, &fault), 0);
        fx_start(&f, &cfg);

        /* SET_OWNER gets no reply normally: the bad one comes anyway. */
        assert_int_equal(send_req(f.fd, VHU_REQ_SET_OWNER, 0, NULL, 0, NULL, 0), 0);
        assert_int_equal(recv_msg(f.fd, &m), 0);
        assert_int_equal(m.hdr.request, VHU_REQ_SET_OWNER);
        assert_int_equal(m.hdr.flags, 0xd);
        assert_int_equal(m.hdr.size, 8);
        assert_recorded(&f, "SET_OWNER flags=0x1 size=0 fds=0\nFAULT bad-flags SET_OWNER\n");
        fx_stop(&f);
}

static void test_fault_close_nth_then_reconnect(void **state) {
        (void) state;
        struct tb_config cfg;
        struct tb_fault fault;
        struct fx f;

        tb_config_init(&cfg);
        cfg.max_connections = 2;
        assert_int_equal(tb_parse_fault("GET_FEATURES:close:2", &fault), 0);
        assert_int_equal(tb_config_add_fault(&cfg, &fault), 0);
        fx_start(&f, &cfg);

        assert_int_equal(get_u64(f.fd, VHU_REQ_GET_FEATURES), TB_DEFAULT_FEATURES);
        assert_int_equal(send_req(f.fd, VHU_REQ_GET_FEATURES, 0, NULL, 0, NULL, 0), 0);
        expect_closed(f.fd);
        close(f.fd);
        assert_recorded(&f, "FAULT close GET_FEATURES\nCONNECTION 1 CLOSED fault close\n");

        /* The fault fired once: the next connection is served normally. */
        f.fd = vhu_socket_connect(f.sock);
        assert_true(f.fd >= 0);
        assert_int_equal(get_u64(f.fd, VHU_REQ_GET_FEATURES), TB_DEFAULT_FEATURES);
        assert_int_equal(get_u64(f.fd, VHU_REQ_GET_FEATURES), TB_DEFAULT_FEATURES);
        assert_int_equal(tb_record_count(f.rec, "FAULT"), 1);
        fx_stop(&f);
}

/* Each reply-bending fault on GET_FEATURES, checked on the wire. */
static void test_fault_kinds(void **state) {
        (void) state;
        static const struct {
                const char *spec;
                int recv_result;
                uint32_t request, flags, size;
                unsigned nfds;
        } cases[] = {
                { "GET_FEATURES:bad-flags=0x1", 0, VHU_REQ_GET_FEATURES, 0x1, 8, 0 },
                { "GET_FEATURES:oversize", 0, VHU_REQ_GET_FEATURES, 0x5, 16, 0 },
                { "GET_FEATURES:undersize", 0, VHU_REQ_GET_FEATURES, 0x5, 7, 0 },
                { "GET_FEATURES:wrong-request", 0, VHU_REQ_SET_FEATURES, 0x5, 8, 0 },
                { "GET_FEATURES:wrong-request=15", 0, VHU_REQ_GET_PROTOCOL_FEATURES, 0x5, 8, 0 },
                { "GET_FEATURES:extra-fds", 0, VHU_REQ_GET_FEATURES, 0x5, 8, 1 },
                { "GET_FEATURES:extra-fds=3", 0, VHU_REQ_GET_FEATURES, 0x5, 8, 3 },
                { "GET_FEATURES:garbage", -EMSGSIZE, VHU_REQ_GET_FEATURES, 0x5, UINT32_MAX, 0 },
                { "GET_FEATURES:nack", 0, VHU_REQ_GET_FEATURES, 0x5, 8, 0 },
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct tb_config cfg;
                struct tb_fault fault;
                struct fx f;
                struct vhu_msg m;
                char line[128];

                tb_config_init(&cfg);
                assert_int_equal(tb_parse_fault(cases[i].spec, &fault), 0);
                assert_int_equal(tb_config_add_fault(&cfg, &fault), 0);
                fx_start(&f, &cfg);
                assert_int_equal(send_req(f.fd, VHU_REQ_GET_FEATURES, 0, NULL, 0, NULL, 0), 0);
                assert_int_equal(recv_msg(f.fd, &m), cases[i].recv_result);
                assert_int_equal(m.hdr.request, cases[i].request);
                assert_int_equal(m.hdr.flags, cases[i].flags);
                assert_int_equal(m.hdr.size, cases[i].size);
                assert_int_equal(m.nfds, cases[i].nfds);
                if (fault.kind == TB_FAULT_NACK)
                        assert_int_equal(m.payload.u64, 0);
                if (fault.kind == TB_FAULT_OVERSIZE)
                        assert_int_equal(m.payload.u64, TB_DEFAULT_FEATURES);
                vhu_msg_close_fds(&m);
                snprintf(line, sizeof(line), "FAULT %s GET_FEATURES", tb_fault_kind_name(fault.kind));
                assert_recorded(&f, line);
                fx_stop(&f);
        }
}

static void test_fault_hang_and_nack(void **state) {
        (void) state;
        struct tb_config cfg;
        struct tb_fault fault;
        struct fx f;

        tb_config_init(&cfg);
        assert_int_equal(tb_parse_fault("SET_VRING_NUM:nack=7", &fault), 0);
        assert_int_equal(tb_config_add_fault(&cfg, &fault), 0);
        assert_int_equal(tb_parse_fault("GET_VRING_BASE:hang", &fault), 0);
        assert_int_equal(tb_config_add_fault(&cfg, &fault), 0);
        fx_start(&f, &cfg);
        negotiate(f.fd, PF_BASIC);

        struct vhu_vring_state vs = { .index = 0, .num = 256 };
        assert_int_equal(acked(f.fd, VHU_REQ_SET_VRING_NUM, &vs, sizeof(vs), NULL, 0), 7);
        assert_int_equal(acked(f.fd, VHU_REQ_SET_VRING_NUM, &vs, sizeof(vs), NULL, 0), 0);

        assert_int_equal(send_req(f.fd, VHU_REQ_GET_VRING_BASE, 0, &vs, sizeof(vs), NULL, 0), 0);
        assert_true(nothing_arrives(f.fd, 300));
        assert_recorded(&f, "FAULT hang GET_VRING_BASE");
        /* Still open: the back-end neither answers nor hangs up. */
        assert_int_equal(send_req(f.fd, VHU_REQ_GET_FEATURES, 0, NULL, 0, NULL, 0), 0);
        assert_true(nothing_arrives(f.fd, 200));
        close(f.fd);
        f.fd = -1;
        int status = tb_wait_exit(f.pid, IO_MS);
        assert_true(status >= 0 && WIFEXITED(status));
        f.pid = -1;
        assert_recorded(&f, "CONNECTION 1 CLOSED fault hang");
        fx_stop(&f);
}

static void test_unknown_request_closes(void **state) {
        (void) state;
        struct tb_config cfg;
        struct fx f;
        tb_config_init(&cfg);
        fx_start(&f, &cfg);

        uint64_t v = 0;
        assert_int_equal(send_req(f.fd, 99, 0, &v, sizeof(v), NULL, 0), 0);
        expect_closed(f.fd);
        assert_recorded(&f, "REQUEST_99 flags=0x1 size=8 fds=0\n");
        assert_recorded(&f, "VIOLATION unknown request 99: closing the connection");
        fx_stop(&f);

        /* A size beyond the table closes too. */
        fx_start(&f, &cfg);
        assert_int_equal(send_req(f.fd, VHU_REQ_SET_FEATURES, 0, &v, 4, NULL, 0), 0);
        expect_closed(f.fd);
        assert_recorded(&f, "VIOLATION SET_FEATURES: payload size 4 not allowed");
        fx_stop(&f);
}

static void test_violations(void **state) {
        (void) state;
        struct tb_config cfg;
        struct fx f;
        tb_config_init(&cfg);
        cfg.no_rarp = true;
        fx_start(&f, &cfg);
        negotiate(f.fd, PF_BASIC);

        /* SEND_RARP without RARP. */
        uint64_t mac = 0x665544332211;
        assert_int_equal(acked(f.fd, VHU_REQ_SEND_RARP, &mac, sizeof(mac), NULL, 0), 0);
        assert_recorded(&f, "SEND_RARP flags=0x9 size=8 fds=0 mac=11:22:33:44:55:66");
        assert_recorded(&f, "VIOLATION SEND_RARP sent but protocol feature RARP was not negotiated");

        /* The LOG flag before any log. */
        struct vhu_vring_addr a = { .index = 0, .flags = VHU_VRING_F_LOG, .log_guest_addr = 0x10000 };
        assert_int_equal(acked(f.fd, VHU_REQ_SET_VRING_ADDR, &a, sizeof(a), NULL, 0), 0);
        assert_recorded(&f, "index=0 vring_flags=0x1 desc=0x0 used=0x0 avail=0x0 log=0x10000");
        assert_recorded(&f, "VIOLATION SET_VRING_ADDR: ring 0 sets the LOG flag before any SET_LOG_BASE");

        /* Memory of 1 MiB at gpa 0 and a log covering only 32 pages (128 KiB), then the same log twice. */
        int mem = memfd_of(1 << 20);
        struct {
                uint32_t n, pad;
                struct vhu_mem_region r;
        } table = { 1, 0, { .guest_phys_addr = 0, .memory_size = 1 << 20, .userspace_addr = 0x7f0000000000 } };
        assert_int_equal(acked(f.fd, VHU_REQ_SET_MEM_TABLE, &table, sizeof(table), &mem, 1), 0);
        set_u64(f.fd, VHU_REQ_SET_FEATURES, 0, get_u64(f.fd, VHU_REQ_GET_FEATURES));
        int log = memfd_of(4096);
        struct vhu_log lb = { .mmap_size = 4, .mmap_offset = 0 };
        struct vhu_msg m;
        assert_int_equal(send_req(f.fd, VHU_REQ_SET_LOG_BASE, 0, &lb, sizeof(lb), &log, 1), 0);
        expect_reply(f.fd, VHU_REQ_SET_LOG_BASE, 8, &m);
        assert_recorded(&f, "SET_LOG_BASE flags=0x1 size=16 fds=1 mmap_size=0x4 mmap_offset=0x0 seals=0x0");
        assert_recorded(
                &f,
                "VIOLATION SET_LOG_BASE: log of 0x4 bytes covers guest memory up to 0x20000 but region gpa 0x0 ends at 0x100000");
        assert_int_equal(send_req(f.fd, VHU_REQ_SET_LOG_BASE, 0, &lb, sizeof(lb), &log, 1), 0);
        expect_reply(f.fd, VHU_REQ_SET_LOG_BASE, 8, &m);
        assert_recorded(&f, "VIOLATION SET_LOG_BASE sent again for the same log");
        close(log);
        close(mem);

        /* SET_OWNER twice, and protocol features never offered. */
        assert_int_equal(acked(f.fd, VHU_REQ_SET_OWNER, NULL, 0, NULL, 0), 0);
        assert_int_equal(acked(f.fd, VHU_REQ_SET_OWNER, NULL, 0, NULL, 0), 0);
        assert_recorded(&f, "VIOLATION SET_OWNER sent twice on one connection");
        uint64_t pf = VHU_BIT(VHU_PF_REPLY_ACK) | VHU_BIT(VHU_PF_PAGEFAULT);
        assert_int_equal(acked(f.fd, VHU_REQ_SET_PROTOCOL_FEATURES, &pf, sizeof(pf), NULL, 0), 0);
        assert_recorded(&f, "VIOLATION SET_PROTOCOL_FEATURES 0x108 acknowledges bits not offered: 0x100");

        /* Rings enabled although PROTOCOL_FEATURES was not acknowledged. */
        set_u64(f.fd, VHU_REQ_SET_FEATURES, 0, VHU_BIT(VHU_VF_VERSION_1));
        struct vhu_vring_state en = { .index = 1, .num = 1 };
        assert_int_equal(acked(f.fd, VHU_REQ_SET_VRING_ENABLE, &en, sizeof(en), NULL, 0), 0);
        assert_recorded(&f, "SET_VRING_ENABLE flags=0x9 size=8 fds=0 index=1 num=1\n");
        assert_recorded(&f,
                        "VIOLATION SET_VRING_ENABLE: ring 1, but SET_FEATURES did not acknowledge PROTOCOL_FEATURES");
        fx_stop(&f);
}

static void test_log_base_reply(void **state) {
        (void) state;
        static const struct {
                unsigned size;
                bool no_shmfd;
        } cases[] = { { 0, false }, { 16, false }, { 8, true } };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct tb_config cfg;
                struct fx f;
                struct vhu_msg m;
                tb_config_init(&cfg);
                cfg.log_reply_size = cases[i].size;
                cfg.no_log_shmfd = cases[i].no_shmfd;
                fx_start(&f, &cfg);
                negotiate(f.fd, PF_BASIC);
                int log = memfd_of(4096);
                struct vhu_log lb = { .mmap_size = 4096, .mmap_offset = 0 };
                assert_int_equal(send_req(f.fd, VHU_REQ_SET_LOG_BASE, 0, &lb, sizeof(lb), &log, 1), 0);
                close(log);
                if (cases[i].no_shmfd) {
                        assert_true(nothing_arrives(f.fd, 100));
                        assert_recorded(
                                &f, "VIOLATION SET_LOG_BASE sent but protocol feature LOG_SHMFD was not negotiated");
                } else {
                        expect_reply(f.fd, VHU_REQ_SET_LOG_BASE, cases[i].size, &m);
                        assert_no_violation(&f);
                }
                fx_stop(&f);
        }
}

static void test_state_and_gets(void **state) {
        (void) state;
        struct tb_config cfg;
        struct fx f;
        struct vhu_msg m;
        tb_config_init(&cfg);
        cfg.queues = 2;
        cfg.max_mem_slots = 16;
        fx_start(&f, &cfg);
        negotiate(f.fd, PF_BASIC);

        assert_int_equal(get_u64(f.fd, VHU_REQ_GET_QUEUE_NUM), 2);
        assert_int_equal(get_u64(f.fd, VHU_REQ_GET_MAX_MEM_SLOTS), 16);

        struct vhu_vring_state vs = { .index = 3, .num = 42 };
        assert_int_equal(acked(f.fd, VHU_REQ_SET_VRING_BASE, &vs, sizeof(vs), NULL, 0), 0);
        vs.num = 0;
        assert_int_equal(send_req(f.fd, VHU_REQ_GET_VRING_BASE, 0, &vs, sizeof(vs), NULL, 0), 0);
        expect_reply(f.fd, VHU_REQ_GET_VRING_BASE, 8, &m);
        assert_int_equal(m.payload.state.index, 3);
        assert_int_equal(m.payload.state.num, 42);

        set_u64(f.fd, VHU_REQ_SET_STATUS, 0, 0xf);
        assert_int_equal(get_u64(f.fd, VHU_REQ_GET_STATUS), 0xf);

        /* Config space: deterministic bytes, and what SET_CONFIG wrote. */
        struct vhu_config cf = { .offset = 4, .size = 8 };
        assert_int_equal(send_req(f.fd, VHU_REQ_GET_CONFIG, 0, &cf, VHU_CONFIG_HDR_SIZE + 8, NULL, 0), 0);
        expect_reply(f.fd, VHU_REQ_GET_CONFIG, VHU_CONFIG_HDR_SIZE + 8, &m);
        assert_int_equal(m.payload.config.size, 8);
        assert_int_equal(m.payload.config.region[0], 4 ^ 0xa5);
        assert_int_equal(m.payload.config.region[7], 11 ^ 0xa5);
        memset(cf.region, 0x77, 8);
        assert_int_equal(acked(f.fd, VHU_REQ_SET_CONFIG, &cf, VHU_CONFIG_HDR_SIZE + 8, NULL, 0), 0);
        assert_int_equal(send_req(f.fd, VHU_REQ_GET_CONFIG, 0, &cf, VHU_CONFIG_HDR_SIZE + 8, NULL, 0), 0);
        expect_reply(f.fd, VHU_REQ_GET_CONFIG, VHU_CONFIG_HDR_SIZE + 8, &m);
        assert_int_equal(m.payload.config.region[3], 0x77);

        /* Inflight area: a real memfd of a sensible size. */
        struct vhu_inflight in = { .num_queues = 2, .queue_size = 256 };
        assert_int_equal(send_req(f.fd, VHU_REQ_GET_INFLIGHT_FD, 0, &in, sizeof(in), NULL, 0), 0);
        expect_reply(f.fd, VHU_REQ_GET_INFLIGHT_FD, sizeof(in), &m);
        assert_int_equal(m.nfds, 1);
        assert_true(m.payload.inflight.mmap_size >= 2 * 16 * 256);
        struct stat st;
        assert_int_equal(fstat(m.fds[0], &st), 0);
        assert_int_equal((uint64_t) st.st_size, m.payload.inflight.mmap_size);
        vhu_msg_close_fds(&m);

        /* Crypto session: the payload back with an id. */
        uint8_t session[64];
        memset(session, 0x3c, sizeof(session));
        assert_int_equal(send_req(f.fd, VHU_REQ_CREATE_CRYPTO_SESSION, 0, session, sizeof(session), NULL, 0), 0);
        expect_reply(f.fd, VHU_REQ_CREATE_CRYPTO_SESSION, sizeof(session), &m);
        assert_int_equal(m.payload.crypto.session_id, 1);
        assert_int_equal(m.payload.crypto.body[0], 0x3c);

        /* Device state: load a blob (no fd of its own), then save it back, byte for byte. */
        static const char blob[] = "the back-end's own state";
        struct vhu_device_state ds = { .direction = VHU_TRANSFER_LOAD, .phase = VHU_TRANSFER_STOPPED };
        int p[2];
        assert_int_equal(pipe(p), 0);
        assert_int_equal(send_req(f.fd, VHU_REQ_SET_DEVICE_STATE_FD, 0, &ds, sizeof(ds), &p[0], 1), 0);
        expect_reply(f.fd, VHU_REQ_SET_DEVICE_STATE_FD, 8, &m);
        assert_int_equal(m.payload.u64, VHU_DEVICE_STATE_NOFD_MASK);
        assert_int_equal(m.nfds, 0);
        close(p[0]);
        assert_int_equal(write(p[1], blob, sizeof(blob)), sizeof(blob));
        close(p[1]);
        assert_int_equal(get_u64(f.fd, VHU_REQ_CHECK_DEVICE_STATE), 0);
        ds.direction = VHU_TRANSFER_SAVE;
        assert_int_equal(pipe(p), 0);
        assert_int_equal(send_req(f.fd, VHU_REQ_SET_DEVICE_STATE_FD, 0, &ds, sizeof(ds), &p[1], 1), 0);
        expect_reply(f.fd, VHU_REQ_SET_DEVICE_STATE_FD, 8, &m);
        assert_int_equal(m.payload.u64, VHU_DEVICE_STATE_NOFD_MASK);
        close(p[1]);
        char back[64];
        size_t got = 0;
        for (ssize_t k; (k = read(p[0], back + got, sizeof(back) - got)) > 0;)
                got += (size_t) k;
        close(p[0]);
        assert_int_equal(got, sizeof(blob));
        assert_memory_equal(back, blob, sizeof(blob));
        assert_int_equal(get_u64(f.fd, VHU_REQ_CHECK_DEVICE_STATE), 0);
        char line[96];
        snprintf(line, sizeof(line), "DEVICE_STATE loaded bytes=%zu hash=0x%016" PRIx64, sizeof(blob),
                 tb_device_state_hash(blob, sizeof(blob)));
        assert_true(tb_record_contains(f.rec, line));
        snprintf(line, sizeof(line), "DEVICE_STATE saved bytes=%zu hash=0x%016" PRIx64, sizeof(blob),
                 tb_device_state_hash(blob, sizeof(blob)));
        assert_true(tb_record_contains(f.rec, line));

        struct vhu_shared_object obj = { { 1, 2, 3 } };
        assert_int_equal(send_req(f.fd, VHU_REQ_GET_SHARED_OBJECT, 0, &obj, sizeof(obj), NULL, 0), 0);
        expect_reply(f.fd, VHU_REQ_GET_SHARED_OBJECT, 8, &m);
        assert_int_equal(m.payload.u64, 1);
        assert_int_equal(m.nfds, 0);
        assert_no_violation(&f);
        fx_stop(&f);
}

static void test_mem_table(void **state) {
        (void) state;
        struct tb_config cfg;
        struct fx f;
        tb_config_init(&cfg);
        fx_start(&f, &cfg);
        negotiate(f.fd, PF_BASIC);

        int a = memfd_of(2 << 20), b = memfd_of(4096);
        struct {
                uint32_t n, pad;
                struct vhu_mem_region r[2];
        } table = { 2,
                    0,
                    { { .guest_phys_addr = 0,
                        .memory_size = 1 << 20,
                        .userspace_addr = 0x7f0000000000,
                        .mmap_offset = 1 << 20 },
                      { .guest_phys_addr = 1 << 20, .memory_size = 4096, .userspace_addr = 0x7f1000000000 } } };
        int fds[2] = { a, b };
        assert_int_equal(acked(f.fd, VHU_REQ_SET_MEM_TABLE, &table, sizeof(table), fds, 2), 0);
        assert_recorded(
                &f,
                "SET_MEM_TABLE flags=0x9 size=72 fds=2 nregions=2 gpa0=0x0 size0=0x100000 uaddr0=0x7f0000000000 offset0=0x100000 gpa1=0x100000");
        assert_no_violation(&f);

        /* A region larger than its fd holds is refused. */
        table.r[1].memory_size = 8192;
        assert_int_equal(acked(f.fd, VHU_REQ_SET_MEM_TABLE, &table, sizeof(table), fds, 2), 1);
        assert_recorded(&f, "VIOLATION SET_MEM_TABLE region 1: fd holds 0x1000 bytes");
        /* One fd too few. */
        assert_int_equal(acked(f.fd, VHU_REQ_SET_MEM_TABLE, &table, sizeof(table), fds, 1), 1);
        assert_recorded(&f, "VIOLATION SET_MEM_TABLE: 2 regions but 1 fds");

        /* Slots: add and remove one region. */
        struct vhu_mem_reg reg = { .region = { .guest_phys_addr = 0x40000000, .memory_size = 4096 } };
        assert_int_equal(acked(f.fd, VHU_REQ_ADD_MEM_REG, &reg, sizeof(reg), &b, 1), 0);
        assert_int_equal(acked(f.fd, VHU_REQ_REM_MEM_REG, &reg, sizeof(reg), NULL, 0), 0);
        assert_int_equal(acked(f.fd, VHU_REQ_REM_MEM_REG, &reg, sizeof(reg), NULL, 0), 1);
        assert_recorded(&f, "VIOLATION REM_MEM_REG: no region at gpa 0x40000000");
        close(a);
        close(b);
        fx_stop(&f);
}

static void test_backend_channel(void **state) {
        (void) state;
        struct tb_config cfg;
        struct tb_backend_req breq;
        struct fx f;
        struct vhu_msg m;

        tb_config_init(&cfg);
        assert_int_equal(tb_parse_backend_req("CONFIG_CHANGE_MSG:need-reply", &breq), 0);
        assert_int_equal(tb_config_add_backend_req(&cfg, &breq), 0);
        assert_int_equal(tb_parse_backend_req("VRING_CALL:index=1", &breq), 0);
        assert_int_equal(tb_config_add_backend_req(&cfg, &breq), 0);
        assert_int_equal(tb_parse_backend_req("SHARED_OBJECT_LOOKUP:need-reply:after=GET_QUEUE_NUM:block", &breq), 0);
        assert_int_equal(tb_config_add_backend_req(&cfg, &breq), 0);
        fx_start(&f, &cfg);
        negotiate(f.fd, PF_BASIC | VHU_BIT(VHU_PF_INBAND_NOTIFICATIONS));

        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        assert_int_equal(acked(f.fd, VHU_REQ_SET_BACKEND_REQ_FD, NULL, 0, &sv[1], 1), 0);
        close(sv[1]);

        /* After SET_OWNER: the two requests arrive, the first wants an answer. */
        assert_int_equal(acked(f.fd, VHU_REQ_SET_OWNER, NULL, 0, NULL, 0), 0);
        assert_int_equal(recv_msg(sv[0], &m), 0);
        assert_int_equal(m.hdr.request, VHU_BREQ_CONFIG_CHANGE_MSG);
        assert_int_equal(m.hdr.flags, VHU_VERSION | VHU_FLAG_NEED_REPLY);
        assert_int_equal(m.hdr.size, 0);
        assert_int_equal(recv_msg(sv[0], &m), 0);
        assert_int_equal(m.hdr.request, VHU_BREQ_VRING_CALL);
        assert_int_equal(m.hdr.flags, VHU_VERSION);
        assert_int_equal(m.payload.state.index, 1);
        struct vhu_msg r = { .hdr = { VHU_BREQ_CONFIG_CHANGE_MSG, VHU_REPLY_FLAGS, 8 }, .payload.u64 = 0 };
        assert_int_equal(vhu_send_msg(sv[0], &r, NULL, vhu_deadline_after_ms(IO_MS)), 0);
        /* A round trip after the reply: the back-end reads its channel first. */
        get_u64(f.fd, VHU_REQ_GET_FEATURES);
        assert_recorded(&f, "BACKEND_SENT CONFIG_CHANGE_MSG flags=0x9 size=0 fds=0\n");
        assert_recorded(&f, "BACKEND_SENT VRING_CALL flags=0x1 size=8 fds=0\n");
        assert_recorded(&f, "BACKEND_REPLY CONFIG_CHANGE_MSG 0\n");

        /* Blocking: GET_QUEUE_NUM's reply waits for our answer to the lookup. */
        assert_int_equal(send_req(f.fd, VHU_REQ_GET_QUEUE_NUM, 0, NULL, 0, NULL, 0), 0);
        assert_int_equal(recv_msg(sv[0], &m), 0);
        assert_int_equal(m.hdr.request, VHU_BREQ_SHARED_OBJECT_LOOKUP);
        assert_int_equal(m.payload.object.uuid[0], 1);
        assert_true(nothing_arrives(f.fd, 100));
        r.hdr.request = VHU_BREQ_SHARED_OBJECT_LOOKUP;
        r.payload.u64 = 5;
        assert_int_equal(vhu_send_msg(sv[0], &r, NULL, vhu_deadline_after_ms(IO_MS)), 0);
        expect_reply(f.fd, VHU_REQ_GET_QUEUE_NUM, 8, &m);
        assert_recorded(&f, "BACKEND_REPLY SHARED_OBJECT_LOOKUP 5\n");

        /* An unsolicited message on the channel is the front-end's fault. */
        r.hdr.request = VHU_BREQ_VRING_CALL;
        assert_int_equal(vhu_send_msg(sv[0], &r, NULL, vhu_deadline_after_ms(IO_MS)), 0);
        get_u64(f.fd, VHU_REQ_GET_FEATURES);
        assert_recorded(&f, "VIOLATION back-end channel: unsolicited message request=4");
        close(sv[0]);
        get_u64(f.fd, VHU_REQ_GET_FEATURES);
        assert_recorded(&f, "BACKEND_CHANNEL_CLOSED");
        fx_stop(&f);
}

static void test_backend_unknown_request(void **state) {
        (void) state;
        struct tb_config cfg;
        struct tb_backend_req breq;
        struct fx f;
        struct vhu_msg m;

        tb_config_init(&cfg);
        assert_int_equal(tb_parse_backend_req("99:need-reply", &breq), 0);
        assert_int_equal(tb_config_add_backend_req(&cfg, &breq), 0);
        fx_start(&f, &cfg);
        negotiate(f.fd, PF_BASIC);
        /* No channel yet: skipped, recorded. */
        assert_int_equal(acked(f.fd, VHU_REQ_SET_OWNER, NULL, 0, NULL, 0), 0);
        /* Back-end requests go out after the reply: a round trip makes sure they were handled. */
        get_u64(f.fd, VHU_REQ_GET_FEATURES);
        assert_recorded(&f, "BACKEND_SKIPPED REQUEST_99 no back-end channel");
        fx_stop(&f);

        /* With a channel: sent as-is; the front-end closing it is recorded. */
        tb_config_init(&cfg);
        assert_int_equal(tb_config_add_backend_req(&cfg, &breq), 0);
        fx_start(&f, &cfg);
        negotiate(f.fd, PF_BASIC);
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        assert_int_equal(acked(f.fd, VHU_REQ_SET_BACKEND_REQ_FD, NULL, 0, &sv[1], 1), 0);
        close(sv[1]);
        assert_int_equal(acked(f.fd, VHU_REQ_SET_OWNER, NULL, 0, NULL, 0), 0);
        assert_int_equal(recv_msg(sv[0], &m), 0);
        assert_int_equal(m.hdr.request, 99);
        close(sv[0]);
        get_u64(f.fd, VHU_REQ_GET_FEATURES);
        assert_recorded(&f, "BACKEND_REPLY REQUEST_99 closed\nBACKEND_CHANNEL_CLOSED\n");
        fx_stop(&f);
}

/* ---------------------------------------------------------------- faults of issue 8 */

/* Waits (up to IO_MS) until the record holds needle. */
static void await_recorded(const struct fx *f, const char *needle) {
        uint64_t deadline = vhu_deadline_after_ms(IO_MS);
        while (!tb_record_contains(f->rec, needle) && vhu_now_usec() < deadline)
                usleep(5000);
        assert_recorded(f, needle);
}

/* A negotiated connection with its back-end channel; returns our end of the channel. */
static int open_channel(struct fx *f, uint64_t pf) {
        int sv[2];
        negotiate(f->fd, pf);
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        assert_int_equal(acked(f->fd, VHU_REQ_SET_BACKEND_REQ_FD, NULL, 0, &sv[1], 1), 0);
        close(sv[1]);
        return sv[0];
}

static void config_fault(struct tb_config *cfg, const char *spec) {
        struct tb_fault fault;
        tb_config_init(cfg);
        assert_int_equal(tb_parse_fault(spec, &fault), 0);
        assert_int_equal(tb_config_add_fault(cfg, &fault), 0);
}

/* SIGTERM ends the child at once (its handler exits 0), whatever fault it is in. */
static void assert_stops_promptly(struct fx *f) {
        uint64_t t0 = vhu_now_usec();
        int status = tb_stop(f->pid);
        f->pid = -1;
        assert_true(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0);
        assert_true(vhu_now_usec() - t0 < 1000000);
}

/* die: the serving process exits with the status given, its record line written first. */
static void test_fault_die(void **state) {
        (void) state;
        struct tb_config cfg;
        struct fx f;

        config_fault(&cfg, "SET_VRING_NUM:die=3:2");
        cfg.max_connections = 0;
        fx_start(&f, &cfg);
        negotiate(f.fd, PF_BASIC);
        struct vhu_vring_state vs = { .index = 0, .num = 256 };
        assert_int_equal(acked(f.fd, VHU_REQ_SET_VRING_NUM, &vs, sizeof(vs), NULL, 0), 0);
        assert_int_equal(send_req(f.fd, VHU_REQ_SET_VRING_NUM, VHU_FLAG_NEED_REPLY, &vs, sizeof(vs), NULL, 0), 0);
        expect_closed(f.fd);
        /* Not one more connection: the process is gone, though it would serve until killed. */
        int status = tb_wait_exit(f.pid, IO_MS);
        f.pid = -1;
        assert_true(status >= 0 && WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 3);
        assert_recorded(&f, "FAULT die SET_VRING_NUM\n");
        assert_false(tb_record_contains(f.rec, "CLOSED"));
        fx_stop(&f);
}

static volatile sig_atomic_t usr1_seen;

static void on_usr1(int sig) {
        (void) sig;
        usr1_seen = 1;
}

/* notify: SIGUSR1 reaches the test before the answer, which comes the given delay later, unchanged. */
static void test_fault_notify(void **state) {
        (void) state;
        struct tb_config cfg;
        struct fx f;
        struct sigaction sa = { .sa_handler = on_usr1 }, old;

        assert_int_equal(sigaction(SIGUSR1, &sa, &old), 0);
        usr1_seen = 0;
        config_fault(&cfg, "SET_VRING_NUM:notify=300");
        fx_start(&f, &cfg);
        negotiate(f.fd, PF_BASIC);
        struct vhu_vring_state vs = { .index = 0, .num = 256 };
        uint64_t t0 = vhu_now_usec();
        assert_int_equal(acked(f.fd, VHU_REQ_SET_VRING_NUM, &vs, sizeof(vs), NULL, 0), 0);
        assert_true(vhu_now_usec() - t0 >= 300000u);
        assert_true(usr1_seen);
        assert_recorded(&f, "FAULT notify SET_VRING_NUM\n");
        /* Answered as usual: the state changed and the connection goes on. */
        t0 = vhu_now_usec();
        assert_int_equal(acked(f.fd, VHU_REQ_SET_VRING_NUM, &vs, sizeof(vs), NULL, 0), 0);
        assert_true(vhu_now_usec() - t0 < 300000u);
        assert_recorded(&f, "SET_VRING_NUM flags=0x9 size=8 fds=0 index=0 num=256\nFAULT notify SET_VRING_NUM\n");
        assert_no_violation(&f);
        fx_stop(&f);
        assert_int_equal(sigaction(SIGUSR1, &old, NULL), 0);
}

static void test_fault_flood_channel(void **state) {
        (void) state;
        struct tb_config cfg;
        struct fx f;
        struct vhu_msg m;

        /* The channel reader goes away first. */
        config_fault(&cfg, "GET_QUEUE_NUM:flood-channel");
        fx_start(&f, &cfg);
        int ch = open_channel(&f, PF_BASIC);
        assert_int_equal(send_req(f.fd, VHU_REQ_GET_QUEUE_NUM, 0, NULL, 0, NULL, 0), 0);
        for (int i = 0; i < 5000; i++) {
                assert_int_equal(recv_msg(ch, &m), 0);
                assert_int_equal(m.hdr.request, VHU_BREQ_CONFIG_CHANGE_MSG);
                assert_int_equal(m.hdr.flags, VHU_VERSION);
                assert_int_equal(m.hdr.size, 0);
                assert_int_equal(m.nfds, 0);
        }
        assert_true(nothing_arrives(f.fd, 50));
        assert_recorded(&f, "GET_QUEUE_NUM flags=0x1 size=0 fds=0\nFAULT flood-channel GET_QUEUE_NUM\n");
        close(ch);
        await_recorded(&f, "BACKEND_FLOOD CONFIG_CHANGE_MSG sent=");
        assert_recorded(&f, " channel write failed: ");
        /* The reply stays withheld until we hang up. */
        assert_true(nothing_arrives(f.fd, 50));
        close(f.fd);
        f.fd = -1;
        int status = tb_wait_exit(f.pid, IO_MS);
        assert_true(status >= 0 && WIFEXITED(status));
        f.pid = -1;
        assert_recorded(&f, "CONNECTION 1 CLOSED fault flood-channel, then peer closed");
        fx_stop(&f);

        /* Without CONFIG: IOTLB misses; the front-end hangs up while the channel is full. */
        config_fault(&cfg, "GET_QUEUE_NUM:flood-channel");
        fx_start(&f, &cfg);
        ch = open_channel(&f, PF_BASIC & ~VHU_BIT(VHU_PF_CONFIG));
        assert_int_equal(send_req(f.fd, VHU_REQ_GET_QUEUE_NUM, 0, NULL, 0, NULL, 0), 0);
        assert_int_equal(recv_msg(ch, &m), 0);
        assert_int_equal(m.hdr.request, VHU_BREQ_IOTLB_MSG);
        assert_int_equal(m.hdr.flags, VHU_VERSION);
        assert_int_equal(m.payload.iotlb.type, VHU_IOTLB_MISS);
        close(f.fd);
        f.fd = -1;
        await_recorded(&f, " front-end hung up\n");
        assert_recorded(&f, "BACKEND_FLOOD IOTLB_MSG sent=");
        close(ch);
        fx_stop(&f);

        /* A flooding child dies on SIGTERM at once. */
        config_fault(&cfg, "GET_QUEUE_NUM:flood-channel");
        fx_start(&f, &cfg);
        ch = open_channel(&f, PF_BASIC);
        assert_int_equal(send_req(f.fd, VHU_REQ_GET_QUEUE_NUM, 0, NULL, 0, NULL, 0), 0);
        assert_int_equal(recv_msg(ch, &m), 0);
        assert_stops_promptly(&f);
        close(ch);
        fx_stop(&f);

        /* No channel: it only hangs. */
        config_fault(&cfg, "GET_QUEUE_NUM:flood-channel");
        fx_start(&f, &cfg);
        negotiate(f.fd, PF_BASIC);
        assert_int_equal(send_req(f.fd, VHU_REQ_GET_QUEUE_NUM, 0, NULL, 0, NULL, 0), 0);
        assert_true(nothing_arrives(f.fd, 50));
        assert_recorded(&f, "BACKEND_SKIPPED flood-channel no back-end channel");
        fx_stop(&f);
}

static void test_fault_channel_half_header(void **state) {
        (void) state;
        struct tb_config cfg;
        struct fx f;
        uint8_t buf[64];

        config_fault(&cfg, "GET_QUEUE_NUM:channel-half-header");
        fx_start(&f, &cfg);
        int ch = open_channel(&f, PF_BASIC);
        assert_int_equal(send_req(f.fd, VHU_REQ_GET_QUEUE_NUM, 0, NULL, 0, NULL, 0), 0);
        struct pollfd p = { .fd = ch, .events = POLLIN };
        assert_int_equal(poll(&p, 1, (int) IO_MS), 1);
        /* Half a header, sent in one write: it arrives whole and alone. */
        usleep(50000);
        assert_int_equal(recv(ch, buf, sizeof(buf), MSG_DONTWAIT), 6);
        uint32_t request;
        memcpy(&request, buf, sizeof(request));
        assert_int_equal(request, VHU_BREQ_CONFIG_CHANGE_MSG);
        assert_true(nothing_arrives(ch, 100));
        assert_true(nothing_arrives(f.fd, 50));
        assert_recorded(&f, "FAULT channel-half-header GET_QUEUE_NUM\nBACKEND_HALF_HEADER CONFIG_CHANGE_MSG 6 bytes\n");
        assert_stops_promptly(&f);
        close(ch);
        fx_stop(&f);
}

static void test_fault_truncate_memory(void **state) {
        (void) state;
        struct tb_config cfg;
        struct fx f;
        struct stat st;

        config_fault(&cfg, "GET_VRING_BASE:truncate-memory");
        fx_start(&f, &cfg);
        negotiate(f.fd, PF_BASIC);
        int a = memfd_of(1 << 20), sealed = memfd_of(1 << 20), hot = memfd_of(4096);
        assert_int_equal(fcntl(sealed, F_ADD_SEALS, F_SEAL_SHRINK), 0);
        struct {
                uint32_t n, pad;
                struct vhu_mem_region r[2];
        } table = { 2, 0, { { .memory_size = 1 << 20 }, { .guest_phys_addr = 1 << 20, .memory_size = 1 << 20 } } };
        int fds[2] = { a, sealed };
        assert_int_equal(acked(f.fd, VHU_REQ_SET_MEM_TABLE, &table, sizeof(table), fds, 2), 0);
        struct vhu_mem_reg reg = { .region = { .guest_phys_addr = 1 << 30, .memory_size = 4096 } };
        assert_int_equal(acked(f.fd, VHU_REQ_ADD_MEM_REG, &reg, sizeof(reg), &hot, 1), 0);
        struct vhu_vring_state vs = { .index = 0 };
        assert_int_equal(send_req(f.fd, VHU_REQ_GET_VRING_BASE, 0, &vs, sizeof(vs), NULL, 0), 0);
        expect_closed(f.fd);
        close(f.fd);
        f.fd = -1;
        int status = tb_wait_exit(f.pid, IO_MS);
        assert_true(status >= 0 && WIFEXITED(status));
        f.pid = -1;
        assert_int_equal(fstat(a, &st), 0);
        assert_int_equal(st.st_size, 0);
        assert_int_equal(fstat(hot, &st), 0);
        assert_int_equal(st.st_size, 0);
        /* A sealed memfd keeps its size: the record says so. */
        assert_int_equal(fstat(sealed, &st), 0);
        assert_int_equal(st.st_size, 1 << 20);
        assert_recorded(&f, "FAULT truncate-memory GET_VRING_BASE\n");
        assert_recorded(&f, "TRUNCATED gpa=0x0 size=0x100000 ok\n");
        assert_recorded(&f, "TRUNCATED gpa=0x100000 size=0x100000 Operation not permitted\n");
        assert_recorded(&f, "TRUNCATED gpa=0x40000000 size=0x1000 ok\n");
        assert_recorded(&f, "CONNECTION 1 CLOSED fault truncate-memory\n");
        close(a);
        close(sealed);
        close(hot);
        fx_stop(&f);

        /* The trigger may be the table itself: its own fds go. */
        config_fault(&cfg, "SET_MEM_TABLE:truncate-memory");
        fx_start(&f, &cfg);
        negotiate(f.fd, PF_BASIC);
        a = memfd_of(1 << 20);
        table.n = 1;
        assert_int_equal(send_req(f.fd, VHU_REQ_SET_MEM_TABLE, VHU_FLAG_NEED_REPLY, &table,
                                  (uint32_t) (8 + sizeof(table.r[0])), &a, 1),
                         0);
        expect_closed(f.fd);
        assert_int_equal(fstat(a, &st), 0);
        assert_int_equal(st.st_size, 0);
        close(a);
        fx_stop(&f);
}

static void test_no_accept(void **state) {
        (void) state;
        struct tb_config cfg;
        struct fx f;
        struct sockaddr_un sa = { .sun_family = AF_UNIX };

        fx_dirs(&f);
        tb_config_init(&cfg);
        cfg.record_path = f.rec;
        cfg.no_accept = true;
        /* Returns once the backlog is full. */
        assert_int_equal(tb_spawn_listen(&cfg, f.sock, &f.pid), 0);
        assert_recorded(&f, "NO_ACCEPT backlog=");
        strcpy(sa.sun_path, f.sock);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        assert_true(fd >= 0);
        assert_int_equal(connect(fd, (struct sockaddr *) &sa, sizeof(sa)), -1);
        assert_int_equal(errno, EAGAIN);
        close(fd);
        assert_stops_promptly(&f);
        struct stat st;
        assert_int_equal(stat(f.sock, &st), -1);
        /* Connecting with no_accept is refused. */
        pid_t pid;
        assert_int_equal(tb_spawn_connect(&cfg, f.sock, &pid), -EINVAL);
        fx_stop(&f);
}

static void test_run_as_uid(void **state) {
        (void) state;
        struct tb_config cfg;
        struct fx f;
        struct stat st;

        if (geteuid() != 0) {
                skip();
                return;
        }
        fx_dirs(&f);
        /* A world-writable directory, as /tmp is. */
        assert_int_equal(chmod(f.dir, 01777), 0);
        tb_config_init(&cfg);
        cfg.record_path = f.rec;
        cfg.run_as_uid = 65534;
        cfg.run_as_gid = 65534;
        assert_int_equal(tb_spawn_listen(&cfg, f.sock, &f.pid), 0);
        assert_int_equal(stat(f.sock, &st), 0);
        assert_int_equal(st.st_uid, 65534);
        f.fd = vhu_socket_connect(f.sock);
        assert_true(f.fd >= 0);
        struct ucred cred;
        socklen_t len = sizeof(cred);
        assert_int_equal(getsockopt(f.fd, SOL_SOCKET, SO_PEERCRED, &cred, &len), 0);
        assert_int_equal(cred.pid, f.pid);
        assert_int_equal(cred.uid, 65534);
        assert_int_equal(cred.gid, 65534);
        assert_int_equal(get_u64(f.fd, VHU_REQ_GET_FEATURES), TB_DEFAULT_FEATURES);
        /* The record, opened before the drop, is still written. */
        assert_recorded(&f, "GET_FEATURES flags=0x1");
        assert_stops_promptly(&f);
        fx_stop(&f);
}

/* A u64 reply that must carry exactly one fd, which is /dev/null; returns the u64. */
static uint64_t get_u64_with_devnull(int fd, uint32_t request) {
        struct vhu_msg m;
        struct stat st, null;
        assert_int_equal(send_req(fd, request, 0, NULL, 0, NULL, 0), 0);
        expect_reply(fd, request, 8, &m);
        assert_int_equal(m.nfds, 1);
        assert_int_equal(fstat(m.fds[0], &st), 0);
        assert_int_equal(stat("/dev/null", &null), 0);
        assert_int_equal(st.st_rdev, null.st_rdev);
        vhu_msg_close_fds(&m);
        return m.payload.u64;
}

/* The child's fd count once it stops changing: it closes what it sent just after the write. */
static int settled_fd_count(pid_t pid) {
        int last = count_process_fds(pid);
        for (int i = 0; i < 100; i++) {
                usleep(20000);
                int now = count_process_fds(pid);
                if (now == last)
                        return now;
                last = now;
        }
        return last;
}

static void test_fds_on_every_message(void **state) {
        (void) state;
        struct tb_config cfg;
        struct tb_backend_req breq;
        struct fx f;
        struct vhu_msg m;

        tb_config_init(&cfg);
        cfg.fds_on_every_message = true;
        assert_int_equal(tb_parse_backend_req("CONFIG_CHANGE_MSG", &breq), 0);
        assert_int_equal(tb_config_add_backend_req(&cfg, &breq), 0);
        fx_start(&f, &cfg);
        assert_int_equal(get_u64_with_devnull(f.fd, VHU_REQ_GET_FEATURES), TB_DEFAULT_FEATURES);
        /* Counted once the connection is served and the reply's fd closed. */
        int before = settled_fd_count(f.pid);
        set_u64(f.fd, VHU_REQ_SET_FEATURES, 0, TB_DEFAULT_FEATURES & ~VHU_BIT(VHU_VF_LOG_ALL));
        set_u64(f.fd, VHU_REQ_SET_PROTOCOL_FEATURES, 0, PF_BASIC);
        /* An ack is a reply too. */
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        assert_int_equal(send_req(f.fd, VHU_REQ_SET_BACKEND_REQ_FD, VHU_FLAG_NEED_REPLY, NULL, 0, &sv[1], 1), 0);
        close(sv[1]);
        expect_reply(f.fd, VHU_REQ_SET_BACKEND_REQ_FD, 8, &m);
        assert_int_equal(m.payload.u64, 0);
        assert_int_equal(m.nfds, 1);
        vhu_msg_close_fds(&m);
        int ch = sv[0];
        /* The channel's message carries one too. */
        assert_int_equal(send_req(f.fd, VHU_REQ_SET_OWNER, 0, NULL, 0, NULL, 0), 0);
        assert_int_equal(recv_msg(ch, &m), 0);
        assert_int_equal(m.hdr.request, VHU_BREQ_CONFIG_CHANGE_MSG);
        assert_int_equal(m.nfds, 1);
        vhu_msg_close_fds(&m);
        assert_int_equal(get_u64_with_devnull(f.fd, VHU_REQ_GET_QUEUE_NUM), TB_DEFAULT_QUEUES);
        assert_recorded(&f, "BACKEND_SENT CONFIG_CHANGE_MSG flags=0x1 size=0 fds=1\n");
        /* The back-end keeps none of the fds it sent (one more: the channel). */
        assert_int_equal(settled_fd_count(f.pid), before + 1);
        close(ch);
        fx_stop(&f);
}

/* ---------------------------------------------------------------- in-process, fd accounting */

struct serve_args {
        struct tb_config cfg;
        int fd;
        int result;
};

static void *serve_thread(void *arg) {
        struct serve_args *a = arg;
        a->result = tb_serve_fd(&a->cfg, a->fd);
        return NULL;
}

static void test_no_fd_leak(void **state) {
        (void) state;
        struct fx f;
        struct serve_args args;
        struct vhu_msg m;
        pthread_t th;
        int sv[2];

        fx_dirs(&f);
        int before = count_open_fds();
        tb_config_init(&args.cfg);
        args.cfg.record_path = f.rec;
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        args.fd = sv[1];
        assert_int_equal(pthread_create(&th, NULL, serve_thread, &args), 0);
        int fd = sv[0];
        negotiate(fd, PF_BASIC | VHU_BIT(VHU_PF_INBAND_NOTIFICATIONS) | VHU_BIT(VHU_PF_BACKEND_SEND_FD) |
                              VHU_BIT(VHU_PF_RESET_DEVICE));

        /* Everything that carries an fd, some of it twice so that replacements close the old one. */
        int mem = memfd_of(1 << 20), log = memfd_of(8192), log2 = memfd_of(8192), ev = memfd_of(4096);
        struct {
                uint32_t n, pad;
                struct vhu_mem_region r;
        } table = { 1, 0, { .memory_size = 1 << 20 } };
        for (int i = 0; i < 2; i++)
                assert_int_equal(acked(fd, VHU_REQ_SET_MEM_TABLE, &table, sizeof(table), &mem, 1), 0);
        struct vhu_log lb = { .mmap_size = 8192 };
        assert_int_equal(send_req(fd, VHU_REQ_SET_LOG_BASE, 0, &lb, sizeof(lb), &log, 1), 0);
        expect_reply(fd, VHU_REQ_SET_LOG_BASE, 8, &m);
        assert_int_equal(send_req(fd, VHU_REQ_SET_LOG_BASE, 0, &lb, sizeof(lb), &log2, 1), 0);
        expect_reply(fd, VHU_REQ_SET_LOG_BASE, 8, &m);
        assert_int_equal(acked(fd, VHU_REQ_SET_LOG_FD, NULL, 0, &ev, 1), 0);
        for (uint64_t idx = 0; idx < 4; idx++) {
                assert_int_equal(acked(fd, VHU_REQ_SET_VRING_KICK, &idx, 8, &ev, 1), 0);
                assert_int_equal(acked(fd, VHU_REQ_SET_VRING_CALL, &idx, 8, &ev, 1), 0);
                assert_int_equal(acked(fd, VHU_REQ_SET_VRING_ERR, &idx, 8, &ev, 1), 0);
                assert_int_equal(acked(fd, VHU_REQ_SET_VRING_CALL, &idx, 8, &ev, 1), 0);
        }
        /* An fd where none belongs: recorded and closed. */
        uint64_t nofd = VHU_VRING_NOFD_MASK;
        assert_int_equal(acked(fd, VHU_REQ_SET_VRING_KICK, &nofd, 8, &ev, 1), 0);
        int chan[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, chan), 0);
        assert_int_equal(acked(fd, VHU_REQ_SET_BACKEND_REQ_FD, NULL, 0, &chan[1], 1), 0);
        assert_int_equal(acked(fd, VHU_REQ_SET_BACKEND_REQ_FD, NULL, 0, &chan[1], 1), 0);
        close(chan[1]);
        struct vhu_inflight in = { .num_queues = 1, .queue_size = 128 };
        assert_int_equal(send_req(fd, VHU_REQ_GET_INFLIGHT_FD, 0, &in, sizeof(in), NULL, 0), 0);
        expect_reply(fd, VHU_REQ_GET_INFLIGHT_FD, sizeof(in), &m);
        assert_int_equal(m.nfds, 1);
        int inflight = m.fds[0];
        in = m.payload.inflight;
        assert_int_equal(acked(fd, VHU_REQ_SET_INFLIGHT_FD, &in, sizeof(in), &inflight, 1), 0);
        close(inflight);
        assert_int_equal(send_req(fd, VHU_REQ_POSTCOPY_ADVISE, 0, NULL, 0, NULL, 0), 0);
        /* POSTCOPY_ADVISE needs PAGEFAULT, which is not offered: served all the same. */
        expect_reply(fd, VHU_REQ_POSTCOPY_ADVISE, 8, &m);
        assert_int_equal(m.nfds, 1);
        vhu_msg_close_fds(&m);
        assert_int_equal(acked(fd, VHU_REQ_GPU_SET_SOCKET, NULL, 0, &ev, 1), 0);
        struct vhu_mem_reg reg = { .region = { .guest_phys_addr = 1 << 30, .memory_size = 4096 } };
        assert_int_equal(acked(fd, VHU_REQ_ADD_MEM_REG, &reg, sizeof(reg), &ev, 1), 0);
        assert_int_equal(acked(fd, VHU_REQ_REM_MEM_REG, &reg, sizeof(reg), &ev, 1), 0);
        assert_int_equal(acked(fd, VHU_REQ_RESET_DEVICE, NULL, 0, NULL, 0), 0);
        close(mem);
        close(log);
        close(log2);
        close(ev);
        close(chan[0]);

        close(fd);
        assert_int_equal(pthread_join(th, NULL), 0);
        assert_int_equal(args.result, 0);
        assert_int_equal(count_open_fds(), before);
        assert_int_equal(tb_record_count(f.rec, "VIOLATION"), 2);
        assert_recorded(&f, "VIOLATION SET_VRING_KICK: NOFD set but 1 fds attached");
        assert_recorded(&f, "VIOLATION POSTCOPY_ADVISE sent but protocol feature PAGEFAULT was not negotiated");
        unlink(f.rec);
        rmdir(f.dir);
}

static void test_spawn_connect(void **state) {
        (void) state;
        struct tb_config cfg;
        struct fx f;
        pid_t pid;

        fx_dirs(&f);
        tb_config_init(&cfg);
        cfg.record_path = f.rec;
        cfg.io_timeout_ms = 300;
        /* Nobody listens: the spawn fails once the timeout passes. */
        assert_true(tb_spawn_connect(&cfg, f.sock, &pid) < 0);

        int lfd = vhu_socket_listen(f.sock);
        assert_true(lfd >= 0);
        cfg.max_connections = 2;
        assert_int_equal(tb_spawn_connect(&cfg, f.sock, &f.pid), 0);
        f.fd = vhu_socket_accept(lfd, NULL, vhu_deadline_after_ms(IO_MS));
        assert_true(f.fd >= 0);
        assert_int_equal(get_u64(f.fd, VHU_REQ_GET_FEATURES), TB_DEFAULT_FEATURES);
        assert_recorded(&f, "GET_FEATURES flags=0x1 size=0 fds=0");

        /* The front-end drops the connection: the back-end connects again, as OVS's client ports do. */
        close(f.fd);
        f.fd = vhu_socket_accept(lfd, NULL, vhu_deadline_after_ms(IO_MS));
        assert_true(f.fd >= 0);
        assert_int_equal(get_u64(f.fd, VHU_REQ_GET_FEATURES), TB_DEFAULT_FEATURES);
        assert_recorded(&f, "CONNECTION 2 OPEN");
        close(lfd);
        close(f.fd);
        f.fd = -1;
        int status = tb_wait_exit(f.pid, IO_MS);
        assert_true(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0);
        f.pid = -1;

        /* Nobody to reconnect to: it gives up after reconnect_timeout_ms. */
        cfg.reconnect_timeout_ms = 200;
        lfd = vhu_socket_listen(f.sock);
        assert_true(lfd >= 0);
        assert_int_equal(tb_spawn_connect(&cfg, f.sock, &f.pid), 0);
        f.fd = vhu_socket_accept(lfd, NULL, vhu_deadline_after_ms(IO_MS));
        assert_true(f.fd >= 0);
        close(lfd);
        unlink(f.sock);
        close(f.fd);
        f.fd = -1;
        status = tb_wait_exit(f.pid, IO_MS);
        assert_true(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 1);
        f.pid = -1;
        fx_stop(&f);
}

/* The program, started as a script would: listen, one connection, a fault. */
static void test_program(void **state) {
        (void) state;
        const char *prog = getenv("TB_PROGRAM");
        struct fx f;
        struct vhu_msg m;

        if (!prog) {
                /* meson test sets it; run by hand, there is no program to find. */
                skip();
                return;
        }
        fx_dirs(&f);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                execl(prog, prog, "--socket", f.sock, "--once", "--record", f.rec, "--no-mq", "--queues", "2",
                      "--fault", "GET_PROTOCOL_FEATURES:wrong-request=1", "--log-reply-size", "16", (char *) NULL);
                _exit(127);
        }
        f.pid = pid;
        uint64_t deadline = vhu_deadline_after_ms(IO_MS);
        while ((f.fd = vhu_socket_connect(f.sock)) < 0 && vhu_now_usec() < deadline)
                usleep(10000);
        assert_true(f.fd >= 0);
        assert_int_equal(get_u64(f.fd, VHU_REQ_GET_FEATURES), TB_DEFAULT_FEATURES);
        assert_int_equal(send_req(f.fd, VHU_REQ_GET_PROTOCOL_FEATURES, 0, NULL, 0, NULL, 0), 0);
        assert_int_equal(recv_msg(f.fd, &m), 0);
        assert_int_equal(m.hdr.request, VHU_REQ_GET_FEATURES);
        assert_int_equal(m.payload.u64, TB_DEFAULT_PROTOCOL_FEATURES & ~VHU_BIT(VHU_PF_MQ));
        close(f.fd);
        f.fd = -1;
        int status = tb_wait_exit(pid, IO_MS);
        assert_true(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0);
        f.pid = -1;
        assert_recorded(&f, "FAULT wrong-request GET_PROTOCOL_FEATURES");
        fx_stop(&f);
}

/* The program's switches for issue 8: --fds-always, --uid/--gid, --no-accept. */
static void test_program_hostile_switches(void **state) {
        (void) state;
        const char *prog = getenv("TB_PROGRAM");
        struct fx f;
        bool root = geteuid() == 0;

        if (!prog) {
                skip();
                return;
        }
        fx_dirs(&f);
        assert_int_equal(chmod(f.dir, 01777), 0);
        f.pid = fork();
        assert_true(f.pid >= 0);
        if (f.pid == 0) {
                if (root)
                        execl(prog, prog, "--socket", f.sock, "--record", f.rec, "--fds-always", "--uid", "65534",
                              "--gid", "65534", (char *) NULL);
                else
                        execl(prog, prog, "--socket", f.sock, "--record", f.rec, "--fds-always", (char *) NULL);
                _exit(127);
        }
        uint64_t deadline = vhu_deadline_after_ms(IO_MS);
        while ((f.fd = vhu_socket_connect(f.sock)) < 0 && vhu_now_usec() < deadline)
                usleep(10000);
        assert_true(f.fd >= 0);
        assert_int_equal(get_u64_with_devnull(f.fd, VHU_REQ_GET_FEATURES), TB_DEFAULT_FEATURES);
        struct ucred cred;
        socklen_t len = sizeof(cred);
        assert_int_equal(getsockopt(f.fd, SOL_SOCKET, SO_PEERCRED, &cred, &len), 0);
        assert_int_equal(cred.uid, root ? 65534 : geteuid());
        assert_stops_promptly(&f);
        close(f.fd);
        f.fd = -1;

        f.pid = fork();
        assert_true(f.pid >= 0);
        if (f.pid == 0) {
                execl(prog, prog, "--socket", f.sock, "--record", f.rec, "--no-accept", (char *) NULL);
                _exit(127);
        }
        await_recorded(&f, "NO_ACCEPT backlog=");
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        strcpy(sa.sun_path, f.sock);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        assert_true(fd >= 0);
        assert_int_equal(connect(fd, (struct sockaddr *) &sa, sizeof(sa)), -1);
        assert_int_equal(errno, EAGAIN);
        close(fd);
        assert_stops_promptly(&f);
        fx_stop(&f);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_parse),
                cmocka_unit_test(test_get_features_and_record),
                cmocka_unit_test(test_need_reply),
                cmocka_unit_test(test_fault_bad_flags_without_need_reply),
                cmocka_unit_test(test_fault_close_nth_then_reconnect),
                cmocka_unit_test(test_fault_kinds),
                cmocka_unit_test(test_fault_hang_and_nack),
                cmocka_unit_test(test_fault_die),
                cmocka_unit_test(test_fault_notify),
                cmocka_unit_test(test_unknown_request_closes),
                cmocka_unit_test(test_violations),
                cmocka_unit_test(test_log_base_reply),
                cmocka_unit_test(test_state_and_gets),
                cmocka_unit_test(test_mem_table),
                cmocka_unit_test(test_backend_channel),
                cmocka_unit_test(test_backend_unknown_request),
                cmocka_unit_test(test_fault_flood_channel),
                cmocka_unit_test(test_fault_channel_half_header),
                cmocka_unit_test(test_fault_truncate_memory),
                cmocka_unit_test(test_no_accept),
                cmocka_unit_test(test_run_as_uid),
                cmocka_unit_test(test_fds_on_every_message),
                cmocka_unit_test(test_no_fd_leak),
                cmocka_unit_test(test_spawn_connect),
                cmocka_unit_test(test_program),
                cmocka_unit_test(test_program_hostile_switches),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

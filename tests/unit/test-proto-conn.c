/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Reply validation, gating, encoding and the transport, driven over a
 * socketpair.  The peer's replies are written before the request is made:
 * the socket buffers them, so every case is deterministic and needs no thread.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "proto/vhost-user-frontend.h"
#include "proto/vhost-user-table.h"
#include "tests/common/fd-count.h"

#define DPDK_FEATURES UINT64_C(0xd7c66e7cb)
/* REPLY_ACK, LOG_SHMFD, RARP, NET_MTU, STATUS: no MQ, no channel, so negotiation is short. */
#define TEST_PF                                                                                                   \
        (VHU_BIT(VHU_PF_LOG_SHMFD) | VHU_BIT(VHU_PF_RARP) | VHU_BIT(VHU_PF_REPLY_ACK) | VHU_BIT(VHU_PF_NET_MTU) | \
         VHU_BIT(VHU_PF_STATUS))

struct fixture {
        struct vhu_conn *conn;
        int peer;
        int fds_before;
};

static void peer_send(int peer, uint32_t request, uint32_t flags, const void *payload, uint32_t size, const int *fds,
                      unsigned nfds) {
        struct vhu_msg m = { .hdr = { .request = request, .flags = flags, .size = size }, .nfds = nfds };
        if (size)
                memcpy(&m.payload, payload, size);
        for (unsigned i = 0; i < nfds; i++)
                m.fds[i] = fds[i];
        assert_int_equal(vhu_send_msg(peer, &m, NULL, vhu_deadline_after_ms(1000)), 0);
}

static void peer_reply_u64(int peer, uint32_t request, uint64_t v) {
        peer_send(peer, request, VHU_REPLY_FLAGS, &v, sizeof(v), NULL, 0);
}

/* Reads the next request the front-end sent; returns its number, closes its fds. */
static uint32_t peer_read(int peer, struct vhu_msg *out) {
        struct vhu_msg m;
        assert_int_equal(vhu_recv_hdr(peer, &m, NULL, vhu_deadline_after_ms(1000)), 0);
        assert_int_equal(vhu_recv_payload(peer, &m, NULL, vhu_deadline_after_ms(1000)), 0);
        if (out) {
                *out = m;
                out->nfds = m.nfds;
        }
        vhu_msg_close_fds(&m);
        return m.hdr.request;
}

static bool peer_has_data(int peer) {
        char c;
        return recv(peer, &c, 1, MSG_PEEK | MSG_DONTWAIT) > 0;
}

static int setup_with(void **state, uint64_t features, uint64_t pf) {
        struct fixture *f = calloc(1, sizeof(*f));
        int sv[2];
        f->fds_before = count_open_fds();
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        struct vhu_conn_options o = { .timeout_ms = 300 };
        assert_int_equal(vhu_conn_new(sv[0], &o, &f->conn), 0);
        f->peer = sv[1];

        /* Negotiation: GET_FEATURES, GET/SET_PROTOCOL_FEATURES, SET_OWNER (acked). */
        peer_reply_u64(f->peer, VHU_REQ_GET_FEATURES, features);
        if (features & VHU_BIT(VHU_VF_PROTOCOL_FEATURES))
                peer_reply_u64(f->peer, VHU_REQ_GET_PROTOCOL_FEATURES, pf);
        if (pf & VHU_BIT(VHU_PF_REPLY_ACK))
                peer_reply_u64(f->peer, VHU_REQ_SET_OWNER, 0);
        assert_int_equal(vhu_negotiate(f->conn, NULL), 0);
        while (peer_has_data(f->peer))
                peer_read(f->peer, NULL);
        *state = f;
        return 0;
}

static int setup(void **state) {
        return setup_with(state, DPDK_FEATURES, TEST_PF);
}
static int setup_no_ack(void **state) {
        return setup_with(state, DPDK_FEATURES, TEST_PF & ~VHU_BIT(VHU_PF_REPLY_ACK));
}

static int teardown(void **state) {
        struct fixture *f = *state;
        vhu_conn_free(f->conn);
        close(f->peer);
        /* Whatever the case did, no fd outlives it. */
        assert_int_equal(count_open_fds(), f->fds_before);
        free(f);
        return 0;
}

static void assert_error_mentions(struct vhu_conn *c, const char *a, const char *b) {
        const char *e = vhu_conn_error(c);
        if (!strstr(e, a) || (b && !strstr(e, b)))
                fail_msg("error \"%s\" does not mention \"%s\"%s%s", e, a, b ? " and " : "", b ? b : "");
}

/* ---- negotiation ------------------------------------------------------ */

static void negotiation_records_what_was_offered(void **state) {
        struct fixture *f = *state;
        assert_int_equal(vhu_conn_features(f->conn), DPDK_FEATURES);
        assert_int_equal(vhu_conn_protocol_features_offered(f->conn), TEST_PF);
        assert_int_equal(vhu_conn_protocol_features(f->conn), TEST_PF);
        assert_int_equal(vhu_conn_queue_num(f->conn), 1);
        assert_true(vhu_conn_is_connected(f->conn));
}

static void negotiation_order_and_acks(void **state) {
        (void) state;
        int sv[2];
        struct vhu_conn *c;
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        assert_int_equal(vhu_conn_new(sv[0], NULL, &c), 0);
        /* Offer everything, including a bit from the future and XEN_MMAP: neither may be acked. */
        uint64_t offered = VHU_BIT(VHU_PF_COUNT) - 1 + VHU_BIT(40);
        peer_reply_u64(sv[1], VHU_REQ_GET_FEATURES, DPDK_FEATURES);
        peer_reply_u64(sv[1], VHU_REQ_GET_PROTOCOL_FEATURES, offered);
        peer_reply_u64(sv[1], VHU_REQ_GET_QUEUE_NUM, 4);
        peer_reply_u64(sv[1], VHU_REQ_GET_MAX_MEM_SLOTS, 509);
        peer_reply_u64(sv[1], VHU_REQ_SET_BACKEND_REQ_FD, 0);
        peer_reply_u64(sv[1], VHU_REQ_SET_OWNER, 0);
        assert_int_equal(vhu_negotiate(c, NULL), 0);

        struct vhu_msg m;
        assert_int_equal(peer_read(sv[1], &m), VHU_REQ_GET_FEATURES);
        assert_int_equal(peer_read(sv[1], &m), VHU_REQ_GET_PROTOCOL_FEATURES);
        assert_int_equal(peer_read(sv[1], &m), VHU_REQ_SET_PROTOCOL_FEATURES);
        assert_int_equal(m.payload.u64, vhu_supported_protocol_features());
        assert_int_equal(m.hdr.flags, VHU_VERSION); /* REPLY_ACK is not in force yet */
        assert_int_equal(peer_read(sv[1], &m), VHU_REQ_GET_QUEUE_NUM);
        assert_int_equal(peer_read(sv[1], &m), VHU_REQ_GET_MAX_MEM_SLOTS);
        assert_int_equal(peer_read(sv[1], &m), VHU_REQ_SET_BACKEND_REQ_FD);
        assert_int_equal(m.nfds, 1);
        assert_int_equal(m.hdr.flags, VHU_VERSION | VHU_FLAG_NEED_REPLY);
        assert_int_equal(peer_read(sv[1], &m), VHU_REQ_SET_OWNER);
        assert_int_equal(m.hdr.flags, VHU_VERSION | VHU_FLAG_NEED_REPLY);
        assert_int_equal(vhu_conn_queue_num(c), 4);
        assert_int_equal(vhu_conn_max_mem_slots(c), 509);
        assert_non_null(vhu_conn_backend_channel(c));
        vhu_conn_free(c);
        close(sv[1]);
}

static void no_protocol_features_means_no_get_protocol_features(void **state) {
        (void) state;
        int sv[2];
        struct vhu_conn *c;
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        assert_int_equal(vhu_conn_new(sv[0], NULL, &c), 0);
        peer_reply_u64(sv[1], VHU_REQ_GET_FEATURES, VHU_BIT(VHU_VF_VERSION_1));
        assert_int_equal(vhu_negotiate(c, NULL), 0);
        assert_int_equal(peer_read(sv[1], NULL), VHU_REQ_GET_FEATURES);
        assert_int_equal(peer_read(sv[1], NULL), VHU_REQ_SET_OWNER);
        assert_false(peer_has_data(sv[1]));
        /* And nothing that needs them can be sent. */
        assert_int_equal(vhu_set_vring_enable(c, 0, true), -ENOTSUP);
        assert_error_mentions(c, "SET_VRING_ENABLE", "PROTOCOL_FEATURES");
        vhu_conn_free(c);
        close(sv[1]);
}

/* ---- gating ------------------------------------------------------------ */

static void request_without_its_feature_is_never_sent(void **state) {
        struct fixture *f = *state;
        assert_int_equal(vhu_get_queue_num(f->conn, &(uint64_t){ 0 }), -ENOTSUP);
        assert_error_mentions(f->conn, "GET_QUEUE_NUM", "MQ");
        assert_int_equal(vhu_reset_device(f->conn), -ENOTSUP);
        assert_int_equal(vhu_set_vring_endian(f->conn, 0, true), -ENOTSUP);
        assert_int_equal(vhu_iotlb_msg(f->conn, &(struct vhu_iotlb){ .type = VHU_IOTLB_UPDATE }), -ENOTSUP);
        assert_error_mentions(f->conn, "IOTLB_MSG", "ACCESS_PLATFORM");
        assert_false(peer_has_data(f->peer));
        /* The connection is still fine: refusing to send is not a failure of the link. */
        assert_true(vhu_conn_is_connected(f->conn));
}

static void rarp_only_with_rarp(void **state) {
        (void) state;
        struct fixture *f;
        setup_with((void **) &f, DPDK_FEATURES, TEST_PF & ~VHU_BIT(VHU_PF_RARP));
        const uint8_t mac[6] = { 0x52, 0x54, 0, 0x12, 0x34, 0x56 };
        assert_int_equal(vhu_send_rarp(f->conn, mac), -ENOTSUP);
        assert_error_mentions(f->conn, "SEND_RARP", "RARP");
        assert_false(peer_has_data(f->peer));
        teardown((void **) &f);
}

/* ---- encoding ---------------------------------------------------------- */

static void encodes_rarp_mtu_kick_and_mem_table(void **state) {
        struct fixture *f = *state;
        struct vhu_msg m;
        const uint8_t mac[6] = { 0x52, 0x54, 0, 0x12, 0x34, 0x56 };

        peer_reply_u64(f->peer, VHU_REQ_SEND_RARP, 0);
        assert_int_equal(vhu_send_rarp(f->conn, mac), 0);
        assert_int_equal(peer_read(f->peer, &m), VHU_REQ_SEND_RARP);
        assert_int_equal(m.hdr.size, 8);
        assert_memory_equal(&m.payload.u64, mac, 6);
        assert_int_equal(m.hdr.flags, VHU_VERSION | VHU_FLAG_NEED_REPLY);

        peer_reply_u64(f->peer, VHU_REQ_NET_SET_MTU, 0);
        assert_int_equal(vhu_net_set_mtu(f->conn, 9000), 0);
        assert_int_equal(peer_read(f->peer, &m), VHU_REQ_NET_SET_MTU);
        assert_int_equal(m.payload.u64, 9000);

        int efd = eventfd(0, EFD_CLOEXEC);
        peer_reply_u64(f->peer, VHU_REQ_SET_VRING_KICK, 0);
        assert_int_equal(vhu_set_vring_kick(f->conn, 3, efd), 0);
        assert_int_equal(peer_read(f->peer, &m), VHU_REQ_SET_VRING_KICK);
        assert_int_equal(m.payload.u64, 3);
        assert_int_equal(m.nfds, 1);
        peer_reply_u64(f->peer, VHU_REQ_SET_VRING_CALL, 0);
        assert_int_equal(vhu_set_vring_call(f->conn, 2, -1), 0);
        assert_int_equal(peer_read(f->peer, &m), VHU_REQ_SET_VRING_CALL);
        assert_int_equal(m.payload.u64, 2 | VHU_VRING_NOFD_MASK);
        assert_int_equal(m.nfds, 0);
        assert_int_equal(vhu_set_vring_call(f->conn, 256, -1), -EINVAL);

        struct vhu_region regs[2] = {
                { .fd = efd, .guest_phys_addr = 0, .memory_size = 0x100000, .userspace_addr = 0x7f0000000000 },
                { .fd = efd,
                  .guest_phys_addr = 0x100000,
                  .memory_size = 0x1000,
                  .userspace_addr = 0x7f1000000000,
                  .mmap_offset = 0x2000 },
        };
        peer_reply_u64(f->peer, VHU_REQ_SET_MEM_TABLE, 0);
        assert_int_equal(vhu_set_mem_table(f->conn, regs, 2), 0);
        assert_int_equal(peer_read(f->peer, &m), VHU_REQ_SET_MEM_TABLE);
        assert_int_equal(m.hdr.size, 8 + 2 * 32);
        assert_int_equal(m.nfds, 2);
        assert_int_equal(m.payload.mem.nregions, 2);
        assert_int_equal(m.payload.mem.regions[1].mmap_offset, 0x2000);
        assert_int_equal(m.payload.mem.regions[1].guest_phys_addr, 0x100000);
        close(efd);
}

static void bad_memory_tables_are_refused_before_sending(void **state) {
        struct fixture *f = *state;
        struct vhu_region regs[9];
        for (unsigned i = 0; i < 9; i++)
                regs[i] = (struct vhu_region){ .fd = 0, .guest_phys_addr = i * 0x1000, .memory_size = 0x1000 };
        assert_int_equal(vhu_set_mem_table(f->conn, regs, 9), -EINVAL);
        assert_int_equal(vhu_set_mem_table(f->conn, regs, 0), -EINVAL);
        regs[1].guest_phys_addr = 0x800; /* overlaps region 0 */
        assert_int_equal(vhu_set_mem_table(f->conn, regs, 2), -EINVAL);
        assert_error_mentions(f->conn, "SET_MEM_TABLE", "overlap");
        regs[1].guest_phys_addr = 0x1000;
        regs[1].fd = -1;
        assert_int_equal(vhu_set_mem_table(f->conn, regs, 2), -EBADF);
        regs[1].fd = 0;
        regs[1].memory_size = 0;
        assert_int_equal(vhu_set_mem_table(f->conn, regs, 2), -EINVAL);
        regs[1].memory_size = UINT64_MAX;
        assert_int_equal(vhu_set_mem_table(f->conn, regs, 2), -EINVAL);
        assert_false(peer_has_data(f->peer));
        assert_true(vhu_conn_is_connected(f->conn));
}

/* ---- reply validation -------------------------------------------------- */

static void expect_fatal(struct fixture *f, int ret, int err, const char *req, const char *what) {
        assert_int_equal(ret, err);
        assert_error_mentions(f->conn, req, what);
        /* The request that failed is known by number too (the journal's VHOSTMIG_REQUEST). */
        assert_string_equal(vhu_request_name(vhu_conn_last_request(f->conn)), req);
        assert_false(vhu_conn_is_connected(f->conn));
        /* Every later call fails without touching the dead socket. */
        assert_int_equal(vhu_set_owner(f->conn), -ENOTCONN);
}

static void reply_with_wrong_flags(void **state) {
        struct fixture *f = *state;
        uint64_t v = 1;
        peer_send(f->peer, VHU_REQ_GET_FEATURES, VHU_VERSION, &v, 8, NULL, 0);
        expect_fatal(f, vhu_get_features(f->conn, &v), -EPROTO, "GET_FEATURES", "flags 0x1");
}

static void reply_with_need_reply_flag(void **state) {
        struct fixture *f = *state;
        uint64_t v = 1;
        peer_send(f->peer, VHU_REQ_GET_FEATURES, VHU_REPLY_FLAGS | VHU_FLAG_NEED_REPLY, &v, 8, NULL, 0);
        expect_fatal(f, vhu_get_features(f->conn, &v), -EPROTO, "GET_FEATURES", "0xd");
}

static void reply_for_another_request(void **state) {
        struct fixture *f = *state;
        peer_reply_u64(f->peer, VHU_REQ_GET_PROTOCOL_FEATURES, 0);
        unsigned base;
        expect_fatal(f, vhu_get_vring_base(f->conn, 0, &base), -EPROTO, "GET_VRING_BASE", "GET_PROTOCOL_FEATURES");
}

static void reply_oversized(void **state) {
        struct fixture *f = *state;
        uint8_t big[64] = { 0 };
        peer_send(f->peer, VHU_REQ_GET_FEATURES, VHU_REPLY_FLAGS, big, sizeof(big), NULL, 0);
        uint64_t v;
        expect_fatal(f, vhu_get_features(f->conn, &v), -EPROTO, "GET_FEATURES", "64 bytes");
}

static void reply_undersized(void **state) {
        struct fixture *f = *state;
        uint32_t small = 0;
        peer_send(f->peer, VHU_REQ_GET_VRING_BASE, VHU_REPLY_FLAGS, &small, 4, NULL, 0);
        unsigned base;
        expect_fatal(f, vhu_get_vring_base(f->conn, 0, &base), -EPROTO, "GET_VRING_BASE", "4 bytes");
}

static void reply_with_huge_size_field(void **state) {
        struct fixture *f = *state;
        /* A header claiming 4 GiB of payload: refused from the header alone, nothing allocated. */
        struct vhu_hdr h = { .request = VHU_REQ_GET_FEATURES, .flags = VHU_REPLY_FLAGS, .size = UINT32_MAX };
        assert_int_equal(write(f->peer, &h, sizeof(h)), (ssize_t) sizeof(h));
        uint64_t v;
        expect_fatal(f, vhu_get_features(f->conn, &v), -EPROTO, "GET_FEATURES", "4294967295 bytes");
}

static void reply_with_unexpected_fds(void **state) {
        struct fixture *f = *state;
        int fds[2] = { eventfd(0, EFD_CLOEXEC), eventfd(0, EFD_CLOEXEC) };
        uint64_t v = 0;
        peer_send(f->peer, VHU_REQ_GET_FEATURES, VHU_REPLY_FLAGS, &v, 8, fds, 2);
        close(fds[0]);
        close(fds[1]);
        expect_fatal(f, vhu_get_features(f->conn, &v), -EPROTO, "GET_FEATURES", "2 fds");
        /* teardown counts fds: the two that arrived were closed. */
}

static void reply_with_too_many_fds(void **state) {
        struct fixture *f = *state;
        /* Twelve fds on one message: more than any vhost-user message may carry. */
        int fds[12];
        for (int i = 0; i < 12; i++)
                fds[i] = eventfd(0, EFD_CLOEXEC);
        uint64_t v = 0;
        struct vhu_hdr h = { .request = VHU_REQ_GET_FEATURES, .flags = VHU_REPLY_FLAGS, .size = 8 };
        char buf[sizeof(h) + 8];
        memcpy(buf, &h, sizeof(h));
        memcpy(buf + sizeof(h), &v, 8);
        char control[CMSG_SPACE(sizeof(fds))] = { 0 };
        struct iovec iov = { buf, sizeof(buf) };
        struct msghdr mh = {
                .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof(control)
        };
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(fds));
        memcpy(CMSG_DATA(cm), fds, sizeof(fds));
        assert_int_equal(sendmsg(f->peer, &mh, 0), (ssize_t) sizeof(buf));
        for (int i = 0; i < 12; i++)
                close(fds[i]);
        expect_fatal(f, vhu_get_features(f->conn, &v), -EMSGSIZE, "GET_FEATURES", "more than 8 fds");
}

static void ack_with_failure_status_keeps_connection(void **state) {
        struct fixture *f = *state;
        peer_reply_u64(f->peer, VHU_REQ_SET_VRING_NUM, 1);
        assert_int_equal(vhu_set_vring_num(f->conn, 0, 256), -EREMOTEIO);
        assert_error_mentions(f->conn, "SET_VRING_NUM", "status 1");
        assert_true(vhu_conn_is_connected(f->conn));
        peer_reply_u64(f->peer, VHU_REQ_SET_VRING_NUM, 0);
        assert_int_equal(vhu_set_vring_num(f->conn, 0, 256), 0);
}

static void ack_of_wrong_size(void **state) {
        struct fixture *f = *state;
        uint32_t v = 0;
        peer_send(f->peer, VHU_REQ_SET_VRING_NUM, VHU_REPLY_FLAGS, &v, 4, NULL, 0);
        expect_fatal(f, vhu_set_vring_num(f->conn, 0, 256), -EPROTO, "SET_VRING_NUM", "expected 8");
}

static void no_reply_times_out(void **state) {
        struct fixture *f = *state;
        uint64_t t0 = vhu_now_usec();
        uint64_t v;
        int r = vhu_get_features(f->conn, &v);
        uint64_t waited_ms = (vhu_now_usec() - t0) / 1000;
        expect_fatal(f, r, -ETIMEDOUT, "GET_FEATURES", "no reply in time");
        assert_in_range(waited_ms, 250, 2000); /* the 300 ms timeout, not for ever */
}

static void peer_closes(void **state) {
        struct fixture *f = *state;
        shutdown(f->peer, SHUT_WR);
        uint64_t v;
        expect_fatal(f, vhu_get_features(f->conn, &v), -ECONNRESET, "GET_FEATURES", "closed by the back-end");
}

static void truncated_reply_payload(void **state) {
        struct fixture *f = *state;
        struct vhu_hdr h = { .request = VHU_REQ_GET_FEATURES, .flags = VHU_REPLY_FLAGS, .size = 8 };
        assert_int_equal(write(f->peer, &h, sizeof(h)), (ssize_t) sizeof(h));
        assert_int_equal(write(f->peer, "abc", 3), 3);
        shutdown(f->peer, SHUT_WR);
        uint64_t v;
        expect_fatal(f, vhu_get_features(f->conn, &v), -ECONNRESET, "GET_FEATURES", "payload");
}

static void get_vring_base_for_another_ring(void **state) {
        struct fixture *f = *state;
        struct vhu_vring_state s = { .index = 1, .num = 77 };
        peer_send(f->peer, VHU_REQ_GET_VRING_BASE, VHU_REPLY_FLAGS, &s, sizeof(s), NULL, 0);
        unsigned base;
        expect_fatal(f, vhu_get_vring_base(f->conn, 0, &base), -EPROTO, "GET_VRING_BASE", "ring 1");
}

static void get_vring_base_ok(void **state) {
        struct fixture *f = *state;
        struct vhu_vring_state s = { .index = 5, .num = 4242 };
        peer_send(f->peer, VHU_REQ_GET_VRING_BASE, VHU_REPLY_FLAGS, &s, sizeof(s), NULL, 0);
        unsigned base = 0;
        assert_int_equal(vhu_get_vring_base(f->conn, 5, &base), 0);
        assert_int_equal(base, 4242);
        struct vhu_msg m;
        assert_int_equal(peer_read(f->peer, &m), VHU_REQ_GET_VRING_BASE);
        assert_int_equal(m.hdr.flags, VHU_VERSION); /* a request with a reply never asks for an ack */
}

static void set_log_base_replies_of_every_known_size(void **state) {
        struct fixture *f = *state;
        int memfd = eventfd(0, EFD_CLOEXEC);
        uint8_t zero[24] = { 0 };
        for (uint32_t size = 0; size <= 16; size += 8) {
                peer_send(f->peer, VHU_REQ_SET_LOG_BASE, VHU_REPLY_FLAGS, zero, size, NULL, 0);
                assert_int_equal(vhu_set_log_base(f->conn, memfd, 4096, 0), 0);
                struct vhu_msg m;
                assert_int_equal(peer_read(f->peer, &m), VHU_REQ_SET_LOG_BASE);
                assert_int_equal(m.nfds, 1);
                assert_int_equal(m.payload.log.mmap_size, 4096);
                assert_int_equal(m.hdr.flags, VHU_VERSION); /* its own reply is the ack */
        }
        peer_send(f->peer, VHU_REQ_SET_LOG_BASE, VHU_REPLY_FLAGS, zero, 24, NULL, 0);
        expect_fatal(f, vhu_set_log_base(f->conn, memfd, 4096, 0), -EPROTO, "SET_LOG_BASE", "24 bytes");
        close(memfd);
}

static void without_reply_ack_nothing_waits(void **state) {
        struct fixture *f = *state;
        assert_int_equal(vhu_set_vring_num(f->conn, 0, 256), 0);
        struct vhu_msg m;
        assert_int_equal(peer_read(f->peer, &m), VHU_REQ_SET_VRING_NUM);
        assert_int_equal(m.hdr.flags, VHU_VERSION);
        /* The barrier is a GET_FEATURES round trip whose answer must not change. */
        peer_reply_u64(f->peer, VHU_REQ_GET_FEATURES, DPDK_FEATURES);
        assert_int_equal(vhu_barrier(f->conn), 0);
        peer_reply_u64(f->peer, VHU_REQ_GET_FEATURES, DPDK_FEATURES ^ 1);
        expect_fatal(f, vhu_barrier(f->conn), -EPROTO, "GET_FEATURES", "changed");
}

static void set_features_checks_offer(void **state) {
        struct fixture *f = *state;
        assert_int_equal(vhu_set_features(f->conn, VHU_BIT(63)), -EINVAL);
        assert_error_mentions(f->conn, "SET_FEATURES", "not offered");
        peer_reply_u64(f->peer, VHU_REQ_SET_FEATURES, 0);
        assert_int_equal(vhu_set_features(f->conn, VHU_BIT(VHU_VF_VERSION_1)), 0);
        struct vhu_msg m;
        assert_int_equal(peer_read(f->peer, &m), VHU_REQ_SET_FEATURES);
        /* PROTOCOL_FEATURES stays acked, or the negotiated protocol features would lapse. */
        assert_int_equal(m.payload.u64, VHU_BIT(VHU_VF_VERSION_1) | VHU_BIT(VHU_VF_PROTOCOL_FEATURES));
        assert_int_equal(vhu_conn_acked_features(f->conn), m.payload.u64);
}

/* ---- back-end channel -------------------------------------------------- */

struct channel_log {
        int config_changes;
        unsigned last_call;
};

static int on_config_change(void *ud) {
        ((struct channel_log *) ud)->config_changes++;
        return 0;
}

static void backend_channel_serves_and_refuses(void **state) {
        (void) state;
        int before = count_open_fds();
        struct channel_log log = { 0 };
        const struct vhu_backend_handlers h = { .config_change = on_config_change };
        struct vhu_backend_channel *ch;
        int bfd;
        uint64_t pf = VHU_BIT(VHU_PF_BACKEND_REQ) | VHU_BIT(VHU_PF_CONFIG) | VHU_BIT(VHU_PF_INBAND_NOTIFICATIONS);
        assert_int_equal(vhu_backend_channel_new(&h, &log, pf, &bfd, &ch), 0);

        assert_int_equal(vhu_backend_channel_process(ch), 0); /* nothing waiting */
        peer_send(bfd, VHU_BREQ_CONFIG_CHANGE_MSG, VHU_VERSION | VHU_FLAG_NEED_REPLY, NULL, 0, NULL, 0);
        assert_int_equal(vhu_backend_channel_process(ch), 1);
        assert_int_equal(log.config_changes, 1);
        struct vhu_msg m;
        assert_int_equal(peer_read(bfd, &m), VHU_BREQ_CONFIG_CHANGE_MSG);
        assert_int_equal(m.hdr.flags, VHU_REPLY_FLAGS);
        assert_int_equal(m.payload.u64, 0);

        /* No handler: refused with a non-zero status, channel stays open. */
        struct vhu_vring_state s = { .index = 1 };
        peer_send(bfd, VHU_BREQ_VRING_CALL, VHU_VERSION | VHU_FLAG_NEED_REPLY, &s, sizeof(s), NULL, 0);
        assert_int_equal(vhu_backend_channel_process(ch), 1);
        assert_int_equal(peer_read(bfd, &m), VHU_BREQ_VRING_CALL);
        assert_int_not_equal(m.payload.u64, 0);
        assert_int_equal(vhu_backend_channel_refused(ch), 1);
        assert_int_equal(vhu_backend_channel_served(ch), 1);

        /* Without NEED_REPLY nothing comes back. */
        peer_send(bfd, VHU_BREQ_CONFIG_CHANGE_MSG, VHU_VERSION, NULL, 0, NULL, 0);
        assert_int_equal(vhu_backend_channel_process(ch), 1);
        assert_false(peer_has_data(bfd));

        /* A request whose feature was not negotiated is a protocol error. */
        uint8_t uuid[16] = { 0 };
        peer_send(bfd, VHU_BREQ_SHARED_OBJECT_ADD, VHU_VERSION, uuid, 16, NULL, 0);
        assert_int_equal(vhu_backend_channel_process(ch), -EPROTO);
        assert_non_null(strstr(vhu_backend_channel_error(ch), "SHARED_OBJECT"));
        assert_false(vhu_backend_channel_is_open(ch));
        vhu_backend_channel_free(ch);
        close(bfd);
        assert_int_equal(count_open_fds(), before);
}

static void backend_channel_rejects_garbage(void **state) {
        (void) state;
        int before = count_open_fds();
        struct vhu_backend_channel *ch;
        int bfd;
        uint64_t pf = VHU_BIT(VHU_PF_BACKEND_REQ) | VHU_BIT(VHU_PF_CONFIG);

        /* Unknown request number. */
        assert_int_equal(vhu_backend_channel_new(NULL, NULL, pf, &bfd, &ch), 0);
        peer_send(bfd, 99, VHU_VERSION | VHU_FLAG_NEED_REPLY, NULL, 0, NULL, 0);
        assert_int_equal(vhu_backend_channel_process(ch), -EPROTO);
        assert_non_null(strstr(vhu_backend_channel_error(ch), "unknown"));
        vhu_backend_channel_free(ch);
        close(bfd);

        /* An fd where none may travel (no BACKEND_SEND_FD): closed, channel closed. */
        assert_int_equal(vhu_backend_channel_new(NULL, NULL, pf, &bfd, &ch), 0);
        int efd = eventfd(0, EFD_CLOEXEC);
        peer_send(bfd, VHU_BREQ_CONFIG_CHANGE_MSG, VHU_VERSION, NULL, 0, &efd, 1);
        close(efd);
        assert_int_equal(vhu_backend_channel_process(ch), -EPROTO);
        assert_non_null(strstr(vhu_backend_channel_error(ch), "unexpected fds"));
        vhu_backend_channel_free(ch);
        close(bfd);

        /* Wrong size. */
        assert_int_equal(vhu_backend_channel_new(NULL, NULL, pf, &bfd, &ch), 0);
        uint64_t junk = 0;
        peer_send(bfd, VHU_BREQ_CONFIG_CHANGE_MSG, VHU_VERSION, &junk, 8, NULL, 0);
        assert_int_equal(vhu_backend_channel_process(ch), -EPROTO);
        vhu_backend_channel_free(ch);
        close(bfd);

        /* The back-end hangs up. */
        assert_int_equal(vhu_backend_channel_new(NULL, NULL, pf, &bfd, &ch), 0);
        close(bfd);
        assert_int_equal(vhu_backend_channel_process(ch), -ECONNRESET);
        vhu_backend_channel_free(ch);
        assert_int_equal(count_open_fds(), before);
}

/* ---- transport ---------------------------------------------------------- */

struct dribble {
        int fd;
        const uint8_t *buf;
        size_t len;
};

static void *dribble_bytes(void *arg) {
        struct dribble *d = arg;
        for (size_t i = 0; i < d->len; i++) {
                assert_int_equal(write(d->fd, d->buf + i, 1), 1);
                usleep(200);
        }
        return NULL;
}

static void transport_reassembles_partial_messages(void **state) {
        (void) state;
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        assert_int_equal(vhu_fd_prepare(sv[0]), 0);
        struct {
                struct vhu_hdr h;
                struct vhu_vring_addr a;
        } __attribute__((packed)) wire = {
                .h = { VHU_REQ_SET_VRING_ADDR, VHU_VERSION, sizeof(struct vhu_vring_addr) },
                .a = { .index = 7, .flags = VHU_VRING_F_LOG, .log_guest_addr = 0xabcdef000 },
        };
        struct dribble d = { sv[1], (const uint8_t *) &wire, sizeof(wire) };
        pthread_t t;
        pthread_create(&t, NULL, dribble_bytes, &d);
        struct vhu_msg m;
        assert_int_equal(vhu_recv_hdr(sv[0], &m, NULL, vhu_deadline_after_ms(2000)), 0);
        assert_int_equal(m.hdr.size, sizeof(struct vhu_vring_addr));
        assert_int_equal(vhu_recv_payload(sv[0], &m, NULL, vhu_deadline_after_ms(2000)), 0);
        pthread_join(t, NULL);
        assert_int_equal(m.payload.addr.index, 7);
        assert_int_equal(m.payload.addr.log_guest_addr, 0xabcdef000);
        close(sv[0]);
        close(sv[1]);
}

static void listen_replaces_only_stale_sockets(void **state) {
        (void) state;
        char dir[] = "/tmp/vhostmig-test-XXXXXX";
        assert_non_null(mkdtemp(dir));
        char path[128];
        snprintf(path, sizeof(path), "%s/sock", dir);

        int l1 = vhu_socket_listen(path);
        assert_true(l1 >= 0);
        /* Somebody listens: refuse to steal the path. */
        assert_int_equal(vhu_socket_listen(path), -EADDRINUSE);
        close(l1);
        /* Stale socket file from a dead listener: replaced. */
        int l2 = vhu_socket_listen(path);
        assert_true(l2 >= 0);
        int c = vhu_socket_connect(path);
        assert_true(c >= 0);
        int a = vhu_socket_accept(l2, NULL, vhu_deadline_after_ms(1000));
        assert_true(a >= 0);
        close(a);
        close(c);
        close(l2);
        /* No connection within the deadline. */
        unlink(path);
        int l3 = vhu_socket_listen(path);
        assert_int_equal(vhu_socket_accept(l3, NULL, vhu_deadline_after_ms(50)), -ETIMEDOUT);
        close(l3);
        unlink(path);
        /* A regular file is never removed. */
        int reg = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
        close(reg);
        assert_int_equal(vhu_socket_listen(path), -EEXIST);
        unlink(path);
        rmdir(dir);
        assert_int_equal(vhu_socket_connect(path), -ENOENT);
}

/* ---- pluggable waiting, timeouts, tracing --------------------------------------- */

struct wait_log {
        unsigned calls;
};

static int counting_wait(void *userdata, int fd, short events, uint64_t deadline_usec) {
        ((struct wait_log *) userdata)->calls++;
        return vhu_wait_poll(NULL, fd, events, deadline_usec);
}

static void custom_wait_is_used(void **state) {
        struct fixture *f = *state;
        struct wait_log log = { 0 };
        const struct vhu_io io = { .wait = counting_wait, .userdata = &log };
        vhu_conn_set_io(f->conn, &io);
        /* No reply buffered yet: the connection must wait, through our function. */
        uint64_t v;
        assert_int_equal(vhu_get_features(f->conn, &v), -ETIMEDOUT);
        assert_true(log.calls >= 1);
}

static void timeout_can_be_changed(void **state) {
        struct fixture *f = *state;
        vhu_conn_set_timeout(f->conn, 50);
        uint64_t t0 = vhu_now_usec(), v;
        assert_int_equal(vhu_get_features(f->conn, &v), -ETIMEDOUT);
        uint64_t ms = (vhu_now_usec() - t0) / 1000;
        assert_in_range(ms, 40, 250); /* 50 ms, not the fixture's 300 */
}

struct trace_log {
        unsigned sent, received;
        uint32_t last_sent, last_received;
};

static void tracer(void *userdata, bool sent, const struct vhu_msg *msg) {
        struct trace_log *t = userdata;
        if (sent) {
                t->sent++;
                t->last_sent = msg->hdr.request;
        } else {
                t->received++;
                t->last_received = msg->hdr.request;
        }
}

static void trace_sees_both_directions(void **state) {
        struct fixture *f = *state;
        struct trace_log t = { 0 };
        vhu_conn_set_trace(f->conn, tracer, &t);
        struct vhu_vring_state st = { .index = 0, .num = 9 };
        peer_send(f->peer, VHU_REQ_GET_VRING_BASE, VHU_REPLY_FLAGS, &st, sizeof(st), NULL, 0);
        unsigned base;
        assert_int_equal(vhu_get_vring_base(f->conn, 0, &base), 0);
        assert_int_equal(t.sent, 1);
        assert_int_equal(t.received, 1);
        assert_int_equal(t.last_sent, VHU_REQ_GET_VRING_BASE);
        assert_int_equal(t.last_received, VHU_REQ_GET_VRING_BASE);
        /* A request refused before sending is not traced. */
        assert_int_equal(vhu_reset_device(f->conn), -ENOTSUP);
        assert_int_equal(t.sent, 1);
}

/* ---- a hostile back-end channel ------------------------------------------ */

/*
 * A hostile back-end that misbehaves on the channel must not outlast the
 * request timeout.  alarm() is a watchdog: code that loops or blocks for
 * ever is killed, so the test fails instead of hanging.
 */
#define WATCHDOG_S 10

#define CHANNEL_PF                                                                          \
        (VHU_BIT(VHU_PF_REPLY_ACK) | VHU_BIT(VHU_PF_BACKEND_REQ) | VHU_BIT(VHU_PF_CONFIG) | \
         VHU_BIT(VHU_PF_BACKEND_SEND_FD) | VHU_BIT(VHU_PF_HOST_NOTIFIER))

struct channel_fixture {
        struct vhu_conn *conn;
        int peer;    /* the back-end's main socket */
        int channel; /* the back-end's end of the back-end channel */
        int fds_before;
};

/* Negotiates with the back-end channel and takes the channel's fd from SET_BACKEND_REQ_FD. */
static void channel_setup(struct channel_fixture *f, unsigned timeout_ms) {
        int sv[2];
        f->fds_before = count_open_fds();
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        struct vhu_conn_options o = { .timeout_ms = timeout_ms };
        assert_int_equal(vhu_conn_new(sv[0], &o, &f->conn), 0);
        f->peer = sv[1];
        peer_reply_u64(f->peer, VHU_REQ_GET_FEATURES, DPDK_FEATURES);
        peer_reply_u64(f->peer, VHU_REQ_GET_PROTOCOL_FEATURES, CHANNEL_PF);
        peer_reply_u64(f->peer, VHU_REQ_SET_BACKEND_REQ_FD, 0);
        peer_reply_u64(f->peer, VHU_REQ_SET_OWNER, 0);
        assert_int_equal(vhu_negotiate(f->conn, NULL), 0);
        assert_int_equal(vhu_conn_protocol_features(f->conn), CHANNEL_PF);
        f->channel = -1;
        while (peer_has_data(f->peer)) {
                struct vhu_msg m;
                assert_int_equal(vhu_recv_hdr(f->peer, &m, NULL, vhu_deadline_after_ms(1000)), 0);
                assert_int_equal(vhu_recv_payload(f->peer, &m, NULL, vhu_deadline_after_ms(1000)), 0);
                if (m.hdr.request == VHU_REQ_SET_BACKEND_REQ_FD) {
                        assert_int_equal(m.nfds, 1);
                        f->channel = m.fds[0];
                        m.nfds = 0;
                }
                vhu_msg_close_fds(&m);
        }
        assert_true(f->channel >= 0);
}

static void channel_teardown(struct channel_fixture *f) {
        vhu_conn_free(f->conn);
        close(f->peer);
        close(f->channel);
        assert_int_equal(count_open_fds(), f->fds_before);
}

struct flooder {
        int channel;
        int reply_to; /* >= 0: once cut off, answer GET_FEATURES here */
        unsigned long sent;
        int error; /* errno that ended the flood */
};

/*
 * CONFIG_CHANGE_MSG without NEED_REPLY, 64 per write so that the channel never
 * runs dry, as fast as the socket takes them, until the channel is closed.
 */
static void *flood(void *arg) {
        struct flooder *fl = arg;
        struct vhu_hdr burst[64];
        for (unsigned i = 0; i < 64; i++)
                burst[i] = (struct vhu_hdr){ .request = VHU_BREQ_CONFIG_CHANGE_MSG, .flags = VHU_VERSION };
        for (;;) {
                ssize_t n = send(fl->channel, burst, sizeof(burst), MSG_NOSIGNAL);
                if (n < 0) {
                        fl->error = errno;
                        break;
                }
                fl->sent += (unsigned long) n / sizeof(burst[0]);
        }
        if (fl->reply_to >= 0) {
                uint64_t v = DPDK_FEATURES;
                peer_send(fl->reply_to, VHU_REQ_GET_FEATURES, VHU_REPLY_FLAGS, &v, sizeof(v), NULL, 0);
        }
        return NULL;
}

static void flood_with_reply_withheld_fails_at_the_timeout(void **state) {
        (void) state;
        alarm(WATCHDOG_S);
        struct channel_fixture f;
        channel_setup(&f, 200);
        struct flooder fl = { .channel = f.channel, .reply_to = -1 };
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, flood, &fl), 0);

        uint64_t t0 = vhu_now_usec(), v;
        int r = vhu_get_features(f.conn, &v);
        uint64_t ms = (vhu_now_usec() - t0) / 1000;
        assert_int_equal(r, -ETIMEDOUT);
        assert_in_range(ms, 150, 999); /* the 200 ms timeout, whatever the back-end sends */
        /* The error says both: no reply in time, and the channel was cut off as a flood. */
        assert_error_mentions(f.conn, "no reply in time", "flooded");
        assert_false(vhu_conn_is_connected(f.conn));
        assert_int_equal(pthread_join(t, NULL), 0);
        assert_true(fl.error == EPIPE || fl.error == ECONNRESET); /* closed on it */
        channel_teardown(&f);
        alarm(0);
}

static void flood_is_cut_off_and_the_connection_goes_on(void **state) {
        (void) state;
        alarm(WATCHDOG_S);
        struct channel_fixture f;
        channel_setup(&f, 2000);
        struct flooder fl = { .channel = f.channel, .reply_to = f.peer };
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, flood, &fl), 0);

        /* The flooder answers only once the channel is closed on it. */
        uint64_t v = 0;
        assert_int_equal(vhu_get_features(f.conn, &v), 0);
        assert_int_equal(v, DPDK_FEATURES);
        assert_int_equal(pthread_join(t, NULL), 0);
        assert_true(fl.error == EPIPE || fl.error == ECONNRESET); /* closed on it */
        assert_true(fl.sent > VHU_BACKEND_CHANNEL_FLOOD_MAX);
        assert_true(vhu_conn_is_connected(f.conn));
        struct vhu_backend_channel *ch = vhu_conn_backend_channel(f.conn);
        assert_false(vhu_backend_channel_is_open(ch));
        assert_non_null(strstr(vhu_backend_channel_error(ch), "flooded, more than 256 messages within 1000 ms"));
        channel_teardown(&f);
        alarm(0);
}

static void half_header_on_channel_fails_at_the_request_timeout(void **state) {
        (void) state;
        alarm(WATCHDOG_S);
        struct channel_fixture f;
        channel_setup(&f, 200);
        /* Six bytes of a twelve-byte header, then nothing; and no reply either. */
        struct vhu_hdr h = { .request = VHU_BREQ_CONFIG_CHANGE_MSG, .flags = VHU_VERSION, .size = 0 };
        assert_int_equal(write(f.channel, &h, 6), 6);

        uint64_t t0 = vhu_now_usec(), v;
        int r = vhu_get_features(f.conn, &v);
        uint64_t ms = (vhu_now_usec() - t0) / 1000;
        assert_int_equal(r, -ETIMEDOUT);
        /* Near the request's 200 ms, not the channel's own 1 s limit per message. */
        assert_in_range(ms, 150, 700);
        assert_error_mentions(f.conn, "GET_FEATURES: no reply in time", "did not arrive whole");
        channel_teardown(&f);
        alarm(0);
}

static void channel_serve_is_bounded(void **state) {
        (void) state;
        alarm(WATCHDOG_S);
        int before = count_open_fds();
        struct channel_log log = { 0 };
        const struct vhu_backend_handlers h = { .config_change = on_config_change };
        struct vhu_backend_channel *ch;
        int bfd;
        uint64_t pf = VHU_BIT(VHU_PF_BACKEND_REQ) | VHU_BIT(VHU_PF_CONFIG);
        assert_int_equal(vhu_backend_channel_new(&h, &log, pf, &bfd, &ch), 0);

        for (int i = 0; i < 10; i++)
                peer_send(bfd, VHU_BREQ_CONFIG_CHANGE_MSG, VHU_VERSION, NULL, 0, NULL, 0);
        /* A deadline already passed: nothing is read. */
        assert_int_equal(vhu_backend_channel_serve(ch, 4, vhu_now_usec()), 0);
        assert_int_equal(vhu_backend_channel_serve(ch, 4, UINT64_MAX), 4);
        assert_int_equal(vhu_backend_channel_serve(ch, 4, vhu_deadline_after_ms(1000)), 4);
        assert_int_equal(vhu_backend_channel_serve(ch, 4, UINT64_MAX), 2);
        assert_int_equal(vhu_backend_channel_serve(ch, 4, UINT64_MAX), 0); /* none waiting: no wait */
        assert_int_equal(log.config_changes, 10);

        /* More than a real back-end ever sends at once (in one write, to fit the socket buffer). */
        struct vhu_hdr burst[VHU_BACKEND_CHANNEL_FLOOD_MAX + 50];
        for (unsigned i = 0; i < VHU_BACKEND_CHANNEL_FLOOD_MAX + 50; i++)
                burst[i] = (struct vhu_hdr){ .request = VHU_BREQ_CONFIG_CHANGE_MSG, .flags = VHU_VERSION };
        assert_int_equal(write(bfd, burst, sizeof(burst)), (ssize_t) sizeof(burst));
        /* Cut off, and it says so. */
        assert_int_equal(vhu_backend_channel_serve(ch, 100000, UINT64_MAX), -ECONNABORTED);
        assert_false(vhu_backend_channel_is_open(ch));
        assert_non_null(strstr(vhu_backend_channel_error(ch), "flooded"));
        assert_true(log.config_changes <= (int) VHU_BACKEND_CHANNEL_FLOOD_MAX);
        assert_int_equal(vhu_backend_channel_serve(ch, 4, UINT64_MAX), -ENOTCONN);
        assert_int_equal(vhu_backend_channel_process(ch), -ENOTCONN);
        vhu_backend_channel_free(ch);
        close(bfd);
        assert_int_equal(count_open_fds(), before);
        alarm(0);
}

/* ---- fds where none may travel ------------------------------------------- */

static void fd_on_every_reply_is_refused(void **state) {
        (void) state;
        for (unsigned k = 0; k < 5; k++) {
                struct fixture *f;
                setup((void **) &f);
                int efd = eventfd(0, EFD_CLOEXEC);
                uint64_t u64 = 0;
                unsigned base;
                uint8_t status;
                struct vhu_vring_state st = { 0, 1 };
                int r = 0;
                const char *req = NULL;
                switch (k) {
                case 0:
                        peer_send(f->peer, VHU_REQ_GET_VRING_BASE, VHU_REPLY_FLAGS, &st, sizeof(st), &efd, 1);
                        r = vhu_get_vring_base(f->conn, 0, &base);
                        req = "GET_VRING_BASE";
                        break;
                case 1:
                        peer_send(f->peer, VHU_REQ_GET_STATUS, VHU_REPLY_FLAGS, &u64, 8, &efd, 1);
                        r = vhu_get_status(f->conn, &status);
                        req = "GET_STATUS";
                        break;
                case 2: /* an ack */
                        peer_send(f->peer, VHU_REQ_SET_VRING_NUM, VHU_REPLY_FLAGS, &u64, 8, &efd, 1);
                        r = vhu_set_vring_num(f->conn, 0, 256);
                        req = "SET_VRING_NUM";
                        break;
                case 3:
                        peer_send(f->peer, VHU_REQ_SET_LOG_BASE, VHU_REPLY_FLAGS, &u64, 8, &efd, 1);
                        r = vhu_set_log_base(f->conn, efd, 4096, 0);
                        req = "SET_LOG_BASE";
                        break;
                default: /* a refusing ack carrying an fd */
                        u64 = 1;
                        peer_send(f->peer, VHU_REQ_NET_SET_MTU, VHU_REPLY_FLAGS, &u64, 8, &efd, 1);
                        r = vhu_net_set_mtu(f->conn, 1500);
                        req = "NET_SET_MTU";
                        break;
                }
                close(efd);
                expect_fatal(f, r, -EPROTO, req, "1 fds");
                teardown((void **) &f); /* counts fds: the one that arrived was closed */
        }
}

static void fd_on_every_channel_message_is_refused(void **state) {
        (void) state;
        int before = count_open_fds();
        /* BACKEND_SEND_FD negotiated: fds are still refused where the table has none. */
        uint64_t pf = VHU_BIT(VHU_PF_BACKEND_REQ) | VHU_BIT(VHU_PF_CONFIG) | VHU_BIT(VHU_PF_BACKEND_SEND_FD) |
                      VHU_BIT(VHU_PF_HOST_NOTIFIER) | VHU_BIT(VHU_PF_INBAND_NOTIFICATIONS) | VHU_BIT(VHU_PF_REPLY_ACK);
        struct vhu_vring_state s = { .index = 0 };
        struct vhu_vring_area area = { 0 };
        for (unsigned k = 0; k < 4; k++) {
                struct vhu_backend_channel *ch;
                int bfd;
                assert_int_equal(vhu_backend_channel_new(NULL, NULL, pf, &bfd, &ch), 0);
                int fds[2] = { eventfd(0, EFD_CLOEXEC), eventfd(0, EFD_CLOEXEC) };
                int expect = -EPROTO;
                switch (k) {
                case 0:
                        peer_send(bfd, VHU_BREQ_CONFIG_CHANGE_MSG, VHU_VERSION, NULL, 0, fds, 1);
                        break;
                case 1:
                        peer_send(bfd, VHU_BREQ_VRING_CALL, VHU_VERSION | VHU_FLAG_NEED_REPLY, &s, sizeof(s), fds, 2);
                        break;
                case 2: /* one fd allowed, two sent */
                        peer_send(bfd, VHU_BREQ_VRING_HOST_NOTIFIER_MSG, VHU_VERSION, &area, sizeof(area), fds, 2);
                        break;
                default: /* allowed, but nobody handles it: refused, the fd closed, the channel stays */
                        peer_send(bfd, VHU_BREQ_VRING_HOST_NOTIFIER_MSG, VHU_VERSION, &area, sizeof(area), fds, 1);
                        expect = 1;
                        break;
                }
                close(fds[0]);
                close(fds[1]);
                assert_int_equal(vhu_backend_channel_serve(ch, 8, vhu_deadline_after_ms(1000)), expect);
                if (expect < 0)
                        assert_non_null(strstr(vhu_backend_channel_error(ch), "unexpected fds"));
                else
                        assert_int_equal(vhu_backend_channel_refused(ch), 1);
                vhu_backend_channel_free(ch);
                close(bfd);
                assert_int_equal(count_open_fds(), before);
        }
}

/* ---- sockets: bounded connect, mode and group, identity, credentials ------ */

struct full_listener {
        char dir[32];
        char path[64];
        int fd;
        int clients[64];
        unsigned nclients;
};

/* A listener that never accepts, its backlog filled with connections nobody takes. */
static void full_listener_open(struct full_listener *l) {
        snprintf(l->dir, sizeof(l->dir), "/tmp/vhostmig-test-XXXXXX");
        assert_non_null(mkdtemp(l->dir));
        snprintf(l->path, sizeof(l->path), "%s/sock", l->dir);
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", l->path);
        l->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(l->fd >= 0);
        assert_int_equal(bind(l->fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        assert_int_equal(listen(l->fd, 0), 0);
        l->nclients = 0;
        for (;;) {
                assert_true(l->nclients < 64);
                int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
                if (connect(c, (struct sockaddr *) &sa, sizeof(sa)) < 0) {
                        assert_int_equal(errno, EAGAIN);
                        close(c);
                        break;
                }
                l->clients[l->nclients++] = c;
        }
}

static void full_listener_close(struct full_listener *l) {
        for (unsigned i = 0; i < l->nclients; i++)
                close(l->clients[i]);
        close(l->fd);
        unlink(l->path);
        rmdir(l->dir);
}

static void connect_to_a_full_backlog_times_out(void **state) {
        (void) state;
        alarm(WATCHDOG_S);
        int before = count_open_fds();
        struct full_listener l;
        full_listener_open(&l);

        uint64_t t0 = vhu_now_usec();
        assert_int_equal(vhu_socket_connect_until(l.path, vhu_deadline_after_ms(200)), -ETIMEDOUT);
        uint64_t ms = (vhu_now_usec() - t0) / 1000;
        assert_in_range(ms, 190, 600);

        /* A connection's connect is bounded by its timeout. */
        struct vhu_conn *c = NULL;
        t0 = vhu_now_usec();
        assert_int_equal(vhu_conn_connect(l.path, &(struct vhu_conn_options){ .timeout_ms = 150 }, &c), -ETIMEDOUT);
        ms = (vhu_now_usec() - t0) / 1000;
        assert_in_range(ms, 140, 450);
        assert_null(c);

        /* Once the listener accepts, the connect goes through. */
        int a = accept4(l.fd, NULL, NULL, SOCK_CLOEXEC);
        assert_true(a >= 0);
        int fd = vhu_socket_connect_until(l.path, vhu_deadline_after_ms(1000));
        assert_true(fd >= 0);
        close(fd);
        close(a);
        full_listener_close(&l);
        assert_int_equal(count_open_fds(), before);
        alarm(0);
}

static void listen_over_a_full_listener_refuses_and_keeps_its_file(void **state) {
        (void) state;
        alarm(WATCHDOG_S);
        struct full_listener l;
        full_listener_open(&l);
        struct stat st0, st1;
        assert_int_equal(lstat(l.path, &st0), 0);

        uint64_t t0 = vhu_now_usec();
        assert_int_equal(vhu_socket_listen(l.path), -EADDRINUSE);
        assert_true(vhu_now_usec() - t0 < 1000000); /* no waiting on a listener that never accepts */
        assert_int_equal(lstat(l.path, &st1), 0);
        assert_int_equal(st1.st_ino, st0.st_ino); /* still the live listener's file */
        full_listener_close(&l);
        alarm(0);
}

static gid_t some_other_group(void) {
        /* As root any group will do; else one this process is a member of. */
        if (geteuid() == 0)
                return getegid() == 4242 ? 4243 : 4242;
        gid_t groups[64];
        int n = getgroups(64, groups);
        return n > 0 ? groups[n - 1] : getegid();
}

static void listen_ex_sets_mode_and_group_and_unlinks_only_its_own_file(void **state) {
        (void) state;
        char dir[] = "/tmp/vhostmig-test-XXXXXX";
        assert_non_null(mkdtemp(dir));
        char path[128];
        snprintf(path, sizeof(path), "%s/sock", dir);

        gid_t gid = some_other_group();
        struct vhu_listen_options o = { .mode = 0660, .gid = gid };
        struct vhu_socket_file file = { 0 };
        mode_t old_umask = umask(0); /* the mode must not depend on the umask */
        int l = vhu_socket_listen_ex(path, &o, &file);
        umask(old_umask);
        assert_true(l >= 0);
        struct stat st;
        assert_int_equal(lstat(path, &st), 0);
        assert_true(S_ISSOCK(st.st_mode));
        assert_int_equal(st.st_mode & 07777, 0660);
        assert_int_equal(st.st_gid, gid);
        assert_true(file.valid);
        assert_int_equal(file.dev, st.st_dev);
        assert_int_equal(file.ino, st.st_ino);
        /* It listens. */
        int c = vhu_socket_connect(path);
        assert_true(c >= 0);
        close(c);

        /* The path now holds another file: never ours to remove. */
        assert_int_equal(unlink(path), 0);
        int reg = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
        assert_true(reg >= 0);
        close(reg);
        assert_int_equal(vhu_socket_unlink_if_same(path, &file), -ESTALE);
        assert_int_equal(lstat(path, &st), 0);
        assert_int_equal(unlink(path), 0);
        assert_int_equal(vhu_socket_unlink_if_same(path, &file), -ENOENT);
        assert_int_equal(vhu_socket_unlink_if_same(path, &(struct vhu_socket_file){ 0 }), -EINVAL);
        close(l);

        /* Still ours: removed.  Without options the mode is left as created. */
        l = vhu_socket_listen_ex(path, NULL, &file);
        assert_true(l >= 0);
        assert_int_equal(vhu_socket_unlink_if_same(path, &file), 0);
        assert_int_equal(lstat(path, &st), -1);
        close(l);
        rmdir(dir);
}

static void peer_credentials_name_the_peer(void **state) {
        (void) state;
        char dir[] = "/tmp/vhostmig-test-XXXXXX";
        assert_non_null(mkdtemp(dir));
        char path[128];
        snprintf(path, sizeof(path), "%s/sock", dir);
        int l = vhu_socket_listen(path);
        assert_true(l >= 0);

        pid_t child = fork();
        assert_true(child >= 0);
        if (child == 0) {
                /* The peer: connect, then wait until the parent hangs up. */
                int fd = vhu_socket_connect(path);
                char b;
                struct pollfd pfd = { .fd = fd, .events = POLLIN };
                if (fd >= 0 && poll(&pfd, 1, 5000) > 0)
                        (void) read(fd, &b, 1);
                _exit(fd >= 0 ? 0 : 1);
        }
        int a = vhu_socket_accept(l, NULL, vhu_deadline_after_ms(5000));
        assert_true(a >= 0);
        uid_t uid = 12345;
        gid_t gid = 12345;
        pid_t pid = 0;
        assert_int_equal(vhu_socket_peer_cred(a, &uid, &gid, &pid), 0);
        assert_int_equal(pid, child);
        assert_int_equal(uid, getuid());
        assert_int_equal(gid, getgid());
        assert_int_equal(vhu_socket_peer_cred(a, NULL, NULL, NULL), 0);
        close(a);
        int status;
        assert_int_equal(waitpid(child, &status, 0), child);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        /* Not a socket: an error, not garbage. */
        int efd = eventfd(0, EFD_CLOEXEC);
        assert_int_equal(vhu_socket_peer_cred(efd, &uid, NULL, NULL), -ENOTSOCK);
        close(efd);
        close(l);
        unlink(path);
        rmdir(dir);
}

#define T(fn)        cmocka_unit_test_setup_teardown(fn, setup, teardown)
#define T_NO_ACK(fn) cmocka_unit_test_setup_teardown(fn, setup_no_ack, teardown)

int main(void) {
        const struct CMUnitTest tests[] = {
                T(negotiation_records_what_was_offered),
                cmocka_unit_test(negotiation_order_and_acks),
                cmocka_unit_test(no_protocol_features_means_no_get_protocol_features),
                T(request_without_its_feature_is_never_sent),
                cmocka_unit_test(rarp_only_with_rarp),
                T(encodes_rarp_mtu_kick_and_mem_table),
                T(bad_memory_tables_are_refused_before_sending),
                T(reply_with_wrong_flags),
                T(reply_with_need_reply_flag),
                T(reply_for_another_request),
                T(reply_oversized),
                T(reply_undersized),
                T(reply_with_huge_size_field),
                T(reply_with_unexpected_fds),
                T(reply_with_too_many_fds),
                T(ack_with_failure_status_keeps_connection),
                T(ack_of_wrong_size),
                T(no_reply_times_out),
                T(peer_closes),
                T(truncated_reply_payload),
                T(get_vring_base_for_another_ring),
                T(get_vring_base_ok),
                T(set_log_base_replies_of_every_known_size),
                T_NO_ACK(without_reply_ack_nothing_waits),
                T(set_features_checks_offer),
                cmocka_unit_test(backend_channel_serves_and_refuses),
                cmocka_unit_test(backend_channel_rejects_garbage),
                T(custom_wait_is_used),
                T(timeout_can_be_changed),
                T(trace_sees_both_directions),
                cmocka_unit_test(transport_reassembles_partial_messages),
                cmocka_unit_test(listen_replaces_only_stale_sockets),
                cmocka_unit_test(flood_with_reply_withheld_fails_at_the_timeout),
                cmocka_unit_test(flood_is_cut_off_and_the_connection_goes_on),
                cmocka_unit_test(half_header_on_channel_fails_at_the_request_timeout),
                cmocka_unit_test(channel_serve_is_bounded),
                cmocka_unit_test(fd_on_every_reply_is_refused),
                cmocka_unit_test(fd_on_every_channel_message_is_refused),
                cmocka_unit_test(connect_to_a_full_backlog_times_out),
                cmocka_unit_test(listen_over_a_full_listener_refuses_and_keeps_its_file),
                cmocka_unit_test(listen_ex_sets_mode_and_group_and_unlinks_only_its_own_file),
                cmocka_unit_test(peer_credentials_name_the_peer),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

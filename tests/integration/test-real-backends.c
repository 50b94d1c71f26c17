/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The front-end against the real back-ends of this distribution: DPDK
 * testpmd (net_vhost) and QEMU's virtiofsd (libvhost-user).  Each test starts
 * its back-end, runs the full protocol a migrating VMM needs, and stops it.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "proto/vhost-user-frontend.h"
#include "proto/vhost-user-table.h"
#include "tests/common/check.h"
#include "tests/common/fd-count.h"
#include "tests/common/real-backends.h"

#define MEM_SIZE  (16u << 20)
#define RING_SIZE 256u
#define PAGE      4096u

/* A guest's memory and the rings in it, enough for a back-end to accept the device. */
struct fake_vm {
        int memfd;
        uint8_t *mem;
        int kick[4], call[4];
        int log_fd;
        uint64_t log_size;
};

static uint64_t ring_gpa(unsigned q) {
        return 0x100000 + (uint64_t) q * 4 * PAGE;
}
static uint64_t desc_gpa(unsigned q) {
        return ring_gpa(q);
}
static uint64_t avail_gpa(unsigned q) {
        return ring_gpa(q) + 16 * RING_SIZE;
}
static uint64_t used_gpa(unsigned q) {
        return ring_gpa(q) + 2 * PAGE;
}

static void vm_init(struct fake_vm *vm, unsigned nqueues) {
        vm->memfd = memfd_create("guest", MFD_CLOEXEC);
        assert_true(vm->memfd >= 0);
        assert_int_equal(ftruncate(vm->memfd, MEM_SIZE), 0);
        vm->mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, vm->memfd, 0);
        assert_true(vm->mem != MAP_FAILED);
        for (unsigned q = 0; q < nqueues; q++) {
                vm->kick[q] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
                vm->call[q] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        }
        /* One bit per 4 KiB page, whole 64-bit words. */
        vm->log_size = ((MEM_SIZE / PAGE + 63) / 64) * 8;
        vm->log_fd = memfd_create("log", MFD_CLOEXEC);
        assert_int_equal(ftruncate(vm->log_fd, (off_t) vm->log_size), 0);
}

static void vm_free(struct fake_vm *vm, unsigned nqueues) {
        for (unsigned q = 0; q < nqueues; q++) {
                close(vm->kick[q]);
                close(vm->call[q]);
        }
        munmap(vm->mem, MEM_SIZE);
        close(vm->memfd);
        close(vm->log_fd);
}

static struct vhu_region vm_region(const struct fake_vm *vm) {
        return (struct vhu_region){
                .fd = vm->memfd,
                .guest_phys_addr = 0,
                .memory_size = MEM_SIZE,
                .userspace_addr = (uint64_t) (uintptr_t) vm->mem,
                .mmap_offset = 0,
        };
}

static struct vhu_vring_addr vring_addr(const struct fake_vm *vm, unsigned q, bool log) {
        uint64_t base = (uint64_t) (uintptr_t) vm->mem;
        return (struct vhu_vring_addr){
                .index = q,
                .flags = log ? VHU_VRING_F_LOG : 0,
                .desc_user_addr = base + desc_gpa(q),
                .avail_user_addr = base + avail_gpa(q),
                .used_user_addr = base + used_gpa(q),
                .log_guest_addr = used_gpa(q),
        };
}

/* NUM, BASE, ADDR, KICK, CALL, ENABLE: the order QEMU uses to start a ring. */
static void start_ring(struct vhu_conn *c, struct fake_vm *vm, unsigned q) {
        CONN_CHECK(c, vhu_set_vring_num(c, q, RING_SIZE));
        CONN_CHECK(c, vhu_set_vring_base(c, q, 0));
        struct vhu_vring_addr a = vring_addr(vm, q, false);
        CONN_CHECK(c, vhu_set_vring_addr(c, &a));
        CONN_CHECK(c, vhu_set_vring_kick(c, q, vm->kick[q]));
        CONN_CHECK(c, vhu_set_vring_call(c, q, vm->call[q]));
        CONN_CHECK(c, vhu_set_vring_enable(c, q, true));
}

/* The guest's memory and rings for nqueues queues, the features, and the memory table. */
static void set_up_memory(struct vhu_conn *c, struct fake_vm *vm, unsigned nqueues, uint64_t features) {
        vm_init(vm, nqueues);
        CONN_CHECK(c, vhu_set_features(c, features));
        struct vhu_region reg = vm_region(vm);
        CONN_CHECK(c, vhu_set_mem_table(c, &reg, 1));
}

static void start_rings(struct vhu_conn *c, struct fake_vm *vm, unsigned nqueues) {
        for (unsigned q = 0; q < nqueues; q++)
                start_ring(c, vm, q);
}

/* SET_LOG_BASE once, LOG_ALL on, every ring's used ring logged. */
static void start_logging(struct vhu_conn *c, struct fake_vm *vm, unsigned nqueues, uint64_t features) {
        CONN_CHECK(c, vhu_set_log_base(c, vm->log_fd, vm->log_size, 0));
        CONN_CHECK(c, vhu_set_features(c, features | VHU_BIT(VHU_VF_LOG_ALL)));
        for (unsigned q = 0; q < nqueues; q++) {
                struct vhu_vring_addr a = vring_addr(vm, q, true);
                CONN_CHECK(c, vhu_set_vring_addr(c, &a));
        }
        CONN_CHECK(c, vhu_barrier(c));
}

static void stop_rings(struct vhu_conn *c, unsigned nqueues) {
        for (unsigned q = 0; q < nqueues; q++) {
                unsigned base = 12345;
                CONN_CHECK(c, vhu_set_vring_enable(c, q, false));
                CONN_CHECK(c, vhu_get_vring_base(c, q, &base));
                /* Nothing was ever posted: the back-end resumes from where we told it to start. */
                assert_int_equal(base, 0);
        }
}

static struct vhu_conn *connect_and_negotiate(const char *socket) {
        struct vhu_conn *c;
        struct vhu_conn_options o = { .timeout_ms = 5000 };
        int r = vhu_conn_connect(socket, &o, &c);
        if (r < 0)
                fail_msg("connect %s: %s", socket, strerror(-r));
        CONN_CHECK(c, vhu_negotiate(c, NULL));
        return c;
}

/* The back-end offers at least `needed`, and the front-end acknowledged all it supports of the offer. */
static void assert_protocol_features(const struct vhu_conn *c, uint64_t needed) {
        uint64_t offered = vhu_conn_protocol_features_offered(c);
        if ((offered & needed) != needed)
                fail_msg("the back-end offers protocol features 0x%" PRIx64 ", these tests need 0x%" PRIx64
                         " (missing 0x%" PRIx64 ")",
                         offered, needed, needed & ~offered);
        uint64_t expected = vhu_protocol_features_consistent(offered & vhu_supported_protocol_features());
        if (vhu_conn_protocol_features(c) != expected)
                fail_msg("negotiated protocol features 0x%" PRIx64 ", expected 0x%" PRIx64 " of the offer 0x%" PRIx64,
                         vhu_conn_protocol_features(c), expected, offered);
}

/* ---- DPDK ---------------------------------------------------------------- */

static void dpdk_full_device_lifecycle(void **state) {
        (void) state;
        assert_true(backend_available(TESTPMD_BIN));
        int fds_before = count_open_fds();
        struct real_backend b;
        assert_int_equal(start_testpmd(&b, 1, 0), 0);

        struct vhu_conn *c = connect_and_negotiate(b.socket);
        /*
         * What these tests need of testpmd (22.11 offers 0x10cbf: these and CRYPTO_SESSION,
         * BACKEND_SEND_FD, HOST_NOTIFIER, STATUS), whatever else a newer DPDK offers; and the
         * front-end acknowledges exactly what it supports of the offer.
         */
        assert_protocol_features(c, VHU_BIT(VHU_PF_MQ) | VHU_BIT(VHU_PF_LOG_SHMFD) | VHU_BIT(VHU_PF_RARP) |
                                            VHU_BIT(VHU_PF_REPLY_ACK) | VHU_BIT(VHU_PF_NET_MTU) |
                                            VHU_BIT(VHU_PF_BACKEND_REQ));
        assert_true(vhu_conn_features(c) & VHU_BIT(VHU_VF_LOG_ALL));
        assert_non_null(vhu_conn_backend_channel(c));

        struct fake_vm vm;
        uint64_t features = VHU_BIT(VHU_VF_VERSION_1);
        set_up_memory(c, &vm, 2, features);
        CONN_CHECK(c, vhu_net_set_mtu(c, 1500));
        start_rings(c, &vm, 2);
        CONN_CHECK(c, vhu_set_status(c, 0xf));
        uint8_t status = 0;
        CONN_CHECK(c, vhu_get_status(c, &status));
        assert_int_equal(status, 0xf);

        /* DPDK answers SET_LOG_BASE with an empty payload. */
        start_logging(c, &vm, 2, features);
        const uint8_t mac[6] = { 0x52, 0x54, 0x00, 0xab, 0xcd, 0xef };
        CONN_CHECK(c, vhu_send_rarp(c, mac));
        /* Logging off again: the device keeps running. */
        CONN_CHECK(c, vhu_set_features(c, features));
        stop_rings(c, 2);
        CONN_CHECK(c, vhu_barrier(c));
        assert_true(vhu_conn_is_connected(c));

        vhu_conn_free(c);
        vm_free(&vm, 2);
        assert_true(b.pid > 0 && !backend_exited(&b, 0)); /* testpmd survived all of it */
        stop_backend(&b);
        assert_int_equal(count_open_fds(), fds_before);
}

static void dpdk_four_queue_pairs(void **state) {
        (void) state;
        int fds_before = count_open_fds();
        struct real_backend b;
        assert_int_equal(start_testpmd(&b, 4, 0), 0);
        struct vhu_conn *c = connect_and_negotiate(b.socket);
        assert_true(vhu_conn_queue_num(c) >= 4);

        struct fake_vm vm;
        /* Four rings (two queue pairs) are enough to see per-queue handling; indices up to 7 are legal. */
        uint64_t features = VHU_BIT(VHU_VF_VERSION_1) | VHU_BIT(VHU_VF_NET_MQ);
        set_up_memory(c, &vm, 4, features);
        start_rings(c, &vm, 4);
        start_logging(c, &vm, 4, features);
        stop_rings(c, 4);
        vhu_conn_free(c);
        vm_free(&vm, 4);
        stop_backend(&b);
        assert_int_equal(count_open_fds(), fds_before);
}

static void dpdk_connects_to_us(void **state) {
        (void) state;
        /* Server mode: testpmd is the client, as OVS dpdkvhostuserclient ports are. */
        int fds_before = count_open_fds();
        struct real_backend b;
        assert_int_equal(start_testpmd(&b, 1, TESTPMD_CLIENT), 0);
        int fd = vhu_socket_accept(b.listen_fd, NULL, vhu_deadline_after_ms(20000));
        if (fd < 0)
                fail_msg("testpmd did not connect: %s", strerror(-fd));
        struct vhu_conn *c;
        assert_int_equal(vhu_conn_new(fd, NULL, &c), 0);
        CONN_CHECK(c, vhu_negotiate(c, NULL));
        assert_true(vhu_conn_has_protocol_feature(c, VHU_PF_LOG_SHMFD));
        CONN_CHECK(c, vhu_barrier(c));
        vhu_conn_free(c);
        stop_backend(&b);
        assert_int_equal(count_open_fds(), fds_before);
}

/* ---- virtiofsd ----------------------------------------------------------- */

static void virtiofsd_full_device_lifecycle(void **state) {
        (void) state;
        assert_true(backend_available(VIRTIOFSD_BIN));
        int fds_before = count_open_fds();
        struct real_backend b;
        assert_int_equal(start_virtiofsd(&b), 0);

        struct vhu_conn *c = connect_and_negotiate(b.socket);
        /* What these tests need of virtiofsd (QEMU 7.2's offers 0x8c2b), and no RARP: it is not a NIC. */
        assert_protocol_features(c, VHU_BIT(VHU_PF_MQ) | VHU_BIT(VHU_PF_LOG_SHMFD) | VHU_BIT(VHU_PF_REPLY_ACK) |
                                            VHU_BIT(VHU_PF_BACKEND_REQ) | VHU_BIT(VHU_PF_CONFIGURE_MEM_SLOTS));
        assert_false(vhu_conn_has_protocol_feature(c, VHU_PF_RARP));
        assert_true(vhu_conn_max_mem_slots(c) > 0);

        struct fake_vm vm;
        uint64_t features = VHU_BIT(VHU_VF_VERSION_1);
        set_up_memory(c, &vm, 2, features);

        /* Hot-plug and unplug a second region with the memory-slot requests. */
        int extra = memfd_create("extra", MFD_CLOEXEC);
        assert_int_equal(ftruncate(extra, 1 << 20), 0);
        void *extra_map = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, extra, 0);
        struct vhu_region hot = {
                .fd = extra,
                .guest_phys_addr = 0x40000000,
                .memory_size = 1 << 20,
                .userspace_addr = (uint64_t) (uintptr_t) extra_map,
        };
        CONN_CHECK(c, vhu_add_mem_reg(c, &hot));
        CONN_CHECK(c, vhu_rem_mem_reg(c, &hot));

        start_rings(c, &vm, 2);
        /* libvhost-user answers SET_LOG_BASE with 8 bytes. */
        start_logging(c, &vm, 2, features);

        /* SEND_RARP would make virtiofsd panic: the library refuses to send it. */
        const uint8_t mac[6] = { 0x52, 0x54, 0x00, 0xab, 0xcd, 0xef };
        assert_int_equal(vhu_send_rarp(c, mac), -ENOTSUP);
        CONN_CHECK(c, vhu_barrier(c));

        stop_rings(c, 2);
        assert_true(vhu_conn_is_connected(c));
        vhu_conn_free(c);
        /* virtiofsd serves one front-end and exits cleanly when it leaves. */
        assert_true(backend_exited(&b, 5000));
        munmap(extra_map, 1 << 20);
        close(extra);
        vm_free(&vm, 2);
        stop_backend(&b);
        assert_int_equal(count_open_fds(), fds_before);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(dpdk_full_device_lifecycle),
                cmocka_unit_test(dpdk_four_queue_pairs),
                cmocka_unit_test(dpdk_connects_to_us),
                cmocka_unit_test(virtiofsd_full_device_lifecycle),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

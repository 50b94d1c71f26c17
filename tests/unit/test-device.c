/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The device and the dirty logging without a back-end: what a device refuses
 * to be configured with, that it removes only its own socket, and that the
 * dirty log handed to back-ends cannot be truncated by them.
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
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "migrate/device.h"
#include "migrate/logging.h"
#include "migrate/vm.h"
#include "tests/common/fd-count.h"

#define MEM_SIZE (1u << 20)

struct fx {
        char dir[64];
        char socket[128];
        struct vhm_vm *vm;
        int kick, call;
        int fds_before;
};

static int setup(void **state) {
        static struct fx fx;
        memset(&fx, 0, sizeof(fx));
        snprintf(fx.dir, sizeof(fx.dir), "/tmp/vhostmig-device-XXXXXX");
        if (!mkdtemp(fx.dir))
                return -1;
        snprintf(fx.socket, sizeof(fx.socket), "%s/sock", fx.dir);
        int fd = memfd_create("device-test", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0 || ftruncate(fd, MEM_SIZE) < 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0 ||
            vhm_vm_new("dev", &fx.vm) < 0 ||
            vhm_vm_add_region(fx.vm, &(struct vhm_region_spec){ fd, 0, MEM_SIZE, 0 }) < 0)
                return -1;
        close(fd);
        fx.kick = eventfd(0, EFD_CLOEXEC);
        fx.call = eventfd(0, EFD_CLOEXEC);
        fx.fds_before = count_open_fds(); /* the VM's and the rings' fds included */
        *state = &fx;
        return 0;
}

static int teardown(void **state) {
        struct fx *fx = *state;
        vhm_vm_free(fx->vm);
        close(fx->kick);
        close(fx->call);
        unlink(fx->socket);
        rmdir(fx->dir);
        return 0;
}

static struct vhm_device *new_device(struct fx *fx, bool server) {
        struct vhm_device_config cfg = { .socket = fx->socket, .server = server, .queue_pairs = 1, .timeout_ms = 50 };
        struct vhm_device *dev;
        assert_int_equal(vhm_device_new(fx->vm, &cfg, &dev), 0);
        return dev;
}

static int set_queue(struct fx *fx, struct vhm_device *dev, uint64_t desc, uint64_t avail, uint64_t used) {
        struct vhm_queue_spec q = {
                .size = 64,
                .desc_gpa = desc,
                .avail_gpa = avail,
                .used_gpa = used,
                .kick_fd = fx->kick,
                .call_fd = fx->call,
        };
        return vhm_device_set_queue(dev, 0, &q);
}

/* Split rings: descriptor table 16-byte aligned, avail 2, used 4 (our index loads rely on it). */
static void rings_must_be_aligned(void **state) {
        struct fx *fx = *state;
        struct vhm_device *dev = new_device(fx, false);
        assert_int_equal(set_queue(fx, dev, 0x1000, 0x2000, 0x3000), 0);
        assert_int_equal(set_queue(fx, dev, 0x1008, 0x2000, 0x3000), -EINVAL);
        printf("  refused: %s\n", vhm_device_error(dev));
        assert_non_null(strstr(vhm_device_error(dev), "queue 0"));
        assert_non_null(strstr(vhm_device_error(dev), "descriptor table at 0x1008"));
        assert_int_equal(set_queue(fx, dev, 0x1000, 0x2001, 0x3000), -EINVAL);
        assert_non_null(strstr(vhm_device_error(dev), "avail ring at 0x2001"));
        assert_int_equal(set_queue(fx, dev, 0x1000, 0x2000, 0x3002), -EINVAL);
        assert_non_null(strstr(vhm_device_error(dev), "used ring at 0x3002"));
        /* The smallest alignments each part allows. */
        assert_int_equal(set_queue(fx, dev, 0x1010, 0x2002, 0x3004), 0);
        vhm_device_free(dev);
        assert_int_equal(count_open_fds(), fx->fds_before);
}

/* Teardown removes the listening socket only while the path is still that socket. */
static void only_our_socket_is_unlinked(void **state) {
        struct fx *fx = *state;
        struct vhm_device *dev = new_device(fx, true);
        assert_int_equal(vhm_device_connect(dev), -ETIMEDOUT); /* nobody came, but we listen */
        struct stat st;
        assert_int_equal(lstat(fx->socket, &st), 0);
        assert_true(S_ISSOCK(st.st_mode));
        /* Someone else's file at the path now (say, a restarted back-end's socket). */
        assert_int_equal(unlink(fx->socket), 0);
        int other = open(fx->socket, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
        assert_true(other >= 0);
        close(other);
        vhm_device_free(dev);
        assert_int_equal(lstat(fx->socket, &st), 0);
        assert_true(S_ISREG(st.st_mode));
        assert_int_equal(unlink(fx->socket), 0);

        /* Still ours: removed. */
        dev = new_device(fx, true);
        assert_int_equal(vhm_device_connect(dev), -ETIMEDOUT);
        vhm_device_free(dev);
        assert_int_equal(lstat(fx->socket, &st), -1);
        assert_int_equal(count_open_fds(), fx->fds_before);
}

/* Server mode creates its socket with the configured mode, so a back-end of another uid can connect. */
static void server_socket_mode(void **state) {
        struct fx *fx = *state;
        struct vhm_device_config cfg = {
                .socket = fx->socket,
                .server = true,
                .queue_pairs = 1,
                .timeout_ms = 50,
                .listen = { .mode = 0666 },
        };
        struct vhm_device *dev;
        assert_int_equal(vhm_device_new(fx->vm, &cfg, &dev), 0);
        assert_int_equal(vhm_device_connect(dev), -ETIMEDOUT);
        struct stat st;
        assert_int_equal(lstat(fx->socket, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0666);
        vhm_device_free(dev);
}

/* The allow-list is the device's own copy; a list without entries is refused. */
static void allowed_uids_are_copied(void **state) {
        struct fx *fx = *state;
        uid_t uids[] = { 1000, 1001 };
        struct vhm_device_config cfg = {
                .socket = fx->socket,
                .queue_pairs = 1,
                .allowed_uids = uids,
                .n_allowed_uids = 2,
        };
        struct vhm_device *dev;
        assert_int_equal(vhm_device_new(fx->vm, &cfg, &dev), 0);
        assert_int_equal(vhm_device_backend_uid(dev), (uid_t) -1);
        uids[0] = uids[1] = 0; /* the caller's array may go */
        vhm_device_free(dev);
        cfg.allowed_uids = NULL;
        assert_int_equal(vhm_device_new(fx->vm, &cfg, &dev), -EINVAL);
}

/*
 * The dirty log a back-end receives is sealed: its ftruncate fails with
 * EPERM (a log that shrank would fault our harvest), and it cannot take
 * the seals off.
 */
static void backend_cannot_truncate_the_log(void **state) {
        struct fx *fx = *state;
        struct vhm_logging *lg;
        assert_int_equal(vhm_logging_new(fx->vm, &lg), 0);
        assert_int_equal(vhm_logging_log_fd(lg), -1);
        assert_int_equal(vhm_logging_start(lg), 0);
        int log_fd = vhm_logging_log_fd(lg);
        assert_true(log_fd >= 0);
        /* What a back-end gets with SET_LOG_BASE is this file. */
        int theirs = fcntl(log_fd, F_DUPFD_CLOEXEC, 3);
        assert_true(theirs >= 0);
        uint64_t size = vhm_logging_log_size(lg);
        assert_int_equal(ftruncate(theirs, 0), -1);
        assert_int_equal(errno, EPERM);
        assert_int_equal(ftruncate(theirs, (off_t) size / 2), -1);
        assert_int_equal(errno, EPERM);
        assert_int_equal(fcntl(theirs, F_ADD_SEALS, F_SEAL_WRITE), -1);
        int seals = fcntl(theirs, F_GET_SEALS);
        assert_true(seals & F_SEAL_SHRINK);
        assert_true(seals & F_SEAL_SEAL);
        struct stat st;
        assert_int_equal(fstat(theirs, &st), 0);
        assert_int_equal((uint64_t) st.st_size, size);
        uint64_t n;
        assert_int_equal(vhm_logging_harvest(lg, &n), 0);
        assert_false(vhm_logging_incomplete(lg));
        close(theirs);
        assert_int_equal(vhm_logging_stop(lg), 0);
        vhm_logging_free(lg);
        assert_int_equal(count_open_fds(), fx->fds_before);
}

int main(void) {
#define TEST(t) cmocka_unit_test_setup_teardown(t, setup, teardown)
        const struct CMUnitTest tests[] = {
                TEST(rings_must_be_aligned),   TEST(only_our_socket_is_unlinked),     TEST(server_socket_mode),
                TEST(allowed_uids_are_copied), TEST(backend_cannot_truncate_the_log),
        };
#undef TEST
        return cmocka_run_group_tests(tests, NULL, NULL);
}

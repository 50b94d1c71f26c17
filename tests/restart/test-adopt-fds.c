/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A restart's adoption through fds alone, as a new vhostmigd process does it
 * with what it finds in the fd store: the back-end connection and our end of
 * its back-end channel wrapped as a negotiated connection
 * (vhu_conn_adopt), the dirty log taken back from its memfd (vhm_log_adopt)
 * and logging going on over it (vhm_logging_adopt).  Against the project's
 * test back-end, which records every request: not one request is sent, the
 * channel is the same socket, the pages logged before the restart are the
 * pages the first harvest after it finds; what cannot be trusted is refused
 * with its reason and leaves no fd behind.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log/dirty-log.h"
#include "migrate/device.h"
#include "migrate/logging.h"
#include "migrate/vm.h"
#include "proto/vhost-user-frontend.h"
#include "tests/backend/test-backend.h"
#include "tests/common/check.h"
#include "tests/common/clock.h"
#include "tests/common/fd-count.h"
#include "tests/common/guest-device.h"
#include "daemon/guest/guest.h"
#include "tests/restart/restart-fixture.h"

/* The previous process's logging and the adopting one's. */
static struct vhm_logging *fx_old_logging, *fx_logging;
#define PAGE 4096u

static int setup(void **state) {
        (void) state;
        return restart_fx_setup("adoptfd");
}

/* What the daemon's fd store would keep ahead (vhm_logging_set_keep_ahead): duplicates, the latest. */
static struct {
        int log_fd, bitmap_fd;
        unsigned calls;
} ahead = { -1, -1, 0 };

static int teardown(void **state) {
        (void) state;
        if (ahead.log_fd >= 0)
                close(ahead.log_fd);
        if (ahead.bitmap_fd >= 0)
                close(ahead.bitmap_fd);
        ahead.log_fd = ahead.bitmap_fd = -1;
        vhm_logging_free(fx_logging);
        vhm_logging_free(fx_old_logging);
        fx_logging = fx_old_logging = NULL;
        restart_fx_teardown();
        return 0;
}

/* The previous process: a device running on the test back-end, logging through a vhm_logging. */
static void previous_process(void) {
        restart_fx_running_device("adoptfd");
        assert_int_equal(vhm_logging_new(fx.vm, &fx_old_logging), 0);
        LOG_CHECK(fx_old_logging, vhm_logging_add_device(fx_old_logging, fx.old));
        LOG_CHECK(fx_old_logging, vhm_logging_start(fx_old_logging));
}

/* A back-end's writes into the log: the pages' bits ORed into the shared memory. */
static void backend_logs(int log_fd, uint64_t size, const uint64_t *pages, unsigned n) {
        uint8_t *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, log_fd, 0);
        assert_true(p != MAP_FAILED);
        for (unsigned i = 0; i < n; i++)
                __atomic_fetch_or(&p[pages[i] / 8], (uint8_t) (1u << (pages[i] % 8)), __ATOMIC_RELAXED);
        munmap(p, size);
}

static ino_t inode(int fd) {
        struct stat st;
        assert_int_equal(fstat(fd, &st), 0);
        return st.st_ino;
}

/* What the previous process leaves in the store, the fds as duplicates (the store keeps its own). */
struct kept {
        struct vhm_device_saved saved;
        struct vhu_conn_negotiated negotiated;
        int conn_fd, log_fd, bitmap_fd;
        uint64_t log_size, bitmap_pages;
        ino_t channel_ino;
};

/* The previous process ends (as after SIGKILL: nothing sent); the store holds what it kept. */
static void previous_process_ends(struct kept *k) {
        DEV_CHECK(fx.old, vhm_device_save(fx.old, &k->saved));
        k->log_size = vhm_logging_log_size(fx_old_logging);
        k->log_fd = fcntl(vhm_logging_log_fd(fx_old_logging), F_DUPFD_CLOEXEC, 3);
        assert_true(k->log_fd >= 0);
        k->bitmap_pages = vhm_bitmap_npages(vhm_logging_bitmap(fx_old_logging));
        k->bitmap_fd = fcntl(vhm_logging_bitmap_fd(fx_old_logging), F_DUPFD_CLOEXEC, 3);
        assert_true(k->bitmap_fd >= 0);
        struct vhu_conn *conn = vhm_device_take_conn(fx.old);
        assert_non_null(conn);
        vhu_conn_get_negotiated(conn, &k->negotiated);
        assert_true(k->negotiated.channel_fd >= 0);
        k->channel_ino = inode(k->negotiated.channel_fd);
        k->negotiated.channel_fd = fcntl(k->negotiated.channel_fd, F_DUPFD_CLOEXEC, 3);
        k->conn_fd = fcntl(vhu_conn_fd(conn), F_DUPFD_CLOEXEC, 3);
        assert_true(k->conn_fd >= 0 && k->negotiated.channel_fd >= 0);
        vhu_conn_free(conn);
        /* As after SIGKILL or a handover: no request, no harvest taking bits out of the log. */
        vhm_logging_free_for_handover(fx_old_logging);
        fx_old_logging = NULL;
        vhm_device_free(fx.old);
        fx.old = NULL;
}

static void restart_adopts_connection_channel_and_log(void **state) {
        (void) state;
        previous_process();
        static const uint64_t pages[] = { 0, 1, 7, 300, 1025, 2047 };
        backend_logs(vhm_logging_log_fd(fx_old_logging), vhm_logging_log_size(fx_old_logging), pages, 2);
        struct kept k;
        previous_process_ends(&k);
        unsigned before = restart_fx_requests_recorded();
        /* The back-end goes on logging while nobody owns the log. */
        backend_logs(k.log_fd, k.log_size, pages + 2, 4);

        struct vhu_conn *conn = NULL;
        char why[256] = "";
        int r = vhu_conn_adopt(k.conn_fd, &k.negotiated, NULL, &conn, why, sizeof(why));
        if (r < 0)
                fail_msg("vhu_conn_adopt: %s", why);
        assert_int_equal(inode(vhu_backend_channel_fd(vhu_conn_backend_channel(conn))), k.channel_ino);
        fx.dev = restart_fx_new_device();
        struct vhm_device_adoption a = { .conn = conn, .listen_fd = -1, .log_fd = k.log_fd, .log_size = k.log_size };
        DEV_CHECK(fx.dev, vhm_device_adopt(fx.dev, &a, &k.saved));
        assert_int_equal(vhm_logging_new(fx.vm, &fx_logging), 0);
        LOG_CHECK(fx_logging, vhm_logging_add_device(fx_logging, fx.dev));
        LOG_CHECK(fx_logging,
                  vhm_logging_adopt(fx_logging, k.log_fd, k.log_size * 8 * PAGE, k.bitmap_fd, k.bitmap_pages, false));
        assert_true(vhm_logging_active(fx_logging));
        assert_int_equal(vhm_logging_log_size(fx_logging), k.log_size);

        uint64_t found = 0;
        LOG_CHECK(fx_logging, vhm_logging_harvest(fx_logging, &found));
        assert_int_equal(found, sizeof(pages) / sizeof(pages[0]));
        for (size_t i = 0; i < sizeof(pages) / sizeof(pages[0]); i++)
                assert_true(vhm_bitmap_test(vhm_logging_bitmap(fx_logging), pages[i]));
        sleep_ms(100);
        assert_int_equal(restart_fx_requests_recorded(), before);

        /* The adopted connection is the live one; logging ends over it. */
        LOG_CHECK(fx_logging, vhm_logging_stop(fx_logging));
        DEV_CHECK(fx.dev, vhm_device_stop(fx.dev));
        assert_true(restart_fx_requests_recorded() > before);
        assert_int_equal(tb_record_count(fx.record, "VIOLATION"), 0);
        vhm_logging_free(fx_logging);
        fx_logging = NULL;
        vhm_device_free(fx.dev);
        fx.dev = NULL;
        assert_tb_exits_cleanly(&fx.pid, 3000);
        vhm_vm_free(fx.vm);
        fx.vm = NULL;
        vhm_guest_free(fx.g);
        fx.g = NULL;
        assert_int_equal(count_open_fds(), fx.fds_before);
}

/* The previous process's device and logging taken over, logging adopted with what it kept. */
static int adopt_all(struct kept *k, int bitmap_fd, uint64_t bitmap_pages, bool lost) {
        struct vhu_conn *conn = NULL;
        assert_int_equal(vhu_conn_adopt(k->conn_fd, &k->negotiated, NULL, &conn, NULL, 0), 0);
        fx.dev = restart_fx_new_device();
        struct vhm_device_adoption a = { .conn = conn, .listen_fd = -1, .log_fd = k->log_fd, .log_size = k->log_size };
        DEV_CHECK(fx.dev, vhm_device_adopt(fx.dev, &a, &k->saved));
        assert_int_equal(vhm_logging_new(fx.vm, &fx_logging), 0);
        LOG_CHECK(fx_logging, vhm_logging_add_device(fx_logging, fx.dev));
        return vhm_logging_adopt(fx_logging, k->log_fd, k->log_size * 8 * PAGE, bitmap_fd, bitmap_pages, lost);
}

/*
 * Pages a harvest took (and no migration sent yet) are in the migration
 * bitmap's memfd: the successor finds them there, the pages sent since not,
 * and the pages logged later in the log; nothing else counts as dirty.
 */
static void restart_after_a_harvest_keeps_its_pages(void **state) {
        (void) state;
        previous_process();
        static const uint64_t harvested[] = { 42, 50 }, later[] = { 43 }, meanwhile[] = { 44, 42 };
        backend_logs(vhm_logging_log_fd(fx_old_logging), vhm_logging_log_size(fx_old_logging), harvested, 2);
        LOG_CHECK(fx_old_logging, vhm_logging_harvest(fx_old_logging, NULL));
        /* A migration sent page 50: it is clean again. */
        assert_int_equal(vhm_bitmap_clear(vhm_logging_bitmap(fx_old_logging), 50), 0);
        backend_logs(vhm_logging_log_fd(fx_old_logging), vhm_logging_log_size(fx_old_logging), later, 1);
        assert_false(vhm_logging_holds_pages(fx_old_logging));
        struct kept k;
        previous_process_ends(&k);
        ino_t bitmap_ino = inode(k.bitmap_fd);
        backend_logs(k.log_fd, k.log_size, meanwhile, 2);
        LOG_CHECK(fx_logging, adopt_all(&k, k.bitmap_fd, k.bitmap_pages, false));
        const struct vhm_bitmap *bm = vhm_logging_bitmap(fx_logging);
        assert_int_equal(inode(vhm_logging_bitmap_fd(fx_logging)), bitmap_ino);
        assert_int_equal(vhm_bitmap_count(bm), 1);
        uint64_t found = 0;
        LOG_CHECK(fx_logging, vhm_logging_harvest(fx_logging, &found));
        assert_false(vhm_logging_incomplete(fx_logging));
        assert_int_equal(found, 2); /* 43 and 44; 42 was dirty already */
        assert_int_equal(vhm_bitmap_count(bm), 3);
        assert_true(vhm_bitmap_test(bm, 42) && vhm_bitmap_test(bm, 43) && vhm_bitmap_test(bm, 44));
        assert_false(vhm_bitmap_test(bm, 50));
        /* Logging off: the pages stay, the memfd goes (nothing to keep for a restart). */
        LOG_CHECK(fx_logging, vhm_logging_stop(fx_logging));
        assert_int_equal(vhm_logging_bitmap_fd(fx_logging), -1);
        assert_int_equal(vhm_bitmap_count(vhm_logging_bitmap(fx_logging)), 3);
}

/* A state from before the bitmap was kept said pages were lost: every page is dirty then. */
static void restart_without_the_bitmap_marks_every_page(void **state) {
        (void) state;
        previous_process();
        static const uint64_t page = 42;
        backend_logs(vhm_logging_log_fd(fx_old_logging), vhm_logging_log_size(fx_old_logging), &page, 1);
        LOG_CHECK(fx_old_logging, vhm_logging_harvest(fx_old_logging, NULL));
        struct kept k;
        previous_process_ends(&k);
        close(k.bitmap_fd);
        LOG_CHECK(fx_logging, adopt_all(&k, -1, 0, true));
        uint64_t found = 0;
        LOG_CHECK(fx_logging, vhm_logging_harvest(fx_logging, &found));
        assert_int_equal(found, vhm_bitmap_npages(vhm_logging_bitmap(fx_logging)));
        assert_true(vhm_bitmap_test(vhm_logging_bitmap(fx_logging), page));
}

/* A kept bitmap that does not fit the log is refused; every fd it was given is closed. */
static void restart_refuses_a_bitmap_that_does_not_fit(void **state) {
        (void) state;
        previous_process();
        struct kept k;
        previous_process_ends(&k);
        /* Of another size than it says: refused before it is mapped. */
        assert_int_equal(adopt_all(&k, k.bitmap_fd, k.bitmap_pages + 64, false), -EMSGSIZE);
        printf("  refused: %s\n", vhm_logging_error(fx_logging));
        assert_non_null(strstr(vhm_logging_error(fx_logging), "migration bitmap"));
        assert_false(vhm_logging_active(fx_logging));
        /* Both fds given were closed (the device keeps its own copy of the log). */
        assert_true(fcntl(k.bitmap_fd, F_GETFD) < 0 && errno == EBADF);
        assert_true(fcntl(k.log_fd, F_GETFD) < 0 && errno == EBADF);
}

static int keep_ahead(void *userdata, int log_fd, int bitmap_fd) {
        (void) userdata;
        if (ahead.log_fd >= 0)
                close(ahead.log_fd);
        if (ahead.bitmap_fd >= 0)
                close(ahead.bitmap_fd);
        ahead.log_fd = fcntl(log_fd, F_DUPFD_CLOEXEC, 3);
        ahead.bitmap_fd = bitmap_fd >= 0 ? fcntl(bitmap_fd, F_DUPFD_CLOEXEC, 3) : -1;
        ahead.calls++;
        return ahead.log_fd >= 0 ? 0 : -errno;
}

/* Guest memory grows by 1 MiB at 16 MiB (pages 4096..4351), past the log. */
static void memory_grows(void) {
        int fd = memfd_create("adoptfd-more", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, 1 << 20), 0);
        assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
        struct vhm_region_spec s = { .fd = fd, .guest_phys_addr = 16u << 20, .size = 1u << 20 };
        assert_int_equal(vhm_vm_add_region(fx.vm, &s), 0);
        close(fd);
}

/*
 * A death between a resize and the capture that would name its result: the
 * state names the log and the bitmap from before, the back-end writes the
 * new log, and the pages the resize harvested out of the old log are only
 * in the bitmap's new memfd.  Both were kept ahead (before SET_LOG_BASE):
 * the successor adopts them beside the state's, and finds every page.
 */
static void restart_after_a_resize_finds_what_was_kept_ahead(void **state) {
        (void) state;
        previous_process();
        vhm_logging_set_keep_ahead(fx_old_logging, keep_ahead, NULL);
        static const uint64_t before[] = { 5, 600 }, after[] = { 7, 4100 };
        backend_logs(vhm_logging_log_fd(fx_old_logging), vhm_logging_log_size(fx_old_logging), before, 2);
        /* The state published last. */
        int state_log = fcntl(vhm_logging_log_fd(fx_old_logging), F_DUPFD_CLOEXEC, 3);
        int state_bitmap = fcntl(vhm_logging_bitmap_fd(fx_old_logging), F_DUPFD_CLOEXEC, 3);
        uint64_t state_log_size = vhm_logging_log_size(fx_old_logging);
        uint64_t state_pages = vhm_bitmap_npages(vhm_logging_bitmap(fx_old_logging));
        assert_true(state_log >= 0 && state_bitmap >= 0);

        memory_grows();
        LOG_CHECK(fx_old_logging, vhm_logging_memory_changed(fx_old_logging));
        /* Kept before the back-end was told: the new log, and the bitmap the resize moved. */
        assert_int_equal(ahead.calls, 1);
        assert_int_equal(inode(ahead.log_fd), inode(vhm_logging_log_fd(fx_old_logging)));
        assert_int_equal(inode(ahead.bitmap_fd), inode(vhm_logging_bitmap_fd(fx_old_logging)));
        assert_true(inode(ahead.bitmap_fd) != inode(state_bitmap));
        uint64_t new_size = vhm_logging_log_size(fx_old_logging);
        assert_true(new_size > state_log_size);

        /* It dies now: no capture named them. */
        struct kept k;
        previous_process_ends(&k);
        close(k.log_fd);
        close(k.bitmap_fd);
        backend_logs(ahead.log_fd, new_size, after, 2);

        /* Two logs kept: the device is not known to be on either (restart.c says so). */
        k.saved.log_acknowledged = false;
        struct vhu_conn *conn = NULL;
        assert_int_equal(vhu_conn_adopt(k.conn_fd, &k.negotiated, NULL, &conn, NULL, 0), 0);
        fx.dev = restart_fx_new_device();
        struct vhm_device_adoption a = { .conn = conn, .listen_fd = -1, .log_fd = ahead.log_fd, .log_size = new_size };
        DEV_CHECK(fx.dev, vhm_device_adopt(fx.dev, &a, &k.saved));
        assert_int_equal(vhm_logging_new(fx.vm, &fx_logging), 0);
        LOG_CHECK(fx_logging, vhm_logging_add_device(fx_logging, fx.dev));
        struct vhm_logging_kept kept = {
                .log_fd = state_log,
                .top_gpa = state_log_size * 8 * PAGE,
                .bitmap_fd = state_bitmap,
                .bitmap_pages = state_pages,
                .other_logs = { ahead.log_fd },
                .nother_logs = 1,
                .other_bitmaps = { ahead.bitmap_fd },
                .nother_bitmaps = 1,
        };
        ahead.log_fd = ahead.bitmap_fd = -1; /* taken */
        LOG_CHECK(fx_logging, vhm_logging_adopt_kept(fx_logging, &kept));
        /* The largest is the current log: no device is ever handed a smaller one. */
        assert_int_equal(vhm_logging_log_size(fx_logging), new_size);
        assert_false(vhm_logging_holds_pages(fx_logging));

        /* What the resize harvested is in the migration bitmap already, what the back-end wrote since in the log. */
        const struct vhm_bitmap *bm = vhm_logging_bitmap(fx_logging);
        assert_int_equal(vhm_bitmap_count(bm), 2);
        assert_true(vhm_bitmap_test(bm, before[0]) && vhm_bitmap_test(bm, before[1]));
        uint64_t found = 0;
        LOG_CHECK(fx_logging, vhm_logging_harvest(fx_logging, &found));
        assert_int_equal(found, 2);
        for (unsigned i = 0; i < 2; i++)
                assert_true(vhm_bitmap_test(bm, before[i]) && vhm_bitmap_test(bm, after[i]));
        assert_int_equal(vhm_bitmap_count(bm), 4);
        /* That harvest handed the device the current log; the older one is let go. */
        assert_true(vhm_device_log_acknowledged(fx.dev, vhm_logging_log_fd(fx_logging)));
        int retired[VHM_LOGGING_MAX_KEPT];
        assert_int_equal(vhm_logging_retired_fds(fx_logging, retired, VHM_LOGGING_MAX_KEPT), 0);
        LOG_CHECK(fx_logging, vhm_logging_harvest(fx_logging, &found));
        assert_int_equal(found, 0);
}

/* A log that is not ours in the way vhm_log_new makes it is refused, its fd closed. */
static void log_adopt_refuses_what_it_cannot_trust(void **state) {
        (void) state;
        struct vhm_log *log = (struct vhm_log *) 1;
        int fd = memfd_create("not-sealed", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, 4096), 0);
        assert_int_equal(vhm_log_adopt(fd, 4096u * 8 * PAGE, &log), -EINVAL);
        assert_null(log);
        assert_int_equal(count_open_fds(), fx.fds_before);

        fd = memfd_create("other-size", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, 4096), 0);
        assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL), 0);
        assert_int_equal(vhm_log_adopt(fd, 8192u * 8 * PAGE, &log), -EMSGSIZE);
        assert_int_equal(count_open_fds(), fx.fds_before);

        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        close(sv[1]);
        assert_int_equal(vhm_log_adopt(sv[0], PAGE, &log), -EINVAL);
        assert_int_equal(count_open_fds(), fx.fds_before);

        fd = memfd_create("sealed", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, 8), 0);
        assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL), 0);
        assert_int_equal(vhm_log_adopt(fd, 64u * PAGE, &log), 0);
        assert_int_equal(vhm_log_fd(log), fd);
        assert_int_equal(vhm_log_size_bytes(log), 8);
        vhm_log_free(log);
        assert_int_equal(count_open_fds(), fx.fds_before);
}

/* A connection record that no negotiation could produce is refused, both fds closed. */
static void conn_adopt_refuses_what_it_cannot_trust(void **state) {
        (void) state;
        struct {
                struct vhu_conn_negotiated n;
                bool channel;
                const char *why;
        } cases[] = {
                { { .features = 1, .acked_features = 3, .queue_num = 1, .channel_fd = -1 }, false, "were not offered" },
                { { .queue_num = 1, .protocol_features = 1, .protocol_features_offered = 1, .channel_fd = -1 },
                  false,
                  "without PROTOCOL_FEATURES" },
                { { .features = VHU_BIT(VHU_VF_PROTOCOL_FEATURES), .queue_num = 2, .channel_fd = -1 },
                  false,
                  "without MQ" },
                { { .features = VHU_BIT(VHU_VF_PROTOCOL_FEATURES), .queue_num = 1 }, true, "without BACKEND_REQ" },
                { { .features = VHU_BIT(VHU_VF_PROTOCOL_FEATURES),
                    .protocol_features = VHU_BIT(VHU_PF_BACKEND_REQ),
                    .protocol_features_offered = VHU_BIT(VHU_PF_BACKEND_REQ),
                    .queue_num = 1,
                    .channel_fd = -1 },
                  false,
                  "missing with BACKEND_REQ" },
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                int sv[2], ch[2] = { -1, -1 };
                assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
                if (cases[i].channel)
                        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ch), 0);
                cases[i].n.channel_fd = ch[0];
                struct vhu_conn *c = NULL;
                char why[256] = "";
                assert_int_equal(vhu_conn_adopt(sv[0], &cases[i].n, NULL, &c, why, sizeof(why)), -EINVAL);
                printf("  refused: %s\n", why);
                assert_non_null(strstr(why, cases[i].why));
                /* The peer sees the end of its connection, not a half-used one. */
                char b;
                assert_int_equal(read(sv[1], &b, 1), 0);
                close(sv[1]);
                if (ch[1] >= 0)
                        close(ch[1]);
                assert_int_equal(count_open_fds(), fx.fds_before);
        }
        /* Not a socket at all. */
        int p[2];
        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        close(p[1]);
        struct vhu_conn_negotiated n = { .queue_num = 1, .channel_fd = -1 };
        struct vhu_conn *c = NULL;
        char why[256] = "";
        assert_int_equal(vhu_conn_adopt(p[0], &n, NULL, &c, why, sizeof(why)), -ENOTSOCK);
        assert_non_null(strstr(why, "not a Unix stream socket"));
        assert_int_equal(count_open_fds(), fx.fds_before);
}

/* Logging goes on only over the log the adopted devices were acknowledging. */
static void logging_adopt_refuses_a_log_the_device_was_not_on(void **state) {
        (void) state;
        previous_process();
        struct kept k;
        previous_process_ends(&k);
        struct vhu_conn *conn = NULL;
        assert_int_equal(vhu_conn_adopt(k.conn_fd, &k.negotiated, NULL, &conn, NULL, 0), 0);
        fx.dev = restart_fx_new_device();
        struct vhm_device_adoption a = { .conn = conn, .listen_fd = -1, .log_fd = k.log_fd, .log_size = k.log_size };
        DEV_CHECK(fx.dev, vhm_device_adopt(fx.dev, &a, &k.saved));
        close(k.log_fd);
        struct vhm_log *other;
        assert_int_equal(vhm_log_new(k.log_size * 8 * PAGE, &other), 0);
        int other_fd = fcntl(vhm_log_fd(other), F_DUPFD_CLOEXEC, 3);
        vhm_log_free(other);
        assert_int_equal(vhm_logging_new(fx.vm, &fx_logging), 0);
        LOG_CHECK(fx_logging, vhm_logging_add_device(fx_logging, fx.dev));
        unsigned before = restart_fx_requests_recorded();
        assert_int_equal(
                vhm_logging_adopt(fx_logging, other_fd, k.log_size * 8 * PAGE, k.bitmap_fd, k.bitmap_pages, false),
                -EINVAL);
        printf("  refused: %s\n", vhm_logging_error(fx_logging));
        assert_non_null(strstr(vhm_logging_error(fx_logging), "was not logging into the dirty log taken back"));
        assert_false(vhm_logging_active(fx_logging));
        assert_int_equal(restart_fx_requests_recorded(), before);
        vhm_logging_free(fx_logging);
        fx_logging = NULL;
        vhm_device_free(fx.dev);
        fx.dev = NULL;
        assert_tb_exits_cleanly(&fx.pid, 3000);
        vhm_vm_free(fx.vm);
        fx.vm = NULL;
        vhm_guest_free(fx.g);
        fx.g = NULL;
        assert_int_equal(count_open_fds(), fx.fds_before);
}

#define TEST(t) cmocka_unit_test_setup_teardown(t, setup, teardown)

int main(void) {
        const struct CMUnitTest tests[] = {
                TEST(restart_adopts_connection_channel_and_log),
                TEST(restart_after_a_harvest_keeps_its_pages),
                TEST(restart_without_the_bitmap_marks_every_page),
                TEST(restart_refuses_a_bitmap_that_does_not_fit),
                TEST(restart_after_a_resize_finds_what_was_kept_ahead),
                TEST(log_adopt_refuses_what_it_cannot_trust),
                TEST(conn_adopt_refuses_what_it_cannot_trust),
                TEST(logging_adopt_refuses_a_log_the_device_was_not_on),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

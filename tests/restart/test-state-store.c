/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The state store (daemon/vhostmigd/state-store.h) against the fd store of
 * tests/restart/fdstore.h playing systemd: fds kept under their names, the
 * state replaced on each publish, and a restart's verification: the same
 * body and every fd back, or a refusal naming the fault (corruption, another
 * version, a missing fd, an fd of the wrong kind, an unsealed state) with
 * every fd closed and removed from the store.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "daemon/vhostmigd/state-store.h"
#include "tests/common/check.h"
#include "tests/common/fd-count.h"
#include "tests/restart/fdstore.h"

struct fx {
        char dir[64], path[128];
        struct fdstore store;
        struct state_store *s;
        int fds_before;
        char why[512];
};

static struct fx fx;

static int setup(void **state) {
        (void) state;
        memset(&fx, 0, sizeof(fx));
        fx.fds_before = count_open_fds();
        snprintf(fx.dir, sizeof(fx.dir), "/tmp/vhostmig-store-XXXXXX");
        if (!mkdtemp(fx.dir))
                return -1;
        snprintf(fx.path, sizeof(fx.path), "%s/notify", fx.dir);
        if (fdstore_open(&fx.store, fx.path) < 0)
                return -1;
        setenv("NOTIFY_SOCKET", fx.path, 1);
        setenv("FDSTORE", "1024", 1);
        return state_store_new(&fx.s);
}

static int teardown(void **state) {
        (void) state;
        state_store_free(fx.s);
        fdstore_close(&fx.store);
        unsetenv("NOTIFY_SOCKET");
        unsetenv("FDSTORE");
        rmdir(fx.dir);
        return 0;
}

static int sealed_memfd(size_t size) {
        int fd = memfd_create("guest", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, (off_t) size), 0);
        assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
        return fd;
}

/* A VM's worth of fds kept (guest memory, a kick eventfd, a back-end connection), then the state. */
static json_object *save_vm(void) {
        int mem = sealed_memfd(1 << 20), kick = eventfd(0, EFD_CLOEXEC), sp[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
        assert_int_equal(state_store_keep_fd(fx.s, "vm.a.mem0", mem), 0);
        assert_int_equal(state_store_keep_fd(fx.s, "vm.a.dev0.q0.kick", kick), 0);
        assert_int_equal(state_store_keep_fd(fx.s, "vm.a.dev0.conn", sp[0]), 0);
        close(mem);
        close(kick);
        close(sp[0]);
        close(sp[1]);
        json_object *body = json_object_new_object(), *fds = json_object_new_object();
        json_object_object_add(fds, "vm.a.mem0", json_object_new_string(STATE_STORE_KIND_MEMFD));
        json_object_object_add(fds, "vm.a.dev0.q0.kick", json_object_new_string(STATE_STORE_KIND_EVENTFD));
        json_object_object_add(fds, "vm.a.dev0.conn", json_object_new_string(STATE_STORE_KIND_UNIX));
        json_object_object_add(body, "fds", fds);
        json_object_object_add(body, "vms", json_object_new_string("a"));
        /* Twice: the second replaces the first. */
        assert_int_equal(state_store_publish(fx.s, body), 0);
        assert_int_equal(state_store_publish(fx.s, body), 0);
        while (fdstore_receive(&fx.store, 200) > 0)
                ;
        return body;
}

/* What a restart is handed: duplicates of everything kept, with their names. */
static size_t handed(int *fds, char **names) {
        for (size_t i = 0; i < fx.store.n; i++) {
                fds[i] = fcntl(fx.store.fds[i], F_DUPFD_CLOEXEC, 3);
                names[i] = fx.store.names[i];
        }
        return fx.store.n;
}

static void round_trip(void **state) {
        (void) state;
        json_object *body = save_vm();
        assert_int_equal(fx.store.n, 4); /* three fds and one state */
        assert_int_equal(fdstore_count(&fx.store, STATE_STORE_SLOT_A) + fdstore_count(&fx.store, STATE_STORE_SLOT_B),
                         1);

        int fds[8];
        char *names[8];
        size_t n = handed(fds, names);
        struct state_store *s2;
        assert_int_equal(state_store_new(&s2), 0);
        struct state_restored *r;
        assert_int_equal(state_store_restore_fds(s2, fds, names, n, &r, fx.why, sizeof(fx.why)), 0);
        assert_non_null(r);
        assert_true(json_object_equal(state_restored_body(r), body));
        assert_int_equal(state_restored_generation(r), 2);
        int mem = state_restored_take_fd(r, "vm.a.mem0");
        assert_true(mem >= 0);
        assert_true(fcntl(mem, F_GET_SEALS) & F_SEAL_SHRINK);
        int kick = state_restored_take_fd(r, "vm.a.dev0.q0.kick");
        assert_true(kick >= 0);
        assert_int_equal(state_restored_take_fd(r, "vm.a.dev0.q0.kick"), -ENOENT);
        /* The connection is not taken: freeing the restored state removes it from the store. */
        state_restored_free(s2, r);
        close(mem);
        close(kick);
        fdstore_receive(&fx.store, 200);
        assert_int_equal(fdstore_count(&fx.store, "vm.a.dev0.conn"), 0);
        assert_int_equal(fdstore_count(&fx.store, "vm.a.mem0"), 1);
        /* The next state goes under the other slot and the restored one goes. */
        assert_int_equal(state_store_publish(s2, body), 0);
        fdstore_receive(&fx.store, 200);
        assert_int_equal(fdstore_count(&fx.store, STATE_STORE_SLOT_A) + fdstore_count(&fx.store, STATE_STORE_SLOT_B),
                         1);
        state_store_free(s2);
        json_object_put(body);
}

/*
 * Fds kept ahead of the state (a new log, a moved bitmap) are found by their
 * prefix and a number only: not another kind of the VM's, not another VM's
 * whose name starts the same, not one taken already.
 */
static void numbered_fds_found_by_prefix(void **state) {
        (void) state;
        static const char *const kept[] = { "vm.a.log.7",      "vm.a.log.mem.0.8", "vm.a.log.9x",
                                            "vm.a.log.log.10", "vm.a.dirty.11",    "vm.a.log.12" };
        json_object *body = save_vm();
        for (size_t i = 0; i < sizeof(kept) / sizeof(kept[0]); i++) {
                int fd = sealed_memfd(4096);
                assert_int_equal(state_store_keep_fd(fx.s, kept[i], fd), 0);
                close(fd);
        }
        while (fdstore_receive(&fx.store, 200) > 0)
                ;
        int fds[16];
        char *names[16], name[STATE_STORE_NAME_MAX + 1];
        size_t n = handed(fds, names);
        struct state_store *s2;
        struct state_restored *r;
        assert_int_equal(state_store_new(&s2), 0);
        assert_int_equal(state_store_restore_fds(s2, fds, names, n, &r, fx.why, sizeof(fx.why)), 0);
        int a = state_restored_take_numbered(r, "vm.a.log.", name, sizeof(name));
        assert_true(a >= 0);
        assert_string_equal(name, "vm.a.log.7");
        int b = state_restored_take_numbered(r, "vm.a.log.", name, sizeof(name));
        assert_true(b >= 0);
        assert_string_equal(name, "vm.a.log.12");
        assert_int_equal(state_restored_take_numbered(r, "vm.a.log.", name, sizeof(name)), -ENOENT);
        int c = state_restored_take_numbered(r, "vm.a.dirty.", name, sizeof(name));
        assert_true(c >= 0);
        assert_string_equal(name, "vm.a.dirty.11");
        assert_int_equal(state_restored_take_numbered(r, "vm.a.dirty.", name, sizeof(name)), -ENOENT);
        /* The others are not taken: they leave the store with the restored state. */
        state_restored_free(s2, r);
        fdstore_receive(&fx.store, 200);
        assert_int_equal(fdstore_count(&fx.store, "vm.a.log.mem.0.8"), 0);
        assert_int_equal(fdstore_count(&fx.store, "vm.a.log.9x"), 0);
        assert_int_equal(fdstore_count(&fx.store, "vm.a.log.log.10"), 0);
        assert_int_equal(fdstore_count(&fx.store, "vm.a.log.7"), 1);
        close(a);
        close(b);
        close(c);
        state_store_free(s2);
        json_object_put(body);
}

/* The stored state's text with `from` replaced by `to`, in a memfd sealed as the real one is. */
static int altered_state(const char *from, const char *to, unsigned seals) {
        int st = fdstore_fd(&fx.store, STATE_STORE_SLOT_A);
        if (st < 0)
                st = fdstore_fd(&fx.store, STATE_STORE_SLOT_B);
        assert_true(st >= 0);
        char text[8192];
        ssize_t len = pread(st, text, sizeof(text) - 1, 0);
        assert_true(len > 0);
        text[len] = '\0';
        char *at = strstr(text, from);
        assert_non_null(at);
        char out[8192];
        snprintf(out, sizeof(out), "%.*s%s%s", (int) (at - text), text, to, at + strlen(from));
        int fd = memfd_create("state", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        assert_int_equal(write(fd, out, strlen(out)), (ssize_t) strlen(out));
        assert_int_equal(fcntl(fd, F_ADD_SEALS, seals), 0);
        return fd;
}

/* A restart handed everything in the store, the state replaced by `state` (or the fd `name` by `other`). */
static void refused(int state, const char *name, int other, int err, const char *why) {
        int fds[8];
        char *names[8];
        size_t n = handed(fds, names);
        for (size_t i = 0; i < n; i++) {
                bool slot = strcmp(names[i], STATE_STORE_SLOT_A) == 0 || strcmp(names[i], STATE_STORE_SLOT_B) == 0;
                int with = slot && state >= 0 ? state : name && strcmp(names[i], name) == 0 ? other : -2;
                if (with == -2)
                        continue;
                close(fds[i]);
                fds[i] = with;
        }
        struct state_store *s2;
        assert_int_equal(state_store_new(&s2), 0);
        struct state_restored *r = (void *) 1;
        assert_int_equal(state_store_restore_fds(s2, fds, names, n, &r, fx.why, sizeof(fx.why)), err);
        printf("  refused: %s\n", fx.why);
        assert_null(r);
        assert_non_null(strstr(fx.why, why));
        /* Every fd handed over closed, every name removed from the store. */
        state_store_free(s2);
        fdstore_receive(&fx.store, 200);
        assert_int_equal(fx.store.n, 0);
        fdstore_close(&fx.store);
        assert_int_equal(count_open_fds(), fx.fds_before);
}

static void corrupt_state_refused(void **state) {
        (void) state;
        json_object_put(save_vm());
        refused(altered_state("vms", "vmz", F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE), NULL, -1,
                -EBADMSG, "checksum is wrong");
}

static void not_json_refused(void **state) {
        (void) state;
        json_object_put(save_vm());
        refused(altered_state("{", "[", F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE), NULL, -1, -EBADMSG,
                "not JSON");
}

static void other_version_refused(void **state) {
        (void) state;
        json_object_put(save_vm());
        char ours[32], other[32], said[32];
        snprintf(ours, sizeof(ours), "\"version\":%d", STATE_STORE_VERSION);
        snprintf(other, sizeof(other), "\"version\":%d", STATE_STORE_VERSION + 1);
        snprintf(said, sizeof(said), "version %d", STATE_STORE_VERSION + 1);
        refused(altered_state(ours, other, F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE), NULL, -1, -EPROTO,
                said);
}

static void unsealed_state_refused(void **state) {
        (void) state;
        json_object_put(save_vm());
        refused(altered_state("vms", "vms", F_SEAL_SHRINK), NULL, -1, -EINVAL, "not sealed");
}

static void missing_fd_refused(void **state) {
        (void) state;
        json_object_put(save_vm());
        /* Lost from the store (as when it was never stored): a restart is not handed it. */
        assert_int_equal(state_store_forget_fd(fx.s, "vm.a.dev0.conn"), 0);
        fdstore_receive(&fx.store, 200);
        assert_int_equal(fdstore_count(&fx.store, "vm.a.dev0.conn"), 0);
        refused(-1, NULL, -1, -EBADF, "\"vm.a.dev0.conn\" (unix-stream) is missing");
}

/* An fd the state can do without ("optional_fds"): its absence is no reason to refuse, its kind still is. */
static void optional_fd_may_be_missing(void **state) {
        (void) state;
        json_object *body = save_vm();
        json_object *ofds = json_object_new_object();
        json_object_object_add(ofds, "vm.a.dev0.channel", json_object_new_string(STATE_STORE_KIND_UNIX));
        json_object_object_add(ofds, "vm.a.dev0.q0.kick", json_object_new_string(STATE_STORE_KIND_UNIX));
        json_object_object_add(body, "optional_fds", ofds);
        assert_int_equal(state_store_publish(fx.s, body), 0);
        while (fdstore_receive(&fx.store, 200) > 0)
                ;
        /* The kick eventfd named as a socket: refused, whether optional or not. */
        int fds[8];
        char *names[8];
        size_t n = handed(fds, names);
        struct state_store *s2;
        assert_int_equal(state_store_new(&s2), 0);
        struct state_restored *r = (void *) 1;
        assert_int_equal(state_store_restore_fds(s2, fds, names, n, &r, fx.why, sizeof(fx.why)), -EBADF);
        assert_non_null(strstr(fx.why, "\"vm.a.dev0.q0.kick\" (unix-stream) is not a Unix stream socket"));
        state_store_free(s2);
        fdstore_receive(&fx.store, 200);
        assert_int_equal(fx.store.n, 0);
        json_object_put(body);

        /* Only the channel, which was never stored: the state is trusted. */
        body = save_vm();
        ofds = json_object_new_object();
        json_object_object_add(ofds, "vm.a.dev0.channel", json_object_new_string(STATE_STORE_KIND_UNIX));
        json_object_object_add(body, "optional_fds", ofds);
        assert_int_equal(state_store_publish(fx.s, body), 0);
        while (fdstore_receive(&fx.store, 200) > 0)
                ;
        n = handed(fds, names);
        assert_int_equal(state_store_new(&s2), 0);
        assert_int_equal(state_store_restore_fds(s2, fds, names, n, &r, fx.why, sizeof(fx.why)), 0);
        assert_non_null(r);
        assert_int_equal(state_restored_take_fd(r, "vm.a.dev0.channel"), -ENOENT);
        state_restored_free(s2, r);
        state_store_free(s2);
        json_object_put(body);
}

static void wrong_kind_refused(void **state) {
        (void) state;
        json_object_put(save_vm());
        int p[2];
        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        close(p[1]);
        refused(-1, "vm.a.dev0.q0.kick", p[0], -EBADF, "is not an eventfd");
}

static void unsealed_memory_refused(void **state) {
        (void) state;
        json_object_put(save_vm());
        int fd = memfd_create("guest", MFD_CLOEXEC);
        refused(-1, "vm.a.mem0", fd, -EBADF, "is a memfd not sealed against shrinking");
}

static void nothing_stored_is_a_first_start(void **state) {
        (void) state;
        struct state_restored *r = (void *) 1;
        assert_int_equal(state_store_restore(fx.s, &r, fx.why, sizeof(fx.why)), 0);
        assert_null(r);
}

static void names(void **state) {
        (void) state;
        char buf[300];
        assert_int_equal(state_store_fd_name(buf, sizeof(buf), "vm.%s.dev%u.q%u.kick", "web-1", 0, 3), 0);
        assert_string_equal(buf, "vm.web-1.dev0.q3.kick");
        assert_int_equal(state_store_fd_name(buf, sizeof(buf), "vm.%s", "a:b"), -EINVAL);
        assert_int_equal(state_store_fd_name(buf, sizeof(buf), "vm.%s", "a b"), -EINVAL);
        assert_int_equal(state_store_fd_name(buf, sizeof(buf), "vm.%s", "a\nFDSTOREREMOVE=1"), -EINVAL);
        assert_int_equal(state_store_fd_name(buf, sizeof(buf), "%0256d", 1), -ENAMETOOLONG);
        assert_int_equal(state_store_keep_fd(fx.s, "a:b", 0), -EINVAL);
}

static void disabled_without_notify_socket(void **state) {
        (void) state;
        /* A NOTIFY_SOCKET without $FDSTORE: a manager that keeps no fds. */
        struct state_store *s2;
        unsetenv("FDSTORE");
        assert_int_equal(state_store_new(&s2), 0);
        assert_false(state_store_enabled(s2));
        state_store_free(s2);
        setenv("FDSTORE", "1024", 1);
        unsetenv("NOTIFY_SOCKET");
        assert_int_equal(state_store_new(&s2), 0);
        assert_false(state_store_enabled(s2));
        json_object *body = json_object_new_object();
        assert_int_equal(state_store_publish(s2, body), 0);
        assert_int_equal(state_store_keep_fd(s2, "x", 0), 0);
        assert_int_equal(fdstore_receive(&fx.store, 50), 0);
        assert_int_equal(fx.store.messages, 0);
        json_object_put(body);
        state_store_free(s2);
}

#define TEST(t) cmocka_unit_test_setup_teardown(t, setup, teardown)

int main(void) {
        const struct CMUnitTest tests[] = {
                TEST(numbered_fds_found_by_prefix),
                TEST(round_trip),
                TEST(corrupt_state_refused),
                TEST(not_json_refused),
                TEST(other_version_refused),
                TEST(unsealed_state_refused),
                TEST(missing_fd_refused),
                TEST(wrong_kind_refused),
                TEST(unsealed_memory_refused),
                TEST(nothing_stored_is_a_first_start),
                TEST(names),
                TEST(disabled_without_notify_socket),
                TEST(optional_fd_may_be_missing),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Restarts through the fd store protocol, end to end: this test is the
 * service manager (tests/restart/fdstore.h: a NOTIFY_SOCKET keeping FDSTORE
 * fds by name, LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID on each start) and
 * restarts tests/restart/restart-child.c, which keeps an eventfd and a memfd
 * through the state store, 10 times, alternately by SIGKILL and by SIGTERM:
 * each run finds both and the state, counts itself once (neither lost nor
 * counted twice) and the store holds each name once and one state.  Then a
 * corrupt state: refused with its line, the child exits 3, and the store is
 * emptied (FDSTOREREMOVE for every name).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon/vhostmigd/state-store.h"
#include "tests/common/check.h"
#include "tests/common/clock.h"
#include "tests/common/fd-count.h"
#include "tests/restart/fdstore.h"

#define RESTARTS 10

struct fx {
        char dir[64], notify[128], err[128];
        struct fdstore store;
        pid_t pid;
        int fds_before;
};

static struct fx fx;

static int setup(void **state) {
        (void) state;
        memset(&fx, 0, sizeof(fx));
        fx.pid = -1;
        fx.fds_before = count_open_fds();
        snprintf(fx.dir, sizeof(fx.dir), "/tmp/vhostmig-restart-XXXXXX");
        if (!mkdtemp(fx.dir))
                return -1;
        snprintf(fx.notify, sizeof(fx.notify), "%s/notify", fx.dir);
        snprintf(fx.err, sizeof(fx.err), "%s/stderr", fx.dir);
        return fdstore_open(&fx.store, fx.notify);
}

static int teardown(void **state) {
        (void) state;
        if (fx.pid > 0) {
                kill(fx.pid, SIGKILL);
                waitpid(fx.pid, NULL, 0);
        }
        fdstore_close(&fx.store);
        unlink(fx.err);
        rmdir(fx.dir);
        return 0;
}

/* The child started as a service manager starts it: the store's fds as 3.., stderr to a file. */
static void start_child(void) {
        const char *path = getenv("RESTART_CHILD");
        assert_non_null(path);
        fx.pid = fork();
        assert_true(fx.pid >= 0);
        if (fx.pid == 0) {
                int err = open(fx.err, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
                if (err < 0 || dup2(err, 2) < 0 || fdstore_pass(&fx.store) < 0)
                        _exit(127);
                execl(path, path, (char *) NULL);
                _exit(127);
        }
}

static void await_ready(unsigned n) {
        uint64_t t0 = now_ms();
        while (fx.store.ready < n && now_ms() - t0 < 5000)
                fdstore_receive(&fx.store, 100);
        assert_int_equal(fx.store.ready, n);
        /* Whatever it sent right after READY=1. */
        fdstore_receive(&fx.store, 50);
}

/* An eventfd's counter without reading it (which would reset it). */
static uint64_t eventfd_count(int fd) {
        char path[64], line[128];
        snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
        FILE *f = fopen(path, "re");
        assert_non_null(f);
        uint64_t v = UINT64_MAX;
        while (fgets(line, sizeof(line), f))
                if (sscanf(line, "eventfd-count: %" SCNx64, &v) == 1)
                        break;
        fclose(f);
        return v;
}

static void assert_counted(uint64_t runs) {
        assert_int_equal(fdstore_count(&fx.store, "counter"), 1);
        assert_int_equal(fdstore_count(&fx.store, "page"), 1);
        assert_int_equal(fdstore_count(&fx.store, STATE_STORE_SLOT_A) + fdstore_count(&fx.store, STATE_STORE_SLOT_B),
                         1);
        assert_int_equal(fx.store.n, 3);
        assert_int_equal(eventfd_count(fdstore_fd(&fx.store, "counter")), runs);
        uint64_t page = 0;
        assert_int_equal(pread(fdstore_fd(&fx.store, "page"), &page, sizeof(page), 0), sizeof(page));
        assert_int_equal(page, runs);
}

static int stop_child(int sig) {
        assert_int_equal(kill(fx.pid, sig), 0);
        int status;
        assert_int_equal(waitpid(fx.pid, &status, 0), fx.pid);
        fx.pid = -1;
        return status;
}

static void ten_restarts_by_sigkill_and_sigterm(void **state) {
        (void) state;
        for (unsigned i = 1; i <= RESTARTS; i++) {
                start_child();
                await_ready(i);
                assert_counted(i);
                /* Odd runs crash (SIGKILL), even runs are replaced (SIGTERM, as by an upgrade). */
                int status = stop_child(i % 2 ? SIGKILL : SIGTERM);
                if (i % 2)
                        assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
                else
                        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
                fdstore_receive(&fx.store, 20);
        }
        assert_counted(RESTARTS);
        printf("  %u restarts, each run counted once; %u messages, %u fds stored, %u removed\n", RESTARTS,
               fx.store.messages, fx.store.stored, fx.store.removed);
        fdstore_close(&fx.store);
        assert_int_equal(count_open_fds(), fx.fds_before);
}

static bool stderr_contains(const char *needle) {
        char buf[4096] = "";
        int fd = open(fx.err, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return false;
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        buf[n > 0 ? n : 0] = '\0';
        printf("  child's stderr: %s", buf);
        return strstr(buf, needle) != NULL;
}

static void corrupt_state_is_refused_and_the_store_emptied(void **state) {
        (void) state;
        start_child();
        await_ready(1);
        stop_child(SIGKILL);
        /* The state replaced by a sealed memfd holding something else. */
        for (size_t i = 0; i < fx.store.n; i++) {
                if (strncmp(fx.store.names[i], "state.", 6) != 0)
                        continue;
                int fd = memfd_create("bad", MFD_CLOEXEC | MFD_ALLOW_SEALING);
                assert_int_equal(write(fd, "{\"format\":\"nope\"}", 17), 17);
                assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE), 0);
                close(fx.store.fds[i]);
                fx.store.fds[i] = fd;
        }
        start_child();
        int status;
        assert_int_equal(waitpid(fx.pid, &status, 0), fx.pid);
        fx.pid = -1;
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 3);
        assert_true(stderr_contains("the stored state is refused: the state is not a vhostmigd-state envelope"));
        fdstore_receive(&fx.store, 200);
        assert_int_equal(fx.store.n, 0);
}

#define TEST(t) cmocka_unit_test_setup_teardown(t, setup, teardown)

int main(void) {
        const struct CMUnitTest tests[] = {
                TEST(ten_restarts_by_sigkill_and_sigterm),
                TEST(corrupt_state_is_refused_and_the_store_emptied),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

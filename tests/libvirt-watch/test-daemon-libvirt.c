/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vhostmigd with "libvirt.uri" on a real libvirtd (libvirt's test driver)
 * and a private bus: it connects, logs the lifecycle events virsh causes
 * with the domain's name and UUID, keeps answering D-Bus while libvirtd is
 * killed, reconnects when libvirtd is back and hears events again, and
 * stops promptly.  Processes are started and stopped by pid.
 *
 * Environment (set by meson): VHOSTMIGD, START_BUS.  Skipped, saying so,
 * without libvirtd or virsh.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <libvirt/libvirt.h>

#include "daemon/common/bus-api.h"
#include "tests/common/private-bus.h"
#include "tests/libvirt-watch/libvirtd-fixture.h"

struct env {
        struct libvirtd_fixture libvirtd;
        struct private_bus bus;
        sd_bus *client;
        pid_t daemon;
        char config[300], log[300];
};

static uint64_t now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000u + (uint64_t) ts.tv_nsec / 1000000u;
}

static void sleep_ms(unsigned ms) {
        struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long) (ms % 1000) * 1000000L };
        nanosleep(&ts, NULL);
}

static char *read_log(const struct env *e) {
        FILE *f = fopen(e->log, "re");
        if (!f)
                return NULL;
        char *text = calloc(1, 1 << 20);
        if (text)
                (void) !fread(text, 1, (1 << 20) - 1, f);
        fclose(f);
        return text;
}

/* Waits for a line containing every needle (NULL-terminated) in the daemon's log; fails with the log. */
static void wait_log(const struct env *e, unsigned timeout_ms, ...) {
        uint64_t end = now_ms() + timeout_ms;
        for (;;) {
                char *text = read_log(e);
                for (char *line = text ? strtok(text, "\n") : NULL; line; line = strtok(NULL, "\n")) {
                        va_list ap;
                        va_start(ap, timeout_ms);
                        bool all = true;
                        for (const char *n; (n = va_arg(ap, const char *));)
                                all = all && strstr(line, n);
                        va_end(ap);
                        if (all) {
                                free(text);
                                return;
                        }
                }
                if (now_ms() >= end) {
                        va_list ap;
                        va_start(ap, timeout_ms);
                        const char *first = va_arg(ap, const char *);
                        va_end(ap);
                        fail_msg("no log line with \"%s\"... within %u ms; the log:\n%s", first, timeout_ms,
                                 text ? text : "(none)");
                }
                free(text);
                sleep_ms(20);
        }
}

static int write_config(struct env *e) {
        FILE *f = fopen(e->config, "we");
        if (!f)
                return -errno;
        fprintf(f,
                "{\"log_level\": \"debug\", \"libvirt\": {\"uri\": \"%s\", \"keepalive_interval_s\": 1,"
                " \"keepalive_count\": 2, \"reconnect_min_ms\": 50, \"reconnect_max_ms\": 200}}\n",
                e->libvirtd.uri);
        return fclose(f) == 0 ? 0 : -errno;
}

static int start_daemon(struct env *e) {
        const char *bin = getenv("VHOSTMIGD");
        if (!bin)
                return -EINVAL;
        fflush(NULL);
        pid_t pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                int log = open(e->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
                if (log < 0)
                        _exit(126);
                dup2(log, 1);
                dup2(log, 2);
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                setenv("DBUS_SYSTEM_BUS_ADDRESS", e->bus.address, 1);
                unsetenv("NOTIFY_SOCKET");
                unsetenv("JOURNAL_STREAM");
                execl(bin, "vhostmigd", "--config", e->config, (char *) NULL);
                _exit(127);
        }
        e->daemon = pid;
        for (uint64_t end = now_ms() + 10000; now_ms() < end; sleep_ms(20)) {
                bool has = false;
                if (private_bus_name_has_owner(e->client, VHOSTMIG_BUS_NAME, &has) == 0 && has)
                        return 0;
        }
        return -ETIMEDOUT;
}

/* SIGTERM and the exit status; -ETIMEDOUT (and SIGKILL) after timeout_ms. */
static int stop_daemon(struct env *e, unsigned timeout_ms) {
        if (e->daemon <= 0)
                return 0;
        kill(e->daemon, SIGTERM);
        int status;
        for (uint64_t end = now_ms() + timeout_ms; now_ms() < end; sleep_ms(10))
                if (waitpid(e->daemon, &status, WNOHANG) == e->daemon) {
                        e->daemon = 0;
                        return status;
                }
        kill(e->daemon, SIGKILL);
        waitpid(e->daemon, NULL, 0);
        e->daemon = 0;
        return -ETIMEDOUT;
}

static int setup(void **state) {
        *state = NULL;
        if (!libvirtd_fixture_binary() || !libvirtd_fixture_virsh()) {
                print_message("libvirtd or virsh is not installed (Debian: libvirt-daemon, libvirt-clients): "
                              "skipping vhostmigd against a real libvirtd\n");
                return 0;
        }
        struct env *e = calloc(1, sizeof(*e));
        if (!e)
                return -1;
        int r = libvirtd_fixture_start(&e->libvirtd);
        snprintf(e->config, sizeof(e->config), "%s/vhostmigd.json", e->libvirtd.dir);
        snprintf(e->log, sizeof(e->log), "%s/vhostmigd.log", e->libvirtd.dir);
        if (r == 0)
                r = write_config(e);
        if (r == 0)
                r = private_bus_start(&e->bus, true);
        if (r == 0)
                r = private_bus_connect(e->bus.address, 2 * 1000 * 1000, &e->client);
        if (r == 0)
                r = start_daemon(e);
        *state = e;
        if (r < 0)
                fprintf(stderr, "set-up failed: %s\n", strerror(-r));
        return r < 0 ? -1 : 0;
}

static int teardown(void **state) {
        struct env *e = *state;
        if (!e)
                return 0;
        stop_daemon(e, 5000);
        sd_bus_flush_close_unref(e->client);
        if (e->bus.pid)
                private_bus_stop(&e->bus);
        libvirtd_fixture_cleanup(&e->libvirtd);
        free(e);
        return 0;
}

/* GetVm of a VM that does not exist: NoSuchVm, answered within 500 ms. */
static void api_answers(struct env *e) {
        for (int i = 0; i < 10; i++) {
                sd_bus_error error = SD_BUS_ERROR_NULL;
                sd_bus_message *reply = NULL;
                uint64_t t0 = now_ms();
                int r = sd_bus_call_method(e->client, VHOSTMIG_BUS_NAME, VHOSTMIG_ROOT_PATH, VHOSTMIG_MANAGER_INTERFACE,
                                           "GetVm", &error, &reply, "s", "nobody");
                uint64_t took = now_ms() - t0;
                assert_true(r < 0);
                assert_string_equal(error.name, VHOSTMIG_ERROR_NO_SUCH_VM);
                sd_bus_error_free(&error);
                sd_bus_message_unref(reply);
                char *version = NULL;
                t0 = now_ms();
                r = sd_bus_get_property_string(e->client, VHOSTMIG_BUS_NAME, VHOSTMIG_ROOT_PATH,
                                               VHOSTMIG_MANAGER_INTERFACE, "Version", &error, &version);
                took = took > now_ms() - t0 ? took : now_ms() - t0;
                assert_int_equal(r, 0);
                free(version);
                if (took > 500)
                        fail_msg("the D-Bus API took %llu ms to answer while libvirtd was gone",
                                 (unsigned long long) took);
                sleep_ms(50);
        }
}

static void suspend_resume_logged(struct env *e, const char *name) {
        char uuid[VIR_UUID_STRING_BUFLEN], who[128];
        assert_int_equal(libvirtd_fixture_define_vhostuser_domain(&e->libvirtd, name, uuid), 0);
        snprintf(who, sizeof(who), "domain %s (%s)", name, uuid);
        assert_int_equal(libvirtd_fixture_virsh_run(&e->libvirtd, "suspend", name, NULL), 0);
        wait_log(e, 5000, who, "lifecycle suspended (paused)", NULL);
        assert_int_equal(libvirtd_fixture_virsh_run(&e->libvirtd, "resume", name, NULL), 0);
        wait_log(e, 5000, who, "lifecycle resumed (unpaused)", NULL);
}

static void daemon_follows_libvirtd(void **state) {
        struct env *e = *state;
        if (!e)
                skip();
        wait_log(e, 10000, "libvirt: connected to", e->libvirtd.uri, "(connection 1)", NULL);
        suspend_resume_logged(e, "vhm-lv-d");

        assert_int_equal(libvirtd_fixture_kill(&e->libvirtd, SIGKILL), 0);
        wait_log(e, 5000, "libvirt: disconnected", "libvirtd closed the connection", NULL);
        /* Reconnection attempts fail meanwhile (every 200 ms at most): the API is not behind them. */
        api_answers(e);
        wait_log(e, 5000, "libvirt: disconnected", "cannot connect", NULL);

        assert_int_equal(libvirtd_fixture_restart(&e->libvirtd), 0);
        wait_log(e, 5000, "libvirt: connected to", "(connection 2)", NULL);
        suspend_resume_logged(e, "vhm-lv-e");

        uint64_t t0 = now_ms();
        int status = stop_daemon(e, 5000);
        assert_true(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0);
        assert_true(now_ms() - t0 < 3000);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(daemon_follows_libvirtd, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

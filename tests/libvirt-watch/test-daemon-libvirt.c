/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vhostmigd with "libvirt.uri" on a real libvirtd (libvirt's test driver)
 * and a private bus: it connects, logs the lifecycle events virsh causes
 * with the domain's name and UUID, keeps answering D-Bus while libvirtd is
 * killed, reconnects when libvirtd is back and hears events again, and
 * stops promptly.  VMs bound to domains (by UUID, by name) hear their
 * domain's events and act on them: the events the test driver cannot
 * produce reach the daemon's watcher through its own registered callbacks,
 * delivered by the preloaded inject-events module.  ReleaseDomain and the
 * Manager's libvirt properties, during an outage and after.  Processes are
 * started and stopped by pid.
 *
 * Environment (set by meson): VHOSTMIGD, INJECT, START_BUS.  Skipped, saying
 * so, without libvirtd or virsh.
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
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <libvirt/libvirt.h>

#include "daemon/common/bus-api.h"
#include "tests/backend/test-backend.h"
#include "tests/common/clock.h"
#include "tests/common/private-bus.h"
#include "tests/libvirt-watch/libvirtd-fixture.h"

struct env {
        struct libvirtd_fixture libvirtd;
        struct private_bus bus;
        sd_bus *client;
        pid_t daemon;
        char config[300], log[300], fifo[300];
};

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
        uint64_t end = now_ms() + scaled_ms(timeout_ms);
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
                /* The events the test driver cannot produce come through the watcher's own callbacks. */
                const char *inject = getenv("INJECT");
                if (inject) {
                        setenv("LD_PRELOAD", inject, 1);
                        setenv("VHOSTMIG_INJECT_FIFO", e->fifo, 1);
                        /* A sanitized daemon: its runtime need not come first for a module preloaded for a test. */
                        char asan[512];
                        const char *was = getenv("ASAN_OPTIONS");
                        snprintf(asan, sizeof(asan), "%s%sverify_asan_link_order=0", was ? was : "",
                                 was && was[0] ? ":" : "");
                        setenv("ASAN_OPTIONS", asan, 1);
                }
                unsetenv("NOTIFY_SOCKET");
                unsetenv("JOURNAL_STREAM");
                execl(bin, "vhostmigd", "--config", e->config, (char *) NULL);
                _exit(127);
        }
        e->daemon = pid;
        for (uint64_t end = now_ms() + scaled_ms(10000); now_ms() < end; sleep_ms(20)) {
                bool has = false;
                if (private_bus_name_has_owner(e->client, VHOSTMIG_BUS_NAME, &has) == 0 && has)
                        return 0;
        }
        return -ETIMEDOUT;
}

/* SIGTERM and the exit status; -ETIMEDOUT (and SIGKILL) after timeout_ms (scaled). */
static int stop_daemon(struct env *e, unsigned timeout_ms) {
        if (e->daemon <= 0)
                return 0;
        kill(e->daemon, SIGTERM);
        int status;
        for (uint64_t end = now_ms() + scaled_ms(timeout_ms); now_ms() < end; sleep_ms(10))
                if (waitpid(e->daemon, &status, WNOHANG) == e->daemon) {
                        e->daemon = 0;
                        return status;
                }
        kill(e->daemon, SIGKILL);
        waitpid(e->daemon, NULL, 0);
        e->daemon = 0;
        return -ETIMEDOUT;
}

static int teardown(void **state);

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
        snprintf(e->fifo, sizeof(e->fifo), "%s/inject.fifo", e->libvirtd.dir);
        if (r == 0 && mkfifo(e->fifo, 0600) < 0)
                r = -errno;
        if (r == 0)
                r = write_config(e);
        if (r == 0)
                r = private_bus_start(&e->bus, true);
        if (r == 0)
                r = private_bus_connect(e->bus.address, 2 * 1000 * 1000, &e->client);
        if (r == 0)
                r = start_daemon(e);
        *state = e;
        if (r < 0) {
                fprintf(stderr, "set-up failed: %s\n", strerror(-r));
                /* cmocka runs no teardown after a failed setup: what was started stops here. */
                teardown(state);
                *state = NULL;
                return -1;
        }
        return 0;
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

/* ---- VMs bound to domains ------------------------------------------------------------------- */

#define MEM_SIZE (UINT64_C(2) << 20)
#define MAC      "52:54:00:12:34:56"

/* The watcher's callbacks, called in vhostmigd by the preloaded module (inject-events.c). */
static void inject(const struct env *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void inject(const struct env *e, const char *fmt, ...) {
        char line[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(line, sizeof(line), fmt, ap);
        va_end(ap);
        int fd = open(e->fifo, O_WRONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        size_t n = strlen(line);
        assert_int_equal(write(fd, line, n), (ssize_t) n);
        assert_int_equal(write(fd, "\n", 1), 1);
        close(fd);
}

static char *manager_prop(struct env *e, const char *name) {
        char *v = NULL;
        sd_bus_error error = SD_BUS_ERROR_NULL;
        int r = sd_bus_get_property_string(e->client, VHOSTMIG_BUS_NAME, VHOSTMIG_ROOT_PATH, VHOSTMIG_MANAGER_INTERFACE,
                                           name, &error, &v);
        if (r < 0)
                fail_msg("Manager.%s: %s", name, error.message ? error.message : strerror(-r));
        sd_bus_error_free(&error);
        return v;
}

static uint64_t prop_t(struct env *e, const char *path, const char *iface, const char *name) {
        uint64_t v = 0;
        sd_bus_error error = SD_BUS_ERROR_NULL;
        int r = sd_bus_get_property_trivial(e->client, VHOSTMIG_BUS_NAME, path, iface, name, &error, 't', &v);
        if (r < 0)
                fail_msg("%s.%s: %s", path, name, error.message ? error.message : strerror(-r));
        sd_bus_error_free(&error);
        return v;
}

static void wait_manager_prop(struct env *e, const char *name, const char *want, unsigned timeout_ms) {
        uint64_t end = now_ms() + scaled_ms(timeout_ms);
        for (;;) {
                char *v = manager_prop(e, name);
                bool ok = strcmp(v, want) == 0;
                if (!ok && now_ms() >= end)
                        fail_msg("Manager.%s is \"%s\", not \"%s\" after %u ms", name, v, want, timeout_ms);
                free(v);
                if (ok)
                        return;
                sleep_ms(20);
        }
}

static void wait_prop_t(struct env *e, const char *path, const char *iface, const char *name, uint64_t want) {
        uint64_t end = now_ms() + scaled_ms(5000), v;
        while ((v = prop_t(e, path, iface, name)) != want && now_ms() < end)
                sleep_ms(20);
        if (v != want)
                fail_msg("%s.%s is %llu, not %llu", path, name, (unsigned long long) v, (unsigned long long) want);
}

static int sealed_memfd(void) {
        int fd = memfd_create("vhostmig-test-libvirt", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, (off_t) MEM_SIZE), 0);
        assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
        return fd;
}

/* CreateVm bound to `domain` ("" unbound): its path (malloc'd). */
static char *create_vm(struct env *e, const char *name, int memfd, const char *domain) {
        sd_bus_message *m = NULL, *reply = NULL;
        sd_bus_error error = SD_BUS_ERROR_NULL;
        int r = sd_bus_message_new_method_call(e->client, &m, VHOSTMIG_BUS_NAME, VHOSTMIG_ROOT_PATH,
                                               VHOSTMIG_MANAGER_INTERFACE, "CreateVm");
        if (r >= 0)
                r = sd_bus_message_append(m, "sa(httt)", name, 1u, memfd, UINT64_C(0), MEM_SIZE, UINT64_C(0));
        if (r >= 0 && domain[0])
                r = sd_bus_message_append(m, "a{sv}", 1u, VHOSTMIG_OPTION_LIBVIRT_DOMAIN, "s", domain);
        else if (r >= 0)
                r = sd_bus_message_append(m, "a{sv}", 0u);
        if (r >= 0)
                r = sd_bus_call(e->client, m, 0, &error, &reply);
        const char *path = NULL;
        if (r >= 0)
                r = sd_bus_message_read(reply, "o", &path);
        if (r < 0)
                fail_msg("CreateVm(%s): %s", name, error.message ? error.message : strerror(-r));
        char *p = strdup(path);
        sd_bus_error_free(&error);
        sd_bus_message_unref(m);
        sd_bus_message_unref(reply);
        return p;
}

/* One queue pair in the VM's memory, its eventfds, the MAC: the test back-end's offer. */
static void add_device_as(struct env *e, const char *vm, const char *socket, int fds[4], bool incoming) {
        for (int i = 0; i < 4; i++) {
                fds[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
                assert_true(fds[i] >= 0);
        }
        sd_bus_message *m = NULL, *reply = NULL;
        sd_bus_error error = SD_BUS_ERROR_NULL;
        int r = sd_bus_message_new_method_call(e->client, &m, VHOSTMIG_BUS_NAME, vm, VHOSTMIG_VM_INTERFACE,
                                               "AddDevice");
        if (r >= 0)
                r = sd_bus_message_append(m, "sa(uttthh)a{sv}", socket, 2u, 256u, UINT64_C(0x100000),
                                          UINT64_C(0x101000), UINT64_C(0x102000), fds[0], fds[1], 256u,
                                          UINT64_C(0x110000), UINT64_C(0x111000), UINT64_C(0x112000), fds[2], fds[3],
                                          2u, VHOSTMIG_OPTION_MAC, "s", MAC, VHOSTMIG_OPTION_INCOMING, "b",
                                          (int) incoming);
        if (r >= 0)
                r = sd_bus_call(e->client, m, 0, &error, &reply);
        if (r < 0)
                fail_msg("AddDevice(%s): %s", socket, error.message ? error.message : strerror(-r));
        sd_bus_error_free(&error);
        sd_bus_message_unref(m);
        sd_bus_message_unref(reply);
}

static void add_device(struct env *e, const char *vm, const char *socket, int fds[4]) {
        add_device_as(e, vm, socket, fds, false);
}

static char *vm_prop_s(struct env *e, const char *vm, const char *name) {
        char *v = NULL;
        sd_bus_error error = SD_BUS_ERROR_NULL;
        int r = sd_bus_get_property_string(e->client, VHOSTMIG_BUS_NAME, vm, VHOSTMIG_VM_INTERFACE, name, &error, &v);
        if (r < 0)
                fail_msg("%s.%s: %s", vm, name, error.message ? error.message : strerror(-r));
        sd_bus_error_free(&error);
        return v;
}

/* Waits for MigrationState `want`; fails, naming the state and error, on another final one or after 20 s. */
static void wait_migration_state(struct env *e, const char *vm, const char *want) {
        uint64_t end = now_ms() + scaled_ms(20000);
        for (;;) {
                char *v = vm_prop_s(e, vm, "MigrationState");
                bool ok = strcmp(v, want) == 0;
                bool final = strcmp(v, "completed") == 0 || strcmp(v, "failed") == 0 || strcmp(v, "cancelled") == 0 ||
                             strcmp(v, "postmigrate-unknown") == 0;
                if (!ok && (final || now_ms() >= end)) {
                        char *err = vm_prop_s(e, vm, "MigrationError");
                        fail_msg("%s: MigrationState \"%s\" (%s), waiting for \"%s\"", vm, v, err, want);
                }
                free(v);
                if (ok)
                        return;
                sleep_ms(20);
        }
}

static void vm_call(struct env *e, const char *vm, const char *method) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        int r = strcmp(method, "StartLogging") == 0
                        ? sd_bus_call_method(e->client, VHOSTMIG_BUS_NAME, vm, VHOSTMIG_VM_INTERFACE, method, &error,
                                             &reply, "a{sv}", 0u)
                        : sd_bus_call_method(e->client, VHOSTMIG_BUS_NAME, vm, VHOSTMIG_VM_INTERFACE, method, &error,
                                             &reply, "");
        if (r < 0)
                fail_msg("%s on %s: %s", method, vm, error.message ? error.message : strerror(-r));
        sd_bus_error_free(&error);
        sd_bus_message_unref(reply);
}

static bool vm_exists(struct env *e, const char *name) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        int r = sd_bus_call_method(e->client, VHOSTMIG_BUS_NAME, VHOSTMIG_ROOT_PATH, VHOSTMIG_MANAGER_INTERFACE,
                                   "GetVm", &error, &reply, "s", name);
        if (r < 0 && !sd_bus_error_has_name(&error, VHOSTMIG_ERROR_NO_SUCH_VM))
                fail_msg("GetVm(%s): %s", name, error.message ? error.message : strerror(-r));
        sd_bus_error_free(&error);
        sd_bus_message_unref(reply);
        return r >= 0;
}

static void wait_vm_gone(struct env *e, const char *name) {
        uint64_t end = now_ms() + scaled_ms(5000);
        while (vm_exists(e, name) && now_ms() < end)
                sleep_ms(20);
        if (vm_exists(e, name))
                fail_msg("VM %s still exists", name);
}

static uint32_t release_domain(struct env *e, const char *domain) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        uint32_t n = 0;
        int r = sd_bus_call_method(e->client, VHOSTMIG_BUS_NAME, VHOSTMIG_ROOT_PATH, VHOSTMIG_MANAGER_INTERFACE,
                                   "ReleaseDomain", &error, &reply, "sa{sv}", domain, 0u);
        if (r >= 0)
                r = sd_bus_message_read(reply, "u", &n);
        if (r < 0)
                fail_msg("ReleaseDomain(%s): %s", domain, error.message ? error.message : strerror(-r));
        sd_bus_error_free(&error);
        sd_bus_message_unref(reply);
        return n;
}

/* Lines of the test back-end's record that contain `needle`. */
static unsigned record_count(const char *record, const char *needle) {
        char *text = tb_record_read(record);
        unsigned n = 0;
        for (const char *p = text; p && (p = strstr(p, needle)); p++)
                n++;
        free(text);
        return n;
}

static void wait_record(const struct env *e, const char *record, const char *needle, unsigned want) {
        uint64_t end = now_ms() + scaled_ms(5000);
        while (record_count(record, needle) < want && now_ms() < end)
                sleep_ms(20);
        unsigned n = record_count(record, needle);
        if (n != want) {
                char *log = read_log(e), *rec = tb_record_read(record);
                fprintf(stderr, "---- vhostmigd ----\n%s---- back-end record ----\n%s----\n", log ? log : "",
                        rec ? rec : "");
                free(log);
                free(rec);
                fail_msg("%u lines with \"%s\" in the back-end's record, expected %u", n, needle, want);
        }
}

static char *upper(const char *s) {
        char *u = strdup(s);
        for (char *p = u; *p; p++)
                if (*p >= 'a' && *p <= 'z')
                        *p = (char) (*p - 'a' + 'A');
        return u;
}

/*
 * A VM bound by UUID with a device on the test back-end, one bound by name,
 * one unbound: each reaction on the bound VMs, logged with the domain's
 * name and UUID; the unbound VM untouched.
 */
static void bound_vms_follow_their_domain(void **state) {
        struct env *e = *state;
        if (!e)
                skip();
        wait_log(e, 10000, "libvirt: connected to", e->libvirtd.uri, NULL);
        char *v = manager_prop(e, "LibvirtUri");
        assert_string_equal(v, e->libvirtd.uri);
        free(v);
        wait_manager_prop(e, "LibvirtConnection", "connected", 1000);

        char uuid[VIR_UUID_STRING_BUFLEN], nuuid[VIR_UUID_STRING_BUFLEN], who[160], nwho[160];
        assert_int_equal(libvirtd_fixture_define_vhostuser_domain(&e->libvirtd, "vhm-lv-b", uuid), 0);
        assert_int_equal(libvirtd_fixture_define_vhostuser_domain(&e->libvirtd, "vhm-lv-n", nuuid), 0);
        snprintf(who, sizeof(who), "domain vhm-lv-b (%s)", uuid);
        snprintf(nwho, sizeof(nwho), "domain vhm-lv-n (%s)", nuuid);

        struct tb_config cfg;
        tb_config_init(&cfg);
        char socket[300], record[300];
        snprintf(socket, sizeof(socket), "%s/tb.sock", e->libvirtd.dir);
        snprintf(record, sizeof(record), "%s/tb.rec", e->libvirtd.dir);
        cfg.record_path = record;
        cfg.io_timeout_ms = 3000;
        cfg.max_connections = 1;
        pid_t tb = -1;
        assert_int_equal(tb_spawn_listen(&cfg, socket, &tb), 0);

        int memfd = sealed_memfd(), fds[4];
        char *uuid_upper = upper(uuid);
        char *b1 = create_vm(e, "b1", memfd, uuid_upper);
        char *n1 = create_vm(e, "n1", memfd, "vhm-lv-n");
        char *other = create_vm(e, "other", memfd, "");
        add_device(e, b1, socket, fds);

        /* virsh's events reach the bound VM, named both ways. */
        assert_int_equal(libvirtd_fixture_virsh_run(&e->libvirtd, "suspend", "vhm-lv-b", NULL), 0);
        wait_log(e, 5000, "b1: libvirt:", who, "lifecycle suspended (paused)", "nothing to do", NULL);
        assert_int_equal(libvirtd_fixture_virsh_run(&e->libvirtd, "resume", "vhm-lv-b", NULL), 0);
        wait_log(e, 5000, "b1: libvirt:", who, "lifecycle resumed (unpaused)", NULL);

        /* RESUMED_MIGRATED: SEND_RARP on the device. */
        inject(e, "lifecycle vhm-lv-b %d %d", VIR_DOMAIN_EVENT_RESUMED, VIR_DOMAIN_EVENT_RESUMED_MIGRATED);
        wait_log(e, 5000, "b1: libvirt:", who, "resumed (migrated)", "announcing (SEND_RARP)", NULL);
        wait_record(e, record, "mac=" MAC, 1);

        /* SUSPENDED_MIGRATED without a migration: nothing continues, and the log says why. */
        inject(e, "lifecycle vhm-lv-b %d %d", VIR_DOMAIN_EVENT_SUSPENDED, VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED);
        wait_log(e, 5000, "b1: libvirt:", who, "suspended (migrated)", "nothing to continue", NULL);

        /* MIGRATION_ITERATION: a harvest only while logging. */
        inject(e, "iteration vhm-lv-b 1");
        wait_log(e, 5000, "b1: libvirt:", who, "no harvest: dirty logging is off", NULL);
        vm_call(e, b1, "StartLogging");
        uint64_t harvests = prop_t(e, b1, VHOSTMIG_VM_INTERFACE, "Harvests");
        inject(e, "iteration vhm-lv-b 2");
        wait_prop_t(e, b1, VHOSTMIG_VM_INTERFACE, "Harvests", harvests + 1);
        wait_log(e, 5000, "b1: libvirt:", who, "migration iteration 2", "harvesting", NULL);

        /* JOB_COMPLETED: the downtime recorded. */
        inject(e, "job vhm-lv-b 42");
        wait_prop_t(e, b1, VHOSTMIG_VM_INTERFACE, "LibvirtDowntimeMs", 42);
        wait_log(e, 5000, "b1: libvirt:", who, "downtime 42 ms recorded", NULL);

        /* STOPPED_MIGRATED on the domain bound by name: that VM goes, the others stay. */
        inject(e, "lifecycle vhm-lv-n %d %d", VIR_DOMAIN_EVENT_STOPPED, VIR_DOMAIN_EVENT_STOPPED_MIGRATED);
        wait_log(e, 5000, "n1: libvirt:", nwho, "stopped (migrated)", "releasing", NULL);
        wait_vm_gone(e, "n1");
        assert_true(vm_exists(e, "b1"));
        assert_true(vm_exists(e, "other"));

        /* ReleaseDomain: by name nothing (b1 is bound by UUID), by UUID b1 and its device; "other" stays. */
        assert_int_equal(release_domain(e, "vhm-lv-b"), 0);
        assert_int_equal(release_domain(e, uuid), 1);
        assert_false(vm_exists(e, "b1"));
        assert_true(vm_exists(e, "other"));
        /* The device was released: the back-end's only connection closed and it ended cleanly. */
        int status = tb_wait_exit(tb, 5000);
        assert_true(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0);
        tb = -1;

        /* CRASHED on a domain nothing is bound to any more: logged, nothing else. */
        inject(e, "lifecycle vhm-lv-b %d %d", VIR_DOMAIN_EVENT_CRASHED, VIR_DOMAIN_EVENT_CRASHED_PANICKED);
        wait_log(e, 5000, who, "crashed", "no VM is bound to it (would release)", NULL);
        assert_true(vm_exists(e, "other"));

        for (int i = 0; i < 4; i++)
                close(fds[i]);
        close(memfd);
        free(uuid_upper);
        free(b1);
        free(n1);
        free(other);
}

/* A sealed memfd bitmap in the vhost log format for 2 MiB of guest memory (a VMM's, AddDirtyBitmap). */
static int vmm_bitmap(void) {
        int fd = memfd_create("vhostmig-test-bitmap", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, (off_t) (MEM_SIZE / 4096 / 8)), 0);
        assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
        return fd;
}

/*
 * A live migration between two VMs of the one daemon, each on its own test
 * back-end: the source, bound to one domain, has a VMM dirty bitmap, so it
 * waits in pre-switchover for the VMM's pause, which here is libvirt's
 * SUSPENDED_MIGRATED; the destination, bound to another, sees
 * RESUMED_MIGRATED after the migration sent its RARP and announces nothing
 * more; STOPPED_MIGRATED then releases the source.
 */
static void migration_follows_libvirt(void **state) {
        struct env *e = *state;
        if (!e)
                skip();
        wait_log(e, 10000, "libvirt: connected to", e->libvirtd.uri, NULL);
        char suuid[VIR_UUID_STRING_BUFLEN], duuid[VIR_UUID_STRING_BUFLEN], swho[160], dwho[160];
        assert_int_equal(libvirtd_fixture_define_vhostuser_domain(&e->libvirtd, "vhm-lv-src", suuid), 0);
        assert_int_equal(libvirtd_fixture_define_vhostuser_domain(&e->libvirtd, "vhm-lv-dst", duuid), 0);
        snprintf(swho, sizeof(swho), "domain vhm-lv-src (%s)", suuid);
        snprintf(dwho, sizeof(dwho), "domain vhm-lv-dst (%s)", duuid);

        struct tb_config cfg[2];
        char socket[2][300], record[2][300];
        pid_t tb[2];
        for (int i = 0; i < 2; i++) {
                tb_config_init(&cfg[i]);
                snprintf(socket[i], sizeof(socket[i]), "%s/tb%d.sock", e->libvirtd.dir, i);
                snprintf(record[i], sizeof(record[i]), "%s/tb%d.rec", e->libvirtd.dir, i);
                cfg[i].record_path = record[i];
                cfg[i].io_timeout_ms = 3000;
                cfg[i].max_connections = 1;
                assert_int_equal(tb_spawn_listen(&cfg[i], socket[i], &tb[i]), 0);
        }
        int smem = sealed_memfd(), dmem = sealed_memfd(), sfds[4], dfds[4];
        char *src = create_vm(e, "src", smem, suuid);
        char *dst = create_vm(e, "dst", dmem, "vhm-lv-dst");
        add_device_as(e, src, socket[0], sfds, false);
        add_device_as(e, dst, socket[1], dfds, true);
        int bfd = vmm_bitmap();
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        assert_int_equal(sd_bus_call_method(e->client, VHOSTMIG_BUS_NAME, src, VHOSTMIG_VM_INTERFACE, "AddDirtyBitmap",
                                            &error, NULL, "ha{sv}", bfd, 0u),
                         1);
        assert_int_equal(sd_bus_call_method(e->client, VHOSTMIG_BUS_NAME, dst, VHOSTMIG_VM_INTERFACE, "PrepareIncoming",
                                            &error, &reply, "a{sv}", 0u),
                         1);
        const char *address, *token;
        assert_true(sd_bus_message_read(reply, "ss", &address, &token) > 0);
        /* The default maximum downtime, scaled where memcheck slows the switchover's checksum. */
        int r = sd_bus_call_method(e->client, VHOSTMIG_BUS_NAME, src, VHOSTMIG_VM_INTERFACE, "MigrateTo", &error, NULL,
                                   "ssa{sv}", address, token, 3u, "Live", "b", 1, "PauseTimeoutMs", "u", 20000u,
                                   "MaxDowntimeMs", "u", scaled_downtime_ms(300));
        if (r < 0)
                fail_msg("MigrateTo: %s", error.message);
        sd_bus_message_unref(reply);

        /* Nothing pauses the guest but libvirt: the source waits. */
        wait_migration_state(e, src, "pre-switchover");
        inject(e, "lifecycle vhm-lv-src %d %d", VIR_DOMAIN_EVENT_SUSPENDED, VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED);
        wait_log(e, 5000, "src: libvirt:", swho, "suspended (migrated)", "switching over (MigrateContinue)", NULL);
        wait_migration_state(e, src, "completed");
        wait_migration_state(e, dst, "completed");
        wait_record(e, record[1], "mac=" MAC, 1);

        /* The destination's RARP went with the migration: RESUMED_MIGRATED sends no other. */
        inject(e, "lifecycle vhm-lv-dst %d %d", VIR_DOMAIN_EVENT_RESUMED, VIR_DOMAIN_EVENT_RESUMED_MIGRATED);
        wait_log(e, 5000, "dst: libvirt:", dwho, "resumed (migrated)", "no announcement: already sent", NULL);
        /* Whatever the source's domain says now, the incoming VM is not its business. */
        inject(e, "lifecycle vhm-lv-src %d %d", VIR_DOMAIN_EVENT_STOPPED, VIR_DOMAIN_EVENT_STOPPED_MIGRATED);
        wait_log(e, 5000, "src: libvirt:", swho, "stopped (migrated)", "releasing", NULL);
        wait_vm_gone(e, "src");
        assert_true(vm_exists(e, "dst"));
        wait_record(e, record[1], "mac=" MAC, 1);

        sd_bus_error_free(&error);
        assert_int_equal(release_domain(e, "vhm-lv-dst"), 1);
        for (int i = 0; i < 2; i++)
                (void) tb_stop(tb[i]);
        for (int i = 0; i < 4; i++) {
                close(sfds[i]);
                close(dfds[i]);
        }
        close(bfd);
        close(smem);
        close(dmem);
        free(src);
        free(dst);
}

/* `vhostmigctl [--json] status` on the test's bus: its standard output (malloc'd). */
static char *ctl_status(const struct env *e, bool json) {
        const char *ctl = getenv("VHOSTMIGCTL");
        assert_non_null(ctl);
        int out[2];
        assert_int_equal(pipe2(out, O_CLOEXEC), 0);
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                dup2(out[1], 1);
                execl(ctl, "vhostmigctl", "--bus-address", e->bus.address, json ? "--json" : "status",
                      json ? "status" : (char *) NULL, (char *) NULL);
                _exit(127);
        }
        close(out[1]);
        char *text = calloc(1, 65536);
        size_t used = 0;
        for (ssize_t n; text && used < 65535 && (n = read(out[0], text + used, 65535 - used)) > 0;)
                used += (size_t) n;
        close(out[0]);
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        return text;
}

/*
 * Whether `vhostmigctl status` shows `connection`, as text and as JSON; a
 * text that does not goes to stderr (freed here: a failure must not leak it).
 */
static bool ctl_status_has(const struct env *e, const char *connection, bool say) {
        char line[700], json[600], *text = ctl_status(e, false);
        snprintf(line, sizeof(line), "  %-24s %s (%s)\n", "Libvirt:", connection, e->libvirtd.uri);
        bool ok = strstr(text, line) != NULL;
        if (ok) {
                free(text);
                text = ctl_status(e, true);
                snprintf(json, sizeof(json), "\"connection\":\"%s\"", connection);
                ok = strstr(text, "\"libvirt\":{") && strstr(text, json);
        }
        if (!ok && say)
                fprintf(stderr, "vhostmigctl status does not show the connection \"%s\":\n%s\n", connection, text);
        free(text);
        return ok;
}

/*
 * vhostmigctl status shows the connection while the watcher is connected,
 * and then while it is not.  Asked again until it does: a watcher that lost
 * libvirtd goes from "disconnected" to "connecting" at every retry, and a
 * slow run (valgrind) may ask during one.
 */
static void ctl_status_shows(const struct env *e, const char *connection) {
        uint64_t end = now_ms() + scaled_ms(5000);
        for (;;) {
                bool last = now_ms() >= end;
                if (ctl_status_has(e, connection, last))
                        return;
                if (last)
                        fail_msg("vhostmigctl status never showed the connection \"%s\"", connection);
                sleep_ms(20);
        }
}

/* LibvirtConnection and LibvirtLastError follow libvirtd going away and coming back. */
static void manager_properties_follow_libvirtd(void **state) {
        struct env *e = *state;
        if (!e)
                skip();
        wait_manager_prop(e, "LibvirtConnection", "connected", 10000);
        char *err = manager_prop(e, "LibvirtLastError");
        assert_string_equal(err, "");
        free(err);
        assert_int_equal(prop_t(e, VHOSTMIG_ROOT_PATH, VHOSTMIG_MANAGER_INTERFACE, "LibvirtLastErrorTimestamp"), 0);
        ctl_status_shows(e, "connected");

        assert_int_equal(libvirtd_fixture_kill(&e->libvirtd, SIGKILL), 0);
        wait_manager_prop(e, "LibvirtConnection", "disconnected", 5000);
        ctl_status_shows(e, "disconnected");
        err = manager_prop(e, "LibvirtLastError");
        assert_true(err[0] != '\0');
        free(err);
        assert_true(prop_t(e, VHOSTMIG_ROOT_PATH, VHOSTMIG_MANAGER_INTERFACE, "LibvirtLastErrorTimestamp") > 0);

        assert_int_equal(libvirtd_fixture_restart(&e->libvirtd), 0);
        wait_manager_prop(e, "LibvirtConnection", "connected", 5000);
        /* The last error stays, for the operator who asks why the connection was lost. */
        err = manager_prop(e, "LibvirtLastError");
        assert_true(err[0] != '\0');
        free(err);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(daemon_follows_libvirtd, setup, teardown),
                cmocka_unit_test_setup_teardown(bound_vms_follow_their_domain, setup, teardown),
                cmocka_unit_test_setup_teardown(migration_follows_libvirt, setup, teardown),
                cmocka_unit_test_setup_teardown(manager_properties_follow_libvirtd, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

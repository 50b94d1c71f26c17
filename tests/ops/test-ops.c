/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Operating vhostmigd as systemd runs it: SIGHUP reloads the configuration
 * (RELOADING=1 ... READY=1; a bad file is refused and the running one
 * stays; the probe pool grows and shrinks under running probes), the
 * watchdog pings, org.freedesktop.LogControl1, and what reaches the journal
 * (every field filled, MESSAGE_ID on events).
 *
 * Each test starts vhostmigd on a private bus (tests/dbus/start-bus.sh, the
 * real policy) with NOTIFY_SOCKET set to a datagram socket of the test, and
 * stops it by pid.  The journal test binds /run/systemd/journal/socket when
 * no journald has; it needs root, and skips when a journal socket exists.
 *
 * Environment (set by meson): VHOSTMIGD, START_BUS.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <systemd/sd-bus.h>

#include "daemon/vhostmigd/messages.h"
#include "tests/backend/test-backend.h"
#include "tests/common/clock.h"
#include "tests/common/private-bus.h"

#define DEST           "org.vhostmig1"
#define ROOT_PATH      "/org/vhostmig1"
#define MANAGER        "org.vhostmig1.Manager"
#define LOG_PATH       "/org/freedesktop/LogControl1"
#define LOG_IFACE      "org.freedesktop.LogControl1"
#define JOURNAL_DIR    "/run/systemd/journal"
#define JOURNAL_SOCKET JOURNAL_DIR "/socket"

static struct {
        struct private_bus bus;                      /* the private bus: private_bus_stop() ends it */
        char dir[64];                                /* config, log, sockets */
        char config[128], log[128], notify_path[96]; /* a socket path fits sun_path */
        int notify_fd;                               /* our NOTIFY_SOCKET */
        pid_t daemon;                                /* vhostmigd, our child; -1 when not running */
        sd_bus *c;
        int journal_fd;        /* bound at JOURNAL_SOCKET, or -1 */
        unsigned journal_made; /* directories made for it: 1 journal/, 2 systemd/ too */
} env = { .notify_fd = -1, .daemon = -1, .journal_fd = -1 };

/* ---- processes ------------------------------------------------------------------------ */

static void dump_log(void) {
        FILE *f = fopen(env.log, "re");
        char line[1500];
        while (f && fgets(line, sizeof(line), f))
                fprintf(stderr, "vhostmigd: %s", line);
        if (f)
                fclose(f);
}

static unsigned log_count(const char *needle) {
        FILE *f = fopen(env.log, "re");
        char line[1500];
        unsigned n = 0;
        while (f && fgets(line, sizeof(line), f))
                n += strstr(line, needle) != NULL;
        if (f)
                fclose(f);
        return n;
}

static bool log_contains(const char *needle) {
        return log_count(needle) > 0;
}

static void write_config(const char *text) {
        char tmp[160];
        snprintf(tmp, sizeof(tmp), "%s.new", env.config);
        FILE *f = fopen(tmp, "we");
        assert_non_null(f);
        assert_true(fputs(text, f) >= 0);
        assert_int_equal(fclose(f), 0);
        /* Whole, as an editor or a config manager replaces it. */
        assert_int_equal(rename(tmp, env.config), 0);
}

/* vhostmigd with the test's config, NOTIFY_SOCKET and `extra` environment ("NAME=VALUE", NULL-ended). */
static void daemon_start(const char *const *extra) {
        const char *bin = getenv("VHOSTMIGD");
        assert_non_null(bin);
        fflush(stderr);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                int log = open(env.log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
                int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
                if (log < 0 || null < 0)
                        _exit(126);
                dup2(null, 0);
                dup2(log, 1);
                dup2(log, 2);
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                setenv("DBUS_SYSTEM_BUS_ADDRESS", env.bus.address, 1);
                setenv("NOTIFY_SOCKET", env.notify_path, 1);
                unsetenv("JOURNAL_STREAM");
                unsetenv("WATCHDOG_USEC");
                unsetenv("WATCHDOG_PID");
                for (; extra && *extra; extra++)
                        putenv((char *) *extra);
                execl(bin, "vhostmigd", "--config", env.config, (char *) NULL);
                _exit(127);
        }
        env.daemon = pid;
}

/* SIGTERM, and its exit status (or killed after 10 s, and a failure). */
static void daemon_stop(void) {
        if (env.daemon < 0)
                return;
        kill(env.daemon, SIGTERM);
        int status = tb_wait_exit(env.daemon, 10000);
        bool timed_out = status == -ETIMEDOUT;
        if (timed_out) {
                kill(env.daemon, SIGKILL);
                waitpid(env.daemon, &status, 0);
        }
        env.daemon = -1;
        if (timed_out || status < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                dump_log();
                fail_msg("vhostmigd did not exit cleanly on SIGTERM (status 0x%x)", status);
        }
}

/* ---- the notify socket ------------------------------------------------------------------- */

/* The next datagram on NOTIFY_SOCKET within `timeout_ms`, NUL-terminated in buf; false on timeout. */
static bool notify_next(char *buf, size_t len, unsigned timeout_ms) {
        uint64_t deadline = now_ms() + timeout_ms;
        for (;;) {
                ssize_t n = recv(env.notify_fd, buf, len - 1, MSG_DONTWAIT);
                if (n >= 0) {
                        buf[n] = '\0';
                        return true;
                }
                assert_true(errno == EAGAIN || errno == EINTR);
                if (now_ms() >= deadline)
                        return false;
                sleep_ms(5);
        }
}

/* Whether the datagram has the line `line`. */
static bool has_line(const char *datagram, const char *line) {
        size_t n = strlen(line);
        for (const char *l = datagram; l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
                if (strncmp(l, line, n) == 0 && (l[n] == '\n' || l[n] == '\0'))
                        return true;
        return false;
}

/* Waits for a datagram with the line `line` (the whole datagram in got). */
static void notify_wait_for(const char *line, unsigned timeout_ms, char *got, size_t len) {
        uint64_t deadline = now_ms() + timeout_ms;
        char buf[1024];
        while (now_ms() < deadline) {
                if (!notify_next(buf, sizeof(buf), 50) || !has_line(buf, line))
                        continue;
                if (got)
                        snprintf(got, len, "%s", buf);
                return;
        }
        dump_log();
        fail_msg("no \"%s\" on NOTIFY_SOCKET within %u ms", line, timeout_ms);
}

static void drain_notify(void) {
        char buf[1024];
        while (notify_next(buf, sizeof(buf), 0))
                ;
}

/* ---- D-Bus ---------------------------------------------------------------------------- */

static char *get_string(const char *path, const char *iface, const char *name) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        char *s = NULL;
        int r = sd_bus_get_property_string(env.c, DEST, path, iface, name, &e, &s);
        if (r < 0)
                fail_msg("Get %s.%s: %s", iface, name, e.message ? e.message : strerror(-r));
        return s;
}

static void assert_log_level(const char *expected) {
        char *s = get_string(LOG_PATH, LOG_IFACE, "LogLevel");
        assert_string_equal(s, expected);
        free(s);
}

/* Set a LogControl1 property; the D-Bus error name, or NULL when it worked. */
static const char *set_string(sd_bus *b, const char *name, const char *value, sd_bus_error *e) {
        int r = sd_bus_set_property(b, DEST, LOG_PATH, LOG_IFACE, name, e, "s", value);
        return r < 0 ? (e->name ? e->name : "(no error name)") : NULL;
}

/* Ready once it owns its name, and said so on NOTIFY_SOCKET. */
static void daemon_ready(void) {
        notify_wait_for("READY=1", 10000, NULL, 0);
        int r = sd_bus_get_name_creds(env.c, DEST, 0, NULL);
        if (r < 0)
                fail_msg("READY=1 before owning %s: %s", DEST, strerror(-r));
}

/* ---- per test ------------------------------------------------------------------------- */

static void journal_unbind(void);

static int setup(void **state) {
        (void) state;
        snprintf(env.dir, sizeof(env.dir), "/tmp/vhostmig-ops-XXXXXX");
        if (!mkdtemp(env.dir))
                return -1;
        snprintf(env.config, sizeof(env.config), "%s/vhostmigd.json", env.dir);
        snprintf(env.log, sizeof(env.log), "%s/vhostmigd.log", env.dir);
        snprintf(env.notify_path, sizeof(env.notify_path), "%s/notify", env.dir);
        env.notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", env.notify_path);
        if (env.notify_fd < 0 || bind(env.notify_fd, (struct sockaddr *) &sa, sizeof(sa)) < 0)
                return -1;
        if (private_bus_start(&env.bus, false) < 0) {
                fprintf(stderr, "cannot start a private bus (START_BUS)\n");
                return -1;
        }
        int r = private_bus_connect(env.bus.address, 0, &env.c);
        if (r < 0)
                fail_msg("cannot connect to %s: %s", env.bus.address, strerror(-r));
        return 0;
}

static void remove_dir(const char *dir) {
        static const char *const files[] = { "vhostmigd.json", "vhostmigd.json.new", "vhostmigd.log", "notify",
                                             "probe0.sock",    "probe1.sock",        "probe2.sock",   "probe3.sock" };
        char path[192];
        for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
                snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
                (void) unlink(path);
        }
        if (rmdir(dir) < 0)
                fprintf(stderr, "cannot remove %s: %m\n", dir);
}

static int teardown(void **state) {
        (void) state;
        if (env.daemon > 0) {
                kill(env.daemon, SIGKILL);
                waitpid(env.daemon, NULL, 0);
                env.daemon = -1;
        }
        journal_unbind();
        env.c = sd_bus_flush_close_unref(env.c);
        (void) private_bus_stop(&env.bus);
        if (env.notify_fd >= 0)
                close(env.notify_fd);
        env.notify_fd = -1;
        remove_dir(env.dir);
        return 0;
}

/* ---- reload ------------------------------------------------------------------------------- */

/* SIGHUP, then RELOADING=1 with MONOTONIC_USEC and READY=1 again. */
static void reload(void) {
        drain_notify();
        assert_int_equal(kill(env.daemon, SIGHUP), 0);
        char got[1024];
        notify_wait_for("RELOADING=1", 5000, got, sizeof(got));
        /* In the same message: systemd 253's Type=notify-reload insists on it. */
        const char *usec = strstr(got, "MONOTONIC_USEC=");
        if (!usec || strtoull(usec + strlen("MONOTONIC_USEC="), NULL, 10) == 0)
                fail_msg("RELOADING=1 without MONOTONIC_USEC: \"%s\"", got);
        notify_wait_for("READY=1", 5000, NULL, 0);
}

struct async_probe {
        sd_bus_slot *slot;
        bool done;
        char error[256];
};

static int on_probe_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        (void) ret_error;
        struct async_probe *p = userdata;
        const sd_bus_error *e = sd_bus_message_get_error(m);
        snprintf(p->error, sizeof(p->error), "%s", e ? e->name : "");
        p->done = true;
        return 0;
}

/* A server-mode probe nobody connects to holds a probe worker for timeout_ms. */
static void probe_async(unsigned n, unsigned timeout_ms, struct async_probe *p) {
        char socket[160];
        snprintf(socket, sizeof(socket), "%s/probe%u.sock", env.dir, n);
        *p = (struct async_probe){};
        int r = sd_bus_call_method_async(env.c, &p->slot, DEST, ROOT_PATH, MANAGER, "Probe", on_probe_reply, p, "sbu",
                                         socket, 1, timeout_ms);
        assert_int_equal(r >= 0, 1);
}

/* A probe that must be refused at once with Busy, or accepted (then it times out in 50 ms). */
static const char *probe_now(unsigned n) {
        static char name[256];
        struct async_probe p;
        probe_async(n, 50, &p);
        uint64_t deadline = now_ms() + 5000;
        while (!p.done && now_ms() < deadline) {
                int r = sd_bus_process(env.c, NULL);
                assert_true(r >= 0);
                if (r == 0)
                        (void) sd_bus_wait(env.c, 10000);
        }
        assert_true(p.done);
        sd_bus_slot_unref(p.slot);
        snprintf(name, sizeof(name), "%s", p.error);
        return name;
}

static void pump_until_done(struct async_probe *p, unsigned timeout_ms) {
        uint64_t deadline = now_ms() + timeout_ms;
        while (!p->done && now_ms() < deadline) {
                int r = sd_bus_process(env.c, NULL);
                assert_true(r >= 0);
                if (r == 0)
                        (void) sd_bus_wait(env.c, 10000);
        }
        assert_true(p->done);
        p->slot = sd_bus_slot_unref(p->slot);
}

#define BUSY    "org.vhostmig1.Error.Busy"
#define BACKEND "org.vhostmig1.Error.Backend"

static void sighup_reloads(void **state) {
        (void) state;
        write_config("{\"max_probes\": 1, \"log_level\": \"info\"}");
        daemon_start(NULL);
        daemon_ready();
        assert_log_level("info");

        /* One probe worker: a second probe is Busy while the first runs. */
        struct async_probe first;
        probe_async(0, 3000, &first);
        sleep_ms(100);
        assert_string_equal(probe_now(1), BUSY);

        /* Grown by a reload while the first probe runs: now the second has a worker. */
        write_config("{\"max_probes\": 2, \"log_level\": \"debug\"}");
        reload();
        assert_log_level("debug");
        assert_string_equal(probe_now(1), BACKEND); /* accepted; nobody connected in 50 ms */
        assert_true(log_contains("max_probes 1 -> 2"));

        /* A bad file is refused, naming the key; everything stays as it was. */
        write_config("{\"max_probes\": 1, \"log_level\": \"err\", \"max_vms\": \"ten\"}");
        reload();
        assert_true(log_contains("reload refused"));
        assert_true(log_contains("\"max_vms\": expected an integer"));
        assert_log_level("debug");
        assert_string_equal(probe_now(1), BACKEND);

        /* Shrunk while a probe runs: refused at once, the running probe still answers. */
        write_config("{\"max_probes\": 1, \"log_level\": \"debug\"}");
        reload();
        assert_string_equal(probe_now(1), BUSY);
        pump_until_done(&first, 5000);
        assert_string_equal(first.error, BACKEND);
        assert_string_equal(probe_now(1), BACKEND);

        /* A level set over D-Bus survives a reload that does not change the file's level. */
        sd_bus_error e = SD_BUS_ERROR_NULL;
        assert_null(set_string(env.c, "LogLevel", "warning", &e));
        write_config("{\"max_probes\": 3, \"log_level\": \"debug\"}");
        reload();
        assert_log_level("warning");
        write_config("{\"max_probes\": 3, \"log_level\": \"notice\"}");
        reload();
        assert_log_level("notice");

        /* SIGHUP never killed it. */
        assert_int_equal(kill(env.daemon, 0), 0);
        daemon_stop();
        sd_bus_error_free(&e);
}

/* The watchdog: WATCHDOG=1 at about half of WATCHDOG_USEC, only when it is set. */
static void watchdog_pings(void **state) {
        (void) state;
        write_config("{}");
        static const char *const extra[] = { "WATCHDOG_USEC=200000", NULL };
        daemon_start(extra);
        daemon_ready();
        unsigned pings = 0;
        uint64_t end = now_ms() + 1000;
        char buf[256];
        while (now_ms() < end)
                if (notify_next(buf, sizeof(buf), 50) && strstr(buf, "WATCHDOG=1"))
                        pings++;
        /* Every ~100 ms: 10 in a second; at least 5 leaves room for a loaded machine. */
        if (pings < 5)
                fail_msg("%u WATCHDOG=1 in 1 s with WATCHDOG_USEC=200000", pings);
        daemon_stop();

        /* Without WATCHDOG_USEC nothing pings. */
        drain_notify();
        daemon_start(NULL);
        daemon_ready();
        pings = 0;
        end = now_ms() + 500;
        while (now_ms() < end)
                if (notify_next(buf, sizeof(buf), 50) && strstr(buf, "WATCHDOG=1"))
                        pings++;
        assert_int_equal(pings, 0);
        daemon_stop();
}

/* ---- LogControl1 --------------------------------------------------------------------------- */

/* What an unprivileged user gets when it sets LogLevel: run in a child as nobody. */
static void unprivileged_set_is_denied(void) {
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                if (setresgid(65534, 65534, 65534) < 0 || setresuid(65534, 65534, 65534) < 0)
                        _exit(2);
                sd_bus *b = NULL;
                sd_bus_error e = SD_BUS_ERROR_NULL;
                if (private_bus_connect(env.bus.address, 0, &b) < 0)
                        _exit(3);
                const char *err = set_string(b, "LogLevel", "debug", &e);
                /* Reading stays open to everyone. */
                char *level = NULL;
                int r = sd_bus_get_property_string(b, DEST, LOG_PATH, LOG_IFACE, "LogLevel", NULL, &level);
                _exit(err && strcmp(err, SD_BUS_ERROR_ACCESS_DENIED) == 0 && r >= 0 ? 0 : 1);
        }
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
}

static void log_control(void **state) {
        (void) state;
        write_config("{\"log_level\": \"notice\"}");
        daemon_start(NULL);
        daemon_ready();
        assert_log_level("notice");
        char *s = get_string(LOG_PATH, LOG_IFACE, "SyslogIdentifier");
        assert_string_equal(s, "vhostmigd");
        free(s);
        s = get_string(LOG_PATH, LOG_IFACE, "LogTarget");
        assert_string_equal(s, "auto");
        free(s);

        /* What `systemctl service-log-level vhostmigd debug` does. */
        sd_bus_error e = SD_BUS_ERROR_NULL;
        assert_null(set_string(env.c, "LogLevel", "debug", &e));
        assert_log_level("debug");
        assert_true(log_contains("log level debug (was notice)"));
        /* Debug messages now appear: a reload says where it reads from. */
        reload();
        assert_true(log_contains("SIGHUP from pid"));

        assert_string_equal(set_string(env.c, "LogLevel", "loud", &e), SD_BUS_ERROR_INVALID_ARGS);
        assert_non_null(strstr(e.message, "\"loud\""));
        sd_bus_error_free(&e);
        assert_log_level("debug");

        assert_null(set_string(env.c, "LogTarget", "console", &e));
        s = get_string(LOG_PATH, LOG_IFACE, "LogTarget");
        assert_string_equal(s, "console");
        free(s);
        assert_string_equal(set_string(env.c, "LogTarget", "kmsg", &e), SD_BUS_ERROR_INVALID_ARGS);
        sd_bus_error_free(&e);
        /* "null" drops everything, debug messages included. */
        unsigned reloads = log_count("SIGHUP from pid");
        assert_null(set_string(env.c, "LogTarget", "null", &e));
        reload();
        assert_int_equal(log_count("SIGHUP from pid"), reloads);
        assert_null(set_string(env.c, "LogTarget", "auto", &e));
        reload();
        assert_int_equal(log_count("SIGHUP from pid"), reloads + 1);

        unprivileged_set_is_denied();
        assert_log_level("debug");
        daemon_stop();
}

/* ---- the journal --------------------------------------------------------------------------- */

struct journal_entry {
        char fields[24][320]; /* "NAME=value" */
        unsigned n;
};

/* journald's native protocol: "NAME=value\n", or "NAME\n" + le64 size + data + "\n" when value has a newline. */
static bool parse_entry(const char *p, size_t len, struct journal_entry *out) {
        const char *end = p + len;
        out->n = 0;
        while (p < end) {
                const char *nl = memchr(p, '\n', (size_t) (end - p));
                if (!nl)
                        return false;
                const char *eq = memchr(p, '=', (size_t) (nl - p));
                char *f = out->fields[out->n < 24 ? out->n : 23];
                if (eq) {
                        snprintf(f, 320, "%.*s", (int) (nl - p), p);
                        p = nl + 1;
                } else {
                        uint64_t size;
                        if ((size_t) (end - nl - 1) < sizeof(size))
                                return false;
                        memcpy(&size, nl + 1, sizeof(size));
                        const char *data = nl + 1 + sizeof(size);
                        if (size > (uint64_t) (end - data) - 1)
                                return false;
                        snprintf(f, 320, "%.*s=%.*s", (int) (nl - p), p, (int) size, data);
                        p = data + size + 1;
                }
                out->n++;
        }
        return true;
}

static const char *entry_field(const struct journal_entry *e, const char *name) {
        size_t n = strlen(name);
        for (unsigned i = 0; i < e->n; i++)
                if (strncmp(e->fields[i], name, n) == 0 && e->fields[i][n] == '=')
                        return e->fields[i] + n + 1;
        return NULL;
}

/* Every entry: MESSAGE, PRIORITY and SYSLOG_IDENTIFIER, and no field without a value. */
static void check_entry(const struct journal_entry *e) {
        for (unsigned i = 0; i < e->n; i++) {
                const char *eq = strchr(e->fields[i], '=');
                if (!eq || !eq[1])
                        fail_msg("empty journal field \"%s\"", e->fields[i]);
        }
        assert_non_null(entry_field(e, "MESSAGE"));
        assert_non_null(entry_field(e, "PRIORITY"));
        const char *ident = entry_field(e, "SYSLOG_IDENTIFIER");
        assert_non_null(ident);
        assert_string_equal(ident, "vhostmigd");
}

/* Entries until one whose MESSAGE contains `needle` arrives; that one in *found. */
static void journal_wait_for(int fd, const char *needle, struct journal_entry *found, unsigned timeout_ms) {
        static char buf[64 * 1024];
        uint64_t deadline = now_ms() + timeout_ms;
        while (now_ms() < deadline) {
                ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
                if (n < 0) {
                        assert_true(errno == EAGAIN || errno == EINTR);
                        sleep_ms(5);
                        continue;
                }
                if (!parse_entry(buf, (size_t) n, found))
                        fail_msg("cannot parse a journal datagram of %zd bytes", n);
                check_entry(found);
                const char *m = entry_field(found, "MESSAGE");
                if (strstr(m, needle))
                        return;
        }
        dump_log();
        fail_msg("no journal entry with \"%s\" within %u ms", needle, timeout_ms);
}

static int sealed_memfd(size_t size) {
        int fd = memfd_create("ops-guest", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, (off_t) size), 0);
        assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
        return fd;
}

/* CreateVm with 2 MiB of sealed memory at GPA 0: the VM's object path (malloc'd). */
static char *create_vm(const char *name) {
        const size_t size = 2u << 20;
        int fd = sealed_memfd(size);
        sd_bus_error e = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        int r = sd_bus_call_method(env.c, DEST, ROOT_PATH, MANAGER, "CreateVm", &e, &reply, "sa(httt)a{sv}", name, 1,
                                   fd, (uint64_t) 0, (uint64_t) size, (uint64_t) 0, 0);
        close(fd);
        const char *path = NULL;
        if (r < 0 || sd_bus_message_read(reply, "o", &path) < 0)
                fail_msg("CreateVm: %s", e.message ? e.message : strerror(-r));
        char *copy = strdup(path);
        sd_bus_message_unref(reply);
        sd_bus_error_free(&e);
        return copy;
}

/* A device on a test back-end without LOG_SHMFD: the VM can no longer migrate. */
static pid_t add_blocking_device(const char *vm) {
        struct tb_config cfg;
        tb_config_init(&cfg);
        cfg.no_log_shmfd = true;
        char socket[128];
        snprintf(socket, sizeof(socket), "%s/nolog.sock", env.dir);
        pid_t pid;
        assert_int_equal(tb_spawn_listen(&cfg, socket, &pid), 0);
        const uint64_t ring = 0x10000;
        int kick = eventfd(0, EFD_CLOEXEC), call = eventfd(0, EFD_CLOEXEC);
        int kick2 = eventfd(0, EFD_CLOEXEC), call2 = eventfd(0, EFD_CLOEXEC);
        sd_bus_error e = SD_BUS_ERROR_NULL;
        int r = sd_bus_call_method(env.c, DEST, vm, "org.vhostmig1.Vm", "AddDevice", &e, NULL, "sa(uttthh)a{sv}",
                                   socket, 2, 256u, ring, ring + 0x1000, ring + 0x2000, kick, call, 256u, ring + 0x4000,
                                   ring + 0x5000, ring + 0x6000, kick2, call2, 0);
        if (r < 0)
                fail_msg("AddDevice: %s", e.message ? e.message : strerror(-r));
        sd_bus_error_free(&e);
        close(kick);
        close(call);
        close(kick2);
        close(call2);
        return pid;
}

/* Binds JOURNAL_SOCKET; false (skip) when something else provides one.  *made: directories we created. */
static bool journal_bind(int *fd, unsigned *made) {
        *made = 0;
        if (geteuid() != 0 || access(JOURNAL_SOCKET, F_OK) == 0)
                return false;
        if (mkdir("/run/systemd", 0755) == 0)
                *made = 2;
        if (mkdir(JOURNAL_DIR, 0755) == 0 && *made == 0)
                *made = 1;
        *fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un sa = { .sun_family = AF_UNIX, .sun_path = JOURNAL_SOCKET };
        if (*fd < 0 || bind(*fd, (struct sockaddr *) &sa, sizeof(sa)) < 0) {
                /* Another test got there first. */
                if (*fd >= 0)
                        close(*fd);
                *fd = -1;
                return false;
        }
        int size = 1 << 20;
        (void) setsockopt(*fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
        return true;
}

static void journal_unbind(void) {
        if (env.journal_fd < 0)
                return;
        close(env.journal_fd);
        env.journal_fd = -1;
        (void) unlink(JOURNAL_SOCKET);
        if (env.journal_made >= 1)
                (void) rmdir(JOURNAL_DIR);
        if (env.journal_made >= 2)
                (void) rmdir("/run/systemd");
}

static void journal_fields(void **state) {
        (void) state;
        if (!journal_bind(&env.journal_fd, &env.journal_made)) {
                fprintf(stderr, "a journal socket exists (or not root): skipped\n");
                skip();
        }
        int fd = env.journal_fd;
        write_config("{\"log_level\": \"debug\"}");
        /* What systemd sets when stderr is connected to the journal. */
        static const char *const extra[] = { "JOURNAL_STREAM=8:12345", NULL };
        daemon_start(extra);
        daemon_ready();
        struct journal_entry e;
        journal_wait_for(fd, "ready on org.vhostmig1", &e, 5000);
        assert_string_equal(entry_field(&e, "PRIORITY"), "6");
        /* A message about no VM has no VHOSTMIG_VM field at all, rather than an empty one. */
        assert_null(entry_field(&e, "VHOSTMIG_VM"));
        assert_null(entry_field(&e, "MESSAGE_ID"));

        /* An event: its MESSAGE_ID (messages.h) and the VM it concerns. */
        char *vm = create_vm("opsvm");
        journal_wait_for(fd, "VM created", &e, 5000);
        assert_string_equal(entry_field(&e, "MESSAGE_ID"), VHOSTMIG_MESSAGE_VM_CREATED);
        assert_string_equal(entry_field(&e, "VHOSTMIG_VM"), "opsvm");
        /* A back-end that cannot log: the device connects, and the VM's migration is blocked, with the reason. */
        pid_t backend = add_blocking_device(vm);
        journal_wait_for(fd, "device running", &e, 5000);
        assert_string_equal(entry_field(&e, "MESSAGE_ID"), VHOSTMIG_MESSAGE_DEVICE_CONNECTED);
        assert_non_null(strstr(entry_field(&e, "VHOSTMIG_DEVICE"), "nolog.sock"));
        journal_wait_for(fd, "migration blocked", &e, 5000);
        assert_string_equal(entry_field(&e, "MESSAGE_ID"), VHOSTMIG_MESSAGE_MIGRATION_BLOCKED);
        assert_non_null(strstr(entry_field(&e, "MESSAGE"), "LOG_SHMFD"));
        daemon_stop();
        (void) tb_stop(backend);
        free(vm);
        /* Nothing went to stderr but what systemd would not see anyway. */
        assert_false(log_contains("ready on org.vhostmig1"));
        journal_unbind();
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(sighup_reloads, setup, teardown),
                cmocka_unit_test_setup_teardown(watchdog_pings, setup, teardown),
                cmocka_unit_test_setup_teardown(log_control, setup, teardown),
                cmocka_unit_test_setup_teardown(journal_fields, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

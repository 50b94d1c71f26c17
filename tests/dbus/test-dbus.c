/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vhostmigd's D-Bus API (docs/dbus-api.md) end to end: the daemon on a
 * private bus (tests/dbus/start-bus.sh, with the real policy or without it),
 * driven by a client the way a VMM drives it, its devices served by the
 * project's recording test back-end (tests/backend/test-backend.h).
 *
 * Groups, each with its own bus and daemon:
 *   dbus-policy      the real policy: every method and property, the signals,
 *                    bad arguments, an unprivileged caller refused by the bus,
 *                    a hung back-end that must not freeze the others, and a
 *                    clean exit on SIGTERM;
 *   dbus-permissive  no vhostmig policy: the daemon's own root check;
 *   dbus-shutdown    SIGTERM with VMs running: rings stopped, logging off,
 *                    connections closed, server sockets removed, exit 0;
 *   dbus-shutdown-destroy  SIGTERM while a DestroyVm is under way: the
 *                    teardown finishes and is answered before the exit.
 *
 * Environment (set by meson): VHOSTMIGD (the daemon), START_BUS (start-bus.sh).
 * Needs root (the policy gives the name to root; the tests drop to 65534).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
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

#include <systemd/sd-bus.h>

#include "tests/common/clock.h"
#include "tests/common/fd-count.h"
#include "tests/common/private-bus.h"
#include "proto/vhost-user.h"
#include "proto/vhost-user-table.h"
#include "tests/backend/test-backend.h"

#define DEST       "org.vhostmig1"
#define ROOT_PATH  "/org/vhostmig1"
#define VM_PREFIX  "/org/vhostmig1/vm"
#define MANAGER_IF "org.vhostmig1.Manager"
#define VM_IF      "org.vhostmig1.Vm"
#define DEV_IF     "org.vhostmig1.Device"
#define OM_IF      "org.freedesktop.DBus.ObjectManager"
#define PROPS_IF   "org.freedesktop.DBus.Properties"
#define ERR(name)  "org.vhostmig1.Error." name

#define DAEMON_MESSAGE_NOT_ROOT "only root may change vhostmig state"

/* The daemon's configuration for these tests. */
#define REQUEST_TIMEOUT_MS  1500u
#define MONITOR_INTERVAL_MS 100u
#define SERVER_SOCKET_MODE  0660u
#define SERVER_SOCKET_GROUP "nogroup"
/* Every method call of the tests' clients. */
#define CALL_TIMEOUT_USEC (UINT64_C(10) * 1000000u)

/* Guest memory: one memfd region at GPA 0; rings from 64 KiB on, 16 KiB apart (at most 32). */
#define MEM_SIZE    (UINT64_C(2) << 20)
#define RING_SIZE   256u
#define RING_BASE   UINT64_C(0x10000)
#define RING_STRIDE UINT64_C(0x4000)
#define MAX_QUEUES  32u

#define MAC    "52:54:00:12:34:56"
#define NOBODY 65534

#define LOG_ALL_BIT (UINT64_C(1) << VHU_VF_LOG_ALL)

/* ---- small things ------------------------------------------------------------------ */

static bool has_prefix(const char *s, const char *prefix) {
        return strncmp(s, prefix, strlen(prefix)) == 0;
}

static unsigned strv_length(char **l) {
        unsigned n = 0;
        while (l && l[n])
                n++;
        return n;
}

static bool strv_contains(char **l, const char *s) {
        for (unsigned i = 0; l && l[i]; i++)
                if (strcmp(l[i], s) == 0)
                        return true;
        return false;
}

static void strv_free(char **l) {
        for (unsigned i = 0; l && l[i]; i++)
                free(l[i]);
        free(l);
}

/* Waits up to timeout_ms (0: just looks) for a child: its wait status, or -ETIMEDOUT (still running). */
static int wait_child(pid_t pid, unsigned timeout_ms) {
        /* tb_wait_exit takes 0 as "no deadline": the shortest real one instead. */
        return tb_wait_exit(pid, timeout_ms ? (unsigned) scaled_ms(timeout_ms) : 1);
}

/* ---- the environment: a private bus, the daemon, a root client ---------------------------- */

#define MAX_BACKENDS 16
#define MAX_SLOTS    16

static struct {
        struct private_bus bus;
        bool bus_up;
        pid_t daemon; /* vhostmigd, our child; -1 when not running */
        char dir[64]; /* config, daemon log, sockets, records */
        char config[128];
        char daemon_log[128];
        sd_bus *c;                     /* the root client */
        pid_t backends[MAX_BACKENDS];  /* test back-ends of the running test */
        sd_bus_slot *slots[MAX_SLOTS]; /* its matches and pending calls */
} env;

static void dump_daemon_log(void) {
        FILE *f = fopen(env.daemon_log, "re");
        if (!f)
                return;
        char line[1200];
        fprintf(stderr, "---- vhostmigd log (%s) ----\n", env.daemon_log);
        while (fgets(line, sizeof(line), f))
                fprintf(stderr, "vhostmigd: %s", line);
        fprintf(stderr, "---- end of vhostmigd log ----\n");
        fclose(f);
}

static int daemon_start(void) {
        const char *bin = getenv("VHOSTMIGD");
        if (!bin) {
                fprintf(stderr, "VHOSTMIGD is not set (run the test with meson test)\n");
                return -EINVAL;
        }
        fflush(stdout);
        fflush(stderr);
        pid_t pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                int log = open(env.daemon_log, O_WRONLY | O_CREAT | O_APPEND, 0644);
                int null = open("/dev/null", O_RDONLY);
                if (log < 0 || null < 0)
                        _exit(126);
                dup2(null, 0);
                dup2(log, 1);
                dup2(log, 2);
                close_range(3, ~0u, 0);
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                setenv("DBUS_SYSTEM_BUS_ADDRESS", env.bus.address, 1);
                unsetenv("NOTIFY_SOCKET");
                unsetenv("JOURNAL_STREAM");
                execl(bin, "vhostmigd", "--config", env.config, (char *) NULL);
                _exit(127);
        }
        env.daemon = pid;

        /* Ready once it owns its name (bounded; it must not die on the way). */
        uint64_t deadline = now_ms() + scaled_ms(10000);
        for (;;) {
                bool has = false;
                if (private_bus_name_has_owner(env.c, DEST, &has) == 0 && has)
                        return 0;
                int status = wait_child(pid, 0);
                if (status >= 0) {
                        char why[64];
                        describe_status(status, why, sizeof(why));
                        fprintf(stderr, "vhostmigd exited before owning %s (%s)\n", DEST, why);
                        env.daemon = -1;
                        dump_daemon_log();
                        return -ECHILD;
                }
                if (now_ms() >= deadline) {
                        fprintf(stderr, "vhostmigd did not own %s within 10 s\n", DEST);
                        dump_daemon_log();
                        return -ETIMEDOUT;
                }
                sleep_ms(20);
        }
}

/* SIGTERM and wait: the wait status, or -ETIMEDOUT (then it was killed). */
static int daemon_stop(unsigned timeout_ms) {
        if (env.daemon <= 0)
                return -ESRCH;
        pid_t pid = env.daemon;
        env.daemon = -1;
        kill(pid, SIGTERM);
        int status = wait_child(pid, timeout_ms);
        if (status == -ETIMEDOUT) {
                kill(pid, SIGKILL);
                waitpid(pid, NULL, 0);
        }
        return status;
}

static bool daemon_alive(void) {
        return env.daemon > 0 && wait_child(env.daemon, 0) == -ETIMEDOUT;
}

static int daemon_fd_count(void) {
        return count_process_fds(env.daemon);
}

/* The daemon's fd count once it has settled at `expected` (teardown is deferred), or where it stayed. */
static int daemon_fd_count_settled(int expected, unsigned timeout_ms) {
        uint64_t deadline = now_ms() + scaled_ms(timeout_ms);
        for (;;) {
                int n = daemon_fd_count();
                if (n == expected || now_ms() >= deadline)
                        return n;
                sleep_ms(20);
        }
}

static void remove_dir_files(const char *dir) {
        DIR *d = opendir(dir);
        if (!d)
                return;
        struct dirent *de;
        while ((de = readdir(d)))
                if (de->d_name[0] != '.')
                        (void) unlinkat(dirfd(d), de->d_name, 0);
        closedir(d);
        rmdir(dir);
}

static int group_setup(bool permissive) {
        memset(&env, 0, sizeof(env));
        env.daemon = -1;
        snprintf(env.dir, sizeof(env.dir), "/tmp/vhostmig-dbus-XXXXXX");
        if (!mkdtemp(env.dir)) {
                fprintf(stderr, "mkdtemp: %m\n");
                return -1;
        }
        snprintf(env.config, sizeof(env.config), "%s/vhostmigd.json", env.dir);
        snprintf(env.daemon_log, sizeof(env.daemon_log), "%s/vhostmigd.log", env.dir);
        FILE *f = fopen(env.config, "we");
        if (!f)
                return -1;
        fprintf(f,
                "{ \"request_timeout_ms\": %u, \"monitor_interval_ms\": %u,\n"
                "  \"server_socket_mode\": \"%04o\", \"server_socket_group\": \"%s\" }\n",
                REQUEST_TIMEOUT_MS, MONITOR_INTERVAL_MS, SERVER_SOCKET_MODE, SERVER_SOCKET_GROUP);
        fclose(f);

        if (private_bus_start(&env.bus, permissive) < 0)
                return -1;
        env.bus_up = true;
        int r = private_bus_connect(env.bus.address, CALL_TIMEOUT_USEC, &env.c);
        if (r < 0) {
                fprintf(stderr, "cannot connect to %s: %s\n", env.bus.address, strerror(-r));
                return -1;
        }
        return daemon_start() < 0 ? -1 : 0;
}

static int group_setup_policy(void **state) {
        (void) state;
        return group_setup(false);
}

static int group_setup_permissive(void **state) {
        (void) state;
        return group_setup(true);
}

static int group_teardown(void **state) {
        (void) state;
        if (env.daemon > 0) {
                fprintf(stderr, "vhostmigd (pid %d) still running at the end of the group: stopping it\n",
                        (int) env.daemon);
                (void) daemon_stop(5000);
        }
        dump_daemon_log();
        env.c = sd_bus_flush_close_unref(env.c);
        if (env.bus_up)
                (void) private_bus_stop(&env.bus);
        env.bus_up = false;
        remove_dir_files(env.dir);
        return 0;
}

/* ---- per test: back-ends and slots to clean up ------------------------------------------------ */

static void track_backend(pid_t pid) {
        for (unsigned i = 0; i < MAX_BACKENDS; i++)
                if (env.backends[i] <= 0) {
                        env.backends[i] = pid;
                        return;
                }
        fail_msg("more than %u test back-ends in one test", MAX_BACKENDS);
}

static void untrack_backend(pid_t pid) {
        for (unsigned i = 0; i < MAX_BACKENDS; i++)
                if (env.backends[i] == pid)
                        env.backends[i] = 0;
}

static void track_slot(sd_bus_slot *slot) {
        for (unsigned i = 0; i < MAX_SLOTS; i++)
                if (!env.slots[i]) {
                        env.slots[i] = slot;
                        return;
                }
        sd_bus_slot_unref(slot);
        fail_msg("more than %u slots in one test", MAX_SLOTS);
}

static int test_setup(void **state) {
        (void) state;
        memset(env.backends, 0, sizeof(env.backends));
        memset(env.slots, 0, sizeof(env.slots));
        return 0;
}

static int test_teardown(void **state) {
        (void) state;
        for (unsigned i = 0; i < MAX_SLOTS; i++)
                env.slots[i] = sd_bus_slot_unref(env.slots[i]);
        /* What a failed test left behind: its VMs and back-ends. */
        if (daemon_alive() && env.c) {
                char **vms = NULL;
                if (sd_bus_get_property_strv(env.c, DEST, ROOT_PATH, MANAGER_IF, "Vms", NULL, &vms) >= 0)
                        for (unsigned i = 0; vms && vms[i]; i++) {
                                char *name = NULL;
                                if (sd_bus_get_property_string(env.c, DEST, vms[i], VM_IF, "Name", NULL, &name) >= 0)
                                        (void) sd_bus_call_method(env.c, DEST, ROOT_PATH, MANAGER_IF, "DestroyVm", NULL,
                                                                  NULL, "s", name);
                                free(name);
                        }
                strv_free(vms);
        }
        for (unsigned i = 0; i < MAX_BACKENDS; i++)
                if (env.backends[i] > 0)
                        (void) tb_stop(env.backends[i]);
        memset(env.backends, 0, sizeof(env.backends));
        /* Signals and replies nobody waits for any more. */
        if (env.c)
                while (sd_bus_process(env.c, NULL) > 0)
                        ;
        return 0;
}

/* ---- calls ---------------------------------------------------------------------------------- */

static const char *error_text(const sd_bus_error *e, int r) {
        return e->message ? e->message : strerror(-r);
}

static sd_bus_message *call(const char *path, const char *iface, const char *member, const char *types, ...) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        va_list ap;
        va_start(ap, types);
        int r = sd_bus_call_methodv(env.c, DEST, path, iface, member, &e, &reply, types, ap);
        va_end(ap);
        if (r < 0)
                fail_msg("%s.%s on %s failed: %s: %s", iface, member, path, e.name ? e.name : "(errno)",
                         error_text(&e, r));
        sd_bus_error_free(&e);
        return reply;
}

static void check_error(int r, const sd_bus_error *e, const char *what, const char *error, const char *needle,
                        const char *needle2) {
        if (r >= 0)
                fail_msg("%s succeeded; expected %s", what, error);
        if (!sd_bus_error_has_name(e, error))
                fail_msg("%s: expected %s, got %s: %s", what, error, e->name ? e->name : "(errno)", error_text(e, r));
        if (needle && (!e->message || !strstr(e->message, needle)))
                fail_msg("%s: %s \"%s\" does not mention \"%s\"", what, error, e->message ? e->message : "", needle);
        if (needle2 && (!e->message || !strstr(e->message, needle2)))
                fail_msg("%s: %s \"%s\" does not mention \"%s\"", what, error, e->message ? e->message : "", needle2);
}

/* A call that must fail with `error`, its message mentioning needle (and needle2) when given. */
static void call_error(const char *error, const char *needle, const char *needle2, const char *path, const char *iface,
                       const char *member, const char *types, ...) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        va_list ap;
        va_start(ap, types);
        int r = sd_bus_call_methodv(env.c, DEST, path, iface, member, &e, &reply, types, ap);
        va_end(ap);
        sd_bus_message_unref(reply);
        char what[512];
        snprintf(what, sizeof(what), "%s.%s on %s", iface, member, path);
        check_error(r, &e, what, error, needle, needle2);
        sd_bus_error_free(&e);
}

static sd_bus_message *send_ok(sd_bus_message *m, const char *what) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        int r = sd_bus_call(env.c, m, 0, &e, &reply);
        sd_bus_message_unref(m);
        if (r < 0)
                fail_msg("%s failed: %s: %s", what, e.name ? e.name : "(errno)", error_text(&e, r));
        sd_bus_error_free(&e);
        return reply;
}

static void send_error(sd_bus_message *m, const char *what, const char *error, const char *needle,
                       const char *needle2) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        int r = sd_bus_call(env.c, m, 0, &e, &reply);
        sd_bus_message_unref(m);
        sd_bus_message_unref(reply);
        check_error(r, &e, what, error, needle, needle2);
        sd_bus_error_free(&e);
}

/* An asynchronous call and its outcome. */
struct async_call {
        bool done;
        uint64_t sent_ms, done_ms;
        char error_name[128];
        char error_message[512];
        char path[256]; /* an 'o' reply */
};

static int on_async_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        (void) ret_error;
        struct async_call *a = userdata;
        a->done = true;
        a->done_ms = now_ms();
        const sd_bus_error *e = sd_bus_message_get_error(m);
        if (e) {
                snprintf(a->error_name, sizeof(a->error_name), "%s", e->name);
                snprintf(a->error_message, sizeof(a->error_message), "%s", e->message ? e->message : "");
                return 0;
        }
        const char *path;
        if (sd_bus_message_read(m, "o", &path) > 0)
                snprintf(a->path, sizeof(a->path), "%s", path);
        return 0;
}

static void send_async(sd_bus_message *m, struct async_call *a) {
        memset(a, 0, sizeof(*a));
        sd_bus_slot *slot = NULL;
        int r = sd_bus_call_async(env.c, &slot, m, on_async_reply, a, 0);
        sd_bus_message_unref(m);
        if (r < 0)
                fail_msg("sd_bus_call_async: %s", strerror(-r));
        a->sent_ms = now_ms();
        track_slot(slot);
        r = sd_bus_flush(env.c);
        if (r < 0)
                fail_msg("sd_bus_flush: %s", strerror(-r));
}

/* Dispatches what arrived; waits at most wait_ms for more. */
static void pump(unsigned wait_ms) {
        int r;
        while ((r = sd_bus_process(env.c, NULL)) > 0)
                ;
        if (r < 0)
                fail_msg("sd_bus_process: %s", strerror(-r));
        if (wait_ms)
                (void) sd_bus_wait(env.c, (uint64_t) wait_ms * 1000u);
        while ((r = sd_bus_process(env.c, NULL)) > 0)
                ;
}

static void wait_async(struct async_call *a, unsigned timeout_ms, const char *what) {
        uint64_t deadline = now_ms() + scaled_ms(timeout_ms);
        while (!a->done) {
                if (now_ms() >= deadline)
                        fail_msg("%s: no reply within %u ms", what, timeout_ms);
                pump(20);
        }
}

/* ---- properties ---------------------------------------------------------------------------- */

static void get_trivial(const char *path, const char *iface, const char *name, char type, void *out) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        int r = sd_bus_get_property_trivial(env.c, DEST, path, iface, name, &e, type, out);
        if (r < 0)
                fail_msg("reading %s.%s on %s: %s: %s", iface, name, path, e.name ? e.name : "(errno)",
                         error_text(&e, r));
        sd_bus_error_free(&e);
}

static uint64_t prop_t(const char *path, const char *iface, const char *name) {
        uint64_t v = 0;
        get_trivial(path, iface, name, 't', &v);
        return v;
}

static uint32_t prop_u(const char *path, const char *iface, const char *name) {
        uint32_t v = 0;
        get_trivial(path, iface, name, 'u', &v);
        return v;
}

static uint16_t prop_q(const char *path, const char *iface, const char *name) {
        uint16_t v = 0;
        get_trivial(path, iface, name, 'q', &v);
        return v;
}

static bool prop_b(const char *path, const char *iface, const char *name) {
        int v = 0;
        get_trivial(path, iface, name, 'b', &v);
        return v;
}

/* malloc'd */
static char *prop_s(const char *path, const char *iface, const char *name) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        char *v = NULL;
        int r = sd_bus_get_property_string(env.c, DEST, path, iface, name, &e, &v);
        if (r < 0)
                fail_msg("reading %s.%s on %s: %s: %s", iface, name, path, e.name ? e.name : "(errno)",
                         error_text(&e, r));
        sd_bus_error_free(&e);
        return v;
}

/* 'as' or 'ao'; strv_free() */
static char **prop_strv(const char *path, const char *iface, const char *name) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        char **v = NULL;
        int r = sd_bus_get_property_strv(env.c, DEST, path, iface, name, &e, &v);
        if (r < 0)
                fail_msg("reading %s.%s on %s: %s: %s", iface, name, path, e.name ? e.name : "(errno)",
                         error_text(&e, r));
        sd_bus_error_free(&e);
        if (!v)
                v = calloc(1, sizeof(char *));
        return v;
}

static unsigned prop_au(const char *path, const char *iface, const char *name, uint32_t *out, unsigned max) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        int r = sd_bus_get_property(env.c, DEST, path, iface, name, &e, &reply, "au");
        if (r < 0)
                fail_msg("reading %s.%s on %s: %s: %s", iface, name, path, e.name ? e.name : "(errno)",
                         error_text(&e, r));
        const void *data = NULL;
        size_t size = 0;
        r = sd_bus_message_read_array(reply, 'u', &data, &size);
        if (r < 0)
                fail_msg("reading %s.%s on %s: %s", iface, name, path, strerror(-r));
        unsigned n = (unsigned) (size / sizeof(uint32_t));
        if (n > max)
                fail_msg("%s.%s has %u entries, more than %u", iface, name, n, max);
        if (n)
                memcpy(out, data, n * sizeof(uint32_t));
        sd_bus_message_unref(reply);
        sd_bus_error_free(&e);
        return n;
}

static void prop_error(const char *path, const char *iface, const char *name, const char *error) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        int r = sd_bus_call_method(env.c, DEST, path, PROPS_IF, "Get", &e, &reply, "ss", iface, name);
        sd_bus_message_unref(reply);
        char what[512];
        snprintf(what, sizeof(what), "reading %s.%s on %s", iface, name, path);
        check_error(r, &e, what, error, path, NULL);
        sd_bus_error_free(&e);
}

#define assert_prop_s(path, iface, name, expected)                                                           \
        do {                                                                                                 \
                char *v_ = prop_s(path, iface, name);                                                        \
                if (strcmp(v_, expected) != 0)                                                               \
                        fail_msg("%s.%s on %s is \"%s\", expected \"%s\"", iface, name, path, v_, expected); \
                free(v_);                                                                                    \
        } while (0)

#define assert_prop_t(path, iface, name, expected)                                                                \
        do {                                                                                                      \
                uint64_t v_ = prop_t(path, iface, name), e_ = (expected);                                         \
                if (v_ != e_)                                                                                     \
                        fail_msg("%s.%s on %s is 0x%" PRIx64 ", expected 0x%" PRIx64, iface, name, path, v_, e_); \
        } while (0)

static unsigned prop_strv_length(const char *path, const char *iface, const char *name) {
        char **l = prop_strv(path, iface, name);
        unsigned n = strv_length(l);
        strv_free(l);
        return n;
}

/* ---- guest memory, VMs, devices ------------------------------------------------------------------ */

struct queue_arg {
        uint32_t size;
        uint64_t desc, avail, used;
        int kick, call;
};

struct guest {
        int memfd;
        unsigned nq;
        struct queue_arg q[MAX_QUEUES];
};

/* Guest memory as a VMM must hand it over: a memfd sealed against shrinking. */
static int sealed_memfd(const char *name, uint64_t size) {
        int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0)
                return -errno;
        if (ftruncate(fd, (off_t) size) < 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0) {
                int r = -errno;
                close(fd);
                return r;
        }
        return fd;
}

/* A memfd of MEM_SIZE and nq split rings laid out in it, with their eventfds. */
static void guest_init(struct guest *g, unsigned nq) {
        memset(g, 0, sizeof(*g));
        g->memfd = sealed_memfd("vhostmig-test-guest", MEM_SIZE);
        if (g->memfd < 0)
                fail_msg("guest memory: %s", strerror(-g->memfd));
        g->nq = nq;
        for (unsigned i = 0; i < nq; i++) {
                uint64_t base = RING_BASE + i * RING_STRIDE;
                g->q[i] = (struct queue_arg){
                        .size = RING_SIZE,
                        .desc = base,
                        .avail = base + 0x1000,
                        .used = base + 0x2000,
                        .kick = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK),
                        .call = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK),
                };
                if (g->q[i].kick < 0 || g->q[i].call < 0)
                        fail_msg("eventfd: %s", strerror(errno));
        }
}

static void guest_fini(struct guest *g) {
        if (g->memfd >= 0)
                close(g->memfd);
        g->memfd = -1;
        for (unsigned i = 0; i < g->nq; i++) {
                close(g->q[i].kick);
                close(g->q[i].call);
        }
        g->nq = 0;
}

static char *expected_vm_path(const char *name) {
        char *p = NULL;
        if (sd_bus_path_encode(VM_PREFIX, name, &p) < 0)
                fail_msg("sd_bus_path_encode(%s)", name);
        return p;
}

/* CreateVm with one region (memfd, GPA 0, size, offset 0): the VM's object path (malloc'd). */
static char *create_vm(const char *name, int memfd, uint64_t size) {
        sd_bus_message *reply = call(ROOT_PATH, MANAGER_IF, "CreateVm", "sa(httt)a{sv}", name, 1u, memfd, UINT64_C(0),
                                     size, UINT64_C(0), 0u);
        const char *path;
        int r = sd_bus_message_read(reply, "o", &path);
        if (r < 0)
                fail_msg("CreateVm reply: %s", strerror(-r));
        char *p = strdup(path);
        sd_bus_message_unref(reply);
        char *expected = expected_vm_path(name);
        if (strcmp(p, expected) != 0)
                fail_msg("CreateVm(%s) returned %s, expected %s", name, p, expected);
        free(expected);
        return p;
}

static void destroy_vm(const char *name) {
        sd_bus_message_unref(call(ROOT_PATH, MANAGER_IF, "DestroyVm", "s", name));
}

struct device_args {
        const char *socket;
        bool server;
        uint64_t features;
        uint32_t queue_pairs;
        const char *mac;
        uint16_t mtu;
        const struct queue_arg *q;
        unsigned nq;
        bool log_switch_locked;
        /* One more option of type "s" (a bad one, for the tests of option checking). */
        const char *extra_key, *extra_type, *extra_value;
};

/* One {sv} of an a{sv} being written. */
#define APPEND_OPTION(m, r, key, type, value)                                             \
        do {                                                                              \
                if ((r) >= 0)                                                             \
                        (r) = sd_bus_message_append((m), "{sv}", (key), (type), (value)); \
        } while (0)

/*
 * AddDevice(socket, queues, options): the options carry what differs from
 * the defaults, and QueuePairs whenever it is not the queues given / 2.
 */
static sd_bus_message *add_device_message(sd_bus *bus, const char *vm_path, const struct device_args *a) {
        sd_bus_message *m = NULL;
        int r = sd_bus_message_new_method_call(bus, &m, DEST, vm_path, VM_IF, "AddDevice");
        if (r >= 0)
                r = sd_bus_message_append(m, "s", a->socket);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "(uttthh)");
        for (unsigned i = 0; r >= 0 && i < a->nq; i++)
                r = sd_bus_message_append(m, "(uttthh)", a->q[i].size, a->q[i].desc, a->q[i].avail, a->q[i].used,
                                          a->q[i].kick, a->q[i].call);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (a->server)
                APPEND_OPTION(m, r, "Server", "b", 1);
        APPEND_OPTION(m, r, "Features", "t", a->features);
        if (a->queue_pairs != a->nq / 2 || a->nq % 2)
                APPEND_OPTION(m, r, "QueuePairs", "u", a->queue_pairs);
        if (a->mac)
                APPEND_OPTION(m, r, "Mac", "s", a->mac);
        if (a->mtu)
                APPEND_OPTION(m, r, "Mtu", "q", a->mtu);
        if (a->log_switch_locked)
                APPEND_OPTION(m, r, "LogSwitchLocked", "b", 1);
        if (a->extra_key)
                APPEND_OPTION(m, r, a->extra_key, a->extra_type, a->extra_value);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r < 0) {
                sd_bus_message_unref(m);
                return NULL;
        }
        return m;
}

static sd_bus_message *add_device_msg(const char *vm_path, const struct device_args *a) {
        sd_bus_message *m = add_device_message(env.c, vm_path, a);
        if (!m)
                fail_msg("cannot build AddDevice for %s", vm_path);
        return m;
}

/* The usual device: one queue pair of g, the features the back-end offers. */
static struct device_args std_device(const char *socket, bool server, uint64_t features, const struct guest *g) {
        return (struct device_args){
                .socket = socket,
                .server = server,
                .features = features,
                .queue_pairs = 1,
                .mac = MAC,
                .mtu = 1500,
                .q = g->q,
                .nq = 2,
        };
}

/* AddDevice that must succeed: the device path (malloc'd), checked against VM_PATH/dev/N. */
static char *add_device(const char *vm_path, const struct device_args *a, unsigned expected_number) {
        sd_bus_message *reply = send_ok(add_device_msg(vm_path, a), "AddDevice");
        const char *path;
        int r = sd_bus_message_read(reply, "o", &path);
        if (r < 0)
                fail_msg("AddDevice reply: %s", strerror(-r));
        char *p = strdup(path);
        sd_bus_message_unref(reply);
        char expected[512];
        snprintf(expected, sizeof(expected), "%s/dev/%u", vm_path, expected_number);
        if (strcmp(p, expected) != 0)
                fail_msg("AddDevice returned %s, expected %s", p, expected);
        return p;
}

/* ---- test back-ends ---------------------------------------------------------------------------- */

struct backend {
        struct tb_config cfg;
        char socket[128];
        char record[128];
        pid_t pid;
};

static void backend_init(struct backend *b, const char *name) {
        memset(b, 0, sizeof(*b));
        tb_config_init(&b->cfg);
        snprintf(b->socket, sizeof(b->socket), "%s/%s.sock", env.dir, name);
        snprintf(b->record, sizeof(b->record), "%s/%s.rec", env.dir, name);
        unlink(b->socket);
        unlink(b->record);
        b->cfg.record_path = b->record;
        b->cfg.io_timeout_ms = 3000;
        b->cfg.max_connections = 1;
        b->pid = -1;
}

static void backend_add_fault(struct backend *b, const char *spec) {
        struct tb_fault f;
        assert_int_equal(tb_parse_fault(spec, &f), 0);
        assert_int_equal(tb_config_add_fault(&b->cfg, &f), 0);
}

static void backend_listen(struct backend *b) {
        int r = tb_spawn_listen(&b->cfg, b->socket, &b->pid);
        if (r < 0)
                fail_msg("tb_spawn_listen(%s): %s", b->socket, strerror(-r));
        track_backend(b->pid);
}

/* Returns once connected to the daemon's listening socket. */
static void backend_connect(struct backend *b) {
        int r = tb_spawn_connect(&b->cfg, b->socket, &b->pid);
        if (r < 0)
                fail_msg("tb_spawn_connect(%s): %s", b->socket, strerror(-r));
        track_backend(b->pid);
}

/* It served its connections and must exit by itself, cleanly (its record is then complete). */
static void backend_wait_exit(struct backend *b, unsigned timeout_ms) {
        int status = tb_wait_exit(b->pid, (unsigned) scaled_ms(timeout_ms));
        if (status == -ETIMEDOUT)
                fail_msg("the test back-end at %s did not exit within %u ms", b->socket, timeout_ms);
        untrack_backend(b->pid);
        b->pid = -1;
        if (status < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                char why[64];
                describe_status(status, why, sizeof(why));
                fail_msg("the test back-end at %s ended with %s", b->socket, why);
        }
}

/* cmocka cuts long failure messages: records go to stderr whole. */
static void print_record(const char *path) {
        char *text = tb_record_read(path);
        fprintf(stderr, "---- record %s ----\n%s---- end of record ----\n", path, text ? text : "(missing)\n");
        free(text);
}

/* A line of the record starting with prefix and containing needle (NULL: any). */
static bool record_has(const struct backend *b, const char *prefix, const char *needle) {
        char *text = tb_record_read(b->record);
        bool found = false;
        char *save = NULL;
        for (char *line = text ? strtok_r(text, "\n", &save) : NULL; line && !found; line = strtok_r(NULL, "\n", &save))
                found = has_prefix(line, prefix) && (!needle || strstr(line, needle));
        free(text);
        return found;
}

static void assert_record_has(const struct backend *b, const char *prefix, const char *needle) {
        if (!record_has(b, prefix, needle)) {
                print_record(b->record);
                fail_msg("the record %s has no \"%s\" line%s%s (above)", b->record, prefix, needle ? " with " : "",
                         needle ? needle : "");
        }
}

static void assert_no_violation(const struct backend *b) {
        if (tb_record_count(b->record, "VIOLATION") != 0) {
                print_record(b->record);
                fail_msg("the daemon broke the protocol (%s, above)", b->record);
        }
}

static bool parse_features(const char *line, uint64_t *v) {
        const char *p = strstr(line, "features=0x");
        if (!p)
                return false;
        *v = strtoull(p + strlen("features=0x"), NULL, 16);
        return true;
}

/* ---- signals ----------------------------------------------------------------------------------- */

#define MAX_SIGNALS 256
#define MAX_NAMES   24

struct seen_signal {
        char member[32];
        char path[256];
        char interface[64];        /* PropertiesChanged: whose properties */
        char names[MAX_NAMES][64]; /* changed properties, or interfaces added / removed */
        unsigned nnames;
};

static struct seen_signal signals_seen[MAX_SIGNALS];
static unsigned nsignals_seen;

static void add_name(struct seen_signal *s, const char *name) {
        if (s->nnames < MAX_NAMES)
                snprintf(s->names[s->nnames++], sizeof(s->names[0]), "%s", name);
}

static int parse_signal(sd_bus_message *m, struct seen_signal *s) {
        const char *str;
        int r;
        if (sd_bus_message_is_signal(m, PROPS_IF, "PropertiesChanged")) {
                snprintf(s->path, sizeof(s->path), "%s", sd_bus_message_get_path(m));
                r = sd_bus_message_read(m, "s", &str);
                if (r < 0)
                        return r;
                snprintf(s->interface, sizeof(s->interface), "%s", str);
                r = sd_bus_message_enter_container(m, 'a', "{sv}");
                if (r < 0)
                        return r;
                while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                        r = sd_bus_message_read(m, "s", &str);
                        if (r < 0)
                                return r;
                        add_name(s, str);
                        r = sd_bus_message_skip(m, "v");
                        if (r < 0)
                                return r;
                        r = sd_bus_message_exit_container(m);
                        if (r < 0)
                                return r;
                }
                if (r < 0 || (r = sd_bus_message_exit_container(m)) < 0)
                        return r;
                r = sd_bus_message_enter_container(m, 'a', "s");
                if (r < 0)
                        return r;
                while ((r = sd_bus_message_read(m, "s", &str)) > 0)
                        add_name(s, str);
                return r < 0 ? r : sd_bus_message_exit_container(m);
        }
        if (sd_bus_message_is_signal(m, OM_IF, "InterfacesAdded")) {
                r = sd_bus_message_read(m, "o", &str);
                if (r < 0)
                        return r;
                snprintf(s->path, sizeof(s->path), "%s", str);
                r = sd_bus_message_enter_container(m, 'a', "{sa{sv}}");
                if (r < 0)
                        return r;
                while ((r = sd_bus_message_enter_container(m, 'e', "sa{sv}")) > 0) {
                        r = sd_bus_message_read(m, "s", &str);
                        if (r < 0)
                                return r;
                        add_name(s, str);
                        r = sd_bus_message_skip(m, "a{sv}");
                        if (r < 0)
                                return r;
                        r = sd_bus_message_exit_container(m);
                        if (r < 0)
                                return r;
                }
                return r < 0 ? r : sd_bus_message_exit_container(m);
        }
        if (sd_bus_message_is_signal(m, OM_IF, "InterfacesRemoved")) {
                r = sd_bus_message_read(m, "o", &str);
                if (r < 0)
                        return r;
                snprintf(s->path, sizeof(s->path), "%s", str);
                r = sd_bus_message_enter_container(m, 'a', "s");
                if (r < 0)
                        return r;
                while ((r = sd_bus_message_read(m, "s", &str)) > 0)
                        add_name(s, str);
                return r < 0 ? r : sd_bus_message_exit_container(m);
        }
        return -EBADMSG;
}

static int on_signal(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        (void) userdata;
        (void) ret_error;
        if (nsignals_seen >= MAX_SIGNALS)
                return 0;
        struct seen_signal *s = &signals_seen[nsignals_seen];
        memset(s, 0, sizeof(*s));
        snprintf(s->member, sizeof(s->member), "%s", sd_bus_message_get_member(m));
        int r = parse_signal(m, s);
        if (r < 0) {
                fprintf(stderr, "malformed %s signal from %s: %s\n", s->member, sd_bus_message_get_sender(m),
                        strerror(-r));
                return 0;
        }
        nsignals_seen++;
        return 0;
}

static void subscribe_signals(void) {
        nsignals_seen = 0;
        static const struct {
                const char *iface, *member;
        } subs[] = {
                { PROPS_IF, "PropertiesChanged" },
                { OM_IF, "InterfacesAdded" },
                { OM_IF, "InterfacesRemoved" },
        };
        for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++) {
                sd_bus_slot *slot = NULL;
                int r = sd_bus_match_signal(env.c, &slot, NULL, NULL, subs[i].iface, subs[i].member, on_signal, NULL);
                if (r < 0)
                        fail_msg("subscribing to %s.%s: %s", subs[i].iface, subs[i].member, strerror(-r));
                track_slot(slot);
        }
}

static bool signal_seen(const char *member, const char *path, const char *iface, const char *name) {
        for (unsigned i = 0; i < nsignals_seen; i++) {
                const struct seen_signal *s = &signals_seen[i];
                if (strcmp(s->member, member) != 0 || strcmp(s->path, path) != 0)
                        continue;
                if (iface && strcmp(s->interface, iface) != 0)
                        continue;
                for (unsigned k = 0; k < s->nnames; k++)
                        if (strcmp(s->names[k], name) == 0)
                                return true;
        }
        return false;
}

static void dump_signals(void) {
        for (unsigned i = 0; i < nsignals_seen; i++) {
                const struct seen_signal *s = &signals_seen[i];
                fprintf(stderr, "  seen: %s %s %s:", s->member, s->path, s->interface);
                for (unsigned k = 0; k < s->nnames; k++)
                        fprintf(stderr, " %s", s->names[k]);
                fprintf(stderr, "\n");
        }
}

/* Waits (bounded) for `member` on `path` naming `name` (a changed property of iface, or an interface). */
static void expect_signal(const char *member, const char *path, const char *iface, const char *name) {
        uint64_t deadline = now_ms() + scaled_ms(3000);
        for (;;) {
                pump(0);
                if (signal_seen(member, path, iface, name))
                        return;
                if (now_ms() >= deadline) {
                        dump_signals();
                        fail_msg("no %s on %s naming %s within 3 s", member, path, name);
                }
                pump(20);
        }
}

/* ---- ObjectManager ------------------------------------------------------------------------------- */

/* GetManagedObjects as "PATH IFACE\n" lines (malloc'd). */
static char *managed_objects(void) {
        sd_bus_message *reply = call(ROOT_PATH, OM_IF, "GetManagedObjects", NULL);
        size_t cap = 8192, len = 0;
        char *out = calloc(1, cap);
        assert_non_null(out);
        const char *path, *iface;
        int r = sd_bus_message_enter_container(reply, 'a', "{oa{sa{sv}}}");
        while (r >= 0 && (r = sd_bus_message_enter_container(reply, 'e', "oa{sa{sv}}")) > 0) {
                r = sd_bus_message_read(reply, "o", &path);
                if (r >= 0)
                        r = sd_bus_message_enter_container(reply, 'a', "{sa{sv}}");
                while (r >= 0 && (r = sd_bus_message_enter_container(reply, 'e', "sa{sv}")) > 0) {
                        r = sd_bus_message_read(reply, "s", &iface);
                        if (r >= 0)
                                r = sd_bus_message_skip(reply, "a{sv}");
                        if (r >= 0)
                                r = sd_bus_message_exit_container(reply);
                        if (r >= 0)
                                len += (size_t) snprintf(out + len, len < cap ? cap - len : 0, "%s %s\n", path, iface);
                }
                if (r >= 0)
                        r = sd_bus_message_exit_container(reply);
                if (r >= 0)
                        r = sd_bus_message_exit_container(reply);
        }
        if (r < 0)
                fail_msg("GetManagedObjects reply: %s", strerror(-r));
        if (len >= cap)
                fail_msg("GetManagedObjects: more objects than expected");
        sd_bus_message_unref(reply);
        return out;
}

static void assert_managed(const char *objects, const char *path, const char *iface) {
        char line[512];
        snprintf(line, sizeof(line), "%s %s\n", path, iface);
        if (!strstr(objects, line))
                fail_msg("GetManagedObjects lacks %s with %s; it lists:\n%s", path, iface, objects);
}

/* ---- 1. every method and property ------------------------------------------------------------ */

struct probe_result {
        uint64_t features, protocol_features, negotiated;
        uint32_t queue_pairs;
        uint64_t max_mem_slots;
        int migratable;
        char **blockers;
};

static void probe(const char *socket, struct probe_result *p) {
        sd_bus_message *reply = call(ROOT_PATH, MANAGER_IF, "Probe", "sbu", socket, 0, 0u);
        int r = sd_bus_message_read(reply, "tttutb", &p->features, &p->protocol_features, &p->negotiated,
                                    &p->queue_pairs, &p->max_mem_slots, &p->migratable);
        if (r >= 0)
                r = sd_bus_message_read_strv(reply, &p->blockers);
        if (r < 0)
                fail_msg("Probe reply: %s", strerror(-r));
        sd_bus_message_unref(reply);
}

/* What the front-end negotiates with an offer. */
static uint64_t negotiated_protocol_features(uint64_t offer) {
        return vhu_protocol_features_consistent(offer & vhu_supported_protocol_features());
}

static void test_every_method_and_property(void **state) {
        (void) state;

        /* The Manager before any VM. */
        assert_prop_s(ROOT_PATH, MANAGER_IF, "Version", VHOSTMIG_VERSION);
        assert_int_equal(prop_strv_length(ROOT_PATH, MANAGER_IF, "Vms"), 0);

        struct guest g;
        guest_init(&g, 2);
        char *vm = create_vm("alpha", g.memfd, MEM_SIZE);
        assert_string_equal(vm, "/org/vhostmig1/vm/alpha");
        /* The daemon keeps its own copy of the memory's fd: ours may go. */
        close(g.memfd);
        g.memfd = -1;

        char **vms = prop_strv(ROOT_PATH, MANAGER_IF, "Vms");
        assert_int_equal(strv_length(vms), 1);
        assert_string_equal(vms[0], vm);
        strv_free(vms);

        /* A VM without devices. */
        assert_prop_s(vm, VM_IF, "Name", "alpha");
        assert_prop_t(vm, VM_IF, "MemorySize", MEM_SIZE);
        assert_int_equal(prop_strv_length(vm, VM_IF, "Devices"), 0);
        assert_false(prop_b(vm, VM_IF, "MigrationBlocked"));
        assert_int_equal(prop_strv_length(vm, VM_IF, "MigrationBlockers"), 0);
        assert_false(prop_b(vm, VM_IF, "Logging"));
        assert_false(prop_b(vm, VM_IF, "LogIncomplete"));
        assert_prop_t(vm, VM_IF, "LogSize", 0);
        assert_prop_t(vm, VM_IF, "DirtyPages", 0);
        assert_prop_t(vm, VM_IF, "Harvests", 0);
        assert_prop_s(vm, VM_IF, "LastError", "");

        /* Harvest needs logging; the failure becomes the VM's LastError. */
        call_error(ERR("InvalidState"), "logging is off", NULL, vm, VM_IF, "Harvest", NULL);
        char *last = prop_s(vm, VM_IF, "LastError");
        if (!strstr(last, "logging is off"))
                fail_msg("LastError after a refused Harvest is \"%s\"", last);
        free(last);

        /* A device on a test back-end that takes two connections (Reconnect makes the second). */
        struct backend be;
        backend_init(&be, "alpha");
        be.cfg.max_connections = 2;
        backend_listen(&be);
        const uint64_t offer = tb_config_features(&be.cfg);
        const uint64_t pf_offer = tb_config_protocol_features(&be.cfg);
        const uint64_t pf_negotiated = negotiated_protocol_features(pf_offer);

        struct device_args da = std_device(be.socket, false, offer, &g);
        char *dev = add_device(vm, &da, 0);
        assert_string_equal(dev, "/org/vhostmig1/vm/alpha/dev/0");

        char **devs = prop_strv(vm, VM_IF, "Devices");
        assert_int_equal(strv_length(devs), 1);
        assert_string_equal(devs[0], dev);
        strv_free(devs);

        assert_prop_s(dev, DEV_IF, "Socket", be.socket);
        assert_false(prop_b(dev, DEV_IF, "Server"));
        assert_prop_s(dev, DEV_IF, "State", "running");
        assert_prop_t(dev, DEV_IF, "Features", offer);
        assert_prop_t(dev, DEV_IF, "AckedFeatures", offer & ~LOG_ALL_BIT);
        assert_prop_t(dev, DEV_IF, "ProtocolFeatures", pf_offer);
        assert_prop_t(dev, DEV_IF, "AckedProtocolFeatures", pf_negotiated);
        char pf_text[64];
        snprintf(pf_text, sizeof(pf_text), "features=0x%" PRIx64, pf_negotiated);
        assert_record_has(&be, "SET_PROTOCOL_FEATURES", pf_text);
        assert_int_equal(prop_u(dev, DEV_IF, "QueuePairs"), 1);
        assert_prop_s(dev, DEV_IF, "Mac", MAC);
        assert_prop_s(dev, DEV_IF, "Type", "net"); /* the default */
        assert_int_equal(prop_q(dev, DEV_IF, "Mtu"), 1500);
        assert_record_has(&be, "NET_SET_MTU", "mtu=1500");
        uint32_t rings[MAX_QUEUES];
        assert_int_equal(prop_au(dev, DEV_IF, "RingIndices", rings, MAX_QUEUES), 2);
        assert_int_equal(rings[0], 0);
        assert_int_equal(rings[1], 0);
        assert_prop_t(dev, DEV_IF, "Reconnects", 0);
        assert_prop_t(dev, DEV_IF, "RefusedPeers", 0);
        assert_int_equal(prop_strv_length(dev, DEV_IF, "MigrationBlockers"), 0);
        assert_prop_s(dev, DEV_IF, "LastError", "");
        assert_false(prop_b(vm, VM_IF, "MigrationBlocked"));

        char *objects = managed_objects();
        assert_managed(objects, vm, VM_IF);
        assert_managed(objects, dev, DEV_IF);
        free(objects);

        /* Dirty logging. */
        sd_bus_message_unref(call(vm, VM_IF, "StartLogging", "a{sv}", 0u));
        assert_true(prop_b(vm, VM_IF, "Logging"));
        uint64_t log_size = prop_t(vm, VM_IF, "LogSize");
        if (log_size == 0)
                fail_msg("LogSize is 0 while logging");
        assert_record_has(&be, "SET_LOG_BASE", NULL);

        sd_bus_message *reply = call(vm, VM_IF, "Harvest", NULL);
        uint64_t new_pages = UINT64_MAX, dirty_pages = UINT64_MAX;
        assert_int_equal(sd_bus_message_read(reply, "tt", &new_pages, &dirty_pages), 1);
        sd_bus_message_unref(reply);
        assert_true(new_pages <= dirty_pages);
        assert_true(dirty_pages <= MEM_SIZE / 4096);
        assert_prop_t(vm, VM_IF, "Harvests", 1);
        assert_prop_t(vm, VM_IF, "DirtyPages", dirty_pages);

        /* Announcing: the test back-end negotiates RARP and the guest does not announce itself. */
        reply = call(vm, VM_IF, "Announce", NULL);
        uint32_t sent = 0;
        assert_int_equal(sd_bus_message_read(reply, "u", &sent), 1);
        sd_bus_message_unref(reply);
        assert_int_equal(sent, 1);
        assert_int_equal(tb_record_count(be.record, "SEND_RARP"), 1);
        assert_record_has(&be, "SEND_RARP", "mac=" MAC);
        sd_bus_message_unref(call(dev, DEV_IF, "Announce", NULL));
        assert_int_equal(tb_record_count(be.record, "SEND_RARP"), 2);

        /* MTU. */
        sd_bus_message_unref(call(dev, DEV_IF, "SetMtu", "q", 9000));
        assert_int_equal(prop_q(dev, DEV_IF, "Mtu"), 9000);
        assert_record_has(&be, "NET_SET_MTU", "mtu=9000");
        call_error(SD_BUS_ERROR_INVALID_ARGS, "mtu", NULL, dev, DEV_IF, "SetMtu", "q", 67);
        assert_int_equal(prop_q(dev, DEV_IF, "Mtu"), 9000);

        /* Reconnect: a second connection, the rings running again. */
        sd_bus_message_unref(call(dev, DEV_IF, "Reconnect", NULL));
        assert_prop_t(dev, DEV_IF, "Reconnects", 1);
        assert_prop_s(dev, DEV_IF, "State", "running");
        assert_record_has(&be, "CONNECTION 2 OPEN", NULL);

        /* Logging off: the device keeps running, and there is nothing left to harvest. */
        sd_bus_message_unref(call(vm, VM_IF, "StopLogging", NULL));
        assert_false(prop_b(vm, VM_IF, "Logging"));
        assert_prop_t(vm, VM_IF, "LogSize", 0);
        assert_prop_s(dev, DEV_IF, "State", "running");
        call_error(ERR("InvalidState"), NULL, NULL, vm, VM_IF, "Harvest", NULL);

        /* RemoveDevice stops the rings and disconnects; the object is gone. */
        sd_bus_message_unref(call(vm, VM_IF, "RemoveDevice", "o", dev));
        assert_int_equal(prop_strv_length(vm, VM_IF, "Devices"), 0);
        prop_error(dev, DEV_IF, "State", SD_BUS_ERROR_UNKNOWN_OBJECT);
        backend_wait_exit(&be, 5000);
        assert_record_has(&be, "GET_VRING_BASE", "index=0");
        assert_record_has(&be, "GET_VRING_BASE", "index=1");
        assert_record_has(&be, "CONNECTION 2 CLOSED", NULL);
        assert_no_violation(&be);

        /* Probe of a healthy back-end. */
        struct backend pb;
        backend_init(&pb, "probe");
        backend_listen(&pb);
        struct probe_result p = { 0 };
        probe(pb.socket, &p);
        assert_prop_t(vm, VM_IF, "MemorySize", MEM_SIZE); /* unrelated calls keep working */
        if (p.features != tb_config_features(&pb.cfg) || p.protocol_features != tb_config_protocol_features(&pb.cfg))
                fail_msg("Probe: offers 0x%" PRIx64 "/0x%" PRIx64 ", the back-end offers 0x%" PRIx64 "/0x%" PRIx64,
                         p.features, p.protocol_features, tb_config_features(&pb.cfg),
                         tb_config_protocol_features(&pb.cfg));
        assert_true(p.negotiated == negotiated_protocol_features(p.protocol_features));
        assert_int_equal(p.queue_pairs, pb.cfg.queues);
        assert_int_equal(p.max_mem_slots, pb.cfg.max_mem_slots);
        assert_true(p.migratable);
        assert_int_equal(strv_length(p.blockers), 0);
        strv_free(p.blockers);
        backend_wait_exit(&pb, 5000);

        /* Probe of a back-end that cannot share a dirty log. */
        struct backend nb;
        backend_init(&nb, "nolog");
        nb.cfg.no_log_shmfd = true;
        backend_listen(&nb);
        memset(&p, 0, sizeof(p));
        probe(nb.socket, &p);
        assert_false(p.migratable);
        assert_true(strv_length(p.blockers) >= 1);
        bool mentions = false;
        for (unsigned i = 0; p.blockers[i]; i++)
                mentions |= strstr(p.blockers[i], "LOG_SHMFD") != NULL;
        if (!mentions)
                fail_msg("Probe without LOG_SHMFD: no blocker mentions LOG_SHMFD (first: \"%s\")", p.blockers[0]);
        assert_true((p.negotiated & (UINT64_C(1) << VHU_PF_LOG_SHMFD)) == 0);
        strv_free(p.blockers);
        backend_wait_exit(&nb, 5000);

        /* DestroyVm: gone from Vms and from the bus. */
        destroy_vm("alpha");
        assert_int_equal(prop_strv_length(ROOT_PATH, MANAGER_IF, "Vms"), 0);
        prop_error(vm, VM_IF, "Name", SD_BUS_ERROR_UNKNOWN_OBJECT);

        free(dev);
        free(vm);
        guest_fini(&g);
}

/*
 * LogSwitchLocked: a device declared to switch logs under its queue locks
 * gets a fresh log with every harvest (double-buffered), one left undeclared
 * does not (atomic harvests); a wrong type is refused naming the key.
 */
static void test_log_switch_locked(void **state) {
        (void) state;
        struct guest g;
        guest_init(&g, 2);
        char *vm = create_vm("switch", g.memfd, MEM_SIZE);

        struct backend be;
        backend_init(&be, "switch");
        backend_listen(&be);
        struct device_args da = std_device(be.socket, false, tb_config_features(&be.cfg), &g);
        struct device_args bad = da;
        bad.extra_key = "LogSwitchLocked";
        bad.extra_type = "s";
        bad.extra_value = "true";
        send_error(add_device_msg(vm, &bad), "AddDevice with LogSwitchLocked as a string", SD_BUS_ERROR_INVALID_ARGS,
                   "options: \"LogSwitchLocked\" must be of type b, got s", NULL);

        da.log_switch_locked = true;
        char *dev = add_device(vm, &da, 0);
        assert_true(prop_b(dev, DEV_IF, "LogSwitchLocked"));
        sd_bus_message_unref(call(vm, VM_IF, "StartLogging", "a{sv}", 0u));
        assert_int_equal(tb_record_count(be.record, "SET_LOG_BASE"), 1);
        /* Each harvest hands the back-end the other log: a SET_LOG_BASE per harvest. */
        sd_bus_message_unref(call(vm, VM_IF, "Harvest", NULL));
        assert_int_equal(tb_record_count(be.record, "SET_LOG_BASE"), 2);
        sd_bus_message_unref(call(vm, VM_IF, "Harvest", NULL));
        assert_int_equal(tb_record_count(be.record, "SET_LOG_BASE"), 3);
        assert_prop_t(vm, VM_IF, "Harvests", 2);
        sd_bus_message_unref(call(vm, VM_IF, "StopLogging", NULL));
        sd_bus_message_unref(call(vm, VM_IF, "RemoveDevice", "o", dev));
        backend_wait_exit(&be, 5000);
        assert_no_violation(&be);
        free(dev);

        /* Undeclared (the default): the harvest is atomic, the log stays. */
        struct backend plain;
        backend_init(&plain, "switch-not");
        backend_listen(&plain);
        da = std_device(plain.socket, false, tb_config_features(&plain.cfg), &g);
        dev = add_device(vm, &da, 1);
        assert_false(prop_b(dev, DEV_IF, "LogSwitchLocked"));
        sd_bus_message_unref(call(vm, VM_IF, "StartLogging", "a{sv}", 0u));
        sd_bus_message_unref(call(vm, VM_IF, "Harvest", NULL));
        assert_int_equal(tb_record_count(plain.record, "SET_LOG_BASE"), 1);
        sd_bus_message_unref(call(vm, VM_IF, "StopLogging", NULL));
        sd_bus_message_unref(call(vm, VM_IF, "RemoveDevice", "o", dev));
        backend_wait_exit(&plain, 5000);
        assert_no_violation(&plain);
        free(dev);

        destroy_vm("switch");
        free(vm);
        guest_fini(&g);
}

/* ---- 2. PropertiesChanged and the ObjectManager signals -------------------------------------- */

static void test_signals(void **state) {
        (void) state;
        subscribe_signals();

        struct guest g;
        guest_init(&g, 2);
        char *vm = create_vm("sig", g.memfd, MEM_SIZE);
        expect_signal("InterfacesAdded", vm, NULL, VM_IF);
        expect_signal("PropertiesChanged", ROOT_PATH, MANAGER_IF, "Vms");

        struct backend b1;
        backend_init(&b1, "sig1");
        backend_listen(&b1);
        struct device_args da = std_device(b1.socket, false, tb_config_features(&b1.cfg), &g);
        char *dev0 = add_device(vm, &da, 0);
        expect_signal("InterfacesAdded", dev0, NULL, DEV_IF);
        expect_signal("PropertiesChanged", vm, VM_IF, "Devices");

        sd_bus_message_unref(call(vm, VM_IF, "StartLogging", "a{sv}", 0u));
        expect_signal("PropertiesChanged", vm, VM_IF, "Logging");
        expect_signal("PropertiesChanged", vm, VM_IF, "LogSize");

        sd_bus_message_unref(call(vm, VM_IF, "RemoveDevice", "o", dev0));
        expect_signal("InterfacesRemoved", dev0, NULL, DEV_IF);
        backend_wait_exit(&b1, 5000);

        /* Device numbers are never reused. */
        struct backend b2;
        backend_init(&b2, "sig2");
        backend_listen(&b2);
        da.socket = b2.socket;
        char *dev1 = add_device(vm, &da, 1);
        expect_signal("InterfacesAdded", dev1, NULL, DEV_IF);

        destroy_vm("sig");
        expect_signal("InterfacesRemoved", dev1, NULL, DEV_IF);
        expect_signal("InterfacesRemoved", vm, NULL, VM_IF);
        backend_wait_exit(&b2, 5000);
        assert_no_violation(&b1);
        assert_no_violation(&b2);

        free(dev0);
        free(dev1);
        free(vm);
        guest_fini(&g);
}

/* ---- GetManagedObjects against what each object says of itself ---------------------------------- */

/* The a{sv} the reader stands in, as sd-bus prints it. */
static char *dump_properties(sd_bus_message *m) {
        char *text = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);
        assert_non_null(f);
        assert_true(sd_bus_message_enter_container(m, 'a', "{sv}") > 0);
        assert_true(sd_bus_message_dump(m, f, SD_BUS_MESSAGE_DUMP_SUBTREE_ONLY) >= 0);
        fclose(f);
        return text;
}

static char *get_all_text(const char *path, const char *iface) {
        sd_bus_message *reply = call(path, PROPS_IF, "GetAll", "s", iface);
        char *text = dump_properties(reply);
        sd_bus_message_unref(reply);
        return text;
}

/* Whether Introspect of `path` names `iface`. */
static bool introspect_has(const char *path, const char *iface) {
        sd_bus_message *reply = call(path, "org.freedesktop.DBus.Introspectable", "Introspect", NULL);
        const char *xml;
        assert_true(sd_bus_message_read(reply, "s", &xml) > 0);
        char needle[256];
        snprintf(needle, sizeof(needle), "<interface name=\"%s\">", iface);
        bool has = strstr(xml, needle) != NULL;
        sd_bus_message_unref(reply);
        return has;
}

/* Checks one object of the reply (the reader at its a{sa{sv}}); returns the object's own interface. */
static const char *check_managed_object(sd_bus_message *m, const char *path) {
        const char *own = NULL, *iface;
        unsigned standard = 0;
        assert_true(sd_bus_message_enter_container(m, 'a', "{sa{sv}}") > 0);
        while (sd_bus_message_enter_container(m, 'e', "sa{sv}") > 0) {
                assert_true(sd_bus_message_read(m, "s", &iface) > 0);
                if (!introspect_has(path, iface))
                        fail_msg("GetManagedObjects lists %s on %s; Introspect does not", iface, path);
                char *listed = dump_properties(m);
                assert_true(sd_bus_message_exit_container(m) >= 0);
                if (strncmp(iface, "org.freedesktop.DBus.", 21) == 0) {
                        standard++;
                        if (listed[0] != '\0' && strspn(listed, " \t\n") != strlen(listed))
                                fail_msg("%s on %s lists properties:\n%s", iface, path, listed);
                } else {
                        own = iface;
                        char *got = get_all_text(path, iface);
                        if (strcmp(listed, got) != 0)
                                fail_msg("%s %s: GetManagedObjects says\n%s\nGetAll says\n%s", path, iface, listed,
                                         got);
                        free(got);
                }
                free(listed);
                assert_true(sd_bus_message_exit_container(m) >= 0);
        }
        assert_true(sd_bus_message_exit_container(m) >= 0);
        /* Peer, Introspectable and Properties, as every sd-bus object has them. */
        assert_int_equal(standard, 3);
        assert_non_null(own);
        return own;
}

/*
 * The daemon answers GetManagedObjects itself: it must list exactly the VMs
 * and devices on the bus (a removed device and a destroyed VM not), each
 * with the interfaces Introspect names and the very properties GetAll
 * gives, every type of property included.
 */
static void test_managed_objects_match_each_object(void **state) {
        (void) state;
        struct guest g;
        guest_init(&g, 2);
        char *a = create_vm("om-a", g.memfd, MEM_SIZE);
        char *b = create_vm("om-b", g.memfd, MEM_SIZE);
        char *gone = create_vm("om-gone", g.memfd, MEM_SIZE);
        struct backend be[3];
        char *dev[3];
        for (unsigned i = 0; i < 3; i++) {
                char name[16];
                snprintf(name, sizeof(name), "om%u", i);
                backend_init(&be[i], name);
                backend_listen(&be[i]);
                struct device_args da = std_device(be[i].socket, false, tb_config_features(&be[i].cfg), &g);
                dev[i] = add_device(a, &da, i);
        }
        sd_bus_message_unref(call(a, VM_IF, "StartLogging", "a{sv}", 0u));
        sd_bus_message_unref(call(a, VM_IF, "RemoveDevice", "o", dev[1]));
        backend_wait_exit(&be[1], 5000);
        destroy_vm("om-gone");

        const char *expected[] = { a, dev[0], dev[2], b };
        bool seen[4] = { false };
        sd_bus_message *reply = call(ROOT_PATH, OM_IF, "GetManagedObjects", NULL);
        const char *path;
        unsigned objects = 0;
        assert_true(sd_bus_message_enter_container(reply, 'a', "{oa{sa{sv}}}") > 0);
        while (sd_bus_message_enter_container(reply, 'e', "oa{sa{sv}}") > 0) {
                assert_true(sd_bus_message_read(reply, "o", &path) > 0);
                unsigned i = 0;
                while (i < 4 && strcmp(expected[i], path) != 0)
                        i++;
                if (i == 4)
                        fail_msg("GetManagedObjects lists %s, which is not on the bus", path);
                assert_false(seen[i]);
                seen[i] = true;
                const char *own = check_managed_object(reply, path);
                assert_string_equal(own, i == 0 || i == 3 ? VM_IF : DEV_IF);
                assert_true(sd_bus_message_exit_container(reply) >= 0);
                objects++;
        }
        assert_int_equal(objects, 4);
        sd_bus_message_unref(reply);
        /* The call takes no arguments; sd-bus says so. */
        call_error(SD_BUS_ERROR_INVALID_ARGS, NULL, NULL, ROOT_PATH, OM_IF, "GetManagedObjects", "s", "x");

        destroy_vm("om-a");
        destroy_vm("om-b");
        backend_wait_exit(&be[0], 5000);
        backend_wait_exit(&be[2], 5000);
        for (unsigned i = 0; i < 3; i++) {
                assert_no_violation(&be[i]);
                free(dev[i]);
        }
        free(a);
        free(b);
        free(gone);
        guest_fini(&g);
}

/* ---- 3. bad arguments ------------------------------------------------------------------------ */

static void test_bad_arguments(void **state) {
        (void) state;
        const int fds_before = daemon_fd_count();
        assert_true(fds_before > 0);

        int memfd = sealed_memfd("vhostmig-test-small", MEM_SIZE);
        assert_true(memfd >= 0);
        int evfd = eventfd(0, EFD_CLOEXEC);
        assert_true(evfd >= 0);

        /* CreateVm. */
        call_error(SD_BUS_ERROR_INVALID_ARGS, "region 0", "not a memory file", ROOT_PATH, MANAGER_IF, "CreateVm",
                   "sa(httt)a{sv}", "evt", 1u, evfd, UINT64_C(0), UINT64_C(0x100000), UINT64_C(0), 0u);
        call_error(SD_BUS_ERROR_INVALID_ARGS, "region 1", "overlaps", ROOT_PATH, MANAGER_IF, "CreateVm",
                   "sa(httt)a{sv}", "overlap", 2u, memfd, UINT64_C(0), UINT64_C(0x100000), UINT64_C(0), memfd,
                   UINT64_C(0x80000), UINT64_C(0x100000), UINT64_C(0x100000), 0u);
        call_error(SD_BUS_ERROR_INVALID_ARGS, "region 0", "exceeds the file", ROOT_PATH, MANAGER_IF, "CreateVm",
                   "sa(httt)a{sv}", "big", 1u, memfd, UINT64_C(0), 2 * MEM_SIZE, UINT64_C(0), 0u);
        call_error(SD_BUS_ERROR_INVALID_ARGS, "regions", "guest memory", ROOT_PATH, MANAGER_IF, "CreateVm",
                   "sa(httt)a{sv}", "empty", 0u, 0u);
        /* A memfd a back-end could shrink under the daemon's mapping. */
        int unsealed = memfd_create("vhostmig-test-unsealed", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        assert_true(unsealed >= 0);
        assert_int_equal(ftruncate(unsealed, (off_t) MEM_SIZE), 0);
        call_error(SD_BUS_ERROR_INVALID_ARGS, "region 0", "F_SEAL_SHRINK", ROOT_PATH, MANAGER_IF, "CreateVm",
                   "sa(httt)a{sv}", "unsealed", 1u, unsealed, UINT64_C(0), MEM_SIZE, UINT64_C(0), 0u);
        close(unsealed);
        /* Memory near 2^51 would need a 64 GiB dirty log: above the configured limit. */
        call_error(SD_BUS_ERROR_INVALID_ARGS, "region 0", "max_guest_phys_addr", ROOT_PATH, MANAGER_IF, "CreateVm",
                   "sa(httt)a{sv}", "far", 1u, memfd, UINT64_C(1) << 51, MEM_SIZE, UINT64_C(0), 0u);
        call_error(SD_BUS_ERROR_INVALID_ARGS, "name", "a/b", ROOT_PATH, MANAGER_IF, "CreateVm", "sa(httt)a{sv}", "a/b",
                   1u, memfd, UINT64_C(0), MEM_SIZE, UINT64_C(0), 0u);
        assert_int_equal(prop_strv_length(ROOT_PATH, MANAGER_IF, "Vms"), 0);

        char *vm = create_vm("bad", memfd, MEM_SIZE);
        call_error(ERR("VmExists"), "\"bad\"", NULL, ROOT_PATH, MANAGER_IF, "CreateVm", "sa(httt)a{sv}", "bad", 1u,
                   memfd, UINT64_C(0), MEM_SIZE, UINT64_C(0), 0u);
        assert_int_equal(prop_strv_length(ROOT_PATH, MANAGER_IF, "Vms"), 1);

        /* DestroyVm, RemoveDevice, unknown objects. */
        call_error(ERR("NoSuchVm"), "\"nope\"", NULL, ROOT_PATH, MANAGER_IF, "DestroyVm", "s", "nope");
        call_error(ERR("NoSuchDevice"), "/org/vhostmig1/vm/bad/dev/7", NULL, vm, VM_IF, "RemoveDevice", "o",
                   "/org/vhostmig1/vm/bad/dev/7");
        call_error(ERR("NoSuchDevice"), NULL, NULL, vm, VM_IF, "RemoveDevice", "o", vm);
        prop_error("/org/vhostmig1/vm/nope", VM_IF, "Name", SD_BUS_ERROR_UNKNOWN_OBJECT);
        prop_error("/org/vhostmig1/vm/bad/dev/0", DEV_IF, "State", SD_BUS_ERROR_UNKNOWN_OBJECT);

        /* AddDevice, refused before any back-end is involved. */
        struct guest g;
        guest_init(&g, 3);
        char socket[128];
        snprintf(socket, sizeof(socket), "%s/nobody.sock", env.dir);
        struct device_args da = std_device(socket, false, TB_DEFAULT_FEATURES, &g);

        struct queue_arg q[MAX_QUEUES];
        memcpy(q, g.q, sizeof(q));
        q[0].kick = memfd;
        struct device_args bad = da;
        bad.q = q;
        send_error(add_device_msg(vm, &bad), "AddDevice with a memfd as kick fd", SD_BUS_ERROR_INVALID_ARGS, "queue 0",
                   "eventfds");

        bad = da;
        bad.nq = 3;
        send_error(add_device_msg(vm, &bad), "AddDevice with 3 queues for 1 pair", SD_BUS_ERROR_INVALID_ARGS,
                   "2 queues", "3 given");

        bad = da;
        bad.mac = "52:54:00:12:34";
        send_error(add_device_msg(vm, &bad), "AddDevice with a short MAC", SD_BUS_ERROR_INVALID_ARGS, "Mac",
                   "52:54:00:12:34");

        /* Each group is two hex digits: sscanf("%2x") used to take these. */
        bad.mac = "-1:-2:-3:-4:-5:-6";
        send_error(add_device_msg(vm, &bad), "AddDevice with a MAC of negative numbers", SD_BUS_ERROR_INVALID_ARGS,
                   "Mac", "-1:-2");
        bad.mac = " 1: 2: 3: 4: 5: 6";
        send_error(add_device_msg(vm, &bad), "AddDevice with a MAC of spaces", SD_BUS_ERROR_INVALID_ARGS, "Mac", NULL);

        bad = da;
        bad.mtu = 67;
        send_error(add_device_msg(vm, &bad), "AddDevice with Mtu 67", SD_BUS_ERROR_INVALID_ARGS, "Mtu", "68");

        /* Options: an unknown key, and a known one of the wrong type, are refused naming the key. */
        bad = da;
        bad.extra_key = "Foo";
        bad.extra_type = "s";
        bad.extra_value = "bar";
        send_error(add_device_msg(vm, &bad), "AddDevice with the option Foo", SD_BUS_ERROR_INVALID_ARGS,
                   "options: unknown key \"Foo\"", NULL);
        /* A caller's key goes into the error (and LastError, and the log) escaped: it cannot forge a line. */
        bad.extra_key = "Foo\n<3>vhostmigd: forged";
        send_error(add_device_msg(vm, &bad), "AddDevice with a key holding a newline", SD_BUS_ERROR_INVALID_ARGS,
                   "options: unknown key \"Foo\\n<3>vhostmigd: forged\"", NULL);
        bad.extra_key = "Mtu";
        bad.mtu = 0;
        send_error(add_device_msg(vm, &bad), "AddDevice with Mtu as a string", SD_BUS_ERROR_INVALID_ARGS,
                   "options: \"Mtu\" must be of type q, got s", NULL);
        bad.extra_key = "Mac";
        bad.extra_value = MAC;
        send_error(add_device_msg(vm, &bad), "AddDevice with Mac twice", SD_BUS_ERROR_INVALID_ARGS, "\"Mac\"", "twice");
        /* Type: one of the four names, nothing else (not even a different case). */
        bad = da;
        bad.extra_key = "Type";
        bad.extra_type = "s";
        bad.extra_value = "scsi";
        send_error(add_device_msg(vm, &bad), "AddDevice with Type scsi", SD_BUS_ERROR_INVALID_ARGS, "Type", "\"scsi\"");
        bad.extra_value = "NET";
        send_error(add_device_msg(vm, &bad), "AddDevice with Type NET", SD_BUS_ERROR_INVALID_ARGS, "Type", "\"NET\"");
        call_error(SD_BUS_ERROR_INVALID_ARGS, "options: unknown key \"Libvirt\"", NULL, ROOT_PATH, MANAGER_IF,
                   "CreateVm", "sa(httt)a{sv}", "opts", 1u, memfd, UINT64_C(0), MEM_SIZE, UINT64_C(0), 1u, "Libvirt",
                   "s", "x");
        call_error(SD_BUS_ERROR_INVALID_ARGS, "options: unknown key \"Rate\"", NULL, vm, VM_IF, "StartLogging", "a{sv}",
                   1u, "Rate", "u", 5u);
        assert_int_equal(prop_strv_length(ROOT_PATH, MANAGER_IF, "Vms"), 1);

        bad = da;
        bad.queue_pairs = 0;
        bad.nq = 0;
        send_error(add_device_msg(vm, &bad), "AddDevice with QueuePairs 0", SD_BUS_ERROR_INVALID_ARGS, "QueuePairs",
                   NULL);

        bad = da;
        bad.queue_pairs = 9;
        send_error(add_device_msg(vm, &bad), "AddDevice with QueuePairs 9", SD_BUS_ERROR_INVALID_ARGS, "QueuePairs",
                   "1..8");

        bad = da;
        bad.socket = "relative.sock";
        send_error(add_device_msg(vm, &bad), "AddDevice with a relative socket", SD_BUS_ERROR_INVALID_ARGS, "socket",
                   "absolute");

        bad = da;
        memcpy(q, g.q, sizeof(q));
        q[1].size = 300;
        bad.q = q;
        send_error(add_device_msg(vm, &bad), "AddDevice with a ring size of 300", SD_BUS_ERROR_INVALID_ARGS, "queue 1",
                   "power of two");

        /* A socket nobody listens on: the back-end's failure, nothing left behind. */
        send_error(add_device_msg(vm, &da), "AddDevice on a socket nobody listens on", ERR("Backend"), socket,
                   "connect");
        assert_int_equal(prop_strv_length(vm, VM_IF, "Devices"), 0);

        /*
         * A ring outside guest memory.  docs/dbus-api.md: "the rings must lie
         * within guest memory" is a rule on AddDevice's arguments, next to the
         * ring sizes and the eventfds (both InvalidArgs); InvalidArgs is "a
         * malformed argument; the message names it", Backend is "connection or
         * negotiation failed" / "the back-end failed or misbehaved".  The
         * guest's layout is the caller's mistake, not the back-end's:
         * InvalidArgs naming the queue.  A mismatch is reported at the end,
         * after the fd check.
         */
        char deferred[1024] = "";
        struct backend be;
        backend_init(&be, "outside");
        backend_listen(&be);
        bad = da;
        bad.socket = be.socket;
        memcpy(q, g.q, sizeof(q));
        q[1].used = MEM_SIZE - 16; /* starts inside, ends outside */
        bad.q = q;
        sd_bus_message *m = add_device_msg(vm, &bad);
        sd_bus_error e = SD_BUS_ERROR_NULL;
        int r = sd_bus_call(env.c, m, 0, &e, NULL);
        sd_bus_message_unref(m);
        if (r >= 0 || !sd_bus_error_has_name(&e, SD_BUS_ERROR_INVALID_ARGS) || !strstr(e.message, "queue 1") ||
            !strstr(e.message, "outside guest memory"))
                snprintf(deferred, sizeof(deferred),
                         "AddDevice with a used ring beyond guest memory: expected %s "
                         "naming queue 1 and \"outside guest memory\", got %s: %s",
                         SD_BUS_ERROR_INVALID_ARGS, r >= 0 ? "success" : e.name, r >= 0 ? "" : error_text(&e, r));
        sd_bus_error_free(&e);
        /* Whatever the answer, nothing is left behind: a connection it made is closed again. */
        assert_int_equal(prop_strv_length(vm, VM_IF, "Devices"), 0);
        if (record_has(&be, "CONNECTION 1 OPEN", NULL)) {
                backend_wait_exit(&be, 5000);
                assert_record_has(&be, "CONNECTION 1 CLOSED", NULL);
        } else {
                (void) tb_stop(be.pid);
                untrack_backend(be.pid);
        }

        /* Probe. */
        call_error(SD_BUS_ERROR_INVALID_ARGS, "socket", NULL, ROOT_PATH, MANAGER_IF, "Probe", "sbu", "relative.sock", 0,
                   0u);
        call_error(ERR("Backend"), socket, NULL, ROOT_PATH, MANAGER_IF, "Probe", "sbu", socket, 0, 0u);

        destroy_vm("bad");
        close(memfd);
        close(evfd);
        guest_fini(&g);
        free(vm);

        /* Not one fd more than before, and still serving. */
        int fds_after = daemon_fd_count_settled(fds_before, 3000);
        if (fds_after != fds_before)
                fail_msg("vhostmigd had %d fds before the bad calls and %d after", fds_before, fds_after);
        assert_true(daemon_alive());
        assert_prop_s(ROOT_PATH, MANAGER_IF, "Version", VHOSTMIG_VERSION);
        if (deferred[0])
                fail_msg("%s", deferred);
}

/* ---- 4. a caller that is not root -------------------------------------------------------------- */

static int child_failures;

#define CHILD_FAIL(...)                                           \
        do {                                                      \
                fprintf(stderr, "non-root caller: " __VA_ARGS__); \
                fprintf(stderr, "\n");                            \
                child_failures++;                                 \
        } while (0)

static void child_expect_denied(int r, const sd_bus_error *e, const char *what, bool policy_bus) {
        if (r >= 0) {
                CHILD_FAIL("%s succeeded; expected AccessDenied", what);
                return;
        }
        if (!sd_bus_error_has_name(e, SD_BUS_ERROR_ACCESS_DENIED)) {
                CHILD_FAIL("%s: expected %s, got %s: %s", what, SD_BUS_ERROR_ACCESS_DENIED,
                           e->name ? e->name : "(errno)", error_text(e, r));
                return;
        }
        const char *msg = e->message ? e->message : "";
        /* With the policy the bus refuses (dbus-daemon's words); without it the daemon does (its own words). */
        if (policy_bus && strstr(msg, DAEMON_MESSAGE_NOT_ROOT))
                CHILD_FAIL("%s: refused by vhostmigd (\"%s\"), not by the bus policy", what, msg);
        if (policy_bus && !strstr(msg, "Rejected send message"))
                CHILD_FAIL("%s: AccessDenied \"%s\" is not the bus's refusal", what, msg);
        if (!policy_bus && strcmp(msg, DAEMON_MESSAGE_NOT_ROOT) != 0)
                CHILD_FAIL("%s: AccessDenied \"%s\", expected vhostmigd's \"%s\"", what, msg, DAEMON_MESSAGE_NOT_ROOT);
}

static void child_expect_call_denied(sd_bus *b, bool policy_bus, const char *path, const char *iface,
                                     const char *member, const char *types, ...) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        va_list ap;
        va_start(ap, types);
        int r = sd_bus_call_methodv(b, DEST, path, iface, member, &e, NULL, types, ap);
        va_end(ap);
        child_expect_denied(r, &e, member, policy_bus);
        sd_bus_error_free(&e);
}

/* Runs in a child as uid/gid 65534: what it may do works, the rest is refused. */
static int nonroot_checks(const char *vm_path, bool policy_bus) {
        sd_bus *b = NULL;
        int r = private_bus_connect(env.bus.address, CALL_TIMEOUT_USEC, &b);
        if (r < 0) {
                CHILD_FAIL("cannot connect to the bus: %s", strerror(-r));
                return child_failures;
        }
        sd_bus_error e = SD_BUS_ERROR_NULL;

        /* Properties and GetManagedObjects are open to everyone. */
        char *s = NULL;
        r = sd_bus_get_property_string(b, DEST, ROOT_PATH, MANAGER_IF, "Version", &e, &s);
        if (r < 0 || strcmp(s, VHOSTMIG_VERSION) != 0)
                CHILD_FAIL("Version: %s", r < 0 ? error_text(&e, r) : s);
        free(s);
        sd_bus_error_free(&e);
        char **vms = NULL;
        r = sd_bus_get_property_strv(b, DEST, ROOT_PATH, MANAGER_IF, "Vms", &e, &vms);
        if (r < 0 || !strv_contains(vms, vm_path))
                CHILD_FAIL("Vms: %s", r < 0 ? error_text(&e, r) : "does not list the VM");
        strv_free(vms);
        sd_bus_error_free(&e);
        s = NULL;
        r = sd_bus_get_property_string(b, DEST, vm_path, VM_IF, "Name", &e, &s);
        if (r < 0 || strcmp(s, "shared") != 0)
                CHILD_FAIL("Name: %s", r < 0 ? error_text(&e, r) : s);
        free(s);
        sd_bus_error_free(&e);
        uint64_t size = 0;
        r = sd_bus_get_property_trivial(b, DEST, vm_path, VM_IF, "MemorySize", &e, 't', &size);
        if (r < 0 || size != MEM_SIZE)
                CHILD_FAIL("MemorySize: %s", r < 0 ? error_text(&e, r) : "wrong value");
        sd_bus_error_free(&e);
        sd_bus_message *reply = NULL;
        r = sd_bus_call_method(b, DEST, ROOT_PATH, OM_IF, "GetManagedObjects", &e, &reply, NULL);
        if (r < 0)
                CHILD_FAIL("GetManagedObjects: %s", error_text(&e, r));
        sd_bus_message_unref(reply);
        sd_bus_error_free(&e);

        /* Every state change, and Probe, is root's. */
        int memfd = sealed_memfd("vhostmig-test-nonroot", MEM_SIZE);
        if (memfd < 0)
                CHILD_FAIL("memfd: %s", strerror(-memfd));
        child_expect_call_denied(b, policy_bus, ROOT_PATH, MANAGER_IF, "CreateVm", "sa(httt)a{sv}", "mine", 1u, memfd,
                                 UINT64_C(0), MEM_SIZE, UINT64_C(0), 0u);
        child_expect_call_denied(b, policy_bus, ROOT_PATH, MANAGER_IF, "DestroyVm", "s", "shared");
        child_expect_call_denied(b, policy_bus, ROOT_PATH, MANAGER_IF, "Probe", "sbu", "/nonexistent.sock", 0, 0u);
        child_expect_call_denied(b, policy_bus, vm_path, VM_IF, "StartLogging", "a{sv}", 0u);

        struct queue_arg q[2];
        for (unsigned i = 0; i < 2; i++)
                q[i] = (struct queue_arg){
                        .size = RING_SIZE,
                        .desc = RING_BASE + i * RING_STRIDE,
                        .avail = RING_BASE + i * RING_STRIDE + 0x1000,
                        .used = RING_BASE + i * RING_STRIDE + 0x2000,
                        .kick = eventfd(0, EFD_CLOEXEC),
                        .call = eventfd(0, EFD_CLOEXEC),
                };
        struct device_args da = {
                .socket = "/nonexistent.sock",
                .features = TB_DEFAULT_FEATURES,
                .queue_pairs = 1,
                .mac = MAC,
                .q = q,
                .nq = 2,
        };
        sd_bus_message *m = add_device_message(b, vm_path, &da);
        if (!m) {
                CHILD_FAIL("cannot build AddDevice");
        } else {
                r = sd_bus_call(b, m, 0, &e, NULL);
                child_expect_denied(r, &e, "AddDevice", policy_bus);
                sd_bus_error_free(&e);
                sd_bus_message_unref(m);
        }
        sd_bus_flush_close_unref(b);
        return child_failures;
}

static int drop_privileges(void) {
        if (setgroups(0, NULL) < 0 || setresgid(NOBODY, NOBODY, NOBODY) < 0 || setresuid(NOBODY, NOBODY, NOBODY) < 0) {
                fprintf(stderr, "cannot drop to uid/gid %d: %m\n", NOBODY);
                return -1;
        }
        if (geteuid() != NOBODY || getegid() != NOBODY) {
                fprintf(stderr, "still uid %d gid %d\n", (int) geteuid(), (int) getegid());
                return -1;
        }
        return 0;
}

static void run_nonroot(bool policy_bus) {
        if (geteuid() != 0)
                fail_msg("this test needs root");
        struct guest g;
        guest_init(&g, 0);
        char *vm = create_vm("shared", g.memfd, MEM_SIZE);

        fflush(stdout);
        fflush(stderr);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                child_failures = 0;
                int failures = drop_privileges() < 0 ? 1 : nonroot_checks(vm, policy_bus);
                fflush(stderr);
                _exit(failures > 100 ? 100 : failures);
        }
        int status = wait_child(pid, 60000);
        if (status == -ETIMEDOUT) {
                kill(pid, SIGKILL);
                waitpid(pid, NULL, 0);
                fail_msg("the non-root caller did not finish within 60 s");
        }
        if (status < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                char why[64];
                describe_status(status, why, sizeof(why));
                fail_msg("the non-root caller found problems (%s; see above)", why);
        }

        /* Nothing it tried happened. */
        char **vms = prop_strv(ROOT_PATH, MANAGER_IF, "Vms");
        assert_int_equal(strv_length(vms), 1);
        assert_string_equal(vms[0], vm);
        strv_free(vms);
        assert_int_equal(prop_strv_length(vm, VM_IF, "Devices"), 0);
        assert_false(prop_b(vm, VM_IF, "Logging"));
        destroy_vm("shared");
        free(vm);
        guest_fini(&g);
}

static void test_nonroot_refused_by_policy(void **state) {
        (void) state;
        run_nonroot(true);
}

static void test_nonroot_refused_by_daemon(void **state) {
        (void) state;
        run_nonroot(false);
}

/* ---- 5. a hung back-end does not freeze the others ------------------------------------------- */

#define FAST_MS 300u

#define FAST(what, expr)                                                                                             \
        do {                                                                                                         \
                uint64_t t0_ = now_ms();                                                                             \
                expr;                                                                                                \
                uint64_t d_ = now_ms() - t0_;                                                                        \
                if (d_ > FAST_MS)                                                                                    \
                        fail_msg("%s took %" PRIu64 " ms while another VM's back-end hangs (limit %u ms)", what, d_, \
                                 FAST_MS);                                                                           \
        } while (0)

/* ---- the daemon notices a back-end that went away and reconnects by itself -------------------- */

/* Polls a device's State until it reads `want` (the monitor runs every 100 ms here). */
static bool wait_state(const char *dev, const char *want, unsigned timeout_ms) {
        uint64_t deadline = now_ms() + scaled_ms(timeout_ms);
        do {
                char *state = prop_s(dev, DEV_IF, "State");
                bool match = strcmp(state, want) == 0;
                free(state);
                if (match)
                        return true;
                pump(20);
        } while (now_ms() < deadline);
        return false;
}

static void test_automatic_reconnect(void **state) {
        (void) state;
        struct guest g;
        guest_init(&g, 2);
        char *vm = create_vm("phoenix", g.memfd, MEM_SIZE);
        struct backend be;
        backend_init(&be, "phoenix");
        be.cfg.max_connections = 0; /* serve until stopped */
        backend_listen(&be);
        struct device_args da = std_device(be.socket, false, tb_config_features(&be.cfg), &g);
        char *dev = add_device(vm, &da, 0);
        assert_prop_s(dev, DEV_IF, "State", "running");
        assert_int_equal(prop_t(dev, DEV_IF, "Reconnects"), 0);

        /* The back-end dies: the device reports it. */
        (void) tb_stop(be.pid);
        untrack_backend(be.pid);
        if (!wait_state(dev, "disconnected", 3000))
                fail_msg("the device did not notice that its back-end was gone");
        /* Why, naming the socket: the loss itself, or the reconnection attempts since. */
        char *why = prop_s(dev, DEV_IF, "LastError");
        if (!strstr(why, be.socket) || (!strstr(why, "closed") && !strstr(why, "connect")))
                fail_msg("LastError \"%s\" does not say what happened", why);
        free(why);

        /* A new one at the same path: the daemon reconnects and restarts the rings, unasked. */
        backend_listen(&be);
        if (!wait_state(dev, "running", 10000))
                fail_msg("the device did not reconnect to the new back-end");
        assert_int_equal(prop_t(dev, DEV_IF, "Reconnects"), 1);
        assert_prop_s(dev, DEV_IF, "LastError", "");
        /* The rings went to the new back-end complete, each enabled. */
        assert_record_has(&be, "SET_VRING_ENABLE", "num=1");
        assert_record_has(&be, "SET_VRING_KICK", "index=1");

        destroy_vm("phoenix");
        (void) tb_stop(be.pid);
        untrack_backend(be.pid);
        assert_no_violation(&be);
        free(dev);
        free(vm);
        guest_fini(&g);
}

/* ---- hostile back-ends: truncated guest memory, a local user at the back-end's path ------------------ */

/* Polls a device's LastError until it mentions `needle`: the text, or NULL. */
static char *wait_last_error(const char *dev, const char *needle, unsigned timeout_ms) {
        uint64_t deadline = now_ms() + scaled_ms(timeout_ms);
        for (;;) {
                char *e = prop_s(dev, DEV_IF, "LastError");
                if (strstr(e, needle))
                        return e;
                if (now_ms() >= deadline) {
                        fprintf(stderr, "LastError of %s: \"%s\"\n", dev, e);
                        free(e);
                        return NULL;
                }
                free(e);
                pump(20);
        }
}

/*
 * Guest memory a back-end can truncate (a tmpfs file: it cannot be sealed).
 * The back-end truncates it and reconnects; the daemon's reconnect reads the
 * used rings' indices from guest memory.  That must fail this device with a
 * clear error, not kill the daemon with SIGBUS: another VM keeps running.
 */
static void test_truncated_guest_memory(void **state) {
        (void) state;
        char path[] = "/dev/shm/vhostmig-test-XXXXXX";
        int shm = mkstemp(path);
        assert_true(shm >= 0);
        unlink(path);
        assert_int_equal(ftruncate(shm, (off_t) MEM_SIZE), 0);
        struct guest g, gb;
        guest_init(&g, 2);
        guest_init(&gb, 2);
        char *vm = create_vm("victim", shm, MEM_SIZE);
        char *other = create_vm("bystander", gb.memfd, MEM_SIZE);

        struct backend be, bb;
        backend_init(&be, "truncator");
        be.cfg.max_connections = 2;
        /* The second NET_SET_MTU (SetMtu below; the first came with the start): truncate every memory fd,
         * hang up.  The second connection is served as usual. */
        backend_add_fault(&be, "NET_SET_MTU:truncate-memory:2");
        backend_listen(&be);
        backend_init(&bb, "bystander");
        backend_listen(&bb);
        struct device_args da = std_device(be.socket, false, tb_config_features(&be.cfg), &g);
        char *dev = add_device(vm, &da, 0);
        struct device_args db = std_device(bb.socket, false, tb_config_features(&bb.cfg), &gb);
        char *bdev = add_device(other, &db, 0);
        sd_bus_message_unref(call(other, VM_IF, "StartLogging", "a{sv}", 0u));

        call_error(ERR("Backend"), "NET_SET_MTU", NULL, dev, DEV_IF, "SetMtu", "q", (uint16_t) 1400);
        assert_record_has(&be, "FAULT truncate-memory", "NET_SET_MTU");
        char *why = wait_last_error(dev, "no longer backed", 5000);
        if (!why)
                fail_msg("the device's LastError never said that its guest memory is gone (above)");
        free(why);
        assert_true(daemon_alive());
        /* The other VM did not notice. */
        assert_prop_s(bdev, DEV_IF, "State", "running");
        assert_true(prop_b(other, VM_IF, "Logging"));
        sd_bus_message_unref(call(other, VM_IF, "Harvest", NULL));

        destroy_vm("victim");
        destroy_vm("bystander");
        (void) tb_stop(be.pid);
        untrack_backend(be.pid);
        backend_wait_exit(&bb, 5000);
        assert_no_violation(&bb);
        close(shm);
        guest_fini(&g);
        guest_fini(&gb);
        free(dev);
        free(bdev);
        free(vm);
        free(other);
}

static bool daemon_log_has(const char *needle) {
        FILE *f = fopen(env.daemon_log, "re");
        char line[1200];
        bool found = false;
        while (f && !found && fgets(line, sizeof(line), f))
                found = strstr(line, needle) != NULL;
        if (f)
                fclose(f);
        return found;
}

/*
 * A running device's back-end floods its channel between requests (no
 * request pending: only the daemon's connection check reads the channel).
 * The check must cut the channel off rather than serve it for ever: the VM's
 * worker stays free (a request after it is answered), the device keeps
 * running, and the daemon says why.
 */
static void test_channel_flood_while_running(void **state) {
        (void) state;
        struct guest g;
        guest_init(&g, 2);
        char *vm = create_vm("flooded", g.memfd, MEM_SIZE);
        struct backend be;
        backend_init(&be, "flooder");
        /* SET_STATUS ends the start: answered, then the flood. */
        backend_add_fault(&be, "SET_STATUS:flood-channel=1");
        backend_listen(&be);
        struct device_args da = std_device(be.socket, false, tb_config_features(&be.cfg), &g);
        char *dev = add_device(vm, &da, 0);
        uint64_t deadline = now_ms() + scaled_ms(5000);
        while (!record_has(&be, "BACKEND_FLOOD", "channel write failed") && now_ms() < deadline) {
                FAST("State during a channel flood", assert_prop_s(dev, DEV_IF, "State", "running"));
                sleep_ms(50);
        }
        if (!record_has(&be, "BACKEND_FLOOD", "channel write failed")) {
                print_record(be.record);
                fail_msg("the daemon never cut off a back-end flooding its channel (record above)");
        }
        /* The worker is free and the connection itself intact. */
        sd_bus_message_unref(call(dev, DEV_IF, "SetMtu", "q", (uint16_t) 1400));
        assert_record_has(&be, "NET_SET_MTU", "mtu=1400");
        assert_prop_s(dev, DEV_IF, "State", "running");
        deadline = now_ms() + scaled_ms(2000);
        while (!daemon_log_has("flooded") && now_ms() < deadline)
                sleep_ms(20);
        if (!daemon_log_has("flooded")) {
                dump_daemon_log();
                fail_msg("the daemon's log does not say that the back-end channel was cut off for flooding");
        }
        destroy_vm("flooded");
        backend_wait_exit(&be, 5000);
        assert_no_violation(&be);
        guest_fini(&g);
        free(dev);
        free(vm);
}

/*
 * The back-end exits and removes its socket; a local user (nobody) binds the
 * same path in the world-writable directory.  The daemon's reconnect must
 * refuse that peer before sending it anything (no guest memory fd for it),
 * count it, and still take the real back-end back when it returns.
 */
static void test_impostor_refused(void **state) {
        (void) state;
        char dir[] = "/tmp/vhostmig-public-XXXXXX";
        assert_non_null(mkdtemp(dir));
        assert_int_equal(chmod(dir, 01777), 0);
        struct guest g;
        guest_init(&g, 2);
        char *vm = create_vm("target", g.memfd, MEM_SIZE);
        struct backend be, evil;
        backend_init(&be, "target");
        backend_init(&evil, "impostor");
        snprintf(be.socket, sizeof(be.socket), "%s/vhu.sock", dir);
        snprintf(evil.socket, sizeof(evil.socket), "%s/vhu.sock", dir);
        be.cfg.max_connections = 0;
        evil.cfg.max_connections = 0;
        evil.cfg.run_as_uid = NOBODY;
        evil.cfg.run_as_gid = NOBODY;
        /* The impostor writes its record where it may: in the public directory. */
        snprintf(evil.record, sizeof(evil.record), "%s/impostor.rec", dir);
        evil.cfg.record_path = evil.record;
        backend_listen(&be);
        struct device_args da = std_device(be.socket, false, tb_config_features(&be.cfg), &g);
        char *dev = add_device(vm, &da, 0);
        assert_int_equal(prop_t(dev, DEV_IF, "RefusedPeers"), 0);

        (void) tb_stop(be.pid);
        untrack_backend(be.pid);
        if (!wait_state(dev, "disconnected", 3000))
                fail_msg("the device did not notice that its back-end was gone");
        backend_listen(&evil);
        uint64_t deadline = now_ms() + scaled_ms(5000);
        while (prop_t(dev, DEV_IF, "RefusedPeers") == 0 && now_ms() < deadline)
                pump(20);
        if (prop_t(dev, DEV_IF, "RefusedPeers") == 0)
                fail_msg("the daemon never refused the impostor at %s", evil.socket);
        char *why = prop_s(dev, DEV_IF, "LastError");
        if (!strstr(why, "65534"))
                fail_msg("LastError \"%s\" does not name the refused uid", why);
        free(why);
        assert_prop_s(dev, DEV_IF, "State", "disconnected");
        (void) tb_stop(evil.pid);
        untrack_backend(evil.pid);
        /* Not one request reached it: no memory table, no fd. */
        char *text = tb_record_read(evil.record);
        if (text && (strstr(text, "GET_FEATURES") || strstr(text, "SET_MEM_TABLE"))) {
                print_record(evil.record);
                fail_msg("the impostor was sent requests (record above)");
        }
        free(text);

        /* The real back-end comes back: the device runs again. */
        backend_listen(&be);
        if (!wait_state(dev, "running", 10000))
                fail_msg("the device did not reconnect to its real back-end after refusing the impostor");
        assert_int_equal(prop_t(dev, DEV_IF, "Reconnects"), 1);

        destroy_vm("target");
        (void) tb_stop(be.pid);
        untrack_backend(be.pid);
        assert_no_violation(&be);
        unlink(evil.record);
        unlink(be.socket);
        rmdir(dir);
        guest_fini(&g);
        free(dev);
        free(vm);
}

static void test_hung_backend(void **state) {
        (void) state;
        const int fds_before = daemon_fd_count();
        assert_true(fds_before > 0);

        struct guest gs, gf;
        guest_init(&gs, 2);
        guest_init(&gf, 0);
        char *slow = create_vm("slow", gs.memfd, MEM_SIZE);

        struct backend hung;
        backend_init(&hung, "hung");
        backend_add_fault(&hung, "SET_MEM_TABLE:hang");
        backend_listen(&hung);
        struct backend healthy;
        backend_init(&healthy, "healthy");
        backend_listen(&healthy);

        static struct async_call add;
        struct device_args da = std_device(hung.socket, false, tb_config_features(&hung.cfg), &gs);
        send_async(add_device_msg(slow, &da), &add);

        /* While the slow VM's worker waits for the hung back-end: */
        char *fast = NULL;
        FAST("CreateVm(fast)", fast = create_vm("fast", gf.memfd, MEM_SIZE));
        FAST("fast.Name", assert_prop_s(fast, VM_IF, "Name", "fast"));
        FAST("fast.MemorySize", assert_prop_t(fast, VM_IF, "MemorySize", MEM_SIZE));
        FAST("fast.Devices", assert_int_equal(prop_strv_length(fast, VM_IF, "Devices"), 0));
        FAST("fast.Logging", assert_false(prop_b(fast, VM_IF, "Logging")));
        FAST("Manager.Vms", assert_int_equal(prop_strv_length(ROOT_PATH, MANAGER_IF, "Vms"), 2));
        FAST("slow.Devices", assert_int_equal(prop_strv_length(slow, VM_IF, "Devices"), 0));
        FAST("slow.LastError", assert_prop_s(slow, VM_IF, "LastError", ""));
        struct probe_result p = { 0 };
        FAST("Probe(healthy)", probe(healthy.socket, &p));
        assert_true(p.migratable);
        strv_free(p.blockers);
        pump(0);
        if (add.done)
                fail_msg("AddDevice on the hung back-end answered after %" PRIu64 " ms (%s: %s): the hang was not "
                         "pending while the other calls ran",
                         add.done_ms - add.sent_ms, add.error_name, add.error_message);
        uint64_t elapsed = now_ms() - add.sent_ms;
        if (elapsed >= REQUEST_TIMEOUT_MS)
                fail_msg("the other calls took %" PRIu64 " ms together: cannot tell them from the timeout", elapsed);

        /* The hung request times out after the configured request timeout. */
        wait_async(&add, 10000, "AddDevice on the hung back-end");
        uint64_t took = add.done_ms - add.sent_ms;
        if (strcmp(add.error_name, ERR("Backend")) != 0 || !strstr(add.error_message, "no reply in time"))
                fail_msg("AddDevice on the hung back-end: expected %s mentioning \"no reply in time\", got \"%s\": %s",
                         ERR("Backend"), add.error_name[0] ? add.error_name : "(success)", add.error_message);
        if (took < REQUEST_TIMEOUT_MS - 100 || took > REQUEST_TIMEOUT_MS + 1500)
                fail_msg("AddDevice on the hung back-end failed after %" PRIu64 " ms; the request timeout is %u ms",
                         took, REQUEST_TIMEOUT_MS);
        assert_int_equal(prop_strv_length(slow, VM_IF, "Devices"), 0);
        char *last = prop_s(slow, VM_IF, "LastError");
        if (!strstr(last, "no reply in time"))
                fail_msg("slow.LastError is \"%s\"", last);
        free(last);
        backend_wait_exit(&hung, 5000);
        assert_record_has(&hung, "FAULT hang", "SET_MEM_TABLE");
        assert_record_has(&hung, "CONNECTION 1 CLOSED", NULL);
        backend_wait_exit(&healthy, 5000);

        destroy_vm("slow");
        destroy_vm("fast");
        guest_fini(&gs);
        guest_fini(&gf);
        free(slow);
        free(fast);
        int fds_after = daemon_fd_count_settled(fds_before, 3000);
        if (fds_after != fds_before)
                fail_msg("vhostmigd had %d fds before and %d after", fds_before, fds_after);
        assert_true(daemon_alive());
}

/* ---- Probe: a hostile back-end holds one worker, never all of them ---------------------------------- */

static sd_bus_message *probe_msg(const char *socket, uint32_t timeout_ms) {
        sd_bus_message *m = NULL;
        int r = sd_bus_message_new_method_call(env.c, &m, DEST, ROOT_PATH, MANAGER_IF, "Probe");
        if (r >= 0)
                r = sd_bus_message_append(m, "sbu", socket, 0, timeout_ms);
        if (r < 0)
                fail_msg("Probe message: %s", strerror(-r));
        return m;
}

/* The daemon's default: Probe calls that may run at once. */
#define MAX_PROBES             4u
#define FLOOD_PROBE_TIMEOUT_MS 1000u
#define HUNG_PROBE_TIMEOUT_MS  2500u

/*
 * One back-end floods its channel while it withholds the reply to SET_OWNER,
 * three more never answer: every probe worker is taken.  The flooding probe
 * must still end at its deadline, a further Probe is refused at once (Busy)
 * rather than queued behind them, and DestroyVm and property reads answer
 * meanwhile.
 */
static void test_probes_do_not_queue(void **state) {
        (void) state;
        const int fds_before = daemon_fd_count();
        struct backend flood, hung, healthy;
        backend_init(&flood, "flood");
        backend_add_fault(&flood, "SET_OWNER:flood-channel");
        backend_listen(&flood);
        backend_init(&hung, "hung-probe");
        /* Served one after another: each probe's connection hangs in turn (faults count across them). */
        for (unsigned i = 1; i < MAX_PROBES; i++) {
                char spec[32];
                snprintf(spec, sizeof(spec), "GET_FEATURES:hang:%u", i);
                backend_add_fault(&hung, spec);
        }
        hung.cfg.max_connections = 0;
        backend_listen(&hung);
        backend_init(&healthy, "healthy-probe");
        healthy.cfg.max_connections = 0;
        backend_listen(&healthy);
        struct guest g;
        guest_init(&g, 0);
        char *vm = create_vm("bystander", g.memfd, MEM_SIZE);

        static struct async_call flooded, stuck[MAX_PROBES - 1];
        send_async(probe_msg(flood.socket, FLOOD_PROBE_TIMEOUT_MS), &flooded);
        for (unsigned i = 0; i < MAX_PROBES - 1; i++)
                send_async(probe_msg(hung.socket, HUNG_PROBE_TIMEOUT_MS), &stuck[i]);
        sleep_ms(200);
        FAST("Probe with every worker taken",
             call_error(ERR("Busy"), "max_probes", NULL, ROOT_PATH, MANAGER_IF, "Probe", "sbu", healthy.socket, 0, 0u));
        FAST("bystander.Name", assert_prop_s(vm, VM_IF, "Name", "bystander"));
        FAST("DestroyVm(bystander)", destroy_vm("bystander"));

        /* The flood does not stretch the deadline. */
        wait_async(&flooded, 3 * FLOOD_PROBE_TIMEOUT_MS, "Probe of a back-end flooding its channel");
        if (strcmp(flooded.error_name, ERR("Backend")) != 0)
                fail_msg("Probe of a flooding back-end: expected %s, got \"%s\": %s", ERR("Backend"),
                         flooded.error_name[0] ? flooded.error_name : "(success)", flooded.error_message);
        uint64_t took = flooded.done_ms - flooded.sent_ms;
        if (took > 2 * FLOOD_PROBE_TIMEOUT_MS + scaled_ms(500))
                fail_msg("Probe of a flooding back-end ended after %" PRIu64 " ms; its timeout was %u ms", took,
                         FLOOD_PROBE_TIMEOUT_MS);
        /* Its worker is free again: a probe of a healthy back-end runs now, while the others still hang. */
        struct probe_result p = { 0 };
        FAST("Probe(healthy) once a worker is free", probe(healthy.socket, &p));
        assert_true(p.migratable);
        strv_free(p.blockers);
        for (unsigned i = 0; i < MAX_PROBES - 1; i++) {
                wait_async(&stuck[i], 3 * HUNG_PROBE_TIMEOUT_MS, "Probe of a hung back-end");
                if (strcmp(stuck[i].error_name, ERR("Backend")) != 0)
                        fail_msg("Probe of a hung back-end: expected %s, got \"%s\"", ERR("Backend"),
                                 stuck[i].error_name[0] ? stuck[i].error_name : "(success)");
        }
        backend_wait_exit(&flood, 5000);
        assert_record_has(&flood, "FAULT flood-channel", "SET_OWNER");
        guest_fini(&g);
        free(vm);
        int fds_after = daemon_fd_count_settled(fds_before, 3000);
        if (fds_after != fds_before)
                fail_msg("vhostmigd had %d fds before and %d after", fds_before, fds_after);
        assert_true(daemon_alive());
}

/* ---- DestroyVm while an AddDevice is still on the VM's worker ---------------------------------- */

/*
 * DestroyVm "stops and disconnects every device": also the one whose
 * AddDevice was queued just before it.  Whatever AddDevice answers, nothing
 * of the VM may stay: no object, no connection to the back-end, no fd.  The
 * daemon's worker finishes the AddDevice and starts the DestroyVm while its
 * event loop completes the AddDevice; which comes first varies, so the
 * sequence runs several times.
 */
#define RACE_ROUNDS 10u

static void destroy_during_add_round(unsigned round) {
        char name[16];
        snprintf(name, sizeof(name), "race%u", round);
        struct guest g;
        guest_init(&g, 2);
        char *vm = create_vm(name, g.memfd, MEM_SIZE);
        struct backend be;
        backend_init(&be, name);
        backend_listen(&be);

        static struct async_call add;
        struct device_args da = std_device(be.socket, false, tb_config_features(&be.cfg), &g);
        send_async(add_device_msg(vm, &da), &add);
        destroy_vm(name);
        wait_async(&add, 10000, "AddDevice queued before DestroyVm");

        assert_int_equal(prop_strv_length(ROOT_PATH, MANAGER_IF, "Vms"), 0);
        prop_error(vm, VM_IF, "Name", SD_BUS_ERROR_UNKNOWN_OBJECT);
        if (add.path[0])
                prop_error(add.path, DEV_IF, "State", SD_BUS_ERROR_UNKNOWN_OBJECT);
        char *objects = managed_objects();
        if (strstr(objects, vm))
                fail_msg("round %u: GetManagedObjects still lists the destroyed VM's objects:\n%s", round, objects);
        free(objects);

        /* The back-end's one connection must end (it then exits), its rings stopped if they ran. */
        int status = tb_wait_exit(be.pid, 5000);
        if (status == -ETIMEDOUT) {
                print_record(be.record);
                fail_msg("round %u: DestroyVm returned (AddDevice: %s%s%s) but the daemon still holds the "
                         "back-end's connection (record above)",
                         round, add.error_name[0] ? add.error_name : "succeeded, ", add.error_name[0] ? ": " : add.path,
                         add.error_message);
        }
        untrack_backend(be.pid);
        assert_record_has(&be, "CONNECTION 1 CLOSED", NULL);
        if (record_has(&be, "SET_VRING_KICK", NULL)) {
                assert_record_has(&be, "GET_VRING_BASE", "index=0");
                assert_record_has(&be, "GET_VRING_BASE", "index=1");
        }
        assert_no_violation(&be);
        guest_fini(&g);
        free(vm);
}

static void test_destroy_vm_while_add_device_pending(void **state) {
        (void) state;
        const int fds_before = daemon_fd_count();
        assert_true(fds_before > 0);
        for (unsigned round = 0; round < RACE_ROUNDS; round++)
                destroy_during_add_round(round);
        int fds_after = daemon_fd_count_settled(fds_before, 3000);
        if (fds_after != fds_before)
                fail_msg("vhostmigd had %d fds before and %d after", fds_before, fds_after);
        assert_true(daemon_alive());
}

/* ---- the end of a group: SIGTERM, exit 0 ------------------------------------------------------ */

static void test_daemon_exits_cleanly(void **state) {
        (void) state;
        assert_true(daemon_alive());
        int status = daemon_stop(5000);
        if (status == -ETIMEDOUT)
                fail_msg("vhostmigd did not exit within 5 s of SIGTERM");
        if (status < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                char why[64];
                describe_status(status, why, sizeof(why));
                fail_msg("vhostmigd ended with %s after SIGTERM", why);
        }
        /* Its name went with it. */
        bool has = true;
        uint64_t deadline = now_ms() + scaled_ms(2000);
        while (private_bus_name_has_owner(env.c, DEST, &has) == 0 && has && now_ms() < deadline)
                sleep_ms(20);
        assert_false(has);
}

/* ---- 6. shutdown with VMs running ----------------------------------------------------------------- */

/*
 * What the back-end saw of the daemon's shutdown: every ring stopped
 * (GET_VRING_BASE), and for a logging VM LOG_ALL switched off again, all
 * before the connection closed.
 */
static void check_shutdown_record(const struct backend *b, unsigned nrings, bool was_logging) {
        char *text = tb_record_read(b->record);
        if (!text)
                fail_msg("no record at %s", b->record);
        char *copy = strdup(text);
        bool closed = false, log_on = false, log_off_after = false, base[MAX_QUEUES] = { false };
        char *save = NULL;
        for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
                if (has_prefix(line, "VIOLATION"))
                        fail_msg("%s: %s", b->record, line);
                if (closed)
                        continue;
                if (has_prefix(line, "CONNECTION 1 CLOSED")) {
                        closed = true;
                } else if (has_prefix(line, "GET_VRING_BASE ")) {
                        for (unsigned q = 0; q < nrings; q++) {
                                char idx[32];
                                snprintf(idx, sizeof(idx), "index=%u ", q);
                                base[q] |= strstr(line, idx) != NULL;
                        }
                } else if (has_prefix(line, "SET_FEATURES ")) {
                        uint64_t f = 0;
                        if (!parse_features(line, &f))
                                fail_msg("%s: cannot read \"%s\"", b->record, line);
                        if (f & LOG_ALL_BIT)
                                log_on = true;
                        else if (log_on)
                                log_off_after = true;
                }
        }
        free(copy);
        unsigned stopped = 0;
        for (unsigned q = 0; q < nrings; q++)
                stopped += base[q];
        if (!closed || stopped != nrings || (was_logging && (!log_on || !log_off_after))) {
                print_record(b->record);
                fail_msg("%s (above): connection closed %d, GET_VRING_BASE for %u of %u rings, LOG_ALL on %d then "
                         "off %d (logging VM: %d)",
                         b->record, closed, stopped, nrings, log_on, log_off_after, was_logging);
        }
        free(text);
}

#define ONE_DEVICES 3u
#define ONE_PAIRS   4u

static void test_shutdown_with_vms(void **state) {
        (void) state;
        struct guest g1, g2;
        guest_init(&g1, 2 * ONE_PAIRS * ONE_DEVICES);
        guest_init(&g2, 2);

        /*
         * VM "one": the daemon connects to its back-ends; logging on.  Several
         * devices with several queue pairs, so that releasing it takes longer
         * than releasing "two": the daemon must wait for every VM.
         */
        char *one = create_vm("one", g1.memfd, MEM_SIZE);
        struct backend b1[ONE_DEVICES];
        for (unsigned i = 0; i < ONE_DEVICES; i++) {
                char name[16];
                snprintf(name, sizeof(name), "one-%u", i);
                backend_init(&b1[i], name);
                backend_listen(&b1[i]);
                struct device_args da = std_device(b1[i].socket, false, tb_config_features(&b1[i].cfg), &g1);
                da.queue_pairs = ONE_PAIRS;
                da.q = &g1.q[i * 2 * ONE_PAIRS];
                da.nq = 2 * ONE_PAIRS;
                char *dev = add_device(one, &da, i);
                assert_prop_s(dev, DEV_IF, "State", "running");
                assert_int_equal(prop_u(dev, DEV_IF, "QueuePairs"), ONE_PAIRS);
                free(dev);
        }
        sd_bus_message_unref(call(one, VM_IF, "StartLogging", "a{sv}", 0u));
        assert_true(prop_b(one, VM_IF, "Logging"));

        /* VM "two": server mode, the daemon listens and the back-end connects. */
        char *two = create_vm("two", g2.memfd, MEM_SIZE);
        struct backend b2;
        backend_init(&b2, "two");
        static struct async_call add;
        struct device_args da2 = std_device(b2.socket, true, tb_config_features(&b2.cfg), &g2);
        send_async(add_device_msg(two, &da2), &add);
        backend_connect(&b2);
        wait_async(&add, 10000, "AddDevice in server mode");
        if (add.error_name[0])
                fail_msg("AddDevice in server mode: %s: %s", add.error_name, add.error_message);
        assert_string_equal(add.path, "/org/vhostmig1/vm/two/dev/0");
        assert_true(prop_b(add.path, DEV_IF, "Server"));
        assert_prop_s(add.path, DEV_IF, "State", "running");
        /* The socket is the configured mode and group, so a back-end of that group can connect. */
        struct stat st;
        assert_int_equal(stat(b2.socket, &st), 0);
        assert_true(S_ISSOCK(st.st_mode));
        struct group *grp = getgrnam(SERVER_SOCKET_GROUP);
        assert_non_null(grp);
        if ((st.st_mode & 07777) != SERVER_SOCKET_MODE || st.st_gid != grp->gr_gid)
                fail_msg("the server-mode socket is mode %04o group %u; configured %04o group %u", st.st_mode & 07777,
                         (unsigned) st.st_gid, SERVER_SOCKET_MODE, (unsigned) grp->gr_gid);

        /* SIGTERM with both running. */
        int status = daemon_stop(5000);
        if (status == -ETIMEDOUT)
                fail_msg("vhostmigd did not exit within 5 s of SIGTERM with two VMs running");
        if (status < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                char why[64];
                describe_status(status, why, sizeof(why));
                fail_msg("vhostmigd ended with %s after SIGTERM with VMs running", why);
        }

        /* Each back-end saw its connection end (they serve one) and exited. */
        for (unsigned i = 0; i < ONE_DEVICES; i++)
                backend_wait_exit(&b1[i], 5000);
        backend_wait_exit(&b2, 5000);
        for (unsigned i = 0; i < ONE_DEVICES; i++)
                check_shutdown_record(&b1[i], 2 * ONE_PAIRS, true);
        check_shutdown_record(&b2, 2, false);
        if (access(b2.socket, F_OK) == 0 || errno != ENOENT)
                fail_msg("the server-mode socket %s is still there after the daemon exited", b2.socket);

        guest_fini(&g1);
        guest_fini(&g2);
        free(one);
        free(two);
}

/* ---- 7. SIGTERM while a DestroyVm is under way --------------------------------------------------- */

/*
 * A DestroyVm is in flight (its back-end is slow to answer GET_VRING_BASE)
 * when SIGTERM comes.  The daemon must finish that teardown first (bounded
 * by the request timeout), answer the caller, and only then exit 0: not exit
 * at once, leaving logging on and the caller with "no reply".
 */
static void test_shutdown_during_destroy(void **state) {
        (void) state;
        struct guest g;
        guest_init(&g, 2);
        char *vm = create_vm("dying", g.memfd, MEM_SIZE);
        struct backend be;
        backend_init(&be, "dying");
        /* The first ring's index is answered, the second's never: the teardown waits a request timeout. */
        backend_add_fault(&be, "GET_VRING_BASE:hang:2");
        backend_listen(&be);
        struct device_args da = std_device(be.socket, false, tb_config_features(&be.cfg), &g);
        free(add_device(vm, &da, 0));
        sd_bus_message_unref(call(vm, VM_IF, "StartLogging", "a{sv}", 0u));

        static struct async_call destroy;
        sd_bus_message *m = NULL;
        int r = sd_bus_message_new_method_call(env.c, &m, DEST, ROOT_PATH, MANAGER_IF, "DestroyVm");
        if (r >= 0)
                r = sd_bus_message_append(m, "s", "dying");
        if (r < 0)
                fail_msg("DestroyVm message: %s", strerror(-r));
        send_async(m, &destroy);
        uint64_t deadline = now_ms() + scaled_ms(5000);
        while (!record_has(&be, "FAULT hang", "GET_VRING_BASE") && now_ms() < deadline)
                sleep_ms(10);
        assert_record_has(&be, "FAULT hang", "GET_VRING_BASE");
        assert_false(destroy.done);

        pid_t pid = env.daemon;
        uint64_t term_ms = now_ms();
        kill(pid, SIGTERM);
        wait_async(&destroy, 3 * REQUEST_TIMEOUT_MS, "DestroyVm in flight at SIGTERM");
        if (destroy.error_name[0])
                fail_msg("DestroyVm in flight at SIGTERM answered %s: %s (the daemon must finish it first)",
                         destroy.error_name, destroy.error_message);
        int status = wait_child(pid, 3 * REQUEST_TIMEOUT_MS);
        env.daemon = status == -ETIMEDOUT ? pid : -1;
        if (status < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                char why[64];
                describe_status(status, why, sizeof(why));
                fail_msg("vhostmigd ended with %s after SIGTERM during DestroyVm", why);
        }
        uint64_t took = now_ms() - term_ms;
        if (took + 100 < REQUEST_TIMEOUT_MS / 2)
                fail_msg("vhostmigd exited %" PRIu64 " ms after SIGTERM: it cannot have waited for the teardown", took);

        /* What the back-end saw: logging switched off, the first ring stopped, then the connection closed. */
        backend_wait_exit(&be, 5000);
        check_shutdown_record(&be, 1, true);
        assert_no_violation(&be);
        guest_fini(&g);
        free(vm);
}

/* ---- main -------------------------------------------------------------------------------------- */

/* ---- the API as frozen: GetVm, PageSize, timestamps, LastError, options, AddQueues ------------- */

static uint64_t realtime_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}

static void assert_between(uint64_t v, uint64_t lo, uint64_t hi, const char *what) {
        if (v < lo || v > hi)
                fail_msg("%s is %" PRIu64 ", expected %" PRIu64 "..%" PRIu64, what, v, lo, hi);
}

/* GetVm, open to everyone, names the VM's path; an unknown name is NoSuchVm. */
static void check_get_vm(const char *name, const char *path) {
        sd_bus_message *reply = call(ROOT_PATH, MANAGER_IF, "GetVm", "s", name);
        const char *p;
        assert_int_equal(sd_bus_message_read(reply, "o", &p), 1);
        assert_string_equal(p, path);
        sd_bus_message_unref(reply);
        call_error(ERR("NoSuchVm"), "\"nope\"", NULL, ROOT_PATH, MANAGER_IF, "GetVm", "s", "nope");
}

/* A VM's timestamps and LastError: set by a failure, cleared by the next success. */
static void check_vm_timestamps(const char *vm, uint64_t before, uint64_t after) {
        assert_int_equal(prop_u(vm, VM_IF, "PageSize"), 4096);
        uint64_t created = prop_t(vm, VM_IF, "CreatedTimestamp");
        assert_between(created, before, after, "CreatedTimestamp");
        assert_between(prop_t(vm, VM_IF, "StateChangeTimestamp"), created, after, "StateChangeTimestamp");
        assert_prop_t(vm, VM_IF, "LastErrorTimestamp", 0);

        uint64_t t0 = realtime_usec();
        call_error(ERR("InvalidState"), "logging is off", NULL, vm, VM_IF, "Harvest", NULL);
        uint64_t t1 = realtime_usec();
        char *last = prop_s(vm, VM_IF, "LastError");
        if (!strstr(last, "logging is off"))
                fail_msg("LastError after a refused Harvest is \"%s\"", last);
        free(last);
        assert_between(prop_t(vm, VM_IF, "LastErrorTimestamp"), t0, t1, "LastErrorTimestamp");

        /* The next success clears it, and switching logging on is a change of state. */
        sd_bus_message_unref(call(vm, VM_IF, "StartLogging", "a{sv}", 0u));
        uint64_t t2 = realtime_usec();
        assert_prop_s(vm, VM_IF, "LastError", "");
        assert_prop_t(vm, VM_IF, "LastErrorTimestamp", 0);
        assert_between(prop_t(vm, VM_IF, "StateChangeTimestamp"), t1, t2, "StateChangeTimestamp after StartLogging");
        sd_bus_message_unref(call(vm, VM_IF, "StopLogging", NULL));

        /* A refusal on the loop (an unknown option) is a failure of the VM's as well. */
        call_error(SD_BUS_ERROR_INVALID_ARGS, "\"Foo\"", NULL, vm, VM_IF, "StartLogging", "a{sv}", 1u, "Foo", "b", 1);
        last = prop_s(vm, VM_IF, "LastError");
        if (!strstr(last, "Foo"))
                fail_msg("LastError after StartLogging with Foo is \"%s\"", last);
        free(last);
        sd_bus_message_unref(call(vm, VM_IF, "Announce", NULL));
        assert_prop_s(vm, VM_IF, "LastError", "");
}

/* 8 queue pairs on a bus that carries 16 fds per message: AddDevice with 4, AddQueues with the rest. */
static void check_add_queues(const char *vm, struct guest *g) {
        struct backend be;
        backend_init(&be, "mq");
        be.cfg.queues = 8;
        backend_listen(&be);
        struct device_args da = std_device(be.socket, false, tb_config_features(&be.cfg), g);
        da.queue_pairs = 8;
        da.nq = 8;
        da.mac = NULL; /* no MAC: Announce skips it */
        uint64_t t0 = realtime_usec();
        char *dev = add_device(vm, &da, 0);
        assert_prop_s(dev, DEV_IF, "State", "configuring");
        assert_int_equal(prop_u(dev, DEV_IF, "QueuePairs"), 8);
        assert_prop_s(dev, DEV_IF, "Mac", "");
        assert_between(prop_t(dev, DEV_IF, "CreatedTimestamp"), t0, realtime_usec(), "device CreatedTimestamp");
        call_error(ERR("InvalidState"), "configuring", NULL, dev, DEV_IF, "Reconnect", NULL);

        /* The rest, in a message of its own (16 fds again). */
        sd_bus_message *m = NULL;
        int r = sd_bus_message_new_method_call(env.c, &m, DEST, dev, DEV_IF, "AddQueues");
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "(uttthh)");
        for (unsigned i = 8; r >= 0 && i < 16; i++)
                r = sd_bus_message_append(m, "(uttthh)", g->q[i].size, g->q[i].desc, g->q[i].avail, g->q[i].used,
                                          g->q[i].kick, g->q[i].call);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r < 0)
                fail_msg("cannot build AddQueues: %s", strerror(-r));
        sd_bus_message_unref(send_ok(m, "AddQueues with 8 queues"));
        assert_prop_s(dev, DEV_IF, "State", "running");
        uint32_t rings[MAX_QUEUES];
        assert_int_equal(prop_au(dev, DEV_IF, "RingIndices", rings, MAX_QUEUES), 16);
        assert_record_has(&be, "SET_VRING_KICK", "index=15");
        if (prop_t(dev, DEV_IF, "Requests") < 16)
                fail_msg("Requests is %" PRIu64 " after starting 16 rings", prop_t(dev, DEV_IF, "Requests"));
        assert_prop_t(dev, DEV_IF, "RequestFailures", 0);
        assert_between(prop_t(dev, DEV_IF, "StateChangeTimestamp"), t0, realtime_usec(), "StateChangeTimestamp");

        /* Complete now: more queues are a state error; the device without a MAC announces nothing. */
        call_error(ERR("InvalidState"), "AddQueues", NULL, dev, DEV_IF, "AddQueues", "a(uttthh)", 0u);
        call_error(ERR("NotSupported"), "Mac", NULL, dev, DEV_IF, "Announce", NULL);
        sd_bus_message *reply = call(vm, VM_IF, "Announce", NULL);
        uint32_t sent = 99;
        assert_int_equal(sd_bus_message_read(reply, "u", &sent), 1);
        sd_bus_message_unref(reply);
        assert_int_equal(sent, 0);
        assert_int_equal(tb_record_count(be.record, "SEND_RARP"), 0);

        sd_bus_message_unref(call(vm, VM_IF, "RemoveDevice", "o", dev));
        backend_wait_exit(&be, 5000);
        assert_no_violation(&be);
        free(dev);
}

/* A configuring device whose last queues are refused is removed; RemoveDevice works while configuring. */
static void check_configuring_removed(const char *vm, struct guest *g) {
        char socket[160];
        snprintf(socket, sizeof(socket), "%s/nobody-mq.sock", env.dir);
        struct device_args da = std_device(socket, false, TB_DEFAULT_FEATURES, g);
        da.queue_pairs = 2;
        char *dev = add_device(vm, &da, 1);
        assert_prop_s(dev, DEV_IF, "State", "configuring");
        call_error(SD_BUS_ERROR_INVALID_ARGS, "queue 2", "eventfds", dev, DEV_IF, "AddQueues", "a(uttthh)", 1u,
                   g->q[2].size, g->q[2].desc, g->q[2].avail, g->q[2].used, g->memfd, g->q[2].call);
        /* Nobody listens at the socket: the last AddQueues fails, and the device is gone. */
        call_error(ERR("Backend"), socket, NULL, dev, DEV_IF, "AddQueues", "a(uttthh)", 2u, g->q[2].size, g->q[2].desc,
                   g->q[2].avail, g->q[2].used, g->q[2].kick, g->q[2].call, g->q[3].size, g->q[3].desc, g->q[3].avail,
                   g->q[3].used, g->q[3].kick, g->q[3].call);
        prop_error(dev, DEV_IF, "State", SD_BUS_ERROR_UNKNOWN_OBJECT);
        assert_int_equal(prop_strv_length(vm, VM_IF, "Devices"), 0);
        char *last = prop_s(vm, VM_IF, "LastError");
        if (!strstr(last, socket))
                fail_msg("LastError after the failed AddQueues is \"%s\"", last);
        free(last);
        free(dev);

        dev = add_device(vm, &da, 2);
        sd_bus_message_unref(call(vm, VM_IF, "RemoveDevice", "o", dev));
        prop_error(dev, DEV_IF, "State", SD_BUS_ERROR_UNKNOWN_OBJECT);
        free(dev);
}

/* A VM holds at most 32 devices: the 33rd AddDevice is LimitsExceeded, and nothing of it stays. */
#define MAX_DEVICES_PER_VM 32u

static void check_device_limit(struct guest *g) {
        char *vm = create_vm("crowded", g->memfd, MEM_SIZE);
        char socket[160];
        snprintf(socket, sizeof(socket), "%s/nobody-crowd.sock", env.dir);
        struct device_args da = std_device(socket, false, TB_DEFAULT_FEATURES, g);
        /* Waiting for their other queues, the devices need no back-end. */
        da.queue_pairs = 2;
        for (unsigned i = 0; i < MAX_DEVICES_PER_VM; i++)
                free(add_device(vm, &da, i));
        send_error(add_device_msg(vm, &da), "the 33rd AddDevice", ERR("LimitsExceeded"), "at most 32 devices", NULL);
        assert_int_equal(prop_strv_length(vm, VM_IF, "Devices"), MAX_DEVICES_PER_VM);
        destroy_vm("crowded");
        free(vm);
}

static void test_frozen_api(void **state) {
        (void) state;
        struct guest g;
        guest_init(&g, 16);
        uint64_t before = realtime_usec();
        char *vm = create_vm("frozen", g.memfd, MEM_SIZE);
        uint64_t after = realtime_usec();

        check_get_vm("frozen", vm);
        check_vm_timestamps(vm, before, after);
        check_add_queues(vm, &g);
        check_configuring_removed(vm, &g);
        check_device_limit(&g);

        destroy_vm("frozen");
        call_error(ERR("NoSuchVm"), NULL, NULL, ROOT_PATH, MANAGER_IF, "GetVm", "s", "frozen");
        free(vm);
        guest_fini(&g);
}

/* CreateVm with LibvirtDomain (err: the expected InvalidArgs needle, or NULL for success). */
static char *create_bound(const char *name, int memfd, const char *domain, const char *err) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        int r = sd_bus_call_method(env.c, DEST, ROOT_PATH, MANAGER_IF, "CreateVm", &e, &reply, "sa(httt)a{sv}", name,
                                   1u, memfd, UINT64_C(0), MEM_SIZE, UINT64_C(0), 1u, "LibvirtDomain", "s", domain);
        char *path = NULL;
        if (err)
                check_error(r, &e, "CreateVm with a bad LibvirtDomain", SD_BUS_ERROR_INVALID_ARGS, "LibvirtDomain",
                            err);
        else if (r < 0)
                fail_msg("CreateVm(%s, LibvirtDomain %s): %s", name, domain, error_text(&e, r));
        else {
                const char *p;
                assert_true(sd_bus_message_read(reply, "o", &p) > 0);
                path = strdup(p);
        }
        sd_bus_error_free(&e);
        sd_bus_message_unref(reply);
        return path;
}

static uint32_t release_domain(const char *domain) {
        sd_bus_message *reply = call(ROOT_PATH, MANAGER_IF, "ReleaseDomain", "sa{sv}", domain, 0u);
        uint32_t n = 0;
        assert_true(sd_bus_message_read(reply, "u", &n) > 0);
        sd_bus_message_unref(reply);
        return n;
}

static void assert_no_vm(const char *name) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        int r = sd_bus_call_method(env.c, DEST, ROOT_PATH, MANAGER_IF, "GetVm", &e, &reply, "s", name);
        check_error(r, &e, name, ERR("NoSuchVm"), NULL, NULL);
        sd_bus_error_free(&e);
        sd_bus_message_unref(reply);
}

/*
 * LibvirtDomain binds a VM to a domain (a UUID canonicalised, or a name);
 * ReleaseDomain destroys the VMs bound that way and no other.  Without a
 * libvirt URI the watcher is "disabled".
 */
static void test_libvirt_domains(void **state) {
        (void) state;
        char *uri = prop_s(ROOT_PATH, MANAGER_IF, "LibvirtUri");
        char *conn = prop_s(ROOT_PATH, MANAGER_IF, "LibvirtConnection");
        assert_string_equal(uri, "");
        assert_string_equal(conn, "disabled");
        free(uri);
        free(conn);

        int memfd = sealed_memfd("vhostmig-test-libvirt", MEM_SIZE);
        assert_true(memfd >= 0);
        /* Refusals leave nothing behind. */
        create_bound("lv-bad", memfd, "1b4e28ba-2fa1-11d2-883f-0016d3cca42", "not a UUID");
        create_bound("lv-bad", memfd, "1b4e28ba2fa111d2883f0016d3cca427ab", "not a UUID");
        create_bound("lv-bad", memfd, "", "1..255 bytes");
        create_bound("lv-bad", memfd, "tab\there", "printable");
        char longname[300];
        memset(longname, 'n', sizeof(longname) - 1);
        longname[sizeof(longname) - 1] = '\0';
        create_bound("lv-bad", memfd, longname, "1..255 bytes");
        assert_int_equal(prop_strv_length(ROOT_PATH, MANAGER_IF, "Vms"), 0);
        call_error(SD_BUS_ERROR_INVALID_ARGS, "domain", "not a UUID", ROOT_PATH, MANAGER_IF, "ReleaseDomain", "sa{sv}",
                   "0123456789abcdef0123456789abcdef", 0u);
        call_error(SD_BUS_ERROR_INVALID_ARGS, "unknown key \"Force\"", NULL, ROOT_PATH, MANAGER_IF, "ReleaseDomain",
                   "sa{sv}", "web", 1u, "Force", "b", 1);

        char *by_uuid = create_bound("lv-uuid", memfd, "1B4E28BA-2FA1-11D2-883F-0016D3CCA427", NULL);
        char *by_uuid2 = create_bound("lv-uuid2", memfd, "1b4e28ba-2fa1-11d2-883f-0016d3cca427", NULL);
        char *by_name = create_bound("lv-name", memfd, "web-1", NULL);
        char *other = create_vm("lv-other", memfd, MEM_SIZE);
        char *d = prop_s(by_uuid, VM_IF, "LibvirtDomain");
        assert_string_equal(d, "1b4e28ba-2fa1-11d2-883f-0016d3cca427");
        free(d);
        d = prop_s(by_name, VM_IF, "LibvirtDomain");
        assert_string_equal(d, "web-1");
        free(d);
        d = prop_s(other, VM_IF, "LibvirtDomain");
        assert_string_equal(d, "");
        free(d);
        assert_int_equal(prop_t(by_uuid, VM_IF, "LibvirtDowntimeMs"), 0);

        /* The name of a domain bound by UUID matches nothing, and the other way round. */
        assert_int_equal(release_domain("nobody"), 0);
        assert_int_equal(release_domain("1b4e28ba-2fa1-11d2-883f-0016d3cca428"), 0);
        assert_int_equal(release_domain("1b4e28ba-2FA1-11d2-883f-0016d3cca427"), 2);
        assert_no_vm("lv-uuid");
        assert_no_vm("lv-uuid2");
        assert_int_equal(prop_strv_length(ROOT_PATH, MANAGER_IF, "Vms"), 2);
        assert_int_equal(release_domain("web-1"), 1);
        assert_no_vm("lv-name");
        assert_int_equal(release_domain("web-1"), 0);
        char *name = prop_s(other, VM_IF, "Name");
        assert_string_equal(name, "lv-other");
        free(name);
        destroy_vm("lv-other");
        close(memfd);
        free(by_uuid);
        free(by_uuid2);
        free(by_name);
        free(other);
}

#define TEST(f) cmocka_unit_test_setup_teardown(f, test_setup, test_teardown)

int main(void) {
        const struct CMUnitTest policy[] = {
                TEST(test_every_method_and_property),
                TEST(test_log_switch_locked),
                TEST(test_signals),
                TEST(test_managed_objects_match_each_object),
                TEST(test_bad_arguments),
                TEST(test_libvirt_domains),
                TEST(test_frozen_api),
                TEST(test_nonroot_refused_by_policy),
                TEST(test_hung_backend),
                TEST(test_probes_do_not_queue),
                TEST(test_automatic_reconnect),
                TEST(test_truncated_guest_memory),
                TEST(test_channel_flood_while_running),
                TEST(test_impostor_refused),
                TEST(test_destroy_vm_while_add_device_pending),
                TEST(test_daemon_exits_cleanly),
        };
        const struct CMUnitTest permissive[] = {
                TEST(test_nonroot_refused_by_daemon),
                TEST(test_daemon_exits_cleanly),
        };
        const struct CMUnitTest shutdown[] = {
                TEST(test_shutdown_with_vms),
        };
        const struct CMUnitTest shutdown_destroy[] = {
                TEST(test_shutdown_during_destroy),
        };
        /* TEST_FILTER=test_name (a cmocka pattern) runs only matching tests, for debugging. */
        if (getenv("TEST_FILTER"))
                cmocka_set_test_filter(getenv("TEST_FILTER"));
        int failed = 0;
        failed += cmocka_run_group_tests_name("dbus-policy", policy, group_setup_policy, group_teardown);
        failed += cmocka_run_group_tests_name("dbus-permissive", permissive, group_setup_permissive, group_teardown);
        failed += cmocka_run_group_tests_name("dbus-shutdown", shutdown, group_setup_policy, group_teardown);
        failed += cmocka_run_group_tests_name("dbus-shutdown-destroy", shutdown_destroy, group_setup_policy,
                                              group_teardown);
        return failed ? 1 : 0;
}

/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vhostmigctl as an operator and a script run it: every verb's --json
 * output parses and has the documented fields, and the exit status is
 * right for success (0), a usage error (2), no such VM or device (5),
 * access denied (4, run as nobody) and the daemon not running (7).
 *
 * Groups, each with its own private bus (tests/dbus/start-bus.sh, the real
 * policy):
 *   ctl-offline   no daemon on the bus: usage errors, help, the error
 *                 prefix, "not running" (7) for every kind of verb, -H;
 *   ctl-daemon    vhostmigd and the project's test back-end: every verb.
 *
 * Environment (set by meson): VHOSTMIGCTL, VHOSTMIGD, START_BUS.
 * Needs root (the policy gives the daemon's name to root; callers drop to 65534).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <json-c/json.h>

#include "tests/common/clock.h"
#include "tests/common/private-bus.h"
#include "tests/backend/test-backend.h"

#define NOBODY   65534
#define MEM_SIZE (2u << 20)
#define RUN_MS   30000u

/* ---- processes ------------------------------------------------------------------------ */

struct run {
        int status; /* exit status, or 128 + signal */
        char out[65536];
        char err[8192];
};

static struct {
        struct private_bus bus;
        bool bus_up; /* started; while set, vhostmigctl is run with --bus-address */
        pid_t daemon;
        char dir[64];
        char config[128];
        char daemon_log[128];
        char mem[128];     /* guest memory: a tmpfs file */
        char socket[128];  /* test back-ends listen here, one device each (they serve */
        char socket2[128]; /* one connection at a time) */
        pid_t backend, backend2;
} env;

/* Appends what fd has to buf (len bytes, NUL-terminated); false at EOF. */
static bool drain(int fd, char *buf, size_t len) {
        size_t have = strlen(buf);
        char scratch[4096];
        ssize_t n = read(fd, scratch, sizeof(scratch));
        if (n <= 0)
                return n < 0 && errno == EINTR;
        size_t take = (size_t) n < len - 1 - have ? (size_t) n : len - 1 - have;
        memcpy(buf + have, scratch, take);
        buf[have + take] = '\0';
        return true;
}

static void child_exec(const char *const *args, uid_t uid, int out, int err) {
        const char *argv[64];
        unsigned n = 0;
        argv[n++] = getenv("VHOSTMIGCTL");
        if (env.bus_up) {
                argv[n++] = "--bus-address";
                argv[n++] = env.bus.address;
        }
        for (unsigned i = 0; args[i] && n < 63; i++)
                argv[n++] = args[i];
        argv[n] = NULL;
        dup2(out, 1);
        dup2(err, 2);
        close_range(3, ~0u, 0);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (uid != 0 && (setgroups(0, NULL) < 0 || setresgid(uid, uid, uid) < 0 || setresuid(uid, uid, uid) < 0))
                _exit(126);
        unsetenv("DBUS_SYSTEM_BUS_ADDRESS");
        execv(argv[0], (char *const *) argv);
        _exit(127);
}

/* Runs vhostmigctl [--bus-address BUS] ARGS... as uid, bounded; returns what it did. */
static struct run *run_as(uid_t uid, const char *const *args) {
        struct run *r = calloc(1, sizeof(*r));
        int out[2], err[2];
        assert_non_null(r);
        assert_int_equal(pipe2(out, O_CLOEXEC), 0);
        assert_int_equal(pipe2(err, O_CLOEXEC), 0);
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0)
                child_exec(args, uid, out[1], err[1]);
        close(out[1]);
        close(err[1]);

        struct pollfd p[2] = { { out[0], POLLIN, 0 }, { err[0], POLLIN, 0 } };
        uint64_t deadline = now_ms() + RUN_MS;
        bool open_out = true, open_err = true;
        while ((open_out || open_err) && now_ms() < deadline) {
                p[0].fd = open_out ? out[0] : -1;
                p[1].fd = open_err ? err[0] : -1;
                if (poll(p, 2, 100) <= 0)
                        continue;
                if (p[0].revents)
                        open_out = drain(out[0], r->out, sizeof(r->out));
                if (p[1].revents)
                        open_err = drain(err[0], r->err, sizeof(r->err));
        }
        close(out[0]);
        close(err[0]);
        int status = tb_wait_exit(pid, deadline > now_ms() ? (unsigned) (deadline - now_ms()) + 1 : 1);
        if (status == -ETIMEDOUT) {
                kill(pid, SIGKILL);
                waitpid(pid, &status, 0);
                fail_msg("vhostmigctl %s ... did not finish within %u ms", args[0], RUN_MS);
        }
        r->status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        return r;
}

#define ARGS(...) ((const char *const[]){ __VA_ARGS__, NULL })

/* Runs and checks the exit status; the caller frees. */
static struct run *expect_as(uid_t uid, int status, const char *const *args) {
        struct run *r = run_as(uid, args);
        if (r->status != status) {
                char cmd[512] = "";
                for (unsigned i = 0; args[i]; i++)
                        snprintf(cmd + strlen(cmd), sizeof(cmd) - strlen(cmd), " %s", args[i]);
                fail_msg("vhostmigctl%s: exit status %d, expected %d\nstdout: %s\nstderr: %s", cmd, r->status, status,
                         r->out, r->err);
        }
        return r;
}

#define expect(status, ...) expect_as(0, (status), ARGS(__VA_ARGS__))

/* Runs, checks the status and that stdout is one JSON document of `type`; the caller puts it. */
static json_object *expect_json_as(uid_t uid, int status, json_type type, const char *const *args) {
        struct run *r = expect_as(uid, status, args);
        json_object *j = json_tokener_parse(r->out);
        if (!j || !json_object_is_type(j, type))
                fail_msg("vhostmigctl %s ...: not a JSON %s: \"%s\"", args[0], json_type_to_name(type), r->out);
        free(r);
        return j;
}

#define expect_json(status, type, ...) expect_json_as(0, (status), (type), ARGS("--json", __VA_ARGS__))

static json_object *field(json_object *o, const char *key, json_type type) {
        json_object *v = NULL;
        if (!json_object_object_get_ex(o, key, &v))
                fail_msg("no \"%s\" in %s", key, json_object_to_json_string(o));
        if (!json_object_is_type(v, type))
                fail_msg("\"%s\" is a %s, expected a %s, in %s", key, json_type_to_name(json_object_get_type(v)),
                         json_type_to_name(type), json_object_to_json_string(o));
        return v;
}

static void assert_field_true(json_object *o, const char *key) {
        assert_true(json_object_get_boolean(field(o, key, json_type_boolean)));
}

static void assert_field_string(json_object *o, const char *key, const char *expected) {
        assert_string_equal(json_object_get_string(field(o, key, json_type_string)), expected);
}

static void assert_field_int(json_object *o, const char *key, int64_t expected) {
        assert_int_equal(json_object_get_int64(field(o, key, json_type_int)), expected);
}

/*
 * stderr says what went wrong, prefixed with the program's name, never its
 * path (after what ssh said itself, with -H).
 */
static void assert_error(const struct run *r, const char *needle) {
        if (strncmp(r->err, "vhostmigctl: ", strlen("vhostmigctl: ")) != 0 && !strstr(r->err, "\nvhostmigctl: "))
                fail_msg("stderr has no line starting with \"vhostmigctl: \": \"%s\"", r->err);
        if (needle && !strstr(r->err, needle))
                fail_msg("stderr does not mention \"%s\": \"%s\"", needle, r->err);
}

/* ---- the bus and the daemon --------------------------------------------------------------- */

static int bus_start(void) {
        if (private_bus_start(&env.bus, false) < 0)
                return -EIO;
        env.bus_up = true;
        return 0;
}

static void bus_stop(void) {
        if (!env.bus_up)
                return;
        (void) private_bus_stop(&env.bus);
        env.bus_up = false;
}

static void dump_daemon_log(void) {
        char line[1200];
        FILE *f = fopen(env.daemon_log, "re");
        if (!f)
                return;
        while (fgets(line, sizeof(line), f))
                fprintf(stderr, "vhostmigd: %s", line);
        fclose(f);
}

/* Starts vhostmigd; ready once `vhostmigctl status` says it runs. */
static int daemon_start(void) {
        pid_t pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                int log = open(env.daemon_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
                if (log < 0)
                        _exit(126);
                dup2(log, 1);
                dup2(log, 2);
                close_range(3, ~0u, 0);
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                setenv("DBUS_SYSTEM_BUS_ADDRESS", env.bus.address, 1);
                unsetenv("NOTIFY_SOCKET");
                execl(getenv("VHOSTMIGD"), "vhostmigd", "--config", env.config, (char *) NULL);
                _exit(127);
        }
        env.daemon = pid;
        for (unsigned i = 0; i < 200; i++) {
                struct run *r = run_as(0, ARGS("status"));
                int status = r->status;
                free(r);
                if (status == 0)
                        return 0;
                if (tb_wait_exit(pid, 1) != -ETIMEDOUT) {
                        env.daemon = 0;
                        dump_daemon_log();
                        return -ECHILD;
                }
                sleep_ms(50);
        }
        dump_daemon_log();
        return -ETIMEDOUT;
}

static void daemon_stop(void) {
        if (env.daemon <= 0)
                return;
        kill(env.daemon, SIGTERM);
        if (tb_wait_exit(env.daemon, 10000) == -ETIMEDOUT) {
                kill(env.daemon, SIGKILL);
                waitpid(env.daemon, NULL, 0);
        }
        env.daemon = 0;
}

static int group_setup_offline(void **state) {
        (void) state;
        memset(&env, 0, sizeof(env));
        return bus_start();
}

static int group_setup_daemon(void **state) {
        (void) state;
        memset(&env, 0, sizeof(env));
        snprintf(env.dir, sizeof(env.dir), "/tmp/vhostmig-ctl-XXXXXX");
        if (!mkdtemp(env.dir))
                return -1;
        snprintf(env.config, sizeof(env.config), "%s/vhostmigd.json", env.dir);
        snprintf(env.daemon_log, sizeof(env.daemon_log), "%s/vhostmigd.log", env.dir);
        snprintf(env.socket, sizeof(env.socket), "%s/backend.sock", env.dir);
        snprintf(env.socket2, sizeof(env.socket2), "%s/backend2.sock", env.dir);
        snprintf(env.mem, sizeof(env.mem), "/dev/shm/vhostmig-ctl-%d", (int) getpid());

        FILE *f = fopen(env.config, "we");
        if (!f)
                return -1;
        fprintf(f, "{ \"request_timeout_ms\": 2000, \"monitor_interval_ms\": 200 }\n");
        fclose(f);
        int fd = open(env.mem, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0 || ftruncate(fd, MEM_SIZE) < 0)
                return -1;
        close(fd);

        struct tb_config cfg;
        tb_config_init(&cfg);
        cfg.queues = 8;
        cfg.max_connections = 0;
        if (tb_spawn_listen(&cfg, env.socket, &env.backend) < 0 ||
            tb_spawn_listen(&cfg, env.socket2, &env.backend2) < 0)
                return -1;
        if (bus_start() < 0)
                return -1;
        return daemon_start() < 0 ? -1 : 0;
}

static int group_teardown(void **state) {
        (void) state;
        if (env.daemon > 0) {
                daemon_stop();
                dump_daemon_log();
        }
        if (env.backend > 0)
                (void) tb_stop(env.backend);
        if (env.backend2 > 0)
                (void) tb_stop(env.backend2);
        bus_stop();
        if (env.mem[0])
                unlink(env.mem);
        if (env.dir[0]) {
                unlink(env.config);
                unlink(env.daemon_log);
                unlink(env.socket);
                unlink(env.socket2);
                rmdir(env.dir);
        }
        return 0;
}

/* ---- without a daemon ------------------------------------------------------------------ */

static void test_usage_errors(void **state) {
        (void) state;
        const char *const *cases[] = {
                ARGS("nosuchverb"),
                ARGS("vm"),
                ARGS("vm", "nosuch"),
                ARGS("status", "extra"),
                ARGS("status", "--bogus"),
                ARGS("--bogus", "status"),
                ARGS("-x"),
                ARGS("show"),
                ARGS("show", "bad/name"),
                ARGS("vm", "create", "vm0"),
                ARGS("probe"),
                ARGS("probe", "/x", "--timeout", "0"),
                ARGS("probe", "/x", "--timeout"),
                ARGS("device", "remove", "vm0", "x"),
                ARGS("device", "add", "vm0", "/x", "--mac", "-1:-2:-3:-4:-5:-6", "--eventfds", "--queue",
                     "256:0:0x1000:0x2000"),
                ARGS("device", "add", "vm0", "/x", "--queue-pairs", "9"),
                ARGS("help", "nosuch"),
                ARGS("--bus-address", "nocolon", "status"),
                ARGS("migrate"),
                ARGS("migrate", "start", "vm0"),
                ARGS("migrate", "start", "vm0", "--token", "0123456789abcdef0123456789abcdef"),
                ARGS("migrate", "start", "vm0", "--to", "ftp:x", "--token", "0123456789abcdef0123456789abcdef"),
                ARGS("migrate", "start", "vm0", "--to", "unix:/x", "--token", "short"),
                ARGS("migrate", "incoming", "vm0", "--listen", "ftp:x"),
                ARGS("migrate", "status"),
                ARGS("migrate", "save-state", "vm0"),
                ARGS("migrate", "load-state", "vm0", "/x", "/y"),
                ARGS("migrate", "save-state", "vm0", ""),
                ARGS("migrate", "nosuch", "vm0"),
                ARGS("device", "add", "vm0", "/x", "--type", "scsi", "--eventfds", "--queue", "256:0:0x1000:0x2000"),
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct run *r = expect_as(0, 2, cases[i]);
                assert_error(r, "--help");
                free(r);
        }
}

#define TOKEN "0123456789abcdef0123456789abcdef"
#define START "migrate", "start", "vm0", "--to", "unix:/x", "--token", TOKEN

/* The options of a live migration: each refused without --live, naming itself, and out of range. */
static void test_live_usage_errors(void **state) {
        (void) state;
        const struct {
                const char *const *args;
                const char *needle;
        } cases[] = {
                { ARGS(START, "--max-downtime", "100"), "--max-downtime tunes a live migration: it needs --live" },
                { ARGS(START, "--max-bandwidth", "1M"), "--max-bandwidth tunes a live migration" },
                { ARGS("migrate", "start", "--max-rounds", "3", "vm0", "--to", "unix:/x", "--token", TOKEN),
                  "--max-rounds tunes" },
                { ARGS(START, "--force-switchover"), "--force-switchover tunes" },
                { ARGS(START, "--pause-timeout", "100", "--wait"), "--pause-timeout tunes" },
                { ARGS(START, "--live", "--max-downtime", "0"), "invalid --max-downtime '0' (1..3600000)" },
                { ARGS(START, "--live", "--max-downtime", "3600001"), "invalid --max-downtime" },
                { ARGS(START, "--live", "--max-rounds", "10001"), "invalid --max-rounds '10001' (1..10000)" },
                { ARGS(START, "--live", "--max-rounds", "-1"), "invalid --max-rounds" },
                { ARGS(START, "--live", "--max-bandwidth", "1X"), "invalid --max-bandwidth '1X'" },
                { ARGS(START, "--live", "--max-bandwidth", "-5"), "invalid --max-bandwidth" },
                { ARGS(START, "--live", "--max-bandwidth", "99999999999999999999"), "invalid --max-bandwidth" },
                { ARGS(START, "--live", "--pause-timeout", "soon"), "invalid --pause-timeout" },
                { ARGS(START, "--live", "--max-rounds"), "needs a value" },
                { ARGS(START, "--live=yes"), "--live" },
                { ARGS("migrate", "continue"), "exactly one VM" },
                { ARGS("migrate", "continue", "vm0", "vm1"), "exactly one VM" },
                { ARGS("migrate", "continue", "bad/name"), "invalid VM name" },
                { ARGS("migrate", "continue", "vm0", "--live"), "unrecognized option '--live'" },
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct run *r = expect_as(0, 2, cases[i].args);
                assert_error(r, cases[i].needle);
                assert_error(r, "Try 'vhostmigctl migrate ");
                assert_string_equal(r->out, "");
                free(r);
        }
        /* Every option in its valid form parses: the call then finds no daemon (7). */
        struct run *r = expect(7, START, "--live", "--max-downtime", "3600000", "--max-bandwidth", "1G", "--max-rounds",
                               "1", "--force-switchover", "--pause-timeout", "500", "--wait");
        assert_error(r, "not running");
        free(r);
        r = expect(7, START, "--live", "--max-bandwidth", "0", "--max-rounds", "10000", "--max-downtime", "1");
        free(r);
        r = expect(7, "migrate", "continue", "vm0");
        assert_error(r, "not running");
        free(r);
        r = expect(0, "migrate", "start", "--help");
        assert_non_null(strstr(r->out, "--max-bandwidth=BYTES"));
        assert_non_null(strstr(r->out, "--pause-timeout=MS"));
        free(r);
        r = expect(0, "help", "migrate", "continue");
        assert_non_null(strstr(r->out, "MigrateContinue"));
        free(r);
}

static void test_help(void **state) {
        (void) state;
        struct run *r = expect(0, "--help");
        assert_non_null(strstr(r->out, "Exit status"));
        assert_non_null(strstr(r->out, "7 vhostmigd is not running"));
        free(r);
        r = expect(0, "device", "add", "--help");
        assert_non_null(strstr(r->out, "--queue-pairs"));
        free(r);
        r = expect(0, "help", "device", "add");
        assert_non_null(strstr(r->out, "--queue-pairs"));
        free(r);
        /* Permutation: the option after the arguments. */
        r = expect(0, "show", "vm0", "--help");
        assert_non_null(strstr(r->out, "show VM"));
        free(r);
        r = expect(0, "--version");
        assert_non_null(strstr(r->out, "vhostmigctl "));
        free(r);
}

static void test_not_running(void **state) {
        (void) state;
        struct run *r = expect(7, "status");
        assert_non_null(strstr(r->out, "not running"));
        free(r);
        json_object *j = expect_json(7, json_type_object, "status");
        assert_false(json_object_get_boolean(field(j, "running", json_type_boolean)));
        json_object_put(j);

        const char *const *cases[] = {
                ARGS("list"),
                ARGS("show", "vm0"),
                ARGS("vm", "destroy", "vm0"),
                ARGS("logging", "start", "vm0"),
                ARGS("logging", "harvest", "vm0"),
                ARGS("announce", "vm0"),
                ARGS("reconnect", "vm0", "0"),
                ARGS("device", "remove", "vm0", "0"),
                ARGS("migrate", "status", "vm0"),
                ARGS("migrate", "cancel", "vm0"),
                ARGS("migrate", "save-state", "vm0", "/nonexistent/vhostmig-state"),
                ARGS("migrate", "load-state", "vm0", "/nonexistent/vhostmig-state"),
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                r = expect_as(0, 7, cases[i]);
                assert_error(r, "not running");
                free(r);
        }
}

static void test_host(void **state) {
        (void) state;
        bool up = env.bus_up;
        env.bus_up = false; /* no --bus-address */
        struct run *r = expect(1, "-H", "nobody@vhostmig-test.invalid", "status");
        assert_error(r, "vhostmig-test.invalid");
        free(r);
        r = expect(1, "list", "--host=nobody@vhostmig-test.invalid");
        assert_error(r, "vhostmig-test.invalid");
        free(r);
        r = expect(2, "-H", "somehost", "--bus-address", "unix:path=/nonexistent", "status");
        assert_error(r, "exclude");
        free(r);
        r = expect(2, "-H", "somehost", "device", "add", "vm0", "/x", "--eventfds", "--queue", "256:0:0x1000:0x2000");
        assert_error(r, "-H");
        free(r);
        r = expect(2, "-H", "somehost", "migrate", "save-state", "vm0", "/tmp/x");
        assert_error(r, "-H");
        free(r);
        env.bus_up = up;
}

/* ---- with the daemon --------------------------------------------------------------------- */

static void test_probe(void **state) {
        (void) state;
        /* GNU permutation: options after the socket. */
        json_object *j = expect_json_as(0, 0, json_type_object, ARGS("probe", env.socket, "--timeout", "2", "--json"));
        assert_field_string(j, "socket", env.socket);
        field(j, "features", json_type_string);
        field(j, "feature_names", json_type_array);
        field(j, "protocol_features", json_type_string);
        field(j, "protocol_features_negotiated", json_type_string);
        assert_field_int(j, "queue_pairs", 8);
        assert_field_true(j, "migratable");
        field(j, "blockers", json_type_array);
        json_object_put(j);
        struct run *r = expect(1, "probe", "/nonexistent/socket", "--timeout", "0.5");
        assert_error(r, "probe /nonexistent/socket");
        free(r);
}

static void test_status_and_list(void **state) {
        (void) state;
        json_object *j = expect_json(0, json_type_object, "status");
        assert_field_true(j, "running");
        field(j, "version", json_type_string);
        assert_field_int(j, "vms", 0);
        /* No libvirt.uri: the watcher is off, in one object rather than loose properties. */
        json_object *lv = field(j, "libvirt", json_type_object);
        assert_field_string(lv, "uri", "");
        assert_field_string(lv, "connection", "disabled");
        assert_field_string(lv, "last_error", "");
        assert_field_int(lv, "last_error_timestamp", 0);
        assert_null(json_object_object_get(j, "libvirt_connection"));
        json_object_put(j);
        struct run *st = expect(0, "status");
        char line[64];
        snprintf(line, sizeof(line), "  %-24s %s\n", "Libvirt:", "disabled");
        if (!strstr(st->out, line))
                fail_msg("status has no line \"%s\":\n%s", line, st->out);
        assert_null(strstr(st->out, "Libvirt connection"));
        free(st);
        j = expect_json(0, json_type_array, "list");
        assert_int_equal(json_object_array_length(j), 0);
        json_object_put(j);
        struct run *r = expect(0, "list", "-q");
        assert_string_equal(r->out, "");
        free(r);
}

static char *memory_arg(void) {
        char *s = NULL;
        assert_true(asprintf(&s, "%s:0:%u", env.mem, MEM_SIZE) > 0);
        return s;
}

#define QUEUE(i) "256:0x" #i "0000:0x" #i "1000:0x" #i "2000"

static void test_vm_lifecycle(void **state) {
        (void) state;
        char *mem = memory_arg();

        json_object *j = expect_json(0, json_type_object, "vm", "create", "vm0", "--memory", mem);
        assert_field_string(j, "vm", "vm0");
        assert_field_string(j, "object", "/org/vhostmig1/vm/vm0");
        assert_field_true(j, "created");
        json_object_put(j);
        struct run *r = expect(1, "vm", "create", "vm0", "--memory", mem);
        assert_error(r, "vm create");
        free(r);

        /* The list, for scripts and completion: rows only, the name first. */
        r = expect(0, "list", "--no-legend");
        assert_true(strncmp(r->out, "vm0 ", 4) == 0);
        assert_null(strstr(r->out, "NAME"));
        free(r);
        r = expect(0, "list");
        assert_non_null(strstr(r->out, "NAME"));
        free(r);
        j = expect_json(0, json_type_array, "list");
        assert_int_equal(json_object_array_length(j), 1);
        json_object *vm = json_object_array_get_idx(j, 0);
        assert_field_string(vm, "name", "vm0");
        assert_field_int(vm, "memory_size", MEM_SIZE);
        assert_field_int(vm, "devices", 0);
        json_object_put(j);

        /* One queue pair, then eight: AddDevice and AddQueues on a stock bus. */
        j = expect_json(0, json_type_object, "device", "add", "vm0", env.socket, "--eventfds", "--mac",
                        "52:54:00:12:34:56", "--queue", QUEUE(1), "--queue", QUEUE(2));
        assert_field_int(j, "device", 0);
        assert_field_string(j, "object", "/org/vhostmig1/vm/vm0/dev/0");
        assert_field_true(j, "added");
        json_object_put(j);
        j = expect_json(0, json_type_object, "device", "add", "vm0", env.socket2, "--eventfds", "--queue-pairs", "8",
                        "--queue", QUEUE(1), "--queue", QUEUE(2), "--queue", QUEUE(3), "--queue", QUEUE(4), "--queue",
                        QUEUE(5), "--queue", QUEUE(6), "--queue", QUEUE(7), "--queue", QUEUE(8), "--queue", QUEUE(9),
                        "--queue", QUEUE(a), "--queue", QUEUE(b), "--queue", QUEUE(c), "--queue", QUEUE(d), "--queue",
                        QUEUE(e), "--queue", QUEUE(f), "--queue", QUEUE(10));
        assert_field_int(j, "device", 1);
        assert_field_int(j, "queue_pairs", 8);
        json_object_put(j);

        j = expect_json(0, json_type_object, "show", "vm0");
        assert_field_string(j, "name", "vm0");
        assert_field_int(j, "memory_size", MEM_SIZE);
        assert_field_int(j, "page_size", 4096);
        field(j, "migration_blocked", json_type_boolean);
        field(j, "migration_blockers", json_type_array);
        field(j, "logging", json_type_boolean);
        field(j, "dirty_pages", json_type_int);
        field(j, "created_timestamp", json_type_int);
        field(j, "state_change_timestamp", json_type_int);
        field(j, "last_error", json_type_string);
        json_object *devices = field(j, "devices", json_type_array);
        assert_int_equal(json_object_array_length(devices), 2);
        json_object *d1 = json_object_array_get_idx(devices, 1);
        assert_field_int(d1, "number", 1);
        assert_field_string(d1, "state", "running");
        assert_field_int(d1, "queue_pairs", 8);
        field(d1, "features", json_type_string);
        field(d1, "acked_feature_names", json_type_array);
        field(d1, "migration_blockers", json_type_array);
        field(d1, "ring_indices", json_type_array);
        field(d1, "requests", json_type_int);
        field(d1, "request_failures", json_type_int);
        field(d1, "created_timestamp", json_type_int);
        assert_field_string(json_object_array_get_idx(devices, 0), "mac", "52:54:00:12:34:56");
        json_object_put(j);

        /* Readable labels in text. */
        r = expect(0, "show", "vm0");
        assert_non_null(strstr(r->out, "Memory size:"));
        assert_non_null(strstr(r->out, "Dirty pages:"));
        assert_non_null(strstr(r->out, "MAC address:"));
        free(r);

        j = expect_json(0, json_type_object, "logging", "start", "vm0");
        assert_field_true(j, "logging");
        json_object_put(j);
        j = expect_json(0, json_type_object, "logging", "harvest", "vm0");
        field(j, "new_pages", json_type_int);
        field(j, "dirty_pages", json_type_int);
        json_object_put(j);
        j = expect_json(0, json_type_object, "logging", "stop", "vm0");
        assert_false(json_object_get_boolean(field(j, "logging", json_type_boolean)));
        json_object_put(j);
        j = expect_json(0, json_type_object, "announce", "vm0");
        assert_field_int(j, "sent", 1); /* device 1 has no MAC: skipped */
        json_object_put(j);
        j = expect_json(0, json_type_object, "reconnect", "vm0", "0");
        assert_field_true(j, "reconnected");
        assert_field_int(j, "device", 0);
        json_object_put(j);
        j = expect_json(0, json_type_object, "device", "remove", "vm0", "1");
        assert_field_true(j, "removed");
        json_object_put(j);

        /* Access denied: a local user may read but not change. */
        r = expect_as(NOBODY, 4, ARGS("--bus-address", env.bus.address, "vm", "destroy", "vm0"));
        assert_error(r, "access denied");
        free(r);
        r = expect_as(NOBODY, 0, ARGS("--bus-address", env.bus.address, "list", "-q"));
        free(r);

        j = expect_json(0, json_type_object, "vm", "destroy", "vm0");
        assert_field_true(j, "destroyed");
        json_object_put(j);
        free(mem);
}

static void test_not_found(void **state) {
        (void) state;
        char *mem = memory_arg();
        const char *const *cases[] = {
                ARGS("show", "nosuch"),
                ARGS("vm", "destroy", "nosuch"),
                ARGS("logging", "start", "nosuch"),
                ARGS("logging", "harvest", "nosuch"),
                ARGS("announce", "nosuch"),
                ARGS("reconnect", "nosuch", "0"),
                ARGS("device", "remove", "nosuch", "0"),
                ARGS("device", "remove", "vm1", "7"),
                ARGS("reconnect", "vm1", "7"),
                ARGS("migrate", "status", "nosuch"),
                ARGS("migrate", "cancel", "nosuch"),
                ARGS("migrate", "incoming", "nosuch"),
                ARGS("migrate", "load-state", "nosuch", "/dev/null"),
        };
        json_object_put(expect_json(0, json_type_object, "vm", "create", "vm1", "--memory", mem));
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct run *r = expect_as(0, 5, cases[i]);
                assert_error(r, NULL);
                free(r);
        }
        struct run *r = expect(5, "device", "remove", "vm1", "7");
        assert_error(r, "7");
        free(r);
        json_object_put(expect_json(0, json_type_object, "vm", "destroy", "vm1"));
        free(mem);
}

/* The keys of every migrate start --wait --json line (vhostmigctl(1)); live ones only with `live`. */
static void assert_migration_keys(json_object *j, bool live) {
        static const char *const ints[] = { "pages_total", "pages_transferred", "zero_pages", "bytes_transferred",
                                            "downtime_ms", "total_ms",          "rarp_sent",  "migration_checksum" };
        static const char *const live_ints[] = { "round",     "pages_remaining",      "dirty_rate",
                                                 "bandwidth", "expected_downtime_ms", "setup_ms" };
        field(j, "vm", json_type_string);
        field(j, "migration_state", json_type_string);
        field(j, "role", json_type_string);
        field(j, "migration_error", json_type_string);
        for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++)
                field(j, ints[i], json_type_int);
        for (size_t i = 0; live && i < sizeof(live_ints) / sizeof(live_ints[0]); i++)
                field(j, live_ints[i], json_type_int);
}

/*
 * migrate start --wait --json: JSON Lines, every line an object with the
 * migration's keys, "progress" updates and one "result" last.  Returns
 * the result (the caller puts it); *updates: how many progress lines.
 */
static json_object *expect_migration_lines(const char *out, bool live, unsigned *updates) {
        char *copy = strdup(out), *save = NULL;
        json_object *result = NULL;
        assert_non_null(copy);
        *updates = 0;
        for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
                json_object *j = json_tokener_parse(line);
                if (!j || !json_object_is_type(j, json_type_object))
                        fail_msg("migrate start --wait --json printed a line that is no JSON object: \"%s\"", line);
                if (result)
                        fail_msg("a line after the result: \"%s\"", line);
                assert_migration_keys(j, live);
                const char *event = json_object_get_string(field(j, "event", json_type_string));
                if (strcmp(event, "result") == 0)
                        result = j;
                else {
                        assert_string_equal(event, "progress");
                        (*updates)++;
                        json_object_put(j);
                }
        }
        free(copy);
        if (!result)
                fail_msg("no result line in \"%s\"", out);
        return result;
}

/* Two VMs of one daemon, the second the first's destination: the migrate verbs end to end. */
static void test_migrate(void **state) {
        (void) state;
        char *mem = memory_arg(), *mem2 = NULL, path2[sizeof(env.mem) + 8];
        snprintf(path2, sizeof(path2), "%s-dst", env.mem);
        int fd = open(path2, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        assert_true(fd >= 0 && ftruncate(fd, MEM_SIZE) == 0);
        close(fd);
        assert_true(asprintf(&mem2, "%s:0:%u", path2, MEM_SIZE) > 0);

        json_object_put(expect_json(0, json_type_object, "vm", "create", "vms", "--memory", mem));
        json_object_put(expect_json(0, json_type_object, "vm", "create", "vmd", "--memory", mem2));
        json_object_put(expect_json(0, json_type_object, "device", "add", "vms", env.socket, "--eventfds", "--queue",
                                    QUEUE(1), "--queue", QUEUE(2)));
        json_object *j = expect_json(0, json_type_object, "show", "vms");
        assert_field_string(j, "migration_state", "none");
        assert_field_string(j, "role", "none");
        json_object_put(j);
        json_object_put(expect_json(0, json_type_object, "device", "add", "vmd", env.socket2, "--eventfds", "--queue",
                                    QUEUE(1), "--queue", QUEUE(2), "--incoming"));

        j = expect_json(0, json_type_object, "migrate", "incoming", "vmd");
        char *address = strdup(json_object_get_string(field(j, "address", json_type_string)));
        char *token = strdup(json_object_get_string(field(j, "token", json_type_string)));
        json_object_put(j);
        assert_true(strncmp(address, "unix:", 5) == 0);
        assert_int_equal(strlen(token), 32);
        j = expect_json(0, json_type_object, "migrate", "status", "vmd");
        assert_field_string(j, "role", "destination");
        json_object_put(j);

        struct run *r = expect(0, "--json", "migrate", "start", "vms", "--to", address, "--token", token, "--wait");
        unsigned updates;
        j = expect_migration_lines(r->out, false, &updates);
        free(r);
        assert_true(updates >= 1); /* at least the state read once the call returned */
        assert_field_string(j, "vm", "vms");
        assert_field_string(j, "migration_state", "completed");
        assert_field_string(j, "role", "source");
        assert_field_int(j, "pages_total", MEM_SIZE / 4096);
        assert_field_int(j, "pages_transferred", MEM_SIZE / 4096);
        field(j, "zero_pages", json_type_int);
        field(j, "bytes_transferred", json_type_int);
        field(j, "downtime_ms", json_type_int);
        assert_field_string(j, "migration_error", "");
        json_object_put(j);
        r = expect(0, "migrate", "status", "vmd");
        assert_non_null(strstr(r->out, "completed"));
        assert_non_null(strstr(r->out, "destination"));
        free(r);
        /* Nothing left to cancel; nor to start again from a used token. */
        r = expect(1, "migrate", "cancel", "vms");
        assert_error(r, "no migration");
        free(r);

        json_object_put(expect_json(0, json_type_object, "vm", "destroy", "vms"));
        json_object_put(expect_json(0, json_type_object, "vm", "destroy", "vmd"));
        unlink(path2);
        free(address);
        free(token);
        free(mem);
        free(mem2);
}

/* A file the size of guest memory, for a second VM; *arg is its --memory. */
static void second_memory(char *path, size_t len, const char *suffix, char **arg) {
        snprintf(path, len, "%s-%s", env.mem, suffix);
        int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        assert_true(fd >= 0 && ftruncate(fd, MEM_SIZE) == 0);
        close(fd);
        assert_true(asprintf(arg, "%s:0:%u", path, MEM_SIZE) > 0);
}

static void copy_file(const char *from, const char *to) {
        static char buf[MEM_SIZE];
        int in = open(from, O_RDONLY | O_CLOEXEC), out = open(to, O_WRONLY | O_CLOEXEC);
        assert_true(in >= 0 && out >= 0);
        assert_int_equal(read(in, buf, sizeof(buf)), sizeof(buf));
        assert_int_equal(write(out, buf, sizeof(buf)), sizeof(buf));
        close(in);
        close(out);
}

/* The same two VMs, the VMM carrying the memory: save-state, the file, load-state. */
static void test_migrate_state(void **state) {
        (void) state;
        char *mem = memory_arg(), *mem2 = NULL, path2[sizeof(env.mem) + 8], file[sizeof(env.dir) + 16];
        second_memory(path2, sizeof(path2), "st", &mem2);
        snprintf(file, sizeof(file), "%s/vms.state", env.dir);
        unlink(file);

        json_object_put(expect_json(0, json_type_object, "vm", "create", "vms", "--memory", mem));
        json_object_put(expect_json(0, json_type_object, "vm", "create", "vmd", "--memory", mem2));
        json_object_put(expect_json(0, json_type_object, "device", "add", "vms", env.socket, "--eventfds", "--queue",
                                    QUEUE(1), "--queue", QUEUE(2), "--type", "net"));
        json_object_put(expect_json(0, json_type_object, "device", "add", "vmd", env.socket2, "--eventfds", "--queue",
                                    QUEUE(1), "--queue", QUEUE(2), "--incoming"));

        /* A VM with nothing to save leaves no file behind. */
        struct run *r = expect(1, "migrate", "save-state", "vmd", file);
        assert_error(r, "incoming");
        free(r);
        assert_int_equal(access(file, F_OK), -1);

        json_object *j = expect_json(0, json_type_object, "migrate", "save-state", "vms", file);
        assert_field_string(j, "vm", "vms");
        assert_field_string(j, "migration_state", "completed");
        assert_field_string(j, "role", "source");
        assert_field_string(j, "migration_error", "");
        json_object_put(j);
        struct stat st;
        assert_int_equal(stat(file, &st), 0);
        assert_true(st.st_size > 0);
        assert_int_equal(st.st_mode & 0777, 0600);

        r = expect(5, "migrate", "load-state", "nosuch", file);
        free(r);
        r = expect(1, "migrate", "load-state", "vmd", "/nonexistent/vhostmig-state");
        assert_error(r, "/nonexistent/vhostmig-state");
        free(r);
        copy_file(env.mem, path2); /* the VMM carries the memory */
        r = expect(0, "migrate", "load-state", "vmd", file);
        assert_non_null(strstr(r->out, "completed"));
        assert_non_null(strstr(r->out, "destination"));
        free(r);
        j = expect_json(0, json_type_object, "show", "vmd");
        assert_field_string(j, "migration_state", "completed");
        json_object_put(j);
        /* Loaded once: the device no longer waits for a state. */
        r = expect(1, "migrate", "load-state", "vmd", file);
        assert_error(r, "Incoming");
        free(r);

        json_object_put(expect_json(0, json_type_object, "vm", "destroy", "vms"));
        json_object_put(expect_json(0, json_type_object, "vm", "destroy", "vmd"));
        unlink(file);
        unlink(path2);
        free(mem);
        free(mem2);
}

/* A source "vms" and its destination "vmd" (memory file path2), waiting: the address and token. */
struct pair {
        char *mem, *mem2, path2[sizeof(env.mem) + 8];
        char *address, *token;
};

static void pair_setup(struct pair *p, const char *suffix) {
        p->mem = memory_arg();
        second_memory(p->path2, sizeof(p->path2), suffix, &p->mem2);
        json_object_put(expect_json(0, json_type_object, "vm", "create", "vms", "--memory", p->mem));
        json_object_put(expect_json(0, json_type_object, "vm", "create", "vmd", "--memory", p->mem2));
        json_object_put(expect_json(0, json_type_object, "device", "add", "vms", env.socket, "--eventfds", "--queue",
                                    QUEUE(1), "--queue", QUEUE(2)));
        json_object_put(expect_json(0, json_type_object, "device", "add", "vmd", env.socket2, "--eventfds", "--queue",
                                    QUEUE(1), "--queue", QUEUE(2), "--incoming"));
        json_object *j = expect_json(0, json_type_object, "migrate", "incoming", "vmd");
        p->address = strdup(json_object_get_string(field(j, "address", json_type_string)));
        p->token = strdup(json_object_get_string(field(j, "token", json_type_string)));
        json_object_put(j);
}

static void pair_teardown(struct pair *p) {
        json_object_put(expect_json(0, json_type_object, "vm", "destroy", "vms"));
        json_object_put(expect_json(0, json_type_object, "vm", "destroy", "vmd"));
        unlink(p->path2);
        free(p->mem);
        free(p->mem2);
        free(p->address);
        free(p->token);
}

static bool starts_with_state(const char *line) {
        static const char *const states[] = { "setup ", "active ",   "pre-switchover ",     "switchover ", "completed",
                                              "failed", "cancelled", "postmigrate-unknown", "none" };
        for (size_t i = 0; i < sizeof(states) / sizeof(states[0]); i++)
                if (strncmp(line, states[i], strlen(states[i])) == 0)
                        return true;
        return false;
}

/* --wait into a pipe: one line per state (no \r, no terminal codes), then the summary line. */
static void test_migrate_wait_text(void **state) {
        (void) state;
        struct pair p;
        pair_setup(&p, "tx");
        struct run *r = expect(0, "migrate", "start", "vms", "--to", p.address, "--token", p.token, "--wait");
        assert_null(strchr(r->out, '\r'));
        assert_null(strchr(r->out, '\033'));
        unsigned n = 0, states = 0;
        char *save = NULL, *last = NULL, *prev = NULL;
        for (char *line = strtok_r(r->out, "\n", &save); line; line = strtok_r(NULL, "\n", &save), n++) {
                if (!starts_with_state(line))
                        fail_msg("a line that starts with no state: \"%s\"", line);
                if (last) {
                        /* Every line before the summary is a progress line: "STATE  DONE/TOTAL MiB". */
                        double done, total;
                        char end[8];
                        if (sscanf(last, "%*s %lf/%lf %7s", &done, &total, end) != 3 || strcmp(end, "MiB") != 0)
                                fail_msg("not a progress line: \"%s\"", last);
                        states++;
                        prev = last;
                }
                last = line;
        }
        assert_true(states >= 1);
        assert_non_null(last);
        /* The final state shows before the summary, with everything sent (the total is known by then). */
        assert_string_equal(prev, "completed  2.0/2.0 MiB");
        if (strncmp(last, "completed in ", strlen("completed in ")) != 0 || !strstr(last, ": downtime ") ||
            !strstr(last, " ms, 512 pages (") || !strstr(last, " zero), 1 round, ") || !strstr(last, "RARP") ||
            !strstr(last, ", checksum 0x"))
                fail_msg("not the summary line: \"%s\"", last);
        free(r);
        pair_teardown(&p);
}

/* Runs vhostmigctl ARGS with stdout on a pseudo-terminal `cols` wide (stderr: /dev/null); what it wrote. */
static char *run_on_pty(unsigned short cols, const char *const *args) {
        int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        assert_true(master >= 0);
        assert_int_equal(grantpt(master), 0);
        assert_int_equal(unlockpt(master), 0);
        struct winsize ws = { .ws_row = 24, .ws_col = cols };
        assert_int_equal(ioctl(master, TIOCSWINSZ, &ws), 0);
        int slave = open(ptsname(master), O_RDWR | O_NOCTTY | O_CLOEXEC);
        assert_true(slave >= 0);
        struct termios t;
        assert_int_equal(tcgetattr(slave, &t), 0);
        t.c_oflag &= ~(tcflag_t) OPOST; /* the bytes as written, no \r added before \n */
        assert_int_equal(tcsetattr(slave, TCSANOW, &t), 0);
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                int null = open("/dev/null", O_WRONLY);
                child_exec(args, 0, slave, null);
        }
        close(slave);
        char *buf = calloc(1, 65536);
        assert_non_null(buf);
        uint64_t deadline = now_ms() + RUN_MS;
        /* EIO once the child closed the last slave fd. */
        while (now_ms() < deadline) {
                struct pollfd p = { master, POLLIN, 0 };
                if (poll(&p, 1, 100) > 0 && !drain(master, buf, 65536))
                        break;
        }
        close(master);
        int status = tb_wait_exit(pid, 5000);
        assert_true(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0);
        return buf;
}

/*
 * --wait on an 80-column terminal: the line redrawn in place (\r, then
 * clear to the end of the line), never wider than 79, then a newline and
 * the summary.
 */
static void test_migrate_wait_terminal(void **state) {
        (void) state;
        struct pair p;
        pair_setup(&p, "tt");
        char *out = run_on_pty(80, ARGS("migrate", "start", "vms", "--to", p.address, "--token", p.token, "--wait"));
        if (out[0] != '\r' || !strstr(out, "\033[K"))
                fail_msg("no line redrawn in place: \"%s\"", out);
        char *nl = strchr(out, '\n');
        assert_non_null(nl);
        /* Before the newline: progress lines only, each "\rLINE\033[K". */
        *nl = 0;
        char *save = NULL;
        for (char *draw = strtok_r(out, "\r", &save); draw; draw = strtok_r(NULL, "\r", &save)) {
                char *clear = strstr(draw, "\033[K");
                assert_non_null(clear);
                assert_string_equal(clear, "\033[K");
                assert_true(clear - draw <= 79);
                assert_true(starts_with_state(draw));
        }
        if (strncmp(nl + 1, "completed in ", strlen("completed in ")) != 0 || !strstr(nl + 1, ", checksum 0x"))
                fail_msg("no summary after the progress line: \"%s\"", nl + 1);
        free(out);
        pair_teardown(&p);
}

/*
 * A live migration between the two VMs, --wait --json: the live figures on
 * every line, then in migrate status and show; migrate continue outside
 * pre-switchover is refused.
 */
static void test_migrate_live(void **state) {
        (void) state;
        struct pair p;
        pair_setup(&p, "lv");
        char downtime[16];
        snprintf(downtime, sizeof(downtime), "%u", scaled_downtime_ms(1000));
        struct run *r = expect(0, "--json", "migrate", "start", "vms", "--to", p.address, "--token", p.token, "--live",
                               "--max-rounds", "5", "--max-downtime", downtime, "--max-bandwidth", "1G",
                               "--pause-timeout", "2000", "--wait");
        unsigned updates;
        json_object *j = expect_migration_lines(r->out, true, &updates);
        free(r);
        assert_true(updates >= 1);
        assert_field_string(j, "migration_state", "completed");
        assert_field_string(j, "role", "source");
        assert_field_int(j, "pages_total", MEM_SIZE / 4096);
        assert_true(json_object_get_int64(field(j, "pages_transferred", json_type_int)) >= MEM_SIZE / 4096);
        assert_true(json_object_get_int64(field(j, "round", json_type_int)) <= 4);
        assert_field_string(j, "migration_error", "");
        json_object_put(j);

        j = expect_json(0, json_type_object, "migrate", "status", "vms");
        assert_migration_keys(j, true);
        field(j, "dirty_bitmaps", json_type_int);
        json_object_put(j);
        r = expect(0, "migrate", "status", "vms");
        assert_non_null(strstr(r->out, "Round:"));
        assert_non_null(strstr(r->out, "Pages remaining:"));
        assert_non_null(strstr(r->out, "Dirty rate:"));
        assert_non_null(strstr(r->out, " pages/s"));
        assert_non_null(strstr(r->out, "Bandwidth:"));
        assert_non_null(strstr(r->out, " B/s"));
        assert_non_null(strstr(r->out, "Expected downtime:"));
        assert_non_null(strstr(r->out, "Setup time:"));
        assert_non_null(strstr(r->out, "Downtime:"));
        free(r);
        r = expect(0, "show", "vms");
        assert_non_null(strstr(r->out, "Expected downtime:"));
        assert_non_null(strstr(r->out, "Dirty bitmaps:"));
        free(r);

        /* Nothing waits in pre-switchover. */
        r = expect(1, "migrate", "continue", "vms");
        assert_error(r, "migrate continue");
        free(r);
        pair_teardown(&p);
}

static void test_watch(void **state) {
        (void) state;
        char *mem = memory_arg();
        int out[2];
        assert_int_equal(pipe2(out, O_CLOEXEC), 0);
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                int null = open("/dev/null", O_WRONLY);
                child_exec(ARGS("--json", "watch", "vm2"), 0, out[1], null);
        }
        close(out[1]);
        sleep_ms(500); /* its matches in place */
        json_object_put(expect_json(0, json_type_object, "vm", "create", "vm2", "--memory", mem));

        char buf[16384] = "";
        uint64_t deadline = now_ms() + 10000;
        while (!strstr(buf, "\"added\"") && now_ms() < deadline) {
                struct pollfd p = { out[0], POLLIN, 0 };
                if (poll(&p, 1, 100) > 0 && !drain(out[0], buf, sizeof(buf)))
                        break;
        }
        kill(pid, SIGTERM);
        int status = tb_wait_exit(pid, 5000);
        close(out[0]);
        json_object_put(expect_json(0, json_type_object, "vm", "destroy", "vm2"));
        free(mem);

        assert_true(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0);
        char *line = strtok(buf, "\n");
        bool added = false;
        for (; line; line = strtok(NULL, "\n")) {
                json_object *j = json_tokener_parse(line);
                if (!j)
                        fail_msg("watch printed a line that is no JSON: \"%s\"", line);
                field(j, "time", json_type_string);
                const char *event = json_object_get_string(field(j, "event", json_type_string));
                if (strcmp(event, "added") == 0) {
                        assert_field_string(j, "vm", "vm2");
                        added = true;
                }
                json_object_put(j);
        }
        assert_true(added);
}

int main(void) {
        if (!getenv("VHOSTMIGCTL") || !getenv("VHOSTMIGD") || !getenv("START_BUS")) {
                fprintf(stderr, "VHOSTMIGCTL, VHOSTMIGD and START_BUS must be set (run with meson test)\n");
                return 1;
        }
        if (geteuid() != 0) {
                fprintf(stderr, "needs root: skipped\n");
                return 77;
        }
        const struct CMUnitTest offline[] = {
                cmocka_unit_test(test_usage_errors), cmocka_unit_test(test_live_usage_errors),
                cmocka_unit_test(test_help),         cmocka_unit_test(test_not_running),
                cmocka_unit_test(test_host),
        };
        const struct CMUnitTest daemon[] = {
                cmocka_unit_test(test_probe),
                cmocka_unit_test(test_status_and_list),
                cmocka_unit_test(test_vm_lifecycle),
                cmocka_unit_test(test_not_found),
                cmocka_unit_test(test_watch),
                cmocka_unit_test(test_migrate),
                cmocka_unit_test(test_migrate_state),
                cmocka_unit_test(test_migrate_wait_text),
                cmocka_unit_test(test_migrate_wait_terminal),
                cmocka_unit_test(test_migrate_live),
        };
        int failed = cmocka_run_group_tests_name("ctl-offline", offline, group_setup_offline, group_teardown);
        failed += cmocka_run_group_tests_name("ctl-daemon", daemon, group_setup_daemon, group_teardown);
        return failed ? 1 : 0;
}

/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vhostmig-libvirt-hook run exactly as libvirtd runs a qemu hook: fork and
 * exec with `HOOK DOMAIN OPERATION SUB-OPERATION EXTRA`, LC_ALL=C and a
 * minimal environment (plus VHOSTMIG_HOOK_CONFIG naming a config that points
 * at the test's private bus), the domain XML on stdin.  Its exit status, its
 * stderr lines, an empty stdout (libvirt would take it as new XML) and the
 * time it took are checked.
 *
 * Groups:
 *   hook-daemon  vhostmigd on a private bus, with back-ends: DPDK testpmd
 *                (migratable), the test back-end without LOG_SHMFD, one that
 *                hangs, none listening, several interfaces of which one is
 *                bad, memory not shared, no vhost-user device, bad input;
 *   hook-down    the bus without vhostmigd: both daemon_down settings, and
 *                release end.
 *
 * Environment (set by meson): HOOK (the program), VHOSTMIGD, START_BUS.
 * Needs root (vhostmigd's Probe is root's).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon/common/bus-api.h"
#include "tests/backend/test-backend.h"
#include "tests/common/clock.h"
#include "tests/common/private-bus.h"
#include "tests/common/real-backends.h"

#define BOUND_MS 2000u
/* What the process may take beyond its bound: exec, bus set-up, the slow ASan build. */
#define SLACK_MS 1000u

#define MAC_GOOD "52:54:00:00:00:01"
#define MAC_BAD  "52:54:00:00:00:02"
#define MAC_SRV  "52:54:00:00:00:03"

static struct {
        struct private_bus bus;
        bool bus_up;
        pid_t daemon;
        char dir[64];
        char daemon_config[128];
        char daemon_log[128];
        char hook_config[128];
        sd_bus *c;
} env;

struct hook_run {
        int status;     /* wait status */
        char err[8192]; /* its stderr */
        size_t out_len; /* bytes on its stdout */
        uint64_t ms;    /* from fork to exit */
};

/* ---- the environment --------------------------------------------------------------------- */

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

static void write_file(const char *path, const char *text) {
        FILE *f = fopen(path, "we");
        assert_non_null(f);
        fputs(text, f);
        fclose(f);
}

/* The hook's config: this bus (or `bus`), the test's bound, daemon_down. */
static void write_hook_config(const char *bus, unsigned timeout_ms, const char *daemon_down) {
        char text[1024];
        snprintf(text, sizeof(text), "{ \"bus\": \"%s\", \"timeout_ms\": %u, \"daemon_down\": \"%s\" }\n", bus,
                 timeout_ms, daemon_down);
        write_file(env.hook_config, text);
}

static void dump_daemon_log(void) {
        FILE *f = fopen(env.daemon_log, "re");
        if (!f)
                return;
        char line[1200];
        while (fgets(line, sizeof(line), f))
                fprintf(stderr, "vhostmigd: %s", line);
        fclose(f);
}

static int daemon_start(void) {
        pid_t pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                int log = open(env.daemon_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
                int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
                if (log < 0 || null < 0)
                        _exit(126);
                dup2(null, 0);
                dup2(log, 1);
                dup2(log, 2);
                close_range(3, ~0u, 0);
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                setenv("DBUS_SYSTEM_BUS_ADDRESS", env.bus.address, 1);
                unsetenv("NOTIFY_SOCKET");
                execl(getenv("VHOSTMIGD"), "vhostmigd", "--config", env.daemon_config, (char *) NULL);
                _exit(127);
        }
        env.daemon = pid;
        uint64_t deadline = now_ms() + 10000;
        while (now_ms() < deadline) {
                bool has = false;
                if (private_bus_name_has_owner(env.c, "org.vhostmig1", &has) == 0 && has)
                        return 0;
                if (waitpid(pid, NULL, WNOHANG) == pid) {
                        env.daemon = 0;
                        dump_daemon_log();
                        return -ECHILD;
                }
                sleep_ms(20);
        }
        return -ETIMEDOUT;
}

static void daemon_stop(void) {
        if (env.daemon <= 0)
                return;
        kill(env.daemon, SIGTERM);
        if (tb_wait_exit(env.daemon, 5000) == -ETIMEDOUT) {
                kill(env.daemon, SIGKILL);
                waitpid(env.daemon, NULL, 0);
        }
        env.daemon = 0;
}

static int group_setup(bool with_daemon) {
        memset(&env, 0, sizeof(env));
        if (!getenv("HOOK") || !getenv("VHOSTMIGD")) {
                fprintf(stderr, "HOOK and VHOSTMIGD must be set (run with meson test)\n");
                return -1;
        }
        signal(SIGPIPE, SIG_IGN); /* a hook may exit before reading all of its stdin */
        snprintf(env.dir, sizeof(env.dir), "/tmp/vhostmig-hook-XXXXXX");
        if (!mkdtemp(env.dir))
                return -1;
        snprintf(env.daemon_config, sizeof(env.daemon_config), "%s/vhostmigd.json", env.dir);
        snprintf(env.daemon_log, sizeof(env.daemon_log), "%s/vhostmigd.log", env.dir);
        snprintf(env.hook_config, sizeof(env.hook_config), "%s/hook.json", env.dir);
        FILE *f = fopen(env.daemon_config, "we");
        if (!f)
                return -1;
        fputs("{ \"request_timeout_ms\": 1000 }\n", f);
        fclose(f);
        if (private_bus_start(&env.bus, true) < 0)
                return -1;
        env.bus_up = true;
        if (private_bus_connect(env.bus.address, 0, &env.c) < 0)
                return -1;
        return with_daemon ? (daemon_start() < 0 ? -1 : 0) : 0;
}

static int group_setup_daemon(void **state) {
        (void) state;
        return group_setup(true);
}

static int group_setup_down(void **state) {
        (void) state;
        return group_setup(false);
}

static int group_teardown(void **state) {
        (void) state;
        daemon_stop();
        env.c = sd_bus_flush_close_unref(env.c);
        if (env.bus_up)
                (void) private_bus_stop(&env.bus);
        env.bus_up = false;
        remove_dir_files(env.dir);
        return 0;
}

static int test_setup(void **state) {
        (void) state;
        write_hook_config(env.bus.address, BOUND_MS, "allow");
        return 0;
}

/* ---- running the hook -------------------------------------------------------------------- */

/* Reads fd to EOF into buf (at most len - 1 bytes kept, NUL-terminated): bytes seen. */
static size_t drain(int fd, char *buf, size_t len) {
        size_t seen = 0;
        char tmp[4096];
        ssize_t n;
        while ((n = read(fd, tmp, sizeof(tmp))) > 0 || (n < 0 && errno == EINTR)) {
                if (n <= 0)
                        continue;
                if (buf && seen < len - 1)
                        memcpy(buf + seen, tmp, (size_t) n < len - 1 - seen ? (size_t) n : len - 1 - seen);
                seen += (size_t) n;
        }
        if (buf)
                buf[seen < len - 1 ? seen : len - 1] = '\0';
        return seen;
}

/* HOOK DOMAIN OP SUBOP EXTRA with xml on stdin (NULL: stdin closed at once), as libvirtd runs it. */
static void run_hook(struct hook_run *res, const char *op, const char *subop, const char *xml, int argc_cut) {
        const char *hook = getenv("HOOK");
        char *argv[] = { (char *) "/etc/libvirt/hooks/qemu.d/vhostmig",
                         (char *) "vm1",
                         (char *) op,
                         (char *) subop,
                         (char *) "-",
                         NULL };
        if (argc_cut > 0)
                argv[argc_cut] = NULL;
        char cfg_env[200];
        snprintf(cfg_env, sizeof(cfg_env), "VHOSTMIG_HOOK_CONFIG=%s", env.hook_config);
        char *envp[] = { (char *) "LC_ALL=C",
                         (char *) "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                         (char *) "HOME=/root",
                         (char *) "USER=root",
                         (char *) "LOGNAME=root",
                         cfg_env,
                         NULL };
        int in[2], out[2], err[2];
        assert_int_equal(pipe2(in, O_CLOEXEC), 0);
        assert_int_equal(pipe2(out, O_CLOEXEC), 0);
        assert_int_equal(pipe2(err, O_CLOEXEC), 0);
        uint64_t start = now_ms();
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                dup2(in[0], 0);
                dup2(out[1], 1);
                dup2(err[1], 2);
                execve(hook, argv, envp);
                _exit(127);
        }
        close(in[0]);
        close(out[1]);
        close(err[1]);
        /* libvirt writes the whole XML, then closes; a hook that exits first gets EPIPE ignored. */
        size_t len = xml ? strlen(xml) : 0, off = 0;
        while (off < len) {
                ssize_t n = write(in[1], xml + off, len - off);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        break;
                off += (size_t) n;
        }
        close(in[1]);
        res->out_len = drain(out[0], NULL, 0);
        drain(err[0], res->err, sizeof(res->err));
        close(out[0]);
        close(err[0]);
        assert_int_equal(waitpid(pid, &res->status, 0), pid);
        res->ms = now_ms() - start;
        fprintf(stderr, "hook %s %s: %s, %llu ms, stderr:\n%s", op ? op : "-", subop ? subop : "-",
                WIFEXITED(res->status) ? (WEXITSTATUS(res->status) ? "exit 1+" : "exit 0") : "killed",
                (unsigned long long) res->ms, res->err);
}

static void assert_exit(const struct hook_run *res, int code) {
        assert_true(WIFEXITED(res->status));
        assert_int_equal(WEXITSTATUS(res->status), code);
        assert_int_equal(res->out_len, 0); /* stdout would replace libvirt's XML */
}

static unsigned count_lines(const char *s, const char *needle) {
        unsigned n = 0;
        for (const char *l = s; l && *l;) {
                const char *end = strchr(l, '\n');
                size_t len = end ? (size_t) (end - l) : strlen(l);
                char line[2048];
                snprintf(line, sizeof(line), "%.*s", (int) len, l);
                if (strstr(line, needle))
                        n++;
                l = end ? end + 1 : NULL;
        }
        return n;
}

/* The line of stderr that contains needle, or fails. */
static const char *line_with(const struct hook_run *res, const char *needle, char *buf, size_t len) {
        const char *p = strstr(res->err, needle);
        if (!p)
                fail_msg("no stderr line contains \"%s\"", needle);
        const char *start = p;
        while (start > res->err && start[-1] != '\n')
                start--;
        size_t n = strcspn(start, "\n");
        snprintf(buf, len, "%.*s", (int) n, start);
        return buf;
}

/* ---- XML ---------------------------------------------------------------------------------- */

#define MEM_SHARED "<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>"

static char *domain_xml(const char *memory, const char *devices) {
        char *s = NULL;
        assert_true(asprintf(&s,
                             "<domain type='kvm'>\n  <name>vm1</name>\n"
                             "  <uuid>6c9d8d3a-4d1e-4f4b-9d0e-1b6a0e2c7f11</uuid>\n"
                             "  <memory unit='KiB'>1048576</memory>\n  %s\n  <devices>\n%s  </devices>\n</domain>\n",
                             memory, devices) > 0);
        return s;
}

static char *iface(const char *mac, const char *socket, const char *mode) {
        char *s = NULL;
        assert_true(asprintf(&s,
                             "    <interface type='vhostuser'>\n      <mac address='%s'/>\n"
                             "      <source type='unix' path='%s' mode='%s'/>\n      <model type='virtio'/>\n"
                             "    </interface>\n",
                             mac, socket, mode) > 0);
        return s;
}

/* ---- back-ends ---------------------------------------------------------------------------- */

/* A test back-end listening at dir/name, serving up to `connections` connections. */
static pid_t spawn_tb(struct tb_config *cfg, const char *name, char *socket, size_t len) {
        snprintf(socket, len, "%s/%s", env.dir, name);
        cfg->max_connections = 0;
        pid_t pid = 0;
        int r = tb_spawn_listen(cfg, socket, &pid);
        if (r < 0)
                fail_msg("tb_spawn_listen(%s): %s", socket, strerror(-r));
        return pid;
}

/* ---- hook-daemon ------------------------------------------------------------------------- */

static void test_dpdk_migratable(void **state) {
        (void) state;
        assert_true(backend_available(TESTPMD_BIN));
        struct real_backend b;
        real_backend_init(&b);
        assert_int_equal(start_testpmd(&b, 1, 0), 0);
        char *dev = iface(MAC_GOOD, b.socket, "client");
        char *xml = domain_xml(MEM_SHARED, dev);
        struct hook_run res;
        run_hook(&res, "migrate", "begin", xml, 0);
        stop_backend(&b);
        assert_exit(&res, 0);
        assert_string_equal(res.err, "");
        free(xml);
        free(dev);
}

static void test_no_log_shmfd(void **state) {
        (void) state;
        struct tb_config cfg;
        tb_config_init(&cfg);
        cfg.no_log_shmfd = true;
        char sock[128];
        pid_t pid = spawn_tb(&cfg, "nolog.sock", sock, sizeof(sock));
        char *dev = iface(MAC_BAD, sock, "client");
        char *xml = domain_xml(MEM_SHARED, dev);
        struct hook_run res;
        run_hook(&res, "migrate", "begin", xml, 0);
        tb_stop(pid);
        assert_exit(&res, 1);
        assert_true(res.ms < BOUND_MS + SLACK_MS);
        char line[2048];
        line_with(&res, "refusing migration of domain vm1", line, sizeof(line));
        assert_non_null(strstr(line, "interface " MAC_BAD));
        assert_non_null(strstr(line, sock));
        assert_non_null(strstr(line, "LOG_SHMFD"));
        assert_int_equal(count_lines(res.err, "refusing"), 1);
        free(xml);
        free(dev);
}

/* The back-end never answers GET_FEATURES: the hook ends at its bound, saying it timed out. */
static void test_hang(void **state) {
        (void) state;
        struct tb_config cfg;
        tb_config_init(&cfg);
        struct tb_fault hang;
        assert_int_equal(tb_parse_fault("GET_FEATURES:hang", &hang), 0);
        assert_int_equal(tb_config_add_fault(&cfg, &hang), 0);
        char sock[128];
        pid_t pid = spawn_tb(&cfg, "hang.sock", sock, sizeof(sock));
        char *dev = iface(MAC_BAD, sock, "client");
        char *xml = domain_xml(MEM_SHARED, dev);
        struct hook_run res;
        run_hook(&res, "migrate", "begin", xml, 0);
        tb_stop(pid);
        assert_exit(&res, 1);
        assert_true(res.ms >= BOUND_MS - 100);
        assert_true(res.ms < BOUND_MS + SLACK_MS);
        char line[2048];
        line_with(&res, "refusing migration of domain vm1", line, sizeof(line));
        assert_non_null(strstr(line, MAC_BAD));
        assert_non_null(strstr(line, "timed out"));
        free(xml);
        free(dev);
}

static void test_no_backend_listening(void **state) {
        (void) state;
        char sock[128];
        snprintf(sock, sizeof(sock), "%s/nobody.sock", env.dir);
        char *dev = iface(MAC_BAD, sock, "client");
        char *xml = domain_xml(MEM_SHARED, dev);
        struct hook_run res;
        run_hook(&res, "migrate", "begin", xml, 0);
        assert_exit(&res, 1);
        char line[2048];
        line_with(&res, "refusing migration of domain vm1", line, sizeof(line));
        assert_non_null(strstr(line, MAC_BAD));
        assert_non_null(strstr(line, "cannot connect to"));
        free(xml);
        free(dev);
}

static void test_memory_not_shared(void **state) {
        (void) state;
        struct tb_config cfg;
        tb_config_init(&cfg);
        char sock[128];
        pid_t pid = spawn_tb(&cfg, "good.sock", sock, sizeof(sock));
        char *dev = iface(MAC_GOOD, sock, "client");
        char *xml = domain_xml("<memoryBacking><hugepages/></memoryBacking>", dev);
        struct hook_run res;
        run_hook(&res, "migrate", "begin", xml, 0);
        tb_stop(pid);
        assert_exit(&res, 1);
        char line[2048];
        line_with(&res, "guest memory is not shared", line, sizeof(line));
        assert_non_null(strstr(line, MAC_GOOD));
        assert_int_equal(count_lines(res.err, "refusing"), 1); /* the back-end itself is fine */
        free(xml);
        free(dev);
}

/* Without vhost-user devices the hook passes at once and never touches D-Bus (this bus does not exist). */
static void test_no_vhost_user(void **state) {
        (void) state;
        char bus[256];
        snprintf(bus, sizeof(bus), "unix:path=%s/no-such-bus", env.dir);
        write_hook_config(bus, BOUND_MS, "refuse");
        char *xml = domain_xml("", "    <interface type='network'><source network='default'/></interface>\n");
        struct hook_run res;
        run_hook(&res, "migrate", "begin", xml, 0);
        assert_exit(&res, 0);
        assert_string_equal(res.err, "");
        free(xml);
}

/* Three interfaces: one migratable, one without LOG_SHMFD, one where QEMU listens (said, not refused). */
static void test_several_one_bad(void **state) {
        (void) state;
        struct tb_config good, bad;
        tb_config_init(&good);
        tb_config_init(&bad);
        bad.no_log_shmfd = true;
        char sgood[128], sbad[128], ssrv[128];
        pid_t pgood = spawn_tb(&good, "good.sock", sgood, sizeof(sgood));
        pid_t pbad = spawn_tb(&bad, "bad.sock", sbad, sizeof(sbad));
        snprintf(ssrv, sizeof(ssrv), "%s/qemu-listens.sock", env.dir);
        char *d1 = iface(MAC_GOOD, sgood, "client"), *d2 = iface(MAC_BAD, sbad, "client"),
             *d3 = iface(MAC_SRV, ssrv, "server");
        char *devs = NULL;
        assert_true(asprintf(&devs, "%s%s%s", d1, d2, d3) > 0);
        char *xml = domain_xml(MEM_SHARED, devs);
        struct hook_run res;
        run_hook(&res, "migrate", "begin", xml, 0);
        tb_stop(pgood);
        tb_stop(pbad);
        assert_exit(&res, 1);
        assert_int_equal(count_lines(res.err, "refusing"), 1);
        char line[2048];
        line_with(&res, "refusing", line, sizeof(line));
        assert_non_null(strstr(line, MAC_BAD));
        assert_non_null(strstr(line, "LOG_SHMFD"));
        assert_null(strstr(res.err, "interface " MAC_GOOD));
        line_with(&res, MAC_SRV, line, sizeof(line));
        assert_non_null(strstr(line, "not checked"));
        assert_non_null(strstr(line, "mode='server'"));
        free(xml);
        free(devs);
        free(d1);
        free(d2);
        free(d3);
}

static void test_bad_input(void **state) {
        (void) state;
        struct hook_run res;
        run_hook(&res, "migrate", "begin", "<domain><name>vm1</name><devices>", 0);
        assert_exit(&res, 1);
        assert_int_equal(count_lines(res.err, "bad domain XML on stdin: malformed XML"), 1);

        run_hook(&res, "migrate", "begin", "<network/>", 0);
        assert_exit(&res, 1);
        assert_non_null(strstr(res.err, "not <domain>"));

        run_hook(&res, "frobnicate", "begin", "<domain/>", 0);
        assert_exit(&res, 1);
        assert_non_null(strstr(res.err, "unknown hook operation \"frobnicate\""));

        run_hook(&res, "migrate", "begin", "<domain/>", 4); /* DOMAIN OP SUBOP, no EXTRA */
        assert_exit(&res, 1);
        assert_non_null(strstr(res.err, "usage:"));

        /* Every other operation passes at once, whatever is on stdin. */
        run_hook(&res, "prepare", "begin", "not xml at all", 0);
        assert_exit(&res, 0);
        assert_string_equal(res.err, "");
        run_hook(&res, "migrate", "end", NULL, 0);
        assert_exit(&res, 0);
        run_hook(&res, "reconnect", "begin", "<", 0);
        assert_exit(&res, 0);

        write_file(env.hook_config, "{ \"timeout_ms\": \"soon\" }");
        run_hook(&res, "migrate", "begin", "<domain/>", 0);
        assert_exit(&res, 1);
        assert_non_null(strstr(res.err, "\"timeout_ms\" must be an integer"));
}

/* ---- hook-down: the bus without vhostmigd ------------------------------------------------ */

static void test_down_allow(void **state) {
        (void) state;
        char sock[128];
        snprintf(sock, sizeof(sock), "%s/vhu.sock", env.dir);
        char *dev = iface(MAC_GOOD, sock, "client");
        char *xml = domain_xml(MEM_SHARED, dev);
        struct hook_run res;
        run_hook(&res, "migrate", "begin", xml, 0);
        assert_exit(&res, 0);
        assert_non_null(strstr(res.err, "vhostmigd is not running"));
        assert_non_null(strstr(res.err, "daemon_down=allow"));
        /* Memory that is not shared is refused all the same: that needs no daemon. */
        free(xml);
        xml = domain_xml("", dev);
        run_hook(&res, "migrate", "begin", xml, 0);
        assert_exit(&res, 1);
        assert_int_equal(count_lines(res.err, "guest memory is not shared"), 1);
        free(xml);
        free(dev);
}

static void test_down_refuse(void **state) {
        (void) state;
        write_hook_config(env.bus.address, BOUND_MS, "refuse");
        char sock[128];
        snprintf(sock, sizeof(sock), "%s/vhu.sock", env.dir);
        char *dev = iface(MAC_GOOD, sock, "client");
        char *xml = domain_xml(MEM_SHARED, dev);
        struct hook_run res;
        run_hook(&res, "migrate", "begin", xml, 0);
        assert_exit(&res, 1);
        char line[2048];
        line_with(&res, "refusing", line, sizeof(line));
        assert_non_null(strstr(line, MAC_GOOD));
        assert_non_null(strstr(line, "vhostmigd is not running (daemon_down=refuse)"));
        /* No bus at all counts as not running too. */
        char bus[256];
        snprintf(bus, sizeof(bus), "unix:path=%s/no-such-bus", env.dir);
        write_hook_config(bus, BOUND_MS, "refuse");
        run_hook(&res, "migrate", "begin", xml, 0);
        assert_exit(&res, 1);
        assert_non_null(strstr(res.err, "vhostmigd is not running (daemon_down=refuse)"));
        free(xml);
        free(dev);
}

/* CreateVm of 2 MiB of sealed memfd, bound to `domain` ("" unbound). */
static void create_bound_vm(const char *name, const char *domain) {
        int fd = memfd_create("vhostmig-test-hook", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, 2 << 20), 0);
        assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
        sd_bus_message *m = NULL, *reply = NULL;
        sd_bus_error e = SD_BUS_ERROR_NULL;
        int r = sd_bus_message_new_method_call(env.c, &m, VHOSTMIG_BUS_NAME, VHOSTMIG_ROOT_PATH,
                                               VHOSTMIG_MANAGER_INTERFACE, "CreateVm");
        if (r >= 0)
                r = sd_bus_message_append(m, "sa(httt)", name, 1u, fd, UINT64_C(0), UINT64_C(2) << 20, UINT64_C(0));
        if (r >= 0)
                r = domain[0] ? sd_bus_message_append(m, "a{sv}", 1u, "LibvirtDomain", "s", domain)
                              : sd_bus_message_append(m, "a{sv}", 0u);
        if (r >= 0)
                r = sd_bus_call(env.c, m, 0, &e, &reply);
        if (r < 0)
                fail_msg("CreateVm(%s): %s", name, e.message ? e.message : strerror(-r));
        sd_bus_error_free(&e);
        sd_bus_message_unref(m);
        sd_bus_message_unref(reply);
        close(fd);
}

static bool vm_exists(const char *name) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        int r = sd_bus_call_method(env.c, VHOSTMIG_BUS_NAME, VHOSTMIG_ROOT_PATH, VHOSTMIG_MANAGER_INTERFACE, "GetVm",
                                   &e, &reply, "s", name);
        if (r < 0 && !sd_bus_error_has_name(&e, VHOSTMIG_ERROR_NO_SUCH_VM))
                fail_msg("GetVm(%s): %s", name, e.message ? e.message : strerror(-r));
        sd_bus_error_free(&e);
        sd_bus_message_unref(reply);
        return r >= 0;
}

/* release end: the VMs bound to the domain, by its UUID (any case) and by its name, go; another stays. */
static void test_release_end(void **state) {
        (void) state;
        create_bound_vm("by-uuid", "6C9D8D3A-4D1E-4F4B-9D0E-1B6A0E2C7F11");
        create_bound_vm("by-name", "vm1");
        create_bound_vm("unbound", "");
        create_bound_vm("elsewhere", "vm2");
        char *xml = domain_xml(MEM_SHARED, "");
        struct hook_run res;
        run_hook(&res, "release", "end", xml, 0);
        assert_exit(&res, 0);
        assert_non_null(strstr(res.err, "released 2 VM(s) of domain vm1"));
        assert_false(vm_exists("by-uuid"));
        assert_false(vm_exists("by-name"));
        assert_true(vm_exists("unbound"));
        assert_true(vm_exists("elsewhere"));
        /* Nothing left to release: quiet, exit 0. */
        run_hook(&res, "release", "end", xml, 0);
        assert_exit(&res, 0);
        assert_string_equal(res.err, "");
        free(xml);
        for (const char *const *n = (const char *const[]){ "unbound", "elsewhere", NULL }; *n; n++)
                assert_int_equal(sd_bus_call_method(env.c, VHOSTMIG_BUS_NAME, VHOSTMIG_ROOT_PATH,
                                                    VHOSTMIG_MANAGER_INTERFACE, "DestroyVm", NULL, NULL, "s", *n),
                                 1);
}

static void test_down_release(void **state) {
        (void) state;
        char *xml = domain_xml(MEM_SHARED, "");
        struct hook_run res;
        run_hook(&res, "release", "end", xml, 0);
        assert_exit(&res, 0);
        assert_string_equal(res.err, "");
        free(xml);
}

int main(void) {
        const struct CMUnitTest with_daemon[] = {
                cmocka_unit_test_setup(test_dpdk_migratable, test_setup),
                cmocka_unit_test_setup(test_no_log_shmfd, test_setup),
                cmocka_unit_test_setup(test_hang, test_setup),
                cmocka_unit_test_setup(test_no_backend_listening, test_setup),
                cmocka_unit_test_setup(test_memory_not_shared, test_setup),
                cmocka_unit_test_setup(test_no_vhost_user, test_setup),
                cmocka_unit_test_setup(test_several_one_bad, test_setup),
                cmocka_unit_test_setup(test_bad_input, test_setup),
                cmocka_unit_test_setup(test_release_end, test_setup),
        };
        const struct CMUnitTest down[] = {
                cmocka_unit_test_setup(test_down_allow, test_setup),
                cmocka_unit_test_setup(test_down_refuse, test_setup),
                cmocka_unit_test_setup(test_down_release, test_setup),
        };
        int failed = cmocka_run_group_tests_name("hook-daemon", with_daemon, group_setup_daemon, group_teardown);
        failed += cmocka_run_group_tests_name("hook-down", down, group_setup_down, group_teardown);
        return failed;
}

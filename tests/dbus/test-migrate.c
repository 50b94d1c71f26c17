/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Migration through D-Bus end to end: two hosts on one machine, each a
 * private bus (tests/dbus/start-bus.sh, the real policy) with its own
 * vhostmigd, and a test back-end (tests/backend) per side.  The source VM's
 * memory holds a pattern with zero and non-zero pages; the destination VM
 * has the same layout, empty, its device added "Incoming".
 *
 *   test_migration        PrepareIncoming, MigrateTo: both sides completed,
 *                         the figures, the memory equal, the destination's
 *                         rings restored from the source's indices, the
 *                         source's back-end released, PropertiesChanged on
 *                         the state changes;
 *   test_wrong_token      the destination refuses, the source resumes;
 *   test_cancel           CancelMigration on a destination waiting for its
 *                         source, and on a source whose peer never reads;
 *   test_refusals         what the methods refuse before any job;
 *   test_device_state     SaveDeviceState on the source into a file, the
 *                         memory copied by the test (the VMM), a garbage
 *                         state refused, LoadDeviceState on the destination
 *                         from the file: rings restored from the source's
 *                         indices, RARP, the source released by DestroyVm;
 *   test_live             a live migration of a VM whose VMM (the test)
 *                         registered a dirty bitmap, writes and marks pages
 *                         during the rounds, sees "pre-switchover" through
 *                         PropertiesChanged and calls MigrateContinue: equal
 *                         memory and checksums, the progress figures, and
 *                         PropertiesChanged throttled to 10 a second;
 *   test_live_testpmd     the same through DPDK testpmd (one testpmd, a
 *                         vhost port for each end);
 *   test_live_no_continue a VMM that never continues: failed, the source
 *                         running, logging off as it was;
 *   test_live_cancel      CancelMigration during the rounds (to a peer that
 *                         never reads, and rounds that never converge, where
 *                         PropertiesChanged stays under 10 a second) and
 *                         during pre-switchover: the source runs, logging
 *                         off; MigrateContinue and AddDirtyBitmap refused
 *                         in the rounds;
 *   test_live_options     MigrateTo's live options refused, naming the key;
 *                         Live on a VM that cannot log: MigrationBlocked;
 *   test_dirty_bitmap     AddDirtyBitmap's refusals (unsealed, read-only,
 *                         too small, a 9th) leaving no fd in the daemon.
 *
 * Environment (set by meson): VHOSTMIGD, START_BUS.  Needs root.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
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

#include "migrate/stream.h"
#include "tests/backend/test-backend.h"
#include "tests/common/clock.h"
#include "tests/common/fd-count.h"
#include "tests/common/real-backends.h"
#include "tests/common/private-bus.h"

#define DEST       "org.vhostmig1"
#define ROOT_PATH  "/org/vhostmig1"
#define MANAGER_IF "org.vhostmig1.Manager"
#define VM_IF      "org.vhostmig1.Vm"
#define DEV_IF     "org.vhostmig1.Device"
#define PROPS_IF   "org.freedesktop.DBus.Properties"
#define ERR(name)  "org.vhostmig1.Error." name

#define MEM_SIZE  (UINT64_C(2) << 20)
#define PAGE      4096u
#define RING_SIZE 256u
#define RING_BASE UINT64_C(0x10000)
#define MAC       "52:54:00:12:34:56"
#define VM_NAME   "vm0"
#define BAD_TOKEN "0123456789abcdef0123456789abcdef"
/* What the test's device acks of DPDK's offer: VERSION_1, PROTOCOL_FEATURES, LOG_ALL, MAC. */
#define REAL_FEATURES ((UINT64_C(1) << 32) | (UINT64_C(1) << 30) | (UINT64_C(1) << 26) | (UINT64_C(1) << 5))

/* How long a migration of MEM_SIZE over a Unix socket may take here, with generous slack. */
#define MIGRATION_TIMEOUT_MS 30000u
/* Every method call of the test's clients. */
#define CALL_TIMEOUT_USEC (UINT64_C(20) * 1000000u)

/* ---- two hosts: a bus and a daemon each -------------------------------------------------------- */

struct host {
        char name[8];
        char dir[64];
        char config[128], log[128];
        struct private_bus bus;
        pid_t daemon;
        sd_bus *c;
};

static struct host src, dst;
/* The test back-ends of the running test (source, destination), stopped whatever the test's fate. */
static pid_t backends[2];
/* The testpmd of the running test, if any, stopped whatever the test's fate. */
static struct real_backend *testpmd;

static int daemon_start(struct host *h) {
        const char *bin = getenv("VHOSTMIGD");
        if (!bin)
                return -EINVAL;
        fflush(stdout);
        fflush(stderr);
        pid_t pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0)
                private_bus_exec_daemon(bin, h->bus.address, h->config, h->log, h->dir);
        h->daemon = pid;
        uint64_t deadline = now_ms() + 10000;
        for (;;) {
                bool owned;
                if (private_bus_name_has_owner(h->c, DEST, &owned) == 0 && owned)
                        return 0;
                if (tb_wait_exit(pid, 1) != -ETIMEDOUT || now_ms() >= deadline) {
                        fprintf(stderr, "vhostmigd (%s) did not start\n", h->name);
                        return -EIO;
                }
                sleep_ms(20);
        }
}

static void dump_log(const struct host *h) {
        char *text = tb_record_read(h->log);
        if (text)
                fprintf(stderr, "---- vhostmigd %s ----\n%s---- end ----\n", h->name, text);
        free(text);
}

static void remove_dir(const char *dir) {
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

static int host_setup(struct host *h, const char *name) {
        memset(h, 0, sizeof(*h));
        h->daemon = -1;
        snprintf(h->name, sizeof(h->name), "%s", name);
        snprintf(h->dir, sizeof(h->dir), "/tmp/vhostmig-mig-%s-XXXXXX", name);
        if (!mkdtemp(h->dir))
                return -errno;
        snprintf(h->config, sizeof(h->config), "%s/vhostmigd.json", h->dir);
        snprintf(h->log, sizeof(h->log), "%s/vhostmigd.log", h->dir);
        FILE *f = fopen(h->config, "we");
        if (!f)
                return -errno;
        fprintf(f, "{ \"request_timeout_ms\": 2000, \"monitor_interval_ms\": 100 }\n");
        fclose(f);
        int r = private_bus_start(&h->bus, false);
        if (r >= 0)
                r = private_bus_connect(h->bus.address, CALL_TIMEOUT_USEC, &h->c);
        if (r >= 0)
                r = daemon_start(h);
        return r;
}

/* 0 when the daemon stopped cleanly (a sanitizer's report makes its exit status non-zero). */
static int host_teardown(struct host *h) {
        int status = 0;
        if (h->daemon > 0) {
                kill(h->daemon, SIGTERM);
                status = tb_wait_exit(h->daemon, 10000);
                if (status == -ETIMEDOUT) {
                        kill(h->daemon, SIGKILL);
                        waitpid(h->daemon, NULL, 0);
                }
                h->daemon = -1;
        }
        dump_log(h);
        h->c = sd_bus_flush_close_unref(h->c);
        if (h->bus.pid > 0)
                (void) private_bus_stop(&h->bus);
        remove_dir(h->dir);
        if (status != 0)
                fprintf(stderr, "vhostmigd %s ended with wait status 0x%x\n", h->name, (unsigned) status);
        return status == 0 ? 0 : -1;
}

static int group_setup(void **state) {
        (void) state;
        if (host_setup(&src, "src") < 0 || host_setup(&dst, "dst") < 0) {
                fprintf(stderr, "cannot set up the two hosts\n");
                return -1;
        }
        return 0;
}

static int group_teardown(void **state) {
        (void) state;
        int r = host_teardown(&src);
        return host_teardown(&dst) < 0 || r < 0 ? -1 : 0;
}

/* ---- calls -------------------------------------------------------------------------------------- */

static sd_bus_message *call(struct host *h, const char *path, const char *iface, const char *member, const char *types,
                            ...) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        va_list ap;
        va_start(ap, types);
        int r = sd_bus_call_methodv(h->c, DEST, path, iface, member, &e, &reply, types, ap);
        va_end(ap);
        if (r < 0)
                fail_msg("%s: %s.%s on %s failed: %s: %s", h->name, iface, member, path, e.name ? e.name : "",
                         e.message ? e.message : strerror(-r));
        sd_bus_error_free(&e);
        return reply;
}

static void call_error(struct host *h, const char *error, const char *needle, const char *path, const char *member,
                       const char *types, ...) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        va_list ap;
        va_start(ap, types);
        int r = sd_bus_call_methodv(h->c, DEST, path, VM_IF, member, &e, &reply, types, ap);
        va_end(ap);
        sd_bus_message_unref(reply);
        if (r >= 0)
                fail_msg("%s: %s succeeded, expected %s", h->name, member, error);
        if (!sd_bus_error_has_name(&e, error) || (needle && (!e.message || !strstr(e.message, needle))))
                fail_msg("%s: %s: expected %s mentioning \"%s\", got %s: %s", h->name, member, error,
                         needle ? needle : "", e.name ? e.name : "", e.message ? e.message : "");
        sd_bus_error_free(&e);
}

static char *get_string(struct host *h, const char *path, const char *iface, const char *prop) {
        char *s = NULL;
        int r = sd_bus_get_property_string(h->c, DEST, path, iface, prop, NULL, &s);
        if (r < 0)
                fail_msg("%s: %s.%s: %s", h->name, path, prop, strerror(-r));
        return s;
}

static uint64_t get_u64(struct host *h, const char *path, const char *prop) {
        uint64_t v = 0;
        int r = sd_bus_get_property_trivial(h->c, DEST, path, VM_IF, prop, NULL, 't', &v);
        if (r < 0)
                fail_msg("%s: %s.%s: %s", h->name, path, prop, strerror(-r));
        return v;
}

static uint32_t get_u32(struct host *h, const char *path, const char *prop) {
        uint32_t v = 0;
        int r = sd_bus_get_property_trivial(h->c, DEST, path, VM_IF, prop, NULL, 'u', &v);
        if (r < 0)
                fail_msg("%s: %s.%s: %s", h->name, path, prop, strerror(-r));
        return v;
}

static bool is_final(const char *state) {
        return strcmp(state, "completed") == 0 || strcmp(state, "failed") == 0 || strcmp(state, "cancelled") == 0 ||
               strcmp(state, "postmigrate-unknown") == 0 || strcmp(state, "none") == 0;
}

/* The migration's final state (malloc'd), waiting for it (bounded). */
static char *wait_final(struct host *h, const char *vm_path) {
        uint64_t deadline = now_ms() + MIGRATION_TIMEOUT_MS;
        for (;;) {
                char *state = get_string(h, vm_path, VM_IF, "MigrationState");
                if (is_final(state))
                        return state;
                free(state);
                if (now_ms() >= deadline)
                        fail_msg("%s: the migration did not end within %u ms", h->name, MIGRATION_TIMEOUT_MS);
                /* Signals queued meanwhile are not ours to read. */
                while (sd_bus_process(h->c, NULL) > 0)
                        ;
                sleep_ms(20);
        }
}

static void assert_string_prop(struct host *h, const char *path, const char *iface, const char *prop,
                               const char *want) {
        char *v = get_string(h, path, iface, prop);
        if (strcmp(v, want) != 0)
                fail_msg("%s: %s is \"%s\", expected \"%s\"", h->name, prop, v, want);
        free(v);
}

static void assert_error_mentions(struct host *h, const char *path, const char *needle) {
        char *v = get_string(h, path, VM_IF, "MigrationError");
        if (!strstr(v, needle))
                fail_msg("%s: MigrationError \"%s\" does not mention \"%s\"", h->name, v, needle);
        free(v);
}

/* ---- a VM on each side ---------------------------------------------------------------------------- */

struct side {
        struct host *h;
        int memfd;
        uint8_t *mem;
        int kick[2], call[2];
        char *vm_path, *dev_path;
        struct tb_config cfg;
        char socket[128], record[128];
        pid_t backend;
};

static int sealed_memfd(uint64_t size) {
        int fd = memfd_create("vhostmig-test-migrate", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd >= 0 && (ftruncate(fd, (off_t) size) < 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0)) {
                close(fd);
                return -1;
        }
        return fd;
}

/* Every third page zero, the others a pattern of their page number; the rings' pages left zero. */
static void fill_pattern(uint8_t *mem) {
        for (uint64_t p = 0; p < MEM_SIZE / PAGE; p++) {
                uint64_t gpa = p * PAGE;
                if (p % 3 == 0 || (gpa >= RING_BASE && gpa < RING_BASE + 0x8000))
                        continue;
                for (unsigned i = 0; i < PAGE; i += 8)
                        memcpy(mem + gpa + i, &(uint64_t){ gpa + i + 0x5a5a000000000000ull }, 8);
        }
}

/*
 * A VM with one device served by a test back-end (`no_log_all`: one that
 * cannot log, a blocker), or by the back-end already listening at `socket`.
 */
static void side_vm_at(struct side *s, struct host *h, bool incoming, bool no_log_all, const char *socket) {
        memset(s, 0, sizeof(*s));
        s->h = h;
        s->memfd = sealed_memfd(MEM_SIZE);
        assert_true(s->memfd >= 0);
        s->mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, s->memfd, 0);
        assert_true(s->mem != MAP_FAILED);
        if (!incoming)
                fill_pattern(s->mem);
        for (unsigned i = 0; i < 2; i++) {
                s->kick[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
                s->call[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
                assert_true(s->kick[i] >= 0 && s->call[i] >= 0);
        }
        sd_bus_message *reply = call(h, ROOT_PATH, MANAGER_IF, "CreateVm", "sa(httt)a{sv}", VM_NAME, 1u, s->memfd,
                                     UINT64_C(0), MEM_SIZE, UINT64_C(0), 0u);
        const char *path;
        assert_true(sd_bus_message_read(reply, "o", &path) > 0);
        s->vm_path = strdup(path);
        sd_bus_message_unref(reply);

        tb_config_init(&s->cfg);
        uint64_t features = socket ? REAL_FEATURES : tb_config_features(&s->cfg);
        if (socket) {
                snprintf(s->socket, sizeof(s->socket), "%s", socket);
                goto add;
        }
        snprintf(s->socket, sizeof(s->socket), "%s/backend.sock", h->dir);
        snprintf(s->record, sizeof(s->record), "%s/backend.rec", h->dir);
        unlink(s->socket);
        unlink(s->record);
        s->cfg.record_path = s->record;
        s->cfg.io_timeout_ms = 3000;
        s->cfg.max_connections = 1;
        s->cfg.no_log_all = no_log_all;
        assert_int_equal(tb_spawn_listen(&s->cfg, s->socket, &s->backend), 0);
        backends[h == &src ? 0 : 1] = s->backend;

add:;
        sd_bus_message *m = NULL;
        int r = sd_bus_message_new_method_call(h->c, &m, DEST, s->vm_path, VM_IF, "AddDevice");
        if (r >= 0)
                r = sd_bus_message_append(m, "sa(uttthh)", s->socket, 2u, RING_SIZE, RING_BASE, RING_BASE + 0x1000,
                                          RING_BASE + 0x2000, s->kick[0], s->call[0], RING_SIZE, RING_BASE + 0x4000,
                                          RING_BASE + 0x5000, RING_BASE + 0x6000, s->kick[1], s->call[1]);
        if (r >= 0)
                r = sd_bus_message_append(m, "a{sv}", 3, "Features", "t", features, "Mac", "s", MAC, "Incoming", "b",
                                          (int) incoming);
        assert_true(r >= 0);
        sd_bus_error e = SD_BUS_ERROR_NULL;
        r = sd_bus_call(h->c, m, 0, &e, &reply);
        sd_bus_message_unref(m);
        if (r < 0)
                fail_msg("%s: AddDevice: %s", h->name, e.message ? e.message : strerror(-r));
        assert_true(sd_bus_message_read(reply, "o", &path) > 0);
        s->dev_path = strdup(path);
        sd_bus_message_unref(reply);
        assert_string_prop(h, s->dev_path, DEV_IF, "State", incoming ? "ready" : "running");
}

static void side_vm(struct side *s, struct host *h, bool incoming) {
        side_vm_at(s, h, incoming, false, NULL);
}

static void side_done(struct side *s) {
        if (s->vm_path)
                (void) sd_bus_call_method(s->h->c, DEST, ROOT_PATH, MANAGER_IF, "DestroyVm", NULL, NULL, "s", VM_NAME);
        if (s->backend > 0)
                (void) tb_stop(s->backend);
        backends[s->h == &src ? 0 : 1] = 0;
        munmap(s->mem, MEM_SIZE);
        close(s->memfd);
        for (unsigned i = 0; i < 2; i++) {
                close(s->kick[i]);
                close(s->call[i]);
        }
        free(s->vm_path);
        free(s->dev_path);
}

static void prepare_incoming(struct side *d, const char *listen, char *address, char *token) {
        sd_bus_message *reply = listen ? call(d->h, d->vm_path, VM_IF, "PrepareIncoming", "a{sv}", 1, "Listen", "s",
                                              listen)
                                       : call(d->h, d->vm_path, VM_IF, "PrepareIncoming", "a{sv}", 0);
        const char *a, *t;
        assert_true(sd_bus_message_read(reply, "ss", &a, &t) > 0);
        snprintf(address, 128, "%s", a);
        snprintf(token, 33, "%s", t);
        sd_bus_message_unref(reply);
        assert_int_equal(strlen(token), 32);
        assert_string_prop(d->h, d->vm_path, VM_IF, "Role", "destination");
}

static int daemon_fd_count(const struct host *h) {
        return count_process_fds(h->daemon);
}

/* The same count again, given a moment to settle (a job's fd is closed on the worker, after the answer). */
static int daemon_fd_count_settled(const struct host *h, int expected, unsigned timeout_ms) {
        uint64_t deadline = now_ms() + timeout_ms;
        int n;
        while ((n = daemon_fd_count(h)) != expected && now_ms() < deadline)
                sleep_ms(20);
        return n;
}

static unsigned record_count(const struct side *s, const char *prefix) {
        return (unsigned) tb_record_count(s->record, prefix);
}

/* Reads what arrived, waiting at most `ms` for something. */
static void pump(struct host *h, unsigned ms) {
        while (sd_bus_process(h->c, NULL) > 0)
                ;
        (void) sd_bus_wait(h->c, (uint64_t) ms * 1000u);
        while (sd_bus_process(h->c, NULL) > 0)
                ;
}

/* ---- PropertiesChanged on the source VM --------------------------------------------------------- */

static unsigned state_signals;

static int on_properties_changed(sd_bus_message *m, void *userdata, sd_bus_error *e) {
        (void) userdata;
        (void) e;
        const char *iface;
        if (sd_bus_message_read(m, "s", &iface) < 0 || sd_bus_message_enter_container(m, 'a', "{sv}") < 0)
                return 0;
        while (sd_bus_message_enter_container(m, 'e', "sv") > 0) {
                const char *name;
                if (sd_bus_message_read(m, "s", &name) < 0)
                        return 0;
                if (strcmp(name, "MigrationState") == 0)
                        state_signals++;
                if (sd_bus_message_skip(m, "v") < 0 || sd_bus_message_exit_container(m) < 0)
                        return 0;
        }
        return 0;
}

/* ---- tests --------------------------------------------------------------------------------------- */

static void test_migration(void **state) {
        (void) state;
        struct side s, d;
        char address[128], token[33];
        side_vm(&s, &src, false);
        side_vm(&d, &dst, true);
        assert_string_prop(&src, s.vm_path, VM_IF, "MigrationState", "none");
        assert_string_prop(&src, s.vm_path, VM_IF, "Role", "none");
        assert_int_equal(get_u64(&src, s.vm_path, "MigrationChecksum"), 0);
        assert_int_equal(get_u64(&dst, d.vm_path, "MigrationChecksum"), 0);

        sd_bus_slot *slot = NULL;
        state_signals = 0;
        assert_true(sd_bus_match_signal(src.c, &slot, DEST, s.vm_path, PROPS_IF, "PropertiesChanged",
                                        on_properties_changed, NULL) >= 0);
        prepare_incoming(&d, NULL, address, token);
        assert_true(strncmp(address, "unix:", 5) == 0 && strstr(address, dst.dir));
        sd_bus_message_unref(call(&src, s.vm_path, VM_IF, "MigrateTo", "ssa{sv}", address, token, 0));

        char *ss = wait_final(&src, s.vm_path), *ds = wait_final(&dst, d.vm_path);
        if (strcmp(ss, "completed") != 0 || strcmp(ds, "completed") != 0) {
                char *se = get_string(&src, s.vm_path, VM_IF, "MigrationError");
                char *de = get_string(&dst, d.vm_path, VM_IF, "MigrationError");
                fail_msg("source %s (%s), destination %s (%s)", ss, se, ds, de);
        }
        free(ss);
        free(ds);
        /*
         * At least setup and completed. A Get can see the final state before
         * the loop has sent its signal (the worker writes the view, the loop
         * publishes it), so the signal is waited for, bounded.
         */
        uint64_t signals_deadline = now_ms() + 2000;
        while (state_signals < 2 && now_ms() < signals_deadline)
                pump(&src, 50);
        assert_true(state_signals >= 2);
        sd_bus_slot_unref(slot);

        assert_string_prop(&src, s.vm_path, VM_IF, "Role", "source");
        assert_string_prop(&src, s.vm_path, VM_IF, "MigrationError", "");
        uint64_t pages = MEM_SIZE / PAGE;
        assert_int_equal(get_u64(&src, s.vm_path, "PagesTotal"), pages);
        assert_int_equal(get_u64(&src, s.vm_path, "PagesTransferred"), pages);
        assert_int_equal(get_u64(&dst, d.vm_path, "PagesTransferred"), pages);
        uint64_t zero = get_u64(&src, s.vm_path, "ZeroPages");
        assert_true(zero >= pages / 3 && zero < pages);
        assert_int_equal(get_u64(&dst, d.vm_path, "ZeroPages"), zero);
        /* Every non-zero page's data travelled. */
        assert_true(get_u64(&src, s.vm_path, "BytesTransferred") >= (pages - zero) * PAGE);
        assert_true(get_u64(&dst, d.vm_path, "BytesTransferred") >= (pages - zero) * PAGE);
        assert_true(get_u64(&src, s.vm_path, "TotalMs") >= get_u64(&src, s.vm_path, "DowntimeMs"));
        assert_true(get_u64(&src, s.vm_path, "TotalMs") < MIGRATION_TIMEOUT_MS);

        assert_memory_equal(s.mem, d.mem, MEM_SIZE);
        /*
         * Both ends name the image that travelled (the algorithm is the
         * stream's, tested with it in tests/unit/test-stream).
         */
        uint64_t sum = get_u64(&src, s.vm_path, "MigrationChecksum");
        assert_true(sum != 0);
        assert_int_equal(get_u64(&dst, d.vm_path, "MigrationChecksum"), sum);
        /* The destination runs the rings from where the source stopped them; the source let go. */
        assert_string_prop(&dst, d.dev_path, DEV_IF, "State", "running");
        assert_true(record_count(&d, "SET_VRING_BASE") >= 2);
        assert_true(record_count(&d, "SET_VRING_KICK") >= 2);
        assert_int_equal(record_count(&d, "VIOLATION"), 0);
        assert_int_equal(record_count(&s, "VIOLATION"), 0);
        assert_int_equal(tb_wait_exit(s.backend, 5000) >= 0, 1);
        s.backend = backends[0] = -1;
        /* Announced exactly as often as the destination says. */
        assert_int_equal(get_u32(&dst, d.vm_path, "RarpSent"), record_count(&d, "SEND_RARP"));
        /* The source's devices are the destination's now: refused up front, not on the worker. */
        call_error(&src, ERR("InvalidState"), "migrated away", s.vm_path, "MigrateTo", "ssa{sv}", address, token, 0);
        int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        call_error(&src, ERR("InvalidState"), "migrated away", s.vm_path, "SaveDeviceState", "ha{sv}", fd, 0);
        close(fd);
        assert_string_prop(&src, s.vm_path, VM_IF, "MigrationState", "completed");
        side_done(&s);
        side_done(&d);
}

static void test_wrong_token(void **state) {
        (void) state;
        struct side s, d;
        char address[128], token[33];
        side_vm(&s, &src, false);
        side_vm(&d, &dst, true);
        prepare_incoming(&d, NULL, address, token);
        assert_string_not_equal(token, BAD_TOKEN);
        sd_bus_message_unref(call(&src, s.vm_path, VM_IF, "MigrateTo", "ssa{sv}", address, BAD_TOKEN, 0));
        char *ss = wait_final(&src, s.vm_path), *ds = wait_final(&dst, d.vm_path);
        assert_string_equal(ss, "failed");
        assert_string_equal(ds, "failed");
        free(ss);
        free(ds);
        assert_error_mentions(&dst, d.vm_path, "token");
        /* The source runs again, from where it stopped; the destination never started. */
        assert_string_prop(&src, s.dev_path, DEV_IF, "State", "running");
        assert_string_prop(&dst, d.dev_path, DEV_IF, "State", "ready");
        assert_int_equal(record_count(&d, "SET_VRING_KICK"), 0);
        side_done(&s);
        side_done(&d);
}

/* A Unix listener that accepts nothing: the source's stream fills its buffer and blocks. */
static int silent_listener(const char *path) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        if (strlen(path) >= sizeof(sa.sun_path))
                fail_msg("socket path %s is too long", path);
        memcpy(sa.sun_path, path, strlen(path) + 1);
        unlink(path);
        if (fd < 0 || bind(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0 || listen(fd, 4) < 0)
                fail_msg("silent listener at %s: %s", path, strerror(errno));
        return fd;
}

static void test_cancel(void **state) {
        (void) state;
        struct side s, d;
        char address[128], token[33], path[128], silent[160];
        side_vm(&d, &dst, true);
        /* A destination waiting for its source. */
        prepare_incoming(&d, NULL, address, token);
        assert_string_prop(&dst, d.vm_path, VM_IF, "MigrationState", "setup");
        sd_bus_message_unref(call(&dst, d.vm_path, VM_IF, "CancelMigration", ""));
        char *st = wait_final(&dst, d.vm_path);
        assert_string_equal(st, "cancelled");
        free(st);
        assert_int_equal(access(address + 5, F_OK), -1); /* the socket went with it */
        call_error(&dst, ERR("InvalidState"), "no migration", d.vm_path, "CancelMigration", "");
        side_done(&d);

        /* A source whose peer never reads: cancelled while it sends, and running again. */
        side_vm(&s, &src, false);
        snprintf(path, sizeof(path), "%s/silent.sock", src.dir);
        int lfd = silent_listener(path);
        snprintf(silent, sizeof(silent), "unix:%s", path);
        sd_bus_message_unref(call(&src, s.vm_path, VM_IF, "MigrateTo", "ssa{sv}", silent, BAD_TOKEN, 0));
        uint64_t deadline = now_ms() + 10000;
        for (;;) {
                char *v = get_string(&src, s.vm_path, VM_IF, "MigrationState");
                bool under_way = strcmp(v, "setup") == 0 || strcmp(v, "active") == 0;
                bool ended = is_final(v);
                free(v);
                if (under_way || ended || now_ms() >= deadline)
                        break;
                sleep_ms(10);
        }
        sd_bus_message_unref(call(&src, s.vm_path, VM_IF, "CancelMigration", ""));
        st = wait_final(&src, s.vm_path);
        assert_string_equal(st, "cancelled");
        free(st);
        assert_string_prop(&src, s.dev_path, DEV_IF, "State", "running");
        close(lfd);
        unlink(path);
        side_done(&s);
}

static void test_refusals(void **state) {
        (void) state;
        struct side s, d;
        char address[128], token[33];
        side_vm(&s, &src, false);
        side_vm(&d, &dst, true);
        call_error(&src, "org.freedesktop.DBus.Error.InvalidArgs", "unix:", s.vm_path, "MigrateTo", "ssa{sv}", "ftp:x",
                   BAD_TOKEN, 0);
        call_error(&src, "org.freedesktop.DBus.Error.InvalidArgs", "token", s.vm_path, "MigrateTo", "ssa{sv}",
                   "unix:/nonexistent", "short", 0);
        call_error(&src, "org.freedesktop.DBus.Error.InvalidArgs", "Foo", s.vm_path, "MigrateTo", "ssa{sv}",
                   "unix:/nonexistent", BAD_TOKEN, 1, "Foo", "u", 1);
        /* The source's running device cannot be a destination, nor the reverse. */
        call_error(&src, ERR("InvalidState"), "Incoming", s.vm_path, "PrepareIncoming", "a{sv}", 0);
        call_error(&dst, ERR("InvalidState"), "incoming", d.vm_path, "MigrateTo", "ssa{sv}", "unix:/nonexistent",
                   BAD_TOKEN, 0);
        call_error(&dst, "org.freedesktop.DBus.Error.InvalidArgs", "Listen", d.vm_path, "PrepareIncoming", "a{sv}", 1,
                   "Listen", "s", "ftp:nowhere");
        call_error(&src, ERR("InvalidState"), "no migration", s.vm_path, "CancelMigration", "");
        /* One migration at a time. */
        prepare_incoming(&d, NULL, address, token);
        call_error(&dst, ERR("InvalidState"), "already", d.vm_path, "PrepareIncoming", "a{sv}", 0);
        /* Nobody at the address: failed, and the source untouched. */
        sd_bus_message_unref(
                call(&src, s.vm_path, VM_IF, "MigrateTo", "ssa{sv}", "unix:/nonexistent/sock", BAD_TOKEN, 0));
        char *st = wait_final(&src, s.vm_path);
        assert_string_equal(st, "failed");
        free(st);
        assert_error_mentions(&src, s.vm_path, "/nonexistent/sock");
        assert_string_prop(&src, s.dev_path, DEV_IF, "State", "running");
        sd_bus_message_unref(call(&dst, d.vm_path, VM_IF, "CancelMigration", ""));
        free(wait_final(&dst, d.vm_path));
        side_done(&s);
        side_done(&d);
}

static void ring_indices(struct host *h, const char *dev_path, uint32_t out[2]) {
        sd_bus_message *reply = NULL;
        const void *v;
        size_t size;
        int r = sd_bus_get_property(h->c, DEST, dev_path, DEV_IF, "RingIndices", NULL, &reply, "au");
        if (r >= 0)
                r = sd_bus_message_read_array(reply, 'u', &v, &size);
        if (r < 0 || size != 2 * sizeof(uint32_t))
                fail_msg("%s: RingIndices: %s", h->name, r < 0 ? strerror(-r) : "not two rings");
        memcpy(out, v, 2 * sizeof(uint32_t));
        sd_bus_message_unref(reply);
}

static int open_state(const char *path, int flags) {
        int fd = open(path, flags | O_CLOEXEC, 0600);
        if (fd < 0)
                fail_msg("%s: %s", path, strerror(errno));
        return fd;
}

static void test_device_state(void **state) {
        (void) state;
        struct side s, d;
        char file[160], garbage[160];
        uint32_t src_rings[2], dst_rings[2];
        side_vm(&s, &src, false);
        side_vm(&d, &dst, true);
        snprintf(file, sizeof(file), "%s/vm0.devstate", src.dir);
        snprintf(garbage, sizeof(garbage), "%s/garbage.devstate", dst.dir);

        /* What each end refuses before any job. */
        int fd = open_state(file, O_RDONLY | O_CREAT);
        call_error(&src, "org.freedesktop.DBus.Error.InvalidArgs", "read-only", s.vm_path, "SaveDeviceState", "ha{sv}",
                   fd, 0);
        close(fd);
        fd = open_state(file, O_RDWR);
        call_error(&dst, ERR("InvalidState"), "incoming", d.vm_path, "SaveDeviceState", "ha{sv}", fd, 0);
        call_error(&src, ERR("InvalidState"), "Incoming", s.vm_path, "LoadDeviceState", "ha{sv}", fd, 0);
        call_error(&src, "org.freedesktop.DBus.Error.InvalidArgs", "Foo", s.vm_path, "SaveDeviceState", "ha{sv}", fd, 1,
                   "Foo", "u", 1);
        close(fd);

        /* The source: stopped, its state in the file. */
        fd = open_state(file, O_WRONLY | O_TRUNC);
        sd_bus_message_unref(call(&src, s.vm_path, VM_IF, "SaveDeviceState", "ha{sv}", fd, 0));
        close(fd);
        assert_string_prop(&src, s.vm_path, VM_IF, "MigrationState", "completed");
        assert_string_prop(&src, s.vm_path, VM_IF, "Role", "source");
        assert_string_prop(&src, s.dev_path, DEV_IF, "State", "stopped");
        assert_true(record_count(&s, "GET_VRING_BASE") >= 2);
        ring_indices(&src, s.dev_path, src_rings);
        struct stat st;
        assert_int_equal(stat(file, &st), 0);
        assert_true(st.st_size > 0);

        /* The VMM carries the memory itself. */
        memcpy(d.mem, s.mem, MEM_SIZE);

        /* Not a state: refused, and nothing started at the destination. */
        fd = open_state(garbage, O_WRONLY | O_CREAT | O_TRUNC);
        assert_int_equal(write(fd, "not a migration stream, nothing like one", 40), 40);
        close(fd);
        fd = open_state(garbage, O_RDONLY);
        call_error(&dst, ERR("Backend"), NULL, d.vm_path, "LoadDeviceState", "ha{sv}", fd, 0);
        close(fd);
        assert_string_prop(&dst, d.vm_path, VM_IF, "MigrationState", "failed");
        assert_string_prop(&dst, d.dev_path, DEV_IF, "State", "ready");
        assert_int_equal(record_count(&d, "SET_VRING_KICK"), 0);

        /* The destination: restored from the source's indices, running, announced. */
        fd = open_state(file, O_RDONLY);
        sd_bus_message_unref(call(&dst, d.vm_path, VM_IF, "LoadDeviceState", "ha{sv}", fd, 0));
        close(fd);
        assert_string_prop(&dst, d.vm_path, VM_IF, "MigrationState", "completed");
        assert_string_prop(&dst, d.vm_path, VM_IF, "Role", "destination");
        assert_string_prop(&dst, d.vm_path, VM_IF, "MigrationError", "");
        assert_string_prop(&dst, d.dev_path, DEV_IF, "State", "running");
        ring_indices(&dst, d.dev_path, dst_rings);
        assert_memory_equal(src_rings, dst_rings, sizeof(src_rings));
        assert_true(record_count(&d, "SET_VRING_BASE") >= 2);
        assert_int_equal(get_u32(&dst, d.vm_path, "RarpSent"), record_count(&d, "SEND_RARP"));
        assert_int_equal(record_count(&d, "VIOLATION"), 0);
        assert_int_equal(record_count(&s, "VIOLATION"), 0);
        /* Once is all: the devices are no longer waiting for a state. */
        fd = open_state(file, O_RDONLY);
        call_error(&dst, ERR("InvalidState"), "Incoming", d.vm_path, "LoadDeviceState", "ha{sv}", fd, 0);
        close(fd);

        /* The VMM lets the source go: its back-end sees the device leave. */
        sd_bus_message_unref(call(&src, ROOT_PATH, MANAGER_IF, "DestroyVm", "s", VM_NAME));
        assert_int_equal(tb_wait_exit(s.backend, 5000) >= 0, 1);
        s.backend = backends[0] = -1;
        free(s.vm_path);
        s.vm_path = NULL;
        unlink(file);
        unlink(garbage);
        side_done(&s);
        side_done(&d);
}

/* ---- live migration: the test plays the VMM ------------------------------------------------------ */

#define BITMAP_BYTES ((MEM_SIZE / PAGE + 63) / 64 * 8)
/* Pages the VMM writes while the rounds run: clear of the rings. */
#define VMM_FIRST_PAGE 64u
#define VMM_PAGES      256u

/* A memfd bitmap as the contract wants it (sealed against shrinking), mapped. */
static int vmm_bitmap(uint64_t size, uint64_t **words) {
        int fd = memfd_create("vhostmig-test-bitmap", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, (off_t) size), 0);
        assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
        if (words) {
                *words = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
                assert_true(*words != MAP_FAILED);
        }
        return fd;
}

static void add_bitmap(struct side *s, int fd) {
        sd_bus_message_unref(call(s->h, s->vm_path, VM_IF, "AddDirtyBitmap", "ha{sv}", fd, 0));
}

/* The VMM's vCPU writes a page and marks it, as the contract says (atomic OR). */
static void vmm_write(struct side *s, uint64_t *words, uint64_t page, uint64_t value) {
        for (unsigned i = 0; i < PAGE; i += 8)
                memcpy(s->mem + page * PAGE + i, &value, 8);
        __atomic_fetch_or(&words[page / 64], UINT64_C(1) << (page % 64), __ATOMIC_RELAXED);
}

/* What the source VM's PropertiesChanged said during a live migration. */
struct live_watch {
        unsigned signals;    /* PropertiesChanged on the Vm interface */
        unsigned figures;    /* of those, with a progress figure in them */
        bool pre_switchover; /* MigrationState "pre-switchover" was seen */
        char last_state[32]; /* the last MigrationState seen */
};

static int on_live_changed(sd_bus_message *m, void *userdata, sd_bus_error *e) {
        (void) e;
        struct live_watch *w = userdata;
        const char *iface;
        if (sd_bus_message_read(m, "s", &iface) < 0 || strcmp(iface, VM_IF) != 0 ||
            sd_bus_message_enter_container(m, 'a', "{sv}") < 0)
                return 0;
        w->signals++;
        bool figure = false;
        while (sd_bus_message_enter_container(m, 'e', "sv") > 0) {
                const char *name, *v;
                if (sd_bus_message_read(m, "s", &name) < 0)
                        return 0;
                if (strcmp(name, "MigrationState") == 0) {
                        if (sd_bus_message_read(m, "v", "s", &v) < 0)
                                return 0;
                        snprintf(w->last_state, sizeof(w->last_state), "%s", v);
                        w->pre_switchover |= strcmp(v, "pre-switchover") == 0;
                } else if (sd_bus_message_skip(m, "v") < 0) {
                        return 0;
                }
                figure |= strcmp(name, "PagesTransferred") == 0 || strcmp(name, "PagesRemaining") == 0;
                if (sd_bus_message_exit_container(m) < 0)
                        return 0;
        }
        w->figures += figure;
        return 0;
}

/* Waits (bounded) until the source's signals showed `state` or a final state; true for `state`. */
static bool watch_until(struct host *h, struct live_watch *w, const char *state, unsigned timeout_ms) {
        uint64_t deadline = now_ms() + timeout_ms;
        while (strcmp(w->last_state, state) != 0 && !is_final(w->last_state) && now_ms() < deadline)
                pump(h, 20);
        return strcmp(w->last_state, state) == 0;
}

static void migrate_live(struct side *s, const char *address, const char *token, uint64_t bandwidth,
                         uint32_t pause_timeout_ms) {
        sd_bus_message_unref(call(s->h, s->vm_path, VM_IF, "MigrateTo", "ssa{sv}", address, token, 3, "Live", "b", 1,
                                  "MaxBandwidth", "t", bandwidth, "PauseTimeoutMs", "u", pause_timeout_ms));
}

static void test_live(void **state) {
        (void) state;
        struct side s, d;
        char address[128], token[33];
        uint64_t *words;
        side_vm(&s, &src, false);
        side_vm(&d, &dst, true);
        int bfd = vmm_bitmap(BITMAP_BYTES, &words);
        /* Before logging and before the migration: the logging takes it in now and clears it at the start. */
        add_bitmap(&s, bfd);
        assert_int_equal(get_u32(&src, s.vm_path, "DirtyBitmaps"), 1);
        assert_int_equal(get_u64(&src, s.vm_path, "Round"), 0);

        struct live_watch w = { 0 };
        sd_bus_slot *slot = NULL;
        assert_true(sd_bus_match_signal(src.c, &slot, DEST, s.vm_path, PROPS_IF, "PropertiesChanged", on_live_changed,
                                        &w) >= 0);
        prepare_incoming(&d, NULL, address, token);
        /* About 1.4 MB of non-zero pages at 1 MB/s: round 0 alone lasts over a second. */
        uint64_t t0 = now_ms();
        migrate_live(&s, address, token, UINT64_C(1) << 20, 20000);
        uint64_t value = 1;
        /*
         * The vCPU runs until the VMM sees pre-switchover (or the migration
         * ended), dirtying about 100 pages (400 KB) a second: less than the
         * bandwidth, so the rounds converge.
         */
        while (!w.pre_switchover && !is_final(w.last_state) && now_ms() < t0 + MIGRATION_TIMEOUT_MS) {
                vmm_write(&s, words, VMM_FIRST_PAGE + value % VMM_PAGES, value);
                value++;
                pump(&src, 10);
        }
        if (!w.pre_switchover)
                fail_msg("pre-switchover never reached the bus (last state \"%s\")", w.last_state);
        /* The vCPUs are paused: nothing writes any more. */
        sd_bus_message_unref(call(&src, s.vm_path, VM_IF, "MigrateContinue", "a{sv}", 0));
        char *ss = wait_final(&src, s.vm_path), *ds = wait_final(&dst, d.vm_path);
        uint64_t elapsed = now_ms() - t0;
        if (strcmp(ss, "completed") != 0 || strcmp(ds, "completed") != 0) {
                char *se = get_string(&src, s.vm_path, VM_IF, "MigrationError");
                char *de = get_string(&dst, d.vm_path, VM_IF, "MigrationError");
                fail_msg("source %s (%s), destination %s (%s)", ss, se, ds, de);
        }
        free(ss);
        free(ds);
        pump(&src, 50);
        sd_bus_slot_unref(slot);

        /* Every page the VMM wrote arrived, because it marked it. */
        assert_memory_equal(s.mem, d.mem, MEM_SIZE);
        /* Both ends agree on the image (END's checksum, checked by the destination). */
        uint64_t sum = get_u64(&src, s.vm_path, "MigrationChecksum");
        assert_true(sum != 0);
        assert_int_equal(get_u64(&dst, d.vm_path, "MigrationChecksum"), sum);
        /* Pages dirtied during round 0 needed a round of their own. */
        uint64_t round = get_u64(&src, s.vm_path, "Round"), bandwidth = get_u64(&src, s.vm_path, "Bandwidth");
        uint64_t setup = get_u64(&src, s.vm_path, "SetupMs"), total = get_u64(&src, s.vm_path, "TotalMs");
        printf("live: %" PRIu64 " ms, round %" PRIu64 ", bandwidth %" PRIu64 " B/s, setup %" PRIu64
               " ms, %u PropertiesChanged (%u with figures)\n",
               elapsed, round, bandwidth, setup, w.signals, w.figures);
        assert_true(round >= 1);
        assert_true(bandwidth > 0 && bandwidth <= 2 * (UINT64_C(1) << 20));
        assert_true(setup <= total);
        assert_true(get_u64(&src, s.vm_path, "PagesTransferred") > MEM_SIZE / PAGE);
        /* Throttled: 10 a second over the run, plus the start, the end and scheduling slack. */
        assert_true(w.figures >= 3);
        if (w.signals > elapsed / 100 + 6)
                fail_msg("%u PropertiesChanged in %" PRIu64 " ms: more than 10 a second", w.signals, elapsed);
        assert_string_prop(&src, s.vm_path, VM_IF, "MigrationState", "completed");
        munmap(words, BITMAP_BYTES);
        close(bfd);
        side_done(&s);
        side_done(&d);
}

/*
 * The daemon's switchover hashes the whole MEM_SIZE inside the downtime and
 * counts it in its estimate: that pass timed here, on one thread (the daemon
 * has as many as CPUs), the fastest of three; memcheck slows it 40 times.
 */
static unsigned checksum_pass_ms(const void *mem) {
        uint64_t best = UINT64_MAX;
        for (unsigned i = 0; i < 3; i++) {
                uint64_t t0 = now_ns() / 1000u;
                volatile uint64_t h = vhm_checksum_update(VHM_CHECKSUM_INIT, mem, MEM_SIZE);
                (void) h;
                uint64_t us = now_ns() / 1000u - t0;
                best = us < best ? us : best;
        }
        return (unsigned) ((best + 999) / 1000);
}

/*
 * The same live migration through DPDK: one testpmd with two vhost ports,
 * the source's device on the first, the destination's on the second.  Its
 * maximum downtime leaves 300 ms beside twice the checksum pass; a slow run
 * (the time scale) moves and dirties pages that much slower, so that round 0
 * still leaves more than the limit and a later round converges.
 */
static struct real_backend testpmd_be; /* static: the teardown stops it when an assert ends the test */

static void test_live_testpmd(void **state) {
        (void) state;
        struct real_backend *be = &testpmd_be;
        struct side s, d;
        char address[128], token[33];
        uint64_t *words;
        real_backend_init(be);
        assert_true(backend_available(TESTPMD_BIN));
        assert_int_equal(start_testpmd(be, 1, TESTPMD_TWO_PORTS), 0);
        testpmd = be;
        side_vm_at(&s, &src, false, false, be->socket);
        side_vm_at(&d, &dst, true, false, be->socket2);
        int bfd = vmm_bitmap(BITMAP_BYTES, &words);
        add_bitmap(&s, bfd);
        struct live_watch w = { 0 };
        sd_bus_slot *slot = NULL;
        assert_true(sd_bus_match_signal(src.c, &slot, DEST, s.vm_path, PROPS_IF, "PropertiesChanged", on_live_changed,
                                        &w) >= 0);
        prepare_incoming(&d, NULL, address, token);
        unsigned scale = test_time_scale(), max_downtime = 300 + 2 * checksum_pass_ms(s.mem);
        uint64_t t0 = now_ms(), value = 1, steps = 0;
        sd_bus_message_unref(call(s.h, s.vm_path, VM_IF, "MigrateTo", "ssa{sv}", address, token, 4, "Live", "b", 1,
                                  "MaxBandwidth", "t", (UINT64_C(1) << 20) / scale, "PauseTimeoutMs", "u",
                                  (uint32_t) scaled_ms(20000), "MaxDowntimeMs", "u", max_downtime));
        while (!w.pre_switchover && !is_final(w.last_state) && now_ms() < t0 + scaled_ms(MIGRATION_TIMEOUT_MS)) {
                if (steps++ % scale == 0) {
                        vmm_write(&s, words, VMM_FIRST_PAGE + value % VMM_PAGES, value);
                        value++;
                }
                pump(&src, 10);
        }
        if (!w.pre_switchover)
                fail_msg("pre-switchover never reached the bus (last state \"%s\")", w.last_state);
        sd_bus_message_unref(call(&src, s.vm_path, VM_IF, "MigrateContinue", "a{sv}", 0));
        char *ss = wait_final(&src, s.vm_path), *ds = wait_final(&dst, d.vm_path);
        if (strcmp(ss, "completed") != 0 || strcmp(ds, "completed") != 0) {
                char *se = get_string(&src, s.vm_path, VM_IF, "MigrationError");
                char *de = get_string(&dst, d.vm_path, VM_IF, "MigrationError");
                fail_msg("source %s (%s), destination %s (%s)", ss, se, ds, de);
        }
        free(ss);
        free(ds);
        sd_bus_slot_unref(slot);
        assert_memory_equal(s.mem, d.mem, MEM_SIZE);
        uint64_t sum = get_u64(&src, s.vm_path, "MigrationChecksum");
        assert_true(sum != 0);
        assert_int_equal(get_u64(&dst, d.vm_path, "MigrationChecksum"), sum);
        assert_true(get_u64(&src, s.vm_path, "Round") >= 1);
        assert_true(get_u64(&src, s.vm_path, "Bandwidth") > 0);
        assert_string_prop(&dst, d.dev_path, DEV_IF, "State", "running");
        munmap(words, BITMAP_BYTES);
        close(bfd);
        side_done(&s);
        side_done(&d);
        stop_backend(be);
        testpmd = NULL;
}

static bool get_bool(struct host *h, const char *path, const char *prop) {
        int v = 0;
        int r = sd_bus_get_property_trivial(h->c, DEST, path, VM_IF, prop, NULL, 'b', &v);
        if (r < 0)
                fail_msg("%s: %s.%s: %s", h->name, path, prop, strerror(-r));
        return v;
}

static void test_live_no_continue(void **state) {
        (void) state;
        struct side s, d;
        char address[128], token[33];
        side_vm(&s, &src, false);
        side_vm(&d, &dst, true);
        int bfd = vmm_bitmap(BITMAP_BYTES, NULL);
        add_bitmap(&s, bfd);
        assert_false(get_bool(&src, s.vm_path, "Logging"));
        struct live_watch w = { 0 };
        sd_bus_slot *slot = NULL;
        assert_true(sd_bus_match_signal(src.c, &slot, DEST, s.vm_path, PROPS_IF, "PropertiesChanged", on_live_changed,
                                        &w) >= 0);
        prepare_incoming(&d, NULL, address, token);
        migrate_live(&s, address, token, 0, 1000);
        /* The state reaches the bus within 100 ms of the daemon's view having it (a property read shows that). */
        uint64_t seen = 0, deadline = now_ms() + MIGRATION_TIMEOUT_MS;
        while (!w.pre_switchover && !is_final(w.last_state) && now_ms() < deadline) {
                char *v = get_string(&src, s.vm_path, VM_IF, "MigrationState");
                if (!seen && strcmp(v, "pre-switchover") == 0)
                        seen = now_ms();
                free(v);
                pump(&src, 2);
        }
        assert_true(w.pre_switchover);
        uint64_t latency = seen ? now_ms() - seen : 0;
        printf("pre-switchover: signalled %" PRIu64 " ms after a read showed it\n", latency);
        if (latency > 100 + 100)
                fail_msg("pre-switchover reached the bus %" PRIu64 " ms after the daemon had it", latency);
        sd_bus_slot_unref(slot);
        char *ss = wait_final(&src, s.vm_path);
        assert_string_equal(ss, "failed");
        free(ss);
        assert_error_mentions(&src, s.vm_path, "MigrateContinue");
        /* The source runs on, and logging is off again, as it was. */
        assert_string_prop(&src, s.dev_path, DEV_IF, "State", "running");
        assert_false(get_bool(&src, s.vm_path, "Logging"));
        free(wait_final(&dst, d.vm_path));
        assert_string_prop(&dst, d.dev_path, DEV_IF, "State", "ready");
        close(bfd);
        side_done(&s);
        side_done(&d);
}

/*
 * A vCPU of the VMM that keeps marking every page dirty (a thread: the
 * rounds never see a harvest without it, however the test is scheduled).
 */
struct marker {
        uint64_t *words;
        bool stop, running;
        pthread_t thread;
};

/* One at a time, not on a stack: a failed test leaves it to test_teardown, which stops it. */
static struct marker marker;

static void marker_stop(void) {
        if (!marker.running)
                return;
        __atomic_store_n(&marker.stop, true, __ATOMIC_RELAXED);
        pthread_join(marker.thread, NULL);
        marker.running = false;
}

static void *marker_run(void *opaque) {
        struct marker *m = opaque;
        while (!__atomic_load_n(&m->stop, __ATOMIC_RELAXED)) {
                for (unsigned w = 0; w < BITMAP_BYTES / 8; w++)
                        __atomic_fetch_or(&m->words[w], ~UINT64_C(0), __ATOMIC_RELAXED);
                usleep(1000);
        }
        return NULL;
}

/* Reads the signals for `ms`. */
static void pump_for(struct host *h, unsigned ms) {
        uint64_t until = now_ms() + ms;
        while (now_ms() < until)
                pump(h, 10);
}

/* Cancelled in the phase the signals showed: the source runs, logging off as before. */
static void cancel_now(struct side *s) {
        sd_bus_message_unref(call(s->h, s->vm_path, VM_IF, "CancelMigration", ""));
        char *st = wait_final(s->h, s->vm_path);
        assert_string_equal(st, "cancelled");
        free(st);
        assert_string_prop(s->h, s->dev_path, DEV_IF, "State", "running");
        assert_false(get_bool(s->h, s->vm_path, "Logging"));
}

/*
 * Rounds that never converge (the VMM keeps all 2 MB dirty, and 1 ms of
 * bandwidth carries far less): the engine reports after every batch, some 50 times
 * a second, and the bus must see at most 10.  Then cancelled in the rounds.
 */
static void live_cancel_active(struct side *s, struct live_watch *w, uint64_t *words, const char *address,
                               const char *token) {
        sd_bus_message_unref(call(s->h, s->vm_path, VM_IF, "MigrateTo", "ssa{sv}", address, token, 4, "Live", "b", 1,
                                  "MaxBandwidth", "t", UINT64_C(50) << 20, "MaxDowntimeMs", "u", 1, "MaxRounds", "u",
                                  10000));
        /* Busy from the start: round 0 alone would converge. */
        marker = (struct marker){ .words = words };
        assert_int_equal(pthread_create(&marker.thread, NULL, marker_run, &marker), 0);
        marker.running = true;
        pump_for(s->h, 300);
        if (strcmp(w->last_state, "active") != 0)
                fail_msg("not in the rounds after 300 ms (last state \"%s\")", w->last_state);
        unsigned before = w->signals;
        uint64_t t0 = now_ms(), round0 = get_u64(s->h, s->vm_path, "Round");
        pump_for(s->h, 1500);
        uint64_t elapsed = now_ms() - t0, rounds = get_u64(s->h, s->vm_path, "Round") - round0;
        unsigned n = w->signals - before;
        printf("rounds: %" PRIu64 " in %" PRIu64 " ms, %u PropertiesChanged\n", rounds, elapsed, n);
        /* The figures moved all along (many rounds), yet at most 10 signals a second, with slack for timing. */
        assert_true(rounds >= 5);
        assert_true(n >= 3);
        if (n > elapsed / 100 + 2)
                fail_msg("%u PropertiesChanged in %" PRIu64 " ms: more than 10 a second", n, elapsed);
        /* Cancelled while the rounds run. */
        assert_string_prop(s->h, s->vm_path, VM_IF, "MigrationState", "active");
        cancel_now(s);
        marker_stop();
}

/*
 * A live migration to a peer that never reads stays in the rounds (round 0
 * blocked on a full socket): what belongs to other states is refused there,
 * then it is cancelled.
 */
static void live_cancel_stuck(void) {
        struct side s;
        char path[128], silent[160];
        side_vm(&s, &src, false);
        int bfd = vmm_bitmap(BITMAP_BYTES, NULL);
        add_bitmap(&s, bfd);
        close(bfd);
        snprintf(path, sizeof(path), "%s/silent.sock", src.dir);
        int lfd = silent_listener(path);
        snprintf(silent, sizeof(silent), "unix:%s", path);
        migrate_live(&s, silent, BAD_TOKEN, 0, 20000);
        uint64_t deadline = now_ms() + 10000;
        char *v;
        while (strcmp((v = get_string(&src, s.vm_path, VM_IF, "MigrationState")), "active") != 0 && !is_final(v) &&
               now_ms() < deadline) {
                free(v);
                sleep_ms(10);
        }
        if (strcmp(v, "active") != 0)
                fail_msg("a live migration to a silent peer is \"%s\", not active", v);
        free(v);
        assert_true(get_bool(&src, s.vm_path, "Logging"));
        call_error(&src, ERR("InvalidState"), "pre-switchover", s.vm_path, "MigrateContinue", "a{sv}", 0);
        bfd = vmm_bitmap(BITMAP_BYTES, NULL);
        call_error(&src, ERR("InvalidState"), "migration", s.vm_path, "AddDirtyBitmap", "ha{sv}", bfd, 0);
        close(bfd);
        assert_int_equal(get_u32(&src, s.vm_path, "DirtyBitmaps"), 1);
        cancel_now(&s);
        close(lfd);
        unlink(path);
        side_done(&s);
}

static void test_live_cancel(void **state) {
        (void) state;
        char address[128], token[33];
        live_cancel_stuck();
        for (unsigned in_pause = 0; in_pause < 2; in_pause++) {
                struct side s, d;
                uint64_t *words;
                side_vm(&s, &src, false);
                side_vm(&d, &dst, true);
                call_error(&src, ERR("InvalidState"), "pre-switchover", s.vm_path, "MigrateContinue", "a{sv}", 0);
                int bfd = vmm_bitmap(BITMAP_BYTES, &words);
                add_bitmap(&s, bfd);
                struct live_watch w = { 0 };
                sd_bus_slot *slot = NULL;
                assert_true(sd_bus_match_signal(src.c, &slot, DEST, s.vm_path, PROPS_IF, "PropertiesChanged",
                                                on_live_changed, &w) >= 0);
                prepare_incoming(&d, NULL, address, token);
                if (!in_pause) {
                        live_cancel_active(&s, &w, words, address, token);
                } else {
                        /* The VMM never pauses: cancelled while the engine waits for it. */
                        migrate_live(&s, address, token, 0, 20000);
                        if (!watch_until(&src, &w, "pre-switchover", MIGRATION_TIMEOUT_MS))
                                fail_msg("never saw \"pre-switchover\" (last state \"%s\")", w.last_state);
                        cancel_now(&s);
                }
                sd_bus_slot_unref(slot);
                free(wait_final(&dst, d.vm_path));
                munmap(words, BITMAP_BYTES);
                close(bfd);
                side_done(&s);
                side_done(&d);
        }
}

static void test_live_options(void **state) {
        (void) state;
        struct side s;
        const char *invalid = "org.freedesktop.DBus.Error.InvalidArgs";
        side_vm(&s, &src, false);
        const char *a = "unix:/nonexistent/sock";
        call_error(&src, invalid, "Live", s.vm_path, "MigrateTo", "ssa{sv}", a, BAD_TOKEN, 1, "Live", "u", 1);
        call_error(&src, invalid, "MaxBandwidth", s.vm_path, "MigrateTo", "ssa{sv}", a, BAD_TOKEN, 2, "Live", "b", 1,
                   "MaxBandwidth", "u", 1);
        call_error(&src, invalid, "options: \"MaxRounds\" needs \"Live\"", s.vm_path, "MigrateTo", "ssa{sv}", a,
                   BAD_TOKEN, 1, "MaxRounds", "u", 5);
        call_error(&src, invalid, "\"PauseTimeoutMs\" needs", s.vm_path, "MigrateTo", "ssa{sv}", a, BAD_TOKEN, 2,
                   "Live", "b", 0, "PauseTimeoutMs", "u", 100);
        call_error(&src, invalid, "ForceSwitchover", s.vm_path, "MigrateTo", "ssa{sv}", a, BAD_TOKEN, 1,
                   "ForceSwitchover", "b", 1);
        call_error(&src, invalid, "MaxRounds", s.vm_path, "MigrateTo", "ssa{sv}", a, BAD_TOKEN, 2, "Live", "b", 1,
                   "MaxRounds", "u", 0);
        call_error(&src, invalid, "MaxRounds", s.vm_path, "MigrateTo", "ssa{sv}", a, BAD_TOKEN, 2, "Live", "b", 1,
                   "MaxRounds", "u", 10001);
        call_error(&src, invalid, "MaxDowntimeMs", s.vm_path, "MigrateTo", "ssa{sv}", a, BAD_TOKEN, 2, "Live", "b", 1,
                   "MaxDowntimeMs", "u", 0);
        call_error(&src, invalid, "PauseTimeoutMs", s.vm_path, "MigrateTo", "ssa{sv}", a, BAD_TOKEN, 2, "Live", "b", 1,
                   "PauseTimeoutMs", "u", 3600001);
        call_error(&src, invalid, "Foo", s.vm_path, "MigrateContinue", "a{sv}", 1, "Foo", "u", 1);
        /* Nothing began. */
        assert_string_prop(&src, s.vm_path, VM_IF, "MigrationState", "none");
        side_done(&s);

        /* A VM that cannot log cannot migrate live: the blockers are named (stop-and-copy still can). */
        side_vm_at(&s, &src, false, true, NULL);
        assert_true(get_bool(&src, s.vm_path, "MigrationBlocked"));
        call_error(&src, ERR("MigrationBlocked"), "LOG_ALL", s.vm_path, "MigrateTo", "ssa{sv}", a, BAD_TOKEN, 1, "Live",
                   "b", 1);
        assert_string_prop(&src, s.vm_path, VM_IF, "MigrationState", "none");
        side_done(&s);
        side_vm(&s, &src, false);
        /* In range, and the migration runs (and fails: nobody is there). */
        sd_bus_message_unref(call(&src, s.vm_path, VM_IF, "MigrateTo", "ssa{sv}", a, BAD_TOKEN, 5, "Live", "b", 1,
                                  "MaxRounds", "u", 10000, "MaxDowntimeMs", "u", 1, "ForceSwitchover", "b", 1,
                                  "MaxBandwidth", "t", UINT64_C(0)));
        char *st = wait_final(&src, s.vm_path);
        assert_string_equal(st, "failed");
        free(st);
        assert_string_prop(&src, s.dev_path, DEV_IF, "State", "running");
        side_done(&s);
}

static void test_dirty_bitmap(void **state) {
        (void) state;
        struct side s;
        const char *invalid = "org.freedesktop.DBus.Error.InvalidArgs";
        side_vm(&s, &src, false);
        const int fds_before = daemon_fd_count(&src);
        assert_true(fds_before > 0);

        int fd = memfd_create("unsealed", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        assert_true(fd >= 0 && ftruncate(fd, BITMAP_BYTES) == 0);
        call_error(&src, invalid, "F_SEAL_SHRINK", s.vm_path, "AddDirtyBitmap", "ha{sv}", fd, 0);
        close(fd);

        fd = vmm_bitmap(BITMAP_BYTES, NULL);
        char proc[64];
        snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
        int ro = open(proc, O_RDONLY | O_CLOEXEC);
        assert_true(ro >= 0);
        call_error(&src, invalid, "read-only", s.vm_path, "AddDirtyBitmap", "ha{sv}", ro, 0);
        close(ro);
        call_error(&src, invalid, "Foo", s.vm_path, "AddDirtyBitmap", "ha{sv}", fd, 1, "Foo", "u", 1);
        close(fd);

        fd = vmm_bitmap(BITMAP_BYTES - 8, NULL);
        call_error(&src, invalid, "bytes", s.vm_path, "AddDirtyBitmap", "ha{sv}", fd, 0);
        close(fd);
        int pipefd[2];
        assert_int_equal(pipe2(pipefd, O_CLOEXEC), 0);
        call_error(&src, invalid, "memfd", s.vm_path, "AddDirtyBitmap", "ha{sv}", pipefd[1], 0);
        close(pipefd[0]);
        close(pipefd[1]);
        assert_int_equal(get_u32(&src, s.vm_path, "DirtyBitmaps"), 0);

        /* Eight, each kept as a mapping only; the ninth is one too many. */
        for (unsigned i = 0; i < 8; i++) {
                fd = vmm_bitmap(BITMAP_BYTES, NULL);
                add_bitmap(&s, fd);
                close(fd);
        }
        assert_int_equal(get_u32(&src, s.vm_path, "DirtyBitmaps"), 8);
        fd = vmm_bitmap(BITMAP_BYTES, NULL);
        call_error(&src, ERR("LimitsExceeded"), "8", s.vm_path, "AddDirtyBitmap", "ha{sv}", fd, 0);
        close(fd);
        assert_int_equal(get_u32(&src, s.vm_path, "DirtyBitmaps"), 8);
        assert_int_equal(daemon_fd_count_settled(&src, fds_before, 3000), fds_before);
        side_done(&s);
}

/* What a failed test left behind: its VMs and back-ends. */
static int test_teardown(void **state) {
        (void) state;
        /* A failed test's marking thread still runs (in a mapping that test left): it stops first. */
        marker_stop();
        struct host *hosts[] = { &src, &dst };
        for (unsigned i = 0; i < 2; i++) {
                (void) sd_bus_call_method(hosts[i]->c, DEST, ROOT_PATH, MANAGER_IF, "DestroyVm", NULL, NULL, "s",
                                          VM_NAME);
                if (backends[i] > 0)
                        (void) tb_stop(backends[i]);
                backends[i] = 0;
        }
        if (testpmd)
                stop_backend(testpmd);
        testpmd = NULL;
        return 0;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_teardown(test_migration, test_teardown),
                cmocka_unit_test_teardown(test_wrong_token, test_teardown),
                cmocka_unit_test_teardown(test_cancel, test_teardown),
                cmocka_unit_test_teardown(test_refusals, test_teardown),
                cmocka_unit_test_teardown(test_device_state, test_teardown),
                cmocka_unit_test_teardown(test_live, test_teardown),
                cmocka_unit_test_teardown(test_live_testpmd, test_teardown),
                cmocka_unit_test_teardown(test_live_no_continue, test_teardown),
                cmocka_unit_test_teardown(test_live_cancel, test_teardown),
                cmocka_unit_test_teardown(test_live_options, test_teardown),
                cmocka_unit_test_teardown(test_dirty_bitmap, test_teardown),
        };
        if (getenv("TEST_FILTER"))
                cmocka_set_test_filter(getenv("TEST_FILTER"));
        return cmocka_run_group_tests_name("dbus-migrate", tests, group_setup, group_teardown);
}

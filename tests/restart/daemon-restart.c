/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vhostmigd restarted while a VM runs, end to end: this program is the
 * service manager (tests/restart/fdstore.h: NOTIFY_SOCKET keeping FDSTORE
 * fds by name, LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID on each start), the
 * VMM and the guest (the synthetic guest library: it keeps its memory and
 * eventfds whatever the daemon does), on a private bus, with DPDK testpmd as
 * the back-end echoing the guest's verified frames.  A second VM's device is
 * on the project's test back-end, which records every request it gets.
 *
 * Dirty logging on, then 10 restarts, by SIGKILL and SIGTERM in turn; while
 * the daemon is gone the guest's traffic goes on.  After each start:
 * GetManagedObjects equal to before (minus the documented counters and
 * timestamps), Logging still on, no request sent to the back-ends by the new
 * process (the device's Requests 0; the test back-end's record unchanged),
 * and the first Harvest leaves exactly the pages written since logging
 * started dirty (those harvested before the restart kept).  At
 * the end: not a frame lost, corrupted or repeated.  Then the states it must
 * refuse (corrupt, another version): one line saying so, no VM, the store
 * emptied and every fd it held closed, the test back-end's connection closed
 * without a request.
 *
 * Environment (set by meson): VHOSTMIGD, START_BUS.  Needs root and
 * dpdk-testpmd (exit 77 when it is missing).
 */
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <json-c/json.h>
#include <systemd/sd-bus.h>

#include "daemon/vhostmigd/state-store.h"
#include "daemon/guest/guest.h"
#include "tests/common/clock.h"
#include "tests/common/fd-count.h"
#include "tests/common/private-bus.h"
#include "tests/backend/test-backend.h"
#include "tests/common/real-backends.h"
#include "tests/restart/fdstore.h"

#define DEST       "org.vhostmig1"
#define ROOT_PATH  "/org/vhostmig1"
#define MANAGER_IF "org.vhostmig1.Manager"
#define VM_IF      "org.vhostmig1.Vm"
#define DEV_IF     "org.vhostmig1.Device"
#define VM_NAME    "restarted"
#define RESTARTS   10
#define MEM_SIZE   (UINT64_C(16) << 20)
#define RING_SIZE  256u
#define TRAFFIC_MS 300u
#define STALL_MS   10000
#define START_MS   10000u
#define STOP_MS    10000u
#define CALL_USEC  (UINT64_C(30) * 1000000u)

static struct {
        char dir[64], config[128], log[128], notify[128];
        struct private_bus bus;
        sd_bus *c;
        struct fdstore store;
        pid_t daemon;
        struct real_backend testpmd;
        struct vhm_guest *g;
        char *vm_path, *dev_path;
        /* The VM on the test back-end: its memory and eventfds (no guest drives it). */
        pid_t tb;
        char tb_socket[128], tb_record[128], *tb_vm_path, *tb_dev_path;
        int tb_fds[5];
        /*
         * The store takes notifications in on a thread of its own, as a
         * service manager does at any time: the daemon's sendmsg blocks once
         * a datagram socket's queue is full (net.unix.max_dgram_qlen).
         */
        pthread_t receiver;
        pthread_mutex_t lock; /* t.store */
        bool receiving, stop_receiving;
        /*
         * Every page written since logging started, as the guest knows it:
         * the pages its driver wrote (the VMM bitmap, read before each
         * harvest takes its bits) and those the back-end proved it wrote
         * (the used entries the driver consumed).  Pages found by the last
         * harvest: written_at_harvest.
         */
        bool written[MEM_SIZE / 4096];
        uint64_t written_at_harvest;
        /* VHOSTMIGD_TEST_FAULT for the next start ("": none). */
        const char *fault;
} t = { .daemon = -1, .tb = -1, .tb_fds = { -1, -1, -1, -1, -1 }, .lock = PTHREAD_MUTEX_INITIALIZER };

static void *receive_loop(void *arg) {
        (void) arg;
        while (!__atomic_load_n(&t.stop_receiving, __ATOMIC_RELAXED)) {
                pthread_mutex_lock(&t.lock);
                (void) fdstore_receive(&t.store, 0);
                pthread_mutex_unlock(&t.lock);
                usleep(500);
        }
        return NULL;
}

__attribute__((format(printf, 1, 2))) static int fail(const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "daemon-restart: ");
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
        return -EIO;
}

static int bus_fail(const char *what, const sd_bus_error *e, int r) {
        return fail("%s: %s", what, e && e->message ? e->message : strerror(-r));
}

static void dump_log(void) {
        FILE *f = fopen(t.log, "re");
        char line[1024];
        if (!f)
                return;
        fprintf(stderr, "---- vhostmigd ----\n");
        while (fgets(line, sizeof(line), f))
                fputs(line, stderr);
        fprintf(stderr, "---- end ----\n");
        fclose(f);
}

/* ---- the daemon, as a service manager runs it --------------------------------------------------- */

static void exec_daemon(const char *bin) {
        int log = open(t.log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (log < 0 || null < 0 || dup2(null, 0) < 0 || dup2(log, 1) < 0 || dup2(log, 2) < 0)
                _exit(126);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        /* The store's fds as 3.., LISTEN_* and NOTIFY_SOCKET; every other fd closed. */
        if (fdstore_pass(&t.store) < 0)
                _exit(126);
        setenv("DBUS_SYSTEM_BUS_ADDRESS", t.bus.address, 1);
        setenv("RUNTIME_DIRECTORY", t.dir, 1);
        unsetenv("JOURNAL_STREAM");
        unsetenv("WATCHDOG_USEC");
        if (t.fault)
                setenv("VHOSTMIGD_TEST_FAULT", t.fault, 1);
        else
                unsetenv("VHOSTMIGD_TEST_FAULT");
        execl(bin, "vhostmigd", "--config", t.config, (char *) NULL);
        _exit(127);
}

/* Takes in the daemon's notifications (fds kept, removed) until none comes for a while. */
static void receive_notifications(void) {
        for (;;) {
                pthread_mutex_lock(&t.lock);
                unsigned before = t.store.messages;
                pthread_mutex_unlock(&t.lock);
                sleep_ms(100);
                pthread_mutex_lock(&t.lock);
                bool quiet = t.store.messages == before;
                pthread_mutex_unlock(&t.lock);
                if (quiet)
                        return;
        }
}

static size_t store_size(void) {
        pthread_mutex_lock(&t.lock);
        size_t n = t.store.n;
        pthread_mutex_unlock(&t.lock);
        return n;
}

static int daemon_start(void) {
        const char *bin = getenv("VHOSTMIGD");
        if (!bin)
                return fail("VHOSTMIGD is not set (run the program with meson test)");
        fflush(stdout);
        fflush(stderr);
        /* The child copies the store as it is: not while the receiver changes it. */
        pthread_mutex_lock(&t.lock);
        t.store.ready = 0;
        pid_t pid = fork();
        if (pid == 0)
                exec_daemon(bin);
        pthread_mutex_unlock(&t.lock);
        if (pid < 0)
                return -errno;
        t.daemon = pid;
        uint64_t deadline = now_ms() + START_MS;
        for (;;) {
                bool owned = false;
                pthread_mutex_lock(&t.lock);
                bool ready = t.store.ready > 0;
                pthread_mutex_unlock(&t.lock);
                if (private_bus_name_has_owner(t.c, DEST, &owned) == 0 && owned && ready)
                        return 0;
                sleep_ms(10);
                if (waitpid(pid, NULL, WNOHANG) == pid) {
                        t.daemon = -1;
                        return fail("vhostmigd exited while starting");
                }
                if (now_ms() >= deadline)
                        return fail("vhostmigd did not start within %u ms", START_MS);
        }
}

/* SIGKILL or SIGTERM; the exit status (SIGTERM must give 0). */
static int daemon_stop(int sig) {
        int status = 0;
        if (t.daemon <= 0)
                return 0;
        kill(t.daemon, sig);
        uint64_t deadline = now_ms() + STOP_MS;
        while (waitpid(t.daemon, &status, WNOHANG) != t.daemon) {
                if (now_ms() >= deadline) {
                        kill(t.daemon, SIGKILL);
                        waitpid(t.daemon, NULL, 0);
                        t.daemon = -1;
                        return fail("vhostmigd did not exit within %u ms of signal %d", STOP_MS, sig);
                }
                sleep_ms(10);
        }
        t.daemon = -1;
        receive_notifications();
        if (sig == SIGTERM && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
                return fail("vhostmigd did not exit 0 on SIGTERM (status 0x%x)", status);
        return 0;
}

/* ---- the VM --------------------------------------------------------------------------------------- */

static int get_u64(const char *path, const char *iface, const char *prop, uint64_t *out) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        int r = sd_bus_get_property_trivial(t.c, DEST, path, iface, prop, &e, 't', out);
        if (r < 0)
                r = bus_fail(prop, &e, r);
        sd_bus_error_free(&e);
        return r;
}

static int get_bool(const char *path, const char *iface, const char *prop, bool *out) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        int v = 0;
        int r = sd_bus_get_property_trivial(t.c, DEST, path, iface, prop, &e, 'b', &v);
        if (r < 0)
                r = bus_fail(prop, &e, r);
        *out = v;
        sd_bus_error_free(&e);
        return r;
}

static int call(const char *path, const char *iface, const char *method, sd_bus_message **reply, const char *types,
                ...) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        sd_bus_message *m = NULL;
        int r = sd_bus_message_new_method_call(t.c, &m, DEST, path, iface, method);
        if (r >= 0 && types) {
                va_list ap;
                va_start(ap, types);
                r = sd_bus_message_appendv(m, types, ap);
                va_end(ap);
        }
        if (r >= 0 && (r = sd_bus_call(t.c, m, CALL_USEC, &e, reply)) < 0)
                r = bus_fail(method, &e, r);
        sd_bus_error_free(&e);
        sd_bus_message_unref(m);
        return r;
}

static int read_path(sd_bus_message *reply, char **out) {
        const char *p;
        int r = sd_bus_message_read(reply, "o", &p);
        if (r >= 0 && !(*out = strdup(p)))
                r = -ENOMEM;
        sd_bus_message_unref(reply);
        return r < 0 ? fail("a bad reply: %s", strerror(-r)) : 0;
}

static int add_device(void) {
        sd_bus_message *m = NULL, *reply = NULL;
        sd_bus_error e = SD_BUS_ERROR_NULL;
        uint8_t mac[6];
        char macs[18];
        vhm_guest_mac(t.g, mac);
        snprintf(macs, sizeof(macs), "%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
        int r = sd_bus_message_new_method_call(t.c, &m, DEST, t.vm_path, VM_IF, "AddDevice");
        if (r >= 0)
                r = sd_bus_message_append(m, "s", t.testpmd.socket);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "(uttthh)");
        for (unsigned q = 0; r >= 0 && q < 2; q++) {
                struct vhm_guest_queue_layout l;
                r = vhm_guest_queue_layout(t.g, q, &l);
                if (r >= 0)
                        r = sd_bus_message_append(m, "(uttthh)", (uint32_t) l.num, l.desc_gpa, l.avail_gpa, l.used_gpa,
                                                  l.kick_fd, l.call_fd);
        }
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r >= 0)
                /* DPDK switches logs under its queue locks: harvests are double-buffered. */
                r = sd_bus_message_append(m, "a{sv}", 4, "Features", "t", vhm_guest_driver_features(), "QueuePairs",
                                          "u", 1u, "Mac", "s", macs, "LogSwitchLocked", "b", 1);
        if (r >= 0 && (r = sd_bus_call(t.c, m, CALL_USEC, &e, &reply)) < 0)
                r = bus_fail("AddDevice", &e, r);
        sd_bus_error_free(&e);
        sd_bus_message_unref(m);
        return r < 0 ? r : read_path(reply, &t.dev_path);
}

/* The guest on testpmd: CreateVm, AddDevice, the driver on what was negotiated, a VMM bitmap, logging on. */
static int start_vm(void) {
        struct vhm_guest_config cfg = { .mem_size = MEM_SIZE, .queue_pairs = 1, .ring_size = RING_SIZE };
        sd_bus_message *reply = NULL;
        uint64_t features = 0;
        int r = vhm_guest_create(&cfg, &t.g);
        if (r < 0)
                return fail("the guest: %s", strerror(-r));
        r = call(ROOT_PATH, MANAGER_IF, "CreateVm", &reply, "sa(httt)a{sv}", VM_NAME, 1, vhm_guest_mem_fd(t.g),
                 UINT64_C(0), MEM_SIZE, UINT64_C(0), 0);
        if (r < 0 || (r = read_path(reply, &t.vm_path)) < 0 || (r = add_device()) < 0)
                return r;
        if ((r = get_u64(t.dev_path, DEV_IF, "AckedFeatures", &features)) < 0)
                return r;
        if ((r = vhm_guest_set_features(t.g, features)) < 0)
                return fail("the driver cannot use features 0x%" PRIx64 ": %s", features, strerror(-r));
        if ((r = call(t.vm_path, VM_IF, "AddDirtyBitmap", NULL, "ha{sv}", vhm_guest_dirty_bitmap(t.g), 0)) < 0)
                return r;
        /* What the back-end wrote before logging is no page a harvest must find. */
        vhm_guest_reset_device_written_pages(t.g);
        return call(t.vm_path, VM_IF, "StartLogging", NULL, "a{sv}", 0);
}

/* ---- the VM on the test back-end -------------------------------------------------------------------- */

/* Requests a test back-end has received (its record's lines naming their flags). */
static unsigned requests_in(const char *record) {
        char *rec = tb_record_read(record);
        unsigned n = 0;
        for (char *line = rec ? strtok(rec, "\n") : NULL; line; line = strtok(NULL, "\n"))
                n += strncmp(line, "VIOLATION", 9) != 0 && strstr(line, " flags=0x") != NULL;
        free(rec);
        return n;
}

static unsigned tb_requests(void) {
        return requests_in(t.tb_record);
}

/* Memory, eventfds and a device on the test back-end in the planned ring layout; logging on. */
static int start_tb_vm(void) {
        struct vhm_guest_config cfg = { .mem_size = MEM_SIZE, .queue_pairs = 1, .ring_size = RING_SIZE };
        struct tb_config tc;
        sd_bus_message *reply = NULL;
        char *vm_path = NULL;
        tb_config_init(&tc);
        snprintf(t.tb_socket, sizeof(t.tb_socket), "%s/tb.sock", t.dir);
        snprintf(t.tb_record, sizeof(t.tb_record), "%s/tb.record", t.dir);
        tc.record_path = t.tb_record;
        tc.max_connections = 0; /* a device resumed after an interrupted migration comes back */
        int r = tb_spawn_listen(&tc, t.tb_socket, &t.tb);
        if (r < 0)
                return fail("the test back-end: %s", strerror(-r));
        int *mem = &t.tb_fds[0];
        *mem = memfd_create("vhm-restart-tb", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (*mem < 0 || ftruncate(*mem, (off_t) MEM_SIZE) < 0 ||
            fcntl(*mem, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0)
                return fail("memory: %s", strerror(errno));
        for (unsigned i = 1; i < 5; i++)
                if ((t.tb_fds[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0)
                        return fail("eventfd: %s", strerror(errno));
        r = call(ROOT_PATH, MANAGER_IF, "CreateVm", &reply, "sa(httt)a{sv}", "tbvm", 1, *mem, UINT64_C(0), MEM_SIZE,
                 UINT64_C(0), 0);
        if (r < 0 || (r = read_path(reply, &vm_path)) < 0)
                return r;
        sd_bus_message *m = NULL;
        reply = NULL;
        r = sd_bus_message_new_method_call(t.c, &m, DEST, vm_path, VM_IF, "AddDevice");
        if (r >= 0)
                r = sd_bus_message_append(m, "s", t.tb_socket);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "(uttthh)");
        for (unsigned q = 0; r >= 0 && q < 2; q++) {
                struct vhm_guest_queue_layout l;
                r = vhm_guest_plan_queue_layout(&cfg, q, &l);
                if (r >= 0)
                        r = sd_bus_message_append(m, "(uttthh)", (uint32_t) l.num, l.desc_gpa, l.avail_gpa, l.used_gpa,
                                                  t.tb_fds[1 + q], t.tb_fds[3 + q]);
        }
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r >= 0)
                r = sd_bus_message_append(m, "a{sv}", 1, "QueuePairs", "u", 1u);
        sd_bus_error e = SD_BUS_ERROR_NULL;
        if (r >= 0 && (r = sd_bus_call(t.c, m, CALL_USEC, &e, &reply)) < 0)
                r = bus_fail("AddDevice (test back-end)", &e, r);
        sd_bus_error_free(&e);
        sd_bus_message_unref(m);
        if (r >= 0)
                r = read_path(reply, &t.tb_dev_path);
        else
                sd_bus_message_unref(reply);
        if (r >= 0)
                r = call(vm_path, VM_IF, "StartLogging", NULL, "a{sv}", 0);
        t.tb_vm_path = vm_path;
        return r;
}

static struct vhm_guest_stats guest_stats(void) {
        struct vhm_guest_stats s = { 0 };
        (void) vhm_guest_get_stats(t.g, VHM_GUEST_ALL_QPS, &s);
        return s;
}

static int traffic(unsigned ms) {
        struct vhm_guest_run_opts opts = { .flags = VHM_GUEST_RUN_WAIT_CALL };
        uint64_t end = now_ms() + ms;
        int r = 0;
        while (r >= 0 && now_ms() < end)
                r = vhm_guest_run_until(t.g, VHM_GUEST_ALL_QPS, 256, STALL_MS, &opts);
        return r < 0 ? fail("traffic: %s", strerror(-r)) : 0;
}

/* Receives until everything sent is accounted for. */
static void drain(void) {
        uint64_t end = now_ms() + 2000;
        for (;;) {
                (void) vhm_guest_reclaim_tx(t.g, 0);
                (void) vhm_guest_poll_rx(t.g, 0, 0);
                struct vhm_guest_stats s = guest_stats();
                if (s.received + s.lost + s.corrupted >= s.sent || now_ms() >= end)
                        return;
                usleep(200);
        }
}

static int note_device_page(uint64_t page, void *opaque) {
        (void) opaque;
        if (page < MEM_SIZE / 4096)
                t.written[page] = true;
        return 0;
}

/*
 * The pages written until now, once nothing is in flight (the back-end
 * writes only for frames the guest sends): what the next harvest must leave
 * dirty, no page more, no page less.
 */
static uint64_t pages_written(void) {
        uint64_t n = 0;
        drain();
        (void) vhm_guest_for_each_device_written_page(t.g, note_device_page, NULL);
        for (uint64_t p = 0; p < MEM_SIZE / 4096; p++) {
                t.written[p] |= vhm_guest_page_dirty(t.g, p);
                n += t.written[p];
        }
        return n;
}

/* ---- what D-Bus shows: GetManagedObjects as text, minus what a restart resets ------------------------- */

/*
 * Counters of the process and the times they count from (docs/vhostmigd.8,
 * RESTART): the rest must be equal.
 */
static bool volatile_property(const char *name) {
        /*
         * Not DirtyPages nor LogIncomplete: the pages a harvest took and no
         * migration sent yet outlive the process (the migration bitmap's memfd).
         */
        static const char *const names[] = { "Requests",     "RequestFailures",     "Harvests",
                                             "LastError",    "LastErrorTimestamp",  "Reconnects",
                                             "RefusedPeers", "StateChangeTimestamp" };
        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
                if (strcmp(name, names[i]) == 0)
                        return true;
        return false;
}

static int append(char **buf, size_t *len, FILE *f, sd_bus_message *m);

/* A variant's value as text, recursively (containers included). */
static int append_value(FILE *f, sd_bus_message *m) {
        char type;
        const char *contents;
        int r = sd_bus_message_peek_type(m, &type, &contents);
        if (r <= 0)
                return r;
        if (type == 'a' || type == 'v' || type == 'r' || type == 'e') {
                r = sd_bus_message_enter_container(m, type, contents);
                fputc('[', f);
                while (r >= 0 && (r = append_value(f, m)) > 0)
                        fputc(',', f);
                fputc(']', f);
                return r < 0 ? r : sd_bus_message_exit_container(m) < 0 ? -EIO : 1;
        }
        union {
                uint8_t y;
                int b;
                int16_t n;
                uint16_t q;
                int32_t i;
                uint32_t u;
                int64_t x;
                uint64_t t;
                double d;
                const char *s;
        } v;
        r = sd_bus_message_read_basic(m, type, &v);
        if (r <= 0)
                return r;
        switch (type) {
        case 'y':
                fprintf(f, "%u", v.y);
                break;
        case 'b':
                fprintf(f, "%s", v.b ? "true" : "false");
                break;
        case 'n':
                fprintf(f, "%d", v.n);
                break;
        case 'q':
                fprintf(f, "%u", v.q);
                break;
        case 'i':
                fprintf(f, "%d", v.i);
                break;
        case 'u':
                fprintf(f, "%u", v.u);
                break;
        case 'x':
                fprintf(f, "%" PRId64, v.x);
                break;
        case 't':
                fprintf(f, "%" PRIu64, v.t);
                break;
        case 'd':
                fprintf(f, "%g", v.d);
                break;
        case 'h':
                fprintf(f, "fd");
                break;
        default:
                fprintf(f, "\"%s\"", v.s);
                break;
        }
        return 1;
}

/* a{oa{sa{sv}}}: each object, interface and property on a line of its own, volatile ones left out. */
static int append(char **buf, size_t *len, FILE *f, sd_bus_message *m) {
        (void) buf;
        (void) len;
        const char *path, *iface, *prop;
        int r = sd_bus_message_enter_container(m, 'a', "{oa{sa{sv}}}");
        while (r >= 0 && (r = sd_bus_message_enter_container(m, 'e', "oa{sa{sv}}")) > 0) {
                r = sd_bus_message_read(m, "o", &path);
                if (r >= 0)
                        r = sd_bus_message_enter_container(m, 'a', "{sa{sv}}");
                while (r >= 0 && (r = sd_bus_message_enter_container(m, 'e', "sa{sv}")) > 0) {
                        r = sd_bus_message_read(m, "s", &iface);
                        if (r >= 0)
                                r = sd_bus_message_enter_container(m, 'a', "{sv}");
                        while (r >= 0 && (r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                                r = sd_bus_message_read(m, "s", &prop);
                                if (r >= 0 && volatile_property(prop))
                                        r = sd_bus_message_skip(m, "v");
                                else if (r >= 0) {
                                        fprintf(f, "%s %s.%s = ", path, iface, prop);
                                        r = append_value(f, m);
                                        fputc('\n', f);
                                }
                                if (r >= 0)
                                        r = sd_bus_message_exit_container(m);
                        }
                        if (r >= 0)
                                r = sd_bus_message_exit_container(m);
                        if (r >= 0)
                                r = sd_bus_message_exit_container(m);
                }
                if (r >= 0)
                        r = sd_bus_message_exit_container(m);
                if (r >= 0)
                        r = sd_bus_message_exit_container(m);
        }
        return r;
}

/* GetManagedObjects as sorted-by-server text (malloc'd). */
static int managed_objects(char **out) {
        sd_bus_message *reply = NULL;
        int r = call(ROOT_PATH, "org.freedesktop.DBus.ObjectManager", "GetManagedObjects", &reply, NULL);
        if (r < 0)
                return r;
        size_t len = 0;
        FILE *f = open_memstream(out, &len);
        if (!f) {
                sd_bus_message_unref(reply);
                return -ENOMEM;
        }
        r = append(out, &len, f, reply);
        fclose(f);
        sd_bus_message_unref(reply);
        return r < 0 ? fail("GetManagedObjects: %s", strerror(-r)) : 0;
}

/* Line by line: the daemon lists objects and properties in one order each time. */
static int compare_objects(const char *before, const char *after, unsigned n) {
        if (strcmp(before, after) == 0)
                return 0;
        const char *a = before, *b = after;
        while (*a && *b) {
                size_t la = strcspn(a, "\n"), lb = strcspn(b, "\n");
                if (la != lb || strncmp(a, b, la) != 0)
                        return fail("restart %u: GetManagedObjects differs:\n  before: %.*s\n  after:  %.*s", n,
                                    (int) la, a, (int) lb, b);
                a += la + (a[la] == '\n');
                b += lb + (b[lb] == '\n');
        }
        return fail("restart %u: GetManagedObjects differs in length", n);
}

/* ---- one restart ------------------------------------------------------------------------------------ */

/*
 * After a start: logging on, nothing asked of the back-end, the first
 * harvest finding the pages written (those the harvests before took kept),
 * and switching logs (LogSwitchLocked kept: the harvest sends the back-end
 * its next log).
 */
static int check_harvest(unsigned n, const char *how) {
        bool logging = false;
        uint64_t requests = UINT64_MAX, new_pages = 0, dirty = 0;
        sd_bus_message *reply = NULL;
        int r = 0;
        if ((r = get_bool(t.vm_path, VM_IF, "Logging", &logging)) >= 0 && !logging)
                r = fail("restart %u: logging is off", n);
        /* Before the harvest: a double-buffered harvest sends the back-end its next log. */
        if (r >= 0 && (r = get_u64(t.dev_path, DEV_IF, "Requests", &requests)) >= 0 && requests != 0)
                r = fail("restart %u: the new process sent the back-end %" PRIu64 " request(s)", n, requests);
        uint64_t written = r >= 0 ? pages_written() : 0;
        if (r >= 0)
                r = call(t.vm_path, VM_IF, "Harvest", &reply, NULL);
        if (r >= 0 && sd_bus_message_read(reply, "tt", &new_pages, &dirty) < 0)
                r = fail("Harvest: a bad reply");
        sd_bus_message_unref(reply);
        /*
         * Dirty: exactly the pages written since logging started (those the
         * harvests before the restart took kept in the migration bitmap's
         * memfd, docs/vhostmigd.8, RESTART); new: those written since the
         * last harvest.
         */
        if (r >= 0 && (dirty != written || new_pages != written - t.written_at_harvest))
                r = fail("restart %u: the harvest found %" PRIu64 " new page(s), %" PRIu64 " dirty; written %" PRIu64
                         ", %" PRIu64 " of them since the last harvest",
                         n, new_pages, dirty, written, written - t.written_at_harvest);
        t.written_at_harvest = written;
        if (r >= 0 && (r = get_u64(t.dev_path, DEV_IF, "Requests", &requests)) >= 0 && requests == 0)
                r = fail("restart %u: the harvest did not switch logs (LogSwitchLocked lost?)", n);
        if (r >= 0)
                printf("restart %2u (%s): logging on, 0 requests, harvest %" PRIu64 " new page(s), %" PRIu64
                       " dirty = %" PRIu64 " written, switched; store %zu fd(s)\n",
                       n, how, new_pages, dirty, written, store_size());
        return r;
}

/* After a start: the same objects, then check_harvest. */
static int check_after_start(const char *before, unsigned n) {
        char *after = NULL;
        int r = managed_objects(&after);
        if (r >= 0)
                r = compare_objects(before, after, n);
        free(after);
        return r < 0 ? r : check_harvest(n, n % 2 ? "SIGKILL" : "SIGTERM");
}

static int restart_once(unsigned n) {
        char *before = NULL;
        int r = traffic(TRAFFIC_MS);
        if (r >= 0)
                r = managed_objects(&before);
        unsigned tb_before = tb_requests();
        if (r >= 0)
                r = daemon_stop(n % 2 ? SIGKILL : SIGTERM);
        /* The back-end and the guest do not notice: traffic flows while no daemon runs. */
        if (r >= 0)
                r = traffic(TRAFFIC_MS);
        if (r >= 0)
                r = daemon_start();
        if (r >= 0)
                r = check_after_start(before, n);
        /* The harvest above is the other VM's: the test back-end has had nothing since. */
        if (r >= 0 && tb_requests() != tb_before)
                r = fail("restart %u: the test back-end got %u request(s) from the new process", n,
                         tb_requests() - tb_before);
        free(before);
        return r;
}

/*
 * Killed between a harvest that handed the back-end a new log and that
 * harvest's capture (the test builds' fault point): the state published
 * names the log the back-end left, and the back-end writes the new one
 * while no daemon runs.  The successor finds the new log (kept ahead of the
 * state) and the first harvest finds every page written since.  Run first,
 * with no traffic since logging started: the guest writes the same few
 * hundred pages over and over, so only then are the pages written while no
 * daemon runs new to the migration bitmap.
 */
static int died_before_capture(unsigned n) {
        sd_bus_message *reply = NULL;
        sd_bus_error e = SD_BUS_ERROR_NULL;
        t.fault = "log-replaced";
        int r = daemon_stop(SIGTERM);
        if (r >= 0)
                r = daemon_start();
        t.fault = NULL;
        /* The pages this harvest takes are in the migration bitmap's memfd before it dies. */
        uint64_t written = r >= 0 ? pages_written() : 0;
        if (r >= 0 && sd_bus_call_method(t.c, DEST, t.vm_path, VM_IF, "Harvest", &e, &reply, "") >= 0)
                r = fail(
                        "restart %u: the harvest returned: it switched no log (LogSwitchLocked lost?), or no fault point",
                        n);
        sd_bus_error_free(&e);
        sd_bus_message_unref(reply);
        int status = 0;
        if (r >= 0 &&
            (waitpid(t.daemon, &status, 0) != t.daemon || !WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL))
                r = fail("restart %u: vhostmigd did not die at the fault point (status 0x%x)", n, status);
        if (r >= 0) {
                t.daemon = -1;
                t.written_at_harvest = written;
                receive_notifications();
                r = traffic(TRAFFIC_MS);
        }
        if (r >= 0)
                r = daemon_start();
        return r < 0 ? r : check_harvest(n, "killed before a capture");
}

/* ---- a migration the daemon was running when it died ------------------------------------------------ */

static int get_string(const char *path, const char *iface, const char *prop, char *buf, size_t len) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        char *v = NULL;
        int r = sd_bus_get_property_string(t.c, DEST, path, iface, prop, &e, &v);
        if (r < 0)
                r = bus_fail(prop, &e, r);
        else
                snprintf(buf, len, "%s", v);
        free(v);
        sd_bus_error_free(&e);
        return r;
}

/*
 * The test back-end's VM migrates (stop and copy) to a destination that
 * never answers: its rings stopped, the daemon is killed.  The new process
 * says the migration failed and resumes the device from its used rings, on a
 * new connection (as after a back-end restart).
 */
static int interrupted_migration(void) {
        char dest[96], state[32] = "", role[32] = "", dev_state[32] = "";
        snprintf(dest, sizeof(dest), "%s/nobody.sock", t.dir);
        int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", dest);
        if (lfd < 0 || bind(lfd, (struct sockaddr *) &sa, sizeof(sa)) < 0 || listen(lfd, 4) < 0)
                return fail("the silent destination: %s", strerror(errno));
        char address[140];
        snprintf(address, sizeof(address), "unix:%s", dest);
        int r = call(t.tb_vm_path, VM_IF, "MigrateTo", NULL, "ssa{sv}", address, "00000000000000000000000000000000", 0);
        /* Until the rings are stopped: the back-end answered GET_VRING_BASE for both. */
        for (uint64_t end = now_ms() + 5000; r >= 0 && tb_record_count(t.tb_record, "GET_VRING_BASE") < 2;) {
                if (now_ms() >= end)
                        r = fail("the migration did not stop the rings");
                sleep_ms(20);
        }
        if (r >= 0)
                r = daemon_stop(SIGKILL);
        if (r >= 0)
                r = daemon_start();
        if (r >= 0)
                r = get_string(t.tb_vm_path, VM_IF, "MigrationState", state, sizeof(state));
        if (r >= 0)
                r = get_string(t.tb_vm_path, VM_IF, "Role", role, sizeof(role));
        if (r >= 0 && (strcmp(state, "failed") != 0 || strcmp(role, "source") != 0))
                r = fail("after the restart the migration is %s as %s, not failed as source", state, role);
        for (uint64_t end = now_ms() + 5000; r >= 0;) {
                r = get_string(t.tb_dev_path, DEV_IF, "State", dev_state, sizeof(dev_state));
                if (r < 0 ||
                    (strcmp(dev_state, "running") == 0 && tb_record_count(t.tb_record, "CONNECTION 2 OPEN") == 1))
                        break;
                if (now_ms() >= end)
                        r = fail("the device is %s after the restart, not running on a new connection", dev_state);
                sleep_ms(20);
        }
        close(lfd);
        unlink(dest);
        if (r >= 0)
                printf("a migration under way at SIGKILL: failed as source after the restart, the device running "
                       "again on a new connection\n");
        return r;
}

/*
 * A VM waiting for an incoming migration (PrepareIncoming, its device added
 * with Incoming on a test back-end of its own) when the daemon is killed: the
 * new process says the migration failed as destination and drops the
 * incoming device, whose connection the back-end sees end without a request.
 */
static int interrupted_incoming(void) {
        struct vhm_guest_config cfg = { .mem_size = MEM_SIZE, .queue_pairs = 1, .ring_size = RING_SIZE };
        char socket[96], record[96], state[32] = "", role[32] = "";
        struct tb_config tc;
        pid_t tb = -1;
        int fds[5] = { -1, -1, -1, -1, -1 };
        char *vm_path = NULL, **devices = NULL;
        sd_bus_message *m = NULL, *reply = NULL;
        snprintf(socket, sizeof(socket), "%s/tb-in.sock", t.dir);
        snprintf(record, sizeof(record), "%s/tb-in.record", t.dir);
        tb_config_init(&tc);
        tc.record_path = record;
        int r = tb_spawn_listen(&tc, socket, &tb);
        if (r < 0)
                return fail("the incoming test back-end: %s", strerror(-r));
        fds[0] = memfd_create("vhm-restart-in", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fds[0] < 0 || ftruncate(fds[0], (off_t) MEM_SIZE) < 0 ||
            fcntl(fds[0], F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0)
                r = fail("memory: %s", strerror(errno));
        for (unsigned i = 1; r >= 0 && i < 5; i++)
                if ((fds[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0)
                        r = fail("eventfd: %s", strerror(errno));
        if (r >= 0)
                r = call(ROOT_PATH, MANAGER_IF, "CreateVm", &reply, "sa(httt)a{sv}", "incoming", 1, fds[0], UINT64_C(0),
                         MEM_SIZE, UINT64_C(0), 0);
        if (r >= 0)
                r = read_path(reply, &vm_path);
        if (r >= 0)
                r = sd_bus_message_new_method_call(t.c, &m, DEST, vm_path, VM_IF, "AddDevice");
        if (r >= 0)
                r = sd_bus_message_append(m, "s", socket);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "(uttthh)");
        for (unsigned q = 0; r >= 0 && q < 2; q++) {
                struct vhm_guest_queue_layout l;
                r = vhm_guest_plan_queue_layout(&cfg, q, &l);
                if (r >= 0)
                        r = sd_bus_message_append(m, "(uttthh)", (uint32_t) l.num, l.desc_gpa, l.avail_gpa, l.used_gpa,
                                                  fds[1 + q], fds[3 + q]);
        }
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r >= 0)
                r = sd_bus_message_append(m, "a{sv}", 2, "QueuePairs", "u", 1u, "Incoming", "b", 1);
        sd_bus_error e = SD_BUS_ERROR_NULL;
        reply = NULL;
        if (r >= 0 && (r = sd_bus_call(t.c, m, CALL_USEC, &e, &reply)) < 0)
                r = bus_fail("AddDevice (incoming)", &e, r);
        sd_bus_error_free(&e);
        sd_bus_message_unref(m);
        sd_bus_message_unref(reply);
        reply = NULL;
        if (r >= 0)
                r = call(vm_path, VM_IF, "PrepareIncoming", &reply, "a{sv}", 0);
        sd_bus_message_unref(reply);
        unsigned requests = 0;
        if (r >= 0) {
                /* The last capture (the device connected) and the migration's start published. */
                sleep_ms(300);
                receive_notifications();
                requests = requests_in(record);
                r = daemon_stop(SIGKILL);
        }
        if (r >= 0)
                r = daemon_start();
        if (r >= 0)
                r = get_string(vm_path, VM_IF, "MigrationState", state, sizeof(state));
        if (r >= 0)
                r = get_string(vm_path, VM_IF, "Role", role, sizeof(role));
        if (r >= 0 && (strcmp(state, "failed") != 0 || strcmp(role, "destination") != 0))
                r = fail("after the restart the incoming migration is %s as %s, not failed as destination", state,
                         role);
        for (uint64_t end = now_ms() + 3000; r >= 0 && tb_record_count(record, "CONNECTION 1 CLOSED") == 0;) {
                if (now_ms() >= end)
                        r = fail("the incoming device's connection is still open after the restart");
                sleep_ms(20);
        }
        if (r >= 0 && requests_in(record) != requests)
                r = fail("the incoming device's back-end got requests after the restart");
        if (r >= 0 && (r = sd_bus_get_property_strv(t.c, DEST, vm_path, VM_IF, "Devices", NULL, &devices)) < 0)
                r = fail("Devices: %s", strerror(-r));
        if (r >= 0 && devices && devices[0])
                r = fail("the incoming device %s is still there after the restart", devices[0]);
        for (size_t i = 0; devices && devices[i]; i++)
                free(devices[i]);
        free(devices);
        if (vm_path)
                (void) call(ROOT_PATH, MANAGER_IF, "DestroyVm", NULL, "s", "incoming");
        free(vm_path);
        for (unsigned i = 0; i < 5; i++)
                if (fds[i] >= 0)
                        close(fds[i]);
        (void) tb_stop(tb);
        unlink(socket);
        unlink(record);
        if (r >= 0) {
                receive_notifications();
                printf("an incoming migration under way at SIGKILL: failed as destination after the restart, the "
                       "incoming device dropped, its connection closed without a request\n");
        }
        return r;
}

/* ---- states that must be refused ---------------------------------------------------------------------- */

/* The stored state's text (the newest slot), or NULL. */
static char *stored_state(int *slot_fd) {
        int fd = fdstore_fd(&t.store, "state.b") >= 0 && fdstore_fd(&t.store, "state.a") < 0
                         ? fdstore_fd(&t.store, "state.b")
                         : fdstore_fd(&t.store, "state.a");
        if (fd < 0)
                fd = fdstore_fd(&t.store, "state.b");
        *slot_fd = fd;
        if (fd < 0)
                return NULL;
        off_t size = lseek(fd, 0, SEEK_END);
        char *text = size > 0 ? calloc(1, (size_t) size + 1) : NULL;
        if (text && pread(fd, text, (size_t) size, 0) != size) {
                free(text);
                text = NULL;
        }
        return text;
}

/* Replaces the state's memfd in the store by one holding `text`, sealed as the daemon seals it. */
static int replace_state(int slot_fd, const char *text) {
        int fd = memfd_create("spoilt-state", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t) strlen(text) ||
            fcntl(fd, F_ADD_SEALS, F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE) < 0)
                return fail("the spoilt state: %s", strerror(errno));
        for (size_t i = 0; i < t.store.n; i++)
                if (t.store.fds[i] == slot_fd) {
                        close(t.store.fds[i]);
                        t.store.fds[i] = fd;
                        return 0;
                }
        close(fd);
        return fail("the state is not in the store");
}

static bool log_has(const char *needle) {
        FILE *f = fopen(t.log, "re");
        char line[2048];
        bool found = false;
        while (f && !found && fgets(line, sizeof(line), f))
                found = strstr(line, needle) != NULL;
        if (f)
                fclose(f);
        return found;
}

/*
 * The daemon stopped by SIGKILL, its state spoilt by `spoil`, started again:
 * the refusal logged, no VM, every fd the store held removed and closed.
 */
static int refused(const char *what, void (*spoil)(json_object *env, char **text), int fds_before) {
        int slot_fd = -1;
        unsigned tb_before = tb_requests();
        int r = daemon_stop(SIGKILL);
        pthread_mutex_lock(&t.lock);
        char *text = r >= 0 ? stored_state(&slot_fd) : NULL;
        if (r >= 0 && !text)
                r = fail("%s: no state in the store", what);
        json_object *env = text ? json_tokener_parse(text) : NULL;
        char *spoilt = NULL;
        if (r >= 0 && !env)
                r = fail("%s: the stored state is not JSON", what);
        if (r >= 0) {
                spoil(env, &spoilt);
                r = replace_state(slot_fd, spoilt);
        }
        pthread_mutex_unlock(&t.lock);
        json_object_put(env);
        free(spoilt);
        free(text);
        truncate(t.log, 0);
        if (r >= 0)
                r = daemon_start();
        receive_notifications();
        char **vms = NULL;
        if (r >= 0 && !log_has("the saved state is refused"))
                r = fail("%s: no line saying the state was refused", what);
        if (r >= 0 && (r = sd_bus_get_property_strv(t.c, DEST, ROOT_PATH, MANAGER_IF, "Vms", NULL, &vms)) < 0)
                r = fail("Vms: %s", strerror(-r));
        if (r >= 0 && vms && vms[0])
                r = fail("%s: VM %s after the refusal", what, vms[0]);
        for (size_t i = 0; vms && vms[i]; i++)
                free(vms[i]);
        free(vms);
        if (r >= 0 && store_size() != 0)
                r = fail("%s: the store still holds %zu fd(s)", what, store_size());
        /* The last connection ends once no process holds it, and nothing was sent on it. */
        char closed[48];
        unsigned last = 0;
        for (char open[48];; last++) {
                snprintf(open, sizeof(open), "CONNECTION %u OPEN", last + 1);
                if (t.tb <= 0 || tb_record_count(t.tb_record, open) == 0)
                        break;
        }
        snprintf(closed, sizeof(closed), "CONNECTION %u CLOSED", last);
        for (uint64_t end = now_ms() + 2000;
             r >= 0 && t.tb > 0 && tb_record_count(t.tb_record, closed) == 0 && now_ms() < end;)
                sleep_ms(20);
        if (r >= 0 && t.tb > 0 && tb_record_count(t.tb_record, closed) != 1)
                r = fail("%s: the test back-end's connection is not closed (no \"%s\")", what, closed);
        if (r >= 0 && t.tb > 0 && tb_requests() != tb_before)
                r = fail("%s: the test back-end got %u request(s)", what, tb_requests() - tb_before);
        if (r >= 0 && count_open_fds() != fds_before)
                r = fail("%s: this process has %d fds open, %d before the VM", what, count_open_fds(), fds_before);
        if (r >= 0)
                printf("%s: refused (\"the saved state is refused\"), no VM, the store emptied, fds back to %d%s\n",
                       what, fds_before, t.tb > 0 ? ", the test back-end's connection closed without a request" : "");
        if (t.tb > 0) {
                (void) tb_stop(t.tb);
                t.tb = -1;
        }
        return r;
}

static void spoil_body(json_object *env, char **text) {
        json_object *body = NULL;
        (void) json_object_object_get_ex(env, "body", &body);
        char *b = strdup(json_object_get_string(body));
        char *p = b ? strstr(b, "\"vms\"") : NULL;
        if (p)
                p[1] = 'V'; /* the checksum no longer matches */
        json_object_object_add(env, "body", json_object_new_string(b ? b : ""));
        free(b);
        *text = strdup(json_object_to_json_string_ext(env, JSON_C_TO_STRING_PLAIN));
}

static void spoil_version(json_object *env, char **text) {
        json_object_object_add(env, "version", json_object_new_int(STATE_STORE_VERSION + 1));
        *text = strdup(json_object_to_json_string_ext(env, JSON_C_TO_STRING_PLAIN));
}

/* A VM of memory alone, for a state with a VM in it again. */
static int memory_only_vm(void) {
        sd_bus_message *reply = NULL;
        int fd = memfd_create("vhm-restart-mem", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0 || ftruncate(fd, 2u << 20) < 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0)
                return fail("memory: %s", strerror(errno));
        int r = call(ROOT_PATH, MANAGER_IF, "CreateVm", &reply, "sa(httt)a{sv}", "memory-only", 1, fd, UINT64_C(0),
                     UINT64_C(2) << 20, UINT64_C(0), 0);
        close(fd);
        sd_bus_message_unref(reply);
        /* Its worker keeps the memory in the store, then the loop publishes. */
        sleep_ms(200);
        receive_notifications();
        return r;
}

/* ---- the run ---------------------------------------------------------------------------------------------- */

static int setup(void) {
        static const char config[] = "{ \"request_timeout_ms\": 5000, \"monitor_interval_ms\": 100 }\n";
        snprintf(t.dir, sizeof(t.dir), "/tmp/vhostmig-drestart-XXXXXX");
        if (!mkdtemp(t.dir))
                return fail("mkdtemp: %s", strerror(errno));
        snprintf(t.config, sizeof(t.config), "%s/vhostmigd.json", t.dir);
        snprintf(t.log, sizeof(t.log), "%s/vhostmigd.log", t.dir);
        snprintf(t.notify, sizeof(t.notify), "%s/notify", t.dir);
        FILE *f = fopen(t.config, "we");
        if (!f || fputs(config, f) < 0 || fclose(f) != 0)
                return fail("the configuration: %s", strerror(errno));
        int r = fdstore_open(&t.store, t.notify);
        if (r < 0)
                return fail("the notify socket: %s", strerror(-r));
        if ((r = private_bus_start(&t.bus, false)) < 0 || (r = private_bus_connect(t.bus.address, CALL_USEC, &t.c)) < 0)
                return fail("the private bus: %s", strerror(-r));
        if ((r = pthread_create(&t.receiver, NULL, receive_loop, NULL)) != 0)
                return fail("the receiver thread: %s", strerror(r));
        t.receiving = true;
        return 0;
}

static void cleanup(void) {
        (void) daemon_stop(SIGKILL);
        if (t.receiving) {
                __atomic_store_n(&t.stop_receiving, true, __ATOMIC_RELAXED);
                pthread_join(t.receiver, NULL);
        }
        vhm_guest_free(t.g);
        free(t.vm_path);
        free(t.dev_path);
        free(t.tb_vm_path);
        free(t.tb_dev_path);
        stop_backend(&t.testpmd);
        if (t.tb > 0)
                (void) tb_stop(t.tb);
        for (unsigned i = 0; i < 5; i++)
                if (t.tb_fds[i] >= 0)
                        close(t.tb_fds[i]);
        unlink(t.tb_socket);
        unlink(t.tb_record);
        t.c = sd_bus_flush_close_unref(t.c);
        (void) private_bus_stop(&t.bus);
        fdstore_close(&t.store);
        unlink(t.config);
        unlink(t.log);
        /* The incoming socket of the daemon killed in PrepareIncoming: a SIGKILLed process unlinks nothing. */
        glob_t g;
        char pattern[sizeof(t.dir) + 32];
        snprintf(pattern, sizeof(pattern), "%s/vhostmig-incoming-*.sock", t.dir);
        if (glob(pattern, 0, NULL, &g) == 0) {
                for (size_t i = 0; i < g.gl_pathc; i++)
                        unlink(g.gl_pathv[i]);
                globfree(&g);
        }
        rmdir(t.dir);
}

/*
 * Logging off and on again after the restarts: SET_VRING_ADDR goes out, its
 * ring addresses in the space the first daemon gave testpmd in SET_MEM_TABLE
 * (that daemon's mappings, not this one's), else testpmd cannot translate
 * them and its queue stops: the traffic stalls.
 */
static int logging_off_and_on(void) {
        uint64_t received = guest_stats().received;
        int r = call(t.vm_path, VM_IF, "StopLogging", NULL, NULL);
        if (r >= 0)
                r = traffic(TRAFFIC_MS);
        if (r >= 0 && guest_stats().received == received)
                r = fail("no frame came back after logging went off");
        received = guest_stats().received;
        /* What the back-end wrote while logging was off is no page a harvest must find. */
        vhm_guest_reset_device_written_pages(t.g);
        if (r >= 0)
                r = call(t.vm_path, VM_IF, "StartLogging", NULL, "a{sv}", 0);
        if (r >= 0)
                r = traffic(TRAFFIC_MS);
        if (r >= 0 && guest_stats().received == received)
                r = fail("no frame came back after logging went on again");
        if (r >= 0)
                drain();
        return r;
}

static int run(void) {
        int fds_before = count_open_fds();
        int r = daemon_start();
        if (r >= 0 && (r = start_testpmd(&t.testpmd, 1, 0)) < 0)
                r = fail("testpmd did not start: %s", strerror(-r));
        if (r >= 0)
                r = testpmd_cpus_avoid_worker();
        int fds_with_testpmd = count_open_fds();
        if (r >= 0)
                r = start_vm();
        if (r >= 0)
                r = start_tb_vm();
        if (r >= 0)
                r = died_before_capture(0);
        for (unsigned n = 1; r >= 0 && n <= RESTARTS; n++)
                r = restart_once(n);
        if (r >= 0) {
                r = traffic(TRAFFIC_MS);
                drain();
        }
        if (r >= 0)
                r = logging_off_and_on();
        if (r >= 0)
                r = interrupted_migration();
        if (r >= 0)
                r = interrupted_incoming();
        struct vhm_guest_stats s = t.g ? guest_stats() : (struct vhm_guest_stats){ 0 };
        printf("%u restarts: %" PRIu64 " frames sent, %" PRIu64 " received, %" PRIu64 " lost, %" PRIu64
               " corrupted, %" PRIu64 " duplicated\n",
               RESTARTS, s.sent, s.received, s.lost, s.corrupted, s.duplicated);
        if (r >= 0 &&
            (s.received == 0 || s.lost || s.corrupted || s.duplicated || s.received + s.lost + s.corrupted != s.sent))
                r = fail("the guest's traffic was disturbed");
        (void) fds_before;
        (void) fds_with_testpmd;
        /* The refusals: this process's fds as they are without the store's. */
        if (r >= 0)
                r = refused("a corrupt state", spoil_body, count_open_fds() - (int) store_size());
        if (r >= 0)
                r = memory_only_vm();
        if (r >= 0)
                r = refused("a state of another version", spoil_version, count_open_fds() - (int) store_size());
        return r;
}

int main(void) {
        if (!backend_available(TESTPMD_BIN)) {
                printf("daemon-restart: %s is not installed: skipped\n", TESTPMD_BIN);
                return 77;
        }
        real_backend_init(&t.testpmd);
        int r = testpmd_cpus_init();
        if (r >= 0)
                r = setup();
        if (r >= 0)
                r = run();
        if (r < 0)
                dump_log();
        cleanup();
        printf("daemon-restart: %s\n", r >= 0 ? "PASS" : "FAIL");
        return r >= 0 ? 0 : 1;
}

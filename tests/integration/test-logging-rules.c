/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The order of the dirty-logging requests migrate/ sends, as the project's
 * test back-end records them.  Each test runs logging start / resize / stop
 * (and device start, stop, resume, hot-add, reconnect) through
 * migrate/logging.h and migrate/device.h, then reads the record file and
 * checks, per connection:
 *
 *   - SET_LOG_BASE exactly once per log (the expected logs, by size, in order);
 *     each log sealed against growing and shrinking;
 *   - no SET_VRING_ADDR with the LOG flag (flags bit 0) before SET_LOG_BASE;
 *   - every SET_VRING_ADDR with the LOG flag comes after a SET_FEATURES with
 *     LOG_ALL (bit 26), and its log_guest_addr is the ring's used ring;
 *   - LOG_ALL is dropped only once no ring has the LOG flag any more (the
 *     rings' flags are cleared first; a ring stopped with GET_VRING_BASE logs
 *     nothing);
 *   - the back-end recorded no VIOLATION.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "migrate/blockers.h"
#include "migrate/device.h"
#include "migrate/logging.h"
#include "migrate/vm.h"
#include "proto/vhost-user.h"
#include "tests/backend/test-backend.h"
#include "tests/common/check.h"
#include "tests/common/fd-count.h"
#include "tests/common/guest-device.h"
#include "daemon/guest/guest.h"

#define PAGE            4096u
#define MAX_DEVICES     2
#define MAX_CONNECTIONS 4
#define MAX_LOGS        16
#define MAX_RINGS       VHM_DEVICE_MAX_QUEUES

/* The guest's default 64 MiB: 16384 pages, 256 log words. */
#define GUEST_LOG_BYTES ((VHM_GUEST_DEFAULT_MEM / PAGE + 63) / 64 * 8)
/* Memory hot-added at 4 GiB. */
#define HOTPLUG_GPA       (UINT64_C(4) << 30)
#define HOTPLUG_SIZE      (UINT64_C(2) << 20)
#define HOTPLUG_LOG_BYTES (((HOTPLUG_GPA + HOTPLUG_SIZE) / PAGE + 63) / 64 * 8)

#define LOG_ALL_BIT VHU_BIT(VHU_VF_LOG_ALL)
#define VRING_F_LOG 0x1u
/* F_SEAL_SHRINK | F_SEAL_GROW */
#define SEALS_SIZE (0x2u | 0x4u)

/* ---- reading the record --------------------------------------------------------- */

struct conn_record {
        unsigned log_bases;
        uint64_t log_size[MAX_LOGS];
        unsigned unsealed_logs;
        unsigned set_features, log_all_on, log_all_off; /* LOG_ALL switched on / off */
        unsigned vring_addr, vring_addr_logged;
        unsigned get_vring_base;
        /* State while reading. */
        bool has_log;
        uint64_t features;
        bool ring_logged[MAX_RINGS];
};

struct record {
        unsigned connections;
        struct conn_record conn[MAX_CONNECTIONS];
        unsigned violations;
        unsigned faults;
        unsigned broken; /* rule breaks found by the reader */
};

static bool field_u64(const char *line, const char *key, uint64_t *out) {
        char pat[32];
        snprintf(pat, sizeof(pat), " %s=", key);
        const char *p = strstr(line, pat);
        if (!p)
                return false;
        char *end;
        errno = 0;
        *out = strtoull(p + strlen(pat), &end, 0);
        return errno == 0 && end != p + strlen(pat);
}

__attribute__((format(printf, 3, 4))) static void rule_broken(struct record *rec, unsigned line_no, const char *fmt,
                                                              ...) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "  record line %u: ", line_no);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
        rec->broken++;
}

static bool is_request(const char *line, const char *name) {
        size_t n = strlen(name);
        return strncmp(line, name, n) == 0 && line[n] == ' ';
}

/*
 * Reads a record and checks the rules.  used_gpa[d][q]: the used ring of
 * queue q of the device served by this record (d unused but for clarity: one
 * record per back-end, one device per back-end).
 */
static void read_record(const char *path, const uint64_t *used_gpa, unsigned nrings, struct record *rec) {
        memset(rec, 0, sizeof(*rec));
        char *text = tb_record_read(path);
        assert_non_null(text);
        struct conn_record *c = NULL;
        unsigned line_no = 0;
        for (char *line = text; line && *line;) {
                char *nl = strchr(line, '\n');
                if (nl)
                        *nl = '\0';
                line_no++;
                uint64_t v, idx, flags;

                if (strncmp(line, "CONNECTION ", 11) == 0 && strstr(line, " OPEN")) {
                        assert_true(rec->connections < MAX_CONNECTIONS);
                        c = &rec->conn[rec->connections++];
                } else if (strncmp(line, "VIOLATION", 9) == 0) {
                        fprintf(stderr, "  back-end: %s\n", line);
                        rec->violations++;
                } else if (strncmp(line, "FAULT ", 6) == 0) {
                        rec->faults++;
                } else if (!c) {
                        /* Nothing before the first connection. */
                } else if (is_request(line, "SET_LOG_BASE")) {
                        assert_true(field_u64(line, "mmap_size", &v));
                        if (c->log_bases < MAX_LOGS)
                                c->log_size[c->log_bases] = v;
                        c->log_bases++;
                        uint64_t seals = 0;
                        if (!field_u64(line, "seals", &seals) || (seals & SEALS_SIZE) != SEALS_SIZE)
                                c->unsealed_logs++;
                        c->has_log = true;
                } else if (is_request(line, "SET_FEATURES")) {
                        assert_true(field_u64(line, "features", &v));
                        c->set_features++;
                        bool was = c->features & LOG_ALL_BIT, now = v & LOG_ALL_BIT;
                        if (was && !now) {
                                c->log_all_off++;
                                for (unsigned q = 0; q < MAX_RINGS; q++)
                                        if (c->ring_logged[q])
                                                rule_broken(rec, line_no,
                                                            "LOG_ALL dropped while ring %u still has the LOG flag", q);
                        }
                        if (!was && now)
                                c->log_all_on++;
                        c->features = v;
                } else if (is_request(line, "SET_VRING_ADDR")) {
                        assert_true(field_u64(line, "index", &idx));
                        assert_true(field_u64(line, "vring_flags", &flags));
                        assert_true(idx < MAX_RINGS);
                        c->vring_addr++;
                        if (flags & VRING_F_LOG) {
                                c->vring_addr_logged++;
                                if (!c->has_log)
                                        rule_broken(rec, line_no, "ring %" PRIu64 " logs before any SET_LOG_BASE", idx);
                                if (!(c->features & LOG_ALL_BIT))
                                        rule_broken(rec, line_no, "ring %" PRIu64 " logs while LOG_ALL is off", idx);
                                assert_true(field_u64(line, "log", &v));
                                if (idx >= nrings || v != used_gpa[idx])
                                        rule_broken(rec, line_no,
                                                    "ring %" PRIu64 " logs at 0x%" PRIx64 ", not at its used ring", idx,
                                                    v);
                        }
                        c->ring_logged[idx] = flags & VRING_F_LOG;
                } else if (is_request(line, "GET_VRING_BASE")) {
                        assert_true(field_u64(line, "index", &idx));
                        assert_true(idx < MAX_RINGS);
                        c->get_vring_base++;
                        c->ring_logged[idx] = false; /* a stopped ring logs nothing */
                }
                line = nl ? nl + 1 : NULL;
        }
        free(text);
}

static void dump_record(const char *path) {
        char *text = tb_record_read(path);
        fprintf(stderr, "---- %s ----\n%s----\n", path, text ? text : "(none)\n");
        free(text);
}

/* The logs a connection was given, by size, in order; and the general rules. */
static void assert_logs(const char *path, const struct record *rec, unsigned conn, const uint64_t *sizes, unsigned n) {
        const struct conn_record *c = &rec->conn[conn];
        bool ok = c->log_bases == n && c->unsealed_logs == 0;
        for (unsigned i = 0; ok && i < n; i++)
                ok = c->log_size[i] == sizes[i];
        if (!ok) {
                fprintf(stderr, "connection %u: %u SET_LOG_BASE (%u unsealed), expected %u:", conn + 1, c->log_bases,
                        c->unsealed_logs, n);
                for (unsigned i = 0; i < c->log_bases && i < MAX_LOGS; i++)
                        fprintf(stderr, " 0x%" PRIx64, c->log_size[i]);
                fputc('\n', stderr);
                dump_record(path);
        }
        assert_int_equal(c->log_bases, n);
        for (unsigned i = 0; i < n; i++)
                assert_int_equal(c->log_size[i], sizes[i]);
        assert_int_equal(c->unsealed_logs, 0);
}

static void assert_rules(const char *path, const struct record *rec) {
        if (rec->broken || rec->violations)
                dump_record(path);
        assert_int_equal(rec->broken, 0);
        assert_int_equal(rec->violations, 0);
}

/* ---- a VM with devices on test back-ends ------------------------------------------ */

struct backend {
        char sock[96];
        char rec[96];
        pid_t pid;
};

struct fixture {
        char dir[64];
        struct backend be[MAX_DEVICES];
        unsigned nbe;
        struct vhm_guest *g;
        struct vhm_vm *vm;
        struct vhm_device *dev[MAX_DEVICES];
        struct vhm_logging *lg;
        int hotplug_fd;
        int fds_before;
};

static int fixture_setup(void **state) {
        struct fixture *f = calloc(1, sizeof(*f));
        if (!f)
                return -1;
        f->hotplug_fd = -1;
        f->fds_before = count_open_fds();
        strcpy(f->dir, "/tmp/vhostmig-logrules-XXXXXX");
        if (!mkdtemp(f->dir)) {
                free(f);
                return -1;
        }
        *state = f;
        return 0;
}

/* Frees what the test did not: the normal end of every test, and a failed test's leftovers. */
static void fixture_release(struct fixture *f) {
        vhm_logging_free(f->lg);
        f->lg = NULL;
        for (unsigned i = 0; i < MAX_DEVICES; i++) {
                vhm_device_free(f->dev[i]);
                f->dev[i] = NULL;
        }
        vhm_vm_free(f->vm);
        f->vm = NULL;
        vhm_guest_free(f->g);
        f->g = NULL;
        if (f->hotplug_fd >= 0)
                close(f->hotplug_fd);
        f->hotplug_fd = -1;
}

static int fixture_teardown(void **state) {
        struct fixture *f = *state;
        fixture_release(f);
        for (unsigned i = 0; i < f->nbe; i++) {
                if (f->be[i].pid > 0)
                        (void) tb_stop(f->be[i].pid);
                unlink(f->be[i].sock);
                unlink(f->be[i].rec);
        }
        rmdir(f->dir);
        free(f);
        return 0;
}

static struct backend *spawn_backend(struct fixture *f, struct tb_config *cfg) {
        assert_true(f->nbe < MAX_DEVICES);
        struct backend *be = &f->be[f->nbe];
        char dir[sizeof(f->dir)];
        memcpy(dir, f->dir, sizeof(dir));
        snprintf(be->sock, sizeof(be->sock), "%s/be%u.sock", dir, f->nbe);
        snprintf(be->rec, sizeof(be->rec), "%s/be%u.record", dir, f->nbe);
        f->nbe++;
        cfg->record_path = be->rec;
        assert_int_equal(tb_spawn_listen(cfg, be->sock, &be->pid), 0);
        return be;
}

/* A test back-end with the default configuration. */
static struct backend *spawn_default_backend(struct fixture *f) {
        struct tb_config cfg;
        tb_config_init(&cfg);
        return spawn_backend(f, &cfg);
}

/* The guest's memory at gpa 0 in a fresh VM, and logging for it. */
static void vm_new(struct fixture *f) {
        GD_CHECK(guest_vm_new("logrules", NULL, &f->g, &f->vm));
        assert_int_equal(vhm_logging_new(f->vm, &f->lg), 0);
}

static void hotplug(struct fixture *f) {
        /* Sealed against shrinking, as the VM requires of a memfd. */
        f->hotplug_fd = memfd_create("hotplug", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        assert_true(f->hotplug_fd >= 0);
        assert_int_equal(ftruncate(f->hotplug_fd, (off_t) HOTPLUG_SIZE), 0);
        assert_int_equal(fcntl(f->hotplug_fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
        struct vhm_region_spec region = { .fd = f->hotplug_fd, .guest_phys_addr = HOTPLUG_GPA, .size = HOTPLUG_SIZE };
        if (vhm_vm_add_region(f->vm, &region) < 0)
                fail_msg("vhm_vm_add_region: %s", vhm_vm_error(f->vm));
}

/* A one-queue-pair net device on the back-end, its rings the guest's; used_gpa[] receives the used rings. */
static struct vhm_device *device_on_guest(struct fixture *f, unsigned slot, const struct backend *be,
                                          uint64_t used_gpa[2]) {
        struct vhm_device_config cfg = {
                .socket = be->sock,
                .features = vhm_guest_driver_features(),
                .queue_pairs = 1,
                .timeout_ms = 5000,
        };
        GD_CHECK(guest_device_new(f->vm, f->g, &cfg, &f->dev[slot], used_gpa));
        return f->dev[slot];
}

/* The same, connected, its rings started, and part of the VM's logging. */
static struct vhm_device *running_device(struct fixture *f, unsigned slot, const struct backend *be,
                                         uint64_t used_gpa[2]) {
        struct vhm_device *dev = device_on_guest(f, slot, be, used_gpa);
        DEV_CHECK(dev, vhm_device_connect(dev));
        DEV_CHECK(dev, vhm_device_start(dev));
        LOG_CHECK(f->lg, vhm_logging_add_device(f->lg, dev));
        return dev;
}

/*
 * Once the front-end closed (fixture_release): the back-end served its
 * connections and exited cleanly; its record, read, breaks no rule.
 */
static void read_final_record(struct backend *be, const uint64_t used_gpa[2], struct record *rec) {
        assert_tb_exits_cleanly(&be->pid, 5000);
        read_record(be->rec, used_gpa, 2, rec);
        assert_rules(be->rec, rec);
}

/* ---- 1: a running device: start, resize, stop, start again, stop ------------------ */

static void running_device_start_resize_stop(void **state) {
        struct fixture *f = *state;
        struct backend *be = spawn_default_backend(f);
        vm_new(f);
        uint64_t used[2];
        struct vhm_device *dev = running_device(f, 0, be, used);

        LOG_CHECK(f->lg, vhm_logging_start(f->lg));
        assert_int_equal(vhm_logging_log_size(f->lg), GUEST_LOG_BYTES);
        hotplug(f);
        LOG_CHECK(f->lg, vhm_logging_resize(f->lg));
        assert_int_equal(vhm_logging_log_size(f->lg), HOTPLUG_LOG_BYTES);
        /* Nothing changed: no new log. */
        LOG_CHECK(f->lg, vhm_logging_resize(f->lg));
        LOG_CHECK(f->lg, vhm_logging_stop(f->lg));
        LOG_CHECK(f->lg, vhm_logging_start(f->lg));
        assert_int_equal(vhm_logging_log_size(f->lg), HOTPLUG_LOG_BYTES);
        LOG_CHECK(f->lg, vhm_logging_stop(f->lg));
        assert_int_equal(vhm_device_state(dev), VHM_DEVICE_RUNNING);
        fixture_release(f);

        struct record rec;
        read_final_record(be, used, &rec);
        assert_int_equal(rec.connections, 1);
        const uint64_t logs[] = { GUEST_LOG_BYTES, HOTPLUG_LOG_BYTES, HOTPLUG_LOG_BYTES };
        assert_logs(be->rec, &rec, 0, logs, 3);
        const struct conn_record *c = &rec.conn[0];
        /* Device start, then per logging start and stop: LOG_ALL on, LOG_ALL off. */
        assert_int_equal(c->set_features, 1 + 4);
        assert_int_equal(c->log_all_on, 2);
        assert_int_equal(c->log_all_off, 2);
        /* Two rings: at device start, then at each switch on and off. */
        assert_int_equal(c->vring_addr, 2 + 4 * 2);
        assert_int_equal(c->vring_addr_logged, 2 * 2);
        printf("  running device: %u SET_LOG_BASE, %u SET_FEATURES, %u SET_VRING_ADDR (%u logged)\n", c->log_bases,
               c->set_features, c->vring_addr, c->vring_addr_logged);
        assert_int_equal(count_open_fds(), f->fds_before);
}

/* ---- 2: logging starts before the device does; it stops and resumes -------------- */

static void device_started_stopped_resumed_while_logging(void **state) {
        struct fixture *f = *state;
        struct backend *be = spawn_default_backend(f);
        vm_new(f);
        uint64_t used[2];
        struct vhm_device *dev = device_on_guest(f, 0, be, used);
        DEV_CHECK(dev, vhm_device_connect(dev));
        LOG_CHECK(f->lg, vhm_logging_add_device(f->lg, dev));

        /* Connected, rings not started: the log goes at once, LOG_ALL and the rings' flag with the start. */
        LOG_CHECK(f->lg, vhm_logging_start(f->lg));
        assert_true(vhm_device_logging(dev));
        DEV_CHECK(dev, vhm_device_start(dev));
        assert_true(vhm_device_acked_features(dev) & LOG_ALL_BIT);
        DEV_CHECK(dev, vhm_device_stop(dev));
        DEV_CHECK(dev, vhm_device_resume(dev));
        LOG_CHECK(f->lg, vhm_logging_stop(f->lg));
        assert_false(vhm_device_acked_features(dev) & LOG_ALL_BIT);
        /* Stopped while not logging, resumed: nothing logs. */
        DEV_CHECK(dev, vhm_device_stop(dev));
        DEV_CHECK(dev, vhm_device_resume(dev));
        fixture_release(f);

        struct record rec;
        read_final_record(be, used, &rec);
        assert_int_equal(rec.connections, 1);
        const uint64_t logs[] = { GUEST_LOG_BYTES };
        assert_logs(be->rec, &rec, 0, logs, 1);
        const struct conn_record *c = &rec.conn[0];
        /* start (LOG_ALL), resume (LOG_ALL), logging stop (off), resume (off). */
        assert_int_equal(c->set_features, 4);
        assert_int_equal(c->log_all_on, 1);
        assert_int_equal(c->log_all_off, 1);
        /* start, resume: logged; logging stop, last resume: not. */
        assert_int_equal(c->vring_addr, 4 * 2);
        assert_int_equal(c->vring_addr_logged, 2 * 2);
        printf("  device started while logging: %u SET_LOG_BASE, %u SET_FEATURES, %u SET_VRING_ADDR (%u logged)\n",
               c->log_bases, c->set_features, c->vring_addr, c->vring_addr_logged);
        assert_int_equal(count_open_fds(), f->fds_before);
}

/* ---- 3: a device joins while logging, its rings past the log ---------------------- */

/* Rings of a device living in the hot-added memory: queue q at 4 GiB + q * 16 KiB. */
static uint64_t hot_ring(unsigned q, unsigned part) {
        return HOTPLUG_GPA + (uint64_t) q * 4 * PAGE + (uint64_t) part * PAGE;
}

static void device_added_while_logging(void **state) {
        struct fixture *f = *state;
        struct backend *be0 = spawn_default_backend(f);
        struct backend *be1 = spawn_default_backend(f);
        vm_new(f);
        uint64_t used0[2], used1[2];
        running_device(f, 0, be0, used0);
        LOG_CHECK(f->lg, vhm_logging_start(f->lg));
        assert_int_equal(vhm_logging_log_size(f->lg), GUEST_LOG_BYTES);

        /* Memory arrives at 4 GiB with a running NIC whose rings live there; then the NIC joins the VM's logging. */
        hotplug(f);
        struct vhm_device_config dc = {
                .socket = be1->sock,
                .features = vhm_guest_driver_features(),
                .queue_pairs = 1,
                .timeout_ms = 5000,
        };
        assert_int_equal(vhm_device_new(f->vm, &dc, &f->dev[1]), 0);
        struct vhm_device *dev1 = f->dev[1];
        for (unsigned q = 0; q < 2; q++) {
                int kick = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), call = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
                assert_true(kick >= 0 && call >= 0);
                struct vhm_queue_spec spec = {
                        .size = 256,
                        .desc_gpa = hot_ring(q, 0),
                        .avail_gpa = hot_ring(q, 1),
                        .used_gpa = hot_ring(q, 2),
                        .kick_fd = kick,
                        .call_fd = call,
                };
                DEV_CHECK(dev1, vhm_device_set_queue(dev1, q, &spec));
                close(kick);
                close(call);
                used1[q] = spec.used_gpa;
        }
        DEV_CHECK(dev1, vhm_device_connect(dev1));
        DEV_CHECK(dev1, vhm_device_start(dev1));
        LOG_CHECK(f->lg, vhm_logging_add_device(f->lg, dev1));
        /* The log grew to cover the new rings. */
        assert_int_equal(vhm_logging_log_size(f->lg), HOTPLUG_LOG_BYTES);
        assert_true(vhm_device_logging(dev1));
        LOG_CHECK(f->lg, vhm_logging_stop(f->lg));
        fixture_release(f);

        struct record rec0, rec1;
        read_final_record(be0, used0, &rec0);
        read_final_record(be1, used1, &rec1);
        const struct conn_record *c1 = &rec1.conn[0];
        printf("  device added while logging: first device %u SET_LOG_BASE, new device %u SET_LOG_BASE\n",
               rec0.conn[0].log_bases, c1->log_bases);
        const uint64_t logs0[] = { GUEST_LOG_BYTES, HOTPLUG_LOG_BYTES };
        assert_logs(be0->rec, &rec0, 0, logs0, 2);
        /* The new device gets the grown log exactly once. */
        const uint64_t logs1[] = { HOTPLUG_LOG_BYTES };
        assert_logs(be1->rec, &rec1, 0, logs1, 1);
        assert_int_equal(c1->log_all_on, 1);
        assert_int_equal(c1->log_all_off, 1);
        assert_int_equal(c1->vring_addr_logged, 2);
        assert_int_equal(count_open_fds(), f->fds_before);
}

/* ---- 4: the back-end goes away during a resize and comes back -------------------- */

static void backend_lost_during_resize(void **state) {
        struct fixture *f = *state;
        struct tb_config cfg;
        tb_config_init(&cfg);
        cfg.max_connections = 2;
        /* The second SET_LOG_BASE (the resize's) closes the connection instead of answering. */
        struct tb_fault fault = { .request = VHU_REQ_SET_LOG_BASE, .kind = TB_FAULT_CLOSE, .nth = 2 };
        assert_int_equal(tb_config_add_fault(&cfg, &fault), 0);
        struct backend *be = spawn_backend(f, &cfg);
        vm_new(f);
        uint64_t used[2];
        struct vhm_device *dev = running_device(f, 0, be, used);
        LOG_CHECK(f->lg, vhm_logging_start(f->lg));

        hotplug(f);
        assert_int_equal(vhm_logging_resize(f->lg), -EIO);
        printf("  resize with the back-end gone: %s\n", vhm_logging_error(f->lg));
        assert_int_equal(vhm_device_state(dev), VHM_DEVICE_DISCONNECTED);
        /* The VM's log is the grown one regardless; the device takes it when it is back. */
        assert_int_equal(vhm_logging_log_size(f->lg), HOTPLUG_LOG_BYTES);
        uint64_t n = 1;
        LOG_CHECK(f->lg, vhm_logging_harvest(f->lg, &n));
        assert_int_equal(n, 0);

        int r = -EAGAIN;
        for (unsigned tries = 0; tries < 50 && r == -EAGAIN; tries++) {
                r = vhm_device_reconnect(dev, 1000);
                if (r == -EAGAIN)
                        usleep(vhm_device_reconnect_delay_ms(dev) * 1000u);
        }
        DEV_CHECK(dev, r);
        assert_int_equal(vhm_device_state(dev), VHM_DEVICE_RUNNING);
        assert_true(vhm_device_logging(dev));
        assert_true(vhm_device_acked_features(dev) & LOG_ALL_BIT);
        LOG_CHECK(f->lg, vhm_logging_harvest(f->lg, &n));
        LOG_CHECK(f->lg, vhm_logging_stop(f->lg));
        fixture_release(f);

        struct record rec;
        read_final_record(be, used, &rec);
        assert_int_equal(rec.connections, 2);
        assert_int_equal(rec.faults, 1);
        /* First connection: the first log, then the grown one (refused by closing). */
        const uint64_t logs0[] = { GUEST_LOG_BYTES, HOTPLUG_LOG_BYTES };
        assert_logs(be->rec, &rec, 0, logs0, 2);
        /* Second connection: the grown log, once, before any ring logs. */
        const uint64_t logs1[] = { HOTPLUG_LOG_BYTES };
        assert_logs(be->rec, &rec, 1, logs1, 1);
        const struct conn_record *c = &rec.conn[1];
        assert_int_equal(c->log_all_on, 1);
        assert_int_equal(c->log_all_off, 1);
        assert_int_equal(c->vring_addr_logged, 2);
        printf("  reconnected while logging: %u SET_LOG_BASE on the new connection, %u rings logged\n", c->log_bases,
               c->vring_addr_logged);
        assert_int_equal(count_open_fds(), f->fds_before);
}

/* ---- 5: blockers ------------------------------------------------------------------ */

static void blocked_device_gets_no_log(void **state) {
        struct fixture *f = *state;
        struct tb_config cfg;
        tb_config_init(&cfg);
        cfg.no_log_shmfd = true;
        struct backend *be = spawn_backend(f, &cfg);
        vm_new(f);
        uint64_t used[2];
        running_device(f, 0, be, used);
        struct vhm_blockers bl;
        vhm_logging_blockers(f->lg, &bl);
        assert_int_equal(bl.n, 1);
        assert_non_null(strstr(bl.reason[0], "LOG_SHMFD"));
        assert_int_equal(vhm_logging_start(f->lg), -EPERM);
        assert_non_null(strstr(vhm_logging_error(f->lg), be->sock));
        fixture_release(f);

        struct record rec;
        read_final_record(be, used, &rec);
        const uint64_t none[1] = { 0 };
        assert_logs(be->rec, &rec, 0, none, 0);
        assert_int_equal(rec.conn[0].log_all_on, 0);
        assert_int_equal(rec.conn[0].vring_addr_logged, 0);
        assert_int_equal(count_open_fds(), f->fds_before);
}

/* ---- 6: memory hot-added while logging: the grown log before the new table ------- */

static void hotplug_while_logging_grows_log_before_memory_table(void **state) {
        struct fixture *f = *state;
        struct backend *be = spawn_default_backend(f);
        vm_new(f);
        uint64_t used[2];
        running_device(f, 0, be, used);
        LOG_CHECK(f->lg, vhm_logging_start(f->lg));
        /* Nothing changed yet: no table is sent again. */
        LOG_CHECK(f->lg, vhm_logging_memory_changed(f->lg));
        hotplug(f);
        LOG_CHECK(f->lg, vhm_logging_memory_changed(f->lg));
        assert_int_equal(vhm_logging_log_size(f->lg), HOTPLUG_LOG_BYTES);
        LOG_CHECK(f->lg, vhm_logging_stop(f->lg));
        fixture_release(f);

        struct record rec;
        read_final_record(be, used, &rec); /* the back-end checks every region is covered by its log */
        const uint64_t logs[] = { GUEST_LOG_BYTES, HOTPLUG_LOG_BYTES };
        assert_logs(be->rec, &rec, 0, logs, 2);
        /* The second table, with both regions, came after the grown log. */
        char *text = tb_record_read(be->rec);
        assert_non_null(text);
        const char *grown = strstr(text, "SET_LOG_BASE flags=0x1 size=16 fds=1 mmap_size=0x");
        assert_non_null(grown);
        grown = strstr(grown + 1, "SET_LOG_BASE");
        assert_non_null(grown);
        const char *table2 = strstr(grown, "SET_MEM_TABLE");
        assert_non_null(table2);
        assert_non_null(strstr(table2, "nregions=2"));
        assert_int_equal(tb_record_count(be->rec, "SET_MEM_TABLE"), 2);
        free(text);
        assert_int_equal(count_open_fds(), f->fds_before);
}

/* ---- 7: more refused resizes than retired-log slots --------------------------------- */

/* 1 MiB of sealed memory hot-added at gpa. */
static void add_memory_at(struct fixture *f, uint64_t gpa) {
        int fd = memfd_create("more", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, 1 << 20), 0);
        assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
        struct vhm_region_spec region = { .fd = fd, .guest_phys_addr = gpa, .size = 1 << 20 };
        if (vhm_vm_add_region(f->vm, &region) < 0)
                fail_msg("vhm_vm_add_region: %s", vhm_vm_error(f->vm));
        close(fd);
}

static void reconnect_device(struct vhm_device *dev) {
        int r = -EAGAIN;
        for (unsigned tries = 0; tries < 50 && r == -EAGAIN; tries++) {
                r = vhm_device_reconnect(dev, 1000);
                if (r == -EAGAIN)
                        usleep(vhm_device_reconnect_delay_ms(dev) * 1000u);
        }
        DEV_CHECK(dev, r);
        assert_int_equal(vhm_device_state(dev), VHM_DEVICE_RUNNING);
}

/*
 * Five resizes in a row fail on a device (its back-end goes away instead of
 * taking the grown log, and comes back on the current one in between).
 * The fifth time no retired-log slot is left, and the log freed may be one
 * a back-end still writes (a page written there would be lost).  Nothing is
 * lost silently: the VM's log is incomplete and every harvest marks every
 * page, until the device has acknowledged the current log.
 */
static void retired_log_overflow_marks_everything(void **state) {
        struct fixture *f = *state;
        struct tb_config cfg;
        tb_config_init(&cfg);
        enum {
                REFUSALS = 5
        };
        /* SET_LOG_BASE: 1 at the start, then per round the resize's (closed) and the reconnect's. */
        for (unsigned i = 0; i < REFUSALS; i++) {
                struct tb_fault fault = { .request = VHU_REQ_SET_LOG_BASE, .kind = TB_FAULT_CLOSE, .nth = 2 + 2 * i };
                assert_int_equal(tb_config_add_fault(&cfg, &fault), 0);
        }
        cfg.max_connections = REFUSALS + 1;
        struct backend *be = spawn_backend(f, &cfg);
        vm_new(f);
        uint64_t used[2];
        struct vhm_device *dev = running_device(f, 0, be, used);
        LOG_CHECK(f->lg, vhm_logging_start(f->lg));

        for (unsigned i = 0; i < REFUSALS; i++) {
                add_memory_at(f, (uint64_t) (i + 1) << 32);
                assert_int_equal(vhm_logging_resize(f->lg), -EIO);
                assert_int_equal(vhm_device_state(dev), VHM_DEVICE_DISCONNECTED);
                /* Four retired logs are kept; only the fifth failure loses one. */
                assert_int_equal(vhm_logging_incomplete(f->lg), i + 1 == REFUSALS);
                if (i + 1 < REFUSALS)
                        reconnect_device(dev);
        }
        printf("  fifth failed resize: %s\n", vhm_logging_error(f->lg));
        assert_non_null(strstr(vhm_logging_error(f->lg), "incomplete"));

        struct vhm_bitmap *bm = vhm_logging_bitmap(f->lg);
        uint64_t npages = vhm_bitmap_npages(bm), n;
        for (int round = 0; round < 2; round++) {
                vhm_bitmap_clear_all(bm);
                LOG_CHECK(f->lg, vhm_logging_harvest(f->lg, &n));
                assert_int_equal(n, npages);
                assert_int_equal(vhm_bitmap_count(bm), npages);
                assert_true(vhm_logging_incomplete(f->lg)); /* the device has not taken the current log */
        }

        /* Back on the current log: the next harvest is the last to mark everything. */
        reconnect_device(dev);
        assert_true(vhm_device_log_acknowledged(dev, vhm_logging_log_fd(f->lg)));
        vhm_bitmap_clear_all(bm);
        LOG_CHECK(f->lg, vhm_logging_harvest(f->lg, &n));
        assert_int_equal(vhm_bitmap_count(bm), npages);
        assert_false(vhm_logging_incomplete(f->lg));
        vhm_bitmap_clear_all(bm);
        LOG_CHECK(f->lg, vhm_logging_harvest(f->lg, &n));
        assert_int_equal(n, 0);
        assert_int_equal(vhm_bitmap_count(bm), 0);
        LOG_CHECK(f->lg, vhm_logging_stop(f->lg));
        fixture_release(f);
        assert_tb_exits_cleanly(&be->pid, 5000);
        assert_int_equal(count_open_fds(), f->fds_before);
}

/* ---- 8: double-buffered harvests ---------------------------------------------------- */

/* The inode of the VM's current log: which of the two logs the devices have. */
static ino_t current_log(struct fixture *f) {
        struct stat st;
        assert_int_equal(fstat(vhm_logging_log_fd(f->lg), &st), 0);
        return st.st_ino;
}

/* A page marked in the current log the way a back-end does it, through a mapping of its own. */
static void backend_marks(struct fixture *f, uint64_t page) {
        size_t size = vhm_logging_log_size(f->lg);
        uint8_t *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, vhm_logging_log_fd(f->lg), 0);
        assert_true(m != MAP_FAILED);
        __atomic_fetch_or(&m[page / 8], (uint8_t) (1u << (page % 8)), __ATOMIC_RELEASE);
        munmap(m, size);
}

/* Harvests into a cleared bitmap: exactly `page` must come out (or nothing for UINT64_MAX). */
static void harvest_expect(struct fixture *f, uint64_t page) {
        struct vhm_bitmap *bm = vhm_logging_bitmap(f->lg);
        uint64_t n = 99;
        vhm_bitmap_clear_all(bm);
        LOG_CHECK(f->lg, vhm_logging_harvest(f->lg, &n));
        assert_int_equal(n, page == UINT64_MAX ? 0 : 1);
        assert_int_equal(vhm_bitmap_count(bm), n);
        if (n)
                assert_true(vhm_bitmap_test(bm, page));
}

/*
 * Undeclared, a harvest sends nothing.  Declared, each harvest hands the
 * device the other log (one SET_LOG_BASE, same size, the two logs in turn)
 * and what the back-end marked in the log it left is harvested; the log it
 * gets back is all clear.
 */
static void double_buffered_harvests_alternate_logs(void **state) {
        struct fixture *f = *state;
        struct backend *be = spawn_default_backend(f);
        vm_new(f);
        uint64_t used[2];
        struct vhm_device *dev = running_device(f, 0, be, used);
        LOG_CHECK(f->lg, vhm_logging_start(f->lg));
        ino_t first = current_log(f);

        backend_marks(f, 7);
        harvest_expect(f, 7);
        harvest_expect(f, UINT64_MAX);
        assert_int_equal(current_log(f), first);
        assert_int_equal(vhm_logging_switched_harvests(f->lg), 0);

        LOG_CHECK(f->lg, vhm_logging_set_log_switch_locked(f->lg, dev, true));
        ino_t second = 0;
        for (unsigned i = 0; i < 4; i++) {
                uint64_t page = 100 + i * 1000;
                backend_marks(f, page);
                harvest_expect(f, page);
                /* The device moved: A, B, A, B. */
                assert_true(vhm_device_log_acknowledged(dev, vhm_logging_log_fd(f->lg)));
                if (i == 0)
                        second = current_log(f);
                assert_int_equal(current_log(f), i % 2 ? first : second);
        }
        assert_true(second != first);
        /* The log handed out last came back clear: nothing is harvested twice. */
        harvest_expect(f, UINT64_MAX);
        assert_int_equal(vhm_logging_switched_harvests(f->lg), 5);

        LOG_CHECK(f->lg, vhm_logging_set_log_switch_locked(f->lg, dev, false));
        harvest_expect(f, UINT64_MAX);
        assert_int_equal(vhm_logging_switched_harvests(f->lg), 5);
        LOG_CHECK(f->lg, vhm_logging_stop(f->lg));
        fixture_release(f);

        struct record rec;
        read_final_record(be, used, &rec);
        assert_int_equal(rec.connections, 1);
        /* Logging start, then one per switched harvest. */
        const uint64_t logs[] = { GUEST_LOG_BYTES, GUEST_LOG_BYTES, GUEST_LOG_BYTES,
                                  GUEST_LOG_BYTES, GUEST_LOG_BYTES, GUEST_LOG_BYTES };
        assert_logs(be->rec, &rec, 0, logs, 6);
        printf("  double-buffered: %u SET_LOG_BASE for 5 switched harvests and 3 atomic ones\n", rec.conn[0].log_bases);
        assert_int_equal(count_open_fds(), f->fds_before);
}

/*
 * The back-end goes away instead of answering the switch: the log it had
 * may still hold pages (or, for a back-end not gone, still take them), so
 * it is taken atomically and kept; harvests stay atomic until the device is
 * back on the current log, then switch again.  No page is lost.
 */
static void double_buffered_switch_refused(void **state) {
        struct fixture *f = *state;
        struct tb_config cfg;
        tb_config_init(&cfg);
        cfg.max_connections = 2;
        /* SET_LOG_BASE 1: logging start; 2: the first switch, closed instead of answered. */
        struct tb_fault fault = { .request = VHU_REQ_SET_LOG_BASE, .kind = TB_FAULT_CLOSE, .nth = 2 };
        assert_int_equal(tb_config_add_fault(&cfg, &fault), 0);
        struct backend *be = spawn_backend(f, &cfg);
        vm_new(f);
        uint64_t used[2];
        struct vhm_device *dev = running_device(f, 0, be, used);
        LOG_CHECK(f->lg, vhm_logging_start(f->lg));
        LOG_CHECK(f->lg, vhm_logging_set_log_switch_locked(f->lg, dev, true));

        backend_marks(f, 42);
        harvest_expect(f, 42);
        assert_int_equal(vhm_device_state(dev), VHM_DEVICE_DISCONNECTED);
        assert_int_equal(vhm_logging_switched_harvests(f->lg), 0);
        /* Disconnected: not on the current log, so nothing switches. */
        backend_marks(f, 43);
        harvest_expect(f, 43);
        assert_int_equal(vhm_logging_switched_harvests(f->lg), 0);

        reconnect_device(dev);
        assert_true(vhm_device_log_acknowledged(dev, vhm_logging_log_fd(f->lg)));
        /* This harvest takes the retired log a last time and frees it; the next one switches. */
        backend_marks(f, 44);
        harvest_expect(f, 44);
        assert_int_equal(vhm_logging_switched_harvests(f->lg), 0);
        backend_marks(f, 45);
        harvest_expect(f, 45);
        assert_int_equal(vhm_logging_switched_harvests(f->lg), 1);
        LOG_CHECK(f->lg, vhm_logging_stop(f->lg));
        /* Only a device of the VM's logging can be declared. */
        vhm_logging_remove_device(f->lg, dev);
        assert_int_equal(vhm_logging_set_log_switch_locked(f->lg, dev, true), -ENOENT);
        assert_non_null(strstr(vhm_logging_error(f->lg), be->sock));
        fixture_release(f);

        struct record rec;
        read_final_record(be, used, &rec);
        assert_int_equal(rec.connections, 2);
        assert_int_equal(rec.faults, 1);
        const uint64_t logs0[] = { GUEST_LOG_BYTES, GUEST_LOG_BYTES };
        assert_logs(be->rec, &rec, 0, logs0, 2);
        /* The reconnect's log, then the switch. */
        const uint64_t logs1[] = { GUEST_LOG_BYTES, GUEST_LOG_BYTES };
        assert_logs(be->rec, &rec, 1, logs1, 2);
        assert_int_equal(count_open_fds(), f->fds_before);
}

/*
 * A resize between double-buffered harvests: the grown log goes to the
 * device, the spare of the old size is dropped, and the next switch hands
 * out a spare of the new size.  A page marked in the old log before the
 * resize and one marked high in the grown log are both harvested.
 */
static void double_buffered_across_resize(void **state) {
        struct fixture *f = *state;
        struct backend *be = spawn_default_backend(f);
        vm_new(f);
        uint64_t used[2];
        struct vhm_device *dev = running_device(f, 0, be, used);
        LOG_CHECK(f->lg, vhm_logging_start(f->lg));
        LOG_CHECK(f->lg, vhm_logging_set_log_switch_locked(f->lg, dev, true));
        harvest_expect(f, UINT64_MAX);
        assert_int_equal(vhm_logging_switched_harvests(f->lg), 1);

        backend_marks(f, 9);
        hotplug(f);
        LOG_CHECK(f->lg, vhm_logging_memory_changed(f->lg));
        assert_int_equal(vhm_logging_log_size(f->lg), HOTPLUG_LOG_BYTES);
        /* The resize harvested the old log into the bitmap already. */
        assert_true(vhm_bitmap_test(vhm_logging_bitmap(f->lg), 9));

        uint64_t high = HOTPLUG_GPA / PAGE + 3;
        backend_marks(f, high);
        harvest_expect(f, high);
        assert_int_equal(vhm_logging_switched_harvests(f->lg), 2);
        assert_int_equal(vhm_logging_log_size(f->lg), HOTPLUG_LOG_BYTES);
        harvest_expect(f, UINT64_MAX);
        LOG_CHECK(f->lg, vhm_logging_stop(f->lg));
        fixture_release(f);

        struct record rec;
        read_final_record(be, used, &rec); /* the back-end checks every region is covered by its log */
        const uint64_t logs[] = { GUEST_LOG_BYTES, GUEST_LOG_BYTES, HOTPLUG_LOG_BYTES, HOTPLUG_LOG_BYTES,
                                  HOTPLUG_LOG_BYTES };
        assert_logs(be->rec, &rec, 0, logs, 5);
        assert_int_equal(count_open_fds(), f->fds_before);
}

#define TEST(t) cmocka_unit_test_setup_teardown(t, fixture_setup, fixture_teardown)

int main(void) {
        const struct CMUnitTest tests[] = {
                TEST(running_device_start_resize_stop),
                TEST(device_started_stopped_resumed_while_logging),
                TEST(device_added_while_logging),
                TEST(backend_lost_during_resize),
                TEST(blocked_device_gets_no_log),
                TEST(hotplug_while_logging_grows_log_before_memory_table),
                TEST(retired_log_overflow_marks_everything),
                TEST(double_buffered_harvests_alternate_logs),
                TEST(double_buffered_switch_refused),
                TEST(double_buffered_across_resize),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

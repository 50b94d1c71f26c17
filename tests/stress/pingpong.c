/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Ping-pong: N live migrations of one VM between two vhostmigd (two private
 * buses playing two hosts), A -> B -> A ..., with verified traffic through
 * DPDK testpmd the whole time (one testpmd, a vhost port per host, each
 * echoing on itself).  The program is the guest (the synthetic guest
 * library) and the VMM on both hosts: it keeps the guest running on the
 * source while the pre-copy rounds run, pauses it at pre-switchover
 * (MigrateContinue), and resumes it on the memory that arrived at the
 * destination with the same sequence numbers.  A guest process of
 * vhostmig-guest migrates once; here the same guest goes on hop after hop.
 *
 *   stress-pingpong [-n MIGRATIONS] [--flat-from HOP] [--rss-slack KIB] [--traffic-ms MS]
 *
 * Every hop must: complete at both ends; give the source's whole memory
 * image the migration's checksum, and the same at the destination; leave the
 * driver's image equal at both ends; lose no more frames than were in flight
 * at the pause, corrupt and repeat none; bring exactly one RARP back when the
 * device negotiated it; carry traffic after the switchover.  From hop
 * --flat-from on, each daemon's open fds must equal and its VmRSS stay
 * within --rss-slack KiB of what it had after the previous round trip (the
 * same phase: holding the VM, or not).
 *
 * Environment (set by meson): VHOSTMIGD, START_BUS.  Needs root, dpdk-testpmd
 * (exit 77 when it is missing).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <systemd/sd-bus.h>

#include "daemon/guest/guest.h"
#include "proto/vhost-user.h"
#include "tests/common/clock.h"
#include "tests/common/fd-count.h"
#include "tests/common/real-backends.h"
#include "tests/stress/stress-host.h"

#define DEST       "org.vhostmig1"
#define ROOT_PATH  "/org/vhostmig1"
#define MANAGER_IF "org.vhostmig1.Manager"
#define VM_IF      "org.vhostmig1.Vm"
#define DEV_IF     "org.vhostmig1.Device"
#define PROPS_IF   "org.freedesktop.DBus.Properties"
#define VM_NAME    "pingpong"

#define MEM_SIZE          (UINT64_C(16) << 20)
#define RING_SIZE         256u
#define CALL_TIMEOUT_USEC (UINT64_C(30) * 1000000u)
#define MIGRATION_MS      30000u /* one hop's migration, with generous slack */
#define STALL_MS          10000
#define BUS_EVERY_NS      500000u    /* the bus is served this often from the traffic loop */
#define STATE_EVERY_NS    100000000u /* ... and the state read, in case a signal went missing */
#define PAUSE_BURST       32u
#define RARP_WAIT_MS      3000u
#define DRAIN_MS          1000u
#define SETTLE_MS         2000u /* a job's fds are closed on its worker, after the answer */
#define MAX_HOPS          10000u
#define DEFAULT_RSS_SLACK 4096l /* KiB: malloc arenas and the bus's buffers come and go */

/*
 * Built with AddressSanitizer (the daemon too: one build directory), freed
 * memory waits in ASan's quarantine (up to 256 MiB), so VmRSS grows without a
 * leak: it is printed, not checked; LeakSanitizer checks the daemons at exit
 * (a report fails their exit status).
 */
#if defined(__SANITIZE_ADDRESS__)
#define RSS_CHECKED false
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define RSS_CHECKED false
#endif
#endif
#ifndef RSS_CHECKED
#define RSS_CHECKED true
#endif

static struct {
        unsigned hops;
        unsigned flat_from;
        long rss_slack_kib;
        unsigned traffic_ms;
} arg = { .hops = 6, .flat_from = 0, .rss_slack_kib = DEFAULT_RSS_SLACK, .traffic_ms = 300 };

/* One end of a hop: a host, its testpmd port, and the VM there. */
struct end {
        struct stress_host *h;
        const char *socket;
        char *vm_path, *dev_path;
        /* incoming: the memory and eventfds before the guest arrives */
        int memfd;
        int kick[2], call[2];
};

/* The guest and what it has seen so far. */
struct guest {
        struct vhm_guest *g;
        uint64_t lost_before; /* lost + never back, at the end of the previous hop */
};

/* What the source's PropertiesChanged said. */
struct watch {
        char state[32];
        bool stale; /* a signal we could not read: read the property */
        bool call_done, call_failed;
        char call_error[256];
        struct end *src;
        uint64_t next_bus_ns, next_state_ns;
};

struct sample {
        long rss[2];
        int fds[2];
};

static struct stress_host host_a, host_b;
static struct real_backend testpmd;

/* ---- small helpers -------------------------------------------------------------------------------- */

__attribute__((format(printf, 1, 2))) static int fail(const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "stress-pingpong: ");
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
        return -EIO;
}

static int bus_fail(const char *what, const sd_bus_error *e, int r) {
        return fail("%s: %s", what, e && e->message ? e->message : strerror(-r));
}

static int get_string(struct stress_host *h, const char *path, const char *iface, const char *prop, char **out) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        int r = sd_bus_get_property_string(h->c, DEST, path, iface, prop, &e, out);
        if (r < 0)
                r = bus_fail(prop, &e, r);
        sd_bus_error_free(&e);
        return r;
}

static int get_u64(struct stress_host *h, const char *path, const char *iface, const char *prop, uint64_t *out) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        int r = sd_bus_get_property_trivial(h->c, DEST, path, iface, prop, &e, 't', out);
        if (r < 0)
                r = bus_fail(prop, &e, r);
        sd_bus_error_free(&e);
        return r;
}

static bool is_final(const char *s) {
        return strcmp(s, "completed") == 0 || strcmp(s, "failed") == 0 || strcmp(s, "cancelled") == 0 ||
               strcmp(s, "postmigrate-unknown") == 0;
}

static uint64_t accounted(const struct vhm_guest_stats *s) {
        return s->received + s->lost + s->corrupted;
}

static struct vhm_guest_stats guest_stats(const struct guest *gu) {
        struct vhm_guest_stats s = { 0 };
        (void) vhm_guest_get_stats(gu->g, VHM_GUEST_ALL_QPS, &s);
        return s;
}

static struct vhm_guest_config guest_config(void) {
        return (struct vhm_guest_config){ .mem_size = MEM_SIZE, .queue_pairs = 1, .ring_size = RING_SIZE };
}

static void end_init(struct end *e, struct stress_host *h, const char *socket) {
        memset(e, 0, sizeof(*e));
        e->h = h;
        e->socket = socket;
        e->memfd = e->kick[0] = e->kick[1] = e->call[0] = e->call[1] = -1;
}

static void end_close_fds(struct end *e) {
        int *fds[] = { &e->memfd, &e->kick[0], &e->kick[1], &e->call[0], &e->call[1] };
        for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
                if (*fds[i] >= 0)
                        close(*fds[i]);
                *fds[i] = -1;
        }
}

/* DestroyVm (when there is one) and everything the end held. */
static void end_release(struct end *e) {
        if (e->vm_path)
                (void) sd_bus_call_method(e->h->c, DEST, ROOT_PATH, MANAGER_IF, "DestroyVm", NULL, NULL, "s", VM_NAME);
        free(e->vm_path);
        free(e->dev_path);
        e->vm_path = e->dev_path = NULL;
        end_close_fds(e);
}

/* ---- the VM on a host ---------------------------------------------------------------------------- */

static int create_vm(struct end *e, int memfd) {
        sd_bus_error err = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        const char *path;
        int r = sd_bus_call_method(e->h->c, DEST, ROOT_PATH, MANAGER_IF, "CreateVm", &err, &reply, "sa(httt)a{sv}",
                                   VM_NAME, 1, memfd, UINT64_C(0), MEM_SIZE, UINT64_C(0), 0);
        if (r < 0)
                r = bus_fail("CreateVm", &err, r);
        else if ((r = sd_bus_message_read(reply, "o", &path)) < 0 || !(e->vm_path = strdup(path)))
                r = fail("CreateVm: a bad reply");
        sd_bus_error_free(&err);
        sd_bus_message_unref(reply);
        return r < 0 ? r : 0;
}

/* AddDevice on the host's testpmd port: the guest's queues (src) or the planned ones (incoming). */
static int add_device(struct end *e, struct vhm_guest *g) {
        struct vhm_guest_config cfg = guest_config();
        sd_bus_error err = SD_BUS_ERROR_NULL;
        sd_bus_message *m = NULL, *reply = NULL;
        const char *path;
        int r = sd_bus_message_new_method_call(e->h->c, &m, DEST, e->vm_path, VM_IF, "AddDevice");
        if (r >= 0)
                r = sd_bus_message_append(m, "s", e->socket);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "(uttthh)");
        for (unsigned q = 0; r >= 0 && q < 2; q++) {
                struct vhm_guest_queue_layout l;
                r = g ? vhm_guest_queue_layout(g, q, &l) : vhm_guest_plan_queue_layout(&cfg, q, &l);
                if (r >= 0 && !g) {
                        l.kick_fd = e->kick[q];
                        l.call_fd = e->call[q];
                }
                if (r >= 0)
                        r = sd_bus_message_append(m, "(uttthh)", (uint32_t) l.num, l.desc_gpa, l.avail_gpa, l.used_gpa,
                                                  l.kick_fd, l.call_fd);
        }
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r >= 0 && g) {
                uint8_t mac[6];
                char macs[18];
                vhm_guest_mac(g, mac);
                snprintf(macs, sizeof(macs), "%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3], mac[4],
                         mac[5]);
                r = sd_bus_message_append(m, "a{sv}", 3, "Features", "t", vhm_guest_driver_features(), "QueuePairs",
                                          "u", 1u, "Mac", "s", macs);
        } else if (r >= 0) {
                r = sd_bus_message_append(m, "a{sv}", 3, "Features", "t", vhm_guest_driver_features(), "QueuePairs",
                                          "u", 1u, "Incoming", "b", 1);
        }
        if (r >= 0 && (r = sd_bus_call(e->h->c, m, CALL_TIMEOUT_USEC, &err, &reply)) < 0)
                r = bus_fail("AddDevice", &err, r);
        else if (r >= 0 && ((r = sd_bus_message_read(reply, "o", &path)) < 0 || !(e->dev_path = strdup(path))))
                r = fail("AddDevice: a bad reply");
        sd_bus_error_free(&err);
        sd_bus_message_unref(m);
        sd_bus_message_unref(reply);
        return r < 0 ? r : 0;
}

/* The driver uses what the device negotiated; whether a RARP must come after a switchover. */
static int configure_driver(struct end *e, struct vhm_guest *g, bool *rarp_expected) {
        uint64_t features = 0, protocol = 0;
        int r;
        if (get_u64(e->h, e->dev_path, DEV_IF, "AckedFeatures", &features) < 0 ||
            get_u64(e->h, e->dev_path, DEV_IF, "AckedProtocolFeatures", &protocol) < 0)
                return -EIO;
        if ((r = vhm_guest_set_features(g, features)) < 0)
                return fail("the driver cannot use features 0x%" PRIx64 ": %s", features, strerror(-r));
        *rarp_expected = (protocol & VHU_BIT(VHU_PF_RARP)) && !(features & VHU_BIT(VHU_VF_NET_GUEST_ANNOUNCE));
        return 0;
}

/* The VMM's dirty bitmap, so that the pre-copy rounds see what the driver writes. */
static int add_bitmap(struct end *e, struct vhm_guest *g) {
        sd_bus_error err = SD_BUS_ERROR_NULL;
        int fd = vhm_guest_dirty_bitmap(g), r;
        if (fd < 0)
                return fail("the dirty bitmap: %s", strerror(-fd));
        r = sd_bus_call_method(e->h->c, DEST, e->vm_path, VM_IF, "AddDirtyBitmap", &err, NULL, "ha{sv}", fd, 0);
        if (r < 0)
                r = bus_fail("AddDirtyBitmap", &err, r);
        sd_bus_error_free(&err);
        return r < 0 ? r : 0;
}

/* Empty memory (sealed against shrinking, as CreateVm wants) and the eventfds, then the VM. */
static int incoming_vm(struct end *e, char address[128], char token[64]) {
        sd_bus_error err = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        const char *a, *t;
        int r;
        e->memfd = memfd_create("vhm-stress-incoming", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (e->memfd < 0 || ftruncate(e->memfd, (off_t) MEM_SIZE) < 0 ||
            fcntl(e->memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0)
                return fail("incoming memory: %s", strerror(errno));
        for (unsigned q = 0; q < 2; q++) {
                e->kick[q] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
                e->call[q] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
                if (e->kick[q] < 0 || e->call[q] < 0)
                        return fail("eventfd: %s", strerror(errno));
        }
        if ((r = create_vm(e, e->memfd)) < 0 || (r = add_device(e, NULL)) < 0)
                return r;
        r = sd_bus_call_method(e->h->c, DEST, e->vm_path, VM_IF, "PrepareIncoming", &err, &reply, "a{sv}", 0);
        if (r < 0)
                r = bus_fail("PrepareIncoming", &err, r);
        else if (sd_bus_message_read(reply, "ss", &a, &t) < 0)
                r = fail("PrepareIncoming: a bad reply");
        else {
                snprintf(address, 128, "%s", a);
                snprintf(token, 64, "%s", t);
        }
        sd_bus_error_free(&err);
        sd_bus_message_unref(reply);
        return r < 0 ? r : 0;
}

/* ---- traffic while the migration runs -------------------------------------------------------------- */

static int on_properties(sd_bus_message *m, void *userdata, sd_bus_error *ret) {
        struct watch *w = userdata;
        const char *iface, *name, *v;
        (void) ret;
        if (sd_bus_message_read(m, "s", &iface) < 0 || strcmp(iface, VM_IF) != 0)
                return 0;
        if (sd_bus_message_enter_container(m, 'a', "{sv}") < 0) {
                w->stale = true;
                return 0;
        }
        while (sd_bus_message_enter_container(m, 'e', "sv") > 0) {
                if (sd_bus_message_read(m, "s", &name) < 0) {
                        w->stale = true;
                        return 0;
                }
                if (strcmp(name, "MigrationState") == 0 && sd_bus_message_read(m, "v", "s", &v) >= 0)
                        snprintf(w->state, sizeof(w->state), "%s", v);
                else if (sd_bus_message_skip(m, "v") < 0)
                        w->stale = true;
                (void) sd_bus_message_exit_container(m);
        }
        return 0;
}

static int on_migrate_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret) {
        struct watch *w = userdata;
        const sd_bus_error *e = sd_bus_message_get_error(m);
        (void) ret;
        w->call_done = true;
        if (e) {
                w->call_failed = true;
                snprintf(w->call_error, sizeof(w->call_error), "%s", e->message ? e->message : e->name);
        }
        return 0;
}

#define STOP_FOR_MIGRATION (-EALREADY)

/* The traffic loop's step: the bus served, the guest stops at pre-switchover or a final state. */
static int traffic_step(void *opaque) {
        struct watch *w = opaque;
        uint64_t now = now_ns();
        int r;
        if (now < w->next_bus_ns)
                return 0;
        w->next_bus_ns = now + BUS_EVERY_NS;
        while ((r = sd_bus_process(w->src->h->c, NULL)) > 0)
                ;
        if (r < 0)
                return fail("the bus: %s", strerror(-r));
        if (w->stale || now >= w->next_state_ns) {
                char *s = NULL;
                if (get_string(w->src->h, w->src->vm_path, VM_IF, "MigrationState", &s) < 0)
                        return -EIO;
                snprintf(w->state, sizeof(w->state), "%s", s);
                free(s);
                w->stale = false;
                w->next_state_ns = now + STATE_EVERY_NS;
        }
        if (w->call_failed || strcmp(w->state, "pre-switchover") == 0 || is_final(w->state))
                return STOP_FOR_MIGRATION;
        return 0;
}

/* Receive (and reclaim) without transmitting until everything sent is accounted for. */
static void drain(struct guest *gu) {
        uint64_t end = now_ms() + DRAIN_MS;
        for (;;) {
                (void) vhm_guest_reclaim_tx(gu->g, 0);
                (void) vhm_guest_poll_rx(gu->g, 0, 0);
                struct vhm_guest_stats s = guest_stats(gu);
                if (accounted(&s) >= s.sent || now_ms() >= end)
                        return;
                usleep(200);
        }
}

/* Traffic for ms milliseconds (or until the step stops it). */
static int traffic(struct guest *gu, unsigned ms, const struct vhm_guest_run_opts *opts) {
        uint64_t end = now_ms() + ms;
        int r = 0;
        while (r >= 0 && now_ms() < end)
                r = vhm_guest_run_until(gu->g, VHM_GUEST_ALL_QPS, 512, STALL_MS, opts);
        return r;
}

/* The vCPU pauses mid-stream: a last burst goes out and nothing waits for it. */
static uint64_t pause_guest(struct guest *gu, struct vhm_guest_stats *at) {
        (void) vhm_guest_reclaim_tx(gu->g, 0);
        (void) vhm_guest_poll_rx(gu->g, 0, 0);
        (void) vhm_guest_post_rx(gu->g, 0);
        (void) vhm_guest_tx(gu->g, 0, PAUSE_BURST);
        *at = guest_stats(gu);
        return at->sent - accounted(at);
}

/* ---- one hop ---------------------------------------------------------------------------------------- */

struct hop {
        unsigned n;
        char from, to;
        uint64_t in_flight, lost, received_after, rarp_after, rounds, downtime_ms, checksum;
        bool rarp_expected;
};

static int wait_final(struct end *e, char **state) {
        uint64_t deadline = now_ms() + MIGRATION_MS;
        for (;;) {
                if (get_string(e->h, e->vm_path, VM_IF, "MigrationState", state) < 0)
                        return -EIO;
                if (is_final(*state))
                        return 0;
                free(*state);
                *state = NULL;
                if (now_ms() >= deadline)
                        return fail("%s: no final migration state within %u ms", e->h->name, MIGRATION_MS);
                sleep_ms(10);
        }
}

static int both_completed(struct end *src, struct end *dst) {
        char *ss = NULL, *ds = NULL, *se = NULL, *de = NULL;
        int r = wait_final(src, &ss);
        if (r >= 0)
                r = wait_final(dst, &ds);
        if (r >= 0 && (strcmp(ss, "completed") != 0 || strcmp(ds, "completed") != 0)) {
                (void) get_string(src->h, src->vm_path, VM_IF, "MigrationError", &se);
                (void) get_string(dst->h, dst->vm_path, VM_IF, "MigrationError", &de);
                r = fail("source %s (%s), destination %s (%s)", ss, se ? se : "", ds, de ? de : "");
        }
        free(ss);
        free(ds);
        free(se);
        free(de);
        return r;
}

/* MigrateTo live, the guest running until pre-switchover, the pause, MigrateContinue. */
static int run_pre_copy(struct end *src, struct guest *gu, const char *address, const char *token,
                        struct vhm_guest_stats *at) {
        struct watch w = { .src = src };
        sd_bus_slot *match = NULL, *call = NULL;
        sd_bus_message *m = NULL;
        int r = sd_bus_match_signal(src->h->c, &match, DEST, src->vm_path, PROPS_IF, "PropertiesChanged", on_properties,
                                    &w);
        if (r >= 0)
                r = sd_bus_message_new_method_call(src->h->c, &m, DEST, src->vm_path, VM_IF, "MigrateTo");
        if (r >= 0)
                r = sd_bus_message_append(m, "ssa{sv}", address, token, 1, "Live", "b", 1);
        if (r >= 0)
                r = sd_bus_call_async(src->h->c, &call, m, on_migrate_reply, &w, CALL_TIMEOUT_USEC);
        sd_bus_message_unref(m);
        if (r < 0) {
                sd_bus_slot_unref(match);
                return fail("MigrateTo: %s", strerror(-r));
        }
        struct vhm_guest_run_opts opts = {
                .flags = VHM_GUEST_RUN_WAIT_CALL | VHM_GUEST_RUN_WAKE_FD,
                .wake_fd = sd_bus_get_fd(src->h->c),
                /* With the pause's burst on top, RX buffers are left for the destination's RARP. */
                .window = RING_SIZE - RING_SIZE / 8 - PAUSE_BURST,
                .step = traffic_step,
                .opaque = &w,
        };
        r = traffic(gu, MIGRATION_MS, &opts);
        if (r == STOP_FOR_MIGRATION && strcmp(w.state, "pre-switchover") == 0) {
                sd_bus_error err = SD_BUS_ERROR_NULL;
                pause_guest(gu, at);
                r = sd_bus_call_method(src->h->c, DEST, src->vm_path, VM_IF, "MigrateContinue", &err, NULL, "a{sv}", 0);
                if (r < 0)
                        r = bus_fail("MigrateContinue", &err, r);
                sd_bus_error_free(&err);
        } else if (r == STOP_FOR_MIGRATION) {
                r = fail("the migration ended before pre-switchover: %s%s%s", w.call_failed ? "MigrateTo: " : "",
                         w.call_failed ? w.call_error : "", w.call_failed ? "" : w.state);
        } else {
                r = fail("traffic during the pre-copy: %s", r < 0 ? strerror(-r) : "no pre-switchover in time");
        }
        sd_bus_slot_unref(call);
        sd_bus_slot_unref(match);
        return r < 0 ? r : 0;
}

/* The source's image is final; both daemons must agree on it. */
static int check_checksums(struct end *src, struct end *dst, struct guest *gu, struct hop *hop, uint64_t *driver_sum) {
        uint64_t mine = 0, s = 0, d = 0;
        if (vhm_guest_checksum(gu->g, 0, &mine) < 0 ||
            vhm_guest_checksum(gu->g, VHM_GUEST_CHECKSUM_DRIVER, driver_sum) < 0)
                return fail("checksum of the guest's memory");
        if (get_u64(src->h, src->vm_path, VM_IF, "MigrationChecksum", &s) < 0 ||
            get_u64(dst->h, dst->vm_path, VM_IF, "MigrationChecksum", &d) < 0 ||
            get_u64(src->h, src->vm_path, VM_IF, "Round", &hop->rounds) < 0 ||
            get_u64(src->h, src->vm_path, VM_IF, "DowntimeMs", &hop->downtime_ms) < 0)
                return -EIO;
        hop->checksum = s;
        if (mine != s || s != d)
                return fail("checksums differ: the guest's memory 0x%016" PRIx64 ", the source's 0x%016" PRIx64
                            ", the destination's 0x%016" PRIx64,
                            mine, s, d);
        return 0;
}

/* The guest on the memory that arrived, with the eventfds the destination's device holds. */
static int resume_at(struct end *dst, struct guest *gu, uint64_t driver_sum, bool *rarp_expected) {
        struct vhm_guest *g2 = NULL;
        char why[256] = "";
        uint64_t sum = 0;
        int r = vhm_guest_attach_eventfds(dst->memfd, dst->kick, dst->call, 2, &g2, why, sizeof(why));
        if (r < 0)
                return fail("resuming the guest at the destination: %s", why);
        /* Before the driver runs again: the back-end may have written, the driver not. */
        if (vhm_guest_checksum(g2, VHM_GUEST_CHECKSUM_DRIVER, &sum) < 0 || sum != driver_sum) {
                vhm_guest_free(g2);
                return fail("the driver's image differs: 0x%016" PRIx64 " at the source, 0x%016" PRIx64
                            " at the destination",
                            driver_sum, sum);
        }
        vhm_guest_free(gu->g);
        gu->g = g2;
        /* The guest holds its own copies now. */
        end_close_fds(dst);
        return configure_driver(dst, gu->g, rarp_expected);
}

/* After the switchover: traffic, the RARP, and what was lost against what was in flight. */
static int check_after(struct guest *gu, const struct vhm_guest_stats *at, struct hop *hop) {
        /*
         * More than were in flight at the pause (at most the pre-copy's window
         * and the burst): when every one of them was lost, new frames still go
         * out and their echoes tell the loss; and RX buffers stay free for the
         * RARP.
         */
        struct vhm_guest_run_opts opts = { .flags = VHM_GUEST_RUN_WAIT_CALL, .window = RING_SIZE - 16 };
        uint64_t rarp_deadline = now_ms() + RARP_WAIT_MS;
        int r = traffic(gu, arg.traffic_ms, &opts);
        while (r >= 0 && hop->rarp_expected && guest_stats(gu).rarp_seen == at->rarp_seen && now_ms() < rarp_deadline)
                r = traffic(gu, 20, &opts);
        if (r < 0) {
                struct vhm_guest_stats now = guest_stats(gu);
                uint16_t avail[2] = { 0 }, used[2] = { 0 };
                for (unsigned q = 0; q < 2; q++)
                        (void) vhm_guest_queue_indices(gu->g, q, &avail[q], &used[q]);
                return fail("traffic after the switchover: %s: %" PRIu64 " sent since the pause, %" PRIu64
                            " received, %" PRIu64 " not back; RX avail %u used %u, TX avail %u used %u",
                            strerror(-r), now.sent - at->sent, now.received - at->received, now.sent - accounted(&now),
                            avail[0], used[0], avail[1], used[1]);
        }
        drain(gu);
        struct vhm_guest_stats s = guest_stats(gu);
        uint64_t lost_now = s.lost + (s.sent - accounted(&s));
        hop->lost = lost_now - gu->lost_before;
        gu->lost_before = lost_now;
        hop->received_after = s.received - at->received;
        hop->rarp_after = s.rarp_seen - at->rarp_seen;
        if (s.corrupted || s.duplicated || s.bad_used)
                return fail("%" PRIu64 " corrupted, %" PRIu64 " duplicated, %" PRIu64 " bad used entries", s.corrupted,
                            s.duplicated, s.bad_used);
        if (hop->lost > hop->in_flight)
                return fail("%" PRIu64 " frames lost, more than the %" PRIu64 " in flight at the pause", hop->lost,
                            hop->in_flight);
        if (hop->rarp_after != (hop->rarp_expected ? 1u : 0u))
                return fail("%" PRIu64 " RARP(s) came back after the switchover, %u expected", hop->rarp_after,
                            hop->rarp_expected ? 1u : 0u);
        if (hop->received_after == 0)
                return fail("no traffic after the switchover");
        return 0;
}

/* One live migration of the guest from src to dst; dst holds the VM afterwards. */
static int hop_run(struct end *src, struct end *dst, struct guest *gu, struct hop *hop) {
        char address[128], token[64];
        struct vhm_guest_stats at = { 0 };
        uint64_t driver_sum = 0;
        int r = incoming_vm(dst, address, token);
        if (r >= 0)
                r = run_pre_copy(src, gu, address, token, &at);
        if (r < 0)
                return r;
        hop->in_flight = at.sent - accounted(&at);
        if ((r = both_completed(src, dst)) < 0 || (r = check_checksums(src, dst, gu, hop, &driver_sum)) < 0 ||
            (r = resume_at(dst, gu, driver_sum, &hop->rarp_expected)) < 0)
                return r;
        end_release(src);
        if ((r = add_bitmap(dst, gu->g)) < 0)
                return r;
        return check_after(gu, &at, hop);
}

/* ---- leaks: fds and RSS per daemon ---------------------------------------------------------------- */

/* The fd count once it stops moving (a job's fds close on its worker after the answer). */
static int settled_fds(pid_t pid, int expected) {
        uint64_t deadline = now_ms() + SETTLE_MS;
        int n;
        while ((n = count_process_fds(pid)) != expected && expected >= 0 && now_ms() < deadline)
                sleep_ms(20);
        return n;
}

static void take_sample(struct sample *s, const struct sample *prev) {
        pid_t pids[2] = { host_a.daemon, host_b.daemon };
        for (unsigned i = 0; i < 2; i++) {
                s->fds[i] = settled_fds(pids[i], prev ? prev->fds[i] : -1);
                s->rss[i] = stress_rss_kib(pids[i]);
        }
}

/* The first sample from flat_from on in the same phase (the VM on this daemon, or not). */
static const struct sample *baseline(const struct sample *samples, unsigned n) {
        return &samples[arg.flat_from + (n - arg.flat_from) % 2];
}

/* From flat_from on: each daemon's fds equal, its VmRSS within the slack, in the same phase. */
static int check_flat(const struct sample *samples, unsigned n) {
        static const char names[2] = { 'A', 'B' };
        if (n < arg.flat_from)
                return 0;
        const struct sample *now = &samples[n], *base = baseline(samples, n);
        unsigned at = (unsigned) (base - samples);
        for (unsigned i = 0; i < 2; i++) {
                if (now->fds[i] != base->fds[i])
                        return fail("hop %u: vhostmigd %c has %d fds, %d after hop %u", n, names[i], now->fds[i],
                                    base->fds[i], at);
                if (RSS_CHECKED && labs(now->rss[i] - base->rss[i]) > arg.rss_slack_kib)
                        return fail("hop %u: vhostmigd %c's VmRSS is %ld KiB, %ld after hop %u (slack %ld KiB)", n,
                                    names[i], now->rss[i], base->rss[i], at, arg.rss_slack_kib);
        }
        return 0;
}

/* ---- the run -------------------------------------------------------------------------------------- */

static int parse_unsigned(const char *opt, const char *s, unsigned long max, unsigned long *out) {
        char *end;
        errno = 0;
        unsigned long v = strtoul(s, &end, 10);
        if (errno || end == s || *end || s[0] == '-' || v > max) {
                fprintf(stderr, "stress-pingpong: invalid value for %s: %s\n", opt, s);
                return -EINVAL;
        }
        *out = v;
        return 0;
}

static int parse_args(int argc, char **argv) {
        static const struct option opts[] = {
                { "migrations", required_argument, NULL, 'n' },
                { "flat-from", required_argument, NULL, 'f' },
                { "rss-slack", required_argument, NULL, 'r' },
                { "traffic-ms", required_argument, NULL, 't' },
                { NULL, 0, NULL, 0 },
        };
        int c;
        unsigned long v;
        bool have_flat = false;
        while ((c = getopt_long(argc, argv, "n:f:r:t:", opts, NULL)) != -1) {
                const char *name = c == 'n'   ? "--migrations"
                                   : c == 'f' ? "--flat-from"
                                   : c == 'r' ? "--rss-slack"
                                              : "--traffic-ms";
                if (c == '?' || parse_unsigned(name, optarg, c == 'n' ? MAX_HOPS : 1000000ul, &v) < 0)
                        return -EINVAL;
                if (c == 'n')
                        arg.hops = (unsigned) v;
                else if (c == 'f')
                        arg.flat_from = (unsigned) v, have_flat = true;
                else if (c == 'r')
                        arg.rss_slack_kib = (long) v;
                else
                        arg.traffic_ms = (unsigned) v;
        }
        /* Long runs: flat from the 10th migration on; short ones from the second round trip. */
        if (!have_flat)
                arg.flat_from = arg.hops >= 20 ? 10 : 3;
        if (arg.hops < 2 || optind < argc || arg.flat_from < 1 || arg.flat_from + 2 > arg.hops) {
                fprintf(stderr, "usage: stress-pingpong [-n MIGRATIONS >= 2] [--flat-from HOP, at most MIGRATIONS - 2] "
                                "[--rss-slack KIB] [--traffic-ms MS]\n");
                return -EINVAL;
        }
        return 0;
}

/* The guest starts on A, on A's port, with traffic checked before the first hop. */
static int first_vm(struct end *a, struct guest *gu) {
        struct vhm_guest_config cfg = guest_config();
        struct vhm_guest_run_opts opts = { .flags = VHM_GUEST_RUN_WAIT_CALL };
        bool rarp;
        int r = vhm_guest_create(&cfg, &gu->g);
        if (r < 0)
                return fail("the guest: %s", strerror(-r));
        if ((r = create_vm(a, vhm_guest_mem_fd(gu->g))) < 0 || (r = add_device(a, gu->g)) < 0 ||
            (r = configure_driver(a, gu->g, &rarp)) < 0 || (r = add_bitmap(a, gu->g)) < 0)
                return r;
        if ((r = traffic(gu, arg.traffic_ms, &opts)) < 0)
                return fail("traffic before the first migration: %s", strerror(-r));
        drain(gu);
        struct vhm_guest_stats s = guest_stats(gu);
        if (s.received == 0 || s.lost || s.corrupted || s.duplicated || s.sent != accounted(&s))
                return fail("traffic before the first migration: sent %" PRIu64 " received %" PRIu64 " lost %" PRIu64
                            " corrupted %" PRIu64 " duplicated %" PRIu64,
                            s.sent, s.received, s.lost, s.corrupted, s.duplicated);
        return 0;
}

static void print_hop(const struct hop *h, const struct sample *s, uint64_t ms) {
        printf("hop %3u %c->%c: completed/completed in %4" PRIu64 " ms, %" PRIu64 " round(s), downtime %3" PRIu64
               " ms, checksum 0x%016" PRIx64 " equal; lost %" PRIu64 " of %" PRIu64 " in flight, RARP %" PRIu64
               ", %" PRIu64 " received after; A %ld KiB %d fds, B %ld KiB %d fds\n",
               h->n, h->from, h->to, ms, h->rounds, h->downtime_ms, h->checksum, h->lost, h->in_flight, h->rarp_after,
               h->received_after, s->rss[0], s->fds[0], s->rss[1], s->fds[1]);
        fflush(stdout);
}

static int run(void) {
        struct end a, b;
        struct guest gu = { 0 };
        struct sample *samples = calloc(arg.hops + 1, sizeof(*samples));
        uint64_t total_lost = 0, total_in_flight = 0, worst_ms = 0;
        unsigned done = 0;
        int r = samples ? 0 : -ENOMEM;
        end_init(&a, &host_a, testpmd.socket);
        end_init(&b, &host_b, testpmd.socket2);
        if (r >= 0)
                r = first_vm(&a, &gu);
        for (unsigned n = 1; r >= 0 && n <= arg.hops; n++) {
                bool to_b = n % 2 == 1;
                struct hop hop = { .n = n, .from = to_b ? 'A' : 'B', .to = to_b ? 'B' : 'A' };
                uint64_t t0 = now_ms();
                r = hop_run(to_b ? &a : &b, to_b ? &b : &a, &gu, &hop);
                if (r < 0) {
                        fprintf(stderr, "stress-pingpong: hop %u %c->%c failed\n", n, hop.from, hop.to);
                        break;
                }
                uint64_t ms = now_ms() - t0;
                worst_ms = ms > worst_ms ? ms : worst_ms;
                take_sample(&samples[n], n >= 3 ? &samples[n - 2] : NULL);
                print_hop(&hop, &samples[n], ms);
                total_lost += hop.lost;
                total_in_flight += hop.in_flight;
                r = check_flat(samples, n);
                done += r >= 0;
        }
        struct vhm_guest_stats s = gu.g ? guest_stats(&gu) : (struct vhm_guest_stats){ 0 };
        printf("ping-pong: %u/%u migrations completed; %" PRIu64 " frames sent, %" PRIu64 " received, %" PRIu64
               " lost (of %" PRIu64 " in flight at the pauses), %" PRIu64 " corrupted, %" PRIu64
               " duplicated; slowest hop %" PRIu64 " ms\n",
               done, arg.hops, s.sent, s.received, total_lost, total_in_flight, s.corrupted, s.duplicated, worst_ms);
        if (done == arg.hops) {
                const struct sample *base = baseline(samples, arg.hops), *l = &samples[arg.hops];
                printf("flat from hop %u: A %ld -> %ld KiB, %d -> %d fds; B %ld -> %ld KiB, %d -> %d fds "
                       "(against hop %u, the same phase; RSS slack %ld KiB%s, fds exact)\n",
                       arg.flat_from, base->rss[0], l->rss[0], base->fds[0], l->fds[0], base->rss[1], l->rss[1],
                       base->fds[1], l->fds[1], (unsigned) (base - samples), arg.rss_slack_kib,
                       RSS_CHECKED ? "" : ", not checked under AddressSanitizer");
        }
        end_release(&a);
        end_release(&b);
        vhm_guest_free(gu.g);
        free(samples);
        return r;
}

int main(int argc, char **argv) {
        if (parse_args(argc, argv) < 0)
                return 2;
        if (!backend_available(TESTPMD_BIN)) {
                printf("stress-pingpong: %s is not installed: skipped\n", TESTPMD_BIN);
                return 77;
        }
        static const char config[] = "{ \"request_timeout_ms\": 5000, \"monitor_interval_ms\": 100 }\n";
        real_backend_init(&testpmd);
        int r = testpmd_cpus_init();
        if (r >= 0)
                r = stress_host_start(&host_a, "A", config, CALL_TIMEOUT_USEC);
        if (r >= 0)
                r = stress_host_start(&host_b, "B", config, CALL_TIMEOUT_USEC);
        if (r >= 0 && (r = start_testpmd(&testpmd, 1, TESTPMD_TWO_PORTS)) < 0)
                fail("testpmd did not start: %s", strerror(-r));
        /* testpmd's forwarding lcore busy-polls its CPU: the guest keeps off it. */
        if (r >= 0)
                r = testpmd_cpus_avoid_worker();
        if (r >= 0)
                r = run();
        int ra = stress_host_stop(&host_a, r < 0);
        int rb = stress_host_stop(&host_b, r < 0);
        stop_backend(&testpmd);
        bool ok = r >= 0 && ra == 0 && rb == 0;
        printf("stress-pingpong: %s\n", ok ? "PASS" : "FAIL");
        return ok ? 0 : 1;
}

/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Concurrency: several VMs migrating live at once from one vhostmigd (A) to
 * another (B), while many D-Bus clients read properties of A's VMs and
 * devices in a loop, and one VM's back-end is killed during its pre-copy
 * and started again on the same socket.
 *
 *   stress-concurrency [--vms N] [--clients N] [--bandwidth BYTES/S] [--read-interval-ms MS] [--p99-ms MS]
 *
 * Each VM has guest memory with a pattern in it and one device served by a
 * test back-end of its own (tests/backend), on both hosts; every migration
 * is MigrateTo with Live and MaxBandwidth, so that the pre-copy lasts
 * seconds.  The first VM is the victim: once its migration is "active" its
 * source back-end is killed (SIGKILL, by pid) and a new one listens on the
 * same socket.  Its migration may fail (the engine finds the back-end gone
 * at its next request, at the latest when it stops the rings for the
 * switchover, and rolls back; the device then reconnects to the new back-end
 * and runs again, which is checked) or complete (checked as the others);
 * either is accepted and printed.  Every other VM must complete
 * at both ends with the same checksum and the destination's memory equal to
 * the source's.  The readers' latencies are printed (p50, p99, max) and p99
 * must stay within --p99-ms (100 ms; 300 ms in a sanitizer build); any
 * failed read fails the test.
 *
 * Environment (set by meson): VHOSTMIGD, START_BUS.  Needs root.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <systemd/sd-bus.h>

#include "tests/backend/test-backend.h"
#include "tests/common/clock.h"
#include "tests/stress/stress-host.h"

#define DEST       "org.vhostmig1"
#define ROOT_PATH  "/org/vhostmig1"
#define MANAGER_IF "org.vhostmig1.Manager"
#define VM_IF      "org.vhostmig1.Vm"
#define DEV_IF     "org.vhostmig1.Device"

#define MEM_SIZE          (UINT64_C(4) << 20)
#define PAGE              4096u
#define RING_SIZE         256u
#define RING_BASE         UINT64_C(0x10000)
#define CALL_TIMEOUT_USEC (UINT64_C(30) * 1000000u)
#define READ_TIMEOUT_USEC (UINT64_C(10) * 1000000u)
#define MIGRATION_MS      60000u /* all migrations, with generous slack */
#define RECOVER_MS        15000u /* the victim's device running again after a failed migration */
#define MAX_VMS           32u
#define MAX_CLIENTS       500u
#define MAX_SAMPLES       100000u /* per client */

/*
 * Built with AddressSanitizer (the daemon too: one build directory) every
 * call costs some 2 to 3 times as much CPU on both sides, and 100 client
 * threads share the machine's cores with the daemons: there the default
 * bound on p99 is three times the issue's.
 */
#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED true
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANITIZED true
#endif
#endif
#ifndef SANITIZED
#define SANITIZED false
#endif
#define P99_LIMIT_MS (SANITIZED ? 300.0 : 100.0)

static struct {
        unsigned vms, clients, read_interval_ms;
        uint64_t bandwidth;
        double p99_ms;
} arg = { .vms = 8, .clients = 100, .read_interval_ms = 20, .bandwidth = UINT64_C(1) << 20, .p99_ms = P99_LIMIT_MS };

/* One end of one VM's migration. */
struct side {
        struct stress_host *h;
        char *vm_path, *dev_path;
        int memfd;
        uint8_t *mem;
        int kick[2], call[2];
        char socket[128];
        pid_t backend;
};

struct pair {
        char name[16];
        struct side src, dst;
        char state_src[32], state_dst[32];
};

struct client {
        pthread_t thread;
        bool started;
        unsigned id;
        sd_bus *bus;
        float *ms; /* each read's latency */
        unsigned n, errors;
        char error[256]; /* the first failed read */
};

static struct stress_host host_a, host_b;
static struct pair pairs[MAX_VMS];
static struct client clients[MAX_CLIENTS];
static volatile bool clients_stop;

__attribute__((format(printf, 1, 2))) static int fail(const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "stress-concurrency: ");
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
        return -EIO;
}

static int bus_fail(const char *what, const sd_bus_error *e, int r) {
        return fail("%s: %s", what, e && e->message ? e->message : strerror(-r));
}

static int get_string(struct stress_host *h, const char *path, const char *iface, const char *prop, char *out,
                      size_t len) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        char *v = NULL;
        int r = sd_bus_get_property_string(h->c, DEST, path, iface, prop, &e, &v);
        if (r < 0)
                r = bus_fail(prop, &e, r);
        else
                snprintf(out, len, "%s", v);
        free(v);
        sd_bus_error_free(&e);
        return r;
}

static int get_u64(struct stress_host *h, const char *path, const char *prop, uint64_t *out) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        int r = sd_bus_get_property_trivial(h->c, DEST, path, VM_IF, prop, &e, 't', out);
        if (r < 0)
                r = bus_fail(prop, &e, r);
        sd_bus_error_free(&e);
        return r;
}

static bool is_final(const char *s) {
        return strcmp(s, "completed") == 0 || strcmp(s, "failed") == 0 || strcmp(s, "cancelled") == 0 ||
               strcmp(s, "postmigrate-unknown") == 0;
}

/* ---- VMs and their back-ends ------------------------------------------------------------------- */

static int sealed_memfd(void) {
        int fd = memfd_create("stress-concurrency", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd >= 0 &&
            (ftruncate(fd, (off_t) MEM_SIZE) < 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0)) {
                close(fd);
                return -1;
        }
        return fd;
}

/* Every page but every fourth carries its number and the VM's: the rings' pages left zero. */
static void fill_pattern(uint8_t *mem, unsigned vm) {
        for (uint64_t p = 0; p < MEM_SIZE / PAGE; p++) {
                uint64_t gpa = p * PAGE;
                if (p % 4 == 0 || (gpa >= RING_BASE && gpa < RING_BASE + 0x8000))
                        continue;
                for (unsigned i = 0; i < PAGE; i += 8)
                        memcpy(mem + gpa + i, &(uint64_t){ gpa + i + ((uint64_t) vm << 48) }, 8);
        }
}

static int backend_start(struct side *s) {
        struct tb_config cfg;
        tb_config_init(&cfg);
        cfg.io_timeout_ms = 5000;
        cfg.max_connections = 0; /* the daemon reconnects after a failure: serve it again */
        unlink(s->socket);
        int r = tb_spawn_listen(&cfg, s->socket, &s->backend);
        if (r < 0)
                return fail("test back-end at %s: %s", s->socket, strerror(-r));
        return 0;
}

static int add_device(struct side *s, bool incoming) {
        struct tb_config cfg;
        sd_bus_error e = SD_BUS_ERROR_NULL;
        sd_bus_message *m = NULL, *reply = NULL;
        const char *path;
        tb_config_init(&cfg);
        int r = sd_bus_message_new_method_call(s->h->c, &m, DEST, s->vm_path, VM_IF, "AddDevice");
        if (r >= 0)
                r = sd_bus_message_append(m, "sa(uttthh)", s->socket, 2u, RING_SIZE, RING_BASE, RING_BASE + 0x1000,
                                          RING_BASE + 0x2000, s->kick[0], s->call[0], RING_SIZE, RING_BASE + 0x4000,
                                          RING_BASE + 0x5000, RING_BASE + 0x6000, s->kick[1], s->call[1]);
        if (r >= 0)
                r = sd_bus_message_append(m, "a{sv}", 2, "Features", "t", tb_config_features(&cfg), "Incoming", "b",
                                          (int) incoming);
        if (r >= 0 && (r = sd_bus_call(s->h->c, m, CALL_TIMEOUT_USEC, &e, &reply)) < 0)
                r = bus_fail("AddDevice", &e, r);
        if (r >= 0 && (r = sd_bus_message_read(reply, "o", &path)) >= 0)
                r = (s->dev_path = strdup(path)) ? 0 : -ENOMEM;
        sd_bus_error_free(&e);
        sd_bus_message_unref(m);
        sd_bus_message_unref(reply);
        return r;
}

/* A VM named `name` on h with one device on a back-end of its own; the source's memory gets the pattern. */
static int side_setup(struct side *s, struct stress_host *h, const char *name, unsigned vm, bool incoming) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        const char *path;
        s->h = h;
        snprintf(s->socket, sizeof(s->socket), "%s/backend-%s.sock", h->dir, name);
        if ((s->memfd = sealed_memfd()) < 0)
                return fail("memfd: %s", strerror(errno));
        s->mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, s->memfd, 0);
        if (s->mem == MAP_FAILED) {
                s->mem = NULL;
                return fail("mmap: %s", strerror(errno));
        }
        if (!incoming)
                fill_pattern(s->mem, vm);
        for (unsigned i = 0; i < 2; i++)
                if ((s->kick[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0 ||
                    (s->call[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0)
                        return fail("eventfd: %s", strerror(errno));
        int r = backend_start(s);
        if (r >= 0 &&
            (r = sd_bus_call_method(h->c, DEST, ROOT_PATH, MANAGER_IF, "CreateVm", &e, &reply, "sa(httt)a{sv}", name, 1,
                                    s->memfd, UINT64_C(0), MEM_SIZE, UINT64_C(0), 0)) < 0)
                r = bus_fail("CreateVm", &e, r);
        if (r >= 0 && (r = sd_bus_message_read(reply, "o", &path)) >= 0)
                r = (s->vm_path = strdup(path)) ? 0 : -ENOMEM;
        sd_bus_error_free(&e);
        sd_bus_message_unref(reply);
        return r < 0 ? r : add_device(s, incoming);
}

static void side_release(struct side *s, const char *name) {
        if (s->vm_path)
                (void) sd_bus_call_method(s->h->c, DEST, ROOT_PATH, MANAGER_IF, "DestroyVm", NULL, NULL, "s", name);
        if (s->backend > 0)
                (void) tb_stop(s->backend);
        s->backend = 0;
        if (s->socket[0])
                unlink(s->socket);
        if (s->mem)
                munmap(s->mem, MEM_SIZE);
        if (s->memfd > 0)
                close(s->memfd);
        for (unsigned i = 0; i < 2; i++) {
                if (s->kick[i] > 0)
                        close(s->kick[i]);
                if (s->call[i] > 0)
                        close(s->call[i]);
        }
        free(s->vm_path);
        free(s->dev_path);
        memset(s, 0, sizeof(*s));
}

/* ---- the readers ------------------------------------------------------------------------------- */

/* One read, as a client would: a VM's MigrationState or progress, a device's State, or a whole VM (GetAll). */
static int read_once(struct client *c, unsigned k) {
        const struct pair *p = &pairs[k % arg.vms];
        sd_bus_error e = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        int r;
        switch (k % 4) {
        case 0:
                r = sd_bus_get_property(c->bus, DEST, p->src.vm_path, VM_IF, "MigrationState", &e, &reply, "s");
                break;
        case 1:
                r = sd_bus_get_property(c->bus, DEST, p->src.vm_path, VM_IF, "PagesTransferred", &e, &reply, "t");
                break;
        case 2:
                r = sd_bus_get_property(c->bus, DEST, p->src.dev_path, DEV_IF, "State", &e, &reply, "s");
                break;
        default:
                r = sd_bus_call_method(c->bus, DEST, p->src.vm_path, "org.freedesktop.DBus.Properties", "GetAll", &e,
                                       &reply, "s", VM_IF);
                break;
        }
        if (r < 0 && c->errors++ == 0)
                snprintf(c->error, sizeof(c->error), "%s", e.message ? e.message : strerror(-r));
        sd_bus_error_free(&e);
        sd_bus_message_unref(reply);
        return r;
}

static void *client_run(void *opaque) {
        struct client *c = opaque;
        for (unsigned k = c->id; !clients_stop && c->n < MAX_SAMPLES; k++) {
                uint64_t t0 = now_ns();
                (void) read_once(c, k);
                c->ms[c->n++] = (float) ((double) (now_ns() - t0) / 1e6);
                sleep_ms(arg.read_interval_ms);
        }
        return NULL;
}

static int clients_start(void) {
        for (unsigned i = 0; i < arg.clients; i++) {
                struct client *c = &clients[i];
                c->id = i;
                if (!(c->ms = calloc(MAX_SAMPLES, sizeof(*c->ms))))
                        return -ENOMEM;
                int r = private_bus_connect(host_a.bus.address, READ_TIMEOUT_USEC, &c->bus);
                if (r < 0)
                        return fail("client %u: cannot connect: %s", i, strerror(-r));
                if ((r = pthread_create(&c->thread, NULL, client_run, c)) != 0)
                        return fail("client %u: %s", i, strerror(r));
                c->started = true;
        }
        return 0;
}

static int cmp_float(const void *a, const void *b) {
        float x = *(const float *) a, y = *(const float *) b;
        return (x > y) - (x < y);
}

/* Joins the clients and prints what they saw; 0 when every read was answered and p99 is within bounds. */
static int clients_stop_and_judge(void) {
        size_t total = 0, n = 0;
        unsigned errors = 0;
        const char *first_error = NULL;
        clients_stop = true;
        for (unsigned i = 0; i < arg.clients; i++) {
                if (clients[i].started)
                        pthread_join(clients[i].thread, NULL);
                clients[i].started = false;
                total += clients[i].n;
        }
        float *all = calloc(total ? total : 1, sizeof(*all));
        for (unsigned i = 0; all && i < arg.clients; i++) {
                memcpy(all + n, clients[i].ms, clients[i].n * sizeof(*all));
                n += clients[i].n;
                errors += clients[i].errors;
                if (clients[i].errors && !first_error)
                        first_error = clients[i].error;
        }
        if (!all || n == 0) {
                free(all);
                return fail("no property read was made");
        }
        qsort(all, n, sizeof(*all), cmp_float);
        double p50 = all[n / 2], p99 = all[n * 99 / 100], max = all[n - 1];
        free(all);
        printf("property reads: %zu by %u clients, %u failed; latency p50 %.2f ms, p99 %.2f ms, max %.2f ms "
               "(limit p99 <= %.0f ms%s)\n",
               n, arg.clients, errors, p50, p99, max, arg.p99_ms, SANITIZED ? ", a sanitizer build" : "");
        if (errors)
                return fail("%u property reads failed, the first: %s", errors, first_error);
        if (p99 > arg.p99_ms)
                return fail("property reads p99 %.2f ms > %.0f ms", p99, arg.p99_ms);
        return 0;
}

static void clients_free(void) {
        for (unsigned i = 0; i < arg.clients; i++) {
                sd_bus_flush_close_unref(clients[i].bus);
                free(clients[i].ms);
                memset(&clients[i], 0, sizeof(clients[i]));
        }
}

/* ---- the migrations ---------------------------------------------------------------------------- */

static int start_migration(struct pair *p) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        const char *address, *token;
        int r = sd_bus_call_method(host_b.c, DEST, p->dst.vm_path, VM_IF, "PrepareIncoming", &e, &reply, "a{sv}", 1,
                                   "TimeoutMs", "u", MIGRATION_MS);
        if (r < 0)
                r = bus_fail("PrepareIncoming", &e, r);
        if (r >= 0 && (r = sd_bus_message_read(reply, "ss", &address, &token)) < 0)
                r = fail("PrepareIncoming's reply: %s", strerror(-r));
        sd_bus_error_free(&e);
        if (r >= 0 && (r = sd_bus_call_method(host_a.c, DEST, p->src.vm_path, VM_IF, "MigrateTo", &e, NULL, "ssa{sv}",
                                              address, token, 3, "Live", "b", 1, "MaxBandwidth", "t", arg.bandwidth,
                                              "TimeoutMs", "u", MIGRATION_MS)) < 0)
                r = bus_fail("MigrateTo", &e, r);
        sd_bus_error_free(&e);
        sd_bus_message_unref(reply);
        return r;
}

/* Waits for the victim's pre-copy to be under way, then kills its source back-end and starts another there. */
static int restart_victim_backend(struct pair *p) {
        uint64_t deadline = now_ms() + MIGRATION_MS, pages = 0;
        char state[32] = "";
        int r;
        while ((r = get_string(&host_a, p->src.vm_path, VM_IF, "MigrationState", state, sizeof(state))) >= 0 &&
               (r = get_u64(&host_a, p->src.vm_path, "PagesTransferred", &pages)) >= 0 &&
               !(strcmp(state, "active") == 0 && pages > 0) && !is_final(state) && now_ms() < deadline)
                sleep_ms(10);
        if (r < 0)
                return r;
        if (strcmp(state, "active") != 0)
                return fail("%s: pre-copy never seen (state \"%s\", %" PRIu64 " pages)", p->name, state, pages);
        kill(p->src.backend, SIGKILL);
        waitpid(p->src.backend, NULL, 0);
        p->src.backend = 0;
        printf("%s: back-end killed (pid) during pre-copy after %" PRIu64 " pages, started again on %s\n", p->name,
               pages, p->src.socket);
        return backend_start(&p->src);
}

/* Every end final, or the deadline. */
static int wait_all_final(void) {
        uint64_t deadline = now_ms() + MIGRATION_MS;
        for (;;) {
                bool all = true;
                for (unsigned i = 0; i < arg.vms; i++) {
                        struct pair *p = &pairs[i];
                        if (get_string(&host_a, p->src.vm_path, VM_IF, "MigrationState", p->state_src,
                                       sizeof(p->state_src)) < 0 ||
                            get_string(&host_b, p->dst.vm_path, VM_IF, "MigrationState", p->state_dst,
                                       sizeof(p->state_dst)) < 0)
                                return -EIO;
                        all &= is_final(p->state_src) && is_final(p->state_dst);
                }
                if (all)
                        return 0;
                if (now_ms() >= deadline)
                        return fail("migrations still running after %u ms", MIGRATION_MS);
                sleep_ms(50);
        }
}

/* A completed migration: both ends, the same checksum, the destination's memory the source's. */
static int check_completed(struct pair *p) {
        uint64_t sum_a = 0, sum_b = 0, total_ms = 0;
        char err[512] = "";
        if (strcmp(p->state_src, "completed") != 0 || strcmp(p->state_dst, "completed") != 0) {
                (void) get_string(&host_a, p->src.vm_path, VM_IF, "MigrationError", err, sizeof(err));
                return fail("%s: source %s, destination %s (%s)", p->name, p->state_src, p->state_dst, err);
        }
        if (get_u64(&host_a, p->src.vm_path, "MigrationChecksum", &sum_a) < 0 ||
            get_u64(&host_b, p->dst.vm_path, "MigrationChecksum", &sum_b) < 0 ||
            get_u64(&host_a, p->src.vm_path, "TotalMs", &total_ms) < 0)
                return -EIO;
        if (sum_a != sum_b || sum_a == 0)
                return fail("%s: checksums 0x%016" PRIx64 " (A), 0x%016" PRIx64 " (B)", p->name, sum_a, sum_b);
        if (memcmp(p->src.mem, p->dst.mem, MEM_SIZE) != 0)
                return fail("%s: the destination's memory differs from the source's", p->name);
        printf("%s: completed in %" PRIu64 " ms, checksum 0x%016" PRIx64 " at both ends, memory equal\n", p->name,
               total_ms, sum_a);
        return 0;
}

/* The victim: completed (checked as the others), or failed with its source device running again. */
static int check_victim(struct pair *p) {
        char err[512] = "", state[32] = "";
        if (strcmp(p->state_src, "completed") == 0)
                return check_completed(p);
        if (strcmp(p->state_src, "failed") != 0)
                return fail("%s: source ended \"%s\", neither completed nor failed", p->name, p->state_src);
        (void) get_string(&host_a, p->src.vm_path, VM_IF, "MigrationError", err, sizeof(err));
        uint64_t deadline = now_ms() + RECOVER_MS;
        while (get_string(&host_a, p->src.dev_path, DEV_IF, "State", state, sizeof(state)) >= 0 &&
               strcmp(state, "running") != 0 && now_ms() < deadline)
                sleep_ms(50);
        printf("%s: failed as the back-end restarted (%s); destination %s; source device %s again\n", p->name, err,
               p->state_dst, state);
        if (strcmp(state, "running") != 0)
                return fail("%s: the source device is \"%s\", not running, %u ms after the failure", p->name, state,
                            RECOVER_MS);
        return 0;
}

static int run(void) {
        int r = 0;
        for (unsigned i = 0; r >= 0 && i < arg.vms; i++) {
                snprintf(pairs[i].name, sizeof(pairs[i].name), "conc%u", i);
                r = side_setup(&pairs[i].src, &host_a, pairs[i].name, i, false);
                if (r >= 0)
                        r = side_setup(&pairs[i].dst, &host_b, pairs[i].name, i, true);
        }
        if (r >= 0)
                r = clients_start();
        uint64_t t0 = now_ms();
        for (unsigned i = 0; r >= 0 && i < arg.vms; i++)
                r = start_migration(&pairs[i]);
        if (r >= 0)
                r = restart_victim_backend(&pairs[0]);
        if (r >= 0)
                r = wait_all_final();
        uint64_t elapsed = now_ms() - t0;
        int rc = clients_stop_and_judge();
        if (r < 0)
                return r;
        printf("%u live migrations at once from A to B, MaxBandwidth %" PRIu64 " B/s each: all ended in %" PRIu64
               " ms\n",
               arg.vms, arg.bandwidth, elapsed);
        int rv = check_victim(&pairs[0]);
        for (unsigned i = 1; i < arg.vms; i++)
                if (check_completed(&pairs[i]) < 0)
                        r = -EIO;
        return r < 0 || rv < 0 || rc < 0 ? -EIO : 0;
}

static int parse_args(int argc, char **argv) {
        static const struct option opts[] = {
                { "vms", required_argument, NULL, 'v' },       { "clients", required_argument, NULL, 'c' },
                { "bandwidth", required_argument, NULL, 'b' }, { "read-interval-ms", required_argument, NULL, 'i' },
                { "p99-ms", required_argument, NULL, 'p' },    { NULL, 0, NULL, 0 },
        };
        int c;
        while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
                char *end;
                unsigned long long v = c == '?' ? 0 : strtoull(optarg, &end, 10);
                bool ok = c != '?' && !*end && v > 0;
                if (c == 'v')
                        ok = ok && v >= 2 && v <= MAX_VMS, arg.vms = (unsigned) v;
                else if (c == 'c')
                        ok = ok && v <= MAX_CLIENTS, arg.clients = (unsigned) v;
                else if (c == 'b')
                        arg.bandwidth = v;
                else if (c == 'i')
                        ok = ok && v <= 10000, arg.read_interval_ms = (unsigned) v;
                else if (c == 'p')
                        ok = ok && v <= 60000, arg.p99_ms = (double) v;
                if (!ok) {
                        fprintf(stderr,
                                "usage: stress-concurrency [--vms 2..%u] [--clients 1..%u] [--bandwidth B/S] "
                                "[--read-interval-ms MS] [--p99-ms MS]\n",
                                MAX_VMS, MAX_CLIENTS);
                        return -EINVAL;
                }
        }
        return optind < argc ? -EINVAL : 0;
}

int main(int argc, char **argv) {
        static const char config[] = "{ \"request_timeout_ms\": 5000, \"monitor_interval_ms\": 100 }\n";
        if (parse_args(argc, argv) < 0)
                return 2;
        signal(SIGPIPE, SIG_IGN);
        int r = stress_host_start(&host_a, "cA", config, CALL_TIMEOUT_USEC);
        if (r >= 0)
                r = stress_host_start(&host_b, "cB", config, CALL_TIMEOUT_USEC);
        if (r >= 0)
                r = run();
        clients_stop = true;
        for (unsigned i = 0; i < arg.clients; i++)
                if (clients[i].started)
                        pthread_join(clients[i].thread, NULL);
        clients_free();
        for (unsigned i = 0; i < arg.vms; i++) {
                side_release(&pairs[i].src, pairs[i].name);
                side_release(&pairs[i].dst, pairs[i].name);
        }
        int ra = stress_host_stop(&host_a, r < 0), rb = stress_host_stop(&host_b, r < 0);
        if (r >= 0 && (ra != 0 || rb != 0))
                r = fail("a daemon did not exit 0 (A %d, B %d)", ra, rb);
        printf("stress-concurrency: %s\n", r >= 0 ? "PASS" : "FAIL");
        return r >= 0 ? 0 : 1;
}

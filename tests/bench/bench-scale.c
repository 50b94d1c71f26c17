/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * bench-scale: one vhostmigd holding many VMs of several devices each, and
 * how long org.freedesktop.DBus.ObjectManager.GetManagedObjects takes then
 * (the issue 13 target: 256 VMs x 4 devices answered in at most 50 ms).
 *
 * A private bus and a vhostmigd (tests/stress/stress-host.c); the devices
 * are served by the project's test back-end, in a forked child that accepts
 * every connection on one socket and serves each in a thread of its own
 * (tb_serve_fd), so that one process holds all of them.  The baseline is
 * measured in the same run: GetManagedObjects while the daemon holds one VM
 * of the same kind, before the others are created.  Printed: the median, p90
 * and max of each, the median of the daemon's CPU time per call (all its
 * threads: on a machine shared with other work the wall clock counts that
 * work too) and of the bus daemon's (it reads, checks and relays the reply:
 * most of the rest of the wall clock), the ratios of the medians, how long
 * the VMs took to create, the CPU model and the load average.
 *
 * Usage: bench-scale [--vms N] [--devices N] [--calls N]
 * Environment (set by meson): VHOSTMIGD, START_BUS.  Needs root.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
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
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-bus.h>

#include "proto/vhost-user-transport.h"
#include "tests/backend/test-backend.h"
#include "tests/common/clock.h"
#include "tests/stress/stress-host.h"

#define DEST       "org.vhostmig1"
#define ROOT_PATH  "/org/vhostmig1"
#define MANAGER_IF "org.vhostmig1.Manager"
#define VM_IF      "org.vhostmig1.Vm"

#define MEM_SIZE          (UINT64_C(2) << 20)
#define RING_SIZE         256u
#define RING_BASE         UINT64_C(0x10000)
#define DEVICE_STRIDE     UINT64_C(0x10000) /* each device's two rings, clear of the others' */
#define CALL_TIMEOUT_USEC (UINT64_C(60) * 1000000u)
#define MAX_CALLS         10001u
#define BACKEND_STACK     (256u << 10)
#define TARGET_MS         50.0

static struct { unsigned vms, devices, calls; } arg = { .vms = 256, .devices = 4, .calls = 51 };

static struct stress_host host;
static pid_t backend = -1;

/* ---- the back-end: every connection in a thread ------------------------------------------------- */

static struct tb_config backend_cfg;

static void *serve_one(void *opaque) {
        (void) tb_serve_fd(&backend_cfg, (int) (intptr_t) opaque);
        return NULL;
}

/* The child: accept for ever, a detached thread per connection; SIGTERM (or our parent's end) ends it. */
static _Noreturn void backend_main(int lfd) {
        pthread_attr_t attr;
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, BACKEND_STACK);
        /* The listener comes non-blocking: this loop has nothing else to do than wait. */
        if (fcntl(lfd, F_SETFL, fcntl(lfd, F_GETFL) & ~O_NONBLOCK) < 0)
                _exit(1);
        for (;;) {
                pthread_t t;
                int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
                if (fd < 0 && errno == EINTR)
                        continue;
                if (fd < 0)
                        _exit(1);
                if (pthread_create(&t, &attr, serve_one, (void *) (intptr_t) fd) != 0)
                        close(fd);
        }
}

static int backend_start(const char *path) {
        tb_config_init(&backend_cfg);
        backend_cfg.io_timeout_ms = 10000;
        int lfd = vhu_socket_listen(path);
        if (lfd < 0) {
                fprintf(stderr, "bench-scale: cannot listen at %s: %s\n", path, strerror(-lfd));
                return lfd;
        }
        fflush(stdout);
        fflush(stderr);
        backend = fork();
        if (backend == 0)
                backend_main(lfd);
        int r = backend < 0 ? -errno : 0;
        close(lfd);
        return r;
}

static void backend_stop(const char *path) {
        if (backend > 0) {
                kill(backend, SIGTERM);
                waitpid(backend, NULL, 0);
        }
        backend = -1;
        if (path[0])
                unlink(path);
}

/* ---- VMs ------------------------------------------------------------------------------------------ */

static int sealed_memfd(void) {
        int fd = memfd_create("bench-scale", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd >= 0 &&
            (ftruncate(fd, (off_t) MEM_SIZE) < 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0)) {
                close(fd);
                return -1;
        }
        return fd;
}

static int call_failed(const char *what, const sd_bus_error *e, int r) {
        fprintf(stderr, "bench-scale: %s: %s\n", what, e && e->message ? e->message : strerror(-r));
        return r;
}

/* AddDevice d of a VM: two queues with fresh eventfds (the daemon keeps its own copies). */
static int add_device(const char *vm_path, const char *socket, unsigned d) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        sd_bus_message *m = NULL;
        int efd[4], r = 0;
        uint64_t base = RING_BASE + d * DEVICE_STRIDE;
        for (unsigned i = 0; i < 4; i++)
                if ((efd[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0)
                        r = -errno;
        if (r >= 0)
                r = sd_bus_message_new_method_call(host.c, &m, DEST, vm_path, VM_IF, "AddDevice");
        if (r >= 0)
                r = sd_bus_message_append(m, "sa(uttthh)", socket, 2u, RING_SIZE, base, base + 0x1000, base + 0x2000,
                                          efd[0], efd[1], RING_SIZE, base + 0x4000, base + 0x5000, base + 0x6000,
                                          efd[2], efd[3]);
        if (r >= 0)
                r = sd_bus_message_append(m, "a{sv}", 1, "Features", "t", tb_config_features(&backend_cfg));
        if (r >= 0 && (r = sd_bus_call(host.c, m, CALL_TIMEOUT_USEC, &e, NULL)) < 0)
                r = call_failed("AddDevice", &e, r);
        sd_bus_error_free(&e);
        sd_bus_message_unref(m);
        for (unsigned i = 0; i < 4; i++)
                if (efd[i] >= 0)
                        close(efd[i]);
        return r < 0 ? r : 0;
}

static int create_vm(unsigned i, const char *socket) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        char name[32], *path = NULL;
        const char *p;
        int fd = sealed_memfd(), r;
        if (fd < 0)
                return call_failed("memfd", NULL, -errno);
        snprintf(name, sizeof(name), "scale%u", i);
        r = sd_bus_call_method(host.c, DEST, ROOT_PATH, MANAGER_IF, "CreateVm", &e, &reply, "sa(httt)a{sv}", name, 1,
                               fd, UINT64_C(0), MEM_SIZE, UINT64_C(0), 0);
        close(fd);
        if (r < 0)
                r = call_failed("CreateVm", &e, r);
        else if (sd_bus_message_read(reply, "o", &p) < 0 || !(path = strdup(p)))
                r = call_failed("CreateVm's reply", NULL, -EBADMSG);
        for (unsigned d = 0; r >= 0 && d < arg.devices; d++)
                r = add_device(path, socket, d);
        free(path);
        sd_bus_error_free(&e);
        sd_bus_message_unref(reply);
        return r;
}

/* ---- the measurement ------------------------------------------------------------------------------- */

struct figures {
        double median, p90, max; /* ms */
        double cpu_median;       /* ms of the daemon's CPU time (all its threads) per call */
        double bus_cpu_median;   /* ms of the bus daemon's, which relays the reply */
        unsigned objects;
};

static int cmp_double(const void *a, const void *b) {
        double x = *(const double *) a, y = *(const double *) b;
        return (x > y) - (x < y);
}

/* The objects in a GetManagedObjects reply (a{oa{sa{sv}}}). */
static int count_objects(sd_bus_message *reply, unsigned *n) {
        int r = sd_bus_message_enter_container(reply, 'a', "{oa{sa{sv}}}");
        *n = 0;
        while (r > 0 && (r = sd_bus_message_skip(reply, "{oa{sa{sv}}}")) > 0)
                (*n)++;
        return r;
}

/* The daemon's CPU time in ns: on a shared machine the wall clock also counts others' work. */
static int64_t daemon_cpu_ns(clockid_t clock) {
        struct timespec ts;
        if (clock_gettime(clock, &ts) < 0)
                return 0;
        return (int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static double median_of(double *v, unsigned n) {
        qsort(v, n, sizeof(*v), cmp_double);
        return v[n / 2];
}

static int measure(unsigned calls, struct figures *f) {
        double *ms = calloc(calls, sizeof(*ms)), *cpu = calloc(calls, sizeof(*cpu)), *bus = calloc(calls, sizeof(*bus));
        clockid_t clock, bus_clock;
        int r = ms && cpu && bus ? 0 : -ENOMEM;
        if (r >= 0 && (r = -clock_getcpuclockid(host.daemon, &clock)) < 0)
                call_failed("the daemon's CPU clock", NULL, r);
        if (r >= 0 && (r = -clock_getcpuclockid(host.bus.pid, &bus_clock)) < 0)
                call_failed("the bus daemon's CPU clock", NULL, r);
        for (unsigned i = 0; r >= 0 && i < calls; i++) {
                sd_bus_error e = SD_BUS_ERROR_NULL;
                sd_bus_message *reply = NULL;
                int64_t c0 = daemon_cpu_ns(clock), b0 = daemon_cpu_ns(bus_clock);
                uint64_t t0 = now_ns();
                r = sd_bus_call_method(host.c, DEST, ROOT_PATH, "org.freedesktop.DBus.ObjectManager",
                                       "GetManagedObjects", &e, &reply, "");
                ms[i] = (double) (now_ns() - t0) / 1e6;
                cpu[i] = (double) (daemon_cpu_ns(clock) - c0) / 1e6;
                bus[i] = (double) (daemon_cpu_ns(bus_clock) - b0) / 1e6;
                if (r < 0)
                        r = call_failed("GetManagedObjects", &e, r);
                else if (i == 0)
                        r = count_objects(reply, &f->objects);
                sd_bus_error_free(&e);
                sd_bus_message_unref(reply);
        }
        if (r >= 0) {
                qsort(ms, calls, sizeof(*ms), cmp_double);
                f->median = ms[calls / 2];
                f->p90 = ms[calls * 9 / 10];
                f->max = ms[calls - 1];
                f->cpu_median = median_of(cpu, calls);
                f->bus_cpu_median = median_of(bus, calls);
        }
        free(ms);
        free(cpu);
        free(bus);
        return r;
}

static void print_figures(const char *what, const struct figures *f) {
        printf("  %-34s median %8.3f ms  p90 %8.3f ms  max %8.3f ms  (%u objects); daemon CPU median %.3f ms, "
               "bus daemon CPU median %.3f ms\n",
               what, f->median, f->p90, f->max, f->objects, f->cpu_median, f->bus_cpu_median);
}

/* The load average over the last minute (/proc/loadavg): the other work the wall clock counts. */
static double load_average(void) {
        double load = -1;
        FILE *f = fopen("/proc/loadavg", "re");
        if (f && fscanf(f, "%lf", &load) != 1)
                load = -1;
        if (f)
                fclose(f);
        return load;
}

static int parse_args(int argc, char **argv) {
        static const struct option opts[] = {
                { "vms", required_argument, NULL, 'v' },
                { "devices", required_argument, NULL, 'd' },
                { "calls", required_argument, NULL, 'c' },
                { NULL, 0, NULL, 0 },
        };
        int c;
        while ((c = getopt_long(argc, argv, "v:d:c:", opts, NULL)) != -1) {
                char *end;
                unsigned long v = c == '?' ? 0 : strtoul(optarg, &end, 10);
                if (c == '?' || *end || v == 0 || v > (c == 'c' ? MAX_CALLS : c == 'd' ? 8u : 4096u)) {
                        fprintf(stderr, "usage: bench-scale [--vms 1..4096] [--devices 1..8] [--calls 1..%u]\n",
                                MAX_CALLS);
                        return -EINVAL;
                }
                *(c == 'v' ? &arg.vms : c == 'd' ? &arg.devices : &arg.calls) = (unsigned) v;
        }
        return optind < argc ? -EINVAL : 0;
}

static int run(const char *socket) {
        struct figures base = { 0 }, scale = { 0 };
        char cpu[256];
        uint64_t t0;
        int r = create_vm(0, socket);
        /* The baseline: one VM of the same kind, in this run. */
        if (r >= 0)
                r = measure(arg.calls, &base);
        t0 = now_ms();
        for (unsigned i = 1; r >= 0 && i < arg.vms; i++)
                r = create_vm(i, socket);
        uint64_t create_ms = now_ms() - t0;
        if (r >= 0)
                r = measure(arg.calls, &scale);
        if (r < 0)
                return r;
        stress_cpu_model(cpu, sizeof(cpu));
        printf("bench-scale: GetManagedObjects, %u calls each, CPU %s, load average %.2f\n", arg.calls, cpu,
               load_average());
        print_figures("1 VM (baseline, this run):", &base);
        char what[64];
        snprintf(what, sizeof(what), "%u VMs x %u devices:", arg.vms, arg.devices);
        print_figures(what, &scale);
        printf("  ratio of the medians: %.1f x the baseline (daemon CPU: %.1f x); %u VMs created in %" PRIu64
               " ms; daemon VmRSS %ld KiB\n",
               scale.median / base.median, scale.cpu_median / base.cpu_median, arg.vms - 1, create_ms,
               stress_rss_kib(host.daemon));
        /*
         * The bus daemon's work per call is the same for any vhostmigd (the
         * same reply to read, check and relay): the ratio compares daemons
         * across runs on a machine whose speed changes with what else runs.
         */
        printf("  daemon CPU / bus daemon CPU (medians): %.2f\n", scale.cpu_median / scale.bus_cpu_median);
        printf("  target: median <= %.0f ms: %s\n", TARGET_MS, scale.median <= TARGET_MS ? "met" : "NOT met");
        return 0;
}

int main(int argc, char **argv) {
        char config[128], socket[128] = "";
        if (parse_args(argc, argv) < 0)
                return 2;
        snprintf(config, sizeof(config), "{ \"max_vms\": %u, \"request_timeout_ms\": 10000 }\n", arg.vms);
        int r = stress_host_start(&host, "scale", config, CALL_TIMEOUT_USEC);
        if (r >= 0) {
                snprintf(socket, sizeof(socket), "%s/backend.sock", host.dir);
                r = backend_start(socket);
        }
        if (r >= 0)
                r = run(socket);
        /* The VMs go with the daemon: SIGTERM releases every device. */
        int rs = stress_host_stop(&host, r < 0);
        backend_stop(socket);
        return r >= 0 && rs == 0 ? 0 : 1;
}

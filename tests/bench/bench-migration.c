/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * bench-migration: stop-and-copy of a guest's memory through the migration
 * engine (migrate/migration.h), beside a raw copy of the same bytes over the
 * same transport in the same run.
 *
 * Two VMs of --mem MiB (default 1024) in sealed memfds; every page of the
 * source holds data (no zero page: the worst case for the stream).  For
 * unix: and tcp:127.0.0.1 (loopback), the median of --runs runs (default 3),
 * interleaved, of:
 *   raw        write() of the source's memory into the socket, a reader
 *              thread discarding it: the transport's floor;
 *   migration  vhm_migrate_to -> vhm_migrate_incoming (no devices): pages
 *              read through the guarded path, PAGES records, written through
 *              vhm_vm_write, both checksums, END, COMMITTED.
 * The destination runs on a second thread; both ends share this machine's
 * cores, as they would not across two hosts.
 *
 * Then the downtime of a VM with 2 devices x 4 queue pairs, from the pause
 * (vhm_migrate_to called, vCPUs paused) to the destination running with
 * SEND_RARP sent (vhm_migrate_incoming returned), median and p90 of
 * --downtime-runs runs (default 7) over a socketpair, with a guest of
 * --downtime-mem MiB (default 64; stop-and-copy moves it inside the
 * downtime).  Device 0 is on DPDK testpmd (source and destination on its two
 * vhost ports, restarted for every run); testpmd has no third and fourth
 * port, so device 1 is on the project's test back-end (one for each side).
 * Also the switchover alone: END received to running plus RARP (checksum
 * verified, 16 rings restored).
 *
 * Usage: bench-migration [--quick] [--mem MiB] [--runs N] [--downtime-runs N] [--downtime-mem MiB]
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <sys/eventfd.h>
#include <sys/socket.h>

#include "migrate/migration.h"
#include "migrate/transport.h"
#include "migrate/vm.h"
#include "proto/vhost-user-transport.h"
#include "tests/backend/test-backend.h"
#include "tests/common/clock.h"
#include "tests/common/guest-device.h"
#include "tests/common/real-backends.h"

#define MiB      (UINT64_C(1) << 20)
#define MAX_RUNS 15
#define TOKEN    "00112233445566778899aabbccddeeff"

struct vm_mem {
        int fd;
        struct vhm_vm *vm;
        uint8_t *map; /* the bench's own view, to fill and to copy raw */
};

static int vm_mem_new(const char *name, uint64_t size, bool fill, struct vm_mem *m) {
        m->fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (m->fd < 0 || ftruncate(m->fd, (off_t) size) < 0 || fcntl(m->fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0)
                return -errno;
        m->map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, m->fd, 0);
        if (m->map == MAP_FAILED)
                return -errno;
        /* Every page allocated up front: the first run must not pay the page faults for all. */
        for (uint64_t off = 0; off < size; off += 8) {
                uint64_t v = fill ? off * UINT64_C(0x9e3779b97f4a7c15) + 1 : 0;
                memcpy(m->map + off, &v, 8);
        }
        int r = vhm_vm_new(name, &m->vm);
        struct vhm_region_spec spec = { .fd = m->fd, .guest_phys_addr = 0, .size = size };
        return r < 0 ? r : vhm_vm_add_region(m->vm, &spec);
}

static void vm_mem_free(struct vm_mem *m, uint64_t size) {
        vhm_vm_free(m->vm);
        if (m->map && m->map != MAP_FAILED)
                munmap(m->map, size);
        if (m->fd >= 0)
                close(m->fd);
}

/* ---- the receiving end ------------------------------------------------------------ */

struct receiver {
        pthread_t thread;
        int listen_fd;
        bool migrate; /* else: raw, read and discard */
        struct vhm_vm *vm;
        struct vhm_migration_stats st;
        uint64_t bytes;
        int rc;
};

static void *receive(void *arg) {
        struct receiver *rx = arg;
        int fd;
        rx->rc = vhm_transport_accept(rx->listen_fd, vhu_now_usec() + 10000000u, -1, &fd);
        if (rx->rc < 0)
                return NULL;
        if (rx->migrate) {
                rx->rc = vhm_migrate_incoming(rx->vm, NULL, 0, fd, TOKEN, 0, &rx->st);
                return NULL;
        }
        int flags = fcntl(fd, F_GETFL);
        fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
        static _Thread_local uint8_t buf[1 << 20];
        ssize_t k;
        while ((k = read(fd, buf, sizeof(buf))) > 0)
                rx->bytes += (uint64_t) k;
        close(fd);
        return NULL;
}

static int raw_send(int fd, const uint8_t *p, uint64_t size) {
        int flags = fcntl(fd, F_GETFL);
        fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
        for (uint64_t off = 0; off < size;) {
                ssize_t k = write(fd, p + off, size - off > MiB ? MiB : size - off);
                if (k < 0 && errno != EINTR)
                        return -errno;
                if (k > 0)
                        off += (uint64_t) k;
        }
        return 0;
}

/* One run: seconds, or a negative value on failure. */
static double run_once(const char *address, bool migrate, struct vm_mem *src, struct vm_mem *dst, uint64_t size) {
        char bound[VHM_TRANSPORT_ADDRESS_MAX];
        struct receiver rx = { .migrate = migrate, .vm = dst->vm };
        int r = vhm_transport_listen(address, &rx.listen_fd, bound, sizeof(bound));
        if (r < 0) {
                fprintf(stderr, "listen %s: %s\n", address, strerror(-r));
                return -1;
        }
        if (pthread_create(&rx.thread, NULL, receive, &rx) != 0) {
                vhm_transport_listen_close(rx.listen_fd, bound);
                return -1;
        }
        int fd = -1;
        uint64_t t0 = now_ns();
        r = vhm_transport_connect(bound, vhu_now_usec() + 10000000u, -1, &fd);
        struct vhm_migration_stats st;
        if (r == 0 && migrate) {
                r = vhm_migrate_to(src->vm, NULL, NULL, 0, fd, TOKEN, NULL, &st);
        } else if (r == 0) {
                r = raw_send(fd, src->map, size);
                close(fd);
        }
        pthread_join(rx.thread, NULL);
        double secs = (double) (now_ns() - t0) / 1e9;
        vhm_transport_listen_close(rx.listen_fd, bound);
        if (r < 0 || rx.rc < 0) {
                fprintf(stderr, "%s %s: %s / %s\n", address, migrate ? "migration" : "raw",
                        migrate ? st.error : strerror(-r), migrate ? rx.st.error : strerror(-rx.rc));
                return -1;
        }
        if (!migrate && rx.bytes != size)
                return -1;
        return secs;
}

static int cmp_double(const void *a, const void *b) {
        double x = *(const double *) a, y = *(const double *) b;
        return (x > y) - (x < y);
}

static double median(double *v, unsigned n) {
        qsort(v, n, sizeof(*v), cmp_double);
        return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* ---- downtime: 2 devices x 4 queue pairs ---------------------------------------------- */

#define DT_QP   4u /* per device */
#define DT_DEVS 2u

struct dt_side {
        struct vhm_guest *g; /* source only */
        struct vhm_vm *vm;
        int memfd; /* destination only */
        struct vhm_device *dev[DT_DEVS];
        int efd[DT_DEVS][4 * DT_QP];
};

static void dt_side_free(struct dt_side *s) {
        for (unsigned d = 0; d < DT_DEVS; d++) {
                vhm_device_free(s->dev[d]);
                for (unsigned i = 0; i < 4 * DT_QP; i++)
                        if (s->efd[d][i] >= 0)
                                close(s->efd[d][i]);
        }
        vhm_vm_free(s->vm);
        vhm_guest_free(s->g);
        if (s->memfd >= 0)
                close(s->memfd);
}

static void dt_side_init(struct dt_side *s) {
        memset(s, 0, sizeof(*s));
        s->memfd = -1;
        for (unsigned d = 0; d < DT_DEVS; d++)
                for (unsigned i = 0; i < 4 * DT_QP; i++)
                        s->efd[d][i] = -1;
}

/* Device d on the guest's queue pairs 4d..4d+3; the destination's with eventfds of its own. */
static int dt_device(struct dt_side *s, const struct vhm_guest *layout, unsigned d, const char *socket, bool incoming) {
        struct vhm_device_config cfg = { .socket = socket,
                                         .features = vhm_guest_driver_features() | VHU_BIT(VHU_VF_NET_MQ),
                                         .queue_pairs = DT_QP,
                                         .timeout_ms = 5000,
                                         .incoming = incoming };
        int r = vhm_device_new(s->vm, &cfg, &s->dev[d]);
        for (unsigned q = 0; r == 0 && q < 2 * DT_QP; q++) {
                struct vhm_guest_queue_layout l;
                r = vhm_guest_queue_layout(layout, 2 * DT_QP * d + q, &l);
                if (r == 0 && incoming) {
                        l.kick_fd = s->efd[d][2 * q] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
                        l.call_fd = s->efd[d][2 * q + 1] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
                }
                struct vhm_queue_spec spec = { .size = l.num,
                                               .desc_gpa = l.desc_gpa,
                                               .avail_gpa = l.avail_gpa,
                                               .used_gpa = l.used_gpa,
                                               .kick_fd = l.kick_fd,
                                               .call_fd = l.call_fd };
                if (r == 0)
                        r = vhm_device_set_queue(s->dev[d], q, &spec);
        }
        if (r == 0)
                r = vhm_device_connect(s->dev[d]);
        if (r == 0 && !incoming)
                r = vhm_device_start(s->dev[d]);
        if (r < 0)
                fprintf(stderr, "device %u at %s: %s\n", d, socket, s->dev[d] ? vhm_device_error(s->dev[d]) : "");
        return r;
}

static int dt_source(struct dt_side *s, uint64_t mem, const char *const sockets[DT_DEVS]) {
        struct vhm_guest_config gc = { .mem_size = mem, .queue_pairs = DT_DEVS * DT_QP };
        int r = guest_vm_new("source", &gc, &s->g, &s->vm);
        for (unsigned d = 0; r == 0 && d < DT_DEVS; d++)
                r = dt_device(s, s->g, d, sockets[d], false);
        return r;
}

static int dt_destination(struct dt_side *s, const struct vhm_guest *layout, uint64_t mem,
                          const char *const sockets[DT_DEVS]) {
        s->memfd = memfd_create("destination", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (s->memfd < 0 || ftruncate(s->memfd, (off_t) mem) < 0 || fcntl(s->memfd, F_ADD_SEALS, F_SEAL_SHRINK) < 0)
                return -errno;
        int r = vhm_vm_new("destination", &s->vm);
        struct vhm_region_spec spec = { .fd = s->memfd, .guest_phys_addr = 0, .size = mem };
        if (r == 0)
                r = vhm_vm_add_region(s->vm, &spec);
        for (unsigned d = 0; r == 0 && d < DT_DEVS; d++)
                r = dt_device(s, layout, d, sockets[d], true);
        return r;
}

struct dt_incoming {
        pthread_t thread;
        int fd, rc;
        struct dt_side *dst;
        uint64_t switchover_ns;
        struct vhm_migration_stats st;
};

static void dt_progress(const struct vhm_migration_stats *st, void *opaque) {
        struct dt_incoming *in = opaque;
        if (st->state == VHM_MIGRATION_SWITCHOVER && !in->switchover_ns)
                in->switchover_ns = now_ns();
}

static void *dt_incoming_run(void *arg) {
        struct dt_incoming *in = arg;
        struct vhm_migrate_options o = { .progress = dt_progress, .opaque = in };
        in->rc = vhm_migrate_incoming_opts(in->dst->vm, in->dst->dev, DT_DEVS, in->fd, TOKEN, 0, &o, &in->st);
        return NULL;
}

/* One migration: the downtime and the switchover in ms, or a negative errno. */
static int dt_migrate(struct dt_side *src, struct dt_side *dst, double *down_ms, double *switch_ms, uint64_t *rarp) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
                return -errno;
        struct dt_incoming in = { .fd = sv[1], .dst = dst };
        if (pthread_create(&in.thread, NULL, dt_incoming_run, &in) != 0) {
                close(sv[0]);
                close(sv[1]);
                return -EAGAIN;
        }
        struct vhm_migration_stats st;
        uint64_t pause = now_ns();
        int r = vhm_migrate_to(src->vm, NULL, src->dev, DT_DEVS, sv[0], TOKEN, NULL, &st);
        pthread_join(in.thread, NULL);
        uint64_t running = now_ns();
        if (r < 0 || in.rc < 0) {
                fprintf(stderr, "migration: %s / %s\n", st.error, in.st.error);
                return r < 0 ? r : in.rc;
        }
        /* The destination returns once its devices run and SEND_RARP went out. */
        *down_ms = (double) (running - pause) / 1e6;
        *switch_ms = (double) (running - in.switchover_ns) / 1e6;
        *rarp = in.st.rarp_sent;
        return 0;
}

/* The test back-ends of device 1, serving run after run. */
static int dt_test_backends(char dir[], pid_t pid[2], char sock[2][96]) {
        if (!mkdtemp(dir))
                return -errno;
        for (unsigned i = 0; i < 2; i++) {
                struct tb_config c;
                tb_config_init(&c);
                c.max_connections = 0;
                snprintf(sock[i], sizeof(sock[i]), "%s/tb%u", dir, i);
                int r = tb_spawn_listen(&c, sock[i], &pid[i]);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int dt_run(uint64_t mem, const char *tb_sock[2], double *down, double *sw, uint64_t *rarp) {
        struct real_backend be;
        real_backend_init(&be);
        (void) testpmd_cpus_restore();
        int r = start_testpmd(&be, DT_QP, TESTPMD_TWO_PORTS);
        if (r == 0)
                r = testpmd_cpus_avoid_worker();
        struct dt_side src, dst;
        dt_side_init(&src);
        dt_side_init(&dst);
        const char *src_sockets[DT_DEVS] = { be.socket, tb_sock[0] },
                   *dst_sockets[DT_DEVS] = { be.socket2, tb_sock[1] };
        if (r == 0)
                r = dt_source(&src, mem, src_sockets);
        if (r == 0)
                r = dt_destination(&dst, src.g, mem, dst_sockets);
        if (r == 0)
                r = dt_migrate(&src, &dst, down, sw, rarp);
        dt_side_free(&dst);
        dt_side_free(&src);
        stop_backend(&be);
        return r;
}

static double percentile(double *v, unsigned n, unsigned pct) {
        qsort(v, n, sizeof(*v), cmp_double);
        unsigned i = (n * pct + 99) / 100; /* nearest rank */
        return v[i ? i - 1 : 0];
}

static void print_cpu_model(void) {
        FILE *f = fopen("/proc/cpuinfo", "re");
        char line[256];
        while (f && fgets(line, sizeof(line), f))
                if (!strncmp(line, "model name", 10)) {
                        char *colon = strchr(line, ':');
                        printf("CPU: %s", colon ? colon + 2 : line);
                        break;
                }
        if (f)
                fclose(f);
        printf("CPUs online: %ld\n", sysconf(_SC_NPROCESSORS_ONLN));
}

static int downtime(uint64_t mem_mib, unsigned runs) {
        if (testpmd_cpus_init() < 0 || !backend_available(TESTPMD_BIN)) {
                fprintf(stderr, "downtime: needs %s\n", TESTPMD_BIN);
                return 1;
        }
        char dir[] = "/tmp/vhostmig-bench-dt-XXXXXX", sock[2][96];
        pid_t pid[2] = { 0, 0 };
        int r = dt_test_backends(dir, pid, sock);
        const char *tb_sock[2] = { sock[0], sock[1] };
        double down[MAX_RUNS], sw[MAX_RUNS];
        uint64_t rarp = 0;
        for (unsigned i = 0; r == 0 && i < runs; i++)
                r = dt_run(mem_mib * MiB, tb_sock, &down[i], &sw[i], &rarp);
        for (unsigned i = 0; i < 2; i++) {
                if (pid[i] > 0)
                        (void) tb_stop(pid[i]);
                unlink(sock[i]);
        }
        rmdir(dir);
        (void) testpmd_cpus_restore();
        if (r < 0) {
                fprintf(stderr, "downtime: %s\n", strerror(-r));
                return 1;
        }
        printf("\ndowntime, %u devices x %u queue pairs (testpmd + test back-end), %" PRIu64
               " MiB guest, %u runs, RARP sent %" PRIu64 "\n",
               DT_DEVS, DT_QP, mem_mib, runs, rarp);
        printf("%-40s %10s %10s\n", "", "median ms", "p90 ms");
        double m = median(down, runs);
        printf("%-40s %10.1f %10.1f\n", "pause -> destination running + RARP", m, percentile(down, runs, 90));
        m = median(sw, runs);
        printf("%-40s %10.1f %10.1f\n", "END -> running + RARP (switchover)", m, percentile(sw, runs, 90));
        return 0;
}

int main(int argc, char **argv) {
        uint64_t mem_mib = 1024, dt_mem_mib = 64;
        unsigned runs = 3, dt_runs = 7;
        for (int i = 1; i < argc; i++) {
                if (!strcmp(argv[i], "--quick")) {
                        mem_mib = 256;
                        runs = 1;
                        dt_runs = 3;
                } else if (!strcmp(argv[i], "--downtime-runs") && i + 1 < argc) {
                        dt_runs = (unsigned) strtoul(argv[++i], NULL, 10);
                } else if (!strcmp(argv[i], "--downtime-mem") && i + 1 < argc) {
                        dt_mem_mib = strtoull(argv[++i], NULL, 10);
                } else if (!strcmp(argv[i], "--mem") && i + 1 < argc) {
                        mem_mib = strtoull(argv[++i], NULL, 10);
                } else if (!strcmp(argv[i], "--runs") && i + 1 < argc) {
                        runs = (unsigned) strtoul(argv[++i], NULL, 10);
                } else {
                        fprintf(stderr,
                                "usage: %s [--quick] [--mem MiB] [--runs N] [--downtime-runs N] [--downtime-mem MiB]\n",
                                argv[0]);
                        return 2;
                }
        }
        if (!mem_mib || !runs || runs > MAX_RUNS || !dt_mem_mib || !dt_runs || dt_runs > MAX_RUNS)
                return 2;
        setvbuf(stdout, NULL, _IONBF, 0);
        print_cpu_model();
        uint64_t size = mem_mib * MiB;
        struct vm_mem src = { .fd = -1 }, dst = { .fd = -1 };
        int r = vm_mem_new("source", size, true, &src);
        if (r == 0)
                r = vm_mem_new("destination", size, false, &dst);
        if (r < 0) {
                fprintf(stderr, "guest memory: %s\n", strerror(-r));
                return 1;
        }
        char dir[] = "/tmp/vhostmig-bench-XXXXXX", unix_addr[96];
        if (!mkdtemp(dir))
                return 1;
        snprintf(unix_addr, sizeof(unix_addr), "unix:%s/migration", dir);
        const char *addresses[] = { unix_addr, "tcp:127.0.0.1:0" };
        const char *names[] = { "unix", "tcp (loopback)" };

        printf("stop-and-copy of a %" PRIu64 " MiB guest (no zero page), median of %u run(s)\n", mem_mib, runs);
        printf("%-16s %12s %12s %12s %12s %8s\n", "transport", "raw s", "raw MiB/s", "migrate s", "migr MiB/s",
               "ratio");
        int status = 0;
        for (unsigned a = 0; a < 2; a++) {
                double raw[MAX_RUNS], mig[MAX_RUNS];
                for (unsigned i = 0; i < runs; i++) {
                        raw[i] = run_once(addresses[a], false, &src, &dst, size);
                        mig[i] = run_once(addresses[a], true, &src, &dst, size);
                        if (raw[i] < 0 || mig[i] < 0)
                                status = 1;
                }
                if (status)
                        break;
                double rs = median(raw, runs), ms = median(mig, runs);
                printf("%-16s %12.3f %12.0f %12.3f %12.0f %8.2f\n", names[a], rs, (double) mem_mib / rs, ms,
                       (double) mem_mib / ms, rs / ms);
        }
        rmdir(dir);
        vm_mem_free(&src, size);
        vm_mem_free(&dst, size);
        if (status == 0)
                status = downtime(dt_mem_mib, dt_runs);
        return status;
}

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
 * Usage: bench-migration [--quick] [--mem MiB] [--runs N]
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

#include "migrate/migration.h"
#include "migrate/transport.h"
#include "migrate/vm.h"
#include "proto/vhost-user-transport.h"
#include "tests/common/clock.h"

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

int main(int argc, char **argv) {
        uint64_t mem_mib = 1024;
        unsigned runs = 3;
        for (int i = 1; i < argc; i++) {
                if (!strcmp(argv[i], "--quick")) {
                        mem_mib = 256;
                        runs = 1;
                } else if (!strcmp(argv[i], "--mem") && i + 1 < argc) {
                        mem_mib = strtoull(argv[++i], NULL, 10);
                } else if (!strcmp(argv[i], "--runs") && i + 1 < argc) {
                        runs = (unsigned) strtoul(argv[++i], NULL, 10);
                } else {
                        fprintf(stderr, "usage: %s [--quick] [--mem MiB] [--runs N]\n", argv[0]);
                        return 2;
                }
        }
        if (!mem_mib || !runs || runs > MAX_RUNS)
                return 2;
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
        return status;
}
